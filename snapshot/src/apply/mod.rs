//! Applying a layer: a (compressed) tar stream written into a directory.
//!
//! [`apply_layer`] decompresses while it reads, hashes the uncompressed tar as
//! it goes (the result is the layer's *diff ID*), and writes each entry with
//! the path resolved beneath the target (see `resolve`): symlinks, hardlinks,
//! whiteouts and `..` cannot reach outside it. What a layer can hold:
//!
//! - regular files (sparse ones stay sparse: GNU's old format, and PAX
//!   sparse files of GNU's formats 0.0, 0.1 and 1.0), directories,
//!   symlinks, hardlinks, character and block devices, fifos;
//! - owners, modes with setuid/setgid/sticky (set after the owner, never on a
//!   symlink), `SCHILY.xattr.*` extended attributes, modification times
//!   (directories last, so their children do not change them);
//! - whiteouts: `.wh.NAME` deletes `NAME`, `.wh..wh..opq` empties its
//!   directory of everything lower layers put there. Applied to a
//!   [`ApplyTarget::Tree`] they delete; applied to an
//!   [`ApplyTarget::OverlayUpper`] they are recorded as overlayfs does (a 0/0
//!   character device; the `overlay.opaque` xattr). There a layer's own 0/0
//!   character device is a whiteout too, since overlayfs cannot tell them
//!   apart (with a warning).
//!
//! Without root, device nodes and ownership are skipped with a warning.

use std::cell::Cell;
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::ops::Bound;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc;

use ocidist_content::{Digester, Report};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};

use crate::mount::ApplyTarget;
use crate::{Error, Result};

mod copy_up;
mod decompress;
mod resolve;
mod sparse;

pub(crate) use resolve::LowersReady;

pub use decompress::Compression;

/// What applying a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the uncompressed tar: the layer's diff ID.
    pub diff_id: oci_spec::image::Digest,
    /// Bytes of uncompressed tar read.
    pub tar_size: u64,
    /// Entries in the tar.
    pub entries: u64,
    /// Things skipped, once per kind (device nodes or owners without root,
    /// extended attributes the target does not take).
    pub warnings: Vec<String>,
}

/// Options for [`apply_layer`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Set owners and create device nodes. Defaults to whether we run as root.
    pub privileged: bool,
    /// The xattr that marks an opaque directory in overlay mode.
    pub opaque_xattr: String,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            privileged: rustix::process::geteuid().is_root(),
            opaque_xattr: crate::overlay::opaque_xattr().to_string(),
        }
    }
}

/// Applies the layer in `reader` (gzip, zstd or plain, as its first bytes
/// show, whatever `media_type` says, as containerd decides) to `target`,
/// on a blocking thread. Returns the diff ID.
///
/// ```
/// use ocidist_snapshot::apply::{apply_layer, ApplyOptions};
/// use ocidist_snapshot::mount::ApplyTarget;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut tar = tar::Builder::new(Vec::new());
/// let mut header = tar::Header::new_gnu();
/// header.set_size(5);
/// header.set_mode(0o644);
/// tar.append_data(&mut header, "etc/greeting", &b"hello"[..])?;
/// let layer = tar.into_inner()?;
///
/// let root = tempfile::tempdir()?;
/// let target = ApplyTarget::Tree(root.path().to_path_buf());
/// let applied = apply_layer(&target, std::io::Cursor::new(layer.clone()), None, ApplyOptions::default()).await?;
/// assert_eq!(applied.diff_id, ocidist_content::sha256_of(&layer));
/// assert_eq!(std::fs::read(root.path().join("etc/greeting"))?, b"hello");
/// # Ok(())
/// # }
/// ```
pub async fn apply_layer<R>(
    target: &ApplyTarget,
    reader: R,
    media_type: Option<&str>,
    options: ApplyOptions,
) -> Result<Applied>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    apply_layer_over(target, reader, media_type, options, None).await
}

/// [`apply_layer`] into a writable snapshot's mounts, whatever they are,
/// as containerd's applier takes them: a writable bind mount or an overlay
/// with an upper directory is written directly
/// ([`ApplyTarget::from_mounts`]); anything else (a block device, a
/// filesystem of a snapshotter's own) through a private temporary mount of
/// it ([`with_temp_mount`](crate::mount::with_temp_mount)), as a whole tree
/// where whiteouts delete.
pub async fn apply_layer_to_mounts<R>(
    mounts: &[crate::Mount],
    reader: R,
    media_type: Option<&str>,
    options: ApplyOptions,
) -> Result<Applied>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    if let Ok(target) = ApplyTarget::from_mounts(mounts) {
        return apply_layer(&target, reader, media_type, options).await;
    }
    let mounts = mounts.to_vec();
    apply_blocking(reader, media_type, move |reader, compression| {
        crate::mount::with_temp_mount(&mounts, |root| {
            let target = ApplyTarget::Tree(root.to_path_buf());
            apply(&target, reader, compression, &options, None)
        })?
    })
    .await
}

/// [`apply_layer`] onto lowers that may still be being written: the first
/// look at them (a parent the layer does not list, a whiteout in a directory
/// only they have) waits for `lowers_ready`.
pub(crate) async fn apply_layer_over<R>(
    target: &ApplyTarget,
    reader: R,
    media_type: Option<&str>,
    options: ApplyOptions,
    lowers_ready: Option<LowersReady>,
) -> Result<Applied>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    let target = target.clone();
    apply_blocking(reader, media_type, move |reader, compression| {
        apply(&target, reader, compression, &options, lowers_ready)
    })
    .await
}

/// Runs `apply_with` on a blocking thread, with `reader` made blocking and
/// the compression `media_type` names.
async fn apply_blocking<R>(
    reader: R,
    media_type: Option<&str>,
    apply_with: impl FnOnce(tokio_util::io::SyncIoBridge<R>, Option<Compression>) -> Result<Applied>
    + Send
    + 'static,
) -> Result<Applied>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let compression = media_type.and_then(Compression::from_media_type);
    tokio::task::spawn_blocking(move || apply_with(reader, compression))
        .await
        .map_err(|e| Error::Layer(format!("apply task: {e}")))?
}

/// [`apply_layer`] on the calling thread, from a blocking reader; the
/// stream's first bytes decide its compression, `compression` only that of
/// an empty stream.
pub fn apply_layer_sync(
    target: &ApplyTarget,
    reader: impl Read + Send,
    compression: Option<Compression>,
    options: &ApplyOptions,
) -> Result<Applied> {
    apply(target, reader, compression, options, None)
}

