//! Shared helpers for the end-to-end tests: real `ptth-gateway` and `ptth-origin` processes on
//! loopback with dev certificates, and real HTTP clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod h2_frames;
pub mod services;

/// A loopback port that nothing listens on now, on TCP or UDP, and that no other test of
/// this process is handed: for a listener a test starts later, or an upstream that must
/// stay dead.
///
/// It lies below the kernel's ephemeral range (`ip_local_port_range`), so a socket bound
/// to port 0 — the gateways, clients and services of the tests running beside this one —
/// never takes it in the meantime; a port taken from `bind("127.0.0.1:0")` and released
/// could be handed to one of them at once (an upstream meant to be dead then answered 404).
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (base, span) = if low > 12_000 {
        (low - 10_000, 10_000)
    } else {
        (1024, low.saturating_sub(1024).max(1))
    };
    // Test processes running side by side start at different places.
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no unused loopback port below the ephemeral range");
}

/// `127.0.0.1:` [`unused_port`].
pub fn unused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

/// Every TCP mechanism the origin can use.
pub const TCP_MECHANISMS: &[&str] = &[
    "rh1",
    "rh2",
    "upgrade-h1",
    "upgrade-h2",
    "connect-h2",
    "h2-reverse",
    "ptth10",
];

/// Every QUIC mechanism the origin can use.
pub const QUIC_MECHANISMS: &[&str] = &["rh3", "h3-reverse", "options-h3", "connect-h3"];

/// Every mechanism, TCP and QUIC.
pub const ALL_MECHANISMS: &[&str] = &[
    "rh1",
    "rh2",
    "upgrade-h1",
    "upgrade-h2",
    "connect-h2",
    "h2-reverse",
    "ptth10",
    "rh3",
    "h3-reverse",
    "options-h3",
    "connect-h3",
];

/// Whether a mechanism requires a client certificate (draft-bt).
pub fn needs_client_cert(mechanism: &str) -> bool {
    matches!(mechanism, "h2-reverse" | "h3-reverse")
}

/// Whether a mechanism carries HTTP/1.1 (one request per connection at a time).
pub fn is_h1(mechanism: &str) -> bool {
    matches!(mechanism, "rh1" | "upgrade-h1" | "ptth10")
}

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The path of one of the workspace's binaries (built by `cargo build --bins`).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`; `cargo xtask ci` does it)",
        p.display()
    );
    p
}

