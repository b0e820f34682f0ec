//! Whole-tree operations on snapshot directories: copy (for native
//! snapshots), disk usage, removal.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use rustix::fs::{AtFlags, CWD, Gid, Mode, OFlags, Timespec, Timestamps, Uid};

use crate::{Error, Result};

/// Copies the tree `src` into the existing directory `dst`, keeping owners,
/// modes, xattrs, hardlinks, devices and times. Files are cloned (reflink)
/// or copied in the kernel with `copy_file_range` where the filesystem can.
///
/// One thread walks the tree, making directories, links and devices; the
/// regular files are then copied by one thread per core (the copy is the
/// kernel's CPU time, and a layer holds many small files); directory times
/// and modes are set last.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut plan = CopyPlan::default();
    plan.walk(src, dst)?;
    plan.finish(src, dst)
}

/// [`copy_tree`] that shares `src`'s files instead of copying them: the
/// directories are made anew, everything else is hard-linked to `src`'s
/// inode (as OSTree checks out its immutable objects). Only for a `dst` whose
/// entries will be replaced, never written in place, and a `src` that never
/// changes: see [`APPLY_ONLY_LABEL`](crate::APPLY_ONLY_LABEL).
///
/// One thread per core takes directories from a shared queue, makes their
/// subdirectories and links their other entries through the two
/// directories' descriptors, without walking paths. An inode that the
/// filesystem will not link is copied instead; one that can take no more
/// links (`EMLINK`: ext4 stops at 65,000, and busybox's 400 names reach it
/// after some 160 snapshots) is copied once, and all of its names in `dst`
/// are pointed at the copy, so a hardlink group stays one inode. Directory
/// metadata is set last, parents first.
pub(crate) fn share_tree(src: &Path, dst: &Path) -> Result<()> {
    let walk = SharingWalk {
        state: Mutex::new(SharingState {
            queue: vec![(src.to_path_buf(), dst.to_path_buf())],
            ..SharingState::default()
        }),
        changed: Condvar::new(),
    };
    std::thread::scope(|scope| {
        for _ in 0..worker_threads() {
            scope.spawn(|| walk.work());
        }
    });
    let state = walk.state.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = state.failed {
        return Err(e);
    }
    let mut plan = CopyPlan {
        dirs: state.dirs,
        ..CopyPlan::default()
    };
    plan.dirs.sort_by_key(|(_, to, _)| to.components().count());
    // Each full inode, with one of its copied names: the rest of its names
    // were linked before it filled up, and go to the copy too.
    let mut full: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for (from, to) in &state.full {
        let meta = fs::symlink_metadata(from).map_err(|e| Error::io("stat", from, e))?;
        full.entry((meta.dev(), meta.ino()))
            .or_insert_with(|| to.clone());
    }
    for (from, to, is_file) in state.unshared {
        plan.copy_entry(from, to, is_file)?;
    }
    copy_files(&std::mem::take(&mut plan.files))?;
    for (inode, copy) in &full {
        repoint(dst, *inode, copy)?;
    }
    plan.finish(src, dst)
}

/// Gives the names under `root` of the inode of `name` an inode of their own,
/// a copy of it: the inode can take no more links, being shared with other
/// trees (see [`share_tree`]), and a new name must join its group. The
/// times of the directories it touches are kept.
pub(crate) fn unshare(root: &Path, name: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(name).map_err(|e| Error::io("stat", name, e))?;
    let root_meta = fs::symlink_metadata(root).map_err(|e| Error::io("stat", root, e))?;
    // The copy is made beside the root's entries: a name of its own there,
    // removed once the group's names hold it.
    let copy = (0u32..)
        .map(|n| root.join(format!(".ocidist-unshare-{}-{n}", meta.ino())))
        .find(|path| fs::symlink_metadata(path).is_err())
        .expect("some name is free");
    let copied = if meta.file_type().is_file() {
        let copier = FileCopier {
            may_clone: AtomicBool::new(true),
            as_root: rustix::process::geteuid().is_root(),
        };
        copier.copy(name, &copy, true).map(|_| ())
    } else {
        CopyPlan::default().copy_entry(name.to_path_buf(), copy.clone(), false)
    };
    let repointed = copied.and_then(|()| repoint(root, (meta.dev(), meta.ino()), &copy));
    let removed = fs::remove_file(&copy).map_err(|e| Error::io("remove", &copy, e));
    repointed?;
    removed?;
    set_times(root, &root_meta)
}

