//! Garbage collection of snapshots: remove what no image needs.
//!
//! A committed snapshot is kept when its name is in the caller's keep set
//! (usually [`image_chain_ids`] of every image in the image store), when it
//! carries the [`GC_ROOT`] label (`containerd.io/gc.root`, as containerd's
//! collector reads it on snapshots and blobs alike), when it is younger than
//! the grace period (an unpack in another process may be committing the
//! layers above it, its image not yet named), or when a kept
//! or active snapshot stands on it. Active snapshots are the caller's (a
//! mounted rootfs, a container's writable layer) and are kept, except the
//! temporary ones [`unpack`](crate::unpack()) prepares: those older than the
//! grace period belong to an unpack that was killed, and are removed, and so
//! are those a lease found dead names ([`PruneOptions::abandoned`]), young
//! or not. A snapshot that gains a child while the sweep runs is kept too.
//! Last, the snapshotter's [`cleanup`](Snapshotter::cleanup) sweeps what
//! killed or failed operations left that no snapshot owns.
//!
//! A snapshot `keep` names is kept whatever its kind, so an unpack that
//! takes a lease ([`lease::LeasedSnapshotter`](crate::lease::LeasedSnapshotter))
//! is safe however long it runs when the caller adds the snapshots the live
//! leases hold ([`Leases::hold`](ocidist_content::lease::Leases::hold)) and
//! holds them until the prune returns, as containerd protects a pull with a
//! lease. The grace period covers unpacks without one, as it does for blobs in
//! [`ocidist_images::gc()`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use ocidist_content::{Descriptor, Digest, Provider};
use ocidist_images::gc::GC_ROOT;
use ocidist_images::manifest;
use ocidist_images::platforms;

use crate::unpack::EXTRACT_KEY_PREFIX;
use crate::{Cleanup, Info, Kind, Result, Snapshotter};

/// Options for [`prune`].
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Snapshots younger than this (since their last update) are kept: an
    /// unpack in another process may still be writing them, or committing
    /// the layers above them.
    pub grace: Duration,
    /// Snapshots whose user is known to be gone (those of the leases a
    /// collection found expired,
    /// [`Held::abandoned_snapshots`](ocidist_content::lease::Held::abandoned_snapshots)):
    /// the unpack extractions among them go whatever their age.
    pub abandoned: HashSet<String>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            dry_run: false,
            grace: Duration::from_secs(15 * 60),
            abandoned: HashSet::new(),
        }
    }
}

/// What [`prune`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// The snapshots removed, children before their parents.
    pub removed: Vec<Info>,
    /// How many snapshots were kept.
    pub kept: usize,
    /// What the snapshotter's [`cleanup`](Snapshotter::cleanup) removed
    /// after: storage no snapshot owns.
    pub cleanup: Cleanup,
}

