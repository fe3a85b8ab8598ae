//! `cargo xtask bench [--smoke]`: ptth against a direct connection, nginx and rathole, with
//! the same load generator (h2load) and the same application; writes `docs/benchmarks.md`.
//!
//! Rows: (a) client → app; (b) nginx → app; (c) gateway → `ptth-origin --upstream` → app per
//! mechanism; (d) gateway → the app embedded in an origin (library mode); (e) rathole →
//! app. The app is `crates/ptth-origin/examples/bench_app.rs` (`/1k`, `/1m`, `/bytes/N`).
//! Each row gets fresh processes, so peak RSS (VmHWM) is that row's; CPU time comes from
//! `/proc/PID/stat` deltas of each side's process tree around each load run, and around
//! fixed-count runs for CPU per request. The runs an aim reads (and the bulk download of
//! nginx and library mode) are measured again on fresh processes of the row (three pairs in
//! all; the aims read medians). Then the scale run: gateway RSS per idle origin
//! connection, one host's latency with thousands of other hosts' connections registered,
//! and how long 1 000 origin connections take to come back after a gateway restart, and
//! the upload row ([`upload`]: 5 GiB through rh2 proxy mode to an `h2c://` upstream, beside
//! a direct upload, with both ends' peak RSS). The report ends with issue 14's aims, each
//! judged from this run. `--smoke` runs a seconds-long version that only proves the
//! harness. `--upload-bytes N` sets the upload's size; `--upload-only` runs the upload row
//! alone and replaces its section of `docs/benchmarks.md` (the rest of the file stays from
//! the last full run). The TCP flow row ([`tcp`]: reverse CONNECT against rathole's TCP
//! forwarding and a direct connection) runs last; `--tcp-only` runs it alone the same way.
//!
//! The modules, in the order a run uses them: [`plan`] (rows, concurrencies), [`stack`]
//! (starting a row's processes), [`measure`] (one row's runs) on [`load`] (h2load,
//! `ptth-h3-client load`) and [`sample`] (`/proc`), [`scale`], then [`report`] and [`aims`].

mod aims;
mod load;
mod measure;
mod plan;
mod report;
mod sample;
mod scale;
mod stack;
mod tcp;
mod upload;

use crate::procs::{self, TempDir};
use anyhow::{bail, Context, Result};
use measure::RowResult;
use plan::{Plan, Route, RowSpec, ROWS};
use std::path::Path;
use std::time::Instant;

