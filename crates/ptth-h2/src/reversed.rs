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
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Any error a body may produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The streaming body type used on both sides.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// The gateway's handle for sending requests; clone it freely, it multiplexes.
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

/// The header-list limit on both sides of a reversed HTTP/2 connection, equal to the
/// gateway's public limit so that what a public client may send, an origin accepts.
pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// Starts the HTTP/2 client role on a stream the gateway accepted.
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

/// Starts the HTTP/2 server role on a stream the origin dialled. Extended CONNECT (RFC 8441)
/// is enabled so WebSocket reaches the application over the reversed connection.
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
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_connect_protocol()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .serve_connection(TokioIo::new(io), service)
}

type Probe = Box<dyn Fn() -> (usize, bool) + Send + Sync>;

/// What the peer's SETTINGS say, read live. hyper exposes these on the connection future
/// only, and processes frames in a task of its own, so [`drive`] shares the connection behind
/// a lock and this handle asks it on demand.
#[derive(Default)]
pub struct PeerSettings {
    probe: std::sync::OnceLock<Probe>,
}

impl std::fmt::Debug for PeerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSettings")
            .field("max_send_streams", &self.max_send_streams())
            .field("extended_connect", &self.extended_connect())
            .finish()
    }
}

impl PeerSettings {
    fn read(&self) -> (usize, bool) {
        self.probe.get().map(|p| p()).unwrap_or((1, false))
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
pub async fn drive<IO>(
    conn: client::Connection<TokioIo<IO>, Body, TokioExecutor>,
    settings: std::sync::Arc<PeerSettings>,
) -> hyper::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = std::sync::Arc::new(std::sync::Mutex::new(Box::pin(conn)));
    let shared = conn.clone();
    let _ = settings.probe.set(Box::new(move || {
        // A poisoned lock only means a poll panicked; the counters are still readable.
        let c = shared.lock().unwrap_or_else(|e| e.into_inner());
        (
            c.current_max_send_streams(),
            c.is_extended_connect_protocol_enabled(),
        )
    }));
    std::future::poll_fn(move |cx| {
        conn.lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .poll(cx)
    })
    .await
}
