//! The HTTP connection a reverse CONNECT control channel and its accepts ride, in each of
//! the three HTTP versions the draft defines (draft-rosomakho-masque-reverse-connect):
//!
//! ```text
//! h2  TCP ─▶ TLS (ALPN h2) ─▶ HTTP/2 ─▶ CONNECT :protocol=connect-listen, and each
//!     connect-accept an extended CONNECT on the same connection (RFC 8441)
//! h3  QUIC (ALPN h3) ─▶ HTTP/3 ─▶ the same, as RFC 9220 extended CONNECTs
//! h1  TCP ─▶ TLS (ALPN http/1.1) ─▶ GET + Upgrade: connect-listen ─▶ 101; each accept a
//!     NEW TLS connection with GET + Upgrade: connect-accept ─▶ 101
//! ```
//!
//! The draft: over HTTP/2 and HTTP/3 the accept is "sent on the same connection" as the
//! listener; over HTTP/1.1 "the proxy MUST authenticate both the listener channel and every
//! accept request", so every accept here carries the credential. Whatever the version, the
//! exchange's stream comes back as one byte-stream type (`ServiceIo`) that the capsule
//! reader and `splice` use unchanged.

use crate::dialer::Dialer;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use ptth_core::{
    reverse_connect_request, reverse_upgrade_request, validate_reverse_response, ReverseExchange,
    SetupForm, Transport,
};
use ptth_h2::client::{Client, KEEP_ALIVE};
use ptth_h2::udp_flow::{datagram_carrier, DatagramCarrierSink, DatagramCarrierSource};
use ptth_h2::Body;
use ptth_h3::{H3Config, H3Connection, Protocol, RequestDirection};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// A gateway's answer to a setup (and each dial and handshake) must come by then.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which HTTP version carries the control channels (`--service-transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceTransport {
    /// HTTP/1.1 Upgrade; a new TLS connection per accept.
    H1,
    /// HTTP/2 extended CONNECT on one TLS connection.
    H2,
    /// HTTP/3 extended CONNECT on one QUIC connection.
    H3,
}

impl ServiceTransport {
    /// What follows the mechanism's transport: a QUIC mechanism's origin knows UDP reaches
    /// the gateway, so HTTP/3; otherwise HTTP/2, which any TLS path carries.
    pub fn following(mechanism: ptth_core::Mechanism) -> Self {
        match mechanism.transport() {
            Transport::Quic => Self::H3,
            Transport::Tls => Self::H2,
        }
    }
}

impl std::str::FromStr for ServiceTransport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "h1" => Ok(Self::H1),
            "h2" => Ok(Self::H2),
            "h3" => Ok(Self::H3),
            _ => Err(format!("--service-transport is h1, h2 or h3, not {s:?}")),
        }
    }
}

impl std::fmt::Display for ServiceTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
            Self::H3 => "h3",
        })
    }
}

/// A flow stream's HTTP datagram path: its HTTP/3 request's, or none.
pub(crate) type StreamDatagrams = Option<ptth_h3::RequestHandle>;

/// A UDP flow's carrier on `io` (RFC 9298 payloads): over an HTTP/3 request stream whose
/// connection negotiated HTTP datagrams, QUIC DATAGRAM frames (capsules for what does not
/// fit one, and capsules received too); on any other stream, capsules only.
pub(crate) fn udp_carrier(
    io: ServiceIo,
) -> (
    DatagramCarrierSource<tokio::io::ReadHalf<ServiceIo>, StreamDatagrams>,
    DatagramCarrierSink<tokio::io::WriteHalf<ServiceIo>, StreamDatagrams>,
) {
    let handle = io.h3_request().cloned();
    datagram_carrier(io, handle)
}

/// A control channel's or flow's stream, its HTTP version erased.
pub(crate) type ServiceIo = Box<dyn ptth_h3::ByteStream>;

