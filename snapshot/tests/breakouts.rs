//! A port of all 34 cases of containerd's `TestBreakouts`
//! (`pkg/archive/tar_test.go`): hostile layers built from symlinks,
//! hardlinks, whiteouts and odd names must stay inside the root they are
//! applied to. The catalogue is docs/research/containerd-breakouts.md.
//!
//! Each case applies to `<tmp>/root`, with sentinel files beside the root in
//! `<tmp>` (where `../etc/passwd` and friends would land). Whatever the
//! outcome, everything outside the root (the sentinels, the rest of `<tmp>`
//! and a few host paths such as `/etc/passwd`) must be unchanged.
//!
//! One deliberate difference from containerd: a `..` component in an entry
//! name or a hardlink target is refused (`InvalidArgument`) where containerd
//! cleans it to stay inside the root. The cases that meet it expect
//! [`Expect::RefusesDotDot`]. `..` in a *symlink target* is fine; it is
//! resolved as if the root were `/`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Cursor;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ocidist_snapshot::ErrorKind;
use ocidist_snapshot::apply::{ApplyOptions, Compression, apply_layer_sync};
use ocidist_snapshot::mount::ApplyTarget;

// ---------------------------------------------------------------------------
// Tar entries, as containerd's `tartest` helpers write them.

/// One tar entry. Names and link targets go into the header exactly as
/// written: absolute, with `..`, or empty.
enum E<'a> {
    /// `tc.File(name, content, perm)`.
    File(&'a str, &'a [u8], u32),
    /// `tc.Dir(name, perm)`: the header name gets a `/` appended, as Go does.
    Dir(&'a str, u32),
    /// `tc.Symlink(target, name)`: mode 0777.
    Symlink { target: &'a str, name: &'a str },
    /// `tc.Link(target, name)`: a hardlink, mode 0777.
    Link { target: &'a str, name: &'a str },
}

const EMPTY: &[u8] = &[];

/// A ustar archive of `entries`, owned by the current user, all with the same
/// modification time. Names are written into the raw header, since
/// `Header::set_path` refuses `..` and absolute paths.
fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let uid = u64::from(rustix::process::getuid().as_raw());
    let gid = u64::from(rustix::process::getgid().as_raw());
    let mtime = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (name, linkname, data, mode, kind) = match *entry {
            E::File(name, data, mode) => {
                (name.to_string(), "", data, mode, tar::EntryType::Regular)
            }
            E::Dir(name, mode) => (
                format!("{name}/"),
                "",
                EMPTY,
                mode,
                tar::EntryType::Directory,
            ),
            E::Symlink { target, name } => (
                name.to_string(),
                target,
                EMPTY,
                0o777,
                tar::EntryType::Symlink,
            ),
            E::Link { target, name } => {
                (name.to_string(), target, EMPTY, 0o777, tar::EntryType::Link)
            }
        };
        assert!(
            name.len() <= 100 && linkname.len() <= 100,
            "{name:?} -> {linkname:?} does not fit a ustar header (TMPDIR too long?)"
        );
        let mut header = tar::Header::new_ustar();
        {
            let ustar = header.as_ustar_mut().expect("a ustar header");
            ustar.name[..name.len()].copy_from_slice(name.as_bytes());
            ustar.linkname[..linkname.len()].copy_from_slice(linkname.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(mtime);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

// ---------------------------------------------------------------------------
// The directories of one case.

/// `td` is the case's temporary directory (containerd's outer test dir, and
/// where the sentinels live); `root` is `td/root`, the directory applied to.
struct Dirs {
    _tmp: tempfile::TempDir,
    td: PathBuf,
    root: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let td = tmp.path().to_path_buf();
        let root = td.join("root");
        std::fs::create_dir(&root).unwrap();
        Dirs {
            _tmp: tmp,
            td,
            root,
        }
    }

    /// containerd's `tname`: `td` with every `/` made `_`, trimmed of `_`.
    fn tname(&self) -> String {
        self.td
            .to_str()
            .expect("a UTF-8 temporary directory")
            .replace('/', "_")
            .trim_matches('_')
            .to_string()
    }
}

/// `root` joined with `name` as Go's `filepath.Join` does: a leading `/`
/// does not replace `root`.
fn join(root: &Path, name: &str) -> PathBuf {
    root.join(name.trim_start_matches('/'))
}

// ---------------------------------------------------------------------------
// State before apply: continuity's `fstest` appliers, on paths in the root.

/// `fstest.CreateDir`: `MkdirAll`, then chmod.
fn create_dir(root: &Path, name: &str, perm: u32) {
    let path = join(root, name);
    std::fs::create_dir_all(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm)).unwrap();
}

