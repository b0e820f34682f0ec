//! The conformance suite every content store must pass (feature `testsuite`).
//!
//! These are containerd's twelve content-store cases, with its sizes and
//! semantics; two from its local store's tests ([`algorithms`],
//! [`resume_over_bad_bytes`]); and five on what the traits promise beyond
//! them ([`delete`], [`abort`], [`walk`], [`drop_then_reopen`], [`errors`],
//! [`label_limits`]), as plain `pub async fn`s that panic on failure. Give
//! each a fresh, empty store:
//!
//! ```no_run
//! # async fn example() {
//! use ocidist_content::{local::LocalStore, testsuite};
//! let dir = tempfile::tempdir().unwrap();
//! testsuite::writer(&LocalStore::open(dir.path()).unwrap()).await;
//! # }
//! ```
//!
//! or let [`content_store_suite!`](crate::content_store_suite) write one
//! `#[tokio::test]` per case from a function that makes a store.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    CopySource, Digest, ErrorKind, Info, Labels, ReaderAt, ReaderAtStream, Result, Status, Store,
    Writer, WriterOpts, copy, descriptor, read_blob, sha256_of, write_blob,
};

/// Writes one `#[tokio::test]` per suite case, each with a fresh store from
/// `$make`: an expression giving `(guard, store)`, where `guard` lives as long
/// as the test (a temporary directory, say).
///
/// ```ignore
/// fn make_store() -> (tempfile::TempDir, LocalStore) { ... }
/// ocidist_content::content_store_suite!(make_store());
/// ```
///
/// The calling crate needs `tokio` with the features `macros` and
/// `rt-multi-thread` (as a dev-dependency, for tests).
#[macro_export]
macro_rules! content_store_suite {
    ($make:expr) => {
        $crate::content_store_suite!(@cases $make;
            writer, update_status, commit_exists, resume, resume_truncate, resume_discard,
            resume_copy, resume_copy_seeker, resume_copy_reader_at, small_blob, labels,
            commit_error_state, delete, abort, walk, algorithms, resume_over_bad_bytes,
            drop_then_reopen, errors, label_limits);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (_guard, store) = $make;
                $crate::testsuite::$case(&store).await;
            }
        )*
    };
}

static SEED: AtomicU64 = AtomicU64::new(1);

/// Deterministic pseudo-random content (a new stream on every call) and its digest.
pub fn create_content(size: usize) -> (Vec<u8>, Digest) {
    let mut state = SEED
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        // xorshift64*: fast, and plenty random for test data.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(size);
    let digest = sha256_of(&out);
    (out, digest)
}

fn gc_root_labels() -> Labels {
    Labels::from([(
        "containerd.io/gc.root".to_string(),
        format!("{:?}", SystemTime::now()),
    )])
}

/// Asserts `t` lies within `[from, to]`, allowing `t` to trail `from` by a
/// little: stores that report file times get them from the kernel's coarse
/// clock, which runs up to a tick behind `SystemTime::now()` (seen: 35 µs).
fn assert_between(what: &str, t: SystemTime, from: SystemTime, to: SystemTime) {
    let coarse_clock = std::time::Duration::from_millis(20);
    assert!(
        t + coarse_clock >= from && t <= to,
        "{what} {t:?} is not between {from:?} and {to:?}"
    );
}

async fn check_info<S: Store + ?Sized>(
    store: &S,
    expected: &Info,
    created: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    let info = store.info(&expected.digest).await.expect("info");
    assert_eq!(info.digest, expected.digest);
    assert_eq!(info.size, expected.size, "size of {}", expected.digest);
    assert_between("created_at", info.created_at, created.0, created.1);
    assert_between("updated_at", info.updated_at, updated.0, updated.1);
    assert_eq!(
        info.labels, expected.labels,
        "labels of {}",
        expected.digest
    );
}

async fn check_content<S: Store + ?Sized>(store: &S, digest: &Digest, content: &[u8]) {
    let desc = descriptor(digest.clone(), content.len() as u64);
    let read = read_blob(store, &desc, u64::MAX).await.expect("read blob");
    assert!(
        read == content,
        "content of {digest} differs from what was written"
    );
}

