//! Sending requests over a reversed connection: the one place in the gateway that knows
//! which HTTP version the origin's connection speaks.
//!
//! A [`Sender`] shapes a public request for its connection (origin-form and `Host` on
//! HTTP/1.1, pseudo-header fields on HTTP/2 and HTTP/3, a WebSocket handshake as `Upgrade`
//! or as RFC 8441 / RFC 9220 extended CONNECT), sends it, says whether it can carry a
//! WebSocket, what an accepted one looks like and where its tunnel is, reports capacity and
//! liveness (closed, GOAWAY, and why it ended), and decides what happens to a response body
//! the public client abandoned. The proxy asks it; nothing else in the gateway branches on
//! the origin connection's version.

use crate::message::{empty, Body, BoxError};
use crate::websocket::{OriginTunnel, PublicForm, WebSocket};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use ptth_core::{CloseReason, HttpVersion, RequestTarget};
use ptth_h3::H3Connection;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// The request-sending half of a reversed connection.
#[derive(Debug)]
pub struct Sender {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// Reversed HTTP/1.1: one request at a time (the registry reserves it for one).
    H1 {
        send: Mutex<ptth_h1::reversed::Sender>,
        ended: Arc<OnceLock<CloseReason>>,
        /// A WebSocket handshake was sent and not refused: when the driver then ends
        /// cleanly, the upgrade took the connection.
        upgrading: Arc<AtomicBool>,
    },
    /// Reversed HTTP/2 (h2's client, driven by the connection's task): multiplexed;
    /// capacity from the origin's SETTINGS.
    H2 {
        client: ptth_h2::client::Client,
        ended: Arc<OnceLock<CloseReason>>,
    },
    /// Reversed HTTP/3 (Potato `rh3`, draft-bt `h3-reverse`, PTTH -00 `OPTIONS`):
    /// multiplexed on QUIC streams; capacity is the bidi stream limit the origin grants.
    H3 {
        send: ptth_h3::SendRequest,
        conn: Arc<H3Connection>,
        quic: quinn::Connection,
    },
}

/// How a send failed, and whether the request may go to another connection.
#[derive(Debug)]
pub enum SendError {
    /// The connection refused the request before any of it was sent: retry elsewhere.
    NotSent(Box<Request<Body>>, BoxError),
    /// The request was (maybe partly) sent, and the origin's connection says it was not
    /// processed: HTTP/2 GOAWAY with a last stream ID below it (RFC 9113 §6.8: such streams
    /// "were not processed ... and can be safely retried") or RST_STREAM REFUSED_STREAM
    /// (§8.7), HTTP/3 H3_REQUEST_REJECTED or GOAWAY (RFC 9114 §4.1.1, §5.2). Its body may be
    /// spent: only a kept copy can send it again.
    Refused(BoxError),
    /// The request was (maybe partly) sent and failed: the origin failed it.
    Failed(BoxError),
}

/// Where a public request goes, whatever version carries it to the origin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outbound<'a> {
    /// The routed target: its authority and the scheme the request arrived with.
    pub target: &'a RequestTarget,
    /// The WebSocket opening handshake the public client sent, if it asked for one.
    pub websocket: Option<&'a WebSocket>,
}

/// What an origin's answer to a WebSocket handshake means.
#[derive(Debug)]
pub(crate) enum UpgradeAnswer {
    /// The origin accepted it: bridge the tunnels.
    Accepted(AcceptedUpgrade),
    /// The origin refused it with an ordinary answer: forward that answer.
    Refused,
    /// The origin switched protocols but not to a WebSocket of this handshake (RFC 6455
    /// §4.1: "If the response lacks a |Sec-WebSocket-Accept| header field or the
    /// |Sec-WebSocket-Accept| contains a value other than the base64-encoded SHA-1 of the
    /// concatenation of the |Sec-WebSocket-Key| ... the client MUST _Fail the WebSocket
    /// Connection_"): answer 502 with the reason.
    Invalid {
        reason: &'static str,
        /// The `101` took the HTTP/1.1 connection all the same.
        consumes_connection: bool,
    },
}

/// An origin's acceptance of a WebSocket handshake, as the public client must see it.
#[derive(Debug)]
pub(crate) struct AcceptedUpgrade {
    /// The `Sec-WebSocket-Accept` the public client checks.
    pub accept: Option<HeaderValue>,
    /// Whether the upgrade took the whole connection (HTTP/1.1), so it takes no further
    /// request; an HTTP/2 stream leaves the connection to others.
    pub consumes_connection: bool,
}

/// How a request's target is written on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// HTTP/1.1: origin-form target and `Host` (RFC 9112 §3.2); a WebSocket handshake is a
    /// `GET` with `Upgrade: websocket` (RFC 6455 §4.1).
    Origin,
    /// HTTP/2 and HTTP/3: the target in `:scheme`, `:authority` and `:path` (RFC 9113
    /// §8.3.1, RFC 9114 §4.3.1); a WebSocket handshake is an extended CONNECT (RFC 8441 §4).
    Pseudo(Version),
}

/// The refusal when the origin's HTTP/3 connection did not enable extended CONNECT.
const NO_EXTENDED_CONNECT_H3: &str = "the origin's HTTP/3 connection does not enable extended CONNECT (RFC 9220), so WebSocket cannot reach it";
/// The failure when an HTTP/1.1 origin's `101` does not carry the accept value of the
/// gateway's key.
const WRONG_ACCEPT: &str = "the origin switched protocols with a missing or wrong Sec-WebSocket-Accept, so it is not speaking WebSocket to this handshake";
/// How much of an HTTP/3 origin's refusal of an extended CONNECT is read to forward it,
/// and for how long.
const REFUSAL_LIMIT: usize = 16 * 1024;
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The refusal when the origin's HTTP/2 connection did not enable extended CONNECT.
const NO_EXTENDED_CONNECT: &str = "the origin's HTTP/2 connection does not enable extended CONNECT (RFC 8441), so WebSocket cannot reach it";

