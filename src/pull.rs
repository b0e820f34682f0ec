//! Pull: fetch an image and unpack it, overlapped.
//!
//! The fetch runs as [`remotes::fetch_resolved`](crate::remotes::fetch_resolved)
//! does; the unpack starts at once, reading the store through a provider that
//! waits for each blob to be committed. Layer *n* is applied while layers
//! *n+1…* are still downloading.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

use crate::content::{Descriptor, Digest, IngestManager, Ingester, Manager, Provider, ReaderAt};
use crate::images::platforms::Matcher;
use crate::images::{Image, ImageStore};
use crate::remotes::{FetchEvent, Resolver, fetch_resolved};
use crate::snapshot::{Snapshotter, UnpackEvent, UnpackOptions, unpack};

/// Progress of a [`pull`], as data.
#[derive(Debug, Clone)]
pub enum PullEvent {
    /// The image resolved to this descriptor.
    Resolved(Descriptor),
    /// A blob's fetch progressed.
    Fetch(FetchEvent),
    /// A layer's unpack progressed.
    Unpack(UnpackEvent),
}

/// What a pull did.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The image record, as stored.
    pub image: Image,
    /// The chain ID of the top layer: the snapshot to build a rootfs on.
    pub chain_id: Digest,
}

/// Errors from a pull: the fetch's or the unpack's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// Resolving or fetching failed.
    #[error(transparent)]
    Fetch(#[from] crate::remotes::Error),
    /// Unpacking failed.
    #[error(transparent)]
    Unpack(#[from] crate::snapshot::Error),
}

impl PullError {
    /// The kind of the underlying error.
    pub fn kind(&self) -> crate::content::ErrorKind {
        match self {
            PullError::Fetch(e) => e.kind(),
            PullError::Unpack(e) => e.kind(),
        }
    }
}

/// Options for [`pull`].
#[derive(Debug, Clone)]
pub struct PullOptions<M> {
    /// The platforms to fetch; the best one is unpacked.
    pub matcher: M,
    /// Blobs fetched at once (`None`: no limit).
    pub limit: Option<usize>,
    /// Options for the unpack (its events are replaced by `events`).
    pub unpack: UnpackOptions,
    /// Where to report progress.
    pub events: Option<UnboundedSender<PullEvent>>,
}

/// Fetches `reference` into `store`, records it in `images`, and unpacks it
/// into `snapshotter`, the unpack overlapping the fetch.
pub async fn pull<R, S, I, N, M>(
    resolver: &R,
    store: &S,
    images: &I,
    snapshotter: &N,
    reference: &str,
    options: PullOptions<M>,
) -> Result<Pulled, PullError>
where
    R: Resolver + ?Sized,
    S: Provider + Ingester + Manager + IngestManager + Clone + 'static,
    I: ImageStore + ?Sized,
    N: Snapshotter + ?Sized,
    M: Matcher + Clone + 'static,
{
    let send = {
        let events = options.events.clone();
        move |event: PullEvent| {
            if let Some(events) = &events {
                let _ = events.send(event);
            }
        }
    };
    let (name, target) = resolver.resolve(reference).await?;
    send(PullEvent::Resolved(target.clone()));
    let arrivals = Arc::new(Arrivals::default());
    let waiting = WaitingProvider {
        store: store.clone(),
        arrivals: arrivals.clone(),
    };

    let (fetch_tx, mut fetch_rx) = tokio::sync::mpsc::unbounded_channel();
    let forward = {
        let arrivals = arrivals.clone();
        let send = send.clone();
        async move {
            while let Some(event) = fetch_rx.recv().await {
                if let FetchEvent::Done(_) | FetchEvent::Exists(_) = &event {
                    arrivals.arrived();
                }
                send(PullEvent::Fetch(event));
            }
        }
    };
    let fetch = async {
        let result = fetch_resolved(
            resolver,
            store,
            images,
            &name,
            target.clone(),
            options.matcher.clone(),
            1,
            options.limit,
            Some(fetch_tx),
        )
        .await;
        arrivals.finish();
        result
    };

    let (unpack_tx, mut unpack_rx) = tokio::sync::mpsc::unbounded_channel();
    let forward_unpack = {
        let send = send.clone();
        async move {
            while let Some(event) = unpack_rx.recv().await {
                send(PullEvent::Unpack(event));
            }
        }
    };
    let mut unpack_options = options.unpack.clone();
    unpack_options.events = Some(unpack_tx);
    let unpacking = unpack(
        &target,
        &waiting,
        snapshotter,
        &options.matcher,
        unpack_options,
    );

    let both = async {
        // A failed fetch explains a failed unpack (its blob never came), so
        // it is the error to report.
        let (fetched, unpacked) = tokio::join!(fetch, unpacking);
        let image = fetched?;
        Ok::<_, PullError>(Pulled {
            image,
            chain_id: unpacked?,
        })
    };
    let (result, (), ()) = tokio::join!(both, forward, forward_unpack);
    result
}

/// Wakes readers waiting for a blob when the fetch commits one, or ends.
#[derive(Default)]
struct Arrivals {
    finished: AtomicBool,
    notify: Notify,
}

impl Arrivals {
    fn arrived(&self) {
        self.notify.notify_waiters();
    }

    fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

/// A provider that waits for blobs the fetch has not committed yet.
struct WaitingProvider<S> {
    store: S,
    arrivals: Arc<Arrivals>,
}

#[async_trait]
impl<S: Provider> Provider for WaitingProvider<S> {
    async fn reader_at(&self, desc: &Descriptor) -> crate::content::Result<Box<dyn ReaderAt>> {
        loop {
            let notified = self.arrivals.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so an arrival in between is not missed.
            notified.as_mut().enable();
            match self.store.reader_at(desc).await {
                Ok(reader) => return Ok(reader),
                Err(e) if e.is_not_found() && !self.arrivals.finished.load(Ordering::SeqCst) => {
                    notified.await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
