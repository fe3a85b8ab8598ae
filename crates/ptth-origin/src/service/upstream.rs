//! Upstream addresses and the connections to them: TCP, TLS or a Unix socket, carrying
//! HTTP/1.1 or HTTP/2, optionally led by a PROXY protocol v2 header.
//!
//! | upstream URL        | transport   | HTTP                                   |
//! |---------------------|-------------|----------------------------------------|
//! | `http://host:port`  | TCP         | HTTP/1.1                               |
//! | `h2c://host:port`   | TCP         | HTTP/2 with prior knowledge (RFC 9113 §3.3) |
//! | `https://host:port` | TCP + TLS   | ALPN `h2`, else `http/1.1`             |
//! | `unix:/path`        | Unix socket | HTTP/1.1                               |
//! | `unix+h2c:/path`    | Unix socket | HTTP/2 with prior knowledge            |
//!
//! `Connector` is the `tower::Service<Uri>` hyper-util's pooled client dials with. It
//! ignores the URI it is given (the request's authority, which keys the pool): where it
//! connects is fixed when the proxy is built. Every dial, TLS handshake included, is bounded
//! by [`CONNECT_TIMEOUT`].

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

/// How long one dial to the upstream may take, TCP or Unix connect and TLS handshake
/// together, before the request is answered `502`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an upstream cannot be proxied to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The URL is none of the supported forms.
    #[error("upstream {uri} must be http://host:port, h2c://host:port, https://host:port, unix:/path or unix+h2c:/path")]
    UnsupportedScheme {
        /// The rejected upstream, as given.
        uri: String,
    },
    /// The URI names no host to connect to (or carries user information).
    #[error("upstream {uri} has no host")]
    MissingHost {
        /// The rejected upstream, as given.
        uri: String,
    },
    /// Requests keep their own path, so a path prefix on the upstream would be ignored.
    #[error("upstream {uri} must not have a path or query: requests keep their own path")]
    HasPath {
        /// The rejected upstream, as given.
        uri: String,
    },
    /// A Unix socket upstream must name an absolute path.
    #[error("upstream {uri} must name an absolute socket path, e.g. unix:/run/app.sock")]
    UnixPath {
        /// The rejected upstream, as given.
        uri: String,
    },
    /// The TLS settings of an `https://` upstream cannot be used.
    #[error("upstream {uri}: {reason}")]
    Tls {
        /// The upstream, as given.
        uri: String,
        /// What is wrong (an unreadable CA file, an invalid server name).
        reason: String,
    },
}

/// TLS settings of an `https://` upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// A CA certificate file (PEM) that signs the upstream's certificate; the WebPKI roots
    /// when absent.
    pub ca: Option<PathBuf>,
    /// The name checked against the upstream's certificate and sent as SNI; the URL's
    /// host when absent.
    pub server_name: Option<String>,
    /// Accept any certificate chain, name and dates. Dangerous: anyone who can answer on
    /// the upstream's address reads the requests.
    pub insecure: bool,
}

/// Where an upstream listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP host (name or address) and port.
    Tcp {
        /// The host name or IP address.
        host: String,
        /// The port.
        port: u16,
    },
    /// A Unix domain socket.
    Unix(PathBuf),
}

/// Which protocol the upstream speaks on its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Cleartext HTTP/1.1.
    Http1,
    /// Cleartext HTTP/2 with prior knowledge.
    H2c,
    /// TLS, offering ALPN `h2` then `http/1.1`.
    Tls,
}

/// A parsed upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as given, for messages.
    pub text: String,
    /// Where it listens.
    pub address: Address,
    /// What it speaks there.
    pub wire: Wire,
}