/// How much of an abandoned response the gateway still reads from a reversed HTTP/1.1
/// connection, and for how long, to keep that connection instead of closing it.
const DRAIN_LIMIT: u64 = 2 * 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Sender {
    /// The sender of a reversed HTTP/3 connection (the caller keeps the connection alive).
    pub(crate) fn h3(conn: Arc<H3Connection>, quic: quinn::Connection) -> Self {
        Self {
            inner: Inner::H3 {
                send: conn.sender(),
                conn,
                quic,
            },
        }
    }

    fn form(&self) -> Form {
        match self.inner {
            Inner::H1 { .. } => Form::Origin,
            Inner::H2 { .. } => Form::Pseudo(Version::HTTP_2),
            Inner::H3 { .. } => Form::Pseudo(Version::HTTP_3),
        }
    }

    /// Requests this connection carries at once.
    pub fn capacity(&self) -> usize {
        match &self.inner {
            Inner::H1 { .. } => 1,
            Inner::H2 { client, .. } => client.max_send_streams().clamp(1, 1 << 16),
            // quinn does not expose the peer's MAX_STREAMS; both ends of a ptth QUIC
            // connection grant `ptth_h3::transport::MAX_BIDI_STREAMS`, and `open_bi` waits beyond it.
            Inner::H3 { .. } => ptth_h3::transport::MAX_BIDI_STREAMS as usize,
        }
    }

    /// Whether the connection can take no new request: it is gone, or (HTTP/2, HTTP/3) the
    /// origin sent GOAWAY.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::H1 { ended, .. } => ended.get().is_some(),
            Inner::H2 { client, ended } => client.is_refusing() || ended.get().is_some(),
            Inner::H3 { conn, quic, .. } => h3_gone(conn, quic),
        }
    }

    /// Whether the origin asked to wind the connection down (HTTP/2 GOAWAY, RFC 9113 §6.8;
    /// HTTP/3 GOAWAY, RFC 9114 §5.2) while it still finishes the requests in flight.
    pub fn peer_draining(&self) -> bool {
        match &self.inner {
            Inner::H3 { conn, .. } => conn.peer_goaway().is_some(),
            // RFC 9113 §6.8: streams up to the GOAWAY's last stream ID still finish.
            Inner::H2 { client, .. } => client.peer_went_away(),
            // hyper ends an HTTP/1.1 `Connection: close` exchange: it shows as the
            // connection ending.
            Inner::H1 { .. } => false,
        }
    }

    /// Why the connection ended, once it has.
    pub fn ended(&self) -> Option<CloseReason> {
        match &self.inner {
            Inner::H1 { ended, .. } | Inner::H2 { ended, .. } => ended.get().copied(),
            Inner::H3 { quic, .. } => quic.close_reason().map(|e| quic_close_reason(&e)),
        }
    }

    /// Whether a WebSocket can reach the origin over this connection, and if not, why (the
    /// proxy answers 502 with this reason).
    pub(crate) fn carries_websocket(&self) -> Result<(), &'static str> {
        match &self.inner {
            Inner::H1 { .. } => Ok(()),
            Inner::H2 { client, .. } if client.extended_connect() => Ok(()),
            Inner::H2 { .. } => Err(NO_EXTENDED_CONNECT),
            // RFC 9220 §3: extended CONNECT only once the server's SETTINGS enabled it
            // (they arrive before the answer to the authorisation request that admitted
            // the connection).
            Inner::H3 { conn, .. }
                if conn
                    .peer_settings_now()
                    .is_some_and(|s| s.enable_connect_protocol) =>
            {
                Ok(())
            }
            Inner::H3 { .. } => Err(NO_EXTENDED_CONNECT_H3),
        }
    }

    /// A `GET` for one of the gateway's own resources on the origin (the authorisation
    /// exchange, draft-thomson-ptth-potato §5.2), written for this connection.
    pub(crate) fn gateway_request(&self, path: &'static str) -> Request<Body> {
        const AUTHORITY: &str = "ptth-gateway";
        let mut req = Request::new(empty());
        match self.form() {
            Form::Origin => {
                *req.uri_mut() = Uri::from(PathAndQuery::from_static(path));
                req.headers_mut()
                    .insert(header::HOST, HeaderValue::from_static(AUTHORITY));
            }
            Form::Pseudo(_) => {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTPS);
                uri.authority = Some(Authority::from_static(AUTHORITY));
                uri.path_and_query = Some(PathAndQuery::from_static(path));
                if let Ok(uri) = Uri::from_parts(uri) {
                    *req.uri_mut() = uri;
                }
            }
        }
        req
    }

    /// Shapes a public request for this connection and sends it (see [`Sender::send`]). A
    /// request handed back as [`SendError::NotSent`] can be forwarded on another connection
    /// as it is: shaping is idempotent.
    pub(crate) async fn forward(
        &self,
        mut req: Request<Body>,
        to: &Outbound<'_>,
    ) -> Result<Response<Body>, SendError> {
        shape(&mut req, self.form(), to);
        match &self.inner {
            Inner::H1 { upgrading, .. } if to.websocket.is_some() => {
                upgrading.store(true, Ordering::Release);
                let res = self.send(req).await;
                if !res
                    .as_ref()
                    .is_ok_and(|r| r.status() == StatusCode::SWITCHING_PROTOCOLS)
                {
                    upgrading.store(false, Ordering::Release);
                }
                res
            }
            Inner::H3 { send, conn, quic } if to.websocket.is_some() => {
                if h3_gone(conn, quic) {
                    return Err(SendError::NotSent(
                        Box::new(req),
                        "the origin's HTTP/3 connection is closing".into(),
                    ));
                }
                // The request of an extended CONNECT has no body: the stream becomes the
                // tunnel (RFC 9220 §3, RFC 8441 §4).
                let (parts, _) = req.into_parts();
                let (res, stream) = send
                    .send_connect(Request::from_parts(parts, ()))
                    .await
                    .map_err(|e| SendError::Failed(Box::new(e)))?;
                if res.status().is_success() {
                    let mut res = res.map(|()| empty());
                    res.extensions_mut()
                        .insert(H3OriginTunnel(Arc::new(Mutex::new(Some(stream)))));
                    Ok(res)
                } else {
                    // A refusal's body is read (bounded) so the public client sees why.
                    let body = read_refusal(stream).await;
                    Ok(res.map(|()| body))
                }
            }
            _ => self.send(req).await,
        }
    }

    /// The origin's side of an accepted WebSocket's tunnel, from its response.
    pub(crate) fn origin_tunnel(&self, response: &mut Response<Body>) -> OriginTunnel {
        match &self.inner {
            Inner::H1 { .. } => OriginTunnel::Hyper(hyper::upgrade::on(response)),
            Inner::H2 { .. } => match ptth_h2::client::take_tunnel(response) {
                Some(stream) => OriginTunnel::Ready(Box::new(stream)),
                None => OriginTunnel::Missing,
            },
            Inner::H3 { .. } => match response
                .extensions_mut()
                .remove::<H3OriginTunnel>()
                .and_then(|t| t.0.lock().unwrap_or_else(|e| e.into_inner()).take())
            {
                Some(stream) => OriginTunnel::Ready(Box::new(stream)),
                None => OriginTunnel::Missing,
            },
        }
    }

    /// Sends `req` as it is, returning the origin's response head and streaming body. An
    /// HTTP/1.1 upgrade stays reachable through `hyper::upgrade::on` on the response, an
    /// HTTP/2 extended CONNECT's stream through [`Sender::origin_tunnel`].
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, SendError> {
        match &self.inner {
            Inner::H1 { send, .. } => {
                let ready = std::future::poll_fn(|cx| h1_handle(send).poll_ready(cx)).await;
                if let Err(e) = ready {
                    return Err(SendError::NotSent(Box::new(req), Box::new(e)));
                }
                // hyper queues nothing more until this exchange ends; the answer does not
                // borrow the handle.
                let answer = h1_handle(send).try_send_request(req);
                answer.await.map(boxed).map_err(refused_or_failed)
            }
            Inner::H2 { client, .. } => client.send(req).await.map_err(|e| match e {
                ptth_h2::client::SendError::NotSent(req, e) => SendError::NotSent(req, Box::new(e)),
                ptth_h2::client::SendError::Sent(e) if refused_by_peer(&e) => {
                    SendError::Refused(Box::new(e))
                }
                ptth_h2::client::SendError::Sent(e) => SendError::Failed(Box::new(e)),
            }),
            Inner::H3 { send, conn, quic } => {
                if h3_gone(conn, quic) {
                    return Err(SendError::NotSent(
                        Box::new(req),
                        "the origin's HTTP/3 connection is closing".into(),
                    ));
                }
                send.send_request(req).await.map(boxed).map_err(|e| {
                    if e.is_retryable() {
                        SendError::Refused(Box::new(e))
                    } else {
                        SendError::Failed(Box::new(e))
                    }
                })
            }
        }
    }

    /// Whether `response` accepts the WebSocket handshake the request carried: a `101` on
    /// HTTP/1.1 (RFC 6455 §4.2.2), any 2xx to an extended CONNECT (RFC 8441 §5). `None`
    /// means refused: the proxy forwards the answer as it is.
    pub(crate) fn accepted_upgrade(
        &self,
        response: &Response<Body>,
        ws: &WebSocket,
    ) -> UpgradeAnswer {
        let derived = || {
            ws.key.as_ref().and_then(|key| {
                HeaderValue::from_str(
                    &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .ok()
            })
        };
        match &self.inner {
            Inner::H1 { .. } if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let sent = response.headers().get(header::SEC_WEBSOCKET_ACCEPT);
                if ws.public == PublicForm::ExtendedConnect {
                    // The key is the gateway's: the gateway is the WebSocket client that
                    // RFC 6455 §4.1 tells to check the answer.
                    let expected = derived();
                    if sent.is_none() || sent != expected.as_ref() {
                        return UpgradeAnswer::Invalid {
                            reason: WRONG_ACCEPT,
                            consumes_connection: true,
                        };
                    }
                }
                UpgradeAnswer::Accepted(AcceptedUpgrade {
                    accept: match sent {
                        Some(accept) => Some(accept.clone()),
                        None => derived(),
                    },
                    consumes_connection: true,
                })
            }
            // RFC 8441 §5 and RFC 9220 §3: Sec-WebSocket-Key and -Accept are not used; a
            // public HTTP/1.1 client still expects the accept value its key implies.
            Inner::H2 { .. } | Inner::H3 { .. } if response.status().is_success() => {
                UpgradeAnswer::Accepted(AcceptedUpgrade {
                    accept: derived(),
                    consumes_connection: false,
                })
            }
            _ => UpgradeAnswer::Refused,
        }
    }

    /// What becomes of a response body the public client abandoned. On HTTP/2 and HTTP/3
    /// dropping it resets one stream: `None`, drop it. On HTTP/1.1 it would close the whole
    /// origin connection, and the gateway cannot dial a new one: the origin must, after its
    /// backoff, so a burst of departing clients (256 at the end of a bench run) emptied an
    /// rh1 pool and the next requests found no origin (503). So the rest of a bounded
    /// response ([`DRAIN_LIMIT`], [`DRAIN_TIMEOUT`]) is read and discarded: the returned
    /// drain takes the body and says whether it ended within those bounds (the caller
    /// holds the connection's reservation until it does).
    pub(crate) fn drain_abandoned(
        &self,
        body: &mut Body,
    ) -> Option<impl Future<Output = bool> + Send + 'static> {
        let remaining = http_body::Body::size_hint(body).upper();
        if !matches!(self.inner, Inner::H1 { .. })
            || http_body::Body::is_end_stream(body)
            || remaining.is_some_and(|r| r > DRAIN_LIMIT)
        {
            return None;
        }
        let mut body = std::mem::replace(body, empty());
        Some(async move {
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                let mut read = 0u64;
                while let Some(frame) = body.frame().await {
                    let Ok(frame) = frame else { return false };
                    if let Some(data) = frame.data_ref() {
                        read += data.len() as u64;
                        if read > DRAIN_LIMIT {
                            return false;
                        }
                    }
                }
                true
            })
            .await;
            drained == Ok(true)
        })
    }
}

