//! Copy-up for hardlinks into an overlay upper directory: a layer may link
//! to a file only a lower layer has. Mounted, overlayfs would copy the file
//! up before linking (containerd applies through such a mount); applied
//! straight into the upper directory, the copy is ours to make.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec};

use super::{Applier, Meta, OVERLAY_PRIVATE, create_new_file, io_err, split};
use crate::{Error, Result};

/// The most `listxattr(2)` and `getxattr(2)` hand back.
const XATTR_MAX: usize = 64 << 10;

/// Extended attributes not copied up, besides overlayfs's own
/// ([`OVERLAY_PRIVATE`]: they describe a layer, not a file), as overlayfs
/// does not: the SELinux label, which the host's policy gives every file.
pub(super) const NOT_COPIED: &str = "security.selinux";

impl Applier {
    /// Copies `rel`, found in the lower directory `lower_dir`, into the upper
    /// directory with its data, owner, mode, xattrs and times, so a hardlink
    /// can be made to it there.
    pub(super) fn copy_up(&mut self, lower_dir: BorrowedFd<'_>, rel: &Path) -> Result<()> {
        let (parent, name) = split(rel);
        let path = self.root.path.join(rel);
        let source_path = proc_path(lower_dir, name);
        let st = rustix::fs::statat(lower_dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("stat", &source_path))?;
        let meta = Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: Timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec as _,
            },
            atime: Timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec as _,
            },
            xattrs: xattrs(&source_path)?,
            dropped_xattrs: 0,
        };
        let dirfd = self.root.dir(&parent)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                let source = rustix::fs::openat(
                    lower_dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io_err("open", &source_path))?;
                let copy = create_new_file(dirfd, name, &path)?;
                crate::tree::copy_data(
                    std::os::fd::AsFd::as_fd(&source),
                    std::os::fd::AsFd::as_fd(&copy),
                    st.st_size as u64,
                )
                .map_err(|e| Error::io("copy up", &path, e))?;
                self.set_file_meta(&copy, &meta, &path)?;
            }
            libc::S_IFLNK => {
                let target = rustix::fs::readlinkat(lower_dir, name, Vec::new())
                    .map_err(io_err("readlink", &source_path))?;
                rustix::fs::symlinkat(target.as_c_str(), dirfd, name)
                    .map_err(io_err("symlink", &path))?;
                self.set_meta_at(&parent, name, &path, &meta, false)?;
            }
            kind @ (libc::S_IFIFO | libc::S_IFCHR | libc::S_IFBLK) => {
                let file_type = match kind {
                    libc::S_IFIFO => FileType::Fifo,
                    libc::S_IFCHR => FileType::CharacterDevice,
                    _ => FileType::BlockDevice,
                };
                rustix::fs::mknodat(
                    dirfd,
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    st.st_rdev,
                )
                .map_err(io_err("mknod", &path))?;
                self.set_meta_at(&parent, name, &path, &meta, true)?;
            }
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "hardlink target {:?} is neither a file, a symlink nor a device",
                    rel.display()
                )));
            }
        }
        // Not recorded as written: an opaque whiteout later in the layer
        // hides the copy, as it hides the lower file on a whole tree.
        Ok(())
    }
}

/// `name` in `dir` as a path the kernel resolves through the descriptor, so
/// nothing outside the layer is walked and the last component is not followed
/// by the `l*xattr` calls.
pub(super) fn proc_path(dir: BorrowedFd<'_>, name: &OsStr) -> PathBuf {
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    path
}

/// The extended attributes of the entry at `path` (not followed), but
/// overlayfs's own.
pub(super) fn xattrs(path: &Path) -> Result<super::Xattrs> {
    let names = super::xattr_names(
        || rustix::fs::llistxattr_query(path),
        |buf| rustix::fs::llistxattr(path, buf),
    )
    .map_err(|e| Error::io("list xattrs of", path, e))?;
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(key) = std::str::from_utf8(raw) else {
            continue;
        };
        if key.starts_with(NOT_COPIED) || OVERLAY_PRIVATE.iter().any(|p| key.starts_with(p)) {
            continue;
        }
        let mut value = vec![0u8; XATTR_MAX];
        let len = rustix::fs::lgetxattr(path, key, &mut value)
            .map_err(|e| Error::io("read xattrs of", path, e))?;
        value.truncate(len);
        out.push((key.to_string(), value));
    }
    Ok(out)
}
