//! The crate's error type; its kinds are the content crate's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use ocidist_content::ErrorKind;

/// Errors from references, registries and transfers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A reference that does not parse; the message quotes it.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference {
        /// The input as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// From the content store.
    #[error(transparent)]
    Content(#[from] ocidist_content::Error),
    /// From image handling (manifests, handlers, the image store). An
    /// error of this crate that a handler returned through `walk` or
    /// `dispatch` comes back as itself, not as this (see the `From` impl).
    #[error(transparent)]
    Images(ocidist_images::Error),
    /// The registry could not be reached, or the connection broke.
    #[error("{url}: {}", connect_summary(source))]
    Connect {
        /// What was being requested.
        url: String,
        /// The cause.
        #[source]
        source: ConnectError,
    },
    /// The registry refused the client certificate, or the lack of one,
    /// with a fatal TLS alert (`CertificateRequired`, `BadCertificate`,
    /// `UnknownCA`, …).
    #[error("{url}: the registry ended the TLS session: {alert}")]
    TlsAlert {
        /// What was being requested.
        url: String,
        /// The alert, as rustls words it ("received fatal alert: …").
        alert: String,
    },
    /// The registry answered with an unexpected status.
    #[error(
        "{method} {url}: {status}{}{}",
        if body.is_empty() { String::new() } else { format!(": {body}") },
        note.as_ref().map_or(String::new(), |note| format!(" ({note})"))
    )]
    Status {
        /// The request method.
        method: String,
        /// The URL.
        url: String,
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The start of the response body (registries explain errors there).
        body: String,
        /// What the client knows that the answer does not say: for a 401,
        /// whether credentials were sent ("refused with the credentials
        /// for HOST", or "none were found for HOST"); for a 404 at resolve,
        /// the reference that was not found.
        note: Option<String>,
    },
    /// A CA or client certificate file that cannot be read or used.
    #[error("{}: {reason}", path.display())]
    TlsConfig {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A blob's download stopped short of what was asked for, cleanly (a
    /// range that ended early, a later range answered with the whole blob):
    /// resumable from what the store has, like a broken connection.
    #[error("{url}: {reason}")]
    Interrupted {
        /// The request's URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// A response body brought fewer bytes in a window than the resolver's
    /// low-speed limit asks: a registry that trickles is given up on like
    /// one that went silent (resumable, but the attempt counts as one that
    /// got nowhere).
    #[error(
        "{url}: {received} bytes in {:?}, under the low-speed limit of {} bytes per {:?}",
        limit.window,
        limit.min_bytes,
        limit.window
    )]
    TooSlow {
        /// The request's URL.
        url: String,
        /// Bytes that arrived in the window.
        received: u64,
        /// The limit.
        limit: crate::docker::LowSpeedLimit,
    },
    /// A response body failed (a reset, the idle-read timeout) having
    /// brought less than the low-speed limit's rate over all the time it was
    /// waited on: a registry that sends a little and then goes silent, every
    /// time, is given up on like one that trickles (resumable, but the
    /// attempt counts as one that got nowhere).
    #[error(
        "{received} bytes in {waited:.1?}, under the low-speed limit of {} bytes per {:?}, before the body failed",
        limit.min_bytes,
        limit.window
    )]
    Stalled {
        /// Bytes the body brought.
        received: u64,
        /// How long it was waited on.
        waited: std::time::Duration,
        /// The limit.
        limit: crate::docker::LowSpeedLimit,
        /// How the body failed.
        source: Box<Error>,
    },
    /// The registry's bytes or headers contradict what was asked for.
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Every host tried for the registry failed (mirrors, then the
    /// upstream): the others' errors in its message, so that a mirror passed
    /// over is not passed over in silence, and the last one's, whose kind
    /// this is, as its cause.
    #[error("{} hosts failed: {}; the last one too", earlier.len() + 1, list(earlier))]
    HostsFailed {
        /// The last host's error: the upstream's, where it can do what was
        /// asked. Its [`source`](std::error::Error::source), for a walk of
        /// the causes.
        #[source]
        last: Box<Error>,
        /// The errors of the hosts tried before it, in order.
        earlier: Vec<Error>,
    },
    /// Fetching one blob of an image failed: which blob, and its fetch's
    /// error, whose kind this is (match it for a 429, a digest mismatch,
    /// a registry too slow).
    #[error("{what} {digest}")]
    Blob {
        /// What the blob is to the image, as its ingest ref says:
        /// `manifest`, `index`, `config`, `layer` or `unknown`.
        what: String,
        /// The blob's digest.
        digest: ocidist_content::Digest,
        /// Why its fetch failed.
        source: Box<Error>,
    },
    /// A push of an index found a manifest it lists missing from the store
    /// (an index fetched for one platform keeps only that platform's).
    #[error(
        "the store lacks manifest {digest}{}, which index {listed_by} lists (was it fetched \
         for one platform?): push one platform's manifest alone, or fetch every platform first",
        platform.as_ref().map_or(String::new(), |p| format!(" (platform {p})"))
    )]
    MissingManifest {
        /// The missing manifest.
        digest: ocidist_content::Digest,
        /// Its platform, as the index says (`linux/arm/v7`).
        platform: Option<String>,
        /// The index that lists it.
        listed_by: ocidist_content::Digest,
    },
    /// The credentials for a host could not be looked up (a credential
    /// helper that failed, a secret store that refused), so the request
    /// that needed them was not made: Docker fails such a pull rather than
    /// going on anonymously. Of kind
    /// [`FailedPrecondition`](ErrorKind::FailedPrecondition).
    #[error("credentials for {host}")]
    Credentials {
        /// The host whose credentials were asked for.
        host: String,
        /// Why the lookup failed.
        #[source]
        source: crate::docker::auth::CredentialsError,
    },
    /// An error from a caller's resolver, fetcher or pusher, with the kind
    /// callers should see.
    ///
    /// Its message is the wrapped error's with that error's causes (see
    /// [`ocidist_content::Report`]): it adds only the kind. Match the
    /// variant to downcast it.
    #[error("{}", ocidist_content::Report::new(&**error))]
    Other {
        /// How callers should treat it.
        kind: ErrorKind,
        /// The wrapped error.
        error: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl From<ocidist_images::Error> for Error {
    /// An error of this crate that a handler passed through `walk` or
    /// `dispatch` (as [`ocidist_images::Error::Other`]) comes back typed,
    /// so callers of a fetch can match what the registry did.
    fn from(e: ocidist_images::Error) -> Self {
        match e {
            ocidist_images::Error::Other { kind, error } => match error.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(error) => Error::Images(ocidist_images::Error::other(kind, error)),
            },
            other => Error::Images(other),
        }
    }
}

