//! The dial loop: keeps N reversed connections to each gateway alive and serves each one.
//!
//! ```text
//! loop per slot: resolve ─▶ TCP (this slot's address first) ─▶ TLS (ALPN of the
//!                mechanism; gateway verified) ─▶ setup exchange ─▶ registered ─▶
//!                serve HTTP/1.1 or HTTP/2 until the connection ends ─▶ wait ─▶ again
//! ```
//!
//! How long to wait depends on how the connection ended. A registered connection the
//! gateway closed cleanly (a restarting gateway's GOAWAY or close_notify: "move to my
//! successor") is dialled again at once, after a jitter under [`RECONNECT_JITTER`] so all
//! origins do not arrive in the same instant. Errors and refusals back off exponentially
//! with jitter, reset once a connection was registered and lasted [`HEALTHY`], and kept
//! short for a while after such a connection was lost (see [`Backoff`]).
//!
//! The TCP mechanisms are here; the QUIC ones are in `quic`. Both dial with what the
//! [`Dialer`] holds.

use crate::dialer::{looks_refused, serve_and_watch_admission, Dialer, Link, Outcome, REFUSED};
use crate::serve::{serve_reversed, OriginService};
use anyhow::{anyhow, bail, Result};
use ptth_core::{HttpVersion, Mechanism, ProtocolId, SetupKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

/// Exponential backoff with jitter: 100 ms doubling to 30 s, each delay drawn from
/// [half, full] of the current step so reconnecting origins spread out.
///
/// For [`RESTART_WINDOW`] after a registered connection was lost, the step stops growing
/// at [`RESTART_STEP`]: a gateway that went away is most likely restarting, and its
/// origins should be back within about a second of it listening again, not after a
/// doubling that grew while it was down.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
    lost_at: Option<tokio::time::Instant>,
}

/// How long after losing a registered connection the backoff stays at most
/// [`RESTART_STEP`].
pub(crate) const RESTART_WINDOW: Duration = Duration::from_secs(30);
/// For this long after a registered connection was lost, failing to reach the gateway is
/// logged at info, not warn: a gateway restarting is not something an operator must act on.
pub(crate) const RESTART_QUIET: Duration = Duration::from_secs(5);
/// The largest backoff step within [`RESTART_WINDOW`].
pub(crate) const RESTART_STEP: Duration = Duration::from_secs(1);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    pub(crate) fn new() -> Self {
        Self {
            step: Self::FIRST,
            lost_at: None,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.step = Self::FIRST;
    }

    /// A registered connection ended: start over, and keep the steps short for a while.
    pub(crate) fn lost_registered(&mut self) {
        self.reset();
        self.lost_at = Some(tokio::time::Instant::now());
    }

    /// Whether a registered connection was lost less than `window` ago.
    pub(crate) fn lost_within(&self, window: Duration) -> bool {
        self.lost_at.is_some_and(|t| t.elapsed() < window)
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let ms = self.step.as_millis() as u64;
        let delay = Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms));
        let cap = match self.lost_at {
            Some(t) if t.elapsed() < RESTART_WINDOW => RESTART_STEP,
            _ => Self::MAX,
        };
        self.step = (self.step * 2).min(cap);
        delay
    }
}

/// A registered connection that lived this long was healthy: its end resets the backoff.
pub(crate) const HEALTHY: Duration = Duration::from_secs(5);

/// The most a slot waits before dialling again after the gateway closed its registered
/// connection cleanly.
pub(crate) const RECONNECT_JITTER: Duration = Duration::from_millis(100);

