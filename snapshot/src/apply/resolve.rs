//! Paths resolved beneath a root: nothing a layer names can reach outside it.
//!
//! Every lookup goes through `openat2(2)` with `RESOLVE_IN_ROOT`, so the kernel
//! treats the root as `/`: absolute symlinks and `..` in symlink targets stay
//! inside, magic links are refused. Entry names themselves may not hold `..`
//! at all. The final component of an entry is never followed: it is created,
//! replaced or removed with `*at` calls on its parent's descriptor.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

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
    open_dir_with(root, rel, resolve_flags())
}

/// Opens `rel` (a directory) beneath `root` only if no symlink is on the way.
pub(crate) fn open_dir_exact(root: BorrowedFd<'_>, rel: &Path) -> rustix::io::Result<OwnedFd> {
    open_dir_with(root, rel, resolve_flags() | ResolveFlags::NO_SYMLINKS)
}

fn open_dir_with(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
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
            flags,
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
    /// On an overlay upper directory, the xattr that marks a directory
    /// opaque; `None` on a whole tree.
    opaque_xattr: Option<String>,
    /// Parents made without root, kept writable (`0700` added) while the
    /// layer fills them: each with the mode it gets at the end, its device
    /// and inode, and when it was noted (see `clock`).
    pub(crate) pending_modes: Vec<(PathBuf, u32, (u64, u64), u64)>,
    /// Orders what is noted about directories against their removals,
    /// shared with the applier: a note older than its directory's removal
    /// is stale even when a new directory gets the inode number.
    clock: Rc<Cell<u64>>,
    /// Extended attributes refused in ways that are skipped (`xattr_set`).
    skipped_xattrs: Rc<Cell<u64>>,
}

/// Directories removed while a layer is written, each with when it last was
/// (`clock`): a note about a directory taken before its removal is stale,
/// even when a new directory gets its inode number.
pub(crate) struct Removals {
    clock: Rc<Cell<u64>>,
    at: HashMap<(u64, u64), u64>,
}

impl Removals {
    pub(crate) fn new(clock: Rc<Cell<u64>>) -> Self {
        Removals {
            clock,
            at: HashMap::new(),
        }
    }

    fn note(&mut self, id: (u64, u64)) {
        self.at.insert(id, tick(&self.clock));
    }

    /// Whether the directory `id` was removed after `noted`.
    pub(crate) fn since(&self, id: &(u64, u64), noted: u64) -> bool {
        self.at.get(id).is_some_and(|&at| at > noted)
    }
}

/// The next time on `clock`, which orders notes about directories against
/// their removals.
pub(crate) fn tick(clock: &Cell<u64>) -> u64 {
    let now = clock.get() + 1;
    clock.set(now);
    now
}

/// An entry found in a layer by [`Root::below`].
pub(crate) struct Found {
    /// Its parent directory in that layer.
    pub(crate) dir: OwnedFd,
    pub(crate) stat: rustix::fs::Stat,
}

