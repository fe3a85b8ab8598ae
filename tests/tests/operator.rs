//! The operator's first day, end to end: a TLS-only gateway with certificates per public host
//! chosen by SNI and reloaded on SIGHUP, the warnings that say what to do, and the log lines
//! that must stay quiet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use ptth_tests::{bin_dir, sha256_hex, unused_port, Gateway, LogTap, Origin, TempDir};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A private CA for the public certificates, distinct from the dev CA the tunnel uses, so a
/// client trusting only it proves which certificate the gateway chose.
struct PublicCa {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: String,
}

impl PublicCa {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Self { cert, key, pem }
    }

    /// Writes `DIR/NAME.crt` and `DIR/NAME.key` for `host`.
    fn issue(&self, dir: &Path, name: &str, host: &str) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![host.to_string()])
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// A gateway started from a config file, its printed addresses and its log.
struct FileGateway {
    child: Child,
    stdout: Vec<String>,
    listen_tls: SocketAddr,
    log: LogTap,
}

impl FileGateway {
    async fn start(config: &Path) -> Result<Self> {
        let mut child = Command::new(bin_dir().join("ptth-gateway"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting ptth-gateway")?;
        let log = LogTap::capture("gateway", child.stderr.take());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let read = async {
            while let Some(line) = lines.next_line().await? {
                let done = line.starts_with("tunnel=");
                stdout.push(line);
                if done {
                    break;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| anyhow!("the gateway did not print its addresses"))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let listen_tls = stdout
            .iter()
            .find_map(|l| l.strip_prefix("listen-tls="))
            .ok_or_else(|| anyhow!("no listen-tls= in {stdout:?}"))?
            .parse()?;
        Ok(Self {
            child,
            stdout,
            listen_tls,
            log,
        })
    }

    fn hup(&self) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
    }
}

/// An HTTP/1.1 connection over TLS to `addr` for `host` (SNI and `Host`), verified against
/// the public CA alone.
async fn https_connection(
    ca: &PublicCa,
    addr: SocketAddr,
    host: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(ca.client_config()).connect(name, tcp),
    )
    .await??;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// Whether a QUIC handshake for `host` with ALPN `h3` on the public HTTP/3 endpoint (the TLS
/// listener's UDP port) verifies against the public CA alone.
async fn h3_handshake(ca: &PublicCa, addr: SocketAddr, host: &str) -> Result<()> {
    let mut tls = (*ca.client_config()).clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(addr, host)?)
        .await
        .map_err(|_| anyhow!("QUIC handshake for {host} timed out"))??;
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(())
}

async fn status_and_body(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
) -> Result<(u16, String)> {
    let req = http::Request::get("/")
        .header("host", host)
        .body(Empty::new())?;
    let res = tokio::time::timeout(Duration::from_secs(20), send.send_request(req)).await??;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn a_tls_only_gateway_picks_certificates_by_sni_and_reloads_them_without_dropping_connections(
) {
    let dir = TempDir::new("operator-sni");
    let public = dir.0.join("public");
    std::fs::create_dir_all(&public).unwrap();
    let ca = PublicCa::new();
    ca.issue(&public, "a", "a.test");
    ca.issue(&public, "b", "b.test");
    let token_sha = sha256_hex(b"operator-token-0123456789");
    // Only listen-tls: no cleartext listener. Relative paths: from the file's directory.
    let config = dir.0.join("gateway.toml");
    let write_config = |queue_limit: u32| {
        std::fs::write(
            &config,
            format!(
                r#"listen-tls = "127.0.0.1:0"
tunnel = "127.0.0.1:0"
dev = "dev"
queue-limit = {queue_limit}

[[certificate]]
dir = "public"

[[grant]]
name = "apps"
token-sha256 = "{token_sha}"
origins = ["https://a.test", "https://b.test", "https://c.test"]
"#
            ),
        )
        .unwrap();
    };
    write_config(100);
    let gw = FileGateway::start(&config).await.unwrap();
    assert!(
        !gw.stdout.iter().any(|l| l.starts_with("listen=")),
        "no cleartext listener: {:?}",
        gw.stdout
    );
    // The one granted host without a certificate is named.
    gw.log
        .wait_for(
            "granted host c.test (grant \"apps\") has no public certificate",
            10,
        )
        .await
        .unwrap();
    assert!(gw.log.matching("granted host a.test").is_empty());
    assert!(gw.log.matching("granted host b.test").is_empty());

    // Each host gets its own certificate, verified against the public CA alone; the 503
    // names the host.
    let mut kept = https_connection(&ca, gw.listen_tls, "a.test")
        .await
        .unwrap();
    let (status, body) = status_and_body(&mut kept, "a.test").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(
        body.trim(),
        "no origin is connected for this host and path (host a.test)"
    );
    let mut b = https_connection(&ca, gw.listen_tls, "b.test")
        .await
        .unwrap();
    assert_eq!(status_and_body(&mut b, "b.test").await.unwrap().0, 503);
    // c.test has no certificate yet: the default one (the dev CA's) fails verification.
    let refused = https_connection(&ca, gw.listen_tls, "c.test").await;
    assert!(
        refused.is_err(),
        "c.test verified before it had a certificate"
    );
    // Public HTTP/3 picks by SNI the same way.
    h3_handshake(&ca, gw.listen_tls, "b.test").await.unwrap();
    assert!(h3_handshake(&ca, gw.listen_tls, "c.test").await.is_err());

    // Add c.test's certificate and change a setting that needs a restart; SIGHUP.
    ca.issue(&public, "c", "c.test");
    write_config(200);
    gw.hup();
    gw.log
        .wait_for("queue-limit changed in gateway.toml; restart to apply", 20)
        .await
        .unwrap();
    let mut c = https_connection(&ca, gw.listen_tls, "c.test")
        .await
        .unwrap();
    assert_eq!(status_and_body(&mut c, "c.test").await.unwrap().0, 503);
    h3_handshake(&ca, gw.listen_tls, "c.test").await.unwrap();
    // The connection opened before the reload still works.
    let (status, body) = status_and_body(&mut kept, "a.test").await.unwrap();
    assert_eq!((status, body.contains("host a.test")), (503, true));
    assert_eq!(
        gw.log.matching("granted host c.test").len(),
        1,
        "after the reload c.test is covered and not warned about again"
    );
}

/// Raw bytes on the tunnel port, then close.
async fn poke(tunnel: SocketAddr, bytes: &[u8]) {
    let mut tcp = tokio::net::TcpStream::connect(tunnel).await.unwrap();
    if !bytes.is_empty() {
        tcp.write_all(bytes).await.unwrap();
    }
    tcp.shutdown().await.unwrap();
    drop(tcp);
}

#[tokio::test]
async fn health_checks_and_abandoned_handshakes_are_not_warnings() {
    let dir = TempDir::new("operator-quiet");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    // A load balancer's TCP check: connect, close without a byte.
    poke(gw.tunnel, b"").await;
    // A TLS handshake abandoned at EOF: the start of a ClientHello record, then close.
    poke(gw.tunnel, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await;
    // Then something an operator must hear about: not TLS at all.
    poke(gw.tunnel, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    gw.log
        .wait_for("origin connection refused", 20)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warnings: Vec<String> = gw
        .log
        .text()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "only the non-TLS bytes are worth a warning: {warnings:#?}"
    );
}

#[tokio::test]
async fn a_wrong_gateway_pin_is_named_as_a_pin_mismatch() {
    let dir = TempDir::new("operator-pin");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let wrong = "00".repeat(32);
    for mechanism in ["rh2", "rh3"] {
        let origin = Origin::start(&gw, mechanism, "pin.localhost", &["--gateway-pin", &wrong])
            .await
            .unwrap();
        let line = origin.log.wait_for("pin mismatch", 30).await.unwrap();
        assert!(
            line.contains("its SPKI SHA-256 is") && !line.contains("see --ca"),
            "{mechanism}: {line}"
        );
    }
}

/// The `sh` blocks of docs/production.md, in order.
fn guide_blocks() -> Vec<String> {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/production.md"),
    )
    .unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn free_port() -> u16 {
    unused_port()
}

#[tokio::test]
async fn the_production_guide_runs_as_written() {
    let blocks = guide_blocks();
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    let dir = TempDir::new("operator-guide");
    let etc = dir.0.join("etc");
    // The guide's blocks in one shell, as a reader pastes them; background processes are
    // ended when it exits, whatever happened.
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{}",
        blocks.join("\n")
    );
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env("PTTH_ETC", &etc)
        .env("GATEWAY_HOST", "localhost")
        .env("PUBLIC_PORT", free_port().to_string())
        .env("TUNNEL_PORT", free_port().to_string())
        .env("APP_PORT", free_port().to_string())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut out = String::new();
    let mut err = String::new();
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let run = async {
        use tokio::io::AsyncReadExt;
        let (a, b, status) = tokio::join!(
            so.read_to_string(&mut out),
            se.read_to_string(&mut err),
            child.wait()
        );
        a.and(b).and(status)
    };
    let status = tokio::time::timeout(Duration::from_secs(240), run).await;
    // Whatever is left of the group (only on a failure) goes with it.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
    let logs: String = ["gateway.log", "origin-app.log", "origin-api.log"]
        .iter()
        .map(|f| {
            format!(
                "--- {f}\n{}\n",
                std::fs::read_to_string(etc.join(f)).unwrap_or_default()
            )
        })
        .collect();
    let status = match status {
        Ok(s) => s.unwrap(),
        Err(_) => {
            panic!("the guide did not finish in time\nstdout:\n{out}\nstderr:\n{err}\n{logs}")
        }
    };
    assert!(
        status.success(),
        "the guide failed ({status})\nstdout:\n{out}\nstderr:\n{err}\n{logs}"
    );
    assert_eq!(
        out.matches("hello from the app").count(),
        3,
        "before and after each rotation\n{out}\n{logs}"
    );
    assert!(out.contains("api.example.com answers"), "{out}");
}
