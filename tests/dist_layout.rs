//! `dist export` writes OCI layouts that skopeo and umoci read; `dist import`
//! reads layouts that skopeo wrote.

mod common;

use std::path::Path;
use std::process::Command;

use common::{dist, gzip, ingest, ok, stderr};
use ocidist::content::sha256_of;

fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (apt-get install {program}): {e}"));
    ok(out)
}

/// A one-layer image in the store at `root`; returns the manifest digest.
fn build(root: &Path) -> String {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(6);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "etc/motd", &b"hello\n"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    build_of(root, &tar, true)
}

/// An image of the one layer `tar` (gzipped if `gzipped`) in the store at
/// `root`; returns the manifest digest.
fn build_of(root: &Path, tar: &[u8], gzipped: bool) -> String {
    build_layers(root, &[(tar, gzipped)])
}

/// An image of the layers `tars` (each gzipped if its flag says so) in the
/// store at `root`; returns the manifest digest.
fn build_layers(root: &Path, tars: &[(&[u8], bool)]) -> String {
    let layers: Vec<_> = tars
        .iter()
        .map(|(tar, gzipped)| {
            if *gzipped {
                ingest(
                    root,
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                    &gzip(tar),
                )
            } else {
                ingest(root, "application/vnd.oci.image.layer.v1.tar", tar)
            }
        })
        .collect();
    let diff_ids: Vec<_> = tars
        .iter()
        .map(|(tar, _)| sha256_of(tar).to_string())
        .collect();
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    let config = ingest(
        root,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    ingest(
        root,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    )["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The manifest `digest` in the store at `root`, and its first layer's digest.
fn manifest_and_layer(root: &Path, digest: &str) -> (serde_json::Value, String) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&dist(root, &["get", digest], b"").stdout).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    (manifest, layer)
}

#[test]
fn an_exported_layout_is_read_by_skopeo_and_umoci() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let digest = build(&root);
    let layout = work.path().join("layout");
    let out = ok(dist(
        &root,
        &["export", &digest, layout.to_str().unwrap(), "--name", "img"],
        b"",
    ));
    assert!(out.starts_with("img sha256:"), "{out}");

    let inspect: serde_json::Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", &format!("oci:{}:img", layout.display())],
    ))
    .unwrap();
    assert_eq!(inspect["Digest"].as_str(), Some(digest.as_str()));
    assert_eq!(inspect["Layers"].as_array().map(Vec::len), Some(1));

    let bundle = work.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:img", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(bundle.join("rootfs/etc/motd")).unwrap(),
        b"hello\n"
    );
}

