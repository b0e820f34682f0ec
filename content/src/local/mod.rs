//! The filesystem content store.
//!
//! ```text
//! <root>/blobs/<alg>/<hex>          committed blobs, read-only (an OCI layout's blobs/)
//! <root>/labels/<alg>/<hex>         labels of a blob, when it has any
//! <root>/ingest/<sha256(ref)>/      one ingest: data, ingest.json, checkpoint
//! ```
//!
//! Commit verifies size and digest, fsyncs the data, moves it into `blobs/`
//! (a rename that never replaces) and fsyncs the directory, so after a crash at
//! any instant a blob in `blobs/` is complete and verified and anything else is
//! an ingest that resumes. Ingest refs are locked with `flock` on the ingest's
//! `lock` file, which holds between processes as well as within one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use oci_spec::image::{Descriptor, Digest};
use tokio::io::AsyncRead;

use crate::filters::{Fields, Filters};
use crate::{
    Digester, Error, Info, IngestManager, Ingester, Manager, Provider, ReaderAt, Result, Status,
    Writer, WriterOpts,
};

mod direct;
mod fsutil;
mod ingest;
pub(crate) mod labels;
mod pairing;
mod writer;

pub use writer::LocalWriter;

use labels::LabelStore;

/// Staging directories older than this are leftovers of a crashed process.
const STALE_STAGING: Duration = Duration::from_secs(3600);

/// A content store in a directory. Cheap to clone; clones share the root.
///
/// Its file work runs on tokio's blocking threads, except a
/// [`ReaderAt::read_at`], which reads into the caller's buffer where it is:
/// under `block_in_place` on a multi-thread runtime, and directly on the
/// runtime's one thread on a current-thread runtime (so a store on a hung
/// network mount stalls that runtime's timers).
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<Paths>,
    labels: LabelStore,
}

#[derive(Debug)]
struct Paths {
    root: PathBuf,
    blobs: PathBuf,
    ingest: PathBuf,
    /// Readers of each ingest's data in this process, by its path: a writer
    /// whose ingest is being read as it grows keeps its pages in the page
    /// cache for them (see [`direct`]).
    followers: Mutex<HashMap<PathBuf, Arc<AtomicUsize>>>,
}

