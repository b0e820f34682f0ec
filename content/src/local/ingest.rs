//! One ingest on disk: `ingest/<sha256 of ref>/{data, ingest.json, checkpoint}`.
//!
//! `ingest.json` holds the ref, the predeclared size and digest, and the start
//! time; `data` holds the bytes; `lock` carries the writer's `flock`, so the
//! lock holds across processes and dies with its holder; `checkpoint` holds the
//! digest state at an offset up to which the data is known durable, which a
//! resume checks the data against.
//!
//! The lock lives in its own file because commit renames `data` into `blobs/`
//! while still holding the lock, and removes the directory before releasing it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use oci_spec::image::{Digest, DigestAlgorithm};
use serde::{Deserialize, Serialize};

use super::fsutil::{self, from_nanos, to_nanos};
use crate::{Digester, Error, Result, Status, WriterOpts, sha256_of};

pub(crate) const DATA: &str = "data";
const LOCK: &str = "lock";
const META: &str = "ingest.json";
const CHECKPOINT: &str = "checkpoint";
const CHECKPOINT_MAGIC: &[u8] = b"ocidist-checkpoint-v1\n";
/// How many bytes before the checkpoint's offset it keeps. Unread now (a
/// resume hashes the whole data and compares the state); still written, for
/// the older builds that recognise their data by it.
const CHECKPOINT_TAIL: usize = 64;
/// How much data [`hash_file`] reads at a time.
const HASH_BUFFER: usize = 1 << 20;

/// What `ingest.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Meta {
    #[serde(rename = "ref")]
    pub(crate) reference: String,
    pub(crate) total: Option<u64>,
    pub(crate) expected: Option<Digest>,
    pub(crate) started_at_ns: u128,
}

/// The directory of the ingest `reference` under `ingest_root`.
pub(crate) fn dir_for(ingest_root: &Path, reference: &str) -> PathBuf {
    let name = sha256_of(reference.as_bytes());
    ingest_root.join(name.digest())
}

/// An ingest whose `data` file this process holds locked.
#[derive(Debug)]
pub(crate) struct Locked {
    pub(crate) dir: PathBuf,
    pub(crate) meta: Meta,
    /// Open read-write.
    pub(crate) data: File,
    /// Holds the flock until dropped.
    _lock: File,
}

/// Opens the ingest for `opts.reference`, creating it if needed, and locks it.
///
/// Fails with `Unavailable` when another open file description (this process
/// or another) holds the lock. Without `create`, a missing ingest is `NotFound`.
pub(crate) fn open_locked(ingest_root: &Path, opts: &WriterOpts, create: bool) -> Result<Locked> {
    let dir = dir_for(ingest_root, &opts.reference);
    // A remover renames the directory away while we race to lock it; retry then.
    for _ in 0..64 {
        let lock_path = dir.join(LOCK);
        let lock = match File::open(&lock_path) {
            Ok(file) => file,
            // An ingest directory without its lock file (made by hand, or by
            // an older layout): give it one.
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir.join(META).exists() => {
                File::create(&lock_path).map_err(|e| Error::io("create", &lock_path, e))?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                create_dir(ingest_root, &dir, opts)?;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::IngestNotFound {
                    reference: opts.reference.clone(),
                });
            }
            Err(e) => return Err(Error::io("open", &lock_path, e)),
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    reference: opts.reference.clone(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
        // Removed (renamed away) between our open and our lock: start over.
        if !same_file(&lock, &lock_path) {
            continue;
        }
        let mut meta = match read_meta(&dir) {
            Ok(meta) => meta,
            // ingest.json is not fsynced (the data's fsync at commit is what
            // matters); after a power loss it may be empty. We hold the lock,
            // so we may write it again from what the caller tells us.
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::NotFound
                ) =>
            {
                let meta = Meta {
                    reference: opts.reference.clone(),
                    total: opts.size,
                    expected: opts.digest.clone(),
                    started_at_ns: to_nanos(SystemTime::now()),
                };
                write_meta(&dir, &meta)?;
                meta
            }
            Err(e) => return Err(e),
        };
        if meta.reference != opts.reference {
            return Err(Error::other(
                crate::ErrorKind::Internal,
                format!(
                    "ingest {} belongs to ref {:?}, not {:?}",
                    dir.display(),
                    meta.reference,
                    opts.reference
                ),
            ));
        }
        let data_path = dir.join(DATA);
        let data = match open_data(&data_path) {
            // Still linked into blobs/ (a link-and-unlink commit killed halfway):
            // never write to a blob's inode; start this ingest afresh.
            Ok(data) if data.metadata().is_ok_and(|m| m.nlink() > 1) => {
                drop(data);
                fs::remove_file(&data_path).map_err(|e| Error::io("remove", &data_path, e))?;
                let _ = fs::remove_file(dir.join(CHECKPOINT));
                File::create_new(&data_path)
                    .and_then(|_| open_data(&data_path))
                    .map_err(|e| Error::io("create", &data_path, e))?
            }
            Ok(data) => data,
            // A commit moved the data into blobs/ and died before removing the
            // directory: what is left is an empty ingest, and it is ours.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let _ = fs::remove_file(dir.join(CHECKPOINT));
                meta.started_at_ns = to_nanos(SystemTime::now());
                write_meta(&dir, &meta)?;
                File::create_new(&data_path)
                    .and_then(|_| open_data(&data_path))
                    .map_err(|e| Error::io("create", &data_path, e))?
            }
            Err(e) => return Err(Error::io("open", &data_path, e)),
        };
        let mut locked = Locked {
            dir,
            meta,
            data,
            _lock: lock,
        };
        locked.update_declared(opts)?;
        return Ok(locked);
    }
    Err(Error::Locked {
        reference: opts.reference.clone(),
    })
}

