//! Paths resolved beneath a root: nothing a layer names can reach outside it.
//!
//! Every lookup goes through `openat2(2)` with `RESOLVE_IN_ROOT`, so the kernel
//! treats the root as `/`: absolute symlinks and `..` in symlink targets stay
//! inside, magic links are refused. Entry names themselves may not hold `..`
//! at all. The final component of an entry is never followed: it is created,
//! replaced or removed with `*at` calls on its parent's descriptor.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::{Error, Result};

/// A tar entry name made relative and checked: no `..`, no empty result
/// except for the root itself.
pub(crate) fn clean(name: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for component in name.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                return Err(Error::InvalidArgument(format!(
                    "layer entry {:?}: `..` is refused",
                    name.display()
                )));
            }
            Component::Normal(part) => out.push(part),
        }
    }
    Ok(out)
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// Opens `rel` (a directory) beneath `root`, following symlinks as if `root`
/// were `/`.
pub(crate) fn open_dir_in(root: BorrowedFd<'_>, rel: &Path) -> rustix::io::Result<OwnedFd> {
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut attempts = 0;
    loop {
        match rustix::fs::openat2(
            root,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        ) {
            // The kernel asks for a retry when a rename or mount elsewhere
            // raced a `..` walk under RESOLVE_IN_ROOT.
            Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
            other => return other,
        }
    }
}

/// Owner and mode for a parent directory the layer did not list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirMeta {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl DirMeta {
    /// For a directory no lower has: root's, 0755.
    const DEFAULT: DirMeta = DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
}

/// The root being written, with a small cache of parent directories.
pub(crate) struct Root {
    pub(crate) path: PathBuf,
    pub(crate) fd: OwnedFd,
    /// Directories a parent's metadata is copied from when the layer does not
    /// list it (overlay lowers, newest first); opened at first use, since
    /// most layers never look.
    lower_paths: Vec<PathBuf>,
    lowers: Option<Vec<OwnedFd>>,
    /// Blocks until the lowers are complete (they may still be being applied
    /// when this layer starts); called once, before the first look.
    lowers_ready: Option<LowersReady>,
    cache: HashMap<PathBuf, OwnedFd>,
    privileged: bool,
}

/// Waits until the lower layers are fully applied; an error if one failed.
pub(crate) type LowersReady = std::sync::Arc<dyn Fn() -> Result<()> + Send + Sync>;

fn open_path(p: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        p,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("open", p, e))
}

impl Root {
    pub(crate) fn open(
        path: &Path,
        lowers: &[PathBuf],
        lowers_ready: Option<LowersReady>,
        privileged: bool,
    ) -> Result<Self> {
        Ok(Root {
            path: path.to_path_buf(),
            fd: open_path(path)?,
            lower_paths: lowers.to_vec(),
            lowers: None,
            lowers_ready,
            cache: HashMap::new(),
            privileged,
        })
    }

    /// The lower directories, complete.
    fn lowers(&mut self) -> Result<&[OwnedFd]> {
        if self.lowers.is_none() {
            if let Some(ready) = self.lowers_ready.take() {
                ready()?;
            }
            let fds = self
                .lower_paths
                .iter()
                .map(|p| open_path(p))
                .collect::<Result<_>>()?;
            self.lowers = Some(fds);
        }
        Ok(self.lowers.as_deref().unwrap_or_default())
    }

    /// Forgets cached directories: something was removed or replaced.
    pub(crate) fn invalidate(&mut self) {
        self.cache.clear();
    }