fn apply(
    target: &ApplyTarget,
    reader: impl Read + Send,
    compression: Option<Compression>,
    options: &ApplyOptions,
    lowers_ready: Option<LowersReady>,
) -> Result<Applied> {
    let mut tar = decompress::decompressed(reader, compression)?;
    // Two stages on two threads: this one parses the tar and writes the
    // files; the other decompresses and hashes (the diff ID) ahead of it.
    std::thread::scope(|scope| {
        let (chunks_tx, chunks_rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(CHUNKS_AHEAD);
        let (spent_tx, spent_rx) = mpsc::channel::<Vec<u8>>();
        let producer = std::thread::Builder::new()
            .name("layer-inflate".into())
            .spawn_scoped(scope, move || {
                produce_chunks(&mut tar, &chunks_tx, &spent_rx)
            })
            .map_err(|e| Error::Layer(format!("start the decompressing thread: {e}")))?;
        let chunks = ChunkReader {
            chunks: chunks_rx,
            spent: spent_tx,
            current: Vec::new(),
            position: 0,
        };
        let written = write_entries(target, chunks, options, lowers_ready);
        // The producer stops once the reader is gone (its sends fail).
        let (diff_id, tar_size) = producer
            .join()
            .map_err(|_| Error::Layer("the decompressing thread panicked".into()))?;
        let (entries, warnings) = written?;
        Ok(Applied {
            diff_id,
            tar_size,
            entries,
            warnings,
        })
    })
}

/// How many decompressed chunks may wait for the tar reader.
const CHUNKS_AHEAD: usize = 4;
/// The size of a decompressed chunk.
const CHUNK_SIZE: usize = 256 * 1024;

/// Decompresses `tar` into chunks, hashing them, until its end or until the
/// reader hangs up; returns the diff ID and the byte count.
fn produce_chunks(
    tar: &mut dyn Read,
    chunks: &mpsc::SyncSender<io::Result<Vec<u8>>>,
    spent: &mpsc::Receiver<Vec<u8>>,
) -> (oci_spec::image::Digest, u64) {
    let mut hasher = Digester::sha256();
    let mut count = 0u64;
    loop {
        let mut chunk = spent.try_recv().unwrap_or_default();
        chunk.resize(CHUNK_SIZE, 0);
        let mut filled = 0;
        let result = loop {
            match tar.read(&mut chunk[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == chunk.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        chunk.truncate(filled);
        hasher.update(&chunk);
        count += filled as u64;
        // What came before an error goes first: the tar reader then fails
        // where the stream did (past the archive's end, for bytes trailing
        // a compressed stream), not on an entry whose data was held back.
        if filled > 0 && chunks.send(Ok(chunk)).is_err() {
            break;
        }
        match result {
            Ok(()) if filled > 0 => {}
            Ok(()) => break,
            Err(e) => {
                let _ = chunks.send(Err(e));
                break;
            }
        }
    }
    (hasher.digest(), count)
}

/// Reads the chunks the decompressing thread sends, returning each spent
/// buffer for reuse.
struct ChunkReader {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    spent: mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    position: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    let spent = std::mem::replace(&mut self.current, chunk);
                    let _ = self.spent.send(spent);
                    self.position = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The producer is done: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// The most the tar parser may read between two entries: headers, PAX
/// records, GNU long names. Go's `archive/tar` (containerd's) refuses a PAX
/// record or long name over 1 MiB; without a bound, a 4.6 MB gzipped layer
/// made the parser buffer a 1 GiB PAX record.
const MAX_TAR_METADATA: u64 = 4 << 20;

/// The longest xattr name Linux takes (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;

/// The most a layer's sparse files may add up to, holes included. The `tar`
/// crate hands out a GNU sparse file's holes as zeros to read (Go's
/// `archive/tar` seeks over them), so a 10 KB layer declaring a 16 TiB file,
/// or many of 64 GiB, would keep an unpack busy for hours; this bounds that
/// to seconds. PAX sparse files, whose holes are skipped, count too: one
/// bound for all sparse files.
const MAX_SPARSE_SIZE: u64 = 64 << 30;

/// The tar stream as the parser reads it: while its budget is set, it fails
/// once the budget is spent; and a stream that ends inside the padding after
/// an entry's data reads as if the padding were there.
struct Budgeted<R> {
    inner: R,
    budget: Rc<Cell<Option<u64>>>,
    /// Bytes handed to the parser so far.
    position: Rc<Cell<u64>>,
    /// Where the padding after the last entry read whole ends. Go's
    /// `archive/tar` (containerd's, umoci's) takes a stream that ends before
    /// it as a tar without its end blocks, and some writers make such layers
    /// (Debian's umoci 0.4.7 does); they end there as cleanly here.
    padding_end: Rc<Cell<u64>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let limit = match self.budget.get() {
            None => buf.len(),
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "headers and extension records of one entry over {} MiB",
                        MAX_TAR_METADATA >> 20
                    ),
                ));
            }
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
        };
        let mut n = self.inner.read(&mut buf[..limit])?;
        let position = self.position.get();
        if n == 0 && limit > 0 && position < self.padding_end.get() {
            // Zeros the digests never see: they hash the stream upstream.
            let missing = self.padding_end.get() - position;
            n = limit.min(usize::try_from(missing).unwrap_or(usize::MAX));
            buf[..n].fill(0);
        }
        self.position.set(position + n as u64);
        if let Some(left) = self.budget.get() {
            self.budget.set(Some(left - n as u64));
        }
        Ok(n)
    }
}

/// Parses the tar from `tar` and writes its entries under `target`, then
/// reads it to its end (the diff ID covers the padding too); returns the
/// entry count and the warnings.
fn write_entries(
    target: &ApplyTarget,
    tar: impl Read,
    options: &ApplyOptions,
    lowers_ready: Option<LowersReady>,
) -> Result<(u64, Vec<String>)> {
    let (root, lowers, overlay): (&Path, &[PathBuf], bool) = match target {
        ApplyTarget::Tree(root) => (root, &[], false),
        ApplyTarget::OverlayUpper { upper, lowers } => (upper, lowers, true),
    };
    let skipped_xattrs = Rc::new(Cell::new(0));
    let clock = Rc::new(Cell::new(0));
    let mut applier = Applier {
        root: resolve::Root::open(
            root,
            lowers,
            lowers_ready,
            options.privileged,
            overlay.then_some(options.opaque_xattr.as_str()),
            Rc::clone(&skipped_xattrs),
            Rc::clone(&clock),
        )?,
        overlay,
        tree_root: (!overlay).then(|| root.to_path_buf()),
        options: options.clone(),
        created: BTreeSet::new(),
        dir_times: Vec::new(),
        removed: resolve::Removals::new(Rc::clone(&clock)),
        clock,
        whiteouts: Vec::new(),
        buffer: vec![0u8; 256 * 1024],
        skipped_devices: 0,
        whiteout_devices: 0,
        skipped_xattrs,
        dropped_xattrs: 0,
        entries: 0,
        sparse_size: 0,
        root_listed: false,
        own_link_inodes: HashSet::new(),
        link_copies: 0,
        link_meta_skipped: 0,
    };
    let budget = Rc::new(Cell::new(None));
    let position = Rc::new(Cell::new(0));
    let padding_end = Rc::new(Cell::new(0));
    let mut archive = tar::Archive::new(Budgeted {
        inner: tar,
        budget: budget.clone(),
        position: position.clone(),
        padding_end: padding_end.clone(),
    });
    {
        let mut entries = archive.entries().map_err(tar_error)?;
        // The last entry's name (one buffer, reused): the parser's errors
        // name none, and a layer cut short fails on the header after it.
        let mut last: Vec<u8> = Vec::new();
        let after = |last: &[u8], e: Error| match e {
            Error::Layer(message) if !last.is_empty() => {
                let name: &OsStr = std::os::unix::ffi::OsStrExt::from_bytes(last);
                Error::Layer(format!("{message} (after entry {name:?})"))
            }
            e => e,
        };
        loop {
            // The parser reads headers and extension records on its own;
            // entry data is read below, outside the budget.
            budget.set(Some(MAX_TAR_METADATA));
            let next = entries.next();
            budget.set(None);
            let Some(entry) = next else {
                break;
            };
            let mut entry = entry.map_err(|e| after(&last, tar_error(e)))?;
            last.clear();
            last.extend_from_slice(&entry.path_bytes());
            // Lookups through symlinks may work in proportion to the bytes
            // read so far.
            applier
                .root
                .allow_work_for(entry.raw_header_position() + 512);
            applier.entry(&mut entry, &mut last)?;
            // Data an entry's kind has no use for (a directory's, say).
            io::copy(&mut entry, &mut io::sink())
                .map_err(|e| after(&last, Error::Layer(format!("read: {}", Report::new(&e)))))?;
            // Its data read whole: its padding ends at the next block.
            padding_end.set(position.get().next_multiple_of(512));
        }
    }
    applier.drop_needless_whiteouts()?;
    applier.inherit_root()?;
    applier.finish_dirs()?;
    // The tar may end with padding the entry reader never asked for; the
    // diff ID covers every byte.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| {
        let e = Report::new(&e);
        Error::Layer(format!("read past the tar archive's end: {e}"))
    })?;
    let mut warnings = Vec::new();
    if applier.skipped_devices > 0 {
        warnings.push(format!(
            "{} skipped: creating them needs root outside a user namespace",
            counted(applier.skipped_devices, "device node", "device nodes")
        ));
    }
    if applier.whiteout_devices > 0 {
        warnings.push(format!(
            "{} made whiteouts: overlayfs reads one as the deletion of its name \
             from the layers below, and cannot hold it as a device",
            counted(
                applier.whiteout_devices,
                "character device 0/0",
                "character devices 0/0"
            )
        ));
    }
    if applier.skipped_xattrs.get() > 0 {
        warnings.push(format!(
            "{} skipped: the filesystem or the entry's kind does not take them",
            counted(
                applier.skipped_xattrs.get(),
                "extended attribute",
                "extended attributes"
            )
        ));
    }
    if applier.dropped_xattrs > 0 {
        warnings.push(format!(
            "{} in the layer not applied: trusted.* (the host administrator's) \
             and overlayfs's own (user.overlay.*) are never set from a layer",
            counted(
                applier.dropped_xattrs,
                "extended attribute",
                "extended attributes"
            )
        ));
    }
    if applier.link_meta_skipped > 0 {
        warnings.push(format!(
            "{} not applied to the files they link to: over {MAX_LINK_COPIES} \
             files of one layer would need copies of their own",
            counted(
                applier.link_meta_skipped,
                "hardlink's own metadata",
                "hardlinks' own metadata"
            )
        ));
    }
    if !options.privileged {
        warnings.push("owners not set: changing them needs root".into());
    }
    Ok((applier.entries, warnings))
}

