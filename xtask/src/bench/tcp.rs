//! The TCP flow row (reverse CONNECT, issue 13 item 4): bulk TCP through `ptth-gateway`'s
//! port mapping (`[[tcp]]`) → `ptth-origin --tcp-service` → a sink/source in this process,
//! beside rathole's TCP forwarding of the same transfers and a direct connection to the
//! sink/source. rathole carries the bytes without encryption; ptth's flow crosses a TLS
//! connection between gateway and origin.
//!
//! Per path: MB/s of one flow each way (upload: client → service; download: service →
//! client), CPU per MiB of each side's process tree over both transfers, and peak RSS per
//! flow with several flows at once (half of them each way), read on fresh processes as
//! `(VmHWM after − VmRSS before) / flows`.
//!
//! The sink/source ([`Service`]) reads a 9-byte request: `U` or `D` and a big-endian byte
//! count. `U`: it reads that many bytes, answers with the count it read (8 bytes) and
//! closes; `D`: it writes that many zero bytes and closes. The client checks the counts, so
//! a transfer that lost or invented a byte fails the row.

use super::plan::Plan;
use super::sample::{self, Side, Watched};
use crate::procs::{self, Children};
use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The paths the row measures, in report order.
pub const PATHS: [&str; 3] = ["direct", "rathole (TCP, no encryption)", "ptth (rh2, TLS)"];

/// What one path measured.
#[derive(Debug, Clone, Default)]
pub struct PathResult {
    pub name: &'static str,
    /// MB/s (10^6 bytes per second) of one flow, client → service.
    pub up_mb_s: f64,
    /// MB/s of one flow, service → client.
    pub down_mb_s: f64,
    /// CPU ms per MiB moved, gateway side (the tunnel's public end), over both transfers.
    pub gateway_ms_per_mib: Option<f64>,
    /// CPU ms per MiB moved, origin side.
    pub origin_ms_per_mib: Option<f64>,
    /// Peak RSS growth per concurrent flow, KiB, each side.
    pub gateway_kib_per_flow: Option<f64>,
    pub origin_kib_per_flow: Option<f64>,
    /// Why the path was not measured.
    pub error: Option<String>,
}

/// The whole row.
#[derive(Debug, Clone)]
pub struct TcpRun {
    /// Bytes of each single-flow transfer.
    pub bytes: u64,
    /// Concurrent flows in the memory run, and the bytes each moves.
    pub flows: usize,
    pub flow_bytes: u64,
    pub paths: Vec<PathResult>,
    pub load_before: String,
    pub load_after: String,
}

/// The sink/source: a listener served by a thread per connection, stopped with the process.
struct Service {
    addr: SocketAddr,
}

impl Service {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the TCP sink/source")?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = serve(tcp);
                });
            }
        });
        Ok(Self { addr })
    }
}

const CHUNK: usize = 256 * 1024;

/// One connection of the sink/source.
fn serve(mut tcp: TcpStream) -> Result<()> {
    let mut req = [0u8; 9];
    tcp.read_exact(&mut req)?;
    let mut n = [0u8; 8];
    n.copy_from_slice(&req[1..]);
    let n = u64::from_be_bytes(n);
    let mut buf = vec![0u8; CHUNK];
    match req[0] {
        b'U' => {
            let mut got = 0u64;
            while got < n {
                let k = tcp.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                got += k as u64;
            }
            tcp.write_all(&got.to_be_bytes())?;
        }
        b'D' => {
            let mut left = n;
            while left > 0 {
                let k = left.min(CHUNK as u64) as usize;
                tcp.write_all(&buf[..k])?;
                left -= k as u64;
            }
        }
        _ => bail!("unknown request"),
    }
    tcp.shutdown(Shutdown::Write)?;
    // Until the client closes, so no reset cuts what is still in flight.
    while tcp.read(&mut buf)? > 0 {}
    Ok(())
}

