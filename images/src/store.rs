//! The image store: names mapped to the descriptors they point at.
//!
//! [`ImageStore`] is the trait; [`DbImageStore`] keeps images in a redb
//! database (crash-safe, copy-on-write B-trees) opened in redb's multi-writer
//! mode, so several processes may use the same root at once.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use oci_spec::image::{Descriptor, Digest};
use ocidist_content::Labels;
use ocidist_content::filters::{Fields, Filters};
use redb::{ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{Error, ErrorKind, Result};

/// A named image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Its name, usually a reference such as `docker.io/library/redis:7`.
    pub name: String,
    /// The manifest or index it points at.
    pub target: Descriptor,
    /// Free-form labels.
    pub labels: Labels,
    /// When it was created (set by the store).
    pub created_at: SystemTime,
    /// When it was last updated (set by the store).
    pub updated_at: SystemTime,
}

impl Image {
    /// An image to create: `name` pointing at `target`, no labels.
    pub fn new(name: impl Into<String>, target: Descriptor) -> Self {
        Image {
            name: name.into(),
            target,
            labels: Labels::new(),
            created_at: UNIX_EPOCH,
            updated_at: UNIX_EPOCH,
        }
    }
}

impl Fields for Image {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["name"] => Some(self.name.clone()),
            ["target", "digest"] => Some(self.target.digest().to_string()),
            ["target", "mediatype"] | ["target", "media_type"] => {
                Some(self.target.media_type().to_string())
            }
            ["labels", key] => self.labels.get(*key).cloned(),
            ["annotations", key] => self.target.annotations().as_ref()?.get(*key).cloned(),
            _ => None,
        }
    }
}

/// Names to image targets, as containerd's image service.
///
/// ```
/// use ocidist_content::{sha256_of, Descriptor, MediaType};
/// use ocidist_images::{DbImageStore, Image, ImageStore};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let images = DbImageStore::open(dir.path().join("images.redb"))?;
/// let v1 = Descriptor::new(MediaType::ImageIndex, 500, sha256_of(b"v1"));
/// let v2 = Descriptor::new(MediaType::ImageIndex, 500, sha256_of(b"v2"));
/// let name = "docker.io/library/redis:latest";
/// images.create(Image::new(name.to_string(), v1)).await?;
///
/// // A new pull of the tag moves the name; nothing else changes.
/// images.update(Image::new(name.to_string(), v2.clone()), &["target"]).await?;
/// assert_eq!(images.get(name).await?.target, v2);
/// let found = images.list(&[&format!("target.digest=={}", v2.digest())]).await?;
/// assert_eq!(found.len(), 1);
///
/// images.delete(name).await?;
/// let gone = images.get(name).await.unwrap_err();
/// assert_eq!(gone.kind(), ocidist_content::ErrorKind::NotFound);
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait ImageStore: Send + Sync {
    /// The image `name`. Missing: [`ErrorKind::NotFound`].
    async fn get(&self, name: &str) -> Result<Image>;

    /// The images matching any of `filters` (all if empty), by name. Fields:
    /// `name`, `target.digest`, `target.mediatype`, `labels.KEY`,
    /// `annotations.KEY`.
    async fn list(&self, filters: &[&str]) -> Result<Vec<Image>>;

    /// Creates an image; its timestamps are set to now. A name in use is
    /// [`ErrorKind::AlreadyExists`]; an invalid image [`ErrorKind::InvalidArgument`].
    async fn create(&self, image: Image) -> Result<Image>;

    /// Updates an image. With no `fieldpaths` the target and labels are
    /// replaced; otherwise only `target`, `labels`, `labels.KEY`,
    /// `annotations` or `annotations.KEY` (the target's annotations).
    async fn update(&self, image: Image, fieldpaths: &[&str]) -> Result<Image>;

    /// Deletes an image. Missing: [`ErrorKind::NotFound`].
    async fn delete(&self, name: &str) -> Result<()>;

    /// Deletes the image `name` only if it still points at `target`, in one
    /// step (containerd's `images.DeleteTarget`). An image that points
    /// elsewhere is [`ErrorKind::NotFound`] and stays, so a remover that read
    /// the image earlier never deletes a name a concurrent pull has since
    /// moved.
    async fn delete_if_target(&self, name: &str, target: &Digest) -> Result<()>;
}

