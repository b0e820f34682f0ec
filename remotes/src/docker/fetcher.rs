//! Fetching blobs and manifests, from an offset; a large blob as parallel
//! ranged requests, handed on in order.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use oci_spec::image::{Descriptor, Digest};
use reqwest::{Method, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pusher::is_manifest;
use super::skipped::SkipHook;
use super::speed::{LowSpeedLimit, SpeedCheck};
use super::{Repository, check_status};
use crate::task::AbortOnDrop;
use crate::{ByteStream, ConnectError, Error, Fetcher, Result};

/// How a large blob is fetched as parallel ranged requests, as containerd 2.1
/// does: the blob is cut into `chunk_size` ranges, `parallel` of them are in
/// flight at once, and they are handed on in order (the first one as it
/// arrives), so the writer hashes one stream. Memory is bounded: at most
/// `parallel + 1` chunks per blob, and at most `blobs` blobs fetched this way at
/// once (the others use one request). A registry that ignores `Range` gets one
/// request.
///
/// By default this is used for remote registries only: over loopback one
/// stream already runs at memory speed, and holding chunks costs copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangedFetch {
    /// Bytes per request.
    pub chunk_size: u64,
    /// Requests in flight for one blob; 1 turns ranged fetching off.
    pub parallel: usize,
    /// Blobs with fewer bytes left to fetch go in one request.
    pub min_size: u64,
    /// Blobs fetched in ranges at once, per resolver.
    pub blobs: usize,
    /// Also for registries on a loopback address.
    pub loopback: bool,
}

impl Default for RangedFetch {
    /// 4 MiB chunks, 4 in flight, for blobs of 64 MiB and more, one blob at a
    /// time: at most 20 MiB of buffers.
    fn default() -> Self {
        RangedFetch {
            chunk_size: 4 << 20,
            parallel: 4,
            min_size: 64 << 20,
            blobs: 1,
            loopback: false,
        }
    }
}

impl RangedFetch {
    /// Ranged fetching turned off: every blob in one request.
    pub const OFF: RangedFetch = RangedFetch {
        chunk_size: u64::MAX,
        parallel: 1,
        min_size: u64::MAX,
        blobs: 0,
        loopback: false,
    };

    fn enabled(&self) -> bool {
        self.parallel > 1 && self.blobs > 0 && self.chunk_size > 0
    }
}

/// How long an endpoint that broke a ranged fetch gets one request per blob.
const RANGES_REFUSED_FOR: Duration = Duration::from_secs(10 * 60);

