//! The scale run: one gateway, the measured host's origin connections (one per gateway
//! worker), then thousands of idle origin connections of other hosts. It gives the
//! gateway's RSS per idle origin connection, the routing cost (the measured host's p50 with
//! only its own connections registered against with all of them), and how long the
//! connections take to come back after a gateway restart.

use super::load::{self, Amount, Load, Proto};
use super::plan::{Plan, HOST};
use super::sample;
use crate::procs::{self, Children, Gateway};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Origin connections per `ptth-origin` process; each process serves a host of its own.
const PER_PROCESS: usize = 1000;

#[derive(Debug, Default)]
pub struct Scale {
    /// Gateway `VmRSS` with the measured host's origin connections registered.
    pub baseline_kib: u64,
    /// The measured host's origin connections: one per gateway worker.
    pub own_connections: usize,
    /// The measured host's requests (HTTP/1.1, one at a time) with no other origin
    /// connection registered.
    pub routed_alone: Load,
    pub points: Vec<Point>,
    /// Seconds from killing the gateway until all restart connections were registered again.
    pub restart_s: Option<f64>,
    pub restart_connections: usize,
}

/// The gateway with `connections` idle origin connections of other hosts.
#[derive(Debug)]
pub struct Point {
    pub connections: usize,
    pub rss_kib: u64,
    /// Seconds until all of them were registered.
    pub register_s: f64,
    /// The measured host's requests, as in [`Scale::routed_alone`].
    pub routed: Load,
}

impl Point {
    /// Gateway RSS per idle origin connection, KiB.
    pub fn per_connection_kib(&self, baseline_kib: u64) -> f64 {
        self.rss_kib.saturating_sub(baseline_kib) as f64 / self.connections.max(1) as f64
    }
}

