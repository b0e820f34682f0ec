//! OCI image layouts: `export` writes one that skopeo and umoci read;
//! `import` reads one they wrote; `unpack` unpacks an image straight from one
//! (as `umoci unpack` does), without copying its blobs into the store.

use std::path::{Path, PathBuf};

use clap::Args;
use std::sync::Arc;

use ocidist::content::lease::{Lease, LeasedStore};
use ocidist::content::local::LocalReaderAt;
use ocidist::content::{
    CopySource, Descriptor, Digest, ErrorKind, Labels, Manager, Provider, ReaderAt, WriterOpts,
    copy, open_writer,
};
use ocidist::images::manifest::MAX_MANIFEST_SIZE;
use ocidist::images::media_types::{self, Kind};
use ocidist::images::platforms;
use ocidist::images::{
    Flow, Handler, Image, ImageStore, children_handler, manifest, set_children_labels, walk,
};
use ocidist::snapshot::lease::LeasedSnapshotter;
use ocidist::snapshot::{Snapshotter, UnpackOptions, unpack};

use crate::image::{find_image, local_target};
use crate::output::report;
use crate::{CmdResult, Failure, Stores};

/// The annotation that names an image in a layout's `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation containerd and `docker save` add beside [`REF_NAME`] (which
/// they give the tag alone): the image's whole name.
const IMAGE_NAME: &str = "io.containerd.image.name";

/// The name an `index.json` entry gives its image: containerd's whole name,
/// else the OCI ref name.
fn entry_name(entry: &serde_json::Value) -> Option<&str> {
    let annotations = &entry["annotations"];
    annotations[IMAGE_NAME]
        .as_str()
        .or_else(|| annotations[REF_NAME].as_str())
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// The image (a name in the image store, or a manifest digest).
    reference: String,
    /// The layout directory (created, or added to).
    dir: PathBuf,
    /// The name in the layout (`skopeo inspect oci:DIR:NAME`); default: the
    /// image's tag, with its whole name beside it as containerd writes it
    /// (`io.containerd.image.name`); none for a digest.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct UnpackArgs {
    /// `DIR[:NAME]`: the layout, and the image's ref name in its `index.json`
    /// (optional when it holds one image).
    layout: String,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The layout directory.
    dir: PathBuf,
    /// Name the images `PREFIX` + the layout's ref name
    /// (`org.opencontainers.image.ref.name`, such as `v1`). Without it, an
    /// image is named by containerd's whole name where the layout has one
    /// (`io.containerd.image.name`), else by its ref name.
    #[arg(long)]
    prefix: Option<String>,
}

fn blob_file(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_ref())
        .join(digest.digest())
}

/// What [`reachable`] found.
struct Reachable {
    /// Each blob once (layers shared by platforms too).
    blobs: Vec<Descriptor>,
    /// The manifests (or indexes) an index names that the store lacks.
    left_out: Vec<Descriptor>,
}

/// `desc` and everything it references that the store has; a manifest's own
/// children must all be present, an index's missing platforms are left out.
async fn reachable(
    stores: &Stores,
    root: &Descriptor,
) -> Result<Reachable, Box<dyn std::error::Error + Send + Sync>> {
    let mut found = Reachable {
        blobs: Vec::new(),
        left_out: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    let mut queue = vec![root.clone()];
    while let Some(desc) = queue.pop() {
        if !seen.insert(desc.digest().clone()) {
            continue;
        }
        let kind = media_types::kind(desc.media_type().as_ref());
        if matches!(kind, Kind::Manifest | Kind::Index) {
            for child in manifest::children(&stores.content, &desc).await? {
                let child_kind = media_types::kind(child.media_type().as_ref());
                let present = stores.content.info(child.digest()).await.is_ok();
                if !present {
                    if kind == Kind::Index && matches!(child_kind, Kind::Manifest | Kind::Index) {
                        found.left_out.push(child);
                        continue;
                    }
                    // A foreign layer lives where its URLs say: one that
                    // is not here (a store from before fetches got them)
                    // is left out of the layout, as containerd's export
                    // leaves out what it skips.
                    if media_types::is_non_distributable(child.media_type().as_ref()) {
                        continue;
                    }
                    // Said before anything is written into the layout.
                    return Err(format!(
                        "content {}: not found, and {} needs it (`images check` lists what \
                         the image lacks; fetch it again)",
                        child.digest(),
                        desc.digest()
                    )
                    .into());
                }
                queue.push(child);
            }
        }
        found.blobs.push(desc);
    }
    Ok(found)
}

/// How the files an export stages in a layout are named.
const STAGED_PREFIX: &str = ".ocidist-tmp-";

/// A new file of a unique name in `dir`, for staging what will be renamed
/// into place: made with `O_EXCL`, so a name planted there (a symlink out of
/// the layout, another export's file) is never written through. Its flock
/// is held until it is renamed into place (or the process ends), so a
/// later export tells a live one from one a killed export left
/// ([`sweep_unheld`](crate::staging::sweep_unheld)).
fn staged_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let staged = tempfile::Builder::new()
        .prefix(STAGED_PREFIX)
        .tempfile_in(dir)?;
    staged.as_file().lock()?;
    Ok(staged)
}