/// The ranged-fetch settings and the blob slots, shared by every fetcher of
/// one resolver.
#[derive(Debug, Clone)]
pub(crate) struct Ranged {
    settings: RangedFetch,
    slots: Arc<Semaphore>,
    /// Endpoint hosts that lately answered a later range with the whole
    /// blob or with fewer bytes than asked (a CDN that drops `Range` now and
    /// then), and when: they get one request per blob for [`RANGES_REFUSED_FOR`].
    refused: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Ranged {
    pub(crate) fn new(settings: RangedFetch) -> Self {
        Ranged {
            settings,
            slots: Arc::new(Semaphore::new(settings.blobs)),
            refused: Arc::default(),
        }
    }

    /// Whether blobs from `repo` may be fetched in ranges.
    fn serves(&self, repo: &Repository) -> bool {
        if !self.settings.loopback && repo.is_loopback() {
            return false;
        }
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.retain(|_, at| at.elapsed() < RANGES_REFUSED_FOR);
        !refused.contains_key(repo.host())
    }

    fn refuse(&self, repo: &Repository) {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(repo.host().to_string(), Instant::now());
    }

    pub(crate) fn settings(&self) -> RangedFetch {
        self.settings
    }

    /// A slot for a blob with `remaining` bytes to fetch, if it is large
    /// enough and a slot is free.
    fn slot(&self, remaining: u64) -> Option<OwnedSemaphorePermit> {
        let settings = &self.settings;
        if !settings.enabled()
            || remaining < settings.min_size.max(settings.chunk_size.saturating_mul(2))
        {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// Manifests a resolve had to GET (to check a digest reference, or for
/// headers the registry left out), kept for the first fetch of their digest:
/// on Docker Hub every manifest GET counts against the pull limit, and one
/// pull should cost one. At most [`Resolved::KEPT`] of at most
/// [`Resolved::KEPT_SIZE`] bytes, the oldest dropped; a fetch takes its entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resolved(Arc<Mutex<VecDeque<(Digest, Bytes)>>>);

impl Resolved {
    const KEPT: usize = 8;
    /// Larger manifests (rare: an image's is a few KB) are not kept, so a
    /// long-lived resolver holds at most 2 MiB this way.
    const KEPT_SIZE: usize = 256 << 10;

    /// Keeps `bytes`, whose digest is `digest` (checked by the caller).
    pub(crate) fn keep(&self, digest: &Digest, bytes: Bytes) {
        if bytes.len() > Self::KEPT_SIZE {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(d, _)| d != digest);
        if kept.len() == Self::KEPT {
            kept.pop_front();
        }
        kept.push_back((digest.clone(), bytes));
    }

    /// The kept bytes of `desc`, if its digest and size are those kept.
    fn take(&self, desc: &Descriptor) -> Option<Bytes> {
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = kept
            .iter()
            .position(|(d, b)| d == desc.digest() && b.len() as u64 == desc.size())?;
        kept.remove(at).map(|(_, bytes)| bytes)
    }
}

/// A [`Fetcher`] for one repository, trying a descriptor's `urls` first
/// (a foreign layer's home), then its endpoints (mirrors, then the
/// upstream) in order.
#[derive(Debug, Clone)]
pub struct DockerFetcher {
    repos: Vec<Repository>,
    ranged: Ranged,
    resolved: Resolved,
    urls: UrlSource,
    skipped: SkipHook,
}

/// How a descriptor's `urls` are fetched: with the resolver's own client,
/// no credentials and no configured headers (they are the registry's, and a
/// URL in a manifest may point anywhere), as containerd asks there.
#[derive(Debug, Clone)]
pub(crate) struct UrlSource {
    pub(crate) client: reqwest::Client,
    pub(crate) low_speed: LowSpeedLimit,
    /// The client's connect timeout, for errors to name.
    pub(crate) connect: Option<std::time::Duration>,
    /// The client's idle-read timeout, for errors to name.
    pub(crate) idle_read: Option<std::time::Duration>,
}

/// How many of a descriptor's `urls` are tried: a manifest may list
/// thousands, each a request before the registry is asked.
const MAX_URLS_TRIED: usize = 8;

impl DockerFetcher {
    pub(crate) fn new(
        repos: Vec<Repository>,
        ranged: Ranged,
        resolved: Resolved,
        urls: UrlSource,
        skipped: SkipHook,
    ) -> Self {
        DockerFetcher {
            repos,
            ranged,
            resolved,
            urls,
            skipped,
        }
    }
}

#[async_trait]
impl Fetcher for DockerFetcher {
    async fn fetch(&self, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
        if let Some(bytes) = self.resolved.take(desc) {
            let rest = bytes.slice(
                usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len())..,
            );
            return Ok(Box::pin(futures::stream::iter(
                (!rest.is_empty()).then_some(Ok(rest)),
            )));
        }
        let mut errors = Vec::new();
        for url in desc.urls().iter().flatten().take(MAX_URLS_TRIED) {
            // As containerd: only HTTP(S), anything else passed over.
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                continue;
            }
            match fetch_url(&self.urls, url, desc, offset).await {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    // The registry's endpoints follow.
                    self.skipped.skipped(url, &e);
                    errors.push(e);
                }
            }
        }
        let ranged_for = |repo: &Repository| self.ranged.serves(repo);
        let slot = if is_manifest(desc) || !self.repos.iter().any(ranged_for) {
            None
        } else {
            self.ranged
                .slot(desc.size().saturating_sub(offset))
                .map(Arc::new)
        };
        for (i, repo) in self.repos.iter().enumerate() {
            let fetched = match &slot {
                Some(slot) if ranged_for(repo) => {
                    fetch_ranged(repo, desc, offset, &self.ranged, slot).await
                }
                _ => fetch_from(repo, desc, offset).await,
            };
            match fetched {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    if i + 1 < self.repos.len() {
                        self.skipped.skipped(&repo.host, &e);
                    }
                    errors.push(e);
                }
            }
        }
        Err(Error::of_hosts(errors).unwrap_or_else(|| Error::Protocol {
            url: desc.digest().to_string(),
            reason: "no host to fetch from".into(),
        }))
    }
}

