//! QUIC on the gateway's tunnel side: the endpoint origins dial for the HTTP/3 mechanisms,
//! whose handshakes go to the one admission ([`crate::admission::admit`]), and the HTTP/3
//! setup server.
//!
//! The tunnel endpoint listens on the UDP port with the number of the TCP tunnel listener
//! and dispatches on the ALPN the handshake selected:
//!
//! ```text
//! rh3 / ph3 / Ɛɥ, h3-reverse ─▶ HTTP/3, the gateway (QUIC server) sends requests on
//!                                 streams 1, 5, 9 ─▶ authorisation request ─▶ Registry
//! h3 ─▶ HTTP/3 in both directions, extended CONNECT on; the origin's first request is
//!       OPTIONS <well-known>  (PTTH -00) ─▶ 200 ─▶ gateway requests on streams 1, 5, 9
//!       CONNECT :protocol=ptth (PTTH -01) ─▶ 200 + alpn ─▶ reversed HTTP/2 in the stream
//!       CONNECT :protocol=connect-listen / connect-accept ─▶ reverse CONNECT (crate::reverse)
//! ```

use crate::admission::{self, Carrier, Closer, Handshake, Reversal, TunnelContext};
use crate::message::error;
use crate::pending::{SetupFailure, SetupState};
use crate::sender::Sender;
use crate::setup_request::{admit_options, admit_setup};
use anyhow::{Context, Result};
use http::{Method, Request, Response, StatusCode};
use ptth_core::{HttpVersion, Mechanism, Transport};
use ptth_h3::{H3Config, H3Connection, Protocol, RecvBody, RequestDirection, ResponseSender};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// Binds the QUIC tunnel endpoint on `addr` (UDP) with the tunnel's TLS settings.
pub(crate) fn tunnel_endpoint(ctx: &TunnelContext, addr: SocketAddr) -> Result<quinn::Endpoint> {
    let config = tunnel_server_config(&ctx.tls())?;
    quinn::Endpoint::server(config, addr)
        .with_context(|| format!("binding the QUIC tunnel endpoint on UDP {addr}"))
}

/// The QUIC tunnel endpoint's server config from the tunnel's TLS settings; also what a
/// reload installs with `quinn::Endpoint::set_server_config`, so pinned keys and the
/// certificate request follow the new grants for new connections.
pub(crate) fn tunnel_server_config(tls: &crate::tls::TunnelTls) -> Result<quinn::ServerConfig> {
    // quinn cannot pick a config per ClientHello (rustls's `Acceptor` is TCP-only), so the
    // QUIC endpoint uses the config that requests a certificate without requiring one, and
    // h3-reverse connections without one are refused after the handshake.
    let mut config = (*tls.optional).clone();
    config.alpn_protocols = ptth_core::tunnel_alpn_protocols(Transport::Quic);
    // RFC 9001 §4.6.1: 0-RTT on QUIC needs max_early_data_size 0 or u32::MAX; we take none.
    config.max_early_data_size = 0;
    crate::tls::quic_server_config(
        config,
        ptth_h3::transport::tunnel_transport_config(),
        "QUIC tunnel endpoint",
    )
}

/// Accepts origin QUIC connections until the endpoint closes.
pub(crate) async fn serve_tunnel(
    endpoint: quinn::Endpoint,
    ctx: Arc<TunnelContext>,
    placement: crate::workers::Placement,
) {
    while let Some(incoming) = endpoint.accept().await {
        let peer = incoming.remote_address();
        // A UDP source address can be spoofed: under pressure, a new peer first answers a
        // Retry (RFC 9000 §8.1.2), which a spoofed source cannot, before it takes a place.
        if ctx.pending.under_pressure() && !incoming.remote_address_validated() {
            if incoming.may_retry() {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
            } else {
                incoming.ignore();
            }
            continue;
        }
        let setup = match ctx.start_setup(peer) {
            Ok(s) => s,
            Err(full) => {
                // Refused before any handshake state exists (a CONNECTION_REFUSED close).
                incoming.refuse();
                tracing::debug!(%peer, reason = %full, refused = ctx.pending.refused(), "origin QUIC connection refused at accept");
                continue;
            }
        };
        let ctx = ctx.clone();
        // On the worker holding the fewest origin connections: quinn spawns the
        // connection's driver where its handshake is awaited.
        let placed = placement.place(&ctx.registry.connections_by_worker());
        placed.spawn(move |placed| async move {
            // Held (counted) until admitted, or for a setup connection until it ends.
            let _placed = placed;
            let admitted = match handshake(incoming, peer, &setup).await {
                Ok(handshake) => admission::admit(handshake, setup, ctx).await,
                Err(failure) => Err(ctx.registry.metrics.handshake_failed(failure)),
            };
            if let Err(failure) = admitted {
                failure.log(peer, "quic");
            }
        });
    }
}