#[test]
fn a_layout_written_by_skopeo_is_imported_and_unpacks() {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let digest = build(&work.path().join("builder"));
    ok(dist(
        &work.path().join("builder"),
        &["export", &digest, source.to_str().unwrap(), "--name", "src"],
        b"",
    ));
    let copied = work.path().join("copied");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:src", source.display()),
            &format!("oci:{}:copied", copied.display()),
        ],
    );

    let root = work.path().join("store");
    let out = ok(dist(&root, &["import", copied.to_str().unwrap()], b""));
    assert!(out.starts_with("copied sha256:"), "{out}");
    let images = ok(dist(&root, &["images"], b""));
    assert!(images.contains("copied"), "{images}");
    let check = ok(dist(&root, &["images", "check"], b""));
    assert!(check.contains("complete"), "{check}");
    let rootfs = work.path().join("rootfs");
    ok(dist(
        &root,
        &["rootfs", "--copy", "copied", rootfs.to_str().unwrap()],
        b"",
    ));
    assert_eq!(std::fs::read(rootfs.join("etc/motd")).unwrap(), b"hello\n");

    // `unpack` reads the layout in place, as `umoci unpack` does.
    let files = |dir: &std::path::Path| {
        let out = Command::new("find").arg(dir).output().unwrap();
        let mut lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    };
    let before = files(&copied);
    let direct = work.path().join("direct");
    let layout = format!("{}:copied", copied.display());
    let first = ok(dist(&direct, &["unpack", &layout], b""));
    assert!(first.contains(": unpacking"), "{first}");
    let chain = first.lines().last().unwrap();
    assert!(chain.starts_with("sha256:"), "the chain ID, last: {first}");
    let again = ok(dist(&direct, &["unpack", &layout], b""));
    assert!(
        again.contains("already unpacked") && again.ends_with(&format!("\n{chain}\n")),
        "{again}"
    );
    // With --quiet, the answer alone.
    assert_eq!(
        ok(dist(&direct, &["-q", "unpack", &layout], b"")),
        format!("{chain}\n")
    );
    // The chain ID is what `rootfs` takes to show what was unpacked; a
    // digest that is neither a snapshot nor an image is refused.
    let unpacked = work.path().join("unpacked");
    ok(dist(
        &direct,
        &["rootfs", "--copy", chain, unpacked.to_str().unwrap()],
        b"",
    ));
    assert_eq!(
        std::fs::read(unpacked.join("etc/motd")).unwrap(),
        b"hello\n"
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    let refused = dist(
        &direct,
        &[
            "rootfs",
            "--copy",
            &unknown,
            work.path().join("none").to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("rootfs {unknown}")),
        "{refused:?}"
    );
    assert_eq!(files(&copied), before, "the layout is left as it was");
    let missing = dist(
        &direct,
        &["unpack", &format!("{}:nope", copied.display())],
        b"",
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no image named \"nope\""),
        "{missing:?}"
    );
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(
        empty.join("index.json"),
        br#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    // A directory whose oci-layout file does not say it is a layout of the
    // version we read is not read as one (umoci and containerd refuse it).
    let unread = |oci_layout: Option<&str>, said: &str| {
        if let Some(text) = oci_layout {
            std::fs::write(empty.join("oci-layout"), text).unwrap();
        }
        for command in ["unpack", "import"] {
            let out = dist(&direct, &[command, empty.to_str().unwrap()], b"");
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            assert!(
                String::from_utf8_lossy(&out.stderr).contains(said),
                "{out:?}"
            );
        }
    };
    unread(None, "it has no oci-layout file");
    for command in ["unpack", "import"] {
        let typo = work.path().join("emtpy");
        let out = dist(&direct, &[command, typo.to_str().unwrap()], b"");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("emtpy is not an OCI image layout: no such directory"),
            "{said}"
        );
    }
    unread(
        Some(r#"{"imageLayoutVersion":"2.0.0"}"#),
        r#"image layout version "2.0.0", where this program reads "1.0.0""#,
    );
    unread(Some("{}"), "no imageLayoutVersion in it");
    std::fs::write(
        empty.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let nothing = dist(&direct, &["unpack", empty.to_str().unwrap()], b"");
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("no images in"),
        "{nothing:?}"
    );

    // A name shaped like a digest (`app:1`: any `alg:encoded` parses as one)
    // is a name; `path` refuses it as a digest.
    let builder = work.path().join("builder");
    let named = work.path().join("named");
    let export = |name: &str| {
        ok(dist(
            &builder,
            &["export", &digest, named.to_str().unwrap(), "--name", name],
            b"",
        ))
    };
    export("app:1");
    export("docker.io/library/app:2");
    // What an interrupted export leaves, and a stray file: skipped, said.
    std::fs::write(named.join("blobs/sha256/0123.tmp"), b"partial").unwrap();
    std::fs::write(named.join("blobs/README"), b"not a blob").unwrap();
    let imported = dist(&root, &["import", named.to_str().unwrap()], b"");
    assert!(imported.status.success(), "{imported:?}");
    let warnings = String::from_utf8_lossy(&imported.stderr);
    assert!(
        warnings.contains("skipping")
            && warnings.contains("0123.tmp")
            && warnings.contains("README"),
        "{warnings}"
    );
    let app = work.path().join("app");
    ok(dist(
        &root,
        &["rootfs", "--copy", "app:1", app.to_str().unwrap()],
        b"",
    ));
    assert_eq!(std::fs::read(app.join("etc/motd")).unwrap(), b"hello\n");
    let path = dist(&root, &["path", "app:1"], b"");
    assert_eq!(path.status.code(), Some(2), "{path:?}");
    assert!(
        String::from_utf8_lossy(&path.stderr).contains("unknown algorithm app"),
        "{path:?}"
    );

    // -q images: the names alone, for xargs.
    let mut names: Vec<String> = ok(dist(&root, &["-q", "images"], b""))
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    assert_eq!(names, ["app:1", "copied", "docker.io/library/app:2"]);

    // Names are normalised as everywhere else; a missing one fails check and
    // rm, which goes on with the others.
    assert!(ok(dist(&root, &["images", "check", "app:2"], b"")).contains("complete"));
    let rm = dist(&root, &["images", "rm", "nosuch", "app:2"], b"");
    assert_eq!(rm.status.code(), Some(1), "{rm:?}");
    assert!(
        String::from_utf8_lossy(&rm.stderr).contains("images rm nosuch"),
        "{rm:?}"
    );
    let check = dist(&root, &["images", "check", "app:2", "copied"], b"");
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains("app:2: ") && out.contains("not found") && out.contains("copied: complete"),
        "{out}"
    );
}