/// Forwards [`ImageStore`] through references and shared pointers, so an
/// image store can be lent (`&images`) or shared (`Arc<images>`) wherever
/// one is expected.
macro_rules! forward_image_store {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: ImageStore + ?Sized> ImageStore for $ptr {
            async fn get(&self, name: &str) -> Result<Image> {
                (**self).get(name).await
            }
            async fn list(&self, filters: &[&str]) -> Result<Vec<Image>> {
                (**self).list(filters).await
            }
            async fn create(&self, image: Image) -> Result<Image> {
                (**self).create(image).await
            }
            async fn update(&self, image: Image, fieldpaths: &[&str]) -> Result<Image> {
                (**self).update(image, fieldpaths).await
            }
            async fn delete(&self, name: &str) -> Result<()> {
                (**self).delete(name).await
            }
            async fn delete_if_target(&self, name: &str, target: &Digest) -> Result<()> {
                (**self).delete_if_target(name, target).await
            }
        }
    )*};
}

forward_image_store!(&T, std::sync::Arc<T>, Box<T>);

/// Checks an image before it is stored: a name, and a target with a digest,
/// a size and a media type.
pub fn validate(image: &Image) -> Result<()> {
    let invalid = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "image {:?}: {why}",
            image.name
        )))
    };
    if image.name.trim().is_empty() {
        return invalid("the name must not be empty");
    }
    match ocidist_content::helpers::validate_labels(&image.labels) {
        Ok(()) => {}
        Err(ocidist_content::Error::InvalidArgument(why)) => return invalid(&why),
        Err(e) => return invalid(&e.to_string()),
    }
    if Digest::try_from(image.target.digest().to_string()).is_err() {
        return invalid("the target digest is invalid");
    }
    if image.target.size() == 0 {
        return invalid("the target size must be greater than zero");
    }
    if image.target.media_type().to_string().is_empty() {
        return invalid("the target media type must be set");
    }
    Ok(())
}

/// `image` without the labels and target annotations whose value is empty,
/// as containerd stores them: an empty value removes its key (an update of
/// `labels.KEY` to `""` is how a label is removed).
fn without_empty_values(mut image: Image) -> Image {
    image.labels.retain(|_, value| !value.is_empty());
    if let Some(mut annotations) = image.target.annotations().clone() {
        annotations.retain(|_, value| !value.is_empty());
        image
            .target
            .set_annotations((!annotations.is_empty()).then_some(annotations));
    }
    image
}

const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");

/// What is stored per name.
#[derive(Serialize, Deserialize)]
struct Record {
    target: Descriptor,
    labels: Labels,
    created_at_ns: u128,
    updated_at_ns: u128,
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn from_nanos(n: u128) -> SystemTime {
    UNIX_EPOCH + Duration::new((n / 1_000_000_000) as u64, (n % 1_000_000_000) as u32)
}

impl Record {
    fn into_image(self, name: String) -> Image {
        Image {
            name,
            target: self.target,
            labels: self.labels,
            created_at: from_nanos(self.created_at_ns),
            updated_at: from_nanos(self.updated_at_ns),
        }
    }

    fn of(image: &Image) -> Vec<u8> {
        serde_json::to_vec(&Record {
            target: image.target.clone(),
            labels: image.labels.clone(),
            created_at_ns: nanos(image.created_at),
            updated_at_ns: nanos(image.updated_at),
        })
        .expect("plain data")
    }
}

/// An [`ImageStore`] in a redb database file (`<root>/images.redb`, say).
/// Cheap to clone.
#[derive(Clone)]
pub struct DbImageStore {
    db: Arc<SharedDatabase>,
}

impl std::fmt::Debug for DbImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbImageStore").finish_non_exhaustive()
    }
}

