//! The conformance suite every snapshotter must pass (feature `testsuite`).
//!
//! These are containerd's 21 snapshotter cases (`core/snapshots/testsuite`),
//! with its layers, keys and semantics, its overlay snapshotter's
//! [`rebase`] table (`TestOverlayCommit`), and five of ours
//! ([`apply_only_prepare`]; the trait's own contract:
//! [`contract_errors`], [`mounts_are_what_prepare_gave`],
//! [`usage_of_what_was_written`]; and [`unpack_image`], an image unpacked
//! through [`unpack`](crate::unpack) and read back), as plain `pub async
//! fn`s that panic on failure. Each takes a fresh, empty snapshotter and an
//! empty scratch directory for mount points, expected trees and (for
//! [`unpack_image`]) a content store:
//!
//! ```no_run
//! # async fn example() {
//! use ocidist_snapshot::{native::NativeSnapshotter, testsuite};
//! let root = tempfile::tempdir().unwrap();
//! let work = testsuite::work_dir();
//! testsuite::basic(&NativeSnapshotter::open(root.path()).unwrap(), work.path()).await;
//! # }
//! ```
//!
//! or let [`snapshotter_suite!`](crate::snapshotter_suite) write one
//! `#[tokio::test]` per case from a function that makes a snapshotter.
//!
//! The cases mount snapshots for real with [`mount::mount_all`] and do their
//! file operations through the mount point, so they need root (chown to uid 1
//! as well): [`require_root`] fails a case run without it, saying so. Like containerd's suite they set the process umask to 0, so a
//! snapshotter gets exactly the modes it asks for. Where containerd only asks
//! for "an error", the cases check the kind containerd's metadata store
//! returns: [`ErrorKind::AlreadyExists`] for a key in use,
//! [`ErrorKind::NotFound`] for a missing key, [`ErrorKind::FailedPrecondition`]
//! for removing a parent, [`ErrorKind::InvalidArgument`] for a parent that is
//! not committed.
//!
//! Trees are compared the way containerd's `fstest.CheckDirectoryEqual` does:
//! every entry below the root (not the root itself) by path, full mode (type
//! and permission bits), owner, and for regular files size, sha256 and the set
//! of paths hardlinked to it, for symlinks the target, for devices the number;
//! times and xattrs are not compared.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, ErrorKind, Info, Kind, Labels, Mount, Result, Snapshotter, mount};

mod unpack;
pub use unpack::unpack_image;

/// Writes one `#[tokio::test]` per suite case, each with a fresh snapshotter
/// from `$make` (an expression giving `(guard, snapshotter)`, where `guard`
/// lives as long as the test: the snapshotter's root directory, say) and a
/// fresh [`work_dir`](crate::testsuite::work_dir). After the case the
/// snapshotter is closed once more, which must succeed, as containerd's
/// cleanup does.
///
/// ```ignore
/// fn make() -> (tempfile::TempDir, NativeSnapshotter) { ... }
/// ocidist_snapshot::snapshotter_suite!(make());
/// ```
#[macro_export]
macro_rules! snapshotter_suite {
    ($make:expr) => {
        $crate::snapshotter_suite!(@cases $make;
            basic, stat_active, stat_committed, transitivity, prepare_view_failing, update,
            remove, walk, layer_file_update, remove_directory_in_lower_layer, chown,
            directory_permission_on_commit, remove_intermediate_snapshot,
            deleted_files_in_child_snapshot, move_file_from_lower_layer, view_readonly,
            stat_in_walk, close_twice, root_permission, rename, mount_128_layers,
            apply_only_prepare, contract_errors, mounts_are_what_prepare_gave, rebase,
            usage_of_what_was_written, unpack_image);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::testsuite::require_root();
                let (_guard, snapshotter) = $make;
                let work = $crate::testsuite::work_dir();
                $crate::testsuite::$case(&snapshotter, work.path()).await;
                $crate::Snapshotter::close(&snapshotter)
                    .await
                    .expect("close after the case");
            }
        )*
    };
}

/// Fails, naming what is missing, unless the process runs as root: the
/// cases mount snapshots and chown files. A suite that cannot run is a
/// failure, never a silent skip; [`snapshotter_suite!`](crate::snapshotter_suite)
/// calls this first in every case.
pub fn require_root() {
    let euid = rustix::process::geteuid();
    assert!(
        euid.is_root(),
        "the snapshotter suite needs root (it mounts snapshots and chowns files); \
         this process runs as uid {}: run it as root (sudo -E cargo test) or in a \
         container with CAP_SYS_ADMIN",
        euid.as_raw()
    );
}

/// A fresh scratch directory for one case: its mount points and expected
/// trees go there. Removed when dropped (every case unmounts what it mounted).
pub fn work_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("snapshot-suite-")
        .tempdir()
        .expect("create the suite's work directory")
}

// ---------------------------------------------------------------------------
// Snapshotter calls that must succeed, labels, errors.

const GC_ROOT: &str = "containerd.io/gc.root";

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A number no other call in this process gets.
fn unique() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// containerd's suite runs with umask 0, so snapshotters get the modes they ask for.
fn clear_umask() {
    let _ = rustix::process::umask(rustix::fs::Mode::empty());
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// containerd's `opt`: the gc.root label, with a time taken once.
fn gc_labels() -> Labels {
    static ROOT: OnceLock<String> = OnceLock::new();
    let root = ROOT.get_or_init(|| rfc3339(SystemTime::now()));
    labels(&[(GC_ROOT, root.as_str())])
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Asserts `t` lies within `[from, to]`.
fn assert_between(what: &str, t: SystemTime, from: SystemTime, to: SystemTime) {
    assert!(
        t >= from && t <= to,
        "{what} {t:?} is not between {from:?} and {to:?}"
    );
}

/// Asserts `result` failed with `kind`; returns the error.
fn expect_error<T>(result: Result<T>, kind: ErrorKind, what: &str) -> Error {
    match result {
        Ok(_) => panic!("{what}: succeeded, expected a {kind:?} error"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: wrong kind of error: {e:?}");
            e
        }
    }
}

async fn prepare_ok<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    key: &str,
    parent: Option<&str>,
    labels: Labels,
) -> Vec<Mount> {
    snapshotter
        .prepare(key, parent, labels)
        .await
        .unwrap_or_else(|e| panic!("prepare {key:?} on parent {parent:?}: {e:?}"))
}

async fn view_ok<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    key: &str,
    parent: Option<&str>,
    labels: Labels,
) -> Vec<Mount> {
    snapshotter
        .view(key, parent, labels)
        .await
        .unwrap_or_else(|e| panic!("view {key:?} of parent {parent:?}: {e:?}"))
}

async fn commit_ok<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    name: &str,
    key: &str,
    labels: Labels,
) {
    snapshotter
        .commit(name, key, labels)
        .await
        .unwrap_or_else(|e| panic!("commit {key:?} as {name:?}: {e:?}"));
}

async fn stat_ok<S: Snapshotter + ?Sized>(snapshotter: &S, key: &str) -> Info {
    snapshotter
        .stat(key)
        .await
        .unwrap_or_else(|e| panic!("stat {key:?}: {e:?}"))
}

async fn remove_ok<S: Snapshotter + ?Sized>(snapshotter: &S, key: &str) {
    snapshotter
        .remove(key)
        .await
        .unwrap_or_else(|e| panic!("remove {key:?}: {e:?}"));
}

async fn walk_ok<S: Snapshotter + ?Sized>(snapshotter: &S, filters: &[&str]) -> Vec<Info> {
    snapshotter
        .walk(filters)
        .await
        .unwrap_or_else(|e| panic!("walk with filters {filters:?}: {e:?}"))
}

async fn update_ok<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    info: Info,
    fieldpaths: &[&str],
) -> Info {
    let name = info.name.clone();
    snapshotter
        .update(info, fieldpaths)
        .await
        .unwrap_or_else(|e| panic!("update {name:?} with fieldpaths {fieldpaths:?}: {e:?}"))
}

// ---------------------------------------------------------------------------
// Directories and mounts.

/// `work/name` as a snapshot key: containerd's suite uses such absolute paths
/// as keys, and the same paths as mount points.
fn key(work: &Path, name: &str) -> String {
    work.join(name).to_string_lossy().into_owned()
}

/// [`key`], with the directory made (to mount the snapshot there).
fn key_dir(work: &Path, name: &str) -> String {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e:?}", dir.display()));
    dir.to_string_lossy().into_owned()
}

/// A new, empty, uniquely named directory under `work`.
fn scratch_dir(work: &Path, prefix: &str) -> PathBuf {
    let dir = work.join(format!("{prefix}-{}", unique()));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e:?}", dir.display()));
    dir
}

