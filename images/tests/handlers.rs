//! Handlers, walk and dispatch over real images in a real store, and over
//! random graphs.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Flavor, image, index, multi_platform, put, store};
use oci_spec::image::{Descriptor, MediaType};
use ocidist_content::{Manager, descriptor, sha256_of};
use ocidist_images::platforms::{Platform, only};
use ocidist_images::{
    Error, ErrorKind, Flow, Handler, MAX_DEPTH, children_handler, dispatch, filter_platforms,
    handler_fn, handlers, limit_manifests, once_per_blob, set_children_labels, walk,
};
use proptest::prelude::*;

/// Records the digests it sees, in order, then delegates to `inner`.
struct Recorder<H> {
    seen: Mutex<Vec<String>>,
    inner: H,
}

impl<H> Recorder<H> {
    fn new(inner: H) -> Self {
        Recorder {
            seen: Mutex::new(Vec::new()),
            inner,
        }
    }
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl<H: Handler> Handler for Recorder<H> {
    async fn handle(&self, desc: &Descriptor) -> ocidist_images::Result<Flow> {
        self.seen.lock().unwrap().push(desc.digest().to_string());
        self.inner.handle(desc).await
    }
}

fn digests(descs: &[&Descriptor]) -> Vec<String> {
    descs.iter().map(|d| d.digest().to_string()).collect()
}

#[tokio::test]
async fn walk_visits_an_index_depth_first_in_order() {
    for flavor in [Flavor::Oci, Flavor::Docker] {
        let (_dir, store) = store();
        let (idx, images) = multi_platform(&store, flavor).await;
        let recorder = Recorder::new(children_handler(store.clone()));
        walk(&recorder, std::slice::from_ref(&idx)).await.unwrap();
        let mut want = vec![&idx];
        for image in &images {
            want.push(&image.manifest);
            want.push(&image.config);
            want.extend(image.layers.iter());
        }
        assert_eq!(recorder.seen(), digests(&want), "{flavor:?}");
    }
}

#[tokio::test]
async fn dispatch_visits_every_descriptor() {
    let (_dir, store) = store();
    let (idx, _) = multi_platform(&store, Flavor::Oci).await;
    let walked = Recorder::new(children_handler(store.clone()));
    walk(&walked, std::slice::from_ref(&idx)).await.unwrap();
    let dispatched = Recorder::new(children_handler(store.clone()));
    dispatch(&dispatched, Some(2), std::slice::from_ref(&idx))
        .await
        .unwrap();
    let (mut a, mut b) = (walked.seen(), dispatched.seen());
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(a.len(), 1 + 3 * 4);
}

/// A graph given as adjacency lists of node numbers; descriptors carry the
/// node number in their digest.
#[derive(Debug, Clone)]
struct Graph {
    children: Vec<Vec<usize>>,
}

impl Graph {
    fn desc(i: usize) -> Descriptor {
        descriptor(sha256_of(i.to_string().as_bytes()), i as u64)
    }
    fn node(desc: &Descriptor) -> usize {
        desc.size() as usize
    }
    fn flow(&self, desc: &Descriptor) -> Flow {
        Flow::Children(
            self.children[Graph::node(desc)]
                .iter()
                .map(|&c| Graph::desc(c))
                .collect(),
        )
    }
    /// How many times each node is reached from node 0 (once per path).
    fn paths(&self) -> BTreeMap<usize, usize> {
        fn visit(g: &Graph, n: usize, out: &mut BTreeMap<usize, usize>) {
            *out.entry(n).or_default() += 1;
            for &c in &g.children[n] {
                visit(g, c, out);
            }
        }
        let mut out = BTreeMap::new();
        visit(self, 0, &mut out);
        out
    }
}

fn graphs() -> impl Strategy<Value = Graph> {
    (2usize..14).prop_flat_map(|n| {
        proptest::collection::vec(
            proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            n,
        )
        .prop_map(move |edges| Graph {
            // Edges only go forward, so the graph is a DAG; repeats make shared children.
            children: edges
                .iter()
                .enumerate()
                .map(|(i, picks)| {
                    if i + 1 >= n {
                        return Vec::new();
                    }
                    picks.iter().map(|p| i + 1 + p.index(n - i - 1)).collect()
                })
                .collect(),
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// dispatch reaches every node as often as walk does (once per path),
    /// shared children included, and never runs more handlers than its limit.
    #[test]
    fn dispatch_matches_walk_on_random_dags(graph in graphs(), limit in 1usize..4) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let counts = Mutex::new(BTreeMap::<usize, usize>::new());
            let running = AtomicUsize::new(0);
            let peak = AtomicUsize::new(0);
            let handler = handler_fn(|desc: Descriptor| {
                let graph = &graph;
                let (counts, running, peak) = (&counts, &running, &peak);
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    *counts.lock().unwrap().entry(Graph::node(&desc)).or_default() += 1;
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(graph.flow(&desc))
                }
            });
            dispatch(&handler, Some(limit), &[Graph::desc(0)]).await.unwrap();
            prop_assert_eq!(counts.into_inner().unwrap(), graph.paths());
            prop_assert!(peak.load(Ordering::SeqCst) <= limit);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn dispatch_never_exceeds_its_limit_and_uses_it() {
    let running = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let roots: Vec<Descriptor> = (0..32).map(Graph::desc).collect();
    let handler = handler_fn(|_| {
        let (running, peak) = (&running, &peak);
        async move {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(Flow::leaf())
        }
    });
    dispatch(&handler, Some(3), &roots).await.unwrap();
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn dispatch_with_limit_one_does_not_deadlock_on_a_deep_chain() {
    let graph = Graph {
        children: (0..MAX_DEPTH)
            .map(|i| {
                if i + 1 < MAX_DEPTH {
                    vec![i + 1]
                } else {
                    vec![]
                }
            })
            .collect(),
    };
    let handler = handler_fn(|desc| {
        let flow = graph.flow(&desc);
        async move { Ok(flow) }
    });
    tokio::time::timeout(
        Duration::from_secs(10),
        dispatch(&handler, Some(1), &[Graph::desc(0)]),
    )
    .await
    .expect("a limit of one must not deadlock")
    .unwrap();
}

/// A hostile registry can serve an endless chain of indexes, each naming the
/// next: following it would overflow the stack (20,000 levels did). Both ways
/// stop at [`MAX_DEPTH`] levels with an error naming the last descriptor.
#[tokio::test]
async fn an_endless_chain_of_children_is_refused_at_the_depth_limit() {
    let calls = AtomicUsize::new(0);
    let handler = handler_fn(|desc| {
        calls.fetch_add(1, Ordering::SeqCst);
        let child = Graph::desc(Graph::node(&desc) + 1);
        async move { Ok(Flow::Children(vec![child])) }
    });
    let deepest = Graph::desc(MAX_DEPTH - 1);
    for limit in [None, Some(1), Some(8)] {
        calls.store(0, Ordering::SeqCst);
        let result = match limit {
            None => walk(&handler, &[Graph::desc(0)]).await,
            Some(_) => dispatch(&handler, limit, &[Graph::desc(0)]).await,
        };
        let err = result.unwrap_err();
        assert!(matches!(err, Error::InvalidDocument { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        let message = err.to_string();
        assert!(
            message.contains(deepest.digest().as_ref()) && message.contains("32 levels"),
            "{message}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), MAX_DEPTH, "{limit:?}");
    }
}

/// Counts how many sibling futures were dropped before finishing.
struct DropCounter<'a>(&'a AtomicUsize, bool);

impl Drop for DropCounter<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn the_first_error_cancels_the_siblings_and_is_returned() {
    let cancelled = AtomicUsize::new(0);
    let roots: Vec<Descriptor> = (0..6).map(Graph::desc).collect();
    let handler = handler_fn(|desc| {
        let cancelled = &cancelled;
        async move {
            if Graph::node(&desc) == 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                return Err(Error::other(ErrorKind::Unavailable, "node 3 failed"));
            }
            let mut guard = DropCounter(cancelled, false);
            tokio::time::sleep(Duration::from_secs(30)).await;
            guard.1 = true;
            Ok(Flow::leaf())
        }
    });
    let started = std::time::Instant::now();
    let err = dispatch(&handler, None, &roots).await.unwrap_err();
    assert!(err.to_string().contains("node 3 failed"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "siblings were waited for"
    );
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        5,
        "every sibling is cancelled"
    );
}

#[tokio::test]
async fn chain_concatenates_children_stop_keeps_them_and_skip_prunes() {
    let a = Graph::desc(1);
    let b = Graph::desc(2);
    let c = Graph::desc(3);
    let give = |d: Descriptor| -> Arc<dyn Handler> {
        Arc::new(handler_fn(move |_| {
            let d = d.clone();
            async move { Ok(Flow::Children(vec![d])) }
        }))
    };
    let fixed = |flow: Flow| -> Arc<dyn Handler> {
        Arc::new(handler_fn(move |_| {
            let flow = flow.clone();
            async move { Ok(flow) }
        }))
    };
    let root = Graph::desc(0);
    let both = handlers(vec![give(a.clone()), give(b.clone())]);
    assert_eq!(
        both.handle(&root).await.unwrap(),
        Flow::Children(vec![a.clone(), b.clone()])
    );
    let stopped = handlers(vec![give(a.clone()), fixed(Flow::Stop), give(c.clone())]);
    assert_eq!(
        stopped.handle(&root).await.unwrap(),
        Flow::Children(vec![a.clone()])
    );
    let skipped = handlers(vec![give(a.clone()), fixed(Flow::Skip), give(c)]);
    assert_eq!(skipped.handle(&root).await.unwrap(), Flow::Skip);

    // Walking: a skipped descriptor's children are not visited.
    let recorder = Recorder::new(handler_fn(move |desc| {
        let flow = if Graph::node(&desc) == 0 {
            Flow::Children(vec![a.clone()])
        } else {
            Flow::Skip
        };
        async move { Ok(flow) }
    }));
    walk(&recorder, &[root]).await.unwrap();
    assert_eq!(recorder.seen().len(), 2);
}

#[tokio::test]
async fn filter_platforms_keeps_what_the_host_can_run() {
    let (_dir, store) = store();
    let (idx, images) = multi_platform(&store, Flavor::Docker).await;
    let host: Platform = "linux/arm64".parse().unwrap();
    let handler = filter_platforms(only(&host), children_handler(store.clone()));
    let Flow::Children(children) = handler.handle(&idx).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        digests(&children.iter().collect::<Vec<_>>()),
        digests(&[&images[1].manifest, &images[2].manifest]),
        "arm64/v8 and arm/v7 stay, amd64 goes"
    );
}

#[tokio::test]
async fn limit_manifests_orders_best_first_and_cuts() {
    let (_dir, store) = store();
    let arm7 = image(&store, Flavor::Oci, "linux/arm/v7", 1).await;
    let amd = image(&store, Flavor::Oci, "linux/amd64", 1).await;
    let arm64 = image(&store, Flavor::Oci, "linux/arm64/v8", 1).await;
    let idx = index(
        &store,
        Flavor::Oci,
        &[
            arm7.manifest.clone(),
            amd.manifest.clone(),
            arm64.manifest.clone(),
        ],
    )
    .await;
    let host: Platform = "linux/arm64".parse().unwrap();

    let all = limit_manifests(0, only(&host), children_handler(store.clone()));
    let Flow::Children(children) = all.handle(&idx).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        digests(&children.iter().collect::<Vec<_>>()),
        digests(&[&arm64.manifest, &arm7.manifest, &amd.manifest]),
        "best match first, the non-matching last"
    );
    let one = limit_manifests(1, only(&host), children_handler(store.clone()));
    let Flow::Children(children) = one.handle(&idx).await.unwrap() else {
        panic!()
    };
    assert_eq!(children, vec![arm64.manifest.clone()]);
    // A manifest's children (config, layers) are never reordered or cut.
    let Flow::Children(children) = one.handle(&arm64.manifest).await.unwrap() else {
        panic!()
    };
    assert_eq!(children.len(), 2);
}

#[tokio::test]
async fn set_children_labels_records_gc_references_on_each_parent() {
    let (_dir, store) = store();
    let (idx, images) = multi_platform(&store, Flavor::Oci).await;
    let handler = set_children_labels(store.clone(), children_handler(store.clone()));
    walk(&handler, std::slice::from_ref(&idx)).await.unwrap();

    let labels = store.info(idx.digest()).await.unwrap().labels;
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            labels[&format!("containerd.io/gc.ref.content.m.{i}")],
            image.manifest.digest().to_string()
        );
    }
    let labels = store
        .info(images[0].manifest.digest())
        .await
        .unwrap()
        .labels;
    let want: HashMap<String, String> = [
        (
            "containerd.io/gc.ref.content.config".to_string(),
            images[0].config.digest().to_string(),
        ),
        (
            "containerd.io/gc.ref.content.l.0".to_string(),
            images[0].layers[0].digest().to_string(),
        ),
        (
            "containerd.io/gc.ref.content.l.1".to_string(),
            images[0].layers[1].digest().to_string(),
        ),
    ]
    .into();
    assert_eq!(labels.into_iter().collect::<HashMap<_, _>>(), want);
    assert!(
        store
            .info(images[0].config.digest())
            .await
            .unwrap()
            .labels
            .is_empty()
    );
}

#[tokio::test]
async fn children_of_layers_configs_and_unknown_types_are_none() {
    let (_dir, store) = store();
    let img = image(&store, Flavor::Oci, "linux/amd64", 1).await;
    let handler = children_handler(store.clone());
    for desc in [&img.config, &img.layers[0]] {
        assert_eq!(handler.handle(desc).await.unwrap(), Flow::leaf());
    }
    let odd = put(
        &store,
        "application/vnd.in-toto+json",
        b"{\"manifests\":[]}",
    )
    .await;
    assert_eq!(handler.handle(&odd).await.unwrap(), Flow::leaf());
}

#[tokio::test]
async fn schema1_is_refused_by_name() {
    let (_dir, store) = store();
    let desc = put(
        &store,
        ocidist_images::media_types::DOCKER_SCHEMA1_SIGNED,
        b"{\"schemaVersion\":1}",
    )
    .await;
    let err = children_handler(store.clone())
        .handle(&desc)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unimplemented);
    assert!(err.to_string().contains("schema 1"), "{err}");
}

#[tokio::test]
async fn oversized_manifest_is_refused_before_it_is_read() {
    let (_dir, store) = store();
    // Not even in the store: the size alone decides.
    let big = Descriptor::new(
        MediaType::ImageManifest,
        (4 << 20) + 1,
        sha256_of(b"absent"),
    );
    let err = children_handler(store.clone())
        .handle(&big)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(matches!(err, Error::ManifestTooLarge { .. }), "{err}");
    // A descriptor that lies small about a large blob is caught on open.
    let body = format!(
        "{{\"schemaVersion\":2,\"pad\":\"{}\"}}",
        "x".repeat(4 << 20)
    );
    let real = put(
        &store,
        ocidist_images::media_types::OCI_MANIFEST,
        body.as_bytes(),
    )
    .await;
    let lying = Descriptor::new(MediaType::ImageManifest, 100, real.digest().clone());
    let err = children_handler(store.clone())
        .handle(&lying)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ManifestTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn documents_that_contradict_their_media_type_are_refused() {
    let (_dir, store) = store();
    let img = image(&store, Flavor::Oci, "linux/amd64", 1).await;
    let layer = serde_json::to_value(&img.layers[0]).unwrap();
    let config = serde_json::to_value(&img.config).unwrap();
    let cases = [
        (
            ocidist_images::media_types::OCI_MANIFEST,
            serde_json::json!({"schemaVersion": 2, "config": config, "layers": [layer], "manifests": [layer]}),
        ),
        (
            ocidist_images::media_types::OCI_INDEX,
            serde_json::json!({"schemaVersion": 2, "manifests": [], "layers": [layer]}),
        ),
        (
            ocidist_images::media_types::OCI_INDEX,
            serde_json::json!({"schemaVersion": 2, "config": config, "manifests": []}),
        ),
        (
            ocidist_images::media_types::OCI_MANIFEST,
            serde_json::json!({"schemaVersion": 2, "mediaType": ocidist_images::media_types::OCI_INDEX, "config": config, "layers": []}),
        ),
        (
            ocidist_images::media_types::OCI_MANIFEST,
            serde_json::json!({"schemaVersion": 2, "layers": []}),
        ),
    ];
    for (media_type, body) in cases {
        let desc = put(&store, media_type, body.to_string().as_bytes()).await;
        let err = children_handler(store.clone())
            .handle(&desc)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{body}: {err}");
        assert!(
            err.to_string().contains(&desc.digest().to_string()),
            "{err}"
        );
    }
}

/// `once_per_blob` hands its inner handler each blob once, under `walk` and
/// `dispatch`, however many paths lead to it (here 500³); the same digest
/// described with another media type is another blob.
#[tokio::test]
async fn once_per_blob_handles_each_blob_once_however_many_paths_lead_to_it() {
    let graph = Graph {
        children: vec![vec![1; 500], vec![2; 500], vec![3; 500], Vec::new()],
    };
    for concurrent in [false, true] {
        let calls = Mutex::new(BTreeMap::<(usize, String), usize>::new());
        let inner = handler_fn(|desc: Descriptor| {
            let key = (Graph::node(&desc), desc.media_type().to_string());
            *calls.lock().unwrap().entry(key).or_default() += 1;
            let mut flow = graph.flow(&desc);
            // Node 2 also lists node 3 as a manifest.
            if let Flow::Children(children) = &mut flow
                && Graph::node(&desc) == 2
                && desc.media_type() != &MediaType::ImageManifest
            {
                let mut as_manifest = Graph::desc(3);
                as_manifest.set_media_type(MediaType::ImageManifest);
                children.push(as_manifest);
            }
            async move { Ok(flow) }
        });
        let once = once_per_blob(inner);
        let outer_calls = AtomicUsize::new(0);
        let counted = handler_fn(|desc: Descriptor| {
            outer_calls.fetch_add(1, Ordering::SeqCst);
            let once = &once;
            async move { once.handle(&desc).await }
        });
        if concurrent {
            dispatch(&counted, Some(8), &[Graph::desc(0)])
                .await
                .unwrap();
        } else {
            walk(&counted, &[Graph::desc(0)]).await.unwrap();
        }
        let calls = calls.into_inner().unwrap();
        let octet = Graph::desc(0).media_type().to_string();
        let manifest = MediaType::ImageManifest.to_string();
        let want = BTreeMap::from([
            ((0, octet.clone()), 1),
            ((1, octet.clone()), 1),
            ((2, octet.clone()), 1),
            ((3, octet), 1),
            ((3, manifest), 1),
        ]);
        assert_eq!(calls, want, "concurrent: {concurrent}");
        // The root, 500 of each level's children, and node 3 as a manifest.
        assert_eq!(outer_calls.load(Ordering::SeqCst), 1 + 3 * 500 + 1);
    }
}