/// Writes `bytes` as `path`: staged, fsynced, renamed, the directory fsynced.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut staged = staged_in(dir)?;
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

/// A blob to copy into a layout: the store's file, the layout's, and what
/// its bytes must be.
struct BlobCopy {
    source: PathBuf,
    dest: PathBuf,
    digest: Digest,
    size: u64,
}

/// Copies each blob file to its place in a layout, durably before the
/// `index.json` that names them: staged, fsynced, renamed, the directories
/// fsynced. A blob already there is kept. Each is hashed as it is copied, as
/// containerd's exporter does: a store file that went bad after its commit fails the
/// export (`InvalidData`), and is never written into a layout under a
/// digest it does not have. [`PARALLEL_COPIES`] blobs are copied at once;
/// after the first error no other is begun.
fn copy_blobs(copies: &[BlobCopy]) -> std::io::Result<()> {
    let mut swept = std::collections::BTreeSet::new();
    let mut dests = std::collections::BTreeSet::new();
    let mut todo = Vec::new();
    for copy in copies {
        let dir = copy.dest.parent().expect("blob files have a parent");
        if swept.insert(dir.to_path_buf()) {
            crate::staging::sweep_unheld(dir, STAGED_PREFIX, crate::staging::GRACE);
        }
        if copy.dest.exists() || !dests.insert(&copy.dest) {
            continue;
        }
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        todo.push(copy);
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let copy_some = || {
        use std::sync::atomic::Ordering::Relaxed;
        let mut bufs = vec![vec![0; 1 << 20]; COPY_BUFFERS];
        while !failed.load(Relaxed) {
            let Some(copy) = todo.get(next.fetch_add(1, Relaxed)) else {
                break;
            };
            if let Err(e) = copy_blob(copy, &mut bufs) {
                failed.store(true, Relaxed);
                return Err(e);
            }
        }
        Ok(())
    };
    let copied: Vec<std::io::Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL_COPIES.min(todo.len()))
            .map(|_| scope.spawn(copy_some))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    copied.into_iter().collect::<std::io::Result<()>>()?;
    let dirs: std::collections::BTreeSet<_> =
        todo.iter().filter_map(|copy| copy.dest.parent()).collect();
    for dir in dirs {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(at(dir))?;
    }
    Ok(())
}

/// Blobs an export copies at once: while one is fsynced (a fifth of a
/// bulk:8x64m export's time, on this machine), the next is read and hashed.
const PARALLEL_COPIES: usize = 2;

/// An error that names the file it is about.
fn at(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error {
    let path = path.display().to_string();
    move |e| std::io::Error::new(e.kind(), format!("{path}: {e}"))
}

/// Copies one blob into its staged file, checks it, and renames it into
/// place (its directory fsynced later, with the others).
fn copy_blob(copy: &BlobCopy, bufs: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    let dir = copy.dest.parent().expect("blob files have a parent");
    let mut staged = staged_in(dir).map_err(at(dir))?;
    let from = std::fs::File::open(&copy.source).map_err(at(&copy.source))?;
    // Either end may fail (a full destination, most often): both named.
    let copied = copy_hashed(&from, staged.as_file_mut(), &copy.digest, bufs);
    let (size, digest) = copied.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("copy {} to {}: {e}", copy.source.display(), dir.display()),
        )
    })?;
    if size != copy.size || digest != copy.digest {
        let expected = &copy.digest;
        let found = if size != copy.size {
            format!("{size} bytes, not {}", copy.size)
        } else {
            format!("its bytes hash to {digest}")
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the store's copy of {expected} is corrupt ({found}): remove it \
                 (dist delete {expected}) and fetch the image again"
            ),
        ));
    }
    // Read-only, as blobs in the store are.
    staged
        .as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .and_then(|()| staged.as_file().sync_all())
        .and_then(|()| staged.persist(&copy.dest).map(drop).map_err(|e| e.error))
        .map_err(at(&copy.dest))
}