/// Checks the writer's status and running digest against expectations.
async fn check_status(
    writer: &mut dyn Writer,
    expected: &Status,
    digest: &Digest,
    started: (SystemTime, SystemTime),
    updated: (SystemTime, SystemTime),
) {
    let status = writer.status().await.expect("status");
    assert_eq!(
        &writer.digest().await.expect("digest"),
        digest,
        "running digest"
    );
    assert_eq!(status.reference, expected.reference);
    assert_eq!(status.offset, expected.offset, "offset");
    assert_eq!(status.total, expected.total, "total");
    assert_eq!(status.expected, expected.expected, "expected digest");
    assert_between("started_at", status.started_at, started.0, started.1);
    assert_between("updated_at", status.updated_at, updated.0, updated.1);
}

async fn open<S: Store + ?Sized>(store: &S, opts: WriterOpts) -> Box<dyn Writer> {
    let reference = opts.reference.clone();
    store
        .writer(opts)
        .await
        .unwrap_or_else(|e| panic!("open writer {reference:?}: {e:?}"))
}

async fn check_ref_not_available<S: Store + ?Sized>(store: &S, reference: &str) {
    match store.writer(WriterOpts::new(reference)).await {
        Ok(_) => panic!("writer opened for {reference:?}, expected it to be in use"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{e:?}"),
    }
}

fn assert_kind<T>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Ok(_) => panic!("{what}: succeeded, expected {kind:?}"),
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e:?}"),
    }
}

/// Writer: five writers (no descriptor, size only, digest only, both, and a
/// 32 MiB blob fed through a 32-byte buffer), all opened before any is
/// written, commit and read back.
pub async fn writer<S: Store + ?Sized>(store: &S) {
    let cases: Vec<(usize, bool, bool, usize)> = vec![
        (256, false, false, 256),
        (256, true, false, 256),
        (256, false, true, 256),
        (256, true, true, 256),
        (32 << 20, true, true, 32),
    ];
    let mut open_writers = Vec::new();
    for (i, (size, declare_size, declare_digest, chunk)) in cases.into_iter().enumerate() {
        let (content, digest) = create_content(size);
        let mut opts = WriterOpts::new(format!("c{}", i + 1));
        if declare_size {
            opts = opts.size(size as u64);
        }
        if declare_digest {
            opts = opts.digest(digest.clone());
        }
        open_writers.push((open(store, opts).await, content, digest, chunk));
    }
    assert_eq!(
        store.list_statuses(&[]).await.expect("list").len(),
        5,
        "five open ingests"
    );
    for (w, content, _, chunk) in &mut open_writers {
        for piece in content.chunks(*chunk) {
            w.write_all(piece).await.expect("write");
        }
    }
    for (mut w, content, digest, _) in open_writers {
        let labels = gc_root_labels();
        let pre = SystemTime::now();
        w.commit(None, None, labels.clone()).await.expect("commit");
        let post = SystemTime::now();
        assert_eq!(w.digest().await.expect("digest after commit"), digest);
        let info = Info {
            digest: digest.clone(),
            size: content.len() as u64,
            created_at: pre,
            updated_at: pre,
            labels,
        };
        check_info(store, &info, (pre, post), (pre, post)).await;
        check_content(store, &digest, &content).await;
    }
    assert!(
        store.list_statuses(&[]).await.expect("list").is_empty(),
        "committed ingests must be gone"
    );
}

/// UpdateStatus: 256 bytes written as 64/128/64; offset and running digest after each.
pub async fn update_status<S: Store + ?Sized>(store: &S) {
    let (c1, d1) = create_content(256);
    let pre_start = SystemTime::now();
    let mut w = open(store, WriterOpts::new("c1").size(256).digest(d1.clone())).await;
    let post_start = SystemTime::now();
    let mut expected = Status {
        reference: "c1".into(),
        offset: 0,
        total: Some(256),
        expected: Some(d1.clone()),
        started_at: pre_start,
        updated_at: pre_start,
    };
    let started = (pre_start, post_start);
    check_status(w.as_mut(), &expected, &sha256_of(b""), started, started).await;
    for (from, to) in [(0, 64), (64, 192), (192, 256)] {
        let pre = SystemTime::now();
        w.write_all(&c1[from..to]).await.expect("write");
        let post = SystemTime::now();
        expected.offset = to as u64;
        check_status(
            w.as_mut(),
            &expected,
            &sha256_of(&c1[..to]),
            started,
            (pre, post),
        )
        .await;
    }
    let labels = gc_root_labels();
    let pre = SystemTime::now();
    w.commit(None, None, labels.clone()).await.expect("commit");
    let post = SystemTime::now();
    let info = Info {
        digest: d1,
        size: 256,
        created_at: pre,
        updated_at: pre,
        labels,
    };
    check_info(store, &info, (pre, post), (pre, post)).await;
}

