//! Image graphs: handlers that walk them, the manifests and indexes they are
//! made of, platforms, and the image store that names them.
//!
//! An image is a graph of descriptors: index → manifests → config and layers.
//! A [`Handler`] does something with one descriptor and returns its
//! [`Flow`]: the children to visit next, or stop, or skip. [`walk`] runs a
//! handler depth first; [`dispatch`] runs siblings concurrently under a limit.
//! Small handlers compose (see [`wrappers`]): decode children from a store,
//! keep the platforms you want, the best manifest of an index, and record GC
//! labels, each a wrapper around the next.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use ocidist_content::{local::LocalStore, Labels, WriterOpts, write_blob, sha256_of, descriptor};
//! use ocidist_images::{dispatch, handler_fn, handlers, Flow, Handler, children_handler};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LocalStore::open(dir.path())?;
//! let layer = b"layer bytes";
//! write_blob(&store, WriterOpts::new("l"), &layer[..], Labels::new()).await?;
//!
//! let seen = Arc::new(AtomicUsize::new(0));
//! let counter = seen.clone();
//! let count = handler_fn(move |_| {
//!     counter.fetch_add(1, Ordering::Relaxed);
//!     async { Ok(Flow::leaf()) }
//! });
//! let pipeline = handlers(vec![Arc::new(count), Arc::new(children_handler(store.clone()))]);
//! let desc = descriptor(sha256_of(layer), layer.len() as u64);
//! dispatch(&pipeline, Some(4), &[desc]).await?;
//! assert_eq!(seen.load(Ordering::Relaxed), 1);
//! # Ok(())
//! # }
//! ```

mod error;
pub mod gc;
mod handler;
pub mod manifest;
pub mod media_types;
pub mod platforms;
pub mod store;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod wrappers;

/// The attribute [`Handler`] and [`ImageStore`] are declared and implemented
/// with, re-exported so a handler of your own needs no dependency of its
/// own for it.
///
/// ```
/// use ocidist_content::{Descriptor, descriptor, sha256_of};
/// use ocidist_images::{Flow, Handler, async_trait, walk};
///
/// /// Stops the walk at blobs over a size.
/// struct NoBigger(u64);
///
/// #[async_trait]
/// impl Handler for NoBigger {
///     async fn handle(&self, desc: &Descriptor) -> ocidist_images::Result<Flow> {
///         Ok(if desc.size() > self.0 { Flow::Skip } else { Flow::leaf() })
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ocidist_images::Result<()> {
/// walk(&NoBigger(1 << 30), &[descriptor(sha256_of(b"x"), 1)]).await?;
/// # Ok(())
/// # }
/// ```
pub use async_trait::async_trait;
pub use error::{Error, ErrorKind, Result};
pub use gc::{GcOptions, GcReport, gc};
pub use handler::{
    Chain, Flow, Handler, HandlerFn, MAX_DEPTH, dispatch, handler_fn, handlers, walk,
};
pub use manifest::{
    CheckReport, Manifest, chain_id, chain_ids, check, config, diff_ids, manifest, size,
};
pub use platforms::{Matcher, Platform};
pub use store::{DbImageStore, Image, ImageStore};
pub use wrappers::{
    children_handler, filter_platforms, limit_manifests, once_per_blob, set_children_labels,
};
