//! The services an origin serves over a reversed connection: the built-in demo and the upstream proxy.
//!
//! The serving layer runs hyper 1.x servers over a connection the origin dialled and hands
//! every request to a `tower::Service<http::Request<B>>`. This module provides the two such
//! services the `ptth-origin` binary offers:
//!
//! - [`Hello`] (`ptth-origin --hello`): a self-contained demo with endpoints that exercise
//!   streaming bodies, trailers, server-sent events and WebSockets, used by the end-to-end tests.
//! - [`Proxy`] (`ptth-origin --upstream http://..`): forwards every request to a local
//!   HTTP/1.1 upstream, streaming bodies both ways and tunnelling upgrades.
//!
//! Neither service does any network IO towards the gateway itself; both only see requests.
//! Both answer every failure with an HTTP response, so their `Error` type is `Infallible`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use sync_wrapper::SyncWrapper;

mod h1_pool;
pub mod hello;
pub mod proxy;
pub mod routes;
pub mod upstream;
pub mod websocket;

pub use hello::Hello;
pub use proxy::{Proxy, ProxyError, ProxyOptions};
pub use routes::{HostPattern, Route, Routes};
pub use upstream::{Upstream, UpstreamTls};

/// The error type carried by every body these services produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every service in this module.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// The future returned by both services; it never fails because every error is a response.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, std::convert::Infallible>> + Send>>;

/// A body holding `data` in one frame.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with no frames.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Boxes any `Send` body into [`Body`] without copying or buffering its frames.
///
/// [`Body`] requires `Sync`, but request bodies handed to a service are only promised to be
/// `Send`. Because polling a body needs exclusive access anyway, `SyncWrapper` can make the
/// body `Sync` soundly, so the frames (trailers included) pass through untouched.
pub(crate) fn sync_boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    SyncBody {
        inner: SyncWrapper::new(Box::pin(body)),
    }
    .map_err(Into::into)
    .boxed()
}

/// A `Send` body made `Sync` by only ever being reached through `&mut`.
struct SyncBody<B> {
    inner: SyncWrapper<Pin<Box<B>>>,
}

impl<B> HttpBody for SyncBody<B>
where
    B: HttpBody,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.get_mut().inner.get_mut().as_mut().poll_frame(cx)
    }

    // `is_end_stream` and `size_hint` take `&self`, which `SyncWrapper` cannot give out, so
    // they fall back to the trait defaults ("unknown"). Callers that need an exact length
    // (content-length) read it from the headers, which are forwarded unchanged.
    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// An answer a service gives itself instead of the one asked for: a status and a reason.
///
/// Helpers return this rather than a whole `Response`, which keeps their `Result`s small.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: http::StatusCode,
    reason: String,
}

impl Refusal {
    pub(crate) fn new(status: http::StatusCode, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    pub(crate) fn into_response(self) -> http::Response<Body> {
        text_response(self.status, self.reason)
    }
}

/// A plain-text response with `status`, used for every error the services answer themselves.
pub(crate) fn text_response(
    status: http::StatusCode,
    text: impl Into<String>,
) -> http::Response<Body> {
    let mut text = text.into();
    text.push('\n');
    let mut response = http::Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Loopback servers for the tests of this module, run the way the serving layer runs them.
#[cfg(test)]
pub(crate) mod test_support {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use futures_util::{SinkExt, StreamExt};
    use http::{Request, StatusCode};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;
    use tower::ServiceExt;

    /// Which hyper server runs on the loopback port.
    #[derive(Debug, Clone, Copy)]
    pub(crate) enum Server {
        Http1,
        Http2,
    }

    /// Serves `service` on a fresh loopback port until the test's runtime ends.
    pub(crate) async fn serve<S>(service: S, server: Server) -> SocketAddr
    where
        S: tower::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<super::Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let service = service_fn(move |request| service.clone().oneshot(request));
                    let result = match server {
                        Server::Http1 => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .with_upgrades()
                                .await
                        }
                        Server::Http2 => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .enable_connect_protocol()
                                .serve_connection(io, service)
                                .await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(%error, "test connection ended");
                    }
                });
            }
        });
        addr
    }

    /// Sends a text and a binary message, checks both come back, and closes cleanly.
    pub(crate) async fn check_echo<S>(mut socket: tokio_tungstenite::WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        for message in [
            Message::text("hello over ptth"),
            Message::binary(vec![0u8, 1, 2, 255]),
        ] {
            socket.send(message.clone()).await.unwrap();
            assert_eq!(socket.next().await.unwrap().unwrap(), message);
        }
        socket.close(None).await.unwrap();
        // The server answers the close, after which the stream ends.
        while let Some(message) = socket.next().await {
            assert!(matches!(message, Ok(Message::Close(_))), "{message:?}");
        }
    }

    /// Opens a WebSocket to `addr` with an RFC 8441 extended CONNECT over HTTP/2.
    pub(crate) async fn connect_h2_websocket(
        addr: std::net::SocketAddr,
    ) -> tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>> {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        // An extended CONNECT may only be sent once the server's SETTINGS have enabled it,
        // and an ordinary request first is the simplest way to wait for them.
        let warmup = Request::get(format!("http://{addr}/"))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        sender.send_request(warmup).await.unwrap();

        let mut request = Request::connect(format!("http://{addr}/ws"))
            .header(http::header::SEC_WEBSOCKET_VERSION, "13")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let mut response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response
            .headers()
            .get(http::header::SEC_WEBSOCKET_ACCEPT)
            .is_none());
        let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
        tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sync_boxed_keeps_data_and_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-t", http::HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Ok(Frame::data(Bytes::from_static(b"cd"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let collected = sync_boxed(body).collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"abcd"));
    }

    #[tokio::test]
    async fn full_and_empty() {
        assert_eq!(full("x").collect().await.unwrap().to_bytes(), "x");
        assert!(empty().collect().await.unwrap().to_bytes().is_empty());
    }
}
