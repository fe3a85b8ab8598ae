//! Request-stream plumbing shared by both roles: the frame reader over a quinn stream,
//! received bodies ([`RecvBody`]), extended-CONNECT byte streams ([`H3Stream`]),
//! per-request handles for datagrams ([`RequestHandle`]), and the body writer.

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use ptth_core::StreamId;
use quinn::VarInt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

use super::{InFlight, Shared};
use crate::error::{BoxError, Culprit, H3Error};
use crate::frame::{
    self, encode_data, encode_header, Event, Frame, FrameDecoder, ProtocolError, H3_MESSAGE_ERROR,
};
use crate::qpack::{self, Field};

/// The `:protocol` pseudo-header of an extended CONNECT request (RFC 9220), carried in
/// the request's extensions in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Protocol(pub String);

/// Reads frames from one request stream.
#[derive(Debug)]
pub(crate) struct FrameReader {
    shared: Arc<Shared>,
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    eof: bool,
    /// The read buffer for bodies and tunnels, allocated once the first HEADERS frame has
    /// arrived: a stream the peer opens and leaves silent costs no buffer.
    scratch: Vec<u8>,
    head_seen: bool,
}

/// What one read of a body or tunnel takes from the stream at most.
const READ_CHUNK: usize = 32 * 1024;
/// Before HEADERS, reads go through a small buffer on the stack: a request head is small,
/// and a stream that never sends one must not cost a [`READ_CHUNK`].
const HEAD_READ_CHUNK: usize = 2 * 1024;

impl FrameReader {
    pub(crate) fn new(shared: Arc<Shared>, recv: quinn::RecvStream) -> Self {
        // A HEADERS frame carries a compressed section, no larger than the decoded one
        // plus a little per-field overhead; bound what we buffer by our own limit.
        let limit = shared.config.max_field_section_size.max(4096) + 1024;
        Self {
            shared,
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(limit),
            eof: false,
            scratch: Vec::new(),
            head_seen: false,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Event>, H3Error>> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(event)) => return Poll::Ready(Ok(Some(event))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(self.shared.fail(e.into()))),
            }
            if self.eof {
                return Poll::Ready(match self.decoder.finish(&self.buf) {
                    Ok(()) => Ok(None),
                    Err(e) => Err(self.shared.fail(e.into())),
                });
            }
            let read = if self.head_seen {
                if self.scratch.is_empty() {
                    self.scratch = vec![0; READ_CHUNK];
                }
                let read = ready!(self.recv.poll_read(cx, &mut self.scratch));
                if let Ok(n) = read {
                    self.buf.extend_from_slice(&self.scratch[..n]);
                }
                read
            } else {
                let mut small = [0u8; HEAD_READ_CHUNK];
                let read = ready!(self.recv.poll_read(cx, &mut small));
                if let Ok(n) = read {
                    self.buf.extend_from_slice(&small[..n]);
                }
                read
            };
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(self.shared.read_error(&e))),
            }
        }
    }

    pub(crate) async fn next_event(&mut self) -> Result<Option<Event>, H3Error> {
        poll_fn(|cx| self.poll_event(cx)).await
    }

    pub(crate) fn stop(&mut self, code: u64) {
        let _ = self
            .recv
            .stop(VarInt::from_u64(code).unwrap_or(VarInt::MAX));
    }

    pub(crate) fn finished(&self) -> bool {
        self.eof && self.buf.is_empty()
    }

    /// Checks a frame that is not DATA or HEADERS on a request stream. `client` is true
    /// when we are reading a response.
    pub(crate) fn unexpected(&self, frame: &Frame, client: bool) -> H3Error {
        let err = match frame {
            // RFC 9114 §7.2.5: "A client MUST NOT send a PUSH_PROMISE frame. A server MUST
            // treat the receipt of a PUSH_PROMISE frame as a connection error of type
            // H3_FRAME_UNEXPECTED." A client that sent no MAX_PUSH_ID must treat a push ID
            // above it as H3_ID_ERROR.
            Frame::PushPromise { .. } if client => {
                ProtocolError::Id("PUSH_PROMISE without MAX_PUSH_ID")
            }
            // RFC 9114 §7.2.3, §7.2.4, §7.2.6, §7.2.7: CANCEL_PUSH, SETTINGS, GOAWAY and
            // MAX_PUSH_ID on a request stream are H3_FRAME_UNEXPECTED.
            other => ProtocolError::UnexpectedFrame {
                ty: other.ty(),
                stream: "a request stream",
            },
        };
        self.shared.fail(err)
    }

    /// Reads up to the first HEADERS frame. `Ok(None)` if the stream ended first.
    pub(crate) async fn read_head(&mut self, client: bool) -> Result<Option<Bytes>, H3Error> {
        match self.next_event().await? {
            Some(Event::Frame(Frame::Headers(block))) => {
                self.head_seen = true;
                Ok(Some(block))
            }
            // RFC 9114 §4.1: "Receipt of an invalid sequence of frames MUST be treated as a
            // connection error of type H3_FRAME_UNEXPECTED." DATA before HEADERS is one.
            Some(Event::Data(_)) => Err(self.shared.fail(ProtocolError::UnexpectedFrame {
                ty: frame::DATA,
                stream: "a request stream before HEADERS",
            })),
            Some(Event::Frame(other)) => Err(self.unexpected(&other, client)),
            None => Ok(None),
        }
    }
}