/// `fstest.CreateFile`: create or truncate, write, then chmod.
fn create_file(root: &Path, name: &str, content: &[u8], perm: u32) {
    let path = join(root, name);
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm)).unwrap();
}

/// `fstest.Symlink(target, name)`: the target is stored as given.
fn symlink(root: &Path, target: &str, name: &str) {
    std::os::unix::fs::symlink(target, join(root, name)).unwrap();
}

/// `fstest.Link(target, name)`: plain `link(2)`, parents followed by the kernel.
fn link(root: &Path, target: &str, name: &str) {
    std::fs::hard_link(join(root, target), join(root, name)).unwrap();
}

type Setup = fn(&Dirs);

fn no_setup(_: &Dirs) {}

/// `/etc/passwd` = "inside" in the root, before apply.
fn etc_passwd_inside(d: &Dirs) {
    create_dir(&d.root, "/etc/", 0o755);
    create_file(&d.root, "/etc/passwd", b"inside", 0o644);
}

// ---------------------------------------------------------------------------
// Validators, as `TestBreakouts` defines them. Plain joins do not scope
// symlinks; `same_file` resolves in the root's scope.

/// `unbrokenCheck`: `root/etc/unbroken` holds exactly "unbroken".
fn unbroken_check(root: &Path) -> Result<(), String> {
    file_value(root, "etc/unbroken", b"unbroken")
}

/// `fileValue`: reading `root/f` (the OS following symlinks) gives `content`.
fn file_value(root: &Path, f: &str, content: &[u8]) -> Result<(), String> {
    let path = join(root, f);
    let got = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    if got == content {
        Ok(())
    } else {
        Err(format!(
            "{f}: expected {:?}, got {:?}",
            String::from_utf8_lossy(content),
            String::from_utf8_lossy(&got)
        ))
    }
}

/// `fileNotExists`: nothing at `root/f`, not even a dangling symlink.
fn file_not_exists(root: &Path, f: &str) -> Result<(), String> {
    let path = join(root, f);
    match std::fs::symlink_metadata(&path) {
        Ok(_) => Err(format!("{f} exists")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("lstat {}: {e}", path.display())),
    }
}

