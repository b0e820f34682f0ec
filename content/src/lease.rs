//! Leases: what a running operation relies on, kept from garbage collection
//! until the operation ends, across processes.
//!
//! A pull commits its blobs and snapshots before it names its image, and it
//! relies on blobs already in the store; a collection running meanwhile sees
//! all of them unreferenced. The grace period of the collectors covers the
//! blobs a pull writes, while it is shorter than the period, but not old blobs
//! it finds present and reuses; a lease covers both, however long, and expires the
//! moment its owner ends, so a killed pull's leftovers need not wait out the
//! grace period. containerd keeps its leases in its metadata database; these
//! are files, so separate processes can share a store:
//!
//! - A [`Lease`] is a file in the lease directory, locked (`flock`) by its
//!   owner for as long as the lease lives, listing one [`Resource`] per line.
//!   When the owner drops it, or dies, the lock goes and the lease is dead.
//! - The owner records a resource *before* it creates it or relies on it
//!   being there ([`Lease::add`]), under a shared lock on the directory, and
//!   lets it go once it is gone ([`Lease::remove`]) with a line of its own.
//! - A collector takes the directory's exclusive lock ([`Leases::hold`]) for
//!   the whole of its mark and sweep, reading every live lease and removing
//!   the dead ones. An add therefore either came before the hold (and the
//!   collector keeps the resource) or waits until the sweep is over (and the
//!   owner's own check then sees whether the resource survived).
//!
//! [`LeasedStore`] wraps a content store so that every blob opened through it
//! is recorded in a lease; `ocidist_snapshot` has the same for snapshotters.
//!
//! ```
//! use ocidist_content::lease::{Leases, LeasedStore};
//! use ocidist_content::{local::LocalStore, sha256_of, write_blob, Labels, WriterOpts};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let leases = Leases::open(dir.path().join("leases"))?;
//! let store = LocalStore::open(dir.path().join("content"))?;
//!
//! let lease = leases.acquire().await?;
//! let leased = LeasedStore::new(store.clone(), lease.clone());
//! let data = b"a layer";
//! let opts = WriterOpts::new("layer").digest(sha256_of(data));
//! write_blob(&leased, opts, &data[..], Labels::new()).await?;
//!
//! // A collector holding the leases sees the blob as in use...
//! assert!(leases.hold()?.content().contains(&sha256_of(data)));
//! // ...until the lease ends.
//! drop((leased, lease));
//! assert!(leases.hold()?.content().is_empty());
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::{
    Descriptor, Digest, Error, ErrorKind, Info, IngestManager, Ingester, Labels, Manager, Provider,
    ReaderAt, Result, Status, Writer, WriterOpts,
};

/// The directory lock's file name; lease files are every other entry.
const LOCK_FILE: &str = ".lock";

/// One thing a lease keeps.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A blob, with everything it references.
    Content(Digest),
    /// A snapshot (committed or active) by name or key, with its parents.
    Snapshot(String),
}

impl Resource {
    /// The resource as one line of a lease file. Snapshot keys may hold any
    /// character, so `\` and newlines are escaped.
    fn line(&self) -> String {
        match self {
            Resource::Content(digest) => format!("content {digest}\n"),
            Resource::Snapshot(key) => {
                let escaped = key.replace('\\', "\\\\").replace('\n', "\\n");
                format!("snapshot {escaped}\n")
            }
        }
    }

    /// Parses a line written by [`line`](Self::line) (without its newline);
    /// `None` for anything else, such as a kind a newer version records.
    fn parse(line: &str) -> Option<Resource> {
        let (kind, value) = line.split_once(' ')?;
        match kind {
            "content" => Digest::try_from(value).ok().map(Resource::Content),
            "snapshot" => {
                let mut key = String::with_capacity(value.len());
                let mut chars = value.chars();
                while let Some(c) = chars.next() {
                    if c != '\\' {
                        key.push(c);
                        continue;
                    }
                    match chars.next()? {
                        'n' => key.push('\n'),
                        '\\' => key.push('\\'),
                        _ => return None,
                    }
                }
                Some(Resource::Snapshot(key))
            }
            _ => None,
        }
    }
}

/// One line of a lease file: a resource taken, or let go again.
#[derive(Debug, PartialEq, Eq)]
enum Record {
    Take(Resource),
    Let(Resource),
}

