//! What both snapshotters share: the layout of their root, the metadata
//! database, and the operations that only touch metadata.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ocidist_content::filters::Filters;

use crate::metadata::{Commit, MetaStore, NewSnapshot, Record};
use crate::{
    CommitRequest, Durability, Error, Info, Kind, Labels, PrepareRequest, Result, Usage, tree,
};

/// A snapshot's directory, made and filled in `staging`, waiting for its
/// record.
struct Staged {
    pub(crate) key: String,
    pub(crate) parent: Option<String>,
    pub(crate) kind: Kind,
    pub(crate) labels: Labels,
    pub(crate) staging: PathBuf,
}

/// `<root>/metadata.redb` and `<root>/snapshots/<id>/`.
pub(crate) struct Base {
    pub(crate) root: PathBuf,
    pub(crate) meta: MetaStore,
    durability: Durability,
    closed: AtomicBool,
}

impl Base {
    pub(crate) fn open(root: &Path, durability: Durability) -> Result<Arc<Self>> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(|e| Error::io("mkdir", &snapshots, e))?;
        let meta = MetaStore::open(&root.join("metadata.redb"))?;
        let base = Arc::new(Base {
            root: root.to_path_buf(),
            meta,
            durability,
            closed: AtomicBool::new(false),
        });
        base.remove_staging_leftovers();
        Ok(base)
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub(crate) fn dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// A fresh staging directory for a snapshot being made.
    pub(crate) fn staging(&self) -> Result<PathBuf> {
        let dir = tempfile_name(&self.snapshots_dir(), "new-");
        std::fs::create_dir(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
        // A snapshot's root is 0755 whatever the umask; a parent's copy or a
        // layer's root entry may change it.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| Error::io("chmod", &dir, e))?;
        Ok(dir)
    }

    /// Makes a staging directory for each request, fills it with
    /// `fill(base, request, staging)`, then creates them all with
    /// [`create_all`](Self::create_all).
    pub(crate) fn stage_and_create_all(
        &self,
        requests: Vec<PrepareRequest>,
        kind: Kind,
        fill: impl Fn(&Base, &PrepareRequest, &Path) -> Result<()>,
    ) -> Result<Vec<(Record, Vec<u64>)>> {
        let mut staged: Vec<Staged> = Vec::with_capacity(requests.len());
        for request in requests {
            let filled = self
                .staging()
                .and_then(|staging| match fill(self, &request, &staging) {
                    Ok(()) => Ok(staging),
                    Err(e) => {
                        let _ = tree::remove_tree(&staging);
                        Err(e)
                    }
                });
            match filled {
                Ok(staging) => staged.push(Staged {
                    key: request.key,
                    parent: request.parent,
                    kind,
                    labels: request.labels,
                    staging,
                }),
                Err(e) => {
                    for s in &staged {
                        let _ = tree::remove_tree(&s.staging);
                    }
                    return Err(e);
                }
            }
        }
        self.create_all(staged)
    }

    /// Creates the records of `staged` and moves each staging directory to its
    /// id directory, in one metadata transaction with one sync of
    /// `snapshots/` (when [`Durability::Synced`]): all or none. On failure
    /// the directories go.
    fn create_all(&self, staged: Vec<Staged>) -> Result<Vec<(Record, Vec<u64>)>> {
        self.check_open()?;
        let new = staged
            .iter()
            .map(|s| NewSnapshot {
                key: &s.key,
                parent: s.parent.as_deref(),
                kind: s.kind,
                labels: s.labels.clone(),
            })
            .collect();
        let mut placed = Vec::new();
        let result = self.meta.create_all(
            new,
            |index, id| {
                let dir = self.dir(id);
                // The id is ours alone (the write transaction is exclusive),
                // so anything already there is a crash's orphan.
                tree::remove_tree(&dir)?;
                std::fs::rename(&staged[index].staging, &dir)
                    .map_err(|e| Error::io("rename", &dir, e))?;
                placed.push(dir);
                Ok(())
            },
            || match self.durability {
                Durability::Synced => tree::sync_dir(&self.snapshots_dir()),
                Durability::Writeback => Ok(()),
            },
        );
        if result.is_err() {
            for dir in placed.iter().chain(staged.iter().map(|s| &s.staging)) {
                let _ = tree::remove_tree(dir);
            }
        }
        result
    }

    /// Commits every request in order, in one metadata transaction after one
    /// `syncfs` (when [`Durability::Synced`], so the content is on disk
    /// before any record says committed): all or none. `own` is the part of
    /// a snapshot's directory whose usage is recorded.
    pub(crate) fn commit_all(&self, requests: Vec<CommitRequest>, own: &str) -> Result<()> {
        self.check_open()?;
        let mut usages = Vec::with_capacity(requests.len());
        for request in &requests {
            let (record, _) = self.meta.get(&request.key)?;
            usages.push(if record.kind == Kind::Active {
                tree::usage(&self.dir(record.id).join(own))?
            } else {
                (0, 0)
            });
        }
        if self.durability == Durability::Synced {
            sync_filesystem(&self.snapshots_dir())?;
        }
        let commits = requests
            .iter()
            .zip(usages)
            .map(|(request, usage)| Commit {
                name: &request.name,
                key: &request.key,
                labels: request.opts.labels.clone(),
                parent: request.opts.parent.as_deref(),
                usage,
            })
            .collect();
        self.meta.commit_all(commits)?;
        Ok(())
    }

    /// Removes `key` from the metadata, then its directory.
    pub(crate) async fn remove(self: &Arc<Self>, key: &str) -> Result<()> {
        let key = key.to_string();
        self.run(move |base| {
            let record = base.meta.remove(&key)?;
            let dir = base.dir(record.id);
            let doomed = tempfile_name(&base.snapshots_dir(), "rm-");
            match std::fs::rename(&dir, &doomed) {
                Ok(()) => tree::remove_tree(&doomed),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("rename", &dir, e)),
            }
        })
        .await
    }