/// `isSymlinkFile`: `root/f` is a symlink.
fn is_symlink_file(root: &Path, f: &str) -> Result<(), String> {
    let path = join(root, f);
    let meta =
        std::fs::symlink_metadata(&path).map_err(|e| format!("lstat {}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        Ok(())
    } else {
        Err(format!("{f} is not a symlink"))
    }
}

/// `sameSymlinkFile`: both are symlinks with the same target.
fn same_symlink_file(root: &Path, f1: &str, f2: &str) -> Result<(), String> {
    is_symlink_file(root, f1)?;
    is_symlink_file(root, f2)?;
    let t1 = std::fs::read_link(join(root, f1)).map_err(|e| format!("readlink {f1}: {e}"))?;
    let t2 = std::fs::read_link(join(root, f2)).map_err(|e| format!("readlink {f2}: {e}"))?;
    if t1 == t2 {
        Ok(())
    } else {
        Err(format!(
            "{f1} -> {} but {f2} -> {}",
            t1.display(),
            t2.display()
        ))
    }
}

/// Whether `f1` and `f2`, resolved in the root's scope, are one inode. Either
/// missing is an error.
fn same_inode(root: &Path, f1: &str, f2: &str) -> Result<bool, String> {
    let p1 = root_path(root, f1)?;
    let p2 = root_path(root, f2)?;
    let m1 = std::fs::metadata(&p1).map_err(|e| format!("stat {}: {e}", p1.display()))?;
    let m2 = std::fs::metadata(&p2).map_err(|e| format!("stat {}: {e}", p2.display()))?;
    Ok(m1.dev() == m2.dev() && m1.ino() == m2.ino())
}

/// `sameFile`.
fn same_file(root: &Path, f1: &str, f2: &str) -> Result<(), String> {
    if same_inode(root, f1, f2)? {
        Ok(())
    } else {
        Err(format!("{f1} and {f2}: files differ"))
    }
}

/// `notSameFile`: both exist and are different inodes.
fn not_same_file(root: &Path, f1: &str, f2: &str) -> Result<(), String> {
    if same_inode(root, f1, f2)? {
        Err(format!("{f1} and {f2}: files are the same"))
    } else {
        Ok(())
    }
}

/// continuity's `fs.RootPath`: `path` resolved beneath `root` as if `root`
/// were `/`. Every component that is a symlink (the last one too) is
/// followed; absolute targets restart at `root`; `..` is lexical and never
/// climbs above `root`; missing components are kept as they are.
fn root_path(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut resolved: Vec<Vec<u8>> = Vec::new();
    let mut pending = components(path.as_bytes());
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == b".." {
            resolved.pop();
            continue;
        }
        resolved.push(part);
        let here = under(root, &resolved);
        let Ok(meta) = std::fs::symlink_metadata(&here) else {
            continue;
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        links += 1;
        if links > 255 {
            return Err(format!("{path}: too many links"));
        }
        let target =
            std::fs::read_link(&here).map_err(|e| format!("readlink {}: {e}", here.display()))?;
        let target = target.as_os_str().as_bytes();
        resolved.pop();
        if target.starts_with(b"/") {
            resolved.clear();
        }
        pending.extend(components(target));
    }
    Ok(under(root, &resolved))
}

/// The components of `path` other than empty ones and `.`, last first (a
/// stack whose top is the first component).
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

fn under(root: &Path, parts: &[Vec<u8>]) -> PathBuf {
    let mut path = root.to_path_buf();
    for part in parts {
        path.push(OsStr::from_bytes(part));
    }
    path
}

// ---------------------------------------------------------------------------
// Nothing outside the root may change.

/// Type, mode, owner and inode of `path` (not followed), with the content of
/// a file and the target of a symlink; "absent" when there is nothing.
fn describe(path: &Path) -> String {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => return format!("absent ({:?})", e.kind()),
    };
    let ids = format!(
        "mode={:o} uid={} gid={} dev={} ino={}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid(),
        meta.dev(),
        meta.ino()
    );
    let kind = meta.file_type();
    if kind.is_dir() {
        format!("dir {ids}")
    } else if kind.is_symlink() {
        format!("symlink -> {:?} {ids}", std::fs::read_link(path).ok())
    } else if kind.is_file() {
        let content = std::fs::read(path)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned());
        format!("file nlink={} {ids} {content:?}", meta.nlink())
    } else {
        format!("special {:o} {ids}", meta.mode())
    }
}

/// Everything in `td` except the root, described.
fn snapshot_outside(d: &Dirs) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    out.insert(d.td.clone(), describe(&d.td));
    let mut stack = vec![d.td.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path == d.root {
                continue;
            }
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path.clone());
            }
            let description = describe(&path);
            out.insert(path, description);
        }
    }
    out
}

