//! Reversed HTTP/2: the gateway is the HTTP/2 client on the stream it accepted, the origin the
//! HTTP/2 server on the stream it dialled.
//!
//! draft-thomson-ptth-potato §4.3: "the gateway sends the client connection preface" even
//! though it is the TLS server; the origin answers with the server preface (SETTINGS). The
//! gateway opens requests on odd streams. Nothing else in RFC 9113 changes.

use hyper::body::Incoming;
use hyper::client::conn::http2 as client;
use hyper::server::conn::http2 as server;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Any error a body may produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The streaming body type used on both sides.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// hyper's HTTP/2 client handle; clone it freely, it multiplexes. The gateway's reversed
/// client is [`crate::client`]; this one serves the origin's extended CONNECT setup.
pub type Sender = client::SendRequest<Body>;

/// Flow-control windows. Bulk transfers through a gateway are bounded by window / RTT, so the
/// defaults of RFC 9113 (64 KiB) would throttle a fast link; these are sized for a LAN-to-WAN
/// path and still bounded per connection.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    /// Initial per-stream receive window.
    pub stream: u32,
    /// Initial per-connection receive window.
    pub connection: u32,
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            stream: 4 * 1024 * 1024,
            connection: 16 * 1024 * 1024,
        }
    }
}

/// How much response data the origin queues per stream ahead of the connection's writes
/// (hyper's `max_send_buf_size` here, [`crate::server::Options::send_buffer`] on
/// the origin's server).
/// hyper's default is 400 KiB; when the tunnel is slower than the application (a WAN link),
/// every concurrent stream fills its queue, 100 MiB at 256 streams. Flow control, not this
/// queue, keeps a bulk transfer's pipe full (the stream window is 4 MiB), and 128 KiB is
/// still eight TLS records ahead: a 256 MiB download through library mode ran as fast with
/// it (680 MB/s on loopback) as with the default.
pub const SEND_BUFFER: usize = 128 * 1024;

/// The header-list limit on both sides of a reversed HTTP/2 connection, equal to the
/// gateway's public limit so that what a public client may send, an origin accepts.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Starts hyper's HTTP/2 client role on `io` with the reversed connection's settings (the
/// origin's extended CONNECT setup uses it; the gateway runs [`crate::client::handshake`]).
pub async fn handshake<IO>(
    io: IO,
    windows: Windows,
) -> hyper::Result<(Sender, client::Connection<TokioIo<IO>, Body, TokioExecutor>)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    client::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(64 * 1024)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .handshake(TokioIo::new(io))
        .await
}

/// Server-side settings for the origin.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// SETTINGS_MAX_CONCURRENT_STREAMS the origin advertises: the gateway's capacity figure.
    pub max_concurrent_streams: u32,
    /// Receive windows.
    pub windows: Windows,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            windows: Windows::default(),
        }
    }
}

/// Starts hyper's HTTP/2 server role on a stream the origin dialled. Extended CONNECT
/// (RFC 8441) is enabled so WebSocket reaches the application over the reversed connection.
///
/// hyper spawns a task per stream. The origin itself serves with [`crate::server`] (its
/// requests run in the connection's driver) with the same settings; this one remains for
/// tests and for embedders that want hyper's service and upgrade types.
pub fn serve<IO, S, B>(
    io: IO,
    service: S,
    options: ServeOptions,
) -> server::Connection<TokioIo<IO>, S, TokioExecutor>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    server::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(options.windows.stream)
        .initial_connection_window_size(options.windows.connection)
        .max_frame_size(64 * 1024)
        .max_concurrent_streams(options.max_concurrent_streams)
        .max_pending_accept_reset_streams(pending_accept_resets(options.max_concurrent_streams))
        .max_send_buf_size(SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_connect_protocol()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(TokioIo::new(io), service)
}

/// How many streams the gateway may reset before the origin's server accepted them.
///
/// h2 closes a connection with `ENHANCE_YOUR_CALM` ("too_many_resets") once more than 20
/// streams are reset before the application took them: the Rapid Reset defence
/// (CVE-2023-44487), right for a public listener. On a reversed connection the peer is the
/// authenticated gateway, and a burst of resets is ordinary: every public client that
/// disconnects with requests in flight cancels them, up to the whole concurrency limit at
/// once (256 HTTP/1.1 clients closing together did it in `cargo xtask bench`). The bound
/// stays, at twice the streams the origin admits, so a misbehaving gateway still cannot grow
/// the queue without limit.
pub fn pending_accept_resets(max_concurrent_streams: u32) -> usize {
    (max_concurrent_streams as usize).saturating_mul(2).max(20)
}

type Probe = Box<dyn Fn() -> Option<(usize, bool)> + Send + Sync>;

