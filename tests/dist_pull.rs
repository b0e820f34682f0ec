//! End-to-end tests of `dist pull`, `rootfs` and `apply`: a layered image
//! pushed to the real registry, pulled and unpacked by the built binary.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Watched, dist, dist_binary, gzip, ingest, ok, stderr, stdout};
use ocidist::content::sha256_of;
use ocidist::remotes::testkit::{Fault, FaultProxy, Registry};

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, name, data).unwrap();
}

/// `len` incompressible bytes, so a gzip layer is as big as its file.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect()
}

/// Two layers: a base, then a change, a deletion and a setuid file.
fn layer_tars(big: usize) -> Vec<Vec<u8>> {
    let mut base = tar::Builder::new(Vec::new());
    file(&mut base, "etc/issue", b"v1\n", 0o644);
    file(&mut base, "etc/obsolete", b"x", 0o644);
    file(&mut base, "opt/blob", &noise(big), 0o644);
    let mut top = tar::Builder::new(Vec::new());
    file(&mut top, "etc/issue", b"v2\n", 0o644);
    file(&mut top, "etc/.wh.obsolete", b"", 0o644);
    file(&mut top, "usr/bin/tool", b"#!/bin/sh\n", 0o4755);
    vec![base.into_inner().unwrap(), top.into_inner().unwrap()]
}

/// Builds the image of `layer_tars(big)` with `dist ingest` and pushes it
/// with `dist push`.
fn push_image(registry_host: &str, work: &Path, big: usize) -> String {
    let tars = layer_tars(big);
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_of(t).to_string()).collect();
    push_layers(registry_host, work, &tars, &diff_ids, "e2e/rootfs:1")
}

/// Pushes an image of the gzipped `tars` as `name` whose config says
/// `diff_ids` (right or wrong); returns its reference.
fn push_layers(
    registry_host: &str,
    work: &Path,
    tars: &[Vec<u8>],
    diff_ids: &[String],
    name: &str,
) -> String {
    let builder = work.join("builder");
    let manifest = build_manifest(&builder, tars, diff_ids, &host_architecture());
    push_built(&builder, registry_host, name, &manifest)
}

/// This machine's architecture as OCI spells it.
fn host_architecture() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// Ingests a linux/`architecture` image of the gzipped `tars` into the
/// store at `builder`; returns its manifest's descriptor.
fn build_manifest(
    builder: &Path,
    tars: &[Vec<u8>],
    diff_ids: &[String],
    architecture: &str,
) -> serde_json::Value {
    let layers: Vec<_> = tars
        .iter()
        .map(|t| {
            ingest(
                builder,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &gzip(t),
            )
        })
        .collect();
    let config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = ingest(
        builder,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    })
    .to_string();
    ingest(
        builder,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.as_bytes(),
    )
}

/// Pushes `root` (a manifest or index in the store at `builder`) as `name`;
/// returns its reference.
fn push_built(builder: &Path, registry_host: &str, name: &str, root: &serde_json::Value) -> String {
    let reference = format!("{registry_host}/{name}");
    ok(dist(
        builder,
        &["push", &reference, root["digest"].as_str().unwrap()],
        b"",
    ));
    reference
}

/// Copies the rootfs of `reference` out of the `snapshotter` of the store
/// at `root` into `dest`, and checks the copy.
fn copy_and_check_rootfs(root: &Path, snapshotter: &str, reference: &str, dest: &Path) {
    ok(dist(
        root,
        &[
            "--snapshotter",
            snapshotter,
            "rootfs",
            "--copy",
            reference,
            dest.to_str().unwrap(),
        ],
        b"",
    ));
    check_tree(dest);
}

