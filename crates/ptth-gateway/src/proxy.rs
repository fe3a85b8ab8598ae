//! The public side: every public request is routed to an origin connection and streamed back.
//!
//! Standard reverse-proxy behaviour (RFC 9110 §7.6): hop-by-hop fields are removed in both
//! directions, `Via` is added, and the forwarding fields (`X-Forwarded-*`, `X-Real-IP`,
//! RFC 7239 `Forwarded`) say what the gateway saw of the client ([`crate::forwarding`]). Errors say who
//! caused them: 400 for a request the gateway cannot route, 502 when the origin failed it,
//! 503 (with `Retry-After`) when no origin is there or the queue is full, 504 on timeout.

use crate::forwarding::{self, ForwardingFields, TrustedProxies};
use crate::message::{error, unavailable, Body, BoxError};
use crate::registry::{Registry, Reservation, RouteError};
use crate::sender::{Outbound, SendError, UpgradeAnswer};
use crate::websocket::{PublicForm, WebSocket};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use ptth_core::{Arrival, CloseReason, RequestTarget};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Settings of the public proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The pseudonym this gateway writes into `Via`.
    pub via_name: String,
    /// How long an origin may take to send response headers.
    pub request_timeout: Duration,
    /// Peers whose forwarding fields are kept and appended to (empty: nobody's).
    pub trusted_proxies: TrustedProxies,
    /// Which forwarding fields origins get; the others are removed (`--forwarding-fields`).
    pub forwarding_fields: ForwardingFields,
    /// Whether a cleartext request may reach an `https://` scope when no `http://` scope
    /// serves it (`--cleartext-https-fallback`).
    pub cleartext_https_fallback: bool,
    /// How much of a request body is kept while the request is in flight, so a request
    /// the origin refused unprocessed can be replayed (`--retry-body-limit`; 0: none is).
    pub retry_body_limit: usize,
}

/// Routes public requests to origins.
#[derive(Debug)]
pub struct Proxy {
    registry: Arc<Registry>,
    config: ProxyConfig,
    /// This gateway's `Via` entry for each HTTP version a message can arrive in, built once.
    via: ViaValues,
    /// The CONNECT proxy to origins' TCP services, when `[[proxy-user]]`s are configured.
    connect: Option<Arc<crate::public_connect::PublicConnect>>,
}

/// The origin connection that answered a request, in its response's extensions (the
/// access log takes it out again).
#[derive(Debug, Clone)]
pub(crate) struct Routed(pub(crate) Arc<crate::registry::OriginConn>);

/// Information about the public connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the public connection is TLS.
    pub tls: bool,
    /// The local port of the listener it arrived on (routing accepts it for default-port
    /// origins).
    pub local_port: u16,
}

impl Proxy {
    /// A proxy over `registry`.
    pub fn new(registry: Arc<Registry>, config: ProxyConfig) -> Arc<Self> {
        Self::with_connect(registry, config, None)
    }

    /// A proxy over `registry` that also serves public CONNECT through `connect`.
    pub(crate) fn with_connect(
        registry: Arc<Registry>,
        config: ProxyConfig,
        connect: Option<Arc<crate::public_connect::PublicConnect>>,
    ) -> Arc<Self> {
        let via = ViaValues::new(&config.via_name);
        Arc::new(Self {
            registry,
            config,
            via,
            connect,
        })
    }

    /// Whether public CONNECT and connect-tcp reach origins' TCP services here.
    pub(crate) fn serves_connect(&self) -> bool {
        self.connect.is_some()
    }

    /// The CONNECT proxy, when `[[proxy-user]]`s turned it on.
    pub(crate) fn connect(&self) -> Option<&Arc<crate::public_connect::PublicConnect>> {
        self.connect.as_ref()
    }

