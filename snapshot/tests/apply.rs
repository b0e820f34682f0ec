//! Layer apply: every kind of entry a real layer holds, whiteouts in both
//! modes, compression, diff IDs, and refusals.

mod common;

use std::io::Cursor;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::{Entry, gzip, tar_of, tree, xattr_tree};
use ocidist_content::sha256_of;
use ocidist_snapshot::ErrorKind;
use ocidist_snapshot::apply::{ApplyOptions, Compression, apply_layer_sync};
use ocidist_snapshot::mount::ApplyTarget;

fn apply_tree(
    root: &std::path::Path,
    layer: &[u8],
) -> ocidist_snapshot::Result<ocidist_snapshot::apply::Applied> {
    apply_layer_sync(
        &ApplyTarget::Tree(root.to_path_buf()),
        Cursor::new(layer.to_vec()),
        None,
        &ApplyOptions::default(),
    )
}

/// Applies `layer` onto `root`, which must refuse it as the layer's fault
/// (InvalidArgument) saying `says`; the error's message.
fn assert_refused(root: &std::path::Path, layer: &[u8], says: &str) -> String {
    let err = apply_tree(root, layer).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let message = err.to_string();
    assert!(message.contains(says), "{message}");
    message
}

#[test]
fn every_entry_kind_is_written_with_its_metadata() {
    let root = tempfile::tempdir().unwrap();
    let layer = tar_of(&[
        Entry::Dir("etc", 0o755),
        Entry::File("etc/hostname", b"box", 0o644),
        Entry::Owned("usr/bin/su", b"su", 0o4755, 1000, 1001),
        Entry::Symlink("etc/motd", "/etc/hostname"),
        Entry::Link("etc/hostname2", "etc/hostname"),
        Entry::Char("dev/null", 1, 3),
        Entry::Fifo("run/pipe"),
        Entry::Xattr("bin/ping", b"ping", "user.note", b"\x00\x01bin"),
        Entry::Dir("tmp", 0o1777),
    ]);
    let applied = apply_tree(root.path(), &layer).unwrap();
    assert_eq!(applied.diff_id, sha256_of(&layer));
    assert_eq!(applied.tar_size, layer.len() as u64);
    let r = root.path();
    assert_eq!(std::fs::read(r.join("etc/hostname")).unwrap(), b"box");
    let su = std::fs::metadata(r.join("usr/bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid survives the chown");
    assert_eq!((su.uid(), su.gid()), (1000, 1001));
    assert_eq!(
        std::fs::read_link(r.join("etc/motd")).unwrap().to_str(),
        Some("/etc/hostname")
    );
    assert_eq!(
        std::fs::metadata(r.join("etc/hostname2")).unwrap().ino(),
        std::fs::metadata(r.join("etc/hostname")).unwrap().ino()
    );
    let null = std::fs::metadata(r.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert!(
        std::fs::metadata(r.join("run/pipe"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let mut value = [0u8; 16];
    let n = rustix::fs::getxattr(r.join("bin/ping"), "user.note", &mut value[..]).unwrap();
    assert_eq!(&value[..n], b"\x00\x01bin");
    assert_eq!(
        std::fs::metadata(r.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    assert_eq!(
        std::fs::metadata(r.join("etc")).unwrap().mtime(),
        1_700_000_000,
        "directory times set last"
    );
}

#[test]
fn gzip_and_zstd_layers_give_the_diff_id_of_the_tar() {
    let layer = tar_of(&[Entry::File("a", b"alpha", 0o644)]);
    for (compressed, compression) in [
        (gzip(&layer), Some(Compression::Gzip)),
        (gzip(&layer), None),
        (zstd::encode_all(&layer[..], 3).unwrap(), None),
        (
            zstd::encode_all(&layer[..], 3).unwrap(),
            Some(Compression::Zstd),
        ),
        (layer.clone(), None),
        // Mislabelled, either way: the stream's magic decides, as in containerd.
        (layer.clone(), Some(Compression::Gzip)),
        (gzip(&layer), Some(Compression::None)),
    ] {
        let root = tempfile::tempdir().unwrap();
        let applied = apply_layer_sync(
            &ApplyTarget::Tree(root.path().to_path_buf()),
            Cursor::new(compressed),
            compression,
            &ApplyOptions::default(),
        )
        .unwrap();
        assert_eq!(applied.diff_id, sha256_of(&layer));
        assert_eq!(std::fs::read(root.path().join("a")).unwrap(), b"alpha");
    }
}

/// The first bytes decide as containerd's `DetectCompression` does: gzip's
/// magic with its deflate method, a zstd frame or a skippable frame before
/// one (pzstd writes one), however few bytes each read hands over.
#[test]
fn compression_is_told_by_the_first_bytes_even_from_a_trickle() {
    /// A reader handing over one byte at a time, as a pipe may.
    struct Trickle(Cursor<Vec<u8>>);
    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let one = buf.len().min(1);
            self.0.read(&mut buf[..one])
        }
    }
    assert_eq!(
        Compression::detect(&[0x1f, 0x8b, 0x08, 0]),
        Compression::Gzip
    );
    assert_eq!(
        Compression::detect(&[0x1f, 0x8b, 0x00, 0]),
        Compression::None
    );
    let layer = tar_of(&[Entry::File("a", b"alpha", 0o644)]);
    let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    skippable.extend(zstd::encode_all(&layer[..], 3).unwrap());
    assert_eq!(Compression::detect(&skippable), Compression::Zstd);
    for stream in [gzip(&layer), skippable] {
        let root = tempfile::tempdir().unwrap();
        let applied = apply_layer_sync(
            &ApplyTarget::Tree(root.path().to_path_buf()),
            Trickle(Cursor::new(stream)),
            Some(Compression::None),
            &ApplyOptions::default(),
        )
        .unwrap();
        assert_eq!(applied.diff_id, sha256_of(&layer));
    }
}

#[test]
fn media_types_name_their_compression() {
    assert_eq!(
        Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+gzip"),
        Some(Compression::Gzip)
    );
    assert_eq!(
        Compression::from_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Some(Compression::Gzip)
    );
    assert_eq!(
        Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
        Some(Compression::Zstd)
    );
    assert_eq!(
        Compression::from_media_type("application/vnd.oci.image.layer.v1.tar"),
        Some(Compression::None)
    );
    assert_eq!(
        Compression::from_media_type("application/octet-stream"),
        None
    );
}

#[test]
fn whiteouts_delete_on_a_tree_and_opaque_spares_the_same_layer() {
    let root = tempfile::tempdir().unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::File("etc/issue", b"old", 0o644),
            Entry::File("etc/keep", b"keep", 0o644),
            Entry::File("opt/app/old1", b"1", 0o644),
            Entry::File("opt/app/old2", b"2", 0o644),
            Entry::File("usr/share/doc/bash/README", b"r", 0o644),
        ]),
    )
    .unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::File("etc/.wh.issue", b"", 0o644),
            Entry::File("usr/share/doc/.wh.bash", b"", 0o644),
            Entry::File("opt/app/new", b"n", 0o644),
            Entry::File("opt/app/.wh..wh..opq", b"", 0o644),
        ]),
    )
    .unwrap();
    let t = tree(root.path());
    assert!(!t.contains_key("etc/issue"));
    assert!(t.contains_key("etc/keep"));
    assert!(!t.contains_key("usr/share/doc/bash"));
    assert!(
        t.contains_key("opt/app/new"),
        "opaque spares entries of its own layer: {t:?}"
    );
    assert!(!t.contains_key("opt/app/old1") && !t.contains_key("opt/app/old2"));
}

