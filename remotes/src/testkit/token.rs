//! A token service for the registry's `auth: token` mode: it signs JWTs
//! (ES256, with the certificate in `x5c`) with a key generated at start, and
//! the registry trusts that certificate through `rootcertbundle`.
//!
//! Anonymous clients get `pull`; clients with the configured user and
//! password (by basic auth on GET, or the OAuth2 password grant on POST) get
//! what they ask for.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, KeyPair, SigningKey};

/// The `issuer` the registry must trust.
pub const ISSUER: &str = "ocidist-test-issuer";
/// The `service` (token audience) of the registry.
pub const SERVICE: &str = "ocidist-test-registry";

struct State {
    key: KeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    /// An identity token granting what `user` gets, by the refresh-token grant.
    identity_token: std::sync::Mutex<Option<String>>,
    requests: AtomicUsize,
    /// Seconds from issue to the `exp` claim of new tokens.
    signed_lifetime: AtomicI64,
    /// What new tokens say as `expires_in`.
    expires_in: AtomicI64,
    /// Answer OAuth2 POSTs with 404, as token services without OAuth2 do.
    refuse_oauth: AtomicBool,
    /// Answer wrong credentials with 401, as Docker Hub's service does,
    /// rather than grant them what anonymous clients get.
    refuse_wrong_credentials: AtomicBool,
    stop: AtomicBool,
}

/// What tokens answer as `expires_in`, and by default sign as their life.
const EXPIRES_IN: i64 = 300;

