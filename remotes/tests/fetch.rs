//! Fetching images from the real registry into a real store: platform
//! selection, skipping what is present, resuming a half-written blob, and two
//! fetches of one image at once.

mod common;

use common::{push_multi, registry, stores};
use ocidist_content::{IngestManager, Ingester, Manager, WriterOpts};
use ocidist_images::platforms::{Platform, all, only};
use ocidist_images::{GcOptions, ImageStore, check, gc};
use ocidist_remotes::docker::DockerResolver;
use ocidist_remotes::{FetchEvent, PushEvent, Resolver, fetch_image, ingest_ref};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

fn arm64() -> Platform {
    "linux/arm64".parse().unwrap()
}

#[tokio::test]
async fn fetch_takes_one_platform_records_the_name_and_skips_what_it_has() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/multi", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "1",
    )
    .await;
    let (amd64_layer, arm64_layer, index) = (&pushed[0], &pushed[3], &pushed[6]);

    let (_dir, store, images) = stores();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reference = format!("{repo}:1");
    let image = fetch_image(
        &resolver,
        &store,
        &images,
        &reference,
        only(&arm64()),
        1,
        Some(4),
        Some(tx),
    )
    .await
    .unwrap();
    assert_eq!(image.name, reference);
    assert_eq!(image.target.digest(), index.desc.digest());
    assert_eq!(images.get(&reference).await.unwrap().target, image.target);
    assert!(
        check(&store, &image.target, &only(&arm64()))
            .await
            .unwrap()
            .complete()
    );
    assert!(store.info(arm64_layer.desc.digest()).await.is_ok());
    assert!(
        store
            .info(amd64_layer.desc.digest())
            .await
            .unwrap_err()
            .is_not_found(),
        "the other platform is not fetched"
    );
    let mut done = 0;
    while let Ok(event) = rx.try_recv() {
        done += matches!(event, FetchEvent::Done(_)) as usize;
    }
    assert_eq!(done, 4, "index, manifest, config, layer");
    // The index records its children for garbage collection.
    let labels = store.info(index.desc.digest()).await.unwrap().labels;
    assert!(
        labels
            .keys()
            .any(|k| k.starts_with("containerd.io/gc.ref.content.m.")),
        "{labels:?}"
    );

    // Again: everything is there already.
    let (tx, mut rx) = mpsc::unbounded_channel();
    fetch_image(
        &resolver,
        &store,
        &images,
        &reference,
        only(&arm64()),
        1,
        Some(4),
        Some(tx),
    )
    .await
    .unwrap();
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    assert!(
        events.iter().all(|e| matches!(e, FetchEvent::Exists(_))) && events.len() == 4,
        "{events:?}"
    );

    // All platforms.
    fetch_image(&resolver, &store, &images, &reference, all(), 0, None, None)
        .await
        .unwrap();
    assert!(store.info(amd64_layer.desc.digest()).await.is_ok());
}

#[tokio::test]
async fn fetching_a_second_platform_keeps_the_first_from_garbage_collection() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/twoplatforms", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "1",
    )
    .await;
    let (dir, store, images) = stores();
    let reference = format!("{repo}:1");
    let amd64: Platform = "linux/amd64".parse().unwrap();
    for platform in [&amd64, &arm64()] {
        fetch_image(
            &resolver,
            &store,
            &images,
            &reference,
            only(platform),
            1,
            None,
            None,
        )
        .await
        .unwrap();
    }
    let options = GcOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    let report = gc(&store, &images, &options).await.unwrap();
    for blob in &pushed {
        assert!(
            store.info(blob.desc.digest()).await.is_ok(),
            "{} ({}) was collected: {report:?}",
            blob.desc.digest(),
            blob.desc.media_type()
        );
    }
    drop(dir);
}

