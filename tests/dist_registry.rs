//! End-to-end tests of the `dist` example's registry and image commands,
//! against the real registry the test kit starts.

mod common;

use std::path::Path;
use std::process::Command;

use common::{dist, ingest, ok};

use ocidist::content::sha256_of;
use ocidist::remotes::testkit::{Registry, TestCertificates, TokenServer, find_binary};

/// Ingests a one-layer arm64 image into the store at `builder`; returns
/// its manifest's digest and bytes.
fn build_image(builder: &Path) -> (String, String) {
    build_image_for(builder, "arm64", Some("v8"))
}

/// Ingests a one-layer image for `architecture` (linux) into the store at
/// `builder`; returns its manifest's digest and bytes.
fn build_image_for(builder: &Path, architecture: &str, variant: Option<&str>) -> (String, String) {
    // A layer of its own per architecture.
    let seed = sha256_of(architecture.as_bytes()).to_string();
    let seed = seed.as_bytes();
    let layer_bytes: Vec<u8> = (0..500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 ^ seed[i as usize % seed.len()])
        .collect();
    let layer = ingest(
        builder,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &layer_bytes,
    );
    let mut config = serde_json::json!({
        "architecture": architecture,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    if let Some(variant) = variant {
        config["variant"] = variant.into();
    }
    let config = ingest(
        builder,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest_bytes = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer],
    })
    .to_string();
    let manifest = ingest(
        builder,
        "application/vnd.oci.image.manifest.v1+json",
        manifest_bytes.as_bytes(),
    );
    let digest = manifest["digest"].as_str().unwrap().to_string();
    (digest, manifest_bytes)
}

