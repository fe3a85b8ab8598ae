//! What `/proc` says about the processes under test and the machine: CPU time of a process
//! tree (utime + stime from `/proc/PID/stat`), resident memory (`VmHWM`, `VmRSS`), the
//! load average, and a description of the machine and tools for the report.

use crate::procs;
use std::process::Command;
use std::time::{Duration, Instant};

/// Which side of the tunnel a watched process is on: public ("gateway": ptth-gateway,
/// nginx, rathole server) or application ("origin": ptth-origin, the library-mode app,
/// rathole client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Gateway,
    Origin,
}

/// A process whose tree (it and its descendants, such as nginx's workers) the row reports
/// CPU time and peak RSS for.
#[derive(Debug, Clone)]
pub struct Watched {
    pub side: Side,
    pub pid: u32,
}

/// `/proc/PID/stat` fields after the command name (index 0 is the state, 1 the ppid).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The fields after `(comm)`: the command name may itself hold spaces and parentheses, so
/// the split starts after the last `)`.
fn parse_stat(stat: &str) -> Option<Vec<String>> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// `pid` and every process below it, read from `/proc` now.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse().ok()) {
                parents.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while let Some(&parent) = out.get(i) {
        out.extend(
            parents
                .iter()
                .filter(|(p, pp)| *pp == parent && !out.contains(p))
                .map(|(p, _)| *p)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    out
}

/// User + system CPU seconds of `pid` and of its children it has reaped (utime, stime,
/// cutime, cstime), so a worker that exits keeps counting.
fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(pid)
        .and_then(|f| {
            let mut ticks = 0.0;
            for i in 11..=14 {
                ticks += f.get(i)?.parse::<f64>().ok()?;
            }
            Some(ticks / clock_ticks())
        })
        .unwrap_or(0.0)
}

/// CPU seconds of `pid`'s whole process tree.
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    tree(pid).into_iter().map(cpu_seconds).sum()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        procs::output(Command::new("getconf").arg("CLK_TCK"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `/proc/PID/status` field in KiB (`VmHWM`, `VmRSS`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), field)
}

/// A `Field: N kB` line of a `/proc` file.
fn kib_field(file: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU seconds of the watched trees on `side`.
pub fn side_cpu(watched: &[Watched], side: Side) -> f64 {
    watched
        .iter()
        .filter(|w| w.side == side)
        .map(|w| tree_cpu_seconds(w.pid))
        .sum()
}

/// The sum of `VmHWM` over the watched trees on `side`.
pub fn side_hwm(watched: &[Watched], side: Side) -> Option<u64> {
    let v: Vec<u64> = watched
        .iter()
        .filter(|w| w.side == side)
        .flat_map(|w| tree(w.pid))
        .filter_map(|p| status_kib(p, "VmHWM"))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Waits until `pid`'s RSS stops moving (after connections' first requests).
pub fn settled_rss(pid: u32) -> u64 {
    let mut last = status_kib(pid, "VmRSS").unwrap_or(0);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = status_kib(pid, "VmRSS").unwrap_or(0);
        if now.abs_diff(last) * 200 < last.max(1) {
            return now;
        }
        last = now;
    }
    last
}

/// CPUs, model, kernel and memory.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|x| x.1.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = procs::output(Command::new("uname").arg("-r"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem = kib_field("/proc/meminfo", "MemTotal").map_or(String::new(), |k| {
        format!(", {:.0} GiB RAM", k as f64 / 1024.0 / 1024.0)
    });
    format!("{nproc} CPUs ({cpu}), Linux {kernel}{mem}")
}

/// Waits (up to `PTTH_BENCH_IDLE_WAIT` seconds, default 900) for the 1-minute load average
/// to drop below 1.0, so other work on the machine does not skew the figures. The load is
/// recorded in the report either way.
pub fn wait_for_idle() {
    let max = std::env::var("PTTH_BENCH_IDLE_WAIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900u64);
    let deadline = Instant::now() + Duration::from_secs(max);
    loop {
        let one: f64 = loadavg()
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        if one < 1.0 {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("load average still {one:.2} after {max} s; measuring anyway");
            return;
        }
        eprintln!("waiting for the machine to settle: 1-minute load {one:.2}");
        std::thread::sleep(Duration::from_secs(15));
    }
}

/// The first line of `cmd arg`'s output, or rathole's `Build Version`.
pub fn tool_version(cmd: &str, arg: &str) -> String {
    let out = Command::new(cmd).arg(arg).output();
    out.ok()
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            // rathole prints its name alone, then `Build Version: x`.
            match text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Build Version:"))
            {
                Some(v) => format!("{cmd} {}", v.trim()),
                None => text.lines().next().unwrap_or("").trim().to_string(),
            }
        })
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_start_after_the_last_parenthesis() {
        let f = parse_stat("42 (a) b (c)) S 7 42 42 0 -1 0 1 2 3 4 150 25 3 1 20").unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[1], "7");
        assert_eq!(&f[11..15], ["150", "25", "3", "1"]);
        assert!(parse_stat("no parenthesis").is_none());
    }

    #[test]
    fn a_tree_holds_the_children_and_counts_their_cpu() {
        // A shell that only waits, and its child that burns CPU: the CPU time of the tree
        // is the child's.
        let mut sh = Command::new("sh")
            .args([
                "-c",
                "sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 30' & wait",
            ])
            .spawn()
            .unwrap();
        let root = sh.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = (Vec::new(), 0.0, 0.0);
        while Instant::now() < deadline {
            seen = (tree(root), tree_cpu_seconds(root), cpu_seconds(root));
            if seen.0.len() >= 2 && seen.1 - seen.2 > 0.05 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in tree(root).iter().rev() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = sh.wait();
        assert!(seen.0.len() >= 2, "the child is not in the tree: {seen:?}");
        assert!(
            seen.1 - seen.2 > 0.05,
            "the child's CPU time is not counted: {seen:?}"
        );
    }
}
