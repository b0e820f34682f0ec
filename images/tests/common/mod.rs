//! Builds real images (OCI and Docker media types, multi-platform indexes) in a
//! real `LocalStore` for the tests.

#![allow(dead_code, unreachable_pub)]

use oci_spec::image::{Descriptor, MediaType, Platform as OciPlatform, PlatformBuilder};
use ocidist_content::local::LocalStore;
use ocidist_content::{Labels, WriterOpts, sha256_of, write_blob};
use ocidist_images::media_types;
use serde_json::json;

/// Which family of media types to build with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Oci,
    Docker,
}

impl Flavor {
    pub fn manifest(self) -> &'static str {
        match self {
            Flavor::Oci => media_types::OCI_MANIFEST,
            Flavor::Docker => media_types::DOCKER_MANIFEST,
        }
    }
    pub fn index(self) -> &'static str {
        match self {
            Flavor::Oci => media_types::OCI_INDEX,
            Flavor::Docker => media_types::DOCKER_MANIFEST_LIST,
        }
    }
    pub fn config(self) -> &'static str {
        match self {
            Flavor::Oci => media_types::OCI_CONFIG,
            Flavor::Docker => media_types::DOCKER_CONFIG,
        }
    }
    pub fn layer(self) -> &'static str {
        match self {
            Flavor::Oci => media_types::OCI_LAYER_GZIP,
            Flavor::Docker => media_types::DOCKER_LAYER_GZIP,
        }
    }
}

pub fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    (dir, store)
}

/// Writes `bytes` to the store and returns its descriptor with `media_type`.
pub async fn put(store: &LocalStore, media_type: &str, bytes: &[u8]) -> Descriptor {
    let digest = sha256_of(bytes);
    let opts = WriterOpts::new(format!("test-{digest}")).digest(digest.clone());
    write_blob(store, opts, bytes, Labels::new()).await.unwrap();
    Descriptor::new(MediaType::from(media_type), bytes.len() as u64, digest)
}

pub fn oci_platform(spec: &str) -> OciPlatform {
    let parts: Vec<&str> = spec.split('/').collect();
    let mut builder = PlatformBuilder::default()
        .os(parts[0])
        .architecture(parts[1]);
    if let Some(variant) = parts.get(2) {
        builder = builder.variant(*variant);
    }
    builder.build().unwrap()
}

/// One single-platform image: its manifest (with the platform set on the
/// descriptor, as an index would), config and layers.
pub struct Image {
    pub manifest: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<String>,
}

pub async fn image(store: &LocalStore, flavor: Flavor, platform: &str, layers: usize) -> Image {
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..layers {
        let bytes = format!("{platform} layer {i} gz");
        layer_descs.push(put(store, flavor.layer(), bytes.as_bytes()).await);
        diff_ids.push(sha256_of(format!("{platform} layer {i} tar").as_bytes()).to_string());
    }
    let parts: Vec<&str> = platform.split('/').collect();
    let mut config = json!({
        "architecture": parts[1],
        "os": parts[0],
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    if let Some(variant) = parts.get(2) {
        config["variant"] = json!(variant);
    }
    let config = put(store, flavor.config(), config.to_string().as_bytes()).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": flavor.manifest(),
        "config": config,
        "layers": layer_descs,
    });
    let mut manifest = put(store, flavor.manifest(), manifest.to_string().as_bytes()).await;
    manifest.set_platform(Some(oci_platform(platform)));
    Image {
        manifest,
        config,
        layers: layer_descs,
        diff_ids,
    }
}

/// An index (or manifest list) over `manifests`, stored.
pub async fn index(store: &LocalStore, flavor: Flavor, manifests: &[Descriptor]) -> Descriptor {
    let body = json!({
        "schemaVersion": 2,
        "mediaType": flavor.index(),
        "manifests": manifests,
    });
    put(store, flavor.index(), body.to_string().as_bytes()).await
}

/// A multi-platform image: linux/amd64, linux/arm64/v8 and linux/arm/v7.
pub async fn multi_platform(store: &LocalStore, flavor: Flavor) -> (Descriptor, Vec<Image>) {
    let mut images = Vec::new();
    for platform in ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"] {
        images.push(image(store, flavor, platform, 2).await);
    }
    let manifests: Vec<Descriptor> = images.iter().map(|i| i.manifest.clone()).collect();
    (index(store, flavor, &manifests).await, images)
}
