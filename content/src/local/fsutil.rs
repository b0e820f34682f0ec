//! Small filesystem helpers: durable replace, directory fsync, timestamps.

use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// fsyncs a directory, making renames and links inside it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Writes `bytes` to a new file under a unique `.stage-*` name in `dir`,
/// fsynced when `durable`, and returns its path (nothing is left on error).
pub(crate) fn stage_file(dir: &Path, bytes: &[u8], durable: bool) -> Result<PathBuf> {
    let staged = dir.join(unique_name(".stage"));
    let result = (|| {
        let mut file = File::create(&staged)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_data()?;
        }
        Ok(())
    })();
    result.map(|()| staged.clone()).map_err(|e| {
        let _ = fs::remove_file(&staged);
        Error::io("write", &staged, e)
    })
}

/// Replaces `path` with `bytes` atomically (staged beside it, then renamed),
/// without an fsync.
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("store paths always have a parent");
    let staged = stage_file(dir, bytes, false)?;
    fs::rename(&staged, path).map_err(|e| {
        let _ = fs::remove_file(&staged);
        Error::io("replace", path, e)
    })
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing
/// an existing `to` (`renameat2(RENAME_NOREPLACE)`). Filesystems without it
/// get `link` + `unlink`, which is equally exclusive.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
    };
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        _ => Err(err),
    }
}

/// A durable, read-only file with no name yet (`O_TMPFILE`), linked into place
/// once its name (the digest) is known and verified.
pub(crate) struct UnnamedFile(File);

impl UnnamedFile {
    /// Writes `data` into a new unnamed file in `dir`, with `mtime`, and fsyncs
    /// it. `Ok(None)`: the filesystem has no `O_TMPFILE`; nothing was created.
    pub(crate) fn create(dir: &Path, data: &[u8], mtime: SystemTime) -> io::Result<Option<Self>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = match fs::OpenOptions::new()
            .write(true)
            .mode(0o444)
            .custom_flags(libc::O_TMPFILE)
            .open(dir)
        {
            Ok(file) => file,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        (&file).write_all(data)?;
        file.set_modified(mtime)?;
        file.sync_all()?;
        Ok(Some(UnnamedFile(file)))
    }

    /// Gives the file the name `target`, failing with `AlreadyExists` if that
    /// exists. `Ok(false)`: there is no `/proc` to name it by; nothing changed.
    pub(crate) fn link(self, target: &Path) -> io::Result<bool> {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let source = CString::new(format!("/proc/self/fd/{}", self.0.as_raw_fd())).expect("no NUL");
        let target_c = CString::new(target.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                source.as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOENT) if !Path::new("/proc/self/fd").exists() => Ok(false),
            _ => Err(err),
        }
    }
}

/// Reads a file, or `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path, e)),
    }
}

/// Removes a file; a missing file is fine. Returns whether there was one.
pub(crate) fn remove_optional(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

/// A name no other process or call will pick: `prefix-<pid>-<random>`.
pub(crate) fn unique_name(prefix: &str) -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{prefix}-{}-{random:016x}", std::process::id())
}

pub(crate) fn to_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

pub(crate) fn from_nanos(n: u128) -> SystemTime {
    let secs = (n / 1_000_000_000) as u64;
    let nanos = (n % 1_000_000_000) as u32;
    UNIX_EPOCH + Duration::new(secs, nanos)
}

/// Runs blocking file work from async code that must not move its borrows to
/// another thread: in place on a multi-threaded runtime (which moves other tasks
/// off this worker first), directly otherwise.
pub(crate) fn blocking_in_place<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs blocking work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::other(crate::ErrorKind::Internal, format!("blocking task: {e}")))?
}