/// Outcome of decoding a field section.
pub(crate) enum FieldsError {
    /// The connection was closed.
    Connection(H3Error),
    /// Only this message is bad: reset the stream with the code.
    Stream(u64, String),
}

/// Decodes a QPACK field section with our size limit.
pub(crate) fn decode_fields(shared: &Shared, block: &[u8]) -> Result<Vec<Field>, FieldsError> {
    qpack::decode(block, shared.config.max_field_section_size).map_err(|e| {
        // RFC 9204 §2.2: "If the decoder encounters a reference in a field line
        // representation to a dynamic table entry that has already been evicted or that
        // has an absolute index greater than or equal to the declared Required Insert
        // Count, it MUST treat this as a connection error of type
        // QPACK_DECOMPRESSION_FAILED."
        if e.is_connection_error() {
            FieldsError::Connection(shared.fail(ProtocolError::Qpack {
                code: e.h3_code(),
                reason: e.to_string(),
            }))
        } else {
            FieldsError::Stream(e.h3_code(), e.to_string())
        }
    })
}

/// A per-request-stream handle: its ID and its HTTP datagrams (RFC 9297).
#[derive(Debug, Clone)]
pub struct RequestHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    shared: Arc<Shared>,
    id: StreamId,
    rx: Option<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    /// Datagrams dropped because `rx` was full.
    dropped: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.shared.unregister_datagrams(self.id);
        }
    }
}

impl RequestHandle {
    pub(crate) fn new(shared: &Arc<Shared>, id: StreamId) -> Self {
        let (rx, dropped) = match shared.register_datagrams(id) {
            Some((rx, dropped)) => (Some(tokio::sync::Mutex::new(rx)), Some(dropped)),
            None => (None, None),
        };
        Self {
            inner: Arc::new(HandleInner {
                shared: shared.clone(),
                id,
                rx,
                dropped,
            }),
        }
    }

    /// The request stream's QUIC stream ID.
    pub fn stream_id(&self) -> StreamId {
        self.inner.id
    }

    /// Whether HTTP datagrams were negotiated on the connection.
    pub fn datagrams_negotiated(&self) -> bool {
        self.inner.shared.datagrams_negotiated()
    }

    /// The largest payload [`Self::send_datagram`] can send now: what fits one QUIC
    /// DATAGRAM frame on the current path, less the quarter stream ID. `None` unless
    /// datagrams were negotiated.
    pub fn max_datagram_payload(&self) -> Option<usize> {
        self.inner.shared.max_datagram_payload(self.inner.id)
    }