/// Buffers a blob's copy goes through: one being read and written while
/// the one before is hashed, and one spare so that neither side waits on
/// the other's every chunk.
const COPY_BUFFERS: usize = 3;

/// Copies `from` into `to` through `bufs`, hashing with `like`'s algorithm:
/// the bytes copied and their digest. Each chunk is hashed on a second
/// thread after it is written, from the buffer it was written from (so what
/// is hashed is what went out), while this thread reads and writes the
/// next: SHA-256 is the larger cost, and it no longer waits on the copy.
fn copy_hashed(
    mut from: &std::fs::File,
    mut to: &std::fs::File,
    like: &Digest,
    bufs: &mut Vec<Vec<u8>>,
) -> std::io::Result<(u64, Digest)> {
    use std::io::{Read, Write};
    use std::sync::mpsc;
    let mut digester = ocidist::content::Digester::new(like.algorithm())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if bufs.is_empty() {
        bufs.push(vec![0; 1 << 20]);
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
                let n = loop {
                    match from.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        read => break read,
                    }
                };
                let n = match n {
                    Ok(0) => {
                        bufs.push(buf);
                        return Ok(size);
                    }
                    Ok(n) => n,
                    Err(e) => {
                        bufs.push(buf);
                        return Err(e);
                    }
                };
                if let Err(e) = to.write_all(&buf[..n]) {
                    bufs.push(buf);
                    return Err(e);
                }
                size += n as u64;
                if hash_tx.send((buf, n)).is_err() {
                    break;
                }
            }
            // Only if the hasher panicked: it takes and hands back every
            // buffer while it runs.
            Err(std::io::Error::other("the hashing thread stopped"))
        })();
        drop(hash_tx);
        (copied, hasher.join())
    });
    bufs.extend(free_rx.try_iter());
    let digester = digester.map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
    Ok((copied?, digester.digest()))
}

