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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The gateway's 101 and its first reversed request arrive in one segment: the request
    /// must be served, not lost in hyper's read buffer.
    #[tokio::test]
    async fn bytes_after_the_101_are_replayed_into_the_reversed_connection() {
        let (origin_io, mut gateway_io) = tokio::io::duplex(64 * 1024);
        let gateway = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = gateway_io.read(&mut buf).await.unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(head.starts_with("GET /setup HTTP/1.1"), "{head}");
            gateway_io
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\n\r\n\
                      GET /first HTTP/1.1\r\nHost: app.example\r\n\r\n",
                )
                .await
                .unwrap();
            let mut answer = Vec::new();
            let mut chunk = [0u8; 1024];
            while !String::from_utf8_lossy(&answer).contains("served /first") {
                let n = gateway_io.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the origin closed without answering");
                answer.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8(answer).unwrap()
        });
        let request = Request::get("/setup")
            .header("host", "gateway.example")
            .header("connection", "upgrade")
            .header("upgrade", "ptth")
            .body(())
            .unwrap();
        let (response, upgraded) = origin_upgrade(origin_io, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let service =
            hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                let body = Full::new(Bytes::from(format!("served {}", req.uri().path())));
                Ok::<_, std::convert::Infallible>(Response::new(body))
            });
        let conn = crate::reversed::serve(TokioIo::new(upgraded), service);
        tokio::spawn(conn);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), gateway)
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }

    #[tokio::test]
    async fn a_refusal_carries_status_and_reason() {
        let (origin_io, mut gateway_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _ = gateway_io.read(&mut buf).await.unwrap();
            gateway_io
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 18\r\n\r\nwrong bearer token",
                )
                .await
                .unwrap();
        });
        let request = Request::get("/setup").header("host", "g").body(()).unwrap();
        match origin_upgrade(origin_io, request).await {
            Err(SetupFailure::Refused { status, reason, .. }) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED);
                assert_eq!(reason, "wrong bearer token");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
