//! What a killed command staged beside its destination: found by name,
//! held by its writer's flock while alive, swept by the next run.

use std::path::Path;
use std::time::Duration;

/// A staged file or directory younger than this is never swept: its writer
/// may not hold its lock yet (the instant between making it and locking it).
pub(crate) const GRACE: Duration = Duration::from_secs(10);

/// Removes the entries of `dir` named `prefix*` (files, or directories and
/// all they hold) that are older than [`GRACE`] and whose flock nobody
/// holds: what killed runs left, never what a live one is writing. A
/// symlink under the prefix is neither followed nor removed.
pub(crate) fn sweep_unheld(dir: &Path, prefix: &str) {
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
            .is_some_and(|age| age > GRACE);
        if !old || !(meta.is_file() || meta.is_dir()) {
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
