//! What a library user relies on that no behaviour test shows: the futures
//! of the main operations can be spawned on a multi-threaded runtime, and
//! every crate's error answers the same questions about its kind.

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

/// `is_not_found`, `is_already_exists` and `is_unavailable` exist on every
/// crate's error and on `PullError`, and agree with `kind()`, also through
/// the wrappers.
#[test]
fn every_error_answers_the_same_kind_questions() {
    use ocidist::content::ErrorKind;
    use ocidist::pull::PullError;
    for kind in [
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::Unavailable,
        ErrorKind::InvalidArgument,
    ] {
        let answers = |kind: ErrorKind| {
            [
                kind == ErrorKind::NotFound,
                kind == ErrorKind::AlreadyExists,
                kind == ErrorKind::Unavailable,
            ]
        };
        let expected = answers(kind);
        let content = ocidist::content::Error::other(kind, "content");
        let images = ocidist::images::Error::other(kind, "images");
        let remotes = ocidist::remotes::Error::other(kind, "remotes");
        let snapshot = ocidist::snapshot::Error::other(kind, "snapshot");
        let fetch = PullError::Fetch(ocidist::remotes::Error::Content(
            ocidist::content::Error::other(kind, "wrapped"),
        ));
        let unpack = PullError::Unpack(ocidist::snapshot::Error::other(kind, "unpack"));
        let all = [
            (
                "content",
                content.kind(),
                [
                    content.is_not_found(),
                    content.is_already_exists(),
                    content.is_unavailable(),
                ],
            ),
            (
                "images",
                images.kind(),
                [
                    images.is_not_found(),
                    images.is_already_exists(),
                    images.is_unavailable(),
                ],
            ),
            (
                "remotes",
                remotes.kind(),
                [
                    remotes.is_not_found(),
                    remotes.is_already_exists(),
                    remotes.is_unavailable(),
                ],
            ),
            (
                "snapshot",
                snapshot.kind(),
                [
                    snapshot.is_not_found(),
                    snapshot.is_already_exists(),
                    snapshot.is_unavailable(),
                ],
            ),
            (
                "pull fetch",
                fetch.kind(),
                [
                    fetch.is_not_found(),
                    fetch.is_already_exists(),
                    fetch.is_unavailable(),
                ],
            ),
            (
                "pull unpack",
                unpack.kind(),
                [
                    unpack.is_not_found(),
                    unpack.is_already_exists(),
                    unpack.is_unavailable(),
                ],
            ),
        ];
        for (crate_name, reported, helpers) in all {
            assert_eq!(reported, kind, "{crate_name}");
            assert_eq!(helpers, expected, "{crate_name}: {kind:?}");
        }
    }
}