/// Host paths a case would reach if absolute names or link targets escaped:
/// the real `/etc/passwd`, and names that should never appear.
fn snapshot_host(d: &Dirs) -> BTreeMap<PathBuf, String> {
    let mut paths: Vec<PathBuf> = [
        "/etc/passwd",
        "/etc/unbroken",
        "/etc/emptied",
        "/etc/localpasswd",
        "/etc/whitedout",
        "/etc/somefile",
        "/localetc",
        "/localpasswd",
        "/passwdlink",
        "/breakouts",
        "/dne",
        "/foo",
        "/sketchylink",
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect();
    paths.push(PathBuf::from(format!("/tmp/breakout-{}", d.tname())));
    paths
        .into_iter()
        .map(|p| {
            let description = describe(&p);
            (p, description)
        })
        .collect()
}

/// The differences between two snapshots, one per line.
fn changes(before: &BTreeMap<PathBuf, String>, after: &BTreeMap<PathBuf, String>) -> String {
    let mut lines = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            Some(now) if now == was => {}
            Some(now) => lines.push(format!("changed {}: {was}  =>  {now}", path.display())),
            None => lines.push(format!("removed {}: {was}", path.display())),
        }
    }
    for (path, now) in after {
        if !before.contains_key(path) {
            lines.push(format!("added {}: {now}", path.display()));
        }
    }
    lines.join("\n")
}

/// Sentinels beside the root: where `../etc/...` from the root, or
/// `../../etc/...` from one of its directories, would land.
fn plant_sentinels(td: &Path) {
    create_dir(td, "etc", 0o755);
    for name in ["passwd", "unbroken", "emptied", "whitedout", "localpasswd"] {
        create_file(
            td,
            &format!("etc/{name}"),
            format!("sentinel {name}").as_bytes(),
            0o644,
        );
    }
}

// ---------------------------------------------------------------------------
// Running a case.

type Validator = fn(&Dirs) -> Result<(), String>;

enum Expect {
    /// containerd and we: the layer applies, then the validator passes.
    Applies(Validator),
    /// containerd applies it, cleaning a `..`; we refuse the `..` in an entry
    /// name or hardlink target with `InvalidArgument`.
    RefusesDotDot,
    /// containerd: `errInvalidArchive`; we: any error.
    InvalidArchive,
}

/// Applies `entries` to a fresh root after `setup`, checks the outcome
/// against `expect`, and that nothing outside the root changed.
fn run_case(setup: Setup, entries: &[E<'_>], expect: Expect) {
    run_case_in(&Dirs::new(), setup, entries, expect);
}

/// [`run_case`] in given directories, for cases whose names depend on them.
fn run_case_in(d: &Dirs, setup: Setup, entries: &[E<'_>], expect: Expect) {
    plant_sentinels(&d.td);
    setup(d);
    let outside = snapshot_outside(d);
    let host = snapshot_host(d);

    let result = apply_layer_sync(
        &ApplyTarget::Tree(d.root.clone()),
        Cursor::new(tar_of(entries)),
        Some(Compression::None),
        &ApplyOptions::default(),
    );

    let outside_after = snapshot_outside(d);
    assert!(
        outside_after == outside,
        "something outside the root changed:\n{}",
        changes(&outside, &outside_after)
    );
    let host_after = snapshot_host(d);
    assert!(
        host_after == host,
        "something on the host changed:\n{}",
        changes(&host, &host_after)
    );
    assert!(
        std::fs::symlink_metadata(&d.root).unwrap().is_dir(),
        "the root is no longer a directory"
    );

    match (expect, result) {
        (Expect::Applies(validate), Ok(_)) => {
            if let Err(e) = validate(d) {
                panic!("applied, but: {e}");
            }
        }
        (Expect::Applies(_), Err(e)) => {
            panic!(
                "apply failed ({:?}): {e}; containerd applies this layer",
                e.kind()
            )
        }
        (Expect::RefusesDotDot, Err(e)) => {
            assert_eq!(
                e.kind(),
                ErrorKind::InvalidArgument,
                "unexpected error: {e}"
            );
        }
        (Expect::RefusesDotDot, Ok(_)) => {
            panic!("applied, but a `..` in an entry name or hardlink target must be refused")
        }
        (Expect::InvalidArchive, Err(_)) => {}
        (Expect::InvalidArchive, Ok(_)) => {
            panic!("applied, but containerd refuses this layer as an invalid archive")
        }
    }
}

// ---------------------------------------------------------------------------
// The cases, in containerd's order.

/// 1. A file written through an absolute symlink parent lands in the root's `etc`.
#[test]
fn symlink_absolute() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o755),
            E::Symlink {
                target: "/etc",
                name: "localetc",
            },
            E::File("/localetc/unbroken", b"unbroken", 0o644),
        ],
        Expect::Applies(|d| unbroken_check(&d.root)),
    );
}