/// Removes a directory that a mount point was; it must be empty by now.
fn remove_mount_point(dir: &Path) {
    std::fs::remove_dir(dir)
        .unwrap_or_else(|e| panic!("remove mount point {}: {e:?}", dir.display()));
}

/// Removes a tree the suite built itself (never a mount point).
fn remove_tree(dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e:?}", dir.display()));
}

/// Snapshot mounts at a directory; unmounted when dropped, so a failing
/// check still unmounts.
struct Mounted {
    target: PathBuf,
    active: bool,
}

impl Mounted {
    fn new(mounts: &[Mount], target: &Path) -> Self {
        assert!(
            !mounts.is_empty(),
            "the snapshotter gave no mounts to mount at {}",
            target.display()
        );
        if let Err(e) = mount::mount_all(mounts, target) {
            // Some of the mounts may be in place.
            let _ = mount::unmount(target);
            panic!("mount {mounts:?} at {}: {e:?}", target.display());
        }
        Mounted {
            target: target.to_path_buf(),
            active: true,
        }
    }

    fn unmount(mut self) {
        self.active = false;
        mount::unmount(&self.target)
            .unwrap_or_else(|e| panic!("unmount {}: {e:?}", self.target.display()));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.active {
            let _ = mount::unmount(&self.target);
        }
    }
}

/// containerd's `snapshotterPrepareMount`: mkdir `work/name`, prepare it as a
/// key on `parent` and mount it there.
async fn prepare_mount<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    work: &Path,
    name: &str,
    parent: Option<&str>,
) -> (String, Mounted) {
    let key = key_dir(work, name);
    let mounts = prepare_ok(snapshotter, &key, parent, gc_labels()).await;
    let mounted = Mounted::new(&mounts, Path::new(&key));
    (key, mounted)
}

// ---------------------------------------------------------------------------
// fstest appliers.

/// One `fstest` applier step; paths are relative to the root applied to
/// (a leading `/` is allowed).
#[derive(Debug, Clone)]
enum Op {
    /// Create or truncate, write, fsync, chmod.
    CreateFile(String, Vec<u8>, u32),
    /// `mkdir -p`, then chmod.
    CreateDir(String, u32),
    /// `rm -rf`; a missing path is fine.
    RemoveAll(String),
    /// `rename(2)`.
    Rename(String, String),
    /// `rename(2)` of a directory, which a filesystem may refuse with EXDEV
    /// (overlayfs without `redirect_dir` for a directory from a lower layer).
    RenameOrExdev(String, String),
    /// `chown(2)`, following symlinks.
    Chown(String, u32, u32),
    /// A hardlink: `Link(existing, new)`.
    Link(String, String),
    /// A symlink: `Symlink(target, new)`.
    Symlink(String, String),
}

fn create_file(name: &str, content: &[u8], mode: u32) -> Op {
    Op::CreateFile(name.to_string(), content.to_vec(), mode)
}

fn create_dir(name: &str, mode: u32) -> Op {
    Op::CreateDir(name.to_string(), mode)
}

fn remove_all(name: &str) -> Op {
    Op::RemoveAll(name.to_string())
}

fn rename_path(from: &str, to: &str) -> Op {
    Op::Rename(from.to_string(), to.to_string())
}

fn rename_dir_or_exdev(from: &str, to: &str) -> Op {
    Op::RenameOrExdev(from.to_string(), to.to_string())
}

fn chown_to(name: &str, uid: u32, gid: u32) -> Op {
    Op::Chown(name.to_string(), uid, gid)
}

fn hard_link(existing: &str, new: &str) -> Op {
    Op::Link(existing.to_string(), new.to_string())
}

fn under(root: &Path, name: &str) -> PathBuf {
    root.join(name.trim_start_matches('/'))
}

/// Applies `op` under `root`; false when it was a rename refused with EXDEV.
fn apply_op(root: &Path, op: &Op) -> std::io::Result<bool> {
    match op {
        Op::CreateFile(name, content, mode) => {
            let path = under(root, name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(*mode)
                .open(&path)?;
            file.write_all(content)?;
            file.sync_all()?;
            drop(file);
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
        }
        Op::CreateDir(name, mode) => {
            let path = under(root, name);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(*mode)
                .create(&path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))?;
        }
        Op::RemoveAll(name) => {
            let path = under(root, name);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path)?,
                Ok(_) => std::fs::remove_file(path)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Op::Rename(from, to) => std::fs::rename(under(root, from), under(root, to))?,
        Op::RenameOrExdev(from, to) => match std::fs::rename(under(root, from), under(root, to)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Ok(false),
            Err(e) => return Err(e),
        },
        Op::Chown(name, uid, gid) => {
            std::os::unix::fs::chown(under(root, name), Some(*uid), Some(*gid))?;
        }
        Op::Link(existing, new) => std::fs::hard_link(under(root, existing), under(root, new))?,
        Op::Symlink(target, new) => std::os::unix::fs::symlink(target, under(root, new))?,
    }
    Ok(true)
}

/// Applies `ops` in order under `root`; returns the ones that took effect
/// (all but refused [`Op::RenameOrExdev`]s), to replay on a reference tree.
fn apply_ops(root: &Path, ops: &[Op]) -> Vec<Op> {
    let mut done = Vec::new();
    for op in ops {
        match apply_op(root, op) {
            Ok(true) => done.push(op.clone()),
            Ok(false) => {}
            Err(e) => panic!("apply {op:?} under {}: {e:?}", root.display()),
        }
    }
    done
}

// ---------------------------------------------------------------------------
// Layers.

/// One tar entry of a case's layer.
enum Entry<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str, u32, u64, u64),
}

fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_size(0);
        let (path, done) = match *entry {
            Entry::Dir(path, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode);
                (path, tar.append_data(&mut header, path, &[][..]))
            }
            Entry::File(path, data, mode) => {
                header.set_mode(mode);
                header.set_size(data.len() as u64);
                (path, tar.append_data(&mut header, path, data))
            }
            Entry::Owned(path, data, mode, uid, gid) => {
                header.set_mode(mode);
                header.set_uid(uid);
                header.set_gid(gid);
                header.set_size(data.len() as u64);
                (path, tar.append_data(&mut header, path, data))
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                (path, tar.append_link(&mut header, path, target))
            }
            // With the target's mode and owner, as tar writes a second
            // name of one inode (containerd applies them to the inode).
            Entry::Hardlink(path, target, mode, uid, gid) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(mode);
                header.set_uid(uid);
                header.set_gid(gid);
                (path, tar.append_link(&mut header, path, target))
            }
        };
        done.unwrap_or_else(|e| panic!("tar entry {path}: {e:?}"));
    }
    tar.into_inner().expect("finish the tar")
}

// ---------------------------------------------------------------------------
// fstest.CheckDirectoryEqual.

/// What is compared of an entry besides mode and owner.
#[derive(Debug, PartialEq, Eq)]
enum Content {
    Dir,
    File {
        size: u64,
        sha256: String,
        /// Every path in the tree sharing this inode, sorted.
        links: Vec<String>,
    },
    Symlink(PathBuf),
    Device(u64),
    Fifo,
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    /// `st_mode`: file type, permission and setuid/setgid/sticky bits.
    mode: u32,
    uid: u32,
    gid: u32,
    content: Content,
}

fn describe(node: &Node) -> String {
    format!(
        "mode {:o}, owner {}:{}, {:?}",
        node.mode, node.uid, node.gid, node.content
    )
}

/// Every entry below `root` (not `root` itself), by `/`-rooted path.
fn manifest(root: &Path) -> BTreeMap<String, Node> {
    let mut nodes = BTreeMap::new();
    let mut files = Vec::new();
    walk_tree(root, root, &mut nodes, &mut files);
    let mut groups: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    for (path, inode) in &files {
        groups.entry(*inode).or_default().push(path.clone());
    }
    for (path, inode) in &files {
        let mut paths = groups[inode].clone();
        paths.sort();
        if let Some(Node {
            content: Content::File { links, .. },
            ..
        }) = nodes.get_mut(path)
        {
            *links = paths;
        }
    }
    nodes
}