/// A lower directory holding `entries`, and an empty upper directory over
/// it as an apply target.
fn upper_over(entries: &[Entry<'_>]) -> (tempfile::TempDir, tempfile::TempDir, ApplyTarget) {
    let lower = tempfile::tempdir().unwrap();
    apply_tree(lower.path(), &tar_of(entries)).unwrap();
    let upper = tempfile::tempdir().unwrap();
    let target = ApplyTarget::OverlayUpper {
        upper: upper.path().to_path_buf(),
        lowers: vec![lower.path().to_path_buf()],
    };
    (lower, upper, target)
}

#[test]
fn whiteouts_become_overlay_markers_on_an_upper_dir() {
    let (_lower, upper, target) =
        upper_over(&[Entry::Dir("srv", 0o750), Entry::File("srv/a", b"a", 0o644)]);
    let layer = tar_of(&[
        Entry::File("srv/.wh.a", b"", 0o644),
        Entry::File("srv/sub/file", b"f", 0o644),
        Entry::File("srv/sub/.wh..wh..opq", b"", 0o644),
    ]);
    apply_layer_sync(&target, Cursor::new(layer), None, &ApplyOptions::default()).unwrap();
    let a = std::fs::symlink_metadata(upper.path().join("srv/a")).unwrap();
    assert!(
        a.file_type().is_char_device() && a.rdev() == 0,
        "whiteout is a 0/0 char device"
    );
    let srv = std::fs::metadata(upper.path().join("srv")).unwrap();
    assert_eq!(
        srv.mode() & 0o7777,
        0o750,
        "a parent missing from the layer copies the lower's mode"
    );
    let mut v = [0u8; 4];
    let n = rustix::fs::getxattr(
        upper.path().join("srv/sub"),
        ocidist_snapshot::overlay::opaque_xattr(),
        &mut v[..],
    )
    .unwrap();
    assert_eq!(&v[..n], b"y");
    assert_eq!(
        std::fs::read(upper.path().join("srv/sub/file")).unwrap(),
        b"f"
    );
}

fn is_whiteout(path: &std::path::Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// overlayfs takes any 0/0 character device in an upper directory for a
/// whiteout: a layer's own hides the lower entry of its name, and one that
/// hides nothing goes (in a directory no lower has, the mount would list
/// it and fail to look it up). Other devices are devices.
#[test]
fn a_layers_own_0_0_character_device_is_a_whiteout_on_an_upper_dir() {
    let (_lower, upper, target) =
        upper_over(&[Entry::Dir("srv", 0o755), Entry::File("srv/a", b"a", 0o644)]);
    let layer = tar_of(&[
        Entry::Char("srv/a", 0, 0),
        Entry::Char("new/zero", 0, 0),
        Entry::Char("new/null", 1, 3),
    ]);
    let applied = apply_layer_sync(
        &target,
        Cursor::new(layer.clone()),
        None,
        &ApplyOptions::default(),
    )
    .unwrap();
    assert!(is_whiteout(&upper.path().join("srv/a")));
    assert!(
        !upper.path().join("new/zero").exists() && !is_whiteout(&upper.path().join("new/zero")),
        "a whiteout hiding nothing is gone"
    );
    let null = std::fs::symlink_metadata(upper.path().join("new/null")).unwrap();
    assert!(null.file_type().is_char_device() && null.rdev() == rustix::fs::makedev(1, 3));
    assert!(
        applied
            .warnings
            .iter()
            .any(|w| w.starts_with("2 character devices 0/0 made whiteouts")),
        "{:?}",
        applied.warnings
    );

    // On a whole tree it is a device like any other.
    let root = tempfile::tempdir().unwrap();
    let applied = apply_tree(root.path(), &layer).unwrap();
    assert!(is_whiteout(&root.path().join("new/zero")));
    assert!(
        applied.warnings.iter().all(|w| !w.contains("0/0")),
        "{:?}",
        applied.warnings
    );
}

/// A hardlink to a directory is the layer's fault, said so, on a tree and
/// on an upper directory, whether the directory is the layer's or a lower's.
#[test]
fn a_hardlink_to_a_directory_is_refused_as_such() {
    let root = tempfile::tempdir().unwrap();
    assert_refused(
        root.path(),
        &tar_of(&[Entry::Dir("d", 0o755), Entry::Link("l", "d")]),
        "hardlink \"l\": target \"d\" is a directory",
    );

    for layer in [
        tar_of(&[Entry::Dir("d", 0o755), Entry::Link("l", "d")]),
        tar_of(&[Entry::Link("l", "below")]),
    ] {
        let (_lower, _upper, target) = upper_over(&[Entry::Dir("below", 0o755)]);
        let err = apply_layer_sync(&target, Cursor::new(layer), None, &ApplyOptions::default())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("is a directory"), "{err}");
    }
}

/// A hardlink entry's own mode and time go to the inode it joins, as
/// containerd applies them (the group's last entry wins), on a tree and on
/// an upper directory, where a lower's file is copied up first and the
/// lower keeps its own.
#[test]
fn a_hardlinks_own_metadata_goes_to_the_inode_it_joins() {
    let root = tempfile::tempdir().unwrap();
    let layer = tar_of(&[
        Entry::File("bin/tool", b"t", 0o755),
        Entry::LinkAs("bin/alias", "bin/tool", 0o700, 1_600_000_000),
    ]);
    apply_tree(root.path(), &layer).unwrap();
    let tool = std::fs::metadata(root.path().join("bin/tool")).unwrap();
    let alias = std::fs::metadata(root.path().join("bin/alias")).unwrap();
    assert_eq!(tool.ino(), alias.ino());
    assert_eq!((tool.mode() & 0o7777, tool.mtime()), (0o700, 1_600_000_000));

    let (lower, upper, target) = upper_over(&[Entry::File("bin/tool", b"t", 0o755)]);
    let layer = tar_of(&[Entry::LinkAs("bin/alias", "bin/tool", 0o711, 1_600_000_000)]);
    apply_layer_sync(&target, Cursor::new(layer), None, &ApplyOptions::default()).unwrap();
    let copied = std::fs::metadata(upper.path().join("bin/tool")).unwrap();
    let alias = std::fs::metadata(upper.path().join("bin/alias")).unwrap();
    assert_eq!(copied.ino(), alias.ino());
    assert_eq!(
        (alias.mode() & 0o7777, alias.mtime()),
        (0o711, 1_600_000_000)
    );
    let below = std::fs::metadata(lower.path().join("bin/tool")).unwrap();
    assert_eq!(
        (below.mode() & 0o7777, below.mtime()),
        (0o755, 1_700_000_000)
    );
}

/// On a tree, a hardlink entry whose metadata differs gives the inode a
/// copy of its own first (it may be the snapshot below's), which walks the
/// tree: past 64 such copies in one layer, the metadata is not applied and
/// a warning says so, rather than walk the tree once per entry.
#[test]
fn hardlinks_metadata_copies_are_bounded_per_layer() {
    let root = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..66).map(|i| format!("f{i:02}")).collect();
    let files: Vec<Entry<'_>> = names.iter().map(|n| Entry::File(n, b"x", 0o644)).collect();
    apply_tree(root.path(), &tar_of(&files)).unwrap();
    let aliases: Vec<String> = names.iter().map(|n| format!("{n}-alias")).collect();
    let links: Vec<Entry<'_>> = names
        .iter()
        .zip(&aliases)
        .map(|(n, a)| Entry::LinkAs(a, n, 0o600, 1_700_000_000))
        .collect();
    let applied = apply_tree(root.path(), &tar_of(&links)).unwrap();
    let modes: Vec<u32> = names
        .iter()
        .map(|n| std::fs::metadata(root.path().join(n)).unwrap().mode() & 0o7777)
        .collect();
    assert_eq!(
        modes.iter().filter(|m| **m == 0o600).count(),
        64,
        "{modes:?}"
    );
    assert_eq!(
        modes.iter().filter(|m| **m == 0o644).count(),
        2,
        "{modes:?}"
    );
    assert!(
        applied.warnings.iter().any(|w| w.starts_with(
            "2 hardlinks' own metadata not applied to the files they link to: over 64"
        )),
        "{:?}",
        applied.warnings
    );

    // Files the layer wrote itself are its own: changed in place, however
    // many, with no copy and no warning.
    let fresh = tempfile::tempdir().unwrap();
    let both: Vec<Entry<'_>> = files.into_iter().chain(links).collect();
    let applied = apply_tree(fresh.path(), &tar_of(&both)).unwrap();
    for (n, a) in names.iter().zip(&aliases) {
        let file = std::fs::metadata(fresh.path().join(n)).unwrap();
        let alias = std::fs::metadata(fresh.path().join(a)).unwrap();
        assert_eq!(
            (file.ino(), file.mode() & 0o7777),
            (alias.ino(), 0o600),
            "{n}"
        );
    }
    assert!(
        applied.warnings.iter().all(|w| !w.contains("hardlink")),
        "{:?}",
        applied.warnings
    );
}

/// `.wh..` and `.wh...` name no entry; the refusal says which name it was.
#[test]
fn whiteouts_of_dot_and_dot_dot_say_what_they_named() {
    for (name, says) in [("etc/.wh..", "\".\""), ("etc/.wh...", "\"..\"")] {
        let root = tempfile::tempdir().unwrap();
        let message = assert_refused(
            root.path(),
            &tar_of(&[Entry::Dir("etc", 0o755), Entry::File(name, b"", 0o644)]),
            "which is not an entry of its directory",
        );
        assert!(
            message.contains(&format!("would delete {says}")),
            "{message}"
        );
    }
    // Named as the layer wrote it, not by where the snapshot is.
    let root = tempfile::tempdir().unwrap();
    let message = assert_refused(
        root.path(),
        &tar_of(&[
            Entry::Dir("etc", 0o755),
            Entry::File("etc/.wh.", b"", 0o644),
        ]),
        "whiteout \"etc/.wh.\" names nothing to delete",
    );
    let host = root.path().to_string_lossy();
    assert!(!message.contains(host.as_ref()), "{message}");
}

