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
    /// From image handling (manifests, handlers, the image store).
    #[error(transparent)]
    Images(#[from] ocidist_images::Error),
    /// The registry could not be reached, or the connection broke.
    #[error("{url}: {source}")]
    Connect {
        /// What was being requested.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("{method} {url}: {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// The request method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The start of the response body (registries explain errors there).
        body: String,
    },
    /// The registry's bytes or headers contradict what was asked for.
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The kind of this error, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. } => ErrorKind::InvalidArgument,
            Error::Content(e) => e.kind(),
            Error::Images(e) => e.kind(),
            Error::Connect { .. } => ErrorKind::Unavailable,
            Error::Status { status, .. } => match status.as_u16() {
                404 => ErrorKind::NotFound,
                400 | 405 | 415 => ErrorKind::InvalidArgument,
                401 | 403 => ErrorKind::FailedPrecondition,
                408 | 429 | 500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Error::Protocol { .. } => ErrorKind::FailedPrecondition,
        }
    }
}
