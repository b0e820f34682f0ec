//! `dist export` writes OCI layouts that skopeo and umoci read; `dist import`
//! reads layouts that skopeo wrote.

mod common;

use std::path::Path;
use std::process::Command;

use common::{dist, gzip, ingest, ok};
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
    let layer = ingest(
        root,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gzip(&tar),
    );
    let config = serde_json::json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256_of(&tar).to_string()]},
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
        "layers": [layer],
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