#[test]
fn push_fetch_list_check_and_prune_an_image() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let (manifest_digest, manifest_bytes) = build_image(&builder);
    let manifest_digest = manifest_digest.as_str();

    let reference = format!("{}/e2e/app:1", registry.host());
    let pushed = ok(dist(&builder, &["push", &reference, manifest_digest], b""));
    assert!(
        pushed.contains("layer-sha256:") && pushed.trim_end().ends_with(manifest_digest),
        "{pushed}"
    );
    // Each blob's upload said as it starts and ends, then the bytes sent.
    let lines = |out: &str, state: &str| out.lines().filter(|l| l.contains(state)).count();
    assert_eq!(
        lines(&pushed, ": uploading |----------| 0 B/"),
        3,
        "{pushed}"
    );
    assert_eq!(lines(&pushed, ": pushed |++++++++++| "), 3, "{pushed}");
    assert!(pushed.contains("elapsed: "), "{pushed}");
    let again = ok(dist(&builder, &["push", &reference, manifest_digest], b""));
    assert_eq!(lines(&again, ": exists"), 3, "{again}");
    assert!(again.contains("total: 0 B"), "{again}");

    let store = dir.path().join("store");
    let fetched = ok(dist(&store, &["fetch", &reference], b""));
    assert!(fetched.contains("elapsed:"), "{fetched}");
    assert!(
        fetched
            .lines()
            .filter(|l| l.contains(": downloading |----------| 0 B/"))
            .count()
            == 3,
        "{fetched}"
    );
    let again = ok(dist(&store, &["fetch", &reference], b""));
    assert_eq!(
        again.lines().filter(|l| l.ends_with(": exists")).count(),
        3,
        "{again}"
    );

    let images = ok(dist(&store, &["images"], b""));
    let row = images
        .lines()
        .find(|l| l.starts_with(&reference))
        .unwrap_or_else(|| panic!("{images}"));
    assert!(
        row.contains("manifest") && row.contains(manifest_digest) && row.contains("linux/arm64/v8"),
        "{row}"
    );
    assert!(ok(dist(&store, &["images", "check"], b"")).contains("complete"));

    let object = dist(
        &store,
        &["fetch-object", &format!("{}/e2e/app", registry.host()), "1"],
        b"",
    );
    assert_eq!(sha256_of(&object.stdout).to_string(), manifest_digest);

    // containerd's original pipeline, as written for the shell: every layer
    // fetched and ingested in parallel, keyed by digest. Each layer is listed
    // twice, so two downloads of one blob race; both must succeed.
    let piped = dir.path().join("piped");
    let pipeline = r#"
        set -euo pipefail
        dist() { "$DIST" --root "$ROOT" "$@"; }
        export -f dist
        dist fetch-object "$REPO" 1 |
            jq -r '.layers[] | "\(.digest) \(.size)", "\(.digest) \(.size)"' |
            xargs -P10 -n2 bash -c 'dist fetch-object "$REPO" "$0" | dist ingest --expected-digest "$0" --expected-size "$1" "layer-$0"'
        dist list -q
    "#;
    let out = Command::new("bash")
        .args(["-c", pipeline])
        .env("DIST", common::dist_binary())
        .env("ROOT", &piped)
        .env("REPO", format!("{}/e2e/app", registry.host()))
        .output()
        .expect("bash runs (jq: apt-get install jq)");
    let listed = ok(out);
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort_unstable();
    let manifest_json: serde_json::Value = serde_json::from_str(&manifest_bytes).unwrap();
    let mut layers: Vec<&str> = manifest_json["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    layers.sort_unstable();
    assert_eq!(listed, layers, "each layer once, verified");
    assert_eq!(
        ok(dist(&piped, &["active"], b"")).lines().count(),
        1,
        "no ingest left behind"
    );

    // Without its name, prune takes the image's content (past the grace period: none yet).
    ok(dist(&store, &["images", "rm", &reference], b""));
    let dry = ok(dist(&store, &["prune", "--dry-run"], b""));
    assert!(
        dry.contains("would remove 0 blobs")
            && dry.contains(
                "0 blobs in use, 3 more kept only until they are older than --grace (15 minutes)"
            ),
        "fresh blobs are in their grace period: {dry}"
    );
    let check = dist(&store, &["images", "check", &reference], b"");
    assert_eq!(
        check.status.code(),
        Some(1),
        "a removed name is not complete"
    );

    // Errors name the thing and the cause, and exit 1.
    let missing = dist(
        &store,
        &["fetch", &format!("{}/e2e/app:nope", registry.host())],
        b"",
    );
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.starts_with(&format!("dist: fetch {}/e2e/app:nope: ", registry.host()))
            && stderr.contains("404")
            && stderr.contains(&format!("({}/e2e/app:nope: not found)", registry.host())),
        "{stderr}"
    );
    let unknown = sha256_of(b"no such object").to_string();
    let missing = dist(
        &store,
        &[
            "fetch-object",
            &format!("{}/e2e/app", registry.host()),
            &unknown,
        ],
        b"",
    );
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains(&format!(
            "({}/e2e/app@{unknown}: no manifest nor blob of that digest)",
            registry.host()
        )),
        "{stderr}"
    );
    assert!(
        !common::stdout(&missing).contains("elapsed:"),
        "no success footer on a failure: {}",
        common::stdout(&missing)
    );
}

