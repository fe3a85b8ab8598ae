//! `cargo xtask chaos`: what an operator does at 3 am, under load, with real processes on
//! loopback. HAProxy (TCP mode) spreads public clients over two gateways; three origins of
//! one host are connected to both gateways. While clients send GETs and POSTs, four phases
//! run one after the other:
//!
//! | phase | what happens every interval | what must hold |
//! |---|---|---|
//! | origins rolled | a replacement origin starts, then the oldest gets SIGTERM | no request fails |
//! | origins killed | the oldest origin gets SIGKILL, a replacement starts | only requests in flight on it may fail |
//! | gateway rolled | a new gateway process starts on the same ports, then the old one gets SIGTERM | no request fails (with `net.ipv4.tcp_migrate_req = 1`, which the run sets when it may: [`MigrateQueued`]) |
//! | gateway killed | a gateway gets SIGKILL, a new one starts on its ports | only requests in flight on it may fail |
//!
//! No phase may ever give a wrong answer: every GET asks for a length of its own and every
//! POST sends a body of its own, and the answer is checked byte for byte. The run prints
//! ok / failed / wrong counts per phase and exits non-zero when a rule above is broken.
//!
//! The clients are plain HTTP/1.1 keep-alive clients. Like every browser and HTTP library,
//! they send a request again, once, on a fresh connection when a *reused* keep-alive
//! connection closed before any byte of the answer arrived (RFC 9112 §9.3.1: the server may
//! close an idle connection at any time); those resends are counted and printed apart.

use crate::procs::{self, Children, TempDir};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The host every origin serves (the dev grants cover `*.localhost`).
const HOST: &str = "chaos.localhost";
/// The size of a POST body (the load: 2 KiB).
const POST_BODY: usize = 2048;
/// The origins' and gateways' grace period for requests in flight when told to stop.
const GRACE_SECS: &str = "10";

/// The phases, in the order they run.
const PHASES: [Phase; 4] = [
    Phase::OriginsRolled,
    Phase::OriginsKilled,
    Phase::GatewayRolled,
    Phase::GatewayKilled,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    OriginsRolled,
    OriginsKilled,
    GatewayRolled,
    GatewayKilled,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::OriginsRolled => "origins rolled (SIGTERM)",
            Phase::OriginsKilled => "origins killed (SIGKILL)",
            Phase::GatewayRolled => "gateway rolled (SIGTERM)",
            Phase::GatewayKilled => "gateway killed (SIGKILL)",
        }
    }

    /// Whether the phase may lose requests that were in flight on the killed process.
    fn kills(self) -> bool {
        matches!(self, Phase::OriginsKilled | Phase::GatewayKilled)
    }
}

/// How the run is sized.
#[derive(Debug, Clone)]
struct Plan {
    /// Length of each phase.
    phase: Duration,
    /// Time between two events (a roll or a kill) within a phase.
    interval: Duration,
    /// Concurrent clients.
    clients: usize,
    /// The origins' mechanisms, one origin each.
    mechanisms: Vec<String>,
}

