//! Resolve, fetch and push images over the OCI distribution API.
//!
//! This first part holds image [`Reference`]s and, behind the `testkit`
//! feature, a [`testkit`] that runs the real CNCF distribution registry on
//! loopback for tests. The resolver, fetcher and pusher come next.

mod error;
pub mod reference;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{Error, ErrorKind, Result};
pub use reference::Reference;