/// Points every name under `root` of the inode `shared` (device, inode) at
/// the inode of `copy` instead, keeping the times of the directories it
/// changes.
fn repoint(root: &Path, shared: (u64, u64), copy: &Path) -> Result<()> {
    use std::os::unix::fs::DirEntryExt;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let mut before = None;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io("read dir", &dir, e))? {
            let entry = entry.map_err(|e| Error::io("read dir", &dir, e))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(|e| Error::io("stat", &path, e))?;
            if file_type.is_dir() {
                dirs.push(path);
                continue;
            }
            if entry.ino() != shared.1 {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
            if (meta.dev(), meta.ino()) != shared {
                continue;
            }
            if before.is_none() {
                let meta = fs::symlink_metadata(&dir).map_err(|e| Error::io("stat", &dir, e))?;
                // Without root, a directory of the image's that is not
                // writable (0555) is made so while its names are changed.
                let read_only = meta.permissions().mode() & 0o200 == 0;
                if read_only {
                    set_mode(&dir, meta.permissions().mode() | 0o200)?;
                }
                before = Some((meta, read_only));
            }
            let relinked = fs::remove_file(&path)
                .map_err(|e| Error::io("remove", &path, e))
                .and_then(|()| fs::hard_link(copy, &path).map_err(|e| Error::io("link", &path, e)));
            if let Err(e) = relinked {
                if let Some((before, true)) = &before {
                    let _ = set_mode(&dir, before.permissions().mode());
                }
                return Err(e);
            }
        }
        if let Some((before, read_only)) = before {
            if read_only {
                set_mode(&dir, before.permissions().mode())?;
            }
            set_times(&dir, &before)?;
        }
    }
    Ok(())
}

/// Sets the mode of the directory `dir`.
fn set_mode(dir: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| Error::io("chmod", dir, e))
}

/// Sets the access and modification times of `path` (not followed) to
/// those in `meta`.
fn set_times(path: &Path, meta: &fs::Metadata) -> Result<()> {
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
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| Error::io("utimes", path, e))
}

/// The walkers of one [`share_tree`] and what they share.
struct SharingWalk {
    state: Mutex<SharingState>,
    changed: Condvar,
}

#[derive(Default)]
struct SharingState {
    /// Directories made but not yet read: (source, copy).
    queue: Vec<(PathBuf, PathBuf)>,
    /// Walkers reading one now.
    busy: usize,
    /// Every directory made, for [`CopyPlan::finish`].
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    /// Entries that could not be linked: (source, copy, is a regular file).
    unshared: Vec<(PathBuf, PathBuf, bool)>,
    /// Those of them whose inode could take no more links: (source, copy).
    full: Vec<(PathBuf, PathBuf)>,
    failed: Option<Error>,
}

/// What [`share_dir`] found in one directory.
#[derive(Default)]
struct SharedDir {
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    unshared: Vec<(PathBuf, PathBuf, bool)>,
    full: Vec<(PathBuf, PathBuf)>,
}

