//! `ocidist::gc::collect`: snapshots and content collected together, what
//! leases hold kept, and one half's failure not stopping the other.

use std::time::Duration;

use ocidist::content::lease::{Leases, Resource};
use ocidist::content::local::LocalStore;
use ocidist::content::{Digest, Labels, Manager, WriterOpts, sha256_of, write_blob};
use ocidist::gc::{CollectOptions, Collected, SnapshotsFailed, collect};
use ocidist::images::{DbImageStore, Image, ImageStore};
use ocidist::snapshot::Snapshotter;
use ocidist::snapshot::native::NativeSnapshotter;

struct Root {
    _dir: tempfile::TempDir,
    content: LocalStore,
    images: DbImageStore,
    native: NativeSnapshotter,
    leases: Leases,
}

fn root() -> Root {
    let dir = tempfile::tempdir().unwrap();
    Root {
        content: LocalStore::open(dir.path().join("content")).unwrap(),
        images: DbImageStore::open(dir.path().join("images.redb")).unwrap(),
        native: NativeSnapshotter::open(dir.path().join("snapshots")).unwrap(),
        leases: Leases::open(dir.path().join("leases")).unwrap(),
        _dir: dir,
    }
}

async fn blob(content: &LocalStore, bytes: &[u8]) -> Digest {
    write_blob(content, WriterOpts::new("b"), bytes, Labels::new())
        .await
        .unwrap();
    sha256_of(bytes)
}

/// A committed snapshot `name`, with nothing in it.
async fn snapshot(native: &NativeSnapshotter, name: &str) {
    let key = format!("{name}-active");
    native.prepare(&key, None, Labels::new()).await.unwrap();
    native.commit(name, &key, Labels::new()).await.unwrap();
}

async fn names(native: &NativeSnapshotter) -> Vec<String> {
    let mut names: Vec<String> = native
        .walk(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|info| info.name)
        .collect();
    names.sort();
    names
}

fn past_grace() -> CollectOptions {
    CollectOptions::new().grace(Duration::ZERO)
}

/// Holds `r`'s leases (keeping the expired ones for a dry run, as a
/// collector must) and collects with `options`.
async fn collect_in(r: &Root, options: &CollectOptions) -> Collected {
    let leases = r.leases.clone();
    let dry_run = options.dry_run;
    let held = tokio::task::spawn_blocking(move || {
        if dry_run {
            leases.hold_keeping_expired()
        } else {
            leases.hold()
        }
    })
    .await
    .unwrap()
    .unwrap();
    collect(
        &r.content,
        &r.images,
        &held,
        &[("native", &r.native)],
        options,
    )
    .await
}

#[tokio::test]
async fn what_a_live_lease_holds_stays_and_the_rest_goes() {
    let r = root();
    let leased_blob = blob(&r.content, b"a pull's layer, its image not recorded yet").await;
    let orphan = blob(&r.content, b"nobody's").await;
    snapshot(&r.native, "leased").await;
    snapshot(&r.native, "unused").await;
    let lease = r.leases.acquire().await.unwrap();
    lease.add_content(&leased_blob).await.unwrap();
    lease
        .add(Resource::Snapshot("leased".into()))
        .await
        .unwrap();

    let collected = collect_in(&r, &past_grace()).await;
    assert!(collected.snapshots_failed.is_none(), "{collected:?}");
    let (name, pruned) = &collected.snapshots[0];
    assert_eq!(name, "native");
    let removed: Vec<&str> = pruned.removed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(removed, ["unused"]);
    assert_eq!(names(&r.native).await, ["leased"]);
    let content = collected.content.unwrap();
    assert_eq!(
        content.blobs.iter().map(|(d, _)| d).collect::<Vec<_>>(),
        [&orphan]
    );
    assert!(r.content.info(&leased_blob).await.is_ok());
    assert!(r.content.info(&orphan).await.unwrap_err().is_not_found());
    drop(lease);
}

/// An image whose manifest went bad on disk (its bytes are no longer the
/// ones its digest names, and do not decode): its layers cannot be listed,
/// so no snapshot is pruned (which to keep is unknown), and the blobs are
/// collected all the same. (A manifest that is intact and yet no manifest
/// was never unpacked, and is passed over.)
#[tokio::test]
async fn a_snapshot_half_that_fails_does_not_stop_the_content_half() {
    use std::os::unix::fs::PermissionsExt;
    let r = root();
    let garbage = blob(&r.content, br#"{"schemaVersion":2}"#).await;
    let path = r.content.blob_path(&garbage);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"gone bad on a disk!").unwrap();
    let mut target = ocidist::content::descriptor(garbage.clone(), 19);
    target.set_media_type(ocidist::content::MediaType::ImageManifest);
    r.images
        .create(Image::new("example.com/broken:1", target))
        .await
        .unwrap();
    let orphan = blob(&r.content, b"nobody's").await;
    snapshot(&r.native, "unused").await;

    let collected = collect_in(&r, &past_grace()).await;
    match collected.snapshots_failed {
        Some(SnapshotsFailed::Image { name, .. }) => assert_eq!(name, "example.com/broken:1"),
        other => panic!("the image's layers cannot be listed: {other:?}"),
    }
    assert!(collected.snapshots.is_empty());
    assert_eq!(names(&r.native).await, ["unused"]);
    let content = collected.content.unwrap();
    assert_eq!(
        content.blobs.iter().map(|(d, _)| d).collect::<Vec<_>>(),
        [&orphan]
    );
    assert!(
        r.content.info(&garbage).await.is_ok(),
        "the image's root stays"
    );
}

/// A dry run removes nothing and reports what it would.
#[tokio::test]
async fn a_dry_run_reports_and_removes_nothing() {
    let r = root();
    let orphan = blob(&r.content, b"nobody's").await;
    snapshot(&r.native, "unused").await;
    let collected = collect_in(&r, &past_grace().dry_run(true)).await;
    assert_eq!(collected.snapshots[0].1.removed[0].name, "unused");
    assert_eq!(collected.content.unwrap().blobs[0].0, orphan);
    assert_eq!(names(&r.native).await, ["unused"]);
    assert!(r.content.info(&orphan).await.is_ok());
}
