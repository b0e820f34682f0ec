//! Snapshot garbage collection: what is kept, what goes, in which order.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Entry, store_image, tar_of};
use ocidist_content::local::LocalStore;
use ocidist_images::manifest::chain_ids;
use ocidist_snapshot::gc::{PruneOptions, image_chain_ids, prune};
use ocidist_snapshot::native::NativeSnapshotter;
use ocidist_snapshot::{EXTRACT_KEY_PREFIX, Labels, Snapshotter, UnpackOptions, unpack};

async fn committed(s: &NativeSnapshotter, name: &str, parent: Option<&str>) {
    let key = format!("{name}-key");
    s.prepare(&key, parent, Labels::new()).await.unwrap();
    s.commit(name, &key, Labels::new()).await.unwrap();
}

fn names(report: &ocidist_snapshot::gc::PruneReport) -> Vec<&str> {
    report.removed.iter().map(|i| i.name.as_str()).collect()
}

async fn exists(s: &NativeSnapshotter, name: &str) -> bool {
    match s.stat(name).await {
        Ok(_) => true,
        Err(e) if e.is_not_found() => false,
        Err(e) => panic!("stat {name}: {e}"),
    }
}

#[tokio::test]
async fn keeps_named_their_parents_and_active_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let s = NativeSnapshotter::open(dir.path()).unwrap();
    // a <- b <- c, and d <- e, and f alone.
    committed(&s, "a", None).await;
    committed(&s, "b", Some("a")).await;
    committed(&s, "c", Some("b")).await;
    committed(&s, "d", None).await;
    committed(&s, "e", Some("d")).await;
    committed(&s, "f", None).await;
    // A mounted rootfs on e: the user's, so e and d stay.
    s.prepare("rootfs:/mnt/x", Some("e"), Labels::new())
        .await
        .unwrap();
    // An unpack killed mid-layer left this one.
    let stale = format!("{EXTRACT_KEY_PREFIX}sha256:00-abc");
    s.prepare(&stale, Some("c"), Labels::new()).await.unwrap();

    let keep: HashSet<String> = ["b".to_string()].into();
    let young = prune(&s, &keep, &PruneOptions::default()).await.unwrap();
    // Within the grace period an unpack may still be running, committing
    // layers whose image is not named yet: nothing goes.
    assert_eq!(names(&young), Vec::<&str>::new());
    for name in ["c", "f", stale.as_str()] {
        assert!(exists(&s, name).await, "{name} is young");
    }

    let opts = PruneOptions {
        dry_run: true,
        grace: Duration::ZERO,
        ..Default::default()
    };
    let dry = prune(&s, &keep, &opts).await.unwrap();
    assert_eq!(
        names(&dry),
        [stale.as_str(), "c", "f"],
        "children before parents"
    );
    assert!(exists(&s, &stale).await, "a dry run removes nothing");

    let opts = PruneOptions {
        dry_run: false,
        grace: Duration::ZERO,
        ..Default::default()
    };
    // An unpack's extract snapshot that a live lease holds stays, however
    // old, and keeps what it stands on.
    let leased: HashSet<String> = ["b".to_string(), stale.clone()].into();
    let dry = prune(
        &s,
        &leased,
        &PruneOptions {
            dry_run: true,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(names(&dry), ["f"]);

    let report = prune(&s, &keep, &opts).await.unwrap();
    assert_eq!(names(&report), [stale.as_str(), "c", "f"]);
    for gone in [stale.as_str(), "c", "f"] {
        assert!(!exists(&s, gone).await, "{gone} should be gone");
    }
    for kept in ["a", "b", "d", "e", "rootfs:/mnt/x"] {
        assert!(exists(&s, kept).await, "{kept} should be kept");
    }
    assert_eq!(report.kept, 5);
}

/// A snapshot labelled `containerd.io/gc.root` is a root of its own, as
/// containerd's collector has it: kept past the grace period with what it
/// stands on, as a blob with the label is kept by the content collection.
#[tokio::test]
async fn a_snapshot_labelled_a_gc_root_is_kept_with_its_parents() {
    let dir = tempfile::tempdir().unwrap();
    let s = NativeSnapshotter::open(dir.path()).unwrap();
    committed(&s, "base", None).await;
    let root = Labels::from([(
        ocidist_images::gc::GC_ROOT.to_string(),
        "2026-11-24".to_string(),
    )]);
    s.prepare("pinned-key", Some("base"), Labels::new())
        .await
        .unwrap();
    s.commit("pinned", "pinned-key", root).await.unwrap();
    committed(&s, "loose", None).await;
    let opts = PruneOptions {
        grace: Duration::ZERO,
        ..Default::default()
    };
    let report = prune(&s, &HashSet::new(), &opts).await.unwrap();
    assert_eq!(names(&report), ["loose"]);
    assert!(exists(&s, "pinned").await && exists(&s, "base").await);

    // Without the label it goes like any other.
    let mut info = s.stat("pinned").await.unwrap();
    info.labels.clear();
    s.update(info, &["labels"]).await.unwrap();
    let report = prune(&s, &HashSet::new(), &opts).await.unwrap();
    assert_eq!(names(&report), ["pinned", "base"]);
}

#[tokio::test]
async fn an_unpacked_image_keeps_all_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let s = NativeSnapshotter::open(dir.path().join("snapshots")).unwrap();
    let tars = vec![
        tar_of(&[Entry::File("a", b"1", 0o644)]),
        tar_of(&[Entry::File("b", b"2", 0o644)]),
        tar_of(&[Entry::File("c", b"3", 0o644)]),
    ];
    let image = store_image(&store, &tars).await;
    let matcher = ocidist_images::platforms::only(&"linux/amd64".parse().unwrap());
    let top = unpack(&image, &store, &s, &matcher, UnpackOptions::default())
        .await
        .unwrap()
        .expect("an image with layers has a top chain ID");
    committed(&s, "unrelated", None).await;

    let chains = image_chain_ids(&store, &image).await.unwrap();
    let diff_ids: Vec<_> = tars.iter().map(|t| ocidist_content::sha256_of(t)).collect();
    assert_eq!(chains, chain_ids(&diff_ids));
    assert_eq!(chains.last(), Some(&top));

    let keep: HashSet<String> = chains.iter().map(ToString::to_string).collect();
    let past_grace = PruneOptions {
        dry_run: false,
        grace: Duration::ZERO,
        ..Default::default()
    };
    let report = prune(&s, &keep, &past_grace).await.unwrap();
    assert_eq!(names(&report), ["unrelated"]);
    assert_eq!(report.kept, 3);

    // With the image forgotten, everything goes, top layer first.
    let report = prune(&s, &HashSet::new(), &past_grace).await.unwrap();
    let expected: Vec<String> = chains.iter().rev().map(ToString::to_string).collect();
    assert_eq!(names(&report), expected);
}

