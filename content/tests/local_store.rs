//! The local store's own promises, beyond containerd's suite: locks across
//! processes, resume after SIGKILL, checkpoints that never lie, walks, and
//! properties over any bytes, chunking and interruption point.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ocidist_content::local::LocalStore;
use ocidist_content::testsuite::create_content;
use ocidist_content::{
    CopySource, Digest, DigestAlgorithm, ErrorKind, IngestManager, Ingester, Labels, Manager,
    Provider, Writer, WriterOpts, copy, descriptor, digest_of, read_blob, sha256_of, write_blob,
};
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;

const CHILD_ROLE: &str = "OCIDIST_TEST_CHILD_ROLE";
const CHILD_ROOT: &str = "OCIDIST_TEST_CHILD_ROOT";

fn store() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalStore::open(dir.path()).expect("open");
    (dir, store)
}

/// The files under `blobs/`, for asserting nothing unverified landed there.
fn blob_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join("blobs"), &mut out);
    out
}

/// The one ingest directory of a store that has exactly one ingest.
fn only_ingest_dir(root: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "expected one ingest: {dirs:?}");
    dirs.pop().unwrap()
}

/// Inverts the byte at `index` of the file at `path`; returns the new content.
fn flip_byte(path: &Path, index: usize) -> Vec<u8> {
    let mut data = std::fs::read(path).unwrap();
    data[index] ^= 0xff;
    std::fs::write(path, &data).unwrap();
    data
}

/// Starts this test binary again as a child playing `role` on the store at `root`.
fn spawn_child(role: &str, root: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ROLE, role)
        .env(CHILD_ROOT, root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child test process")
}

/// Reads the child's stdout until a line equal to `want`.
fn wait_for_line(child: &mut Child, want: &str) {
    let stdout = child.stdout.as_mut().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).unwrap();
        assert!(n > 0, "child exited before printing {want:?}");
        if line.trim_end().ends_with(want) {
            return;
        }
    }
}

