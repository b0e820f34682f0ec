//! Unpack: an image's layers applied, in order, into snapshots named by their
//! chain IDs, so the top one is the image's root filesystem.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use futures::StreamExt;

use ocidist_content::{Descriptor, Digest, Provider, ProviderExt};
use ocidist_images::manifest;
use ocidist_images::media_types;
use ocidist_images::platforms::Matcher;
use tokio::sync::mpsc::UnboundedSender;

use crate::apply::{ApplyOptions, LowersReady, apply_layer_over, apply_layer_to_mounts};
use crate::base::tempfile_name;
use crate::mount::ApplyTarget;
use crate::{
    APPLY_ONLY_LABEL, CommitOpts, CommitRequest, Error, ErrorKind, Kind, Labels, PrepareRequest,
    Result, Snapshotter,
};

/// Whether a layer of this media type is a tar, plain or compressed in a way
/// the applier reads: containerd's applier finds no stream processor for any
/// other (an encrypted layer, EROFS, an artifact's blobs) and refuses it,
/// where reading it as a tar would fail midway or unpack nonsense.
fn is_tar_layer(media_type: &str) -> bool {
    use ocidist_images::media_types::*;
    [
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDISTRIBUTABLE,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_ZSTD,
        DOCKER_LAYER_FOREIGN,
        DOCKER_LAYER_FOREIGN_TAR,
    ]
    .contains(&base(media_type).as_str())
}

/// The label containerd's garbage collector reads to keep a layer's
/// uncompressed digest with its snapshot.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// Progress of an [`unpack`], as data.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UnpackEvent {
    /// The layer's snapshot already exists.
    Exists {
        /// The layer blob.
        layer: Descriptor,
        /// Its chain ID (the snapshot's name).
        chain_id: Digest,
    },
    /// Applying the layer started.
    Unpacking {
        /// The layer blob.
        layer: Descriptor,
    },
    /// The layer is applied, checked and committed.
    Unpacked {
        /// The layer blob.
        layer: Descriptor,
        /// Its chain ID.
        chain_id: Digest,
        /// How long applying and committing took.
        seconds: f64,
        /// What applying it skipped, once per kind (owners and devices
        /// without root, xattrs the filesystem refuses): see
        /// [`Applied::warnings`](crate::apply::Applied::warnings).
        warnings: Vec<String>,
    },
}

/// The most layers an image [`unpack`] takes may have. Real images have
/// tens (Docker once stopped at 127; overlayfs stacks at most 500); a
/// manifest of 4 MiB can list 20,000, all one blob, and the overlay
/// unpack's lower directories grow with the square of their number.
pub const MAX_LAYERS: usize = 1000;

/// How the keys of the active snapshots [`unpack`] applies layers into begin:
/// `extract-<chain ID>-<pid>-<time>-<n>`. [`gc::prune`](crate::gc::prune) removes
/// old ones, left by an unpack that was killed.
pub const EXTRACT_KEY_PREFIX: &str = "extract-";

/// Options for [`unpack`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// How to apply layers (privileges, overlay xattrs).
    pub apply: ApplyOptions,
    /// Where to report progress.
    pub events: Option<UnboundedSender<UnpackEvent>>,
    /// Labels for every committed layer snapshot (a GC root, say).
    pub labels: Labels,
    /// How many layers are applied at once on a snapshotter that can rebase
    /// (overlay), where each layer's diff is its own directory. 1 applies
    /// them one after another. Default 3.
    pub concurrency: usize,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            apply: ApplyOptions::default(),
            events: None,
            labels: Labels::new(),
            concurrency: 3,
        }
    }
}