fn check_tree(root: &Path) {
    assert_eq!(std::fs::read(root.join("etc/issue")).unwrap(), b"v2\n");
    assert!(
        !root.join("etc/obsolete").exists(),
        "the whiteout deleted it"
    );
    let tool = std::fs::metadata(root.join("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
}

/// A copy goes into a staging directory beside DEST, renamed to DEST when
/// whole: a killed one leaves no DEST, only that directory, which the next
/// copy to DEST sweeps at once, however recent (its name is given only once
/// its flock is held), but not one another copy holds, leaving none of its
/// own. A directory still under its making name (a copy killed before it
/// renamed it) is swept only once it is old: its maker may be about to lock it.
fn copies_sweep_what_a_killed_copy_left(
    root: &Path,
    snapshotter: &str,
    reference: &str,
    dir: &Path,
) {
    let dest = dir.join("again");
    let killed = dir.join(".again.ocidist-partial-killed");
    std::fs::create_dir_all(killed.join("etc")).unwrap();
    std::fs::write(killed.join("etc/issue"), b"half").unwrap();
    let live = dir.join(".again.ocidist-partial-live");
    std::fs::create_dir(&live).unwrap();
    let live_lock = std::fs::File::open(&live).unwrap();
    live_lock.lock().unwrap();
    let making_old = dir.join(".again.ocidist-making-old");
    let making_new = dir.join(".again.ocidist-making-new");
    for made in [&making_old, &making_new] {
        std::fs::create_dir(made).unwrap();
    }
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    for staged in [&live, &making_old] {
        std::fs::File::open(staged)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    copy_and_check_rootfs(root, snapshotter, reference, &dest);
    let mut staged: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".again."))
        .collect();
    staged.sort();
    assert_eq!(
        staged,
        [".again.ocidist-making-new", ".again.ocidist-partial-live"]
    );
}

fn pull_and_mount(snapshotter: &str) {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_image(&registry.host(), work.path(), 100_000);
    let root = work.path().join("store");
    let out = ok(dist(
        &root,
        &["--snapshotter", snapshotter, "pull", &reference],
        b"",
    ));
    assert!(
        out.contains(": unpacking") && out.contains(": unpacked in"),
        "{out}"
    );
    assert!(
        out.contains("elapsed: ") && out.contains("unpacked: sha256:"),
        "{out}"
    );
    assert!(
        out.contains(": done |++++++++++| "),
        "a plain bar per blob: {out}"
    );
    assert!(
        !out.contains('\x1b'),
        "no escape codes off a terminal: {out}"
    );

    // A second pull finds everything.
    let again = ok(dist(
        &root,
        &["--snapshotter", snapshotter, "pull", &reference],
        b"",
    ));
    assert!(
        again.contains("already unpacked") && !again.contains(": unpacking"),
        "{again}"
    );

    let mnt = work.path().join("mnt");
    let try_rootfs = |args: &[&str]| {
        let mut all = vec!["--snapshotter", snapshotter, "rootfs"];
        all.extend_from_slice(args);
        dist(&root, &all, b"")
    };
    let rootfs = |args: &[&str]| ok(try_rootfs(args));
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    check_tree(&mnt);
    // The rootfs is writable and its writes stay in its snapshot.
    std::fs::write(mnt.join("etc/new"), b"mine").unwrap();
    refuses_to_unmount_what_is_busy_or_not_its_own(&root, snapshotter, &mnt, work.path());
    unmounts_only_what_it_mounted(&root, snapshotter, &reference, work.path());
    rootfs(&["--unmount", mnt.to_str().unwrap()]);
    assert!(!mnt.join("etc/issue").exists(), "unmounted");

    // Unmounted by hand (or by a reboot): --unmount still removes the
    // snapshot, so the same directory can be used again.
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    let c_mnt = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string; the mount is this test's own.
    assert_eq!(unsafe { libc::umount2(c_mnt.as_ptr(), 0) }, 0);
    rootfs(&["--unmount", mnt.to_str().unwrap()]);
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    rootfs(&["--unmount", mnt.to_str().unwrap()]);

    // Unmounted by hand (or a `rootfs` killed before it mounted), then
    // mounted again at the same directory: the same snapshot, its writes
    // kept. Mounted there still (a `rootfs` killed after it mounted, run
    // again): done already, and nothing mounted twice.
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    std::fs::write(mnt.join("etc/kept"), b"mine").unwrap();
    // SAFETY: a valid C string; the mount is this test's own.
    assert_eq!(unsafe { libc::umount2(c_mnt.as_ptr(), 0) }, 0);
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    assert_eq!(std::fs::read(mnt.join("etc/kept")).unwrap(), b"mine");
    let mounts_at = |dir: &Path| {
        let dir = dir.canonicalize().unwrap();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
            .count()
    };
    let before = mounts_at(&mnt);
    let twice = try_rootfs(&[&reference, mnt.to_str().unwrap()]);
    assert!(
        twice.status.success()
            && stderr(&twice).contains(&format!(
                "rootfs {reference} {}: mounted there already",
                mnt.display()
            )),
        "{}",
        stderr(&twice)
    );
    assert_eq!(mounts_at(&mnt), before, "not mounted twice");
    rootfs(&["--unmount", mnt.to_str().unwrap()]);
    // Unmounted already (a `--unmount` killed after it was done, run
    // again): nothing to do, and said so.
    let again = try_rootfs(&["--unmount", mnt.to_str().unwrap()]);
    assert!(
        again.status.success() && stderr(&again).contains("nothing to unmount"),
        "{}",
        stderr(&again)
    );

    // Covered by another filesystem mounted over it: refused, and both stay
    // until that one is taken off.
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    let cover = Tmpfs::over(&mnt);
    let covered = try_rootfs(&["--unmount", mnt.to_str().unwrap()]);
    assert_eq!(covered.status.code(), Some(1), "{}", stderr(&covered));
    assert!(
        stderr(&covered).contains("mounted over the rootfs"),
        "{}",
        stderr(&covered)
    );
    assert!(cover.unmount(), "the covering tmpfs stays");
    assert!(mnt.join("etc/issue").exists(), "the rootfs stays");
    rootfs(&["--unmount", mnt.to_str().unwrap()]);

    // Unmounted by hand and another filesystem mounted there since: that
    // one stays, and the snapshot goes.
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    // SAFETY: a valid C string; the mount is this test's own.
    assert_eq!(unsafe { libc::umount2(c_mnt.as_ptr(), 0) }, 0);
    std::fs::remove_dir(&mnt).unwrap();
    let tmpfs = Tmpfs::with_a_file(&mnt);
    rootfs(&["--unmount", mnt.to_str().unwrap()]);
    assert_eq!(std::fs::read(mnt.join("file")).unwrap(), b"kept");
    assert!(tmpfs.unmount(), "the tmpfs was left mounted");
    // Gone with a reboot, its directory too (a rootfs under /run): the
    // snapshot still goes, and the directory can be used again.
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::umount2(c_mnt.as_ptr(), 0) }, 0);
    std::fs::remove_dir(&mnt).unwrap();
    rootfs(&["--unmount", mnt.to_str().unwrap()]);
    std::fs::create_dir(&mnt).unwrap();
    rootfs(&[&reference, mnt.to_str().unwrap()]);
    // Without --snapshotter, --unmount finds the snapshotter that mounted
    // it, and makes none the store never used.
    let other = if snapshotter == "native" {
        "overlay"
    } else {
        "native"
    };
    let other_dir = root.join("snapshots").join(other);
    let had_other = other_dir.exists();
    ok(dist(
        &root,
        &["rootfs", "--unmount", mnt.to_str().unwrap()],
        b"",
    ));
    assert!(!mnt.join("etc/issue").exists(), "unmounted");
    assert_eq!(other_dir.exists(), had_other, "{}", other_dir.display());

    // Made private, with the parent made for it: the image's setuid tool
    // is no other user's to run.
    let copy = work.path().join("private/copy");
    copy_and_check_rootfs(&root, snapshotter, &reference, &copy);
    assert!(
        !copy.join("etc/new").exists(),
        "the removed rootfs's writes are gone"
    );
    let private = std::fs::metadata(work.path().join("private")).unwrap();
    assert_eq!(private.mode() & 0o777, 0o700);
    copies_sweep_what_a_killed_copy_left(
        &root,
        snapshotter,
        &reference,
        &work.path().join("private"),
    );

    // prune keeps the layers of recorded images, and removes them once the
    // image is forgotten.
    let with = |args: &[&str]| {
        let mut all = vec!["--snapshotter", snapshotter];
        all.extend_from_slice(args);
        ok(dist(&root, &all, b""))
    };
    let kept = with(&["prune"]);
    assert!(
        kept.contains(&format!("removed 0 {snapshotter} snapshots; 2 kept")),
        "{kept}"
    );
    with(&["images", "rm", &reference]);
    // Young layers stay (a pull may be unpacking them, its image not named yet).
    let young = with(&["prune", "--dry-run"]);
    assert!(
        young.contains(&format!("would remove 0 {snapshotter} snapshots; 2 kept")),
        "{young}"
    );
    let dry = with(&["prune", "--dry-run", "--grace", "0s"]);
    assert!(
        dry.contains(&format!("would remove 2 {snapshotter} snapshots")),
        "{dry}"
    );
    let pruned = with(&["prune", "--grace", "0s"]);
    assert!(
        pruned.contains(&format!("removed 2 {snapshotter} snapshots; 0 kept"))
            && pruned.contains("removed 4 blobs"),
        "{pruned}"
    );
    // Nothing left: the next pull downloads and unpacks again (this time
    // without flushing commits), and --quiet (before or after the command)
    // prints nothing.
    let writeback = ["--snapshot-durability", "writeback"];
    assert_eq!(
        with(&[&writeback[..], &["pull", "--quiet", &reference]].concat()),
        ""
    );
    assert_eq!(with(&["-q", "pull", &reference]), "");
    assert_eq!(with(&["list", "-q"]).lines().count(), 4);
    let again = work.path().join("again");
    with(&["rootfs", "--copy", &reference, again.to_str().unwrap()]);
    check_tree(&again);
}

/// A tmpfs of the test's own, holding `file`.
struct Tmpfs(std::ffi::CString);

impl Tmpfs {
    fn with_a_file(dir: &Path) -> Tmpfs {
        std::fs::create_dir(dir).unwrap();
        Tmpfs::over(dir)
    }

    /// A tmpfs mounted over `dir` (an existing directory), holding `file`.
    fn over(dir: &Path) -> Tmpfs {
        let c_dir = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: valid C strings.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c_dir.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(mounted, 0, "{}", std::io::Error::last_os_error());
        std::fs::write(dir.join("file"), b"kept").unwrap();
        Tmpfs(c_dir)
    }

    /// Whether it was still mounted, to be taken off.
    fn unmount(self) -> bool {
        // SAFETY: a valid C string; the mount is this test's own.
        unsafe { libc::umount2(self.0.as_ptr(), 0) == 0 }
    }
}

