//! Pull: fetch an image and unpack it, overlapped.
//!
//! The fetch runs as [`remotes::fetch_content`](crate::remotes::fetch_content)
//! does (the image named only once the unpack is done too); the unpack
//! starts at once, reading the store through a provider that
//! waits for each blob. A blob still downloading is read from its ingest as
//! it grows ([`IngestManager::ingest_reader_at`]), so a layer is applied while
//! its own bytes arrive, not only after the layers below it; a store that
//! cannot do that makes the unpack wait for the commit. Layer *n* is applied
//! while layers *n+1…* are still downloading.
//!
//! Reading bytes before their digest is checked is safe here: the unpack
//! commits a layer's snapshot only when the diff ID of what it applied
//! matches the image config, and a fetch that fails fails the pull.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedSender;

use crate::content::lease::{Lease, LeasedStore};
use crate::content::{
    Descriptor, Digest, ErrorKind, IngestManager, Ingester, Manager, Provider, ReaderAt,
    ReaderAtStream,
};
use crate::images::platforms::{self, Matcher};
use crate::images::{Image, ImageStore};
use crate::remotes::{
    FetchEvent, FetchOptions, HandlerWrapper, Resolver, fetch_content_with, ingest_ref,
    record_image,
};
use crate::snapshot::lease::LeasedSnapshotter;
use crate::snapshot::{Snapshotter, UnpackEvent, UnpackOptions, unpack};

/// Progress of a [`pull`], as data.
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// `None` for an image with no layers, whose root filesystem is empty:
    /// a snapshot prepared with no parent.
    pub chain_id: Option<Digest>,
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
    /// The unpack failed on the bytes of a layer the store held, and that
    /// layer is not what its digest says (found by [`corrupt_layer`] once
    /// the unpack failed): the store's file went bad after its commit.
    /// Remove that blob and pull again.
    #[error(
        "{corrupt} (the unpack failed on it: {})",
        crate::content::Report::new(unpack)
    )]
    Corrupt {
        /// The store's [`BlobCorrupt`](crate::content::Error::BlobCorrupt).
        corrupt: crate::content::Error,
        /// How the unpack failed.
        unpack: crate::snapshot::Error,
    },
}

impl PullError {
    /// The kind of the underlying error.
    pub fn kind(&self) -> crate::content::ErrorKind {
        match self {
            PullError::Fetch(e) => e.kind(),
            PullError::Unpack(e) => e.kind(),
            PullError::Corrupt { corrupt, .. } => corrupt.kind(),
        }
    }

    crate::content::kind_predicates!();
}

/// Options for [`pull`]: [`PullOptions::new`], then the setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PullOptions<M> {
    /// The platforms to fetch; the best one is unpacked.
    pub matcher: M,
    /// Fetch every manifest of an index, whatever its platform (as `ctr pull
    /// --all-platforms`); only `matcher`'s best is still unpacked. With
    /// `false`, an index yields only `matcher`'s best manifest.
    pub all_platforms: bool,
    /// Blobs fetched at once (`None`: no limit).
    pub limit: Option<usize>,
    /// Options for the unpack (its events are replaced by `events`).
    pub unpack: UnpackOptions,
    /// Where to report progress.
    pub events: Option<UnboundedSender<PullEvent>>,
    /// Wraps the fetch's handler, as containerd's `WithImageHandlerWrapper`
    /// (see [`HandlerWrapper`]). The unpack reads what the fetch stored: a
    /// wrapper that skips a layer the unpack needs fails the pull with
    /// [`NotFound`](crate::content::ErrorKind::NotFound) once the fetch ends.
    pub handler_wrapper: Option<HandlerWrapper>,
    /// Records every blob and snapshot the pull writes or relies on in this
    /// lease, so a collection in this or another process keeps them (see
    /// [`pull`]'s "Keeping a pull from collection").
    pub lease: Option<Lease>,
}

