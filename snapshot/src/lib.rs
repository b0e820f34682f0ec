//! Snapshotters, layer apply and image unpack: how a pulled image becomes a
//! root filesystem.
//!
//! - [`Snapshotter`] is containerd's snapshot model: a snapshot is *active*
//!   (writable, being built), a *view* (read-only, throwaway) or *committed*
//!   (immutable, a parent for others). Keys of all three share one namespace.
//!   [`native::NativeSnapshotter`] copies the parent for each child (or
//!   hard-links its files, for a child only a layer apply writes);
//!   [`overlay::OverlaySnapshotter`] stacks directories with overlayfs.
//! - [`apply`] writes one layer (gzip, zstd or plain tar) into a directory
//!   with every path resolved beneath it, and returns its diff ID.
//! - [`unpack()`] applies an image's layers into snapshots named by their
//!   [`chain IDs`](ocidist_images::manifest::chain_ids), skipping the ones
//!   already there.
//!
//! ```
//! use ocidist_snapshot::{Labels, Snapshotter, native::NativeSnapshotter};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let snapshotter = NativeSnapshotter::open(dir.path())?;
//! let mounts = snapshotter.prepare("layer-1", None, Labels::new()).await?;
//! // Without a mount, the directory itself: fill it with a layer.
//! let root = ocidist_snapshot::mount::writable_dir(&mounts).expect("a bind mount");
//! std::fs::write(root.join("hello"), "world")?;
//! snapshotter.commit("base", "layer-1", Labels::new()).await?;
//! let info = snapshotter.stat("base").await?;
//! assert_eq!(info.kind, ocidist_snapshot::Kind::Committed);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::SystemTime;

pub mod apply;
mod base;
mod error;
pub mod gc;
pub mod lease;
mod metadata;
pub mod mount;
pub mod native;
pub mod overlay;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod tree;
mod unpack;

/// The attribute [`Snapshotter`] is declared and implemented with,
/// re-exported so a snapshotter of your own needs no dependency of its own
/// for it.
pub use async_trait::async_trait;
pub use error::{Error, ErrorKind, Result};
pub use mount::Mount;
pub use tree::copy_tree;
pub use unpack::{
    EXTRACT_KEY_PREFIX, EXTRACTED_BY_LABEL, MAX_LAYERS, UNCOMPRESSED_LABEL, UnpackEvent,
    UnpackOptions, remove_own_extractions, unpack,
};

/// Labels on a snapshot: free-form metadata, also used by garbage collection.
pub type Labels = BTreeMap<String, String>;

/// A hint on [`Snapshotter::prepare`], set to `true`: the caller will write
/// the new active snapshot only by applying layers into it (which replaces
/// or removes entries, never writes into an existing file or changes its
/// metadata), then commit or remove it. [`unpack()`] sets it.
///
/// The native snapshotter then shares the parent's files with the new
/// snapshot by hard link instead of copying them, since neither side will
/// ever change them: a layer costs its own size, not its parent's (OSTree
/// checks out its immutable objects the same way). Its directories are
/// still made anew. Other snapshotters ignore the hint. A prepare without it
/// (a container's root filesystem, say) always gets a full copy.
pub const APPLY_ONLY_LABEL: &str = "ocidist.io/snapshot.apply-only";

/// The state of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, made from a committed parent; never committed.
    View,
    /// Writable; becomes committed with [`Snapshotter::commit`].
    Active,
    /// Immutable; the parent of other snapshots.
    Committed,
}

impl Kind {
    /// The name used in filters and listings (`view`, `active`, `committed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a snapshotter knows of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Its key (for active snapshots and views) or name (for committed ones).
    pub name: String,
    /// The committed snapshot it was made from, if any.
    pub parent: Option<String>,
    /// Active, view or committed.
    pub kind: Kind,
    /// Labels set at prepare, commit or update.
    pub labels: Labels,
    /// When it was created (prepared, or committed for committed snapshots).
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
}

impl ocidist_content::filters::Fields for Info {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["name"] => Some(self.name.clone()),
            // containerd's parent is always present, empty for none, so
            // `parent!=""` selects snapshots that have one.
            ["parent"] => Some(self.parent.clone().unwrap_or_default()),
            ["kind"] => Some(self.kind.as_str().to_string()),
            ["labels", key] => self.labels.get(*key).cloned(),
            _ => None,
        }
    }
}

/// Disk used by a snapshot itself (not its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of disk in use (allocated blocks).
    pub size: u64,
    /// Number of inodes.
    pub inodes: u64,
}

/// How a built-in snapshotter is opened
/// ([`NativeSnapshotter::open_with_options`](native::NativeSnapshotter::open_with_options),
/// [`OverlaySnapshotter::open_with_options`](overlay::OverlaySnapshotter::open_with_options)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// When its work reaches the disk.
    pub durability: Durability,
    /// Whether opening runs [`Snapshotter::cleanup`], quietly: on by default,
    /// so that what killed processes left goes with no collector running.
    /// A caller that reports the clean-up itself, such as a prune (whose
    /// dry run must change nothing), opens without it.
    pub clean_up: bool,
}

