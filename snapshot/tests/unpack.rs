//! Unpack into both snapshotters: chain IDs, resume, diff ID checks,
//! concurrent unpacks, and the overlay mount of the result.

mod common;

use std::sync::Arc;

use common::{Entry, store_image, tar_of, tree};
use ocidist_content::local::LocalStore;
use ocidist_images::manifest::chain_ids;
use ocidist_images::platforms::Platform;
use ocidist_snapshot::native::NativeSnapshotter;
use ocidist_snapshot::overlay::OverlaySnapshotter;
use ocidist_snapshot::{ErrorKind, Kind, Labels, Snapshotter, UnpackOptions, mount, unpack};

fn layers() -> Vec<Vec<u8>> {
    vec![
        tar_of(&[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/issue", b"v1", 0o644),
            Entry::File("etc/gone", b"x", 0o644),
            Entry::Dir("tmp", 0o1777),
            Entry::File("usr/share/doc/a", b"a", 0o644),
        ]),
        tar_of(&[
            Entry::File("etc/issue", b"v2", 0o644),
            Entry::File("etc/.wh.gone", b"", 0o644),
            Entry::File("tmp/scratch", b"s", 0o600),
            Entry::File("usr/share/doc/.wh..wh..opq", b"", 0o644),
            Entry::File("usr/share/doc/b", b"b", 0o644),
        ]),
    ]
}

fn matcher() -> ocidist_images::platforms::Ordered {
    ocidist_images::platforms::only(&"linux/amd64".parse::<Platform>().unwrap())
}

async fn check_rootfs<S: Snapshotter>(snapshotter: &S, top: &str) {
    let mounts = snapshotter
        .view("check-view", Some(top), Labels::new())
        .await
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&mounts, target.path()).unwrap();
    let t = tree(target.path());
    mount::unmount(target.path()).unwrap();
    snapshotter.remove("check-view").await.unwrap();
    assert_eq!(t["etc/issue"], "file:v2 644 0:0");
    assert!(!t.contains_key("etc/gone"), "{t:?}");
    assert_eq!(
        t["tmp"], "dir 1777 0:0",
        "a parent missing from layer 2 keeps layer 1's mode"
    );
    assert!(
        t.contains_key("usr/share/doc/b") && !t.contains_key("usr/share/doc/a"),
        "{t:?}"
    );
}

async fn unpacks_and_resumes<S: Snapshotter>(snapshotter: S) {
    let (_dir, store) = {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("content")).unwrap();
        (dir, store)
    };
    let tars = layers();
    let image = store_image(&store, &tars).await;
    let chain = chain_ids(
        &tars
            .iter()
            .map(|t| ocidist_content::sha256_of(t))
            .collect::<Vec<_>>(),
    );
    let top = unpack(
        &image,
        &store,
        &snapshotter,
        &matcher(),
        UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(&top, chain.last().unwrap());
    let info = snapshotter.stat(top.as_ref()).await.unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.parent.as_deref(), Some(chain[0].as_ref()));
    check_rootfs(&snapshotter, top.as_ref()).await;

    // A rerun finds both layers and applies nothing.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let options = UnpackOptions {
        events: Some(tx),
        ..Default::default()
    };
    unpack(&image, &store, &snapshotter, &matcher(), options)
        .await
        .unwrap();
    let mut exists = 0;
    while let Ok(event) = rx.try_recv() {
        assert!(
            matches!(event, ocidist_snapshot::UnpackEvent::Exists { .. }),
            "{event:?}"
        );
        exists += 1;
    }
    assert_eq!(exists, 2);

    // Losing the top layer: the rerun applies only it.
    snapshotter.remove(top.as_ref()).await.unwrap();
    unpack(
        &image,
        &store,
        &snapshotter,
        &matcher(),
        UnpackOptions::default(),
    )
    .await
    .unwrap();
    check_rootfs(&snapshotter, top.as_ref()).await;
    let active = snapshotter.walk(&["kind==active"]).await.unwrap();
    assert!(
        active.is_empty(),
        "no extraction snapshot left behind: {active:?}"
    );
}

#[tokio::test]
async fn native_unpack_resumes_and_builds_the_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    unpacks_and_resumes(NativeSnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn overlay_unpack_resumes_and_builds_the_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    unpacks_and_resumes(OverlaySnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn a_wrong_diff_id_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let snapshotter = OverlaySnapshotter::open(dir.path().join("snap")).unwrap();
    let tars = layers();
    // The config lists the diff IDs of other tars.
    let image = store_image(&store, &tars).await;
    // The same config, with the layers swapped.
    let manifest: serde_json::Value = serde_json::from_slice(
        &ocidist_content::read_blob(&store, &image, 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    let mut wrong = manifest.clone();
    wrong["layers"] = serde_json::Value::Array(vec![
        manifest["layers"][1].clone(),
        manifest["layers"][0].clone(),
    ]);
    let bytes = serde_json::to_vec(&wrong).unwrap();
    let digest = ocidist_content::sha256_of(&bytes);
    ocidist_content::write_blob(
        &store,
        ocidist_content::WriterOpts::new("wrong"),
        &bytes[..],
        Labels::new(),
    )
    .await
    .unwrap();
    let wrong_desc: ocidist_content::Descriptor = serde_json::from_value(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest.to_string(), "size": bytes.len()
    }))
    .unwrap();
    let err = unpack(
        &wrong_desc,
        &store,
        &snapshotter,
        &matcher(),
        UnpackOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("diff ID mismatch"), "{err}");
    assert!(
        snapshotter.walk(&[]).await.unwrap().is_empty(),
        "nothing committed, nothing left"
    );
}

#[tokio::test]
async fn two_unpacks_of_one_image_at_once_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let snapshotter = Arc::new(OverlaySnapshotter::open(dir.path().join("snap")).unwrap());
    let image = store_image(&store, &layers()).await;
    let platform = matcher();
    let (a, b) = tokio::join!(
        unpack(
            &image,
            &store,
            &snapshotter,
            &platform,
            UnpackOptions::default()
        ),
        unpack(
            &image,
            &store,
            &snapshotter,
            &platform,
            UnpackOptions::default()
        ),
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(
        snapshotter.walk(&["kind==committed"]).await.unwrap().len(),
        2
    );
    assert!(
        snapshotter
            .walk(&["kind==active"])
            .await
            .unwrap()
            .is_empty()
    );
}
