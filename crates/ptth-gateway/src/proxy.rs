//! The public side: every public request is routed to an origin connection and streamed back.
//!
//! Standard reverse-proxy behaviour (RFC 9110 §7.6): hop-by-hop fields are removed in both
//! directions, `Via` is added, and the forwarding fields (`X-Forwarded-*`, `X-Real-IP`,
//! RFC 7239 `Forwarded`) say what the gateway saw of the client ([`crate::forwarding`]). Errors say who
//! caused them: 400 for a request the gateway cannot route, 502 when the origin failed it,
//! 503 (with `Retry-After`) when no origin is there or the queue is full, 504 on timeout.

use crate::forwarding::{self, TrustedProxies};
use crate::message::{error, unavailable, Body, BoxError};
use crate::registry::{Registry, Reservation, RouteError};
use crate::sender::{Outbound, SendError, WebSocket};
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
    /// Whether a cleartext request may reach an `https://` scope when no `http://` scope
    /// serves it (`--cleartext-https-fallback`).
    pub cleartext_https_fallback: bool,
}

/// Routes public requests to origins.
#[derive(Debug)]
pub struct Proxy {
    registry: Arc<Registry>,
    config: ProxyConfig,
    /// This gateway's `Via` entry for each HTTP version a message can arrive in, built once.
    via: ViaValues,
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
        let via = ViaValues::new(&config.via_name);
        Arc::new(Self {
            registry,
            config,
            via,
        })
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
        let websocket = is_websocket_upgrade(&req).then(|| WebSocket {
            key: req.headers().get(header::SEC_WEBSOCKET_KEY).cloned(),
        });
        let public_upgrade = websocket.is_some().then(|| hyper::upgrade::on(&mut req));
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
        // Read before hop-by-hop stripping, which may remove a `Host` named in `Connection`.
        let authority = forwarding::requested_authority(&parts.uri, &parts.headers, &target);
        strip_hop_by_hop(&mut parts.headers);
        // An origin must never read a gateway-only field from a stranger.
        strip_ptth_fields(&mut parts.headers);
        self.via.append(&mut parts.headers, received_version);
        forwarding::set_forwarding_fields(
            &mut parts.headers,
            &forwarding::Hop {
                peer: client.addr.ip(),
                tls: client.tls,
                authority: &authority,
            },
            &self.config.trusted_proxies,
        );
        let mut request = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        // The sender of whichever connection is picked shapes the request for its HTTP
        // version (target form, WebSocket handshake), again if a retry picks another.
        let outbound = Outbound {
            target: &target,
            websocket: websocket.as_ref(),
        };

        let mut avoid = None;
        let (reservation, response) = loop {
            let reservation = match self.registry.acquire(&target, avoid).await {
                Ok(r) => r,
                Err(RouteError::NoOrigin) if avoid.is_some() => {
                    return error(
                        StatusCode::BAD_GATEWAY,
                        "the origin connection closed before the request could be sent",
                    )
                }
                Err(RouteError::NoOrigin) => {
                    return unavailable("no origin is connected for this host and path", 5)
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
                                return error(
                                    StatusCode::BAD_GATEWAY,
                                    "the origin connection closed before it answered",
                                );
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
                Ok(Ok(resp)) => break (reservation, resp),
                Ok(Err(SendError::NotSent(req, e))) => {
                    tracing::debug!(conn = id, error = %e, "connection refused the request; retrying on another");
                    request = *req;
                    avoid = Some(id);
                    self.metrics().retried("not_sent");
                }
                Ok(Err(SendError::Failed(e))) => {
                    tracing::warn!(conn = id, error = %e, "origin failed the request");
                    return error(
                        StatusCode::BAD_GATEWAY,
                        &format!("the origin failed the request: {e}"),
                    );
                }
            }
        };
        self.finish(reservation, response, public_upgrade, websocket)
    }

    fn finish(
        &self,
        reservation: Reservation,
        mut response: Response<Body>,
        public_upgrade: Option<hyper::upgrade::OnUpgrade>,
        websocket: Option<WebSocket>,
    ) -> Response<Body> {
        let conn = reservation.conn();
        let accepted = websocket
            .as_ref()
            .and_then(|ws| conn.sender.accepted_upgrade(&response, ws));
        if let Some(accepted) = accepted {
            let origin_upgrade = hyper::upgrade::on(&mut response);
            if accepted.consumes_connection {
                // The connection belongs to the WebSocket now: no request is routed to it.
                conn.close(CloseReason::Upgraded);
            }
            if let Some(public) = public_upgrade {
                tokio::spawn(async move {
                    let _hold = reservation;
                    match tokio::try_join!(public, origin_upgrade) {
                        Ok((a, b)) => {
                            let mut a = hyper_util::rt::TokioIo::new(a);
                            let mut b = hyper_util::rt::TokioIo::new(b);
                            let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                    }
                });
            }
            let mut out = Response::new(crate::message::empty());
            *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = out.headers_mut();
            for (k, v) in response.headers() {
                if !is_hop_by_hop(k) && k != header::SEC_WEBSOCKET_ACCEPT && !is_ptth_field(k) {
                    h.append(k.clone(), v.clone());
                }
            }
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(a) = accepted.accept {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, a);
            }
            return out;
        }
        let (mut parts, body) = response.into_parts();
        parts.extensions.insert(Routed(conn.clone()));
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

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() <= Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
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
}