/// ctr's TLS flags against a registry that requires client certificates:
/// `--tlscacert`, `--tlscert`, `--tlskey`, `-k`, and Docker's certs.d
/// layout through `--hosts-dir`.
#[test]
fn tls_flags_reach_a_registry_that_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let certs = TestCertificates::write(dir.path()).unwrap();
    let registry = Registry::start_tls_requiring_client_certs(&certs)
        .expect("the registry must start (apt-get install docker-registry)");
    let builder = dir.path().join("builder");
    let (manifest_digest, _) = build_image(&builder);
    // A loopback registry, spoken to over HTTPS because TLS flags are given.
    let reference = format!("{}/mtls/app:1", registry.host());
    let ca = certs.ca.to_str().unwrap();
    let cert = certs.client_cert.to_str().unwrap();
    let key = certs.client_key.to_str().unwrap();
    let tls = ["--tlscacert", ca, "--tlscert", cert, "--tlskey", key];

    let pushed = ok(dist(
        &builder,
        &[&tls[..], &["push", &reference, &manifest_digest]].concat(),
        b"",
    ));
    assert!(pushed.trim_end().ends_with(&manifest_digest), "{pushed}");

    let store = dir.path().join("store");
    let refused = dist(&store, &["--tlscacert", ca, "fetch", &reference], b"");
    assert_eq!(refused.status.code(), Some(1), "no client certificate");
    let said = common::stderr(&refused);
    assert!(
        said.contains("BadCertificate") || said.contains("CertificateRequired"),
        "the TLS alert is said: {said}"
    );
    ok(dist(
        &store,
        &[
            "-k",
            "--tlscert",
            cert,
            "--tlskey",
            key,
            "fetch",
            &reference,
        ],
        b"",
    ));
    let listed = ok(dist(&store, &["images", "-q"], b""));
    assert_eq!(listed.trim(), reference);

    let certs_d = dir.path().join("certs.d");
    certs
        .write_docker_certs_dir(&certs_d.join(registry.host()))
        .unwrap();
    let object = dist(
        &dir.path().join("other"),
        &[
            "--hosts-dir",
            certs_d.to_str().unwrap(),
            "fetch-object",
            &format!("{}/mtls/app", registry.host()),
            "1",
        ],
        b"",
    );
    assert_eq!(sha256_of(&object.stdout).to_string(), manifest_digest);

    let usage = dist(&store, &["--tlskey", key, "list"], b"");
    assert_eq!(usage.status.code(), Some(2), "--tlskey needs --tlscert");
    let unreadable = dist(
        &store,
        &["--tlscacert", "/nonexistent.pem", "fetch", &reference],
        b"",
    );
    assert_eq!(unreadable.status.code(), Some(1));
    assert!(
        common::stderr(&unreadable).contains("/nonexistent.pem"),
        "{}",
        common::stderr(&unreadable)
    );
}

/// A plain-HTTP and a TLS registry (its certificates from a generated CA),
/// each holding one image pushed from a builder store.
struct PlainAndTls {
    dir: tempfile::TempDir,
    certs: TestCertificates,
    plain_ref: String,
    tls_ref: String,
    _plain: Registry,
    tls: Registry,
}

impl PlainAndTls {
    fn with_image(name: &str) -> PlainAndTls {
        let dir = tempfile::tempdir().unwrap();
        let certs = TestCertificates::write(dir.path()).unwrap();
        let plain =
            Registry::start().expect("the registry must start (apt-get install docker-registry)");
        let tls = Registry::start_tls(&certs.server_cert, &certs.server_key)
            .expect("the registry must start (apt-get install docker-registry)");
        let builder = dir.path().join("builder");
        let (manifest_digest, _) = build_image(&builder);
        let plain_ref = format!("{}/{name}", plain.host());
        let tls_ref = format!("{}/{name}", tls.host());
        ok(dist(&builder, &["push", &plain_ref, &manifest_digest], b""));
        let ca = certs.ca.to_str().unwrap();
        ok(dist(
            &builder,
            &["--tlscacert", ca, "push", &tls_ref, &manifest_digest],
            b"",
        ));
        PlainAndTls {
            dir,
            certs,
            plain_ref,
            tls_ref,
            _plain: plain,
            tls,
        }
    }

    /// A hosts directory that makes the TLS registry HTTPS with its
    /// certificate checked (a loopback registry is otherwise unchecked).
    fn hosts_dir_verifying_tls(&self) -> std::path::PathBuf {
        let hosts = self.dir.path().join("hosts");
        let host = self.tls.host();
        std::fs::create_dir_all(hosts.join(&host)).unwrap();
        std::fs::write(
            hosts.join(&host).join("hosts.toml"),
            format!("server = \"https://{host}\"\n"),
        )
        .unwrap();
        hosts
    }
}