    pub(crate) async fn stat(self: &Arc<Self>, key: &str) -> Result<Info> {
        let key = key.to_string();
        self.run(move |base| Ok(base.meta.get(&key)?.0.info(&key)))
            .await
    }

    pub(crate) async fn update(self: &Arc<Self>, info: Info, fieldpaths: &[&str]) -> Result<Info> {
        let fieldpaths: Vec<String> = fieldpaths.iter().map(|s| s.to_string()).collect();
        self.run(move |base| {
            let paths: Vec<&str> = fieldpaths.iter().map(String::as_str).collect();
            base.meta.update(&info, &paths)
        })
        .await
    }

    /// Committed snapshots report what was measured at commit; others are
    /// measured now, in `<id>/<own>` (the part that belongs to the snapshot).
    pub(crate) async fn usage(self: &Arc<Self>, key: &str, own: &'static str) -> Result<Usage> {
        let key = key.to_string();
        self.run(move |base| {
            let (record, _) = base.meta.get(&key)?;
            let (size, inodes) = match record.usage {
                Some(u) => u,
                None => tree::usage(&base.dir(record.id).join(own))?,
            };
            Ok(Usage { size, inodes })
        })
        .await
    }

    pub(crate) async fn walk(self: &Arc<Self>, filters: &[&str]) -> Result<Vec<Info>> {
        let filters = Filters::parse(filters).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.run(move |base| {
            Ok(base
                .meta
                .list()?
                .into_iter()
                .map(|(key, record)| record.info(&key))
                .filter(|info| filters.matches(info))
                .collect())
        })
        .await
    }

    /// Runs `f` on a blocking thread (metadata and filesystem work), if open.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Base) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let base = self.clone();
        blocking(move || {
            base.check_open()?;
            f(&base)
        })
        .await
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::precondition("", "snapshotter is closed"));
        }
        Ok(())
    }

    /// Staging and removal directories older than an hour belong to crashed
    /// processes; younger ones may be another process's work in progress.
    fn remove_staging_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(self.snapshots_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with("new-") || name.starts_with("rm-")) {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if old {
                let _ = tree::remove_tree(&entry.path());
            }
        }
    }
}

/// `dir/<prefix><unique>`: pid, time and a counter keep processes and threads apart.
pub(crate) fn tempfile_name(dir: &Path, prefix: &str) -> PathBuf {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dir.join(format!("{prefix}{}-{nanos:x}-{n}", std::process::id()))
}

/// Runs blocking snapshot work off the async reactor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Metadata(format!("snapshot task: {e}")))?
}

/// Flushes the filesystem holding `dir` (one `syncfs`), so committed
/// snapshots survive a crash with their content.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<()> {
    let f = std::fs::File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io("syncfs", dir, e))
}

/// The one request [`Base::stage_and_create_all`] gets for a `prepare` or `view`.
pub(crate) fn one_request(key: &str, parent: Option<&str>, labels: Labels) -> Vec<PrepareRequest> {
    vec![PrepareRequest {
        key: key.to_string(),
        parent: parent.map(str::to_string),
        labels,
    }]
}
