//! Round trips through the real CNCF distribution registry: push images built
//! here (OCI and Docker media types, a multi-platform index), resolve them,
//! fetch them back byte for byte.

use futures::TryStreamExt;
use oci_spec::image::{Descriptor, MediaType};
use ocidist_content::{ErrorKind, Labels, sha256_of};
use ocidist_remotes::docker::{DockerResolver, fetch_object};
use ocidist_remotes::testkit::Registry;
use ocidist_remotes::{Fetcher, Pusher, Resolver};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A blob to push: its descriptor and bytes.
struct Blob {
    desc: Descriptor,
    bytes: Vec<u8>,
}

fn blob(media_type: &str, bytes: Vec<u8>) -> Blob {
    let desc = Descriptor::new(
        MediaType::from(media_type),
        bytes.len() as u64,
        sha256_of(&bytes),
    );
    Blob { desc, bytes }
}

/// Layers, config, manifest (children first) for one platform.
fn image(docker: bool, platform: &str, layer_size: usize) -> Vec<Blob> {
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
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ platform.len() as u8)
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

async fn push_all(pusher: &dyn Pusher, blobs: &[Blob]) {
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

async fn fetch_all(fetcher: &dyn Fetcher, desc: &Descriptor, offset: u64) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = fetcher
        .fetch(desc, offset)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

fn registry() -> Registry {
    Registry::start().expect("the registry must start (apt-get install docker-registry)")
}

#[tokio::test]
async fn push_resolve_and_fetch_back_byte_identical() {
    let registry = registry();
    let resolver = DockerResolver::new();
    for docker in [false, true] {
        let repo = format!(
            "{}/test/{}",
            registry.host(),
            if docker { "docker" } else { "oci" }
        );
        let blobs = image(docker, "linux/amd64", 300_000);
        let manifest = &blobs[2].desc;
        let pusher = resolver
            .pusher(&format!("{repo}:v1@{}", manifest.digest()))
            .await
            .unwrap();
        push_all(pusher.as_ref(), &blobs).await;

        let (name, desc) = resolver.resolve(&format!("{repo}:v1")).await.unwrap();
        assert_eq!(name, format!("{repo}:v1"));
        assert_eq!(
            (desc.digest(), desc.size(), desc.media_type()),
            (manifest.digest(), manifest.size(), manifest.media_type())
        );

        let fetcher = resolver.fetcher(&format!("{repo}:v1")).await.unwrap();
        for b in &blobs {
            assert!(
                fetch_all(fetcher.as_ref(), &b.desc, 0).await == b.bytes,
                "{}",
                b.desc.digest()
            );
        }
        // A resumed download asks for the rest with Range.
        let layer = &blobs[0];
        assert!(fetch_all(fetcher.as_ref(), &layer.desc, 123_456).await == layer.bytes[123_456..]);
    }
}

#[tokio::test]
async fn a_multi_platform_index_round_trips_and_digest_references_are_verified() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/multi", registry.host());
    let mut all = Vec::new();
    let mut manifests = Vec::new();
    for platform in ["linux/amd64", "linux/arm64"] {
        let blobs = image(false, platform, 10_000);
        let mut manifest = blobs[2].desc.clone();
        let (os, arch) = platform.split_once('/').unwrap();
        manifest.set_platform(Some(
            oci_spec::image::PlatformBuilder::default()
                .os(os)
                .architecture(arch)
                .build()
                .unwrap(),
        ));
        manifests.push(manifest);
        all.extend(blobs);
    }
    let index = blob(
        "application/vnd.oci.image.index.v1+json",
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
            .to_string()
            .into_bytes(),
    );
    let pusher = resolver
        .pusher(&format!("{repo}:latest@{}", index.desc.digest()))
        .await
        .unwrap();
    push_all(pusher.as_ref(), &all).await;
    push_all(pusher.as_ref(), std::slice::from_ref(&index)).await;

    let (_, by_tag) = resolver.resolve(&format!("{repo}:latest")).await.unwrap();
    assert_eq!(by_tag.digest(), index.desc.digest());
    let (_, by_digest) = resolver
        .resolve(&format!("{repo}@{}", index.desc.digest()))
        .await
        .unwrap();
    assert_eq!(by_digest.digest(), index.desc.digest());
    assert_eq!(by_digest.media_type(), index.desc.media_type());
    // A child manifest was pushed by digest, not onto the tag.
    let (_, child) = resolver
        .resolve(&format!("{repo}@{}", manifests[1].digest()))
        .await
        .unwrap();
    assert_eq!(child.size(), manifests[1].size());
    // A digest that names a blob resolves too.
    let (_, layer) = resolver
        .resolve(&format!("{repo}@{}", all[0].desc.digest()))
        .await
        .unwrap();
    assert_eq!(layer.size(), all[0].desc.size());
}

#[tokio::test]
async fn existing_content_concurrent_pushes_and_wrong_bytes() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/test/rules", registry.host());
    let pusher = resolver.pusher(&format!("{repo}:x")).await.unwrap();
    let layer = blob("application/vnd.oci.image.layer.v1.tar", vec![7; 4096]);

    // Two pushes of one blob through one pusher: the second waits its turn.
    let mut first = pusher.push(&layer.desc).await.unwrap();
    let err = pusher
        .push(&layer.desc)
        .await
        .err()
        .expect("the second must be refused");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    first.write_all(&layer.bytes).await.unwrap();
    first.commit(None, None, Labels::new()).await.unwrap();
    drop(first);

    let err = pusher.push(&layer.desc).await.err().expect("already there");
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    // Wrong bytes fail locally and never reach the registry.
    let other = blob("application/vnd.oci.image.layer.v1.tar", vec![8; 4096]);
    let mut w = pusher.push(&other.desc).await.unwrap();
    w.write_all(&[9; 4096]).await.unwrap();
    let err = w.commit(None, None, Labels::new()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    drop(w);
    let status = ocidist_remotes::testkit::get_status(
        registry.addr(),
        &format!("/v2/test/rules/blobs/{}", other.desc.digest()),
    )
    .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fetch_object_streams_manifests_by_tag_and_blobs_by_digest() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let repo = format!("{}/library/redis", registry.host());
    let blobs = image(true, "linux/amd64", 1000);
    let pusher = resolver.pusher(&format!("{repo}:latest")).await.unwrap();
    push_all(pusher.as_ref(), &blobs).await;

    let (desc, stream) = fetch_object(&resolver, &repo, "latest", &[]).await.unwrap();
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let bytes = bytes.concat();
    assert_eq!(
        sha256_of(&bytes),
        *desc.digest(),
        "the bytes hash to the digest resolve reports"
    );
    assert_eq!(bytes, blobs[2].bytes);

    let layer = &blobs[0].desc;
    let (desc, stream) = fetch_object(
        &resolver,
        &repo,
        layer.digest().as_ref(),
        &["mediatype:application/x-test"],
    )
    .await
    .unwrap();
    assert_eq!(desc.media_type().to_string(), "application/x-test");
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), blobs[0].bytes);

    let err = resolver
        .resolve(&format!("{repo}:missing"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("missing"), "{err}");
}
