//! Pushing blobs and manifests: a push is an ingest whose commit uploads.
//!
//! The bytes are spooled to an unnamed temporary file while they are hashed;
//! commit checks size and digest locally first, so wrong bytes never leave the
//! machine, then uploads: a blob with `POST` and one streamed `PUT` (up to
//! 64 MiB) or `PATCH` chunks of 16 MiB (at least the registry's
//! `OCI-Chunk-Min-Length`, up to 64 MiB; past that, one streamed `PUT`) and a
//! closing `PUT`; a manifest with one `PUT`. A blob whose descriptor names a source repository on the same
//! registry (the `containerd.io/distribution.source.<registry>` annotation,
//! see [`source`](crate::source)) is first offered as a cross-repository
//! mount: `POST …/blobs/uploads/?mount=<digest>&from=<repository>`.

use std::collections::HashSet;
use std::io::SeekFrom;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use oci_spec::image::{Descriptor, Digest};
use ocidist_content::helpers::jitter;
use ocidist_content::{Digester, Error as ContentError, Labels, Status, Writer};
use reqwest::{Method, StatusCode, header};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite};

use super::{MAX_MANIFEST_SIZE, Repository, check_status};
use crate::source::source_repositories;
use crate::{Error, Pusher, Reference, Result};

/// A [`Pusher`] for one repository.
///
/// Manifests are pushed by digest, except the one the reference pins with
/// `name:tag@digest`, which is pushed by its tag; with `name:tag` alone every
/// manifest goes to the tag (push the root last), as containerd does.
#[derive(Debug, Clone)]
pub struct DockerPusher {
    repo: Repository,
    reference: Reference,
    in_flight: Pushing,
    spool_dir: Option<std::path::PathBuf>,
}

impl DockerPusher {
    pub(crate) fn new(
        repo: Repository,
        reference: Reference,
        in_flight: Pushing,
        spool_dir: Option<std::path::PathBuf>,
    ) -> Self {
        DockerPusher {
            repo,
            reference,
            in_flight,
            spool_dir,
        }
    }

    fn manifest_object(&self, digest: &Digest) -> String {
        match (self.reference.digest(), self.reference.tag()) {
            (Some(pinned), Some(tag)) if pinned == digest => tag.to_string(),
            (Some(_), _) | (None, None) => digest.to_string(),
            (None, Some(tag)) => tag.to_string(),
        }
    }
}

/// What offering a blob as a cross-repository mount came to.
#[derive(Debug)]
enum Mount {
    /// The registry linked the blob into the repository: nothing to upload.
    Mounted,
    /// It did not, but opened an upload session, to be used for the upload.
    Session(Session),
    /// No source to mount from, or no source answered.
    NotMounted,
}

impl DockerPusher {
    /// Asks the registry to mount `desc` from each source repository its
    /// annotations name on this registry, until one answers.
    async fn try_mount(&self, desc: &Descriptor) -> Mount {
        let Some(annotations) = desc.annotations() else {
            return Mount::NotMounted;
        };
        let sources = source_repositories(annotations, self.reference.registry());
        let uploads = format!("{}/blobs/uploads/", self.repo.base);
        for from in sources
            .iter()
            .filter(|r| r.as_str() != self.reference.repository())
        {
            let Ok(mut url) = reqwest::Url::parse(&uploads) else {
                return Mount::NotMounted;
            };
            url.query_pairs_mut()
                .append_pair("mount", desc.digest().as_ref())
                .append_pair("from", from);
            let url = url.to_string();
            // A token that may read the source as well, as containerd asks
            // for: otherwise the registry challenges for it (one more round
            // trip), or, quietly, opens an upload instead of mounting.
            let scope = format!("{} repository:{from}:pull", self.repo.scope(&Method::POST));
            // A failed mount is only a missed shortcut: the upload follows.
            let Ok(response) = self
                .repo
                .send_scoped(Method::POST, &url, &scope, |r| r)
                .await
            else {
                continue;
            };
            match response.status() {
                StatusCode::CREATED => return Mount::Mounted,
                // Refused, with an upload session opened instead.
                status if CONTINUE.contains(&status) => {
                    if let Ok(session) = Session::opened(&url, &response) {
                        return Mount::Session(session);
                    }
                }
                _ => {}
            }
        }
        Mount::NotMounted
    }
}

