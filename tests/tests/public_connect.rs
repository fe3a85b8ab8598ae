//! CONNECT at the public edge, end to end with real processes: public clients reach a TCP
//! echo behind a `ptth-origin --tcp-service` through the gateway's public listeners, by
//! classic CONNECT on HTTP/1.1 (our own client and curl's proxy tunnel, cleartext and TLS)
//! and HTTP/2, and by connect-tcp on HTTP/2 and HTTP/3, as `[[proxy-user]]`s; and the
//! refusals (407, 403, 404, 502, 503), with no secret reaching the origin, a log or a body.
//!
//! Run `cargo build --bins` first. `PTTH_CONNECT_BYTES` sets the bulk transfer's size
//! (default 64 MiB).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_h2::flow::{splice, FlowOptions, FlowStream};
use ptth_tests::{bin, h3_client, Gateway, LogTap, TempDir};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const BOX_TOKEN: &str = "box-token-9a41c07e2b";
const ALICE_PASSWORD: &str = "alice-pw-3b9f0c";
/// `alice:alice-pw-3b9f0c`, base64.
const ALICE_BASIC: &str = "Basic YWxpY2U6YWxpY2UtcHctM2I5ZjBj";
/// `alice:wrong-pw`, base64.
const ALICE_WRONG: &str = "Basic YWxpY2U6d3JvbmctcHc=";
/// `mallory:mallory-pw-55aa`, base64: a proxy user whose reach is another grant.
const MALLORY_BASIC: &str = "Basic bWFsbG9yeTptYWxsb3J5LXB3LTU1YWE=";
const MALLORY_PASSWORD: &str = "mallory-pw-55aa";
const ROBOT_TOKEN: &str = "robot-tok-8d2e61a4";
const STEP: Duration = Duration::from_secs(20);

/// Every secret of the setup: none may reach the origin, a log line or a body.
const SECRETS: [&str; 6] = [
    BOX_TOKEN,
    ALICE_PASSWORD,
    "YWxpY2U6YWxpY2UtcHctM2I5ZjBj",
    MALLORY_PASSWORD,
    "bWFsbG9yeTptYWxsb3J5LXB3LTU1YWE",
    ROBOT_TOKEN,
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A TCP echo; each connection's received bytes, hashed, are reported on the channel.
async fn echo_service() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut hash = Sha256::new();
                let mut total = 0u64;
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    hash.update(&buf[..n]);
                    total += n as u64;
                    if tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tcp.shutdown().await;
                let _ = tx.send((total, hex(&hash.finalize())));
            });
        }
    });
    (addr, rx)
}

/// A TCP service that answers any HTTP/1.1 request with `hello` and closes (for curl).
async fn hello_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

struct Setup {
    _dir: TempDir,
    gw: Gateway,
    echo_port: u16,
    hello_port: u16,
    down_port: u16,
    /// Holds `down_port` refused for the test's length.
    _down: tokio::net::TcpSocket,
    _origin: Child,
    origin_log: LogTap,
    received: tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
}

/// Gateway and origin logs at debug, so a secret in any line would show.
fn debug_logs() {
    std::env::set_var("PTTH_TEST_LOG", "debug");
}

/// A gateway with grant `box` (services `echo`, `hello`, `down`; `down`'s port refuses
/// connections) and `web` (no service), proxy users alice (Basic, `box/echo` and
/// `box/hello`), robot (Bearer, `box/*`) and mallory (Basic, `web/*`); an origin holding
/// `box` that offers all three.
async fn setup(name: &str) -> Result<Setup> {
    debug_logs();
    let (echo, received) = echo_service().await;
    let hello = hello_service().await;
    let (down, down_port) = ptth_tests::services::refused_tcp_port();
    let dir = TempDir::new(name);
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[grant]]
name = "box"
token = "{BOX_TOKEN}"
services = ["echo=tcp/{}", "hello=tcp/{}", "down=tcp/{down_port}"]

[[grant]]
name = "web"
token = "web-token-71c2d0a9e4"
origins = ["*"]

[[proxy-user]]
name = "alice"
password = "{ALICE_PASSWORD}"
reach = ["box/echo", "box/hello"]