#[test]
fn replacing_kinds_removes_what_was_there() {
    let root = tempfile::tempdir().unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::File("etc/motd", b"file", 0o644),
            Entry::Dir("usr/local/games", 0o755),
            Entry::File("usr/local/games/x", b"x", 0o644),
        ]),
    )
    .unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::Symlink("etc/motd", "issue"),
            Entry::File("usr/local/games", b"now a file", 0o644),
        ]),
    )
    .unwrap();
    assert!(
        std::fs::symlink_metadata(root.path().join("etc/motd"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read(root.path().join("usr/local/games")).unwrap(),
        b"now a file"
    );
}

#[test]
fn long_pax_names_apply() {
    let root = tempfile::tempdir().unwrap();
    let long = format!("opt/{}/file", "d".repeat(150));
    apply_tree(root.path(), &tar_of(&[Entry::File(&long, b"deep", 0o644)])).unwrap();
    assert_eq!(std::fs::read(root.path().join(&long)).unwrap(), b"deep");
}

/// Each name or symlink target of 4 KB adds 2,000 levels to the tree a
/// symlink leads into, so a small layer could build one tens of thousands
/// of levels deep, every lookup in it walking them all. A path beneath the
/// root past 4,096 bytes (`PATH_MAX`, where containerd's path strings stop
/// too) is refused, its name quoted short.
#[test]
fn an_entry_resolved_past_path_max_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let chain = vec!["a"; 1500].join("/");
    let first = format!("d/{chain}/f");
    let beyond = format!("s/{chain}/f");
    let layer = tar_of(&[
        Entry::File(&first, b"x", 0o644),
        Entry::Symlink("s", &format!("d/{chain}")),
        Entry::File(&beyond, b"x", 0o644),
    ]);
    let message = assert_refused(root.path(), &layer, "a path of 4096 bytes or more");
    assert!(message.len() < 600, "{message}");
    assert_eq!(std::fs::read(root.path().join(&first)).unwrap(), b"x");
}

/// Symlinks whose targets walk back and forth (`a/../a/..`) make the kernel
/// walk up to 40 targets of 2,000 names for one lookup, whatever the tree's
/// depth. A lookup may walk 16,384 names, counted through the symlinks it
/// follows, however often they were looked up before.
#[test]
fn a_lookup_walking_too_many_names_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let back_and_forth = "/../a".repeat(800);
    let targets: Vec<String> = (1..=11)
        .map(|k| match k {
            1 => format!("a{back_and_forth}"),
            k => format!("l{}{back_and_forth}", k - 1),
        })
        .collect();
    let names: Vec<String> = (1..=11).map(|k| format!("l{k}")).collect();
    let mut entries = vec![Entry::Dir("a", 0o755)];
    entries.extend(
        names
            .iter()
            .zip(&targets)
            .map(|(n, t)| Entry::Symlink(n, t)),
    );
    // l10 walks 16,011 names, l11 17,612.
    entries.push(Entry::File("l10/within", b"x", 0o644));
    let layer = tar_of(&entries);
    apply_tree(root.path(), &layer).unwrap();
    assert_eq!(std::fs::read(root.path().join("a/within")).unwrap(), b"x");

    entries.push(Entry::File("l11/beyond", b"x", 0o644));
    let layer = tar_of(&entries);
    let root = tempfile::tempdir().unwrap();
    assert_refused(root.path(), &layer, "16384 names");
    assert!(!root.path().join("a/beyond").exists());
}

/// A hardlink that replaces a symlink looks its target up afresh: through
/// the removed symlink, the target is gone (a remembered resolution would
/// still find it).
#[test]
fn a_hardlinks_target_is_not_found_through_the_symlink_it_replaced() {
    let root = tempfile::tempdir().unwrap();
    let layer = tar_of(&[
        Entry::File("d/y/f", b"x", 0o644),
        Entry::Symlink("X", "d"),
        Entry::Symlink("L", "X/y"),
        Entry::File("L/g", b"x", 0o644),
        Entry::Link("X", "L/f"),
    ]);
    let err = apply_tree(root.path(), &layer).unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// A parent that is a symlink to nothing is the layer's error, said as
/// such (not "File exists" from making a directory over the link).
#[test]
fn a_dangling_symlink_parent_is_the_layers_error() {
    let root = tempfile::tempdir().unwrap();
    let layer = tar_of(&[
        Entry::Symlink("up", "nowhere"),
        Entry::File("up/file", b"x", 0o644),
    ]);
    assert_refused(root.path(), &layer, "symlink to no directory");
    assert!(!root.path().join("nowhere").exists());
}

/// The kernel answers an empty or over-long xattr name with ERANGE
/// ("Numerical result out of range"); the layer's error says what is wrong.
#[test]
fn an_xattr_name_the_kernel_cannot_take_is_the_layers_error() {
    let long = "user.".to_string() + &"x".repeat(251);
    for name in ["", long.as_str()] {
        let root = tempfile::tempdir().unwrap();
        let layer = tar_of(&[Entry::Xattr("f", b"x", name, b"v")]);
        let expected = format!("an xattr name of {} bytes", name.len());
        assert_refused(root.path(), &layer, &expected);
    }
    // 255 bytes is the most there is room for.
    let root = tempfile::tempdir().unwrap();
    let longest = &long[..255];
    apply_tree(
        root.path(),
        &tar_of(&[Entry::Xattr("f", b"x", longest, b"v")]),
    )
    .unwrap();
    let tree = xattr_tree(root.path());
    assert!(tree["f"].ends_with(&format!(" {longest}=v")), "{tree:?}");
}

#[test]
fn dot_dot_in_a_name_is_refused_and_writes_nothing_outside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let mut h = tar::Header::new_ustar();
    h.as_ustar_mut().unwrap().name[..13].copy_from_slice(b"../escaped.tx");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    let err = apply_tree(&root, &b.into_inner().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(!dir.path().join("escaped.tx").exists());
}

#[test]
fn a_truncated_layer_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let layer = gzip(&tar_of(&[Entry::File("a", &[7u8; 100_000], 0o644)]));
    let err = apply_tree(root.path(), &layer[..layer.len() / 2]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

/// A header the parser cannot read is refused with its bytes quoted, but
/// escaped: a layer's name or number field cannot send escape sequences to
/// the terminal that shows the error.
#[test]
fn a_broken_header_is_quoted_without_its_control_characters() {
    let root = tempfile::tempdir().unwrap();
    let mut header = [0u8; 512];
    let name = b"\x1b[2J\x1b]0;PWNED\x07evil";
    header[..name.len()].copy_from_slice(name);
    let checksum = b"\x1b[31mRED";
    header[148..148 + checksum.len()].copy_from_slice(checksum);
    let mut layer = header.to_vec();
    layer.extend_from_slice(&[0u8; 1024]);
    let message = assert_refused(root.path(), &layer, "tar: ");
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(message.contains(r"\u{1b}[31mRED"), "{message}");
}

/// An entry of a type layers do not carry (a volume label, a GNU dump
/// directory) is named by its type flag, as tar writes it.
#[test]
fn an_unsupported_entry_type_is_named_by_its_flag() {
    let root = tempfile::tempdir().unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::new(b'V'));
    header.set_size(0);
    builder.append_data(&mut header, "label", &b""[..]).unwrap();
    let layer = builder.into_inner().unwrap();
    assert_refused(
        root.path(),
        &layer,
        r#"entry "label": unsupported tar entry type 'V' (86)"#,
    );
}

/// A tar whose first member is an extension record (`kind`) holding
/// `content` (`size` bytes), then a file: made as it is read, never held whole.
fn extension_record_then_a_file(
    kind: tar::EntryType,
    content: impl std::io::Read,
    size: u64,
) -> impl std::io::Read {
    use std::io::Read;
    let mut record = tar::Header::new_gnu();
    record.set_path("././@LongLink").unwrap();
    record.set_entry_type(kind);
    record.set_size(size);
    record.set_mode(0o644);
    record.set_cksum();
    let padding = (512 - size % 512) % 512;
    let rest = tar_of(&[Entry::File("after", b"a", 0o644)]);
    Cursor::new(record.as_bytes().to_vec())
        .chain(content.take(size))
        .chain(std::io::repeat(0).take(padding))
        .chain(Cursor::new(rest))
}

/// One PAX record, `"<length> <key>=<value>\n"`, its length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut length = body + 1;
    while length != body + length.to_string().len() {
        length = body + length.to_string().len();
    }
    let mut out = format!("{length} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// A PAX record or GNU long name of 256 MiB is refused after at most a few
/// MiB are read: the parser would hold it all in memory (Go's archive/tar,
/// containerd's, refuses such records over 1 MiB). A 1 MiB PAX record applies.
#[test]
fn huge_extension_records_are_refused_before_they_are_buffered() {
    fn apply(
        root: &std::path::Path,
        layer: impl std::io::Read + Send + 'static,
    ) -> ocidist_snapshot::Result<ocidist_snapshot::apply::Applied> {
        apply_layer_sync(
            &ApplyTarget::Tree(root.to_path_buf()),
            layer,
            Some(Compression::None),
            &ApplyOptions::default(),
        )
    }
    for kind in [
        tar::EntryType::XHeader,
        tar::EntryType::GNULongName,
        tar::EntryType::GNULongLink,
    ] {
        let root = tempfile::tempdir().unwrap();
        let layer = extension_record_then_a_file(kind, std::io::repeat(b'a'), 256 << 20);
        let err = apply(root.path(), layer).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{kind:?}: {err}");
        assert!(err.to_string().contains("over 4 MiB"), "{kind:?}: {err}");
        assert!(!root.path().join("after").exists());
    }
    let root = tempfile::tempdir().unwrap();
    let comment = pax_record("comment", &vec![b'c'; 1 << 20]);
    let size = comment.len() as u64;
    let layer = extension_record_then_a_file(tar::EntryType::XHeader, Cursor::new(comment), size);
    apply(root.path(), layer).unwrap();
    assert_eq!(std::fs::read(root.path().join("after")).unwrap(), b"a");
}

/// A GNU sparse file of `real_size` bytes whose only data is its last byte.
fn sparse_layer(real_size: u64) -> Vec<u8> {
    sparse_files(&[("holes", real_size)])
}

/// GNU sparse files, each of its size, whose only data is its last byte.
fn sparse_files(files: &[(&str, u64)]) -> Vec<u8> {
    let mut layer = Vec::new();
    for (name, real_size) in files {
        let mut header = tar::Header::new_gnu();
        header.set_path(name).unwrap();
        header.set_entry_type(tar::EntryType::GNUSparse);
        header.set_mode(0o644);
        header.set_size(1);
        let gnu = header.as_gnu_mut().unwrap();
        gnu.set_real_size(*real_size);
        gnu.sparse[0].set_offset(real_size - 1);
        gnu.sparse[0].set_length(1);
        header.set_cksum();
        layer.extend_from_slice(header.as_bytes());
        layer.push(b'z');
        layer.resize(layer.len() + 511, 0);
    }
    layer.resize(layer.len() + 1024, 0);
    layer
}

/// Holes are read as zeros, so a sparse file is bounded (64 GiB): a tiny
/// layer must not keep an unpack busy for hours. Below that, holes stay holes.
#[test]
fn sparse_files_keep_their_holes_and_huge_ones_are_refused() {
    let root = tempfile::tempdir().unwrap();
    apply_tree(root.path(), &sparse_layer(64 << 20)).unwrap();
    let holes = std::fs::metadata(root.path().join("holes")).unwrap();
    assert_eq!(holes.len(), 64 << 20);
    assert!(holes.blocks() * 512 < 1 << 20, "{} blocks", holes.blocks());

    let root = tempfile::tempdir().unwrap();
    let err = apply_tree(root.path(), &sparse_layer(1 << 40)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("over the 64 GiB"), "{err}");
    assert!(!root.path().join("holes").exists());

    // The bound is the layer's: a second file under it alone, past it
    // with the first, is refused before its holes are read.
    let root = tempfile::tempdir().unwrap();
    let layer = sparse_files(&[("small", 1 << 20), ("second", (64 << 30) - (512 << 10))]);
    let err = apply_tree(root.path(), &layer).unwrap_err();
    assert!(err.to_string().contains("\"second\""), "{err}");
    assert!(!root.path().join("second").exists());
}

/// A whiteout of a directory tree deeper than removal goes is refused, not
/// followed down until the stack gives out (symlinks let a few entries
/// build trees tens of thousands of levels deep); an ordinary deep tree goes.
#[test]
fn a_whiteout_of_a_tree_too_deep_is_refused_and_an_ordinary_one_removed() {
    let root = tempfile::tempdir().unwrap();
    let deep = |top: &str, levels: usize| {
        let mut path = root.path().join(top);
        for _ in 0..levels {
            path.push("a");
        }
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("f"), b"bottom").unwrap();
    };
    deep("ordinary", 100);
    deep("abyss", 600);
    apply_tree(
        root.path(),
        &tar_of(&[Entry::File(".wh.ordinary", b"", 0o644)]),
    )
    .unwrap();
    assert!(!root.path().join("ordinary").exists());
    let err = apply_tree(
        root.path(),
        &tar_of(&[Entry::File(".wh.abyss", b"", 0o644)]),
    )
    .unwrap_err();
    let said = ocidist_content::Report::new(&err).to_string();
    assert!(said.contains("too long"), "{said}");
}

/// A directory listed twice (tars merged by a build tool) takes the last
/// entry's mode and times, as with containerd.
#[test]
fn a_directory_listed_twice_takes_the_last_entrys_times() {
    let root = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    for (mtime, mode) in [(1_000_000, 0o755), (2_000_000, 0o700)] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path("twice").unwrap();
        h.set_size(0);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_cksum();
        b.append(&h, std::io::empty()).unwrap();
    }
    apply_tree(root.path(), &b.into_inner().unwrap()).unwrap();
    let meta = std::fs::metadata(root.path().join("twice")).unwrap();
    assert_eq!(meta.mtime(), 2_000_000);
    assert_eq!(meta.mode() & 0o7777, 0o700);
}

