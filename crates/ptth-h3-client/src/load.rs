//! `ptth-h3-client load`: an h2load-like HTTP/3 load generator. C connections, each with M
//! requests in flight (one task per stream slot), `GET URL` with bodies read to the end and
//! counted, per-request latency from sending the request to the end of its body, and a
//! summary in h2load's words (or one JSON object).

use crate::connect::{self, Target, Trust};
use anyhow::{bail, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Amount {
    /// `-n`: this many requests in all (after the warm-up).
    Total(u64),
    /// `-D`: this long (after the warm-up).
    For(Duration),
}

/// What `load` was asked to do.
#[derive(Debug)]
pub struct LoadArgs {
    pub url: String,
    pub trust: Trust,
    pub connect_to: Option<String>,
    pub connections: usize,
    pub streams: usize,
    pub amount: Amount,
    pub warm_up: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub json: bool,
}

/// Shared by every stream task; read-only but for the request counter.
#[derive(Debug)]
struct Plan {
    uri: http::Uri,
    amount: Amount,
    /// Requests started before this are warm-up and not counted.
    measure_from: Instant,
    timeout: Duration,
    /// `-n`: requests claimed so far.
    claimed: AtomicU64,
}

/// One stream task's counts; summed at the end, so tasks never contend.
#[derive(Debug, Default)]
struct Stats {
    started: u64,
    succeeded: u64,
    errored: u64,
    timeout: u64,
    status: [u64; 6],
    bytes: u64,
    latencies_us: Vec<u32>,
    last_done: Option<Instant>,
    first_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.started += o.started;
        self.succeeded += o.succeeded;
        self.errored += o.errored;
        self.timeout += o.timeout;
        for (a, b) in self.status.iter_mut().zip(o.status) {
            *a += b;
        }
        self.bytes += o.bytes;
        self.latencies_us.extend_from_slice(&o.latencies_us);
        self.last_done = self.last_done.max(o.last_done);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Runs the load and prints the summary. Fails only when no connection could be made.
pub async fn run(args: LoadArgs) -> Result<()> {
    if args.connections == 0 || args.streams == 0 {
        bail!("-c and -m must be at least 1");
    }
    let target = Target::resolve(&args.url, args.connect_to.as_deref()).await?;
    let streams = u32::try_from(args.streams).unwrap_or(u32::MAX);
    let config = connect::client_config(&args.trust, streams)?;

    // Connect every connection first, in parallel; the clock starts once they are up.
    let mut dials = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (target, config, timeout) = (target.clone(), config.clone(), args.connect_timeout);
        dials.push(tokio::spawn(async move {
            connect::connect(&target, &config, timeout).await
        }));
    }
    let mut conns = Vec::with_capacity(args.connections);
    let mut connect_errors = Vec::new();
    for d in dials {
        match d.await? {
            Ok(c) => conns.push(c),
            Err(e) => connect_errors.push(format!("{e:#}")),
        }
    }
    for e in &connect_errors {
        eprintln!("ptth-h3-client: connection failed: {e}");
    }
    if conns.is_empty() {
        bail!("no connection could be established");
    }

    let started = Instant::now();
    let measure_from = started + args.warm_up;
    let plan = Arc::new(Plan {
        uri: target.uri.clone(),
        amount: args.amount,
        measure_from,
        timeout: args.timeout,
        claimed: AtomicU64::new(0),
    });
    let per_task = match args.amount {
        Amount::Total(n) => {
            usize::try_from(n / (conns.len() * args.streams) as u64 + 1).unwrap_or(1 << 20)
        }
        Amount::For(_) => 4096,
    }
    .min(4096);
    let mut tasks = Vec::with_capacity(conns.len() * args.streams);
    for c in &conns {
        for _ in 0..args.streams {
            let (sender, quic, plan) = (c.h3.sender(), c.quic.clone(), plan.clone());
            tasks.push(tokio::spawn(stream_task(sender, quic, plan, per_task)));
        }
    }
    let mut total = Stats::default();
    for t in tasks {
        total.merge(t.await?);
    }
    let end = total.last_done.unwrap_or_else(Instant::now);
    let seconds = end
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    for c in conns {
        c.close().await;
    }
    let planned = match args.amount {
        Amount::Total(n) => n,
        Amount::For(_) => total.started,
    };
    let summary = Summary::new(total, planned, seconds);
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.text());
    }
    if let Some(e) = &summary.stats.first_error {
        eprintln!("ptth-h3-client: first request error: {e}");
    }
    Ok(())
}