/// A reversed HTTP/3 origin's extended CONNECT stream, carried from [`Sender::forward`] to
/// [`Sender::origin_tunnel`] in the response's extensions (which must be `Clone`).
#[derive(Clone)]
struct H3OriginTunnel(Arc<Mutex<Option<ptth_h3::H3Stream>>>);

/// The body of an HTTP/3 origin's non-2xx answer to an extended CONNECT: what arrives of
/// it within [`REFUSAL_LIMIT`] and [`REFUSAL_TIMEOUT`].
async fn read_refusal(mut stream: ptth_h3::H3Stream) -> Body {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(
        REFUSAL_TIMEOUT,
        (&mut stream)
            .take(REFUSAL_LIMIT as u64)
            .read_to_end(&mut buf),
    )
    .await;
    crate::message::full(buf)
}

/// A response with its body boxed into the one forwarded body type.
fn boxed<B>(res: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(|b| b.map_err(Into::into).boxed_unsync())
}

/// hyper's HTTP/1.1 client hands back a request it refused before sending any of it
/// (retry it elsewhere); anything else failed on the wire.
fn refused_or_failed(mut e: hyper::client::conn::TrySendError<Request<Body>>) -> SendError {
    match e.take_message() {
        Some(req) => SendError::NotSent(Box::new(req), Box::new(e.into_error())),
        None => {
            let e = e.into_error();
            if refused_by_peer(&e) {
                SendError::Refused(Box::new(e))
            } else {
                SendError::Failed(Box::new(e))
            }
        }
    }
}

