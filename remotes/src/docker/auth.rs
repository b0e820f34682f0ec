//! Registry authentication: `WWW-Authenticate` challenges, basic auth, and
//! bearer tokens (anonymous or with credentials) cached per host and scope.
//!
//! Credentials come from a [`Credentials`] provider the caller chooses; they
//! are only ever sent to the host they belong to: a request that redirects
//! elsewhere (a blob served from object storage) goes without them. reqwest
//! drops `Authorization` only on a redirect to another host than the hop
//! before, so the client's redirect policy hands every hop to another
//! origin back, and the resolver follows it itself, without credentials.
//! A token service's 307 or 308 to another origin would have the client
//! send the OAuth2 form (the password) there again: it is not followed,
//! and the password goes to the realm by GET instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderValue};

use crate::{ConnectError, Error, Result};

/// A user name and secret (password or identity token) for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The user name (empty with an identity token).
    pub username: String,
    /// The password or token.
    pub secret: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why credentials for a host could not be looked up: a credential helper
/// that is missing, failed or did not answer, a secret store that refused.
/// A lookup that finds nothing is `Ok(None)`, not this. A request that
/// needed the credential fails with
/// [`crate::Error::Credentials`], this as its source.
///
/// ```
/// use ocidist_remotes::docker::auth::CredentialsError;
/// let sealed = std::io::Error::other("the vault is sealed");
/// let e = CredentialsError::with_source("read the vault", sealed);
/// assert_eq!(e.to_string(), "read the vault");
/// let report = ocidist_content::Report::new(&e).to_string();
/// assert_eq!(report, "read the vault: the vault is sealed");
/// ```
#[derive(Debug)]
pub struct CredentialsError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CredentialsError {
    /// A failure that `message` says all of.
    pub fn new(message: impl Into<String>) -> Self {
        CredentialsError {
            message: message.into(),
            source: None,
        }
    }

    /// A failure of a store of the caller's, kept as the cause (for a walk
    /// of the causes, or a downcast); `message` says what was being done.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        CredentialsError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// What was being done, or what went wrong when there is no cause.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CredentialsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Finds credentials for a registry host (`ghcr.io`, `localhost:5000`).
///
/// The host asked about is the one the request goes to, with its port if
/// it has one: `registry-1.docker.io` for Docker Hub's names (`docker.io`,
/// `redis`), and a mirror's own host when a mirror is asked. A source
/// keyed by `docker.io` should answer for `registry-1.docker.io` too
/// ([`DockerConfig`](super::config::DockerConfig) does).
pub trait Credentials: Send + Sync + std::fmt::Debug {
    /// The credential for `host`, if any. It may block (run a helper, read
    /// a file): the resolver calls it on a blocking thread. An error fails
    /// the request that needed the credential, as Docker fails a pull whose
    /// credential helper fails, rather than going on anonymously.
    fn get(&self, host: &str) -> std::result::Result<Option<Credential>, CredentialsError>;
}

/// Credentials from a function of the host, for a runtime that keeps them
/// in its own configuration or secret store. The function may block (the
/// resolver calls it on a blocking thread), so an async secret store can be
/// asked with `tokio::runtime::Handle::block_on` from inside it.
///
/// ```
/// use ocidist_remotes::docker::DockerResolver;
/// use ocidist_remotes::docker::auth::{Credential, credentials_fn};
/// let resolver = DockerResolver::new().credentials(credentials_fn(|host| {
///     // Docker Hub is asked for as the host its API is on.
///     let ours = matches!(host, "registry.example.com" | "registry-1.docker.io");
///     Ok(ours.then(|| Credential {
///         username: "ci".into(),
///         secret: std::env::var("REGISTRY_TOKEN").unwrap_or_default(),
///     }))
/// }));
/// ```
pub fn credentials_fn<F>(lookup: F) -> Arc<dyn Credentials>
where
    F: Fn(&str) -> std::result::Result<Option<Credential>, CredentialsError>
        + Send
        + Sync
        + 'static,
{
    Arc::new(FnCredentials(lookup))
}

/// What [`credentials_fn`] makes.
struct FnCredentials<F>(F);

impl<F> std::fmt::Debug for FnCredentials<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCredentials(..)")
    }
}

