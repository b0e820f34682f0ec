//! OCI image layouts (the image spec's `image-layout.md`): a directory of
//! `oci-layout`, `index.json` and `blobs/<alg>/<hex>`, as skopeo
//! (`oci:DIR:NAME`) and umoci write and read them, and as containerd's
//! `ctr export` / `ctr import` write and read them inside a tar archive
//! (a tar of a layout written here imports with `ctr images import`; the
//! directory itself does not).
//!
//! - [`export`] copies an image out of a store into a layout, each blob
//!   hashed as it is copied and made durable before the `index.json` that
//!   names it.
//! - [`import`] copies a layout's blobs into a store, each verified against
//!   the digest its file name claims; labels parents with their children,
//!   as a fetch does, so garbage collection keeps them; and names the
//!   layout's images in an image store.
//! - [`OciLayout`] reads a layout in place: its entries, and its blobs as a
//!   [`Provider`] that checks each as umoci does, so that an image unpacks
//!   straight from it (as `umoci unpack` does) without a copy in a store.
//!
//! Beside containerd's `core/images/archive`: [`export`] takes one image
//! (call it once per image; each call adds its entry) with every platform
//! the store holds, and [`import`] names the images itself, where
//! containerd's `ImportIndex` leaves naming to its caller.
//!
//! An entry of `index.json` is named by containerd's whole image name
//! ([`IMAGE_NAME_ANNOTATION`]) where it has one, else by its OCI ref name
//! ([`REF_NAME_ANNOTATION`], which containerd and skopeo give the tag alone).
//!
//! ```
//! use ocidist::content::{local::LocalStore, sha256_of, write_blob, Descriptor, Labels, WriterOpts};
//! use ocidist::layout::{export, ExportOptions, OciLayout};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LocalStore::open(dir.path().join("store"))?;
//! // An image with no layers: its config, and a manifest that names it.
//! let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
//! write_blob(&store, WriterOpts::new("config"), &config[..], Labels::new()).await?;
//! let manifest = format!(
//!     r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
//!     sha256_of(config),
//!     config.len()
//! );
//! write_blob(&store, WriterOpts::new("manifest"), manifest.as_bytes(), Labels::new()).await?;
//! let target = Descriptor::new(
//!     "application/vnd.oci.image.manifest.v1+json".into(),
//!     manifest.len() as u64,
//!     sha256_of(manifest.as_bytes()),
//! );
//!
//! let layout_dir = dir.path().join("layout");
//! let options = ExportOptions::for_image("example.com/app:v1");
//! let exported = export(&store, &target, &layout_dir, &options).await?;
//! assert_eq!(exported.blobs, 2);
//!
//! // `skopeo inspect oci:LAYOUT:v1` reads it; so does this.
//! let layout = OciLayout::open(&layout_dir)?;
//! let found = layout.find(Some("v1"))?;
//! assert_eq!(found.digest(), target.digest());
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};

use crate::content::local::LocalReaderAt;
use crate::content::{
    CopySource, Descriptor, Digest, Digester, ErrorKind, Ingester, Labels, Manager, Provider,
    ReaderAt, Report, WriterOpts, copy, open_writer,
};
use crate::images::manifest::{self, MAX_MANIFEST_SIZE};
use crate::images::media_types::{self, Kind};
use crate::images::{
    Flow, Handler, Image, ImageStore, children_handler, set_children_labels, walk,
};
use crate::staging::{GRACE, staged_file, sweep_unheld_files};

