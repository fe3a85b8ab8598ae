//! Reversed HTTP/1.1: the gateway is the HTTP client, the origin the HTTP server, over any IO.
//!
//! draft-thomson-ptth-potato §4.1: "The protocol is otherwise unchanged"; only the roles move.
//! HTTP/1.1 carries one request at a time, so the gateway counts a connection's capacity as 1
//! and an origin keeps a pool of connections for concurrency.

use crate::{Body, BoxError};
use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// The gateway's handle for sending requests on a reversed HTTP/1.1 connection.
pub type Sender = client::SendRequest<Body>;

/// The largest read buffer of one reversed HTTP/1.1 connection at the gateway: room for the
/// project's 64 KiB header limit and a body read. Each pooled origin connection can grow to
/// it while streaming, so it is paid per connection (it was 1 MiB: 64 MiB for a pool of 64).
pub const READ_BUFFER: usize = 128 * 1024;

/// Starts the HTTP/1.1 client role on a stream the gateway accepted.
///
/// Returns the sender and the connection future; the caller drives the future (it ends when
/// the origin closes, or after a `101` hands the stream to an upgraded protocol).
pub async fn handshake<IO>(
    io: IO,
) -> hyper::Result<(
    Sender,
    impl std::future::Future<Output = hyper::Result<()>> + Send,
)>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = client::Builder::new()
        .max_buf_size(READ_BUFFER)
        .handshake(TokioIo::new(io))
        .await?;
    Ok((send, conn.with_upgrades()))
}

/// Starts the HTTP/1.1 server role on a stream the origin dialled.
pub fn serve<IO, S, B>(io: IO, service: S) -> server::UpgradeableConnection<TokioIo<IO>, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    server::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
}
