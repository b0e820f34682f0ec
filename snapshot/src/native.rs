//! The native snapshotter: every snapshot is a full directory tree, made by
//! copying its parent (reflinks or in-kernel copies where the filesystem
//! offers them). Works anywhere, needs no mounts; costs a copy per layer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::base::Base;
use crate::{CommitOpts, Error, Info, Kind, Labels, Mount, Result, Snapshotter, Usage, tree};

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
    /// Opens (creating if needed) a native snapshotter rooted at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Ok(NativeSnapshotter {
            base: Base::open(root.as_ref())?,
        })
    }

    /// The directory holding the snapshot `key` (whatever its kind).
    pub async fn path(&self, key: &str) -> Result<PathBuf> {
        let key = key.to_string();
        self.base
            .run(move |base| Ok(base.dir(base.meta.get(&key)?.0.id)))
            .await
    }

    async fn create(
        &self,
        key: &str,
        parent: Option<&str>,
        kind: Kind,
        labels: Labels,
    ) -> Result<Vec<Mount>> {
        let key = key.to_string();
        let parent = parent.map(str::to_string);
        self.base
            .run(move |base| {
                let staging = base.staging()?;
                let filled = match &parent {
                    Some(p) => base
                        .meta
                        .committed_parent(p)
                        .and_then(|ids| tree::copy_tree(&base.dir(ids[0]), &staging)),
                    None => Ok(()),
                };
                if let Err(e) = filled {
                    let _ = tree::remove_tree(&staging);
                    return Err(e);
                }
                let (record, _) = base.create(&key, parent.as_deref(), kind, labels, &staging)?;
                Ok(vec![Mount::bind(base.dir(record.id), kind == Kind::View)])
            })
            .await
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
                let (record, _) = base.meta.get(&key)?;
                Ok(vec![Mount::bind(
                    base.dir(record.id),
                    record.kind != Kind::Active,
                )])
            })
            .await
    }

    async fn prepare(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::Active, labels).await
    }

    async fn view(&self, key: &str, parent: Option<&str>, labels: Labels) -> Result<Vec<Mount>> {
        self.create(key, parent, Kind::View, labels).await
    }

    async fn commit_with(&self, name: &str, key: &str, opts: CommitOpts) -> Result<()> {
        if opts.parent.is_some() {
            return Err(Error::Unimplemented(
                "the native snapshotter cannot set a parent at commit: its snapshots are full copies".into(),
            ));
        }
        let (name, key) = (name.to_string(), key.to_string());
        self.base
            .run(move |base| {
                let (record, _) = base.meta.get(&key)?;
                let dir = base.dir(record.id);
                let usage = if record.kind == Kind::Active {
                    sync_tree(&dir)?;
                    tree::usage(&dir)?
                } else {
                    (0, 0)
                };
                base.meta.commit(&name, &key, opts.labels, None, usage)?;
                Ok(())
            })
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
}

/// Flushes the filesystem holding `dir`, so a committed snapshot survives a
/// crash with its content.
pub(crate) fn sync_tree(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io("syncfs", dir, e))
}
