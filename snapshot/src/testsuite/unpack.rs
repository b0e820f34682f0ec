//! The suite's unpack case: what [`crate::unpack`] needs of a snapshotter.

use std::path::Path;

use ocidist_content::local::LocalStore;
use ocidist_content::{Descriptor, Digest, WriterOpts, sha256_of};
use ocidist_images::manifest::chain_ids;
use ocidist_images::platforms::{self, Platform};

use super::{
    Entry, Op, apply_ops, check_directory_equal, check_snapshot, chown_to, clear_umask, create_dir,
    create_file, hard_link, prepare_mount, remove_mount_point, remove_ok, remove_tree, scratch_dir,
    tar_of, walk_ok,
};
use crate::{Kind, Snapshotter, UnpackEvent, UnpackOptions};

/// Writes `bytes` into `store`; its descriptor with `media_type`.
async fn put(store: &LocalStore, media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest = sha256_of(bytes);
    let opts = WriterOpts {
        size: Some(bytes.len() as u64),
        digest: Some(digest.clone()),
        ..WriterOpts::new(format!("suite-{digest}"))
    };
    ocidist_content::write_blob(store, opts, bytes, Default::default())
        .await
        .unwrap_or_else(|e| panic!("store the suite's {media_type}: {e:?}"));
    serde_json::from_value(serde_json::json!({
        "mediaType": media_type,
        "digest": digest.to_string(),
        "size": bytes.len(),
    }))
    .expect("a descriptor")
}

/// Stores an OCI image of `layers` (media type, stored bytes, the tar they
/// hold) for linux/amd64; its manifest's descriptor and the layers' diff IDs.
async fn store_image(
    store: &LocalStore,
    layers: &[(&str, Vec<u8>, &[u8])],
) -> (Descriptor, Vec<Digest>) {
    let diff_ids: Vec<Digest> = layers.iter().map(|(_, _, tar)| sha256_of(tar)).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
    });
    let config = put(
        store,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).expect("config JSON"),
    )
    .await;
    let mut descriptors = Vec::new();
    for (media_type, bytes, _) in layers {
        descriptors.push(put(store, media_type, bytes).await);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": descriptors,
    });
    let manifest = put(
        store,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).expect("manifest JSON"),
    )
    .await;
    (manifest, diff_ids)
}

