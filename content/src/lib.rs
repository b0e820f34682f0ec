//! A content-addressed store that never lies, with containerd's content API.
//!
//! A *blob* in a store is complete and verified: it is named by its digest and
//! its bytes hash to that digest. Anything not yet verified is an *ingest*: bytes
//! written under a caller-chosen *ref*, which can be resumed (after a crash, a
//! cancelled download, a killed process), truncated, aborted, or committed. Commit
//! checks size and digest and only then moves the data into place.
//!
//! The API is four small traits, as in containerd:
//!
//! | trait | does |
//! |---|---|
//! | [`Provider`] | opens a blob for random-access reading ([`ReaderAt`]) |
//! | [`Ingester`] | opens a [`Writer`] for a ref, resuming where it stopped |
//! | [`Manager`] | info, label updates, walk, delete of blobs |
//! | [`IngestManager`] | status, list and abort of ingests |
//!
//! [`Store`] is all four. Conveniences built only on the traits live in
//! [`helpers`] ([`read_blob`], [`write_blob`], [`open_writer`], [`copy`]) and
//! [`ProviderExt`]. The filesystem implementation is [`local::LocalStore`].
//!
//! ```
//! use ocidist_content::{local::LocalStore, read_blob, sha256_of, write_blob, Labels, WriterOpts};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LocalStore::open(dir.path())?;
//!
//! let data = b"hello, blob";
//! let digest = sha256_of(data);
//! let opts = WriterOpts::new("example-ref").size(data.len() as u64).digest(digest.clone());
//! write_blob(&store, opts, &data[..], Labels::new()).await?;
//!
//! let desc = ocidist_content::descriptor(digest.clone(), data.len() as u64);
//! assert_eq!(read_blob(&store, &desc, 1 << 20).await?, data);
//! assert!(store.blob_path(&digest).exists());
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::SystemTime;

/// The attribute this crate's traits are declared and implemented with,
/// re-exported so that a store of your own needs no dependency of its own
/// for it: `#[ocidist_content::async_trait]`.
pub use async_trait::async_trait;
/// The OCI types this API speaks (descriptors, manifests, platforms), at the
/// version it was built with, for callers that build images.
pub use oci_spec;
pub use oci_spec::image::{Descriptor, Digest, DigestAlgorithm, MediaType};
use tokio::io::{AsyncRead, AsyncWrite};

mod digester;
mod error;
pub mod filters;
pub mod helpers;
pub mod lease;
pub mod local;
mod reader;
mod sha256_pair;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use digester::{Digester, digest_of, sha256_of};
pub use error::{Error, ErrorKind, Report, Result};
pub use helpers::{CopySource, copy, open_writer, read_blob, verify_blob, write_blob};
pub use reader::ReaderAtStream;

/// Labels on a blob: free-form key/value pairs, such as containerd's
/// `containerd.io/gc.ref.content.*` references used by garbage collection.
/// A key with an empty value is not stored: setting a label to `""` removes
/// it, as in containerd.
pub type Labels = BTreeMap<String, String>;

/// What a store knows about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was committed.
    pub created_at: SystemTime,
    /// When its labels last changed (the commit time if never).
    pub updated_at: SystemTime,
    /// Its labels.
    pub labels: Labels,
}

/// The state of an ingest: how far a ref has been written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The ingest ref.
    pub reference: String,
    /// Bytes written so far.
    pub offset: u64,
    /// The size declared when the writer was opened, if any.
    pub total: Option<u64>,
    /// The digest declared when the writer was opened, if any.
    pub expected: Option<Digest>,
    /// When the ingest was first opened; unchanged by resumes.
    pub started_at: SystemTime,
    /// When bytes were last written.
    pub updated_at: SystemTime,
}