fn walk_tree(
    root: &Path,
    dir: &Path,
    nodes: &mut BTreeMap<String, Node>,
    files: &mut Vec<(String, (u64, u64))>,
) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read dir {}: {e:?}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read dir {}: {e:?}", dir.display()));
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e:?}", path.display()));
        let relative = path
            .strip_prefix(root)
            .expect("walked paths lie under the root");
        let name = format!("/{}", relative.display());
        let file_type = meta.file_type();
        let content = if file_type.is_dir() {
            Content::Dir
        } else if file_type.is_file() {
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e:?}", path.display()));
            files.push((name.clone(), (meta.dev(), meta.ino())));
            Content::File {
                size: meta.len(),
                sha256: ocidist_content::sha256_of(&data).to_string(),
                links: Vec::new(),
            }
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&path)
                .unwrap_or_else(|e| panic!("readlink {}: {e:?}", path.display()));
            Content::Symlink(target)
        } else if file_type.is_block_device() || file_type.is_char_device() {
            Content::Device(meta.rdev())
        } else if file_type.is_fifo() {
            Content::Fifo
        } else {
            // Sockets and the like: fstest skips them.
            continue;
        };
        nodes.insert(
            name,
            Node {
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                content,
            },
        );
        if file_type.is_dir() {
            walk_tree(root, &path, nodes, files);
        }
    }
}

/// containerd's `fstest.CheckDirectoryEqual`: `actual` holds exactly what
/// `expected` holds, nothing missing, nothing more, nothing different.
fn check_directory_equal(expected: &Path, actual: &Path) {
    let want = manifest(expected);
    let got = manifest(actual);
    let mut problems = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => problems.push(format!("{path}: missing; expected {}", describe(w))),
            Some(g) if g != w => problems.push(format!(
                "{path}: expected {}; found {}",
                describe(w),
                describe(g)
            )),
            Some(_) => {}
        }
    }
    for (path, g) in &got {
        if !want.contains_key(path) {
            problems.push(format!("{path}: unexpected {}", describe(g)));
        }
    }
    assert!(
        problems.is_empty(),
        "{} does not match {}:\n  {}",
        actual.display(),
        expected.display(),
        problems.join("\n  ")
    );
}

/// `fstest.CheckDirectoryEqualWithApplier`: `actual` holds exactly what
/// `layers`, applied in order to an empty directory, make.
fn check_directory_equal_with_ops(work: &Path, layers: &[&[Op]], actual: &Path) {
    let expected = scratch_dir(work, "expected");
    for ops in layers {
        apply_ops(&expected, ops);
    }
    check_directory_equal(&expected, actual);
    remove_tree(&expected);
}

// ---------------------------------------------------------------------------
// containerd's helpers.go: layer chains checked layer by layer.

/// `createSnapshot`: prepares a snapshot on `parent`, applies `ops` through
/// its mount, commits it under a new name. Returns the name and the ops that
/// took effect.
async fn create_snapshot<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    parent: Option<&str>,
    work: &Path,
    ops: &[Op],
) -> (String, Vec<Op>) {
    let name = format!("layer-{}", unique());
    let prepare = format!("{name}-prepare");
    let mounts = prepare_ok(snapshotter, &prepare, parent, gc_labels()).await;
    let dir = scratch_dir(work, "prepare");
    let mounted = Mounted::new(&mounts, &dir);
    let done = apply_ops(&dir, ops);
    mounted.unmount();
    remove_mount_point(&dir);
    // Only an overlay may refuse a directory rename (containerd skips the
    // case for overlayfs and fuse-overlayfs alone).
    assert!(
        done.len() == ops.len() || mounts.iter().any(|m| m.kind.contains("overlay")),
        "a rename was refused with EXDEV through {mounts:?}: only an overlay mount may refuse it"
    );
    commit_ok(snapshotter, &name, &prepare, gc_labels()).await;
    (name, done)
}

/// `checkSnapshot`: a view of `name`, mounted, equals `flat`; the view is
/// then removed.
async fn check_snapshot<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    work: &Path,
    name: &str,
    flat: &Path,
) {
    let view = format!("{name}-view");
    let mounts = view_ok(snapshotter, &view, Some(name), gc_labels()).await;
    let dir = scratch_dir(work, "check");
    let mounted = Mounted::new(&mounts, &dir);
    check_directory_equal(flat, &dir);
    mounted.unmount();
    remove_mount_point(&dir);
    remove_ok(snapshotter, &view).await;
}

/// `checkSnapshots`: commits one layer per entry of `layers`, each on the
/// previous; after each, a view of it must equal the layers so far applied to
/// an empty directory.
async fn check_snapshots<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path, layers: &[&[Op]]) {
    let flat = scratch_dir(work, "flat");
    let mut parent: Option<String> = None;
    for ops in layers {
        let (name, done) = create_snapshot(snapshotter, parent.as_deref(), work, ops).await;
        let replayed = apply_ops(&flat, &done);
        assert_eq!(
            replayed.len(),
            done.len(),
            "the reference tree refused a step the snapshot took"
        );
        check_snapshot(snapshotter, work, &name, &flat).await;
        parent = Some(name);
    }
    remove_tree(&flat);
}

// ---------------------------------------------------------------------------
// The cases.

/// Basic (`checkSnapshotterBasic`): prepare, fill through the mount, commit;
/// the active key is gone and the committed snapshot has no parent; a child
/// shows the parent's tree, takes changes (overwrite, add, `rm -rf` of a
/// directory) and commits with the right parent and kinds; walk returns
/// exactly what stat does; a view of the child shows both layers merged; a
/// parent cannot be removed while it has a child (FailedPrecondition, the
/// message mentioning "remove") and can once the child is gone.
pub async fn basic<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let initial = [
        create_file("/foo", b"foo\n", 0o777),
        create_dir("/a", 0o755),
        create_dir("/a/b", 0o755),
        create_dir("/a/b/c", 0o755),
    ];
    let diff = [
        create_file("/bar", b"bar\n", 0o777),
        create_file("/foo", b"bar\n", 0o777),
        remove_all("/a/b"),
    ];

    let (preparing, mounted) = prepare_mount(snapshotter, work, "preparing", None).await;
    apply_ops(Path::new(&preparing), &initial);
    mounted.unmount();

    let committed = key(work, "committed");
    commit_ok(snapshotter, &committed, &preparing, gc_labels()).await;
    let si = stat_ok(snapshotter, &committed).await;
    assert_eq!(si.parent, None, "parent of {committed:?}");
    assert_eq!(si.kind, Kind::Committed, "kind of {committed:?}");
    expect_error(
        snapshotter.stat(&preparing).await,
        ErrorKind::NotFound,
        "stat of an active key after its commit",
    );

    let (next, mounted) =
        prepare_mount(snapshotter, work, "nextlayer", Some(committed.as_str())).await;
    check_directory_equal_with_ops(work, &[&initial[..]], Path::new(&next));
    apply_ops(Path::new(&next), &diff);
    mounted.unmount();

    let ni = stat_ok(snapshotter, &next).await;
    assert_eq!(
        ni.parent.as_deref(),
        Some(committed.as_str()),
        "parent of {next:?}"
    );
    assert_eq!(ni.kind, Kind::Active, "kind of {next:?}");

    let committed_next = key(work, "committed-next");
    commit_ok(snapshotter, &committed_next, &next, gc_labels()).await;
    let si2 = stat_ok(snapshotter, &committed_next).await;
    assert_eq!(
        si2.parent.as_deref(),
        Some(committed.as_str()),
        "parent of {committed_next:?}"
    );
    assert_eq!(si2.kind, Kind::Committed, "kind of {committed_next:?}");
    expect_error(
        snapshotter.stat(&next).await,
        ErrorKind::NotFound,
        "stat of an active key after its commit",
    );

    let walked: HashMap<String, Info> = walk_ok(snapshotter, &[])
        .await
        .into_iter()
        .map(|info| (info.name.clone(), info))
        .collect();
    for expected in [&si, &si2] {
        let got = walked
            .get(&expected.name)
            .unwrap_or_else(|| panic!("walk did not return {:?}", expected.name));
        assert_eq!(
            got, expected,
            "walk and stat disagree on {:?}",
            expected.name
        );
    }

    let view_key = key_dir(work, "nextnextlayer");
    let mounts = view_ok(
        snapshotter,
        &view_key,
        Some(committed_next.as_str()),
        gc_labels(),
    )
    .await;
    let mounted = Mounted::new(&mounts, Path::new(&view_key));
    check_directory_equal_with_ops(work, &[&initial[..], &diff[..]], Path::new(&view_key));
    mounted.unmount();

    remove_ok(snapshotter, &view_key).await;
    let err = expect_error(
        snapshotter.remove(&committed).await,
        ErrorKind::FailedPrecondition,
        "remove of a snapshot with a child",
    );
    assert!(
        err.to_string().contains("remove"),
        "the error removing a parent should say \"remove\": {err:?}"
    );
    remove_ok(snapshotter, &committed_next).await;
    remove_ok(snapshotter, &committed).await;
}

