//! The bytes of an HTTP/2 stream used as a tunnel: an extended CONNECT's stream (RFC 8441
//! §5: "the stream ... becomes a tunnel") or a classic CONNECT's, on either end of the
//! connection. DATA frames carry the bytes both ways; END_STREAM is the end of a direction.

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bytes of an extended CONNECT stream (RFC 8441 §5: "the stream ... becomes a tunnel"):
/// DATA frames both ways, END_STREAM on shutdown.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    unread: Bytes,
    shut: bool,
}

impl Tunnel {
    /// The tunnel made of one stream's two halves: the client's request stream and its
    /// answer's body, or the server's answer stream and its request's body.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
            shut: false,
        }
    }
}

impl Tunnel {
    /// The stream's two halves, and what was received and not yet read (its window already
    /// released): for a user that sends and receives `Bytes` itself, as `flow::splice` does.
    pub fn into_parts(self) -> (SendStream<Bytes>, RecvStream, Bytes) {
        (self.send, self.recv, self.unread)
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("stream", &self.send.stream_id().as_u32())
            .finish_non_exhaustive()
    }
}

/// An h2 stream error as an I/O error for the tunnel's user: the origin's NO_ERROR or
/// CANCEL reset is an end of the bytes, not a failure.
pub(crate) fn stream_io_error(e: h2::Error) -> std::io::Error {
    if e.is_io() {
        if let Some(io) = e.into_io() {
            return io;
        }
        return std::io::Error::other("HTTP/2 connection I/O error");
    }
    std::io::Error::other(e)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.unread = data;
                }
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) if e.is_reset() => Ok(()),
                        _ => Err(stream_io_error(e)),
                    })
                }
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        if this.shut {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if let Some(n) = ready!(poll_window(&mut this.send, buf.len(), cx)) {
            let n = n.min(buf.len());
            if this
                .send
                .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                .is_ok()
            {
                return Poll::Ready(Ok(n));
            }
        }
        // The stream can send no more: its reset (or the connection's end) says why.
        Poll::Ready(Err(match ready!(this.send.poll_reset(cx)) {
            Ok(Reason::NO_ERROR) | Ok(Reason::CANCEL) | Ok(Reason::STREAM_CLOSED) => {
                std::io::ErrorKind::BrokenPipe.into()
            }
            Ok(reason) => stream_io_error(reason.into()),
            Err(e) => stream_io_error(e),
        }))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // h2 writes as soon as the connection's driver runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.shut {
            self.shut = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// Waits until the stream may send data: `Some(n)` octets of window, or `None` when the
/// stream can send no more. Asks for `want` octets.
pub(crate) fn poll_window(
    stream: &mut SendStream<Bytes>,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<Option<usize>> {
    loop {
        let n = stream.capacity();
        if n > 0 {
            return Poll::Ready(Some(n));
        }
        stream.reserve_capacity(want);
        match ready!(stream.poll_capacity(cx)) {
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Poll::Ready(None),
        }
    }
}
