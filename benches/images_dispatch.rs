//! Overhead of `walk` and `dispatch` over a 1000-node graph whose handler does
//! no work: what the combinators themselves cost per descriptor.
//!
//! Run: `cargo bench --bench images_dispatch`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use oci_spec::image::Descriptor;
use ocidist::content::{descriptor, sha256_of};
use ocidist::images::{Flow, dispatch, handler_fn, walk};

/// A tree of 1000 nodes: 1 root, 9 children, each with 110 leaves
/// (1 + 9 + 9 × 110 = 1000), the shape of an index over manifests over layers.
fn graph() -> (Descriptor, Vec<Vec<Descriptor>>) {
    let desc = |i: usize| descriptor(sha256_of(&i.to_le_bytes()), i as u64);
    let mut children = vec![Vec::new(); 1000];
    let mut next = 10;
    children[0] = (1..10).map(desc).collect();
    for kids in &mut children[1..10] {
        *kids = (next..next + 110).map(desc).collect();
        next += 110;
    }
    assert_eq!(next, 1000);
    (desc(0), children)
}

fn bench(c: &mut Criterion) {
    let (root, children) = graph();
    let handler = handler_fn(|desc: Descriptor| {
        let kids = children[desc.size() as usize].clone();
        async move { Ok(Flow::Children(kids)) }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let roots = [root];
    let mut group = c.benchmark_group("graph_1000_nodes");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("walk", |b| {
        b.iter(|| rt.block_on(walk(&handler, &roots)).expect("walk"))
    });
    group.bench_function("dispatch_unlimited", |b| {
        b.iter(|| {
            rt.block_on(dispatch(&handler, None, &roots))
                .expect("dispatch")
        })
    });
    group.bench_function("dispatch_limit_8", |b| {
        b.iter(|| {
            rt.block_on(dispatch(&handler, Some(8), &roots))
                .expect("dispatch")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
