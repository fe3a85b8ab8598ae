//! Proxy mode (`ptth-origin --upstream URL`): forwards every reversed request to one local
//! upstream over HTTP/1.1 or HTTP/2, on TCP, TLS or a Unix socket ([`super::upstream`]).
//!
//! ```text
//! gateway ──(reversed HTTP/1.1, HTTP/2 or HTTP/3)──▶ Proxy ──(pooled HTTP/1.1 or HTTP/2)──▶ upstream
//! ```
//!
//! Bodies stream both ways frame by frame, trailers included. Hop-by-hop fields are removed
//! in both directions, and so is the gateway's `ptth-client-port` (read for PROXY v2
//! headers); everything else, including `Host` and the `Via`, `Forwarded`,
//! `X-Forwarded-*` and `X-Real-IP` fields the gateway set, reaches the upstream unchanged.
//! The request URI's authority is the host the public client asked for, so an HTTP/2
//! upstream sees it as `:authority` and an HTTP/1.1 one as `Host`.
//! Upgrades are tunnelled: an HTTP/1.1 `Upgrade` is forwarded as one, and an RFC 8441
//! extended CONNECT for WebSocket arriving over HTTP/2 is turned into an HTTP/1.1 WebSocket
//! upgrade towards the upstream. Upgrades need an HTTP/1.1 upstream: an `https://` one is
//! dialled offering only `http/1.1` for them, and `h2c://`/`unix+h2c:` upstreams refuse
//! them with `501`.
//!
//! Towards an HTTP/1.1 upstream hyper writes only the trailer fields that the request's
//! `Trailer` field announced; an HTTP/2 caller that sends request trailers must therefore
//! announce them for them to reach such an upstream (HTTP/2 upstreams get them all).
//! `TE: trailers` is kept so the upstream knows it may send response trailers.
//!
//! Connections to an `http://` or `unix:` upstream are pooled by the crate's `h1_pool`: each is
//! polled by the request that uses it and then by its response body, in the task that serves
//! the request, not in a task of its own (at most [`POOL_MAX_IDLE`] idle ones, closed after
//! [`POOL_IDLE_TIMEOUT`]). The other upstreams (`h2c://`, `unix+h2c:`, `https://`) go through
//! hyper-util's legacy client over our own [`super::upstream`] connector, pooled per requested
//! host: it shares one HTTP/2 connection and picks HTTP/2 when TLS negotiated `h2`. An
//! upgrade (WebSocket) to an `http://` or `unix:` upstream gets a connection of its own. A
//! route with `proxy-protocol = true` dials one connection per request with hyper's conn API
//! instead, because its PROXY header describes one client. Every failure to reach or hear the
//! upstream is a `502` whose body, and the origin's log, say why. The proxy does not retry (a
//! request that a pooled connection, closed as it was taken, could not even write goes out
//! once on a fresh connection) and sets no timeouts beyond the connect timeout; the gateway
//! owns those policies.

use std::convert::Infallible;
use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONNECTION, COOKIE, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, TE, TRANSFER_ENCODING,
    UPGRADE,
};
use http::uri::{Authority, PathAndQuery};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::h1_pool::{H1Pool, PoolError, UpstreamBody};
use super::upstream::{Alpn, Connector, ProxyHeader, Upstream, UpstreamTls, Wire};
use super::websocket::{header_has_token, on_upgrade, OnTunnel, WEBSOCKET_PROTOCOL};
use super::{text_response, Body, BoxError, Refusal, ResponseFuture};

pub use super::upstream::{ProxyError, CONNECT_TIMEOUT};

/// How long an idle pooled upstream connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most idle connections kept per upstream (per requested host for the upstreams
/// hyper-util's client pools).
pub const POOL_MAX_IDLE: usize = 64;

/// The largest read buffer of one upstream connection: the project's 64 KiB header limit plus
/// room for a body read. hyper's default (about 400 KiB) grows on every connection that
/// streams a large body, and with one connection per concurrent request that was most of
/// proxy mode's memory (360 MiB at 256 concurrent 1 MiB downloads in `cargo xtask bench`).
const UPSTREAM_READ_BUFFER: usize = 96 * 1024;