/// The child side of the cross-process tests; run only by [`spawn_child`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as the child process of the cross-process tests"]
async fn child_process_entry() {
    let role = std::env::var(CHILD_ROLE).expect("only run as a child");
    let store = LocalStore::open(std::env::var(CHILD_ROOT).unwrap()).unwrap();
    match role.as_str() {
        "hold-lock" => {
            let _writer = store.writer(WriterOpts::new("shared-ref")).await.unwrap();
            println!("locked");
            std::io::stdout().flush().unwrap();
            // Hold the ref until the parent closes our stdin.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        }
        "slow-writer" => {
            let (content, digest) = crash_content();
            let opts = WriterOpts::new("crash-ref")
                .size(content.len() as u64)
                .digest(digest);
            let mut w = store.writer(opts).await.unwrap();
            let offset = w.status().await.unwrap().offset as usize;
            println!("writing");
            std::io::stdout().flush().unwrap();
            for piece in content[offset..].chunks(64 << 10) {
                w.write_all(piece).await.unwrap();
                w.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Never commits: the parent kills us first.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        "size-limited-writer" => {
            // SAFETY: plain calls that change only this child process: writes
            // past the limit then fail with EFBIG instead of raising SIGXFSZ.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: SIZE_LIMIT,
                    rlim_max: SIZE_LIMIT,
                };
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            }
            let (content, digest) = size_limited_content();
            let opts = WriterOpts::new("limited-ref")
                .size(content.len() as u64)
                .digest(digest.clone());
            let mut w = store.writer(opts).await.unwrap();
            let mut failure = None;
            let mut accepted = 0;
            for piece in content.chunks(64 << 10) {
                if let Err(e) = w.write_all(piece).await {
                    failure = Some(ocidist_content::Report::new(&e).to_string());
                    break;
                }
                accepted += piece.len();
            }
            println!("accepted: {accepted}");
            let failure = match failure {
                Some(failure) => failure,
                None => w
                    .commit(Some(content.len() as u64), Some(&digest), Labels::new())
                    .await
                    .expect_err("a write past the size limit must fail")
                    .to_string(),
            };
            println!("failed: {failure}");
            drop(w);
            // The failed writer has let go of the ref.
            let w = store.writer(WriterOpts::new("limited-ref")).await;
            println!("reopened: {}", w.is_ok());
            std::io::stdout().flush().unwrap();
        }
        other => panic!("unknown child role {other}"),
    }
}

/// 24 MiB of fixed content: long enough for the 64 MiB checkpoint interval not
/// to matter, and several kills at different offsets.
fn crash_content() -> (Vec<u8>, Digest) {
    fixed_content(24 << 20, 0x1234_5678_9abc_def1)
}

/// `len` pseudo-random bytes, the same for the same seed in every process.
fn fixed_content(len: usize, seed: u64) -> (Vec<u8>, Digest) {
    let mut state = seed;
    let content: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let digest = sha256_of(&content);
    (content, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_gets_unavailable_while_first_holds_the_ref() {
    let (dir, store) = store();
    let mut child = spawn_child("hold-lock", dir.path());
    wait_for_line(&mut child, "locked");

    let err = store
        .writer(WriterOpts::new("shared-ref"))
        .await
        .err()
        .expect("must be locked");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("shared-ref"), "{err}");
    let err = store.abort("shared-ref").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Unavailable,
        "abort of a held ref: {err}"
    );
    assert!(store.is_being_written("shared-ref").await.unwrap());
    // Asking takes no lock that stays: the holder is undisturbed, and the
    // answer does not change by being asked.
    assert!(store.is_being_written("shared-ref").await.unwrap());

    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert!(!store.is_being_written("shared-ref").await.unwrap());
    let mut w = store
        .writer(WriterOpts::new("shared-ref"))
        .await
        .expect("ref must be free once the other process exits");
    // Held in this process, by another writer's open file.
    assert!(store.is_being_written("shared-ref").await.unwrap());
    // A writer dropped unshut saves its state in the background, holding
    // the ref until done; shut down, it lets go as it is dropped.
    w.shutdown().await.unwrap();
    drop(w);
    assert!(!store.is_being_written("shared-ref").await.unwrap());
    let err = store.is_being_written("no-such-ref").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_with_sigkill_resumes_to_the_right_digest() {
    let (dir, store) = store();
    let (content, digest) = crash_content();
    // Kill the writer three times at growing offsets; each run resumes the last.
    let mut last_offset = 0;
    for threshold in [3u64 << 20, 9 << 20, 17 << 20] {
        let mut child = spawn_child("slow-writer", dir.path());
        wait_for_line(&mut child, "writing");
        loop {
            let offset = store
                .status("crash-ref")
                .await
                .map(|s| s.offset)
                .unwrap_or(0);
            if offset >= threshold {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(
            blob_files(dir.path()).is_empty(),
            "nothing may land in blobs/ uncommitted"
        );
        let status = store
            .status("crash-ref")
            .await
            .expect("ingest survives the kill");
        assert!(
            status.offset >= last_offset,
            "offset went back: {} < {last_offset}",
            status.offset
        );
        last_offset = status.offset;
    }

    let opts = WriterOpts::new("crash-ref")
        .size(content.len() as u64)
        .digest(digest.clone());
    let mut w = ocidist_content::open_writer(&store, opts).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, last_offset);
    let mut source = std::io::Cursor::new(content.clone());
    copy(
        w.as_mut(),
        CopySource::Seekable(&mut source),
        Some(content.len() as u64),
        Some(&digest),
        Labels::new(),
    )
    .await
    .expect("resumed copy commits");
    let read = read_blob(
        &store,
        &descriptor(digest.clone(), content.len() as u64),
        u64::MAX,
    )
    .await
    .unwrap();
    assert!(read == content);
    assert!(store.list_statuses(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn data_changed_behind_its_checkpoint_starts_the_ingest_over() {
    let (dir, store) = store();
    let (content, digest) = create_content(300_000);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    let started = w.status().await.unwrap().started_at;
    w.write_all(&content[..200_000]).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);

    // Damage far before the checkpoint's offset, as a bad disk or a hand
    // might: resuming those bytes would commit other bytes than were
    // received under the right digest, so the ingest starts over.
    let ingest_dir = only_ingest_dir(dir.path());
    flip_byte(&ingest_dir.join("data"), 10);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    let status = w.status().await.unwrap();
    assert_eq!(status.offset, 0, "nothing of the changed data is kept");
    assert!(status.started_at > started, "a new start: {status:?}");
    assert_eq!(std::fs::metadata(ingest_dir.join("data")).unwrap().len(), 0);
    assert_eq!(w.digest().await.unwrap(), sha256_of(b""));
    w.write_all(&content[..200_000]).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);

    // Damage just before the offset too (the bytes the old format kept a
    // copy of).
    flip_byte(&ingest_dir.join("data"), 199_999);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, 0);
    w.write_all(&content[..200_000]).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);

    // A torn checkpoint vouches for nothing: the data is hashed as it is.
    std::fs::write(
        ingest_dir.join("checkpoint"),
        b"ocidist-checkpoint-v1\ngarbage",
    )
    .unwrap();
    let data = flip_byte(&ingest_dir.join("data"), 10);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, 200_000);
    assert_eq!(w.digest().await.unwrap(), sha256_of(&data));
    // ...so the commit finds the damage, and nothing is committed.
    w.write_all(&content[200_000..]).await.unwrap();
    let err = w
        .commit(Some(content.len() as u64), Some(&digest), Labels::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ocidist_content::Error::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(store.info(&digest).await.unwrap_err().is_not_found());
}

/// Commits what `w` wrote as `content`, and checks the blob reads back whole.
async fn commit_and_read_back(
    mut w: Box<dyn Writer>,
    store: &LocalStore,
    content: &[u8],
    digest: Digest,
) {
    let size = content.len() as u64;
    w.commit(Some(size), Some(&digest), Labels::new())
        .await
        .unwrap();
    let read = read_blob(store, &descriptor(digest, size), u64::MAX)
        .await
        .unwrap();
    assert!(read == content);
}

/// The file size limit of the `size-limited-writer` child.
const SIZE_LIMIT: u64 = 20 << 20;

fn size_limited_content() -> (Vec<u8>, Digest) {
    fixed_content(40 << 20, 0x0f1e_2d3c_4b5a_6978)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_written_behind_that_fails_is_reported_with_its_file_and_the_ingest_resumes() {
    let (dir, store) = store();
    // A child whose files may not grow past 20 MiB writes 40 MiB: the chunk
    // written behind at 20 MiB fails with EFBIG, on its own thread.
    let child = spawn_child("size-limited-writer", dir.path());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let failure = stdout
        .lines()
        .find_map(|l| l.split_once("failed: ").map(|(_, failure)| failure))
        .unwrap_or_else(|| panic!("no failure reported: {stdout}"));
    assert!(
        failure.starts_with("write ") && failure.contains("/data: File too large"),
        "the error names the write, the ingest's data file and the cause: {failure}"
    );
    assert!(stdout.contains("reopened: true"), "{stdout}");
    // Reported by the writes that follow the failed chunk, not only at the
    // commit: a few chunks (buffered, hashing, written behind) past the limit.
    let accepted: u64 = stdout
        .lines()
        .find_map(|l| l.split_once("accepted: ").map(|(_, n)| n.parse().unwrap()))
        .unwrap();
    assert!(
        accepted <= SIZE_LIMIT + (4 << 20),
        "writes went on to {accepted} bytes after the write at {SIZE_LIMIT} failed"
    );
    assert!(
        blob_files(dir.path()).is_empty(),
        "nothing may be committed"
    );

    // The data on disk is a prefix of the content, and a resume completes it.
    let (content, digest) = size_limited_content();
    let opts = WriterOpts::new("limited-ref")
        .size(content.len() as u64)
        .digest(digest.clone());
    let mut w = store.writer(opts).await.unwrap();
    let offset = w.status().await.unwrap().offset as usize;
    assert!(
        offset > 0 && offset as u64 <= SIZE_LIMIT,
        "resumes from what the child wrote before the limit: {offset}"
    );
    w.write_all(&content[offset..]).await.unwrap();
    commit_and_read_back(w, &store, &content, digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_ingest_resumed_at_an_odd_offset_lands_exactly_and_bypasses_the_page_cache() {
    let (dir, store) = store();
    // Past the size at which a writer takes 4 MiB chunks (128 MiB), resumed at
    // an odd offset and ending at one, so every way of writing runs: buffered
    // pieces, direct 1 MiB and 4 MiB chunks written behind, a buffered tail.
    let (content, digest) = fixed_content((130 << 20) + 12_345, 0x5eed);
    let head = (5 << 20) + 777;
    let mut w = store.writer(WriterOpts::new("large-ref")).await.unwrap();
    for piece in content[..head].chunks(65_521) {
        w.write_all(piece).await.unwrap();
    }
    w.shutdown().await.unwrap();
    drop(w);
    let opts = WriterOpts::new("large-ref")
        .size(content.len() as u64)
        .digest(digest.clone());
    let mut w = store.writer(opts).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, head as u64);
    for piece in content[head..].chunks(100_003) {
        w.write_all(piece).await.unwrap();
    }
    w.commit(Some(content.len() as u64), Some(&digest), Labels::new())
        .await
        .unwrap();

    let blob = dir
        .path()
        .join("blobs")
        .join("sha256")
        .join(digest.digest());
    // Before anything reads it: the direct chunks never entered the page
    // cache. Through the page cache, at least the last 32 MiB would still be
    // there (pages are dropped only that far behind the end). On tmpfs,
    // everything is page cache.
    if !is_tmpfs(dir.path()) {
        let resident = resident_bytes(&blob);
        assert!(
            resident < 16 << 20,
            "{resident} bytes of the blob are in the page cache"
        );
    }
    assert!(std::fs::read(&blob).unwrap() == content);
}

/// Writes `piece` of `content` at the writer's offset, counting it.
async fn write_piece(w: &mut Box<dyn Writer>, content: &[u8], written: &mut usize, len: usize) {
    let end = (*written + len).min(content.len());
    w.write_all(&content[*written..end]).await.unwrap();
    *written = end;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_streaming_together_hash_their_chunks_in_pairs_and_every_digest_holds() {
    let (dir, store) = store();
    // One more stream than cores: while they all stream, their chunks are
    // hashed two at a time, one writer's with another's; alone, a writer
    // hashes its own beside the write. Every way between the two is crossed
    // below, at odd offsets.
    let streams = std::thread::available_parallelism().unwrap().get().max(2) + 1;
    let contents: Vec<(Vec<u8>, Digest)> = (0..streams)
        .map(|i| fixed_content((7 << 20) + 1_001 * i, 0xabc0 + i as u64))
        .collect();
    let opts = |i: usize| WriterOpts::new(format!("stream-{i}"));
    let mut writers = Vec::new();
    for i in 0..streams {
        writers.push(store.writer(opts(i)).await.unwrap());
    }
    let mut written = vec![0usize; streams];
    // The first writer streams alone for a while...
    write_piece(
        &mut writers[0],
        &contents[0].0,
        &mut written[0],
        (2 << 20) + 500_000,
    )
    .await;
    // ...then all of them, in turns, in pieces that do not divide a chunk.
    while written.iter().any(|&n| n < 4 << 20) {
        for i in 0..streams {
            write_piece(&mut writers[i], &contents[i].0, &mut written[i], 100_003).await;
        }
    }
    // Mid-stream, every way out of hashing in pairs keeps the digest: a
    // digest query...
    let (content, _) = &contents[1];
    assert_eq!(
        writers[1].digest().await.unwrap(),
        sha256_of(&content[..written[1]])
    );
    // ...a truncation to an odd offset, then more writing...
    let (content, _) = &contents[2];
    writers[2].truncate(1_234_567).await.unwrap();
    written[2] = 1_234_567;
    write_piece(&mut writers[2], content, &mut written[2], 3 << 20).await;
    // ...a commit against the wrong digest, which keeps every byte...
    let (content, digest) = &contents[0];
    write_piece(&mut writers[0], content, &mut written[0], content.len()).await;
    let wrong = sha256_of(b"not this");
    let err = writers[0]
        .commit(None, Some(&wrong), Labels::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let mut w = store.writer(opts(0)).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, content.len() as u64);
    assert_eq!(w.digest().await.unwrap(), *digest);
    writers[0] = w;
    // ...and a writer dropped mid-chunk, resumed.
    let last = streams - 1;
    write_piece(
        &mut writers[last],
        &contents[last].0,
        &mut written[last],
        77_777,
    )
    .await;
    drop(writers.pop());
    // A dropped writer saves in the background: this waits for its ref.
    let mut resumed = ocidist_content::open_writer(&store, opts(last))
        .await
        .unwrap();
    assert_eq!(resumed.status().await.unwrap().offset, written[last] as u64);
    assert_eq!(
        resumed.digest().await.unwrap(),
        sha256_of(&contents[last].0[..written[last]])
    );
    writers.push(resumed);

    // They finish one by one, the rest streaming on: the last ones stream
    // alone again.
    let mut writers: Vec<_> = writers.into_iter().enumerate().collect();
    while let Some((i, mut w)) = writers.pop() {
        for (j, other) in writers.iter_mut() {
            write_piece(other, &contents[*j].0, &mut written[*j], 1_500_007).await;
        }
        let (content, digest) = &contents[i];
        let rest = content.len() - written[i];
        write_piece(&mut w, content, &mut written[i], rest).await;
        commit_and_read_back(w, &store, content, digest.clone()).await;
    }
    assert_eq!(blob_files(dir.path()).len(), streams);
}

fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path; `stat` is written by the call.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        assert_eq!(libc::statfs(c.as_ptr(), &mut stat), 0);
        stat.f_type == libc::TMPFS_MAGIC
    }
}

/// How much of the file at `path` is in the page cache (`mincore`).
fn resident_bytes(path: &Path) -> u64 {
    let len = std::fs::metadata(path).unwrap().len();
    resident_bytes_in(path, 0..len)
}

/// How much of `range` of the file at `path` is in the page cache.
fn resident_bytes_in(path: &Path, range: std::ops::Range<u64>) -> u64 {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: `sysconf` reads no memory.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: a read-only shared mapping of an open file, only inspected with
    // `mincore` (which reads no page) and unmapped before returning; `vec`
    // holds one byte per page of the mapping.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(
            map,
            libc::MAP_FAILED,
            "mmap {path:?} ({len} bytes): {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::mincore(map, len, vec.as_mut_ptr()), 0);
        libc::munmap(map, len);
    }
    let pages = range.start as usize / page..(range.end as usize).div_ceil(page);
    vec[pages].iter().filter(|&&b| b & 1 == 1).count() as u64 * page as u64
}

#[tokio::test]
async fn close_writes_a_checkpoint_that_resumes_exactly() {
    let (dir, store) = store();
    let (content, digest) = create_content(3 << 20);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(&content[..(2 << 20) + 17]).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);
    let ingest_dir = only_ingest_dir(dir.path());
    assert!(
        ingest_dir.join("checkpoint").exists(),
        "close must save the digest state"
    );

    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(&content[(2 << 20) + 17..]).await.unwrap();
    w.commit(Some(content.len() as u64), Some(&digest), Labels::new())
        .await
        .unwrap();
}

/// A ref reopened for other content (another size or digest than the one
/// recorded) starts over: the bytes written belong to the old content.
#[tokio::test]
async fn a_ref_reopened_for_other_content_starts_over() {
    let (_dir, store) = store();
    let (old, old_digest) = create_content(3000);
    let (new, new_digest) = fixed_content(2000, 7);
    let declared = |size: usize, digest: &Digest| {
        WriterOpts::new("r")
            .size(size as u64)
            .digest(digest.clone())
    };
    let mut w = store.writer(declared(3000, &old_digest)).await.unwrap();
    w.write_all(&old[..1000]).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);

    // The same declaration resumes.
    let mut w = store.writer(declared(3000, &old_digest)).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, 1000);
    w.shutdown().await.unwrap();
    // Another digest, or another size, starts from nothing.
    for opts in [
        declared(2000, &new_digest),
        WriterOpts::new("r").size(2001),
        WriterOpts::new("r").size(2000).digest(new_digest.clone()),
    ] {
        let mut w = store.writer(opts.clone()).await.unwrap();
        let status = w.status().await.unwrap();
        assert_eq!((status.offset, status.total), (0, opts.size), "{opts:?}");
        w.write_all(&new[..500]).await.unwrap();
        w.shutdown().await.unwrap();
    }
    // The last declaration agreed with the one before: it resumed at 500.
    let mut w = store.writer(declared(2000, &new_digest)).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, 500);
    w.write_all(&new[500..]).await.unwrap();
    w.commit(None, None, Labels::new()).await.unwrap();
    let blob = read_blob(&store, &descriptor(new_digest, 2000), 1 << 20)
        .await
        .unwrap();
    assert_eq!(blob, new);
}