impl SharingWalk {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes directories until none is left and no walker can add one, or
    /// one failed.
    fn work(&self) {
        let mut state = self.lock();
        while state.failed.is_none() {
            let Some((src, dst)) = state.queue.pop() else {
                if state.busy == 0 {
                    break;
                }
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            state.busy += 1;
            drop(state);
            let result = share_dir(&src, &dst);
            state = self.lock();
            state.busy -= 1;
            match result {
                Ok(found) => {
                    state.queue.extend(
                        found
                            .dirs
                            .iter()
                            .map(|(from, to, _)| (from.clone(), to.clone())),
                    );
                    state.dirs.extend(found.dirs);
                    state.unshared.extend(found.unshared);
                    state.full.extend(found.full);
                }
                Err(e) => {
                    state.failed.get_or_insert(e);
                }
            }
            self.changed.notify_all();
        }
    }
}

/// Makes the subdirectories of `src` in `dst` and links its other entries
/// there.
fn share_dir(src: &Path, dst: &Path) -> Result<SharedDir> {
    use rustix::fs::FileType;
    use rustix::io::Errno;
    let open = |path: &Path| {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open", path, e))
    };
    let (src_fd, dst_fd) = (open(src)?, open(dst)?);
    let mut found = SharedDir::default();
    let mut entries =
        rustix::fs::Dir::read_from(&src_fd).map_err(|e| Error::io("read dir", src, e))?;
    while let Some(entry) = entries.read() {
        let entry = entry.map_err(|e| Error::io("read dir", src, e))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let paths = || {
            let name =
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes());
            (src.join(name), dst.join(name))
        };
        let mut file_type = entry.file_type();
        if file_type == FileType::Unknown {
            let st = rustix::fs::statat(&src_fd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| Error::io("stat", paths().0, e))?;
            file_type = FileType::from_raw_mode(st.st_mode);
        }
        if file_type == FileType::Directory {
            let (from, to) = paths();
            rustix::fs::mkdirat(&dst_fd, name, Mode::from_raw_mode(0o700))
                .map_err(|e| Error::io("mkdir", &to, e))?;
            let meta = fs::symlink_metadata(&from).map_err(|e| Error::io("stat", &from, e))?;
            found.dirs.push((from, to, meta));
            continue;
        }
        match rustix::fs::linkat(&src_fd, name, &dst_fd, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(e @ (Errno::MLINK | Errno::PERM | Errno::XDEV | Errno::OPNOTSUPP)) => {
                let (from, to) = paths();
                if e == Errno::MLINK {
                    found.full.push((from.clone(), to.clone()));
                }
                found
                    .unshared
                    .push((from, to, file_type == FileType::RegularFile));
            }
            Err(e) => return Err(Error::io("link", paths().1, e)),
        }
    }
    Ok(found)
}

/// How many threads tree copies use: one per core, at most four.
fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// What the walk of [`copy_tree`] leaves for later: regular files to copy,
/// directories whose metadata to set (parents first).
#[derive(Default)]
struct CopyPlan {
    files: Vec<(PathBuf, PathBuf)>,
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    links: HashMap<(u64, u64), PathBuf>,
}

impl CopyPlan {
    fn walk(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let entries = fs::read_dir(src).map_err(|e| Error::io("read dir", src, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read dir", src, e))?;
            let from = entry.path();
            let to = dst.join(entry.file_name());
            let ft = entry.file_type().map_err(|e| Error::io("stat", &from, e))?;
            if ft.is_dir() {
                let meta = fs::symlink_metadata(&from).map_err(|e| Error::io("stat", &from, e))?;
                fs::create_dir(&to).map_err(|e| Error::io("mkdir", &to, e))?;
                self.dirs.push((from.clone(), to.clone(), meta));
                self.walk(&from, &to)?;
                continue;
            }
            self.copy_entry(from, to, ft.is_file())?;
        }
        Ok(())
    }

    /// Copies a non-directory; a regular file is left for [`copy_files`].
    fn copy_entry(&mut self, from: PathBuf, to: PathBuf, is_file: bool) -> Result<()> {
        if is_file {
            self.files.push((from, to));
            return Ok(());
        }
        let meta = fs::symlink_metadata(&from).map_err(|e| Error::io("stat", &from, e))?;
        if meta.nlink() > 1 && self.linked(&meta, &to)? {
            return Ok(());
        }
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&from).map_err(|e| Error::io("readlink", &from, e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| Error::io("symlink", &to, e))?;
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
        copy_metadata(&from, &to, &meta)
    }

    /// Copies the files left, then sets the metadata of the directories
    /// (parents first) and of `dst` itself.
    fn finish(&mut self, src: &Path, dst: &Path) -> Result<()> {
        copy_files(&self.files)?;
        for (from, to, meta) in &self.dirs {
            copy_metadata(from, to, meta)?;
        }
        copy_metadata(
            src,
            dst,
            &fs::symlink_metadata(src).map_err(|e| Error::io("stat", src, e))?,
        )
    }

    /// Links `to` to the copy of the inode of `meta` if one was made (true);
    /// else remembers `to` as that copy (false).
    fn linked(&mut self, meta: &fs::Metadata, to: &Path) -> Result<bool> {
        if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
            fs::hard_link(first, to).map_err(|e| Error::io("link", to, e))?;
            return Ok(true);
        }
        self.links
            .insert((meta.dev(), meta.ino()), to.to_path_buf());
        Ok(false)
    }
}