/// StatActive (`checkSnapshotterStatActive`): a prepared, mounted and
/// unmounted snapshot stats as active, under its key, without a parent.
pub async fn stat_active<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let (preparing, mounted) = prepare_mount(snapshotter, work, "preparing", None).await;
    mounted.unmount();
    // After the unmount: this lands in the plain directory, not the snapshot.
    apply_ops(
        Path::new(&preparing),
        &[create_file("/foo", b"foo\n", 0o777)],
    );

    let si = stat_ok(snapshotter, &preparing).await;
    assert_eq!(si.name, preparing, "name");
    assert_eq!(si.kind, Kind::Active, "kind of {preparing:?}");
    assert_eq!(si.parent, None, "parent of {preparing:?}");
}

/// StatCommitted (`checkSnapshotterStatCommitted`, run as `StatComitted`): a
/// committed snapshot stats as committed, under its new name, without a
/// parent.
pub async fn stat_committed<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let (preparing, mounted) = prepare_mount(snapshotter, work, "preparing", None).await;
    mounted.unmount();
    apply_ops(
        Path::new(&preparing),
        &[create_file("/foo", b"foo\n", 0o777)],
    );

    let committed = key(work, "committed");
    commit_ok(snapshotter, &committed, &preparing, gc_labels()).await;
    let si = stat_ok(snapshotter, &committed).await;
    assert_eq!(si.name, committed, "name");
    assert_eq!(si.kind, Kind::Committed, "kind of {committed:?}");
    assert_eq!(si.parent, None, "parent of {committed:?}");
}

/// Transitivity (`checkSnapshotterTransitivity`, run as `TransitivityTest`):
/// B committed on A has parent A, A has none, and stat of B's parent is A's.
pub async fn transitivity<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let (preparing, mounted) = prepare_mount(snapshotter, work, "preparing", None).await;
    apply_ops(
        Path::new(&preparing),
        &[create_file("foo", b"foo\n", 0o777)],
    );
    mounted.unmount();
    let snap_a = key(work, "snapA");
    commit_ok(snapshotter, &snap_a, &preparing, gc_labels()).await;

    let (next, mounted) = prepare_mount(snapshotter, work, "next", Some(snap_a.as_str())).await;
    apply_ops(Path::new(&next), &[create_file("foo", b"foo bar\n", 0o777)]);
    mounted.unmount();
    let snap_b = key(work, "snapB");
    commit_ok(snapshotter, &snap_b, &next, gc_labels()).await;

    let si_a = stat_ok(snapshotter, &snap_a).await;
    let si_b = stat_ok(snapshotter, &snap_b).await;
    let parent_b = si_b
        .parent
        .clone()
        .unwrap_or_else(|| panic!("{snap_b:?} has no parent"));
    let si_parent_b = stat_ok(snapshotter, &parent_b).await;

    assert_eq!(si_a.parent, None, "parent of {snap_a:?}");
    assert_eq!(
        si_b.parent.as_deref(),
        Some(snap_a.as_str()),
        "parent of {snap_b:?}"
    );
    assert_eq!(si_parent_b.parent, None, "parent of {snap_b:?}'s parent");
}

/// PrepareViewFailing (`checkSnapshotterPrepareView`, run as
/// `PreareViewFailingtest`): a key in use by an active snapshot cannot be
/// used for a view, nor twice for prepare or view (AlreadyExists).
pub async fn prepare_view_failing<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let (preparing, mounted) = prepare_mount(snapshotter, work, "preparing", None).await;
    mounted.unmount();
    let snap_a = key(work, "snapA");
    commit_ok(snapshotter, &snap_a, &preparing, gc_labels()).await;
    let parent = Some(snap_a.as_str());

    let newlayer = key(work, "newlayer");
    prepare_ok(snapshotter, &newlayer, parent, gc_labels()).await;
    expect_error(
        snapshotter.view(&newlayer, parent, gc_labels()).await,
        ErrorKind::AlreadyExists,
        "view with the key of an active snapshot",
    );

    let prep_layer = key(work, "prepLayer");
    prepare_ok(snapshotter, &prep_layer, parent, gc_labels()).await;
    expect_error(
        snapshotter.prepare(&prep_layer, parent, gc_labels()).await,
        ErrorKind::AlreadyExists,
        "second prepare with one key",
    );

    let view_layer = key(work, "viewLayer");
    view_ok(snapshotter, &view_layer, parent, gc_labels()).await;
    expect_error(
        snapshotter.view(&view_layer, parent, gc_labels()).await,
        ErrorKind::AlreadyExists,
        "second view with one key",
    );
}

/// containerd's `baseTestSnapshots`: committed c1 and c2 (on c1), active a1
/// (on c2) and a2, views v1 (of c2) and v2.
async fn base_test_snapshots<S: Snapshotter + ?Sized>(snapshotter: &S) {
    prepare_ok(snapshotter, "c1-a", None, gc_labels()).await;
    commit_ok(snapshotter, "c1", "c1-a", gc_labels()).await;
    prepare_ok(snapshotter, "c2-a", Some("c1"), gc_labels()).await;
    commit_ok(snapshotter, "c2", "c2-a", gc_labels()).await;
    prepare_ok(snapshotter, "a1", Some("c2"), gc_labels()).await;
    prepare_ok(snapshotter, "a2", None, gc_labels()).await;
    view_ok(snapshotter, "v1", Some("c2"), gc_labels()).await;
    view_ok(snapshotter, "v2", None, gc_labels()).await;
}

/// Update (`checkUpdate`): for committed, active and view snapshots, created
/// equals updated at first (created is the commit time for committed ones);
/// update without fieldpaths replaces all labels, ignores a changed parent and
/// sets updated to now; `labels.KEY` sets one label (deleting it when absent
/// from the input) and leaves the rest; `labels` replaces them all; an empty
/// value deletes its label; any other fieldpath (`parent`) is InvalidArgument.
pub async fn update<S: Snapshotter + ?Sized>(snapshotter: &S, _work: &Path) {
    clear_umask();
    let t1 = SystemTime::now();
    base_test_snapshots(snapshotter).await;
    let t2 = SystemTime::now();

    let table = [
        ("c1", Kind::Committed, None),
        ("c2", Kind::Committed, Some("c1")),
        ("a1", Kind::Active, Some("c2")),
        ("a2", Kind::Active, None),
        ("v1", Kind::View, Some("c2")),
        ("v2", Kind::View, None),
    ];
    for (name, kind, parent) in table {
        let parent: Option<String> = parent.map(str::to_string);
        let mut st = stat_ok(snapshotter, name).await;
        assert_between(&format!("created time of {name}"), st.created, t1, t2);
        assert_eq!(
            st.created, st.updated,
            "{name}: a new snapshot's updated time must be its created time"
        );
        assert_eq!(st.kind, kind, "kind of {name}");
        assert_eq!(st.parent, parent, "parent of {name}");
        assert_eq!(st.name, name, "name of {name}");
        let created = st.created;

        let root_time = rfc3339(SystemTime::now());
        let expected = labels(&[
            ("l1", "v1"),
            ("l2", "v2"),
            ("l3", "v3"),
            (GC_ROOT, root_time.as_str()),
        ]);
        st.parent = Some("doesnotexist".to_string());
        st.labels = expected.clone();
        let u1 = SystemTime::now();
        st = update_ok(snapshotter, st, &[]).await;
        let u2 = SystemTime::now();
        assert_eq!(
            st.created, created,
            "{name}: update changed the created time"
        );
        assert_between(&format!("updated time of {name}"), st.updated, u1, u2);
        assert_eq!(st.kind, kind, "{name}: update changed the kind");
        assert_eq!(
            st.parent, parent,
            "{name}: update without fieldpaths must leave the parent alone"
        );
        assert_eq!(st.name, name, "{name}: update changed the name");
        assert_eq!(
            st.labels, expected,
            "{name}: update without fieldpaths must replace all labels"
        );

        st.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        st = update_ok(snapshotter, st, &["labels.l1", "labels.l2"]).await;
        let expected = labels(&[
            ("l1", "updated"),
            ("l3", "v3"),
            (GC_ROOT, root_time.as_str()),
        ]);
        assert_eq!(
            st.labels, expected,
            "{name}: labels.l1 must set l1, labels.l2 (absent) must delete l2, l4 must be ignored"
        );

        let expected = labels(&[("l4", "v4"), (GC_ROOT, root_time.as_str())]);
        st.labels = expected.clone();
        st = update_ok(snapshotter, st, &["labels"]).await;
        assert_eq!(
            st.labels, expected,
            "{name}: fieldpath labels must replace all labels"
        );

        st.labels = labels(&[("l4", ""), ("l5", "")]);
        st = update_ok(snapshotter, st, &["labels.l4", "labels.l5"]).await;
        let expected = labels(&[(GC_ROOT, root_time.as_str())]);
        assert_eq!(
            st.labels, expected,
            "{name}: an empty value must remove its label, and set none"
        );
        assert_eq!(stat_ok(snapshotter, name).await.labels, expected);

        st.parent = Some("doesnotexist".to_string());
        expect_error(
            snapshotter.update(st, &["parent"]).await,
            ErrorKind::InvalidArgument,
            &format!("update of {name} with fieldpath parent"),
        );
    }
}

