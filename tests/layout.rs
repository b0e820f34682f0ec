//! `ocidist::layout` through the library: a layout exported by `export` is
//! read by skopeo and umoci and imported back by `import`; one umoci wrote
//! is imported; a store copy gone bad, a missing blob and malformed layouts
//! give typed errors and write nothing.

mod common;

use common::run_tool;
use ocidist::content::local::LocalStore;
use ocidist::content::{
    Descriptor, Digest, ErrorKind, Labels, Manager, Provider, ProviderExt, WriterOpts, sha256_of,
    write_blob,
};
use ocidist::images::{DbImageStore, ImageStore};
use ocidist::layout::{
    self, Error, ExportOptions, IMAGE_NAME_ANNOTATION, ImportOptions, OciLayout,
    REF_NAME_ANNOTATION,
};
use tokio::io::AsyncReadExt;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

async fn put(store: &LocalStore, media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest = sha256_of(bytes);
    write_blob(
        store,
        WriterOpts::new(format!("test-{digest}")),
        bytes,
        Labels::new(),
    )
    .await
    .unwrap();
    Descriptor::new(media_type.into(), bytes.len() as u64, digest)
}

/// A gzipped layer of one file, `hello.txt` holding `text`.
fn layer(text: &str) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", text.as_bytes())
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256_of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// An image of one layer holding `text`, for `arch`: its manifest.
async fn image(store: &LocalStore, text: &str, arch: &str) -> Descriptor {
    let (layer_bytes, diff_id) = layer(text);
    let layer = put(store, LAYER, &layer_bytes).await;
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    });
    let config = put(store, CONFIG, &serde_json::to_vec(&config).unwrap()).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": config, "layers": [layer],
    });
    put(store, MANIFEST, &serde_json::to_vec(&manifest).unwrap()).await
}

async fn read_all(provider: &impl Provider, desc: &Descriptor) -> Vec<u8> {
    let mut bytes = Vec::new();
    provider
        .reader(desc)
        .await
        .unwrap()
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_layout_is_read_by_skopeo_and_umoci_and_imported_back() {
    let work = tempfile::tempdir().unwrap();
    let store = LocalStore::open(work.path().join("store")).unwrap();
    let manifest = image(&store, "hello from ocidist\n", "amd64").await;
    let dir = work.path().join("layout");

    let exported = layout::export(
        &store,
        &manifest,
        &dir,
        &ExportOptions::for_image("example.com/app:v1"),
    )
    .await
    .unwrap();
    assert_eq!(exported.blobs, 3);
    assert!(exported.left_out.is_empty() && exported.replaced.is_empty());

    // skopeo finds it by its tag, and reads the manifest we wrote.
    let raw = run_tool(
        "skopeo",
        &["inspect", "--raw", &format!("oci:{}:v1", dir.display())],
    );
    assert_eq!(raw, read_all(&store, &manifest).await);
    // umoci unpacks it.
    let bundle = work.path().join("bundle");
    run_tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:v1", dir.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(),
        "hello from ocidist\n"
    );

    // Imported into another store: named by the whole name, each blob
    // byte-identical, the manifest labelled with its children.
    let other = LocalStore::open(work.path().join("other")).unwrap();
    let images = DbImageStore::open(work.path().join("images.redb")).unwrap();
    let opened = OciLayout::open(&dir).unwrap();
    let imported = layout::import(&other, &images, &opened, &ImportOptions::new())
        .await
        .unwrap();
    assert!(imported.skipped.is_empty(), "{:?}", imported.skipped);
    assert_eq!(imported.images.len(), 1);
    assert_eq!(
        imported.images[0].name.as_deref(),
        Some("example.com/app:v1")
    );
    let stored = images.get("example.com/app:v1").await.unwrap();
    assert_eq!(stored.target.digest(), manifest.digest());
    assert_eq!(
        read_all(&other, &manifest).await,
        read_all(&store, &manifest).await
    );
    let labels = other.info(manifest.digest()).await.unwrap().labels;
    assert!(
        labels.contains_key("containerd.io/gc.ref.content.config")
            && labels.contains_key("containerd.io/gc.ref.content.l.0"),
        "{labels:?}"
    );

    // Re-exported under its name as another image: the entry is replaced,
    // and what it named said.
    let newer = image(&store, "newer\n", "amd64").await;
    let again = layout::export(
        &store,
        &newer,
        &dir,
        &ExportOptions::for_image("example.com/app:v1"),
    )
    .await
    .unwrap();
    assert_eq!(again.replaced, vec![manifest.digest().to_string()]);
    let entries = OciLayout::open(&dir).unwrap().entries().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].digest(), newer.digest());
    let annotations = entries[0].annotations().clone().unwrap();
    assert_eq!(annotations[REF_NAME_ANNOTATION], "v1");
    assert_eq!(annotations[IMAGE_NAME_ANNOTATION], "example.com/app:v1");

    // The layout is a provider: the image reads from it in place.
    assert_eq!(
        read_all(&OciLayout::open(&dir).unwrap(), &newer).await,
        read_all(&store, &newer).await
    );
}

