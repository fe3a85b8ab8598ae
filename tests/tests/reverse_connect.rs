//! Reverse CONNECT (draft-rosomakho-masque-reverse-connect) over HTTP/2, end to end with real
//! processes: a TCP service behind a `ptth-origin --tcp-service` reached through a gateway
//! port mapping (`[[tcp]]`), and the refusals the draft asks for.
//!
//! Run `cargo build --bins` first. `PTTH_RC_BYTES` sets the bulk transfer's size (default
//! 1 GiB).

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_tests::services::{advertise_on, extended_connect, h2_client};
use ptth_tests::{bin, tls_connect, unused_port, Gateway, LogTap, TempDir};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const BOX_TOKEN: &str = "box-token-5f1c0a7e9d";
const WEB_TOKEN: &str = "web-token-0b9e4d2c71";

/// A port nothing listens on now.
fn free_port() -> u16 {
    unused_port()
}

/// A TCP echo service; each connection's received bytes are hashed and reported on `done`.
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
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            hash.update(&buf[..n]);
                            total += n as u64;
                            if tcp.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tcp.shutdown().await;
                let _ = tx.send((total, hex(&hash.finalize())));
            });
        }
    });
    (addr, rx)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A gateway whose grant `box` offers `echo` (on `echo_port`) and `down` (on `down_port`),
/// mapped to two public ports; grant `web` offers no service.
struct Setup {
    _dir: TempDir,
    gw: Gateway,
    echo: SocketAddr,
    down: SocketAddr,
}

/// A gateway with the `box` and `web` grants and two port mappings (`echo`, `down`) on
/// ports picked now. Another test may take a picked port before the gateway binds it (the
/// tests run in parallel), so a gateway that fails to start is started again on new ports,
/// a few times.
async fn gateway(name: &str, echo_port: u16, down_port: u16, extra: &[&str]) -> Result<Setup> {
    let mut last = None;
    for _ in 0..5 {
        match gateway_once(name, echo_port, down_port, extra).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt")))
}

async fn gateway_once(name: &str, echo_port: u16, down_port: u16, extra: &[&str]) -> Result<Setup> {
    let dir = TempDir::new(name);
    let (echo, down) = (free_port(), free_port());
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[grant]]
name = "box"
token = "{BOX_TOKEN}"
services = ["echo=tcp/{echo_port}", "down=tcp/{down_port}"]

[[grant]]
name = "web"
token = "{WEB_TOKEN}"
origins = ["*"]

[[tcp]]
listen = "127.0.0.1:{echo}"
grant = "box"
service = "echo"

[[tcp]]
listen = "127.0.0.1:{down}"
grant = "box"
service = "down"
"#
        ),
    )?;
    let mut args = vec!["--config", config.to_str().unwrap_or_default()];
    args.extend_from_slice(extra);
    let gw = Gateway::start(&dir.0.join("dev"), &args).await?;
    Ok(Setup {
        _dir: dir,
        gw,
        echo: format!("127.0.0.1:{echo}").parse()?,
        down: format!("127.0.0.1:{down}").parse()?,
    })
}

/// A `ptth-origin` offering only TCP services (no HTTP), with the `box` token.
fn origin(gateway_url: &str, ca: &std::path::Path, services: &[String]) -> Result<(Child, LogTap)> {
    origin_with(gateway_url, ca, services, &[])
}