/// A failed QUIC handshake: a peer that left or went silent is quiet, a TLS or protocol
/// failure (a bad certificate) is a refusal.
fn handshake_failure(e: &quinn::ConnectionError) -> SetupFailure {
    use quinn::ConnectionError::*;
    let reason = format!("QUIC handshake failed: {e}");
    match e {
        TimedOut | Reset | LocallyClosed | ApplicationClosed(_) | ConnectionClosed(_) => {
            SetupFailure::Quiet(reason)
        }
        _ => SetupFailure::Refused(reason),
    }
}

/// Closes the QUIC connection when dropped: a registered connection's driver task holds
/// one, so aborting the task (a reload draining the origin) closes the connection.
struct CloseOnDrop(quinn::Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // A connection that already closed keeps the reason it closed with (the origin
        // connection's state reads it); quinn would replace it with a local close.
        if self.0.close_reason().is_none() {
            self.0.close(quinn::VarInt::from_u32(0x100), b"");
        }
    }
}

/// The QUIC close code for a connection the gateway refuses or gives up on during setup.
const SETUP_CLOSE: u32 = 0x100;

/// The QUIC handshake, by the setup deadline, and what it settled.
async fn handshake(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    setup: &SetupState,
) -> Result<Handshake<quinn::Connection>, SetupFailure> {
    let quic = tokio::time::timeout_at(setup.deadline, async {
        incoming
            .accept()
            .map_err(|e| handshake_failure(&e))?
            .await
            .map_err(|e| handshake_failure(&e))
    })
    .await
    .map_err(|_| SetupFailure::late("no QUIC handshake"))??;
    let alpn = quic
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let peer_certs = quic
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|c| *c);
    let mut exporter = [0u8; ptth_auth::EXPORTER_LEN];
    let exporter = quic
        .export_keying_material(&mut exporter, ptth_auth::EXPORTER_LABEL, b"")
        .ok()
        .map(|()| exporter);
    Ok(Handshake {
        carrier: quic,
        peer,
        alpn,
        peer_certs,
        exporter,
    })
}

/// A QUIC connection carries reversed HTTP/3 itself, or is an HTTP/3 setup connection.
impl Carrier for quinn::Connection {
    const TRANSPORT: Transport = Transport::Quic;

    type Closer = quinn::Connection;

    fn closer(&self) -> quinn::Connection {
        self.clone()
    }

    async fn start_client(
        self,
        mechanism: Mechanism,
        deadline: Instant,
    ) -> Result<Reversal, SetupFailure> {
        // Potato §4.3: "the HTTP client (gateway) is the QUIC server", so requests ride
        // server-initiated bidirectional streams (1, 5, 9).
        let direction = RequestDirection::ServerSends;
        // Opening our control stream waits for the peer's stream credit: bounded too.
        let h3 = tokio::time::timeout_at(
            deadline,
            H3Connection::new(
                self.clone(),
                H3Config::new(direction).enable_datagrams(true),
            ),
        )
        .await
        .map_err(|_| SetupFailure::late("HTTP/3 did not start"))?
        .map_err(|e| SetupFailure::Quiet(format!("HTTP/3 start: {e}")))?;
        let h3 = Arc::new(h3);
        // RFC 9412 carries the ORIGIN frame on HTTP/3's control stream.
        let origin_frame = mechanism.sends_origin_frame().then(|| {
            let h3 = h3.clone();
            let wait = async move {
                h3.peer_origin_frame()
                    .await
                    .ok_or_else(|| "no ORIGIN frame after SETTINGS (draft-bt)".to_string())
            };
            Box::pin(wait) as admission::OriginFrameWait
        });
        let sender = Sender::h3(h3.clone(), self.clone());
        let task = tokio::spawn(hold(self, h3));
        Ok(Reversal {
            sender,
            task,
            origin_frame,
        })
    }

    async fn serve_setup(
        self,
        version: HttpVersion,
        peer: SocketAddr,
        peer_certs: Option<Vec<CertificateDer<'static>>>,
        ctx: Arc<TunnelContext>,
        setup: SetupState,
    ) -> Result<(), SetupFailure> {
        if version != HttpVersion::Http3 {
            return Err(format!("no setup over {version:?} on QUIC").into());
        }
        serve_setup(self, peer, peer_certs, ctx, setup).await;
        Ok(())
    }
}

/// A QUIC connection in setup ends with a CONNECTION_CLOSE that says why.
impl Closer for quinn::Connection {
    fn close(&self, why: &'static [u8]) {
        quinn::Connection::close(self, quinn::VarInt::from_u32(SETUP_CLOSE), why);
    }
}

/// Keeps a reversed HTTP/3 connection alive until it closes; aborting it closes it.
async fn hold(quic: quinn::Connection, h3: Arc<H3Connection>) {
    let _close = CloseOnDrop(quic.clone());
    let reason = quic.closed().await;
    tracing::debug!(%reason, "reversed HTTP/3 connection ended");
    drop(h3);
}

