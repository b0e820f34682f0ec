//! Garbage collection over real images in a real store.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Flavor, image, multi_platform, put, store};
use ocidist_content::{IngestManager, Ingester, Labels, Manager, WriterOpts};
use ocidist_images::{
    DbImageStore, GcOptions, Image, ImageStore, children_handler, gc, set_children_labels, walk,
};
use tokio::io::AsyncWriteExt;

fn now() -> GcOptions {
    GcOptions {
        dry_run: false,
        grace: Duration::ZERO,
        ingest_max_age: None,
        ..GcOptions::default()
    }
}

async fn blobs(store: &impl Manager) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    store
        .walk(&[], &mut |info| {
            out.insert(info.digest.to_string());
            Ok(())
        })
        .await
        .unwrap();
    out
}

fn images_db(dir: &tempfile::TempDir) -> DbImageStore {
    DbImageStore::open(dir.path().join("images.redb")).unwrap()
}

#[tokio::test]
async fn unreferenced_blobs_go_and_referenced_ones_stay() {
    for labelled in [false, true] {
        let (dir, store) = store();
        let images = images_db(&dir);
        let (idx, platforms) = multi_platform(&store, Flavor::Oci).await;
        // A platform the index lacks, so its blobs share nothing with it.
        let lone = image(&store, Flavor::Docker, "linux/s390x", 2).await;
        if labelled {
            let label = set_children_labels(store.clone(), children_handler(store.clone()));
            walk(&label, &[idx.clone(), lone.manifest.clone()])
                .await
                .unwrap();
        }
        images
            .create(Image::new("multi:1", idx.clone()))
            .await
            .unwrap();
        images
            .create(Image::new("lone:1", lone.manifest.clone()))
            .await
            .unwrap();
        let stray = put(&store, "application/octet-stream", b"nobody needs me").await;
        let everything = blobs(&store).await;

        // A dry run says what would go, and removes nothing.
        let dry = gc(
            &store,
            &images,
            &GcOptions {
                dry_run: true,
                ..now()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            dry.blobs,
            vec![(stray.digest().clone(), stray.size())],
            "labelled: {labelled}"
        );
        assert_eq!(blobs(&store).await, everything);

        let report = gc(&store, &images, &now()).await.unwrap();
        assert_eq!(report.blobs, dry.blobs);
        assert_eq!(report.reachable, everything.len() - 1);
        assert_eq!(report.young, 0);

        // Without its name, the lone image's blobs go; the multi-platform one stays whole.
        images.delete("lone:1").await.unwrap();
        let report = gc(&store, &images, &now()).await.unwrap();
        let gone: BTreeSet<String> = report.blobs.iter().map(|(d, _)| d.to_string()).collect();
        let lone_blobs: BTreeSet<String> = std::iter::once(&lone.manifest)
            .chain(std::iter::once(&lone.config))
            .chain(&lone.layers)
            .map(|d| d.digest().to_string())
            .collect();
        assert_eq!(gone, lone_blobs, "labelled: {labelled}");
        for platform in &platforms {
            assert!(store.info(platform.layers[1].digest()).await.is_ok());
        }
        assert!(store.info(idx.digest()).await.is_ok());
    }
}

#[tokio::test]
async fn gc_root_label_keeps_a_blob_and_the_grace_period_keeps_fresh_ones() {
    let (dir, store) = store();
    let images = images_db(&dir);
    let rooted = put(&store, "application/octet-stream", b"pinned").await;
    let mut info = store.info(rooted.digest()).await.unwrap();
    info.labels = Labels::from([("containerd.io/gc.root".to_string(), "yes".to_string())]);
    store
        .update(info, &["labels.containerd.io/gc.root"])
        .await
        .unwrap();
    let fresh = put(&store, "application/octet-stream", b"just fetched").await;

    let report = gc(
        &store,
        &images,
        &GcOptions {
            grace: Duration::from_secs(3600),
            ..now()
        },
    )
    .await
    .unwrap();
    assert!(
        report.blobs.is_empty(),
        "nothing older than the grace period: {report:?}"
    );
    // The pinned blob is in use; the fresh one is kept only for its youth.
    assert_eq!((report.reachable, report.young), (2, 1), "{report:?}");
    let report = gc(&store, &images, &now()).await.unwrap();
    assert_eq!(report.blobs, vec![(fresh.digest().clone(), fresh.size())]);
    assert!(store.info(rooted.digest()).await.is_ok());
}

/// An image's own content-reference labels keep what they name (a
/// signature, an SBOM), as containerd follows them; and an image whose target
/// will not decode (a schema 1 body under an OCI type) keeps its target but
/// does not stop the collection.
#[tokio::test]
async fn image_labels_keep_their_blobs_and_an_undecodable_target_stops_nothing() {
    let (dir, store) = store();
    let images = images_db(&dir);
    let lone = image(&store, Flavor::Oci, "linux/amd64", 1).await;
    let signature = put(&store, "application/octet-stream", b"signature").await;
    let mut signed = Image::new("signed:1", lone.manifest.clone());
    signed.labels.insert(
        "containerd.io/gc.ref.content.sig".into(),
        signature.digest().to_string(),
    );
    images.create(signed).await.unwrap();
    let schema1 = br#"{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[],"history":[]}"#;
    let odd = put(
        &store,
        "application/vnd.oci.image.manifest.v1+json",
        schema1,
    )
    .await;
    images
        .create(Image::new("odd:1", odd.clone()))
        .await
        .unwrap();
    let stray = put(&store, "application/octet-stream", b"nobody's").await;

    let report = gc(&store, &images, &now()).await.unwrap();
    assert_eq!(report.blobs, vec![(stray.digest().clone(), stray.size())]);
    assert!(store.info(signature.digest()).await.is_ok());
    assert!(store.info(odd.digest()).await.is_ok());
}

/// A root's references count in every form containerd reads: the bare
/// `containerd.io/gc.ref.content` key, and keys under it after `.` or `/`.
#[tokio::test]
async fn every_form_of_content_reference_label_keeps_its_blob() {
    let (dir, store) = store();
    let images = images_db(&dir);
    let keys = [
        "containerd.io/gc.ref.content",
        "containerd.io/gc.ref.content.l.0",
        "containerd.io/gc.ref.content/blob",
    ];
    let mut children = Vec::new();
    let mut labels = Labels::from([("containerd.io/gc.root".to_string(), "yes".to_string())]);
    for (i, key) in keys.iter().enumerate() {
        let child = put(
            &store,
            "application/octet-stream",
            format!("child {i}").as_bytes(),
        )
        .await;
        labels.insert(key.to_string(), child.digest().to_string());
        children.push(child);
    }
    let unrelated = put(&store, "application/octet-stream", b"unrelated").await;
    let root = put(&store, "application/octet-stream", b"root").await;
    let mut info = store.info(root.digest()).await.unwrap();
    let fieldpaths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
    info.labels = labels;
    let fieldpaths: Vec<&str> = fieldpaths.iter().map(String::as_str).collect();
    store.update(info, &fieldpaths).await.unwrap();

    let report = gc(&store, &images, &now()).await.unwrap();
    assert_eq!(
        report.blobs,
        vec![(unrelated.digest().clone(), unrelated.size())]
    );
    for child in &children {
        assert!(
            store.info(child.digest()).await.is_ok(),
            "{}",
            child.digest()
        );
    }
}

/// Makes a blob look committed two hours ago.
fn age_two_hours(dir: &tempfile::TempDir, digest: &ocidist_content::Digest) {
    let path = dir.path().join("blobs/sha256").join(digest.digest());
    std::fs::File::open(path)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
}

/// A pull that reuses old layers no image names (their image was removed)
/// has not named its own image yet; the manifest it has just fetched or
/// relabelled is young, and keeps what it references, however old.
#[tokio::test]
async fn a_young_manifest_keeps_the_old_blobs_it_references() {
    let (dir, store) = store();
    let images = images_db(&dir);
    let layer = put(
        &store,
        "application/vnd.oci.image.layer.v1.tar",
        b"old layer",
    )
    .await;
    let config = put(&store, "application/vnd.oci.image.config.v1+json", b"{}").await;
    let orphan = put(&store, "application/octet-stream", b"old and unreferenced").await;
    for old in [&layer, &config, &orphan] {
        age_two_hours(&dir, old.digest());
    }
    let manifest_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    });
    let manifest = put(
        &store,
        "application/vnd.oci.image.manifest.v1+json",
        manifest_json.to_string().as_bytes(),
    )
    .await;

    let hour = GcOptions {
        grace: Duration::from_secs(3600),
        ..now()
    };
    let report = gc(&store, &images, &hour).await.unwrap();
    assert_eq!(report.blobs, vec![(orphan.digest().clone(), orphan.size())]);
    for kept in [&layer, &config, &manifest] {
        assert!(store.info(kept.digest()).await.is_ok(), "{}", kept.digest());
    }
    // Once the manifest is old too, nothing holds them.
    age_two_hours(&dir, manifest.digest());
    let report = gc(&store, &images, &hour).await.unwrap();
    assert_eq!(report.blobs.len(), 3, "{report:?}");
}

