//! CONNECT-UDP (RFC 9298) at the public edge, end to end with real processes: a UDP echo
//! behind a `ptth-origin --udp-service`, reached through the gateway's public listeners as
//! a `[[proxy-user]]`, by extended CONNECT over HTTP/2 (DATAGRAM capsules) and HTTP/3
//! (QUIC DATAGRAM frames, our `ptth_h3` client), and by `Upgrade: connect-udp` over
//! HTTP/1.1; and the refusals (407, 403, 404). curl does not speak CONNECT-UDP, so the
//! clients are our own.
//!
//! Run `cargo build --bins` first.

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_h2::udp_flow::{
    capsule_carrier, datagram_carrier, DatagramSink, DatagramSource, HttpDatagrams,
};
use ptth_tests::{bin, dev_roots, Gateway, LogTap, TempDir};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};

const BOX_TOKEN: &str = "box-token-5c0e7d21fa";
const ALICE_PASSWORD: &str = "alice-pw-7e1d44";
const MALLORY_PASSWORD: &str = "mallory-pw-0b3c";
const STEP: Duration = Duration::from_secs(20);

/// Sizes each client sends: empty, small, around a QUIC packet, and larger than any
/// DATAGRAM frame (those go as capsules even over HTTP/3).
const SIZES: [usize; 9] = [0, 1, 100, 700, 1_000, 1_200, 1_400, 4_000, 9_000];

/// `Basic base64(user:password)` for the test's few pairs.
fn basic(user: &str, password: &str) -> String {
    match (user, password) {
        ("alice", "alice-pw-7e1d44") => "Basic YWxpY2U6YWxpY2UtcHctN2UxZDQ0",
        ("alice", "nope") => "Basic YWxpY2U6bm9wZQ==",
        ("mallory", "mallory-pw-0b3c") => "Basic bWFsbG9yeTptYWxsb3J5LXB3LTBiM2M=",
        _ => panic!("no Basic value for {user}"),
    }
    .to_string()
}

/// A UDP echo service.
async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

struct Setup {
    _dir: TempDir,
    gw: Gateway,
    echo_port: u16,
    _origin: Child,
    origin_log: LogTap,
}

/// A gateway with grant `box` (UDP service `echo`, TCP service `ssh` on the same port
/// number) and `web` (none); proxy users alice (`box/echo`) and mallory (`web/*`); an
/// origin holding `box` offering `echo` over `transport`.
async fn setup(name: &str, transport: &str) -> Result<Setup> {
    // The gateway logs at debug: the wait below reads its log, and the secrecy check too.
    std::env::set_var("PTTH_TEST_LOG", "debug");
    let echo = udp_echo().await;
    let dir = TempDir::new(name);
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[grant]]
name = "box"
token = "{BOX_TOKEN}"
services = ["echo=udp/{port}"]

[[grant]]
name = "web"
token = "web-token-2e8a61b0c3"
origins = ["*"]

[[proxy-user]]
name = "alice"
password = "{ALICE_PASSWORD}"
reach = ["box/echo"]

