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
    let chain = first
        .lines()
        .find_map(|l| l.strip_prefix("unpacked: "))
        .unwrap_or_else(|| panic!("{first}"));
    let again = ok(dist(&direct, &["unpack", &layout], b""));
    assert!(
        again.contains("already unpacked") && again.contains(&format!("unpacked: {chain}")),
        "{again}"
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
}