/// The entries of the layout at `dir`: (ref name, containerd's name, digest).
fn entries(dir: &Path) -> Vec<(Option<String>, Option<String>, String)> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let annotation = |key: &str| m["annotations"][key].as_str().map(String::from);
            (
                annotation("org.opencontainers.image.ref.name"),
                annotation("io.containerd.image.name"),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_layout_with_some_platforms_imports_and_whole_names_survive_the_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let builder = work.path().join("builder");
    let digest = build(&builder);
    let size = std::fs::metadata(ok(dist(&builder, &["path", &digest], b"")).trim())
        .unwrap()
        .len();
    let host = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    // Another platform's manifest, which this store never had: a one-platform
    // fetch of a multi-platform image, as `docker save` writes them too.
    let absent = sha256_of(b"the other platform's manifest").to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": absent,
             "size": 500, "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
             "size": size, "platform": {"os": "linux", "architecture": host}},
        ],
    });
    let index = ingest(
        &builder,
        "application/vnd.oci.image.index.v1+json",
        index.to_string().as_bytes(),
    )["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let sparse = work.path().join("sparse");
    ok(dist(
        &builder,
        &[
            "export",
            &index,
            sparse.to_str().unwrap(),
            "--name",
            "multi",
        ],
        b"",
    ));
    let root = work.path().join("store");
    let imported = ok(dist(&root, &["import", sparse.to_str().unwrap()], b""));
    assert!(imported.starts_with("multi sha256:"), "{imported}");
    assert!(ok(dist(&root, &["images", "check", "multi"], b"")).contains("multi: complete"));

    // Two images whose tags are both `latest`, named by containerd's
    // annotation as `ctr export` and `docker save` write them.
    let saved = work.path().join("saved");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sparse.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"][0].clone();
    let named = |name: &str| {
        let mut entry = entry.clone();
        entry["annotations"] = serde_json::json!({
            "org.opencontainers.image.ref.name": "latest",
            "io.containerd.image.name": name,
        });
        entry
    };
    index["manifests"] = serde_json::json!([
        named("docker.io/library/a:latest"),
        named("docker.io/library/b:latest")
    ]);
    Command::new("cp")
        .args(["-a", sparse.to_str().unwrap(), saved.to_str().unwrap()])
        .status()
        .unwrap();
    std::fs::write(saved.join("index.json"), index.to_string()).unwrap();
    let two = work.path().join("two");
    ok(dist(&two, &["import", saved.to_str().unwrap()], b""));
    let mut names: Vec<String> = ok(dist(&two, &["-q", "images"], b""))
        .lines()
        .map(String::from)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["docker.io/library/a:latest", "docker.io/library/b:latest"]
    );
    // With --prefix, the prefix goes before the ref name (the tag), never
    // before a whole name (which would make no name at all).
    let prefixed = work.path().join("prefixed");
    let args = ["import", "--prefix", "mirror/app:", saved.to_str().unwrap()];
    ok(dist(&prefixed, &args, b""));
    let names = ok(dist(&prefixed, &["-q", "images"], b""));
    assert_eq!(names.lines().collect::<Vec<_>>(), ["mirror/app:latest"]);

    // Exported by name, both stay, each with its tag and whole name; a
    // digest's entry is unnamed.
    let again = work.path().join("again");
    for image in ["docker.io/library/a:latest", "b", &index_digest(&saved)] {
        ok(dist(&two, &["export", image, again.to_str().unwrap()], b""));
    }
    let mut written = entries(&again);
    written.sort();
    let target = index_digest(&saved);
    assert_eq!(
        written,
        [
            (None, None, target.clone()),
            (
                Some("latest".into()),
                Some("docker.io/library/a:latest".into()),
                target.clone()
            ),
            (
                Some("latest".into()),
                Some("docker.io/library/b:latest".into()),
                target.clone()
            ),
        ]
    );
    // skopeo finds them by ref name as it always did...
    tool(
        "skopeo",
        &["inspect", &format!("oci:{}:latest", again.display())],
    );
    // ...and `unpack` by either name, split at the first colon as skopeo does.
    let direct = work.path().join("direct");
    let chain = ok(dist(
        &direct,
        &[
            "-q",
            "unpack",
            &format!("{}:docker.io/library/b:latest", again.display()),
        ],
        b"",
    ));
    assert!(chain.starts_with("sha256:"), "{chain}");
    // A tag two names share, both of one image: that image.
    let by_tag = ok(dist(
        &direct,
        &["-q", "unpack", &format!("{}:latest", again.display())],
        b"",
    ));
    assert_eq!(by_tag, chain);
}

