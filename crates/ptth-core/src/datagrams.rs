//! The HTTP datagram path of one request stream (RFC 9297 §2.1), as the version-neutral UDP
//! flow pump (`ptth_h2::udp_flow`) sees it: an interface, no I/O of its own. `ptth_h3`'s
//! request handles provide it; `None` stands for a stream with no datagram path (HTTP/1.1,
//! HTTP/2), on which only capsules carry datagrams.

use bytes::Bytes;
use std::future::Future;
use std::io;

/// The QUIC DATAGRAM path of one HTTP/3 request stream.
pub trait HttpDatagrams: Send + Sync + 'static {
    /// The largest HTTP datagram payload (Context ID included) that fits one QUIC DATAGRAM
    /// frame now; `None` when datagrams were not negotiated on the connection.
    fn max_payload(&self) -> Option<usize>;

    /// Sends one HTTP datagram payload (Context ID, then the UDP payload).
    fn send(&self, payload: Bytes) -> io::Result<()>;

    /// The next HTTP datagram payload received for the stream; `None` once none can come
    /// (datagrams not enabled, or the connection closed).
    fn recv(&self) -> impl Future<Output = Option<Bytes>> + Send;

    /// Received datagrams lost because the stream's queue was full.
    fn dropped(&self) -> u64 {
        0
    }
}

/// A stream that may have a datagram path: without one, nothing fits a frame, nothing can
/// be sent that way and nothing arrives.
impl<D: HttpDatagrams> HttpDatagrams for Option<D> {
    fn max_payload(&self) -> Option<usize> {
        self.as_ref()?.max_payload()
    }

    fn send(&self, payload: Bytes) -> io::Result<()> {
        match self {
            Some(d) => d.send(payload),
            None => Err(io::Error::other("not an HTTP/3 stream")),
        }
    }

    async fn recv(&self) -> Option<Bytes> {
        self.as_ref()?.recv().await
    }

    fn dropped(&self) -> u64 {
        self.as_ref().map_or(0, HttpDatagrams::dropped)
    }
}
