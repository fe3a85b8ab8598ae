//! Public listeners: cleartext HTTP/1.1 + h2c (prior knowledge), and TLS with `h2`/`http/1.1`.
//! When the public HTTP/3 endpoint runs, every response advertises it in `alt-svc`.

use crate::proxy::{ClientInfo, Proxy};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Serves public clients on `listener`; TLS when `acceptor` is given. `alt_svc`, when
/// given, is added to every response (RFC 7838) to advertise the HTTP/3 endpoint.
pub async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    alt_svc: Option<http::HeaderValue>,
) {
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "public accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        let proxy = proxy.clone();
        let acceptor = acceptor.clone();
        let alt_svc = alt_svc.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    serve_conn(
                        tcp,
                        ClientInfo {
                            addr,
                            tls: false,
                            local_port,
                        },
                        proxy,
                        alt_svc,
                    )
                    .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            serve_conn(
                                tls,
                                ClientInfo {
                                    addr,
                                    tls: true,
                                    local_port,
                                },
                                proxy,
                                alt_svc,
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "public TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%addr, "public TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// The largest header section a public client may send (and an origin may answer with).
pub const MAX_HEADER_BYTES: u32 = ptth_h2::MAX_HEADER_LIST_SIZE;

async fn serve_conn<IO>(
    io: IO,
    client: ClientInfo,
    proxy: Arc<Proxy>,
    alt_svc: Option<http::HeaderValue>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        let proxy = proxy.clone();
        let alt_svc = alt_svc.clone();
        async move {
            let mut res = proxy.handle(req, client).await;
            if let Some(v) = alt_svc {
                res.headers_mut().insert(http::header::ALT_SVC, v);
            }
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let windows = ptth_h2::Windows::default();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // One header-size limit for every public protocol: 64 KiB, answered with 431.
        // A larger HTTP/1.1 limit than HTTP/2's would let a header section through to
        // reversed HTTP/1.1 origins that reversed HTTP/2 origins refuse.
        .max_buf_size(MAX_HEADER_BYTES as usize)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(64 * 1024)
        .max_concurrent_streams(1024)
        .max_header_list_size(MAX_HEADER_BYTES)
        // Response data queued per stream for a public client that reads slowly: hyper's
        // default is 400 KiB, so a client holding 1 024 streams with closed windows could
        // pin 400 MiB; the stream's window keeps a fast client's pipe full either way
        // (1 MiB downloads over h2c at 256 concurrent ran as fast with 128 KiB).
        .max_send_buf_size(ptth_h2::reversed::SEND_BUFFER)
        .enable_connect_protocol();
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(client = %client.addr, error = %e, "public connection ended");
    }
}
