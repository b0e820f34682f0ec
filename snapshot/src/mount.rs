//! Mounts: how a snapshot becomes a directory.
//!
//! A snapshotter describes a snapshot as a list of [`Mount`]s (containerd's
//! model). [`mount_all`] performs them with `mount(2)` (root only);
//! [`writable_dir`] and [`ApplyTarget::from_mounts`] read them for callers that
//! write into a snapshot without mounting it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::{Error, Result};

/// One mount: `mount -t KIND -o OPTIONS SOURCE TARGET`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// The filesystem type: `bind` or `overlay` from this crate's
    /// snapshotters; anything `mount(2)` takes from another's (`ext4`,
    /// `btrfs`, `none` with `rbind`), which [`mount_all`] mounts and
    /// [`unpack`](crate::unpack()) applies layers through.
    pub kind: String,
    /// The source: a directory for `bind`, `overlay` for overlays, a device
    /// or directory for other kinds.
    pub source: PathBuf,
    /// Options, as `mount -o` takes them (`ro`, `rbind`, `lowerdir=…`).
    pub options: Vec<String>,
}

impl Mount {
    /// A bind mount of `dir`, read-only when `readonly`.
    pub fn bind(dir: impl Into<PathBuf>, readonly: bool) -> Self {
        Mount {
            kind: "bind".into(),
            source: dir.into(),
            options: vec![if readonly { "ro" } else { "rw" }.into(), "rbind".into()],
        }
    }

