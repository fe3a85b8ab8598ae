//! A request stream's HTTP datagrams for the version-neutral UDP flow pump
//! ([`ptth_core::HttpDatagrams`]), and byte streams that may be HTTP/3 request streams
//! ([`ByteStream`]), so that code holding a stream of any HTTP version behind one box can
//! still find its datagram path.

use crate::{H3Stream, RequestHandle};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

impl ptth_core::HttpDatagrams for RequestHandle {
    fn max_payload(&self) -> Option<usize> {
        self.max_datagram_payload()
    }

    fn send(&self, payload: Bytes) -> std::io::Result<()> {
        self.send_datagram(payload).map_err(std::io::Error::other)
    }

    async fn recv(&self) -> Option<Bytes> {
        self.recv_datagram().await
    }

    fn dropped(&self) -> u64 {
        self.datagrams_dropped()
    }
}

/// A byte stream of any HTTP version (an HTTP/1.1 or HTTP/2 upgrade, an HTTP/3 request
/// stream), boxed as `Box<dyn ByteStream>`, that still says whether it is an [`H3Stream`].
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The HTTP/3 request stream's handle (its HTTP datagrams) when this is one.
    fn h3_request(&self) -> Option<&RequestHandle>;
}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {
    fn h3_request(&self) -> Option<&RequestHandle> {
        let any = self as &dyn std::any::Any;
        if let Some(stream) = any.downcast_ref::<H3Stream>() {
            return Some(stream.request_handle());
        }
        // A boxed stream is a stream too: ask what is inside the box.
        any.downcast_ref::<Box<dyn ByteStream>>()
            .and_then(|inner| (**inner).h3_request())
    }
}

impl std::fmt::Debug for dyn ByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteStream")
    }
}