/// An opaque whiteout listed after the directories this layer wrote under
/// it still hides what the lower layers had in them, at any depth, as
/// overlayfs does (containerd's applier walks the whole directory).
#[test]
fn an_opaque_whiteout_after_the_layers_own_entries_hides_the_lower_ones_at_any_depth() {
    let root = tempfile::tempdir().unwrap();
    let lower = tar_of(&[
        Entry::Dir("a", 0o755),
        Entry::Dir("a/b", 0o755),
        Entry::File("a/b/old", b"old", 0o644),
        Entry::File("a/c", b"c", 0o644),
    ]);
    apply_tree(root.path(), &lower).unwrap();
    let upper = tar_of(&[
        Entry::Dir("a", 0o755),
        Entry::Dir("a/b", 0o755),
        Entry::File("a/b/new", b"new", 0o644),
        Entry::File("a/.wh..wh..opq", b"", 0o644),
    ]);
    apply_tree(root.path(), &upper).unwrap();
    let t = tree(root.path());
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "a/b", "a/b/new"], "{t:?}");
}

/// A `user.*` xattr on a symlink is refused by the kernel even for root
/// (they go only on files and directories); containerd skips it with a
/// warning, and so does apply, where it used to fail the layer.
#[test]
fn a_user_xattr_on_a_symlink_is_skipped_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"v"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_path("link").unwrap();
    h.set_link_name("target").unwrap();
    h.set_size(0);
    h.set_mode(0o777);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
    let applied = apply_tree(root.path(), &b.into_inner().unwrap()).unwrap();
    assert_eq!(
        std::fs::read_link(root.path().join("link")).unwrap(),
        std::path::Path::new("target")
    );
    assert!(
        applied
            .warnings
            .iter()
            .any(|w| w.starts_with("1 extended attribute skipped")),
        "{:?}",
        applied.warnings
    );
}

fn apply_upper(
    upper: &std::path::Path,
    lower: &std::path::Path,
    layer: &[u8],
    options: &ApplyOptions,
) -> ocidist_snapshot::apply::Applied {
    let target = ApplyTarget::OverlayUpper {
        upper: upper.to_path_buf(),
        lowers: vec![lower.to_path_buf()],
    };
    apply_layer_sync(&target, Cursor::new(layer.to_vec()), None, options).unwrap()
}

fn is_opaque(dir: &std::path::Path) -> bool {
    let mut v = [0u8; 4];
    matches!(
        rustix::fs::lgetxattr(dir, ocidist_snapshot::overlay::opaque_xattr(), &mut v[..]),
        Ok(1) if v[0] == b'y'
    )
}

/// A layer that writes a file and then a directory of one name leaves an
/// empty directory on a tree; on an overlay upper that directory must be
/// opaque, or the lower layer's directory of that name shows through.
#[test]
fn a_directory_replacing_the_layers_own_file_hides_the_lower_directory() {
    let lower = tempfile::tempdir().unwrap();
    apply_tree(
        lower.path(),
        &tar_of(&[Entry::Dir("d", 0o755), Entry::File("d/old", b"old", 0o644)]),
    )
    .unwrap();
    let layer = tar_of(&[
        Entry::File("d", b"briefly a file", 0o644),
        Entry::Dir("d", 0o755),
        Entry::Symlink("e", "d"),
        Entry::Dir("e", 0o755),
    ]);
    let upper = tempfile::tempdir().unwrap();
    apply_upper(upper.path(), lower.path(), &layer, &ApplyOptions::default());
    assert!(is_opaque(&upper.path().join("d")), "a file replaced");
    assert!(is_opaque(&upper.path().join("e")), "a symlink replaced");

    // The same layer on a copy of the tree: the directory is empty.
    apply_tree(lower.path(), &layer).unwrap();
    assert!(!lower.path().join("d/old").exists());
}

