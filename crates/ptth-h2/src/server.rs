//! An HTTP/2 server connection on the h2 crate directly: the gateway's side of setup
//! connections (RFC 8441 extended CONNECT for the PTTH setup and reverse CONNECT), and its
//! public HTTP/2 listeners (h2c by prior knowledge, TLS with ALPN `h2`).
//!
//! hyper's server hands an upgraded CONNECT stream over through a task it spawns per
//! stream, copying every DATA frame into a buffer and every write into a boxed slice sent
//! through a one-slot channel (`docs/performance.md` finding 8). Here the stream of a CONNECT
//! answered 2xx is a [`Tunnel`] on h2's own stream halves, and the connection's requests run
//! inside the connection's driver: no task per request, none per tunnel.
//!
//! ```text
//! Server (one future per connection)
//!   h2 Connection ─ poll_accept ─▶ Request<Body> ─▶ service ─▶ Response<Body>
//!        │                                              └─▶ headers, then body + trailers
//!        │                          CONNECT answered 2xx ─▶ OnTunnel ◀─ Tunnel (send, recv)
//!        └─ keep-alive PING with a deadline; graceful GOAWAY on graceful_shutdown
//! ```
//!
//! RFC 8441 §5: "Once the server has sent the 2xx response, the stream ... becomes a tunnel":
//! the answer's headers go out without END_STREAM, and the stream's two halves are handed to
//! whoever asked for them with [`on_tunnel`] while the request was being handled.

use crate::batch::{self, Release, WriteBatch};
use crate::keep_alive::{ConnectionError, KeepAlive, Pinger, KEEP_ALIVE};
use crate::message::{content_length, strip_connection_fields, RecvBody};
use crate::reversed::{Body, Windows, MAX_HEADER_LIST_SIZE};
use crate::tunnel::{poll_window, Tunnel};
use bytes::{Buf, Bytes};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// Streams a client may open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS,
/// RFC 9113 §6.5.2): the figure hyper's server ran with. Each open stream is at most one
/// exchange in the driver (or one tunnel), so this bounds the work a peer can start.
pub const MAX_CONCURRENT_STREAMS: u32 = 200;

/// A server connection's settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The receive windows announced in SETTINGS and the first WINDOW_UPDATE.
    pub windows: Windows,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// PING timing: a peer gone without a FIN (NAT, a pulled cable) must be found.
    pub keep_alive: KeepAlive,
    /// The most response data h2 queues on one stream ahead of the socket: a stream is
    /// given send capacity (which [`serve`]'s answers wait for before each write) only up
    /// to this much queued, whatever the peer's window says.
    pub send_buffer: usize,
    /// How many streams the peer may reset before the server accepted them (h2's Rapid
    /// Reset defence, CVE-2023-44487; past it the connection ends with ENHANCE_YOUR_CALM).
    pub pending_accept_resets: usize,
}

/// h2's own default for [`Options::send_buffer`] (400 KiB), which setup connections run
/// with.
pub const SEND_BUFFER: usize = 400 * 1024;

impl Default for Options {
    fn default() -> Self {
        Self {
            windows: Windows::default(),
            max_concurrent_streams: MAX_CONCURRENT_STREAMS,
            keep_alive: KEEP_ALIVE,
            send_buffer: SEND_BUFFER,
            pending_accept_resets: DEFAULT_PENDING_ACCEPT_RESETS,
        }
    }
}

/// h2's own default for [`Options::pending_accept_resets`]: right for a public listener.
/// A reversed connection's peer is the authenticated gateway, whose bursts of resets are
/// ordinary: see [`crate::reversed::pending_accept_resets`].
pub const DEFAULT_PENDING_ACCEPT_RESETS: usize = 20;

/// h2's server connection, which [`serve`] runs, on an IO whose writes the driver batches
/// per turn (the answers one turn of the driver makes leave in one write).
pub struct Connection<IO> {
    conn: h2::server::Connection<WriteBatch<IO>, Bytes>,
    release: Release<IO>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    /// h2's PING handle, which [`serve`] takes for its keep-alive: taken here first, the
    /// connection runs without one (`None` once taken).
    pub fn ping_pong(&mut self) -> Option<h2::PingPong> {
        self.conn.ping_pong()
    }
}