/// Whether `desc` goes to `/manifests/` (an image manifest or index, OCI or
/// Docker, schema 1 too), by its exact media type: a layer type may say
/// "manifest" too.
pub(crate) fn is_manifest(desc: &Descriptor) -> bool {
    use ocidist_images::media_types::{Kind, kind};
    matches!(
        kind(desc.media_type().as_ref()),
        Kind::Manifest | Kind::Index | Kind::Schema1
    )
}

/// Registries accept manifests up to [`MAX_MANIFEST_SIZE`]; a larger one is
/// refused here, before anything is sent, rather than cut short.
fn refuse_oversized_manifest(digest: &Digest, size: u64) -> Result<()> {
    if size <= MAX_MANIFEST_SIZE {
        return Ok(());
    }
    Err(ContentError::other(
        ocidist_content::ErrorKind::InvalidArgument,
        format!(
            "manifest {digest} is {size} bytes, over the {MAX_MANIFEST_SIZE} registries accept"
        ),
    )
    .into())
}

/// The pushes under way through a resolver's pushers: each repository's
/// URL and digest.
pub(crate) type Pushing = Arc<Mutex<HashSet<(String, Digest)>>>;

/// Removes a push from the resolver's set of pushes under way when it ends.
#[derive(Debug)]
struct InFlight {
    set: Pushing,
    key: (String, Digest),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[async_trait]
impl Pusher for DockerPusher {
    async fn push(&self, desc: &Descriptor) -> Result<Box<dyn Writer>> {
        let manifest = is_manifest(desc);
        if manifest {
            refuse_oversized_manifest(desc.digest(), desc.size())?;
        }
        let (kind, object) = if manifest {
            ("manifests", self.manifest_object(desc.digest()))
        } else {
            ("blobs", desc.digest().to_string())
        };
        let url = format!("{}/{kind}/{object}", self.repo.base);
        let media_type = desc.media_type().to_string();
        // Taken before anything is asked of the registry: a push waiting
        // for another's upload of this blob costs no request.
        let key = (self.repo.base.clone(), desc.digest().clone());
        if !self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return Err(ContentError::Locked {
                reference: format!("push {}", desc.digest()),
            }
            .into());
        }
        let guard = InFlight {
            set: self.in_flight.clone(),
            key,
        };
        // Asked with the push's own scope (pull and push), as containerd and
        // skopeo ask for the whole push: one token serves the check and the
        // upload, and a token service that grants no pull-only token on a
        // repository not there yet still lets its owner push.
        let push_scope = self.repo.scope(&Method::POST);
        let head = self
            .repo
            .send_scoped(Method::HEAD, &url, &push_scope, |r| {
                r.header(header::ACCEPT, media_type.as_str())
            })
            .await?;
        match head.status() {
            // A tag is there already only if it names this very manifest;
            // otherwise (another image, or no digest said) it is put again.
            StatusCode::OK
                if object == desc.digest().as_ref()
                    || super::header_str(head.headers(), "docker-content-digest")
                        == Some(desc.digest().as_ref()) =>
            {
                return Err(ContentError::AlreadyExists {
                    digest: desc.digest().clone(),
                }
                .into());
            }
            StatusCode::OK | StatusCode::NOT_FOUND => {}
            // Some registries refuse HEAD on manifests (resolving falls back
            // to GET there too): not known to be there, and a PUT of a
            // manifest is idempotent.
            StatusCode::METHOD_NOT_ALLOWED if manifest => {}
            _ => return Err(self.repo.head_error(&url, head, &media_type).await),
        }
        let mut session = None;
        if !manifest {
            match self.try_mount(desc).await {
                // As containerd: a mounted blob is one the registry has.
                Mount::Mounted => {
                    return Err(ContentError::AlreadyExists {
                        digest: desc.digest().clone(),
                    }
                    .into());
                }
                Mount::Session(opened) => session = Some(opened),
                Mount::NotMounted => {}
            }
        }
        let spool = match &self.spool_dir {
            Some(dir) => tempfile::tempfile_in(dir).map_err(|e| ContentError::io("create", dir, e)),
            None => tempfile::tempfile()
                .map_err(|e| ContentError::io("create", std::env::temp_dir(), e)),
        }?;
        let target = if manifest {
            Target::Manifest {
                url: format!("{}/manifests/{object}", self.repo.base),
            }
        } else {
            Target::Blob {
                uploads: format!("{}/blobs/uploads/", self.repo.base),
                session,
            }
        };
        let now = SystemTime::now();
        Ok(Box::new(PushWriter {
            repo: self.repo.clone(),
            target,
            desc: desc.clone(),
            spool: tokio::fs::File::from_std(spool),
            digester: Digester::new(desc.digest().algorithm())?,
            written: 0,
            started_at: now,
            updated_at: now,
            closed: false,
            _in_flight: guard,
        }))
    }
}

