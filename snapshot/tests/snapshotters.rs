//! The snapshot model's rules, for both snapshotters: one key namespace,
//! committed parents only, commit only what is active, no removal under
//! children, rebase rules, walk filters, label updates, batches that are all
//! or nothing, and a 200-layer mount.

mod common;

use std::path::Path;

use common::full_tree;

use ocidist_snapshot::native::NativeSnapshotter;
use ocidist_snapshot::overlay::OverlaySnapshotter;
use ocidist_snapshot::{
    CommitOpts, CommitRequest, Durability, ErrorKind, Info, Kind, Labels, PrepareRequest,
    Snapshotter, mount,
};

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn rules<S: Snapshotter>(s: &S) {
    s.prepare("a", None, Labels::new()).await.unwrap();
    let err = s.prepare("a", None, Labels::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = s.prepare("b", Some("a"), Labels::new()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::InvalidArgument,
        "an active parent: {err}"
    );
    let err = s
        .prepare("b", Some("missing"), Labels::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    s.commit("base", "a", labels(&[("l1", "v1")]))
        .await
        .unwrap();
    assert_eq!(s.stat("a").await.unwrap_err().kind(), ErrorKind::NotFound);
    let base = s.stat("base").await.unwrap();
    assert_eq!((base.kind, base.parent.clone()), (Kind::Committed, None));
    assert_eq!(base.labels, labels(&[("l1", "v1")]));
    let err = s.commit("again", "base", Labels::new()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "only active commits: {err}"
    );
    // Keys of all kinds share one namespace.
    let err = s.prepare("base", None, Labels::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    s.prepare("child", Some("base"), Labels::new())
        .await
        .unwrap();
    let viewed = s.view("look", Some("base"), Labels::new()).await.unwrap();
    assert_eq!(s.stat("look").await.unwrap().kind, Kind::View);
    // Ours, not containerd's (which refuses): a committed snapshot mounts
    // as a view of it would, read-only.
    assert_eq!(s.mounts("base").await.unwrap(), viewed);
    assert!(viewed.iter().all(|m| m.is_readonly()), "{viewed:?}");
    let err = s.commit("x", "look", Labels::new()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::FailedPrecondition,
        "a view never commits: {err}"
    );
    let err = s.remove("base").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    s.commit("top", "child", Labels::new()).await.unwrap();
    assert_eq!(s.stat("top").await.unwrap().parent.as_deref(), Some("base"));

    // Walk filters over kind, parent, name and labels.
    let names = |infos: Vec<Info>| {
        let mut n: Vec<String> = infos.into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(s.walk(&[]).await.unwrap()), ["base", "look", "top"]);
    assert_eq!(
        names(s.walk(&["kind==committed"]).await.unwrap()),
        ["base", "top"]
    );
    assert_eq!(
        names(s.walk(&["parent==base,kind==view"]).await.unwrap()),
        ["look"]
    );
    assert_eq!(
        names(s.walk(&["labels.l1==v1", "name==look"]).await.unwrap()),
        ["base", "look"]
    );

    // Updates: all labels, or only the named ones.
    let mut info = s.stat("base").await.unwrap();
    info.labels = labels(&[("l2", "v2")]);
    let updated = s.update(info.clone(), &["labels.l2"]).await.unwrap();
    assert_eq!(updated.labels, labels(&[("l1", "v1"), ("l2", "v2")]));
    let replaced = s.update(info.clone(), &[]).await.unwrap();
    assert_eq!(replaced.labels, labels(&[("l2", "v2")]));
    let err = s.update(info, &["parent"]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    s.remove("look").await.unwrap();
    s.remove("top").await.unwrap();
    s.remove("base").await.unwrap();
    assert!(s.walk(&[]).await.unwrap().is_empty());
    s.close().await.unwrap();
    s.close().await.unwrap();
    assert!(s.stat("x").await.is_err(), "closed");
}

/// A snapshotter's directories are its owner's alone, whether it made them
/// or found them open to all: what images put in snapshots (setuid
/// binaries, device nodes) is not for other users (CVE-2021-41103).
#[test]
fn snapshot_directories_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for made in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let native = dir.path().join("native");
        let overlay = dir.path().join("overlay");
        if !made {
            for root in [&native, &overlay] {
                std::fs::create_dir_all(root.join("snapshots")).unwrap();
                for d in [root.clone(), root.join("snapshots")] {
                    std::fs::set_permissions(&d, PermissionsExt::from_mode(0o755)).unwrap();
                }
            }
        }
        drop(NativeSnapshotter::open(&native).unwrap());
        drop(OverlaySnapshotter::open(&overlay).unwrap());
        for root in [&native, &overlay] {
            for d in [root.clone(), root.join("snapshots")] {
                assert_eq!(mode(&d), 0o700, "{} (made: {made})", d.display());
            }
        }
    }
}

#[tokio::test]
async fn native_follows_the_snapshot_rules() {
    let dir = tempfile::tempdir().unwrap();
    rules(&NativeSnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn overlay_follows_the_snapshot_rules() {
    let dir = tempfile::tempdir().unwrap();
    rules(&OverlaySnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn writeback_snapshotters_follow_the_same_rules() {
    // Writeback only skips flushes: every rule and batch outcome is the same.
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    rules(&NativeSnapshotter::open_with(dirs[0].path(), Durability::Writeback).unwrap()).await;
    rules(&OverlaySnapshotter::open_with(dirs[1].path(), Durability::Writeback).unwrap()).await;
    batches_are_all_or_nothing(
        &NativeSnapshotter::open_with(dirs[2].path(), Durability::Writeback).unwrap(),
    )
    .await;
    batches_are_all_or_nothing(
        &OverlaySnapshotter::open_with(dirs[3].path(), Durability::Writeback).unwrap(),
    )
    .await;
    // What a writeback snapshotter committed is there when reopened synced.
    let s = NativeSnapshotter::open(dirs[2].path()).unwrap();
    assert_eq!(s.stat("c1").await.unwrap().kind, Kind::Committed);
    let one = s.path("c1").await.unwrap().join("one");
    assert_eq!(std::fs::read_to_string(one).unwrap(), "1");
}

/// Sets the access and modification times of `path` (not followed) to
/// `secs` seconds and 5 ns.
fn set_time(path: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 5,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::symlink_metadata(path).unwrap())
}

#[tokio::test]
async fn native_apply_only_prepares_share_files_and_build_what_a_copy_builds() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let s = NativeSnapshotter::open(dir.path()).unwrap();
    let mounts = s.prepare("fill", None, Labels::new()).await.unwrap();
    let root = mount::writable_dir(&mounts).unwrap();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Wide (40 siblings, so walkers share the work) and deep.
    for i in 0..40 {
        let d = root.join(format!("wide/d{i:02}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), format!("{i}")).unwrap();
        set_time(&d.join("f"), 1_600_000_000 + i);
        set_time(&d, 1_500_000_000 + i);
    }
    let deep = root.join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("setuid"), b"s").unwrap();
    rustix::fs::chown(
        deep.join("setuid"),
        Some(rustix::fs::Uid::from_raw(1000)),
        Some(rustix::fs::Gid::from_raw(1000)),
    )
    .unwrap();
    mode(&deep.join("setuid"), 0o4755);
    std::fs::hard_link(deep.join("setuid"), root.join("a/setuid-link")).unwrap();
    std::os::unix::fs::symlink("b/c/setuid", root.join("a/sym")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("a/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("a/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::setxattr(
        root.join("a/b"),
        "user.x",
        b"dir",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    set_time(&root.join("a/sym"), 1_400_000_000);
    set_time(&deep, 1_300_000_000);
    mode(&deep, 0o750);
    mode(&root.join("a/b"), 0o500);
    set_time(&root.join("a/b"), 1_200_000_000);
    s.commit("base", "fill", Labels::new()).await.unwrap();
    let base = s.path("base").await.unwrap();
    let expected = full_tree(&base);
    assert_eq!(expected.len(), 80 + 1 + 8, "{expected:?}");
    assert!(expected["a/b"].ends_with("user.x=dir"), "{expected:?}");

    let apply_only = labels(&[(ocidist_snapshot::APPLY_ONLY_LABEL, "true")]);
    let shared =
        mount::writable_dir(&s.prepare("shared", Some("base"), apply_only).await.unwrap()).unwrap();
    let copied = mount::writable_dir(
        &s.prepare("copied", Some("base"), Labels::new())
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(full_tree(&shared), expected);
    assert_eq!(full_tree(&copied), expected);
    for file in [
        "a/b/c/setuid",
        "a/setuid-link",
        "a/sym",
        "a/fifo",
        "a/null",
        "wide/d07/f",
    ] {
        assert_eq!(inode(&shared.join(file)), inode(&base.join(file)), "{file}");
        assert_ne!(inode(&copied.join(file)), inode(&base.join(file)), "{file}");
    }
    for dir in ["", "a", "a/b", "a/b/c", "wide/d07"] {
        assert_ne!(inode(&shared.join(dir)), inode(&base.join(dir)), "{dir}");
    }
    assert_eq!(
        inode(&copied.join("a/setuid-link")),
        inode(&copied.join("a/b/c/setuid"))
    );
}

/// An ext4 filesystem of the test's own, made in a file and mounted on a
/// loop device: its inodes take at most 65,000 links (`EXT4_LINK_MAX`),
/// whatever filesystem the machine's temporary directory is. Unmounted on
/// drop, which frees the loop device (`mount -o loop` sets it to clear).
struct Ext4(tempfile::TempDir);

impl Ext4 {
    fn mount() -> Ext4 {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        let run = |program: &str, args: &[&std::ffi::OsStr], package: &str| {
            let out = std::process::Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program}: {e}: install the Debian package {package}"));
            assert!(out.status.success(), "{program}: {out:?}");
        };
        run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_ref()],
            "e2fsprogs",
        );
        let mnt = dir.path().join("mnt");
        run(
            "mount",
            &["-o".as_ref(), "loop".as_ref(), image.as_ref(), mnt.as_ref()],
            "mount",
        );
        Ext4(dir)
    }

    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("mnt")
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = mount::unmount(&self.path());
    }
}

/// Makes `bin/busybox` and `names - 1` more names of its inode, spread over
/// four directories with times of their own, as busybox's applets are; the
/// names, relative to `root`.
fn link_group(root: &Path, names: usize) -> Vec<String> {
    std::fs::create_dir(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/busybox"), b"one program, many names").unwrap();
    for i in 0..4 {
        std::fs::create_dir(root.join(format!("d{i}"))).unwrap();
    }
    let mut all = vec!["bin/busybox".to_string()];
    for i in 1..names {
        let name = format!("d{}/applet{i}", i % 4);
        std::fs::hard_link(root.join("bin/busybox"), root.join(&name)).unwrap();
        all.push(name);
    }
    for (i, dir) in ["d0", "d1", "d2", "d3", "bin"].iter().enumerate() {
        set_time(&root.join(dir), 1_500_000_000 + i as i64);
    }
    all
}

fn links(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::nlink(&std::fs::symlink_metadata(path).unwrap())
}

/// Asserts that every one of `names` under `root` is one inode, not
/// `other`, with exactly those names; returns it.
fn one_inode(root: &Path, names: &[String], other: u64) -> u64 {
    let group = inode(&root.join(&names[0]));
    assert_ne!(group, other, "the group still shares the full inode");
    for name in names {
        assert_eq!(inode(&root.join(name)), group, "{name} left its group");
    }
    assert_eq!(links(&root.join(&names[0])), names.len() as u64);
    group
}

/// A hardlink group whose inode fills up (ext4 takes 65,000 links) while an
/// apply-only native snapshot shares its parent's files stays one group
/// there: all of its names go to one copy, not some to the parent's inode
/// and the rest to a copy; the parent's inode keeps only its own names, and
/// the directories their times.
#[tokio::test]
async fn a_hardlink_group_that_fills_its_shared_inode_stays_one_inode() {
    const NAMES: usize = 40_000;
    let fs = Ext4::mount();
    let s = NativeSnapshotter::open(fs.path().join("snapshots")).unwrap();
    let fill = mount::writable_dir(&s.prepare("fill", None, Labels::new()).await.unwrap()).unwrap();
    let names = link_group(&fill, NAMES);
    s.commit("base", "fill", Labels::new()).await.unwrap();
    let base = s.path("base").await.unwrap();
    let apply_only = labels(&[(ocidist_snapshot::APPLY_ONLY_LABEL, "true")]);
    let shared =
        mount::writable_dir(&s.prepare("shared", Some("base"), apply_only).await.unwrap()).unwrap();
    one_inode(&shared, &names, inode(&base.join("bin/busybox")));
    assert_eq!(links(&base.join("bin/busybox")), NAMES as u64);
    assert_eq!(full_tree(&shared), full_tree(&base));
}

/// A layer that links a new name to an inode its native snapshot shares with
/// its parent, when that inode takes no more links, gives the snapshot's
/// names of it a copy of their own, which takes the new name too; the
/// directories the layer did not list keep their times.
#[tokio::test]
async fn a_layer_linking_to_a_full_shared_inode_gets_a_copy_of_its_own() {
    use ocidist_snapshot::apply::{ApplyOptions, apply_layer_sync};
    // Twice this is ext4's limit: the prepare links them all, the layer's
    // link is one too many.
    const NAMES: usize = 32_500;
    let fs = Ext4::mount();
    let s = NativeSnapshotter::open(fs.path().join("snapshots")).unwrap();
    let fill = mount::writable_dir(&s.prepare("fill", None, Labels::new()).await.unwrap()).unwrap();
    let mut names = link_group(&fill, NAMES);
    // In whole seconds, as a tar header gives them.
    std::fs::File::options()
        .write(true)
        .open(fill.join("bin/busybox"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000))
        .unwrap();
    s.commit("base", "fill", Labels::new()).await.unwrap();
    let base = s.path("base").await.unwrap();
    let apply_only = labels(&[(ocidist_snapshot::APPLY_ONLY_LABEL, "true")]);
    let shared =
        mount::writable_dir(&s.prepare("shared", Some("base"), apply_only).await.unwrap()).unwrap();
    let full = inode(&base.join("bin/busybox"));
    assert_eq!(inode(&shared.join("d3/applet3")), full, "shared as ever");
    assert_eq!(links(&base.join("bin/busybox")), 2 * NAMES as u64);

    let mtime = |path: &Path| std::fs::symlink_metadata(path).unwrap().modified().unwrap();
    let root_time = mtime(&shared);
    // As a tar writer gives a link: its inode's own mode and time.
    let busybox = std::fs::symlink_metadata(base.join("bin/busybox")).unwrap();
    let layer = common::tar_of(&[common::Entry::LinkAs(
        "bin/sh",
        "bin/busybox",
        std::os::unix::fs::MetadataExt::mode(&busybox) & 0o7777,
        std::os::unix::fs::MetadataExt::mtime(&busybox) as u64,
    )]);
    apply_layer_sync(
        &mount::ApplyTarget::Tree(shared.clone()),
        std::io::Cursor::new(layer),
        None,
        &ApplyOptions::default(),
    )
    .unwrap();
    names.push("bin/sh".to_string());
    one_inode(&shared, &names, full);
    assert_eq!(links(&base.join("bin/busybox")), NAMES as u64);
    assert_eq!(
        std::fs::read(shared.join("bin/sh")).unwrap(),
        b"one program, many names"
    );
    let mut expected = full_tree(&base);
    let mut found = full_tree(&shared);
    // The layer wrote bin/ (a new name, and its time): all else is as it was.
    for tree in [&mut expected, &mut found] {
        tree.remove("bin");
        tree.remove("bin/sh");
    }
    assert_eq!(found, expected);
    assert_eq!(mtime(&shared), root_time, "the root keeps its time");
    assert!(
        std::fs::read_dir(&shared).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "the copy's own name is gone"
    );
}

#[tokio::test]
async fn a_parent_at_commit_only_when_none_was_set_at_prepare() {
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(dir.path()).unwrap();
    s.prepare("a", None, Labels::new()).await.unwrap();
    s.commit("base", "a", Labels::new()).await.unwrap();
    s.prepare("b", None, Labels::new()).await.unwrap();
    let onto_base = CommitOpts {
        labels: Labels::new(),
        parent: Some("base".into()),
    };
    s.commit_with("layer", "b", onto_base.clone())
        .await
        .unwrap();
    assert_eq!(
        s.stat("layer").await.unwrap().parent.as_deref(),
        Some("base")
    );
    s.prepare("c", Some("layer"), Labels::new()).await.unwrap();
    let err = s
        .commit_with("c2", "c", onto_base.clone())
        .await
        .unwrap_err();
    // containerd's kind: "cannot change parent on commit".
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");

    let native_dir = tempfile::tempdir().unwrap();
    let n = NativeSnapshotter::open(native_dir.path()).unwrap();
    n.prepare("a", None, Labels::new()).await.unwrap();
    n.commit("base", "a", Labels::new()).await.unwrap();
    n.prepare("b", None, Labels::new()).await.unwrap();
    let err = n.commit_with("layer", "b", onto_base).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unimplemented, "{err}");
}

/// A root given as a relative path still yields mounts that name absolute
/// directories: the kernel would read relative ones from wherever the
/// mounting process stands (a `dist --root store` run from elsewhere).
#[tokio::test]
async fn a_relative_root_gives_absolute_mounts() {
    let dir = tempfile::tempdir_in(".").unwrap();
    let relative = dir
        .path()
        .strip_prefix(std::env::current_dir().unwrap())
        .unwrap_or(dir.path());
    assert!(relative.is_relative(), "{}", relative.display());
    let overlay = OverlaySnapshotter::open(relative.join("overlay")).unwrap();
    let native = NativeSnapshotter::open(relative.join("native")).unwrap();
    let mut mounts = Vec::new();
    for s in [&overlay as &dyn Snapshotter, &native] {
        s.prepare("a", None, Labels::new()).await.unwrap();
        s.commit("c", "a", Labels::new()).await.unwrap();
        mounts.extend(s.prepare("b", Some("c"), Labels::new()).await.unwrap());
        mounts.extend(s.view("v", Some("c"), Labels::new()).await.unwrap());
    }
    for m in &mounts {
        let dirs = m
            .options
            .iter()
            .filter_map(|o| o.split_once('='))
            .filter(|(k, _)| ["lowerdir", "upperdir", "workdir"].contains(k));
        for (_, value) in dirs {
            for d in value.split(':') {
                assert!(Path::new(d).is_absolute(), "{m:?}");
            }
        }
        if m.kind == "bind" {
            assert!(m.source.is_absolute(), "{m:?}");
        }
    }
}

/// A root reached by another name (a symlink, a `..`) gives the same
/// mounts: a mount is known for a snapshot's by the paths it names, and a
/// rootfs mounted under one name must not look unmounted under another.
#[tokio::test]
async fn a_root_reached_by_another_name_gives_the_same_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    let link = dir.path().join("link");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let dotted = dir.path().join("link/../real");
    let first = OverlaySnapshotter::open(&real).unwrap();
    first.prepare("a", None, Labels::new()).await.unwrap();
    first.commit("c", "a", Labels::new()).await.unwrap();
    let mounts = first.prepare("b", Some("c"), Labels::new()).await.unwrap();
    drop(first);
    for other in [&link, &dotted] {
        let again = OverlaySnapshotter::open(other).unwrap();
        assert_eq!(
            again.mounts("b").await.unwrap(),
            mounts,
            "{}",
            other.display()
        );
    }
}

/// A root whose path overlay mount options cannot carry (`:` separates
/// lower directories, `,` options, `\` escapes) is refused when the overlay
/// snapshotter opens, naming the character, not at every mount later with
/// a bare ENOENT; through a symlink too, since mounts name the resolved
/// path. The native snapshotter, which mounts binds, takes such a root.
#[tokio::test]
async fn an_overlay_root_whose_path_mount_options_cannot_carry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for c in [':', ',', '\\'] {
        let root = dir.path().join(format!("store{c}1"));
        let err = match OverlaySnapshotter::open(&root) {
            Ok(_) => panic!("{} opened", root.display()),
            Err(e) => e,
        };
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let message = err.to_string();
        assert!(message.contains(&format!("holds {c:?}")), "{message}");
        let native = NativeSnapshotter::open(root.join("native")).unwrap();
        native.prepare("a", None, Labels::new()).await.unwrap();
    }
    let link = dir.path().join("plain");
    std::os::unix::fs::symlink(dir.path().join("store:1"), &link).unwrap();
    assert!(OverlaySnapshotter::open(&link).is_err());
    OverlaySnapshotter::open(dir.path().join("plain name")).unwrap();
}

/// A snapshot whose tree is 20,000 levels deep (a layer's symlinks can
/// build one from 80 KB) is removed, files and symlinks at every level,
/// without overflowing the removing thread's stack (the process aborted).
#[tokio::test]
async fn a_snapshot_twenty_thousand_levels_deep_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let s = NativeSnapshotter::open(dir.path()).unwrap();
    let mounts = s.prepare("deep", None, Labels::new()).await.unwrap();
    let top = mounts[0].source.clone();
    let flags = rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY;
    let mode = rustix::fs::Mode::from_raw_mode(0o755);
    let mut level = rustix::fs::open(&top, flags, mode).unwrap();
    for _ in 0..20_000 {
        rustix::fs::mkdirat(&level, "d", mode).unwrap();
        let file = rustix::fs::openat(
            &level,
            "f",
            rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY,
            mode,
        )
        .unwrap();
        drop(file);
        rustix::fs::symlinkat("/", &level, "to-root").unwrap();
        level = rustix::fs::openat(&level, "d", flags, mode).unwrap();
    }
    drop(level);
    s.remove("deep").await.unwrap();
    assert!(!top.exists(), "the tree is gone");
    assert!(
        std::fs::read_dir("/").unwrap().next().is_some(),
        "and / is not"
    );
}

struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = mount::unmount(self.0);
    }
}