fn object_url(repo: &Repository, desc: &Descriptor) -> String {
    let kind = if is_manifest(desc) {
        "manifests"
    } else {
        "blobs"
    };
    format!("{}/{kind}/{}", repo.base, desc.digest())
}

/// Whether `media_type` may be a media type: `type/subtype` and optional
/// parameters, at most 255 bytes (RFC 6838 allows 127 for each name), and
/// nothing but visible ASCII and spaces, no comma (it would split the
/// `Accept` list).
fn is_plausible_media_type(media_type: &str) -> bool {
    media_type.len() <= 255
        && media_type.contains('/')
        && media_type
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b',')
}

/// GETs `url` from byte `start` (to `end`, exclusive, if given); the response
/// is 206 with a `Content-Range` from `start`, or 200 with everything.
async fn get_range(
    repo: &Repository,
    url: &str,
    desc: &Descriptor,
    start: u64,
    end: Option<u64>,
) -> Result<reqwest::Response> {
    // Anything, the descriptor's type first, as containerd asks: the bytes
    // are checked by digest anyway, and a registry that picks what to send
    // by `Accept` must not refuse for a type it did not expect (a
    // `mediatype:` hint). The distribution registry serves digests whatever
    // `Accept` says.
    // A type no media type could be (a hostile manifest's 200 KB string,
    // or one with a comma or a control character) is left out: it would
    // only get the request refused (431) or not sent at all.
    let accept = if is_plausible_media_type(desc.media_type().as_ref()) {
        format!("{}, */*", desc.media_type())
    } else {
        "*/*".to_string()
    };
    let range = match end {
        Some(end) => Some(format!("bytes={start}-{}", end - 1)),
        None if start > 0 => Some(format!("bytes={start}-")),
        None => None,
    };
    let response = repo
        .send(Method::GET, url, |r| {
            let r = r.header(header::ACCEPT, accept.as_str());
            match &range {
                Some(range) => r.header(header::RANGE, range.as_str()),
                None => r,
            }
        })
        .await?;
    blob_answer(url, response, start, end, desc.size()).await
}

/// `response` to a GET of bytes `start` to `end` (exclusive; to the end if
/// `None`) of a `size`-byte blob at `url`, if it is 200, or 206 with a
/// `Content-Range` that fits ([`check_content_range`]).
async fn blob_answer(
    url: &str,
    response: reqwest::Response,
    start: u64,
    end: Option<u64>,
    size: u64,
) -> Result<reqwest::Response> {
    let response = check_status(
        Method::GET,
        url,
        response,
        &[StatusCode::OK, StatusCode::PARTIAL_CONTENT],
    )
    .await?;
    if response.status() == StatusCode::PARTIAL_CONTENT {
        let content_range = response
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let Err(reason) = check_content_range(content_range, start, end, size) {
            return Err(Error::Protocol {
                url: url.to_string(),
                reason,
            });
        }
    }
    Ok(response)
}

/// Checks a 206's `Content-Range` (`bytes FIRST-LAST/TOTAL`) against a
/// request for bytes `start` to `end` (exclusive; the blob's end if `None`)
/// of a blob of `size` bytes. A shorter range than asked is allowed (the
/// body's length is checked as it arrives, and a short one is resumed); a
/// range from elsewhere, or a blob of another size, is not.
fn check_content_range(
    content_range: &str,
    start: u64,
    end: Option<u64>,
    size: u64,
) -> std::result::Result<(), String> {
    let parsed = content_range.strip_prefix("bytes ").and_then(|range| {
        let (span, total) = range.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let total = match total {
            "*" => None,
            total => Some(total.parse::<u64>().ok()?),
        };
        Some((first.parse::<u64>().ok()?, last.parse::<u64>().ok()?, total))
    });
    let asked_end = end.unwrap_or(size);
    match parsed {
        None => Err(format!(
            "asked for bytes from {start}, got no valid Content-Range ({content_range:?})"
        )),
        Some((first, _, _)) if first != start => Err(format!(
            "asked for bytes from {start}, got Content-Range {content_range:?}"
        )),
        Some((_, last, _)) if last < start || last >= asked_end => Err(format!(
            "asked for bytes {start}-{}, got Content-Range {content_range:?}",
            asked_end.saturating_sub(1)
        )),
        Some((_, _, Some(total))) if total != size => Err(format!(
            "the blob is {size} bytes, the registry's is {total} (Content-Range {content_range:?})"
        )),
        Some(_) => Ok(()),
    }
}

