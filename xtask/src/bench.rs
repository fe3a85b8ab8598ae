//! `cargo xtask bench [--smoke]`: ptth against a direct connection, nginx and rathole, with
//! the same load generator (h2load) and the same application; writes `docs/benchmarks.md`.
//!
//! Rows: (a) client → app; (b) nginx → app; (c) gateway → `ptth-origin --upstream` → app per
//! mechanism; (d) gateway → the app embedded in an origin (library mode); (e) rathole →
//! app. The app is `crates/ptth-origin/examples/bench_app.rs` (`/1k`, `/1m`, `/bytes/N`).
//! Each row gets fresh processes, so peak RSS (VmHWM) is that row's; CPU time comes from
//! `/proc/PID/stat` deltas around each load run. Then the scale run: gateway RSS per idle
//! origin connection, and how long 1 000 origin connections take to come back after a
//! gateway restart. `--smoke` runs a seconds-long version that only proves the harness.

use crate::procs::{self, Children, Gateway, TempDir};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How much to run.
#[derive(Debug, Clone)]
struct Plan {
    smoke: bool,
    concurrency: Vec<usize>,
    bodies: Vec<&'static str>,
    seconds: u64,
    bulk_bytes: u64,
    scale: Vec<usize>,
    restart_connections: usize,
    /// `--connections` of the HTTP/1.1 mechanisms' origins.
    h1_connections: usize,
}

impl Plan {
    fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                smoke,
                concurrency: vec![16],
                bodies: vec!["1k"],
                seconds: 1,
                bulk_bytes: 16 << 20,
                scale: vec![50],
                restart_connections: 50,
                h1_connections: 16,
            }
        } else {
            Self {
                smoke,
                concurrency: vec![1, 16, 64, 256],
                bodies: vec!["1k", "1m"],
                seconds: 5,
                bulk_bytes: 1 << 30,
                scale: vec![1000, 10_000],
                restart_connections: 1000,
                h1_connections: 64,
            }
        }
    }
}

/// What sits between the load generator and the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Direct,
    Nginx,
    /// Proxy mode over this mechanism.
    Proxy(&'static str),
    /// Library mode over this mechanism.
    Library(&'static str),
    Rathole,
}

#[derive(Debug, Clone, Copy)]
struct RowSpec {
    id: &'static str,
    label: &'static str,
    path: Route,
    /// Worker threads of each ptth process (`--threads`); `None` is the default, one per CPU.
    threads: Option<usize>,
    /// Also load the row through the gateway's public HTTP/3 endpoint with `ptth-h3-client`.
    h3: bool,
}

impl RowSpec {
    const fn new(id: &'static str, label: &'static str, path: Route) -> Self {
        Self {
            id,
            label,
            path,
            threads: None,
            h3: false,
        }
    }

    const fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    const fn h3(mut self) -> Self {
        self.h3 = true;
        self
    }
}

const ROWS: &[RowSpec] = &[
    RowSpec::new("a", "direct", Route::Direct),
    RowSpec::new("b", "nginx", Route::Nginx),
    RowSpec::new("c", "ptth proxy rh2", Route::Proxy("rh2")).h3(),
    RowSpec::new("c", "ptth proxy upgrade-h2", Route::Proxy("upgrade-h2")),
    RowSpec::new("c", "ptth proxy connect-h2", Route::Proxy("connect-h2")),
    RowSpec::new("c", "ptth proxy rh1", Route::Proxy("rh1")),
    RowSpec::new("c", "ptth proxy rh3", Route::Proxy("rh3")).h3(),
    RowSpec::new("c", "ptth proxy rh2 --threads 1", Route::Proxy("rh2")).threads(1),
    RowSpec::new("d", "ptth library rh2", Route::Library("rh2")).h3(),
    RowSpec::new("d", "ptth library rh2 --threads 1", Route::Library("rh2")).threads(1),
    RowSpec::new("e", "rathole", Route::Rathole),
];

/// A process whose CPU time and peak RSS the row reports, on the public ("gateway") or the
/// application ("origin") side of the tunnel.
#[derive(Debug, Clone)]
struct Watched {
    side: Side,
    pid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Gateway,
    Origin,
}

/// A row, set up: where to send requests and which processes to watch.
#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    /// The h2c port when it differs from `addr` (nginx needs one port per protocol).
    h2c: Option<SocketAddr>,
    /// The gateway's public HTTP/3 endpoint (UDP) and the CA its certificate chains to.
    h3: Option<(SocketAddr, std::path::PathBuf)>,
    /// `ptth-h3-client`.
    h3_client: std::path::PathBuf,
    watched: Vec<Watched>,
    _children: Children,
}

/// One h2load run.
#[derive(Debug, Clone, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    failed: u64,
    cpu_gateway: f64,
    cpu_origin: f64,
}

/// A row's results.
#[derive(Debug, Default)]
struct RowResult {
    loads: BTreeMap<(String, String, usize), Load>,
    bulk_mb_s: Option<f64>,
    hwm_gateway_kib: Option<u64>,
    hwm_origin_kib: Option<u64>,
    /// What went wrong without spoiling the rest of the row (a failed bulk transfer).
    notes: Vec<String>,
    /// The sides with a watched process (the direct row has none).
    watched_sides: Vec<Side>,
    error: Option<String>,
}