/// The layout version written into `oci-layout`, and the only one read.
pub const LAYOUT_VERSION: &str = "1.0.0";
/// The annotation that names an image in a layout's `index.json` (the OCI
/// ref name: `skopeo inspect oci:DIR:NAME`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd and `docker save` add beside
/// [`REF_NAME_ANNOTATION`] (which they give the tag alone): the image's
/// whole name.
pub const IMAGE_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The largest `index.json` read: far more than a manifest (a layout keeps
/// many tags), far less than memory.
pub const MAX_INDEX_SIZE: u64 = 64 << 20;
/// The longest image name [`import`] gives an image (a reference is far
/// shorter).
pub const MAX_IMAGE_NAME: usize = 4096;

/// How the files an export stages in a layout are named.
const STAGED_PREFIX: &str = ".ocidist-tmp-";
/// Blobs an export copies at once: while one is fsynced (a fifth of a
/// bulk:8x64m export's time, on a 2-core machine), the next is read and
/// hashed.
const PARALLEL_COPIES: usize = 2;
/// Buffers a blob's copy goes through: one being read and written while the
/// one before is hashed, and one spare so that neither side waits on the
/// other's every chunk.
const COPY_BUFFERS: usize = 3;
/// The size of each of them.
const COPY_BUFFER_SIZE: usize = 1 << 20;

/// Errors from reading, exporting to and importing from OCI layouts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory does not exist (a mistyped path).
    #[error("{} is not an OCI image layout: no such directory", dir.display())]
    NoSuchDirectory {
        /// The directory given.
        dir: PathBuf,
    },
    /// The directory has no `oci-layout` file: as umoci and containerd's
    /// importer do, a directory that does not say it is a layout is not read
    /// as one.
    #[error("{} is not an OCI image layout: it has no oci-layout file", dir.display())]
    NotALayout {
        /// The directory given.
        dir: PathBuf,
    },
    /// The `oci-layout` file names a version other than [`LAYOUT_VERSION`],
    /// or none.
    #[error("{}: {}", path.display(), match version {
        Some(version) => format!(
            "image layout version {version:?}, where this program reads {LAYOUT_VERSION:?}"
        ),
        None => "no imageLayoutVersion in it".to_string(),
    })]
    Version {
        /// The `oci-layout` file.
        path: PathBuf,
        /// The version it names.
        version: Option<String>,
    },
    /// A layout's `index.json` that cannot be read as one.
    #[error("{}: {reason}", path.display())]
    Index {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A filesystem operation on the layout failed.
    #[error("{}", path.display())]
    Io {
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A blob could not be copied from the store into the layout.
    #[error("copy {digest} to {}", dir.display())]
    Copy {
        /// The blob.
        digest: Digest,
        /// The layout directory it was being copied into.
        dir: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The store lacks a blob an image needs: nothing is written into the
    /// layout.
    #[error("content {digest}: not found, and {needed_by} needs it")]
    Missing {
        /// The missing blob.
        digest: Digest,
        /// The manifest or index that names it.
        needed_by: Digest,
    },
    /// The store's copy of a blob is not what its digest says (it went bad
    /// after its commit): it is never written into a layout.
    #[error("the store's copy of {digest} is corrupt ({found})")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// What its bytes are instead.
        found: String,
    },
    /// No entry of the layout has the name asked for.
    #[error("no image named {name:?} in its index.json")]
    NoSuchImage {
        /// The name asked for.
        name: String,
    },
    /// A name given to several images (two tagged `latest`, say): their
    /// whole names tell them apart.
    #[error("{name:?} names {} images here: say which ({})", names.len(), names.join(", "))]
    Ambiguous {
        /// The name asked for.
        name: String,
        /// The whole names of the entries it matched.
        names: Vec<String>,
    },
    /// No name was given, and the layout holds no image.
    #[error("no images in {}", index.display())]
    NoImages {
        /// The layout's `index.json`.
        index: PathBuf,
    },
    /// No name was given, and the layout holds several images.
    #[error("the layout holds {count} images: name one")]
    SeveralImages {
        /// How many entries its `index.json` has.
        count: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Content(#[from] crate::content::Error),
    /// Reading the image's manifests or indexes, or the image store, failed.
    #[error(transparent)]
    Images(#[from] crate::images::Error),
}

impl Error {
    /// How callers should treat the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoSuchDirectory { .. }
            | Error::Missing { .. }
            | Error::NoSuchImage { .. }
            | Error::NoImages { .. } => ErrorKind::NotFound,
            Error::NotALayout { .. }
            | Error::Index { .. }
            | Error::Ambiguous { .. }
            | Error::SeveralImages { .. } => ErrorKind::InvalidArgument,
            Error::Version { .. } => ErrorKind::Unimplemented,
            Error::Io { .. } | Error::Copy { .. } => ErrorKind::Io,
            Error::Corrupt { .. } => ErrorKind::FailedPrecondition,
            Error::Content(e) => e.kind(),
            Error::Images(e) => e.kind(),
        }
    }

    crate::content::kind_predicates!();

    fn io(path: &Path) -> impl Fn(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io {
            path: path.clone(),
            source,
        }
    }
}

/// A `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The name an `index.json` entry gives its image: containerd's whole name
/// ([`IMAGE_NAME_ANNOTATION`]), else the OCI ref name
/// ([`REF_NAME_ANNOTATION`]).
pub fn entry_name(entry: &Descriptor) -> Option<&str> {
    annotation(entry, IMAGE_NAME_ANNOTATION).or_else(|| annotation(entry, REF_NAME_ANNOTATION))
}

fn annotation<'d>(entry: &'d Descriptor, key: &str) -> Option<&'d str> {
    entry.annotations().as_ref()?.get(key).map(String::as_str)
}

/// The file of blob `digest` in the layout at `dir`: `blobs/<alg>/<hex>`.
fn blob_file(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_ref())
        .join(digest.digest())
}

