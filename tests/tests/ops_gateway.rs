//! The gateway in production, with real processes: a restart beside its replacement that
//! loses no request, the start-up grace, `--check-config` on both binaries, and the systemd
//! notifications (READY, RELOADING, STOPPING) on a real `NOTIFY_SOCKET`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{Request, StatusCode};
use ptth_tests::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a client load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests an HTTP/2 GOAWAY turned away unprocessed and the client sent again.
    retried: AtomicU64,
    failed: Mutex<Vec<String>>,
}

/// Whether `e` is an HTTP/2 client's report that the server's graceful GOAWAY (NO_ERROR)
/// turned the request away before processing it: the request was on a stream above the
/// GOAWAY's last stream ID, or the connection had already been told to go away when the
/// pool handed it out, so it was never sent. RFC 9113 §8.7: such requests "are guaranteed
/// safe to retry", and browsers and curl do; hyper-util's pool does not. Any other error
/// (a reset, a connection that broke with the request on it) is not this.
fn refused_unprocessed_by_goaway(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
        })
    })
}

/// GET `/` and POST `/echo` (2 KiB) in turn for `host` until `until`, each answer checked.
async fn load(gw_port: u16, host: &'static str, h2: bool, until: Instant, tally: Arc<Tally>) {
    let c = client(h2);
    let payload = Bytes::from(vec![b'x'; 2048]);
    let mut i = 0u64;
    // A request turned away unprocessed is sent again, at most twice.
    let mut refusals = 0;
    while Instant::now() < until || refusals > 0 {
        if refusals == 0 {
            i += 1;
        }
        let url = |path: &str| format!("http://{host}:{gw_port}{path}");
        let (what, req, expect) = if i % 2 == 0 {
            (
                "GET",
                Request::get(url("/")).body(full(Bytes::new())).unwrap(),
                None,
            )
        } else {
            (
                "POST",
                Request::post(url("/echo-body"))
                    .body(full(payload.clone()))
                    .unwrap(),
                Some(payload.clone()),
            )
        };
        match send(&c, req).await {
            Ok((res, body))
                if res.status() == StatusCode::OK && expect.as_ref().is_none_or(|e| *e == body) =>
            {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((res, body)) => tally.failed.lock().unwrap().push(format!(
                "{what} {host} over {}: {} {:?}",
                if h2 { "h2" } else { "HTTP/1.1" },
                res.status(),
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )),
            Err(e) if h2 && refusals < 2 && refused_unprocessed_by_goaway(&e) => {
                tally.retried.fetch_add(1, Ordering::Relaxed);
                refusals += 1;
                continue;
            }
            Err(e) => tally.failed.lock().unwrap().push(format!(
                "{what} {host} over {}: {e:#}",
                if h2 { "h2" } else { "HTTP/1.1" }
            )),
        }
        refusals = 0;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_restarted_beside_its_replacement_loses_no_request() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("ops-restart");
    let mut old = Gateway::start(&dir.0, &["--shutdown-grace", "20"])
        .await
        .unwrap();
    let _o2 = Origin::start(&old, "rh2", "rh2.localhost", &[])
        .await
        .unwrap();
    let _o3 = Origin::start(&old, "rh3", "rh3.localhost", &[])
        .await
        .unwrap();
    wait_serving(&old, "rh2.localhost", 60).await.unwrap();
    wait_serving(&old, "rh3.localhost", 60).await.unwrap();

    let port = old.listen.port();
    let tally = Arc::new(Tally::default());
    let until = Instant::now() + Duration::from_secs(8);
    let mut clients = Vec::new();
    for host in ["rh2.localhost", "rh3.localhost"] {
        for h2 in [false, true] {
            for _ in 0..2 {
                clients.push(tokio::spawn(load(port, host, h2, until, tally.clone())));
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = tally.ok.load(Ordering::Relaxed);
    assert!(before > 0, "the load runs through the old gateway");

    // The new process joins the old one's ports (TCP at once; the UDP port once the old
    // one releases it), then the old one is told to stop. The start-up grace is spelled
    // out: the harness turns it off for the other tests.
    let (listen, tunnel) = (old.listen.to_string(), old.tunnel.to_string());
    let new = Gateway::start_on(&dir.0, &listen, &tunnel, &["--startup-grace", "10"])
        .await
        .unwrap();
    assert_eq!(new.listen, old.listen);
    assert_eq!(new.tunnel, old.tunnel);
    old.signal("-TERM");
    let exit = old.wait(30).await.unwrap();
    assert!(
        exit.success(),
        "the old gateway exits 0 after its drain: {exit}"
    );

    for c in clients {
        c.await.unwrap();
    }
    let failed = tally.failed.lock().unwrap().clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    let retried = tally.retried.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restart ({retried} sent again after a GOAWAY \
         turned them away unprocessed): {failed:#?}",
        failed.len(),
        ok + failed.len() as u64
    );
    assert!(
        ok > before,
        "requests went on after the old gateway stopped"
    );
    // Only the new gateway is left: both origins (rh2 over TCP, rh3 over QUIC) serve
    // through it.
    for host in ["rh2.localhost", "rh3.localhost"] {
        let (status, body) = answer(&new, host, "/").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{host} through the new gateway: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_startup_grace_a_request_waits_for_its_origin_and_after_it_does_not() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("ops-grace");
    let gw = Gateway::start(&dir.0, &["--startup-grace", "30"])
        .await
        .unwrap();
    // Sent before any origin is there: it waits instead of getting 503.
    let c = client(false);
    let early = tokio::spawn({
        let req = get(&gw, "late.localhost", "/");
        let c = c.clone();
        async move { send(&c, req).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!early.is_finished(), "the request waits for an origin");
    let _origin = Origin::start(&gw, "rh2", "late.localhost", &[])
        .await
        .unwrap();
    let (res, body) = early.await.unwrap().unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "answered once the origin registered: {}",
        String::from_utf8_lossy(&body)
    );

    // Negative twin: with a one-second grace, a host nobody serves gets the usual 503
    // (with its reason) when the grace ends, not at once and not after the queue timeout.
    let dir = TempDir::new("ops-grace-ends");
    let gw = Gateway::start(&dir.0, &["--startup-grace", "1"])
        .await
        .unwrap();
    let asked = Instant::now();
    let (status, body) = answer(&gw, "nobody.localhost", "/").await;
    let took = asked.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains(NO_ORIGIN), "{body}");
    assert!(
        took < Duration::from_secs(5),
        "the grace bounds the wait: {took:?}"
    );
    // After the grace, at once.
    let asked = Instant::now();
    assert_no_origin(&gw, "nobody.localhost", "after the grace").await;
    assert!(
        asked.elapsed() < Duration::from_millis(800),
        "{:?}",
        asked.elapsed()
    );
}

/// Runs a binary with `args` and returns (exit code, stdout, stderr).
fn run(binary: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin(binary))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn check_config_says_ok_or_why_not_on_both_binaries() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("ops-check");
    let dev = dir.0.join("dev");
    let dev = dev.to_str().unwrap();
    let gw = [
        "--listen",
        "127.0.0.1:0",
        "--tunnel",
        "127.0.0.1:0",
        "--dev",
        dev,
        "--check-config",
    ];
    let (code, out, err) = run("ptth-gateway", &gw);
    assert_eq!((code, out.trim()), (0, "config ok"), "{err}");
    // A certificate file that is not PEM: refused, with the file named.
    let bad = dir.0.join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let bad = bad.to_str().unwrap();
    let (code, out, err) = run(
        "ptth-gateway",
        &[
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            "--token",
            "0123456789abcdef0123456789abcdef",
            "--cert",
            bad,
            "--key",
            bad,
            "--check-config",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("config ok"), "{out}");
    assert!(
        err.contains("config error") && err.contains("bad.pem"),
        "{err}"
    );

    let ca = format!("{dev}/ca.pem");
    let origin = |token: &str| {
        run(
            "ptth-origin",
            &[
                "--gateway",
                "https://localhost:1",
                "--mechanism",
                "rh2",
                "--host",
                "app.localhost",
                "--ca",
                &ca,
                "--token",
                token,
                "--hello",
                "--check-config",
            ],
        )
    };
    let (code, out, err) = origin("0123456789abcdef0123456789abcdef");
    assert_eq!((code, out.trim()), (0, "config ok"), "{err}");
    let missing = format!("{dev}/missing-ca.pem");
    let (code, out, err) = run(
        "ptth-origin",
        &[
            "--gateway",
            "https://localhost:1",
            "--mechanism",
            "rh2",
            "--host",
            "app.localhost",
            "--ca",
            &missing,
            "--token",
            "0123456789abcdef0123456789abcdef",
            "--hello",
            "--check-config",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("config error") && err.contains("missing-ca.pem"),
        "{err}"
    );
}

/// Receives the next notification on `sock` (10 s at most).
async fn next(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), sock.recv(&mut buf))
        .await
        .expect("a notification arrives")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn systemd_hears_ready_reloading_and_stopping() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("ops-notify");
    let path = dir.0.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
    let dev = dir.0.join("dev");
    let mut gw = tokio::process::Command::new(bin("ptth-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            "--dev",
        ])
        .arg(&dev)
        .env("NOTIFY_SOCKET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = gw.id().unwrap();
    assert_eq!(next(&sock).await.trim(), "READY=1");
    signal(pid, "-HUP");
    let reloading = next(&sock).await;
    assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    assert_eq!(next(&sock).await.trim(), "READY=1", "after the reload");
    signal(pid, "-TERM");
    assert_eq!(next(&sock).await.trim(), "STOPPING=1");
    let exit = tokio::time::timeout(Duration::from_secs(30), gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");

    // The origin: READY when it starts dialling, STOPPING on SIGTERM.
    let gateway = Gateway::start(&dev, &[]).await.unwrap();
    let mut origin = tokio::process::Command::new(bin("ptth-origin"))
        .args(["--gateway", &gateway.tunnel_url()])
        .args([
            "--mechanism",
            "rh2",
            "--host",
            "notify.localhost",
            "--hello",
        ])
        .arg("--ca")
        .arg(dev.join("ca.pem"))
        .arg("--token-file")
        .arg(dev.join("token"))
        .env("NOTIFY_SOCKET", &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert_eq!(next(&sock).await.trim(), "READY=1");
    wait_serving(&gateway, "notify.localhost", 60)
        .await
        .unwrap();
    signal(origin.id().unwrap(), "-TERM");
    assert_eq!(next(&sock).await.trim(), "STOPPING=1");
    let exit = tokio::time::timeout(Duration::from_secs(40), origin.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
}

/// An HTTP/1.1 upstream for `ptth-origin --upstream` that records `<METHOD> <path>` of every
/// request and holds each one until the test releases this upstream.
#[derive(Clone)]
struct Holding {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    arrived: Arc<tokio::sync::Notify>,
    release: tokio::sync::watch::Sender<bool>,
}

impl Holding {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let this = Self {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            arrived: Arc::default(),
            release: tokio::sync::watch::Sender::new(false),
        };
        let me = this.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let me = me.clone();
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let me = me.clone();
                    async move {
                        let what = format!("{} {}", req.method(), req.uri().path());
                        me.seen.lock().unwrap().push(what);
                        me.arrived.notify_waiters();
                        let mut released = me.release.subscribe();
                        let _ = tokio::time::timeout(
                            Duration::from_secs(60),
                            released.wait_for(|r| *r),
                        )
                        .await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"released")),
                        ))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        this
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// Waits (20 s at most) until one of `upstreams` has seen `what`, and returns which.
async fn arrival(upstreams: &[&Holding], what: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waits: Vec<_> = upstreams.iter().map(|u| u.arrived.notified()).collect();
        let mut waits: Vec<_> = waits.into_iter().map(Box::pin).collect();
        for w in &mut waits {
            w.as_mut().enable();
        }
        if let Some(k) = upstreams
            .iter()
            .position(|u| u.seen().iter().any(|s| s == what))
        {
            return k;
        }
        let any = futures_util::future::select_all(waits);
        assert!(
            tokio::time::timeout_at(deadline, any).await.is_ok(),
            "no upstream saw {what:?}"
        );
    }
}

/// An origin for `retry.localhost` proxying to `upstream`.
async fn retry_origin(gw: &Gateway, upstream: &Holding) -> Origin {
    Origin::start(
        gw,
        "rh2",
        "retry.localhost",
        &["--upstream", &upstream.url(), "--connections", "1"],
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_origin_dies_before_answering_is_retried_and_a_post_is_not() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("ops-retry");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let ups = [Holding::start().await, Holding::start().await];
    let mut origins = [
        retry_origin(&gw, &ups[0]).await,
        retry_origin(&gw, &ups[1]).await,
    ];
    // Both origins registered: two requests held at once reach both upstreams.
    let c = client(false);
    let probe = |path: &str| {
        let (c, req) = (c.clone(), get(&gw, "retry.localhost", path));
        tokio::spawn(async move { send(&c, req).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut k = 0;
    while ups.iter().any(|u| u.seen().is_empty()) {
        assert!(Instant::now() < deadline, "both origins never served");
        k += 1;
        let held = [probe(&format!("/probe{k}")), probe(&format!("/probe{k}"))];
        tokio::time::sleep(Duration::from_millis(300)).await;
        for u in &ups {
            u.release.send_replace(true);
        }
        for h in held {
            let _ = h.await;
        }
        for u in &ups {
            u.release.send_replace(false);
        }
    }

    // A GET reaches one origin; that origin dies before any answer; the gateway sends the
    // GET to the other one, which answers.
    let get_task = probe("/get");
    let first = arrival(&[&ups[0], &ups[1]], "GET /get").await;
    let other = 1 - first;
    origins[first].kill().await;
    assert_eq!(arrival(&[&ups[other]], "GET /get").await, 0);
    ups[other].release.send_replace(true);
    let (res, body) = tokio::time::timeout(Duration::from_secs(30), get_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (res.status(), &body[..]),
        (StatusCode::OK, &b"released"[..])
    );
    ups[other].release.send_replace(false);

    // Negative twin: the same with a POST that has a body: a 502, and the other origin
    // never sees it.
    origins[first] = retry_origin(&gw, &ups[first]).await;
    let before = ups[first].seen().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The restarted origin serves again: a probe held at the other upstream makes the next
    // one go to it.
    while ups[first].seen().len() == before {
        assert!(
            Instant::now() < deadline,
            "the restarted origin never served"
        );
        let held = [probe("/again"), probe("/again")];
        tokio::time::sleep(Duration::from_millis(300)).await;
        for u in &ups {
            u.release.send_replace(true);
        }
        for h in held {
            let _ = h.await;
        }
        for u in &ups {
            u.release.send_replace(false);
        }
    }
    let post = Request::post(url(&gw, "retry.localhost", "/post"))
        .body(full(Bytes::from_static(b"not twice")))
        .unwrap();
    let post_task = {
        let c = c.clone();
        tokio::spawn(async move { send(&c, post).await })
    };
    let hit = arrival(&[&ups[0], &ups[1]], "POST /post").await;
    origins[hit].kill().await;
    let (res, body) = tokio::time::timeout(Duration::from_secs(30), post_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::BAD_GATEWAY,
        "{}",
        String::from_utf8_lossy(&body)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !ups[1 - hit].seen().iter().any(|s| s == "POST /post"),
        "the POST must not be sent to the other origin: {:?}",
        ups[1 - hit].seen()
    );
}