/// `ptth-client-port`: the public client's port, which the gateway sets when the client is
/// its peer (`ptth_gateway::forwarding::PTTH_CLIENT_PORT`). It is for the PROXY v2 header
/// only and is removed before the upstream sees the request.
const PTTH_CLIENT_PORT: HeaderName = HeaderName::from_static("ptth-client-port");

/// Header fields that describe one hop rather than the message (RFC 9110 §7.6.1), plus the
/// obsolete `Proxy-Connection` that some clients still send.
static HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// How one route reaches its upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyOptions {
    /// TLS settings, used by `https://` upstreams only.
    pub tls: UpstreamTls,
    /// Start every upstream connection with a PROXY protocol v2 header naming the public
    /// client (from the gateway's `X-Real-IP` and `ptth-client-port`); such connections are
    /// not pooled.
    pub proxy_protocol: bool,
}

/// The proxy service: one per upstream, cheap to clone (one reference count), sharing one
/// connection pool.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

#[derive(Debug)]
struct ProxyInner {
    upstream: Upstream,
    connector: Connector,
    /// Plain requests to an `http://` or `unix:` upstream: connections driven by the
    /// requests themselves ([`super::h1_pool`]).
    h1_pool: Option<H1Pool>,
    /// Plain requests to the other upstreams (HTTP/2 or TLS): hyper-util's pooled client.
    client: Client<Connector, UpstreamBody>,
    /// For WebSocket and other upgrades to an `https://` upstream: a client and connector
    /// that offer only `http/1.1`.
    upgrade_client: Option<(Client<Connector, UpstreamBody>, Connector)>,
    proxy_protocol: bool,
}

/// A pooled client over `connector`, speaking only HTTP/2 when `h2_only`.
fn pooled_client(connector: Connector, h2_only: bool) -> Client<Connector, UpstreamBody> {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .http1_max_buf_size(UPSTREAM_READ_BUFFER)
        .http2_only(h2_only)
        .build(connector)
}

impl Proxy {
    /// A proxy to `upstream` (any form [`Upstream::parse`] takes) with default options.
    ///
    /// # Errors
    ///
    /// [`ProxyError`] names what is wrong with `upstream`. No connection is attempted here;
    /// an unreachable upstream shows up later as `502` answers.
    pub fn new(upstream: &str) -> Result<Self, ProxyError> {
        Self::with_options(upstream, &ProxyOptions::default())
    }

    /// A proxy to `upstream` with TLS and PROXY protocol `options`.
    ///
    /// # Errors
    ///
    /// As [`Proxy::new`], and [`ProxyError::Tls`] when the CA file cannot be read or the
    /// server name is not one.
    pub fn with_options(upstream: &str, options: &ProxyOptions) -> Result<Self, ProxyError> {
        let upstream = Upstream::parse(upstream)?;
        let connector = Connector::new(&upstream, &options.tls, Alpn::H2OrHttp1)?;
        let client = pooled_client(connector.clone(), upstream.wire == Wire::H2c);
        let upgrade_client = match upstream.wire {
            Wire::Tls => {
                let connector = Connector::new(&upstream, &options.tls, Alpn::Http1Only)?;
                Some((pooled_client(connector.clone(), false), connector))
            }
            Wire::Http1 | Wire::H2c => None,
        };
        if options.tls.insecure && upstream.wire == Wire::Tls {
            tracing::warn!(
                upstream = %upstream,
                "--upstream-insecure: the upstream's certificate is NOT verified; anyone who can answer on its address reads the requests"
            );
        }
        let h1_pool = (upstream.wire == Wire::Http1).then(|| {
            H1Pool::new(
                connector.clone(),
                UPSTREAM_READ_BUFFER,
                POOL_MAX_IDLE,
                POOL_IDLE_TIMEOUT,
            )
        });
        Ok(Proxy {
            inner: Arc::new(ProxyInner {
                upstream,
                connector,
                h1_pool,
                client,
                upgrade_client,
                proxy_protocol: options.proxy_protocol,
            }),
        })
    }