/// What an open declared goes with that open, as in containerd: a writer
/// that resumes the ref declaring nothing keeps the bytes, and commits what
/// it writes under its own digest, bound by no earlier size or digest (h76:
/// a re-run of `dist ingest` without `--expected-digest` failed against the
/// digest a killed run had given).
#[tokio::test]
async fn a_resume_that_declares_nothing_is_bound_by_no_earlier_declaration() {
    let (_dir, store) = store();
    let (old, old_digest) = create_content(3000);
    let (new, new_digest) = fixed_content(2000, 7);
    // The second time, a digest whose content never comes, as a mistyped
    // `--expected-digest`.
    let never = sha256_of(b"never written");
    for (declared, rest, digest) in [
        (&old_digest, &old[1000..], &old_digest),
        (&never, &new[..], &new_digest),
    ] {
        let declared = WriterOpts::new("r").size(3000).digest(declared.clone());
        let mut w = store.writer(declared).await.unwrap();
        w.write_all(&old[..1000]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);

        let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
        let status = w.status().await.unwrap();
        assert_eq!(
            (status.offset, status.total, status.expected),
            (1000, None, None)
        );
        if digest == &new_digest {
            w.truncate(0).await.unwrap();
        }
        w.write_all(rest).await.unwrap();
        w.commit(None, None, Labels::new()).await.unwrap();
        assert!(store.info(digest).await.is_ok(), "{digest}");
    }
    let blob = read_blob(&store, &descriptor(new_digest, 2000), 1 << 20)
        .await
        .unwrap();
    assert_eq!(blob, new);
}