fn db_error(e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    Error::other(ErrorKind::Io, format!("image database: {e}"))
}

/// Opens the redb database at `path` in redb's multi-writer mode (shared
/// with any other process that opens it the same way), creating it if
/// needed, and its directory too. A database this process may not write (on
/// a read-only mount, or another user's) is opened for reading only: see
/// [`SharedDatabase`].
///
/// redb creates a database in place and writes its magic number last, and
/// refuses a file without one: a process killed while creating it would
/// leave a file that no later open accepts. Here a database is created
/// whole under a temporary name and renamed into place, under a lock file
/// beside it (`.<name>.lock`). A file that such a killed creation left (its
/// magic number still zeros, or empty) is replaced the same way; a file
/// with any other contents is left for redb to judge. The snapshotters keep
/// their metadata through this too.
///
/// Hidden from the documentation: it is here for `ocidist-snapshot`, and
/// its redb types are not part of this crate's promised API (a redb
/// release may change them).
#[doc(hidden)]
pub fn open_shared_database(path: &Path) -> std::io::Result<SharedDatabase> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    if half_made(path)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let lock = std::fs::File::create(dir.join(format!(".{name}.lock")))?;
        lock.lock()?;
        // Another process may have made it while we waited.
        if half_made(path)? {
            // Databases are staged only under the lock: any other staged one
            // was left by a process killed while it made it.
            let prefix = format!(".{name}.tmp-");
            for entry in std::fs::read_dir(dir)?.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            let staged = dir.join(format!("{prefix}{}", std::process::id()));
            let made = Database::builder()
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .create(&staged)
                .map_err(std::io::Error::other)
                .and_then(|db| {
                    drop(db);
                    std::fs::File::open(&staged)?.sync_all()?;
                    std::fs::rename(&staged, path)?;
                    std::fs::File::open(dir)?.sync_all()
                });
            if made.is_err() {
                let _ = std::fs::remove_file(&staged);
            }
            made?;
        }
    }
    let mut builder = Database::builder();
    builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
    match builder.create(path) {
        Ok(db) => Ok(SharedDatabase::Writable(db)),
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            match builder.open_read_only(path) {
                Ok(db) => Ok(SharedDatabase::ReadOnly(db, e.kind())),
                // Left unclean (its writer was killed): a read-only open may
                // not repair it.
                Err(redb::DatabaseError::RepairAborted) => {
                    Ok(SharedDatabase::Repaired(repaired_copy(path)?, e.kind()))
                }
                Err(e) => Err(std::io::Error::other(e)),
            }
        }
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// The largest database [`repaired_copy`] reads into memory. An image or
/// snapshot database of thousands of records takes a few MiB.
const MAX_REPAIRED_COPY: u64 = 256 << 20;

/// A database this process may not write, left unclean by a writer that
/// was killed, repaired in a copy in memory, for reading: the file stays as
/// it is, for the next process that may write it to repair. (containerd's
/// bolt needs no repair; redb must replay what it cannot trust.)
fn repaired_copy(path: &Path) -> std::io::Result<Database> {
    use redb::StorageBackend;
    let size = std::fs::metadata(path)?.len();
    if size > MAX_REPAIRED_COPY {
        return Err(std::io::Error::other(format!(
            "it was not closed cleanly (a process was killed) and needs a repair, which \
             takes write access: it is too large ({size} bytes) to repair a copy in memory"
        )));
    }
    let bytes = std::fs::read(path)?;
    let copy = redb::backends::InMemoryBackend::new();
    copy.set_len(bytes.len() as u64)
        .and_then(|()| copy.write(0, &bytes))
        .map_err(|e| std::io::Error::other(format!("copy it into memory: {e:?}")))?;
    Database::builder()
        .create_with_backend(copy)
        .map_err(|e| std::io::Error::other(format!("repair a copy in memory: {e}")))
}