[[proxy-user]]
name = "robot"
token-sha256 = "{}"
reach = ["box/*"]

[[proxy-user]]
name = "mallory"
password = "{MALLORY_PASSWORD}"
reach = ["web/*"]
"#,
            echo.port(),
            hello.port(),
            hex(&Sha256::digest(ROBOT_TOKEN.as_bytes())),
        ),
    )?;
    let gw = Gateway::start(
        &dir.0.join("dev"),
        &["--config", config.to_str().unwrap_or_default()],
    )
    .await?;
    let mut cmd = Command::new(bin("ptth-origin"));
    cmd.args(["--gateway", &gw.tunnel_url(), "--token", BOX_TOKEN])
        .arg("--ca")
        .arg(gw.dev.join("ca.pem"));
    for s in [
        format!("echo=127.0.0.1:{}", echo.port()),
        format!("hello=127.0.0.1:{}", hello.port()),
        format!("down=127.0.0.1:{down_port}"),
    ] {
        cmd.args(["--tcp-service", &s]);
    }
    cmd.env("RUST_LOG", "debug")
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
        hello_port: hello.port(),
        down_port,
        _down: down,
        _origin: child,
        origin_log,
        received,
    })
}

/// Sends a classic HTTP/1.1 CONNECT on `tcp`; the status and the response head.
async fn h1_connect<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut S,
    target: &str,
    auth: Option<&str>,
) -> Result<(u16, String)> {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Proxy-Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    // Byte by byte, so nothing after the head (tunnel bytes) is consumed.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, tcp.read(&mut b)).await??;
        if n == 0 {
            bail!(
                "the gateway closed before answering CONNECT: {:?}",
                String::from_utf8_lossy(&head)
            );
        }
        head.push(b[0]);
        anyhow::ensure!(head.len() < 16 * 1024, "response head too long");
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, head))
}

/// Reads the rest of a response after its head (a refusal's body), until close or 2 s.
async fn rest_of(tcp: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A deterministic byte source (xorshift64*).
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Sends `total` pseudo-random bytes through `io`, then its FIN, while reading the echo;
/// returns (sent hash, echoed hash, echoed length).
async fn bulk<S: AsyncRead + AsyncWrite + Send + 'static>(
    io: S,
    total: u64,
) -> Result<(String, String, u64)> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let send = tokio::spawn(async move {
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(buf.len() as u64) as usize;
            noise.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            wr.write_all(&buf[..n]).await?;
            sent += n as u64;
        }
        wr.shutdown().await?;
        anyhow::Ok((hex(&hash.finalize()), wr))
    });
    let mut hash = Sha256::new();
    let mut back = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf))
            .await
            .map_err(|_| anyhow!("the echo stalled after {back} bytes"))??;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        back += n as u64;
    }
    let (sent, _wr) = send.await??;
    Ok((sent, hex(&hash.finalize()), back))
}

/// Writes `msg` through `io` and reads the same bytes back.
async fn echo_once<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, msg: &[u8]) -> Result<()> {
    io.write_all(msg).await?;
    io.flush().await?;
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(STEP, io.read_exact(&mut got)).await??;
    anyhow::ensure!(got == msg, "echo said {:?}", String::from_utf8_lossy(&got));
    Ok(())
}

/// [`echo_once`], then the client's FIN; the tunnel must close in turn, and the service
/// must have received exactly `msg` (not, say, capsules meant for the gateway).
async fn echo_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    msg: &[u8],
    received: &mut tokio::sync::mpsc::UnboundedReceiver<(u64, String)>,
) -> Result<()> {
    echo_once(io, msg).await?;
    io.shutdown().await?;
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, io.read_to_end(&mut rest))
        .await
        .map_err(|_| anyhow!("the tunnel stayed open after the client's FIN"))??;
    anyhow::ensure!(rest.is_empty(), "more after the echo: {rest:?}");
    let (len, hash) = tokio::time::timeout(STEP, received.recv())
        .await?
        .ok_or_else(|| anyhow!("the echo service reported nothing"))?;
    anyhow::ensure!(
        (len, hash.as_str()) == (msg.len() as u64, hex(&Sha256::digest(msg)).as_str()),
        "the service received {len} bytes, not the {} sent",
        msg.len()
    );
    Ok(())
}