/// The image of [`build`], exported as `app` into `work/layout`; returns
/// its manifest digest and the layout.
fn exported_app(work: &Path) -> (String, std::path::PathBuf) {
    let builder = work.join("builder");
    let digest = build(&builder);
    let layout = work.join("layout");
    ok(dist(
        &builder,
        &["export", &digest, layout.to_str().unwrap(), "--name", "app"],
        b"",
    ));
    (digest, layout)
}

/// The digest of the first image in the layout at `dir`.
fn index_digest(dir: &Path) -> String {
    entries(dir)[0].2.clone()
}

/// A layout blob with the right size and the wrong bytes fails the import,
/// and once the file is put right the import succeeds: the bad bytes were not
/// kept to be resumed.
#[test]
fn a_corrupt_layout_blob_fails_and_the_repaired_layout_imports() {
    let work = tempfile::tempdir().unwrap();
    let (digest, layout) = exported_app(work.path());
    let manifest_file = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let good = std::fs::read(&manifest_file).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::set_permissions(
        &manifest_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(&manifest_file, &bad).unwrap();
    let root = work.path().join("store");
    let failed = dist(&root, &["import", layout.to_str().unwrap()], b"");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("digest"),
        "{failed:?}"
    );
    std::fs::write(&manifest_file, &good).unwrap();
    let imported = ok(dist(&root, &["import", layout.to_str().unwrap()], b""));
    assert!(imported.starts_with("app sha256:"), "{imported}");
}

/// `unpack` reads a layout the way umoci does, not trusting its files: a
/// manifest whose bytes are not its digest's, a blob of another size than
/// its descriptor says, a blob that is a symlink to `/dev/zero`, and an
/// `index.json` that is one, are each refused, at once, with what is
/// wrong; the good layout unpacks.
#[test]
fn unpack_refuses_a_layout_whose_files_are_not_what_they_claim() {
    let work = tempfile::tempdir().unwrap();
    let (digest, layout) = exported_app(work.path());
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&digest)).unwrap()).unwrap();
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let root = work.path().join("store");
    let source = format!("{}:app", layout.display());
    let unpack = || {
        let started = std::time::Instant::now();
        let out = dist(&root, &["unpack", &source], b"");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        out
    };
    let refused = |why: &str| {
        let out = unpack();
        assert_eq!(out.status.code(), Some(1), "{why}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Replaces a file, kept writable, and returns a guard that puts it back.
    let swap = |path: &Path, with: &dyn Fn(&Path)| {
        let saved = work.path().join("saved");
        std::fs::rename(path, &saved).unwrap();
        with(path);
        saved
    };
    let restore = |path: &Path, saved: &Path| {
        let _ = std::fs::remove_file(path);
        std::fs::rename(saved, path).unwrap();
    };

    let manifest_file = blob(&digest);
    let mut other = manifest.clone();
    other["annotations"] = serde_json::json!({"evil": "yes"});
    let saved = swap(&manifest_file, &|p| {
        std::fs::write(p, other.to_string()).unwrap();
    });
    let said = refused("a manifest of other bytes");
    assert!(said.contains(&format!("layout blob {digest}")), "{said}");
    restore(&manifest_file, &saved);

    let saved = swap(&layer, &|p| {
        std::fs::write(p, b"short").unwrap();
    });
    let said = refused("a layer of another size");
    assert!(
        said.contains("5 bytes, where its descriptor says"),
        "{said}"
    );
    restore(&layer, &saved);

    let saved = swap(&layer, &|p| {
        std::os::unix::fs::symlink("/dev/zero", p).unwrap()
    });
    let said = refused("a layer that is a symlink");
    assert!(said.contains("layout blob"), "{said}");
    assert!(said.contains("/blobs/sha256/"), "its path named: {said}");
    restore(&layer, &saved);

    let index = layout.join("index.json");
    let saved = swap(&index, &|p| {
        std::os::unix::fs::symlink("/dev/zero", p).unwrap()
    });
    let said = refused("an index.json that is /dev/zero");
    assert!(said.contains("index.json: not a regular file"), "{said}");
    let imported = dist(&root, &["import", layout.to_str().unwrap()], b"");
    assert!(
        String::from_utf8_lossy(&imported.stderr).contains("index.json: not a regular file"),
        "{imported:?}"
    );
    restore(&index, &saved);

    // JSON that is none is named by its file.
    let saved = swap(&index, &|p| std::fs::write(p, b"{bad").unwrap());
    let imported = dist(&root, &["import", layout.to_str().unwrap()], b"");
    let said = String::from_utf8_lossy(&imported.stderr);
    assert!(said.contains("index.json: key must be a string"), "{said}");
    restore(&index, &saved);

    ok(unpack());
}

/// An index that lists one index 300 times, each listing the manifest 300
/// times (90,000 visits, each writing labels, without care), imports at
/// once: each document is walked once. A name with control characters
/// (an escape sequence, a forged line) is not taken; the image stays,
/// unnamed.
#[test]
fn import_walks_each_document_once_and_takes_only_names_that_are_names() {
    let work = tempfile::tempdir().unwrap();
    let (_, layout) = exported_app(work.path());
    let index_path = layout.join("index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut manifest = index["manifests"][0].clone();
    manifest["annotations"] = serde_json::json!({});
    let child = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": vec![manifest; 300],
    })
    .to_string();
    let child_digest = sha256_of(child.as_bytes()).to_string();
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(child_digest.trim_start_matches("sha256:")),
        &child,
    )
    .unwrap();
    let entry = serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": child_digest,
        "size": child.len(),
    });
    let mut named = entry.clone();
    named["annotations"] =
        serde_json::json!({"org.opencontainers.image.ref.name": "evil\u{1b}[2J\nforged 1"});
    let mut entries = vec![entry; 299];
    entries.push(named);
    let top = serde_json::json!({"schemaVersion": 2, "manifests": entries});
    std::fs::write(&index_path, top.to_string()).unwrap();

    let root = work.path().join("store");
    let started = std::time::Instant::now();
    let out = dist(&root, &["import", layout.to_str().unwrap()], b"");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("left unnamed"), "{said}");
    let images = ok(dist(&root, &["images"], b""));
    assert!(
        !images.contains("evil") && !images.contains('\x1b'),
        "{images}"
    );
}

