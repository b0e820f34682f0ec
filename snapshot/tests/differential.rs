//! Native and overlay must build the same root filesystem from the same
//! layers. Random layer stacks (files, directories, symlinks, hardlinks,
//! whiteouts, opaque whiteouts, kinds replacing kinds, across layers) are
//! unpacked into both snapshotters; the mounted views must list the same
//! entries with the same type, content, mode, owner and `user.*` xattrs, or both unpacks
//! must fail.
//!
//! Names are drawn so that no entry's path goes through a symlink: a layer
//! diff never does (the differ writes the path the symlink leads to), and
//! there the two models differ by design: overlayfs shows an upper
//! directory over a lower symlink. Everything else is fair game.

mod common;

use std::collections::BTreeMap;

use common::{Entry, store_image, tar_of, xattr_tree};
use ocidist_content::local::LocalStore;
use ocidist_images::platforms::Platform;
use ocidist_snapshot::apply::ApplyOptions;
use ocidist_snapshot::native::NativeSnapshotter;
use ocidist_snapshot::overlay::OverlaySnapshotter;
use ocidist_snapshot::{Labels, Snapshotter, UnpackOptions, mount, unpack};
use proptest::prelude::*;

/// Names a directory may have; only these appear before a `/`.
const DIRS: [&str; 2] = ["a", "b"];
/// Names only leaves have; symlinks take only these.
const LEAVES: [&str; 2] = ["x", "y"];
const CONTENTS: [&[u8]; 3] = [b"1", b"22", b""];
const MODES: [u32; 3] = [0o755, 0o700, 0o644];
const SYMLINK_TARGETS: [&str; 5] = ["x", "../a", "a/x", "/b/y", "missing"];

/// One generated entry, owning its strings.
#[derive(Debug, Clone)]
enum Gen {
    /// A directory, with mode, owner (uid = gid) and maybe a `user.k` xattr.
    Dir(String, u32, u32, Option<usize>),
    /// A file, with content (an index into `CONTENTS`), mode, owner and
    /// maybe a `user.k` xattr.
    File(String, usize, u32, u32, Option<usize>),
    Symlink(String, usize),
    Link(String, String),
    Fifo(String),
    /// `./`: the root directory's own metadata: mode, owner (uid = gid),
    /// maybe a `user.k` xattr.
    Root(u32, u32, Option<usize>),
    Whiteout(String),
    Opaque(String),
}

/// `a`, `a/b`, `b/a/b`: directories only, 1 to 3 deep.
fn dir_path() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(&DIRS[..]), 1..=3).prop_map(|p| p.join("/"))
}

/// An optional directory path, then a last name from `last`.
fn path_ending(last: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        proptest::option::of(dir_path()),
        proptest::sample::select(last),
    )
        .prop_map(|(dir, name)| match dir {
            Some(dir) => format!("{dir}/{name}"),
            None => name.to_string(),
        })
}

const ANY_NAME: [&str; 4] = ["a", "b", "x", "y"];
/// Values of the one `user.k` xattr entries may carry.
const XATTR_VALUES: [&[u8]; 2] = [b"v0", b"v1"];

fn xattr() -> impl Strategy<Value = Option<usize>> {
    proptest::option::weighted(0.3, 0..XATTR_VALUES.len())
}

fn entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        3 => (path_ending(&DIRS), proptest::sample::select(&MODES[..]), 0u32..2, xattr())
            .prop_map(|(p, m, o, x)| Gen::Dir(p, m, o * 1000, x)),
        4 => (path_ending(&ANY_NAME), 0..CONTENTS.len(), proptest::sample::select(&MODES[..]), 0u32..2, xattr())
            .prop_map(|(p, c, m, o, x)| Gen::File(p, c, m, o * 1000, x)),
        2 => (path_ending(&LEAVES), 0..SYMLINK_TARGETS.len())
            .prop_map(|(p, t)| Gen::Symlink(p, t)),
        2 => (path_ending(&LEAVES), path_ending(&ANY_NAME)).prop_map(|(p, t)| Gen::Link(p, t)),
        1 => path_ending(&ANY_NAME).prop_map(Gen::Fifo),
        1 => (proptest::sample::select(&MODES[..]), 0u32..2, xattr())
            .prop_map(|(m, o, x)| Gen::Root(m, o * 1000, x)),
        2 => path_ending(&ANY_NAME).prop_map(Gen::Whiteout),
        1 => proptest::option::of(dir_path()).prop_map(|d| Gen::Opaque(d.unwrap_or_default())),
    ]
}

fn layers() -> impl Strategy<Value = Vec<Vec<Gen>>> {
    proptest::collection::vec(proptest::collection::vec(entry(), 1..8), 1..5)
}

