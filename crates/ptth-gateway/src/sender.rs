//! Sending one request over a reversed connection, whatever its HTTP version.

use crate::message::{Body, BoxError};
use http::{Request, Response};
use ptth_core::HttpVersion;
use ptth_h3::H3Connection;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

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
            // connection grant `ptth_h3::transport::MAX_BIDI_STREAMS`, and `open_bi` waits beyond it.
            Sender::H3(..) => ptth_h3::transport::MAX_BIDI_STREAMS as usize,
        }
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(_, closed) => closed.load(std::sync::atomic::Ordering::Acquire),
            Sender::H2(s, _) => s.is_closed(),
            // A GOAWAY from the origin means no new request will be processed here.
            Sender::H3(_, conn, quic) => h3_gone(conn, quic),
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
                if h3_gone(conn, quic) {
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
            let closed = Arc::new(AtomicBool::new(false));
            let flag = closed.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "reversed HTTP/1.1 connection ended");
                }
                flag.store(true, std::sync::atomic::Ordering::Release);
            });
            Ok((Sender::H1(tokio::sync::Mutex::new(send), closed), task))
        }
        HttpVersion::Http2 => {
            let (send, conn) = ptth_h2::reversed::handshake(io, Default::default())
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            let settings = Arc::new(ptth_h2::PeerSettings::default());
            let s = settings.clone();
            let task = tokio::spawn(async move {
                if let Err(e) = ptth_h2::reversed::drive(conn, s).await {
                    // Every request on it fails with the connection: say why, with the
                    // causes (hyper's own text is only "http2 error").
                    tracing::warn!(error = %error_chain(&e), "reversed HTTP/2 connection ended with an error");
                }
            });
            Ok((Sender::H2(send, settings), task))
        }
        HttpVersion::Http3 => Err("HTTP/3 is not carried over TCP".into()),
    }
}

/// Whether a reversed HTTP/3 connection can take no new request: closed, or the origin
/// sent GOAWAY (RFC 9114 §5.2: the client "MUST NOT initiate new requests").
fn h3_gone(conn: &H3Connection, quic: &quinn::Connection) -> bool {
    conn.peer_goaway().is_some() || quic.close_reason().is_some()
}

/// `error: cause: cause …`, for errors whose own text hides the reason.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
