//! ocidist: containerd's distribution layer for Rust programs.
//!
//! This facade re-exports the member crates, so one dependency brings them all:
//!
//! - [`content`]: the verified, resumable, content-addressed store
//!   ([`content::local::LocalStore`] on disk), with containerd's `Provider`,
//!   `Ingester`, `Writer`, `Manager` and `IngestManager` traits.
//! - [`images`]: handlers (`walk`, `dispatch`) and their wrappers, manifests,
//!   platforms, the image store and garbage collection.
//! - [`remotes`]: image references, the registry client (resolve, fetch,
//!   push) and, behind the `testkit` feature, a test kit that runs a real
//!   registry.
//! - [`snapshot`]: snapshotters (native, overlay), safe layer apply and unpack.
//! - [`pull`]: fetch and unpack, overlapped: what `ctr pull` does.
//! - [`gc`]: garbage collection of snapshots and content together, in the
//!   order that keeps a pull running meanwhile safe.
//! - [`layout`]: OCI image layouts: export an image into one, import one,
//!   or unpack straight from one (what `ctr export`, `ctr import` and
//!   `umoci unpack` do).
//! - [`staging`]: files and directories staged beside their destination
//!   under a flock, and swept once the process that staged them is gone.
//!
//! ```
//! use ocidist::content::{local::LocalStore, sha256_of, write_blob, Labels, Manager, WriterOpts};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LocalStore::open(dir.path())?;
//! write_blob(&store, WriterOpts::new("greeting"), &b"hello"[..], Labels::new()).await?;
//! assert_eq!(store.info(&sha256_of(b"hello")).await?.size, 5);
//! # Ok(())
//! # }
//! ```

pub use ocidist_content as content;
pub use ocidist_images as images;
pub use ocidist_remotes as remotes;
pub use ocidist_snapshot as snapshot;

pub mod gc;
pub mod layout;
pub mod pull;
pub mod staging;