/// The extractions of a lease found expired (its unpack killed) go at
/// once, young as they are; what else that lease named, and other young
/// snapshots, wait out the grace period.
#[tokio::test]
async fn an_abandoned_extraction_goes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = NativeSnapshotter::open(dir.path()).unwrap();
    committed(&s, "layer", None).await;
    let abandoned = format!("{EXTRACT_KEY_PREFIX}sha256:00-1-2-3-0");
    let running = format!("{EXTRACT_KEY_PREFIX}sha256:00-4-5-6-0");
    for key in [&abandoned, &running] {
        s.prepare(key, Some("layer"), Labels::new()).await.unwrap();
    }
    let opts = PruneOptions {
        abandoned: [abandoned.clone(), "layer".to_string()].into(),
        ..Default::default()
    };
    let report = prune(&s, &HashSet::new(), &opts).await.unwrap();
    assert_eq!(names(&report), [abandoned.as_str()]);
    assert!(exists(&s, &running).await && exists(&s, "layer").await);
}

#[tokio::test]
async fn a_leased_snapshotter_lets_go_what_it_removed_or_committed() {
    use ocidist_content::lease::Leases;
    use ocidist_snapshot::lease::LeasedSnapshotter;
    use ocidist_snapshot::{CommitOpts, CommitRequest};

    let dir = tempfile::tempdir().unwrap();
    let leases = Leases::open(dir.path().join("leases")).unwrap();
    let s = NativeSnapshotter::open(dir.path().join("native")).unwrap();
    let leased = LeasedSnapshotter::new(&s, leases.acquire().await.unwrap());
    let held = || leases.hold().unwrap().snapshots().clone();
    let set = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<HashSet<_>>();

    leased.prepare("a-key", None, Labels::new()).await.unwrap();
    leased.commit("a", "a-key", Labels::new()).await.unwrap();
    leased
        .prepare("b-key", Some("a"), Labels::new())
        .await
        .unwrap();
    leased
        .prepare("c-key", Some("a"), Labels::new())
        .await
        .unwrap();
    leased.view("view", Some("a"), Labels::new()).await.unwrap();
    leased
        .prepare("scratch", None, Labels::new())
        .await
        .unwrap();
    assert_eq!(held(), set(&["a", "b-key", "c-key", "view", "scratch"]));

    let commit = |name: &str, key: &str| CommitRequest {
        name: name.into(),
        key: key.into(),
        opts: CommitOpts::default(),
    };
    leased
        .commit_all(vec![commit("b", "b-key"), commit("c", "c-key")])
        .await
        .unwrap();
    leased.remove("scratch").await.unwrap();
    // A removal refused (a has children) lets nothing go.
    let refused = leased.remove("a").await.unwrap_err();
    assert_eq!(
        refused.kind(),
        ocidist_snapshot::ErrorKind::FailedPrecondition
    );
    assert_eq!(held(), set(&["a", "b", "c", "view"]));

    // A key let go and made again outside the lease is not kept by it.
    s.prepare("scratch", None, Labels::new()).await.unwrap();
    assert!(!held().contains("scratch"));
}