/// How to open a writer: the ref, and optional predeclared size and digest.
///
/// A predeclared digest that is already in the store makes [`Ingester::writer`]
/// fail with [`ErrorKind::AlreadyExists`] before any byte is sent; a predeclared
/// size bounds the writes and both are checked at commit when the commit call
/// does not give its own. They go with this open only: a writer that resumes
/// an ingest declares again, or commits with no expectation but its own call's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterOpts {
    /// The ingest ref: any non-empty string; the same ref resumes the same ingest.
    pub reference: String,
    /// The expected size, if known.
    pub size: Option<u64>,
    /// The expected digest, if known; its algorithm is the one the writer hashes with.
    pub digest: Option<Digest>,
}

impl WriterOpts {
    /// Options for `reference`, with nothing predeclared.
    pub fn new(reference: impl Into<String>) -> Self {
        WriterOpts {
            reference: reference.into(),
            size: None,
            digest: None,
        }
    }

    /// Predeclares the size.
    pub fn size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    /// Predeclares the digest.
    pub fn digest(mut self, digest: Digest) -> Self {
        self.digest = Some(digest);
        self
    }

    /// Predeclares the digest of `desc`, and its size unless that is 0 for
    /// a blob that is not empty: containerd reads a size of 0 as unknown,
    /// so code that passes a descriptor with only a digest still writes.
    ///
    /// ```
    /// use ocidist_content::{descriptor, sha256_of, WriterOpts};
    /// let known = WriterOpts::new("r").descriptor(&descriptor(sha256_of(b"abc"), 3));
    /// assert_eq!(known.size, Some(3));
    /// let digest_only = WriterOpts::new("r").descriptor(&descriptor(sha256_of(b"abc"), 0));
    /// assert_eq!(digest_only.size, None);
    /// let empty = WriterOpts::new("r").descriptor(&descriptor(sha256_of(b""), 0));
    /// assert_eq!(empty.size, Some(0));
    /// ```
    pub fn descriptor(self, desc: &Descriptor) -> Self {
        let digest = desc.digest();
        let size_known = desc.size() != 0
            || digest_of(digest.algorithm(), b"").is_ok_and(|empty| empty == *digest);
        let opts = self.digest(digest.clone());
        if size_known {
            opts.size(desc.size())
        } else {
            opts
        }
    }
}

/// Random-access reads of one blob.
///
/// Reads past the end return only the bytes that exist (`Ok(0)` at or after the end).
#[async_trait]
pub trait ReaderAt: Send + Sync {
    /// The blob's size.
    fn size(&self) -> u64;

    /// Reads into `buf` from `offset`; returns the number of bytes read, which is
    /// short only at the end of the blob.
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// A sequential reader over the whole blob. Stores without a native stream
    /// return `Box::pin(ReaderAtStream::new(self))`, which adapts
    /// [`read_at`](Self::read_at).
    fn into_async_read(self: Box<Self>) -> Pin<Box<dyn AsyncRead + Send>>;
}

/// Opens blobs for reading.
///
/// ```
/// use ocidist_content::{local::LocalStore, sha256_of, write_blob, Labels, Provider, WriterOpts};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = LocalStore::open(dir.path())?;
/// let data = b"0123456789";
/// let digest = sha256_of(data);
/// write_blob(&store, WriterOpts::new("r").digest(digest.clone()), &data[..], Labels::new()).await?;
///
/// // Random access: four bytes from offset 3; reads stop at the end.
/// let reader = store.reader_at(&ocidist_content::descriptor(digest, 10)).await?;
/// let mut buf = [0; 4];
/// assert_eq!(reader.read_at(3, &mut buf).await?, 4);
/// assert_eq!(&buf, b"3456");
/// assert_eq!(reader.read_at(8, &mut buf).await?, 2);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Provider: Send + Sync {
    /// A random-access reader for the blob `desc` names (only its digest is used
    /// by a local store). Missing: [`ErrorKind::NotFound`].
    async fn reader_at(&self, desc: &Descriptor) -> Result<Box<dyn ReaderAt>>;
}

/// Conveniences on every [`Provider`].
#[async_trait]
pub trait ProviderExt: Provider {
    /// A sequential reader over the blob `desc` names.
    async fn reader(&self, desc: &Descriptor) -> Result<Pin<Box<dyn AsyncRead + Send>>> {
        Ok(self.reader_at(desc).await?.into_async_read())
    }
}