impl From<Durability> for OpenOptions {
    /// `durability`, and the other options as by default.
    fn from(durability: Durability) -> Self {
        OpenOptions {
            durability,
            ..OpenOptions::default()
        }
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            durability: Durability::Synced,
            clean_up: true,
        }
    }
}

/// When a built-in snapshotter's work reaches the disk; chosen when it is
/// opened (`open_with`).
///
/// The metadata database is crash-safe either way; this is about the files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// A commit flushes the filesystem (`syncfs`) before its record says
    /// committed, and a prepare syncs its new directory's entry: after a
    /// crash or power loss, every committed snapshot is whole.
    #[default]
    Synced,
    /// Nothing is flushed: files reach the disk when the kernel writes them
    /// back, as with containerd's snapshotters. Faster (a quarter less time
    /// for a native unpack of many layers, each a full tree); but after a
    /// power loss a committed snapshot may hold empty or short files, and
    /// must be removed by hand. For machines that are rebuilt, not recovered
    /// (CI runners, build caches).
    Writeback,
}

/// Options for [`Snapshotter::commit`] beyond the name and key.
#[derive(Debug, Clone, Default)]
pub struct CommitOpts {
    /// Labels for the committed snapshot.
    pub labels: Labels,
    /// A parent for a snapshot prepared without one ("rebase"): its content is
    /// then the diff on top of this parent. Only snapshotters whose
    /// [`Snapshotter::can_rebase`] is true accept it.
    pub parent: Option<String>,
}

/// One snapshot for [`Snapshotter::prepare_all`].
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    /// The new active snapshot's key.
    pub key: String,
    /// The committed snapshot it stands on, if any.
    pub parent: Option<String>,
    /// Its labels.
    pub labels: Labels,
}

/// One commit for [`Snapshotter::commit_all`].
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The committed snapshot's name.
    pub name: String,
    /// The active snapshot to commit.
    pub key: String,
    /// Labels and, for a rebase, the parent.
    pub opts: CommitOpts,
}

/// containerd's snapshotter: a store of layered filesystem snapshots.
///
/// Contract, shared by every implementation (and checked by
/// the `testsuite` module when the `testsuite` feature is on):
/// - keys of active, view and committed snapshots share one namespace; a
///   duplicate is [`ErrorKind::AlreadyExists`], whatever else is wrong
///   (containerd checks the key first);
/// - a parent must exist and be committed, else [`ErrorKind::NotFound`] or
///   [`ErrorKind::InvalidArgument`] (containerd's kinds); an empty parent is
///   none;
/// - only an active snapshot can be committed ([`ErrorKind::FailedPrecondition`]),
///   and its labels are replaced by the commit's, not inherited;
/// - removing a snapshot that has children, views included, is
///   [`ErrorKind::FailedPrecondition`];
/// - a label's key and value together are at most 4096 bytes, and its key
///   is not empty, else [`ErrorKind::InvalidArgument`] (the content
///   store's rule);
/// - a view's usage is zero.
///
/// ```
/// use ocidist_snapshot::{Labels, Snapshotter, overlay::OverlaySnapshotter};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let snapshotter = OverlaySnapshotter::open(dir.path())?;
/// snapshotter.prepare("a", None, Labels::new()).await?;
/// snapshotter.commit("base", "a", Labels::new()).await?;
/// let mounts = snapshotter.prepare("b", Some("base"), Labels::new()).await?;
/// // One parent and a writable layer: an overlay mount.
/// assert_eq!(mounts[0].kind, "overlay");
/// let err = snapshotter.remove("base").await.unwrap_err();
/// assert_eq!(err.kind(), ocidist_snapshot::ErrorKind::FailedPrecondition);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Snapshotter: Send + Sync {
    /// The snapshot named `key`.
    async fn stat(&self, key: &str) -> Result<Info>;

    /// Replaces the labels of `info.name` with `info.labels`; with
    /// `fieldpaths` (`labels`, `labels.KEY`), changes only those. A label
    /// whose value is empty is removed (as in containerd), here and in the
    /// labels given to `prepare`, `view` and `commit`.
    async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info>;

    /// Disk used by `key` itself.
    async fn usage(&self, key: &str) -> Result<Usage>;

    /// How to mount `key`: what `prepare` or `view` gave for an active
    /// snapshot or a view. A committed snapshot's mounts are those a view of
    /// it would get, read-only, so a reader need not make one; containerd
    /// refuses a committed key (FailedPrecondition), and the conformance
    /// suite does not require either.
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// A new writable snapshot `key` on top of the committed `parent`.
    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// A new read-only snapshot `key` of the committed `parent`.
    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>>;

    /// Makes the active snapshot `key` the committed snapshot `name`.
    async fn commit(&self, name: &str, key: &str, labels: Labels) -> Result<()> {
        self.commit_with(
            name,
            key,
            CommitOpts {
                labels,
                parent: None,
            },
        )
        .await
    }

    /// [`commit`](Self::commit) with all options.
    async fn commit_with(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()>;

    /// Prepares several active snapshots; returns their mounts, in order.
    ///
    /// The built-in snapshotters make them in one metadata transaction with
    /// one directory sync, all or none: much cheaper than one `prepare` each
    /// when there are many. This default prepares them one at a time and stops
    /// at the first error.
    async fn prepare_all(&self, requests: Vec<PrepareRequest>) -> Result<Vec<Vec<Mount>>> {
        let mut all = Vec::with_capacity(requests.len());
        for request in requests {
            all.push(
                self.prepare(&request.key, request.parent.as_deref(), request.labels)
                    .await?,
            );
        }
        Ok(all)
    }

    /// Commits several active snapshots, in order: a later one may name an
    /// earlier one as its [`CommitOpts::parent`].
    ///
    /// The built-in snapshotters flush their content once (`syncfs`, unless
    /// opened with [`Durability::Writeback`]) and commit every record in one
    /// transaction, all or none; this default
    /// commits them one at a time and stops at the first error.
    async fn commit_all(&self, requests: Vec<CommitRequest>) -> Result<()> {
        for request in requests {
            self.commit_with(&request.name, &request.key, request.opts)
                .await?;
        }
        Ok(())
    }

    /// Removes `key`; a snapshot with children cannot be removed.
    async fn remove(&self, key: &str) -> Result<()>;

    /// Every snapshot matching any of `filters` (containerd's syntax over the
    /// fields `name`, `parent`, `kind` and `labels.KEY`); all when empty.
    async fn walk(&self, filters: &[&str]) -> Result<Vec<Info>>;

    /// Releases resources; later calls may fail. Closing twice is harmless.
    async fn close(&self) -> Result<()>;

    /// Whether [`CommitOpts::parent`] is supported. A snapshotter that says
    /// so stores each layer as an overlayfs upper directory: [`unpack`]
    /// then applies a snapshot prepared with no parent, whose mounts are a
    /// writable bind of that directory, as an overlay upper over the layers
    /// below it (whiteouts as 0/0 character devices, opaque directories by
    /// xattr), and commits it onto its parent.
    fn can_rebase(&self) -> bool {
        false
    }

    /// Removes what killed or failed operations left in this snapshotter's
    /// storage that no snapshot owns (containerd's `Cleanup`); with
    /// `dry_run`, only reports it. Snapshots themselves are
    /// [`gc::prune`]'s, which calls this last. This default finds nothing.
    async fn cleanup(&self, dry_run: bool) -> Result<Cleanup> {
        let _ = dry_run;
        Ok(Cleanup::default())
    }
}

