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

/// Checked when this compiles: an error a user can box into
/// `Box<dyn Error + Send + Sync>` and send across tasks.
fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn every_error_can_cross_tasks_and_be_boxed() {
    assert_error::<ocidist::content::Error>();
    assert_error::<ocidist::images::Error>();
    assert_error::<ocidist::remotes::Error>();
    assert_error::<ocidist::snapshot::Error>();
    assert_error::<ocidist::pull::PullError>();
}

/// A runtime keeps its parts behind `Arc<dyn …>` and hands them to code
/// generic over the traits: the pointers are the traits too.
#[tokio::test]
async fn shared_image_stores_and_resolvers_are_image_stores_and_resolvers() {
    use ocidist::images::{Image, ImageStore};
    use ocidist::remotes::Resolver;
    use std::sync::Arc;

    async fn target_of<I: ImageStore>(images: I, name: &str) -> ocidist::content::Digest {
        images.get(name).await.unwrap().target.digest().clone()
    }
    async fn resolve_with<R: Resolver>(resolver: R, reference: &str) -> ocidist::remotes::Error {
        resolver.resolve(reference).await.unwrap_err()
    }

    let dir = tempfile::tempdir().unwrap();
    let images: Arc<dyn ImageStore> =
        Arc::new(DbImageStore::open(dir.path().join("images.redb")).unwrap());
    let mut target = descriptor(sha256_of(b"{}"), 2);
    target.set_media_type(ocidist::content::oci_spec::image::MediaType::ImageManifest);
    images
        .create(Image::new("example.com/app:1", target.clone()))
        .await
        .unwrap();
    assert_eq!(
        &target_of(&images, "example.com/app:1").await,
        target.digest()
    );
    assert_eq!(
        &target_of(images.clone(), "example.com/app:1").await,
        target.digest()
    );

    let resolver: Arc<dyn Resolver> = Arc::new(DockerResolver::new());
    let err = resolve_with(resolver.clone(), "Upper/Case").await;
    assert_eq!(
        err.kind(),
        ocidist::content::ErrorKind::InvalidArgument,
        "{err}"
    );
    assert!(err.to_string().contains("Upper/Case"), "{err}");
    let boxed: Box<dyn Resolver> = Box::new(DockerResolver::new());
    let err = resolve_with(&boxed, "Upper/Case").await;
    assert_eq!(
        err.kind(),
        ocidist::content::ErrorKind::InvalidArgument,
        "{err}"
    );
}

/// `error` and its causes, outermost first: what `anyhow` prints, one line
/// each.
fn chain_of(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    std::iter::successors(Some(error), |e| e.source())
        .map(ToString::to_string)
        .collect()
}

/// Rust's rule for error chains, which `anyhow` and `tracing` rely on: a
/// cause is either in an error's message or its `source()`, never both.
/// The `Report` of an error says each cause once.
#[tokio::test]
async fn each_cause_is_said_once_and_a_report_says_them_all() {
    use ocidist::content::Report;
    use ocidist::remotes::Resolver;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let content = LocalStore::open(file.join("content")).unwrap_err();
    let Err(snapshot) = NativeSnapshotter::open(file.join("snapshots")) else {
        panic!("a snapshotter under a file");
    };
    // Nothing listens on port 1.
    let remotes = DockerResolver::new()
        .resolve("127.0.0.1:1/none:1")
        .await
        .unwrap_err();
    let errors: [(&(dyn std::error::Error + 'static), &str); 3] = [
        (&content, "Not a directory"),
        (&snapshot, "Not a directory"),
        (&remotes, "Connection refused"),
    ];
    for (error, root) in errors {
        let chain = chain_of(error);
        for pair in chain.windows(2) {
            assert!(!pair[0].contains(&pair[1]), "said twice: {chain:#?}");
        }
        assert!(chain.len() > 1, "the cause is a source: {chain:#?}");
        let report = Report::new(error).to_string();
        assert_eq!(report.matches(root).count(), 1, "{report}");
        assert_eq!(report, chain.join(": "));
    }
}