/// `nosuid`, `nodev` and `noexec` on a bind mount hold, as `ro` does: the
/// kernel ignores them on the bind itself and needs a remount.
#[test]
fn bind_mount_flags_hold() {
    use rustix::fs::StatVfsMountFlags as F;
    let source = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let mut bind = mount::Mount::bind(source.path(), true);
    bind.options
        .extend(["nosuid", "nodev", "noexec"].map(String::from));
    mount::mount_all(&[bind], target.path()).unwrap();
    let _guard = Mounted(target.path());
    let flags = rustix::fs::statvfs(target.path()).unwrap().f_flag;
    for (flag, name) in [
        (F::RDONLY, "ro"),
        (F::NOSUID, "nosuid"),
        (F::NODEV, "nodev"),
        (F::NOEXEC, "noexec"),
    ] {
        assert!(flags.contains(flag), "{name} missing: {flags:?}");
    }
}

/// A temporary mount is seen by its work alone (not from the process's
/// main thread, so not by the host), so a killed process cannot leave it
/// behind; once the work returns, mount and directory are gone. Its
/// directory is made under a shared mount, as systemd makes `/`: mounts
/// there propagate to every peer unless the work's namespace stops them.
#[test]
fn a_temp_mount_is_seen_only_by_its_work_and_goes_with_it() {
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("hello"), "world").unwrap();
    let shared = tempfile::tempdir().unwrap();
    rustix::mount::mount(
        "tmpfs",
        shared.path(),
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    let _guard = Mounted(shared.path());
    rustix::mount::mount_change(shared.path(), rustix::mount::MountPropagationFlags::SHARED)
        .unwrap();
    let listed = |mountinfo: &str, dir: &Path| {
        let field = format!(" {} ", dir.display());
        std::fs::read_to_string(mountinfo)
            .unwrap()
            .lines()
            .any(|line| line.contains(&field))
    };
    let (root, read, seen_by_work, seen_by_process) = mount::with_temp_mount_in(
        shared.path(),
        &[mount::Mount::bind(source.path(), true)],
        |root| {
            (
                root.to_path_buf(),
                std::fs::read_to_string(root.join("hello")).unwrap(),
                listed("/proc/thread-self/mountinfo", root),
                listed("/proc/self/mountinfo", root),
            )
        },
    )
    .unwrap();
    assert_eq!(read, "world");
    assert!(seen_by_work, "the work reads through the mount");
    assert!(!seen_by_process, "nobody else sees it");
    assert!(!root.exists(), "the directory goes with the mount");
    assert!(!listed("/proc/self/mountinfo", &root));
}