impl Upstream {
    /// Parses one of the URL forms in the module table. The URL must not carry a path
    /// (requests keep their own).
    ///
    /// # Errors
    ///
    /// [`ProxyError`] says what is wrong: an unknown scheme, no host, a path, or a Unix
    /// socket path that is not absolute.
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        let uri = text.to_string();
        for (prefix, wire) in [("unix+h2c:", Wire::H2c), ("unix:", Wire::Http1)] {
            if let Some(rest) = text.strip_prefix(prefix) {
                // `unix:/run/app.sock` and `unix:///run/app.sock` name the same socket.
                let path = rest.strip_prefix("//").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(ProxyError::UnixPath { uri });
                }
                return Ok(Upstream {
                    text: uri,
                    address: Address::Unix(PathBuf::from(path)),
                    wire,
                });
            }
        }
        let parsed: Uri = text
            .parse()
            .map_err(|_| ProxyError::UnsupportedScheme { uri: uri.clone() })?;
        let (wire, default_port) = match parsed.scheme_str() {
            Some("http") => (Wire::Http1, 80),
            Some("h2c") => (Wire::H2c, 80),
            Some("https") => (Wire::Tls, 443),
            _ => return Err(ProxyError::UnsupportedScheme { uri }),
        };
        let Some(authority) = parsed.authority() else {
            return Err(ProxyError::MissingHost { uri });
        };
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(ProxyError::MissingHost { uri });
        }
        let path_is_root = parsed
            .path_and_query()
            .is_none_or(|path| path.as_str() == "/" || path.as_str().is_empty());
        if !path_is_root {
            return Err(ProxyError::HasPath { uri });
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Upstream {
            text: uri,
            address: Address::Tcp {
                host,
                port: authority.port_u16().unwrap_or(default_port),
            },
            wire,
        })
    }

    /// The scheme of request URIs sent to this upstream (HTTP/2's `:scheme`).
    pub fn scheme(&self) -> Scheme {
        match self.wire {
            Wire::Tls => Scheme::HTTPS,
            Wire::Http1 | Wire::H2c => Scheme::HTTP,
        }
    }

    /// The authority of request URIs when the request names none: the upstream's
    /// `host:port`, or `localhost` for a Unix socket.
    pub fn authority(&self) -> Authority {
        let text = match &self.address {
            Address::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Address::Tcp { host, port } => format!("{host}:{port}"),
            Address::Unix(_) => "localhost".to_string(),
        };
        text.parse()
            .unwrap_or_else(|_| Authority::from_static("localhost"))
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Which ALPN protocols a TLS dial offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// `h2` then `http/1.1`: ordinary requests.
    H2OrHttp1,
    /// Only `http/1.1`: requests that upgrade the connection (WebSocket).
    Http1Only,
}

/// Dials the upstream: the `tower::Service<Uri>` of hyper-util's pooled client, and the one
/// dial of an unpooled connection that starts with a PROXY header.
#[derive(Clone)]
pub(crate) struct Connector {
    address: Arc<Address>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    text: Arc<str>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("upstream", &self.text)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector to `upstream`; TLS upstreams offer `alpn`.
    pub(crate) fn new(
        upstream: &Upstream,
        tls: &UpstreamTls,
        alpn: Alpn,
    ) -> Result<Self, ProxyError> {
        let tls = match upstream.wire {
            Wire::Tls => Some(tls_connector(upstream, tls, alpn)?),
            Wire::Http1 | Wire::H2c => None,
        };
        Ok(Connector {
            address: Arc::new(upstream.address.clone()),
            tls,
            text: upstream.text.as_str().into(),
        })
    }

