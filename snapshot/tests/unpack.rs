//! Unpack into both snapshotters: chain IDs, resume, diff ID checks,
//! concurrent unpacks, and the overlay mount of the result.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use common::{Entry, full_tree, store_image, tar_of, tree};
use ocidist_content::local::LocalStore;
use ocidist_images::manifest::chain_ids;
use ocidist_images::platforms::Platform;
use ocidist_snapshot::native::NativeSnapshotter;
use ocidist_snapshot::overlay::OverlaySnapshotter;
use ocidist_snapshot::{
    CommitOpts, ErrorKind, Info, Kind, Labels, Mount, Snapshotter, UnpackEvent, UnpackOptions,
    Usage, mount, unpack,
};

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

async fn no_active<S: Snapshotter + ?Sized>(snapshotter: &S) -> bool {
    snapshotter
        .walk(&["kind==active"])
        .await
        .unwrap()
        .is_empty()
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
    let chain = chain_of(&tars);
    let top = unpack_default(&image, &store, &snapshotter).await.unwrap();
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
    unpack_default(&image, &store, &snapshotter).await.unwrap();
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

/// The native snapshotter with its bind mounts spelled as mounts only the
/// kernel can read (type `none`, as a block device's or a FUSE
/// filesystem's would be): unpack cannot write into their directory, and
/// applies through a temporary mount of them instead.
struct KernelMounted(NativeSnapshotter);

fn kernel_only(mounts: Vec<Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            kind: "none".into(),
            ..m
        })
        .collect()
}

#[ocidist_snapshot::async_trait]
impl Snapshotter for KernelMounted {
    async fn stat(&self, key: &str) -> ocidist_snapshot::Result<Info> {
        self.0.stat(key).await
    }
    async fn update(&self, info: Info, fieldpaths: &[&str]) -> ocidist_snapshot::Result<Info> {
        self.0.update(info, fieldpaths).await
    }
    async fn usage(&self, key: &str) -> ocidist_snapshot::Result<Usage> {
        self.0.usage(key).await
    }
    async fn mounts(&self, key: &str) -> ocidist_snapshot::Result<Vec<Mount>> {
        self.0.mounts(key).await.map(kernel_only)
    }
    async fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> ocidist_snapshot::Result<Vec<Mount>> {
        self.0.prepare(key, parent, labels).await.map(kernel_only)
    }
    async fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: Labels,
    ) -> ocidist_snapshot::Result<Vec<Mount>> {
        self.0.view(key, parent, labels).await.map(kernel_only)
    }
    async fn commit_with(
        &self,
        name: &str,
        key: &str,
        opts: CommitOpts,
    ) -> ocidist_snapshot::Result<()> {
        self.0.commit_with(name, key, opts).await
    }
    async fn remove(&self, key: &str) -> ocidist_snapshot::Result<()> {
        self.0.remove(key).await
    }
    async fn walk(&self, filters: &[&str]) -> ocidist_snapshot::Result<Vec<Info>> {
        self.0.walk(filters).await
    }
    async fn close(&self) -> ocidist_snapshot::Result<()> {
        self.0.close().await
    }
}

/// A snapshotter whose mounts are not a directory unpack can write (a
/// block device's, say) is applied to through a temporary mount, as
/// containerd's applier does; it used to be refused.
#[tokio::test]
async fn mounts_only_the_kernel_reads_unpack_through_a_temporary_mount() {
    let dir = tempfile::tempdir().unwrap();
    let snapshotter = KernelMounted(NativeSnapshotter::open(dir.path()).unwrap());
    let mounts = snapshotter
        .prepare("probe", None, Labels::new())
        .await
        .unwrap();
    assert!(
        mount::ApplyTarget::from_mounts(&mounts).is_err(),
        "{mounts:?}"
    );
    snapshotter.remove("probe").await.unwrap();
    unpacks_and_resumes(snapshotter).await;
}

#[tokio::test]
async fn overlay_unpack_resumes_and_builds_the_rootfs() {
    let dir = tempfile::tempdir().unwrap();
    unpacks_and_resumes(OverlaySnapshotter::open(dir.path()).unwrap()).await;
}

/// Every entry under `root` with what must not change in a committed
/// snapshot: [`full_tree`]'s line and the inode.
fn fingerprint(root: &std::path::Path) -> BTreeMap<String, String> {
    full_tree(root)
        .into_iter()
        .map(|(rel, line)| {
            let ino = inode(root.join(&rel));
            (rel, format!("{line} ino={ino}"))
        })
        .collect()
}

fn inode(path: std::path::PathBuf) -> u64 {
    std::fs::symlink_metadata(path).unwrap().ino()
}