/// `n` and the noun for that many.
fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The NUL-separated xattr names `list` (a `*listxattr(2)`) gives: their
/// size asked with `query` first, since most entries have none; none where
/// the filesystem has no xattrs.
fn xattr_names(
    query: impl Fn() -> rustix::io::Result<usize>,
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Vec<u8>> {
    loop {
        let size = match query() {
            Ok(size) => size,
            Err(rustix::io::Errno::NOTSUP) => 0,
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut names = vec![0u8; size];
        match list(&mut names) {
            Ok(n) => {
                names.truncate(n);
                return Ok(names);
            }
            // One was added in between: ask again.
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Extended attributes: name, value.
type Xattrs = Vec<(String, Vec<u8>)>;

/// What a directory gets after its children: its mode (without root) and times.
struct DirTimes {
    mode: u32,
    times: Timestamps,
}

/// Metadata of one entry, with PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    atime: Timespec,
    xattrs: Xattrs,
    /// Xattrs the entry carried that a layer never sets
    /// ([`NEVER_FROM_A_LAYER`]), not applied.
    dropped_xattrs: u64,
}

/// overlayfs's own xattrs (`redirect`, `opaque`, `origin`, `metacopy`...):
/// from a layer they would steer the mount, so that the rootfs differed from
/// what the layers say; they are never applied. (An opaque directory is said
/// with `.wh..wh..opq`.)
const OVERLAY_PRIVATE: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// Xattr namespaces a layer's entries never set: `trusted.*`, the host
/// administrator's (overlayfs's own among them; containerd refuses every
/// one from an archive: "admin attributes from archive not supported"),
/// and overlayfs's own in `user.*` (see [`OVERLAY_PRIVATE`]).
const NEVER_FROM_A_LAYER: [&str; 2] = ["trusted.", "user.overlay."];

/// A PAX time (`[-]seconds[.fraction]`): the sign applies to the fraction
/// too, as Go's archive/tar reads it (`-1.5` is 1.5 s before the epoch).
fn parse_time(value: &str) -> Option<Timespec> {
    let (negative, magnitude) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let (secs, frac) = magnitude.split_once('.').unwrap_or((magnitude, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = String::from(frac);
    nanos.truncate(9);
    while nanos.len() < 9 {
        nanos.push('0');
    }
    let nanos: i64 = nanos.parse().ok()?;
    let (tv_sec, tv_nsec) = match (negative, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, _) => (-secs - 1, 1_000_000_000 - nanos),
    };
    Some(Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}

/// The highest owner a layer may give: `(uid_t)-1` means "no change" to
/// `chown`, and a wider number would be cut to another owner.
const MAX_OWNER_ID: u64 = u32::MAX as u64 - 1;

/// An entry's owner `id` (`what`: uid or gid), refused past [`MAX_OWNER_ID`]
/// rather than cut down to another (root, for 2³²).
fn owner_id(id: u64, what: &str, rel: &Path) -> Result<u32> {
    match u32::try_from(id) {
        Ok(id) if u64::from(id) <= MAX_OWNER_ID => Ok(id),
        _ => Err(Error::Layer(format!(
            "entry {:?}: {what} {id} is no owner (0 to {MAX_OWNER_ID})",
            rel.display()
        ))),
    }
}

/// A numeric field in GNU's base-256 form (its first byte's high bit set),
/// read as Go's archive/tar reads it: the next bit is the sign, and the
/// number is big-endian two's complement. `None` past 64 bits.
fn signed_base256(field: &[u8]) -> Option<i64> {
    let sign_fill = if field.first()? & 0x40 != 0 { 0xff } else { 0 };
    let mut magnitude: u64 = 0;
    for (i, byte) in field.iter().enumerate() {
        let mut byte = byte ^ sign_fill;
        if i == 0 {
            byte &= 0x7f;
        }
        if magnitude >> 56 != 0 {
            return None;
        }
        magnitude = magnitude << 8 | u64::from(byte);
    }
    let magnitude = i64::try_from(magnitude).ok()?;
    Some(if sign_fill == 0xff {
        !magnitude
    } else {
        magnitude
    })
}

/// Reads an entry's metadata (`rel`, its cleaned name, for errors). A PAX
/// record that does not parse, or a number no file can have, is refused,
/// as Go's archive/tar (containerd's) refuses the former: skipped, it would
/// leave the header's value in its place.
fn meta_of<R: Read>(entry: &mut tar::Entry<'_, R>, rel: &Path) -> Result<Meta> {
    let header = entry.header();
    let bad = |what: &str, e: io::Error| {
        Error::Layer(format!(
            "entry {:?}: bad {what}: {}",
            rel.display(),
            Report::new(&e)
        ))
    };
    // An empty numeric field is 0, as GNU tar and Go's archive/tar read it.
    let number = |value: io::Result<u64>, raw: &[u8], what: &str| match value {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(e) => Err(bad(what, e)),
    };
    let old = header.as_old();
    let past_any_time = |seconds: &dyn std::fmt::Display| {
        Error::Layer(format!(
            "entry {:?}: mtime {seconds} is past any time a file can have",
            rel.display()
        ))
    };
    // GNU tar writes a time before 1970 in base-256, which is signed.
    let tv_sec = if old.mtime[0] & 0x80 != 0 {
        signed_base256(&old.mtime).ok_or_else(|| past_any_time(&"in base-256"))?
    } else {
        let seconds = number(header.mtime(), &old.mtime, "mtime")?;
        i64::try_from(seconds).map_err(|_| past_any_time(&seconds))?
    };
    let mtime = Timespec { tv_sec, tv_nsec: 0 };
    let mut meta = Meta {
        mode: number(header.mode().map(u64::from), &old.mode, "mode")? as u32 & 0o7777,
        uid: owner_id(number(header.uid(), &old.uid, "uid")?, "uid", rel)?,
        gid: owner_id(number(header.gid(), &old.gid, "gid")?, "gid", rel)?,
        mtime,
        atime: mtime,
        xattrs: Vec::new(),
        dropped_xattrs: 0,
    };
    let bad_record = |key: &str, value: &[u8], is: &str| {
        Error::Layer(format!(
            "entry {:?}: PAX {key} {:?} is {is}",
            rel.display(),
            String::from_utf8_lossy(value)
        ))
    };
    let pax_time = |key: &str, value: &[u8]| {
        std::str::from_utf8(value)
            .ok()
            .and_then(parse_time)
            .ok_or_else(|| bad_record(key, value, "no time (seconds since 1970)"))
    };
    let pax_owner = |key: &str, value: &[u8]| {
        let id = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| bad_record(key, value, "no owner (a number, 0 or more)"))?;
        owner_id(id, key, rel)
    };
    let mut atime = None;
    let mut framing: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(|e| bad("PAX header", e))? {
        for ext in pax {
            let ext = ext.map_err(|e| bad("PAX record", e))?;
            let Ok(key) = ext.key() else { continue };
            let value = ext.value_bytes();
            match key {
                // What frames the entry and names it: the `tar` crate takes
                // a key's first record and skips a size that does not parse,
                // Go's reader the last and refuses it, so a layer relying on
                // either would be two trees; an empty name is the header's
                // to Go, the root to the crate.
                "size" | "path" | "linkpath" => {
                    if let Some((_, first)) = framing.iter().find(|(k, _)| *k == key) {
                        if first != value {
                            return Err(bad_record(
                                key,
                                value,
                                "given twice, differing: tar readers take different ones",
                            ));
                        }
                    } else {
                        framing.push((key, value.to_vec()));
                    }
                    let valid = match key {
                        "size" => std::str::from_utf8(value)
                            .is_ok_and(|v| v.parse::<i64>().is_ok_and(|n| n >= 0)),
                        _ => !value.is_empty(),
                    };
                    if !valid {
                        return Err(bad_record(key, value, "not one tar readers agree on"));
                    }
                }
                "mtime" => meta.mtime = pax_time(key, value)?,
                "atime" => atime = Some(pax_time(key, value)?),
                "uid" => meta.uid = pax_owner(key, value)?,
                "gid" => meta.gid = pax_owner(key, value)?,
                _ => {
                    if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                        // The kernel's own answer (ERANGE) would name no
                        // cause.
                        if name.is_empty() || name.len() > XATTR_NAME_MAX {
                            return Err(Error::Layer(format!(
                                "entry {:?}: an xattr name of {} bytes (1 to \
                                 {XATTR_NAME_MAX} are allowed)",
                                rel.display(),
                                name.len()
                            )));
                        }
                        if NEVER_FROM_A_LAYER.iter().any(|p| name.starts_with(p)) {
                            meta.dropped_xattrs += 1;
                        } else {
                            meta.xattrs
                                .push((name.to_string(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
    }
    meta.atime = atime.unwrap_or(meta.mtime);
    Ok(meta)
}

struct Applier {
    root: resolve::Root,
    overlay: bool,
    /// The tree's path, when the target is a whole tree.
    tree_root: Option<PathBuf>,
    options: ApplyOptions,
    /// Paths this layer wrote, with no symlink in them: an opaque whiteout
    /// spares them.
    created: BTreeSet<PathBuf>,
    /// Directory times, set last so their children do not change them.
    /// With each directory's device and inode, so that one a later entry
    /// replaced (by a symlink, say) is told apart.
    /// And when it was noted (`clock`).
    /// Only the mode and times are kept: a directory's xattrs (up to 4 MiB
    /// each) are set already, and would pile up over a layer's directories.
    dir_times: Vec<(PathBuf, DirTimes, (u64, u64), u64)>,
    /// Orders notes about directories (`dir_times`, the root's
    /// `pending_modes`) against directories' removals.
    clock: Rc<Cell<u64>>,
    removed: resolve::Removals,
    /// Whiteouts made on an overlay upper directory, to be checked at the
    /// end against what the lowers show.
    whiteouts: Vec<PathBuf>,
    buffer: Vec<u8>,
    skipped_devices: u64,
    /// The layer's own 0/0 character devices made whiteouts on an overlay
    /// upper directory.
    whiteout_devices: u64,
    /// Extended attributes the target refused in ways containerd tolerates
    /// (shared with `root`, which copies them onto the parents it makes).
    skipped_xattrs: Rc<Cell<u64>>,
    /// overlayfs xattrs the layer carried, never applied.
    dropped_xattrs: u64,
    entries: u64,
    /// The sizes of the layer's sparse files so far, holes included.
    sparse_size: u64,
    /// The layer listed the root directory (`./`), setting its owner and mode.
    root_listed: bool,
    /// Inodes of a tree that are this layer's own (device, inode): the
    /// regular files it wrote, and copies it gave inodes shared with the
    /// parent snapshot for a hardlink entry's metadata.
    own_link_inodes: HashSet<(u64, u64)>,
    /// Inodes given copies of their own for hardlink entries' metadata.
    link_copies: usize,
    /// Hardlink entries whose metadata was not applied: past
    /// [`MAX_LINK_COPIES`].
    link_meta_skipped: u64,
}

/// Inodes a layer's hardlink entries may have copied on a tree to change
/// their metadata: each copy walks the whole tree for the inode's names.
const MAX_LINK_COPIES: usize = 64;

fn split(rel: &Path) -> (PathBuf, &OsStr) {
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    (parent, rel.file_name().unwrap_or_default())
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(rustix::io::Errno) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

/// Creates the regular file `name` in `dir`, private until its metadata is
/// set; never through an existing entry.
fn create_new_file(dir: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<std::fs::File> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map(std::fs::File::from)
    .map_err(io_err("create", path))
}

/// A descriptor of `fd` that can be read (the cache holds `O_PATH` ones).
fn readable_dir(fd: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Applier {
    /// Counts a sparse file of `size` bytes, holes included, against the
    /// layer's bound. Per layer, not per file: a thousand sparse headers of
    /// 64 GiB each would take as long as one of 64 TiB.
    fn count_sparse(&mut self, size: u64, rel: &Path) -> Result<()> {
        self.sparse_size = self.sparse_size.saturating_add(size);
        if self.sparse_size > MAX_SPARSE_SIZE {
            return Err(Error::InvalidArgument(format!(
                "sparse file {:?} of {size} bytes: over the {} GiB of sparse files this unpacker writes per layer",
                rel.display(),
                MAX_SPARSE_SIZE >> 30
            )));
        }
        Ok(())
    }

    /// Applies `entry`, named `last` by its header, which it renames to a
    /// PAX sparse file's real name: the one errors after it should say.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, last: &mut Vec<u8>) -> Result<()> {
        self.entries += 1;
        let kind = entry.header().entry_type();
        // Before the name is judged: a global header's name names nothing
        // (tar writers put anything there), and containerd skips it.
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let pax_sparse = pax_sparse_of(entry, kind == tar::EntryType::GNUSparse)?;
        if let Some(name) = pax_sparse.as_ref().and_then(|s| s.name.as_deref()) {
            last.clear();
            last.extend_from_slice(name);
        }
        let raw_name = PathBuf::from(std::os::unix::ffi::OsStrExt::from_bytes(last) as &OsStr);
        let rel = resolve::clean(&raw_name)?;
        // The kernel's own answer (EINVAL, naming the store) would not say
        // it is the layer's; Go's archive/tar refuses such names too.
        let name = std::os::unix::ffi::OsStrExt::as_bytes(raw_name.as_os_str());
        for (what, bytes) in [
            ("name", Some(name.into())),
            ("link target", entry.link_name_bytes()),
        ] {
            if bytes.is_some_and(|bytes| bytes.contains(&0)) {
                return Err(Error::Layer(format!(
                    "entry {:?}: a NUL byte in its {what}",
                    raw_name.display()
                )));
            }
        }
        // A legacy (V7) entry, of type NUL, is a directory if its name ends
        // in a slash, as Go's archive/tar (containerd's) and GNU tar read it:
        // the name of its header or PAX records, before a sparse name.
        let legacy_dir =
            entry.header().as_old().linkflag[0] == 0 && entry.path_bytes().ends_with(b"/");
        let kind = if legacy_dir {
            tar::EntryType::Directory
        } else {
            kind
        };
        let meta = meta_of(entry, &rel)?;
        self.dropped_xattrs += meta.dropped_xattrs;
        // Read and checked before anything at the name is touched.
        let sparse_layout = match pax_sparse {
            Some(_) if !matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) => {
                return Err(Error::Layer(format!(
                    "entry {:?}: PAX sparse records on a {kind:?} entry",
                    rel.display()
                )));
            }
            Some(pax_sparse) => {
                // A whiteout's (or the root's) data is never read: Go finds
                // no mismatch in it, and it writes nothing to count.
                let written = !rel.as_os_str().is_empty()
                    && !rel.file_name().is_some_and(|name| {
                        std::os::unix::ffi::OsStrExt::as_bytes(name).starts_with(b".wh.")
                    });
                let data_size = entry.size();
                let layout = pax_sparse.layout(entry, data_size, written).map_err(|e| {
                    Error::Layer(format!("PAX sparse file {:?}: {e}", rel.display()))
                })?;
                if written {
                    self.count_sparse(layout.size, &rel)?;
                }
                Some(layout)
            }
            None if kind == tar::EntryType::GNUSparse => {
                self.count_sparse(entry.size(), &rel)?;
                None
            }
            None => None,
        };
        if rel.as_os_str().is_empty() {
            // The root directory itself: only its metadata.
            if kind.is_dir() {
                self.set_dir_meta(Path::new(""), meta)?;
                self.root_listed = true;
            }
            return Ok(());
        }
        let (parent, name) = split(&rel);
        let name_bytes = std::os::unix::ffi::OsStrExt::as_bytes(name);
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
            return self.whiteout(&parent, hidden);
        }
        let path = self.root.path.join(&rel);
        let privileged = self.options.privileged;
        let overlay = self.overlay;
        let (dirfd, resolved) = self.root.dir_resolved(&parent)?;
        // The parent is found again by where it is, not by the name the
        // layer used: that name may lead through what this entry replaces.
        // And what is written is noted so: an opaque whiteout reached
        // through another name spares it too.
        let parent_at = resolved.to_path_buf();
        let written = parent_at.join(name);
        // Whatever is at the name goes, unless a directory meets a directory.
        let existing = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW).ok();
        let mut removed = false;
        if let Some(st) = &existing {
            let is_dir = (st.st_mode & libc::S_IFMT) == libc::S_IFDIR;
            if !(is_dir && kind.is_dir()) {
                resolve::remove_at(dirfd, name, &mut self.removed)
                    .map_err(io_err("remove", &path))?;
                // Cached directories under this name (through a symlink it
                // was, say) are stale from here on.
                removed = true;
            }
        }
        match kind {
            tar::EntryType::Directory => {
                if existing.is_none() || removed {
                    rustix::fs::mkdirat(dirfd, name, Mode::from_raw_mode(0o700))
                        .map_err(io_err("mkdir", &path))?;
                }
                if overlay && removed {
                    // A directory made where this layer deleted something (a
                    // whiteout, or its own file or symlink of that name) must
                    // not show a lower layer's directory of that name.
                    set_xattr_at(dirfd, name, &self.options.opaque_xattr, b"y")
                        .map_err(io_err("setxattr", &path))?;
                }
                if removed {
                    self.root.invalidate();
                }
                self.set_dir_meta(&written, meta)?;
                self.created.insert(written);
                return Ok(());
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut file = create_new_file(dirfd, name, &path)?;
                let names = (path.as_path(), rel.as_path());
                match &sparse_layout {
                    Some(layout) => {
                        copy_regions(entry, &mut file, &mut self.buffer, layout, names)?
                    }
                    None => {
                        let sparse = kind == tar::EntryType::GNUSparse;
                        let size = entry.size();
                        let read = (0, size);
                        copy_data(
                            entry,
                            &mut file,
                            &mut self.buffer,
                            sparse,
                            size,
                            read,
                            names,
                        )?;
                    }
                }
                self.set_file_meta(&file, &meta, &path)?;
                if self.tree_root.is_some() {
                    // This layer's own: a hardlink entry may change it in
                    // place (`set_link_meta`).
                    let st = rustix::fs::fstat(&file).map_err(io_err("stat", &path))?;
                    self.own_link_inodes.insert((st.st_dev, st.st_ino));
                }
                self.created.insert(written);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        Error::Layer(format!("symlink {:?} without a target", rel.display()))
                    })?
                    .into_owned();
                rustix::fs::symlinkat(&target[..], dirfd, name)
                    .map_err(io_err("symlink", &path))?;
                self.set_meta_at(&parent_at, name, &path, &meta, false)?;
                // Nothing was at the name unless it was removed (below): no
                // cached lookup went through it.
                self.created.insert(written);
            }
            tar::EntryType::Link => {
                if removed {
                    // The target is looked up below: not through what the
                    // removal made stale.
                    self.root.invalidate();
                }
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| {
                        Error::Layer(format!("hardlink {:?} without a target", rel.display()))
                    })?
                    .into_owned();
                let target_rel = resolve::clean(Path::new(
                    std::os::unix::ffi::OsStrExt::from_bytes(&target[..]) as &OsStr,
                ))?;
                if target_rel.as_os_str().is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "hardlink {:?} to the root",
                        rel.display()
                    )));
                }
                let missing = || {
                    Error::InvalidArgument(format!(
                        "hardlink {:?}: target {:?} does not exist",
                        rel.display(),
                        target_rel.display()
                    ))
                };
                let is_a_directory = || {
                    Error::InvalidArgument(format!(
                        "hardlink {:?}: target {:?} is a directory",
                        rel.display(),
                        target_rel.display()
                    ))
                };
                let (target_parent, target_name) = split(&target_rel);
                if overlay {
                    // Through the symlinks this layer made, as the link
                    // below is made; the target itself is not followed.
                    let Some(source) = self.root.upper_path(&target_parent)? else {
                        return Err(missing());
                    };
                    let source = source.join(target_name);
                    if source != target_rel {
                        self.root.charge_merged(&source)?;
                    }
                    match self.root.link_source(&source, &self.options.opaque_xattr)? {
                        resolve::LinkSource::Upper => {}
                        resolve::LinkSource::Lower(dir) => self.copy_up(dir.as_fd(), &source)?,
                        resolve::LinkSource::Missing => return Err(missing()),
                        resolve::LinkSource::Directory => return Err(is_a_directory()),
                    }
                }
                let target_dir = self
                    .root
                    .existing_dir(&target_parent)?
                    .ok_or_else(missing)?;
                let link = |root: &mut resolve::Root| -> Result<rustix::io::Result<()>> {
                    let dirfd = root.dir(&parent_at)?;
                    Ok(rustix::fs::linkat(
                        target_dir.as_fd(),
                        target_name,
                        dirfd,
                        name,
                        AtFlags::empty(),
                    ))
                };
                let mut linked = link(&mut self.root)?;
                // A native snapshot shares its parent's inodes; one shared by
                // enough snapshots takes no more links. Its names here get a
                // copy of their own, which takes this one too.
                if let (Err(rustix::io::Errno::MLINK), Some(tree)) = (linked, &self.tree_root) {
                    // By a path with no symlink in it: the tree is this
                    // layer's alone while it is applied.
                    let parent = self
                        .root
                        .existing_dir_path(&target_parent)?
                        .ok_or_else(missing)?;
                    crate::tree::unshare(tree, &tree.join(parent).join(target_name))?;
                    linked = link(&mut self.root)?;
                }
                linked.map_err(|e| {
                    let is_dir = || {
                        rustix::fs::statat(&target_dir, target_name, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFDIR)
                    };
                    match e {
                        rustix::io::Errno::NOENT => missing(),
                        rustix::io::Errno::PERM if is_dir() => is_a_directory(),
                        e => Error::io("link", &path, e),
                    }
                })?;
                self.set_link_meta(&parent_at, name, &path, &meta)?;
                self.created.insert(written);
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    tar::EntryType::Fifo => (FileType::Fifo, 0),
                    _ => {
                        let header = entry.header();
                        let major = header.device_major().ok().flatten().unwrap_or(0);
                        let minor = header.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if kind == tar::EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, rustix::fs::makedev(major, minor))
                    }
                };
                if overlay && file_type == FileType::CharacterDevice && dev == 0 {
                    // overlayfs takes a 0/0 character device in an upper
                    // directory for a whiteout, whatever the layer meant:
                    // it is made one, hiding what the lowers have of the
                    // name, and goes at the end if they have nothing
                    // (listed, it could not be looked up in the mount).
                    make_whiteout(dirfd, name, &path, privileged)?;
                    self.whiteouts.push(written);
                    self.whiteout_devices += 1;
                    if removed {
                        self.root.invalidate();
                    }
                    return Ok(());
                }
                // Not in a user namespace either, whose root may not make
                // devices: skipped, as containerd skips them there.
                if file_type != FileType::Fifo
                    && (!privileged || crate::mount::running_in_user_namespace())
                {
                    self.skipped_devices += 1;
                    return Ok(());
                }
                rustix::fs::mknodat(dirfd, name, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(io_err("mknod", &path))?;
                self.set_meta_at(&parent_at, name, &path, &meta, true)?;
                self.created.insert(written);
            }
            other => {
                // By its type flag as tar writes it ('V', 'D', 'Z'...).
                let flag = other.as_byte();
                return Err(Error::Layer(format!(
                    "entry {:?}: unsupported tar entry type {:?} ({flag})",
                    rel.display(),
                    char::from(flag)
                )));
            }
        }
        if removed {
            self.root.invalidate();
        }
        Ok(())
    }

    /// The xattrs of a regular file or directory, through its descriptor.
    fn set_xattrs_fd(&self, fd: BorrowedFd<'_>, meta: &Meta, path: &Path) -> Result<()> {
        for (key, value) in &meta.xattrs {
            let set = rustix::fs::fsetxattr(fd, key, value, XattrFlags::empty());
            xattr_set(
                set,
                key,
                true,
                self.options.privileged,
                &self.skipped_xattrs,
            )
            .map_err(io_err("setxattr", path))?;
        }
        Ok(())
    }

    /// A directory entry met a directory: the entry says all its xattrs, as
    /// a file entry does, so those it does not list go (they would be gone
    /// on overlay, where the entry makes a new upper directory). The SELinux
    /// label is the host's, and overlayfs's own xattrs are the upper
    /// directory's: both stay.
    fn remove_unlisted_xattrs(&self, dir: BorrowedFd<'_>, meta: &Meta, path: &Path) -> Result<()> {
        let names = xattr_names(
            || rustix::fs::flistxattr_query(dir),
            |buf| rustix::fs::flistxattr(dir, buf),
        )
        .map_err(io_err("list xattrs of", path))?;
        for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            let Ok(key) = std::str::from_utf8(raw) else {
                continue;
            };
            let kept = key == copy_up::NOT_COPIED
                || OVERLAY_PRIVATE.iter().any(|p| key.starts_with(p))
                || meta.xattrs.iter().any(|(listed, _)| listed == key);
            if !kept {
                let removed = rustix::fs::fremovexattr(dir, key);
                xattr_set(
                    removed,
                    key,
                    true,
                    self.options.privileged,
                    &self.skipped_xattrs,
                )
                .map_err(io_err("removexattr", path))?;
            }
        }
        Ok(())
    }

    /// Owner, mode (after the owner), xattrs and times of a regular file.
    fn set_file_meta(&self, file: &std::fs::File, meta: &Meta, path: &Path) -> Result<()> {
        let privileged = self.options.privileged;
        if privileged {
            rustix::fs::fchown(
                file,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(io_err("chown", path))?;
        }
        rustix::fs::fchmod(file, Mode::from_raw_mode(meta.mode)).map_err(io_err("chmod", path))?;
        self.set_xattrs_fd(file.as_fd(), meta, path)?;
        rustix::fs::futimens(file, &times(meta)).map_err(io_err("utimes", path))
    }

    /// Owner, mode (after the owner), xattrs and times of a non-regular,
    /// non-directory entry, by name in its parent.
    fn set_meta_at(
        &mut self,
        parent: &Path,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let privileged = self.options.privileged;
        let dirfd = self.root.dir(parent)?;
        if privileged {
            rustix::fs::chownat(
                dirfd,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown", path))?;
        }
        if chmod {
            rustix::fs::chmodat(
                dirfd,
                name,
                Mode::from_raw_mode(meta.mode),
                AtFlags::empty(),
            )
            .map_err(io_err("chmod", path))?;
        }
        for (key, value) in &meta.xattrs {
            let set = set_xattr_at(dirfd, name, key, value);
            xattr_set(set, key, false, privileged, &self.skipped_xattrs)
                .map_err(io_err("setxattr", path))?;
        }
        rustix::fs::utimensat(dirfd, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("utimes", path))
    }

    /// A hardlink entry's own metadata, applied to the inode it joined, as
    /// containerd applies it (the group's last entry wins). Tar writers give
    /// every name of a group its inode's metadata, so usually nothing
    /// differs and nothing is done. Where something does, on a tree an
    /// inode that is not this layer's own (a file it wrote) is first given a
    /// copy, its names here pointed at it: it may be the parent snapshot's
    /// too (see `tree::share_tree`). Those
    /// copies are bounded per layer (each walks the tree); past the bound,
    /// the metadata is not applied and a warning says so.
    fn set_link_meta(
        &mut self,
        parent: &Path,
        name: &OsStr,
        path: &Path,
        meta: &Meta,
    ) -> Result<()> {
        let dirfd = self.root.dir(parent)?;
        let st = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io_err("stat", path))?;
        // A symlink's mode is not its own to change (and chmod follows it).
        let symlink = (st.st_mode & libc::S_IFMT) == libc::S_IFLNK;
        let mode_differs = !symlink && (st.st_mode & 0o7777) != (meta.mode & 0o7777);
        let owner_differs =
            self.options.privileged && (st.st_uid, st.st_gid) != (meta.uid, meta.gid);
        let mtime_differs =
            (st.st_mtime, st.st_mtime_nsec as i64) != (meta.mtime.tv_sec, meta.mtime.tv_nsec);
        let xattrs_differ = !meta.xattrs.is_empty() && {
            let have = copy_up::xattrs(&copy_up::proc_path(dirfd, name))?;
            meta.xattrs.iter().any(|wanted| !have.contains(wanted))
        };
        if !(mode_differs || owner_differs || mtime_differs || xattrs_differ) {
            return Ok(());
        }
        if let Some(tree) = self.tree_root.clone()
            && !self.own_link_inodes.contains(&(st.st_dev, st.st_ino))
        {
            if self.link_copies >= MAX_LINK_COPIES {
                self.link_meta_skipped += 1;
                return Ok(());
            }
            let dir = self
                .root
                .existing_dir_path(parent)?
                .ok_or_else(|| Error::io("stat", path, rustix::io::Errno::NOENT))?;
            crate::tree::unshare(&tree, &tree.join(dir).join(name))?;
            self.link_copies += 1;
            let dirfd = self.root.dir(parent)?;
            let copy = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io_err("stat", path))?;
            self.own_link_inodes.insert((copy.st_dev, copy.st_ino));
        }
        // The target's refusals were counted when it was written.
        let skipped = self.skipped_xattrs.get();
        let set = self.set_meta_at(parent, name, path, meta, !symlink);
        self.skipped_xattrs.set(skipped);
        set
    }

    /// Owner, mode and xattrs of a directory now; its times at the end.
    /// On an overlay upper directory over lowers, a root the layer did not
    /// list takes the owner and mode of the root below, as every other
    /// directory the layer does not list keeps them: overlayfs shows the
    /// upper directory's root as the image's, and a tree unpacked whole
    /// (native, umoci) keeps what an earlier layer's `./` said.
    fn inherit_root(&mut self) -> Result<()> {
        if !self.overlay || self.root_listed {
            return Ok(());
        }
        let Some(below) = self.root.lowers()?.first() else {
            return Ok(());
        };
        let st = rustix::fs::fstat(below).map_err(io_err("stat", &self.root.path))?;
        let path = self.root.path.clone();
        let dir = readable_dir(self.root.fd.as_fd()).map_err(io_err("open", &path))?;
        // The mode exactly, with or without root: nothing more is written
        // into it.
        self.set_owner_and_mode(&dir, st.st_uid, st.st_gid, st.st_mode & 0o7777, &path)
    }

    /// Sets a directory's owner (with root) and mode.
    fn set_owner_and_mode(
        &self,
        dir: &OwnedFd,
        uid: u32,
        gid: u32,
        mode: u32,
        path: &Path,
    ) -> Result<()> {
        if self.options.privileged {
            rustix::fs::fchown(dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(io_err("chown", path))?;
        }
        rustix::fs::fchmod(dir, Mode::from_raw_mode(mode)).map_err(io_err("chmod", path))
    }

    fn set_dir_meta(&mut self, rel: &Path, meta: Meta) -> Result<()> {
        let path = self.root.path.join(rel);
        let privileged = self.options.privileged;
        let fd = self.root.dir(rel)?;
        let dir = readable_dir(fd).map_err(io_err("open", &path))?;
        // Without root we must keep write access to fill the directory.
        let mode = if privileged {
            meta.mode
        } else {
            meta.mode | 0o700
        };
        self.set_owner_and_mode(&dir, meta.uid, meta.gid, mode, &path)?;
        self.remove_unlisted_xattrs(dir.as_fd(), &meta, &path)?;
        self.set_xattrs_fd(dir.as_fd(), &meta, &path)?;
        let st = rustix::fs::fstat(&dir).map_err(io_err("stat", &path))?;
        let noted = resolve::tick(&self.clock);
        let kept = DirTimes {
            mode: meta.mode,
            times: times(&meta),
        };
        self.dir_times
            .push((rel.to_path_buf(), kept, (st.st_dev, st.st_ino), noted));
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<()> {
        // Noted before the directory was removed: a later directory may
        // have its inode number, and gets nothing.
        let removed = &self.removed;
        let stale = |id: &(u64, u64), noted: u64| removed.since(id, noted);
        let dirs = std::mem::take(&mut self.dir_times);
        let mut listed = std::collections::HashSet::new();
        for (rel, meta, id, noted) in dirs.iter().rev() {
            if stale(id, *noted) {
                continue;
            }
            let path = self.root.path.join(rel);
            let Some(fd) = self.root.existing_dir(rel)? else {
                continue; // removed by a later entry
            };
            let dir = readable_dir(fd.as_fd()).map_err(io_err("open", &path))?;
            // A later entry may have replaced it with a symlink (to another
            // directory, or to `/`): only the directory the entry made or
            // found gets its metadata.
            let st = rustix::fs::fstat(&dir).map_err(io_err("stat", &path))?;
            if (st.st_dev, st.st_ino) != *id {
                continue;
            }
            // Listed twice (merged tars): the last entry wins, as in
            // containerd; going backwards, that is the first one met.
            if !listed.insert(*id) {
                continue;
            }
            if !self.options.privileged {
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(meta.mode))
                    .map_err(io_err("chmod", &path))?;
            }
            rustix::fs::futimens(&dir, &meta.times).map_err(io_err("utimes", &path))?;
        }
        // Then the parents made for entries (without root), unless an entry
        // of their own set them: last, since the mode a parent gets may shut
        // its owner out of the directories beneath it.
        let pending = std::mem::take(&mut self.root.pending_modes);
        for (rel, mode, id, noted) in pending.iter().rev() {
            if listed.contains(id) || stale(id, *noted) {
                continue;
            }
            let path = self.root.path.join(rel);
            let Some(fd) = self.root.existing_dir(rel)? else {
                continue;
            };
            let dir = readable_dir(fd.as_fd()).map_err(io_err("open", &path))?;
            let st = rustix::fs::fstat(&dir).map_err(io_err("stat", &path))?;
            if (st.st_dev, st.st_ino) == *id {
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(*mode))
                    .map_err(io_err("chmod", &path))?;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, parent: &Path, hidden: &[u8]) -> Result<()> {
        let path = self.root.path.join(parent);
        if hidden == b".wh..opq" {
            // Made if missing, as containerd does.
            let (dirfd, resolved) = self.root.dir_resolved(parent)?;
            let dir = readable_dir(dirfd).map_err(io_err("open", &path))?;
            let resolved = resolved.to_path_buf();
            let created = &self.created;
            // What the layer wrote goes on, and so do the parents of what it
            // wrote, listed or not (`a/b` of `a/b/new`), as on overlayfs. A
            // path's descendants sort right after it. On an overlay upper
            // directory the rest came from below (a file copied up to be
            // hardlinked) or hid what is below (a whiteout): the opaque mark
            // hides those now.
            let keep = |path: &Path| wrote_at_or_under(created, path);
            resolve::clear_dir(dir.as_fd(), &resolved, &keep, &mut self.removed)
                .map_err(io_err("remove", &path))?;
            self.root.invalidate();
            if self.overlay && resolved.as_os_str().is_empty() {
                self.opaque_upper_root()?;
            } else if self.overlay {
                rustix::fs::fsetxattr(
                    &dir,
                    self.options.opaque_xattr.as_str(),
                    b"y",
                    XattrFlags::empty(),
                )
                .map_err(io_err("setxattr", &path))?;
            }
            return Ok(());
        }
        if hidden.starts_with(b".wh.") {
            // Other `.wh..wh.` names are aufs bookkeeping, not deletions.
            return Ok(());
        }
        let name: &OsStr = std::os::unix::ffi::OsStrExt::from_bytes(hidden);
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            // Named as the layer wrote it, as other entries' errors are.
            let whiteout = parent.join(format!(".wh.{}", name.to_string_lossy()));
            return Err(Error::InvalidArgument(if hidden.is_empty() {
                format!("whiteout {:?} names nothing to delete", whiteout.display())
            } else {
                format!(
                    "whiteout {:?} would delete {:?}, which is not an entry of its directory",
                    whiteout.display(),
                    name
                )
            }));
        }
        // Whiteouts hide only what the layers below have (the OCI spec):
        // what this layer wrote of that name stays. A directory it wrote
        // still hides the lower one's entries, as an opaque whiteout does.
        if let Some(resolved) = self.root.existing_dir_path(parent)?
            && wrote_at_or_under(&self.created, &resolved.join(name))
        {
            let is_dir = match self.root.existing_dir(parent)? {
                Some(dirfd) => rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                None => false,
            };
            if is_dir {
                return self.whiteout(&parent.join(name), b".wh..opq");
            }
            return Ok(());
        }
        let target = path.join(name);
        let removed = if self.overlay {
            let privileged = self.options.privileged;
            // A whiteout under a file, or of a name no layer below has,
            // hides nothing.
            let Some((dirfd, resolved)) = self.root.whiteout_dir(parent)? else {
                return Ok(());
            };
            let made = resolved.join(name);
            let removed = resolve::remove_at(dirfd, name, &mut self.removed)
                .map_err(io_err("remove", &target))?;
            make_whiteout(dirfd, name, &target, privileged)?;
            self.whiteouts.push(made);
            removed
        } else if let Some(dirfd) = self.root.existing_dir(parent)? {
            resolve::remove_at(dirfd.as_fd(), name, &mut self.removed)
                .map_err(io_err("remove", &target))?
        } else {
            false
        };
        // Only a removal can make a remembered lookup stale.
        if removed {
            self.root.invalidate();
        }
        Ok(())
    }
}

/// Whether this layer wrote `path` or anything under it (a path's
/// descendants sort right after it).
fn wrote_at_or_under(created: &BTreeSet<PathBuf>, path: &Path) -> bool {
    created
        .range::<Path, _>((Bound::Included(path), Bound::Unbounded))
        .next()
        .is_some_and(|p| p.starts_with(path))
}

impl Applier {
    /// overlayfs lists a whiteout in a directory no lower has (it filters
    /// them only where it merges), and it cannot be looked up there, so the
    /// whiteouts that hide nothing go. Checked at the end: the lowers may
    /// still be being applied while this layer is, and most layers never
    /// wait for them.
    fn drop_needless_whiteouts(&mut self) -> Result<()> {
        for rel in std::mem::take(&mut self.whiteouts) {
            let (parent, name) = split(&rel);
            let path = self.root.path.join(&rel);
            // Through a symlink (the layer replaced a directory on the way),
            // the name found is not the one made, nor what the lowers show
            // there by name: such a whiteout stays.
            let Ok(dir) = resolve::open_dir_exact(self.root.fd.as_fd(), &parent) else {
                continue;
            };
            let still_a_whiteout = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFCHR && st.st_rdev == 0);
            if still_a_whiteout && !self.root.lowers_show(&rel)? {
                rustix::fs::unlinkat(&dir, name, AtFlags::empty())
                    .map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }

    /// An opaque whiteout for the root of an overlay upper directory.
    /// overlayfs ignores the opaque xattr on a layer's root, so every name
    /// the lowers have there gets a whiteout instead, and the layer's own
    /// directories there become opaque: the merged view is then what a whole
    /// tree shows after the opaque whiteout empties its root.
    fn opaque_upper_root(&mut self) -> Result<()> {
        let names = self.root.lower_root_names()?;
        let privileged = self.options.privileged;
        let upper = self.root.fd.as_fd();
        for name in names {
            let path = self.root.path.join(&name);
            match rustix::fs::statat(upper, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(rustix::io::Errno::NOENT) => make_whiteout(upper, &name, &path, privileged)?,
                Ok(st) if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR => {
                    set_xattr_at(upper, &name, &self.options.opaque_xattr, b"y")
                        .map_err(io_err("setxattr", &path))?;
                }
                Ok(_) => {} // the layer's own file: it stays
                Err(e) => return Err(Error::io("stat", &path, e)),
            }
        }
        self.root.invalidate();
        Ok(())
    }
}

/// Makes the whiteout `name` (a 0/0 character device) in `dir`. Linux lets
/// anyone make one since 5.8. Without it the lower file would show again, so
/// a refusal fails the layer rather than being skipped like a device.
fn make_whiteout(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, privileged: bool) -> Result<()> {
    match rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0) {
        Err(rustix::io::Errno::PERM) if !privileged => Err(Error::Unimplemented(format!(
            "whiteout {}: making it (a 0/0 character device) needs root or Linux 5.8",
            path.display()
        ))),
        other => other.map_err(io_err("mknod", path)),
    }
}

fn times(meta: &Meta) -> Timestamps {
    Timestamps {
        last_access: meta.atime,
        last_modification: meta.mtime,
    }
}

/// The outcome of setting xattr `key` on an entry (`file_or_dir`, or a
/// symlink or device). Refusals containerd skips with a warning are counted
/// in `skipped` and skipped: a filesystem without that kind of xattr
/// (EOPNOTSUPP), a `user.*` one on a symlink or device (the kernel takes them
/// only on files and directories), and, without root, any refused.
fn xattr_set(
    set: rustix::io::Result<()>,
    key: &str,
    file_or_dir: bool,
    privileged: bool,
    skipped: &Cell<u64>,
) -> rustix::io::Result<()> {
    use rustix::io::Errno;
    match set {
        Err(Errno::OPNOTSUPP) => {}
        Err(Errno::PERM) if !privileged || (!file_or_dir && key.starts_with("user.")) => {}
        other => return other,
    }
    skipped.set(skipped.get() + 1);
    Ok(())
}

/// Sets an xattr on `name` in `dir` without following it: through the
/// directory's `/proc/self/fd` link, so no path outside the root is walked.
fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    key: &str,
    value: &[u8],
) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    path.push(name);
    rustix::fs::lsetxattr(&path, key, value, XattrFlags::empty())
}

