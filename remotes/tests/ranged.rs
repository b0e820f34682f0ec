//! Large blobs fetched as parallel ranged requests from the real registry,
//! behind the fault proxy that records each request's `Range`: the bytes
//! arrive whole and in order, a resume starts its ranges at the offset, one
//! blob at a time is fetched this way, and a cut or corrupted range ends in a
//! resumed download or a digest mismatch with nothing committed; a later
//! range answered with the whole blob is resumed in one request.

mod common;

use common::{Blob, blob, push_all, registry, stores};
use ocidist_content::{ErrorKind, IngestManager, Manager};
use ocidist_images::Handler;
use ocidist_remotes::docker::{DockerResolver, RangedFetch};
use ocidist_remotes::testkit::{Fault, FaultProxy, Registry};
use ocidist_remotes::{Fetcher, Resolver, fetch_handler};

const CHUNK: u64 = 256 << 10;

fn settings() -> RangedFetch {
    RangedFetch {
        chunk_size: CHUNK,
        parallel: 3,
        min_size: 1 << 20,
        blobs: 1,
        loopback: true,
    }
}

fn layer(size: usize, seed: u32) -> Blob {
    let bytes = (0..size)
        .map(|i| {
            ((i as u32) ^ seed.wrapping_mul(0x9e37_79b9))
                .wrapping_mul(2654435761)
                .to_le_bytes()[2]
        })
        .collect();
    blob("application/vnd.oci.image.layer.v1.tar", bytes)
}

/// A registry holding `blobs` in `repo`, and a proxy in front of it.
async fn setup(repo: &str, blobs: &[Blob]) -> (Registry, FaultProxy) {
    let registry = registry();
    let pusher = DockerResolver::new()
        .pusher(&format!("{}/{repo}:x", registry.host()))
        .await
        .unwrap();
    push_all(pusher.as_ref(), blobs).await;
    let proxy = FaultProxy::start(registry.addr()).unwrap();
    (registry, proxy)
}

async fn fetch_blob(fetcher: &dyn Fetcher, blob: &Blob, offset: u64) -> Vec<u8> {
    common::fetch_all(fetcher, &blob.desc, offset).await
}

/// The `Range` values of the GETs of `blob` in the proxy's log, sorted.
fn ranges_of(proxy: &FaultProxy, blob: &Blob) -> Vec<String> {
    let digest = blob.desc.digest().to_string();
    let mut ranges: Vec<String> = proxy
        .log()
        .into_iter()
        .filter(|l| l.starts_with("GET ") && l.contains(&digest))
        .map(|l| {
            l.split_once(" range=")
                .map_or(String::new(), |(_, r)| r.to_string())
        })
        .collect();
    ranges.sort_by_key(|r| {
        r.trim_start_matches("bytes=")
            .split('-')
            .next()
            .and_then(|s| s.parse::<u64>().ok())
    });
    ranges
}

fn expected_ranges(from: u64, size: u64) -> Vec<String> {
    (from..size)
        .step_by(CHUNK as usize)
        .map(|start| format!("bytes={start}-{}", (start + CHUNK).min(size) - 1))
        .collect()
}

#[tokio::test]
async fn a_large_blob_arrives_whole_from_parallel_ranges_and_resumes_at_its_offset() {
    let (big, small) = (layer(3 << 20 | 12_345, 1), layer(500_000, 2));
    let (_registry, proxy) = setup("ranged/app", &[big.clone(), small.clone()]).await;
    let resolver = DockerResolver::new().ranged_fetch(settings());
    let fetcher = resolver
        .fetcher(&format!("{}/ranged/app:x", proxy.host()))
        .await
        .unwrap();

    assert!(fetch_blob(fetcher.as_ref(), &big, 0).await == big.bytes);
    let size = big.desc.size();
    assert_eq!(ranges_of(&proxy, &big), expected_ranges(0, size));

    // A resume: the ranges start at the offset, not at a chunk boundary.
    let log_before = proxy.log().len();
    let offset = 1_000_001;
    assert!(fetch_blob(fetcher.as_ref(), &big, offset).await == big.bytes[offset as usize..]);
    let resumed: Vec<String> = proxy.log()[log_before..]
        .iter()
        .filter_map(|l| l.split_once(" range=").map(|(_, r)| r.to_string()))
        .collect();
    assert_eq!(resumed.len(), expected_ranges(offset, size).len());
    assert!(resumed.contains(&format!("bytes={offset}-{}", offset + CHUNK - 1)));

    // Below the threshold: one request, no Range.
    assert!(fetch_blob(fetcher.as_ref(), &small, 0).await == small.bytes);
    assert_eq!(ranges_of(&proxy, &small), [String::new()]);

    // The default leaves loopback registries to one request per blob.
    let plain = DockerResolver::new()
        .fetcher(&format!("{}/ranged/app:x", proxy.host()))
        .await
        .unwrap();
    let log_before = proxy.log().len();
    assert!(fetch_blob(plain.as_ref(), &big, 0).await == big.bytes);
    assert!(
        proxy.log()[log_before..]
            .iter()
            .all(|l| !l.contains(" range=")),
        "{:#?}",
        &proxy.log()[log_before..]
    );
}