/// GETs `desc` from `url`, one of its `urls`, from `offset`; redirects
/// the client hands back (a 307 or 308 to another origin) are followed
/// here, within the client's budget of hops.
async fn fetch_url(
    source: &UrlSource,
    url: &str,
    desc: &Descriptor,
    offset: u64,
) -> Result<ByteStream> {
    let (connect, idle_read) = (source.connect, source.idle_read);
    let get = |to: reqwest::Url| {
        let request = source.client.get(to).header(header::ACCEPT, "*/*");
        let request = if offset > 0 {
            request.header(header::RANGE, format!("bytes={offset}-"))
        } else {
            request
        };
        async move {
            request.send().await.map_err(|source| Error::Connect {
                url: url.to_string(),
                source: ConnectError::new(source).after(1, connect, idle_read),
            })
        }
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| Error::Protocol {
        url: url.to_string(),
        reason: format!("not a URL: {e}"),
    })?;
    let mut response = get(parsed).await?;
    for _ in 0..super::tls::MAX_REDIRECTS {
        match super::redirect_target(&response) {
            Some(location) => response = get(location).await?,
            None => break,
        }
    }
    let response = blob_answer(url, response, offset, None, desc.size()).await?;
    Ok(whole_body(
        url.to_string(),
        response,
        offset,
        desc.size(),
        SpeedCheck::new(source.low_speed, source.idle_read),
    ))
}

async fn fetch_from(repo: &Repository, desc: &Descriptor, offset: u64) -> Result<ByteStream> {
    let url = object_url(repo, desc);
    let response = get_range(repo, &url, desc, offset, None).await?;
    Ok(whole_body(
        url,
        response,
        offset,
        desc.size(),
        repo.speed_check(),
    ))
}

/// The body of a response to a GET of a `size`-byte blob from `offset`: as
/// it is if the server honoured the range; without the first `offset` bytes
/// if it sent everything. A body that ends cleanly before the blob does (a
/// proxy's early end of a chunked body) fails as [`Error::Interrupted`], so
/// it is resumed rather than found short at commit; one with more bytes than
/// the blob fails too, and so does one slower than `low_speed`.
fn whole_body(
    url: String,
    response: reqwest::Response,
    offset: u64,
    size: u64,
    speed: SpeedCheck,
) -> ByteStream {
    let start = match response.status() {
        StatusCode::PARTIAL_CONTENT => offset,
        _ => 0,
    };
    let body = Exact {
        inner: Box::pin(response.bytes_stream()),
        url,
        start,
        end: size,
        received: 0,
        speed,
    };
    Box::pin(Skip {
        inner: Box::pin(body),
        remaining: offset - start,
    })
}

/// The pieces of one range's body, all `end - start` bytes of it, arriving
/// no slower than `low_speed`.
async fn range_body(
    url: &str,
    mut response: reqwest::Response,
    (start, end): (u64, u64),
    mut speed: SpeedCheck,
) -> Result<Vec<Bytes>> {
    let mut pieces = Vec::new();
    let mut received = 0u64;
    loop {
        speed.asked(Instant::now());
        let piece = response
            .chunk()
            .await
            .map_err(|source| speed.broke(Instant::now(), url, source))?;
        let Some(piece) = piece else {
            break;
        };
        speed.arrived(piece.len() as u64, Instant::now(), url)?;
        received += piece.len() as u64;
        if received > end - start {
            return Err(Error::Protocol {
                url: url.to_string(),
                reason: format!("range {start}-{} sent more than asked", end - 1),
            });
        }
        pieces.push(piece);
    }
    if received != end - start {
        let cause = Error::Interrupted {
            url: url.to_string(),
            reason: format!(
                "range {start}-{} ended after {received} of {} bytes",
                end - 1,
                end - start
            ),
        };
        return Err(speed.failed(Instant::now(), cause));
    }
    Ok(pieces)
}