    /// This gateway's metrics.
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.registry.metrics
    }

    /// Handles one public request, whatever listener it came from. Never fails: every error
    /// becomes a response.
    pub async fn handle<B>(&self, mut req: Request<B>, client: ClientInfo) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // CONNECT host:port and connect-tcp reach origins' TCP services when proxy users
        // are configured; otherwise they are routed below like any request, as before.
        if let Some(connect) = &self.connect {
            if let Some(form) = crate::public_connect::form(&req) {
                return connect.handle(req, form, client.addr).await;
            }
        }
        // An HTTP/1.1 Upgrade, or an HTTP/2 or HTTP/3 extended CONNECT, for a WebSocket.
        let (websocket, public_upgrade) = match crate::websocket::public_request(&mut req) {
            Some((ws, tunnel)) => (Some(ws), Some(tunnel)),
            None => (None, None),
        };
        let (mut parts, body) = req.into_parts();
        let arrival = Arrival {
            secure: client.tls,
            listener_port: Some(client.local_port),
            https_fallback: self.config.cleartext_https_fallback,
        };
        let target = match RequestTarget::from_parts(&parts) {
            Ok(t) => t.arrived(arrival),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("cannot route: {e}")),
        };
        if is_reserved_path(target.path()) {
            // The authorisation exchange (draft-thomson-ptth-potato §5.2, "a request to a
            // prearranged resource on the origin") belongs to the gateway's setup of a
            // connection; a stranger asking for it would otherwise be handed the origin's
            // credential.
            return error(StatusCode::NOT_FOUND, RESERVED_REASON);
        }
        let received_version = parts.version;
        // Read before hop-by-hop stripping, which may remove a `Host` named in `Connection`;
        // not at all when no field the gateway sends carries it.
        let authority = if self.config.forwarding_fields == ForwardingFields::None {
            String::new()
        } else {
            forwarding::requested_authority(&parts.uri, &parts.headers, &target)
        };
        strip_hop_by_hop(&mut parts.headers);
        // An origin must never read a gateway-only field from a stranger.
        strip_ptth_fields(&mut parts.headers);
        self.via.append(&mut parts.headers, received_version);
        forwarding::set_chosen_forwarding_fields(
            &mut parts.headers,
            &forwarding::Hop {
                peer: client.addr.ip(),
                peer_port: client.addr.port(),
                tls: client.tls,
                authority: &authority,
            },
            &self.config.trusted_proxies,
            self.config.forwarding_fields,
        );
        // A safe request without a body can be sent again if its connection dies before
        // answering (RFC 9110 §9.2.2: safe methods are idempotent, so "the request can be
        // repeated automatically if a communication failure occurs before the client is able
        // to read the server's response"). Its head is kept for that; nothing else is.
        let bodiless = body.is_end_stream() || body.size_hint().exact() == Some(0);
        let mut replay = websocket.is_none() && is_safe(&parts.method) && bodiless;
        let body = body.map_err(Into::into).boxed_unsync();
        // Any request the origin provably did not process may be sent once more (RFC 9113
        // §6.8, §8.7; RFC 9114 §4.1.1): its head is kept, and the first
        // `--retry-body-limit` octets of its body ([`crate::replay`]).
        let (mut refused_replay, body) = if websocket.is_some() || self.config.retry_body_limit == 0
        {
            (None, body)
        } else if bodiless {
            (Some(None), body)
        } else {
            let (copy, first) = crate::replay::Replayable::new(body, self.config.retry_body_limit);
            (Some(Some(copy)), crate::replay::boxed(first))
        };
        // One copy of the head serves both: a request is sent again at most once, and
        // whichever retry happens first takes the other's chance away.
        let mut head = (replay || refused_replay.is_some()).then(|| Replay::of(&parts));
        let mut request = Request::from_parts(parts, body);
        // The sender of whichever connection is picked shapes the request for its HTTP
        // version (target form, WebSocket handshake), again if a retry picks another.
        let outbound = Outbound {
            target: &target,
            websocket: websocket.as_ref(),
        };

        let mut avoid = None;
        // Why the first connection failed a request now being retried: the answer if no
        // other connection takes it.
        let mut retrying: Option<String> = None;
        let (reservation, response) = loop {
            let reservation = match self.registry.acquire(&target, avoid).await {
                Ok(r) => r,
                Err(RouteError::NoOrigin) if retrying.is_some() => {
                    let why = retrying.unwrap_or_default();
                    return crate::message::bad_gateway("the origin failed the request", &why);
                }
                Err(RouteError::NoOrigin) if avoid.is_some() => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "the origin connection closed before the request could be sent",
                    )
                }
                Err(RouteError::NoOrigin) => {
                    return unavailable(&crate::message::no_origin_reason(target.host()), 5)
                }
                Err(RouteError::QueueFull) => {
                    return unavailable(
                        "every origin connection is busy and the queue is full (--queue-limit)",
                        1,
                    )
                }
                Err(RouteError::HostQueueFull) => {
                    return unavailable(
                        "every origin connection for this host is busy and the host's share of the queue is full (--queue-limit-per-host)",
                        1,
                    )
                }
                Err(RouteError::QueueTimeout) => {
                    return unavailable("every origin connection stayed busy for the whole wait", 1)
                }
            };
            let conn = reservation.conn();
            if websocket.is_some() {
                if let Err(why) = conn.sender.carries_websocket() {
                    return error(StatusCode::BAD_GATEWAY, why);
                }
            }
            let sent = {
                // A request handed to a connection in the instant it dies may never be
                // answered by the HTTP stack; the registry's "gone" signal fails it at once
                // instead of after the whole request timeout.
                let send = tokio::time::timeout(
                    self.config.request_timeout,
                    conn.sender.forward(request, &outbound),
                );
                tokio::pin!(send);
                tokio::select! {
                    biased;
                    r = &mut send => r,
                    () = conn.gone() => {
                        // The connection ended. An answer already on its way through the
                        // HTTP stack's tasks may still land: give it a moment before calling
                        // it lost.
                        match tokio::time::timeout(Duration::from_secs(1), &mut send).await {
                            Ok(r) => r,
                            Err(_) => {
                                tracing::warn!(conn = conn.id, "origin connection closed before answering");
                                Ok(Err(SendError::Failed(CLOSED_BEFORE_ANSWER.into())))
                            }
                        }
                    }
                }
            };
            let id = conn.id;
            match sent {
                Err(_) => {
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the origin did not answer in time",
                    )
                }
                Ok(Ok(resp)) => {
                    // Answered: the request will not be sent again, so its copy goes.
                    if let Some(Some(copy)) = &refused_replay {
                        copy.release();
                    }
                    break (reservation, resp);
                }
                Ok(Err(SendError::NotSent(req, e))) => {
                    tracing::debug!(conn = id, error = %e, "connection refused the request; retrying on another");
                    request = *req;
                    avoid = Some(id);
                    self.metrics().retried("not_sent");
                }
                Ok(Err(SendError::Refused(e))) => {
                    // With its causes: hyper's own text is only "http2 error".
                    let why = crate::sender::error_chain(&*e);
                    // Once: a kept head, and a body that can start over (every octet read
                    // of it is kept).
                    let again = match (refused_replay.take(), head.take()) {
                        (Some(None), Some(head)) => Some(head.request()),
                        (Some(Some(copy)), Some(head)) => copy
                            .retry()
                            .map(|body| head.request_with(crate::replay::boxed(body))),
                        _ => None,
                    };
                    let Some(again) = again else {
                        tracing::warn!(conn = id, error = %why, "origin refused the request unprocessed, and it cannot be sent again (sent once already, or its body is over --retry-body-limit)");
                        return crate::message::bad_gateway("the origin failed the request", &why);
                    };
                    tracing::info!(conn = id, error = %why, "origin refused the request unprocessed; sending it again on another connection");
                    self.metrics().retried("refused");
                    // The safe-request retry is the same one chance.
                    replay = false;
                    request = again;
                    avoid = Some(id);
                    retrying = Some(why);
                }
                Ok(Err(SendError::Failed(e))) => {
                    // The detail for the log; the public body stays generic.
                    let why = e.to_string();
                    // Once, and only when the connection itself died: an origin that
                    // answered the stream with an error on a live connection meant it.
                    let again = if std::mem::take(&mut replay) && connection_died(conn).await {
                        head.take()
                    } else {
                        None
                    };
                    let Some(head) = again else {
                        // The whole cause chain: hyper's own text ("connection error") does
                        // not say what the connection met.
                        tracing::warn!(conn = id, error = %crate::sender::error_chain(e.as_ref()), "origin failed the request");
                        return crate::message::bad_gateway("the origin failed the request", &why);
                    };
                    tracing::info!(conn = id, error = %e, method = %head.method, "origin connection died before answering a safe request; retrying it once on another connection");
                    refused_replay = None;
                    self.registry.count_retry();
                    request = head.request();
                    avoid = Some(id);
                    retrying = Some(why);
                }
            }
        };
        self.finish(reservation, response, public_upgrade, websocket)
    }

    fn finish(
        &self,
        reservation: Reservation,
        mut response: Response<Body>,
        public_upgrade: Option<crate::websocket::PublicTunnel>,
        websocket: Option<WebSocket>,
    ) -> Response<Body> {
        let conn = reservation.conn().clone();
        if let Some(ws) = &websocket {
            let accepted = match conn.sender.accepted_upgrade(&response, ws) {
                UpgradeAnswer::Accepted(accepted) => accepted,
                UpgradeAnswer::Invalid {
                    reason,
                    consumes_connection,
                } => {
                    if consumes_connection {
                        conn.close(CloseReason::Upgraded);
                    }
                    tracing::warn!(conn = conn.id, reason, "origin's WebSocket answer refused");
                    return error(StatusCode::BAD_GATEWAY, reason);
                }
                // A 2xx to a public extended CONNECT opens the public tunnel (RFC 8441 §5):
                // only an accepted origin tunnel may be answered so.
                UpgradeAnswer::Refused
                    if ws.public == PublicForm::ExtendedConnect
                        && response.status().is_success() =>
                {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "the origin answered the WebSocket handshake with {} without opening a WebSocket",
                            response.status()
                        ),
                    );
                }
                UpgradeAnswer::Refused => return self.forward_answer(reservation, response),
            };
            let origin_tunnel = conn.sender.origin_tunnel(&mut response);
            if accepted.consumes_connection {
                // The connection belongs to the WebSocket now: no request is routed to it.
                conn.close(CloseReason::Upgraded);
            }
            if let Some(public) = public_upgrade {
                tokio::spawn(async move {
                    // The origin stream (HTTP/2, HTTP/3) stays counted as in use until the
                    // tunnel ends.
                    let _hold = reservation;
                    crate::websocket::open_and_bridge(public, origin_tunnel).await;
                });
            }
            let mut out = Response::new(crate::message::empty());
            let h = out.headers_mut();
            for (k, v) in response.headers() {
                if !is_hop_by_hop(k)
                    && k != header::SEC_WEBSOCKET_ACCEPT
                    && k != header::CONTENT_LENGTH
                    && !is_ptth_field(k)
                {
                    h.append(k.clone(), v.clone());
                }
            }
            match ws.public {
                PublicForm::Upgrade => {
                    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    let h = out.headers_mut();
                    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    if let Some(a) = accepted.accept {
                        h.insert(header::SEC_WEBSOCKET_ACCEPT, a);
                    }
                }
                // RFC 8441 §5, RFC 9220 §3: a 2xx opens the stream; no accept value.
                PublicForm::ExtendedConnect => *out.status_mut() = StatusCode::OK,
            }
            out.extensions_mut().insert(Routed(conn));
            return out;
        }
        self.forward_answer(reservation, response)
    }

    /// Forwards an origin's answer as it is (less hop-by-hop and gateway fields), its body
    /// holding the connection's reservation until it ends.
    fn forward_answer(&self, reservation: Reservation, response: Response<Body>) -> Response<Body> {
        let (mut parts, body) = response.into_parts();
        parts.extensions.insert(Routed(reservation.conn().clone()));
        strip_hop_by_hop(&mut parts.headers);
        strip_ptth_fields(&mut parts.headers);
        self.via.append(&mut parts.headers, parts.version);
        if parts.version > Version::HTTP_2 {
            // The public side writes its own version; hyper's HTTP/1.1 server refuses to
            // serialise a head labelled with a later one (an HTTP/3 origin's answer).
            parts.version = Version::HTTP_11;
        }
        let body = Guarded {
            inner: body,
            reservation: Some(reservation),
        };
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// The 502 reason when a connection closed under a request and nothing came back.
const CLOSED_BEFORE_ANSWER: &str = "the origin connection closed before it answered";

/// How long a request that failed waits for its connection to be seen closed before the
/// failure is taken as the origin's answer rather than the connection's death.
const DEATH_NOTICE: Duration = Duration::from_millis(500);

/// Whether a request's method is safe, so the gateway may send it twice: GET, HEAD and
/// OPTIONS (RFC 9110 §9.2.1; TRACE is safe too, but the gateway never retries it).
fn is_safe(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// Whether the connection a request failed on is closed (now, or within [`DEATH_NOTICE`]:
/// its driver ends a moment after the request hears of it).
async fn connection_died(conn: &crate::registry::OriginConn) -> bool {
    tokio::time::timeout(DEATH_NOTICE, conn.gone())
        .await
        .is_ok()
}

/// The head of a request, kept to send it again on another connection.
///
/// A copy is taken for every request that could be retried and is almost never used, so it
/// is kept as plain bytes: every field's name and value copied into one buffer, and one
/// entry per field saying where they end. Cloning the `HeaderMap` instead cost an
/// allocation for its index and one for its entries, and a reference count on every value
/// (a `Bytes` made from an owned buffer allocates its shared count on its first clone),
/// each given back on drop. The map is rebuilt only for a retry. One copy serves both
/// retries (see `handle`); the figures are in `docs/performance.md`, finding 7.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    /// Each field's name then value, back to back.
    bytes: Vec<u8>,
    /// Per field: where its name ends and its value ends in `bytes`, and whether the value
    /// is sensitive (never indexed by HPACK or QPACK).
    fields: Vec<(u32, u32, bool)>,
}

impl Replay {
    fn of(parts: &http::request::Parts) -> Self {
        let h = &parts.headers;
        let size: usize = h
            .iter()
            .map(|(k, v)| k.as_str().len() + v.as_bytes().len())
            .sum();
        let mut bytes = Vec::with_capacity(size);
        let mut fields = Vec::with_capacity(h.len());
        for (k, v) in h {
            bytes.extend_from_slice(k.as_str().as_bytes());
            let name_end = bytes.len() as u32;
            bytes.extend_from_slice(v.as_bytes());
            fields.push((name_end, bytes.len() as u32, v.is_sensitive()));
        }
        Self {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            bytes,
            fields,
        }
    }

    /// The request again, with an empty body; the sender shapes it for its connection.
    fn request(self) -> Request<Body> {
        self.request_with(crate::message::empty())
    }

    /// The request again, with `body`.
    fn request_with(self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        // In the map's own order, so every field's values keep theirs. Every name and
        // value was valid when copied, so neither parse fails.
        let headers = req.headers_mut();
        headers.reserve(self.fields.len());
        let mut start = 0usize;
        for &(name_end, value_end, sensitive) in &self.fields {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let name = HeaderName::from_bytes(self.bytes.get(start..name_end).unwrap_or_default());
            let value =
                HeaderValue::from_bytes(self.bytes.get(name_end..value_end).unwrap_or_default());
            if let (Ok(name), Ok(mut value)) = (name, value) {
                value.set_sensitive(sensitive);
                headers.append(name, value);
            }
            start = value_end;
        }
        req
    }
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// RFC 9110 §7.6.1: remove the fields named in `Connection` and the hop-by-hop fields. `TE:
/// trailers` survives (gRPC needs it end to end).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Every message passes here twice and most carry no hop-by-hop field (`Connection`
    // among them, so no field is named either): one look at the names present is cheaper
    // than eight removals by name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    for n in named {
        if n != header::TE {
            headers.remove(n);
        }
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        headers.remove(n);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The path prefix the gateway keeps for itself: the authorisation resource
/// ([`ptth_auth::AUTHORIZE_PATH`]) lives under it. Public requests for it are answered by the
/// gateway and never forwarded.
pub const RESERVED_PREFIX: &str = "/.well-known/ptth";

/// The body of the 404 a public request for [`RESERVED_PREFIX`] gets.
pub const RESERVED_REASON: &str =
    "/.well-known/ptth/ is reserved by the gateway for its setup exchange with origins; it is never forwarded";

/// Whether a normalised request path ([`RequestTarget::path`]: unreserved percent-encodings
/// already decoded, dot segments already refused) is under [`RESERVED_PREFIX`]. Compared
/// as conservatively as any upstream might read it: ASCII case-insensitively, with `%2F` and
/// `%5C` as `/`, and runs of `/` as one. The query is not part of the path.
fn is_reserved_path(path: &str) -> bool {
    // Every request passes here: most paths cannot be reserved, and saying so allocates
    // nothing (`well-known` is unreserved characters, so the normalised path has it plain).
    if !path
        .as_bytes()
        .windows(b"well-known".len())
        .any(|w| w.eq_ignore_ascii_case(b"well-known"))
    {
        return false;
    }
    let lowered = path
        .to_ascii_lowercase()
        .replace("%2f", "/")
        .replace("%5c", "/");
    let mut view = String::with_capacity(lowered.len());
    for c in lowered.chars() {
        if !(c == '/' && view.ends_with('/')) {
            view.push(c);
        }
    }
    match view.strip_prefix(RESERVED_PREFIX) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a field is one of the gateway's own `ptth-*` fields (the authorisation answer's
/// `ptth-authorization`, `ptth-origins`, `ptth-path-prefix`, the challenge fields): they
/// belong to the exchange between gateway and origin and never cross to a public client,
/// in either direction.
fn is_ptth_field(name: &HeaderName) -> bool {
    // Field names in `http` are always lowercase.
    name.as_str().starts_with("ptth-")
}

/// Removes every `ptth-*` field (headers or trailers).
pub fn strip_ptth_fields(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_ptth_field(k))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// This gateway's `Via` entries (RFC 9110 §7.6.3: the received protocol, then the
/// pseudonym), one per version a message can arrive in. `None` where the pseudonym cannot be
/// a field value: nothing is appended then.
#[derive(Debug)]
struct ViaValues([Option<HeaderValue>; 4]);

impl ViaValues {
    fn new(name: &str) -> Self {
        Self(["1.0", "1.1", "2", "3"].map(|v| HeaderValue::from_str(&format!("{v} {name}")).ok()))
    }

    fn append(&self, headers: &mut HeaderMap, version: Version) {
        let i = match version {
            Version::HTTP_10 => 0,
            Version::HTTP_2 => 2,
            Version::HTTP_3 => 3,
            _ => 1,
        };
        if let Some(Some(value)) = self.0.get(i) {
            headers.append(header::VIA, value.clone());
        }
    }
}

/// A response body that holds its connection's reservation until the body ends.
struct Guarded {
    inner: Body,
    reservation: Option<Reservation>,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut r {
            if let Some(trailers) = frame.trailers_mut() {
                strip_ptth_fields(trailers);
            }
        }
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                self.reservation = None;
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Guarded {
    /// A public client that leaves mid-response drops this body. The connection's sender
    /// says what becomes of the rest ([`crate::sender::Sender::drain_abandoned`]); a drain
    /// holds the reservation until it ends.
    fn drop(&mut self) {
        let Some(reservation) = self.reservation.take() else {
            return;
        };
        let Some(drain) = reservation.conn().sender.drain_abandoned(&mut self.inner) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if !drain.await {
                tracing::debug!(
                    conn = reservation.conn().id,
                    "abandoned response too long to drain; the origin connection closes"
                );
            }
            drop(reservation);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_head_gives_back_the_same_request_head() {
        let mut req = Request::get("https://app.example/a?b=c")
            .version(Version::HTTP_2)
            .header("host", "app.example")
            .header("x-custom-field", "one")
            .header("accept", "text/html")
            .header("x-custom-field", "two")
            .header("x-empty", "")
            .header(
                "x-obs-text",
                HeaderValue::from_bytes(b"caf\xe9\tx").unwrap(),
            )
            .body(())
            .unwrap();
        let mut secret = HeaderValue::from_static("Bearer s3cret");
        secret.set_sensitive(true);
        req.headers_mut().insert(header::AUTHORIZATION, secret);
        let (parts, ()) = req.into_parts();
        let again = Replay::of(&parts).request();
        assert_eq!(again.method(), parts.method);
        assert_eq!(again.uri(), &parts.uri);
        assert_eq!(again.version(), parts.version);
        assert_eq!(again.headers(), &parts.headers);
        let fields = |h: &HeaderMap| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        // The same order, values and sensitivity, field by field.
        assert_eq!(fields(again.headers()), fields(&parts.headers));
        assert!(again.headers()[header::AUTHORIZATION].is_sensitive());
        assert_eq!(
            Replay::of(&http::Request::new(()).into_parts().0)
                .request()
                .headers()
                .len(),
            0
        );
    }

    #[test]
    fn strips_hop_by_hop_and_named_fields_but_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret, te"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn the_reserved_prefix_is_caught_however_it_is_spelled() {
        assert!(ptth_auth::AUTHORIZE_PATH.starts_with(&format!("{RESERVED_PREFIX}/")));
        let path = |uri: &str| {
            let (parts, ()) = Request::get(uri)
                .header("host", "app.localhost")
                .body(())
                .unwrap()
                .into_parts();
            RequestTarget::from_parts(&parts).unwrap().path().to_owned()
        };
        for reserved in [
            "/.well-known/ptth/authorize",
            "/.well-known/ptth/authorize?x=1",
            "/.well-known/ptth/authorize/",
            "/.well-known/ptth/",
            "/.well-known/ptth",
            "/.well-known/ptth/other",
            "/.well-known/%70tth/authorize",
            "/%2Ewell-known/ptth/authorize",
            "/.WELL-KNOWN/PTTH/AUTHORIZE",
            "/.well-known%2Fptth%2Fauthorize",
            "/.well-known%2fptth/authorize",
            "/.well-known%5Cptth/authorize",
            "//.well-known//ptth/authorize",
            "http://app.localhost/.well-known/ptth/authorize",
        ] {
            assert!(is_reserved_path(&path(reserved)), "{reserved}");
        }
        for public in [
            "/",
            "/.well-known/ptthx",
            "/.well-known/ptth-other/x",
            "/.well-known/acme-challenge/x",
            "/app/.well-known/ptth/authorize",
            "/.well-known/ptth%3F/x",
        ] {
            assert!(!is_reserved_path(&path(public)), "{public}");
        }
    }

    #[test]
    fn ptth_fields_are_stripped_from_heads() {
        let mut h = HeaderMap::new();
        h.insert("ptth-authorization", HeaderValue::from_static("Bearer t"));
        h.insert("PTTH-Origins", HeaderValue::from_static("https://a"));
        h.append("ptth-path-prefix", HeaderValue::from_static("/"));
        h.append("ptth-path-prefix", HeaderValue::from_static("/x"));
        h.insert("x-ptth-kept", HeaderValue::from_static("1"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_ptth_fields(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["content-type", "x-ptth-kept"]);
    }

    /// A body that yields the given frames, for checking what `Guarded` lets through.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn ptth_fields_are_stripped_from_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("ptth-authorization", HeaderValue::from_static("Bearer t"));
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = Frames(
            [
                Frame::data(Bytes::from_static(b"hi")),
                Frame::trailers(trailers),
            ]
            .into(),
        );
        let body = Guarded {
            inner: frames.boxed_unsync(),
            reservation: None,
        };
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert!(trailers.get("ptth-authorization").is_none());
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "hi");
    }

    /// Retries over real reversed HTTP/1.1 connections on in-memory pipes: the gateway's
    /// own client role on one end, the test playing the origin on the other.
    mod retries {
        use super::*;
        use crate::registry::{Admission, OriginConn, QueueLimits};
        use http_body_util::{Empty, Full};
        use ptth_core::{HttpVersion, Mechanism, Scope, SerializedOrigin};
        use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

        /// Registers a reversed HTTP/1.1 connection for `https://app.example` and returns
        /// it, the origin's end of the pipe, and its driver (not watched: the caller decides
        /// whether the registry hears of its end).
        async fn connection(
            registry: &Arc<Registry>,
        ) -> (Arc<OriginConn>, DuplexStream, tokio::task::JoinHandle<()>) {
            connection_over(registry, HttpVersion::Http1).await
        }

        async fn connection_over(
            registry: &Arc<Registry>,
            version: HttpVersion,
        ) -> (Arc<OriginConn>, DuplexStream, tokio::task::JoinHandle<()>) {
            let (near, far) = tokio::io::duplex(64 * 1024);
            let (sender, task) = crate::sender::start_client(near, version).await.unwrap();
            let mechanism = match version {
                HttpVersion::Http2 => Mechanism::Rh2,
                _ => Mechanism::Rh1,
            };
            let origin: SerializedOrigin = "https://app.example".parse().unwrap();
            let conn = Arc::new(OriginConn::new(
                mechanism,
                vec![Scope::from_origin(&origin, "/").unwrap()],
                Admission {
                    identity: "test".into(),
                    grant_names: vec!["test".into()],
                    origins: vec![origin],
                    path_prefixes: vec!["/".into()],
                    certificate_names: Vec::new(),
                    proven: ptth_auth::Proven::default(),
                },
                "127.0.0.1:1".parse().unwrap(),
                sender,
                task.abort_handle(),
            ));
            registry.add(conn.clone());
            (conn, far, task)
        }

        /// As the gateway's admission does: the connection leaves the registry when its
        /// driver ends.
        fn watch(registry: &Arc<Registry>, id: u64, task: tokio::task::JoinHandle<()>) {
            let registry = registry.clone();
            tokio::spawn(async move {
                let _ = task.await;
                registry.remove(id);
            });
        }

        fn setup() -> (Arc<Registry>, Arc<Proxy>) {
            setup_with(64 * 1024)
        }

        fn setup_with(retry_body_limit: usize) -> (Arc<Registry>, Arc<Proxy>) {
            let registry = Registry::new(QueueLimits {
                max_waiting: 8,
                max_wait: Duration::from_secs(5),
                max_waiting_per_host: 8,
            });
            let proxy = Proxy::new(
                registry.clone(),
                ProxyConfig {
                    via_name: "test".into(),
                    request_timeout: Duration::from_secs(10),
                    trusted_proxies: TrustedProxies::default(),
                    forwarding_fields: ForwardingFields::default(),
                    cleartext_https_fallback: false,
                    retry_body_limit,
                },
            );
            (registry, proxy)
        }

        const CLIENT: ClientInfo = ClientInfo {
            addr: SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9),
            tls: true,
            local_port: 443,
        };

        /// Reads one request head from the origin's end (what the gateway sent).
        async fn head(far: &mut DuplexStream) -> String {
            let mut seen = Vec::new();
            let mut byte = [0u8; 1];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = tokio::time::timeout(Duration::from_secs(10), far.read(&mut byte))
                    .await
                    .expect("the gateway sends a request")
                    .unwrap();
                assert_eq!(n, 1, "the gateway closed mid-head: {seen:?}");
                seen.push(byte[0]);
            }
            String::from_utf8_lossy(&seen).into_owned()
        }

        /// Whether anything arrives at the origin's end within a moment.
        async fn anything(far: &mut DuplexStream) -> bool {
            let mut byte = [0u8; 1];
            matches!(
                tokio::time::timeout(Duration::from_millis(500), far.read(&mut byte)).await,
                Ok(Ok(1))
            )
        }

        async fn respond_ok(far: &mut DuplexStream) {
            far.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        }

        async fn run(proxy: &Proxy, req: Request<Body>) -> (StatusCode, String) {
            let res = tokio::time::timeout(Duration::from_secs(20), proxy.handle(req, CLIENT))
                .await
                .expect("the proxy answers");
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }

        fn get() -> Request<Body> {
            Request::get("https://app.example/x")
                .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync())
                .unwrap()
        }

        fn post() -> Request<Body> {
            Request::post("https://app.example/x")
                .body(
                    Full::new(Bytes::from_static(b"hello"))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .unwrap()
        }

        #[tokio::test]
        async fn a_get_whose_connection_dies_before_answering_is_answered_by_another() {
            let (registry, proxy) = setup();
            let (a, mut far_a, task_a) = connection(&registry).await;
            watch(&registry, a.id, task_a);
            let (b, mut far_b, task_b) = connection(&registry).await;
            watch(&registry, b.id, task_b);
            let origin = tokio::spawn(async move {
                // The first connection (the router's pick on a tie) takes the request and
                // dies before any answer.
                let seen_a = head(&mut far_a).await;
                drop(far_a);
                let seen_b = head(&mut far_b).await;
                respond_ok(&mut far_b).await;
                (seen_a, seen_b, far_b)
            });
            let (status, body) = run(&proxy, get()).await;
            let (seen_a, seen_b, _far_b) = origin.await.unwrap();
            assert!(seen_a.starts_with("GET /x HTTP/1.1"), "{seen_a}");
            assert!(seen_b.starts_with("GET /x HTTP/1.1"), "{seen_b}");
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
            assert_eq!(registry.retries(), 1, "the retry is counted");
        }

        #[tokio::test]
        async fn a_post_whose_connection_dies_is_a_502_and_never_sent_again() {
            let (registry, proxy) = setup();
            let (a, mut far_a, task_a) = connection(&registry).await;
            watch(&registry, a.id, task_a);
            let (b, mut far_b, task_b) = connection(&registry).await;
            watch(&registry, b.id, task_b);
            let origin = tokio::spawn(async move {
                let seen_a = head(&mut far_a).await;
                drop(far_a);
                seen_a
            });
            let (status, body) = run(&proxy, post()).await;
            let seen_a = origin.await.unwrap();
            assert!(seen_a.starts_with("POST /x HTTP/1.1"), "{seen_a}");
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
            assert!(
                !anything(&mut far_b).await,
                "the second origin connection must never see the POST"
            );
            assert_eq!(registry.retries(), 0);
            // Positive twin on the same setup: the second connection still serves.
            let serve = tokio::spawn(async move {
                head(&mut far_b).await;
                respond_ok(&mut far_b).await;
                far_b
            });
            assert_eq!(run(&proxy, get()).await.0, StatusCode::OK);
            let _far_b = serve.await.unwrap();
        }

        #[tokio::test]
        async fn a_request_a_connection_refused_before_sending_moves_to_another() {
            let (registry, proxy) = setup();
            // The first connection died an instant ago: its driver is gone, and the
            // registry has not heard yet (nothing watches it), so routing still picks it
            // and its sender refuses the request before writing any of it.
            let (a, _far_a, task_a) = connection(&registry).await;
            task_a.abort();
            let _ = task_a.await;
            let (b, mut far_b, task_b) = connection(&registry).await;
            watch(&registry, b.id, task_b);
            assert!(a.is_usable(), "the router still sees the first connection");
            let origin = tokio::spawn(async move {
                let seen = head(&mut far_b).await;
                let mut body = [0u8; 5];
                far_b.read_exact(&mut body).await.unwrap();
                respond_ok(&mut far_b).await;
                (seen, body, far_b)
            });
            // A POST with a body: only a request never sent may move, and this one does.
            let (status, body) = run(&proxy, post()).await;
            let (seen, sent_body, _far_b) = origin.await.unwrap();
            assert!(seen.starts_with("POST /x HTTP/1.1"), "{seen}");
            assert_eq!(&sent_body, b"hello");
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
            assert_eq!(registry.retries(), 0, "a request never sent is not a retry");
        }

        /// A POST body of 2 KiB whose last octets mark its end on the wire.
        fn body_2k() -> Vec<u8> {
            let mut body = vec![b'p'; 2044];
            body.extend_from_slice(b"END!");
            body
        }

        fn post_2k() -> Request<Body> {
            Request::post("https://app.example/upload")
                .body(
                    Full::new(Bytes::from(body_2k()))
                        .map_err(|e| match e {})
                        .boxed_unsync(),
                )
                .unwrap()
        }

        /// The origin's end of a pipe with the octets already read from it put back in
        /// front, so an HTTP/2 server can start on a connection whose first frames were
        /// read raw.
        struct Prefixed {
            head: Bytes,
            io: DuplexStream,
        }

        impl tokio::io::AsyncRead for Prefixed {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                if self.head.is_empty() {
                    return Pin::new(&mut self.io).poll_read(cx, buf);
                }
                let n = self.head.len().min(buf.remaining());
                let chunk = self.head.split_to(n);
                buf.put_slice(&chunk);
                Poll::Ready(Ok(()))
            }
        }

        impl tokio::io::AsyncWrite for Prefixed {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.io).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.io).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }

        /// An HTTP/2 origin that lets the whole POST (its body's end marker) arrive, then,
        /// having processed no stream, sends GOAWAY with last stream ID 0 and closes: the
        /// POST on stream 1 is above it, "not processed" (RFC 9113 §6.8), its body spent.
        async fn refuse_with_goaway(mut far: DuplexStream) {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"END!") {
                let n = tokio::time::timeout(Duration::from_secs(10), far.read(&mut buf))
                    .await
                    .expect("the gateway sends the POST")
                    .unwrap();
                assert!(n > 0, "the gateway closed before the POST's body");
                seen.extend_from_slice(&buf[..n]);
            }
            let io = Prefixed {
                head: Bytes::from(seen),
                io: far,
            };
            let mut conn = h2::server::handshake(io).await.unwrap();
            conn.abrupt_shutdown(h2::Reason::NO_ERROR);
            let accepted = conn.accept().await;
            assert!(
                accepted.is_none(),
                "the refusing origin processed no stream"
            );
        }

        /// An HTTP/2 origin that reads the POST's whole body, then resets its stream with
        /// REFUSED_STREAM (RFC 9113 §8.7); it returns the body it read.
        async fn refuse_with_reset(far: DuplexStream) -> Vec<u8> {
            let mut conn = h2::server::handshake(far).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let driver = tokio::spawn(async move {
                while let Some(stream) = conn.accept().await {
                    assert!(
                        stream.is_err(),
                        "one stream only reaches the refusing origin"
                    );
                }
            });
            let mut body = req.into_body();
            let mut read = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                read.extend_from_slice(&chunk);
            }
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            // The origin keeps the connection: only the stream was refused.
            tokio::spawn(async move {
                let _ = driver.await;
            });
            read
        }

        /// An HTTP/2 origin (hyper's server, as `ptth-origin` runs it) answering each
        /// request with the body it received; it counts the requests.
        fn echo_origin(far: DuplexStream) -> Arc<std::sync::atomic::AtomicUsize> {
            let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let seen = count.clone();
            let echo = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(Response::new(Full::new(body)))
                }
            });
            tokio::spawn(async move {
                let _ = ptth_h2::reversed::serve(far, echo, Default::default()).await;
            });
            count
        }

        enum Refusal {
            GoAway,
            Reset,
        }

        /// A POST refused unprocessed on the first of two HTTP/2 connections: with the
        /// body within `limit` it is replayed whole on the second; over it, 502 and the
        /// second never sees it.
        async fn refused_post(refusal: Refusal, limit: usize) -> (StatusCode, String, usize) {
            let (registry, proxy) = setup_with(limit);
            let (a, far_a, task_a) = connection_over(&registry, HttpVersion::Http2).await;
            watch(&registry, a.id, task_a);
            let (b, far_b, task_b) = connection_over(&registry, HttpVersion::Http2).await;
            watch(&registry, b.id, task_b);
            let served = echo_origin(far_b);
            let refuser = tokio::spawn(async move {
                match refusal {
                    Refusal::GoAway => refuse_with_goaway(far_a).await,
                    Refusal::Reset => {
                        let read = refuse_with_reset(far_a).await;
                        assert_eq!(read, body_2k(), "the refused stream's body was spent");
                    }
                }
            });
            let (status, body) = run(&proxy, post_2k()).await;
            refuser.await.unwrap();
            let refused = registry.metrics.retries("refused");
            assert_eq!(
                refused,
                u64::from(status == StatusCode::OK),
                "a replay is counted as reason refused"
            );
            (
                status,
                body,
                served.load(std::sync::atomic::Ordering::SeqCst),
            )
        }

        #[tokio::test]
        async fn a_post_refused_by_goaway_is_replayed_whole_on_another_connection() {
            let (status, body, served) = refused_post(Refusal::GoAway, 64 * 1024).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body.as_bytes(), body_2k().as_slice());
            assert_eq!(served, 1);
        }

        #[tokio::test]
        async fn a_post_refused_by_rst_stream_is_replayed_whole_on_another_connection() {
            let (status, body, served) = refused_post(Refusal::Reset, 64 * 1024).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            assert_eq!(body.as_bytes(), body_2k().as_slice());
            assert_eq!(served, 1);
        }

        #[tokio::test]
        async fn a_refused_post_over_the_retry_body_limit_is_a_502_and_never_replayed() {
            for refusal in [Refusal::GoAway, Refusal::Reset] {
                let (status, body, served) = refused_post(refusal, 1024).await;
                assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
                assert_eq!(served, 0, "the second connection never sees the POST");
            }
        }
    }
}