impl Found {
    fn is_dir(&self) -> bool {
        (self.stat.st_mode & libc::S_IFMT) == libc::S_IFDIR
    }
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
        opaque_xattr: Option<&str>,
        skipped_xattrs: Rc<Cell<u64>>,
        clock: Rc<Cell<u64>>,
    ) -> Result<Self> {
        Ok(Root {
            path: path.to_path_buf(),
            fd: open_path(path)?,
            lower_paths: lowers.to_vec(),
            lowers: None,
            lowers_ready,
            cache: HashMap::new(),
            privileged,
            opaque_xattr: opaque_xattr.map(str::to_string),
            pending_modes: Vec::new(),
            clock,
            skipped_xattrs,
        })
    }

    /// The lower directories, complete.
    pub(crate) fn lowers(&mut self) -> Result<&[OwnedFd]> {
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
    /// exist. A missing ancestor takes its owner and mode from the directory
    /// of that name the lowers show, else root-owned 0755. An ancestor that is
    /// a file, device or whiteout is replaced by such a directory, as a
    /// directory entry of that name would replace it (see `make_parents`).
    pub(crate) fn dir(&mut self, rel: &Path) -> Result<BorrowedFd<'_>> {
        if !self.cache.contains_key(rel) {
            let fd = match open_dir_in(self.fd.as_fd(), rel) {
                Ok(fd) => fd,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => self.make_parents(rel)?,
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
                let in_a_lower = self.below(rel)?.is_some_and(|found| found.is_dir());
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
                    let (meta, xattrs) = self.lower_meta(&prefix)?;
                    mkdir_with(current.as_fd(), part, meta, self.privileged)
                        .map_err(|e| Error::io("mkdir", self.path.join(&prefix), e))?;
                    for (key, value) in &xattrs {
                        let set = super::set_xattr_at(current.as_fd(), part, key, value);
                        super::xattr_set(set, key, true, self.privileged, &self.skipped_xattrs)
                            .map_err(|e| Error::io("setxattr", self.path.join(&prefix), e))?;
                    }
                    current = open_dir_in(self.fd.as_fd(), &prefix)
                        .map_err(|e| Error::io("open", self.path.join(&prefix), e))?;
                    if !self.privileged && meta.mode & 0o700 != 0o700 {
                        let st = rustix::fs::fstat(&current)
                            .map_err(|e| Error::io("stat", self.path.join(&prefix), e))?;
                        self.pending_modes.push((
                            prefix.clone(),
                            meta.mode,
                            (st.st_dev, st.st_ino),
                            tick(&self.clock),
                        ));
                    }
                }
                Err(Errno::NOTDIR) => {
                    current = self.replace_with_dir(current.as_fd(), part, &prefix, rel)?;
                }
                Err(e) => return Err(Error::io("open", self.path.join(&prefix), e)),
            }
        }
        Ok(current)
    }

    /// `name` in `parent` (at `prefix`) is in the way of the directory an
    /// entry under `rel` needs. A file, device or whiteout there goes, as a
    /// directory entry of that name would replace it: tar's "the later entry
    /// wins", and what overlayfs shows when a lower layer's file is under a
    /// new upper directory. Native and overlay agree on it. A symlink that
    /// leads to no directory is the layer's error.
    fn replace_with_dir(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        prefix: &Path,
        rel: &Path,
    ) -> Result<OwnedFd> {
        let path = self.path.join(prefix);
        let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io("stat", &path, e))?;
        if (st.st_mode & libc::S_IFMT) == libc::S_IFLNK {
            return Err(Error::InvalidArgument(format!(
                "layer entry under {:?}: {:?} is a symlink to no directory",
                rel.display(),
                prefix.display()
            )));
        }
        // Never a directory: that would have been opened.
        rustix::fs::unlinkat(parent, name, AtFlags::empty())
            .map_err(|e| Error::io("remove", &path, e))?;
        mkdir_with(parent, name, DirMeta::DEFAULT, self.privileged)
            .map_err(|e| Error::io("mkdir", &path, e))?;
        if let Some(xattr) = &self.opaque_xattr {
            // What the layer deleted or replaced here must not show through
            // from a lower directory of that name.
            let dir = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| Error::io("open", &path, e))?;
            rustix::fs::fsetxattr(&dir, xattr.as_str(), b"y", rustix::fs::XattrFlags::empty())
                .map_err(|e| Error::io("setxattr", &path, e))?;
        }
        open_dir_in(self.fd.as_fd(), prefix).map_err(|e| Error::io("open", &path, e))
    }

    /// Owner, mode and xattrs (but overlayfs's own) for a parent made in the
    /// upper directory: those of the directory the lowers show there, as a
    /// mounted overlay would copy it up.
    fn lower_meta(&mut self, rel: &Path) -> Result<(DirMeta, super::Xattrs)> {
        let Some(found) = self.below(rel)?.filter(Found::is_dir) else {
            return Ok((DirMeta::DEFAULT, Vec::new()));
        };
        let name = rel.file_name().unwrap_or_default();
        let xattrs = super::copy_up::xattrs(&super::copy_up::proc_path(found.dir.as_fd(), name))?;
        let st = found.stat;
        let meta = DirMeta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        };
        Ok((meta, xattrs))
    }

    /// Every name at the root of any lower.
    pub(crate) fn lower_root_names(&mut self) -> Result<BTreeSet<OsString>> {
        self.lowers()?;
        let lowers = self.lowers.as_deref().unwrap_or_default();
        let mut names = BTreeSet::new();
        for (lower, path) in lowers.iter().zip(&self.lower_paths) {
            let error = |e| Error::io("read", path, e);
            let dir = rustix::fs::openat(
                lower,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(error)?;
            for entry in rustix::fs::Dir::read_from(&dir).map_err(error)? {
                let name = entry.map_err(error)?.file_name().to_bytes().to_vec();
                if name != b"." && name != b".." {
                    names.insert(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                        name,
                    ));
                }
            }
        }
        Ok(names)
    }

    /// What overlayfs would show at `rel` for this upper directory over its
    /// lowers: the entry of the newest layer that has it, unless a whiteout,
    /// a non-directory or an opaque directory above it hides it. Names are
    /// matched, never followed: overlayfs merges directories by name, and a
    /// symlink in a layer leads nowhere here (least of all to the host).
    /// `None` on a whole tree, which has no lowers.
    pub(crate) fn below(&mut self, rel: &Path) -> Result<Option<Found>> {
        self.merged(rel, true)
    }

    /// Whether the lowers show an entry at `rel`, whatever the upper
    /// directory has at that name (a whiteout, say); the upper directory's
    /// opaque directories above it still hide them.
    pub(crate) fn lowers_show(&mut self, rel: &Path) -> Result<bool> {
        Ok(self.merged(rel, false)?.is_some())
    }

    fn merged(&mut self, rel: &Path, upper_entry: bool) -> Result<Option<Found>> {
        if self.opaque_xattr.is_none() {
            return Ok(None);
        }
        self.lowers()?;
        let opaque_xattr = self.opaque_xattr.as_deref().unwrap_or_default();
        let lowers = self.lowers.as_deref().unwrap_or_default();
        let path = self.path.join(rel);
        let error = |e| Error::io("look up", &path, e);
        // Each layer's directory at the prefix walked so far, newest first,
        // and whether it is the upper directory's. The layers' own roots are
        // borrowed; only the directories opened below them are owned.
        let mut dirs: Vec<(Layered<'_>, bool)> = std::iter::once((self.fd.as_fd(), true))
            .chain(lowers.iter().map(|lower| (lower.as_fd(), false)))
            .map(|(fd, upper)| (Layered::Root(fd), upper))
            .collect();
        let parts: Vec<&OsStr> = rel.iter().collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let mut next = Vec::new();
            for (dir, upper) in dirs {
                if last && upper && !upper_entry {
                    continue;
                }
                let st = match rustix::fs::statat(dir.as_fd(), *part, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(error(e)),
                };
                let kind = st.st_mode & libc::S_IFMT;
                if kind == libc::S_IFCHR && st.st_rdev == 0 {
                    break; // a whiteout: nothing of this name below
                }
                if last {
                    let dir = match dir {
                        Layered::Root(fd) => rustix::io::dup(fd).map_err(error)?,
                        Layered::Opened(fd) => fd,
                    };
                    return Ok(Some(Found { dir, stat: st }));
                }
                if kind != libc::S_IFDIR {
                    break; // a non-directory hides the directories below it
                }
                let sub = rustix::fs::openat(
                    dir.as_fd(),
                    *part,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(error)?;
                let opaque = is_opaque(sub.as_fd(), opaque_xattr);
                next.push((Layered::Opened(sub), upper));
                if opaque {
                    break;
                }
            }
            if next.is_empty() {
                return Ok(None);
            }
            dirs = next;
        }
        Ok(None)
    }
}

