//! Paths resolved beneath a root: nothing a layer names can reach outside it.
//!
//! A lookup treats the root as `/`: absolute symlinks and `..` in symlink
//! targets stay inside. A name with no symlink on the way is one `openat2(2)`
//! that follows none (`RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS`). A name with one
//! is walked here a directory at a time, each symlink read and its target
//! walked in turn: the kernel would follow up to 40 nested targets of 4 KB
//! each, tens of thousands of names for one lookup, for every entry of a
//! layer that names them. Here each symlink's resolution is remembered, a
//! lookup has a budget ([`MAX_LOOKUP_STEPS`]), and all of a layer's lookups
//! through symlinks share an allowance in proportion to its size
//! ([`Root::allow_work_for`]), which bounds what they cost whatever empties
//! the remembered resolutions. Entry names themselves may not hold `..` at all.
//! The final component of an entry is never followed: it is created,
//! replaced or removed with `*at` calls on its parent's descriptor.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
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

/// How many names one lookup through symlinks may walk, their targets'
/// names (and each `..`) included. Real layers take tens; a path of 4,096
/// bytes has at most 2,048 names.
const MAX_LOOKUP_STEPS: usize = 16_384;

/// How many symlinks one lookup may follow: Linux's own limit.
const MAX_FOLLOWS: usize = 40;

/// A path beneath the root a directory resolves to must be shorter:
/// `PATH_MAX`, which containerd's path strings cannot reach either (nor the
/// kernel's own path arguments). It bounds how deep a layer can build its
/// tree.
const MAX_RESOLVED_LEN: usize = 4096;

/// What lookups through symlinks may do for any layer, however small
/// ([`Root::allow_work_for`]): about a second of directories opened.
const WORK_FOR_ANY_LAYER: u64 = 1_000_000;

/// How many symlink resolutions [`Root`] remembers before it starts afresh.
const MAX_REMEMBERED_LINKS: usize = 1024;