/// On a machine with no CA certificates of its own (a minimal container),
/// plain-HTTP registries and registries whose CA is given still work, and
/// any other HTTPS registry is a clear error, not a crash.
#[test]
fn a_machine_without_ca_certificates_still_reaches_registries_it_can_trust() {
    let both = PlainAndTls::with_image("bare/app:1");
    let (dir, ca) = (&both.dir, both.certs.ca.to_str().unwrap());
    let (plain_ref, tls_ref) = (both.plain_ref.as_str(), both.tls_ref.as_str());

    // The system's certificates are where rustls looks: nowhere, here.
    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let no_roots = [
        ("SSL_CERT_FILE", empty.join("none.pem")),
        ("SSL_CERT_DIR", empty.clone()),
    ];
    let no_roots: Vec<(&str, &Path)> = no_roots.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let store = dir.path().join("store");
    ok(common::dist_with_env(
        &store,
        &no_roots,
        &["fetch", plain_ref],
        b"",
    ));
    ok(common::dist_with_env(
        &store,
        &no_roots,
        &["--tlscacert", ca, "fetch", tls_ref],
        b"",
    ));
    let listed = ok(dist(&store, &["images", "-q"], b""));
    assert_eq!(listed.lines().count(), 2, "{listed}");
    // A loopback registry with no flags at all, as with ctr and docker:
    // HTTPS with its certificate unchecked, since it speaks TLS.
    ok(common::dist_with_env(
        &dir.path().join("flagless"),
        &no_roots,
        &["fetch", tls_ref],
        b"",
    ));

    // HTTPS without a CA to check the registry against.
    let hosts = both.hosts_dir_verifying_tls();
    let untrusted = common::dist_with_env(
        &dir.path().join("other"),
        &no_roots,
        &["--hosts-dir", hosts.to_str().unwrap(), "fetch", tls_ref],
        b"",
    );
    assert_eq!(
        untrusted.status.code(),
        Some(1),
        "{}",
        common::stderr(&untrusted)
    );
    let said = common::stderr(&untrusted);
    assert!(said.contains("UnknownIssuer"), "{said}");
    assert!(said.contains("no CA certificates of its own"), "{said}");
}

/// The system's CA certificates are read to check a certificate, and only
/// then: a fetch from a plain-HTTP registry never opens them (here a FIFO
/// nobody writes to, where an open would hang), and an HTTPS registry whose
/// CA is among them is trusted with no flags.
#[test]
fn system_ca_certificates_are_read_only_to_check_a_certificate() {
    let both = PlainAndTls::with_image("lazy/app:1");
    let (dir, certs) = (&both.dir, &both.certs);

    let empty = dir.path().join("no-certs");
    std::fs::create_dir(&empty).unwrap();
    let fifo = dir.path().join("certs.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    // rustls-native-certs opens SSL_CERT_FILE without checking that it is a
    // regular file, so reading it would block here.
    let stderr_path = dir.path().join("plain-fetch.stderr");
    let mut fetch = Command::new(common::dist_binary())
        .env("SSL_CERT_FILE", &fifo)
        .env("SSL_CERT_DIR", &empty)
        .arg("--root")
        .arg(dir.path().join("plain"))
        .args(["-q", "fetch", &both.plain_ref])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("run dist");
    let said = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = fetch.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            fetch.kill().unwrap();
            fetch.wait().unwrap();
            panic!(
                "a plain-HTTP fetch did not end in 60 s: it opened the system's CA \
                 certificates (SSL_CERT_FILE), or stalled; it said: {}",
                said()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", said());

    // The registry's CA as the system's only one, and verification asked for.
    let hosts = both.hosts_dir_verifying_tls();
    let hosts_dir = [
        "--hosts-dir",
        hosts.to_str().unwrap(),
        "fetch",
        &both.tls_ref,
    ];
    let system_ca = [
        ("SSL_CERT_FILE", certs.ca.as_path()),
        ("SSL_CERT_DIR", &empty),
    ];
    ok(common::dist_with_env(
        &dir.path().join("trusted"),
        &system_ca,
        &hosts_dir,
        b"",
    ));
    // Without it, the same registry is refused.
    let other_ca = [
        ("SSL_CERT_FILE", certs.client_cert.as_path()),
        ("SSL_CERT_DIR", &empty),
    ];
    let refused = common::dist_with_env(&dir.path().join("untrusted"), &other_ca, &hosts_dir, b"");
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        common::stderr(&refused)
    );
    assert!(
        common::stderr(&refused).contains("UnknownIssuer"),
        "{}",
        common::stderr(&refused)
    );
}

/// ctr's `--user`: a registry behind a token service takes a push with the
/// right USER:PASSWORD only; a malformed one is a usage error.
#[test]
fn user_flag_authenticates_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start("bob", "pa55").unwrap();
    let registry = Registry::start_binary(
        &find_binary().expect("apt-get install docker-registry"),
        &tokens.registry_config(dir.path()).unwrap(),
    )
    .expect("the registry must start (apt-get install docker-registry)");
    let builder = dir.path().join("builder");
    let (manifest_digest, _) = build_image(&builder);
    let reference = format!("{}/private/app:1", registry.host());
    let push = |user: Option<&str>| {
        let mut args = Vec::new();
        if let Some(user) = user {
            args.extend(["--user", user]);
        }
        args.extend(["push", &reference, &manifest_digest]);
        dist(&builder, &args, b"")
    };

    let anonymous = push(None);
    assert_eq!(
        anonymous.status.code(),
        Some(1),
        "anonymous tokens only pull"
    );
    assert!(
        common::stderr(&anonymous).contains("401"),
        "{}",
        common::stderr(&anonymous)
    );
    assert_eq!(push(Some("bob:wrong")).status.code(), Some(1));
    assert_eq!(
        push(Some("bob")).status.code(),
        Some(2),
        "no password: usage"
    );
    let blank = push(Some("bob:"));
    assert_eq!(blank.status.code(), Some(2), "an empty password: usage");
    assert!(
        common::stderr(&blank).contains("with a password (dist does not prompt for one)"),
        "{}",
        common::stderr(&blank)
    );
    let pushed = ok(push(Some("bob:pa55")));
    assert!(pushed.trim_end().ends_with(&manifest_digest), "{pushed}");
    // Pulling needs no credentials here: anonymous tokens grant pull.
    ok(dist(&dir.path().join("store"), &["fetch", &reference], b""));
}