/// `errors`, each with its causes, as one line separated by semicolons.
fn list(errors: &[Error]) -> String {
    let texts: Vec<String> = errors
        .iter()
        .map(|e| ocidist_content::Report::new(e).to_string())
        .collect();
    texts.join("; ")
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error of hosts tried in turn that all failed: the one error, or
    /// [`Error::HostsFailed`] when there were several; `None` for none.
    pub(crate) fn of_hosts(mut errors: Vec<Error>) -> Option<Error> {
        let last = errors.pop()?;
        Some(if errors.is_empty() {
            last
        } else {
            Error::HostsFailed {
                last: Box::new(last),
                earlier: errors,
            }
        })
    }

    /// The error that stands for this one, whose kind it has: the last
    /// host's through [`Error::HostsFailed`], the blob's fetch's through
    /// [`Error::Blob`]; this one otherwise. Match it to tell a registry's
    /// answer ([`Error::Status`]) from a connection that failed, however the
    /// error came to the caller.
    pub fn deciding(&self) -> &Error {
        match self {
            Error::HostsFailed { last, .. } => last.deciding(),
            Error::Blob { source, .. } => source.deciding(),
            other => other,
        }
    }

    /// The HTTP status the registry answered with, if an answer is what
    /// failed (see [`deciding`](Self::deciding)).
    pub fn http_status(&self) -> Option<reqwest::StatusCode> {
        match self.deciding() {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the registry answered 429 Too Many Requests (after the
    /// retries it allowed): it was asked as often as it allowed, and asking
    /// again at once would count again.
    pub fn is_rate_limited(&self) -> bool {
        self.http_status() == Some(reqwest::StatusCode::TOO_MANY_REQUESTS)
    }

    /// Whether the request timed out on as many attempts as may time out
    /// ([`MAX_TIMEOUTS`](crate::docker::MAX_TIMEOUTS)): the registry let
    /// each wait run out, and asking again at once would wait as long again.
    pub(crate) fn timed_out_every_time(&self) -> bool {
        matches!(
            self.deciding(),
            Error::Connect { source, .. }
                if source.is_timeout() && source.attempts() >= crate::docker::MAX_TIMEOUTS
        )
    }

    /// Whether a body came slower than the low-speed limit: resumable, but
    /// never counted as progress, however many bytes it brought.
    pub(crate) fn too_slow(&self) -> bool {
        matches!(
            self.deciding(),
            Error::TooSlow { .. } | Error::Stalled { .. }
        )
    }

    /// This error, with `note` if it is a 401 that has none yet.
    pub(crate) fn noted_if_unauthorized(self, note: impl FnOnce() -> String) -> Self {
        self.noted_if(reqwest::StatusCode::UNAUTHORIZED, note)
    }

    /// This error, with `note` if it is an answer of `status` that has none
    /// yet.
    pub(crate) fn noted_if(
        self,
        answered: reqwest::StatusCode,
        note: impl FnOnce() -> String,
    ) -> Self {
        match self {
            Error::Status {
                method,
                url,
                status,
                body,
                note: None,
            } if status == answered => Error::Status {
                method,
                url,
                status,
                body,
                note: Some(note()),
            },
            other => other,
        }
    }

    /// The kind of this error, for callers that branch on it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidReference { .. } => ErrorKind::InvalidArgument,
            Error::Content(e) => e.kind(),
            Error::Images(e) => e.kind(),
            // Asking again would be refused again, as for a TLS alert.
            Error::Connect { source, .. }
                if crate::docker::tls::certificate_rejected(&source.error) =>
            {
                ErrorKind::FailedPrecondition
            }
            Error::Connect { .. }
            | Error::Interrupted { .. }
            | Error::TooSlow { .. }
            | Error::Stalled { .. } => ErrorKind::Unavailable,
            Error::TlsConfig { .. } => ErrorKind::InvalidArgument,
            // Asking again is refused again.
            Error::TlsAlert { .. } => ErrorKind::FailedPrecondition,
            Error::Status { status, .. } => match status.as_u16() {
                404 => ErrorKind::NotFound,
                400 | 405 | 415 => ErrorKind::InvalidArgument,
                401 => ErrorKind::Unauthenticated,
                403 => ErrorKind::PermissionDenied,
                408 | 429 | 500..=599 => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            Error::Protocol { .. } | Error::Credentials { .. } => ErrorKind::FailedPrecondition,
            Error::HostsFailed { last, .. } => last.kind(),
            Error::Blob { source, .. } => source.kind(),
            Error::MissingManifest { .. } => ErrorKind::NotFound,
            Error::Other { kind, .. } => *kind,
        }
    }

    ocidist_content::kind_predicates!();

    /// Wraps a caller's error (a fetcher of its own, say) with the kind
    /// callers should see.
    ///
    /// ```
    /// use ocidist_remotes::{Error, ErrorKind};
    /// let e = Error::other(ErrorKind::Unauthenticated, "the vault sealed the registry's token");
    /// assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    /// ```
    pub fn other(
        kind: ErrorKind,
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Other {
            kind,
            error: error.into(),
        }
    }
}

/// Why a request could not be sent or its answer read ([`Error::Connect`]):
/// the HTTP client's error, kept behind this type so that the client's
/// crate and version are not part of this crate's API. Its message is the
/// root cause (an I/O error, a TLS error, with a hint where one helps) or
/// the limit of ours that ran out, and the number of attempts when more
/// than one: the client's own steps in between say nothing the URL does
/// not, so it has no [`source`](std::error::Error::source) of its own.
#[derive(Debug)]
pub struct ConnectError {
    pub(crate) error: reqwest::Error,
    /// The limit of ours that ran out, when the request timed out.
    limit: Option<Limit>,
    /// How many times the request was sent, this one included.
    attempts: u32,
}

impl ConnectError {
    /// The error of one request, sent once, with no limit known.
    pub(crate) fn new(error: reqwest::Error) -> Self {
        ConnectError {
            error,
            limit: None,
            attempts: 1,
        }
    }

    /// The error of the last of `attempts` tries of a request whose client
    /// gives up connecting after `connect` and waiting for bytes after
    /// `idle_read` (`None`: no limit). The message names the limit that ran
    /// out and the attempts, so that a wait of minutes is explained.
    pub(crate) fn after(
        mut self,
        attempts: u32,
        connect: Option<Duration>,
        idle_read: Option<Duration>,
    ) -> Self {
        self.attempts = attempts;
        // The kernel's ETIMEDOUT (TCP keepalive, SYN retries) counts as a
        // timeout too, but no limit of ours ran out: its own message says
        // what did.
        if self.error.is_timeout() && !kernel_timed_out(&self.error) {
            self.limit = if self.error.is_connect() {
                connect.map(Limit::Connect)
            } else {
                idle_read.map(Limit::IdleRead)
            };
        }
        self
    }

    /// The error of a request sent once with a limit on its whole time,
    /// `whole`, by a client that gives up connecting after `connect`: a
    /// timeout while connecting is the client's (the whole-time limit's
    /// error does not say it was connecting), any other is `whole`'s, which
    /// is shorter than the client's idle-read limit wherever this is used.
    pub(crate) fn within(mut self, whole: Duration, connect: Option<Duration>) -> Self {
        if self.error.is_timeout() && !kernel_timed_out(&self.error) {
            self.limit = if self.error.is_connect() {
                connect.map(Limit::Connect)
            } else {
                Some(Limit::Whole(whole))
            };
        }
        self
    }

    /// Whether the request timed out (connecting, or waiting for bytes).
    pub fn is_timeout(&self) -> bool {
        self.error.is_timeout()
    }

    /// Whether it failed while connecting (refused, unreachable, a name that
    /// does not resolve, a TLS handshake that failed), before anything was
    /// sent.
    pub fn is_connect(&self) -> bool {
        self.error.is_connect()
    }

    /// How many times the request was sent before this error ended it.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The deepest I/O error under this one, if there is one: the
    /// operating system's for a connection refused, reset or unreachable
    /// (its [`kind`](std::io::Error::kind) and
    /// [`raw_os_error`](std::io::Error::raw_os_error)), for a retry policy
    /// of one's own. The message says it already, so it is not this error's
    /// [`source`](std::error::Error::source).
    pub fn io_error(&self) -> Option<&std::io::Error> {
        let mut found = None;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&self.error);
        while let Some(error) = cause {
            if let Some(io) = error.downcast_ref::<std::io::Error>() {
                found = Some(io);
            }
            cause = error.source();
        }
        found
    }
}

impl std::fmt::Display for ConnectError {
    /// The cause, then how many times the request was sent when more than
    /// once: "nothing received for 30s (2 attempts)".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cause())?;
        match self.attempts {
            0 | 1 => Ok(()),
            n => write!(f, " ({n} attempts)"),
        }
    }
}