#[tokio::test]
async fn a_layout_umoci_wrote_is_imported_with_a_prefix() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");
    let dir_text = dir.to_str().unwrap();
    run_tool("umoci", &["init", "--layout", dir_text]);
    run_tool("umoci", &["new", "--image", &format!("{dir_text}:t1")]);

    let store = LocalStore::open(work.path().join("store")).unwrap();
    let images = DbImageStore::open(work.path().join("images.redb")).unwrap();
    let opened = OciLayout::open(&dir).unwrap();
    let imported = layout::import(
        &store,
        &images,
        &opened,
        &ImportOptions::new().prefix("umoci/"),
    )
    .await
    .unwrap();
    let target = opened.find(Some("t1")).unwrap();
    assert_eq!(imported.images.len(), 1);
    assert_eq!(imported.images[0].name.as_deref(), Some("umoci/t1"));
    assert_eq!(
        images.get("umoci/t1").await.unwrap().target.digest(),
        target.digest()
    );
    // Its manifest and config are in the store, as the layout has them.
    assert_eq!(
        read_all(&store, &target).await,
        std::fs::read(opened.blob_path(target.digest())).unwrap()
    );
}

/// Overwrites a committed blob file in place (the store keeps them
/// read-only), as a disk error or a stray writer would.
fn damage(store: &LocalStore, digest: &Digest, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let path = store.blob_path(digest);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, bytes).unwrap();
}

#[tokio::test]
async fn a_store_copy_gone_bad_or_missing_fails_the_export_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let store = LocalStore::open(work.path().join("store")).unwrap();
    let manifest = image(&store, "some text\n", "amd64").await;
    let body: serde_json::Value =
        serde_json::from_slice(&read_all(&store, &manifest).await).unwrap();
    let layer: Descriptor = serde_json::from_value(body["layers"][0].clone()).unwrap();

    // Same size, other bytes: only the hash tells.
    let dir = work.path().join("layout");
    damage(&store, layer.digest(), &vec![0; layer.size() as usize]);
    let e = layout::export(&store, &manifest, &dir, &ExportOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Corrupt { digest, .. } if digest == layer.digest()),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(e.to_string().contains("hash to"), "{e}");
    assert!(!dir.join("index.json").exists(), "no entry for a bad image");
    assert!(
        !OciLayout::open(&dir).is_ok_and(|l| l.blob_path(layer.digest()).exists()),
        "the bad bytes are not in the layout"
    );

    // Cut short: said by its size.
    damage(&store, layer.digest(), b"short");
    let e = layout::export(&store, &manifest, &dir, &ExportOptions::new())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("5 bytes, not {}", layer.size())),
        "{e}"
    );

    // Gone: said before anything is written.
    std::fs::remove_file(store.blob_path(layer.digest())).unwrap();
    let fresh = work.path().join("fresh");
    let e = layout::export(&store, &manifest, &fresh, &ExportOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Missing { digest, needed_by } if digest == layer.digest() && needed_by == manifest.digest()),
        "{e:?}"
    );
    assert!(e.is_not_found());
    assert!(!fresh.exists(), "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_missing_a_platform_is_exported_whole_with_the_rest() {
    let work = tempfile::tempdir().unwrap();
    let store = LocalStore::open(work.path().join("store")).unwrap();
    let amd64 = image(&store, "amd64\n", "amd64").await;
    let arm64 = image(&store, "arm64\n", "arm64").await;
    let platform = |arch: &str| serde_json::json!({"architecture": arch, "os": "linux"});
    let mut entries = Vec::new();
    for (desc, arch) in [(&amd64, "amd64"), (&arm64, "arm64")] {
        let mut entry = serde_json::to_value(desc).unwrap();
        entry["platform"] = platform(arch);
        entries.push(entry);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries});
    let index = put(&store, INDEX, &serde_json::to_vec(&index).unwrap()).await;
    store.delete(arm64.digest()).await.unwrap();

    let dir = work.path().join("layout");
    let exported = layout::export(
        &store,
        &index,
        &dir,
        &ExportOptions::new().ref_name("multi"),
    )
    .await
    .unwrap();
    assert_eq!(exported.left_out.len(), 1);
    assert_eq!(exported.left_out[0].digest(), arm64.digest());
    // The index, and amd64's manifest, config and layer.
    assert_eq!(exported.blobs, 4);
    let opened = OciLayout::open(&dir).unwrap();
    assert_eq!(opened.find(Some("multi")).unwrap().digest(), index.digest());
    assert!(opened.blob_path(amd64.digest()).is_file());
    assert!(!opened.blob_path(arm64.digest()).exists());

    // Imported, the index keeps the platform it has.
    let other = LocalStore::open(work.path().join("other")).unwrap();
    let images = DbImageStore::open(work.path().join("images.redb")).unwrap();
    let imported = layout::import(&other, &images, &opened, &ImportOptions::new())
        .await
        .unwrap();
    assert_eq!(imported.images[0].name.as_deref(), Some("multi"));
    assert!(other.info(amd64.digest()).await.is_ok());
}