/// What a killed process left (an empty mount directory nobody holds) is
/// removed by the next temporary mount in the same directory; a directory
/// held, fresh, not empty, or not named so stays.
#[test]
fn a_temp_mount_sweeps_the_empty_directories_killed_ones_left() {
    let source = tempfile::tempdir().unwrap();
    let parent = tempfile::tempdir().unwrap();
    let dir = |name: &str| parent.path().join(name);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for name in [
        "ocidist-mount-1-0",
        "ocidist-mount-2-0",
        "ocidist-mount-3-0",
        "ocidist-mount-4-0",
        "other-1-0",
    ] {
        std::fs::create_dir(dir(name)).unwrap();
    }
    std::fs::write(dir("ocidist-mount-4-0/file"), b"not empty").unwrap();
    for name in [
        "ocidist-mount-1-0",
        "ocidist-mount-2-0",
        "ocidist-mount-4-0",
        "other-1-0",
    ] {
        std::fs::File::open(dir(name))
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    let held = std::fs::File::open(dir("ocidist-mount-2-0")).unwrap();
    held.lock().unwrap();
    mount::with_temp_mount_in(
        parent.path(),
        &[mount::Mount::bind(source.path(), true)],
        |_| (),
    )
    .unwrap();
    let mut left: Vec<String> = std::fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "ocidist-mount-2-0",
            "ocidist-mount-3-0",
            "ocidist-mount-4-0",
            "other-1-0"
        ]
    );
}