/// CommitExists: the same bytes under two new refs, with and without an
/// expected digest, fail with AlreadyExists.
pub async fn commit_exists<S: Store + ?Sized>(store: &S) {
    let (c1, d1) = create_content(256);
    write_blob(
        store,
        WriterOpts::new("c1").digest(d1.clone()),
        &c1[..],
        Labels::new(),
    )
    .await
    .expect("write blob");
    for (i, expected) in [Some(&d1), None].into_iter().enumerate() {
        let mut w = open(store, WriterOpts::new(format!("c1-commitexists-{i}"))).await;
        w.write_all(&c1).await.expect("write");
        let result = w
            .commit(Some(c1.len() as u64), expected, Labels::new())
            .await;
        assert_kind(result, ErrorKind::AlreadyExists, &format!("commit {i}"));
    }
}

/// Resume: close at half, reopen; the status is the same (`updated_at`
/// within the time of the writes), and the rest commits.
pub async fn resume<S: Store + ?Sized>(store: &S) {
    let (cb, digest) = create_content(256);
    let (first, second) = cb.split_at(128);
    let opts = WriterOpts::new("cb").size(256).digest(digest.clone());
    let pre_start = SystemTime::now();
    let mut w1 = open(store, opts.clone()).await;
    let post_start = SystemTime::now();
    w1.write_all(first).await.expect("write");
    let post_update = SystemTime::now();
    let mut expected = Status {
        reference: "cb".into(),
        offset: 128,
        total: Some(256),
        expected: Some(digest.clone()),
        started_at: pre_start,
        updated_at: pre_start,
    };
    let started = (pre_start, post_start);
    let first_digest = sha256_of(first);
    check_status(
        w1.as_mut(),
        &expected,
        &first_digest,
        started,
        (post_start, post_update),
    )
    .await;
    let before_close = w1.status().await.expect("status");
    w1.shutdown().await.expect("close");
    drop(w1);

    let mut w2 = open(store, opts).await;
    let reopened = w2.status().await.expect("status");
    // All but `updated_at`, which a store may keep otherwise (containerd's
    // takes a file's mtime): checked against the writes' time below.
    let reopened = Status {
        updated_at: before_close.updated_at,
        ..reopened
    };
    assert_eq!(reopened, before_close, "status after reopen");
    check_status(
        w2.as_mut(),
        &expected,
        &first_digest,
        started,
        (post_start, post_update),
    )
    .await;

    let pre = SystemTime::now();
    w2.write_all(second).await.expect("write");
    let post = SystemTime::now();
    expected.offset = 256;
    check_status(w2.as_mut(), &expected, &digest, started, (pre, post)).await;
    let pre = SystemTime::now();
    w2.commit(None, None, Labels::new()).await.expect("commit");
    let post = SystemTime::now();
    let info = Info {
        digest,
        size: 256,
        created_at: pre,
        updated_at: pre,
        labels: Labels::new(),
    };
    check_info(store, &info, (pre, post), (pre, post)).await;
}

/// How a resume case continues a writer that already holds `written` bytes.
#[derive(Debug, Clone, Copy)]
enum Resume {
    Truncate,
    Discard,
    Copy,
    CopySeeker,
    CopyReaderAt,
}

async fn resume_with(
    w: &mut dyn Writer,
    how: Resume,
    b: &[u8],
    written: usize,
    d: &Digest,
) -> Result<()> {
    let size = Some(b.len() as u64);
    match how {
        Resume::Truncate => {
            w.truncate(0).await?;
            for piece in b.chunks(1024) {
                w.write_all(piece).await.map_err(crate::Error::from_io)?;
            }
            w.commit(size, Some(d), Labels::new()).await
        }
        Resume::Discard => {
            for piece in b[written..].chunks(1024) {
                w.write_all(piece).await.map_err(crate::Error::from_io)?;
            }
            w.commit(size, Some(d), Labels::new()).await
        }
        Resume::Copy => {
            let mut source = b;
            copy(
                w,
                CopySource::Stream(&mut source),
                size,
                Some(d),
                Labels::new(),
            )
            .await
        }
        Resume::CopySeeker => {
            let mut source = Cursor::new(b.to_vec());
            copy(
                w,
                CopySource::Seekable(&mut source),
                size,
                Some(d),
                Labels::new(),
            )
            .await
        }
        Resume::CopyReaderAt => {
            let source = BytesReaderAt(b.to_vec());
            copy(
                w,
                CopySource::ReaderAt(&source),
                size,
                Some(d),
                Labels::new(),
            )
            .await
        }
    }
}

