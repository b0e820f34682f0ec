//! What a library user relies on that no behaviour test shows: the futures
//! of the main operations can be spawned on a multi-threaded runtime.

use ocidist::content::local::LocalStore;
use ocidist::content::{descriptor, sha256_of};
use ocidist::images::DbImageStore;
use ocidist::images::platforms::{self, Platform};
use ocidist::pull::{PullOptions, pull};
use ocidist::remotes::docker::DockerResolver;
use ocidist::remotes::{fetch_image, push_image};
use ocidist::snapshot::native::NativeSnapshotter;
use ocidist::snapshot::{UnpackOptions, unpack};

/// Checked when this compiles: `tokio::spawn` needs `Send` futures.
fn assert_send<T: Send>(_: &T) {}

#[test]
fn pull_fetch_push_and_unpack_futures_are_send() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let images = DbImageStore::open(dir.path().join("images.redb")).unwrap();
    let snapshotter = NativeSnapshotter::open(dir.path().join("snapshots")).unwrap();
    let resolver = DockerResolver::new();
    let matcher = platforms::only(&Platform::host());
    let image = descriptor(sha256_of(b"{}"), 2);

    // Built and dropped unpolled: nothing runs.
    let pulling = pull(
        &resolver,
        &store,
        &images,
        &snapshotter,
        "127.0.0.1:1/none:1",
        PullOptions::new(matcher.clone()),
    );
    assert_send(&pulling);
    let fetching = fetch_image(
        &resolver,
        &store,
        &images,
        "127.0.0.1:1/none:1",
        matcher.clone(),
        1,
        None,
        None,
    );
    assert_send(&fetching);
    let pushing = push_image(&resolver, &store, "127.0.0.1:1/none:1", &image, 1, None);
    assert_send(&pushing);
    let unpacking = unpack(
        &image,
        &store,
        &snapshotter,
        &matcher,
        UnpackOptions::default(),
    );
    assert_send(&unpacking);
}
