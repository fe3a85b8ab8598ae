//! The limits of CONNECT at the public edge, end to end with real processes: an origin that
//! never answers its connection request makes the public CONNECT a 504 once
//! `--tcp-accept-timeout` has passed (and the request is given up, so a late accept is
//! 404); a connection may carry at most 128 CONNECT tunnels at once (429 beyond), and one
//! that ends makes room for the next.
//!
//! Run `cargo build --bins` first.

use anyhow::{anyhow, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_tests::services::{
    advertise_on, extended_connect, free_tcp_port, h2_client, services_origin, tcp_echo,
};
use ptth_tests::{Gateway, LogTap, TempDir};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

const BOX_TOKEN: &str = "box-token-limits-6e0d2b";
/// `alice:alice-limits-pw`, base64.
const ALICE_BASIC: &str = "Basic YWxpY2U6YWxpY2UtbGltaXRzLXB3";

/// A gateway whose grant `box` offers `echo` on `echo_port`, with proxy user alice.
async fn gateway(dir: &TempDir, echo_port: u16, extra: &[&str]) -> Result<Gateway> {
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[grant]]
name = "box"
token = "{BOX_TOKEN}"
services = ["echo=tcp/{echo_port}"]

[[proxy-user]]
name = "alice"
password = "alice-limits-pw"
reach = ["box/echo"]
"#
        ),
    )?;
    let mut args = vec!["--config", config.to_str().unwrap_or_default()];
    args.extend_from_slice(extra);
    Gateway::start(&dir.0.join("dev"), &args).await
}

/// A services-only origin offering `echo` at `service`.
fn origin(gw: &Gateway, service: SocketAddr) -> Result<(Child, LogTap)> {
    services_origin(
        gw,
        BOX_TOKEN,
        &["--tcp-service", &format!("echo={service}")],
        "warn",
    )
}

/// Sends an HTTP/1.1 CONNECT for `target` as alice on `tcp`; returns the status and head.
async fn h1_connect(tcp: &mut TcpStream, target: &str) -> Result<(u16, String)> {
    tcp.write_all(
        format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: {ALICE_BASIC}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(
            tcp.read(&mut byte).await? == 1,
            "closed in the head: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, head))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_never_accepts_makes_the_connect_a_504_after_the_accept_timeout(
) -> Result<()> {
    let dir = TempDir::new("pcl-504");
    let echo_port = free_tcp_port();
    let gw = gateway(&dir, echo_port, &["--tcp-accept-timeout", "1"]).await?;
    // The origin's side played by hand: a channel that offers `echo` and answers no request.
    let mut send = h2_client(&gw).await?;
    let service = ptth_core::Service::local(
        ptth_core::IpProtocol::Tcp,
        ptth_core::ServicePort::new(echo_port).ok_or_else(|| anyhow!("port 0"))?,
    );
    let mut channel = advertise_on(
        &mut send,
        &gw,
        BOX_TOKEN,
        "/.well-known/masque/listen/./6/",
        service,
    )
    .await?;
    // The advertisement is taken within moments; until then a CONNECT finds no origin
    // (503), so try until the request reaches the channel.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (asked_at, status, head, request) = loop {
        let mut tcp = TcpStream::connect(gw.listen).await?;
        let started = Instant::now();
        let answer = tokio::spawn(async move {
            let r = tokio::time::timeout(
                Duration::from_secs(15),
                h1_connect(&mut tcp, &format!("box:{echo_port}")),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer to the CONNECT within 15 s")));
            (r, started.elapsed())
        });
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(300), channel.read(&mut buf)).await {
            Ok(read) => {
                let n = read?;
                let (answered, took) = answer.await?;
                let (status, head) = answered?;
                break (took, status, head, buf[..n].to_vec());
            }
            Err(_) => {
                let (answered, _) = answer.await?;
                let (status, head) = answered?;
                anyhow::ensure!(status == 503, "before the advertisement: {head}");
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the CONNECT never reached the channel"
                );
            }
        }
    };
    // CONNECTION_REQUEST's private code point, 0x3b7a0c41, as a 4-byte varint.
    assert_eq!(&request[..4.min(request.len())], &[0xbb, 0x7a, 0x0c, 0x41]);
    assert_eq!(status, 504, "{head}");
    assert!(
        asked_at >= Duration::from_millis(900) && asked_at < Duration::from_secs(10),
        "the 504 comes when --tcp-accept-timeout (1 s) has passed, not {asked_at:?}"
    );
    // The request was given up: its accept, now, is unknown.
    let id = request_id(&request).ok_or_else(|| anyhow!("no request ID in {request:?}"))?;
    let late = extended_connect(
        &mut send,
        &gw,
        "connect-accept",
        &format!("/.well-known/masque/accept/{id}/"),
        BOX_TOKEN,
    )
    .await?;
    assert_eq!(late.status(), StatusCode::NOT_FOUND);
    Ok(())
}