impl Plan {
    fn parse(args: &[String]) -> Result<Self> {
        let mut plan = Plan {
            phase: Duration::from_secs(20),
            interval: Duration::from_secs(2),
            clients: 16,
            mechanisms: ["rh2", "rh1", "rh3"].map(String::from).to_vec(),
        };
        let mut args = args.iter();
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => {
                    plan.phase = Duration::from_secs(6);
                    plan.interval = Duration::from_millis(1500);
                    plan.clients = 8;
                }
                "--seconds" => {
                    let v = args.next().context("--seconds needs a value")?;
                    plan.phase = Duration::from_secs(v.parse().context("--seconds")?);
                }
                "--clients" => {
                    let v = args.next().context("--clients needs a value")?;
                    plan.clients = v.parse().context("--clients")?;
                }
                "--mechanisms" => {
                    let v = args.next().context("--mechanisms needs a value")?;
                    plan.mechanisms = v.split(',').map(String::from).collect();
                }
                other => bail!(
                    "unknown argument {other:?}; usage: cargo xtask chaos [--quick] \
                     [--seconds N] [--clients N] [--mechanisms rh2,rh1,rh3]"
                ),
            }
        }
        if plan.mechanisms.is_empty() || plan.clients == 0 {
            bail!("chaos needs at least one origin and one client");
        }
        Ok(plan)
    }
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let plan = Plan::parse(args)?;
    procs::require_tool("haproxy", "apt-get install haproxy")?;
    crate::run(
        root,
        "cargo",
        &["build", "--release", "--workspace", "--bins"],
    )?;
    let bin = procs::target_dir(root).join("release");
    let migrate = MigrateQueued::turn_on();
    let tmp = TempDir::new("chaos")?;
    let mut house = House::start(&bin, &tmp.0, &plan)?;
    let stats: Arc<Vec<Counts>> = Arc::new(PHASES.iter().map(|_| Counts::default()).collect());
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reference = house.reference_pattern()?;
    let clients: Vec<_> = (0..plan.clients)
        .map(|id| {
            let client = Client {
                id,
                addr: house.haproxy,
                stats: stats.clone(),
                phase: phase.clone(),
                stop: stop.clone(),
                pattern: reference.clone(),
            };
            std::thread::spawn(move || client.run())
        })
        .collect();

    let mut events = Vec::new();
    let outcome = (|| -> Result<()> {
        for (i, p) in PHASES.iter().enumerate() {
            phase.store(i, Ordering::SeqCst);
            eprintln!("chaos: {}", p.name());
            let end = Instant::now() + plan.phase;
            let mut n = 0;
            while Instant::now() + plan.interval <= end {
                std::thread::sleep(plan.interval);
                house
                    .event(*p)
                    .with_context(|| format!("{}: event {n}", p.name()))?;
                n += 1;
            }
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            events.push(n);
            if let Some(dead) = house.children.exited().first() {
                bail!("{dead} exited during {}", p.name());
            }
        }
        Ok(())
    })();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    outcome?;

    println!(
        "\n| phase | events | ok | failed | wrong | resent on a closed keep-alive connection |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let mut broken = Vec::new();
    for ((p, c), n) in PHASES.iter().zip(stats.iter()).zip(&events) {
        let (ok, failed, wrong, resent) = c.read();
        println!(
            "| {} | {n} | {ok} | {failed} | {wrong} | {resent} |",
            p.name()
        );
        if wrong > 0 {
            broken.push(format!("{}: {wrong} wrong answers", p.name()));
        }
        if ok == 0 {
            broken.push(format!("{}: no request succeeded", p.name()));
        }
        // A kill may cost each client the one request it had in flight. Without the
        // kernel's migration of queued connections, a gateway roll may cost the
        // connections queued on the old listening sockets as they close.
        let allowed = if p.kills() || (*p == Phase::GatewayRolled && !migrate.on) {
            (*n as u64) * plan.clients as u64
        } else {
            0
        };
        if failed > allowed {
            broken.push(format!(
                "{}: {failed} requests failed, at most {allowed} may",
                p.name()
            ));
        }
        for e in c.errors() {
            eprintln!("  {}: {e}", p.name());
        }
    }
    if !broken.is_empty() {
        bail!("chaos: {}", broken.join("; "));
    }
    eprintln!("chaos: every phase held");
    Ok(())
}

/// `net.ipv4.tcp_migrate_req = 1` for the run, restored after it. Linux resets the
/// connections still queued on a listening socket when it closes, even when other sockets
/// share its port by `SO_REUSEPORT`; with this setting (Linux 5.14 and later) it hands them
/// to another socket of the group instead. A gateway roll needs it to lose nothing
/// (`docs/operations.md`, "Restarting without losing requests"): through HAProxy, a connection queued on the
/// old process's socket as it closed was reset after HAProxy had forwarded the request (2
/// of 234 557 requests in one run, under load).
struct MigrateQueued {
    on: bool,
    restore: Option<String>,
}

impl MigrateQueued {
    const PATH: &'static str = "/proc/sys/net/ipv4/tcp_migrate_req";