/// A fresh temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `ptth-test-<name>-<pid>-<n>` under the system temp dir.
    pub fn new(name: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ptth-test-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ptth-gateway` process.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    /// Public cleartext listener.
    pub listen: SocketAddr,
    /// Public TLS listener.
    pub listen_tls: SocketAddr,
    /// Tunnel listener.
    pub tunnel: SocketAddr,
    /// The dev credentials directory.
    pub dev: PathBuf,
    /// Everything the process wrote to stderr (also echoed to the test's stderr).
    pub log: LogTap,
}

impl Gateway {
    /// Starts a gateway on ephemeral ports with dev credentials in `dev`.
    pub async fn start(dev: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_on(dev, "127.0.0.1:0", "127.0.0.1:0", extra).await
    }

    /// Starts a gateway on ephemeral ports with `env` added to its environment.
    pub async fn start_with_env(dev: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = gateway_command(dev, "127.0.0.1:0", "127.0.0.1:0", extra);
        cmd.envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped());
        launch_gateway(cmd, dev, |stderr| LogTap::capture("gateway", stderr)).await
    }

    /// The process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts a gateway on the given listen and tunnel addresses.
    pub async fn start_on(dev: &Path, listen: &str, tunnel: &str, extra: &[&str]) -> Result<Self> {
        let mut cmd = gateway_command(dev, listen, tunnel, extra);
        cmd.env(
            "RUST_LOG",
            std::env::var("PTTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stderr(Stdio::piped());
        launch_gateway(cmd, dev, |stderr| LogTap::capture("gateway", stderr)).await
    }

    /// The origin-side `--gateway` URL.
    pub fn tunnel_url(&self) -> String {
        format!("https://localhost:{}", self.tunnel.port())
    }

    /// Kills the process at once (no graceful shutdown).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits (at most `secs`) for the process to exit and returns its status.
    pub async fn wait(&mut self, secs: u64) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(Duration::from_secs(secs), self.child.wait())
            .await
            .map_err(|_| anyhow!("the gateway did not exit within {secs} s"))?
            .context("waiting for the gateway")
    }

    /// Sends a signal (`-HUP`, `-TERM`) to the process.
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }

    /// The dev token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dev.join("token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

/// A running `ptth-origin` process.
#[derive(Debug)]
pub struct Origin {
    child: Child,
    /// Everything the process wrote to stderr (also echoed to the test's stderr).
    pub log: LogTap,
}

impl Origin {
    /// Starts an origin serving `--hello` for `host` over `mechanism`, with the dev token
    /// (and the dev client certificate for h2-reverse).
    pub async fn start(gw: &Gateway, mechanism: &str, host: &str, extra: &[&str]) -> Result<Self> {
        let token = gw.dev.join("token");
        let mut args: Vec<&str> = vec!["--token-file", token.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        Self::start_with_credentials(gw, mechanism, host, &args).await
    }

    /// Like [`Origin::start`], but the caller gives every credential in `extra`.
    pub async fn start_with_credentials(
        gw: &Gateway,
        mechanism: &str,
        host: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let dev = &gw.dev;
        let mut cmd = Command::new(bin("ptth-origin"));
        cmd.args([
            "--gateway",
            &gw.tunnel_url(),
            "--mechanism",
            mechanism,
            "--host",
            host,
        ]);
        if !extra.contains(&"--ca") && !extra.contains(&"--danger-accept-any-gateway") {
            cmd.arg("--ca").arg(dev.join("ca.pem"));
        }
        cmd.args(extra)
            .env(
                "RUST_LOG",
                std::env::var("PTTH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // An origin given an upstream, or a config file (which may hold `[[route]]`s), serves
        // what those say instead of the demo.
        if !extra.contains(&"--upstream") && !extra.contains(&"--config") {
            cmd.arg("--hello");
        }
        if needs_client_cert(mechanism) && !extra.contains(&"--cert") {
            cmd.arg("--cert")
                .arg(dev.join("origin.pem"))
                .arg("--key")
                .arg(dev.join("origin.key"));
        }
        if is_h1(mechanism) && !extra.contains(&"--connections") {
            cmd.args(["--connections", "4"]);
        }
        let mut child = cmd.spawn().context("starting ptth-origin")?;
        let log = LogTap::capture(&format!("origin {mechanism} {host}"), child.stderr.take());
        Ok(Self { child, log })
    }

    /// Kills the process at once, as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().ok_or_else(|| anyhow!("already exited"))?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }
}

/// The body type of test requests.
pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A resolver that sends every name to 127.0.0.1, so requests can name `app.localhost` in
/// their URI (and HTTP/2 `:authority`) and still reach the gateway on loopback.
#[derive(Debug, Clone, Copy)]
pub struct Loopback;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for Loopback {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(vec![SocketAddr::from(([127, 0, 0, 1], 0))].into_iter()))
    }
}

/// The connector of [`client`].
pub type Connector = hyper_util::client::legacy::connect::HttpConnector<Loopback>;

/// A public HTTP client: HTTP/1.1, or HTTP/2 with prior knowledge when `h2`. Every host name
/// resolves to 127.0.0.1.
pub fn client(h2: bool) -> Client<Connector, TestBody> {
    let mut connector =
        hyper_util::client::legacy::connect::HttpConnector::new_with_resolver(Loopback);
    connector.set_nodelay(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.http2_only(h2).pool_max_idle_per_host(256);
    if h2 {
        b.http2_initial_stream_window_size(4 * 1024 * 1024)
            .http2_initial_connection_window_size(16 * 1024 * 1024);
    }
    b.build(connector)
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `http://<host>:<gateway port><path>`: a URL naming `host` that reaches the gateway.
pub fn url(gw: &Gateway, host: &str, path: &str) -> String {
    format!("http://{host}:{}{path}", gw.listen.port())
}

/// `GET` [`url`].
pub fn get(gw: &Gateway, host: &str, path: &str) -> Request<TestBody> {
    Request::get(url(gw, host, path))
        .body(full(Bytes::new()))
        .unwrap()
}

/// Sends `req` and collects the response body.
pub async fn send(
    client: &Client<Connector, TestBody>,
    req: Request<TestBody>,
) -> Result<(Response<()>, Bytes)> {
    let res = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .map_err(|_| anyhow!("request timed out"))??;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((Response::from_parts(parts, ()), body))
}

/// Waits until `host` answers `GET /` with 200 through the gateway.
pub async fn wait_ready(gw: &Gateway, host: &str) -> Result<()> {
    let c = client(false);
    // Generous: on a loaded two-core CI machine a fresh origin process can take a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        // Each attempt is bounded on its own, so one stuck request cannot eat the deadline.
        let attempt = tokio::time::timeout(Duration::from_secs(5), send(&c, get(gw, host, "/")));
        if let Ok(Ok((res, _))) = attempt.await {
            if res.status() == StatusCode::OK {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{host} never became reachable through the gateway");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A gateway with one origin per mechanism, each on `<mechanism>.localhost`.
#[derive(Debug)]
pub struct Fleet {
    /// The gateway.
    pub gateway: Gateway,
    /// The origins, by mechanism.
    pub origins: Vec<(String, Origin)>,
    /// Keeps the dev directory alive.
    pub dir: TempDir,
}

impl Fleet {
    /// Starts a gateway and one origin per mechanism in `mechanisms`, and waits for all.
    pub async fn start(name: &str, mechanisms: &[&str]) -> Result<Self> {
        let dir = TempDir::new(name);
        let gateway = Gateway::start(&dir.0, &[]).await?;
        let mut origins = Vec::new();
        for m in mechanisms {
            origins.push((
                m.to_string(),
                Origin::start(&gateway, m, &format!("{m}.localhost"), &[]).await?,
            ));
        }
        for m in mechanisms {
            wait_ready(&gateway, &format!("{m}.localhost")).await?;
        }
        Ok(Self {
            gateway,
            origins,
            dir,
        })
    }
}

/// A TLS connection to the gateway's tunnel listener offering `alpn`, trusting the dev CA.
pub async fn tls_connect(
    gw: &Gateway,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(gw.tunnel).await?;
    tls_over(gw, tcp, alpn).await
}

/// The dev CA of `gw`, as rustls trust anchors.
pub fn dev_roots(gw: &Gateway) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(gw.dev.join("ca.pem"))?;
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    Ok(roots)
}

/// A TLS client handshake on `tcp` to the gateway's tunnel (`localhost`), offering `alpn`,
/// trusting the dev CA.
async fn tls_over(
    gw: &Gateway,
    tcp: tokio::net::TcpStream,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(dev_roots(gw)?)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    Ok(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await?,
    )
}

/// Writes `head` on a fresh HTTP/1.1 tunnel connection and returns what the gateway answers
/// (up to its first 4 KiB, or until it closes).
pub async fn raw_setup(gw: &Gateway, head: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = tls_connect(gw, &[b"http/1.1"]).await?;
    tls.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let read = async {
        while n < buf.len() {
            let k = tls.read(&mut buf[n..]).await?;
            if k == 0 {
                break;
            }
            n += k;
            if String::from_utf8_lossy(&buf[..n]).contains("\r\n\r\n") {
                // Give the body a moment to arrive as well.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Ok(Ok(k)) =
                    tokio::time::timeout(Duration::from_millis(200), tls.read(&mut buf[n..])).await
                {
                    n += k;
                }
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| anyhow!("no answer"))??;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends `GET /` for `host` until `deadline_secs` pass (or a 200 comes); returns the last
/// status seen. Panics on a transport error: a gateway that crashed or stopped answering is
/// never mistaken for one that refused an origin.
pub async fn status_after(gw: &Gateway, host: &str, deadline_secs: u64) -> StatusCode {
    let c = client(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(deadline_secs);
    loop {
        let last = match send(&c, get(gw, host, "/")).await {
            Ok((res, _)) => res.status(),
            Err(e) => panic!("GET http://{host}/ through the gateway failed: {e:#}"),
        };
        if last == StatusCode::OK || tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A public HTTP/3 client connected to the gateway's public HTTP/3 endpoint (UDP, the
/// `--listen-tls` port), trusting the dev CA.
#[derive(Debug)]
pub struct H3Client {
    conn: ptth_h3::H3Connection,
    _endpoint: quinn::Endpoint,
}

/// Connects an [`H3Client`] to `gw`.
pub async fn h3_client(gw: &Gateway) -> Result<H3Client> {
    let roots = dev_roots(gw)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut client = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(256u32.into())
        .stream_receive_window((4u32 * 1024 * 1024).into())
        .receive_window((16u32 * 1024 * 1024).into());
    client.transport_config(std::sync::Arc::new(transport));
    endpoint.set_default_client_config(client);
    let quic = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect(gw.listen_tls, "localhost")?,
    )
    .await
    .map_err(|_| anyhow!("QUIC handshake with the public endpoint timed out"))??;
    let conn = ptth_h3::H3Connection::new(
        quic,
        ptth_h3::H3Config::new(ptth_h3::RequestDirection::ClientSends),
    )
    .await?;
    Ok(H3Client {
        conn,
        _endpoint: endpoint,
    })
}

impl H3Client {
    /// Sends `req` (its URI names the host, e.g. `https://app.localhost/`) and returns the
    /// response with its streaming body.
    pub async fn request(&self, req: Request<TestBody>) -> Result<Response<ptth_h3::RecvBody>> {
        Ok(tokio::time::timeout(
            Duration::from_secs(60),
            self.conn.sender().send_request(req),
        )
        .await
        .map_err(|_| anyhow!("HTTP/3 request timed out"))??)
    }

    /// Sends a CONNECT or extended CONNECT (put a `ptth_h3::Protocol` in its extensions)
    /// and returns the answer and the request stream as a byte stream.
    pub async fn connect(&self, req: Request<()>) -> Result<(Response<()>, ptth_h3::H3Stream)> {
        Ok(tokio::time::timeout(
            Duration::from_secs(60),
            self.conn.sender().send_connect(req),
        )
        .await
        .map_err(|_| anyhow!("HTTP/3 CONNECT timed out"))??)
    }

    /// Sends `req` and collects the body.
    pub async fn send(&self, req: Request<TestBody>) -> Result<(Response<()>, Bytes)> {
        let res = self.request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok((Response::from_parts(parts, ()), body))
    }
}

/// `https://<host><path>` for the public HTTP/3 client.
pub fn h3_url(host: &str, path: &str) -> String {
    format!("https://{host}{path}")
}

/// The most lines a [`LogTap`] keeps; older ones are dropped.
const LOG_TAP_LINES: usize = 20_000;

/// A `ptth-gateway --dev DIR` command on the given addresses (the TLS listener on an
/// ephemeral port), stdout piped for [`launch_gateway`]; the caller sets the log level and
/// where stderr goes.
fn gateway_command(dev: &Path, listen: &str, tunnel: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("ptth-gateway"));
    cmd.args([
        "--listen",
        listen,
        "--listen-tls",
        "127.0.0.1:0",
        "--tunnel",
        tunnel,
    ])
    .arg("--dev")
    .arg(dev)
    .args(extra)
    .stdout(Stdio::piped())
    .kill_on_drop(true);
    // A request for a host with no origin is answered at once (503), as these tests expect,
    // unless a test asks for the start-up grace itself.
    if !extra.contains(&"--startup-grace") {
        cmd.args(["--startup-grace", "0"]);
    }
    cmd
}

/// Spawns a gateway command, hands its stderr (if piped) to `tap`, and waits for the
/// addresses it prints on stdout (then keeps draining stdout so it never blocks).
async fn launch_gateway(
    mut cmd: Command,
    dev: &Path,
    tap: impl FnOnce(Option<tokio::process::ChildStderr>) -> LogTap,
) -> Result<Gateway> {
    let mut child = cmd.spawn().context("starting ptth-gateway")?;
    let log = tap(child.stderr.take());
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut l, mut lt, mut t) = (None, None, None);
    let read = async {
        while let Some(line) = lines.next_line().await? {
            if let Some(v) = line.strip_prefix("listen=") {
                l = Some(v.parse()?);
            } else if let Some(v) = line.strip_prefix("listen-tls=") {
                lt = Some(v.parse()?);
            } else if let Some(v) = line.strip_prefix("tunnel=") {
                t = Some(v.parse()?);
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .map_err(|_| anyhow!("gateway did not report its addresses"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Gateway {
        child,
        listen: l.ok_or_else(|| anyhow!("no listen address"))?,
        listen_tls: lt.ok_or_else(|| anyhow!("no listen-tls address"))?,
        tunnel: t.ok_or_else(|| anyhow!("no tunnel address"))?,
        dev: dev.to_path_buf(),
        log,
    })
}

/// The stderr of a child process, line by line with ANSI colours removed, kept so a test can
/// wait for the log line that proves why something happened. Each line is echoed to the
/// test's own stderr, prefixed with the process's name.
#[derive(Debug, Clone, Default)]
pub struct LogTap {
    lines: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>,
    grew: std::sync::Arc<tokio::sync::Notify>,
}

impl LogTap {
    /// Reads `stderr` to its end in a task of its own.
    pub fn capture(name: &str, stderr: Option<tokio::process::ChildStderr>) -> Self {
        let tap = Self::default();
        if let Some(stderr) = stderr {
            let (tap, name) = (tap.clone(), name.to_string());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let line = strip_ansi(&line);
                    eprintln!("[{name}] {line}");
                    {
                        let mut l = tap.lines.lock().unwrap();
                        if l.len() == LOG_TAP_LINES {
                            l.pop_front();
                        }
                        l.push_back(line);
                    }
                    tap.grew.notify_waiters();
                }
            });
        }
        tap
    }

    /// The lines that contain `needle`.
    pub fn matching(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        let l = self.lines.lock().unwrap();
        l.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// Waits up to `secs` for a line containing `needle` and returns it.
    pub async fn wait_for(&self, needle: &str, secs: u64) -> Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let grew = self.grew.notified();
            if let Some(line) = self.matching(needle).pop() {
                return Ok(line);
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                bail!(
                    "no log line with {needle:?} within {secs} s; the log:\n{}",
                    self.text()
                );
            }
        }
    }
}

/// `line` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends `GET <path>` for `host` and returns the status and body, or panics with the
/// transport error.
pub async fn answer(gw: &Gateway, host: &str, path: &str) -> (StatusCode, String) {
    match send(&client(false), get(gw, host, path)).await {
        Ok((res, body)) => (res.status(), String::from_utf8_lossy(&body).into_owned()),
        Err(e) => panic!("GET http://{host}{path} through the gateway failed: {e:#}"),
    }
}

/// The reason the gateway gives when no origin connection serves a host and path.
pub const NO_ORIGIN: &str = "no origin is connected";

/// Asserts that `host` has no origin now: a 503 whose body gives [`NO_ORIGIN`] as the reason.
pub async fn assert_no_origin(gw: &Gateway, host: &str, context: &str) {
    let (status, body) = answer(gw, host, "/").await;
    assert!(
        status == StatusCode::SERVICE_UNAVAILABLE && body.contains(NO_ORIGIN),
        "{context}: {host} must have no origin, got {status}: {body}"
    );
}

/// How long a public client may wait for a streamed response's first event, counted from
/// before it sends the request. `/sse?n=2&interval_ms=60000` holds its second event for a
/// minute, so a gateway that buffered the response would miss this by 45 s.
pub const FIRST_EVENT_WITHIN: Duration = Duration::from_secs(15);

/// The status, `content-type` and first data frame of `res`.
async fn first_data<B>(res: Response<B>) -> Result<(StatusCode, String, Bytes)>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let status = res.status();
    let content_type = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut body = res.into_body();
    loop {
        match body.frame().await {
            None => bail!("the body ended without data"),
            Some(Err(e)) => bail!("the body failed: {e}"),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        return Ok((status, content_type, data));
                    }
                }
            }
        }
    }
}

/// Asks `host` for `/sse?n=2&interval_ms=60000` from public HTTP/1.1, HTTP/2 (h2c) and
/// HTTP/3 clients and asserts that each gets the response and its first event within
/// [`FIRST_EVENT_WITHIN`], the request included: the gateway streams, it does not buffer.
pub async fn assert_sse_streams(gw: &Gateway, host: &str, context: &str) {
    const PATH: &str = "/sse?n=2&interval_ms=60000";
    let h3 = h3_client(gw)
        .await
        .unwrap_or_else(|e| panic!("{context}: public HTTP/3 client: {e:#}"));
    for proto in ["HTTP/1.1", "HTTP/2", "HTTP/3"] {
        let started = tokio::time::Instant::now();
        let first = tokio::time::timeout(FIRST_EVENT_WITHIN, async {
            if proto == "HTTP/3" {
                let req = Request::get(h3_url(host, PATH)).body(full(Bytes::new()))?;
                first_data(h3.request(req).await?).await
            } else {
                let res = client(proto == "HTTP/2")
                    .request(get(gw, host, PATH))
                    .await?;
                first_data(res).await
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!("{context} from {proto}: no first event within {FIRST_EVENT_WITHIN:?} of sending the request")
        });
        let (status, content_type, data) =
            first.unwrap_or_else(|e| panic!("{context} from {proto}: {e:#}"));
        assert_eq!(status, StatusCode::OK, "{context} from {proto}");
        assert_eq!(content_type, "text/event-stream", "{context} from {proto}");
        assert_eq!(data, "data: event 0\n\n", "{context} from {proto}");
        eprintln!(
            "{context} from {proto}: first event after {:?}",
            started.elapsed()
        );
    }
}

/// A request body the test holds open: each `Bytes` sent becomes a data frame, and the body
/// ends when the sender is dropped.
pub fn held_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(1);
    let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let data = receiver.recv().await?;
        Some((
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(data)),
            receiver,
        ))
    });
    (
        sender,
        BodyExt::boxed(http_body_util::StreamBody::new(frames)),
    )
}