/// What [`Snapshotter::cleanup`] removed or, in a dry run, would remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Directories no snapshot owns, and their size in bytes: a killed
    /// removal's, a killed prepare's staging copy.
    pub dirs: Vec<(PathBuf, u64)>,
    /// Active snapshots whose directory is gone, whose records were dropped:
    /// a failed unpack's, when a full disk had no room to record the removal.
    pub records: Vec<String>,
    /// Directories that would not go, and why.
    pub failed: Vec<(PathBuf, String)>,
}

/// Forwards the trait through shared pointers and references, so
/// `Arc<dyn Snapshotter>` is a snapshotter and one can be lent (`&snapshotter`).
macro_rules! forward_snapshotter {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Snapshotter + ?Sized> Snapshotter for $ptr {
            async fn stat(&self, key: &str) -> Result<Info> {
                (**self).stat(key).await
            }
            async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info> {
                (**self).update(info, fieldpaths).await
            }
            async fn usage(&self, key: &str) -> Result<Usage> {
                (**self).usage(key).await
            }
            async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
                (**self).mounts(key).await
            }
            async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
                (**self).prepare(key, parent, labels).await
            }
            async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
                (**self).view(key, parent, labels).await
            }
            async fn commit_with(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
                (**self).commit_with(name, key, opts).await
            }
            async fn prepare_all(&self, requests: Vec<PrepareRequest>) -> Result<Vec<Vec<Mount>>> {
                (**self).prepare_all(requests).await
            }
            async fn commit_all(&self, requests: Vec<CommitRequest>) -> Result<()> {
                (**self).commit_all(requests).await
            }
            async fn remove(&self, key: &str) -> Result<()> {
                (**self).remove(key).await
            }
            async fn walk(&self, filters: &[&str]) -> Result<Vec<Info>> {
                (**self).walk(filters).await
            }
            async fn close(&self) -> Result<()> {
                (**self).close().await
            }
            fn can_rebase(&self) -> bool {
                (**self).can_rebase()
            }
            async fn cleanup(&self, dry_run: bool) -> Result<Cleanup> {
                (**self).cleanup(dry_run).await
            }
}
    )*};
}

forward_snapshotter!(std::sync::Arc<T>, &T, Box<T>);
