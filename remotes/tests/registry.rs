//! Round trips through the real CNCF distribution registry: push images built
//! here (OCI and Docker media types, a multi-platform index), resolve them,
//! fetch them back byte for byte.

mod common;

use common::{Blob, blob, fetch_all, image, push_all, push_multi, push_multi_as, registry, stores};
use futures::TryStreamExt;
use ocidist_content::{ErrorKind, Labels, Manager, sha256_of};
use ocidist_images::platforms::{Platform, all, only};
use ocidist_remotes::docker::{DockerResolver, fetch_object};
use ocidist_remotes::testkit::Fault;
use ocidist_remotes::{Resolver, fetch_image};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn push_resolve_and_fetch_back_byte_identical() {
    let registry = registry();
    let resolver = DockerResolver::new();
    for docker in [false, true] {
        let repo = format!(
            "{}/test/{}",
            registry.host(),
            if docker { "docker" } else { "oci" }
        );
        let blobs = image(docker, "linux/amd64", 300_000);
        let manifest = &blobs[2].desc;
        let pusher = resolver
            .pusher(&format!("{repo}:v1@{}", manifest.digest()))
            .await
            .unwrap();
        push_all(pusher.as_ref(), &blobs).await;

        let (name, desc) = resolver.resolve(&format!("{repo}:v1")).await.unwrap();
        assert_eq!(name, format!("{repo}:v1"));
        assert_eq!(
            (desc.digest(), desc.size(), desc.media_type()),
            (manifest.digest(), manifest.size(), manifest.media_type())
        );

        let fetcher = resolver.fetcher(&format!("{repo}:v1")).await.unwrap();
        for b in &blobs {
            assert!(
                fetch_all(fetcher.as_ref(), &b.desc, 0).await == b.bytes,
                "{}",
                b.desc.digest()
            );
        }
        // A resumed download asks for the rest with Range.
        let layer = &blobs[0];
        assert!(fetch_all(fetcher.as_ref(), &layer.desc, 123_456).await == layer.bytes[123_456..]);
    }
}

/// A manifest the repository has already is still put under a new tag, and
/// a tag that names another image is moved; only a tag that already names
/// this manifest is left alone.
#[tokio::test]
async fn pushing_a_manifest_the_repository_has_still_sets_the_tag() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/tags", registry.host());
    let first = image(false, "linux/amd64", 1000);
    let second = image(false, "linux/arm64", 2000);
    let push = async |tag: &str, blobs: &[common::Blob]| {
        let pusher = resolver.pusher(&format!("{repo}:{tag}")).await.unwrap();
        push_all(pusher.as_ref(), blobs).await;
    };
    let tagged = async |tag: &str| {
        let (_, desc) = resolver.resolve(&format!("{repo}:{tag}")).await.unwrap();
        desc.digest().clone()
    };
    push("a", &first).await;
    push("b", &first).await;
    assert_eq!(tagged("b").await, *first[2].desc.digest(), "a second tag");
    push("a", &second).await;
    assert_eq!(
        tagged("a").await,
        *second[2].desc.digest(),
        "a tag moved on"
    );
    push("a", &first).await;
    assert_eq!(tagged("a").await, *first[2].desc.digest(), "and back");

    let pusher = resolver.pusher(&format!("{repo}:a")).await.unwrap();
    let err = pusher
        .push(&first[2].desc)
        .await
        .err()
        .expect("already tagged");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
}

#[tokio::test]
async fn a_multi_platform_index_round_trips_and_digest_references_are_verified() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/multi", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "latest",
    )
    .await;
    let index = &pushed[6];
    let manifests = [&pushed[2].desc, &pushed[5].desc];
    let all = &pushed[..6];
    let (_, by_tag) = resolver.resolve(&format!("{repo}:latest")).await.unwrap();
    assert_eq!(by_tag.digest(), index.desc.digest());
    let (_, by_digest) = resolver
        .resolve(&format!("{repo}@{}", index.desc.digest()))
        .await
        .unwrap();
    assert_eq!(by_digest.digest(), index.desc.digest());
    assert_eq!(by_digest.media_type(), index.desc.media_type());
    // A child manifest was pushed by digest, not onto the tag.
    let (_, child) = resolver
        .resolve(&format!("{repo}@{}", manifests[1].digest()))
        .await
        .unwrap();
    assert_eq!(child.size(), manifests[1].size());
    // A digest that names a blob resolves too.
    let (_, layer) = resolver
        .resolve(&format!("{repo}@{}", all[0].desc.digest()))
        .await
        .unwrap();
    assert_eq!(layer.size(), all[0].desc.size());
}

