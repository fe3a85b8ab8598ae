//! One TCP flow carried in capsules: a byte socket spliced to a stream whose bytes are RFC
//! 9297 capsules, TCP payload in `DATA` and the end of a direction in `FINAL_DATA`
//! (draft-ietf-httpbis-connect-tcp §8.3, which draft-rosomakho-masque-reverse-connect
//! reuses: "TCP payload is carried in DATA capsules").
//!
//! Both ends of reverse CONNECT use it: the gateway splices a public TCP connection to a
//! `connect-accept` stream, the origin splices that stream to its local service. It knows
//! nothing of HTTP beyond one shortcut: the stream is a [`FlowStream`], either an HTTP/2
//! stream ([`Tunnel`]) or any `AsyncRead + AsyncWrite` (an HTTP/1.1 upgraded connection, an
//! HTTP/3 stream, hyper's HTTP/2 upgrade), which carry the same bytes.
//!
//! ```text
//! FlowStream::H2   socket ─read─▶ [room|payload] BytesMut ─header in the room, freeze─▶ send_data
//!                  socket ◀─write─ DATA frame's Bytes, sliced by CapsuleDecoder::decode_from
//!                                   (window released as the payload is written)
//! FlowStream::Io   socket ─read─▶ buffer ─write─▶ stream;  stream ─read─▶ buffer ─decode─▶ socket
//! ```
//!
//! On an HTTP/2 tunnel no byte of payload is copied here or in h2: the socket is read into
//! a buffer with room for the capsule header in front, and that one buffer, frozen, is the
//! DATA frame's payload (a new buffer per read while h2 still holds the last one, the old
//! one again once h2 let it go); received DATA frames are decoded where they are, a
//! `DATA` capsule's payload being a slice of the frame. A caller holding a
//! `Box<dyn ptth_h3::ByteStream>` finds a [`Tunnel`] in it with `ByteStream::downcast`.
//!
//! Memory per flow is bounded: one read buffer per direction ([`FlowOptions::chunk`]) and
//! the decoder's bound on non-`DATA` capsules, which are skipped; on an HTTP/2 tunnel, what
//! h2 holds is bounded by the stream's flow-control windows (received data is released
//! only once written to the socket, sent data waits for send capacity).

use crate::tunnel::{poll_window, stream_io_error, Tunnel};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use ptth_core::{encode_capsule_header, CapsuleDecoder, CapsuleType, Decoded};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How a flow is run.
#[derive(Debug, Clone, Copy)]
pub struct FlowOptions {
    /// The flow ends when neither direction moved a byte for this long.
    pub idle_timeout: Duration,
    /// The most TCP payload read at once (one `DATA` capsule per read).
    pub chunk: usize,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            chunk: 64 * 1024,
        }
    }
}

/// The largest capsule other than `DATA`/`FINAL_DATA` a flow stream takes (such capsules
/// are skipped; a longer one is the peer's error).
pub const MAX_OTHER_CAPSULE: usize = 16 * 1024;

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEnd {
    /// Both directions ended (a FIN each way, or the stream's end).
    Closed,
    /// No byte moved for [`FlowOptions::idle_timeout`].
    Idle,
    /// The capsule stream failed or carried malformed capsules.
    Stream(String),
    /// The byte socket failed.
    Socket(String),
}

impl std::fmt::Display for FlowEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowEnd::Closed => f.write_str("closed"),
            FlowEnd::Idle => f.write_str("idle timeout"),
            FlowEnd::Stream(e) => write!(f, "stream: {e}"),
            FlowEnd::Socket(e) => write!(f, "socket: {e}"),
        }
    }
}

/// What a flow moved and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    /// Payload bytes read from the socket and sent in `DATA` capsules.
    pub to_stream: u64,
    /// Payload bytes received in `DATA` capsules and written to the socket.
    pub to_socket: u64,
    /// Why it ended.
    pub end: FlowEnd,
}

/// Room kept before a read's payload for the capsule header (two varints of 8 bytes).
const HEADER_ROOM: usize = 16;

