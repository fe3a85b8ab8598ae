//! Origin side: `OriginFrameInjector` writes an ORIGIN frame right after the HTTP/2 server's SETTINGS frame.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{FrameHeader, OriginFrame, OriginFrameExt, SETTINGS_FRAME_TYPE};

/// Wraps the origin's connection to a gateway and inserts an ORIGIN frame after the server preface.
///
/// draft-bt-httpbis-reverse-http: "the origin MUST immediately send an ORIGIN frame" after its
/// SETTINGS. The origin is the HTTP/2 server on this connection, and RFC 9113
/// §3.4 makes the server preface a single SETTINGS frame (no magic string),
/// so the first frame the HTTP/2 server writes is that SETTINGS frame.
///
/// ```text
///   FirstFrame ──SETTINGS fully written to the inner IO──► Injecting
///   Injecting  ──ORIGIN frame fully written──────────────► Passthrough
/// ```
///
/// While in `FirstFrame`, caller bytes are written only up to the end of that
/// frame, so `poll_write` never reports bytes past the boundary. In `Injecting`
/// every `poll_write`, `poll_flush` and `poll_shutdown` first finishes writing
/// the ORIGIN frame, so no caller byte can overtake it. `Passthrough` forwards
/// without parsing. Reads always pass through.
#[derive(Debug)]
pub struct OriginFrameInjector<IO> {
    io: IO,
    state: InjectState,
}

#[derive(Debug)]
enum InjectState {
    /// Tracking the first frame the caller writes; holds the ORIGIN frame for later.
    FirstFrame {
        scanner: FirstFrameScanner,
        origin: Bytes,
    },
    /// The first frame is out; these ORIGIN bytes still have to be written.
    Injecting { rest: Bytes },
    /// Done: transparent.
    Passthrough,
}

impl<IO> OriginFrameInjector<IO> {
    /// Wraps `io`; `frame` is written right after the first (SETTINGS) frame.
    pub fn new(io: IO, frame: OriginFrame) -> Self {
        Self {
            io,
            state: InjectState::FirstFrame {
                scanner: FirstFrameScanner::default(),
                origin: frame.encode(),
            },
        }
    }

    /// Whether the ORIGIN frame has been completely written to the inner IO.
    pub fn is_injected(&self) -> bool {
        matches!(self.state, InjectState::Passthrough)
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The wrapped IO, mutably. Writing to it directly before injection breaks framing.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Unwraps the IO; an ORIGIN frame not yet written (see [`Self::is_injected`]) is lost.
    pub fn into_inner(self) -> IO {
        self.io
    }
}

impl<IO: AsyncWrite + Unpin> OriginFrameInjector<IO> {
    /// Writes any pending ORIGIN bytes; `Ready(Ok)` when none are left.
    fn poll_inject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let InjectState::Injecting { rest } = &mut self.state {
            if rest.is_empty() {
                self.state = InjectState::Passthrough;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rest.advance(n.min(rest.len()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for OriginFrameInjector<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for OriginFrameInjector<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_inject(cx))?;
        let InjectState::FirstFrame { scanner, origin } = &mut this.state else {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Write no further than the end of the first frame, so the ORIGIN frame
        // can go in between.
        let limit = scanner.clone().frame_end(buf)?.unwrap_or(buf.len());
        let (chunk, _) = buf.split_at(limit.min(buf.len()));
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, chunk))?.min(chunk.len());
        let (written, _) = chunk.split_at(n);
        if scanner.frame_end(written)?.is_some() {
            // The caller learns about these `n` bytes now; the ORIGIN frame is
            // written on the next poll_write / poll_flush / poll_shutdown,
            // before anything else.
            this.state = InjectState::Injecting {
                rest: origin.clone(),
            };
        }
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.state, InjectState::Passthrough) {
            return Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        }
        // Until injection is done, write one slice at a time through the scanner.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(this).poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_inject(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_inject(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Sans-IO tracker for the end of the first frame in a written byte stream.
#[derive(Debug, Clone, Default)]
struct FirstFrameScanner {
    header: [u8; FrameHeader::LEN],
    filled: usize,
    /// Payload bytes still to come, once the header is complete.
    payload_remaining: Option<usize>,
}

impl FirstFrameScanner {
    /// Consumes `bytes`; `Some(n)` if the first frame ends after `n` of them.
    ///
    /// Errors if the first frame is not SETTINGS: then this is not an HTTP/2
    /// server byte stream, and inserting a frame would corrupt it.
    fn frame_end(&mut self, bytes: &[u8]) -> io::Result<Option<usize>> {
        let mut used = 0;
        if self.payload_remaining.is_none() {
            let want = FrameHeader::LEN - self.filled;
            let take = want.min(bytes.len());
            let (head, _) = bytes.split_at(take);
            if let Some(dst) = self.header.get_mut(self.filled..self.filled + take) {
                dst.copy_from_slice(head);
            }
            self.filled += take;
            used = take;
            if self.filled < FrameHeader::LEN {
                return Ok(None);
            }
            let header = FrameHeader::parse(&self.header);
            // RFC 9113 §3.4: "The server connection preface consists of a
            // potentially empty SETTINGS frame ... that MUST be the first frame
            // the server sends in the HTTP/2 connection."
            if header.frame_type() != SETTINGS_FRAME_TYPE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "OriginFrameInjector: first frame written is not SETTINGS",
                ));
            }
            self.payload_remaining = Some(header.payload_len());
        }
        let remaining = self.payload_remaining.unwrap_or(0);
        let available = bytes.len() - used;
        if available >= remaining {
            self.payload_remaining = Some(0);
            Ok(Some(used + remaining))
        } else {
            self.payload_remaining = Some(remaining - available);
            Ok(None)
        }
    }
}
