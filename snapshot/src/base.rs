//! What both snapshotters share: the layout of their root, the metadata
//! database, and the operations that only touch metadata.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ocidist_content::Report;
use ocidist_content::filters::Filters;

use crate::metadata::{self, Commit, MetaStore, NewSnapshot, Record};
use crate::{
    Cleanup, CommitRequest, Durability, Error, Info, Kind, Labels, OpenOptions, PrepareRequest,
    Result, Usage, tree,
};

/// A snapshot's directory, made and filled in `staging`, waiting for its
/// record.
struct Staged {
    key: String,
    parent: Option<String>,
    kind: Kind,
    labels: Labels,
    staging: StagingDir,
}

/// A staging directory (`snapshots/new-…`), with the lock its maker holds
/// on it until it is placed or removed. The lock, not a pid, tells a sweeper
/// that its maker is gone: pids mean nothing across pid namespaces (a
/// process in a container is pid 2 there, and the host's pid 2 never dies).
pub(crate) struct StagingDir {
    pub(crate) path: PathBuf,
    _held: Option<std::fs::File>,
}

/// How long a staging directory may stand unlocked: its maker locks it just
/// after making it.
const STAGING_LOCK_WINDOW: Duration = Duration::from_secs(60);

/// `<root>/metadata.redb` and `<root>/snapshots/<id>/`.
pub(crate) struct Base {
    pub(crate) root: PathBuf,
    pub(crate) meta: MetaStore,
    durability: Durability,
    closed: AtomicBool,
    /// The ids of the active snapshots this process made and has not
    /// committed or removed, by key: after a write fails on a full disk the
    /// database answers nothing more in this process, and a failed unpack
    /// must still give their room back.
    own_active: Mutex<HashMap<String, u64>>,
}

