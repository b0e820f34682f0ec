//! The snapshotter conformance suite (containerd's cases); filled in below.