/// A rootfs mounted over a mount point: `--unmount` takes off the rootfs
/// only, and what was mounted there before shows again.
fn unmounts_only_what_it_mounted(root: &Path, snapshotter: &str, reference: &str, work: &Path) {
    let under = work.join("under");
    let tmpfs = Tmpfs::with_a_file(&under);
    let rootfs = |args: &[&str]| {
        let mut all = vec!["--snapshotter", snapshotter, "rootfs"];
        all.extend_from_slice(args);
        dist(root, &all, b"")
    };
    let over = rootfs(&[reference, under.to_str().unwrap()]);
    let hidden = !under.join("file").exists() && under.join("etc/issue").exists();
    let off = rootfs(&["--unmount", under.to_str().unwrap()]);
    let shows_again = under.join("file").exists();
    let tmpfs_left = tmpfs.unmount();
    assert!(over.status.success(), "{}", stderr(&over));
    assert!(hidden, "the rootfs was mounted over the tmpfs");
    assert!(off.status.success(), "{}", stderr(&off));
    assert!(shows_again && tmpfs_left, "the tmpfs stays mounted");
}

/// `rootfs --unmount` takes down only a rootfs of its store, and not while
/// a process works inside it: either way it fails and leaves all as it was.
fn refuses_to_unmount_what_is_busy_or_not_its_own(
    root: &Path,
    snapshotter: &str,
    mnt: &Path,
    work: &Path,
) {
    let unmount = |dir: &Path| {
        dist(
            root,
            &[
                "--snapshotter",
                snapshotter,
                "rootfs",
                "--unmount",
                dir.to_str().unwrap(),
            ],
            b"",
        )
    };
    let mut inside = Command::new("sleep")
        .arg("30")
        .current_dir(mnt.join("etc"))
        .spawn()
        .unwrap();
    let busy = unmount(mnt);
    inside.kill().unwrap();
    inside.wait().unwrap();
    assert_eq!(busy.status.code(), Some(1), "{}", stderr(&busy));
    assert!(stderr(&busy).contains("busy"), "{}", stderr(&busy));
    assert!(mnt.join("etc/issue").exists(), "still mounted");

    let other = work.join("not-ours");
    let tmpfs = Tmpfs::with_a_file(&other);
    let refused = unmount(&other);
    let still_there = other.join("file").exists();
    assert!(tmpfs.unmount());
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("no rootfs of this store"),
        "{}",
        stderr(&refused)
    );
    assert!(still_there, "someone else's mount was left alone");
}

#[test]
fn pull_unpacks_and_rootfs_mounts_with_overlay() {
    pull_and_mount("overlay");
}

#[test]
fn pull_unpacks_and_rootfs_mounts_with_native() {
    pull_and_mount("native");
}

/// An image with no layers (`FROM scratch` and a label) pulls, is named,
/// and gives an empty root filesystem, copied or mounted, as `ctr` pulls it.
#[test]
fn a_stored_layer_gone_bad_is_named_by_pull_and_rootfs_with_the_way_out() {
    use std::os::unix::fs::PermissionsExt;
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_image(&registry.host(), work.path(), 1 << 16);
    let root = work.path().join("store");
    ok(dist(&root, &["pull", &reference], b""));

    // The base layer, found through the library in the store dist wrote.
    let layer = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use ocidist::images::ImageStore;
        let content = ocidist::content::local::LocalStore::open(root.join("content")).unwrap();
        let images = ocidist::images::DbImageStore::open(root.join("images.redb")).unwrap();
        let image = images.get(&reference).await.unwrap();
        let matcher =
            ocidist::images::platforms::only(&ocidist::images::platforms::Platform::host());
        let manifest = ocidist::images::manifest::manifest(&content, &image.target, &matcher)
            .await
            .unwrap();
        manifest.layers[0].clone()
    });
    let digest = layer.digest().to_string();
    let path = root
        .join("content/blobs/sha256")
        .join(layer.digest().digest());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, vec![0; layer.size() as usize]).unwrap();

    // The native snapshotter has none of it: both unpack again, from the
    // store, and fail on its bytes.
    let dest = work.path().join("copy");
    let rootfs = dist(
        &root,
        &[
            "--snapshotter",
            "native",
            "rootfs",
            "--copy",
            &reference,
            dest.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(rootfs.status.code(), Some(1), "{rootfs:?}");
    let said = stderr(&rootfs);
    assert!(
        said.contains(&format!("the store's copy of {digest} is corrupt"))
            && said.contains(&format!("dist delete {digest}")),
        "{said}"
    );
    let pulled = dist(&root, &["--snapshotter", "native", "pull", &reference], b"");
    assert_eq!(pulled.status.code(), Some(1), "{pulled:?}");
    let said = stderr(&pulled);
    assert!(
        said.contains(&format!("content {digest}: corrupt"))
            && said.contains(&format!("remove it (dist delete {digest}) and pull again")),
        "{said}"
    );

    // The way out, taken.
    ok(dist(&root, &["delete", &digest], b""));
    ok(dist(
        &root,
        &["--snapshotter", "native", "pull", &reference],
        b"",
    ));
    copy_and_check_rootfs(&root, "native", &reference, &dest);
}

#[test]
fn an_image_with_no_layers_pulls_to_an_empty_root_filesystem() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_layers(&registry.host(), work.path(), &[], &[], "e2e/scratch:1");
    for snapshotter in ["overlay", "native"] {
        let root = work.path().join(format!("store-{snapshotter}"));
        let with = |args: &[&str]| {
            let mut all = vec!["--snapshotter", snapshotter];
            all.extend_from_slice(args);
            ok(dist(&root, &all, b""))
        };
        let out = with(&["pull", &reference]);
        assert!(
            out.contains("unpacked: no layers (an empty root filesystem)"),
            "{out}"
        );
        assert!(with(&["images"]).contains("e2e/scratch:1"));

        let copy = work.path().join(format!("copy-{snapshotter}"));
        with(&["rootfs", "--copy", &reference, copy.to_str().unwrap()]);
        assert_eq!(std::fs::read_dir(&copy).unwrap().count(), 0);
        let mode = std::fs::metadata(&copy).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o755, "{mode:o}");

        // Mounted, it is writable; unmounted, what was written goes.
        let mnt = work.path().join(format!("mnt-{snapshotter}"));
        with(&["rootfs", &reference, mnt.to_str().unwrap()]);
        std::fs::write(mnt.join("written"), b"mine").unwrap();
        let again = with(&["rootfs", &reference, mnt.to_str().unwrap()]);
        assert!(again.contains(mnt.to_str().unwrap()), "{again}");
        with(&["rootfs", "--unmount", mnt.to_str().unwrap()]);
        assert!(!mnt.join("written").exists(), "unmounted");
    }
}