impl<P: Provider + ?Sized> ProviderExt for P {}

/// Opens writers for ingests.
///
/// A download that stops (a dropped writer, a killed process) resumes from
/// what the ingest holds:
///
/// ```
/// use ocidist_content::{local::LocalStore, sha256_of, Ingester, Labels, WriterOpts};
/// use tokio::io::AsyncWriteExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = LocalStore::open(dir.path())?;
/// let data = b"a layer, downloaded in two goes";
/// let opts = WriterOpts::new("layer-1").size(data.len() as u64).digest(sha256_of(data));
///
/// let mut first = store.writer(opts.clone()).await?;
/// first.write_all(&data[..8]).await?;
/// // The connection broke: keep what came. (A dropped writer saves it in the
/// // background, holding the ref until then; a killed process, up to its
/// // last checkpoint.)
/// first.shutdown().await?;
///
/// let mut again = store.writer(opts).await?;
/// let offset = again.status().await?.offset as usize;
/// assert_eq!(offset, 8);
/// again.write_all(&data[offset..]).await?;
/// again.commit(None, None, Labels::new()).await?; // size and digest checked
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Ingester: Send + Sync {
    /// Opens (or resumes) the ingest `opts.reference`. A resume that
    /// predeclares another size or digest than the ingest has may start it
    /// over (the local store does; containerd's rebuilds the ingest only for
    /// another size, and keeps the data), and so may one
    /// that finds the data changed since it was written (the local store
    /// does): check [`Writer::status`] for the offset to write from.
    ///
    /// Fails with [`ErrorKind::Unavailable`] when another writer holds the ref,
    /// and with [`ErrorKind::AlreadyExists`] when the predeclared digest is
    /// already committed.
    async fn writer(&self, opts: WriterOpts) -> Result<Box<dyn Writer>>;
}

/// Bytes on their way into the store under one ref.
///
/// Write with [`tokio::io::AsyncWriteExt`]. Dropping the writer, or `shutdown()`,
/// without a commit keeps the ingest for a later resume and releases the ref.
/// `shutdown().await` releases it before it returns; a writer that is only
/// dropped may release it in the background (the local store's saves its
/// last buffer first), so code ported from Go, whose `Close` is synchronous,
/// should shut down before it reopens the ref, or reopen with
/// [`open_writer`], which waits for a ref in use.
///
/// ```
/// use ocidist_content::{local::LocalStore, sha256_of, ErrorKind, Ingester, Labels, WriterOpts};
/// use tokio::io::AsyncWriteExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = LocalStore::open(dir.path())?;
/// let mut writer = store.writer(WriterOpts::new("config-1")).await?;
/// writer.write_all(b"wrong bytes").await?;
/// // Bytes that do not hash to the digest expected are never committed...
/// let want = sha256_of(b"{}");
/// let err = writer.commit(None, Some(&want), Labels::new()).await.unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
///
/// // ...and the ingest starts again from nothing with `truncate(0)`.
/// let mut writer = store.writer(WriterOpts::new("config-1")).await?;
/// writer.truncate(0).await?;
/// writer.write_all(b"{}").await?;
/// assert_eq!(writer.digest().await?, want);
/// writer.commit(None, Some(&want), Labels::new()).await?;
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Writer: AsyncWrite + Send + Unpin {
    /// The ingest's status, including bytes written but not yet flushed.
    async fn status(&mut self) -> Result<Status>;

    /// The running digest of every byte written so far; after a commit,
    /// the blob's (the local store's writer also after a commit that found
    /// the blob already there, so a caller that wrote content of unknown
    /// digest learns which it was).
    async fn digest(&mut self) -> Result<Digest>;

    /// Verifies and commits the data as a blob.
    ///
    /// `size` and `expected` default to the values this writer's open
    /// predeclared (not an earlier open's of the same ref). On a
    /// size or digest mismatch the error is [`ErrorKind::FailedPrecondition`]
    /// and the ingest keeps its data; if the digest is already in the store the
    /// error is [`ErrorKind::AlreadyExists`] and the ingest is removed. Either
    /// way the writer is closed afterwards and the ref released.
    async fn commit(
        &mut self,
        size: Option<u64>,
        expected: Option<&Digest>,
        labels: Labels,
    ) -> Result<()>;

    /// Drops the data past `size` (0: start again with empty data and hash).
    async fn truncate(&mut self, size: u64) -> Result<()>;
}

