//! An origin that ends a reversed connection on SIGTERM keeps reading it until the gateway
//! closes its side, so bytes the gateway sends after the origin's last read (a WINDOW_UPDATE,
//! a PING) are taken, not answered with a TCP reset.
//!
//! The reset is what lost requests in rolling restarts of rh2 origins: a socket closed with
//! bytes unread makes the kernel send RST instead of FIN, the gateway's next write fails, and
//! the HTTP/2 connection fails with every request whose answer had arrived but was not yet
//! read ("connection error"). The gateway here is the test's own, so the write after the
//! origin's close can be made at a known moment: without the linger the second write fails
//! with a reset or a broken pipe every time.

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_core::{AlpnSet, Mechanism};
use ptth_tests::{bin, Gateway, TempDir};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// One TLS session used by the test's HTTP client and, after it is done, by the test itself.
#[derive(Clone)]
struct Shared(Arc<Mutex<Tls>>);

impl Shared {
    fn with<R>(&self, f: impl FnOnce(Pin<&mut Tls>) -> R) -> R {
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(Pin::new(&mut *guard))
    }
}

impl AsyncRead for Shared {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.with(|io| io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.with(|io| io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }

    /// Only flushes: the HTTP client's close at the origin's end must not close the session
    /// the test still writes on (a real gateway writes before it has read the end).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        self.with(|io| io.poll_flush(cx))
    }
}

/// A TLS listener with the dev gateway certificate that selects `mechanism`'s ALPN token
/// from any of the token sets.
async fn fake_gateway(
    dev: &std::path::Path,
    mechanism: Mechanism,
) -> Result<(TcpListener, tokio_rustls::TlsAcceptor)> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(dev.join("gateway.pem"))?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(dev.join("gateway.key"))?.as_slice())?
        .ok_or_else(|| anyhow!("no key"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    tls.alpn_protocols = [AlpnSet::Potato00, AlpnSet::Potato01, AlpnSet::Potato02]
        .iter()
        .map(|set| mechanism.tls_alpn(*set).to_vec())
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    Ok((listener, tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}

async fn write_now(io: &Shared, bytes: &[u8]) -> std::io::Result<()> {
    let mut io = io.clone();
    io.write_all(bytes).await?;
    io.flush().await
}

async fn origin_reads_until_the_gateway_closes(mechanism: Mechanism) -> Result<()> {
    // A real gateway only makes the dev credentials; the origin dials the test's own.
    let dev = TempDir::new("linger");
    let gw = Gateway::start(&dev.0, &[]).await?;
    let (listener, acceptor) = fake_gateway(&gw.dev, mechanism).await?;
    let url = format!("https://localhost:{}", listener.local_addr()?.port());
    let mut origin = Command::new(bin("ptth-origin"))
        .args(["--gateway", &url, "--mechanism", mechanism.name()])
        .args(["--host", "app.localhost", "--hello", "--connections", "1"])
        .args(["--token", "linger-test-token", "--shutdown-grace", "10"])
        .arg("--ca")
        .arg(gw.dev.join("ca.pem"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting ptth-origin")?;
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await??;
    let tls = Shared(Arc::new(Mutex::new(acceptor.accept(tcp).await?)));

    // The test's gateway sends one request, as the real one would. The client's handle is
    // kept: dropping it would make the client close first.
    let uri = "https://app.localhost/";
    let (status, conn, _keep): (_, _, Box<dyn std::any::Any + Send>) = if mechanism
        == Mechanism::Rh1
    {
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls.clone())).await?;
        let conn = tokio::spawn(async move { conn.await.map_err(anyhow::Error::from) });
        let req = http::Request::get(uri)
            .header("host", "app.localhost")
            .body(Empty::<Bytes>::new())?;
        let res = send.send_request(req).await?;
        let status = res.status();
        res.into_body().collect().await?;
        (status, conn, Box::new(send))
    } else {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls.clone()))
                .await?;
        let conn = tokio::spawn(async move { conn.await.map_err(anyhow::Error::from) });
        let res = send
            .send_request(http::Request::get(uri).body(Empty::<Bytes>::new())?)
            .await?;
        let status = res.status();
        res.into_body().collect().await?;
        (status, conn, Box::new(send))
    };
    assert_eq!(status, http::StatusCode::OK, "the origin's demo answers");

    // SIGTERM: the origin ends the connection (GOAWAY on HTTP/2, close after the exchange
    // on HTTP/1.1) and closes its side; the client sees the end.
    let pid = origin.id().ok_or_else(|| anyhow!("the origin exited"))?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .context("the origin did not close its side after SIGTERM")??
        .context("the client connection failed")?;

    // The gateway still writes (here: an HTTP/2 PING frame; any bytes do), as a real one
    // does when it acknowledges the last answer's data. The origin must take them.
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    write_now(&tls, &ping)
        .await
        .context("the first write after the origin's close")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_now(&tls, &ping).await.context(
        "the second write after the origin's close failed: the origin reset the connection instead of reading to the gateway's close",
    )?;
    assert!(
        matches!(origin.try_wait(), Ok(None)),
        "the origin lingers while the gateway is open"
    );

    // Once the gateway closes, the origin is done at once.
    drop(tls);
    let status = tokio::time::timeout(Duration::from_secs(10), origin.wait())
        .await
        .context("the origin did not exit after the gateway closed")??;
    assert!(status.success(), "{status}");
    Ok(())
}

#[tokio::test]
async fn an_rh2_origin_stopping_reads_until_the_gateway_closes() -> Result<()> {
    origin_reads_until_the_gateway_closes(Mechanism::Rh2).await
}

#[tokio::test]
async fn an_rh1_origin_stopping_reads_until_the_gateway_closes() -> Result<()> {
    origin_reads_until_the_gateway_closes(Mechanism::Rh1).await
}