    /// True when the options say `ro`.
    pub fn is_readonly(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    /// The value of option `name=` (`upperdir`, `lowerdir`, ...).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find_map(|o| o.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    }

    /// Mounts this at `target` (an existing directory). Needs root.
    pub fn mount(&self, target: &Path) -> Result<()> {
        let mut flags = MountFlags::empty();
        let mut data = Vec::new();
        for option in &self.options {
            match option.as_str() {
                "ro" => flags |= MountFlags::RDONLY,
                "rw" => {}
                "bind" => flags |= MountFlags::BIND,
                "rbind" => flags |= MountFlags::BIND | MountFlags::REC,
                "nosuid" => flags |= MountFlags::NOSUID,
                "nodev" => flags |= MountFlags::NODEV,
                "noexec" => flags |= MountFlags::NOEXEC,
                other => data.push(other.to_string()),
            }
        }
        let mount_error = |e: rustix::io::Errno| self.mount_error(target, e);
        if self.kind == "bind" || flags.contains(MountFlags::BIND) {
            rustix::mount::mount(&self.source, target, "", flags | MountFlags::BIND, None)
                .map_err(mount_error)?;
            // A bind mount ignores these until it is remounted with them.
            let per_mount = flags
                & (MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC);
            if !per_mount.is_empty() {
                rustix::mount::mount_remount(target, MountFlags::BIND | per_mount, "")
                    .map_err(mount_error)?;
            }
            return Ok(());
        }
        let mount_data = |data: &str| {
            CString::new(data)
                .map_err(|_| Error::InvalidArgument("mount option holds a NUL byte".into()))
        };
        let joined = data.join(",");
        if joined.len() <= MAX_MOUNT_DATA {
            let data = mount_data(&joined)?;
            return rustix::mount::mount(
                &self.source,
                target,
                self.kind.as_str(),
                flags,
                Some(data.as_c_str()),
            )
            .map_err(mount_error);
        }
        // The kernel would silently cut the options at a page, dropping the
        // bottom layers or naming a wrong directory: shorten them instead,
        // relative to a working directory of the mounting thread's own.
        let (dir, relative) = relative_overlay_options(&data)?;
        if relative.len() > MAX_MOUNT_DATA {
            return Err(Error::InvalidArgument(format!(
                "{} mount at {}: its options take {} bytes even relative to {}, and mount(2) \
                 takes at most {MAX_MOUNT_DATA}",
                self.kind,
                target.display(),
                relative.len(),
                dir.display()
            )));
        }
        let data = mount_data(&relative)?;
        let target = std::path::absolute(target).map_err(|e| Error::io("resolve", target, e))?;
        in_directory(&dir, || {
            rustix::mount::mount(
                &self.source,
                &target,
                self.kind.as_str(),
                flags,
                Some(data.as_c_str()),
            )
            .map_err(|e| self.mount_error(&target, e))
        })
    }

    /// The error of a failed mount at `target`: the kernel's, which for an
    /// overlay of more lower layers than overlayfs stacks says only
    /// `EINVAL`, so the count is named then.
    fn mount_error(&self, target: &Path, errno: rustix::io::Errno) -> Error {
        let lowers = self
            .option("lowerdir")
            .map_or(0, |dirs| dirs.split(':').count());
        if self.kind == "overlay" && errno == rustix::io::Errno::INVAL && lowers > OVERLAY_MAX_STACK
        {
            return Error::InvalidArgument(format!(
                "overlay mount at {}: {lowers} lower layers, and overlayfs stacks at most \
                 {OVERLAY_MAX_STACK} (the kernel said: {errno})",
                target.display()
            ));
        }
        Error::io("mount", target, errno)
    }
}

/// The most lower layers overlayfs stacks (the kernel's `OVL_MAX_STACK`).
const OVERLAY_MAX_STACK: usize = 500;

/// The most data `mount(2)` reads: one page (4 KiB on every Linux
/// architecture at least), its terminating NUL included.
const MAX_MOUNT_DATA: usize = 4095;

/// The options that name directories; their values are `:`-separated lists.
const OVERLAY_PATH_OPTIONS: [&str; 3] = ["lowerdir=", "upperdir=", "workdir="];

/// Rewrites overlay options with their directories relative to the deepest
/// directory they all share, which it returns. containerd shortens them the
/// same way; 200 layers then take about 1.5 KiB (10 KiB as absolute paths
/// under `/var/lib/ocidist`).
fn relative_overlay_options(data: &[String]) -> Result<(PathBuf, String)> {
    let paths: Vec<&Path> = data
        .iter()
        .filter_map(|option| {
            OVERLAY_PATH_OPTIONS
                .iter()
                .find_map(|key| option.strip_prefix(key))
        })
        .flat_map(|value| value.split(':'))
        .map(Path::new)
        .collect();
    let Some(first) = paths.first() else {
        return Err(Error::InvalidArgument(format!(
            "mount options take {} bytes, more than mount(2) takes ({MAX_MOUNT_DATA}), \
             and name no overlay directory to shorten",
            data.join(",").len()
        )));
    };
    if let Some(relative) = paths.iter().find(|p| !p.is_absolute()) {
        return Err(Error::InvalidArgument(format!(
            "overlay directory {} is not absolute",
            relative.display()
        )));
    }
    let mut common = first.parent().unwrap_or(Path::new("/")).to_path_buf();
    while !paths.iter().all(|p| p.starts_with(&common)) && common.pop() {}
    let relative = |p: &str| -> String {
        match Path::new(p).strip_prefix(&common) {
            Ok(rest) if !rest.as_os_str().is_empty() => rest.to_string_lossy().into_owned(),
            _ => ".".to_string(),
        }
    };
    let options: Vec<String> = data
        .iter()
        .map(|option| {
            for key in OVERLAY_PATH_OPTIONS {
                if let Some(value) = option.strip_prefix(key) {
                    let dirs: Vec<String> = value.split(':').map(relative).collect();
                    return format!("{key}{}", dirs.join(":"));
                }
            }
            option.clone()
        })
        .collect();
    Ok((common, options.join(",")))
}

/// Runs `work` on a thread of its own whose working directory is `dir`: the
/// thread unshares its filesystem context first, so the process's working
/// directory, which other threads rely on, never changes.
fn in_directory<T: Send>(dir: &Path, work: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new().spawn_scoped(scope, || {
            // SAFETY: unsharing only the filesystem context (root, working
            // directory, umask) of this thread; its file descriptors stay shared.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
                .map_err(|e| Error::io("unshare the working directory of a thread for", dir, e))?;
            rustix::process::chdir(dir).map_err(|e| Error::io("chdir", dir, e))?;
            work()
        });
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Err(Error::io("start a mount thread for", dir, e)),
        }
    })
}

