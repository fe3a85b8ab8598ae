//! The TCP tunnel listener: origins dial in over TLS, and the handshake goes to the one
//! admission ([`crate::admission::admit`]).
//!
//! One port serves every TCP mechanism, dispatched on the ALPN the TLS handshake selected:
//! a reversed token (Potato `rh*`/`ph*`/UTF-8 tokens, draft-bt `h2-reverse`) reverses the
//! connection at once; `http/1.1` (or no ALPN) and `h2` start an ordinary HTTP server here
//! that takes the PTTH Upgrade, legacy PTTH/1.0 and extended CONNECT setup requests.

use crate::admission::{self, Carrier, Handshake, Reversal, TunnelContext};
use crate::message::Body;
use crate::pending::{SetupFailure, SetupState};
use crate::sender::start_client;
use crate::setup_request::admit_setup;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ptth_core::{HttpVersion, Mechanism, Transport};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// Accepts origin connections until the listener fails.
pub async fn serve(listener: TcpListener, ctx: Arc<TunnelContext>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "tunnel accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let setup = match ctx.start_setup(peer) {
            Ok(s) => s,
            Err(full) => {
                // Closed at once: the socket is dropped before anything is read.
                tracing::debug!(%peer, reason = %full, refused = ctx.pending.refused(), "origin connection closed at accept");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let admitted = match handshake(tcp, peer, &setup, &ctx).await {
                Ok(handshake) => admission::admit(handshake, setup, ctx).await,
                Err(failure) => Err(ctx.registry.metrics.handshake_failed(failure)),
            };
            if let Err(failure) = admitted {
                failure.log(peer, "tcp");
            }
        });
    }
}

/// The TLS handshake, by the setup deadline, and what it settled.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    setup: &SetupState,
    ctx: &TunnelContext,
) -> Result<Handshake<TlsStream<TcpStream>>, SetupFailure> {
    let handshake = async {
        // Read the ClientHello first: whether to ask for a client certificate follows the
        // ALPN the origin offers (draft-thomson-ptth-potato §5.1; draft-bt §3).
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .map_err(|e| SetupFailure::io("reading the ClientHello", &e))?;
        let config = ctx
            .tls()
            .for_client_hello(start.client_hello().alpn())
            .ok_or(SetupFailure::Refused(
                "h2-reverse requires client certificates, but no --client-ca, --client-webpki or pinned key is configured".to_string()
            ))?;
        start
            .into_stream(config)
            .await
            .map_err(|e| SetupFailure::io("TLS handshake failed", &e))
    };
    let tls = tokio::time::timeout_at(setup.deadline, handshake)
        .await
        .map_err(|_| SetupFailure::late("no TLS handshake"))??;
    let (_, session) = tls.get_ref();
    Ok(Handshake {
        peer,
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
        peer_certs: session.peer_certificates().map(|c| c.to_vec()),
        exporter: ptth_auth::exporter_value(session).ok(),
        carrier: tls,
    })
}

/// A TLS stream carries one reversed HTTP/1.1 or HTTP/2 connection, or a setup connection.
impl Carrier for TlsStream<TcpStream> {
    const TRANSPORT: Transport = Transport::Tls;

    /// Dropping the stream (or aborting the task that drives it) ends the connection.
    type Closer = ();

    fn closer(&self) -> Self::Closer {}

    async fn start_client(
        self,
        mechanism: Mechanism,
        deadline: Instant,
    ) -> Result<Reversal, SetupFailure> {
        let version = mechanism.reversed_version();
        if mechanism.sends_origin_frame() {
            // hyper does not show an ORIGIN frame to its client: read it from the bytes
            // the origin sends, before the HTTP/2 client sees them.
            let (tap, watch) = ptth_h2::OriginFrameTap::new(self, 8);
            let (sender, task) = tokio::time::timeout_at(deadline, start_client(tap, version))
                .await
                .map_err(|_| SetupFailure::late("no HTTP/2 handshake"))??;
            let wait = async move { watch.wait().await.map_err(|e| format!("ORIGIN frame: {e}")) };
            Ok(Reversal {
                sender,
                task,
                origin_frame: Some(Box::pin(wait)),
            })
        } else {
            let (sender, task) = tokio::time::timeout_at(deadline, start_client(self, version))
                .await
                .map_err(|_| SetupFailure::late("no HTTP handshake"))??;
            Ok(Reversal {
                sender,
                task,
                origin_frame: None,
            })
        }
    }

    async fn serve_setup(
        self,
        version: HttpVersion,
        peer: SocketAddr,
        peer_certs: Option<Vec<CertificateDer<'static>>>,
        ctx: Arc<TunnelContext>,
        setup: SetupState,
    ) -> Result<(), SetupFailure> {
        match version {
            HttpVersion::Http1 => serve_h1_setup(self, peer, peer_certs, ctx, setup).await,
            HttpVersion::Http2 => serve_h2_setup(self, peer, peer_certs, ctx, setup).await,
            HttpVersion::Http3 => return Err(format!("no setup over {version:?} on TCP").into()),
        }
        Ok(())
    }
}