#[test]
fn pull_all_platforms_fetches_every_platform_and_unpacks_the_hosts() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let builder = work.path().join("builder");
    let tars = layer_tars(10_000);
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_of(t).to_string()).collect();
    let host = build_manifest(&builder, &tars, &diff_ids, &host_architecture());
    let other_architecture = if host_architecture() == "s390x" {
        "riscv64"
    } else {
        "s390x"
    };
    let mut other_tar = tar::Builder::new(Vec::new());
    file(&mut other_tar, "etc/issue", b"elsewhere\n", 0o644);
    let other_tar = other_tar.into_inner().unwrap();
    let other = build_manifest(
        &builder,
        std::slice::from_ref(&other_tar),
        &[sha256_of(&other_tar).to_string()],
        other_architecture,
    );
    let other_layer = sha256_of(&gzip(&other_tar)).to_string();
    let entry = |manifest: &serde_json::Value, architecture: &str| {
        let mut entry = manifest.clone();
        entry["platform"] = serde_json::json!({"os": "linux", "architecture": architecture});
        entry
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&other, other_architecture), entry(&host, &host_architecture())],
    })
    .to_string();
    let index = ingest(
        &builder,
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
    );
    let reference = push_built(&builder, &registry.host(), "e2e/multi:1", &index);

    // Without the flag, the other platform's blobs stay in the registry.
    let one = work.path().join("one");
    ok(dist(&one, &["pull", &reference], b""));
    let listed = ok(dist(&one, &["list", "-q"], b""));
    assert!(
        !listed.contains(other["digest"].as_str().unwrap()),
        "{listed}"
    );
    assert!(!listed.contains(&other_layer), "{listed}");

    let all = work.path().join("all");
    let out = ok(dist(&all, &["pull", "--all-platforms", &reference], b""));
    assert!(out.contains("unpacked: sha256:"), "{out}");
    let listed = ok(dist(&all, &["list", "-q"], b""));
    assert!(
        listed.contains(other["digest"].as_str().unwrap()),
        "{listed}"
    );
    assert!(listed.contains(&other_layer), "{listed}");
    let other_platform = format!("linux/{other_architecture}");
    let check_other = |root: &Path| {
        dist(
            root,
            &["--platform", &other_platform, "images", "check"],
            b"",
        )
    };
    assert!(
        !check_other(&one).status.success(),
        "only the host's platform was pulled"
    );
    assert!(
        ok(check_other(&all)).contains(": complete"),
        "every platform is present"
    );
    // Only the host's platform was unpacked: its two layers.
    let kept = ok(dist(&all, &["prune", "--dry-run"], b""));
    assert!(kept.contains("snapshots; 2 kept"), "{kept}");
    copy_and_check_rootfs(&all, "overlay", &reference, &work.path().join("copy"));
}

#[test]
fn root_in_a_user_namespace_pulls_and_mounts_with_user_xattrs() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let mut base = tar::Builder::new(Vec::new());
    file(&mut base, "d/a", b"hidden by the next layer", 0o644);
    let mut null = tar::Header::new_gnu();
    null.set_entry_type(tar::EntryType::Char);
    null.set_device_major(1).unwrap();
    null.set_device_minor(3).unwrap();
    null.set_mode(0o666);
    null.set_size(0);
    base.append_data(&mut null, "dev/null", &b""[..]).unwrap();
    let mut top = tar::Builder::new(Vec::new());
    file(&mut top, "d/.wh..wh..opq", b"", 0o644);
    file(&mut top, "d/b", b"seen", 0o644);
    let tars = [base.into_inner().unwrap(), top.into_inner().unwrap()];
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_of(t).to_string()).collect();
    let reference = push_layers(
        &registry.host(),
        work.path(),
        &tars,
        &diff_ids,
        "e2e/userns:1",
    );
    let root = work.path().join("store");
    let mnt = work.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Root mapped to root, in a user and mount namespace of its own: the
    // mount goes with the namespace when the shell ends.
    let script = r#"
        set -eu
        dist() { "$DIST" --root "$ROOT" --snapshotter overlay "$@"; }
        dist pull "$REF"
        dist rootfs "$REF" "$MNT"
        ls "$MNT/d"
        test ! -e "$MNT/dev/null" && echo "no device"
        grep -q userxattr /proc/self/mounts && echo "userxattr"
    "#;
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "bash", "-c", script])
        .env("DIST", dist_binary())
        .env("ROOT", &root)
        .env("REF", &reference)
        .env("MNT", &mnt)
        .output()
        .expect("unshare runs (apt-get install util-linux)");
    let warned = stderr(&out);
    assert!(
        warned.contains("dist: warning: layer-sha256:") && warned.contains("1 device node skipped"),
        "the skipped device is said: {warned}"
    );
    let said = ok(out);
    assert!(said.contains("b\nno device\nuserxattr\n"), "{said}");
    assert!(
        !said.contains("\na\n"),
        "the opaque directory hides the lower d/a: {said}"
    );
}

/// mount(2) of `source` (of `fstype`, with `data`) at `target`, this
/// test's own; it must succeed.
fn mount_at(
    source: &std::ffi::CStr,
    target: &Path,
    fstype: Option<&std::ffi::CStr>,
    flags: libc::c_ulong,
    data: Option<&std::ffi::CStr>,
) {
    let target = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
    // SAFETY: valid C strings or nulls.
    let mounted = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    assert_eq!(mounted, 0, "{}", std::io::Error::last_os_error());
}

/// A mount this test made at a directory, unmounted when dropped.
struct OwnMount(std::path::PathBuf);

impl Drop for OwnMount {
    fn drop(&mut self) {
        let dir = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; the mount is this test's own.
        unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A tmpfs of a given size, the test's own, unmounted when dropped.
struct SmallDisk(OwnMount);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        SmallDisk(OwnMount(dir.to_path_buf())).remount(0, size)
    }

    fn remount(self, flags: libc::c_ulong, size: &str) -> SmallDisk {
        let data = std::ffi::CString::new(format!("size={size}")).unwrap();
        mount_at(c"tmpfs", &self.0.0, Some(c"tmpfs"), flags, Some(&data));
        self
    }

    fn path(&self) -> &Path {
        &self.0.0
    }
}

/// A disk that fills while a layer unpacks (its blobs fitted) fails the
/// pull with the full disk's own error, not with what a database said
/// after it, and not after unpacking once more for nothing; and it gives
/// back the room its half-unpacked layers took, even when the snapshot
/// database has none left to record that in (their records go at the next
/// open), however often it is retried. Once there is room, the same pull
/// finishes and builds the right tree.
#[test]
fn a_disk_that_fills_during_unpack_says_so_and_the_rerun_finishes() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_image(&registry.host(), work.path(), 8 << 20);
    let disk = SmallDisk::mount(&work.path().join("small"), "12m");
    let root = disk.path().join("store");
    ok(dist(&root, &["fetch", &reference], b""));
    let full = dist(&root, &["pull", &reference], b"");
    assert!(!full.status.success(), "the rootfs cannot fit");
    let said = stderr(&full);
    assert!(said.contains("No space left on device"), "{said}");
    assert!(!said.contains("Previous I/O error"), "{said}");
    for _ in 0..2 {
        let again = stderr(&dist(&root, &["pull", &reference], b""));
        assert!(again.contains("No space left on device"), "{again}");
    }
    // The failed unpacks' snapshots gave their room back, every one, and
    // each pull's records went at the next one's open: a prune (which
    // opens the snapshotter without that sweep) finds the last pull's two
    // layers only, and the blobs.
    let dirs = root.join("snapshots/overlay/snapshots");
    let left: Vec<_> = std::fs::read_dir(&dirs).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    ok(dist(&root, &["images", "rm", &reference], b""));
    let pruned = ok(dist(&root, &["prune", "--grace", "0s"], b""));
    assert!(
        pruned.contains("removed 2 overlay snapshots; 0 kept")
            && pruned.contains("removed 4 blobs"),
        "{pruned}"
    );
    let _disk = disk.remount(libc::MS_REMOUNT, "64m");
    ok(dist(&root, &["pull", &reference], b""));
    ok(dist(&root, &["images", "check"], b""));
    copy_and_check_rootfs(&root, "overlay", &reference, &work.path().join("copy"));
    // An export that fills its destination names it, not only the store's
    // blob it was copying.
    let small = SmallDisk::mount(&work.path().join("smaller"), "2m");
    let layout = small.path().join("layout");
    let full = dist(
        &root,
        &["export", &reference, layout.to_str().unwrap()],
        b"",
    );
    let said = stderr(&full);
    assert!(
        said.contains("No space left on device")
            && said.contains(&format!("to {}", layout.join("blobs/sha256").display())),
        "{said}"
    );
}