/// A push uploads blobs from the store where they are, with no copy: a
/// temporary directory that is missing (or a small tmpfs) does not stop it.
#[test]
fn a_push_needs_no_temporary_directory() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let (manifest_digest, _) = build_image(&builder);
    let reference = format!("{}/e2e/spooled:1", registry.host());
    let pushed = common::dist_with_env(
        &builder,
        &[("TMPDIR", Path::new("/nonexistent/tmp"))],
        &["push", &reference, &manifest_digest],
        b"",
    );
    let pushed = ok(pushed);
    assert!(pushed.trim_end().ends_with(&manifest_digest), "{pushed}");
}

/// A mirror in `--hosts-dir` that fails (here one that is down) is passed
/// over for the upstream, and the fetch says so on stderr, once, as
/// containerd logs "trying next host"; `--quiet` keeps it to errors. A
/// mirror that only lacks the image (404) is a partial mirror doing its
/// job: not a warning (containerd logs it at debug level).
#[test]
fn a_mirror_passed_over_is_a_warning() {
    let upstream =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let partial =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let (manifest_digest, _) = build_image(&builder);
    let reference = format!("{}/e2e/mirrored:1", upstream.host());
    ok(dist(&builder, &["push", &reference, &manifest_digest], b""));
    let hosts = dir.path().join("hosts");
    std::fs::create_dir_all(hosts.join(upstream.host())).unwrap();
    std::fs::write(
        hosts.join(upstream.host()).join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{down}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            upstream.host(),
            partial.host()
        ),
    )
    .unwrap();
    let hosts = hosts.to_str().unwrap();

    let fetched = dist(
        &dir.path().join("store"),
        &["--hosts-dir", hosts, "fetch", &reference],
        b"",
    );
    let said = common::stderr(&fetched);
    ok(fetched);
    let warnings: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("dist: warning: "))
        .collect();
    // Said once, for the first request the mirror failed: not again for
    // each blob; and nothing of the partial mirror's 404s.
    assert_eq!(warnings.len(), 1, "{said}");
    let warning = format!("dist: warning: {down} failed, trying the next host: ");
    assert!(
        warnings[0].starts_with(&warning)
            && warnings[0].contains("/manifests/1: cannot connect")
            && warnings[0].ends_with("(said once per host)"),
        "{said}"
    );

    let quiet = dist(
        &dir.path().join("quiet"),
        &["--hosts-dir", hosts, "-q", "fetch", &reference],
        b"",
    );
    assert_eq!(common::stderr(&quiet), "", "--quiet");
    ok(quiet);
}