#[derive(Debug)]
enum Target {
    /// A blob goes to `uploads`, or to the `session` a refused mount opened.
    Blob {
        uploads: String,
        session: Option<Session>,
    },
    Manifest {
        url: String,
    },
}

/// The writer [`DockerPusher::push`] returns.
#[derive(Debug)]
struct PushWriter {
    repo: Repository,
    target: Target,
    desc: Descriptor,
    spool: tokio::fs::File,
    digester: Digester,
    written: u64,
    started_at: SystemTime,
    updated_at: SystemTime,
    closed: bool,
    _in_flight: InFlight,
}

impl PushWriter {
    fn reference(&self) -> String {
        format!("push {}", self.desc.digest())
    }

    async fn upload(&mut self) -> Result<()> {
        match &mut self.target {
            Target::Manifest { url } => {
                refuse_oversized_manifest(self.desc.digest(), self.written)?;
                self.spool
                    .seek(SeekFrom::Start(0))
                    .await
                    .map_err(ContentError::Source)?;
                let mut body = Vec::with_capacity(self.written as usize);
                (&mut self.spool)
                    .take(MAX_MANIFEST_SIZE)
                    .read_to_end(&mut body)
                    .await
                    .map_err(ContentError::Source)?;
                let media_type = self.desc.media_type().to_string();
                // Idempotent, and the body is small: retried and authorised like a read.
                let response = self
                    .repo
                    .send(Method::PUT, url, |r| {
                        r.header(header::CONTENT_TYPE, media_type.as_str())
                            .body(body.clone())
                    })
                    .await?;
                check_status(Method::PUT, url, response, DONE).await?;
            }
            Target::Blob { uploads, session } => {
                // Taken: from here the upload lets go of it if it fails.
                let (uploads, session) = (uploads.clone(), session.take());
                self.upload_blob_retrying(&uploads, session).await?;
            }
        }
        Ok(())
    }

    /// Uploads the blob, again through a new session (at most
    /// [`UPLOAD_ATTEMPTS`] in all) when the request carrying its bytes fails
    /// in a way another might not ([`worth_another_attempt`]). The blob is
    /// spooled, so it is sent again from its start. Every failed attempt's
    /// session is let go of (`DELETE`), whatever the failure. After one that
    /// is worth another attempt, the registry is asked whether it has the
    /// blob after all (an answer lost on its way back), before each new
    /// attempt and before giving up. The first attempt uses the `session` a
    /// refused mount opened, if any.
    async fn upload_blob_retrying(
        &mut self,
        uploads: &str,
        mut session: Option<Session>,
    ) -> Result<()> {
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            let failed = match self.upload_blob(uploads, session.take()).await {
                Ok(()) => return Ok(()),
                Err(failed) => failed,
            };
            // Let go of whatever the attempt ends with, given up or not. Best
            // effort: a registry keeps a session's bytes until it is
            // cancelled or collected (the distribution registry: a week).
            let Some(abandoned) = failed.session else {
                return Err(failed.error);
            };
            let _ = self
                .repo
                .send_once(Method::DELETE, abandoned.as_str(), |r| r)
                .await;
            if !worth_another_attempt(&failed.error) {
                return Err(failed.error);
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff *= 2;
            if self.registry_has_blob().await {
                return Ok(());
            }
            if attempt == UPLOAD_ATTEMPTS {
                return Err(failed.error);
            }
            attempt += 1;
        }
    }

    /// Whether the registry has the blob (a failed `HEAD` says no).
    async fn registry_has_blob(&self) -> bool {
        let blob = format!("{}/blobs/{}", self.repo.base, self.desc.digest());
        matches!(
            self.repo.send(Method::HEAD, &blob, |r| r).await,
            Ok(head) if head.status() == StatusCode::OK
        )
    }

    /// How far the upload session at `url` has got: the bytes it has (by
    /// its `Range: 0-<last>`) and the URL to go on at; `None` if it cannot
    /// say. The distribution registry says `0-0` for nothing, read so here
    /// (one byte would be refused at the next chunk, and start again).
    async fn session_status(&self, url: &str) -> Option<(u64, reqwest::Url)> {
        let response = self.repo.send(Method::GET, url, |r| r).await.ok()?;
        if response.status() != StatusCode::NO_CONTENT {
            return None;
        }
        let range = super::header_str(response.headers(), header::RANGE.as_str())?;
        let received = match range.split_once('-')? {
            ("0", "0") => 0,
            ("0", last) => last.parse::<u64>().ok()?.checked_add(1)?,
            _ => return None,
        };
        Some((received, upload_location(url, &response).ok()?))
    }