#[tokio::test]
async fn a_half_written_layer_resumes_where_it_stopped() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/resume", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "1",
    )
    .await;
    let layer = &pushed[3];

    let half = layer.bytes.len() / 2;
    // The offset the layer's download started at, after `damage` to what an
    // interrupted fetch left (the first half, under the stable ref).
    let resumed_at = async |damage: &dyn Fn(&std::path::Path)| {
        let (dir, store, images) = stores();
        let mut w = store
            .writer(WriterOpts::new(ingest_ref(&layer.desc)).descriptor(&layer.desc))
            .await
            .unwrap();
        w.write_all(&layer.bytes[..half]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        let ingests = dir.path().join("content/ingest");
        for entry in std::fs::read_dir(&ingests).unwrap() {
            let data = entry.unwrap().path().join("data");
            if data.exists() {
                damage(&data);
            }
        }

        let (tx, mut rx) = mpsc::unbounded_channel();
        fetch_image(
            &resolver,
            &store,
            &images,
            &format!("{repo}:1"),
            only(&arm64()),
            1,
            None,
            Some(tx),
        )
        .await
        .unwrap();
        let mut resumed_at = None;
        while let Ok(event) = rx.try_recv() {
            if let FetchEvent::Started { desc, offset } = event
                && desc.digest() == layer.desc.digest()
            {
                resumed_at = Some(offset);
            }
        }
        assert!(store.list_statuses(&[]).await.unwrap().is_empty());
        let committed = ocidist_content::read_blob(&store, &layer.desc, u64::MAX)
            .await
            .unwrap();
        assert!(committed == layer.bytes, "the layer's own bytes");
        resumed_at
    };
    assert_eq!(resumed_at(&|_| {}).await, Some(half as u64));
    // A byte changed on disk since (a bad disk): the half is not trusted,
    // and the layer is downloaded whole rather than committed wrong.
    let flip = |data: &std::path::Path| {
        let mut bytes = std::fs::read(data).unwrap();
        bytes[100] ^= 1;
        std::fs::write(data, bytes).unwrap();
    };
    assert_eq!(resumed_at(&flip).await, Some(0));
}

/// A layer whose ref another writer holds (another process, as far as the
/// fetch can tell) is waited for, and said to be: when that writer commits,
/// the fetch finds the layer there and never downloads it; when it lets go,
/// the fetch resumes from what it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_another_writer_holds_is_waited_for_and_said() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &format!("{}/test/held", registry.host()),
        "1",
    )
    .await;
    let (committed, let_go) = (&pushed[0], &pushed[3]);
    let proxy = ocidist_remotes::testkit::FaultProxy::start(registry.addr()).unwrap();

    let (_dir, store, images) = stores();
    let mut held = Vec::new();
    for layer in [committed, let_go] {
        let mut w = store
            .writer(WriterOpts::new(ingest_ref(&layer.desc)).descriptor(&layer.desc))
            .await
            .unwrap();
        w.write_all(&layer.bytes[..layer.bytes.len() / 2])
            .await
            .unwrap();
        held.push(w);
    }

    let (tx, mut rx) = mpsc::unbounded_channel();
    let reference = format!("{}/test/held:1", proxy.host());
    let fetch = tokio::spawn({
        let (resolver, store, images) = (resolver.clone(), store.clone(), images.clone());
        async move {
            fetch_image(
                &resolver,
                &store,
                &images,
                &reference,
                all(),
                0,
                None,
                Some(tx),
            )
            .await
        }
    });
    let mut events = Vec::new();
    let mut waiting = 0;
    while waiting < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("no Waiting event for a held layer within 30 s")
            .expect("the fetch ended while its layers were held");
        waiting += matches!(event, FetchEvent::Waiting(_)) as usize;
        events.push(event);
    }
    // Held, the fetch finishes nothing that needs them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!fetch.is_finished());

    let mut w = held.remove(0);
    w.write_all(&committed.bytes[committed.bytes.len() / 2..])
        .await
        .unwrap();
    w.commit(
        Some(committed.desc.size()),
        Some(committed.desc.digest()),
        Default::default(),
    )
    .await
    .unwrap();
    for mut w in held {
        w.shutdown().await.unwrap();
    }
    fetch.await.unwrap().unwrap();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }

    let of = |layer: &common::Blob| -> Vec<FetchEvent> {
        events
            .iter()
            .filter(|e| match e {
                FetchEvent::Exists(d) | FetchEvent::Waiting(d) | FetchEvent::Done(d) => {
                    d.digest() == layer.desc.digest()
                }
                FetchEvent::Started { desc, .. } => desc.digest() == layer.desc.digest(),
                _ => false,
            })
            .cloned()
            .collect()
    };
    assert_eq!(
        of(committed),
        [
            FetchEvent::Waiting(committed.desc.clone()),
            FetchEvent::Exists(committed.desc.clone())
        ]
    );
    assert_eq!(
        of(let_go),
        [
            FetchEvent::Waiting(let_go.desc.clone()),
            FetchEvent::Started {
                desc: let_go.desc.clone(),
                offset: let_go.bytes.len() as u64 / 2
            },
            FetchEvent::Done(let_go.desc.clone())
        ]
    );
    let asked = |layer: &common::Blob| {
        proxy
            .log()
            .iter()
            .filter(|l| l.starts_with("GET") && l.contains(layer.desc.digest().as_ref()))
            .count()
    };
    assert_eq!(asked(committed), 0, "{:#?}", proxy.log());
    assert_eq!(asked(let_go), 1, "{:#?}", proxy.log());
    assert_eq!(
        store.info(let_go.desc.digest()).await.unwrap().size,
        let_go.desc.size()
    );
    assert!(store.list_statuses(&[]).await.unwrap().is_empty());
}

