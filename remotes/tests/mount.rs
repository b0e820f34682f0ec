//! Cross-repository mounts against the real registry: a fetch records where
//! each blob came from, and a push to another repository of the same registry
//! mounts the blobs instead of uploading them; a source that lacks the blob
//! falls back to an upload through the session the refused mount opened.

mod common;

use common::{fetch_all, image, push_all, registry, stores};
use ocidist_content::{Labels, Manager};
use ocidist_images::platforms::all;
use ocidist_remotes::docker::DockerResolver;
use ocidist_remotes::source::source_label_key;
use ocidist_remotes::testkit::{Fault, FaultProxy};
use ocidist_remotes::{Resolver, fetch_image, push_image};
use tokio::io::AsyncWriteExt;

fn uploads(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| l.contains("/blobs/uploads/") && !l.starts_with("HEAD"))
        .collect()
}

#[tokio::test]
async fn a_fetched_image_pushed_to_another_repository_is_mounted_not_uploaded() {
    let registry = registry();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let resolver = DockerResolver::new();
    let host = proxy.host();
    let blobs = image(false, "linux/amd64", 300_000);
    let (layer, config, manifest) = (&blobs[0], &blobs[1], &blobs[2]);
    let source = format!("{host}/team/source:v1");
    let pusher = resolver
        .pusher(&format!("{source}@{}", manifest.desc.digest()))
        .await
        .unwrap();
    push_all(pusher.as_ref(), &blobs).await;

    let (_dir, store, images) = stores();
    let fetched = fetch_image(&resolver, &store, &images, &source, all(), 0, None, None)
        .await
        .unwrap();
    for blob in [layer, config, manifest] {
        let labels = store.info(blob.desc.digest()).await.unwrap().labels;
        assert_eq!(
            labels.get(&source_label_key(&host)).map(String::as_str),
            Some("team/source"),
            "{}: {labels:?}",
            blob.desc.digest()
        );
    }

    let before = proxy.log().len();
    let target = format!("{host}/team/target:v2");
    let pushed = push_image(&resolver, &store, &target, &fetched.target, 2, None)
        .await
        .unwrap();
    let log = proxy.log()[before..].to_vec();
    // Only the manifest went up; both blobs were mounted from team/source.
    assert_eq!(
        pushed.iter().map(|d| d.digest()).collect::<Vec<_>>(),
        [manifest.desc.digest()]
    );
    let posts = uploads(&log);
    assert_eq!(posts.len(), 2, "{log:#?}");
    for post in posts {
        assert!(
            post.starts_with("POST /v2/team/target/blobs/uploads/?mount=sha256%3A")
                && post.ends_with("&from=team%2Fsource"),
            "{post}"
        );
    }
    assert!(
        !log.iter()
            .any(|l| l.starts_with("PUT /v2/team/target/blobs"))
    );

    let fetcher = resolver.fetcher(&target).await.unwrap();
    for blob in &blobs {
        assert!(
            fetch_all(fetcher.as_ref(), &blob.desc, 0).await == blob.bytes,
            "{}",
            blob.desc.digest()
        );
    }
}