/// A database [`open_shared_database`] opened: for reading and writing, or,
/// where this process may not write the file, for reading only (and why).
/// Reading a store needs no write access: listing the images of a store on
/// a read-only mount works, and only a change fails.
///
/// Hidden from the documentation, as [`open_shared_database`] is.
#[doc(hidden)]
pub enum SharedDatabase {
    /// Opened for reading and writing.
    Writable(Database),
    /// Opened for reading only: writing the file failed so.
    ReadOnly(redb::ReadOnlyDatabase, std::io::ErrorKind),
    /// Opened for reading only (writing the file failed so), from a copy in
    /// memory repaired there: the file was left unclean by a killed writer.
    Repaired(Database, std::io::ErrorKind),
}

impl SharedDatabase {
    /// Begins a read transaction.
    pub fn begin_read(&self) -> std::result::Result<redb::ReadTransaction, redb::Error> {
        Ok(match self {
            SharedDatabase::Writable(db) => db.begin_read()?,
            SharedDatabase::ReadOnly(db, _) => db.begin_read()?,
            SharedDatabase::Repaired(db, _) => db.begin_read()?,
        })
    }

    /// Begins a write transaction; an I/O error (of the kind that made it
    /// read-only) when the database was opened for reading only.
    pub fn begin_write(&self) -> std::result::Result<redb::WriteTransaction, redb::Error> {
        match self {
            SharedDatabase::Writable(db) => Ok(db.begin_write()?),
            SharedDatabase::ReadOnly(_, why) | SharedDatabase::Repaired(_, why) => {
                Err(redb::Error::Io(std::io::Error::new(
                    *why,
                    "the database was opened read-only (the store cannot be written)",
                )))
            }
        }
    }
}

/// Whether the database at `path` is missing, or was never finished: empty,
/// or its magic number (redb's first nine bytes, written last) still zeros.
fn half_made(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    let mut magic = Vec::with_capacity(9);
    (&mut file).take(9).read_to_end(&mut magic)?;
    Ok(magic.iter().all(|&b| b == 0))
}

