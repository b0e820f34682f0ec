//! Hostile layers cannot write, link or delete outside the root: symlink,
//! hardlink, directory and whiteout escapes, each checked against a sentinel
//! tree beside the root. (A subset of containerd's `TestBreakouts`; the full
//! port is catalogued in docs/research/containerd-breakouts.md.)

use std::io::Cursor;
use std::path::Path;

use ocidist_snapshot::apply::{ApplyOptions, Compression, apply_layer_sync};
use ocidist_snapshot::mount::ApplyTarget;
use proptest::prelude::*;

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    /// A PAX sparse file (GNU 1.0) whose real name, in its records, is the
    /// first: its header names `GNUSparseFile.0/sparse`.
    Sparse(&'a str, &'a [u8]),
}

/// Raw headers, so names and link targets go in exactly as written.
fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let sparse_data;
        let (name, link, data, kind): (&str, &str, &[u8], _) = match e {
            E::File(n, d) => (n, "", d, tar::EntryType::Regular),
            E::Sparse(n, d) => {
                // The data at 0, then a hole of 4 KiB.
                let real_size = (d.len() + 4096).to_string();
                b.append_pax_extensions([
                    ("GNU.sparse.major", &b"1"[..]),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", n.as_bytes()),
                    ("GNU.sparse.realsize", real_size.as_bytes()),
                ])
                .unwrap();
                let mut map = format!("1\n0\n{}\n", d.len()).into_bytes();
                map.resize(512, 0);
                map.extend_from_slice(d);
                sparse_data = map;
                (
                    "GNUSparseFile.0/sparse",
                    "",
                    &sparse_data[..],
                    tar::EntryType::Regular,
                )
            }
            E::Dir(n) => (n, "", b"", tar::EntryType::Directory),
            E::Symlink(n, t) => (n, t, b"", tar::EntryType::Symlink),
            E::Link(n, t) => (n, t, b"", tar::EntryType::Link),
        };
        let ustar = h.as_ustar_mut().unwrap();
        ustar.name[..name.len()].copy_from_slice(name.as_bytes());
        ustar.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Every path, type and content under `dir`, skipping `root`.
fn snapshot_outside(dir: &Path, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p == root {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!(
                    "{:?} nlink={}",
                    std::fs::read(&p).unwrap(),
                    std::os::unix::fs::MetadataExt::nlink(&m)
                )
            };
            out.push(format!("{} {what}", p.display()));
        }
    }
    out.sort();
    out
}

