//! Processes shared by `interop` and `bench`: where the binaries are, a gateway with dev
//! credentials, origins, children that die with the task, and small HTTP probes.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Every TCP mechanism `ptth-origin` can use.
pub const MECHANISMS: &[&str] = &[
    "rh1",
    "rh2",
    "upgrade-h1",
    "upgrade-h2",
    "connect-h2",
    "h2-reverse",
    "ptth10",
];

/// Every QUIC mechanism `ptth-origin` can use.
pub const QUIC_MECHANISMS: &[&str] = &["rh3", "h3-reverse", "options-h3", "connect-h3"];

/// Whether a mechanism carries HTTP/1.1 (one request per connection at a time, so the origin
/// needs `--connections` for any concurrency).
pub fn is_h1(mechanism: &str) -> bool {
    matches!(mechanism, "rh1" | "upgrade-h1" | "ptth10")
}

/// How many workers a ptth process started with `threads` (`--threads`, `None` for the
/// default) runs: the default is one per CPU, as `ptth-gateway` and `ptth-origin` count them.
pub fn workers(threads: Option<usize>) -> usize {
    threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (cargo builds there), else
/// `<root>/target`.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        _ => root.join("target"),
    }
}

/// Checks that an external tool is on `PATH`, with a hint on how to get it.
pub fn require_tool(tool: &str, hint: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        bail!("{tool} is not installed ({hint})");
    }
    Ok(())
}

/// Child processes, killed (and reaped) when dropped, however the task ends. Those spawned
/// with [`Children::spawn_graceful`] get SIGTERM first, so a master process (nginx) can stop
/// its own workers instead of orphaning them.
#[derive(Debug, Default)]
pub struct Children(Vec<(String, Child)>, Vec<u32>);

