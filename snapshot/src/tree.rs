//! Whole-tree operations on snapshot directories: copy (for native
//! snapshots), disk usage, removal.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, CWD, Gid, Mode, Timespec, Timestamps, Uid};

use crate::{Error, Result};

/// Copies the tree `src` into the existing directory `dst`, keeping owners,
/// modes, xattrs, hardlinks, devices and times. Files are cloned (reflink)
/// or copied in the kernel with `copy_file_range` where the filesystem can.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_dir_contents(src, dst, &mut links)?;
    copy_metadata(
        src,
        dst,
        &fs::symlink_metadata(src).map_err(|e| Error::io("stat", src, e))?,
    )
}

fn copy_dir_contents(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> Result<()> {
    let entries = fs::read_dir(src).map_err(|e| Error::io("read dir", src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("read dir", src, e))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(|e| Error::io("stat", &from, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir(&to).map_err(|e| Error::io("mkdir", &to, e))?;
            copy_dir_contents(&from, &to, links)?;
            copy_metadata(&from, &to, &meta)?;
            continue;
        }
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                fs::hard_link(first, &to).map_err(|e| Error::io("link", &to, e))?;
                continue;
            }
            links.insert((meta.dev(), meta.ino()), to.clone());
        }
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| Error::io("readlink", &from, e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| Error::io("symlink", &to, e))?;
        } else if ft.is_file() {
            copy_file(&from, &to, &meta)?;
        } else {
            let file_type = rustix::fs::FileType::from_raw_mode(meta.mode());
            rustix::fs::mknodat(
                CWD,
                &to,
                file_type,
                Mode::from_raw_mode(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| Error::io("mknod", &to, e))?;
        }
        copy_metadata(&from, &to, &meta)?;
    }
    Ok(())
}

fn copy_file(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<()> {
    let src = File::open(from).map_err(|e| Error::io("open", from, e))?;
    let dst = File::create_new(to).map_err(|e| Error::io("create", to, e))?;
    if rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
        return Ok(());
    }
    let mut left = meta.len();
    while left > 0 {
        match rustix::fs::copy_file_range(&src, None, &dst, None, left.min(1 << 30) as usize) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(_) => {
                // Filesystems without copy_file_range: copy through userspace.
                let mut src = File::open(from).map_err(|e| Error::io("open", from, e))?;
                let mut dst = File::create(to).map_err(|e| Error::io("create", to, e))?;
                io::copy(&mut src, &mut dst).map_err(|e| Error::io("copy", to, e))?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid), xattrs, then times; never follows
/// a symlink.
fn copy_metadata(from: &Path, to: &Path, meta: &fs::Metadata) -> Result<()> {
    let is_link = meta.file_type().is_symlink();
    if rustix::process::geteuid().is_root() {
        rustix::fs::chownat(
            CWD,
            to,
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io("chown", to, e))?;
    }
    if !is_link {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| Error::io("chmod", to, e))?;
    }
    copy_xattrs(from, to)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: meta.atime(),
            tv_nsec: meta.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: meta.mtime(),
            tv_nsec: meta.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, to, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("utimes", to, e))
}

fn copy_xattrs(from: &Path, to: &Path) -> Result<()> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(from, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            let size =
                rustix::fs::llistxattr_query(from).map_err(|e| Error::io("listxattr", from, e))?;
            names.resize(size, 0);
            rustix::fs::llistxattr(from, &mut names[..])
                .map_err(|e| Error::io("listxattr", from, e))?
        }
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(()),
        Err(e) => return Err(Error::io("listxattr", from, e)),
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
        let size = match rustix::fs::lgetxattr_query(from, name) {
            Ok(size) => size,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(Error::io("getxattr", from, e)),
        };
        let mut value = vec![0u8; size];
        let n = rustix::fs::lgetxattr(from, name, &mut value[..])
            .map_err(|e| Error::io("getxattr", from, e))?;
        rustix::fs::lsetxattr(to, name, &value[..n], rustix::fs::XattrFlags::empty())
            .map_err(|e| Error::io("setxattr", to, e))?;
    }
    Ok(())
}

/// Disk usage of a tree: allocated bytes and inodes, each hardlinked inode
/// counted once.
pub(crate) fn usage(root: &Path) -> Result<(u64, u64)> {
    let mut seen = std::collections::HashSet::new();
    let mut size = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = fs::symlink_metadata(&dir).map_err(|e| Error::io("stat", &dir, e))?;
        if seen.insert((meta.dev(), meta.ino())) {
            inodes += 1;
            size += meta.blocks() * 512;
        }
        if !meta.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("read dir", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read dir", &dir, e))?;
            let ft = entry
                .file_type()
                .map_err(|e| Error::io("stat", entry.path(), e))?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else {
                let meta = entry
                    .metadata()
                    .map_err(|e| Error::io("stat", entry.path(), e))?;
                if seen.insert((meta.dev(), meta.ino())) {
                    inodes += 1;
                    size += meta.blocks() * 512;
                }
            }
        }
    }
    Ok((size, inodes))
}

/// Removes `path` and everything under it; a missing path is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// fsyncs a directory, so a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}
