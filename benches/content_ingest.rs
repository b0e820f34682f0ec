//! Ingest into the local content store (commit included), beside the floor
//! measured in the same run: sha256 of the same bytes, and a plain
//! write + fsync + rename of them.
//!
//! Run: `cargo bench --bench content_ingest`.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ocidist::content::local::LocalStore;
use ocidist::content::{Digester, Ingester, Labels, Manager, WriterOpts, write_blob};
use tokio::io::AsyncWriteExt;

const SIZES: [(usize, &str); 4] = [
    (1 << 10, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
    (256 << 20, "256MiB"),
];

fn content(size: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Makes every iteration's bytes (and so its digest) unique.
fn stamp(data: &mut [u8], n: u64) {
    let len = data.len().min(8);
    data[..len].copy_from_slice(&n.to_le_bytes()[..len]);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn tune(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, size: usize) {
    if size >= 64 << 20 {
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(8));
    } else {
        group.measurement_time(Duration::from_secs(3));
    }
}

fn ingest(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let store = LocalStore::open(dir.path().join("store")).expect("store");
    let plain = dir.path().join("plain");
    fs::create_dir_all(plain.join("linked")).expect("plain dir");
    let mut counter = 0u64;

    let mut group = c.benchmark_group("ingest");
    for (size, name) in SIZES {
        let mut data = content(size);
        group.throughput(Throughput::Bytes(size as u64));
        tune(&mut group, size);

        group.bench_function(BenchmarkId::new("local_store", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    counter += 1;
                    stamp(&mut data, counter);
                    let start = Instant::now();
                    let digest = rt.block_on(async {
                        let opts = WriterOpts::new(format!("bench-{counter}")).size(size as u64);
                        let mut w = store.writer(opts).await.expect("writer");
                        w.write_all(&data).await.expect("write");
                        w.commit(None, None, Labels::new()).await.expect("commit");
                        w.digest().await.expect("digest")
                    });
                    total += start.elapsed();
                    rt.block_on(store.delete(&digest)).expect("delete");
                }
                total
            })
        });

        group.bench_function(BenchmarkId::new("floor_sha256", name), |b| {
            b.iter(|| {
                let mut d = Digester::sha256();
                d.update(&data);
                d.digest()
            })
        });

        group.bench_function(BenchmarkId::new("floor_write_fsync_rename", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let start = Instant::now();
                    plain_write(&plain, &data, i);
                    total += start.elapsed();
                    fs::remove_file(plain.join(format!("final-{i}"))).expect("remove");
                }
                total
            })
        });

        group.bench_function(
            BenchmarkId::new("floor_write_fsync_link_fsyncdir", name),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let start = Instant::now();
                        plain_write_synced_dir(&plain, &data, i);
                        total += start.elapsed();
                        fs::remove_file(plain.join(format!("staged-{i}"))).expect("remove");
                        fs::remove_file(plain.join("linked").join(format!("final-{i}")))
                            .expect("remove");
                    }
                    total
                })
            },
        );
    }
    group.finish();
}

/// What commit must do at least: write, fsync, link into another directory,
/// fsync that directory (the step that makes the name durable).
fn plain_write_synced_dir(dir: &Path, data: &[u8], i: u64) {
    let staged = dir.join(format!("staged-{i}"));
    let linked = dir.join("linked");
    let mut file = fs::File::create(&staged).expect("create");
    file.write_all(data).expect("write");
    file.sync_data().expect("fsync");
    fs::hard_link(&staged, linked.join(format!("final-{i}"))).expect("link");
    fs::File::open(&linked)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
}

/// The floor for durability: write, fsync, rename into place.
fn plain_write(dir: &Path, data: &[u8], i: u64) {
    let staged = dir.join(format!("staged-{i}"));
    let mut file = fs::File::create(&staged).expect("create");
    file.write_all(data).expect("write");
    file.sync_data().expect("fsync");
    fs::rename(&staged, dir.join(format!("final-{i}"))).expect("rename");
}

fn many_small(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("store");
    let mut counter = 0u64;
    let mut group = c.benchmark_group("write_blob");
    group.throughput(Throughput::Elements(100));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("100x_1KiB", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..100 {
                    counter += 1;
                    let mut data = vec![0u8; 1024];
                    stamp(&mut data, counter);
                    let opts = WriterOpts::new(format!("small-{counter}"));
                    write_blob(&store, opts, &data[..], Labels::new())
                        .await
                        .expect("write_blob");
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, ingest, many_small);
criterion_main!(benches);