#[tokio::test]
async fn two_hundred_overlay_layers_mount_whole() {
    const LAYERS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(dir.path()).unwrap();
    let mut parent: Option<String> = None;
    // Their options take 10 KiB as absolute paths and 4.7 KiB through
    // `/proc/self/fd`, more than the page mount(2) reads: cut there, the
    // bottom layers went missing without an error.
    for i in 0..LAYERS {
        let key = format!("active-{i}");
        let mounts = s
            .prepare(&key, parent.as_deref(), Labels::new())
            .await
            .unwrap();
        let target = ocidist_snapshot::mount::ApplyTarget::from_mounts(&mounts).unwrap();
        let upper = match target {
            ocidist_snapshot::mount::ApplyTarget::Tree(p) => p,
            ocidist_snapshot::mount::ApplyTarget::OverlayUpper { upper, .. } => upper,
        };
        std::fs::write(upper.join(format!("layer-{i}")), i.to_string()).unwrap();
        let name = format!("layer-{i}");
        s.commit(&name, &key, Labels::new()).await.unwrap();
        parent = Some(name);
    }
    let mounts = s
        .view("top", parent.as_deref(), Labels::new())
        .await
        .unwrap();
    let longest: usize = mounts[0].options.iter().map(String::len).sum();
    assert!(
        longest > 4096,
        "the options are longer than a page: {longest}"
    );
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&mounts, target.path()).unwrap();
    let _guard = Mounted(target.path());
    let entries = std::fs::read_dir(target.path()).unwrap().count();
    assert_eq!(entries, LAYERS, "one file per layer, nothing else");
    for i in 0..LAYERS {
        assert_eq!(
            std::fs::read_to_string(target.path().join(format!("layer-{i}"))).unwrap(),
            i.to_string()
        );
    }
}