#[tokio::test]
async fn stale_ingests_go_but_one_being_written_never_does() {
    let (dir, store) = store();
    let images = images_db(&dir);
    let mut stale = store.writer(WriterOpts::new("stale")).await.unwrap();
    stale.write_all(b"old partial").await.unwrap();
    stale.shutdown().await.unwrap();
    drop(stale);
    let mut active = store.writer(WriterOpts::new("active")).await.unwrap();
    active.write_all(b"in progress").await.unwrap();
    active.flush().await.unwrap();

    let opts = GcOptions {
        ingest_max_age: Some(Duration::ZERO),
        ..now()
    };
    // A dry run says what the real one will do, and removes nothing.
    let dry = GcOptions {
        dry_run: true,
        ..opts.clone()
    };
    let report = gc(&store, &images, &dry).await.unwrap();
    assert_eq!(report.ingests, vec!["stale".to_string()]);
    assert_eq!(store.list_statuses(&[]).await.unwrap().len(), 2);
    let report = gc(&store, &images, &opts).await.unwrap();
    assert_eq!(report.ingests, vec!["stale".to_string()]);
    let left: Vec<String> = store
        .list_statuses(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.reference)
        .collect();
    assert_eq!(left, ["active"]);
    // The writer still works and commits.
    active.write_all(b" and done").await.unwrap();
    active.commit(None, None, Labels::new()).await.unwrap();
}

/// A pull in another process holds a lease on the manifest it fetched and the
/// layers it found already there; a collection given the leases' blobs as
/// roots keeps them and what they reference, with no grace period at all.
#[tokio::test]
async fn leased_blobs_are_roots() {
    let (dir, store) = store();
    let images = images_db(&dir);
    let pulled = image(&store, Flavor::Oci, "linux/amd64", 2).await;
    let leases = ocidist_content::lease::Leases::open(dir.path().join("leases")).unwrap();
    let lease = leases.acquire().await.unwrap();
    lease.add_content(pulled.manifest.digest()).await.unwrap();

    // As a collector does: the live leases' blobs are roots, held throughout.
    let collect = async || {
        let held = leases.hold().unwrap();
        let roots = held.content().clone();
        gc(&store, &images, &GcOptions { roots, ..now() })
            .await
            .unwrap()
    };
    let report = collect().await;
    assert!(report.blobs.is_empty(), "{report:?}");
    assert_eq!(report.reachable, 2 + pulled.layers.len());

    // The lease ends (the pull named its image, or died): nothing holds them.
    drop(lease);
    let report = collect().await;
    assert_eq!(report.blobs.len(), 2 + pulled.layers.len());
}