/// A native unpack shares the files of the layer below by hard link (the
/// `APPLY_ONLY_LABEL` hint); applying the next layer replaces entries and
/// never changes the layer below. A container's snapshot, prepared without
/// the hint, gets copies.
/// A `FROM scratch` image with nothing added has no layers: it unpacks to
/// no snapshot at all, and its root filesystem is one prepared with no
/// parent, empty (as containerd unpacks it).
#[tokio::test]
async fn an_image_with_no_layers_unpacks_to_an_empty_root_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let image = store_image(&store, &[]).await;
    let snapshotters: [Arc<dyn Snapshotter>; 2] = [
        Arc::new(NativeSnapshotter::open(dir.path().join("native")).unwrap()),
        Arc::new(OverlaySnapshotter::open(dir.path().join("overlay")).unwrap()),
    ];
    for snapshotter in snapshotters {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let options = UnpackOptions {
            events: Some(tx),
            ..Default::default()
        };
        let top = unpack(&image, &store, &*snapshotter, &matcher(), options)
            .await
            .unwrap();
        assert_eq!(top, None);
        assert!(rx.try_recv().is_err(), "no layer, no event");
        assert!(snapshotter.walk(&[]).await.unwrap().is_empty());

        let mounts = snapshotter
            .prepare("rootfs", None, Labels::new())
            .await
            .unwrap();
        let target = tempfile::tempdir().unwrap();
        mount::mount_all(&mounts, target.path()).unwrap();
        let entries = std::fs::read_dir(target.path()).unwrap().count();
        mount::unmount(target.path()).unwrap();
        assert_eq!(entries, 0);
    }
}

#[tokio::test]
async fn native_unpack_shares_unchanged_files_and_never_changes_the_layer_below() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let native = NativeSnapshotter::open(dir.path().join("native")).unwrap();
    let base = tar_of(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/kept", b"k", 0o644),
        Entry::Link("etc/kept-link", "etc/kept"),
        Entry::File("etc/replaced", b"old", 0o644),
        Entry::File("etc/chmodded", b"c", 0o644),
        Entry::File("etc/gone", b"g", 0o644),
        Entry::Symlink("etc/sym", "kept"),
        Entry::Fifo("etc/fifo"),
        Entry::Xattr("etc/attr", b"a", "user.test", b"before"),
        Entry::Dir("opq", 0o755),
        Entry::File("opq/old", b"o", 0o644),
    ]);
    let top = tar_of(&[
        Entry::File("etc/replaced", b"new", 0o600),
        // Same bytes, new mode: the entry is replaced, not chmodded in place.
        Entry::File("etc/chmodded", b"c", 0o600),
        Entry::Xattr("etc/attr", b"a", "user.test", b"after"),
        Entry::File("etc/.wh.gone", b"", 0o644),
        Entry::Link("etc/late-link", "etc/kept"),
        Entry::Dir("etc", 0o700),
        Entry::File("opq/.wh..wh..opq", b"", 0o644),
        Entry::File("opq/new", b"n", 0o644),
    ]);
    let chain = chain_of(&[base.clone(), top.clone()]);
    // The base alone first, to look at its snapshot before the top goes on.
    let base_image = store_image(&store, std::slice::from_ref(&base)).await;
    unpack_default(&base_image, &store, &native).await.unwrap();
    let below = native.path(chain[0].as_ref()).await.unwrap();
    let before = fingerprint(&below);
    assert_eq!(before.len(), 11, "{before:?}");

    let image = store_image(&store, &[base, top]).await;
    unpack_default(&image, &store, &native).await.unwrap();
    assert_eq!(fingerprint(&below), before, "the layer below changed");
    let above = native.path(chain[1].as_ref()).await.unwrap();
    assert_eq!(inode(above.join("etc/kept")), inode(below.join("etc/kept")));
    assert_eq!(inode(above.join("etc/sym")), inode(below.join("etc/sym")));
    assert_eq!(inode(above.join("etc/fifo")), inode(below.join("etc/fifo")));
    assert_eq!(
        inode(above.join("etc/kept-link")),
        inode(above.join("etc/kept")),
        "a hardlink group stays one group"
    );
    assert_eq!(
        inode(above.join("etc/late-link")),
        inode(below.join("etc/kept"))
    );
    for replaced in ["etc", "etc/replaced", "etc/chmodded", "etc/attr", "opq"] {
        assert_ne!(
            inode(above.join(replaced)),
            inode(below.join(replaced)),
            "{replaced}"
        );
    }
    let t = tree(&above);
    assert_eq!(t["etc"], "dir 700 0:0");
    assert_eq!(t["etc/replaced"], "file:new 600 0:0");
    assert_eq!(t["etc/chmodded"], "file:c 600 0:0");
    assert!(
        !t.contains_key("etc/gone") && !t.contains_key("opq/old"),
        "{t:?}"
    );
    assert_eq!(t["opq/new"], "file:n 644 0:0");
    let attr = &fingerprint(&above)["etc/attr"];
    assert!(attr.contains(" user.test=after "), "{attr}");
    assert!(
        before["etc/attr"].contains(" user.test=before "),
        "{before:?}"
    );

    // A container's snapshot is a copy: writing into it changes nothing below.
    let top_before = fingerprint(&above);
    let mounts = native
        .prepare("container", Some(chain[1].as_ref()), Labels::new())
        .await
        .unwrap();
    let root = mount::writable_dir(&mounts).unwrap();
    assert_ne!(inode(root.join("etc/kept")), inode(above.join("etc/kept")));
    std::fs::write(root.join("etc/kept"), b"written in place").unwrap();
    std::fs::set_permissions(
        root.join("etc/late-link"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert_eq!(fingerprint(&above), top_before);
    assert_eq!(fingerprint(&below), before);
    assert_eq!(
        tree(&root)["etc/kept-link"],
        "file:written in place 600 0:0",
        "the copy keeps its hardlink group"
    );
}

/// A hardlink entry whose own mode differs changes the inode it joins, as
/// containerd does; in a native unpack that inode is shared with the layer
/// below, so it gets a copy of its own first, every name of its group in
/// the snapshot pointed at the copy, and the layer below is not changed.
#[tokio::test]
async fn a_hardlinks_own_metadata_never_reaches_the_native_layer_below() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let native = NativeSnapshotter::open(dir.path().join("native")).unwrap();
    let base = tar_of(&[
        Entry::Dir("bin", 0o755),
        Entry::File("bin/tool", b"t", 0o755),
        Entry::Link("bin/tool-link", "bin/tool"),
    ]);
    let top = tar_of(&[Entry::LinkAs("bin/alias", "bin/tool", 0o700, 1_600_000_000)]);
    let chain = chain_of(&[base.clone(), top.clone()]);
    let base_image = store_image(&store, std::slice::from_ref(&base)).await;
    unpack_default(&base_image, &store, &native).await.unwrap();
    let below = native.path(chain[0].as_ref()).await.unwrap();
    let before = fingerprint(&below);

    let image = store_image(&store, &[base, top]).await;
    unpack_default(&image, &store, &native).await.unwrap();
    assert_eq!(fingerprint(&below), before, "the layer below changed");
    let above = native.path(chain[1].as_ref()).await.unwrap();
    let group: Vec<_> = ["bin/tool", "bin/tool-link", "bin/alias"]
        .iter()
        .map(|name| std::fs::symlink_metadata(above.join(name)).unwrap())
        .collect();
    assert_ne!(group[0].ino(), inode(below.join("bin/tool")));
    for meta in &group {
        assert_eq!(meta.ino(), group[0].ino(), "one group, one inode");
        assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o700, 1_600_000_000));
    }
    assert_eq!(std::fs::read(above.join("bin/alias")).unwrap(), b"t");
}

