//! Sending one request over a reversed connection, whatever its HTTP version.

use bytes::Bytes;
use http::{Request, Response};
use std::sync::Arc;

/// Any error a body may produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The streaming body type every forwarded message uses.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The request-sending half of a reversed connection.
#[derive(Debug)]
pub enum Sender {
    /// Reversed HTTP/1.1: one request at a time.
    H1(
        tokio::sync::Mutex<ptth_h1::reversed::Sender>,
        Arc<std::sync::atomic::AtomicBool>,
    ),
    /// Reversed HTTP/2: multiplexed; capacity from the origin's SETTINGS.
    H2(ptth_h2::reversed::Sender, Arc<ptth_h2::PeerSettings>),
    /// Reversed HTTP/3 (Potato `rh3`, draft-bt `h3-reverse`, PTTH -00 `OPTIONS`):
    /// multiplexed on QUIC streams; capacity is the bidi stream limit the origin grants.
    H3(
        ptth_h3::SendRequest,
        Arc<ptth_h3::H3Connection>,
        quinn::Connection,
    ),
}

/// How a send failed, and whether the request may go to another connection.
#[derive(Debug)]
pub enum SendError {
    /// The connection refused the request before any of it was sent: retry elsewhere.
    NotSent(Box<Request<Body>>, BoxError),
    /// The request was (maybe partly) sent and failed: the origin failed it.
    Failed(BoxError),
}

impl Sender {
    /// Requests this connection carries at once.
    pub fn capacity(&self) -> usize {
        match self {
            Sender::H1(..) => 1,
            Sender::H2(_, settings) => settings.max_send_streams().clamp(1, 1 << 16),
            // quinn does not expose the peer's MAX_STREAMS; both ends of a ptth QUIC
            // connection grant `quic::MAX_BIDI_STREAMS`, and `open_bi` waits beyond it.
            Sender::H3(..) => crate::quic::MAX_BIDI_STREAMS as usize,
        }
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(_, closed) => closed.load(std::sync::atomic::Ordering::Acquire),
            Sender::H2(s, _) => s.is_closed(),
            // A GOAWAY from the origin means no new request will be processed here.
            Sender::H3(_, conn, quic) => crate::quic::h3_gone(conn, quic),
        }
    }

    /// Whether the origin enabled RFC 8441 extended CONNECT (WebSocket over HTTP/2).
    pub fn extended_connect(&self) -> bool {
        match self {
            Sender::H1(..) | Sender::H3(..) => false,
            Sender::H2(_, settings) => settings.extended_connect(),
        }
    }

    /// Whether this is a reversed HTTP/1.1 connection.
    pub fn is_h1(&self) -> bool {
        matches!(self, Sender::H1(..))
    }

    /// Whether this is a reversed HTTP/2 connection.
    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(..))
    }

    /// Whether this is a reversed HTTP/3 connection.
    pub fn is_h3(&self) -> bool {
        matches!(self, Sender::H3(..))
    }

    /// Sends `req`, returning the origin's response head and streaming body. An HTTP/1.1
    /// or HTTP/2 upgrade stays reachable through `hyper::upgrade::on` on the response.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, SendError> {
        use http_body_util::BodyExt;
        let res = match self {
            Sender::H1(lock, _) => {
                let mut s = lock.lock().await;
                if let Err(e) = s.ready().await {
                    return Err(SendError::NotSent(Box::new(req), Box::new(e)));
                }
                let fut = s.try_send_request(req);
                drop(s);
                fut.await.map_err(|mut e| match e.take_message() {
                    Some(req) => SendError::NotSent(Box::new(req), Box::new(e.into_error())),
                    None => SendError::Failed(Box::new(e.into_error())),
                })
            }
            Sender::H2(s, _) => {
                let mut s = s.clone();
                s.try_send_request(req)
                    .await
                    .map_err(|mut e| match e.take_message() {
                        Some(req) => SendError::NotSent(Box::new(req), Box::new(e.into_error())),
                        None => SendError::Failed(Box::new(e.into_error())),
                    })
            }
            Sender::H3(s, conn, quic) => {
                if crate::quic::h3_gone(conn, quic) {
                    return Err(SendError::NotSent(
                        Box::new(req),
                        "the origin's HTTP/3 connection is closing".into(),
                    ));
                }
                let res = s
                    .send_request(req)
                    .await
                    .map_err(|e| SendError::Failed(Box::new(e)))?;
                return Ok(res.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()));
            }
        }?;
        Ok(res.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
    }
}

/// An empty body.
pub fn empty() -> Body {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
