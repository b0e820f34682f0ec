//! Per-registry host configuration in containerd's layout:
//! `<hosts_dir>/<registry>/hosts.toml`.
//!
//! ```toml
//! server = "https://registry-1.docker.io"     # the upstream (optional)
//!
//! [host."https://mirror.example.com"]         # tried first, in file order
//!   capabilities = ["pull", "resolve"]
//!   ca = "/etc/certs/mirror.pem"              # or a list of files
//!   client = [["/etc/certs/me.cert", "/etc/certs/me.key"]]
//!   skip_verify = false
//!   dial_timeout = "5s"
//!   [host."https://mirror.example.com".header]
//!     x-team = "build"
//! ```
//!
//! The directory for a registry is the first that exists of
//! `<hosts_dir>/<host>_<port>_` (for a registry with a port),
//! `<hosts_dir>/<host:port>` and `<hosts_dir>/_default`, as containerd looks.
//! A directory without a `hosts.toml` (or with an empty one) is read in
//! Docker's `certs.d` layout, so `/etc/docker/certs.d` works as it is:
//! `*.crt` files are CA certificates, and each `*.cert` file is a client
//! certificate whose key is the `*.key` file of the same name (or inside the
//! `.cert` file when there is none).
//!
//! TLS settings (certificates, `skip_verify` either way) for an `http://`
//! host on a port other than 80, written or the upstream taken as plain HTTP
//! (a loopback registry with a port, or plain HTTP asked for everywhere),
//! say it may speak TLS: as containerd tries HTTPS first there and falls
//! back to plain HTTP, the resolver uses HTTPS if the registry speaks it and
//! plain HTTP otherwise. Certificates
//! are checked as the settings say. A host's `skip_verify` wins over the
//! resolver's, either way; `skip_verify = false` alone asks a loopback
//! registry's certificate to be checked if it speaks TLS.
//!
//! `client` is a file holding a certificate and its key, a list of such
//! files, or a list of `[certificate, key]` pairs. A registry that asks for
//! a client certificate gets one chosen as Go chooses: the first whose chain
//! comes from a CA the registry names as acceptable (any, if it names
//! none), or none if no certificate is such.
//! `dial_timeout` is a Go duration (`500ms`, `1m30s`; zero is no limit)
//! bounding how long a connection may take to open; unlike Go's dialer
//! timeout it also covers the TLS handshake.
//!
//! Mirrors are tried in order, then the upstream. As in containerd, a host
//! without `capabilities` may do everything, pushes included (list them for a
//! mirror that must only serve pulls), capability names are read in any case,
//! an upstream that names no `server` may do everything at `/v2` whatever the
//! top level's `capabilities` and `override_path` say,
//! and a host written without a scheme is `https://`. An endpoint's URL may
//! carry a path prefix (`https://mirror/prefix` serves `/prefix/v2/...`), end
//! in `/v2` itself, or set `override_path = true` when it already ends where
//! `/v2` would be.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// What an endpoint may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch blobs and manifests by digest.
    pub pull: bool,
    /// Resolve tags to digests.
    pub resolve: bool,
    /// Push.
    pub push: bool,
}

impl Capabilities {
    /// Everything: what the upstream can do unless told otherwise.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };

    /// Reads `capabilities = [...]`, in any case, as containerd does; an
    /// unknown name is an error rather than a capability silently lost.
    /// `referrers` (containerd 2.2's) is known, and means nothing here: we
    /// do not ask registries for referrers.
    fn parse(names: &[String]) -> std::result::Result<Capabilities, String> {
        let mut out = Capabilities {
            pull: false,
            resolve: false,
            push: false,
        };
        for name in names {
            match name.to_ascii_lowercase().as_str() {
                "pull" => out.pull = true,
                "resolve" => out.resolve = true,
                "push" => out.push = true,
                "referrers" => {}
                _ => {
                    return Err(format!(
                        "unknown capability {name:?} (pull, resolve, push and referrers are known)"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// One place a registry can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `scheme://host[:port][/prefix]`, without a trailing slash.
    pub url: String,
    /// What it may be used for.
    pub capabilities: Capabilities,
    /// Extra CA certificates (PEM files).
    pub ca_files: Vec<PathBuf>,
    /// Client certificates for TLS client authentication, in the order
    /// they are considered.
    pub client_certs: Vec<ClientCert>,
    /// Accept any certificate (`Some(true)`), or verify even when the
    /// resolver is told not to (`Some(false)`); `None` follows the resolver.
    pub skip_verify: Option<bool>,
    /// How long opening a connection may take (the resolver's default when `None`).
    pub dial_timeout: Option<Duration>,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// The URL is the API root itself: do not append `/v2`.
    pub override_path: bool,
    /// The upstream the resolver supplied (no hosts file, or one that names
    /// no `server`): the resolver may still settle how to speak to it (a
    /// loopback registry's HTTPS or plain HTTP). False for a URL written in
    /// a hosts file, which is used as written.
    pub default_upstream: bool,
}

/// A client certificate presented to a registry that asks for one (mutual TLS).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCert {
    /// PEM certificate (and chain); it also holds the private key when `key` is `None`.
    pub cert: PathBuf,
    /// The PEM private key, when it is in a file of its own.
    pub key: Option<PathBuf>,
}

impl Endpoint {
    /// The resolver's default upstream, with default settings.
    pub fn upstream(url: String) -> Self {
        Endpoint {
            default_upstream: true,
            ..Endpoint::new(url)
        }
    }

    /// An endpoint at `url` as a hosts file writes it (a mirror, or a
    /// `server`), with default settings: it may do everything, as a host
    /// without `capabilities` in `hosts.toml`; set
    /// [`capabilities`](Self::capabilities) for a mirror that only serves
    /// pulls. The URL is read as a hosts file's: `https://` when it names
    /// no scheme, a trailing `/` dropped.
    pub fn new(url: impl Into<String>) -> Self {
        Endpoint {
            url: endpoint_url(&url.into()),
            capabilities: Capabilities::ALL,
            ca_files: Vec::new(),
            client_certs: Vec::new(),
            skip_verify: None,
            dial_timeout: None,
            headers: Vec::new(),
            override_path: false,
            default_upstream: false,
        }
    }

    /// True for an `http://` URL on a port other than 80 with TLS settings
    /// (CA files, a client certificate, `skip_verify` either way), its own
    /// or the resolver's (`resolver_tls`): containerd tries HTTPS there
    /// first, then plain HTTP.
    pub(crate) fn wants_tls_over_http(&self, resolver_tls: bool) -> bool {
        // `skip_verify` written either way says TLS, as containerd reads it.
        let tls = resolver_tls
            || !self.ca_files.is_empty()
            || !self.client_certs.is_empty()
            || self.skip_verify.is_some();
        let port_80 = self
            .host()
            .rsplit_once(':')
            .is_some_and(|(_, port)| port == "80");
        tls && !port_80 && self.url.starts_with("http://")
    }

    /// True when the endpoint asks for a connection of its own: CA files, a
    /// client certificate, no verification or a dial timeout.
    pub(crate) fn has_connection_settings(&self) -> bool {
        !self.ca_files.is_empty()
            || !self.client_certs.is_empty()
            || self.skip_verify.is_some()
            || self.dial_timeout.is_some()
    }

    /// The API root: `<url>/v2`, or `<url>` with `override_path` or when the
    /// URL already ends in `/v2`.
    pub fn api_root(&self) -> String {
        if self.override_path || self.url.ends_with("/v2") {
            self.url.clone()
        } else {
            format!("{}/v2", self.url)
        }
    }

    /// `host[:port]` of the URL (where credentials and tokens belong).
    pub fn host(&self) -> &str {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest)
    }
}

#[derive(Debug, Default, Deserialize)]
struct File {
    server: Option<String>,
    #[serde(flatten)]
    settings: HostEntry,
    #[serde(default)]
    host: toml::Table,
}

/// What the top level (for the upstream) and each `[host."…"]` may set.
#[derive(Debug, Default, Deserialize)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<ClientField>,
    skip_verify: Option<bool>,
    dial_timeout: Option<String>,
    #[serde(default)]
    header: toml::Table,
    #[serde(default)]
    override_path: bool,
}

impl HostEntry {
    /// The endpoint at `url` (as written) configured by this entry; paths
    /// are relative to `base`.
    fn endpoint(self, url: &str, base: &Path) -> std::result::Result<Endpoint, String> {
        let capabilities = match self.capabilities.as_deref() {
            // containerd's default, for host entries and the upstream alike;
            // an empty list is no list there too.
            None => Capabilities::ALL,
            Some([]) => Capabilities::ALL,
            Some(names) => Capabilities::parse(names)?,
        };
        let dial_timeout = self
            .dial_timeout
            .as_deref()
            .map(|d| parse_go_duration(d).map_err(|e| format!("dial_timeout {d:?}: {e}")))
            .transpose()?
            // Zero is no limit, as for Go's dialer.
            .filter(|d| !d.is_zero());
        Ok(Endpoint {
            url: endpoint_url(url),
            capabilities,
            ca_files: self.ca.map(|c| c.paths(base)).unwrap_or_default(),
            client_certs: match self.client {
                Some(client) => client.certs(base)?,
                None => Vec::new(),
            },
            skip_verify: self.skip_verify,
            dial_timeout,
            headers: headers(self.header)?,
            override_path: self.override_path,
            default_upstream: false,
        })
    }
}

/// `client = "both.pem"`, `["a.pem", "b.pem"]` or `[["a.cert", "a.key"]]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientField {
    One(String),
    Many(Vec<OneOrMany>),
}

impl ClientField {
    fn certs(self, base: &Path) -> std::result::Result<Vec<ClientCert>, String> {
        let items = match self {
            ClientField::One(one) => vec![OneOrMany::One(one)],
            ClientField::Many(many) => many,
        };
        items
            .into_iter()
            .map(|item| match item {
                OneOrMany::One(both) => Ok(ClientCert {
                    cert: base.join(both),
                    key: None,
                }),
                OneOrMany::Many(pair) => match <[String; 2]>::try_from(pair) {
                    // An empty key: the key is in the certificate's file,
                    // as containerd reads `["client.pem", ""]`.
                    Ok([cert, key]) => Ok(ClientCert {
                        cert: base.join(cert),
                        key: (!key.is_empty()).then(|| base.join(key)),
                    }),
                    Err(pair) => Err(format!("client: {pair:?} is not a [certificate, key] pair")),
                },
            })
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn paths(self, base: &Path) -> Vec<PathBuf> {
        let list = match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        };
        // Relative paths are relative to the hosts.toml's directory, as containerd does.
        list.into_iter().map(|p| base.join(p)).collect()
    }
}

/// Header values may be a string or a list of strings; anything else, or a
/// name or value HTTP cannot carry, is the file's error (containerd refuses
/// such a file too, instead of sending requests without the header).
fn headers(table: toml::Table) -> std::result::Result<Vec<(String, String)>, String> {
    use reqwest::header::{HeaderName, HeaderValue};
    let mut out = Vec::new();
    for (name, value) in table {
        let values = match value {
            toml::Value::Array(values) => values,
            one => vec![one],
        };
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("header {name:?}: not a valid HTTP header name"));
        }
        for value in values {
            match value {
                toml::Value::String(v) if HeaderValue::from_str(&v).is_ok() => {
                    out.push((name.clone(), v))
                }
                toml::Value::String(v) => {
                    return Err(format!(
                        "header {name:?}: {v:?} is not a valid HTTP header value"
                    ));
                }
                other => {
                    return Err(format!(
                        "header {name:?}: a value of type {} is not a string or a list of strings",
                        other.type_str()
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Reads the endpoints for `registry` (`docker.io`, `localhost:5000`) from
/// `hosts_dir`, ending with the upstream; `default_upstream` is used when the
/// file names no `server` (or there is no file). A directory in Docker's
/// `certs.d` layout configures the upstream's TLS.
pub fn endpoints(
    hosts_dir: &Path,
    registry: &str,
    default_upstream: &str,
) -> Result<Vec<Endpoint>> {
    let Some(dir) = host_dir(hosts_dir, registry)? else {
        return Ok(vec![Endpoint::upstream(default_upstream.to_string())]);
    };
    let path = dir.join("hosts.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ocidist_content::Error::io("read", &path, e).into()),
    };
    if text.trim().is_empty() {
        return cert_files(&dir, default_upstream);
    }
    parse(&text, &dir, default_upstream).map_err(|reason| Error::Protocol {
        url: path.display().to_string(),
        reason,
    })
}

/// The first directory that exists for `registry`: `<host>_<port>_` (the
/// form that is also a valid Windows file name), `<host:port>`, `_default`.
fn host_dir(hosts_dir: &Path, registry: &str) -> Result<Option<PathBuf>> {
    let mut candidates = Vec::new();
    if let Some((host, port)) = registry.rsplit_once(':')
        && !host.is_empty()
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        candidates.push(hosts_dir.join(format!("{host}_{port}_")));
    }
    candidates.push(hosts_dir.join(registry));
    candidates.push(hosts_dir.join("_default"));
    for candidate in candidates {
        match std::fs::metadata(&candidate) {
            Ok(_) => return Ok(Some(candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Unreadable is not absent: falling through to `_default` would
            // use another registry's settings in silence.
            Err(e) => return Err(ocidist_content::Error::io("stat", &candidate, e).into()),
        }
    }
    Ok(None)
}

/// The upstream configured by Docker's `certs.d` files in `dir`: `*.crt`
/// are CAs, `*.cert` client certificates with keys in `*.key` beside them.
fn cert_files(dir: &Path, default_upstream: &str) -> Result<Vec<Endpoint>> {
    let read_error = |e| ocidist_content::Error::io("read directory", dir, e);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        if !entry.file_type().map_err(read_error)?.is_dir() {
            names.push(entry.file_name());
        }
    }
    // In name order, as Docker and containerd read them.
    names.sort();
    let mut upstream = Endpoint::upstream(default_upstream.to_string());
    for name in names {
        let path = dir.join(&name);
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => upstream.ca_files.push(path),
            Some("cert") => {
                let key = path.with_extension("key");
                upstream.client_certs.push(ClientCert {
                    key: key.is_file().then_some(key),
                    cert: path,
                });
            }
            _ => {}
        }
    }
    Ok(vec![upstream])
}

/// Parses a `hosts.toml`; relative CA and client paths are taken from `base`.
pub fn parse(
    text: &str,
    base: &Path,
    default_upstream: &str,
) -> std::result::Result<Vec<Endpoint>, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (url, entry) in file.host {
        let entry: HostEntry = entry
            .try_into()
            .map_err(|e: toml::de::Error| format!("host {url:?}: {e}"))?;
        out.push(
            entry
                .endpoint(&url, base)
                .map_err(|e| format!("host {url:?}: {e}"))?,
        );
    }
    let written = file.server.is_some();
    let server = file.server.unwrap_or_else(|| default_upstream.to_string());
    let mut upstream = file.settings.endpoint(&server, base)?;
    if !written {
        // The registry itself, reached as the resolver reaches it: as in
        // containerd, which fills in such an upstream with every capability
        // and the `/v2` path, whatever the file's top level says of them
        // (its certificates, headers and timeouts still count).
        upstream.capabilities = Capabilities::ALL;
        upstream.override_path = false;
        upstream.default_upstream = true;
    }
    out.push(upstream);
    Ok(out)
}

/// A Go duration as containerd reads `dial_timeout`: numbers with units
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), as in `300ms` or `1m30s`.
fn parse_go_duration(text: &str) -> std::result::Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = text;
    let mut seconds = 0.0_f64;
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("a number without a unit")?;
        let number: f64 = rest[..number_end]
            .parse()
            .map_err(|_| "expected a number".to_string())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("unknown unit {unit:?}")),
        };
        seconds += number * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

/// A host or server as written, with `https://` when it names no scheme
/// (containerd's default) and no trailing slash.
pub(crate) fn endpoint_url(written: &str) -> String {
    let url = written.trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn referrers_and_an_empty_list_are_capabilities_containerd_takes() {
        let base = Path::new("/etc/containerd/certs.d/r");
        let with_referrers = parse(
            "[host.\"https://m\"]\ncapabilities = [\"pull\", \"resolve\", \"referrers\"]\n",
            base,
            "https://r",
        )
        .unwrap();
        assert_eq!(
            with_referrers[0].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        let empty = parse(
            "server = \"https://x\"\ncapabilities = []\n",
            base,
            "https://r",
        )
        .unwrap();
        assert_eq!(empty[0].capabilities, Capabilities::ALL);
        assert!(parse("capabilities = [\"fly\"]\n", base, "https://r").is_err());
    }

    #[test]
    fn headers_that_are_not_strings_or_not_http_are_the_files_error() {
        let base = Path::new("/etc/hosts.d/r");
        for (header, says) in [
            ("x-n = 5", "x-n\": a value of type integer is not a string"),
            ("x-list = [\"a\", 2]", "x-list\": a value of type integer"),
            ("x-t = { a = \"b\" }", "x-t\": a value of type table"),
            ("\"x y\" = \"v\"", "\"x y\": not a valid HTTP header name"),
            (
                "x-nl = \"a\\nb\"",
                "\"a\\nb\" is not a valid HTTP header value",
            ),
        ] {
            let text = format!("server = \"https://r\"\n[header]\n{header}\n");
            let err = parse(&text, base, "https://r").unwrap_err();
            assert!(err.contains(says), "{header}: {err}");
        }
        let fine = parse(
            "server = \"https://r\"\n[header]\nx-a = \"1\"\nx-b = []\n",
            base,
            "https://r",
        )
        .unwrap();
        assert_eq!(fine[0].headers, vec![("x-a".into(), "1".into())]);
    }

    use super::*;

    #[test]
    fn mirrors_in_file_order_then_the_upstream() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."https://z-mirror.example.com"]
  capabilities = ["pull", "resolve"]
  ca = "certs/mirror.pem"
  [host."https://z-mirror.example.com".header]
    x-team = "build"
    x-list = ["a", "b"]

[host."http://a-mirror.local:5000/prefix/"]
  capabilities = ["pull"]
  skip_verify = true
"#;
        let eps = parse(
            text,
            Path::new("/etc/hosts.d/docker.io"),
            "https://docker.io",
        )
        .unwrap();
        let urls: Vec<&str> = eps.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "https://z-mirror.example.com",
                "http://a-mirror.local:5000/prefix",
                "https://registry-1.docker.io"
            ]
        );
        assert_eq!(
            eps[0].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        assert_eq!(
            eps[0].ca_files,
            vec![PathBuf::from("/etc/hosts.d/docker.io/certs/mirror.pem")]
        );
        assert_eq!(
            eps[0].headers,
            vec![
                ("x-team".into(), "build".into()),
                ("x-list".into(), "a".into()),
                ("x-list".into(), "b".into())
            ]
        );
        assert_eq!(
            eps[1].capabilities,
            Capabilities {
                pull: true,
                resolve: false,
                push: false
            }
        );
        assert_eq!(eps[1].skip_verify, Some(true));
        assert_eq!(eps[0].skip_verify, None);
        assert_eq!(eps[1].host(), "a-mirror.local:5000");
        assert_eq!(eps[1].api_root(), "http://a-mirror.local:5000/prefix/v2");
        assert_eq!(eps[2].capabilities, Capabilities::ALL);
        assert!(eps.iter().all(|e| !e.default_upstream), "all written");
    }