/// The stream a flow's capsules travel on.
#[derive(Debug)]
pub enum FlowStream<T> {
    /// An HTTP/2 stream: capsules are sent as DATA frames made from the socket's read
    /// buffer and decoded from the received frames' `Bytes`, with no copy.
    H2(Tunnel),
    /// Any other byte stream: read into and written from `splice`'s buffers.
    Io(T),
}

impl<T> FlowStream<T> {
    /// `stream` as an HTTP/2 tunnel when `tunnel` finds one in it, as a byte stream
    /// otherwise. For a boxed stream: `FlowStream::new(io, <dyn ptth_h3::ByteStream>::downcast)`.
    pub fn new(stream: T, tunnel: impl FnOnce(T) -> Result<Tunnel, T>) -> Self {
        match tunnel(stream) {
            Ok(t) => Self::H2(t),
            Err(io) => Self::Io(io),
        }
    }
}

/// Splices `socket` (raw bytes) to `stream` (capsules) until both directions end, one
/// fails, or the flow is idle for `options.idle_timeout`. `stream` is any byte stream
/// ([`FlowStream::Io`]), or an HTTP/2 stream ([`FlowStream::H2`]) whose bytes move
/// without copies.
pub async fn splice<S, T>(socket: S, stream: FlowStream<T>, options: FlowOptions) -> FlowReport
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    // Shared by both directions (owned, not borrowed: a future holding a borrow of the
    // caller's local would not be `Send` for every lifetime, which spawning needs).
    let meter = Arc::new(Meter {
        start: Instant::now(),
        last: AtomicU64::new(0),
        to_stream: AtomicU64::new(0),
        to_socket: AtomicU64::new(0),
    });
    let chunk = options.chunk.max(1);
    let (sr, sw) = tokio::io::split(socket);
    let end = match stream {
        FlowStream::H2(tunnel) => {
            let (send, recv, unread) = tunnel.into_parts();
            run(
                h2_up(sr, send, chunk, meter.clone()),
                h2_down(recv, unread, sw, meter.clone()),
                meter.clone(),
                options,
            )
            .await
        }
        FlowStream::Io(io) => {
            let (cr, cw) = tokio::io::split(io);
            run(
                io_up(sr, cw, chunk, meter.clone()),
                io_down(cr, sw, chunk, meter.clone()),
                meter.clone(),
                options,
            )
            .await
        }
    };
    FlowReport {
        to_stream: meter.to_stream.load(Ordering::Relaxed),
        to_socket: meter.to_socket.load(Ordering::Relaxed),
        end,
    }
}

/// What both directions of a flow count.
struct Meter {
    start: Instant,
    /// Milliseconds from `start` to the last byte moved either way.
    last: AtomicU64,
    to_stream: AtomicU64,
    to_socket: AtomicU64,
}

impl Meter {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Runs both directions until both end, one fails, or nothing moves for the idle timeout.
async fn run(
    up: impl std::future::Future<Output = Result<(), FlowEnd>>,
    down: impl std::future::Future<Output = Result<(), FlowEnd>>,
    meter: Arc<Meter>,
    options: FlowOptions,
) -> FlowEnd {
    let tick = (options.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let idle_ms = options.idle_timeout.as_millis() as u64;
    let idle = async move {
        loop {
            tokio::time::sleep(tick).await;
            let now = meter.start.elapsed().as_millis() as u64;
            if now.saturating_sub(meter.last.load(Ordering::Relaxed)) >= idle_ms {
                return FlowEnd::Idle;
            }
        }
    };
    tokio::pin!(up, down, idle);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(e) => return e,
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(e) => return e,
            },
            e = &mut idle => return e,
        }
        if up_done && down_done {
            return FlowEnd::Closed;
        }
    }
}

fn stream_end(e: impl std::fmt::Display) -> FlowEnd {
    FlowEnd::Stream(e.to_string())
}

fn socket_end(e: impl std::fmt::Display) -> FlowEnd {
    FlowEnd::Socket(e.to_string())
}