/// Content the store has already learns each new source, as containerd's
/// `AppendDistributionSourceLabel` makes it: fetched again from another
/// registry, its blobs are mounted from there by a push to that registry,
/// not uploaded; and a push adds its own repository.
#[tokio::test]
async fn blobs_already_in_the_store_learn_each_new_source() {
    let (first, second) = (registry(), registry());
    let proxy = FaultProxy::start(second.addr()).unwrap();
    let resolver = DockerResolver::new();
    let blobs = image(false, "linux/amd64", 300_000);
    let manifest = &blobs[2];
    let (first_host, second_host) = (first.host(), proxy.host());
    for (host, repository) in [(&first_host, "team/app"), (&second_host, "mirror/app")] {
        let pinned = format!("{host}/{repository}:v1@{}", manifest.desc.digest());
        push_all(resolver.pusher(&pinned).await.unwrap().as_ref(), &blobs).await;
    }
    let (_dir, store, images) = stores();
    let fetch = |reference: String| {
        let (resolver, store, images) = (&resolver, &store, &images);
        async move {
            fetch_image(resolver, store, images, &reference, all(), 0, None, None)
                .await
                .unwrap()
        }
    };
    fetch(format!("{first_host}/team/app:v1")).await;
    let fetched = fetch(format!("{second_host}/mirror/app:v1")).await;
    let sources = |host: &str| {
        let (store, key) = (&store, source_label_key(host));
        let digests = blobs.iter().map(|b| b.desc.digest().clone());
        async move {
            let mut found = Vec::new();
            for digest in digests {
                let labels = store.info(&digest).await.unwrap().labels;
                found.push(labels.get(&key).cloned().unwrap_or_default());
            }
            found
        }
    };
    assert_eq!(sources(&first_host).await, ["team/app"; 3]);
    assert_eq!(sources(&second_host).await, ["mirror/app"; 3]);

    let before = proxy.log().len();
    let target = format!("{second_host}/other/app:v2");
    push_image(&resolver, &store, &target, &fetched.target, 2, None)
        .await
        .unwrap();
    let log = proxy.log()[before..].to_vec();
    let posts = uploads(&log);
    assert_eq!(posts.len(), 2, "{log:#?}");
    assert!(
        posts
            .iter()
            .all(|post| post.ends_with("&from=mirror%2Fapp")),
        "{posts:#?}"
    );
    assert_eq!(sources(&second_host).await, ["mirror/app,other/app"; 3]);
}

#[tokio::test]
async fn a_refused_mount_uploads_through_the_session_it_opened() {
    refused_mount(None).await;
}

/// Some registries open the session with 200 instead of 202.
#[tokio::test]
async fn a_refused_mount_answered_200_uploads_through_its_session() {
    refused_mount(Some(200)).await;
}

/// A pusher to `team/app` on `host`, and the layer's descriptor naming a
/// source repository that does not exist there: its mount is refused with a
/// session (202).
async fn pusher_and_sourced_desc(
    resolver: &DockerResolver,
    host: &str,
    layer: &common::Blob,
) -> (
    Box<dyn ocidist_remotes::Pusher>,
    oci_spec::image::Descriptor,
) {
    let mut desc = layer.desc.clone();
    desc.set_annotations(Some(
        [(source_label_key(host), "nowhere/else".to_string())].into(),
    ));
    let pusher = resolver
        .pusher(&format!("{host}/team/app:v1"))
        .await
        .unwrap();
    (pusher, desc)
}

/// A mount the registry refuses (answered `status` instead of its own 202).
async fn refused_mount(status: Option<u16>) {
    let registry = registry();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    if let Some(status) = status {
        proxy.add(Some("POST"), "mount=", 1, Fault::ReplaceStatus(status));
    }
    let resolver = DockerResolver::new();
    let host = proxy.host();
    let blobs = image(false, "linux/amd64", 100_000);
    let layer = &blobs[0];
    let (pusher, desc) = pusher_and_sourced_desc(&resolver, &host, layer).await;
    let mut writer = pusher.push(&desc).await.unwrap();
    writer.write_all(&layer.bytes).await.unwrap();
    writer
        .commit(Some(desc.size()), Some(desc.digest()), Labels::new())
        .await
        .unwrap();

    let log = proxy.log();
    let posts: Vec<_> = log.iter().filter(|l| l.starts_with("POST")).collect();
    assert_eq!(posts.len(), 1, "one POST, the mount: {log:#?}");
    assert_eq!(proxy.faults_applied(), usize::from(status.is_some()));
    assert!(posts[0].contains("&from=nowhere%2Felse"), "{}", posts[0]);
    assert!(
        log.iter()
            .any(|l| l.starts_with("PUT /v2/team/app/blobs/uploads/")),
        "{log:#?}"
    );
    let fetcher = resolver
        .fetcher(&format!("{host}/team/app:v1"))
        .await
        .unwrap();
    assert!(fetch_all(fetcher.as_ref(), &layer.desc, 0).await == layer.bytes);
}