/// Copies an image out of the store into a layout. `lease` keeps what it
/// copies through a prune in another process; `None` on a read-only store,
/// which no prune here can change (nor can a lease be written in it).
pub(crate) async fn export(stores: &Stores, lease: Option<Lease>, args: ExportArgs) -> CmdResult {
    let what = format!("export {} {}", args.reference, args.dir.display());
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(what.clone(), e);
    let target = local_target(stores, &args.reference).await.map_err(fail)?;
    if let Some(lease) = &lease {
        lease
            .add_content(target.digest())
            .await
            .map_err(|e| fail(e.into()))?;
    }
    // (ref name, whole name): `--name` as given; an image's tag and name; a
    // digest, nothing (its entry unnamed, as OCI allows).
    let (ref_name, image_name) = match &args.name {
        Some(name) => (Some(name.clone()), None),
        None if crate::content::parse_digest(&args.reference).is_ok() => (None, None),
        None => {
            let image = find_image(stores, &args.reference).await.map_err(fail)?;
            let tag = match image.name.parse::<ocidist::remotes::Reference>() {
                Ok(r) => r.tag().map(str::to_string),
                Err(_) => None,
            };
            (
                Some(tag.unwrap_or_else(|| image.name.clone())),
                Some(image.name),
            )
        }
    };
    let Reachable { blobs, left_out } = reachable(stores, &target).await.map_err(fail)?;
    if !left_out.is_empty() {
        // As `ctr export` of one platform: the index stays whole, so the
        // layout's digest is the image's; tools reading every platform
        // (`skopeo copy --all`) will miss these.
        let platforms: Vec<String> = left_out
            .iter()
            .map(|d| match manifest::descriptor_platform(d) {
                Some(platform) => platform.to_string(),
                None => d.digest().to_string(),
            })
            .collect();
        eprintln!(
            "dist: export: the store lacks {} of the index's manifests ({}): the layout \
             holds the other platforms only (fetch --all-platforms first for all)",
            left_out.len(),
            platforms.join(", ")
        );
    }
    let copies: Vec<_> = blobs
        .iter()
        .map(|desc| BlobCopy {
            source: stores.content.blob_path(desc.digest()),
            dest: blob_file(&args.dir, desc.digest()),
            digest: desc.digest().clone(),
            size: desc.size(),
        })
        .collect();
    // Off the runtime, so a Ctrl-C is seen while gigabytes copy.
    tokio::task::spawn_blocking(move || copy_blobs(&copies))
        .await
        .map_err(|e| fail(e.into()))?
        .map_err(|e| fail(e.into()))?;
    // One export at a time reads and rewrites a layout's index.json, so two
    // at once both keep their names: a lock on the layout directory itself
    // (flock; no file added to the layout), held to the end.
    let _layout_lock = {
        let dir = args.dir.clone();
        tokio::task::spawn_blocking(move || {
            let dir_file = std::fs::File::open(&dir)?;
            dir_file.lock()?;
            Ok::<_, std::io::Error>(dir_file)
        })
        .await
        .map_err(|e| fail(e.into()))?
        .map_err(|e| fail(format!("lock {}: {e}", args.dir.display()).into()))?
    };
    let written = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| fail(format!("{path}: {e}").into())
    };
    crate::staging::sweep_unheld(&args.dir, STAGED_PREFIX, crate::staging::GRACE);
    let layout_file = args.dir.join("oci-layout");
    write_atomically(
        &layout_file,
        format!(r#"{{"imageLayoutVersion":"{LAYOUT_VERSION}"}}"#).as_bytes(),
    )
    .map_err(written(&layout_file))?;
    let index_path = args.dir.join("index.json");
    let mut index: serde_json::Value = match read_layout_file(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| fail(e.into()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            serde_json::json!({"schemaVersion": 2, "manifests": []})
        }
        Err(e) => return Err(fail(e.into())),
    };
    let mut entry = serde_json::to_value(&target).map_err(|e| fail(e.into()))?;
    if !entry["annotations"].is_object() {
        entry["annotations"] = serde_json::json!({});
    }
    if let Some(ref_name) = &ref_name {
        entry["annotations"][REF_NAME] = ref_name.as_str().into();
    }
    if let Some(image_name) = &image_name {
        entry["annotations"][IMAGE_NAME] = image_name.as_str().into();
    }
    let manifests = index["manifests"]
        .as_array_mut()
        .ok_or_else(|| fail("index.json has no manifests array".into()))?;
    // One entry per name: a re-export replaces it, said when it named
    // another image (`--name` keeps both). An unnamed entry replaces only
    // itself.
    let digest = target.digest().to_string();
    let name = entry_name(&entry).map(str::to_string);
    let replaced = |m: &serde_json::Value| match &name {
        Some(name) => entry_name(m) == Some(name.as_str()),
        None => entry_name(m).is_none() && m["digest"].as_str() == Some(digest.as_str()),
    };
    for m in manifests.iter().filter(|m| replaced(m)) {
        if m["digest"].as_str() != Some(digest.as_str()) {
            eprintln!(
                "dist: export: {} named {} in the layout; it now names {digest}",
                name.as_deref().unwrap_or_default(),
                m["digest"].as_str().unwrap_or("?")
            );
        }
    }
    manifests.retain(|m| !replaced(m));
    manifests.push(entry);
    if index.get("mediaType").is_none() {
        index["mediaType"] = "application/vnd.oci.image.index.v1+json".into();
    }
    let bytes = serde_json::to_vec_pretty(&index).map_err(|e| fail(e.into()))?;
    write_atomically(&index_path, &bytes).map_err(written(&index_path))?;
    report!(
        "{} {} ({} blobs)",
        name.as_deref().unwrap_or("(unnamed)"),
        target.digest(),
        blobs.len()
    );
    Ok(())
}