    /// The upstream requests are forwarded to.
    pub fn upstream(&self) -> &Upstream {
        &self.inner.upstream
    }
}

/// Why one exchange with the upstream failed: before a connection stood, or after.
#[derive(Debug)]
enum SendError {
    Connect(std::io::Error),
    Pooled(hyper_util::client::legacy::Error),
    Exchange(hyper::Error),
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues internally, so the proxy is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let proxy = self.clone();
        Box::pin(async move { Ok(proxy.forward(request).await) })
    }
}

/// What kind of exchange a request starts, which decides how it is forwarded and answered.
#[derive(Debug)]
enum Mode {
    /// An ordinary request and response.
    Plain,
    /// An HTTP/1.1 upgrade, forwarded as one; a `101` from the upstream opens a tunnel.
    Upgrade { protocols: Vec<HeaderValue> },
    /// An RFC 8441 WebSocket CONNECT, forwarded as an HTTP/1.1 WebSocket upgrade with `key`.
    ExtendedConnect { key: String },
}

impl Mode {
    fn of<B>(request: &Request<B>) -> Result<Self, Refusal> {
        if request.method() == Method::CONNECT {
            return match request.extensions().get::<Protocol>() {
                Some(protocol) if protocol.as_str().eq_ignore_ascii_case(WEBSOCKET_PROTOCOL) => {
                    Ok(Mode::ExtendedConnect {
                        key: generate_key(),
                    })
                }
                Some(protocol) => Err(Refusal::new(
                    StatusCode::NOT_IMPLEMENTED,
                    format!(
                        "the proxy only forwards extended CONNECT for websocket, not {:?}",
                        protocol.as_str()
                    ),
                )),
                None => Err(Refusal::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "the proxy does not open CONNECT tunnels",
                )),
            };
        }
        // Upgrade is an HTTP/1.1 mechanism; HTTP/2 forbids both fields (RFC 9113 §8.2.2).
        let http1 = matches!(request.version(), Version::HTTP_11);
        if http1 && header_has_token(request.headers(), &CONNECTION, "upgrade") {
            let protocols: Vec<HeaderValue> =
                request.headers().get_all(UPGRADE).iter().cloned().collect();
            if !protocols.is_empty() {
                return Ok(Mode::Upgrade { protocols });
            }
        }
        Ok(Mode::Plain)
    }
}

impl Proxy {
    async fn forward<B>(self, mut request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mode = match Mode::of(&request) {
            Ok(mode) => mode,
            Err(refusal) => return refusal.into_response(),
        };
        if self.inner.upstream.wire == Wire::H2c && !matches!(mode, Mode::Plain) {
            // An HTTP/2 upstream would need RFC 8441 extended CONNECT, which hyper's pooled
            // client does not send; refusing is honest where a half-open tunnel is not.
            return text_response(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "upstream {} speaks HTTP/2 with prior knowledge; the proxy forwards upgrades (WebSocket) only to HTTP/1.1 upstreams",
                    self.inner.upstream
                ),
            );
        }
        let client_addr = self
            .inner
            .proxy_protocol
            .then(|| client_address(request.headers()));
        // The caller's side of a tunnel must be claimed before the answer goes back to hyper.
        let caller_upgrade = match mode {
            Mode::Plain => None,
            Mode::Upgrade { .. } | Mode::ExtendedConnect { .. } => Some(on_upgrade(&mut request)),
        };
        let call = crate::metrics::UpstreamCall::start(&request);
        let upstream_request = match self.upstream_request(request, &mode) {
            Ok(upstream_request) => upstream_request,
            Err(refusal) => return refusal.into_response(),
        };
        let mut response = match self.send(upstream_request, &mode, client_addr).await {
            Ok(response) => {
                call.answered();
                response
            }
            Err(error) => return self.bad_gateway(&error, call),
        };