/// A name the dev certificate lists (rustls, like OpenSSL, will not match its `*.localhost`).
const HOST: &str = "app.localhost";

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    if let Some(a) = args.iter().find(|a| *a != "--smoke") {
        bail!("unknown argument {a:?}; usage: cargo xtask bench [--smoke]");
    }
    let plan = Plan::new(smoke);
    procs::require_tool("h2load", "apt-get install nghttp2-client")?;
    procs::require_tool("curl", "apt-get install curl")?;
    let missing = ensure_baselines(smoke);
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
        wait_for_idle();
    }
    let bin = procs::target_dir(root).join("release");
    let app = bin.join("examples").join("bench_app");
    let tmp = TempDir::new("bench")?;
    let dev = tmp.0.join("dev");
    let load_before = loadavg();
    let machine = machine();
    eprintln!("{machine}; load average {load_before}");

    let mut results: Vec<(RowSpec, RowResult)> = Vec::new();
    for spec in ROWS {
        eprintln!("== ({}) {}", spec.id, spec.label);
        let mut result = RowResult::default();
        match start_row(spec, &plan, &bin, &app, &dev, &tmp.0) {
            Ok(Some(row)) => {
                if let Err(e) = measure_row(&row, &plan, &tmp.0, &mut result) {
                    result.error = Some(format!("{e:#}"));
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
    let scale = scale_run(&plan, &bin, &dev, &tmp.0);
    if let Err(e) = &scale {
        eprintln!("   scale run: {e:#}");
    }
    let load_after = loadavg();

    let doc = render(
        &plan,
        &machine,
        &load_before,
        &load_after,
        &results,
        &scale,
        started.elapsed(),
    );
    println!("{doc}");
    if smoke {
        eprintln!("(--smoke: docs/benchmarks.md not written)");
        let broken: Vec<String> = results
            .iter()
            .filter(|(s, r)| {
                // Only rathole, which --smoke does not build, may be missing: a smoke run
                // without its nginx baseline proves nothing about the comparison.
                r.error
                    .as_deref()
                    .is_some_and(|e| !e.starts_with("not installed") || s.path != Route::Rathole)
                    || (r.error.is_none() && r.loads.values().any(|l| l.requests == 0))
                    || matches!(s.path, Route::Proxy(_) | Route::Library(_))
                        && (r.error.is_some() || !r.notes.is_empty())
            })
            .map(|(s, r)| format!("{}: {:?} {:?}", s.label, r.error, r.notes))
            .collect();
        if !broken.is_empty() {
            bail!("bench harness broken: {broken:?}");
        }
        scale.context("scale run")?;
        eprintln!("xtask bench --smoke: the harness works");
    } else {
        std::fs::write(root.join("docs").join("benchmarks.md"), &doc)
            .context("writing docs/benchmarks.md")?;
        eprintln!("wrote docs/benchmarks.md");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Setting rows up.

/// Installs the baselines a user would otherwise pick when they are missing: nginx from
/// Debian's packages, rathole with `cargo install` (without `--locked` when the locked build
/// fails: rathole 0.5's lock file pins a `time` that no longer builds on current compilers).
/// `--smoke` installs nginx only, so CI does not compile rathole on every run. Returns, per
/// row label, why a baseline is still missing; the report shows it in the row.
fn ensure_baselines(smoke: bool) -> BTreeMap<&'static str, String> {
    let mut missing = BTreeMap::new();
    if procs::require_tool("nginx", "").is_err() {
        eprintln!("xtask bench: nginx is missing, installing Debian's package");
        let sudo = if procs::output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0") {
            vec![]
        } else {
            vec!["sudo"]
        };
        let apt = |args: &[&str]| {
            let mut argv = sudo.clone();
            argv.push("apt-get");
            argv.extend_from_slice(args);
            Command::new(argv[0])
                .args(&argv[1..])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !(apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "nginx"]))
            || procs::require_tool("nginx", "").is_err()
        {
            missing.insert(
                "nginx",
                "not installed: apt-get install nginx failed".to_string(),
            );
        }
    }
    if procs::require_tool("rathole", "").is_err() {
        if smoke {
            missing.insert(
                "rathole",
                "not installed (--smoke does not build it; the full run does)".to_string(),
            );
        } else {
            eprintln!("xtask bench: rathole is missing, running cargo install rathole");
            let install = |locked: bool| {
                let mut cmd = Command::new("cargo");
                cmd.args(["install", "rathole"]);
                if locked {
                    cmd.arg("--locked");
                }
                cmd.status().is_ok_and(|s| s.success())
            };
            if !(install(true) || install(false)) || procs::require_tool("rathole", "").is_err() {
                missing.insert(
                    "rathole",
                    "not installed: cargo install rathole failed with and without --locked"
                        .to_string(),
                );
            }
        }
    }
    missing
}

/// Starts the app (`bench_app serve`) and returns its address.
fn start_app(children: &mut Children, app: &Path) -> Result<SocketAddr> {
    let mut child = Command::new(app)
        .args(["serve", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bench_app (cargo build --release -p ptth-origin --example bench_app)")?;
    let stdout = child.stdout.take().context("bench_app stdout")?;
    children.adopt("bench_app", child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    line.trim()
        .strip_prefix("listen=")
        .context("bench_app did not print listen=")?
        .parse()
        .context("bench_app address")
}

fn start_row(
    spec: &RowSpec,
    plan: &Plan,
    bin: &Path,
    app: &Path,
    dev: &Path,
    tmp: &Path,
) -> Result<Option<Running>> {
    let path = spec.path;
    let mut children = Children::default();
    let mut watched = Vec::new();
    let mut h2c = None;
    let mut h3 = None;
    let addr = match path {
        Route::Direct => start_app(&mut children, app)?,
        Route::Nginx => {
            if procs::require_tool("nginx", "").is_err() {
                return Ok(None);
            }
            let upstream = start_app(&mut children, app)?;
            let (h1, h2) = (free_port()?, free_port()?);
            let prefix = tmp.join("nginx");
            std::fs::create_dir_all(prefix.join("logs"))?;
            let conf = prefix.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(upstream, h1, h2, &prefix))?;
            let pid = children.spawn_graceful(
                "nginx",
                Command::new("nginx")
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null()),
            )?;
            wait_port(h1)?;
            wait_port(h2)?;
            watched.push(Watched {
                side: Side::Gateway,
                pid,
            });
            for w in descendants(pid) {
                watched.push(Watched {
                    side: Side::Gateway,
                    pid: w,
                });
            }
            h2c = Some(SocketAddr::from(([127, 0, 0, 1], h2)));
            SocketAddr::from(([127, 0, 0, 1], h1))
        }
        Route::Rathole => {
            if procs::require_tool("rathole", "").is_err() {
                return Ok(None);
            }
            let upstream = start_app(&mut children, app)?;
            let (control, public) = (free_port()?, free_port()?);
            let server = tmp.join("rathole-server.toml");
            let client = tmp.join("rathole-client.toml");
            std::fs::write(
                &server,
                format!(
                    "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\n[server.services.bench]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{public}\"\n"
                ),
            )?;
            std::fs::write(
                &client,
                format!(
                    "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\n[client.services.bench]\ntoken = \"bench\"\nlocal_addr = \"{upstream}\"\n"
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
            wait_port(public)?;
            // The service is usable once the client registered with the server.
            wait_http(public)?;
            SocketAddr::from(([127, 0, 0, 1], public))
        }
        Route::Proxy(m) | Route::Library(m) => {
            let threads = spec.threads.map(|n| n.to_string());
            let gw_args: Vec<&str> = match &threads {
                Some(n) => vec!["--threads", n],
                None => vec![],
            };
            let gw = procs::start_gateway(&mut children, bin, dev, "127.0.0.1:0", &gw_args)?;
            if spec.h3 {
                h3 = Some((gw.listen_tls, dev.join("ca.pem")));
            }
            watched.push(Watched {
                side: Side::Gateway,
                pid: gw.pid,
            });
            let connections = if procs::is_h1(m) {
                plan.h1_connections
            } else {
                1
            };
            let pid = if let Route::Proxy(_) = path {
                let upstream = start_app(&mut children, app)?;
                let mut cmd =
                    procs::origin_command(bin, &gw, dev, m, HOST, procs::default_credential(m));
                cmd.args(["--upstream", &format!("http://{upstream}")])
                    .args(["--connections", &connections.to_string()]);
                if let Some(n) = &threads {
                    cmd.args(["--threads", n]);
                }
                children.spawn("ptth-origin", &mut cmd)?
            } else {
                children.spawn(
                    "bench_app origin",
                    Command::new(app)
                        .arg("origin")
                        .arg(format!("https://localhost:{}", gw.tunnel.port()))
                        .arg(dev)
                        .args([m, HOST, &connections.to_string()])
                        .env("RUST_LOG", "error")
                        // The app's own runtime (`#[tokio::main]`) reads this.
                        .envs(threads.iter().map(|n| ("TOKIO_WORKER_THREADS", n)))
                        .stdout(Stdio::null()),
                )?
            };
            watched.push(Watched {
                side: Side::Origin,
                pid,
            });
            procs::wait_ready_path(gw.listen, HOST, "/1k", Duration::from_secs(30))?;
            // Let every HTTP/1.1 slot connect before measuring.
            std::thread::sleep(Duration::from_millis(if procs::is_h1(m) {
                1500
            } else {
                200
            }));
            gw.listen
        }
    };
    Ok(Some(Running {
        addr,
        h2c,
        h3,
        h3_client: bin.join("ptth-h3-client"),
        watched,
        _children: children,
    }))
}

fn nginx_conf(upstream: SocketAddr, h1: u16, h2: u16, prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        "daemon off;\n\
         master_process on;\n\
         user root;\n\
         worker_processes auto;\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/logs/error.log error;\n\
         worker_rlimit_nofile 65536;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {p}/client_body;\n\
         \x20 proxy_temp_path {p}/proxy;\n\
         \x20 fastcgi_temp_path {p}/fastcgi;\n\
         \x20 uwsgi_temp_path {p}/uwsgi;\n\
         \x20 scgi_temp_path {p}/scgi;\n\
         \x20 keepalive_requests 10000000;\n\
         \x20 upstream app {{\n\
         \x20   server {upstream};\n\
         \x20   keepalive 256;\n\
         \x20   keepalive_requests 10000000;\n\
         \x20 }}\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{h1};\n\
         \x20   listen 127.0.0.1:{h2} http2;\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://app;\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n"
    )
}

/// An ephemeral port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port}")
}

fn wait_http(port: u16) -> Result<()> {
    procs::wait_ready_path(
        SocketAddr::from(([127, 0, 0, 1], port)),
        HOST,
        "/1k",
        Duration::from_secs(15),
    )
}

/// Child processes of `pid` (nginx workers).
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse::<u32>().ok())) == Some(pid) {
            out.push(p);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Measuring.

/// `/proc/PID/stat` fields after the command name (index 0 is the state, 1 the ppid).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User + system CPU seconds of `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let ticks = clock_ticks();
    stat_fields(pid)
        .and_then(|f| {
            let u: f64 = f.get(11)?.parse().ok()?;
            let s: f64 = f.get(12)?.parse().ok()?;
            Some((u + s) / ticks)
        })
        .unwrap_or(0.0)
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn side_cpu(watched: &[Watched], side: Side) -> f64 {
    watched
        .iter()
        .filter(|w| w.side == side)
        .map(|w| cpu_seconds(w.pid))
        .sum()
}

fn side_hwm(watched: &[Watched], side: Side) -> Option<u64> {
    let v: Vec<u64> = watched
        .iter()
        .filter(|w| w.side == side)
        .filter_map(|w| status_kib(w.pid, "VmHWM"))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

fn measure_row(row: &Running, plan: &Plan, tmp: &Path, result: &mut RowResult) -> Result<()> {
    // Warm up (connections, pools, allocator) outside the measurements.
    h2load(row, "h1", "1k", 16, 1, tmp)?;
    let protos: &[&str] = if row.h3.is_some() {
        &["h1", "h2", "h3"]
    } else {
        &["h1", "h2"]
    };
    for body in &plan.bodies {
        for &proto in protos {
            for &c in &plan.concurrency {
                let before = (
                    side_cpu(&row.watched, Side::Gateway),
                    side_cpu(&row.watched, Side::Origin),
                );
                let mut load = if proto == "h3" {
                    h3load(row, body, c, plan.seconds)?
                } else {
                    h2load(row, proto, body, c, plan.seconds, tmp)?
                };
                load.cpu_gateway = side_cpu(&row.watched, Side::Gateway) - before.0;
                load.cpu_origin = side_cpu(&row.watched, Side::Origin) - before.1;
                eprintln!(
                    "   {body} {proto} c={c:<3} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  failed {}",
                    load.rps, load.p50_ms, load.p99_ms, load.failed
                );
                result
                    .loads
                    .insert((body.to_string(), proto.to_string(), c), load);
            }
        }
    }
    // Bulk: one large body through the path.
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
    result.hwm_gateway_kib = side_hwm(&row.watched, Side::Gateway);
    result.hwm_origin_kib = side_hwm(&row.watched, Side::Origin);
    result.watched_sides = row.watched.iter().map(|w| w.side).collect();
    Ok(())
}

/// Concurrency `c` is the number of requests outstanding: HTTP/1.1 opens `c` connections;
/// HTTP/2 opens up to 4 and spreads `c` streams over them.
fn h2load(
    row: &Running,
    proto: &str,
    body: &str,
    c: usize,
    seconds: u64,
    tmp: &Path,
) -> Result<Load> {
    let addr = if proto == "h2" {
        row.h2c.unwrap_or(row.addr)
    } else {
        row.addr
    };
    let (clients, streams) = if proto == "h2" {
        let clients = c.min(4);
        (clients, c.div_ceil(clients))
    } else {
        (c, 1)
    };
    let log = tmp.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new("h2load");
    cmd.args(["-c", &clients.to_string(), "-m", &streams.to_string()])
        .args(["-D", &seconds.to_string(), "-T", "30", "-N", "30"])
        .args(["--connect-to", &format!("127.0.0.1:{}", addr.port())])
        .arg(format!("--log-file={}", log.display()));
    if proto == "h1" {
        cmd.arg("--h1");
    }
    let out = procs::output(cmd.arg(format!("http://{HOST}:{}/{body}", addr.port())))?;
    let mut load = Load {
        rps: out
            .lines()
            .find(|l| l.starts_with("finished in"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
            .unwrap_or(0.0),
        ..Load::default()
    };
    let count = |word: &str| -> u64 {
        out.lines()
            .find(|l| l.starts_with("requests:"))
            .and_then(|l| {
                let end = l.find(word)?;
                l[..end].split_whitespace().last()?.parse().ok()
            })
            .unwrap_or(0)
    };
    load.requests = count(" succeeded");
    load.failed = count(" failed") + count(" errored") + count(" timeout");
    let mut micros: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    micros.sort_unstable();
    let pct = |p: f64| -> f64 {
        if micros.is_empty() {
            return 0.0;
        }
        let i = ((micros.len() as f64 * p).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    load.p50_ms = pct(0.50);
    load.p99_ms = pct(0.99);
    Ok(load)
}

/// The HTTP/3 counterpart of [`h2load`]: `ptth-h3-client load` through the gateway's public
/// HTTP/3 endpoint, `c` requests outstanding over up to 4 QUIC connections, as for h2c.
fn h3load(row: &Running, body: &str, c: usize, seconds: u64) -> Result<Load> {
    let Some((addr, ca)) = &row.h3 else {
        bail!("this row has no public HTTP/3 endpoint");
    };
    let clients = c.min(4);
    let streams = c.div_ceil(clients);
    let out = procs::output(
        Command::new(&row.h3_client)
            .arg("load")
            .args(["-c", &clients.to_string(), "-m", &streams.to_string()])
            .args(["-D", &seconds.to_string(), "--warm-up", "1", "--json"])
            .arg("--cacert")
            .arg(ca)
            .args(["--connect-to", &addr.to_string()])
            .arg(format!("https://{HOST}/{body}")),
    )?;
    let field = |name: &str| -> f64 {
        let key = format!("\"{name}\":");
        out.find(&key)
            .map(|i| &out[i + key.len()..])
            .and_then(|rest| {
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                rest[..end].trim().parse().ok()
            })
            .unwrap_or(0.0)
    };
    Ok(Load {
        rps: field("rps"),
        p50_ms: field("p50_ms"),
        p99_ms: field("p99_ms"),
        requests: field("succeeded") as u64,
        failed: field("failed") as u64,
        ..Load::default()
    })
}

// ---------------------------------------------------------------------------------------
// The scale run.

#[derive(Debug, Default)]
struct Scale {
    baseline_kib: u64,
    /// (origin connections, gateway VmRSS KiB, seconds to register them all)
    points: Vec<(usize, u64, f64)>,
    /// Seconds from killing the gateway until all restart connections were registered again.
    restart_s: Option<f64>,
    restart_connections: usize,
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

/// Waits until the gateway's RSS stops moving (after the connections' first requests).
fn settled_rss(pid: u32) -> u64 {
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

fn scale_run(plan: &Plan, bin: &Path, dev: &Path, tmp: &Path) -> Result<Scale> {
    const PER_PROCESS: usize = 1000;
    let mut children = Children::default();
    let log = tmp.join("scale-gateway.log");
    let mut gw = scale_gateway(&mut children, bin, dev, "127.0.0.1:0", &log)?;
    let tunnel = gw.tunnel.to_string();
    std::thread::sleep(Duration::from_millis(300));
    let mut scale = Scale {
        baseline_kib: settled_rss(gw.pid),
        restart_connections: plan.restart_connections,
        ..Scale::default()
    };
    let mut connected = 0;
    let spawn_origins = |children: &mut Children, gw: &Gateway, n: usize| -> Result<()> {
        let mut left = n;
        while left > 0 {
            let k = left.min(PER_PROCESS);
            let mut cmd =
                procs::origin_command(bin, gw, dev, "rh2", HOST, procs::Credential::Bearer);
            cmd.args(["--hello", "--connections", &k.to_string()]);
            children.spawn("ptth-origin", &mut cmd)?;
            left -= k;
        }
        Ok(())
    };
    for &n in &plan.scale {
        let start = Instant::now();
        spawn_origins(&mut children, &gw, n - connected)?;
        wait_registered(&log, n, Duration::from_secs(300))?;
        let took = start.elapsed().as_secs_f64();
        connected = n;
        let rss = settled_rss(gw.pid);
        eprintln!("   {n} origin connections: gateway VmRSS {rss} KiB (registered in {took:.1} s)");
        scale.points.push((n, rss, took));
        if n == plan.restart_connections {
            // Restart: kill the gateway, start it again on the same tunnel port, time until
            // every connection is registered again.
            let killed = Instant::now();
            children.kill(gw.pid);
            let _ = std::fs::remove_file(&log);
            gw = scale_gateway(&mut children, bin, dev, &tunnel, &log)?;
            wait_registered(&log, n, Duration::from_secs(300))?;
            let s = killed.elapsed().as_secs_f64();
            eprintln!("   restart: {n} origin connections back in {s:.2} s");
            scale.restart_s = Some(s);
        }
    }
    Ok(scale)
}

// ---------------------------------------------------------------------------------------
// Reporting.

fn machine() -> String {
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
    let mem = status_like("/proc/meminfo", "MemTotal").map_or(String::new(), |k| {
        format!(", {:.0} GiB RAM", k as f64 / 1024.0 / 1024.0)
    });
    format!("{nproc} CPUs ({cpu}), Linux {kernel}{mem}")
}

fn status_like(file: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Waits (up to `PTTH_BENCH_IDLE_WAIT` seconds, default 900) for the 1-minute load average
/// to drop below 1.0, so other work on the machine does not skew the figures. The load is
/// recorded in the report either way.
fn wait_for_idle() {
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn tool_version(cmd: &str, arg: &str) -> String {
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

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 && x > 0.0 => format!("{:.2}", x / b),
        _ => "–".into(),
    }
}

fn label(spec: &RowSpec) -> String {
    format!("({}) {}", spec.id, spec.label)
}

fn render(
    plan: &Plan,
    machine: &str,
    load_before: &str,
    load_after: &str,
    results: &[(RowSpec, RowResult)],
    scale: &Result<Scale>,
    elapsed: Duration,
) -> String {
    let mut d = String::new();
    let _ = writeln!(
        d,
        "<!-- Generated by `cargo xtask bench{}`; do not edit by hand. -->\n\n# Benchmarks\n",
        if plan.smoke { " --smoke" } else { "" }
    );
    let _ = writeln!(
        d,
        "Generated {} in {:.0} s{}.\n\n\
         - Machine: {machine}\n\
         - Load average (1, 5, 15 min) before: {load_before}; after: {load_after}\n\
         - Tools: {}; {}; {}; {}\n",
        procs::today(),
        elapsed.as_secs_f64(),
        if plan.smoke {
            " (**smoke run: seconds-long, proves the harness only; numbers mean nothing**)"
        } else {
            ""
        },
        tool_version("h2load", "--version"),
        tool_version("nginx", "-v"),
        tool_version("rathole", "--version"),
        tool_version("curl", "--version")
            .split(" (")
            .next()
            .unwrap_or(""),
    );
    let _ = writeln!(
        d,
        "Everything runs on this one machine over loopback: the load generator, the path \
         under test and the application share its CPUs, so these figures compare paths with \
         each other, not with other machines.\n\n\
         ## Setup\n\n\
         - Application: `crates/ptth-origin/examples/bench_app.rs` (hyper, HTTP/1.1 + h2c; \
           `/1k`, `/1m`, `/bytes/N`), release build.\n\
         - (a) direct: h2load → `bench_app serve`.\n\
         - (b) nginx: h2load → nginx (`worker_processes auto`, upstream `keepalive 256`, \
           `proxy_http_version 1.1`, `keepalive_requests` raised, otherwise the Debian \
           defaults (proxy buffering on); HTTP/1.1 on one port and h2c on another) → `bench_app serve`.\n\
         - (c) ptth proxy mode: h2load → `ptth-gateway --dev` (cleartext listener) → origin \
           connection (TLS) → `ptth-origin --upstream http://APP` → `bench_app serve`; HTTP/2 \
           mechanisms with one origin connection, rh1 with `--connections {}`; rh3 is one \
           QUIC connection.\n\
         - (d) ptth library mode: h2load → `ptth-gateway` → `bench_app origin` (the same \
           service inside `ptth_origin::Origin::serve`, one rh2 connection).\n\
         - `--threads 1` rows: the same path with one runtime worker thread in the gateway \
           and `ptth-origin` (`--threads 1`; the library-mode app gets \
           `TOKIO_WORKER_THREADS=1`, which its `#[tokio::main]` runtime reads); the other ptth \
           rows use the default, one worker per CPU.\n\
         - HTTP/3 runs (rows marked in the HTTP/3 tables): `ptth-h3-client load -c min(C,4) \
           -m C/min(C,4) -D {s} --warm-up 1 --cacert DEV/ca.pem --connect-to \
           127.0.0.1:TLSPORT https://app.localhost/1k|1m` against the gateway's public QUIC \
           endpoint; percentiles from the client's own per-request times.\n\
         - (e) rathole: h2load → rathole server → rathole client (plain TCP transport, no \
           encryption, unlike ptth's TLS tunnel) → `bench_app serve`. The bench installs \
           nginx (Debian's package) and rathole (`cargo install rathole`, without `--locked` \
           when the locked build fails) when they are missing.\n\
         - Load: `h2load -D {s} -c C -m 1 --h1` (HTTP/1.1: C connections) and `h2load -D {s} \
           -c min(C,4) -m C/min(C,4)` (h2c), `--connect-to 127.0.0.1:PORT \
           http://app.localhost:PORT/1k|1m`, one h2load thread, after a 1 s warm-up; \
           p50/p99 from h2load's `--log-file` (per-request times).\n\
         - CPU: utime + stime deltas from `/proc/PID/stat` over each run of the 1 KiB body, \
           per 100 000 requests. Gateway side: ptth-gateway, nginx master + workers, \
           rathole server; origin side: ptth-origin (or the library-mode app), rathole \
           client. Peak RSS: `VmHWM` of the same processes at the end of the row (fresh \
           processes per row).\n\
         - Bulk: `curl --http1.1 -o /dev/null -w '%{{speed_download}}' \
           http://127.0.0.1:PORT/bytes/{}` through each path.\n",
        plan.h1_connections,
        plan.bulk_bytes,
        s = plan.seconds,
    );

    let get = |label: &str, key: &(String, String, usize)| -> Option<&Load> {
        results
            .iter()
            .find(|(s, _)| s.label == label)
            .and_then(|(_, r)| r.loads.get(key))
    };

    // Headline: 1 KiB at 64 (or the smoke concurrency).
    let head_c = if plan.concurrency.contains(&64) {
        64
    } else {
        plan.concurrency[0]
    };
    let _ = writeln!(
        d,
        "## Headline: 1 KiB responses, {head_c} concurrent\n\n\
         | path | h1 req/s | h1 p50 ms | h1 p99 ms | h2 req/s | h2 p50 ms | h2 p99 ms | h1 req/s vs (a) | vs (b) | h1 p99 vs (b) |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for (spec, r) in results {
        if let Some(e) = &r.error {
            let _ = writeln!(d, "| {} | {e} | | | | | | | | |", label(spec));
            continue;
        }
        let k1 = ("1k".to_string(), "h1".to_string(), head_c);
        let k2 = ("1k".to_string(), "h2".to_string(), head_c);
        let (Some(h1), Some(h2)) = (r.loads.get(&k1), r.loads.get(&k2)) else {
            continue;
        };
        let direct = get("direct", &k1).map(|l| l.rps);
        let nginx = get("nginx", &k1);
        let _ = writeln!(
            d,
            "| {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
            label(spec),
            h1.rps,
            h1.p50_ms,
            h1.p99_ms,
            h2.rps,
            h2.p50_ms,
            h2.p99_ms,
            ratio(h1.rps, direct),
            ratio(h1.rps, nginx.map(|l| l.rps)),
            ratio(h1.p99_ms, nginx.map(|l| l.p99_ms)),
        );
    }

    let _ = writeln!(d, "\n## All load runs\n");
    for body in &plan.bodies {
        for proto in ["h1", "h2", "h3"] {
            if proto == "h3" && !results.iter().any(|(s, _)| s.h3) {
                continue;
            }
            let _ = writeln!(
                d,
                "### {} body, {}\n\n\
                 | path | C | req/s | p50 ms | p99 ms | failed | vs (a) | vs (b) |\n\
                 |---|---|---|---|---|---|---|---|",
                if *body == "1k" { "1 KiB" } else { "1 MiB" },
                match proto {
                    "h1" => "HTTP/1.1",
                    "h2" => "HTTP/2 (h2c)",
                    _ => "HTTP/3 (public QUIC endpoint, `ptth-h3-client load`; no baseline serves HTTP/3, so the ratios are against the HTTP/2 runs of (a) and (b))",
                }
            );
            for (spec, r) in results {
                for &c in &plan.concurrency {
                    let key = (body.to_string(), proto.to_string(), c);
                    let Some(l) = r.loads.get(&key) else { continue };
                    let base = if proto == "h3" {
                        (body.to_string(), "h2".to_string(), c)
                    } else {
                        key.clone()
                    };
                    let _ = writeln!(
                        d,
                        "| {} | {c} | {:.0} | {:.2} | {:.2} | {} | {} | {} |",
                        label(spec),
                        l.rps,
                        l.p50_ms,
                        l.p99_ms,
                        l.failed,
                        ratio(l.rps, get("direct", &base).map(|l| l.rps)),
                        ratio(l.rps, get("nginx", &base).map(|l| l.rps)),
                    );
                }
            }
            d.push('\n');
        }
    }

    let _ = writeln!(
        d,
        "## Bulk, resources\n\n\
         | path | bulk MB/s | vs (a) | vs (b) | peak RSS gateway side MiB | peak RSS origin side MiB | CPU s / 100k req gateway side | origin side |\n\
         |---|---|---|---|---|---|---|---|"
    );
    let bulk_of = |label: &str| {
        results
            .iter()
            .find(|(s, _)| s.label == label)
            .and_then(|(_, r)| r.bulk_mb_s)
    };
    for (spec, r) in results {
        if r.error.is_some() {
            continue;
        }
        let (mut req, mut gw, mut or) = (0u64, 0.0, 0.0);
        for ((body, _, _), l) in &r.loads {
            if body == "1k" {
                req += l.requests;
                gw += l.cpu_gateway;
                or += l.cpu_origin;
            }
        }
        let per = |cpu: f64, side: Side| {
            if req == 0 || !r.watched_sides.contains(&side) {
                "–".to_string()
            } else {
                format!("{:.2}", cpu / req as f64 * 100_000.0)
            }
        };
        let mib = |k: Option<u64>| k.map_or("–".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        let bulk = r.bulk_mb_s.unwrap_or(0.0);
        let _ = writeln!(
            d,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            label(spec),
            r.bulk_mb_s
                .map_or("failed".to_string(), |b| format!("{b:.0}")),
            ratio(bulk, bulk_of("direct")),
            ratio(bulk, bulk_of("nginx")),
            mib(r.hwm_gateway_kib),
            mib(r.hwm_origin_kib),
            per(gw, Side::Gateway),
            per(or, Side::Origin),
        );
    }

    let notes: Vec<String> = results
        .iter()
        .flat_map(|(spec, r)| {
            r.notes
                .iter()
                .map(move |n| format!("- {}: {n}", label(spec)))
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(d, "\nNotes:\n\n{}", notes.join("\n"));
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|(spec, r)| {
            r.loads
                .iter()
                .filter(|(_, l)| l.failed > 0)
                .map(move |((body, proto, c), l)| {
                    format!(
                        "- {}: {} of the {body} {proto} C={c} requests failed",
                        label(spec),
                        l.failed
                    )
                })
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(d, "\nFailed requests:\n\n{}", failed.join("\n"));
    }

    aims(&mut d, results, scale, head_c);

    let _ = writeln!(d, "\n## Scale: idle origin connections (rh2)\n");
    match scale {
        Ok(s) => {
            let _ = writeln!(
                d,
                "Gateway `VmRSS` with no origin connection: {:.1} MiB. Origins are \
                 `ptth-origin --mechanism rh2 --hello --connections 1000` processes (fewer for \
                 the last one); a connection counts once the gateway logged it as registered \
                 (TLS, authorisation request, registry).\n\n\
                 | origin connections | gateway VmRSS MiB | per connection KiB | time to register all, s |\n\
                 |---|---|---|---|",
                s.baseline_kib as f64 / 1024.0
            );
            for (n, rss, took) in &s.points {
                let _ = writeln!(
                    d,
                    "| {n} | {:.1} | {:.1} | {took:.1} |",
                    *rss as f64 / 1024.0,
                    rss.saturating_sub(s.baseline_kib) as f64 / *n as f64
                );
            }
            if let Some(r) = s.restart_s {
                let _ = writeln!(
                    d,
                    "\nGateway restart (SIGKILL, then a new gateway on the same tunnel port): \
                     all {} origin connections registered again after **{r:.2} s** (origins \
                     reconnect with backoff from 100 ms, doubling, with jitter).",
                    s.restart_connections
                );
            }
        }
        Err(e) => {
            let _ = writeln!(d, "The scale run failed: {e:#}");
        }
    }
    d
}

/// The issue's aims, checked against this run: library mode at least nginx's req/s with a
/// p99 within 1.2× of nginx's, proxy mode at least rathole's req/s, bulk at least twice
/// nginx's, and an idle origin connection under 64 KiB at the gateway.
fn aims(d: &mut String, results: &[(RowSpec, RowResult)], scale: &Result<Scale>, c: usize) {
    let load = |label: &str, proto: &str| {
        results
            .iter()
            .find(|(s, _)| s.label == label)
            .and_then(|(_, r)| r.loads.get(&("1k".to_string(), proto.to_string(), c)))
    };
    let bulk = |label: &str| {
        results
            .iter()
            .find(|(s, _)| s.label == label)
            .and_then(|(_, r)| r.bulk_mb_s)
    };
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let _ = writeln!(d, "\n## Aims\n\n| aim | this run | |\n|---|---|---|");
    for proto in ["h1", "h2"] {
        for (spec, _) in results.iter().filter(|(s, _)| s.id == "d") {
            if let (Some(l), Some(n)) = (load(spec.label, proto), load("nginx", proto)) {
                let _ = writeln!(
                    d,
                    "| ({}) {} ≥ nginx req/s, 1 KiB, {c} concurrent, {proto} | {:.0} vs {:.0} ({:.2}×) | {} |",
                    spec.id,
                    spec.label,
                    l.rps,
                    n.rps,
                    l.rps / n.rps,
                    verdict(l.rps >= n.rps)
                );
                let _ = writeln!(
                    d,
                    "| ({}) {} p99 ≤ 1.2× nginx, {proto} | {:.2} ms vs {:.2} ms ({:.2}×) | {} |",
                    spec.id,
                    spec.label,
                    l.p99_ms,
                    n.p99_ms,
                    l.p99_ms / n.p99_ms,
                    verdict(l.p99_ms <= 1.2 * n.p99_ms)
                );
            }
        }
    }
    for (spec, _) in results.iter().filter(|(s, _)| s.id == "c") {
        if let (Some(l), Some(r)) = (load(spec.label, "h1"), load("rathole", "h1")) {
            let _ = writeln!(
                d,
                "| ({}) {} ≥ rathole req/s, 1 KiB, {c} concurrent, h1 | {:.0} vs {:.0} ({:.2}×) | {} |",
                spec.id,
                spec.label,
                l.rps,
                r.rps,
                l.rps / r.rps,
                verdict(l.rps >= r.rps)
            );
        }
    }
    for (spec, _) in results.iter().filter(|(s, _)| s.id == "c" || s.id == "d") {
        if let (Some(b), Some(n)) = (bulk(spec.label), bulk("nginx")) {
            let _ = writeln!(
                d,
                "| ({}) {} bulk ≥ 2× nginx | {b:.0} vs {n:.0} MB/s ({:.2}×) | {} |",
                spec.id,
                spec.label,
                b / n,
                verdict(b >= 2.0 * n)
            );
        }
    }
    if let Ok(s) = scale {
        for (n, rss, _) in &s.points {
            let per = rss.saturating_sub(s.baseline_kib) as f64 / *n as f64;
            let _ = writeln!(
                d,
                "| idle origin connection < 64 KiB at the gateway ({n}) | {per:.1} KiB | {} |",
                verdict(per < 64.0)
            );
        }
    }
}