    /// One attempt at uploading the blob: through `session`, or a new one
    /// from `uploads`; in one `PUT`, or `PATCH` chunks for a large blob. The
    /// spool is read at positions, never through its file offset, so a body
    /// of an earlier attempt still being dropped cannot move what this one
    /// reads.
    async fn upload_blob(
        &mut self,
        uploads: &str,
        session: Option<Session>,
    ) -> std::result::Result<(), FailedUpload> {
        let early = |error: Error| FailedUpload {
            error,
            session: None,
        };
        let Session { mut url, chunk_min } = match session {
            Some(session) => session,
            None => {
                // No body: retried by `send` itself, and where a push token
                // is obtained; the requests that stream the blob (and cannot
                // be replayed) then reuse it.
                let response = self
                    .repo
                    .send(Method::POST, uploads, |r| r)
                    .await
                    .map_err(early)?;
                let response = check_status(Method::POST, uploads, response, CONTINUE)
                    .await
                    .map_err(early)?;
                Session::opened(uploads, &response).map_err(early)?
            }
        };
        // The session as the last answer named it, to be let go of.
        let failed = |error: Error, at: &reqwest::Url| FailedUpload {
            error,
            session: Some(at.clone()),
        };
        let spool = self
            .spool
            .try_clone()
            .await
            .map_err(|e| failed(ContentError::Source(e).into(), &url))?;
        let spool = Arc::new(spool.into_std().await);
        let size = self.written;
        // A registry may ask for chunks of at least some size, all but the
        // last (`OCI-Chunk-Min-Length`); one larger than a chunk is let be
        // held in memory gets the blob in one streamed `PUT` instead.
        let smallest_chunk = MIN_CHUNK.max(chunk_min.unwrap_or(0));
        if size > MONOLITHIC_MAX && smallest_chunk <= MAX_CHUNK {
            // Large blobs go in chunks, each a request of its own, so a
            // proxy's body limit or a slow link never has to carry it all.
            // A chunk that fails goes on from what the session says it has.
            let mut offset = 0;
            let mut resumes = 0;
            let mut chunk = CHUNK.max(smallest_chunk);
            while offset < size {
                let len = chunk.min(size - offset);
                let url_text = url.to_string();
                let sent = async {
                    let chunk = read_spool_at(spool.clone(), offset, len as usize).await?;
                    let response = self
                        .repo
                        .send_once(Method::PATCH, &url_text, |r| {
                            r.header(header::CONTENT_TYPE, "application/octet-stream")
                                .header(
                                    header::CONTENT_RANGE,
                                    format!("{offset}-{}", offset + len - 1),
                                )
                                .header(header::CONTENT_LENGTH, len)
                                .body(chunk)
                        })
                        .await?;
                    let response =
                        check_status(Method::PATCH, &url_text, response, CONTINUE).await?;
                    upload_location(&url_text, &response)
                }
                .await;
                match sent {
                    Ok(next) => {
                        url = next;
                        offset += len;
                    }
                    // A registry that takes smaller chunks only (GHCR: 4 MiB)
                    // says 416 or 413: smaller chunks, from what the session
                    // has, as the specification says to ask after a 416.
                    Err(error) if chunk > smallest_chunk && too_large(&error) => {
                        chunk = (chunk / 4).max(smallest_chunk);
                        match self.session_status(&url_text).await {
                            Some((received, next)) if received <= size => {
                                url = next;
                                offset = received;
                            }
                            _ => return Err(failed(error, &url)),
                        }
                    }
                    Err(error) if worth_another_attempt(&error) && resumes < SESSION_RESUMES => {
                        resumes += 1;
                        match self.session_status(&url_text).await {
                            Some((received, next)) if received <= size => {
                                url = next;
                                offset = received;
                            }
                            _ => return Err(failed(error, &url)),
                        }
                    }
                    Err(error) => return Err(failed(error, &url)),
                }
            }
            let url_text = closing_url(&url, self.desc.digest());
            let response = self
                .repo
                .send_once(Method::PUT, &url_text, |r| {
                    r.header(header::CONTENT_LENGTH, 0)
                })
                .await
                .map_err(|e| failed(e, &url))?;
            check_status(Method::PUT, &url_text, response, DONE)
                .await
                .map_err(|e| failed(e, &url))?;
            return Ok(());
        }
        let pieces = futures::stream::unfold(0, move |offset| {
            let spool = spool.clone();
            async move {
                if offset >= size {
                    return None;
                }
                let len = (size - offset).min(PUT_PIECE);
                match read_spool_at(spool, offset, len as usize).await {
                    Ok(piece) => Some((Ok(piece), offset + len)),
                    // The stream ends after its error.
                    Err(e) => Some((Err(e), size)),
                }
            }
        });
        let body = reqwest::Body::wrap_stream(pieces);
        let url_text = closing_url(&url, self.desc.digest());
        let response = self
            .repo
            .send_once(Method::PUT, &url_text, |r| {
                r.header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size)
                    .body(body)
            })
            .await
            .map_err(|e| failed(e, &url))?;
        check_status(Method::PUT, &url_text, response, DONE)
            .await
            .map_err(|e| failed(e, &url))?;
        Ok(())
    }
}