/// A request in flight on `host` for as long as the test wants: an upload to `/echo-body`
/// from a public HTTP/2 client, the test holding the request body open and reading each
/// chunk back.
#[derive(Debug)]
pub struct Neighbour {
    host: String,
    sender: tokio::sync::mpsc::Sender<Bytes>,
    body: hyper::body::Incoming,
}

impl Neighbour {
    /// Opens the request and waits until its first chunk came back through the gateway.
    pub async fn open(gw: &Gateway, host: &str) -> Self {
        let (sender, body) = held_body();
        let req = Request::post(url(gw, host, "/echo-body"))
            .body(body)
            .unwrap();
        let response = tokio::spawn(async move { client(true).request(req).await });
        sender
            .send(Bytes::from_static(b"before"))
            .await
            .unwrap_or_else(|_| panic!("{host}: the upload was dropped"));
        let res = tokio::time::timeout(Duration::from_secs(30), response)
            .await
            .unwrap_or_else(|_| panic!("{host}: no answer while the upload is open"))
            .unwrap()
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        assert_eq!(res.status(), StatusCode::OK, "{host}");
        let mut neighbour = Self {
            host: host.to_string(),
            sender,
            body: res.into_body(),
        };
        neighbour.read_back("before").await;
        neighbour
    }

    async fn read_back(&mut self, chunk: &str) {
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("{}: {chunk:?} did not come back", self.host))
                .unwrap_or_else(|| panic!("{}: the echo ended early", self.host))
                .unwrap_or_else(|e| panic!("{}: the echo failed: {e}", self.host));
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(got, chunk.as_bytes(), "{}", self.host);
    }

    /// Sends one more chunk, reads it back, ends the upload and expects a clean end.
    pub async fn finish(mut self) {
        self.sender
            .send(Bytes::from_static(b"after"))
            .await
            .unwrap_or_else(|_| panic!("{}: the upload was dropped", self.host));
        self.read_back("after").await;
        drop(self.sender);
        loop {
            let end = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("{}: the echo never ended", self.host));
            match end {
                None => return,
                Some(Ok(frame)) if frame.is_trailers() => return,
                Some(Ok(frame)) if frame.data_ref().is_some_and(Bytes::is_empty) => {}
                other => panic!("{}: the echo did not end cleanly: {other:?}", self.host),
            }
        }
    }
}