/// Images that are not images (a WASM module whose config names no rootfs,
/// an artifact whose config is not JSON) and a layer-less image whose
/// config says `"diff_ids": null` (Go's empty list) have no chain IDs, and
/// are no error: one of them must not stop a collection of the whole store.
#[tokio::test]
async fn images_with_no_rootfs_to_unpack_have_no_chain_ids() {
    use common::put;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let s = NativeSnapshotter::open(dir.path().join("snapshots")).unwrap();
    let image = |config: (&'static str, Vec<u8>), layer: Option<(&'static str, Vec<u8>)>| {
        let store = &store;
        async move {
            let config = put(store, config.0, &config.1).await;
            let mut layers = Vec::new();
            if let Some((media_type, bytes)) = layer {
                layers.push(put(store, media_type, &bytes).await);
            }
            common::put_manifest(store, config, layers).await
        }
    };
    let wasm = image(
        (
            "application/vnd.wasm.config.v0+json",
            br#"{"architecture":"wasm","os":"wasip1","layerDigests":[]}"#.to_vec(),
        ),
        Some((
            "application/vnd.wasm.content.layer.v1+wasm",
            b"\0asm".to_vec(),
        )),
    )
    .await;
    let opaque = image(
        (
            "application/vnd.example.config",
            b"\x00\x01 not json".to_vec(),
        ),
        Some(("application/vnd.example.blob", b"data".to_vec())),
    )
    .await;
    let layerless = image(
        (
            "application/vnd.oci.image.config.v1+json",
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":null}}"#
                .to_vec(),
        ),
        None,
    )
    .await;
    for image in [&wasm, &opaque, &layerless] {
        assert_eq!(
            image_chain_ids(&store, image).await.unwrap(),
            [],
            "{}",
            image.digest()
        );
    }
    let matcher = ocidist_images::platforms::only(&"linux/amd64".parse().unwrap());
    let top = unpack(&layerless, &store, &s, &matcher, UnpackOptions::default())
        .await
        .unwrap();
    assert_eq!(top, None);
}
