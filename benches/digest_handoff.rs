//! SHA-256 of 4 MiB chunks as the local store's hashing thread sees them: a
//! second thread fills the next chunk while this one hashes the last chunk it
//! handed over. [`Digester::update_handed_over`], which requests each next
//! piece into the cache while it hashes the current one, beside
//! [`Digester::update`]; and, as a control with the same second thread busy
//! beside it, both on a chunk this thread filled itself.
//!
//! A second group hashes two ingests' 1 MiB chunks, one after the other
//! against [`Digester::update_pair`], which interleaves the two SHA-256
//! streams.
//!
//! Run: `cargo bench --bench digest_handoff`.

use std::hint::black_box;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ocidist::content::Digester;

/// The local store's chunk for a large ingest.
const CHUNK: usize = 4 << 20;

/// A way of feeding bytes to a [`Digester`].
type Feed = fn(&mut Digester, &[u8]);

/// Which chunk the hashing thread hashes.
#[derive(Clone, Copy)]
enum Source {
    /// The one the second thread has just filled and handed over.
    HandedOver,
    /// One this thread filled itself (untimed), the second thread filling
    /// and handing over chunks all the same.
    Own,
}

/// Hashes `iters` chunks from `source`; returns the time spent hashing only.
/// Three buffers go round, as in the store; the hand-over is a rendezvous,
/// so each chunk was being filled while the one before it was hashed.
fn hash_chunks(iters: u64, source: Source, mut hash: impl FnMut(&[u8])) -> Duration {
    let (filled_tx, filled_rx) = mpsc::sync_channel::<Vec<u8>>(0);
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
    let mut own = vec![0u8; CHUNK];
    let mut hashing = Duration::ZERO;
    for i in 0..iters {
        let chunk = filled_rx.recv().expect("producer alive");
        let bytes = match source {
            Source::HandedOver => &chunk,
            Source::Own => {
                own.fill(i as u8 ^ 0xa5);
                &own
            }
        };
        let started = Instant::now();
        hash(bytes);
        hashing += started.elapsed();
        // The producer may have finished and gone: nothing left to refill.
        let _ = free_tx.send(chunk);
    }
    producer.join().expect("producer");
    hashing
}

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256_of_4MiB_chunks");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.measurement_time(Duration::from_secs(5));
    let methods: [(&str, Feed); 2] = [
        ("update", Digester::update),
        ("update_handed_over", Digester::update_handed_over),
    ];
    for (source, source_name) in [(Source::HandedOver, "handed_over"), (Source::Own, "own")] {
        for (method_name, method) in methods {
            group.bench_function(format!("{source_name}/{method_name}"), |b| {
                let mut digester = Digester::sha256();
                b.iter_custom(|iters| {
                    hash_chunks(iters, source, |chunk| {
                        method(&mut digester, chunk);
                        black_box(&digester);
                    })
                });
            });
        }
    }
    group.finish();
}

/// The local store's chunk for an ingest of up to 128 MiB.
const PAIRED_CHUNK: usize = 1 << 20;

fn pairs(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256_of_two_1MiB_chunks");
    group.throughput(Throughput::Bytes(2 * PAIRED_CHUNK as u64));
    let a_chunk = vec![0x5au8; PAIRED_CHUNK];
    let b_chunk = vec![0xa5u8; PAIRED_CHUNK];
    group.bench_function("one_after_the_other", |b| {
        let (mut a, mut b_digester) = (Digester::sha256(), Digester::sha256());
        b.iter(|| {
            a.update(&a_chunk);
            b_digester.update(&b_chunk);
            black_box((&a, &b_digester));
        });
    });
    group.bench_function("update_pair", |b| {
        let (mut a, mut b_digester) = (Digester::sha256(), Digester::sha256());
        b.iter(|| {
            Digester::update_pair(&mut a, &a_chunk, &mut b_digester, &b_chunk);
            black_box((&a, &b_digester));
        });
    });
    group.finish();
}

criterion_group!(benches, handoff, pairs);
criterion_main!(benches);
