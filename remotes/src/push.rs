//! Pushing an image from a content store: children before parents, the
//! root last, so a registry never holds a manifest whose content is missing.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use oci_spec::image::Descriptor;
use ocidist_content::{Manager, Provider, ReaderAt};
use ocidist_images::manifest;
use ocidist_images::media_types::{self, Kind};
use tokio::io::AsyncRead;
use tokio::sync::mpsc::UnboundedSender;

use crate::source::{annotate_sources, append_source_label};
use crate::{Resolver, Result};

/// What happened to one blob or manifest during a push, for progress
/// displays.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PushEvent {
    /// The registry had it already, or mounted it from another repository.
    Exists(Descriptor),
    /// The registry lacks it: uploading started.
    Started(Descriptor),
    /// The upload has read `sent` bytes of it from the store (sent, or
    /// about to be); said at least every [`PROGRESS_STEP`] bytes and at the
    /// end. A part sent again after a failure is not counted twice.
    Progress {
        /// The content.
        desc: Descriptor,
        /// Bytes read for sending, from its start.
        sent: u64,
    },
    /// Uploaded: the registry has it.
    Done(Descriptor),
}

/// Whether reading a manifest failed because the store lacks it.
fn is_missing(e: &ocidist_images::Error) -> bool {
    matches!(e, ocidist_images::Error::Content(c) if c.is_not_found())
}

/// How many bytes an upload reads between two [`PushEvent::Progress`].
pub const PROGRESS_STEP: u64 = 1 << 20;

/// Every descriptor under (and including) `root` in push order: each one's
/// children before it, each digest once.
pub async fn push_order<P: Provider + ?Sized>(
    store: &P,
    root: &Descriptor,
) -> Result<Vec<Descriptor>> {
    let mut order: Vec<Descriptor> = Vec::new();
    // (descriptor, children already expanded, the index that lists it)
    let mut stack = vec![(root.clone(), false, None)];
    while let Some((desc, expanded, listed_by)) = stack.pop() {
        if order.iter().any(|d| d.digest() == desc.digest()) {
            continue;
        }
        if expanded {
            order.push(desc);
            continue;
        }
        let children = match manifest::children(store, &desc).await {
            // An index fetched for one platform lists manifests the store
            // never got.
            Err(e) if listed_by.is_some() && is_missing(&e) => {
                return Err(crate::Error::MissingManifest {
                    platform: manifest::descriptor_platform(&desc).map(|p| p.to_string()),
                    digest: desc.digest().clone(),
                    listed_by: listed_by.expect("checked above"),
                });
            }
            other => other?,
        };
        let index = (media_types::kind(desc.media_type().as_ref()) == Kind::Index)
            .then(|| desc.digest().clone());
        stack.push((desc, true, None));
        stack.extend(
            children
                .into_iter()
                .rev()
                .map(|c| (c, false, index.clone())),
        );
    }
    Ok(order)
}