/// Opens `rel` (a directory) beneath `root` only if no symlink is on the way:
/// `ELOOP` if there is one.
pub(crate) fn open_dir_exact(root: BorrowedFd<'_>, rel: &Path) -> rustix::io::Result<OwnedFd> {
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
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS,
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
    /// Parent directories by the name a layer used, each with its path with
    /// no symlink in it.
    cache: HashMap<PathBuf, (OwnedFd, PathBuf)>,
    /// Where each symlink met in a lookup leads (its path with no symlink in
    /// it) and what walking there cost, by the symlink's own such path.
    /// Forgotten when something is removed or replaced (`invalidate`).
    links: HashMap<PathBuf, (PathBuf, Walked)>,
    /// Directories opened and symlinks read by lookups through symlinks so
    /// far, remembered ones reopened included, against what the layer's
    /// size allows ([`Root::allow_work_for`]): whatever empties the
    /// remembered resolutions, a layer's cost stays in proportion to it.
    work: u64,
    work_allowed: u64,
    /// Set when a lookup failed for want of `work_allowed`.
    out_of_work: bool,
    /// Set while [`Root::lower_dir_behind`] makes a symlink's target.
    making_a_target: bool,
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
            links: HashMap::new(),
            work: 0,
            work_allowed: WORK_FOR_ANY_LAYER,
            out_of_work: false,
            making_a_target: false,
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

    /// Forgets cached directories and symlink resolutions: something was
    /// removed or replaced.
    pub(crate) fn invalidate(&mut self) {
        self.cache.clear();
        self.links.clear();
    }

    /// Lets lookups through symlinks open a directory or read a symlink
    /// once per byte of the layer read so far (`layer_bytes`), beyond
    /// [`WORK_FOR_ANY_LAYER`]. Real layers use a small part of it.
    pub(crate) fn allow_work_for(&mut self, layer_bytes: u64) {
        self.work_allowed = WORK_FOR_ANY_LAYER.saturating_add(layer_bytes);
        self.out_of_work = false;
    }

    /// Counts `steps` of a lookup's work; `ELOOP` past what is allowed.
    fn charge(&mut self, steps: usize) -> rustix::io::Result<()> {
        self.work = self.work.saturating_add(steps as u64);
        if self.work > self.work_allowed {
            self.out_of_work = true;
            return Err(Errno::LOOP);
        }
        Ok(())
    }

    /// The error of a failed lookup of `rel`: past a lookup's limits or the
    /// layer's allowance it is the layer's fault, and says so without
    /// quoting a path of thousands of names whole.
    fn lookup_error(&self, rel: &Path, e: Errno) -> Error {
        let limit = match e {
            Errno::LOOP if self.out_of_work => format!(
                "more lookups through symlinks than the layer's size allows ({} directories \
                 opened or symlinks read, {} allowed)",
                self.work, self.work_allowed
            ),
            Errno::LOOP => format!("more than {MAX_FOLLOWS} symlinks or {MAX_LOOKUP_STEPS} names"),
            Errno::NAMETOOLONG => format!(
                "a name longer than 255 bytes or a path of {MAX_RESOLVED_LEN} bytes or more"
            ),
            e => return Error::io("open", self.path.join(rel), e),
        };
        Error::Layer(format!(
            "entry under {}: resolving it takes {limit}",
            abbreviated(rel)
        ))
    }

    /// Opens the directory `rel` beneath the root, following symlinks as if
    /// the root were `/` (see the module's documentation).
    pub(crate) fn open_dir(&mut self, rel: &Path) -> rustix::io::Result<OwnedFd> {
        self.open_dir_resolved(rel).map(|(dir, _)| dir)
    }

    /// [`Root::open_dir`], with the directory's path with no symlink in it.
    fn open_dir_resolved(&mut self, rel: &Path) -> rustix::io::Result<(OwnedFd, PathBuf)> {
        match open_dir_exact(self.fd.as_fd(), rel) {
            Ok(dir) => Ok((dir, rel.to_path_buf())),
            Err(Errno::LOOP) => {
                let root = rustix::io::dup(self.fd.as_fd())?;
                let start = (root, PathBuf::new());
                self.resolve(start, rel, &mut Walked::default())
            }
            Err(e) => Err(e),
        }
    }

    /// Walks `rel` a name at a time from the root, reading each symlink and
    /// walking its target (from the root if absolute; `..` stops at the
    /// root), and remembers where each symlink led and what walking it cost.
    /// `ELOOP` past [`MAX_LOOKUP_STEPS`] names or [`MAX_FOLLOWS`] symlinks,
    /// counted as if nothing were remembered, so that what resolves does
    /// not depend on what was looked up before; `ENAMETOOLONG` for a
    /// directory deeper than [`MAX_RESOLVED_LEN`] bytes of path; as the
    /// kernel answers for its own limits. Walks from `start` (a directory
    /// and its path with no symlink in it; the root and an empty path for a
    /// whole lookup), adding to `cost`, what the lookup walked before it.
    /// Returns the directory and its path with no symlink in it.
    fn resolve(
        &mut self,
        start: (OwnedFd, PathBuf),
        rel: &Path,
        cost: &mut Walked,
    ) -> rustix::io::Result<(OwnedFd, PathBuf)> {
        match self.walk(start, rel, cost, false)? {
            (Some(dir), path) => Ok((dir, path)),
            // Only a walk past missing names ends without a directory.
            (None, _) => Err(Errno::NOENT),
        }
    }

    /// [`Root::resolve`]; with `past_missing`, a name missing on the way
    /// does not end the walk: it and what follows are taken as written (a
    /// name that is not there is no symlink; `..` goes back up them), and
    /// no directory is returned if the path ends among them.
    fn walk(
        &mut self,
        start: (OwnedFd, PathBuf),
        rel: &Path,
        cost: &mut Walked,
        past_missing: bool,
    ) -> rustix::io::Result<(Option<OwnedFd>, PathBuf)> {
        enum Step {
            Name(OsString),
            Up,
            /// The target of the symlink `link` is walked: remember where it
            /// led, and the cost counted since (`steps`, `follows` then).
            Led {
                link: PathBuf,
                steps: usize,
                follows: usize,
            },
        }
        let mut todo: Vec<Step> = rel
            .iter()
            .rev()
            .map(|name| Step::Name(name.to_os_string()))
            .collect();
        let (mut dir, mut path) = start;
        // How many names at the end of `path` are missing (`dir` is the
        // directory before them).
        let mut missing = 0usize;
        while let Some(step) = todo.pop() {
            let name = match step {
                // Where it led is not all there: nothing to remember.
                Step::Led { .. } if missing > 0 => continue,
                Step::Led {
                    link,
                    steps,
                    follows,
                } => {
                    if self.links.len() >= MAX_REMEMBERED_LINKS {
                        self.links.clear();
                    }
                    let walked = Walked {
                        steps: cost.steps - steps,
                        follows: cost.follows - follows,
                    };
                    self.links.insert(link, (path.clone(), walked));
                    continue;
                }
                Step::Up if missing > 0 => {
                    cost.add(Walked::STEP)?;
                    self.charge(1)?;
                    path.pop();
                    missing -= 1;
                    continue;
                }
                Step::Up => {
                    cost.add(Walked::STEP)?;
                    if path.pop() {
                        self.charge(1)?;
                        dir = rustix::fs::openat(
                            &dir,
                            "..",
                            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                    }
                    continue;
                }
                Step::Name(name) => name,
            };
            cost.add(Walked::STEP)?;
            self.charge(1)?;
            if missing > 0 {
                path.push(&name);
                missing += 1;
                if path.as_os_str().len() >= MAX_RESOLVED_LEN {
                    return Err(Errno::NAMETOOLONG);
                }
                continue;
            }
            match open_child_dir(dir.as_fd(), &name) {
                Err(Errno::NOENT) if past_missing => {
                    path.push(&name);
                    missing = 1;
                    if path.as_os_str().len() >= MAX_RESOLVED_LEN {
                        return Err(Errno::NAMETOOLONG);
                    }
                }
                Ok(child) => {
                    dir = child;
                    path.push(&name);
                    if path.as_os_str().len() >= MAX_RESOLVED_LEN {
                        return Err(Errno::NAMETOOLONG);
                    }
                }
                Err(Errno::LOOP) => {
                    let link = path.join(&name);
                    if let Some((led, walked)) = self.links.get(&link).cloned() {
                        cost.add(walked)?;
                        // The kernel walks every name of it again.
                        self.charge(led.iter().count().max(1))?;
                        dir = open_dir_exact(self.fd.as_fd(), &led)?;
                        path = led;
                        continue;
                    }
                    let (steps, follows) = (cost.steps, cost.follows);
                    cost.add(Walked::FOLLOW)?;
                    self.charge(1)?;
                    let target = rustix::fs::readlinkat(&dir, &name, Vec::new())?;
                    let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                    if target.as_os_str().is_empty() {
                        return Err(Errno::NOENT);
                    }
                    if target.has_root() {
                        dir = rustix::io::dup(self.fd.as_fd())?;
                        path.clear();
                    }
                    todo.push(Step::Led {
                        link,
                        steps,
                        follows,
                    });
                    for part in target.components().rev() {
                        match part {
                            Component::Normal(name) => todo.push(Step::Name(name.to_os_string())),
                            Component::ParentDir => todo.push(Step::Up),
                            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(((missing == 0).then_some(dir), path))
    }

    /// The path `rel` names in the upper directory with every symlink on
    /// the way followed, as [`Root::open_dir`] follows them; past a name
    /// missing there, the rest as written. `None` when a name on the way is
    /// no directory (or a symlink leads nowhere).
    pub(crate) fn upper_path(&mut self, rel: &Path) -> Result<Option<PathBuf>> {
        let root = rustix::io::dup(self.fd.as_fd()).map_err(|e| Error::io("dup", &self.path, e))?;
        let start = (root, PathBuf::new());
        match self.walk(start, rel, &mut Walked::default(), true) {
            Ok((_, path)) => Ok(Some(path)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
            Err(e) => Err(self.lookup_error(rel, e)),
        }
    }

    /// Counts a look at `rel` in every layer of the merged view against
    /// the layer's allowance, when it was reached through symlinks: a
    /// short name may lead thousands of directories deep. (A name the
    /// layer wrote out is paid for by its bytes.)
    pub(crate) fn charge_merged(&mut self, rel: &Path) -> Result<()> {
        let layers = 1 + self.lower_paths.len();
        self.charge(rel.iter().count().max(1) * layers)
            .map_err(|e| self.lookup_error(rel, e))
    }

    /// On an overlay upper directory, where a symlink this layer made (at
    /// `link`) leads to a directory only the lowers have: that directory,
    /// made in the upper one as a parent is (see [`Root::dir`]), with its
    /// path. A whole tree has everything in it: `None`, as when the
    /// merged view has no directory there either.
    fn lower_dir_behind(&mut self, link: &Path) -> Result<Option<(OwnedFd, PathBuf)>> {
        if self.opaque_xattr.is_none() || self.making_a_target {
            return Ok(None);
        }
        let Some(target) = self.upper_path(link)? else {
            return Ok(None);
        };
        self.charge_merged(&target)?;
        if !self.below(&target)?.is_some_and(|found| found.is_dir()) {
            return Ok(None);
        }
        // Its names are all directories or missing: making it follows no
        // symlink, so this does not recurse; the flag makes sure.
        self.making_a_target = true;
        let made = self.make_parents(&target);
        self.making_a_target = false;
        made.map(Some)
    }

    /// The directory `rel`, made (with its missing ancestors) if it does not
    /// exist. A missing ancestor takes its owner and mode from the directory
    /// of that name the lowers show, else root-owned 0755. An ancestor that is
    /// a file, device or whiteout is replaced by such a directory, as a
    /// directory entry of that name would replace it (see `make_parents`).
    pub(crate) fn dir(&mut self, rel: &Path) -> Result<BorrowedFd<'_>> {
        self.dir_resolved(rel).map(|(dir, _)| dir)
    }

    /// [`Root::dir`], with the directory's path with no symlink in it: what
    /// names the same directory however a layer reaches it.
    pub(crate) fn dir_resolved(&mut self, rel: &Path) -> Result<(BorrowedFd<'_>, &Path)> {
        if !self.cache.contains_key(rel) {
            let found = match self.open_dir_resolved(rel) {
                Ok(found) => found,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => self.make_parents(rel)?,
                Err(e) => return Err(self.lookup_error(rel, e)),
            };
            if self.cache.len() > 256 {
                self.cache.clear();
            }
            self.cache.insert(rel.to_path_buf(), found);
        }
        let (dir, resolved) = &self.cache[rel];
        Ok((dir.as_fd(), resolved))
    }

    /// The directory `rel` if it exists (no creation).
    pub(crate) fn existing_dir(&mut self, rel: &Path) -> Result<Option<OwnedFd>> {
        match self.open_dir(rel) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
            Err(e) => Err(self.lookup_error(rel, e)),
        }
    }

    /// The path of the directory `rel` with no symlink in it, if it exists.
    pub(crate) fn existing_dir_path(&mut self, rel: &Path) -> Result<Option<PathBuf>> {
        match self.open_dir_resolved(rel) {
            Ok((_, resolved)) => Ok(Some(resolved)),
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => Ok(None),
            Err(e) => Err(self.lookup_error(rel, e)),
        }
    }

    /// The directory a whiteout under `rel` goes in, on an overlay upper
    /// directory: `None` when there is nothing to hide (`rel` is a non-directory
    /// here, or exists in no lower), else the directory, made if needed.
    /// With the directory's path with no symlink in it. A symlink on the
    /// way is followed, into what the lowers show too.
    pub(crate) fn whiteout_dir(&mut self, rel: &Path) -> Result<Option<(BorrowedFd<'_>, &Path)>> {
        match self.open_dir(rel) {
            Ok(_) => self.dir_resolved(rel).map(Some),
            Err(Errno::NOTDIR) => Ok(None),
            Err(Errno::NOENT) => {
                let Some(target) = self.upper_path(rel)? else {
                    return Ok(None);
                };
                if target != rel {
                    self.charge_merged(&target)?;
                }
                if self.below(&target)?.is_some_and(|found| found.is_dir()) {
                    self.dir_resolved(&target).map(Some)
                } else {
                    Ok(None)
                }
            }
            Err(e) => Err(self.lookup_error(rel, e)),
        }
    }

    /// Makes the missing directories of `rel`, walking down one name at a
    /// time from the directory it last reached: resolving every prefix from
    /// the root instead costs the depth squared, and a layer's names and
    /// symlinks can reach tens of thousands of levels. Only a symlink on the
    /// way is resolved from the root again (beneath it, as it must be).
    fn make_parents(&mut self, rel: &Path) -> Result<(OwnedFd, PathBuf)> {
        if self.opaque_xattr.is_some() {
            self.lowers()?;
        }
        let mut below = self
            .merged_walk_owned()
            .map_err(|e| Error::io("dup", &self.path, e))?;
        let mut current = self
            .fd
            .try_clone()
            .map_err(|e| Error::io("dup", &self.path, e))?;
        let mut prefix = PathBuf::new();
        let mut pending_modes = Vec::new();
        let root_path = self.path.clone();
        // `current`'s path with no symlink in it, and what the walk to it
        // cost, as a lookup of `prefix` from the root would count it.
        let mut resolved = PathBuf::new();
        let mut cost = Walked::default();
        let parts: Vec<&OsStr> = rel.iter().collect();
        for (i, part) in parts.iter().copied().enumerate() {
            prefix.push(part);
            let at = || root_path.join(&prefix);
            let opened = open_child_dir(current.as_fd(), part);
            if !matches!(opened, Err(Errno::LOOP)) {
                resolved.push(part);
                if resolved.as_os_str().len() >= MAX_RESOLVED_LEN {
                    // Made here, a tree would be deeper than lookups may go.
                    return Err(self.lookup_error(&prefix, Errno::NAMETOOLONG));
                }
                cost.add(Walked::STEP)
                    .map_err(|e| self.lookup_error(&prefix, e))?;
            }
            let followed = matches!(opened, Err(Errno::LOOP));
            match opened {
                Ok(fd) => current = fd,
                Err(Errno::LOOP) => {
                    // Only the symlink is walked, from where the walk is:
                    // what led here is not resolved again.
                    let start = rustix::io::dup(&current).map_err(|e| Error::io("dup", at(), e))?;
                    let walked =
                        self.resolve((start, resolved.clone()), Path::new(part), &mut cost);
                    let (fd, path) = match walked {
                        Ok(found) => found,
                        Err(Errno::NOENT) | Err(Errno::NOTDIR) => {
                            // On overlay, the directory it leads to may be
                            // in the lowers only: made here, as on a whole
                            // tree the entry would be written into it.
                            match self.lower_dir_behind(&prefix)? {
                                Some(found) => found,
                                None => {
                                    return Err(Error::InvalidArgument(format!(
                                        "layer entry under {}: {} is a symlink to no directory",
                                        abbreviated(rel),
                                        abbreviated(&prefix)
                                    )));
                                }
                            }
                        }
                        Err(e) => return Err(self.lookup_error(&prefix, e)),
                    };
                    current = fd;
                    resolved = path;
                }
                Err(Errno::NOENT) => {
                    let found = match &below {
                        Some(walk) => walk
                            .entry(part, true)
                            .map_err(|e| Error::io("look up", at(), e))?,
                        None => None,
                    };
                    let (meta, xattrs) = lower_meta(found, part)?;
                    mkdir_with(current.as_fd(), part, meta, self.privileged)
                        .map_err(|e| Error::io("mkdir", at(), e))?;
                    for (key, value) in &xattrs {
                        let set = super::set_xattr_at(current.as_fd(), part, key, value);
                        super::xattr_set(set, key, true, self.privileged, &self.skipped_xattrs)
                            .map_err(|e| Error::io("setxattr", at(), e))?;
                    }
                    current = open_child_dir(current.as_fd(), part)
                        .map_err(|e| Error::io("open", at(), e))?;
                    if !self.privileged && meta.mode & 0o700 != 0o700 {
                        let st =
                            rustix::fs::fstat(&current).map_err(|e| Error::io("stat", at(), e))?;
                        pending_modes.push((
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
                Err(e) => return Err(self.lookup_error(&prefix, e)),
            }
            // After the upper directory changed: the walk sees what it made.
            // (Not into the last: nothing below it is looked at, and a lower
            // directory of that name may not be readable to us.) Past a
            // symlink, the walk goes on from where it led.
            if i + 1 < parts.len() && followed && below.is_some() {
                self.charge_merged(&resolved)?;
                below = self
                    .merged_walk_at(&resolved)
                    .map_err(|e| Error::io("look up", at(), e))?;
            } else if let Some(walk) = below.as_mut().filter(|_| i + 1 < parts.len()) {
                walk.descend(part)
                    .map_err(|e| Error::io("look up", at(), e))?;
            }
        }
        drop(below);
        self.pending_modes.extend(pending_modes);
        Ok((current, resolved))
    }

    /// `name` in `parent` (at `prefix`) is in the way of the directory an
    /// entry under `rel` needs. A file, device or whiteout there goes, as a
    /// directory entry of that name would replace it: tar's "the later entry
    /// wins", and what overlayfs shows when a lower layer's file is under a
    /// new upper directory. Native and overlay agree on it.
    fn replace_with_dir(
        &self,
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
                "layer entry under {}: {} is a symlink to no directory",
                abbreviated(rel),
                abbreviated(prefix)
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
        open_child_dir(parent, name).map_err(|e| Error::io("open", &path, e))
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
        let path = self.path.join(rel);
        let error = |e| Error::io("look up", &path, e);
        let Some(mut walk) = self.merged_walk() else {
            return Ok(None);
        };
        let parts: Vec<&OsStr> = rel.iter().collect();
        let Some((last, above)) = parts.split_last() else {
            return Ok(None);
        };
        for part in above {
            if !walk.descend(part).map_err(error)? {
                return Ok(None);
            }
        }
        walk.entry(last, upper_entry).map_err(error)
    }

    /// A walk of the merged view from its root, or `None` on a whole tree;
    /// the lowers must have been opened (`lowers`).
    fn merged_walk(&self) -> Option<MergedWalk<'_>> {
        let opaque_xattr = self.opaque_xattr.clone()?;
        let dirs = self
            .layer_roots()
            .map(|(fd, upper)| (Layered::Root(fd), upper))
            .collect();
        Some(MergedWalk { dirs, opaque_xattr })
    }

    /// [`Root::merged_walk`] on descriptors of its own, which leaves the
    /// root free to change while the walk goes on.
    fn merged_walk_owned(&self) -> rustix::io::Result<Option<MergedWalk<'static>>> {
        let Some(opaque_xattr) = self.opaque_xattr.clone() else {
            return Ok(None);
        };
        let dirs = self
            .layer_roots()
            .map(|(fd, upper)| Ok((Layered::Opened(rustix::io::dup(fd)?), upper)))
            .collect::<rustix::io::Result<_>>()?;
        Ok(Some(MergedWalk { dirs, opaque_xattr }))
    }

    /// [`Root::merged_walk_owned`], gone down `rel` (a path with no
    /// symlink in it) as far as the merged view has directories.
    fn merged_walk_at(&self, rel: &Path) -> rustix::io::Result<Option<MergedWalk<'static>>> {
        let Some(mut walk) = self.merged_walk_owned()? else {
            return Ok(None);
        };
        for part in rel {
            if !walk.descend(part)? {
                break;
            }
        }
        Ok(Some(walk))
    }

    /// The upper directory's root, then the lowers' (if opened), each with
    /// whether it is the upper one.
    fn layer_roots(&self) -> impl Iterator<Item = (BorrowedFd<'_>, bool)> {
        let lowers = self.lowers.as_deref().unwrap_or_default();
        std::iter::once((self.fd.as_fd(), true))
            .chain(lowers.iter().map(|lower| (lower.as_fd(), false)))
    }
}

/// What a lookup through symlinks has walked, against its limits.
#[derive(Debug, Default, Clone, Copy)]
struct Walked {
    steps: usize,
    follows: usize,
}

impl Walked {
    /// One name (or `..`) walked.
    const STEP: Walked = Walked {
        steps: 1,
        follows: 0,
    };
    /// One symlink followed.
    const FOLLOW: Walked = Walked {
        steps: 0,
        follows: 1,
    };

    /// Counts `more`; `ELOOP` past [`MAX_LOOKUP_STEPS`] or [`MAX_FOLLOWS`].
    fn add(&mut self, more: Walked) -> rustix::io::Result<()> {
        self.steps += more.steps;
        self.follows += more.follows;
        if self.steps > MAX_LOOKUP_STEPS || self.follows > MAX_FOLLOWS {
            return Err(Errno::LOOP);
        }
        Ok(())
    }
}

/// `path` quoted, its middle left out when it is long.
fn abbreviated(path: &Path) -> String {
    const KEEP: usize = 100;
    let text = path.to_string_lossy();
    if text.len() <= 2 * KEEP + 20 {
        return format!("{text:?}");
    }
    let head = text.char_indices().nth(KEEP).map_or(text.len(), |(i, _)| i);
    let tail = text
        .char_indices()
        .rev()
        .nth(KEEP - 1)
        .map_or(0, |(i, _)| i);
    format!(
        "\"{}…({} bytes)…{}\"",
        &text[..head],
        text.len(),
        &text[tail..]
    )
}

/// Owner, mode and xattrs (but overlayfs's own) for a parent made in the
/// upper directory: those of the directory the lowers show there (`found`,
/// named `name`), as a mounted overlay would copy it up.
fn lower_meta(found: Option<Found>, name: &OsStr) -> Result<(DirMeta, super::Xattrs)> {
    let Some(found) = found.filter(Found::is_dir) else {
        return Ok((DirMeta::DEFAULT, Vec::new()));
    };
    let xattrs = super::copy_up::xattrs(&super::copy_up::proc_path(found.dir.as_fd(), name))?;
    let st = found.stat;
    let meta = DirMeta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
    };
    Ok((meta, xattrs))
}

/// Opens the directory `name` in `parent` without following a symlink:
/// `ELOOP` if it is one, `ENOTDIR` if it is no directory.
fn open_child_dir(parent: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
    )
}

/// The merged view of an upper directory over its lowers, walked by name one
/// directory at a time, as overlayfs merges them: each layer's directory at
/// the prefix walked so far, newest first.
struct MergedWalk<'a> {
    /// With whether it is the upper directory's.
    dirs: Vec<(Layered<'a>, bool)>,
    opaque_xattr: String,
}

impl MergedWalk<'_> {
    /// The entry `name` of the merged directory reached so far: the newest
    /// layer's, unless a whiteout hides it; the upper directory's own entry
    /// counts only with `upper_entry`.
    fn entry(&self, name: &OsStr, upper_entry: bool) -> rustix::io::Result<Option<Found>> {
        for (dir, upper) in &self.dirs {
            if *upper && !upper_entry {
                continue;
            }
            let stat = match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            };
            if (stat.st_mode & libc::S_IFMT) == libc::S_IFCHR && stat.st_rdev == 0 {
                return Ok(None); // a whiteout: nothing of this name below
            }
            let dir = rustix::io::dup(dir.as_fd())?;
            return Ok(Some(Found { dir, stat }));
        }
        Ok(None)
    }

    /// Goes down into the merged directory `name`; false once no layer has
    /// a directory there (a non-directory, a whiteout or an opaque directory
    /// hides the lower layers' directories below it).
    fn descend(&mut self, name: &OsStr) -> rustix::io::Result<bool> {
        let mut next = Vec::new();
        for (dir, upper) in &self.dirs {
            let st = match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e),
            };
            if (st.st_mode & libc::S_IFMT) != libc::S_IFDIR {
                break; // a whiteout or non-directory hides what is below
            }
            let sub = rustix::fs::openat(
                dir.as_fd(),
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let opaque = is_opaque(sub.as_fd(), &self.opaque_xattr);
            next.push((Layered::Opened(sub), *upper));
            if opaque {
                break;
            }
        }
        self.dirs = next;
        Ok(!self.dirs.is_empty())
    }
}

/// A layer's directory in a [`MergedWalk`].
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
    /// A directory, which cannot be linked to.
    Directory,
}