/// A running token service; stopped when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    state: Arc<State>,
    cert_pem: String,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TokenServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl TokenServer {
    /// Starts a token service on a random 127.0.0.1 port that grants push to
    /// `user` with `password`.
    pub fn start(user: &str, password: &str) -> io::Result<TokenServer> {
        let key = KeyPair::generate().map_err(io::Error::other)?;
        let params = CertificateParams::new(vec!["ocidist-test-token".to_string()])
            .map_err(io::Error::other)?;
        let cert = params.self_signed(&key).map_err(io::Error::other)?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            key,
            cert_der: cert.der().to_vec(),
            user: user.to_string(),
            password: password.to_string(),
            identity_token: std::sync::Mutex::new(None),
            requests: AtomicUsize::new(0),
            signed_lifetime: AtomicI64::new(EXPIRES_IN),
            expires_in: AtomicI64::new(EXPIRES_IN),
            refuse_oauth: AtomicBool::new(false),
            refuse_wrong_credentials: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let serve_state = state.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serve_state.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &serve_state);
                }
            }
        });
        Ok(TokenServer {
            addr,
            state,
            cert_pem: cert.pem(),
            thread: Some(thread),
        })
    }

    /// The registry configuration section that trusts this service; the
    /// certificate bundle is written into `dir`.
    pub fn registry_config(&self, dir: &Path) -> io::Result<String> {
        self.registry_config_with_realm(dir, &self.addr.to_string())
    }

    /// [`registry_config`](Self::registry_config) with the realm at
    /// `realm_host` (`host:port`): a proxy in front of this service, to
    /// see or bend what clients send it.
    pub fn registry_config_with_realm(&self, dir: &Path, realm_host: &str) -> io::Result<String> {
        let bundle = dir.join("token-ca.pem");
        std::fs::write(&bundle, &self.cert_pem)?;
        Ok(format!(
            "auth:\n  token:\n    realm: http://{realm_host}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            bundle.display()
        ))
    }

    /// Where it listens (the realm's host is this address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many tokens were asked for.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Makes the tokens issued from now on expire (their `exp` claim) this
    /// many seconds after issue, negative for the past, while their
    /// `expires_in` still promises 300: a service whose clock runs ahead of
    /// the client's, or a registry that stops honouring tokens early. The
    /// registry adds a leeway for clock skew (60 s for distribution 2.8).
    pub fn set_signed_lifetime(&self, seconds: i64) {
        self.state.signed_lifetime.store(seconds, Ordering::SeqCst);
    }

    /// Accepts `token` as an identity token of the user (what `docker login`
    /// stores as `identitytoken`), by the OAuth2 refresh-token grant only.
    pub fn set_identity_token(&self, token: &str) {
        *self
            .state
            .identity_token
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(token.to_string());
    }

    /// Makes the tokens issued from now on say `expires_in: seconds` (they
    /// stay valid for the registry as long as before).
    pub fn set_expires_in(&self, seconds: i64) {
        self.state.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// Answers the OAuth2 form (POST) with 404 from now on, as token
    /// services that only know the GET form do; clients must then GET.
    pub fn refuse_oauth(&self) {
        self.state.refuse_oauth.store(true, Ordering::SeqCst);
    }

    /// Answers wrong credentials with 401 from now on, as Docker Hub's
    /// token service does; before, they get what anonymous clients get.
    pub fn refuse_wrong_credentials(&self) {
        self.state
            .refuse_wrong_credentials
            .store(true, Ordering::SeqCst);
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, state: &State) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let request_line = head.first().cloned().unwrap_or_default();
    let header = |name: &str| {
        head.iter()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let query = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|target| target.split_once('?'))
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    // GET: parameters in the query, credentials by basic auth. POST: a form.
    let mut params = parse_form(&query);
    let basic = header("authorization").and_then(|v| v.strip_prefix("Basic ").map(str::to_string));
    let mut credentials_given = basic.is_some();
    let mut authenticated = basic.is_some_and(|b| {
        b == base64(
            format!("{}:{}", state.user, state.password).as_bytes(),
            false,
        )
    });
    let oauth = request_line.starts_with("POST");
    if oauth && state.refuse_oauth.load(Ordering::SeqCst) {
        let mut stream = stream;
        write!(
            stream,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return stream.flush();
    }
    if oauth {
        params = parse_form(&String::from_utf8_lossy(&body));
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let identity = state
            .identity_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        credentials_given = param("refresh_token").is_some() || param("password").is_some();
        authenticated = match param("grant_type") {
            Some("refresh_token") => {
                identity.is_some() && param("refresh_token") == identity.as_deref()
            }
            _ => {
                param("username") == Some(state.user.as_str())
                    && param("password") == Some(state.password.as_str())
            }
        };
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    if credentials_given && !authenticated && state.refuse_wrong_credentials.load(Ordering::SeqCst)
    {
        let mut stream = stream;
        let body = r#"{"details":"incorrect username or password"}"#;
        write!(
            stream,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return stream.flush();
    }
    // Read strictly, as each form is specified: the OAuth2 form has one
    // space-separated `scope` (RFC 6749; a second is ignored, as Go's
    // `FormValue` does), the GET form one `scope` parameter per scope (the
    // distribution token specification).
    let mut scopes: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.as_str())
        .collect();
    if oauth {
        scopes = scopes
            .first()
            .map_or(Vec::new(), |s| s.split(' ').collect());
    }
    let access: Vec<String> = scopes
        .into_iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let granted: Vec<String> = actions
                .split(',')
                .filter(|a| authenticated || *a == "pull")
                .map(|a| format!("\"{a}\""))
                .collect();
            Some(format!(
                r#"{{"type":"{kind}","name":"{name}","actions":[{}]}}"#,
                granted.join(",")
            ))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let expires = now + state.signed_lifetime.load(Ordering::SeqCst);
    let header_json = format!(
        r#"{{"typ":"JWT","alg":"ES256","x5c":["{}"]}}"#,
        base64(&state.cert_der, false)
    );
    let claims = format!(
        r#"{{"iss":"{ISSUER}","sub":"{}","aud":"{SERVICE}","exp":{},"nbf":{},"iat":{now},"jti":"{now}-{}","access":[{}]}}"#,
        if authenticated {
            state.user.as_str()
        } else {
            ""
        },
        expires,
        now.min(expires) - 10,
        state.requests.load(Ordering::SeqCst),
        access.join(",")
    );
    let signing_input = format!(
        "{}.{}",
        base64(header_json.as_bytes(), true),
        base64(claims.as_bytes(), true)
    );
    let der = state
        .key
        .sign(signing_input.as_bytes())
        .map_err(io::Error::other)?;
    let token = format!("{signing_input}.{}", base64(&der_to_fixed(&der)?, true));
    let expires_in = state.expires_in.load(Ordering::SeqCst);
    let response =
        format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":{expires_in}}}"#);
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{response}",
        response.len()
    )?;
    stream.flush()
}

fn parse_form(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An ASN.1 DER ECDSA signature as JWS wants it: r and s, 32 bytes each.
fn der_to_fixed(der: &[u8]) -> io::Result<Vec<u8>> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected ECDSA signature encoding",
        )
    };
    let mut rest = der.get(2..).ok_or_else(bad)?;
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        if rest.first() != Some(&0x02) {
            return Err(bad());
        }
        let len = *rest.get(1).ok_or_else(bad)? as usize;
        let int = rest.get(2..2 + len).ok_or_else(bad)?;
        let int = &int[int.iter().take_while(|b| **b == 0).count()..];
        if int.len() > 32 {
            return Err(bad());
        }
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        rest = &rest[2 + len..];
    }
    Ok(out)
}

fn base64(data: &[u8], url: bool) -> String {
    crate::docker::auth::base64_encode(data, url)
}