/// The request ID of a CONNECTION_REQUEST capsule: type (4 bytes), length, then the ID as a
/// QUIC varint.
fn request_id(capsule: &[u8]) -> Option<u64> {
    let mut at = 4;
    let varint = |at: &mut usize| -> Option<u64> {
        let first = *capsule.get(*at)?;
        let len = 1usize << (first >> 6);
        let mut v = u64::from(first & 0x3f);
        for k in 1..len {
            v = (v << 8) | u64::from(*capsule.get(*at + k)?);
        }
        *at += len;
        Some(v)
    };
    varint(&mut at)?;
    varint(&mut at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_carries_at_most_128_connect_tunnels() -> Result<()> {
    let dir = TempDir::new("pcl-429");
    let echo = tcp_echo().await;
    let gw = gateway(&dir, echo.port(), &[]).await?;
    let (_origin, _log) = origin(&gw, echo)?;
    let tcp = TcpStream::connect(gw.listen).await?;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_reset_streams(0)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await?;
    tokio::spawn(conn);
    let target = format!("box:{}", echo.port());
    let connect = |target: &str| {
        Request::builder()
            .method("CONNECT")
            .uri(target)
            .header("proxy-authorization", ALICE_BASIC)
            .body(Empty::<Bytes>::new())
    };
    // The first tunnel once the origin offers the service (503 until then).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tunnels = Vec::new();
    loop {
        send.ready().await?;
        let mut res = send.send_request(connect(&target)?).await?;
        if res.status() == StatusCode::OK {
            tunnels.push(TokioIo::new(hyper::upgrade::on(&mut res).await?));
            break;
        }
        anyhow::ensure!(
            res.status() == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline,
            "the first tunnel: {}",
            res.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while tunnels.len() < 128 {
        send.ready().await?;
        let mut res = send.send_request(connect(&target)?).await?;
        assert_eq!(res.status(), StatusCode::OK, "tunnel {}", tunnels.len() + 1);
        tunnels.push(TokioIo::new(hyper::upgrade::on(&mut res).await?));
    }
    // Each carries its own bytes.
    for (k, t) in tunnels.iter_mut().enumerate().step_by(31) {
        let msg = format!("tunnel {k}");
        t.write_all(msg.as_bytes()).await?;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), t.read_exact(&mut back)).await??;
        assert_eq!(back, msg.as_bytes());
    }
    // The 129th is refused, before anything reaches the origin.
    send.ready().await?;
    let res = send.send_request(connect(&target)?).await?;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // One ends: the next is carried.
    let mut ended = tunnels.pop().ok_or_else(|| anyhow!("no tunnel"))?;
    ended.shutdown().await?;
    drop(ended);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        send.ready().await?;
        let res = send.send_request(connect(&target)?).await?;
        if res.status() == StatusCode::OK {
            break;
        }
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        anyhow::ensure!(Instant::now() < deadline, "no room after a tunnel ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