/// Names an export stages files under cannot be planted: a symlink out of
/// the layout where an older `dist` staged a blob, `index.json` or
/// `oci-layout` is neither written through nor made the file, and the
/// blobs and index land as files of their own.
#[test]
fn an_export_never_writes_through_a_name_planted_in_the_layout() {
    let work = tempfile::tempdir().unwrap();
    let builder = work.path().join("builder");
    let digest = build(&builder);
    let layout = work.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let outside = work.path().join("precious");
    std::fs::write(&outside, "precious\n").unwrap();
    let hex = digest.trim_start_matches("sha256:");
    for planted in [
        blobs.join(format!("{hex}.tmp")),
        layout.join("index.tmp"),
        layout.join("oci-layout.tmp"),
    ] {
        std::os::unix::fs::symlink(&outside, planted).unwrap();
    }
    ok(dist(
        &builder,
        &["export", &digest, layout.to_str().unwrap(), "--name", "app"],
        b"",
    ));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious\n");
    for file in [
        blobs.join(hex),
        layout.join("index.json"),
        layout.join("oci-layout"),
    ] {
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.file_type().is_file(), "{}: {meta:?}", file.display());
    }
    assert_eq!(
        sha256_of(&std::fs::read(blobs.join(hex)).unwrap()).to_string(),
        digest
    );
    assert_eq!(entries(&layout), [(Some("app".into()), None, digest)]);
}

/// What a killed export left staged in a layout (a partial layer) is swept
/// by the next export; a staged file an export still writes (it holds its
/// lock), a fresh one, and a symlink under the same prefix are left alone.
#[test]
fn an_export_sweeps_what_a_killed_export_left_and_nothing_else() {
    let work = tempfile::tempdir().unwrap();
    let (digest, layout) = exported_app(work.path());
    let blobs = layout.join("blobs/sha256");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let staged = |dir: &Path, name: &str, age: std::time::SystemTime| {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut &file, b"half a layer").unwrap();
        file.set_modified(age).unwrap();
        (path, file)
    };
    let (abandoned, _) = staged(&blobs, ".ocidist-tmp-killed", old);
    let (abandoned_index, _) = staged(&layout, ".ocidist-tmp-index", old);
    let (live, live_file) = staged(&blobs, ".ocidist-tmp-live", old);
    live_file.lock().unwrap();
    let (fresh, _) = staged(&blobs, ".ocidist-tmp-fresh", std::time::SystemTime::now());
    let (foreign, _) = staged(&blobs, ".tmp-another-tool", old);
    let precious = work.path().join("precious");
    std::fs::write(&precious, "precious\n").unwrap();
    let planted = blobs.join(".ocidist-tmp-planted");
    std::os::unix::fs::symlink(&precious, &planted).unwrap();
    let builder = work.path().join("builder");
    ok(dist(
        &builder,
        &[
            "-q",
            "export",
            &digest,
            layout.to_str().unwrap(),
            "--name",
            "again",
        ],
        b"",
    ));
    assert!(!abandoned.exists() && !abandoned_index.exists());
    for kept in [&live, &fresh, &foreign] {
        assert!(kept.exists(), "{}", kept.display());
    }
    assert!(std::fs::symlink_metadata(&planted).unwrap().is_symlink());
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious\n");
    // The layout is whole, and skopeo reads it.
    tool(
        "skopeo",
        &["inspect", &format!("oci:{}:again", layout.display())],
    );
}