/// 2. A symlink target `/dummy/../etc` resolves to the root's `etc`.
#[test]
fn symlink_up_and_out() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o755),
            E::Dir("dummy", 0o755),
            E::Symlink {
                target: "/dummy/../etc",
                name: "localetc",
            },
            E::File("/localetc/unbroken", b"unbroken", 0o644),
        ],
        Expect::Applies(|d| unbroken_check(&d.root)),
    );
}

/// 3. A chain of absolute symlinks stays inside the root.
#[test]
fn symlink_multiple_absolute() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o755),
            E::Dir("dummy", 0o755),
            E::Symlink {
                target: "/etc",
                name: "/dummy/etc",
            },
            E::Symlink {
                target: "/dummy/etc",
                name: "localetc",
            },
            E::File("/dummy/etc/unbroken", b"unbroken", 0o644),
        ],
        Expect::Applies(|d| unbroken_check(&d.root)),
    );
}

/// 4. A relative symlink to an absolute one stays inside the root.
#[test]
fn symlink_multiple_relative() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o755),
            E::Dir("dummy", 0o755),
            E::Symlink {
                target: "/etc",
                name: "/dummy/etc",
            },
            E::Symlink {
                target: "./dummy/etc",
                name: "localetc",
            },
            E::File("/dummy/etc/unbroken", b"unbroken", 0o644),
        ],
        Expect::Applies(|d| unbroken_check(&d.root)),
    );
}

/// 5. An empty file written through an absolute symlink parent replaces the root's file.
#[test]
fn symlink_empty_file() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o755),
            E::File("etc/emptied", b"notempty", 0o644),
            E::Symlink {
                target: "/etc",
                name: "localetc",
            },
            E::File("/localetc/emptied", b"", 0o644),
        ],
        Expect::Applies(|d| {
            let path = d.root.join("etc/emptied");
            let content =
                std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
            if content.is_empty() {
                Ok(())
            } else {
                Err(format!("etc/emptied still holds {} bytes", content.len()))
            }
        }),
    );
}

/// 6. A hardlink target through a symlink climbing `../../etc` links the root's passwd.
#[test]
fn hardlink_relative() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Dir("breakouts", 0o755),
            E::Symlink {
                target: "../../etc",
                name: "breakouts/d1",
            },
            E::Link {
                target: "/breakouts/d1/passwd",
                name: "breakouts/mypasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "/breakouts/mypasswd", "/etc/passwd")),
    );
}

/// 7. A hardlink target through a symlink going down then up and out links the root's passwd.
#[test]
fn hardlink_down_and_out() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Dir("breakouts", 0o755),
            E::Dir("downandout", 0o755),
            E::Symlink {
                target: "../downandout/../../etc",
                name: "breakouts/d1",
            },
            E::Link {
                target: "/breakouts/d1/passwd",
                name: "breakouts/mypasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "/breakouts/mypasswd", "/etc/passwd")),
    );
}

/// 8. A hardlink target through an absolute symlink links the root's passwd.
#[test]
fn hardlink_absolute() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "/etc",
                name: "localetc",
            },
            E::Link {
                target: "/localetc/passwd",
                name: "localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "localpasswd", "/etc/passwd")),
    );
}

/// 9. A hardlink target through a symlink with many `..` links the root's passwd.
#[test]
fn hardlink_relative_long() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "../../../../../../../etc",
                name: "localetc",
            },
            E::Link {
                target: "/localetc/passwd",
                name: "localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "localpasswd", "/etc/passwd")),
    );
}

/// 10. A hardlink target through a symlink via a missing directory and `..` is refused.
///
/// containerd cleans the symlink's text and links the root's passwd; the kernel
/// (RESOLVE_IN_ROOT, as at run time) finds `upandout` missing.
#[test]
fn hardlink_relative_up_and_out() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "upandout/../../../etc",
                name: "localetc",
            },
            E::Link {
                target: "/localetc/passwd",
                name: "localpasswd",
            },
        ],
        Expect::InvalidArchive,
    );
}