impl Gateway {
    /// The process's peak resident set size so far (`VmHWM` in `/proc/<pid>/status`), in
    /// bytes; `None` off Linux or once the process is gone.
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss_of(self.child.id()?)
    }
}

impl Origin {
    /// The process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process's peak resident set size so far, as [`Gateway::peak_rss`].
    pub fn peak_rss(&self) -> Option<u64> {
        peak_rss_of(self.child.id()?)
    }
}

/// The environment of process `pid` (`/proc/<pid>/environ`), one `NAME=value` per entry.
pub fn environ_of(pid: u32) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("reading the environment of process {pid}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect())
}

/// `VmHWM` of process `pid`, in bytes.
fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Starts a gateway like [`Gateway::start`], with its stderr (at `rust_log`) written to
/// `log` instead of inherited, so a test can wait for a log line or check there is none.
pub async fn start_gateway_logging(
    dev: &Path,
    extra: &[&str],
    log: &Path,
    rust_log: &str,
) -> Result<Gateway> {
    let mut cmd = gateway_command(dev, "127.0.0.1:0", "127.0.0.1:0", extra);
    cmd.env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(log)?);
    launch_gateway(cmd, dev, |_| LogTap::default()).await
}

/// Waits until `log` holds at least `count` lines containing `needle`; returns its text.
pub async fn wait_for_log(
    log: &Path,
    needle: &str,
    count: usize,
    within: Duration,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| l.contains(needle)).count() >= count {
            return Ok(text);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{count} log lines with {needle:?} did not appear within {within:?}; the log:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP connection to `to` from the loopback address `from` (any 127.0.0.0/8 address works
/// on Linux), so a test can act as many source addresses.
pub async fn tcp_from(from: std::net::IpAddr, to: SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(socket.connect(to).await?)
}

/// A TLS connection to the tunnel listener from loopback address `from`, offering `alpn`.
pub async fn tls_connect_from(
    gw: &Gateway,
    from: std::net::IpAddr,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tcp_from(from, gw.tunnel).await?;
    tls_over(gw, tcp, alpn).await
}

/// A QUIC connection to `to` from loopback address `from`, offering `alpn`, trusting the dev
/// CA; the endpoint is returned with it (dropping it ends the connection).
pub async fn quic_connect_from(
    gw: &Gateway,
    from: std::net::IpAddr,
    to: SocketAddr,
    alpn: &[u8],
) -> Result<(quinn::Endpoint, quinn::Connection)> {
    let roots = dev_roots(gw)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))?;
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0))?;
    let mut client = quinn::ClientConfig::new(std::sync::Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Our own idle timer must not be what closes the connection in a test.
    transport.max_idle_timeout(Some(Duration::from_secs(60).try_into()?));
    client.transport_config(std::sync::Arc::new(transport));
    endpoint.set_default_client_config(client);
    let conn = tokio::time::timeout(Duration::from_secs(10), endpoint.connect(to, "localhost")?)
        .await
        .map_err(|_| anyhow!("QUIC handshake timed out"))??;
    Ok((endpoint, conn))
}