/// Manages committed blobs.
///
/// ```
/// use ocidist_content::{local::LocalStore, sha256_of, write_blob, Labels, Manager, WriterOpts};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = LocalStore::open(dir.path())?;
/// let digest = sha256_of(b"kept");
/// write_blob(&store, WriterOpts::new("r").digest(digest.clone()), &b"kept"[..], Labels::new()).await?;
///
/// // Set one label, leaving any others as they are.
/// let mut info = store.info(&digest).await?;
/// info.labels.insert("containerd.io/gc.root".into(), "2026-11-24".into());
/// store.update(info, &["labels.containerd.io/gc.root"]).await?;
///
/// let mut roots = Vec::new();
/// store.walk(&["labels.\"containerd.io/gc.root\""], &mut |info| {
///     roots.push(info.digest);
///     Ok(())
/// }).await?;
/// assert_eq!(roots, [digest.clone()]);
///
/// store.delete(&digest).await?;
/// assert!(store.info(&digest).await.unwrap_err().is_not_found());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait Manager: Send + Sync {
    /// What the store knows about `digest`. Missing: [`ErrorKind::NotFound`].
    async fn info(&self, digest: &Digest) -> Result<Info>;

    /// Updates the labels of `info.digest`.
    ///
    /// With no `fieldpaths` the labels are replaced by `info.labels`; with
    /// `labels` likewise; with `labels.KEY` only that key is set from
    /// `info.labels` (or removed if absent there). A label whose value is
    /// empty is removed, as containerd does. Returns the new info.
    async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info>;

    /// Calls `f` for every blob matching any of `filters` (all blobs if empty).
    /// See [`filters`] for the syntax: `digest==sha256:…`, `labels.KEY==VALUE`, …
    async fn walk(
        &self,
        filters: &[&str],
        f: &mut (dyn FnMut(Info) -> Result<()> + Send),
    ) -> Result<()>;

    /// Deletes a blob. Missing: [`ErrorKind::NotFound`].
    async fn delete(&self, digest: &Digest) -> Result<()>;
}

/// Manages ingests in progress.
///
/// ```
/// use ocidist_content::{local::LocalStore, IngestManager, Ingester, WriterOpts};
/// use tokio::io::AsyncWriteExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let store = LocalStore::open(dir.path())?;
/// let mut writer = store.writer(WriterOpts::new("layer-sha256:abc").size(100)).await?;
/// writer.write_all(&[0; 40]).await?;
/// writer.shutdown().await?;
///
/// let active = store.list_statuses(&["ref==layer-sha256:abc"]).await?;
/// assert_eq!((active[0].offset, active[0].total), (40, Some(100)));
/// store.abort("layer-sha256:abc").await?;
/// assert!(store.list_statuses(&[]).await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait IngestManager: Send + Sync {
    /// The status of the ingest `reference`. Missing: [`ErrorKind::NotFound`].
    ///
    /// Its offset counts the bytes the ingest holds; a writer open in
    /// another task may hold more in its buffer (the local store's, up to
    /// 4 MiB), which [`Writer::status`] counts.
    async fn status(&self, reference: &str) -> Result<Status>;

    /// The statuses of the ingests matching any of `filters` (all if empty);
    /// fields are `ref`, `offset`, `total` and `expected`.
    async fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>>;

    /// Removes the ingest and its data. Missing: [`ErrorKind::NotFound`];
    /// held by a writer: [`ErrorKind::Unavailable`].
    async fn abort(&self, reference: &str) -> Result<()>;

    /// A reader of the bytes written so far into the ingest `reference`, for
    /// consumers that start on a blob before it is committed (an unpack
    /// overlapping its fetch). It also sees later writes: `size()` is the
    /// length when opened, and `read_at` past it returns whatever exists by
    /// then. The bytes are unverified until the commit. Missing:
    /// [`ErrorKind::NotFound`]; stores that cannot do this return
    /// [`ErrorKind::Unimplemented`], the default.
    async fn ingest_reader_at(&self, reference: &str) -> Result<Box<dyn ReaderAt>> {
        Err(Error::other(
            ErrorKind::Unimplemented,
            format!("ingest ref {reference:?}: this store cannot read ingests in progress"),
        ))
    }

    /// Whether a writer holds the ingest `reference` now, in this process or
    /// another, so that [`abort`](Self::abort) would answer
    /// [`ErrorKind::Unavailable`]. A dry run of a collection asks, to report
    /// what a real one would do. The answer may change as soon as it is
    /// given. Missing: [`ErrorKind::NotFound`]; stores that cannot tell
    /// return [`ErrorKind::Unimplemented`], the default.
    async fn is_being_written(&self, reference: &str) -> Result<bool> {
        Err(Error::other(
            ErrorKind::Unimplemented,
            format!("ingest ref {reference:?}: this store cannot tell whether it is being written"),
        ))
    }
}