/// The session a refused mount opened is let go of (`DELETE`) when no
/// upload uses it: a commit refused for wrong bytes, or a writer dropped.
#[tokio::test]
async fn a_refused_mounts_session_no_upload_used_is_let_go_of() {
    let registry = registry();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    let resolver = DockerResolver::new();
    let host = proxy.host();
    let layer = &image(false, "linux/amd64", 100_000)[0];
    let (pusher, desc) = pusher_and_sourced_desc(&resolver, &host, layer).await;
    let deletes = || {
        let log = proxy.log();
        log.iter()
            .filter(|l| l.starts_with("DELETE /v2/team/app/blobs/uploads/"))
            .count()
    };
    // The DELETE goes from a task of its own: waited for, within a bound
    // a loaded machine cannot overrun.
    let let_go_of = async |expected: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while deletes() < expected && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(deletes(), expected, "{:#?}", proxy.log());
    };

    let mut wrong = layer.bytes.clone();
    wrong[0] ^= 1;
    let mut writer = pusher.push(&desc).await.unwrap();
    writer.write_all(&wrong).await.unwrap();
    let err = writer
        .commit(Some(desc.size()), Some(desc.digest()), Labels::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ocidist_content::ErrorKind::FailedPrecondition,
        "{err}"
    );
    drop(writer);
    let_go_of(1).await;

    let writer = pusher.push(&desc).await.unwrap();
    drop(writer);
    let_go_of(2).await;
    let log = proxy.log();
    assert!(
        !log.iter()
            .any(|l| l.starts_with("PUT ") || l.starts_with("PATCH ")),
        "nothing uploaded: {log:#?}"
    );
}

