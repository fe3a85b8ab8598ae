//! TLS configuration for the tunnel and public listeners (rustls with the ring provider).

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
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

/// The public TLS listeners' config (TCP with `h2` and `http/1.1`; the caller changes the
/// ALPN for HTTP/3): ordinary HTTPS, its certificate picked per SNI by `resolver`.
pub fn public_config(resolver: Arc<PublicResolver>) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// One `[[certificate]]` of the gateway config: a certificate chain and its key, with the
/// hosts it serves (by default the DNS names in its subjectAltName); or `dir`, a directory of
/// `NAME.crt` + `NAME.key` pairs, each serving the names in its own certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CertificateSpec {
    /// The certificate chain (PEM), leaf first.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    pub key: Option<std::path::PathBuf>,
    /// The hosts it serves (`app.example`, `*.apps.example`); default: its DNS SANs.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A directory of `NAME.crt` and `NAME.key` pairs.
    pub dir: Option<std::path::PathBuf>,
}

impl CertificateSpec {
    /// Makes relative paths relative to `base` (the config file's directory).
    pub fn rebase(&mut self, base: &Path) {
        for p in [&mut self.cert, &mut self.key, &mut self.dir]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// The most certificates the public listeners hold (entries plus files in directories), so a
/// directory with a runaway number of files fails loudly instead of eating memory.
const MAX_PUBLIC_CERTIFICATES: usize = 10_000;

/// The public listeners' certificates by host name: exact names first, then wildcards
/// (`*.parent` covers one label, RFC 6125 §6.4.3), then the default (the gateway's own
/// `cert`/`key`).
pub struct PublicCerts {
    exact: std::collections::HashMap<String, Arc<CertifiedKey>>,
    wildcard: std::collections::HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl std::fmt::Debug for PublicCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut exact: Vec<&String> = self.exact.keys().collect();
        exact.sort();
        let mut wildcard: Vec<&String> = self.wildcard.keys().collect();
        wildcard.sort();
        f.debug_struct("PublicCerts")
            .field("exact", &exact)
            .field("wildcard", &wildcard)
            .finish()
    }
}

fn certified(
    certs: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    what: &str,
) -> Result<Arc<CertifiedKey>> {
    let signing = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| anyhow!("{what}: the key is unusable: {e}"))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| anyhow!("{what}: the key does not belong to the certificate: {e}"))?;
    Ok(Arc::new(ck))
}

impl PublicCerts {
    /// Loads the default certificate and every `[[certificate]]` entry. Fails on the first
    /// file that cannot be read or whose key does not match.
    pub fn load(
        default_cert: &Path,
        default_key: &Path,
        specs: &[CertificateSpec],
    ) -> Result<Self> {
        let default = certified(
            load_certs(default_cert)?,
            &load_key(default_key)?,
            &format!("{}", default_cert.display()),
        )?;
        let mut this = PublicCerts {
            exact: Default::default(),
            wildcard: Default::default(),
            default,
        };
        let mut pairs: Vec<(std::path::PathBuf, std::path::PathBuf, Vec<String>)> = Vec::new();
        for spec in specs {
            match (&spec.cert, &spec.key, &spec.dir) {
                (Some(c), Some(k), None) => pairs.push((c.clone(), k.clone(), spec.hosts.clone())),
                (None, None, Some(dir)) if spec.hosts.is_empty() => {
                    let entries = std::fs::read_dir(dir).with_context(|| {
                        format!("[[certificate]] dir: reading {}", dir.display())
                    })?;
                    let mut found = Vec::new();
                    for entry in entries {
                        let path = entry
                            .with_context(|| {
                                format!("[[certificate]] dir: reading {}", dir.display())
                            })?
                            .path();
                        if path.extension().is_some_and(|e| e == "crt") {
                            found.push((path.clone(), path.with_extension("key"), Vec::new()));
                            if found.len() > MAX_PUBLIC_CERTIFICATES {
                                anyhow::bail!(
                                    "[[certificate]] dir {}: more than {MAX_PUBLIC_CERTIFICATES} certificates",
                                    dir.display()
                                );
                            }
                        }
                    }
                    found.sort();
                    pairs.extend(found);
                }
                _ => anyhow::bail!(
                    "[[certificate]]: give cert and key (optionally hosts), or dir alone"
                ),
            }
            if pairs.len() > MAX_PUBLIC_CERTIFICATES {
                anyhow::bail!("[[certificate]]: more than {MAX_PUBLIC_CERTIFICATES} certificates");
            }
        }
        for (cert, key, hosts) in pairs {
            let what = format!("[[certificate]] {}", cert.display());
            let chain = load_certs(&cert).with_context(|| what.clone())?;
            let hosts = if hosts.is_empty() {
                let leaf = chain
                    .first()
                    .ok_or_else(|| anyhow!("{what}: no certificate"))?;
                ptth_auth::certificate_names(leaf)
                    .map_err(|e| anyhow!("{what}: {e}"))?
                    .into_iter()
                    .filter(|n| !n.starts_with('['))
                    .collect()
            } else {
                hosts
            };
            if hosts.is_empty() {
                anyhow::bail!("{what}: the certificate names no host; give hosts = [...]");
            }
            let ck = certified(chain, &load_key(&key).with_context(|| what.clone())?, &what)?;
            for host in hosts {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                match host.strip_prefix("*.") {
                    Some(parent) => this.wildcard.insert(parent.to_string(), ck.clone()),
                    None => this.exact.insert(host, ck.clone()),
                };
            }
        }
        Ok(this)
    }

    /// The certificate for a ClientHello naming `sni`: exact name, then wildcard, then the
    /// default.
    pub fn lookup(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        sni.and_then(|name| self.specific(&name.to_ascii_lowercase()))
            .unwrap_or_else(|| self.default.clone())
    }

    fn specific(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(ck) = self.exact.get(host) {
            return Some(ck.clone());
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }

    /// Whether a `[[certificate]]` (not the default) covers `host`; for the default
    /// certificate, whether its own names do (`default_names`).
    pub fn covers(&self, host: &str, default_names: &[String]) -> bool {
        let host = host.to_ascii_lowercase();
        self.specific(&host).is_some() || default_names.iter().any(|n| name_covers(n, &host))
    }

    /// The DNS names of the default certificate.
    pub fn default_names(&self) -> Vec<String> {
        self.default
            .cert
            .first()
            .and_then(|leaf| ptth_auth::certificate_names(leaf).ok())
            .unwrap_or_default()
    }
}

/// Whether a certificate name (`app.example`, `*.example`) covers `host` (both lowercase).
fn name_covers(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, rest)| rest == parent),
        None => name == host,
    }
}

/// The public listeners' certificate resolver: a SIGHUP swaps the [`PublicCerts`] inside, so
/// new handshakes see the new certificates while established connections keep their session.
#[derive(Debug)]
pub struct PublicResolver(std::sync::RwLock<Arc<PublicCerts>>);

impl PublicResolver {
    /// A resolver serving `certs`.
    pub fn new(certs: PublicCerts) -> Arc<Self> {
        Arc::new(Self(std::sync::RwLock::new(Arc::new(certs))))
    }

    /// Puts `certs` in force for handshakes from now on.
    pub fn replace(&self, certs: PublicCerts) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
    }

    /// The certificates in force.
    pub fn current(&self) -> Arc<PublicCerts> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for PublicResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().lookup(hello.server_name()))
    }
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