#[tokio::test]
async fn malformed_layouts_and_unknown_names_are_typed_errors() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");

    let e = OciLayout::open(&dir).unwrap_err();
    assert!(
        matches!(e, Error::NoSuchDirectory { .. }) && e.is_not_found(),
        "{e:?}"
    );
    std::fs::create_dir(&dir).unwrap();
    let e = OciLayout::open(&dir).unwrap_err();
    assert!(matches!(e, Error::NotALayout { .. }), "{e:?}");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"2.0.0"}"#).unwrap();
    let e = OciLayout::open(&dir).unwrap_err();
    assert!(e.to_string().contains("\"2.0.0\""), "{e}");
    assert_eq!(e.kind(), ErrorKind::Unimplemented);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let opened = OciLayout::open(&dir).unwrap();

    // index.json: missing, then not a regular file.
    assert!(matches!(opened.entries().unwrap_err(), Error::Io { .. }));
    std::os::unix::fs::symlink("/dev/zero", dir.join("index.json")).unwrap();
    let e = opened.entries().unwrap_err();
    let said = ocidist::content::Report::new(&e).to_string();
    assert!(said.contains("not a regular file"), "{said}");
    std::fs::remove_file(dir.join("index.json")).unwrap();

    let index = |entries: serde_json::Value| {
        let index = serde_json::json!({"schemaVersion": 2, "manifests": entries});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    };
    index(serde_json::json!([]));
    assert!(matches!(
        opened.find(None).unwrap_err(),
        Error::NoImages { .. }
    ));
    // `null`, as Go writes an empty list: none.
    index(serde_json::Value::Null);
    assert!(opened.entries().unwrap().is_empty());

    let entry = |digest: &Digest, tag: &str, name: &str| {
        serde_json::json!({
            "mediaType": MANIFEST, "digest": digest.to_string(), "size": 2,
            "annotations": {REF_NAME_ANNOTATION: tag, IMAGE_NAME_ANNOTATION: name},
        })
    };
    let (one, two) = (sha256_of(b"{}"), sha256_of(b"[]"));
    index(serde_json::json!([
        entry(&one, "latest", "a.example/one:latest"),
        entry(&two, "latest", "b.example/two:latest"),
    ]));
    let e = opened.find(None).unwrap_err();
    assert!(matches!(e, Error::SeveralImages { count: 2 }), "{e:?}");
    let e = opened.find(Some("latest")).unwrap_err();
    assert!(
        matches!(&e, Error::Ambiguous { names, .. } if names.len() == 2),
        "{e:?}"
    );
    assert_eq!(
        opened.find(Some("b.example/two:latest")).unwrap().digest(),
        &two
    );
    // An entry this program cannot read hides none of the others from
    // `find`; `entries` says it.
    index(serde_json::json!([
        entry(&one, "latest", "a.example/one:latest"),
        {"digest": 5},
    ]));
    assert_eq!(opened.find(Some("latest")).unwrap().digest(), &one);
    assert!(matches!(opened.entries().unwrap_err(), Error::Index { .. }));
    let e = opened.find(Some("nope")).unwrap_err();
    assert!(
        matches!(e, Error::NoSuchImage { .. }) && e.is_not_found(),
        "{e:?}"
    );

    // Blobs read through the layout are checked before they are read.
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let desc = Descriptor::new(MANIFEST.into(), 2, one.clone());
    assert!(opened.reader_at(&desc).await.err().unwrap().is_not_found());
    std::os::unix::fs::symlink("/dev/zero", blobs.join(one.digest())).unwrap();
    let e = opened.reader_at(&desc).await.err().unwrap();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    std::fs::remove_file(blobs.join(one.digest())).unwrap();
    std::fs::write(blobs.join(one.digest()), b"[]").unwrap();
    let e = opened.reader_at(&desc).await.err().unwrap();
    assert!(e.to_string().contains("hash to"), "{e}");
    std::fs::write(blobs.join(one.digest()), b"{}").unwrap();
    assert_eq!(read_all(&opened, &desc).await, b"{}");
}