    /// Received datagrams for this stream dropped because it had not read the earlier
    /// ones (its queue holds 64).
    pub fn datagrams_dropped(&self) -> u64 {
        self.inner
            .dropped
            .as_ref()
            .map_or(0, |d| d.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Sends an HTTP datagram associated with this request stream; the quarter stream ID
    /// is encoded with the connection's mapping (4q forward, 4q+1 reversed).
    pub fn send_datagram(&self, payload: Bytes) -> Result<(), H3Error> {
        self.inner.shared.send_datagram(self.inner.id, payload)
    }

    /// The next HTTP datagram for this request stream; `None` if datagrams are not
    /// enabled locally or the connection closed.
    pub async fn recv_datagram(&self) -> Option<Bytes> {
        let rx = self.inner.rx.as_ref()?;
        let mut rx = rx.lock().await;
        tokio::select! {
            d = rx.recv() => d,
            _ = self.inner.shared.conn.closed() => None,
        }
    }
}

/// A received request or response body: DATA payloads, then optional trailers.
#[derive(Debug)]
pub struct RecvBody {
    reader: Option<FrameReader>,
    trailers_seen: bool,
    client: bool,
    stop_code: u64,
    guard: Option<InFlight>,
    handle: RequestHandle,
}

impl RecvBody {
    pub(crate) fn new(
        reader: FrameReader,
        client: bool,
        guard: Option<InFlight>,
        handle: RequestHandle,
    ) -> Self {
        Self {
            reader: Some(reader),
            trailers_seen: false,
            client,
            // RFC 9114 §4.1.1: a server "can abort reading the request stream" with
            // H3_NO_ERROR once it has responded; a client that loses interest cancels.
            stop_code: if client {
                frame::H3_REQUEST_CANCELLED
            } else {
                frame::H3_NO_ERROR
            },
            guard,
            handle,
        }
    }

    pub(crate) fn empty(handle: RequestHandle) -> Self {
        Self {
            reader: None,
            trailers_seen: true,
            client: false,
            stop_code: frame::H3_NO_ERROR,
            guard: None,
            handle,
        }
    }

    /// The request stream's handle (stream ID, datagrams).
    pub fn request_handle(&self) -> &RequestHandle {
        &self.handle
    }

    fn done(&mut self) {
        self.reader = None;
        self.guard = None;
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.as_mut() {
            if !reader.finished() {
                reader.stop(self.stop_code);
            }
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = H3Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, H3Error>>> {
        let this = self.get_mut();
        let Some(reader) = this.reader.as_mut() else {
            return Poll::Ready(None);
        };
        let event = match ready!(reader.poll_event(cx)) {
            Ok(Some(event)) => event,
            Ok(None) => {
                this.done();
                return Poll::Ready(None);
            }
            Err(e) => {
                this.done();
                return Poll::Ready(Some(Err(e)));
            }
        };
        let result = match event {
            Event::Data(data) if !this.trailers_seen => Ok(http_body::Frame::data(data)),
            Event::Frame(Frame::Headers(block)) if !this.trailers_seen => {
                this.trailers_seen = true;
                let shared = reader.shared().clone();
                match decode_fields(&shared, &block) {
                    Ok(fields) => match qpack::parse_trailers(fields) {
                        Ok(trailers) => Ok(http_body::Frame::trailers(trailers)),
                        // RFC 9114 §4.1.2: malformed messages are a stream error of type
                        // H3_MESSAGE_ERROR.
                        Err(e) => {
                            reader.stop(H3_MESSAGE_ERROR);
                            Err(H3Error::Stream {
                                raised_by: Culprit::Local,
                                code: H3_MESSAGE_ERROR,
                                reason: e.to_string(),
                            })
                        }
                    },
                    Err(FieldsError::Connection(e)) => Err(e),
                    Err(FieldsError::Stream(code, reason)) => {
                        reader.stop(code);
                        Err(H3Error::Stream {
                            raised_by: Culprit::Local,
                            code,
                            reason,
                        })
                    }
                }
            }
            // RFC 9114 §4.1: after trailers, no DATA or HEADERS may follow.
            Event::Data(_) | Event::Frame(Frame::Headers(_)) => {
                Err(reader.shared().fail(ProtocolError::UnexpectedFrame {
                    ty: frame::HEADERS,
                    stream: "a request stream after trailers",
                }))
            }
            Event::Frame(other) => Err(reader.unexpected(&other, this.client)),
        };
        if result.is_err() {
            this.done();
        }
        Poll::Ready(Some(result))
    }

    fn is_end_stream(&self) -> bool {
        self.reader.is_none()
    }
}

/// The stream of an extended CONNECT (RFC 9220) or CONNECT request after a 2xx: a byte
/// stream whose bytes travel as DATA frame payloads.
#[derive(Debug)]
pub struct H3Stream {
    reader: FrameReader,
    send: quinn::SendStream,
    pending: Bytes,
    readable: Bytes,
    read_done: bool,
    client: bool,
    handle: RequestHandle,
    _guard: InFlight,
}

impl H3Stream {
    pub(crate) fn new(
        reader: FrameReader,
        send: quinn::SendStream,
        client: bool,
        handle: RequestHandle,
        guard: InFlight,
    ) -> Self {
        Self {
            reader,
            send,
            pending: Bytes::new(),
            readable: Bytes::new(),
            read_done: false,
            client,
            handle,
            _guard: guard,
        }
    }

    /// The request stream's handle (stream ID, datagrams).
    pub fn request_handle(&self) -> &RequestHandle {
        &self.handle
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.send).poll_write(cx, &self.pending))?;
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for H3Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.readable.is_empty() {
                let n = this.readable.len().min(buf.remaining());
                buf.put_slice(&this.readable.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.reader.poll_event(cx)) {
                Ok(Some(Event::Data(data))) => this.readable = data,
                // Trailers end a tunnel's data; nothing else may follow them.
                Ok(Some(Event::Frame(Frame::Headers(_)))) => {}
                Ok(Some(Event::Frame(other))) => {
                    return Poll::Ready(Err(io::Error::other(
                        this.reader.unexpected(&other, this.client),
                    )))
                }
                Ok(None) => this.read_done = true,
                Err(e) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for H3Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(64 * 1024);
        let mut out = BytesMut::with_capacity(n + 16);
        encode_data(&buf[..n], &mut out);
        this.pending = out.freeze();
        // Start sending at once; errors resurface on the next call.
        let _ = this.poll_drain(cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.send).poll_shutdown(cx)
    }
}

/// Encodes and writes a HEADERS frame, honouring the peer's
/// SETTINGS_MAX_FIELD_SECTION_SIZE.
pub(crate) async fn write_headers(
    shared: &Shared,
    send: &mut quinn::SendStream,
    fields: &[Field],
) -> Result<(), H3Error> {
    // RFC 9114 §4.2.2: "An implementation that has received this parameter SHOULD NOT
    // send an HTTP message header that exceeds the indicated size"; the size of a field
    // is its name and value lengths plus 32.
    if let Some(limit) = shared
        .peer_settings_now()
        .and_then(|s| s.max_field_section_size)
    {
        let size: u64 = fields
            .iter()
            .map(|(n, v)| n.len() as u64 + v.len() as u64 + 32)
            .sum();
        if size > limit {
            return Err(H3Error::HeadersTooLarge { size, limit });
        }
    }
    let mut block = BytesMut::new();
    qpack::encode(fields, &mut block);
    let mut out = BytesMut::new();
    Frame::Headers(block.freeze()).encode(&mut out);
    send.write_all(&out)
        .await
        .map_err(|e| shared.write_error(&e))
}

/// Streams a body as DATA frames and its trailers as a final HEADERS frame. Does not
/// finish the stream.
pub(crate) async fn send_body<B>(
    shared: &Shared,
    send: &mut quinn::SendStream,
    body: B,
) -> Result<(), H3Error>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    loop {
        // Keep the body's error type out of the state held across awaits (it need not
        // be Send).
        let frame = match body.frame().await {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(H3Error::Body(e.into().to_string())),
        };
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                let mut header = BytesMut::with_capacity(16);
                encode_header(frame::DATA, data.len() as u64, &mut header);
                send.write_all_chunks(&mut [header.freeze(), data])
                    .await
                    .map_err(|e| shared.write_error(&e))?;
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let fields = qpack::trailer_fields(&trailers);
                    write_headers(shared, send, &fields).await?;
                    // Trailers end the message (RFC 9114 §4.1).
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{quic_pair, TIMEOUT};
    use crate::{H3Config, H3Connection, RequestDirection};
    use std::time::Duration;

    #[tokio::test]
    async fn a_stream_costs_no_read_buffer_before_its_headers() {
        // A connection's shared state for the reader (its own connection is never used).
        let (state_conn, _c, _ep1) = quic_pair(b"h3").await;
        let h3 = H3Connection::new(state_conn, H3Config::new(RequestDirection::ClientSends))
            .await
            .unwrap();
        let (server, client, _ep2) = quic_pair(b"h3").await;
        let (mut send, _client_recv) = client.open_bi().await.unwrap();
        // One byte of a HEADERS frame, then nothing.
        send.write_all(&[0x01]).await.unwrap();
        let (_server_send, recv) = server.accept_bi().await.unwrap();
        let mut reader = FrameReader::new(h3.shared.clone(), recv);
        let stalled = tokio::time::timeout(Duration::from_millis(200), reader.read_head(false));
        assert!(stalled.await.is_err(), "no HEADERS yet");
        assert_eq!(
            reader.scratch.capacity(),
            0,
            "no read buffer before HEADERS"
        );
        // The rest of the HEADERS frame (any block: it is not decoded here), then a DATA frame.
        send.write_all(&[0x03, 0x00, 0x00, 0xd1]).await.unwrap();
        let head = tokio::time::timeout(TIMEOUT, reader.read_head(false))
            .await
            .unwrap();
        assert_eq!(head.unwrap().unwrap().as_ref(), &[0x00, 0x00, 0xd1]);
        send.write_all(&[0x00, 0x02, b'h', b'i']).await.unwrap();
        let data = tokio::time::timeout(TIMEOUT, reader.next_event())
            .await
            .unwrap();
        assert!(matches!(data, Ok(Some(Event::Data(_)))), "{data:?}");
        assert_eq!(
            reader.scratch.len(),
            READ_CHUNK,
            "bodies read in full chunks"
        );
    }
}