/// Whether this process runs in a user namespace other than the initial one
/// (rootless containers, `unshare --user`, Kubernetes' `hostUsers: false`):
/// its root may not create device nodes nor set `trusted.*` xattrs, and
/// mounts overlayfs only with `userxattr`. Read from `/proc/self/uid_map`,
/// as containerd's `userns.RunningInUserNS` does; once per process.
pub fn running_in_user_namespace() -> bool {
    static IN_USERNS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN_USERNS.get_or_init(|| match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => !is_initial_uid_map(&map),
        Err(_) => false,
    })
}

/// Whether `uid_map` maps every id to itself, as the initial namespace's does.
fn is_initial_uid_map(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// Mounts `mounts` at `target`, in order.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for m in mounts {
        m.mount(target)?;
    }
    Ok(())
}

/// Mounts `mounts` at a new temporary directory, runs `work` with its path,
/// then takes the mount and the directory away, as containerd's
/// `mount.WithTempMount` does for a caller that reads a snapshot.
///
/// The mount is made in a mount namespace of its own, on a thread of its own
/// that runs `work`; the namespace receives the host's mounts but sends none
/// back. Nobody else sees the mount, and it goes with the thread even when
/// the process is killed midway, where an ordinary temporary mount would be
/// left behind; only the empty directory is left then, and the next call
/// with the same parent removes it (each call holds its directory's flock,
/// so a live one's stays). Where no namespace may be made (a seccomp profile that
/// forbids `unshare`), the mount is made where everyone sees it and
/// unmounted when `work` returns.
///
/// ```no_run
/// # fn demo(mounts: &[ocidist_snapshot::Mount]) -> Result<(), Box<dyn std::error::Error>> {
/// // Mount errors are the outer `Result`, the work's own the inner one.
/// let entries = ocidist_snapshot::mount::with_temp_mount(mounts, |root| {
///     std::fs::read_dir(root).map(|entries| entries.count())
/// })??;
/// println!("{entries} entries at the snapshot's root");
/// # Ok(())
/// # }
/// ```
pub fn with_temp_mount<T: Send>(
    mounts: &[Mount],
    work: impl FnOnce(&Path) -> T + Send,
) -> Result<T> {
    with_temp_mount_in(&std::env::temp_dir(), mounts, work)
}

/// [`with_temp_mount`] with its temporary directory made in `parent`.
pub fn with_temp_mount_in<T: Send>(
    parent: &Path,
    mounts: &[Mount],
    work: impl FnOnce(&Path) -> T + Send,
) -> Result<T> {
    let (dir, _held) = temp_mount_dir(parent)?;
    let outcome = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new().spawn_scoped(scope, || {
            // SAFETY: unsharing only this thread's mount namespace (and so
            // its filesystem context); its file descriptors stay shared.
            // Failing that, the mount is shared, as any other.
            let _ = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
                .and_then(|()| {
                    rustix::mount::mount_change(
                        "/",
                        rustix::mount::MountPropagationFlags::DOWNSTREAM
                            | rustix::mount::MountPropagationFlags::REC,
                    )
                });
            let mounted = mount_all(mounts, &dir).map(|()| work(&dir));
            // Gone with the namespace anyway; at once, and from a shared one.
            let _ = unmount(&dir);
            mounted
        });
        match spawned {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => Err(Error::io("start a mount thread for", &dir, e)),
        }
    });
    let _ = std::fs::remove_dir(&dir);
    outcome
}

/// The name of every temporary mount directory starts so.
const TEMP_MOUNT_PREFIX: &str = "ocidist-mount-";