#[tokio::test]
async fn a_wrong_diff_id_commits_nothing_native() {
    let dir = tempfile::tempdir().unwrap();
    wrong_diff_id_commits_nothing(NativeSnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn a_wrong_diff_id_commits_nothing_overlay() {
    let dir = tempfile::tempdir().unwrap();
    wrong_diff_id_commits_nothing(OverlaySnapshotter::open(dir.path()).unwrap()).await;
}

async fn wrong_diff_id_commits_nothing<S: Snapshotter>(snapshotter: S) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let tars = layers();
    // The config lists the diff IDs in the other order.
    let image = store_image(&store, &tars).await;
    let wrong_desc = with_layers_reordered(&store, &image, &[1, 0]).await;
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

/// A layer that is not a tar the applier reads (encrypted, erofs) is
/// refused before anything is applied, as containerd's applier finds no
/// stream processor for it; a blob that is no layer at all (a WASM module)
/// is not counted as one, so the config's diff IDs outnumber the layers, as
/// in containerd's unpacker; Docker's and OCI's tar types, plain or
/// compressed, all unpack.
#[tokio::test]
async fn layers_that_are_not_tars_are_refused_and_docker_and_oci_ones_unpack() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let snapshotter = NativeSnapshotter::open(dir.path().join("snap")).unwrap();
    let image = store_image(&store, &layers()).await;
    let wasm = with_manifest_edited(&store, &image, |m| {
        m["layers"][1]["mediaType"] = "application/vnd.wasm.content.layer.v1+wasm".into();
    })
    .await;
    let err = unpack_default(&wasm, &store, &snapshotter)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("1 layers but 2 diff IDs"), "{err}");
    assert!(snapshotter.walk(&[]).await.unwrap().is_empty(), "{err}");
    for refused in [
        "application/vnd.oci.image.layer.v1.tar+encrypted",
        "application/vnd.erofs.layer.v1",
    ] {
        let edited = with_manifest_edited(&store, &image, |m| {
            m["layers"][1]["mediaType"] = refused.into();
        })
        .await;
        let err = unpack_default(&edited, &store, &snapshotter)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unimplemented, "{err}");
        assert!(err.to_string().contains(refused), "{err}");
        assert!(snapshotter.walk(&[]).await.unwrap().is_empty(), "{err}");
    }
    let docker = with_manifest_edited(&store, &image, |m| {
        m["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar".into();
        m["layers"][1]["mediaType"] =
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip".into();
    })
    .await;
    let top = unpack_default(&docker, &store, &snapshotter).await.unwrap();
    assert_eq!(&top, chain_of(&layers()).last().unwrap());
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
    assert!(no_active(&snapshotter).await);
}