fn whiteout_path(path: &str, name: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, last)) => format!("{dir}/{name}{last}"),
        None => format!("{name}{path}"),
    }
}

fn with_xattr(entry: Entry<'_>, value: Option<usize>) -> Entry<'_> {
    match value {
        Some(v) => Entry::WithXattr(Box::new(entry), "user.k", XATTR_VALUES[v]),
        None => entry,
    }
}

fn tar_of_gen(entries: &[Gen]) -> Vec<u8> {
    // Names built here must outlive the borrowed `Entry` list.
    let owned: Vec<(String, String)> = entries
        .iter()
        .map(|e| match e {
            Gen::Whiteout(p) => (whiteout_path(p, ".wh."), String::new()),
            Gen::Opaque(d) if d.is_empty() => (".wh..wh..opq".to_string(), String::new()),
            Gen::Opaque(d) => (format!("{d}/.wh..wh..opq"), String::new()),
            Gen::Root(..) => ("./".to_string(), String::new()),
            Gen::Dir(p, ..) | Gen::File(p, ..) | Gen::Symlink(p, _) | Gen::Fifo(p) => {
                (p.clone(), String::new())
            }
            Gen::Link(p, t) => (p.clone(), t.clone()),
        })
        .collect();
    let list: Vec<Entry<'_>> = entries
        .iter()
        .zip(&owned)
        .map(|(e, (name, target))| match e {
            Gen::Dir(_, mode, owner, xattr) => {
                with_xattr(Entry::OwnedDir(name, *mode, *owner, *owner), *xattr)
            }
            Gen::File(_, content, mode, owner, xattr) => with_xattr(
                Entry::Owned(name, CONTENTS[*content], *mode, *owner, *owner),
                *xattr,
            ),
            Gen::Symlink(_, t) => Entry::Symlink(name, SYMLINK_TARGETS[*t]),
            Gen::Link(..) => Entry::Link(name, target),
            Gen::Fifo(_) => Entry::Fifo(name),
            Gen::Root(mode, owner, xattr) => {
                with_xattr(Entry::OwnedDir(name, *mode, *owner, *owner), *xattr)
            }
            Gen::Whiteout(_) | Gen::Opaque(_) => Entry::File(name, b"", 0o644),
        })
        .collect();
    tar_of(&list)
}

/// The view of the unpacked image in `snapshotter`, or the unpack's error.
async fn rootfs<S: Snapshotter>(
    store: &LocalStore,
    image: &ocidist_content::Descriptor,
    snapshotter: &S,
    privileged: bool,
) -> Result<BTreeMap<String, String>, String> {
    let matcher = ocidist_images::platforms::only(&"linux/amd64".parse::<Platform>().unwrap());
    let options = UnpackOptions {
        apply: ApplyOptions {
            privileged,
            ..ApplyOptions::default()
        },
        ..UnpackOptions::default()
    };
    let top = unpack(image, store, snapshotter, &matcher, options)
        .await
        .map_err(|e| format!("{:?}: {e}", e.kind()))?
        .expect("an image with layers has a top chain ID");
    let mounts = snapshotter
        .view("view", Some(top.as_ref()), Labels::new())
        .await
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    mount::mount_all(&mounts, target.path()).unwrap();
    let mut listed = xattr_tree(target.path());
    // The root's own owner and mode: what a container sees at `/`.
    let root = std::fs::metadata(target.path()).unwrap();
    listed.insert(
        ".".into(),
        format!(
            "dir {:o} {}:{}",
            std::os::unix::fs::PermissionsExt::mode(&root.permissions()) & 0o7777,
            std::os::unix::fs::MetadataExt::uid(&root),
            std::os::unix::fs::MetadataExt::gid(&root)
        ),
    );
    mount::unmount(target.path()).unwrap();
    Ok(listed)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The root filesystems native and overlay build from `stack`, or their
/// errors. Unprivileged is how a rootless runtime applies: no owners,
/// directories kept writable.
fn both(stack: &[Vec<Gen>], privileged: bool) -> (Rootfs, Rootfs) {
    let tars: Vec<Vec<u8>> = stack.iter().map(|l| tar_of_gen(l)).collect();
    runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path().join("content")).unwrap();
        let image = store_image(&store, &tars).await;
        let native = NativeSnapshotter::open(dir.path().join("native")).unwrap();
        let overlay = OverlaySnapshotter::open(dir.path().join("overlay")).unwrap();
        let from_native = rootfs(&store, &image, &native, privileged).await;
        let from_overlay = rootfs(&store, &image, &overlay, privileged).await;
        (from_native, from_overlay)
    })
}

type Rootfs = Result<BTreeMap<String, String>, String>;

