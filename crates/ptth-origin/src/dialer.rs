//! The [`Dialer`]: what every connection of one origin to its gateway shares, whichever
//! transport carries it. The TLS client config (for TCP and QUIC alike), the QUIC endpoint,
//! the setup request's fields, the ORIGIN frame and the answer to the gateway's
//! authorisation request. `dial` (TCP) and `quic` build on it; it knows neither.

use crate::serve::{AuthorizeSeen, Authorizer};
use crate::OriginConfig;
use anyhow::{anyhow, bail, Context, Result};
use ptth_core::{Mechanism, ProtocolId, SerializedOrigin, SetupRequestParams, SetupTokens};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;
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
    pub(crate) quic: QuicClient,
    /// Connection counts and readiness, per configured gateway.
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
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

    /// What answers the gateway's authorisation request on one connection, bound to that
    /// connection's TLS exporter value.
    pub(crate) fn authorizer(&self, exporter: Option<[u8; 32]>) -> Authorizer {
        Authorizer {
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

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("gateway", &self.authority)
            .field("mechanism", &self.config.mechanism)
            .field("origins", &self.origins)
            .finish()
    }
}

/// The origin's QUIC client endpoint and config, made on first use and shared by every
/// slot of one origin.
#[derive(Debug, Default)]
pub(crate) struct QuicClient {
    inner: OnceLock<(quinn::Endpoint, quinn::ClientConfig)>,
}

impl QuicClient {
    /// The endpoint and client config, made on the first call.
    pub(crate) fn get(
        &self,
        config: &OriginConfig,
    ) -> Result<&(quinn::Endpoint, quinn::ClientConfig)> {
        if let Some(x) = self.inner.get() {
            return Ok(x);
        }
        let mut tls = tls_config(config)?;
        // RFC 9001 §4.6.1: no early data from us.
        tls.enable_early_data = false;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| anyhow!("TLS config unusable for QUIC: {e}"))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(ptth_h3::transport::tunnel_transport_config()));
        // A dual-stack socket reaches IPv4 and IPv6 gateways alike; fall back to IPv4.
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0u16; 8], 0)))
            .or_else(|_| quinn::Endpoint::client(SocketAddr::from(([0u8; 4], 0))))
            .context("binding a UDP socket for QUIC")?;
        let _ = self.inner.set((endpoint, client));
        self.inner
            .get()
            .ok_or_else(|| anyhow!("QUIC endpoint initialisation raced"))
    }
}

/// A connection that lived this long was healthy: it resets the dial backoff, and one that
/// ended sooner, right after the authorisation answer, was most likely refused.
pub(crate) const HEALTHY: Duration = Duration::from_secs(5);

/// On an ALPN-only connection, a gateway that refuses the authorisation answer closes the
/// connection without a reason; say so (and count it) when that is what happened.
pub(crate) fn warn_if_refused(
    slot: usize,
    mechanism: Mechanism,
    seen: &AuthorizeSeen,
    started: tokio::time::Instant,
    stopping: &watch::Receiver<bool>,
    metrics: &crate::metrics::Metrics,
) {
    if seen.only_the_authorisation_request() && started.elapsed() < HEALTHY && !*stopping.borrow() {
        metrics.refused(0);
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