/// 11. A hardlink target climbing with `..` is refused (containerd clamps it to the root).
#[test]
fn hardlink_direct_relative() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Link {
                target: "../../../../../etc/passwd",
                name: "localpasswd",
            },
        ],
        Expect::RefusesDotDot,
    );
}

/// 12. An absolute hardlink target links the root's passwd, not the host's.
#[test]
fn hardlink_direct_absolute() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Link {
                target: "/etc/passwd",
                name: "localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "localpasswd", "/etc/passwd")),
    );
}

/// 13. A symlink named `..` is refused (containerd skips it), and the root stays a directory.
#[test]
fn symlink_parent_directory() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "/etc/",
                name: "..",
            },
            E::Link {
                target: "/etc/passwd",
                name: "localpasswd",
            },
        ],
        Expect::RefusesDotDot,
    );
}

/// 14. A symlink with an empty name (the root itself) is skipped; the root stays a directory.
#[test]
fn symlink_empty_filename() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "/etc/",
                name: "",
            },
            E::Link {
                target: "/etc/passwd",
                name: "localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "/localpasswd", "/etc/passwd")),
    );
}

/// 15. A symlink named `localetc/sub/..` is refused (containerd cleans it to `localetc`).
#[test]
fn symlink_parent_relative() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "/etc/",
                name: "localetc/sub/..",
            },
            E::Link {
                target: "/etc/passwd",
                name: "/localetc/localpasswd",
            },
        ],
        Expect::RefusesDotDot,
    );
}

/// 16. A directory named with a doubled trailing slash is a plain directory.
#[test]
fn symlink_slash_ended() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Dir("localetc/", 0o770),
            E::Link {
                target: "/etc/passwd",
                name: "/localetc/localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "/localetc/localpasswd", "/etc/passwd")),
    );
}

