//! `cargo xtask hostile`: the edge battery. What an attacker does to both edges of a gateway
//! (the public listeners and the tunnel port), done for real against the release binaries,
//! each probe beside its honest twin so a dead gateway cannot pass it.
//!
//! | probe | the attack | what must happen |
//! |---|---|---|
//! | credential leak | a public client asks every ALPN-only origin for `/.well-known/ptth/authorize` | 404 from the gateway, no token, no `ptth-*` field |
//! | spoofed forwarding | `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Proto`, `Forwarded` from a stranger | the upstream sees the gateway's values only |
//! | tunnel slowloris | silent TCP, half a ClientHello, silent TLS on the tunnel port | closed by the setup deadline, no warning logged, honest origins still register |
//! | setup cap | more connections in setup from one address than allowed | the excess closed at once |
//! | public slow header | a request head trickled a byte at a time, and a silent connection | closed by the header deadline |
//! | scope flood | an origin claiming 100 origins | refused, the limit named; 3 are admitted |
//! | rotation | a token replaced in the grants file, then SIGHUP | its holder is drained; other origins keep serving |
//! | pin | `--gateway-pin` (wrong) with `--danger-accept-any-gateway` | never registers, the pin named; the right pin registers |

use crate::procs::{self, Children, Credential, Gateway, TempDir};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The gateway's setup deadline in this run (`--setup-timeout`), short so the run is.
const SETUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The per-address cap on connections in setup this run gives the gateway.
const SETUP_CAP_PER_IP: usize = 24;
/// How long a public connection may take to send a request head (`--public-header-timeout`
/// in this run; 30 s by default).
const PUBLIC_HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// The result of one probe.
struct Row {
    probe: &'static str,
    outcome: Result<String>,
}

/// Everything the probes share.
struct Env {
    bin: PathBuf,
    dev: PathBuf,
    dir: PathBuf,
    gw: Gateway,
    gateway_log: PathBuf,
    config: PathBuf,
    token: String,
}

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    if let Some(a) = args.first() {
        bail!("unknown argument {a:?}; usage: cargo xtask hostile");
    }
    procs::require_tool("curl", "apt-get install curl")?;
    procs::require_tool("openssl", "apt-get install openssl")?;
    crate::run(
        root,
        "cargo",
        &["build", "--release", "--workspace", "--bins"],
    )?;
    let started = Instant::now();
    let bin = procs::target_dir(root).join("release");
    let tmp = TempDir::new("hostile")?;
    let dev = tmp.0.join("dev");
    let mut children = Children::default();

    let config = tmp.0.join("gateway.toml");
    std::fs::write(&config, rotation_grant("rot-one"))?;
    let gateway_log = tmp.0.join("gateway.log");
    let gw = procs::start_gateway_logged(
        &mut children,
        &bin,
        &dev,
        "127.0.0.1:0",
        &[
            "--config",
            &config.to_string_lossy(),
            "--setup-timeout",
            &SETUP_TIMEOUT.as_secs().to_string(),
            "--max-pending-setups-per-ip",
            &SETUP_CAP_PER_IP.to_string(),
            "--public-header-timeout",
            &PUBLIC_HEADER_DEADLINE.as_secs().to_string(),
        ],
        &gateway_log,
    )?;
    let token = std::fs::read_to_string(dev.join("token"))?
        .trim()
        .to_string();
    let env = Env {
        bin,
        dev,
        dir: tmp.0.clone(),
        gw,
        gateway_log,
        config,
        token,
    };

    // The public slow-header probe waits for the gateway's header deadline: run it beside
    // the others.
    let slow_header = {
        let listen = env.gw.listen;
        std::thread::spawn(move || public_slow_header(listen))
    };

    // Origins every probe can lean on: the ALPN-only mechanisms (the credential-leak probe;
    // named `<mechanism>.localhost`, which the dev certificate names for curl's sake),
    // an origin in proxy mode in front of a header-echoing upstream, and the origin whose
    // token the rotation probe replaces.
    let echo = EchoUpstream::start()?;
    for m in ["rh1", "rh2", "rh3", "h2-reverse", "h3-reverse"] {
        let host = format!("{m}.localhost");
        let mut cmd = origin(&env, m, &host, procs::default_credential(m));
        cmd.arg("--hello");
        children.spawn(&host, &mut cmd)?;
    }
    let mut cmd = origin(&env, "rh2", "fwd.localhost", Credential::Bearer);
    cmd.args(["--upstream", &format!("http://{}", echo.addr)]);
    children.spawn("fwd.localhost", &mut cmd)?;
    let mut cmd = rot_origin(&env, "rot-one");
    children.spawn("rot.localhost", &mut cmd)?;
    for host in [
        "rh1.localhost",
        "rh2.localhost",
        "rh3.localhost",
        "h2-reverse.localhost",
        "h3-reverse.localhost",
        "fwd.localhost",
        "rot.localhost",
    ] {
        procs::wait_ready(env.gw.listen, host, Duration::from_secs(30))
            .with_context(|| format!("exited: {:?}", children.exited()))?;
    }

    let mut rows = vec![
        Row {
            probe: "credential leak",
            outcome: credential_leak(&env),
        },
        Row {
            probe: "spoofed forwarding headers",
            outcome: spoofed_forwarding(&env, &echo),
        },
        Row {
            probe: "tunnel slowloris",
            outcome: tunnel_slowloris(&env, &mut children),
        },
        Row {
            probe: "setup cap per address",
            outcome: setup_cap(&env),
        },
        Row {
            probe: "scope flood",
            outcome: scope_flood(&env, &mut children),
        },
        Row {
            probe: "rotation",
            outcome: rotation(&env, &mut children),
        },
        Row {
            probe: "gateway pin",
            outcome: gateway_pin(&env, &mut children),
        },
    ];
    rows.push(Row {
        probe: "public slow header",
        outcome: slow_header
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the probe panicked"))),
    });

    let mut table = String::from("| probe | result |\n|---|---|\n");
    let mut failed = 0;
    for row in &rows {
        let text = match &row.outcome {
            Ok(detail) => format!("ok: {detail}"),
            Err(e) => {
                failed += 1;
                format!("FAILED: {e:#}")
            }
        };
        let _ = writeln!(table, "| {} | {} |", row.probe, text.replace('\n', " "));
    }
    println!(
        "\nEdge battery ({} probes, {:.0} s):\n\n{table}",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        let log = std::fs::read_to_string(&env.gateway_log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("gateway log (last lines):");
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        bail!("{failed} of {} edge probes failed", rows.len());
    }
    Ok(())
}