/// The stderr of a process a test started, line by line, so a test can wait for the log line
/// that proves why something happened. Every line is echoed to the test's own stderr.
#[derive(Debug)]
pub struct LogLines {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl LogLines {
    /// Reads `stderr` in a task until it closes, or until [`LogLines::close`].
    pub fn follow(stderr: tokio::process::ChildStderr, label: &str) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let label = label.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(line)) => {
                            eprintln!("[{label}] {line}");
                            if tx.send(line).is_err() {
                                break;
                            }
                        }
                        _ => break,
                    },
                    // Closed by the test: the pipe's read end goes with this task.
                    () = tx.closed() => break,
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for a line containing `needle` (lines read earlier count too).
    pub async fn wait_for(&mut self, needle: &str, within: Duration) -> Result<String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Ok(l.clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Ok(None) => bail!("the process closed stderr without logging {needle:?}"),
                Err(_) => bail!("no log line with {needle:?} within {within:?}"),
            }
        }
    }

    /// Stops reading: the read end of the process's stderr pipe closes now, and every line
    /// the process logs from then on fails to be written.
    pub fn close(self) {}

    /// Every line read so far (those [`LogLines::wait_for`] went through).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}

impl Origin {
    /// Like [`Origin::start`] (dev token, `--hello` unless `extra` has `--upstream`, the dev
    /// CA unless `extra` has `--ca` or `--danger-accept-any-gateway`), with `RUST_LOG=info`
    /// and its stderr handed back to read.
    pub async fn start_logged(
        gw: &Gateway,
        mechanism: &str,
        host: &str,
        extra: &[&str],
    ) -> Result<(Self, LogLines)> {
        let mut cmd = Command::new(bin("ptth-origin"));
        cmd.args([
            "--gateway",
            &gw.tunnel_url(),
            "--mechanism",
            mechanism,
            "--host",
            host,
        ])
        .arg("--token-file")
        .arg(gw.dev.join("token"));
        if !extra.contains(&"--ca") && !extra.contains(&"--danger-accept-any-gateway") {
            cmd.arg("--ca").arg(gw.dev.join("ca.pem"));
        }
        // An origin given an upstream, or a config file (which may hold `[[route]]`s), serves
        // what those say instead of the demo.
        if !extra.contains(&"--upstream") && !extra.contains(&"--config") {
            cmd.arg("--hello");
        }
        if needs_client_cert(mechanism) && !extra.contains(&"--cert") {
            cmd.arg("--cert")
                .arg(gw.dev.join("origin.pem"))
                .arg("--key")
                .arg(gw.dev.join("origin.key"));
        }
        cmd.args(extra)
            // `PTTH_ORIGIN_LOG` raises it when a test needs the origin's debug lines.
            .env(
                "RUST_LOG",
                std::env::var("PTTH_ORIGIN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting ptth-origin")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        Ok((
            Self {
                child,
                log: LogTap::default(),
            },
            LogLines::follow(stderr, &format!("origin {mechanism} {host}")),
        ))
    }

    /// Like [`Origin::start_logged`], but the read end of its stderr pipe is closed at once,
    /// as when whatever read the log (journald, a pipe to a log shipper) went away: every
    /// line it logs from then on fails to be written (`EPIPE`).
    pub async fn start_with_stderr_closed(
        gw: &Gateway,
        mechanism: &str,
        host: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let (origin, logs) = Self::start_logged(gw, mechanism, host, extra).await?;
        logs.close();
        Ok(origin)
    }
}

/// An HTTP/1.1 upstream on 127.0.0.1 that answers every request with `200` and a body of
/// the request's header fields, one `name: value` line each, in the order received: what
/// an application behind `ptth-origin --upstream` would see.
pub async fn header_echo_upstream() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let mut text = String::new();
                        for (name, value) in req.headers() {
                            text.push_str(name.as_str());
                            text.push_str(": ");
                            text.push_str(&String::from_utf8_lossy(value.as_bytes()));
                            text.push('\n');
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            text,
                        ))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The values of header `name` (lowercase) in a [`header_echo_upstream`] body, in order.
