//! The dialer: keeps N reversed connections to a gateway alive and serves each one.
//!
//! ```text
//! loop per slot: TCP ─▶ TLS (ALPN of the mechanism; gateway verified) ─▶ setup exchange ─▶
//!                serve HTTP/1.1 or HTTP/2 until the connection ends ─▶ backoff ─▶ again
//! ```
//!
//! Reconnects use exponential backoff with jitter, reset once a connection has been set up,
//! so a restarted gateway sees its origins return quickly but not all at the same instant.

use crate::serve::{serve_reversed, OriginService};
use crate::OriginConfig;
use anyhow::{anyhow, bail, Context, Result};
use ptth_core::{
    HttpVersion, Mechanism, ProtocolId, SerializedOrigin, SetupKind, SetupRequestParams,
    SetupTokens,
};
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Everything one dial needs, shared by all slots.
pub(crate) struct Dialer {
    pub(crate) config: OriginConfig,
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    pub(crate) authority: http::uri::Authority,
    pub(crate) origins: Vec<SerializedOrigin>,
    pub(crate) tokens: SetupTokens,
    pub(crate) signing_key: Option<Arc<ptth_auth::Ed25519SigningKey>>,
    /// The QUIC endpoint, for mechanisms that dial over QUIC.
    pub(crate) quic: crate::quic::QuicClient,
}

impl Dialer {
    /// The draft-bt ORIGIN frame: our serialized origins, or the test-only override.
    pub(crate) fn origin_frame(&self) -> Result<ptth_core::OriginFrame> {
        let entries = match &self.config.origin_frame_override {
            Some(texts) => texts
                .iter()
                .map(|t| ptth_core::OriginEntry::new(t))
                .collect::<Result<Vec<_>, _>>()?,
            None => self
                .origins
                .iter()
                .map(|o| ptth_core::OriginEntry::new(&o.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(ptth_core::OriginFrame::new(entries)?)
    }
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("gateway", &self.authority)
            .field("mechanism", &self.config.mechanism)
            .field("origins", &self.origins)
            .finish()
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 30 s, each delay drawn from
/// [half, full] of the current step so reconnecting origins spread out.
#[derive(Debug)]
pub(crate) struct Backoff {
    step: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);
    /// A connection that lived this long resets the backoff.
    const HEALTHY: Duration = Duration::from_secs(5);

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
            match self
                .connect_and_serve(slot, &service, shutdown.clone())
                .await
            {
                Ok(()) => {
                    // Only a connection that lasted counts as healthy: one the gateway
                    // drops at once (refused credential, TLS alert after the handshake)
                    // must not turn into a reconnect loop.
                    if started.elapsed() >= Backoff::HEALTHY {
                        backoff.reset();
                    }
                    if *shutdown.borrow() {
                        return;
                    }
                    tracing::info!(slot, "connection to the gateway ended; dialling again");
                }
                Err(e) => {
                    tracing::warn!(slot, error = %format!("{e:#}"), "connection to the gateway failed")
                }
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
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
        .context("TLS handshake with the gateway (is its certificate trusted? see --ca)")
    }

    pub(crate) fn params(&self, offered: Vec<ProtocolId>) -> SetupRequestParams {
        SetupRequestParams {
            gateway_authority: self.authority.clone(),
            origins: self.origins.clone(),
            offered,
            authorization: self.config.credential.as_ref().map(|c| c.header_value()),
        }
    }

    pub(crate) fn add_scope_fields(&self, req: &mut http::Request<()>) {
        if let Ok(v) = http::HeaderValue::from_str(&self.config.path_prefixes.join(", ")) {
            req.headers_mut().insert(ptth_auth::PATH_PREFIX_FIELD, v);
        }
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
                let started = tokio::time::Instant::now();
                let stopping = shutdown.clone();
                let result = if m == Mechanism::H2Reverse {
                    let frame = self.origin_frame()?;
                    let io = ptth_h2::OriginFrameInjector::new(tls, frame);
                    serve_reversed(io, HttpVersion::Http2, service, &self.config, shutdown).await
                } else {
                    serve_reversed(tls, m.reversed_version(), service, &self.config, shutdown).await
                };
                warn_if_refused(slot, m, &seen, started, &stopping);
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
                tracing::info!(slot, mechanism = %m, ?version, "PTTH upgrade accepted");
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
                tracing::info!(slot, mechanism = %m, ?version, "extended CONNECT accepted");
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

    /// What answers the gateway's authorisation request on one connection, bound to that
    /// connection's TLS exporter value.
    pub(crate) fn authorizer(&self, exporter: Option<[u8; 32]>) -> crate::serve::Authorizer {
        crate::serve::Authorizer {
            credential: self.config.credential.clone(),
            signing_key: self.signing_key.clone(),
            key_id: self.config.key_id.clone(),
            exporter,
            origins: self.origins.clone(),
            path_prefixes: self.config.path_prefixes.clone(),
            seen: Default::default(),
        }
    }
}

/// On an ALPN-only connection, a gateway that refuses the authorisation answer closes the
/// connection without a reason; say so when that is what happened.
pub(crate) fn warn_if_refused(
    slot: usize,
    mechanism: Mechanism,
    seen: &crate::serve::AuthorizeSeen,
    started: tokio::time::Instant,
    stopping: &watch::Receiver<bool>,
) {
    if seen.only_the_authorisation_request()
        && started.elapsed() < Backoff::HEALTHY
        && !*stopping.borrow()
    {
        tracing::warn!(
            slot,
            %mechanism,
            "the gateway closed the connection right after our answer to its authorisation request: it refused this origin's credential or the origins and paths it claims (the gateway's log says which)"
        );
    }
}

/// Builds the TLS client config: WebPKI roots by default, or a private CA.
pub(crate) fn tls_config(config: &OriginConfig) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(c.with_context(|| format!("parsing {}", path.display()))?)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // draft-thomson-ptth-potato §6: the origin "MUST NOT answer" a gateway it cannot
    // establish as authoritative, so the gateway's chain is always checked unless the
    // operator explicitly opted out, and a pin always holds: with the opt-out it is the one
    // check left. TCP and QUIC mechanisms both build their TLS from here.
    let verifier = match (config.danger_accept_any_gateway, config.gateway_pin) {
        (true, Some(pin)) => ptth_auth::pinned_gateway_verifier(pin),
        (true, None) => ptth_auth::danger_accept_any_gateway(),
        (false, pin) => ptth_auth::gateway_verifier(roots, pin)?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let chain =
                rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
            let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())?
                .ok_or_else(|| anyhow!("{} holds no private key", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--cert and --key go together"),
    };
    tls.alpn_protocols = vec![config.mechanism.tls_alpn(config.alpn_set).to_vec()];
    Ok(tls)
}
