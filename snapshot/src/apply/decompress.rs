//! Layer compression: from the media type, or from the stream's magic bytes.

use std::io::{BufRead, BufReader, Read};

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

    /// The compression the first bytes of a stream show.
    pub fn detect(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

const READ_BUFFER: usize = 256 * 1024;

/// The uncompressed tar stream of `reader`, by its magic bytes, as
/// containerd's `DecompressStream` decides: a layer whose media type (or
/// `expected`) says gzip but that is stored plain, or the reverse, unpacks
/// as it does there. `expected` counts only for an empty stream.
pub(crate) fn decompressed<'a>(
    reader: impl Read + Send + 'a,
    expected: Option<Compression>,
) -> Result<Box<dyn Read + Send + 'a>> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let head = reader
        .fill_buf()
        .map_err(|e| Error::Layer(format!("read: {e}")))?;
    let compression = match (head.is_empty(), expected) {
        (true, Some(expected)) => expected,
        _ => Compression::detect(head),
    };
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|e| Error::Layer(format!("zstd: {e}")))?,
        ),
    })
}