/// A new empty directory in `parent`, for this process alone, to mount at,
/// and its flock, held until it is removed. The empty directories killed
/// processes left in `parent` are removed first.
fn temp_mount_dir(parent: &Path) -> Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    sweep_temp_mount_dirs(parent);
    loop {
        let dir = parent.join(format!(
            "{TEMP_MOUNT_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                let held = std::fs::File::open(&dir)
                    .and_then(|f| f.lock().map(|()| f))
                    .map_err(|e| Error::io("lock", &dir, e))?;
                return Ok((dir, held));
            }
            // Left by an earlier process of the same id.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("create", &dir, e)),
        }
    }
}

/// Removes the temporary mount directories in `parent` that killed
/// processes left: empty, over 10 seconds old (a live one may not hold its
/// lock yet in the instant after it is made), and with nobody holding
/// their flock. A removal must never take a live one: removing a directory
/// another mount namespace has a mount on takes that mount away too.
fn sweep_temp_mount_dirs(parent: &Path) {
    const GRACE: std::time::Duration = std::time::Duration::from_secs(10);
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(TEMP_MOUNT_PREFIX)
        {
            continue;
        }
        // Not followed: a symlink is no directory of ours.
        let old_dir = entry.metadata().is_ok_and(|meta| {
            meta.is_dir()
                && meta
                    .modified()
                    .ok()
                    .and_then(|at| at.elapsed().ok())
                    .is_some_and(|age| age > GRACE)
        });
        let path = entry.path();
        if old_dir && std::fs::File::open(&path).is_ok_and(|f| f.try_lock().is_ok()) {
            // Only an empty one goes (and only one of ours: /tmp is sticky).
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// Unmounts `target` (lazily, so a busy mount does not block the caller).
pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::DETACH)
        .map_err(|e| Error::io("unmount", target, e))
}

/// Unmounts the last `count` mounts at `target` (those [`mount_all`] made
/// there; whatever was mounted at `target` before stays), as a runtime takes
/// a container's root filesystem down: not lazily, so a mount still in use
/// (a process working inside it) stays, and is an error (`EBUSY`), instead of
/// vanishing from view while its files are removed under that process. A
/// busy mount is asked again for half a second first, as containerd asks,
/// for a process that is just exiting. A `target` with nothing mounted is an
/// error (`EINVAL`).
pub fn unmount_unless_busy(target: &Path, count: usize) -> Result<()> {
    const BUSY_TRIES: u32 = 10;
    for _ in 0..count {
        let mut busy = 0;
        loop {
            match rustix::mount::unmount(target, UnmountFlags::empty()) {
                Ok(()) => break,
                Err(rustix::io::Errno::BUSY) if busy < BUSY_TRIES => {
                    busy += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(Error::io("unmount", target, e)),
            }
        }
    }
    Ok(())
}

/// Whether any filesystem is mounted at `target` (as
/// `/proc/self/mountinfo` shows it); `false` when `target` does not exist.
pub fn is_mount_point(target: &Path) -> Result<bool> {
    let target = match std::fs::canonicalize(target) {
        Ok(target) => target,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("stat", target, e)),
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    Ok(mountinfo
        .lines()
        .filter_map(MountInfo::parse)
        .any(|m| m.mount_point == target))
}

/// Where `mount` (the last of the mounts a snapshot gave, as [`mount_all`]
/// made them) is among the mounts at a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountedAt {
    /// The topmost mount there: unmounting the directory takes it down.
    Top,
    /// There, under another filesystem mounted over it since.
    Covered,
    /// Not there: unmounted already (by hand, a reboot), or never mounted.
    Absent,
}

