//! Credentials from Docker's `config.json`: `auths` entries, and credential
//! helpers (`credHelpers` per host, `credsStore` for the rest) run as
//! `docker-credential-<name> get`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
#[derive(Debug, Clone)]
pub struct DockerConfig {
    config: ConfigFile,
    /// Where to look for `docker-credential-*` helpers; `None`: `PATH`.
    helper_dir: Option<PathBuf>,
    /// How long a helper may take before it is killed.
    helper_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            config: ConfigFile::default(),
            helper_dir: None,
            helper_timeout: HELPER_TIMEOUT,
        }
    }
}

/// By default, a credential helper that has not answered in this long is
/// killed (and gives no credential): long enough for a cloud login, not
/// forever.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// A helper's answer is a small JSON object; more than this is not read.
const HELPER_OUTPUT_LIMIT: u64 = 64 << 10;

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
            ..Self::default()
        })
    }

    /// Kills a credential helper that has not answered in `timeout` (by
    /// default [`HELPER_TIMEOUT`]); the host then has no credential.
    pub fn helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
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

    /// Runs `docker-credential-<helper> get` for `host`: on `PATH` (or in
    /// the helper directory), never a path the configuration spells out;
    /// killed after the timeout, its answer read up to a limit, and always
    /// waited for.
    fn run_helper(&self, helper: &str, host: &str) -> Option<Credential> {
        if helper.is_empty() || helper.contains(['/', '\\', '\0']) {
            return None;
        }
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
        let deadline = Instant::now() + self.helper_timeout;
        // Read on a thread of its own, so a helper that never closes its
        // output cannot outlast the deadline.
        let (sender, answer) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let read = stdout.take(HELPER_OUTPUT_LIMIT + 1).read_to_end(&mut out);
                let _ = sender.send(read.map(|_| out));
            });
        }
        // A helper may exit without reading: then this write fails, and the
        // helper is still waited for below.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(server.as_bytes());
        }
        let output = answer
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()
            .and_then(Result::ok)
            .filter(|out| out.len() as u64 <= HELPER_OUTPUT_LIMIT);
        let Some(output) = output else {
            // No answer in time, or too much of one: nothing to wait for.
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        let status = wait_until(&mut child, deadline)?;
        if !status.success() {
            return None;
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct HelperOutput {
            username: String,
            secret: String,
        }
        let parsed: HelperOutput = serde_json::from_slice(&output).ok()?;
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

/// The child's exit status once it has exited, or `None` if it was still
/// running at `deadline` (it is then killed, and reaped).
fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

impl Credentials for DockerConfig {
    fn get(&self, host: &str) -> Option<Credential> {
        // Docker Hub's helper may be listed under any of its names.
        let helper = if is_docker_hub(host) {
            [
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
                DOCKER_HUB_KEY,
            ]
            .iter()
            .find_map(|name| self.config.cred_helpers.get(*name))
        } else {
            self.config.cred_helpers.get(host)
        };
        if let Some(helper) = helper {
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

    /// Writes an executable `docker-credential-<name>` shell script.
    fn helper_script(dir: &Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    const ANSWER: &str = r#"read server; echo '{"ServerURL":"x","Username":"alice","Secret":"s"}'"#;

    /// A helper name is a name: one that is a path (`sub/evil`, `../x`) is
    /// not run, though the same script under a plain name is.
    #[test]
    fn a_helper_named_by_a_path_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        helper_script(dir.path(), "sub/evil", ANSWER);
        helper_script(dir.path(), "plain", ANSWER);
        let config = |store: &str| {
            DockerConfig::parse(format!(r#"{{"credsStore": "{store}"}}"#).as_bytes())
                .unwrap()
                .helper_dir(dir.path())
        };
        assert!(config("plain").get("registry.example").is_some());
        assert!(config("sub/evil").get("registry.example").is_none());
    }

    /// A helper that hangs is killed at the timeout; one that answers too
    /// much is not believed.
    #[test]
    fn a_hung_or_babbling_helper_gives_nothing() {
        let dir = tempfile::tempdir().unwrap();
        helper_script(dir.path(), "hung", &format!("sleep 30; {ANSWER}"));
        let secret = "x".repeat(HELPER_OUTPUT_LIMIT as usize);
        helper_script(
            dir.path(),
            "babbling",
            &format!(r#"read server; echo '{{"Username":"alice","Secret":"{secret}"}}'"#),
        );
        let config = |store: &str| {
            DockerConfig::parse(format!(r#"{{"credsStore": "{store}"}}"#).as_bytes())
                .unwrap()
                .helper_dir(dir.path())
                .helper_timeout(Duration::from_millis(300))
        };
        let started = Instant::now();
        assert!(config("hung").get("registry.example").is_none());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "killed at the timeout, not waited for: {:?}",
            started.elapsed()
        );
        assert!(config("babbling").get("registry.example").is_none());
    }

    /// Docker Hub's helper is found under any of Hub's names, and asked
    /// about Hub by its `config.json` key.
    #[test]
    fn docker_hub_helpers_are_found_by_any_of_its_names() {
        let dir = tempfile::tempdir().unwrap();
        helper_script(
            dir.path(),
            "hub",
            r#"read server; [ "$server" = "https://index.docker.io/v1/" ] && echo '{"Username":"alice","Secret":"hub"}'"#,
        );
        for name in [
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
        ] {
            let config = DockerConfig::parse(
                format!(r#"{{"credHelpers": {{"{name}": "hub"}}}}"#).as_bytes(),
            )
            .unwrap()
            .helper_dir(dir.path());
            let c = config
                .get("registry-1.docker.io")
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(c.secret, "hub", "{name}");
        }
    }
}