/// A layer's directory in [`Root::merged`]'s walk.
enum Layered<'a> {
    /// The layer's root, held by [`Root`].
    Root(BorrowedFd<'a>),
    /// A directory opened beneath it.
    Opened(OwnedFd),
}

impl Layered<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Layered::Root(fd) => *fd,
            Layered::Opened(fd) => fd.as_fd(),
        }
    }
}

/// Whether the directory `dir` (opened for reading) carries `opaque_xattr`.
fn is_opaque(dir: BorrowedFd<'_>, opaque_xattr: &str) -> bool {
    let mut value = [0u8; 1];
    matches!(
        rustix::fs::fgetxattr(dir, opaque_xattr, &mut value),
        Ok(1) if value == *b"y"
    )
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
        opaque |= is_opaque(dir.as_fd(), opaque_xattr);
    }
    Ok(Look::Absent)
}

impl Root {
    /// Finds the target `rel` of a hardlink in the merged view of this upper
    /// directory over its lowers (newest first). `opaque_xattr` marks
    /// opaque directories.
    pub(crate) fn link_source(&mut self, rel: &Path, opaque_xattr: &str) -> Result<LinkSource> {
        let path = self.path.join(rel);
        let error = |e| Error::io("look up", &path, e);
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

/// How deep a directory tree removal goes: each level holds a descriptor
/// and a few stack frames, and a layer can reach trees far deeper than a
/// path can spell by symlinks (about 80,000 levels in 45 entries), where
/// the blocking thread's stack would overflow and abort the process. Real
/// trees stop at tens of levels.
const MAX_REMOVE_DEPTH: usize = 512;

/// Removes `name` in `parent`, recursively for a directory; missing is fine.
/// Each directory removed is noted in `removed`. A tree deeper than
/// [`MAX_REMOVE_DEPTH`] is refused (`ENAMETOOLONG`), not removed.
pub(crate) fn remove_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    removed: &mut Removals,
) -> rustix::io::Result<()> {
    remove_below(parent, name, removed, 0)
}

fn remove_below(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    removed: &mut Removals,
    depth: usize,
) -> rustix::io::Result<()> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => remove_dir_at(parent, name, removed, depth),
        Err(e) => Err(e),
    }
}

