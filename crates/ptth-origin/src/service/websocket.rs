//! WebSocket opening handshakes for every HTTP version (RFC 6455 Upgrade, RFC 8441 and RFC 9220 extended CONNECT), the tunnel a service takes after it, and the echo loop.
//!
//! A gateway may reach the origin over HTTP/1.1, where a WebSocket starts as a `GET` with
//! `Upgrade: websocket` and ends in `101 Switching Protocols`, or over HTTP/2 or HTTP/3,
//! where it starts as an extended `CONNECT` with `:protocol = websocket` and ends in `200`.
//! [`Handshake`] validates either form and builds the matching answer; the caller then takes
//! the tunnel with [`on_upgrade`] (hyper's upgrade on HTTP/1.1, the request stream on
//! HTTP/2, handed over by the origin's HTTP/2 server, `ptth_h2::server`, and on HTTP/3, by
//! `serve_h3_connect`) and runs the WebSocket protocol over it.

use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::ext::Protocol;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{empty, text_response, Body};

/// The HTTP/1.1 `Upgrade` token and the RFC 8441 `:protocol` value that name WebSocket.
pub const WEBSOCKET_PROTOCOL: &str = "websocket";

/// The only `Sec-WebSocket-Version` defined (RFC 6455 §4.1).
pub const WEBSOCKET_VERSION: &str = "13";

/// A validated WebSocket opening request, in the form it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handshake {
    /// RFC 6455 over HTTP/1.1: answered with `101` carrying this `Sec-WebSocket-Accept`.
    Upgrade {
        /// The value derived from the request's `Sec-WebSocket-Key`.
        accept: HeaderValue,
    },
    /// RFC 8441 over HTTP/2: answered with `200` and no accept key.
    ExtendedConnect,
}

/// Why a request to a WebSocket endpoint is not a valid opening handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// HTTP/1.1 WebSocket requests must be `GET` (RFC 6455 §4.1, item 2).
    #[error("a WebSocket upgrade must use GET, not {0}")]
    WrongMethod(Method),
    /// There was no `Upgrade: websocket`, or no `Connection: upgrade` next to it.
    #[error("not a WebSocket upgrade: expected `Upgrade: websocket` and `Connection: upgrade`")]
    NotUpgrade,
    /// `Sec-WebSocket-Key` is absent or is not the base64 form of 16 bytes.
    #[error("missing or malformed Sec-WebSocket-Key")]
    BadKey,
    /// `Sec-WebSocket-Version` is absent or is not 13.
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    UnsupportedVersion,
    /// An extended CONNECT asked for a protocol other than WebSocket.
    #[error("extended CONNECT for protocol {0:?}, only \"websocket\" is served here")]
    WrongProtocol(String),
    /// A plain CONNECT (without `:protocol`) is a tunnel request, not a WebSocket.
    #[error("CONNECT without :protocol is not a WebSocket request")]
    PlainConnect,
}

impl HandshakeError {
    /// The `400` answer to send instead of switching protocols.
    pub fn response(&self) -> Response<Body> {
        let mut response = text_response(StatusCode::BAD_REQUEST, self.to_string());
        if *self == HandshakeError::UnsupportedVersion {
            // RFC 6455 §4.4: a server rejecting the version sends the versions it does support.
            response.headers_mut().insert(
                SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(WEBSOCKET_VERSION),
            );
        }
        response
    }
}