/// Copies the regular files of `files`, on one thread per core when there
/// are enough of them. Hardlinked files are set aside, then copied once per
/// inode and linked, on this thread.
fn copy_files(files: &[(PathBuf, PathBuf)]) -> Result<()> {
    let threads = worker_threads();
    let copier = FileCopier {
        may_clone: AtomicBool::new(true),
        as_root: rustix::process::geteuid().is_root(),
    };
    let hardlinked = if threads <= 1 || files.len() < 64 {
        let mut hardlinked = Vec::new();
        for (i, (from, to)) in files.iter().enumerate() {
            if let Some(inode) = copier.copy(from, to, false)? {
                hardlinked.push((i, inode));
            }
        }
        hardlinked
    } else {
        copy_files_in_parallel(&copier, files, threads)?
    };
    let mut links: HashMap<(u64, u64), &Path> = HashMap::new();
    for (i, inode) in hardlinked {
        let (from, to) = &files[i];
        match links.get(&inode) {
            Some(first) => fs::hard_link(first, to).map_err(|e| Error::io("link", to, e))?,
            None => {
                copier.copy(from, to, true)?;
                links.insert(inode, to);
            }
        }
    }
    Ok(())
}

/// [`copy_files`] on `threads` threads; returns the hardlinked files left.
fn copy_files_in_parallel(
    copier: &FileCopier,
    files: &[(PathBuf, PathBuf)],
    threads: usize,
) -> Result<Vec<(usize, (u64, u64))>> {
    use std::sync::atomic::AtomicUsize;
    let next = AtomicUsize::new(0);
    let outcome = std::sync::Mutex::new((Vec::new(), None));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((from, to)) = files.get(i) else {
                        break;
                    };
                    let lock = || outcome.lock().unwrap_or_else(|p| p.into_inner());
                    match copier.copy(from, to, false) {
                        Ok(None) => {}
                        Ok(Some(inode)) => lock().0.push((i, inode)),
                        Err(e) => {
                            // Stop everyone: the rest is moot.
                            next.store(files.len(), Ordering::Relaxed);
                            lock().1.get_or_insert(e);
                            break;
                        }
                    }
                }
            });
        }
    });
    let (mut hardlinked, failed) = outcome.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = failed {
        return Err(e);
    }
    hardlinked.sort_unstable();
    Ok(hardlinked)
}

/// Copies regular files for one [`copy_tree`], remembering what it learnt of
/// the filesystem and the process.
struct FileCopier {
    /// False once a clone failed: the filesystem has no reflinks, so the
    /// other files go straight to `copy_file_range` (which still shares
    /// extents where the filesystem can, so a wrong guess costs nothing).
    may_clone: AtomicBool,
    /// Whether owners can be copied.
    as_root: bool,
}

impl FileCopier {
    /// Copies one regular file with its owner, mode, xattrs and times, through
    /// its descriptors (no path walks after the two opens). A file with other
    /// hardlinks is left alone unless `linked_too`: its inode is returned.
    fn copy(&self, from: &Path, to: &Path, linked_too: bool) -> Result<Option<(u64, u64)>> {
        let src = rustix::fs::open(
            from,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("open", from, e))?;
        let st = rustix::fs::fstat(&src).map_err(|e| Error::io("stat", from, e))?;
        if st.st_nlink > 1 && !linked_too {
            return Ok(Some((st.st_dev, st.st_ino)));
        }
        let dst = rustix::fs::open(
            to,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| Error::io("create", to, e))?;
        let cloned = self.may_clone.load(Ordering::Relaxed)
            && match rustix::fs::ioctl_ficlone(&dst, &src) {
                Ok(()) => true,
                Err(_) => {
                    self.may_clone.store(false, Ordering::Relaxed);
                    false
                }
            };
        if !cloned {
            copy_data(src.as_fd(), dst.as_fd(), st.st_size as u64)
                .map_err(|e| Error::io("copy", to, e))?;
        }
        finish_file(&src, &dst, &st, to, self.as_root)?;
        Ok(None)
    }
}