/// Two fetches of one image into one store at once both succeed, and
/// every blob is downloaded once: the second waits for the first's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fetches_of_one_image_at_once_both_succeed() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/race", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "1",
    )
    .await;
    let proxy = ocidist_remotes::testkit::FaultProxy::start(registry.addr()).unwrap();
    let (_dir, store, images) = stores();
    let reference = format!("{}/test/race:1", proxy.host());
    let a = fetch_image(
        &resolver,
        &store,
        &images,
        &reference,
        all(),
        0,
        Some(2),
        None,
    );
    let b = fetch_image(
        &resolver,
        &store,
        &images,
        &reference,
        all(),
        0,
        Some(2),
        None,
    );
    let (a, b) = tokio::join!(a, b);
    assert_eq!(a.unwrap().target, b.unwrap().target);
    // Each blob but the index (resolved by each fetch) was asked for once.
    for blob in &pushed[..pushed.len() - 1] {
        let asked = proxy
            .log()
            .iter()
            .filter(|l| l.starts_with("GET") && l.contains(blob.desc.digest().as_ref()))
            .count();
        assert_eq!(asked, 1, "{}: {:#?}", blob.desc.digest(), proxy.log());
    }
    let mut blobs = 0;
    store
        .walk(&[], &mut |_| {
            blobs += 1;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(blobs, 7);
}

/// Pushes a two-platform image to `repo:src` and fetches all of it into a
/// fresh store: the blobs pushed (the index last), and the store.
async fn fetched_from(
    resolver: &DockerResolver,
    registry: &ocidist_remotes::testkit::Registry,
    repo: &str,
) -> (
    Vec<common::Blob>,
    tempfile::TempDir,
    ocidist_content::local::LocalStore,
) {
    let repo = format!("{}/{repo}", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "src",
    )
    .await;
    let (dir, store, images) = stores();
    fetch_image(
        resolver,
        &store,
        &images,
        &format!("{repo}:src"),
        all(),
        0,
        None,
        None,
    )
    .await
    .unwrap();
    (pushed, dir, store)
}

#[tokio::test]
async fn an_image_pushed_from_one_store_is_fetched_into_another_unchanged() {
    let registry = registry();
    let resolver = DockerResolver::new();
    // Put an image into store A by fetching it from a first repository...
    let (pushed, _a, store_a) = fetched_from(&resolver, &registry, "test/copy").await;
    let index = &pushed[6].desc;
    // ...push it from A to another repository, children first...
    let other = format!("{}/test/copied:v1", registry.host());
    let sent = ocidist_remotes::push_image(&resolver, &store_a, &other, index, 4, None)
        .await
        .unwrap();
    assert_eq!(
        sent.last().map(|d| d.digest()),
        Some(index.digest()),
        "the index goes last"
    );
    // The four blobs were mounted from test/copy (their source labels say
    // where they came from); the two manifests and the index were uploaded.
    assert_eq!(sent.len(), 3, "{sent:#?}");
    // ...and fetch it into B: the same bytes, the same digests.
    let (_b, store_b, images_b) = stores();
    let image = fetch_image(&resolver, &store_b, &images_b, &other, all(), 0, None, None)
        .await
        .unwrap();
    assert_eq!(image.target.digest(), index.digest());
    for blob in &pushed {
        assert_eq!(
            store_b.info(blob.desc.digest()).await.unwrap().size,
            blob.bytes.len() as u64
        );
    }
    // Pushing again sends nothing.
    assert!(
        ocidist_remotes::push_image(&resolver, &store_a, &other, index, 4, None)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A push tells its events what happens to each blob: started, read for
/// sending a step at a time up to its size, done; and on a second push,
/// that the registry has every one of them.
#[tokio::test]
async fn a_push_reports_each_blob_started_sent_and_done_then_existing() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let (_dir, store, _images) = stores();
    // A layer of three steps and a bit.
    let blobs = common::image(false, "linux/amd64", (3 << 20) + 5);
    for blob in &blobs {
        ocidist_content::write_blob(
            &store,
            WriterOpts::new(blob.desc.digest().as_ref()).descriptor(&blob.desc),
            &blob.bytes[..],
            ocidist_content::Labels::new(),
        )
        .await
        .unwrap();
    }
    let target = &blobs[2].desc;
    let reference = format!("{}/test/events:1", registry.host());
    let push = async || {
        let (tx, mut rx) = mpsc::unbounded_channel();
        ocidist_remotes::push_image(&resolver, &store, &reference, target, 4, Some(tx))
            .await
            .unwrap();
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(event);
        }
        events
    };
    let events = push().await;
    for blob in &blobs {
        let of_blob: Vec<&PushEvent> = events
            .iter()
            .filter(|e| match e {
                PushEvent::Started(d) | PushEvent::Done(d) | PushEvent::Exists(d) => {
                    d == &blob.desc
                }
                PushEvent::Progress { desc, .. } => desc == &blob.desc,
                _ => false,
            })
            .collect();
        let size = blob.desc.size();
        assert!(
            matches!(of_blob.first(), Some(PushEvent::Started(_)))
                && matches!(of_blob.last(), Some(PushEvent::Done(_))),
            "{of_blob:#?}"
        );
        let sent: Vec<u64> = of_blob
            .iter()
            .filter_map(|e| match e {
                PushEvent::Progress { sent, .. } => Some(*sent),
                _ => None,
            })
            .collect();
        assert!(
            sent.is_sorted() && sent.last() == Some(&size),
            "{sent:?} of {size}"
        );
        assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");
        assert_eq!(of_blob.len(), sent.len() + 2, "{of_blob:#?}");
        if size > 3 << 20 {
            assert!(sent.len() >= 4, "a step at a time: {sent:?}");
        }
    }
    // Again: the registry has every one.
    let again = push().await;
    assert_eq!(again.len(), blobs.len(), "{again:#?}");
    for blob in &blobs {
        assert!(
            again.contains(&PushEvent::Exists(blob.desc.clone())),
            "{again:#?}"
        );
    }
}

/// A push to `name@digest` puts every manifest by digest and moves no tag
/// (not even `latest`); a digest that is not the image's is refused before
/// anything is sent.
#[tokio::test]
async fn a_push_by_digest_moves_no_tag_and_must_name_the_image() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let (pushed, _a, store) = fetched_from(&resolver, &registry, "test/pinned-src").await;
    let index = &pushed[6].desc;

    let other = format!("{}/test/pinned", registry.host());
    let wrong = format!("{other}@{}", pushed[0].desc.digest());
    let err = ocidist_remotes::push_image(&resolver, &store, &wrong, index, 4, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ocidist_content::ErrorKind::InvalidArgument,
        "{err}"
    );
    assert!(err.to_string().contains(&wrong), "{err}");
    let nothing = resolver
        .resolve(&format!("{other}@{}", index.digest()))
        .await;
    assert!(nothing.is_err(), "nothing was pushed: {nothing:?}");

    let by_digest = format!("{other}@{}", index.digest());
    let sent = ocidist_remotes::push_image(&resolver, &store, &by_digest, index, 4, None)
        .await
        .unwrap();
    assert_eq!(sent.last().map(|d| d.digest()), Some(index.digest()));
    let (_, resolved) = resolver.resolve(&by_digest).await.unwrap();
    assert_eq!(resolved.digest(), index.digest());
    let latest = resolver
        .resolve(&format!("{other}:latest"))
        .await
        .unwrap_err();
    assert_eq!(
        latest.kind(),
        ocidist_content::ErrorKind::NotFound,
        "{latest}"
    );
}