/// The connection (HTTP/2, HTTP/3) or the way to make connections (HTTP/1.1) that one
/// control channel and its accepts use.
#[derive(Clone)]
pub(crate) enum Carrier {
    /// h2's client used directly (`ptth_h2::client`): each accept's stream is a
    /// `ptth_h2::Tunnel`, whose flow moves bytes without copies (`ptth_h2::flow`).
    H2(Arc<Client>),
    H3(Arc<H3Connection>),
    H1(Arc<H1Dial>),
}

/// What an HTTP/1.1 exchange dials: the gateway's addresses and TLS with ALPN http/1.1.
pub(crate) struct H1Dial {
    tls: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
    addrs: Vec<SocketAddr>,
}

impl Carrier {
    /// Connects to `dialer`'s gateway over `transport`, every step bounded by
    /// [`SETUP_TIMEOUT`].
    pub(crate) async fn connect(dialer: &Dialer, transport: ServiceTransport) -> Result<Self> {
        let addrs = dialer.addresses(0).await?;
        match transport {
            ServiceTransport::H2 => {
                let tls = tls_connector(dialer, b"h2")?;
                let stream = dial_tls(&tls, &dialer.server_name, &addrs).await?;
                h2(stream).await.map(Self::H2)
            }
            ServiceTransport::H3 => h3(dialer, &addrs).await.map(|h3| Self::H3(Arc::new(h3))),
            ServiceTransport::H1 => Ok(Self::H1(Arc::new(H1Dial {
                tls: tls_connector(dialer, b"http/1.1")?,
                server_name: dialer.server_name.clone(),
                addrs,
            }))),
        }
    }

    /// Sends `exchange`'s request to `uri` (with the credential `auth`) and takes over its
    /// stream on success; the gateway's refusal is an error naming its status and reason.
    pub(crate) async fn open(
        &self,
        exchange: ReverseExchange,
        uri: &http::Uri,
        auth: Option<http::HeaderValue>,
    ) -> Result<ServiceIo> {
        match self {
            Self::H2(client) => {
                let (req, protocol) = reverse_connect_request(exchange, uri, auth)?;
                h2_connect(client, req, protocol, exchange).await
            }
            Self::H3(h3) => {
                let (req, protocol) = reverse_connect_request(exchange, uri, auth)?;
                h3_connect(h3, req, protocol, exchange).await
            }
            Self::H1(dial) => {
                let req = reverse_upgrade_request(exchange, uri, auth)?;
                h1_upgrade(dial, req, exchange).await
            }
        }
    }
}

