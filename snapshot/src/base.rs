//! What both snapshotters share: the layout of their root, the metadata
//! database, and the operations that only touch metadata.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ocidist_content::filters::Filters;

use crate::metadata::{self, Commit, MetaStore, NewSnapshot, Record};
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
        std::fs::create_dir_all(root.join("snapshots"))
            .map_err(|e| Error::io("mkdir", root.join("snapshots"), e))?;
        // Mounts name directories under the root, and the kernel takes them
        // from wherever the mounting thread stands: they must be absolute.
        // And one name for each: a mount is known for ours by the paths in
        // its options, so a root reached through a symlink or `..` must read
        // as the same root (else a mounted rootfs looks unmounted, and its
        // snapshot is removed under it).
        let root = &std::fs::canonicalize(root).map_err(|e| Error::io("resolve", root, e))?;
        let snapshots = root.join("snapshots");
        // Private to their owner, made so or made so now: snapshots hold what
        // images put there, setuid binaries and device nodes included, which
        // no other user may reach through these paths (containerd's
        // CVE-2021-41103). A mounted rootfs is reached at its mount point.
        for dir in [root, snapshots.as_path()] {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(|e| Error::io("chmod", dir, e))?;
        }
        let meta = MetaStore::open(&root.join("metadata.redb"))?;
        let base = Arc::new(Base {
            root: root.to_path_buf(),
            meta,
            durability,
            closed: AtomicBool::new(false),
        });
        base.remove_staging_leftovers();
        // Best effort, as for staging leftovers: a failure here costs space only.
        let _ = base.remove_orphan_dirs();
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

    /// Removes `key` from the metadata, then its directory. Once the record
    /// is gone the removal has happened: a directory that will not go (a
    /// full disk, an immutable file) is left for the next open to sweep, as
    /// an orphan or an `rm-` leftover, rather than reported for a key that
    /// no longer exists (containerd logs it too). The one exception: an
    /// active snapshot whose record a full disk has no room to remove loses
    /// its directory first, and keeps its record, in error, until the next
    /// removal.
    pub(crate) async fn remove(self: &Arc<Self>, key: &str) -> Result<()> {
        let key = key.to_string();
        self.run(move |base| {
            let remove_dir = |id: u64| {
                let doomed = tempfile_name(&base.snapshots_dir(), "rm-");
                if std::fs::rename(base.dir(id), &doomed).is_ok() {
                    let _ = tree::remove_tree(&doomed);
                }
            };
            // Read first: after a write that failed, the database answers
            // nothing more in this process.
            let before = base.meta.record(&key)?;
            match base.meta.remove(&key) {
                Ok(record) => remove_dir(record.id),
                // No room to record the removal on a full disk. An active
                // snapshot's directory (a failed unpack's) is the room, and
                // nothing else reads it (parents are committed): it goes
                // now, and its record at the next removal.
                Err(Error::Io { source, .. })
                    if metadata::is_full(&source) && before.kind == Kind::Active =>
                {
                    remove_dir(before.id);
                    return Err(Error::io(
                        "remove (its directory went, to make room; its record stays) snapshot",
                        &key,
                        source,
                    ));
                }
                Err(e) => return Err(e),
            }
            Ok(())
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

    /// Removes the staging and removal directories crashed processes left.
    fn remove_staging_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(self.snapshots_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(rest) = name
                .strip_prefix("new-")
                .or_else(|| name.strip_prefix("rm-"))
            else {
                continue;
            };
            let modified = || entry.metadata().and_then(|m| m.modified()).ok();
            if is_leftover(rest, modified) {
                let _ = tree::remove_tree(&entry.path());
            }
        }
    }
}

impl Base {
    /// Removes the snapshot directories no record names: what a process
    /// killed inside [`remove`](Self::remove), between dropping the record
    /// and moving the directory away, leaves for good (its id is never
    /// handed out again). Looked for without a lock first, as opening is
    /// frequent and orphans rare; then confirmed and moved away under the
    /// metadata's write lock, where no create is half done.
    fn remove_orphan_dirs(&self) -> Result<()> {
        let numbered = || -> Result<Vec<(u64, PathBuf)>> {
            let dir = self.snapshots_dir();
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
            Ok(entries
                .flatten()
                .filter_map(|entry| {
                    let id = entry.file_name().to_str()?.parse::<u64>().ok()?;
                    Some((id, entry.path()))
                })
                .collect())
        };
        let known: std::collections::HashSet<u64> =
            self.meta.list()?.into_iter().map(|(_, r)| r.id).collect();
        if numbered()?.iter().all(|(id, _)| known.contains(id)) {
            return Ok(());
        }
        let mut doomed = Vec::new();
        self.meta.with_ids_held(|ids| {
            for (id, path) in numbered()? {
                if !ids.contains(&id) {
                    let away = tempfile_name(&self.snapshots_dir(), "rm-");
                    std::fs::rename(&path, &away).map_err(|e| Error::io("rename", &path, e))?;
                    doomed.push(away);
                }
            }
            Ok(())
        })?;
        for dir in doomed {
            tree::remove_tree(&dir)?;
        }
        Ok(())
    }
}

/// Whether a staging or removal directory named `<prefix><rest>` (see
/// [`tempfile_name`]) is a crashed process's: made over an hour ago by a
/// process no longer running. Its mtime cannot tell: a snapshot copied from
/// its parent takes the parent's. Names without a time (older versions) fall
/// back to `modified`.
fn is_leftover(rest: &str, modified: impl FnOnce() -> Option<SystemTime>) -> bool {
    const AGE: Duration = Duration::from_secs(3600);
    let parts: Vec<&str> = rest.split('-').collect();
    if let [pid, secs, _, _] = parts[..]
        && let (Ok(pid), Ok(secs)) = (pid.parse::<i32>(), secs.parse::<u64>())
    {
        let made = UNIX_EPOCH + Duration::from_secs(secs);
        let old = SystemTime::now()
            .duration_since(made)
            .is_ok_and(|age| age > AGE);
        let running = rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
            !matches!(
                rustix::process::test_kill_process(pid),
                Err(rustix::io::Errno::SRCH)
            )
        });
        return old && !running;
    }
    modified()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > AGE)
}

