//! Issue 14's aims ("Faster than nginx by design"), each read from this run as a ratio and
//! judged met or not met; an aim whose inputs are missing says why instead. Each figure is
//! the median over the process pairs its rows ran the aim's runs on
//! ([`RowResult::aim_load`], [`RowResult::aim_cpu`]).

use super::load::{Load, Proto};
use super::measure::{self, Key, RowResult};
use super::plan::{Plan, Route, RowSpec, HOST};
use super::scale::Scale;
use anyhow::Result;
use std::fmt::Write as _;

/// Library mode's req/s against nginx's, and proxy mode's against rathole's.
const RPS_OVER_BASELINE: f64 = 1.2;
/// Library mode's p99 against nginx's.
const P99_OVER_NGINX: f64 = 1.0;
/// Bulk download through library mode against nginx's.
const BULK_OVER_NGINX: f64 = 2.0;
/// The gateway's CPU per request against nginx's.
const CPU_OVER_NGINX: f64 = 1.0;
/// p50 added over a direct connection at concurrency 1, µs.
const ADDED_P50_US: f64 = 45.0;
/// "Flat" routing cost: the measured host's p50 with many idle origin connections of other
/// hosts may be at most this many times its p50 alone.
const FLAT: f64 = 1.1;
/// Gateway RSS per idle origin connection, KiB.
const IDLE_KIB: f64 = 32.0;

const LIBRARY: Route = Route::Library("rh2");
const PROXY: Route = Route::Proxy("rh2");

/// One line of the aims table.
#[derive(Debug)]
pub struct Aim {
    pub aim: String,
    pub this_run: String,
    /// `None`: not measured in this run (`this_run` says why).
    pub met: Option<bool>,
}

fn judged(aim: String, outcome: Result<(String, bool), String>) -> Aim {
    match outcome {
        Ok((this_run, met)) => Aim {
            aim,
            this_run,
            met: Some(met),
        },
        Err(why) => Aim {
            aim,
            this_run: format!("not measured: {why}"),
            met: None,
        },
    }
}

/// The row of `path` (default threads), or why it has no results.
fn row(results: &[(RowSpec, RowResult)], path: Route) -> Result<&RowResult, String> {
    let r = measure::row(results, path).ok_or_else(|| format!("{path:?} did not run"))?;
    match &r.error {
        Some(e) => Err(format!("{}: {e}", name(results, path))),
        None => Ok(r),
    }
}

fn name(results: &[(RowSpec, RowResult)], path: Route) -> String {
    results
        .iter()
        .find(|(s, _)| s.is(path))
        .map_or_else(|| format!("{path:?}"), |(s, _)| s.name())
}

/// The time-based run `key` of `path` as the aims read it (the median over the row's
/// process pairs, [`RowResult::aim_load`]), or why there is none with a successful request.
fn load(results: &[(RowSpec, RowResult)], path: Route, key: Key) -> Result<Load, String> {
    let (body, proto, c) = key;
    row(results, path)?.aim_load(&key).ok_or_else(|| {
        format!(
            "{}: no {body} {} run at {c} concurrent",
            name(results, path),
            proto.name()
        )
    })
}

/// `x / base`, refusing a base of zero.
fn over(x: f64, base: f64, what: &str) -> Result<f64, String> {
    if base > 0.0 {
        Ok(x / base)
    } else {
        Err(format!("{what} is zero"))
    }
}

fn client(proto: Proto) -> &'static str {
    match proto {
        Proto::H1 => "HTTP/1.1 clients",
        Proto::H2 => "h2c clients",
        Proto::H3 => "HTTP/3 clients",
    }
}

/// This run's figures and whether they meet the aim, or why they are missing.
type Outcome = Result<(String, bool), String>;