/// Many layers, each writing into a directory only the first one lists: each
/// layer's apply looks at the layers below it, while the unpack commits them.
fn a_tall_image_that_looks_below() -> Vec<Vec<u8>> {
    let names: Vec<String> = (0..40).map(|i| format!("shared/{i:02}")).collect();
    let mut tars = vec![tar_of(&[Entry::Dir("shared", 0o750)])];
    tars.extend(
        names
            .iter()
            .map(|name| tar_of(&[Entry::File(name, name.as_bytes(), 0o644)])),
    );
    tars
}

/// When the other unpack commits a layer first, ours is dropped; not while
/// layers above it, applied over it, may still be looking at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpack_that_loses_a_commit_race_keeps_its_layer_until_the_layers_above_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let tars = a_tall_image_that_looks_below();
    let image = store_image(&store, &tars).await;
    let platform = matcher();
    for round in 0..6 {
        let snapshotter =
            OverlaySnapshotter::open(dir.path().join(format!("snap-{round}"))).unwrap();
        let options = || UnpackOptions {
            concurrency: 8,
            ..Default::default()
        };
        let (a, b) = tokio::join!(
            unpack(&image, &store, &snapshotter, &platform, options()),
            unpack(&image, &store, &snapshotter, &platform, options()),
        );
        let (a, b) = (
            a.unwrap().expect("an image with layers has a top chain ID"),
            b.unwrap().expect("an image with layers has a top chain ID"),
        );
        assert_eq!(a, b);
        let committed = snapshotter.walk(&["kind==committed"]).await.unwrap();
        assert_eq!(committed.len(), tars.len(), "round {round}");
        assert!(
            no_active(&snapshotter).await,
            "round {round}: nothing left active"
        );
        let t = rootfs_of(&snapshotter, a.as_ref()).await;
        assert_eq!(t["shared"], "dir 750 0:0", "round {round}");
        assert_eq!(t.len(), tars.len(), "round {round}: {t:?}");
    }
}

/// Layers whose overlay apply must look at the layers below: a parent
/// directory the tar does not list, whiteouts in directories only lower
/// layers have, whiteouts under a file or of nothing.
fn layers_that_look_below() -> Vec<Vec<u8>> {
    // A big file first, so the layers above start long before the
    // directories they depend on exist.
    let big = vec![7u8; 2 << 20];
    vec![
        tar_of(&[
            Entry::File("big", &big, 0o644),
            Entry::Dir("opt", 0o750),
            Entry::File("opt/a", b"a", 0o644),
            Entry::Dir("srv", 0o755),
            Entry::File("srv/gone", b"g", 0o644),
            Entry::File("srv/kept", b"k", 0o644),
            Entry::Dir("var", 0o755),
            Entry::Dir("var/lib", 0o711),
            Entry::File("var/lib/old", b"o", 0o644),
            Entry::File("etc/issue", b"v1", 0o644),
        ]),
        tar_of(&[Entry::File("x/one", b"1", 0o600)]),
        tar_of(&[Entry::File("opt/b", b"b", 0o644)]),
        tar_of(&[Entry::File("srv/.wh.gone", b"", 0o644)]),
        tar_of(&[
            Entry::File("var/lib/.wh..wh..opq", b"", 0o644),
            Entry::File("var/lib/new", b"n", 0o644),
        ]),
        tar_of(&[
            Entry::File("etc/issue/.wh.x", b"", 0o644),
            Entry::File("nowhere/.wh.y", b"", 0o644),
            Entry::File("z", b"z", 0o644),
        ]),
    ]
}

async fn rootfs_of<S: Snapshotter>(snapshotter: &S, top: &str) -> BTreeMap<String, String> {
    listed_rootfs_of(snapshotter, top, tree).await
}