/// A Docker manifest list of schema 2 manifests: resolved by tag with its
/// own media type, and fetched through the image pipeline, one platform or
/// all, byte for byte.
#[tokio::test]
async fn a_docker_manifest_list_round_trips_through_the_fetch_pipeline() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/docker-list", registry.host());
    let pushed = push_multi_as(
        true,
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "1",
    )
    .await;
    let list = &pushed[6];
    let reference = format!("{repo}:1");
    let (_, desc) = resolver.resolve(&reference).await.unwrap();
    assert_eq!(desc.digest(), list.desc.digest());
    assert_eq!(
        desc.media_type().to_string(),
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );

    let (_dir, store, images) = stores();
    let arm64: Platform = "linux/arm64".parse().unwrap();
    fetch_image(
        &resolver,
        &store,
        &images,
        &reference,
        only(&arm64),
        1,
        None,
        None,
    )
    .await
    .unwrap();
    let has = async |blob: &Blob| store.info(blob.desc.digest()).await.is_ok();
    // The arm64 image (pushed second) and the list; not the amd64 image.
    for blob in &pushed[3..] {
        assert!(has(blob).await, "{}", blob.desc.media_type());
    }
    for blob in &pushed[..3] {
        assert!(!has(blob).await, "{}", blob.desc.media_type());
    }

    // Pushed back, the list needs the manifest the store never got; its
    // arm64 manifest goes alone.
    let copy = format!("{}/test/docker-list-copy:arm64", registry.host());
    let err = ocidist_remotes::push_image(&resolver, &store, &copy, &desc, 4, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        matches!(&err, ocidist_remotes::Error::MissingManifest { digest, listed_by, .. }
            if digest == pushed[2].desc.digest() && listed_by == desc.digest()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains(&format!(
            "the store lacks manifest {} (platform linux/amd64), which index {} lists",
            pushed[2].desc.digest(),
            desc.digest()
        )),
        "{message}"
    );
    let one = ocidist_images::manifest::manifest(&store, &desc, &only(&arm64))
        .await
        .unwrap();
    ocidist_remotes::push_image(&resolver, &store, &copy, &one.descriptor, 4, None)
        .await
        .unwrap();
    let (_, copied) = resolver.resolve(&copy).await.unwrap();
    assert_eq!(copied.digest(), pushed[5].desc.digest());

    fetch_image(&resolver, &store, &images, &reference, all(), 0, None, None)
        .await
        .unwrap();
    for blob in &pushed {
        let bytes = ocidist_content::read_blob(&store, &blob.desc, 1 << 20)
            .await
            .unwrap();
        assert!(bytes == blob.bytes, "{}", blob.desc.media_type());
    }
}