    /// Connects, writes `preamble` (a PROXY header built from the connection's peer
    /// address) before anything else, and completes TLS, all within [`CONNECT_TIMEOUT`].
    pub(crate) async fn connect(&self, preamble: Option<ProxyHeader>) -> io::Result<Io> {
        let text = self.text.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_unbounded(preamble)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no connection to {text} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    async fn connect_unbounded(&self, preamble: Option<ProxyHeader>) -> io::Result<Io> {
        let stream: Box<dyn Stream> = match &*self.address {
            Address::Tcp { host, port } => {
                let mut tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                if let Some(header) = preamble {
                    let peer = tcp.peer_addr()?;
                    tcp.write_all(&header.encode(Some(peer))).await?;
                }
                match &self.tls {
                    None => Box::new(tcp),
                    Some((connector, name)) => {
                        let tls = connector.connect(name.clone(), tcp).await?;
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        return Ok(Io {
                            inner: TokioIo::new(Box::pin(tls)),
                            h2,
                        });
                    }
                }
            }
            Address::Unix(path) => {
                let mut unix = UnixStream::connect(path).await?;
                if let Some(header) = preamble {
                    unix.write_all(&header.encode(None)).await?;
                }
                Box::new(unix)
            }
        };
        Ok(Io {
            inner: TokioIo::new(Box::into_pin(stream)),
            h2: false,
        })
    }
}

impl tower::Service<Uri> for Connector {
    type Response = Io;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Io>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _pool_key: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move { connector.connect(None).await })
    }
}