/// The prefix of a line that lets a resource go. A version that does not
/// know it skips the line, and keeps the resource: the safe side.
const LET_GO: &str = "drop ";

impl Record {
    /// The line letting `resource` go: the prefix, the length of the
    /// resource's own line, and that line. The length tells a torn write
    /// (which would otherwise let go of whatever its first bytes name, such
    /// as key `ab` for `abc`).
    fn let_go_line(resource: &Resource) -> String {
        let line = resource.line();
        let len = line.len() - 1;
        format!("{LET_GO}{len} {line}")
    }

    /// Parses a line (without its newline); `None` for anything else.
    fn parse(line: &str) -> Option<Record> {
        let Some(rest) = line.strip_prefix(LET_GO) else {
            return Resource::parse(line).map(Record::Take);
        };
        let (len, resource) = rest.split_once(' ')?;
        if len.parse::<usize>().ok()? != resource.len() {
            return None;
        }
        Resource::parse(resource).map(Record::Let)
    }
}

/// What a lease file holds, its lines replayed in order.
fn replay<'a>(lines: impl Iterator<Item = &'a str>) -> HashSet<Resource> {
    let mut held = HashSet::new();
    for record in lines.filter_map(Record::parse) {
        match record {
            Record::Take(resource) => held.insert(resource),
            Record::Let(resource) => held.remove(&resource),
        };
    }
    held
}

/// A directory of leases: where owners take them and collectors read them.
#[derive(Debug, Clone)]
pub struct Leases {
    dir: PathBuf,
}

