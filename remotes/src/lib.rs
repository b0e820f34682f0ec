//! Resolve, fetch and push images over the OCI distribution API.
//!
//! Three small traits, as in containerd: a [`Resolver`] turns a reference into
//! the descriptor it names and hands out a [`Fetcher`] (blob and manifest
//! bytes, from an offset) and a [`Pusher`] (a content [`Writer`] per
//! descriptor, so pushing is ingesting). [`docker::DockerResolver`] speaks the
//! Docker registry v2 / OCI distribution API. Behind the `testkit` feature,
//! the `testkit` module runs the real CNCF registry on loopback for tests.
//!
//! [`fetch_image`] runs the resumable fetch pipeline (parallel, a ref per
//! blob so a restarted fetch resumes mid-layer), [`push_image`] pushes an
//! image children first, mounting blobs from other repositories of the same
//! registry where a fetch recorded their [`source`].
//!
//! ```
//! use futures::TryStreamExt;
//! use ocidist_content::{sha256_of, Descriptor, Labels, MediaType};
//! use ocidist_remotes::{docker::DockerResolver, testkit::Registry, Resolver};
//! use tokio::io::AsyncWriteExt;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The real CNCF registry on loopback (`apt-get install docker-registry`).
//! let registry = Registry::start()?;
//! let resolver = DockerResolver::new();
//! let reference = format!("{}/demo/app:1", registry.host());
//!
//! // Pushing is ingesting: a writer per descriptor, verified at commit.
//! let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
//! let config = (Descriptor::new(MediaType::ImageConfig, config.len() as u64, sha256_of(config)), &config[..]);
//! let manifest = serde_json::json!({
//!     "schemaVersion": 2,
//!     "mediaType": "application/vnd.oci.image.manifest.v1+json",
//!     "config": config.0,
//!     "layers": [],
//! })
//! .to_string();
//! let manifest_desc =
//!     Descriptor::new(MediaType::ImageManifest, manifest.len() as u64, sha256_of(manifest.as_bytes()));
//! let pusher = resolver.pusher(&reference).await?;
//! for (desc, bytes) in [config, (manifest_desc.clone(), manifest.as_bytes())] {
//!     let mut writer = pusher.push(&desc).await?;
//!     writer.write_all(bytes).await?;
//!     writer.commit(None, None, Labels::new()).await?;
//! }
//!
//! // The tag resolves to the manifest; its bytes come back unchanged.
//! let (name, desc) = resolver.resolve(&reference).await?;
//! assert_eq!(desc.digest(), manifest_desc.digest());
//! let fetcher = resolver.fetcher(&name).await?;
//! let fetched = fetcher
//!     .fetch(&desc, 0)
//!     .await?
//!     .try_fold(Vec::new(), |mut all, bytes| async move {
//!         all.extend_from_slice(&bytes);
//!         Ok(all)
//!     })
//!     .await?;
//! assert_eq!(fetched, manifest.as_bytes());
//! # Ok(())
//! # }
//! ```

use std::pin::Pin;

use oci_spec::image::Descriptor;
use ocidist_content::{Provider, Writer};

pub mod docker;
mod error;
pub mod fetch;
pub mod push;
pub mod reference;
pub mod source;
mod task;
#[cfg(feature = "testkit")]
pub mod testkit;

/// The attribute [`Resolver`], [`Fetcher`] and [`Pusher`] are declared and
/// implemented with, re-exported so a remote of your own needs no
/// dependency of its own for it.
pub use async_trait::async_trait;
/// The chunk type of a [`ByteStream`], re-exported so a fetcher of your own
/// needs no dependency of its own for it.
pub use bytes::Bytes;
pub use error::{ConnectError, Error, ErrorKind, Result};
pub use fetch::{
    FetchEvent, FetchOptions, HandlerWrapper, fetch_content, fetch_content_with, fetch_handler,
    fetch_image, fetch_resolved, ingest_ref, record_image,
};
pub use push::{PushEvent, push_image, push_order};
pub use reference::Reference;
/// The status type of [`Error::Status`], for matching on it.
pub use reqwest::StatusCode;