impl<M> PullOptions<M> {
    /// Options that fetch and unpack `matcher`'s best platform, with no
    /// limit on blobs fetched at once, default unpack options and no events.
    pub fn new(matcher: M) -> Self {
        PullOptions {
            matcher,
            all_platforms: false,
            limit: None,
            unpack: UnpackOptions::default(),
            events: None,
            handler_wrapper: None,
            lease: None,
        }
    }

    /// Fetches every platform of an index (only the matcher's best is unpacked).
    pub fn all_platforms(mut self, all: bool) -> Self {
        self.all_platforms = all;
        self
    }

    /// Fetches at most `limit` blobs at once.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Unpacks with `unpack` (its events are replaced by the pull's).
    pub fn unpack(mut self, unpack: UnpackOptions) -> Self {
        self.unpack = unpack;
        self
    }

    /// Reports progress to `events`.
    pub fn events(mut self, events: UnboundedSender<PullEvent>) -> Self {
        self.events = Some(events);
        self
    }

    /// Runs the fetch's handler through `wrapper`.
    pub fn handler_wrapper(mut self, wrapper: HandlerWrapper) -> Self {
        self.handler_wrapper = Some(wrapper);
        self
    }

    /// Records what the pull writes or relies on in `lease`, as containerd's
    /// client pulls under a lease: the store and the snapshotter are reached
    /// through [`LeasedStore`] and [`LeasedSnapshotter`].
    pub fn lease(mut self, lease: Lease) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// Fetches `reference` into `store` and unpacks it into `snapshotter`, the
/// unpack overlapping the fetch; then records it in `images`. A pull that
/// fails names nothing: an existing name keeps its target.
///
/// What `ctr pull` does, with credentials from Docker's `config.json` and
/// progress as data:
///
/// ```no_run
/// use std::sync::Arc;
/// use ocidist::content::lease::Leases;
/// use ocidist::content::local::LocalStore;
/// use ocidist::images::{platforms, DbImageStore};
/// use ocidist::pull::{pull, PullEvent, PullOptions};
/// use ocidist::remotes::docker::{config::DockerConfig, DockerResolver};
/// use ocidist::snapshot::overlay::OverlaySnapshotter;
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = std::path::Path::new("/var/lib/myruntime");
/// let store = LocalStore::open(root.join("content"))?;
/// let images = DbImageStore::open(root.join("images.redb"))?;
/// let snapshotter = OverlaySnapshotter::open(root.join("snapshots"))?;
/// let leases = Leases::open(root.join("leases"))?;
/// let resolver = DockerResolver::new().credentials(Arc::new(DockerConfig::load_default()?));
///
/// let (events, mut progress) = tokio::sync::mpsc::unbounded_channel();
/// tokio::spawn(async move {
///     while let Some(event) = progress.recv().await {
///         if let PullEvent::Unpack(event) = event {
///             eprintln!("{event:?}");
///         }
///     }
/// });
/// let options = PullOptions::new(platforms::only(&platforms::Platform::host()))
///     .limit(8)
///     .events(events)
///     .lease(leases.acquire().await?);
/// let pulled = pull(&resolver, &store, &images, &snapshotter, "redis:latest", options).await?;
/// // A container's root filesystem: an active snapshot on the top layer.
/// let key = "my-container";
/// let parent = pulled.chain_id.as_ref().map(|chain_id| chain_id.to_string());
/// let mounts = ocidist::snapshot::Snapshotter::prepare(
///     &snapshotter,
///     key,
///     parent.as_deref(),
///     Default::default(),
/// )
/// .await?;
/// # let _ = mounts;
/// # Ok(())
/// # }
/// ```
///
/// # Cancellation
///
/// Dropping the future (a timeout, a client gone) stops the pull at its
/// next await. Nothing half-written is committed, every ingest ref it held
/// is released, and the ingests stay for the next pull to resume from. No
/// image is recorded. The active snapshots its unpack was applying layers
/// into stay too, since a drop runs no async work: call
/// [`remove_own_extractions`](crate::snapshot::remove_own_extractions)
/// afterwards (or let [`prune`](crate::snapshot::gc::prune) take them once
/// their lease or grace period is over), as `dist` does on SIGINT.
///
/// # Keeping a pull from collection
///
/// Until the image is named, a collection in another process sees the
/// pull's blobs and snapshots as unreferenced. Its grace period covers what
/// the pull writes, not the old blobs and layers the pull finds present and
/// reuses. Pull under a lease ([`PullOptions::lease`], taken with
/// [`Leases::acquire`](crate::content::lease::Leases::acquire)) and collect
/// while holding the leases
/// ([`Leases::hold`](crate::content::lease::Leases::hold)), as `dist pull`
/// and `dist prune` do. Drop the lease when the pull returns: the named
/// image then keeps what it needs.
pub async fn pull<R, S, I, N, M>(
    resolver: &R,
    store: &S,
    images: &I,
    snapshotter: &N,
    reference: &str,
    mut options: PullOptions<M>,
) -> Result<Pulled, PullError>
where
    R: Resolver + ?Sized,
    S: Provider + Ingester + Manager + IngestManager + Clone + 'static,
    I: ImageStore + ?Sized,
    N: Snapshotter + ?Sized,
    M: Matcher + Clone + 'static,
{
    match options.lease.take() {
        Some(lease) => {
            let store = LeasedStore::new(store.clone(), lease.clone());
            let snapshotter = LeasedSnapshotter::new(snapshotter, lease);
            pull_through(resolver, &store, images, &snapshotter, reference, options).await
        }
        None => pull_through(resolver, store, images, snapshotter, reference, options).await,
    }
}

/// [`pull`] through `store` and `snapshotter` as they are.
async fn pull_through<R, S, I, N, M>(
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
    // Dropped before the fetch ends (the caller gave up), readers following
    // an ingest stop instead of waiting for bytes that will not come.
    let _finish_on_drop = FinishOnDrop(arrivals.clone());
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
                // A start lets a waiting reader follow the ingest; a commit
                // lets it read the blob.
                arrivals.arrived();
                send(PullEvent::Fetch(event));
            }
        }
    };
    let mut fetch_options = if options.all_platforms {
        FetchOptions::new(platforms::all()).manifests_per_index(0)
    } else {
        FetchOptions::new(options.matcher.clone())
    }
    .events(fetch_tx);
    fetch_options.limit = options.limit;
    fetch_options.wrapper = options.handler_wrapper.clone();
    let fetch = async {
        let result =
            fetch_content_with(resolver, store, &name, target.clone(), fetch_options).await;
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
    // Every blob committed and verified, an unpack that failed while they
    // downloaded is tried once more from the store: what it read may have
    // been another pull's download that then failed its check (a shared
    // layer's ingest), or a blob that was not there yet. It holds a sender
    // of unpack events: called at most once, it goes with `both`, so the
    // forwarding of unpack events below can end.
    let again = {
        let (again_options, target, matcher) = (unpack_options.clone(), &target, &options.matcher);
        move || async move { unpack(target, store, snapshotter, matcher, again_options).await }
    };
    let unpacking = unpack(
        &target,
        &waiting,
        snapshotter,
        &options.matcher,
        unpack_options,
    );

    let both = async {
        tokio::pin!(fetch, unpacking);
        tokio::select! {
            // A failed fetch explains a failed unpack (its blob never came),
            // so it is the error to report. The unpack is awaited all the
            // same, never dropped: it cleans up after itself.
            fetched = &mut fetch => {
                let unpacked = unpacking.await;
                fetched?;
                match unpacked {
                    Ok(chain_id) => Ok::<_, PullError>(chain_id),
                    Err(e) if !may_read_better(&e) => Err(PullError::Unpack(e)),
                    Err(_) => Ok(again().await?),
                }
            }
            unpacked = &mut unpacking => {
                let failed = match unpacked {
                    Ok(chain_id) => {
                        fetch.await?;
                        return Ok(chain_id);
                    }
                    Err(e) => e,
                };
                let fetched = if matches!(failed.kind(), ErrorKind::NotFound | ErrorKind::Unavailable) {
                    // A blob that did not come: the fetch says why.
                    fetch.await
                } else {
                    // A layer that will not unpack (a bad tar, a wrong diff
                    // ID, a full disk): the rest of the download is not
                    // waited for, beyond a moment for the fetch to say what
                    // it knows: bytes the registry got wrong fail the unpack
                    // as the layer's download ends, and the fetch's check a
                    // moment later, with the better error. Its ingests stay,
                    // for a retry to resume.
                    match tokio::time::timeout(FETCH_GRACE, &mut fetch).await {
                        Ok(fetched) => fetched,
                        Err(_) => return Err(PullError::Unpack(failed)),
                    }
                };
                fetched?;
                if !may_read_better(&failed) {
                    return Err(PullError::Unpack(failed));
                }
                Ok(again().await?)
            }
        }
    };
    let (unpacked, (), ()) = tokio::join!(both, forward, forward_unpack);
    let chain_id = match unpacked {
        // The fetch skips what the store has: a stored layer gone bad since
        // its commit shows only now, as bytes that do not decode.
        Err(PullError::Unpack(unpack)) => {
            return Err(
                match corrupt_layer(store, &target, &options.matcher, &unpack).await {
                    Some(corrupt) => PullError::Corrupt { corrupt, unpack },
                    None => PullError::Unpack(unpack),
                },
            );
        }
        unpacked => unpacked?,
    };
    // Named only once fetched and unpacked, as containerd does: a failed
    // pull leaves an existing name where it pointed.
    let image = record_image(images, &name, target).await?;
    Ok(Pulled { image, chain_id })
}

