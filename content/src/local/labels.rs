//! Blob labels on disk: `labels/<alg>/<hex>`, one small JSON file per labelled
//! blob, replaced atomically; updates serialise on a store-wide `flock`.

use std::fs::{self, File};
use std::path::PathBuf;
use std::time::SystemTime;

use oci_spec::image::Digest;
use serde::{Deserialize, Serialize};

use super::fsutil::{self, from_nanos, to_nanos};
use crate::{Error, Labels, Result};

/// containerd's limit on one label (key plus value), which we keep.
const MAX_LABEL_BYTES: usize = 4096;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    updated_at_ns: u128,
    labels: Labels,
}

/// Where labels live.
#[derive(Debug, Clone)]
pub(crate) struct LabelStore {
    root: PathBuf,
}

impl LabelStore {
    pub(crate) fn new(root: PathBuf) -> Self {
        LabelStore { root }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join(digest.algorithm().as_ref())
            .join(digest.digest())
    }

    /// The labels of `digest` and when they last changed, if ever set.
    pub(crate) fn read(&self, digest: &Digest) -> Result<Option<(Labels, SystemTime)>> {
        let path = self.path(digest);
        let Some(bytes) = fsutil::read_optional(&path)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
            Error::io(
                "parse",
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        Ok(Some((record.labels, from_nanos(record.updated_at_ns))))
    }

    /// Sets the labels of `digest` (none: removes the record), durably.
    pub(crate) fn write(&self, digest: &Digest, labels: &Labels, at: SystemTime) -> Result<()> {
        if self.stage(digest, labels, at)?.install()? {
            self.sync_dir(digest)?;
        }
        Ok(())
    }

    /// Makes the installs and removals of labels of `digest`'s algorithm
    /// durable.
    pub(crate) fn sync_dir(&self, digest: &Digest) -> Result<()> {
        fsutil::fsync_dir(&self.root.join(digest.algorithm().as_ref()))
    }

    /// Writes the labels of `digest` durably under a staging name, for
    /// [`StagedLabels::install`] to put in place quickly (a commit does
    /// that under the store-wide lock, where an fsync would serialise commits).
    pub(crate) fn stage(
        &self,
        digest: &Digest,
        labels: &Labels,
        at: SystemTime,
    ) -> Result<StagedLabels> {
        let path = self.path(digest);
        // An empty value is no label, as in containerd: setting one removes it.
        let labels: Labels = labels
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if labels.is_empty() {
            return Ok(StagedLabels { path, staged: None });
        }
        let dir = path.parent().expect("label paths have a parent");
        fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
        let record = Record {
            updated_at_ns: to_nanos(at),
            labels,
        };
        let bytes = serde_json::to_vec(&record).expect("plain data");
        let staged = fsutil::stage_file(dir, &bytes, true)?;
        Ok(StagedLabels {
            path,
            staged: Some(staged),
        })
    }

    /// Removes the record of a deleted blob.
    pub(crate) fn remove(&self, digest: &Digest) -> Result<()> {
        fsutil::remove_optional(&self.path(digest)).map(drop)
    }

    /// Holds the store-wide update lock until dropped, so read-modify-write
    /// updates from several processes do not lose each other's keys.
    pub(crate) fn lock(&self) -> Result<File> {
        let path = self.root.join(".lock");
        let file = File::create(&path).map_err(|e| Error::io("create", &path, e))?;
        file.lock().map_err(|e| Error::io("lock", &path, e))?;
        Ok(file)
    }
}

/// Labels ready to be put in place; removed unless installed.
#[derive(Debug)]
pub(crate) struct StagedLabels {
    path: PathBuf,
    /// `None`: no labels, so installing removes the record.
    staged: Option<PathBuf>,
}

impl StagedLabels {
    /// Puts the labels in place (one rename), or removes the record. Returns
    /// whether the labels directory changed, which the caller makes durable
    /// with [`LabelStore::sync_dir`] (a commit does so after its lock).
    pub(crate) fn install(mut self) -> Result<bool> {
        match self.staged.take() {
            None => fsutil::remove_optional(&self.path),
            Some(staged) => match fs::rename(&staged, &self.path) {
                Ok(()) => Ok(true),
                Err(e) => {
                    let _ = fs::remove_file(&staged);
                    Err(Error::io("replace", &self.path, e))
                }
            },
        }
    }
}

impl Drop for StagedLabels {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            let _ = fs::remove_file(staged);
        }
    }
}

/// Checks labels before they are stored, as containerd does: no empty key,
/// and at most 4096 bytes of key and value together
/// ([`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)).
/// For a store of one's own, to refuse what the local store refuses.
pub fn validate_labels(labels: &Labels) -> Result<()> {
    for (key, value) in labels {
        if key.is_empty() {
            return Err(Error::InvalidArgument("label key must not be empty".into()));
        }
        if key.len() + value.len() > MAX_LABEL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "label {key:?}: key and value exceed {MAX_LABEL_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// The labels a [`Manager::update`](crate::Manager::update) leaves, by
/// containerd's fieldpath rules: no fieldpaths, or `labels`, replace them
/// all with `wanted`; `labels.KEY` sets `KEY` to its value in `wanted`, or
/// removes it where `wanted` lacks it; any other fieldpath is
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument). For a
/// store of one's own, so it passes the conformance suite's label cases.
///
/// ```
/// use ocidist_content::{Labels, helpers::update_labels};
/// let current = Labels::from([("a".into(), "1".into()), ("b".into(), "2".into())]);
/// let wanted = Labels::from([("a".into(), "9".into())]);
/// let next = update_labels(&current, &wanted, &["labels.a", "labels.b"])?;
/// assert_eq!(next, Labels::from([("a".into(), "9".into())]));
/// assert!(update_labels(&current, &wanted, &["size"]).is_err());
/// # Ok::<(), ocidist_content::Error>(())
/// ```
pub fn update_labels(current: &Labels, wanted: &Labels, fieldpaths: &[&str]) -> Result<Labels> {
    if fieldpaths.is_empty() || fieldpaths.contains(&"labels") {
        return Ok(wanted.clone());
    }
    let mut next = current.clone();
    for path in fieldpaths {
        let Some(key) = path.strip_prefix("labels.") else {
            return Err(Error::InvalidArgument(format!(
                "cannot update {path:?}: only labels can be updated"
            )));
        };
        match wanted.get(key) {
            Some(value) => next.insert(key.to_string(), value.clone()),
            None => next.remove(key),
        };
    }
    Ok(next)
}