/// Starts a gateway whose logs go to `log` (registrations are counted from it).
fn scale_gateway(
    children: &mut Children,
    bin: &Path,
    dev: &Path,
    tunnel: &str,
    log: &Path,
) -> Result<Gateway> {
    let mut child = Command::new(bin.join("ptth-gateway"))
        .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
        .args(["--tunnel", tunnel])
        .arg("--dev")
        .arg(dev)
        .env("RUST_LOG", "ptth_gateway=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting ptth-gateway")?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let pid = children.adopt("ptth-gateway", child);
    let mut lines = BufReader::new(stdout).lines();
    let (mut listen, mut listen_tls, mut tunnel_addr) = (None, None, None);
    for line in lines.by_ref() {
        let line = line?;
        if let Some(v) = line.strip_prefix("listen=") {
            listen = Some(v.parse()?);
        } else if let Some(v) = line.strip_prefix("listen-tls=") {
            listen_tls = Some(v.parse()?);
        } else if let Some(v) = line.strip_prefix("tunnel=") {
            tunnel_addr = Some(v.parse()?);
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    match (listen, listen_tls, tunnel_addr) {
        (Some(listen), Some(listen_tls), Some(tunnel)) => Ok(Gateway {
            listen,
            listen_tls,
            tunnel,
            pid,
        }),
        _ => bail!("the gateway did not report its addresses"),
    }
}

/// Registered minus closed origin connections, from the gateway's log.
fn registered(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let up = text.matches("origin connection registered").count();
    let down = text.matches("origin connection closed").count();
    up.saturating_sub(down)
}

fn wait_registered(log: &Path, n: usize, timeout: Duration) -> Result<f64> {
    let start = Instant::now();
    loop {
        if registered(log) >= n {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            bail!(
                "only {} of {n} origin connections registered after {timeout:?}",
                registered(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many times each point's requests are measured; the point reads the median.
const SAMPLES: usize = 3;

/// The measured host's p50: `h2load --h1 -c 1` for the plan's duration after a short
/// warm-up, through the gateway's public listener, [`SAMPLES`] times; the sample with the
/// median p50. Each sample is a new public connection, which the kernel hands to one of the
/// gateway's workers; a single sample of ~0.1 ms requests also moves with whatever else the
/// two cores did in those seconds.
fn routed(gw: &Gateway, plan: &Plan, tmp: &Path) -> Result<Load> {
    load::h2load(gw.listen, Proto::H1, "", 1, Amount::Requests(500), tmp)?;
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let l = load::h2load(
            gw.listen,
            Proto::H1,
            "",
            1,
            Amount::Seconds(plan.seconds),
            tmp,
        )?;
        if l.requests == 0 || l.failed > 0 {
            bail!(
                "{HOST} through the scale gateway: {} requests succeeded, {} failed",
                l.requests,
                l.failed
            );
        }
        samples.push(l);
    }
    samples.sort_by(|a, b| a.p50_ms.total_cmp(&b.p50_ms));
    Ok(samples.swap_remove(SAMPLES / 2))
}

pub fn scale_run(plan: &Plan, bin: &Path, dev: &Path, tmp: &Path) -> Result<Scale> {
    let mut children = Children::default();
    let log = tmp.join("scale-gateway.log");
    let mut gw = scale_gateway(&mut children, bin, dev, "127.0.0.1:0", &log)?;
    let tunnel = gw.tunnel.to_string();
    // The measured host, first and alone: one origin connection per gateway worker (as the
    // throughput rows' HTTP/2 origins), which the gateway places one on each worker, so its
    // requests stay on the worker that accepted them whichever that is.
    let own = procs::workers(None);
    let mut cmd = procs::origin_command(bin, &gw, dev, "rh2", HOST, procs::Credential::Bearer);
    cmd.args(["--hello", "--connections", &own.to_string()]);
    children.spawn("ptth-origin", &mut cmd)?;
    wait_registered(&log, own, Duration::from_secs(60))?;
    procs::wait_ready(gw.listen, HOST, Duration::from_secs(30))?;
    let mut scale = Scale {
        baseline_kib: sample::settled_rss(gw.pid),
        own_connections: own,
        restart_connections: plan.restart_connections,
        ..Scale::default()
    };
    scale.routed_alone = routed(&gw, plan, tmp)?;
    eprintln!(
        "   {own} origin connections of its own: {HOST} p50 {:.3} ms",
        scale.routed_alone.p50_ms
    );
    let (mut connected, mut processes) = (0, 0);
    for &n in &plan.scale {
        let start = Instant::now();
        // The others: PER_PROCESS connections per process, each process a host of its own.
        let mut left = n.saturating_sub(connected);
        while left > 0 {
            let k = left.min(PER_PROCESS);
            processes += 1;
            let host = format!("scale-{processes}.localhost");
            let mut cmd =
                procs::origin_command(bin, &gw, dev, "rh2", &host, procs::Credential::Bearer);
            cmd.args(["--hello", "--connections", &k.to_string()]);
            children.spawn("ptth-origin", &mut cmd)?;
            left -= k;
        }
        wait_registered(&log, n + own, Duration::from_secs(300))?;
        let took = start.elapsed().as_secs_f64();
        connected = n;
        let rss = sample::settled_rss(gw.pid);
        let routed = routed(&gw, plan, tmp)?;
        eprintln!(
            "   {n} origin connections: gateway VmRSS {rss} KiB (registered in {took:.1} s); {HOST} p50 {:.3} ms",
            routed.p50_ms
        );
        scale.points.push(Point {
            connections: n,
            rss_kib: rss,
            register_s: took,
            routed,
        });
        if n == plan.restart_connections {
            // Restart: kill the gateway, start it again on the same tunnel port, time until
            // every connection (the measured host's too) is registered again.
            let killed = Instant::now();
            children.kill(gw.pid);
            let _ = std::fs::remove_file(&log);
            gw = scale_gateway(&mut children, bin, dev, &tunnel, &log)?;
            wait_registered(&log, n + own, Duration::from_secs(300))?;
            let s = killed.elapsed().as_secs_f64();
            eprintln!("   restart: {n} origin connections back in {s:.2} s");
            scale.restart_s = Some(s);
        }
    }
    Ok(scale)
}
