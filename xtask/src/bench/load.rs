//! Load generation and its parsing: h2load for HTTP/1.1 and h2c, `ptth-h3-client load` for
//! the gateway's public HTTP/3 endpoint; each run gives requests per second, p50/p99 from
//! per-request times, and counts.

use super::plan::HOST;
use crate::procs;
use anyhow::{bail, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// The client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    /// HTTP/1.1, one connection per request outstanding.
    H1,
    /// HTTP/2 over cleartext TCP.
    H2,
    /// HTTP/3 to the gateway's public QUIC endpoint.
    H3,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
        }
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    Seconds(u64),
    /// A fixed number of requests across all connections (for CPU per request).
    Requests(u64),
}

/// One load run.
#[derive(Debug, Clone, Default)]
pub struct Load {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub failed: u64,
    /// CPU seconds the row's processes spent during the run, per side.
    pub cpu_gateway: f64,
    pub cpu_origin: f64,
}

impl Load {
    /// CPU seconds per 100 000 successful requests, or `None` without requests.
    pub fn per_100k(&self, cpu: f64) -> Option<f64> {
        (self.requests > 0).then(|| cpu / self.requests as f64 * 100_000.0)
    }
}

/// `h2load` against `addr` with `Host: app.localhost`. Concurrency `c` is the number of
/// requests outstanding: HTTP/1.1 opens `c` connections; HTTP/2 opens up to 4 and spreads
/// `c` streams over them.
pub fn h2load(
    addr: SocketAddr,
    proto: Proto,
    path: &str,
    c: usize,
    amount: Amount,
    tmp: &Path,
) -> Result<Load> {
    let (clients, streams) = match proto {
        Proto::H1 => (c, 1),
        Proto::H2 => {
            let clients = c.min(4);
            (clients, c.div_ceil(clients))
        }
        Proto::H3 => bail!("h2load does not speak HTTP/3"),
    };
    let log = tmp.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", &clients.to_string(), "-m", &streams.to_string()])
        .args(["-T", "30", "-N", "30"])
        .args(["--connect-to", &format!("127.0.0.1:{}", addr.port())])
        .arg(format!("--log-file={}", log.display()));
    match amount {
        Amount::Seconds(s) => cmd.args(["-D", &s.to_string()]),
        Amount::Requests(n) => cmd.args(["-n", &n.to_string()]),
    };
    if proto == Proto::H1 {
        cmd.arg("--h1");
    }
    let out = procs::output(cmd.arg(format!("http://{HOST}:{}/{path}", addr.port())))?;
    let times = std::fs::read_to_string(&log).unwrap_or_default();
    Ok(parse_h2load(&out, &times))
}

/// h2load's summary (`finished in …, N req/s`, `requests: … N succeeded, N failed, N
/// errored, N timeout`) and its `--log-file` (tab-separated; the third column is the
/// request's time in microseconds).
fn parse_h2load(out: &str, log: &str) -> Load {
    let count = |word: &str| -> u64 {
        out.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                let end = l.find(word)?;
                l.get(..end)?.split_whitespace().last()?.parse().ok()
            })
            .unwrap_or(0)
    };
    let mut micros: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    micros.sort_unstable();
    Load {
        rps: out
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
            .unwrap_or(0.0),
        p50_ms: percentile_ms(&micros, 0.50),
        p99_ms: percentile_ms(&micros, 0.99),
        requests: count(" succeeded"),
        failed: count(" failed") + count(" errored") + count(" timeout"),
        ..Load::default()
    }
}

/// The nearest-rank percentile `p` of sorted microseconds, in milliseconds (0 when empty).
fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(0.0, |&us| us as f64 / 1000.0)
}

/// The HTTP/3 counterpart of [`h2load`]: `client load` (`ptth-h3-client`) through the
/// gateway's public HTTP/3 endpoint `addr` whose certificate chains to `ca`, `c` requests
/// outstanding over up to 4 QUIC connections, as for h2c.
pub fn h3load(
    client: &Path,
    addr: SocketAddr,
    ca: &Path,
    path: &str,
    c: usize,
    seconds: u64,
) -> Result<Load> {
    let clients = c.min(4);
    let streams = c.div_ceil(clients);
    let out = procs::output(
        Command::new(client)
            .arg("load")
            .args(["-c", &clients.to_string(), "-m", &streams.to_string()])
            .args(["-D", &seconds.to_string(), "--warm-up", "1", "--json"])
            .arg("--cacert")
            .arg(ca)
            .args(["--connect-to", &addr.to_string()])
            .arg(format!("https://{HOST}/{path}")),
    )?;
    Ok(parse_h3load(&out))
}

/// `ptth-h3-client load --json`: one flat object of numbers.
fn parse_h3load(out: &str) -> Load {
    let field = |name: &str| -> f64 {
        let key = format!("\"{name}\":");
        out.find(&key)
            .and_then(|i| out.get(i + key.len()..))
            .and_then(|rest| {
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                rest.get(..end)?.trim().parse().ok()
            })
            .unwrap_or(0.0)
    };
    Load {
        rps: field("rps"),
        p50_ms: field("p50_ms"),
        p99_ms: field("p99_ms"),
        requests: field("succeeded") as u64,
        failed: field("failed") as u64,
        ..Load::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "\
starting benchmark...
finished in 1.00s, 12345.60 req/s, 13.2MB/s
requests: 12346 total, 12346 started, 12340 done, 12338 succeeded, 2 failed, 3 errored, 1 timeout
status codes: 12338 2xx, 0 3xx, 0 4xx, 2 5xx
";

    #[test]
    fn h2load_summary_and_log_give_rate_counts_and_percentiles() {
        let log: String = (1..=100)
            .rev()
            .map(|us| format!("1700000000000\t200\t{us}\n"))
            .collect();
        let l = parse_h2load(SUMMARY, &log);
        assert_eq!(l.rps, 12345.6);
        assert_eq!(l.requests, 12338);
        assert_eq!(l.failed, 6);
        assert_eq!(l.p50_ms, 0.050);
        assert_eq!(l.p99_ms, 0.099);
        assert_eq!(l.per_100k(1.2338), Some(10.0));
    }

    #[test]
    fn empty_output_is_zero_not_a_panic() {
        let l = parse_h2load("", "garbage\tline\n\t\tnot-a-number\n");
        assert_eq!((l.rps, l.requests, l.failed, l.p50_ms), (0.0, 0, 0, 0.0));
        assert_eq!(l.per_100k(1.0), None);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
        assert_eq!(percentile_ms(&[7000], 0.01), 7.0);
        // Nearest rank: the 4th of 7 is the median, the 7th the p99.
        let seven = [1000, 2000, 3000, 4000, 5000, 6000, 7000];
        assert_eq!(percentile_ms(&seven, 0.50), 4.0);
        assert_eq!(percentile_ms(&seven, 0.99), 7.0);
    }

    #[test]
    fn h3_client_json_is_read_by_field() {
        let l = parse_h3load(
            "{\"rps\":2241.5,\"p50_ms\":0.44,\"p99_ms\":0.67,\"succeeded\":11207,\"failed\":1}",
        );
        assert_eq!(
            (l.rps, l.p50_ms, l.p99_ms, l.requests, l.failed),
            (2241.5, 0.44, 0.67, 11207, 1)
        );
    }
}
