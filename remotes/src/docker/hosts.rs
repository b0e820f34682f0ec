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
//! Mirrors are tried in order, then the upstream. As in containerd, a host
//! without `capabilities` may do everything, pushes included (list them for a
//! mirror that must only serve pulls), capability names are read in any case,
//! and a host written without a scheme is `https://`. An endpoint's URL may
//! carry a path prefix (`https://mirror/prefix` serves `/prefix/v2/...`), end
//! in `/v2` itself, or set `override_path = true` when it already ends where
//! `/v2` would be.

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

    /// Reads `capabilities = [...]`, in any case, as containerd does; an
    /// unknown name is an error rather than a capability silently lost.
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
                _ => {
                    return Err(format!(
                        "unknown capability {name:?} (pull, resolve and push are known)"
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
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    override_path: bool,
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
        let capabilities = match entry.capabilities.as_deref() {
            // containerd's default for a host entry too.
            None => Capabilities::ALL,
            Some(names) => Capabilities::parse(names).map_err(|e| format!("host {url:?}: {e}"))?,
        };
        out.push(Endpoint {
            url: endpoint_url(&url),
            capabilities,
            ca_files: entry.ca.map(|c| c.paths(base)).unwrap_or_default(),
            skip_verify: entry.skip_verify.unwrap_or(false),
            headers: headers(entry.header),
            override_path: entry.override_path,
        });
    }
    let server = file.server.unwrap_or_else(|| default_upstream.to_string());
    let capabilities = match file.capabilities.as_deref() {
        None => Capabilities::ALL,
        Some(names) => Capabilities::parse(names)?,
    };
    out.push(Endpoint {
        url: endpoint_url(&server),
        capabilities,
        ca_files: file.ca.map(|c| c.paths(base)).unwrap_or_default(),
        skip_verify: file.skip_verify.unwrap_or(false),
        headers: headers(file.header),
        override_path: file.override_path,
    });
    Ok(out)
}

/// A host or server as written, with `https://` when it names no scheme
/// (containerd's default) and no trailing slash.
fn endpoint_url(written: &str) -> String {
    let url = written.trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    }
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