/// How one attempt at uploading a blob failed.
struct FailedUpload {
    error: Error,
    /// The session the attempt had opened, if it got that far.
    session: Option<reqwest::Url>,
}

/// Whether an upload request that carried a blob's bytes failed in a way
/// another attempt might not: a broken connection, or the statuses `send`
/// retries (408, 500, 502, 503, 504), but not a rate limit, whose answer
/// stands.
fn worth_another_attempt(error: &Error) -> bool {
    match error {
        Error::Status { status, .. } => {
            super::retryable(*status) && *status != StatusCode::TOO_MANY_REQUESTS
        }
        Error::Connect { .. } | Error::Interrupted { .. } => {
            error.kind() == crate::ErrorKind::Unavailable
        }
        _ => false,
    }
}

/// Whether a chunk was refused for its size: 416 (GHCR's answer to a chunk
/// over its 4 MiB limit) or 413.
fn too_large(error: &Error) -> bool {
    matches!(
        error,
        Error::Status { status, .. }
            if *status == StatusCode::RANGE_NOT_SATISFIABLE || *status == StatusCode::PAYLOAD_TOO_LARGE
    )
}

/// Reads `len` bytes of the spool at `offset`, on a blocking thread.
async fn read_spool_at(spool: Arc<std::fs::File>, offset: u64, len: usize) -> Result<Bytes> {
    let read = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0; len];
        spool
            .read_exact_at(&mut buf, offset)
            .map(|()| Bytes::from(buf))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    read.map_err(|e| ContentError::Source(e).into())
}

/// Blobs up to this size go in one `PUT`; larger ones in `PATCH` chunks.
const MONOLITHIC_MAX: u64 = 64 << 20;
/// Answers that let an upload go on (POST, PATCH): the specification says
/// 202; some registries say 200 or 204, and containerd accepts them too.
const CONTINUE: &[StatusCode] = &[StatusCode::ACCEPTED, StatusCode::OK, StatusCode::NO_CONTENT];
/// Answers that end an upload or a manifest PUT: 201 by the specification,
/// 200 or 204 from some registries (as containerd accepts).
const DONE: &[StatusCode] = &[StatusCode::CREATED, StatusCode::OK, StatusCode::NO_CONTENT];
/// Attempts at uploading one blob, each through a session of its own.
const UPLOAD_ATTEMPTS: u32 = 3;
/// The pieces a single `PUT`'s body is read from the spool in.
const PUT_PIECE: u64 = 1 << 20;
/// Times one attempt's chunked upload goes on from what its session has
/// after a chunk fails, before the attempt is given up.
const SESSION_RESUMES: u32 = 3;
/// The size of each `PATCH` chunk, at first.
const CHUNK: u64 = 16 << 20;
/// The smallest a refused chunk is cut to (16, then 4, then 1 MiB), unless
/// the registry asked for larger ones (`OCI-Chunk-Min-Length`).
const MIN_CHUNK: u64 = 1 << 20;
/// The largest chunk sent (each is read into memory whole), whatever size
/// the registry asks chunks to be at least.
const MAX_CHUNK: u64 = 64 << 20;

/// An upload session the registry opened: where it goes on, and the
/// smallest chunk it takes, if it said (`OCI-Chunk-Min-Length`, OCI
/// distribution 1.1).
#[derive(Debug, Clone)]
struct Session {
    url: reqwest::Url,
    chunk_min: Option<u64>,
}