/// An OCI image layout, opened to read: its entries ([`entries`](Self::entries),
/// [`find`](Self::find)), and its blobs as a [`Provider`].
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    /// Opens the layout at `dir`, once its `oci-layout` file says it is one
    /// of [`LAYOUT_VERSION`] (blocking: it reads that small file).
    pub fn open(dir: impl Into<PathBuf>) -> Result<OciLayout> {
        let dir = dir.into();
        let marker = dir.join("oci-layout");
        let version = match read_small_file(&marker) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_string)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(match dir.try_exists() {
                    Ok(true) => Error::NotALayout { dir },
                    _ => Error::NoSuchDirectory { dir },
                });
            }
            Err(e) => return Err(Error::io(&marker)(e)),
        };
        if version.as_deref() != Some(LAYOUT_VERSION) {
            return Err(Error::Version {
                path: marker,
                version,
            });
        }
        Ok(OciLayout { dir })
    }

    /// The layout's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` is, or would be: `blobs/<alg>/<hex>`.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_file(&self.dir, digest)
    }

    /// The entries of the layout's `index.json`, in its order, with their
    /// annotations (name them with [`entry_name`]). Blocking: it reads
    /// `index.json` (at most [`MAX_INDEX_SIZE`]).
    pub fn entries(&self) -> Result<Vec<Descriptor>> {
        let path = self.dir.join("index.json");
        let manifests = self.raw_entries()?;
        manifests
            .into_iter()
            .enumerate()
            .map(|(n, entry)| {
                serde_json::from_value(entry).map_err(|e| Error::Index {
                    path: path.clone(),
                    reason: format!("manifests[{n}]: {e}"),
                })
            })
            .collect()
    }

    /// The entries of `index.json` as JSON: none for a missing or `null`
    /// `manifests`, as Go's decoder (skopeo, umoci, containerd) reads it.
    fn raw_entries(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.dir.join("index.json");
        match read_index(&path)?
            .get_mut("manifests")
            .map(serde_json::Value::take)
        {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(entries)) => Ok(entries),
            Some(_) => Err(Error::Index {
                path,
                reason: "its manifests are not an array".to_string(),
            }),
        }
    }

    /// The entry named `name` (by [`entry_name`] or by its ref name alone,
    /// as `skopeo`'s `oci:DIR:NAME` names it), or with `None` the layout's
    /// only entry. Only the entry found must be a descriptor: another
    /// entry this program cannot read does not hide it. Blocking, as
    /// [`entries`](Self::entries).
    pub fn find(&self, name: Option<&str>) -> Result<Descriptor> {
        let entries = self.raw_entries()?;
        let found = match name {
            None => match entries.len() {
                0 => {
                    return Err(Error::NoImages {
                        index: self.dir.join("index.json"),
                    });
                }
                1 => entries.into_iter().next().expect("one entry"),
                count => return Err(Error::SeveralImages { count }),
            },
            Some(name) => {
                let named: Vec<serde_json::Value> = entries
                    .into_iter()
                    .filter(|e| {
                        e["annotations"][REF_NAME_ANNOTATION].as_str() == Some(name)
                            || json_entry_name(e) == Some(name)
                    })
                    .collect();
                // Two images tagged alike (`latest`): the whole name says
                // which.
                let targets: HashSet<&str> =
                    named.iter().filter_map(|e| e["digest"].as_str()).collect();
                if targets.len() > 1 {
                    return Err(Error::Ambiguous {
                        name: name.to_string(),
                        names: named
                            .iter()
                            .filter_map(|e| json_entry_name(e).map(str::to_string))
                            .collect(),
                    });
                }
                named.into_iter().next().ok_or_else(|| Error::NoSuchImage {
                    name: name.to_string(),
                })?
            }
        };
        serde_json::from_value(found).map_err(|e| Error::Index {
            path: self.dir.join("index.json"),
            reason: format!("the entry asked for: {e}"),
        })
    }
}

#[async_trait::async_trait]
impl Provider for OciLayout {
    /// A layout's blob, checked first as umoci checks it: a regular file
    /// (not a symlink, a FIFO or `/dev/zero`) of the descriptor's size, and,
    /// up to the manifest size limit (manifests, configs), of its digest. A
    /// layer's bytes are the unpack's to check (against the config's diff
    /// IDs, the config itself checked by its digest); a missing blob is
    /// [`BlobNotFound`](crate::content::Error::BlobNotFound).
    async fn reader_at(&self, desc: &Descriptor) -> crate::content::Result<Box<dyn ReaderAt>> {
        let path = self.blob_path(desc.digest());
        let (checked, desc_copy) = (path.clone(), desc.clone());
        tokio::task::spawn_blocking(move || check_layout_blob(&checked, &desc_copy))
            .await
            .map_err(|e| crate::content::Error::other(ErrorKind::Internal, e))??;
        LocalReaderAt::open_blob(path, desc.digest()).await
    }
}

/// Opens `path` if it is a regular file, never blocking on a FIFO, and
/// without following a symlink when `follow` is false.
fn open_regular(path: &Path, follow: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | nofollow)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// A layout's `oci-layout` or `index.json`: a regular file of at most
/// [`MAX_INDEX_SIZE`], not whatever a symlink points at (`/dev/zero` would
/// be read until memory runs out).
fn read_small_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = open_regular(path, true)?;
    let mut bytes = Vec::new();
    file.take(MAX_INDEX_SIZE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_INDEX_SIZE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_INDEX_SIZE} bytes"),
        ));
    }
    Ok(bytes)
}