/// A pull, or a second prune, that must wait for a prune in another process
/// (it holds the leases while it decides) says so, and goes on once the
/// prune is done.
#[test]
fn a_pull_or_prune_waiting_for_a_prune_says_so() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_image(&registry.host(), work.path(), 1000);
    let root = work.path().join("store");
    std::fs::create_dir_all(root.join("leases")).unwrap();
    // What a prune holds, stopped (SIGSTOP) or slow.
    let prune = std::fs::File::create(root.join("leases/.lock")).unwrap();
    prune.lock().unwrap();
    let spawn = |args: &[&str]| {
        Watched::spawn(
            Command::new(dist_binary())
                .arg("--root")
                .arg(&root)
                .args(args),
        )
    };
    let mut pull = spawn(&["pull", &reference]);
    let mut second_prune = spawn(&["prune", "--dry-run"]);
    // Each says it waits after a second of it, however slowly it starts;
    // the prune's lock is held until both have.
    let within = Duration::from_secs(60);
    let pull_said = pull.wait_for("waiting for a prune in another process", within);
    let prune_said = second_prune.wait_for("waiting for another prune", within);
    let waiting = pull.running() && second_prune.running();
    drop(prune);
    let (status, said) = pull.finish();
    assert!(waiting && status.success(), "{said}");
    assert!(pull_said, "{said}");
    let (status, said) = second_prune.finish();
    assert!(status.success(), "{said}");
    assert!(prune_said, "{said}");
}

/// A read-only bind mount of `source` at `at`, the test's own.
fn read_only_view(source: &Path, at: &Path) -> OwnMount {
    std::fs::create_dir_all(at).unwrap();
    let source = std::ffi::CString::new(source.to_str().unwrap()).unwrap();
    mount_at(&source, at, None, libc::MS_BIND, None);
    let view = OwnMount(at.to_path_buf());
    let read_only = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    mount_at(&source, at, None, read_only, None);
    view
}

/// A registry holding a small image, and a store at `work/store` that
/// pulled it; the image's reference.
fn pulled_small_image(work: &Path) -> (Registry, String, std::path::PathBuf) {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let reference = push_image(&registry.host(), work, 1000);
    let root = work.join("store");
    ok(dist(&root, &["pull", &reference], b""));
    (registry, reference, root)
}

/// What killed processes left among the snapshots is a prune's to report:
/// its dry run names it and removes nothing, the prune removes it and says
/// so (other commands sweep it quietly when they open the snapshotter).
#[test]
fn a_prune_reports_the_leftovers_it_removes_and_its_dry_run_keeps_them() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, _, root) = pulled_small_image(work.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A removal killed in a container, where it was pid 2.
    let leftover = root.join(format!("snapshots/overlay/snapshots/rm-2-{now}-1f-0"));
    std::fs::create_dir_all(leftover.join("usr")).unwrap();
    std::fs::write(leftover.join("usr/big"), vec![1u8; 100_000]).unwrap();

    let would = ok(dist(&root, &["prune", "--dry-run"], b""));
    let named = format!("overlay leftover {}", leftover.display());
    assert!(
        would.contains(&format!("would remove {named} (")),
        "{would}"
    );
    assert!(leftover.exists(), "a dry run removes nothing");
    let pruned = ok(dist(&root, &["prune"], b""));
    assert!(pruned.contains(&format!("removed {named} (")), "{pruned}");
    assert!(!leftover.exists());
    ok(dist(&root, &["images", "check"], b""));
}

/// A store that cannot be written (a read-only mount; as well another
/// user's) can still be read: its images listed, checked, exported and
/// copied out, a prune's dry run made, its blobs read. A change fails saying why, and changes nothing.
#[test]
fn a_read_only_store_can_be_read_and_says_why_it_cannot_be_changed() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, reference, root) = pulled_small_image(work.path());
    // Made readable by its admin: the snapshotter's own dirs are 0700 no more.
    for dir in ["snapshots/overlay", "snapshots/overlay/snapshots"] {
        let readable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(root.join(dir), readable).unwrap();
    }
    let view = read_only_view(&root, &work.path().join("read-only"));
    let read_only = view.0.clone();

    let images = ok(dist(&read_only, &["images"], b""));
    assert!(images.contains(&reference), "{images}");
    let checked = ok(dist(&read_only, &["images", "check"], b""));
    assert!(checked.contains("complete"), "{checked}");
    let would = ok(dist(
        &read_only,
        &["prune", "--dry-run", "--grace", "0s"],
        b"",
    ));
    assert!(
        would.contains("would remove 0 overlay snapshots")
            && would.contains("would remove 0 blobs"),
        "{would}"
    );
    let listed = ok(dist(&read_only, &["list", "-q"], b""));
    assert_eq!(listed.lines().count(), 4, "{listed}");
    // Exported, with no lease (none can be written there, nor is one needed).
    let layout = work.path().join("layout");
    let exported = ok(dist(
        &read_only,
        &["export", &reference, layout.to_str().unwrap()],
        b"",
    ));
    assert!(exported.contains("(4 blobs)"), "{exported}");
    // Copied out of the snapshots the pull made, with no lease either.
    let copy = work.path().join("copy");
    ok(dist(
        &read_only,
        &["rootfs", "--copy", &reference, copy.to_str().unwrap()],
        b"",
    ));
    assert_eq!(std::fs::read(copy.join("etc/issue")).unwrap(), b"v2\n");
    assert_eq!(std::fs::read(copy.join("opt/blob")).unwrap().len(), 1000);
    assert!(!copy.join("etc/obsolete").exists());
    // A mount needs a snapshot of its own, which cannot be made there.
    let mnt = work.path().join("mnt");
    let refused = dist(
        &read_only,
        &["rootfs", &reference, mnt.to_str().unwrap()],
        b"",
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("Read-only file system"),
        "{}",
        stderr(&refused)
    );

    let refused = dist(&read_only, &["images", "rm", &reference], b"");
    assert!(!refused.status.success());
    let said = stderr(&refused);
    assert!(said.contains("read-only"), "{said}");
    drop(view);
    let images = ok(dist(&root, &["images"], b""));
    assert!(images.contains(&reference), "{images}");

    // An image fetched but never unpacked cannot be copied out: that needs
    // snapshots made in the store.
    let fetched = work.path().join("fetched");
    ok(dist(&fetched, &["pull", &reference], b""));
    ok(dist(&fetched, &["images", "rm", &reference], b""));
    let pruned = ok(dist(&fetched, &["prune", "--grace", "0s"], b""));
    assert!(pruned.contains("removed 2 overlay snapshots"), "{pruned}");
    ok(dist(&fetched, &["fetch", &reference], b""));
    let view = read_only_view(&fetched, &work.path().join("read-only-fetched"));
    let refused = dist(
        &view.0,
        &[
            "rootfs",
            "--copy",
            &reference,
            copy.join("x").to_str().unwrap(),
        ],
        b"",
    );
    assert!(!refused.status.success());
    let said = stderr(&refused);
    assert!(
        said.contains("only an image unpacked in it already"),
        "{said}"
    );
}