/// A blob that went bad in the store after its commit is caught as it is
/// sent: the push fails naming the store's copy as corrupt and the way out,
/// and the registry gets neither the blob nor the manifest. One gone from
/// the store is named, with the way to find what else is.
#[test]
fn a_blob_corrupted_in_the_store_fails_its_push_and_says_so() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let (manifest_digest, manifest) = build_image(&builder);
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let path = ok(dist(&builder, &["path", layer], b""));
    let path = Path::new(path.trim());
    let mut bytes = std::fs::read(path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(path, bytes).unwrap();

    let reference = format!("{}/e2e/corrupt:1", registry.host());
    let pushed = dist(&builder, &["push", &reference, &manifest_digest], b"");
    let said = common::stderr(&pushed);
    assert!(!pushed.status.success(), "{said}");
    assert!(
        said.contains(&format!("the store's copy of {layer} is corrupt"))
            && said.contains(&format!("dist delete {layer}")),
        "{said}"
    );
    let fetched = dist(&dir.path().join("other"), &["fetch", &reference], b"");
    assert!(!fetched.status.success(), "nothing was tagged");

    // Gone from the store: said so, with where to look.
    ok(dist(&builder, &["delete", layer], b""));
    let pushed = dist(&builder, &["push", &reference, &manifest_digest], b"");
    let said = common::stderr(&pushed);
    assert!(!pushed.status.success(), "{said}");
    assert!(
        said.contains(&format!("{layer}: not found"))
            && said.contains(&format!(
                "`images check {manifest_digest}` lists what the image lacks"
            )),
        "{said}"
    );
}

/// Ingests an OCI index of `manifests` (digest, bytes and linux
/// architecture of each; arm64 as v8) into the store at `builder`; returns
/// its digest.
fn ingest_index(builder: &Path, manifests: &[(&str, &str, &str)]) -> String {
    let entries: Vec<serde_json::Value> = manifests
        .iter()
        .map(|(digest, bytes, architecture)| {
            let mut platform = serde_json::json!({"os": "linux", "architecture": architecture});
            if *architecture == "arm64" {
                platform["variant"] = "v8".into();
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": bytes.len(),
                "platform": platform,
            })
        })
        .collect();
    let index_bytes = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let index = ingest(
        builder,
        "application/vnd.oci.image.index.v1+json",
        index_bytes.as_bytes(),
    );
    index["digest"].as_str().unwrap().to_string()
}

/// As `ctr push --platform`: what a one-platform fetch of an index keeps can
/// be pushed as that platform's manifest; without `--platform` the push
/// fails, saying so, and a platform the index lacks is named in the error.
#[test]
fn a_push_with_a_platform_sends_that_platforms_manifest_of_an_index() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let (arm64, arm64_bytes) = build_image_for(&builder, "arm64", Some("v8"));
    let (amd64, amd64_bytes) = build_image_for(&builder, "amd64", None);
    let index = ingest_index(
        &builder,
        &[
            (&amd64, &amd64_bytes, "amd64"),
            (&arm64, &arm64_bytes, "arm64"),
        ],
    );
    let both = format!("{}/e2e/multi:1", registry.host());
    ok(dist(&builder, &["push", &both, &index], b""));

    let store = dir.path().join("store");
    ok(dist(
        &store,
        &["--platform", "linux/arm64", "fetch", &both],
        b"",
    ));

    let whole = format!("{}/e2e/whole:1", registry.host());
    let refused = dist(&store, &["push", &whole, &both], b"");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&amd64) && stderr.contains("push that platform alone with --platform"),
        "{stderr}"
    );

    let one = format!("{}/e2e/one:1", registry.host());
    let pushed = ok(dist(
        &store,
        &["--platform", "linux/arm64", "push", &one, &both],
        b"",
    ));
    assert!(pushed.trim_end().ends_with(&arm64), "{pushed}");
    let object = dist(
        &store,
        &["fetch-object", &format!("{}/e2e/one", registry.host()), "1"],
        b"",
    );
    assert_eq!(String::from_utf8_lossy(&object.stdout), arm64_bytes);

    let absent = dist(
        &store,
        &["--platform", "linux/s390x", "push", &one, &both],
        b"",
    );
    assert_eq!(absent.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&absent.stderr);
    assert!(stderr.contains("linux/s390x"), "{stderr}");

    // A manifest is pushed as it is: --platform changes nothing for it.
    let plain = format!("{}/e2e/plain:1", registry.host());
    let pushed = ok(dist(
        &builder,
        &["--platform", "linux/s390x", "push", &plain, &amd64],
        b"",
    ));
    assert!(pushed.trim_end().ends_with(&amd64), "{pushed}");
}