    /// containerd's reading of what its users write: no scheme means https,
    /// a URL ending in `/v2` is the API root, capabilities in any case (an
    /// unknown one is an error), every capability when none are listed, and
    /// `override_path` at the top level.
    #[test]
    fn hosts_files_read_as_containerd_reads_them() {
        let text = r#"
server = "registry.example.com/v2"

[host."mirror.example.com:5000"]

[host."http://cache.local/v2/"]
  capabilities = ["Pull", "RESOLVE"]
"#;
        let eps = parse(text, Path::new("/h"), "https://docker.io").unwrap();
        let roots: Vec<String> = eps.iter().map(Endpoint::api_root).collect();
        assert_eq!(
            roots,
            [
                "https://mirror.example.com:5000/v2",
                "http://cache.local/v2",
                "https://registry.example.com/v2"
            ]
        );
        assert_eq!(eps[0].capabilities, Capabilities::ALL);
        assert_eq!(
            eps[1].capabilities,
            Capabilities {
                pull: true,
                resolve: true,
                push: false
            }
        );
        let err = parse(
            "[host.\"https://m\"]\n  capabilities = [\"pul\"]\n",
            Path::new("/h"),
            "https://docker.io",
        )
        .unwrap_err();
        assert!(err.contains("unknown capability \"pul\""), "{err}");
        let eps = parse(
            "server = \"https://proxy.example.com/api\"\noverride_path = true\n",
            Path::new("/h"),
            "https://docker.io",
        )
        .unwrap();
        assert_eq!(eps[0].api_root(), "https://proxy.example.com/api");
    }

