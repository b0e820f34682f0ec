//! End-to-end tests of the `dist` example's content commands, run as a real
//! process against a real store, the way a shell pipeline uses them.

mod common;

use common::{dist, ok, stderr, stdout};

use ocidist::content::sha256_of;

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
    // Quiet, the refs alone, for scripts.
    assert_eq!(stdout(&dist(root, &["-q", "active"], b"")), "r1\n");
    // Broken again: said to bring the whole blob, not only what is left.
    let out = dist(root, &ingest, &blob[..2_000_000]);
    assert!(
        stderr(&out).contains(
            "got 2000000 (a resumed ingest reads the whole blob again: the first 1000000 bytes"
        ),
        "{}",
        stderr(&out)
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
    let out = dist(
        dir.path(),
        &["--timeout", "99999999999999999999h", "list"],
        b"",
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("out of range"), "{}", stderr(&out));
    // `dist list -q | xargs dist delete` on an empty store, and the same
    // with images.
    for nothing in [&["delete"][..], &["images", "rm"]] {
        let out = dist(dir.path(), nothing, b"");
        assert!(out.status.success(), "{nothing:?}: {}", stderr(&out));
    }
    // Nothing done at once, or nothing to wait for, is no setting.
    for zero in [
        &["--timeout", "0s", "list"][..],
        &["--ranges", "0", "list"],
        &["--unpack-concurrency", "0", "list"],
        &["fetch", "--concurrency", "0", "x"],
        &["pull", "--concurrency", "0", "x"],
        &["push", "--concurrency", "0", "x"],
    ] {
        let out = dist(dir.path(), zero, b"");
        assert_eq!(out.status.code(), Some(2), "{zero:?}: {}", stderr(&out));
    }
}

/// A command that reads a store says so when there is none where `--root`
/// points (a typo, an unset variable) rather than answer from an empty one
/// it made there.
#[test]
fn a_missing_store_is_said_and_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo");
    for command in [&["list"][..], &["active"], &["images"], &["prune"]] {
        let out = dist(&typo, command, b"");
        assert_eq!(out.status.code(), Some(1), "{command:?}");
        assert!(
            stderr(&out).contains("no store there"),
            "{command:?}: {}",
            stderr(&out)
        );
        assert!(!typo.exists(), "{command:?} made the store");
    }
    // What adds content makes one.
    let out = dist(&typo, &["ingest", "r"], b"new");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&dist(&typo, &["list", "-q"], b"")).trim(),
        sha256_of(b"new").to_string()
    );
}

/// An empty or relative directory in the environment never puts a store in
/// whatever directory dist runs in: empty variables are unset, and a
/// relative `XDG_DATA_HOME` or `HOME` is ignored (the XDG Base Directory
/// rule); with nothing left, dist says to name the root.
#[test]
fn no_store_is_made_where_the_command_runs_by_accident() {
    use std::os::unix::process::CommandExt;
    let cwd = tempfile::tempdir().unwrap();
    // Writable by the user below, so that a store made there would show.
    std::fs::set_permissions(
        cwd.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut command = std::process::Command::new(common::dist_binary());
        command
            .current_dir(cwd.path())
            .env_remove("OCIDIST_ROOT")
            .envs(env.iter().copied())
            .args(args)
            .stdin(std::process::Stdio::null());
        // As a user (nobody), whose default store is under their home.
        // SAFETY: setuid is async-signal-safe, and touches only this child.
        unsafe {
            command.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.output().unwrap()
    };
    let cases: [&[(&str, &str)]; 2] = [
        &[("OCIDIST_ROOT", ""), ("XDG_DATA_HOME", ""), ("HOME", "")],
        &[("XDG_DATA_HOME", "data"), ("HOME", "home")],
    ];
    for env in cases {
        let out = run(env, &["ingest", "r"]);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("neither $XDG_DATA_HOME nor $HOME is an absolute path"),
            "{env:?}: {}",
            stderr(&out)
        );
        let made: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
        assert!(made.is_empty(), "{env:?}: {made:?}");
    }
}