/// Unpacks the image `image` (a manifest, or an index resolved with
/// `matcher`) from `provider` into `snapshotter`; returns the chain ID of
/// the top layer, the snapshot to `prepare` or `view` a root filesystem on.
/// An image with no layers (a `FROM scratch` build with nothing added)
/// returns `None`: its root filesystem is empty, a snapshot prepared with
/// no parent, as containerd unpacks it.
///
/// Layers whose snapshot exists are skipped, so a rerun after a crash resumes.
/// Each layer is applied into an active snapshot with a unique key (prepared
/// with [`APPLY_ONLY_LABEL`]) and committed under its chain ID; if another process committed that chain ID
/// first, its snapshot is used and ours removed, so concurrent unpacks of one
/// image both succeed. A diff ID that does not match the image config fails
/// with [`Error::DiffIdMismatch`] and commits nothing.
///
/// On a snapshotter that [can rebase](Snapshotter::can_rebase) (overlay),
/// the missing layers are prepared together without parents, applied up to
/// [`UnpackOptions::concurrency`] at a time (a layer waits for the ones below
/// only if it must look at them: a parent directory its tar does not list, a
/// whiteout in a directory only they have), and committed in order onto
/// their parents, every layer ready at that moment in one
/// [`commit_all`](Snapshotter::commit_all): one `syncfs` and one metadata
/// transaction for the batch.
pub async fn unpack<P, S>(
    image: &Descriptor,
    provider: &P,
    snapshotter: &S,
    matcher: &dyn Matcher,
    options: UnpackOptions,
) -> Result<Option<Digest>>
where
    P: Provider + ?Sized,
    S: Snapshotter + ?Sized,
{
    let manifest = manifest::manifest(provider, image, matcher).await?;
    let diff_ids = manifest::diff_ids(provider, image, matcher).await?;
    // Only layers are counted against the diff IDs, as containerd's
    // unpacker counts them: another blob listed among them (an SBOM, say)
    // is no part of the filesystem.
    let layers: Vec<Descriptor> = manifest
        .layers
        .iter()
        .filter(|l| media_types::kind(l.media_type().as_ref()) == media_types::Kind::Layer)
        .cloned()
        .collect();
    let layers = &layers;
    if layers.len() != diff_ids.len() {
        return Err(Error::InvalidArgument(format!(
            "image {}: {} layers but {} diff IDs in its config",
            image.digest(),
            layers.len(),
            diff_ids.len()
        )));
    }
    if layers.len() > MAX_LAYERS {
        return Err(Error::InvalidArgument(format!(
            "image {}: {} layers, more than the {MAX_LAYERS} unpack takes",
            image.digest(),
            layers.len()
        )));
    }
    if let Some(layer) = layers
        .iter()
        .find(|l| !is_tar_layer(l.media_type().as_ref()))
    {
        return Err(Error::Unimplemented(format!(
            "layer {}: media type {:?} is not a tar layer (plain, gzip or zstd) that unpack applies",
            layer.digest(),
            layer.media_type().as_ref()
        )));
    }
    let chain_ids = manifest::chain_ids(&diff_ids);
    // The first missing layer: everything below it is already unpacked.
    let mut first_missing = layers.len();
    for (i, chain_id) in chain_ids.iter().enumerate().rev() {
        match snapshotter.stat(chain_id.as_ref()).await {
            Ok(_) => break,
            Err(e) if e.is_not_found() => first_missing = i,
            Err(e) => return Err(e),
        }
    }
    let send = |event: UnpackEvent| {
        if let Some(events) = &options.events {
            let _ = events.send(event);
        }
    };
    for i in 0..first_missing {
        send(UnpackEvent::Exists {
            layer: layers[i].clone(),
            chain_id: chain_ids[i].clone(),
        });
    }
    let image_layers = Layers {
        descriptors: layers,
        diff_ids: &diff_ids,
        chain_ids: &chain_ids,
    };
    if first_missing < layers.len()
        && snapshotter.can_rebase()
        && unpack_rebased(
            provider,
            snapshotter,
            &image_layers,
            first_missing,
            &options,
        )
        .await?
    {
        return Ok(chain_ids.last().cloned());
    }
    for i in first_missing..layers.len() {
        let started = Instant::now();
        send(UnpackEvent::Unpacking {
            layer: layers[i].clone(),
        });
        let parent = i.checked_sub(1).map(|p| chain_ids[p].to_string());
        let warnings = unpack_layer(
            provider,
            snapshotter,
            &layers[i],
            &diff_ids[i],
            &chain_ids[i],
            parent.as_deref(),
            &options,
        )
        .await?;
        send(UnpackEvent::Unpacked {
            layer: layers[i].clone(),
            chain_id: chain_ids[i].clone(),
            seconds: started.elapsed().as_secs_f64(),
            warnings,
        });
    }
    Ok(chain_ids.last().cloned())
}

/// An image's layers with their diff IDs and chain IDs, index for index.
struct Layers<'a> {
    descriptors: &'a [Descriptor],
    diff_ids: &'a [Digest],
    chain_ids: &'a [Digest],
}