/// Whether an HTTP/2 request failed because the origin refused its stream unprocessed
/// (GOAWAY above the stream, or REFUSED_STREAM): see [`ptth_h2::client::refused_by_peer`].
fn refused_by_peer(error: &(dyn std::error::Error + 'static)) -> bool {
    ptth_h2::client::refused_by_peer(error)
}

/// Shapes `req` for a connection that writes targets in `form`. Idempotent: a request
/// shaped for one connection can be shaped again for another.
fn shape(req: &mut Request<Body>, form: Form, to: &Outbound<'_>) {
    let target = to.target;
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match form {
        Form::Pseudo(version) => {
            let scheme = if target.arrival().secure {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            };
            let host = req.headers_mut().remove(header::HOST);
            let uri = req.uri();
            let same = uri.scheme() == Some(&scheme)
                && uri.path_and_query() == Some(&path)
                && uri
                    .authority()
                    .is_some_and(|a| is_authority_of(a.as_str(), target));
            if !same {
                // An HTTP/1.1 client's `Host` usually is the authority already: copied as
                // it is rather than formatted again.
                let authority = match host {
                    Some(h) if h.to_str().is_ok_and(|h| is_authority_of(h, target)) => {
                        Authority::try_from(h.as_bytes()).ok()
                    }
                    _ => Authority::try_from(target.authority()).ok(),
                };
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(scheme);
                parts.authority = authority;
                parts.path_and_query = Some(path);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            *req.version_mut() = version;
            if to.websocket.is_some() {
                // RFC 8441 §5 (and RFC 9220 §3 for HTTP/3): the WebSocket handshake becomes
                // CONNECT with :protocol=websocket; Sec-WebSocket-Key and -Accept are not
                // used.
                *req.method_mut() = Method::CONNECT;
                if version == Version::HTTP_3 {
                    req.extensions_mut().remove::<hyper::ext::Protocol>();
                    req.extensions_mut()
                        .insert(ptth_h3::Protocol(crate::websocket::WEBSOCKET.into()));
                } else {
                    req.extensions_mut().remove::<ptth_h3::Protocol>();
                    req.extensions_mut()
                        .insert(hyper::ext::Protocol::from_static("websocket"));
                }
                let h = req.headers_mut();
                h.remove(header::UPGRADE);
                h.remove(header::CONNECTION);
                h.remove(header::SEC_WEBSOCKET_KEY);
            }
        }
        Form::Origin => {
            let uri = req.uri();
            if uri.scheme().is_some() || uri.authority().is_some() || uri.path_and_query().is_none()
            {
                *req.uri_mut() = Uri::from(path);
            }
            let host_is_right = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| is_authority_of(h, target));
            if !host_is_right {
                if let Ok(v) = HeaderValue::try_from(target.authority()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            *req.version_mut() = Version::HTTP_11;
            if let Some(ws) = to.websocket {
                *req.method_mut() = Method::GET;
                req.extensions_mut().remove::<hyper::ext::Protocol>();
                req.extensions_mut().remove::<ptth_h3::Protocol>();
                let h = req.headers_mut();
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                if let Some(k) = &ws.key {
                    h.insert(header::SEC_WEBSOCKET_KEY, k.clone());
                }
            }
        }
    }
}

/// Whether `text` is exactly [`RequestTarget::authority`] (`host`, or `host:port` when
/// the port is known), without building that string.
fn is_authority_of(text: &str, target: &RequestTarget) -> bool {
    let Some(rest) = text.strip_prefix(target.host()) else {
        return false;
    };
    match target.port() {
        None => rest.is_empty(),
        // Digits only, no leading zero: exactly how `authority` writes the port.
        Some(port) => rest.strip_prefix(':').is_some_and(|p| {
            !p.starts_with('0')
                && p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u16>().ok() == Some(port)
        }),
    }
}

/// The HTTP/1.1 handle. The lock is held only inside one poll or one call, never across an
/// await: the registry gives the connection to one request at a time, so it is never waited
/// for.
fn h1_handle(
    slot: &Mutex<ptth_h1::reversed::Sender>,
) -> std::sync::MutexGuard<'_, ptth_h1::reversed::Sender> {
    // A poisoned lock only means a holder panicked; the handle in it is still whole.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the gateway's HTTP client role on `io` and returns the sender and a task handle
/// that ends with the connection.
pub(crate) async fn start_client<IO>(
    io: IO,
    version: HttpVersion,
) -> Result<(Sender, tokio::task::JoinHandle<()>), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match version {
        HttpVersion::Http1 => {
            let (send, conn) = ptth_h1::reversed::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            let ended = Arc::new(OnceLock::new());
            let upgrading = Arc::new(AtomicBool::new(false));
            let (end, upgraded) = (ended.clone(), upgrading.clone());
            let task = tokio::spawn(async move {
                let outcome = conn.await;
                if let Err(e) = &outcome {
                    tracing::debug!(error = %e, "reversed HTTP/1.1 connection ended");
                }
                // The connection future also ends, cleanly, when a `101` hands the stream
                // to the upgraded protocol.
                let reason = match hyper_close_reason(&outcome) {
                    CloseReason::Graceful if upgraded.load(Ordering::Acquire) => {
                        CloseReason::Upgraded
                    }
                    reason => reason,
                };
                let _ = end.set(reason);
            });
            Ok((
                Sender {
                    inner: Inner::H1 {
                        send: Mutex::new(send),
                        ended,
                        upgrading,
                    },
                },
                task,
            ))
        }
        HttpVersion::Http2 => {
            let (client, conn) = ptth_h2::client::handshake(io, Default::default())
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            let ended = Arc::new(OnceLock::new());
            // Spawned as a struct, not an async block: the connection is held once.
            let task = tokio::spawn(H2Driven {
                driver: ptth_h2::client::drive(conn, ptth_h2::client::KEEP_ALIVE),
                ended: ended.clone(),
            });
            Ok((
                Sender {
                    inner: Inner::H2 { client, ended },
                },
                task,
            ))
        }
        HttpVersion::Http3 => Err("HTTP/3 is not carried over TCP".into()),
    }
}

/// Whether a reversed HTTP/3 connection can take no new request: closed, or the origin
/// sent GOAWAY (RFC 9114 §5.2: the client "MUST NOT initiate new requests").
fn h3_gone(conn: &H3Connection, quic: &quinn::Connection) -> bool {
    conn.peer_goaway().is_some() || quic.close_reason().is_some()
}

/// A reversed HTTP/2 connection's task: drives it, then records why it ended.
struct H2Driven<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    driver: ptth_h2::client::Driver<IO>,
    ended: Arc<OnceLock<CloseReason>>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Future for H2Driven<IO> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let outcome = std::task::ready!(std::pin::Pin::new(&mut self.driver).poll(cx));
        if let Err(e) = &outcome {
            // Every request on it fails with the connection: say why, with the causes.
            tracing::warn!(error = %error_chain(e), "reversed HTTP/2 connection ended with an error");
        }
        let _ = self.ended.set(h2_close_reason(&outcome));
        std::task::Poll::Ready(())
    }
}