/// One transfer of `n` bytes through `addr` (`up`: client → service); the seconds it took.
fn transfer(addr: SocketAddr, up: bool, n: u64) -> Result<f64> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(60)))?;
    let started = Instant::now();
    let mut req = [0u8; 9];
    req[0] = if up { b'U' } else { b'D' };
    req[1..].copy_from_slice(&n.to_be_bytes());
    tcp.write_all(&req)?;
    let mut buf = vec![0u8; CHUNK];
    if up {
        let mut left = n;
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            tcp.write_all(&buf[..k])?;
            left -= k as u64;
        }
        let mut count = [0u8; 8];
        tcp.read_exact(&mut count)
            .context("the service's count never came back")?;
        let got = u64::from_be_bytes(count);
        ensure!(got == n, "the service received {got} of {n} bytes");
    } else {
        let mut got = 0u64;
        loop {
            let k = tcp.read(&mut buf)?;
            if k == 0 {
                break;
            }
            got += k as u64;
        }
        ensure!(got == n, "received {got} of {n} bytes");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Transfers one byte each way until it goes through (the path is up), for 30 s at most.
fn wait_through(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match transfer(addr, true, 1).and_then(|_| transfer(addr, false, 1)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("no flow through {addr} within 30 s")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A path, set up: where the client connects and whose processes to watch.
struct Running {
    addr: SocketAddr,
    watched: Vec<Watched>,
    _children: Children,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_rathole(service: SocketAddr, tmp: &Path) -> Result<Option<Running>> {
    if procs::require_tool("rathole", "").is_err() {
        return Ok(None);
    }
    let mut children = Children::default();
    let mut watched = Vec::new();
    let (control, public) = (free_port()?, free_port()?);
    let server = tmp.join("rathole-tcp-server.toml");
    let client = tmp.join("rathole-tcp-client.toml");
    std::fs::write(
        &server,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\n[server.services.sink]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{public}\"\n"
        ),
    )?;
    std::fs::write(
        &client,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\n[client.services.sink]\ntoken = \"bench\"\nlocal_addr = \"{service}\"\n"
        ),
    )?;
    for (side, conf) in [(Side::Gateway, &server), (Side::Origin, &client)] {
        let flag = if side == Side::Gateway { "-s" } else { "-c" };
        let pid = children.spawn(
            "rathole",
            Command::new("rathole")
                .arg(flag)
                .arg(conf)
                .env("RUST_LOG", "error")
                .stdout(Stdio::null()),
        )?;
        watched.push(Watched { side, pid });
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], public));
    wait_through(addr)?;
    Ok(Some(Running {
        addr,
        watched,
        _children: children,
    }))
}

/// The grant's token in the bench's gateway configuration.
const TOKEN: &str = "bench-tcp-token";

