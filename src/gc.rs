//! Garbage collection of a whole store: the snapshots no image, lease or
//! `containerd.io/gc.root` label keeps, then the blobs and ingests, as
//! containerd's collector sweeps snapshots and content in one pass.
//!
//! The order is what keeps a pull running meanwhile safe, so [`collect`]
//! does it:
//!
//! 1. The caller holds the leases ([`Leases::hold`], or
//!    [`Leases::hold_keeping_expired`] for a dry run, which must not remove
//!    the expired ones) *before* the collection reads the images, and keeps
//!    the [`Held`] until it returns: a pull takes its lease before it writes
//!    anything, so what it relies on is either in an image already or held.
//! 2. Snapshots first, keeping the layers of every image (whatever the
//!    platform unpacked), the snapshots the live leases hold, and removing
//!    the extractions of the leases found expired, whatever their age.
//! 3. Then the content, with the leases' blobs as more roots. A failed
//!    snapshot prune does not stop it: on a full disk the snapshot database
//!    cannot record a removal, and the blobs are the room it needs.
//!
//! [`Leases::hold`]: crate::content::lease::Leases::hold
//! [`Leases::hold_keeping_expired`]: crate::content::lease::Leases::hold_keeping_expired

use std::collections::HashSet;
use std::time::Duration;

use crate::content::lease::Held;
use crate::content::{IngestManager, Manager, Provider};
use crate::images::ImageStore;
use crate::images::gc::{GcOptions, GcReport, gc};
use crate::snapshot::Snapshotter;
use crate::snapshot::gc::{PruneOptions, PruneReport, image_chain_ids, prune};

/// How [`collect`] collects.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CollectOptions {
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
    /// Snapshots and blobs younger than this are kept: an unpack or a pull
    /// in another process may still need them before its image is recorded.
    pub grace: Duration,
    /// Ingests not written for this long are aborted; `None` keeps them all.
    pub ingest_max_age: Option<Duration>,
}

impl Default for CollectOptions {
    /// Snapshot pruning's and content collection's defaults: a grace period
    /// of 15 minutes, ingests kept for a day.
    fn default() -> Self {
        let content = GcOptions::default();
        CollectOptions {
            dry_run: false,
            grace: content.grace,
            ingest_max_age: content.ingest_max_age,
        }
    }
}

impl CollectOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports what would be removed, removing nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Keeps unreferenced snapshots and blobs younger than `grace`.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Aborts ingests not written for `age`; `None` keeps them all.
    pub fn ingest_max_age(mut self, age: Option<Duration>) -> Self {
        self.ingest_max_age = age;
        self
    }
}

/// What [`collect`] did: each half reports on its own, as one does not stop
/// the other.
#[derive(Debug)]
#[non_exhaustive]
pub struct Collected {
    /// Each snapshotter's prune, in the order given, up to the first that
    /// failed.
    pub snapshots: Vec<(String, PruneReport)>,
    /// Why the snapshots were not all pruned. The content was collected
    /// all the same.
    pub snapshots_failed: Option<SnapshotsFailed>,
    /// The content's collection.
    pub content: Result<GcReport, crate::images::Error>,
}

/// Why [`collect`] pruned no more snapshots: which step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotsFailed {
    /// The images could not be listed, so which layers to keep is unknown.
    #[error("listing the images")]
    Images(#[source] crate::snapshot::Error),
    /// An image's layers could not be listed (its manifest or config does
    /// not decode, say), so which layers to keep is unknown.
    #[error("image {name}")]
    Image {
        /// The image's name.
        name: String,
        /// Why its layers could not be listed.
        #[source]
        source: crate::snapshot::Error,
    },
    /// A snapshotter's prune failed; those before it in the list were
    /// pruned.
    #[error("{snapshotter} snapshots")]
    Snapshotter {
        /// The snapshotter's name, as given.
        snapshotter: String,
        /// Its prune's error.
        #[source]
        source: crate::snapshot::Error,
    },
}