/// Remove (`checkRemove`): a removed key can be reused, as a view and as a
/// parentless active snapshot; a parent without children can be removed; a
/// removed committed name can be committed again.
pub async fn remove<S: Snapshotter + ?Sized>(snapshotter: &S, _work: &Path) {
    clear_umask();
    prepare_ok(snapshotter, "committed-a", None, gc_labels()).await;
    commit_ok(snapshotter, "committed-1", "committed-a", gc_labels()).await;
    prepare_ok(snapshotter, "reuse-1", Some("committed-1"), gc_labels()).await;
    remove_ok(snapshotter, "reuse-1").await;
    view_ok(snapshotter, "reuse-1", Some("committed-1"), gc_labels()).await;
    remove_ok(snapshotter, "reuse-1").await;
    prepare_ok(snapshotter, "reuse-1", None, gc_labels()).await;
    remove_ok(snapshotter, "committed-1").await;
    commit_ok(snapshotter, "committed-1", "reuse-1", gc_labels()).await;
}

/// Walks with `filters`; the names must be `expected` in any order.
async fn check_walk<S: Snapshotter + ?Sized>(snapshotter: &S, filters: &[&str], expected: &[&str]) {
    let mut names: Vec<String> = walk_ok(snapshotter, filters)
        .await
        .into_iter()
        .map(|info| info.name)
        .collect();
    names.sort();
    let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected, "walk with filters {filters:?}");
}

/// Walk (`checkWalk`): containerd's filters over eight snapshots: by label
/// value and presence, kind, name, parent (`parent!=""` excludes parentless
/// ones), selectors in one filter are ANDed, separate filters ORed; a
/// committed snapshot has exactly the labels given at commit.
pub async fn walk<S: Snapshotter + ?Sized>(snapshotter: &S, _work: &Path) {
    clear_umask();
    let opt = labels(&[(GC_ROOT, "check-walk")]);
    let with_l = |l: &str| labels(&[("l", l), (GC_ROOT, "check-walk")]);
    prepare_ok(snapshotter, "a-np", None, opt.clone()).await;
    prepare_ok(snapshotter, "p-tmp", None, opt.clone()).await;
    commit_ok(snapshotter, "p", "p-tmp", opt.clone()).await;
    prepare_ok(snapshotter, "a", Some("p"), opt.clone()).await;
    view_ok(snapshotter, "v", Some("p"), opt.clone()).await;
    prepare_ok(snapshotter, "p-wl-tmp", None, opt).await;
    commit_ok(snapshotter, "p-wl", "p-wl-tmp", with_l("1")).await;
    prepare_ok(snapshotter, "a-wl", Some("p-wl"), with_l("2")).await;
    view_ok(snapshotter, "v-wl", Some("p-wl"), with_l("3")).await;
    prepare_ok(snapshotter, "a-np-wl", None, with_l("2")).await;

    let gc = r#"labels."containerd.io/gc.root"==check-walk"#;
    check_walk(
        snapshotter,
        &[gc],
        &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
    )
    .await;
    check_walk(
        snapshotter,
        &[format!("kind==active,{gc}").as_str()],
        &["a-np", "a", "a-wl", "a-np-wl"],
    )
    .await;
    check_walk(
        snapshotter,
        &[format!("kind==view,{gc}").as_str()],
        &["v", "v-wl"],
    )
    .await;
    check_walk(
        snapshotter,
        &[format!("kind==committed,{gc}").as_str()],
        &["p", "p-wl"],
    )
    .await;
    check_walk(
        snapshotter,
        &["name==p", "name==a-np-wl"],
        &["p", "a-np-wl"],
    )
    .await;
    check_walk(snapshotter, &["name==a-wl,labels.l"], &["a-wl"]).await;
    check_walk(snapshotter, &["parent==p"], &["a", "v"]).await;
    check_walk(
        snapshotter,
        &[format!(r#"parent!="",{gc}"#).as_str()],
        &["a", "v", "a-wl", "v-wl"],
    )
    .await;
    check_walk(
        snapshotter,
        &["labels.l"],
        &["p-wl", "a-wl", "v-wl", "a-np-wl"],
    )
    .await;
    check_walk(snapshotter, &["labels.l==2"], &["a-wl", "a-np-wl"]).await;
}

/// LayerFileUpdate (`checkLayerFileUpdate`, run as `LayerFileupdate`): a file
/// rewritten with same-size content, and one whose mode alone changes, show
/// their new content and mode in the child layer; five fresh chains, each but
/// the first started on a new wall-clock second (catching change detection
/// that relies on mtimes).
pub async fn layer_file_update<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let l1 = [
        create_dir("/etc", 0o700),
        create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o644),
    ];
    let l2 = [
        create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
        create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
        create_dir("/root", 0o700),
        create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    for run in 0..5 {
        if run > 0 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            tokio::time::sleep(Duration::from_nanos(u64::from(1_000_000_000 - nanos))).await;
        }
        check_snapshots(snapshotter, work, &[&l1[..], &l2[..]]).await;
    }
}

/// RemoveDirectoryInLowerLayer: a directory removed and recreated in a child
/// hides the lower layer's files (opaque), and stays so in a grandchild that
/// adds a file to it.
pub async fn remove_directory_in_lower_layer<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    work: &Path,
) {
    clear_umask();
    let l1 = [
        create_dir("/lib", 0o700),
        create_file("/lib/hidden", b"", 0o644),
    ];
    let l2 = [
        remove_all("/lib"),
        create_dir("/lib", 0o700),
        create_file("/lib/not-hidden", b"", 0o644),
    ];
    let l3 = [create_file("/lib/newfile", b"", 0o644)];
    check_snapshots(snapshotter, work, &[&l1[..], &l2[..], &l3[..]]).await;
}

/// Chown: ownership changed (to 1:1) on directories and a file of a lower
/// layer shows in the child, modes and content unchanged.
pub async fn chown<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let l1 = [
        create_dir("/opt", 0o700),
        create_dir("/opt/a", 0o700),
        create_dir("/opt/a/b", 0o700),
        create_file("/opt/a/b/file.txt", b"hello", 0o644),
    ];
    let l2 = [
        chown_to("/opt", 1, 1),
        chown_to("/opt/a", 1, 1),
        chown_to("/opt/a/b", 1, 1),
        chown_to("/opt/a/b/file.txt", 1, 1),
    ];
    check_snapshots(snapshotter, work, &[&l1[..], &l2[..]]).await;
}

/// DirectoryPermissionOnCommit: owners survive commit across three layers:
/// chown back to root, chown of a lower directory and file, a directory
/// removed and then recreated (empty) with its old owner.
pub async fn directory_permission_on_commit<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let l1 = [
        create_dir("/dir1", 0o700),
        create_dir("/dir2", 0o700),
        create_dir("/dir3", 0o700),
        create_dir("/dir4", 0o700),
        create_file("/dir4/f1", b"...", 0o644),
        create_dir("/dir5", 0o700),
        create_file("/dir5/f1", b"...", 0o644),
        chown_to("/dir1", 1, 1),
        chown_to("/dir2", 1, 1),
        chown_to("/dir3", 1, 1),
        chown_to("/dir5", 1, 1),
        chown_to("/dir5/f1", 1, 1),
    ];
    let l2 = [
        chown_to("/dir2", 0, 0),
        remove_all("/dir3"),
        chown_to("/dir4", 1, 1),
        chown_to("/dir4/f1", 1, 1),
    ];
    let l3 = [
        create_dir("/dir3", 0o700),
        chown_to("/dir3", 1, 1),
        remove_all("/dir5"),
        create_dir("/dir5", 0o700),
        chown_to("/dir5", 1, 1),
    ];
    check_snapshots(snapshotter, work, &[&l1[..], &l2[..], &l3[..]]).await;
}

/// RemoveIntermediateSnapshot (`checkRemoveIntermediateSnapshot`): a committed
/// snapshot in the middle of a chain cannot be removed while the top exists
/// (FailedPrecondition); top down, all three can.
pub async fn remove_intermediate_snapshot<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let (base, mounted) = prepare_mount(snapshotter, work, "base", None).await;
    mounted.unmount();
    let committed_base = key(work, "committed-base");
    commit_ok(snapshotter, &committed_base, &base, gc_labels()).await;

    let intermediate = key(work, "intermediate");
    prepare_ok(
        snapshotter,
        &intermediate,
        Some(committed_base.as_str()),
        gc_labels(),
    )
    .await;
    let committed_inter = key(work, "committed-inter");
    commit_ok(snapshotter, &committed_inter, &intermediate, gc_labels()).await;

    let top = key(work, "toplayer");
    prepare_ok(
        snapshotter,
        &top,
        Some(committed_inter.as_str()),
        gc_labels(),
    )
    .await;

    expect_error(
        snapshotter.remove(&committed_inter).await,
        ErrorKind::FailedPrecondition,
        "remove of an intermediate snapshot with a child",
    );
    remove_ok(snapshotter, &top).await;
    remove_ok(snapshotter, &committed_inter).await;
    remove_ok(snapshotter, &committed_base).await;
}