async fn check_resume<S: Store + ?Sized>(store: &S, how: Resume) {
    for (i, size) in [500usize, 5000, 50000].into_iter().enumerate() {
        for (j, cut) in [0.0, 0.1, 0.5, 0.9, 1.0].into_iter().enumerate() {
            let (b, d) = create_content(size);
            let limit = (size as f64 * cut) as usize;
            let reference = format!("ref-{i}-{j}");
            let opts = WriterOpts::new(reference.clone())
                .size(size as u64)
                .digest(d.clone());
            let mut w = open(store, opts.clone()).await;
            w.write_all(&b[..limit]).await.expect("write");
            w.shutdown().await.expect("close");
            drop(w);

            let mut w = open(store, opts).await;
            let status = w.status().await.expect("status");
            assert_eq!(
                status.offset, limit as u64,
                "{reference}: offset after reopen"
            );
            let pre = SystemTime::now();
            resume_with(w.as_mut(), how, &b, limit, &d)
                .await
                .unwrap_or_else(|e| panic!("{how:?} {reference}: {e:?}"));
            let post = SystemTime::now();
            drop(w);
            let info = Info {
                digest: d.clone(),
                size: size as u64,
                created_at: pre,
                updated_at: pre,
                labels: Labels::new(),
            };
            check_info(store, &info, (pre, post), (pre, post)).await;
            check_content(store, &d, &b).await;
        }
    }
}

/// ResumeTruncate: reopen, truncate to 0, write everything, commit.
pub async fn resume_truncate<S: Store + ?Sized>(store: &S) {
    check_resume(store, Resume::Truncate).await
}

/// ResumeDiscard: reopen, write only the bytes after the offset, commit.
pub async fn resume_discard<S: Store + ?Sized>(store: &S) {
    check_resume(store, Resume::Discard).await
}

/// ResumeCopy: [`copy`] from a plain stream, which discards up to the offset.
pub async fn resume_copy<S: Store + ?Sized>(store: &S) {
    check_resume(store, Resume::Copy).await
}

/// ResumeCopySeeker: [`copy`] from a seekable stream, which seeks to the offset.
pub async fn resume_copy_seeker<S: Store + ?Sized>(store: &S) {
    check_resume(store, Resume::CopySeeker).await
}

/// ResumeCopyReaderAt: [`copy`] from a [`ReaderAt`], which reads from the offset.
pub async fn resume_copy_reader_at<S: Store + ?Sized>(store: &S) {
    check_resume(store, Resume::CopyReaderAt).await
}

/// SmallBlob: reading past the end of a 6-byte blob yields only the blob.
pub async fn small_blob<S: Store + ?Sized>(store: &S) {
    let blob = b"foobar";
    let digest = sha256_of(blob);
    let mut w = open(
        store,
        WriterOpts::new("small-blob").size(6).digest(digest.clone()),
    )
    .await;
    w.write_all(blob).await.expect("write");
    w.commit(Some(6), Some(&digest), Labels::new())
        .await
        .expect("commit");
    let desc = descriptor(digest.clone(), 6);
    let reader = store.reader_at(&desc).await.expect("reader");
    assert_eq!(reader.size(), 6);
    let mut buf = [0u8; 7];
    let n = reader.read_at(0, &mut buf).await.expect("read_at");
    assert_eq!(&buf[..n], blob);
    assert_eq!(reader.read_at(6, &mut buf).await.expect("read at end"), 0);
    let mut section = ReaderAtStream::with_range(reader, 0, Some(7));
    let mut read = Vec::new();
    section.read_to_end(&mut read).await.expect("read section");
    assert_eq!(sha256_of(&read), digest);
    // A descriptor with the digest alone (size 0, as containerd's case
    // passes it) still opens the whole blob: the store knows its size.
    let reader = store
        .reader_at(&descriptor(digest.clone(), 0))
        .await
        .expect("reader by digest alone");
    assert_eq!(reader.size(), 6);
    let n = reader.read_at(0, &mut buf).await.expect("read_at");
    assert_eq!(&buf[..n], blob);
}

