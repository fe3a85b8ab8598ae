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
use crate::setup_request::{admit_setup, clone_head};
use crate::takeover::Takeover;
use crate::workers::Placement;
use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use ptth_core::{HttpVersion, Mechanism, Transport};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

/// Accepts origin connections until the listener fails. Each is handshaken, admitted and
/// driven on the worker `placement` chooses (the one holding the fewest origin
/// connections), not necessarily the one whose socket accepted it.
pub async fn serve(listener: TcpListener, ctx: Arc<TunnelContext>, placement: Placement) {
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
        let placed = placement.place(&ctx.registry.connections_by_worker());
        let ctx = ctx.clone();
        // Counted as in setup on its worker until admitted (a setup connection: until it
        // ends); the registry counts it once registered.
        placed.spawn_with_socket(tcp, move |tcp, placed| async move {
            let _placed = placed;
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

/// An admitted PTTH setup's stream, once the answer is sent, becomes the origin's
/// reversed connection ([`admission::handed_over`]).
async fn hand_over(
    takeover: Takeover,
    admitted: admission::Admitted,
    peer: SocketAddr,
    setup: SetupState,
    ctx: &TunnelContext,
) {
    const STREAM: &str = "setup stream";
    let failed = |e: &dyn std::fmt::Display| format!("taking over the setup stream failed: {e}");
    match takeover {
        Takeover::Upgrade(on) => {
            let handover = async { on.await.map(TokioIo::new).map_err(|e| failed(&e)) };
            admission::handed_over(handover, STREAM, admitted, peer, setup, ctx).await;
        }
        Takeover::Tunnel(on) => {
            let handover = async { on.await.map_err(|e| failed(&e)) };
            admission::handed_over(handover, STREAM, admitted, peer, setup, ctx).await;
        }
    }
}

/// One setup request on an HTTP/1.1 or HTTP/2 (`version`) setup connection, with
/// `extended_protocol` as its `:protocol` if it is an extended CONNECT: admitted, its
/// stream is taken over in a task of its own once the answer is sent; refused, the answer
/// says why.
async fn take_over_setup<B>(
    req: &mut Request<B>,
    version: HttpVersion,
    extended_protocol: Option<&str>,
    ctx: Arc<TunnelContext>,
    peer: SocketAddr,
    peer_certs: Option<&[CertificateDer<'static>]>,
    setup: SetupState,
) -> Response<Body> {
    // The head alone is checked: a body need not be `Sync` for the check to run in a task.
    let head = Request::from_parts(clone_head(req).0, ());
    let (admitted, response) = match admit_setup(
        &ctx,
        &head,
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
    let takeover = Takeover::of(req);
    tokio::spawn(async move { hand_over(takeover, admitted, peer, setup, &ctx).await });
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
    let services = ctx.services.clone();
    let _open = services.hold_connection();
    let svc = service_fn(move |mut req: Request<hyper::body::Incoming>| {
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
    let close_by = tokio::select! {
        // hyper's header timer runs to the same deadline.
        ended = &mut conn => {
            match ended {
                Err(e) if e.is_timeout() => SetupFailure::late("no setup admitted").log(peer, "tcp"),
                Err(e) => tracing::debug!(%peer, error = %e, "setup connection ended"),
                Ok(()) => {}
            }
            return;
        }
        () = setup.expired() => return SetupFailure::late("no setup admitted").log(peer, "tcp"),
        close_by = services.cut_off() => close_by,
    };
    // The gateway stops: a request in progress is answered, then hyper closes the
    // connection (TLS close_notify and FIN), by the stop's deadline. (A connection whose
    // request was upgraded ended above: its stream, a control channel or a flow, ends on
    // its own.)
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout_at(close_by, conn).await.is_err() {
        tracing::debug!(%peer, "setup connection cut: not closed by the stop's deadline");
    }
}

/// HTTP/2 setup connection: extended CONNECT `:protocol = ptth` (RFC 8441), then `2xx`, or
/// reverse CONNECT's `connect-listen` / `connect-accept`. The connection carries the tunnels
/// and lives on once one is registered; until then it is closed at the setup deadline.
///
/// h2's server directly (`ptth_h2::server`): the requests run in the connection's driver,
/// and a taken-over stream is a `ptth_h2::Tunnel` on h2's own stream halves, with no task
/// or channel between it and the connection (hyper's upgrade had a task per stream and a
/// one-slot channel for its writes, performance.md finding 8).
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
    let services = ctx.services.clone();
    let _open = services.hold_connection();
    let service = move |mut req: Request<Body>| {
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
                return res;
            }
            take_over_setup(
                &mut req,
                HttpVersion::Http2,
                protocol.as_deref(),
                ctx,
                peer,
                peer_certs.as_deref(),
                setup,
            )
            .await
        }
    };
    // An origin gone without a FIN (NAT, a pulled cable) leaves its carrier here: the
    // keep-alive PINGs find it (20 s, then 20 s to answer), as the reversed HTTP/2
    // client's do (ptth_h2::client::drive).
    let options = ptth_h2::server::Options::default();
    // The TLS stream comes back when h2 lets go of it, for a stopping gateway to linger on.
    let (io, back) = ptth_h2::linger::Linger::new(io);
    let conn = tokio::select! {
        conn = ptth_h2::server::handshake(io, &options) => match conn {
            Ok(conn) => conn,
            Err(e) => return tracing::debug!(%peer, error = %e, "setup connection ended"),
        },
        () = setup.expired() => return SetupFailure::late("no setup admitted").log(peer, "tcp"),
        _ = services.cut_off() => return,
    };
    let mut server = ptth_h2::server::serve(conn, options.keep_alive, service);
    let close_by = tokio::select! {
        ended = &mut server => {
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "setup connection ended");
            }
            return;
        }
        () = setup.expired() => return SetupFailure::late("no setup admitted").log(peer, "tcp"),
        close_by = services.cut_off() => close_by,
    };
    // The gateway stops (RFC 9113 §6.8): GOAWAY, the streams still open (control
    // channels and flows, which the same cut ends) write their last frames, and once none
    // is left h2 closes the connection: its last frames flushed, then TLS close_notify and
    // FIN. Then the stream is read until the origin closes its side too (its own GOAWAY
    // and close_notify may still be on their way: a socket closed with them unread would
    // answer with RST, and the origin would read a lost connection). All by the stop's
    // deadline: a peer that neither answers the GOAWAY's PING nor reads nor closes does
    // not hold the stop.
    server.graceful_shutdown();
    match tokio::time::timeout_at(close_by, &mut server).await {
        Ok(Ok(())) => tracing::debug!(%peer, "setup connection closed: the gateway stopped"),
        // The origin closing at once on the GOAWAY can cross the gateway's last frames.
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "setup connection closed"),
        Err(_) => {
            tracing::debug!(%peer, "setup connection cut: not closed by the stop's deadline");
            return;
        }
    }
    drop(server);
    let left = close_by.saturating_duration_since(Instant::now());
    ptth_h2::linger::until_peer_closes(back, left).await;
}