pub fn echoed(body: &[u8], name: &str) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
        .collect()
}

/// The log (stderr) of a gateway started with [`Gateway::start_logged`], kept line by line
/// so a test can wait for the specific line that proves why something happened.
#[derive(Debug, Clone, Default)]
pub struct GatewayLog {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    added: std::sync::Arc<tokio::sync::Notify>,
}

impl GatewayLog {
    /// Waits until a line containing every one of `needles` appears (at most `secs`
    /// seconds) and returns it.
    pub async fn wait_for(&self, needles: &[&str], secs: u64) -> Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return Ok(line.clone());
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                bail!("no log line with {needles:?} within {secs} s");
            }
        }
    }

    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.added.notify_waiters();
    }
}

impl Gateway {
    /// Like [`Gateway::start`], logging at `info` (an access-log line per request) into a
    /// stderr pipe whose read end is closed at once, as when whatever read the log (journald,
    /// a pipe to a log shipper) went away: every line fails to be written (`EPIPE`).
    pub async fn start_with_stderr_closed(dev: &Path, extra: &[&str]) -> Result<Self> {
        let mut cmd = gateway_command(dev, "127.0.0.1:0", "127.0.0.1:0", extra);
        cmd.env("RUST_LOG", "info").stderr(Stdio::piped());
        launch_gateway(cmd, dev, |stderr| {
            drop(stderr);
            LogTap::default()
        })
        .await
    }