/// Labels: committed labels, then a replace-all update, then a fieldpath update,
/// then empty values, which remove their labels.
pub async fn labels<S: Store + ?Sized>(store: &S) {
    let (c1, d1) = create_content(256);
    let mut w = open(
        store,
        WriterOpts::new("c1-checklabels")
            .size(256)
            .digest(d1.clone()),
    )
    .await;
    w.write_all(&c1).await.expect("write");
    let root_time = format!("{:?}", SystemTime::now());
    let mut labels = Labels::from([
        ("k1".to_string(), "v1".to_string()),
        ("k2".to_string(), "v2".to_string()),
        ("containerd.io/gc.root".to_string(), root_time.clone()),
    ]);
    let pre_commit = SystemTime::now();
    w.commit(None, None, labels.clone()).await.expect("commit");
    let post_commit = SystemTime::now();
    let committed = (pre_commit, post_commit);
    let mut info = Info {
        digest: d1.clone(),
        size: 256,
        created_at: pre_commit,
        updated_at: pre_commit,
        labels: labels.clone(),
    };
    check_info(store, &info, committed, committed).await;

    labels.insert("k1".into(), "newvalue".into());
    labels.remove("k2");
    labels.insert("k3".into(), "v3".into());
    info.labels = labels;
    let pre = SystemTime::now();
    let updated = store.update(info.clone(), &[]).await.expect("update");
    let post = SystemTime::now();
    assert_eq!(updated.labels, info.labels);
    check_info(store, &info, committed, (pre, post)).await;

    info.labels = Labels::from([
        ("k1".to_string(), "v1".to_string()),
        ("containerd.io/gc.root".to_string(), root_time),
    ]);
    let pre = SystemTime::now();
    store
        .update(info.clone(), &["labels.k3", "labels.k1"])
        .await
        .expect("update fieldpaths");
    let post = SystemTime::now();
    check_info(store, &info, committed, (pre, post)).await;

    // An empty value removes its label, by fieldpath or by replacement.
    let mut emptied = info.clone();
    emptied.labels.insert("k1".into(), String::new());
    let pre = SystemTime::now();
    let updated = store
        .update(emptied.clone(), &["labels.k1"])
        .await
        .expect("update to an empty value");
    let post = SystemTime::now();
    info.labels.remove("k1");
    assert_eq!(
        updated.labels, info.labels,
        "an empty label value removes it"
    );
    check_info(store, &info, committed, (pre, post)).await;
    emptied.labels = Labels::from([("k4".to_string(), String::new())]);
    let updated = store.update(emptied, &[]).await.expect("replace");
    assert_eq!(
        updated.labels,
        Labels::new(),
        "an empty label value is no label"
    );
}

/// CommitErrorState: every failed commit leaves a usable ingest and a released
/// ref; exists, wrong digest, wrong size, success, exists again.
pub async fn commit_error_state<S: Store + ?Sized>(store: &S) {
    let (c1, d1) = create_content(256);
    let (_, d2) = create_content(256);
    write_blob(
        store,
        WriterOpts::new("c1").digest(d1.clone()),
        &c1[..],
        Labels::new(),
    )
    .await
    .expect("write blob");
    let reference = "c1-commiterror-state";
    let len = c1.len() as u64;

    let mut w = open(store, WriterOpts::new(reference)).await;
    w.write_all(&c1).await.expect("write");
    check_ref_not_available(store, reference).await;
    assert_kind(
        w.commit(Some(len), Some(&d1), Labels::new()).await,
        ErrorKind::AlreadyExists,
        "commit existing",
    );
    drop(w);

    let mut w = open(store, WriterOpts::new(reference)).await;
    check_ref_not_available(store, reference).await;
    w.write_all(&c1).await.expect("write");
    assert_kind(
        w.commit(Some(len), None, Labels::new()).await,
        ErrorKind::AlreadyExists,
        "commit existing, no digest",
    );
    drop(w);

    let mut w = open(store, WriterOpts::new(reference)).await;
    check_ref_not_available(store, reference).await;
    let mut more = c1.clone();
    more.extend_from_slice(b"more");
    w.write_all(&more).await.expect("write");
    assert_kind(
        w.commit(Some(len + 4), Some(&d2), Labels::new()).await,
        ErrorKind::FailedPrecondition,
        "wrong digest",
    );
    drop(w);

    let mut w = open(store, WriterOpts::new(reference)).await;
    check_ref_not_available(store, reference).await;
    assert_eq!(
        w.status().await.expect("status").offset,
        len + 4,
        "data survives a failed commit"
    );
    assert_kind(
        w.commit(Some(len), None, Labels::new()).await,
        ErrorKind::FailedPrecondition,
        "wrong size",
    );
    drop(w);

    let mut w = open(store, WriterOpts::new(reference)).await;
    check_ref_not_available(store, reference).await;
    w.commit(Some(len + 4), None, Labels::new())
        .await
        .expect("commit after errors");
    drop(w);
    check_content(store, &sha256_of(&more), &more).await;

    let mut w = open(store, WriterOpts::new(reference)).await;
    w.write_all(&c1).await.expect("write");
    check_ref_not_available(store, reference).await;
    assert_kind(
        w.commit(Some(len), Some(&d1), Labels::new()).await,
        ErrorKind::AlreadyExists,
        "commit existing again",
    );
    drop(w);

    // The ingest left by that failure truncates and closes cleanly, held
    // or reopened.
    let mut w = open(store, WriterOpts::new(reference)).await;
    check_ref_not_available(store, reference).await;
    w.truncate(0).await.expect("truncate");
    assert_eq!(w.status().await.expect("status").offset, 0);
    w.shutdown().await.expect("close");
    drop(w);
    let mut w = open(store, WriterOpts::new(reference)).await;
    assert_eq!(w.status().await.expect("status").offset, 0);
    w.truncate(0).await.expect("truncate again");
    w.shutdown().await.expect("close");
}