impl LocalStore {
    /// Opens (creating if needed) the store at `root`, and clears leftovers
    /// of crashed processes: staged ingests and labels an hour old, and
    /// ingests a commit emptied but did not remove (no writer holds them).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let paths = Paths {
            blobs: root.join("blobs"),
            ingest: root.join("ingest"),
            root,
            followers: Mutex::default(),
        };
        let label_root = paths.root.join("labels");
        for dir in [&paths.blobs, &paths.ingest, &label_root] {
            fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        }
        clear_staging_leftovers(&paths.ingest);
        ingest::clear_emptied(&paths.ingest);
        // Labels staged by a commit that crashed before installing them.
        if let Ok(algorithms) = fs::read_dir(&label_root) {
            for dir in algorithms.flatten().filter(|e| e.path().is_dir()) {
                clear_staging_leftovers(&dir.path());
            }
        }
        Ok(LocalStore {
            inner: Arc::new(paths),
            labels: LabelStore::new(label_root),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.algorithm_dir(digest.algorithm()).join(digest.digest())
    }

    /// `blobs/<alg>`.
    fn algorithm_dir(&self, algorithm: &oci_spec::image::DigestAlgorithm) -> PathBuf {
        self.inner.blobs.join(algorithm.as_ref())
    }

    /// Creates `blobs/<alg>` if it is missing, durably (its entry in `blobs/`
    /// is fsynced the first time).
    fn ensure_algorithm_dir(&self, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        fsutil::fsync_dir(&self.inner.blobs)
    }

    fn ingest_dir(&self, reference: &str) -> PathBuf {
        ingest::dir_for(&self.inner.ingest, reference)
    }

    /// The count of this process's readers of the ingest data at `path`,
    /// shared by its writer and readers.
    fn followers(&self, path: &Path) -> Arc<AtomicUsize> {
        let mut all = self
            .inner
            .followers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Counts nobody holds any more go; there are a few at most.
        all.retain(|_, count| Arc::strong_count(count) > 1);
        all.entry(path.to_path_buf()).or_default().clone()
    }

    fn info_blocking(&self, digest: &Digest) -> Result<Info> {
        let path = self.blob_path(digest);
        let stat = match fs::metadata(&path) {
            Ok(stat) => stat,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::BlobNotFound {
                    digest: digest.clone(),
                });
            }
            Err(e) => return Err(Error::io("stat", &path, e)),
        };
        let created_at = stat.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let (labels, updated_at) = match self.labels.read(digest)? {
            Some((labels, at)) => (labels, at.max(created_at)),
            None => (Default::default(), created_at),
        };
        Ok(Info {
            digest: digest.clone(),
            size: stat.len(),
            created_at,
            updated_at,
            labels,
        })
    }

    fn walk_blocking(&self, filters: &Filters) -> Result<Vec<Info>> {
        let mut found = Vec::new();
        for alg_dir in read_dir_optional(&self.inner.blobs)? {
            // A stray file beside the algorithms' directories holds no blobs.
            let Some(alg) = alg_dir.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_dir(&alg_dir) {
                continue;
            }
            for entry in read_dir_optional(&alg_dir.path())? {
                let Some(hex) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                // Anything that is not a digest (a stray file) is not a blob.
                let Ok(digest) = Digest::try_from(format!("{alg}:{hex}")) else {
                    continue;
                };
                let info = match self.info_blocking(&digest) {
                    Ok(info) => info,
                    // Deleted while we walked.
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                if filters.matches(&info) {
                    found.push(info);
                }
            }
        }
        // In digest order, as containerd's stores walk (and `ls` lists).
        found.sort_unstable_by(|a, b| a.digest.as_ref().cmp(b.digest.as_ref()));
        Ok(found)
    }

    fn open_writer_blocking(&self, opts: WriterOpts) -> Result<LocalWriter> {
        let mut locked = ingest::open_locked(&self.inner.ingest, &opts, true)?;
        let algorithm = locked
            .meta
            .expected
            .as_ref()
            .map_or(oci_spec::image::DigestAlgorithm::Sha256, |d| {
                d.algorithm().clone()
            });
        let (digester, written, durable) = locked.resume_digest(&algorithm)?;
        // Read after the resume, which may have started the data over.
        let status = Status {
            offset: written,
            ..ingest::read_status(&locked.dir)?
        };
        let followers = self.followers(&locked.dir.join(ingest::DATA));
        let sink = writer::Sink::new(locked, digester, written, durable, followers)?;
        Ok(LocalWriter::new(self.clone(), sink, status))
    }
}

/// Removes what crashed processes left in `dir`: `.trash-*` ingest
/// directories at once (an ingest is gone once renamed so, and removing one
/// twice at once is harmless), and, an hour on, `.tmp-*` ingest directories
/// and `.stage-*` label files (another process may be making one now).
fn clear_staging_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > STALE_STAGING);
        let staging = [".tmp-", ".stage-"]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if (staging && stale) || name.starts_with(".trash-") {
            let path = entry.path();
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

/// Whether `entry` is a directory, or a symlink to one (a `blobs/sha256`
/// kept on another disk).
fn is_dir(entry: &fs::DirEntry) -> bool {
    fs::metadata(entry.path()).is_ok_and(|m| m.is_dir())
}

fn read_dir_optional(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| Error::io("read directory", dir, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io("read directory", dir, e)),
    }
}

fn validate_reference(reference: &str) -> Result<()> {
    if reference.is_empty() {
        return Err(Error::InvalidArgument(
            "ingest ref must not be empty".into(),
        ));
    }
    Ok(())
}

