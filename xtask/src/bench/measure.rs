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
    /// The runs an aim reads ([`aim_keys`]), measured again on fresh processes of the row
    /// ([`Plan::aim_samples`] − 1 more pairs); their first sample is the row's own, in
    /// `loads`.
    pub again: BTreeMap<Key, Vec<Load>>,
    /// The fixed-count runs likewise; their first sample is in `cpu`.
    pub cpu_again: BTreeMap<Proto, Vec<Load>>,
    /// The bulk download likewise, in the rows the bulk aim reads ([`bulk_aim`]); the first
    /// is `bulk_mb_s`.
    pub bulk_again: Vec<f64>,
}

impl RowResult {
    /// The time-based run `key` as the aims read it: each figure the median over the
    /// process pairs that ran it with a successful request (the row's own and those of
    /// [`measure_aims_again`]). One pair of processes is one draw of how the kernel spreads
    /// the client connections over the workers, and the rows at 64 HTTP/1.1 connections
    /// moved between draws more than between versions (`docs/performance.md`, "Still
    /// open"); a median of three is a figure a change can be read against.
    pub fn aim_load(&self, key: &Key) -> Option<Load> {
        median(self.samples(key))
    }

    /// The fixed-count run of `proto` as the aims read it: the median CPU time per request
    /// over the process pairs, scaled to the run's requests.
    pub fn aim_cpu(&self, proto: Proto) -> Option<Load> {
        median(self.cpu_samples(proto))
    }

    /// The bulk download's MB/s as the aim reads it: the median over the process pairs
    /// whose download completed.
    pub fn aim_bulk(&self) -> Option<f64> {
        median_of(self.bulk_samples().collect())
    }

    /// Every sample of the fixed-count run of `proto`, the row's own first.
    pub fn cpu_samples(&self, proto: Proto) -> impl Iterator<Item = &Load> {
        self.cpu
            .get(&proto)
            .into_iter()
            .chain(self.cpu_again.get(&proto).into_iter().flatten())
    }

    /// Every completed bulk download's MB/s, the row's own first.
    pub fn bulk_samples(&self) -> impl Iterator<Item = f64> + '_ {
        self.bulk_mb_s.iter().chain(&self.bulk_again).copied()
    }

    /// Every sample of the time-based run `key`, the row's own first.
    pub fn samples(&self, key: &Key) -> impl Iterator<Item = &Load> {
        self.loads
            .get(key)
            .into_iter()
            .chain(self.again.get(key).into_iter().flatten())
    }
}

/// Each figure's median over the samples with a successful request (the mean of the middle
/// two for an even count); CPU times as the median per request times the most requests a
/// sample made, failures summed. `None` without such a sample.
pub fn median<'a>(samples: impl Iterator<Item = &'a Load>) -> Option<Load> {
    let ok: Vec<&Load> = samples.filter(|l| l.requests > 0).collect();
    let requests = ok.iter().map(|l| l.requests).max()?;
    // Never empty past the line above.
    let mid =
        |f: &dyn Fn(&Load) -> f64| median_of(ok.iter().map(|l| f(l)).collect()).unwrap_or(0.0);
    Some(Load {
        rps: mid(&|l| l.rps),
        p50_ms: mid(&|l| l.p50_ms),
        p99_ms: mid(&|l| l.p99_ms),
        requests,
        failed: ok.iter().map(|l| l.failed).sum(),
        cpu_gateway: mid(&|l| l.cpu_gateway / l.requests as f64) * requests as f64,
        cpu_origin: mid(&|l| l.cpu_origin / l.requests as f64) * requests as f64,
    })
}