/// What the peer's SETTINGS say. hyper exposes these on the connection future only, and
/// applies SETTINGS in a task of its own, so [`drive`] shares the connection behind a lock
/// and this handle asks it on demand. A reader never waits for that lock: while the driving
/// task holds it, the reader gets the values seen last (when the gateway's router read the
/// stream limit here on every pick, waiting showed up as futex waits under load; the
/// gateway now reads h2's [`crate::client::Client`] instead).
#[derive(Debug)]
pub struct PeerSettings {
    probe: std::sync::OnceLock<ProbeFn>,
    max_send_streams: AtomicUsize,
    extended_connect: AtomicBool,
}

struct ProbeFn(Probe);

impl std::fmt::Debug for ProbeFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeFn")
    }
}

impl Default for PeerSettings {
    fn default() -> Self {
        // RFC 9113 §6.5.2: until the peer's SETTINGS arrive, assume little.
        Self {
            probe: std::sync::OnceLock::new(),
            max_send_streams: AtomicUsize::new(1),
            extended_connect: AtomicBool::new(false),
        }
    }
}

impl PeerSettings {
    fn read(&self) -> (usize, bool) {
        if let Some((streams, connect)) = self.probe.get().and_then(|p| (p.0)()) {
            self.store(streams, connect);
            return (streams, connect);
        }
        (
            self.max_send_streams.load(Ordering::Relaxed),
            self.extended_connect.load(Ordering::Acquire),
        )
    }

    fn store(&self, streams: usize, connect: bool) {
        self.max_send_streams.store(streams, Ordering::Relaxed);
        self.extended_connect.store(connect, Ordering::Release);
    }

    /// The peer's current SETTINGS_MAX_CONCURRENT_STREAMS as it applies to our requests.
    pub fn max_send_streams(&self) -> usize {
        self.read().0
    }

    /// Whether the peer sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 §3).
    pub fn extended_connect(&self) -> bool {
        self.read().1
    }
}