/// Copies the `size` bytes of `src` into the empty file `dst`, its data
/// only: holes stay holes (a layer's sparse file of 64 GiB and a few KB of
/// data must not become 64 GiB of disk in a copy). In the kernel
/// (`copy_file_range`) where the filesystem can, else through a buffer.
pub(crate) fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let mut offset = 0;
    while offset < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // Nothing but a hole from here to the end.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(src, SeekFrom::Hole(data))?.min(size);
        copy_range(src, dst, data, hole.saturating_sub(data))?;
        offset = hole.max(data + 1);
    }
    rustix::fs::ftruncate(dst, size)?;
    Ok(())
}

/// Copies `len` bytes at `offset` of `src` to the same offset of `dst`.
fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let (mut from, mut to) = (offset, offset);
    let end = offset + len;
    while from < end {
        let want = (end - from).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
            Ok(n) if n > 0 => {}
            // Filesystems without copy_file_range, or that answer 0 where
            // they will not copy (FUSE, older kernels): through a buffer,
            // which stops only at the file's real end.
            Ok(_) | Err(_) => {
                use std::os::unix::fs::FileExt;
                let (src, dst) = (
                    File::from(src.try_clone_to_owned()?),
                    File::from(dst.try_clone_to_owned()?),
                );
                let mut buf = vec![0; (end - from).min(1 << 20) as usize];
                while from < end {
                    let want = (end - from).min(buf.len() as u64) as usize;
                    let n = src.read_at(&mut buf[..want], from)?;
                    if n == 0 {
                        return Ok(());
                    }
                    dst.write_all_at(&buf[..n], from)?;
                    from += n as u64;
                }
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid), xattrs, then times, on the copy.
fn finish_file(
    src: impl AsFd,
    dst: impl AsFd,
    st: &rustix::fs::Stat,
    to: &Path,
    as_root: bool,
) -> Result<()> {
    let (src, dst) = (src.as_fd(), dst.as_fd());
    if as_root {
        rustix::fs::fchown(
            dst,
            Some(Uid::from_raw(st.st_uid)),
            Some(Gid::from_raw(st.st_gid)),
        )
        .map_err(|e| Error::io("chown", to, e))?;
    }
    rustix::fs::fchmod(dst, Mode::from_raw_mode(st.st_mode & 0o7777))
        .map_err(|e| Error::io("chmod", to, e))?;
    copy_fd_xattrs(src, dst, to)?;
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    };
    rustix::fs::futimens(dst, &times).map_err(|e| Error::io("utimes", to, e))
}

fn copy_fd_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, to: &Path) -> Result<()> {
    let mut names = vec![0u8; 1024];
    let n = match rustix::fs::flistxattr(src, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            let size =
                rustix::fs::flistxattr_query(src).map_err(|e| Error::io("listxattr", to, e))?;
            names.resize(size, 0);
            rustix::fs::flistxattr(src, &mut names[..])
                .map_err(|e| Error::io("listxattr", to, e))?
        }
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(()),
        Err(e) => return Err(Error::io("listxattr", to, e)),
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
        let size = match rustix::fs::fgetxattr_query(src, name) {
            Ok(size) => size,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(Error::io("getxattr", to, e)),
        };
        let mut value = vec![0u8; size];
        let n = rustix::fs::fgetxattr(src, name, &mut value[..])
            .map_err(|e| Error::io("getxattr", to, e))?;
        match rustix::fs::fsetxattr(dst, name, &value[..n], rustix::fs::XattrFlags::empty()) {
            Err(e) if !xattr_refused(e) => return Err(Error::io("setxattr", to, e)),
            _ => {}
        }
    }
    Ok(())
}