/// More lower layers than overlayfs stacks: the kernel says only EINVAL,
/// and the error names the count and the limit.
#[test]
fn an_overlay_of_more_layers_than_the_kernel_stacks_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let lowers: Vec<String> = (0..501)
        .map(|i| {
            let lower = dir.path().join(i.to_string());
            std::fs::create_dir(&lower).unwrap();
            lower.display().to_string()
        })
        .collect();
    let overlay = mount::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec!["ro".into(), format!("lowerdir={}", lowers.join(":"))],
    };
    let target = tempfile::tempdir().unwrap();
    let err = mount::mount_all(&[overlay], target.path()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(
        err.to_string()
            .contains("501 lower layers, and overlayfs stacks at most 500"),
        "{err}"
    );
}

fn prepare_request(key: &str, parent: Option<&str>) -> PrepareRequest {
    PrepareRequest {
        key: key.into(),
        parent: parent.map(str::to_string),
        labels: Labels::new(),
    }
}

fn commit_request(name: &str, key: &str, parent: Option<&str>) -> CommitRequest {
    CommitRequest {
        name: name.into(),
        key: key.into(),
        opts: CommitOpts {
            labels: Labels::new(),
            parent: parent.map(str::to_string),
        },
    }
}

async fn batches_are_all_or_nothing<S: Snapshotter>(s: &S) {
    let names = |infos: Vec<Info>| {
        let mut names: Vec<String> = infos.into_iter().map(|i| i.name).collect();
        names.sort();
        names
    };
    s.prepare("taken", None, Labels::new()).await.unwrap();
    // A duplicate key in the middle: nothing is prepared.
    let err = s
        .prepare_all(vec![
            prepare_request("p1", None),
            prepare_request("taken", None),
            prepare_request("p3", None),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(names(s.walk(&[]).await.unwrap()), ["taken"]);

    let mounts = s
        .prepare_all(vec![
            prepare_request("p1", None),
            prepare_request("p2", None),
        ])
        .await
        .unwrap();
    assert_eq!(mounts.len(), 2);
    let p1 = mount::writable_dir(&mounts[0]).expect("a writable directory");
    std::fs::write(p1.join("one"), "1").unwrap();

    // A name already taken in the middle: nothing is committed.
    s.commit("c-taken", "taken", Labels::new()).await.unwrap();
    let err = s
        .commit_all(vec![
            commit_request("c1", "p1", None),
            commit_request("c-taken", "p2", None),
        ])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(s.stat("p1").await.unwrap().kind, Kind::Active);
    assert!(s.stat("c1").await.unwrap_err().is_not_found());

    s.commit_all(vec![
        commit_request("c1", "p1", None),
        commit_request("c2", "p2", None),
    ])
    .await
    .unwrap();
    assert_eq!(
        names(s.walk(&["kind==committed"]).await.unwrap()),
        ["c-taken", "c1", "c2"]
    );
    let view = s.view("v", Some("c1"), Labels::new()).await.unwrap();
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&view, target.path()).unwrap();
    let content = std::fs::read_to_string(target.path().join("one"));
    mount::unmount(target.path()).unwrap();
    assert_eq!(content.unwrap(), "1");
}

#[tokio::test]
async fn native_batches_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    batches_are_all_or_nothing(&NativeSnapshotter::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn overlay_batches_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(dir.path()).unwrap();
    batches_are_all_or_nothing(&s).await;
    // A batch that rebases: each commit stands on the one before it.
    let mounts = s
        .prepare_all(vec![
            prepare_request("r1", None),
            prepare_request("r2", None),
        ])
        .await
        .unwrap();
    std::fs::write(mount::writable_dir(&mounts[1]).unwrap().join("two"), "2").unwrap();
    s.commit_all(vec![
        commit_request("base-1", "r1", Some("c1")),
        commit_request("base-2", "r2", Some("base-1")),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.stat("base-2").await.unwrap().parent.as_deref(),
        Some("base-1")
    );
    let view = s.view("v2", Some("base-2"), Labels::new()).await.unwrap();
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&view, target.path()).unwrap();
    let both = (
        std::fs::read_to_string(target.path().join("one")),
        std::fs::read_to_string(target.path().join("two")),
    );
    mount::unmount(target.path()).unwrap();
    assert_eq!((both.0.unwrap(), both.1.unwrap()), ("1".into(), "2".into()));
}

/// The numbered snapshot directories under `root/snapshots`.
fn numbered_dirs(root: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.parse::<u64>().is_ok())
        .collect();
    dirs.sort();
    dirs
}