#[tokio::test]
async fn existing_content_concurrent_pushes_and_wrong_bytes() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/rules", registry.host());
    let pusher = resolver.pusher(&format!("{repo}:x")).await.unwrap();
    let layer = blob("application/vnd.oci.image.layer.v1.tar", vec![7; 4096]);

    // Two pushes of one blob through one pusher: the second waits its turn.
    let mut first = pusher.push(&layer.desc).await.unwrap();
    let err = pusher
        .push(&layer.desc)
        .await
        .err()
        .expect("the second must be refused");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    // So through another pusher of the same resolver (another tag of the
    // image), while one to another repository goes ahead.
    let another = resolver.pusher(&format!("{repo}:y")).await.unwrap();
    let err = another
        .push(&layer.desc)
        .await
        .err()
        .expect("a second pusher's push must be refused too");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let elsewhere = resolver
        .pusher(&format!("{}/test/rules-elsewhere:x", registry.host()))
        .await
        .unwrap();
    drop(elsewhere.push(&layer.desc).await.unwrap());
    first.write_all(&layer.bytes).await.unwrap();
    first.commit(None, None, Labels::new()).await.unwrap();
    drop(first);

    let err = pusher.push(&layer.desc).await.err().expect("already there");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    // Wrong bytes fail locally and never reach the registry.
    let other = blob("application/vnd.oci.image.layer.v1.tar", vec![8; 4096]);
    let mut w = pusher.push(&other.desc).await.unwrap();
    w.write_all(&[9; 4096]).await.unwrap();
    let err = w.commit(None, None, Labels::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    drop(w);
    let status = ocidist_remotes::testkit::get_status(
        registry.addr(),
        &format!("/v2/test/rules/blobs/{}", other.desc.digest()),
    )
    .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fetch_object_streams_manifests_by_tag_and_blobs_by_digest() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/library/redis", registry.host());
    let blobs = image(true, "linux/amd64", 1000);
    let pusher = resolver.pusher(&format!("{repo}:latest")).await.unwrap();
    push_all(pusher.as_ref(), &blobs).await;

    let (desc, stream) = fetch_object(&resolver, &repo, "latest", &[]).await.unwrap();
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let bytes = bytes.concat();
    assert_eq!(
        sha256_of(&bytes),
        *desc.digest(),
        "the bytes hash to the digest resolve reports"
    );
    assert_eq!(bytes, blobs[2].bytes);

    let layer = &blobs[0].desc;
    let (desc, stream) = fetch_object(
        &resolver,
        &repo,
        layer.digest().as_ref(),
        &["mediatype:application/x-test"],
    )
    .await
    .unwrap();
    assert_eq!(desc.media_type().to_string(), "application/x-test");
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), blobs[0].bytes);

    // The registry answers a blob's digest under manifests/ with 500:
    // asked once, then the blob, with no backoff in between.
    let proxy = ocidist_remotes::testkit::FaultProxy::start(registry.addr()).unwrap();
    let proxied = format!("{}/library/redis", proxy.host());
    let (_, stream) = fetch_object(&resolver, &proxied, layer.digest().as_ref(), &[])
        .await
        .unwrap();
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), blobs[0].bytes);
    let asked: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|line| line != "GET /v2/")
        .map(|line| {
            line.split(" /v2/library/redis/")
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let digest = layer.digest();
    assert_eq!(
        asked,
        [
            format!("HEAD manifests/{digest}"),
            format!("HEAD blobs/{digest}"),
            format!("GET blobs/{digest}"),
        ],
        "{:?}",
        proxy.log()
    );

    // A hint of another manifest type: the manifest's own bytes, by
    // digest, under the hinted type.
    let oci = image(false, "linux/arm64", 1000);
    let pusher = resolver.pusher(&format!("{repo}:oci")).await.unwrap();
    push_all(pusher.as_ref(), &oci).await;
    let manifest = &oci[2];
    let (desc, stream) = fetch_object(
        &resolver,
        &repo,
        manifest.desc.digest().as_ref(),
        &["mediatype:application/vnd.oci.image.index.v1+json"],
    )
    .await
    .unwrap();
    assert_eq!(
        desc.media_type().to_string(),
        "application/vnd.oci.image.index.v1+json"
    );
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), manifest.bytes);

    // A tag in the locator beside the object: refused before any request.
    let Err(err) = fetch_object(&resolver, &format!("{repo}:v1"), "latest", &[]).await else {
        panic!("a locator with a tag is refused");
    };
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains(":v1"), "{err}");

    let err = resolver
        .resolve(&format!("{repo}:missing"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[tokio::test]
async fn a_large_blob_is_pushed_in_chunks_going_on_after_a_failed_one_and_fetched_back() {
    let registry = registry();
    let resolver = DockerResolver::new();
    // Over the 64 MiB single-PUT limit: PATCH chunks of 64 and 6 MiB.
    let bytes: Vec<u8> = (0..(70u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let big = blob("application/vnd.oci.image.layer.v1.tar", bytes);
    // Through a counting proxy: HEAD, POST, 2 PATCH and the closing PUT,
    // answered 204 and 200 as some registries do instead of 202 and 201.
    // The second PATCH fails once (503), each time; `then` more follow.
    let proxy = ocidist_remotes::testkit::FaultProxy::start(registry.addr()).unwrap();
    let chunks_with_the_second_failing = |then| {
        let patch = |times, fault| proxy.add(Some("PATCH"), "/blobs/uploads/", times, fault);
        patch(1, Fault::ReplaceStatus(204));
        let unavailable = Fault::Status {
            status: 503,
            retry_after: None,
        };
        patch(1, unavailable);
        patch(then, Fault::ReplaceStatus(204));
        proxy.add(Some("PUT"), "/blobs/uploads/", 1, Fault::ReplaceStatus(200));
    };
    let pushed_to = async |repo: &str| {
        let before = proxy.log().len();
        let pusher = resolver
            .pusher(&format!("{}/{repo}:x", proxy.host()))
            .await
            .unwrap();
        push_all(pusher.as_ref(), std::slice::from_ref(&big)).await;
        let fetcher = resolver
            .fetcher(&format!("{}/{repo}:x", registry.host()))
            .await
            .unwrap();
        let back = fetch_all(fetcher.as_ref(), &big.desc, 0).await;
        assert!(back.len() == big.bytes.len() && sha256_of(&back) == *big.desc.digest());
        let methods: Vec<String> = proxy.log()[before..]
            .iter()
            .filter(|l| l.contains("/blobs/"))
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect();
        methods.join(" ")
    };

    // The session is asked what it has (GET: the first 64 MiB), and the
    // upload goes on from there.
    chunks_with_the_second_failing(1);
    assert_eq!(
        pushed_to("test/large").await,
        "HEAD POST PATCH PATCH GET PATCH PUT",
        "{:#?}",
        proxy.log()
    );

    // A session that cannot say is let go of (DELETE), the registry asked
    // whether it has the blob (HEAD), and the upload starts again through a
    // new session.
    chunks_with_the_second_failing(2);
    proxy.add(
        Some("GET"),
        "/blobs/uploads/",
        1,
        Fault::Answer {
            status: 404,
            body: String::new(),
        },
    );
    assert_eq!(
        pushed_to("test/large-again").await,
        "HEAD POST PATCH PATCH GET DELETE HEAD POST PATCH PATCH PUT",
        "{:#?}",
        proxy.log()
    );

    // A registry that takes 4 MiB chunks at most (GHCR) refuses 64 MiB and
    // then 16 with 416: each time the session is asked what it has, and 4 MiB
    // chunks follow.
    proxy.add(
        Some("PATCH"),
        "/blobs/uploads/",
        2,
        Fault::Answer {
            status: 416,
            body: r#"{"errors":[{"code":"RANGE_INVALID","message":"the request body is too large and exceeds the maximum permissible limit of 4.00MiB"}]}"#.into(),
        },
    );
    let patches = format!("{}PUT", "PATCH ".repeat(18));
    assert_eq!(
        pushed_to("test/large-ghcr").await,
        format!("HEAD POST PATCH GET PATCH GET {patches}"),
        "{:#?}",
        proxy.log()
    );

    // A registry that asks for chunks of at least 68 MiB when it opens the
    // session (`OCI-Chunk-Min-Length`) gets 68 and the last 2 MiB.
    let chunk_min = |bytes: u64| {
        let header = Fault::SetHeader {
            name: "OCI-Chunk-Min-Length".into(),
            value: bytes.to_string(),
        };
        proxy.add(Some("POST"), "/blobs/uploads/", 1, header);
    };
    chunk_min(68 << 20);
    let before = proxy.heads().len();
    assert_eq!(
        pushed_to("test/large-chunk-min").await,
        "HEAD POST PATCH PATCH PUT",
        "{:#?}",
        proxy.log()
    );
    let patch_lengths: Vec<String> = proxy.heads()[before..]
        .iter()
        .filter(|head| head[0].starts_with("PATCH "))
        .filter_map(|head| {
            let length = head
                .iter()
                .find(|line| line.to_ascii_lowercase().starts_with("content-length:"))?;
            Some(length[15..].trim().to_string())
        })
        .collect();
    let mib = |n: u64| (n << 20).to_string();
    assert_eq!(patch_lengths, [mib(68), mib(2)]);

    // One asking for chunks larger than the blob gets it in one streamed
    // PUT.
    chunk_min(100 << 20);
    assert_eq!(
        pushed_to("test/large-chunk-min-huge").await,
        "HEAD POST PUT",
        "{:#?}",
        proxy.log()
    );
}

/// A provider lending blobs from memory, counting the readers it opens.
struct Lender {
    blobs: std::collections::HashMap<ocidist_content::Digest, Vec<u8>>,
    opened: std::sync::atomic::AtomicUsize,
    /// Reads from this offset on fail, as a disk's would (EIO).
    fails_from: Option<u64>,
}

impl Lender {
    /// Lends `bytes` as the blob of each `(blob, bytes)`.
    fn new<'a>(lent: impl IntoIterator<Item = (&'a Blob, Vec<u8>)>) -> Lender {
        Lender {
            blobs: lent
                .into_iter()
                .map(|(b, bytes)| (b.desc.digest().clone(), bytes))
                .collect(),
            opened: Default::default(),
            fails_from: None,
        }
    }
}

#[async_trait::async_trait]
impl ocidist_content::Provider for Lender {
    async fn reader_at(
        &self,
        desc: &ocidist_content::Descriptor,
    ) -> ocidist_content::Result<Box<dyn ocidist_content::ReaderAt>> {
        self.opened
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let bytes = self.blobs.get(desc.digest()).expect("a lent blob").clone();
        Ok(Box::new(Lent(bytes, self.fails_from)))
    }
}

struct Lent(Vec<u8>, Option<u64>);

#[async_trait::async_trait]
impl ocidist_content::ReaderAt for Lent {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> ocidist_content::Result<usize> {
        if self.1.is_some_and(|from| offset + buf.len() as u64 > from) {
            let eio = std::io::Error::from_raw_os_error(libc::EIO);
            return Err(ocidist_content::Error::io("read", "/lent/blob", eio));
        }
        let rest = self.0.get(offset as usize..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }

    fn into_async_read(self: Box<Self>) -> std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> {
        Box::pin(std::io::Cursor::new(self.0))
    }
}

/// A push from a provider reads the blob where it is, with no spooled copy
/// (the resolver's spool directory does not even exist), and hashes it as
/// it goes: bytes that are not the blob's never complete an upload, in one
/// `PUT` or in chunks; a chunk sent again after a failure is hashed once;
/// and a blob the registry has is not read at all.
#[tokio::test]
async fn a_push_from_a_provider_keeps_no_copy_and_never_lands_wrong_bytes() {
    let registry = registry();
    let proxy = ocidist_remotes::testkit::FaultProxy::start(registry.addr()).unwrap();
    let resolver = DockerResolver::new().spool_dir("/nonexistent/ocidist-spool");
    let pusher = resolver
        .pusher(&format!("{}/test/lent:x", proxy.host()))
        .await
        .unwrap();
    let layer = "application/vnd.oci.image.layer.v1.tar";
    let small = blob(layer, vec![5; 4096]);
    // Over the 64 MiB single-PUT limit: PATCH chunks of 64 and 6 MiB.
    let large = blob(
        layer,
        (0..(70u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect(),
    );
    let in_registry_at = |repo: &str, b: &Blob| {
        let path = format!("/v2/{repo}/blobs/{}", b.desc.digest());
        ocidist_remotes::testkit::get_status(registry.addr(), &path).unwrap() == 200
    };
    let in_registry = |b: &Blob| in_registry_at("test/lent", b);
    // The requests on `repo`'s blobs since the log held `before` lines: an
    // aborted request of another repository's push may be logged late.
    let methods_since = |before: usize, repo: &str| {
        let blobs = format!("/v2/{repo}/blobs/");
        proxy.log()[before..]
            .iter()
            .filter(|l| l.contains(&blobs))
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    // A writer would need the spool.
    assert!(pusher.push(&small.desc).await.is_err());

    // The last byte wrong: everything else is sent before it is known.
    let last_flipped = |b: &Blob| {
        let mut bytes = b.bytes.clone();
        *bytes.last_mut().unwrap() ^= 1;
        bytes
    };
    let wrong = Lender::new([
        (&small, last_flipped(&small)),
        (&large, last_flipped(&large)),
    ]);
    // Each in a repository of its own: see `methods_since`.
    for (b, repo) in [(&small, "test/lent-small"), (&large, "test/lent-large")] {
        let pusher = resolver
            .pusher(&format!("{}/{repo}:x", proxy.host()))
            .await
            .unwrap();
        let before = proxy.log().len();
        let err = pusher.push_from(&b.desc, &wrong).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ocidist_remotes::Error::Content(ocidist_content::Error::DigestMismatch { .. })
            ),
            "{err:?}"
        );
        assert!(!in_registry_at(repo, b), "{}", b.desc.digest());
        // The upload is let go of with one DELETE. The aborted request and
        // the DELETE travel on different connections, so the proxy may log
        // them in either order: compare the rest without it.
        let methods = methods_since(before, repo);
        let sent: Vec<&str> = methods.split(' ').filter(|m| *m != "DELETE").collect();
        assert_eq!(
            methods.split(' ').count() - sent.len(),
            1,
            "let go of: {methods}"
        );
        if b.desc.size() > 64 << 20 {
            assert_eq!(sent.join(" "), "HEAD POST PATCH PATCH", "{methods}");
        } else {
            assert!(sent.join(" ").starts_with("HEAD POST"), "{methods}");
        }
    }
    // A store that cannot be read partway: its error, not the request's.
    let failing = Lender {
        fails_from: Some(2048),
        ..Lender::new([(&small, small.bytes.clone())])
    };
    let err = resolver
        .pusher(&format!("{}/test/lent-failing:x", proxy.host()))
        .await
        .unwrap()
        .push_from(&small.desc, &failing)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ocidist_remotes::Error::Content(ocidist_content::Error::Io { op: "read", .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        ocidist_content::Report::new(&err).to_string(),
        "read /lent/blob: Input/output error (os error 5)"
    );
    assert!(!in_registry_at("test/lent-failing", &small));

    let short = Lender::new([(&small, small.bytes[1..].to_vec())]);
    let err = resolver
        .pusher(&format!("{}/test/lent-short:x", proxy.host()))
        .await
        .unwrap()
        .push_from(&small.desc, &short)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ocidist_remotes::Error::Content(ocidist_content::Error::SizeMismatch { .. })
        ),
        "{err:?}"
    );

    // The right bytes, with the second chunk failing once (503): the
    // session says it has the first, and the second is sent again.
    let right = Lender::new([(&small, small.bytes.clone()), (&large, large.bytes.clone())]);
    let patch = |fault| proxy.add(Some("PATCH"), "/blobs/uploads/", 1, fault);
    patch(Fault::ReplaceStatus(202));
    patch(Fault::Status {
        status: 503,
        retry_after: None,
    });
    for b in [&small, &large] {
        let before = proxy.log().len();
        assert!(pusher.push_from(&b.desc, &right).await.unwrap());
        assert!(in_registry(b), "{}", b.desc.digest());
        if b.desc.size() > 64 << 20 {
            assert_eq!(
                methods_since(before, "test/lent"),
                "HEAD POST PATCH PATCH GET PATCH PUT"
            );
        }
        let fetcher = resolver
            .fetcher(&format!("{}/test/lent:x", registry.host()))
            .await
            .unwrap();
        assert!(fetch_all(fetcher.as_ref(), &b.desc, 0).await == b.bytes);
    }
    // There now: the registry is asked, the provider is not.
    let opened = right.opened.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(opened, 2);
    for b in [&small, &large] {
        assert!(!pusher.push_from(&b.desc, &right).await.unwrap());
    }
    assert_eq!(
        right.opened.load(std::sync::atomic::Ordering::SeqCst),
        opened
    );
}

/// A layer whose media type says "manifest" (OPA's policy layers do) is a
/// blob: pushed to and fetched from `/blobs/`, not `/manifests/`.
#[tokio::test]
async fn a_layer_type_that_says_manifest_is_still_a_blob() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let reference = format!("{}/test/policy:v1", registry.host());
    let layer = blob(
        "application/vnd.cncf.openpolicyagent.manifest.layer.v1+json",
        br#"{"revision":"1","roots":[""]}"#.to_vec(),
    );
    let pusher = resolver.pusher(&reference).await.unwrap();
    push_all(pusher.as_ref(), std::slice::from_ref(&layer)).await;
    let fetcher = resolver.fetcher(&reference).await.unwrap();
    assert_eq!(
        fetch_all(fetcher.as_ref(), &layer.desc, 0).await,
        layer.bytes
    );
    // It is in the registry as a blob.
    let (_, found) = resolver
        .resolve(&format!(
            "{}/test/policy@{}",
            registry.host(),
            layer.desc.digest()
        ))
        .await
        .unwrap();
    assert_eq!(found.size(), layer.desc.size());
}

/// A descriptor's type goes into `Accept` only if it may be a media type:
/// one of 2 MiB (which the registry refuses with 431) or with a line break
/// (which no header can carry) is left out, and the blob is fetched.
#[tokio::test]
async fn a_type_no_media_type_could_be_is_not_sent_in_accept() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let reference = format!("{}/test/hostile-type:v1", registry.host());
    let layer = blob("application/octet-stream", b"a layer".to_vec());
    let pusher = resolver.pusher(&reference).await.unwrap();
    push_all(pusher.as_ref(), std::slice::from_ref(&layer)).await;
    let fetcher = resolver.fetcher(&reference).await.unwrap();
    let huge = format!("application/{}", "x".repeat(2 << 20));
    for hostile in [huge.as_str(), "application/x\r\nX-Injected: 1"] {
        let desc = oci_spec::image::Descriptor::new(
            oci_spec::image::MediaType::Other(hostile.to_string()),
            layer.desc.size(),
            layer.desc.digest().clone(),
        );
        assert_eq!(fetch_all(fetcher.as_ref(), &desc, 0).await, layer.bytes);
    }
}

/// A manifest larger than registries accept is refused before anything is
/// sent, never uploaded cut short.
#[tokio::test]
async fn a_manifest_over_the_limit_is_refused_before_it_is_sent() {
    let registry = registry();
    let proxy = ocidist_remotes::testkit::FaultProxy::start(registry.addr()).unwrap();
    let resolver = DockerResolver::new();
    let reference = format!("{}/test/huge:v1", proxy.host());
    let mut huge = b"{\"schemaVersion\":2,\"annotations\":{\"pad\":\"".to_vec();
    huge.resize(5 << 20, b'x');
    huge.extend_from_slice(b"\"}}");
    let manifest = blob("application/vnd.oci.image.manifest.v1+json", huge);
    let pusher = resolver.pusher(&reference).await.unwrap();
    let err = match pusher.push(&manifest.desc).await {
        Ok(_) => panic!("a {} byte manifest was accepted", manifest.bytes.len()),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        err.to_string().contains(&manifest.bytes.len().to_string()),
        "{err}"
    );
    let sent: Vec<_> = proxy
        .log()
        .into_iter()
        .filter(|l| l.contains("/manifests/"))
        .collect();
    assert!(sent.is_empty(), "{sent:#?}");
}