/// Fetches `desc` from `offset` as parallel ranged requests, in order. A
/// server that answers the first range with everything (no range support)
/// gets the single-request path instead.
async fn fetch_ranged(
    repo: &Repository,
    desc: &Descriptor,
    offset: u64,
    ranged: &Ranged,
    slot: &Arc<OwnedSemaphorePermit>,
) -> Result<ByteStream> {
    let settings = ranged.settings;
    let url = object_url(repo, desc);
    let size = desc.size();
    let chunk = settings.chunk_size;
    let first_end = offset.saturating_add(chunk).min(size);
    let response = get_range(repo, &url, desc, offset, Some(first_end)).await?;
    if response.status() != StatusCode::PARTIAL_CONTENT {
        return Ok(whole_body(url, response, offset, size, repo.speed_check()));
    }
    let first = Exact {
        inner: Box::pin(response.bytes_stream()),
        url: url.clone(),
        start: offset,
        end: first_end,
        received: 0,
        speed: repo.speed_check(),
    };
    // Made as they are asked for: the size is the descriptor's word, and a
    // hostile one (2^62 bytes) must not become a list of 2^40 ranges.
    let ranges = (first_end..size)
        .step_by(usize::try_from(chunk).unwrap_or(usize::MAX))
        .map(move |start| (start, start.saturating_add(chunk).min(size)));
    // The blob is now this endpoint's to serve: its later ranges are
    // retried here even on a mirror, since there is no moving on mid-blob.
    let (repo, desc, ranged) = (repo.committed(), desc.clone(), ranged.clone());
    // The slot goes with the stream: the blob holds it until it is dropped.
    let slot = slot.clone();
    let ahead = futures::stream::iter(ranges)
        .map(move |(start, end)| {
            let (repo, desc, url, ranged) =
                (repo.clone(), desc.clone(), url.clone(), ranged.clone());
            let shutting_down = Error::Interrupted {
                url: url.clone(),
                reason: format!("range {start}-{}: the runtime is shutting down", end - 1),
            };
            // Each range is read on a task of its own, so its body keeps
            // being read (and its idle-read timeout is not running against
            // it) while the driver waits to hand an earlier range on.
            let task = AbortOnDrop::spawn(async move {
                let response = get_range(&repo, &url, &desc, start, Some(end)).await?;
                if response.status() != StatusCode::PARTIAL_CONTENT {
                    // The first range was honoured, this one not: the fetch
                    // is resumed from what the store has, in one request.
                    ranged.refuse(&repo);
                    return Err(Error::Interrupted {
                        url,
                        reason: format!("range {start}-{} answered without a range", end - 1),
                    });
                }
                let body = range_body(&url, response, (start, end), repo.speed_check()).await;
                let short = |e: &Error| matches!(e, Error::Interrupted { .. });
                if let Err(e) = &body
                    && (short(e) || matches!(e, Error::Stalled { source, .. } if short(source)))
                {
                    // Short ranges would cost a resume each.
                    ranged.refuse(&repo);
                }
                body
            });
            async move { task.join().await.unwrap_or(Err(shutting_down)) }
        })
        .buffered(settings.parallel - 1);
    // A task runs the later ranges while the first one streams, handing each
    // on (in order) when the one before it has been taken.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let driver = AbortOnDrop::spawn(async move {
        let _slot = slot;
        let mut ahead = std::pin::pin!(ahead);
        while let Some(range) = ahead.next().await {
            let failed = range.is_err();
            if sender.send(range).await.is_err() || failed {
                return;
            }
        }
    });
    let rest = futures::stream::unfold((receiver, driver), |(mut receiver, driver)| async move {
        let range = receiver.recv().await?;
        Some((range, (receiver, driver)))
    })
    .map_ok(|pieces| futures::stream::iter(pieces.into_iter().map(Ok)))
    .try_flatten();
    Ok(Box::pin(first.chain(rest)))
}

/// A body of bytes `start` to `end` (exclusive), passed on as it arrives,
/// failing if it holds more or fewer bytes than that, or if it comes slower
/// than its low-speed limit.
struct Exact {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    url: String,
    start: u64,
    end: u64,
    received: u64,
    speed: SpeedCheck,
}

