//! Conveniences built only on the traits, so every store gets them.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWriteExt};

use crate::reader::ReaderAtStream;
use crate::{
    Descriptor, Digest, Digester, Error, ErrorKind, Ingester, Labels, Provider, ReaderAt, Result,
    Writer, WriterOpts,
};

pub use crate::local::labels::{update_labels, validate_labels};

/// Size of the buffer [`copy`] reuses for every chunk.
const COPY_BUFFER: usize = 1 << 20;

/// Reads a whole blob into memory, refusing blobs larger than `limit` bytes
/// before reading any ([`ErrorKind::FailedPrecondition`]).
///
/// A descriptor that embeds its blob (`data`, base64) is answered from it,
/// without asking the provider, when the decoded bytes are the size and
/// digest it says, as containerd's `ReadBlob` does; otherwise the embedded
/// data is ignored.
///
/// ```
/// use base64::Engine as _;
/// use ocidist_content::{descriptor, local::LocalStore, read_blob, sha256_of};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = LocalStore::open(dir.path())?;
/// let mut desc = descriptor(sha256_of(b"{}"), 2);
/// desc.set_data(Some(base64::engine::general_purpose::STANDARD.encode(b"{}")));
/// // Not in the store: read from the descriptor.
/// assert_eq!(read_blob(&store, &desc, 1024).await?, b"{}");
/// # Ok(())
/// # }
/// ```
pub async fn read_blob<P: Provider + ?Sized>(
    provider: &P,
    desc: &Descriptor,
    limit: u64,
) -> Result<Vec<u8>> {
    if let Some(data) = embedded_data(desc) {
        if data.len() as u64 > limit {
            return Err(Error::TooLarge {
                digest: desc.digest().clone(),
                size: data.len() as u64,
                limit,
            });
        }
        return Ok(data);
    }
    let reader = provider.reader_at(desc).await?;
    let size = reader.size();
    if size > limit {
        return Err(Error::TooLarge {
            digest: desc.digest().clone(),
            size,
            limit,
        });
    }
    let mut out = vec![0; size as usize];
    let mut filled = 0;
    while filled < out.len() {
        let n = reader.read_at(filled as u64, &mut out[filled..]).await?;
        if n == 0 {
            return Err(Error::ShortRead {
                expected: size,
                actual: filled as u64,
            });
        }
        filled += n;
    }
    Ok(out)
}

/// The blob `desc` embeds in its `data` field, if it embeds one that is what
/// it says: valid base64 whose bytes have its size and digest. `None` for
/// anything else, which is then to be read or fetched as if there were no
/// data, as containerd does.
pub fn embedded_data(desc: &Descriptor) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let encoded = desc.data().as_deref()?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    if data.len() as u64 != desc.size() {
        return None;
    }
    let mut digester = Digester::new(desc.digest().algorithm()).ok()?;
    digester.update(&data);
    (digester.digest() == *desc.digest()).then_some(data)
}

/// Reads blob `desc` whole from `provider` and checks that it is what `desc`
/// says: its size, then its digest. A store verifies a blob once, at its
/// commit; a file that went bad since (a disk error, a hand edit, a copy
/// cut short) is found only by reading it again, which this does, in
/// 1 MiB reads. [`Error::BlobCorrupt`] when it is not, and
/// the provider's error when it cannot be read.
///
/// ```
/// use ocidist_content::{local::LocalStore, verify_blob, write_blob, sha256_of, Descriptor, Labels, WriterOpts};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = LocalStore::open(dir.path())?;
/// write_blob(&store, WriterOpts::new("hello"), &b"hello"[..], Labels::new()).await?;
/// let desc = Descriptor::new("application/octet-stream".into(), 5, sha256_of(b"hello"));
/// verify_blob(&store, &desc).await?;
/// # Ok(())
/// # }
/// ```
pub async fn verify_blob<P: Provider + ?Sized>(provider: &P, desc: &Descriptor) -> Result<()> {
    let corrupt = |found: String| Error::BlobCorrupt {
        digest: desc.digest().clone(),
        found,
    };
    let reader = provider.reader_at(desc).await?;
    let size = reader.size();
    if size != desc.size() {
        return Err(corrupt(format!("{size} bytes, not {}", desc.size())));
    }
    let mut digester = Digester::new(desc.digest().algorithm())?;
    let mut buf = vec![0; COPY_BUFFER.min(size as usize)];
    let mut read = 0;
    while read < size {
        let n = reader.read_at(read, &mut buf).await?;
        if n == 0 {
            return Err(corrupt(format!("{read} bytes, not {size}")));
        }
        digester.update(&buf[..n]);
        read += n as u64;
    }
    let actual = digester.digest();
    if &actual != desc.digest() {
        return Err(corrupt(format!("its bytes hash to {actual}")));
    }
    Ok(())
}