/// A connect-tcp stream seen as bytes: the test's own splice turns them into `DATA`
/// capsules on `stream` (and back).
fn capsule_client<T>(stream: T) -> DuplexStream
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mine, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(splice(
        theirs,
        FlowStream::Io(stream),
        FlowOptions::default(),
    ));
    mine
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_clients_reach_a_tcp_echo_by_every_connect_form() -> Result<()> {
    let mut s = setup("pc-forms").await?;
    let echo = format!("box:{}", s.echo_port);

    // HTTP/1.1 classic CONNECT, our client: a hashed bulk transfer.
    let mut tcp = TcpStream::connect(s.gw.listen).await?;
    let (status, head) = h1_connect(&mut tcp, &echo, Some(ALICE_BASIC)).await?;
    assert_eq!(status, 200, "{head}");
    let total: u64 = std::env::var("PTTH_CONNECT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    let (sent, back, len) = bulk(tcp, total).await?;
    assert_eq!(len, total, "bytes that came back");
    assert_eq!(back, sent, "what came back");
    let (at_service, service_hash) = tokio::time::timeout(STEP, s.received.recv())
        .await?
        .ok_or_else(|| anyhow!("the echo service reported nothing"))?;
    assert_eq!(
        (at_service, service_hash),
        (total, sent),
        "what the service received"
    );

    // HTTP/1.1 CONNECT through the TLS listener, Bearer.
    let tcp = TcpStream::connect(s.gw.listen_tls).await?;
    let mut tls = tls_public(&s.gw, tcp, &[b"http/1.1"]).await?;
    let (status, head) =
        h1_connect(&mut tls, &echo, Some(&format!("Bearer {ROBOT_TOKEN}"))).await?;
    assert_eq!(status, 200, "{head}");
    echo_and_close(&mut tls, b"over TLS", &mut s.received).await?;

    // curl's proxy tunnel (-p -x), cleartext and TLS proxies, to an HTTP service.
    let hello = format!("http://box:{}/", s.hello_port);
    for proxy in [
        format!("http://127.0.0.1:{}", s.gw.listen.port()),
        format!("https://localhost:{}", s.gw.listen_tls.port()),
    ] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-p", "-x", &proxy])
            .args(["--proxy-user", &format!("alice:{ALICE_PASSWORD}")])
            .arg("--proxy-cacert")
            .arg(s.gw.dev.join("ca.pem"))
            .arg(&hello)
            .output()
            .await?;
        assert!(
            out.status.success(),
            "curl via {proxy}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello",
            "curl via {proxy}"
        );
    }

    // HTTP/2 classic CONNECT (RFC 9113 §8.5).
    let mut send = h2c(&s.gw).await?;
    let req = Request::connect(echo.as_str())
        .header("proxy-authorization", ALICE_BASIC)
        .body(Empty::<Bytes>::new())?;
    let res = tokio::time::timeout(STEP, send.send_request(req)).await??;
    assert_eq!(res.status(), StatusCode::OK);
    let mut io = TokioIo::new(tokio::time::timeout(STEP, hyper::upgrade::on(res)).await??);
    echo_and_close(&mut io, b"h2 classic", &mut s.received).await?;

    // connect-tcp over HTTP/2 (extended CONNECT, DATA capsules).
    let path = format!("/.well-known/masque/tcp/box/{}/", s.echo_port);
    let mut req = Request::connect(format!("http://127.0.0.1:{}{path}", s.gw.listen.port()))
        .header("proxy-authorization", ALICE_BASIC)
        .header("capsule-protocol", "?1")
        .body(Empty::<Bytes>::new())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("connect-tcp"));
    let res = tokio::time::timeout(STEP, send.send_request(req)).await??;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers().get("capsule-protocol").map(|v| v.as_bytes()),
        Some(&b"?1"[..])
    );
    let upgraded = tokio::time::timeout(STEP, hyper::upgrade::on(res)).await??;
    let mut io = capsule_client(TokioIo::new(upgraded));
    echo_and_close(&mut io, b"connect-tcp over h2", &mut s.received).await?;

    // connect-tcp over HTTP/3.
    let h3 = h3_client(&s.gw).await?;
    let mut req = Request::connect(format!("https://localhost{path}"))
        .header("proxy-authorization", ALICE_BASIC)
        .header("capsule-protocol", "?1")
        .body(())?;
    req.extensions_mut()
        .insert(ptth_h3::Protocol("connect-tcp".into()));
    let (res, stream) = h3.connect(req).await?;
    assert_eq!(res.status(), StatusCode::OK);
    let mut io = capsule_client(stream);
    echo_and_close(&mut io, b"connect-tcp over h3", &mut s.received).await?;

    assert_no_secret(&s);
    Ok(())
}