impl ConnectError {
    /// The limit of ours that ran out, or the root cause with a hint.
    fn cause(&self) -> String {
        let error = &self.error;
        // The kernel's ETIMEDOUT says so in its own words.
        if error.is_timeout() && !kernel_timed_out(error) {
            match self.limit {
                Some(Limit::Connect(limit)) => return format!("not connected in {limit:?}"),
                Some(Limit::IdleRead(limit)) => return format!("nothing received for {limit:?}"),
                Some(Limit::Whole(limit)) => return format!("no whole answer in {limit:?}"),
                None => {}
            }
        }
        let mut root: &(dyn std::error::Error + 'static) = error;
        while let Some(next) = root.source() {
            root = next;
        }
        let root = root.to_string();
        // The one certificate error a missing `ca-certificates` explains.
        let hint = if root.contains("UnknownIssuer") && NO_SYSTEM_ROOTS.load(Ordering::Relaxed) {
            " (this machine has no CA certificates of its own: install \
             ca-certificates, or trust the registry's CA explicitly)"
        } else if root.contains("InvalidContentType") {
            // What rustls makes of an HTTP answer to its hello.
            " (the server seems to speak plain HTTP, not HTTPS: use plain \
             HTTP for it, as `server = \"http://…\"` in its hosts.toml)"
        } else {
            ""
        };
        format!("{root}{hint}")
    }
}

impl std::error::Error for ConnectError {}

/// A limit of ours on a request, named by its error when it runs out.
#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The client's connect timeout.
    Connect(Duration),
    /// The client's idle-read timeout.
    IdleRead(Duration),
    /// The request's limit on its whole time.
    Whole(Duration),
}