/// [`origin`] with more arguments.
fn origin_with(
    gateway_url: &str,
    ca: &std::path::Path,
    services: &[String],
    extra: &[&str],
) -> Result<(Child, LogTap)> {
    let mut cmd = Command::new(bin("ptth-origin"));
    cmd.args(["--gateway", gateway_url, "--token", BOX_TOKEN])
        .arg("--ca")
        .arg(ca);
    for s in services {
        cmd.args(["--tcp-service", s]);
    }
    cmd.args(extra);
    cmd.env(
        "RUST_LOG",
        std::env::var("PTTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting ptth-origin")?;
    let log = LogTap::capture("origin", child.stderr.take());
    Ok((child, log))
}

/// Connects to a port mapping until a flow carries an echo (an origin offers the service).
async fn wait_for_echo(addr: SocketAddr) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let tried = async {
            let mut tcp = TcpStream::connect(addr).await?;
            tcp.write_all(b"ping").await?;
            let mut got = [0u8; 4];
            tcp.read_exact(&mut got).await?;
            anyhow::ensure!(&got == b"ping", "echo said {got:?}");
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(5), tried).await {
            Ok(Ok(())) => return Ok(()),
            _ if tokio::time::Instant::now() >= deadline => {
                bail!("no origin offered the service through {addr} within 20 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Reads until the peer closes; `Ok` with what arrived, or the deadline's error.
async fn read_until_closed(tcp: &mut TcpStream, secs: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .map_err(|_| anyhow!("the public socket stayed open for {secs} s"))?;
    Ok(out)
}

/// A deterministic, fast byte source (xorshift64*).
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_echo_behind_an_origin_carries_a_bulk_transfer_hashed_on_both_ends() -> Result<()> {
    bulk_transfer("rc-bulk", &[], 1 << 30).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_http3_control_channel_a_tcp_echo_carries_a_hashed_bulk_transfer() -> Result<()> {
    bulk_transfer("rc-bulk-h3", &["--service-transport", "h3"], 64 << 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_an_http1_control_channel_a_tcp_echo_carries_a_hashed_bulk_transfer() -> Result<()> {
    bulk_transfer("rc-bulk-h1", &["--service-transport", "h1"], 64 << 20).await
}

/// A TCP echo behind an origin (control channel per `origin_extra`) carries `default_total`
/// bytes (or `PTTH_RC_BYTES`) each way, hashed where they are sent, at the service and
/// where they come back.
async fn bulk_transfer(name: &str, origin_extra: &[&str], default_total: u64) -> Result<()> {
    let (service, mut received) = echo_service().await;
    let unlisted = free_port();
    let s = gateway(name, service.port(), free_port(), &[]).await?;
    let (_origin, origin_log) = origin_with(
        &s.gw.tunnel_url(),
        &s.gw.dev.join("ca.pem"),
        &[
            format!("echo=127.0.0.1:{}", service.port()),
            // Not in the grant: the gateway ignores it and says so.
            format!("extra=127.0.0.1:{unlisted}"),
        ],
        origin_extra,
    )?;
    wait_for_echo(s.echo).await?;
    let _ = received.recv().await;
    s.gw.log
        .wait_for("advertised a service its grant does not allow", 5)
        .await?;

    let total: u64 = std::env::var("PTTH_RC_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_total);
    let started = std::time::Instant::now();
    let tcp = TcpStream::connect(s.echo).await?;
    let (mut rd, mut wr) = tcp.into_split();
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
        anyhow::Ok(hex(&hash.finalize()))
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
    let sent_hash = send.await??;
    let (at_service, service_hash) = received
        .recv()
        .await
        .ok_or_else(|| anyhow!("the echo service reported nothing"))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "reverse CONNECT echo ({name}): {total} bytes each way in {secs:.1} s ({:.0} MiB/s each way, debug build)",
        total as f64 / secs / (1 << 20) as f64
    );
    assert_eq!(at_service, total, "bytes that reached the service");
    assert_eq!(back, total, "bytes that came back");
    assert_eq!(service_hash, sent_hash, "what the service received");
    assert_eq!(hex(&hash.finalize()), sent_hash, "what came back");
    assert!(origin_log
        .matching("reverse CONNECT control channel failed")
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn a_service_that_is_down_is_declined_and_the_public_socket_closes() -> Result<()> {
    let (service, _received) = echo_service().await;
    let (_down, down_port) = ptth_tests::services::refused_tcp_port();
    let s = gateway("rc-declined", service.port(), down_port, &[]).await?;
    let (_origin, origin_log) = origin(
        &s.gw.tunnel_url(),
        &s.gw.dev.join("ca.pem"),
        &[
            format!("echo=127.0.0.1:{}", service.port()),
            format!("down=127.0.0.1:{down_port}"),
        ],
    )?;
    wait_for_echo(s.echo).await?;
    let mut tcp = TcpStream::connect(s.down).await?;
    let got = read_until_closed(&mut tcp, 15).await?;
    assert!(got.is_empty(), "{got:?}");
    origin_log
        .wait_for("declined a connection request", 5)
        .await?;
    s.gw.log
        .wait_for("the origin declined the connection request", 5)
        .await?;
    Ok(())
}

#[tokio::test]
async fn with_no_origin_offering_the_service_the_public_socket_closes_at_once() -> Result<()> {
    let s = gateway("rc-none", free_port(), free_port(), &[]).await?;
    let mut tcp = TcpStream::connect(s.echo).await?;
    let got = read_until_closed(&mut tcp, 3).await?;
    assert!(got.is_empty());
    s.gw.log.wait_for("no origin offers the service", 5).await?;
    Ok(())
}

const LISTEN: &str = "/.well-known/masque/listen/./6/";

#[tokio::test]
async fn a_grant_without_services_may_not_listen() -> Result<()> {
    let s = gateway("rc-forbidden", free_port(), free_port(), &[]).await?;
    let mut send = h2_client(&s.gw).await?;
    let res = extended_connect(&mut send, &s.gw, "connect-listen", LISTEN, WEB_TOKEN).await?;
    assert_eq!(res.status(), http::StatusCode::FORBIDDEN);
    let body = res.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("grant web allows no service"), "{text}");
    // And a wrong token is not authenticated at all.
    let res = extended_connect(&mut send, &s.gw, "connect-listen", LISTEN, "nope").await?;
    assert_eq!(res.status(), http::StatusCode::UNAUTHORIZED);
    // The grant that allows services may.
    let res = extended_connect(&mut send, &s.gw, "connect-listen", LISTEN, BOX_TOKEN).await?;
    assert_eq!(res.status(), http::StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn an_accept_for_an_unknown_request_id_is_404() -> Result<()> {
    let s = gateway("rc-404", free_port(), free_port(), &[]).await?;
    let mut send = h2_client(&s.gw).await?;
    let listen = extended_connect(&mut send, &s.gw, "connect-listen", LISTEN, BOX_TOKEN).await?;
    assert_eq!(listen.status(), http::StatusCode::OK);
    let res = extended_connect(
        &mut send,
        &s.gw,
        "connect-accept",
        "/.well-known/masque/accept/12345/",
        BOX_TOKEN,
    )
    .await?;
    assert_eq!(res.status(), http::StatusCode::NOT_FOUND);
    let body = res.into_body().collect().await?.to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("request 12345 is not an outstanding"),
        "{body:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_gateway_reusing_a_request_id_breaks_the_origins_control_channel() -> Result<()> {
    // A gateway of the test's own (the real one never reuses an ID): TLS with the dev
    // certificate, HTTP/2 with extended CONNECT, and a CONNECTION_REQUEST sent twice.
    let s = gateway("rc-dup", free_port(), free_port(), &[]).await?;
    let dev = s.gw.dev.clone();
    let certs = rustls_pemfile::certs(&mut std::fs::read(dev.join("gateway.pem"))?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(dev.join("gateway.key"))?.as_slice())?
        .ok_or_else(|| anyhow!("no key"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://localhost:{}", listener.local_addr()?.port());
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let Ok(tls) = acceptor.accept(tcp).await else {
            return;
        };
        let svc =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let ended_tx = ended_tx.clone();
                async move {
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(io) = on_upgrade.await else { return };
                        let mut io = TokioIo::new(io);
                        // CONNECTION_REQUEST (0x3b7a0c41) id 7 for local TCP port 9, twice.
                        let mut capsule = BytesMut::new();
                        capsule.extend_from_slice(&[
                            0xbb, 0x7a, 0x0c, 0x41, 0x05, 0x07, 0x00, 0x06, 0x00, 0x09,
                        ]);
                        let twice = [capsule.chunk(), capsule.chunk()].concat();
                        let _ = io.write_all(&twice).await;
                        let mut sink = Vec::new();
                        let end = match tokio::time::timeout(
                            Duration::from_secs(10),
                            io.read_to_end(&mut sink),
                        )
                        .await
                        {
                            Ok(Ok(_)) => "closed".to_string(),
                            Ok(Err(e)) => format!("reset: {e}"),
                            Err(_) => "still open".to_string(),
                        };
                        let _ = ended_tx.send(end);
                    });
                    let res = http::Response::builder()
                        .status(200)
                        .header("capsule-protocol", "?1")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(res)
                }
            });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .enable_connect_protocol()
            .serve_connection(TokioIo::new(tls), svc)
            .await;
    });
    let (_origin, origin_log) =
        origin(&url, &dev.join("ca.pem"), &["echo=127.0.0.1:1".to_string()])?;
    let line = origin_log
        .wait_for("the gateway broke the control channel's rules", 15)
        .await?;
    assert!(line.contains("reused request ID 7"), "{line}");
    let end = tokio::time::timeout(Duration::from_secs(15), ended.recv())
        .await?
        .ok_or_else(|| anyhow!("no end"))?;
    assert_ne!(end, "still open", "the origin must abort the channel");
    Ok(())
}

#[tokio::test]
async fn killing_the_origin_mid_flow_closes_the_public_socket() -> Result<()> {
    kill_mid_flow("rc-kill", &[]).await
}

#[tokio::test]
async fn over_http3_killing_the_origin_mid_flow_closes_the_public_socket() -> Result<()> {
    kill_mid_flow("rc-kill-h3", &["--service-transport", "h3"]).await
}

#[tokio::test]
async fn over_http1_killing_the_origin_mid_flow_closes_the_public_socket() -> Result<()> {
    kill_mid_flow("rc-kill-h1", &["--service-transport", "h1"]).await
}

/// An echo flows through an origin (control channel per `origin_extra`), the origin is
/// killed, and the public socket closes.
async fn kill_mid_flow(name: &str, origin_extra: &[&str]) -> Result<()> {
    let (service, _received) = echo_service().await;
    let s = gateway(name, service.port(), free_port(), &[]).await?;
    let (mut origin, _log) = origin_with(
        &s.gw.tunnel_url(),
        &s.gw.dev.join("ca.pem"),
        &[format!("echo=127.0.0.1:{}", service.port())],
        origin_extra,
    )?;
    wait_for_echo(s.echo).await?;
    let mut tcp = TcpStream::connect(s.echo).await?;
    tcp.write_all(b"hello").await?;
    let mut got = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut got)).await??;
    assert_eq!(&got, b"hello");
    origin.kill().await?;
    let rest = read_until_closed(&mut tcp, 15).await?;
    assert!(rest.is_empty(), "{rest:?}");
    Ok(())
}

/// The status code `GET /readyz` on an admin listener answers, if it answers.
async fn readyz(admin: SocketAddr) -> Option<u16> {
    let mut tcp = TcpStream::connect(admin).await.ok()?;
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut head = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut head))
        .await
        .ok()?
        .ok()?;
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn readyz_becomes(admin: SocketAddr, want: u16) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while readyz(admin).await != Some(want) {
        if tokio::time::Instant::now() > deadline {
            bail!("/readyz on {admin} never answered {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test]
async fn an_origin_offering_only_services_is_ready_while_its_channel_is_open() -> Result<()> {
    let (service, _received) = echo_service().await;
    let mut s = gateway("rc-ready", service.port(), free_port(), &[]).await?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let admin_text = admin.to_string();
    let (_origin, _log) = origin_with(
        &s.gw.tunnel_url(),
        &s.gw.dev.join("ca.pem"),
        &[format!("echo=127.0.0.1:{}", service.port())],
        &["--admin", &admin_text],
    )?;
    // No HTTP connection is needed: the open services channel is what makes it ready.
    readyz_becomes(admin, 200).await?;
    wait_for_echo(s.echo).await?;
    s.gw.kill().await;
    readyz_becomes(admin, 503).await
}

/// An HTTP/3 client on the gateway's QUIC tunnel endpoint (the origin's role, ALPN `h3`).
async fn h3_tunnel_client(gw: &Gateway) -> Result<(quinn::Endpoint, ptth_h3::H3Connection)> {
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(ptth_tests::dev_roots(gw)?)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let quic = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect(gw.tunnel, "localhost")?,
    )
    .await
    .map_err(|_| anyhow!("QUIC handshake with the tunnel endpoint timed out"))??;
    let h3 = ptth_h3::H3Connection::new(
        quic,
        ptth_h3::H3Config::new(ptth_h3::RequestDirection::ClientSends),
    )
    .await?;
    Ok((endpoint, h3))
}

/// An HTTP/3 extended CONNECT for `protocol` to `path` with `token`: the status, and the
/// stream (the refusal's reason, or the channel).
async fn h3_extended_connect(
    h3: &ptth_h3::H3Connection,
    gw: &Gateway,
    protocol: &str,
    path: &str,
    token: &str,
) -> Result<(http::StatusCode, ptth_h3::H3Stream)> {
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("https://localhost:{}{path}", gw.tunnel.port()))
        .header("capsule-protocol", "?1")
        .header("authorization", format!("Bearer {token}"))
        .body(())?;
    req.extensions_mut()
        .insert(ptth_h3::Protocol(protocol.to_string()));
    let (res, stream) =
        tokio::time::timeout(Duration::from_secs(10), h3.sender().send_connect(req))
            .await
            .map_err(|_| anyhow!("no answer to {protocol} over HTTP/3"))??;
    Ok((res.status(), stream))
}

/// Reads a refusal's body (the stream ends after it).
async fn reason(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut body)).await;
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn over_http3_a_bad_credential_is_401_and_an_unknown_accept_is_404() -> Result<()> {
    let s = gateway("rc-h3-refusals", free_port(), free_port(), &[]).await?;
    let (_endpoint, h3) = h3_tunnel_client(&s.gw).await?;
    let (status, mut stream) =
        h3_extended_connect(&h3, &s.gw, "connect-listen", LISTEN, "nope").await?;
    assert_eq!(
        status,
        http::StatusCode::UNAUTHORIZED,
        "{}",
        reason(&mut stream).await
    );
    let (status, mut stream) =
        h3_extended_connect(&h3, &s.gw, "connect-listen", LISTEN, WEB_TOKEN).await?;
    assert_eq!(status, http::StatusCode::FORBIDDEN);
    let text = reason(&mut stream).await;
    assert!(text.contains("grant web allows no service"), "{text}");
    let (status, _listen) =
        h3_extended_connect(&h3, &s.gw, "connect-listen", LISTEN, BOX_TOKEN).await?;
    assert_eq!(status, http::StatusCode::OK);
    let (status, mut stream) = h3_extended_connect(
        &h3,
        &s.gw,
        "connect-accept",
        "/.well-known/masque/accept/12345/",
        BOX_TOKEN,
    )
    .await?;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    let text = reason(&mut stream).await;
    assert!(
        text.contains("request 12345 is not an outstanding"),
        "{text}"
    );
    Ok(())
}

/// A new TLS connection (ALPN `http/1.1`) to the tunnel listener with `GET path` and
/// `Upgrade: exchange`: the status, and the connection with any bytes read past the head.
async fn h1_upgrade(
    gw: &Gateway,
    exchange: &str,
    path: &str,
    token: &str,
) -> Result<(
    u16,
    String,
    impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    BytesMut,
)> {
    let mut tls = tls_connect(gw, &[b"http/1.1"]).await?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: Upgrade\r\nUpgrade: {exchange}\r\nCapsule-Protocol: ?1\r\nAuthorization: Bearer {token}\r\n\r\n",
        gw.tunnel.port()
    );
    tls.write_all(head.as_bytes()).await?;
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read_buf(&mut buf))
            .await
            .map_err(|_| anyhow!("no answer to {exchange} over HTTP/1.1"))??;
        if n == 0 {
            bail!("the gateway closed the connection without an answer to {exchange}");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = buf.split_off(end);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP/1.1 answer: {head:?}"))?;
    Ok((status, head, tls, rest))
}

#[tokio::test]
async fn over_http1_a_bad_credential_is_401_and_an_unknown_accept_is_404() -> Result<()> {
    let s = gateway("rc-h1-refusals", free_port(), free_port(), &[]).await?;
    let (status, head, ..) = h1_upgrade(&s.gw, "connect-listen", LISTEN, "nope").await?;
    assert_eq!(status, 401, "{head}");
    let (status, head, _listen, _) = h1_upgrade(&s.gw, "connect-listen", LISTEN, BOX_TOKEN).await?;
    assert_eq!(status, 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("upgrade: connect-listen"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("capsule-protocol: ?1"),
        "{head}"
    );
    let accept = "/.well-known/masque/accept/12345/";
    let (status, head, ..) = h1_upgrade(&s.gw, "connect-accept", accept, "nope").await?;
    assert_eq!(status, 401, "{head}");
    let (status, head, ..) = h1_upgrade(&s.gw, "connect-accept", accept, BOX_TOKEN).await?;
    assert_eq!(status, 404, "{head}");
    Ok(())
}

#[tokio::test]
async fn over_http1_an_accept_presented_by_another_identity_is_refused() -> Result<()> {
    use ptth_core::{
        CapsuleDecoder, Decoded, IpProtocol, OriginChannel, OriginEvent, ReverseExchange,
        ReverseTemplate, Service, ServicePort, DEFAULT_MAX_CONTROL_CAPSULE,
    };
    let echo_port = free_port();
    let s = gateway("rc-h1-identity", echo_port, free_port(), &[]).await?;
    // The test is the origin: a channel of grant `box` offering `echo`.
    let (status, head, mut channel, mut buf) =
        h1_upgrade(&s.gw, "connect-listen", LISTEN, BOX_TOKEN).await?;
    assert_eq!(status, 101, "{head}");
    let port = ServicePort::new(echo_port).ok_or_else(|| anyhow!("port 0"))?;
    channel
        .write_all(&OriginChannel::advertise(&[Service::local(IpProtocol::Tcp, port)]).to_bytes())
        .await?;
    // A public connection makes the gateway ask for a flow (once it has read the
    // advertisement: until then public connections are closed, so try again).
    let mut decoder = CapsuleDecoder::new(DEFAULT_MAX_CONTROL_CAPSULE);
    let mut origin = OriginChannel::new(8);
    let mut public = Vec::new();
    let mut tries = 0;
    let id = loop {
        if let Some(Decoded::Capsule(c)) = decoder.decode(&mut buf)? {
            if let Some(OriginEvent::Requested(r)) = origin.on_capsule(&c)? {
                break r.id;
            }
            continue;
        }
        if tries == 20 {
            bail!("no CONNECTION_REQUEST after {tries} public connections");
        }
        tries += 1;
        public.push(TcpStream::connect(s.echo).await?);
        if let Ok(n) =
            tokio::time::timeout(Duration::from_millis(500), channel.read_buf(&mut buf)).await
        {
            anyhow::ensure!(n? > 0, "the gateway closed the channel");
        }
    };
    let authority: http::uri::Authority = format!("localhost:{}", s.gw.tunnel.port()).parse()?;
    let uri =
        ReverseTemplate::default_for(ReverseExchange::Accept, &authority)?.expand_accept(id)?;
    let accept = uri.path().to_string();
    // Grant `web` is a valid identity, but not the channel's: its accept matches nothing.
    let (status, head, ..) = h1_upgrade(&s.gw, "connect-accept", &accept, WEB_TOKEN).await?;
    assert_eq!(status, 404, "{head}");
    // The channel's own identity may accept it.
    let (status, head, ..) = h1_upgrade(&s.gw, "connect-accept", &accept, BOX_TOKEN).await?;
    assert_eq!(status, 101, "{head}");
    Ok(())
}

#[tokio::test]
async fn a_stopping_gateway_lets_a_flow_run_until_its_grace_ends_then_closes_it() -> Result<()> {
    let (service, _received) = echo_service().await;
    let mut s = gateway(
        "rc-stop-cut",
        service.port(),
        free_port(),
        &["--shutdown-grace", "4"],
    )
    .await?;
    let (_origin, _log) = origin(
        &s.gw.tunnel_url(),
        &s.gw.dev.join("ca.pem"),
        &[format!("echo=127.0.0.1:{}", service.port())],
    )?;
    wait_for_echo(s.echo).await?;
    let mut flow = TcpStream::connect(s.echo).await?;
    echo_once(&mut flow, b"before").await?;
    let stopped = std::time::Instant::now();
    s.gw.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The flow in progress still carries bytes while the gateway stops...
    echo_once(&mut flow, b"while stopping").await?;
    // ...no new flow is taken...
    if let Ok(mut late) = TcpStream::connect(s.echo).await {
        let got = read_until_closed(&mut late, 3).await?;
        assert!(got.is_empty(), "{got:?}");
    }
    // ...and the grace's end closes it, and the gateway exits.
    let rest = read_until_closed(&mut flow, 15).await?;
    assert!(rest.is_empty(), "{rest:?}");
    let held = stopped.elapsed();
    assert!(
        held >= Duration::from_secs(3),
        "closed after {held:?}, before the 4 s grace"
    );
    s.gw.wait(10).await?;
    Ok(())
}

#[tokio::test]
async fn a_stopping_gateway_waits_for_a_flow_in_progress_and_exits_when_it_ends() -> Result<()> {
    let (service, _received) = echo_service().await;
    let mut s = gateway(
        "rc-stop-wait",
        service.port(),
        free_port(),
        &["--shutdown-grace", "60"],
    )
    .await?;
    let (_origin, _log) = origin(
        &s.gw.tunnel_url(),
        &s.gw.dev.join("ca.pem"),
        &[format!("echo=127.0.0.1:{}", service.port())],
    )?;
    wait_for_echo(s.echo).await?;
    let mut flow = TcpStream::connect(s.echo).await?;
    echo_once(&mut flow, b"before").await?;
    s.gw.signal("-TERM");
    // Still running while the flow is open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    echo_once(&mut flow, b"while stopping").await?;
    assert!(
        s.gw.wait(1).await.is_err(),
        "the gateway exited with a flow in progress"
    );
    // The flow ends: the gateway exits long before its 60 s grace.
    flow.shutdown().await?;
    let _ = read_until_closed(&mut flow, 10).await?;
    s.gw.wait(15).await?;
    Ok(())
}

/// Sends `bytes` through an echo flow and reads them back.
async fn echo_once(tcp: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    tcp.write_all(bytes).await?;
    let mut got = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .map_err(|_| anyhow!("no echo of {:?}", String::from_utf8_lossy(bytes)))??;
    anyhow::ensure!(got == bytes, "echo said {got:?}");
    Ok(())
}

#[tokio::test]
async fn a_control_channel_without_available_services_is_dropped() -> Result<()> {
    let s = gateway("rc-silent", free_port(), free_port(), &[]).await?;
    let mut send = h2_client(&s.gw).await?;
    let listen = extended_connect(&mut send, &s.gw, "connect-listen", LISTEN, BOX_TOKEN).await?;
    assert_eq!(listen.status(), http::StatusCode::OK);
    let started = std::time::Instant::now();
    let mut listen = listen;
    let mut io = TokioIo::new(hyper::upgrade::on(&mut listen).await?);
    // The gateway ends the channel's stream: reading it ends or fails.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        let mut sink = Vec::new();
        let _ = io.read_to_end(&mut sink).await;
    })
    .await;
    assert!(ended.is_ok(), "the silent channel is still open after 20 s");
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(9), "dropped after {after:?}");
    s.gw.log
        .wait_for("sent no AVAILABLE_SERVICES within", 5)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_channel_opened_for_one_ip_protocol_is_never_asked_for_another() -> Result<()> {
    let echo_port = free_port();
    let s = gateway("rc-ipproto", echo_port, free_port(), &[]).await?;
    let tcp_echo = ptth_core::Service::local(
        ptth_core::IpProtocol::Tcp,
        ptth_core::ServicePort::new(echo_port).ok_or_else(|| anyhow!("port 0"))?,
    );
    let mut send = h2_client(&s.gw).await?;
    // A channel for UDP flows only (ipproto 17) advertising the TCP service its grant
    // allows: the gateway ignores the service and says why.
    let mut udp_only = advertise_on(
        &mut send,
        &s.gw,
        BOX_TOKEN,
        "/.well-known/masque/listen/./17/",
        tcp_echo.clone(),
    )
    .await?;
    s.gw.log
        .wait_for("outside its connect-listen's ipproto", 10)
        .await?;
    let mut public = TcpStream::connect(s.echo).await?;
    let closed = read_until_closed(&mut public, 5).await?;
    assert!(
        closed.is_empty(),
        "no flow without an origin offering the service"
    );
    let mut buf = [0u8; 64];
    let asked = tokio::time::timeout(Duration::from_millis(500), udp_only.read(&mut buf)).await;
    assert!(
        asked.is_err(),
        "nothing is asked on the UDP-only channel: {asked:?}"
    );

    // The same service on a channel for TCP (ipproto 6) is asked for the next flow.
    let mut tcp_only = advertise_on(
        &mut send,
        &s.gw,
        BOX_TOKEN,
        "/.well-known/masque/listen/./6/",
        tcp_echo,
    )
    .await?;
    // Public connections until the advertisement has been taken (each one before it is
    // closed at once), then the channel is asked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut publics = Vec::new();
    let n = loop {
        publics.push(TcpStream::connect(s.echo).await?);
        match tokio::time::timeout(Duration::from_millis(200), tcp_only.read(&mut buf)).await {
            Ok(read) => break read?,
            Err(_) if tokio::time::Instant::now() >= deadline => {
                bail!("no CONNECTION_REQUEST on the TCP channel within 10 s")
            }
            Err(_) => {}
        }
    };
    // CONNECTION_REQUEST's private code point, 0x3b7a0c41, as a 4-byte varint.
    assert_eq!(
        &buf[..4.min(n)],
        &[0xbb, 0x7a, 0x0c, 0x41],
        "{:?}",
        &buf[..n]
    );
    Ok(())
}

#[tokio::test]
async fn a_reload_that_rotates_the_origins_token_closes_its_channel_and_spares_its_flows(
) -> Result<()> {
    let (service, _received) = echo_service().await;
    let s = gateway("rc-reload", service.port(), free_port(), &[]).await?;
    let (_origin, origin_log) = origin(
        &s.gw.tunnel_url(),
        &s.gw.dev.join("ca.pem"),
        &[format!("echo=127.0.0.1:{}", service.port())],
    )?;
    wait_for_echo(s.echo).await?;
    let mut held = TcpStream::connect(s.echo).await?;
    echo_once(&mut held, b"before the reload").await?;

    // A reload with the grants unchanged keeps the channel: new flows go on.
    s.gw.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after_same = TcpStream::connect(s.echo).await?;
    echo_once(&mut after_same, b"after a reload that changed nothing").await?;

    // The grant's token rotated: the channel's credential proves nothing any more.
    let config = s._dir.0.join("gateway.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, text.replace(BOX_TOKEN, "box-token-rotated-44c1e0"))?;
    s.gw.signal("-HUP");
    s.gw.log
        .wait_for("reverse CONNECT control channel closed on reload", 10)
        .await?;
    // The flow in progress runs on.
    echo_once(&mut held, b"the flow outlives its channel").await?;
    // New ones find no origin: the origin's old token is refused when it listens again.
    origin_log
        .wait_for("refused connect-listen with 401", 20)
        .await?;
    let mut late = TcpStream::connect(s.echo).await?;
    let got = read_until_closed(&mut late, 5).await?;
    assert!(got.is_empty(), "no flow without a channel: {got:?}");
    Ok(())
}

/// A stopping gateway closes the setup connections that carry control channels in order,
/// and its stop waits for those closes: over HTTP/2 (RFC 9113 §6.8) the origin reads
/// GOAWAY and its channel's END_STREAM, and the connection ends in order (the origin's h2
/// closes it on the GOAWAY once no stream is left, or reads the gateway's close_notify,
/// whichever comes first; the gateway reads until the origin's close has arrived, so
/// neither side is reset); over HTTP/1.1, whose channel is the whole connection, the
/// channel ends with close_notify. (A gateway that stops its workers right after the cut
/// leaves the origin to read a lost connection: "peer closed connection without sending
/// TLS close_notify", and no GOAWAY.) The test is the origin, on the origin's own HTTP/2
/// client (`ptth_h2::client`), and holds the client's handle so that the client closes
/// only on the gateway's GOAWAY.
#[tokio::test]
async fn a_stopping_gateway_closes_its_setup_connections_in_order() -> Result<()> {
    use ptth_core::{IpProtocol, OriginChannel, Service, ServicePort};
    let echo_port = free_port();
    let mut s = gateway("rc-stop-close", echo_port, free_port(), &[]).await?;
    let port = ServicePort::new(echo_port).ok_or_else(|| anyhow!("port 0"))?;
    let advertisement = OriginChannel::advertise(&[Service::local(IpProtocol::Tcp, port)]);
    let within = Duration::from_secs(20);

    // The HTTP/2 channel.
    let tls = tls_connect(&s.gw, &[b"h2"]).await?;
    let (client, conn) = ptth_h2::client::handshake(tls, ptth_h2::Windows::default()).await?;
    let driver = tokio::spawn(ptth_h2::client::drive(conn, ptth_h2::client::KEEP_ALIVE));
    let mut tries = 0;
    while !client.extended_connect() {
        tries += 1;
        anyhow::ensure!(tries < 1_000, "the gateway did not enable extended CONNECT");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("https://localhost:{}{LISTEN}", s.gw.tunnel.port()))
        .header("capsule-protocol", "?1")
        .header("authorization", format!("Bearer {BOX_TOKEN}"))
        .body(Empty::<Bytes>::new().map_err(|n| match n {}).boxed_unsync())?;
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("connect-listen"));
    let mut res = tokio::time::timeout(within, client.send(req))
        .await
        .map_err(|_| anyhow!("no answer to connect-listen"))?
        .map_err(|e| anyhow!("connect-listen: {e}"))?;
    assert_eq!(res.status(), http::StatusCode::OK);
    let mut h2_channel =
        ptth_h2::client::take_tunnel(&mut res).ok_or_else(|| anyhow!("no tunnel"))?;
    h2_channel.write_all(&advertisement.to_bytes()).await?;
    h2_channel.flush().await?;

    // The HTTP/1.1 channel.
    let (status, head, mut h1_channel, _) =
        h1_upgrade(&s.gw, "connect-listen", LISTEN, BOX_TOKEN).await?;
    assert_eq!(status, 101, "{head}");
    h1_channel.write_all(&advertisement.to_bytes()).await?;
    h1_channel.flush().await?;

    s.gw.signal("-TERM");
    // Each channel's stream ends (no capsule was due on either)...
    let mut rest = Vec::new();
    let h2_end = tokio::time::timeout(within, h2_channel.read_to_end(&mut rest))
        .await
        .map_err(|_| anyhow!("the HTTP/2 channel did not end"))?;
    assert!(h2_end.is_ok(), "the HTTP/2 channel failed: {h2_end:?}");
    // An origin whose channel ended lets go of it (ptth-origin drops it and dials again).
    drop(h2_channel);
    // ...and over HTTP/1.1 with close_notify: an end without it reads as UnexpectedEof.
    let h1_end = tokio::time::timeout(within, h1_channel.read_to_end(&mut rest))
        .await
        .map_err(|_| anyhow!("the HTTP/1.1 channel did not end"))?;
    assert!(
        h1_end.is_ok(),
        "the HTTP/1.1 channel's connection was lost: {h1_end:?}"
    );
    drop(h1_channel);
    // The HTTP/2 connection ended in order, on the gateway's GOAWAY.
    let ended = tokio::time::timeout(within, driver)
        .await
        .map_err(|_| anyhow!("the HTTP/2 connection did not end"))??;
    assert!(
        ended.is_ok(),
        "the HTTP/2 setup connection was lost, not closed: {ended:?}"
    );
    assert!(client.peer_went_away(), "no GOAWAY from the gateway");
    let exit = s.gw.wait(40).await?;
    assert!(exit.success(), "{exit:?}");
    Ok(())
}
