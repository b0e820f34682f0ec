//! Mounts: how a snapshot becomes a directory.
//!
//! A snapshotter describes a snapshot as a list of [`Mount`]s (containerd's
//! model). [`mount_all`] performs them with `mount(2)` (root only);
//! [`writable_dir`] and [`ApplyTarget::from_mounts`] read them for callers that
//! write into a snapshot without mounting it.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::{Error, Result};

/// One mount: `mount -t KIND -o OPTIONS SOURCE TARGET`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// The filesystem type: `bind` or `overlay`.
    pub kind: String,
    /// The source: a directory for `bind`, `overlay` for overlays.
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
        let mount_error = |e: rustix::io::Errno| Error::io("mount", target, e);
        if self.kind == "bind" || flags.contains(MountFlags::BIND) {
            rustix::mount::mount(&self.source, target, "", flags | MountFlags::BIND, None)
                .map_err(mount_error)?;
            if flags.contains(MountFlags::RDONLY) {
                // A bind mount ignores MS_RDONLY until remounted.
                rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
                    .map_err(mount_error)?;
            }
            return Ok(());
        }
        let (data, _dir) = compact_overlay_options(data)?;
        let data = CString::new(data.join(","))
            .map_err(|_| Error::InvalidArgument("mount option holds a NUL byte".into()))?;
        rustix::mount::mount(
            &self.source,
            target,
            self.kind.as_str(),
            flags,
            Some(data.as_c_str()),
        )
        .map_err(mount_error)
    }
}

/// The page-size limit on `mount(2)` data, less a margin.
const MAX_MOUNT_DATA: usize = 4000;

/// Shortens overlay paths through `/proc/self/fd/N` of their common parent
/// when the options would not fit in one page (128 layers, say). The kernel
/// resolves the paths during `mount(2)`, so the returned directory handle only
/// has to live until then.
fn compact_overlay_options(data: Vec<String>) -> Result<(Vec<String>, Option<std::fs::File>)> {
    if data.iter().map(|d| d.len() + 1).sum::<usize>() <= MAX_MOUNT_DATA {
        return Ok((data, None));
    }
    let mut paths: Vec<&str> = Vec::new();
    for option in &data {
        for key in ["lowerdir=", "upperdir=", "workdir="] {
            if let Some(value) = option.strip_prefix(key) {
                paths.extend(value.split(':'));
            }
        }
    }
    let Some(first) = paths.first() else {
        return Ok((data, None));
    };
    let mut common = Path::new(first)
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    while !paths.iter().all(|p| Path::new(p).starts_with(&common)) {
        if !common.pop() {
            break;
        }
    }
    let dir = std::fs::File::open(&common).map_err(|e| Error::io("open", &common, e))?;
    let prefix = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let common = common.to_string_lossy().trim_end_matches('/').to_string();
    let shorten = |p: &str| match p.strip_prefix(&common) {
        Some(rest) => format!("{prefix}{rest}"),
        None => p.to_string(),
    };
    let data = data
        .iter()
        .map(|option| {
            for key in ["lowerdir=", "upperdir=", "workdir="] {
                if let Some(value) = option.strip_prefix(key) {
                    let joined: Vec<String> = value.split(':').map(shorten).collect();
                    return format!("{key}{}", joined.join(":"));
                }
            }
            option.clone()
        })
        .collect();
    Ok((data, Some(dir)))
}

/// Mounts `mounts` at `target`, in order.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for m in mounts {
        m.mount(target)?;
    }
    Ok(())
}

/// Unmounts `target` (lazily, so a busy mount does not block the caller).
pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::DETACH)
        .map_err(|e| Error::io("unmount", target, e))
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
