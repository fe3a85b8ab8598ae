//! The origin in production, with real processes: rolling restarts under load lose no
//! request, origins follow a gateway that goes away, and a clean stop logs no false alarm.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::StatusCode;
use ptth_tests::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the load runs while origins are rolled.
const LOAD_FOR: Duration = Duration::from_secs(8);
/// How often one origin is replaced.
const ROLL_EVERY: Duration = Duration::from_millis(1500);
/// Concurrent public clients.
const CLIENTS: usize = 12;
/// The size of every GET answer and POST body.
const BODY: usize = 2048;

/// Waits until a gateway that was sent SIGTERM no longer accepts on its ports.
async fn wait_gone(gw: &Gateway) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for addr in [gw.listen, gw.tunnel] {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the gateway still accepts on {addr} 30 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What `/bytes/{n}` of the demo service sends: byte `i` is `i % 251`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_rh2_origins_loses_no_request() {
    let _one_at_a_time = load_test_lock().await;
    rolling_restart("rh2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_rh1_origins_loses_no_request() {
    let _one_at_a_time = load_test_lock().await;
    rolling_restart("rh1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_upgrade_h1_origins_loses_no_request() {
    let _one_at_a_time = load_test_lock().await;
    rolling_restart("upgrade-h1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_rh3_origins_loses_no_request() {
    let _one_at_a_time = load_test_lock().await;
    rolling_restart("rh3").await;
}

/// One gateway, three origins of one host over `mechanism`; public clients send GETs and
/// POSTs with 2 KiB bodies while one origin after another gets SIGTERM, its replacement
/// started as it drains. Every request must get 200 with the right body, and every stopped
/// origin must exit cleanly.
async fn rolling_restart(mechanism: &str) {
    let dir = TempDir::new(&format!("roll-{mechanism}"));
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let host = format!("roll-{mechanism}.localhost");
    let extra = ["--shutdown-grace", "10"];
    let mut origins = std::collections::VecDeque::new();
    for _ in 0..3 {
        origins.push_back(Origin::start(&gw, mechanism, &host, &extra).await.unwrap());
    }
    wait_ready(&gw, &host).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let gw = Arc::new(gw);
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let (gw, host, stop, ok, failures) = (
            gw.clone(),
            host.clone(),
            stop.clone(),
            ok.clone(),
            failures.clone(),
        );
        clients.push(tokio::spawn(async move {
            // Half the clients speak HTTP/1.1 to the gateway, half HTTP/2.
            let c = client(n % 2 == 1);
            let expected = pattern(BODY);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (what, req, want) = if i % 2 == 0 {
                    let body: Vec<u8> = (0..BODY).map(|b| (b * 7 + n + i) as u8).collect();
                    let req = http::Request::post(url(&gw, &host, "/echo-body"))
                        .body(full(body.clone()))
                        .unwrap();
                    ("POST /echo-body", req, Bytes::from(body))
                } else {
                    let req = get(&gw, &host, &format!("/bytes/{BODY}"));
                    ("GET /bytes", req, Bytes::from(expected.clone()))
                };
                match tokio::time::timeout(Duration::from_secs(20), send(&c, req)).await {
                    Ok(Ok((res, body))) if res.status() == StatusCode::OK && body == want => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok((res, body))) => failures.lock().unwrap().push(format!(
                        "{what}: {} with {} bytes: {}",
                        res.status(),
                        body.len(),
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Ok(Err(e)) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{what}: transport error {e:#}")),
                    Err(_) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{what}: no answer within 20 s")),
                }
            }
        }));
    }

    // Roll: start the replacement, then SIGTERM the oldest, which drains while the load runs.
    let started = tokio::time::Instant::now();
    let mut stopping = Vec::new();
    let mut rolled = 0;
    while started.elapsed() < LOAD_FOR {
        tokio::time::sleep(ROLL_EVERY).await;
        origins.push_back(Origin::start(&gw, mechanism, &host, &extra).await.unwrap());
        let mut old = origins.pop_front().unwrap();
        rolled += 1;
        stopping.push(tokio::spawn(async move {
            let status = old.terminate().await;
            (status, old.log.text())
        }));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("a client finished its last request")
            .unwrap();
    }
    for s in stopping {
        let (status, log) = s.await.unwrap();
        let status = status.unwrap();
        assert!(
            status.success(),
            "a SIGTERMed origin exited with {status}; its log:\n{log}"
        );
    }
    let ok = ok.load(Ordering::Relaxed);
    let failures = failures.lock().unwrap();
    eprintln!(
        "{mechanism}: {ok} requests answered correctly, {} failed, {rolled} origins rolled",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{mechanism}: {} of {} requests failed while {rolled} origins were rolled: {:#?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(20)]
    );
    assert!(ok >= 100, "{mechanism}: only {ok} requests in {LOAD_FOR:?}");
    assert!(rolled >= 4, "{mechanism}: only {rolled} origins rolled");
}

/// Mechanisms whose clean stop must log nothing at warn: one of each HTTP version and setup.
const QUIET_STOP: &[&str] = &["rh1", "rh2", "upgrade-h1", "connect-h2", "rh3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_sigterm_of_an_origin_logs_no_warning() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("quiet-stop");
    let gw = Arc::new(Gateway::start(&dir.0, &[]).await.unwrap());
    for m in QUIET_STOP {
        let host = format!("quiet-{m}.localhost");
        let (mut origin, mut logs) = Origin::start_logged(&gw, m, &host, &["--connections", "4"])
            .await
            .unwrap();
        wait_ready(&gw, &host).await.unwrap();
        // Traffic up to the stop, so connections are busy and idle as the stop comes.
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (gw, host, stop) = (gw.clone(), host.clone(), stop.clone());
            tokio::spawn(async move {
                let c = client(true);
                while !stop.load(Ordering::Relaxed) {
                    let _ = send(&c, get(&gw, &host, "/bytes/2048")).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = origin.terminate().await.unwrap();
        stop.store(true, Ordering::Relaxed);
        load.await.unwrap();
        assert!(status.success(), "{m}: exit status {status}");
        logs.wait_for("stopped", Duration::from_secs(10))
            .await
            .unwrap();
        // The positive twin of "no warning": the log was read, and it has the stop's lines.
        assert!(
            logs.seen().iter().any(|l| l.contains("shutting down")),
            "{m}: {:#?}",
            logs.seen()
        );
        let warnings: Vec<_> = logs
            .seen()
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        assert!(
            warnings.is_empty(),
            "{m}: a clean stop warned: {warnings:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_origin_never_logs_its_connection_up() {
    let _one_at_a_time = load_test_lock().await;
    // The gateway grants a.localhost only; an rh2 origin claiming b.localhost with that
    // token is refused after its answer to the authorisation request.
    let dir = TempDir::new("refused-up");
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        "[[grant]]\nname = \"team-a\"\ntoken = \"token-a\"\norigins = [\"https://a.localhost\"]\npaths = [\"/\"]\n",
    )
    .unwrap();
    let gw = Gateway::start(&dir.0, &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    for m in ["rh2", "rh1", "rh3"] {
        let (_refused, mut logs) =
            Origin::start_logged(&gw, m, "b.localhost", &["--token", "token-a"])
                .await
                .unwrap();
        let refusal = logs
            .wait_for("right after our answer", Duration::from_secs(30))
            .await;
        // Its twin with the right host is admitted and says so.
        let (_admitted, mut twin) =
            Origin::start_logged(&gw, m, "a.localhost", &["--token", "token-a"])
                .await
                .unwrap();
        twin.wait_for("connection up", Duration::from_secs(30))
            .await
            .unwrap();
        wait_ready(&gw, "a.localhost").await.unwrap();
        let refusal = refusal.unwrap();
        assert!(refusal.contains("WARN"), "{m}: {refusal}");
        assert!(
            !logs.seen().iter().any(|l| l.contains("connection up")),
            "{m}: the refused origin logged its connection up: {:#?}",
            logs.seen()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_stopping_is_not_reported_as_a_refusal() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("gw-stop-quiet");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let mut origins = Vec::new();
    for m in ["rh1", "rh2", "rh3"] {
        let host = format!("gw-stop-{m}.localhost");
        // Four connections: the test's one request uses one, the others see nothing but the
        // authorisation exchange before the gateway goes.
        let (o, mut logs) = Origin::start_logged(&gw, m, &host, &["--connections", "4"])
            .await
            .unwrap();
        wait_ready(&gw, &host).await.unwrap();
        logs.wait_for("connection up", Duration::from_secs(10))
            .await
            .unwrap();
        origins.push((m, o, logs));
    }
    gw.signal("-TERM");
    wait_gone(&gw).await;
    for (m, _o, mut logs) in origins {
        // The origin noticed (it dials again, and the gateway is gone) ...
        let _ = logs
            .wait_for("connection to the gateway failed", Duration::from_secs(5))
            .await;
        assert!(
            logs.seen().len() > 1,
            "{m}: the origin logged nothing after the gateway left"
        );
        // ... and did not take the gateway's exit for a refusal.
        let refusals: Vec<_> = logs
            .seen()
            .iter()
            .filter(|l| l.contains("right after our answer"))
            .collect();
        assert!(refusals.is_empty(), "{m}: {refusals:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_origins_move_to_a_restarted_gateway_within_a_second() {
    let _one_at_a_time = load_test_lock().await;
    gateway_restart(&["rh1", "rh2", "upgrade-h1", "connect-h2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_origins_move_to_a_restarted_gateway_within_a_second() {
    let _one_at_a_time = load_test_lock().await;
    gateway_restart(&["rh3", "connect-h3"]).await;
}

/// Origins over `mechanisms`, connected long enough to be healthy; the gateway is stopped
/// with SIGTERM and, after a gap as a restart has (the old process exiting, the new one
/// starting), a new one listens on the same ports: every origin must be served through it
/// within about a second of it listening.
async fn gateway_restart(mechanisms: &[&str]) {
    let dir = TempDir::new("gw-restart");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let (listen, tunnel) = (gw.listen.to_string(), gw.tunnel.to_string());
    let mut origins = Vec::new();
    for m in mechanisms {
        let host = format!("move-{m}.localhost");
        origins.push(Origin::start(&gw, m, &host, &[]).await.unwrap());
        wait_ready(&gw, &host).await.unwrap();
    }
    // Long-lived connections, as in production: the backoff was reset by a healthy one.
    tokio::time::sleep(Duration::from_secs(5)).await;
    gw.signal("-TERM");
    wait_gone(&gw).await;
    // While no gateway listens, the origins' dials fail; a backoff that kept doubling
    // (0.1, 0.2, 0.4, 0.8, 1.6 s ...) would next try well after the new one listens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The old process may hold its sockets a moment after it stopped accepting.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let new = loop {
        match Gateway::start_on(&dir.0, &listen, &tunnel, &[]).await {
            Ok(g) => break g,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("no new gateway on the old ports: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let started = tokio::time::Instant::now();
    let mut each = Vec::new();
    for m in mechanisms {
        let host = format!("move-{m}.localhost");
        wait_serving(&new, &host, 10).await.unwrap();
        each.push((m, started.elapsed()));
    }
    let took = started.elapsed();
    eprintln!("every origin served through the new gateway {took:?} after it started: {each:?}");
    // Within about a second: after losing a registered connection, the origin's backoff
    // steps stay at most 1 s (and the dial and setup take a little more on a busy machine).
    assert!(
        took < Duration::from_millis(1800),
        "the origins took {took:?} to register with the new gateway: {each:?}"
    );
    drop(origins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_serves_through_each_of_several_gateways() {
    let _one_at_a_time = load_test_lock().await;
    let dir = TempDir::new("two-gateways");
    // Both gateways from one dev directory: one CA and one token.
    let first = Gateway::start(&dir.0, &[]).await.unwrap();
    let mut second = Gateway::start(&dir.0, &[]).await.unwrap();
    let mut origins = Vec::new();
    for m in ["rh2", "rh1", "rh3"] {
        let host = format!("both-{m}.localhost");
        let (origin, mut logs) = Origin::start_logged(
            &first,
            m,
            &host,
            &["--gateway", &second.tunnel_url(), "--connections", "2"],
        )
        .await
        .unwrap();
        wait_serving(&first, &host, 30).await.unwrap();
        wait_serving(&second, &host, 30).await.unwrap();
        // Each gateway's connections are logged with its URL.
        for gw in [&first, &second] {
            let url = format!("https://localhost:{}/", gw.tunnel.port());
            let line = logs
                .wait_for(&url, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("{m}: no line names {url}: {e:#}"));
            assert!(line.contains("connection up"), "{m}: {line}");
        }
        origins.push(origin);
    }
    // One gateway gone costs nothing on the other, right after the connections opened.
    // (This once needed a second's wait: the origins' logs were dropped above, and each
    // line an origin logged after that panicked the task that logged it, losing
    // connections to this gateway. `closed_stderr.rs` holds that.)
    second.kill().await;
    for m in ["rh2", "rh1", "rh3"] {
        let host = format!("both-{m}.localhost");
        for _ in 0..20 {
            let (status, body) = answer(&first, &host, "/").await;
            assert_eq!(status, StatusCode::OK, "{m}: {body}");
        }
    }
}