/// Exports into one layout at once each keep their name: the index is read
/// and rewritten by one export at a time.
#[test]
fn exports_into_one_layout_at_once_all_keep_their_names() {
    let work = tempfile::tempdir().unwrap();
    let (digest, layout) = exported_app(work.path());
    let builder = work.path().join("builder");
    for round in 0..3 {
        let names: Vec<String> = (0..8).map(|n| format!("r{round}-{n}")).collect();
        let exports: Vec<_> = names
            .iter()
            .map(|name| {
                let (builder, layout, digest) = (builder.clone(), layout.clone(), digest.clone());
                let name = name.clone();
                std::thread::spawn(move || {
                    dist(
                        &builder,
                        &[
                            "-q",
                            "export",
                            &digest,
                            layout.to_str().unwrap(),
                            "--name",
                            &name,
                        ],
                        b"",
                    )
                })
            })
            .collect();
        for export in exports {
            ok(export.join().unwrap());
        }
        let named: Vec<Option<String>> = entries(&layout).into_iter().map(|e| e.0).collect();
        for name in &names {
            assert!(
                named.contains(&Some(name.clone())),
                "{name} lost: {named:?}"
            );
        }
    }
    assert_eq!(entries(&layout).len(), 1 + 3 * 8);
}

/// A layout that lacks a layer its manifest lists is refused at import,
/// naming the layer, and no image is recorded; with the layer back it
/// imports.
#[test]
fn an_import_of_a_layout_missing_a_layer_fails_naming_it() {
    let work = tempfile::tempdir().unwrap();
    let (digest, layout) = exported_app(work.path());
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let layer_file = layout
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let aside = work.path().join("layer");
    std::fs::rename(&layer_file, &aside).unwrap();
    let root = work.path().join("store");
    let failed = dist(&root, &["import", layout.to_str().unwrap()], b"");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains(&layer) && stderr.contains("not in the layout"),
        "{stderr}"
    );
    let images = ok(dist(&root, &["-q", "images"], b""));
    assert!(!images.contains("app"), "{images}");

    std::fs::rename(&aside, &layer_file).unwrap();
    let imported = ok(dist(&root, &["import", layout.to_str().unwrap()], b""));
    assert!(imported.starts_with("app sha256:"), "{imported}");
}

/// An export of an image whose store lacks a layer fails naming it, before
/// anything is written into the layout, and once the layer is back it
/// exports. A foreign layer, which no fetch stores, is left out instead.
#[test]
fn an_export_of_an_image_missing_a_layer_fails_naming_it_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let builder = work.path().join("builder");
    let digest = build(&builder);
    let (manifest, layer) = manifest_and_layer(&builder, &digest);
    let layer = layer.as_str();
    let bytes = dist(&builder, &["get", layer], b"").stdout;
    ok(dist(&builder, &["delete", layer], b""));

    let layout = work.path().join("layout");
    let failed = dist(
        &builder,
        &["export", &digest, layout.to_str().unwrap()],
        b"",
    );
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let said = stderr(&failed);
    assert!(
        said.contains(&format!(
            "content {layer}: not found, and {digest} needs it"
        )),
        "{said}"
    );
    assert!(!layout.exists(), "nothing is written: {said}");

    ok(dist(&builder, &["ingest", layer], &bytes));
    ok(dist(
        &builder,
        &["export", &digest, layout.to_str().unwrap()],
        b"",
    ));
    assert!(layout.join("index.json").exists());

    // A foreign layer is not in the store (a fetch leaves it where its URLs
    // say) and not in the layout either, as containerd exports it.
    let mut with_foreign = manifest.clone();
    with_foreign["layers"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": sha256_of(b"elsewhere").to_string(),
            "size": 9,
            "urls": ["https://example.com/layer"],
        }),
    );
    let with_foreign = ingest(
        &builder,
        "application/vnd.oci.image.manifest.v1+json",
        with_foreign.to_string().as_bytes(),
    );
    let with_foreign = with_foreign["digest"].as_str().unwrap();
    let foreign_layout = work.path().join("foreign");
    let exported = ok(dist(
        &builder,
        &["export", with_foreign, foreign_layout.to_str().unwrap()],
        b"",
    ));
    assert!(exported.contains("(3 blobs)"), "{exported}");
}