impl Session {
    /// The session a `POST` to `request_url` opened.
    fn opened(request_url: &str, response: &reqwest::Response) -> Result<Session> {
        Ok(Session {
            url: upload_location(request_url, response)?,
            chunk_min: super::header_str(response.headers(), "oci-chunk-min-length")
                .and_then(|v| v.trim().parse().ok()),
        })
    }
}

/// The `PUT` that closes the upload session at `session` with the blob's
/// digest; the session itself, to be let go of, keeps its own URL.
fn closing_url(session: &reqwest::Url, digest: &Digest) -> String {
    let mut url = session.clone();
    url.query_pairs_mut().append_pair("digest", digest.as_ref());
    url.to_string()
}

/// The absolute URL of the upload session a response's `Location` names.
fn upload_location(request_url: &str, response: &reqwest::Response) -> Result<reqwest::Url> {
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Protocol {
            url: request_url.to_string(),
            reason: "no Location for the upload".into(),
        })?;
    reqwest::Url::parse(request_url)
        .and_then(|base| base.join(location))
        .map_err(|e| Error::Protocol {
            url: request_url.to_string(),
            reason: format!("bad upload Location {location:?}: {e}"),
        })
}

fn remote(err: Error) -> ContentError {
    match err {
        Error::Content(e) => e,
        other => ContentError::other(other.kind(), other),
    }
}

impl Drop for PushWriter {
    /// A session a refused mount opened and no upload used (the writer
    /// dropped, or its commit refused before uploading) is let go of, in
    /// the background when a runtime is there to do it: the registry would
    /// keep it until it collects stale uploads.
    fn drop(&mut self) {
        let Target::Blob {
            session: Some(session),
            ..
        } = &mut self.target
        else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (repo, url) = (self.repo.clone(), session.url.to_string());
        runtime.spawn(async move {
            let _ = repo.send_once(Method::DELETE, &url, |r| r).await;
        });
    }
}

impl AsyncWrite for PushWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(ContentError::Closed {
                reference: this.reference(),
            }
            .into()));
        }
        if this.written + buf.len() as u64 > this.desc.size() {
            return Poll::Ready(Err(ContentError::WritePastSize {
                reference: this.reference(),
                expected: this.desc.size(),
            }
            .into()));
        }
        let n = ready!(Pin::new(&mut this.spool).poll_write(cx, buf))?;
        this.digester.update(&buf[..n]);
        this.written += n as u64;
        this.updated_at = SystemTime::now();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().spool).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().spool).poll_flush(cx)
    }
}

#[async_trait]
impl Writer for PushWriter {
    async fn status(&mut self) -> ocidist_content::Result<Status> {
        Ok(Status {
            reference: self.reference(),
            offset: self.written,
            total: Some(self.desc.size()),
            expected: Some(self.desc.digest().clone()),
            started_at: self.started_at,
            updated_at: self.updated_at,
        })
    }

    async fn digest(&mut self) -> ocidist_content::Result<Digest> {
        Ok(self.digester.digest())
    }

    async fn commit(
        &mut self,
        size: Option<u64>,
        expected: Option<&Digest>,
        _labels: Labels,
    ) -> ocidist_content::Result<()> {
        if self.closed {
            return Err(ContentError::Closed {
                reference: self.reference(),
            });
        }
        self.closed = true;
        let want_size = size.unwrap_or(self.desc.size());
        if self.written != want_size || self.written != self.desc.size() {
            return Err(ContentError::SizeMismatch {
                reference: self.reference(),
                expected: want_size,
                actual: self.written,
            });
        }
        let actual = self.digester.digest();
        let want = expected.unwrap_or(self.desc.digest());
        if actual != *want || actual != *self.desc.digest() {
            return Err(ContentError::DigestMismatch {
                reference: self.reference(),
                expected: want.clone(),
                actual,
            });
        }
        use tokio::io::AsyncWriteExt;
        self.spool.flush().await.map_err(ContentError::Source)?;
        self.upload().await.map_err(remote)
    }

    async fn truncate(&mut self, size: u64) -> ocidist_content::Result<()> {
        if size != 0 {
            return Err(ContentError::InvalidArgument(format!(
                "{}: a push can only be truncated to 0",
                self.reference()
            )));
        }
        self.spool.set_len(0).await.map_err(ContentError::Source)?;
        self.spool
            .seek(SeekFrom::Start(0))
            .await
            .map_err(ContentError::Source)?;
        self.digester.reset();
        self.written = 0;
        Ok(())
    }
}