/// The `index.json` at `path`, as JSON (whatever fields it has beside
/// `manifests`, which an export keeps).
fn read_index(path: &Path) -> Result<serde_json::Value> {
    let bytes = read_small_file(path).map_err(Error::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Index {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Checks the layout blob at `path` against `desc` (see
/// [`OciLayout::reader_at`]).
fn check_layout_blob(path: &Path, desc: &Descriptor) -> crate::content::Result<()> {
    let refused = |why: String| {
        crate::content::Error::other(
            ErrorKind::FailedPrecondition,
            format!("layout blob {}: {why}", desc.digest()),
        )
    };
    let file = match open_regular(path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(crate::content::Error::BlobNotFound {
                digest: desc.digest().clone(),
            });
        }
        Err(e) => return Err(refused(format!("{}: {e}", path.display()))),
    };
    let size = file.metadata().map_err(|e| refused(e.to_string()))?.len();
    if size != desc.size() {
        return Err(refused(format!(
            "{size} bytes, where its descriptor says {}",
            desc.size()
        )));
    }
    if size <= MAX_MANIFEST_SIZE {
        let mut digester = Digester::new(desc.digest().algorithm())
            .map_err(|e| refused(Report::new(&e).to_string()))?;
        let mut bytes = Vec::new();
        (&file)
            .take(size)
            .read_to_end(&mut bytes)
            .map_err(|e| refused(e.to_string()))?;
        digester.update(&bytes);
        let actual = digester.digest();
        if &actual != desc.digest() {
            return Err(refused(format!("its bytes hash to {actual}")));
        }
    }
    Ok(())
}

/// How [`export`] names the image's entry in `index.json`:
/// [`ExportOptions::for_image`] as containerd does, or the setters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// The entry's [`REF_NAME_ANNOTATION`] (`skopeo inspect oci:DIR:NAME`).
    pub ref_name: Option<String>,
    /// The entry's [`IMAGE_NAME_ANNOTATION`]: the image's whole name.
    pub image_name: Option<String>,
}

impl ExportOptions {
    /// An unnamed entry (as the OCI spec allows): the image is found by its
    /// digest, or as the layout's only entry.
    pub fn new() -> Self {
        ExportOptions::default()
    }

    /// Names the entry as containerd's export names an image: its ref name
    /// is `name`'s tag (`name` itself when it has none), its image name
    /// `name`.
    pub fn for_image(name: &str) -> Self {
        let tag = name
            .parse::<crate::remotes::Reference>()
            .ok()
            .and_then(|r| r.tag().map(str::to_string));
        ExportOptions {
            ref_name: Some(tag.unwrap_or_else(|| name.to_string())),
            image_name: Some(name.to_string()),
        }
    }

    /// Sets the entry's ref name.
    pub fn ref_name(mut self, name: impl Into<String>) -> Self {
        self.ref_name = Some(name.into());
        self
    }

    /// Sets the entry's whole image name.
    pub fn image_name(mut self, name: impl Into<String>) -> Self {
        self.image_name = Some(name.into());
        self
    }
}

/// What [`export`] did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Exported {
    /// The blobs the layout holds for the image, each counted once (those it
    /// had already included).
    pub blobs: usize,
    /// The manifests (or indexes) the image's index lists that the store
    /// lacks (a one-platform fetch): left out of the layout, whose entry
    /// still names the whole index, as `ctr export` of one platform does.
    /// Tools that read every platform (`skopeo copy --all`) will miss them.
    pub left_out: Vec<Descriptor>,
    /// The digests the entry's name named before this export replaced them
    /// (one entry per name: a re-export under a name replaces its entry),
    /// as `index.json` spelled them.
    pub replaced: Vec<String>,
}

/// Copies the image `target` (a manifest or an index) and everything it
/// references out of `store` into the OCI layout at `dir`, which is made if
/// missing and added to if not, with an entry named by `options`.
///
/// - Every blob is hashed as it is copied: a store file that went bad after
///   its commit fails the export ([`Error::Corrupt`]) and is never written
///   under a digest it does not have. A blob the layout has already is kept.
/// - Blobs are staged, fsynced and renamed into place, their directories
///   fsynced, before `index.json` is rewritten the same way: a crash leaves
///   the entries as they were, or with the image's entry and every blob it
///   needs. A blob file the layout already has is kept as it is, unread
///   (a layout is the writer's own, as a store is).
/// - A missing blob a manifest needs fails the export before anything is
///   written ([`Error::Missing`]); an index's missing platforms are left
///   out ([`Exported::left_out`]), as are foreign layers the store lacks.
/// - A directory whose `oci-layout` names another version is refused
///   ([`Error::Version`]), as [`OciLayout::open`] refuses it.
/// - Two exports into one layout at once each keep their entry: `index.json`
///   is rewritten under a flock on the layout directory.
///
/// A `dist prune` (or [`crate::gc::collect`]) running meanwhile may remove
/// what is being copied: hold a lease on `target` first.
///
/// The copy runs on threads of its own, not the runtime's blocking pool
/// (which the store's reads may need: a full pool would wait on itself).
///
/// # Cancellation
///
/// Dropping the future stops the copy before its next 1 MiB chunk; the file
/// it was staging is removed, and `index.json` is not touched. Blobs
/// already renamed into place stay, unnamed, for the next export to keep.
pub async fn export<S>(
    store: &S,
    target: &Descriptor,
    dir: &Path,
    options: &ExportOptions,
) -> Result<Exported>
where
    S: Provider + Manager + Clone + 'static,
{
    check_layout_version(dir)?;
    let Reachable { blobs, left_out } = reachable(store, target).await?;
    let count = blobs.len();
    let (store_copy, dir_copy) = (store.clone(), dir.to_path_buf());
    let runtime = tokio::runtime::Handle::current();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    // A thread of its own, off the runtime, so other tasks (a Ctrl-C) go on
    // while gigabytes copy; not the blocking pool, which the store's reads
    // use.
    std::thread::Builder::new()
        .name("ocidist-export".into())
        .spawn(move || {
            let copied = copy_blobs(&runtime, &store_copy, &dir_copy, &blobs, &stop);
            let _ = done_tx.send(copied);
        })
        .map_err(Error::io(dir))?;
    done_rx.await.map_err(|_| {
        crate::content::Error::other(ErrorKind::Internal, "the export's copy thread panicked")
    })??;
    let (dir, target, options) = (dir.to_path_buf(), target.clone(), options.clone());
    let replaced = tokio::task::spawn_blocking(move || add_entry(&dir, &target, &options))
        .await
        .map_err(|e| crate::content::Error::other(ErrorKind::Internal, e))??;
    Ok(Exported {
        blobs: count,
        left_out,
        replaced,
    })
}

/// Stops an export's copy when the export is dropped.
struct StopOnDrop(std::sync::Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Refuses a directory whose `oci-layout` names a version other than
/// [`LAYOUT_VERSION`]; a directory without one is made a layout.
fn check_layout_version(dir: &Path) -> Result<()> {
    match OciLayout::open(dir) {
        Ok(_) | Err(Error::NoSuchDirectory { .. } | Error::NotALayout { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// What [`reachable`] found.
struct Reachable {
    /// Each blob once (layers shared by platforms too).
    blobs: Vec<Descriptor>,
    /// The manifests (or indexes) an index names that the store lacks.
    left_out: Vec<Descriptor>,
}

/// `root` and everything it references that the store has; a manifest's own
/// children must all be present, an index's missing platforms are left out.
async fn reachable<S: Provider + Manager>(store: &S, root: &Descriptor) -> Result<Reachable> {
    let mut found = Reachable {
        blobs: Vec::new(),
        left_out: Vec::new(),
    };
    let mut seen = HashSet::new();
    let mut queue = vec![root.clone()];
    while let Some(desc) = queue.pop() {
        if !seen.insert(desc.digest().clone()) {
            continue;
        }
        let kind = media_types::kind(desc.media_type().as_ref());
        if matches!(kind, Kind::Manifest | Kind::Index) {
            for child in manifest::children(store, &desc).await? {
                let child_kind = media_types::kind(child.media_type().as_ref());
                match store.info(child.digest()).await {
                    Ok(_) => {}
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    Err(_)
                        if kind == Kind::Index
                            && matches!(child_kind, Kind::Manifest | Kind::Index) =>
                    {
                        found.left_out.push(child);
                        continue;
                    }
                    // A foreign layer lives where its URLs say: one that is
                    // not here is left out, as containerd's export leaves
                    // out what it skips.
                    Err(_) if media_types::is_non_distributable(child.media_type().as_ref()) => {
                        continue;
                    }
                    Err(_) => {
                        return Err(Error::Missing {
                            digest: child.digest().clone(),
                            needed_by: desc.digest().clone(),
                        });
                    }
                }
                queue.push(child);
            }
        }
        found.blobs.push(desc);
    }
    Ok(found)
}

/// Copies each blob into its place in the layout at `dir`, durably before
/// the `index.json` that names them: staged, fsynced, renamed, the
/// directories fsynced. A blob already there is kept. [`PARALLEL_COPIES`]
/// blobs are copied at once; after the first error no other is begun.
fn copy_blobs<S: Provider>(
    runtime: &tokio::runtime::Handle,
    store: &S,
    dir: &Path,
    blobs: &[Descriptor],
    stop: &AtomicBool,
) -> Result<()> {
    let mut swept = BTreeSet::new();
    let mut dests = BTreeSet::new();
    let mut todo = Vec::new();
    for desc in blobs {
        let dest = blob_file(dir, desc.digest());
        let blob_dir = dest
            .parent()
            .expect("blob files have a parent")
            .to_path_buf();
        if swept.insert(blob_dir.clone()) {
            sweep_unheld_files(&blob_dir, STAGED_PREFIX, GRACE);
        }
        if dest.exists() || !dests.insert(dest.clone()) {
            continue;
        }
        make_dirs_durably(&blob_dir)?;
        todo.push((desc, dest));
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let copy_some = || {
        let mut bufs = vec![vec![0; COPY_BUFFER_SIZE]; COPY_BUFFERS];
        while !failed.load(Ordering::Relaxed) {
            let Some((desc, dest)) = todo.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            if let Err(e) = copy_blob(runtime, store, desc, dest, &mut bufs, stop) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    let copied: Vec<Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL_COPIES.min(todo.len()))
            .map(|_| scope.spawn(copy_some))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    copied.into_iter().collect::<Result<()>>()?;
    let dirs: BTreeSet<&Path> = todo.iter().filter_map(|(_, dest)| dest.parent()).collect();
    for dir in dirs {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::io(dir))?;
    }
    Ok(())
}

/// Makes `dir` and its missing parents, each made one's entry fsynced in
/// its parent, so a blob renamed into it later survives a crash.
fn make_dirs_durably(dir: &Path) -> Result<()> {
    // The empty parent of a relative path is the working directory.
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(Error::io(dir)(e)),
    }
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(parent))
}

/// Copies one blob from the store into its staged file, checks it, and
/// renames it into place (its directory fsynced later, with the others).
fn copy_blob<S: Provider>(
    runtime: &tokio::runtime::Handle,
    store: &S,
    desc: &Descriptor,
    dest: &Path,
    bufs: &mut Vec<Vec<u8>>,
    stop: &AtomicBool,
) -> Result<()> {
    let dir = dest.parent().expect("blob files have a parent");
    let digest = desc.digest();
    let failed_copy = |source: std::io::Error| Error::Copy {
        digest: digest.clone(),
        dir: dir.to_path_buf(),
        source,
    };
    let corrupt = |found: String| Error::Corrupt {
        digest: digest.clone(),
        found,
    };
    let reader = runtime.block_on(store.reader_at(desc))?;
    if reader.size() != desc.size() {
        return Err(corrupt(format!(
            "{} bytes, not {}",
            reader.size(),
            desc.size()
        )));
    }
    let mut staged = staged_file(dir, STAGED_PREFIX).map_err(Error::io(dir))?;
    let mut offset = 0;
    let read = |buf: &mut [u8]| {
        if stop.load(Ordering::Relaxed) {
            return Err(crate::content::Error::other(
                ErrorKind::Unavailable,
                "the export was dropped",
            ));
        }
        let n = runtime.block_on(reader.read_at(offset, buf))?;
        offset += n as u64;
        Ok(n)
    };
    let (size, actual) =
        copy_hashed(read, staged.as_file_mut(), digest, bufs).map_err(|e| match e {
            Copied::Read(e) => Error::Content(e),
            Copied::Write(e) => failed_copy(e),
        })?;
    if size != desc.size() {
        return Err(corrupt(format!("{size} bytes, not {}", desc.size())));
    }
    if &actual != digest {
        return Err(corrupt(format!("its bytes hash to {actual}")));
    }
    // Read-only, as blobs in the store are.
    staged
        .as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .and_then(|()| staged.as_file().sync_all())
        .and_then(|()| staged.persist(dest).map(drop).map_err(|e| e.error))
        .map_err(Error::io(dest))
}

/// Which end of a copy failed.
enum Copied {
    Read(crate::content::Error),
    Write(std::io::Error),
}

/// Copies what `read` gives into `to` through `bufs`, hashing with `like`'s
/// algorithm: the bytes copied and their digest. Each chunk is hashed on a
/// second thread after it is written, from the buffer it was written from
/// (so what is hashed is what went out), while this thread reads and writes
/// the next: SHA-256 is the larger cost, and it no longer waits on the copy.
fn copy_hashed(
    mut read: impl FnMut(&mut [u8]) -> crate::content::Result<usize>,
    mut to: &std::fs::File,
    like: &Digest,
    bufs: &mut Vec<Vec<u8>>,
) -> Result<(u64, Digest), Copied> {
    let mut digester = Digester::new(like.algorithm()).map_err(Copied::Read)?;
    if bufs.is_empty() {
        bufs.push(vec![0; COPY_BUFFER_SIZE]);
    }
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for buf in bufs.drain(..) {
        free_tx.send(buf).expect("the receiver is here");
    }
    let (hash_tx, hash_rx) = mpsc::channel::<(Vec<u8>, usize)>();
    let (copied, digester) = std::thread::scope(|scope| {
        let hasher = scope.spawn(move || {
            for (buf, n) in hash_rx {
                // Filled on the other core: fetched ahead as it is hashed.
                digester.update_handed_over(&buf[..n]);
                // Refused only once the copy has stopped taking buffers.
                let _ = free_tx.send(buf);
            }
            digester
        });
        let copied = (|| {
            let mut size = 0;
            while let Ok(mut buf) = free_rx.recv() {
                let n = match read(&mut buf) {
                    Ok(0) => {
                        bufs.push(buf);
                        return Ok(size);
                    }
                    Ok(n) => n,
                    Err(e) => {
                        bufs.push(buf);
                        return Err(Copied::Read(e));
                    }
                };
                if let Err(e) = to.write_all(&buf[..n]) {
                    bufs.push(buf);
                    return Err(Copied::Write(e));
                }
                size += n as u64;
                if hash_tx.send((buf, n)).is_err() {
                    break;
                }
            }
            // Only if the hasher panicked: it takes and hands back every
            // buffer while it runs.
            Err(Copied::Write(std::io::Error::other(
                "the hashing thread stopped",
            )))
        })();
        drop(hash_tx);
        (copied, hasher.join())
    });
    bufs.extend(free_rx.try_iter());
    let digester = digester
        .map_err(|_| Copied::Write(std::io::Error::other("the hashing thread panicked")))?;
    Ok((copied?, digester.digest()))
}

/// Writes `bytes` as `path`: staged, fsynced, renamed, the directory fsynced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut staged = staged_file(dir, STAGED_PREFIX)?;
    staged.write_all(bytes)?;
    // As a plain write would leave it under the usual umask, for readers
    // other than its writer.
    staged
        .as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    staged.as_file().sync_all()?;
    staged.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `oci-layout` and adds `target`'s entry to `index.json` (replacing
/// the one of its name), under a flock on the layout directory so that two
/// exports at once both keep their entries: what the entry's name named
/// before, where that was another image.
fn add_entry(dir: &Path, target: &Descriptor, options: &ExportOptions) -> Result<Vec<String>> {
    // On the directory itself: no file is added to the layout.
    let dir_file = std::fs::File::open(dir).map_err(Error::io(dir))?;
    dir_file.lock().map_err(Error::io(dir))?;
    sweep_unheld_files(dir, STAGED_PREFIX, GRACE);
    let layout_file = dir.join("oci-layout");
    write_atomically(
        &layout_file,
        format!(r#"{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}"#).as_bytes(),
    )
    .map_err(Error::io(&layout_file))?;
    let index_path = dir.join("index.json");
    let mut index = match read_index(&index_path) {
        Ok(index) => index,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            serde_json::json!({"schemaVersion": 2, "manifests": []})
        }
        Err(e) => return Err(e),
    };
    let mut entry = target.clone();
    let mut annotations = entry.annotations().clone().unwrap_or_default();
    if let Some(ref_name) = &options.ref_name {
        annotations.insert(REF_NAME_ANNOTATION.to_string(), ref_name.clone());
    }
    if let Some(image_name) = &options.image_name {
        annotations.insert(IMAGE_NAME_ANNOTATION.to_string(), image_name.clone());
    }
    entry.set_annotations(Some(annotations));
    let not_index = |reason: &str| Error::Index {
        path: index_path.clone(),
        reason: reason.to_string(),
    };
    let value = serde_json::to_value(&entry).map_err(|e| not_index(&e.to_string()))?;
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| not_index("no manifests array"))?;
    // One entry per name. An unnamed entry replaces only itself.
    let digest = target.digest().to_string();
    let name = entry_name(&entry);
    let replaced_by_it = |m: &serde_json::Value| match name {
        Some(name) => json_entry_name(m) == Some(name),
        None => json_entry_name(m).is_none() && m["digest"].as_str() == Some(digest.as_str()),
    };
    let replaced = manifests
        .iter()
        .filter(|m| replaced_by_it(m))
        .filter_map(|m| m["digest"].as_str().filter(|d| *d != digest))
        .map(str::to_string)
        .collect();
    manifests.retain(|m| !replaced_by_it(m));
    manifests.push(value);
    if index.get("mediaType").is_none() {
        index["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    }
    let bytes = serde_json::to_vec_pretty(&index).map_err(|e| not_index(&e.to_string()))?;
    write_atomically(&index_path, &bytes).map_err(Error::io(&index_path))?;
    Ok(replaced)
}

/// [`entry_name`] of an entry as JSON (as an export keeps them, whatever
/// their fields).
fn json_entry_name(entry: &serde_json::Value) -> Option<&str> {
    let annotations = &entry["annotations"];
    annotations[IMAGE_NAME_ANNOTATION]
        .as_str()
        .or_else(|| annotations[REF_NAME_ANNOTATION].as_str())
}

/// How [`import`] names the layout's images.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Name each image this prefix and its ref name
    /// ([`REF_NAME_ANNOTATION`], such as `v1`). Without it, an image is
    /// named by its [`entry_name`].
    pub prefix: Option<String>,
}

impl ImportOptions {
    /// Images named by their [`entry_name`].
    pub fn new() -> Self {
        ImportOptions::default()
    }

    /// Names each image `prefix` and its ref name.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
}

/// What [`import`] did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Imported {
    /// The layout's entries, in its order.
    pub images: Vec<ImportedImage>,
    /// What is under `blobs/` and is not a blob (an export's staged file
    /// left by a crash, a stray `README`), with why: skipped.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One entry of an imported layout.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImportedImage {
    /// The image's manifest or index.
    pub target: Descriptor,
    /// The name it was given in the image store; `None` for an entry with
    /// no name (its content is imported, and kept by no image).
    pub name: Option<String>,
    /// A name the entry had that is not one (control characters, or longer
    /// than [`MAX_IMAGE_NAME`]): not given, and the image left unnamed.
    pub refused_name: Option<String>,
}

/// Imports the OCI layout `layout` into `store` and `images`, as `ctr
/// import` does.
///
/// - Every blob file under `blobs/<alg>/` is written into the store,
///   verified against the digest its name claims (a blob the store has is
///   not read). What is not a blob is skipped ([`Imported::skipped`]).
/// - Each entry's manifests and indexes are walked and labelled with their
///   children, as a fetch labels them, so garbage collection keeps what the
///   image needs. An index's manifests the layout lacks are skipped (a
///   one-platform export), unless it lacks them all; a manifest's config or
///   layer it lacks fails the import ([`ErrorKind::NotFound`]), foreign
///   layers excepted.
/// - Each named entry is created in `images`, or updated there to the
///   layout's target, once every entry has been walked: an import that
///   fails on a blob or a document names nothing (its blobs stay in the
///   store, unnamed, for a collection to take).
///
/// `index.json` is read and `blobs/` listed on the blocking pool, before
/// any blob is written.
///
/// To keep what is imported from a prune running meanwhile, pass a leased
/// store ([`crate::content::lease::LeasedStore`]).
pub async fn import<S, I>(
    store: &S,
    images: &I,
    layout: &OciLayout,
    options: &ImportOptions,
) -> Result<Imported>
where
    S: Provider + Ingester + Manager + Clone,
    I: ImageStore + ?Sized,
{
    // `index.json` (up to 64 MiB) and the listing of `blobs/`, off the
    // runtime's threads.
    let read = layout.clone();
    let (entries, (blobs, skipped)) =
        tokio::task::spawn_blocking(move || Ok::<_, Error>((read.entries()?, list_blobs(&read)?)))
            .await
            .map_err(|e| crate::content::Error::other(ErrorKind::Internal, e))??;
    let mut imported = Imported {
        skipped,
        ..Imported::default()
    };
    import_blobs(store, &blobs).await?;
    // Each document is walked once, however often indexes list it: a
    // layout of a few KB can list one index a thousand times, each listing
    // one manifest a thousand times.
    let walked = Mutex::new(HashSet::new());
    // Every entry walked before any is named: an import that fails names
    // nothing.
    for desc in &entries {
        let labeller = PresentManifests {
            inner: set_children_labels(store.clone(), children_handler(store.clone())),
            store: store.clone(),
            layout: layout.dir(),
            top: desc.digest().clone(),
            walked: &walked,
        };
        walk(&labeller, std::slice::from_ref(desc)).await?;
    }
    for desc in entries {
        let name = match &options.prefix {
            Some(prefix) => {
                annotation(&desc, REF_NAME_ANNOTATION).map(|tag| format!("{prefix}{tag}"))
            }
            None => entry_name(&desc).map(str::to_string),
        };
        // A name is printed and stored: no escape sequences, no line breaks.
        let (name, refused_name) = match name {
            Some(name) if name.chars().any(char::is_control) || name.len() > MAX_IMAGE_NAME => {
                (None, Some(name))
            }
            name => (name, None),
        };
        if let Some(name) = &name {
            let image = Image::new(name.clone(), desc.clone());
            match images.create(image.clone()).await {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    images.update(image, &["target"]).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        imported.images.push(ImportedImage {
            target: desc,
            name,
            refused_name,
        });
    }
    Ok(imported)
}

/// The blob files of `layout` (`blobs/<alg>/<hex>`), each with the digest
/// its name claims; and what is there but is not a blob, with why.
type Listing = (Vec<(PathBuf, Digest)>, Vec<(PathBuf, String)>);

/// Lists the blob files of `layout` (blocking).
fn list_blobs(layout: &OciLayout) -> Result<Listing> {
    let (mut blobs, mut skipped) = (Vec::new(), Vec::new());
    let blobs_dir = layout.dir().join("blobs");
    let listed = |dir: &Path| std::fs::read_dir(dir).map_err(Error::io(dir));
    for algorithm in listed(&blobs_dir)? {
        let algorithm = algorithm.map_err(Error::io(&blobs_dir))?;
        let algorithm_dir = algorithm.path();
        if !algorithm
            .file_type()
            .map_err(Error::io(&algorithm_dir))?
            .is_dir()
        {
            skipped.push((algorithm_dir, "not a directory of blobs".to_string()));
            continue;
        }
        for blob in listed(&algorithm_dir)? {
            let blob = blob.map_err(Error::io(&algorithm_dir))?;
            let path = blob.path();
            let name = format!(
                "{}:{}",
                algorithm.file_name().to_string_lossy(),
                blob.file_name().to_string_lossy()
            );
            match blob_digest(&name) {
                Ok(digest) if blob.file_type().map_err(Error::io(&path))?.is_file() => {
                    blobs.push((path, digest));
                }
                Ok(_) => skipped.push((path, "not a file".to_string())),
                Err(why) => skipped.push((path, why)),
            }
        }
    }
    Ok((blobs, skipped))
}

/// Writes each of `blobs` into `store`, verified against its digest; one
/// the store has is not read.
async fn import_blobs<S: Ingester>(store: &S, blobs: &[(PathBuf, Digest)]) -> Result<()> {
    for (path, digest) in blobs {
        let mut file = tokio::fs::File::open(path).await.map_err(Error::io(path))?;
        let size = file.metadata().await.map_err(Error::io(path))?.len();
        let opts = WriterOpts::new(format!("import-{digest}"))
            .size(size)
            .digest(digest.clone());
        let mut writer = match open_writer(store, opts).await {
            Ok(writer) => writer,
            Err(e) if e.is_already_exists() => continue,
            Err(e) => return Err(e.into()),
        };
        // Seekable: what an earlier import of a wrong file left is read
        // again from the file as it is now.
        copy(
            writer.as_mut(),
            CopySource::Seekable(&mut file),
            Some(size),
            Some(digest),
            Labels::new(),
        )
        .await?;
    }
    Ok(())
}

/// The digest a blob file's path names (`<alg>:<hex>`), if it is one of an
/// algorithm the store can verify.
fn blob_digest(name: &str) -> std::result::Result<Digest, String> {
    let digest = Digest::try_from(name).map_err(|e| format!("not a digest ({e})"))?;
    Digester::new(digest.algorithm()).map_err(|e| e.to_string())?;
    Ok(digest)
}

/// Drops the manifests of an index that the store lacks.
struct PresentManifests<'w, H, S> {
    inner: H,
    store: S,
    /// The layout's directory, to say why a blob was not imported.
    layout: &'w Path,
    /// The image's own index, which must keep some manifest.
    top: Digest,
    /// The documents walked already, by this walk or an earlier one, and
    /// whether as an image's own index.
    walked: &'w Mutex<HashSet<(Digest, bool)>>,
}

impl<H: Handler, S: Manager> PresentManifests<'_, H, S> {
    /// Why `digest` is not in the store after the blobs were imported: its
    /// file is missing, or is not a regular file (skipped).
    fn why_missing(&self, digest: &Digest) -> &'static str {
        match blob_file(self.layout, digest).symlink_metadata() {
            Ok(meta) if !meta.is_file() => "its file there is not a regular file",
            Ok(_) => "its file there could not be imported",
            Err(_) => "it has no file there",
        }
    }
}

#[async_trait::async_trait]
impl<H: Handler, S: Manager> Handler for PresentManifests<'_, H, S> {
    async fn handle(&self, desc: &Descriptor) -> crate::images::Result<Flow> {
        // The image's own index is judged once as such (it must keep a
        // manifest), even when it was walked as another's child before.
        let first_time = self
            .walked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((desc.digest().clone(), desc.digest() == &self.top));
        if !first_time {
            return Ok(Flow::Skip);
        }
        // A manifest's config and layers must all be there (foreign layers
        // excepted: they live where their URLs say); the labelling walk
        // reads manifests only, so the others are looked for here.
        let media_type = desc.media_type().as_ref();
        if !matches!(media_types::kind(media_type), Kind::Manifest | Kind::Index)
            && !media_types::is_non_distributable(media_type)
        {
            match self.store.info(desc.digest()).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {
                    return Err(crate::images::Error::other(
                        ErrorKind::NotFound,
                        format!(
                            "blob {} ({media_type}) of image {} is not in the layout: {}",
                            desc.digest(),
                            self.top,
                            self.why_missing(desc.digest())
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let flow = self.inner.handle(desc).await?;
        let Flow::Children(children) = flow else {
            return Ok(flow);
        };
        if media_types::kind(desc.media_type().as_ref()) != Kind::Index {
            return Ok(Flow::Children(children));
        }
        let listed = children.len();
        let mut present = Vec::with_capacity(listed);
        for child in children {
            match self.store.info(child.digest()).await {
                Ok(_) => present.push(child),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Some platforms may be missing; all of an image's is no image.
        if present.is_empty() && listed > 0 && desc.digest() == &self.top {
            return Err(crate::images::Error::other(
                ErrorKind::NotFound,
                format!(
                    "index {}: none of its {listed} manifests is in the layout",
                    desc.digest()
                ),
            ));
        }
        Ok(Flow::Children(present))
    }
}