impl Exact {
    fn expected(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    fn wrong_length(&self, what: &str) -> String {
        format!(
            "bytes {}-{} {what} ({} of {} bytes)",
            self.start,
            self.end.saturating_sub(1),
            self.received,
            self.expected()
        )
    }
}

impl Stream for Exact {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.speed.asked(Instant::now());
        let polled = self.inner.as_mut().poll_next(cx);
        Poll::Ready(match ready!(polled) {
            Some(Ok(piece)) => {
                self.received += piece.len() as u64;
                let this = &mut *self;
                if this.received > this.expected() {
                    Some(Err(Error::Protocol {
                        url: this.url.clone(),
                        reason: this.wrong_length("sent more than asked"),
                    }))
                } else if let Err(e) =
                    this.speed
                        .arrived(piece.len() as u64, Instant::now(), &this.url)
                {
                    Some(Err(e))
                } else {
                    Some(Ok(piece))
                }
            }
            Some(Err(source)) => Some(Err(self.speed.broke(Instant::now(), &self.url, source))),
            None if self.received < self.expected() => {
                // Reported once: a stream ends after its error.
                let cause = Error::Interrupted {
                    url: self.url.clone(),
                    reason: self.wrong_length("ended early"),
                };
                self.received = self.expected();
                Some(Err(self.speed.failed(Instant::now(), cause)))
            }
            None => None,
        })
    }
}

/// `stream`, the bytes of `desc`, checked as they pass: more bytes than
/// its size fail at once, and the end of the stream becomes an error if
/// they were fewer, or of another digest. For callers that hand bytes on as
/// they arrive (`fetch-object` to stdout), where no store checks them at
/// commit; `what` names the object in errors.
pub(crate) fn verified(stream: ByteStream, desc: &Descriptor, what: String) -> Result<ByteStream> {
    let digester = ocidist_content::Digester::new(desc.digest().algorithm())?;
    Ok(Box::pin(Verified {
        inner: stream,
        digester: Some(digester),
        size: desc.size(),
        expected: desc.digest().clone(),
        received: 0,
        what,
    }))
}

struct Verified {
    inner: ByteStream,
    /// Taken when the stream has ended or failed.
    digester: Option<ocidist_content::Digester>,
    size: u64,
    expected: Digest,
    received: u64,
    what: String,
}

impl Verified {
    fn fail(&mut self, reason: String) -> Poll<Option<Result<Bytes>>> {
        self.digester = None;
        Poll::Ready(Some(Err(Error::Protocol {
            url: self.what.clone(),
            reason,
        })))
    }
}

impl Stream for Verified {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(digester) = this.digester.as_mut() else {
            return Poll::Ready(None);
        };
        let size = this.size;
        match ready!(this.inner.as_mut().poll_next(cx)) {
            Some(Ok(chunk)) => {
                this.received += chunk.len() as u64;
                if this.received > size {
                    return this.fail(format!("more than the {size} bytes expected"));
                }
                digester.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(e)) => {
                this.digester = None;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                let actual = digester.digest();
                if this.received < size {
                    this.fail(format!("ended after {} of {size} bytes", this.received))
                } else if actual != this.expected {
                    let expected = &this.expected;
                    this.fail(format!(
                        "digest mismatch: expected {expected}, got {actual}"
                    ))
                } else {
                    this.digester = None;
                    Poll::Ready(None)
                }
            }
        }
    }
}

/// Drops the first `remaining` bytes of a stream.
struct Skip {
    inner: ByteStream,
    remaining: u64,
}

