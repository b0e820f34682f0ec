//! A misbehaving registry: the real one behind a fault-injecting proxy. Every
//! fault ends in success by retry or resume, or in a typed error with nothing
//! wrong committed.

mod common;

use std::time::{Duration, Instant};

use common::{fetch_all, image, push_all, push_multi, registry, stores};
use futures::StreamExt;
use ocidist_content::{ErrorKind, IngestManager, Ingester, Manager, Report, WriterOpts};
use ocidist_images::platforms::{Platform, only};
use ocidist_remotes::docker::{DockerResolver, LowSpeedLimit, fetch_object};
use ocidist_remotes::testkit::{Fault, FaultProxy};
use ocidist_remotes::{Error, Resolver, StatusCode, fetch_image};
use tokio::io::AsyncWriteExt;

fn arm64() -> Platform {
    "linux/arm64".parse().unwrap()
}

/// Fetches the arm64 image of `reference` into the stores.
async fn fetch_arm64(
    resolver: &DockerResolver,
    store: &ocidist_content::local::LocalStore,
    images: &ocidist_images::DbImageStore,
    reference: &str,
) -> ocidist_remotes::Result<ocidist_images::Image> {
    fetch_image(
        resolver,
        store,
        images,
        reference,
        only(&arm64()),
        1,
        None,
        None,
    )
    .await
}

/// How many requests the proxy saw for paths containing `path` (not the
/// resolver's `GET /v2/` that settles plain HTTP).
fn requests_to(proxy: &FaultProxy, path: &str) -> usize {
    proxy.log().iter().filter(|l| l.contains(path)).count()
}

/// The GET requests the proxy saw for paths containing `path`, in order.
fn gets_of(proxy: &FaultProxy, path: &str) -> Vec<String> {
    proxy
        .log()
        .into_iter()
        .filter(|l| l.starts_with("GET") && l.contains(path))
        .collect()
}

/// Checks that `blob` is committed in `store`, whole.
async fn assert_whole(store: &ocidist_content::local::LocalStore, blob: &common::Blob) {
    assert_eq!(
        store.info(blob.desc.digest()).await.unwrap().size,
        blob.bytes.len() as u64
    );
}

/// A registry with a two-platform image, and a proxy in front of it.
async fn setup(
    repo: &str,
) -> (
    ocidist_remotes::testkit::Registry,
    FaultProxy,
    Vec<common::Blob>,
) {
    let registry = registry();
    let resolver = DockerResolver::new();
    let full = format!("{}/{repo}", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &full,
        "1",
    )
    .await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    (registry, proxy, pushed)
}

#[tokio::test]
async fn too_many_requests_then_success_is_retried_honouring_retry_after() {
    let (_registry, proxy, pushed) = setup("faults/429").await;
    proxy.add(
        Some("HEAD"),
        "/manifests/1",
        2,
        Fault::Status {
            status: 429,
            retry_after: Some(1),
        },
    );
    let started = Instant::now();
    let (_, desc) = DockerResolver::new()
        .resolve(&format!("{}/faults/429:1", proxy.host()))
        .await
        .unwrap();
    assert_eq!(desc.digest(), pushed[6].desc.digest());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After: 1 was honoured twice"
    );
    assert_eq!(requests_to(&proxy, "/manifests/1"), 3);
}