/// 17. An absolute symlink replaces an existing directory and resolves inside the root.
#[test]
fn symlink_override_directory() {
    run_case(
        |d| {
            etc_passwd_inside(d);
            create_dir(&d.root, "/localetc/", 0o755);
        },
        &[
            E::Symlink {
                target: "/etc",
                name: "localetc",
            },
            E::Link {
                target: "/etc/passwd",
                name: "/localetc/localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "/localetc/localpasswd", "/etc/passwd")),
    );
}

/// 18. A climbing relative symlink replaces an existing directory and resolves inside the root.
#[test]
fn symlink_override_directory_relative() {
    run_case(
        |d| {
            etc_passwd_inside(d);
            create_dir(&d.root, "/localetc/", 0o755);
        },
        &[
            E::Symlink {
                target: "../../etc",
                name: "localetc",
            },
            E::Link {
                target: "/etc/passwd",
                name: "/localetc/localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "/localetc/localpasswd", "/etc/passwd")),
    );
}

/// 19. A directory entry replaces an existing absolute symlink instead of following it.
#[test]
fn directory_override_symlink() {
    run_case(
        |d| {
            etc_passwd_inside(d);
            symlink(&d.root, "/etc", "localetc");
        },
        &[
            E::Dir("/localetc/", 0o755),
            E::Link {
                target: "/etc/passwd",
                name: "/localetc/localpasswd",
            },
        ],
        Expect::Applies(|d| same_file(&d.root, "/localetc/localpasswd", "/etc/passwd")),
    );
}

/// 20. A file under a directory that replaced a symlink is new, not written through an old hardlink.
#[test]
fn directory_override_symlink_and_hardlink() {
    run_case(
        |d| {
            etc_passwd_inside(d);
            symlink(&d.root, "etc", "localetc");
            link(&d.root, "/etc/passwd", "/localetc/localpasswd");
        },
        &[
            E::Dir("/localetc/", 0o755),
            E::File("/localetc/localpasswd", b"different", 0o644),
        ],
        Expect::Applies(|d| not_same_file(&d.root, "/localetc/localpasswd", "/etc/passwd")),
    );
}

/// 21. A whiteout of `..` at the top (above the root) is an invalid archive.
#[test]
fn whiteout_root_parent() {
    run_case(
        etc_passwd_inside,
        &[E::File(".wh...", b"", 0o644)],
        Expect::InvalidArchive,
    );
}

/// 22. A whiteout of `etc/..` (the root) is an invalid archive.
#[test]
fn whiteout_parent() {
    run_case(
        etc_passwd_inside,
        &[E::File("etc/.wh...", b"", 0o644)],
        Expect::InvalidArchive,
    );
}

/// 23. A whiteout of `.` at the top (the root) is an invalid archive.
#[test]
fn whiteout_root() {
    run_case(
        etc_passwd_inside,
        &[E::File(".wh..", b"", 0o644)],
        Expect::InvalidArchive,
    );
}

/// 24. A whiteout of `etc/.` (its own directory) is an invalid archive.
#[test]
fn whiteout_current_directory() {
    run_case(
        etc_passwd_inside,
        &[E::File("etc/.wh..", b"", 0o644)],
        Expect::InvalidArchive,
    );
}

/// 25. A whiteout of a symlink removes the link, not the directory it points to.
#[test]
fn whiteout_symlink() {
    run_case(
        |d| {
            create_dir(&d.root, "/etc/", 0o755);
            create_file(&d.root, "/etc/passwd", b"all users", 0o644);
            symlink(&d.root, "/etc", "localetc");
        },
        &[E::File(".wh.localetc", b"", 0o644)],
        Expect::Applies(|d| {
            file_value(&d.root, "etc/passwd", b"all users")?;
            file_not_exists(&d.root, "localetc")
        }),
    );
}

/// 26. A whiteout under an absolute symlink parent removes the file inside the root.
#[test]
fn whiteout_symlink_path() {
    run_case(
        |d| {
            create_dir(&d.root, "/etc/", 0o755);
            create_file(&d.root, "/etc/passwd", b"all users", 0o644);
            create_file(&d.root, "/etc/whitedout", b"ahhhh whiteout", 0o644);
            symlink(&d.root, "/etc", "localetc");
        },
        &[E::File("localetc/.wh.whitedout", b"", 0o644)],
        Expect::Applies(|d| {
            file_value(&d.root, "etc/passwd", b"all users")?;
            file_not_exists(&d.root, "etc/whitedout")
        }),
    );
}

/// 27. Only the last component can be a whiteout: `.wh.etc/somefile` is a plain file.
#[test]
fn whiteout_directory_name() {
    run_case(
        |d| {
            create_dir(&d.root, "/etc/", 0o755);
            create_file(&d.root, "/etc/passwd", b"all users", 0o644);
            create_file(&d.root, "/etc/whitedout", b"ahhhh whiteout", 0o644);
            symlink(&d.root, "/etc", "localetc");
        },
        &[E::File(".wh.etc/somefile", b"non-empty", 0o644)],
        Expect::Applies(|d| {
            file_value(&d.root, "etc/passwd", b"all users")?;
            file_value(&d.root, ".wh.etc/somefile", b"non-empty")
        }),
    );
}

/// 28. A whiteout under a dangling symlink parent removes nothing.
#[test]
fn whiteout_dead_symlink_parent() {
    run_case(
        |d| {
            create_dir(&d.root, "/etc/", 0o755);
            create_file(&d.root, "/etc/passwd", b"all users", 0o644);
            symlink(&d.root, "/dne", "localetc");
        },
        &[E::File("localetc/.wh.etc", b"", 0o644)],
        Expect::Applies(|d| file_value(&d.root, "etc/passwd", b"all users")),
    );
}

/// 29. A whiteout named `dne/../.wh.etc` is refused (containerd cleans it and deletes `etc`).
#[test]
fn whiteout_relative_path() {
    run_case(
        |d| {
            create_dir(&d.root, "/etc/", 0o755);
            create_file(&d.root, "/etc/passwd", b"all users", 0o644);
            symlink(&d.root, "/dne", "localetc");
        },
        &[E::File("dne/../.wh.etc", b"", 0o644)],
        Expect::RefusesDotDot,
    );
}

/// 30. A file under a symlink to `/` stays in the root, and a directory replacing the symlink is used after.
#[test]
fn symlink_override_path() {
    let d = Dirs::new();
    let name = format!("foo/tmp/breakout-{}", d.tname());
    run_case_in(
        &d,
        no_setup,
        &[
            E::Dir("foo", 0o755),
            E::Dir("foo/tmp", 0o755),
            E::File(&name, &[0, 1, 2], 0o644),
            E::Symlink {
                target: "/",
                name: "foo",
            },
            E::File(&name, &[3, 4, 5], 0o644),
            E::Dir("foo", 0o755),
            E::Dir("foo/tmp", 0o755),
            E::File(&name, &[6, 7, 8], 0o644),
        ],
        Expect::Applies(|d| {
            let host = PathBuf::from(format!("/tmp/breakout-{}", d.tname()));
            match std::fs::read(&host) {
                Ok(content) if content == [3, 4, 5] => {
                    return Err(format!("file written outside of root: {}", host.display()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("read {}: {e}", host.display())),
            }
            file_value(
                &d.root,
                &format!("foo/tmp/breakout-{}", d.tname()),
                &[6, 7, 8],
            )
        }),
    );
}

/// 31. A hardlink of a dangling absolute symlink links the symlink, which resolves inside the root.
#[test]
fn hardlink_symlink_before_create_target() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::Symlink {
                target: "/etc/passwd",
                name: "localpasswd",
            },
            E::Link {
                target: "localpasswd",
                name: "localpasswd-dup",
            },
            E::File("/etc/passwd", b"after", 0o644),
        ],
        Expect::Applies(|d| same_file(&d.root, "localpasswd-dup", "/etc/passwd")),
    );
}

/// 32. A hardlink of a climbing relative symlink is the symlink itself, resolving inside the root.
#[test]
fn hardlink_symlink_relative() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "../../../../../etc/passwd",
                name: "passwdlink",
            },
            E::Link {
                target: "/passwdlink",
                name: "localpasswd",
            },
        ],
        Expect::Applies(|d| {
            same_symlink_file(&d.root, "/localpasswd", "/passwdlink")?;
            same_file(&d.root, "/localpasswd", "/etc/passwd")
        }),
    );
}