/// Writes `source` into the store as the ingest `opts.reference` and commits it
/// against the size and digest in `opts`.
///
/// A blob that is already present counts as success, whether that is known
/// when the writer opens or only at commit. A ref held by another writer is
/// waited for (see [`open_writer`]); an ingest left by an earlier attempt is
/// resumed.
pub async fn write_blob<I, R>(
    ingester: &I,
    opts: WriterOpts,
    source: R,
    labels: Labels,
) -> Result<()>
where
    I: Ingester + ?Sized,
    R: AsyncRead + Unpin + Send,
{
    let (size, digest) = (opts.size, opts.digest.clone());
    let mut writer = match open_writer(ingester, opts).await {
        Ok(writer) => writer,
        Err(err) if err.is_already_exists() => return Ok(()),
        Err(err) => return Err(err),
    };
    let mut source = source;
    copy(
        writer.as_mut(),
        CopySource::Stream(&mut source),
        size,
        digest.as_ref(),
        labels,
    )
    .await
}

/// Opens a writer, waiting while another writer holds the ref.
///
/// `Unavailable` is retried with jittered exponential backoff (10 ms doubling
/// to 1 s), forever: cancel by dropping the future, for example with
/// `tokio::time::timeout`. Other errors return at once.
pub async fn open_writer<I: Ingester + ?Sized>(
    ingester: &I,
    opts: WriterOpts,
) -> Result<Box<dyn Writer>> {
    let mut backoff = Duration::from_millis(10);
    loop {
        match ingester.writer(opts.clone()).await {
            Err(err) if err.kind() == ErrorKind::Unavailable => {
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// A uniformly random duration in `[d/2, d]`, so waiters (and retrying
/// clients) do not move in lockstep. Shared with the other ocidist crates;
/// not part of the API.
#[doc(hidden)]
pub fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = d / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64 + 1))
}

/// Any seekable async reader.
pub trait AsyncReadSeek: AsyncRead + AsyncSeek {}

impl<T: AsyncRead + AsyncSeek + ?Sized> AsyncReadSeek for T {}

/// Where [`copy`] reads from, which decides how it skips what the writer has.
pub enum CopySource<'a> {
    /// A plain stream: resuming discards the bytes the writer already has.
    Stream(&'a mut (dyn AsyncRead + Unpin + Send)),
    /// A seekable stream: resuming seeks to the writer's offset.
    Seekable(&'a mut (dyn AsyncReadSeek + Unpin + Send)),
    /// A random-access reader: resuming reads from the writer's offset.
    ReaderAt(&'a dyn ReaderAt),
}

/// Copies `source` into `writer` and commits it, resuming at the writer's offset.
///
/// If the writer already holds more than `size` bytes it is truncated to 0 first.
/// A source that ends before `size` is a [`Error::ShortRead`] (nothing
/// committed, the bytes kept to resume); a blob that turns out to exist
/// already is success.
///
/// A resumed ingest may hold bytes that are not the source's (an earlier,
/// wrong source, since put right). From a `Stream`, the bytes skipped are
/// hashed on the way and compared with what the ingest holds: if they
/// differ, the ingest is emptied and the error says so, for the next attempt
/// to start over. From a source that can be read again (`Seekable`,
/// `ReaderAt`), a whole `size` that hashes wrong is copied once more from the
/// start. Otherwise a mismatch keeps the bytes, as [`Writer::commit`] says.
pub async fn copy(
    writer: &mut dyn Writer,
    mut source: CopySource<'_>,
    size: Option<u64>,
    expected: Option<&Digest>,
    labels: Labels,
) -> Result<()> {
    let mut offset = writer.status().await?.offset;
    if size.is_some_and(|size| offset > size) {
        writer.truncate(0).await?;
        offset = 0;
    }
    let mut buf = vec![0; COPY_BUFFER];
    let copied = copy_from(writer, &mut source, offset, &mut buf).await?;
    let short = |copied: u64, offset: u64| match size {
        Some(size) if offset + copied < size => Err(Error::ShortRead {
            expected: size,
            actual: offset + copied,
        }),
        _ => Ok(()),
    };
    short(copied, offset)?;
    // Checked before the commit only for a resumed ingest known complete:
    // asking a fresh writer its digest would write out what a small blob's
    // commit stages without a data file.
    if offset > 0
        && size.is_some_and(|size| offset + copied == size)
        && let Some(expected) = expected
    {
        let actual = writer.digest().await?;
        // (Another algorithm than the writer's is checked by the commit.)
        if actual.algorithm() == expected.algorithm() && actual != *expected {
            writer.truncate(0).await?;
            if matches!(source, CopySource::Stream(_)) {
                return Err(Error::DigestMismatch {
                    reference: writer.status().await?.reference,
                    expected: expected.clone(),
                    actual,
                });
            }
            let copied = copy_from(writer, &mut source, 0, &mut buf).await?;
            short(copied, 0)?;
        }
    }
    match writer.commit(size, expected, labels).await {
        Err(err) if err.is_already_exists() => Ok(()),
        other => other,
    }
}

/// Copies what `source` has from `offset` on into `writer`; returns the
/// bytes copied.
async fn copy_from(
    writer: &mut dyn Writer,
    source: &mut CopySource<'_>,
    offset: u64,
    buf: &mut [u8],
) -> Result<u64> {
    Ok(match source {
        CopySource::Stream(reader) => {
            // What the stream has before `offset` is read anyway: hashed, it
            // says whether the ingest holds those very bytes.
            let held = match offset {
                0 => None,
                _ => Some(writer.digest().await?),
            };
            let mut prefix = match &held {
                Some(held) => Some(Digester::new(held.algorithm())?),
                None => None,
            };
            discard(*reader, offset, buf, &mut prefix).await?;
            if let (Some(held), Some(prefix)) = (held, prefix)
                && prefix.digest() != held
            {
                let reference = writer.status().await?.reference;
                writer.truncate(0).await?;
                return Err(Error::other(
                    ErrorKind::FailedPrecondition,
                    format!(
                        "ingest ref {reference:?}: the {offset} bytes it held are not this \
                         source's first {offset}; emptied, to start over on the next attempt"
                    ),
                ));
            }
            pump(*reader, writer, buf).await?
        }
        CopySource::Seekable(reader) => {
            reader
                .seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(Error::Source)?;
            pump(*reader, writer, buf).await?
        }
        CopySource::ReaderAt(reader) => {
            let mut offset = offset;
            let mut copied = 0;
            loop {
                let n = reader.read_at(offset, buf).await?;
                if n == 0 {
                    break copied;
                }
                writer.write_all(&buf[..n]).await.map_err(Error::from_io)?;
                offset += n as u64;
                copied += n as u64;
            }
        }
    })
}

/// Reads and drops `count` bytes; a source shorter than that is a short read.
async fn discard(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    count: u64,
    buf: &mut [u8],
    hashed: &mut Option<Digester>,
) -> Result<()> {
    let mut left = count;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = reader.read(&mut buf[..want]).await.map_err(Error::Source)?;
        if n == 0 {
            return Err(Error::ShortRead {
                expected: count,
                actual: count - left,
            });
        }
        if let Some(digester) = hashed {
            digester.update(&buf[..n]);
        }
        left -= n as u64;
    }
    Ok(())
}

async fn pump<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    writer: &mut dyn Writer,
    buf: &mut [u8],
) -> Result<u64> {
    let mut copied = 0;
    loop {
        let n = reader.read(buf).await.map_err(Error::Source)?;
        if n == 0 {
            return Ok(copied);
        }
        writer.write_all(&buf[..n]).await.map_err(Error::from_io)?;
        copied += n as u64;
    }
}

/// A sequential reader over `reader` from `offset` (for at most `len` bytes).
pub fn section_reader(reader: Box<dyn ReaderAt>, offset: u64, len: Option<u64>) -> ReaderAtStream {
    ReaderAtStream::with_range(reader, offset, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_to_full() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(100));
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }
}