/// What `entry`'s PAX records say of a sparse file (`None`: it is not one).
/// A GNU sparse header (`gnu_sparse`) has its own map, and Go reads no PAX
/// one then, but refuses 0.0 pairs out of order in any header. Records that
/// do not parse are left to `meta_of` to refuse.
fn pax_sparse_of<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    gnu_sparse: bool,
) -> Result<Option<sparse::PaxSparse>> {
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax {
            let Ok(ext) = ext else { return Ok(None) };
            if let Ok(key) = ext.key()
                && key.starts_with("GNU.sparse.")
            {
                records.push((key.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    if records.is_empty() {
        return Ok(None);
    }
    let records = records.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
    let read = if gnu_sparse {
        sparse::check_pairs(records).map(|()| None)
    } else {
        sparse::PaxSparse::from_records(records)
    };
    read.map_err(|e| {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        Error::Layer(format!("PAX sparse file {name:?}: {e}"))
    })
}

/// Writes a PAX sparse file's data regions, packed one after another in
/// `src`, where `layout` places them: what lies between them is left holes.
fn copy_regions(
    src: &mut impl Read,
    dst: &mut std::fs::File,
    buffer: &mut [u8],
    layout: &sparse::Layout,
    names: (&Path, &Path),
) -> Result<()> {
    use std::io::Seek;
    let write_error = |e| Error::io("write", names.0, e);
    let held: u64 = layout.regions.iter().map(|r| r.length).sum();
    let total = layout.data_start + held;
    let mut before = layout.data_start;
    for region in &layout.regions {
        dst.seek(io::SeekFrom::Start(region.offset))
            .map_err(write_error)?;
        let mut data = src.by_ref().take(region.length);
        let read = (before, total);
        copy_data(&mut data, dst, buffer, false, region.length, read, names)?;
        before += region.length;
    }
    dst.set_len(layout.size).map_err(write_error)
}

/// Copies `size` bytes of an entry's data (`read`: after how many of all
/// how many, for the error if the layer ends; `path` where it goes, `rel`
/// its name in the layer); for a sparse entry, runs of zeros become holes.
/// A failed or short read is the layer's fault ([`Error::Layer`]); a failed
/// write, the disk's.
fn copy_data(
    src: &mut impl Read,
    dst: &mut std::fs::File,
    buffer: &mut [u8],
    sparse: bool,
    size: u64,
    (before, total): (u64, u64),
    (path, rel): (&Path, &Path),
) -> Result<()> {
    use std::io::Seek;
    let write_error = |e| Error::io("write", path, e);
    let mut holes = false;
    let mut copied = 0u64;
    loop {
        let n = match src.read(buffer) {
            Ok(0) if copied < size => {
                // The parser gives a short entry at the end of its input.
                return Err(Error::Layer(format!(
                    "entry {:?}: the layer ends {} bytes into its {total} bytes of data",
                    rel.display(),
                    before + copied
                )));
            }
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Layer(format!(
                    "entry {:?}: read: {}",
                    rel.display(),
                    Report::new(&e)
                )));
            }
        };
        copied += n as u64;
        if sparse && buffer[..n].iter().all(|b| *b == 0) {
            dst.seek(io::SeekFrom::Current(n as i64))
                .map_err(write_error)?;
            holes = true;
        } else {
            dst.write_all(&buffer[..n]).map_err(write_error)?;
        }
    }
    if holes {
        dst.set_len(size).map_err(write_error)?;
    }
    Ok(())
}

/// The tar parser's error as a layer's: its message may quote a header's
/// bytes (a name, a number field), so control characters are escaped and a
/// hostile layer cannot drive the terminal that shows it.
fn tar_error(e: std::io::Error) -> Error {
    let mut message = String::from("tar: ");
    for c in Report::new(&e).to_string().chars() {
        if c.is_control() {
            message.extend(c.escape_debug());
        } else {
            message.push(c);
        }
    }
    Error::Layer(message)
}

#[cfg(test)]
mod tests {
    use super::{parse_time, signed_base256};

    #[test]
    fn base256_numbers_are_signed() {
        let field = |bytes: &[u8]| {
            let mut field = [0u8; 12];
            field[12 - bytes.len()..].copy_from_slice(bytes);
            field
        };
        let mut positive = field(&[0x01, 0x00]);
        positive[0] = 0x80;
        assert_eq!(signed_base256(&positive), Some(256));
        // -144720000 (1965), as GNU tar writes it.
        let mut negative = [0xff; 12];
        negative[8..].copy_from_slice(&(-144_720_000i32).to_be_bytes());
        assert_eq!(signed_base256(&negative), Some(-144_720_000));
        assert_eq!(signed_base256(&[0xff; 12]), Some(-1));
        let mut huge = [0u8; 12];
        huge[0] = 0x80;
        huge[3] = 1;
        assert_eq!(signed_base256(&huge), None, "past 64 bits");
    }

    #[test]
    fn pax_times_carry_their_sign_into_the_fraction() {
        let time = |text: &str| parse_time(text).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(time("1600000000"), Some((1_600_000_000, 0)));
        assert_eq!(time("1.25"), Some((1, 250_000_000)));
        assert_eq!(time("0.000000001"), Some((0, 1)));
        assert_eq!(time("1.1234567899"), Some((1, 123_456_789)), "past ns: cut");
        assert_eq!(time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(time("-0.5"), Some((-1, 500_000_000)));
        assert_eq!(time("-100.25"), Some((-101, 750_000_000)));
        assert_eq!(time("-3"), Some((-3, 0)));
        assert_eq!(time("-3.0"), Some((-3, 0)));
        assert_eq!(time("+1.5"), Some((1, 500_000_000)));
        for bad in ["", "-", ".5", "1.-5", "1.5x", "x", "--1", "+-1", "-+1"] {
            assert_eq!(time(bad), None, "{bad:?}");
        }
    }
}
