//! A request stream's HTTP datagrams for the version-neutral UDP flow pump
//! ([`ptth_core::HttpDatagrams`]), and byte streams that may be HTTP/3 request streams
//! ([`ByteStream`]), so that code holding a stream of any HTTP version behind one box can
//! still find its datagram path.

use crate::{H3Stream, RequestHandle};
use bytes::Bytes;
use std::any::Any;
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
/// stream), boxed as `Box<dyn ByteStream>`, that still says whether it is an [`H3Stream`],
/// and gives back the concrete stream it holds (`downcast`): an HTTP/2
/// tunnel's flow takes its frames' `Bytes` without copying them (`ptth_h2::flow`).
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + Any {
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

impl dyn ByteStream {
    /// The stream inside the box as a `U`, when that is what it is (looking through a box in
    /// the box); the box back otherwise.
    pub fn downcast<U: ByteStream>(self: Box<Self>) -> Result<U, Box<dyn ByteStream>> {
        let any: &dyn Any = &*self;
        if any.is::<U>() {
            let any: Box<dyn Any + Send> = self;
            return match any.downcast::<U>() {
                Ok(stream) => Ok(*stream),
                // `is` said it is a `U`; nothing can change a value's type in between.
                Err(_) => unreachable!("a checked downcast failed"),
            };
        }
        if any.is::<Box<dyn ByteStream>>() {
            let any: Box<dyn Any + Send> = self;
            return match any.downcast::<Box<dyn ByteStream>>() {
                Ok(inner) => (*inner).downcast::<U>(),
                Err(_) => unreachable!("a checked downcast failed"),
            };
        }
        Err(self)
    }
}

impl std::fmt::Debug for dyn ByteStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ByteStream")
    }
}

#[cfg(test)]
mod tests {
    use super::ByteStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    #[tokio::test]
    async fn a_boxed_stream_comes_back_as_itself_through_nested_boxes_and_only_as_itself() {
        let (a, mut b) = tokio::io::duplex(64);
        let boxed: Box<dyn ByteStream> = Box::new(a);
        // Not a TCP stream: the same box back, still working.
        let mut boxed = boxed.downcast::<tokio::net::TcpStream>().unwrap_err();
        boxed.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        b.read_exact(&mut one).await.unwrap();
        // A box in a box is looked through.
        let nested: Box<dyn ByteStream> = Box::new(boxed);
        let mut a: DuplexStream = nested.downcast::<DuplexStream>().unwrap();
        a.write_all(b"y").await.unwrap();
        b.read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"y");
    }
}