/// Collects what nothing keeps: the snapshots of `snapshotters` (each
/// named, for the report), then the blobs and ingests of `content`; see the
/// [module docs](self) for the order and what is kept. `held` are the
/// leases, held by the caller since before this was called, and until it
/// returns.
///
/// ```
/// use ocidist::content::{lease::Leases, local::LocalStore, write_blob, Labels, WriterOpts};
/// use ocidist::gc::{CollectOptions, collect};
/// use ocidist::images::DbImageStore;
/// use ocidist::snapshot::native::NativeSnapshotter;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let root = tempfile::tempdir()?;
/// let content = LocalStore::open(root.path().join("content"))?;
/// let images = DbImageStore::open(root.path().join("images.redb"))?;
/// let native = NativeSnapshotter::open(root.path().join("snapshots"))?;
/// let leases = Leases::open(root.path().join("leases"))?;
/// write_blob(&content, WriterOpts::new("orphan"), &b"no image needs me"[..], Labels::new()).await?;
///
/// // hold() waits for a collection elsewhere: off the async workers.
/// let held = tokio::task::spawn_blocking(move || leases.hold()).await??;
/// let options = CollectOptions::new().grace(std::time::Duration::ZERO);
/// let collected = collect(&content, &images, &held, &[("native", &native)], &options).await;
/// drop(held);
/// assert_eq!(collected.content?.blobs.len(), 1);
/// assert!(collected.snapshots_failed.is_none());
/// # Ok(())
/// # }
/// ```
pub async fn collect<S, I>(
    content: &S,
    images: &I,
    held: &Held,
    snapshotters: &[(&str, &dyn Snapshotter)],
    options: &CollectOptions,
) -> Collected
where
    S: Provider + Manager + IngestManager + ?Sized,
    I: ImageStore + ?Sized,
{
    let mut snapshots = Vec::with_capacity(snapshotters.len());
    let snapshots_failed =
        prune_snapshots(content, images, held, snapshotters, options, &mut snapshots)
            .await
            .err();
    let content_options = GcOptions {
        dry_run: options.dry_run,
        grace: options.grace,
        ingest_max_age: options.ingest_max_age,
        roots: held.content().clone(),
    };
    Collected {
        snapshots,
        snapshots_failed,
        content: gc(content, images, &content_options).await,
    }
}

/// The snapshot half of [`collect`]: each snapshotter's report goes into
/// `reports` as it is made.
async fn prune_snapshots<S, I>(
    content: &S,
    images: &I,
    held: &Held,
    snapshotters: &[(&str, &dyn Snapshotter)],
    options: &CollectOptions,
    reports: &mut Vec<(String, PruneReport)>,
) -> Result<(), SnapshotsFailed>
where
    S: Provider + ?Sized,
    I: ImageStore + ?Sized,
{
    if snapshotters.is_empty() {
        return Ok(());
    }
    let all = images
        .list(&[])
        .await
        .map_err(|e| SnapshotsFailed::Images(e.into()))?;
    let mut keep: HashSet<String> = held.snapshots().clone();
    for image in &all {
        let chains = image_chain_ids(content, &image.target)
            .await
            .map_err(|source| SnapshotsFailed::Image {
                name: image.name.clone(),
                source,
            })?;
        keep.extend(chains.iter().map(ToString::to_string));
    }
    let prune_options = PruneOptions {
        dry_run: options.dry_run,
        grace: options.grace,
        abandoned: held.abandoned_snapshots().clone(),
    };
    for (name, snapshotter) in snapshotters {
        let report = prune(*snapshotter, &keep, &prune_options)
            .await
            .map_err(|source| SnapshotsFailed::Snapshotter {
                snapshotter: name.to_string(),
                source,
            })?;
        reports.push((name.to_string(), report));
    }
    Ok(())
}
