//! The public HTTP/3 listener: forward HTTP/3 (`h3`) on the UDP port of the public TLS
//! listener, advertised by `alt-svc`, handing every request to the same [`Proxy`] as the
//! TCP listeners, with the same header and idle timeout, and WebSocket by extended CONNECT
//! (RFC 9220).
//!
//! When the gateway stops, the endpoint refuses new connections and every connection gets
//! a GOAWAY (RFC 9114 §5.2) after [`LINGER`]: requests in flight finish, then it closes
//! with H3_NO_ERROR.

use crate::message::error;
use crate::proxy::{ClientInfo, Proxy};
use crate::public::{idle_for, Activity, Exchange, LINGER, SHUTDOWN_GRACE};
use crate::shutdown::Stopping;
use crate::websocket::{H3PublicTunnel, Holding, WEBSOCKET};
use anyhow::{Context, Result};
use http::{Method, StatusCode};
use ptth_h3::transport::MAX_BIDI_STREAMS;
use ptth_h3::{H3Config, H3Connection, RequestDirection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// What one public QUIC connection may have received in DATAGRAM frames and not yet
/// handed to HTTP/3 (quinn drops the oldest beyond it); each request stream then queues 64.
const DATAGRAM_BUFFER: usize = 256 * 1024;

/// The transport parameters of the public HTTP/3 endpoint, its own, not the tunnel's:
///
/// - An idle timeout just past the header timeout. Idle connections (no request in flight)
///   are closed by [`serve_public`] at the header timeout with a GOAWAY; the transport's
///   timer catches clients that vanished.
/// - Keep-alives at a third of that, so a response the origin takes long to produce (no
///   packet either way) is not cut by the transport's idle timer; they cannot keep an idle
///   client alive, since the HTTP/3 idle timer does not count them.
/// - With `datagrams` (the gateway serves CONNECT: CONNECT-UDP clients send HTTP datagrams,
///   RFC 9297, in QUIC DATAGRAM frames), a datagram receive buffer of [`DATAGRAM_BUFFER`];
///   without, none, so the endpoint does not offer the QUIC DATAGRAM extension.
fn public_transport_config(header_timeout: Duration, datagrams: bool) -> quinn::TransportConfig {
    let idle = header_timeout + SHUTDOWN_GRACE;
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(16))
        .keep_alive_interval(Some(idle / 3))
        .stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024))
        .receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024))
        .send_window(16 * 1024 * 1024)
        .datagram_receive_buffer_size(datagrams.then_some(DATAGRAM_BUFFER));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Binds the public HTTP/3 endpoint on `addr` (UDP), ALPN `h3`.
pub(crate) fn endpoint(
    certs: Arc<crate::tls::PublicResolver>,
    addr: SocketAddr,
    header_timeout: Duration,
    datagrams: bool,
) -> Result<quinn::Endpoint> {
    let mut config = crate::tls::public_config(certs)?;
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = 0;
    let what = "public HTTP/3 endpoint";
    let server = crate::tls::quic_server_config(
        config,
        public_transport_config(header_timeout, datagrams),
        what,
    )?;
    quinn::Endpoint::server(server, addr)
        .with_context(|| format!("binding the {what} on UDP {addr}"))
}

