//! Credentials from Docker's `config.json`: `auths` entries, and credential
//! helpers (`credHelpers` per host, `credsStore` for the rest) run as
//! `docker-credential-<name> get`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::auth::{Credential, Credentials, CredentialsError};

/// The parts of `config.json` that hold credentials.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    // Go's decoder, which Docker's tools use, takes a JSON `null` for an
    // empty map or string, and they write `null`s (no `omitempty`).
    #[serde(default, deserialize_with = "null_as_default")]
    auths: HashMap<String, Option<AuthEntry>>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    cred_helpers: HashMap<String, Option<String>>,
}

/// `T`'s default for a JSON `null`, as Go's decoder reads it.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
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
/// killed (an error for the request that needed it): long enough for a
/// cloud login, not forever.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// A helper's answer is a small JSON object; more than this is not read.
const HELPER_OUTPUT_LIMIT: u64 = 64 << 10;

/// How much of a helper's stderr is kept to explain its failure.
const HELPER_STDERR_LIMIT: u64 = 4 << 10;

/// Docker Hub's key in `config.json`.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

impl DockerConfig {
    /// Loads `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`; a
    /// missing file is an empty configuration.
    pub fn load_default() -> std::io::Result<Self> {
        // An empty DOCKER_CONFIG is unset, as for Docker.
        let dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|dir| !dir.is_empty())
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

    /// Parses `config.json` content; content that is not such a file is
    /// [`InvalidData`](std::io::ErrorKind::InvalidData), as from
    /// [`load`](Self::load).
    pub fn parse(bytes: &[u8]) -> std::io::Result<Self> {
        Ok(DockerConfig {
            config: serde_json::from_slice(bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
            ..Self::default()
        })
    }

    /// Kills a credential helper that has not answered in `timeout` (by
    /// default [`HELPER_TIMEOUT`]); the request that needed it then fails.
    pub fn helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// Looks for credential helpers in `dir` instead of on `PATH`.
    pub fn helper_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.helper_dir = Some(dir.into());
        self
    }

    /// The file's `auths` entry for `host`. One whose `auth` is not the
    /// base64 of `USER:PASSWORD` is an error, as Docker refuses such a file,
    /// not a registry asked with no credentials.
    fn lookup_auths(&self, host: &str) -> HelperResult {
        let keys = [
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
            format!("https://{host}/v1/"),
            format!("https://{host}/v2/"),
        ];
        // Any other spelling of the host (`https://host/`, `host/v2`), as
        // Docker's `ConvertToHostname` reads keys: no scheme, nothing after
        // the first `/`.
        let hostname = |key: &str| {
            let rest = key
                .strip_prefix("https://")
                .or_else(|| key.strip_prefix("http://"))
                .unwrap_or(key);
            rest.split('/').next().unwrap_or(rest).to_string()
        };
        let auths = &self.config.auths;
        let found = keys
            .iter()
            .find_map(|k| auths.get_key_value(k))
            .or_else(|| {
                is_docker_hub(host)
                    .then(|| auths.get_key_value(DOCKER_HUB_KEY))
                    .flatten()
            })
            .or_else(|| {
                let mut others: Vec<_> = auths
                    .iter()
                    .filter(|(key, _)| hostname(key) == host)
                    .collect();
                // The same answer whatever the map's order.
                others.sort_by(|a, b| a.0.cmp(b.0));
                others.first().map(|(key, entry)| (*key, *entry))
            });
        let Some((key, Some(entry))) = found else {
            return Ok(None);
        };
        // As Docker reads an entry: a non-empty identity token wins; else a
        // non-empty `auth` is decoded over `username` and `password` (which
        // `docker login` leaves stale beside it).
        let nonempty = |field: &Option<String>| field.clone().filter(|v| !v.is_empty());
        if let Some(token) = nonempty(&entry.identitytoken) {
            return Ok(Some(Credential {
                username: String::new(),
                secret: token,
            }));
        }
        if let Some(auth) = nonempty(&entry.auth) {
            let decoded = decode_base64(&auth).and_then(|bytes| String::from_utf8(bytes).ok());
            let Some((username, secret)) = decoded.as_deref().and_then(|d| d.split_once(':'))
            else {
                return Err(CredentialsError::new(format!(
                    "config.json's auths entry {key:?}: its auth is not the base64 of USER:PASSWORD"
                )));
            };
            return Ok(Some(Credential {
                username: username.to_string(),
                secret: secret.to_string(),
            }));
        }
        let username = nonempty(&entry.username);
        let password = nonempty(&entry.password);
        Ok(
            (username.is_some() || password.is_some()).then(|| Credential {
                username: username.unwrap_or_default(),
                secret: password.unwrap_or_default(),
            }),
        )
    }

