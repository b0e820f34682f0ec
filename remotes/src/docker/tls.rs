//! TLS for registry clients.
//!
//! The rustls configuration is built here and handed to reqwest ready-made,
//! so that the same settings can open a session of our own. A TLS 1.3
//! registry refuses a client certificate (or its absence) with an alert
//! sent after the client's side of the handshake is done; the HTTP client
//! may read that alert before its request goes out, and then reports only
//! that the connection closed. A session of our own, read once, names the
//! alert.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::client::proxy::matcher::Matcher;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{CONNECT_TIMEOUT, Connection, IDLE_READ_TIMEOUT, causes, hosts};
use crate::error::{ConnectError, Error, NO_SYSTEM_ROOTS, Result};

/// How long a session opened to learn why the registry ended another may
/// wait for the registry's alert (it comes right after the handshake).
const ALERT_WAIT: Duration = Duration::from_secs(2);

/// An HTTP client and the TLS configuration it was built with.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    pub(crate) http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    /// The client's connect timeout (`None`: no limit), for errors to name.
    pub(crate) connect_timeout: Option<Duration>,
    /// The client's idle-read timeout (`None`: no limit).
    pub(crate) idle_read_timeout: Option<Duration>,
}

impl HttpClient {
    /// The fatal alert refusing the client certificate (or its absence)
    /// that the HTTPS registry at `url` ends a new session with, in the
    /// handshake or right after it and before any request, if it does so
    /// within [`ALERT_WAIT`]. `None` when the session cannot be opened
    /// (the request's own error says why) or stays open, and when the
    /// request went through a proxy (the environment's, as reqwest reads
    /// it), which this session would not.
    pub(crate) async fn alert_after_handshake(&self, url: &str) -> Option<String> {
        if proxied(&Matcher::from_system(), url) {
            return None;
        }
        self.read_alert(url).await
    }

    /// [`alert_after_handshake`](Self::alert_after_handshake), whatever the
    /// environment says.
    async fn read_alert(&self, url: &str) -> Option<String> {
        let url = reqwest::Url::parse(url).ok()?;
        if url.scheme() != "https" {
            return None;
        }
        let port = url.port_or_known_default()?;
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string()).ok()?,
        };
        let connector = tokio_rustls::TlsConnector::from(self.tls.clone());
        let session = async {
            let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
            // A refusal can come during the handshake too (TLS 1.2).
            let mut tls = match connector.connect(server_name, tcp).await {
                Ok(tls) => tls,
                Err(e) => return rustls_error(&e).and_then(alert_text),
            };
            let mut byte = [0u8; 1];
            match tokio::io::AsyncReadExt::read(&mut tls, &mut byte).await {
                Err(e) => rustls_error(&e).and_then(alert_text),
                Ok(_) => None,
            }
        };
        tokio::time::timeout(ALERT_WAIT, session)
            .await
            .ok()
            .flatten()
    }
}

/// Whether `matcher` (reqwest's, from the environment: `HTTPS_PROXY`,
/// `ALL_PROXY`, `NO_PROXY`...) sends requests for `url` through a proxy;
/// `true` when that cannot be told.
fn proxied(matcher: &Matcher, url: &str) -> bool {
    match url.parse::<hyper::Uri>() {
        Ok(uri) => matcher.intercept(&uri).is_some(),
        Err(_) => true,
    }
}

/// The fatal alert a request failed on, if a TLS alert refusing the
/// client certificate (or its absence) ended it.
pub(crate) fn fatal_alert(error: &reqwest::Error) -> Option<String> {
    causes(error).find_map(|e| rustls_error(e).and_then(alert_text))
}

/// The TLS error `error` is, or wraps in I/O errors (one inside another, as
/// the connector hands them on): `io::Error::source` skips the error it
/// wraps, so the chain of causes alone never reaches it.
fn rustls_error<'a>(mut error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        error = error.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// Whether a request failed because the server's certificate was refused
/// (an unknown issuer, a wrong name, expired): another attempt would be
/// refused the same way.
pub(crate) fn certificate_rejected(error: &reqwest::Error) -> bool {
    causes(error).any(|e| matches!(rustls_error(e), Some(rustls::Error::InvalidCertificate(_))))
}