/// One setup request on an HTTP/1.1 or HTTP/2 (`version`) setup connection, with
/// `extended_protocol` as its `:protocol` if it is an extended CONNECT: admitted, its
/// stream is taken over in a task of its own once the answer is sent; refused, the answer
/// says why.
async fn take_over_setup(
    req: &mut Request<Incoming>,
    version: HttpVersion,
    extended_protocol: Option<&str>,
    ctx: Arc<TunnelContext>,
    peer: SocketAddr,
    peer_certs: Option<&[CertificateDer<'static>]>,
    setup: SetupState,
) -> Response<Body> {
    let (admitted, response) = match admit_setup(
        &ctx,
        req,
        Transport::Tls,
        version,
        extended_protocol,
        peer,
        peer_certs,
    )
    .await
    {
        Ok(x) => x,
        Err(res) => return *res,
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let handover = async {
            on_upgrade
                .await
                .map(TokioIo::new)
                .map_err(|e| format!("taking over the setup stream failed: {e}"))
        };
        admission::handed_over(handover, "setup stream", admitted, peer, setup, &ctx).await;
    });
    response
}

/// HTTP/1.1 setup connection: `Upgrade: ptth` or `Upgrade: PTTH/1.0` (or reverse CONNECT's
/// `Upgrade: connect-listen` / `connect-accept`), then `101`. Closed at the setup deadline
/// unless a setup was registered by then.
async fn serve_h1_setup<IO>(
    io: IO,
    peer: SocketAddr,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    ctx: Arc<TunnelContext>,
    setup: SetupState,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer_certs = Arc::new(peer_certs);
    let deadline = setup.deadline;
    let service_setup = setup.clone();
    let conn_id = crate::reverse::connection_id();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let ctx = ctx.clone();
        let peer_certs = peer_certs.clone();
        let setup = service_setup.clone();
        async move {
            // Reverse CONNECT over HTTP/1.1: `Upgrade: connect-listen` / `connect-accept`.
            let arrival = crate::reverse::Arrival {
                conn: conn_id,
                peer,
                peer_certs: peer_certs.as_deref(),
                setup: &setup,
            };
            if let Some(res) =
                crate::reverse::route(&mut req, None, &arrival, ctx.grants(), &ctx.services)
            {
                return Ok(res);
            }
            Ok::<_, std::convert::Infallible>(
                take_over_setup(
                    &mut req,
                    HttpVersion::Http1,
                    None,
                    ctx,
                    peer,
                    peer_certs.as_deref(),
                    setup,
                )
                .await,
            )
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(deadline.saturating_duration_since(Instant::now()))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // hyper's header timer runs to the same deadline.
        ended = &mut conn => match ended {
            Err(e) if e.is_timeout() => SetupFailure::late("no setup admitted").log(peer, "tcp"),
            Err(e) => tracing::debug!(%peer, error = %e, "setup connection ended"),
            Ok(()) => {}
        },
        () = setup.expired() => SetupFailure::late("no setup admitted").log(peer, "tcp"),
    }
}

/// HTTP/2 setup connection: extended CONNECT `:protocol = ptth` (RFC 8441), then `2xx`. The
/// connection carries the tunnels and lives on once one is registered; until then it is
/// closed at the setup deadline.
async fn serve_h2_setup<IO>(
    io: IO,
    peer: SocketAddr,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    ctx: Arc<TunnelContext>,
    setup: SetupState,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer_certs = Arc::new(peer_certs);
    let service_setup = setup.clone();
    // Reverse CONNECT accepts must come on the connection of their control channel.
    let conn_id = crate::reverse::connection_id();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let ctx = ctx.clone();
        let peer_certs = peer_certs.clone();
        let setup = service_setup.clone();
        async move {
            let protocol = req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_string());
            let arrival = crate::reverse::Arrival {
                conn: conn_id,
                peer,
                peer_certs: peer_certs.as_deref(),
                setup: &setup,
            };
            let grants = ctx.grants();
            if let Some(res) = crate::reverse::route(
                &mut req,
                protocol.as_deref(),
                &arrival,
                grants,
                &ctx.services,
            ) {
                return Ok(res);
            }
            Ok::<_, std::convert::Infallible>(
                take_over_setup(
                    &mut req,
                    HttpVersion::Http2,
                    protocol.as_deref(),
                    ctx,
                    peer,
                    peer_certs.as_deref(),
                    setup,
                )
                .await,
            )
        }
    });
    let windows = ptth_h2::Windows::default();
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // An origin gone without a FIN (NAT, a pulled cable) leaves its carrier here: PINGs
        // find it, as the reversed HTTP/2 client's do (ptth_h2::reversed::handshake).
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .enable_connect_protocol()
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        ended = &mut conn => if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "setup connection ended");
        },
        () = setup.expired() => SetupFailure::late("no setup admitted").log(peer, "tcp"),
    }
}
