//! ocidist: containerd's distribution layer for Rust programs.
//!
//! This facade re-exports the member crates:
//!
//! - [`content`]: the verified, resumable, content-addressed store
//!   ([`content::local::LocalStore`] on disk).
#![doc = include_str!("../README.md")]

pub use ocidist_content as content;