/// The labels of the active snapshots layers are applied into: the promise
/// that only [`apply_layer`](crate::apply::apply_layer) writes them, and
/// which process made them.
fn apply_only() -> Labels {
    Labels::from([
        (APPLY_ONLY_LABEL.to_string(), "true".to_string()),
        (EXTRACTED_BY_LABEL.to_string(), this_process()),
    ])
}

/// The label on the active snapshots [`unpack`] applies layers into: which
/// process made them (its ID, start and a random part, as one string), so
/// [`remove_own_extractions`] finds this process's and no other's. Labels
/// given at commit replace it, so committed layers do not carry it.
pub const EXTRACTED_BY_LABEL: &str = "ocidist.io/unpack.process";

/// Removes the active snapshots that unpacks of this process made and
/// abandoned (their future was dropped); returns how many went.
///
/// An unpack cleans up after itself when it fails, but not when its future
/// is dropped: no async work runs on a drop. A program that stops unpacks
/// that way (a timeout, a client gone, dist on SIGINT) calls this
/// afterwards, as containerd's unpacker removes its extraction when its
/// context is cancelled. It may be called at any time, also while other
/// unpacks of this process run on the same snapshotter: it finds this
/// process's extractions by their [`EXTRACTED_BY_LABEL`] (so the
/// snapshotter must keep labels, as containerd's do) and leaves those of
/// unpacks still running, and those of other processes (which
/// [`gc::prune`](crate::gc::prune) removes once their lease has expired or
/// they are older than its grace period).
///
/// A dropped unpack's layer still being applied on a blocking thread stops
/// at its next read, so the removal may race its last write (a directory
/// left behind goes with the snapshotter's next clean-up). An extraction
/// whose `prepare` was still under way on a blocking thread when the walk
/// ran is left for a later call (or for `prune`). A removal that fails is
/// returned as the error, after the others were tried.
pub async fn remove_own_extractions<S: Snapshotter + ?Sized>(snapshotter: &S) -> Result<usize> {
    let this_process = this_process();
    let filter = format!("labels.\"{EXTRACTED_BY_LABEL}\"=={this_process},kind==active");
    let candidates = match snapshotter.walk(&[&filter]).await {
        // A snapshotter of someone else's that does not take this filter:
        // every snapshot, checked below.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidArgument | ErrorKind::Unimplemented
            ) =>
        {
            snapshotter.walk(&[]).await?
        }
        other => other?,
    };
    let mut removed = 0;
    let mut first_error = None;
    for info in candidates {
        // Checked again: a snapshotter of someone else's may filter loosely.
        let ours =
            info.kind == Kind::Active && info.labels.get(EXTRACTED_BY_LABEL) == Some(&this_process);
        if !ours || running().contains(&info.name) {
            continue;
        }
        match snapshotter.remove(&info.name).await {
            Ok(()) => removed += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(removed), Err)
}

/// This process, as [`EXTRACTED_BY_LABEL`] names it: the ID alone could be
/// another process's in another PID namespace sharing the snapshotter.
/// Made again when the ID changes: a child forked without `exec` has the
/// parent's memory, token included, but none of its unpacks.
fn this_process() -> String {
    static THIS_PROCESS: Mutex<Option<(u32, String)>> = Mutex::new(None);
    let pid = std::process::id();
    let mut token = THIS_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match &*token {
        Some((made_by, token)) if *made_by == pid => token.clone(),
        _ => {
            use std::hash::{BuildHasher, Hasher};
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let random = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish();
            let made = format!("{pid}-{started}-{random:016x}");
            *token = Some((pid, made.clone()));
            made
        }
    }
}

/// The extraction keys of the unpacks of this process that are running.
fn running() -> std::sync::MutexGuard<'static, std::collections::BTreeSet<String>> {
    static RUNNING: Mutex<std::collections::BTreeSet<String>> =
        Mutex::new(std::collections::BTreeSet::new());
    RUNNING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An unpack's extraction keys, marked running from before they are
/// prepared until the unpack ends, by returning or by being dropped.
/// Made before the first `prepare` and dropped after the last `remove`, so
/// [`remove_own_extractions`] never takes a snapshot an unpack still uses.
struct Running(Vec<String>);

