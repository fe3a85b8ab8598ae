//! Local TCP and UDP services for the reverse CONNECT and port-mapping tests, the ports to
//! map them on (what sits behind a `ptth-origin --tcp-service` / `--udp-service`), and an
//! origin's control channel played by hand (to advertise, and then do what the test needs).

use crate::{tls_connect, Gateway};
use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// A TCP port on 127.0.0.1 nothing listens on now ([`crate::unused_port`]: below the
/// ephemeral range, so only another process could take it before the caller binds it;
/// callers that bind it in a child process start again on failure).
pub fn free_tcp_port() -> u16 {
    crate::unused_port()
}

/// A UDP port on 127.0.0.1 nothing is bound to now (the same).
pub fn free_udp_port() -> u16 {
    crate::unused_port()
}

/// A TCP port on 127.0.0.1 that refuses connections for as long as the returned socket
/// lives: bound, never listening, so no other test or process can take it meanwhile (a port
/// merely found free may be handed to another listener before it is used).
pub fn refused_tcp_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// A TCP echo service: every connection gets back what it sends until it closes.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A UDP echo service; it records every source address it heard from (one per flow: the
/// origin's socket for each flow has its own local port).
pub async fn udp_echo() -> (SocketAddr, Arc<Mutex<HashSet<SocketAddr>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            record.lock().unwrap().insert(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}

/// An HTTP/2 client on the tunnel listener (the origin's role), once the gateway enabled
/// extended CONNECT.
pub async fn h2_client(gw: &Gateway) -> Result<SendRequest<ptth_h2::Body>> {
    let tls = tls_connect(gw, &[b"h2"]).await?;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, ptth_h2::Body>(TokioIo::new(tls))
        .await?;
    let settings = Arc::new(ptth_h2::PeerSettings::default());
    tokio::spawn(ptth_h2::reversed::drive(conn, settings.clone()));
    for _ in 0..500 {
        if settings.extended_connect() {
            return Ok(send);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the gateway did not enable extended CONNECT")
}

/// An extended CONNECT of `protocol` (`connect-listen`, `connect-accept`) to `path` on the
/// tunnel listener, with `token` as Bearer credential.
pub async fn extended_connect(
    send: &mut SendRequest<ptth_h2::Body>,
    gw: &Gateway,
    protocol: &'static str,
    path: &str,
    token: &str,
) -> Result<http::Response<hyper::body::Incoming>> {
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("https://localhost:{}{path}", gw.tunnel.port()))
        .header("capsule-protocol", "?1")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    send.ready().await?;
    Ok(send.send_request(req).await?)
}

/// Opens a control channel on `path` with `token` and advertises `service`; returns the
/// channel's stream (the gateway's CONNECTION_REQUESTs arrive on it).
pub async fn advertise_on(
    send: &mut SendRequest<ptth_h2::Body>,
    gw: &Gateway,
    token: &str,
    path: &str,
    service: ptth_core::Service,
) -> Result<TokioIo<hyper::upgrade::Upgraded>> {
    use tokio::io::AsyncWriteExt as _;
    let mut res = extended_connect(send, gw, "connect-listen", path, token).await?;
    anyhow::ensure!(
        res.status() == http::StatusCode::OK,
        "listen on {path}: {}",
        res.status()
    );
    let mut io = TokioIo::new(hyper::upgrade::on(&mut res).await?);
    let capsule = ptth_core::ControlCapsule::AvailableServices(ptth_core::AvailableServices {
        services: vec![service],
    })
    .to_capsule();
    io.write_all(&capsule.to_bytes()).await?;
    io.flush().await?;
    Ok(io)
}

/// A `ptth-origin` for `gw` with `token` and the dev CA, given the rest of its arguments
/// (`--tcp-service`, `--udp-service`, `--service-transport`, …), logging at `level` unless
/// `PTTH_TEST_LOG` says otherwise; killed when dropped.
pub fn services_origin(
    gw: &Gateway,
    token: &str,
    args: &[&str],
    level: &str,
) -> Result<(tokio::process::Child, crate::LogTap)> {
    let mut cmd = tokio::process::Command::new(crate::bin("ptth-origin"));
    cmd.args(["--gateway", &gw.tunnel_url(), "--token", token])
        .arg("--ca")
        .arg(gw.dev.join("ca.pem"))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("PTTH_TEST_LOG").unwrap_or_else(|_| level.into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let log = crate::LogTap::capture("origin", child.stderr.take());
    Ok((child, log))
}