/// An opaque whiteout spares what the layer wrote under parents it did not
/// list (`a/b` of `a/b/new`), as overlayfs does; only the lower's entries go.
#[test]
fn an_opaque_whiteout_spares_the_layers_files_under_unlisted_parents() {
    let root = tempfile::tempdir().unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::Dir("a", 0o755),
            Entry::Dir("a/b", 0o755),
            Entry::File("a/b/old", b"old", 0o644),
            Entry::File("a/c", b"c", 0o644),
        ]),
    )
    .unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::File("a/b/new", b"new", 0o644),
            Entry::File("a/.wh..wh..opq", b"", 0o644),
        ]),
    )
    .unwrap();
    let t = tree(root.path());
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "a/b", "a/b/new"], "{t:?}");
}

/// An opaque whiteout reached through a symlink spares what the layer wrote
/// in that directory under its own name, as containerd does (it notes
/// resolved paths); on a whole tree the lower's entries go, on an overlay
/// upper directory the opaque mark hides them.
#[test]
fn an_opaque_whiteout_through_a_symlink_spares_the_layers_own_files() {
    let lower = tempfile::tempdir().unwrap();
    let old = tar_of(&[
        Entry::Dir("real", 0o755),
        Entry::File("real/old", b"o", 0o644),
    ]);
    apply_tree(lower.path(), &old).unwrap();
    let layer = tar_of(&[
        Entry::File("real/new", b"n", 0o644),
        Entry::Dir("real/sub", 0o755),
        Entry::Symlink("link", "/real"),
        Entry::File("link/.wh..wh..opq", b"", 0o644),
    ]);
    let upper = tempfile::tempdir().unwrap();
    apply_upper(upper.path(), lower.path(), &layer, &ApplyOptions::default());
    let t = tree(upper.path());
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["link", "real", "real/new", "real/sub"], "{t:?}");
    assert!(is_opaque(&upper.path().join("real")));

    apply_tree(lower.path(), &layer).unwrap();
    let t = tree(lower.path());
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["link", "real", "real/new", "real/sub"], "{t:?}");
}

/// An entry whose parent is reached through the very symlink it replaces
/// (`a/l -> .`, then `a/l/l`, that is `a/l`) is made where its parent was
/// found, as containerd resolves the parent once: not in a directory made
/// anew under the old name. Its metadata goes on it, and an opaque whiteout
/// spares it as the layer's own.
#[test]
fn an_entry_replacing_the_symlink_its_parent_went_through_is_made_where_the_parent_was() {
    for (last, expected) in [
        (Entry::Link("a/l/l", "a/t"), "file:t 644 0:0"),
        (Entry::Dir("a/l/l", 0o750), "dir 750 0:0"),
        (Entry::Symlink("a/l/l", "t"), "symlink->t 777 0:0"),
    ] {
        let root = tempfile::tempdir().unwrap();
        apply_tree(
            root.path(),
            &tar_of(&[
                Entry::Dir("a", 0o755),
                Entry::File("a/t", b"t", 0o644),
                Entry::Symlink("a/l", "."),
                last,
                Entry::File("a/.wh..wh..opq", b"", 0o644),
            ]),
        )
        .unwrap();
        let t = tree(root.path());
        let names: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(names, ["a", "a/l", "a/t"], "{t:?}");
        assert_eq!(t["a/l"], expected, "{t:?}");
    }
}

/// An opaque whiteout in a symlink to `/` hides the whole lower on an
/// overlay upper directory: overlayfs ignores the opaque mark on the upper
/// root itself, so each lower name there is hidden instead.
#[test]
fn an_opaque_whiteout_through_a_symlink_to_the_root_hides_the_lower_root() {
    let lower = tempfile::tempdir().unwrap();
    apply_tree(
        lower.path(),
        &tar_of(&[Entry::File("x", b"x", 0o644), Entry::Dir("d", 0o755)]),
    )
    .unwrap();
    let upper = tempfile::tempdir().unwrap();
    apply_upper(
        upper.path(),
        lower.path(),
        &tar_of(&[
            Entry::Symlink("l", "/"),
            Entry::File("l/.wh..wh..opq", b"", 0o644),
        ]),
        &ApplyOptions::default(),
    );
    let t = tree(upper.path());
    assert_eq!(t["x"], "char:0 0 0:0", "{t:?}");
    assert_eq!(t["d"], "char:0 0 0:0", "{t:?}");
    assert!(t["l"].starts_with("symlink->"), "{t:?}");
}

/// A directory the layer listed and then replaced with a symlink does not
/// pass its mode on to where the symlink points.
#[test]
fn a_directory_replaced_by_a_symlink_leaves_the_symlinks_target_alone() {
    let root = tempfile::tempdir().unwrap();
    let options = ApplyOptions {
        privileged: false,
        ..ApplyOptions::default()
    };
    apply_layer_sync(
        &ApplyTarget::Tree(root.path().to_path_buf()),
        Cursor::new(tar_of(&[
            Entry::Dir("a", 0o700),
            Entry::Dir("b", 0o755),
            Entry::Symlink("a", "b"),
        ])),
        None,
        &options,
    )
    .unwrap();
    let b = std::fs::symlink_metadata(root.path().join("b")).unwrap();
    assert_eq!(b.mode() & 0o7777, 0o755);
    assert!(
        std::fs::symlink_metadata(root.path().join("a"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A directory a layer lists through a symlink a lower layer made (`lib`
/// -> `usr/lib`, as merged-/usr images have) still gets its times at the end.
#[test]
fn a_directory_listed_through_a_symlink_gets_its_times() {
    let root = tempfile::tempdir().unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::Dir("usr/lib", 0o755),
            Entry::Symlink("lib", "usr/lib"),
        ]),
    )
    .unwrap();
    apply_tree(
        root.path(),
        &tar_of(&[
            Entry::Dir("lib/x86_64", 0o755),
            Entry::File("lib/x86_64/libz.so", b"z", 0o644),
        ]),
    )
    .unwrap();
    let dir = std::fs::metadata(root.path().join("usr/lib/x86_64")).unwrap();
    assert_eq!(dir.mtime(), 1_700_000_000, "the layer's time, not now");
}

/// A parent made on an upper directory copies its mode from the lower
/// layer, resolving the lower's symlinks inside the lower, never on the host.
#[test]
fn a_parents_metadata_never_comes_from_the_host() {
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("x")).unwrap();
    std::fs::set_permissions(
        host.path().join("x"),
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    )
    .unwrap();
    let lower = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(host.path(), lower.path().join("a")).unwrap();
    let upper = tempfile::tempdir().unwrap();
    apply_upper(
        upper.path(),
        lower.path(),
        &tar_of(&[Entry::File("a/x/f", b"f", 0o644)]),
        &ApplyOptions::default(),
    );
    let x = std::fs::metadata(upper.path().join("a/x")).unwrap();
    assert_eq!(x.mode() & 0o7777, 0o755, "the host's 0711 was copied");
}

/// overlayfs's own xattrs in a layer (a redirect, an opaque mark) would
/// steer the mount away from what the layers say, and `trusted.*` is the
/// host administrator's (containerd refuses it from archives): never applied.
#[test]
fn overlay_xattrs_in_a_layer_are_not_applied() {
    let lower = tempfile::tempdir().unwrap();
    let upper = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("SCHILY.xattr.trusted.overlay.redirect", &b"/elsewhere"[..]),
        ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.trusted.admin", &b"x"[..]),
        ("SCHILY.xattr.user.kept", &b"v"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "srv", &[][..]).unwrap();
    let applied = apply_upper(
        upper.path(),
        lower.path(),
        &b.into_inner().unwrap(),
        &ApplyOptions {
            // The opaque mark this test looks for is the one a layer cannot set.
            opaque_xattr: "trusted.overlay.opaque".into(),
            ..ApplyOptions::default()
        },
    );
    let srv = upper.path().join("srv");
    let mut v = [0u8; 16];
    for key in [
        "trusted.overlay.redirect",
        "user.overlay.opaque",
        "trusted.admin",
    ] {
        assert!(
            rustix::fs::lgetxattr(&srv, key, &mut v[..]).is_err(),
            "{key} was applied"
        );
    }
    assert_eq!(
        rustix::fs::lgetxattr(&srv, "user.kept", &mut v[..]).unwrap(),
        1
    );
    assert!(
        applied
            .warnings
            .iter()
            .any(|w| w.starts_with("3 extended attributes in the layer not applied: trusted.*")),
        "{:?}",
        applied.warnings
    );
}

/// Without root a whiteout is still made (Linux lets anyone make the 0/0
/// character device), where it used to be skipped like a device node and
/// the deleted file came back.
#[test]
fn whiteouts_are_made_without_root_too() {
    let lower = tempfile::tempdir().unwrap();
    apply_tree(lower.path(), &tar_of(&[Entry::File("srv/a", b"a", 0o644)])).unwrap();
    let upper = tempfile::tempdir().unwrap();
    apply_upper(
        upper.path(),
        lower.path(),
        &tar_of(&[Entry::File("srv/.wh.a", b"", 0o644)]),
        &ApplyOptions {
            privileged: false,
            ..ApplyOptions::default()
        },
    );
    let a = std::fs::symlink_metadata(upper.path().join("srv/a")).unwrap();
    assert!(a.file_type().is_char_device() && a.rdev() == 0);
}

/// At the end of a layer, whiteouts that hide nothing are dropped from an
/// overlay upper directory. One found through a symlink the layer put where
/// a directory was is another whiteout, and still hides a lower file.
#[test]
fn a_whiteout_reached_through_a_later_symlink_is_not_dropped() {
    let lower = tempfile::tempdir().unwrap();
    apply_tree(
        lower.path(),
        &tar_of(&[
            Entry::File("x/n", b"x", 0o644),
            Entry::File("y/n", b"y", 0o644),
        ]),
    )
    .unwrap();
    let upper = tempfile::tempdir().unwrap();
    apply_upper(
        upper.path(),
        lower.path(),
        &tar_of(&[
            Entry::File("x/.wh.n", b"", 0o644),
            Entry::File("y/.wh.n", b"", 0o644),
            Entry::Symlink("x", "y"),
        ]),
        &ApplyOptions::default(),
    );
    let t = tree(upper.path());
    assert_eq!(t["y/n"], "char:0 0 0:0", "{t:?}");
    assert_eq!(t["x"], "symlink->y 777 0:0", "{t:?}");
}

/// A PAX sparse entry of GNU's format 1.0, as GNU tar writes one: records
/// for the real name and size (and `extra` ones), the header's name
/// `GNUSparseFile.0/NAME`, its data the `map` (a count, then an offset and a
/// length for each region, one number a line) padded to a block, then the
/// regions' data packed.
fn pax_sparse_1_0(
    name: &str,
    real_size: &str,
    extra: &[(&str, &[u8])],
    kind: tar::EntryType,
    map: &str,
    packed: &[u8],
) -> Vec<u8> {
    let mut records = vec![
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", &b"0"[..]),
        ("GNU.sparse.name", name.as_bytes()),
        ("GNU.sparse.realsize", real_size.as_bytes()),
    ];
    records.extend_from_slice(extra);
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions(records).unwrap();
    let mut data = map.as_bytes().to_vec();
    data.resize(data.len().next_multiple_of(512), 0);
    data.extend_from_slice(packed);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_path(format!("GNUSparseFile.0/{name}")).unwrap();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &data[..]).unwrap();
    b.into_inner().unwrap()
}