    /// Like [`Gateway::start`], but logging at `info` as JSON into a [`GatewayLog`] the test
    /// reads (each line is also echoed to the test's stderr).
    pub async fn start_logged(dev: &Path, extra: &[&str]) -> Result<(Self, GatewayLog)> {
        let mut extra = extra.to_vec();
        extra.extend(["--log-format", "json"]);
        let mut cmd = gateway_command(dev, "127.0.0.1:0", "127.0.0.1:0", &extra);
        cmd.env("RUST_LOG", "info").stderr(Stdio::piped());
        let log = GatewayLog::default();
        let sink = log.clone();
        let gw = launch_gateway(cmd, dev, move |stderr| {
            if let Some(stderr) = stderr {
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        eprintln!("gateway: {line}");
                        sink.push(line);
                    }
                });
            }
            LogTap::default()
        })
        .await?;
        Ok((gw, log))
    }
}

impl Gateway {
    /// Starts a gateway like [`Gateway::start`], with its log (at `info`) written to `log`
    /// instead of the test's stderr, so a test can wait for a line ([`wait_for_log_line`]).
    pub async fn start_logging_to(dev: &Path, extra: &[&str], log: &Path) -> Result<Self> {
        let mut cmd = gateway_command(dev, "127.0.0.1:0", "127.0.0.1:0", extra);
        cmd.env("RUST_LOG", "info")
            // Plain `key=value` fields, without colour codes around them.
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(log).context("creating the gateway log")?);
        launch_gateway(cmd, dev, |_| LogTap::default()).await
    }
}