impl Dialer {
    /// One slot of this gateway's pool: dial, serve, wait, until shutdown.
    pub(crate) async fn run_slot(
        self: Arc<Self>,
        slot: usize,
        service: OriginService,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new();
        // Whether the last connection looked refused: a refusal is reported when it
        // happens twice in a row, since a gateway that is stopping looks the same once.
        let mut refused_before = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = tokio::time::Instant::now();
            let link = Link::new(&self, slot);
            self.metrics
                .slot(self.index, slot, crate::metrics::SlotState::Connecting);
            let result = self
                .connect_and_serve(&link, &service, shutdown.clone())
                .await;
            self.metrics
                .slot(self.index, slot, crate::metrics::SlotState::Idle);
            let stopping = *shutdown.borrow();
            let registered = link.is_registered();
            let addr = link.addr();
            drop(link);
            if !matches!(result, Ok(Outcome::Refused)) {
                refused_before = false;
            }
            let delay = match result {
                _ if stopping => {
                    // Whatever the gateway did while we were closing (it may hang up as soon
                    // as it reads our GOAWAY: a broken pipe here) is no failure.
                    if let Err(e) = result {
                        tracing::debug!(slot, gateway = %self.gateway, %addr, error = %format!("{e:#}"), "connection ended while shutting down");
                    }
                    return;
                }
                Ok(Outcome::Refused) => {
                    if refused_before {
                        self.metrics.refused(self.index);
                        tracing::warn!(slot, gateway = %self.gateway, %addr, mechanism = %self.config.mechanism, "{REFUSED}");
                    } else {
                        tracing::debug!(slot, gateway = %self.gateway, %addr, "the gateway closed the connection right after our answer to its authorisation request; asking again to tell a refusal from a gateway that is stopping");
                    }
                    refused_before = true;
                    backoff.next_delay()
                }
                Ok(Outcome::Ended) if registered => {
                    backoff.lost_registered();
                    tracing::info!(slot, gateway = %self.gateway, %addr, "the gateway closed the connection; dialling again");
                    use rand::Rng;
                    Duration::from_millis(
                        rand::thread_rng().gen_range(0..RECONNECT_JITTER.as_millis() as u64),
                    )
                }
                Ok(Outcome::Ended) => {
                    tracing::info!(slot, gateway = %self.gateway, %addr, "the gateway closed the connection before admitting it; dialling again");
                    backoff.next_delay()
                }
                Err(e) => {
                    self.metrics.failed(self.index);
                    // A dial failing just after the gateway went away: most likely it is
                    // restarting. (A registered connection failing is always worth a warn.)
                    let quiet = !registered && backoff.lost_within(RESTART_QUIET);
                    if registered && started.elapsed() >= HEALTHY {
                        backoff.lost_registered();
                    }
                    if quiet {
                        tracing::info!(slot, gateway = %self.gateway, %addr, error = %format!("{e:#}"), "connection to the gateway failed (it went away moments ago; dialling again)");
                    } else {
                        tracing::warn!(slot, gateway = %self.gateway, %addr, error = %format!("{e:#}"), "connection to the gateway failed");
                    }
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            self.metrics.reconnected(self.index);
        }
    }

    /// TCP to the first of `addrs` that answers, then TLS.
    async fn dial_tls(
        &self,
        addrs: &[SocketAddr],
        link: &Link<'_>,
    ) -> Result<TlsStream<TcpStream>> {
        let host = self.authority.host();
        let mut last = anyhow!("{host} resolved to no address");
        let mut reached = None;
        for &addr in addrs {
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    reached = Some(tcp);
                    link.reached(addr);
                    break;
                }
                Ok(Err(e)) => last = anyhow!(e).context(format!("connecting to {host} at {addr}")),
                Err(_) => last = anyhow!("connecting to {host} at {addr} timed out"),
            }
        }
        let tcp = reached.ok_or(last)?;
        tcp.set_nodelay(true)?;
        tokio::time::timeout(
            Duration::from_secs(10),
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| anyhow!("TLS handshake with the gateway timed out"))?
        .map_err(|e| {
            let hint = ptth_auth::gateway_handshake_hint(&format!("{e:#}"));
            anyhow::Error::new(e).context(format!("TLS handshake with the gateway ({hint})"))
        })
    }

    async fn connect_and_serve(
        &self,
        link: &Link<'_>,
        service: &OriginService,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Outcome> {
        let m = self.config.mechanism;
        let slot = link.slot;
        let addrs = self.addresses(slot).await?;
        if m.transport() == ptth_core::Transport::Quic {
            return crate::quic::connect_and_serve(self, link, &addrs, service, shutdown).await;
        }
        if self.config.danger_accept_any_gateway && self.config.gateway_pin.is_none() {
            tracing::warn!(slot, gateway = %self.gateway, "connecting WITHOUT verifying the gateway's certificate (--danger-accept-any-gateway)");
        }
        let tls = self.dial_tls(&addrs, link).await?;
        let offered_alpn = m.tls_alpn(self.config.alpn_set);
        let selected = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if m.setup() == SetupKind::AlpnOnly && selected.as_deref() != Some(offered_alpn) {
            // draft-thomson-ptth-potato §3: without the reversed ALPN the roles are not
            // reversed; speaking HTTP as a server here would be wrong, so stop.
            bail!(
                "the gateway did not select the reversed ALPN {:?} (it selected {:?})",
                String::from_utf8_lossy(offered_alpn),
                selected.as_deref().map(String::from_utf8_lossy)
            );
        }
        let inner = ProtocolId::from_bytes(m.reversed_version().alpn_id().to_bytes());
        let exporter = ptth_auth::exporter_value(tls.get_ref().1).ok();
        // The TLS stream comes back once the reversed connection inside lets go of it, and is
        // read until the gateway closes its side (see `ptth_h2::linger`). Closing a TCP
        // socket with bytes unread (a WINDOW_UPDATE or PING the gateway sent after our last
        // read) makes the kernel answer with RST instead of FIN; the gateway's next write
        // then fails, and with it every request whose answer it had received but not yet
        // read (seen in a rolling restart of rh2 origins: two POSTs on one connection lost
        // as 'connection error'). A tunnel inside an outer HTTP/2 stream lingers on that
        // stream instead.
        let (tls, back) = ptth_h2::linger::Linger::new(tls);
        let linger = m.setup() != SetupKind::ExtendedConnect;
        let result = match m.setup() {
            SetupKind::AlpnOnly => {
                let authorizer = self.authorizer(exporter);
                let seen = authorizer.seen.clone();
                let service = service.with_authorizer(authorizer);
                let stopping = shutdown.clone();
                let serving = async {
                    if m == Mechanism::H2Reverse {
                        let frame = self.origin_frame()?;
                        let io = ptth_h2::OriginFrameInjector::new(tls, frame);
                        serve_reversed(io, HttpVersion::Http2, service, &self.config, shutdown)
                            .await
                    } else {
                        serve_reversed(tls, m.reversed_version(), service, &self.config, shutdown)
                            .await
                    }
                };
                let result =
                    serve_and_watch_admission(serving, &seen, link, m, "reversed connection up")
                        .await;
                if looks_refused(link, &seen, &stopping) {
                    return Ok(Outcome::Refused);
                }
                result
            }
            SetupKind::Upgrade => {
                let mut req =
                    ptth_core::upgrade_request(&self.params(vec![inner.clone()]), &self.tokens)?;
                self.add_scope_fields(&mut req);
                let (res, upgraded) = ptth_h1::origin_upgrade(tls, req).await?;
                let chosen = ptth_core::validate_upgrade_response(&res, &[inner], &self.tokens)?;
                let version = HttpVersion::from_alpn_id(&chosen)
                    .ok_or_else(|| anyhow!("the gateway chose {chosen:?}"))?;
                link.registered(m, &format!("PTTH upgrade accepted ({version})"));
                serve_reversed(
                    hyper_util::rt::TokioIo::new(upgraded),
                    version,
                    service.clone(),
                    &self.config,
                    shutdown,
                )
                .await
            }
            SetupKind::LegacyUpgrade => {
                let mut req = ptth_core::legacy_request(
                    "/",
                    self.config.credential.as_ref().map(|c| c.header_value()),
                    &self.tokens,
                )?;
                self.add_scope_fields(&mut req);
                let list: Vec<String> = self.origins.iter().map(|o| o.to_string()).collect();
                req.headers_mut().insert(
                    ptth_auth::ORIGINS_FIELD,
                    http::HeaderValue::from_str(&list.join(", "))?,
                );
                if let Ok(h) = http::HeaderValue::from_str(self.authority.as_str()) {
                    req.headers_mut().insert(http::header::HOST, h);
                }
                let (res, upgraded) = ptth_h1::origin_upgrade(tls, req).await?;
                ptth_core::validate_legacy_response(&res, &self.tokens)?;
                link.registered(m, "PTTH/1.0 upgrade accepted");
                serve_reversed(
                    hyper_util::rt::TokioIo::new(upgraded),
                    HttpVersion::Http1,
                    service.clone(),
                    &self.config,
                    shutdown,
                )
                .await
            }
            SetupKind::ExtendedConnect => {
                let (mut req, protocol) =
                    ptth_core::connect_request(&self.params(vec![inner.clone()]), &self.tokens)?;
                self.add_scope_fields(&mut req);
                let stream = ptth_h2::origin_connect(tls, req, protocol).await?;
                let chosen =
                    ptth_core::validate_connect_response(&stream.response, &[inner], &self.tokens)?;
                let version = HttpVersion::from_alpn_id(&chosen)
                    .ok_or_else(|| anyhow!("the gateway chose {chosen:?}"))?;
                link.registered(m, &format!("extended CONNECT accepted ({version})"));
                let (io, back) =
                    ptth_h2::linger::Linger::new(hyper_util::rt::TokioIo::new(stream.stream));
                let result =
                    serve_reversed(io, version, service.clone(), &self.config, shutdown).await;
                ptth_h2::linger::until_peer_closes(back, self.config.shutdown_grace).await;
                result
            }
            SetupKind::Options => bail!("{m} runs over QUIC, which comes with the HTTP/3 work"),
        };
        if linger {
            ptth_h2::linger::until_peer_closes(back, self.config.shutdown_grace).await;
        }
        result.map(|()| Outcome::Ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_backoff_doubles_to_its_cap_and_stays_short_after_a_lost_connection() {
        let mut b = Backoff::new();
        let steps: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        // Each delay lies in [half, full] of a doubling step capped at 30 s.
        let mut step = Backoff::FIRST;
        for d in &steps {
            assert!(
                *d >= step / 2 && *d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            step = (step * 2).min(Backoff::MAX);
        }
        assert!(steps[11] >= Duration::from_secs(15), "{steps:?}");
        // After losing a registered connection: from 100 ms again, never above 1 s...
        b.lost_registered();
        let after: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(after[0] <= Backoff::FIRST, "{after:?}");
        assert!(after.iter().all(|d| *d <= RESTART_STEP), "{after:?}");
        // ... until the restart window has passed.
        tokio::time::advance(RESTART_WINDOW).await;
        let later: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(later[11] > RESTART_STEP, "{later:?}");
    }
}