impl Stream for Skip {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(mut chunk))) if self.remaining > 0 => {
                    let drop = self.remaining.min(chunk.len() as u64) as usize;
                    self.remaining -= drop as u64;
                    let rest = chunk.split_off(drop);
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(rest)));
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::image::MediaType;

    use super::*;

    fn manifest(n: usize) -> (Descriptor, Bytes) {
        let bytes = Bytes::from(format!("{{\"n\":{n}}}"));
        let digest = ocidist_content::sha256_of(&bytes);
        let desc = Descriptor::new(MediaType::ImageManifest, bytes.len() as u64, digest);
        (desc, bytes)
    }

    #[test]
    fn only_what_may_be_a_media_type_is_plausible() {
        for good in [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/json; charset=utf-8",
        ] {
            assert!(is_plausible_media_type(good), "{good}");
        }
        let long = format!("application/{}", "x".repeat(244));
        for bad in [
            "",
            "json",
            "a/b, */*",
            "a/b\r\nX: 1",
            "a/\u{e9}",
            long.as_str(),
        ] {
            assert!(!is_plausible_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn a_content_range_must_be_the_range_asked_for_of_a_blob_of_this_size() {
        let check = |range: &str, start, end| check_content_range(range, start, end, 1000);
        assert_eq!(check("bytes 0-99/1000", 0, Some(100)), Ok(()));
        assert_eq!(check("bytes 500-999/1000", 500, None), Ok(()));
        assert_eq!(check("bytes 500-999/*", 500, None), Ok(()));
        // Shorter than asked: the body's length decides, and it is resumed.
        assert_eq!(check("bytes 0-49/1000", 0, Some(100)), Ok(()));
        for (range, start, end, says) in [
            ("bytes 1-100/1000", 0, Some(100), "from 0"),
            ("bytes 0-100/1000", 0, Some(100), "bytes 0-99"),
            ("bytes 500-1000/1000", 500, None, "bytes 500-999"),
            ("bytes 500-400/1000", 500, None, "bytes 500-999"),
            ("bytes 0-99/2000", 0, Some(100), "the registry's is 2000"),
            ("bytes 0-99", 0, Some(100), "no valid"),
            ("items 0-99/1000", 0, Some(100), "no valid"),
            ("", 0, Some(100), "no valid"),
        ] {
            let reason = check(range, start, end).unwrap_err();
            assert!(reason.contains(says), "{range:?}: {reason}");
        }
    }

    async fn passed_through(desc: &Descriptor, pieces: &[&str]) -> Vec<Result<Bytes>> {
        let pieces: Vec<Result<Bytes>> = pieces
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p.as_bytes())))
            .collect();
        let stream = futures::stream::iter(pieces);
        let checked = verified(Box::pin(stream), desc, "the object".into()).unwrap();
        checked.collect().await
    }

    #[tokio::test]
    async fn a_verified_stream_ends_in_an_error_unless_size_and_digest_match() {
        let desc = Descriptor::new(
            MediaType::ImageLayer,
            6,
            ocidist_content::sha256_of(b"abcdef"),
        );
        let passed = passed_through(&desc, &["abc", "def"]).await;
        assert_eq!(passed.len(), 2);
        assert!(passed.iter().all(Result::is_ok));

        for (pieces, says) in [
            (&["abc", "deF"][..], "digest mismatch"),
            (&["abc"][..], "ended after 3 of 6 bytes"),
            (&["abc", "defg"][..], "more than the 6 bytes"),
        ] {
            let mut passed = passed_through(&desc, pieces).await;
            let last = passed.pop().unwrap().unwrap_err();
            assert!(last.to_string().contains(says), "{last}");
            assert!(last.to_string().contains("the object"), "{last}");
            assert!(passed.iter().all(Result::is_ok), "only the end fails");
        }
    }

    #[test]
    fn resolved_manifests_are_bounded_and_taken_once() {
        let resolved = Resolved::default();
        let all: Vec<_> = (0..=Resolved::KEPT).map(manifest).collect();
        for (desc, bytes) in &all {
            resolved.keep(desc.digest(), bytes.clone());
        }
        assert_eq!(resolved.take(&all[0].0), None, "the oldest was dropped");
        let (last, bytes) = &all[Resolved::KEPT];
        let mut wrong_size = last.clone();
        wrong_size.set_size(last.size() + 1);
        assert_eq!(resolved.take(&wrong_size), None);
        assert_eq!(resolved.take(last).as_ref(), Some(bytes));
        assert_eq!(resolved.take(last), None, "taken once");

        let big = Bytes::from(vec![b' '; Resolved::KEPT_SIZE + 1]);
        let digest = ocidist_content::sha256_of(&big);
        resolved.keep(&digest, big.clone());
        let desc = Descriptor::new(MediaType::ImageManifest, big.len() as u64, digest);
        assert_eq!(resolved.take(&desc), None, "too large to keep");
    }
}
