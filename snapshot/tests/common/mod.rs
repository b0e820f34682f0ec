//! Layer builders and tree inspection shared by the snapshot tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One tar entry to write.
pub enum Entry<'a> {
    Dir(&'a str, u32),
    OwnedDir(&'a str, u32, u32, u32),
    File(&'a str, &'a [u8], u32),
    Owned(&'a str, &'a [u8], u32, u32, u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    /// A hardlink whose own header gives this mode and modification time.
    LinkAs(&'a str, &'a str, u32, u64),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
    Xattr(&'a str, &'a [u8], &'a str, &'a [u8]),
    /// Any entry, preceded by a PAX record giving it the xattr `key`.
    WithXattr(Box<Entry<'a>>, &'a str, &'a [u8]),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A plain tar of `entries`.
pub fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append(&mut b, e);
    }
    b.into_inner().unwrap()
}

fn append(b: &mut tar::Builder<Vec<u8>>, e: &Entry<'_>) {
    {
        match e {
            Entry::Dir(name, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            Entry::OwnedDir(name, mode, uid, gid) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                h.set_uid(*uid as u64);
                h.set_gid(*gid as u64);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            Entry::File(name, data, mode) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            Entry::Owned(name, data, mode, uid, gid) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                h.set_uid(*uid as u64);
                h.set_gid(*gid as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            Entry::Symlink(name, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, name, target).unwrap();
            }
            Entry::Link(name, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, name, target).unwrap();
            }
            Entry::LinkAs(name, target, mode, mtime) => {
                let mut h = header(tar::EntryType::Link, *mode, 0);
                h.set_mtime(*mtime);
                b.append_link(&mut h, name, target).unwrap();
            }
            Entry::Char(name, major, minor) => {
                let mut h = header(tar::EntryType::Char, 0o666, 0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            Entry::Fifo(name) => {
                let mut h = header(tar::EntryType::Fifo, 0o644, 0);
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
            Entry::Xattr(name, data, key, value) => {
                let record = format!("SCHILY.xattr.{key}");
                b.append_pax_extensions([(record.as_str(), *value)])
                    .unwrap();
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            Entry::WithXattr(inner, key, value) => {
                let record = format!("SCHILY.xattr.{key}");
                b.append_pax_extensions([(record.as_str(), *value)])
                    .unwrap();
                append(b, inner);
            }
        }
    }
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One line per entry under `root`: type, mode, owner, size or target, content hash.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// [`tree`] with what else a copy keeps: each entry's mtime and `user.*`
/// xattrs.
pub fn full_tree(root: &Path) -> BTreeMap<String, String> {
    tree(root)
        .into_iter()
        .map(|(rel, line)| {
            let path = root.join(&rel);
            let m = std::fs::symlink_metadata(&path).unwrap();
            let xattrs = user_xattrs(&path);
            let line = format!("{line} mtime={}.{}{xattrs}", m.mtime(), m.mtime_nsec());
            (rel, line)
        })
        .collect()
}

/// [`tree`] with each entry's `user.*` xattrs.
pub fn xattr_tree(root: &Path) -> BTreeMap<String, String> {
    tree(root)
        .into_iter()
        .map(|(rel, line)| {
            let xattrs = user_xattrs(&root.join(&rel));
            (rel, format!("{line}{xattrs}"))
        })
        .collect()
}

/// ` name=value` for each `user.*` xattr of `path` (not followed).
fn user_xattrs(path: &Path) -> String {
    let mut names = vec![0u8; 1024];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut xattrs = String::new();
    for name in names[..n].split(|b| *b == 0) {
        let name = String::from_utf8_lossy(name);
        if name.starts_with("user.") {
            let mut value = vec![0u8; 1024];
            let n = rustix::fs::lgetxattr(path, &*name, &mut value[..]).unwrap();
            xattrs += &format!(" {name}={}", String::from_utf8_lossy(&value[..n]));
        }
    }
    xattrs
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("symlink->{}", std::fs::read_link(&path).unwrap().display())
        } else if ft.is_file() {
            format!(
                "file:{}",
                String::from_utf8_lossy(&std::fs::read(&path).unwrap())
            )
        } else if ft.is_char_device() {
            format!("char:{}", m.rdev())
        } else if ft.is_fifo() {
            "fifo".into()
        } else {
            "other".into()
        };
        out.insert(
            rel,
            format!("{what} {:o} {}:{}", m.mode() & 0o7777, m.uid(), m.gid()),
        );
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

/// Writes `bytes` into `store`; returns its descriptor as JSON.
#[allow(dead_code)] // Not every test crate that shares this module uses it.
pub async fn put(
    store: &ocidist_content::local::LocalStore,
    media_type: &str,
    bytes: &[u8],
) -> serde_json::Value {
    use ocidist_content::{Labels, WriterOpts, sha256_of, write_blob};
    let digest = sha256_of(bytes);
    write_blob(
        store,
        WriterOpts::new(format!("test-{digest}")),
        bytes,
        Labels::new(),
    )
    .await
    .unwrap();
    serde_json::json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()})
}

/// Writes an OCI image manifest of `config` and `layers` (descriptors
/// [`put`] returned) into `store`; returns its descriptor.
#[allow(dead_code)] // Not every test crate that shares this module uses it.
pub async fn put_manifest(
    store: &ocidist_content::local::LocalStore,
    config: serde_json::Value,
    layers: Vec<serde_json::Value>,
) -> ocidist_content::Descriptor {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let desc = put(
        store,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    )
    .await;
    serde_json::from_value(desc).unwrap()
}

/// Writes an OCI image of the given uncompressed layer tars (gzipped) into
/// `store`; returns the manifest's descriptor.
pub async fn store_image(
    store: &ocidist_content::local::LocalStore,
    tars: &[Vec<u8>],
) -> ocidist_content::Descriptor {
    use ocidist_content::sha256_of;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in tars {
        layers.push(
            put(
                store,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &gzip(tar),
            )
            .await,
        );
        diff_ids.push(sha256_of(tar).to_string());
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {}
    });
    let config = put(
        store,
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(&config).unwrap(),
    )
    .await;
    put_manifest(store, config, layers).await
}