/// A second ingest of a ref another process is writing waits for it, and
/// says so after a second; once the first commits, the second has nothing
/// to do.
#[test]
fn a_second_ingest_of_a_ref_waits_for_the_first_and_says_so() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = sha256_of(&blob).to_string();
    let args = ["ingest", "shared", "--expected-digest", &digest];
    let ingesting = || {
        common::Watched::spawn(
            std::process::Command::new(common::dist_binary())
                .arg("--root")
                .arg(root)
                .args(args)
                .stdin(std::process::Stdio::piped()),
        )
    };
    let mut first = ingesting();
    let mut stdin = first.child().stdin.take().unwrap();
    stdin.write_all(&blob[..50_000]).unwrap();
    stdin.flush().unwrap();
    // Until the first holds the ref.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !stdout(&dist(root, &["-q", "active"], b"")).contains("shared") {
        assert!(
            std::time::Instant::now() < deadline,
            "the first ingest never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut second = ingesting();
    // The first is held until the second has said it waits (after a
    // second), however slowly the second starts.
    let said = second.wait_for(
        "waiting for another process's ingest of shared",
        std::time::Duration::from_secs(60),
    );
    stdin.write_all(&blob[50_000..]).unwrap();
    drop(stdin);
    let (status, first_said) = first.finish();
    assert!(status.success(), "{first_said}");
    let (status, second_said) = second.finish();
    assert!(status.success(), "{second_said}");
    assert!(said, "{second_said}");
    assert_eq!(stdout(&dist(root, &["list", "-q"], b"")).trim(), digest);
}

/// A broken Docker config is not ignored in silence (the user would only
/// see a 401 later), nor fatal (anonymous pulls need no credentials).
#[test]
fn a_broken_docker_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), b"{").unwrap();
    let out = std::process::Command::new(common::dist_binary())
        .env("DOCKER_CONFIG", dir.path())
        .args(["--root", dir.path().join("store").to_str().unwrap()])
        .args(["--timeout", "300ms", "fetch", "127.0.0.1:1/x:1"])
        .output()
        .unwrap();
    let stderr = stderr(&out);
    assert!(
        stderr.contains("warning: Docker credentials not loaded")
            && stderr.contains(&format!("{}", dir.path().join("config.json").display())),
        "{stderr}"
    );
}

/// A command stuck reading its configuration (here a Docker config that is
/// a FIFO no one writes; a hung network mount does the same) still ends at
/// `--timeout`, and at SIGINT, with their own messages: the command runs on
/// a thread of its own, and the main one watches.
#[test]
fn a_command_blocked_reading_its_config_still_ends_at_the_timeout_or_a_signal() {
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let fifo = std::ffi::CString::new(
        dir.path()
            .join("config.json")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let fetch = |timeout: &[&str]| {
        let mut command = std::process::Command::new(common::dist_binary());
        command
            .env("DOCKER_CONFIG", dir.path())
            .args(["--root", dir.path().join("store").to_str().unwrap()])
            .args(timeout)
            .args(["fetch", "127.0.0.1:1/x:1"]);
        common::Watched::spawn(&mut command)
    };
    let within = Duration::from_secs(30);
    let (status, said) = fetch(&["--timeout", "1s"]).finish_within(within);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("dist: fetch 127.0.0.1:1/x:1: timed out after 1s (--timeout)"),
        "{said}"
    );

    let mut stuck = fetch(&[]);
    // Until it waits in the FIFO: a writer may open it only then (and its
    // read then waits for bytes that never come).
    let deadline = Instant::now() + Duration::from_secs(30);
    let _writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.path().join("config.json"))
        {
            Ok(writer) => break writer,
            Err(e) => {
                assert!(Instant::now() < deadline, "never read its config: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert!(stuck.running());
    // SAFETY: the pid is our own child's, not yet waited for.
    assert_eq!(
        unsafe { libc::kill(stuck.child().id() as libc::pid_t, libc::SIGINT) },
        0
    );
    let (status, said) = stuck.finish_within(within);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGINT),
        "{said}"
    );
    assert!(said.contains("interrupted by SIGINT"), "{said}");
}