    /// The directory `rel`, made (with its missing ancestors) if it does not
    /// exist. A missing ancestor takes its owner and mode from the newest
    /// lower that has it, else root-owned 0755.
    pub(crate) fn dir(&mut self, rel: &Path) -> Result<BorrowedFd<'_>> {
        if !self.cache.contains_key(rel) {
            let fd = match open_dir_in(self.fd.as_fd(), rel) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => self.make_parents(rel)?,
                Err(Errno::NOTDIR) => {
                    return Err(Error::InvalidArgument(format!(
                        "layer entry under {:?}: a parent is not a directory",
                        rel.display()
                    )));
                }
                Err(e) => return Err(Error::io("open", self.path.join(rel), e)),
            };
            if self.cache.len() > 256 {
                self.cache.clear();
            }
            self.cache.insert(rel.to_path_buf(), fd);
        }
        Ok(self.cache[rel].as_fd())
    }

    /// The directory `rel` if it exists (no creation).
    pub(crate) fn existing_dir(&self, rel: &Path) -> Result<Option<OwnedFd>> {
        match open_dir_in(self.fd.as_fd(), rel) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
            Err(e) => Err(Error::io("open", self.path.join(rel), e)),
        }
    }

    /// The directory a whiteout under `rel` goes in, on an overlay upper
    /// directory: `None` when there is nothing to hide (`rel` is a non-directory
    /// here, or exists in no lower), else the directory, made if needed.
    pub(crate) fn whiteout_dir(&mut self, rel: &Path) -> Result<Option<BorrowedFd<'_>>> {
        match open_dir_in(self.fd.as_fd(), rel) {
            Ok(_) => self.dir(rel).map(Some),
            Err(Errno::NOTDIR) => Ok(None),
            Err(Errno::NOENT) => {
                let in_a_lower = self
                    .lowers()?
                    .iter()
                    .any(|lower| open_dir_in(lower.as_fd(), rel).is_ok());
                if in_a_lower {
                    self.dir(rel).map(Some)
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(Error::io("open", self.path.join(rel), e)),
        }
    }

    fn make_parents(&mut self, rel: &Path) -> Result<OwnedFd> {
        let mut current = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup", &self.path, e))?;
        let mut prefix = PathBuf::new();
        for part in rel.iter() {
            prefix.push(part);
            match open_dir_in(self.fd.as_fd(), &prefix) {
                Ok(fd) => current = fd,
                Err(Errno::NOENT) => {
                    let meta = self.lower_meta(&prefix)?;
                    mkdir_with(current.as_fd(), part, meta, self.privileged)
                        .map_err(|e| Error::io("mkdir", self.path.join(&prefix), e))?;
                    current = open_dir_in(self.fd.as_fd(), &prefix)
                        .map_err(|e| Error::io("open", self.path.join(&prefix), e))?;
                }
                Err(Errno::NOTDIR) => {
                    return Err(Error::InvalidArgument(format!(
                        "layer entry under {:?}: {:?} is not a directory",
                        rel.display(),
                        prefix.display()
                    )));
                }
                Err(e) => return Err(Error::io("open", self.path.join(&prefix), e)),
            }
        }
        Ok(current)
    }

    fn lower_meta(&mut self, rel: &Path) -> Result<DirMeta> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Ok(DirMeta::DEFAULT);
        };
        for lower in self.lowers()? {
            // The parent is resolved inside the lower, as a symlink in a layer
            // means it; the host's directories are never looked at.
            let Ok(dir) = open_dir_in(lower.as_fd(), parent) else {
                continue;
            };
            if let Ok(st) = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR
            {
                return Ok(DirMeta {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                });
            }
        }
        Ok(DirMeta::DEFAULT)
    }
}

/// Where the target of a hardlink is, on an overlay upper directory.
pub(crate) enum LinkSource {
    /// In the upper directory (this layer wrote it): link to it there.
    Upper,
    /// Only in a lower layer, in this directory of it: copy it up first, as
    /// overlayfs does before it links.
    Lower(OwnedFd),
    /// Nowhere in the merged view: absent, whited out, hidden by an opaque
    /// directory, or behind a non-directory (a symlink is not followed: a
    /// hardlink names an entry, not where a symlink leads).
    Missing,
}

/// What one layer says about a path.
enum Look {
    /// It has the entry; here is its parent directory.
    Found(OwnedFd),
    /// It hides the entry from the layers below it.
    Hidden,
    /// It says nothing: ask the layer below.
    Absent,
}

