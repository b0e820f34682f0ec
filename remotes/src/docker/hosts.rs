//! Per-registry host configuration in containerd's layout:
//! `<hosts_dir>/<registry>/hosts.toml` (or `<hosts_dir>/_default/hosts.toml`).
//!
//! ```toml
//! server = "https://registry-1.docker.io"     # the upstream (optional)
//!
//! [host."https://mirror.example.com"]         # tried first, in file order
//!   capabilities = ["pull", "resolve"]
//!   ca = "/etc/certs/mirror.pem"              # or a list of files
//!   skip_verify = false
//!   [host."https://mirror.example.com".header]
//!     x-team = "build"
//! ```
//!
//! Mirrors are tried in order, then the upstream. An endpoint's URL may carry a
//! path prefix (`https://mirror/prefix` serves `/prefix/v2/...`), or set
//! `override_path = true` when the URL already ends where `/v2` would be.

use std::path::{Path, PathBuf};

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

    fn parse(names: &[String]) -> Capabilities {
        let has = |n: &str| names.iter().any(|c| c == n);
        Capabilities {
            pull: has("pull"),
            resolve: has("resolve"),
            push: has("push"),
        }
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
    /// Accept any certificate.
    pub skip_verify: bool,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// The URL is the API root itself: do not append `/v2`.
    pub override_path: bool,
}

impl Endpoint {
    /// The upstream with default settings.
    pub fn upstream(url: String) -> Self {
        Endpoint {
            url,
            capabilities: Capabilities::ALL,
            ca_files: Vec::new(),
            skip_verify: false,
            headers: Vec::new(),
            override_path: false,
        }
    }

    /// The API root: `<url>/v2` (or `<url>` with `override_path`).
    pub fn api_root(&self) -> String {
        if self.override_path {
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
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    skip_verify: Option<bool>,
    #[serde(default)]
    header: toml::Table,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    skip_verify: Option<bool>,
    #[serde(default)]
    header: toml::Table,
    #[serde(default)]
    override_path: bool,
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

/// Header values may be a string or a list of strings.
fn headers(table: toml::Table) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in table {
        match value {
            toml::Value::String(v) => out.push((name, v)),
            toml::Value::Array(values) => out.extend(
                values
                    .into_iter()
                    .filter_map(|v| v.as_str().map(|s| (name.clone(), s.to_string()))),
            ),
            _ => {}
        }
    }
    out
}

/// Reads the endpoints for `registry` (`docker.io`, `localhost:5000`) from
/// `hosts_dir`, ending with the upstream; `default_upstream` is used when the
/// file names no `server` (or there is no file).
pub fn endpoints(
    hosts_dir: &Path,
    registry: &str,
    default_upstream: &str,
) -> Result<Vec<Endpoint>> {
    let dir = [hosts_dir.join(registry), hosts_dir.join("_default")]
        .into_iter()
        .find(|d| d.join("hosts.toml").is_file());
    let Some(dir) = dir else {
        return Ok(vec![Endpoint::upstream(default_upstream.to_string())]);
    };
    let path = dir.join("hosts.toml");
    let text =
        std::fs::read_to_string(&path).map_err(|e| ocidist_content::Error::io("read", &path, e))?;
    parse(&text, &dir, default_upstream).map_err(|reason| Error::Protocol {
        url: path.display().to_string(),
        reason,
    })
}

/// Parses a `hosts.toml`; relative CA paths are taken from `base`.
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
        out.push(Endpoint {
            url: url.trim_end_matches('/').to_string(),
            capabilities: entry.capabilities.as_deref().map_or(
                Capabilities {
                    pull: true,
                    resolve: true,
                    push: false,
                },
                Capabilities::parse,
            ),
            ca_files: entry.ca.map(|c| c.paths(base)).unwrap_or_default(),
            skip_verify: entry.skip_verify.unwrap_or(false),
            headers: headers(entry.header),
            override_path: entry.override_path,
        });
    }
    let server = file.server.unwrap_or_else(|| default_upstream.to_string());
    out.push(Endpoint {
        url: server.trim_end_matches('/').to_string(),
        capabilities: file
            .capabilities
            .as_deref()
            .map_or(Capabilities::ALL, Capabilities::parse),
        ca_files: file.ca.map(|c| c.paths(base)).unwrap_or_default(),
        skip_verify: file.skip_verify.unwrap_or(false),
        headers: headers(file.header),
        override_path: false,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        assert!(eps[1].skip_verify);
        assert_eq!(eps[1].host(), "a-mirror.local:5000");
        assert_eq!(eps[1].api_root(), "http://a-mirror.local:5000/prefix/v2");
        assert_eq!(eps[2].capabilities, Capabilities::ALL);
    }

    #[test]
    fn no_file_means_the_default_upstream_and_a_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let eps = endpoints(dir.path(), "ghcr.io", "https://ghcr.io").unwrap();
        assert_eq!(eps, vec![Endpoint::upstream("https://ghcr.io".into())]);
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