/// Drives a client connection to completion; `settings` reads the peer's settings meanwhile.
///
/// hyper's client future ends as soon as the peer's GOAWAY stops new requests, while the
/// requests in flight still run on hyper's connection task. It is dropped right then, so
/// a request handed to it in that instant (still in its queue, not sent) comes back to its
/// sender as not sent (hyper's "connection closed" cancellation, with the request) instead
/// of waiting forever in a queue nobody reads.
pub async fn drive<IO>(
    conn: client::Connection<TokioIo<IO>, Body, TokioExecutor>,
    settings: std::sync::Arc<PeerSettings>,
) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = std::sync::Arc::new(std::sync::Mutex::new(Some(Box::pin(conn))));
    let shared = conn.clone();
    let _ = settings.probe.set(ProbeFn(Box::new(move || {
        // Busy means the driving task is polling it right now: use the values seen last.
        // A poisoned lock only means a poll panicked; the counters are still readable.
        let c = match shared.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let c = c.as_ref()?;
        Some((
            c.current_max_send_streams(),
            c.is_extended_connect_protocol_enabled(),
        ))
    })));
    std::future::poll_fn(move |cx| {
        let mut slot = conn.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = slot.as_mut() else {
            return std::task::Poll::Ready(Ok(()));
        };
        let poll = c.as_mut().poll(cx);
        settings.store(
            c.current_max_send_streams(),
            c.is_extended_connect_protocol_enabled(),
        );
        if poll.is_ready() {
            *slot = None;
        }
        poll
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    fn empty() -> Body {
        Empty::new().map_err(|e| match e {}).boxed_unsync()
    }

    /// A reader that can be held shut, so frames pile up unread as they do at a busy origin.
    #[derive(Default)]
    struct Gate {
        shut: bool,
        waker: Option<Waker>,
    }

    struct Gated<IO> {
        io: IO,
        gate: Arc<Mutex<Gate>>,
    }

    fn set(gate: &Mutex<Gate>, shut: bool) {
        let mut g = gate.lock().unwrap();
        g.shut = shut;
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Gated<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            {
                let mut g = self.gate.lock().unwrap();
                if g.shut {
                    g.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Gated<IO> {
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

    /// The frames the gateway wrote, counted by type as they pass: HEADERS and RST_STREAM.
    struct Written {
        preface_left: usize,
        buf: Vec<u8>,
        headers: usize,
        resets: usize,
    }

    impl Default for Written {
        fn default() -> Self {
            Self {
                // RFC 9113 §3.4: the client preface is 24 octets, then frames.
                preface_left: 24,
                buf: Vec::new(),
                headers: 0,
                resets: 0,
            }
        }
    }

    impl Written {
        fn feed(&mut self, bytes: &[u8]) {
            self.buf.extend_from_slice(bytes);
            let skip = self.preface_left.min(self.buf.len());
            self.buf.drain(..skip);
            self.preface_left -= skip;
            // RFC 9113 §4.1: a 9-octet header (24-bit length, type, flags, stream id).
            while self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() < 9 + len {
                    break;
                }
                match self.buf[3] {
                    0x1 => self.headers += 1,
                    0x3 => self.resets += 1,
                    _ => {}
                }
                self.buf.drain(..9 + len);
            }
        }
    }

    /// The gateway's end of the pipe, counting what it writes.
    struct Counted<IO> {
        io: IO,
        written: Arc<(Mutex<Written>, tokio::sync::Notify)>,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let poll = Pin::new(&mut self.io).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = poll {
                self.written.0.lock().unwrap().feed(&buf[..n]);
                self.written.1.notify_waiters();
            }
            poll
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

    /// Waits up to 10 s until the gateway has written what `done` asks for.
    async fn until(
        written: &(Mutex<Written>, tokio::sync::Notify),
        what: &str,
        done: impl Fn(&Written) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let wrote = written.1.notified();
            if done(&written.0.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, wrote).await.is_err() {
                let w = written.0.lock().unwrap();
                panic!(
                    "the gateway never wrote {what}: {} HEADERS, {} RST_STREAM",
                    w.headers, w.resets
                );
            }
        }
    }

    async fn request(send: &mut Sender) -> hyper::Result<http::Response<Incoming>> {
        send.ready().await?;
        send.send_request(http::Request::new(empty())).await
    }

    /// When the public clients of a busy gateway all vanish at once, the gateway resets every
    /// request in flight, many of them before the origin's server took them. The reversed
    /// connection must survive that and serve the next request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_cancelled_requests_keeps_the_connection() {
        let (gateway_io, origin_io) = tokio::io::duplex(4 << 20);
        let gate = Arc::new(Mutex::new(Gate::default()));
        let origin_io = Gated {
            io: origin_io,
            gate: gate.clone(),
        };
        let options = ServeOptions::default();
        let service = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(empty()))
        });
        let origin = tokio::spawn(serve(origin_io, service, options));
        let written = Arc::new((Mutex::new(Written::default()), tokio::sync::Notify::new()));
        let gateway_io = Counted {
            io: gateway_io,
            written: written.clone(),
        };
        let (send, conn) = handshake(gateway_io, Windows::default()).await.unwrap();
        let driven = tokio::spawn(drive(conn, Arc::new(PeerSettings::default())));
        // The handshake and one exchange, so both sides know each other's SETTINGS.
        assert_eq!(
            request(&mut send.clone()).await.unwrap().status(),
            http::StatusCode::OK
        );

        // The origin stops reading; the gateway opens every stream it may (its HEADERS are
        // all written), then cancels them (every RST_STREAM is written).
        set(&gate, true);
        let burst = options.max_concurrent_streams as usize;
        let inflight: Vec<_> = (0..burst)
            .map(|_| {
                let mut send = send.clone();
                tokio::spawn(async move { request(&mut send).await })
            })
            .collect();
        until(&written, "every HEADERS of the burst", |w| {
            w.headers > burst
        })
        .await;
        assert_eq!(written.0.lock().unwrap().resets, 0);
        for task in &inflight {
            task.abort();
        }
        until(&written, "every RST_STREAM of the burst", |w| {
            w.resets >= burst
        })
        .await;
        // The origin reads the HEADERS and the RST_STREAMs in one go, before it accepted any:
        // far more than h2's default of 20 pending-accept resets.
        set(&gate, false);

        let answer = tokio::time::timeout(Duration::from_secs(10), request(&mut send.clone()))
            .await
            .expect("no answer in 10 s");
        assert_eq!(
            answer.expect("the origin closed the connection").status(),
            http::StatusCode::OK
        );
        assert!(!driven.is_finished() && !origin.is_finished());
    }

    /// The origin's SETTINGS are seen without any request going out: hyper applies them in a
    /// task of its own, so a copy taken only when the driving task runs would stay at the
    /// defaults (and connect-h2's origin would give up, finding no extended CONNECT).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_settings_arrive_without_a_request() {
        let (gateway_io, origin_io) = tokio::io::duplex(1 << 20);
        let service = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(empty()))
        });
        let options = ServeOptions {
            max_concurrent_streams: 77,
            ..ServeOptions::default()
        };
        let _origin = tokio::spawn(serve(origin_io, service, options));
        let (_send, conn) = handshake(gateway_io, Windows::default()).await.unwrap();
        let settings = Arc::new(PeerSettings::default());
        let _driven = tokio::spawn(drive(conn, settings.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !(settings.extended_connect() && settings.max_send_streams() == 77) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "SETTINGS not seen in 5 s: {settings:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn the_reset_bound_follows_the_stream_limit() {
        assert_eq!(pending_accept_resets(256), 512);
        assert_eq!(pending_accept_resets(1), 20);
        assert_eq!(pending_accept_resets(u32::MAX), u32::MAX as usize * 2);
    }
}