    /// Runs `docker-credential-<helper> get` for `host`: on `PATH` (or in
    /// the helper directory), never a path the configuration spells out;
    /// killed after the timeout, its answer read up to a limit, and always
    /// waited for. "credentials not found" (the helpers' protocol) is
    /// `Ok(None)`; a helper that is missing, fails otherwise, says nothing
    /// in time or answers what is not a credential is an error, as for
    /// Docker.
    fn run_helper(&self, helper: &str, host: &str) -> HelperResult {
        let fail = |why: String| {
            Err(CredentialsError::new(format!(
                "docker-credential-{helper}: {why}"
            )))
        };
        if helper.is_empty() || helper.contains(['/', '\\', '\0']) {
            return Err(CredentialsError::new(format!(
                "credential helper {helper:?} is not a name: not run"
            )));
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
        let mut command = Command::new(&program);
        command
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own, so a kill takes what it started too (a
            // shell script's `sleep`, which would hold its output open).
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        // A helper outlives no process that asked it: killed with us (a
        // `--timeout`, a Ctrl-C) rather than left hanging.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return fail(
                    "not found on PATH (install it, or take it out of config.json's credsStore or credHelpers)"
                        .into(),
                );
            }
            Err(e) => return fail(e.to_string()),
        };
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
        // What it says on stderr explains a failure that stdout does not.
        let (sender, complaint) = std::sync::mpsc::channel();
        if let Some(mut stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = (&mut stderr)
                    .take(HELPER_STDERR_LIMIT)
                    .read_to_end(&mut out);
                let _ = sender.send(out);
                // The rest is drained, so a talkative helper never blocks.
                let _ = std::io::copy(&mut stderr, &mut std::io::sink());
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
            .and_then(Result::ok);
        let output = match output {
            Some(out) if out.len() as u64 <= HELPER_OUTPUT_LIMIT => out,
            // Too much of an answer, or none in time: nothing to wait for.
            too_much_or_none => {
                kill_group(&mut child);
                return fail(match too_much_or_none {
                    Some(_) => format!("answered more than {HELPER_OUTPUT_LIMIT} bytes"),
                    None => format!("no answer in {:?}", self.helper_timeout),
                });
            }
        };
        let Some(status) = wait_until(&mut child, deadline) else {
            return fail(format!("did not exit in {:?}", self.helper_timeout));
        };
        let said = String::from_utf8_lossy(&output);
        let said = said.trim();
        if !status.success() {
            // The helpers' own words for "nothing stored for this server".
            if said.contains("credentials not found") {
                return Ok(None);
            }
            // Its stderr, if it wrote any in a moment (a child of its own
            // may still hold the pipe: not waited for).
            let complained = complaint
                .recv_timeout(Duration::from_millis(100))
                .unwrap_or_default();
            let complained = String::from_utf8_lossy(&complained);
            let said = [said, complained.trim()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" / ");
            let said: String = said.chars().take(300).collect();
            return fail(format!("get {server}: {status}: {said}"));
        }
        // Go's decoder, which Docker uses, ignores the case of field names
        // and takes a missing one as empty.
        #[derive(Deserialize)]
        struct HelperOutput {
            #[serde(default, alias = "Username", alias = "username")]
            username_any: String,
            #[serde(default, alias = "Secret", alias = "secret")]
            secret_any: String,
        }
        let parsed: HelperOutput = match serde_json::from_slice(&output) {
            Ok(parsed) => parsed,
            Err(e) => return fail(format!("get {server}: not a credential ({e})")),
        };
        // Docker's convention: the user name `<token>` means an identity token.
        let username = if parsed.username_any == "<token>" {
            String::new()
        } else {
            parsed.username_any
        };
        Ok(Some(Credential {
            username,
            secret: parsed.secret_any,
        }))
    }
}

/// What a credential lookup gives.
type HelperResult = Result<Option<Credential>, CredentialsError>;

fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) | Err(_) => {
                kill_group(child);
                return None;
            }
        }
    }
}

