//! Running the built `dist` example as a real process.

#![allow(dead_code, unreachable_pub)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