/// The median of `v` (the mean of the middle two for an even count), `None` when empty.
fn median_of(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// The time-based runs of `spec`'s row that an aim reads: 1 KiB at [`Plan::aim_c`] over
/// both client protocols for the rows with a CPU run (nginx, rathole, proxy and library
/// mode rh2), and at [`Plan::latency_c`] for the direct row and library mode. Only rows
/// with the default threads (and proxy mode's HTTP/1.1 upstream) feed an aim.
pub fn aim_keys(spec: &RowSpec, plan: &Plan) -> Vec<Key> {
    let mut keys: Vec<Key> = Vec::new();
    if !spec.is(spec.path) {
        return keys;
    }
    let mut add = |c: usize| {
        for proto in [Proto::H1, Proto::H2] {
            if !keys.contains(&("1k", proto, c)) {
                keys.push(("1k", proto, c));
            }
        }
    };
    if matches!(spec.path, Route::Direct | Route::Library(_)) {
        add(plan.latency_c);
    }
    if spec.cpu {
        add(plan.aim_c);
    }
    keys
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

/// Warms a row up (connections, pools, allocator) outside the measurements.
fn warm_up(row: &Running, tmp: &Path) -> Result<()> {
    load::h2load(row.addr, Proto::H1, "1k", 16, Amount::Seconds(1), tmp).map(drop)
}

/// The time-based run `key` ([`Plan::seconds`]) on `row`, with each side's CPU time.
fn time_run(row: &Running, plan: &Plan, key: Key, tmp: &Path) -> Result<Load> {
    let (body, proto, c) = key;
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
    Ok(load)
}

/// The fixed-count run of `proto` on `row`: [`Plan::cpu_requests`] of the 1 KiB body at
/// [`Plan::aim_c`], so the CPU time of each row is for the same work.
fn cpu_run(row: &Running, plan: &Plan, proto: Proto, tmp: &Path) -> Result<Load> {
    let (c, n) = (plan.aim_c, plan.cpu_requests);
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
    Ok(load)
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
    warm_up(row, tmp)?;
    let protos: &[Proto] = if row.h3.is_some() {
        &[Proto::H1, Proto::H2, Proto::H3]
    } else {
        &[Proto::H1, Proto::H2]
    };
    for &body in &plan.bodies {
        for &proto in protos {
            for &c in &plan.concurrency {
                let key = (body, proto, c);
                result.loads.insert(key, time_run(row, plan, key, tmp)?);
            }
        }
    }
    if spec.cpu {
        for proto in [Proto::H1, Proto::H2] {
            result.cpu.insert(proto, cpu_run(row, plan, proto, tmp)?);
        }
    }
    bulk(row, plan, result)?;
    result.hwm_gateway_kib = sample::side_hwm(&row.watched, Side::Gateway);
    result.hwm_origin_kib = sample::side_hwm(&row.watched, Side::Origin);
    result.watched_sides = row.watched.iter().map(|w| w.side).collect();
    Ok(())
}

/// Whether the bulk aim reads `spec`'s row: nginx and library mode, default threads.
pub fn bulk_aim(spec: &RowSpec) -> bool {
    spec.is(spec.path) && matches!(spec.path, Route::Nginx | Route::Library(_))
}

/// The runs of [`aim_keys`], the fixed-count runs and (for [`bulk_aim`]) the bulk download
/// once more, on `row`: a fresh start of `spec`'s processes after [`measure_row`] measured
/// the first. The same warm-up first; the samples go to `result.again`, `result.cpu_again`
/// and `result.bulk_again`.
pub fn measure_aims_again(
    row: &Running,
    spec: &RowSpec,
    plan: &Plan,
    tmp: &Path,
    result: &mut RowResult,
) -> Result<()> {
    warm_up(row, tmp)?;
    for key in aim_keys(spec, plan) {
        let load = time_run(row, plan, key, tmp)?;
        result.again.entry(key).or_default().push(load);
    }
    if spec.cpu && spec.is(spec.path) {
        for proto in [Proto::H1, Proto::H2] {
            let load = cpu_run(row, plan, proto, tmp)?;
            result.cpu_again.entry(proto).or_default().push(load);
        }
    }
    if bulk_aim(spec) {
        if let Some(mb_s) = bulk_download(row, plan, result)? {
            result.bulk_again.push(mb_s);
        }
    }
    Ok(())
}

fn per_100k(load: &Load, cpu: f64) -> String {
    load.per_100k(cpu)
        .map_or_else(|| "–".into(), |s| format!("{s:.2}"))
}

/// One large body through the path with curl; a failed transfer becomes a note.
fn bulk(row: &Running, plan: &Plan, result: &mut RowResult) -> Result<()> {
    if let Some(mb_s) = bulk_download(row, plan, result)? {
        result.bulk_mb_s = Some(mb_s);
    }
    Ok(())
}

/// One `curl --http1.1` download of [`Plan::bulk_bytes`]: its MB/s, or `None` with a note
/// in `result` when the transfer failed.
fn bulk_download(row: &Running, plan: &Plan, result: &mut RowResult) -> Result<Option<f64>> {
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
        Ok(None)
    } else {
        let speed: f64 = f.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        eprintln!("   bulk {:.0} MB/s", speed / 1e6);
        Ok(Some(speed / 1e6))
    }
}