/// The lines of the log file `log` that `pred` accepts, now.
pub fn log_lines(log: &Path, pred: impl Fn(&str) -> bool) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| pred(l))
        .map(str::to_owned)
        .collect()
}

/// Waits until the log file `log` holds a line `pred` accepts and returns it; fails after
/// `secs` seconds, quoting the log.
pub async fn wait_for_log_line(
    log: &Path,
    what: &str,
    secs: u64,
    pred: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(line) = log_lines(log, &pred).into_iter().next() {
            return Ok(line);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no log line {what} within {secs} s; the log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a `key=value` field of a human-format log line has exactly this value.
pub fn log_field_is(line: &str, key: &str, value: &str) -> bool {
    let want = format!("{key}={value}");
    line.split_whitespace().any(|w| w == want)
}

/// Waits until `host` answers `GET /` with 200 through the gateway. Unlike [`wait_ready`]
/// and [`status_after`], a transport error (the gateway gone, a broken connection) fails at
/// once instead of counting as "not yet"; only a 503 means "not yet".
pub async fn wait_serving(gw: &Gateway, host: &str, secs: u64) -> Result<()> {
    let c = client(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (res, body) = send(&c, get(gw, host, "/"))
            .await
            .with_context(|| format!("GET http://{host}/ through the gateway"))?;
        match res.status() {
            StatusCode::OK => return Ok(()),
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => bail!(
                "{host} answered {other}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{host} was not served within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Taken by the tests that load the machine (rolling restarts under client load, restarts
/// beside a replacement, retries timed against a dying origin), so those of one test binary
/// run one at a time. On a two-core CI machine they would otherwise starve each other of
/// CPU and time out on the machine, not on the product.
pub async fn load_test_lock() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
