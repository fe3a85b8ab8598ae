//! Measuring one row that is up: the time-based load runs for every body, protocol and
//! concurrency, the fixed-count CPU runs, one bulk download, and the peak RSS of each side.

use super::load::{self, Amount, Load, Proto};
use super::plan::{Plan, Route, RowSpec, HOST};
use super::sample::{self, Side};
use super::stack::Running;
use crate::procs;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// A time-based run: body, client protocol, concurrency.
pub type Key = (&'static str, Proto, usize);

/// A row's results.
#[derive(Debug, Default)]
pub struct RowResult {
    pub loads: BTreeMap<Key, Load>,
    /// Fixed-count runs of the 1 KiB body at [`Plan::aim_c`], per client protocol (rows with
    /// [`RowSpec::cpu`]).
    pub cpu: BTreeMap<Proto, Load>,
    pub bulk_mb_s: Option<f64>,
    pub hwm_gateway_kib: Option<u64>,
    pub hwm_origin_kib: Option<u64>,
    /// What went wrong without spoiling the rest of the row (a failed bulk transfer).
    pub notes: Vec<String>,
    /// The sides with a watched process (the direct row has none).
    pub watched_sides: Vec<Side>,
    pub error: Option<String>,
}

/// The default-threads row of `path` in `results`, if it ran.
pub fn row(results: &[(RowSpec, RowResult)], path: Route) -> Option<&RowResult> {
    results.iter().find(|(s, _)| s.is(path)).map(|(_, r)| r)
}

/// Runs `load` and adds the CPU time each side's processes spent meanwhile.
fn timed(row: &Running, load: impl FnOnce() -> Result<Load>) -> Result<Load> {
    let before = (
        sample::side_cpu(&row.watched, Side::Gateway),
        sample::side_cpu(&row.watched, Side::Origin),
    );
    let mut l = load()?;
    l.cpu_gateway = sample::side_cpu(&row.watched, Side::Gateway) - before.0;
    l.cpu_origin = sample::side_cpu(&row.watched, Side::Origin) - before.1;
    Ok(l)
}

/// Measures a row that is up into `result`. An error ends the row; what was measured
/// before it stays.
pub fn measure_row(
    row: &Running,
    spec: &RowSpec,
    plan: &Plan,
    tmp: &Path,
    result: &mut RowResult,
) -> Result<()> {
    // Warm up (connections, pools, allocator) outside the measurements.
    load::h2load(row.addr, Proto::H1, "1k", 16, Amount::Seconds(1), tmp)?;
    let protos: &[Proto] = if row.h3.is_some() {
        &[Proto::H1, Proto::H2, Proto::H3]
    } else {
        &[Proto::H1, Proto::H2]
    };
    for &body in &plan.bodies {
        for &proto in protos {
            for &c in &plan.concurrency {
                let load = timed(row, || match &row.h3 {
                    Some((addr, ca)) if proto == Proto::H3 => {
                        load::h3load(&row.h3_client, *addr, ca, body, c, plan.seconds)
                    }
                    _ => {
                        let addr = row.addr_for(proto);
                        load::h2load(addr, proto, body, c, Amount::Seconds(plan.seconds), tmp)
                    }
                })?;
                eprintln!(
                    "   {body} {} c={c:<3} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  failed {}",
                    proto.name(),
                    load.rps,
                    load.p50_ms,
                    load.p99_ms,
                    load.failed
                );
                result.loads.insert((body, proto, c), load);
            }
        }
    }
    if spec.cpu {
        // A fixed number of requests, so the CPU time of each row is for the same work.
        let (c, n) = (plan.aim_c, plan.cpu_requests);
        for proto in [Proto::H1, Proto::H2] {
            let addr = row.addr_for(proto);
            let load = timed(row, || {
                load::h2load(addr, proto, "1k", c, Amount::Requests(n), tmp)
            })?;
            eprintln!(
                "   1k {} c={c:<3} {n} requests: CPU s / 100k gateway side {}, origin side {}",
                proto.name(),
                per_100k(&load, load.cpu_gateway),
                per_100k(&load, load.cpu_origin),
            );
            result.cpu.insert(proto, load);
        }
    }
    bulk(row, plan, result)?;
    result.hwm_gateway_kib = sample::side_hwm(&row.watched, Side::Gateway);
    result.hwm_origin_kib = sample::side_hwm(&row.watched, Side::Origin);
    result.watched_sides = row.watched.iter().map(|w| w.side).collect();
    Ok(())
}

fn per_100k(load: &Load, cpu: f64) -> String {
    load.per_100k(cpu)
        .map_or_else(|| "–".into(), |s| format!("{s:.2}"))
}

/// One large body through the path with curl; a failed transfer becomes a note.
fn bulk(row: &Running, plan: &Plan, result: &mut RowResult) -> Result<()> {
    let out = procs::output(
        Command::new("curl")
            .args(["-sS", "--http1.1", "-o", "/dev/null", "--max-time", "300"])
            .args(["-H", &format!("Host: {HOST}")])
            .args(["-w", "%{http_code} %{speed_download} %{size_download}"])
            .arg(format!(
                "http://127.0.0.1:{}/bytes/{}",
                row.addr.port(),
                plan.bulk_bytes
            )),
    )?;
    let f: Vec<&str> = out.split_whitespace().collect();
    if f.first() != Some(&"200")
        || f.get(2).and_then(|s| s.parse::<u64>().ok()) != Some(plan.bulk_bytes)
    {
        let note = format!(
            "bulk transfer failed: status {}, {} bytes",
            f.first().unwrap_or(&"?"),
            f.get(2).unwrap_or(&"?")
        );
        eprintln!("   {note}");
        result.notes.push(note);
    } else {
        let speed: f64 = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        result.bulk_mb_s = Some(speed / 1e6);
        eprintln!("   bulk {:.0} MB/s", speed / 1e6);
    }
    Ok(())
}