/// A rate limit that asks for more patience than a retry waits
/// (`Retry-After: 120`) is answered at once with the 429, not asked again
/// early: neither by the request's retries nor by the fetch resuming.
#[tokio::test]
async fn a_rate_limit_longer_than_a_retry_waits_is_not_asked_again() {
    let (_registry, proxy, pushed) = setup("faults/429-long").await;
    let long = Fault::Status {
        status: 429,
        retry_after: Some(120),
    };
    proxy.add(Some("HEAD"), "/manifests/1", 1, long.clone());
    let reference = format!("{}/faults/429-long:1", proxy.host());
    let err = DockerResolver::new().resolve(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(Report::new(&err).to_string().contains("429"), "{err}");
    assert!(
        Report::new(&err).to_string().contains(
            "the registry asks to be asked again in 2m0s, longer than the 10s waited for"
        ),
        "{err}"
    );
    assert_eq!(requests_to(&proxy, "/manifests/1"), 1);

    let layer = &pushed[3];
    let blob_path = format!("/blobs/{}", layer.desc.digest());
    proxy.add(Some("GET"), &blob_path, usize::MAX, long);
    let (_dir, store, images) = stores();
    let err = fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .unwrap_err();
    assert!(Report::new(&err).to_string().contains("429"), "{err}");
    // Typed through the handlers, for a caller to match.
    match &err {
        Error::Blob {
            what,
            digest,
            source,
        } => {
            assert_eq!((what.as_str(), digest), ("layer", layer.desc.digest()));
            assert!(
                matches!(**source, Error::Status { status, .. } if status == StatusCode::TOO_MANY_REQUESTS),
                "{source:?}"
            );
        }
        other => panic!("the blob's own error: {other:?}"),
    }
    // And told without matching the nesting.
    assert!(err.is_rate_limited(), "{err:?}");
    assert_eq!(err.http_status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(gets_of(&proxy, &blob_path).len(), 1);
    assert!(store.info(layer.desc.digest()).await.is_err());
}

/// A tag whose manifest the registry says is larger than any manifest may
/// be is refused at resolve, before anything downloads it.
#[tokio::test]
async fn a_manifest_said_to_be_too_large_is_refused_at_resolve() {
    let (_registry, proxy, _) = setup("faults/huge").await;
    let claimed = (5u64 << 20).to_string();
    proxy.add(
        Some("HEAD"),
        "/manifests/1",
        1,
        Fault::SetHeader {
            name: "Content-Length".into(),
            value: claimed.clone(),
        },
    );
    let err = DockerResolver::new()
        .resolve(&format!("{}/faults/huge:1", proxy.host()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(Report::new(&err).to_string().contains(&claimed), "{err}");
    assert_eq!(requests_to(&proxy, "/manifests/1"), 1, "{:#?}", proxy.log());
}

#[tokio::test]
async fn a_storm_of_503_ends_in_a_typed_error_in_bounded_time() {
    let (_registry, proxy, _) = setup("faults/503").await;
    proxy.add(
        None,
        "/manifests/",
        usize::MAX,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let started = Instant::now();
    let err = DockerResolver::new()
        .resolve(&format!("{}/faults/503:1", proxy.host()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(Report::new(&err).to_string().contains("503"), "{err}");
    assert_eq!(
        requests_to(&proxy, "/manifests/"),
        ocidist_remotes::docker::ATTEMPTS as usize
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_connection_cut_mid_layer_resumes_with_range() {
    let (_registry, proxy, pushed) = setup("faults/cut").await;
    let layer = &pushed[3];
    proxy.add(
        Some("GET"),
        &format!("/blobs/{}", layer.desc.digest()),
        2,
        Fault::CutAfter(70_000),
    );
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/cut:1", proxy.host());
    fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .expect("two cuts are resumed");
    assert_whole(&store, layer).await;
}

/// A layer cut again and again, each time a little further on, still
/// arrives: only resumes that bring nothing are limited.
#[tokio::test]
async fn a_download_cut_many_times_keeps_resuming_while_it_gets_further() {
    let (_registry, proxy, pushed) = setup("faults/cut-often").await;
    let layer = &pushed[3];
    let blob_path = format!("/blobs/{}", layer.desc.digest());
    proxy.add(Some("GET"), &blob_path, 6, Fault::CutAfter(30_000));
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/cut-often:1", proxy.host());
    fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .expect("six cuts, each after 30,000 more bytes, are resumed");
    assert_whole(&store, layer).await;
    let gets = gets_of(&proxy, &blob_path);
    assert_eq!(gets.len(), 7, "{gets:#?}");
    assert!(gets[6].contains("range=bytes=180000-"), "{gets:#?}");
}

/// Resolving a digest reference GETs the manifest to check its bytes; the
/// fetch that follows uses those bytes instead of asking again (on Docker
/// Hub every manifest GET counts against the pull limit).
#[tokio::test]
async fn a_digest_reference_costs_one_get_of_its_manifest() {
    let (_registry, proxy, pushed) = setup("faults/pinned").await;
    let index = pushed.last().unwrap();
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/pinned@{}", proxy.host(), index.desc.digest());
    fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .unwrap();
    assert_whole(&store, index).await;
    let manifest_path = format!("/manifests/{}", index.desc.digest());
    let gets = gets_of(&proxy, &manifest_path);
    assert_eq!(gets.len(), 1, "{:#?}", proxy.log());
}

/// A digest reference is held to the manifest's bytes, never to what the
/// registry's headers say: a flipped byte fails the resolve (the registry's
/// own `Docker-Content-Digest` still naming the digest asked for), and
/// nothing is fetched or stored.
#[tokio::test]
async fn a_digest_reference_is_held_to_its_bytes_not_to_the_headers() {
    let (_registry, proxy, pushed) = setup("faults/pinned-wrong").await;
    let index = pushed.last().unwrap();
    let manifest_path = format!("/manifests/{}", index.desc.digest());
    proxy.add(Some("GET"), &manifest_path, 1, Fault::FlipByte(20));
    let (_dir, store, images) = stores();
    let reference = format!(
        "{}/faults/pinned-wrong@{}",
        proxy.host(),
        index.desc.digest()
    );
    let err = fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .unwrap_err();
    let message = Report::new(&err).to_string();
    assert!(
        message.contains("digest mismatch") && message.contains(&index.desc.digest().to_string()),
        "{message}"
    );
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert_eq!(proxy.faults_applied(), 1);
    assert!(gets_of(&proxy, "/blobs/").is_empty(), "{:#?}", proxy.log());
    assert!(
        store
            .info(index.desc.digest())
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(store.list_statuses(&[]).await.unwrap().is_empty());
}

/// A tag that only has a Docker schema 1 manifest (signed, or served as
/// `text/plain` as some registries do) is refused by name at resolve, not
/// reported later as a digest mismatch.
#[tokio::test]
async fn a_schema1_manifest_is_refused_by_name_at_resolve() {
    let (_registry, proxy, _pushed) = setup("faults/schema1").await;
    let body = r#"{"schemaVersion": 1, "name": "faults/schema1", "tag": "old", "fsLayers": []}"#;
    let resolver = DockerResolver::new();
    for content_type in [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "text/plain; charset=utf-8",
    ] {
        proxy.add(
            None,
            "/manifests/old",
            2,
            Fault::AnswerAs {
                status: 200,
                content_type: content_type.into(),
                body: body.into(),
            },
        );
        let err = resolver
            .resolve(&format!("{}/faults/schema1:old", proxy.host()))
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Unimplemented,
            "{content_type}: {err}"
        );
        assert!(
            Report::new(&err).to_string().contains("schema 1"),
            "{content_type}: {err}"
        );
    }
}

/// A manifest served with a type that is no manifest's (a static file
/// server's `application/octet-stream`, an old registry's `text/plain`) is
/// typed by what the document says, as Docker's client does, not recorded
/// as an unknown blob with no children.
#[tokio::test]
async fn a_manifest_served_as_another_type_is_typed_by_its_own_word() {
    let (_registry, proxy, pushed) = setup("faults/octet").await;
    let index = &pushed[6].desc;
    let reference = format!("{}/faults/octet:1", proxy.host());
    let served_as = |content_type: &str, times| {
        let retyped = Fault::SetHeader {
            name: "Content-Type".into(),
            value: content_type.into(),
        };
        proxy.add(None, "/manifests/", times, retyped);
    };
    for content_type in [
        "application/octet-stream",
        "text/plain; charset=utf-8",
        "text/html",
    ] {
        // The HEAD, then the GET it leads to.
        served_as(content_type, 2);
        let (_, desc) = DockerResolver::new().resolve(&reference).await.unwrap();
        assert_eq!(desc.media_type(), index.media_type(), "{content_type}");
        assert_eq!((desc.digest(), desc.size()), (index.digest(), index.size()));
    }
    served_as("application/octet-stream", usize::MAX);
    let (_dir, store, images) = stores();
    let image = fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .unwrap();
    assert_eq!(image.target.media_type(), index.media_type());
    // The arm64 manifest, its config and its layer came with it.
    for blob in &pushed[3..6] {
        assert_whole(&store, blob).await;
    }
}

/// A body that ends cleanly before the blob does (a `Content-Length` that
/// says less, as from a proxy that cut it short) is resumed from where it
/// ended, not found short at commit.
#[tokio::test]
async fn a_body_that_ends_early_but_cleanly_is_resumed() {
    let (_registry, proxy, pushed) = setup("faults/short").await;
    let layer = &pushed[3];
    let blob_path = format!("/blobs/{}", layer.desc.digest());
    let short = Fault::SetHeader {
        name: "Content-Length".into(),
        value: "70000".into(),
    };
    proxy.add(Some("GET"), &blob_path, 1, short);
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/short:1", proxy.host());
    fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .expect("the short body is resumed");
    assert_whole(&store, layer).await;
    let gets = gets_of(&proxy, &blob_path);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(gets[1].contains("range=bytes=70000-"), "{gets:#?}");
}

/// `fetch_object` hands bytes on as they arrive, with no store to check them
/// at commit: a flipped byte, in a blob or in a tag's manifest, ends its
/// stream in a digest mismatch once every byte has passed.
#[tokio::test]
async fn fetch_object_ends_in_a_digest_mismatch_when_a_byte_is_wrong() {
    let (_registry, proxy, pushed) = setup("faults/object").await;
    let (layer, index) = (&pushed[3], pushed.last().unwrap());
    let locator = format!("{}/faults/object", proxy.host());
    let resolver = DockerResolver::new();
    for (object, blob, path) in [
        (layer.desc.digest().to_string(), layer, "/blobs/"),
        ("1".to_string(), index, "/manifests/sha256:"),
    ] {
        proxy.add(Some("GET"), path, 1, Fault::FlipByte(100));
        let (_, stream) = fetch_object(&resolver, &locator, &object, &[])
            .await
            .unwrap();
        let passed: Vec<_> = stream.collect().await;
        let (last, before) = passed.split_last().unwrap();
        let err = last.as_ref().unwrap_err();
        assert!(
            Report::new(err).to_string().contains("digest mismatch"),
            "{object}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{object}: {err}");
        let handed_on: usize = before.iter().map(|p| p.as_ref().unwrap().len()).sum();
        assert_eq!(handed_on, blob.bytes.len(), "{object}");
    }
    assert_eq!(proxy.faults_applied(), 2);
}

/// A download cut short whose resuming request then fails (the registry
/// restarting: 503 on every retry of it) is resumed once more, not given up.
#[tokio::test]
async fn a_resume_whose_request_fails_is_resumed_again() {
    let (_registry, proxy, pushed) = setup("faults/cut-then-503").await;
    let layer = &pushed[3];
    let blob_path = format!("/blobs/{}", layer.desc.digest());
    proxy.add(Some("GET"), &blob_path, 1, Fault::CutAfter(70_000));
    // Every attempt of the first resume's request.
    let unavailable = Fault::Status {
        status: 503,
        retry_after: None,
    };
    proxy.add(Some("GET"), &blob_path, 5, unavailable);
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/cut-then-503:1", proxy.host());
    fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .expect("resumed after the failed request");
    assert_whole(&store, layer).await;
    let gets = gets_of(&proxy, &blob_path);
    assert_eq!(gets.len(), 7, "{gets:#?}");
    assert!(gets[6].contains("range=bytes=70000-"), "{gets:#?}");
}

#[tokio::test]
async fn a_flipped_byte_is_a_digest_mismatch_and_nothing_is_committed() {
    let (_registry, proxy, pushed) = setup("faults/flip").await;
    let layer = &pushed[3];
    proxy.add(
        Some("GET"),
        &format!("/blobs/{}", layer.desc.digest()),
        1,
        Fault::FlipByte(12_345),
    );
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/flip:1", proxy.host());
    let resolver = DockerResolver::new();
    let err = fetch_arm64(&resolver, &store, &images, &reference)
        .await
        .unwrap_err();
    let message = Report::new(&err).to_string();
    assert!(
        message.contains("digest mismatch") && message.contains(&layer.desc.digest().to_string()),
        "{message}"
    );
    assert!(
        matches!(
            &err,
            Error::Blob { source, .. }
                if matches!(**source, Error::Content(ocidist_content::Error::DigestMismatch { .. }))
        ),
        "{err:?}"
    );
    assert!(
        store
            .info(layer.desc.digest())
            .await
            .unwrap_err()
            .is_not_found(),
        "the bad bytes are not committed"
    );
    let left: Vec<String> = store
        .list_statuses(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.reference)
        .collect();
    assert!(
        !left.contains(&ocidist_remotes::ingest_ref(&layer.desc)),
        "and not kept to resume from: {left:?}"
    );
    // The next fetch (the registry behaves now) succeeds.
    fetch_arm64(&resolver, &store, &images, &reference)
        .await
        .unwrap();
    assert!(store.info(layer.desc.digest()).await.is_ok());
}

/// A store that keeps its bytes in a local store but says a mismatch at
/// commit only by its kind, as [`ocidist_content::Writer::commit`] promises
/// and no more: a store of a user's own.
#[derive(Clone)]
struct KindOnlyStore(ocidist_content::local::LocalStore);

/// [`KindOnlyStore`]'s writer.
struct KindOnlyWriter(Box<dyn ocidist_content::Writer>);

impl tokio::io::AsyncWrite for KindOnlyWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[async_trait::async_trait]
impl ocidist_content::Writer for KindOnlyWriter {
    async fn status(&mut self) -> ocidist_content::Result<ocidist_content::Status> {
        self.0.status().await
    }

    async fn digest(&mut self) -> ocidist_content::Result<ocidist_content::Digest> {
        self.0.digest().await
    }

    async fn commit(
        &mut self,
        size: Option<u64>,
        expected: Option<&ocidist_content::Digest>,
        labels: ocidist_content::Labels,
    ) -> ocidist_content::Result<()> {
        self.0.commit(size, expected, labels).await.map_err(|e| {
            let kind = e.kind();
            ocidist_content::Error::other(kind, e.to_string())
        })
    }

    async fn truncate(&mut self, size: u64) -> ocidist_content::Result<()> {
        self.0.truncate(size).await
    }
}

#[async_trait::async_trait]
impl Ingester for KindOnlyStore {
    async fn writer(
        &self,
        opts: WriterOpts,
    ) -> ocidist_content::Result<Box<dyn ocidist_content::Writer>> {
        Ok(Box::new(KindOnlyWriter(self.0.writer(opts).await?)))
    }
}

#[async_trait::async_trait]
impl IngestManager for KindOnlyStore {
    async fn status(&self, reference: &str) -> ocidist_content::Result<ocidist_content::Status> {
        self.0.status(reference).await
    }

    async fn list_statuses(
        &self,
        filters: &[&str],
    ) -> ocidist_content::Result<Vec<ocidist_content::Status>> {
        self.0.list_statuses(filters).await
    }

    async fn abort(&self, reference: &str) -> ocidist_content::Result<()> {
        self.0.abort(reference).await
    }
}

/// The fetch handler cannot rely on the local store's error variant: a
/// store that says a digest mismatch only by its kind gets its wrong bytes
/// thrown away all the same, so the next fetch downloads them again rather
/// than failing on them for ever.
#[tokio::test]
async fn wrong_bytes_are_thrown_away_whatever_store_refused_them() {
    let (_registry, proxy, pushed) = setup("faults/kind-only").await;
    let layer = &pushed[3];
    proxy.add(
        Some("GET"),
        &format!("/blobs/{}", layer.desc.digest()),
        1,
        Fault::FlipByte(12_345),
    );
    let (_dir, store, _images) = stores();
    let reference = format!("{}/faults/kind-only:1", proxy.host());
    let fetcher = DockerResolver::new().fetcher(&reference).await.unwrap();
    let handler = ocidist_remotes::fetch_handler(KindOnlyStore(store.clone()), fetcher);
    use ocidist_images::Handler;
    let err = handler.handle(&layer.desc).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(
        Report::new(&err).to_string().contains("digest mismatch"),
        "{err}"
    );
    // Gone, or started over if the store still held the ref when asked to
    // abort it.
    let kept = store
        .status(&ocidist_remotes::ingest_ref(&layer.desc))
        .await
        .map_or(0, |status| status.offset);
    assert_eq!(kept, 0, "the wrong bytes are not kept to resume from");
    handler.handle(&layer.desc).await.unwrap();
    assert_whole(&store, layer).await;
    assert_eq!(gets_of(&proxy, layer.desc.digest().as_ref()).len(), 2);
}

#[tokio::test]
async fn a_slow_drip_still_completes() {
    let (_registry, proxy, pushed) = setup("faults/drip").await;
    let layer = &pushed[3];
    let drip = Fault::Drip {
        chunk: 16 << 10,
        delay: Duration::from_millis(2),
    };
    proxy.add(
        Some("GET"),
        &format!("/blobs/{}", layer.desc.digest()),
        1,
        drip,
    );
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/drip:1", proxy.host());
    fetch_arm64(&DockerResolver::new(), &store, &images, &reference)
        .await
        .unwrap();
    assert!(store.info(layer.desc.digest()).await.is_ok());
}

/// A registry nobody listens for: retried, then `Unavailable`, and the
/// message says why, not only which URL.
#[tokio::test]
async fn an_unreachable_registry_is_unavailable_and_says_why() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = DockerResolver::new()
        .resolve(&format!("127.0.0.1:{port}/nobody/home:1"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        Report::new(&err)
            .to_string()
            .contains("cannot connect: Connection refused"),
        "{err}"
    );
}

/// A registry that refuses HEAD on manifests (405) is asked with GET, by tag
/// and by digest, as containerd does.
#[tokio::test]
async fn a_registry_refusing_head_on_manifests_is_asked_with_get() {
    let (registry, proxy, pushed) = setup("faults/405").await;
    proxy.add(
        Some("HEAD"),
        "/manifests/",
        usize::MAX,
        Fault::Status {
            status: 405,
            retry_after: None,
        },
    );
    let index = &pushed[6].desc;
    for reference in [
        format!("{}/faults/405:1", proxy.host()),
        format!("{}/faults/405@{}", proxy.host(), index.digest()),
    ] {
        let (_, desc) = DockerResolver::new().resolve(&reference).await.unwrap();
        assert_eq!((desc.digest(), desc.size()), (index.digest(), index.size()));
        assert_eq!(desc.media_type(), index.media_type(), "{reference}");
    }
    // A push there checks its manifests with HEAD too: refused, they are put.
    let resolver = DockerResolver::new();
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &format!("{}/faults/405-push", proxy.host()),
        "2",
    )
    .await;
    let index = &pushed[6].desc;
    let (_, desc) = DockerResolver::new()
        .resolve(&format!("{}/faults/405-push:2", registry.host()))
        .await
        .unwrap();
    assert_eq!(desc.digest(), index.digest());
    let puts = proxy
        .log()
        .iter()
        .filter(|l| l.starts_with("PUT ") && l.contains("/faults/405-push/manifests/"))
        .count();
    assert_eq!(puts, 3, "two manifests and the index: {:#?}", proxy.log());
}

/// A HEAD answer saying a manifest has no bytes (a proxy's, over HTTP/2)
/// says nothing: the manifest is fetched and measured instead.
#[tokio::test]
async fn a_manifest_said_to_be_empty_is_fetched_to_be_measured() {
    let (_registry, proxy, pushed) = setup("faults/empty").await;
    proxy.add(
        Some("HEAD"),
        "/manifests/1",
        1,
        Fault::SetHeader {
            name: "Content-Length".into(),
            value: "0".into(),
        },
    );
    let index = &pushed[6].desc;
    let (_, desc) = DockerResolver::new()
        .resolve(&format!("{}/faults/empty:1", proxy.host()))
        .await
        .unwrap();
    assert_eq!((desc.digest(), desc.size()), (index.digest(), index.size()));
    assert_eq!(
        gets_of(&proxy, "/manifests/1").len(),
        1,
        "{:#?}",
        proxy.log()
    );
}

/// A manifest digest met by a failure other than "not found" is reported as
/// that failure, not resolved as an untyped blob (containerd asks for blobs
/// only after a 404).
#[tokio::test]
async fn a_digest_is_looked_for_among_blobs_only_when_no_manifest_has_it() {
    let (_registry, proxy, pushed) = setup("faults/403").await;
    proxy.add(
        Some("HEAD"),
        "/manifests/",
        usize::MAX,
        Fault::Status {
            status: 403,
            retry_after: None,
        },
    );
    let index = &pushed[6].desc;
    let err = DockerResolver::new()
        .resolve(&format!("{}/faults/403@{}", proxy.host(), index.digest()))
        .await
        .unwrap_err();
    assert!(Report::new(&err).to_string().contains("403"), "{err}");
    assert!(
        proxy.log().iter().all(|l| !l.contains("/blobs/")),
        "{:#?}",
        proxy.log()
    );
    // The GET asked to explain the 403 was answered with the manifest:
    // dropped, and the error keeps the HEAD's status with no body.
    assert!(
        matches!(&err, Error::Status { method, status, body, .. }
            if method == "HEAD" && status.as_u16() == 403 && body.is_empty()),
        "{err:?}"
    );
    assert!(
        proxy
            .log()
            .iter()
            .any(|l| l.starts_with("GET ") && l.contains("/manifests/")),
        "{:#?}",
        proxy.log()
    );
}

/// A 403 to a `HEAD` has no body to say why: a `GET` of the same URL that
/// is refused too lends the error its body, as containerd does, both when
/// resolving and in a push's check for what the registry has.
#[tokio::test]
async fn a_refused_head_is_explained_by_the_body_of_a_refused_get() {
    let (_registry, proxy, pushed) = setup("faults/denied").await;
    let denied = r#"{"errors":[{"code":"DENIED","message":"key vault access denied"}]}"#;
    for method in ["HEAD", "GET"] {
        for path in ["/manifests/1", "/blobs/"] {
            let fault = Fault::Answer {
                status: 403,
                body: denied.into(),
            };
            proxy.add(Some(method), path, usize::MAX, fault);
        }
    }
    let explained = |err: &Error| {
        let said = Report::new(err).to_string();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{said}");
        assert!(
            said.starts_with("HEAD ") && said.contains("403") && said.contains("key vault"),
            "{said}"
        );
    };
    let resolver = DockerResolver::new();
    let err = resolver
        .resolve(&format!("{}/faults/denied:1", proxy.host()))
        .await
        .unwrap_err();
    explained(&err);

    let pusher = resolver
        .pusher(&format!("{}/faults/denied:2", proxy.host()))
        .await
        .unwrap();
    match pusher.push(&pushed[0].desc).await {
        Err(err) => explained(&err),
        Ok(_) => panic!("a refused existence check refuses the push"),
    }
}

/// What a registry says in an error body reaches the error with its
/// control characters escaped, in a plain body or the specification's JSON:
/// the error is shown on a terminal a hostile server must not drive.
#[tokio::test]
async fn an_error_body_cannot_send_escape_sequences_to_the_terminal() {
    let (_registry, proxy, _) = setup("faults/escapes").await;
    let resolver = DockerResolver::new();
    let reference = format!("{}/faults/escapes:1", proxy.host());
    for body in [
        "\x1b]0;PWNED\x07\x1b[2J denied\r\nfor you".to_string(),
        r#"{"errors":[{"code":"DENIED","message":"\u001b]0;PWNED\u0007\u001b[2J denied"}]}"#
            .to_string(),
    ] {
        for method in ["HEAD", "GET"] {
            let fault = Fault::Answer {
                status: 403,
                body: body.clone(),
            };
            proxy.add(Some(method), "/manifests/1", 1, fault);
        }
        let said = resolver.resolve(&reference).await.unwrap_err().to_string();
        assert!(!said.chars().any(char::is_control), "{said:?}");
        assert!(
            said.contains(r"\u{1b}]0;PWNED\u{7}\u{1b}[2J denied"),
            "{said}"
        );
    }
}

/// Registries that answer 200 or 204 where the specification says 201 or
/// 202 (containerd accepts these too) still take a push, whole and right.
#[tokio::test]
async fn a_push_accepts_the_statuses_registries_really_send() {
    let registry = registry();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.add(
        Some("POST"),
        "/blobs/uploads/",
        100,
        Fault::ReplaceStatus(200),
    );
    proxy.add(
        Some("PUT"),
        "/blobs/uploads/",
        100,
        Fault::ReplaceStatus(204),
    );
    proxy.add(Some("PUT"), "/manifests/", 100, Fault::ReplaceStatus(204));
    let resolver = DockerResolver::new();
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &format!("{}/lenient/app", proxy.host()),
        "1",
    )
    .await;
    let puts = proxy.log().iter().filter(|l| l.starts_with("PUT ")).count();
    assert_eq!(puts, pushed.len(), "every blob and manifest went through");
    let blob_count = pushed.len() - 3;
    assert_eq!(
        proxy.faults_applied(),
        2 * blob_count + 3,
        "each blob's POST and PUT and each manifest's PUT answered otherwise"
    );

    // Read back from the registry itself: every object is there.
    let repo = format!("{}/lenient/app", registry.host());
    let (_, index) = resolver.resolve(&format!("{repo}:1")).await.unwrap();
    assert_eq!(index.digest(), pushed.last().unwrap().desc.digest());
    let fetcher = resolver.fetcher(&repo).await.unwrap();
    for blob in &pushed {
        assert_eq!(fetch_all(fetcher.as_ref(), &blob.desc, 0).await, blob.bytes);
    }
}

/// An upload that fails on its way (here a 503 for the `PUT` that carries
/// the blob) is sent again through a new session; one that keeps failing
/// ends, after three attempts, in a typed error.
#[tokio::test]
async fn a_failed_upload_is_sent_again_through_a_new_session() {
    let registry = registry();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let resolver = DockerResolver::new();
    let repo = format!("{}/faults/upload", proxy.host());
    let unavailable = Fault::Status {
        status: 503,
        retry_after: None,
    };
    let blobs = image(false, "linux/amd64", 100_000);
    let layer = &blobs[0];
    let pusher = resolver.pusher(&format!("{repo}:1")).await.unwrap();
    proxy.add(Some("PUT"), "/blobs/uploads/", 1, unavailable.clone());
    push_all(pusher.as_ref(), std::slice::from_ref(layer)).await;
    let posts = |log: &[String]| log.iter().filter(|l| l.starts_with("POST ")).count();
    assert_eq!(posts(&proxy.log()), 2, "{:#?}", proxy.log());
    let fetcher = resolver.fetcher(&repo).await.unwrap();
    assert_eq!(
        fetch_all(fetcher.as_ref(), &layer.desc, 0).await,
        layer.bytes
    );

    let config = &blobs[1];
    // The config's failed push: its error and the requests it made.
    let failed_push = async || {
        let before = proxy.log().len();
        let mut writer = pusher.push(&config.desc).await.unwrap();
        writer.write_all(&config.bytes).await.unwrap();
        let err = writer
            .commit(None, None, ocidist_content::Labels::new())
            .await
            .unwrap_err();
        (err, proxy.log()[before..].to_vec())
    };
    proxy.add(Some("PUT"), "/blobs/uploads/", 3, unavailable);
    let (err, log) = failed_push().await;
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(Report::new(&err).to_string().contains("503"), "{err}");
    assert_eq!(posts(&log), 3, "{log:#?}");
    assert_eq!(proxy.faults_applied(), 4);
    // Each failed session let go of; the registry asked once more at the end.
    let deletes = |log: &[String]| log.iter().filter(|l| l.starts_with("DELETE ")).count();
    assert_eq!(deletes(&log), 3, "{log:#?}");
    assert!(log.last().unwrap().starts_with("HEAD "), "{log:#?}");

    // A refusal another attempt would not change ends the push at once, and
    // its session is let go of all the same.
    let refused = Fault::Answer {
        status: 400,
        body: r#"{"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"no"}]}"#.into(),
    };
    proxy.add(Some("PUT"), "/blobs/uploads/", 1, refused);
    let (err, log) = failed_push().await;
    assert!(Report::new(&err).to_string().contains("400"), "{err}");
    assert_eq!((posts(&log), deletes(&log)), (1, 1), "{log:#?}");
    // The session's own URL: the closing PUT's without its `digest`.
    let put = log[log.len() - 2].split(' ').nth(1).unwrap();
    let delete = log.last().unwrap().strip_prefix("DELETE ").unwrap();
    let delete = delete.split(' ').next().unwrap();
    assert!(
        put.starts_with(delete) && put.contains("digest=") && !delete.contains("digest="),
        "the refused session let go of: {log:#?}"
    );
}

/// An upload the registry took whose answer was lost on the way back is
/// not sent again: the registry is asked whether it has the blob first.
#[tokio::test]
async fn an_upload_whose_answer_was_lost_is_found_not_sent_again() {
    let registry = registry();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let resolver = DockerResolver::new();
    let repo = format!("{}/faults/lost-answer", proxy.host());
    let layer = &image(false, "linux/amd64", 100_000)[0];
    let pusher = resolver.pusher(&format!("{repo}:1")).await.unwrap();
    proxy.add(Some("PUT"), "/blobs/uploads/", 1, Fault::DropAnswer);
    push_all(pusher.as_ref(), std::slice::from_ref(layer)).await;
    let log = proxy.log();
    let sent = |method: &str| log.iter().filter(|l| l.starts_with(method)).count();
    assert_eq!((sent("POST "), sent("PUT ")), (1, 1), "{log:#?}");
    assert!(
        log.last().unwrap().starts_with("HEAD ") && log.last().unwrap().contains("/blobs/sha256:"),
        "{log:#?}"
    );
    let fetcher = resolver.fetcher(&repo).await.unwrap();
    assert_eq!(
        fetch_all(fetcher.as_ref(), &layer.desc, 0).await,
        layer.bytes
    );
}

/// A registry that goes silent mid-layer (the connection open, nothing
/// sent) is given up on after the idle-read timeout, and the download
/// resumes from the bytes already written rather than waiting on it.
#[tokio::test]
async fn a_stalled_download_times_out_and_resumes_from_its_offset() {
    let (_registry, proxy, pushed) = setup("faults/stall").await;
    let layer = &pushed[3];
    let blob_path = format!("/blobs/{}", layer.desc.digest());
    let hold = Duration::from_secs(60);
    proxy.add(
        Some("GET"),
        &blob_path,
        1,
        Fault::Stall {
            after: 70_000,
            hold,
        },
    );
    // Long enough that a loaded machine's pauses are not taken for a stall.
    let resolver = DockerResolver::new()
        .timeouts(Duration::from_secs(5), Duration::from_secs(3))
        .unwrap();
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/stall:1", proxy.host());
    let started = Instant::now();
    fetch_arm64(&resolver, &store, &images, &reference)
        .await
        .expect("the stalled download is resumed");
    assert!(
        started.elapsed() < hold / 2,
        "given up on by the timeout, not when the server closed: {:?}",
        started.elapsed()
    );
    assert_whole(&store, layer).await;
    let gets = gets_of(&proxy, &blob_path);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert!(gets[1].contains("range=bytes=70000-"), "{gets:#?}");
}

/// A registry that accepts the request and never answers is asked once
/// more after the idle-read timeout, not until the attempts run out (five
/// timeouts of 60 s by default would keep a caller five minutes), and the
/// error names the limit that ran out and the attempts.
#[tokio::test]
async fn a_registry_that_never_answers_is_asked_twice_and_the_error_says_how_long() {
    let (_registry, proxy, _pushed) = setup("faults/silent").await;
    let silent = Fault::Silent {
        hold: Duration::from_secs(20),
    };
    proxy.add(Some("HEAD"), "/manifests/", usize::MAX, silent);
    let resolver = DockerResolver::new()
        .timeouts(Duration::from_secs(5), Duration::from_secs(1))
        .unwrap();
    let reference = format!("{}/faults/silent:1", proxy.host());
    let started = Instant::now();
    let err = resolver.resolve(&reference).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        Report::new(&err)
            .to_string()
            .ends_with("/manifests/1: timed out: nothing received for 1s (2 attempts)"),
        "{err}"
    );
    assert_eq!(requests_to(&proxy, "/manifests/1"), 2, "{:#?}", proxy.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "given up on after two timeouts, not when the server closed: {:?}",
        started.elapsed()
    );
}

/// A blob whose GET is never answered ends the fetch after the request's
/// two timeouts: the fetch does not download it again (each time asked
/// twice), as it resumes a stream that broke.
#[tokio::test]
async fn a_blob_never_answered_is_not_downloaded_again_after_its_timeouts() {
    let (_registry, proxy, pushed) = setup("faults/silent-blob").await;
    let layer = &pushed[3];
    let blob_path = format!("/blobs/{}", layer.desc.digest());
    let silent = Fault::Silent {
        hold: Duration::from_secs(20),
    };
    proxy.add(Some("GET"), &blob_path, usize::MAX, silent);
    let resolver = DockerResolver::new()
        .timeouts(Duration::from_secs(5), Duration::from_secs(1))
        .unwrap();
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/silent-blob:1", proxy.host());
    let err = fetch_arm64(&resolver, &store, &images, &reference)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        Report::new(&err)
            .to_string()
            .contains("timed out: nothing received for 1s (2 attempts)"),
        "{err}"
    );
    assert_eq!(gets_of(&proxy, &blob_path).len(), 2, "{:#?}", proxy.log());
    assert!(store.info(layer.desc.digest()).await.is_err());
}

/// A limit a test can reach in a second: 4 KiB a second.
const LOW_SPEED: LowSpeedLimit = LowSpeedLimit {
    min_bytes: 4 << 10,
    window: Duration::from_secs(1),
};

/// Makes the proxy send `blob` 16 bytes at a time, 320 a second, the next
/// `times` it is asked for; its path.
fn trickle(proxy: &FaultProxy, blob: &common::Blob, times: usize) -> String {
    let blob_path = format!("/blobs/{}", blob.desc.digest());
    let drip = Fault::Drip {
        chunk: 16,
        delay: Duration::from_millis(50),
    };
    proxy.add(Some("GET"), &blob_path, times, drip);
    blob_path
}

/// A registry that trickles a layer (a few bytes at a time, never idle long
/// enough for the idle-read timeout) is given up on at the end of a window
/// under the low-speed limit, and the download resumes from the bytes the
/// trickle brought.
#[tokio::test]
async fn a_trickling_download_is_given_up_on_at_the_low_speed_limit_and_resumed() {
    let (_registry, proxy, pushed) = setup("faults/trickle").await;
    let layer = &pushed[3];
    let blob_path = trickle(&proxy, layer, 1);
    let resolver = DockerResolver::new().low_speed_limit(LOW_SPEED);
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/trickle:1", proxy.host());
    fetch_arm64(&resolver, &store, &images, &reference)
        .await
        .expect("the trickle is given up on and the download resumed");
    assert_whole(&store, layer).await;
    let gets = gets_of(&proxy, &blob_path);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    let resumed_at: u64 = gets[1]
        .split("range=bytes=")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("resumed with a range: {gets:#?}"));
    assert!(
        resumed_at > 0 && resumed_at < 4 << 10,
        "resumed from the trickle's bytes: {gets:#?}"
    );
}

/// A registry that trickles every time ends the fetch in a typed error
/// after four windows, rather than keeping it for as long as it likes
/// because each attempt brought a few bytes; nothing is committed.
#[tokio::test]
async fn a_registry_that_always_trickles_ends_the_fetch_after_four_attempts() {
    let (_registry, proxy, pushed) = setup("faults/trickle-always").await;
    let layer = &pushed[3];
    let blob_path = trickle(&proxy, layer, usize::MAX);
    let resolver = DockerResolver::new().low_speed_limit(LOW_SPEED);
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/trickle-always:1", proxy.host());
    let err = fetch_arm64(&resolver, &store, &images, &reference)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        Report::new(&err)
            .to_string()
            .contains("under the low-speed limit of 4096 bytes per 1s"),
        "{err}"
    );
    assert_eq!(gets_of(&proxy, &blob_path).len(), 4, "{:#?}", proxy.log());
    assert!(store.info(layer.desc.digest()).await.is_err());
}

/// A registry that sends a little of a layer and then goes silent, every
/// time, ends the fetch after four attempts in a typed error: each attempt
/// brought bytes, but too few for the time it was waited on, so none counts
/// as progress (else it could hold a fetch for size / bytes-per-attempt idle
/// timeouts), and the error names the idle-read limit that ran out. Nothing
/// is committed.
#[tokio::test]
async fn a_registry_that_sends_a_little_then_stalls_every_time_ends_the_fetch() {
    let (_registry, proxy, pushed) = setup("faults/stall-always").await;
    let layer = &pushed[3];
    let blob_path = format!("/blobs/{}", layer.desc.digest());
    let stall = Fault::Stall {
        after: 1000,
        hold: Duration::from_secs(30),
    };
    proxy.add(Some("GET"), &blob_path, usize::MAX, stall);
    let resolver = DockerResolver::new()
        .timeouts(Duration::from_secs(5), Duration::from_secs(2))
        .unwrap()
        .low_speed_limit(LOW_SPEED);
    let (_dir, store, images) = stores();
    let reference = format!("{}/faults/stall-always:1", proxy.host());
    // Bounded: without the rule the fetch would go on for many minutes.
    let fetched = tokio::time::timeout(
        Duration::from_secs(60),
        fetch_arm64(&resolver, &store, &images, &reference),
    )
    .await;
    let gets = gets_of(&proxy, &blob_path);
    let Ok(fetched) = fetched else {
        panic!("still fetching after 60 s: {} GETs", gets.len());
    };
    let err = fetched.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        Report::new(&err).to_string().contains("1000 bytes in")
            && Report::new(&err).to_string().contains(
                "under the low-speed limit of 4096 bytes per 1s, before the body failed:"
            )
            && Report::new(&err)
                .to_string()
                .ends_with("timed out: nothing received for 2s"),
        "{err}"
    );
    assert_eq!(gets.len(), 4, "{gets:#?}");
    assert!(store.info(layer.desc.digest()).await.is_err());
}

/// A manifest trickled in answer to resolve's GET (a registry refusing HEAD)
/// fails the resolve at the low-speed limit.
#[tokio::test]
async fn a_manifest_that_trickles_fails_the_resolve_at_the_low_speed_limit() {
    let (_registry, proxy, _pushed) = setup("faults/trickle-manifest").await;
    let refused = Fault::Status {
        status: 405,
        retry_after: None,
    };
    proxy.add(Some("HEAD"), "/manifests/", usize::MAX, refused);
    let trickle = Fault::Drip {
        chunk: 1,
        delay: Duration::from_millis(50),
    };
    proxy.add(Some("GET"), "/manifests/", usize::MAX, trickle);
    let reference = format!("{}/faults/trickle-manifest:1", proxy.host());
    let started = Instant::now();
    let err = DockerResolver::new()
        .low_speed_limit(LOW_SPEED)
        .resolve(&reference)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooSlow { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A fetch dropped while its blobs stream (a timeout, a sibling's failure)
/// stops them all: the downloads that ran on tasks of their own are stopped
/// with it, and release their ingests at once, not when their streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_dropped_mid_stream_releases_every_ingest_it_held() {
    let (_registry, proxy, pushed) = setup("faults/dropped").await;
    let (layer, config) = (&pushed[3], &pushed[4]);
    // Both stream for far longer than the release may take: 4 bytes of
    // the config, 4 KiB of the layer, every second.
    for (blob, chunk) in [(config, 4), (layer, 4 << 10)] {
        let drip = Fault::Drip {
            chunk,
            delay: Duration::from_secs(1),
        };
        proxy.add(
            Some("GET"),
            &format!("/blobs/{}", blob.desc.digest()),
            1,
            drip,
        );
    }
    let (_dir, store, images) = stores();
    let resolver = DockerResolver::new();
    let reference = format!("{}/faults/dropped:1", proxy.host());
    let refs = [layer, config].map(|b| ocidist_remotes::ingest_ref(&b.desc));
    let mut fetch = Box::pin(fetch_arm64(&resolver, &store, &images, &reference));
    let both_streaming = async {
        while gets_of(&proxy, "/blobs/").len() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Past their response headers, into the drip: the second to start
        // found the first streaming, and runs on a task of its own.
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::select! {
        fetched = &mut fetch => panic!("the fetch ended while dripping: {fetched:?}"),
        () = both_streaming => {}
    }
    drop(fetch);
    for reference in &refs {
        let deadline = Instant::now() + Duration::from_secs(10);
        let writer = loop {
            match store.writer(WriterOpts::new(reference)).await {
                Err(e) if e.kind() == ErrorKind::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                opened => break opened,
            }
        };
        writer.unwrap_or_else(|e| panic!("{reference} still held after the fetch went: {e}"));
    }
}