/// A process killed inside `remove`, after the record went and before the
/// directory did, leaves a directory nothing names; the next open removes it
/// and nothing else.
#[tokio::test]
async fn a_directory_a_killed_remove_left_goes_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = NativeSnapshotter::open(root).unwrap();
    for key in ["doomed", "kept"] {
        let mounts = s
            .prepare(&format!("{key}-active"), None, Labels::new())
            .await
            .unwrap();
        std::fs::write(mounts[0].source.join("file"), key).unwrap();
        s.commit(key, &format!("{key}-active"), Labels::new())
            .await
            .unwrap();
    }
    let before = numbered_dirs(root);
    assert_eq!(before.len(), 2, "{before:?}");
    let doomed_dir = before
        .iter()
        .map(|id| root.join("snapshots").join(id))
        .find(|d| std::fs::read(d.join("file")).unwrap() == b"doomed")
        .unwrap();
    // Keep a copy to put back, as the kill would have left it.
    let copy = root.join("copy");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&doomed_dir)
            .arg(&copy)
            .status()
            .unwrap()
            .success()
    );
    s.remove("doomed").await.unwrap();
    std::fs::rename(&copy, &doomed_dir).unwrap();
    drop(s);

    let s = NativeSnapshotter::open(root).unwrap();
    assert!(!doomed_dir.exists(), "the orphan is removed");
    assert_eq!(numbered_dirs(root).len(), 1);
    let mounts = s.view("look", Some("kept"), Labels::new()).await.unwrap();
    assert_eq!(
        std::fs::read(mounts[0].source.join("file")).unwrap(),
        b"kept"
    );
}