impl<IO> std::fmt::Debug for Connection<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

/// Starts the HTTP/2 server role on `io`: reads the client preface, sends SETTINGS (the
/// windows, 64 KiB frames, [`MAX_HEADER_LIST_SIZE`], the stream bound, and
/// SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, RFC 8441 §3), and bounds each stream's queued
/// response data to [`Options::send_buffer`] and the streams reset before they were
/// accepted to [`Options::pending_accept_resets`].
///
/// It waits for the peer's preface without a deadline of its own: the caller bounds it
/// (the gateway's setup deadline does).
pub async fn handshake<IO>(io: IO, options: &Options) -> Result<Connection<IO>, h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (io, release) = batch::new(io);
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(options.windows.stream)
        .initial_connection_window_size(options.windows.connection)
        .max_frame_size(64 * 1024)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_send_buffer_size(options.send_buffer)
        .max_pending_accept_reset_streams(options.pending_accept_resets)
        .enable_connect_protocol();
    let conn = builder.handshake(io).await?;
    Ok(Connection { conn, release })
}

/// What a connection's requests are answered with: called once per request from the
/// connection's driver; its future runs there too, so it should not block.
pub trait Service {
    /// The answer's future.
    type Future: Future<Output = Response<Body>> + Send + 'static;
    /// Answers `req`.
    fn call(&mut self, req: Request<Body>) -> Self::Future;
}

impl<F, Fut> Service for F
where
    F: FnMut(Request<Body>) -> Fut,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    type Future = Fut;
    fn call(&mut self, req: Request<Body>) -> Fut {
        self(req)
    }
}

/// Runs `conn`, answering each request with `service`, until the connection ends. `Ok` is
/// an orderly end (GOAWAY with NO_ERROR, or the peer's close after every stream ended).
pub fn serve<IO, S>(conn: Connection<IO>, keep_alive: KeepAlive, service: S) -> Server<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    let Connection { mut conn, release } = conn;
    let ping = conn.ping_pong();
    Server {
        conn,
        release,
        service,
        exchanges: FuturesUnordered::new(),
        pinger: Pinger::new(ping, keep_alive),
    }
}

/// One request's handling and answer, in the driver.
type Exchange = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The future [`serve`] returns: the connection, its exchanges, and its keep-alive.
pub struct Server<IO, S> {
    conn: h2::server::Connection<WriteBatch<IO>, Bytes>,
    /// Holds the IO's flushes while a turn runs; released, writes what the turn made.
    release: Release<IO>,
    service: S,
    /// At most one per open stream, so at most `max_concurrent_streams`.
    exchanges: FuturesUnordered<Exchange>,
    pinger: Pinger,
}

impl<IO, S> std::fmt::Debug for Server<IO, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("exchanges", &self.exchanges.len())
            .field("awaiting_pong", &self.pinger.awaiting())
            .finish_non_exhaustive()
    }
}

impl<IO, S> Server<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    /// Starts a graceful shutdown (RFC 9113 §6.8): GOAWAY, then the streams already open
    /// finish and the connection ends; new ones are refused.
    pub fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
    }
}

