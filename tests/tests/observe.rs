//! Watching it: the admin listeners of both binaries (`/metrics` read with a Prometheus
//! text parser, `/healthz`, `/readyz`), the gateway's access log read as JSON, upstream
//! errors in the origin's log, and logs fit for machines (no colour off a terminal, JSON
//! values that are not Rust `Debug` text, config errors without a backtrace).

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use ptth_tests::*;
use std::net::SocketAddr;
use std::time::Duration;

/// A loopback address nothing listens on, for an admin listener or a tunnel the test
/// starts later.
fn free_port() -> SocketAddr {
    unused_addr()
}

/// `GET http://{addr}{path}`: status, content type and body.
async fn admin_get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String, String)> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(full(Bytes::new()))
        .unwrap();
    let (res, body) = send(&client(false), req).await?;
    let ctype = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok((
        res.status(),
        ctype,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// `/metrics` parsed by a Prometheus text-format parser.
async fn scrape(admin: SocketAddr) -> Result<prometheus_parse::Scrape> {
    let (status, ctype, text) = admin_get(admin, "/metrics").await?;
    if status != StatusCode::OK || !ctype.starts_with("text/plain; version=0.0.4") {
        bail!("/metrics answered {status} ({ctype})");
    }
    Ok(prometheus_parse::Scrape::parse(
        text.lines().map(|l| Ok(l.to_owned())),
    )?)
}

/// The value of the sample `metric` whose labels include `labels` (0 when absent: a series
/// appears on first use).
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

/// Polls `/readyz` until it answers `want`; returns the body.
async fn readyz_becomes(admin: SocketAddr, want: StatusCode, secs: u64) -> Result<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok((status, _, body)) = admin_get(admin, "/readyz").await {
            if status == want {
                return Ok(body);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("/readyz on {admin} never answered {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The gateway's JSON log lines at target `ptth::access`, parsed.
fn access_lines(log: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "ptth::access")
        .collect()
}

/// Waits for an access log line whose fields match `pick`.
async fn access_line(
    log: &std::path::Path,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(line) = access_lines(log).into_iter().find(|v| pick(&v["fields"])) {
            return Ok(line);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no such access log line; the log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_readiness_and_the_access_log_follow_the_traffic() -> Result<()> {
    let dir = TempDir::new("observe");
    let log = dir.0.join("gateway.log");
    let gw_admin = free_port();
    let origin_admin = free_port();
    let tunnel = free_port();
    // Refused for the test's length: a port merely found free could be handed to a
    // listener of a test running beside this one, which then answered for the dead upstream.
    let (_dead_guard, dead_port) = ptth_tests::services::refused_tcp_port();
    let dead_upstream = SocketAddr::from(([127, 0, 0, 1], dead_port));

    // The origin starts first, towards a tunnel nobody listens on yet: not ready, and it
    // says which gateway it lacks.
    let dev = dir.0.join("dev");
    let fake = Gateway::start(&dev, &[]).await?;
    let tunnel_url = format!("https://localhost:{}", tunnel.port());
    let origin_admin_s = origin_admin.to_string();
    let (mut origin, _origin_log) = spawn_origin(
        &dev,
        &tunnel_url,
        "app.localhost",
        &["--hello", "--admin", &origin_admin_s],
    )?;
    let why = readyz_becomes(origin_admin, StatusCode::SERVICE_UNAVAILABLE, 30).await?;
    assert!(why.contains(&tunnel_url), "{why}");
    let (status, _, body) = admin_get(origin_admin, "/healthz").await?;
    assert_eq!((status, body.trim()), (StatusCode::OK, "ok"));
    drop(fake);

    let gw_admin_s = gw_admin.to_string();
    let mut gw = LoggedGateway::start(
        &dev,
        tunnel,
        &[
            "--log-format",
            "json",
            "--admin",
            &gw_admin_s,
            "--metrics-host",
            "app.localhost",
        ],
        &log,
    )
    .await?;
    readyz_becomes(gw_admin, StatusCode::OK, 10).await?;
    // The origin registers once it reaches the gateway: ready.
    readyz_becomes(origin_admin, StatusCode::OK, 60).await?;
    gw.wait_ready("app.localhost").await?;
    let dead = format!("http://{dead_upstream}");
    let (mut broken, broken_log) =
        spawn_origin(&dev, &tunnel_url, "dead.localhost", &["--upstream", &dead])?;

    let (status, _, _) = admin_get(gw_admin, "/nothing-here").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let origin_metrics = scrape(origin_admin).await?;
    assert_eq!(
        value(
            &origin_metrics,
            "ptth_origin_connections",
            &[("gateway", &tunnel_url), ("state", "registered")]
        ),
        1.0
    );

    // The dead upstream's origin may still be registering: its 502 is the answer wanted.
    let c = client(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (res, _) = send(&c, gw.get("dead.localhost", "/gone?x=1")).await?;
        if res.status() == StatusCode::BAD_GATEWAY {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("dead.localhost never answered 502 (last {})", res.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let before = scrape(gw_admin).await?;
    let c = client(false);
    const N: usize = 5;
    for _ in 0..N {
        let (res, body) = send(&c, gw.get("app.localhost", "/bytes/1024?token=sekrit")).await?;
        assert_eq!((res.status(), body.len()), (StatusCode::OK, 1024));
    }
    let post = Request::post(gw.url("app.localhost", "/echo-body"))
        .body(full(vec![b'x'; 2000]))
        .unwrap();
    let (res, body) = send(&c, post).await?;
    assert_eq!((res.status(), body.len()), (StatusCode::OK, 2000));
    let (res, _) = send(&c, gw.get("nobody.localhost", "/")).await?;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (res, _) = send(&c, gw.get("dead.localhost", "/gone?x=1")).await?;
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);

    // The access log line is written when the body ends, so the counters have moved
    // by the time the last line is there.
    access_line(&log, |f| {
        f["host"]
            .as_str()
            .is_some_and(|h| h.starts_with("dead.localhost"))
            && f["status"] == 502
    })
    .await?;
    let after = scrape(gw_admin).await?;
    let delta = |metric: &str, labels: &[(&str, &str)]| {
        value(&after, metric, labels) - value(&before, metric, labels)
    };
    let ok = [
        ("class", "2xx"),
        ("mechanism", "rh2"),
        ("protocol", "http1"),
    ];
    assert_eq!(delta("ptth_gateway_requests_total", &ok), (N + 1) as f64);
    assert_eq!(
        delta(
            "ptth_gateway_requests_total",
            &[("class", "5xx"), ("mechanism", "none")]
        ),
        1.0,
        "the 503 for an unknown host"
    );
    assert_eq!(
        delta(
            "ptth_gateway_requests_total",
            &[("class", "5xx"), ("mechanism", "rh2")]
        ),
        1.0,
        "the 502 from the dead upstream"
    );
    assert_eq!(
        delta(
            "ptth_gateway_host_requests_total",
            &[("host", "app.localhost"), ("class", "2xx")]
        ),
        (N + 1) as f64
    );
    assert!(
        delta("ptth_gateway_host_requests_total", &[("host", "other")]) >= 2.0,
        "unlisted hosts fold into other"
    );
    assert_eq!(delta("ptth_gateway_request_body_bytes_total", &[]), 2000.0);
    assert!(
        delta("ptth_gateway_response_body_bytes_total", &[]) >= (N * 1024 + 2000) as f64,
        "bytes out"
    );
    assert!(delta("ptth_gateway_request_duration_seconds", &[]) >= (N + 3) as f64);
    assert_eq!(
        value(
            &after,
            "ptth_gateway_origin_connections",
            &[("mechanism", "rh2")]
        ),
        2.0
    );
    assert!(value(&after, "ptth_gateway_registered_scopes", &[]) >= 2.0);
    assert!(
        value(
            &after,
            "ptth_gateway_origin_setups_total",
            &[("outcome", "admitted")]
        ) >= 2.0
    );
    assert!(
        value(
            &after,
            "ptth_gateway_public_connections",
            &[("listener", "http")]
        ) >= 1.0
    );
    assert_eq!(value(&after, "ptth_gateway_queue_depth", &[]), 0.0);

    // Every field of a forwarded request's line, as JSON values; no query string.
    let line = access_line(&log, |f| f["path"] == "/bytes/1024").await?;
    let f = &line["fields"];
    assert!(line["timestamp"].is_string(), "{line}");
    assert!(
        f["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert_eq!(
        f["host"].as_str().map(|h| h.starts_with("app.localhost")),
        Some(true),
        "{line}"
    );
    assert_eq!(f["method"], "GET");
    assert_eq!(f["protocol"], "http/1.1");
    assert_eq!(f["status"], 200);
    assert_eq!(f["bytes_in"], 0);
    assert_eq!(f["bytes_out"], 1024);
    assert!(f["duration_ms"].is_f64(), "{line}");
    assert_eq!(f["complete"], true);
    assert_eq!(f["mechanism"], "rh2");
    assert!(f["conn"].is_u64(), "{line}");
    assert!(f["grant"].is_string(), "{line}");
    let text = std::fs::read_to_string(&log)?;
    assert!(!text.contains("sekrit"), "a query string reached the log");
    let post = access_line(&log, |f| f["method"] == "POST").await?;
    assert_eq!(post["fields"]["bytes_in"], 2000);
    assert_eq!(post["fields"]["bytes_out"], 2000);

    // The 503 says why; the 502 names the origin connection, and the origin logs the
    // upstream failure with the request it failed.
    let unknown = access_line(&log, |f| f["status"] == 503).await?;
    assert!(
        unknown["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no origin")),
        "{unknown}"
    );
    assert!(unknown["fields"]["mechanism"].is_null(), "{unknown}");
    let bad = access_line(&log, |f| f["status"] == 502).await?;
    assert_eq!(bad["fields"]["mechanism"], "rh2", "{bad}");
    let upstream = broken_log
        .wait_for("upstream failure: answered 502", 10)
        .await?;
    for part in [
        "method=GET",
        "host=dead.localhost",
        "path=/gone",
        &dead_upstream.to_string(),
        "error=",
    ] {
        assert!(upstream.contains(part), "{part} missing: {upstream}");
    }
    assert!(!upstream.contains("x=1"), "{upstream}");

    // JSON values are values: no `Some(…)`, no `Scope { … }`, and the grant is `grant`.
    let mut registered = false;
    for l in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("not JSON: {l}"))?;
        for (k, field) in v["fields"].as_object().into_iter().flatten() {
            if let Some(s) = field.as_str() {
                assert!(
                    !s.starts_with("Some(") && !s.contains("Scope {") && s != "None",
                    "{k} holds Debug text: {l}"
                );
            }
        }
        if v["fields"]["message"] == "origin connection registered" {
            registered = true;
            assert!(
                v["fields"]["grant"].is_string() && v["fields"]["origin"].is_null(),
                "{l}"
            );
            assert!(
                v["fields"]["scopes"]
                    .as_str()
                    .is_some_and(|s| s.contains("https://")),
                "{l}"
            );
        }
    }
    assert!(registered, "no registration line in\n{text}");

    let _ = origin.kill().await;
    let _ = broken.kill().await;
    let _ = gw.child.kill().await;
    Ok(())
}

/// The access log leaves the request path in batches, written by a thread of its own at
/// most 100 ms after a request ended: the lines of the last requests before SIGTERM are in
/// the log once the gateway has exited, in either log format.
#[tokio::test]
async fn the_last_access_lines_are_written_when_the_gateway_stops() -> Result<()> {
    for format in ["json", "human"] {
        let dir = TempDir::new("access-stop");
        let log = dir.0.join("gateway.log");
        let dev = dir.0.join("dev");
        let tunnel = free_port();
        let mut gw = LoggedGateway::start(
            &dev,
            tunnel,
            &["--log-format", format, "--startup-grace", "0"],
            &log,
        )
        .await?;
        let tunnel_url = format!("https://localhost:{}", tunnel.port());
        let (mut origin, _origin_log) =
            spawn_origin(&dev, &tunnel_url, "app.localhost", &["--hello"])?;
        gw.wait_ready("app.localhost").await?;
        const N: usize = 40;
        let c = client(false);
        for i in 1..=N {
            let (res, body) = send(&c, gw.get("app.localhost", &format!("/bytes/{i}"))).await?;
            assert_eq!((res.status(), body.len()), (StatusCode::OK, i));
        }
        drop(c);
        let pid = gw
            .child
            .id()
            .ok_or_else(|| anyhow!("the gateway exited early"))?;
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        assert!(killed.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), gw.child.wait())
            .await
            .map_err(|_| anyhow!("the gateway did not stop within 30 s of SIGTERM"))??;
        assert!(exit.success(), "{format}: {exit}");
        let text = std::fs::read_to_string(&log)?;
        for i in 1..=N {
            let path = format!("/bytes/{i}");
            let found = match format {
                "json" => access_lines(&log)
                    .iter()
                    .any(|v| v["fields"]["path"] == path.as_str() && v["fields"]["status"] == 200),
                _ => text.lines().any(|l| {
                    l.contains(" INFO ptth::access: request ")
                        && l.contains(&format!(" path={path} "))
                        && l.contains(" status=200 ")
                }),
            };
            assert!(
                found,
                "{format}: no access line for {path}; the log:\n{text}"
            );
        }
        let _ = origin.kill().await;
    }
    Ok(())
}

/// An rh2 origin for `host` dialling `gateway` with the dev token and CA, its log at warn.
fn spawn_origin(
    dev: &std::path::Path,
    gateway: &str,
    host: &str,
    extra: &[&str],
) -> Result<(tokio::process::Child, LogTap)> {
    let mut child = tokio::process::Command::new(bin_dir().join("ptth-origin"))
        .args(["--gateway", gateway, "--mechanism", "rh2", "--host", host])
        .arg("--ca")
        .arg(dev.join("ca.pem"))
        .arg("--token-file")
        .arg(dev.join("token"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting ptth-origin")?;
    let log = LogTap::capture(&format!("origin {host}"), child.stderr.take());
    Ok((child, log))
}

/// A gateway whose stderr (JSON at info) goes to a file, with the tunnel on a given
/// address, so an origin can be started towards it before it runs.
struct LoggedGateway {
    child: tokio::process::Child,
    listen: SocketAddr,
}

impl LoggedGateway {
    async fn start(
        dev: &std::path::Path,
        tunnel: SocketAddr,
        extra: &[&str],
        log: &std::path::Path,
    ) -> Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(bin_dir().join("ptth-gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--tunnel",
                &tunnel.to_string(),
                "--dev",
            ])
            .arg(dev)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .kill_on_drop(true)
            .spawn()
            .context("starting ptth-gateway")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut listen = None;
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(v) = line.strip_prefix("listen=") {
                    listen = Some(v.parse()?);
                } else if line.starts_with("tunnel=") {
                    break;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .map_err(|_| anyhow!("the gateway did not report its addresses"))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let listen = listen.ok_or_else(|| anyhow!("no listen address"))?;
        Ok(Self { child, listen })
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.listen.port())
    }

    fn get(&self, host: &str, path: &str) -> Request<TestBody> {
        Request::get(self.url(host, path))
            .body(full(Bytes::new()))
            .unwrap()
    }

    async fn wait_ready(&self, host: &str) -> Result<()> {
        let c = client(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let attempt =
                tokio::time::timeout(Duration::from_secs(5), send(&c, self.get(host, "/")));
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
}

#[tokio::test]
async fn no_colour_off_a_terminal_and_config_errors_exit_2_without_a_backtrace() -> Result<()> {
    let dir = TempDir::new("observe-plain");
    let log = dir.0.join("gateway.log");
    let mut child = std::process::Command::new(bin_dir().join("ptth-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            "--dev",
        ])
        .arg(dir.0.join("dev"))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let waited = wait_for_log(&log, "gateway listening", 1, Duration::from_secs(20)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = waited?;
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log that is not a terminal:\n{text}"
    );

    for (bin, args) in [
        ("ptth-gateway", vec!["--listen", "127.0.0.1:0"]),
        (
            "ptth-origin",
            vec![
                "--gateway",
                "http://x",
                "--host",
                "a.example",
                "--token",
                "t0ken-long-enough",
                "--hello",
            ],
        ),
    ] {
        let out = tokio::process::Command::new(bin_dir().join(bin))
            .args(&args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bin}: {stderr}");
        assert!(stderr.contains("configuration error"), "{bin}: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("backtrace") && !stderr.contains("Error {"),
            "{bin} printed a backtrace or Debug text: {stderr}"
        );
        if stderr.lines().count() != 1 {
            return Err(anyhow!("{bin}: one line expected: {stderr}"));
        }
    }
    Ok(())
}