/// DeletedFilesInChildSnapshot: a file deleted in a child stays deleted in a
/// grandchild that changes nothing.
pub async fn deleted_files_in_child_snapshot<S: Snapshotter + ?Sized>(
    snapshotter: &S,
    work: &Path,
) {
    clear_umask();
    let l1 = [
        create_file("/foo", b"foo\n", 0o777),
        create_file("/foobar", b"foobar\n", 0o777),
    ];
    let l2 = [remove_all("/foobar")];
    let l3: [Op; 0] = [];
    check_snapshots(snapshotter, work, &[&l1[..], &l2[..], &l3[..]]).await;
}

/// MoveFileFromLowerLayer (`checkFileFromLowerLayer`): in a child, a lower
/// directory removed, a lower file hardlinked to a new directory and its
/// old name removed: the child has the new link (a single-link file), an
/// empty old directory, and neither the removed directory nor the old name.
pub async fn move_file_from_lower_layer<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let l1 = [
        create_dir("/dir1", 0o700),
        create_file("/dir1/f1", b"Hello", 0o644),
        create_dir("dir2", 0o700),
        create_file("dir2/f2", b"...", 0o644),
    ];
    let l2 = [
        create_dir("/dir3", 0o700),
        create_file("/dir3/f1", b"Hello", 0o644),
        remove_all("/dir1"),
        hard_link("dir2/f2", "dir3/f2"),
        remove_all("dir2/f2"),
    ];
    check_snapshots(snapshotter, work, &[&l1[..], &l2[..]]).await;
}

/// ViewReadonly (`checkSnapshotterViewReadonly`): writing into a mounted
/// view fails; the view and its parent can then be removed.
pub async fn view_readonly<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let preparing = key(work, "preparing");
    prepare_ok(snapshotter, &preparing, None, gc_labels()).await;
    let committed = key(work, "committed");
    commit_ok(snapshotter, &committed, &preparing, gc_labels()).await;

    let view = key(work, "view");
    let mounts = view_ok(snapshotter, &view, Some(committed.as_str()), gc_labels()).await;
    let target = key_dir(work, "view-mount");
    let mounted = Mounted::new(&mounts, Path::new(&target));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o777)
        .open(Path::new(&target).join("testfile"))
        .and_then(|mut f| f.write_all(b"testcontent"));
    mounted.unmount();
    assert!(
        written.is_err(),
        "writing into the mounted view {view:?} succeeded; a view must be read-only"
    );

    remove_ok(snapshotter, &view).await;
    remove_ok(snapshotter, &committed).await;
}

/// StatInWalk (`checkStatInWalk`): every snapshot walk returns stats the same
/// (kind, name, parent, labels, created, updated), also while a walk runs
/// concurrently (containerd calls stat from inside the walk callback, which
/// must not deadlock).
pub async fn stat_in_walk<S: Snapshotter + ?Sized>(snapshotter: &S, _work: &Path) {
    clear_umask();
    let prefix = "stats-in-walk-";
    let name = |n: &str| format!("{prefix}{n}");
    prepare_ok(snapshotter, &name("c1-a"), None, gc_labels()).await;
    commit_ok(snapshotter, &name("c1"), &name("c1-a"), gc_labels()).await;
    prepare_ok(
        snapshotter,
        &name("c2-a"),
        Some(name("c1").as_str()),
        gc_labels(),
    )
    .await;
    commit_ok(snapshotter, &name("c2"), &name("c2-a"), gc_labels()).await;
    prepare_ok(
        snapshotter,
        &name("a1"),
        Some(name("c2").as_str()),
        gc_labels(),
    )
    .await;
    view_ok(
        snapshotter,
        &name("v1"),
        Some(name("c2").as_str()),
        gc_labels(),
    )
    .await;

    let mut seen = Vec::new();
    for si in walk_ok(snapshotter, &[]).await {
        if !si.name.starts_with(prefix) {
            continue;
        }
        let (si2, walked) = tokio::join!(snapshotter.stat(&si.name), snapshotter.walk(&[]));
        let si2 = si2.unwrap_or_else(|e| panic!("stat {:?} during a walk: {e:?}", si.name));
        walked.unwrap_or_else(|e| panic!("walk during a stat of {:?}: {e:?}", si.name));
        assert_eq!(si, si2, "walk and stat disagree on {:?}", si.name);
        seen.push(si.name);
    }
    seen.sort();
    let mut expected: Vec<String> = ["c1", "c2", "a1", "v1"].into_iter().map(name).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "walk without filters must return every snapshot"
    );
}

/// CloseTwice (`closeTwice`): after some work, close succeeds, and again.
pub async fn close_twice<S: Snapshotter + ?Sized>(snapshotter: &S, _work: &Path) {
    clear_umask();
    let n = format!("closeTwice-{}", unique());
    let prepare = format!("{n}-prepare");
    prepare_ok(snapshotter, &prepare, None, gc_labels()).await;
    commit_ok(snapshotter, &n, &prepare, gc_labels()).await;
    remove_ok(snapshotter, &n).await;
    snapshotter.close().await.expect("first close");
    snapshotter.close().await.expect("second close");
}

/// RootPermission (`checkRootPermission`): with umask 0, the mounted root of
/// a new parentless snapshot has mode 0755.
pub async fn root_permission<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let (preparing, mounted) = prepare_mount(snapshotter, work, "preparing", None).await;
    let mode = std::fs::metadata(Path::new(&preparing))
        .unwrap_or_else(|e| panic!("stat {preparing}: {e:?}"))
        .mode()
        & 0o777;
    mounted.unmount();
    assert_eq!(
        mode, 0o755,
        "the root of a new snapshot has mode {mode:o}, want 755"
    );
}

/// Rename (`checkRename`): in a child, a file renamed over a lower file and
/// a lower file renamed show as renamed, with no trace of the old names. The
/// rename of a lower directory is attempted too; overlayfs without
/// `redirect_dir` refuses it with EXDEV, which counts as containerd's skip
/// for overlay snapshotters (the directory then keeps its old name); through
/// any other mount it must show as renamed.
pub async fn rename<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let l1 = [
        create_dir("/dir1", 0o700),
        create_dir("/somefiles", 0o700),
        create_file("/somefiles/f1", b"was here first!", 0o644),
        create_file("/somefiles/f2", b"nothing interesting", 0o644),
    ];
    let l2 = [
        rename_dir_or_exdev("/dir1", "/dir2"),
        create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
        rename_path("/somefiles/f1-overwrite", "/somefiles/f1"),
        rename_path("/somefiles/f2", "/somefiles/f3"),
    ];
    check_snapshots(snapshotter, work, &[&l1[..], &l2[..]]).await;
}

/// The applier of layer `i` of [`mount_128_layers`].
fn layer_of_128(i: usize) -> Vec<Op> {
    if i == 0 {
        return vec![
            create_file("/bottom", b"way at the bottom\n", 0o777),
            create_file("/overwriteme", b"FIRST!\n", 0o777),
            create_dir("/addhere", 0o755),
            create_dir("/onlyme", 0o755),
            create_file("/onlyme/bottom", b"bye!\n", 0o777),
        ];
    }
    vec![
        create_file("/overwriteme", format!("{i} WAS HERE!\n").as_bytes(), 0o777),
        create_file(&format!("/addhere/file-{i}"), b"same\n", 0o755),
        remove_all("/onlyme"),
        create_dir("/onlyme", 0o755),
        create_file(&format!("/onlyme/file-{i}"), b"only me!\n", 0o777),
    ]
}

