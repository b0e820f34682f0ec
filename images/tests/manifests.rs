//! Resolving images: the manifest for a platform, config, diff IDs, chain IDs,
//! size and completeness, over images built in a real store.

mod common;

use common::{Flavor, image, index, multi_platform, store};
use ocidist_content::{Manager, sha256_of};
use ocidist_images::platforms::{Platform, all, only, only_strict};
use ocidist_images::{ErrorKind, chain_id, chain_ids, check, config, diff_ids, manifest, size};

fn platform(s: &str) -> Platform {
    s.parse().unwrap()
}

#[tokio::test]
async fn an_index_resolves_to_the_best_manifest_for_the_platform() {
    for flavor in [Flavor::Oci, Flavor::Docker] {
        let (_dir, store) = store();
        let (idx, images) = multi_platform(&store, flavor).await;
        let cases = [
            ("linux/amd64", 0),
            ("linux/arm64", 1),
            ("linux/aarch64", 1),
            ("linux/arm/v7", 2),
            ("linux/arm/v8", 2),
        ];
        for (host, want) in cases {
            let m = manifest(&store, &idx, &only(&platform(host)))
                .await
                .unwrap();
            assert_eq!(
                m.descriptor.digest(),
                images[want].manifest.digest(),
                "{flavor:?} {host}"
            );
            assert_eq!(m.config, images[want].config);
            assert_eq!(m.layers, images[want].layers);
        }
        let err = manifest(&store, &idx, &only(&platform("linux/arm/v6")))
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::NotFound,
            "an arm/v6 host cannot run arm/v7: {err}"
        );
        let err = manifest(&store, &idx, &only(&platform("linux/s390x")))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&idx.digest().to_string()), "{err}");
    }
}

/// An index entry that declares no platform is judged by its config, which
/// must be there to judge it: one the store lacks (a pull limited to one
/// platform left it out) is passed over, not an error; one whose config names
/// no platform is no candidate for a platform (containerd's choice).
#[tokio::test]
async fn undeclared_manifests_are_judged_by_their_configs_when_there() {
    use ocidist_images::manifest::platforms;
    let (dir, store) = store();
    let amd64 = image(&store, Flavor::Oci, "linux/amd64", 1).await;
    // Its config says nothing of a platform: an artifact, say.
    let bare = common::put(&store, "application/vnd.oci.image.config.v1+json", b"{}").await;
    let artifact_body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": bare,
        "layers": [],
    });
    let artifact = common::put(
        &store,
        "application/vnd.oci.image.manifest.v1+json",
        artifact_body.to_string().as_bytes(),
    )
    .await;
    let absent = image(&store, Flavor::Oci, "linux/arm64/v8", 1).await;
    let mut undeclared = absent.manifest.clone();
    undeclared.set_platform(None);
    let idx = index(
        &store,
        Flavor::Oci,
        &[amd64.manifest.clone(), undeclared.clone(), artifact],
    )
    .await;
    store.delete(undeclared.digest()).await.unwrap();

    let chosen = manifest(&store, &idx, &only(&platform("linux/amd64")))
        .await
        .unwrap();
    assert_eq!(chosen.descriptor.digest(), amd64.manifest.digest());
    let err = manifest(&store, &idx, &only(&platform("linux/s390x")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("no manifest for linux/s390x"),
        "{err}"
    );
    assert_eq!(
        platforms(&store, &idx).await.unwrap(),
        [platform("linux/amd64")]
    );
    drop(dir);
}

