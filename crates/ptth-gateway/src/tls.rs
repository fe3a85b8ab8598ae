//! TLS configuration for the tunnel and public listeners (rustls with the ring provider).

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing the key in {}", path.display()))?
        .ok_or_else(|| anyhow!("{} holds no private key", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The tunnel listener's TLS configs. Which one a handshake uses follows the ClientHello's
/// ALPN (read first with rustls's `Acceptor`): draft-bt `h2-reverse` "MUST send a TLS
/// CertificateRequest" and requires a certificate; every other mechanism gets an optional
/// request, and only when some grant authenticates by certificate.
#[derive(Clone)]
pub struct TunnelTls {
    /// Certificates optional (or not requested at all).
    pub optional: Arc<ServerConfig>,
    /// Certificates required; `None` when no trust anchor is configured.
    pub mandatory: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TunnelTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTls")
            .field("mandatory_available", &self.mandatory.is_some())
            .finish()
    }
}

impl TunnelTls {
    /// Picks the config for a ClientHello offering `offered` ALPN tokens: the protocol the
    /// gateway will select is the first of its own list the client offers (RFC 7301 §3.2
    /// leaves the choice to the server).
    pub fn for_client_hello<'a>(
        &self,
        offered: Option<impl Iterator<Item = &'a [u8]>>,
    ) -> Option<Arc<ServerConfig>> {
        let offered: Vec<&[u8]> = offered.map(|o| o.collect()).unwrap_or_default();
        let selected = self
            .optional
            .alpn_protocols
            .iter()
            .find(|p| offered.contains(&p.as_slice()));
        let requires_cert = selected.is_some_and(|p| {
            matches!(
                ptth_core::classify_alpn(ptth_core::Transport::Tls, p),
                Some(ptth_core::AlpnRole::Reversed { mechanism, .. })
                    if mechanism.requires_client_certificate()
            )
        });
        if requires_cert {
            self.mandatory.clone()
        } else {
            Some(self.optional.clone())
        }
    }
}

/// Builds the tunnel configs: every ALPN token of every TCP mechanism; client certificates
/// verified against `client_ca`, the WebPKI roots (`client_webpki`) and the grants' pinned
/// keys.
pub fn tunnel_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<&Path>,
    client_webpki: bool,
    grants: &ptth_auth::Grants,
) -> Result<TunnelTls> {
    let roots = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots.add(c)?;
            }
            Some(roots)
        }
        None => None,
    };
    let pins = grants.pinned_spki();
    let anchors = roots.is_some() || client_webpki || !pins.is_empty();
    let build = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let mut config = match verifier {
            Some(v) => builder
                .with_client_cert_verifier(v)
                .with_single_cert(certs.clone(), key.clone_key())?,
            None => builder
                .with_no_client_auth()
                .with_single_cert(certs.clone(), key.clone_key())?,
        };
        config.alpn_protocols = ptth_core::tunnel_alpn_protocols(ptth_core::Transport::Tls);
        anyhow::Ok(Arc::new(config))
    };
    let optional = if anchors && grants.wants_client_certificates() {
        build(Some(ptth_auth::client_verifier(
            roots.clone(),
            pins.clone(),
            client_webpki,
            false,
        )?))?
    } else {
        build(None)?
    };
    let mandatory = if anchors {
        Some(build(Some(ptth_auth::client_verifier(
            roots,
            pins,
            client_webpki,
            true,
        )?))?)
    } else {
        None
    };
    Ok(TunnelTls {
        optional,
        mandatory,
    })
}

/// The public TLS listener's config: ordinary HTTPS with `h2` and `http/1.1`.
pub fn public_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A quinn server config from a rustls config and transport parameters; `what` names the
/// endpoint in the error.
pub(crate) fn quic_server_config(
    tls: rustls::ServerConfig,
    transport: quinn::TransportConfig,
    what: &str,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(tls))
        .map_err(|e| anyhow::anyhow!("{what}: TLS config unusable for QUIC: {e}"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
}