/// The origin's TLS config with ALPN `alpn`: reverse CONNECT is ordinary HTTP from here.
fn tls_connector(dialer: &Dialer, alpn: &[u8]) -> Result<tokio_rustls::TlsConnector> {
    let mut tls = crate::dialer::tls_config(&dialer.config)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

/// TCP to the first of `addrs` that answers, then TLS.
async fn dial_tls(
    tls: &tokio_rustls::TlsConnector,
    server_name: &rustls::pki_types::ServerName<'static>,
    addrs: &[SocketAddr],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut last = anyhow!("the gateway resolved to no address");
    let mut tcp = None;
    for &addr in addrs {
        match tokio::time::timeout(SETUP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => {
                tcp = Some(t);
                break;
            }
            Ok(Err(e)) => last = anyhow!(e).context(format!("connecting to {addr}")),
            Err(_) => last = anyhow!("connecting to {addr} timed out"),
        }
    }
    let tcp = tcp.ok_or(last)?;
    tcp.set_nodelay(true)?;
    tokio::time::timeout(SETUP_TIMEOUT, tls.connect(server_name.clone(), tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake with the gateway timed out"))?
        .context("TLS handshake with the gateway")
}

/// An HTTP/2 client on `stream` (h2's, `ptth_h2::client`), once the gateway enabled
/// extended CONNECT. Its SETTINGS: 4 MiB stream and 16 MiB connection windows
/// (`ptth_h2::Windows`), and DATA frames up to 64 KiB from the gateway, as the gateway takes
/// from us (its setup server): a flow's 64 KiB read crosses as one frame, not four, and h2's
/// read buffer reallocates a sixth as often (docs/performance.md finding 8). The
/// connection is pinged every 20 s and lost when a PING goes 20 s unanswered.
async fn h2(stream: tokio_rustls::client::TlsStream<TcpStream>) -> Result<Arc<Client>> {
    let (client, conn) = tokio::time::timeout(
        SETUP_TIMEOUT,
        ptth_h2::client::handshake(stream, ptth_h2::Windows::default()),
    )
    .await
    .map_err(|_| anyhow!("HTTP/2 handshake with the gateway timed out"))?
    .context("HTTP/2 handshake with the gateway")?;
    tokio::spawn(async move {
        if let Err(e) = ptth_h2::client::drive(conn, KEEP_ALIVE).await {
            tracing::debug!(error = %e, "reverse CONNECT HTTP/2 connection ended");
        }
    });
    // RFC 8441 §4: no :protocol before the peer's SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while !client.extended_connect() {
        if client.is_refusing() || tokio::time::Instant::now() >= deadline {
            bail!("the gateway does not enable extended CONNECT (RFC 8441)");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Arc::new(client))
}

/// HTTP/3 to the gateway's QUIC tunnel endpoint (ALPN `h3`), with the transport settings
/// every tunnel uses (`ptth_h3::transport`: keep-alive, idle timeout, windows), once the
/// gateway enabled extended CONNECT.
async fn h3(dialer: &Dialer, addrs: &[SocketAddr]) -> Result<H3Connection> {
    let (endpoint, _) = dialer.quic.get(&dialer.config)?;
    let mut tls = crate::dialer::tls_config(&dialer.config)?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // RFC 9001 §4.6.1: no early data from us.
    tls.enable_early_data = false;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| anyhow!("TLS config unusable for QUIC: {e}"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(ptth_h3::transport::tunnel_transport_config()));
    let host = dialer
        .authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut last = anyhow!("{host} resolved to no address");
    let mut quic = None;
    for &addr in addrs {
        match crate::quic::handshake(&endpoint, &client, addr, host).await {
            Ok(c) => {
                quic = Some(c);
                break;
            }
            Err(e) => last = e,
        }
    }
    let quic = quic.ok_or(last)?;
    // We send the requests (client-initiated streams); the gateway sends none.
    let config = H3Config::new(RequestDirection::ClientSends).enable_datagrams(true);
    let h3 = tokio::time::timeout(SETUP_TIMEOUT, H3Connection::new(quic, config))
        .await
        .map_err(|_| anyhow!("HTTP/3 did not start within {SETUP_TIMEOUT:?}"))?
        .context("starting HTTP/3")?;
    // RFC 9220 §3: extended CONNECT only once the peer sent SETTINGS_ENABLE_CONNECT_PROTOCOL.
    let settings = tokio::time::timeout(SETUP_TIMEOUT, h3.peer_settings())
        .await
        .map_err(|_| anyhow!("the gateway sent no HTTP/3 SETTINGS within {SETUP_TIMEOUT:?}"))?
        .context("the gateway's HTTP/3 SETTINGS")?;
    if !settings.enable_connect_protocol {
        bail!("the gateway does not enable extended CONNECT over HTTP/3 (RFC 9220)");
    }
    Ok(h3)
}

/// The gateway's reason for a refusal: the body's first KiB, by the setup deadline.
async fn refusal<B>(body: B) -> String
where
    B: http_body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(SETUP_TIMEOUT, Limited::new(body, 1024).collect()).await {
        Ok(Ok(c)) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
        _ => "(no readable reason)".into(),
    }
}

/// An HTTP/2 extended CONNECT for `exchange` (`:protocol` as h2's extension, which
/// `Client::send` sets from the request's), its stream taken over as a `ptth_h2::Tunnel` on
/// a 2xx.
async fn h2_connect(
    client: &Client,
    req: Request<()>,
    protocol: &'static str,
    exchange: ReverseExchange,
) -> Result<ServiceIo> {
    let (mut parts, ()) = req.into_parts();
    parts
        .extensions
        .insert(hyper::ext::Protocol::from_static(protocol));
    let body: Body = Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut res =
        tokio::time::timeout(SETUP_TIMEOUT, client.send(Request::from_parts(parts, body)))
            .await
            .map_err(|_| anyhow!("no answer to {exchange} within {SETUP_TIMEOUT:?}"))?
            .map_err(|e| anyhow!("{exchange} over HTTP/2: {e}"))?;
    if !res.status().is_success() {
        let status = res.status();
        let reason = h2_refusal(res.into_body()).await;
        bail!("the gateway refused {exchange} with {status}: {reason}");
    }
    validate_reverse_response(&res, exchange, SetupForm::ExtendedConnect)?;
    let tunnel = ptth_h2::client::take_tunnel(&mut res)
        .ok_or_else(|| anyhow!("the {exchange} stream was not handed over"))?;
    Ok(Box::new(tunnel))
}

/// [`refusal`] for an h2 answer's body, read frame by frame: `refusal`'s bound that the
/// body's error (a boxed error here) converts into a boxed error trips rustc's check that
/// the flow's future is `Send` for every lifetime.
async fn h2_refusal(mut body: Body) -> String {
    let read = async {
        let mut text = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                text.extend_from_slice(&data[..data.len().min(1024 - text.len())]);
                if text.len() == 1024 {
                    break;
                }
            }
        }
        String::from_utf8_lossy(&text).trim().to_string()
    };
    match tokio::time::timeout(SETUP_TIMEOUT, read).await {
        Ok(reason) => reason,
        Err(_) => "(no readable reason)".into(),
    }
}