/// A store whose databases a killed pull left unclean (redb must repair
/// them, which takes write access) can still be read where it cannot be
/// written: each is repaired in a copy in memory, and the file is left for
/// a writer to repair.
#[test]
fn a_store_a_killed_pull_left_can_be_read_where_it_cannot_be_written() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, _proxy, reference) = dripping_registry(work.path(), 8 << 20);
    let root = work.path().join("store");
    let mut killed = pull_mid_layer(&root, &[], &reference, Stdio::null());
    killed.kill().unwrap();
    killed.wait().unwrap();
    let view = read_only_view(&root, &work.path().join("read-only"));
    let images = dist(&view.0, &["images"], b"");
    assert!(images.status.success(), "{}", stderr(&images));
    let would = dist(&view.0, &["prune", "--dry-run"], b"");
    assert!(would.status.success(), "{}", stderr(&would));
    assert!(
        stdout(&would).contains("would remove 1 expired leases"),
        "{}",
        stdout(&would)
    );
    drop(view);
    ok(dist(&root, &["pull", &reference], b""));
    ok(dist(&root, &["images", "check"], b""));
}

/// A store reached through a bind mount (a container's volume): its rootfs
/// binds show their sources by the volume's own path, and `--unmount` must
/// still know them for its own, not remove a snapshot that is mounted.
#[test]
fn a_store_in_a_bind_mounted_volume_unmounts_its_rootfs() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_image(&registry.host(), work.path(), 1000);
    let (real, volume) = (work.path().join("real"), work.path().join("volume"));
    std::fs::create_dir(&real).unwrap();
    std::fs::create_dir(&volume).unwrap();
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let (c_real, c_volume) = (c(&real), c(&volume));
    // SAFETY: valid C strings; the mount is this test's own.
    let bound = unsafe {
        libc::mount(
            c_real.as_ptr(),
            c_volume.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(bound, 0, "{}", std::io::Error::last_os_error());
    let mnt = work.path().join("mnt");
    let run = |args: &[&str]| {
        dist(
            &volume,
            &[&["--snapshotter", "native"][..], args].concat(),
            b"",
        )
    };
    ok(run(&["pull", &reference]));
    ok(run(&["rootfs", &reference, mnt.to_str().unwrap()]));
    check_tree(&mnt);
    let unmounted = run(&["rootfs", "--unmount", mnt.to_str().unwrap()]);
    let still_mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&format!(" {} ", mnt.display()));
    if still_mounted {
        let c_mnt = c(&mnt);
        // SAFETY: as above.
        unsafe { libc::umount2(c_mnt.as_ptr(), libc::MNT_DETACH) };
    }
    // SAFETY: as above.
    unsafe { libc::umount2(c_volume.as_ptr(), libc::MNT_DETACH) };
    ok(unmounted);
    assert!(!still_mounted, "the rootfs was left mounted");
}

#[test]
fn apply_reads_a_layer_from_stdin_and_prints_its_diff_id() {
    let work = tempfile::tempdir().unwrap();
    let tars = layer_tars(1000);
    let dir = work.path().join("tree");
    let first = ok(dist(
        &work.path().join("s"),
        &["apply", dir.to_str().unwrap()],
        &gzip(&tars[0]),
    ));
    assert_eq!(first.trim(), sha256_of(&tars[0]).to_string());
    let second = ok(dist(
        &work.path().join("s"),
        &["apply", dir.to_str().unwrap()],
        &tars[1],
    ));
    assert_eq!(second.trim(), sha256_of(&tars[1]).to_string());
    check_tree(&dir);
    let bad = dist(
        &work.path().join("s"),
        &["apply", dir.to_str().unwrap()],
        b"\x1f\x8bnot gzip at all",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).starts_with("dist: apply "),
        "{bad:?}"
    );
    // A warning (an xattr never set from a layer) is said, in the singular
    // for one, but not under --quiet: it is no error.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.trusted.x", &b"v"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, "noted", &b"x"[..]).unwrap();
    let noted = b.into_inner().unwrap();
    for quiet in [false, true] {
        let mut args = if quiet { vec!["-q"] } else { Vec::new() };
        args.extend(["apply", dir.to_str().unwrap()]);
        let applied = dist(&work.path().join("s"), &args, &noted);
        let warned = stderr(&applied);
        assert_eq!(ok(applied).trim(), sha256_of(&noted).to_string());
        if quiet {
            assert_eq!(warned, "", "--quiet");
        } else {
            assert!(
                warned.starts_with("dist: apply: 1 extended attribute in the layer not applied"),
                "{warned}"
            );
        }
    }
}

/// A proxy in front of `registry` that trickles every blob body (64 KiB
/// every `delay`), so a download lasts long enough to act on mid-layer.
fn dripping_proxy(registry: &Registry, delay: Duration) -> FaultProxy {
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    proxy.add(
        Some("GET"),
        "/blobs/sha256:",
        usize::MAX,
        Fault::Drip {
            chunk: 64 * 1024,
            delay,
        },
    );
    proxy
}

/// A registry holding an image with a `big`-byte layer, behind a proxy that
/// trickles blob bodies so a kill lands mid-layer; returns both (alive until
/// dropped) and the image's reference through the proxy.
fn dripping_registry(work: &std::path::Path, big: usize) -> (Registry, FaultProxy, String) {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    push_image(&registry.host(), work, big);
    let proxy = dripping_proxy(&registry, Duration::from_millis(20));
    let reference = format!("{}/e2e/rootfs:1", proxy.host());
    (registry, proxy, reference)
}

#[test]
fn a_pull_killed_mid_layer_resumes_on_rerun() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, _proxy, reference) = dripping_registry(work.path(), 8 << 20);
    let root = work.path().join("store");
    let mut child = pull_mid_layer(&root, &[], &reference, Stdio::null());
    child.kill().unwrap();
    child.wait().unwrap();
    let out = ok(dist(&root, &["pull", &reference], b""));
    assert!(out.contains("resuming at"), "{out}");
    let mnt = work.path().join("copy");
    ok(dist(
        &root,
        &["rootfs", "--copy", &reference, mnt.to_str().unwrap()],
        b"",
    ));
    check_tree(&mnt);
    assert_eq!(
        std::fs::metadata(mnt.join("opt/blob")).unwrap().len(),
        8 << 20
    );
}