/// Whether an unpack that failed while its blobs downloaded may succeed once
/// it reads them again, verified, from the store: it failed on what it read
/// (a broken tar, a wrong diff ID, a blob not there yet), not on where it
/// writes. A full disk or a failing snapshot database would fail it again,
/// and report a later, lesser error than the first (a database that
/// refuses every write after the one that failed).
fn may_read_better(failed: &crate::snapshot::Error) -> bool {
    !matches!(
        failed,
        crate::snapshot::Error::Io { .. } | crate::snapshot::Error::Metadata(_)
    )
}

/// Whether an unpack failed on what a layer's bytes are (a gzip or tar
/// that does not decode, a wrong diff ID), which a stored copy gone bad
/// would explain.
fn failed_on_bytes(failed: &crate::snapshot::Error) -> bool {
    use crate::snapshot::Error;
    matches!(
        failed,
        Error::Layer(_) | Error::DiffIdMismatch { .. } | Error::InvalidArgument(_)
    )
}

/// Why an unpack of `target` from `store` failed with `failed`, when a
/// stored layer gone bad since its commit explains it: the first of the
/// layers `matcher` picks that `store` holds committed and whose bytes are
/// not what its digest says
/// ([`BlobCorrupt`](crate::content::Error::BlobCorrupt)).
///
/// `None` at once when `failed` is not a failure on a layer's bytes (a
/// gzip or tar that does not decode, a wrong diff ID), and `None` when
/// every held layer is sound (the layer itself is bad) or the manifest
/// cannot be read. Otherwise each held layer is read whole again, so it is
/// for after a failure. [`pull`] calls it, and reports
/// [`PullError::Corrupt`]; a caller of
/// [`unpack`] can too.
pub async fn corrupt_layer<S>(
    store: &S,
    target: &Descriptor,
    matcher: &dyn Matcher,
    failed: &crate::snapshot::Error,
) -> Option<crate::content::Error>
where
    S: Provider + Manager + ?Sized,
{
    if !failed_on_bytes(failed) {
        return None;
    }
    let manifest = crate::images::manifest::manifest(store, target, matcher)
        .await
        .ok()?;
    for layer in &manifest.layers {
        // An ingest the fetch left is not the store's copy; only committed
        // blobs are read.
        if store.info(layer.digest()).await.is_err() {
            continue;
        }
        if let Err(e @ crate::content::Error::BlobCorrupt { .. }) =
            crate::content::verify_blob(store, layer).await
        {
            return Some(e);
        }
    }
    None
}