pub(crate) async fn import(stores: &Stores, lease: Lease, args: ImportArgs) -> CmdResult {
    let what = format!("import {}", args.dir.display());
    let content = LeasedStore::new(stores.content.clone(), lease);
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(what.clone(), e);
    let index = read_layout_index(&args.dir).map_err(fail)?;
    // Every blob, verified by the store against the digest its name claims.
    let blobs_dir = args.dir.join("blobs");
    // Anything else there (an export's `.tmp` left by a crash, a stray
    // file) is not a blob: said and skipped. A blob the images need and the
    // layout lacks fails the labelling walk below.
    let skip =
        |path: &Path, why: &str| eprintln!("dist: import: skipping {}: {why}", path.display());
    for algorithm in std::fs::read_dir(&blobs_dir).map_err(|e| fail(e.into()))? {
        let algorithm = algorithm.map_err(|e| fail(e.into()))?;
        if !algorithm.file_type().map_err(|e| fail(e.into()))?.is_dir() {
            skip(&algorithm.path(), "not a directory of blobs");
            continue;
        }
        for blob in std::fs::read_dir(algorithm.path()).map_err(|e| fail(e.into()))? {
            let blob = blob.map_err(|e| fail(e.into()))?;
            let name = format!(
                "{}:{}",
                algorithm.file_name().to_string_lossy(),
                blob.file_name().to_string_lossy()
            );
            let digest = match crate::content::parse_digest(&name) {
                Ok(digest) if blob.file_type().map_err(|e| fail(e.into()))?.is_file() => digest,
                Ok(_) => {
                    skip(&blob.path(), "not a file");
                    continue;
                }
                Err(why) => {
                    skip(&blob.path(), &why);
                    continue;
                }
            };
            let mut file = tokio::fs::File::open(blob.path())
                .await
                .map_err(|e| fail(e.into()))?;
            let size = file.metadata().await.map_err(|e| fail(e.into()))?.len();
            let opts = WriterOpts::new(format!("import-{digest}"))
                .size(size)
                .digest(digest.clone());
            let mut writer = match open_writer(&content, opts).await {
                Ok(writer) => writer,
                Err(e) if e.is_already_exists() => continue,
                Err(e) => return Err(fail(e.into())),
            };
            // Seekable: what an earlier import of a wrong file left is read
            // again from the file as it is now.
            copy(
                writer.as_mut(),
                CopySource::Seekable(&mut file),
                Some(size),
                Some(&digest),
                Labels::new(),
            )
            .await
            .map_err(|e| fail(e.into()))?;
        }
    }
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    // Each document is walked once, however often indexes list it: a
    // layout of a few KB can list one index a thousand times, each listing
    // one manifest a thousand times.
    let walked = std::sync::Mutex::new(std::collections::HashSet::new());
    for entry in manifests {
        let desc: Descriptor = serde_json::from_value(entry.clone()).map_err(|e| fail(e.into()))?;
        // Parents labelled with their children, as a fetch leaves them, so
        // garbage collection keeps what the image needs.
        // Only the platforms the layout holds are walked: an index's other
        // manifests may be missing (a one-platform fetch, exported), as the
        // layout spec allows. A manifest's own blobs may not.
        let labeller = PresentManifests {
            inner: set_children_labels(content.clone(), children_handler(content.clone())),
            store: content.clone(),
            top: desc.digest().clone(),
            walked: &walked,
        };
        walk(&labeller, std::slice::from_ref(&desc))
            .await
            .map_err(|e| fail(e.into()))?;
        let name = match &args.prefix {
            Some(prefix) => entry["annotations"][REF_NAME]
                .as_str()
                .map(|tag| format!("{prefix}{tag}")),
            None => entry_name(&entry).map(str::to_string),
        };
        let Some(name) = name else {
            report!("(unnamed) {}", desc.digest());
            continue;
        };
        // A name is printed and stored: no escape sequences, no line breaks.
        if name.chars().any(char::is_control) || name.len() > MAX_IMAGE_NAME {
            eprintln!(
                "dist: import: {} left unnamed: its name is not a name ({} bytes, or with control characters)",
                desc.digest(),
                name.len()
            );
            continue;
        }
        let image = Image::new(name.clone(), desc.clone());
        match stores.images.create(image.clone()).await {
            Ok(_) => {}
            Err(e) if e.kind() == ocidist::content::ErrorKind::AlreadyExists => {
                stores
                    .images
                    .update(image, &["target"])
                    .await
                    .map_err(|e| fail(e.into()))?;
            }
            Err(e) => return Err(fail(e.into())),
        }
        report!("{name} {}", desc.digest());
    }
    Ok(())
}