impl Leases {
    /// Opens the lease directory `dir`, creating it if needed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Leases> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        Ok(Leases { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Takes a new lease, empty, alive until the last clone of it is dropped
    /// (or the process ends). Waits while a collector holds the leases.
    pub async fn acquire(&self) -> Result<Lease> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!(
            "{}-{}-{}-{}",
            std::process::id(),
            now.as_secs(),
            now.subsec_nanos(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join(&id);
        // Created and locked under the shared lock: a collector never sees
        // a lease file that is not locked yet and takes it for a dead one.
        let _shared = self.lock_shared().await?;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        file.lock().map_err(|e| Error::io("lock", &path, e))?;
        Ok(Lease {
            inner: Arc::new(LeaseInner {
                leases: self.clone(),
                id,
                path,
                file,
                recorded: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Holds every lease still for a collection: takes the directory's
    /// exclusive lock (waiting for adds in progress), removes the leases
    /// whose owners are gone and reads the others. No lease takes a resource
    /// until the returned [`Held`] is dropped, so hold it from before the
    /// collection decides what to keep until its last removal.
    ///
    /// This blocks: call it from a blocking context, or accept a brief block
    /// of the async runtime. Do not await adds of your own leases while
    /// holding it: they wait for it.
    pub fn hold(&self) -> Result<Held> {
        self.hold_with(true)
    }

    /// [`hold`](Self::hold) for a dry run: the leases whose owners are gone
    /// are counted and read, not removed, so the collection that follows
    /// still knows what they abandoned.
    pub fn hold_keeping_expired(&self) -> Result<Held> {
        self.hold_with(false)
    }

    fn hold_with(&self, remove_expired: bool) -> Result<Held> {
        let path = self.dir.join(LOCK_FILE);
        let lock = open_lock(&path)?;
        lock.lock().map_err(|e| Error::io("lock", &path, e))?;
        let mut held = Held {
            content: HashSet::new(),
            snapshots: HashSet::new(),
            abandoned: HashSet::new(),
            live: 0,
            expired: 0,
            _lock: lock,
        };
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io("read", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read", &self.dir, e))?;
            if entry.file_name() == LOCK_FILE {
                continue;
            }
            let path = entry.path();
            let mut file = match File::open(&path) {
                Ok(file) => file,
                // Ended since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("open", &path, e)),
            };
            match file.try_lock() {
                Ok(()) => {
                    // Nobody holds it: its owner is gone. What it made is
                    // left for the collection to judge.
                    let mut text = String::new();
                    if file.read_to_string(&mut text).is_ok() {
                        held.abandoned
                            .extend(replay(text.lines()).into_iter().filter_map(|r| match r {
                                Resource::Snapshot(key) => Some(key),
                                Resource::Content(_) => None,
                            }));
                    }
                    if !remove_expired {
                        held.expired += 1;
                        continue;
                    }
                    match fs::remove_file(&path) {
                        Ok(()) => held.expired += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("remove", &path, e)),
                    }
                    continue;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(Error::io("lock", &path, e)),
            }
            let mut text = String::new();
            file.read_to_string(&mut text)
                .map_err(|e| Error::io("read", &path, e))?;
            held.live += 1;
            // Every add completed before we took the lock, so every line is
            // whole; a line without its newline would be a torn write.
            let lines = text
                .split_inclusive('\n')
                .filter_map(|line| line.strip_suffix('\n'));
            for resource in replay(lines) {
                match resource {
                    Resource::Content(digest) => {
                        held.content.insert(digest);
                    }
                    Resource::Snapshot(key) => {
                        held.snapshots.insert(key);
                    }
                }
            }
        }
        Ok(held)
    }

    /// The directory's lock, shared: taken at once if no collector holds
    /// it, else waited for on a blocking thread.
    async fn lock_shared(&self) -> Result<File> {
        let path = self.dir.join(LOCK_FILE);
        let lock = open_lock(&path)?;
        match lock.try_lock_shared() {
            Ok(()) => Ok(lock),
            Err(TryLockError::WouldBlock) => tokio::task::spawn_blocking(move || {
                lock.lock_shared()
                    .map(|()| lock)
                    .map_err(|e| Error::io("lock", &path, e))
            })
            .await
            .map_err(|e| Error::other(ErrorKind::Internal, e))?,
            Err(TryLockError::Error(e)) => Err(Error::io("lock", &path, e)),
        }
    }
}

/// The lock file at `path`, made if needed; read-only where it may not be
/// written (a store on a read-only mount, another user's), which locks as
/// well: a collection's dry run reads such a store.
fn open_lock(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .or_else(|e| match e.kind() {
            io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied => {
                File::open(path).map_err(|_| e)
            }
            _ => Err(e),
        })
        .map_err(|e| Error::io("open", path, e))
}

/// What the live leases keep, for a collection; holds the leases still (no
/// lease takes a resource) until dropped. See [`Leases::hold`].
#[derive(Debug)]
pub struct Held {
    content: HashSet<Digest>,
    snapshots: HashSet<String>,
    abandoned: HashSet<String>,
    live: usize,
    expired: usize,
    _lock: File,
}

impl Held {
    /// The blobs live leases keep (each with what it references).
    pub fn content(&self) -> &HashSet<Digest> {
        &self.content
    }

    /// The snapshots live leases keep (each with its parents).
    pub fn snapshots(&self) -> &HashSet<String> {
        &self.snapshots
    }

    /// The snapshots the leases whose owners are gone had used (found
    /// expired and removed by this hold): a killed unpack's extractions,
    /// which no one will finish.
    pub fn abandoned_snapshots(&self) -> &HashSet<String> {
        &self.abandoned
    }

    /// How many leases are alive.
    pub fn live(&self) -> usize {
        self.live
    }

    /// How many dead leases (their owners gone) were removed, or, held by
    /// [`Leases::hold_keeping_expired`], found and kept.
    pub fn expired(&self) -> usize {
        self.expired
    }
}

/// A lease: resources kept from collection while it lives. Clones share it;
/// it ends when the last one is dropped.
#[derive(Debug, Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

#[derive(Debug)]
struct LeaseInner {
    leases: Leases,
    id: String,
    path: PathBuf,
    /// Open for appending, locked for the lease's life.
    file: File,
    /// What is in the file already, so repeated adds cost nothing.
    recorded: Mutex<HashSet<Resource>>,
}

impl Lease {
    /// The lease's identifier (its file name).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Records `resource`, before the caller creates it or relies on it
    /// existing. Waits while a collector holds the leases.
    pub async fn add(&self, resource: Resource) -> Result<()> {
        if self.recorded().contains(&resource) {
            return Ok(());
        }
        let _shared = self.inner.leases.lock_shared().await?;
        let mut recorded = self.recorded();
        if !recorded.contains(&resource) {
            self.append(&resource.line())?;
            recorded.insert(resource);
        }
        Ok(())
    }

    /// Lets `resource` go once it is gone or no longer relied on (a blob
    /// deleted, a snapshot removed, an active snapshot committed under its
    /// name), as containerd takes such a resource out of the lease: a
    /// resource made later under the same name is not kept by this lease
    /// unless it is added again. Nothing happens if the lease does not hold
    /// it. Waits while a collector holds the leases.
    pub async fn remove(&self, resource: &Resource) -> Result<()> {
        if !self.recorded().contains(resource) {
            return Ok(());
        }
        let _shared = self.inner.leases.lock_shared().await?;
        let mut recorded = self.recorded();
        if recorded.contains(resource) {
            self.append(&Record::let_go_line(resource))?;
            recorded.remove(resource);
        }
        Ok(())
    }

    /// Appends `line` (ending in a newline) to the lease file, under the
    /// directory's shared lock and the record's mutex.
    fn append(&self, line: &str) -> Result<()> {
        // One write of a whole line, appended: concurrent writes do not
        // mix. It opens with a newline too: a line a failed write left
        // torn (a full disk) then ends there instead of swallowing this one.
        (&self.inner.file)
            .write_all(format!("\n{line}").as_bytes())
            .map_err(|e| Error::io("write", &self.inner.path, e))
    }

    /// Records a blob; see [`add`](Self::add).
    pub async fn add_content(&self, digest: &Digest) -> Result<()> {
        self.add(Resource::Content(digest.clone())).await
    }

    fn recorded(&self) -> std::sync::MutexGuard<'_, HashSet<Resource>> {
        self.inner
            .recorded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for LeaseInner {
    fn drop(&mut self) {
        // Unlinked while still locked, so no collector counts it as expired;
        // a collector that opened it just before sees it alive, harmlessly.
        let _ = fs::remove_file(&self.path);
    }
}

/// A content store that records in a [`Lease`] every blob opened through it
/// (for writing with a declared digest, for reading, or by [`Manager::info`])
/// before the store is asked, and every blob committed through it before the
/// commit (as containerd leases the digest a commit lands under): a fetch
/// that finds a blob present, or commits a new one, keeps it for as long as
/// the lease lives. A blob deleted through it is let go.
#[derive(Debug, Clone)]
pub struct LeasedStore<S> {
    inner: S,
    lease: Lease,
}

impl<S> LeasedStore<S> {
    /// Wraps `inner`, recording in `lease`.
    pub fn new(inner: S, lease: Lease) -> Self {
        LeasedStore { inner, lease }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }
}

#[async_trait]
impl<S: Provider> Provider for LeasedStore<S> {
    async fn reader_at(&self, desc: &Descriptor) -> Result<Box<dyn ReaderAt>> {
        self.lease.add_content(desc.digest()).await?;
        self.inner.reader_at(desc).await
    }
}

#[async_trait]
impl<S: Ingester> Ingester for LeasedStore<S> {
    async fn writer(&self, opts: WriterOpts) -> Result<Box<dyn Writer>> {
        if let Some(digest) = &opts.digest {
            self.lease.add_content(digest).await?;
        }
        let inner = self.inner.writer(opts).await?;
        Ok(Box::new(LeasedWriter {
            inner,
            lease: self.lease.clone(),
        }))
    }
}

/// A writer of a [`LeasedStore`]: records the digest a commit lands under
/// in the lease before committing, so a blob written without a declared
/// digest is kept too.
struct LeasedWriter {
    inner: Box<dyn Writer>,
    lease: Lease,
}

impl tokio::io::AsyncWrite for LeasedWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Writer for LeasedWriter {
    async fn status(&mut self) -> Result<Status> {
        self.inner.status().await
    }

    async fn digest(&mut self) -> Result<Digest> {
        self.inner.digest().await
    }

    async fn commit(
        &mut self,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<()> {
        // The digest it will land under: the one asked for, else what was
        // written (a declared digest was leased at open already, and a
        // commit that differs from it fails).
        let landing = match expected {
            Some(digest) => digest.clone(),
            None => self.inner.digest().await?,
        };
        self.lease.add_content(&landing).await?;
        self.inner.commit(size, expected, labels).await
    }

    async fn truncate(&mut self, size: u64) -> Result<()> {
        self.inner.truncate(size).await
    }
}

#[async_trait]
impl<S: Manager> Manager for LeasedStore<S> {
    async fn info(&self, digest: &Digest) -> Result<Info> {
        self.lease.add_content(digest).await?;
        self.inner.info(digest).await
    }
    async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info> {
        self.inner.update(info, fieldpaths).await
    }
    async fn walk(
        &self,
        filters: &[&str],
        f: &mut (dyn FnMut(Info) -> Result<()> + Send),
    ) -> Result<()> {
        self.inner.walk(filters, f).await
    }
    /// Deletes the blob, then lets it go from the lease, as containerd's
    /// delete does.
    async fn delete(&self, digest: &Digest) -> Result<()> {
        self.inner.delete(digest).await?;
        self.lease.remove(&Resource::Content(digest.clone())).await
    }
}

#[async_trait]
impl<S: IngestManager> IngestManager for LeasedStore<S> {
    async fn status(&self, reference: &str) -> Result<Status> {
        self.inner.status(reference).await
    }
    async fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>> {
        self.inner.list_statuses(filters).await
    }
    async fn abort(&self, reference: &str) -> Result<()> {
        self.inner.abort(reference).await
    }
    async fn ingest_reader_at(&self, reference: &str) -> Result<Box<dyn ReaderAt>> {
        self.inner.ingest_reader_at(reference).await
    }
    async fn is_being_written(&self, reference: &str) -> Result<bool> {
        self.inner.is_being_written(reference).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_lines_round_trip() {
        for resource in [
            Resource::Content(crate::sha256_of(b"x")),
            Resource::Snapshot("plain".into()),
            Resource::Snapshot("with\nnewline and \\n backslash\\".into()),
        ] {
            let line = resource.line();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(
                Resource::parse(line.strip_suffix('\n').unwrap()),
                Some(resource)
            );
        }
        assert_eq!(Resource::parse("volume x"), None);
        assert_eq!(Resource::parse("snapshot bad\\q"), None);
    }

    #[test]
    fn a_lease_file_is_replayed_in_order() {
        let snapshot = |key: &str| Resource::Snapshot(key.into());
        let text = [
            "snapshot a",
            "snapshot ab",
            "snapshot b",
            &Record::let_go_line(&snapshot("a")),
            &Record::let_go_line(&snapshot("b")),
            "snapshot b",
            &Record::let_go_line(&snapshot("never-taken")),
            "drop 8 volume x",
            // A torn write of "drop 12 snapshot abc" does not let "ab" go.
            "drop 12 snapshot ab",
        ]
        .join("\n");
        assert_eq!(
            replay(text.lines()),
            HashSet::from([snapshot("ab"), snapshot("b")])
        );
        assert_eq!(
            Record::let_go_line(&snapshot("abc")),
            "drop 12 snapshot abc\n"
        );
    }

    fn digest(n: u8) -> Digest {
        crate::sha256_of(&[n])
    }

    #[tokio::test]
    async fn a_lease_keeps_until_its_last_clone_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path()).unwrap();
        let lease = leases.acquire().await.unwrap();
        let other = leases.acquire().await.unwrap();
        lease.add_content(&digest(1)).await.unwrap();
        lease.add_content(&digest(1)).await.unwrap();
        other
            .add(Resource::Snapshot("extract-1".into()))
            .await
            .unwrap();
        let clone = lease.clone();
        drop(lease);
        {
            let held = leases.hold().unwrap();
            assert_eq!(held.live(), 2);
            assert_eq!(held.content(), &HashSet::from([digest(1)]));
            assert_eq!(held.snapshots(), &HashSet::from(["extract-1".to_string()]));
        }
        drop((clone, other));
        let held = leases.hold().unwrap();
        assert_eq!((held.live(), held.expired()), (0, 0));
        assert!(held.content().is_empty() && held.snapshots().is_empty());
    }

    /// A record a failed write left torn costs only itself.
    #[tokio::test]
    async fn a_torn_record_does_not_swallow_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path()).unwrap();
        let lease = leases.acquire().await.unwrap();
        (&lease.inner.file).write_all(b"content sha2").unwrap();
        lease.add_content(&digest(3)).await.unwrap();
        let held = leases.hold().unwrap();
        assert_eq!(held.content(), &HashSet::from([digest(3)]));
    }

    /// A lease whose owner died: its file stays, but nobody holds its lock.
    #[tokio::test]
    async fn a_dead_owners_lease_expires() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path()).unwrap();
        let path = dir.path().join("4242-1-2-3");
        fs::write(&path, Resource::Content(digest(7)).line()).unwrap();
        // Held by another process (a live owner) first: one process that
        // takes the lock and becomes `sleep`, so killing it frees the lock.
        let mut owner = std::process::Command::new("sh")
            .args(["-c", "exec 9>>\"$0\" && flock -x 9 && exec sleep 30"])
            .arg(&path)
            .spawn()
            .expect("sh and flock(1), from util-linux, run the other process");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while File::open(&path).unwrap().try_lock().is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "flock never took the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        {
            let held = leases.hold().unwrap();
            assert_eq!((held.live(), held.expired()), (1, 0));
            assert!(held.content().contains(&digest(7)));
        }
        owner.kill().unwrap();
        owner.wait().unwrap();
        // The shell may die while flock(1), its child sharing the locked
        // file, is still exiting: the lock is free once that is gone too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while File::open(&path).unwrap().try_lock().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lock never came free"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let held = leases.hold().unwrap();
        assert_eq!((held.live(), held.expired()), (0, 1));
        assert!(held.content().is_empty());
        assert!(!path.exists(), "the dead lease is removed");
    }

    /// containerd leases the digest a commit lands under, declared or not.
    #[tokio::test]
    async fn a_commit_through_a_leased_store_leases_what_it_committed() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path().join("leases")).unwrap();
        let store = crate::local::LocalStore::open(dir.path().join("content")).unwrap();
        let lease = leases.acquire().await.unwrap();
        let leased = LeasedStore::new(store, lease.clone());

        let mut w = leased.writer(WriterOpts::new("undeclared")).await.unwrap();
        w.write_all(b"undeclared").await.unwrap();
        w.commit(None, None, Labels::new()).await.unwrap();
        let sha512 = crate::digest_of(&oci_spec::image::DigestAlgorithm::Sha512, b"other").unwrap();
        let mut w = leased.writer(WriterOpts::new("sha512")).await.unwrap();
        w.write_all(b"other").await.unwrap();
        w.commit(None, Some(&sha512), Labels::new()).await.unwrap();

        let held = leases.hold().unwrap();
        assert_eq!(
            held.content(),
            &HashSet::from([crate::sha256_of(b"undeclared"), sha512])
        );
    }