/// Creates the ingest directory complete in a staging name, then renames it
/// into place so no reader ever sees it half made. Losing the race to another
/// creator is fine.
fn create_dir(ingest_root: &Path, dir: &Path, opts: &WriterOpts) -> Result<()> {
    let staged = ingest_root.join(fsutil::unique_name(".tmp"));
    let meta = Meta {
        reference: opts.reference.clone(),
        total: opts.size,
        expected: opts.digest.clone(),
        started_at_ns: to_nanos(SystemTime::now()),
    };
    let result = (|| -> io::Result<()> {
        fs::create_dir(&staged)?;
        File::create(staged.join(DATA))?;
        File::create(staged.join(LOCK))?;
        fs::write(staged.join(META), serde_json::to_vec(&meta)?)?;
        match fs::rename(&staged, dir) {
            Err(e) if matches!(e.raw_os_error(), Some(ENOTEMPTY | EEXIST)) => {
                let _ = fs::remove_dir_all(&staged);
                Ok(())
            }
            other => other,
        }
    })();
    result.map_err(|e| {
        let _ = fs::remove_dir_all(&staged);
        Error::io("create ingest", dir, e)
    })
}

use libc::{EEXIST, ENOTEMPTY};

/// Opens an ingest's data read-write. A commit makes the data read-only just
/// before moving it; if it died in between, the file is made writable again
/// (it is still ours: it was never published).
fn open_data(path: &Path) -> io::Result<File> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
            OpenOptions::new().read(true).write(true).open(path)
        }
        other => other,
    }
}

/// True when `file` is still the file at `path` (not unlinked or replaced).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let bytes = serde_json::to_vec(meta).expect("plain data");
    fsutil::replace_file(&dir.join(META), &bytes)
}

pub(crate) fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join(META);
    let bytes = fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::io(
            "parse",
            &path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })
}

impl Locked {
    /// Records the size and digest this open declares, in place of an
    /// earlier open's: what was declared goes with each open, as in
    /// containerd, so a re-run that declares nothing commits what it writes
    /// under its own digest rather than fail against a digest given to a run
    /// long gone. A declaration that contradicts the recorded one means the
    /// ref now names other content, to which the bytes written so far do
    /// not belong: the ingest starts over, empty (containerd's starts over
    /// only for another size, and keeps the bytes; ours never resumes bytes
    /// sent for other content).
    fn update_declared(&mut self, opts: &WriterOpts) -> Result<()> {
        let mut meta = self.meta.clone();
        let other_size = matches!((meta.total, opts.size), (Some(was), Some(now)) if was != now);
        let other_digest =
            matches!((&meta.expected, &opts.digest), (Some(was), Some(now)) if was != now);
        if other_size || other_digest {
            self.empty_data()?;
            meta.started_at_ns = to_nanos(SystemTime::now());
        }
        meta.total = opts.size;
        meta.expected = opts.digest.clone();
        if meta != self.meta {
            write_meta(&self.dir, &meta)?;
            self.meta = meta;
        }
        Ok(())
    }