impl Handshake {
    /// Validates `request` as a WebSocket opening handshake in either HTTP form.
    ///
    /// # Errors
    ///
    /// [`HandshakeError`] names the first requirement of RFC 6455 §4.2.1 (or RFC 8441 §4)
    /// the request misses; [`HandshakeError::response`] turns it into the `400` to send.
    pub fn from_request<B>(request: &Request<B>) -> Result<Self, HandshakeError> {
        let headers = request.headers();
        if request.method() == Method::CONNECT {
            // RFC 8441 §4: the extended CONNECT carries `:protocol`, which hyper surfaces as
            // the `Protocol` extension; the remaining `sec-websocket-*` fields keep their meaning.
            let protocol = request
                .extensions()
                .get::<Protocol>()
                .ok_or(HandshakeError::PlainConnect)?;
            if !protocol.as_str().eq_ignore_ascii_case(WEBSOCKET_PROTOCOL) {
                return Err(HandshakeError::WrongProtocol(protocol.as_str().to_owned()));
            }
            check_version(headers)?;
            return Ok(Handshake::ExtendedConnect);
        }
        if !is_upgrade_to(headers, WEBSOCKET_PROTOCOL) {
            return Err(HandshakeError::NotUpgrade);
        }
        if request.method() != Method::GET {
            return Err(HandshakeError::WrongMethod(request.method().clone()));
        }
        check_version(headers)?;
        let key = headers
            .get(SEC_WEBSOCKET_KEY)
            .filter(|key| is_valid_key(key.as_bytes()))
            .ok_or(HandshakeError::BadKey)?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| HandshakeError::BadKey)?;
        Ok(Handshake::Upgrade { accept })
    }

    /// The answer that tells the client the WebSocket is open.
    pub fn response(&self) -> Response<Body> {
        let mut response = Response::new(empty());
        match self {
            Handshake::Upgrade { accept } => {
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(UPGRADE, HeaderValue::from_static(WEBSOCKET_PROTOCOL));
                headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(SEC_WEBSOCKET_ACCEPT, accept.clone());
            }
            // RFC 8441 §5: a 2xx answer opens the stream; no Sec-WebSocket-Accept is sent.
            Handshake::ExtendedConnect => *response.status_mut() = StatusCode::OK,
        }
        response
    }
}

/// Whether the comma-separated header `name` lists `token` (case-insensitively).
pub(crate) fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            // A TE item may carry parameters (`trailers;q=1`); only the token is compared.
            let item = item.split(';').next().unwrap_or_default();
            item.trim().eq_ignore_ascii_case(token)
        })
}

/// Whether `headers` ask for an HTTP/1.1 upgrade to `protocol`.
pub(crate) fn is_upgrade_to(headers: &HeaderMap, protocol: &str) -> bool {
    header_has_token(headers, &CONNECTION, "upgrade")
        && headers.get_all(UPGRADE).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value.split(',').any(|item| {
                    // An Upgrade item may carry a version (`websocket/13`); the name decides.
                    let name = item.trim().split('/').next().unwrap_or_default();
                    name.eq_ignore_ascii_case(protocol)
                })
            })
        })
}

fn check_version(headers: &HeaderMap) -> Result<(), HandshakeError> {
    match headers.get(SEC_WEBSOCKET_VERSION) {
        Some(version) if version.as_bytes().trim_ascii() == WEBSOCKET_VERSION.as_bytes() => Ok(()),
        _ => Err(HandshakeError::UnsupportedVersion),
    }
}

/// RFC 6455 §4.1: the key is a base64-encoded 16-byte nonce, so exactly 22 base64 digits
/// followed by `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// A tunnel's byte stream, whatever carries it.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> TunnelIo for T {}

/// The byte stream of an accepted upgrade or extended CONNECT.
pub type Tunnel = Box<dyn TunnelIo>;

/// Where [`serve_h3_connect`] hands over an HTTP/3 extended CONNECT stream once the 2xx is
/// sent: hyper has no upgrade for HTTP/3, so it rides in the request's extensions (which
/// must be `Clone`).
#[derive(Clone)]
struct H3TunnelSlot(Arc<Mutex<Option<oneshot::Receiver<Tunnel>>>>);

/// The tunnel a service takes for a request it answers with `101` (HTTP/1.1) or `2xx` to an
/// extended CONNECT; it opens once that answer has been sent.
pub enum OnTunnel {
    /// HTTP/1.1 (and HTTP/2 served by hyper, as in tests and examples): hyper's upgrade.
    Hyper(OnUpgrade),
    /// HTTP/2 served by the origin (`ptth_h2::server`): the request stream, once the 2xx
    /// answer's headers are sent.
    H2(ptth_h2::server::OnTunnel),
    /// HTTP/3: the request stream.
    H3(oneshot::Receiver<Tunnel>),
}

