//! Files and directories staged beside their destination, so that a killed
//! process leaves nothing half-written under the final name: each is found by
//! its name's prefix, held by its writer's flock while the writer lives, and
//! swept by the next run ([`sweep_unheld`]). [`crate::layout`]'s export
//! stages its blobs and `index.json` this way; a runtime building a root
//! filesystem beside its destination can stage its directory with
//! [`locked_dir`].

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A staged file or directory younger than this is never swept: its writer
/// may not hold its lock yet (the instant between making it and locking it).
pub const GRACE: Duration = Duration::from_secs(10);

/// Removes the entries of `dir` named `prefix*` (files, or directories and
/// all they hold) that are older than `grace` and whose flock nobody holds:
/// what killed runs left, never what a live one is writing. A symlink under
/// the prefix is neither followed nor removed. [`GRACE`] for names their
/// writers lock after making them; none for names given to entries already
/// locked ([`locked_dir`]).
pub fn sweep_unheld(dir: &Path, prefix: &str, grace: Duration) {
    sweep(dir, prefix, grace, true);
}

/// [`sweep_unheld`] of files alone: for names only [`staged_file`] makes,
/// where a directory of that name is none of the stager's (a user's, in a
/// directory others write too) and is left alone.
pub fn sweep_unheld_files(dir: &Path, prefix: &str, grace: Duration) {
    sweep(dir, prefix, grace, false);
}

fn sweep(dir: &Path, prefix: &str, grace: Duration, dirs_too: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        // The entry's own metadata: a symlink is not followed.
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|at| at.elapsed().ok())
            .is_some_and(|age| age >= grace);
        if !old || !(meta.is_file() || (dirs_too && meta.is_dir())) {
            continue;
        }
        let path = entry.path();
        if !std::fs::File::open(&path).is_ok_and(|f| f.try_lock().is_ok()) {
            continue;
        }
        let _ = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
}

/// A new file of a unique name `prefix*` in `dir`, for staging what will be
/// renamed into place (with [`tempfile::NamedTempFile::persist`]): made with
/// `O_EXCL`, so a name planted there (a symlink out of `dir`, another
/// writer's file) is never written through. Its flock is held until it is
/// renamed into place or dropped (or the process ends), so
/// [`sweep_unheld_files`] with [`GRACE`] tells a live writer's file from one a
/// killed writer left.
pub fn staged_file(dir: &Path, prefix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let staged = tempfile::Builder::new().prefix(prefix).tempfile_in(dir)?;
    staged.as_file().lock()?;
    Ok(staged)
}

/// A directory removed when this drops, unless [`kept`](Self::kept).
#[derive(Debug)]
pub struct StagedDir {
    path: Option<PathBuf>,
    /// Its flock, held as long as this lives.
    lock: Option<std::fs::File>,
}

impl StagedDir {
    /// Where the directory is.
    pub fn path(&self) -> &Path {
        self.path.as_deref().expect("set until kept")
    }

    /// Leaves the directory where it is, for the caller to rename while it
    /// holds the flock returned with it.
    pub fn kept(mut self) -> (PathBuf, std::fs::File) {
        let path = self.path.take().expect("set until kept");
        (path, self.lock.take().expect("set until kept"))
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// A new directory in `parent` (mode 0700) named `prefix` and a unique
/// suffix, whose flock is held from before it had that name: made as
/// `making_prefix*`, locked, then renamed. So any `prefix*` entry nobody
/// holds is a killed run's, and the next run sweeps it at once (no grace);
/// only a run killed in the instant between making and renaming leaves a
/// `making_prefix*` directory, empty, for [`GRACE`]'s sweep.
pub fn locked_dir(parent: &Path, prefix: &str, making_prefix: &str) -> std::io::Result<StagedDir> {
    use std::os::unix::fs::PermissionsExt;
    let making = tempfile::Builder::new()
        .prefix(making_prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)?;
    let lock = std::fs::File::open(making.path())?;
    lock.lock()?;
    let suffix = making
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(making_prefix))
        .expect("tempfile names it prefix and suffix")
        .to_string();
    let path = parent.join(format!("{prefix}{suffix}"));
    // A name is never taken over (a rename replaces an empty directory).
    if path.symlink_metadata().is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists", path.display()),
        ));
    }
    std::fs::rename(making.path(), &path)?;
    // Renamed: nothing is left under the old name for `making` to remove.
    let _ = making.keep();
    Ok(StagedDir {
        path: Some(path),
        lock: Some(lock),
    })
}
