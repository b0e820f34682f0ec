//! Layer compression: from the stream's first bytes (media types name it too).

use std::io::{BufReader, Read};

use crate::{Error, Result};

/// How a layer's tar is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; `None` for an unknown type
    /// (then [`detect`](Self::detect) the stream).
    pub fn from_media_type(media_type: &str) -> Option<Self> {
        let mt = media_type.trim();
        if mt.ends_with("+gzip")
            || mt.ends_with(".gzip")
            || mt == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        {
            Some(Compression::Gzip)
        } else if mt.ends_with("+zstd") || mt.ends_with(".zstd") {
            Some(Compression::Zstd)
        } else if mt.ends_with(".tar") || mt == "application/vnd.docker.image.rootfs.diff.tar" {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// The compression the first bytes of a stream show (give it eight of
    /// them, or all there are), as containerd's
    /// `DetectCompression` tells them: gzip's magic and deflate method, a
    /// zstd frame or a zstd skippable frame (pzstd writes one first).
    pub fn detect(head: &[u8]) -> Self {
        let zstd_skippable = head.get(..4).is_some_and(|m| {
            u32::from_le_bytes([m[0], m[1], m[2], m[3]]) & 0xFFFF_FFF0 == 0x184D_2A50
        });
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || zstd_skippable {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

const READ_BUFFER: usize = 256 * 1024;

/// How many first bytes [`Compression::detect`] is given.
const HEAD_LEN: usize = 8;

/// The uncompressed tar stream of `reader`, by its first bytes, as
/// containerd's `DecompressStream` decides: a layer whose media type (or
/// `expected`) says gzip but that is stored plain, or the reverse, unpacks
/// as it does there. `expected` counts only for an empty stream (which
/// containerd reads as an empty tar, and we as before, by `expected`).
pub(crate) fn decompressed<'a>(
    mut reader: impl Read + Send + 'a,
    expected: Option<Compression>,
) -> Result<Box<dyn Read + Send + 'a>> {
    // Up to HEAD_LEN bytes, however the reader hands them out (a pipe may
    // give one at a time), then put back in front.
    let mut head = [0u8; HEAD_LEN];
    let mut len = 0;
    while len < HEAD_LEN {
        match reader.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let e = ocidist_content::Report::new(&e);
                return Err(Error::Layer(format!("read: {e}")));
            }
        }
    }
    let compression = match (len, expected) {
        (0, Some(expected)) => expected,
        _ => Compression::detect(&head[..len]),
    };
    let reader = BufReader::with_capacity(
        READ_BUFFER,
        std::io::Cursor::new(head).take(len as u64).chain(reader),
    );
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| Error::Layer(format!("zstd: {e}")))?,
        ),
    })
}