/// The tree of the root filesystem `top` as `list` describes it.
async fn listed_rootfs_of<S: Snapshotter>(
    snapshotter: &S,
    top: &str,
    list: fn(&std::path::Path) -> BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mounts = snapshotter
        .view("tree-view", Some(top), Labels::new())
        .await
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&mounts, target.path()).unwrap();
    let t = list(target.path());
    mount::unmount(target.path()).unwrap();
    snapshotter.remove("tree-view").await.unwrap();
    t
}

#[tokio::test]
async fn overlay_parallel_unpack_builds_what_native_builds() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let image = store_image(&store, &layers_that_look_below()).await;
    let native = NativeSnapshotter::open(dir.path().join("native")).unwrap();
    let top = unpack(
        &image,
        &store,
        &native,
        &matcher(),
        UnpackOptions::default(),
    )
    .await
    .unwrap()
    .expect("an image with layers has a top chain ID");
    let expected = rootfs_of(&native, top.as_ref()).await;
    assert_eq!(expected["opt"], "dir 750 0:0");
    assert_eq!(expected["var/lib"], "dir 711 0:0");
    assert!(expected.contains_key("opt/b") && expected.contains_key("var/lib/new"));
    assert!(!expected.contains_key("srv/gone") && !expected.contains_key("var/lib/old"));
    assert!(expected["etc/issue"].starts_with("file:v1"), "{expected:?}");
    assert!(!expected.contains_key("nowhere"), "{expected:?}");

    let second_layer = image_layers(&store, &image).await[1].clone();
    for concurrency in [1, 3, 6] {
        let overlay =
            OverlaySnapshotter::open(dir.path().join(format!("overlay-{concurrency}"))).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let options = UnpackOptions {
            events: Some(tx),
            concurrency,
            ..Default::default()
        };
        let overlay_top = unpack(&image, &store, &overlay, &matcher(), options)
            .await
            .unwrap()
            .expect("an image with layers has a top chain ID");
        assert_eq!(overlay_top, top);
        assert_eq!(
            rootfs_of(&overlay, top.as_ref()).await,
            expected,
            "concurrency {concurrency}"
        );
        // Every layer committed onto the one below, nothing left active.
        let committed = overlay.walk(&["kind==committed"]).await.unwrap();
        assert_eq!(committed.len(), 6);
        assert!(no_active(&overlay).await);
        let info = overlay.stat(top.as_ref()).await.unwrap();
        assert!(info.parent.is_some());

        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(event);
        }
        let position =
            |wanted: &dyn Fn(&UnpackEvent) -> bool| events.iter().position(wanted).unwrap();
        let second_starts =
            position(&|e| matches!(e, UnpackEvent::Unpacking { layer } if *layer == second_layer));
        let first_done = position(&|e| matches!(e, UnpackEvent::Unpacked { .. }));
        if concurrency > 1 {
            assert!(
                second_starts < first_done,
                "layer 2 starts while layer 1 is applied: {events:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_parallel_unpack_that_fails_midway_leaves_no_active_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let snapshotter = OverlaySnapshotter::open(dir.path().join("snap")).unwrap();
    let tars = layers_that_look_below();
    let image = store_image(&store, &tars).await;
    // Layers 3 and 4 swapped: their diff IDs mismatch.
    let wrong_desc = with_layers_reordered(&store, &image, &[0, 1, 2, 4, 3, 5]).await;
    let err = unpack(
        &wrong_desc,
        &store,
        &snapshotter,
        &matcher(),
        UnpackOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("diff ID mismatch"), "{err}");
    assert!(
        no_active(&snapshotter).await,
        "every extraction snapshot is removed"
    );
    let chain = chain_of(&tars);
    for info in snapshotter.walk(&[]).await.unwrap() {
        assert!(
            info.name == chain[0].as_ref()
                || info.name == chain[1].as_ref()
                || info.name == chain[2].as_ref(),
            "only layers below the bad one may be committed: {info:?}"
        );
    }
    // The right image then unpacks, reusing whatever was committed.
    let top = unpack_default(&image, &store, &snapshotter).await.unwrap();
    assert_eq!(&top, chain.last().unwrap());
    assert_eq!(snapshotter.walk(&[]).await.unwrap().len(), 6);
}

async fn image_layers(
    store: &LocalStore,
    image: &ocidist_content::Descriptor,
) -> Vec<ocidist_content::Descriptor> {
    let bytes = ocidist_content::read_blob(store, image, 1 << 20)
        .await
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    serde_json::from_value(manifest["layers"].clone()).unwrap()
}

/// Stores a copy of `image`'s manifest with its layers in `order` (the config,
/// and so the diff IDs, unchanged); returns its descriptor.
async fn with_layers_reordered(
    store: &LocalStore,
    image: &ocidist_content::Descriptor,
    order: &[usize],
) -> ocidist_content::Descriptor {
    with_manifest_edited(store, image, |manifest| {
        let layers = manifest["layers"].clone();
        manifest["layers"] = order.iter().map(|&i| layers[i].clone()).collect();
    })
    .await
}

/// Stores a copy of `image`'s manifest as `edit` leaves it; returns its
/// descriptor.
async fn with_manifest_edited(
    store: &LocalStore,
    image: &ocidist_content::Descriptor,
    edit: impl FnOnce(&mut serde_json::Value),
) -> ocidist_content::Descriptor {
    let mut manifest: serde_json::Value = serde_json::from_slice(
        &ocidist_content::read_blob(store, image, 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    edit(&mut manifest);
    let bytes = serde_json::to_vec(&manifest).unwrap();
    ocidist_content::write_blob(
        store,
        ocidist_content::WriterOpts::new("edited"),
        &bytes[..],
        Labels::new(),
    )
    .await
    .unwrap();
    serde_json::from_value(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": ocidist_content::sha256_of(&bytes).to_string(),
        "size": bytes.len()
    }))
    .unwrap()
}

async fn unpack_default<S: Snapshotter>(
    image: &ocidist_content::Descriptor,
    store: &LocalStore,
    snapshotter: &S,
) -> ocidist_snapshot::Result<ocidist_content::Digest> {
    unpack(
        image,
        store,
        snapshotter,
        &matcher(),
        UnpackOptions::default(),
    )
    .await
    .map(|top| top.expect("an image with layers has a top chain ID"))
}

fn chain_of(tars: &[Vec<u8>]) -> Vec<ocidist_content::Digest> {
    chain_ids(
        &tars
            .iter()
            .map(|t| ocidist_content::sha256_of(t))
            .collect::<Vec<_>>(),
    )
}

/// Layers that hardlink to entries only a lower layer has. overlayfs copies
/// such a file up before it links; applied straight into the upper
/// directory, the unpack must do the same.
fn layers_that_link_below() -> Vec<Vec<u8>> {
    vec![
        tar_of(&[
            Entry::Dir("bin", 0o755),
            Entry::Owned("bin/tool", b"#!tool", 0o751, 7, 8),
            Entry::Xattr("bin/labelled", b"l", "user.origin", b"lower"),
            Entry::Symlink("bin/sh", "tool"),
            Entry::Fifo("bin/pipe"),
            Entry::Dir("etc", 0o755),
            Entry::File("etc/gone", b"g", 0o644),
        ]),
        tar_of(&[
            Entry::Link("tool2", "bin/tool"),
            Entry::Link("usr/labelled", "bin/labelled"),
            Entry::Link("sh2", "bin/sh"),
            Entry::Link("pipe2", "bin/pipe"),
        ]),
    ]
}

#[tokio::test]
async fn hardlinks_to_lower_layers_copy_the_target_up_as_overlayfs_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let image = store_image(&store, &layers_that_link_below()).await;
    let native = NativeSnapshotter::open(dir.path().join("native")).unwrap();
    let top = unpack_default(&image, &store, &native).await.unwrap();
    let expected = rootfs_of(&native, top.as_ref()).await;
    assert!(expected.contains_key("tool2") && expected.contains_key("pipe2"));
    let expected_full = listed_rootfs_of(&native, top.as_ref(), full_tree).await;

    let overlay = OverlaySnapshotter::open(dir.path().join("overlay")).unwrap();
    let top = unpack_default(&image, &store, &overlay).await.unwrap();
    let mounts = overlay
        .view("linked", Some(top.as_ref()), Labels::new())
        .await
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&mounts, target.path()).unwrap();
    let root = target.path();
    let full = full_tree(root);
    let links: Vec<(u64, u64, u64, u64)> = [
        ("tool2", "bin/tool"),
        ("usr/labelled", "bin/labelled"),
        ("sh2", "bin/sh"),
        ("pipe2", "bin/pipe"),
    ]
    .iter()
    .map(|(link, original)| {
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::symlink_metadata(root.join(link)).unwrap();
        let b = std::fs::symlink_metadata(root.join(original)).unwrap();
        (a.ino(), b.ino(), a.nlink(), b.nlink())
    })
    .collect();
    mount::unmount(root).unwrap();
    overlay.remove("linked").await.unwrap();

    assert_eq!(rootfs_of(&overlay, top.as_ref()).await, expected);
    for (link_ino, original_ino, link_nlink, original_nlink) in links {
        assert_eq!(link_ino, original_ino, "one inode");
        assert_eq!((link_nlink, original_nlink), (2, 2));
    }
    // What the copy kept beyond the tree: times and user xattrs.
    for copied in ["bin/tool", "bin/labelled", "bin/sh", "bin/pipe"] {
        assert_eq!(full[copied], expected_full[copied], "{copied}");
    }
    assert!(
        full["usr/labelled"].ends_with("user.origin=lower"),
        "{full:?}"
    );
}