    fn turn_on() -> Self {
        let before = std::fs::read_to_string(Self::PATH).map(|v| v.trim().to_string());
        match before {
            Ok(v) if v == "1" => Self {
                on: true,
                restore: None,
            },
            Ok(v) => match std::fs::write(Self::PATH, "1") {
                Ok(()) => {
                    eprintln!("chaos: net.ipv4.tcp_migrate_req = 1 for this run (was {v})");
                    Self {
                        on: true,
                        restore: Some(v),
                    }
                }
                Err(e) => {
                    eprintln!(
                        "chaos: cannot set net.ipv4.tcp_migrate_req ({e}); a gateway roll may \
                         lose the connections queued on the old process's sockets"
                    );
                    Self {
                        on: false,
                        restore: None,
                    }
                }
            },
            Err(e) => {
                eprintln!(
                    "chaos: no net.ipv4.tcp_migrate_req ({e}: Linux before 5.14?); a gateway \
                     roll may lose the connections queued on the old process's sockets"
                );
                Self {
                    on: false,
                    restore: None,
                }
            }
        }
    }
}

impl Drop for MigrateQueued {
    fn drop(&mut self) {
        if let Some(v) = &self.restore {
            let _ = std::fs::write(Self::PATH, v);
        }
    }
}

/// Free loopback TCP ports, found by binding and releasing them. The same port numbers are
/// then used for UDP (QUIC tunnel) too.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The processes of the run.
struct House {
    children: Children,
    bin: PathBuf,
    dev: PathBuf,
    dir: PathBuf,
    /// HAProxy's public address.
    haproxy: SocketAddr,
    /// Each gateway's (public, tunnel) ports and its current pid.
    gateways: Vec<(u16, u16, u32)>,
    /// The origins, oldest first: (mechanism, pid, log).
    origins: Vec<(String, u32, PathBuf)>,
    /// Which gateway the next gateway event hits.
    next_gateway: usize,
    spawned: usize,
}

impl House {
    fn start(bin: &Path, dir: &Path, plan: &Plan) -> Result<Self> {
        let mut house = House {
            children: Children::default(),
            bin: bin.to_path_buf(),
            dev: dir.join("dev"),
            dir: dir.to_path_buf(),
            haproxy: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            gateways: Vec::new(),
            origins: Vec::new(),
            next_gateway: 0,
            spawned: 0,
        };
        for _ in 0..2 {
            let (public, tunnel) = (free_port()?, free_port()?);
            let pid = house.start_gateway(public, tunnel)?;
            house.gateways.push((public, tunnel, pid));
        }
        house.start_haproxy()?;
        for m in &plan.mechanisms {
            house.start_origin(m)?;
        }
        procs::wait_ready_path(house.haproxy, HOST, "/bytes/1", Duration::from_secs(30))?;
        Ok(house)
    }

