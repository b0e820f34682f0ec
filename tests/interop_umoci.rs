//! Interop with real tools: an image built by `umoci` (several layers with
//! deletions, a recreated directory, hardlinks, setuid files, xattrs, devices)
//! is pushed by `skopeo` to the real registry, pulled and unpacked by `dist`,
//! and the tree must equal `umoci unpack`'s, for both snapshotters.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{dist, run_tool};
use ocidist::remotes::testkit::Registry;

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {name} on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; mknod has no other preconditions.
    let rc = unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
}

/// One line per entry: what `../shared/peers/rootfs-manifest.py` compares
/// (type, mode, owner, size and content hash, link target, device, xattrs,
/// hardlink group, mtime).
fn manifest(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_of_inode: BTreeMap<u64, String> = BTreeMap::new();
    let mut paths = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    for path in &paths {
        let m = std::fs::symlink_metadata(path).unwrap();
        if m.is_file() && m.nlink() > 1 {
            first_of_inode
                .entry(m.ino())
                .or_insert_with(|| path.strip_prefix(root).unwrap().display().to_string());
        }
    }
    for path in &paths {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let m = std::fs::symlink_metadata(path).unwrap();
        let ft = m.file_type();
        let mut line = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!(
                "symlink target={}",
                std::fs::read_link(path).unwrap().display()
            )
        } else if ft.is_file() {
            let data = std::fs::read(path).unwrap();
            format!(
                "file size={} sha256={}",
                data.len(),
                ocidist::content::sha256_of(&data)
            )
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() { "char" } else { "block" };
            format!(
                "{kind} rdev={}:{}",
                libc::major(m.rdev()),
                libc::minor(m.rdev())
            )
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            "other".into()
        };
        if !ft.is_symlink() {
            line += &format!(" mode={:o}", m.mode() & 0o7777);
        }
        line += &format!(" uid={} gid={}", m.uid(), m.gid());
        if ft.is_file() && m.nlink() > 1 {
            line += &format!(" hardlink={}", first_of_inode[&m.ino()]);
        }
        if !ft.is_dir() {
            line += &format!(" mtime={}", m.mtime());
        }
        let mut names: Vec<u8> = vec![0; 4096];
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path and buffer.
        let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n > 0 {
            let mut xattrs: Vec<String> = Vec::new();
            for name in names[..n as usize]
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
            {
                let cname = CString::new(name).unwrap();
                let mut value = vec![0u8; 4096];
                // SAFETY: valid strings and buffer.
                let len = unsafe {
                    libc::lgetxattr(
                        p.as_ptr(),
                        cname.as_ptr(),
                        value.as_mut_ptr().cast(),
                        value.len(),
                    )
                };
                let hex: String = value[..len.max(0) as usize]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                xattrs.push(format!("{}={hex}", String::from_utf8_lossy(name)));
            }
            xattrs.sort();
            line += &format!(" xattrs={}", xattrs.join(","));
        }
        out.insert(rel, line);
    }
    out
}