/// How long a pull whose unpack failed waits for the fetch to fail too, with
/// an error that explains the unpack's (bytes the registry got wrong).
const FETCH_GRACE: Duration = Duration::from_secs(2);

/// Ends the fetch's arrivals when dropped; see [`Arrivals::finish`].
struct FinishOnDrop(Arc<Arrivals>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
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

/// A provider that waits for blobs the fetch has not committed yet, and
/// follows the ingests of those it has started.
struct WaitingProvider<S> {
    store: S,
    arrivals: Arc<Arrivals>,
}

#[async_trait]
impl<S: Provider + IngestManager + Clone + 'static> Provider for WaitingProvider<S> {
    async fn reader_at(&self, desc: &Descriptor) -> crate::content::Result<Box<dyn ReaderAt>> {
        loop {
            let notified = self.arrivals.notify.notified();
            tokio::pin!(notified);
            // Registered before looking, so an arrival in between is not missed.
            notified.as_mut().enable();
            match self.store.reader_at(desc).await {
                Ok(reader) => return Ok(reader),
                Err(e) if e.is_not_found() && !self.arrivals.finished.load(Ordering::SeqCst) => {}
                Err(e) => return Err(e),
            }
            // Only a layer is read as it downloads: its bytes are checked by
            // its diff ID before anything is committed from them. A manifest
            // or config is small, and read once verified (committed).
            if crate::images::media_types::kind(desc.media_type().as_ref())
                != crate::images::media_types::Kind::Layer
            {
                notified.await;
                continue;
            }
            match self.store.ingest_reader_at(&ingest_ref(desc)).await {
                Ok(ingest) => {
                    return Ok(Box::new(Following {
                        ingest,
                        desc: desc.clone(),
                        arrivals: self.arrivals.clone(),
                    }));
                }
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Unimplemented) => {}
                Err(e) => return Err(e),
            }
            notified.await;
        }
    }
}

