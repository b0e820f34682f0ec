//! Interop in the direction "we push, skopeo reads": images pushed by our
//! pusher to the real registry (an OCI multi-platform index, a Docker
//! schema 2 image) are inspected and copied by `skopeo`, which verifies
//! every digest, and come out byte for byte as pushed.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Blob, image, push_all, push_multi, registry};
use ocidist_content::sha256_of;
use ocidist_remotes::Resolver;
use ocidist_remotes::docker::DockerResolver;

/// Runs skopeo; its standard output. A missing skopeo fails the test,
/// naming the package.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("skopeo must be installed (apt-get install skopeo): {e}"));
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The bytes of blob `digest` in a directory `skopeo copy` wrote: an OCI
/// layout (`blobs/sha256/<hex>`) or a `dir:` copy (`<hex>`).
fn copied(dir: &Path, digest: &oci_spec::image::Digest) -> Vec<u8> {
    let hex = digest.digest();
    let in_layout = dir.join("blobs/sha256").join(hex);
    let path = if in_layout.exists() {
        in_layout
    } else {
        dir.join(hex)
    };
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_copied(dir: &Path, blobs: &[Blob]) {
    for blob in blobs {
        assert!(
            copied(dir, blob.desc.digest()) == blob.bytes,
            "{} differs in skopeo's copy",
            blob.desc.digest()
        );
    }
}

#[tokio::test]
async fn images_we_push_are_inspected_and_copied_by_skopeo() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let work = tempfile::tempdir().unwrap();

    // An OCI index of two platforms: skopeo sees our index's very bytes,
    // and copies all of it into an OCI layout.
    let repo = format!("{}/interop/multi", registry.host());
    let pushed = push_multi(
        async |r: &str| resolver.pusher(r).await.unwrap(),
        &repo,
        "v1",
    )
    .await;
    let index = pushed.last().unwrap();
    let source = format!("docker://{repo}:v1");
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &source]);
    assert_eq!(raw, index.bytes);
    assert_eq!(&sha256_of(&raw), index.desc.digest());
    let layout = work.path().join("multi");
    let destination = format!("oci:{}:v1", layout.display());
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &source,
        &destination,
    ]);
    assert_copied(&layout, &pushed);

    // A Docker schema 2 image: inspected (its config read and understood)
    // and copied as it is.
    let blobs = image(true, "linux/arm64", 300_000);
    let manifest = &blobs[2];
    let reference = format!("{}/interop/docker:v1", registry.host());
    let pusher = resolver
        .pusher(&format!("{reference}@{}", manifest.desc.digest()))
        .await
        .unwrap();
    push_all(pusher.as_ref(), &blobs).await;
    let source = format!("docker://{reference}");
    let inspected: serde_json::Value =
        serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &source])).unwrap();
    assert_eq!(inspected["Digest"], manifest.desc.digest().to_string());
    assert_eq!(inspected["Architecture"], "arm64");
    assert_eq!(inspected["Os"], "linux");
    assert_eq!(
        inspected["Layers"][0],
        blobs[0].desc.digest().to_string(),
        "{inspected:#}"
    );
    let dir = work.path().join("docker");
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &source,
        &format!("dir:{}", dir.display()),
    ]);
    assert_copied(&dir, &blobs[..2]);
    assert_eq!(
        std::fs::read(dir.join("manifest.json")).unwrap(),
        manifest.bytes
    );
    // And we resolve what skopeo read to the same digest.
    let (_, resolved) = resolver.resolve(&reference).await.unwrap();
    assert_eq!(resolved.digest(), manifest.desc.digest());
}