/// What a one-platform fetch of an index leaves is said as such: `images
/// check` for another platform names that platform's manifest (not the
/// index, which is there); a push of that platform says to fetch it; an
/// export says which manifests it leaves out and counts each blob once
/// (a layer two platforms share, too).
#[test]
fn a_one_platform_fetch_of_an_index_is_checked_pushed_and_exported_as_such() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let (arm64, arm64_bytes) = build_image_for(&builder, "arm64", Some("v8"));
    // An amd64 manifest with a config of its own and arm64's layer.
    let arm64_manifest: serde_json::Value = serde_json::from_str(&arm64_bytes).unwrap();
    let config = ingest(
        &builder,
        "application/vnd.oci.image.config.v1+json",
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let amd64_bytes = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": arm64_manifest["layers"],
    })
    .to_string();
    let amd64 = ingest(
        &builder,
        "application/vnd.oci.image.manifest.v1+json",
        amd64_bytes.as_bytes(),
    )["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let index = ingest_index(
        &builder,
        &[
            (&amd64, &amd64_bytes, "amd64"),
            (&arm64, &arm64_bytes, "arm64"),
        ],
    );
    let both = format!("{}/e2e/partial:1", registry.host());
    ok(dist(&builder, &["push", &both, &index], b""));

    // Every blob once: the index, two manifests, two configs, one layer.
    let whole = dir.path().join("whole-layout");
    let exported = ok(dist(
        &builder,
        &["export", &index, whole.to_str().unwrap()],
        b"",
    ));
    assert!(exported.contains("(6 blobs)"), "{exported}");

    let store = dir.path().join("store");
    ok(dist(
        &store,
        &["--platform", "linux/arm64", "fetch", &both],
        b"",
    ));

    let checked = dist(
        &store,
        &["--platform", "linux/amd64", "images", "check"],
        b"",
    );
    assert_eq!(checked.status.code(), Some(1));
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        said.contains(&format!("incomplete, missing {amd64}")),
        "the amd64 manifest is what is missing: {said}"
    );
    let checked = dist(
        &store,
        &["--platform", "linux/s390x", "images", "check"],
        b"",
    );
    assert_eq!(checked.status.code(), Some(1));
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(
        said.contains("incomplete, the index lists no manifest for linux/s390x"),
        "{said}"
    );

    let pushed = dist(
        &store,
        &[
            "--platform",
            "linux/amd64",
            "push",
            &format!("{}/e2e/amd64:1", registry.host()),
            &both,
        ],
        b"",
    );
    assert_eq!(pushed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&pushed.stderr);
    assert!(
        stderr.contains("the store lacks the linux/amd64 manifest of this index"),
        "{stderr}"
    );
    // The whole index: the missing manifest named, the way out said once.
    let pushed = dist(
        &store,
        &["push", &format!("{}/e2e/whole:1", registry.host()), &both],
        b"",
    );
    assert_eq!(pushed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&pushed.stderr);
    assert!(
        stderr.contains(&format!(
            "the store lacks manifest {amd64} (platform linux/amd64)"
        )) && stderr.matches("push that platform alone").count() == 1
            && !stderr.contains("push one platform's manifest alone"),
        "{stderr}"
    );

    // The index, arm64's manifest, config and layer; amd64's manifest said.
    let partial = dir.path().join("partial-layout");
    let exported = dist(&store, &["export", &both, partial.to_str().unwrap()], b"");
    let answer = ok(exported.clone());
    assert!(answer.contains("(4 blobs)"), "{answer}");
    let stderr = String::from_utf8_lossy(&exported.stderr);
    assert!(
        stderr.contains("the store lacks 1 of the index's manifests (linux/amd64)"),
        "{stderr}"
    );

    // A rootfs of the platform not fetched: where to look said, and no
    // DEST left behind.
    let dest = dir.path().join("rootfs");
    let made = dist(
        &store,
        &[
            "--platform",
            "linux/amd64",
            "rootfs",
            "--copy",
            &both,
            dest.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(made.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert!(
        stderr.contains(&format!("`images check {both}` lists what the store lacks"))
            && stderr.contains("keeps only the --platform's manifest, linux/amd64"),
        "{stderr}"
    );
    assert!(!dest.exists());
}

/// Ingests a one-layer linux/amd64 image into the store at `builder`;
/// returns its manifest's descriptor as JSON.
fn amd64_manifest(builder: &Path) -> serde_json::Value {
    let (digest, bytes) = build_image_for(builder, "amd64", None);
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": bytes.len(),
    })
}