/// A descriptor that claims far more than the blob (2^62 bytes, a hostile
/// manifest) ends in an error at the first range, whose `Content-Range`
/// gives the blob's real size, not in a list of 2^40 ranges.
#[tokio::test]
async fn a_descriptor_claiming_an_absurd_size_fails_cleanly() {
    let big = layer(2 << 20, 5);
    let (_registry, proxy) = setup("ranged/liar", std::slice::from_ref(&big)).await;
    let resolver = DockerResolver::new().ranged_fetch(settings());
    let fetcher = resolver
        .fetcher(&format!("{}/ranged/liar:x", proxy.host()))
        .await
        .unwrap();
    let mut liar = big.desc.clone();
    liar.set_size(1 << 62);
    let fetched = async {
        let stream = fetcher.fetch(&liar, 0).await?;
        futures::TryStreamExt::try_collect::<Vec<bytes::Bytes>>(stream).await
    };
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), fetched)
        .await
        .expect("ends by itself")
        .unwrap_err();
    assert!(
        err.to_string().contains("the registry's is 2097152"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    let ranges = proxy.log().iter().filter(|l| l.contains(" range=")).count();
    assert_eq!(ranges, 1, "{:#?}", proxy.log());
}

#[tokio::test]
async fn one_blob_at_a_time_is_fetched_in_ranges() {
    let (a, b) = (layer(2 << 20, 3), layer(2 << 20, 4));
    let (_registry, proxy) = setup("ranged/two", &[a.clone(), b.clone()]).await;
    let resolver = DockerResolver::new().ranged_fetch(settings());
    let fetcher = resolver
        .fetcher(&format!("{}/ranged/two:x", proxy.host()))
        .await
        .unwrap();
    let (got_a, got_b) = tokio::join!(
        fetch_blob(fetcher.as_ref(), &a, 0),
        fetch_blob(fetcher.as_ref(), &b, 0)
    );
    assert!(got_a == a.bytes && got_b == b.bytes);
    let mut shapes = [ranges_of(&proxy, &a).len(), ranges_of(&proxy, &b).len()];
    shapes.sort();
    assert_eq!(shapes, [1, (2 << 20) / CHUNK as usize]);
}

#[tokio::test]
async fn a_cut_range_resumes_and_a_corrupted_range_is_never_committed() {
    let (cut, flipped) = (layer(2 << 20, 5), layer(2 << 20, 6));
    let (_registry, proxy) = setup("ranged/faults", &[cut.clone(), flipped.clone()]).await;
    let resolver = DockerResolver::new().ranged_fetch(settings());
    let fetcher = resolver
        .fetcher(&format!("{}/ranged/faults:x", proxy.host()))
        .await
        .unwrap();
    let (_dir, store, _images) = stores();
    let handler = fetch_handler(store.clone(), fetcher);

    proxy.add(
        Some("GET"),
        cut.desc.digest().as_ref(),
        1,
        Fault::CutAfter(100_000),
    );
    handler.handle(&cut.desc).await.unwrap();
    assert_eq!(
        store.info(cut.desc.digest()).await.unwrap().size,
        cut.desc.size()
    );
    // The download went on from the 100,000 bytes the cut range delivered.
    let ranges = ranges_of(&proxy, &cut);
    assert!(
        ranges.iter().any(|r| r.starts_with("bytes=100000-")),
        "{ranges:#?}"
    );

    proxy.add(
        Some("GET"),
        flipped.desc.digest().as_ref(),
        1,
        Fault::FlipByte(10),
    );
    let err = handler.handle(&flipped.desc).await.unwrap_err();
    assert!(err.to_string().contains("digest"), "{err}");
    assert_eq!(
        store.info(flipped.desc.digest()).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(store.list_statuses(&[]).await.unwrap().is_empty());
}

/// A CDN may honour `Range` for the first requests of a blob and drop it for
/// a later one (a cache miss), answering 200 with everything. The download
/// is resumed from what the store has, in one request, and that endpoint
/// gets no more ranged requests; the blob is committed whole.
#[tokio::test]
async fn a_later_range_answered_with_the_whole_blob_is_resumed_in_one_request() {
    let big = layer(2 << 20, 7);
    let (_registry, proxy) = setup("ranged/dropped", std::slice::from_ref(&big)).await;
    let resolver = DockerResolver::new().ranged_fetch(settings());
    let fetcher = resolver
        .fetcher(&format!("{}/ranged/dropped:x", proxy.host()))
        .await
        .unwrap();
    let (_dir, store, _images) = stores();
    let reference = format!("{}/ranged/dropped:x", proxy.host());
    let handler = fetch_handler(store.clone(), resolver.fetcher(&reference).await.unwrap());

    proxy.add(
        Some("GET"),
        big.desc.digest().as_ref(),
        100,
        Fault::IgnoreRangeFrom(2 * CHUNK),
    );
    handler.handle(&big.desc).await.unwrap();
    assert_eq!(
        store.info(big.desc.digest()).await.unwrap().size,
        big.desc.size()
    );
    let ranges = ranges_of(&proxy, &big);
    // Ranges up to the refused one, then one open-ended request from where
    // the store was.
    let open_ended: Vec<&String> = ranges.iter().filter(|r| r.ends_with('-')).collect();
    assert_eq!(open_ended.len(), 1, "{ranges:#?}");
    let resumed_at: u64 = open_ended[0]
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!((CHUNK..=2 * CHUNK).contains(&resumed_at), "{ranges:#?}");
    assert!(ranges.contains(&format!("bytes=0-{}", CHUNK - 1)));

    // Later blobs from that endpoint, by any fetcher of the resolver: one
    // request each.
    let log_before = proxy.log().len();
    assert!(fetch_blob(fetcher.as_ref(), &big, 0).await == big.bytes);
    let later: Vec<String> = proxy.log()[log_before..]
        .iter()
        .filter(|l| l.contains(&big.desc.digest().to_string()))
        .cloned()
        .collect();
    assert_eq!(later.len(), 1, "{later:#?}");
    assert!(!later[0].contains(" range="), "{later:#?}");
}

/// While the reader of a blob is slow to take the ranges fetched ahead,
/// they keep being read: none goes idle past the read timeout just because
/// it waits its turn.
#[tokio::test]
async fn ranges_waiting_their_turn_are_not_timed_out_by_a_slow_reader() {
    use futures::StreamExt;
    let big = layer(8 * CHUNK as usize, 8);
    let (_registry, proxy) = setup("ranged/slow-reader", std::slice::from_ref(&big)).await;
    // The first range and the next three arrive over about 240 ms each; the
    // later ones over about 960 ms (16 KiB every 60 ms), so a range is
    // still mid-body when the reader stalls. (The idle timeout is a second:
    // a loaded machine may pause a sender for a few hundred ms.)
    let drip = |chunk, ms| Fault::Drip {
        chunk,
        delay: std::time::Duration::from_millis(ms),
    };
    let digest = big.desc.digest().to_string();
    proxy.add(Some("GET"), &digest, 4, drip(32 << 10, 30));
    proxy.add(Some("GET"), &digest, 100, drip(16 << 10, 60));
    let idle = std::time::Duration::from_secs(1);
    let resolver = DockerResolver::new()
        .timeouts(std::time::Duration::from_secs(5), idle)
        .unwrap()
        .ranged_fetch(settings());
    let fetcher = resolver
        .fetcher(&format!("{}/ranged/slow-reader:x", proxy.host()))
        .await
        .unwrap();
    let mut stream = fetcher.fetch(&big.desc, 0).await.unwrap();
    let mut bytes = Vec::new();
    // Past the first range, whose own body (read by us) must not be left
    // unread across the stall.
    while (bytes.len() as u64) <= CHUNK {
        bytes.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    // The reader stalls for four idle timeouts.
    tokio::time::sleep(idle * 4).await;
    while let Some(piece) = stream.next().await {
        bytes.extend_from_slice(&piece.expect("a range that waited its turn"));
    }
    assert!(bytes == big.bytes);
}