impl Fields for Info {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["digest"] => Some(self.digest.to_string()),
            ["size"] => Some(self.size.to_string()),
            ["labels", key] => self.labels.get(*key).cloned(),
            _ => None,
        }
    }
}

impl Fields for Status {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["ref"] => Some(self.reference.clone()),
            ["offset"] => Some(self.offset.to_string()),
            ["total"] => self.total.map(|t| t.to_string()),
            ["expected"] => self.expected.as_ref().map(ToString::to_string),
            _ => None,
        }
    }
}

/// A blob open for reading.
#[derive(Debug)]
pub struct LocalReaderAt {
    file: File,
    size: u64,
    path: PathBuf,
    /// An ingest being written: reads are not bounded by `size`.
    grows: bool,
    /// Counts this reader among its ingest's followers while it lives.
    following: Option<Following>,
}

/// One reader counted among an ingest's followers, until dropped.
#[derive(Debug)]
struct Following(Arc<AtomicUsize>);

impl Following {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Following(count)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LocalReaderAt {
    /// Opens the file of blob `digest` at `path`, outside any store (an OCI
    /// layout's `blobs/<alg>/<hex>`, say), off the reactor; a missing file
    /// is [`Error::BlobNotFound`]. Its bytes are not verified here.
    pub async fn open_blob(path: PathBuf, digest: &Digest) -> Result<Box<dyn ReaderAt>> {
        let digest = digest.clone();
        let reader = Self::open(path, false, move || Error::BlobNotFound { digest }).await?;
        Ok(Box::new(reader))
    }

    /// Opens `path` off the reactor; a missing file is `not_found()`.
    async fn open(
        path: PathBuf,
        grows: bool,
        not_found: impl FnOnce() -> Error + Send + 'static,
    ) -> Result<LocalReaderAt> {
        fsutil::blocking(move || {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
                Err(e) => return Err(Error::io("open", &path, e)),
            };
            let size = file
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            Ok(LocalReaderAt {
                file,
                size,
                path,
                grows,
                following: None,
            })
        })
        .await
    }
}

#[async_trait]
impl ReaderAt for LocalReaderAt {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if (offset >= self.size && !self.grows) || buf.is_empty() {
            return Ok(0);
        }
        let want = if self.grows {
            buf.len()
        } else {
            buf.len().min((self.size - offset) as usize)
        };
        let buf = &mut buf[..want];
        fsutil::blocking_in_place(|| {
            let mut filled = 0;
            while filled < buf.len() {
                match self
                    .file
                    .read_at(&mut buf[filled..], offset + filled as u64)
                {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read", &self.path, e)),
                }
            }
            Ok(filled)
        })
    }

    fn into_async_read(self: Box<Self>) -> Pin<Box<dyn AsyncRead + Send>> {
        Box::pin(tokio::fs::File::from_std(self.file))
    }
}

#[async_trait]
impl Provider for LocalStore {
    async fn reader_at(&self, desc: &Descriptor) -> Result<Box<dyn ReaderAt>> {
        LocalReaderAt::open_blob(self.blob_path(desc.digest()), desc.digest()).await
    }
}

#[async_trait]
impl Ingester for LocalStore {
    async fn writer(&self, opts: WriterOpts) -> Result<Box<dyn Writer>> {
        validate_reference(&opts.reference)?;
        if let Some(digest) = &opts.digest {
            Digester::new(digest.algorithm())?;
            if self.blob_path(digest).exists() {
                return Err(Error::AlreadyExists {
                    digest: digest.clone(),
                });
            }
        }
        let store = self.clone();
        let writer = fsutil::blocking(move || store.open_writer_blocking(opts)).await?;
        Ok(Box::new(writer))
    }
}

#[async_trait]
impl Manager for LocalStore {
    async fn info(&self, digest: &Digest) -> Result<Info> {
        let store = self.clone();
        let digest = digest.clone();
        fsutil::blocking(move || store.info_blocking(&digest)).await
    }