/// `path`'s req/s at least [`RPS_OVER_BASELINE`] times `base`'s.
fn faster(results: &[(RowSpec, RowResult)], path: Route, base: Route, key: Key) -> Outcome {
    let (l, b) = (load(results, path, key)?, load(results, base, key)?);
    let x = over(l.rps, b.rps, "the baseline's req/s")?;
    Ok((
        format!("{:.0} vs {:.0} req/s: {x:.2}×", l.rps, b.rps),
        x >= RPS_OVER_BASELINE,
    ))
}

/// Library mode's p99 at most [`P99_OVER_NGINX`] times nginx's.
fn p99(results: &[(RowSpec, RowResult)], key: Key) -> Outcome {
    let (l, n) = (
        load(results, LIBRARY, key)?,
        load(results, Route::Nginx, key)?,
    );
    let x = over(l.p99_ms, n.p99_ms, "nginx's p99")?;
    Ok((
        format!("{:.2} vs {:.2} ms: {x:.2}×", l.p99_ms, n.p99_ms),
        x <= P99_OVER_NGINX,
    ))
}

fn bulk(results: &[(RowSpec, RowResult)]) -> Outcome {
    let mb_s = |path| {
        row(results, path)?
            .aim_bulk()
            .ok_or_else(|| format!("{}: the bulk transfer failed", name(results, path)))
    };
    let (l, n) = (mb_s(LIBRARY)?, mb_s(Route::Nginx)?);
    let x = over(l, n, "nginx's MB/s")?;
    Ok((
        format!("{l:.0} vs {n:.0} MB/s: {x:.2}×"),
        x >= BULK_OVER_NGINX,
    ))
}

/// The gateway side's CPU per request in `path`'s fixed-count run against nginx's.
fn cpu(results: &[(RowSpec, RowResult)], path: Route, proto: Proto) -> Outcome {
    let per_100k = |path| -> Result<f64, String> {
        let l = row(results, path)?.aim_cpu(proto).ok_or_else(|| {
            format!(
                "{}: no fixed-count {} run",
                name(results, path),
                proto.name()
            )
        })?;
        l.per_100k(l.cpu_gateway)
            .ok_or_else(|| format!("{}: no request succeeded", name(results, path)))
    };
    let (g, n) = (per_100k(path)?, per_100k(Route::Nginx)?);
    let x = over(g, n, "nginx's CPU time")?;
    Ok((
        format!("{g:.2} vs {n:.2} CPU s / 100k requests: {x:.2}×"),
        x <= CPU_OVER_NGINX,
    ))
}

/// Library mode's p50 minus the direct connection's, at most [`ADDED_P50_US`].
fn added_p50(results: &[(RowSpec, RowResult)], key: Key) -> Outcome {
    let (l, d) = (
        load(results, LIBRARY, key)?,
        load(results, Route::Direct, key)?,
    );
    // The percentiles are whole microseconds: round away float noise.
    let added = ((l.p50_ms - d.p50_ms) * 1e6).round() / 1e3;
    Ok((
        format!(
            "{:.0} vs {:.0} µs: {added:+.0} µs, {:.2}× the {ADDED_P50_US} µs allowed",
            l.p50_ms * 1e3,
            d.p50_ms * 1e3,
            added / ADDED_P50_US
        ),
        added <= ADDED_P50_US,
    ))
}

/// The scale run, when it has points.
fn scale_points(scale: &Result<Scale>) -> Result<&Scale, String> {
    let s = scale
        .as_ref()
        .map_err(|e| format!("the scale run failed: {e:#}"))?;
    if s.points.is_empty() {
        return Err("the scale run has no points".into());
    }
    Ok(s)
}

/// The measured host's p50 at every count of idle origin connections, at most [`FLAT`]
/// times its p50 alone.
fn routing(scale: &Result<Scale>) -> Outcome {
    let s = scale_points(scale)?;
    let alone = s.routed_alone.p50_ms;
    let mut text = format!("alone {alone:.3} ms");
    let mut worst: f64 = 0.0;
    for p in &s.points {
        let x = over(p.routed.p50_ms, alone, "the p50 alone")?;
        worst = worst.max(x);
        let _ = write!(
            text,
            "; with {}: {:.3} ms, {x:.2}×",
            p.connections, p.routed.p50_ms
        );
    }
    Ok((text, worst <= FLAT))
}

