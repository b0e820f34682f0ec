//! Layer apply, on a whole tree and on an overlay upper directory over a
//! lower one: what writing entries costs beside the bytes, and what the
//! overlay bookkeeping adds (parents the layer does not list, made with the
//! lower directory's owner, mode and xattrs; whiteouts checked against the
//! lowers).
//!
//! Run: `TMPDIR=/dev/shm cargo bench --bench snapshot_apply`. On a disk
//! filesystem, creating and deleting trees over and over mostly measures how
//! it allocates inodes after deletes.

use std::io::Cursor;
use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ocidist::snapshot::apply::{ApplyOptions, Compression, apply_layer_sync};
use ocidist::snapshot::mount::ApplyTarget;

const DIRS: usize = 100;
const FILES_PER_DIR: usize = 20;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h
}

/// 100 directories of 20 files of 1 KiB each.
fn base_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = vec![7u8; 1024];
    for d in 0..DIRS {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, format!("usr/d{d:03}/"), &[][..])
            .unwrap();
        for f in 0..FILES_PER_DIR {
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            b.append_data(&mut h, format!("usr/d{d:03}/f{f:02}"), &data[..])
                .unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// 10 new files in each directory (not listed) and a whiteout of one old one.
fn upper_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = vec![9u8; 1024];
    for d in 0..DIRS {
        for f in 0..10 {
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            b.append_data(&mut h, format!("usr/d{d:03}/new{f:02}"), &data[..])
                .unwrap();
        }
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, format!("usr/d{d:03}/.wh.f00"), &[][..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn apply(target: &ApplyTarget, layer: &[u8]) {
    apply_layer_sync(
        target,
        Cursor::new(layer),
        Some(Compression::None),
        &ApplyOptions::default(),
    )
    .expect("apply");
}

fn bench(c: &mut Criterion) {
    let base = base_layer();
    let upper = upper_layer();
    let lower = tempfile::tempdir().unwrap();
    apply(&ApplyTarget::Tree(lower.path().to_path_buf()), &base);
    let scratch = tempfile::tempdir().unwrap();
    let fresh = |scratch: &Path| tempfile::tempdir_in(scratch).unwrap();

    let mut group = c.benchmark_group("apply");
    group.sample_size(20);
    group.throughput(Throughput::Elements((DIRS * (FILES_PER_DIR + 1)) as u64));
    group.bench_function("tree/2100_entries", |b| {
        b.iter_batched(
            || fresh(scratch.path()),
            |root| {
                apply(&ApplyTarget::Tree(root.path().to_path_buf()), &base);
                root
            },
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements((DIRS * 11) as u64));
    group.bench_function("overlay_upper/1100_entries_unlisted_parents", |b| {
        b.iter_batched(
            || fresh(scratch.path()),
            |root| {
                let target = ApplyTarget::OverlayUpper {
                    upper: root.path().to_path_buf(),
                    lowers: vec![lower.path().to_path_buf()],
                };
                apply(&target, &upper);
                root
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
