//! The crate's error type; its kinds are the content crate's.

use oci_spec::image::Digest;
pub use ocidist_content::ErrorKind;

/// Errors from handlers, manifest decoding, platforms and the image store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// From the content store (reading a manifest, updating labels, ...).
    #[error(transparent)]
    Content(#[from] ocidist_content::Error),
    /// A Docker schema 1 manifest, which is deprecated and not supported.
    #[error(
        "{digest}: Docker schema 1 manifests are not supported ({media_type}); convert the image to schema 2 or OCI"
    )]
    Schema1 {
        /// The manifest.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// A manifest or index over the size limit, refused before it is read.
    #[error("{digest}: {media_type} of {size} bytes is over the limit of {limit} bytes")]
    ManifestTooLarge {
        /// The document.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A document that cannot be trusted: bad JSON, or fields that contradict
    /// its media type (the ambiguous-manifest attack).
    #[error("{digest}: invalid {media_type}: {reason}")]
    InvalidDocument {
        /// The document.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// What is wrong.
        reason: String,
    },
    /// No manifest in an index matches the platform.
    #[error("{digest}: no manifest for {platform}")]
    NoMatchingManifest {
        /// The index.
        digest: Digest,
        /// The platform asked for.
        platform: String,
    },
    /// A platform specifier that does not parse.
    #[error("invalid platform {input:?}: {reason}")]
    InvalidPlatform {
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// No image with this name.
    #[error("image {name:?}: not found")]
    ImageNotFound {
        /// The name.
        name: String,
    },
    /// The image points at another target than the one a compare-and-delete
    /// expected ([`ErrorKind::NotFound`], as containerd's `DeleteTarget`).
    #[error("image {name:?} has target {current}, not {expected}")]
    ImageTargetMoved {
        /// The name.
        name: String,
        /// What it points at (boxed, as the next: keeps the error small).
        current: Box<Digest>,
        /// What the caller expected.
        expected: Box<Digest>,
    },
    /// An image with this name exists already.
    #[error("image {name:?}: already exists")]
    ImageExists {
        /// The name.
        name: String,
    },
    /// Malformed input (an image without a name, a bad filter, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An error from a caller's handler, with the kind to report.
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

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The kind of this error, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Content(e) => e.kind(),
            Error::Schema1 { .. } => ErrorKind::Unimplemented,
            Error::ManifestTooLarge { .. } => ErrorKind::FailedPrecondition,
            Error::InvalidDocument { .. }
            | Error::InvalidPlatform { .. }
            | Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NoMatchingManifest { .. }
            | Error::ImageNotFound { .. }
            | Error::ImageTargetMoved { .. } => ErrorKind::NotFound,
            Error::ImageExists { .. } => ErrorKind::AlreadyExists,
            Error::Other { kind, .. } => *kind,
        }
    }

    ocidist_content::kind_predicates!();

    /// Wraps a caller's error with the kind callers should see.
    pub fn other(
        kind: ErrorKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Other {
            kind,
            error: error.into(),
        }
    }
}