fn check(stack: &[Vec<Gen>], privileged: bool) -> Result<(), TestCaseError> {
    match both(stack, privileged) {
        (Ok(n), Ok(o)) => prop_assert_eq!(n, o, "native (left) and overlay (right) differ"),
        (Err(_), Err(_)) => {}
        (n, o) => prop_assert!(false, "one failed: native {n:?}, overlay {o:?}"),
    }
    Ok(())
}

/// The root filesystem both snapshotters build from `stack`, as `path line`
/// lines; they must agree.
fn agreed(stack: &[Vec<Gen>], privileged: bool) -> Vec<String> {
    match both(stack, privileged) {
        (Ok(n), Ok(o)) => {
            assert_eq!(n, o, "native (left) and overlay (right) differ");
            // The root's line, compared above, is left out of the listing.
            n.into_iter()
                .filter(|(p, _)| p != ".")
                .map(|(p, line)| format!("{p} {line}"))
                .collect()
        }
        (n, o) => panic!("native {n:?}, overlay {o:?}"),
    }
}

fn dir(path: &str) -> Gen {
    Gen::Dir(path.into(), 0o755, 0, None)
}

fn file(path: &str) -> Gen {
    Gen::File(path.into(), 0, 0o644, 0, None)
}

// Cases the property found, each a fix. The comments say what was wrong.

/// Overlay showed `/` as 0755 root-owned once a layer above the one that
/// listed `./` was unpacked: the upper directory's root is what a mount
/// shows, and each layer's began as 0755 and root's.
#[test]
fn the_roots_owner_and_mode_are_the_last_listed_ones() {
    let stack = [
        vec![Gen::Root(0o750, 1000, None), file("a")],
        vec![file("b")],
        vec![file("c")],
    ];
    for privileged in [true, false] {
        let (native, overlay) = both(&stack, privileged);
        let (native, overlay) = (native.unwrap(), overlay.unwrap());
        assert_eq!(native, overlay, "native (left) and overlay (right) differ");
        if privileged {
            assert_eq!(native["."], "dir 750 1000:1000");
        }
    }
}

/// overlayfs ignores an opaque mark on a layer's root: it was set there and
/// the lower entries showed.
#[test]
fn an_opaque_whiteout_at_the_root_hides_every_lower_entry() {
    let stack = [
        vec![dir("a"), file("a/x"), file("y")],
        vec![file("a/new"), Gen::Opaque(String::new()), file("z")],
    ];
    assert_eq!(
        agreed(&stack, true),
        ["a dir 755 0:0", "a/new file:1 644 0:0", "z file:1 644 0:0"]
    );
}

/// On overlay, the layer's whiteout was in the way (overlay refused the
/// layer; native made the directory).
#[test]
fn a_parent_the_layer_whited_out_is_made_again_empty() {
    let stack = [
        vec![dir("b"), file("b/old")],
        vec![Gen::Whiteout("b".into()), file("b/new")],
    ];
    assert_eq!(
        agreed(&stack, true),
        ["b dir 755 0:0", "b/new file:1 644 0:0"]
    );
}

/// A whiteout in an upper directory no lower has is listed by overlayfs
/// (it filters them only where it merges), and cannot be looked up: one
/// that hides nothing below leaves no trace.
#[test]
fn a_whiteout_of_a_name_no_layer_has_leaves_no_trace() {
    let stack = [
        vec![dir("a")],
        vec![file("b/x"), Gen::Whiteout("b/a".into())],
    ];
    assert_eq!(
        agreed(&stack, true),
        ["a dir 755 0:0", "b dir 755 0:0", "b/x file:1 644 0:0"]
    );
}

/// Whiteouts hide only what the layers below have (the OCI spec, and
/// umoci); each snapshotter deleted the layer's own entries of that name.
/// A directory of the layer's own still hides the lower one's entries.
#[test]
fn a_whiteout_keeps_what_its_own_layer_wrote_of_that_name() {
    let stack = [
        vec![dir("a"), file("a/x"), file("x"), dir("b"), file("b/x")],
        vec![
            dir("a"),
            file("a/y"),
            Gen::Whiteout("a".into()),
            Gen::File("x".into(), 1, 0o600, 0, None),
            Gen::Whiteout("x".into()),
            file("b/a/x"),
            Gen::Whiteout("b/a".into()),
        ],
    ];
    assert_eq!(
        agreed(&stack, true),
        [
            "a dir 755 0:0",
            "a/y file:1 644 0:0",
            "b dir 755 0:0",
            "b/a dir 755 0:0",
            "b/a/x file:1 644 0:0",
            "b/x file:1 644 0:0",
            "x file:22 600 0:0",
        ]
    );
}