/// A TLS client to the public TLS listener (`localhost`), trusting the dev CA.
async fn tls_public(
    gw: &Gateway,
    tcp: TcpStream,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(ptth_tests::dev_roots(gw)?)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await?,
    )
}

fn assert_no_secret(s: &Setup) {
    for (who, log) in [("gateway", &s.gw.log), ("origin", &s.origin_log)] {
        for secret in SECRETS {
            let leaked = log.matching(secret);
            assert!(
                leaked.is_empty(),
                "the {who}'s log shows a secret: {leaked:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_and_show_no_secret() -> Result<()> {
    let s = setup("pc-refusals").await?;
    let echo = format!("box:{}", s.echo_port);
    let robot = format!("Bearer {ROBOT_TOKEN}");
    let down = format!("box:{}", s.down_port);
    let cases: [(&str, &str, Option<&str>, u16, &str); 6] = [
        (
            "no credential",
            &echo,
            None,
            407,
            "needs Proxy-Authorization",
        ),
        (
            "a wrong password",
            &echo,
            Some(ALICE_WRONG),
            407,
            "needs Proxy-Authorization",
        ),
        (
            "a user whose reach is another grant",
            &echo,
            Some(MALLORY_BASIC),
            403,
            "may not reach box:",
        ),
        (
            "a port no grant offers",
            "box:1",
            Some(ALICE_BASIC),
            404,
            "no grant offers a TCP service at box:1",
        ),
        (
            "a service the origin cannot reach",
            &down,
            Some(&robot),
            502,
            "declined",
        ),
        (
            "a user allowed the grant but not that service",
            &down,
            Some(ALICE_BASIC),
            403,
            "may not reach",
        ),
    ];
    for (what, target, auth, want, says) in cases {
        let mut tcp = TcpStream::connect(s.gw.listen).await?;
        let (status, head) = h1_connect(&mut tcp, target, auth).await?;
        let body = rest_of(&mut tcp).await;
        assert_eq!(status, want, "{what}: {head}{body}");
        assert!(body.contains(says), "{what}: {body:?}");
        if want == 407 {
            // RFC 9110 §11.7.1: a 407 carries Proxy-Authenticate.
            assert!(
                head.to_ascii_lowercase()
                    .contains("proxy-authenticate: basic realm="),
                "{what}: {head}"
            );
        }
        for secret in SECRETS {
            assert!(
                !head.contains(secret) && !body.contains(secret),
                "{what}: {head}{body}"
            );
        }
    }
    // The declined request went to the origin; nothing of the refused ones did.
    s.origin_log
        .wait_for("declined a connection request", 5)
        .await?;
    assert_no_secret(&s);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_origin_offering_the_service_connect_is_503() -> Result<()> {
    debug_logs();
    let dir = TempDir::new("pc-none");
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[grant]]
name = "box"
token = "{BOX_TOKEN}"
services = ["echo=tcp/7"]

[[proxy-user]]
name = "alice"
password = "{ALICE_PASSWORD}"
reach = ["box/*"]
"#
        ),
    )?;
    let gw = Gateway::start(
        &dir.0.join("dev"),
        &["--config", config.to_str().unwrap_or_default()],
    )
    .await?;
    let mut tcp = TcpStream::connect(gw.listen).await?;
    let (status, head) = h1_connect(&mut tcp, "box:7", Some(ALICE_BASIC)).await?;
    let body = rest_of(&mut tcp).await;
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    assert!(body.contains("no origin offers box:7 now"), "{body:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proxy_users_connect_is_refused_as_before() -> Result<()> {
    let (echo, mut received) = echo_service().await;
    let dir = TempDir::new("pc-off");
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[grant]]\nname = \"box\"\ntoken = \"{BOX_TOKEN}\"\nservices = [\"echo=tcp/{}\"]\n",
            echo.port()
        ),
    )?;
    let gw = Gateway::start(
        &dir.0.join("dev"),
        &["--config", config.to_str().unwrap_or_default()],
    )
    .await?;
    let mut cmd = Command::new(bin("ptth-origin"));
    cmd.args(["--gateway", &gw.tunnel_url(), "--token", BOX_TOKEN])
        .arg("--ca")
        .arg(gw.dev.join("ca.pem"))
        .args(["--tcp-service", &format!("echo=127.0.0.1:{}", echo.port())])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let _log = LogTap::capture("origin", child.stderr.take());
    gw.log.wait_for("the origin offers services", 20).await?;
    let mut tcp = TcpStream::connect(gw.listen).await?;
    let (status, head) =
        h1_connect(&mut tcp, &format!("box:{}", echo.port()), Some(ALICE_BASIC)).await?;
    let body = rest_of(&mut tcp).await;
    // As before proxy users existed: the CONNECT is routed like any request, to HTTP
    // origins of host `box`, and there is none.
    assert_eq!(status, 503, "{head}{body}");
    assert!(body.contains("no origin is connected"), "{body:?}");
    // HTTP/2 classic CONNECT is refused too, and nothing reached the service.
    let mut send = h2c(&gw).await?;
    let req = Request::connect(format!("box:{}", echo.port()).as_str())
        .header("proxy-authorization", ALICE_BASIC)
        .body(Empty::<Bytes>::new())?;
    let res = tokio::time::timeout(STEP, send.send_request(req)).await??;
    assert!(!res.status().is_success(), "{}", res.status());
    let _ = res.into_body().collect().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), received.recv())
            .await
            .is_err(),
        "the service saw a connection"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_a_proxy_users_password_and_spares_open_tunnels() -> Result<()> {
    let mut s = setup("pc-reload").await?;
    let echo = format!("box:{}", s.echo_port);
    let mut open = TcpStream::connect(s.gw.listen).await?;
    let (status, head) = h1_connect(&mut open, &echo, Some(ALICE_BASIC)).await?;
    assert_eq!(status, 200, "{head}");
    echo_once(&mut open, b"before the reload").await?;

    // alice's password rotates in the config file; SIGHUP puts it in force.
    let config = s._dir.0.join("gateway.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace(ALICE_PASSWORD, "alice-pw-rotated-71e4"),
    )?;
    s.gw.signal("-HUP");
    s.gw.log.wait_for("grants reloaded", 10).await?;

    let mut old = TcpStream::connect(s.gw.listen).await?;
    let (status, head) = h1_connect(&mut old, &echo, Some(ALICE_BASIC)).await?;
    assert_eq!(status, 407, "the old password after the reload: {head}");
    let mut new = TcpStream::connect(s.gw.listen).await?;
    // alice:alice-pw-rotated-71e4, base64.
    let rotated = "Basic YWxpY2U6YWxpY2UtcHctcm90YXRlZC03MWU0";
    let (status, head) = h1_connect(&mut new, &echo, Some(rotated)).await?;
    assert_eq!(status, 200, "the new password: {head}");
    echo_and_close(&mut new, b"with the new password", &mut s.received).await?;
    // The tunnel opened before the reload runs on.
    echo_once(&mut open, b"after the reload").await?;
    assert!(
        s.gw.log.matching("restart to apply").is_empty(),
        "proxy users are reloaded, not left for a restart: {:?}",
        s.gw.log.matching("restart to apply")
    );
    Ok(())
}
