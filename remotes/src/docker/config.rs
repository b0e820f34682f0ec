//! Credentials from Docker's `config.json`: `auths` entries, and credential
//! helpers (`credHelpers` per host, `credsStore` for the rest) run as
//! `docker-credential-<name> get`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::auth::{Credential, Credentials};

/// The parts of `config.json` that hold credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// [`Credentials`] from a Docker `config.json`.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    config: ConfigFile,
    /// Where to look for `docker-credential-*` helpers; `None`: `PATH`.
    helper_dir: Option<PathBuf>,
}

/// Docker Hub's key in `config.json`.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

impl DockerConfig {
    /// Loads `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; a
    /// missing file is an empty configuration.
    pub fn load_default() -> std::io::Result<Self> {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        match dir {
            Some(dir) => Self::load(&dir.join("config.json")),
            None => Ok(Self::default()),
        }
    }

    /// Loads the configuration at `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", path.display()),
            )),
        }
    }

    /// Parses `config.json` content.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(DockerConfig {
            config: serde_json::from_slice(bytes)?,
            helper_dir: None,
        })
    }

    /// Looks for credential helpers in `dir` instead of on `PATH`.
    pub fn helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    fn lookup_auths(&self, host: &str) -> Option<Credential> {
        let keys = [
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
            format!("https://{host}/v1/"),
            format!("https://{host}/v2/"),
        ];
        let entry = keys
            .iter()
            .find_map(|k| self.config.auths.get(k))
            .or_else(|| {
                is_docker_hub(host)
                    .then(|| self.config.auths.get(DOCKER_HUB_KEY))
                    .flatten()
            })?;
        if let Some(token) = &entry.identitytoken {
            return Some(Credential {
                username: String::new(),
                secret: token.clone(),
            });
        }
        if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
            return Some(Credential {
                username: username.clone(),
                secret: password.clone(),
            });
        }
        let decoded = decode_base64(entry.auth.as_deref()?)?;
        let (username, secret) = String::from_utf8(decoded)
            .ok()?
            .split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string()))?;
        Some(Credential { username, secret })
    }

    fn run_helper(&self, helper: &str, host: &str) -> Option<Credential> {
        let program = format!("docker-credential-{helper}");
        let program = match &self.helper_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let server = if is_docker_hub(host) {
            DOCKER_HUB_KEY.to_string()
        } else {
            host.to_string()
        };
        let mut child = Command::new(program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(server.as_bytes()).ok()?;
        let output = child.wait_with_output().ok()?;
        if !output.status.success() {
            return None;
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct HelperOutput {
            username: String,
            secret: String,
        }
        let parsed: HelperOutput = serde_json::from_slice(&output.stdout).ok()?;
        // Docker's convention: the user name `<token>` means an identity token.
        let username = if parsed.username == "<token>" {
            String::new()
        } else {
            parsed.username
        };
        Some(Credential {
            username,
            secret: parsed.secret,
        })
    }
}

impl Credentials for DockerConfig {
    fn get(&self, host: &str) -> Option<Credential> {
        if let Some(helper) = self.config.cred_helpers.get(host) {
            return self.run_helper(helper, host);
        }
        self.lookup_auths(host).or_else(|| {
            self.config
                .creds_store
                .as_deref()
                .and_then(|store| self.run_helper(store, host))
        })
    }
}

fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "registry-1.docker.io" | "index.docker.io"
    )
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b'=' && !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_entries_in_every_spelling() {
        let config = DockerConfig::parse(
            br#"{"auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
                "localhost:5000": {"username": "u", "password": "p"},
                "https://ghcr.io": {"auth": "Z2g6dG9rZW46d2l0aDpjb2xvbnM="},
                "quay.io": {"identitytoken": "idtok"}
            }}"#,
        )
        .unwrap();
        let get = |h: &str| config.get(h).map(|c| (c.username, c.secret));
        assert_eq!(get("docker.io"), Some(("hub".into(), "hubpass".into())));
        assert_eq!(
            get("registry-1.docker.io"),
            Some(("hub".into(), "hubpass".into()))
        );
        assert_eq!(get("localhost:5000"), Some(("u".into(), "p".into())));
        assert_eq!(
            get("ghcr.io"),
            Some(("gh".into(), "token:with:colons".into()))
        );
        assert_eq!(get("quay.io"), Some((String::new(), "idtok".into())));
        assert_eq!(get("example.com"), None);
    }

    #[test]
    fn credential_helpers_are_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let helper = dir.path().join("docker-credential-fake");
        std::fs::write(
            &helper,
            "#!/bin/sh\nread server\ncase \"$server\" in\n  registry.example) echo '{\"ServerURL\":\"x\",\"Username\":\"alice\",\"Secret\":\"from-helper\"}' ;;\n  *) echo 'credentials not found' >&2; exit 1 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = DockerConfig::parse(
            br#"{"credsStore": "fake", "credHelpers": {"other.example": "missing"}}"#,
        )
        .unwrap()
        .helper_dir(dir.path());
        let c = config.get("registry.example").unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.as_str()),
            ("alice", "from-helper")
        );
        assert!(
            config.get("unknown.example").is_none(),
            "the helper says not found"
        );
        assert!(
            config.get("other.example").is_none(),
            "a missing helper gives nothing"
        );
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            DockerConfig::load(&dir.path().join("none.json"))
                .unwrap()
                .get("x")
                .is_none()
        );
        std::fs::write(dir.path().join("bad.json"), b"{").unwrap();
        let err = DockerConfig::load(&dir.path().join("bad.json")).unwrap_err();
        assert!(err.to_string().contains("bad.json"), "{err}");
    }
}
