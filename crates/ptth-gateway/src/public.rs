//! Public listeners: cleartext HTTP/1.1 + h2c (prior knowledge), and TLS with `h2`/`http/1.1`.
//! When the public HTTP/3 endpoint runs, every response advertises it in `alt-svc`.
//!
//! A public connection must send a request's header section within the header timeout
//! (`--public-header-timeout`), counted from its start or from the end of its last exchange:
//! a connection that sends nothing, never finishes its HTTP/2 preface, or sits idle between
//! requests for that long is closed. Exchanges in flight (including a streaming response
//! body) and extended CONNECT tunnels keep it open.
//!
//! When the gateway stops ([`crate::shutdown`]), the accept loop ends at once (its socket
//! closes, so new connections go to a new process sharing the port), HTTP/1.1 responses
//! carry `Connection: close` from then on, and after [`LINGER`] every connection is shut
//! down gracefully: GOAWAY on HTTP/2, idle HTTP/1.1 connections closed; exchanges in
//! flight finish.

use crate::message::Body;
use crate::proxy::{ClientInfo, Proxy};
use crate::shutdown::Stopping;
use bytes::{Bytes, BytesMut};
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Serves public clients on `listener`; TLS when `acceptor` is given. `alt_svc`, when
/// given, is added to every response (RFC 7838) to advertise the HTTP/3 endpoint.
/// `header_timeout` bounds the wait for each request's headers and idle time between requests.
pub async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    alt_svc: Option<http::HeaderValue>,
    header_timeout: Duration,
    stopping: Stopping,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Dropping the listener closes its socket: the kernel hands new connections to
            // the other sockets sharing the port (a new gateway process), if any.
            () = stopping.signalled() => return,
        };
        let (tcp, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "public accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        let proxy = proxy.clone();
        let acceptor = acceptor.clone();
        let alt_svc = alt_svc.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let _open = stopping.hold();
            match acceptor {
                None => {
                    let client = ClientInfo {
                        addr,
                        tls: false,
                        local_port,
                    };
                    serve_conn(
                        tcp,
                        Negotiated::Sniff,
                        client,
                        proxy,
                        alt_svc,
                        header_timeout,
                        stopping,
                    )
                    .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let client = ClientInfo {
                                addr,
                                tls: true,
                                local_port,
                            };
                            // ALPN settles the version (RFC 9113 §3.2); a client that
                            // offered none is read like a cleartext one.
                            let negotiated = match tls.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Negotiated::H2,
                                Some(_) => Negotiated::Http1,
                                None => Negotiated::Sniff,
                            };
                            serve_conn(
                                tls,
                                negotiated,
                                client,
                                proxy,
                                alt_svc,
                                header_timeout,
                                stopping,
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "public TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "public TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// The largest header section a public client may send (and an origin may answer with).
pub const MAX_HEADER_BYTES: u32 = ptth_h2::MAX_HEADER_LIST_SIZE;

/// How long a connection told to shut down (idle past the header timeout) may take to close:
/// an HTTP/2 graceful shutdown waits for a PING answer a silent client never sends.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a stopping gateway keeps its public connections as they are, answering HTTP/1.1
/// requests with `Connection: close`, before it shuts them down. A keep-alive connection
/// closed the instant its client sends the next request loses that request (RFC 9112
/// §9.3.1 lets a client retry it, but not every client does): a busy client gets its
/// `Connection: close` on an answer instead, and reconnects.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// What a public connection is doing, for its idle timer. An exchange costs two atomic
/// updates and wakes nobody: the timer alone reads this, once per timeout period (a
/// watch channel here woke the connection's task twice per request, across threads on
/// HTTP/2, and cost about a sixth of the gateway's requests per second).
#[derive(Debug)]
pub(crate) struct Activity {
    born: tokio::time::Instant,
    /// Exchanges in flight: from the request's headers to the end of the response body.
    exchanges: AtomicUsize,
    /// When the last exchange started or ended, in milliseconds since `born`.
    last_ms: AtomicU64,
    /// An extended CONNECT tunnel (a WebSocket over HTTP/2) was opened here: the origin
    /// accepted it (2xx), and the gateway does not see when it ends, so the connection is
    /// never idle from then on.
    tunnel: AtomicBool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            born: tokio::time::Instant::now(),
            exchanges: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            tunnel: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Release);
    }
}

/// One exchange in flight on a public connection; dropping it ends the exchange.
pub(crate) struct Exchange(Arc<Activity>);

impl Exchange {
    pub(crate) fn start(activity: &Arc<Activity>) -> Self {
        activity.exchanges.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Exchange(activity.clone())
    }

    /// This exchange opened a tunnel that outlives its response.
    fn opened_tunnel(&self) {
        self.0.tunnel.store(true, Ordering::Release);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // The time first: a timer that then sees no exchange also sees when it ended.
        self.0.touch();
        self.0.exchanges.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the connection has had no exchange in flight for `timeout` (from its start,
/// or from the end of its last exchange). It sleeps in between: a busy connection costs it
/// one wake-up per `timeout`.
pub(crate) async fn idle_for(activity: Arc<Activity>, timeout: Duration) {
    let mut check = activity.born + timeout;
    loop {
        tokio::time::sleep_until(check).await;
        if activity.tunnel.load(Ordering::Acquire) {
            return std::future::pending().await;
        }
        let now = tokio::time::Instant::now();
        if activity.exchanges.load(Ordering::Acquire) > 0 {
            check = now + timeout;
            continue;
        }
        let last = activity.born + Duration::from_millis(activity.last_ms.load(Ordering::Acquire));
        let due = last + timeout;
        if due <= now {
            return;
        }
        check = due;
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4): "the string
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`" opens every HTTP/2 connection.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a cleartext connection's first octets say it speaks.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    /// The whole HTTP/2 preface: h2c by prior knowledge (RFC 9113 §3.3).
    H2,
    /// An octet that is not the preface's: HTTP/1.1.
    Http1,
    /// The connection ended first (within the preface, or before any octet).
    Closed,
}

/// Reads `io` until its first octets confirm the HTTP/2 preface or rule it out (RFC 9113
/// §3.4: h2c by prior knowledge opens with it). Returns the verdict and every octet read,
/// for the server to read again: at most one read's worth (4 KiB) past the preface.
async fn sniff<IO: AsyncRead + Unpin>(io: &mut IO) -> std::io::Result<(Sniffed, Bytes)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Ok((Sniffed::Http1, buf.freeze()));
        }
        if seen == H2_PREFACE.len() {
            return Ok((Sniffed::H2, buf.freeze()));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok((Sniffed::Closed, buf.freeze()));
        }
    }
}

/// A connection whose first octets were already read: they are read again first.
struct Rewind<IO> {
    read: Bytes,
    io: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        if self.read.is_empty() {
            // An empty slice still holds the whole read buffer: let it go.
            self.read = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The HTTP version a public connection speaks, when the TLS handshake settled it.
#[derive(Debug, Clone, Copy)]
enum Negotiated {
    Http1,
    H2,
    /// Cleartext, or TLS without ALPN: the first octets tell.
    Sniff,
}

/// One public connection's request handling, shared by its HTTP/1.1 and HTTP/2 servers.
#[derive(Clone)]
struct Public {
    proxy: Arc<Proxy>,
    client: ClientInfo,
    alt_svc: Option<http::HeaderValue>,
    activity: Arc<Activity>,
    /// Bounds the CONNECT tunnels one HTTP/2 connection carries.
    connect_streams: crate::public_connect::ConnectStreams,
    stopping: Stopping,
}

impl Public {
    /// Starts one exchange: what answering `req` needs, without a future yet. The
    /// listener's service makes [`Exchanging::answer`]'s future inside its own, so the
    /// proxy's future (kilobytes) is never captured by another and stored twice.
    fn exchange<B>(&self, mut req: http::Request<B>) -> Exchanging<B> {
        let connect = req.method() == http::Method::CONNECT;
        if connect {
            req.extensions_mut().insert(self.connect_streams.clone());
        }
        Exchanging {
            proxy: self.proxy.clone(),
            req,
            client: self.client,
            alt_svc: self.alt_svc.clone(),
            exchange: Exchange::start(&self.activity),
            connect,
            stopping: self.stopping.clone(),
        }
    }
}

/// One public request on its way to an answer.
struct Exchanging<B> {
    proxy: Arc<Proxy>,
    req: http::Request<B>,
    client: ClientInfo,
    alt_svc: Option<http::HeaderValue>,
    exchange: Exchange,
    connect: bool,
    stopping: Stopping,
}

impl<B> Exchanging<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<crate::message::BoxError>,
{
    /// Answers the request: the access log and the proxy, `alt-svc`, `Connection: close`
    /// on HTTP/1.1 once the gateway stops, and the exchange held until the answer's body
    /// has been sent (or dropped).
    async fn answer(self) -> Response<Held> {
        let Exchanging {
            proxy,
            req,
            client,
            alt_svc,
            exchange,
            connect,
            stopping,
        } = self;
        let http1 = req.version() <= http::Version::HTTP_11;
        let mut res = crate::access_log::handle(&proxy, req, client).await;
        if let Some(v) = alt_svc {
            res.headers_mut().insert(http::header::ALT_SVC, v);
        }
        // The gateway is stopping: this exchange is the connection's last (hyper closes
        // it after a response that says so), and the client reconnects elsewhere.
        if http1 && stopping.is_set() && res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            res.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        if connect && res.status().is_success() {
            exchange.opened_tunnel();
        }
        res.map(|body| Held {
            body,
            _exchange: exchange,
        })
    }
}

/// An answer's body, holding its exchange in flight until it has been sent (or dropped).
struct Held {
    body: Body,
    _exchange: Exchange,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = crate::message::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

async fn serve_conn<IO>(
    io: IO,
    negotiated: Negotiated,
    client: ClientInfo,
    proxy: Arc<Proxy>,
    alt_svc: Option<http::HeaderValue>,
    header_timeout: Duration,
    stopping: Stopping,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = proxy
        .metrics()
        .public_connection(crate::metrics::PublicListener::tcp(client.tls));
    let activity = Activity::new();
    let idle = idle_for(activity.clone(), header_timeout);
    // After the stop signal and the linger: GOAWAY, or close when idle.
    let stop = {
        let stopping = stopping.clone();
        async move {
            stopping.signalled().await;
            tokio::time::sleep(LINGER).await;
        }
    };
    tokio::pin!(idle, stop);
    let public = Public {
        proxy,
        client,
        alt_svc,
        activity,
        connect_streams: crate::public_connect::ConnectStreams::default(),
        stopping,
    };
    let mut io = io;
    let (h2, read) = match negotiated {
        Negotiated::Http1 => (false, Bytes::new()),
        Negotiated::H2 => (true, Bytes::new()),
        Negotiated::Sniff => {
            // RFC 9113 §3.4: the preface is confirmed or ruled out within the header
            // timeout (the idle timer: no exchange has started yet).
            let sniffed = tokio::select! {
                sniffed = sniff(&mut io) => sniffed,
                () = &mut idle => {
                    tracing::debug!(client = %client.addr, timeout_secs = header_timeout.as_secs_f64(), "public connection closed: no request within the header timeout");
                    return;
                }
                () = &mut stop => return,
            };
            match sniffed {
                Ok((Sniffed::H2, read)) => (true, read),
                Ok((Sniffed::Http1, read)) => (false, read),
                Ok((Sniffed::Closed, _)) => return,
                Err(e) => {
                    tracing::debug!(client = %client.addr, error = %e, "public connection ended");
                    return;
                }
            }
        }
    };
    let io = Rewind { read, io };
    if h2 {
        serve_h2(io, public, header_timeout, idle, stop).await
    } else {
        serve_http1(io, public, header_timeout, idle, stop).await
    }
}

/// HTTP/1.1 on hyper's server, with upgrades (WebSocket, CONNECT, connect-tcp/-udp).
async fn serve_http1<IO>(
    io: IO,
    public: Public,
    header_timeout: Duration,
    idle: Pin<&mut impl Future<Output = ()>>,
    stop: Pin<&mut impl Future<Output = ()>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = public.client.addr;
    let svc = service_fn(move |req: http::Request<Incoming>| {
        let exchanging = public.exchange(req);
        async move { Ok::<_, std::convert::Infallible>(exchanging.answer().await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        // One header-size limit for every public protocol: 64 KiB, answered with 431.
        // A larger HTTP/1.1 limit than HTTP/2's would let a header section through to
        // reversed HTTP/1.1 origins that reversed HTTP/2 origins refuse.
        .max_buf_size(MAX_HEADER_BYTES as usize)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let ended = drive(
        conn,
        |conn| conn.graceful_shutdown(),
        addr,
        header_timeout,
        idle,
        stop,
    )
    .await;
    if let Some(Err(e)) = ended {
        tracing::debug!(client = %addr, error = %e, "public connection ended");
    }
}

/// HTTP/2 (h2c by prior knowledge, or TLS with ALPN `h2`) on `ptth_h2::server`: requests
/// run in the connection's driver, a CONNECT answered 2xx becomes a `ptth_h2::Tunnel`.
async fn serve_h2<IO>(
    io: IO,
    public: Public,
    header_timeout: Duration,
    mut idle: Pin<&mut impl Future<Output = ()>>,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = public.client.addr;
    let options = ptth_h2::server::Options {
        // RFC 9113 §6.5.2 SETTINGS_MAX_CONCURRENT_STREAMS: each stream is at most one
        // exchange in the connection's driver.
        max_concurrent_streams: 1024,
        // Response data queued per stream for a public client that reads slowly: h2's
        // default is 400 KiB, so a client holding 1 024 streams with closed windows could
        // pin 400 MiB; the stream's window keeps a fast client's pipe full either way
        // (1 MiB downloads over h2c at 256 concurrent ran as fast with 128 KiB). An
        // answer's body waits for send capacity before each write, so this bounds it.
        send_buffer: ptth_h2::reversed::SEND_BUFFER,
        ..ptth_h2::server::Options::default()
    };
    // The client preface and SETTINGS, within the header timeout like any request.
    let conn = tokio::select! {
        conn = ptth_h2::server::handshake(io, &options) => conn,
        () = &mut idle => {
            tracing::debug!(client = %addr, timeout_secs = header_timeout.as_secs_f64(), "public connection closed: no request within the header timeout");
            return;
        }
        () = &mut stop => return,
    };
    let mut conn = match conn {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(client = %addr, error = %e, "public HTTP/2 handshake failed");
            return;
        }
    };
    // No keep-alive PING, as hyper's server had none here: h2 hands its PING handle out
    // once, so taking it leaves the server without one. An idle connection is closed at
    // the header timeout instead.
    drop(conn.ping_pong());
    let service = move |req: http::Request<ptth_h2::Body>| {
        let exchanging = public.exchange(req);
        // `ptth_h2::server` adds `Date` where the answer has none, as hyper's server did
        // (RFC 9110 §6.6.1).
        async move { exchanging.answer().await.map(BodyExt::boxed_unsync) }
    };
    let server = ptth_h2::server::serve(conn, options.keep_alive, service);
    tokio::pin!(server);
    let ended = drive(
        server,
        |server| server.get_mut().graceful_shutdown(),
        addr,
        header_timeout,
        idle,
        stop,
    )
    .await;
    if let Some(Err(e)) = ended {
        tracing::debug!(client = %addr, error = %e, "public connection ended");
    }
}

/// Runs a public connection until it ends: after the stop signal and the linger, a
/// graceful shutdown (GOAWAY on HTTP/2, idle HTTP/1.1 connections closed); when idle past
/// the header timeout, a graceful shutdown given [`SHUTDOWN_GRACE`] to finish. `None`: the
/// grace ran out.
async fn drive<C, T>(
    mut conn: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    addr: std::net::SocketAddr,
    header_timeout: Duration,
    mut idle: Pin<&mut impl Future<Output = ()>>,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> Option<T>
where
    C: Future<Output = T>,
{
    let mut told_to_stop = false;
    loop {
        tokio::select! {
            ended = &mut conn => return Some(ended),
            () = &mut stop, if !told_to_stop => {
                // The gateway is stopping: exchanges in flight finish (bounded by its
                // shutdown grace, after which the worker ends), then the connection closes.
                told_to_stop = true;
                graceful_shutdown(conn.as_mut());
            }
            () = &mut idle => {
                // No request (or its headers) within the header timeout.
                tracing::debug!(client = %addr, timeout_secs = header_timeout.as_secs_f64(), "public connection closed: no request within the header timeout");
                graceful_shutdown(conn.as_mut());
                return tokio::time::timeout(SHUTDOWN_GRACE, conn).await.ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Telling h2c from HTTP/1.1 on real loopback sockets: the verdict, and every octet read
    //! for it handed back first.
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    /// A connected loopback pair: (client, server).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Sends `pieces` one write at a time (each flushed before the next), sniffs the
    /// server's end, and reads back through [`Rewind`] what the client sent in all.
    async fn sniffed(pieces: &[&[u8]], close: bool) -> (Sniffed, Vec<u8>) {
        let (mut client, server) = pair().await;
        let sent: Vec<u8> = pieces.concat();
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for p in pieces {
                client.write_all(&p).await.unwrap();
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if close {
                client.shutdown().await.unwrap();
            }
            client
        });
        let mut server = server;
        let (verdict, read) = tokio::time::timeout(Duration::from_secs(10), sniff(&mut server))
            .await
            .expect("sniff stalled")
            .unwrap();
        let _client = writer.await.unwrap();
        if verdict == Sniffed::Closed {
            return (verdict, read.to_vec());
        }
        let mut again = Rewind { read, io: server };
        let mut got = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(10), again.read_exact(&mut got))
            .await
            .expect("replay stalled")
            .unwrap();
        assert_eq!(got, sent, "the server reads what the client sent, in order");
        (verdict, got)
    }

    #[tokio::test]
    async fn the_preface_in_pieces_is_h2c_and_is_read_again() {
        // RFC 9113 §3.4: the preface, here split inside "HTTP/2.0", then a SETTINGS frame.
        let (verdict, _) = sniffed(
            &[
                b"PRI * HTT",
                b"P/2.0\r\n\r\nSM\r\n",
                b"\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            ],
            false,
        )
        .await;
        assert_eq!(verdict, Sniffed::H2);
    }

    #[tokio::test]
    async fn a_request_line_is_http1_at_its_first_octet() {
        let (verdict, _) = sniffed(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], false).await;
        assert_eq!(verdict, Sniffed::Http1);
        // A request that starts like the preface and leaves it late is HTTP/1.1 too.
        let (verdict, _) = sniffed(&[b"PRI * HTTP/1.1\r\n", b"Host: a\r\n\r\n"], false).await;
        assert_eq!(verdict, Sniffed::Http1);
    }

    #[tokio::test]
    async fn a_connection_ending_inside_the_preface_is_closed() {
        let (verdict, read) = sniffed(&[b"PRI * HTTP/2.0\r\n"], true).await;
        assert_eq!(verdict, Sniffed::Closed);
        assert_eq!(read, b"PRI * HTTP/2.0\r\n");
        let (verdict, read) = sniffed(&[], true).await;
        assert_eq!(verdict, Sniffed::Closed);
        assert!(read.is_empty());
    }
}
