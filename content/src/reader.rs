//! A sequential [`AsyncRead`] over any [`ReaderAt`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, ReadBuf};

use crate::{ReaderAt, Result};

const CHUNK: usize = 256 * 1024;

type Pending = BoxFuture<'static, (Vec<u8>, Result<usize>)>;

/// Reads a [`ReaderAt`] front to back, one reusable 256 KiB buffer at a time.
pub struct ReaderAtStream {
    reader: Arc<dyn ReaderAt>,
    offset: u64,
    end: u64,
    /// Bytes read but not yet handed out: `buf[start..filled]`.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    pending: Option<Pending>,
}

impl ReaderAtStream {
    /// A stream over the whole of `reader`.
    pub fn new(reader: Box<dyn ReaderAt>) -> Self {
        Self::with_range(reader, 0, None)
    }

    /// A stream over `reader` from `offset`, for at most `len` bytes.
    pub fn with_range(reader: Box<dyn ReaderAt>, offset: u64, len: Option<u64>) -> Self {
        let size = reader.size();
        let end = len.map_or(size, |len| size.min(offset.saturating_add(len)));
        ReaderAtStream {
            reader: Arc::from(reader),
            offset,
            end,
            buf: Vec::new(),
            start: 0,
            filled: 0,
            pending: None,
        }
    }
}

impl AsyncRead for ReaderAtStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.start < this.filled {
                let n = (this.filled - this.start).min(out.remaining());
                out.put_slice(&this.buf[this.start..this.start + n]);
                this.start += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(pending) = this.pending.as_mut() {
                let (buf, result) = ready!(pending.as_mut().poll(cx));
                this.pending = None;
                this.buf = buf;
                let n = result.map_err(io::Error::from)?;
                if n == 0 {
                    // The blob shrank under us: a short stream, reported as EOF.
                    this.end = this.offset;
                }
                this.offset += n as u64;
                this.start = 0;
                this.filled = n;
                continue;
            }
            if this.offset >= this.end {
                return Poll::Ready(Ok(()));
            }
            let want = (this.end - this.offset).min(CHUNK as u64) as usize;
            let mut buf = std::mem::take(&mut this.buf);
            buf.resize(want, 0);
            let reader = this.reader.clone();
            let offset = this.offset;
            this.pending = Some(Box::pin(async move {
                let result = reader.read_at(offset, &mut buf).await;
                (buf, result)
            }));
        }
    }
}