/// Whether a refused `setxattr` leaves the copy without that attribute and
/// goes on, as containerd's native snapshotter does (moby/buildkit#1189):
/// `security.*` under SELinux, `trusted.*` without `CAP_SYS_ADMIN`, a
/// filesystem without the namespace. A failure of the disk is not such.
fn xattr_refused(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    matches!(e, Errno::PERM | Errno::ACCESS | Errno::OPNOTSUPP)
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
    set_times(to, meta)
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
        match rustix::fs::lsetxattr(to, name, &value[..n], rustix::fs::XattrFlags::empty()) {
            Err(e) if !xattr_refused(e) => return Err(Error::io("setxattr", to, e)),
            _ => {}
        }
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
    let error = |e: io::Error| Error::io("remove", path, e);
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(error(e)),
        Ok(meta) if !meta.is_dir() => return fs::remove_file(path).map_err(error),
        Ok(_) => {}
    }
    remove_tree_iteratively(path).map_err(|e| error(e.into()))?;
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(error(e)),
        _ => Ok(()),
    }
}

/// A directory being emptied: its name in its parent, its subdirectories
/// not yet removed, and whether it was read again already.
struct Emptying {
    name: std::ffi::CString,
    /// Its device and inode: the `..` that leads back to it must be it.
    id: (u64, u64),
    subdirs: Vec<std::ffi::CString>,
    reread: bool,
}

fn id_of(dir: &std::os::fd::OwnedFd) -> rustix::io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(dir)?;
    Ok((st.st_dev, st.st_ino))
}

/// Empties the directory `path`, however deep its tree, with one directory
/// open at a time and no recursion: it goes down by name and back up by
/// `..`. std's `remove_dir_all` recurses, a stack frame and a descriptor per
/// level, and a layer's symlinks can build a tree 16,000 levels deep in
/// 80 KB: that overflowed a thread's stack and aborted the process. Its
/// symlinks are removed, never followed. Entries another process removes
/// meanwhile (two sweeping one leftover) are passed over.
fn remove_tree_iteratively(path: &Path) -> rustix::io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut current = rustix::fs::openat(CWD, path, flags, Mode::empty())?;
    let mut trail = vec![Emptying {
        name: std::ffi::CString::default(),
        id: id_of(&current)?,
        subdirs: empty_but_subdirs(&current)?,
        reread: false,
    }];
    loop {
        let top = trail
            .last_mut()
            .expect("the trail holds the root until the end");
        if let Some(subdir) = top.subdirs.pop() {
            current = match rustix::fs::openat(&current, subdir.as_c_str(), flags, Mode::empty()) {
                Ok(dir) => dir,
                // Another process sweeping the same leftover got there first.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e),
            };
            let subdirs = empty_but_subdirs(&current)?;
            trail.push(Emptying {
                name: subdir,
                id: id_of(&current)?,
                subdirs,
                reread: false,
            });
            continue;
        }
        let done = trail.pop().expect("just looked at");
        if trail.is_empty() {
            return Ok(());
        }
        let parent = rustix::fs::openat(&current, c"..", flags, Mode::empty())?;
        // Moved out of the tree meanwhile: `..` is someone else's directory.
        if Some(id_of(&parent)?) != trail.last().map(|up| up.id) {
            return Err(rustix::io::Errno::STALE);
        }
        match rustix::fs::unlinkat(&parent, done.name.as_c_str(), AtFlags::REMOVEDIR) {
            // An entry a reader missed while its directory changed under it
            // (unspecified by POSIX): read it once more.
            Err(rustix::io::Errno::NOTEMPTY) if !done.reread => {
                let subdirs = empty_but_subdirs(&current)?;
                trail.push(Emptying {
                    name: done.name,
                    id: done.id,
                    subdirs,
                    reread: true,
                });
                continue;
            }
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        current = parent;
    }
}

/// Removes every entry of the open directory `dir` but its subdirectories,
/// and returns their names.
fn empty_but_subdirs(dir: &std::os::fd::OwnedFd) -> rustix::io::Result<Vec<std::ffi::CString>> {
    let mut subdirs = Vec::new();
    let mut entries = rustix::fs::Dir::read_from(dir)?;
    while let Some(entry) = entries.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => {
                match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => stat.st_mode & libc::S_IFMT == libc::S_IFDIR,
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e),
                }
            }
            _ => false,
        };
        if is_dir {
            subdirs.push(name.to_owned());
        } else {
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                // Removed by another process sweeping the same leftover.
                Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(subdirs)
}

/// fsyncs a directory, so a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io("fsync", dir, e))
}