/// Kills a helper and whatever it started (its process group, made for it
/// at spawn), and reaps it.
fn kill_group(child: &mut std::process::Child) {
    if let Ok(group) = libc::pid_t::try_from(child.id()) {
        // SAFETY: a plain system call; the group is the helper's own (its
        // pid, not yet reaped, so not reused).
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Credentials for DockerConfig {
    fn get(&self, host: &str) -> HelperResult {
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
        // An empty helper name (or `null`) is no helper, as for Docker: a
        // `credHelpers` entry so blanked means the file's `auths` for that
        // host, a blank `credsStore` the file's `auths` for every host
        // (the usual way round a broken helper).
        fn named(helper: Option<&str>) -> Option<&str> {
            helper.filter(|name| !name.is_empty())
        }
        if let Some(helper) = helper {
            return match named(helper.as_deref()) {
                Some(helper) => self.run_helper(helper, host),
                None => self.lookup_auths(host),
            };
        }
        // A store answers for every host, as Docker's does: the file's
        // `auths` entries beside it (stale ones, often, from before the
        // store) are not read, even when it has nothing for the host.
        match named(self.config.creds_store.as_deref()) {
            Some(store) => self.run_helper(store, host),
            None => self.lookup_auths(host),
        }
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
                "quay.io": {"identitytoken": "idtok"},
                "https://kube.example/": {"auth": "azpz"},
                "http://reg.example:5000/v2/": {"auth": "cjpz"}
            }}"#,
        )
        .unwrap();
        let get = |h: &str| config.get(h).unwrap().map(|c| (c.username, c.secret));
        // Keys as kubectl and others write them: a trailing slash, a path.
        assert_eq!(get("kube.example"), Some(("k".into(), "s".into())));
        assert_eq!(get("reg.example:5000"), Some(("r".into(), "s".into())));
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
            "#!/bin/sh\nread server\ncase \"$server\" in\n  registry.example) echo '{\"ServerURL\":\"x\",\"Username\":\"alice\",\"Secret\":\"from-helper\"}' ;;\n  lower.example) echo '{\"username\":\"bob\",\"secret\":\"lower\"}' ;;\n  broken.example) echo 'token expired: run login'; exit 1 ;;\n  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
        )
        .unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = DockerConfig::parse(
            br#"{"credsStore": "fake", "credHelpers": {"other.example": "missing"}}"#,
        )
        .unwrap()
        .helper_dir(dir.path());
        let c = config.get("registry.example").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.secret.as_str()),
            ("alice", "from-helper")
        );
        let c = config.get("lower.example").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("bob", "lower"));
        assert!(
            config.get("unknown.example").unwrap().is_none(),
            "the helper says not found"
        );
        let failed = config.get("broken.example").unwrap_err().to_string();
        assert!(
            failed.contains("docker-credential-fake") && failed.contains("token expired"),
            "a failing helper is an error that says why: {failed}"
        );
        let missing = config.get("other.example").unwrap_err().to_string();
        assert!(
            missing.contains("docker-credential-missing") && missing.contains("not found"),
            "a missing helper is an error: {missing}"
        );
    }

    #[test]
    fn a_missing_file_is_empty_and_a_broken_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            DockerConfig::load(&dir.path().join("none.json"))
                .unwrap()
                .get("x")
                .unwrap()
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

    /// With a `credsStore`, the store answers for every host, as with
    /// Docker: a stale `auths` entry beside it is not sent, even where the
    /// store has nothing.
    #[test]
    fn a_creds_store_answers_over_the_files_auths_entries() {
        let dir = tempfile::tempdir().unwrap();
        helper_script(
            dir.path(),
            "store",
            r#"read server; case "$server" in r.example) echo '{"Username":"alice","Secret":"fresh"}' ;; *) echo 'credentials not found in native keychain'; exit 1 ;; esac"#,
        );
        // "alice:stale"
        let config = DockerConfig::parse(
            br#"{"credsStore": "store", "auths": {"r.example": {"auth": "YWxpY2U6c3RhbGU="},
                 "other.example": {"auth": "YWxpY2U6c3RhbGU="}}}"#,
        )
        .unwrap()
        .helper_dir(dir.path());
        let c = config.get("r.example").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.secret.as_str()), ("alice", "fresh"));
        assert!(config.get("other.example").unwrap().is_none());
    }

    /// An `auth` that is not the base64 of `USER:PASSWORD` is an error
    /// naming its entry, not a host with no credentials.
    #[test]
    fn an_auth_that_does_not_decode_is_an_error() {
        // "alicesecret": no colon.
        for auth in ["!!!notbase64", "YWxpY2VzZWNyZXQ="] {
            let config = DockerConfig::parse(
                format!(r#"{{"auths": {{"https://r.example": {{"auth": "{auth}"}}}}}}"#).as_bytes(),
            )
            .unwrap();
            let err = config.get("r.example").unwrap_err().to_string();
            assert!(
                err.contains(r#"auths entry "https://r.example""#)
                    && err.contains("not the base64 of USER:PASSWORD"),
                "{auth}: {err}"
            );
        }
    }

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
        assert!(config("plain").get("registry.example").unwrap().is_some());
        assert!(config("sub/evil").get("registry.example").is_err());
    }

    /// A helper that hangs is killed at the timeout; one that answers too
    /// much is not believed: both are errors.
    #[test]
    fn a_hung_or_babbling_helper_is_an_error() {
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
                // Time for a loaded machine to start the helper's shell
                // and for it to write its child's pid (below).
                .helper_timeout(Duration::from_secs(3))
        };
        let started = Instant::now();
        assert!(config("hung").get("registry.example").is_err());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "killed at the timeout, not waited for: {:?}",
            started.elapsed()
        );
        assert!(config("babbling").get("registry.example").is_err());

        // What a hung helper started goes with it.
        let started_pid = dir.path().join("started.pid");
        helper_script(
            dir.path(),
            "parent",
            &format!("sleep 30 & echo $! > {}; wait", started_pid.display()),
        );
        assert!(config("parent").get("registry.example").is_err());
        let pid = std::fs::read_to_string(&started_pid).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let deadline = Instant::now() + Duration::from_secs(10);
        // Gone, or a zombie waiting for whoever adopted it to reap it.
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(Instant::now() < deadline, "{stat} still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn blank_helper_names_and_nulls_are_read_as_docker_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |json: &str| {
            DockerConfig::parse(json.as_bytes())
                .unwrap_or_else(|e| panic!("{json}: {e}"))
                .helper_dir(dir.path())
        };
        let get = |config: &DockerConfig, host: &str| {
            config
                .get(host)
                .unwrap_or_else(|e| panic!("{host}: {e}"))
                .map(|c| (c.username, c.secret))
        };
        let alice = Some(("alice".to_string(), "s3cret".to_string()));
        // "alice:s3cret"
        let auth = "YWxpY2U6czNjcmV0";

        // A blank credsStore (the way round a broken one) is the file.
        let config = parse(&format!(
            r#"{{"credsStore": "", "auths": {{"r.example": {{"auth": "{auth}"}}}}}}"#
        ));
        assert_eq!(get(&config, "r.example"), alice);
        assert_eq!(get(&config, "other.example"), None);
        // So is a blank or null credHelpers entry, for its host: the file,
        // not the credsStore.
        for blank in [r#""""#, "null"] {
            let config = parse(&format!(
                r#"{{"credsStore": "missing", "credHelpers": {{"r.example": {blank}}},
                    "auths": {{"r.example": {{"auth": "{auth}"}}}}}}"#
            ));
            assert_eq!(get(&config, "r.example"), alice, "{blank}");
        }

        // Nulls where Go tools write them: nothing there.
        let config = parse(r#"{"auths": null, "credHelpers": null, "credsStore": null}"#);
        assert_eq!(get(&config, "r.example"), None);
        let config = parse(&format!(
            r#"{{"auths": {{"x.example": null, "r.example": {{"auth": "{auth}", "identitytoken": null}}}}}}"#
        ));
        assert_eq!(get(&config, "x.example"), None);
        assert_eq!(get(&config, "r.example"), alice);

        // `auth` is decoded over stale or blank fields beside it, and a
        // blank identity token is none.
        for beside in [
            r#""identitytoken": """#,
            r#""username": "", "password": """#,
            r#""username": "alice", "password": "old""#,
        ] {
            let config = parse(&format!(
                r#"{{"auths": {{"r.example": {{"auth": "{auth}", {beside}}}}}}}"#
            ));
            assert_eq!(get(&config, "r.example"), alice, "{beside}");
        }
        let config = parse(r#"{"auths": {"r.example": {"auth": "", "identitytoken": "tok"}}}"#);
        assert_eq!(
            get(&config, "r.example"),
            Some((String::new(), "tok".into()))
        );
        let config = parse(r#"{"auths": {"r.example": {"username": "", "password": ""}}}"#);
        assert_eq!(get(&config, "r.example"), None);
    }

    #[test]
    fn a_failing_helper_is_quoted_from_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        helper_script(
            dir.path(),
            "quiet",
            "read server; echo 'error getting credentials: keychain locked' >&2; exit 3",
        );
        let config = DockerConfig::parse(br#"{"credsStore": "quiet"}"#)
            .unwrap()
            .helper_dir(dir.path());
        let err = config.get("r.example").unwrap_err().to_string();
        assert!(err.contains("keychain locked"), "{err}");
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
                .unwrap()
                .unwrap_or_else(|| panic!("{name}"));
            assert_eq!(c.secret, "hub", "{name}");
        }
    }
}