/// What one layer says about a path.
enum Look {
    /// It has the entry; here is its parent directory.
    Found(OwnedFd),
    /// It hides the entry from the layers below it.
    Hidden,
    /// Its entry is a directory (which hides the layers' entries below).
    Directory,
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
            return Ok(if whiteout {
                Look::Hidden
            } else if kind == libc::S_IFDIR {
                Look::Directory
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
            Look::Directory => return Ok(LinkSource::Directory),
            Look::Absent => {}
        }
        let path = self.path.join(rel);
        for lower in self.lowers()? {
            match look(lower.as_fd(), rel, opaque_xattr)
                .map_err(|e| Error::io("look up", &path, e))?
            {
                Look::Found(dir) => return Ok(LinkSource::Lower(dir)),
                Look::Hidden => return Ok(LinkSource::Missing),
                Look::Directory => return Ok(LinkSource::Directory),
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
/// [`MAX_REMOVE_DEPTH`] is refused (`ENAMETOOLONG`), not removed. Whether
/// anything was there: if not, no lookup went through it.
pub(crate) fn remove_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    removed: &mut Removals,
) -> rustix::io::Result<bool> {
    remove_below(parent, name, removed, 0)
}

fn remove_below(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    removed: &mut Removals,
    depth: usize,
) -> rustix::io::Result<bool> {
    match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {
            remove_dir_at(parent, name, removed, depth).map(|()| true)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_at(path: &Path) -> Root {
        let zero = || Rc::new(Cell::new(0));
        Root::open(path, &[], None, false, None, zero(), zero()).unwrap()
    }

    /// What a lookup of `rel` found: the directory's device and inode, or
    /// the error.
    fn found(opened: rustix::io::Result<OwnedFd>) -> std::result::Result<(u64, u64), Errno> {
        opened.map(|fd| {
            let st = rustix::fs::fstat(&fd).unwrap();
            (st.st_dev, st.st_ino)
        })
    }

    #[test]
    fn lookups_through_symlinks_find_what_the_kernel_finds_in_root() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        std::fs::create_dir_all(top.join("a/b/c")).unwrap();
        std::fs::create_dir(top.join("d")).unwrap();
        std::fs::write(top.join("a/file"), b"").unwrap();
        for (name, target) in [
            ("abs", "/a/b"),
            ("rel", "a/b/../b/c"),
            ("up", "../../../a"),
            ("chain1", "abs/c"),
            ("chain2", "chain1/.."),
            ("dot", "."),
            ("root", "/"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
            ("dangling", "nope"),
            ("tofile", "a/file"),
            ("a/b/back", "../../d"),
            ("a/b/c/deep", "../../../../../../chain2/c"),
        ] {
            symlink(target, top.join(name)).unwrap();
        }
        let mut root = root_at(top);
        for rel in [
            "abs",
            "abs/c",
            "rel",
            "up",
            "up/b/c",
            "chain1",
            "chain2",
            "chain2/c",
            "dot/dot/a/b",
            "root/root/a",
            "a/b/back",
            "a/b/c/deep",
            "rel/deep/deep",
            "loop1",
            "dangling",
            "dangling/x",
            "tofile",
            "a/b/nope",
        ] {
            let kernel = found(rustix::fs::openat2(
                &root.fd,
                rel,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT,
            ));
            assert_eq!(found(root.open_dir(Path::new(rel))), kernel, "{rel}");
            // And again, through what the first lookup remembered.
            assert_eq!(found(root.open_dir(Path::new(rel))), kernel, "{rel}, again");
        }
    }

    #[test]
    fn a_symlink_is_read_once_until_something_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::create_dir(top.join("elsewhere")).unwrap();
        symlink("a", top.join("l")).unwrap();
        let mut root = root_at(top);
        let first = found(root.open_dir(Path::new("l/b"))).unwrap();
        // Changed behind the root's back, the symlink is not read again...
        std::fs::remove_file(top.join("l")).unwrap();
        symlink("elsewhere", top.join("l")).unwrap();
        assert_eq!(found(root.open_dir(Path::new("l/b"))), Ok(first));
        // ...until the root is told something was removed.
        root.invalidate();
        assert_eq!(found(root.open_dir(Path::new("l/b"))), Err(Errno::NOENT));
    }

    #[test]
    fn lookups_through_symlinks_stop_at_the_layers_allowance() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        std::fs::create_dir(top.join("a")).unwrap();
        // 1,602 directories opened or symlinks read for each fresh lookup.
        symlink(format!("a{}", "/../a".repeat(800)), top.join("l")).unwrap();
        let mut root = root_at(top);
        root.work_allowed = 5_000;
        let a = found(root.open_dir(Path::new("a"))).unwrap();
        for _ in 0..3 {
            assert_eq!(found(root.open_dir(Path::new("l"))), Ok(a));
            root.invalidate(); // as a removal would: walked afresh
        }
        assert_eq!(found(root.open_dir(Path::new("l"))), Err(Errno::LOOP));
        let said = root.lookup_error(Path::new("l/x"), Errno::LOOP).to_string();
        assert!(said.contains("than the layer's size allows"), "{said}");
        // More of the layer read, more allowed.
        root.allow_work_for(0);
        assert_eq!(found(root.open_dir(Path::new("l"))), Ok(a));
    }

    #[test]
    fn the_lookup_budget_counts_what_was_remembered_as_walked() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path();
        std::fs::create_dir(top.join("a")).unwrap();
        // Each symlink walks 1 + 2 * 800 names more than the one it names:
        // l10 takes 16,011 names, l11 17,612.
        let back_and_forth = "/../a".repeat(800);
        symlink(format!("a{back_and_forth}"), top.join("l1")).unwrap();
        for k in 2..=11 {
            symlink(
                format!("l{}{back_and_forth}", k - 1),
                top.join(format!("l{k}")),
            )
            .unwrap();
        }
        let mut root = root_at(top);
        let a = found(root.open_dir(Path::new("a"))).unwrap();
        assert_eq!(found(root.open_dir(Path::new("l10"))), Ok(a));
        assert_eq!(found(root.open_dir(Path::new("l11"))), Err(Errno::LOOP));
        // l10 is remembered now; l11 costs as much as before all the same.
        assert_eq!(found(root.open_dir(Path::new("l10"))), Ok(a));
        assert_eq!(found(root.open_dir(Path::new("l11"))), Err(Errno::LOOP));
        root.invalidate();
        assert_eq!(found(root.open_dir(Path::new("l11"))), Err(Errno::LOOP));
    }
}