    /// containerd's three forms of `client` (a pair's empty key: the key is
    /// in the certificate's file), and `dial_timeout` as a Go duration.
    #[test]
    fn client_certificates_and_dial_timeouts() {
        let text = r#"
client = "both.pem"
dial_timeout = "1m30s"

[host."https://a"]
  client = ["/abs/one.pem", "two.pem"]
  dial_timeout = "250ms"

[host."https://b"]
  client = [["b.cert", "b.key"], ["b.pem", ""]]
"#;
        let eps = parse(text, Path::new("/h"), "https://up").unwrap();
        let cert = |c: &str, k: Option<&str>| ClientCert {
            cert: PathBuf::from(c),
            key: k.map(PathBuf::from),
        };
        assert_eq!(
            eps[0].client_certs,
            [cert("/abs/one.pem", None), cert("/h/two.pem", None)]
        );
        assert_eq!(eps[0].dial_timeout, Some(Duration::from_millis(250)));
        // An empty key: in the certificate's file.
        assert_eq!(
            eps[1].client_certs,
            [cert("/h/b.cert", Some("/h/b.key")), cert("/h/b.pem", None)]
        );
        assert_eq!(eps[1].dial_timeout, None);
        assert!(eps[1].has_connection_settings());
        assert_eq!(eps[2].url, "https://up");
        assert_eq!(eps[2].client_certs, [cert("/h/both.pem", None)]);
        assert_eq!(eps[2].dial_timeout, Some(Duration::from_secs(90)));

        let err = parse(
            "[host.\"https://a\"]\n  client = [[\"a\", \"b\", \"c\"]]\n",
            Path::new("/h"),
            "https://up",
        )
        .unwrap_err();
        assert!(err.contains("not a [certificate, key] pair"), "{err}");
        let err = parse("dial_timeout = \"5\"\n", Path::new("/h"), "https://up").unwrap_err();
        assert!(err.contains("dial_timeout \"5\""), "{err}");
        // Zero is no limit, as in Go.
        let eps = parse("dial_timeout = \"0s\"\n", Path::new("/h"), "https://up").unwrap();
        assert_eq!(eps[0].dial_timeout, None);
    }