impl Base {
    pub(crate) fn open(root: &Path, options: OpenOptions) -> Result<Arc<Self>> {
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
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            // Left alone when right already: a store on a read-only mount
            // can still be read.
            let mode = std::fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?;
            if mode.mode() & 0o7777 != 0o700 {
                match std::fs::set_permissions(dir, PermissionsExt::from_mode(0o700)) {
                    // Not ours to change (a read-only mount, another user's
                    // store): read as it is; nothing is written there.
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ReadOnlyFilesystem
                                | std::io::ErrorKind::PermissionDenied
                        ) => {}
                    chmod => chmod.map_err(|e| Error::io("chmod", dir, e))?,
                }
            }
        }
        let meta = MetaStore::open(&root.join("metadata.redb"))?;
        let base = Arc::new(Base {
            root: root.to_path_buf(),
            meta,
            durability: options.durability,
            closed: AtomicBool::new(false),
            own_active: Mutex::new(HashMap::new()),
        });
        if options.clean_up {
            // Best effort: a failure here costs space only (and a read-only
            // store can still be read).
            let _ = base.clean_up(false);
        }
        Ok(base)
    }

    pub(crate) fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub(crate) fn dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// A fresh staging directory for a snapshot being made, locked.
    fn staging(&self) -> Result<StagingDir> {
        let dir = tempfile_name(&self.snapshots_dir(), "new-");
        std::fs::create_dir(&dir).map_err(|e| Error::io("mkdir", &dir, e))?;
        let staging = StagingDir {
            _held: lock(&dir),
            path: dir,
        };
        // A snapshot's root is 0755 whatever the umask; a parent's copy or a
        // layer's root entry may change it.
        std::fs::set_permissions(
            &staging.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| Error::io("chmod", &staging.path, e))?;
        Ok(staging)
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
        // Refused before any filling (a native copy of a whole parent):
        // a key in use, or twice in the batch, is AlreadyExists whatever
        // the parent, as containerd checks the key first. The transaction
        // checks again.
        let mut requests = requests;
        let mut keys = std::collections::HashSet::new();
        for request in &mut requests {
            // An empty parent is none, as in containerd (Go's "" for none).
            request.parent.take_if(|p| p.is_empty());
            crate::metadata::validate_key(&request.key)?;
            if !keys.insert(request.key.clone()) || self.meta.exists(&request.key)? {
                return Err(Error::AlreadyExists {
                    key: request.key.clone(),
                });
            }
        }
        let mut staged: Vec<Staged> = Vec::with_capacity(requests.len());
        for request in requests {
            let filled =
                self.staging()
                    .and_then(|staging| match fill(self, &request, &staging.path) {
                        Ok(()) => Ok(staging),
                        Err(e) => {
                            let _ = tree::remove_tree(&staging.path);
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
                        let _ = tree::remove_tree(&s.staging.path);
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
                std::fs::rename(&staged[index].staging.path, &dir)
                    .map_err(|e| Error::io("rename", &dir, e))?;
                placed.push(dir);
                Ok(())
            },
            || match self.durability {
                Durability::Synced => tree::sync_dir(&self.snapshots_dir()),
                Durability::Writeback => Ok(()),
            },
        );
        match &result {
            Ok(created) => {
                let mut own = self.own_active.lock().unwrap_or_else(|p| p.into_inner());
                for (s, (record, _)) in staged.iter().zip(created) {
                    if s.kind == Kind::Active {
                        own.insert(s.key.clone(), record.id);
                    }
                }
            }
            Err(_) => {
                for dir in placed.iter().chain(staged.iter().map(|s| &s.staging.path)) {
                    let _ = tree::remove_tree(dir);
                }
            }
        }
        result
    }

    /// Forgets `keys` as active snapshots of this process.
    fn disown(&self, keys: impl IntoIterator<Item = impl AsRef<str>>) {
        let mut own = self.own_active.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            own.remove(key.as_ref());
        }
    }

    /// Commits every request in order, in one metadata transaction after one
    /// `syncfs` (when [`Durability::Synced`], so the content is on disk
    /// before any record says committed): all or none. `own` is the part of
    /// a snapshot's directory whose usage is recorded.
    pub(crate) fn commit_all(&self, requests: Vec<CommitRequest>, own: &str) -> Result<()> {
        self.check_open()?;
        let mut usages = Vec::with_capacity(requests.len());
        for request in &requests {
            // A name in use first, as containerd checks it (and the
            // transaction again): whatever the key, and before a measure.
            if self.meta.exists(&request.name)? {
                return Err(Error::AlreadyExists {
                    key: request.name.clone(),
                });
            }
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
        self.disown(requests.iter().map(|r| &r.key));
        Ok(())
    }

    /// Removes `key` from the metadata, then its directory. Once the record
    /// is gone the removal has happened: a directory that will not go (a
    /// full disk, an immutable file) is left for [`clean_up`](Self::clean_up)
    /// (the next open, or a prune) to sweep, as an orphan or an `rm-`
    /// leftover, rather than reported for a key that no longer exists
    /// (containerd logs it too). The one exception: an active snapshot whose
    /// record a full disk has no room to remove loses its directory first,
    /// and keeps its record, in error, until the next clean-up drops it.
    pub(crate) async fn remove(self: &Arc<Self>, key: &str) -> Result<()> {
        let key = key.to_string();
        self.run(move |base| {
            // An active snapshot's directory (a failed unpack's) is the room
            // a full disk lacks, and nothing else reads it (parents are
            // committed): it goes even when its record cannot.
            let make_room = |id: u64, source| {
                base.remove_dir(id);
                base.disown([&key]);
                Err(Error::io(
                    "remove (its directory went, to make room; its record stays) snapshot",
                    &key,
                    source,
                ))
            };
            // Read first: after a write that failed, the database answers
            // nothing more in this process.
            let before = match base.meta.record(&key) {
                Ok(record) => record,
                Err(e) => {
                    let own = base.own_active.lock().unwrap_or_else(|p| p.into_inner());
                    return match own.get(&key).copied() {
                        Some(id) if !e.is_not_found() => {
                            drop(own);
                            make_room(id, std::io::Error::other(Report::new(&e).to_string()))
                        }
                        _ => Err(e),
                    };
                }
            };
            match base.meta.remove(&key) {
                Ok(record) => {
                    base.disown([&key]);
                    base.remove_dir(record.id);
                    Ok(())
                }
                Err(Error::Io { source, .. })
                    if metadata::is_full(&source) && before.kind == Kind::Active =>
                {
                    make_room(before.id, source)
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Removes the directory of snapshot `id`, whose record is gone or
    /// going; best effort (what stays is [`clean_up`](Self::clean_up)'s).
    fn remove_dir(&self, id: u64) {
        let dir = self.dir(id);
        // Locked for as long as it is being removed, so that sweepers leave
        // it to us.
        let _held = lock(&dir);
        // Moved out of the way first, so that a kill halfway leaves an
        // `rm-` leftover, not half a snapshot under its id.
        let doomed = tempfile_name(&self.snapshots_dir(), "rm-");
        let _ = match std::fs::rename(&dir, &doomed) {
            Ok(()) => tree::remove_tree(&doomed),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // A full directory may have no room for a new name.
            Err(_) => tree::remove_tree(&dir),
        };
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
            let (size, inodes) = match (record.usage, record.kind) {
                (Some(u), _) => u,
                // A view writes nothing of its own: zero, as containerd
                // stores for it.
                (None, crate::Kind::View) => (0, 0),
                (None, _) => tree::usage(&base.dir(record.id).join(own))?,
            };
            Ok(Usage { size, inodes })
        })
        .await
    }

    pub(crate) async fn walk(self: &Arc<Self>, filters: &[&str]) -> Result<Vec<Info>> {
        let filters = Filters::parse(filters).map_err(|e| match e {
            ocidist_content::Error::InvalidArgument(why) => Error::InvalidArgument(why),
            other => Error::InvalidArgument(Report::new(&other).to_string()),
        })?;
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

    pub(crate) async fn cleanup(self: &Arc<Self>, dry_run: bool) -> Result<Cleanup> {
        self.run(move |base| base.clean_up(dry_run)).await
    }

    /// Removes (with `dry_run`, finds) what killed or failed operations left:
    /// active records whose directory is gone, then `rm-` directories
    /// (a removal's, its record gone already), staging directories no live
    /// process holds, and id directories no record names. Writes only when
    /// there is something to remove.
    pub(crate) fn clean_up(&self, dry_run: bool) -> Result<Cleanup> {
        let mut found = Cleanup::default();
        let gone = |record: &Record| {
            matches!(std::fs::symlink_metadata(self.dir(record.id)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        };
        let records = self.meta.list()?;
        let known: HashSet<u64> = records.iter().map(|(_, r)| r.id).collect();
        let dirless: Vec<String> = records
            .iter()
            .filter(|(_, r)| r.kind == Kind::Active && gone(r))
            .map(|(key, _)| key.clone())
            .collect();
        if !dirless.is_empty() {
            found.records = if dry_run {
                dirless
            } else {
                // Checked again under the write lock.
                // Said, and the directories swept all the same.
                self.meta.remove_active_where(gone).unwrap_or_else(|e| {
                    found
                        .failed
                        .push((self.root.join("metadata.redb"), Report::new(&e).to_string()));
                    Vec::new()
                })
            };
        }

        let snapshots = self.snapshots_dir();
        let entries: Vec<_> = std::fs::read_dir(&snapshots)
            .map_err(|e| Error::io("read", &snapshots, e))?
            .flatten()
            .collect();
        // (where it is reported, where it is removed from)
        let mut doomed: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut orphans = false;
        for entry in &entries {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let modified = || entry.metadata().and_then(|m| m.modified()).ok();
            // A removal's record is gone already: it goes unless its
            // remover is at it.
            let leftover = if name.starts_with("rm-") {
                is_held(&entry.path()) != Some(true)
            } else if let Some(rest) = name.strip_prefix("new-") {
                is_abandoned_staging(&entry.path(), rest, modified)
            } else {
                orphans |= name.parse::<u64>().is_ok_and(|id| !known.contains(&id));
                false
            };
            if leftover {
                doomed.push((entry.path(), entry.path()));
            }
        }
        if orphans {
            doomed.extend(self.orphan_dirs(dry_run)?);
        }
        for (path, from) in doomed {
            // Gone meanwhile: another process swept it.
            if std::fs::symlink_metadata(&from).is_err() {
                continue;
            }
            let size = tree::usage(&from).map_or(0, |(size, _)| size);
            if dry_run {
                found.dirs.push((path, size));
                continue;
            }
            match tree::remove_tree(&from) {
                Ok(()) => found.dirs.push((path, size)),
                Err(e) => found.failed.push((path, Report::new(&e).to_string())),
            }
        }
        Ok(found)
    }

    /// The snapshot directories no record names, with where each is to be
    /// removed from: what a process killed inside [`remove`](Self::remove),
    /// between dropping the record and moving the directory away, leaves
    /// for good (its id is never handed out again). Unless `dry_run`, they
    /// are confirmed, and moved to `rm-` names, under the metadata's write
    /// lock, where no create is half done (a directory is placed before its
    /// record is written).
    fn orphan_dirs(&self, dry_run: bool) -> Result<Vec<(PathBuf, PathBuf)>> {
        let numbered = |ids: &HashSet<u64>| -> Result<Vec<PathBuf>> {
            let dir = self.snapshots_dir();
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("read", &dir, e))?;
            Ok(entries
                .flatten()
                .filter(|entry| {
                    let name = entry.file_name();
                    let id = name.to_str().and_then(|name| name.parse::<u64>().ok());
                    id.is_some_and(|id| !ids.contains(&id))
                })
                .map(|entry| entry.path())
                .collect())
        };
        if dry_run {
            let ids = self.meta.list()?.into_iter().map(|(_, r)| r.id).collect();
            return Ok(numbered(&ids)?
                .into_iter()
                .map(|p| (p.clone(), p))
                .collect());
        }
        let mut moved = Vec::new();
        self.meta.with_ids_held(|ids| {
            for path in numbered(ids)? {
                let away = tempfile_name(&self.snapshots_dir(), "rm-");
                std::fs::rename(&path, &away).map_err(|e| Error::io("rename", &path, e))?;
                moved.push((path, away));
            }
            Ok(())
        })?;
        Ok(moved)
    }
}

/// Whether the staging directory `path` (named `new-<rest>`, see
/// [`tempfile_name`]) was left by a maker that is gone: made over
/// [`STAGING_LOCK_WINDOW`] ago, and no one holds its lock. Where the
/// filesystem has no locks, the rule of versions before them:
/// [`made_by_a_dead_process_an_hour_ago`].
fn is_abandoned_staging(
    path: &Path,
    rest: &str,
    modified: impl Fn() -> Option<SystemTime>,
) -> bool {
    let made = name_parts(rest).map(|(_, made)| made).or_else(&modified);
    let young = made
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age <= STAGING_LOCK_WINDOW);
    if young {
        return false;
    }
    match is_held(path) {
        Some(held) => !held,
        None => made_by_a_dead_process_an_hour_ago(rest, modified),
    }
}

/// The directory `dir`, open and locked (`flock`, exclusive) until dropped,
/// or `None` where the filesystem has no locks (then sweepers fall back on
/// names and pids).
fn lock(dir: &Path) -> Option<std::fs::File> {
    let file = std::fs::File::open(dir).ok()?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).ok()?;
    Some(file)
}

/// Whether a live process holds the lock on the directory `path`; `None`
/// when that cannot be told.
fn is_held(path: &Path) -> Option<bool> {
    let dir = std::fs::File::open(path).ok()?;
    // Taken, the lock goes with `dir`, at once.
    match rustix::fs::flock(&dir, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Some(false),
        Err(rustix::io::Errno::WOULDBLOCK) => Some(true),
        Err(_) => None,
    }
}

/// The pid and the time in a name [`tempfile_name`] made (after its
/// prefix); `None` for names of versions that had no time in them.
fn name_parts(rest: &str) -> Option<(i32, SystemTime)> {
    match rest.split('-').collect::<Vec<_>>()[..] {
        [pid, secs, _, _] => Some((
            pid.parse().ok()?,
            UNIX_EPOCH + Duration::from_secs(secs.parse().ok()?),
        )),
        _ => None,
    }
}

/// Whether a staging directory named `<prefix><rest>` (see
/// [`tempfile_name`]) is a crashed process's by its name: made over an hour
/// ago by a process no longer running (in this pid namespace). Its mtime
/// cannot tell: a snapshot copied from its parent takes the parent's. Names
/// without a time (older versions) fall back to `modified`.
fn made_by_a_dead_process_an_hour_ago(
    rest: &str,
    modified: impl FnOnce() -> Option<SystemTime>,
) -> bool {
    const AGE: Duration = Duration::from_secs(3600);
    if let Some((pid, made)) = name_parts(rest) {
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
        assert!(!made_by_a_dead_process_an_hour_ago(
            &format!("{gone}-{now}-1f-0"),
            old_mtime
        ));
        assert!(!made_by_a_dead_process_an_hour_ago(
            &format!("{alive}-{two_hours_ago}-1f-0"),
            old_mtime
        ));
        assert!(made_by_a_dead_process_an_hour_ago(
            &format!("{gone}-{two_hours_ago}-1f-0"),
            recent_mtime
        ));
        // Names of older versions: by mtime.
        assert!(made_by_a_dead_process_an_hour_ago(
            &format!("{alive}-1f-0"),
            old_mtime
        ));
        assert!(!made_by_a_dead_process_an_hour_ago(
            &format!("{alive}-1f-0"),
            recent_mtime
        ));
        // And the names made now are read back.
        let name = tempfile_name(Path::new(""), "new-");
        let rest = name.to_str().unwrap().strip_prefix("new-").unwrap();
        assert!(
            !made_by_a_dead_process_an_hour_ago(rest, old_mtime),
            "{rest}"
        );
    }
}