/// Applies `entries` to `<tmp>/root` beside sentinel files, after `setup`;
/// returns whether it applied, and asserts nothing outside changed.
fn run(setup: impl FnOnce(&Path, &Path), entries: &[E<'_>]) -> (tempfile::TempDir, bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/passwd"), b"sentinel").unwrap();
    std::fs::write(dir.path().join("etc/unbroken"), b"unbroken").unwrap();
    setup(dir.path(), &root);
    let before = snapshot_outside(dir.path(), &root);
    let applied = apply_layer_sync(
        &ApplyTarget::Tree(root.clone()),
        Cursor::new(tar_of(entries)),
        Some(Compression::None),
        &ApplyOptions::default(),
    )
    .is_ok();
    assert_eq!(
        snapshot_outside(dir.path(), &root),
        before,
        "something outside the root changed"
    );
    (dir, applied)
}

#[test]
fn an_absolute_symlink_resolves_inside_the_root() {
    let outside = "/tmp/ocidist-escape-target";
    let (dir, applied) = run(
        |_, _| {},
        &[
            E::Dir("etc/"),
            E::Symlink("localetc", "/etc"),
            E::File("localetc/unbroken", b"inside"),
        ],
    );
    assert!(applied);
    assert_eq!(
        std::fs::read(dir.path().join("root/etc/unbroken")).unwrap(),
        b"inside"
    );
    assert!(!Path::new(outside).exists());
}

#[test]
fn a_relative_symlink_climbing_out_stays_in() {
    let (dir, applied) = run(
        |_, _| {},
        &[
            E::Dir("etc/"),
            E::Symlink("up", "../../../../../etc"),
            E::File("up/passwd", b"pwned"),
        ],
    );
    assert!(applied);
    assert_eq!(
        std::fs::read(dir.path().join("root/etc/passwd")).unwrap(),
        b"pwned"
    );
}

#[test]
fn a_dangling_symlink_parent_is_refused_not_followed_out() {
    // `up` resolves to <root>/etc, which does not exist: the entry fails
    // rather than creating anything through the link.
    let (dir, applied) = run(
        |_, _| {},
        &[
            E::Symlink("up", "../../../../../etc"),
            E::File("up/passwd", b"pwned"),
        ],
    );
    assert!(!applied);
    assert!(!dir.path().join("root/etc").exists());
}

/// A sparse file's real name comes from its PAX records, not its header:
/// it is resolved beneath the root like any other name. (`run` checks that
/// nothing outside changed.)
#[test]
fn a_sparse_files_name_through_a_symlink_stays_in() {
    let (dir, applied) = run(
        |_, _| {},
        &[
            E::Dir("etc/"),
            E::Symlink("localetc", "/etc"),
            E::Sparse("localetc/passwd", b"pwned"),
        ],
    );
    assert!(applied);
    let written = std::fs::read(dir.path().join("root/etc/passwd")).unwrap();
    assert_eq!((&written[..5], written.len()), (&b"pwned"[..], 5 + 4096));
    // Through a symlink to the host's directory: its target, taken beneath
    // the root, does not exist there, and the entry is refused.
    let host_link = |tmp: &Path, root: &Path| {
        std::os::unix::fs::symlink(tmp.join("etc"), root.join("hostetc")).unwrap()
    };
    let (_, applied) = run(host_link, &[E::Sparse("hostetc/passwd", b"pwned")]);
    assert!(!applied);
    let (_, applied) = run(|_, _| {}, &[E::Sparse("../etc/passwd", b"pwned")]);
    assert!(!applied, "`..` in a name is refused");
}

#[test]
fn a_symlinked_file_is_replaced_not_written_through() {
    let (dir, applied) = run(
        |tmp, root| {
            std::os::unix::fs::symlink(tmp.join("etc/passwd"), root.join("passwd")).unwrap()
        },
        &[E::File("passwd", b"pwned")],
    );
    assert!(applied);
    assert_eq!(
        std::fs::read(dir.path().join("root/passwd")).unwrap(),
        b"pwned"
    );
}

#[test]
fn a_hardlink_to_an_absolute_path_links_inside_the_root() {
    let (dir, applied) = run(
        |_, _| {},
        &[
            E::Dir("etc/"),
            E::File("etc/passwd", b"inner"),
            E::Link("hl", "/etc/passwd"),
        ],
    );
    assert!(applied);
    assert_eq!(std::fs::read(dir.path().join("root/hl")).unwrap(), b"inner");
}

#[test]
fn a_hardlink_to_a_file_outside_is_impossible() {
    // The target resolves inside the root, where it does not exist.
    let (_dir, applied) = run(|_, _| {}, &[E::Link("hl", "../etc/passwd")]);
    assert!(!applied);
    let (_dir, applied) = run(
        |_, _| {},
        &[E::Symlink("out", "/.."), E::Link("hl", "out/etc/passwd")],
    );
    assert!(
        !applied,
        "out/etc/passwd resolves to <root>/etc/passwd, which does not exist"
    );
}

#[test]
fn a_hardlink_through_a_symlinked_parent_stays_in() {
    let (_dir, applied) = run(
        |tmp, root| std::os::unix::fs::symlink(tmp.join("etc"), root.join("hostetc")).unwrap(),
        &[E::Link("stolen", "hostetc/passwd")],
    );
    assert!(
        !applied,
        "hostetc's absolute target is resolved inside the root"
    );
}

#[test]
fn a_whiteout_through_a_symlink_deletes_nothing_outside() {
    let (_dir, applied) = run(
        |tmp, root| std::os::unix::fs::symlink(tmp.join("etc"), root.join("hostetc")).unwrap(),
        &[
            E::File("hostetc/.wh.passwd", b""),
            E::Symlink("up", "../../.."),
            E::File("up/etc/.wh.unbroken", b""),
        ],
    );
    assert!(
        applied,
        "whiteouts of names that do not exist inside are no-ops"
    );
}

#[test]
fn whiteouts_of_dot_and_dot_dot_are_refused() {
    for name in ["etc/.wh..", "etc/.wh...", ".wh..", ".wh..."] {
        let (_dir, applied) = run(|_, _| {}, &[E::Dir("etc/"), E::File(name, b"")]);
        assert!(!applied, "{name} must be refused");
    }
}

#[test]
fn a_directory_entry_over_a_symlink_replaces_it() {
    let (dir, applied) = run(
        |tmp, root| std::os::unix::fs::symlink(tmp.join("etc"), root.join("etc")).unwrap(),
        &[E::Dir("etc/"), E::File("etc/passwd", b"inner")],
    );
    assert!(applied);
    assert!(
        std::fs::symlink_metadata(dir.path().join("root/etc"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read(dir.path().join("root/etc/passwd")).unwrap(),
        b"inner"
    );
}

#[test]
fn dot_dot_in_names_is_refused() {
    let (_dir, applied) = run(|_, _| {}, &[E::File("../etc/passwd", b"pwned")]);
    assert!(!applied);
    let (_dir, applied) = run(|_, _| {}, &[E::File("a/../../etc/passwd", b"pwned")]);
    assert!(!applied);
}

/// Name parts a hostile layer is made of.
const PARTS: [&str; 7] = ["etc", "passwd", "up", "hostetc", "..", ".", ""];
/// Where its symlinks and hardlinks point.
const TARGETS: [&str; 10] = [
    "/",
    "/etc",
    "..",
    "../..",
    "../../etc/passwd",
    "up",
    "/..",
    "hostetc",
    "hostetc/passwd",
    "etc/passwd",
];

#[derive(Debug, Clone)]
enum Hostile {
    File(String),
    Dir(String),
    Symlink(String, usize),
    Link(String, usize),
    Sparse(String),
}

fn hostile_name() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        proptest::collection::vec(proptest::sample::select(&PARTS[..]), 1..4),
        proptest::option::of(prop_oneof![Just(".wh."), Just(".wh..wh..opq")]),
    )
        .prop_map(|(absolute, parts, whiteout)| {
            let mut name = parts.join("/");
            if let Some(prefix) = whiteout {
                name = match name.rsplit_once('/') {
                    Some((dir, last)) if prefix == ".wh." => format!("{dir}/.wh.{last}"),
                    Some((dir, _)) => format!("{dir}/{prefix}"),
                    None if prefix == ".wh." => format!(".wh.{name}"),
                    None => prefix.to_string(),
                };
            }
            if absolute { format!("/{name}") } else { name }
        })
}

fn hostile_entry() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        hostile_name().prop_map(Hostile::File),
        hostile_name().prop_map(Hostile::Dir),
        (hostile_name(), 0..TARGETS.len()).prop_map(|(n, t)| Hostile::Symlink(n, t)),
        (hostile_name(), 0..TARGETS.len()).prop_map(|(n, t)| Hostile::Link(n, t)),
        hostile_name().prop_map(Hostile::Sparse),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever a layer holds, applied to a tree or to an overlay upper
    /// directory (whose lower has a symlink to the host), nothing outside
    /// the root changes: not the host's files, not the lower layer.
    #[test]
    fn no_layer_changes_anything_outside_its_root(
        entries in proptest::collection::vec(hostile_entry(), 1..10),
        overlay in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let lower = dir.path().join("lower");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), b"sentinel").unwrap();
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), b"lower").unwrap();
        std::os::unix::fs::symlink(dir.path().join("etc"), lower.join("hostetc")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("etc"), root.join("hostetc")).unwrap();
        let list: Vec<E<'_>> = entries
            .iter()
            .map(|e| match e {
                Hostile::File(n) => E::File(n, b"pwned"),
                Hostile::Dir(n) => E::Dir(n),
                Hostile::Symlink(n, t) => E::Symlink(n, TARGETS[*t]),
                Hostile::Link(n, t) => E::Link(n, TARGETS[*t]),
                Hostile::Sparse(n) => E::Sparse(n, b"pwned"),
            })
            .collect();
        let target = if overlay {
            ApplyTarget::OverlayUpper { upper: root.clone(), lowers: vec![lower.clone()] }
        } else {
            ApplyTarget::Tree(root.clone())
        };
        let before = snapshot_outside(dir.path(), &root);
        // Applied or refused, both are fine; a panic is not.
        let _ = apply_layer_sync(
            &target,
            Cursor::new(tar_of(&list)),
            Some(Compression::None),
            &ApplyOptions::default(),
        );
        prop_assert_eq!(snapshot_outside(dir.path(), &root), before);
    }
}