/// An HTTP/3 extended CONNECT (RFC 9220) for `exchange`; the request stream on a 2xx.
async fn h3_connect(
    h3: &H3Connection,
    req: Request<()>,
    protocol: &'static str,
    exchange: ReverseExchange,
) -> Result<ServiceIo> {
    let mut req = req;
    req.extensions_mut().insert(Protocol(protocol.to_string()));
    let (res, mut stream) = tokio::time::timeout(SETUP_TIMEOUT, h3.sender().send_connect(req))
        .await
        .map_err(|_| anyhow!("no answer to {exchange} within {SETUP_TIMEOUT:?}"))?
        .with_context(|| format!("{exchange} over HTTP/3"))?;
    if !res.status().is_success() {
        let status = res.status();
        // The refusal's reason is the DATA the stream carries before it ends.
        let reason = tokio::time::timeout(SETUP_TIMEOUT, async {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            let _ = (&mut stream).take(1024).read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).trim().to_string()
        })
        .await
        .unwrap_or_else(|_| "(no readable reason)".into());
        bail!("the gateway refused {exchange} with {status}: {reason}");
    }
    validate_reverse_response(&res, exchange, SetupForm::ExtendedConnect)?;
    Ok(Box::new(stream))
}

/// A new TLS connection for `exchange` over HTTP/1.1: `GET` + `Upgrade`, the connection
/// itself on a `101`.
async fn h1_upgrade(
    dial: &H1Dial,
    req: Request<()>,
    exchange: ReverseExchange,
) -> Result<ServiceIo> {
    let stream = dial_tls(&dial.tls, &dial.server_name, &dial.addrs).await?;
    let (mut send, conn) = tokio::time::timeout(
        SETUP_TIMEOUT,
        hyper::client::conn::http1::Builder::new().handshake::<_, Body>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| anyhow!("HTTP/1.1 handshake with the gateway timed out"))??;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "reverse CONNECT HTTP/1.1 connection ended");
        }
    });
    let body: Body = Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let (parts, ()) = req.into_parts();
    let mut res = tokio::time::timeout(
        SETUP_TIMEOUT,
        send.send_request(Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| anyhow!("no answer to {exchange} within {SETUP_TIMEOUT:?}"))??;
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = res.status();
        let reason = refusal(res.into_body()).await;
        bail!("the gateway refused {exchange} with {status}: {reason}");
    }
    validate_reverse_response(&res, exchange, SetupForm::Upgrade)?;
    let io = tokio::time::timeout(SETUP_TIMEOUT, hyper::upgrade::on(&mut res))
        .await
        .map_err(|_| anyhow!("the {exchange} connection was not handed over"))??;
    Ok(Box::new(TokioIo::new(io)))
}