/// Sets or clears the immutable flag of `path` (root, on ext4).
fn set_immutable(path: &Path, on: bool) {
    let file = std::fs::File::open(path).unwrap();
    let flags = rustix::fs::ioctl_getflags(&file).unwrap();
    let flags = if on {
        flags | rustix::fs::IFlags::IMMUTABLE
    } else {
        flags - rustix::fs::IFlags::IMMUTABLE
    };
    rustix::fs::ioctl_setflags(&file, flags).unwrap();
}

/// A snapshot whose directory will not go is removed all the same: its
/// record is gone, the removal said done, and the leftover swept by the
/// next open once it can go.
#[tokio::test]
async fn a_directory_that_will_not_go_does_not_fail_a_removal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("native");
    let s = NativeSnapshotter::open(&root).unwrap();
    let mounts = s.prepare("a", None, Labels::new()).await.unwrap();
    let fs = mount::writable_dir(&mounts).unwrap();
    let stuck = fs.join("stuck");
    std::fs::write(&stuck, b"x").unwrap();
    set_immutable(&stuck, true);
    s.commit("c", "a", Labels::new()).await.unwrap();

    let removed = s.remove("c").await;
    let leftovers: Vec<_> = std::fs::read_dir(root.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    for leftover in &leftovers {
        let stuck = leftover.join("stuck");
        if stuck.exists() {
            set_immutable(&stuck, false);
        }
    }
    removed.unwrap();
    assert!(s.stat("c").await.unwrap_err().kind() == ErrorKind::NotFound);
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    // Once it can go, a clean-up takes it and says so (a dry run first).
    let leftover = &leftovers[0];
    let would = s.cleanup(true).await.unwrap();
    assert_eq!(would.dirs.len(), 1, "{would:?}");
    assert_eq!(&would.dirs[0].0, leftover);
    assert!(would.dirs[0].1 > 0 && leftover.exists());
    assert_eq!(s.cleanup(false).await.unwrap(), would);
    assert!(!leftover.exists());
    assert_eq!(s.cleanup(false).await.unwrap(), Default::default());
}

/// Leftovers of killed processes go by what their names and locks say, not
/// by pids: a pid means nothing in another pid namespace (`dist` in a
/// container is pid 2 there; the host's pid 2 never dies). A removal's
/// directory goes once its remover's lock is gone (its record went before
/// it); a staging copy too, past the moment between making it and locking
/// it.
#[tokio::test]
async fn leftovers_go_by_their_locks_not_their_pids() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("native");
    let s = NativeSnapshotter::open(&root).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let make = |name: String| {
        let dir = root.join("snapshots").join(name);
        std::fs::create_dir_all(dir.join("usr")).unwrap();
        std::fs::write(dir.join("usr/file"), vec![7u8; 5000]).unwrap();
        dir
    };
    let removal = make(format!("rm-2-{now}-1f-0"));
    let abandoned = make(format!("new-2-{}-1f-1", now - 120));
    let held = make(format!("new-2-{}-1f-2", now - 120));
    let fresh = make(format!("new-2-{now}-1f-3"));
    let being_removed = make(format!("rm-2-{now}-1f-4"));
    let lock = |dir: &Path| {
        let file = std::fs::File::open(dir).unwrap();
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).unwrap();
        file
    };
    let locks = [lock(&held), lock(&being_removed)];
    // Their paths, each found with the room it takes.
    let paths = |dirs: &[(std::path::PathBuf, u64)]| {
        assert!(dirs.iter().all(|(_, size)| *size >= 5000), "{dirs:?}");
        let mut paths: Vec<_> = dirs.iter().map(|(path, _)| path.clone()).collect();
        paths.sort();
        paths
    };

    let would = s.cleanup(true).await.unwrap();
    let expected = vec![abandoned.clone(), removal.clone()];
    assert_eq!(paths(&would.dirs), expected);
    assert!(
        removal.exists() && abandoned.exists(),
        "a dry run removes nothing"
    );
    let done = s.cleanup(false).await.unwrap();
    assert_eq!(paths(&done.dirs), expected);
    assert!(!removal.exists() && !abandoned.exists());
    assert!(held.exists() && fresh.exists() && being_removed.exists());

    // Their holders gone, the held ones go at the next open.
    drop(locks);
    drop(s);
    let _s = NativeSnapshotter::open(&root).unwrap();
    assert!(!held.exists() && !being_removed.exists());
    assert!(fresh.exists(), "its maker may be about to lock it");
}

