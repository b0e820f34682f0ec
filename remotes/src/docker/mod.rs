//! The Docker registry v2 / OCI distribution client.
//!
//! A loopback registry (`localhost`, `127.0.0.0/8`, `::1`) with no settings
//! is spoken to as containerd speaks to one: with no port or port 443, over
//! HTTPS without checking its certificate; on port 80, in plain HTTP; on any
//! other port, in whichever it speaks, which one `GET /v2/` (or two) settles
//! once per resolver and registry: plain HTTP if it speaks that, else HTTPS,
//! unchecked. Its token service, if not on a loopback host too, is still
//! checked. TLS settings (CA files, a client certificate, `skip_verify`)
//! given for the resolver make it HTTPS, checked as they say; given for it
//! in the hosts directory, they have it settled so, and checked as they
//! say if it speaks TLS. A scheme written in `hosts.toml` is used
//! as written, except an `http://` host on a port other than 80 given TLS
//! settings (its own or the resolver's), which is settled as a loopback one
//! is (containerd's "bypass TLS verification" configuration). Elsewhere, HTTPS (rustls, the system's roots plus any CA
//! files given).
//!
//! Authentication is in [`auth`] and [`config`]; containerd's `hosts.toml`
//! (mirrors, capabilities, TLS) and Docker's `certs.d` in [`hosts`].

pub mod auth;
pub mod config;
mod fetcher;
pub mod hosts;
mod pusher;
mod skipped;
mod speed;
pub(crate) mod tls;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use futures::StreamExt;
use oci_spec::image::{Descriptor, Digest, MediaType};
use ocidist_content::Digester;
use ocidist_content::helpers::jitter;
use ocidist_images::media_types;
use reqwest::{Method, StatusCode, header};

pub use fetcher::{DockerFetcher, RangedFetch};
pub use pusher::DockerPusher;
pub use skipped::HostSkipped;
pub use speed::LowSpeedLimit;

use crate::{ConnectError, Error, Fetcher, Pusher, Reference, Resolver, Result};

