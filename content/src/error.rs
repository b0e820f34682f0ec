//! The crate's one error type and the kinds callers branch on.

use std::io;
use std::path::PathBuf;

use oci_spec::image::Digest;

/// `is_not_found`, `is_already_exists` and `is_unavailable`, answered from
/// `kind()`, for the error types of this workspace (each crate's `Error`,
/// `PullError`), so every one answers the same questions.
#[doc(hidden)]
#[macro_export]
macro_rules! kind_predicates {
    () => {
        /// True when `kind()` is `ErrorKind::NotFound`.
        pub fn is_not_found(&self) -> bool {
            self.kind() == $crate::ErrorKind::NotFound
        }

        /// True when `kind()` is `ErrorKind::AlreadyExists`.
        pub fn is_already_exists(&self) -> bool {
            self.kind() == $crate::ErrorKind::AlreadyExists
        }

        /// True when `kind()` is `ErrorKind::Unavailable` (worth trying
        /// again later).
        pub fn is_unavailable(&self) -> bool {
            self.kind() == $crate::ErrorKind::Unavailable
        }
    };
}

/// The question a caller asks of an error: is it missing, present, locked, ...?
///
/// The kinds follow containerd's `errdefs`, so code that ports containerd logic
/// (retry on `Unavailable`, treat `AlreadyExists` as success) reads the same.
/// [`ErrorKind::Io`] is ours: containerd would say `Unknown` or `Internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The blob, ingest or object does not exist.
    NotFound,
    /// The blob already exists; for a writer this usually means success.
    AlreadyExists,
    /// The resource is busy (an ingest ref locked by another writer); retry later.
    Unavailable,
    /// The request cannot proceed in the current state: size or digest mismatch,
    /// a closed writer, a blob over a size limit.
    FailedPrecondition,
    /// The caller's input is malformed.
    InvalidArgument,
    /// An I/O error from the filesystem or a source stream.
    Io,
    /// The input is valid but not supported (Docker schema 1 manifests, say).
    Unimplemented,
    /// No credentials, or ones refused (a registry's 401): log in.
    Unauthenticated,
    /// Credentials accepted, the operation not allowed to them (a registry's
    /// 403).
    PermissionDenied,
    /// Anything else (a bug, or a store-specific failure).
    Internal,
}

/// Errors from content stores and their helpers.
///
/// Every message about the store's own things names the one it is about
/// (ref, digest or path) and, for mismatches, gives the expected and actual
/// values. The caller's source is the caller's to name: [`Error::Source`]
/// and [`Error::ShortRead`] say only what went wrong reading it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No blob with this digest.
    #[error("content {digest}: not found")]
    BlobNotFound {
        /// The missing digest.
        digest: Digest,
    },
    /// No ingest with this ref.
    #[error("ingest ref {reference:?}: not found")]
    IngestNotFound {
        /// The missing ref.
        reference: String,
    },
    /// The blob is already in the store.
    #[error("content {digest}: already exists")]
    AlreadyExists {
        /// The digest that exists.
        digest: Digest,
    },
    /// Another writer (in this process or another) holds the ingest ref.
    #[error("ingest ref {reference:?}: locked by another writer")]
    Locked {
        /// The ref that is locked.
        reference: String,
    },
    /// A committed blob whose bytes are not what its digest says: its file
    /// went bad after the commit (a disk error, a hand edit, a copy cut
    /// short), found by [`verify_blob`](crate::verify_blob). Remove it and
    /// fetch it again.
    #[error("content {digest}: corrupt: {found}")]
    BlobCorrupt {
        /// The blob.
        digest: Digest,
        /// What its bytes are instead (`N bytes, not M`, or what they hash to).
        found: String,
    },
    /// The committed size is not the expected one.
    #[error("ingest ref {reference:?}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The ingest ref.
        reference: String,
        /// The size the caller expected.
        expected: u64,
        /// The size of the data written.
        actual: u64,
    },
    /// The committed digest is not the expected one.
    #[error("ingest ref {reference:?}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The ingest ref.
        reference: String,
        /// The digest the caller expected.
        expected: Digest,
        /// The digest of the data written.
        actual: Digest,
    },
    /// A write would go past the size declared when the writer was opened.
    #[error("ingest ref {reference:?}: write past the expected size of {expected} bytes")]
    WritePastSize {
        /// The ingest ref.
        reference: String,
        /// The declared size.
        expected: u64,
    },
    /// A blob is larger than the caller's limit.
    #[error("content {digest}: {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The caller's limit.
        limit: u64,
    },
    /// A source ended before the expected number of bytes.
    #[error("short read: expected {expected} bytes, got {actual}")]
    ShortRead {
        /// Bytes expected from the source.
        expected: u64,
        /// Bytes the source produced.
        actual: u64,
    },
    /// The writer was committed or closed; open a new one to continue.
    #[error("ingest ref {reference:?}: writer is closed")]
    Closed {
        /// The ingest ref.
        reference: String,
    },
    /// Malformed input: a bad ref, filter, label or unsupported digest algorithm.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A filesystem operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`open`, `rename`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading a caller's source stream failed.
    #[error("read source")]
    Source(#[source] io::Error),
    /// An error from another layer (a remote pusher, a user's store) with its kind.
    ///
    /// Its message is the wrapped error's with that error's causes: it adds
    /// only the kind, so the wrapped error is not repeated as a cause. Match
    /// the variant to downcast it.
    #[error("{}", Report::new(&**error))]
    Other {
        /// How callers should treat it.
        kind: ErrorKind,
        /// The wrapped error.
        error: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// An error and its causes on one line, separated by `": "`, as a person
/// reads it: `open /var/lib/x: No such file or directory (os error 2)`.
///
/// The errors of this workspace say what failed and leave the cause to
/// [`source`](std::error::Error::source), as Rust's error guidelines ask,
/// so that `anyhow`'s and `tracing`'s chains print each cause once; `{e}`
/// alone is therefore only the outermost step. Print an error for people
/// through this. A cause whose text already ends what was written (an
/// error of another library that puts its cause in its own message too)
/// is not written again.
///
/// ```
/// use ocidist_content::{Error, Report};
/// let e = Error::io(
///     "open",
///     "/no/such/file",
///     std::io::Error::from(std::io::ErrorKind::NotFound),
/// );
/// assert_eq!(e.to_string(), "open /no/such/file");
/// assert_eq!(Report::new(&e).to_string(), "open /no/such/file: entity not found");
/// ```
#[derive(Clone, Copy)]
pub struct Report<'a> {
    error: &'a (dyn std::error::Error + 'static),
}