    /// Brings the digest up to the end of the data, which is read whole, as
    /// containerd's resume reads it: a checkpoint saves no reading, it vouches
    /// for what was written. Data that no longer hashes to the checkpoint's
    /// state at its offset was changed after it was written (a bad disk,
    /// someone's hand), so none of it is trusted: the ingest starts over,
    /// empty, rather than commit bytes other than those received or fail the
    /// commit that follows. Leaves `data` at the end. Returns the digest, the
    /// data's length, and how much of it a checkpoint vouches for (known
    /// durable; what follows may only be in the page cache).
    pub(crate) fn resume_digest(
        &mut self,
        algorithm: &DigestAlgorithm,
    ) -> Result<(Digester, u64, u64)> {
        let data_path = self.dir.join(DATA);
        let len = self
            .data
            .metadata()
            .map_err(|e| Error::io("stat", &data_path, e))?
            .len();
        let mut digester = Digester::new(algorithm)?;
        let mut durable = 0;
        if let Some((state, offset)) = self.load_checkpoint(algorithm, len) {
            hash_file(&mut self.data, 0, offset, &mut digester)
                .map_err(|e| Error::io("read", &data_path, e))?;
            if digester.save() != state {
                self.empty_data()?;
                let mut meta = self.meta.clone();
                meta.started_at_ns = to_nanos(SystemTime::now());
                write_meta(&self.dir, &meta)?;
                self.meta = meta;
                return Ok((Digester::new(algorithm)?, 0, 0));
            }
            durable = offset;
        }
        hash_file(&mut self.data, durable, len, &mut digester)
            .map_err(|e| Error::io("read", &data_path, e))?;
        self.data
            .seek(SeekFrom::Start(len))
            .map_err(|e| Error::io("seek", &data_path, e))?;
        Ok((digester, len, durable))
    }

    /// The checkpoint's saved digest state and offset, if it is whole, of
    /// `algorithm`, and within the data. (A torn one vouches for nothing;
    /// the data is hashed all the same.)
    fn load_checkpoint(&self, algorithm: &DigestAlgorithm, len: u64) -> Option<(Vec<u8>, u64)> {
        let bytes = fs::read(self.dir.join(CHECKPOINT)).ok()?;
        let checkpoint = Checkpoint::decode(&bytes)?;
        (checkpoint.algorithm == *algorithm && checkpoint.offset <= len)
            .then_some((checkpoint.state, checkpoint.offset))
    }

    /// Empties the data and forgets its checkpoint.
    fn empty_data(&mut self) -> Result<()> {
        self.drop_checkpoint()?;
        let data_path = self.dir.join(DATA);
        self.data
            .set_len(0)
            .map_err(|e| Error::io("truncate", &data_path, e))
    }

    /// Saves the digest state at `offset` (the end of the data written so far).
    pub(crate) fn save_checkpoint(
        &mut self,
        digester: &Digester,
        offset: u64,
        updated_at: SystemTime,
    ) -> Result<()> {
        let tail_len = offset.min(CHECKPOINT_TAIL as u64) as usize;
        let mut tail = vec![0; tail_len];
        let data_path = self.dir.join(DATA);
        read_at(&self.data, &mut tail, offset - tail_len as u64)
            .map_err(|e| Error::io("read", &data_path, e))?;
        let checkpoint = Checkpoint {
            algorithm: digester.algorithm(),
            offset,
            state: digester.save(),
            tail,
            updated_at_ns: to_nanos(updated_at),
        };
        fsutil::replace_file(&self.dir.join(CHECKPOINT), &checkpoint.encode())
    }

    /// Forgets the checkpoint (after a truncate), durably: one brought back
    /// by a power loss would vouch for bytes the data no longer holds.
    pub(crate) fn drop_checkpoint(&self) -> Result<()> {
        if fsutil::remove_optional(&self.dir.join(CHECKPOINT))? {
            fsutil::fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Removes the ingest: renamed away first, so nobody opens it half deleted.
    pub(crate) fn remove(&self) -> Result<()> {
        remove_dir(&self.dir)
    }
}

/// Removes the ingest directories that a commit emptied (it moved `data`
/// into `blobs/`) and died before removing. They hold no bytes and no
/// listing shows them, so nothing else would. Only a commit makes one (a
/// new ingest is staged with its data file and renamed into place), and it
/// holds the lock until the directory is gone: one whose lock is free is a
/// dead commit's, whatever its age. A directory a writer holds stays.
pub(crate) fn clear_emptied(ingest_root: &Path) {
    let Ok(entries) = fs::read_dir(ingest_root) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let emptied = !entry.file_name().to_string_lossy().starts_with('.')
            && entry.file_type().is_ok_and(|t| t.is_dir())
            && fs::symlink_metadata(dir.join(DATA))
                .is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
        if !emptied {
            continue;
        }
        let Ok(lock) = File::open(dir.join(LOCK)) else {
            continue;
        };
        // Locked, and still the directory we looked at, still without data.
        if lock.try_lock().is_ok() && same_file(&lock, &dir.join(LOCK)) && !dir.join(DATA).exists()
        {
            let _ = remove_dir(&dir);
        }
    }
}

/// Whether a writer (another open file description, in this process or
/// another) holds the lock of the ingest for `reference`. Taking the lock
/// to find out releases it at once; flock needs no write access, so this
/// answers on a read-only store too.
pub(crate) fn is_locked(ingest_root: &Path, reference: &str) -> Result<bool> {
    let dir = dir_for(ingest_root, reference);
    let lock_path = dir.join(LOCK);
    let lock = match File::open(&lock_path) {
        Ok(file) => file,
        // No lock file yet (see `open_locked`): no writer can hold it.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.join(META).exists() => {
            return Ok(false);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::IngestNotFound {
                reference: reference.to_string(),
            });
        }
        Err(e) => return Err(Error::io("open", &lock_path, e)),
    };
    match lock.try_lock() {
        Ok(()) => Ok(false),
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(e)) => Err(Error::io("lock", &lock_path, e)),
    }
}