/// The grants file of this run: one token grant the rotation probe rewrites.
fn rotation_grant(token: &str) -> String {
    format!(
        "[[grant]]\nname = \"rot\"\ntoken = \"{token}\"\norigins = [\"https://rot.localhost\"]\n"
    )
}

fn origin(env: &Env, mechanism: &str, host: &str, credential: Credential) -> Command {
    procs::origin_command(&env.bin, &env.gw, &env.dev, mechanism, host, credential)
}

/// The origin of the rotation probe: `rot.localhost` with `token`, its log in the run's
/// directory.
fn rot_origin(env: &Env, token: &str) -> Command {
    let mut cmd = Command::new(env.bin.join("ptth-origin"));
    cmd.args([
        "--gateway",
        &format!("https://localhost:{}", env.gw.tunnel.port()),
    ])
    .args(["--mechanism", "rh2", "--host", "rot.localhost", "--hello"])
    .arg("--ca")
    .arg(env.dev.join("ca.pem"))
    .args(["--token", token])
    .env("RUST_LOG", "error")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// `GET path` with `Host: host` over HTTP/1.1; the whole answer as text.
fn raw_get(addr: SocketAddr, host: &str, path: &str, extra: &str) -> Result<String> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A public client asks for the authorisation resource on every ALPN-only mechanism, over
/// HTTP/1.1, HTTP/2 (TLS) and HTTP/3: the gateway answers itself and nothing secret leaks.
fn credential_leak(env: &Env) -> Result<String> {
    let paths = [
        "/.well-known/ptth/authorize",
        "/.well-known/%70tth/authorize",
        "/.well-known/ptth/authorize?x=1",
        "/.well-known/ptth/authorize/",
        "/.well-known/ptth/",
    ];
    let mut asked = 0;
    for m in ["rh1", "rh2", "rh3", "h2-reverse", "h3-reverse"] {
        let host = format!("{m}.localhost");
        // The honest twin: the same host serves its pages.
        let page = raw_get(env.gw.listen, &host, "/", "")?;
        if status_of(&page) != 200 {
            bail!("{host} does not serve / (status {})", status_of(&page));
        }
        for path in paths {
            let answer = raw_get(env.gw.listen, &host, path, "")?;
            check_no_secret(env, &answer, &format!("HTTP/1.1 {host}{path}"))?;
            if status_of(&answer) != 404 || !answer.contains("reserved") {
                bail!("HTTP/1.1 {host}{path}: expected the gateway's 404 naming the reserved path, got {:?}", first_line(&answer));
            }
            asked += 1;
        }
        let (port, url) = (
            env.gw.listen_tls.port(),
            format!(
                "https://{host}:{}/.well-known/ptth/authorize",
                env.gw.listen_tls.port()
            ),
        );
        let out = procs::output(
            Command::new("curl")
                .args(["-sS", "-i", "--http2", "--max-time", "20"])
                .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
                .arg("--cacert")
                .arg(env.dev.join("ca.pem"))
                .arg(&url),
        )?;
        check_no_secret(env, &out, &format!("HTTP/2 {url}"))?;
        if !out.starts_with("HTTP/2 404") {
            bail!("HTTP/2 {url}: expected 404, got {:?}", first_line(&out));
        }
        let out = procs::output(
            Command::new(env.bin.join("ptth-h3-client"))
                .args(["get", &url, "--max-time", "20", "-w"])
                .arg("--cacert")
                .arg(env.dev.join("ca.pem"))
                .args(["--connect-to", &format!("127.0.0.1:{port}")]),
        )?;
        check_no_secret(env, &out, &format!("HTTP/3 {url}"))?;
        if !out.trim_end().ends_with("404 3") {
            bail!("HTTP/3 {url}: expected 404, got {:?}", out.lines().last());
        }
        asked += 2;
    }
    Ok(format!(
        "{asked} requests for the authorisation resource over HTTP/1.1, HTTP/2 and HTTP/3 to rh1, rh2, rh3, h2-reverse and h3-reverse origins: 404 from the gateway, no token, no ptth-* field; each origin serves /"
    ))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

fn check_no_secret(env: &Env, answer: &str, what: &str) -> Result<()> {
    if answer.contains(&env.token) {
        bail!("{what}: the answer carries the origin's token");
    }
    let head = answer.split("\r\n\r\n").next().unwrap_or(answer);
    if let Some(line) = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("ptth-"))
    {
        bail!("{what}: the answer carries a gateway-only field: {line:?}");
    }
    Ok(())
}

/// A stranger sends forwarding fields of its own choosing: the upstream must see only what
/// the gateway observed.
fn spoofed_forwarding(env: &Env, echo: &EchoUpstream) -> Result<String> {
    let answer = raw_get(
        env.gw.listen,
        "fwd.localhost",
        "/who",
        "X-Forwarded-For: 10.9.9.9\r\nX-Real-IP: 10.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=10.9.9.9;proto=https\r\n",
    )?;
    if status_of(&answer) != 200 {
        bail!("the proxied request failed: {:?}", first_line(&answer));
    }
    let head = echo
        .last_head()
        .context("the upstream saw no request")?
        .to_ascii_lowercase();
    for bad in ["10.9.9.9", "evil.example"] {
        if head.contains(bad) {
            bail!("the upstream saw the client's {bad:?}: {head:?}");
        }
    }
    for want in [
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-real-ip: 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
        "x-forwarded-host: fwd.localhost",
        "forwarded: for=127.0.0.1;proto=http",
    ] {
        if !head.contains(want) {
            bail!("the upstream did not see {want:?}: {head:?}");
        }
    }
    Ok("X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, X-Forwarded-Host and Forwarded from the client replaced by the gateway's own values at the upstream".into())
}

/// A socket held open by a peer that never finishes its setup.
struct Silent {
    tcp: TcpStream,
    opened: Instant,
}

impl Silent {
    /// Waits (up to `limit` from now) for the gateway to close the connection; returns how
    /// long after opening it closed, or `None` if it is still open.
    fn closed_within(&mut self, limit: Duration) -> Option<Duration> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self.tcp.set_read_timeout(Some(left));
            match self.tcp.read(&mut buf) {
                // An alert or a bare close: either way the gateway gave up on us.
                Ok(0) | Err(_) if Instant::now() < deadline => {
                    return Some(self.opened.elapsed());
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}

/// Half a TLS record header and nothing more: a peer that starts a ClientHello and stalls.
const PARTIAL_CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02];

/// Silent and stalled peers on the tunnel port are closed by the setup deadline, logged at
/// debug; an honest origin registers while they hold their sockets.
fn tunnel_slowloris(env: &Env, children: &mut Children) -> Result<String> {
    let log_before = log_len(env);
    let mut silent = Vec::new();
    for i in 0..16 {
        let mut tcp = TcpStream::connect(env.gw.tunnel)?;
        if i % 2 == 1 {
            tcp.write_all(PARTIAL_CLIENT_HELLO)?;
        }
        silent.push(Silent {
            tcp,
            opened: Instant::now(),
        });
    }
    // Complete TLS handshakes that never say anything after it: openssl s_client with
    // stdin held open, ALPN http/1.1 (a setup server) and rh2 (reversed at once).
    let mut tls_pids = Vec::new();
    for alpn in ["http/1.1", "rh2", "http/1.1", "rh2"] {
        let pid = children.spawn(
            &format!("openssl s_client {alpn}"),
            Command::new("openssl")
                .args(["s_client", "-quiet", "-connect"])
                .arg(env.gw.tunnel.to_string())
                .args(["-alpn", alpn, "-servername", "localhost"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        tls_pids.push(pid);
    }
    let flood_started = Instant::now();
    // The honest twin: a new origin registers while the flood holds its sockets.
    let mut cmd = origin(env, "rh2", "late.localhost", Credential::Bearer);
    cmd.arg("--hello");
    children.spawn("late.localhost", &mut cmd)?;
    procs::wait_ready(env.gw.listen, "late.localhost", Duration::from_secs(20))
        .context("an honest origin could not register during the flood")?;
    let limit = SETUP_TIMEOUT + Duration::from_secs(4);
    let mut slowest = Duration::ZERO;
    for (i, s) in silent.iter_mut().enumerate() {
        match s.closed_within(limit.saturating_sub(s.opened.elapsed())) {
            Some(after) => slowest = slowest.max(after),
            None => bail!(
                "silent tunnel connection {i} still open {:.1} s after it was opened (setup deadline {} s)",
                s.opened.elapsed().as_secs_f64(),
                SETUP_TIMEOUT.as_secs()
            ),
        }
    }
    // openssl exits when the gateway closes its connection.
    let deadline = flood_started + limit;
    for pid in tls_pids {
        loop {
            if exited(pid) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "a silent TLS connection (openssl s_client) was still open after {:.1} s",
                    flood_started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let log = log_since(env, log_before);
    if let Some(line) = log.lines().find(|l| l.contains("WARN")) {
        bail!("the gateway warned about a silent peer: {line:?}");
    }
    Ok(format!(
        "8 silent TCP, 8 half-ClientHello and 4 silent TLS (ALPN http/1.1, rh2) connections closed by the {} s setup deadline (slowest {:.1} s), nothing logged at warn; an origin registered during the flood",
        SETUP_TIMEOUT.as_secs(),
        slowest.as_secs_f64()
    ))
}

/// Whether the child `pid` has exited (a zombie not yet reaped counts).
fn exited(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            == Some("Z")
}

/// One address opens more connections in setup than the per-address cap: the excess is
/// closed at once, the rest only by the deadline.
fn setup_cap(env: &Env) -> Result<String> {
    let extra = 8;
    let mut conns = Vec::new();
    for _ in 0..SETUP_CAP_PER_IP + extra {
        conns.push(Silent {
            tcp: TcpStream::connect(env.gw.tunnel)?,
            opened: Instant::now(),
        });
    }
    let opened = Instant::now();
    // Well inside the setup deadline: only the excess may be closed by now.
    let mut closed_at_once = 0;
    for c in conns.iter_mut() {
        let left = Duration::from_millis(700).saturating_sub(opened.elapsed());
        if c.closed_within(left.max(Duration::from_millis(1)))
            .is_some()
        {
            closed_at_once += 1;
        }
    }
    if closed_at_once < extra || closed_at_once > extra + 2 {
        bail!(
            "{} connections from one address with a cap of {SETUP_CAP_PER_IP}: {closed_at_once} were closed at once, expected {extra}",
            SETUP_CAP_PER_IP + extra
        );
    }
    Ok(format!(
        "{} connections from one address, cap {SETUP_CAP_PER_IP}: {closed_at_once} closed at once, the rest held until the deadline",
        SETUP_CAP_PER_IP + extra
    ))
}

/// A request head trickled a byte a second, and a connection that sends nothing, on the
/// public cleartext listener: both are closed by the header deadline.
fn public_slow_header(listen: SocketAddr) -> Result<String> {
    let started = Instant::now();
    let limit = PUBLIC_HEADER_DEADLINE + Duration::from_secs(5);
    let mut trickle = TcpStream::connect(listen)?;
    let mut silent = Silent {
        tcp: TcpStream::connect(listen)?,
        opened: Instant::now(),
    };
    trickle.write_all(b"GET / HTTP/1.1\r\nHost: slow.localhost\r\n")?;
    let mut closed = None;
    while started.elapsed() < limit {
        std::thread::sleep(Duration::from_secs(1));
        if trickle.write_all(b"X").is_err() {
            closed = Some(started.elapsed());
            break;
        }
    }
    let Some(trickle_closed) = closed else {
        bail!(
            "a request head trickled a byte a second was still accepted after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    };
    let silent_closed = silent
        .closed_within(limit.saturating_sub(silent.opened.elapsed()))
        .context("a public connection that never sent a byte was still open")?;
    Ok(format!(
        "trickled head cut off after {:.0} s, silent connection closed after {:.0} s",
        trickle_closed.as_secs_f64(),
        silent_closed.as_secs_f64()
    ))
}

/// An origin claiming 100 origins is refused with the limit named; one claiming 3 is not.
fn scope_flood(env: &Env, children: &mut Children) -> Result<String> {
    let log_before = log_len(env);
    let mut cmd = origin(env, "rh2", "flood0.localhost", Credential::Bearer);
    for i in 1..100 {
        cmd.args(["--host", &format!("flood{i}.localhost")]);
    }
    cmd.arg("--hello");
    let flood = children.spawn("flood origin", &mut cmd)?;
    let mut cmd = origin(env, "rh2", "few0.localhost", Credential::Bearer);
    cmd.args(["--host", "few1.localhost", "--host", "few2.localhost"]);
    cmd.arg("--hello");
    children.spawn("few origin", &mut cmd)?;
    procs::wait_ready(env.gw.listen, "few2.localhost", Duration::from_secs(20))
        .context("an origin claiming 3 origins was not admitted")?;
    let reason = wait_for_log(env, log_before, Duration::from_secs(15), |l| {
        l.contains("at most") && l.contains("origins")
    })
    .context("the gateway never logged the origin-count limit")?;
    let status = procs::get_status(env.gw.listen, "flood0.localhost", "/")?;
    children.kill(flood);
    if status != 503 {
        bail!("the flooding origin's first host answered {status}, expected 503");
    }
    Ok(format!(
        "100 claimed origins refused ({}), 3 admitted",
        reason
            .split("at most")
            .nth(1)
            .map_or("", str::trim)
            .chars()
            .take(80)
            .collect::<String>()
    ))
}

/// The grants file replaces the token an origin is connected with; SIGHUP drains it, while
/// origins with unchanged credentials keep serving and the new token registers.
fn rotation(env: &Env, children: &mut Children) -> Result<String> {
    std::fs::write(&env.config, rotation_grant("rot-two"))?;
    let log_before = log_len(env);
    procs::output(Command::new("kill").args(["-HUP", &env.gw.pid.to_string()]))?;
    let drained = wait_for_log(env, log_before, Duration::from_secs(10), |l| {
        l.contains("drained on reload") && l.contains("credential no longer accepted")
    })
    .context("SIGHUP after a rotation drained nothing")?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = procs::get_status(env.gw.listen, "rot.localhost", "/")?;
        if s == 503 {
            break;
        }
        if Instant::now() > deadline {
            bail!("rot.localhost still answers {s} after the rotation");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The twin: an origin whose credential did not change still serves.
    let s = procs::get_status(env.gw.listen, "rh2.localhost", "/")?;
    if s != 200 {
        bail!("an origin with an unchanged token answers {s} after the reload");
    }
    let mut cmd = rot_origin(env, "rot-two");
    children.spawn("rot.localhost (rot-two)", &mut cmd)?;
    procs::wait_ready(env.gw.listen, "rot.localhost", Duration::from_secs(20))
        .context("the new token did not register")?;
    let _ = drained;
    Ok("the holder of the replaced token was drained (503), an unchanged origin kept serving, the new token registered".into())
}

/// `--gateway-pin` holds even with `--danger-accept-any-gateway`.
fn gateway_pin(env: &Env, children: &mut Children) -> Result<String> {
    let right = spki_sha256(&env.dev.join("gateway.pem"))?;
    let wrong = "00".repeat(32);
    let wrong_log = env.dir.join("pin-wrong.log");
    let mut cmd = origin(env, "rh2", "pin-wrong.localhost", Credential::Bearer);
    cmd.args([
        "--hello",
        "--danger-accept-any-gateway",
        "--gateway-pin",
        &wrong,
    ])
    .env("RUST_LOG", "info")
    .stderr(std::fs::File::create(&wrong_log)?);
    let wrong_pid = children.spawn("pin-wrong", &mut cmd)?;
    let mut cmd = origin(env, "rh2", "pin-right.localhost", Credential::Bearer);
    cmd.args([
        "--hello",
        "--danger-accept-any-gateway",
        "--gateway-pin",
        &right,
    ]);
    children.spawn("pin-right", &mut cmd)?;
    procs::wait_ready(
        env.gw.listen,
        "pin-right.localhost",
        Duration::from_secs(20),
    )
    .context("an origin with the right pin did not register")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = std::fs::read_to_string(&wrong_log).unwrap_or_default();
        if log.to_ascii_lowercase().contains("pin") {
            break;
        }
        let exited = children.exited();
        if exited.iter().any(|e| e.starts_with("pin-wrong")) {
            // Refusing the combination at start is the other allowed answer.
            if log.contains("--gateway-pin") {
                break;
            }
            bail!("the origin with a wrong pin exited without naming the pin: {log:?}");
        }
        if Instant::now() > deadline {
            bail!("the origin with a wrong pin never said why it cannot connect");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let s = procs::get_status(env.gw.listen, "pin-wrong.localhost", "/")?;
    children.kill(wrong_pid);
    if s != 503 {
        bail!("the origin with a wrong pin serves (status {s})");
    }
    Ok("a wrong pin with --danger-accept-any-gateway never registers and is named in the origin's log; the right pin registers".into())
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo, hex, with openssl.
fn spki_sha256(cert: &Path) -> Result<String> {
    let out = procs::output(Command::new("sh").arg("-c").arg(format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
        cert.display()
    )))?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

fn log_len(env: &Env) -> usize {
    std::fs::metadata(&env.gateway_log)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

fn log_since(env: &Env, from: usize) -> String {
    let log = std::fs::read(&env.gateway_log).unwrap_or_default();
    String::from_utf8_lossy(log.get(from..).unwrap_or_default()).into_owned()
}

/// Waits for a gateway log line written after `from` that satisfies `want`.
fn wait_for_log(
    env: &Env,
    from: usize,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(line) = log_since(env, from).lines().find(|l| want(l)) {
            return Ok(line.to_string());
        }
        if Instant::now() > deadline {
            bail!("no such line in the gateway log after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An HTTP/1.1 upstream that answers every request with `200 ok` and remembers the last
/// request head it received.
struct EchoUpstream {
    addr: SocketAddr,
    last: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl EchoUpstream {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let last = std::sync::Arc::new(std::sync::Mutex::new(None));
        let seen = last.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let Ok(mut out) = tcp.try_clone() else { return };
                    let mut r = BufReader::new(tcp);
                    loop {
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            match r.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            head.push_str(&line);
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if let Ok(mut s) = seen.lock() {
                            *s = Some(head);
                        }
                        if out
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, last })
    }

    fn last_head(&self) -> Option<String> {
        self.last.lock().ok().and_then(|s| s.clone())
    }
}
