//! Pushing blobs and manifests: a push is an ingest whose commit uploads.
//!
//! A writer's bytes are spooled to an unnamed temporary file while they are
//! hashed; commit checks size and digest locally first, so wrong bytes never
//! leave the machine, then uploads. [`Pusher::push_from`] uploads from a
//! provider's blob instead, with no copy, hashing the bytes as they are
//! read: wrong ones never complete the upload. Either way a blob goes with
//! `POST` and one streamed `PUT` (up to 64 MiB) or streamed `PATCH` chunks of
//! 64 MiB (at least the registry's `OCI-Chunk-Min-Length`) and a closing
//! `PUT`; a manifest with one `PUT`. A blob whose descriptor names a source repository on the same
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
use ocidist_content::{Digester, Error as ContentError, Labels, Provider, Status, Writer};
use reqwest::{Method, StatusCode, header};
use tokio::io::{AsyncSeekExt, AsyncWrite};

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

impl DockerPusher {
    /// Clears `desc` for upload: takes its slot among the resolver's pushes
    /// (`Locked` if another has it), asks the registry whether it has it
    /// (`AlreadyExists`) and offers a blob as a cross-repository mount.
    async fn open(&self, desc: &Descriptor) -> Result<Upload> {
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
        Ok(Upload {
            repo: self.repo.clone(),
            target,
            desc: desc.clone(),
            _in_flight: guard,
        })
    }
}

#[async_trait]
impl Pusher for DockerPusher {
    async fn push(&self, desc: &Descriptor) -> Result<Box<dyn Writer>> {
        let digester = Digester::new(desc.digest().algorithm())?;
        let upload = self.open(desc).await?;
        let spool = match &self.spool_dir {
            Some(dir) => tempfile::tempfile_in(dir).map_err(|e| ContentError::io("create", dir, e)),
            None => tempfile::tempfile()
                .map_err(|e| ContentError::io("create", std::env::temp_dir(), e)),
        }?;
        let now = SystemTime::now();
        Ok(Box::new(PushWriter {
            upload,
            spool: tokio::fs::File::from_std(spool),
            digester,
            written: 0,
            started_at: now,
            updated_at: now,
            closed: false,
        }))
    }