    #[tokio::test]
    async fn a_blob_deleted_through_a_leased_store_is_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path().join("leases")).unwrap();
        let store = crate::local::LocalStore::open(dir.path().join("content")).unwrap();
        let lease = leases.acquire().await.unwrap();
        let leased = LeasedStore::new(store.clone(), lease.clone());
        let (kept, deleted) = (crate::sha256_of(b"kept"), crate::sha256_of(b"deleted"));
        for (data, digest) in [(&b"kept"[..], &kept), (&b"deleted"[..], &deleted)] {
            let opts = WriterOpts::new("blob").digest(digest.clone());
            crate::write_blob(&leased, opts, data, Labels::new())
                .await
                .unwrap();
        }
        // A delete that fails lets nothing go.
        let missing = crate::sha256_of(b"missing");
        lease.add_content(&missing).await.unwrap();
        let refused = leased.delete(&missing).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::NotFound);

        leased.delete(&deleted).await.unwrap();
        assert_eq!(
            leases.hold().unwrap().content(),
            &HashSet::from([kept.clone(), missing.clone()])
        );
        // Written again through the lease, it is kept again.
        let opts = WriterOpts::new("again").digest(deleted.clone());
        crate::write_blob(&leased, opts, &b"deleted"[..], Labels::new())
            .await
            .unwrap();
        assert_eq!(
            leases.hold().unwrap().content(),
            &HashSet::from([kept, missing, deleted])
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn adds_wait_while_a_collector_holds_the_leases() {
        let dir = tempfile::tempdir().unwrap();
        let leases = Leases::open(dir.path()).unwrap();
        let lease = leases.acquire().await.unwrap();
        let held = leases.hold().unwrap();
        let add = tokio::spawn({
            let lease = lease.clone();
            async move { lease.add_content(&digest(3)).await }
        });
        let acquire = tokio::spawn({
            let leases = leases.clone();
            async move { leases.acquire().await.map(|_| ()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!add.is_finished() && !acquire.is_finished());
        let recorded = fs::read_to_string(dir.path().join(lease.id())).unwrap();
        assert_eq!(recorded, "", "nothing is recorded while held");
        drop(held);
        add.await.unwrap().unwrap();
        acquire.await.unwrap().unwrap();
        assert!(leases.hold().unwrap().content().contains(&digest(3)));
    }
}