/// A blob that went bad in the store after its commit fails the export,
/// which names the store's copy as corrupt and the way out, and writes it
/// nowhere in the layout (nor an `index.json` naming it), as containerd's
/// exporter checks what it copies.
#[test]
fn an_export_of_a_blob_corrupted_in_the_store_fails_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let digest = build(&root);
    let (_, layer) = manifest_and_layer(&root, &digest);
    let layer = layer.as_str();
    let path = ok(dist(&root, &["path", layer], b""));
    let path = Path::new(path.trim());
    let mut bytes = std::fs::read(path).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(path, bytes).unwrap();

    let layout = work.path().join("layout");
    let failed = dist(&root, &["export", &digest, layout.to_str().unwrap()], b"");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let said = stderr(&failed);
    assert!(
        said.contains(&format!("the store's copy of {layer} is corrupt"))
            && said.contains(&format!("dist delete {layer}")),
        "{said}"
    );
    let hex = layer.strip_prefix("sha256:").unwrap();
    let blobs = layout.join("blobs/sha256");
    assert!(!blobs.join(hex).exists(), "not written under its name");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "no staged copy left");
    assert!(!layout.join("index.json").exists(), "{said}");
}

/// `images check` finds a blob the store has at another size than the
/// manifest gives (its file cut short behind the store's back), and says
/// how to repair it.
#[test]
fn images_check_finds_a_blob_cut_short_in_the_store() {
    let work = tempfile::tempdir().unwrap();
    let builder = work.path().join("builder");
    let digest = build(&builder);
    let layout = work.path().join("layout");
    let layout = layout.to_str().unwrap();
    ok(dist(
        &builder,
        &["export", &digest, layout, "--name", "app"],
        b"",
    ));
    let root = work.path().join("store");
    ok(dist(&root, &["import", layout], b""));
    let check = ok(dist(&root, &["images", "check", "app"], b""));
    assert!(check.contains("app: complete"), "{check}");

    let (_, layer) = manifest_and_layer(&root, &digest);
    let path = ok(dist(&root, &["path", &layer], b""));
    let path = Path::new(path.trim());
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
    let check = dist(&root, &["images", "check", "app"], b"");
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains(&format!("app: incomplete, damaged {layer}")) && out.contains("dist delete"),
        "{out}"
    );
}

/// A layer of several chunks (the export hashes each on a second thread
/// while it copies the next, through a few buffers that go round) is
/// exported byte for byte; a byte changed in a late chunk still fails it.
#[test]
fn a_blob_of_many_chunks_is_exported_whole_and_checked_to_its_end() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    // 7.5 MiB that do not repeat, uncompressed: more chunks than buffers.
    let mut data = Vec::with_capacity(15 << 19);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while data.len() < 15 << 19 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "big", &data[..]).unwrap();
    let digest = build_of(&root, &b.into_inner().unwrap(), false);
    let (_, layer) = manifest_and_layer(&root, &digest);
    let stored = ok(dist(&root, &["path", &layer], b""));
    let stored = Path::new(stored.trim());

    let layout = work.path().join("layout");
    ok(dist(
        &root,
        &["export", &digest, layout.to_str().unwrap()],
        b"",
    ));
    let hex = layer.strip_prefix("sha256:").unwrap();
    let exported = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    assert!(exported == std::fs::read(stored).unwrap(), "byte for byte");

    let mut bytes = std::fs::read(stored).unwrap();
    let late = bytes.len() - 1000;
    bytes[late] ^= 0xff;
    std::fs::write(stored, bytes).unwrap();
    let again = work.path().join("again");
    let failed = dist(&root, &["export", &digest, again.to_str().unwrap()], b"");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(
        stderr(&failed).contains(&format!("the store's copy of {layer} is corrupt")),
        "{}",
        stderr(&failed)
    );
}