/// The rustls client of an `https://` upstream.
fn tls_connector(
    upstream: &Upstream,
    options: &UpstreamTls,
    alpn: Alpn,
) -> Result<(TlsConnector, ServerName<'static>), ProxyError> {
    let fail = |reason: String| ProxyError::Tls {
        uri: upstream.text.clone(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|error| fail(error.to_string()))?;
    let builder = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(ptth_auth::danger_accept_any_gateway())
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &options.ca {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|error| fail(format!("reading {}: {error}", path.display())))?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert =
                        cert.map_err(|error| fail(format!("parsing {}: {error}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|error| fail(format!("{}: {error}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(fail(format!("{} holds no certificate", path.display())));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    let mut config = builder.with_no_client_auth();
    config.alpn_protocols = match alpn {
        Alpn::H2OrHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Alpn::Http1Only => vec![b"http/1.1".to_vec()],
    };
    let name = match (&options.server_name, &upstream.address) {
        (Some(name), _) => name.clone(),
        (None, Address::Tcp { host, .. }) => host.clone(),
        (None, Address::Unix(_)) => return Err(fail("a Unix socket has no TLS".into())),
    };
    let name = ServerName::try_from(name.clone())
        .map_err(|_| fail(format!("{name:?} is not a valid TLS server name")))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// Anything a connection to the upstream runs over.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// One connection to the upstream, whatever its transport.
pub(crate) struct Io {
    inner: TokioIo<Pin<Box<dyn Stream>>>,
    /// Whether TLS negotiated ALPN `h2`.
    h2: bool,
}

impl Io {
    /// Whether the connection must speak HTTP/2 because TLS negotiated it.
    pub(crate) fn negotiated_h2(&self) -> bool {
        self.h2
    }
}

impl Connection for Io {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
}

/// The PROXY protocol v2 header for one connection (haproxy's proxy-protocol.txt §2.2):
/// the public client's address as the gateway saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    /// The client's address; `None` when the request carried none.
    pub(crate) client: Option<SocketAddr>,
}

/// proxy-protocol.txt §2.2: "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A".
const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

impl ProxyHeader {
    /// The header's bytes, with `destination` (the upstream's address as dialled) as the
    /// destination address. §2.2: version 2 and the PROXY command are `0x21`; the family
    /// byte is `0x11` (TCP over IPv4) or `0x21` (TCP over IPv6) followed by source
    /// address, destination address, source port and destination port; an unknown client
    /// is sent as `AF_UNSPEC` (`0x00`, no addresses), which "the receiver must accept ...
    /// and use the real connection endpoints".
    pub(crate) fn encode(&self, destination: Option<SocketAddr>) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 36);
        out.extend_from_slice(&PROXY_V2_SIGNATURE);
        out.push(0x21);
        let Some(client) = self.client else {
            out.extend_from_slice(&[0x00, 0, 0]);
            return out;
        };
        let destination = destination.unwrap_or_else(|| match client.ip() {
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        });
        match (client.ip(), destination.ip()) {
            (IpAddr::V4(source), IpAddr::V4(target)) => {
                out.push(0x11);
                out.extend_from_slice(&12u16.to_be_bytes());
                out.extend_from_slice(&source.octets());
                out.extend_from_slice(&target.octets());
            }
            (source, target) => {
                // Mixed families are both written as IPv6 (an IPv4 address as ::ffff:a.b.c.d).
                out.push(0x21);
                out.extend_from_slice(&36u16.to_be_bytes());
                out.extend_from_slice(&as_v6(source).octets());
                out.extend_from_slice(&as_v6(target).octets());
            }
        }
        out.extend_from_slice(&client.port().to_be_bytes());
        out.extend_from_slice(&destination.port().to_be_bytes());
        out
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_form_parses() {
        let cases = [
            ("http://127.0.0.1:3000", Wire::Http1, "127.0.0.1:3000"),
            ("http://app.internal", Wire::Http1, "app.internal:80"),
            ("h2c://[::1]:50051/", Wire::H2c, "[::1]:50051"),
            ("https://grpc.internal", Wire::Tls, "grpc.internal:443"),
        ];
        for (text, wire, authority) in cases {
            let upstream = Upstream::parse(text).unwrap();
            assert_eq!(upstream.wire, wire, "{text}");
            assert_eq!(upstream.authority().as_str(), authority, "{text}");
        }
        let unix = Upstream::parse("unix:/run/app.sock").unwrap();
        assert_eq!(unix.address, Address::Unix("/run/app.sock".into()));
        assert_eq!(unix.wire, Wire::Http1);
        let unix = Upstream::parse("unix+h2c:///run/grpc.sock").unwrap();
        assert_eq!(unix.address, Address::Unix("/run/grpc.sock".into()));
        assert_eq!(unix.wire, Wire::H2c);
        assert_eq!(
            Upstream::parse("https://a").unwrap().scheme(),
            Scheme::HTTPS
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (text, says) in [
            ("ftp://127.0.0.1:21", "must be http://"),
            ("ws://127.0.0.1:3000", "must be http://"),
            ("/just/a/path", "must be http://"),
            ("http://127.0.0.1:3000/prefix", "must not have a path"),
            ("unix:run/app.sock", "absolute"),
            ("http://user@host:1", "has no host"),
        ] {
            let error = Upstream::parse(text).unwrap_err().to_string();
            assert!(error.contains(says), "{text}: {error}");
            assert!(error.contains(text), "{text}: {error}");
        }
    }

    #[test]
    fn proxy_v2_headers_follow_the_spec_layout() {
        let header = ProxyHeader {
            client: Some("192.0.2.7:51234".parse().unwrap()),
        };
        let bytes = header.encode(Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(bytes[12], 0x21, "version 2, PROXY");
        assert_eq!(bytes[13], 0x11, "TCP over IPv4");
        assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), 12);
        assert_eq!(&bytes[16..20], &[192, 0, 2, 7]);
        assert_eq!(&bytes[20..24], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([bytes[24], bytes[25]]), 51234);
        assert_eq!(u16::from_be_bytes([bytes[26], bytes[27]]), 8080);
        assert_eq!(bytes.len(), 28);

        let mixed = ProxyHeader {
            client: Some("192.0.2.7:1".parse().unwrap()),
        }
        .encode(Some("[::1]:443".parse().unwrap()));
        assert_eq!(mixed[13], 0x21, "TCP over IPv6");
        assert_eq!(u16::from_be_bytes([mixed[14], mixed[15]]), 36);
        assert_eq!(mixed.len(), 16 + 36);
        assert_eq!(
            &mixed[16..32],
            &Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped().octets()
        );

        let unknown = ProxyHeader { client: None }.encode(None);
        assert_eq!(&unknown[12..], &[0x21, 0x00, 0, 0]);
    }
}