#[tokio::test]
async fn an_exact_variant_beats_an_older_compatible_one() {
    let (_dir, store) = store();
    let v6 = image(&store, Flavor::Oci, "linux/arm/v6", 1).await;
    let v7 = image(&store, Flavor::Oci, "linux/arm/v7", 1).await;
    let idx = index(
        &store,
        Flavor::Oci,
        &[v6.manifest.clone(), v7.manifest.clone()],
    )
    .await;
    let m = manifest(&store, &idx, &only(&platform("linux/arm/v7")))
        .await
        .unwrap();
    assert_eq!(m.descriptor.digest(), v7.manifest.digest());
    let m = manifest(&store, &idx, &only(&platform("linux/arm/v6")))
        .await
        .unwrap();
    assert_eq!(m.descriptor.digest(), v6.manifest.digest());
    let err = manifest(&store, &idx, &only_strict(&platform("linux/arm/v5")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn nested_indexes_and_plain_manifests_resolve() {
    let (_dir, store) = store();
    let (inner, images) = multi_platform(&store, Flavor::Oci).await;
    let mut inner_desc = inner.clone();
    inner_desc.set_platform(None);
    let outer = index(&store, Flavor::Oci, &[inner_desc]).await;
    let m = manifest(&store, &outer, &only(&platform("linux/arm64")))
        .await
        .unwrap();
    assert_eq!(m.descriptor.digest(), images[1].manifest.digest());
    let m = manifest(&store, &images[0].manifest, &all()).await.unwrap();
    assert_eq!(m.layers.len(), 2);
}

#[tokio::test]
async fn config_and_diff_ids_come_from_the_platforms_config() {
    let (_dir, store) = store();
    let (idx, images) = multi_platform(&store, Flavor::Docker).await;
    let host = only(&platform("linux/arm64"));
    let config = config(&store, &idx, &host).await.unwrap();
    assert_eq!(config.architecture().to_string(), "arm64");
    let ids: Vec<String> = diff_ids(&store, &idx, &host)
        .await
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(ids, images[1].diff_ids);
}

#[test]
fn chain_ids_follow_the_oci_definition() {
    let a = sha256_of(b"a");
    let b = sha256_of(b"b");
    let c = sha256_of(b"c");
    let ab = sha256_of(format!("{a} {b}").as_bytes());
    let abc = sha256_of(format!("{ab} {c}").as_bytes());
    assert_eq!(
        chain_ids(&[a.clone(), b.clone(), c.clone()]),
        vec![a.clone(), ab, abc]
    );
    assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a));
    assert_eq!(chain_id(&[]), None);
}

#[tokio::test]
async fn size_sums_index_manifest_config_and_layers_once() {
    let (_dir, store) = store();
    let (idx, images) = multi_platform(&store, Flavor::Oci).await;
    let arm64 = &images[1];
    let want = idx.size()
        + arm64.manifest.size()
        + arm64.config.size()
        + arm64.layers.iter().map(|l| l.size()).sum::<u64>();
    assert_eq!(
        size(&store, &idx, &only(&platform("linux/arm64")))
            .await
            .unwrap(),
        want
    );
}

#[tokio::test]
async fn check_reports_missing_blobs() {
    let (_dir, store) = store();
    let (idx, images) = multi_platform(&store, Flavor::Oci).await;
    let host = only(&platform("linux/amd64"));
    let report = check(&store, &idx, &host).await.unwrap();
    assert!(report.complete());
    assert_eq!(report.required.len(), 3);
    assert_eq!(report.no_manifest_for, None);

    // A platform the index does not list: not available, as containerd's
    // Check says, rather than an error.
    let report = check(&store, &idx, &only(&platform("linux/s390x")))
        .await
        .unwrap();
    assert!(!report.manifest_present && !report.complete());
    assert!(report.required.is_empty() && report.missing.is_empty());
    assert_eq!(report.no_manifest_for.as_deref(), Some("linux/s390x"));

    store.delete(images[0].layers[1].digest()).await.unwrap();
    let report = check(&store, &idx, &host).await.unwrap();
    assert!(!report.complete());
    assert_eq!(report.missing, vec![images[0].layers[1].clone()]);
    assert_eq!(report.present.len(), 2);

    // The platform's manifest gone: it is what is missing, not the index.
    store.delete(images[0].manifest.digest()).await.unwrap();
    let report = check(&store, &idx, &host).await.unwrap();
    assert!(!report.manifest_present && !report.complete());
    assert_eq!(report.missing, vec![images[0].manifest.clone()]);

    store.delete(idx.digest()).await.unwrap();
    let report = check(&store, &idx, &host).await.unwrap();
    assert_eq!(report.missing, vec![idx.clone()]);
}

/// A blob the store has at another size than the manifest gives (its file
/// cut short behind the store's back) is not whole: reported damaged, not
/// present.
#[tokio::test]
async fn check_reports_blobs_cut_short_behind_the_stores_back() {
    let (dir, store) = store();
    let (idx, images) = multi_platform(&store, Flavor::Oci).await;
    let host = only(&platform("linux/amd64"));
    let layer = &images[0].layers[0];
    let file = dir
        .path()
        .join("blobs/sha256")
        .join(layer.digest().digest());
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 1]).unwrap();
    let report = check(&store, &idx, &host).await.unwrap();
    assert!(!report.complete());
    assert_eq!(report.damaged, vec![layer.clone()]);
    assert!(report.missing.is_empty());
    assert!(!report.present.contains(layer));
}

/// A provider that must not be asked for one document.
struct Refusing<'a> {
    store: &'a ocidist_content::local::LocalStore,
    refused: ocidist_content::Digest,
}

#[async_trait::async_trait]
impl ocidist_content::Provider for Refusing<'_> {
    async fn reader_at(
        &self,
        desc: &ocidist_content::Descriptor,
    ) -> ocidist_content::Result<Box<dyn ocidist_content::ReaderAt>> {
        if desc.digest() == &self.refused {
            return Err(ocidist_content::Error::other(
                ocidist_content::ErrorKind::Unavailable,
                format!("{} must not be read", self.refused),
            ));
        }
        self.store.reader_at(desc).await
    }
}

/// An entry declaring a matching platform wins without the configs of the
/// entries that declare none being read (inside a pull, such a read waits
/// for a fetch that never takes them); with no declared match, they are.
#[tokio::test]
async fn a_declared_match_is_chosen_without_reading_undeclared_entries() {
    let (_dir, store) = store();
    let amd64 = image(&store, Flavor::Oci, "linux/amd64", 1).await;
    let arm64 = image(&store, Flavor::Oci, "linux/arm64/v8", 1).await;
    let mut undeclared = arm64.manifest.clone();
    undeclared.set_platform(None);
    let idx = index(
        &store,
        Flavor::Oci,
        &[undeclared.clone(), amd64.manifest.clone()],
    )
    .await;
    let refusing = Refusing {
        store: &store,
        refused: undeclared.digest().clone(),
    };
    let chosen = manifest(&refusing, &idx, &only(&platform("linux/amd64")))
        .await
        .unwrap();
    assert_eq!(chosen.descriptor.digest(), amd64.manifest.digest());
    let err = manifest(&refusing, &idx, &only(&platform("linux/arm64")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    let chosen = manifest(&store, &idx, &only(&platform("linux/arm64")))
        .await
        .unwrap();
    assert_eq!(chosen.descriptor.digest(), undeclared.digest());
}