impl Children {
    /// Spawns `cmd`, remembers it under `name`, and returns its pid.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<u32> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.0.push((name.to_string(), child));
        Ok(pid)
    }

    /// Like [`Children::spawn`], but the child is asked to stop with SIGTERM before it is
    /// killed.
    pub fn spawn_graceful(&mut self, name: &str, cmd: &mut Command) -> Result<u32> {
        let pid = self.spawn(name, cmd)?;
        self.1.push(pid);
        Ok(pid)
    }

    /// Adopts an already spawned child.
    pub fn adopt(&mut self, name: &str, child: Child) -> u32 {
        let pid = child.id();
        self.0.push((name.to_string(), child));
        pid
    }

    /// Kills and reaps the child with `pid`, if it is one of ours.
    pub fn kill(&mut self, pid: u32) {
        if let Some(i) = self.0.iter().position(|(_, c)| c.id() == pid) {
            let (_, mut c) = self.0.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks the child with `pid` to stop with SIGTERM, waits up to five seconds for it to
    /// exit, then kills it; reaped either way. A QUIC origin killed outright leaves the
    /// gateway with a registered connection until its idle timeout; one told to stop closes
    /// it.
    pub fn terminate(&mut self, pid: u32) {
        if let Some(i) = self.0.iter().position(|(_, c)| c.id() == pid) {
            let (_, mut c) = self.0.remove(i);
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The names of children that have already exited, with their status.
    pub fn exited(&mut self) -> Vec<String> {
        self.0
            .iter_mut()
            .filter_map(|(name, c)| match c.try_wait() {
                Ok(Some(status)) => Some(format!("{name} ({status})")),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for pid in &self.1 {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, c) in self.0.iter_mut().filter(|(_, c)| self.1.contains(&c.id())) {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for (_, c) in &mut self.0 {
            let _ = c.kill();
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `ptth-xtask-<name>-<pid>`.
    pub fn new(name: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(format!("ptth-xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running gateway's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Gateway {
    /// Public cleartext listener (HTTP/1.1 and h2c).
    pub listen: SocketAddr,
    /// Public TLS listener.
    pub listen_tls: SocketAddr,
    /// Tunnel listener for origins.
    pub tunnel: SocketAddr,
    /// The process id.
    pub pid: u32,
}

/// Starts `ptth-gateway --dev DIR` on the given addresses (`127.0.0.1:0` for ephemeral
/// ports) and waits for it to print them.
pub fn start_gateway(
    children: &mut Children,
    bin: &Path,
    dev: &Path,
    tunnel: &str,
    extra: &[&str],
) -> Result<Gateway> {
    let mut cmd = gateway_command(bin, dev, tunnel, extra);
    cmd.env(
        "RUST_LOG",
        std::env::var("PTTH_XTASK_LOG").unwrap_or_else(|_| "error".into()),
    );
    spawn_gateway(children, &mut cmd)
}

/// Like [`start_gateway`], with the gateway's log (at `info`, which includes every
/// refusal and drain) written to `log`, for probes that read it.
pub fn start_gateway_logged(
    children: &mut Children,
    bin: &Path,
    dev: &Path,
    tunnel: &str,
    extra: &[&str],
    log: &Path,
) -> Result<Gateway> {
    let mut cmd = gateway_command(bin, dev, tunnel, extra);
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.env("RUST_LOG", "info").stderr(file);
    spawn_gateway(children, &mut cmd)
}

fn gateway_command(bin: &Path, dev: &Path, tunnel: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin.join("ptth-gateway"));
    cmd.args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
        .args(["--tunnel", tunnel])
        // Probes that expect a 503 for a host nobody serves get it at once, not after the
        // start-up grace.
        .args(["--startup-grace", "0"])
        .arg("--dev")
        .arg(dev)
        .args(extra);
    cmd
}

/// Spawns a gateway command and waits for it to print its addresses.
fn spawn_gateway(children: &mut Children, cmd: &mut Command) -> Result<Gateway> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting ptth-gateway")?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let pid = children.adopt("ptth-gateway", child);
    let (tx, rx) = mpsc::channel();
    // Reads the address lines, then keeps draining stdout so the gateway never blocks.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut listen, mut listen_tls, mut tunnel) = (None, None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tunnel.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .context("the gateway did not report its addresses")?;
        if let Some(v) = line.strip_prefix("listen=") {
            listen = Some(v.parse::<SocketAddr>()?);
        } else if let Some(v) = line.strip_prefix("listen-tls=") {
            listen_tls = Some(v.parse::<SocketAddr>()?);
        } else if let Some(v) = line.strip_prefix("tunnel=") {
            tunnel = Some(v.parse::<SocketAddr>()?);
        }
    }
    let (Some(listen), Some(listen_tls), Some(tunnel)) = (listen, listen_tls, tunnel) else {
        bail!("the gateway did not report its addresses");
    };
    Ok(Gateway {
        listen,
        listen_tls,
        tunnel,
        pid,
    })
}

/// How an origin proves who it is, with the credentials `ptth-gateway --dev DIR` writes and
/// grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `--token-file DIR/token`.
    Bearer,
    /// `--cert DIR/origin.pem --key DIR/origin.key` (SAN `*.localhost`).
    ClientCert,
    /// `--signing-key DIR/origin-ed25519.pem --key-id dev`: signs the gateway's challenge on
    /// ALPN-only mechanisms.
    SigningKey,
    /// `--basic-user interop --basic-password-file DIR/basic-password`: HTTP Basic (RFC
    /// 7617). `--dev` does not grant it: [`write_basic_grant`] writes the password and a
    /// `[[grant]]` for the gateway's `--config`.
    Basic,
}

/// The HTTP Basic user of [`Credential::Basic`].
pub const BASIC_USER: &str = "interop";

/// Writes a fresh random password to `DEV/basic-password` (creating `dev`) and a gateway
/// config file in `dir` whose one grant lets [`BASIC_USER`] with it serve
/// `https://*.localhost`; returns the config file's path, for `--config`.
pub fn write_basic_grant(dir: &Path, dev: &Path) -> Result<PathBuf> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // A colon and a space too: only the user-id may not contain a colon (RFC 7617 §2).
    let password = format!("{hex}: basic");
    std::fs::create_dir_all(dev).with_context(|| format!("creating {}", dev.display()))?;
    std::fs::write(dev.join("basic-password"), &password)?;
    let config = dir.join("basic-grant.toml");
    std::fs::write(
        &config,
        format!(
            "[[grant]]\nname = \"interop-basic\"\nbasic-user = \"{BASIC_USER}\"\nbasic-password = \"{password}\"\norigins = [\"https://*.localhost\"]\n"
        ),
    )?;
    Ok(config)
}

impl Credential {
    /// The origin flags for this credential.
    pub fn args(self, dev: &Path) -> Vec<OsString> {
        let (a, b, c, d): (&str, PathBuf, &str, OsString) = match self {
            Credential::Bearer => return vec!["--token-file".into(), dev.join("token").into()],
            Credential::Basic => (
                "--basic-password-file",
                dev.join("basic-password"),
                "--basic-user",
                BASIC_USER.into(),
            ),
            Credential::ClientCert => (
                "--cert",
                dev.join("origin.pem"),
                "--key",
                dev.join("origin.key").into(),
            ),
            Credential::SigningKey => (
                "--signing-key",
                dev.join("origin-ed25519.pem"),
                "--key-id",
                "dev".into(),
            ),
        };
        vec![a.into(), b.into(), c.into(), d]
    }
}

/// A `ptth-origin` command for `mechanism` serving `host` through `gw`; add `--hello` or
/// `--upstream URL` and `--connections N`.
pub fn origin_command(
    bin: &Path,
    gw: &Gateway,
    dev: &Path,
    mechanism: &str,
    host: &str,
    credential: Credential,
) -> Command {
    let mut cmd = Command::new(bin.join("ptth-origin"));
    cmd.args([
        "--gateway",
        &format!("https://localhost:{}", gw.tunnel.port()),
    ])
    .args(["--mechanism", mechanism, "--host", host])
    .arg("--ca")
    .arg(dev.join("ca.pem"))
    .args(credential.args(dev))
    .env(
        "RUST_LOG",
        std::env::var("PTTH_XTASK_LOG").unwrap_or_else(|_| "error".into()),
    )
    .stdout(Stdio::null());
    cmd
}

/// A credential every dev gateway accepts for `mechanism`: draft-bt requires a client
/// certificate, the others take the token.
pub fn default_credential(mechanism: &str) -> Credential {
    if matches!(mechanism, "h2-reverse" | "h3-reverse") {
        Credential::ClientCert
    } else {
        Credential::Bearer
    }
}

/// Sends `GET path` with `Host: host` over HTTP/1.1 to `addr` and returns the status.
pub fn get_status(addr: SocketAddr, host: &str, path: &str) -> Result<u16> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")
}

/// Waits until `host` answers `GET /` with 200 at `addr`.
pub fn wait_ready(addr: SocketAddr, host: &str, timeout: Duration) -> Result<()> {
    wait_ready_path(addr, host, "/", timeout)
}

/// Waits until `host` answers `GET path` with 200 at `addr`.
pub fn wait_ready_path(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match get_status(addr, host, path) {
            Ok(200) => return Ok(()),
            Ok(s) => last = format!("status {s}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{host} never answered 200 through {addr} ({last})")
}

/// Runs a command and returns its stdout, failing with its stderr when it exits non-zero.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Deterministic pseudo-random bytes (xorshift64*), so request bodies are not trivially
/// compressible and every run sends the same ones.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}