fn start_ptth(service: SocketAddr, bin: &Path, dev: &Path, tmp: &Path) -> Result<Running> {
    let mut children = Children::default();
    let public = free_port()?;
    let config = tmp.join("gateway-tcp.toml");
    std::fs::write(
        &config,
        format!(
            "[[grant]]\nname = \"bench-tcp\"\ntoken = \"{TOKEN}\"\nservices = [\"sink=tcp/{}\"]\n\n\
             [[tcp]]\nlisten = \"127.0.0.1:{public}\"\ngrant = \"bench-tcp\"\nservice = \"sink\"\n",
            service.port()
        ),
    )?;
    let gw = procs::start_gateway(
        &mut children,
        bin,
        dev,
        "127.0.0.1:0",
        &["--config", &config.to_string_lossy()],
    )?;
    let origin = children.spawn(
        "ptth-origin",
        Command::new(bin.join("ptth-origin"))
            .args([
                "--gateway",
                &format!("https://localhost:{}", gw.tunnel.port()),
            ])
            .arg("--ca")
            .arg(dev.join("ca.pem"))
            .args(["--token", TOKEN])
            .args(["--tcp-service", &format!("sink={service}")])
            .env(
                "RUST_LOG",
                std::env::var("PTTH_XTASK_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::null()),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], public));
    wait_through(addr)?;
    Ok(Running {
        addr,
        watched: vec![
            Watched {
                side: Side::Gateway,
                pid: gw.pid,
            },
            Watched {
                side: Side::Origin,
                pid: origin,
            },
        ],
        _children: children,
    })
}

/// The RSS of the watched trees on `side` now, KiB.
fn side_rss(watched: &[Watched], side: Side) -> Option<u64> {
    let v: Vec<u64> = watched
        .iter()
        .filter(|w| w.side == side)
        .flat_map(|w| sample::tree(w.pid))
        .filter_map(|p| sample::status_kib(p, "VmRSS"))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Measures one path that is up: the memory run first (fresh processes, so the peak is its
/// own), then one flow each way.
fn measure(name: &'static str, run: &Running, plan: &Plan) -> Result<PathResult> {
    let sides = [Side::Gateway, Side::Origin];
    let before: Vec<Option<u64>> = sides.iter().map(|&s| side_rss(&run.watched, s)).collect();
    let flows: Vec<_> = (0..plan.tcp_flows)
        .map(|i| {
            let (addr, n) = (run.addr, plan.tcp_flow_bytes);
            std::thread::spawn(move || transfer(addr, i % 2 == 0, n))
        })
        .collect();
    for f in flows {
        f.join()
            .map_err(|_| anyhow::anyhow!("a flow's thread panicked"))?
            .context("a concurrent flow")?;
    }
    let per_flow: Vec<Option<f64>> = sides
        .iter()
        .zip(&before)
        .map(|(&s, b)| {
            let peak = sample::side_hwm(&run.watched, s)?;
            Some(peak.saturating_sub((*b)?) as f64 / plan.tcp_flows as f64)
        })
        .collect();

    let cpu_before: Vec<f64> = sides
        .iter()
        .map(|&s| sample::side_cpu(&run.watched, s))
        .collect();
    let up = transfer(run.addr, true, plan.tcp_bytes).context("the upload")?;
    let down = transfer(run.addr, false, plan.tcp_bytes).context("the download")?;
    let mib = 2.0 * plan.tcp_bytes as f64 / f64::from(1u32 << 20);
    let per_mib: Vec<Option<f64>> = sides
        .iter()
        .zip(&cpu_before)
        .map(|(&s, b)| {
            let watched = run.watched.iter().any(|w| w.side == s);
            watched.then(|| (sample::side_cpu(&run.watched, s) - b) * 1e3 / mib)
        })
        .collect();
    let mb_s = |secs: f64| plan.tcp_bytes as f64 / secs / 1e6;
    Ok(PathResult {
        name,
        up_mb_s: mb_s(up),
        down_mb_s: mb_s(down),
        gateway_ms_per_mib: per_mib[0],
        origin_ms_per_mib: per_mib[1],
        gateway_kib_per_flow: per_flow[0],
        origin_kib_per_flow: per_flow[1],
        error: None,
    })
}

/// Runs the row: direct, rathole (when installed), ptth.
pub fn tcp_run(plan: &Plan, bin: &Path, dev: &Path, tmp: &Path) -> Result<TcpRun> {
    let load_before = sample::loadavg();
    let service = Service::start()?;
    let mut paths = Vec::new();
    for name in PATHS {
        eprintln!("   tcp: {name}");
        let running = match name {
            "direct" => {
                wait_through(service.addr)?;
                Ok(Some(Running {
                    addr: service.addr,
                    watched: Vec::new(),
                    _children: Children::default(),
                }))
            }
            n if n.starts_with("rathole") => start_rathole(service.addr, tmp),
            _ => start_ptth(service.addr, bin, dev, tmp).map(Some),
        };
        let result = match running {
            Ok(Some(run)) => measure(name, &run, plan),
            Ok(None) => Err(anyhow::anyhow!("not installed")),
            Err(e) => Err(e),
        };
        let result = result.unwrap_or_else(|e| PathResult {
            name,
            error: Some(format!("{e:#}")),
            ..PathResult::default()
        });
        match &result.error {
            Some(e) => eprintln!("   {name}: {e}"),
            None => eprintln!(
                "   {name}: up {:.0} MB/s, down {:.0} MB/s",
                result.up_mb_s, result.down_mb_s
            ),
        }
        paths.push(result);
    }
    Ok(TcpRun {
        bytes: plan.tcp_bytes,
        flows: plan.tcp_flows,
        flow_bytes: plan.tcp_flow_bytes,
        paths,
        load_before,
        load_after: sample::loadavg(),
    })
}

/// Whether a `--smoke` TCP row shows the harness broken: any path but a missing rathole
/// failed.
pub fn smoke_broken(run: &TcpRun) -> Option<String> {
    let broken: Vec<String> = run
        .paths
        .iter()
        .filter_map(|p| {
            let e = p.error.as_ref()?;
            let missing = p.name.starts_with("rathole") && e == "not installed";
            (!missing).then(|| format!("{}: {e}", p.name))
        })
        .collect();
    (!broken.is_empty()).then(|| broken.join("; "))
}

/// The report's section on the TCP row.
pub fn render(d: &mut String, run: &Result<TcpRun>) {
    use std::fmt::Write as _;
    let _ = writeln!(d, "\n## TCP flows: reverse CONNECT against rathole\n");
    let r = match run {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(d, "The TCP run failed: {e:#}");
            return;
        }
    };
    let rathole = r
        .paths
        .iter()
        .find(|p| p.name.starts_with("rathole") && p.error.is_none());
    let ratio = |x: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}", x / b),
        _ => "–".into(),
    };
    let opt = |v: Option<f64>, prec: usize| v.map_or("–".into(), |v| format!("{v:.prec$}"));
    let one_minute = |load: &str| {
        load.split_whitespace()
            .next()
            .and_then(|l| l.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let loaded = one_minute(&r.load_before).max(one_minute(&r.load_after)) >= 1.5;
    let _ = writeln!(
        d,
        "One TCP flow of {} MiB each way through each path to a sink/source in the bench \
         (upload: client → service, download: service → client; the byte counts are \
         checked), then, on fresh processes, {} flows of {} MiB at once (half each way) for \
         the peak RSS per flow (`(VmHWM after − VmRSS before) / flows`, process trees). CPU \
         per MiB is each side's process-tree CPU over both single-flow transfers. ptth: the \
         gateway's `[[tcp]]` port mapping, one `ptth-origin --tcp-service` over rh2 (TLS). \
         **rathole carries TCP without encryption**: its figures are the cost of forwarding \
         alone, ptth's include TLS both ways. Load average before {}, after {}{}.\n\n\
         | path | upload MB/s | vs rathole | download MB/s | vs rathole | gateway-side CPU ms/MiB | origin-side CPU ms/MiB | peak RSS per flow, gateway side KiB | origin side KiB |\n\
         |---|---|---|---|---|---|---|---|---|",
        r.bytes >> 20,
        r.flows,
        r.flow_bytes >> 20,
        r.load_before,
        r.load_after,
        if loaded {
            ": **the machine was loaded by other work, so MB/s and the ratios are noisy** \
             (CPU per MiB and peak RSS are moved less by load)"
        } else {
            ""
        },
    );
    for p in &r.paths {
        if let Some(e) = &p.error {
            let _ = writeln!(d, "| {} | {e} | | | | | | | |", p.name);
            continue;
        }
        let _ = writeln!(
            d,
            "| {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} |",
            p.name,
            p.up_mb_s,
            ratio(p.up_mb_s, rathole.map(|r| r.up_mb_s)),
            p.down_mb_s,
            ratio(p.down_mb_s, rathole.map(|r| r.down_mb_s)),
            opt(p.gateway_ms_per_mib, 2),
            opt(p.origin_ms_per_mib, 2),
            opt(p.gateway_kib_per_flow, 0),
            opt(p.origin_kib_per_flow, 0),
        );
    }
}

/// Replaces the TCP section of the report `doc` (from its heading to the next `## `
/// heading or the end) with `section`, or appends it when there is none.
pub fn replace_section(doc: &str, section: &str) -> String {
    const HEADING: &str = "\n## TCP flows: ";
    let Some(start) = doc.find(HEADING) else {
        return format!("{}\n{}", doc.trim_end(), section);
    };
    let rest = &doc[start + HEADING.len()..];
    let end = rest
        .find("\n## ")
        .map_or(doc.len(), |i| start + HEADING.len() + i);
    format!("{}{}\n{}", &doc[..start], section.trim_end(), &doc[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transfer_through_the_sink_source_counts_every_byte_each_way() {
        let service = Service::start().unwrap();
        for up in [true, false] {
            transfer(service.addr, up, 3 * CHUNK as u64 + 7).unwrap();
        }
        // A client that claims more than it sends is caught by the count.
        let mut tcp = TcpStream::connect(service.addr).unwrap();
        let mut req = [0u8; 9];
        req[0] = b'U';
        req[1..].copy_from_slice(&10u64.to_be_bytes());
        tcp.write_all(&req).unwrap();
        tcp.write_all(b"short").unwrap();
        tcp.shutdown(Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        tcp.read_exact(&mut count).unwrap();
        assert_eq!(u64::from_be_bytes(count), 5);
    }

    #[test]
    fn the_tcp_section_is_replaced_in_place_or_appended() {
        let section = "\n## TCP flows: new\n\nnew body\n";
        let doc = "# B\n\n## TCP flows: old\n\nold\n\n## Scale\n\ns\n";
        assert_eq!(
            replace_section(doc, section),
            "# B\n\n## TCP flows: new\n\nnew body\n\n## Scale\n\ns\n"
        );
        assert_eq!(
            replace_section("# B\n", section),
            "# B\n\n## TCP flows: new\n\nnew body\n"
        );
    }
}
