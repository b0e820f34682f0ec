//! The local store's [`Writer`]: buffered on the async side, hashed and
//! written on the blocking side, checkpointed so a resume can tell that the
//! data is still what was written.
//!
//! Bytes collect in an aligned 1 MiB buffer (4 MiB for a large ingest, see
//! [`BIG_CHUNK`]); a full buffer goes to a blocking task that hashes it while
//! the caller fills the next one. The task then hands the chunk to a thread
//! that writes it while the next chunk is hashed: filling, hashing and
//! writing overlap, in three buffers reused for the whole ingest. (Chunks
//! bound for the page cache are written in line instead, hashed meanwhile on
//! a second thread, in two buffers.) While at least as many writers stream
//! as there are cores, and the CPU has the SHA extensions, the blocking task
//! instead hashes each SHA-256 chunk together with another writer's, and
//! then writes it (see `LocalWriter::decide_hashing`
//! and [`super::pairing`]). Every 64 MiB the data is fsynced and the digest
//! state saved.
//!
//! Whole aligned chunks are written with direct I/O (see [`super::direct`]):
//! a blob is not read until it is unpacked, so the page cache would only cost
//! a copy. The rest (small blobs, a last partial chunk, the head of a resume
//! from an odd offset) goes through the page cache; its writeback starts at
//! once, and pages 32 MiB behind the end are waited for and dropped, so a
//! large blob on a filesystem without direct I/O does not push the rest of the
//! machine's cache out either.

use std::fs;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use async_trait::async_trait;
use oci_spec::image::Digest;
use tokio::io::AsyncWrite;
use tokio::task::JoinHandle;

use super::LocalStore;
use super::direct::{ChunkBuf, DirectFile};
use super::fsutil;
use super::ingest::{self, DATA, Locked};
use super::labels;
use super::pairing;
use crate::{Digester, Error, ErrorKind, Labels, Result, Status, Writer};

/// Bytes handed to the blocking side at once...
const CHUNK: usize = 1 << 20;
/// ...or, for a large ingest holding one of the [`BIG_CHUNK_WRITERS`] slots, this
/// many: larger direct writes reach the disk faster (1 GiB of 1 MiB writes
/// takes 0.88 s on the benchmark machine, of 4 MiB writes 0.64 s).
const BIG_CHUNK: usize = 4 << 20;
/// An ingest declared this large, or this far along, asks for a
/// [`BIG_CHUNK_WRITERS`] slot.
const BIG_INGEST: u64 = 128 << 20;
/// Writers of a process that use big chunks at once: each holds up to three
/// chunk buffers, so this bounds their memory (36 MiB) whatever the number
/// of large blobs being written.
const BIG_CHUNK_WRITERS: usize = 3;
/// Sinks of a process that write chunks behind at once, needing a third
/// buffer; the others write in line. Four streams already keep both cores
/// busy (bulk:8x64m fetch: 0.64 s with 4 blobs at once, as with 16).
const WRITE_BEHIND_WRITERS: usize = 4;
/// Data between durable checkpoints of the digest state.
const CHECKPOINT_EVERY: u64 = 64 << 20;
/// Chunks at least this large are written on a thread of their own while the
/// next one is hashed; smaller ones are written in line.
const WRITE_BEHIND_MIN: usize = 256 << 10;
/// Chunks at least this large are hashed on a second thread while being
/// written, where nothing else overlaps them (the last bytes at a commit).
const PARALLEL_HASH_MIN: usize = 256 << 10;
/// How far behind the end of the data its pages leave the page cache...
const DROP_BEHIND: u64 = 32 << 20;
/// ...in steps of this much.
const DROP_STEP: u64 = 8 << 20;

/// The blocking side: the locked ingest and the digest of its data.
#[derive(Debug)]
pub(crate) struct Sink {
    /// Declared before `ingest`, so that a chunk still being written is
    /// waited for before the ingest's lock goes.
    behind: WriteBehind,
    ingest: Locked,
    digester: Digester,
    /// Bytes hashed and handed to the data file; the last chunk may still be
    /// being written behind (see [`Sink::settle`]).
    written: u64,
    /// Bytes known durable: those a checkpoint vouches for.
    checkpointed: u64,
    /// Set after a failed write: the file may hold bytes the digest has not seen.
    poisoned: bool,
    /// Set after a failed sync: bytes past `checkpointed` may be only in the
    /// page cache, in pages now clean that will never be written, and no
    /// later fsync would say so. The sink cuts the data back when it goes.
    sync_failed: bool,
    /// Set once the data file has become the committed blob.
    published: bool,
    /// Where chunks are written; `None` while a write-behind thread has it.
    target: Option<WriteTarget>,
    /// Readers of this ingest in the process, reading it as it grows: while
    /// there are any, chunks go through the page cache, where they find them.
    followers: Arc<AtomicUsize>,
    /// Held from the first chunk written behind until the sink goes.
    write_behind_slot: Option<Slot>,
    /// Whether this ingest's next chunks wait for a partner to be hashed with.
    patience: pairing::Patience,
}

/// The data file's writing side, handed to a write-behind thread and back.
#[derive(Debug)]
struct WriteTarget {
    /// The ingest's data file (a second descriptor of it).
    data: fs::File,
    /// The same file again, opened for direct I/O at the first aligned chunk.
    direct: DirectFile,
    /// Whether waiting for written pages to reach the disk failed (see
    /// [`Sink::sync_failed`]).
    sync_failed: bool,
}