/// Why a reversed HTTP/2 connection's driver ended: the transport was lost (an I/O error,
/// an unanswered keep-alive PING), or the origin broke the protocol or ended with an error
/// code (GOAWAY with an error, or h2 found a violation). GOAWAY(NO_ERROR) once the streams
/// are done is h2's `Ok`: graceful.
fn h2_close_reason(outcome: &Result<(), ptth_h2::client::ConnectionError>) -> CloseReason {
    use ptth_h2::client::ConnectionError as E;
    match outcome {
        Ok(()) => CloseReason::Graceful,
        Err(E::KeepAliveTimeout(_)) => CloseReason::TransportLost,
        Err(E::H2(e)) if e.is_io() => CloseReason::TransportLost,
        Err(_) => CloseReason::PeerError,
    }
}

/// Why a reversed HTTP/1.1 connection's driver ended. hyper's HTTP/1.1 client
/// hands a failure under a request (the origin hanging up mid-answer, an answer that is not
/// HTTP) to that request, where the proxy reports it, and then ends the connection without
/// an error of its own: such a connection reads as closed by the origin.
fn hyper_close_reason(outcome: &hyper::Result<()>) -> CloseReason {
    match outcome {
        Ok(()) => CloseReason::Graceful,
        Err(e) if e.is_incomplete_message() || e.is_timeout() || caused_by_io(e) => {
            CloseReason::TransportLost
        }
        Err(_) => CloseReason::PeerError,
    }
}

