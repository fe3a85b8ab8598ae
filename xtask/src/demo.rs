//! `cargo xtask demo`: a gateway with dev certificates and one origin per mechanism (TCP and
//! QUIC).
//!
//! Builds the binaries, starts `ptth-gateway --dev .dev/demo` and one `ptth-origin --hello`
//! per mechanism on `<mechanism>.localhost`, sends a request through each, prints a table,
//! then keeps serving (`--once` exits after the table).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MECHANISMS: &[&str] = &[
    "rh1",
    "rh2",
    "upgrade-h1",
    "upgrade-h2",
    "connect-h2",
    "h2-reverse",
    "ptth10",
    "rh3",
    "h3-reverse",
    "options-h3",
    "connect-h3",
];

/// Kills the child processes when the demo ends, however it ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let once = args.iter().any(|a| a == "--once");
    // The same build as `cargo xtask ci`, so the demo reuses its artifacts.
    crate::run(root, "cargo", &["build", "--workspace", "--bins"])?;
    let bin = crate::procs::target_dir(root).join("debug");
    let dev = root.join(".dev").join("demo");
    let mut children = Children(Vec::new());

    let mut gateway = Command::new(bin.join("ptth-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
        ])
        .arg("--dev")
        .arg(&dev)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting ptth-gateway")?;
    let stdout = gateway.stdout.take().context("gateway stdout")?;
    children.0.push(gateway);
    let mut lines = BufReader::new(stdout).lines();
    let (mut listen, mut listen_tls, mut tunnel) = (None, None, None);
    for line in lines.by_ref() {
        let line = line?;
        if let Some(v) = line.strip_prefix("listen=") {
            listen = Some(v.parse::<SocketAddr>()?);
        } else if let Some(v) = line.strip_prefix("listen-tls=") {
            listen_tls = Some(v.parse::<SocketAddr>()?);
        } else if let Some(v) = line.strip_prefix("tunnel=") {
            tunnel = Some(v.parse::<SocketAddr>()?);
            break;
        }
    }
    let (Some(listen), Some(listen_tls), Some(tunnel)) = (listen, listen_tls, tunnel) else {
        bail!("the gateway did not report its addresses");
    };
    std::thread::spawn(move || for _ in lines {});

    for m in MECHANISMS {
        let mut cmd = Command::new(bin.join("ptth-origin"));
        cmd.args(["--gateway", &format!("https://localhost:{}", tunnel.port())])
            .args([
                "--mechanism",
                m,
                "--host",
                &format!("{m}.localhost"),
                "--hello",
            ])
            .arg("--ca")
            .arg(dev.join("ca.pem"))
            .arg("--token-file")
            .arg(dev.join("token"))
            .env("RUST_LOG", "warn");
        if ["h2-reverse", "h3-reverse"].contains(m) {
            cmd.arg("--cert")
                .arg(dev.join("origin.pem"))
                .arg("--key")
                .arg(dev.join("origin.key"));
        }
        if ["rh1", "upgrade-h1", "ptth10"].contains(m) {
            cmd.args(["--connections", "4"]);
        }
        children.0.push(
            cmd.spawn()
                .with_context(|| format!("starting origin {m}"))?,
        );
    }

    println!("\n{:<12} {:>6} {:>10}", "mechanism", "status", "latency");
    println!("{:-<12} {:->6} {:->10}", "", "", "");
    let mut failures = 0;
    for m in MECHANISMS {
        let host = format!("{m}.localhost");
        match first_answer(listen, &host) {
            Ok((status, latency)) => {
                if status != 200 {
                    failures += 1;
                }
                println!(
                    "{m:<12} {status:>6} {:>8.2}ms",
                    latency.as_secs_f64() * 1000.0
                );
            }
            Err(e) => {
                failures += 1;
                println!("{m:<12} {:>6} {e}", "-");
            }
        }
    }
    println!();
    if once {
        if failures > 0 {
            bail!("{failures} mechanism(s) did not answer 200");
        }
        return Ok(());
    }
    println!("The gateway is serving. Try:");
    println!("  curl -H 'Host: rh2.localhost' http://{listen}/");
    println!(
        "  curl --cacert {} --resolve rh2.localhost:{port}:127.0.0.1 https://rh2.localhost:{port}/sse",
        dev.join("ca.pem").display(),
        port = listen_tls.port()
    );
    println!(
        "  curl -H 'Host: upgrade-h1.localhost' --data-binary @Cargo.lock http://{listen}/echo"
    );
    println!(
        "  curl --http3-only --cacert {} --resolve rh3.localhost:{port}:127.0.0.1 https://rh3.localhost:{port}/   (public HTTP/3, if your curl has it)",
        dev.join("ca.pem").display(),
        port = listen_tls.port()
    );
    println!("Every mechanism's origin is at <mechanism>.localhost. Press Ctrl-C to stop.");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Waits until `host` answers through the gateway; returns the status and the latency of a
/// request sent once it is up.
fn first_answer(listen: SocketAddr, host: &str) -> Result<(u16, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((status, _)) = get(listen, host) {
            if status == 200 {
                return get(listen, host);
            }
        }
        if Instant::now() > deadline {
            return get(listen, host);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(listen: SocketAddr, host: &str) -> Result<(u16, Duration)> {
    let start = Instant::now();
    let mut tcp = TcpStream::connect_timeout(&listen, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    let latency = start.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    Ok((status, latency))
}