/// An `h3` connection from an origin: it sends a PTTH setup request (PTTH -00 `OPTIONS`,
/// or PTTH -01 extended CONNECT `:protocol = ptth`), or reverse CONNECT's extended
/// CONNECTs (`:protocol = connect-listen` / `connect-accept`, [`crate::reverse`]).
/// Anything else is refused.
async fn serve_setup(
    quic: quinn::Connection,
    peer: SocketAddr,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    ctx: Arc<TunnelContext>,
    setup: SetupState,
) {
    // PTTH -00 §3: after OPTIONS "the gateway starts sending requests on server-initiated
    // bidirectional streams" of the same connection, so both sides send requests.
    let config = H3Config::new(RequestDirection::Both)
        .enable_connect_protocol(true)
        .enable_datagrams(true);
    let started = tokio::time::timeout_at(setup.deadline, H3Connection::new(quic.clone(), config));
    let h3 = match started.await {
        Ok(Ok(h3)) => Arc::new(h3),
        Ok(Err(e)) => {
            SetupFailure::Quiet(format!("HTTP/3 start: {e}")).log(peer, "quic");
            quic.close(quinn::VarInt::from_u32(SETUP_CLOSE), b"setup refused");
            return;
        }
        Err(_) => {
            SetupFailure::late("HTTP/3 did not start").log(peer, "quic");
            quic.close(quinn::VarInt::from_u32(SETUP_CLOSE), b"setup timeout");
            return;
        }
    };
    let mut reversed = false;
    // Reverse CONNECT accepts must come on the connection of their control channel.
    let conn_id = crate::reverse::connection_id();
    loop {
        // Until a setup on it is registered, the connection lives only until the deadline;
        // then it carries tunnels (or PTTH -00's reversed requests) for as long as it lasts.
        let next = tokio::select! {
            next = h3.accept() => next,
            () = setup.expired() => {
                SetupFailure::late("no setup admitted").log(peer, "quic");
                // H3_NO_ERROR (RFC 9114 §8.1): nothing went wrong, the peer just sent nothing.
                h3.close(0x100, "no PTTH setup before the deadline");
                return;
            }
        };
        let Some((req, respond)) = next else { break };
        if req.method() == Method::OPTIONS && !reversed {
            match admit_options(&ctx, &req, peer, peer_certs.as_deref()).await {
                Ok((admitted, response)) => {
                    if respond.send_response(response).await.is_err() {
                        return;
                    }
                    reversed = true;
                    let sender = Sender::h3(h3.clone(), quic.clone());
                    let task = tokio::spawn(hold(quic.clone(), h3.clone()));
                    admission::register(&ctx, admitted, peer, sender, task);
                    setup.registered();
                }
                Err(res) => {
                    let _ = respond.send_response(*res).await;
                }
            }
        } else if req.method() == Method::CONNECT {
            let protocol = req.extensions().get::<Protocol>().map(|p| p.0.clone());
            let arrival = crate::reverse::Arrival {
                conn: conn_id,
                peer,
                peer_certs: peer_certs.as_deref(),
                setup: &setup,
            };
            let grants = ctx.grants();
            let routed =
                crate::reverse::decide(&req, protocol.as_deref(), &arrival, &grants, &ctx.services);
            if let Some(routed) = routed {
                tokio::spawn(crate::reverse::take_over_h3(routed, respond, peer));
                continue;
            }
            let ctx = ctx.clone();
            let peer_certs = peer_certs.clone();
            let setup = setup.clone();
            tokio::spawn(async move {
                connect_setup(&ctx, req, respond, peer, peer_certs.as_deref(), setup).await;
            });
        } else if reversed {
            // PTTH -00 §3: once transposed, the gateway "MAY reset requests from the origin
            // with H3_REQUEST_REJECTED".
            respond.reset(0x010b);
        } else {
            let res = error(
                StatusCode::NOT_FOUND,
                "this endpoint only takes PTTH setup requests: OPTIONS to the well-known path (PTTH -00) or extended CONNECT with :protocol ptth (PTTH -01)",
            );
            let _ = respond.send_response(res).await;
        }
    }
}

/// PTTH -01 over HTTP/3: extended CONNECT `:protocol = ptth` (RFC 9220); the stream then
/// carries reversed HTTP/2 (or HTTP/1.1), as over HTTP/2.
async fn connect_setup(
    ctx: &TunnelContext,
    req: Request<RecvBody>,
    respond: ResponseSender,
    peer: SocketAddr,
    peer_certs: Option<&[CertificateDer<'static>]>,
    setup: SetupState,
) {
    let protocol = req.extensions().get::<Protocol>().map(|p| p.0.clone());
    let (admitted, response) = match admit_setup(
        ctx,
        &req,
        Transport::Quic,
        HttpVersion::Http3,
        protocol.as_deref(),
        peer,
        peer_certs,
    )
    .await
    {
        Ok(x) => x,
        Err(res) => {
            let (parts, body) = res.into_parts();
            // A refused CONNECT gets its reason as the body of a normal response.
            let _ = respond
                .send_response(Response::from_parts(parts, body))
                .await;
            return;
        }
    };
    let (parts, _) = response.into_parts();
    let handover = async {
        respond
            .send_connect_response(Response::from_parts(parts, ()))
            .await
            .map_err(|e| format!("CONNECT stream takeover failed: {e}"))
    };
    admission::handed_over(handover, "CONNECT stream", admitted, peer, setup, ctx).await;
}