impl<IO, S> Future for Server<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service + Unpin,
{
    type Output = Result<(), ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // A turn's writes are held (`crate::batch`) while it runs the exchanges and accepts
        // streams, and go out together at its end: the answers to a dozen requests read in
        // one turn leave in one write, not one each.
        this.release.hold();
        if let Poll::Ready(end) = this.turn(cx) {
            return Poll::Ready(end);
        }
        if let Poll::Ready(Err(_)) = this.release.poll_release(cx) {
            // h2 meets the error on its next use of the IO.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// Streams accepted in one poll of a [`Server`] before it yields to the runtime's other
/// tasks (and writes what it has).
const TURN_STREAMS: usize = 64;

impl<IO, S> Server<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: Service,
{
    /// One turn: the exchanges that were woken, then a stream h2 has ready (h2 takes the
    /// frames the exchanges queued on the way), its exchange, and so on until h2 has no
    /// stream ready. `Ready` when the connection ended (`Ok` in order).
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectionError>> {
        if let Poll::Ready(lost) = self.pinger.poll(cx) {
            return Poll::Ready(Err(lost));
        }
        for _ in 0..TURN_STREAMS {
            // Each new exchange is polled once here, which registers its wake-up (and most
            // answer at once).
            while let Poll::Ready(Some(())) = self.exchanges.poll_next_unpin(cx) {}
            // Bounded by SETTINGS_MAX_CONCURRENT_STREAMS.
            match self.conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let exchange = start(req, respond, &mut self.service);
                    self.exchanges.push(exchange);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ConnectionError::H2(e))),
                // Every stream is closed and the connection ended in order.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        // A peer that keeps streams coming: the rest when the task comes back, after the
        // others the runtime has waiting.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The stream of a CONNECT request, once its 2xx answer is sent: take it from the
/// request's extensions with [`on_tunnel`] while handling the request.
#[derive(Debug)]
pub struct OnTunnel(oneshot::Receiver<Tunnel>);

/// Why an [`OnTunnel`] brought no tunnel: the answer was not a 2xx, its headers could not
/// be sent (the peer reset the stream, or the connection ended).
#[derive(Debug, thiserror::Error)]
#[error("the CONNECT stream did not become a tunnel (not answered 2xx, or reset by the peer)")]
pub struct NoTunnel;

impl Future for OnTunnel {
    type Output = Result<Tunnel, NoTunnel>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_err(|_| NoTunnel)
    }
}

/// Carries an [`OnTunnel`] in a request's extensions (which must be `Clone`).
#[derive(Clone)]
struct TunnelSlot(Arc<Mutex<Option<OnTunnel>>>);

/// Takes the tunnel-to-be out of a CONNECT request served by [`serve`] (extended, RFC 8441,
/// or not): it resolves once a 2xx answer's headers are sent, without END_STREAM. `None`
/// for any other request, or when it was taken already.
pub fn on_tunnel<B>(req: &mut Request<B>) -> Option<OnTunnel> {
    let slot = req.extensions_mut().remove::<TunnelSlot>()?;
    let on = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    on
}

/// A new stream's exchange: the request as the service sees it, then its answer sent.
fn start<S: Service>(
    req: Request<RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    service: &mut S,
) -> Exchange {
    let (mut parts, recv) = req.into_parts();
    // RFC 8441 §4: the `:protocol` pseudo-header, where hyper's server put it too.
    if let Some(p) = parts.extensions.remove::<h2::ext::Protocol>() {
        parts
            .extensions
            .insert(hyper::ext::Protocol::from(p.as_str()));
    }
    let head_request = parts.method == Method::HEAD;
    let (body, tunnel) = if parts.method == Method::CONNECT {
        // The request's DATA frames are the tunnel's, not a body.
        let (tx, rx) = oneshot::channel();
        parts
            .extensions
            .insert(TunnelSlot(Arc::new(Mutex::new(Some(OnTunnel(rx))))));
        (empty(), Some((tx, recv)))
    } else {
        let remaining = content_length(&parts.headers);
        let body = RecvBody::new(recv, remaining);
        (http_body_util::BodyExt::boxed_unsync(body), None)
    };
    // The service's future goes to the heap once, as it is: the exchange around it stays
    // small. Held by value in the exchange, a proxy's answer (kilobytes of future) was
    // moved into the exchange, pinned there a second time, and the whole boxed: a tenth of
    // the gateway's instructions per request went to `memcpy`.
    let answer = Box::pin(service.call(Request::from_parts(parts, body)));
    Box::pin(exchange(answer, respond, tunnel, head_request))
}

fn empty() -> Body {
    http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(
        http_body_util::Empty::new(),
        |never| match never {},
    ))
}

/// Waits for the service's answer (or the peer's reset of the stream, which drops it),
/// sends its head, then either hands the stream over as a tunnel (a CONNECT answered 2xx)
/// or sends the body and trailers.
async fn exchange<F>(
    mut answer: Pin<Box<F>>,
    mut respond: h2::server::SendResponse<Bytes>,
    tunnel: Option<(oneshot::Sender<Tunnel>, RecvStream)>,
    head_request: bool,
) where
    F: Future<Output = Response<Body>>,
{
    let res = std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(res));
        }
        // The peer reset the stream (or the connection ended): nobody wants the answer.
        respond.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(res) = res else { return };
    let (mut parts, body) = res.into_parts();
    strip_connection_fields(&mut parts.headers);
    crate::date::fill_in(&mut parts.headers);
    if let Some((tx, recv)) = tunnel {
        if parts.status.is_success() {
            // RFC 9110 §9.3.6: a 2xx answer to CONNECT has no content; the stream is the
            // tunnel from here on.
            if let Ok(send) = respond.send_response(Response::from_parts(parts, ()), false) {
                drop(tx.send(Tunnel::new(send, recv)));
            }
            return;
        }
        // Refused: the request's side is dropped (h2 resets it once the answer is sent).
        drop((tx, recv));
    }
    let no_content = head_request
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if !no_content {
        if let Some(len) = body.size_hint().exact() {
            parts
                .headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(len));
        }
    }
    let eos = no_content || body.is_end_stream();
    let Ok(stream) = respond.send_response(Response::from_parts(parts, ()), eos) else {
        return;
    };
    if !eos {
        send_body(body, stream).await;
    }
}