/// A store whose blob reads each take `delay`: a remote store, or one on a
/// slow disk. Exports from any store that is a `Provider` and `Manager`.
#[derive(Clone)]
struct SlowStore {
    inner: LocalStore,
    delay: std::time::Duration,
}

struct SlowReader {
    inner: Box<dyn ocidist::content::ReaderAt>,
    delay: std::time::Duration,
}

#[ocidist::content::async_trait]
impl ocidist::content::ReaderAt for SlowReader {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> ocidist::content::Result<usize> {
        tokio::time::sleep(self.delay).await;
        self.inner.read_at(offset, buf).await
    }

    fn into_async_read(self: Box<Self>) -> std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> {
        Box::pin(ocidist::content::ReaderAtStream::new(self))
    }
}

#[ocidist::content::async_trait]
impl Provider for SlowStore {
    async fn reader_at(
        &self,
        desc: &Descriptor,
    ) -> ocidist::content::Result<Box<dyn ocidist::content::ReaderAt>> {
        Ok(Box::new(SlowReader {
            inner: self.inner.reader_at(desc).await?,
            delay: self.delay,
        }))
    }
}

#[ocidist::content::async_trait]
impl Manager for SlowStore {
    async fn info(&self, digest: &Digest) -> ocidist::content::Result<ocidist::content::Info> {
        self.inner.info(digest).await
    }

    async fn update(
        &self,
        info: ocidist::content::Info,
        fieldpaths: &[&str],
    ) -> ocidist::content::Result<ocidist::content::Info> {
        self.inner.update(info, fieldpaths).await
    }

    async fn walk(
        &self,
        filters: &[&str],
        f: &mut (dyn FnMut(ocidist::content::Info) -> ocidist::content::Result<()> + Send),
    ) -> ocidist::content::Result<()> {
        self.inner.walk(filters, f).await
    }

    async fn delete(&self, digest: &Digest) -> ocidist::content::Result<()> {
        self.inner.delete(digest).await
    }
}

/// An image whose one layer is `size` bytes of filler (an export does not
/// decode layers): its manifest.
async fn image_of_size(store: &LocalStore, size: usize) -> Descriptor {
    let layer = put(store, LAYER, &vec![7; size]).await;
    let config = put(store, CONFIG, br#"{"architecture":"amd64","os":"linux"}"#).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer],
    });
    put(store, MANIFEST, &serde_json::to_vec(&manifest).unwrap()).await
}