[[proxy-user]]
name = "mallory"
password = "{MALLORY_PASSWORD}"
reach = ["web/*"]
"#,
            port = echo.port()
        ),
    )?;
    let gw = Gateway::start(
        &dir.0.join("dev"),
        &["--config", config.to_str().unwrap_or_default()],
    )
    .await?;
    let mut cmd = Command::new(bin("ptth-origin"));
    cmd.args(["--gateway", &gw.tunnel_url(), "--token", BOX_TOKEN])
        .args(["--service-transport", transport])
        .args(["--udp-service", &format!("echo=127.0.0.1:{}", echo.port())])
        .arg("--ca")
        .arg(gw.dev.join("ca.pem"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting ptth-origin")?;
    let origin_log = LogTap::capture("origin", child.stderr.take());
    gw.log.wait_for("the origin offers services", 20).await?;
    Ok(Setup {
        _dir: dir,
        gw,
        echo_port: echo.port(),
        _origin: child,
        origin_log,
    })
}

/// Datagram `i` of client `c`: 4 bytes naming both, then filler up to `size`.
fn payload(c: u8, i: usize, size: usize) -> Bytes {
    let mut p = vec![b'U', c, i as u8, 0];
    p.extend(std::iter::repeat_n(c ^ (i as u8), size.saturating_sub(4)));
    p.truncate(size);
    Bytes::from(p)
}

/// Sends every size through the tunnel's carrier and checks that exactly its echo comes
/// back (a lost datagram is sent again; anything that is not an echo of this client's is
/// an error).
async fn echoes<I: DatagramSource, O: DatagramSink>(
    c: u8,
    source: &mut I,
    sink: &mut O,
) -> Result<()> {
    for (i, &size) in SIZES.iter().enumerate() {
        let p = payload(c, i, size);
        let mut tries = 0;
        loop {
            sink.send(p.clone()).await?;
            match tokio::time::timeout(Duration::from_millis(1_000), source.recv()).await {
                Ok(r) => {
                    let got = r?.ok_or_else(|| anyhow!("the tunnel ended"))?;
                    ensure!(
                        got == p,
                        "client {c}: {} bytes came back for a {size}-byte datagram",
                        got.len()
                    );
                    break;
                }
                Err(_) => {
                    tries += 1;
                    ensure!(tries < 10, "client {c}: no echo of {size} bytes");
                }
            }
        }
    }
    Ok(())
}

/// An h2c connection to the public cleartext listener.
async fn h2c(gw: &Gateway) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> {
    let tcp = TcpStream::connect(gw.listen).await?;
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await?;
    tokio::spawn(conn);
    Ok(send)
}

fn udp_path(host: &str, port: u16) -> String {
    format!("/.well-known/masque/udp/{host}/{port}/")
}

/// An HTTP/2 extended CONNECT for connect-udp to `host:port` (RFC 9298 §3.4).
fn h2_request(gw: &Gateway, host: &str, port: u16, auth: Option<&str>) -> Request<Empty<Bytes>> {
    let mut b = Request::connect(format!(
        "http://127.0.0.1:{}{}",
        gw.listen.port(),
        udp_path(host, port)
    ))
    .header("capsule-protocol", "?1");
    if let Some(a) = auth {
        b = b.header("proxy-authorization", a);
    }
    let mut req = b.body(Empty::<Bytes>::new()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("connect-udp"));
    req
}

/// An HTTP/3 client of the public endpoint with HTTP datagrams on (SETTINGS_H3_DATAGRAM
/// and the QUIC DATAGRAM extension).
async fn h3_datagram_client(gw: &Gateway) -> Result<(ptth_h3::H3Connection, quinn::Endpoint)> {
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(dev_roots(gw)?)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut client = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.datagram_receive_buffer_size(Some(256 * 1024));
    client.transport_config(std::sync::Arc::new(transport));
    endpoint.set_default_client_config(client);
    let quic = tokio::time::timeout(STEP, endpoint.connect(gw.listen_tls, "localhost")?)
        .await
        .map_err(|_| anyhow!("QUIC handshake timed out"))??;
    let config =
        ptth_h3::H3Config::new(ptth_h3::RequestDirection::ClientSends).enable_datagrams(true);
    let conn = ptth_h3::H3Connection::new(quic, config).await?;
    tokio::time::timeout(STEP, conn.peer_settings()).await??;
    Ok((conn, endpoint))
}

/// The client's side of an HTTP/3 request stream's datagrams.
struct ClientDatagrams(ptth_h3::RequestHandle);

impl HttpDatagrams for ClientDatagrams {
    fn max_payload(&self) -> Option<usize> {
        self.0.max_datagram_payload()
    }

    fn send(&self, payload: Bytes) -> std::io::Result<()> {
        self.0.send_datagram(payload).map_err(std::io::Error::other)
    }

    async fn recv(&self) -> Option<Bytes> {
        self.0.recv_datagram().await
    }
}

/// Reads an HTTP/1.1 response head from `tcp`, byte by byte (nothing past it is taken).
async fn read_head(tcp: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 8192, "response head too long");
        let b = tokio::time::timeout(STEP, tcp.read_u8()).await??;
        head.push(b);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_clients_reach_a_udp_echo_over_http2_http3_and_http11() -> Result<()> {
    // The origin's own channel is HTTP/3 here: the HTTP/3 client's datagrams cross both
    // QUIC connections as DATAGRAM frames.
    let s = setup("pcu-forms", "h3").await?;
    let alice = basic("alice", ALICE_PASSWORD);

    // HTTP/2: extended CONNECT, DATAGRAM capsules on the stream.
    let mut send = h2c(&s.gw).await?;
    let res = tokio::time::timeout(
        STEP,
        send.send_request(h2_request(&s.gw, "box", s.echo_port, Some(&alice))),
    )
    .await??;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers().get("capsule-protocol").map(|v| v.as_bytes()),
        Some(&b"?1"[..])
    );
    let upgraded = tokio::time::timeout(STEP, hyper::upgrade::on(res)).await??;
    let (mut source, mut sink) = capsule_carrier(TokioIo::new(upgraded));
    echoes(1, &mut source, &mut sink)
        .await
        .context("over HTTP/2")?;
    // A second tunnel on the same connection is its own flow.
    let res = tokio::time::timeout(
        STEP,
        send.send_request(h2_request(&s.gw, "box", s.echo_port, Some(&alice))),
    )
    .await??;
    assert_eq!(res.status(), StatusCode::OK);
    let upgraded = tokio::time::timeout(STEP, hyper::upgrade::on(res)).await??;
    let (mut source2, mut sink2) = capsule_carrier(TokioIo::new(upgraded));
    echoes(2, &mut source2, &mut sink2)
        .await
        .context("over HTTP/2, second tunnel")?;
    echoes(1, &mut source, &mut sink)
        .await
        .context("over HTTP/2, first tunnel again")?;

    // HTTP/3: extended CONNECT, QUIC DATAGRAM frames (capsules for what does not fit).
    let (h3, _endpoint) = h3_datagram_client(&s.gw).await?;
    assert!(
        h3.datagrams_negotiated(),
        "the public endpoint negotiated HTTP datagrams"
    );
    let mut req = Request::connect(format!("https://localhost{}", udp_path("box", s.echo_port)))
        .header("proxy-authorization", &alice)
        .header("capsule-protocol", "?1")
        .body(())?;
    req.extensions_mut()
        .insert(ptth_h3::Protocol("connect-udp".into()));
    let (res, stream) = tokio::time::timeout(STEP, h3.sender().send_connect(req)).await??;
    assert_eq!(res.status(), StatusCode::OK);
    let handle = stream.request_handle().clone();
    let (mut source, mut sink) = datagram_carrier(stream, ClientDatagrams(handle));
    echoes(3, &mut source, &mut sink)
        .await
        .context("over HTTP/3")?;
    let small = SIZES.iter().filter(|&&n| n < 1_000).count() as u64;
    assert!(
        sink.sent_as_quic() >= small && source.received_as_quic() >= small,
        "over HTTP/3, {} sent and {} received as QUIC datagrams, of {} sizes",
        sink.sent_as_quic(),
        source.received_as_quic(),
        SIZES.len()
    );
    assert!(
        (sink.sent_as_quic() as usize) < SIZES.len(),
        "9 000 bytes fit no DATAGRAM frame: they went as a capsule"
    );

    // HTTP/1.1: GET with Upgrade: connect-udp (RFC 9298 §3.2), answered 101 (§3.3).
    let mut tcp = TcpStream::connect(s.gw.listen).await?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: connect-udp\r\nCapsule-Protocol: ?1\r\nProxy-Authorization: {alice}\r\n\r\n",
        udp_path("box", s.echo_port),
        s.gw.listen.port()
    );
    tcp.write_all(req.as_bytes()).await?;
    let head = read_head(&mut tcp).await?;
    let lower = head.to_ascii_lowercase();
    ensure!(head.starts_with("HTTP/1.1 101"), "{head}");
    ensure!(lower.contains("upgrade: connect-udp"), "{head}");
    ensure!(lower.contains("capsule-protocol: ?1"), "{head}");
    let (mut source, mut sink) = capsule_carrier(tcp);
    echoes(4, &mut source, &mut sink)
        .await
        .context("over HTTP/1.1")?;

    // Nothing of the proxy user's credential reached the origin.
    let origin_text = s.origin_log.text();
    for secret in [ALICE_PASSWORD, alice.trim_start_matches("Basic ")] {
        assert!(!origin_text.contains(secret), "the origin saw a secret");
        assert!(
            !s.gw.log.text().contains(secret),
            "the gateway logged a secret"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_udp_refusals_are_407_403_and_404_on_every_version() -> Result<()> {
    let s = setup("pcu-refusals", "h2").await?;
    let mut send = h2c(&s.gw).await?;
    let mut status = |host: &'static str, port: u16, auth: Option<String>| {
        let req = h2_request(&s.gw, host, port, auth.as_deref());
        let fut = send.send_request(req);
        async move {
            let res = tokio::time::timeout(STEP, fut).await??;
            anyhow::Ok(res.status())
        }
    };
    // No credential: 407 (RFC 9110 §15.5.8).
    assert_eq!(
        status("box", s.echo_port, None).await?,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED
    );
    // A wrong password: 407.
    assert_eq!(
        status("box", s.echo_port, Some(basic("alice", "nope"))).await?,
        StatusCode::PROXY_AUTHENTICATION_REQUIRED
    );
    // A user whose reach is another grant: 403.
    assert_eq!(
        status("box", s.echo_port, Some(basic("mallory", MALLORY_PASSWORD))).await?,
        StatusCode::FORBIDDEN
    );
    // No UDP service on that port, or no such host: 404.
    let alice = basic("alice", ALICE_PASSWORD);
    let other = if s.echo_port == 1 { 2 } else { 1 };
    assert_eq!(
        status("box", other, Some(alice.clone())).await?,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status("nowhere", s.echo_port, Some(alice.clone())).await?,
        StatusCode::NOT_FOUND
    );
    // And the allowed one works on the same connection.
    assert_eq!(
        status("box", s.echo_port, Some(alice)).await?,
        StatusCode::OK
    );
    // HTTP/1.1 without a credential: 407, and no 101.
    let mut tcp = TcpStream::connect(s.gw.listen).await?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: connect-udp\r\nCapsule-Protocol: ?1\r\n\r\n",
        udp_path("box", s.echo_port),
        s.gw.listen.port()
    );
    tcp.write_all(req.as_bytes()).await?;
    let head = read_head(&mut tcp).await?;
    ensure!(head.starts_with("HTTP/1.1 407"), "{head}");
    // HTTP/3, an unknown target: 404.
    let (h3, _endpoint) = h3_datagram_client(&s.gw).await?;
    let mut req = Request::connect(format!("https://localhost{}", udp_path("nowhere", 53)))
        .header("proxy-authorization", basic("alice", ALICE_PASSWORD))
        .body(())?;
    req.extensions_mut()
        .insert(ptth_h3::Protocol("connect-udp".into()));
    let (res, _stream) = tokio::time::timeout(STEP, h3.sender().send_connect(req)).await??;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    if s.gw.log.text().contains(ALICE_PASSWORD) {
        bail!("the gateway logged a password");
    }
    Ok(())
}
