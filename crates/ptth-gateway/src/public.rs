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

use crate::proxy::{ClientInfo, Proxy};
use crate::shutdown::Stopping;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
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
                    serve_conn(tcp, client, proxy, alt_svc, header_timeout, stopping).await
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
                            serve_conn(tls, client, proxy, alt_svc, header_timeout, stopping).await
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

async fn serve_conn<IO>(
    io: IO,
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
    let watching = stopping.clone();
    let connect_streams = crate::public_connect::ConnectStreams::default();
    let svc = service_fn(move |mut req: hyper::Request<Incoming>| {
        let proxy = proxy.clone();
        let alt_svc = alt_svc.clone();
        let exchange = Exchange::start(&activity);
        let connect = req.method() == http::Method::CONNECT;
        if connect {
            // Bounds the CONNECT tunnels one HTTP/2 connection carries.
            req.extensions_mut().insert(connect_streams.clone());
        }
        let http1 = req.version() <= http::Version::HTTP_11;
        let stopping = watching.clone();
        async move {
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
            // The exchange lasts until the response body has been sent (or dropped).
            let res = res.map(|body| {
                body.map_frame(move |frame| {
                    let _in_flight = &exchange;
                    frame
                })
            });
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let windows = ptth_h2::Windows::default();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // One header-size limit for every public protocol: 64 KiB, answered with 431.
        // A larger HTTP/1.1 limit than HTTP/2's would let a header section through to
        // reversed HTTP/1.1 origins that reversed HTTP/2 origins refuse.
        .max_buf_size(MAX_HEADER_BYTES as usize)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(64 * 1024)
        .max_concurrent_streams(1024)
        .max_header_list_size(MAX_HEADER_BYTES)
        // Response data queued per stream for a public client that reads slowly: hyper's
        // default is 400 KiB, so a client holding 1 024 streams with closed windows could
        // pin 400 MiB; the stream's window keeps a fast client's pipe full either way
        // (1 MiB downloads over h2c at 256 concurrent ran as fast with 128 KiB).
        .max_send_buf_size(ptth_h2::reversed::SEND_BUFFER)
        .enable_connect_protocol();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    // After the stop signal and the linger: GOAWAY, or close when idle.
    let stop = async {
        stopping.signalled().await;
        tokio::time::sleep(LINGER).await;
    };
    let mut told_to_stop = false;
    tokio::pin!(conn, idle, stop);
    let ended = loop {
        tokio::select! {
            ended = &mut conn => break ended,
            () = &mut stop, if !told_to_stop => {
                // The gateway is stopping: exchanges in flight finish (bounded by its
                // shutdown grace, after which the worker ends), then the connection closes.
                told_to_stop = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut idle => {
                // No request (or its headers) within the header timeout: before the first
                // request this also ends a connection still choosing between HTTP/1.1 and h2c.
                tracing::debug!(client = %client.addr, timeout_secs = header_timeout.as_secs_f64(), "public connection closed: no request within the header timeout");
                conn.as_mut().graceful_shutdown();
                break match tokio::time::timeout(SHUTDOWN_GRACE, &mut conn).await {
                    Ok(ended) => ended,
                    Err(_) => return,
                };
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(client = %client.addr, error = %e, "public connection ended");
    }
}