impl WriteTarget {
    /// Writes `chunk` at `offset`: the aligned part directly (when `direct`),
    /// the rest through the page cache, whose pages are then written back
    /// early and, far behind the end, dropped.
    fn write(&mut self, chunk: &[u8], offset: u64, direct: bool) -> io::Result<()> {
        let direct_len = if direct {
            self.direct.write_prefix(&self.data, chunk, offset)?
        } else {
            0
        };
        let rest = &chunk[direct_len..];
        if rest.is_empty() {
            return Ok(());
        }
        let rest_at = offset + direct_len as u64;
        self.data.write_all_at(rest, rest_at)?;
        start_writeback(&self.data, rest_at, rest.len());
        let end = offset + chunk.len() as u64;
        if end / DROP_STEP > offset / DROP_STEP && end >= DROP_BEHIND + DROP_STEP {
            let upto = (end / DROP_STEP) * DROP_STEP - DROP_BEHIND;
            drop_written(&self.data, upto - DROP_STEP, DROP_STEP)
                .inspect_err(|_| self.sync_failed = true)?;
        }
        Ok(())
    }
}

/// Where a chunk handed to the sink is hashed.
#[derive(Debug)]
enum Hashing {
    /// By the task that appends it, together with another ingest's chunk
    /// (see [`pairing`]); `others` says whether other ingests stream that may
    /// bring one.
    Paired { others: bool },
    /// By the sink, beside the write.
    BySink,
}

/// What a write-behind thread hands back: the target, the chunk's buffer for
/// reuse, and how the write went.
type Behind = (WriteTarget, ChunkBuf, io::Result<()>);

/// The chunk being written on its own thread, waited for when dropped.
#[derive(Debug, Default)]
struct WriteBehind(Option<std::thread::JoinHandle<Behind>>);

