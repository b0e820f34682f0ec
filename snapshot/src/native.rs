//! The native snapshotter: every snapshot is a full directory tree, made by
//! copying its parent (reflinks or in-kernel copies where the filesystem
//! offers them). Works anywhere, needs no mounts. A snapshot prepared for a
//! layer apply ([`APPLY_ONLY_LABEL`], as [`unpack`](crate::unpack()) does)
//! shares its parent's files by hard link instead, so unpacking a layer costs
//! its own size; every other prepare copies. A view is its parent's tree,
//! bound read-only, as in containerd: nothing is copied.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::base::{Base, one_request};
use crate::{
    APPLY_ONLY_LABEL, Cleanup, CommitOpts, CommitRequest, Durability, Error, Info, Kind, Labels,
    Mount, OpenOptions, PrepareRequest, Result, Snapshotter, Usage, tree,
};

/// Snapshots as plain directories under `<root>/snapshots/<id>`.
#[derive(Clone)]
pub struct NativeSnapshotter {
    base: Arc<Base>,
}

impl std::fmt::Debug for NativeSnapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeSnapshotter")
            .field("root", &self.base.root)
            .finish_non_exhaustive()
    }
}

impl NativeSnapshotter {
    /// Opens (creating if needed) a native snapshotter rooted at `root`,
    /// with [`Durability::Synced`] commits. `root` is the snapshotter's own:
    /// it and its `snapshots/` are made private to their owner (0700), and
    /// what a crash left there is removed.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(root, Durability::Synced)
    }

    /// Opens (creating if needed) a native snapshotter rooted at `root`
    /// whose commits are as durable as `durability` says.
    ///
    /// ```
    /// use ocidist_snapshot::{Durability, Labels, Snapshotter, native::NativeSnapshotter};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// // A CI cache: rebuilt after a crash, so no flush per commit.
    /// let snapshotter = NativeSnapshotter::open_with(dir.path(), Durability::Writeback)?;
    /// snapshotter.prepare("a", None, Labels::new()).await?;
    /// snapshotter.commit("base", "a", Labels::new()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn open_with(root: impl AsRef<Path>, durability: Durability) -> Result<Self> {
        Self::open_with_options(root, durability.into())
    }

    /// Opens (creating if needed) a snapshotter rooted at `root` as
    /// `options` say.
    pub fn open_with_options(root: impl AsRef<Path>, options: OpenOptions) -> Result<Self> {
        Ok(NativeSnapshotter {
            base: Base::open(root.as_ref(), options)?,
        })
    }

    /// The directory holding the snapshot `key` (whatever its kind; a view
    /// with a parent is its parent's directory, which it must not change).
    pub async fn path(&self, key: &str) -> Result<PathBuf> {
        let key = key.to_string();
        self.base
            .run(move |base| {
                let (record, parents) = base.meta.get(&key)?;
                Ok(match (record.kind, parents.first()) {
                    (Kind::View, Some(parent)) => base.dir(*parent),
                    _ => base.dir(record.id),
                })
            })
            .await
    }

    /// Fills a staging directory with a copy of the request's parent, if
    /// any: its files shared by hard link when the request carries
    /// [`APPLY_ONLY_LABEL`].
    fn fill(base: &Base, request: &PrepareRequest, staging: &Path) -> Result<()> {
        let Some(parent) = &request.parent else {
            return Ok(());
        };
        let ids = base.meta.committed_parent(parent)?;
        if request.labels.get(APPLY_ONLY_LABEL).map(String::as_str) == Some("true") {
            tree::share_tree(&base.dir(ids[0]), staging)
        } else {
            tree::copy_tree(&base.dir(ids[0]), staging)
        }
    }

    async fn create_all(
        &self,
        requests: Vec<PrepareRequest>,
        kind: Kind,
    ) -> Result<Vec<Vec<Mount>>> {
        self.base
            .run(move |base| {
                // A view is its parent, read-only, as containerd's native
                // snapshotter binds it: nothing to copy.
                let created =
                    base.stage_and_create_all(requests, kind, |base, request, staging| {
                        if kind == Kind::View {
                            Ok(())
                        } else {
                            Self::fill(base, request, staging)
                        }
                    })?;
                Ok(created
                    .into_iter()
                    .map(|(record, parents)| {
                        Self::mounts_of(base, record.kind, record.id, &parents)
                    })
                    .collect())
            })
            .await
    }

    /// A bind of the snapshot's directory (read-only unless active), or for
    /// a view with a parent, of the parent's.
    fn mounts_of(base: &Base, kind: Kind, id: u64, parents: &[u64]) -> Vec<Mount> {
        match (kind, parents.first()) {
            (Kind::View, Some(parent)) => vec![Mount::bind(base.dir(*parent), true)],
            _ => vec![Mount::bind(base.dir(id), kind != Kind::Active)],
        }
    }
}

#[async_trait]
impl Snapshotter for NativeSnapshotter {
    async fn stat(&self, key: &str) -> Result<Info> {
        self.base.stat(key).await
    }

    async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info> {
        self.base.update(info, fieldpaths).await
    }

    async fn usage(&self, key: &str) -> Result<Usage> {
        self.base.usage(key, "").await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let key = key.to_string();
        self.base
            .run(move |base| {
                let (record, parents) = base.meta.get(&key)?;
                Ok(Self::mounts_of(base, record.kind, record.id, &parents))
            })
            .await
    }

    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let mut mounts = self
            .create_all(one_request(key, parent, labels), Kind::Active)
            .await?;
        Ok(mounts.remove(0))
    }

    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        let mut mounts = self
            .create_all(one_request(key, parent, labels), Kind::View)
            .await?;
        Ok(mounts.remove(0))
    }

    async fn commit_with(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        self.commit_all(vec![CommitRequest {
            name: name.to_string(),
            key: key.to_string(),
            opts,
        }])
        .await
    }

    async fn prepare_all(&self, requests: Vec<PrepareRequest>) -> Result<Vec<Vec<Mount>>> {
        self.create_all(requests, Kind::Active).await
    }

    async fn commit_all(&self, requests: Vec<CommitRequest>) -> Result<()> {
        if requests.iter().any(|r| r.opts.parent.is_some()) {
            return Err(Error::Unimplemented(
                "the native snapshotter cannot set a parent at commit: its snapshots are full copies".into(),
            ));
        }
        self.base
            .run(move |base| base.commit_all(requests, ""))
            .await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        self.base.remove(key).await
    }

    async fn walk(&self, filters: &[&str]) -> Result<Vec<Info>> {
        self.base.walk(filters).await
    }

    async fn close(&self) -> Result<()> {
        self.base.close();
        Ok(())
    }

    async fn cleanup(&self, dry_run: bool) -> Result<Cleanup> {
        self.base.cleanup(dry_run).await
    }
}