/// Removes the snapshots of `snapshotter` that neither `keep` names (active
/// or committed), nor the [`GC_ROOT`] label marks, nor anything kept stands
/// on; see the [module docs](self) for the rules.
///
/// ```
/// use std::collections::HashSet;
/// use ocidist_snapshot::{Labels, Snapshotter, native::NativeSnapshotter};
/// use ocidist_snapshot::gc::{PruneOptions, prune};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let snapshotter = NativeSnapshotter::open(dir.path())?;
/// snapshotter.prepare("a", None, Labels::new()).await?;
/// snapshotter.commit("layer-a", "a", Labels::new()).await?;
/// // Young snapshots are kept (an unpack may be using them)...
/// let report = prune(&snapshotter, &HashSet::new(), &PruneOptions::default()).await?;
/// assert!(report.removed.is_empty());
/// // ...until the grace period is over.
/// let past_grace = PruneOptions { grace: std::time::Duration::ZERO, ..Default::default() };
/// let report = prune(&snapshotter, &HashSet::new(), &past_grace).await?;
/// assert_eq!(report.removed[0].name, "layer-a");
/// # Ok(())
/// # }
/// ```
pub async fn prune<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    keep: &HashSet<String>,
    opts: &PruneOptions,
) -> Result<PruneReport> {
    let all = snapshotter.walk(&[]).await?;
    let now = SystemTime::now();
    // An extraction whose unpack is gone will never be finished.
    let abandoned = |info: &Info| {
        info.kind == Kind::Active
            && info.name.starts_with(EXTRACT_KEY_PREFIX)
            && opts.abandoned.contains(&info.name)
    };
    let young = |info: &Info| {
        now.duration_since(info.updated).unwrap_or(Duration::ZERO) < opts.grace && !abandoned(info)
    };
    let by_name: HashMap<&str, &Info> = all.iter().map(|i| (i.name.as_str(), i)).collect();
    // Mark: the roots, then everything beneath them.
    let mut kept: HashSet<&str> = HashSet::new();
    for info in &all {
        let root = keep.contains(&info.name)
            || info.labels.contains_key(GC_ROOT)
            || young(info)
            // Active snapshots are their owner's, but for an unpack's abandoned ones.
            || (info.kind != Kind::Committed && !info.name.starts_with(EXTRACT_KEY_PREFIX));
        let mut next = root.then_some(info);
        while let Some(current) = next {
            if !kept.insert(current.name.as_str()) {
                break;
            }
            next = current
                .parent
                .as_deref()
                .and_then(|parent| by_name.get(parent).copied());
        }
    }
    // Sweep: children first, so no removal meets a snapshot with children.
    let mut doomed: Vec<&Info> = all
        .iter()
        .filter(|i| !kept.contains(i.name.as_str()))
        .collect();
    let depth = |info: &Info| {
        let mut depth = 0usize;
        let mut parent = info.parent.as_deref();
        while let Some(p) = parent {
            depth += 1;
            parent = by_name.get(p).and_then(|i| i.parent.as_deref());
        }
        depth
    };
    doomed.sort_by_key(|info| std::cmp::Reverse(depth(info)));
    let mut report = PruneReport {
        removed: Vec::with_capacity(doomed.len()),
        kept: kept.len(),
        cleanup: Cleanup::default(),
    };
    for info in doomed {
        if !opts.dry_run {
            match snapshotter.remove(&info.name).await {
                Ok(()) => {}
                // Removed meanwhile by someone else: the goal is met.
                Err(e) if e.is_not_found() => continue,
                // A child appeared since the walk (or its parent's did, refused
                // just before): someone is using it now.
                Err(e) if e.kind() == crate::ErrorKind::FailedPrecondition => {
                    report.kept += 1;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        report.removed.push(info.clone());
    }
    // Last, so that what these removals could not take goes too.
    report.cleanup = snapshotter.cleanup(opts.dry_run).await?;
    Ok(report)
}

/// The chain IDs of every layer of every platform of `image` whose manifest
/// and config are in `provider`: the snapshots an unpack of it makes.
/// Platforms not fetched are skipped, and so are documents that do not
/// parse as what they claim to be although their bytes are the ones their
/// digest names (an artifact whose config is not an image config): nothing
/// was unpacked from them, and one such image must not stop a collection of
/// the whole store. Other errors (the store cannot be read, a document gone
/// bad on disk) are returned, since the snapshots to keep are then unknown.
pub async fn image_chain_ids<P: Provider + ?Sized>(
    provider: &P,
    image: &Descriptor,
) -> Result<Vec<Digest>> {
    let mut out = Vec::new();
    let offered = match manifest::platforms(provider, image).await {
        Ok(offered) => offered,
        Err(e) if nothing_unpacked(provider, &e).await => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for platform in offered {
        match manifest::diff_ids(provider, image, &platforms::only_strict(&platform)).await {
            Ok(diff_ids) => {
                for chain_id in manifest::chain_ids(&diff_ids) {
                    if !out.contains(&chain_id) {
                        out.push(chain_id);
                    }
                }
            }
            Err(e) if nothing_unpacked(provider, &e).await => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Whether `error`, met reading an image's documents, means nothing can
/// have been unpacked from them: a document not fetched, or one that is
/// intact (its bytes hash to its digest) and yet not the document it claims
/// to be, which an unpack would have refused too.
async fn nothing_unpacked<P: Provider + ?Sized>(
    provider: &P,
    error: &ocidist_images::Error,
) -> bool {
    match error {
        e if e.kind() == ocidist_content::ErrorKind::NotFound => true,
        ocidist_images::Error::InvalidDocument { digest, .. } => {
            let desc = ocidist_content::descriptor(digest.clone(), 0);
            match ocidist_content::read_blob(provider, &desc, manifest::MAX_MANIFEST_SIZE).await {
                Ok(bytes) => ocidist_content::digest_of(digest.algorithm(), &bytes)
                    .is_ok_and(|actual| actual == *digest),
                Err(_) => false,
            }
        }
        _ => false,
    }
}