/// Gateway RSS per idle origin connection at every count, at most [`IDLE_KIB`].
fn idle(scale: &Result<Scale>) -> Outcome {
    let s = scale_points(scale)?;
    let mut parts = Vec::new();
    let mut met = true;
    for p in &s.points {
        let kib = p.per_connection_kib(s.baseline_kib);
        met &= kib <= IDLE_KIB;
        parts.push(format!(
            "{} connections: {kib:.1} KiB, {:.2}×",
            p.connections,
            kib / IDLE_KIB
        ));
    }
    Ok((parts.join("; "), met))
}

pub fn evaluate(plan: &Plan, results: &[(RowSpec, RowResult)], scale: &Result<Scale>) -> Vec<Aim> {
    let c = plan.aim_c;
    let lib = "Library mode (rh2, default threads), 1 KiB";
    let mut out = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        let key = ("1k", proto, c);
        out.push(judged(
            format!(
                "{lib}, {c} concurrent, {}: req/s ≥ {RPS_OVER_BASELINE}× nginx's",
                client(proto)
            ),
            faster(results, LIBRARY, Route::Nginx, key),
        ));
        out.push(judged(
            format!(
                "{lib}, {c} concurrent, {}: p99 ≤ {P99_OVER_NGINX:.1}× nginx's",
                client(proto)
            ),
            p99(results, key),
        ));
    }
    for proto in [Proto::H1, Proto::H2] {
        out.push(judged(
            format!(
                "Proxy mode rh2 (default threads), 1 KiB, {c} concurrent, {}: req/s ≥ {RPS_OVER_BASELINE}× rathole's",
                client(proto)
            ),
            faster(results, PROXY, Route::Rathole, ("1k", proto, c)),
        ));
    }
    out.push(judged(
        format!(
            "Bulk download through library mode (rh2, one `curl --http1.1` of {} MiB): ≥ {BULK_OVER_NGINX}× nginx's MB/s",
            plan.bulk_bytes >> 20
        ),
        bulk(results),
    ));
    for (path, mode) in [(LIBRARY, "library mode rh2"), (PROXY, "proxy mode rh2")] {
        for proto in [Proto::H1, Proto::H2] {
            out.push(judged(
                format!(
                    "Gateway CPU per request ≤ {CPU_OVER_NGINX:.1}× nginx's: {mode} (default threads), {}, {} requests of 1 KiB at {c} concurrent",
                    client(proto),
                    plan.cpu_requests
                ),
                cpu(results, path, proto),
            ));
        }
    }
    let lc = plan.latency_c;
    for proto in [Proto::H1, Proto::H2] {
        out.push(judged(
            format!(
                "Added p50 at concurrency {lc} ≤ {ADDED_P50_US} µs over direct: {lib}, {}",
                client(proto)
            ),
            added_p50(results, ("1k", proto, lc)),
        ));
    }
    let most = plan.scale.iter().max().copied().unwrap_or(0);
    out.push(judged(
        format!(
            "Routing cost flat up to {most} idle origin connections of other hosts: {HOST}'s p50 (HTTP/1.1, 1 concurrent; its own connections, one per gateway worker) with them ≤ {FLAT}× its p50 alone"
        ),
        routing(scale),
    ));
    out.push(judged(
        format!("Idle origin connection ≤ {IDLE_KIB} KiB at the gateway (RSS per connection)"),
        idle(scale),
    ));
    out
}

pub fn write(d: &mut String, aims: &[Aim]) {
    let _ = writeln!(
        d,
        "\n## Aims\n\n\
         Issue 14's aims, read from this run: every ratio is between two rows of this run.\n\n\
         | aim | this run | |\n|---|---|---|"
    );
    for a in aims {
        let verdict = match a.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(d, "| {} | {} | {verdict} |", a.aim, a.this_run);
    }
}

#[cfg(test)]
mod tests;