    /// Uploads straight from the provider's blob, with no spooled copy:
    /// the bytes are hashed in order as they are read for the upload, and a
    /// digest that comes out wrong stops it before the registry has the
    /// whole blob (the last piece of a single `PUT` is never sent, a chunked
    /// session is never closed), so nothing wrong is stored.
    async fn push_from(&self, desc: &Descriptor, provider: &dyn Provider) -> Result<bool> {
        let digester = Digester::new(desc.digest().algorithm())?;
        let mut upload = match self.open(desc).await {
            Ok(upload) => upload,
            Err(e) if e.kind() == crate::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        let reader = provider.reader_at(desc).await?;
        if reader.size() != desc.size() {
            return Err(ContentError::SizeMismatch {
                reference: upload.reference(),
                expected: desc.size(),
                actual: reader.size(),
            }
            .into());
        }
        let source = Source::Checked(Arc::new(Checked {
            reader,
            expected: desc.digest().clone(),
            reference: upload.reference(),
            hashed: Mutex::new((digester, 0)),
        }));
        upload.run(&source).await?;
        Ok(true)
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

/// A push cleared for upload: where the bytes go, and the push's slot
/// among the resolver's pushes under way (freed when this goes).
#[derive(Debug)]
struct Upload {
    repo: Repository,
    target: Target,
    desc: Descriptor,
    _in_flight: InFlight,
}

/// The writer [`DockerPusher::push`] returns: its bytes are spooled and
/// checked at commit, then uploaded.
#[derive(Debug)]
struct PushWriter {
    upload: Upload,
    spool: tokio::fs::File,
    digester: Digester,
    written: u64,
    started_at: SystemTime,
    updated_at: SystemTime,
    closed: bool,
}

/// Where an upload reads the blob's bytes, at positions.
#[derive(Debug, Clone)]
enum Source {
    /// A writer's spool, whose size and digest its commit checked.
    Spool(Arc<std::fs::File>),
    /// A provider's blob, hashed as it is read (in order: an upload reads
    /// forwards, and goes back only to bytes read already).
    Checked(Arc<Checked>),
}

/// A provider's blob and the digest of what the upload has read of it.
struct Checked {
    reader: Box<dyn ocidist_content::ReaderAt>,
    expected: Digest,
    reference: String,
    /// The digest state of the first `.1` bytes.
    hashed: Mutex<(Digester, u64)>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// `len` bytes at `offset`.
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes> {
        match self {
            Source::Spool(spool) => read_spool_at(spool.clone(), offset, len).await,
            Source::Checked(checked) => {
                let mut buf = vec![0; len];
                let mut filled = 0;
                while filled < len {
                    let n = checked
                        .reader
                        .read_at(offset + filled as u64, &mut buf[filled..])
                        .await?;
                    if n == 0 {
                        return Err(ContentError::ShortRead {
                            expected: len as u64,
                            actual: filled as u64,
                        }
                        .into());
                    }
                    filled += n;
                }
                let bytes = Bytes::from(buf);
                let (checked, piece) = (checked.clone(), bytes.clone());
                tokio::task::spawn_blocking(move || checked.hash(offset, &piece))
                    .await
                    .map_err(|e| ContentError::Source(std::io::Error::other(e)))??;
                Ok(bytes)
            }
        }
    }

    /// The bytes `[offset, offset + len)` of a blob of `size` as a request
    /// body, read [`PIECE`] at a time as the request goes, so memory holds a
    /// piece or two whatever the length. The piece that ends the blob is
    /// held back, and the body fails, if the bytes are not the blob's.
    ///
    /// Why the body failed (the store could not be read, or the bytes are
    /// not the blob's) is kept in the returned [`BodyFailure`], since the
    /// HTTP client's error says only that the request failed.
    fn body(&self, offset: u64, len: u64, size: u64) -> (reqwest::Body, BodyFailure) {
        let end = offset + len;
        let failure = BodyFailure::default();
        let pieces = futures::stream::unfold(offset, {
            let source = self.clone();
            let failure = failure.clone();
            move |offset| {
                let source = source.clone();
                let failure = failure.clone();
                async move {
                    if offset >= end {
                        return None;
                    }
                    let len = (end - offset).min(PIECE);
                    let piece = source
                        .read_at(offset, len as usize)
                        .await
                        .and_then(|piece| match source.mismatch(size) {
                            Some(mismatch) => Err(mismatch.into()),
                            None => Ok(piece),
                        });
                    match piece {
                        Ok(piece) => Some((Ok(piece), offset + len)),
                        // The stream ends after its error.
                        Err(e) => {
                            failure.keep(e);
                            Some((Err(BodyFailed), end))
                        }
                    }
                }
            }
        });
        (reqwest::Body::wrap_stream(pieces), failure)
    }

    /// The mismatch, once every byte has been read, if the bytes are not
    /// the ones the descriptor names (a spool was checked at its commit).
    fn mismatch(&self, size: u64) -> Option<ContentError> {
        let Source::Checked(checked) = self else {
            return None;
        };
        let hashed = checked.hashed.lock().unwrap_or_else(|p| p.into_inner());
        // Asked after every piece: the digest is worked out at the end only.
        if hashed.1 != size {
            return None;
        }
        let actual = hashed.0.digest();
        (actual != checked.expected).then(|| ContentError::DigestMismatch {
            reference: checked.reference.clone(),
            expected: checked.expected.clone(),
            actual,
        })
    }
}

impl Checked {
    /// Adds what `piece`, read at `offset`, has past the bytes hashed so far.
    fn hash(&self, offset: u64, piece: &[u8]) -> Result<()> {
        let mut hashed = self.hashed.lock().unwrap_or_else(|p| p.into_inner());
        let (digester, upto) = &mut *hashed;
        let end = offset + piece.len() as u64;
        if offset > *upto {
            // Never: an upload goes back only to bytes it has sent.
            return Err(ContentError::other(
                ocidist_content::ErrorKind::Internal,
                format!(
                    "{}: read at {offset} with only {upto} bytes hashed",
                    self.reference
                ),
            )
            .into());
        }
        if end > *upto {
            digester.update(&piece[(*upto - offset) as usize..]);
            *upto = end;
        }
        Ok(())
    }
}

impl Upload {
    fn reference(&self) -> String {
        format!("push {}", self.desc.digest())
    }

    /// Uploads the blob or manifest whose bytes `source` holds.
    async fn run(&mut self, source: &Source) -> Result<()> {
        let size = self.desc.size();
        match &mut self.target {
            Target::Manifest { url } => {
                refuse_oversized_manifest(self.desc.digest(), size)?;
                let body = source.read_at(0, size as usize).await?;
                if let Some(mismatch) = source.mismatch(size) {
                    return Err(mismatch.into());
                }
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
                self.upload_blob_retrying(&uploads, session, source).await?;
            }
        }
        Ok(())
    }

    /// Uploads the blob, again through a new session (at most
    /// [`UPLOAD_ATTEMPTS`] in all) when the request carrying its bytes fails
    /// in a way another might not ([`worth_another_attempt`]), sent again
    /// from its start. Every failed attempt's session is asked to be let go
    /// of (`DELETE`), whatever the failure. The distribution registry refuses
    /// that (404) once part of the failed request's bytes arrived, as its
    /// session URL carries the offset it expects next: it keeps those bytes
    /// until it purges stale uploads (a week, by default). After one that
    /// is worth another attempt, the registry is asked whether it has the
    /// blob after all (an answer lost on its way back), before each new
    /// attempt and before giving up. The first attempt uses the `session` a
    /// refused mount opened, if any.
    async fn upload_blob_retrying(
        &self,
        uploads: &str,
        mut session: Option<Session>,
        source: &Source,
    ) -> Result<()> {
        let mut backoff = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            let failed = match self.upload_blob(uploads, session.take(), source).await {
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
    /// source is read at positions, never through a file offset, so a body
    /// of an earlier attempt still being dropped cannot move what this one
    /// reads. Bytes that turn out not to be the blob's (`source` checks
    /// them as they are read) never complete the upload.
    async fn upload_blob(
        &self,
        uploads: &str,
        session: Option<Session>,
        source: &Source,
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
        let size = self.desc.size();
        // A registry may ask for chunks of at least some size, all but the
        // last (`OCI-Chunk-Min-Length`); a blob no larger than one goes in
        // one `PUT`.
        let smallest_chunk = MIN_CHUNK.max(chunk_min.unwrap_or(0));
        let mut chunk = CHUNK.max(smallest_chunk);
        if size > MONOLITHIC_MAX && size > chunk {
            // Large blobs go in chunks, each a request of its own, so a
            // proxy's body limit or a slow link never has to carry it all.
            // A chunk that fails goes on from what the session says it has,
            // where the registry can say: the distribution registry cannot
            // once part of the chunk arrived (its session URL carries the
            // offset it expected), and the attempt starts a new session.
            let mut offset = 0;
            let mut resumes = 0;
            while offset < size {
                let len = chunk.min(size - offset);
                let url_text = url.to_string();
                let sent = async {
                    let (chunk, failure) = source.body(offset, len, size);
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
                        .await
                        .map_err(|e| failure.or(e))?;
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
            if let Some(mismatch) = source.mismatch(size) {
                return Err(failed(mismatch.into(), &url));
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
        let (body, failure) = source.body(0, size, size);
        let url_text = closing_url(&url, self.desc.digest());
        let response = self
            .repo
            .send_once(Method::PUT, &url_text, |r| {
                r.header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size)
                    .body(body)
            })
            .await
            // A body cut short by wrong bytes, or by a store that could not
            // be read, fails as a broken request: said as what it is, and
            // not tried again.
            .map_err(|e| failed(failure.or(e), &url))?;
        check_status(Method::PUT, &url_text, response, DONE)
            .await
            .map_err(|e| failed(e, &url))?;
        Ok(())
    }
}

/// Why a request body of [`Source::body`] failed, kept for the request's
/// error to be replaced by it.
#[derive(Clone, Default)]
struct BodyFailure(Arc<Mutex<Option<Error>>>);

impl BodyFailure {
    fn keep(&self, error: Error) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// The body's own failure if it failed, else `request`'s error.
    fn or(&self, request: Error) -> Error {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or(request)
    }
}

/// What the HTTP client is told when a body fails; the failure itself is
/// in the body's [`BodyFailure`].
#[derive(Debug)]
struct BodyFailed;

impl std::fmt::Display for BodyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the body could not be read")
    }
}

impl std::error::Error for BodyFailed {}

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
/// The pieces a request's body is read from its source in.
const PIECE: u64 = 1 << 20;
/// Times one attempt's chunked upload goes on from what its session has
/// after a chunk fails, before the attempt is given up.
const SESSION_RESUMES: u32 = 3;
/// The size of each `PATCH` chunk, at first. Each is streamed from the
/// source, so the size costs no memory; the distribution registry spends
/// about 15 ms on each chunk besides its bytes (1 GiB pushed in 16 MiB
/// chunks took 4.5-5.0 s here, in 64 MiB chunks 4.1-4.2 s, in one `PUT`
/// 3.7-4.2 s), and a failed chunk goes on from what the session has (where
/// the registry can say; see `upload_blob`).
const CHUNK: u64 = 64 << 20;
/// The smallest a refused chunk is cut to (a quarter at a time: 16, 4, then 1 MiB), unless
/// the registry asked for larger ones (`OCI-Chunk-Min-Length`).
const MIN_CHUNK: u64 = 1 << 20;

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

impl Drop for Upload {
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
                reference: this.upload.reference(),
            }
            .into()));
        }
        if this.written + buf.len() as u64 > this.upload.desc.size() {
            return Poll::Ready(Err(ContentError::WritePastSize {
                reference: this.upload.reference(),
                expected: this.upload.desc.size(),
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
            reference: self.upload.reference(),
            offset: self.written,
            total: Some(self.upload.desc.size()),
            expected: Some(self.upload.desc.digest().clone()),
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
                reference: self.upload.reference(),
            });
        }
        self.closed = true;
        let desc = &self.upload.desc;
        let want_size = size.unwrap_or(desc.size());
        if self.written != want_size || self.written != desc.size() {
            return Err(ContentError::SizeMismatch {
                reference: self.upload.reference(),
                expected: want_size,
                actual: self.written,
            });
        }
        let actual = self.digester.digest();
        let want = expected.unwrap_or(desc.digest());
        if actual != *want || actual != *desc.digest() {
            return Err(ContentError::DigestMismatch {
                reference: self.upload.reference(),
                expected: want.clone(),
                actual,
            });
        }
        use tokio::io::AsyncWriteExt;
        self.spool.flush().await.map_err(ContentError::Source)?;
        let spool = self
            .spool
            .try_clone()
            .await
            .map_err(ContentError::Source)?
            .into_std()
            .await;
        let source = Source::Spool(Arc::new(spool));
        self.upload.run(&source).await.map_err(remote)
    }

    async fn truncate(&mut self, size: u64) -> ocidist_content::Result<()> {
        if size != 0 {
            return Err(ContentError::InvalidArgument(format!(
                "{}: a push can only be truncated to 0",
                self.upload.reference()
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