/// The copy made to hardlink a lower file counted as the layer's own, so a
/// later opaque whiteout spared it on overlay.
#[test]
fn a_file_copied_up_for_a_hardlink_is_hidden_by_a_later_opaque_whiteout() {
    let stack = [
        vec![file("d/x")],
        vec![
            Gen::Link("d/y".into(), "d/x".into()),
            Gen::Opaque("d".into()),
        ],
    ];
    assert_eq!(
        agreed(&stack, true),
        ["d dir 755 0:0", "d/y file:1 644 0:0"]
    );
}

/// Without root, a parent made on overlay kept the `0700` added while the
/// layer wrote into it.
#[test]
fn a_parent_made_without_root_gets_the_lower_mode_at_the_end() {
    let stack = [
        vec![Gen::Dir("b".into(), 0o555, 0, None)],
        vec![file("b/x")],
    ];
    assert_eq!(
        agreed(&stack, false),
        ["b dir 555 0:0", "b/x file:1 644 0:0"]
    );
}

/// A parent made on overlay lost the lower directory's xattrs.
#[test]
fn a_parent_made_on_overlay_keeps_the_lower_directorys_xattrs() {
    let stack = [
        vec![Gen::Dir("b".into(), 0o755, 0, Some(0))],
        vec![file("b/x")],
    ];
    assert_eq!(
        agreed(&stack, true),
        ["b dir 755 0:0 user.k=v0", "b/x file:1 644 0:0"]
    );
}

/// Native kept xattrs a directory entry no longer listed.
#[test]
fn a_directory_entry_over_a_directory_says_all_its_xattrs() {
    let stack = [
        vec![Gen::Dir("b".into(), 0o755, 0, Some(0))],
        vec![Gen::Dir("b".into(), 0o700, 0, None)],
    ];
    assert_eq!(agreed(&stack, true), ["b dir 700 0:0"]);
}

/// Native refused an entry under a lower layer's file; overlay (and
/// containerd's overlay applier) put a directory there.
#[test]
fn a_lower_file_where_a_parent_is_needed_is_replaced_by_a_directory() {
    let stack = [
        vec![Gen::File("a".into(), 0, 0o600, 1000, None)],
        vec![file("a/x")],
    ];
    assert_eq!(
        agreed(&stack, true),
        ["a dir 755 0:0", "a/x file:1 644 0:0"]
    );
}

/// On overlay, a symlink the layer made that leads to a directory only a
/// lower layer has was not followed: a whiteout through it did nothing, an
/// entry through it refused the layer ("a symlink to no directory"), and a
/// hardlink through it found no target. Native (and containerd's both
/// appliers) write into the directory it leads to.
#[test]
fn a_symlink_the_layer_made_leads_into_a_lower_directory() {
    let lower = vec![
        Gen::Dir("a".into(), 0o750, 1000, Some(0)),
        file("a/x"),
        file("a/y"),
        dir("b"),
        dir("b/y"),
    ];
    let through = vec![
        Gen::Symlink("s".into(), 1), // ../a, which stops at the root
        Gen::Whiteout("s/x".into()),
        file("s/n"),
        Gen::Symlink("t".into(), 3), // /b/y
        dir("t/new"),
        Gen::Link("h".into(), "s/y".into()),
    ];
    assert_eq!(
        agreed(&[lower.clone(), through], true),
        [
            "a dir 750 1000:1000 user.k=v0",
            "a/n file:1 644 0:0",
            "a/y file:1 644 0:0",
            "b dir 755 0:0",
            "b/y dir 755 0:0",
            "b/y/new dir 755 0:0",
            "h file:1 644 0:0",
            "s symlink->../a 777 0:0",
            "t symlink->/b/y 777 0:0",
        ]
    );
    // An opaque whiteout through it hides the lower entries, not the
    // layer's own written through it.
    let opaque = vec![
        Gen::Symlink("s".into(), 1),
        file("s/n"),
        Gen::Opaque("s".into()),
    ];
    assert_eq!(
        agreed(&[lower, opaque], true),
        [
            "a dir 750 1000:1000 user.k=v0",
            "a/n file:1 644 0:0",
            "b dir 755 0:0",
            "b/y dir 755 0:0",
            "s symlink->../a 777 0:0",
        ]
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn native_and_overlay_build_the_same_rootfs(stack in layers(), privileged in any::<bool>()) {
        check(&stack, privileged)?;
    }
}

/// A directory's mode was noted by its device and inode; after the layer
/// replaced it, a new directory there could get the same inode number and
/// the old mode (seen without root, where modes are set at the end).
#[test]
fn a_replaced_directorys_mode_never_reaches_the_directory_after_it() {
    let stack = [
        vec![Gen::Fifo("a".into())],
        vec![
            Gen::Dir("a".into(), 0o700, 0, None),
            Gen::File("a".into(), 0, 0o755, 0, None),
            dir("a/a"),
        ],
    ];
    assert_eq!(agreed(&stack, false), ["a dir 755 0:0", "a/a dir 755 0:0"]);
}