/// Whether a request failed before it was sent, because its new connection
/// closed first (the HTTP client's "connection was not ready").
pub(crate) fn closed_before_sending(error: &reqwest::Error) -> bool {
    causes(error).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
    })
}

/// The text of a fatal alert by which a server refuses the client's
/// certificate or its absence; other alerts (an overloaded server's
/// `InternalError`, say) are left to be retried as broken connections.
fn alert_text(error: &rustls::Error) -> Option<String> {
    use rustls::AlertDescription as A;
    let rustls::Error::AlertReceived(alert) = error else {
        return None;
    };
    matches!(
        alert,
        A::NoCertificate
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
    .then(|| error.to_string())
}

/// Redirects a request follows at most, as reqwest's default policy.
pub(super) const MAX_REDIRECTS: usize = 10;

/// Redirects are followed as reqwest's default policy follows them, but a
/// hop that would carry credentials to another host is handed back to the
/// caller instead ([`super::Repository::follow_handed_back`]), which asks
/// it anew without them. reqwest gives every hop the first request's
/// headers and takes credentials off only when a hop changes origin from
/// the one before it: a chain that left the registry for a storage host
/// and then moved within that host would carry the registry's credentials
/// there (and a presigned URL refuses a second authorization anyway).
/// A 307 or 308 to another origin is handed back too: the client would
/// send the request's body there again, and a token request's body is a
/// form holding the password.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let origin = |u: &reqwest::Url| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port_or_known_default(),
            )
        };
        let previous = attempt.previous();
        if previous.len() > MAX_REDIRECTS {
            return attempt.error("too many redirects");
        }
        let repeats_body = matches!(
            attempt.status(),
            reqwest::StatusCode::TEMPORARY_REDIRECT | reqwest::StatusCode::PERMANENT_REDIRECT
        );
        match (previous.first(), previous.last()) {
            (Some(_), Some(last)) if repeats_body && origin(attempt.url()) != origin(last) => {
                attempt.stop()
            }
            (Some(first), Some(last))
                if origin(last) != origin(first) && origin(attempt.url()) == origin(last) =>
            {
                attempt.stop()
            }
            _ => attempt.follow(),
        }
    })
}

impl Connection {
    /// A client with these settings. Unreadable, malformed or mismatched
    /// files are an [`Error::TlsConfig`] naming them.
    ///
    /// A machine with no CA certificates of its own (a minimal container
    /// without `ca-certificates`) still gets a client: plain HTTP works, and
    /// HTTPS works for registries whose CA is given; any other fails its
    /// handshake with an unknown issuer, naming the URL and saying that the
    /// machine has no CA certificates.
    pub(super) fn client(&self) -> Result<HttpClient> {
        let tls = Arc::new(self.tls_config()?);
        let mut builder = reqwest::Client::builder()
            .user_agent(
                self.user_agent
                    .as_deref()
                    .unwrap_or(super::DEFAULT_USER_AGENT),
            )
            .redirect(redirect_policy())
            .tls_backend_preconfigured(rustls::ClientConfig::clone(&tls));
        // Zero is no limit (reqwest's zero would time out every attempt).
        let connect = self.dial_timeout.unwrap_or(CONNECT_TIMEOUT);
        if !connect.is_zero() {
            builder = builder.connect_timeout(connect);
        }
        let idle_read = self.idle_read_timeout.unwrap_or(IDLE_READ_TIMEOUT);
        if !idle_read.is_zero() {
            builder = builder.read_timeout(idle_read);
        }
        let http = builder.build().map_err(|source| Error::Connect {
            url: "TLS configuration".into(),
            source: ConnectError::new(source),
        })?;
        let limit = |d: Duration| (!d.is_zero()).then_some(d);
        Ok(HttpClient {
            http,
            tls,
            connect_timeout: limit(connect),
            idle_read_timeout: limit(idle_read),
        })
    }

