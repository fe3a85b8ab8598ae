//! The dial loop: keeps N reversed connections to a gateway alive and serves each one.
//!
//! ```text
//! loop per slot: TCP ─▶ TLS (ALPN of the mechanism; gateway verified) ─▶ setup exchange ─▶
//!                serve HTTP/1.1 or HTTP/2 until the connection ends ─▶ backoff ─▶ again
//! ```
//!
//! Reconnects use exponential backoff with jitter, reset once a connection has been set up,
//! so a restarted gateway sees its origins return quickly but not all at the same instant.
//!
//! The TCP mechanisms are here; the QUIC ones are in `quic`. Both dial with what the
//! [`Dialer`] holds.

use crate::dialer::{warn_if_refused, Dialer, HEALTHY};
use crate::serve::{serve_reversed, OriginService};
use anyhow::{anyhow, bail, Context, Result};
use ptth_core::{HttpVersion, Mechanism, ProtocolId, SetupKind};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

/// Exponential backoff with jitter: 100 ms doubling to 30 s, each delay drawn from
/// [half, full] of the current step so reconnecting origins spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    pub(crate) fn new() -> Self {
        Self { step: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.step = Self::FIRST;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        use rand::Rng;
        let ms = self.step.as_millis() as u64;
        let delay = Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms));
        self.step = (self.step * 2).min(Self::MAX);
        delay
    }
}

impl Dialer {
    /// One slot of the pool: dial, serve, back off, until shutdown.
    pub(crate) async fn run_slot(
        self: Arc<Self>,
        slot: usize,
        service: OriginService,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = tokio::time::Instant::now();
            self.metrics
                .slot(0, slot, crate::metrics::SlotState::Connecting);
            let served = self
                .connect_and_serve(slot, &service, shutdown.clone())
                .await;
            self.metrics.slot(0, slot, crate::metrics::SlotState::Idle);
            match served {
                Ok(()) => {
                    // Only a connection that lasted counts as healthy: one the gateway
                    // drops at once (refused credential, TLS alert after the handshake)
                    // must not turn into a reconnect loop.
                    if started.elapsed() >= HEALTHY {
                        backoff.reset();
                    }
                    if *shutdown.borrow() {
                        return;
                    }
                    tracing::info!(slot, "connection to the gateway ended; dialling again");
                }
                Err(e) => {
                    self.metrics.failed(0);
                    tracing::warn!(slot, error = %format!("{e:#}"), "connection to the gateway failed")
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
            self.metrics.reconnected(0);
        }
    }

    async fn dial_tls(&self) -> Result<TlsStream<TcpStream>> {
        let host = self.authority.host();
        let port = self.authority.port_u16().unwrap_or(443);
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)),
        )
        .await
        .map_err(|_| anyhow!("connecting to {host}:{port} timed out"))?
        .with_context(|| format!("connecting to {host}:{port}"))?;
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
        slot: usize,
        service: &OriginService,
        shutdown: watch::Receiver<bool>,
    ) -> Result<()> {
        let m = self.config.mechanism;
        if m.transport() == ptth_core::Transport::Quic {
            return crate::quic::connect_and_serve(self, slot, service, shutdown).await;
        }
        if self.config.danger_accept_any_gateway && self.config.gateway_pin.is_none() {
            tracing::warn!(slot, "connecting WITHOUT verifying the gateway's certificate (--danger-accept-any-gateway)");
        }
        let tls = self.dial_tls().await?;
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
        match m.setup() {
            SetupKind::AlpnOnly => {
                let exporter = ptth_auth::exporter_value(tls.get_ref().1).ok();
                let authorizer = self.authorizer(exporter);
                let seen = authorizer.seen.clone();
                let service = service.with_authorizer(authorizer);
                tracing::info!(slot, mechanism = %m, "reversed connection up");
                self.metrics
                    .slot(0, slot, crate::metrics::SlotState::Registered);
                let started = tokio::time::Instant::now();
                let stopping = shutdown.clone();
                let result = if m == Mechanism::H2Reverse {
                    let frame = self.origin_frame()?;
                    let io = ptth_h2::OriginFrameInjector::new(tls, frame);
                    serve_reversed(io, HttpVersion::Http2, service, &self.config, shutdown).await
                } else {
                    serve_reversed(tls, m.reversed_version(), service, &self.config, shutdown).await
                };
                warn_if_refused(slot, m, &seen, started, &stopping, &self.metrics);
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
                tracing::info!(slot, mechanism = %m, %version, "PTTH upgrade accepted");
                self.metrics
                    .slot(0, slot, crate::metrics::SlotState::Registered);
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
                tracing::info!(slot, mechanism = %m, "PTTH/1.0 upgrade accepted");
                self.metrics
                    .slot(0, slot, crate::metrics::SlotState::Registered);
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
                tracing::info!(slot, mechanism = %m, %version, "extended CONNECT accepted");
                self.metrics
                    .slot(0, slot, crate::metrics::SlotState::Registered);
                serve_reversed(
                    hyper_util::rt::TokioIo::new(stream.stream),
                    version,
                    service.clone(),
                    &self.config,
                    shutdown,
                )
                .await
            }
            SetupKind::Options => bail!("{m} runs over QUIC, which comes with the HTTP/3 work"),
        }
    }
}