/// Serves public HTTP/3 clients until the endpoint closes. A request stream must bring its
/// HEADERS within `header_timeout`, and a connection with no request in flight for that long
/// is shut down (GOAWAY), as on the TCP listeners. Each connection is served on the worker
/// `spread` hands it to: its QUIC driver and its requests run there.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    proxy: Arc<Proxy>,
    header_timeout: Duration,
    spread: crate::workers::RoundRobin,
    stopping: Stopping,
) {
    // Bound on the public TLS listener's port number, which is what clients name in the
    // authority when alt-svc brought them here.
    let local_port = endpoint.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = stopping.signalled() => {
                // New connections are refused from now on (clients fall back to TCP, which
                // the new process serves); those open are wound down one by one below.
                endpoint.set_server_config(None);
                // The endpoint stays open, and with it the I/O of the connections still
                // winding down, until the worker stops.
                std::future::pending::<()>().await;
                return;
            }
        };
        let Some(incoming) = incoming else { break };
        let proxy = proxy.clone();
        let stopping = stopping.clone();
        // Accepting on that worker spawns the connection's driver there (quinn spawns it
        // on the runtime current at `accept`).
        spread.spawn(async move {
            let _open = stopping.hold();
            let addr = incoming.remote_address();
            let quic = match tokio::time::timeout(Duration::from_secs(10), async {
                incoming
                    .accept()
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "public QUIC handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "public QUIC handshake timed out");
                    return;
                }
            };
            // RFC 9220 §3: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 lets clients open WebSockets.
            // RFC 9297 §2.1.1: SETTINGS_H3_DATAGRAM = 1 lets CONNECT-UDP clients send
            // HTTP datagrams in QUIC DATAGRAM frames; only a gateway serving CONNECT offers
            // it (each request stream then has a datagram queue).
            let config = H3Config::new(RequestDirection::ClientSends)
                .request_header_timeout(header_timeout)
                .enable_connect_protocol(true)
                .enable_datagrams(proxy.serves_connect());
            let started = tokio::time::timeout(header_timeout, H3Connection::new(quic, config));
            let h3 = match started.await {
                Ok(Ok(h3)) => h3,
                Ok(Err(e)) => {
                    tracing::debug!(%addr, error = %e, "public HTTP/3 failed to start");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%addr, "public HTTP/3 did not start in time");
                    return;
                }
            };
            let _open = proxy.metrics().public_connection(crate::metrics::PublicListener::H3);
            let activity = Activity::new();
            let connect_streams = crate::public_connect::ConnectStreams::default();
            let idle = idle_for(activity.clone(), header_timeout);
            let stop = async {
                stopping.signalled().await;
                tokio::time::sleep(LINGER).await;
            };
            tokio::pin!(idle, stop);
            loop {
                let next = tokio::select! {
                    next = h3.accept() => next,
                    () = &mut stop => {
                        // GOAWAY, the requests in flight finish (their tasks hold the
                        // connection), then H3_NO_ERROR; the shutdown grace bounds it.
                        h3.graceful_shutdown().await;
                        return;
                    }
                    () = &mut idle => {
                        tracing::debug!(%addr, timeout_secs = header_timeout.as_secs_f64(), "public HTTP/3 connection closed: no request within the header timeout");
                        if tokio::time::timeout(SHUTDOWN_GRACE, h3.graceful_shutdown()).await.is_err() {
                            // H3_NO_ERROR: the client only stopped asking.
                            h3.close(0x100, "idle");
                        }
                        return;
                    }
                };
                let Some((mut req, respond)) = next else { break };
                let proxy = proxy.clone();
                let exchange = Exchange::start(&activity);
                let client = ClientInfo {
                    addr,
                    tls: true,
                    local_port,
                };
                let connect_streams = connect_streams.clone();
                tokio::spawn(async move {
                    if req.method() == Method::CONNECT {
                        req.extensions_mut().insert(connect_streams);
                        return extended_connect(req, respond, &proxy, client, exchange).await;
                    }
                    // The exchange lasts until the whole response was handed to QUIC.
                    let _in_flight = exchange;
                    let res = crate::access_log::handle(&proxy, req, client).await;
                    if let Err(e) = respond.send_response(res).await {
                        tracing::debug!(%addr, error = %e, "public HTTP/3 response failed");
                    }
                });
            }
        });
    }
}

/// A CONNECT on the public HTTP/3 listener. An extended CONNECT for a WebSocket (RFC 9220
/// §3: `:protocol = websocket`) or for connect-tcp goes to the proxy like any request; when
/// the proxy answers 2xx the stream becomes the public side of the tunnel, and the
/// connection counts the exchange in flight (so is not idle) until the tunnel ends. Any
/// other CONNECT gets 501.
async fn extended_connect(
    mut req: http::Request<ptth_h3::RecvBody>,
    respond: ptth_h3::ResponseSender,
    proxy: &Proxy,
    client: ClientInfo,
    exchange: Exchange,
) {
    let tunnel = req
        .extensions()
        .get::<ptth_h3::Protocol>()
        .is_some_and(|p| {
            p.0.eq_ignore_ascii_case(WEBSOCKET)
                || (proxy.serves_connect()
                    && (p.0.eq_ignore_ascii_case(crate::public_connect::CONNECT_TCP)
                        || p.0.eq_ignore_ascii_case(crate::public_connect::CONNECT_UDP)))
        });
    if !tunnel {
        let res = error(
            StatusCode::NOT_IMPLEMENTED,
            if proxy.serves_connect() {
                "the public HTTP/3 listener serves CONNECT only as an extended CONNECT for websocket (RFC 9220), connect-tcp or connect-udp"
            } else {
                "the public HTTP/3 listener serves CONNECT only as an extended CONNECT for websocket (RFC 9220)"
            },
        );
        if let Err(e) = respond.send_response(res).await {
            tracing::debug!(addr = %client.addr, error = %e, "public HTTP/3 response failed");
        }
        return;
    }
    let (slot, tunnel) = H3PublicTunnel::new();
    req.extensions_mut().insert(slot);
    // CONNECT-UDP's HTTP datagrams arrive for this request stream.
    let handle = req.body().request_handle().clone();
    req.extensions_mut().insert(handle);
    let res = proxy.handle(req, client).await;
    if !res.status().is_success() {
        let _in_flight = exchange;
        if let Err(e) = respond.send_response(res).await {
            tracing::debug!(addr = %client.addr, error = %e, "public HTTP/3 response failed");
        }
        return;
    }
    let (parts, _) = res.into_parts();
    match respond
        .send_connect_response(http::Response::from_parts(parts, ()))
        .await
    {
        Ok(stream) => {
            let held = Holding {
                io: stream,
                _guard: exchange,
            };
            // The proxy's bridge waits for it; if it is gone, dropping the stream ends it.
            let _ = tunnel.send(Box::new(held));
        }
        Err(e) => {
            tracing::debug!(addr = %client.addr, error = %e, "public HTTP/3 CONNECT answer failed")
        }
    }
}

/// The `alt-svc` value that advertises HTTP/3 on `port` (RFC 7838, RFC 9114 §3.1.1).
pub(crate) fn alt_svc(port: u16) -> Option<http::HeaderValue> {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok()
}
