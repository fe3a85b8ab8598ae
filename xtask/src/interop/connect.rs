//! The public CONNECT rows of `cargo xtask interop`: real proxy clients reach a TCP service
//! behind an origin (reverse CONNECT) through the gateway's public listeners.
//!
//! A gateway of its own (`[[proxy-user]]` and a grant with a `tcp` service), an origin with
//! `--tcp-service hello=127.0.0.1:PORT`, and a TCP service run by xtask that answers any
//! HTTP/1.1 request with a fixed body. Each row is one client command; nghttp and h2load
//! have no CONNECT (nor proxy) mode, so they have no row.

use crate::procs::{self, Children, TempDir};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "interop";
/// What the service answers; a row passes when curl prints exactly this.
const BODY: &str = "hello through CONNECT";

/// Runs the rows; the Markdown table, and a failure line per failed row in `failures`.
pub fn rows(bin: &Path, failures: &mut Vec<String>) -> Result<String> {
    let tmp = TempDir::new("interop-connect")?;
    let dev = tmp.0.join("dev");
    let mut children = Children::default();
    let service = TcpListener::bind("127.0.0.1:0")?;
    let port = service.local_addr()?.port();
    std::thread::spawn(move || {
        for tcp in service.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            std::thread::spawn(move || {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    tcp,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
            });
        }
    });
    // Secrets for this run only: the proxy user's password and the origin's token.
    let secret = |seed: u64| -> String {
        procs::pseudo_random(16, seed)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let (password, token) = (secret(nonce), secret(nonce ^ 0x5eed));
    let config = tmp.0.join("connect.toml");
    std::fs::write(
        &config,
        format!(
            "[[grant]]\nname = \"svc\"\ntoken = \"{token}\"\nservices = [\"hello=tcp/{port}\"]\n\n\
             [[proxy-user]]\nname = \"{USER}\"\npassword = \"{password}\"\nreach = [\"svc/hello\"]\n"
        ),
    )?;
    let gw = procs::start_gateway(
        &mut children,
        bin,
        &dev,
        "127.0.0.1:0",
        &["--config", &config.to_string_lossy()],
    )?;
    let mut origin = Command::new(bin.join("ptth-origin"));
    origin
        .args([
            "--gateway",
            &format!("https://localhost:{}", gw.tunnel.port()),
        ])
        .arg("--ca")
        .arg(dev.join("ca.pem"))
        .args(["--token", &token])
        .args(["--tcp-service", &format!("hello=127.0.0.1:{port}")])
        .stdout(Stdio::null());
    children.spawn("origin (tcp service)", &mut origin)?;
    let ca = dev.join("ca.pem");
    let target = format!("http://svc:{port}/");
    let cases = [
        (
            "curl HTTP/1.1 proxy tunnel, cleartext listener",
            format!("http://127.0.0.1:{}", gw.listen.port()),
        ),
        (
            "curl HTTP/1.1 proxy tunnel, TLS listener (HTTPS proxy)",
            format!("https://localhost:{}", gw.listen_tls.port()),
        ),
    ];
    let mut table = String::from("| client | command | result |\n|---|---|---|\n");
    // The origin's control channel may take a moment: the first row retries for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, proxy) in &cases {
        let shown = format!(
            "`curl -p -x {} --proxy-user {USER}:PASSWORD --proxy-cacert DIR/ca.pem http://svc:PORT/`",
            if proxy.starts_with("https") { "https://localhost:TLS" } else { "http://127.0.0.1:PORT" }
        );
        let result = loop {
            let r = curl(proxy, &ca, &password, &target);
            match r {
                Ok(()) => break Ok(()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => break Err(e),
            }
        };
        let cell = match result {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                failures.push(format!("public CONNECT / {name}: {e:#}"));
                "**FAIL**".to_string()
            }
        };
        table.push_str(&format!("| {name} | {shown} | {cell} |\n"));
    }
    table.push_str("| nghttp, h2load | (no CONNECT or proxy mode) | not run |\n");
    Ok(table)
}

fn curl(proxy: &str, ca: &Path, password: &str, target: &str) -> Result<()> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-p", "-x", proxy])
        .args(["--proxy-user", &format!("{USER}:{password}")])
        .arg("--proxy-cacert")
        .arg(ca)
        .arg(target)
        .output()
        .context("running curl")?;
    let body = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || body != BODY {
        bail!(
            "curl exited {} with {body:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