/// Socket to stream on any byte stream: each read, its capsule header written in front of
/// it in the same buffer, goes out as one write.
async fn io_up<R, W>(mut sr: R, mut cw: W, chunk: usize, meter: Arc<Meter>) -> Result<(), FlowEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; HEADER_ROOM + chunk];
    let mut head = BytesMut::with_capacity(HEADER_ROOM);
    loop {
        let n = sr.read(&mut buf[HEADER_ROOM..]).await.map_err(socket_end)?;
        meter.touch();
        head.clear();
        if n == 0 {
            encode_capsule_header(CapsuleType::FINAL_DATA, 0, &mut head);
            cw.write_all(&head).await.map_err(stream_end)?;
            cw.shutdown().await.map_err(stream_end)?;
            return Ok(());
        }
        encode_capsule_header(CapsuleType::DATA, n as u64, &mut head);
        // The header goes right before the payload: one write, one DATA frame.
        let at = HEADER_ROOM - head.len();
        buf[at..HEADER_ROOM].copy_from_slice(&head);
        cw.write_all(&buf[at..HEADER_ROOM + n])
            .await
            .map_err(stream_end)?;
        cw.flush().await.map_err(stream_end)?;
        meter.to_stream.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Stream to socket on any byte stream: read into a buffer, decoded there, payloads
/// written to the socket as slices of it.
async fn io_down<R, W>(mut cr: R, mut sw: W, chunk: usize, meter: Arc<Meter>) -> Result<(), FlowEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = CapsuleDecoder::new(MAX_OTHER_CAPSULE);
    let mut buf = BytesMut::with_capacity(chunk);
    loop {
        while let Some(item) = decoder.decode(&mut buf).map_err(stream_end)? {
            if deliver(item, &mut sw, &meter).await? {
                return Ok(());
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(chunk);
        }
        let n = cr.read_buf(&mut buf).await.map_err(stream_end)?;
        meter.touch();
        if n == 0 {
            // The stream ended: inside a capsule is malformed (RFC 9297 §3.3); between
            // capsules without FINAL_DATA, the peer closed the flow.
            decoder.finish(&buf).map_err(stream_end)?;
            let _ = sw.shutdown().await;
            return Ok(());
        }
    }
}

/// Socket to an HTTP/2 stream: the socket is read into a buffer that keeps
/// [`HEADER_ROOM`] in front, the capsule header is written into the room's end, and the
/// buffer, frozen, is handed to h2 as DATA (in pieces as the send window admits, each a
/// slice of it). The buffer is used again once h2 has written and dropped it; until then
/// each read takes a new one.
async fn h2_up<R>(
    mut sr: R,
    mut send: SendStream<Bytes>,
    chunk: usize,
    meter: Arc<Meter>,
) -> Result<(), FlowEnd>
where
    R: AsyncRead + Unpin,
{
    let size = HEADER_ROOM + chunk;
    let mut last: Option<Bytes> = None;
    let mut head = BytesMut::with_capacity(HEADER_ROOM);
    loop {
        let mut buf = reuse(last.take(), size);
        buf.put_bytes(0, HEADER_ROOM);
        // Reads at most the buffer's spare capacity: `chunk`.
        let n = sr.read_buf(&mut buf).await.map_err(socket_end)?;
        meter.touch();
        head.clear();
        if n == 0 {
            encode_capsule_header(CapsuleType::FINAL_DATA, 0, &mut head);
            return send_all(&mut send, head.freeze(), true).await;
        }
        encode_capsule_header(CapsuleType::DATA, n as u64, &mut head);
        let at = HEADER_ROOM - head.len();
        buf[at..HEADER_ROOM].copy_from_slice(&head);
        buf.advance(at);
        let data = buf.freeze();
        last = Some(data.clone());
        send_all(&mut send, data, false).await?;
        meter.to_stream.fetch_add(n as u64, Ordering::Relaxed);
    }
}
/// The last chunk's buffer, empty, when h2 has let go of it (and its whole allocation of
/// `size` bytes is back); a new one otherwise.
fn reuse(last: Option<Bytes>, size: usize) -> BytesMut {
    if let Some(Ok(mut buf)) = last.map(Bytes::try_into_mut) {
        buf.clear();
        if buf.try_reclaim(size) {
            return buf;
        }
    }
    BytesMut::with_capacity(size)
}

/// Sends `data` on `send` as the stream's send window admits it (RFC 9113 §5.2), each
/// piece a slice of `data`; `end` sets END_STREAM on the last piece.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), FlowEnd> {
    loop {
        let Some(window) = poll_fn(|cx| poll_window(send, data.len(), cx)).await else {
            return Err(stream_end(sent_no_more(send).await));
        };
        let piece = data.split_to(window.min(data.len()));
        let last = data.is_empty();
        if send.send_data(piece, end && last).is_err() {
            return Err(stream_end(sent_no_more(send).await));
        }
        if last {
            return Ok(());
        }
    }
}