#[tokio::test]
async fn wrong_digest_never_lands_and_keeps_the_ingest() {
    let (dir, store) = store();
    let (content, _) = create_content(4096);
    let wrong = sha256_of(b"something else");
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(&content).await.unwrap();
    let err = w
        .commit(None, Some(&wrong), Labels::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    let message = err.to_string();
    assert!(
        message.contains(&wrong.to_string()) && message.contains(&sha256_of(&content).to_string()),
        "{message}"
    );
    assert!(blob_files(dir.path()).is_empty());
    assert_eq!(store.status("r").await.unwrap().offset, 4096);
    // The lock was released: the ref reopens at once.
    store
        .writer(WriterOpts::new("r"))
        .await
        .expect("reopen after failed commit");
}

#[tokio::test]
async fn predeclared_size_bounds_writes_and_commit() {
    let (_dir, store) = store();
    let mut w = store.writer(WriterOpts::new("r").size(10)).await.unwrap();
    let err = w.write_all(&[0; 11]).await.unwrap_err();
    let err = ocidist_content::Error::from_io(err);
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    w.write_all(&[0; 5]).await.unwrap();
    let err = w.commit(None, None, Labels::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ocidist_content::Error::SizeMismatch {
                expected: 10,
                actual: 5,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn predeclared_existing_digest_is_already_exists_at_open() {
    let (_dir, store) = store();
    let data = b"exists";
    let digest = sha256_of(data);
    write_blob(
        &store,
        WriterOpts::new("a").digest(digest.clone()),
        &data[..],
        Labels::new(),
    )
    .await
    .unwrap();
    let err = store
        .writer(WriterOpts::new("b").digest(digest.clone()))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // write_blob treats it as success.
    write_blob(
        &store,
        WriterOpts::new("b").digest(digest),
        &data[..],
        Labels::new(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn missing_things_are_not_found() {
    let (_dir, store) = store();
    let digest = sha256_of(b"absent");
    assert_eq!(
        store.abort("nope").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.delete(&digest).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.info(&digest).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        store.status("nope").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let err = store
        .reader_at(&descriptor(digest.clone(), 0))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains(&digest.to_string()));
}

#[tokio::test]
async fn abort_removes_the_ingest_and_its_data() {
    let (dir, store) = store();
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(b"partial").await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);
    store.abort("r").await.unwrap();
    assert!(store.list_statuses(&[]).await.unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ingest"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let w = store.writer(WriterOpts::new("r")).await.unwrap();
    drop(w);
}

#[tokio::test]
async fn blobs_are_read_only_and_labels_survive_reopen() {
    let (dir, store) = store();
    let data = b"labelled";
    let digest = sha256_of(data);
    let labels = Labels::from([("app".to_string(), "web".to_string())]);
    write_blob(&store, WriterOpts::new("a"), &data[..], labels.clone())
        .await
        .unwrap();
    let mode = std::fs::metadata(store.blob_path(&digest))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o444);
    drop(store);
    let store = LocalStore::open(dir.path()).unwrap();
    assert_eq!(store.info(&digest).await.unwrap().labels, labels);
}

#[tokio::test]
async fn read_blob_refuses_blobs_over_the_limit() {
    let (_dir, store) = store();
    let data = vec![1u8; 100];
    let digest = sha256_of(&data);
    write_blob(&store, WriterOpts::new("a"), &data[..], Labels::new())
        .await
        .unwrap();
    let err = read_blob(&store, &descriptor(digest, 100), 99)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
    assert!(err.to_string().contains("limit of 99"), "{err}");
}

#[tokio::test]
async fn copy_reports_a_short_source_and_commits_nothing() {
    let (dir, store) = store();
    let (content, digest) = create_content(1000);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    let mut short = &content[..900];
    let err = copy(
        w.as_mut(),
        CopySource::Stream(&mut short),
        Some(1000),
        Some(&digest),
        Labels::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ocidist_content::Error::ShortRead {
                expected: 1000,
                actual: 900
            }
        ),
        "{err}"
    );
    assert!(blob_files(dir.path()).is_empty());
}

#[tokio::test]
async fn commit_with_a_sha512_digest_rehashes_a_sha256_ingest() {
    let (_dir, store) = store();
    let data = b"hash me twice";
    let sha512 = digest_of(&DigestAlgorithm::Sha512, data).unwrap();
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(data).await.unwrap();
    w.commit(None, Some(&sha512), Labels::new()).await.unwrap();
    assert_eq!(store.info(&sha512).await.unwrap().size, data.len() as u64);
}

#[tokio::test]
async fn walk_filters_over_a_hundred_sha256_and_sha512_blobs() {
    let (_dir, store) = store();
    let mut sha512_digests = Vec::new();
    for i in 0..100u32 {
        let data = format!("blob number {i}");
        let alg = if i % 2 == 0 {
            DigestAlgorithm::Sha256
        } else {
            DigestAlgorithm::Sha512
        };
        let digest = digest_of(&alg, data.as_bytes()).unwrap();
        if i % 2 == 1 {
            sha512_digests.push(digest.clone());
        }
        let mut labels = Labels::from([("parity".to_string(), (i % 2).to_string())]);
        if i % 10 == 0 {
            labels.insert("containerd.io/gc.root".into(), "yes".into());
        }
        let opts = WriterOpts::new(format!("walk-{i}")).digest(digest);
        write_blob(&store, opts, data.as_bytes(), labels)
            .await
            .unwrap();
    }
    let count = |filters: &'static [&'static str]| {
        let store = store.clone();
        async move {
            let mut n = 0;
            store
                .walk(filters, &mut |_| {
                    n += 1;
                    Ok(())
                })
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(count(&[]).await, 100);
    assert_eq!(count(&["labels.parity==1"]).await, 50);
    assert_eq!(count(&["labels.containerd.io/gc.root"]).await, 10);
    assert_eq!(
        count(&["labels.parity==0,labels.\"containerd.io/gc.root\"==yes"]).await,
        10
    );
    assert_eq!(
        count(&["labels.parity==1", "labels.containerd.io/gc.root"]).await,
        60
    );
    // containerd's regular expressions and its reading of an absent field
    // as empty: `!=""` is "set and not empty".
    assert_eq!(count(&["digest~=^sha512:"]).await, 50);
    assert_eq!(count(&["digest~=/^sha(256|384):/"]).await, 50);
    assert_eq!(count(&["labels.\"containerd.io/gc.root\"!=\"\""]).await, 10);
    assert_eq!(count(&["labels.nope!=\"\""]).await, 0);
    assert_eq!(count(&["labels.nope~=^$"]).await, 100);
    let one = format!("digest=={}", sha512_digests[3]);
    let mut seen = Vec::new();
    store
        .walk(&[one.as_str()], &mut |info| {
            seen.push(info.digest);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(seen, vec![sha512_digests[3].clone()]);
    let err = store
        .walk(&["labels.a~=(x"], &mut |_| Ok(()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn list_statuses_filters_by_ref() {
    let (_dir, store) = store();
    for name in ["layer-a", "layer-b", "config-c"] {
        let mut w = store.writer(WriterOpts::new(name).size(10)).await.unwrap();
        w.write_all(b"12345").await.unwrap();
        w.shutdown().await.unwrap();
    }
    let all = store.list_statuses(&[]).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|s| s.offset == 5 && s.total == Some(10)));
    let some = store
        .list_statuses(&["ref==layer-b", "ref==config-c"])
        .await
        .unwrap();
    let names: Vec<_> = some.iter().map(|s| s.reference.as_str()).collect();
    assert_eq!(names, ["config-c", "layer-b"]);
}

/// Stray files where the store keeps directories (a README, `.DS_Store`)
/// are not content, and do not stop a walk or a listing (or, with them, GC).
#[tokio::test]
async fn stray_files_beside_blobs_and_ingests_are_passed_over() {
    let (dir, store) = store();
    let digest = sha256_of(b"blob");
    let opts = WriterOpts::new("a").digest(digest.clone());
    write_blob(&store, opts, &b"blob"[..], Labels::new())
        .await
        .unwrap();
    let mut w = store.writer(WriterOpts::new("busy")).await.unwrap();
    w.write_all(b"12345").await.unwrap();
    w.shutdown().await.unwrap();
    std::fs::write(dir.path().join("blobs/README"), b"stray").unwrap();
    std::fs::write(dir.path().join("ingest/junk"), b"stray").unwrap();
    // An algorithm's directory kept elsewhere, linked in, is walked as ever.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("sha256");
    std::fs::rename(dir.path().join("blobs/sha256"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, dir.path().join("blobs/sha256")).unwrap();
    let mut walked = Vec::new();
    store
        .walk(&[], &mut |info| {
            walked.push(info.digest.clone());
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(walked, [digest]);
    let statuses = store.list_statuses(&[]).await.unwrap();
    let refs: Vec<_> = statuses.iter().map(|s| s.reference.as_str()).collect();
    assert_eq!(refs, ["busy"]);
}

/// An ingest moved to the trash is gone: what a process killed while
/// emptying it left goes at the next open, however young. A staging
/// directory that young may be another process's, being made: kept.
#[tokio::test]
async fn a_killed_removals_trash_goes_at_the_next_open() {
    let (dir, store) = store();
    let ingest = dir.path().join("ingest");
    let trash = ingest.join(".trash-4242-1");
    let staging = ingest.join(".tmp-4242-2");
    for leftover in [&trash, &staging] {
        std::fs::create_dir(leftover).unwrap();
        std::fs::write(leftover.join("data"), vec![1u8; 1 << 20]).unwrap();
    }
    drop(store);
    let _store = LocalStore::open(dir.path()).unwrap();
    assert!(!trash.exists(), "the trash is emptied");
    assert!(staging.join("data").exists(), "a young staging dir stays");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any bytes, any chunking, interrupted at any point (dropped or closed),
    /// resume to the same digest and size.
    #[test]
    fn any_interrupted_ingest_resumes_to_the_same_blob(
        data in proptest::collection::vec(any::<u8>(), 0..200_000),
        chunk in 1usize..70_000,
        cut in 0.0f64..=1.0,
        close_cleanly in any::<bool>(),
        sha512 in any::<bool>(),
    ) {
        runtime().block_on(async {
            let (dir, store) = store();
            let alg = if sha512 { DigestAlgorithm::Sha512 } else { DigestAlgorithm::Sha256 };
            let digest = digest_of(&alg, &data).unwrap();
            let cut = (data.len() as f64 * cut) as usize;
            let opts = WriterOpts::new("prop").size(data.len() as u64).digest(digest.clone());
            let mut w = store.writer(opts.clone()).await.unwrap();
            for piece in data[..cut].chunks(chunk) {
                w.write_all(piece).await.unwrap();
            }
            if close_cleanly {
                w.shutdown().await.unwrap();
            }
            drop(w);
            // A dropped writer saves in the background: wait for the ref.
            let mut w = ocidist_content::open_writer(&store, opts).await.unwrap();
            let offset = w.status().await.unwrap().offset as usize;
            prop_assert_eq!(offset, cut);
            prop_assert_eq!(w.digest().await.unwrap(), digest_of(&alg, &data[..cut]).unwrap());
            for piece in data[cut..].chunks(chunk) {
                w.write_all(piece).await.unwrap();
            }
            w.commit(None, None, Labels::new()).await.unwrap();
            let info = store.info(&digest).await.unwrap();
            prop_assert_eq!(info.size, data.len() as u64);
            prop_assert_eq!(blob_files(dir.path()).len(), 1);
            Ok(())
        })?;
    }

    /// A wrong expected digest never lands in blobs/, whatever the data.
    #[test]
    fn wrong_expected_digest_never_lands(
        data in proptest::collection::vec(any::<u8>(), 0..50_000),
        flip in any::<usize>(),
    ) {
        runtime().block_on(async {
            let (dir, store) = store();
            let mut wrong_data = data.clone();
            if wrong_data.is_empty() {
                wrong_data.push(0);
            } else {
                let i = flip % wrong_data.len();
                wrong_data[i] ^= 1;
            }
            let wrong = sha256_of(&wrong_data);
            let mut w = store.writer(WriterOpts::new("prop")).await.unwrap();
            w.write_all(&data).await.unwrap();
            let err = w.commit(None, Some(&wrong), Labels::new()).await.unwrap_err();
            prop_assert_eq!(err.kind(), ErrorKind::FailedPrecondition);
            prop_assert!(blob_files(dir.path()).is_empty());
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn ingest_left_by_a_commit_that_died_after_the_move_restarts_empty() {
    let (dir, store) = store();
    let (content, digest) = create_content(10_000);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(&content).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);
    // What a commit leaves if killed between moving the data and removing the
    // ingest directory: the blob in place, the directory without data.
    let ingest_dir = only_ingest_dir(dir.path());
    let blob = store.blob_path(&digest);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::rename(ingest_dir.join("data"), &blob).unwrap();

    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    assert_eq!(
        w.status().await.unwrap().offset,
        0,
        "the leftover resumes as an empty ingest"
    );
    w.write_all(b"other bytes").await.unwrap();
    w.commit(None, None, Labels::new()).await.unwrap();
    assert!(
        std::fs::read(&blob).unwrap() == content,
        "the blob must be untouched"
    );
}

#[tokio::test]
async fn an_intact_resume_continues_from_its_checkpoint() {
    let (dir, store) = store();
    let (content, digest) = create_content(2 << 20);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(&content[..1 << 20]).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);
    let ingest_dir = only_ingest_dir(dir.path());
    assert!(ingest_dir.join("checkpoint").exists());

    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    assert_eq!(w.status().await.unwrap().offset, 1 << 20);
    assert_eq!(w.digest().await.unwrap(), sha256_of(&content[..1 << 20]));
    w.write_all(&content[1 << 20..]).await.unwrap();
    assert_eq!(w.digest().await.unwrap(), digest);
    w.commit(Some(content.len() as u64), Some(&digest), Labels::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_emptied_ingest_json_or_a_missing_lock_file_does_not_strand_the_ref() {
    let (dir, store) = store();
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(b"partial").await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);
    let ingest_dir = only_ingest_dir(dir.path());
    // What a power loss can leave of a file that was never fsynced.
    std::fs::write(ingest_dir.join("ingest.json"), b"").unwrap();
    assert!(
        store.list_statuses(&[]).await.unwrap().is_empty(),
        "listing skips it"
    );
    let mut w = store
        .writer(WriterOpts::new("r"))
        .await
        .expect("the writer rewrites ingest.json");
    assert_eq!(w.status().await.unwrap().offset, 7, "the data is kept");
    w.shutdown().await.unwrap();
    drop(w);
    assert_eq!(store.status("r").await.unwrap().offset, 7);

    std::fs::remove_file(ingest_dir.join("lock")).unwrap();
    assert!(!store.is_being_written("r").await.unwrap());
    let w = store
        .writer(WriterOpts::new("r"))
        .await
        .expect("a missing lock file is recreated");
    drop(w);
}

#[tokio::test]
async fn ingest_data_still_linked_to_a_blob_is_never_written_through() {
    let (dir, store) = store();
    let (content, digest) = create_content(5000);
    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    w.write_all(&content).await.unwrap();
    w.shutdown().await.unwrap();
    drop(w);
    // What a link-then-unlink commit killed between the two leaves.
    let data = only_ingest_dir(dir.path()).join("data");
    let blob = store.blob_path(&digest);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::hard_link(&data, &blob).unwrap();

    let mut w = store.writer(WriterOpts::new("r")).await.unwrap();
    assert_eq!(
        w.status().await.unwrap().offset,
        0,
        "a fresh ingest, not the blob's inode"
    );
    w.write_all(b"new bytes").await.unwrap();
    w.truncate(0).await.unwrap();
    w.write_all(b"other").await.unwrap();
    drop(w);
    assert!(
        std::fs::read(&blob).unwrap() == content,
        "the blob is untouched"
    );
}

#[tokio::test]
async fn an_ingest_can_be_read_while_it_is_written_and_after_its_commit() {
    let (_dir, store) = store();
    let missing = store.ingest_reader_at("nobody").await.err().unwrap();
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    // 48 MiB: the writer drops pages 32 MiB behind its end from the page
    // cache, so the reader reads those back from disk.
    let (content, digest) = create_content(48 << 20);
    let mut w = store.writer(WriterOpts::new("growing")).await.unwrap();
    w.write_all(&content[..1000]).await.unwrap();
    w.flush().await.unwrap();
    let reader = store.ingest_reader_at("growing").await.unwrap();
    assert_eq!(reader.size(), 1000, "the length when opened");
    let mut buf = vec![0u8; 4096];
    assert_eq!(reader.read_at(0, &mut buf).await.unwrap(), 1000);
    assert_eq!(&buf[..1000], &content[..1000]);

    // Later writes show through the same reader, past its size.
    w.write_all(&content[1000..]).await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(reader.read_at(1000, &mut buf).await.unwrap(), 4096);
    assert_eq!(&buf[..], &content[1000..5096]);
    let mut whole = vec![0u8; content.len()];
    let mut at = 0;
    while at < whole.len() {
        let n = reader.read_at(at as u64, &mut whole[at..]).await.unwrap();
        assert!(n > 0, "short at {at}");
        at += n;
    }
    assert!(whole == content, "every byte reads back before the commit");

    // After the commit the reader still reads every byte: the file moved.
    w.commit(Some(content.len() as u64), Some(&digest), Labels::new())
        .await
        .unwrap();
    let tail = content.len() as u64 - 100;
    assert_eq!(reader.read_at(tail, &mut buf).await.unwrap(), 100);
    assert_eq!(&buf[..100], &content[content.len() - 100..]);
    let gone = store.ingest_reader_at("growing").await.err().unwrap();
    assert_eq!(gone.kind(), ErrorKind::NotFound);
}

/// A blob small enough to be committed from the writer's buffer, never
/// flushed, still reaches a reader that followed its ingest.
#[tokio::test]
async fn a_follower_reads_a_small_blob_committed_from_the_writers_buffer() {
    let (_dir, store) = store();
    let (content, digest) = create_content(100 << 10);
    let mut w = store.writer(WriterOpts::new("small")).await.unwrap();
    let reader = store.ingest_reader_at("small").await.unwrap();
    w.write_all(&content).await.unwrap();
    w.commit(Some(content.len() as u64), Some(&digest), Labels::new())
        .await
        .unwrap();
    let mut whole = vec![0u8; content.len()];
    let mut at = 0;
    while at < whole.len() {
        let n = reader.read_at(at as u64, &mut whole[at..]).await.unwrap();
        assert!(n > 0, "the reader found {at} bytes of {}", content.len());
        at += n;
    }
    assert!(whole == content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_read_as_it_grows_goes_through_the_page_cache_until_its_reader_goes() {
    let (dir, store) = store();
    let (content, digest) = create_content(40 << 20);
    let half = 20 << 20;
    let mut w = store.writer(WriterOpts::new("followed")).await.unwrap();
    let reader = store.ingest_reader_at("followed").await.unwrap();
    w.write_all(&content[..half]).await.unwrap();
    w.flush().await.unwrap();
    let data = only_ingest_dir(dir.path()).join("data");
    // A pull unpacks a layer from its ingest as it downloads: the chunks it
    // is about to read stay in the page cache for it.
    let resident = resident_bytes_in(&data, 0..half as u64);
    assert!(
        resident >= 16 << 20,
        "only {resident} bytes of the followed part are in the page cache"
    );
    let mut buf = vec![0u8; 1 << 20];
    reader
        .read_at(half as u64 - (1 << 20), &mut buf)
        .await
        .unwrap();
    assert!(buf[..] == content[half - (1 << 20)..half]);

    // Without a reader, whole chunks bypass it again.
    drop(reader);
    w.write_all(&content[half..]).await.unwrap();
    w.flush().await.unwrap();
    if !is_tmpfs(dir.path()) {
        let resident = resident_bytes_in(&data, (half as u64 + (1 << 20))..content.len() as u64);
        assert!(
            resident < 4 << 20,
            "{resident} bytes written with no reader are in the page cache"
        );
    }
    commit_and_read_back(w, &store, &content, digest).await;
}

/// Two commits of one blob at once, with different labels: the blob keeps
/// the labels of the commit that succeeded; the other, `AlreadyExists`,
/// changes nothing (containerd's metadata store rules the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_commits_of_one_blob_the_labels_of_the_one_that_published_stay() {
    let (_dir, store) = store();
    for round in 0..40u32 {
        let content = format!("shared content {round}").into_bytes();
        let digest = sha256_of(&content);
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let commit = |who: &'static str| {
            let (store, content, barrier) = (store.clone(), content.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut w = store
                    .writer(WriterOpts::new(format!("{who}-{round}")))
                    .await
                    .unwrap();
                w.write_all(&content).await.unwrap();
                barrier.wait().await;
                let labels = Labels::from([("committer".to_string(), who.to_string())]);
                w.commit(None, None, labels).await.map(|()| who)
            })
        };
        let (a, b) = (commit("a"), commit("b"));
        let outcomes = [a.await.unwrap(), b.await.unwrap()];
        let winners: Vec<&str> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok().copied())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        for outcome in &outcomes {
            if let Err(e) = outcome {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
            }
        }
        let info = store.info(&digest).await.unwrap();
        assert_eq!(info.labels["committer"], winners[0], "round {round}");
    }
}

/// Labels a crashed commit staged but never installed go when the store is
/// next opened, an hour on; fresh ones (another process's commit) stay.
#[test]
fn staged_labels_left_by_a_crash_are_cleared_at_open() {
    let dir = tempfile::tempdir().unwrap();
    LocalStore::open(dir.path()).unwrap();
    let labels = dir.path().join("labels/sha256");
    std::fs::create_dir_all(&labels).unwrap();
    let (old, fresh) = (labels.join(".stage-1-old"), labels.join(".stage-2-fresh"));
    for path in [&old, &fresh] {
        std::fs::write(path, b"{}").unwrap();
    }
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    LocalStore::open(dir.path()).unwrap();
    assert!(!old.exists(), "the crash's leftover is gone");
    assert!(fresh.exists(), "a fresh one may be a commit in progress");
}

/// A commit that died between moving its data into `blobs/` and removing
/// its ingest directory left a directory no listing shows: the next open
/// removes it, however fresh, and leaves one a writer holds (as a commit
/// does until the directory is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_a_killed_commit_emptied_is_cleared_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut dirs = Vec::new();
    let mut held = None;
    for name in ["dead", "held"] {
        let mut writer = ocidist_content::Ingester::writer(
            &store,
            ocidist_content::WriterOpts::new(format!("emptied-{name}")),
        )
        .await
        .unwrap();
        writer.write_all(name.as_bytes()).await.unwrap();
        let ingests: Vec<_> = std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !dirs.contains(p))
            .collect();
        let [ingest] = &ingests[..] else {
            panic!("one new ingest directory: {ingests:?}")
        };
        if name == "held" {
            held = Some(writer);
        } else {
            writer.shutdown().await.unwrap();
            drop(writer);
        }
        std::fs::remove_file(ingest.join("data")).unwrap();
        dirs.push(ingest.clone());
    }
    LocalStore::open(dir.path()).unwrap();
    assert!(!dirs[0].exists(), "the emptied ingest is gone");
    assert!(dirs[1].exists(), "one a writer holds stays");
    let mut held = held.unwrap();
    held.shutdown().await.unwrap();
    drop(held);
    LocalStore::open(dir.path()).unwrap();
    assert!(!dirs[1].exists(), "released, it goes too");
}

/// Content of unknown digest, written twice: the second writer's commit finds
/// the blob there, and can still say which blob that was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_finds_the_blob_still_says_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let data = b"cached build output";
    for round in 0..2 {
        let mut writer = ocidist_content::Ingester::writer(
            &store,
            ocidist_content::WriterOpts::new(format!("cache-{round}")),
        )
        .await
        .unwrap();
        writer.write_all(data).await.unwrap();
        let committed = writer
            .commit(None, None, ocidist_content::Labels::new())
            .await;
        assert_eq!(committed.is_ok(), round == 0, "{committed:?}");
        assert_eq!(
            writer.digest().await.unwrap(),
            ocidist_content::sha256_of(data)
        );
    }
}

/// A resumed ingest whose bytes are not the source's is emptied: from a
/// stream the mismatch is said (the prefix it held hashed as it is skipped,
/// with or without a size) and the next attempt starts over; a fresh ingest
/// keeps its bytes as `Writer::commit` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_ingest_that_hashes_wrong_starts_over() {
    use ocidist_content::{CopySource, ErrorKind, IngestManager, Labels, WriterOpts, copy};
    for sized in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let good = b"the right bytes".to_vec();
        let mut bad = good.clone();
        bad[0] ^= 1;
        let digest = ocidist_content::sha256_of(&good);
        let mut opts = WriterOpts::new("r").digest(digest.clone());
        if sized {
            opts = opts.size(good.len() as u64);
        }
        let attempt = |bytes: Vec<u8>| {
            let store = &store;
            let opts = opts.clone();
            let digest = digest.clone();
            async move {
                let mut writer = ocidist_content::open_writer(store, opts).await.unwrap();
                let mut stream: &[u8] = &bytes;
                copy(
                    writer.as_mut(),
                    CopySource::Stream(&mut stream),
                    sized.then_some(bytes.len() as u64),
                    Some(&digest),
                    Labels::new(),
                )
                .await
            }
        };
        let kept = attempt(bad.clone()).await.unwrap_err();
        assert_eq!(kept.kind(), ErrorKind::FailedPrecondition, "{kept}");
        assert_eq!(store.status("r").await.unwrap().offset, good.len() as u64);
        let emptied = attempt(good.clone()).await.unwrap_err();
        assert_eq!(emptied.kind(), ErrorKind::FailedPrecondition, "{emptied}");
        assert_eq!(store.status("r").await.unwrap().offset, 0, "sized: {sized}");
        attempt(good).await.unwrap();
    }
}

#[tokio::test]
async fn verify_blob_reads_a_committed_blob_again_and_names_what_went_bad() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let bytes = b"committed and verified once".to_vec();
    let desc = ocidist_content::Descriptor::new(
        "application/octet-stream".into(),
        bytes.len() as u64,
        ocidist_content::sha256_of(&bytes),
    );
    ocidist_content::write_blob(
        &store,
        ocidist_content::WriterOpts::new("v"),
        &bytes[..],
        ocidist_content::Labels::new(),
    )
    .await
    .unwrap();
    ocidist_content::verify_blob(&store, &desc).await.unwrap();

    let path = store.blob_path(desc.digest());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let said = |e: ocidist_content::Error| {
        assert_eq!(
            e.kind(),
            ocidist_content::ErrorKind::FailedPrecondition,
            "{e}"
        );
        assert!(
            matches!(&e, ocidist_content::Error::BlobCorrupt { digest, .. } if digest == desc.digest()),
            "{e:?}"
        );
        e.to_string()
    };
    let mut flipped = bytes.clone();
    flipped[3] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let e = ocidist_content::verify_blob(&store, &desc)
        .await
        .unwrap_err();
    assert!(said(e).contains("its bytes hash to"));
    std::fs::write(&path, &bytes[..5]).unwrap();
    let e = ocidist_content::verify_blob(&store, &desc)
        .await
        .unwrap_err();
    assert!(said(e).contains(&format!("5 bytes, not {}", bytes.len())));
    std::fs::remove_file(&path).unwrap();
    let e = ocidist_content::verify_blob(&store, &desc)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

/// containerd's `ReadBlob`: a descriptor's embedded data answers when it is
/// what the descriptor says; data that is not (another blob's, or not
/// base64) is ignored and the store is asked.
#[tokio::test]
async fn read_blob_answers_from_embedded_data_only_when_it_checks_out() {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let blob = b"{\"architecture\":\"amd64\"}";
    let mut desc = descriptor(sha256_of(blob), blob.len() as u64);

    desc.set_data(Some(encode(blob)));
    assert_eq!(read_blob(&store, &desc, 1 << 20).await.unwrap(), blob);
    let err = read_blob(&store, &desc, 4).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");

    // Same size, other bytes; then not base64: the store is asked, and
    // it lacks the blob.
    let other = b"{\"architecture\":\"arm64\"}";
    for data in [encode(other), "not base64!".to_string()] {
        desc.set_data(Some(data));
        let err = read_blob(&store, &desc, 1 << 20).await.unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
    // Once the store has it, the store answers.
    let opts = WriterOpts::new("embedded").descriptor(&desc);
    write_blob(&store, opts, blob.as_slice(), Labels::new())
        .await
        .unwrap();
    assert_eq!(read_blob(&store, &desc, 1 << 20).await.unwrap(), blob);
}