/// An in-memory [`ReaderAt`], for copy sources and tests.
#[derive(Debug, Clone)]
pub struct BytesReaderAt(pub Vec<u8>);

#[async_trait]
impl ReaderAt for BytesReaderAt {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }

    fn into_async_read(self: Box<Self>) -> std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>> {
        Box::pin(ReaderAtStream::new(self))
    }
}

/// Delete: a deleted blob is gone to `info`, `reader_at` and a second delete
/// (NotFound), and can be written again.
pub async fn delete<S: Store + ?Sized>(store: &S) {
    let (c1, d1) = create_content(1024);
    let desc = descriptor(d1.clone(), c1.len() as u64);
    let write = || {
        write_blob(
            store,
            WriterOpts::new("d1").digest(d1.clone()),
            &c1[..],
            Labels::new(),
        )
    };
    write().await.expect("write blob");
    store.info(&d1).await.expect("info");
    store.delete(&d1).await.expect("delete");
    assert_kind(
        store.info(&d1).await,
        ErrorKind::NotFound,
        "info after delete",
    );
    assert_kind(
        store.reader_at(&desc).await,
        ErrorKind::NotFound,
        "read after delete",
    );
    assert_kind(
        store.delete(&d1).await,
        ErrorKind::NotFound,
        "second delete",
    );
    write().await.expect("write again");
    check_content(store, &d1, &c1).await;
}

/// Abort: an ingest held by a writer is Unavailable to abort; once let go,
/// abort removes it (status and listing NotFound, a new writer starts at 0),
/// and a second abort is NotFound.
pub async fn abort<S: Store + ?Sized>(store: &S) {
    let (c1, _) = create_content(4096);
    let mut w = open(store, WriterOpts::new("a1")).await;
    w.write_all(&c1).await.expect("write");
    assert_kind(
        store.abort("a1").await,
        ErrorKind::Unavailable,
        "abort while written",
    );
    w.shutdown().await.expect("close");
    drop(w);
    let listed = store.list_statuses(&[]).await.expect("list statuses");
    assert!(listed.iter().any(|s| s.reference == "a1"), "{listed:?}");
    // A store may let a dropped writer go in the background, briefly.
    let mut tries = 0;
    loop {
        match store.abort("a1").await {
            Err(e) if e.kind() == ErrorKind::Unavailable && tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            result => break result.expect("abort"),
        }
    }
    assert_kind(
        store.status("a1").await,
        ErrorKind::NotFound,
        "status after abort",
    );
    let listed = store.list_statuses(&[]).await.expect("list statuses");
    assert!(listed.iter().all(|s| s.reference != "a1"), "{listed:?}");
    assert_kind(store.abort("a1").await, ErrorKind::NotFound, "second abort");
    let mut w = open(store, WriterOpts::new("a1")).await;
    assert_eq!(w.status().await.expect("status").offset, 0, "starts over");
}