/// How long a reader that caught up with a download waits before looking again.
const FOLLOW_POLL: Duration = Duration::from_millis(2);

/// Reads a blob's ingest as the fetch writes it, waiting at its end until
/// the blob is whole.
struct Following {
    ingest: Box<dyn ReaderAt>,
    desc: Descriptor,
    arrivals: Arc<Arrivals>,
}

#[async_trait]
impl ReaderAt for Following {
    fn size(&self) -> u64 {
        self.desc.size()
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> crate::content::Result<usize> {
        let size = self.desc.size();
        let want = buf.len().min(size.saturating_sub(offset) as usize);
        let mut filled = 0;
        // Full reads only: a short one would mean the end of the blob.
        while filled < want {
            let n = self
                .ingest
                .read_at(offset + filled as u64, &mut buf[filled..want])
                .await?;
            filled += n;
            if n > 0 {
                continue;
            }
            if self.arrivals.finished.load(Ordering::SeqCst) {
                // The fetch is over. Committed: the renamed file has every
                // byte, so a last read finds them; else the download failed.
                let n = self
                    .ingest
                    .read_at(offset + filled as u64, &mut buf[filled..want])
                    .await?;
                if n == 0 {
                    return Err(crate::content::Error::other(
                        ErrorKind::Unavailable,
                        format!(
                            "{}: the download stopped at {} of {size} bytes",
                            self.desc.digest(),
                            offset + filled as u64
                        ),
                    ));
                }
                filled += n;
                continue;
            }
            let notified = self.arrivals.notify.notified();
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
        Ok(filled)
    }

    fn into_async_read(self: Box<Self>) -> Pin<Box<dyn tokio::io::AsyncRead + Send>> {
        Box::pin(ReaderAtStream::new(self))
    }
}
