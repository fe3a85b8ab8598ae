//! The QUIC mechanisms on the origin: dial the gateway over QUIC and serve HTTP/3 (`rh3`,
//! `h3-reverse`, `options-h3`) or reversed HTTP/2 inside an extended CONNECT stream
//! (`connect-h3`).
//!
//! ```text
//! rh3, h3-reverse ─▶ HTTP/3; the gateway (QUIC server) sends requests on streams 1, 5, 9
//! options-h3      ─▶ OPTIONS <well-known> (PTTH -00) ─▶ 2xx ─▶ serve the gateway's requests
//!                    on server-initiated streams of the same connection
//! connect-h3      ─▶ CONNECT :protocol=ptth (PTTH -01, RFC 9220) ─▶ 200 + alpn ─▶
//!                    reversed HTTP/2 inside the stream
//! ```

use crate::dialer::{looks_refused, serve_and_watch_admission, Dialer, Link, Outcome};
use crate::serve::{serve_reversed, BoxError, OriginService};
use crate::service::websocket::serve_h3_connect;
use anyhow::{anyhow, bail, Context, Result};
use http_body_util::BodyExt;
use ptth_core::{HttpVersion, Mechanism, SetupKind};
use ptth_h3::{H3Config, H3Connection, Protocol, RecvBody, RequestDirection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Dials the gateway over QUIC, trying `addrs` in turn (see
/// [`crate::dialer::addresses_for_slot`] for their order).
async fn dial(dialer: &Dialer, addrs: &[SocketAddr], link: &Link<'_>) -> Result<quinn::Connection> {
    let (endpoint, client) = dialer.quic.get(&dialer.config)?;
    let host = dialer
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut last = anyhow!("{host} resolved to no address");
    for &addr in addrs {
        match handshake(&endpoint, &client, addr, host).await {
            Ok(c) => {
                link.reached(addr);
                return Ok(c);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// How long one address gets to complete a QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a handshake still unanswered is joined by a fresh attempt.
const HANDSHAKE_RETRY: Duration = Duration::from_secs(1);

/// A QUIC handshake with `addr`, with a fresh attempt every [`HANDSHAKE_RETRY`] while none
/// has completed, the first to complete winning. A port where nothing listens answers UDP
/// with nothing QUIC can use, and quinn's own retransmissions of the Initial back off
/// (about 1, 2, 4 s): a gateway restarting on that port would otherwise be reached only
/// seconds after it listens again.
pub(crate) async fn handshake(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    addr: SocketAddr,
    host: &str,
) -> Result<quinn::Connection> {
    use futures_util::StreamExt;
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut attempts = futures_util::stream::FuturesUnordered::new();
    let mut next = tokio::time::Instant::now();
    let mut last = anyhow!("QUIC handshake with {addr} timed out");
    loop {
        if next <= tokio::time::Instant::now() && next < deadline {
            match endpoint.connect_with(client.clone(), addr, host) {
                Ok(c) => attempts.push(c),
                Err(e) => return Err(anyhow!("connecting to {addr}: {e}")),
            }
            next += HANDSHAKE_RETRY;
        }
        tokio::select! {
            Some(r) = attempts.next() => match r {
                Ok(c) => return Ok(c),
                Err(e) => {
                    let hint = ptth_auth::gateway_handshake_hint(&e.to_string());
                    last = anyhow!("QUIC handshake with {addr}: {e} ({hint})");
                    // A refusal that came back (not a silence) is the answer.
                    if attempts.is_empty() && !matches!(e, quinn::ConnectionError::TimedOut) {
                        return Err(last);
                    }
                }
            },
            _ = tokio::time::sleep_until(next.min(deadline)) => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(last);
                }
            }
        }
    }
}

/// Serves every request the gateway sends on `h3`, each in its own task, request bodies
/// boxed like every other version's; a CONNECT goes to the WebSocket handshake (RFC 9220).
async fn serve_requests(h3: &H3Connection, service: OriginService) {
    while let Some((req, respond)) = h3.accept().await {
        let service = service.clone();
        tokio::spawn(async move {
            let req =
                req.map(|b: RecvBody| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync());
            if req.method() == http::Method::CONNECT {
                return serve_h3_connect(req, respond, |r| service.call_boxed(r)).await;
            }
            let res = match service.call_boxed(req).await {
                Ok(res) => res,
                Err(never) => match never {},
            };
            if let Err(error) = respond.send_response(res).await {
                tracing::debug!(%error, "sending response failed");
            }
        });
    }
}

/// One QUIC connection: dial, set up per the mechanism, serve until it ends or `shutdown`.
pub(crate) async fn connect_and_serve(
    dialer: &Dialer,
    link: &Link<'_>,
    addrs: &[SocketAddr],
    service: &OriginService,
    shutdown: watch::Receiver<bool>,
) -> Result<Outcome> {
    let m = dialer.config.mechanism;
    if dialer.config.danger_accept_any_gateway && dialer.config.gateway_pin.is_none() {
        tracing::warn!(
            slot = link.slot,
            gateway = %dialer.gateway,
            "connecting WITHOUT verifying the gateway's certificate (--danger-accept-any-gateway)"
        );
    }
    let quic = dial(dialer, addrs, link).await?;
    let offered = m.tls_alpn(dialer.config.alpn_set);
    let selected = quic
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if selected.as_deref() != Some(offered) {
        // draft-thomson-ptth-potato §3: without the reversed ALPN the roles are not
        // reversed; serving HTTP here would be wrong, so stop.
        quic.close(quinn::VarInt::from_u32(0x100), b"");
        bail!(
            "the gateway did not select the ALPN {:?} (it selected {:?})",
            String::from_utf8_lossy(offered),
            selected.as_deref().map(String::from_utf8_lossy)
        );
    }
    let Some(direction) = RequestDirection::for_mechanism(m) else {
        bail!("{m} does not run over QUIC");
    };
    let mut config = H3Config::new(direction)
        .enable_datagrams(true)
        .enable_connect_protocol(direction.sends_requests(ptth_core::Side::Server));
    if m == Mechanism::H3Reverse {
        // draft-bt §3: "the origin MUST immediately send an ORIGIN frame (RFC 9412 for
        // HTTP/3)"; ptth-h3 sends it right after our SETTINGS on the control stream.
        config = config.origin_frame(dialer.origin_frame()?);
    }
    let h3 = Arc::new(
        H3Connection::new(quic.clone(), config)
            .await
            .context("starting HTTP/3")?,
    );
    match m.setup() {
        SetupKind::AlpnOnly => {
            let mut exporter = [0u8; ptth_auth::EXPORTER_LEN];
            let exporter = quic
                .export_keying_material(&mut exporter, ptth_auth::EXPORTER_LABEL, b"")
                .ok()
                .map(|()| exporter);
            let authorizer = dialer.authorizer(exporter);
            let seen = authorizer.seen.clone();
            let service = service.with_authorizer(authorizer);
            let stopping = shutdown.clone();
            let result = serve_and_watch_admission(
                serve_h3(h3, service, dialer, shutdown),
                &seen,
                link,
                m,
                "reversed HTTP/3 connection up",
            )
            .await;
            if looks_refused(link, &seen, &stopping) {
                return Ok(Outcome::Refused);
            }
            result.map(|()| Outcome::Ended)
        }
        SetupKind::Options => {
            let mut req = ptth_core::options_request(&dialer.params(Vec::new()), &dialer.tokens)?;
            dialer.add_scope_fields(&mut req);
            let req = req.map(|()| http_body_util::Empty::<bytes::Bytes>::new());
            let res = tokio::time::timeout(Duration::from_secs(10), h3.sender().send_request(req))
                .await
                .map_err(|_| anyhow!("the gateway did not answer OPTIONS in time"))?
                .context("OPTIONS setup request")?;
            if let Err(e) = ptth_core::validate_options_response(&res) {
                let status = res.status();
                let body = res.into_body().collect().await.map(|b| b.to_bytes());
                let reason = body
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                bail!("the gateway refused the OPTIONS setup ({status}): {e}: {reason}");
            }
            // PTTH -00 §3: on any 2xx "the gateway starts sending requests on
            // server-initiated bidirectional streams"; they may arrive before the 2xx and
            // wait in the connection's queue.
            link.registered(m, "OPTIONS accepted; serving the gateway's requests");
            serve_h3(h3, service.clone(), dialer, shutdown)
                .await
                .map(|()| Outcome::Ended)
        }
        SetupKind::ExtendedConnect => {
            let inner = m.inner_alpn();
            let (req, protocol) =
                ptth_core::connect_request(&dialer.params(vec![inner.clone()]), &dialer.tokens)?;
            let mut req = req;
            dialer.add_scope_fields(&mut req);
            req.extensions_mut().insert(Protocol(protocol.to_string()));
            let (res, stream) =
                tokio::time::timeout(Duration::from_secs(10), h3.sender().send_connect(req))
                    .await
                    .map_err(|_| anyhow!("the gateway did not answer CONNECT in time"))?
                    .context("extended CONNECT setup request")?;
            let chosen = ptth_core::validate_connect_response(&res, &[inner], &dialer.tokens)?;
            let version = HttpVersion::from_alpn_id(&chosen)
                .ok_or_else(|| anyhow!("the gateway chose {chosen:?}"))?;
            link.registered(
                m,
                &format!("extended CONNECT over HTTP/3 accepted ({version})"),
            );
            let (io, back) = ptth_h2::linger::Linger::new(stream);
            let result =
                serve_reversed(io, version, service.clone(), &dialer.config, shutdown).await;
            ptth_h2::linger::until_peer_closes(back, dialer.config.shutdown_grace).await;
            // The tunnel is the connection's only use: close it with the tunnel.
            h3.graceful_shutdown().await;
            result.map(|()| Outcome::Ended)
        }
        other => bail!("{m} ({other:?}) does not run over QUIC"),
    }
}

/// Serves HTTP/3 requests from the gateway until the connection ends; on `shutdown` sends
/// GOAWAY and lets requests in flight finish, bounded by the grace period.
async fn serve_h3(
    h3: Arc<H3Connection>,
    service: OriginService,
    dialer: &Dialer,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let serving = {
        let h3 = h3.clone();
        tokio::spawn(async move { serve_requests(&h3, service).await })
    };
    let abort = serving.abort_handle();
    let stop = tokio::select! {
        _ = serving => false,
        r = shutdown.wait_for(|s| *s) => r.is_ok(),
    };
    if stop {
        // RFC 9114 §5.2: GOAWAY, then the requests already accepted run to completion.
        if tokio::time::timeout(dialer.config.shutdown_grace, h3.graceful_shutdown())
            .await
            .is_err()
        {
            tracing::warn!("requests still running after the grace period; closing");
            h3.close(0x0100, "shutdown");
        }
        abort.abort();
        return Ok(());
    }
    let reason = h3.closed().await;
    if reason.is_no_error() {
        Ok(())
    } else {
        Err(anyhow!("HTTP/3 connection ended: {reason}"))
    }
}