/// Forwards the traits through references and shared pointers, so a store can
/// be lent (`&store`) or shared (`Arc<store>`) wherever one is expected.
macro_rules! forward_store_traits {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Provider + ?Sized> Provider for $ptr {
            async fn reader_at(&self, desc: &Descriptor) -> Result<Box<dyn ReaderAt>> {
                (**self).reader_at(desc).await
            }
        }

        #[async_trait]
        impl<T: Ingester + ?Sized> Ingester for $ptr {
            async fn writer(&self, opts: WriterOpts) -> Result<Box<dyn Writer>> {
                (**self).writer(opts).await
            }
        }

        #[async_trait]
        impl<T: Manager + ?Sized> Manager for $ptr {
            async fn info(&self, digest: &Digest) -> Result<Info> {
                (**self).info(digest).await
            }
            async fn update(&self, info: Info, fieldpaths: &[&str]) -> Result<Info> {
                (**self).update(info, fieldpaths).await
            }
            async fn walk(
                &self,
                filters: &[&str],
                f: &mut (dyn FnMut(Info) -> Result<()> + Send),
            ) -> Result<()> {
                (**self).walk(filters, f).await
            }
            async fn delete(&self, digest: &Digest) -> Result<()> {
                (**self).delete(digest).await
            }
        }

        #[async_trait]
        impl<T: IngestManager + ?Sized> IngestManager for $ptr {
            async fn status(&self, reference: &str) -> Result<Status> {
                (**self).status(reference).await
            }
            async fn list_statuses(&self, filters: &[&str]) -> Result<Vec<Status>> {
                (**self).list_statuses(filters).await
            }
            async fn abort(&self, reference: &str) -> Result<()> {
                (**self).abort(reference).await
            }
            async fn ingest_reader_at(&self, reference: &str) -> Result<Box<dyn ReaderAt>> {
                (**self).ingest_reader_at(reference).await
            }
            async fn is_being_written(&self, reference: &str) -> Result<bool> {
                (**self).is_being_written(reference).await
            }
        }
    )*};
}

forward_store_traits!(&T, std::sync::Arc<T>, Box<T>);

/// A complete content store: every trait above.
pub trait Store: Provider + Ingester + Manager + IngestManager {}

impl<T: Provider + Ingester + Manager + IngestManager + ?Sized> Store for T {}

/// A descriptor for a blob known only by digest and size (media type
/// `application/octet-stream`), for calls that take a [`Descriptor`].
pub fn descriptor(digest: Digest, size: u64) -> Descriptor {
    Descriptor::new(
        MediaType::Other("application/octet-stream".into()),
        size,
        digest,
    )
}