/// A non-distributable (foreign) layer is not pushed, as `ctr push` skips
/// it by default: its `urls` say where it lives. A fetch gets it from there
/// first, as containerd's fetcher does, with no credentials; a layer whose
/// URL is dead and that the registry lacks fails with both reasons.
#[tokio::test]
async fn non_distributable_layers_are_not_pushed_and_are_fetched_from_their_urls() {
    // The registry takes manifests naming foreign layers by URL only when
    // told which URLs it trusts.
    let registry = ocidist_remotes::testkit::Registry::start_binary(
        &ocidist_remotes::testkit::find_binary().unwrap(),
        "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https?://\n",
    )
    .unwrap();
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    // Where the foreign layer lives: another registry's blob URL.
    let home_registry = common::registry();
    let home = FaultProxy::start(home_registry.addr()).unwrap();
    let resolver = DockerResolver::new();
    let blobs = image(true, "windows/amd64", 4000);
    let (layer, config) = (&blobs[0], &blobs[1]);
    let foreign_blob = common::blob(
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        b"a Windows base layer, served elsewhere".to_vec(),
    );
    let home_pusher = resolver
        .pusher(&format!("{}/base/windows:1", home.host()))
        .await
        .unwrap();
    push_all(home_pusher.as_ref(), std::slice::from_ref(&foreign_blob)).await;
    let mut foreign = foreign_blob.desc.clone();
    foreign.set_urls(Some(vec![format!(
        "http://{}/v2/base/windows/blobs/{}",
        home.host(),
        foreign.digest()
    )]));
    let manifest_type = "application/vnd.docker.distribution.manifest.v2+json";
    let manifest_with = |foreign: &oci_spec::image::Descriptor| {
        common::blob(
            manifest_type,
            serde_json::json!({"schemaVersion": 2, "mediaType": manifest_type,
                "config": config.desc, "layers": [foreign, layer.desc]})
            .to_string()
            .into_bytes(),
        )
    };
    let manifest = manifest_with(&foreign);
    let (_dir, store, _images) = stores();
    for blob in [layer, config, &manifest] {
        ocidist_content::write_blob(
            &store,
            ocidist_content::WriterOpts::new("w").descriptor(&blob.desc),
            &blob.bytes[..],
            Labels::new(),
        )
        .await
        .unwrap();
    }
    let target = format!("{}/team/windows:1", proxy.host());
    let result = push_image(&resolver, &store, &target, &manifest.desc, 2, None).await;
    let log = proxy.log();
    let foreign_digest = foreign.digest().to_string().replace(':', "%3A");
    assert!(
        log.iter()
            .all(|l| !l.contains(foreign.digest().as_ref()) && !l.contains(&foreign_digest)),
        "{log:#?}"
    );
    let pushed = result.expect("the rest is pushed");
    assert!(pushed.iter().all(|d| d.digest() != foreign.digest()));

    let before = (proxy.log().len(), home.log().len());
    let (_dir, fetched, images) = stores();
    fetch_image(&resolver, &fetched, &images, &target, all(), 0, None, None)
        .await
        .expect("fetched, the foreign layer from its URL");
    for blob in [layer, config, &manifest, &foreign_blob] {
        assert!(fetched.info(blob.desc.digest()).await.is_ok());
    }
    let log = proxy.log()[before.0..].to_vec();
    assert!(
        log.iter().all(|l| !l.contains(foreign.digest().as_ref())),
        "the registry is not asked for it: {log:#?}"
    );
    let home_log = home.log()[before.1..].to_vec();
    assert_eq!(
        home_log,
        [format!("GET /v2/base/windows/blobs/{}", foreign.digest())],
        "one GET where its URL points"
    );

    // A URL nobody answers at, and a registry without the blob.
    let mut lost = common::blob(
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        b"a layer nobody has".to_vec(),
    )
    .desc;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Only HTTP(S) URLs are tried, as containerd tries them.
    lost.set_urls(Some(vec![
        "ftp://example.invalid/lost.tar.gz".into(),
        format!("http://{dead}/lost.tar.gz"),
    ]));
    let fetcher = resolver.fetcher(&target).await.unwrap();
    let err = match fetcher.fetch(&lost, 0).await {
        Ok(_) => panic!("nobody has the layer"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ocidist_content::ErrorKind::NotFound, "{err}");
    let said = ocidist_content::Report::new(&err).to_string();
    assert!(
        said.contains(&format!("http://{dead}/lost.tar.gz"))
            && said.contains("404")
            && !said.contains("ftp:"),
        "{said}"
    );
}

/// A blob whose source label is as long as a label may be (a base layer
/// shared by many repositories of one registry) keeps the sources it has: a
/// fetch from yet another repository succeeds, as containerd's skips the
/// append, instead of failing on the label's size.
#[tokio::test]
async fn a_full_source_label_is_left_as_it_is_and_the_fetch_goes_on() {
    let registry = registry();
    let resolver = DockerResolver::new();
    let host = registry.host();
    let blobs = image(false, "linux/amd64", 3_000);
    let manifest = &blobs[2];
    let pinned = format!("{host}/team/app-1:v1@{}", manifest.desc.digest());
    push_all(resolver.pusher(&pinned).await.unwrap().as_ref(), &blobs).await;
    let pinned = format!("{host}/team/app-2:v1@{}", manifest.desc.digest());
    push_all(resolver.pusher(&pinned).await.unwrap().as_ref(), &blobs).await;

    let (_dir, store, images) = stores();
    let key = source_label_key(&host);
    fetch_image(
        &resolver,
        &store,
        &images,
        &format!("{host}/team/app-1:v1"),
        all(),
        0,
        None,
        None,
    )
    .await
    .unwrap();
    // Filled to the limit with the sources of other repositories.
    let layer = blobs[0].desc.digest();
    let mut full = "team/app-1".to_string();
    for n in 0.. {
        let next = format!("{full},team/other-{n}");
        if key.len() + next.len() > 4096 {
            break;
        }
        full = next;
    }
    let mut info = store.info(layer).await.unwrap();
    info.labels.insert(key.clone(), full.clone());
    store
        .update(info, &[&format!("labels.{key}")])
        .await
        .unwrap();

    fetch_image(
        &resolver,
        &store,
        &images,
        &format!("{host}/team/app-2:v1"),
        all(),
        0,
        None,
        None,
    )
    .await
    .unwrap();
    let labels = store.info(layer).await.unwrap().labels;
    assert_eq!(labels.get(&key), Some(&full));
    // The other blobs, with room, learned the new source.
    let config = store.info(blobs[1].desc.digest()).await.unwrap().labels;
    assert_eq!(
        config.get(&key).map(String::as_str),
        Some("team/app-1,team/app-2")
    );
}