    /// An upstream taken as plain HTTP by default, given certificates or
    /// `skip_verify`, is left for the resolver to settle (HTTPS if the
    /// registry speaks it), as a written `http://` host with them is; on
    /// port 80 such settings say nothing.
    #[test]
    fn certificates_for_an_http_upstream_ask_for_tls_if_it_speaks_it() {
        let base = Path::new("/h");
        for text in [
            "ca = \"ca.pem\"\n",
            "skip_verify = true\n",
            "skip_verify = false\n",
        ] {
            let eps = parse(text, base, "http://localhost:5000").unwrap();
            assert_eq!(eps[0].url, "http://localhost:5000", "{text}");
            assert!(eps[0].default_upstream, "no server written");
            assert!(eps[0].wants_tls_over_http(false), "{text}");
            let eps = parse(text, base, "http://localhost:80").unwrap();
            assert!(!eps[0].wants_tls_over_http(false), "{text} on port 80");
        }
        let eps = parse(
            "server = \"http://localhost:5000\"\nca = \"ca.pem\"\n",
            base,
            "http://localhost:5000",
        )
        .unwrap();
        assert!(eps[0].wants_tls_over_http(false));
        assert!(
            !eps[0].default_upstream,
            "a server written is used as written"
        );
        let plain = parse("", base, "http://localhost:5000").unwrap();
        assert!(!plain[0].wants_tls_over_http(false));
        assert!(
            plain[0].wants_tls_over_http(true),
            "the resolver's TLS settings count too"
        );
    }