/// Sends `body` on `stream`: each data frame as the stream's flow-control window admits it
/// (RFC 9113 §5.2), then the trailers or END_STREAM. Ends early when the peer resets the
/// stream or the connection ends; a failing body resets the stream (the peer must not take
/// a truncated body for a whole one, RFC 9113 §8.1.1).
async fn send_body(mut body: Body, mut stream: SendStream<Bytes>) {
    let mut pending = Bytes::new();
    let mut last = false;
    std::future::poll_fn(|cx| loop {
        if !pending.is_empty() {
            match poll_window(&mut stream, pending.len(), cx) {
                Poll::Ready(Some(n)) => {
                    let chunk = pending.split_to(n.min(pending.len()));
                    let end = last && pending.is_empty();
                    if stream.send_data(chunk, end).is_err() || end {
                        return Poll::Ready(());
                    }
                    continue;
                }
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return stream.poll_reset(cx).map(|_| ()),
            }
        }
        match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut data) => {
                    pending = data.copy_to_bytes(data.remaining());
                    // END_STREAM rides on the last octets, not on an extra empty frame.
                    last = body.is_end_stream();
                    if pending.is_empty() && last {
                        let _ = stream.send_data(Bytes::new(), true);
                        return Poll::Ready(());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            },
            Poll::Ready(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                stream.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
            Poll::Pending => return stream.poll_reset(cx).map(|_| ()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    //! The server against the gateway's own h2 client (`crate::client`) over in-memory pipes.
    use super::*;
    use crate::client::{self, take_tunnel};
    use crate::reversed::BoxError;
    use http::header::HeaderMap;
    use http_body::Frame;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(30);

    fn full(data: impl Into<Bytes>) -> Body {
        http_body_util::Full::new(data.into())
            .map_err(|n| match n {})
            .boxed_unsync()
    }

    /// A body of `data` in `chunk`-sized frames, then `trailers`.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// The gateway's client on one end of a pipe, [`serve`] running `service` on the other.
    async fn pair<S>(service: S) -> client::Client
    where
        S: Service + Unpin + Send + 'static,
    {
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        tokio::spawn(async move {
            let conn = handshake(server_io, &Options::default()).await.unwrap();
            let _ = serve(conn, KEEP_ALIVE, service).await;
        });
        let (client, conn) = client::handshake(client_io, Windows::default())
            .await
            .unwrap();
        tokio::spawn(client::drive(conn, KEEP_ALIVE));
        client
    }

    /// An IO that counts the writes reaching it.
    struct CountWrites {
        io: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl AsyncRead for CountWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, data))?;
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// Sixteen requests that reach the server together are answered (1 KiB bodies, each a
    /// DATA frame h2 would flush on its own) in a few writes, not sixteen: the driver holds
    /// its turn's writes and lets them go at the end (`crate::batch`).
    #[tokio::test(flavor = "current_thread")]
    async fn answers_made_in_one_turn_leave_in_one_write() {
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server_io = CountWrites {
            io: server_io,
            writes: writes.clone(),
        };
        tokio::spawn(async move {
            let conn = handshake(server_io, &Options::default()).await.unwrap();
            let service = |_: Request<Body>| async { Response::new(full(vec![b'x'; 1024])) };
            let _ = serve(conn, KEEP_ALIVE, service).await;
        });
        let (client, conn) = client::handshake(client_io, Windows::default())
            .await
            .unwrap();
        tokio::spawn(client::drive(conn, KEEP_ALIVE));
        let client = Arc::new(client);
        let get = |client: Arc<client::Client>| async move {
            let req = Request::get("https://gateway.example/1k")
                .body(full(Bytes::new()))
                .unwrap();
            let res = client.send(req).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes().len()
        };
        // The settings exchange and a first answer, then a quiet connection.
        assert_eq!(get(client.clone()).await, 1024);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = writes.load(std::sync::atomic::Ordering::Relaxed);
        let all = futures_util::future::join_all((0..16).map(|_| get(client.clone())));
        let sizes = tokio::time::timeout(DEADLINE, all).await.unwrap();
        assert_eq!(sizes, vec![1024; 16]);
        let made = writes.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert!(
            made <= 3,
            "sixteen answers made in one turn took {made} writes"
        );
    }

    /// A POST's body (1 MiB, more than one window update's worth in many frames) and its
    /// trailers reach the service; its answer comes back with a body of its own and
    /// trailers, and a `content-length` from the body's exact size where it has one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_and_its_answer_carry_bodies_and_trailers() {
        let client = pair(|req: Request<Body>| async move {
            let path = req.uri().path().to_owned();
            let got = req.into_body().collect().await.unwrap();
            let sum = got.trailers().and_then(|t| t.get("x-sum")).cloned();
            let data = got.to_bytes();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-seen-len", HeaderValue::from(data.len()));
            if let Some(sum) = sum {
                trailers.insert("x-seen-sum", sum);
            }
            let frames = Frames(
                [
                    Frame::data(Bytes::from(format!("{path} "))),
                    Frame::data(data.slice(..10)),
                    Frame::trailers(trailers),
                ]
                .into(),
            );
            Response::new(frames.boxed_unsync())
        })
        .await;
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("1234"));
        let mut frames: std::collections::VecDeque<Frame<Bytes>> = data
            .chunks(10_000)
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect();
        frames.push_back(Frame::trailers(trailers));
        let req = Request::post("https://gateway.example/up")
            .header(header::TE, "trailers")
            .body(Frames(frames).boxed_unsync())
            .unwrap();
        let res = tokio::time::timeout(DEADLINE, async {
            let res = client.send(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.into_body().collect().await.unwrap()
        })
        .await
        .expect("the exchange stalled");
        let t = res.trailers().cloned().expect("no trailers came back");
        assert_eq!(
            res.to_bytes(),
            &b"/up \0\x01\x02\x03\x04\x05\x06\x07\x08\x09"[..]
        );
        assert_eq!(t["x-seen-len"], "1048576");
        assert_eq!(t["x-seen-sum"], "1234");

        // A body of known size goes out with its `content-length`, END_STREAM on its data.
        let client = pair(|_req: Request<Body>| async { Response::new(full("seven!!")) }).await;
        let req = Request::get("https://gateway.example/")
            .body(empty())
            .unwrap();
        let res = client.send(req).await.unwrap();
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "7");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "seven!!");
    }

    /// RFC 8441: an extended CONNECT's `:protocol` reaches the service as hyper's extension,
    /// and its 2xx answer makes the stream a tunnel: bytes cross it both ways, and each
    /// side's shutdown (END_STREAM) ends the other's reading.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_extended_connect_stream_becomes_a_tunnel_both_ways() {
        let client = pair(|mut req: Request<Body>| async move {
            let protocol = req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_owned());
            if req.method() != Method::CONNECT || protocol.as_deref() != Some("ptth") {
                let mut res = Response::new(full("not a ptth CONNECT"));
                *res.status_mut() = StatusCode::BAD_REQUEST;
                return res;
            }
            let on = on_tunnel(&mut req).expect("a CONNECT carries its tunnel-to-be");
            assert!(on_tunnel(&mut req).is_none(), "taken twice");
            tokio::spawn(async move {
                let mut io = on.await.unwrap();
                let mut got = Vec::new();
                io.read_to_end(&mut got).await.unwrap();
                got.reverse();
                io.write_all(&got).await.unwrap();
                io.shutdown().await.unwrap();
            });
            Response::new(empty())
        })
        .await;
        let mut req = Request::connect("https://gateway.example/.well-known/ptth")
            .body(empty())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("ptth"));
        let mut res = client.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut tunnel = take_tunnel(&mut res).expect("a 2xx carries the tunnel");
        // More than the 64 KiB a default stream window would take at once.
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let got = tokio::time::timeout(DEADLINE, async {
            tunnel.write_all(&sent).await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut got = Vec::new();
            tunnel.read_to_end(&mut got).await.unwrap();
            got
        })
        .await
        .expect("the tunnel stalled");
        let mut expected = sent;
        expected.reverse();
        assert!(got == expected, "{} octets back", got.len());
    }

    /// A classic CONNECT (RFC 9113 §8.5, no `:protocol`) answered 2xx is a tunnel too: the
    /// server's side writes first, and reads the client's bytes up to its END_STREAM.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_classic_connect_becomes_a_tunnel() {
        let (read_tx, read_rx) = oneshot::channel();
        let mut read_tx = Some(read_tx);
        let client = pair(move |mut req: Request<Body>| {
            let on = on_tunnel(&mut req);
            let no_protocol = req.extensions().get::<hyper::ext::Protocol>().is_none();
            let read_tx = read_tx.take();
            async move {
                let (Some(on), Some(read_tx), true) = (on, read_tx, no_protocol) else {
                    let mut res = Response::new(empty());
                    *res.status_mut() = StatusCode::BAD_REQUEST;
                    return res;
                };
                tokio::spawn(async move {
                    let mut io = on.await.unwrap();
                    io.write_all(b"hello").await.unwrap();
                    let mut got = Vec::new();
                    let end = io.read_to_end(&mut got).await;
                    let _ = read_tx.send((got, end.map_err(|e| e.to_string())));
                });
                Response::new(empty())
            }
        })
        .await;
        let req = Request::connect("db.internal:5432").body(empty()).unwrap();
        let mut res = tokio::time::timeout(DEADLINE, client.send(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let mut tunnel = take_tunnel(&mut res).expect("a 2xx carries the tunnel");
        let mut hello = [0u8; 5];
        tokio::time::timeout(DEADLINE, tunnel.read_exact(&mut hello))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&hello, b"hello");
        tunnel.write_all(b"bye").await.unwrap();
        tunnel.shutdown().await.unwrap();
        let (got, end) = tokio::time::timeout(DEADLINE, read_rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"bye");
        assert!(end.is_ok(), "{end:?}");
    }

    /// A CONNECT refused with a 4xx: the answer's body reaches the client, no tunnel is
    /// made on either side, and the connection goes on serving.
    #[tokio::test]
    async fn a_refused_connect_answers_with_its_body_and_makes_no_tunnel() {
        let (told_tx, told_rx) = oneshot::channel();
        let mut told = Some(told_tx);
        let client = pair(move |mut req: Request<Body>| {
            let on = on_tunnel(&mut req);
            let told = told.take();
            async move {
                if let (Some(on), Some(told)) = (on, told) {
                    tokio::spawn(async move { told.send(on.await.is_err()) });
                    let mut res = Response::new(full("no grant for you\n"));
                    *res.status_mut() = StatusCode::FORBIDDEN;
                    return res;
                }
                Response::new(full("still here"))
            }
        })
        .await;
        let mut req = Request::connect("https://gateway.example/.well-known/ptth")
            .body(empty())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("ptth"));
        let mut res = tokio::time::timeout(DEADLINE, client.send(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(take_tunnel(&mut res).is_none());
        let body = tokio::time::timeout(DEADLINE, res.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(body, "no grant for you\n");
        let no_tunnel = tokio::time::timeout(DEADLINE, told_rx).await.unwrap();
        assert!(no_tunnel.unwrap(), "the server's side got a tunnel");
        let res = client
            .send(
                Request::get("https://gateway.example/")
                    .body(empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    /// A peer that sent its preface and then only reads answers no PING: the connection is
    /// lost at the keep-alive deadline (20 s interval, 20 s to answer). A peer that answers
    /// keeps it past many deadlines. Time is paused: the runtime skips to each timer.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_ping_finds_a_silent_peer() {
        let (server_io, mut peer_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            peer_io.write_all(h2_preface()).await.unwrap();
            // An empty SETTINGS frame.
            peer_io
                .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            let mut sink = [0u8; 4096];
            while peer_io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let start = tokio::time::Instant::now();
        let conn = handshake(server_io, &Options::default()).await.unwrap();
        let never = |_req: Request<Body>| async { Response::new(empty()) };
        let outcome =
            tokio::time::timeout(Duration::from_secs(600), serve(conn, KEEP_ALIVE, never))
                .await
                .expect("the connection outlived its keep-alive deadline");
        assert!(
            matches!(outcome, Err(ConnectionError::KeepAliveTimeout(_))),
            "{outcome:?}"
        );
        let lost_after = start.elapsed();
        assert_eq!(
            lost_after.as_secs(),
            (KEEP_ALIVE.interval + KEEP_ALIVE.timeout).as_secs(),
            "lost after {lost_after:?}"
        );

        // The gateway's client answers PINGs: the server lives past ten deadlines.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (client, conn) = client::handshake(client_io, Windows::default())
            .await
            .unwrap();
        tokio::spawn(client::drive(conn, KEEP_ALIVE));
        let conn = handshake(server_io, &Options::default()).await.unwrap();
        let alive =
            tokio::time::timeout(Duration::from_secs(400), serve(conn, KEEP_ALIVE, never)).await;
        assert!(alive.is_err(), "ended: {alive:?}");
        drop(client);
    }

    /// A graceful shutdown sends GOAWAY: the stream in flight still gets its answer, the
    /// client sees the connection refuse new streams, and the server's future ends `Ok`.
    #[tokio::test]
    async fn graceful_shutdown_lets_the_stream_in_flight_finish() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let (arrived_tx, arrived_rx) = oneshot::channel::<()>();
        let mut go = Some((go_rx, arrived_tx));
        let server = tokio::spawn(async move {
            let conn = handshake(server_io, &Options::default()).await.unwrap();
            let mut server = serve(conn, KEEP_ALIVE, move |_req: Request<Body>| {
                let go = go.take();
                async move {
                    if let Some((go, arrived)) = go {
                        let _ = arrived.send(());
                        let _ = go.await;
                    }
                    Response::new(full("late but whole"))
                }
            });
            let mut arrived = std::pin::pin!(arrived_rx);
            tokio::select! {
                ended = &mut server => return ended,
                _ = &mut arrived => {}
            }
            server.graceful_shutdown();
            server.await
        });
        let (client, conn) = client::handshake(client_io, Windows::default())
            .await
            .unwrap();
        tokio::spawn(client::drive(conn, KEEP_ALIVE));
        let client = Arc::new(client);
        let c = client.clone();
        let first = tokio::spawn(async move {
            let res = c
                .send(
                    Request::get("https://gateway.example/")
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        });
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !client.peer_went_away() {
            assert!(tokio::time::Instant::now() < deadline, "no GOAWAY seen");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        go_tx.send(()).unwrap();
        let body = tokio::time::timeout(DEADLINE, first)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body, "late but whole");
        drop(client);
        let ended = tokio::time::timeout(DEADLINE, server)
            .await
            .unwrap()
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }

    /// A body of 16 KiB frames without end, counting the octets pulled from it.
    struct Endless(Arc<std::sync::atomic::AtomicUsize>);

    impl http_body::Body for Endless {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            const FRAME: usize = 16 * 1024;
            self.0
                .fetch_add(FRAME, std::sync::atomic::Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[7; FRAME])))))
        }
    }

    /// The client's end of the pipe, whose reading the test can stop for good.
    struct Stoppable<IO> {
        io: IO,
        stopped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Stoppable<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
                return Poll::Pending;
            }
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Stoppable<IO> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// How much of an endless response body the server pulls when the client stops
    /// reading before the answer, with `send_buffer` = `bound` (the stream and
    /// connection windows, 4 and 16 MiB, are far from the limit).
    async fn pulled_with(bound: usize) -> usize {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (arrived_tx, arrived_rx) = oneshot::channel::<oneshot::Sender<()>>();
        let mut arrived = Some(arrived_tx);
        let count = pulled.clone();
        tokio::spawn(async move {
            let options = Options {
                send_buffer: bound,
                ..Options::default()
            };
            let conn = handshake(server_io, &options).await.unwrap();
            let service = move |_req: Request<Body>| {
                let arrived = arrived.take();
                let count = count.clone();
                async move {
                    if let Some(arrived) = arrived {
                        let (go_tx, go_rx) = oneshot::channel();
                        let _ = arrived.send(go_tx);
                        let _ = go_rx.await;
                    }
                    Response::new(Endless(count).boxed_unsync())
                }
            };
            let _ = serve(conn, options.keep_alive, service).await;
        });
        let client_io = Stoppable {
            io: client_io,
            stopped: stopped.clone(),
        };
        let (client, conn) = client::handshake(client_io, Windows::default())
            .await
            .unwrap();
        tokio::spawn(client::drive(conn, KEEP_ALIVE));
        let req = Request::get("https://gateway.example/")
            .body(empty())
            .unwrap();
        let _answer = tokio::spawn(async move { client.send(req).await.map(|_| ()) });
        let go = arrived_rx.await.unwrap();
        stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        go.send(()).unwrap();
        // Time is paused: the runtime skips ahead only once every task is idle, so the
        // server has pulled all it will by the time this sleep ends.
        tokio::time::sleep(Duration::from_secs(1)).await;
        pulled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`Options::send_buffer`] bounds the response data queued per stream: the
    /// server pulls a body's next frame only once h2 grants send capacity, and h2 grants
    /// no more than the bound less what the stream has queued. So against a reader that
    /// stopped, a body is read no further than the bound plus what the pipe holds (64 KiB),
    /// h2's write buffer and the one frame in hand; with a larger bound, further.
    #[tokio::test(start_paused = true)]
    async fn the_send_buffer_bounds_how_far_a_body_is_read_ahead() {
        // The pipe's 64 KiB, the frame in hand and h2's write buffer: 80 KiB was seen.
        const SLACK: usize = 64 * 1024 + 48 * 1024;
        let small = pulled_with(128 * 1024).await;
        assert!(
            (128 * 1024..=128 * 1024 + SLACK).contains(&small),
            "{small} octets pulled with a 128 KiB bound"
        );
        let large = pulled_with(SEND_BUFFER).await;
        assert!(
            (SEND_BUFFER..=SEND_BUFFER + SLACK).contains(&large),
            "{large} octets pulled with a 400 KiB bound"
        );
    }

    fn h2_preface() -> &'static [u8] {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    }
}