/// Why a stream that can send no more stopped: its reset, or the connection's end.
async fn sent_no_more(send: &mut SendStream<Bytes>) -> std::io::Error {
    match poll_fn(|cx| send.poll_reset(cx)).await {
        Ok(Reason::NO_ERROR) | Ok(Reason::CANCEL) | Ok(Reason::STREAM_CLOSED) => {
            std::io::ErrorKind::BrokenPipe.into()
        }
        Ok(reason) => stream_io_error(reason.into()),
        Err(e) => stream_io_error(e),
    }
}

/// An HTTP/2 stream to the socket: capsules decoded where the DATA frames are
/// ([`CapsuleDecoder::decode_from`]), each payload slice written to the socket, and the
/// frame's flow-control window released as its bytes are written (or skipped), so that
/// what the peer may have in flight is bounded by the window. `unread` is what the tunnel
/// received before (already released).
async fn h2_down<W>(
    mut recv: RecvStream,
    unread: Bytes,
    mut sw: W,
    meter: Arc<Meter>,
) -> Result<(), FlowEnd>
where
    W: AsyncWrite + Unpin,
{
    let mut decoder = CapsuleDecoder::new(MAX_OTHER_CAPSULE);
    let mut held = BytesMut::new();
    let mut frame = unread;
    // Octets of `frame` the peer's window still counts.
    let mut owed = 0usize;
    loop {
        while let Some(item) = decoder
            .decode_from(&mut held, &mut frame)
            .map_err(stream_end)?
        {
            if deliver(item, &mut sw, &meter).await? {
                return Ok(());
            }
            // Everything decoded so far is written or dropped: its window is free again.
            release(&mut recv, &mut owed, frame.len());
        }
        release(&mut recv, &mut owed, 0);
        let data = match poll_fn(|cx| recv.poll_data(cx)).await {
            Some(Ok(data)) => data,
            Some(Err(e)) if !(e.is_reset() && is_orderly(e.reason())) => {
                return Err(stream_end(stream_io_error(e)))
            }
            // The stream ended (or the peer reset it with NO_ERROR or CANCEL): inside a
            // capsule is malformed (RFC 9297 §3.3); between capsules without FINAL_DATA,
            // the peer closed the flow.
            _ => {
                decoder.finish(&held).map_err(stream_end)?;
                let _ = sw.shutdown().await;
                return Ok(());
            }
        };
        meter.touch();
        owed = data.len();
        frame = data;
    }
}

/// Writes a decoded `DATA` capsule's payload to the socket (shutting its write side down
/// after `FINAL_DATA`: `true`, the direction ended); any other capsule is skipped (RFC 9297
/// §3.2: unknown types are ignored).
async fn deliver<W>(item: Decoded, sw: &mut W, meter: &Meter) -> Result<bool, FlowEnd>
where
    W: AsyncWrite + Unpin,
{
    let Decoded::Data { payload, fin } = item else {
        return Ok(false);
    };
    sw.write_all(&payload).await.map_err(socket_end)?;
    meter
        .to_socket
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    if fin {
        sw.shutdown().await.map_err(socket_end)?;
    }
    Ok(fin)
}