#[tokio::test]
async fn two_images_sharing_blobs_push_at_once_and_a_blob_is_not_an_image() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let (pushed, _dir, store) = fetched_from(&resolver, &registry, "test/shared-src").await;
    let index = &pushed[6].desc;
    let repo = format!("{}/test/shared", registry.host());
    // Every blob is in both: one push waits for the other's upload of it.
    let (first, second) = (format!("{repo}:1"), format!("{repo}:2"));
    let (one, two) = tokio::join!(
        ocidist_remotes::push_image(&resolver, &store, &first, index, 4, None),
        ocidist_remotes::push_image(&resolver, &store, &second, index, 4, None),
    );
    one.unwrap();
    two.unwrap();
    for tag in ["1", "2"] {
        let (_, resolved) = resolver.resolve(&format!("{repo}:{tag}")).await.unwrap();
        assert_eq!(resolved.digest(), index.digest());
    }

    // The index's bytes described as a plain blob would be uploaded and
    // named nowhere: refused before anything is sent.
    let plain = ocidist_content::descriptor(index.digest().clone(), index.size());
    let err = ocidist_remotes::push_image(&resolver, &store, &format!("{repo}:3"), &plain, 4, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ocidist_content::ErrorKind::InvalidArgument,
        "{err}"
    );
}