/// 128LayersMount (`check128LayersMount`): a chain of 128 layers, each
/// prepared on the previous one, must show the layers below before and the
/// change after it is applied through the mount (overwrites, files added to
/// a directory, a directory replaced); a view of the top mounts all 128
/// (for overlay, a lower directory list longer than a page).
pub async fn mount_128_layers<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let flat = work.join("flat");
    std::fs::create_dir(&flat).unwrap_or_else(|e| panic!("mkdir {}: {e:?}", flat.display()));
    let mut parent: Option<String> = None;
    for i in 0..128 {
        let ops = layer_of_128(i);
        let prepare = key_dir(work, &format!("prepare-layer-{i}"));
        let mounts = prepare_ok(snapshotter, &prepare, parent.as_deref(), gc_labels()).await;
        let mounted = Mounted::new(&mounts, Path::new(&prepare));
        check_directory_equal(&flat, Path::new(&prepare));
        apply_ops(&flat, &ops);
        apply_ops(Path::new(&prepare), &ops);
        check_directory_equal(&flat, Path::new(&prepare));
        mounted.unmount();

        let committed = key(work, &format!("committed-{i}"));
        commit_ok(snapshotter, &committed, &prepare, gc_labels()).await;
        parent = Some(committed);
    }

    let full = key_dir(work, "fullview");
    let mounts = view_ok(snapshotter, &full, parent.as_deref(), gc_labels()).await;
    let mounted = Mounted::new(&mounts, Path::new(&full));
    check_directory_equal(&flat, Path::new(&full));
    mounted.unmount();
}

/// ApplyOnlyPrepare (ours, not containerd's): a snapshot prepared with
/// [`APPLY_ONLY_LABEL`](crate::APPLY_ONLY_LABEL) and written only by
/// [`apply_layer`](crate::apply::apply_layer) through its mount holds the
/// layer's changes — a file replaced with new bytes and mode, one whited
/// out, a hardlink to a lower file, a directory's mode changed, a directory
/// made opaque — and its parent keeps exactly its own tree, hardlinks
/// included. (The new hardlink's target has no other link: through an
/// overlay mount without `index=on`, linking to one of a lower hardlink
/// group splits the group, which is overlayfs's rule, not the snapshotter's.) A snapshotter
/// that ignores the hint passes; one that shares its parent's files must
/// share them safely.
pub async fn apply_only_prepare<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let lower = [
        create_dir("/etc", 0o755),
        create_file("/etc/kept", b"kept", 0o644),
        create_file("/etc/replaced", b"old", 0o644),
        create_file("/etc/gone", b"gone", 0o644),
        hard_link("/etc/kept", "/etc/kept-link"),
        create_file("/etc/single", b"single", 0o644),
        create_dir("/opq", 0o755),
        create_file("/opq/old", b"old", 0o644),
    ];
    // The layer, and what it does to a tree.
    let layer = tar_of(&[
        Entry::File("etc/replaced", b"new", 0o600),
        Entry::File("etc/.wh.gone", b"", 0o644),
        Entry::Hardlink("etc/late-link", "etc/single", 0o644, 0, 0),
        Entry::Dir("etc", 0o700),
        Entry::File("opq/.wh..wh..opq", b"", 0o644),
        Entry::File("opq/new", b"new", 0o644),
    ]);
    let upper = [
        create_file("/etc/replaced", b"new", 0o600),
        remove_all("/etc/gone"),
        hard_link("/etc/single", "/etc/late-link"),
        create_dir("/etc", 0o700),
        remove_all("/opq/old"),
        create_file("/opq/new", b"new", 0o644),
    ];

    let (parent, _) = create_snapshot(snapshotter, None, work, &lower).await;
    let key = format!("apply-only-{}", unique());
    let mut hint = gc_labels();
    hint.insert(crate::APPLY_ONLY_LABEL.to_string(), "true".to_string());
    let mounts = prepare_ok(snapshotter, &key, Some(&parent), hint).await;
    let dir = scratch_dir(work, "apply");
    let mounted = Mounted::new(&mounts, &dir);
    crate::apply::apply_layer(
        &mount::ApplyTarget::Tree(dir.clone()),
        std::io::Cursor::new(layer),
        None,
        crate::apply::ApplyOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("apply the layer through {}: {e:?}", dir.display()));
    mounted.unmount();
    remove_mount_point(&dir);
    let name = format!("applied-{}", unique());
    commit_ok(snapshotter, &name, &key, gc_labels()).await;

    let flat = scratch_dir(work, "flat");
    apply_ops(&flat, &lower);
    check_snapshot(snapshotter, work, &parent, &flat).await;
    apply_ops(&flat, &upper);
    check_snapshot(snapshotter, work, &name, &flat).await;
    remove_tree(&flat);
}

/// The [`Snapshotter`] contract's errors, each of the kind the trait names
/// (containerd's metadata store's): a key in use (of any kind) is
/// `AlreadyExists`, whatever its parent; a parent that is missing
/// `NotFound`, one that is active or a view `InvalidArgument`; committing
/// anything but an active snapshot `FailedPrecondition`, onto a name in use
/// `AlreadyExists` (whatever the key); a missing key `NotFound` for every
/// call that names one; an unknown field path, an empty name or a label
/// over 4096 bytes `InvalidArgument`; removing a parent a view stands on
/// `FailedPrecondition`. Also: an empty parent is none, a commit replaces
/// the labels, a view's usage is zero. Nothing a refused call names is left
/// behind.
pub async fn contract_errors<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    let s = snapshotter;
    let active = key(work, "active");
    let missing = key(work, "missing");
    s.prepare(&active, None, Labels::new())
        .await
        .unwrap_or_else(|e| panic!("prepare {active:?}: {e:?}"));
    expect_error(
        s.prepare(&active, None, Labels::new()).await,
        ErrorKind::AlreadyExists,
        "prepare of an active key",
    );
    let refused = key(work, "refused");
    expect_error(
        s.prepare(&refused, Some(&active), Labels::new()).await,
        ErrorKind::InvalidArgument,
        "prepare on a parent that is not committed",
    );
    expect_error(
        s.prepare(&active, Some(&missing), Labels::new()).await,
        ErrorKind::AlreadyExists,
        "prepare of an active key on a missing parent",
    );
    let oversized = Labels::from([("big".to_string(), "x".repeat(4094))]);
    expect_error(
        s.prepare(&refused, None, oversized.clone()).await,
        ErrorKind::InvalidArgument,
        "prepare with a label over 4096 bytes",
    );
    expect_error(
        s.prepare(&refused, Some(&missing), Labels::new()).await,
        ErrorKind::NotFound,
        "prepare on a missing parent",
    );
    expect_error(
        s.view(&refused, Some(&missing), Labels::new()).await,
        ErrorKind::NotFound,
        "view of a missing parent",
    );
    expect_error(
        s.stat(&refused).await,
        ErrorKind::NotFound,
        "stat of a key whose prepare was refused",
    );

    let committed = key(work, "committed");
    commit_ok(s, &committed, &active, Labels::new()).await;
    expect_error(
        s.commit(&key(work, "again"), &committed, Labels::new())
            .await,
        ErrorKind::FailedPrecondition,
        "commit of a committed snapshot",
    );
    expect_error(
        s.prepare(&committed, None, Labels::new()).await,
        ErrorKind::AlreadyExists,
        "prepare of a committed name",
    );
    let view = key(work, "view");
    s.view(&view, Some(&committed), Labels::new())
        .await
        .unwrap_or_else(|e| panic!("view {view:?}: {e:?}"));
    expect_error(
        s.commit(&key(work, "from-view"), &view, Labels::new())
            .await,
        ErrorKind::FailedPrecondition,
        "commit of a view",
    );
    expect_error(
        s.prepare(&refused, Some(&view), Labels::new()).await,
        ErrorKind::InvalidArgument,
        "prepare on a view",
    );
    let usage = s
        .usage(&view)
        .await
        .unwrap_or_else(|e| panic!("usage {view:?}: {e:?}"));
    assert_eq!((usage.size, usage.inodes), (0, 0), "a view's usage");
    expect_error(
        s.remove(&committed).await,
        ErrorKind::FailedPrecondition,
        "remove of a committed snapshot a view stands on",
    );
    expect_error(
        s.commit(&committed, &missing, Labels::new()).await,
        ErrorKind::AlreadyExists,
        "commit of a missing key onto a name in use",
    );

    // A commit's labels replace the active snapshot's; an empty parent is
    // none.
    let labelled = key(work, "labelled");
    let prepared = Labels::from([("x".to_string(), "1".to_string())]);
    s.prepare(&labelled, Some(""), prepared)
        .await
        .unwrap_or_else(|e| panic!("prepare {labelled:?} on \"\": {e:?}"));
    let relabelled = key(work, "relabelled");
    commit_ok(s, &relabelled, &labelled, Labels::new()).await;
    let info = stat_ok(s, &relabelled).await;
    assert_eq!((info.parent, info.labels), (None, Labels::new()));
    s.remove(&relabelled)
        .await
        .unwrap_or_else(|e| panic!("remove {relabelled:?}: {e:?}"));
    let other = key(work, "other");
    s.prepare(&other, None, Labels::new())
        .await
        .unwrap_or_else(|e| panic!("prepare {other:?}: {e:?}"));
    expect_error(
        s.commit(&committed, &other, Labels::new()).await,
        ErrorKind::AlreadyExists,
        "commit onto a name in use",
    );
    assert_eq!(
        stat_ok(s, &other).await.kind,
        Kind::Active,
        "a refused commit leaves its key active"
    );

    expect_error(
        s.stat(&missing).await,
        ErrorKind::NotFound,
        "stat of a missing key",
    );
    expect_error(
        s.usage(&missing).await,
        ErrorKind::NotFound,
        "usage of a missing key",
    );
    expect_error(
        s.mounts(&missing).await,
        ErrorKind::NotFound,
        "mounts of a missing key",
    );
    expect_error(
        s.remove(&missing).await,
        ErrorKind::NotFound,
        "remove of a missing key",
    );
    let mut info = stat_ok(s, &committed).await;
    info.name = missing.clone();
    expect_error(
        s.update(info, &[]).await,
        ErrorKind::NotFound,
        "update of a missing key",
    );
    let info = stat_ok(s, &committed).await;
    expect_error(
        s.update(info.clone(), &["parent"]).await,
        ErrorKind::InvalidArgument,
        "update of a field that is not labels",
    );
    expect_error(
        s.update(
            Info {
                labels: oversized,
                ..info.clone()
            },
            &[],
        )
        .await,
        ErrorKind::InvalidArgument,
        "update with a label over 4096 bytes",
    );
    expect_error(
        s.update(
            Info {
                name: String::new(),
                ..info
            },
            &[],
        )
        .await,
        ErrorKind::InvalidArgument,
        "update of an empty name",
    );

    for key in [&view, &other, &committed] {
        s.remove(key)
            .await
            .unwrap_or_else(|e| panic!("remove {key:?}: {e:?}"));
    }
    let left = s.walk(&[]).await.unwrap_or_else(|e| panic!("walk: {e:?}"));
    assert!(left.is_empty(), "nothing left: {left:?}");
}