/// Unpack (ours, not containerd's): an image of three layers (plain,
/// gzip and zstd) unpacks into the snapshotter, one committed snapshot per
/// layer named by its chain ID on the one below, no active snapshot left;
/// a view of the top is the image's root filesystem: whiteouts of a file and
/// a directory, an opaque directory, a hardlink to a file of a lower layer,
/// a symlink, owners, a sticky directory that a later layer writes into
/// without listing it; so is a container's writable snapshot on it, whose
/// writes leave the image as it was. An unpack again finds every layer and
/// applies nothing.
///
/// A snapshotter whose `prepare` gives mounts other than a writable bind or
/// overlay mount is applied through a temporary mount; one that says it
/// [can rebase](Snapshotter::can_rebase) has its later layers written as
/// overlayfs upper directories (whiteouts as 0/0 character devices, opaque
/// directories as `trusted.overlay.opaque`), so its views must read them
/// as overlayfs does: this case shows whether they do.
pub async fn unpack_image<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let bottom = tar_of(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/issue", b"v1", 0o644),
        Entry::File("etc/gone", b"gone", 0o644),
        Entry::Dir("tmp", 0o1777),
        Entry::Dir("usr", 0o755),
        Entry::Dir("usr/share", 0o755),
        Entry::Dir("usr/share/doc", 0o755),
        Entry::File("usr/share/doc/a", b"a", 0o644),
        Entry::Dir("bin", 0o755),
        Entry::Owned("bin/tool", b"#!tool", 0o751, 7, 8),
        Entry::Symlink("bin/sh", "tool"),
        Entry::Dir("opt", 0o755),
        Entry::File("opt/old", b"old", 0o644),
    ]);
    let middle = tar_of(&[
        Entry::File("etc/issue", b"v2", 0o640),
        Entry::File("etc/.wh.gone", b"", 0o644),
        Entry::File("tmp/scratch", b"s", 0o600),
        Entry::File("usr/share/doc/.wh..wh..opq", b"", 0o644),
        Entry::File("usr/share/doc/b", b"b", 0o644),
        Entry::Hardlink("bin/tool-link", "bin/tool", 0o751, 7, 8),
    ]);
    let top = tar_of(&[
        Entry::File(".wh.opt", b"", 0o644),
        Entry::Dir("var", 0o755),
        Entry::Dir("var/lib", 0o755),
        Entry::Dir("var/lib/app", 0o700),
        Entry::Owned("var/lib/app/state", b"state", 0o600, 1, 1),
    ]);
    let expected: Vec<Op> = vec![
        create_dir("/etc", 0o755),
        create_file("/etc/issue", b"v2", 0o640),
        create_dir("/tmp", 0o1777),
        create_file("/tmp/scratch", b"s", 0o600),
        create_dir("/usr/share/doc", 0o755),
        create_file("/usr/share/doc/b", b"b", 0o644),
        create_dir("/bin", 0o755),
        create_file("/bin/tool", b"#!tool", 0o751),
        chown_to("/bin/tool", 7, 8),
        Op::Symlink("tool".into(), "/bin/sh".into()),
        hard_link("/bin/tool", "/bin/tool-link"),
        create_dir("/var", 0o755),
        create_dir("/var/lib", 0o755),
        create_dir("/var/lib/app", 0o700),
        create_file("/var/lib/app/state", b"state", 0o600),
        chown_to("/var/lib/app/state", 1, 1),
    ];

    let content = scratch_dir(work, "content");
    let store = LocalStore::open(&content).expect("open the suite's content store");
    let gzip = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&middle).expect("gzip");
        encoder.finish().expect("gzip")
    };
    let zstd = zstd::encode_all(&top[..], 3).expect("zstd");
    let (image, diff_ids) = store_image(
        &store,
        &[
            (
                "application/vnd.oci.image.layer.v1.tar",
                bottom.clone(),
                &bottom,
            ),
            ("application/vnd.oci.image.layer.v1.tar+gzip", gzip, &middle),
            ("application/vnd.oci.image.layer.v1.tar+zstd", zstd, &top),
        ],
    )
    .await;
    let chain = chain_ids(&diff_ids);
    let matcher = platforms::only(&"linux/amd64".parse::<Platform>().expect("a platform"));

    let unpacked = crate::unpack(
        &image,
        &store,
        snapshotter,
        &matcher,
        UnpackOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("unpack the suite's image: {e:?}"))
    .expect("an image with layers has a top chain ID");
    assert_eq!(&unpacked, chain.last().expect("three chain IDs"));
    for (i, chain_id) in chain.iter().enumerate() {
        let info = snapshotter
            .stat(chain_id.as_ref())
            .await
            .unwrap_or_else(|e| panic!("stat layer {i}'s snapshot {chain_id}: {e:?}"));
        assert_eq!(info.kind, Kind::Committed, "layer {i}: {info:?}");
        let below = i.checked_sub(1).map(|b| chain[b].to_string());
        assert_eq!(info.parent, below, "layer {i}'s parent: {info:?}");
    }
    let active = walk_ok(snapshotter, &["kind==active"]).await;
    assert!(active.is_empty(), "extractions left behind: {active:?}");

    let flat = scratch_dir(work, "flat");
    apply_ops(&flat, &expected);
    check_snapshot(snapshotter, work, unpacked.as_ref(), &flat).await;
    // A container's writable snapshot on the image shows the same tree,
    // and what it writes stays its own.
    let (container, mounted) =
        prepare_mount(snapshotter, work, "container", Some(unpacked.as_ref())).await;
    check_directory_equal(&flat, Path::new(&container));
    apply_ops(
        Path::new(&container),
        &[create_file("/etc/issue", b"mine", 0o644)],
    );
    mounted.unmount();
    check_snapshot(snapshotter, work, unpacked.as_ref(), &flat).await;
    remove_ok(snapshotter, &container).await;
    remove_mount_point(Path::new(&container));
    remove_tree(&flat);

    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let options = UnpackOptions {
        events: Some(events),
        ..UnpackOptions::default()
    };
    let again = crate::unpack(&image, &store, snapshotter, &matcher, options)
        .await
        .unwrap_or_else(|e| panic!("unpack the suite's image again: {e:?}"));
    assert_eq!(again.as_ref(), Some(&unpacked));
    let mut found = 0;
    while let Ok(event) = received.try_recv() {
        assert!(
            matches!(event, UnpackEvent::Exists { .. }),
            "the second unpack applied something: {event:?}"
        );
        found += 1;
    }
    assert_eq!(found, 3, "every layer found");
    assert_eq!(walk_ok(snapshotter, &[]).await.len(), 3, "nothing new");
    drop(store);
    remove_tree(&content);
}