    /// containerd fills in an upstream that names no `server` with every
    /// capability at `/v2`: a top level's `capabilities` and `override_path`
    /// hold only for a `server` written.
    #[test]
    fn an_upstream_without_a_server_may_do_everything_at_v2() {
        let base = Path::new("/h");
        let text = "capabilities = [\"pull\"]\noverride_path = true\n";
        let eps = parse(text, base, "https://r").unwrap();
        assert_eq!(eps[0].capabilities, Capabilities::ALL);
        assert_eq!(eps[0].api_root(), "https://r/v2");
        let written = format!("server = \"https://r/api\"\n{text}");
        let eps = parse(&written, base, "https://r").unwrap();
        assert_eq!(
            eps[0].capabilities,
            Capabilities::parse(&["pull".into()]).unwrap()
        );
        assert_eq!(eps[0].api_root(), "https://r/api");
    }

    #[test]
    fn go_durations() {
        for (text, want) in [
            ("0", Duration::ZERO),
            ("300ms", Duration::from_millis(300)),
            ("1.5s", Duration::from_millis(1500)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("10us", Duration::from_micros(10)),
            ("7µs", Duration::from_micros(7)),
        ] {
            assert_eq!(parse_go_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "5", "-1s", "1d", "s", "1..2s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} must not parse");
        }
    }

    /// A directory without a `hosts.toml` is Docker's `certs.d`: CAs and
    /// client pairs for the upstream, which speaks TLS. `host_port_` is looked at before
    /// `host:port`, and an existing directory wins over `_default` even
    /// without a `hosts.toml`.
    #[test]
    fn docker_certs_directories() {
        let hosts = tempfile::tempdir().unwrap();
        let dir = hosts.path().join("reg.example:5000");
        std::fs::create_dir_all(dir.join("sub.crt")).unwrap();
        for name in ["b.crt", "a.crt", "me.cert", "me.key", "solo.cert", "README"] {
            std::fs::write(dir.join(name), "").unwrap();
        }
        std::fs::create_dir_all(hosts.path().join("_default")).unwrap();
        std::fs::write(
            hosts.path().join("_default/hosts.toml"),
            "server = \"https://elsewhere\"",
        )
        .unwrap();
        let eps = endpoints(hosts.path(), "reg.example:5000", "http://reg.example:5000").unwrap();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].url, "http://reg.example:5000");
        assert!(
            eps[0].wants_tls_over_http(false),
            "certificates ask for TLS if it speaks it"
        );
        assert_eq!(eps[0].ca_files, [dir.join("a.crt"), dir.join("b.crt")]);
        assert_eq!(
            eps[0].client_certs,
            [
                ClientCert {
                    cert: dir.join("me.cert"),
                    key: Some(dir.join("me.key"))
                },
                ClientCert {
                    cert: dir.join("solo.cert"),
                    key: None
                }
            ]
        );