/// Pushes the image `target` from `store` to `reference` (`name:tag`), blobs
/// `limit` at a time, then manifests, the root last under the tag (`latest`
/// when the reference has neither a tag nor a digest; by digest only, and
/// no tag moved, for `name@digest`, whose digest must be `target`'s). Content the
/// registry has already is skipped; a blob whose distribution-source label
/// (see [`source`](crate::source)) names another repository of the same
/// registry is mounted from there rather than uploaded. Each blob the
/// registry then has gets `reference`'s repository added to that label, so
/// a later push can mount it from there (as Docker does). Returns the
/// descriptors uploaded (not those the registry had or mounted). `events`,
/// if given, hears what happens to each ([`PushEvent`]).
///
/// `target` must say it is a manifest or an index
/// ([`ErrorKind::InvalidArgument`](ocidist_content::ErrorKind::InvalidArgument)
/// otherwise). An index goes with every manifest it lists, so each must be
/// in the store ([`ErrorKind::NotFound`](ocidist_content::ErrorKind::NotFound)
/// names the first missing one). To push one platform of an index fetched
/// for that platform alone, push its manifest, as `ctr push --platform`
/// does:
///
/// ```no_run
/// # async fn f(
/// #     resolver: &ocidist_remotes::docker::DockerResolver,
/// #     store: &ocidist_content::local::LocalStore,
/// #     index: &ocidist_content::Descriptor,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use ocidist_images::{manifest, platforms};
/// let platform: platforms::Platform = "linux/arm64".parse()?;
/// let one = manifest::manifest(store, index, &platforms::only(&platform)).await?;
/// ocidist_remotes::push_image(resolver, store, "registry.example/app:arm64", &one.descriptor, 4, None)
///     .await?;
/// # Ok(())
/// # }
/// ```
///
/// A blob another push through the same resolver is uploading (two images
/// sharing layers, pushed at once) is waited for, not refused.
///
/// # Cancellation
///
/// Dropping the future stops every upload at its next await. The store is
/// only read, so nothing there changes. At the registry, an upload session
/// opened but not yet sent to is deleted in the background (while a Tokio
/// runtime is there to do it); one stopped midway keeps its bytes until the
/// registry purges stale uploads (the distribution registry: a week). The
/// tag is moved only by the last request, so a push stopped early leaves
/// the tag where it was.
pub async fn push_image<R, P>(
    resolver: &R,
    store: &P,
    reference: &str,
    target: &Descriptor,
    limit: usize,
    events: Option<UnboundedSender<PushEvent>>,
) -> Result<Vec<Descriptor>>
where
    R: Resolver + ?Sized,
    P: Provider + Manager + ?Sized,
{
    let parsed: crate::Reference = reference.parse()?;
    if let Some(digest) = parsed.digest()
        && digest != target.digest()
    {
        return Err(crate::Error::InvalidReference {
            input: reference.to_string(),
            reason: format!("its digest is not the pushed image's ({})", target.digest()),
        });
    }
    // By digest alone, every manifest goes by digest and no tag moves; with
    // neither a tag nor a digest, the tag is `latest`, as Docker's.
    let pinned = match (parsed.tag(), parsed.digest()) {
        (Some(tag), _) => format!("{}:{tag}@{}", parsed.name(), target.digest()),
        (None, Some(_)) => format!("{}@{}", parsed.name(), target.digest()),
        (None, None) => format!("{}:latest@{}", parsed.name(), target.digest()),
    };
    let is_manifest = |d: &Descriptor| {
        matches!(
            ocidist_images::media_types::kind(d.media_type().as_ref()),
            ocidist_images::media_types::Kind::Manifest | ocidist_images::media_types::Kind::Index
        )
    };
    // A blob would be uploaded and no name set: a descriptor made without
    // the manifest's media type, most likely.
    if !is_manifest(target) {
        return Err(crate::Error::other(
            ocidist_content::ErrorKind::InvalidArgument,
            format!(
                "{} is pushed as an image, but its media type {} is not a manifest's or an index's",
                target.digest(),
                target.media_type()
            ),
        ));
    }
    let pusher = resolver.pusher(&pinned).await?;
    let order = push_order(store, target).await?;
    // Non-distributable (foreign) layers live where their `urls` say and
    // are not in the store: skipped, as `ctr push` does by default.
    let (manifests, blobs): (Vec<_>, Vec<_>) = order
        .into_iter()
        .filter(|d| !ocidist_images::media_types::is_non_distributable(d.media_type().as_ref()))
        .partition(is_manifest);
    let emit = |event: PushEvent| {
        if let Some(events) = &events {
            let _ = events.send(event);
        }
    };
    let push_one = |desc: Descriptor| {
        let (pusher, parsed, events) = (&pusher, &parsed, &events);
        async move {
            // The pusher finds mount sources in the annotations.
            let annotated = annotate_sources(store, &desc).await;
            let reporting;
            let provider: &dyn Provider = match events {
                Some(events) => {
                    reporting = Reporting {
                        inner: &store,
                        events: events.clone(),
                        started: AtomicBool::new(false),
                    };
                    &reporting
                }
                None => &store,
            };
            let mut wait = LOCKED_POLL;
            loop {
                let pushed = pusher.push_from(&annotated, provider).await;
                if pushed.is_ok() {
                    // The registry has it now: a later push there mounts
                    // it. Best effort: the push is done either way.
                    let _ = append_source_label(store, desc.digest(), parsed).await;
                }
                match pushed {
                    Ok(true) => {
                        emit(PushEvent::Done(desc.clone()));
                        return Ok(Some(desc));
                    }
                    Ok(false) => {
                        emit(PushEvent::Exists(desc));
                        return Ok(None);
                    }
                    // Another push of this resolver has the blob in flight
                    // (two images sharing a layer, pushed at once): its turn
                    // ends, then the registry has the blob, or this one goes.
                    Err(crate::Error::Content(ocidist_content::Error::Locked { .. })) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(LOCKED_POLL_MAX);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    };
    let mut pushed: Vec<Descriptor> = futures::stream::iter(blobs)
        .map(push_one)
        .buffer_unordered(limit.max(1))
        .try_filter_map(|d| async move { Ok(d) })
        .try_collect()
        .await?;
    // Manifests in order: an index only after the manifests it lists.
    for desc in manifests {
        if let Some(desc) = push_one(desc).await? {
            pushed.push(desc);
        }
    }
    Ok(pushed)
}

/// A provider that tells `events` when the pusher asks it for a blob (the
/// registry lacks it: the upload starts) and how far its reads have got.
struct Reporting<'a> {
    inner: &'a dyn Provider,
    events: UnboundedSender<PushEvent>,
    /// A blob sent again through a new session is started once.
    started: AtomicBool,
}

#[async_trait]
impl Provider for Reporting<'_> {
    async fn reader_at(&self, desc: &Descriptor) -> ocidist_content::Result<Box<dyn ReaderAt>> {
        let reader = self.inner.reader_at(desc).await?;
        if !self.started.swap(true, Ordering::Relaxed) {
            let _ = self.events.send(PushEvent::Started(desc.clone()));
        }
        Ok(Box::new(CountingReader {
            inner: reader.into(),
            events: self.events.clone(),
            desc: desc.clone(),
            furthest: AtomicU64::new(0),
            reported: AtomicU64::new(0),
        }))
    }
}

/// A blob's reader that reports the furthest byte read, every
/// [`PROGRESS_STEP`] bytes and at the end.
struct CountingReader {
    inner: std::sync::Arc<dyn ReaderAt>,
    events: UnboundedSender<PushEvent>,
    desc: Descriptor,
    furthest: AtomicU64,
    reported: AtomicU64,
}

#[async_trait]
impl ReaderAt for CountingReader {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> ocidist_content::Result<usize> {
        let n = self.inner.read_at(offset, buf).await?;
        let end = offset.saturating_add(n as u64);
        let furthest = self.furthest.fetch_max(end, Ordering::Relaxed).max(end);
        let reported = self.reported.load(Ordering::Relaxed);
        let due = furthest >= reported.saturating_add(PROGRESS_STEP)
            || (furthest == self.desc.size() && reported < furthest);
        if due
            && self
                .reported
                .compare_exchange(reported, furthest, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _ = self.events.send(PushEvent::Progress {
                desc: self.desc.clone(),
                sent: furthest,
            });
        }
        Ok(n)
    }

    fn into_async_read(self: Box<Self>) -> Pin<Box<dyn AsyncRead + Send>> {
        Box::pin(ocidist_content::ReaderAtStream::new(self))
    }
}

/// How long a push first waits for another push of the same blob to end;
/// the wait doubles up to [`LOCKED_POLL_MAX`]. (Asking costs no request: the
/// pusher refuses before it asks the registry anything.)
const LOCKED_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest single wait for another push of the same blob.
const LOCKED_POLL_MAX: std::time::Duration = std::time::Duration::from_secs(1);