/// `mounts` of an active snapshot or a view gives what its prepare or view
/// gave, and keeps giving it.
pub async fn mounts_are_what_prepare_gave<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    let s = snapshotter;
    let (base, parent) = (key(work, "base"), key(work, "layer"));
    s.prepare(&base, None, Labels::new())
        .await
        .unwrap_or_else(|e| panic!("prepare {base:?}: {e:?}"));
    commit_ok(s, &parent, &base, Labels::new()).await;
    let active = key(work, "active");
    let view = key(work, "view");
    let prepared = s
        .prepare(&active, Some(&parent), Labels::new())
        .await
        .unwrap_or_else(|e| panic!("prepare {active:?}: {e:?}"));
    let viewed = s
        .view(&view, Some(&parent), Labels::new())
        .await
        .unwrap_or_else(|e| panic!("view {view:?}: {e:?}"));
    for (key, gave) in [(&active, &prepared), (&view, &viewed)] {
        for _ in 0..2 {
            let again = s
                .mounts(key)
                .await
                .unwrap_or_else(|e| panic!("mounts {key:?}: {e:?}"));
            assert_eq!(&again, gave, "mounts of {key:?}");
        }
    }
    assert!(
        viewed.iter().any(Mount::is_readonly),
        "a view mounts read-only: {viewed:?}"
    );
}

/// Rebase (containerd's `TestOverlayCommit`), for a snapshotter that
/// [`can_rebase`](Snapshotter::can_rebase): a snapshot prepared with no
/// parent commits onto one (and a view of it shows both), or onto none; one
/// prepared on a parent commits onto that parent or with none given; another
/// parent is [`ErrorKind::InvalidArgument`], an active one
/// [`ErrorKind::FailedPrecondition`], a missing one [`ErrorKind::NotFound`].
/// A snapshotter that cannot rebase refuses any parent at commit with
/// [`ErrorKind::Unimplemented`], and commits without one.
pub async fn rebase<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    clear_umask();
    let s = snapshotter;
    let base_layer = [create_file("/foo", b"hi", 0o660)];
    let (base, _) = create_snapshot(s, None, work, &base_layer).await;
    let active_parent = key(work, "active-parent");
    prepare_ok(s, &active_parent, None, Labels::new()).await;
    let commit_onto = |name: String, key: String, parent: &str| {
        let opts = crate::CommitOpts {
            labels: Labels::new(),
            parent: (!parent.is_empty()).then(|| parent.to_string()),
        };
        async move { s.commit_with(&name, &key, opts).await }
    };

    if !s.can_rebase() {
        let key = key(work, "no-rebase");
        prepare_ok(s, &key, None, Labels::new()).await;
        expect_error(
            commit_onto(key.clone() + "-c", key.clone(), &base).await,
            ErrorKind::Unimplemented,
            "a parent at commit, without rebase",
        );
        commit_onto(key.clone() + "-c", key, "")
            .await
            .unwrap_or_else(|e| panic!("commit with no parent: {e:?}"));
        return;
    }

    let cases: [(&str, &str, Option<ErrorKind>); 7] = [
        ("", "", None),
        ("", &base, None),
        (&base, &base, None),
        (&base, "", None),
        (&base, "new", Some(ErrorKind::InvalidArgument)),
        ("", &active_parent, Some(ErrorKind::FailedPrecondition)),
        ("", "missing", Some(ErrorKind::NotFound)),
    ];
    for (i, (old_parent, new_parent, want)) in cases.into_iter().enumerate() {
        let key = key(work, &format!("test-{i}"));
        let name = format!("rebased-{i}-{}", unique());
        let old = (!old_parent.is_empty()).then_some(old_parent);
        prepare_ok(s, &key, old, Labels::new()).await;
        let what = format!("prepared on {old_parent:?}, committed onto {new_parent:?}");
        let result = commit_onto(name.clone(), key.clone(), new_parent).await;
        match want {
            Some(kind) => {
                expect_error(result, kind, &what);
                let still = stat_ok(s, &key).await;
                assert_eq!(still.kind, Kind::Active, "{what}: the key stays active");
            }
            None => {
                result.unwrap_or_else(|e| panic!("{what}: {e:?}"));
                let want_parent = [new_parent, old_parent].into_iter().find(|p| !p.is_empty());
                assert_eq!(
                    stat_ok(s, &name).await.parent.as_deref(),
                    want_parent,
                    "{what}"
                );
            }
        }
    }

    // What a rebased snapshot shows: its parent's files and its own.
    let own = [create_file("/bar", b"there", 0o644)];
    let (unparented, done) = {
        let name = format!("own-{}", unique());
        let prepare = key(work, &format!("{name}-prepare"));
        let mounts = prepare_ok(s, &prepare, None, gc_labels()).await;
        let dir = scratch_dir(work, "prepare");
        let mounted = Mounted::new(&mounts, &dir);
        let done = apply_ops(&dir, &own);
        mounted.unmount();
        remove_mount_point(&dir);
        (prepare, done)
    };
    let rebased = format!("rebased-{}", unique());
    commit_onto(rebased.clone(), unparented, &base)
        .await
        .unwrap_or_else(|e| panic!("rebase onto {base:?}: {e:?}"));
    let flat = scratch_dir(work, "flat");
    apply_ops(&flat, &base_layer);
    apply_ops(&flat, &done);
    check_snapshot(s, work, &rebased, &flat).await;
    remove_tree(&flat);
}

/// `usage` of an active snapshot counts what was written into it: a file's
/// blocks and inode, a hard link to it not twice.
pub async fn usage_of_what_was_written<S: Snapshotter + ?Sized>(snapshotter: &S, work: &Path) {
    let s = snapshotter;
    let (active, mounted) = prepare_mount(s, work, "active", None).await;
    let before = s
        .usage(&active)
        .await
        .unwrap_or_else(|e| panic!("usage {active:?}: {e:?}"));
    // The key is the directory it is mounted at.
    let root = Path::new(&active);
    let data = vec![7u8; 1 << 20];
    std::fs::write(root.join("one"), &data).unwrap_or_else(|e| panic!("write: {e:?}"));
    std::fs::hard_link(root.join("one"), root.join("two"))
        .unwrap_or_else(|e| panic!("link: {e:?}"));
    let file = std::fs::File::open(root.join("one")).unwrap_or_else(|e| panic!("open: {e:?}"));
    file.sync_all().unwrap_or_else(|e| panic!("fsync: {e:?}"));
    mounted.unmount();
    let after = s
        .usage(&active)
        .await
        .unwrap_or_else(|e| panic!("usage {active:?}: {e:?}"));
    assert_eq!(after.inodes, before.inodes + 1, "one inode, linked twice");
    let grew = after.size - before.size;
    assert!(
        (1 << 20..2 << 20).contains(&grew),
        "1 MiB written, counted once: grew by {grew} bytes"
    );
}
