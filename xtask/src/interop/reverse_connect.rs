//! The interop rows for reverse CONNECT (draft-rosomakho-masque-reverse-connect): one real
//! `ptth-origin --tcp-service` per control-channel HTTP version (`--service-transport h1`,
//! `h2`, `h3`) behind one gateway, each offering its own TCP echo, reached through its own
//! `[[tcp]]` port mapping by a plain TCP client that sends [`ECHO_BYTES`] and checks them
//! back.

use crate::procs::{self, Children, TempDir};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes sent through each row's echo and checked back.
pub const ECHO_BYTES: usize = 1 << 20;

/// The control-channel versions, as `--service-transport` names them, with what each row's
/// setup is.
const VERSIONS: [(&str, &str); 3] = [
    (
        "h1",
        "`GET` + `Upgrade: connect-listen` → 101; each accept a new TLS connection, `Upgrade: connect-accept`",
    ),
    (
        "h2",
        "extended CONNECT `:protocol=connect-listen` / `connect-accept` on one TLS connection (RFC 8441)",
    ),
    (
        "h3",
        "extended CONNECT `:protocol=connect-listen` / `connect-accept` on one QUIC connection (RFC 9220)",
    ),
];

/// A TCP echo server on loopback, one thread per connection; its address.
fn echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a TCP echo")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut tcp = tcp;
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = tcp.read(&mut buf) {
                    if n == 0 || tcp.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A loopback port nothing listens on now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends `body` through the echo behind `mapping` and checks it comes back.
fn echo_through(mapping: SocketAddr, body: &[u8]) -> Result<()> {
    let mut tcp = TcpStream::connect_timeout(&mapping, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut writer = tcp.try_clone()?;
    let sent = body.to_vec();
    let send = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; body.len()];
    tcp.read_exact(&mut back).context("reading the echo back")?;
    send.join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))?
        .context("sending")?;
    if back != body {
        bail!("the echo came back different");
    }
    Ok(())
}

/// Runs the rows with the debug binaries in `bin`: the table, and a line per failure.
pub fn run(bin: &Path, children: &mut Children) -> Result<(String, Vec<String>)> {
    let tmp = TempDir::new("interop-rc")?;
    let dev = tmp.0.join("dev");
    let token: String = procs::pseudo_random(16, 0x7c0d_e5a1)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut grant_services = Vec::new();
    let mut mappings = String::new();
    let mut rows = Vec::new();
    for (version, _) in VERSIONS {
        let service = echo_server()?;
        let mapping: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        grant_services.push(format!("\"echo-{version}=tcp/{}\"", service.port()));
        let _ = write!(
            mappings,
            "[[tcp]]\nlisten = \"{mapping}\"\ngrant = \"interop-services\"\nservice = \"echo-{version}\"\n\n"
        );
        rows.push((version, service, mapping));
    }
    let config = tmp.0.join("services.toml");
    std::fs::write(
        &config,
        format!(
            "[[grant]]\nname = \"interop-services\"\ntoken = \"{token}\"\nservices = [{}]\n\n{mappings}",
            grant_services.join(", ")
        ),
    )?;
    let gw = procs::start_gateway(
        children,
        bin,
        &dev,
        "127.0.0.1:0",
        &["--config", &config.to_string_lossy()],
    )?;
    let body = procs::pseudo_random(ECHO_BYTES, 0x0dd5_eed5);
    let mut table =
        String::from("| control channel | setup | TCP echo through `[[tcp]]` |\n|---|---|---|\n");
    let mut failures = Vec::new();
    for ((version, setup), (_, service, mapping)) in VERSIONS.iter().zip(&rows) {
        let mut cmd = std::process::Command::new(bin.join("ptth-origin"));
        cmd.args([
            "--gateway",
            &format!("https://localhost:{}", gw.tunnel.port()),
        ])
        .arg("--ca")
        .arg(dev.join("ca.pem"))
        .args(["--token", &token])
        .args([
            "--tcp-service",
            &format!("echo-{version}=127.0.0.1:{}", service.port()),
        ])
        .args(["--service-transport", version])
        .env(
            "RUST_LOG",
            std::env::var("PTTH_XTASK_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null());
        children.spawn(&format!("origin --service-transport {version}"), &mut cmd)?;
        // Until its channel is up, the mapping closes connections at once: try again.
        let deadline = Instant::now() + Duration::from_secs(20);
        let result = loop {
            match echo_through(*mapping, &body) {
                Ok(()) => break Ok(()),
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let cell = match result {
            Ok(()) => format!("ok ({} KiB each way)", ECHO_BYTES / 1024),
            Err(e) => {
                failures.push(format!("reverse CONNECT over {version}: {e:#}"));
                "**FAIL**".to_string()
            }
        };
        let _ = writeln!(table, "| {version} | {setup} | {cell} |");
    }
    Ok((table, failures))
}