/// `dir/<prefix><pid>-<seconds>-<nanos>-<counter>`: the pid, the time and a
/// counter keep processes and threads apart, and tell a crashed process's
/// leftovers from work in progress.
pub(crate) fn tempfile_name(dir: &Path, prefix: &str) -> PathBuf {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    dir.join(format!(
        "{prefix}{}-{}-{:x}-{n}",
        std::process::id(),
        now.as_secs(),
        now.subsec_nanos()
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has: a child's, once it has exited and been reaped.
    fn gone_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_leftover_is_old_and_its_process_gone_whatever_its_mtime() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let two_hours_ago = now - 7200;
        let (alive, gone) = (std::process::id(), gone_pid());
        let recent_mtime = || Some(SystemTime::now());
        let old_mtime = || Some(SystemTime::now() - Duration::from_secs(7200));
        // An old mtime (copied from a parent) says nothing.
        assert!(!is_leftover(&format!("{gone}-{now}-1f-0"), old_mtime));
        assert!(!is_leftover(
            &format!("{alive}-{two_hours_ago}-1f-0"),
            old_mtime
        ));
        assert!(is_leftover(
            &format!("{gone}-{two_hours_ago}-1f-0"),
            recent_mtime
        ));
        // Names of older versions: by mtime.
        assert!(is_leftover(&format!("{alive}-1f-0"), old_mtime));
        assert!(!is_leftover(&format!("{alive}-1f-0"), recent_mtime));
        // And the names made now are read back.
        let name = tempfile_name(Path::new(""), "new-");
        let rest = name.to_str().unwrap().strip_prefix("new-").unwrap();
        assert!(!is_leftover(rest, old_mtime), "{rest}");
    }
}