        let status = response.status();
        match (mode, caller_upgrade) {
            (Mode::Upgrade { .. }, Some(caller)) if status == StatusCode::SWITCHING_PROTOCOLS => {
                spawn_tunnel(caller, hyper::upgrade::on(&mut response));
                let (mut parts, _) = response.into_parts();
                // The 101 must still say what it switches to, so those fields survive the strip.
                let upgrade: Vec<HeaderValue> =
                    parts.headers.get_all(UPGRADE).iter().cloned().collect();
                strip_hop_by_hop(&mut parts.headers);
                for value in upgrade {
                    parts.headers.append(UPGRADE, value);
                }
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                Response::from_parts(parts, super::empty())
            }
            (Mode::ExtendedConnect { key }, Some(caller))
                if status == StatusCode::SWITCHING_PROTOCOLS =>
            {
                // RFC 6455 §4.1: the client must check the accept key; towards the upstream the
                // proxy is that client, so a wrong key means the upstream is not speaking WebSocket.
                let expected = derive_accept_key(key.as_bytes());
                let accepted = response
                    .headers()
                    .get(SEC_WEBSOCKET_ACCEPT)
                    .is_some_and(|accept| accept.as_bytes() == expected.as_bytes());
                if !accepted {
                    return text_response(
                        StatusCode::BAD_GATEWAY,
                        "upstream answered the WebSocket upgrade with a wrong Sec-WebSocket-Accept",
                    );
                }
                spawn_tunnel(caller, hyper::upgrade::on(&mut response));
                let (mut parts, _) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // RFC 8441 §5: the HTTP/2 answer is a 2xx without the HTTP/1.1 accept key.
                parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
                parts.status = StatusCode::OK;
                Response::from_parts(parts, super::empty())
            }
            (Mode::ExtendedConnect { .. }, _) if status.is_success() => {
                // A 2xx to an extended CONNECT tells the caller the tunnel is open, which it is
                // not when the upstream did not switch protocols.
                text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream answered the WebSocket upgrade with {status} instead of 101"),
                )
            }
            (_, _) if status == StatusCode::SWITCHING_PROTOCOLS => text_response(
                StatusCode::BAD_GATEWAY,
                "upstream switched protocols although no upgrade was requested",
            ),
            (_, _) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.version = Version::default();
                Response::from_parts(parts, body)
            }
        }
    }

    /// Rewrites the caller's request into the one sent to the upstream.
    fn upstream_request<B>(
        &self,
        request: Request<B>,
        mode: &Mode,
    ) -> Result<Request<UpstreamBody>, Refusal>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let caller_version = parts.version;

        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // The authority the public client asked for keys the pool and becomes HTTP/2's
        // `:authority`; the upstream's own address is only the fallback (the connector
        // dials the upstream whatever the URI says).
        let authority = headers_host(&parts.headers)
            .or_else(|| parts.uri.authority().cloned())
            .unwrap_or_else(|| self.inner.upstream.authority());
        let uri = Uri::builder()
            .scheme(self.inner.upstream.scheme())
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|error| {
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot forward this request target: {error}"),
                )
            })?;

        let headers = &mut parts.headers;
        // TE is hop-by-hop, but `TE: trailers` says the caller can take trailers, which the
        // upstream needs to know before it sends any (RFC 9110 §10.1.4).
        let accepts_trailers = header_has_token(headers, &TE, "trailers");
        strip_hop_by_hop(headers);
        headers.remove(PTTH_CLIENT_PORT);
        if accepts_trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        // An HTTP/2 caller names the host in `:authority` only; the upstream still needs it
        // as `Host` for virtual hosting, and the client must not substitute the upstream's.
        if !headers.contains_key(HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
            {
                headers.insert(HOST, host);
            }
        }
        if caller_version == Version::HTTP_2 {
            // RFC 9113 §8.2.3: HTTP/2 may split Cookie into several fields, which must be
            // joined again before the message is sent over HTTP/1.1.
            join_cookies(headers);
        }

        let body = match mode {
            Mode::Plain => body.map_err(Into::into).boxed_unsync(),
            Mode::Upgrade { protocols } => {
                for protocol in protocols {
                    headers.append(UPGRADE, protocol.clone());
                }
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                body.map_err(Into::into).boxed_unsync()
            }
            Mode::ExtendedConnect { key } => {
                // RFC 8441 §5 maps the extended CONNECT onto the RFC 6455 GET upgrade; the
                // CONNECT stream's data is the tunnel itself, not a request body.
                parts.method = Method::GET;
                headers.insert(UPGRADE, HeaderValue::from_static(WEBSOCKET_PROTOCOL));
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                let key = HeaderValue::from_str(key).map_err(|_| {
                    Refusal::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "generated an invalid Sec-WebSocket-Key",
                    )
                })?;
                headers.insert(SEC_WEBSOCKET_KEY, key);
                parts.extensions.remove::<Protocol>();
                Empty::new().map_err(|never| match never {}).boxed_unsync()
            }
        };

        parts.uri = uri;
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }

    /// Sends `request` over a pooled connection, or over a connection of its own that
    /// starts with a PROXY header naming `client` when the route asks for one. An upgrade
    /// to an `http://` or `unix:` upstream gets a connection of its own too (it leaves the
    /// pool as a tunnel anyway).
    async fn send(
        &self,
        request: Request<UpstreamBody>,
        mode: &Mode,
        client: Option<Option<SocketAddr>>,
    ) -> Result<Response<Body>, SendError> {
        let upgrade = !matches!(mode, Mode::Plain);
        let preamble = match (client, &self.inner.h1_pool) {
            (Some(client), _) => Some(ProxyHeader { client }),
            (None, Some(pool)) if !upgrade => {
                return match pool.send(request).await {
                    Ok(response) => Ok(boxed(response)),
                    Err(PoolError::Connect(error)) => Err(SendError::Connect(error)),
                    Err(PoolError::Exchange(error)) => Err(SendError::Exchange(error)),
                };
            }
            (None, Some(_)) => None,
            (None, None) => {
                let pooled = match (&self.inner.upgrade_client, upgrade) {
                    (Some((upgrade_client, _)), true) => upgrade_client,
                    _ => &self.inner.client,
                };
                return match pooled.request(request).await {
                    Ok(response) => Ok(boxed(response)),
                    Err(error) => Err(SendError::Pooled(error)),
                };
            }
        };
        let connector = match (&self.inner.upgrade_client, upgrade) {
            // A tunnel needs HTTP/1.1, so its dial offers nothing else.
            (Some((_, connector)), true) => connector,
            _ => &self.inner.connector,
        };
        let io = connector
            .connect(preamble)
            .await
            .map_err(SendError::Connect)?;
        match send_unpooled(io, request, self.inner.upstream.wire == Wire::H2c).await {
            Ok(response) => Ok(boxed(response)),
            Err(error) => Err(SendError::Exchange(error)),
        }
    }

    /// The `502` sent when the upstream cannot be reached or fails mid-exchange. The public
    /// body says only which of the two happened: the upstream's address and the error chain
    /// are internals, and go to the origin's log (`upstream failure`, warn).
    fn bad_gateway(&self, error: &SendError, call: crate::metrics::UpstreamCall) -> Response<Body> {
        let (connect, mut source): (bool, Option<&(dyn std::error::Error + 'static)>) = match error
        {
            SendError::Connect(error) => (true, Some(error)),
            SendError::Pooled(error) => (error.is_connect(), error.source()),
            SendError::Exchange(error) => (false, Some(error)),
        };
        let mut reason = if connect {
            format!("could not connect to upstream {}", self.inner.upstream)
        } else {
            format!("request to upstream {} failed", self.inner.upstream)
        };
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        // Counted, and logged at warn with the request it failed (`upstream failure`).
        call.failed(connect, &self.inner.upstream, &reason);
        text_response(
            StatusCode::BAD_GATEWAY,
            if connect {
                PUBLIC_UNREACHABLE
            } else {
                PUBLIC_FAILED
            },
        )
    }
}

/// `response` with its body boxed as the services answer.
fn boxed<B>(response: Response<B>) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    response.map(|body| body.map_err(Into::into).boxed())
}

