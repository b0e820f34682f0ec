//! Images built in the tests and pushed to the real registry.

#![allow(dead_code, unreachable_pub)]

use oci_spec::image::{Descriptor, MediaType, PlatformBuilder};
use ocidist_content::{ErrorKind, Labels, sha256_of};
use ocidist_remotes::Pusher;
use ocidist_remotes::testkit::Registry;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Everything `fetcher` sends for `desc` from `offset` on.
pub async fn fetch_all(
    fetcher: &dyn ocidist_remotes::Fetcher,
    desc: &Descriptor,
    offset: u64,
) -> Vec<u8> {
    use futures::TryStreamExt;
    let pieces: Vec<bytes::Bytes> = fetcher
        .fetch(desc, offset)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    pieces.concat()
}

/// A fresh content store and image store in a temporary directory.
pub fn stores() -> (
    tempfile::TempDir,
    ocidist_content::local::LocalStore,
    ocidist_images::DbImageStore,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = ocidist_content::local::LocalStore::open(dir.path().join("content")).unwrap();
    let images = ocidist_images::DbImageStore::open(dir.path().join("images.redb")).unwrap();
    (dir, store, images)
}

pub fn registry() -> Registry {
    Registry::start().expect("the registry must start (apt-get install docker-registry)")
}

/// A blob to push: its descriptor and bytes.
#[derive(Clone)]
pub struct Blob {
    pub desc: Descriptor,
    pub bytes: Vec<u8>,
}

pub fn blob(media_type: &str, bytes: Vec<u8>) -> Blob {
    let desc = Descriptor::new(
        MediaType::from(media_type),
        bytes.len() as u64,
        sha256_of(&bytes),
    );
    Blob { desc, bytes }
}

/// Layers, config, manifest (children first) for one platform.
pub fn image(docker: bool, platform: &str, layer_size: usize) -> Vec<Blob> {
    let (manifest_type, config_type, layer_type) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let layer_bytes: Vec<u8> = (0..layer_size)
        .map(|i| {
            (i as u32).wrapping_mul(2654435761).to_le_bytes()[1]
                ^ platform
                    .bytes()
                    .fold(7u8, |a, b| a.wrapping_mul(31).wrapping_add(b))
        })
        .collect();
    let layer = blob(layer_type, layer_bytes);
    let (os, arch) = platform.split_once('/').unwrap();
    let config = blob(
        config_type,
        json!({"os": os, "architecture": arch, "rootfs": {"type": "layers", "diff_ids": [sha256_of(platform.as_bytes()).to_string()]}})
            .to_string()
            .into_bytes(),
    );
    let manifest = blob(
        manifest_type,
        json!({"schemaVersion": 2, "mediaType": manifest_type, "config": config.desc, "layers": [layer.desc]})
            .to_string()
            .into_bytes(),
    );
    vec![layer, config, manifest]
}

pub async fn push_all(pusher: &dyn Pusher, blobs: &[Blob]) {
    for b in blobs {
        let mut w = match pusher.push(&b.desc).await {
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("push {}: {e}", b.desc.digest()),
        };
        w.write_all(&b.bytes).await.unwrap();
        w.commit(None, None, Labels::new())
            .await
            .unwrap_or_else(|e| panic!("commit {}: {e}", b.desc.digest()));
    }
}

/// Pushes a two-platform (linux/amd64, linux/arm64) OCI image to `repo:tag`;
/// returns every blob pushed, the index last.
pub async fn push_multi(
    pusher_for: impl AsyncFn(&str) -> Box<dyn Pusher>,
    repo: &str,
    tag: &str,
) -> Vec<Blob> {
    push_multi_as(false, pusher_for, repo, tag).await
}

/// [`push_multi`] with Docker media types (a manifest list of schema 2
/// manifests) when `docker`, OCI ones otherwise.
pub async fn push_multi_as(
    docker: bool,
    pusher_for: impl AsyncFn(&str) -> Box<dyn Pusher>,
    repo: &str,
    tag: &str,
) -> Vec<Blob> {
    let mut all = Vec::new();
    let mut manifests = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let blobs = image(docker, platform, 200_000);
        let mut manifest = blobs[2].desc.clone();
        let (os, arch) = platform.split_once('/').unwrap();
        manifest.set_platform(Some(
            PlatformBuilder::default()
                .os(os)
                .architecture(arch)
                .build()
                .unwrap(),
        ));
        manifests.push(manifest);
        all.extend(blobs);
    }
    let index_type = if docker {
        "application/vnd.docker.distribution.manifest.list.v2+json"
    } else {
        "application/vnd.oci.image.index.v1+json"
    };
    let index = blob(
        index_type,
        json!({"schemaVersion": 2, "mediaType": index_type, "manifests": manifests})
            .to_string()
            .into_bytes(),
    );
    let pusher = pusher_for(&format!("{repo}:{tag}@{}", index.desc.digest())).await;
    push_all(pusher.as_ref(), &all).await;
    push_all(pusher.as_ref(), std::slice::from_ref(&index)).await;
    all.push(index);
    all
}
