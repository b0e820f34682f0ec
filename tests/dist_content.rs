//! End-to-end tests of the `dist` example's content commands, run as a real
//! process against a real store, the way a shell pipeline uses them.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ocidist::content::sha256_of;

/// The `dist` binary `cargo test` built beside this test.
fn dist_binary() -> PathBuf {
    let deps = std::env::current_exe().expect("test binary path");
    let profile_dir = deps
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let binary = profile_dir.join("examples").join("dist");
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test` (which builds examples)",
        binary.display()
    );
    binary
}

fn dist(root: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(dist_binary())
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

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn ingest_resumes_verifies_and_the_store_is_managed_from_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let blob: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha256_of(&blob).to_string();
    let size = blob.len().to_string();
    let ingest = [
        "ingest",
        "r1",
        "--expected-digest",
        &digest,
        "--expected-size",
        &size,
    ];

    // A broken stream fails, names the cause, and keeps what arrived.
    let out = dist(root, &ingest, &blob[..1_000_000]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("dist: ingest r1: short read"),
        "{}",
        stderr(&out)
    );
    let active = stdout(&dist(root, &["active"], b""));
    assert!(
        active.contains("r1") && active.contains("1000000/3000000"),
        "{active}"
    );

    // The full stream resumes and commits.
    let out = dist(root, &ingest, &blob);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&dist(root, &["active"], b"")).contains("r1"));

    // A wrong digest commits nothing.
    let wrong = sha256_of(b"wrong").to_string();
    let out = dist(
        root,
        &["ingest", "r2", "--expected-digest", &wrong],
        b"payload",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
    assert_eq!(stdout(&dist(root, &["list", "-q"], b"")).trim(), digest);

    let path = stdout(&dist(root, &["path", &digest], b""));
    assert_eq!(std::fs::read(path.trim()).unwrap(), blob);
    assert_eq!(dist(root, &["get", &digest], b"").stdout, blob);

    let out = dist(root, &["delete", &digest], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&dist(root, &["list", "-q"], b"")), "");
    let out = dist(root, &["delete", &digest], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let out = dist(dir.path(), &["ingest"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = dist(dir.path(), &["path", "not-a-digest"], b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