        // An empty hosts.toml is no configuration either.
        std::fs::write(dir.join("hosts.toml"), "\n").unwrap();
        let eps = endpoints(hosts.path(), "reg.example:5000", "https://x").unwrap();
        assert_eq!(eps[0].ca_files.len(), 2);

        let windows_form = hosts.path().join("reg.example_5000_");
        std::fs::create_dir_all(&windows_form).unwrap();
        std::fs::write(
            windows_form.join("hosts.toml"),
            "server = \"https://first\"",
        )
        .unwrap();
        let eps = endpoints(hosts.path(), "reg.example:5000", "https://x").unwrap();
        assert_eq!(eps[0].url, "https://first");

        let eps = endpoints(hosts.path(), "other.example", "https://other.example").unwrap();
        assert_eq!(eps[0].url, "https://elsewhere");

        // A file where a registry's directory belongs is an error, not
        // `_default` in silence (as containerd fails on it).
        std::fs::write(hosts.path().join("odd.example"), "").unwrap();
        let err = endpoints(hosts.path(), "odd.example", "https://odd.example").unwrap_err();
        assert!(err.to_string().contains("odd.example"), "{err}");
    }

    #[test]
    fn no_file_means_the_default_upstream_and_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let eps = endpoints(dir.path(), "ghcr.io", "https://ghcr.io").unwrap();
        assert_eq!(eps, vec![Endpoint::upstream("https://ghcr.io".into())]);
        assert_eq!(
            Endpoint::new("mirror.example:5000/prefix/").url,
            "https://mirror.example:5000/prefix",
            "read as a hosts file writes it"
        );
        std::fs::create_dir_all(dir.path().join("ghcr.io")).unwrap();
        std::fs::write(dir.path().join("ghcr.io/hosts.toml"), "server = [").unwrap();
        let err = endpoints(dir.path(), "ghcr.io", "https://ghcr.io").unwrap_err();
        assert!(err.to_string().contains("hosts.toml"), "{err}");
        std::fs::create_dir_all(dir.path().join("_default")).unwrap();
        std::fs::write(
            dir.path().join("_default/hosts.toml"),
            "server = \"http://fallback:5000\"",
        )
        .unwrap();
        let eps = endpoints(dir.path(), "quay.io", "https://quay.io").unwrap();
        assert_eq!(eps[0].url, "http://fallback:5000");
    }
}