/// containerd protects a pull with a lease; `dist` does too. A prune with no
/// grace period at all, run while a pull is mid-layer, leaves everything the
/// pull has committed or is applying; once a pull is killed, its lease
/// expires and the next prune takes what it left.
#[test]
fn a_prune_during_a_pull_keeps_what_the_pull_relies_on() {
    let work = tempfile::tempdir().unwrap();
    let (_registry, _proxy, reference) = dripping_registry(work.path(), 8 << 20);
    let root = work.path().join("store");
    let pull = pull_mid_layer(
        &root,
        &["--snapshotter", "native"],
        &reference,
        Stdio::piped(),
    );
    // The manifest, the config and the small layers are in, not yet named.
    for _ in 0..3 {
        let pruned = ok(dist(
            &root,
            &["--snapshotter", "native", "prune", "--grace", "0s"],
            b"",
        ));
        assert!(
            pruned.contains("removed 0 native snapshots") && pruned.contains("removed 0 blobs"),
            "{pruned}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pulled = pull.wait_with_output().unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    ok(dist(&root, &["images", "check"], b""));
    let copy = work.path().join("copy");
    copy_and_check_rootfs(&root, "native", &reference, &copy);

    // A killed pull's lease dies with it: the next prune takes its leftovers.
    let other = work.path().join("other");
    let mut killed = pull_mid_layer(&other, &[], &reference, Stdio::null());
    // And its unpack has begun: the base layer, still downloading, is the
    // only one, so a snapshot there is an extraction.
    let snapshots = other.join("snapshots/overlay/snapshots");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&snapshots).map_or(true, |mut d| d.next().is_none()) {
        assert!(Instant::now() < deadline, "the pull never began unpacking");
        std::thread::sleep(Duration::from_millis(20));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    // A dry run says so and keeps the dead lease, for the real prune to
    // know what it abandoned...
    let dry = ok(dist(&other, &["prune", "--dry-run"], b""));
    assert!(
        dry.contains("would remove 1 expired leases")
            && dry.contains("would remove overlay snapshot extract-"),
        "{dry}"
    );
    // ...its extractions at once, young as they are (no one will finish them)...
    let pruned = ok(dist(&other, &["prune"], b""));
    assert!(
        pruned.contains("removed 1 expired leases")
            && pruned.contains("removed overlay snapshot extract-"),
        "{pruned}"
    );
    // ...its blobs once they are past the grace period.
    let pruned = ok(dist(&other, &["prune", "--grace", "0s"], b""));
    assert!(!pruned.contains("removed 0 blobs"), "{pruned}");
}

/// The bytes written so far into the running ingests of big (≥ 1 MiB)
/// blobs, from `dist active`: small blobs may commit before a signal lands.
fn ingested(root: &Path) -> u64 {
    // No store yet: nothing ingested (`active` says there is none).
    if !root.exists() {
        return 0;
    }
    ok(dist(root, &["active"], b""))
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (offset, total) = l.split_whitespace().nth(1)?.split_once('/')?;
            let total: u64 = total.parse().ok()?;
            (total >= 1 << 20).then(|| offset.parse::<u64>().ok())?
        })
        .sum()
}

/// Starts `dist [args] pull reference` and returns it once it has written
/// bytes of a big layer beyond what `root`'s ingests held before.
fn pull_mid_layer(root: &Path, args: &[&str], reference: &str, stderr: Stdio) -> Child {
    let before = ingested(root);
    let child = Command::new(dist_binary())
        .args(["--root", root.to_str().unwrap()])
        .args(args)
        .args(["pull", reference])
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ingested(root) <= before {
        assert!(
            Instant::now() < deadline,
            "the big layer's ingest never progressed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Sends `signal` to a pull once it has written bytes, and returns how the
/// pull ended.
fn interrupt_pull(root: &Path, reference: &str, signal: libc::c_int) -> Output {
    let child = pull_mid_layer(root, &[], reference, Stdio::piped());
    // SAFETY: the pid is our own child's, which has not been waited for.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    child.wait_with_output().unwrap()
}

/// A layer that will not unpack (here, its diff ID is not the config's)
/// fails the pull at once: the layer still downloading above it is not
/// waited for, and its ingest stays for a later pull to resume.
#[test]
fn a_bad_layer_fails_the_pull_without_waiting_for_the_rest() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let mut bad = tar::Builder::new(Vec::new());
    file(&mut bad, "small", b"x", 0o644);
    let mut big = tar::Builder::new(Vec::new());
    // Fifteen seconds of dripping (below): far more than both pulls, failing
    // at once, wait for the fetch, even on a loaded machine.
    file(&mut big, "big", &noise(24 << 20), 0o644);
    // Fetched one blob at a time, its download starts only after the big
    // one's: its unpack, waiting for bytes to exist, must hear of the failure.
    let mut last = tar::Builder::new(Vec::new());
    file(&mut last, "last", b"z", 0o644);
    let tars = [
        bad.into_inner().unwrap(),
        big.into_inner().unwrap(),
        last.into_inner().unwrap(),
    ];
    let diff_ids = [
        sha256_of(b"not this layer").to_string(),
        sha256_of(&tars[1]).to_string(),
        sha256_of(&tars[2]).to_string(),
    ];
    push_layers(&registry.host(), work.path(), &tars, &diff_ids, "e2e/bad:1");
    let proxy = dripping_proxy(&registry, Duration::from_millis(40));
    let root = work.path().join("store");
    for snapshotter in ["overlay", "native"] {
        let reference = format!("{}/e2e/bad:1", proxy.host());
        let pulled = dist(
            &root,
            &[
                "--snapshotter",
                snapshotter,
                "pull",
                "--concurrency",
                "1",
                &reference,
            ],
            b"",
        );
        let said = stderr(&pulled);
        assert_eq!(pulled.status.code(), Some(1), "{said}");
        assert!(said.contains("diff ID"), "{snapshotter}: {said}");
        let active = ok(dist(&root, &["active"], b""));
        assert!(
            active.contains(&format!("layer-{}", sha256_of(&gzip(&tars[1])))),
            "{snapshotter}: the big layer was still downloading, and stays: {active}"
        );
    }
}

#[test]
fn a_failed_pull_names_nothing_and_moves_no_name() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let tars = layer_tars(1000);
    let wrong = [
        sha256_of(b"not this layer").to_string(),
        sha256_of(&tars[1]).to_string(),
    ];
    let root = work.path().join("store");
    let target_of = |reference: &str| {
        let listed = ok(dist(&root, &["images"], b""));
        listed
            .lines()
            .find(|row| row.starts_with(reference))
            .map(|row| {
                row.split_whitespace()
                    .find(|w| w.starts_with("sha256:"))
                    .unwrap()
                    .to_string()
            })
    };

    let fresh = push_layers(&registry.host(), work.path(), &tars, &wrong, "e2e/fresh:1");
    let failed = dist(&root, &["pull", &fresh], b"");
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert_eq!(target_of(&fresh), None, "a failed pull names nothing");

    let moving = push_image(&registry.host(), work.path(), 1000);
    ok(dist(&root, &["pull", &moving], b""));
    let good = target_of(&moving).expect("a pulled image is named");
    push_layers(&registry.host(), work.path(), &tars, &wrong, "e2e/rootfs:1");
    let failed = dist(&root, &["pull", &moving], b"");
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert_eq!(target_of(&moving), Some(good), "the name keeps its target");
}

/// Pushes the image of `tars` (with their own diff IDs) as `name`, and
/// starts a proxy in front of the registry that does `fault` to the first
/// layer's blob `times` times.
fn faulty_first_layer(
    registry: &Registry,
    work: &Path,
    tars: &[Vec<u8>],
    name: &str,
    times: usize,
    fault: Fault,
) -> FaultProxy {
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_of(t).to_string()).collect();
    push_layers(&registry.host(), work, tars, &diff_ids, name);
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let first = format!("/blobs/{}", sha256_of(&gzip(&tars[0])));
    proxy.add(Some("GET"), &first, times, fault);
    proxy
}