/// dist raises its soft limit on open files to the hard one, as Go's
/// runtime does for containerd and skopeo: an overlay pull of a hundred
/// layers failed under a shell's `ulimit -n 100`.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_one() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(common::dist_binary());
    command
        .args(["--root", dir.path().to_str().unwrap(), "ingest", "waits"])
        .stdin(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe, and touches only this child.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            limit.rlim_cur = 64.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let mut ingest = common::Watched::spawn(&mut command);
    let limits = format!("/proc/{}/limits", ingest.child().id());
    let open_files = || {
        std::fs::read_to_string(&limits)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .map(|l| {
                l.split_whitespace()
                    .skip(3)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    // Waiting on its stdin, it has long raised it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = open_files();
    while seen.starts_with("64 ") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = open_files();
    }
    let (soft, hard) = seen.split_once(' ').unwrap();
    assert_eq!(soft, hard, "{seen}");
    assert_ne!(soft, "64", "{seen}");
    // Its stdin closed: an empty blob, ingested.
    let (status, said) = ingest.finish();
    assert!(status.success(), "{said}");
}

/// An empty `DOCKER_CONFIG` is unset, as for Docker: `~/.docker` is read,
/// not a `config.json` in the working directory.
#[test]
fn an_empty_docker_config_variable_means_the_home_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".docker")).unwrap();
    std::fs::write(dir.path().join(".docker/config.json"), b"{").unwrap();
    let out = std::process::Command::new(common::dist_binary())
        .env("DOCKER_CONFIG", "")
        .env("HOME", dir.path())
        .current_dir(dir.path())
        .args(["--root", dir.path().join("store").to_str().unwrap()])
        .args(["--timeout", "300ms", "fetch", "127.0.0.1:1/x:1"])
        .output()
        .unwrap();
    let stderr = stderr(&out);
    assert!(
        stderr.contains(&format!(
            "{}",
            dir.path().join(".docker/config.json").display()
        )),
        "{stderr}"
    );
}

/// `dist list | head -1` ends dist as it ends a C or Go program: silently, by
/// SIGPIPE, not with a panic or an error message.
#[test]
fn a_closed_stdout_ends_dist_by_sigpipe() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let blob = b"one blob";
    let digest = sha256_of(blob).to_string();
    ok(dist(
        dir.path(),
        &["ingest", "r", "--expected-digest", &digest],
        blob,
    ));
    let root = ["--root".to_string(), dir.path().display().to_string()];
    for command in [&["path"][..], &["get"][..]] {
        let mut args = root.to_vec();
        args.extend(command.iter().map(|c| c.to_string()));
        // Far more than a pipe holds, so dist is still writing when it closes.
        args.extend(std::iter::repeat_n(digest.clone(), 20_000));
        let mut child = std::process::Command::new(common::dist_binary())
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = Vec::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_until(b'b', &mut first)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{command:?}: {out:?}"
        );
        assert_eq!(stderr(&out), "", "{command:?}");
    }
}

/// On a full disk the image store may not open (nor be created); the content
/// commands, which a user needs then to see and free space, do not use it.
#[test]
fn content_commands_run_without_an_image_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Something that is not a database where the image store would be.
    std::fs::create_dir(root.join("images.redb")).unwrap();
    let blob = b"content without images";
    let digest = sha256_of(blob).to_string();

    let out = dist(root, &["ingest", "r1", "--expected-digest", &digest], blob);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&dist(root, &["list", "-q"], b"")).trim(), digest);
    assert_eq!(dist(root, &["get", &digest], b"").stdout, blob);
    assert!(dist(root, &["active"], b"").status.success());
    let out = dist(root, &["delete", &digest], b"");
    assert!(out.status.success(), "{}", stderr(&out));

    let out = dist(root, &["images"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("dist: open image store in"),
        "{}",
        stderr(&out)
    );
}