/// A link to something the merged view does not show fails, on both
/// snapshotters: whited out below, or under a directory this layer made
/// opaque.
#[tokio::test]
async fn hardlinks_to_hidden_lower_entries_fail_on_both_snapshotters() {
    let base = || {
        tar_of(&[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/gone", b"g", 0o644),
        ])
    };
    let cases = [
        vec![
            base(),
            tar_of(&[Entry::File("etc/.wh.gone", b"", 0o644)]),
            tar_of(&[Entry::Link("link", "etc/gone")]),
        ],
        vec![
            base(),
            tar_of(&[
                Entry::File("etc/.wh..wh..opq", b"", 0o644),
                Entry::Link("link", "etc/gone"),
            ]),
        ],
    ];
    for (i, tars) in cases.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("content")).unwrap();
        let image = store_image(&store, tars).await;
        let native = NativeSnapshotter::open(dir.path().join("native")).unwrap();
        let overlay = OverlaySnapshotter::open(dir.path().join("overlay")).unwrap();
        for err in [
            unpack_default(&image, &store, &native).await.unwrap_err(),
            unpack_default(&image, &store, &overlay).await.unwrap_err(),
        ] {
            assert!(
                err.to_string().contains("does not exist"),
                "case {i}: {err}"
            );
        }
    }
}