    fn start_gateway(&mut self, public: u16, tunnel: u16) -> Result<u32> {
        let log = self
            .dir
            .join(format!("gateway-{public}-{}.log", self.spawned));
        self.spawned += 1;
        let mut cmd = Command::new(self.bin.join("ptth-gateway"));
        cmd.args(["--listen", &format!("127.0.0.1:{public}")])
            .args(["--tunnel", &format!("127.0.0.1:{tunnel}")])
            .args(["--threads", "1", "--shutdown-grace", GRACE_SECS])
            .arg("--dev")
            .arg(&self.dev)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn().context("starting ptth-gateway")?;
        let stdout = child.stdout.take().context("gateway stdout")?;
        let pid = self.children.adopt("ptth-gateway", child);
        // The gateway prints `tunnel=` once every listener is bound.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("tunnel=") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).with_context(|| {
            format!(
                "the gateway on port {public} did not start; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        Ok(pid)
    }

    fn start_haproxy(&mut self) -> Result<()> {
        let servers: String = self
            .gateways
            .iter()
            .enumerate()
            .map(|(i, (public, _, _))| {
                format!("  server gw{i} 127.0.0.1:{public} check inter 300ms fall 1 rise 1\n")
            })
            .collect();
        let config = self.dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  maxconn 2000\n\
                 defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  \
                 timeout server 30s\n  retries 3\n  option redispatch\n\
                 frontend public\n  bind {}\n  default_backend gateways\n\
                 backend gateways\n  balance roundrobin\n{servers}",
                self.haproxy
            ),
        )?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("haproxy.log"))?);
        self.children.spawn_graceful("haproxy", &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(self.haproxy).is_err() {
            if Instant::now() > deadline {
                bail!("haproxy did not listen on {}", self.haproxy);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts an origin connected to every gateway and waits until each has its connection
    /// up (from the origin's log), so a roll never leaves a gap of its own making.
    fn start_origin(&mut self, mechanism: &str) -> Result<()> {
        let log = self.dir.join(format!("origin-{}.log", self.spawned));
        self.spawned += 1;
        let mut cmd = Command::new(self.bin.join("ptth-origin"));
        for (_, tunnel, _) in &self.gateways {
            cmd.args(["--gateway", &format!("https://localhost:{tunnel}")]);
        }
        let connections = if procs::is_h1(mechanism) { "8" } else { "1" };
        cmd.args(["--mechanism", mechanism, "--host", HOST, "--hello"])
            .args(["--connections", connections, "--shutdown-grace", GRACE_SECS])
            .arg("--ca")
            .arg(self.dev.join("ca.pem"))
            .arg("--token-file")
            .arg(self.dev.join("token"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let pid = self.children.spawn("ptth-origin", &mut cmd)?;
        let want = self.gateways.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("connection up").count() >= want {
                break;
            }
            if Instant::now() > deadline {
                bail!("origin {mechanism} did not come up on every gateway; its log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.origins.push((mechanism.to_string(), pid, log));
        Ok(())
    }

    fn event(&mut self, phase: Phase) -> Result<()> {
        match phase {
            Phase::OriginsRolled => {
                let (mechanism, pid, _) = self.origins.remove(0);
                self.start_origin(&mechanism)?;
                self.children.terminate(pid);
            }
            Phase::OriginsKilled => {
                let (mechanism, pid, _) = self.origins.remove(0);
                self.children.kill(pid);
                self.start_origin(&mechanism)?;
            }
            Phase::GatewayRolled => {
                let i = self.next_gateway % self.gateways.len();
                self.next_gateway += 1;
                let (public, tunnel, old) = self.gateways[i];
                let new = self.start_gateway(public, tunnel)?;
                self.gateways[i].2 = new;
                self.children.terminate(old);
            }
            Phase::GatewayKilled => {
                let i = self.next_gateway % self.gateways.len();
                self.next_gateway += 1;
                let (public, tunnel, old) = self.gateways[i];
                self.children.kill(old);
                let new = self.start_gateway(public, tunnel)?;
                self.gateways[i].2 = new;
            }
        }
        Ok(())
    }

    /// The `/bytes/N` pattern, read once before the chaos starts, long enough for every GET.
    fn reference_pattern(&self) -> Result<Vec<u8>> {
        let mut conn = Conn::open(self.haproxy)?;
        let answer = conn.exchange(&request_get(MAX_GET))?;
        if answer.status != 200 || answer.body.len() != MAX_GET {
            bail!(
                "GET /bytes/{MAX_GET} answered {} with {} bytes",
                answer.status,
                answer.body.len()
            );
        }
        Ok(answer.body)
    }
}

/// GETs ask for 1 000 to `MAX_GET` bytes, a length of their own.
const MAX_GET: usize = 4096;

fn request_get(len: usize) -> Vec<u8> {
    format!("GET /bytes/{len} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes()
}

fn request_post(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /echo-body HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Counts for one phase.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    resent: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn read(&self) -> (u64, u64, u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.wrong.load(Ordering::Relaxed),
            self.resent.load(Ordering::Relaxed),
        )
    }

    fn note(&self, what: String) {
        if let Ok(mut e) = self.errors.lock() {
            // The first few are enough to see what happened.
            if e.len() < 8 {
                e.push(what);
            }
        }
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// One client: a keep-alive connection, alternating GETs and POSTs until told to stop.
struct Client {
    id: usize,
    addr: SocketAddr,
    stats: Arc<Vec<Counts>>,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    pattern: Vec<u8>,
}

impl Client {
    fn run(self) {
        let mut conn: Option<Conn> = None;
        let mut seq: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            seq += 1;
            // The phase a request belongs to is the one it started in.
            let counts = &self.stats[self.phase.load(Ordering::Relaxed)];
            let (request, expect) = if seq % 2 == 0 {
                let len = 1000 + (self.id * 131 + seq as usize * 17) % (MAX_GET - 1000);
                (request_get(len), self.pattern[..len].to_vec())
            } else {
                let body = procs::pseudo_random(POST_BODY, (self.id as u64) << 32 | seq);
                (request_post(&body), body)
            };
            match self.exchange(&mut conn, &request, counts) {
                Ok(a) if a.status == 200 && a.body == expect => {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok(a) if a.status == 200 => {
                    counts.wrong.fetch_add(1, Ordering::Relaxed);
                    counts.note(format!(
                        "client {} request {seq}: 200 with a wrong body ({} bytes, {} expected)",
                        self.id,
                        a.body.len(),
                        expect.len()
                    ));
                }
                Ok(a) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    counts.note(format!(
                        "client {} request {seq}: {} {}",
                        self.id,
                        a.status,
                        String::from_utf8_lossy(&a.body[..a.body.len().min(200)]).trim_end()
                    ));
                }
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    counts.note(format!("client {} request {seq}: {e:#}", self.id));
                    conn = None;
                }
            }
        }
    }

    /// Sends one request; a reused connection that closed before any byte of the answer is
    /// replaced and the request sent once more.
    fn exchange(&self, conn: &mut Option<Conn>, request: &[u8], counts: &Counts) -> Result<Answer> {
        if let Some(c) = conn.as_mut() {
            match c.exchange(request) {
                Ok(a) => {
                    if a.close {
                        *conn = None;
                    }
                    return Ok(a);
                }
                Err(e) if c.silent => {
                    counts.resent.fetch_add(1, Ordering::Relaxed);
                    let _ = e;
                }
                Err(e) => {
                    *conn = None;
                    return Err(e);
                }
            }
        }
        let mut fresh = Conn::open(self.addr)?;
        let answer = fresh.exchange(request)?;
        *conn = (!answer.close).then_some(fresh);
        Ok(answer)
    }
}

/// A response.
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The server said `Connection: close`.
    close: bool,
}

/// An HTTP/1.1 client connection.
struct Conn {
    reader: BufReader<TcpStream>,
    /// The last exchange failed before any byte of the answer arrived.
    silent: bool,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Self> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        // Longer than the grace period, so a request waiting on a draining process is not
        // counted as lost by the client's own impatience.
        tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
        Ok(Conn {
            reader: BufReader::new(tcp),
            silent: false,
        })
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Answer> {
        self.silent = true;
        self.reader
            .get_mut()
            .write_all(request)
            .context("sending the request")?;
        let mut line = String::new();
        if self
            .reader
            .read_line(&mut line)
            .context("reading the status line")?
            == 0
        {
            bail!("the connection closed before the answer");
        }
        self.silent = false;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h).context("reading a header")? == 0 {
                bail!("the connection closed in the answer's header");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                bail!("bad header line {h:?}");
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>()?),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size).context("chunk size")?;
                let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {size:?}"))?;
                if size == 0 {
                    // Trailers, if any, then the empty line.
                    loop {
                        let mut t = String::new();
                        if self.reader.read_line(&mut t)? == 0 || t.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                self.reader
                    .read_exact(&mut body[start..])
                    .context("chunk data")?;
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf).context("chunk end")?;
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader
                .read_exact(&mut body)
                .context("reading the body")?;
        } else {
            self.reader.read_to_end(&mut body)?;
            close = true;
        }
        Ok(Answer {
            status,
            body,
            close,
        })
    }
}