/// Builds `layout:img` with umoci: three layers of the changes real images make.
fn build_with_umoci(work: &Path) -> String {
    let layout = work.join("layout");
    let image = format!("{}:img", layout.display());
    let bundle = work.join("bundle");
    let rootfs = bundle.join("rootfs");
    let b = bundle.to_str().unwrap();
    run_tool("umoci", &["init", "--layout", layout.to_str().unwrap()]);
    run_tool("umoci", &["new", "--image", &image]);

    run_tool("umoci", &["unpack", "--image", &image, b]);
    for dir in [
        "etc/apt/conf.d",
        "usr/bin",
        "usr/share/doc/bash",
        "dev",
        "srv/data",
        "tmp",
        "var/spool",
    ] {
        std::fs::create_dir_all(rootfs.join(dir)).unwrap();
    }
    std::fs::write(rootfs.join("etc/issue"), "Debian 12\n").unwrap();
    std::fs::write(rootfs.join("etc/issue.net"), "Debian 12 net\n").unwrap();
    std::fs::write(rootfs.join("etc/apt/conf.d/01old"), "old\n").unwrap();
    std::fs::write(rootfs.join("etc/apt/conf.d/02old"), "old2\n").unwrap();
    std::fs::write(rootfs.join("usr/share/doc/bash/README"), "bash docs\n").unwrap();
    std::fs::write(rootfs.join("usr/bin/gzip"), vec![7u8; 50_000]).unwrap();
    std::fs::hard_link(rootfs.join("usr/bin/gzip"), rootfs.join("usr/bin/gunzip")).unwrap();
    std::fs::hard_link(
        rootfs.join("usr/bin/gzip"),
        rootfs.join("usr/bin/uncompress"),
    )
    .unwrap();
    std::fs::write(rootfs.join("usr/bin/passwd"), "suid\n").unwrap();
    chmod(&rootfs.join("usr/bin/passwd"), 0o4755);
    std::fs::write(rootfs.join("usr/bin/wall"), "sgid\n").unwrap();
    chown(&rootfs.join("usr/bin/wall"), 0, 5);
    chmod(&rootfs.join("usr/bin/wall"), 0o2755);
    chmod(&rootfs.join("tmp"), 0o1777);
    mknod(&rootfs.join("dev/null"), libc::S_IFCHR | 0o666, 1, 3);
    mknod(&rootfs.join("dev/loop0"), libc::S_IFBLK | 0o660, 7, 0);
    mknod(&rootfs.join("var/spool/pipe"), libc::S_IFIFO | 0o644, 0, 0);
    std::fs::write(rootfs.join("srv/data/owned"), "mine\n").unwrap();
    chown(&rootfs.join("srv/data/owned"), 1000, 1000);
    chown(&rootfs.join("srv/data"), 1001, 1002);
    chmod(&rootfs.join("srv/data"), 0o700);
    std::os::unix::fs::symlink("/etc/issue", rootfs.join("etc/motd")).unwrap();
    std::os::unix::fs::symlink("../nowhere", rootfs.join("etc/dangling")).unwrap();
    run_tool("umoci", &["repack", "--image", &image, b]);
    std::fs::remove_dir_all(&bundle).unwrap();

    run_tool("umoci", &["unpack", "--image", &image, b]);
    std::fs::remove_file(rootfs.join("etc/issue.net")).unwrap();
    std::fs::remove_file(rootfs.join("usr/bin/uncompress")).unwrap();
    std::fs::remove_dir_all(rootfs.join("usr/share/doc/bash")).unwrap();
    std::fs::remove_dir_all(rootfs.join("etc/apt/conf.d")).unwrap();
    std::fs::create_dir(rootfs.join("etc/apt/conf.d")).unwrap();
    std::fs::write(rootfs.join("etc/apt/conf.d/99new"), "new\n").unwrap();
    std::fs::write(rootfs.join("etc/issue"), "Debian 12.5\n").unwrap();
    std::fs::write(rootfs.join("usr/bin/ping"), "ping\n").unwrap();
    set_xattr(
        &rootfs.join("usr/bin/ping"),
        "user.comment",
        b"binary\x00\x01value",
    );
    // cap_net_raw+ep, as `setcap` writes it (VFS_CAP_REVISION_2).
    let cap: [u8; 20] = [
        0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    set_xattr(&rootfs.join("usr/bin/ping"), "security.capability", &cap);
    std::fs::write(rootfs.join("usr/bin/gzip"), vec![8u8; 60_000]).unwrap();
    chmod(&rootfs.join("etc/issue"), 0o600);
    std::fs::remove_file(rootfs.join("etc/motd")).unwrap();
    std::fs::write(rootfs.join("etc/motd"), "now a file\n").unwrap();
    run_tool("umoci", &["repack", "--image", &image, b]);
    std::fs::remove_dir_all(&bundle).unwrap();

    run_tool("umoci", &["unpack", "--image", &image, b]);
    std::fs::remove_dir_all(rootfs.join("srv/data")).unwrap();
    std::fs::write(rootfs.join("srv/data"), "dir became a file\n").unwrap();
    run_tool("umoci", &["repack", "--image", &image, b]);
    std::fs::remove_dir_all(&bundle).unwrap();

    // A layer of one file, as `umoci insert` writes it: Debian's umoci 0.4.7
    // ends the tar right after the file's data, without padding or end
    // blocks, which Go's tar reader (umoci's, containerd's) takes.
    let inserted = work.join("inserted");
    std::fs::write(&inserted, "inserted\n").unwrap();
    run_tool(
        "umoci",
        &[
            "insert",
            "--image",
            &image,
            inserted.to_str().unwrap(),
            "/etc/inserted",
        ],
    );
    image
}

#[test]
fn an_image_built_by_umoci_unpacks_like_umoci_with_both_snapshotters() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let work = tempfile::tempdir().unwrap();
    let image = build_with_umoci(work.path());

    let reference = format!("{}/interop/umoci:1", registry.host());
    run_tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{image}"),
            &format!("docker://{reference}"),
        ],
    );
    let reference_tree = work.path().join("reference");
    run_tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &image,
            reference_tree.to_str().unwrap(),
        ],
    );
    let expected = manifest(&reference_tree.join("rootfs"));
    assert!(expected.contains_key("usr/bin/ping") && !expected.contains_key("etc/issue.net"));
    assert!(expected.contains_key("etc/inserted"));

    for snapshotter in ["overlay", "native"] {
        let root = work.path().join(format!("store-{snapshotter}"));
        let pulled = dist(
            &root,
            &["--snapshotter", snapshotter, "pull", "-q", &reference],
            b"",
        );
        assert!(
            pulled.status.success(),
            "pull: {}",
            String::from_utf8_lossy(&pulled.stderr)
        );
        let copy = work.path().join(format!("rootfs-{snapshotter}"));
        let out = dist(
            &root,
            &[
                "--snapshotter",
                snapshotter,
                "rootfs",
                "--copy",
                &reference,
                copy.to_str().unwrap(),
            ],
            b"",
        );
        assert!(
            out.status.success(),
            "rootfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ours = manifest(&copy);
        let mut differences = Vec::new();
        for (path, line) in &expected {
            match ours.get(path) {
                Some(mine) if mine == line => {}
                Some(mine) => {
                    differences.push(format!("{path}:\n  umoci: {line}\n  ours:  {mine}"))
                }
                None => differences.push(format!("{path}: missing (umoci: {line})")),
            }
        }
        for path in ours.keys().filter(|p| !expected.contains_key(*p)) {
            differences.push(format!("{path}: extra ({})", ours[path]));
        }
        assert!(
            differences.is_empty(),
            "{snapshotter} differs from umoci:\n{}",
            differences.join("\n")
        );
    }
}
