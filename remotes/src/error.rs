//! The crate's error type; its kinds are the content crate's.

pub use ocidist_content::ErrorKind;

/// Errors from references, registries and transfers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference that does not parse; the message quotes it.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// The input as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// From the content store.
    #[error(transparent)]
    Content(#[from] ocidist_content::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The kind of this error, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. } => ErrorKind::InvalidArgument,
            Error::Content(e) => e.kind(),
        }
    }
}
