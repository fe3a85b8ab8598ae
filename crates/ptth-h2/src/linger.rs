//! Lingering on a byte stream after the HTTP connection inside it ends, so its last bytes
//! reach the peer: the origin's reversed connections, and the gateway's setup connections
//! when it stops.
//!
//! Over TLS on TCP (rh1, rh2, h2-reverse, the upgrades, the setup connections): closing a
//! socket with bytes still unread (a WINDOW_UPDATE, a PING or the peer's own GOAWAY sent
//! after the last read) makes the kernel send RST, not FIN; the peer's next write then
//! fails and takes with it what it had received but not read yet. So the stream is read
//! until the peer closes.
//!
//! A reversed connection carried by one stream of an outer connection (PTTH -01 extended
//! CONNECT over HTTP/2) ends when the HTTP server inside it has written its last response
//! and closed its side. Dropping the stream then, while the gateway has not closed its own
//! side, resets it (RFC 9113 §8.1: a stream abandoned early is reset with CANCEL), and the
//! gateway sees the tunnel fail instead of end: the requests it was still reading answers
//! for fail with it. So the stream is handed back when the server lets go of it, and read
//! until the gateway closes its side (bounded), as a TCP socket lingers on close.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

/// The longest an ended stream waits for its peer to close its side.
pub const MAX_LINGER: Duration = Duration::from_secs(5);

/// A byte stream that hands itself back through a channel when dropped.
pub struct Linger<IO> {
    io: Option<IO>,
    back: Option<oneshot::Sender<IO>>,
}

impl<IO> std::fmt::Debug for Linger<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linger")
            .field("handed_back", &self.io.is_none())
            .finish_non_exhaustive()
    }
}

impl<IO> Linger<IO> {
    /// `io`, and where it comes back once the wrapper is dropped.
    pub fn new(io: IO) -> (Self, oneshot::Receiver<IO>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                io: Some(io),
                back: Some(tx),
            },
            rx,
        )
    }

    fn io(&mut self) -> std::io::Result<&mut IO> {
        self.io
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the stream was handed back"))
    }
}

impl<IO> Drop for Linger<IO> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            let _ = back.send(io);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Linger<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Linger<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }
}

/// Once the stream comes back, reads (and discards) what the peer still sends until it
/// closes its side, for at most `bound` (and [`MAX_LINGER`]); then drops the stream.
pub async fn until_peer_closes<IO: AsyncRead + Unpin>(
    back: oneshot::Receiver<IO>,
    bound: Duration,
) {
    let _ = tokio::time::timeout(bound.min(MAX_LINGER), async {
        let Ok(mut io) = back.await else { return };
        let mut buf = [0u8; 4096];
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_stream_comes_back_when_dropped_and_is_read_to_its_end() {
        let (mine, mut theirs) = tokio::io::duplex(64);
        let (mut io, back) = Linger::new(mine);
        io.write_all(b"last answer").await.unwrap();
        drop(io);
        let mut got = [0u8; 11];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"last answer");
        // The stream is still open after the wrapper was dropped: the peer can still send,
        // and the linger ends when the peer closes.
        let lingering = tokio::spawn(until_peer_closes(back, Duration::from_secs(30)));
        theirs.write_all(b"late bytes").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !lingering.is_finished(),
            "it lingers while the peer is open"
        );
        drop(theirs);
        tokio::time::timeout(Duration::from_secs(5), lingering)
            .await
            .expect("the linger ends when the peer closes")
            .unwrap();
    }
}