/// What `resolve` accepts, most specific first: Docker and OCI manifests and indexes.
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, */*;q=0.8";

/// Manifests larger than this are refused without being read: the same
/// bound the image store's readers hold them to.
pub use ocidist_images::manifest::MAX_MANIFEST_SIZE;

/// How many times an idempotent request is tried.
pub const ATTEMPTS: u32 = 5;

/// Of those, how many may end in a timeout (connecting, or waiting for an
/// answer) before the request is given up on.
pub const MAX_TIMEOUTS: u32 = 2;

/// The longest wait between attempts, whatever `Retry-After` asks.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

/// `d` to the second, as `27h46m40s`.
fn humantime_secs(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by registries).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    retry_after_value(value.trim(), std::time::SystemTime::now())
}

/// A `Retry-After` value: seconds, or an HTTP date (`Sun, 06 Nov 1994
/// 08:49:37 GMT`), which is waited for from `now` (not at all if past).
fn retry_after_value(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = std::time::UNIX_EPOCH + Duration::from_secs(http_date_seconds(value)?);
    Some(at.duration_since(now).unwrap_or_default())
}

/// Seconds since the epoch of an IMF-fixdate (RFC 9110), the only HTTP-date
/// form senders may generate.
fn http_date_seconds(value: &str) -> Option<u64> {
    let parts: Vec<&str> = value.split_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [hour, minute, second] = hms[..] else {
        return None;
    };
    // Out-of-range fields are not a date (and would overflow below).
    if !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&second)
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// The `User-Agent` requests carry unless
/// [`DockerResolver::user_agent`] says otherwise.
pub const DEFAULT_USER_AGENT: &str = concat!("ocidist/", env!("CARGO_PKG_VERSION"));

/// By default, give up on a connection that is not established (TLS
/// handshake included) in this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// By default, give up on a response that sends nothing for this long (the
/// stream is then resumed from where it stopped, by the fetch handler).
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long each of the (at most two) requests settling a loopback
/// registry's protocol may take (our limit; Go's TLS handshake timeout).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// When to speak plain HTTP instead of HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    /// For loopback hosts (`localhost`, `127.0.0.0/8`, `::1`) on port 80,
    /// or on another port that is not 443 if they answer in it, as
    /// containerd does; the others get HTTPS without their certificate being
    /// checked. TLS settings given for the host make it HTTPS, checked as
    /// they say.
    #[default]
    Loopback,
    /// Always (`--plain-http`).
    Always,
    /// Never.
    Never,
}

/// What an HTTP client is built from: the TLS and connection settings of
/// the resolver, or of an endpoint in `hosts.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Connection {
    ca_files: Vec<PathBuf>,
    /// CA certificates given in memory (PEM), trusted beside the files'.
    ca_pems: Vec<Arc<[u8]>>,
    /// The one presented is chosen as Go chooses (see `tls.rs`).
    client_certs: Vec<hosts::ClientCert>,
    skip_verify: bool,
    /// [`CONNECT_TIMEOUT`] when `None`.
    dial_timeout: Option<Duration>,
    /// [`IDLE_READ_TIMEOUT`] when `None`.
    idle_read_timeout: Option<Duration>,
    /// [`DEFAULT_USER_AGENT`] when `None`.
    user_agent: Option<String>,
}

impl Connection {
    /// True when any TLS setting is given.
    fn has_tls(&self) -> bool {
        !self.ca_files.is_empty()
            || !self.ca_pems.is_empty()
            || !self.client_certs.is_empty()
            || self.skip_verify
    }

    /// The files the client is built from.
    fn files(&self) -> impl Iterator<Item = &Path> {
        let client = self
            .client_certs
            .iter()
            .flat_map(|c| std::iter::once(c.cert.as_path()).chain(c.key.as_deref()));
        self.ca_files.iter().map(PathBuf::as_path).chain(client)
    }

    /// What the files are now (modification time and length), to notice a
    /// certificate rotated in place.
    fn file_stamps(&self) -> Vec<Option<(std::time::SystemTime, u64)>> {
        self.files()
            .map(|f| {
                let meta = std::fs::metadata(f).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }
}

/// A client built for an endpoint, and what its files were then.
#[derive(Debug, Clone)]
struct CachedClient {
    client: tls::HttpClient,
    stamps: Vec<Option<(std::time::SystemTime, u64)>>,
}

/// The client kept in `clients` for `connection`, or a new one kept there
/// when there is none or its files changed since.
fn kept_client(
    clients: &Mutex<HashMap<Connection, CachedClient>>,
    connection: Connection,
) -> Result<tls::HttpClient> {
    let stamps = connection.file_stamps();
    let cached = clients
        .lock()
        .expect("no panics while held")
        .get(&connection)
        .filter(|c| c.stamps == stamps)
        .map(|c| c.client.clone());
    if let Some(client) = cached {
        return Ok(client);
    }
    // Built outside the lock: it reads files. Two racing builds both work.
    let client = connection.client()?;
    let entry = CachedClient {
        client: client.clone(),
        stamps,
    };
    clients
        .lock()
        .expect("no panics while held")
        .insert(connection, entry);
    Ok(client)
}

/// A [`Resolver`] for registries speaking the distribution API.
#[derive(Debug, Clone)]
pub struct DockerResolver {
    /// The client for endpoints without settings of their own, built from `defaults`.
    client: tls::HttpClient,
    defaults: Connection,
    /// Clients for endpoints with TLS or dial settings of their own, kept
    /// so that every fetcher of an endpoint shares its connections, with
    /// the stamps of the files they were built from.
    clients: Arc<Mutex<HashMap<Connection, CachedClient>>>,
    plain_http: PlainHttp,
    /// What each loopback registry (by host) or `http://` URL written with
    /// TLS settings (by URL) was found to speak (true: TLS), shared by clones
    /// so that one request settles it.
    loopback_tls: Arc<Mutex<HashMap<String, Arc<tokio::sync::OnceCell<bool>>>>>,
    authorizer: auth::Authorizer,
    hosts: Hosts,
    ranged: fetcher::Ranged,
    /// Manifests resolving had to GET, for the first fetch of each.
    resolved: fetcher::Resolved,
    /// The pushes under way through any of this resolver's pushers, by
    /// repository and digest: a second push of one blob is `Unavailable`.
    pushing: pusher::Pushing,
    /// Where pushed blobs are spooled (`None`: the system's temporary directory).
    spool_dir: Option<PathBuf>,
    /// What every response body must bring while it is read.
    low_speed: LowSpeedLimit,
    /// Headers for every endpoint, before (and replaced by) an endpoint's
    /// own `[header]` of the same name.
    headers: Vec<(String, String)>,
    /// Told of every host passed over for the next one.
    skipped: skipped::SkipHook,
}

/// How the upstream of a registry is spoken to when no hosts file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
    /// HTTPS without checking the certificate: a loopback registry with no
    /// port or port 443.
    HttpsUnchecked,
    /// Plain HTTP if the registry speaks it, else HTTPS without checking
    /// the certificate: a loopback registry on another port.
    Settle,
}

/// Where a registry's endpoints come from.
#[derive(Clone)]
enum Hosts {
    /// The upstream alone.
    Upstream,
    /// containerd's hosts directory.
    Dir(PathBuf),
    /// The caller's function: registry and upstream URL to endpoints.
    Code(Arc<RegistryHostsFn>),
}

/// What [`DockerResolver::registry_hosts`] takes.
type RegistryHostsFn =
    dyn Fn(&str, &str) -> std::result::Result<Vec<hosts::Endpoint>, BoxError> + Send + Sync;

/// Any error, as [`DockerResolver::registry_hosts`]'s function returns it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hosts::Upstream => f.write_str("Upstream"),
            Hosts::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            Hosts::Code(_) => f.write_str("Code(..)"),
        }
    }
}

impl Hosts {
    /// The endpoints of `registry`, in the order to try them, ending with
    /// the upstream (`upstream` unless configured otherwise).
    async fn endpoints(&self, registry: &str, upstream: &str) -> Result<Vec<hosts::Endpoint>> {
        let (registry, default) = (registry.to_string(), upstream.to_string());
        // On a blocking thread: the files may be on a hung network mount
        // (or a FIFO), the caller's function may read some, and the
        // runtime's threads must stay free for the caller's timeouts and
        // signals.
        let read = match self {
            Hosts::Upstream => return Ok(vec![hosts::Endpoint::upstream(default)]),
            Hosts::Dir(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || hosts::endpoints(&dir, &registry, &default))
            }
            Hosts::Code(hosts) => {
                let hosts = hosts.clone();
                tokio::task::spawn_blocking(move || {
                    let mut endpoints = hosts(&registry, &default).map_err(|e| {
                        let e = match e.downcast::<Error>() {
                            Ok(ours) => return *ours,
                            Err(other) => other,
                        };
                        match e.downcast::<ocidist_content::Error>() {
                            Ok(content) => Error::Content(*content),
                            Err(other) => Error::other(
                                crate::ErrorKind::InvalidArgument,
                                format!(
                                    "the hosts of {registry}: {}",
                                    ocidist_content::Report::new(&*other)
                                ),
                            ),
                        }
                    })?;
                    for endpoint in &mut endpoints {
                        endpoint.url = hosts::endpoint_url(&endpoint.url);
                    }
                    Ok(endpoints)
                })
            }
        };
        joined(read, "read the registry's hosts").await
    }
}

/// The answer of a blocking task; a panic in it goes on in the caller.
async fn joined<T>(task: tokio::task::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    match task.await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Content(ocidist_content::Error::other(
            ocidist_content::ErrorKind::Unavailable,
            format!("{what}: {e}"),
        ))),
    }
}

impl Default for DockerResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl DockerResolver {
    /// A resolver with default settings.
    pub fn new() -> Self {
        let client = Connection::default()
            .client()
            .expect("a client with default settings always builds");
        DockerResolver {
            client,
            defaults: Connection::default(),
            clients: Arc::default(),
            plain_http: PlainHttp::default(),
            loopback_tls: Arc::default(),
            authorizer: auth::Authorizer::new(Arc::new(auth::Anonymous)),
            hosts: Hosts::Upstream,
            ranged: fetcher::Ranged::new(RangedFetch::default()),
            resolved: fetcher::Resolved::default(),
            pushing: pusher::Pushing::default(),
            spool_dir: None,
            low_speed: LowSpeedLimit::default(),
            headers: Vec::new(),
            skipped: skipped::SkipHook::default(),
        }
    }

    /// Sets how large blobs are fetched in parallel ranged requests
    /// ([`RangedFetch::OFF`] for one request per blob).
    pub fn ranged_fetch(mut self, settings: RangedFetch) -> Self {
        self.ranged = fetcher::Ranged::new(settings);
        self
    }

    /// The ranged-fetch settings in use.
    pub fn ranged_fetch_settings(&self) -> RangedFetch {
        self.ranged.settings()
    }

    /// Spools the blobs a pusher's writers receive in `dir` (an unnamed file
    /// each, gone when the push ends) instead of the system's temporary
    /// directory, which may be a tmpfs in memory: a push holds up to as
    /// many whole blobs there as it uploads at once. Put it on the disk the
    /// content store is on.
    pub fn spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Reads per-registry mirrors and settings from containerd's layout,
    /// `<dir>/<registry>/hosts.toml` (see [`hosts`]).
    ///
    /// It replaces the endpoints of an earlier
    /// [`registry_hosts`](Self::registry_hosts).
    pub fn hosts_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.hosts = Hosts::Dir(dir.into());
        self
    }

    /// Takes each registry's endpoints from `hosts` instead of a hosts
    /// directory, as containerd's `ResolverOptions.Hosts`: a runtime that
    /// keeps mirrors in its own configuration needs no `hosts.toml` on
    /// disk. `hosts` is called with the registry (`docker.io`,
    /// `localhost:5000`) and the URL of its upstream as the resolver would
    /// reach it (`https://registry-1.docker.io`), and returns the
    /// endpoints to try, in order, as a hosts file would give them (mirrors,
    /// then the upstream: [`hosts::Endpoint::upstream`] of that URL, last,
    /// keeps the resolver's own choice of protocol for a loopback registry,
    /// as a hosts file's upstream does). A URL without a scheme is
    /// `https://`, and a trailing `/` is dropped, as in a hosts file;
    /// [`hosts::parse`] reads the text of a `hosts.toml` into endpoints.
    ///
    /// `hosts` runs on a blocking thread, once for every resolve, fetcher
    /// and pusher. An error it returns is theirs: an [`Error`] or an
    /// [`ocidist_content::Error`] as it is (its kind kept), any other as
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) (a
    /// configuration that cannot be used), naming the registry.
    ///
    /// It replaces an earlier [`hosts_dir`](Self::hosts_dir).
    ///
    /// ```
    /// use ocidist_remotes::docker::{DockerResolver, hosts};
    /// // docker.io through a pull-through cache; other registries directly.
    /// let resolver = DockerResolver::new().registry_hosts(|registry, upstream| {
    ///     let upstream = hosts::Endpoint::upstream(upstream.to_string());
    ///     if registry != "docker.io" {
    ///         return Ok(vec![upstream]);
    ///     }
    ///     let mirror = hosts::Endpoint {
    ///         capabilities: hosts::Capabilities { pull: true, resolve: true, push: false },
    ///         ..hosts::Endpoint::new("https://cache.example.com")
    ///     };
    ///     Ok(vec![mirror, upstream])
    /// });
    /// ```
    pub fn registry_hosts<F>(mut self, hosts: F) -> Self
    where
        F: Fn(&str, &str) -> std::result::Result<Vec<hosts::Endpoint>, BoxError>
            + Send
            + Sync
            + 'static,
    {
        self.hosts = Hosts::Code(Arc::new(hosts));
        self
    }

    /// Answers registries' authentication challenges with `credentials`
    /// (basic auth, or bearer tokens from the registry's token service, cached
    /// per host and scope and shared by every request of this resolver).
    pub fn credentials(mut self, credentials: Arc<dyn auth::Credentials>) -> Self {
        self.authorizer = auth::Authorizer::new(credentials);
        self
    }

    /// Chooses when to use plain HTTP.
    pub fn plain_http(mut self, plain_http: PlainHttp) -> Self {
        self.plain_http = plain_http;
        self
    }

    /// Trusts the CA certificates in the PEM files `ca_files` beside the
    /// system's, and with `skip_verify` accepts any certificate (for test
    /// registries only: it lets anyone in the middle read and change the data;
    /// digests still catch changed content). Endpoints in `hosts.toml` add
    /// their own CA files to these.
    ///
    /// A file that cannot be read or holds no certificate is an
    /// [`Error::TlsConfig`] ([`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)).
    pub fn tls(mut self, ca_files: &[PathBuf], skip_verify: bool) -> Result<Self> {
        self.defaults.ca_files = ca_files.to_vec();
        self.defaults.skip_verify = skip_verify;
        self.rebuild_client()?;
        Ok(self)
    }

    /// Trusts the CA certificates in `pem` (one or more PEM certificates,
    /// held in memory: from a runtime's own configuration or a Kubernetes
    /// secret, with no file to write) beside the system's and those of
    /// [`tls`](Self::tls)'s files, for every registry and mirror. Call it
    /// again to add more. An endpoint in `hosts.toml` with CA files of its
    /// own trusts these too. As with [`tls`](Self::tls)'s files, a loopback
    /// registry is then spoken to in HTTPS with its certificate checked,
    /// not in plain HTTP (a `hosts.toml` entry can say otherwise for it).
    ///
    /// A `pem` with no certificate, or one that cannot be a CA, is an
    /// [`Error::TlsConfig`] ([`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument))
    /// whose path names it as `<CA PEM n>` (the n-th given, from 1).
    ///
    /// ```
    /// use ocidist_remotes::docker::DockerResolver;
    /// let err = DockerResolver::new().ca_pem("not a certificate").unwrap_err();
    /// assert_eq!(err.to_string(), "<CA PEM 1>: no PEM certificate in it");
    /// ```
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Result<Self> {
        self.defaults.ca_pems.push(Arc::from(pem.as_ref()));
        self.rebuild_client()?;
        Ok(self)
    }

    /// Presents the client certificate `cert` (PEM, with its key inside, or
    /// the key in the PEM file `key`) to registries that ask for one (mutual
    /// TLS). An endpoint in `hosts.toml` that names its own offers them
    /// after this one; the registry gets the first its CAs accept.
    pub fn client_certificate(mut self, cert: &Path, key: Option<&Path>) -> Result<Self> {
        self.defaults.client_certs = vec![hosts::ClientCert {
            cert: cert.to_path_buf(),
            key: key.map(Path::to_path_buf),
        }];
        self.rebuild_client()?;
        Ok(self)
    }

    /// Gives up on opening a connection (TLS handshake included) after
    /// `connect` ([`CONNECT_TIMEOUT`] by default; a host's `dial_timeout`
    /// wins) and on a response that sends nothing for `idle_read`
    /// ([`IDLE_READ_TIMEOUT`] by default); zero is no limit. A blob
    /// download that goes idle ends in
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable), and the
    /// fetch handler resumes it from the bytes already written.
    pub fn timeouts(mut self, connect: Duration, idle_read: Duration) -> Result<Self> {
        self.defaults.dial_timeout = Some(connect);
        self.defaults.idle_read_timeout = Some(idle_read);
        self.rebuild_client()?;
        Ok(self)
    }

    /// Gives up on a response body that brings fewer bytes than `limit`
    /// asks in a window ([`LowSpeedLimit::default`]: 16 KiB a minute;
    /// [`LowSpeedLimit::OFF`] for none): the idle-read timeout never ends a
    /// registry that sends a byte every few seconds.
    pub fn low_speed_limit(mut self, limit: LowSpeedLimit) -> Self {
        self.low_speed = limit;
        self
    }

    /// Calls `hook` for every host passed over for the next one: a mirror
    /// that failed (unreachable, a certificate it cannot verify, a 404 or a
    /// 503) before the upstream is asked, a foreign layer's URL before the
    /// registry is. A fallback that works is otherwise silent, as it should
    /// be for the request; containerd logs each such host, and a program can
    /// do the same from here (the hook runs on the request's task: keep it
    /// short).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use ocidist_remotes::docker::DockerResolver;
    ///
    /// let said = Arc::new(Mutex::new(Vec::new()));
    /// let log = said.clone();
    /// let resolver = DockerResolver::new().on_host_skipped(move |skipped| {
    ///     // The error with its causes ("cannot connect: Connection refused").
    ///     let error = ocidist_content::Report::new(skipped.error);
    ///     let line = format!("trying the next host after {}: {error}", skipped.host);
    ///     log.lock().unwrap().push(line);
    /// });
    /// # drop((resolver, said));
    /// ```
    pub fn on_host_skipped(
        mut self,
        hook: impl Fn(&HostSkipped<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.skipped = skipped::SkipHook::new(hook);
        self
    }

    /// Names the program to registries: the `User-Agent` of every request
    /// ([`DEFAULT_USER_AGENT`] by default), as a runtime built on containerd
    /// sets its own. A value that cannot be a header is
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
    ///
    /// ```
    /// use ocidist_remotes::docker::DockerResolver;
    /// let resolver = DockerResolver::new().user_agent("my-runtime/1.2")?;
    /// assert!(DockerResolver::new().user_agent("two\nlines").is_err());
    /// # Ok::<(), ocidist_remotes::Error>(())
    /// ```
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Result<Self> {
        let user_agent = user_agent.into();
        if let Err(e) = reqwest::header::HeaderValue::from_str(&user_agent) {
            return Err(Error::other(
                crate::ErrorKind::InvalidArgument,
                format!("user agent {user_agent:?}: {e}"),
            ));
        }
        self.defaults.user_agent = Some(user_agent);
        self.rebuild_client()?;
        Ok(self)
    }

    /// Sends the header `name: value` with every request to every registry
    /// and mirror, as containerd's `ResolverOptions.Headers` (an API key a
    /// gateway in front of all of them wants, say), and to their token
    /// services, but not with the bare `GET /v2/` that first asks a
    /// loopback registry whether it speaks TLS (in plain HTTP). Call it
    /// again to add more; an endpoint's own `[header]` of that name in
    /// `hosts.toml` replaces it there. As those, a header that holds credentials
    /// (`Authorization`, `Cookie`, ...) goes only to the endpoint's own
    /// origin, never to a redirect's or an upload's elsewhere, and a
    /// registry's own challenge replaces a configured `Authorization`. A
    /// name or value that cannot be a header is
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument).
    ///
    /// ```
    /// use ocidist_remotes::docker::DockerResolver;
    /// let resolver = DockerResolver::new().header("X-Api-Key", "k-123")?;
    /// assert!(DockerResolver::new().header("bad name", "v").is_err());
    /// # Ok::<(), ocidist_remotes::Error>(())
    /// ```
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Result<Self> {
        let (name, value) = (name.into(), value.into());
        if let Err(e) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
            return Err(Error::other(
                crate::ErrorKind::InvalidArgument,
                format!("header name {name:?}: {e}"),
            ));
        }
        if let Err(e) = reqwest::header::HeaderValue::from_str(&value) {
            return Err(Error::other(
                crate::ErrorKind::InvalidArgument,
                format!("header {name}: value {value:?}: {e}"),
            ));
        }
        self.headers.push((name, value));
        Ok(self)
    }

    /// The headers for `endpoint`: the resolver's, less those the
    /// endpoint sets itself, then the endpoint's.
    fn headers_for(&self, endpoint: &hosts::Endpoint) -> Vec<(String, String)> {
        let own = |name: &str| {
            endpoint
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        self.headers
            .iter()
            .filter(|(name, _)| !own(name))
            .chain(&endpoint.headers)
            .cloned()
            .collect()
    }

    fn rebuild_client(&mut self) -> Result<()> {
        self.client = self.defaults.client()?;
        self.clients = Arc::default();
        Ok(())
    }

    /// The client for `endpoint`: the resolver's, or one with the endpoint's
    /// TLS and dial settings merged with the resolver's, built once (again
    /// when one of its files changed). Files are looked at on a blocking
    /// thread, as the hosts directory is read: one may be on a hung network
    /// mount.
    async fn client_for(&self, endpoint: &hosts::Endpoint) -> Result<tls::HttpClient> {
        let Some(connection) = self.connection_for(endpoint) else {
            return Ok(self.client.clone());
        };
        let clients = self.clients.clone();
        if connection.files().next().is_none() {
            return kept_client(&clients, connection);
        }
        let build = tokio::task::spawn_blocking(move || kept_client(&clients, connection));
        joined(build, "build the registry's client").await
    }

    /// Where fetchers get a descriptor's `urls` from.
    fn url_source(&self) -> fetcher::UrlSource {
        fetcher::UrlSource {
            client: self.client.http.clone(),
            low_speed: self.low_speed,
            connect: self.client.connect_timeout,
            idle_read: self.client.idle_read_timeout,
        }
    }

    /// The settings for `endpoint`, when it has any of its own: its CA files
    /// and client certificates after the resolver's (as containerd adds a
    /// host's to its defaults), its `skip_verify` and dial timeout where it
    /// sets them.
    fn connection_for(&self, endpoint: &hosts::Endpoint) -> Option<Connection> {
        if !endpoint.has_connection_settings() {
            return None;
        }
        Some(Connection {
            ca_files: [&self.defaults.ca_files[..], &endpoint.ca_files[..]].concat(),
            ca_pems: self.defaults.ca_pems.clone(),
            client_certs: [&self.defaults.client_certs[..], &endpoint.client_certs[..]].concat(),
            skip_verify: endpoint.skip_verify.unwrap_or(self.defaults.skip_verify),
            dial_timeout: endpoint.dial_timeout.or(self.defaults.dial_timeout),
            idle_read_timeout: self.defaults.idle_read_timeout,
            user_agent: self.defaults.user_agent.clone(),
        })
    }

    fn scheme(&self, host: &str) -> Scheme {
        match self.plain_http {
            PlainHttp::Always => Scheme::Http,
            PlainHttp::Never => Scheme::Https,
            // TLS settings given for the resolver say the registry speaks TLS.
            PlainHttp::Loopback if !is_loopback(host) || self.defaults.has_tls() => Scheme::Https,
            PlainHttp::Loopback => match port_of(host) {
                Some("80") => Scheme::Http,
                None | Some("443") => Scheme::HttpsUnchecked,
                Some(_) => Scheme::Settle,
            },
        }
    }

    /// Makes `upstream` (a loopback registry's default upstream, plain HTTP
    /// as it comes) HTTPS if the registry speaks TLS, asked once per
    /// registry and resolver; the certificate is checked only if the hosts
    /// directory says `skip_verify = false`. True when it became HTTPS
    /// unchecked. A registry that answers neither way (it is down) is left
    /// in plain HTTP for the request itself to report, and asked again next
    /// time.
    async fn settle_loopback(&self, upstream: &mut hosts::Endpoint) -> Result<bool> {
        let host = upstream.host().to_string();
        let mut over_tls = upstream.clone();
        over_tls.url = format!("https://{host}");
        over_tls.skip_verify = Some(upstream.skip_verify.unwrap_or(true));
        if !self.settled_tls(host, upstream, &over_tls).await? {
            return Ok(false);
        }
        *upstream = over_tls;
        Ok(upstream.skip_verify == Some(true))
    }

    /// Makes `endpoint` (an `http://` URL given TLS settings, its own or the
    /// resolver's) HTTPS if the registry there speaks TLS, asked once per URL
    /// and resolver, as containerd tries HTTPS first for such a host and
    /// falls back to plain HTTP. Its certificate is checked as written.
    async fn settle_written(&self, endpoint: &mut hosts::Endpoint) -> Result<()> {
        let mut over_tls = endpoint.clone();
        over_tls.url = endpoint.url.replacen("http://", "https://", 1);
        if self
            .settled_tls(endpoint.url.clone(), endpoint, &over_tls)
            .await?
        {
            *endpoint = over_tls;
        }
        Ok(())
    }

    /// [`speaks_tls`](Self::speaks_tls), asked once per `key` and resolver:
    /// concurrent first calls wait for one question. A registry that
    /// answers nothing is not settled: false, for the request itself to
    /// report, and the next call asks again.
    async fn settled_tls(
        &self,
        key: String,
        plain: &hosts::Endpoint,
        over_tls: &hosts::Endpoint,
    ) -> Result<bool> {
        let settled = self
            .loopback_tls
            .lock()
            .expect("no panics while held")
            .entry(key)
            .or_default()
            .clone();
        let answer = settled
            .get_or_try_init(|| async {
                match self.speaks_tls(plain, over_tls).await {
                    Ok(Some(found)) => Ok(found),
                    Ok(None) => Err(None),
                    Err(e) => Err(Some(e)),
                }
            })
            .await;
        match answer {
            Ok(found) => Ok(*found),
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    /// Whether the registry at `plain` (the same at `over_tls`) speaks TLS;
    /// `None` when it answers neither. Plain HTTP is asked first, so that a
    /// plain registry never starts TLS (whose first handshake in a process
    /// costs ~20 ms, seeding the TLS library's random generator): an answer
    /// other than 400 settles it, unless it came by a redirect to HTTPS on
    /// the same host (nginx's answer to plain HTTP on its TLS port). A 400
    /// (Go's and nginx's other answer to plain HTTP on a TLS port), a broken
    /// connection or no answer in [`SETTLE_TIMEOUT`] is followed by a
    /// `GET /v2/` over TLS: any answer settles TLS, and so does a failed
    /// handshake after a 400 (a registry wanting a client certificate, say:
    /// the request then reports why), unless the handshake was answered in
    /// plain HTTP.
    async fn speaks_tls(
        &self,
        plain: &hosts::Endpoint,
        over_tls: &hosts::Endpoint,
    ) -> Result<Option<bool>> {
        /// The status and final URL of a `GET`, its body read so that the
        /// connection is kept for the requests to come.
        async fn answer(
            client: reqwest::Client,
            url: String,
        ) -> reqwest::Result<(StatusCode, reqwest::Url)> {
            let response = client.get(&url).timeout(SETTLE_TIMEOUT).send().await?;
            let answered = (response.status(), response.url().clone());
            let unlimited = speed::SpeedCheck::new(LowSpeedLimit::OFF, None);
            let _ = read_limited(&url, response, MAX_MANIFEST_SIZE, unlimited).await;
            Ok(answered)
        }
        let plain_answer = answer(
            self.client_for(plain).await?.http,
            format!("{}/", plain.api_root()),
        )
        .await;
        let answered_plain = match plain_answer {
            Ok((_, at)) if same_origin(at.as_str(), &over_tls.url) => return Ok(Some(true)),
            Ok((status, _)) if status != StatusCode::BAD_REQUEST => return Ok(Some(false)),
            Ok(_) => true,
            // Nobody listens on the port, in either protocol.
            Err(e) if is_refused(&e) => return Ok(None),
            Err(_) => false,
        };
        let tls_answer = answer(
            self.client_for(over_tls).await?.http,
            format!("{}/", over_tls.api_root()),
        )
        .await;
        Ok(match tls_answer {
            Ok(_) => Some(true),
            Err(e) if answered_plain && answered_in_plain_http(&e) => Some(false),
            Err(_) if answered_plain => Some(true),
            Err(_) => None,
        })
    }

    /// The repository of `reference` at every endpoint that can do what
    /// `can` asks, in the order to try them: mirrors, then the upstream.
    async fn repositories(
        &self,
        reference: &Reference,
        can: fn(&hosts::Capabilities) -> bool,
    ) -> Result<Vec<Repository>> {
        let host = reference.api_host();
        let scheme = self.scheme(host);
        let upstream = match scheme {
            Scheme::Https | Scheme::HttpsUnchecked => format!("https://{host}"),
            Scheme::Http | Scheme::Settle => format!("http://{host}"),
        };
        let mut endpoints = self
            .hosts
            .endpoints(reference.registry(), &upstream)
            .await?;
        // A loopback upstream, unless the hosts directory set how to reach
        // it (certificates are settled below as for a written `http://`
        // host, and checked; `skip_verify = false` asks for the certificate
        // to be checked).
        let mut unchecked_upstream = false;
        let mut settled_upstream = false;
        if let Some(last) = endpoints.last_mut()
            && last.default_upstream
            && last.url == upstream
            && can(&last.capabilities)
            && last.ca_files.is_empty()
            && last.client_certs.is_empty()
        {
            match scheme {
                Scheme::HttpsUnchecked if last.skip_verify.is_none() => {
                    last.skip_verify = Some(true);
                    unchecked_upstream = true;
                }
                Scheme::Settle => {
                    unchecked_upstream = self.settle_loopback(last).await?;
                    settled_upstream = true;
                }
                _ => {}
            }
        }
        let count = endpoints.len();
        let mut out = Vec::new();
        for (i, mut endpoint) in endpoints.into_iter().enumerate() {
            if !can(&endpoint.capabilities) {
                continue;
            }
            let settled = settled_upstream && i + 1 == count;
            if !settled && endpoint.wants_tls_over_http(self.defaults.has_tls()) {
                self.settle_written(&mut endpoint).await?;
            }
            let client = self.client_for(&endpoint).await?;
            let headers = self.headers_for(&endpoint);
            let unchecked = unchecked_upstream && i + 1 == count;
            out.push(Repository {
                tokens: auth::TokenClients {
                    registry: client.http.clone(),
                    // Checked, with the resolver's settings: credentials for
                    // a token service on another machine are not sent over
                    // TLS left unchecked only because the registry is local.
                    elsewhere: unchecked.then(|| self.client.http.clone()),
                    headers: ConfiguredHeaders {
                        headers: headers.clone(),
                        base: endpoint.api_root(),
                    },
                    connect_timeout: client.connect_timeout,
                },
                client,
                base: format!("{}/{}", endpoint.api_root(), reference.repository()),
                host: endpoint.host().to_string(),
                repository: reference.repository().to_string(),
                authorizer: self.authorizer.clone(),
                headers: ConfiguredHeaders {
                    headers,
                    base: endpoint.api_root(),
                },
                retry: false,
                namespace: is_mirror(endpoint.host(), reference.registry())
                    .then(|| reference.registry().to_string()),
                low_speed: self.low_speed,
            });
        }
        if let Some(last) = out.last_mut() {
            last.retry = true;
        }
        if out.is_empty() {
            return Err(Error::Protocol {
                url: reference.registry().to_string(),
                reason: "no configured host can do this (check the capabilities of its hosts: hosts.toml, or those given in code)".into(),
            });
        }
        Ok(out)
    }

    /// The first repository that can push; the only one a push uses, so it
    /// retries.
    async fn push_repository(&self, reference: &Reference) -> Result<Repository> {
        let mut repo = self.repositories(reference, |c| c.push).await?.remove(0);
        repo.retry = true;
        Ok(repo)
    }

    /// Resolves at each endpoint that can, in order; every endpoint's error
    /// if none can (the last one's kind).
    /// A tag needs the `resolve` capability; a digest only `pull`, as in
    /// containerd: its bytes are checked, so any mirror may serve it (an
    /// air-gapped pull-only mirror is the usual case).
    async fn resolve_object(&self, reference: &Reference) -> Result<Descriptor> {
        let can: fn(&hosts::Capabilities) -> bool = if reference.digest().is_some() {
            |c| c.pull
        } else {
            |c| c.resolve
        };
        let mut errors = Vec::new();
        let repos = self.repositories(reference, can).await?;
        let count = repos.len();
        for (i, repo) in repos.into_iter().enumerate() {
            match self.resolve_in(&repo, reference).await {
                Ok(desc) => {
                    refuse_schema1(Some(desc.media_type().as_ref()), desc.digest())?;
                    return Ok(desc);
                }
                // What the image is, not where it was asked: no other
                // endpoint's answer would explain it better.
                Err(e @ Error::Images(ocidist_images::Error::Schema1 { .. })) => return Err(e),
                Err(e) => {
                    if i + 1 < count {
                        self.skipped.skipped(&repo.host, &e);
                    }
                    errors.push(e);
                }
            }
        }
        Err(Error::of_hosts(errors).expect("repositories() is never empty"))
    }
}

impl DockerResolver {
    /// The descriptor of `object` (a tag or digest) in `repo`; a 404 says
    /// which reference was not found, as containerd's "REF: not found".
    async fn resolve_in(&self, repo: &Repository, reference: &Reference) -> Result<Descriptor> {
        self.resolve_at(repo, reference).await.map_err(|e| {
            e.noted_if(StatusCode::NOT_FOUND, || match reference.digest() {
                None => format!("{reference}: not found"),
                Some(_) => format!("{reference}: no manifest nor blob of that digest"),
            })
        })
    }

    /// [`resolve_in`](Self::resolve_in)'s request and answer.
    async fn resolve_at(&self, repo: &Repository, reference: &Reference) -> Result<Descriptor> {
        let object = reference.object();
        let manifest_url = format!("{}/manifests/{object}", repo.base);
        let head_manifest = async |repo: &Repository| {
            repo.send(Method::HEAD, &manifest_url, |r| {
                r.header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await
        };
        let head = if reference.digest().is_some() {
            // The distribution registry answers a digest that names a blob
            // with 500: asked once, that costs no backoff (a `fetch-object`
            // of a layer waited 1.3 s for it). Other busy answers and broken
            // connections are asked again, as always.
            match head_manifest(&Repository {
                retry: false,
                ..repo.clone()
            })
            .await
            {
                Ok(head)
                    if head.status() == StatusCode::INTERNAL_SERVER_ERROR
                        || !retryable(head.status()) =>
                {
                    head
                }
                _ => head_manifest(repo).await?,
            }
        } else {
            head_manifest(repo).await?
        };
        match (head.status(), reference.digest()) {
            // Some registries refuse HEAD on manifests: GET and hash it.
            (StatusCode::METHOD_NOT_ALLOWED, digest) => {
                repo.get_manifest(&manifest_url, digest, &self.resolved)
                    .await
            }
            (StatusCode::OK, None) => {
                let headers = head.headers();
                let digest = header_str(headers, "docker-content-digest")
                    .and_then(|d| Digest::try_from(d).ok());
                // No manifest is empty: a length of 0 is a proxy's HEAD
                // answer that says nothing (some answer so over HTTP/2).
                let size = header_str(headers, header::CONTENT_LENGTH.as_str())
                    .and_then(|s| s.parse().ok())
                    .filter(|&size: &u64| size > 0);
                // A type that is no manifest's (`application/octet-stream`
                // from a static file server, `text/plain` from an old one)
                // is found out from the document itself.
                let media_type = header_str(headers, header::CONTENT_TYPE.as_str())
                    .map(base_media_type)
                    .filter(|t| is_manifest_type(t));
                if let (Some(digest), Some(size), Some(media_type)) = (digest, size, media_type) {
                    let desc = Descriptor::new(MediaType::from(media_type.as_str()), size, digest);
                    // Refused before anything streams it into a store.
                    ocidist_images::manifest::refuse_oversized(&desc)?;
                    return Ok(desc);
                }
                // Headers missing or unsure: fetch the manifest, hash it and
                // read its type ourselves.
                repo.get_manifest(&manifest_url, None, &self.resolved).await
            }
            // A digest reference: the bytes are hashed, never the header believed.
            (StatusCode::OK, Some(digest)) => {
                repo.get_manifest(&manifest_url, Some(digest), &self.resolved)
                    .await
            }
            // Not a manifest; a digest may name a blob. (The distribution
            // registry answers 500, not 404, when the digest is a blob that is
            // no manifest.) Other failures are not asked about blobs: a 503
            // must not turn a manifest into an untyped blob descriptor.
            (StatusCode::NOT_FOUND | StatusCode::INTERNAL_SERVER_ERROR, Some(digest)) => {
                let blob_url = format!("{}/blobs/{digest}", repo.base);
                let blob_head = repo.send(Method::HEAD, &blob_url, |r| r).await?;
                if blob_head.status() != StatusCode::OK {
                    return Err(repo.head_error(&manifest_url, head, MANIFEST_ACCEPT).await);
                }
                let size = header_str(blob_head.headers(), header::CONTENT_LENGTH.as_str())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| Error::Protocol {
                        url: blob_url.clone(),
                        reason: "no Content-Length for a blob".into(),
                    })?;
                Ok(Descriptor::new(
                    MediaType::Other("application/octet-stream".into()),
                    size,
                    digest.clone(),
                ))
            }
            _ => Err(repo.head_error(&manifest_url, head, MANIFEST_ACCEPT).await),
        }
    }
}

#[async_trait]
impl Resolver for DockerResolver {
    async fn resolve(&self, reference: &str) -> Result<(String, Descriptor)> {
        let parsed: Reference = reference.parse()?;
        let desc = self.resolve_object(&parsed).await?;
        Ok((parsed.to_string(), desc))
    }

    async fn fetcher(&self, reference: &str) -> Result<Box<dyn Fetcher>> {
        let parsed: Reference = reference.parse()?;
        Ok(Box::new(DockerFetcher::new(
            self.repositories(&parsed, |c| c.pull).await?,
            self.ranged.clone(),
            self.resolved.clone(),
            self.url_source(),
            self.skipped.clone(),
        )))
    }

    async fn pusher(&self, reference: &str) -> Result<Box<dyn Pusher>> {
        let parsed: Reference = reference.parse()?;
        Ok(Box::new(DockerPusher::new(
            self.push_repository(&parsed).await?,
            parsed,
            self.pushing.clone(),
            self.spool_dir.clone(),
        )))
    }
}

/// Fetches the raw manifest or blob `object` (a tag or digest) of the
/// repository `locator`, as containerd's `dist fetch-object`. A `mediatype:`
/// hint in `hints` overrides the type the registry reports. A locator with
/// a tag or digest of its own is refused ([`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument)):
/// which of the two objects was meant is not for us to guess.
///
/// The stream is checked as it passes: bytes that are not the object's size
/// and digest (for a tag, the digest the registry gave) end it in an error,
/// after what came before has been handed on.
pub async fn fetch_object(
    resolver: &DockerResolver,
    locator: &str,
    object: &str,
    hints: &[&str],
) -> Result<(Descriptor, crate::ByteStream)> {
    let base: Reference = locator.parse()?;
    // Parsing supplies `latest`; what was written is what counts.
    let last_segment = locator.rsplit('/').next().unwrap_or(locator);
    if locator.contains('@') || last_segment.contains(':') {
        return Err(Error::InvalidReference {
            input: locator.to_string(),
            reason: format!(
                "a locator names a repository only; give the tag or digest as the object, not {object:?} beside it"
            ),
        });
    }
    let reference = base.with_object(object)?;
    let mut desc = resolver.resolve_object(&reference).await?;
    if let Some(media_type) = hints.iter().find_map(|h| h.strip_prefix("mediatype:")) {
        desc.set_media_type(MediaType::from(media_type));
    }
    let fetcher = DockerFetcher::new(
        resolver.repositories(&reference, |c| c.pull).await?,
        resolver.ranged.clone(),
        resolver.resolved.clone(),
        resolver.url_source(),
        resolver.skipped.clone(),
    );
    // Handed on as it arrives, with no store to check it at commit: the
    // stream checks itself, and a tag's digest (the registry's word) is
    // held to its bytes too.
    let stream = fetcher::verified(fetcher.fetch(&desc, 0).await?, &desc, reference.to_string())?;
    Ok((desc, stream))
}

/// One repository's API root and the client to reach it.
#[derive(Debug, Clone)]
pub(crate) struct Repository {
    pub(crate) client: tls::HttpClient,
    /// Where token requests go out.
    tokens: auth::TokenClients,
    pub(crate) base: String,
    host: String,
    repository: String,
    authorizer: auth::Authorizer,
    /// Sent with every request (from hosts.toml).
    headers: ConfiguredHeaders,
    /// Retry busy answers and broken connections here: only on the last
    /// endpoint, as containerd does; a mirror that fails is passed over at
    /// once, not retried with backoff on every request.
    retry: bool,
    /// On a mirror, the registry the request is for, sent as `?ns=` so a
    /// mirror of several registries knows which (containerd does the same).
    namespace: Option<String>,
    /// What every response body must bring while it is read.
    pub(crate) low_speed: LowSpeedLimit,
}

impl Repository {
    /// This repository, retrying as the last endpoint does: for requests
    /// that cannot move on to another endpoint.
    pub(crate) fn committed(&self) -> Repository {
        Repository {
            retry: true,
            ..self.clone()
        }
    }

    /// What a response body from here is held to while it is read: the
    /// low-speed limit, and the idle-read timeout its errors name.
    pub(crate) fn speed_check(&self) -> speed::SpeedCheck {
        speed::SpeedCheck::new(self.low_speed, self.client.idle_read_timeout)
    }

    /// The endpoint's `host[:port]`.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Whether the registry is on a loopback address.
    pub(crate) fn is_loopback(&self) -> bool {
        is_loopback(&self.host)
    }

    /// Sends a request that may be sent again (GET, HEAD, an upload's or a
    /// mount's POST, a manifest's PUT: `build` makes it anew for each
    /// attempt), retrying what a busy or flaky registry answers (408, 429,
    /// 500, 502, 503, 504, broken connections) with jittered exponential
    /// backoff, honouring a `Retry-After` of up to 10 s, at most
    /// [`ATTEMPTS`] times ([`MAX_TIMEOUTS`] when the attempts time out:
    /// connecting, or waiting for an answer); on a mirror before the last
    /// endpoint, not at all
    /// (the caller moves on to the next). A TLS alert refusing the client
    /// certificate is not retried: it would be refused again.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let scope = self.scope(&method);
        self.send_scoped(method, url, &scope, build).await
    }

    /// [`send`](Self::send), with a token for `scope` (a cross-repository
    /// mount asks for pull on its source too).
    pub(crate) async fn send_scoped(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut response = self.send_attempts(method, url, scope, build).await?;
        // A refusal says whether credentials went with it: "no credentials
        // found" and "wrong password" are otherwise the same 401.
        if response.status() == StatusCode::UNAUTHORIZED
            && same_origin(response.url().as_str(), &self.base)
            && let Some(note) = self.authorizer.credentials_note(&self.host).await
        {
            response.extensions_mut().insert(note);
        }
        Ok(response)
    }

    /// [`send_scoped`](Self::send_scoped)'s attempts.
    async fn send_attempts(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let scope = scope.to_string();
        let mut backoff = Duration::from_millis(100);
        let mut answered_challenge = false;
        let mut may_probe = true;
        let mut timeouts = 0;
        for attempt in 1..=ATTEMPTS {
            let last = attempt == ATTEMPTS;
            let target = self.with_namespace(url);
            let sent = self.authorization_for(url, &scope).await?;
            let mut request = self.headers.apply(
                &target,
                build(self.client.http.request(method.clone(), &target)),
                sent.is_some(),
            );
            if let Some(authorization) = &sent {
                request = request.header(header::AUTHORIZATION, authorization);
            }
            let answer = match request.send().await {
                Ok(response) => self.follow_handed_back(&method, response, &build).await,
                Err(e) => Err(e),
            };
            match answer {
                // Challenged: answer once (a second 401 means the answer is refused).
                // Only the registry's own challenge: a 401 from where a
                // redirect led must not get its credentials, nor be kept.
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED
                        && !answered_challenge
                        && !last
                        && same_origin(response.url().as_str(), &self.base) =>
                {
                    answered_challenge = true;
                    let challenge = challenges(response.headers());
                    if self
                        .authorizer
                        .answer(&self.tokens, &self.host, &scope, &challenge, sent.as_ref())
                        .await?
                        .is_none()
                    {
                        return Ok(response);
                    }
                }
                Ok(response) if last || !self.retry || !retryable(response.status()) => {
                    return Ok(response);
                }
                Ok(mut response) => {
                    let wait = match retry_after(&response) {
                        // Asked to come back later than we wait: asking
                        // sooner would only be refused again (and count
                        // against a rate limit), so the answer stands.
                        Some(asked) if asked > MAX_RETRY_WAIT => {
                            let note = format!(
                                "the registry asks to be asked again in {}, longer than \
                                 the {MAX_RETRY_WAIT:?} waited for between attempts",
                                humantime_secs(asked)
                            );
                            response.extensions_mut().insert(auth::ResponseNote(note));
                            return Ok(response);
                        }
                        Some(asked) => asked,
                        None => jitter(backoff),
                    };
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(source) => {
                    let broken = source.is_connect() || source.is_timeout() || source.is_request();
                    // A server that let a whole timeout go by without a word
                    // is asked once more, not until the attempts run out:
                    // five idle-read timeouts would keep a caller waiting
                    // for five minutes.
                    timeouts += u32::from(source.is_timeout());
                    let error = self
                        .request_error(url, source, &mut may_probe, attempt)
                        .await;
                    // A refused certificate or a TLS alert would be the
                    // same on every attempt.
                    let refused = error.kind() == crate::ErrorKind::FailedPrecondition;
                    if last || !self.retry || !broken || refused || timeouts >= MAX_TIMEOUTS {
                        return Err(error);
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        unreachable!("the last attempt always returns")
    }

    /// Follows a redirect the client handed back rather than carry
    /// credentials to another host (see `tls::redirect_policy`): asked anew,
    /// with the request's own headers (`build`: a range, what it accepts)
    /// and the endpoint's configured headers, as every hop the client
    /// follows itself gets them (and as Go's client, so containerd, sends
    /// them), but never the registry's credentials, nor a configured header
    /// that is one (`Authorization`, `Cookie`, …) to another origin.
    async fn follow_handed_back(
        &self,
        method: &Method,
        response: reqwest::Response,
        build: &impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let mut response = response;
        // The client hands a hop back again whenever one leaves an origin
        // and moves within the next, credentials or not: followed here,
        // within the client's own budget of hops.
        for _ in 0..tls::MAX_REDIRECTS {
            let Some(location) = redirect_target(&response) else {
                break;
            };
            let request = build(self.client.http.request(method.clone(), location.clone()));
            response = self
                .headers
                .apply(location.as_str(), request, false)
                .send()
                .await?;
        }
        Ok(response)
    }

    /// The error for a request to `url` that failed. A TLS alert that
    /// ended it is named; so is one that ended its connection before the
    /// request went out (the HTTP client then says only that the
    /// connection closed), learnt on a session of our own, opened while
    /// `may_probe` (once per request).
    async fn request_error(
        &self,
        url: &str,
        source: reqwest::Error,
        may_probe: &mut bool,
        attempts: u32,
    ) -> Error {
        let mut alert = tls::fatal_alert(&source);
        if alert.is_none() && *may_probe && tls::closed_before_sending(&source) {
            *may_probe = false;
            // Where the request went: a redirect may have led elsewhere.
            let went_to = source.url().map_or(url, reqwest::Url::as_str);
            alert = self.client.alert_after_handshake(went_to).await;
        }
        let url = url.to_string();
        match alert {
            Some(alert) => Error::TlsAlert { url, alert },
            None => Error::Connect {
                url,
                source: ConnectError::new(source).after(
                    attempts,
                    self.client.connect_timeout,
                    self.client.idle_read_timeout,
                ),
            },
        }
    }

    /// The error for a `HEAD` of `url` that `head` answered with a status
    /// other than 200. A 403 has no body to say why, so it is asked again
    /// with a `GET` (`accept` as the `HEAD` had it); if that too is a 403,
    /// its body explains the `HEAD`'s error, as containerd does. Any other
    /// answer to the `GET` (a body that may be a whole blob included) is
    /// dropped unread.
    pub(crate) async fn head_error(
        &self,
        url: &str,
        head: reqwest::Response,
        accept: &str,
    ) -> Error {
        let status = head.status();
        let note = auth::ResponseNote::of(&head);
        let mut body = error_body(head).await;
        if status == StatusCode::FORBIDDEN
            && let Ok(get) = self
                .send(Method::GET, url, |r| r.header(header::ACCEPT, accept))
                .await
            && get.status() == StatusCode::FORBIDDEN
        {
            body = error_body(get).await;
        }
        Error::Status {
            method: Method::HEAD.to_string(),
            url: url.to_string(),
            status,
            body,
            note,
        }
    }

    /// The credentials for a request to `url` (cached, or renewed from the
    /// host's last challenge once expired, so an upload's later chunks never
    /// go without them), only if it goes where they were given: the
    /// registry's own scheme, host and port. An upload `Location` elsewhere
    /// (storage behind the registry, a proxy) gets none, as containerd drops
    /// its authorizer there; over plain HTTP it would give them away.
    async fn authorization_for(
        &self,
        url: &str,
        scope: &str,
    ) -> Result<Option<header::HeaderValue>> {
        if !same_origin(url, &self.base) {
            return Ok(None);
        }
        // A renewal that fails leaves the request to go without; its 401,
        // if it gets one, is answered (or reported) the usual way.
        Ok(self
            .authorizer
            .authorization(&self.tokens, &self.host, scope)
            .await
            .unwrap_or(None))
    }

    /// `url`, with `?ns=<registry>` when it goes to this endpoint and the
    /// endpoint is a mirror.
    fn with_namespace(&self, url: &str) -> String {
        let Some(namespace) = &self.namespace else {
            return url.to_string();
        };
        match reqwest::Url::parse(url) {
            Ok(mut parsed) if same_origin(url, &self.base) => {
                parsed.query_pairs_mut().append_pair("ns", namespace);
                parsed.to_string()
            }
            _ => url.to_string(),
        }
    }

    /// The token scope a request needs: pull for reads, pull and push otherwise.
    pub(crate) fn scope(&self, method: &Method) -> String {
        let actions = if *method == Method::GET || *method == Method::HEAD {
            "pull"
        } else {
            "pull,push"
        };
        format!("repository:{}:{actions}", self.repository)
    }

    /// Sends a request once (uploads, whose streamed bodies cannot be
    /// replayed: the pusher starts a failed upload again as a whole).
    pub(crate) async fn send_once(
        &self,
        method: Method,
        url: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let scope = self.scope(&method);
        let target = self.with_namespace(url);
        let sent = self.authorization_for(url, &scope).await?;
        let mut request = self.headers.apply(
            &target,
            build(self.client.http.request(method, &target)),
            sent.is_some(),
        );
        if let Some(authorization) = sent {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        match request.send().await {
            Ok(response) => Ok(response),
            Err(source) => Err(self.request_error(url, source, &mut true, 1).await),
        }
    }

    /// GETs a manifest (at most [`MAX_MANIFEST_SIZE`]), hashes it, checks it
    /// against `expected` when given, and keeps its bytes in `resolved` for
    /// the fetch that follows.
    async fn get_manifest(
        &self,
        url: &str,
        expected: Option<&Digest>,
        resolved: &fetcher::Resolved,
    ) -> Result<Descriptor> {
        let response = self
            .send(Method::GET, url, |r| {
                r.header(header::ACCEPT, MANIFEST_ACCEPT)
            })
            .await?;
        let response = check_status(Method::GET, url, response, &[StatusCode::OK]).await?;
        let header_type =
            header_str(response.headers(), header::CONTENT_TYPE.as_str()).map(str::to_string);
        let body = read_limited(url, response, MAX_MANIFEST_SIZE, self.speed_check()).await?;
        let algorithm = expected.map_or(oci_spec::image::DigestAlgorithm::Sha256, |d| {
            d.algorithm().clone()
        });
        let mut digester = Digester::new(&algorithm)?;
        digester.update(&body);
        let actual = digester.digest();
        // The header's type if it is a manifest's or an index's; else what
        // the document says it is; else the header's, as containerd reads it.
        let media_type = header_type
            .as_deref()
            .map(base_media_type)
            .filter(|t| is_manifest_type(t))
            .or_else(|| sniff_media_type(&body))
            .or_else(|| header_type.as_deref().map(manifest_media_type));
        refuse_schema1(media_type.as_deref(), expected.unwrap_or(&actual))?;
        if let Some(expected) = expected
            && *expected != actual
        {
            return Err(Error::Protocol {
                url: url.to_string(),
                reason: format!("digest mismatch: expected {expected}, got {actual}"),
            });
        }
        let media_type = media_type.ok_or_else(|| Error::Protocol {
            url: url.to_string(),
            reason: "no media type in the response or the document".into(),
        })?;
        let desc = Descriptor::new(
            MediaType::from(media_type.as_str()),
            body.len() as u64,
            actual,
        );
        resolved.keep(desc.digest(), body);
        Ok(desc)
    }
}

/// Reads a body, refusing one over `limit` bytes (by header, then by count)
/// or slower than `speed` allows.
pub(crate) async fn read_limited(
    url: &str,
    response: reqwest::Response,
    limit: u64,
    mut speed: speed::SpeedCheck,
) -> Result<bytes::Bytes> {
    let too_large = || Error::Protocol {
        url: url.to_string(),
        reason: format!("response over the limit of {limit} bytes"),
    };
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    loop {
        speed.asked(std::time::Instant::now());
        let Some(chunk) = stream.next().await else {
            break;
        };
        let chunk = chunk.map_err(|source| speed.broke(std::time::Instant::now(), url, source))?;
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        speed.arrived(chunk.len() as u64, std::time::Instant::now(), url)?;
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Passes `response` through if its status is one of `ok`, else turns it into
/// an error quoting the start of the body.
pub(crate) async fn check_status(
    method: Method,
    url: &str,
    response: reqwest::Response,
    ok: &[StatusCode],
) -> Result<reqwest::Response> {
    let status = response.status();
    if ok.contains(&status) {
        return Ok(response);
    }
    // Said by where a redirect led (storage behind the registry, whose
    // signed URL has expired, say): named by its origin only, as the rest
    // of its URL may be a credential.
    let answered_by = response.url();
    let url = if same_origin(answered_by.as_str(), url) {
        url.to_string()
    } else {
        let origin = answered_by.origin().ascii_serialization();
        format!("{url} (redirected to {origin})")
    };
    let note = auth::ResponseNote::of(&response);
    Err(Error::Status {
        method: method.to_string(),
        url,
        status,
        body: error_body(response).await,
        note,
    })
}

/// The start of an error response's body, where registries explain: at
/// most 300 characters, read from at most 4 KiB (an error body of any size
/// is not waited for), control characters escaped: the error is shown on a
/// terminal a hostile server must not drive.
async fn error_body(mut response: reqwest::Response) -> String {
    const READ_AT_MOST: usize = 4096;
    let mut body = Vec::new();
    while body.len() < READ_AT_MOST {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(READ_AT_MOST);
    let text = spec_errors(&body).unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    let mut said = String::new();
    for c in text.trim().chars().take(300) {
        if c.is_control() {
            said.extend(c.escape_debug());
        } else {
            said.push(c);
        }
    }
    said
}

/// The distribution specification's error body, `{"errors": [{"code",
/// "message", "detail"}]}`, as `CODE: message (detail)` lines joined by
/// `; `, each said once; a detail only when it is a string (the digest a
/// registry is missing, say; structured ones are long and say little);
/// `None` for any other body, quoted as it is.
fn spec_errors(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<SpecError>,
    }
    #[derive(serde::Deserialize)]
    struct SpecError {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        detail: serde_json::Value,
    }
    let parsed: Body = serde_json::from_slice(body).ok()?;
    let mut said: Vec<String> = Vec::new();
    for e in parsed.errors {
        let mut line = match (e.code.is_empty(), e.message.is_empty()) {
            (false, false) => format!("{}: {}", e.code, e.message),
            (false, true) => e.code,
            _ => e.message,
        };
        if let Some(detail) = e.detail.as_str().map(str::trim).filter(|d| !d.is_empty()) {
            line = if line.is_empty() {
                detail.to_string()
            } else {
                format!("{line} ({detail})")
            };
        }
        if !line.is_empty() && !said.contains(&line) {
            said.push(line);
        }
    }
    (!said.is_empty()).then(|| said.join("; "))
}

/// Every challenge of a 401, in one list: a proxy's `Basic` challenge may
/// come in a header of its own before the registry's `Bearer` one.
fn challenges(headers: &header::HeaderMap) -> String {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter(|value| !value.trim().is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

fn header_str<'a>(headers: &'a header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().filter(|s| !s.is_empty())
}

/// Whether `host` serves `registry` as a mirror rather than being it
/// (`registry-1.docker.io` is `docker.io` itself), as containerd decides.
fn is_mirror(host: &str, registry: &str) -> bool {
    host != registry && !(registry == "docker.io" && host == "registry-1.docker.io")
}

/// Where a redirect `response` leads (its `Location`, resolved against its
/// URL); `None` for any other answer, or a location that is not a URL.
pub(crate) fn redirect_target(response: &reqwest::Response) -> Option<reqwest::Url> {
    if !response.status().is_redirection() {
        return None;
    }
    let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
    response.url().join(location).ok()
}

/// An endpoint's configured headers (`hosts.toml`'s `[header]`), sent with
/// every request for it, and to its token service, as containerd (2.1 on)
/// sends them: a gateway that wants an API key wants it there as well.
#[derive(Debug, Clone)]
pub(crate) struct ConfiguredHeaders {
    pub(crate) headers: Vec<(String, String)>,
    /// The endpoint's URL: only its origin gets the headers that hold
    /// credentials.
    pub(crate) base: String,
}

impl ConfiguredHeaders {
    /// `request` to `url` with the configured headers, but those that hold
    /// credentials if `url` is of another origin than the endpoint's (an
    /// upload's `Location`, a redirect, a token service), and a configured
    /// `Authorization` if the request is `authorized` by one of its own
    /// (which replaces it, as in containerd).
    pub(crate) fn apply(
        &self,
        url: &str,
        mut request: reqwest::RequestBuilder,
        authorized: bool,
    ) -> reqwest::RequestBuilder {
        let elsewhere = !same_origin(url, &self.base);
        for (name, value) in &self.headers {
            let replaced = authorized && name.eq_ignore_ascii_case("authorization");
            let withheld = elsewhere && is_sensitive_header(name);
            if !(replaced || withheld) {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        request
    }
}

/// Whether a header holds credentials, so never goes to another origin:
/// those reqwest (and Go's client) take off a redirect that changes origin.
fn is_sensitive_header(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "cookie2",
        "www-authenticate",
    ]
    .iter()
    .any(|sensitive| name.eq_ignore_ascii_case(sensitive))
}

/// Whether two URLs have the same scheme, host and port (and both parse).
fn same_origin(a: &str, b: &str) -> bool {
    let origin = |u: &str| {
        reqwest::Url::parse(u).ok().map(|u| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port_or_known_default(),
            )
        })
    };
    origin(a).is_some() && origin(a) == origin(b)
}

/// The media type of a manifest response's `Content-Type`, parameters
/// dropped, for a document that does not say what it is. `text/plain` is
/// read as a schema 1 manifest, as containerd reads it: registries that
/// serve only schema 1 have been seen to say that.
fn manifest_media_type(value: &str) -> String {
    let base = base_media_type(value);
    if base.eq_ignore_ascii_case("text/plain") {
        return media_types::DOCKER_SCHEMA1_MANIFEST.to_string();
    }
    base
}

/// A `Content-Type` without its parameters (`; charset=utf-8`).
fn base_media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Refuses a Docker schema 1 manifest by its media type, before its bytes
/// are checked: a signed one's digest covers its payload only, so it would
/// otherwise fail as a digest mismatch.
fn refuse_schema1(media_type: Option<&str>, digest: &Digest) -> Result<()> {
    match media_type {
        Some(media_type) if media_types::kind(media_type) == media_types::Kind::Schema1 => {
            Err(ocidist_images::Error::Schema1 {
                digest: digest.clone(),
                media_type: media_type.to_string(),
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// Whether `media_type` is a manifest's or an index's (schema 1's too,
/// refused by name later).
fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_types::kind(media_type),
        media_types::Kind::Manifest | media_types::Kind::Index | media_types::Kind::Schema1
    )
}

/// What a manifest document is by its own word: the `mediaType` it
/// declares, else its shape (an OCI index lists `manifests`, an OCI manifest
/// has a `config`, `schemaVersion` 1 is Docker's schema 1), as Docker's
/// client reads a document served with a type that is no manifest's.
fn sniff_media_type(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        schema_version: Option<i64>,
        manifests: Option<serde::de::IgnoredAny>,
        config: Option<serde::de::IgnoredAny>,
    }
    let probe = serde_json::from_slice::<Probe>(body).ok()?;
    if let Some(declared) = probe.media_type {
        return Some(declared);
    }
    let shape = match probe {
        Probe {
            schema_version: Some(1),
            ..
        } => media_types::DOCKER_SCHEMA1_MANIFEST,
        Probe {
            manifests: Some(_), ..
        } => media_types::OCI_INDEX,
        Probe {
            config: Some(_), ..
        } => media_types::OCI_MANIFEST,
        _ => return None,
    };
    Some(shape.to_string())
}

/// The port of `host[:port]` (`[v6]:port`), if written.
fn port_of(host: &str) -> Option<&str> {
    let rest = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => host,
    };
    rest.rsplit_once(':').map(|(_, port)| port)
}

/// Whether a TLS handshake failed because the server answered in plain
/// HTTP (rustls reads `HTTP/1.1 400` as a record of no known type).
fn answered_in_plain_http(error: &reqwest::Error) -> bool {
    causes(error).any(|e| e.to_string().contains("InvalidContentType"))
}

/// Whether the connection was refused (nothing listens on the port).
fn is_refused(error: &reqwest::Error) -> bool {
    causes(error).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// `error` and its causes, outermost first.
fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// True for `localhost`, `127.0.0.0/8` and `::1`, with or without a port.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_document_is_typed_by_its_word_or_its_shape() {
        let sniffed = |body: &str| super::sniff_media_type(body.as_bytes());
        assert_eq!(
            sniffed(r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#).as_deref(),
            Some(media_types::DOCKER_MANIFEST)
        );
        assert_eq!(
            sniffed(r#"{"schemaVersion":2,"config":{},"layers":[]}"#).as_deref(),
            Some(media_types::OCI_MANIFEST)
        );
        assert_eq!(
            sniffed(r#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(media_types::OCI_INDEX)
        );
        assert_eq!(
            sniffed(r#"{"schemaVersion":1,"fsLayers":[]}"#).as_deref(),
            Some(media_types::DOCKER_SCHEMA1_MANIFEST)
        );
        assert_eq!(sniffed(r#"{"schemaVersion":2}"#), None);
        assert_eq!(sniffed("<html>captive portal</html>"), None);
    }

    #[test]
    fn the_specifications_error_bodies_are_said_plainly() {
        let body = br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied","detail":[{"Type":"repository"}]},{"code":"UNAUTHORIZED","message":""}]}"#;
        assert_eq!(
            spec_errors(body).as_deref(),
            Some("DENIED: requested access to the resource is denied; UNAUTHORIZED")
        );
        let body = br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:a9af"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:c1dc"},{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:c1dc"}]}"#;
        assert_eq!(
            spec_errors(body).as_deref(),
            Some(
                "MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:a9af); \
                 MANIFEST_BLOB_UNKNOWN: blob unknown to registry (sha256:c1dc)"
            )
        );
        assert_eq!(spec_errors(b"<html>502</html>"), None);
        assert_eq!(spec_errors(br#"{"errors":[]}"#), None);
    }

    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_770);
        assert_eq!(retry_after_value("7", now), Some(Duration::from_secs(7)));
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        assert_eq!(
            retry_after_value("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after_value("Sat, 01 Jan 1994 00:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date past waits nothing"
        );
        assert_eq!(
            http_date_seconds("Sat, 29 Feb 2020 00:00:00 GMT"),
            Some(1_582_934_400)
        );
        assert_eq!(retry_after_value("soon", now), None);
        // Fields out of range are not a date, and overflow nothing.
        for absurd in [
            "Sun, 06 Nov 9223372036854775807 08:49:37 GMT",
            "Sun, 06 Nov 1994 9223372036854775807:49:37 GMT",
            "Sun, 99 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:61:37 GMT",
        ] {
            assert_eq!(http_date_seconds(absurd), None, "{absurd}");
        }
    }

    /// Every `WWW-Authenticate` header counts: a proxy's `Basic` may come
    /// in a header of its own before the registry's `Bearer`.
    #[test]
    fn challenges_of_every_header_are_read() {
        let mut headers = header::HeaderMap::new();
        headers.append(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Basic realm="proxy""#),
        );
        headers.append(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(""),
        );
        headers.append(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(
                r#"Bearer realm="https://auth.example/token",service="r""#,
            ),
        );
        let parsed = auth::parse_challenges(&challenges(&headers));
        let schemes: Vec<_> = parsed.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer"]);
        assert_eq!(parsed[1].params["service"], "r");
        assert_eq!(challenges(&header::HeaderMap::new()), "");
    }

    #[test]
    fn loopback_hosts_settle_their_protocol() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "registry-1.docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5000",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
        let resolver = DockerResolver::new();
        assert_eq!(resolver.scheme("127.0.0.1:5000"), Scheme::Settle);
        assert_eq!(resolver.scheme("localhost"), Scheme::HttpsUnchecked);
        assert_eq!(resolver.scheme("[::1]:443"), Scheme::HttpsUnchecked);
        assert_eq!(resolver.scheme("localhost:80"), Scheme::Http);
        assert_eq!(resolver.scheme("ghcr.io"), Scheme::Https);
        assert_eq!(resolver.scheme("example.com:80"), Scheme::Https);
        assert_eq!(
            resolver
                .clone()
                .plain_http(PlainHttp::Always)
                .scheme("ghcr.io"),
            Scheme::Http
        );
        assert_eq!(
            resolver
                .clone()
                .plain_http(PlainHttp::Never)
                .scheme("localhost"),
            Scheme::Https
        );
        // TLS settings say a loopback registry speaks TLS.
        let tls = resolver.tls(&[], true).unwrap();
        assert_eq!(tls.scheme("127.0.0.1:5000"), Scheme::Https);
    }

    #[test]
    fn ports_of_hosts() {
        assert_eq!(port_of("localhost:5000"), Some("5000"));
        assert_eq!(port_of("localhost"), None);
        assert_eq!(port_of("[::1]:80"), Some("80"));
        assert_eq!(port_of("[::1]"), None);
    }

    /// An endpoint's settings merge with the resolver's as containerd's
    /// host settings do with its defaults: CA files and client certificates
    /// add up, the endpoint's `skip_verify` wins where given.
    #[test]
    fn endpoint_settings_merge_with_the_resolver_settings() {
        let mut resolver = DockerResolver::new();
        resolver.defaults = Connection {
            ca_files: vec!["/r/ca.pem".into()],
            ca_pems: Vec::new(),
            client_certs: vec![hosts::ClientCert {
                cert: "/r/me.pem".into(),
                key: None,
            }],
            skip_verify: true,
            dial_timeout: None,
            idle_read_timeout: None,
            user_agent: None,
        };
        let mut endpoint = hosts::Endpoint::upstream("https://r".into());
        assert_eq!(
            resolver.connection_for(&endpoint),
            None,
            "the resolver's client"
        );

        endpoint.ca_files = vec!["/h/ca.pem".into()];
        let merged = resolver.connection_for(&endpoint).unwrap();
        assert_eq!(
            merged.ca_files,
            [PathBuf::from("/r/ca.pem"), "/h/ca.pem".into()]
        );
        assert_eq!(merged.client_certs, resolver.defaults.client_certs);
        assert!(merged.skip_verify);

        let own = hosts::ClientCert {
            cert: "/h/c.cert".into(),
            key: Some("/h/c.key".into()),
        };
        endpoint.client_certs = vec![own.clone()];
        endpoint.skip_verify = Some(false);
        endpoint.dial_timeout = Some(Duration::from_secs(3));
        let merged = resolver.connection_for(&endpoint).unwrap();
        assert_eq!(
            merged.client_certs,
            [resolver.defaults.client_certs[0].clone(), own],
            "the host's client certificates come after the resolver's"
        );
        assert!(!merged.skip_verify, "the host's skip_verify = false wins");
        assert_eq!(merged.dial_timeout, Some(Duration::from_secs(3)));
    }

    /// A client is built once per settings, and again when a file it was
    /// built from changes (a certificate rotated in place).
    #[tokio::test]
    async fn endpoint_clients_are_kept_until_their_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("trusted.pem");
        let certs = crate::testkit::TestCertificates::write(dir.path()).unwrap();
        std::fs::copy(&certs.ca, &ca).unwrap();
        let resolver = DockerResolver::new();
        let mut endpoint = hosts::Endpoint::upstream("https://r".into());
        endpoint.ca_files = vec![ca.clone()];
        resolver.client_for(&endpoint).await.unwrap();
        let stamps = |r: &DockerResolver| {
            let clients = r.clients.lock().unwrap();
            assert_eq!(clients.len(), 1);
            clients.values().next().unwrap().stamps.clone()
        };
        let first = stamps(&resolver);
        resolver.client_for(&endpoint).await.unwrap();
        assert_eq!(stamps(&resolver), first, "kept");
        // Another CA, longer, in the same file.
        let both = [
            std::fs::read(&certs.ca).unwrap(),
            std::fs::read(&certs.ca).unwrap(),
        ]
        .concat();
        std::fs::write(&ca, both).unwrap();
        resolver.client_for(&endpoint).await.unwrap();
        assert_ne!(stamps(&resolver), first, "rebuilt");
    }

    /// A CA file that cannot be read yet (a FIFO nobody writes to, as a
    /// file on a hung network mount) holds a blocking thread, not the
    /// runtime's: its timers still fire.
    #[tokio::test(flavor = "current_thread")]
    async fn endpoint_files_are_read_off_the_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::testkit::TestCertificates::write(dir.path()).unwrap();
        let fifo = dir.path().join("slow-ca.pem");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success(), "mkfifo (coreutils)");
        // The file is written a second later, whoever is waiting for it.
        let writer = {
            let (fifo, ca) = (fifo.clone(), certs.ca.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                std::fs::write(fifo, std::fs::read(ca).unwrap()).unwrap();
            })
        };
        let resolver = DockerResolver::new();
        let mut endpoint = hosts::Endpoint::upstream("https://r".into());
        endpoint.ca_files = vec![fifo];
        let building = resolver.client_for(&endpoint);
        let waited = tokio::time::timeout(Duration::from_millis(200), building).await;
        assert!(
            waited.is_err(),
            "the runtime's timer fired while the file was read"
        );
        writer.join().unwrap();
    }
}