impl std::fmt::Debug for OnTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnTunnel::Hyper(_) => "OnTunnel::Hyper",
            OnTunnel::H2(_) => "OnTunnel::H2",
            OnTunnel::H3(_) => "OnTunnel::H3",
        })
    }
}

impl std::future::Future for OnTunnel {
    type Output = std::io::Result<Tunnel>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        match self.get_mut() {
            OnTunnel::Hyper(on) => match std::pin::Pin::new(on).poll(cx) {
                Poll::Ready(Ok(upgraded)) => Poll::Ready(Ok(Box::new(TokioIo::new(upgraded)))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Pending => Poll::Pending,
            },
            OnTunnel::H2(on) => match std::pin::Pin::new(on).poll(cx) {
                Poll::Ready(Ok(stream)) => Poll::Ready(Ok(Box::new(stream))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(std::io::Error::other(e))),
                Poll::Pending => Poll::Pending,
            },
            OnTunnel::H3(rx) => match std::pin::Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(io)) => Poll::Ready(Ok(io)),
                Poll::Ready(Err(_)) => Poll::Ready(Err(std::io::Error::other(
                    "the HTTP/3 stream closed before the tunnel opened",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Claims the tunnel of `request`: the request stream if the request came over HTTP/2 or
/// HTTP/3, hyper's upgrade otherwise. Call it before returning the answer.
///
/// Use this rather than `hyper::upgrade::on`: the origin serves reversed HTTP/2 with its own
/// server (`ptth_h2::server`), not hyper's, so hyper's upgrade of an HTTP/2 extended CONNECT
/// fails there.
pub fn on_upgrade<B>(request: &mut Request<B>) -> OnTunnel {
    if let Some(on) = ptth_h2::server::on_tunnel(request) {
        return OnTunnel::H2(on);
    }
    if let Some(rx) = request
        .extensions()
        .get::<H3TunnelSlot>()
        .and_then(|slot| slot.0.lock().unwrap_or_else(|e| e.into_inner()).take())
    {
        return OnTunnel::H3(rx);
    }
    OnTunnel::Hyper(hyper::upgrade::on(request))
}

/// Serves an HTTP/3 CONNECT from the gateway. RFC 9220 §3: an extended CONNECT with
/// `:protocol = websocket` is the WebSocket handshake; it is handed to `service` as the
/// same request an HTTP/2 one would be (`hyper::ext::Protocol`), and when the service
/// answers 2xx the request stream becomes the tunnel it claimed with [`on_upgrade`]. Any
/// other CONNECT is refused with 501 and a reason.
pub(crate) async fn serve_h3_connect<F>(
    mut request: Request<crate::serve::RequestBody>,
    respond: ptth_h3::ResponseSender,
    service: F,
) where
    F: FnOnce(
        Request<crate::serve::RequestBody>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<Response<crate::serve::ResponseBody>, std::convert::Infallible>,
                > + Send,
        >,
    >,
{
    let websocket = request
        .extensions()
        .get::<ptth_h3::Protocol>()
        .is_some_and(|p| p.0.eq_ignore_ascii_case(WEBSOCKET_PROTOCOL));
    if !websocket {
        let refusal = text_response(
            StatusCode::NOT_IMPLEMENTED,
            "this origin serves CONNECT over HTTP/3 only as an extended CONNECT for websocket (RFC 9220)",
        );
        if let Err(error) = respond.send_response(refusal).await {
            tracing::debug!(%error, "HTTP/3 CONNECT refusal failed");
        }
        return;
    }
    request.extensions_mut().remove::<ptth_h3::Protocol>();
    request
        .extensions_mut()
        .insert(Protocol::from_static(WEBSOCKET_PROTOCOL));
    let (tx, rx) = oneshot::channel();
    request
        .extensions_mut()
        .insert(H3TunnelSlot(Arc::new(Mutex::new(Some(rx)))));
    let response = match service(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if !response.status().is_success() {
        if let Err(error) = respond.send_response(response).await {
            tracing::debug!(%error, "HTTP/3 CONNECT answer failed");
        }
        return;
    }
    let (parts, _) = response.into_parts();
    match respond
        .send_connect_response(Response::from_parts(parts, ()))
        .await
    {
        // The service's tunnel task waits for it; if that is gone, dropping ends the stream.
        Ok(stream) => drop(tx.send(Box::new(stream))),
        Err(error) => tracing::debug!(%error, "HTTP/3 CONNECT answer failed"),
    }
}

/// Waits for the tunnel to open, then echoes WebSocket messages on it.
///
/// The tunnel must be claimed ([`on_upgrade`]) before the handshake response is returned,
/// because the upgrade completes only after that response is written.
pub(crate) fn spawn_echo(on_upgrade: OnTunnel) {
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(tunnel) => {
                if let Err(error) = echo(tunnel).await {
                    tracing::debug!(%error, "websocket echo ended with an error");
                }
            }
            Err(error) => tracing::debug!(%error, "websocket upgrade did not complete"),
        }
    });
}

/// Runs the server side of a WebSocket on `io`, sending every text and binary message back.
pub async fn echo<S>(io: S) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};

    let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(message) = socket.next().await {
        match message? {
            message @ (Message::Text(_) | Message::Binary(_)) => socket.send(message).await?,
            // tungstenite queues the Pong for a Ping and the reply to a Close by itself and
            // flushes them on the next read, so the loop only has to keep reading until the
            // stream reports its end.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {}
        }
    }
    // End the tunnel cleanly (FIN, END_STREAM): dropping it could reset an HTTP/2 or
    // HTTP/3 stream and discard the close reply still queued on it.
    use tokio::io::AsyncWriteExt;
    socket.get_mut().shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_request() -> http::request::Builder {
        Request::get("/ws")
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn rfc6455_sample_key_gives_sample_accept() {
        let request = upgrade_request().body(()).unwrap();
        let handshake = Handshake::from_request(&request).unwrap();
        // RFC 6455 §1.3 works this exact example.
        assert_eq!(
            handshake,
            Handshake::Upgrade {
                accept: HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            }
        );
        let response = handshake.response();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[UPGRADE], "websocket");
    }

    #[test]
    fn extended_connect_is_accepted_with_200() {
        let mut request = Request::connect("http://example.test/ws")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        let handshake = Handshake::from_request(&request).unwrap();
        assert_eq!(handshake, Handshake::ExtendedConnect);
        let response = handshake.response();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(SEC_WEBSOCKET_ACCEPT).is_none());
    }

    #[test]
    fn bad_handshakes_are_named() {
        let plain = Request::get("/ws").body(()).unwrap();
        assert_eq!(
            Handshake::from_request(&plain),
            Err(HandshakeError::NotUpgrade)
        );

        let post = upgrade_request().method(Method::POST).body(()).unwrap();
        assert_eq!(
            Handshake::from_request(&post),
            Err(HandshakeError::WrongMethod(Method::POST))
        );

        let mut old = upgrade_request().body(()).unwrap();
        old.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        let error = Handshake::from_request(&old).unwrap_err();
        assert_eq!(error, HandshakeError::UnsupportedVersion);
        assert_eq!(error.response().headers()[SEC_WEBSOCKET_VERSION], "13");

        let mut short_key = upgrade_request().body(()).unwrap();
        short_key
            .headers_mut()
            .insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("abc=="));
        assert_eq!(
            Handshake::from_request(&short_key),
            Err(HandshakeError::BadKey)
        );

        let mut other = Request::connect("http://example.test/")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .body(())
            .unwrap();
        other
            .extensions_mut()
            .insert(Protocol::from_static("connect-udp"));
        assert_eq!(
            Handshake::from_request(&other),
            Err(HandshakeError::WrongProtocol("connect-udp".into()))
        );

        let connect = Request::connect("example.test:443").body(()).unwrap();
        assert_eq!(
            Handshake::from_request(&connect),
            Err(HandshakeError::PlainConnect)
        );
    }

    #[test]
    fn token_lists_ignore_case_and_parameters() {
        let mut headers = HeaderMap::new();
        headers.insert("te", HeaderValue::from_static("gzip, Trailers;q=1"));
        assert!(header_has_token(&headers, &http::header::TE, "trailers"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("h2c, WebSocket/13"));
        assert!(is_upgrade_to(&headers, "websocket"));
        assert!(!is_upgrade_to(&headers, "h3"));
    }
}
