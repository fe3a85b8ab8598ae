//! The origin's side of PTTH -01 extended CONNECT over HTTP/2 (RFC 8441).
//!
//! draft-kazuho-ptth-ptth-01 §3: the origin sends `CONNECT` with `:protocol = ptth` to the
//! well-known URI; on a 2xx carrying `alpn`, the chosen protocol runs directly on the DATA of
//! that stream. RFC 8441 §4: "A client MUST NOT send \[:protocol\] unless it has received
//! SETTINGS_ENABLE_CONNECT_PROTOCOL with a value of 1", so we wait for the gateway's SETTINGS.

use crate::reversed::{Body, Windows};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why an extended CONNECT setup did not produce a byte stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The HTTP/2 connection failed.
    #[error("setup connection failed: {0}")]
    Io(#[source] hyper::Error),
    /// RFC 8441 §3: the gateway never sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
    #[error(
        "the gateway does not enable extended CONNECT (RFC 8441 SETTINGS_ENABLE_CONNECT_PROTOCOL)"
    )]
    NotEnabled,
    /// The gateway answered with a non-2xx status.
    #[error("the gateway refused the setup with {status}: {reason}")]
    Refused {
        /// The gateway's status code.
        status: StatusCode,
        /// The gateway's explanation, from its response body (at most 1 KiB).
        reason: String,
        /// The response head, for validation by the caller.
        response: Box<Response<()>>,
    },
    /// The 2xx arrived but the stream could not be taken over.
    #[error("taking over the CONNECT stream failed: {0}")]
    Upgrade(#[source] hyper::Error),
}

/// A byte stream carried by one extended CONNECT stream, plus the task driving the outer
/// HTTP/2 connection (which lives as long as the stream).
#[derive(Debug)]
pub struct ConnectStream {
    /// The gateway's 2xx response head.
    pub response: Response<()>,
    /// The stream's bytes: the transposed protocol runs on it.
    pub stream: Upgraded,
}

/// Opens an HTTP/2 connection over `io` and sends `request` as an extended CONNECT with
/// `:protocol = protocol`. Returns the 2xx head and the byte stream.
pub async fn origin_connect<IO>(
    io: IO,
    mut request: Request<()>,
    protocol: &'static str,
) -> Result<ConnectStream, ConnectFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let windows = Windows::default();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .handshake::<_, Body>(TokioIo::new(io))
        .await
        .map_err(ConnectFailure::Io)?;
    let settings = std::sync::Arc::new(crate::reversed::PeerSettings::default());
    tokio::spawn(crate::reversed::drive(conn, settings.clone()));
    // The gateway's SETTINGS arrive as soon as the connection task reads them; give it a
    // bounded moment rather than sending a CONNECT the gateway would reject.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !settings.extended_connect() {
        if send.is_closed() {
            return Err(ConnectFailure::NotEnabled);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ConnectFailure::NotEnabled);
        }
        // hyper applies SETTINGS in its own task and offers no notification, so poll.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    send.ready().await.map_err(ConnectFailure::Io)?;
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    let (parts, ()) = request.into_parts();
    let body: Body = Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = send
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(ConnectFailure::Io)?;
    let status = response.status();
    if !status.is_success() {
        let (parts, body) = response.into_parts();
        let reason = match Limited::new(body, 1024).collect().await {
            Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
            Err(_) => "(no readable reason)".to_string(),
        };
        return Err(ConnectFailure::Refused {
            status,
            reason,
            response: Box::new(Response::from_parts(parts, ())),
        });
    }
    let stream = hyper::upgrade::on(&mut response)
        .await
        .map_err(ConnectFailure::Upgrade)?;
    let (parts, _) = response.into_parts();
    Ok(ConnectStream {
        response: Response::from_parts(parts, ()),
        stream,
    })
}