impl Running {
    fn new(keys: Vec<String>) -> Self {
        running().extend(keys.iter().cloned());
        Running(keys)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = running();
        for key in &self.0 {
            running.remove(key);
        }
    }
}

fn extract_key(chain_id: &Digest) -> String {
    tempfile_name(
        std::path::Path::new(""),
        &format!("{EXTRACT_KEY_PREFIX}{chain_id}-"),
    )
    .to_string_lossy()
    .into_owned()
}

/// Which of the layers being applied at once are done, so a layer can wait
/// for the ones below it.
#[derive(Default)]
struct AppliedSoFar {
    state: Mutex<AppliedState>,
    changed: Condvar,
    /// Wakes the async side (a layer waiting for its bytes to exist) when
    /// a layer fails.
    failure: tokio::sync::Notify,
}

#[derive(Default)]
struct AppliedState {
    done: Vec<bool>,
    /// Layers `0..prefix` are all done.
    prefix: usize,
    failed: bool,
    /// The layer that failed first, whose error is the one to report (the
    /// others may only have been stopped because of it).
    first_failure: Option<usize>,
}

impl AppliedSoFar {
    fn lock(&self) -> std::sync::MutexGuard<'_, AppliedState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mark(&self, layer: usize, ok: bool) {
        let mut state = self.lock();
        if !ok {
            if !state.failed && layer != usize::MAX {
                state.first_failure = Some(layer);
            }
            state.failed = true;
            self.failure.notify_waiters();
        } else {
            if state.done.len() <= layer {
                state.done.resize(layer + 1, false);
            }
            state.done[layer] = true;
            while state.done.get(state.prefix) == Some(&true) {
                state.prefix += 1;
            }
        }
        self.changed.notify_all();
    }

    fn fail(&self) {
        self.mark(usize::MAX, false);
    }

    fn failed(&self) -> bool {
        self.lock().failed
    }

    fn first_failure(&self) -> Option<usize> {
        self.lock().first_failure
    }

    /// Returns once a layer has failed.
    async fn failed_yet(&self) {
        loop {
            let notified = self.failure.notified();
            tokio::pin!(notified);
            // Registered before looking, so a failure in between is not missed.
            notified.as_mut().enable();
            if self.failed() {
                return;
            }
            notified.await;
        }
    }

    /// Blocks until layers `0..layer` are done; an error if one failed.
    fn wait_below(&self, layer: usize) -> Result<()> {
        let mut state = self.lock();
        loop {
            if state.failed {
                return Err(Error::Layer(
                    "stopped: another layer of this unpack failed".into(),
                ));
            }
            if state.prefix >= layer {
                return Ok(());
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

/// Marks the unpack failed when dropped, which is harmless once it is over.
struct FailOnDrop(Arc<AppliedSoFar>);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        self.0.fail();
    }
}

/// A layer's bytes, which stop (an error) once another layer has failed or
/// the unpack was dropped.
struct StopWhenFailed<R> {
    inner: R,
    applied: Arc<AppliedSoFar>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StopWhenFailed<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.applied.failed() {
            return std::task::Poll::Ready(Err(std::io::Error::other(
                "stopped: another layer of this unpack failed",
            )));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The parallel unpack for snapshotters that can rebase. Returns false,
/// having changed nothing, when their mounts are not the expected writable
/// directories (the caller then unpacks layer by layer).
async fn unpack_rebased<P, S>(
    provider: &P,
    snapshotter: &S,
    layers: &Layers<'_>,
    first: usize,
    options: &UnpackOptions,
) -> Result<bool>
where
    P: Provider + ?Sized,
    S: Snapshotter + ?Sized,
{
    let count = layers.descriptors.len() - first;
    let keys: Vec<String> = layers.chain_ids[first..].iter().map(extract_key).collect();
    let _running = Running::new(keys.clone());
    // The first missing layer stands on its committed parent; the others are
    // prepared alone and get theirs at commit.
    let requests = keys
        .iter()
        .enumerate()
        .map(|(j, key)| PrepareRequest {
            key: key.clone(),
            parent: (j == 0)
                .then(|| first.checked_sub(1))
                .flatten()
                .map(|p| layers.chain_ids[p].to_string()),
            labels: apply_only(),
        })
        .collect();
    let remove_all = |removed: Vec<String>| async move {
        for key in &removed {
            let _ = snapshotter.remove(key).await;
        }
    };
    let all_mounts = match snapshotter.prepare_all(requests).await {
        Ok(all) => all,
        Err(e) => {
            remove_all(keys).await;
            return Err(e);
        }
    };
    // Layer j is an overlay upper directory over layers j-1, ..., 0 and the
    // committed parent's layers.
    let mut targets = Vec::with_capacity(count);
    let mut lowers = Vec::new();
    for (j, mounts) in all_mounts.iter().enumerate() {
        let target = match ApplyTarget::from_mounts(mounts) {
            Ok(ApplyTarget::Tree(upper)) if j > 0 => ApplyTarget::OverlayUpper {
                upper,
                lowers: lowers.clone(),
            },
            Ok(target) if j == 0 => target,
            _ => {
                remove_all(keys).await;
                return Ok(false);
            }
        };
        let (upper, below) = match &target {
            ApplyTarget::Tree(upper) => (upper, &[][..]),
            ApplyTarget::OverlayUpper { upper, lowers } => (upper, &lowers[..]),
        };
        lowers = std::iter::once(upper.clone())
            .chain(below.iter().cloned())
            .collect();
        targets.push(target);
    }

    let send = |event: UnpackEvent| {
        if let Some(events) = &options.events {
            let _ = events.send(event);
        }
    };
    let applied = Arc::new(AppliedSoFar::default());
    // Dropped before the end (the caller gave up), the layers still being
    // applied on blocking threads stop too, and none waits for lowers forever.
    let _stop_on_drop = FailOnDrop(applied.clone());
    let apply_one = |j: usize| {
        let applied = applied.clone();
        let target = &targets[j];
        async move {
            let i = first + j;
            let layer = &layers.descriptors[i];
            let started = Instant::now();
            if applied.failed() {
                return Err(Error::Layer(
                    "stopped: another layer of this unpack failed".into(),
                ));
            }
            send(UnpackEvent::Unpacking {
                layer: layer.clone(),
            });
            let lowers_ready = (j > 0).then(|| {
                let applied = applied.clone();
                Arc::new(move || applied.wait_below(j)) as LowersReady
            });
            let result = async {
                // Once any layer fails, the others stop reading: a layer
                // still downloading is not waited for to the end.
                // A layer whose download has not started yet waits for it
                // only until another layer fails.
                let reader = tokio::select! {
                    reader = provider.reader(layer) => reader?,
                    () = applied.failed_yet() => {
                        return Err(Error::Layer(
                            "stopped: another layer of this unpack failed".into(),
                        ));
                    }
                };
                let reader = StopWhenFailed {
                    inner: reader,
                    applied: applied.clone(),
                };
                let done = apply_layer_over(
                    target,
                    reader,
                    Some(layer.media_type().as_ref()),
                    options.apply.clone(),
                    lowers_ready,
                )
                .await
                .map_err(|e| e.in_layer(layer.digest()))?;
                check_diff_id(layer, &layers.diff_ids[i], &done.diff_id)?;
                Ok(done.warnings)
            }
            .await;
            applied.mark(j, result.is_ok());
            result.map(|warnings| (started, warnings))
        }
    };

    // Applied layers go to the committer in order; it commits whatever has
    // arrived as one batch.
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, Instant, Vec<String>)>();
    let applier = async {
        let mut results = futures::stream::iter(0..count)
            .map(apply_one)
            .buffered(options.concurrency.max(1));
        let mut first_error = None;
        let mut j = 0;
        while let Some(result) = results.next().await {
            match result {
                Ok((started, warnings)) if first_error.is_none() => {
                    let _ = ready_tx.send((j, started, warnings));
                }
                Ok(_) => {}
                Err(e) => {
                    applied.fail();
                    if applied.first_failure() == Some(j) {
                        first_error = Some(e);
                    } else {
                        first_error.get_or_insert(e);
                    }
                }
            }
            j += 1;
        }
        drop(ready_tx);
        first_error.map_or(Ok(()), Err)
    };
    let mut committed = 0usize;
    // Snapshots of ours whose names the other unpack committed first: layers
    // above them, applied over their directories, may still read them.
    let mut lost = Vec::new();
    let committer = async {
        while let Some(next) = ready_rx.recv().await {
            let mut batch = vec![next];
            while let Ok(more) = ready_rx.try_recv() {
                batch.push(more);
            }
            let requests: Vec<CommitRequest> = batch
                .iter()
                .map(|&(j, _, _)| {
                    let i = first + j;
                    let mut labels = options.labels.clone();
                    labels.insert(UNCOMPRESSED_LABEL.into(), layers.diff_ids[i].to_string());
                    CommitRequest {
                        name: layers.chain_ids[i].to_string(),
                        key: keys[j].clone(),
                        opts: CommitOpts {
                            labels,
                            parent: (j > 0).then(|| layers.chain_ids[i - 1].to_string()),
                        },
                    }
                })
                .collect();
            match commit_batch(snapshotter, requests).await {
                Ok(keys) => lost.extend(keys),
                Err(e) => {
                    applied.fail();
                    return Err(e);
                }
            }
            committed += batch.len();
            for (j, started, warnings) in batch {
                send(UnpackEvent::Unpacked {
                    layer: layers.descriptors[first + j].clone(),
                    chain_id: layers.chain_ids[first + j].clone(),
                    seconds: started.elapsed().as_secs_f64(),
                    warnings,
                });
            }
        }
        Ok(())
    };
    let (applied_result, committed_result) = futures::join!(applier, committer);
    let result = committed_result.and(applied_result);
    if result.is_err() {
        lost.extend_from_slice(&keys[committed..]);
    }
    remove_all(lost).await;
    result.map(|()| true)
}

/// Commits `requests` together; if one name is already there (another
/// unpack of the same image got there first), commits them one by one,
/// using the other unpack's snapshot for those names. Returns the keys of
/// ours that lost, for the caller to remove.
async fn commit_batch<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    requests: Vec<CommitRequest>,
) -> Result<Vec<String>> {
    match snapshotter.commit_all(requests.clone()).await {
        Err(e) if e.is_already_exists() => {}
        other => return other.map(|()| Vec::new()),
    }
    let mut lost = Vec::new();
    for request in requests {
        match snapshotter
            .commit_with(&request.name, &request.key, request.opts)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => lost.push(request.key),
            Err(e) => return Err(e),
        }
    }
    Ok(lost)
}