/// A PAX sparse file (GNU 1.0) is written under its real name, each region
/// where the map puts it and holes between, as Go's reader (containerd's)
/// reads it; an unknown version is a plain file, as Go leaves it.
#[test]
fn pax_sparse_files_are_written_with_their_holes() {
    let root = tempfile::tempdir().unwrap();
    let regular = tar::EntryType::Regular;
    let layer = pax_sparse_1_0(
        "sparse",
        "1048576",
        &[],
        regular,
        "2\n0\n3\n1048570\n3\n",
        b"abcXYZ",
    );
    apply_tree(root.path(), &layer).unwrap();
    let file = root.path().join("sparse");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    assert_eq!(&bytes[..3], b"abc");
    assert_eq!(&bytes[1048570..1048573], b"XYZ");
    let zeros = bytes.iter().filter(|b| **b == 0).count();
    assert_eq!(zeros, (1 << 20) - 6);
    let blocks = std::fs::metadata(&file).unwrap().blocks();
    assert!(blocks * 512 < 256 << 10, "holes kept: {blocks} blocks");
    assert!(!root.path().join("GNUSparseFile.0").exists());

    // An empty name is none, as in Go: the header's name stands.
    let unnamed = [("GNU.sparse.name", &b""[..])];
    let layer = pax_sparse_1_0("sparse", "9", &unnamed, regular, "1\n0\n3\n", b"abc");
    let root = tempfile::tempdir().unwrap();
    apply_tree(root.path(), &layer).unwrap();
    let unnamed = std::fs::read(root.path().join("GNUSparseFile.0/sparse")).unwrap();
    assert_eq!(unnamed, b"abc\0\0\0\0\0\0");

    let version_2 = [("GNU.sparse.major", &b"2"[..])];
    let layer = pax_sparse_1_0("plain", "9", &version_2, regular, "1\n0\n3\n", b"abc");
    let root = tempfile::tempdir().unwrap();
    apply_tree(root.path(), &layer).unwrap();
    let plain = std::fs::read(root.path().join("GNUSparseFile.0/plain")).unwrap();
    assert_eq!(plain.len(), 515, "the map and the data, as they stand");
    assert!(!root.path().join("plain").exists());
}

/// A PAX sparse map that does not fit its file or its data is refused as
/// the layer's fault before anything at its name is touched; one past the
/// layer's bound of sparse files (64 GiB, holes included) is refused too,
/// and so are sparse records on an entry that has no data.
#[test]
fn pax_sparse_maps_that_do_not_fit_are_refused_and_nothing_is_lost() {
    let regular = tar::EntryType::Regular;
    for (real_size, map, packed, says) in [
        (
            "12",
            "1\n10\n5\n",
            &b"12345"[..],
            "ends past its size, 12 bytes",
        ),
        (
            "12",
            "1\n0\n3\n",
            b"abcdef",
            "places 3 bytes, its data holds 6",
        ),
        (
            "12",
            "1\n0\n9\n",
            b"abc",
            "places 9 bytes, its data holds 3",
        ),
        (
            "12",
            "2\n0\n4\n2\n2\n",
            b"abcdef",
            "starts before the one before it ends",
        ),
        ("12", "1000\n0\n1\n", b"a", "ends inside its map"),
        ("1x", "1\n0\n1\n", b"a", "real size \"1x\" is no size"),
        ("1099511627776", "1\n0\n1\n", b"a", "over the 64 GiB"),
    ] {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("sparse"), b"before").unwrap();
        let layer = pax_sparse_1_0("sparse", real_size, &[], regular, map, packed);
        let err = apply_tree(root.path(), &layer).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains(says), "{map:?}: {err}");
        let kept = std::fs::read(root.path().join("sparse")).unwrap();
        assert_eq!(kept, b"before", "{map:?}");
    }
    let root = tempfile::tempdir().unwrap();
    let link = pax_sparse_1_0(
        "link",
        "3",
        &[],
        tar::EntryType::Symlink,
        "1\n0\n3\n",
        b"abc",
    );
    assert_refused(root.path(), &link, "PAX sparse records on a Symlink entry");
}

/// Layers one after another as one layer: each without its end blocks, but
/// the last.
fn one_after_another(layers: &[Vec<u8>]) -> Vec<u8> {
    let mut joined = Vec::new();
    for layer in layers {
        joined.truncate(joined.len().saturating_sub(1024));
        joined.extend_from_slice(layer);
    }
    joined
}

/// A PAX sparse whiteout whose map does not add up to its data still whites
/// out, as in containerd: Go finds the mismatch only as it reads the data,
/// and a whiteout's is never read. Nor does its real size count toward the
/// layer's bound of sparse files. A map out of order is refused even there,
/// as Go refuses it with the header.
#[test]
fn a_pax_sparse_whiteout_whites_out_whatever_its_data_holds() {
    let regular = tar::EntryType::Regular;
    let root = tempfile::tempdir().unwrap();
    for name in ["foo", "bar", "kept"] {
        std::fs::write(root.path().join(name), b"before").unwrap();
    }
    let layer = one_after_another(&[
        pax_sparse_1_0(".wh.foo", "12", &[], regular, "1\n0\n3\n", b"abcdef"),
        pax_sparse_1_0(".wh.bar", "1099511627776", &[], regular, "1\n0\n1\n", b"a"),
    ]);
    apply_tree(root.path(), &layer).unwrap();
    assert!(!root.path().join("foo").exists());
    assert!(!root.path().join("bar").exists());
    assert_eq!(std::fs::read(root.path().join("kept")).unwrap(), b"before");

    let out_of_order = "2\n0\n4\n2\n2\n";
    let layer = pax_sparse_1_0(".wh.kept", "12", &[], regular, out_of_order, b"abcdef");
    assert_refused(root.path(), &layer, "starts before the one before it ends");
    assert_eq!(std::fs::read(root.path().join("kept")).unwrap(), b"before");
}

