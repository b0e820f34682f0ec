//! Resolve, fetch and push images over the OCI distribution API.
//!
//! Three small traits, as in containerd: a [`Resolver`] turns a reference into
//! the descriptor it names and hands out a [`Fetcher`] (blob and manifest
//! bytes, from an offset) and a [`Pusher`] (a content [`Writer`] per
//! descriptor, so pushing is ingesting). [`docker::DockerResolver`] speaks the
//! Docker registry v2 / OCI distribution API. Behind the `testkit` feature,
//! the `testkit` module runs the real CNCF registry on loopback for tests.
//!
//! Done so far: references, resolve (HEAD, GET-and-hash fallback, digest
//! references verified), fetch (streaming, ranged resume), `fetch_object`,
//! push (monolithic or chunked), retries with backoff and `Retry-After`,
//! timeouts, TLS with extra CAs, basic and bearer-token auth with credentials
//! from Docker's config, containerd's `hosts.toml` (mirrors, capabilities),
//! the resumable [`fetch_handler`] / [`fetch_image`] pipeline and
//! [`push_image`] with cross-repository mounts from the [`source`] labels a
//! fetch records, and parallel ranged fetch of large blobs
//! ([`docker::RangedFetch`]).

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use oci_spec::image::Descriptor;
use ocidist_content::Writer;

pub mod docker;
mod error;
pub mod fetch;
pub mod push;
pub mod reference;
pub mod source;
mod task;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{Error, ErrorKind, Result};
pub use fetch::{
    FetchEvent, fetch_content, fetch_handler, fetch_image, fetch_resolved, ingest_ref, record_image,
};
pub use push::{push_image, push_order};
pub use reference::Reference;

/// A stream of bytes from a registry.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// Finds what a reference names and gives access to its content.
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

/// Reads blobs and manifests.
#[async_trait]
pub trait Fetcher: Send + Sync {
    /// The content `desc` names, from byte `offset` on (0 for all of it).
    /// The stream is not verified: callers write it through a content
    /// [`Writer`], which verifies size and digest at commit.
    async fn fetch(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream>;
}

#[async_trait]
impl<F: Fetcher + ?Sized> Fetcher for Box<F> {
    async fn fetch(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
        (**self).fetch(desc, offset).await
    }
}

#[async_trait]
impl<F: Fetcher + ?Sized> Fetcher for std::sync::Arc<F> {
    async fn fetch(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
        (**self).fetch(desc, offset).await
    }
}

/// Writes blobs and manifests.
#[async_trait]
pub trait Pusher: Send + Sync {
    /// A writer for `desc`: write its bytes and commit. Content already in the
    /// registry is [`ErrorKind::AlreadyExists`]; the same descriptor being
    /// pushed through this pusher already is [`ErrorKind::Unavailable`].
    async fn push(&self, desc: &Descriptor) -> Result<Box<dyn Writer>>;
}