/// The trait of a [`ByteStream`], re-exported for the same reason as
/// [`Bytes`]; `futures::StreamExt` (or `TryStreamExt`) reads one.
pub use futures::Stream;

/// A stream of bytes from a registry.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Finds what a reference names and gives access to its content. The
/// [crate](crate) example resolves, fetches and pushes with all three traits.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// The normalised name and the descriptor of the manifest or index that
    /// `reference` names. A digest reference is verified against the bytes.
    async fn resolve(&self, reference: &str) -> Result<(String, Descriptor)>;

    /// A fetcher for the repository of `reference`.
    async fn fetcher(&self, reference: &str) -> Result<Box<dyn Fetcher>>;

    /// A pusher for the repository of `reference`.
    async fn pusher(&self, reference: &str) -> Result<Box<dyn Pusher>>;
}

/// Reads blobs and manifests (see the [crate](crate) example).
#[async_trait]
pub trait Fetcher: Send + Sync {
    /// The content `desc` names, from byte `offset` on (0 for all of it).
    /// The stream is not verified: callers write it through a content
    /// [`Writer`], which verifies size and digest at commit.
    async fn fetch(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream>;
}

/// Writes blobs and manifests (see the [crate](crate) example).
#[async_trait]
pub trait Pusher: Send + Sync {
    /// A writer for `desc`: write its bytes and commit. Content already in the
    /// registry is [`ErrorKind::AlreadyExists`]; the same descriptor being
    /// pushed already, through any pusher of the same resolver, is
    /// [`ErrorKind::Unavailable`].
    async fn push(&self, desc: &Descriptor) -> Result<Box<dyn Writer>>;

    /// Pushes `desc` with its bytes read from `provider` (asked only if the
    /// registry lacks them); `Ok(false)` if the registry had it already.
    /// Bytes that are not `desc`'s are never stored, as through
    /// [`push`](Self::push)'s writer. Refused the same way as `push` while
    /// another push has `desc`.
    ///
    /// The default writes the provider's blob through `push`'s writer; a
    /// pusher that can upload from where the bytes are overrides it (the
    /// registry's pusher reads them at positions and keeps no copy).
    async fn push_from(&self, desc: &Descriptor, provider: &dyn Provider) -> Result<bool> {
        let mut writer = match self.push(desc).await {
            Ok(writer) => writer,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        let reader = provider.reader_at(desc).await?;
        ocidist_content::copy(
            writer.as_mut(),
            ocidist_content::CopySource::ReaderAt(reader.as_ref()),
            Some(desc.size()),
            Some(desc.digest()),
            ocidist_content::Labels::new(),
        )
        .await?;
        Ok(true)
    }
}

/// Forwards the traits through references and shared pointers, so a
/// resolver, fetcher or pusher can be lent (`&r`) or shared (`Arc<r>`)
/// wherever one is expected.
macro_rules! forward_remote_traits {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: Resolver + ?Sized> Resolver for $ptr {
            async fn resolve(&self, reference: &str) -> Result<(String, Descriptor)> {
                (**self).resolve(reference).await
            }
            async fn fetcher(&self, reference: &str) -> Result<Box<dyn Fetcher>> {
                (**self).fetcher(reference).await
            }
            async fn pusher(&self, reference: &str) -> Result<Box<dyn Pusher>> {
                (**self).pusher(reference).await
            }
        }

        #[async_trait]
        impl<T: Fetcher + ?Sized> Fetcher for $ptr {
            async fn fetch(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
                (**self).fetch(desc, offset).await
            }
        }

        #[async_trait]
        impl<T: Pusher + ?Sized> Pusher for $ptr {
            async fn push(&self, desc: &Descriptor) -> Result<Box<dyn Writer>> {
                (**self).push(desc).await
            }
            async fn push_from(&self, desc: &Descriptor, provider: &dyn Provider) -> Result<bool> {
                (**self).push_from(desc, provider).await
            }
        }
    )*};
}

forward_remote_traits!(&T, std::sync::Arc<T>, Box<T>);