/// Walk: every blob once, with its size; a label filter picks the blobs
/// that carry it.
pub async fn walk<S: Store + ?Sized>(store: &S) {
    let mut written = Vec::new();
    for (i, label) in ["a", "b", "a"].into_iter().enumerate() {
        let (content, digest) = create_content(100 + i);
        let labels = Labels::from([("group".to_string(), label.to_string())]);
        write_blob(
            store,
            WriterOpts::new(format!("w{i}")).digest(digest.clone()),
            &content[..],
            labels,
        )
        .await
        .expect("write blob");
        written.push((digest, content.len() as u64, label));
    }
    let walked = |filters: &'static [&'static str]| async move {
        let mut found = Vec::new();
        store
            .walk(filters, &mut |info| {
                found.push((info.digest.to_string(), info.size));
                Ok(())
            })
            .await
            .expect("walk");
        found.sort();
        found
    };
    let mut all: Vec<_> = written
        .iter()
        .map(|(d, n, _)| (d.to_string(), *n))
        .collect();
    all.sort();
    assert_eq!(walked(&[]).await, all);
    let mut group_a: Vec<_> = written
        .iter()
        .filter(|(_, _, label)| *label == "a")
        .map(|(d, n, _)| (d.to_string(), *n))
        .collect();
    group_a.sort();
    assert_eq!(walked(&["labels.group==a"]).await, group_a);
}

/// containerd's `TestContentWriter`: a writer may take another algorithm's
/// digest at commit (here sha512) and the blob lands under it; a ref held
/// by an idle writer is Unavailable; an idle ingest is listed at offset 0.
pub async fn algorithms<S: Store + ?Sized>(store: &S) {
    let mut held = open(store, WriterOpts::new("idle")).await;
    check_ref_not_available(store, "idle").await;
    let listed = store.list_statuses(&[""]).await.expect("list statuses");
    let idle = listed
        .iter()
        .find(|s| s.reference == "idle")
        .unwrap_or_else(|| panic!("the idle ingest is listed: {listed:?}"));
    assert_eq!(idle.offset, 0);

    let (content, _) = create_content(4096);
    let sha512 =
        crate::digest_of(&oci_spec::image::DigestAlgorithm::Sha512, &content).expect("sha512");
    let mut w = open(store, WriterOpts::new("sha512")).await;
    w.write_all(&content).await.expect("write");
    w.commit(Some(content.len() as u64), Some(&sha512), Labels::new())
        .await
        .expect("commit under sha512");
    let info = store.info(&sha512).await.expect("info of the sha512 blob");
    assert_eq!(info.size, content.len() as u64);
    check_content(store, &sha512, &content).await;
    held.shutdown().await.expect("close");
}

/// containerd's `TestWriterTruncateRecoversFromIncompleteWrite`: an ingest
/// holding wrong bytes is reopened, truncated to 0, written right, and
/// commits; the wrong bytes are never committed.
pub async fn resume_over_bad_bytes<S: Store + ?Sized>(store: &S) {
    let (content, digest) = create_content(4096);
    let opts = WriterOpts::new("bad-bytes").size(content.len() as u64);
    let mut w = open(store, opts.clone()).await;
    w.write_all(b"12345678").await.expect("write wrong bytes");
    w.shutdown().await.expect("close");
    drop(w);

    let mut w = open(store, opts).await;
    assert_eq!(w.status().await.expect("status").offset, 8);
    w.truncate(0).await.expect("truncate");
    w.write_all(&content).await.expect("write");
    w.commit(Some(content.len() as u64), Some(&digest), Labels::new())
        .await
        .expect("commit");
    check_content(store, &digest, &content).await;
    assert_kind(
        store.info(&sha256_of(b"12345678")).await,
        ErrorKind::NotFound,
        "the wrong bytes as a blob",
    );
}

/// A writer dropped without `shutdown` keeps what it was given: the ref
/// opens again (through [`open_writer`](crate::open_writer), which waits for
/// a store that lets go in the background) at the offset written.
pub async fn drop_then_reopen<S: Store + ?Sized>(store: &S) {
    let (content, digest) = create_content(1 << 20);
    let (first, rest) = content.split_at(content.len() / 2);
    let opts = WriterOpts::new("dropped").size(content.len() as u64);
    let mut w = open(store, opts.clone()).await;
    w.write_all(first).await.expect("write");
    drop(w);

    let mut w = crate::open_writer(store, opts)
        .await
        .expect("reopen a dropped writer's ref");
    assert_eq!(
        w.status().await.expect("status").offset,
        first.len() as u64,
        "the bytes written before the drop are kept"
    );
    w.write_all(rest).await.expect("write");
    w.commit(None, Some(&digest), Labels::new())
        .await
        .expect("commit");
    check_content(store, &digest, &content).await;
}