impl<'a> Report<'a> {
    /// The report of `error` and its causes.
    pub fn new(error: &'a (dyn std::error::Error + 'static)) -> Self {
        Report { error }
    }
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut written = self.error.to_string();
        let mut cause = self.error.source();
        while let Some(next) = cause {
            let text = next.to_string();
            if !text.is_empty() && !written.ends_with(&text) {
                written.push_str(": ");
                written.push_str(&text);
            }
            cause = next.source();
        }
        f.pad(&written)
    }
}

impl std::fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The kind of this error, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::BlobNotFound { .. } | Error::IngestNotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::Locked { .. } => ErrorKind::Unavailable,
            Error::SizeMismatch { .. }
            | Error::DigestMismatch { .. }
            | Error::BlobCorrupt { .. }
            | Error::WritePastSize { .. }
            | Error::TooLarge { .. }
            | Error::Closed { .. } => ErrorKind::FailedPrecondition,
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Io { .. } | Error::Source(_) | Error::ShortRead { .. } => ErrorKind::Io,
            Error::Other { kind, .. } => *kind,
        }
    }

    crate::kind_predicates!();

    /// Wraps an error from another layer, keeping the kind callers should see.
    pub fn other(
        kind: ErrorKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Other {
            kind,
            error: error.into(),
        }
    }

    /// An I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Recovers a content error that travelled through an `io::Error`
    /// (writers are `AsyncWrite`, whose methods can only return `io::Error`).
    pub fn from_io(err: io::Error) -> Self {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            match err.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(inner)) => return *inner,
                _ => unreachable!("checked that the inner error is a content::Error"),
            }
        }
        Error::Source(err)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        let kind = match err.kind() {
            ErrorKind::NotFound => io::ErrorKind::NotFound,
            ErrorKind::AlreadyExists => io::ErrorKind::AlreadyExists,
            ErrorKind::Unavailable => io::ErrorKind::WouldBlock,
            ErrorKind::InvalidArgument => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_error_survives_a_trip_through_io_error() {
        let err = Error::Locked {
            reference: "r".into(),
        };
        let io_err: io::Error = err.into();
        assert_eq!(io_err.kind(), io::ErrorKind::WouldBlock);
        let back = Error::from_io(io_err);
        assert!(back.is_unavailable(), "{back}");
    }

    #[test]
    fn plain_io_error_becomes_source_error() {
        let back = Error::from_io(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        assert_eq!(back.kind(), ErrorKind::Io);
        assert_eq!(back.to_string(), "read source");
        assert_eq!(Report::new(&back).to_string(), "read source: eof");
    }

    /// Rust's rule for error chains: a cause is in the message or in
    /// `source()`, never both, so a chain printer prints it once.
    #[test]
    fn every_cause_is_printed_once() {
        let io = || io::Error::new(io::ErrorKind::PermissionDenied, "no way in");
        let errors = [
            (Error::io("open", "/x", io()), "open /x: no way in"),
            (Error::Source(io()), "read source: no way in"),
            (
                Error::other(ErrorKind::Unavailable, "the store is busy"),
                "the store is busy",
            ),
            (
                Error::other(ErrorKind::Io, Error::io("open", "/x", io())),
                "open /x: no way in",
            ),
            (
                Error::from_io(io::Error::from(Error::io("open", "/x", io()))),
                "open /x: no way in",
            ),
        ];
        for (e, report) in &errors {
            let mut texts = vec![e.to_string()];
            let mut cause = std::error::Error::source(e);
            while let Some(next) = cause {
                texts.push(next.to_string());
                cause = next.source();
            }
            for pair in texts.windows(2) {
                assert!(!pair[0].contains(&pair[1]), "{texts:?}");
            }
            assert_eq!(texts.join(": "), *report);
            assert_eq!(Report::new(e).to_string(), *report);
        }
    }

    #[test]
    fn a_report_skips_a_cause_its_error_already_printed() {
        #[derive(Debug)]
        struct Embeds(io::Error);
        impl std::fmt::Display for Embeds {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "fetch: {}", self.0)
            }
        }
        impl std::error::Error for Embeds {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Error::other(ErrorKind::Io, Embeds(io::Error::other("reset")));
        assert_eq!(Report::new(&e).to_string(), "fetch: reset");
    }
}