/// Where `mount` is among the mounts at `target`, read from
/// `/proc/self/mountinfo`: an overlay with `mount`'s upper (or, read-only,
/// lower) directories, or a bind of `mount`'s source. A caller unmounts
/// `target` only when it is [`MountedAt::Top`]: another filesystem there
/// must not be taken down, nor a snapshot removed while still mounted under
/// one.
pub fn mounted_at(target: &Path, mount: &Mount) -> Result<MountedAt> {
    let target = std::fs::canonicalize(target).map_err(|e| Error::io("stat", target, e))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    let all: Vec<MountInfo> = mountinfo.lines().filter_map(MountInfo::parse).collect();
    // A bind shows its source as a path within the source's filesystem, on
    // that filesystem's device: found through the mount the source is
    // reached by (a store in a bind-mounted volume, a btrfs subvolume).
    let source = std::fs::canonicalize(&mount.source).unwrap_or_else(|_| mount.source.clone());
    let bind_of = all
        .iter()
        .rev()
        .filter(|m| source.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
        .and_then(|host| {
            let rest = source.strip_prefix(&host.mount_point).ok()?;
            Some((host.device.clone(), host.root.join(rest)))
        });
    let is_ours = |shown: &MountInfo| match mount.kind.as_str() {
        "overlay" => {
            shown.fs_type == "overlay"
                && match mount.option("upperdir") {
                    Some(upper) => shown
                        .option("upperdir")
                        .is_some_and(|s| same_dirs(upper, s)),
                    None => {
                        shown.option("upperdir").is_none()
                            && mount.option("lowerdir").is_some_and(|lower| {
                                shown
                                    .option("lowerdir")
                                    .is_some_and(|s| same_dirs(lower, s))
                            })
                    }
                }
        }
        _ => bind_of
            .as_ref()
            .is_some_and(|(device, root)| shown.device == *device && shown.root == *root),
    };
    let at: Vec<&MountInfo> = all.iter().filter(|m| m.mount_point == target).collect();
    let Some(ours) = at.iter().rev().find(|m| is_ours(m)) else {
        return Ok(MountedAt::Absent);
    };
    // Covered when something is mounted on top of it there.
    Ok(if at.iter().any(|m| m.parent == ours.id) {
        MountedAt::Covered
    } else {
        MountedAt::Top
    })
}

/// Whether `ours` (as the snapshotter wrote it) and `shown` (as mountinfo
/// shows it: relative when [`Mount::mount`] shortened it) name the same
/// directories.
fn same_dirs(ours: &str, shown: &str) -> bool {
    let ours: Vec<&str> = ours.split(':').collect();
    let shown: Vec<&str> = shown.split(':').collect();
    ours.len() == shown.len()
        && ours.iter().zip(&shown).all(|(ours, shown)| {
            // `.`: the directory a shortened option was made relative to.
            *ours == *shown || *shown == "." || Path::new(ours).ends_with(shown)
        })
}

/// One line of `/proc/self/mountinfo`, the fields [`mounted_at`] reads.
struct MountInfo {
    id: u64,
    parent: u64,
    device: String,
    root: PathBuf,
    mount_point: PathBuf,
    fs_type: String,
    super_options: String,
}

impl MountInfo {
    fn parse(line: &str) -> Option<MountInfo> {
        let (fields, rest) = line.split_once(" - ")?;
        let fields: Vec<&str> = fields.split(' ').collect();
        let rest: Vec<&str> = rest.split(' ').collect();
        Some(MountInfo {
            id: fields.first()?.parse().ok()?,
            parent: fields.get(1)?.parse().ok()?,
            device: fields.get(2)?.to_string(),
            root: PathBuf::from(unescape(fields.get(3)?)),
            mount_point: PathBuf::from(unescape(fields.get(4)?)),
            fs_type: rest.first()?.to_string(),
            super_options: rest.get(2).map(|o| unescape(o)).unwrap_or_default(),
        })
    }

    fn option(&self, name: &str) -> Option<&str> {
        self.super_options
            .split(',')
            .find_map(|o| o.strip_prefix(name)?.strip_prefix('='))
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of a single writable bind mount, for callers that fill a
/// snapshot without mounting it.
pub fn writable_dir(mounts: &[Mount]) -> Option<PathBuf> {
    match mounts {
        [m] if m.kind == "bind" && !m.is_readonly() => Some(m.source.clone()),
        _ => None,
    }
}

/// Where a layer goes when applied to a snapshot without mounting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyTarget {
    /// A whole tree (native snapshots, or an overlay snapshot with no parent):
    /// whiteouts delete.
    Tree(PathBuf),
    /// An overlay upper directory over `lowers` (newest first): whiteouts are
    /// recorded the overlay way, and parents missing from the upper directory
    /// take their owner and mode from the lowers.
    OverlayUpper {
        /// The writable upper directory.
        upper: PathBuf,
        /// The read-only layers beneath, newest first.
        lowers: Vec<PathBuf>,
    },
}

impl ApplyTarget {
    /// Reads the target from a writable snapshot's mounts.
    pub fn from_mounts(mounts: &[Mount]) -> Result<Self> {
        if let Some(dir) = writable_dir(mounts) {
            return Ok(ApplyTarget::Tree(dir));
        }
        if let [m] = mounts
            && m.kind == "overlay"
            && let Some(upper) = m.option("upperdir")
        {
            let lowers = m
                .option("lowerdir")
                .map(|l| l.split(':').map(PathBuf::from).collect())
                .unwrap_or_default();
            return Ok(ApplyTarget::OverlayUpper {
                upper: upper.into(),
                lowers,
            });
        }
        Err(Error::InvalidArgument(format!(
            "cannot apply into mounts {mounts:?}: not a writable bind or overlay"
        )))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_lines_are_read_with_their_escapes() {
        let line = r"36 35 0:52 /snap\040shots/4/fs /run/my\040root rw,relatime shared:1 - overlay overlay rw,lowerdir=3/fs:2/fs,upperdir=40/fs,workdir=40/work";
        let info = super::MountInfo::parse(line).unwrap();
        assert_eq!(
            (info.id, info.parent, info.device.as_str()),
            (36, 35, "0:52")
        );
        assert_eq!(info.root, Path::new("/snap shots/4/fs"));
        assert_eq!(info.mount_point, Path::new("/run/my root"));
        assert_eq!(info.fs_type, "overlay");
        assert_eq!(info.option("upperdir"), Some("40/fs"));
        assert!(super::same_dirs("/var/lib/s/snapshots/40/fs", "40/fs"));
        assert!(!super::same_dirs("/var/lib/s/snapshots/41/fs", "40/fs"));
        assert!(super::same_dirs("/s/3/fs:/s/2/fs", "3/fs:2/fs"));
        assert!(!super::same_dirs("/s/3/fs", "3/fs:2/fs"));
    }

    #[test]
    fn only_the_whole_identity_map_is_the_initial_namespace() {
        assert!(super::is_initial_uid_map(
            "         0          0 4294967295\n"
        ));
        assert!(!super::is_initial_uid_map(
            "         0          0          1\n"
        ));
        assert!(!super::is_initial_uid_map("0 1000 1\n1 100000 65536\n"));
        assert!(!super::is_initial_uid_map(""));
    }

    use super::*;

    #[test]
    fn overlay_options_are_made_relative_to_the_deepest_directory_they_share() {
        let data = [
            "index=off",
            "lowerdir=/var/lib/s/snapshots/3/fs:/var/lib/s/snapshots/12/fs:/var/lib/s/snapshots",
            "upperdir=/var/lib/s/snapshots/40/fs",
            "workdir=/var/lib/s/snapshots/40/work",
        ]
        .map(String::from);
        let (dir, relative) = relative_overlay_options(&data).unwrap();
        assert_eq!(dir, Path::new("/var/lib/s/snapshots"));
        assert_eq!(
            relative,
            "index=off,lowerdir=3/fs:12/fs:.,upperdir=40/fs,workdir=40/work"
        );
    }

    #[test]
    fn options_too_long_even_when_relative_are_refused_before_the_kernel_can_cut_them() {
        // Layers in unrelated directories share only `/`.
        let lowers: Vec<String> = (0..300)
            .map(|i| format!("/layer-directory-{i:04}/fs"))
            .collect();
        let overlay = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec!["ro".into(), format!("lowerdir={}", lowers.join(":"))],
        };
        let err = overlay.mount(Path::new("/nonexistent-target")).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("mount(2) takes at most 4095"), "{message}");
        assert!(message.contains("/nonexistent-target"), "{message}");
    }
}