    /// The TLS configuration: the system's CA certificates (read at the
    /// first handshake) and those of the CA files, or no checking at all
    /// with `skip_verify`; the client certificate if any; HTTP/1.1.
    fn tls_config(&self) -> Result<rustls::ClientConfig> {
        // A provider the program installed wins, as with reqwest's own.
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let roots = self.ca_certificates()?;
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_config_error(Path::new("TLS configuration"), e))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.skip_verify {
            Arc::new(AnyCertificate)
        } else {
            Arc::new(SystemAndGivenRoots::new(roots, provider))
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = if self.client_certs.is_empty() {
            builder.with_no_client_auth()
        } else {
            let certificates = self
                .client_certs
                .iter()
                .map(|client| ClientCertificate::read(client, builder.crypto_provider()))
                .collect::<Result<_>>()?;
            builder.with_client_cert_resolver(Arc::new(ClientCertificates(certificates)))
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The certificates of the CA files and PEMs, each checked to be
    /// usable as a root (an error names the file, or the PEM as
    /// `<CA PEM n>`).
    fn ca_certificates(&self) -> Result<Vec<CertificateDer<'static>>> {
        let files = self
            .ca_files
            .iter()
            .map(|path| read_tls_file(path).map(|pem| (path.clone(), pem)));
        let given = self.ca_pems.iter().enumerate().map(|(n, pem)| {
            let name = PathBuf::from(format!("<CA PEM {}>", n + 1));
            Ok::<_, Error>((name, pem.to_vec()))
        });
        let mut roots = Vec::new();
        for source in files.chain(given) {
            let (name, pem) = source?;
            let certs = certificates_in(&name, &pem)?;
            for cert in &certs {
                RootCertStore::empty()
                    .add(cert.clone())
                    .map_err(|e| tls_config_error(&name, e))?;
            }
            roots.extend(certs);
        }
        Ok(roots)
    }
}

/// A client certificate, its key, and the issuers in its chain.
#[derive(Debug)]
struct ClientCertificate {
    key: Arc<CertifiedKey>,
    issuers: Vec<Vec<u8>>,
}

impl ClientCertificate {
    /// The certificate chain of `client` and its key (from its own file,
    /// or from the certificate's), checked to belong together.
    fn read(client: &hosts::ClientCert, provider: &CryptoProvider) -> Result<ClientCertificate> {
        let pem = read_tls_file(&client.cert)?;
        let chain = certificates_in(&client.cert, &pem)?;
        let key = match &client.key {
            Some(path) => PrivateKeyDer::from_pem_slice(&read_tls_file(path)?)
                .map_err(|e| tls_config_error(path, format!("no usable PEM private key: {e}")))?,
            None => PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                tls_config_error(
                    &client.cert,
                    format!("no usable PEM private key in the file: {e}"),
                )
            })?,
        };
        let issuers = chain
            .iter()
            .filter_map(|cert| issuer_of(cert).map(<[u8]>::to_vec))
            .collect();
        let key = CertifiedKey::from_der(chain, key, provider)
            .map_err(|e| client_cert_error(client, e))?;
        Ok(ClientCertificate {
            key: Arc::new(key),
            issuers,
        })
    }
}

/// Chooses the client certificate to present as Go (and so Docker and
/// containerd) does: the first whose key can sign as the registry asks and,
/// if the registry names the CAs it accepts, whose chain one of them issued;
/// none if no certificate is such (the registry then says what it lacks).
#[derive(Debug)]
struct ClientCertificates(Vec<ClientCertificate>);

impl ResolvesClientCert for ClientCertificates {
    fn resolve(
        &self,
        acceptable_cas: &[&[u8]],
        schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let acceptable = |c: &ClientCertificate| {
            c.key.key.choose_scheme(schemes).is_some()
                && (acceptable_cas.is_empty()
                    || c.issuers.iter().any(|i| acceptable_cas.contains(&&i[..])))
        };
        self.0.iter().find(|c| acceptable(c)).map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        !self.0.is_empty()
    }
}

/// The issuer of a DER certificate, as encoded (a `Name`, tag and length
/// included, as a TLS server lists its acceptable CAs).
fn issuer_of(cert: &[u8]) -> Option<&[u8]> {
    Some(der_element(from_issuer(cert)?)?.0.whole)
}

/// The fields of a DER certificate's to-be-signed part from its issuer on
/// (issuer, validity, subject...).
fn from_issuer(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert)?;
    let (tbs, _) = der_element(certificate.contents)?;
    let (mut element, mut rest) = der_element(tbs.contents)?;
    // The version is an explicit [0], absent in version 1 certificates.
    if element.tag == 0xa0 {
        (element, rest) = der_element(rest)?;
    }
    let _serial = element;
    let (_signature_algorithm, rest) = der_element(rest)?;
    Some(rest)
}

