//! Direct I/O for the bulk of a large ingest: whole, aligned chunks go from
//! the writer's buffer to the disk without passing through the page cache.
//!
//! A buffered write copies every byte into a freshly allocated page-cache page
//! that is written back and dropped again later; for a blob nobody reads until
//! it is unpacked, that copy and its bookkeeping are most of the kernel's share
//! of a fetch. `O_DIRECT` skips them: writing 1 GiB costs 0.09–0.13 CPU
//! seconds instead of 0.57–0.77 on the benchmark machine (`dd`, BENCHMARKS.md).
//!
//! Only chunks whose file offset, length and memory are all aligned go direct;
//! everything else (the head of a resume from an odd offset, the last partial
//! chunk, small blobs) is written through the page cache as before. A
//! filesystem that refuses `O_DIRECT` (at open or at the first write) is
//! remembered and written buffered from then on.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

/// Alignment of offsets, lengths and memory for direct writes: the largest
/// logical block size in common use, so it suits every device.
pub(crate) const ALIGN: usize = 4096;

/// A fixed-capacity byte buffer whose data starts on an [`ALIGN`] boundary.
///
/// The data sits in a `Vec` at the first aligned offset of its allocation,
/// after a few zeroed bytes of padding; the rest is never initialised ahead
/// of use (a zeroed allocation would be written over in full whenever the
/// allocator reuses memory), and the `Vec` never grows, so it never moves.
pub(crate) struct ChunkBuf {
    storage: Vec<u8>,
    start: usize,
    capacity: usize,
}

impl ChunkBuf {
    /// An empty buffer that holds `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let mut storage: Vec<u8> = Vec::with_capacity(capacity + ALIGN);
        let start = storage.as_ptr().align_offset(ALIGN);
        storage.resize(start, 0);
        ChunkBuf {
            storage,
            start,
            capacity,
        }
    }

    /// An empty buffer that holds nothing (allocates nothing).
    pub(crate) fn empty() -> Self {
        ChunkBuf {
            storage: Vec::new(),
            start: 0,
            capacity: 0,
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.storage.len() - self.start
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn clear(&mut self) {
        self.storage.truncate(self.start);
    }

    /// Appends as much of `data` as fits; returns how much that was.
    pub(crate) fn fill(&mut self, data: &[u8]) -> usize {
        let take = (self.capacity - self.len()).min(data.len());
        self.storage.extend_from_slice(&data[..take]);
        take
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..]
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkBuf")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Whether direct writes are still worth trying for one ingest.
#[derive(Debug, Default)]
pub(crate) enum DirectFile {
    /// Not opened yet: opened at the first aligned chunk.
    #[default]
    Untried,
    Open(File),
    /// The filesystem refused it; everything goes buffered.
    Refused,
}

impl DirectFile {
    /// Writes the longest aligned prefix of `chunk` at `offset` directly, if
    /// the chunk is eligible. Returns how many bytes were written; the caller
    /// writes the rest through the page cache. `Ok(0)` means nothing was
    /// written (not eligible, or refused), never a partial failure.
    pub(crate) fn write_prefix(
        &mut self,
        data: &File,
        chunk: &[u8],
        offset: u64,
    ) -> io::Result<usize> {
        let aligned_len = chunk.len() & !(ALIGN - 1);
        let eligible = aligned_len > 0
            && offset.is_multiple_of(ALIGN as u64)
            && chunk.as_ptr().align_offset(ALIGN) == 0;
        if !eligible {
            return Ok(0);
        }
        let file = match self {
            DirectFile::Refused => return Ok(0),
            DirectFile::Open(file) => file,
            DirectFile::Untried => {
                // Reopened through the descriptor, so it is the same inode
                // whatever happened to the path (a dup would share the
                // buffered descriptor's flags). Any failure here only means
                // writing through the page cache.
                match OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(format!("/proc/self/fd/{}", data.as_raw_fd()))
                {
                    Ok(file) => *self = DirectFile::Open(file),
                    Err(_) => {
                        *self = DirectFile::Refused;
                        return Ok(0);
                    }
                }
                let DirectFile::Open(file) = self else {
                    unreachable!("just opened")
                };
                file
            }
        };
        let mut done = 0;
        while done < aligned_len {
            match file.write_at(&chunk[done..aligned_len], offset + done as u64) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // A short write leaves an aligned remainder only if it was
                // itself aligned; otherwise the page cache takes the rest.
                Ok(n) if n % ALIGN != 0 => return Ok(done + n),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if done == 0 && refused(&e) => {
                    *self = DirectFile::Refused;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

/// Errors by which a filesystem says it does not do direct I/O (or not with
/// this alignment); nothing was written.
fn refused(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_buf_is_aligned_and_fills_to_capacity() {
        let mut buf = ChunkBuf::with_capacity(3 * ALIGN);
        assert_eq!(buf.capacity(), 3 * ALIGN);
        assert_eq!(buf.fill(&[7; 2 * ALIGN]), 2 * ALIGN);
        assert_eq!(buf.fill(&[9; 2 * ALIGN]), ALIGN);
        assert_eq!(buf.len(), 3 * ALIGN);
        assert_eq!(buf.as_slice().as_ptr().align_offset(ALIGN), 0);
        assert_eq!(buf.as_slice()[2 * ALIGN - 1], 7);
        assert_eq!(buf.as_slice()[2 * ALIGN], 9);
        buf.clear();
        assert!(buf.is_empty());
        assert_eq!(ChunkBuf::empty().capacity(), 0);
    }

    #[test]
    fn aligned_chunks_go_direct_and_the_rest_is_left_to_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let data = File::create(&path).unwrap();
        let mut direct = DirectFile::default();
        let mut buf = ChunkBuf::with_capacity(4 * ALIGN);
        buf.fill(&[1; 2 * ALIGN + 100]);
        let written = direct.write_prefix(&data, buf.as_slice(), 0).unwrap();
        // On a filesystem without O_DIRECT (tmpfs before Linux 6.6) nothing
        // goes direct, and that is remembered.
        match direct {
            DirectFile::Open(_) => assert_eq!(written, 2 * ALIGN),
            DirectFile::Refused => assert_eq!(written, 0),
            DirectFile::Untried => panic!("the first aligned chunk must try"),
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), written as u64);
        // Misaligned offsets and memory are never tried.
        let mut fresh = DirectFile::default();
        assert_eq!(fresh.write_prefix(&data, buf.as_slice(), 100).unwrap(), 0);
        assert_eq!(
            fresh.write_prefix(&data, &buf.as_slice()[1..], 0).unwrap(),
            0
        );
        assert!(matches!(fresh, DirectFile::Untried));
    }
}
