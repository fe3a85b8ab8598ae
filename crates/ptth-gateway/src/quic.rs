//! QUIC on the gateway's tunnel side: the endpoint origins dial for the HTTP/3 mechanisms.
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
//! ```

use crate::message::{empty, error, Body};
use crate::sender::{start_client, Sender};
use crate::tunnel::{self, ReversedCandidate, SetupFailure, SetupState, TunnelContext};
use anyhow::{Context, Result};
use http::{Method, Request, Response, StatusCode};
use ptth_core::{classify_alpn, AlpnRole, HttpVersion, Mechanism, Transport};
use ptth_h3::{H3Config, H3Connection, Protocol, RecvBody, RequestDirection, ResponseSender};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;

/// Binds the QUIC tunnel endpoint on `addr` (UDP) with the tunnel's TLS settings.
pub(crate) fn tunnel_endpoint(ctx: &TunnelContext, addr: SocketAddr) -> Result<quinn::Endpoint> {
    let tls = ctx.tls.read().unwrap_or_else(|e| e.into_inner()).clone();
    let config = tunnel_server_config(&tls)?;
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
pub(crate) async fn serve_tunnel(endpoint: quinn::Endpoint, ctx: Arc<TunnelContext>) {
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
        tokio::spawn(async move {
            if let Err(failure) = admit(incoming, peer, setup, ctx).await {
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

async fn admit(
    incoming: quinn::Incoming,
    peer: SocketAddr,
    setup: SetupState,
    ctx: Arc<TunnelContext>,
) -> Result<(), SetupFailure> {
    let quic = tokio::time::timeout_at(setup.deadline, async {
        incoming
            .accept()
            .map_err(|e| handshake_failure(&e))?
            .await
            .map_err(|e| handshake_failure(&e))
    })
    .await
    .map_err(|_| SetupFailure::late("no QUIC handshake"))??;
    let result = admit_connection(&quic, peer, setup, ctx).await;
    if result.is_err() {
        // Whatever still holds the connection (HTTP/3 tasks), a refused or timed-out setup
        // ends it now.
        quic.close(quinn::VarInt::from_u32(SETUP_CLOSE), b"setup refused");
    }
    result
}

async fn admit_connection(
    quic: &quinn::Connection,
    peer: SocketAddr,
    setup: SetupState,
    ctx: Arc<TunnelContext>,
) -> Result<(), SetupFailure> {
    let quic = quic.clone();
    let alpn = quic
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .ok_or("no ALPN was negotiated")?;
    let peer_certs: Option<Vec<CertificateDer<'static>>> = quic
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|c| *c);
    let has_client_cert = peer_certs.as_ref().is_some_and(|c| !c.is_empty());
    let role = classify_alpn(Transport::Quic, &alpn)
        .ok_or_else(|| format!("unexpected ALPN {:?}", String::from_utf8_lossy(&alpn)))?;
    match role {
        AlpnRole::Reversed { mechanism, .. } => {
            if mechanism == Mechanism::H3Reverse && !has_client_cert {
                // draft-bt §3: "the origin MUST present a valid certificate chain".
                quic.close(
                    quinn::VarInt::from_u32(0x100),
                    b"client certificate required",
                );
                return Err("h3-reverse requires a client certificate (draft-bt)".into());
            }
            let mut exporter = [0u8; ptth_auth::EXPORTER_LEN];
            let exporter = quic
                .export_keying_material(&mut exporter, ptth_auth::EXPORTER_LABEL, b"")
                .ok()
                .map(|()| exporter);
            // Potato §4.3: "the HTTP client (gateway) is the QUIC server", so requests ride
            // server-initiated bidirectional streams (1, 5, 9).
            let direction = RequestDirection::ServerSends;
            // Opening our control stream waits for the peer's stream credit: bounded too.
            let h3 = tokio::time::timeout_at(
                setup.deadline,
                H3Connection::new(
                    quic.clone(),
                    H3Config::new(direction).enable_datagrams(true),
                ),
            )
            .await
            .map_err(|_| SetupFailure::late("HTTP/3 did not start"))?
            .map_err(|e| SetupFailure::Quiet(format!("HTTP/3 start: {e}")))?;
            let h3 = Arc::new(h3);
            let origin_frame = if mechanism == Mechanism::H3Reverse {
                // draft-bt §3: "the origin MUST immediately send an ORIGIN frame" (RFC 9412
                // for HTTP/3); admit_reversed checks its entries against the certificate.
                let waited = tokio::time::timeout_at(setup.deadline, h3.peer_origin_frame()).await;
                match waited {
                    Ok(Some(frame)) => Some(frame),
                    Ok(None) => {
                        quic.close(quinn::VarInt::from_u32(SETUP_CLOSE), b"no ORIGIN frame");
                        return Err("no ORIGIN frame after SETTINGS (draft-bt)".into());
                    }
                    Err(_) => {
                        quic.close(quinn::VarInt::from_u32(SETUP_CLOSE), b"no ORIGIN frame");
                        return Err(SetupFailure::late("no ORIGIN frame (draft-bt)"));
                    }
                }
            } else {
                None
            };
            let sender = Sender::h3(h3.clone(), quic.clone());
            let task = tokio::spawn(hold(quic, h3));
            tunnel::admit_reversed(
                ReversedCandidate {
                    sender,
                    task,
                    mechanism,
                    peer,
                    peer_certs,
                    exporter,
                    origin_frame,
                    deadline: setup.deadline,
                },
                &ctx,
            )
            .await
        }
        AlpnRole::Setup {
            version: HttpVersion::Http3,
        } => {
            serve_setup(quic, peer, peer_certs, ctx, setup).await;
            Ok(())
        }
        AlpnRole::Setup { version } => Err(format!("no setup over {version:?} on QUIC").into()),
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
/// or PTTH -01 extended CONNECT `:protocol = ptth`). Anything else is refused.
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
            match admit_options(&ctx, &req, peer_certs.as_deref()) {
                Ok((admission, scopes, response)) => {
                    if respond.send_response(response).await.is_err() {
                        return;
                    }
                    reversed = true;
                    let sender = Sender::h3(h3.clone(), quic.clone());
                    let task = tokio::spawn(hold(quic.clone(), h3.clone()));
                    tunnel::register(
                        &ctx,
                        Mechanism::OptionsH3,
                        scopes,
                        admission,
                        peer,
                        sender,
                        task,
                    );
                    setup.registered();
                }
                Err(res) => {
                    let _ = respond.send_response(*res).await;
                }
            }
        } else if req.method() == Method::CONNECT {
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

/// An admitted `OPTIONS` setup: who it is, its scopes, and the answer.
type OptionsAdmitted = (
    crate::registry::Admission,
    Vec<ptth_core::Scope>,
    Response<Body>,
);

/// PTTH -00: validates and authenticates an `OPTIONS` setup request.
fn admit_options(
    ctx: &TunnelContext,
    req: &Request<RecvBody>,
    peer_certs: Option<&[CertificateDer<'static>]>,
) -> Result<OptionsAdmitted, Box<Response<Body>>> {
    // draft-kazuho-ptth-ptth-00 §3: "the client sends an OPTIONS request to the PTTH
    // endpoint URI"; "OPTIONS * is never used".
    let accepted = ptth_core::validate_options_request(req, &ctx.setup_tokens)
        .map_err(|r| Box::new(tunnel::reject(&r)))?;
    if accepted.origins.is_empty() {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "send OPTIONS to the well-known PTTH path naming the origins you serve",
        )));
    }
    let prefixes = ptth_auth::path_prefixes(req.headers())
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e.to_string())))?;
    let presented = ptth_auth::Presented {
        authorization: accepted.authorization.as_ref(),
        peer_certs,
        challenge_answer: None,
    };
    let (admission, scopes) =
        tunnel::check_origin(&ctx.grants(), &presented, &accepted.origins, &prefixes)
            .map_err(|e| Box::new(tunnel::refuse(&e)))?;
    let (parts, ()) = ptth_core::options_response().into_parts();
    Ok((admission, scopes, Response::from_parts(parts, empty())))
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
    let (accepted, admission, scopes, response) =
        match tunnel::admit_setup(ctx, &req, protocol.as_deref(), peer_certs) {
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
    let version = HttpVersion::from_alpn_id(&accepted.chosen).unwrap_or(HttpVersion::Http1);
    let (parts, _) = response.into_parts();
    let started = tokio::time::timeout_at(setup.deadline, async {
        let stream = respond
            .send_connect_response(Response::from_parts(parts, ()))
            .await
            .map_err(|e| format!("CONNECT stream takeover failed: {e}"))?;
        start_client(stream, version).await
    });
    match started.await {
        Ok(Ok((sender, task))) => {
            tunnel::register(
                ctx,
                Mechanism::ConnectH3,
                scopes,
                admission,
                peer,
                sender,
                task,
            );
            setup.registered();
        }
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "reversed connection failed"),
        Err(_) => SetupFailure::late("the CONNECT stream was not taken over").log(peer, "quic"),
    }
}