/// Renames an ingest directory to a `.trash-*` name beside it, then deletes it.
fn remove_dir(dir: &Path) -> Result<()> {
    let parent = dir.parent().expect("ingest dirs have a parent");
    let trash = parent.join(fsutil::unique_name(".trash"));
    fs::rename(dir, &trash).map_err(|e| Error::io("remove ingest", dir, e))?;
    // The ingest is gone once renamed; what is left is cleanup, which another
    // process opening the store may be doing at the same time.
    let _ = fs::remove_dir_all(&trash);
    Ok(())
}

fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
}

/// Feeds `file[from..to]` to `digester`.
pub(crate) fn hash_file(
    file: &mut File,
    from: u64,
    to: u64,
    digester: &mut Digester,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0; HASH_BUFFER.min((to - from) as usize)];
    let mut left = to - from;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        file.read_exact(&mut buf[..want])?;
        digester.update(&buf[..want]);
        left -= want as u64;
    }
    Ok(())
}

/// Reads the status of the ingest in `dir` without locking it.
pub(crate) fn read_status(dir: &Path) -> Result<Status> {
    let meta = read_meta(dir)?;
    let data_path = dir.join(DATA);
    let stat = fs::metadata(&data_path).map_err(|e| Error::io("stat", &data_path, e))?;
    let modified = stat.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let checkpoint = fs::read(dir.join(CHECKPOINT))
        .ok()
        .and_then(|b| Checkpoint::decode(&b));
    // The checkpoint's time is exact; the kernel's mtime is coarse and also
    // moves when buffered bytes reach the file, so it only counts for data
    // written after the checkpoint (a killed writer).
    let updated_at = match checkpoint {
        Some(c) if c.offset == stat.len() => from_nanos(c.updated_at_ns),
        Some(c) => from_nanos(c.updated_at_ns).max(modified),
        None => modified,
    };
    Ok(Status {
        reference: meta.reference,
        offset: stat.len(),
        total: meta.total,
        expected: meta.expected,
        started_at: from_nanos(meta.started_at_ns),
        updated_at,
    })
}

/// A saved digest state: `magic, alg, offset, updated_at, state, tail, sha256`.
struct Checkpoint {
    algorithm: DigestAlgorithm,
    offset: u64,
    state: Vec<u8>,
    tail: Vec<u8>,
    updated_at_ns: u128,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut out = CHECKPOINT_MAGIC.to_vec();
        let alg = self.algorithm.to_string();
        out.push(alg.len() as u8);
        out.extend_from_slice(alg.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.updated_at_ns.to_le_bytes());
        out.extend_from_slice(&(self.state.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.state);
        out.push(self.tail.len() as u8);
        out.extend_from_slice(&self.tail);
        let sum = sha256_of(&out);
        out.extend_from_slice(sum.digest().as_bytes());
        out
    }

    /// Decodes a checkpoint; anything torn or foreign is `None`.
    fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let (body, sum) = bytes.split_at(bytes.len().checked_sub(64)?);
        if sha256_of(body).digest().as_bytes() != sum {
            return None;
        }
        let mut r = body.strip_prefix(CHECKPOINT_MAGIC)?;
        let mut take = |n: usize| -> Option<&[u8]> {
            let (head, rest) = r.split_at_checked(n)?;
            r = rest;
            Some(head)
        };
        let alg_len = take(1)?[0] as usize;
        let algorithm = DigestAlgorithm::from(std::str::from_utf8(take(alg_len)?).ok()?);
        let offset = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let updated_at_ns = u128::from_le_bytes(take(16)?.try_into().ok()?);
        let state_len = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
        let state = take(state_len)?.to_vec();
        let tail_len = take(1)?[0] as usize;
        let tail = take(tail_len)?.to_vec();
        if tail.len() as u64 > offset {
            return None;
        }
        Some(Checkpoint {
            algorithm,
            offset,
            state,
            tail,
            updated_at_ns,
        })
    }
}