/// The error kind of each refusal the traits define.
pub async fn errors<S: Store + ?Sized>(store: &S) {
    let (content, digest) = create_content(512);
    let missing = sha256_of(b"never written");
    write_blob(
        store,
        WriterOpts::new("e1").digest(digest.clone()),
        &content[..],
        Labels::new(),
    )
    .await
    .expect("write blob");
    let info = store.info(&digest).await.expect("info");

    let missing_info = Info {
        digest: missing.clone(),
        ..info.clone()
    };
    assert_kind(
        store.update(missing_info, &[]).await,
        ErrorKind::NotFound,
        "update of a missing blob",
    );
    assert_kind(
        store.update(info.clone(), &["size"]).await,
        ErrorKind::InvalidArgument,
        "update of a field that is not a label",
    );
    assert_kind(
        store.writer(WriterOpts::new("")).await,
        ErrorKind::InvalidArgument,
        "a writer without a ref",
    );
    assert_kind(
        store
            .writer(WriterOpts::new("e2").digest(digest.clone()))
            .await,
        ErrorKind::AlreadyExists,
        "a writer for a blob that exists",
    );
    assert_kind(
        store.status("nope").await,
        ErrorKind::NotFound,
        "status of no ingest",
    );
    assert_kind(
        store.info(&missing).await,
        ErrorKind::NotFound,
        "info of a missing blob",
    );

    let (other, other_digest) = create_content(64);
    let mut w = open(store, WriterOpts::new("e3")).await;
    w.write_all(&other).await.expect("write");
    w.commit(None, None, Labels::new()).await.expect("commit");
    assert_kind(
        w.commit(None, None, Labels::new()).await,
        ErrorKind::FailedPrecondition,
        "a second commit",
    );
    drop(w);

    let mut walked = Vec::new();
    let by_digest = format!("digest=={digest}");
    store
        .walk(&[by_digest.as_str()], &mut |info| {
            walked.push(info.digest);
            Ok(())
        })
        .await
        .expect("walk by digest");
    assert_eq!(walked, vec![digest.clone()], "not {other_digest}");
    assert_kind(
        store.walk(&["name=x"], &mut |_| Ok(())).await,
        ErrorKind::InvalidArgument,
        "a walk filter that does not parse",
    );

    let a = open(store, WriterOpts::new("a")).await;
    let b = open(store, WriterOpts::new("b")).await;
    let listed = store.list_statuses(&["ref==a"]).await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|s| s.reference.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_kind(
        store.list_statuses(&["ref=a"]).await,
        ErrorKind::InvalidArgument,
        "a status filter that does not parse",
    );
    for mut w in [a, b] {
        w.shutdown().await.expect("close");
    }
}

/// A label's key and value together may take 4096 bytes and no more, at
/// commit and on update; a refused update leaves the labels as they were.
pub async fn label_limits<S: Store + ?Sized>(store: &S) {
    let at_limit = Labels::from([("key".to_string(), "v".repeat(4096 - 3))]);
    let over_limit = Labels::from([("key".to_string(), "v".repeat(4097 - 3))]);

    let (content, digest) = create_content(128);
    let mut w = open(store, WriterOpts::new("l1")).await;
    w.write_all(&content).await.expect("write");
    assert_kind(
        w.commit(None, Some(&digest), over_limit.clone()).await,
        ErrorKind::InvalidArgument,
        "commit with a label over the limit",
    );
    drop(w);
    assert_kind(
        store.info(&digest).await,
        ErrorKind::NotFound,
        "a blob refused for its labels",
    );

    let mut w = crate::open_writer(store, WriterOpts::new("l1"))
        .await
        .expect("reopen");
    w.commit(None, Some(&digest), at_limit.clone())
        .await
        .expect("commit with a label at the limit");
    let info = store.info(&digest).await.expect("info");
    assert_eq!(info.labels, at_limit);

    for fieldpaths in [&[][..], &["labels"], &["labels.key"]] {
        let wanted = Info {
            labels: over_limit.clone(),
            ..info.clone()
        };
        assert_kind(
            store.update(wanted, fieldpaths).await,
            ErrorKind::InvalidArgument,
            &format!("update {fieldpaths:?} over the limit"),
        );
        assert_eq!(
            store.info(&digest).await.expect("info").labels,
            at_limit,
            "{fieldpaths:?}: labels unchanged"
        );
    }
}