    async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info> {
        labels::validate_labels(&info.labels)?;
        let store = self.clone();
        let fieldpaths: Vec<String> = fieldpaths.iter().map(|s| s.to_string()).collect();
        fsutil::blocking(move || {
            let _guard = store.labels.lock()?;
            let current = store.info_blocking(&info.digest)?;
            let paths: Vec<&str> = fieldpaths.iter().map(String::as_str).collect();
            let next = labels::update_labels(&current.labels, &info.labels, &paths)?;
            store.labels.write(&info.digest, &next, SystemTime::now())?;
            store.info_blocking(&info.digest)
        })
        .await
    }

    async fn walk(
        &self,
        filters: &[&str],
        f: &mut (dyn FnMut(Info) -> Result<()> + Send),
    ) -> Result<()> {
        let filters = Filters::parse(filters)?;
        let store = self.clone();
        let found = fsutil::blocking(move || store.walk_blocking(&filters)).await?;
        found.into_iter().try_for_each(f)
    }

    async fn delete(&self, digest: &Digest) -> Result<()> {
        let store = self.clone();
        let digest = digest.clone();
        fsutil::blocking(move || {
            let path = store.blob_path(&digest);
            // Under the lock a commit publishes under: its labels are never
            // removed with the blob before it.
            let _lock = store.labels.lock()?;
            match fs::remove_file(&path) {
                Ok(()) => store.labels.remove(&digest),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    Err(Error::BlobNotFound { digest })
                }
                Err(e) => Err(Error::io("remove", &path, e)),
            }
        })
        .await
    }
}

#[async_trait]
impl IngestManager for LocalStore {
    async fn ingest_reader_at(&self, reference: &str) -> Result<Box<dyn ReaderAt>> {
        validate_reference(reference)?;
        let path = self.ingest_dir(reference).join(ingest::DATA);
        let following = Following::new(self.followers(&path));
        let reference = reference.to_string();
        // The file keeps its inode through the commit's rename, so a reader
        // opened now reads the committed blob to its end.
        let mut reader =
            LocalReaderAt::open(path, true, move || Error::IngestNotFound { reference }).await?;
        reader.following = Some(following);
        Ok(Box::new(reader))
    }

    async fn is_being_written(&self, reference: &str) -> Result<bool> {
        validate_reference(reference)?;
        let root = self.inner.ingest.clone();
        let reference = reference.to_string();
        fsutil::blocking(move || ingest::is_locked(&root, &reference)).await
    }

    async fn status(&self, reference: &str) -> Result<Status> {
        let dir = self.ingest_dir(reference);
        let reference = reference.to_string();
        fsutil::blocking(move || match ingest::read_status(&dir) {
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(Error::IngestNotFound { reference })
            }
            other => other,
        })
        .await
    }

    async fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>> {
        let filters = Filters::parse(filters)?;
        let root = self.inner.ingest.clone();
        fsutil::blocking(move || {
            let mut found = Vec::new();
            for entry in read_dir_optional(&root)? {
                // Staging and trash (dot names) and stray files are no ingests.
                if entry.file_name().to_string_lossy().starts_with('.') || !is_dir(&entry) {
                    continue;
                }
                match ingest::read_status(&entry.path()) {
                    Ok(status) if filters.matches(&status) => found.push(status),
                    Ok(_) => {}
                    // Committed or aborted while we listed, or an ingest.json a
                    // power loss emptied (its next writer rewrites it).
                    Err(Error::Io { source, .. })
                        if matches!(
                            source.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::InvalidData
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            found.sort_by(|a, b| a.reference.cmp(&b.reference));
            Ok(found)
        })
        .await
    }

    async fn abort(&self, reference: &str) -> Result<()> {
        let root = self.inner.ingest.clone();
        let opts = WriterOpts::new(reference);
        // Taking the lock first: a ref being written is Unavailable, not pulled away.
        fsutil::blocking(move || ingest::open_locked(&root, &opts, false)?.remove()).await
    }
}