impl DbImageStore {
    /// Opens (creating if needed) the database at `path`, shared with any other
    /// process that opens it the same way (redb's multi-writer mode). A
    /// database this process may not write is opened for reading: listing
    /// works, a change fails.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let db = open_shared_database(path)
            .map_err(|e| Error::other(ErrorKind::Io, format!("open {}: {e}", path.display())))?;
        Ok(DbImageStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SharedDatabase) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| Error::other(ErrorKind::Internal, format!("image store task: {e}")))?
    }

    /// Runs `change` on the current record of `name` in one write transaction.
    fn write(
        db: &SharedDatabase,
        name: &str,
        change: impl FnOnce(Option<Image>) -> Result<Option<Image>>,
    ) -> Result<Option<Image>> {
        let txn = db.begin_write().map_err(db_error)?;
        let result = {
            let mut table = txn.open_table(IMAGES).map_err(db_error)?;
            let current = table
                .get(name)
                .map_err(db_error)?
                .map(|v| decode(name, v.value()))
                .transpose()?;
            let next = change(current)?;
            match &next {
                Some(image) => {
                    table
                        .insert(name, Record::of(image).as_slice())
                        .map_err(db_error)?;
                }
                None => {
                    table.remove(name).map_err(db_error)?;
                }
            }
            next
        };
        txn.commit().map_err(db_error)?;
        Ok(result)
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<Image> {
    let record: Record = serde_json::from_slice(bytes).map_err(|e| {
        Error::other(
            ErrorKind::Io,
            format!("image {name:?}: corrupt record: {e}"),
        )
    })?;
    Ok(record.into_image(name.to_string()))
}

fn not_found(name: &str) -> Error {
    Error::ImageNotFound {
        name: name.to_string(),
    }
}

#[async_trait]
impl ImageStore for DbImageStore {
    async fn get(&self, name: &str) -> Result<Image> {
        let name = name.to_string();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_error)?;
            let table = match txn.open_table(IMAGES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Err(not_found(&name)),
                Err(e) => return Err(db_error(e)),
            };
            let found = table.get(name.as_str()).map_err(db_error)?;
            match found {
                Some(value) => decode(&name, value.value()),
                None => Err(not_found(&name)),
            }
        })
        .await
    }

    async fn list(&self, filters: &[&str]) -> Result<Vec<Image>> {
        let filters = Filters::parse(filters)?;
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(db_error)?;
            let table = match txn.open_table(IMAGES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db_error(e)),
            };
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_error)? {
                let (name, value) = entry.map_err(db_error)?;
                let image = decode(name.value(), value.value())?;
                if filters.matches(&image) {
                    out.push(image);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create(&self, image: Image) -> Result<Image> {
        let image = without_empty_values(image);
        validate(&image)?;
        self.blocking(move |db| {
            let name = image.name.clone();
            let created = Self::write(db, &name, |current| {
                if current.is_some() {
                    return Err(Error::ImageExists { name: name.clone() });
                }
                let now = SystemTime::now();
                Ok(Some(Image {
                    created_at: now,
                    updated_at: now,
                    ..image
                }))
            })?;
            Ok(created.expect("create always writes an image"))
        })
        .await
    }

    async fn update(&self, image: Image, fieldpaths: &[&str]) -> Result<Image> {
        if image.name.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "image name must not be empty".into(),
            ));
        }
        let fieldpaths: Vec<String> = fieldpaths.iter().map(|s| s.to_string()).collect();
        self.blocking(move |db| {
            let name = image.name.clone();
            let updated = Self::write(db, &name, |current| {
                let current = current.ok_or_else(|| not_found(&name))?;
                let mut next = current.clone();
                if fieldpaths.is_empty() {
                    next.target = image.target.clone();
                    next.labels = image.labels.clone();
                }
                for path in &fieldpaths {
                    match path.as_str() {
                        "target" => next.target = image.target.clone(),
                        "labels" => next.labels = image.labels.clone(),
                        "annotations" => {
                            next.target
                                .set_annotations(image.target.annotations().clone());
                        }
                        other if other.starts_with("annotations.") => {
                            let key = &other["annotations.".len()..];
                            let mut annotations =
                                next.target.annotations().clone().unwrap_or_default();
                            match image.target.annotations().as_ref().and_then(|a| a.get(key)) {
                                Some(value) => {
                                    annotations.insert(key.to_string(), value.clone());
                                }
                                None => {
                                    annotations.remove(key);
                                }
                            }
                            next.target
                                .set_annotations((!annotations.is_empty()).then_some(annotations));
                        }
                        other => match other.strip_prefix("labels.") {
                            Some(key) => match image.labels.get(key) {
                                Some(value) => {
                                    next.labels.insert(key.to_string(), value.clone());
                                }
                                None => {
                                    next.labels.remove(key);
                                }
                            },
                            None => {
                                return Err(Error::InvalidArgument(format!(
                                    "image {name:?}: cannot update field {other:?}"
                                )));
                            }
                        },
                    }
                }
                let mut next = without_empty_values(next);
                validate(&next)?;
                next.updated_at = SystemTime::now();
                Ok(Some(next))
            })?;
            Ok(updated.expect("update always writes an image"))
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.blocking(move |db| {
            // Not decoded first: a record this build cannot read (written by
            // another version) can still be deleted.
            let txn = db.begin_write().map_err(db_error)?;
            let removed = {
                let mut table = txn.open_table(IMAGES).map_err(db_error)?;
                table.remove(name.as_str()).map_err(db_error)?.is_some()
            };
            if !removed {
                return Err(not_found(&name));
            }
            txn.commit().map_err(db_error)
        })
        .await
    }

    async fn delete_if_target(&self, name: &str, target: &Digest) -> Result<()> {
        let name = name.to_string();
        let expected = target.clone();
        self.blocking(move |db| {
            Self::write(db, &name, |current| {
                let current = current.ok_or_else(|| not_found(&name))?;
                if *current.target.digest() != expected {
                    return Err(Error::ImageTargetMoved {
                        name: name.clone(),
                        current: Box::new(current.target.digest().clone()),
                        expected: Box::new(expected),
                    });
                }
                Ok(None)
            })
            .map(drop)
        })
        .await
    }
}
