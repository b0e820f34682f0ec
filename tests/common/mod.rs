//! Running the built `dist` example as a real process.

#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs a real tool the test needs (`umoci`, `skopeo`): its stdout, or a
/// panic naming the package to install, or what it said on failure.
pub fn run_tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (apt-get install {program}): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The `dist` binary `cargo test` built beside this test.
pub fn dist_binary() -> PathBuf {
    let deps = std::env::current_exe().expect("test binary path");
    let binary = deps
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("examples/dist");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test` (which builds examples) or `cargo build --example dist`",
        binary.display()
    );
    binary
}

/// Runs `dist --root ROOT ARGS...` with `stdin`, and waits for it.
pub fn dist(root: &Path, args: &[&str], stdin: &[u8]) -> Output {
    dist_with_env(root, &[], args, stdin)
}

/// [`dist`] with extra environment variables.
pub fn dist_with_env(root: &Path, env: &[(&str, &Path)], args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(dist_binary())
        .envs(env.iter().copied())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run dist");
    // A command may exit before reading all of stdin; that is not our failure.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().expect("wait for dist")
}

/// A running `dist` whose stderr is read as it comes, so that a test can
/// wait for what it says instead of sleeping for a time a loaded machine
/// may overrun. Its stdout is discarded.
pub struct Watched {
    child: std::process::Child,
    said: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watched {
    /// Starts `command` (its stdout and stderr are set here).
    pub fn spawn(command: &mut Command) -> Watched {
        use std::io::Read as _;
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dist");
        let mut stderr = child.stderr.take().unwrap();
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&said);
        let reader = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buffer) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Watched {
            child,
            said,
            reader,
        }
    }

    /// The child, to write to its stdin or signal it.
    pub fn child(&mut self) -> &mut std::process::Child {
        &mut self.child
    }

    /// Waits until its stderr says `text`, for at most `within`; false if
    /// it did not (or the process ended first).
    pub fn wait_for(&mut self, text: &str, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.said.lock().unwrap().contains(text) {
                return true;
            }
            // Ended, and all it said read: what it said before it ended counts.
            let ended = matches!(self.child.try_wait(), Ok(Some(_))) && self.reader.is_finished();
            if ended || std::time::Instant::now() > deadline {
                return self.said.lock().unwrap().contains(text);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// [`Watched::finish`], for at most `within`; past it the process is
    /// killed and the test fails, saying what it said.
    pub fn finish_within(
        mut self,
        within: std::time::Duration,
    ) -> (std::process::ExitStatus, String) {
        let deadline = std::time::Instant::now() + within;
        while self.running() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let (_, said) = self.finish();
                panic!("still running after {within:?}; it said: {said}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.finish()
    }

    /// Waits for it to end: its exit status and all it said on stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        drop(self.child.stdin.take());
        let status = self.child.wait().expect("wait for dist");
        self.reader.join().expect("the stderr reader");
        let said = std::mem::take(&mut *self.said.lock().unwrap());
        (status, said)
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The stdout of a command that must have succeeded; its stderr otherwise.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `data`, gzip-compressed.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Ingests `bytes` with `dist ingest` (verified against their digest and
/// size); returns their descriptor as JSON.
pub fn ingest(root: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let digest = ocidist::content::sha256_of(bytes).to_string();
    let size = bytes.len().to_string();
    ok(dist(
        root,
        &[
            "ingest",
            &format!("build-{digest}"),
            "--expected-digest",
            &digest,
            "--expected-size",
            &size,
        ],
        bytes,
    ));
    serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
}
