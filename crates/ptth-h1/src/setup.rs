//! The origin's side of an HTTP/1.1 setup exchange (PTTH `Upgrade: ptth`, legacy PTTH/1.0).

use crate::BoxError;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a setup request did not produce an upgraded stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupFailure {
    /// The connection failed before the gateway answered.
    #[error("setup connection failed: {0}")]
    Io(#[source] hyper::Error),
    /// The gateway answered, but not with `101`; `reason` is the start of its body.
    #[error("the gateway refused the setup with {status}: {reason}")]
    Refused {
        /// The gateway's status code.
        status: StatusCode,
        /// The gateway's explanation, from its response body (at most 1 KiB).
        reason: String,
        /// The response head, for validation by the caller.
        response: Box<Response<()>>,
    },
    /// The gateway answered `101` but the upgrade itself failed.
    #[error("the upgrade after 101 failed: {0}")]
    Upgrade(#[source] hyper::Error),
}

/// Sends `request` (built by `ptth_core::setup`) on a fresh HTTP/1.1 connection over `io`
/// and, when the gateway answers `101`, returns its response head and the upgraded stream.
///
/// RFC 9110 §7.8: after the `101` the connection belongs to the new protocol; any bytes the
/// gateway sent right after its `101` are held by `Upgraded` and read first, never lost.
pub async fn origin_upgrade<IO>(
    io: IO,
    request: Request<()>,
) -> Result<(Response<()>, Upgraded), SetupFailure>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(SetupFailure::Io)?;
    tokio::spawn(async move {
        // The connection future ends when the upgrade takes the IO, or on error; the error
        // surfaces through the response future below.
        let _ = conn.with_upgrades().await;
    });
    let (parts, ()) = request.into_parts();
    let request = Request::from_parts(parts, Empty::<Bytes>::new());
    let mut response = send.send_request(request).await.map_err(SetupFailure::Io)?;
    let status = response.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = response.into_parts();
        let reason = read_reason(body).await;
        return Err(SetupFailure::Refused {
            status,
            reason,
            response: Box::new(Response::from_parts(parts, ())),
        });
    }
    let upgraded = hyper::upgrade::on(&mut response)
        .await
        .map_err(SetupFailure::Upgrade)?;
    let (parts, _) = response.into_parts();
    Ok((Response::from_parts(parts, ()), upgraded))
}

/// Reads at most 1 KiB of an error body, as text, for a log line a person can act on.
pub async fn read_reason<B>(body: B) -> String
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match Limited::new(body, 1024).collect().await {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_string(),
        Err(_) => "(no readable reason)".to_string(),
    }
}