fn check_diff_id(layer: &Descriptor, expected: &Digest, actual: &Digest) -> Result<()> {
    if actual != expected {
        return Err(Error::DiffIdMismatch {
            layer: layer.digest().to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

async fn unpack_layer<P, S>(
    provider: &P,
    snapshotter: &S,
    layer: &Descriptor,
    diff_id: &Digest,
    chain_id: &Digest,
    parent: Option<&str>,
    options: &UnpackOptions,
) -> Result<Vec<String>>
where
    P: Provider + ?Sized,
    S: Snapshotter + ?Sized,
{
    let key = extract_key(chain_id);
    let _running = Running::new(vec![key.clone()]);
    // Dropped before the end (the caller gave up), the layer still being
    // applied on a blocking thread stops at its next read.
    let applied = Arc::new(AppliedSoFar::default());
    let _stop_on_drop = FailOnDrop(applied.clone());
    let mounts = match snapshotter.prepare(&key, parent, apply_only()).await {
        Ok(mounts) => mounts,
        Err(e) => {
            return if e.is_already_exists() {
                Ok(Vec::new())
            } else {
                Err(e)
            };
        }
    };
    let result: Result<Vec<String>> = async {
        let reader = StopWhenFailed {
            inner: provider.reader(layer).await?,
            applied,
        };
        let applied = apply_layer_to_mounts(
            &mounts,
            reader,
            Some(layer.media_type().as_ref()),
            options.apply.clone(),
        )
        .await
        .map_err(|e| e.in_layer(layer.digest()))?;
        check_diff_id(layer, diff_id, &applied.diff_id)?;
        let mut labels = options.labels.clone();
        labels.insert(UNCOMPRESSED_LABEL.into(), diff_id.to_string());
        snapshotter.commit(chain_id.as_ref(), &key, labels).await?;
        Ok(applied.warnings)
    }
    .await;
    match result {
        Ok(warnings) => Ok(warnings),
        // Another unpack of the same image got there first: use its layer.
        Err(e) if e.is_already_exists() => {
            let _ = snapshotter.remove(&key).await;
            Ok(Vec::new())
        }
        Err(e) => {
            let _ = snapshotter.remove(&key).await;
            Err(e)
        }
    }
}