impl<F> Credentials for FnCredentials<F>
where
    F: Fn(&str) -> std::result::Result<Option<Credential>, CredentialsError> + Send + Sync,
{
    fn get(&self, host: &str) -> std::result::Result<Option<Credential>, CredentialsError> {
        (self.0)(host)
    }
}

/// No credentials: anonymous access only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl Credentials for Anonymous {
    fn get(&self, _: &str) -> std::result::Result<Option<Credential>, CredentialsError> {
        Ok(None)
    }
}

/// Credentials given by the caller, per host.
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials(pub HashMap<String, Credential>);

impl Credentials for StaticCredentials {
    fn get(&self, host: &str) -> std::result::Result<Option<Credential>, CredentialsError> {
        Ok(self.0.get(host).cloned())
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer` (lowercased).
    pub scheme: String,
    /// Its parameters (`realm`, `service`, `scope`, ...), keys lowercased.
    pub params: HashMap<String, String>,
}

/// Parses a `WWW-Authenticate` value: one or more challenges, each a scheme
/// then `key=value` or `key="quoted value"` pairs separated by commas.
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let mut challenges: Vec<Challenge> = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        // A token followed by '=' is a parameter of the current challenge;
        // otherwise it starts a new challenge.
        let token_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let token = &rest[..token_end];
        let after = rest[token_end..].trim_start();
        if let Some(value_part) = after.strip_prefix('=')
            && let Some(current) = challenges.last_mut()
        {
            let (value, remaining) = parse_value(value_part.trim_start());
            current.params.insert(token.to_ascii_lowercase(), value);
            rest = remaining.trim_start().trim_start_matches(',').trim_start();
        } else {
            if !token.is_empty() {
                challenges.push(Challenge {
                    scheme: token.to_ascii_lowercase(),
                    params: HashMap::new(),
                });
            }
            rest = after.trim_start_matches(',').trim_start();
            if token.is_empty() && after.len() == rest.len() {
                break;
            }
        }
    }
    challenges
}

fn parse_value(input: &str) -> (String, &str) {
    if let Some(quoted) = input.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return (out, &quoted[i + 1..]),
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        out.push(escaped);
                    }
                }
                c => out.push(c),
            }
        }
        (out, "")
    } else {
        let end = input.find(',').unwrap_or(input.len());
        (input[..end].trim().to_string(), &input[end..])
    }
}

fn basic(credential: &Credential) -> String {
    format!(
        "Basic {}",
        base64(format!("{}:{}", credential.username, credential.secret).as_bytes())
    )
}

/// Standard base64 with padding, or (with `url`) the unpadded URL-safe form.
pub(crate) fn base64_encode(data: &[u8], url: bool) -> String {
    let table: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(table[(n >> shift & 63) as usize] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
    out
}

fn base64(data: &[u8]) -> String {
    base64_encode(data, false)
}

/// A cached `Authorization` value and when it stops being good.
#[derive(Clone)]
struct Cached {
    header: String,
    until: Instant,
}

/// Never the header itself: it holds a password or a token.
impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("header", &"<redacted>")
            .field("until", &self.until)
            .finish()
    }
}

/// The clients token requests go out on.
#[derive(Debug, Clone)]
pub(crate) struct TokenClients {
    /// The registry's own client.
    pub(crate) registry: reqwest::Client,
    /// A client that checks certificates, for a realm on a host that is not
    /// loopback, when the registry's own does not check them only because
    /// the registry is a loopback one.
    pub(crate) elsewhere: Option<reqwest::Client>,
    /// The endpoint's configured headers, sent to its token service too.
    pub(crate) headers: super::ConfiguredHeaders,
    /// The clients' connect timeout (`None`: no limit), for errors to name.
    pub(crate) connect_timeout: Option<Duration>,
}

impl TokenClients {
    /// The client for a token request to `realm`.
    fn for_realm(&self, realm: &str) -> &reqwest::Client {
        let loopback = reqwest::Url::parse(realm)
            .ok()
            .and_then(|url| url.host_str().map(super::is_loopback))
            .unwrap_or(false);
        match &self.elsewhere {
            Some(checked) if !loopback => checked,
            _ => &self.registry,
        }
    }
}

/// Whose turn it is to fetch one (host, scope)'s token.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// Answers challenges for one client: credentials plus a token cache shared
/// by every request (and clone) of that client.
#[derive(Clone)]
pub(crate) struct Authorizer {
    credentials: Arc<dyn Credentials>,
    /// (host, scope) to the header to send.
    cache: Arc<Mutex<HashMap<(String, String), Cached>>>,
    /// One token fetch at a time per (host, scope), so concurrent requests
    /// that meet the same challenge share one token rather than each asking,
    /// while a slow token server holds up only its own host's requests.
    fetching: Arc<Mutex<HashMap<(String, String), Turn>>>,
    /// The last challenge of each host, to renew an expired token before a
    /// request rather than after its 401 (an upload cannot be sent twice).
    challenges: Arc<Mutex<HashMap<String, String>>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Authorizer")
            .field("credentials", &self.credentials)
            .field("cached", &cache.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Tokens without `expires_in` (or with 0) last this long (the distribution
/// spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A token is kept at most this long, whatever its `expires_in` says.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A token request (connection, answer and body) that takes longer than this
/// fails: it holds up every request waiting for that host's token.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a token response's `expires_in` lets it be kept.
fn token_lifetime(expires_in: Option<i64>) -> Duration {
    match expires_in.and_then(|seconds| u64::try_from(seconds).ok()) {
        None | Some(0) => DEFAULT_TOKEN_LIFETIME,
        Some(seconds) => Duration::from_secs(seconds).min(MAX_TOKEN_LIFETIME),
    }
}

/// What an error response does not say itself, kept on it (its extensions)
/// for the error made of it: whether a refused request had credentials to
/// go with it, why a registry's `Retry-After` was not waited for.
#[derive(Debug, Clone)]
pub(crate) struct ResponseNote(pub(crate) String);

impl ResponseNote {
    fn new(host: &str, found: Option<&Credential>) -> Self {
        ResponseNote(match found {
            Some(c) if c.secret.is_empty() => format!(
                "refused without credentials: those found for {host} have an empty password, \
                 which is not sent"
            ),
            Some(_) => format!("refused with the credentials for {host}"),
            None => format!("refused without credentials: none were found for {host}"),
        })
    }

    /// The note `response` carries, if any.
    pub(crate) fn of(response: &reqwest::Response) -> Option<String> {
        response
            .extensions()
            .get::<Self>()
            .map(|note| note.0.clone())
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    /// Signed, as Go's `int` (containerd's) takes it: a server saying -1
    /// gets the default lifetime, not a failed request.
    expires_in: Option<i64>,
}

impl Authorizer {
    pub(crate) fn new(credentials: Arc<dyn Credentials>) -> Self {
        Authorizer {
            credentials,
            cache: Arc::default(),
            fetching: Arc::default(),
            challenges: Arc::default(),
        }
    }

    /// The `Authorization` for a request to `host` needing `scope`: the
    /// cached one while good; once it has expired, if the host challenged
    /// before, a new answer to that challenge, asked for this scope.
    pub(crate) async fn authorization(
        &self,
        clients: &TokenClients,
        host: &str,
        scope: &str,
    ) -> Result<Option<HeaderValue>> {
        if let Some(cached) = self.cached(host, scope) {
            return Ok(Some(cached));
        }
        let challenge = self
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned();
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        // The challenge named the scope of the request that met it; this one
        // asks for its own.
        let mut challenges = parse_challenges(&challenge);
        for c in &mut challenges {
            c.params.remove("scope");
        }
        self.answer_parsed(clients, host, scope, challenges, None)
            .await
    }

    /// The cached `Authorization` for `host` and `scope`, if still good.
    pub(crate) fn cached(&self, host: &str, scope: &str) -> Option<HeaderValue> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let cached = cache.get(&(host.to_string(), scope.to_string()))?;
        (cached.until > Instant::now()).then(|| HeaderValue::from_str(&cached.header).ok())?
    }

    /// Answers a 401's challenges for `host` and `scope`; `None` if none can
    /// be answered (no supported scheme, or basic auth without credentials).
    /// `refused` is what the challenged request sent: never offered again,
    /// even before it expires (a registry may stop honouring a token early),
    /// while a different cached answer (another request's, newer) is reused.
    pub(crate) async fn answer(
        &self,
        clients: &TokenClients,
        host: &str,
        scope: &str,
        www_authenticate: &str,
        refused: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>> {
        let challenges = parse_challenges(www_authenticate);
        // Only a challenge that can be answered is kept for renewals: a 401
        // without one (or with an unknown scheme) must not replace it.
        if answerable(&challenges) {
            self.challenges
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host.to_string(), www_authenticate.to_string());
        }
        self.answer_parsed(clients, host, scope, challenges, refused)
            .await
    }

    /// The credential the store has for `host`, whatever its secret,
    /// looked up on a blocking thread: a credential helper is a process, and
    /// may take its time (a keychain prompt, a cloud login) without holding
    /// up the runtime.
    async fn credential_found(&self, host: &str) -> Result<Option<Credential>> {
        let credentials = self.credentials.clone();
        let owned = host.to_string();
        match tokio::task::spawn_blocking(move || credentials.get(&owned)).await {
            Ok(Ok(credential)) => Ok(credential),
            Ok(Err(source)) => Err(Error::Credentials {
                host: host.to_string(),
                source,
            }),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down.
            Err(e) => Err(Error::other(
                ocidist_content::ErrorKind::Unavailable,
                format!("credentials for {host}: {e}"),
            )),
        }
    }

    /// What a 401 from `host` should say about credentials: whether there
    /// were any to send. `None` if the lookup itself fails (that error is
    /// the one the answer to a challenge reports).
    pub(crate) async fn credentials_note(&self, host: &str) -> Option<ResponseNote> {
        let found = self.credential_found(host).await.ok()?;
        Some(ResponseNote::new(host, found.as_ref()))
    }

    /// [`answer`](Self::answer) for challenges already parsed.
    async fn answer_parsed(
        &self,
        clients: &TokenClients,
        host: &str,
        scope: &str,
        challenges: Vec<Challenge>,
        refused: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>> {
        if !answerable(&challenges) {
            return Ok(None);
        }
        let bearer = challenges.iter().find(|c| c.scheme == "bearer");
        let key = (host.to_string(), scope.to_string());
        let turn = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let _one_at_a_time = turn.lock().await;
        if let Some(cached) = self.cached(host, scope)
            && Some(&cached) != refused
        {
            return Ok(Some(cached));
        }
        let found = self.credential_found(host).await?;
        // An empty secret is no credential (containerd goes anonymous).
        let credential = found.clone().filter(|c| !c.secret.is_empty());
        let (header, lifetime) = match (bearer, &credential) {
            (Some(bearer), _) => {
                let (token, lifetime) = self
                    .token(clients, bearer, scope, credential.as_ref())
                    .await
                    .map_err(|e| {
                        e.noted_if_unauthorized(|| ResponseNote::new(host, found.as_ref()).0)
                    })?;
                (format!("Bearer {token}"), lifetime)
            }
            (None, Some(credential)) => (basic(credential), MAX_TOKEN_LIFETIME),
            (None, None) => return Ok(None),
        };
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            key,
            Cached {
                header: header.clone(),
                // Renew a little early so a token does not expire in flight.
                until: Instant::now()
                    + lifetime
                        .saturating_sub(Duration::from_secs(5))
                        .max(Duration::from_secs(1)),
            },
        );
        Ok(HeaderValue::from_str(&header).ok())
    }

    /// Gets a bearer token from the challenge's realm: with credentials by the
    /// OAuth2 password grant (POST), falling back to GET with basic auth;
    /// anonymously by GET.
    async fn token(
        &self,
        clients: &TokenClients,
        challenge: &Challenge,
        scope: &str,
        credential: Option<&Credential>,
    ) -> Result<(String, Duration)> {
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| Error::Protocol {
                url: "WWW-Authenticate".into(),
                reason: "a bearer challenge without a realm".into(),
            })?;
        let client = clients.for_realm(realm);
        let service = challenge.params.get("service").cloned().unwrap_or_default();
        // The challenge's scopes (what this request needs) with the ones
        // asked for (what the operation will need: a push's check asks for
        // push too), merged as containerd's `GetTokenScopes` merges them.
        let scope = match challenge.params.get("scope") {
            Some(challenged) => merge_scopes(challenged, scope),
            None => scope.to_string(),
        };
        // The challenge lists scopes separated by spaces (a mount asks for the
        // source's pull too). The OAuth2 form takes them so, in one `scope`
        // (RFC 6749); the GET form one `scope` parameter each (the token
        // specification), as containerd sends them.
        let mut response = None;
        // No user name: an identity token (`docker login` with a token, ACR),
        // which only the OAuth2 refresh-token grant takes, as in containerd.
        let identity_token = credential.filter(|c| c.username.is_empty());
        if let Some(credential) = credential {
            let mut form: Vec<(&str, &str)> = match identity_token {
                Some(token) => vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.secret.as_str()),
                    ("client_id", "ocidist"),
                ],
                None => vec![
                    ("grant_type", "password"),
                    ("client_id", "ocidist"),
                    ("username", credential.username.as_str()),
                    ("password", credential.secret.as_str()),
                ],
            };
            // A challenge without a service gets none back, as from containerd.
            if !service.is_empty() {
                form.push(("service", service.as_str()));
            }
            if !scope.is_empty() {
                form.push(("scope", scope.as_str()));
            }
            let body: String = form
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v)))
                .collect::<Vec<_>>()
                .join("&");
            let post = clients
                .headers
                .apply(realm, client.post(realm), false)
                .timeout(TOKEN_REQUEST_TIMEOUT)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .map_err(|source| Error::Connect {
                    url: realm.clone(),
                    source: ConnectError::new(source)
                        .within(TOKEN_REQUEST_TIMEOUT, clients.connect_timeout),
                })?;
            // The client hands back a redirect that would send this form
            // to another origin (`tls::redirect_policy`): it goes nowhere
            // but the realm the registry named.
            if post.status().is_redirection() && identity_token.is_some() {
                return Err(Error::Protocol {
                    url: realm.clone(),
                    reason: format!(
                        "the token service redirected the identity token's form to {}, \
                         which is not sent anywhere but the realm",
                        location_of(&post)
                    ),
                });
            }
            // Token servers without OAuth2 answer 404 or 405: use GET instead
            // (with a password; an identity token is good for nothing else).
            if post.status().is_success() || identity_token.is_some() {
                response = Some(post);
            }
        }
        let response = match response {
            Some(response) => (reqwest::Method::POST, response),
            None => {
                let mut query = Vec::new();
                if !service.is_empty() {
                    query.push(format!("service={}", urlencode(&service)));
                }
                for one in scope.split_whitespace() {
                    query.push(format!("scope={}", urlencode(one)));
                }
                let mut url = realm.clone();
                if !query.is_empty() {
                    url.push(if realm.contains('?') { '&' } else { '?' });
                    url.push_str(&query.join("&"));
                }
                let mut get = clients
                    .headers
                    .apply(&url, client.get(&url), credential.is_some())
                    .timeout(TOKEN_REQUEST_TIMEOUT);
                if let Some(credential) = credential {
                    get = get.header(header::AUTHORIZATION, basic(credential));
                }
                let connect = |source| Error::Connect {
                    url: realm.clone(),
                    source: ConnectError::new(source)
                        .within(TOKEN_REQUEST_TIMEOUT, clients.connect_timeout),
                };
                let mut response = get.send().await.map_err(connect)?;
                // A redirect the client handed back is followed here, as
                // the client follows others: without the credentials.
                for _ in 0..super::tls::MAX_REDIRECTS {
                    let Some(location) = super::redirect_target(&response) else {
                        break;
                    };
                    let get = clients
                        .headers
                        .apply(location.as_str(), client.get(location.clone()), false)
                        .timeout(TOKEN_REQUEST_TIMEOUT);
                    response = get.send().await.map_err(connect)?;
                }
                (reqwest::Method::GET, response)
            }
        };
        let (method, response) = response;
        let response =
            super::check_status(method, realm, response, &[reqwest::StatusCode::OK]).await?;
        // Both the request's whole-time limit and the client's idle-read
        // one bound it, and a timeout cannot tell which ran out: neither is
        // named.
        let speed = super::speed::SpeedCheck::new(super::LowSpeedLimit::default(), None);
        let body = super::read_limited(realm, response, 1 << 20, speed).await?;
        token_from(realm, &body)
    }
}

/// Where a redirect `response` points, for an error.
fn location_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(header::LOCATION)
        // Visible ASCII only: nothing a terminal would act on.
        .and_then(|l| l.to_str().ok())
        .unwrap_or("a location that is not plain text")
        .to_string()
}

/// The token, and how long it lives, in a token service's answer `body`.
fn token_from(realm: &str, body: &[u8]) -> Result<(String, Duration)> {
    let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| Error::Protocol {
        url: realm.to_string(),
        reason: format!("bad token response: {e}"),
    })?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| Error::Protocol {
            url: realm.to_string(),
            reason: "no token in the response".into(),
        })?;
    // Sent as it is, it would be refused by our own client and read as the
    // registry's 401.
    if HeaderValue::from_str(&token).is_err() {
        return Err(Error::Protocol {
            url: realm.to_string(),
            reason: "the token holds characters a header cannot carry (control \
                     characters, a line break)"
                .into(),
        });
    }
    Ok((token, token_lifetime(parsed.expires_in)))
}

/// Whether any of `challenges` is of a scheme we answer (bearer, basic).
fn answerable(challenges: &[Challenge]) -> bool {
    challenges
        .iter()
        .any(|c| c.scheme == "bearer" || c.scheme == "basic")
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The scopes of `a` and `b` (each space-separated `type:name:actions`),
/// one per resource with the union of its actions, sorted by resource: what
/// a token for both must grant.
fn merge_scopes(a: &str, b: &str) -> String {
    let mut merged: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        std::collections::BTreeMap::new();
    let mut other = Vec::new();
    for scope in a.split_whitespace().chain(b.split_whitespace()) {
        match scope.rsplit_once(':') {
            Some((resource, actions)) if resource.contains(':') => {
                merged
                    .entry(resource)
                    .or_default()
                    .extend(actions.split(','));
            }
            _ if !other.contains(&scope) => other.push(scope),
            _ => {}
        }
    }
    let mut out: Vec<String> = merged
        .into_iter()
        .map(|(resource, actions)| {
            let actions: Vec<&str> = actions.into_iter().filter(|a| !a.is_empty()).collect();
            format!("{resource}:{}", actions.join(","))
        })
        .collect();
    out.extend(other.into_iter().map(str::to_string));
    out.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_is_taken_only_if_a_header_can_carry_it() {
        let realm = "https://auth.example/token";
        let (token, _) = super::token_from(realm, br#"{"access_token": "abc.def"}"#).unwrap();
        assert_eq!(token, "abc.def");
        for body in [
            &br#"{"token": "abc\r\nX-Injected: 1"}"#[..],
            br#"{"token": "abc\u0000"}"#,
            br#"{"token": ""}"#,
            br#"{"expires_in": 60}"#,
        ] {
            let err = super::token_from(realm, body).unwrap_err();
            assert!(
                matches!(err, crate::Error::Protocol { .. }) && err.to_string().starts_with(realm),
                "{err}"
            );
        }
    }

    #[test]
    fn scopes_merge_per_resource() {
        assert_eq!(
            super::merge_scopes("repository:a/b:pull", "repository:a/b:pull,push"),
            "repository:a/b:pull,push"
        );
        assert_eq!(
            super::merge_scopes(
                "repository:src:pull repository:dst:pull,push",
                "repository:dst:push"
            ),
            "repository:dst:pull,push repository:src:pull"
        );
        assert_eq!(
            super::merge_scopes("registry:catalog:*", "registry:catalog:*"),
            "registry:catalog:*"
        );
    }

    use super::*;

    /// A token service on another machine gets the checked client when the
    /// registry's own is unchecked because the registry is local; one on a
    /// loopback host (or any, when there is no such client) the registry's.
    #[test]
    fn token_requests_elsewhere_go_out_checked() {
        let clients = TokenClients {
            registry: reqwest::Client::new(),
            elsewhere: Some(reqwest::Client::new()),
            headers: crate::docker::ConfiguredHeaders {
                headers: Vec::new(),
                base: "http://127.0.0.1:5000/v2/r".into(),
            },
            connect_timeout: None,
        };
        let is_registry = |realm| std::ptr::eq(clients.for_realm(realm), &clients.registry);
        assert!(is_registry("https://127.0.0.1:5001/token"));
        assert!(is_registry("https://localhost/token"));
        assert!(is_registry("https://[::1]:5001/token"));
        assert!(!is_registry("https://auth.example.com/token"));
        assert!(!is_registry("https://10.0.0.1/token"));
        let plain = TokenClients {
            elsewhere: None,
            ..clients.clone()
        };
        assert!(std::ptr::eq(
            plain.for_realm("https://auth.example.com/token"),
            &plain.registry
        ));
    }

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["scope"], "repository:library/redis:pull");
        let c = parse_challenges(r#"Basic realm="basic-realm", Bearer realm="x",service=y"#);
        assert_eq!(
            c.iter().map(|c| c.scheme.as_str()).collect::<Vec<_>>(),
            ["basic", "bearer"]
        );
        assert_eq!(c[1].params["service"], "y");
        let c = parse_challenges(r#"Bearer realm="a \"quoted\" realm, with comma""#);
        assert_eq!(c[0].params["realm"], r#"a "quoted" realm, with comma"#);
        assert!(parse_challenges("").is_empty());
    }

    #[test]
    fn base64_and_urlencoding() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(
            urlencode("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
    }

    #[test]
    fn credentials_are_not_printed() {
        let c = Credential {
            username: "me".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    /// Neither a cached basic header nor a cached token is printed.
    #[test]
    fn an_authorizer_does_not_print_what_it_caches() {
        let authorizer = Authorizer::new(Arc::new(Anonymous));
        let basic_header = basic(&Credential {
            username: "me".into(),
            secret: "hunter2".into(),
        });
        for header in [basic_header, "Bearer s3cr3t-t0ken".to_string()] {
            authorizer.cache.lock().unwrap().insert(
                ("registry.example".into(), "repository:a:pull".into()),
                Cached {
                    header: header.clone(),
                    until: Instant::now() + DEFAULT_TOKEN_LIFETIME,
                },
            );
            let printed = format!("{authorizer:?}");
            assert!(printed.contains("registry.example"), "{printed}");
            let secret = header.split(' ').nth(1).unwrap();
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    /// A token is kept as long as `expires_in` says, 60 s without it (or
    /// with 0), and never longer than a day: an absurd value must not
    /// overflow the clock.
    #[test]
    fn token_lifetimes_are_bounded() {
        assert_eq!(token_lifetime(Some(300)), Duration::from_secs(300));
        assert_eq!(token_lifetime(None), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(Some(0)), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(Some(-1)), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(Some(i64::MIN)), DEFAULT_TOKEN_LIFETIME);
        assert_eq!(token_lifetime(Some(i64::MAX)), MAX_TOKEN_LIFETIME);
        let _ = Instant::now() + token_lifetime(Some(i64::MAX));
    }

    /// A 401 without a challenge we can answer neither is answered nor
    /// replaces the host's last good challenge (kept to renew tokens).
    #[tokio::test]
    async fn an_unanswerable_challenge_does_not_replace_a_good_one() {
        let authorizer = Authorizer::new(Arc::new(Anonymous));
        let clients = TokenClients {
            registry: reqwest::Client::new(),
            elsewhere: None,
            headers: crate::docker::ConfiguredHeaders {
                headers: Vec::new(),
                base: "https://registry.example/v2/r".into(),
            },
            connect_timeout: None,
        };
        let good = r#"Bearer realm="https://auth.example/token",service="r""#;
        authorizer
            .challenges
            .lock()
            .unwrap()
            .insert("registry.example".into(), good.into());
        for unanswerable in ["", "Negotiate", "Mutual realm=\"x\""] {
            let answer = authorizer
                .answer(
                    &clients,
                    "registry.example",
                    "repository:a:pull",
                    unanswerable,
                    None,
                )
                .await
                .unwrap();
            assert!(answer.is_none(), "{unanswerable:?}");
            assert_eq!(
                authorizer.challenges.lock().unwrap()["registry.example"],
                good,
                "{unanswerable:?}"
            );
        }
    }
}