#[test]
fn exports_finish_with_a_blocking_pool_of_one_thread() {
    let work = tempfile::tempdir().unwrap();
    for multi_thread in [false, true] {
        let mut builder = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let runtime = builder
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let root = work.path().join(format!("multi-{multi_thread}"));
        let exported = runtime.block_on(async {
            let store = LocalStore::open(root.join("store")).unwrap();
            let one = image_of_size(&store, 3 << 20).await;
            let two = image(&store, "two\n", "arm64").await;
            // The store's reads need the pool's one thread: a copy holding
            // it would wait on itself for ever.
            let (dir_one, dir_two, options) =
                (root.join("one"), root.join("two"), ExportOptions::new());
            let both = futures::future::join(
                layout::export(&store, &one, &dir_one, &options),
                layout::export(&store, &two, &dir_two, &options),
            );
            tokio::time::timeout(std::time::Duration::from_secs(60), both).await
        });
        // Before the verdict: a runtime dropped with a copy stuck in its
        // pool would wait for it for ever.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        let (one, two) = exported.expect("the exports finish");
        assert_eq!(one.unwrap().blobs, 3);
        assert_eq!(two.unwrap().blobs, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_export_stops_its_copy_and_leaves_no_staged_file() {
    let work = tempfile::tempdir().unwrap();
    let local = LocalStore::open(work.path().join("store")).unwrap();
    let manifest = image_of_size(&local, 64 << 20).await;
    let store = SlowStore {
        inner: local,
        delay: std::time::Duration::from_millis(20),
    };
    let dir = work.path().join("layout");
    let blobs = dir.join("blobs/sha256");
    let staged = || {
        std::fs::read_dir(&blobs).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".ocidist-tmp-"))
        })
    };
    let options = ExportOptions::new();
    let mut export = Box::pin(layout::export(&store, &manifest, &dir, &options));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Dropped once the layer's copy is under way (64 reads of 20 ms).
    while !staged() {
        tokio::select! {
            done = &mut export => panic!("the export ended before it was dropped: {done:?}"),
            () = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
        assert!(std::time::Instant::now() < deadline, "no copy began");
    }
    drop(export);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while staged() {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy went on after the export was dropped"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!dir.join("index.json").exists());
    let body: serde_json::Value =
        serde_json::from_slice(&read_all(&store.inner, &manifest).await).unwrap();
    let layer = body["layers"][0]["digest"].as_str().unwrap();
    let layer = layer.strip_prefix("sha256:").unwrap();
    assert!(!blobs.join(layer).exists(), "the layer was not finished");

    // Exported again, from the slow store: the whole image.
    let exported = layout::export(&store, &manifest, &dir, &ExportOptions::new())
        .await
        .unwrap();
    assert_eq!(exported.blobs, 3);
    assert!(blobs.join(layer).is_file());
}

#[tokio::test]
async fn an_import_that_fails_names_nothing_and_says_why_a_blob_is_missing() {
    let work = tempfile::tempdir().unwrap();
    let store = LocalStore::open(work.path().join("store")).unwrap();
    let first = image(&store, "first\n", "amd64").await;
    let second = image(&store, "second\n", "amd64").await;
    let dir = work.path().join("layout");
    for (desc, name) in [(&first, "example.com/a:1"), (&second, "example.com/b:1")] {
        layout::export(&store, desc, &dir, &ExportOptions::for_image(name))
            .await
            .unwrap();
    }
    // The second image's layer replaced by a directory of its name.
    let body: serde_json::Value = serde_json::from_slice(&read_all(&store, &second).await).unwrap();
    let layer: Descriptor = serde_json::from_value(body["layers"][0].clone()).unwrap();
    let opened = OciLayout::open(&dir).unwrap();
    let path = opened.blob_path(layer.digest());
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();

    let other = LocalStore::open(work.path().join("other")).unwrap();
    let images = DbImageStore::open(work.path().join("images.redb")).unwrap();
    let e = layout::import(&other, &images, &opened, &ImportOptions::new())
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    let said = e.to_string();
    assert!(
        said.contains(&layer.digest().to_string()) && said.contains("not a regular file"),
        "{said}"
    );
    assert!(
        images.list(&[]).await.unwrap().is_empty(),
        "the first image is not named either"
    );

    // An export into a layout of another version is refused.
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.1.0"}"#).unwrap();
    let e = layout::export(&store, &first, &dir, &ExportOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Version { .. }), "{e:?}");
}

#[test]
fn staged_files_are_swept_and_directories_of_their_name_left_alone() {
    use ocidist::staging::{sweep_unheld, sweep_unheld_files};
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join(".stage-mine");
    std::fs::create_dir(&planted).unwrap();
    let left = dir.path().join(".stage-left");
    std::fs::write(&left, b"half").unwrap();
    let held = ocidist::staging::staged_file(dir.path(), ".stage-").unwrap();

    sweep_unheld_files(dir.path(), ".stage-", std::time::Duration::ZERO);
    assert!(!left.exists(), "a file nobody holds is swept");
    assert!(held.path().exists(), "a held one is not");
    assert!(planted.is_dir(), "a directory is not the file sweep's");
    sweep_unheld(dir.path(), ".stage-", std::time::Duration::ZERO);
    assert!(!planted.exists(), "the full sweep takes directories too");
    assert!(held.path().exists());
}