/// Whether an I/O error (reset, broken pipe) is among an error's causes.
fn caused_by_io(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Why a QUIC connection closed, from quinn's report.
fn quic_close_reason(error: &quinn::ConnectionError) -> CloseReason {
    use quinn::ConnectionError as E;
    match error {
        // RFC 9114 §8.1: H3_NO_ERROR, "the connection ... needs to be closed, but there is
        // no error to signal".
        E::ApplicationClosed(close)
            if close.error_code.into_inner() == ptth_h3::frame::H3_NO_ERROR =>
        {
            CloseReason::Graceful
        }
        E::ConnectionClosed(close) if u64::from(close.error_code) == 0 => CloseReason::Graceful,
        E::ApplicationClosed(_) | E::ConnectionClosed(_) => CloseReason::PeerError,
        E::Reset | E::TimedOut => CloseReason::TransportLost,
        // We closed it: after a violation by the peer, or because the gateway dropped it.
        _ => CloseReason::LocalError,
    }
}

/// `error: cause: cause …`, for errors whose own text hides the reason.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    //! Shaping as a function of the form, then over real reversed HTTP/1.1 (a scripted
    //! origin writing bytes) and HTTP/2 (hyper's server, as the origin runs it, facing h2's
    //! client) connections on in-memory pipes.
    use super::*;
    use crate::message::full;
    use http::HeaderMap;
    use ptth_core::Arrival;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    // RFC 6455 §1.3's example: the accept value of `KEY`.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// The target the proxy routes `req` by, arrived over TLS on port 8443.
    fn target_of(req: &Request<Body>) -> RequestTarget {
        let (parts, _) = Request::builder()
            .uri(req.uri().clone())
            .header(
                header::HOST,
                req.headers()
                    .get(header::HOST)
                    .cloned()
                    .unwrap_or(HeaderValue::from_static("unused")),
            )
            .body(())
            .unwrap()
            .into_parts();
        let mut parts = parts;
        if req.headers().get(header::HOST).is_none() {
            parts.headers.remove(header::HOST);
        }
        RequestTarget::from_parts(&parts).unwrap().arrived(Arrival {
            secure: true,
            listener_port: Some(8443),
            https_fallback: false,
        })
    }

    /// A public HTTP/1.1 request as the proxy hands it on (hop-by-hop fields stripped).
    fn from_h1(path: &str, host: &str) -> Request<Body> {
        Request::get(path)
            .header(header::HOST, host)
            .header("x-kept", "1")
            .body(empty())
            .unwrap()
    }

    /// A public HTTP/2 request: the target in the URI, no `Host`.
    fn from_h2(uri: &str) -> Request<Body> {
        let mut req = Request::get(uri)
            .header("x-kept", "1")
            .body(empty())
            .unwrap();
        *req.version_mut() = Version::HTTP_2;
        req
    }

    /// What a shaped request says: method, target, version, fields, `:protocol`.
    fn head(req: &Request<Body>) -> (Method, String, Version, HeaderMap, Option<String>) {
        (
            req.method().clone(),
            req.uri().to_string(),
            req.version(),
            req.headers().clone(),
            req.extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_owned())
                .or_else(|| {
                    req.extensions()
                        .get::<ptth_h3::Protocol>()
                        .map(|p| format!("h3:{}", p.0))
                }),
        )
    }

    /// RFC 9220 §3: towards reversed HTTP/3 the handshake is an extended CONNECT carried as
    /// ptth-h3's `:protocol`; from an HTTP/3 public request back to HTTP/1.1 it is an
    /// `Upgrade` again, with the key the gateway generated.
    #[test]
    fn a_websocket_towards_http3_is_an_rfc9220_extended_connect() {
        let ws = WebSocket {
            key: Some(HeaderValue::from_static(KEY)),
            public: PublicForm::ExtendedConnect,
        };
        let h3 = shaped(
            from_h1("/chat", "app.example"),
            Form::Pseudo(Version::HTTP_3),
            Some(&ws),
        );
        assert_eq!(h3.method(), Method::CONNECT);
        assert_eq!(h3.version(), Version::HTTP_3);
        assert_eq!(head(&h3).4.as_deref(), Some("h3:websocket"));
        assert!(h3.headers().get(header::SEC_WEBSOCKET_KEY).is_none());
        assert_eq!(h3.uri(), "https://app.example/chat");
        let h1 = shaped(h3, Form::Origin, Some(&ws));
        assert_eq!(h1.method(), Method::GET);
        assert_eq!(head(&h1).4, None);
        assert_eq!(h1.headers()[header::SEC_WEBSOCKET_KEY], KEY);
        assert_eq!(h1.headers()[header::UPGRADE], "websocket");
    }

    fn shaped(mut req: Request<Body>, form: Form, ws: Option<&WebSocket>) -> Request<Body> {
        let target = target_of(&req);
        shape(
            &mut req,
            form,
            &Outbound {
                target: &target,
                websocket: ws,
            },
        );
        req
    }

    const FORMS: [Form; 3] = [
        Form::Origin,
        Form::Pseudo(Version::HTTP_2),
        Form::Pseudo(Version::HTTP_3),
    ];

    #[test]
    fn each_form_writes_the_target_its_own_way() {
        for public in [
            from_h1("/p?q=1", "App.Example:8443"),
            from_h2("https://app.example:8443/p?q=1"),
        ] {
            let public_head = head(&public);
            let target = target_of(&public);
            let mut h1 = shaped(clone(&public), Form::Origin, None);
            assert_eq!(h1.uri(), "/p?q=1", "{public_head:?}");
            // The authority as routing read it: the host lowercased.
            assert_eq!(h1.headers()[header::HOST], "app.example:8443");
            assert_eq!(h1.version(), Version::HTTP_11);
            assert_eq!(h1.headers()["x-kept"], "1");
            for (form, version) in [
                (Form::Pseudo(Version::HTTP_2), Version::HTTP_2),
                (Form::Pseudo(Version::HTTP_3), Version::HTTP_3),
            ] {
                let p = shaped(clone(&public), form, None);
                assert_eq!(p.uri(), "https://app.example:8443/p?q=1");
                assert!(p.headers().get(header::HOST).is_none());
                assert_eq!(p.version(), version);
                assert_eq!(p.method(), Method::GET);
            }
            // The request arrived on the TLS listener: `https`, whatever the URI said.
            h1 = shaped(h1, Form::Pseudo(Version::HTTP_2), None);
            assert_eq!(h1.uri().scheme(), Some(&Scheme::HTTPS));
            assert_eq!(target.authority(), "app.example:8443");
        }
        // A cleartext arrival keeps `http`.
        let mut req = from_h1("/", "app.example");
        let target = target_of(&req).arrived(Arrival {
            secure: false,
            listener_port: Some(8080),
            https_fallback: false,
        });
        shape(
            &mut req,
            Form::Pseudo(Version::HTTP_2),
            &Outbound {
                target: &target,
                websocket: None,
            },
        );
        assert_eq!(req.uri(), "http://app.example/");
    }

    #[test]
    fn a_websocket_handshake_is_translated_both_ways() {
        let ws = WebSocket {
            key: Some(HeaderValue::from_static(KEY)),
            ..Default::default()
        };
        // The public client's handshake, its Upgrade and Connection already stripped.
        let public = || {
            let mut req = from_h1("/chat", "app.example");
            req.headers_mut()
                .insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
            req
        };
        let h1 = shaped(public(), Form::Origin, Some(&ws));
        assert_eq!(h1.method(), Method::GET);
        assert_eq!(h1.headers()[header::UPGRADE], "websocket");
        assert_eq!(h1.headers()[header::CONNECTION], "upgrade");
        assert_eq!(h1.headers()[header::SEC_WEBSOCKET_KEY], KEY);
        // RFC 8441 §4 and §5: CONNECT with :protocol, no Upgrade, Connection or key.
        let h2 = shaped(h1, Form::Pseudo(Version::HTTP_2), Some(&ws));
        assert_eq!(h2.method(), Method::CONNECT);
        assert_eq!(head(&h2).4.as_deref(), Some("websocket"));
        for gone in [
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_KEY,
            header::HOST,
        ] {
            assert!(h2.headers().get(&gone).is_none(), "{gone}");
        }
        assert_eq!(h2.uri(), "https://app.example/chat");
        // And back: the key comes from the public handshake, not from the request.
        let back = shaped(h2, Form::Origin, Some(&ws));
        assert_eq!(back.method(), Method::GET);
        assert_eq!(head(&back).4, None);
        assert_eq!(back.headers()[header::SEC_WEBSOCKET_KEY], KEY);
        assert_eq!(back.headers()[header::UPGRADE], "websocket");
        assert_eq!(back.uri(), "/chat");
    }

    /// A request handed back by a connection that refused it (`SendError::NotSent`) was
    /// shaped for that connection; shaped again for another, it must be what shaping once
    /// gives.
    #[test]
    fn shaping_again_for_another_connection_gives_what_shaping_once_does() {
        let ws = WebSocket {
            key: Some(HeaderValue::from_static(KEY)),
            ..Default::default()
        };
        for websocket in [None, Some(&ws)] {
            for public in [
                || from_h1("/a/b?c", "app.example:8443"),
                || from_h1("/a/b?c", "APP.example:8443"),
                || from_h2("https://app.example:8443/a/b?c"),
                || from_h2("http://app.example/a/b?c"),
            ] {
                for first in FORMS {
                    for second in FORMS {
                        let target = target_of(&public());
                        let to = Outbound {
                            target: &target,
                            websocket,
                        };
                        let mut twice = public();
                        shape(&mut twice, first, &to);
                        shape(&mut twice, second, &to);
                        let mut once = public();
                        shape(&mut once, second, &to);
                        assert_eq!(
                            head(&twice),
                            head(&once),
                            "{first:?} then {second:?}, websocket {}",
                            websocket.is_some()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_field_is_the_authority_only_when_written_exactly_so() {
        let target = |host: &str| target_of(&from_h1("/", host));
        let t = target("app.example:8443");
        assert!(is_authority_of("app.example:8443", &t));
        for not in [
            "app.example",
            "App.example:8443",
            "app.example:08443",
            "app.example:+8443",
            "app.example:8443 ",
            "app.example:84430",
            "app.example.:8443",
        ] {
            assert!(!is_authority_of(not, &t), "{not}");
        }
        let t = target("app.example");
        assert!(is_authority_of("app.example", &t));
        assert!(!is_authority_of("app.example:80", &t));
    }

    fn accepted(answer: UpgradeAnswer) -> AcceptedUpgrade {
        match answer {
            UpgradeAnswer::Accepted(a) => a,
            other => panic!("not accepted: {other:?}"),
        }
    }

    fn clone(req: &Request<Body>) -> Request<Body> {
        let mut c = Request::new(empty());
        *c.method_mut() = req.method().clone();
        *c.uri_mut() = req.uri().clone();
        *c.version_mut() = req.version();
        *c.headers_mut() = req.headers().clone();
        c
    }

    /// Reads one request head from a scripted origin's end of the pipe.
    async fn read_head(far: &mut tokio::io::DuplexStream) -> String {
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = far.read(&mut byte).await.unwrap();
            assert_eq!(n, 1, "the pipe closed after {buf:?}");
            buf.push(byte[0]);
        }
        String::from_utf8(buf).unwrap()
    }

    async fn h1_pair() -> (Sender, tokio::task::JoinHandle<()>, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let (sender, task) = start_client(near, HttpVersion::Http1).await.unwrap();
        (sender, task, far)
    }

    #[tokio::test]
    async fn over_reversed_http1_the_origin_reads_origin_form_and_a_websocket_takes_the_connection()
    {
        let (sender, task, mut far) = h1_pair().await;
        assert_eq!(sender.capacity(), 1);
        assert_eq!(sender.carries_websocket(), Ok(()));
        // The authorisation request the admission sends first.
        let req = sender.gateway_request(ptth_auth::AUTHORIZE_PATH);
        let answer = tokio::spawn(async move {
            let head = read_head(&mut far).await;
            far.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            (head, far)
        });
        let res = sender.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let (head, mut far) = answer.await.unwrap();
        assert!(
            head.starts_with("GET /.well-known/ptth/authorize HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nhost: ptth-gateway\r\n"),
            "{head}"
        );

        // A WebSocket handshake, accepted with 101: the connection is the WebSocket's.
        let ws = WebSocket {
            key: Some(HeaderValue::from_static(KEY)),
            ..Default::default()
        };
        let public = from_h1("/chat", "app.example");
        let target = target_of(&public);
        let origin = tokio::spawn(async move {
            let head = read_head(&mut far).await;
            far.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            )
            .await
            .unwrap();
            (head, far)
        });
        let to = Outbound {
            target: &target,
            websocket: Some(&ws),
        };
        let mut res = sender.forward(public, &to).await.unwrap();
        let (head, _far) = origin.await.unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("GET /chat HTTP/1.1\r\n"), "{head}");
        for line in [
            "\r\nupgrade: websocket\r\n",
            "\r\nconnection: upgrade\r\n",
            "\r\nhost: app.example\r\n",
        ] {
            assert!(lower.contains(line), "{line:?} in {head}");
        }
        assert!(head.contains(KEY), "{head}");
        // The origin sent no accept value: the gateway derives it from the public key.
        let accepted = accepted(sender.accepted_upgrade(&res, &ws));
        assert_eq!(accepted.accept.unwrap(), ACCEPT);
        assert!(accepted.consumes_connection);
        let _upgraded = hyper::upgrade::on(&mut res).await.unwrap();
        task.await.unwrap();
        assert!(sender.is_closed());
        assert_eq!(sender.ended(), Some(CloseReason::Upgraded));
    }

    /// A public extended CONNECT carries no key, so the gateway is the WebSocket client of
    /// an HTTP/1.1 origin: a `101` whose accept value is missing or is not its key's fails
    /// (RFC 6455 §4.1), and still took the connection.
    #[tokio::test]
    async fn an_http1_origin_must_answer_the_gateways_own_key() {
        let ws = WebSocket {
            key: Some(HeaderValue::from_static(KEY)),
            public: PublicForm::ExtendedConnect,
        };
        let (sender, _task, _far) = h1_pair().await;
        let answer = |accept: Option<&'static str>| {
            let mut res = Response::new(empty());
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            if let Some(a) = accept {
                res.headers_mut()
                    .insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static(a));
            }
            res
        };
        for wrong in [None, Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")] {
            assert!(matches!(
                sender.accepted_upgrade(&answer(wrong), &ws),
                UpgradeAnswer::Invalid {
                    consumes_connection: true,
                    ..
                }
            ));
        }
        let ok = accepted(sender.accepted_upgrade(&answer(Some(ACCEPT)), &ws));
        assert_eq!(ok.accept.unwrap(), ACCEPT);
        // A public HTTP/1.1 client checks its own key: a missing value is derived for it.
        let public_h1 = WebSocket {
            key: Some(HeaderValue::from_static(KEY)),
            public: PublicForm::Upgrade,
        };
        let ok = accepted(sender.accepted_upgrade(&answer(None), &public_h1));
        assert_eq!(ok.accept.unwrap(), ACCEPT);
    }

    #[tokio::test]
    async fn an_http1_connection_says_why_it_ended() {
        // The origin closes between requests: an orderly close.
        let (sender, task, mut far) = h1_pair().await;
        let origin = tokio::spawn(async move {
            read_head(&mut far).await;
            far.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            far
        });
        let res = sender.send(from_h1("/", "app.example")).await.unwrap();
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
        assert!(!sender.is_closed());
        assert_eq!(sender.ended(), None);
        drop(origin.await.unwrap());
        task.await.unwrap();
        assert_eq!(sender.ended(), Some(CloseReason::Graceful));
        assert!(sender.is_closed());

        // The origin hangs up while the gateway waits for its answer. hyper reports that
        // to the request (the proxy's "origin failed the request"), and the connection
        // itself ends without an error of its own: the origin closed it.
        let (sender, task, mut far) = h1_pair().await;
        let origin = tokio::spawn(async move { read_head(&mut far).await });
        let sent = sender.send(from_h1("/", "app.example")).await;
        assert!(matches!(sent, Err(SendError::Failed(_))), "{sent:?}");
        origin.await.unwrap();
        task.await.unwrap();
        assert_eq!(sender.ended(), Some(CloseReason::Graceful));

        // The origin goes away before its first answer: the transport was lost.
        let (sender, task, far) = h1_pair().await;
        drop(far);
        task.await.unwrap();
        assert_eq!(sender.ended(), Some(CloseReason::TransportLost));

        // A WebSocket the origin refused leaves the connection an ordinary one.
        let (sender, task, mut far) = h1_pair().await;
        let ws = WebSocket::default();
        let public = from_h1("/chat", "app.example");
        let target = target_of(&public);
        let origin = tokio::spawn(async move {
            read_head(&mut far).await;
            far.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            far
        });
        let to = Outbound {
            target: &target,
            websocket: Some(&ws),
        };
        let res = sender.forward(public, &to).await.unwrap();
        assert!(matches!(
            sender.accepted_upgrade(&res, &ws),
            UpgradeAnswer::Refused
        ));
        drop(res);
        drop(origin.await.unwrap());
        task.await.unwrap();
        assert_eq!(sender.ended(), Some(CloseReason::Graceful));
    }

    #[tokio::test]
    async fn only_http1_drains_an_abandoned_body_and_only_a_bounded_one() {
        let (h1, _task, _far) = h1_pair().await;
        let mut small = full(vec![0u8; 1024]);
        assert!(h1.drain_abandoned(&mut small).is_some());
        assert!(http_body::Body::is_end_stream(&small), "the drain took it");
        let mut big = full(vec![0u8; DRAIN_LIMIT as usize + 1]);
        assert!(h1.drain_abandoned(&mut big).is_none());
        let mut ended = empty();
        assert!(h1.drain_abandoned(&mut ended).is_none());
        let (h2, _h2_task, _origin) = h2_pair().await;
        let mut small = full(vec![0u8; 1024]);
        assert!(h2.drain_abandoned(&mut small).is_none());
        let mut small = full(vec![0u8; 1024]);
        assert!(h1.drain_abandoned(&mut small).unwrap().await);
    }

    /// A reversed HTTP/2 connection whose origin end is hyper's server (as `ptth-origin`
    /// runs it), answering every request with what it received in `x-*` fields.
    async fn h2_pair() -> (
        Sender,
        tokio::task::JoinHandle<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let echo = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let mut res = Response::new(empty());
            let h = res.headers_mut();
            let text = |s: String| HeaderValue::from_str(&s).unwrap();
            h.insert("x-method", text(req.method().to_string()));
            h.insert("x-uri", text(req.uri().to_string()));
            if let Some(p) = req.extensions().get::<hyper::ext::Protocol>() {
                h.insert("x-protocol", text(p.as_str().to_owned()));
            }
            for name in [header::HOST, header::UPGRADE, header::SEC_WEBSOCKET_KEY] {
                if let Some(v) = req.headers().get(&name) {
                    h.insert(
                        format!("x-{name}").parse::<http::HeaderName>().unwrap(),
                        v.clone(),
                    );
                }
            }
            Ok::<_, std::convert::Infallible>(res)
        });
        let origin = tokio::spawn(async move {
            let _ = ptth_h2::reversed::serve(far, echo, Default::default()).await;
        });
        let (sender, task) = start_client(near, HttpVersion::Http2).await.unwrap();
        (sender, task, origin)
    }

    #[tokio::test]
    async fn over_reversed_http2_the_origin_reads_pseudo_headers_and_extended_connect() {
        let (sender, _task, origin) = h2_pair().await;
        let req = sender.gateway_request(ptth_auth::AUTHORIZE_PATH);
        let res = sender.send(req).await.unwrap();
        assert_eq!(
            res.headers()["x-uri"],
            "https://ptth-gateway/.well-known/ptth/authorize"
        );
        assert!(res.headers().get("x-host").is_none());
        // The origin's SETTINGS have arrived with that answer: extended CONNECT and its
        // stream limit.
        assert_eq!(sender.carries_websocket(), Ok(()));
        assert_eq!(sender.capacity(), 256);

        let public = from_h1("/p?q", "app.example:8443");
        let target = target_of(&public);
        let to = Outbound {
            target: &target,
            websocket: None,
        };
        let res = sender.forward(public, &to).await.unwrap();
        assert_eq!(res.headers()["x-method"], "GET");
        assert_eq!(res.headers()["x-uri"], "https://app.example:8443/p?q");

        let ws = WebSocket {
            key: Some(HeaderValue::from_static(KEY)),
            ..Default::default()
        };
        let mut public = from_h1("/chat", "app.example");
        public
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(KEY));
        let target = target_of(&public);
        let to = Outbound {
            target: &target,
            websocket: Some(&ws),
        };
        let res = sender.forward(public, &to).await.unwrap();
        assert_eq!(res.headers()["x-method"], "CONNECT");
        assert_eq!(res.headers()["x-protocol"], "websocket");
        assert!(res.headers().get("x-upgrade").is_none());
        assert!(res.headers().get("x-sec-websocket-key").is_none());
        // A 2xx accepts it; the public client still gets the accept value of its key, and
        // the connection goes on serving other streams.
        let accepted = accepted(sender.accepted_upgrade(&res, &ws));
        assert_eq!(accepted.accept.unwrap(), ACCEPT);
        assert!(!accepted.consumes_connection);
        assert!(!sender.is_closed());

        origin.abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sender.ended().is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the end went unseen"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(sender.is_closed());
    }

    /// A stopping gateway ends an idle reversed HTTP/2 connection by stopping its driver
    /// (`Registry::drain_unless` aborts it once the connection is idle) and dropping it.
    /// h2's client has no call to send GOAWAY, but it closes a client connection that has
    /// no stream and no request handle left with GOAWAY(NO_ERROR), and the aborted driver
    /// leaves the connection running for that (`ptth_h2::client::drive`): the origin reads
    /// GOAWAY, not a bare close.
    #[tokio::test]
    async fn a_reversed_http2_connection_whose_driver_stops_ends_with_goaway() {
        let (near, mut far) = tokio::io::duplex(64 * 1024);
        let (sender, task) = start_client(near, HttpVersion::Http2).await.unwrap();
        // The origin's SETTINGS (empty: the defaults).
        far.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        task.abort();
        // The registry then drops the connection, and with it this sender (the last
        // request handle).
        let _ = task.await;
        drop(sender);
        let mut seen = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), far.read_to_end(&mut seen))
            .await
            .expect("the gateway closes the connection")
            .unwrap();
        // RFC 9113 §3.4: the 24-octet preface, then frames of a 9-octet header each.
        let mut frames = seen.get(24..).unwrap_or_default();
        let mut goaway = None;
        while frames.len() >= 9 {
            let len =
                usize::from(frames[0]) << 16 | usize::from(frames[1]) << 8 | usize::from(frames[2]);
            let (kind, payload) = (frames[3], &frames[9..9 + len]);
            if kind == 7 {
                // GOAWAY: last stream ID (4 octets), error code (4 octets).
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            frames = &frames[9 + len..];
        }
        assert_eq!(goaway, Some(0), "GOAWAY with NO_ERROR in {seen:?}");
    }
}