/// The public 502 body when the upstream could not be reached.
const PUBLIC_UNREACHABLE: &str = "the origin could not reach its upstream service";
/// The public 502 body when the upstream failed a request it had taken.
const PUBLIC_FAILED: &str = "the origin's upstream service failed the request";

/// One exchange on a fresh connection: HTTP/2 when the upstream speaks it with prior
/// knowledge or TLS negotiated it, HTTP/1.1 (with upgrades) otherwise.
async fn send_unpooled(
    io: super::upstream::Io,
    mut request: Request<UpstreamBody>,
    h2c: bool,
) -> Result<Response<Incoming>, hyper::Error> {
    if h2c || io.negotiated_h2() {
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream HTTP/2 connection ended");
            }
        });
        return sender.send_request(request).await;
    }
    // HTTP/1.1 sends the origin form; the authority is in `Host`.
    if let Some(path) = request.uri().path_and_query().cloned() {
        *request.uri_mut() = Uri::from(path);
    }
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
        }
    });
    sender.send_request(request).await
}

/// The public client's address as the gateway saw it: its `X-Real-IP`, which it sets from
/// the peer (or its trusted proxies' view) and never passes on from a client, with the port
/// from [`PTTH_CLIENT_PORT`]. Both are believed because they arrive over the origin's own
/// authenticated connection to its gateway, which removes public `ptth-*` fields.
fn client_address(headers: &HeaderMap) -> Option<SocketAddr> {
    let ip: IpAddr = headers
        .get("x-real-ip")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // Port 0 when the gateway did not know the client's port (a client named by a trusted
    // proxy in front of it) or sent none (an older gateway).
    let port = headers
        .get(PTTH_CLIENT_PORT)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u16>().ok())
        .unwrap_or(0);
    Some(SocketAddr::new(ip, port))
}