/// Ingests an index listing `child` (a manifest or index, with `platform`
/// when given) `times` times; returns its descriptor.
fn ingest_repeating_index(
    builder: &Path,
    child: &serde_json::Value,
    platform: Option<serde_json::Value>,
    times: usize,
) -> serde_json::Value {
    let mut entry = child.clone();
    if let Some(platform) = platform {
        entry["platform"] = platform;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": vec![entry; times],
    })
    .to_string();
    ingest(
        builder,
        "application/vnd.oci.image.index.v1+json",
        index.as_bytes(),
    )
}

/// An image that lists one document a thousand times at each of three
/// levels (a billion paths, in about 600 KB) is pushed, fetched for every
/// platform and listed in time that grows with its six distinct blobs:
/// each blob is handled once, however many paths lead to it. Before, the
/// fetch ran for minutes into gigabytes, and `images` never answered.
#[test]
fn an_image_listing_one_document_a_thousand_times_at_each_level_is_handled_once_per_blob() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let manifest = amd64_manifest(&builder);
    let platform = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let lowest = ingest_repeating_index(&builder, &manifest, Some(platform), 1000);
    let middle = ingest_repeating_index(&builder, &lowest, None, 1000);
    let top = ingest_repeating_index(&builder, &middle, None, 1000);
    let top = top["digest"].as_str().unwrap();
    let reference = format!("{}/e2e/fanout:1", registry.host());
    // A regression fails at the timeout rather than hang the suite.
    ok(dist(
        &builder,
        &["--timeout", "60s", "push", &reference, top],
        b"",
    ));

    let store = dir.path().join("store");
    let fetched = ok(dist(
        &store,
        &["--timeout", "60s", "fetch", "--all-platforms", &reference],
        b"",
    ));
    assert!(fetched.contains(top), "{fetched}");
    assert_eq!(ok(dist(&store, &["list", "-q"], b"")).lines().count(), 6);
    let images = ok(dist(&store, &["--timeout", "60s", "images"], b""));
    assert!(
        images.contains(&reference) && images.contains("linux/amd64"),
        "{images}"
    );
    let checked = ok(dist(&store, &["--timeout", "60s", "images", "check"], b""));
    assert!(checked.contains("complete"), "{checked}");
}

/// What an index says of its platforms is printed as text: `images` shows
/// a platform's control characters escaped, on one line.
#[test]
fn a_platform_with_control_characters_is_listed_escaped() {
    let registry =
        Registry::start().expect("the registry must start (apt-get install docker-registry)");
    let dir = tempfile::tempdir().unwrap();
    let builder = dir.path().join("builder");
    let manifest = amd64_manifest(&builder);
    let platform = serde_json::json!({"os": "linux\n\u{1b}[2J", "architecture": "amd64"});
    let index = ingest_repeating_index(&builder, &manifest, Some(platform), 1);
    let index = index["digest"].as_str().unwrap();
    let reference = format!("{}/e2e/escapes:1", registry.host());
    ok(dist(&builder, &["push", &reference, index], b""));
    let store = dir.path().join("store");
    ok(dist(&store, &["fetch", "--all-platforms", &reference], b""));
    let images = ok(dist(&store, &["images"], b""));
    assert_eq!(images.lines().count(), 2, "{images}");
    assert!(
        !images.chars().any(|c| c.is_control() && c != '\n'),
        "{images:?}"
    );
    assert!(images.contains(r"linux\n\u{1b}[2j/amd64"), "{images}");
}
