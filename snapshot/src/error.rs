//! The crate's one error type and the kinds callers branch on.

use std::io;
use std::path::PathBuf;

pub use ocidist_content::ErrorKind;

/// Errors from snapshotters, layer apply and unpack.
///
/// Messages name the snapshot key, path or digest they are about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No snapshot with this key.
    #[error("snapshot {key:?}: not found")]
    NotFound {
        /// The missing key.
        key: String,
    },
    /// A snapshot (active, view or committed) already uses this key.
    #[error("snapshot {key:?}: already exists")]
    AlreadyExists {
        /// The key in use.
        key: String,
    },
    /// The operation does not fit the snapshot's state: committing a
    /// committed snapshot, removing a parent, preparing on an active parent.
    #[error("snapshot {key:?}: {reason}")]
    FailedPrecondition {
        /// The snapshot.
        key: String,
        /// Why the operation cannot proceed.
        reason: String,
    },
    /// Malformed input: an empty key, a bad filter, a tar entry with `..`.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The layer's diff ID is not the one the image config lists.
    #[error("layer {layer}: diff ID mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch {
        /// The layer blob.
        layer: String,
        /// The diff ID in the image config.
        expected: String,
        /// The sha256 of the uncompressed tar we applied.
        actual: String,
    },
    /// The operation is not supported here (rebasing a native snapshot, a
    /// compression we do not know).
    #[error("unsupported: {0}")]
    Unimplemented(String),
    /// A filesystem or system-call failure, of kind [`ErrorKind::Io`]
    /// whatever the cause (a missing file included).
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`mkdir`, `mount`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The layer stream was not a valid (compressed) tar.
    #[error("layer: {0}")]
    Layer(String),
    /// The metadata database failed.
    #[error("snapshot metadata: {0}")]
    Metadata(String),
    /// An error from the content store.
    #[error(transparent)]
    Content(Box<ocidist_content::Error>),
    /// An error from reading an image (manifest, config).
    #[error(transparent)]
    Images(Box<ocidist_images::Error>),
    /// An error from a caller's snapshotter or provider, with the kind
    /// callers should see.
    ///
    /// Its message is the wrapped error's with that error's causes (see
    /// [`ocidist_content::Report`]): it adds only the kind. Match the
    /// variant to downcast it.
    #[error("{}", ocidist_content::Report::new(&**error))]
    Other {
        /// How callers should treat it.
        kind: ErrorKind,
        /// The wrapped error.
        error: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl From<ocidist_content::Error> for Error {
    fn from(e: ocidist_content::Error) -> Self {
        Error::Content(Box::new(e))
    }
}

impl From<ocidist_images::Error> for Error {
    fn from(e: ocidist_images::Error) -> Self {
        Error::Images(Box::new(e))
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The kind of this error, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            Error::FailedPrecondition { .. } | Error::DiffIdMismatch { .. } => {
                ErrorKind::FailedPrecondition
            }
            Error::InvalidArgument(_) | Error::Layer(_) => ErrorKind::InvalidArgument,
            Error::Unimplemented(_) => ErrorKind::Unimplemented,
            // Even a missing file: NotFound says a snapshot (or content) is
            // missing, which a caller may go and make; a path gone from
            // under the store is no such thing (nor is it in containerd).
            Error::Io { .. } | Error::Metadata(_) => ErrorKind::Io,
            Error::Content(e) => e.kind(),
            Error::Images(e) => e.kind(),
            Error::Other { kind, .. } => *kind,
        }
    }

    /// Wraps a caller's error (a snapshotter of its own, say) with the
    /// kind callers should see.
    ///
    /// ```
    /// use ocidist_snapshot::{Error, ErrorKind};
    /// let e = Error::other(ErrorKind::Unavailable, "the btrfs pool is being balanced");
    /// assert_eq!(e.kind(), ErrorKind::Unavailable);
    /// assert_eq!(e.to_string(), "the btrfs pool is being balanced");
    /// ```
    pub fn other(
        kind: ErrorKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Other {
            kind,
            error: error.into(),
        }
    }

    ocidist_content::kind_predicates!();

    /// An I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// Names the layer blob a malformed-layer error came from.
    pub(crate) fn in_layer(self, layer: &ocidist_content::Digest) -> Self {
        match self {
            Error::Layer(msg) => Error::Layer(format!("{layer}: {msg}")),
            Error::InvalidArgument(msg) => Error::InvalidArgument(format!("layer {layer}: {msg}")),
            other => other,
        }
    }

    pub(crate) fn precondition(key: &str, reason: impl Into<String>) -> Self {
        Error::FailedPrecondition {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_snapshot_is_not_found_not_a_missing_file() {
        let gone = Error::io("open", "/store/snapshots/7/fs", io::ErrorKind::NotFound);
        assert_eq!(gone.kind(), ErrorKind::Io);
        let missing = Error::NotFound { key: "k".into() };
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }
}