impl Drop for Sink {
    /// After a failed sync, keeps only the bytes a checkpoint made durable: a
    /// resume would hash the rest from the page cache and trust it. (After a
    /// failed write, the bytes before it are as good as ever: a writeback
    /// error nobody has seen yet is reported to the next fsync, whoever opens
    /// the file.)
    fn drop(&mut self) {
        // The chunk still being written first, or it could land beyond the cut.
        if let Some(handle) = self.behind.0.take()
            && let Ok((target, _, _)) = handle.join()
        {
            self.target = Some(target);
        }
        if self.lost_unsynced() && !self.published {
            let _ = self.ingest.data.set_len(self.checkpointed);
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

impl Sink {
    /// A sink appending to `ingest`, whose data holds `written` bytes, of
    /// which a checkpoint vouches for the first `durable`.
    pub(crate) fn new(
        ingest: Locked,
        digester: Digester,
        written: u64,
        durable: u64,
        followers: Arc<AtomicUsize>,
    ) -> Result<Self> {
        let mut sink = Sink {
            behind: WriteBehind::default(),
            ingest,
            digester,
            written,
            checkpointed: durable,
            poisoned: false,
            sync_failed: false,
            published: false,
            target: None,
            followers,
            write_behind_slot: None,
            patience: pairing::Patience::default(),
        };
        sink.target = Some(sink.take_target()?);
        Ok(sink)
    }

    /// Takes the write target, making a new one if a failed thread start
    /// lost it. The caller has settled.
    fn take_target(&mut self) -> Result<WriteTarget> {
        if let Some(target) = self.target.take() {
            return Ok(target);
        }
        let data = self
            .ingest
            .data
            .try_clone()
            .map_err(|e| Error::io("open", self.data_path(), e))?;
        Ok(WriteTarget {
            data,
            direct: DirectFile::default(),
            sync_failed: false,
        })
    }

    /// Whether a sync failed, here or on the write target, since the data
    /// was last known durable.
    fn lost_unsynced(&self) -> bool {
        self.sync_failed || self.target.as_ref().is_some_and(|t| t.sync_failed)
    }

    fn data_path(&self) -> std::path::PathBuf {
        self.ingest.dir.join(DATA)
    }

    fn check_not_poisoned(&self) -> Result<()> {
        if self.poisoned {
            return Err(Error::other(
                ErrorKind::Io,
                format!("{}: an earlier write failed", self.data_path().display()),
            ));
        }
        Ok(())
    }

    /// Hashes `chunk` and writes it at the end of the data. A large chunk
    /// that may go direct is written on a thread of its own, overlapping the
    /// next chunk's hashing (and its filling on the async side); this waits
    /// for the chunk before it instead. Returns a buffer to fill next: that
    /// earlier chunk's.
    ///
    /// Small chunks, every chunk while a reader follows the ingest, and those
    /// of sinks beyond [`WRITE_BEHIND_WRITERS`] are written in line, hashed
    /// meanwhile on a second thread, in two buffers, not three: a copy into
    /// the page cache is quick, and a pull writes eight layers at once.
    ///
    /// A chunk to be hashed with another writer's (`Hashing::Paired`) is
    /// written in line once hashed, while the writer fills the next one.
    fn append(
        &mut self,
        chunk: ChunkBuf,
        hashing: Hashing,
        updated_at: SystemTime,
    ) -> Result<ChunkBuf> {
        // A digest other than SHA-256 is hashed beside the write, as for a
        // lone stream.
        if let Hashing::Paired { others } = hashing
            && self.digester.pairs()
        {
            self.check_not_poisoned()?;
            let digester = self.digester.clone();
            let (state, chunk) = pairing::hash_paired(digester, chunk, others, &mut self.patience)
                .ok_or_else(|| {
                    Error::other(ErrorKind::Internal, "the thread hashing a chunk died")
                })?;
            self.append_hashed(chunk.as_slice(), state, updated_at)?;
            return Ok(chunk);
        }
        if chunk.len() < WRITE_BEHIND_MIN || !self.direct_allowed() || !self.may_write_behind() {
            self.append_in_line(chunk.as_slice(), updated_at)?;
            if !self.direct_allowed() {
                // Settled above: let another sink write behind.
                self.write_behind_slot = None;
            }
            return Ok(chunk);
        }
        self.check_not_poisoned()?;
        // The chunk was filled on the async side, on another core.
        self.digester.update_handed_over(chunk.as_slice());
        let offset = self.written;
        self.written += chunk.len() as u64;
        // From here until the write succeeds, the digest is ahead of the file.
        self.poisoned = true;
        let freed = self.settle()?;
        let mut target = self.take_target()?;
        let spawned = std::thread::Builder::new().spawn(move || {
            let result = target.write(chunk.as_slice(), offset, true);
            (target, chunk, result)
        });
        match spawned {
            Ok(handle) => self.behind.0 = Some(handle),
            Err(e) => {
                // The closure, chunk and target with it, is gone: the ingest
                // stays poisoned, and a reopen resumes from the file.
                return Err(Error::io("start a write thread for", self.data_path(), e));
            }
        }
        self.poisoned = false;
        self.maybe_checkpoint(updated_at)?;
        Ok(freed)
    }

    /// Hashes and writes `bytes` at the end of the data, in line.
    fn append_in_line(&mut self, bytes: &[u8], updated_at: SystemTime) -> Result<()> {
        self.check_not_poisoned()?;
        self.settle()?;
        let offset = self.written;
        self.poisoned = true;
        let mut target = self.take_target()?;
        let direct = self.direct_allowed();
        let result = hash_while(&mut self.digester, bytes, || {
            target.write(bytes, offset, direct)
        });
        self.target = Some(target);
        result.map_err(|e| Error::io("write", self.data_path(), e))?;
        self.written += bytes.len() as u64;
        self.poisoned = false;
        self.maybe_checkpoint(updated_at)
    }

    /// Writes `bytes`, which `state` already covers, at the end of the data.
    fn append_hashed(
        &mut self,
        bytes: &[u8],
        state: Digester,
        updated_at: SystemTime,
    ) -> Result<()> {
        self.check_not_poisoned()?;
        self.settle()?;
        let offset = self.written;
        // Until the write succeeds, the digest is ahead of the file.
        self.poisoned = true;
        self.digester = state;
        self.write_in_line(bytes, offset)?;
        self.written += bytes.len() as u64;
        self.poisoned = false;
        self.maybe_checkpoint(updated_at)
    }

    /// Writes `bytes` at `offset` in line (the caller has settled).
    fn write_in_line(&mut self, bytes: &[u8], offset: u64) -> Result<()> {
        let mut target = self.take_target()?;
        let result = target.write(bytes, offset, self.direct_allowed());
        self.target = Some(target);
        result.map_err(|e| Error::io("write", self.data_path(), e))
    }

    /// Whether this sink holds, or can get, a write-behind slot.
    fn may_write_behind(&mut self) -> bool {
        if self.write_behind_slot.is_none() {
            self.write_behind_slot = Slot::try_acquire(&WRITE_BEHIND_SLOTS, WRITE_BEHIND_WRITERS);
        }
        self.write_behind_slot.is_some()
    }

    /// Whether chunks may bypass the page cache: not while this process reads
    /// the ingest as it grows (a pull unpacking a layer as it downloads), whose
    /// reads would otherwise all go to the disk.
    fn direct_allowed(&self) -> bool {
        self.followers.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    /// Waits for the chunk being written behind, if any, so the file holds
    /// everything counted in `written`. Returns its buffer (or an empty one).
    /// A failed write poisons the sink.
    fn settle(&mut self) -> Result<ChunkBuf> {
        let Some(handle) = self.behind.0.take() else {
            return Ok(ChunkBuf::empty());
        };
        let (target, buf, result) = match handle.join() {
            Ok(behind) => behind,
            Err(panic) => {
                // `written` counts a chunk that may not be in the file.
                self.poisoned = true;
                std::panic::resume_unwind(panic)
            }
        };
        self.target = Some(target);
        match result {
            Ok(()) => Ok(buf),
            Err(e) => {
                self.poisoned = true;
                Err(Error::io("write", self.data_path(), e))
            }
        }
    }

    fn maybe_checkpoint(&mut self, updated_at: SystemTime) -> Result<()> {
        if self.written - self.checkpointed >= CHECKPOINT_EVERY {
            self.checkpoint(updated_at)?;
        }
        Ok(())
    }

    /// Saves the digest state, after making the data it covers durable, so a
    /// checkpoint never describes bytes a power loss could take away: a resume
    /// whose data no longer hashes to it starts over, and a failed sync cuts
    /// the data back to it.
    fn checkpoint(&mut self, updated_at: SystemTime) -> Result<()> {
        self.settle()?;
        if self.poisoned {
            return Ok(());
        }
        if let Err(e) = sync_data_file(&self.ingest.data, &self.ingest.dir, false) {
            self.poisoned = true;
            self.sync_failed = true;
            return Err(Error::io("fsync", self.data_path(), e));
        }
        self.ingest
            .save_checkpoint(&self.digester, self.written, updated_at)?;
        self.checkpointed = self.written;
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> Result<()> {
        let path = self.data_path();
        let durable = self.checkpointed;
        if self.settle().is_err() {
            // A failed write behind may have left the file short of `size`;
            // extending it would put zeros where the caller's bytes were.
            let len = self
                .ingest
                .data
                .metadata()
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
            if len < size {
                return Err(Error::other(
                    ErrorKind::Io,
                    format!(
                        "{}: a write before offset {size} failed; truncate to {len} or less",
                        path.display()
                    ),
                ));
            }
        }
        // Until it has all succeeded, the file and the digest may disagree.
        self.poisoned = true;
        self.ingest.drop_checkpoint()?;
        let data = &mut self.ingest.data;
        data.set_len(size)
            .and_then(|()| data.seek(SeekFrom::Start(size)).map(drop))
            .map_err(|e| Error::io("truncate", &path, e))?;
        self.digester.reset();
        ingest::hash_file(data, 0, size, &mut self.digester)
            .map_err(|e| Error::io("read", &path, e))?;
        self.written = size;
        self.checkpointed = 0;
        self.poisoned = false;
        // Bytes up to a checkpoint were synced before any sync failed; past
        // it, a failed sync's lost pages may still be here.
        if size <= durable {
            self.sync_failed = false;
            if let Some(target) = self.target.as_mut() {
                target.sync_failed = false;
            }
        }
        Ok(())
    }

    /// Verifies the data (the file plus `pending`, bytes not yet written) and
    /// moves it into `blobs/`. See [`Writer::commit`].
    fn commit(
        mut self,
        store: &LocalStore,
        pending: ChunkBuf,
        size: Option<u64>,
        expected: Option<Digest>,
        labels: &Labels,
        updated_at: SystemTime,
    ) -> Result<Digest> {
        self.settle()?;
        if self.poisoned || self.lost_unsynced() {
            return Err(Error::other(
                ErrorKind::Io,
                format!(
                    "{}: an earlier write or sync failed; truncate and rewrite",
                    self.data_path().display()
                ),
            ));
        }
        let created_at = SystemTime::now();
        let pending = pending.as_slice();
        let before_pending = self.digester.clone();
        // A blob that is all in `pending` never touches the ingest's data file:
        // it is staged as an unnamed blob file while it is hashed. Not while a
        // reader follows the ingest: it holds the data file, and must find
        // the bytes there.
        let staged = if self.written == 0 && self.direct_allowed() {
            self.stage_and_hash(store, pending, created_at)?
        } else {
            self.digester.update_handed_over(pending);
            None
        };
        let actual = match self.verify(pending, size, expected) {
            Ok(actual) => actual,
            Err(err) => {
                // Keep the data and make the next resume cheap, as far as
                // possible; the mismatch stays the error reported. The lock
                // goes with `self`.
                self.digester = before_pending;
                let kept = self.append_in_line(pending, updated_at).is_ok();
                if kept {
                    let _ = self.checkpoint(updated_at);
                }
                return Err(err);
            }
        };
        let target = store.blob_path(&actual);
        let target_dir = target.parent().expect("blob paths have a parent");
        let exists = || Error::AlreadyExists {
            digest: actual.clone(),
        };
        if target.exists() {
            self.ingest.remove()?;
            return Err(exists());
        }
        store.ensure_algorithm_dir(target_dir)?;
        // Data and labels are made durable before the lock, which is
        // store-wide...
        if staged.is_none() {
            self.complete_data_file(pending, created_at)?;
        }
        let staged_labels = store.labels.stage(&actual, labels, created_at)?;
        // ...and held while the name is checked, the labels written and the
        // blob published: of two commits of one blob, only the one that
        // publishes writes its labels, and a delete never takes new labels.
        let lock = store.labels.lock()?;
        if target.exists() {
            drop(lock);
            self.ingest.remove()?;
            return Err(exists());
        }
        // Labels first: a crash after publishing must not leave the blob
        // without them (a retry would find it present and stop there).
        let labels_changed = staged_labels.install()?;
        let published = match staged {
            Some(unnamed) => match unnamed.link(&target) {
                Ok(true) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(exists()),
                // It could not be linked: the ordinary way, data and all.
                Ok(false) | Err(_) => self
                    .complete_data_file(pending, created_at)
                    .and_then(|()| self.rename_data_file(&target, &actual)),
            },
            None => self.rename_data_file(&target, &actual),
        };
        drop(lock);
        match published {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {
                self.ingest.remove()?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        // The data file is the blob now: nothing may cut it back.
        self.published = true;
        // The labels' directory before the blob's, outside the lock: a
        // filesystem that syncs one directory at a time (btrfs's log tree,
        // ext4's fast commits) then has the labels durable first, unless
        // another commit's fsync of `blobs/` takes the name along in between
        // (a crash in that instant leaves the blob without its labels, as a
        // crash between containerd's commit and its metadata update does).
        // Under the lock this cost many:200 0.02-0.03 s; here nothing measurable:
        // on a journal that commits everything at once, the second fsync
        // finds nothing left to do (BENCHMARKS.md, thirteenth session).
        if labels_changed {
            store.labels.sync_dir(&actual)?;
        }
        fsutil::fsync_dir(target_dir)?;
        // Still locked: nobody can open the ingest between the move and this.
        self.ingest.remove()?;
        Ok(actual)
    }

    /// Hashes `pending` while writing it to an unnamed, fsynced file in the
    /// blob directory of the digest's algorithm; `None` where the filesystem
    /// cannot make unnamed files.
    fn stage_and_hash(
        &mut self,
        store: &LocalStore,
        pending: &[u8],
        created_at: SystemTime,
    ) -> Result<Option<fsutil::UnnamedFile>> {
        let dir = store.algorithm_dir(&self.digester.algorithm());
        store.ensure_algorithm_dir(&dir)?;
        let staged = hash_while(&mut self.digester, pending, || {
            fsutil::UnnamedFile::create(&dir, pending, created_at)
        });
        // Staging is an optimisation: if it fails, the ordinary path writes
        // the bytes through the ingest's data file instead.
        Ok(staged.unwrap_or(None))
    }

    /// Checks size and digest of everything written plus `pending` (already
    /// fed to the digester), returning the digest.
    fn verify(
        &mut self,
        pending: &[u8],
        size: Option<u64>,
        expected: Option<Digest>,
    ) -> Result<Digest> {
        let reference = &self.ingest.meta.reference;
        let actual_size = self.written + pending.len() as u64;
        if let Some(expected) = size
            && expected != actual_size
        {
            return Err(Error::SizeMismatch {
                reference: reference.clone(),
                expected,
                actual: actual_size,
            });
        }
        let actual = match &expected {
            Some(want) if *want.algorithm() != self.digester.algorithm() => {
                let mut other = Digester::new(want.algorithm())?;
                ingest::hash_file(&mut self.ingest.data, 0, self.written, &mut other)
                    .map_err(|e| Error::io("read", self.data_path(), e))?;
                other.update(pending);
                other.digest()
            }
            _ => self.digester.digest(),
        };
        match expected {
            Some(expected) if expected != actual => Err(Error::DigestMismatch {
                reference: reference.clone(),
                expected,
                actual,
            }),
            _ => Ok(actual),
        }
    }

    /// Completes the data file with `pending` and makes it immutable
    /// (read-only, mtime = created_at) and durable in one fsync.
    fn complete_data_file(&mut self, pending: &[u8], created_at: SystemTime) -> Result<()> {
        let data_path = self.data_path();
        self.write_in_line(pending, self.written)?;
        let data = &mut self.ingest.data;
        data.set_permissions(fs::Permissions::from_mode(0o444))
            .and_then(|()| data.set_modified(created_at))
            .map_err(|e| Error::io("write", &data_path, e))?;
        if let Err(e) = sync_data_file(data, &self.ingest.dir, true) {
            self.poisoned = true;
            self.sync_failed = true;
            return Err(Error::io("fsync", &data_path, e));
        }
        Ok(())
    }

    /// Moves the completed data file to `target`.
    fn rename_data_file(&self, target: &std::path::Path, digest: &Digest) -> Result<()> {
        let data_path = self.data_path();
        // Moved, not linked: an ingest must never share an inode with a blob,
        // or a resume of its ref would append to the blob.
        match fsutil::rename_noreplace(&data_path, target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
                digest: digest.clone(),
            }),
            Err(e) => Err(Error::io("rename", target, e)),
        }
    }
}

/// Flushes an ingest's data file (`all`: with its metadata), or fails as a
/// unit test asks for the ingest directory `dir`.
fn sync_data_file(file: &fs::File, dir: &std::path::Path, all: bool) -> io::Result<()> {
    #[cfg(test)]
    if tests::sync_fails(dir) {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let _ = dir;
    if all {
        file.sync_all()
    } else {
        file.sync_data()
    }
}

/// Asks the kernel to start writing a just-written range back to disk, without
/// waiting, so the fsync at a checkpoint or commit finds little left to do.
fn start_writeback(file: &fs::File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor we own; it reads no memory.
    // Its result is advisory: on failure the later fsync does all the work.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Waits for a range written long ago to reach the disk, then drops its pages
/// from the page cache (a reader of the ingest reads them back from disk).
///
/// A failed wait is an error: since Linux 4.14 it reports the file's writeback
/// errors and marks them seen, so the fsync at the next checkpoint or commit
/// would succeed, and the failed pages are clean by then, never to be written.
fn drop_written(file: &fs::File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (fd, offset, len) = (
        file.as_raw_fd(),
        offset as libc::off64_t,
        len as libc::off64_t,
    );
    // SAFETY: a plain syscall on a file descriptor we own; it reads no memory.
    let waited = unsafe {
        libc::sync_file_range(
            fd,
            offset,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if waited != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above. Advisory: `DONTNEED` drops only clean pages.
    unsafe {
        libc::posix_fadvise(fd, offset, len, libc::POSIX_FADV_DONTNEED);
    }
    Ok(())
}

/// Feeds `chunk` to `digester` on a second thread while `work` runs here, for
/// chunks big enough to pay for the thread; in line otherwise, or when no
/// thread can be had.
fn hash_while<T>(digester: &mut Digester, chunk: &[u8], work: impl FnOnce() -> T) -> T {
    if chunk.len() < PARALLEL_HASH_MIN {
        digester.update_handed_over(chunk);
        return work();
    }
    std::thread::scope(|scope| {
        // The hashing thread works on a copy (a few hundred bytes of state)
        // and hands it back, so a failed spawn leaves ours to use in line.
        let mut copy = digester.clone();
        let spawned = std::thread::Builder::new().spawn_scoped(scope, move || {
            copy.update_handed_over(chunk);
            copy
        });
        match spawned {
            Ok(handle) => {
                let result = work();
                match handle.join() {
                    Ok(updated) => *digester = updated,
                    Err(panic) => std::panic::resume_unwind(panic),
                }
                result
            }
            Err(_) => {
                digester.update_handed_over(chunk);
                work()
            }
        }
    })
}

/// One of a fixed number of process-wide slots, which bound the memory of
/// writers whatever their number; freed when dropped.
#[derive(Debug)]
struct Slot(&'static AtomicUsize);

/// Held by writers that use [`BIG_CHUNK`]s.
static BIG_CHUNK_SLOTS: AtomicUsize = AtomicUsize::new(0);
/// Held by sinks that write chunks behind.
static WRITE_BEHIND_SLOTS: AtomicUsize = AtomicUsize::new(0);
/// Held by writers that have handed over a chunk and not yet finished.
static STREAMING_WRITERS: AtomicUsize = AtomicUsize::new(0);

/// The cores this process may use.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

impl Slot {
    fn try_acquire(pool: &'static AtomicUsize, limit: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        pool.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            (held < limit).then_some(held + 1)
        })
        .ok()
        .map(|_| Slot(pool))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn lock(sink: &Mutex<Sink>) -> MutexGuard<'_, Sink> {
    sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A writer into a [`LocalStore`] ingest.
pub struct LocalWriter {
    store: LocalStore,
    reference: String,
    /// `None` once committed, closed or failed; the last holder releases the lock.
    sink: Option<Arc<Mutex<Sink>>>,
    /// The chunk being appended; it returns the buffer for reuse.
    in_flight: Option<JoinHandle<Result<ChunkBuf>>>,
    closing: Option<JoinHandle<Result<()>>>,
    /// The digest of a successful commit, still reported by `digest()`.
    committed: Option<Digest>,
    buf: ChunkBuf,
    spare: ChunkBuf,
    /// Held once the ingest is large, while a slot is free and nobody follows
    /// the ingest: chunks are then [`BIG_CHUNK`] long.
    big_chunks: Option<Slot>,
    /// The sink's count of readers following the ingest.
    followers: Arc<AtomicUsize>,
    /// Held from the first chunk handed over: counts the writers streaming
    /// data at once, which decides where chunks are hashed.
    streaming: Option<Slot>,
    /// A chunk was handed over since the last flush: it may still be being
    /// written behind.
    unsettled: bool,
    offset: u64,
    total: Option<u64>,
    expected: Option<Digest>,
    started_at: SystemTime,
    updated_at: SystemTime,
}

impl std::fmt::Debug for LocalWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWriter")
            .field("reference", &self.reference)
            .field("offset", &self.offset)
            .field("closed", &self.sink.is_none())
            .finish()
    }
}

impl LocalWriter {
    pub(crate) fn new(store: LocalStore, sink: Sink, status: Status) -> Self {
        let followers = sink.followers.clone();
        LocalWriter {
            followers,
            unsettled: false,
            store,
            reference: status.reference,
            sink: Some(Arc::new(Mutex::new(sink))),
            in_flight: None,
            closing: None,
            committed: None,
            buf: ChunkBuf::with_capacity(CHUNK),
            spare: ChunkBuf::empty(),
            big_chunks: None,
            streaming: None,
            offset: status.offset,
            total: status.total,
            expected: status.expected,
            started_at: status.started_at,
            updated_at: status.updated_at,
        }
    }

    fn closed(&self) -> Error {
        Error::Closed {
            reference: self.reference.clone(),
        }
    }

    fn sink(&self) -> Result<Arc<Mutex<Sink>>> {
        self.sink.clone().ok_or_else(|| self.closed())
    }

    /// Waits for the chunk in flight, keeping its buffer as the spare.
    fn poll_in_flight(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Some(task) = self.in_flight.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let joined = ready!(Pin::new(task).poll(cx));
        self.in_flight = None;
        let result = joined
            .map_err(|e| Error::other(ErrorKind::Internal, format!("write task: {e}")))
            .and_then(|r| r);
        match result {
            Ok(mut buf) => {
                // A settle or truncate hands back no buffer: keep the spare.
                if buf.capacity() > 0 {
                    buf.clear();
                    self.spare = buf;
                }
                Poll::Ready(Ok(()))
            }
            Err(err) => {
                // The data on disk is whatever the failed task managed; a reopen
                // resumes from there.
                self.sink = None;
                self.big_chunks = None;
                self.streaming = None;
                self.buf.clear();
                Poll::Ready(Err(err))
            }
        }
    }

    /// How long the buffered chunk grows before it is handed over: chunks end
    /// on multiples of the buffer's size in the file, so that after an odd
    /// start (a resume) every chunk but the first can be written directly.
    fn chunk_len(&self) -> usize {
        let chunk_start = self.offset - self.buf.len() as u64;
        let size = self.buf.capacity().max(1);
        size - (chunk_start % size as u64) as usize
    }

    /// Hands the buffer to a blocking task; the spare becomes the buffer.
    fn submit(&mut self) -> Result<()> {
        debug_assert!(self.in_flight.is_none());
        if self.buf.is_empty() {
            return Ok(());
        }
        let sink = self.sink()?;
        // Big chunks pay off only written directly: a reader following the
        // ingest keeps it in the page cache, and there they were slower
        // (big:1g pull 2.7-3.3 s against 2.3-2.4 s with 1 MiB chunks).
        let followed = self.followers.load(std::sync::atomic::Ordering::Acquire) > 0;
        if followed {
            self.big_chunks = None;
        } else if self.big_chunks.is_none()
            && self.offset.max(self.total.unwrap_or(0)) >= BIG_INGEST
        {
            self.big_chunks = Slot::try_acquire(&BIG_CHUNK_SLOTS, BIG_CHUNK_WRITERS);
        }
        let capacity = if self.big_chunks.is_some() {
            BIG_CHUNK
        } else {
            CHUNK
        };
        let mut next = std::mem::replace(&mut self.spare, ChunkBuf::empty());
        if next.capacity() != capacity {
            next = ChunkBuf::with_capacity(capacity);
        }
        let hashing = self.decide_hashing();
        let chunk = std::mem::replace(&mut self.buf, next);
        self.unsettled = true;
        let updated_at = self.updated_at;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            lock(&sink).append(chunk, hashing, updated_at)
        }));
        Ok(())
    }

    /// Decides, at each chunk handed over, where it is hashed.
    ///
    /// With at least as many writers streaming as the machine has cores, every
    /// core is kept busy across streams, and each chunk is hashed together
    /// with another writer's, which takes about 0.57 times as long as hashing
    /// both alone (bulk:8x64m fetch, eight streams: 0.53 CPU s against 0.63
    /// hashed as the bytes arrived, medians of 5; BENCHMARKS.md, nineteenth
    /// session). A lone stream instead hashes each chunk on another thread
    /// while this one fills the next: a pipeline within the stream (big:1g,
    /// one stream, took 0.18 s longer hashed as the bytes arrived).
    fn decide_hashing(&mut self) -> Hashing {
        if self.streaming.is_none() {
            self.streaming = Slot::try_acquire(&STREAMING_WRITERS, usize::MAX);
        }
        let streams = STREAMING_WRITERS.load(std::sync::atomic::Ordering::Acquire);
        // Without the SHA extensions a pair is hashed one after the other,
        // and the pipeline within each stream does better.
        if streams >= cores() && Digester::pairs_on_this_cpu() {
            // On one core a lone stream has no partner to wait for.
            Hashing::Paired {
                others: streams > 1,
            }
        } else {
            Hashing::BySink
        }
    }

    /// Gets every buffered byte into the data file and waits for it, the
    /// chunk written behind included: after a flush, readers of the ingest
    /// see every byte.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        ready!(self.poll_in_flight(cx))?;
        if !self.buf.is_empty() {
            self.submit()?;
            ready!(self.poll_in_flight(cx))?;
        }
        if self.unsettled {
            let sink = self.sink()?;
            self.unsettled = false;
            self.in_flight = Some(tokio::task::spawn_blocking(move || lock(&sink).settle()));
            ready!(self.poll_in_flight(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    async fn drain(&mut self) -> Result<()> {
        std::future::poll_fn(|cx| self.poll_drain(cx)).await
    }
}

impl AsyncWrite for LocalWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sink.is_none() {
            return Poll::Ready(Err(this.closed().into()));
        }
        if let Some(total) = this.total
            && this.offset + data.len() as u64 > total
        {
            return Poll::Ready(Err(Error::WritePastSize {
                reference: this.reference.clone(),
                expected: total,
            }
            .into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.buf.len() >= this.chunk_len() {
            ready!(this.poll_in_flight(cx))?;
            this.submit()?;
        }
        let take = (this.chunk_len() - this.buf.len()).min(data.len());
        this.buf.fill(&data[..take]);
        this.offset += take as u64;
        this.updated_at = SystemTime::now();
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sink.is_none() {
            return Poll::Ready(Ok(()));
        }
        this.poll_drain(cx).map_err(io::Error::from)
    }

    /// Closes the writer: the data and a checkpoint are saved, the ref released,
    /// and the ingest stays for a later resume.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing.is_none() {
            if this.sink.is_none() {
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_drain(cx))?;
            let sink = this.sink.take().expect("checked above");
            this.big_chunks = None;
            this.streaming = None;
            let updated_at = this.updated_at;
            this.closing = Some(tokio::task::spawn_blocking(move || {
                lock(&sink).checkpoint(updated_at)
            }));
        }
        let task = this.closing.as_mut().expect("set above");
        let joined = ready!(Pin::new(task).poll(cx));
        this.closing = None;
        let result = joined
            .map_err(|e| Error::other(ErrorKind::Internal, format!("close task: {e}")))
            .and_then(|r| r);
        Poll::Ready(result.map_err(io::Error::from))
    }
}

impl Drop for LocalWriter {
    /// Saves what was written (buffered bytes and a checkpoint) in the
    /// background; the ref stays locked until that is done.
    fn drop(&mut self) {
        let Some(sink) = self.sink.take() else {
            return;
        };
        let buf = std::mem::replace(&mut self.buf, ChunkBuf::empty());
        let updated_at = self.updated_at;
        let finish = move || {
            let mut sink = lock(&sink);
            if !buf.is_empty() {
                sink.append(buf, Hashing::BySink, updated_at)?;
            }
            sink.checkpoint(updated_at)
        };
        let in_flight = self.in_flight.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                // After the chunk in flight, so the data stays in order.
                handle.spawn(async move {
                    // A failed chunk leaves a gap: appending after it would
                    // put later bytes in the wrong place.
                    if let Some(task) = in_flight
                        && !matches!(task.await, Ok(Ok(_)))
                    {
                        return;
                    }
                    let _ = tokio::task::spawn_blocking(finish).await;
                });
            }
            Err(_) if in_flight.is_none() => {
                let _ = finish();
            }
            // No runtime to wait on the chunk in flight: leave the data as it is;
            // a resume rehashes whatever the checkpoint does not cover.
            Err(_) => {}
        }
    }
}

#[async_trait]
impl Writer for LocalWriter {
    async fn status(&mut self) -> Result<Status> {
        if self.sink.is_none() {
            return Err(self.closed());
        }
        Ok(Status {
            reference: self.reference.clone(),
            offset: self.offset,
            total: self.total,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
        })
    }

    async fn digest(&mut self) -> Result<Digest> {
        if let (None, Some(committed)) = (&self.sink, &self.committed) {
            return Ok(committed.clone());
        }
        self.drain().await?;
        let sink = self.sink()?;
        let digest = lock(&sink).digester.digest();
        Ok(digest)
    }

    async fn commit(
        &mut self,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<()> {
        labels::validate_labels(&labels)?;
        std::future::poll_fn(|cx| self.poll_in_flight(cx)).await?;
        let sink = self.sink.take().ok_or_else(|| self.closed())?;
        self.big_chunks = None;
        self.streaming = None;
        self.spare = ChunkBuf::empty();
        let pending = std::mem::replace(&mut self.buf, ChunkBuf::empty());
        let sink = Arc::try_unwrap(sink)
            .map_err(|_| Error::other(ErrorKind::Internal, "ingest still in use by a write task"))?
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let size = size.or(self.total);
        let expected = expected.cloned().or_else(|| self.expected.clone());
        let store = self.store.clone();
        let updated_at = self.updated_at;
        let committed = fsutil::blocking(move || {
            sink.commit(&store, pending, size, expected, &labels, updated_at)
        })
        .await;
        match committed {
            Ok(digest) => {
                self.committed = Some(digest);
                Ok(())
            }
            // The blob is there, so `digest()` can still say which.
            Err(Error::AlreadyExists { digest }) => {
                self.committed = Some(digest.clone());
                Err(Error::AlreadyExists { digest })
            }
            Err(e) => Err(e),
        }
    }

    async fn truncate(&mut self, size: u64) -> Result<()> {
        if size > self.offset {
            return Err(Error::InvalidArgument(format!(
                "ingest ref {:?}: cannot truncate to {size} bytes, only {} written",
                self.reference, self.offset
            )));
        }
        self.drain().await?;
        let sink = self.sink()?;
        // Tracked like a chunk in flight, so that if this future is dropped,
        // whatever comes next still waits for the truncation to finish.
        self.offset = size;
        self.updated_at = SystemTime::now();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            lock(&sink).truncate(size)?;
            Ok(ChunkBuf::empty())
        }));
        std::future::poll_fn(|cx| self.poll_in_flight(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use tokio::io::AsyncWriteExt;

    use crate::local::LocalStore;
    use crate::{WriterOpts, sha256_of};

    /// Ingest directories under these roots fail every fsync of their data.
    static FAILING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn sync_fails(dir: &Path) -> bool {
        let failing = FAILING.lock().unwrap_or_else(|p| p.into_inner());
        failing.iter().any(|root| dir.starts_with(root))
    }

    fn fail_syncs_under(root: &Path, fail: bool) {
        let mut failing = FAILING.lock().unwrap_or_else(|p| p.into_inner());
        failing.retain(|r| r != root);
        if fail {
            failing.push(root.to_path_buf());
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    async fn write_some(store: &LocalStore, bytes: &[u8]) -> std::io::Result<u64> {
        let mut writer = crate::open_writer(&store, WriterOpts::new("blob"))
            .await
            .unwrap();
        let offset = writer.status().await.unwrap().offset;
        let end = bytes.len().min(offset as usize + (80 << 20));
        let written = async {
            writer.write_all(&bytes[offset as usize..end]).await?;
            // Checkpointed now, not as the writer goes, in the background.
            writer.shutdown().await
        }
        .await;
        written.map(|()| offset)
    }

    /// A failed fsync at a checkpoint loses the bytes since the last one
    /// (the pages that failed are clean, and no later fsync says so): the
    /// next writer resumes from that checkpoint, not from the file's end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_checkpoint_sync_resumes_from_the_last_durable_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let bytes = data(2 * (80 << 20));
        // The first 80 MiB, checkpointed at their end.
        assert_eq!(write_some(&store, &bytes).await.unwrap(), 0);
        fail_syncs_under(dir.path(), true);
        let failed = write_some(&store, &bytes).await;
        fail_syncs_under(dir.path(), false);
        assert!(failed.is_err(), "the checkpoint's fsync failed: {failed:?}");
        let mut writer = crate::open_writer(&store, WriterOpts::new("blob"))
            .await
            .unwrap();
        let resumed = writer.status().await.unwrap().offset;
        // The next 80 MiB failed at their checkpoint, 64 MiB on.
        assert_eq!(
            resumed,
            80 << 20,
            "resumed past the last durable checkpoint"
        );
        writer.write_all(&bytes[resumed as usize..]).await.unwrap();
        let digest = sha256_of(&bytes);
        writer
            .commit(Some(bytes.len() as u64), Some(&digest), Default::default())
            .await
            .unwrap();
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), bytes);
    }

    /// A failed fsync at commit publishes nothing and leaves nothing a
    /// resume would trust.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_sync_publishes_nothing_and_keeps_nothing_unsynced() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let bytes = data(10 << 20);
        let digest = sha256_of(&bytes);
        let mut writer = crate::open_writer(&store, WriterOpts::new("blob"))
            .await
            .unwrap();
        writer.write_all(&bytes).await.unwrap();
        writer.flush().await.unwrap();
        fail_syncs_under(dir.path(), true);
        let committed = writer
            .commit(Some(bytes.len() as u64), Some(&digest), Default::default())
            .await;
        fail_syncs_under(dir.path(), false);
        assert!(committed.is_err(), "{committed:?}");
        drop(writer);
        assert!(!store.blob_path(&digest).exists());
        let mut writer = crate::open_writer(&store, WriterOpts::new("blob"))
            .await
            .unwrap();
        assert_eq!(writer.status().await.unwrap().offset, 0);
        writer.write_all(&bytes).await.unwrap();
        writer
            .commit(Some(bytes.len() as u64), Some(&digest), Default::default())
            .await
            .unwrap();
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), bytes);
    }

    /// A failed wait for writeback is reported: it marks the file's error
    /// seen, so no later fsync would.
    #[test]
    fn a_failed_writeback_wait_is_an_error() {
        let (reader, _writer) = std::io::pipe().unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(reader));
        assert!(super::drop_written(&file, 0, 4096).is_err());
    }
}
