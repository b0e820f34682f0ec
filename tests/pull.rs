//! The library's `pull` against the real registry, with a handler wrapper:
//! the wrapper sees every blob, and a wrapper that skips a layer the unpack
//! needs fails the pull, naming nothing; and a pull dropped midway leaves no
//! thread running.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ocidist::content::local::LocalStore;
use ocidist::content::{Descriptor, Labels, WriterOpts, sha256_of, write_blob};
use ocidist::images::media_types::{self, Kind};
use ocidist::images::platforms::{self, Platform};
use ocidist::images::{DbImageStore, Flow, Handler, ImageStore, handler_fn};
use ocidist::pull::{PullOptions, pull};
use ocidist::remotes::docker::DockerResolver;
use ocidist::remotes::testkit::{Fault, FaultProxy, Registry};
use ocidist::remotes::{HandlerWrapper, push_image};
use ocidist::snapshot::native::NativeSnapshotter;
use ocidist::snapshot::overlay::OverlaySnapshotter;
use ocidist::snapshot::{Snapshotter, UnpackOptions};

/// A one-file layer tar.
fn layer_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    builder.append_data(&mut header, name, data).unwrap();
    builder.into_inner().unwrap()
}

async fn put(store: &LocalStore, media_type: &str, bytes: &[u8]) -> Descriptor {
    write_blob(
        store,
        WriterOpts::new(format!("test-{}", sha256_of(bytes))),
        bytes,
        Labels::new(),
    )
    .await
    .unwrap();
    serde_json::from_value(serde_json::json!({
        "mediaType": media_type,
        "digest": sha256_of(bytes).to_string(),
        "size": bytes.len(),
    }))
    .unwrap()
}

/// Pushes a two-layer image for this machine's platform, built in a store of
/// its own; returns its reference.
async fn push_two_layers(registry: &Registry, work: &std::path::Path) -> String {
    push_layers(
        registry,
        work,
        &[layer_tar("etc/one", b"1"), layer_tar("etc/two", b"2")],
    )
    .await
}

/// Pushes an image of `tars` (gzipped) for this machine's platform, built in
/// a store of its own; returns its reference.
async fn push_layers(registry: &Registry, work: &std::path::Path, tars: &[Vec<u8>]) -> String {
    let builder = LocalStore::open(work.join("builder")).unwrap();
    let mut layers = Vec::new();
    for tar in tars {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, tar).unwrap();
        let gz = gz.finish().unwrap();
        layers.push(put(&builder, "application/vnd.oci.image.layer.v1.tar+gzip", &gz).await);
    }
    let host = Platform::host();
    let config = serde_json::json!({
        "architecture": host.architecture,
        "os": host.os,
        "rootfs": {"type": "layers", "diff_ids": tars.iter().map(|t| sha256_of(t).to_string()).collect::<Vec<_>>()},
    });
    let config = put(
        &builder,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    )
    .await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let manifest = put(
        &builder,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    )
    .await;
    let reference = format!("{}/lib/pull:1", registry.host());
    push_image(
        &DockerResolver::new(),
        &builder,
        &reference,
        &manifest,
        4,
        None,
    )
    .await
    .unwrap();
    reference
}

/// A content store, image store and native snapshotter under `root`.
fn stores(root: &std::path::Path) -> (LocalStore, DbImageStore, NativeSnapshotter) {
    (
        LocalStore::open(root.join("content")).unwrap(),
        DbImageStore::open(root.join("images.redb")).unwrap(),
        NativeSnapshotter::open(root.join("snapshots")).unwrap(),
    )
}

/// A wrapper that notes each descriptor it is called with, and passes on
/// only those `pass` accepts (the others are not fetched).
fn noting(seen: Arc<Mutex<Vec<Descriptor>>>, pass: fn(&Descriptor) -> bool) -> HandlerWrapper {
    HandlerWrapper::new(move |inner: Arc<dyn Handler>| {
        let seen = seen.clone();
        Arc::new(handler_fn(move |desc: Descriptor| {
            let (inner, seen) = (inner.clone(), seen.clone());
            async move {
                seen.lock().unwrap().push(desc.clone());
                if !pass(&desc) {
                    return Ok(Flow::leaf());
                }
                inner.handle(&desc).await
            }
        })) as Arc<dyn Handler>
    })
}