/// An image of more layers than unpack takes (a 4 MiB manifest can list
/// 20,000, all one blob) is refused before anything is prepared.
#[tokio::test]
async fn an_image_of_too_many_layers_is_refused_at_once() {
    use ocidist_content::sha256_of;
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let snapshotter = OverlaySnapshotter::open(dir.path().join("snap")).unwrap();
    let tar = layers().remove(0);
    let layer = common::put(
        &store,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &common::gzip(&tar),
    )
    .await;
    let count = ocidist_snapshot::MAX_LAYERS + 1;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": vec![sha256_of(&tar).to_string(); count]},
    });
    let config = common::put(
        &store,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    )
    .await;
    let image = common::put_manifest(&store, config, vec![layer; count]).await;
    let err = unpack(
        &image,
        &store,
        &snapshotter,
        &matcher(),
        UnpackOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("more than the"), "{err}");
    assert!(snapshotter.walk(&[]).await.unwrap().is_empty());
}

/// A provider whose layer reads wait: forever for the blobs in `stalled`,
/// until `open` says so for those in `held`. Each waiting read reports its
/// digest on `reached` first.
struct Gated {
    store: LocalStore,
    stalled: Vec<ocidist_content::Digest>,
    held: Vec<ocidist_content::Digest>,
    reached: tokio::sync::mpsc::UnboundedSender<ocidist_content::Digest>,
    open: tokio::sync::watch::Receiver<bool>,
}

#[ocidist_content::async_trait]
impl ocidist_content::Provider for Gated {
    async fn reader_at(
        &self,
        desc: &ocidist_content::Descriptor,
    ) -> ocidist_content::Result<Box<dyn ocidist_content::ReaderAt>> {
        if self.stalled.contains(desc.digest()) {
            let _ = self.reached.send(desc.digest().clone());
            std::future::pending::<()>().await;
        }
        if self.held.contains(desc.digest()) {
            let _ = self.reached.send(desc.digest().clone());
            let mut open = self.open.clone();
            open.wait_for(|open| *open).await.unwrap();
        }
        self.store.reader_at(desc).await
    }
}

/// An unpack whose future is dropped leaves its extraction snapshots;
/// `remove_own_extractions` removes them while another unpack on the same
/// snapshotter runs, and leaves that one's, another process's and a
/// container's alone.
#[tokio::test]
async fn the_extractions_of_a_dropped_unpack_go_and_a_running_ones_stay_native() {
    let dir = tempfile::tempdir().unwrap();
    let snapshotter = NativeSnapshotter::open(dir.path().join("snap")).unwrap();
    dropped_unpacks_are_cleaned_up_beside_running_ones(dir.path(), snapshotter).await;
}

#[tokio::test]
async fn the_extractions_of_a_dropped_unpack_go_and_a_running_ones_stay_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let snapshotter = OverlaySnapshotter::open(dir.path().join("snap")).unwrap();
    dropped_unpacks_are_cleaned_up_beside_running_ones(dir.path(), snapshotter).await;
}

async fn active_keys<S: Snapshotter>(snapshotter: &S) -> std::collections::BTreeSet<String> {
    let active = snapshotter.walk(&["kind==active"]).await.unwrap();
    active.into_iter().map(|info| info.name).collect()
}