/// One stream slot: sends requests one after another until the plan is done.
async fn stream_task(
    sender: ptth_h3::SendRequest,
    quic: quinn::Connection,
    plan: Arc<Plan>,
    capacity: usize,
) -> Stats {
    let mut stats = Stats {
        latencies_us: Vec::with_capacity(capacity),
        ..Stats::default()
    };
    loop {
        let sent = Instant::now();
        let measured = sent >= plan.measure_from;
        if measured {
            match plan.amount {
                Amount::Total(n) => {
                    if plan.claimed.fetch_add(1, Ordering::Relaxed) >= n {
                        break;
                    }
                }
                Amount::For(d) => {
                    if sent >= plan.measure_from + d {
                        break;
                    }
                }
            }
        }
        let req = Request::get(plan.uri.clone())
            .body(Empty::<Bytes>::new())
            .expect("a GET of a parsed URI");
        let one = async {
            let res = sender.send_request(req).await?;
            let status = res.status().as_u16();
            let mut body = res.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    bytes += data.len() as u64;
                }
            }
            Ok::<_, ptth_h3::H3Error>((status, bytes))
        };
        let result = tokio::time::timeout(plan.timeout, one).await;
        let done = Instant::now();
        if measured {
            stats.started += 1;
        }
        match result {
            Ok(Ok((status, bytes))) => {
                if measured {
                    stats.succeeded += 1;
                    stats.status[usize::from(status / 100).min(5)] += 1;
                    stats.bytes += bytes;
                    let us = done.duration_since(sent).as_micros();
                    stats
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                    stats.last_done = Some(done);
                }
            }
            Ok(Err(e)) => {
                if measured {
                    stats.errored += 1;
                    stats.last_done = Some(done);
                }
                if stats.first_error.is_none() {
                    stats.first_error = Some(e.to_string());
                }
                // A dead connection fails every further request at once: stop this slot.
                if quic.close_reason().is_some() {
                    break;
                }
            }
            Err(_) => {
                if measured {
                    stats.timeout += 1;
                    stats.last_done = Some(done);
                }
                if stats.first_error.is_none() {
                    stats.first_error = Some(format!(
                        "no complete response within {:.1} s",
                        plan.timeout.as_secs_f64()
                    ));
                }
            }
        }
    }
    stats
}

/// The numbers printed at the end.
#[derive(Debug)]
struct Summary {
    stats: Stats,
    planned: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Summary {
    fn new(mut stats: Stats, planned: u64, seconds: f64) -> Self {
        stats.latencies_us.sort_unstable();
        let pct = |p: usize| -> f64 {
            let v = &stats.latencies_us;
            if v.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = (v.len() * p).div_ceil(100).max(1);
            f64::from(v[rank - 1]) / 1000.0
        };
        let (p50_ms, p99_ms, max_ms) = (pct(50), pct(99), pct(100));
        Self {
            stats,
            planned,
            seconds,
            p50_ms,
            p99_ms,
            max_ms,
        }
    }

    fn failed(&self) -> u64 {
        self.stats.errored + self.stats.timeout
    }

    fn rps(&self) -> f64 {
        self.stats.succeeded as f64 / self.seconds
    }

    fn mbps(&self) -> f64 {
        self.stats.bytes as f64 / self.seconds / 1e6
    }

    /// h2load's summary lines, so the parsers of h2load output read this too.
    fn text(&self) -> String {
        let s = &self.stats;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "finished in {:.2}s, {:.2} req/s, {:.2}MB/s",
            self.seconds,
            self.rps(),
            self.mbps()
        );
        let _ = writeln!(
            out,
            "requests: {} total, {} started, {} done, {} succeeded, {} failed, {} errored, {} timeout",
            self.planned,
            s.started,
            s.succeeded + self.failed(),
            s.succeeded,
            self.failed(),
            s.errored,
            s.timeout
        );
        let _ = writeln!(
            out,
            "status codes: {} 2xx, {} 3xx, {} 4xx, {} 5xx",
            s.status[2], s.status[3], s.status[4], s.status[5]
        );
        let _ = writeln!(out, "traffic: {} bytes of response bodies", s.bytes);
        let _ = writeln!(
            out,
            "latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        );
        out
    }

    fn json(&self) -> String {
        let s = &self.stats;
        format!(
            "{{\"requests\":{},\"succeeded\":{},\"failed\":{},\"status_2xx\":{},\"status_3xx\":{},\"status_4xx\":{},\"status_5xx\":{},\"seconds\":{:.6},\"rps\":{:.2},\"bytes\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
            s.started,
            s.succeeded,
            self.failed(),
            s.status[2],
            s.status[3],
            s.status[4],
            s.status[5],
            self.seconds,
            self.rps(),
            s.bytes,
            self.p50_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_parse_like_h2load() {
        let stats = Stats {
            started: 4,
            succeeded: 3,
            errored: 1,
            status: [0, 0, 2, 0, 1, 0],
            bytes: 300,
            latencies_us: vec![4000, 1000, 3000],
            ..Stats::default()
        };
        let s = Summary::new(stats, 4, 2.0);
        assert_eq!(s.p50_ms, 3.0);
        assert_eq!(s.max_ms, 4.0);
        let text = s.text();
        assert!(text.contains(
            "requests: 4 total, 4 started, 4 done, 3 succeeded, 1 failed, 1 errored, 0 timeout"
        ));
        assert!(text.contains("status codes: 2 2xx, 0 3xx, 1 4xx, 0 5xx"));
        assert!(text.starts_with("finished in 2.00s, 1.50 req/s, "));
        let json = s.json();
        assert!(json.starts_with("{\"requests\":4,\"succeeded\":3,\"failed\":1,\"status_2xx\":2,"));
    }
}