/// An overlay layer's upper directory is owned and moded as its parent's
/// root is (containerd passes on the owner): a mount shows the upper
/// directory as `/`.
#[tokio::test]
async fn an_overlay_root_keeps_its_parents_owner_and_mode() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let s = OverlaySnapshotter::open(dir.path().join("overlay")).unwrap();
    let mounts = s.prepare("a", None, Labels::new()).await.unwrap();
    let base = mount::writable_dir(&mounts).unwrap();
    std::os::unix::fs::chown(&base, Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o750)).unwrap();
    s.commit("base", "a", Labels::new()).await.unwrap();
    let mounts = s.prepare("b", Some("base"), Labels::new()).await.unwrap();
    let upper = mounts[0].option("upperdir").unwrap();
    let root = std::fs::metadata(upper).unwrap();
    assert_eq!((root.uid(), root.gid()), (1000, 1001));
    assert_eq!(root.mode() & 0o7777, 0o750);
}

/// A native view copies nothing: it is its parent's tree, bound read-only,
/// as containerd's native snapshotter makes it, and uses no disk of its own.
#[tokio::test]
async fn a_native_view_is_its_parent_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = NativeSnapshotter::open(dir.path().join("native")).unwrap();
    let mounts = s.prepare("a", None, Labels::new()).await.unwrap();
    let fs = mount::writable_dir(&mounts).unwrap();
    std::fs::write(fs.join("big"), vec![1u8; 1 << 20]).unwrap();
    s.commit("base", "a", Labels::new()).await.unwrap();
    let base = s.path("base").await.unwrap();

    let viewed = s.view("v", Some("base"), Labels::new()).await.unwrap();
    assert_eq!(viewed, s.mounts("v").await.unwrap());
    assert_eq!(viewed.len(), 1);
    assert!(viewed[0].is_readonly(), "{viewed:?}");
    assert_eq!(
        inode(&viewed[0].source.join("big")),
        inode(&base.join("big"))
    );
    assert!(s.usage("v").await.unwrap().size < 64 << 10);
    assert_eq!(s.path("v").await.unwrap(), base);
    let err = s.remove("base").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    s.remove("v").await.unwrap();
    assert!(base.join("big").exists(), "the parent stays whole");
}

/// Drops `CAP_SYS_ADMIN` from this thread's effective set; threads it
/// starts inherit that.
fn drop_sys_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_ADMIN: u32 = 21;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget and capset of this thread with a version 3 header and
    // the two data slots that version takes.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_SYS_ADMIN);
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

/// A native prepare copies a parent whose file has an xattr the copy may
/// not set (`security.*` without `CAP_SYS_ADMIN`, as under SELinux, which
/// containerd's native snapshotter was changed for): the copy goes on
/// without that one, keeping the others. (`trusted.*` would not do: a
/// thread without the capability does not even list it.)
#[test]
fn a_native_copy_goes_on_without_an_xattr_it_may_not_set() {
    use rustix::fs::{XattrFlags, getxattr, setxattr};
    assert!(
        rustix::process::geteuid().is_root(),
        "this test sets security.* xattrs: run it as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        let native = NativeSnapshotter::open(&root).unwrap();
        let mounts = native.prepare("base", None, Labels::new()).await.unwrap();
        let file = Path::new(&mounts[0].source).join("f");
        std::fs::write(&file, b"data").unwrap();
        setxattr(&file, "security.ocidist-test", b"1", XattrFlags::empty()).unwrap();
        setxattr(&file, "user.kept", b"2", XattrFlags::empty()).unwrap();
        native.commit("layer", "base", Labels::new()).await.unwrap();
    });

    let copied = std::thread::spawn(move || {
        drop_sys_admin();
        let probe = root.join("probe");
        std::fs::write(&probe, b"").unwrap();
        assert_eq!(
            setxattr(&probe, "security.ocidist-test", b"1", XattrFlags::empty()),
            Err(rustix::io::Errno::PERM),
            "the thread may no longer set security.* xattrs"
        );
        runtime().block_on(async {
            let native = NativeSnapshotter::open(&root).unwrap();
            native.prepare("child", Some("layer"), Labels::new()).await
        })
    })
    .join()
    .unwrap()
    .expect("the copy goes on without the xattr");
    let file = Path::new(&copied[0].source).join("f");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    let mut value = [0u8; 8];
    assert_eq!(
        getxattr(&file, "security.ocidist-test", &mut value),
        Err(rustix::io::Errno::NODATA)
    );
    let n = getxattr(&file, "user.kept", &mut value).unwrap();
    assert_eq!(&value[..n], b"2");
}

/// A filter that does not parse is InvalidArgument, said once.
#[tokio::test]
async fn a_bad_walk_filter_says_invalid_argument_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = NativeSnapshotter::open(dir.path()).unwrap();
    let Err(err) = s.walk(&["labels.=="]).await else {
        panic!("a filter without a key must not parse");
    };
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(
        err.to_string().matches("invalid argument").count(),
        1,
        "{err}"
    );
}