/// 0.0 sparse records out of order are refused in any header, as Go's
/// reader refuses them: before a GNU sparse ('S') entry too, whose map is
/// its own and which they would not describe.
#[test]
fn sparse_records_out_of_order_are_refused_before_a_gnu_sparse_entry() {
    let records_then_sparse = |records: &[(&str, &[u8])]| {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions(records.iter().copied()).unwrap();
        one_after_another(&[b.into_inner().unwrap(), sparse_files(&[("holes", 4096)])])
    };
    let root = tempfile::tempdir().unwrap();
    let layer = records_then_sparse(&[("GNU.sparse.numbytes", b"1")]);
    assert_refused(
        root.path(),
        &layer,
        "GNU.sparse.numbytes where GNU.sparse.offset was due",
    );
    assert!(!root.path().join("holes").exists());
    // In order, they are ignored: the entry's own map places its data.
    let in_order = [
        ("GNU.sparse.offset", &b"0"[..]),
        ("GNU.sparse.numbytes", b"9"),
    ];
    apply_tree(root.path(), &records_then_sparse(&in_order)).unwrap();
    let holes = std::fs::read(root.path().join("holes")).unwrap();
    assert_eq!((holes.len(), holes[4095]), (4096, b'z'));
}

/// A layer cut inside a PAX sparse file's data says how far into all of
/// the entry's data (1.0's map included) it got; an error in the header
/// after one names the file by its real name, not GNU tar's header name.
#[test]
fn a_layer_cut_in_or_after_a_pax_sparse_file_names_it_and_says_where() {
    let regular = tar::EntryType::Regular;
    let map = "2\n0\n3\n100\n3\n";
    let layer = pax_sparse_1_0("real", "200", &[], regular, map, b"abcXYZ");
    // The data (a 512-byte map, then 6 bytes) padded to 1,024, then the end.
    let data_at = layer.len() - 2048;
    let root = tempfile::tempdir().unwrap();
    assert_refused(
        root.path(),
        &layer[..data_at + 512 + 4],
        r#"entry "real": the layer ends 516 bytes into its 518 bytes of data"#,
    );
    let next = tar_of(&[Entry::File("next", b"n", 0o644)]);
    let layer = one_after_another(&[layer, next]);
    let root = tempfile::tempdir().unwrap();
    assert_refused(
        root.path(),
        &layer[..data_at + 1024 + 100],
        r#"(after entry "real")"#,
    );
}

/// PAX records that frame or name an entry (`size`, `path`, `linkpath`)
/// given twice with different values, a size that is none, or an empty
/// name are refused: tar readers differ on them (the `tar` crate takes the
/// first record, Go's reader the last), and one layer would be two trees.
#[test]
fn pax_records_readers_differ_on_are_refused() {
    for (records, says) in [
        (
            &[("size", &b"0"[..]), ("size", b"512")][..],
            "PAX size \"512\" is given twice",
        ),
        (
            &[("path", &b"a"[..]), ("path", b"b")][..],
            "PAX path \"b\" is given twice",
        ),
        (&[("size", &b"-1"[..])][..], "PAX size \"-1\" is not one"),
        (&[("path", &b""[..])][..], "PAX path \"\" is not one"),
    ] {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions(records.iter().copied()).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("h").unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let mut after = tar::Header::new_ustar();
        after.set_entry_type(tar::EntryType::Regular);
        after.set_path("after").unwrap();
        after.set_size(3);
        after.set_mode(0o644);
        after.set_cksum();
        b.append(&after, &b"abc"[..]).unwrap();
        let root = tempfile::tempdir().unwrap();
        assert_refused(root.path(), &b.into_inner().unwrap(), says);
    }
    // The same record twice, alike, is one record.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", &b"same"[..]), ("path", b"same")])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("h").unwrap();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"ok"[..]).unwrap();
    let root = tempfile::tempdir().unwrap();
    apply_tree(root.path(), &b.into_inner().unwrap()).unwrap();
    assert_eq!(std::fs::read(root.path().join("same")).unwrap(), b"ok");
}

/// Sparse files GNU tar writes in each of its PAX formats (0.0, 0.1, 1.0)
/// apply byte for byte, with their names, modes and holes.
#[test]
fn sparse_files_gnu_tar_writes_apply_byte_for_byte() {
    let source = tempfile::tempdir().unwrap();
    let dir = source.path().join("d");
    std::fs::create_dir(&dir).unwrap();
    let original = dir.join("f");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::create(&original).unwrap();
        file.set_len(3 << 20).unwrap();
        file.write_all_at(&[7u8; 5000], 1 << 20).unwrap();
        file.write_all_at(b"tail", (3 << 20) - 4).unwrap();
    }
    std::fs::set_permissions(
        &original,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let expected = std::fs::read(&original).unwrap();
    for version in ["0.0", "0.1", "1.0"] {
        let out = std::process::Command::new("tar")
            .args(["--sparse", "--format=posix", "--sparse-version", version])
            .arg("-C")
            .arg(source.path())
            .args(["-cf", "-", "d/f"])
            .output()
            .unwrap_or_else(|e| panic!("GNU tar (Debian package `tar`) is needed: {e}"));
        assert!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let layer = out.stdout;
        assert!(
            layer.windows(11).any(|w| w == b"GNU.sparse."),
            "tar {version} wrote no sparse file"
        );
        let root = tempfile::tempdir().unwrap();
        apply_tree(root.path(), &layer).unwrap_or_else(|e| panic!("{version}: {e}"));
        let applied = root.path().join("d/f");
        assert_eq!(std::fs::read(&applied).unwrap(), expected, "{version}");
        let meta = std::fs::metadata(&applied).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640, "{version}");
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{version}: {} blocks",
            meta.blocks()
        );
        let names: Vec<_> = std::fs::read_dir(root.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"], "{version}");
    }
}

/// A PAX global header whose name has `..` names nothing, and is skipped
/// as containerd does.
#[test]
fn global_header_names_are_ignored() {
    let root = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut global = tar::Header::new_ustar();
    global.set_entry_type(tar::EntryType::XGlobalHeader);
    // Written by hand: the builder refuses `..` in names.
    let name = b"../pax_global_header";
    global.as_old_mut().name[..name.len()].copy_from_slice(name);
    let record = b"13 comment=x\n";
    global.set_size(record.len() as u64);
    global.set_cksum();
    b.append(&global, &record[..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path("kept").unwrap();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"ok"[..]).unwrap();
    apply_tree(root.path(), &b.into_inner().unwrap()).unwrap();
    assert_eq!(std::fs::read(root.path().join("kept")).unwrap(), b"ok");
}

/// A sparse file of 1 GiB with 3 bytes of data.
fn sparse_file(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).unwrap();
    file.set_len(1 << 30).unwrap();
    file.write_all_at(b"END", (1 << 30) - 3).unwrap();
}

fn assert_sparse_copy(path: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let meta = std::fs::metadata(path).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "{} keeps its holes: {} bytes on disk",
        path.display(),
        meta.blocks() * 512
    );
    let mut end = [0; 3];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut end, (1 << 30) - 3)
        .unwrap();
    assert_eq!(&end, b"END");
}

/// A sparse lower file copied up into an upper directory (a hardlink to it
/// in a later layer) keeps its holes, as overlayfs's own copy-up does; and
/// so does a copy of a tree (a native prepare, `rootfs --copy`).
#[test]
fn copies_keep_a_sparse_files_holes() {
    let lower = tempfile::tempdir().unwrap();
    sparse_file(&lower.path().join("big"));
    let upper = tempfile::tempdir().unwrap();
    let target = ApplyTarget::OverlayUpper {
        upper: upper.path().to_path_buf(),
        lowers: vec![lower.path().to_path_buf()],
    };
    let layer = tar_of(&[Entry::Link("link", "big")]);
    apply_layer_sync(&target, Cursor::new(layer), None, &ApplyOptions::default()).unwrap();
    assert_sparse_copy(&upper.path().join("big"));

    let copy = tempfile::tempdir().unwrap();
    ocidist_snapshot::copy_tree(lower.path(), copy.path()).unwrap();
    assert_sparse_copy(&copy.path().join("big"));
}

