//! SHA-256 of chunks another thread has just written, as the local store's
//! hashing thread sees them (the receiving thread fills a chunk, the hashing
//! thread hashes it): [`Digester::update`], which requests each next piece's
//! cache lines ahead of the hash, beside the `sha2` crate fed the whole chunk,
//! and beside `sha2` on a chunk this thread wrote itself (the hot floor).
//!
//! Run: `cargo bench --bench digest_handoff`.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ocidist::content::Digester;
use sha2::Digest as _;

/// The local store's chunk for a large ingest.
const CHUNK: usize = 4 << 20;

/// Hashes `iters` chunks, each written by a second thread just before it is
/// handed over (three buffers go round, as in the store); returns the time
/// spent hashing only.
fn hash_handed_over(iters: u64, mut hash: impl FnMut(&[u8])) -> Duration {
    let (filled_tx, filled_rx) = mpsc::sync_channel::<Vec<u8>>(2);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..3 {
        free_tx.send(vec![0u8; CHUNK]).expect("receiver alive");
    }
    let producer = std::thread::spawn(move || {
        for i in 0..iters {
            let Ok(mut chunk) = free_rx.recv() else {
                return;
            };
            chunk.fill(i as u8 ^ 0x5a);
            if filled_tx.send(chunk).is_err() {
                return;
            }
        }
    });
    let mut hashing = Duration::ZERO;
    for _ in 0..iters {
        let chunk = filled_rx.recv().expect("producer alive");
        let started = Instant::now();
        hash(&chunk);
        hashing += started.elapsed();
        // The producer may have finished and gone: nothing left to refill.
        let _ = free_tx.send(chunk);
    }
    producer.join().expect("producer");
    hashing
}

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256_of_a_handed_over_4MiB_chunk");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("digester", |b| {
        let mut digester = Digester::sha256();
        b.iter_custom(|iters| hash_handed_over(iters, |chunk| digester.update(chunk)));
    });
    group.bench_function("sha2_whole_chunk", |b| {
        let mut hasher = sha2::Sha256::new();
        b.iter_custom(|iters| hash_handed_over(iters, |chunk| hasher.update(chunk)));
    });
    group.bench_function("sha2_own_chunk_floor", |b| {
        let chunk = vec![0x5au8; CHUNK];
        let mut hasher = sha2::Sha256::new();
        b.iter(|| hasher.update(std::hint::black_box(&chunk)));
    });
    group.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