/// 33. A hardlink of an absolute symlink is the symlink itself, resolving inside the root.
#[test]
fn hardlink_symlink_absolute() {
    run_case(
        no_setup,
        &[
            E::Dir("etc", 0o770),
            E::File("/etc/passwd", b"inside", 0o644),
            E::Symlink {
                target: "/etc/passwd",
                name: "passwdlink",
            },
            E::Link {
                target: "/passwdlink",
                name: "localpasswd",
            },
        ],
        Expect::Applies(|d| {
            same_symlink_file(&d.root, "/localpasswd", "/passwdlink")?;
            same_file(&d.root, "/localpasswd", "/etc/passwd")
        }),
    );
}

/// 34. The 0777 mode of a symlink and of a hardlink to it never chmods the host file it names.
#[test]
fn hardlink_symlink_chmod() {
    let d = Dirs::new();
    let perm400 = d.td.join("perm400").to_str().unwrap().to_string();
    let exists_outside =
        d.td.join("also-exists-outside-root")
            .to_str()
            .unwrap()
            .to_string();
    run_case_in(
        &d,
        |d| {
            create_file(&d.td, "perm400", b"...", 0o400);
            create_file(&d.td, "also-exists-outside-root", b"...", 0o640);
        },
        &[
            E::Symlink {
                target: &perm400,
                name: &exists_outside,
            },
            E::Link {
                target: &exists_outside,
                name: "sketchylink",
            },
        ],
        Expect::Applies(|d| {
            let path = d.td.join("perm400");
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| format!("lstat {}: {e}", path.display()))?;
            let perm = meta.mode() & 0o7777;
            if perm == 0o400 {
                Ok(())
            } else {
                Err(format!("{} is now mode {perm:o}, not 400", path.display()))
            }
        }),
    );
}
