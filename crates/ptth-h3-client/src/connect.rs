//! Where to dial and how: the URL's host and port, `--connect-to`, TLS 1.3 with ALPN `h3`
//! (a private CA, the WebPKI roots or no verification), and one quinn endpoint per
//! connection with large flow-control windows.

use anyhow::{anyhow, bail, Context, Result};
use http::Uri;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The WebPKI roots (the default).
    WebPki,
    /// Only this CA bundle (`--cacert`).
    CaFile(PathBuf),
    /// No verification at all (`--insecure`).
    Insecure,
}

/// A resolved target: the URL, the name for SNI and the UDP address to dial.
#[derive(Debug, Clone)]
pub struct Target {
    /// The request URL (`https://host[:port]/path`); its authority becomes `:authority`.
    pub uri: Uri,
    /// The host of the URL, for SNI and certificate verification.
    pub server_name: String,
    /// The UDP address dialled.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses `url` and resolves the address to dial: `connect_to` (`HOST:PORT`) when given,
    /// else the URL's host and port (443 by default).
    pub async fn resolve(url: &str, connect_to: Option<&str>) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => bail!("{url}: HTTP/3 needs an https URL, not {other}"),
            None => bail!("{url}: give an absolute https:// URL"),
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow!("{url}: the URL has no host"))?;
        let server_name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let addr = match connect_to {
            Some(to) => lookup(to).await?,
            None => lookup(&format!("{host}:{port}")).await?,
        };
        Ok(Self {
            uri,
            server_name,
            addr,
        })
    }
}

async fn lookup(host_port: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .ok_or_else(|| anyhow!("{host_port} resolves to no address"))
}

/// The quinn client configuration: TLS 1.3, ALPN `h3`, the given trust, and transport
/// windows large enough for bulk bodies (stream 4 MiB, connection 16 MiB).
pub fn client_config(trust: &Trust, max_streams: u32) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?;
    let mut tls = match trust {
        Trust::Insecure => builder
            .dangerous()
            // Any certificate, but the handshake signature is still checked with the
            // presented key: the same verifier as the origin's --danger-accept-any-gateway.
            .with_custom_certificate_verifier(ptth_auth::danger_accept_any_gateway())
            .with_no_client_auth(),
        Trust::WebPki => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("adding a CA from {}", path.display()))?;
            }
            if roots.is_empty() {
                bail!("{} holds no PEM certificate", path.display());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| anyhow!("QUIC TLS configuration: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(max_streams.max(100).into())
        .stream_receive_window((4u32 * 1024 * 1024).into())
        .receive_window((16u32 * 1024 * 1024).into())
        .send_window(16 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(10)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// An HTTP/3 connection and the endpoint (UDP socket) it runs on.
#[derive(Debug)]
pub struct Connection {
    /// The HTTP/3 connection.
    pub h3: ptth_h3::H3Connection,
    /// The QUIC connection under it.
    pub quic: quinn::Connection,
    /// Its own UDP socket and driver, so connections spread over the runtime's threads.
    pub endpoint: quinn::Endpoint,
}

/// Dials `target` and starts HTTP/3 on it, within `timeout`.
pub async fn connect(
    target: &Target,
    config: &quinn::ClientConfig,
    timeout: Duration,
) -> Result<Connection> {
    let bind: SocketAddr = if target.addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).context("binding a UDP socket")?;
    let dial = async {
        let connecting = endpoint
            .connect_with(config.clone(), target.addr, &target.server_name)
            .map_err(|e| anyhow!("cannot dial {}: {e}", target.addr))?;
        let quic = connecting.await.map_err(|e| {
            anyhow!(
                "QUIC/TLS handshake with {} ({}) failed: {e}",
                target.addr,
                target.server_name
            )
        })?;
        let h3 = ptth_h3::H3Connection::new(
            quic.clone(),
            ptth_h3::H3Config::new(ptth_h3::RequestDirection::ClientSends),
        )
        .await
        .map_err(|e| anyhow!("HTTP/3 start with {}: {e}", target.addr))?;
        anyhow::Ok((quic, h3))
    };
    let (quic, h3) = tokio::time::timeout(timeout, dial).await.map_err(|_| {
        anyhow!(
            "no QUIC handshake with {} ({}) within {:.1} s",
            target.addr,
            target.server_name,
            timeout.as_secs_f64()
        )
    })??;
    Ok(Connection { h3, quic, endpoint })
}

impl Connection {
    /// Closes the connection with H3_NO_ERROR and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.h3.close(0x100, "");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}