/// Drops the manifests of an index that the store lacks.
struct PresentManifests<'w, H, S> {
    inner: H,
    store: S,
    /// The image's own index, which must keep some manifest.
    top: Digest,
    /// The documents walked already, by this walk or an earlier one, and
    /// whether as an image's own index.
    walked: &'w std::sync::Mutex<std::collections::HashSet<(Digest, bool)>>,
}

/// The longest image name import takes (a reference is far shorter).
const MAX_IMAGE_NAME: usize = 4096;

#[async_trait::async_trait]
impl<H: Handler, S: Manager> Handler for PresentManifests<'_, H, S> {
    async fn handle(&self, desc: &Descriptor) -> ocidist::images::Result<Flow> {
        // The image's own index is judged once as such (it must keep a
        // manifest), even when it was walked as another's child before.
        let first_time = self
            .walked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
                    return Err(ocidist::images::Error::other(
                        ocidist::content::ErrorKind::NotFound,
                        format!(
                            "blob {} ({media_type}) of image {} is not in the layout",
                            desc.digest(),
                            self.top
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
            return Err(ocidist::images::Error::other(
                ocidist::content::ErrorKind::NotFound,
                format!(
                    "index {}: none of its {listed} manifests is in the layout",
                    desc.digest()
                ),
            ));
        }
        Ok(Flow::Children(present))
    }
}

/// Reads blobs straight from a layout's `blobs/<alg>/<hex>`. Layers are
/// checked by the unpack against the config's diff IDs.
struct LayoutProvider {
    dir: PathBuf,
}

#[async_trait::async_trait]
impl Provider for LayoutProvider {
    /// A layout's blob, checked first as umoci checks it: a regular file
    /// (not a symlink, a FIFO or `/dev/zero`) of the descriptor's size, and,
    /// up to the manifest size limit (manifests, configs), of its digest. A
    /// layer's bytes are checked by its diff ID as it unpacks, and the
    /// config that lists that diff ID by its digest.
    async fn reader_at(&self, desc: &Descriptor) -> ocidist::content::Result<Box<dyn ReaderAt>> {
        let path = blob_file(&self.dir, desc.digest());
        let (checked, desc_copy) = (path.clone(), desc.clone());
        tokio::task::spawn_blocking(move || check_layout_blob(&checked, &desc_copy))
            .await
            .map_err(|e| ocidist::content::Error::other(ErrorKind::Internal, e))??;
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

/// The layout version this program reads and writes.
const LAYOUT_VERSION: &str = "1.0.0";

/// The `index.json` of the OCI layout `dir`, once its `oci-layout` file
/// says it is one of [`LAYOUT_VERSION`]: as umoci and containerd's importer
/// do, a directory that does not say so is not read as one.
fn read_layout_index(
    dir: &Path,
) -> Result<serde_json::Value, Box<dyn std::error::Error + Send + Sync>> {
    let marker = dir.join("oci-layout");
    let version = match read_layout_file(&marker) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["imageLayoutVersion"].as_str().map(str::to_string)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let why = match dir.try_exists() {
                Ok(true) => "it has no oci-layout file",
                // A mistyped path is not a directory that lacks one.
                _ => "no such directory",
            };
            return Err(format!("{} is not an OCI image layout: {why}", dir.display()).into());
        }
        Err(e) => return Err(format!("{}: {e}", marker.display()).into()),
    };
    match version.as_deref() {
        Some(LAYOUT_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "{}: image layout version {other:?}, where this program reads {LAYOUT_VERSION:?}",
                marker.display()
            )
            .into());
        }
        None => {
            return Err(format!("{}: no imageLayoutVersion in it", marker.display()).into());
        }
    }
    let index = dir.join("index.json");
    let bytes = read_layout_file(&index).map_err(|e| format!("{}: {e}", index.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", index.display()).into())
}

/// The largest `index.json` a layout may have: far more than a manifest
/// (a layout keeps many tags), far less than memory.
const MAX_INDEX_SIZE: u64 = 64 << 20;

/// A layout's `index.json`: a regular file of at most [`MAX_INDEX_SIZE`],
/// not whatever a symlink points at (`/dev/zero` would be read until memory
/// runs out).
fn read_layout_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
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

/// Checks the layout blob at `path` against `desc` (see
/// [`LayoutProvider::reader_at`]).
fn check_layout_blob(path: &Path, desc: &Descriptor) -> ocidist::content::Result<()> {
    let refused = |why: String| {
        ocidist::content::Error::other(
            ErrorKind::FailedPrecondition,
            format!("layout blob {}: {why}", desc.digest()),
        )
    };
    let file = match open_regular(path, false) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ocidist::content::Error::BlobNotFound {
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
        use std::io::Read;
        let mut digester = ocidist::content::Digester::new(desc.digest().algorithm())
            .map_err(|e| refused(e.to_string()))?;
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

/// `DIR[:NAME]`, split at the first `:` as skopeo's `oci:` transport does
/// (a name may hold colons and slashes), unless the whole text is a layout.
fn split_layout(text: &str) -> (PathBuf, Option<String>) {
    // A layout directory whose own name holds a colon (a timestamp) is
    // taken whole.
    if Path::new(text).join("index.json").is_file() {
        return (PathBuf::from(text), None);
    }
    match text.split_once(':') {
        Some((dir, name)) if !dir.is_empty() && !name.is_empty() => {
            (PathBuf::from(dir), Some(name.to_string()))
        }
        _ => (PathBuf::from(text), None),
    }
}

pub(crate) async fn unpack_cmd(
    snapshotter: &Arc<dyn Snapshotter>,
    lease: Lease,
    remote: &crate::image::Remote,
    args: UnpackArgs,
) -> CmdResult {
    let snapshotter = &LeasedSnapshotter::new(snapshotter.clone(), lease);
    let platform = &remote.platform;
    let what = format!("unpack {}", args.layout);
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| Failure::new(what.clone(), e);
    let (dir, name) = split_layout(&args.layout);
    let index = read_layout_index(&dir).map_err(fail)?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let entry = match &name {
        Some(name) => {
            let named: Vec<&serde_json::Value> = manifests
                .iter()
                .filter(|m| {
                    m["annotations"][REF_NAME].as_str() == Some(name.as_str())
                        || entry_name(m) == Some(name.as_str())
                })
                .collect();
            // Two images tagged alike (`latest`): the whole name says which.
            let targets: std::collections::BTreeSet<&str> =
                named.iter().filter_map(|m| m["digest"].as_str()).collect();
            if targets.len() > 1 {
                let names: Vec<&str> = named.iter().filter_map(|m| entry_name(m)).collect();
                return Err(fail(
                    format!(
                        "{name:?} names {} images here: say which ({})",
                        named.len(),
                        names.join(", ")
                    )
                    .into(),
                ));
            }
            named.first().copied()
        }
        None if manifests.len() == 1 => manifests.first(),
        None if manifests.is_empty() => {
            return Err(fail(
                format!("no images in {}", dir.join("index.json").display()).into(),
            ));
        }
        None => {
            return Err(fail(
                "the layout holds several images: name one, DIR:NAME".into(),
            ));
        }
    }
    .ok_or_else(|| {
        let name = name.as_deref().unwrap_or_default();
        fail(format!("no image named {name:?} in its index.json").into())
    })?;
    let desc: Descriptor = serde_json::from_value(entry.clone()).map_err(|e| fail(e.into()))?;
    let progress = crate::progress::Progress::start(None);
    let options = UnpackOptions {
        events: Some(progress.unpack_events()),
        ..remote.unpack_options()
    };
    let chain_id = unpack(
        &desc,
        &LayoutProvider { dir },
        snapshotter,
        &platforms::only(platform),
        options,
    )
    .await;
    progress.finish(chain_id.is_ok()).await;
    // The answer, even with --quiet, as `apply` prints its diff ID.
    match chain_id.map_err(|e| fail(e.into()))? {
        Some(chain_id) => crate::output::outln!("{chain_id}"),
        // No snapshot to name, and so nothing on stdout.
        None => eprintln!("dist: {what}: the image has no layers: its root filesystem is empty"),
    }
    Ok(())
}