async fn dropped_unpacks_are_cleaned_up_beside_running_ones<S: Snapshotter>(
    dir: &std::path::Path,
    snapshotter: S,
) {
    use ocidist_snapshot::{EXTRACT_KEY_PREFIX, EXTRACTED_BY_LABEL, remove_own_extractions};
    let store = LocalStore::open(dir.join("content")).unwrap();
    let dropped_tars = layers();
    let running_tars = layers_that_look_below();
    let dropped_image = store_image(&store, &dropped_tars).await;
    let running_image = store_image(&store, &running_tars).await;
    let (reached, mut reached_rx) = tokio::sync::mpsc::unbounded_channel();
    let (open, open_rx) = tokio::sync::watch::channel(false);
    let provider = Gated {
        stalled: image_layers(&store, &dropped_image)
            .await
            .iter()
            .map(|l| l.digest().clone())
            .collect(),
        held: image_layers(&store, &running_image)
            .await
            .iter()
            .map(|l| l.digest().clone())
            .collect(),
        store,
        reached,
        open: open_rx,
    };
    let platform = matcher();

    // Dropped once it waits for a layer: its extraction snapshots exist.
    let unpack_to_drop = unpack(
        &dropped_image,
        &provider,
        &snapshotter,
        &platform,
        UnpackOptions::default(),
    );
    tokio::select! {
        result = unpack_to_drop => panic!("a stalled unpack ended: {result:?}"),
        _ = reached_rx.recv() => {}
    }
    let left_by_dropped = active_keys(&snapshotter).await;
    assert!(
        !left_by_dropped.is_empty(),
        "the dropped unpack left nothing"
    );

    // Another process's extraction and a container's snapshot.
    let foreign = format!("{EXTRACT_KEY_PREFIX}sha256:00-1-2-3-0");
    let foreign_labels = Labels::from([(EXTRACTED_BY_LABEL.to_string(), "1-2-3".to_string())]);
    snapshotter
        .prepare(&foreign, None, foreign_labels)
        .await
        .unwrap();
    snapshotter
        .prepare("container", None, Labels::new())
        .await
        .unwrap();

    let running = unpack(
        &running_image,
        &provider,
        &snapshotter,
        &platform,
        UnpackOptions::default(),
    );
    let clean_up_while_it_runs = async {
        // The dropped unpack's other layers may have reported first.
        while !provider.held.contains(&reached_rx.recv().await.unwrap()) {}
        let before = active_keys(&snapshotter).await;
        let removed = remove_own_extractions(&snapshotter).await.unwrap();
        assert_eq!(removed, left_by_dropped.len());
        let after = active_keys(&snapshotter).await;
        let expected: std::collections::BTreeSet<String> =
            before.difference(&left_by_dropped).cloned().collect();
        assert_eq!(after, expected);
        assert!(after.contains(&foreign) && after.contains("container"));
        assert!(
            after.len() > 2,
            "the running unpack's extraction stays: {after:?}"
        );
        open.send(true).unwrap();
    };
    let (top, ()) = tokio::join!(running, clean_up_while_it_runs);
    let top = top.unwrap().unwrap();
    assert_eq!(&top, chain_of(&running_tars).last().unwrap());
    assert_eq!(
        active_keys(&snapshotter).await,
        [foreign.clone(), "container".to_string()].into()
    );
    // Committed layers do not carry the label.
    for info in snapshotter.walk(&["kind==committed"]).await.unwrap() {
        assert!(!info.labels.contains_key(EXTRACTED_BY_LABEL), "{info:?}");
    }
    // Nothing of ours is left to remove.
    assert_eq!(remove_own_extractions(&snapshotter).await.unwrap(), 0);
}

/// A blob listed among a manifest's layers that is no layer (an SBOM) is
/// not counted against the config's diff IDs, nor applied, as containerd's
/// unpacker counts only layers.
#[tokio::test]
async fn a_non_layer_blob_among_the_layers_is_passed_over() {
    use common::{gzip, put};
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("content")).unwrap();
    let s = NativeSnapshotter::open(dir.path().join("native")).unwrap();
    let tar = tar_of(&[Entry::File("hello", b"world", 0o644)]);
    let layer = put(
        &store,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gzip(&tar),
    )
    .await;
    let sbom = put(
        &store,
        "application/spdx+json",
        br#"{"spdxVersion":"SPDX-2.3"}"#,
    )
    .await;
    let diff_id = ocidist_content::sha256_of(&tar);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    });
    let config = put(
        &store,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    )
    .await;
    let image = common::put_manifest(&store, config, vec![layer, sbom]).await;

    let top = unpack(&image, &store, &s, &matcher(), UnpackOptions::default())
        .await
        .unwrap();
    assert_eq!(top, Some(diff_id.clone()));
    let path = s.path(diff_id.as_ref()).await.unwrap();
    assert!(tree(&path).contains_key("hello"), "{:?}", tree(&path));
}