const USAGE: &str =
    "usage: cargo xtask bench [--smoke] [--upload-only] [--upload-bytes N] [--tcp-only]";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let (mut smoke, mut upload_only, mut upload_bytes) = (false, false, None);
    let mut tcp_only = false;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--smoke" => smoke = true,
            "--upload-only" => upload_only = true,
            "--tcp-only" => tcp_only = true,
            "--upload-bytes" => {
                let n = rest.next().context(USAGE)?;
                upload_bytes = Some(
                    n.parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("--upload-bytes {n:?}: a positive number"))?,
                );
            }
            _ => bail!("unknown argument {a:?}; {USAGE}"),
        }
    }
    let mut plan = Plan::new(smoke);
    if let Some(n) = upload_bytes {
        plan.upload_bytes = n;
    }
    procs::require_tool("h2load", "apt-get install nghttp2-client")?;
    procs::require_tool("curl", "apt-get install curl")?;
    let missing = stack::ensure_baselines(smoke);
    crate::run(
        root,
        "cargo",
        &["build", "--release", "--workspace", "--bins"],
    )?;
    crate::run(
        root,
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "ptth-origin",
            "--example",
            "bench_app",
        ],
    )?;
    // Timed from here: the build is not part of the run.
    let started = Instant::now();
    if !smoke {
        sample::wait_for_idle();
    }
    let bin = procs::target_dir(root).join("release");
    let app = bin.join("examples").join("bench_app");
    let tmp = TempDir::new("bench")?;
    let dev = tmp.0.join("dev");
    let load_before = sample::loadavg();
    let machine = sample::machine();
    eprintln!("{machine}; load average {load_before}");

    if tcp_only {
        eprintln!("== tcp flows");
        let run = tcp::tcp_run(&plan, &bin, &dev, &tmp.0);
        let mut section = String::new();
        tcp::render(&mut section, &run);
        println!("{section}");
        let run = run.context("tcp run")?;
        if let Some(broken) = tcp::smoke_broken(&run).filter(|_| smoke) {
            bail!("bench harness broken: {broken}");
        }
        if !smoke {
            let path = root.join("docs").join("benchmarks.md");
            let doc = std::fs::read_to_string(&path).unwrap_or_default();
            std::fs::write(&path, tcp::replace_section(&doc, &section))
                .context("writing docs/benchmarks.md")?;
            eprintln!("wrote the TCP section of docs/benchmarks.md");
        }
        return Ok(());
    }

    if upload_only {
        eprintln!("== {}", upload::PTTH.name());
        let upload = upload::upload_run(&plan, &bin, &app, &dev, &tmp.0)?;
        let mut section = String::new();
        upload::render(&mut section, &Ok(upload));
        println!("{section}");
        if !smoke {
            let path = root.join("docs").join("benchmarks.md");
            let doc = std::fs::read_to_string(&path).unwrap_or_default();
            std::fs::write(&path, upload::replace_section(&doc, &section))
                .context("writing docs/benchmarks.md")?;
            eprintln!("wrote the upload section of docs/benchmarks.md");
        }
        return Ok(());
    }

    let mut results: Vec<(RowSpec, RowResult)> = Vec::new();
    for spec in ROWS {
        eprintln!("== ({}) {}", spec.id, spec.label);
        let mut result = RowResult::default();
        match stack::start_row(spec, &plan, &bin, &app, &dev, &tmp.0) {
            Ok(Some(row)) => {
                if let Err(e) = measure::measure_row(&row, spec, &plan, &tmp.0, &mut result) {
                    result.error = Some(format!("{e:#}"));
                }
                // Its processes stop before the next pair starts.
                drop(row);
                if result.error.is_none() {
                    again(spec, &plan, &bin, &app, &dev, &tmp.0, &mut result);
                }
            }
            Ok(None) => {
                result.error = Some(
                    missing
                        .get(spec.label)
                        .cloned()
                        .unwrap_or_else(|| "not installed".into()),
                )
            }
            Err(e) => result.error = Some(format!("{e:#}")),
        }
        if let Some(e) = &result.error {
            eprintln!("   {}: {e}", spec.label);
        }
        results.push((*spec, result));
    }

    eprintln!("== scale");
    let scale = scale::scale_run(&plan, &bin, &dev, &tmp.0);
    if let Err(e) = &scale {
        eprintln!("   scale run: {e:#}");
    }
    eprintln!("== {}", upload::PTTH.name());
    let upload = upload::upload_run(&plan, &bin, &app, &dev, &tmp.0);
    if let Err(e) = &upload {
        eprintln!("   upload run: {e:#}");
    }
    eprintln!("== tcp flows");
    let tcp = tcp::tcp_run(&plan, &bin, &dev, &tmp.0);
    if let Err(e) = &tcp {
        eprintln!("   tcp run: {e:#}");
    }
    let load_after = sample::loadavg();

    let doc = report::render(&report::Run {
        plan: &plan,
        machine,
        load_before,
        load_after,
        results: &results,
        scale: &scale,
        upload: &upload,
        tcp: &tcp,
        elapsed: started.elapsed(),
    });
    println!("{doc}");
    if smoke {
        eprintln!("(--smoke: docs/benchmarks.md not written)");
        let broken: Vec<String> = results
            .iter()
            .filter(|(s, r)| smoke_broken(s, &plan, r))
            .map(|(s, r)| format!("{}: {:?} {:?}", s.label, r.error, r.notes))
            .collect();
        if !broken.is_empty() {
            bail!("bench harness broken: {broken:?}");
        }
        scale.context("scale run")?;
        upload.context("upload run")?;
        if let Some(broken) = tcp.as_ref().ok().and_then(tcp::smoke_broken) {
            bail!("bench harness broken: {broken}");
        }
        tcp.context("tcp run")?;
        eprintln!("xtask bench --smoke: the harness works");
    } else {
        std::fs::write(root.join("docs").join("benchmarks.md"), &doc)
            .context("writing docs/benchmarks.md")?;
        eprintln!("wrote docs/benchmarks.md");
    }
    Ok(())
}

/// The aims' runs of `spec`'s row ([`measure::aim_keys`]) on [`Plan::aim_samples`] − 1
/// more fresh starts of its processes, one after another; a failure becomes a note and
/// ends the repeats (the aims then read the samples there are).
fn again(
    spec: &RowSpec,
    plan: &Plan,
    bin: &Path,
    app: &Path,
    dev: &Path,
    tmp: &Path,
    result: &mut RowResult,
) {
    if measure::aim_keys(spec, plan).is_empty() {
        return;
    }
    for n in 2..=plan.aim_samples {
        eprintln!(
            "   the aims' runs on fresh processes, pair {n} of {}",
            plan.aim_samples
        );
        let done = match stack::start_row(spec, plan, bin, app, dev, tmp) {
            Ok(Some(row)) => measure::measure_aims_again(&row, spec, plan, tmp, result),
            Ok(None) => Err(anyhow::anyhow!("its baseline is no longer installed")),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            let note = format!("the aims' runs on fresh processes, pair {n}: {e:#}");
            eprintln!("   {note}");
            result.notes.push(note);
            return;
        }
    }
}

/// Whether a `--smoke` row shows the harness broken: any row that failed (only rathole,
/// which `--smoke` does not build, may be missing: a smoke run without its nginx baseline
/// proves nothing about the comparison), a run without a successful request, a CPU row
/// without both fixed-count runs, or a ptth row with a note (a failed bulk transfer).
fn smoke_broken(spec: &RowSpec, plan: &Plan, r: &RowResult) -> bool {
    if let Some(e) = &r.error {
        return !(spec.path == Route::Rathole && e.starts_with("not installed"));
    }
    let repeats = plan.aim_samples.saturating_sub(1);
    r.loads.values().any(|l| l.requests == 0)
        || spec.cpu && (r.cpu.len() < 2 || r.cpu.values().any(|l| l.requests == 0))
        || matches!(spec.path, Route::Proxy(_) | Route::Library(_)) && !r.notes.is_empty()
        || measure::aim_keys(spec, plan).iter().any(|k| {
            r.again
                .get(k)
                .is_none_or(|s| s.len() != repeats || s.iter().any(|l| l.requests == 0))
        })
        || measure::bulk_aim(spec) && r.bulk_again.len() != repeats
}