/// The request's `Host`, when it is a valid authority.
fn headers_host(headers: &HeaderMap) -> Option<Authority> {
    Authority::try_from(headers.get(HOST)?.as_bytes()).ok()
}

/// Removes the fields that describe one connection rather than the message, including any
/// field the `Connection` header names (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none (HTTP/2 forbids them): one look over the names, whose
    // standard ones compare as tags, instead of six lookups that hash each name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Folds several `Cookie` fields into one, separated by `; `.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    // Joining valid field values with "; " keeps them valid, so this only fails if a value
    // was not; then the fields are left as they came.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, joined);
    }
}

/// Copies bytes between the caller's and the upstream's upgraded connections until both close.
fn spawn_tunnel(caller: OnTunnel, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let upstream = async { upstream.await.map_err(std::io::Error::other) };
        let (mut caller, upstream) = match tokio::try_join!(caller, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        let mut upstream = TokioIo::new(upstream);
        if let Err(error) = tokio::io::copy_bidirectional(&mut caller, &mut upstream).await {
            tracing::debug!(%error, "tunnel ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::{check_echo, connect_h2_websocket, serve, Server};
    use crate::service::Hello;
    use http::header::TRANSFER_ENCODING;
    use http_body::Frame;
    use http_body_util::{Full, StreamBody};
    use sha2::{Digest, Sha256};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    async fn proxy_to_hello() -> (Proxy, SocketAddr) {
        let upstream = serve(Hello, Server::Http1).await;
        let proxy = Proxy::new(&format!("http://{upstream}")).unwrap();
        (proxy, upstream)
    }

    async fn text(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn upstream_forms_are_checked_when_the_proxy_is_built() {
        assert!(matches!(
            Proxy::new("ftp://127.0.0.1:3000"),
            Err(ProxyError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            Proxy::new("/just/a/path"),
            Err(ProxyError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            Proxy::new("http://127.0.0.1:3000/prefix"),
            Err(ProxyError::HasPath { .. })
        ));
        let error = Proxy::new("ws://127.0.0.1:3000").unwrap_err();
        assert!(error.to_string().contains("must be http://"));
        let missing_ca = ProxyOptions {
            tls: UpstreamTls {
                ca: Some("/nonexistent/ca.pem".into()),
                ..UpstreamTls::default()
            },
            proxy_protocol: false,
        };
        let error = Proxy::with_options("https://127.0.0.1:3000", &missing_ca).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        let proxy = Proxy::new("http://127.0.0.1:3000/").unwrap();
        assert_eq!(proxy.upstream().authority().as_str(), "127.0.0.1:3000");
        for form in [
            "h2c://127.0.0.1:1",
            "https://localhost",
            "unix:/tmp/x.sock",
            "unix+h2c:/tmp/y.sock",
        ] {
            assert!(Proxy::new(form).is_ok(), "{form}");
        }
    }

    #[test]
    fn hop_by_hop_fields_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        headers.insert("x-private", HeaderValue::from_static("secret"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("via", HeaderValue::from_static("1.1 gateway"));
        headers.insert("forwarded", HeaderValue::from_static("for=127.0.0.1"));
        headers.insert(HOST, HeaderValue::from_static("app.example"));
        // The gateway's forwarding fields are end to end: proxy mode passes them on.
        for name in [
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-real-ip",
        ] {
            headers.insert(name, HeaderValue::from_static("v"));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "forwarded",
                "host",
                "via",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto",
                "x-real-ip"
            ]
        );
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append(COOKIE, HeaderValue::from_static("a=1"));
        headers.append(COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut headers);
        assert_eq!(
            headers.get_all(COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );
    }

    #[tokio::test]
    async fn get_index_keeps_host_and_gateway_headers() {
        let (proxy, _) = proxy_to_hello().await;
        let request = Request::get("/")
            .header(HOST, "app.example")
            .header("via", "1.1 ptth-gateway")
            .header("forwarded", "for=192.0.2.1")
            .header(CONNECTION, "x-hop")
            .header("x-hop", "dropped")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = proxy.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let page = text(response).await;
        assert!(page.contains("<title>ptth hello</title>"), "{page}");
        assert!(page.contains("<dd id=\"host\">app.example</dd>"), "{page}");
        assert!(
            page.contains("<dd id=\"via\">1.1 ptth-gateway</dd>"),
            "{page}"
        );
        assert!(
            page.contains("<dd id=\"forwarded\">for=192.0.2.1</dd>"),
            "{page}"
        );
    }

    #[tokio::test]
    async fn http2_authority_becomes_host() {
        let (proxy, _) = proxy_to_hello().await;
        let request = Request::get("https://h2.example/")
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let page = text(proxy.oneshot(request).await.unwrap()).await;
        assert!(page.contains("<dd id=\"host\">h2.example</dd>"), "{page}");
    }

    /// A request body the test holds open: frames go in through the sender, and the body ends
    /// only when the sender is dropped.
    fn held_body() -> (
        tokio::sync::mpsc::Sender<Frame<Bytes>>,
        impl http_body::Body<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let frame = receiver.recv().await?;
            Some((Ok(frame), receiver))
        });
        (sender, StreamBody::new(Box::pin(frames)))
    }

    /// The next data frame of `body`, within 10 s; `None` when it ends.
    async fn next_data(body: &mut Body) -> Option<Bytes> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("no frame within 10 s: the body is not streamed")?
                .expect("the body failed");
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }

    #[tokio::test]
    async fn post_echo_streams_five_mebibytes() {
        // Through the proxy to the upstream's /echo-body and back, in lockstep: the test sends
        // a 64 KiB chunk only after the previous one came back, with the request body still
        // open. A proxy that read the whole request body before forwarding it (or the whole
        // response before returning it) never gets past the first chunk.
        let (proxy, _) = proxy_to_hello().await;
        let chunk: Bytes = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
        let chunks = 80;
        let (sender, request_body) = held_body();
        let request = Request::post("/echo-body").body(request_body).unwrap();
        let response = tokio::spawn(proxy.oneshot(request));
        sender.send(Frame::data(chunk.clone())).await.unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("no answer while the request body is open")
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let (mut sent, mut received) = (Sha256::new(), Sha256::new());
        sent.update(&chunk);
        let (mut sent_len, mut received_len) = (chunk.len(), 0);
        for i in 1..=chunks {
            while received_len < sent_len {
                let data = next_data(&mut body)
                    .await
                    .unwrap_or_else(|| panic!("the echo ended after {received_len} bytes"));
                received_len += data.len();
                received.update(&data);
            }
            if i < chunks {
                sender.send(Frame::data(chunk.clone())).await.unwrap();
                sent.update(&chunk);
                sent_len += chunk.len();
            }
        }
        drop(sender);
        assert!(next_data(&mut body).await.is_none(), "more than was sent");
        assert_eq!(received_len, 80 * 64 * 1024);
        assert_eq!(received.finalize(), sent.finalize());
    }

    #[tokio::test]
    async fn sse_events_stream_through_the_proxy() {
        // The second event comes a minute after the first: seeing the first one within
        // seconds shows the proxy does not wait for the upstream's body to end.
        let (proxy, _) = proxy_to_hello().await;
        let request = Request::get("/sse?n=2&interval_ms=60000")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), proxy.oneshot(request))
            .await
            .expect("no answer within 10 s")
            .unwrap();
        assert_eq!(
            response.headers()[http::header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut body = response.into_body();
        assert_eq!(
            next_data(&mut body).await.expect("a first event"),
            "data: event 0\n\n"
        );
    }

    #[tokio::test]
    async fn trailers_pass_through_echo_body() {
        let (proxy, _) = proxy_to_hello().await;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"first "))),
            Ok(Frame::data(Bytes::from_static(b"second"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        // Over HTTP/1.1, hyper only sends trailers that `Trailer` announced, and a server only
        // sends them to a caller whose `TE` says it takes them.
        let request = Request::post("/echo-body")
            .header(TE, "trailers")
            .header(http::header::TRAILER, "x-checksum, grpc-status")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let response = proxy.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), "first second");
    }

    #[tokio::test]
    async fn trailers_endpoint_through_proxy() {
        let (proxy, _) = proxy_to_hello().await;
        let request = Request::get("/trailers")
            .header(TE, "trailers")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let collected = proxy
            .oneshot(request)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "hello trailers");
    }

    #[tokio::test]
    async fn websocket_through_proxy_over_http1() {
        let (proxy, _) = proxy_to_hello().await;
        let front = serve(proxy, Server::Http1).await;
        let (socket, response) = tokio_tungstenite::connect_async(format!("ws://{front}/ws"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        check_echo(socket).await;
    }

    #[tokio::test]
    async fn websocket_through_proxy_from_h2_extended_connect() {
        let (proxy, _) = proxy_to_hello().await;
        let front = serve(proxy, Server::Http2).await;
        check_echo(connect_h2_websocket(front).await).await;
    }

    #[tokio::test]
    async fn plain_connect_is_refused() {
        let (proxy, _) = proxy_to_hello().await;
        let request = Request::connect("example.test:443")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = proxy.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
    }

    #[tokio::test]
    async fn unreachable_upstream_is_502() {
        // Binding and dropping a listener yields a loopback port that refuses connections.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let proxy = Proxy::new(&format!("http://{addr}")).unwrap();
        let request = Request::get("/").body(Full::new(Bytes::new())).unwrap();
        let response = proxy.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = text(response).await;
        assert_eq!(body.trim_end(), PUBLIC_UNREACHABLE);
        assert!(
            !body.contains(&addr.port().to_string()),
            "the public body names no upstream address: {body}"
        );
    }
}