/// Looks `rel` up in one layer, without following symlinks.
fn look(layer: BorrowedFd<'_>, rel: &Path, opaque_xattr: &str) -> rustix::io::Result<Look> {
    let parts: Vec<&OsStr> = rel.iter().collect();
    let mut dir = rustix::io::dup(layer)?;
    let mut opaque = false;
    for (i, part) in parts.iter().enumerate() {
        let st = match rustix::fs::statat(&dir, *part, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(if opaque { Look::Hidden } else { Look::Absent }),
            Err(e) => return Err(e),
        };
        let kind = st.st_mode & libc::S_IFMT;
        let whiteout = kind == libc::S_IFCHR && st.st_rdev == 0;
        if i + 1 == parts.len() {
            // A directory cannot be linked to; neither can a whiteout.
            return Ok(if whiteout || kind == libc::S_IFDIR {
                Look::Hidden
            } else {
                Look::Found(dir)
            });
        }
        if kind != libc::S_IFDIR {
            return Ok(Look::Hidden);
        }
        dir = rustix::fs::openat(
            &dir,
            *part,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut value = [0u8; 1];
        opaque |= matches!(
            rustix::fs::fgetxattr(&dir, opaque_xattr, &mut value),
            Ok(1) if value == *b"y"
        );
    }
    Ok(Look::Absent)
}

impl Root {
    /// Finds the target `rel` of a hardlink in the merged view of this upper
    /// directory over its lowers (newest first). `opaque_xattr` marks
    /// opaque directories.
    pub(crate) fn link_source(&mut self, rel: &Path, opaque_xattr: &str) -> Result<LinkSource> {
        let error = |e| Error::io("look up", self.path.join(rel), e);
        match look(self.fd.as_fd(), rel, opaque_xattr).map_err(error)? {
            Look::Found(_) => return Ok(LinkSource::Upper),
            Look::Hidden => return Ok(LinkSource::Missing),
            Look::Absent => {}
        }
        let path = self.path.join(rel);
        for lower in self.lowers()? {
            match look(lower.as_fd(), rel, opaque_xattr)
                .map_err(|e| Error::io("look up", &path, e))?
            {
                Look::Found(dir) => return Ok(LinkSource::Lower(dir)),
                Look::Hidden => return Ok(LinkSource::Missing),
                Look::Absent => {}
            }
        }
        Ok(LinkSource::Missing)
    }
}

fn mkdir_with(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    meta: DirMeta,
    privileged: bool,
) -> rustix::io::Result<()> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
    if privileged {
        rustix::fs::chownat(
            parent,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    rustix::fs::chmodat(
        parent,
        name,
        Mode::from_raw_mode(meta.mode | if privileged { 0 } else { 0o700 }),
        AtFlags::empty(),
    )
}

/// Removes `name` in `parent`, recursively for a directory; missing is fine.
pub(crate) fn remove_at(parent: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => remove_dir_at(parent, name),
        Err(e) => Err(e),
    }
}

fn remove_dir_at(parent: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    clear_dir(dir.as_fd(), Path::new(""), &|_| false)?;
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

/// Removes every entry of `dir` (at `rel`) for which `keep` is false, at any
/// depth: a kept directory is cleared in turn of what `keep` refuses.
pub(crate) fn clear_dir(
    dir: BorrowedFd<'_>,
    rel: &Path,
    keep: &dyn Fn(&Path) -> bool,
) -> rustix::io::Result<()> {
    let mut names = Vec::new();
    {
        let mut reader = rustix::fs::Dir::read_from(dir)?;
        while let Some(entry) = reader.read() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            names.push(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name).to_os_string());
        }
    }
    for name in names {
        let child = rel.join(&name);
        if !keep(&child) {
            remove_at(dir, &name)?;
            continue;
        }
        let st = rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)?;
        if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR {
            let sub = rustix::fs::openat(
                dir,
                &name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            clear_dir(sub.as_fd(), &child, keep)?;
        }
    }
    Ok(())
}
