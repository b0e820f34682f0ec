//! Snapshot metadata: what removing one snapshot costs among many. A removal
//! must know the snapshot has no child; reading every record for that made
//! pruning N snapshots cost N² record reads.
//!
//! Run: `TMPDIR=/dev/shm cargo bench --bench snapshot_metadata` (on a disk
//! filesystem each transaction's fsync dominates).

use criterion::{Criterion, criterion_group, criterion_main};
use ocidist::snapshot::native::NativeSnapshotter;
use ocidist::snapshot::{Labels, Snapshotter};

fn remove_among(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("snapshot_metadata");
    group.sample_size(20);
    for others in [100usize, 4000] {
        let dir = tempfile::tempdir().unwrap();
        let snapshotter = NativeSnapshotter::open(dir.path()).unwrap();
        runtime.block_on(async {
            for i in 0..others {
                let key = format!("other-{i}");
                snapshotter
                    .prepare(&key, None, Labels::new())
                    .await
                    .unwrap();
            }
        });
        group.bench_function(format!("prepare_and_remove_among_{others}"), |b| {
            b.iter(|| {
                runtime.block_on(async {
                    snapshotter.prepare("k", None, Labels::new()).await.unwrap();
                    snapshotter.remove("k").await.unwrap();
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, remove_among);
criterion_main!(benches);