/// Bytes the registry got wrong fail the unpack as soon as they are read,
/// but the pull reports the fetch's error, which says what happened.
#[test]
fn a_corrupt_download_is_reported_as_the_fetchs_digest_mismatch() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let tars = layer_tars(100_000);
    let flip = Fault::FlipByte(50_000);
    let proxy = faulty_first_layer(
        &registry,
        work.path(),
        &tars,
        "e2e/flipped:1",
        usize::MAX,
        flip,
    );
    let root = work.path().join("store");
    let reference = format!("{}/e2e/flipped:1", proxy.host());
    let pulled = dist(
        &root,
        &["--snapshotter", "overlay", "pull", &reference],
        b"",
    );
    let said = stderr(&pulled);
    assert_eq!(pulled.status.code(), Some(1), "{said}");
    assert!(
        said.contains("digest mismatch") && !said.contains("diff ID"),
        "{said}"
    );
}

/// A pull dropped while its layers apply (a caller's timeout) leaves no
/// thread behind waiting for bytes or for a layer below: the runtime it ran
/// on shuts down at once, as it must for a program that embeds the library.
#[test]
fn a_pull_dropped_midway_leaves_no_thread_waiting() {
    use ocidist::content::local::LocalStore;
    use ocidist::images::{DbImageStore, Platform, platforms};
    use ocidist::pull::{PullOptions, pull};
    use ocidist::remotes::docker::DockerResolver;
    use ocidist::snapshot::overlay::OverlaySnapshotter;

    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    // Layer 1 writes into `d` without listing it: it waits for layer 0,
    // whose download stalls after its first MiB.
    let mut base = tar::Builder::new(Vec::new());
    file(&mut base, "d/big", &noise(4 << 20), 0o644);
    let mut top = tar::Builder::new(Vec::new());
    file(&mut top, "d/f", b"x", 0o644);
    let tars = [base.into_inner().unwrap(), top.into_inner().unwrap()];
    let stall = Fault::Stall {
        after: 1 << 20,
        hold: Duration::from_secs(60),
    };
    let proxy = faulty_first_layer(&registry, work.path(), &tars, "e2e/dropped:1", 1, stall);
    let reference = format!("{}/e2e/dropped:1", proxy.host());
    let root = work.path().join("store");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = LocalStore::open(root.join("content")).unwrap();
        let images = DbImageStore::open(root.join("images.redb")).unwrap();
        let snapshotter = OverlaySnapshotter::open(root.join("overlay")).unwrap();
        let options = PullOptions::new(platforms::only(&Platform::host())).limit(8);
        let resolver = DockerResolver::new();
        let pulling = pull(
            &resolver,
            &store,
            &images,
            &snapshotter,
            &reference,
            options,
        );
        let stopped = tokio::time::timeout(Duration::from_secs(2), pulling).await;
        assert!(stopped.is_err(), "the pull finished: {stopped:?}");
    });
    let (done, shut_down) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(runtime);
        let _ = done.send(());
    });
    assert!(
        shut_down.recv_timeout(Duration::from_secs(10)).is_ok(),
        "threads of the dropped pull kept its runtime from shutting down"
    );
}

#[test]
fn an_interrupted_pull_exits_at_once_and_resumes() {
    let work = tempfile::tempdir().unwrap();
    // 24 MiB: 7.7 s of dripping, of which two interrupted pulls on a loaded
    // machine leave more than the timed-out one can fetch in its 2 s.
    let (_registry, _proxy, reference) = dripping_registry(work.path(), 24 << 20);
    let root = work.path().join("store");
    for (signal, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        let stopped = interrupt_pull(&root, &reference, signal);
        let stderr = String::from_utf8_lossy(&stopped.stderr);
        // Ended by the signal, as a shell needs to see to stop a loop.
        assert_eq!(stopped.status.signal(), Some(signal), "{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}; ingests are kept")),
            "{stderr}"
        );
        // Its half-applied layers went with it (they cannot be resumed).
        let left = ok(dist(&root, &["prune", "--dry-run", "--grace", "0s"], b""));
        assert!(!left.contains("snapshot extract-"), "{left}");
    }
    // `--timeout` drops the command as a signal does: the same cleanup.
    let timed_out = dist(&root, &["--timeout", "2s", "pull", &reference], b"");
    let stderr = String::from_utf8_lossy(&timed_out.stderr);
    assert!(
        stderr.contains(&format!(
            "dist: pull {reference}: timed out after 2s (--timeout)"
        )),
        "{stderr}"
    );
    let left = ok(dist(&root, &["prune", "--dry-run", "--grace", "0s"], b""));
    assert!(!left.contains("snapshot extract-"), "{left}");
    let active = ok(dist(&root, &["active"], b""));
    assert!(
        active.contains("layer-sha256:"),
        "the ingest stays: {active}"
    );
    // Kept a day for a resume, unless a prune is told otherwise.
    let would = |args: &[&str]| {
        let prune = [&["prune", "--dry-run", "--grace", "0s"][..], args].concat();
        ok(dist(&root, &prune, b""))
    };
    assert!(would(&[]).contains("and 0 ingests"));
    let unresumed = would(&["--ingest-max-age", "0s"]);
    assert!(
        unresumed.contains("would remove ingest layer-sha256:"),
        "{unresumed}"
    );
    let out = ok(dist(&root, &["pull", &reference], b""));
    assert!(out.contains("resuming at"), "{out}");
    // The big layer is applied from its ingest while it downloads.
    let big = out
        .lines()
        .find_map(|l| l.split_once(": resuming at").map(|(r, _)| r.to_string()))
        .unwrap();
    let unpacking = out.find(&format!("{big}: unpacking")).expect(&out);
    let done = out.find(&format!("{big}: done")).expect(&out);
    assert!(
        unpacking < done,
        "unpack overlaps the layer's own download: {out}"
    );
    assert_eq!(
        ok(dist(&root, &["active"], b"")).lines().count(),
        1,
        "only the header left"
    );
    copy_and_check_rootfs(&root, "overlay", &reference, &work.path().join("copy"));
}

#[test]
fn a_pull_on_a_terminal_draws_live_bars() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let reference = push_image(&registry.host(), work.path(), 100_000);
    let root = work.path().join("store");
    // `script` (util-linux) runs the pull on a pseudo-terminal.
    let command = format!(
        "stty cols 100 rows 40; {} --root {} pull {}",
        dist_binary().display(),
        root.display(),
        reference
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) must run (apt-get install bsdutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\x1b["),
        "bars are redrawn in place: {text:?}"
    );
    assert!(
        text.contains("|++++++++++|") && text.contains("unpacked") && text.contains("elapsed: "),
        "{text:?}"
    );
}