/// An image store in which the name is removed (as by another process's
/// `images rm`) just before each of the next `races` updates.
struct Racing {
    inner: ocidist_images::DbImageStore,
    races: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl ImageStore for Racing {
    async fn get(&self, name: &str) -> ocidist_images::Result<ocidist_images::Image> {
        self.inner.get(name).await
    }
    async fn list(&self, filters: &[&str]) -> ocidist_images::Result<Vec<ocidist_images::Image>> {
        self.inner.list(filters).await
    }
    async fn create(
        &self,
        image: ocidist_images::Image,
    ) -> ocidist_images::Result<ocidist_images::Image> {
        self.inner.create(image).await
    }
    async fn update(
        &self,
        image: ocidist_images::Image,
        fieldpaths: &[&str],
    ) -> ocidist_images::Result<ocidist_images::Image> {
        use std::sync::atomic::Ordering;
        let raced = self
            .races
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if raced.is_ok() {
            self.inner.delete(&image.name).await?;
        }
        self.inner.update(image, fieldpaths).await
    }
    async fn delete(&self, name: &str) -> ocidist_images::Result<()> {
        self.inner.delete(name).await
    }
    async fn delete_if_target(
        &self,
        name: &str,
        target: &ocidist_content::Digest,
    ) -> ocidist_images::Result<()> {
        self.inner.delete_if_target(name, target).await
    }
}

/// A name removed between the create that found it and the update that
/// moves it is created again, as containerd's client loops back to create.
#[tokio::test]
async fn an_image_removed_while_its_name_is_recorded_is_created_again() {
    use ocidist_remotes::record_image;
    let (_dir, _store, images) = stores();
    let racing = Racing {
        inner: images,
        races: 1.into(),
    };
    let target = |bytes: &[u8]| {
        ocidist_content::Descriptor::new(
            "application/vnd.oci.image.manifest.v1+json".into(),
            bytes.len() as u64,
            ocidist_content::sha256_of(bytes),
        )
    };
    let (old, new) = (target(b"old"), target(b"new"));
    racing
        .create(ocidist_images::Image::new("r", old))
        .await
        .unwrap();
    let recorded = record_image(&racing, "r", new.clone()).await.unwrap();
    assert_eq!(recorded.target.digest(), new.digest());
    assert_eq!(racing.get("r").await.unwrap().target.digest(), new.digest());
}

/// Bytes a descriptor embeds (an artifact's empty config, `e30=`) are
/// committed from the descriptor, with no request, as containerd does: a
/// registry that will not serve them does not fail the fetch.
#[tokio::test]
async fn embedded_data_is_committed_without_a_request() {
    use common::{blob, image, push_all};
    use ocidist_remotes::testkit::{Fault, FaultProxy};
    let registry = registry();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let resolver = DockerResolver::new();
    let layer = image(false, "linux/amd64", 2_000).remove(0);
    let mut config = blob("application/vnd.oci.empty.v1+json", b"{}".to_vec());
    config.desc.set_data(Some("e30=".to_string()));
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = blob(
        manifest_type,
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "artifactType": "application/vnd.example.thing",
            "config": config.desc,
            "layers": [layer.desc],
        })
        .to_string()
        .into_bytes(),
    );
    let reference = format!("{}/test/embedded:v1", proxy.host());
    let pinned = format!("{reference}@{}", manifest.desc.digest());
    let blobs = [layer, config, manifest];
    push_all(resolver.pusher(&pinned).await.unwrap().as_ref(), &blobs).await;

    let config_path = format!("/blobs/{}", blobs[1].desc.digest());
    proxy.add(
        None,
        &config_path,
        100,
        Fault::Status {
            status: 404,
            retry_after: None,
        },
    );
    let before = proxy.log().len();
    let (_dir, store, images) = stores();
    fetch_image(&resolver, &store, &images, &reference, all(), 0, None, None)
        .await
        .unwrap();
    for b in &blobs {
        // Without its data, or the bytes would come from the descriptor.
        let mut stored = b.desc.clone();
        stored.set_data(None);
        assert_eq!(
            ocidist_content::read_blob(&store, &stored, 1 << 20)
                .await
                .unwrap(),
            b.bytes
        );
    }
    let log = proxy.log()[before..].to_vec();
    assert!(!log.iter().any(|l| l.contains(&config_path)), "{log:#?}");
}