/// What went wrong with a request ("cannot connect", "timed out"), whose
/// cause is the [`ConnectError`]'s message (the root cause, or the limit
/// that ran out): reqwest's own message names only the URL, which the error
/// says already.
fn connect_summary(failed: &ConnectError) -> &'static str {
    let error = &failed.error;
    match () {
        _ if error.is_timeout() => "timed out",
        _ if error.is_connect() => "cannot connect",
        _ if error.is_body() || error.is_decode() => "the response broke off",
        _ => "the request failed",
    }
}

/// Whether `error` is the kernel's `ETIMEDOUT` (a peer that stopped
/// answering TCP keepalive probes, or a connect the kernel gave up on),
/// rather than a timer of the client's.
fn kernel_timed_out(error: &reqwest::Error) -> bool {
    use std::error::Error as _;
    let mut cause = error.source();
    while let Some(next) = cause {
        if next
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.raw_os_error() == Some(libc::ETIMEDOUT))
        {
            return true;
        }
        cause = next.source();
    }
    false
}

/// Set once a client, about to check a certificate, found that the machine
/// has no CA certificates of its own: a certificate it then cannot verify
/// says why. It is process-wide because the system's certificates are the
/// machine's.
pub(crate) static NO_SYSTEM_ROOTS: AtomicBool = AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;
    use ocidist_content::Report;

    #[tokio::test]
    async fn a_whole_time_limit_that_ran_out_is_named_once() {
        // Connections wait in the backlog, accepted by the kernel and
        // answered by no one.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", silent.local_addr().unwrap());
        let limit = Duration::from_millis(200);
        let error = reqwest::Client::new()
            .get(&url)
            .timeout(limit)
            .send()
            .await
            .unwrap_err();
        let failed = Error::Connect {
            url: url.clone(),
            source: ConnectError::new(error).within(limit, Some(Duration::from_secs(30))),
        };
        assert_eq!(
            Report::new(&failed).to_string(),
            format!("{url}: timed out: no whole answer in 200ms")
        );
    }

    #[tokio::test]
    async fn the_os_error_under_a_refused_connection_can_be_reached() {
        let port = {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            closed.local_addr().unwrap().port()
        };
        let error = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/v2/"))
            .send()
            .await
            .unwrap_err();
        let failed = ConnectError::new(error);
        let io = failed
            .io_error()
            .expect("an I/O error under a refused connection");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io.raw_os_error(), Some(libc::ECONNREFUSED));
        assert!(failed.to_string().contains(&io.to_string()), "{failed}");
    }
}