#[tokio::test]
async fn a_pull_runs_its_fetch_through_the_handler_wrapper() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_two_layers(&registry, work.path()).await;
    let resolver = DockerResolver::new();
    let matcher = platforms::only(&Platform::host());

    // Passing everything on: the pull is whole, and the wrapper saw the
    // manifest, the config and both layers.
    let (store, images, snapshotter) = stores(&work.path().join("whole"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let options = PullOptions::new(matcher.clone())
        .unpack(UnpackOptions::default())
        .handler_wrapper(noting(seen.clone(), |_| true));
    let pulled = pull(
        &resolver,
        &store,
        &images,
        &snapshotter,
        &reference,
        options,
    )
    .await
    .unwrap();
    let mut kinds: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|d| format!("{:?}", media_types::kind(d.media_type().as_ref())))
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["Config", "Layer", "Layer", "Manifest"]);
    let top = pulled.chain_id.unwrap();
    assert!(snapshotter.stat(top.as_ref()).await.is_ok());

    // Layers not passed on are not fetched: the unpack, which needs them,
    // fails the pull with NotFound, and the name is not recorded.
    let (store, images, snapshotter) = stores(&work.path().join("no-layers"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let options = PullOptions::new(matcher).handler_wrapper(noting(seen.clone(), |d| {
        media_types::kind(d.media_type().as_ref()) != Kind::Layer
    }));
    let err = pull(
        &resolver,
        &store,
        &images,
        &snapshotter,
        &reference,
        options,
    )
    .await
    .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 4);
    assert!(images.list(&[]).await.unwrap().is_empty());
    assert!(snapshotter.walk(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_stored_layer_gone_bad_is_named_when_the_unpack_fails_on_it() {
    use std::os::unix::fs::PermissionsExt;
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_two_layers(&registry, work.path()).await;
    let resolver = DockerResolver::new();
    let matcher = platforms::only(&Platform::host());
    let (store, images, snapshotter) = stores(work.path());
    let pulled = pull(
        &resolver,
        &store,
        &images,
        &snapshotter,
        &reference,
        PullOptions::new(matcher.clone()),
    )
    .await
    .unwrap();
    let manifest = ocidist::images::manifest::manifest(&store, &pulled.image.target, &matcher)
        .await
        .unwrap();
    let layer = manifest.layers[1].clone();

    // The top layer's file overwritten in place, at its size: the fetch
    // skips what the store has, so only the unpack (into a snapshotter that
    // has none of it) reads it, and fails on bytes that do not decode.
    let path = store.blob_path(layer.digest());
    let original = std::fs::read(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, vec![0x1f; layer.size() as usize]).unwrap();
    let fresh = NativeSnapshotter::open(work.path().join("fresh")).unwrap();
    let err = pull(
        &resolver,
        &store,
        &images,
        &fresh,
        &reference,
        PullOptions::new(matcher.clone()),
    )
    .await
    .unwrap_err();
    match &err {
        ocidist::pull::PullError::Corrupt {
            corrupt: ocidist::content::Error::BlobCorrupt { digest, found },
            ..
        } => {
            assert_eq!(digest, layer.digest());
            assert!(found.contains("hash to"), "{found}");
        }
        other => panic!("not the store's copy named: {other:?}"),
    }
    assert_eq!(err.kind(), ocidist::content::ErrorKind::FailedPrecondition);

    // Put back, every held layer is sound: a layer bad in itself is the
    // unpack's error alone.
    let bad = ocidist::snapshot::Error::Layer("test".into());
    assert!(
        ocidist::pull::corrupt_layer(&store, &pulled.image.target, &matcher, &bad)
            .await
            .is_some()
    );
    std::fs::write(&path, &original).unwrap();
    assert!(
        ocidist::pull::corrupt_layer(&store, &pulled.image.target, &matcher, &bad)
            .await
            .is_none()
    );
    std::fs::write(&path, &original[..10]).unwrap();
    // Nor is a failure on where it writes blamed on the bytes.
    let full = ocidist::snapshot::Error::Io {
        op: "write",
        path: "x".into(),
        source: std::io::Error::other("disk full"),
    };
    assert!(
        ocidist::pull::corrupt_layer(&store, &pulled.image.target, &matcher, &full)
            .await
            .is_none()
    );
}

/// The threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// A pull dropped while a layer downloads and unpacks (the caller gave up,
/// as a daemon's client does) leaves no thread of its own running: the
/// blocking threads applying the layer stop at their next read instead of
/// waiting for bytes that will not come, and idle out. Checked with a
/// runtime whose idle blocking threads end after 200 ms, against the
/// process's threads before the pull, on both snapshotters.
#[test]
fn a_dropped_pull_leaves_no_thread_running() {
    for overlay in [false, true] {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_keep_alive(Duration::from_millis(200))
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(dropped_mid_layer(overlay));
    }
}

async fn dropped_mid_layer(overlay: bool) {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    // 3 MiB that gzip cannot shrink, dripped at about 1.6 MB/s (2 s): the
    // pull is dropped partway into the layer.
    let (data, _) = ocidist::content::testsuite::create_content(3 << 20);
    let tars = [layer_tar("big", &data), layer_tar("small", b"s")];
    let reference = push_layers(&registry, work.path(), &tars).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let drip = Fault::Drip {
        chunk: 16 << 10,
        delay: Duration::from_millis(10),
    };
    proxy.add(Some("GET"), "/blobs/", usize::MAX, drip);
    let reference = reference.replace(&registry.host(), &proxy.host());
    let root = work.path().join("store");
    let store = LocalStore::open(root.join("content")).unwrap();
    let images = DbImageStore::open(root.join("images.redb")).unwrap();
    let snapshotter: Box<dyn Snapshotter> = if overlay {
        Box::new(OverlaySnapshotter::open(root.join("overlay")).unwrap())
    } else {
        Box::new(NativeSnapshotter::open(root.join("native")).unwrap())
    };
    // The push's blocking threads idle out first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resolver = DockerResolver::new();
    let before = threads();
    let pulling = pull(
        &resolver,
        &store,
        &images,
        snapshotter.as_ref(),
        &reference,
        PullOptions::new(platforms::only(&Platform::host())),
    );
    let cut = tokio::time::timeout(Duration::from_millis(1200), pulling).await;
    assert!(cut.is_err(), "the dripped pull is still running at 1.2 s");
    let started = std::time::Instant::now();
    while threads() > before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "overlay {overlay}: {} threads 5 s after the drop, {before} before the pull",
            threads()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let active = snapshotter.walk(&["kind==active"]).await.unwrap();
    assert!(
        !active.is_empty(),
        "the layer was being applied: {active:?}"
    );
}

/// A pull under a lease keeps from a collection what it relies on until the
/// lease ends: blobs and layers it found present, however old, as well as
/// what it wrote. The collection runs with no grace period, as one in
/// another process may while the pull has not named its image yet.
#[tokio::test]
async fn a_pull_under_a_lease_keeps_what_it_reused_from_a_collection() {
    use ocidist::content::Manager;
    use ocidist::content::lease::Leases;
    use ocidist::gc::{CollectOptions, collect};

    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_two_layers(&registry, work.path()).await;
    let resolver = DockerResolver::new();
    let matcher = platforms::only(&Platform::host());
    let (store, images, snapshotter) = stores(work.path());
    let leases = Leases::open(work.path().join("leases")).unwrap();
    let collect_now = || async {
        let leases = leases.clone();
        let held = tokio::task::spawn_blocking(move || leases.hold())
            .await
            .unwrap()
            .unwrap();
        let options = CollectOptions::new().grace(Duration::ZERO);
        let collected = collect(
            &store,
            &images,
            &held,
            &[("native", &snapshotter)],
            &options,
        )
        .await;
        let removed_snapshots = collected.snapshots[0].1.removed.len();
        (collected.content.unwrap().blobs.len(), removed_snapshots)
    };

    // A first pull, its image then removed: all it left is unreferenced.
    let first = pull(
        &resolver,
        &store,
        &images,
        &snapshotter,
        &reference,
        PullOptions::new(matcher.clone()),
    )
    .await
    .unwrap();
    images.delete(&first.image.name).await.unwrap();

    // The same image under a lease finds every blob and layer present; a
    // collection before its name is recorded (here: after it is removed
    // again) takes none of them.
    let lease = leases.acquire().await.unwrap();
    let second = pull(
        &resolver,
        &store,
        &images,
        &snapshotter,
        &reference,
        PullOptions::new(matcher.clone()).lease(lease.clone()),
    )
    .await
    .unwrap();
    assert_eq!(second.chain_id, first.chain_id);
    images.delete(&second.image.name).await.unwrap();
    assert_eq!(collect_now().await, (0, 0));
    assert!(store.info(second.image.target.digest()).await.is_ok());
    let top = second.chain_id.clone().unwrap();
    assert!(snapshotter.stat(top.as_ref()).await.is_ok());

    // Once the lease ends, the manifest, the config, both layers and both
    // snapshots go.
    drop(lease);
    assert_eq!(collect_now().await, (4, 2));
}