fn remove_dir_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    removed: &mut Removals,
    depth: usize,
) -> rustix::io::Result<()> {
    if depth >= MAX_REMOVE_DEPTH {
        return Err(Errno::NAMETOOLONG);
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&dir)?;
    clear_below(dir.as_fd(), Path::new(""), &|_| false, removed, depth + 1)?;
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    removed.note((st.st_dev, st.st_ino));
    Ok(())
}

/// Removes every entry of `dir` (at `rel`) for which `keep` is false, at any
/// depth: a kept directory is cleared in turn of what `keep` refuses.
/// Directories removed are noted in `removed`, as by [`remove_at`].
pub(crate) fn clear_dir(
    dir: BorrowedFd<'_>,
    rel: &Path,
    keep: &dyn Fn(&Path) -> bool,
    removed: &mut Removals,
) -> rustix::io::Result<()> {
    clear_below(dir, rel, keep, removed, 0)
}

fn clear_below(
    dir: BorrowedFd<'_>,
    rel: &Path,
    keep: &dyn Fn(&Path) -> bool,
    removed: &mut Removals,
    depth: usize,
) -> rustix::io::Result<()> {
    if depth >= MAX_REMOVE_DEPTH {
        return Err(Errno::NAMETOOLONG);
    }
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
            remove_below(dir, &name, removed, depth)?;
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
            clear_below(sub.as_fd(), &child, keep, removed, depth + 1)?;
        }
    }
    Ok(())
}
