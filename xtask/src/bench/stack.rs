//! Setting a row up: the application, nginx, rathole, the gateway and the origin (proxy or
//! library mode) a row needs, with fresh processes per row, and the nginx configuration.
//! Also installs the baselines (nginx, rathole) when they are missing.

use super::load::Proto;
use super::plan::{Plan, Route, RowSpec, HOST};
use super::sample::{Side, Watched};
use crate::procs::{self, Children};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A row, set up: where to send requests and which processes to watch.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// The h2c port when it differs from `addr` (nginx needs one port per protocol).
    pub h2c: Option<SocketAddr>,
    /// The gateway's public HTTP/3 endpoint (UDP) and the CA its certificate chains to.
    pub h3: Option<(SocketAddr, PathBuf)>,
    /// `ptth-h3-client`.
    pub h3_client: PathBuf,
    /// The roots of the process trees whose CPU time and peak RSS the row reports.
    pub watched: Vec<Watched>,
    _children: Children,
}

impl Running {
    /// Where clients of `proto` connect (nginx serves h2c on a port of its own).
    pub fn addr_for(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::H2 => self.h2c.unwrap_or(self.addr),
            Proto::H1 | Proto::H3 => self.addr,
        }
    }
}

/// Installs the baselines a user would otherwise pick when they are missing: nginx from
/// Debian's packages, rathole with `cargo install` (without `--locked` when the locked build
/// fails: rathole 0.5's lock file pins a `time` that no longer builds on current compilers).
/// `--smoke` installs nginx only, so CI does not compile rathole on every run. Returns, per
/// row label, why a baseline is still missing; the report shows it in the row.
pub fn ensure_baselines(smoke: bool) -> BTreeMap<&'static str, String> {
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

/// Starts the processes of `spec`'s row and waits until a request goes through; `None` when
/// its baseline (nginx, rathole) is not installed.
pub fn start_row(
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
            // The master; its workers are in its tree.
            watched.push(Watched {
                side: Side::Gateway,
                pid,
            });
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
            // HTTP/1.1 carries one request per connection at a time. The multiplexed
            // mechanisms dial one connection per gateway worker, as operations.md advises:
            // the gateway places them one on each worker, so a public connection finds an
            // origin connection on its own worker whichever worker the kernel gave it.
            let connections = if procs::is_h1(m) {
                plan.h1_connections
            } else {
                procs::workers(spec.threads)
            };
            let pid = if let Route::Proxy(_) = path {
                let upstream = start_app(&mut children, app)?;
                let mut cmd =
                    procs::origin_command(bin, &gw, dev, m, HOST, procs::default_credential(m));
                // bench_app serves HTTP/1.1 and HTTP/2 with prior knowledge on one port.
                let scheme = if spec.h2c_upstream { "h2c" } else { "http" };
                cmd.args(["--upstream", &format!("{scheme}://{upstream}")])
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

/// nginx as the reverse proxy baseline. It sets the forwarding fields the gateway sends by
/// default (`--forwarding-fields all`: `X-Forwarded-For`, `-Proto`, `-Host`, `X-Real-IP`,
/// `Forwarded`), so both do the same work per request.
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
         \x20     proxy_set_header X-Forwarded-For $remote_addr;\n\
         \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20     proxy_set_header X-Forwarded-Host $http_host;\n\
         \x20     proxy_set_header X-Real-IP $remote_addr;\n\
         \x20     proxy_set_header Forwarded \"for=$remote_addr;host=$http_host;proto=$scheme\";\n\
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_proxies_both_ports_to_the_app_with_upstream_keepalive() {
        let conf = nginx_conf(
            SocketAddr::from(([127, 0, 0, 1], 9000)),
            8001,
            8002,
            Path::new("/tmp/x"),
        );
        for line in [
            "server 127.0.0.1:9000;",
            "listen 127.0.0.1:8001;",
            "listen 127.0.0.1:8002 http2;",
            "keepalive 256;",
            "proxy_http_version 1.1;",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(conf.contains(line), "{line:?} missing from\n{conf}");
        }
    }
}