/// A reset that ends the bytes rather than failing them (as [`Tunnel`] reads it).
fn is_orderly(reason: Option<Reason>) -> bool {
    matches!(reason, Some(Reason::NO_ERROR) | Some(Reason::CANCEL))
}

/// Releases the window of what was taken from the frame, leaving `left` octets owed.
fn release(recv: &mut RecvStream, owed: &mut usize, left: usize) {
    let n = owed.saturating_sub(left);
    if n > 0 {
        let _ = recv.flow_control().release_capacity(n);
        *owed -= n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_cross_in_data_capsules_and_fins_close_each_direction() {
        let (socket, mut app) = tokio::io::duplex(1 << 16);
        let (stream, mut peer) = tokio::io::duplex(1 << 16);
        let flow = tokio::spawn(splice(
            socket,
            FlowStream::Io(stream),
            FlowOptions::default(),
        ));
        app.write_all(b"hello").await.unwrap();
        // DATA (0x2028d7f2, a 4-byte varint) of length 5, then the payload.
        let mut got = [0u8; 10];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(
            &got[..],
            &[0xa0, 0x28, 0xd7, 0xf2, 0x05, b'h', b'e', b'l', b'l', b'o']
        );
        // The peer answers in a DATA capsule, then FINAL_DATA of length 0.
        peer.write_all(&[
            0xa0, 0x28, 0xd7, 0xf2, 0x02, b'o', b'k', 0xa0, 0x28, 0xd7, 0xf3, 0x00,
        ])
        .await
        .unwrap();
        let mut answer = Vec::new();
        app.shutdown().await.unwrap();
        app.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"ok");
        let mut fin = [0u8; 5];
        peer.read_exact(&mut fin).await.unwrap();
        assert_eq!(fin, [0xa0, 0x28, 0xd7, 0xf3, 0x00]);
        let report = flow.await.unwrap();
        assert_eq!(report.end, FlowEnd::Closed);
        assert_eq!((report.to_stream, report.to_socket), (5, 2));
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_capsule_is_the_streams_error() {
        let (socket, _app) = tokio::io::duplex(1 << 16);
        let (stream, mut peer) = tokio::io::duplex(1 << 16);
        let flow = tokio::spawn(splice(
            socket,
            FlowStream::Io(stream),
            FlowOptions::default(),
        ));
        peer.write_all(&[0xa0, 0x28, 0xd7, 0xf2, 0x09, b'x'])
            .await
            .unwrap();
        drop(peer);
        let report = flow.await.unwrap();
        assert!(
            matches!(report.end, FlowEnd::Stream(ref e) if e.contains("ended inside")),
            "{:?}",
            report.end
        );
    }

    /// Two ends of one HTTP/2 stream as tunnels (client's, server's), over a real h2
    /// connection in memory with `window`-octet windows and 16 KiB frames.
    async fn tunnel_pair(window: u32) -> (Tunnel, Tunnel) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(window)
                .initial_connection_window_size(window)
                .handshake::<_, Bytes>(a)
                .await
                .unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            Tunnel::new(send, req.into_body())
        });
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(window)
            .handshake::<_, Bytes>(b)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post("https://flow.example/")
            .body(())
            .unwrap();
        let (answer, send) = client.send_request(req, false).unwrap();
        let res = answer.await.unwrap();
        let server = server.await.unwrap();
        (Tunnel::new(send, res.into_body()), server)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 10) as u8)
            .collect()
    }

    /// Sends `data` into `app` and closes it, while reading what comes back.
    async fn exchange(mut app: tokio::io::DuplexStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = tokio::io::split(&mut app);
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        };
        tokio::join!(send, recv).1
    }

    /// Both directions through a flow on each end of one HTTP/2 stream, under a 64 KiB
    /// window and reads (7 000 bytes) that put capsule headers across DATA frames.
    async fn through_h2(near_h2: bool, far_h2: bool) {
        let (near, far) = tunnel_pair(65_535).await;
        let (near_socket, near_app) = tokio::io::duplex(1 << 16);
        let (far_socket, far_app) = tokio::io::duplex(1 << 16);
        let options = FlowOptions {
            idle_timeout: Duration::from_secs(30),
            chunk: 7_000,
        };
        let as_stream = |t: Tunnel, h2: bool| {
            if h2 {
                FlowStream::<Tunnel>::H2(t)
            } else {
                FlowStream::Io(t)
            }
        };
        let near_flow = tokio::spawn(splice(near_socket, as_stream(near, near_h2), options));
        let far_flow = tokio::spawn(splice(far_socket, as_stream(far, far_h2), options));
        let (up, down) = (pattern(1_500_000, 1), pattern(900_001, 2));
        let (got_far, got_near) = tokio::join!(
            exchange(far_app, down.clone()),
            exchange(near_app, up.clone())
        );
        assert!(
            got_far == up,
            "{} of {} bytes, or not the same",
            got_far.len(),
            up.len()
        );
        assert!(
            got_near == down,
            "{} of {} bytes",
            got_near.len(),
            down.len()
        );
        let (near, far) = (near_flow.await.unwrap(), far_flow.await.unwrap());
        assert_eq!(near.end, FlowEnd::Closed);
        assert_eq!(far.end, FlowEnd::Closed);
        assert_eq!((near.to_stream, near.to_socket), (1_500_000, 900_001));
        assert_eq!((far.to_stream, far.to_socket), (900_001, 1_500_000));
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_tunnel_flow_and_a_byte_stream_flow_carry_the_same_capsules() {
        through_h2(true, false).await;
        through_h2(false, true).await;
    }

    #[tokio::test(start_paused = true)]
    async fn h2_tunnel_flows_on_both_ends_move_every_byte_and_release_the_window() {
        // 2.4 MB through 64 KiB windows: a window not released as data is written stalls
        // the flow (and the paused clock then ends it as idle).
        through_h2(true, true).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_h2_tunnel_flow_refuses_an_overlong_capsule() {
        let (near, mut far) = tunnel_pair(65_535).await;
        let (socket, _app) = tokio::io::duplex(1 << 16);
        let flow = tokio::spawn(splice(
            socket,
            FlowStream::<Tunnel>::H2(near),
            FlowOptions::default(),
        ));
        let mut wire = BytesMut::new();
        encode_capsule_header(CapsuleType::AVAILABLE_SERVICES, 1 << 20, &mut wire);
        far.write_all(&wire).await.unwrap();
        let report = flow.await.unwrap();
        assert!(
            matches!(report.end, FlowEnd::Stream(ref e) if e.contains("peer sent AVAILABLE_SERVICES")),
            "{:?}",
            report.end
        );
    }

    #[test]
    fn a_chunks_buffer_is_used_again_once_h2_let_it_go() {
        let size = HEADER_ROOM + 1000;
        let mut buf = BytesMut::with_capacity(size);
        buf.put_bytes(0, HEADER_ROOM + 1000);
        buf.advance(HEADER_ROOM - 8);
        let data = buf.freeze();
        let at = data.as_ptr() as usize - (HEADER_ROOM - 8);
        // h2 still holds a piece: a new buffer.
        let held_by_h2 = data.slice(10..20);
        let fresh = reuse(Some(data.clone()), size);
        assert_ne!(fresh.as_ptr() as usize, at);
        drop(held_by_h2);
        // Let go of: the same allocation, from its start, empty.
        let again = reuse(Some(data), size);
        assert_eq!(again.as_ptr() as usize, at);
        assert!(again.is_empty() && again.capacity() >= size);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_times_out() {
        let (socket, _app) = tokio::io::duplex(1 << 16);
        let (stream, _peer) = tokio::io::duplex(1 << 16);
        let options = FlowOptions {
            idle_timeout: Duration::from_secs(5),
            ..FlowOptions::default()
        };
        let report = splice(socket, FlowStream::Io(stream), options).await;
        assert_eq!(report.end, FlowEnd::Idle);
    }
}