/// A DER element: its tag, its whole encoding and its contents.
#[derive(Clone, Copy)]
struct DerElement<'a> {
    tag: u8,
    whole: &'a [u8],
    contents: &'a [u8],
}

/// The DER element `der` starts with, and what follows it. Only the
/// low-numbered tags certificates use.
fn der_element(der: &[u8]) -> Option<(DerElement<'_>, &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let header = der.len() - rest.len();
    let element = DerElement {
        tag,
        whole: &der[..header + length],
        contents: &rest[..length],
    };
    Some((element, &rest[length..]))
}

/// A client certificate (and key) that cannot be used.
fn client_cert_error(client: &hosts::ClientCert, cause: impl std::fmt::Display) -> Error {
    let with_key = client
        .key
        .as_ref()
        .map_or(String::new(), |k| format!("with the key {}: ", k.display()));
    tls_config_error(&client.cert, format!("{with_key}{cause}"))
}

/// The PEM certificates of `pem`, read from `path`: at least one.
fn certificates_in(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_config_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_config_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

fn read_tls_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| tls_config_error(path, e))
}

fn tls_config_error(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::TlsConfig {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Checks server certificates with the platform's verifier against the
/// system's CA certificates and the given ones, loading the system's at the
/// first certificate to check: a client that only speaks plain HTTP (to a
/// loopback registry, say) never reads them (about 150 files; 2-3 ms of
/// every `dist` command on the benchmark machine).
#[derive(Debug)]
struct SystemAndGivenRoots {
    given: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
    loaded: OnceLock<std::result::Result<Arc<dyn ServerCertVerifier>, rustls::Error>>,
}

impl SystemAndGivenRoots {
    fn new(given: Vec<CertificateDer<'static>>, provider: Arc<CryptoProvider>) -> Self {
        SystemAndGivenRoots {
            given,
            provider,
            loaded: OnceLock::new(),
        }
    }

    fn verifier(&self) -> std::result::Result<&Arc<dyn ServerCertVerifier>, rustls::Error> {
        self.loaded
            .get_or_init(|| {
                let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
                    self.given.iter().cloned(),
                    self.provider.clone(),
                );
                match verifier {
                    Ok(verifier) => Ok(Arc::new(verifier) as Arc<dyn ServerCertVerifier>),
                    // Nothing at all is trusted (no CA files either): every
                    // certificate has an unknown issuer, and the error says
                    // that the machine has no CA certificates.
                    Err(e) if e.to_string().contains("No CA certificates were loaded") => {
                        NO_SYSTEM_ROOTS.store(true, Ordering::Relaxed);
                        Err(rustls::Error::InvalidCertificate(
                            rustls::CertificateError::UnknownIssuer,
                        ))
                    }
                    Err(e) => Err(e),
                }
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl ServerCertVerifier for SystemAndGivenRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            // A self-signed certificate made as `openssl req -x509` makes
            // it (a CA too), presented by the registry and given as its
            // CA file: trusted as itself, as Go's verifier and curl trust
            // it, where webpki refuses a CA as the end of a chain. Its
            // name and dates are still checked.
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    && self.given.iter().any(|given| given[..] == end_entity[..]) =>
            {
                trusted_as_itself(end_entity, server_name, now)
            }
            verified => verified,
        }
    }

    // Handshake signatures need no roots: checked with the provider's
    // algorithms, as the platform's verifier does.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Whether webpki refused a certificate for being a CA's at the end of the
/// chain.
fn is_ca_used_as_end_entity(error: &rustls::Error) -> bool {
    match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => matches!(
            other.0.downcast_ref::<webpki::Error>(),
            Some(webpki::Error::CaUsedAsEndEntity)
        ),
        _ => false,
    }
}

/// Checks a certificate trusted byte for byte for `server_name` and `now`.
fn trusted_as_itself(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> std::result::Result<ServerCertVerified, rustls::Error> {
    let bad = rustls::Error::InvalidCertificate;
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| bad(rustls::CertificateError::BadEncoding))?;
    parsed
        .verify_is_valid_for_subject_name(server_name)
        .map_err(|_| bad(rustls::CertificateError::NotValidForName))?;
    let (not_before, not_after) =
        validity_of(cert).ok_or(bad(rustls::CertificateError::BadEncoding))?;
    let now = now.as_secs();
    if now < not_before {
        return Err(bad(rustls::CertificateError::NotValidYet));
    }
    if now > not_after {
        return Err(bad(rustls::CertificateError::Expired));
    }
    Ok(ServerCertVerified::assertion())
}

/// A DER certificate's validity: not before, not after, in Unix seconds.
fn validity_of(cert: &[u8]) -> Option<(u64, u64)> {
    let (_issuer, rest) = der_element(from_issuer(cert)?)?;
    let (validity, _) = der_element(rest)?;
    let (not_before, after) = der_element(validity.contents)?;
    let (not_after, _) = der_element(after)?;
    Some((der_time(not_before)?, der_time(not_after)?))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), as certificates must write them, in Unix seconds.
fn der_time(element: DerElement<'_>) -> Option<u64> {
    let text = std::str::from_utf8(element.contents).ok()?;
    let digits = text.strip_suffix('Z')?;
    let (year, rest) = match (element.tag, digits.len()) {
        (0x17, 12) => {
            let yy: u64 = digits[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| rest[at..at + 2].parse::<u64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if year < 1970 {
        return Some(0);
    }
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// Accepts any server certificate and handshake signature (`skip_verify`),
/// as reqwest's own setting and Go's `InsecureSkipVerify` do: webpki would
/// refuse to parse some home-made certificates (X.509 v1, unknown critical
/// extensions) before checking a signature, and with nothing vouching for
/// the certificate its signature proves nothing.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        use SignatureScheme as S;
        vec![
            S::RSA_PKCS1_SHA1,
            S::ECDSA_SHA1_Legacy,
            S::RSA_PKCS1_SHA256,
            S::ECDSA_NISTP256_SHA256,
            S::RSA_PKCS1_SHA384,
            S::ECDSA_NISTP384_SHA384,
            S::RSA_PKCS1_SHA512,
            S::ECDSA_NISTP521_SHA512,
            S::RSA_PSS_SHA256,
            S::RSA_PSS_SHA384,
            S::RSA_PSS_SHA512,
            S::ED25519,
            S::ED448,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Registry, TestCertificates};

    /// The first certificate of the PEM file at `path`.
    fn der_of(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// A session of our own names the alert a registry wanting a client
    /// certificate ends it with, and finds none when the certificate is
    /// given (the registry then waits for a request).
    #[tokio::test]
    async fn a_session_of_our_own_names_the_alert_that_ended_it() {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCertificates::write(dir.path()).unwrap();
        let registry = Registry::start_tls_requiring_client_certs(&certs)
            .expect("the registry must start (apt-get install docker-registry)");
        let url = format!("https://{}/v2/", registry.host());
        let without_cert = Connection {
            ca_files: vec![certs.ca.clone()],
            ..Connection::default()
        };
        let alert = without_cert.client().unwrap().read_alert(&url).await;
        let alert = alert.expect("the registry ends the session");
        assert!(
            alert.starts_with("received fatal alert: ")
                && (alert.contains("CertificateRequired") || alert.contains("BadCertificate")),
            "{alert}"
        );

        let with_cert = Connection {
            client_certs: vec![hosts::ClientCert {
                cert: certs.client_cert.clone(),
                key: Some(certs.client_key.clone()),
            }],
            ..without_cert
        };
        let client = with_cert.client().unwrap();
        assert_eq!(client.read_alert(&url).await, None);
        // The session stayed open because the certificate was taken.
        let answer = client.http.get(&url).send().await.unwrap();
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        // Only HTTPS is asked.
        let plain = format!("http://{}/v2/", registry.host());
        assert_eq!(client.read_alert(&plain).await, None);
    }

    /// The lazy verifier offers the platform verifier's signature schemes,
    /// before it has loaded anything.
    #[test]
    fn the_lazy_verifier_offers_the_platform_verifiers_schemes() {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCertificates::write(dir.path()).unwrap();
        let ca = certificates_in(&certs.ca, &std::fs::read(&certs.ca).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let platform =
            rustls_platform_verifier::Verifier::new_with_extra_roots(ca.clone(), provider.clone())
                .unwrap();
        let lazy = SystemAndGivenRoots::new(ca, provider);
        assert_eq!(
            lazy.supported_verify_schemes(),
            platform.supported_verify_schemes()
        );
        assert!(lazy.loaded.get().is_none());
    }

    /// A registry the proxy settings exempt (`NO_PROXY`) is reached
    /// directly, so its alert can be read; any other goes through the proxy.
    #[test]
    fn registries_exempt_from_the_proxy_are_not_proxied() {
        let matcher = Matcher::builder()
            .https("http://proxy.example:3128")
            .no("127.0.0.1,.internal.example")
            .build();
        assert!(!proxied(&matcher, "https://127.0.0.1:5443/v2/"));
        assert!(!proxied(
            &matcher,
            "https://registry.internal.example/v2/app/blobs/sha256:00"
        ));
        assert!(proxied(&matcher, "https://registry.example/v2/"));
        // Plain HTTP has no proxy here, and nothing to read an alert from.
        assert!(!proxied(&matcher, "http://registry.example/v2/"));
        assert!(proxied(&matcher, "not a url"));
        let none = Matcher::builder().build();
        assert!(!proxied(&none, "https://registry.example/v2/"));
    }

    /// The issuer is read from a certificate's DER as the CA's name; a
    /// truncated certificate has none (and no panic).
    #[test]
    fn the_issuer_of_a_certificate_is_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCertificates::write(dir.path()).unwrap();
        let (ca, client) = (der_of(&certs.ca), der_of(&certs.client_cert));
        // The CA is self-signed: its issuer is its own name.
        let ca_name = issuer_of(&ca).expect("an issuer");
        assert_eq!(issuer_of(&client), Some(ca_name));
        assert_eq!(ca_name[0], 0x30, "a Name is a SEQUENCE, tag included");
        assert!(
            String::from_utf8_lossy(ca_name).contains("ocidist test CA"),
            "{ca_name:?}"
        );
        for end in 0..client.len() {
            assert_eq!(issuer_of(&client[..end]), None, "{end} bytes");
        }
    }

    #[test]
    fn certificate_times_are_read_as_unix_seconds() {
        let time = |tag: u8, text: &str| {
            der_time(DerElement {
                tag,
                whole: &[],
                contents: text.as_bytes(),
            })
        };
        assert_eq!(time(0x17, "250101000000Z"), Some(1_735_689_600));
        assert_eq!(time(0x18, "20491231235959Z"), Some(2_524_607_999));
        assert_eq!(time(0x18, "20000229123015Z"), Some(951_827_415));
        assert_eq!(
            time(0x17, "690101000000Z"),
            Some(0),
            "1969: before the epoch"
        );
        for bad in [
            "250101000000",
            "2501010000Z",
            "251301000000Z",
            "25010100000aZ",
        ] {
            assert_eq!(time(0x17, bad), None, "{bad}");
        }
        assert_eq!(time(0x18, "250101000000Z"), None, "a UTCTime's length");
        // rcgen's defaults: 1975-01-01 to 4096-01-01.
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCertificates::write(dir.path()).unwrap();
        assert_eq!(
            validity_of(&der_of(&certs.ca)),
            Some((157_766_400, 67_090_118_400))
        );
    }

    /// The certificate presented is the first from a CA the registry
    /// names, any when it names none, and none when none is from a CA it
    /// names (Go's choice).
    #[test]
    fn the_client_certificate_presented_is_chosen_by_the_registrys_cas() {
        let (ours, foreign) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ours = TestCertificates::write(ours.path()).unwrap();
        let foreign = TestCertificates::write(foreign.path()).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let read = |certs: &TestCertificates| {
            let client = hosts::ClientCert {
                cert: certs.client_cert.clone(),
                key: Some(certs.client_key.clone()),
            };
            ClientCertificate::read(&client, &provider).unwrap()
        };
        let ca_name = |certs: &TestCertificates| issuer_of(&der_of(&certs.ca)).unwrap().to_vec();
        let our_leaf = read(&ours).key.cert[0].clone();
        let foreign_leaf = read(&foreign).key.cert[0].clone();
        let chooser = ClientCertificates(vec![read(&foreign), read(&ours)]);
        let schemes = [
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
        ];
        let presented = |cas: &[&[u8]]| chooser.resolve(cas, &schemes).map(|k| k.cert[0].clone());

        assert_eq!(presented(&[&ca_name(&ours)]), Some(our_leaf));
        assert_eq!(
            presented(&[]),
            Some(foreign_leaf),
            "the first, when no CA is named"
        );
        assert_eq!(presented(&[b"\x30\x00"]), None, "none from a named CA");
        // A key that cannot sign as the registry asks is passed over.
        assert!(
            chooser
                .resolve(&[], &[SignatureScheme::RSA_PSS_SHA256])
                .is_none()
        );
    }

    /// A client certificate's DER, made once.
    static CLIENT_DER: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCertificates::write(dir.path()).unwrap();
        der_of(&certs.client_cert).to_vec()
    });

    proptest::proptest! {
        /// A certificate with bytes changed anywhere (lengths, tags) never
        /// makes the DER walk panic or reach outside the bytes it is given.
        #[test]
        fn the_issuer_walk_stays_inside_changed_certificates(
            changes in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..6,
            ),
        ) {
            let mut der = CLIENT_DER.clone();
            for (at, byte) in changes {
                let at = at.index(der.len());
                der[at] = byte;
            }
            if let Some(issuer) = issuer_of(&der) {
                let inside = der.as_ptr_range();
                let found = issuer.as_ptr_range();
                proptest::prop_assert!(inside.start <= found.start && found.end <= inside.end);
            }
        }
    }

    /// A self-signed X.509 version 1 certificate for `localhost` and its
    /// key, as `openssl x509 -req` makes one without extensions (home-made
    /// registry certificates often are such).
    fn version_1_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let (key, request, cert) = (dir.join("v1.key"), dir.join("v1.csr"), dir.join("v1.pem"));
        let path = |p: &std::path::PathBuf| p.to_str().unwrap().to_string();
        for args in [
            vec![
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &path(&key),
            ],
            vec![
                "req",
                "-new",
                "-key",
                &path(&key),
                "-subj",
                "/CN=localhost",
                "-out",
                &path(&request),
            ],
            vec![
                "x509",
                "-req",
                "-in",
                &path(&request),
                "-signkey",
                &path(&key),
                "-days",
                "2",
                "-out",
                &path(&cert),
            ],
        ] {
            let out = std::process::Command::new("openssl")
                .args(&args)
                .output()
                .expect("openssl makes the certificate (apt-get install openssl)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        }
        (cert, key)
    }

    /// `skip_verify` takes a certificate webpki cannot even parse (version
    /// 1), as Go's `InsecureSkipVerify` does; its issuer is read all the same.
    #[tokio::test]
    async fn skip_verify_takes_a_version_1_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = version_1_certificate(dir.path());
        assert!(issuer_of(&der_of(&cert)).is_some());
        let registry = Registry::start_tls(&cert, &key)
            .expect("the registry must start (apt-get install docker-registry)");
        let unchecked = Connection {
            skip_verify: true,
            ..Connection::default()
        };
        let url = format!("https://{}/v2/", registry.host());
        let answer = unchecked.client().unwrap().http.get(&url).send().await;
        assert_eq!(answer.unwrap().status(), reqwest::StatusCode::OK);
    }

    /// `skip_verify` accepts a certificate nobody vouches for; without it,
    /// the same registry is refused (the CA is unknown).
    #[tokio::test]
    async fn skip_verify_accepts_any_certificate_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCertificates::write(dir.path()).unwrap();
        let registry = Registry::start_tls(&certs.server_cert, &certs.server_key)
            .expect("the registry must start (apt-get install docker-registry)");
        let url = format!("https://{}/v2/", registry.host());
        let unchecked = Connection {
            skip_verify: true,
            ..Connection::default()
        };
        let answer = unchecked.client().unwrap().http.get(&url).send().await;
        assert_eq!(answer.unwrap().status(), reqwest::StatusCode::OK);
        let checked = Connection::default().client().unwrap();
        let refused = checked.http.get(&url).send().await.unwrap_err();
        assert!(
            format!("{refused:?}").contains("UnknownIssuer"),
            "{refused:?}"
        );
    }
}