/// A one-byte file `f` after a PAX header of the records `records`.
fn pax_file(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions(records.iter().copied()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "f", &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

/// A PAX owner or time that does not parse, or an owner no file can have,
/// is refused with the entry's name: skipped, the header's value (root,
/// say) would stand in for it; cut to 32 bits, 2³² would be root. The
/// highest owner there is applies.
#[test]
fn pax_owners_and_times_that_name_none_are_refused() {
    let refused: [(&str, &[u8], &str); 7] = [
        (
            "uid",
            b"4294967296",
            r#"entry "f": uid 4294967296 is no owner (0 to 4294967294)"#,
        ),
        (
            "gid",
            b"4294967295",
            r#"entry "f": gid 4294967295 is no owner"#,
        ),
        ("uid", b"-1", r#"entry "f": PAX uid "-1" is no owner"#),
        ("gid", b"x", r#"entry "f": PAX gid "x" is no owner"#),
        (
            "mtime",
            b"99999999999999999999",
            r#"PAX mtime "99999999999999999999" is no time"#,
        ),
        ("atime", b"1e9", r#"entry "f": PAX atime "1e9" is no time"#),
        ("mtime", b"", r#"entry "f": PAX mtime "" is no time"#),
    ];
    for (key, value, says) in refused {
        let root = tempfile::tempdir().unwrap();
        assert_refused(root.path(), &pax_file(&[(key, value)]), says);
        assert!(!root.path().join("f").exists(), "{key}={value:?}");
    }
    let root = tempfile::tempdir().unwrap();
    let layer = pax_file(&[("uid", b"4294967294"), ("gid", b"+7"), ("mtime", b"-1.5")]);
    apply_tree(root.path(), &layer).unwrap();
    let f = std::fs::symlink_metadata(root.path().join("f")).unwrap();
    assert_eq!((f.uid(), f.gid()), (4294967294, 7));
    assert_eq!((f.mtime(), f.mtime_nsec()), (-2, 500_000_000));
}

/// A time before 1970 in a GNU header (base-256, signed), as `tar -cf`
/// writes a file dated 1965, is that time.
#[test]
fn a_gnu_time_before_1970_is_applied() {
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_path("old").unwrap();
    let mut mtime = [0xff; 12];
    mtime[8..].copy_from_slice(&(-144_720_000i32).to_be_bytes());
    h.as_old_mut().mtime = mtime;
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.push(b'x');
    layer.resize(2048, 0);
    let root = tempfile::tempdir().unwrap();
    apply_tree(root.path(), &layer).unwrap();
    let old = std::fs::symlink_metadata(root.path().join("old")).unwrap();
    assert_eq!(old.mtime(), -144_720_000);
}

/// Bytes after a compressed stream's end are refused as what they are,
/// past the archive's end, and not blamed on the last entry (whose data the
/// decompressing thread held back with the error).
#[test]
fn bytes_after_the_compressed_stream_are_refused_past_the_archive() {
    let big = vec![7u8; 600 << 10];
    let mut layer = gzip(&tar_of(&[Entry::File("big", &big, 0o644)]));
    layer.extend_from_slice(b"GARBAGE");
    let root = tempfile::tempdir().unwrap();
    let message = assert_refused(root.path(), &layer, "read past the tar archive's end");
    assert!(!message.contains("big"), "{message}");
}

/// A legacy entry of type NUL whose name ends in a slash is a directory,
/// with its own mode, as Go's archive/tar and GNU tar read it; without the
/// slash it is a file.
#[test]
fn a_legacy_entry_named_with_a_slash_is_a_directory() {
    let mut layer = Vec::new();
    for (name, mode) in [("d/", 0o750), ("d/f", 0o640)] {
        let mut h = tar::Header::new_old();
        h.set_path(name).unwrap();
        h.set_size(0);
        h.set_mode(mode);
        h.as_old_mut().linkflag = [0];
        h.set_cksum();
        layer.extend_from_slice(h.as_bytes());
    }
    layer.resize(layer.len() + 1024, 0);
    let root = tempfile::tempdir().unwrap();
    apply_tree(root.path(), &layer).unwrap();
    let d = std::fs::symlink_metadata(root.path().join("d")).unwrap();
    assert!(d.is_dir());
    assert_eq!(d.mode() & 0o7777, 0o750);
    let f = std::fs::symlink_metadata(root.path().join("d/f")).unwrap();
    assert!(f.is_file());
    assert_eq!(f.mode() & 0o7777, 0o640);
}

/// The legacy directory rule is judged on the header's name, before a PAX
/// sparse (0.1) name replaces it, as Go reads it: a sparse header named
/// `d/` is a directory, and sparse records on one are refused; a sparse
/// file named `d/` by its records is the file `d`.
#[test]
fn the_legacy_directory_rule_is_judged_on_the_headers_name_not_the_sparse_one() {
    let legacy_sparse = |header_name: &str, sparse_name: &str| {
        let mut b = tar::Builder::new(Vec::new());
        let records = [
            ("GNU.sparse.major", &b"0"[..]),
            ("GNU.sparse.minor", b"1"),
            ("GNU.sparse.name", sparse_name.as_bytes()),
            ("GNU.sparse.size", b"10"),
            ("GNU.sparse.numblocks", b"1"),
            ("GNU.sparse.map", b"7,3"),
        ];
        b.append_pax_extensions(records).unwrap();
        let mut h = tar::Header::new_old();
        h.set_path(header_name).unwrap();
        h.set_size(3);
        h.set_mode(0o644);
        h.as_old_mut().linkflag = [0];
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let root = tempfile::tempdir().unwrap();
    let layer = legacy_sparse("d/", "f");
    assert_refused(
        root.path(),
        &layer,
        "PAX sparse records on a Directory entry",
    );
    assert!(!root.path().join("f").exists());

    let root = tempfile::tempdir().unwrap();
    apply_tree(root.path(), &legacy_sparse("x", "d/")).unwrap();
    let d = root.path().join("d");
    assert!(std::fs::symlink_metadata(&d).unwrap().is_file());
    assert_eq!(std::fs::read(&d).unwrap(), b"\0\0\0\0\0\0\0abc");
}

/// A header's owner in base-256 past 32 bits is refused, not cut to root.
#[test]
fn a_header_owner_past_32_bits_is_refused() {
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_path("big").unwrap();
    // GNU's base-256 form: the high bit set, then the number, big-endian.
    h.as_old_mut().uid = [0x80, 0, 0, 1, 0, 0, 0, 0];
    h.set_cksum();
    let mut layer = h.as_bytes().to_vec();
    layer.push(b'x');
    layer.resize(2048, 0);
    let root = tempfile::tempdir().unwrap();
    assert_refused(
        root.path(),
        &layer,
        r#"entry "big": uid 4294967296 is no owner"#,
    );
}

/// A NUL byte in a PAX name or link target is the layer's error, naming
/// the entry, not the kernel's EINVAL naming the store.
#[test]
fn a_nul_in_a_name_or_link_target_is_the_layers_error() {
    let root = tempfile::tempdir().unwrap();
    let message = assert_refused(
        root.path(),
        &pax_file(&[("path", b"a\0b")]),
        r#"entry "a\0b": a NUL byte in its name"#,
    );
    assert!(
        !message.contains(&*root.path().to_string_lossy()),
        "{message}"
    );
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("linkpath", &b"t\0u"[..])])
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "l", "ignored").unwrap();
    assert_refused(
        root.path(),
        &b.into_inner().unwrap(),
        r#"entry "l": a NUL byte in its link target"#,
    );
}

/// A layer cut inside an entry's data says which entry and how far it got;
/// one cut inside a header names the entry before it.
#[test]
fn a_layer_cut_short_names_the_entry_it_ends_in() {
    let layer = tar_of(&[
        Entry::File("a", &[7u8; 100_000], 0o644),
        Entry::File("b", b"b", 0o644),
    ]);
    let root = tempfile::tempdir().unwrap();
    assert_refused(
        root.path(),
        &layer[..50_000],
        r#"entry "a": the layer ends 49488 bytes into its 100000 bytes of data"#,
    );
    let root = tempfile::tempdir().unwrap();
    // Into b's header, after a's data and padding (100,000 bytes padded to
    // 196 blocks): the next header cannot be read.
    assert_refused(
        root.path(),
        &layer[..512 + 196 * 512 + 100],
        r#"(after entry "a")"#,
    );
}

/// A tar that ends right after an entry's data, or inside its padding,
/// without the end blocks, is read as Go's `archive/tar` reads it
/// (containerd's, umoci's): a tar that ends there. Debian's umoci 0.4.7
/// writes such layers. Its diff ID is the digest of the bytes given.
#[test]
fn a_tar_that_ends_in_the_padding_after_an_entry_ends_there() {
    let layer = tar_of(&[
        Entry::File("a", &[7u8; 1000], 0o644),
        Entry::File("b", b"hi\n", 0o600),
    ]);
    // b's data follows a's header, a's 1000 bytes padded to 1024, and b's header.
    let b_data = 512 + 1024 + 512;
    for cut in [b_data + 3, b_data + 4, b_data + 511] {
        let given = &layer[..cut];
        let root = tempfile::tempdir().unwrap();
        let applied = apply_tree(root.path(), given).unwrap();
        assert_eq!(applied.diff_id, sha256_of(given), "cut at {cut}");
        assert_eq!(applied.entries, 2, "cut at {cut}");
        assert_eq!(std::fs::read(root.path().join("b")).unwrap(), b"hi\n");
        assert_eq!(std::fs::read(root.path().join("a")).unwrap(), [7u8; 1000]);
        // The same, gzipped, as a registry serves it.
        let root = tempfile::tempdir().unwrap();
        let applied = apply_tree(root.path(), &gzip(given)).unwrap();
        assert_eq!(applied.diff_id, sha256_of(given), "cut at {cut}, gzipped");
    }
    // One byte short of b's data is b cut short, not a tar that ends.
    let root = tempfile::tempdir().unwrap();
    assert_refused(
        root.path(),
        &layer[..b_data + 2],
        r#"entry "b": the layer ends 2 bytes into its 3 bytes of data"#,
    );
}