/// An image of many layers (blobs are copied a few at a time), one of them
/// twice, is exported blob for blob; with two of its layers corrupted in
/// the store, the export fails naming one, leaves no staged copy, and
/// writes no `index.json`.
#[test]
fn an_image_of_many_layers_is_exported_blob_for_blob_and_fails_whole() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    let tars: Vec<Vec<u8>> = (0..7u8)
        .map(|i| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(300_000);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            let data = vec![i; 300_000];
            b.append_data(&mut h, format!("layer{i}"), &data[..])
                .unwrap();
            b.into_inner().unwrap()
        })
        .collect();
    let mut layers: Vec<(&[u8], bool)> = tars.iter().map(|t| (&t[..], false)).collect();
    layers.push((&tars[2][..], false));
    let digest = build_layers(&root, &layers);
    let manifest: serde_json::Value =
        serde_json::from_slice(&dist(&root, &["get", &digest], b"").stdout).unwrap();
    let mut digests: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    digests.push(manifest["config"]["digest"].as_str().unwrap().to_string());
    digests.push(digest.clone());

    let layout = work.path().join("layout");
    ok(dist(
        &root,
        &["export", &digest, layout.to_str().unwrap()],
        b"",
    ));
    let stored = |digest: &str| {
        let path = ok(dist(&root, &["path", digest], b""));
        std::path::PathBuf::from(path.trim())
    };
    let blobs = layout.join("blobs/sha256");
    for digest in &digests {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let exported = std::fs::read(blobs.join(hex)).unwrap();
        assert!(
            exported == std::fs::read(stored(digest)).unwrap(),
            "{digest}"
        );
    }
    assert_eq!(
        std::fs::read_dir(&blobs).unwrap().count(),
        9,
        "7 layers, config, manifest"
    );

    for layer in [&digests[1], &digests[5]] {
        let path = stored(layer);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }
    let again = work.path().join("again");
    let failed = dist(&root, &["export", &digest, again.to_str().unwrap()], b"");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let said = stderr(&failed);
    assert!(
        [&digests[1], &digests[5]]
            .iter()
            .any(|l| said.contains(&format!("the store's copy of {l} is corrupt"))),
        "{said}"
    );
    let blobs = again.join("blobs/sha256");
    let names: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with('.')),
        "no staged copy left: {names:?}"
    );
    for layer in [&digests[1], &digests[5]] {
        let hex = layer.strip_prefix("sha256:").unwrap();
        assert!(
            !names.iter().any(|n| n == hex),
            "{layer} not written under its name"
        );
    }
    assert!(!again.join("index.json").exists(), "{said}");
}

/// A `rootfs --copy` dropped by `--timeout` (as by a signal) while it
/// copies leaves no DEST, though its copy ran on to the end: the command
/// says it failed, so a retry must find nothing there. Its staging
/// directory goes too.
#[test]
fn a_copy_dropped_while_it_copies_leaves_no_dest() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("store");
    // Many files: a copy long enough to be dropped in the middle.
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..2500 {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(4096);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        let data = [(i % 251) as u8; 4096];
        b.append_data(&mut h, format!("d{}/f{i}", i % 25), &data[..])
            .unwrap();
    }
    let digest = build_of(&root, &b.into_inner().unwrap(), false);
    let copy = |dest: &str, extra: &[&str]| {
        let dest = work.path().join(dest);
        let mut args = extra.to_vec();
        args.extend(["rootfs", "--copy", &digest, dest.to_str().unwrap()]);
        let started = std::time::Instant::now();
        (dist(&root, &args, b""), started.elapsed())
    };
    // Unpacked by the first; the second is a copy alone, timed.
    ok(copy("first", &[]).0);
    let (whole, took) = copy("second", &[]);
    ok(whole);
    // Dropped halfway through a copy as long as the second; one that ran
    // faster (a warmer cache) and finished is removed, and dropped sooner.
    let mut timeout = took / 2;
    let dropped = loop {
        let limit = format!("{}ms", timeout.as_millis().max(1));
        let (out, _) = copy("third", &["--timeout", &limit]);
        if out.status.success() && timeout.as_millis() > 1 {
            std::fs::remove_dir_all(work.path().join("third")).unwrap();
            timeout /= 2;
            continue;
        }
        break out;
    };
    assert_eq!(dropped.status.code(), Some(1), "{dropped:?}");
    let said = stderr(&dropped);
    assert!(said.contains("--timeout"), "{said}");
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.contains("third"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "copied in {took:?}: {said}");
}
