//! Library mode: an axum `Router` served through `ptth_origin::Origin` in this process,
//! reached through a real gateway process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::Path;
use axum::routing::{get as route_get, post};
use axum::Router;
use http::StatusCode;
use ptth_origin::{Origin, OriginConfig};
use ptth_tests::*;

/// The grace period the origins are given; `/slow` needs one second of it.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_is_served_over_every_tcp_mechanism() {
    serve_then_shut_down("axum", TCP_MECHANISMS, TCP_MECHANISMS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_mode_shutdown_finishes_a_connect_h2_request_in_flight() {
    serve_then_shut_down("axum-connect", &["connect-h2"], &["connect-h2"]).await;
}

/// Serves an axum router over each of `mechanisms` in this process, checks it end to end,
/// then shuts every `serve` down with a request in flight on each: `serve` must return Ok
/// within the grace period, the requests on the mechanisms in `finish` must complete, and
/// nothing is served afterwards.
async fn serve_then_shut_down(name: &str, mechanisms: &[&str], finish: &[&str]) {
    let dir = TempDir::new(name);
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    // `/slow` says when it starts (so the test knows a request is in flight at the origin)
    // and answers a second later.
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel::<()>();
    let app = Router::new()
        .route(
            "/slow",
            route_get(move || {
                let _ = entered_tx.send(());
                async {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    "slow done"
                }
            }),
        )
        .route(
            "/hi/{name}",
            route_get(|Path(n): Path<String>| async move { format!("hi {n}") }),
        )
        .route(
            "/len",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut serving = Vec::new();
    let mut statuses = Vec::new();
    for m in mechanisms {
        let mut config = OriginConfig::new(
            gw.tunnel_url().parse().unwrap(),
            m.parse().unwrap(),
            vec![format!("axum-{m}.localhost")],
            Some(ptth_auth::BearerToken::new(gw.token()).unwrap()),
        );
        config.ca = Some(dir.0.join("ca.pem"));
        config.shutdown_grace = GRACE;
        if *m == "h2-reverse" {
            config.client_cert = Some(dir.0.join("origin.pem"));
            config.client_key = Some(dir.0.join("origin.key"));
        }
        let origin = Origin::new(config).unwrap();
        statuses.push(origin.status());
        let mut rx = stop_rx.clone();
        serving.push(tokio::spawn(origin.serve(app.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }
    let c = client(true);
    for m in mechanisms {
        let host = format!("axum-{m}.localhost");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (res, body) = send(&c, get(&gw, &host, "/hi/there")).await.unwrap();
            if res.status() == StatusCode::OK {
                assert_eq!(&body[..], b"hi there", "{m}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{m}: {}",
                res.status()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let req = http::Request::post(url(&gw, &host, "/len"))
            .body(full(vec![1u8; 123_456]))
            .unwrap();
        let (res, body) = send(&c, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m}");
        assert_eq!(&body[..], b"123456", "{m}");
    }
    // Each origin's status says it is registered with its one gateway.
    for (m, status) in mechanisms.iter().zip(&mut statuses) {
        let registered = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            status.wait_for(|s| s.all_registered()),
        )
        .await
        .map(|s| s.map(|s| s.clone()));
        let s = match registered {
            Ok(Ok(s)) => s,
            _ => panic!("{m}: never registered: {:?}", *status.borrow()),
        };
        assert_eq!(s.gateways.len(), 1, "{m}: {s:?}");
        assert_eq!(s.gateways[0].gateway, gw.tunnel_url() + "/", "{m}: {s:?}");
    }
    // Shutdown: with a request in flight on every mechanism, `serve` stops taking requests,
    // lets those finish, and returns Ok.
    let slow: Vec<_> = mechanisms
        .iter()
        .map(|m| {
            let (c, req) = (c.clone(), get(&gw, &format!("axum-{m}.localhost"), "/slow"));
            tokio::spawn(async move { send(&c, req).await })
        })
        .collect();
    for _ in mechanisms {
        tokio::time::timeout(std::time::Duration::from_secs(30), entered.recv())
            .await
            .expect("every slow request reaches its origin")
            .unwrap();
    }
    stop_tx.send(true).unwrap();
    let stopped = tokio::time::Instant::now();
    for (m, serve) in mechanisms.iter().zip(serving) {
        tokio::time::timeout_at(stopped + GRACE, serve)
            .await
            .unwrap_or_else(|_| panic!("{m}: serve did not return within the grace period"))
            .unwrap()
            .unwrap_or_else(|e| panic!("{m}: serve failed: {e:#}"));
    }
    let mut cut = Vec::new();
    for (m, slow) in mechanisms.iter().zip(slow) {
        let (res, body) = slow.await.unwrap().unwrap();
        if finish.contains(m) && (res.status(), &body[..]) != (StatusCode::OK, &b"slow done"[..]) {
            cut.push(format!(
                "{m}: {} {}",
                res.status(),
                String::from_utf8_lossy(&body)
            ));
        }
    }
    assert!(cut.is_empty(), "requests in flight were cut: {cut:#?}");
    // Nothing is registered any more ...
    for (m, status) in mechanisms.iter().zip(&statuses) {
        let s = status.borrow().clone();
        assert!(!s.any_registered(), "{m}: {s:?}");
    }
    // ... and nothing is served.
    for m in mechanisms {
        assert_no_origin(&gw, &format!("axum-{m}.localhost"), "after serve returned").await;
    }
}

/// `OriginConfig::workers`: the reversed connections, and the requests on them, run on the
/// origin's worker threads (one connection each here), not on the caller's runtime; and
/// `serve` still returns once stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_dealt_out_over_the_workers() {
    let dir = TempDir::new("workers");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let app = Router::new().route(
        "/thread",
        route_get(|| async {
            // A task the handler spawns stays on its worker too.
            let spawned = tokio::spawn(async { std::thread::current().name().map(String::from) })
                .await
                .unwrap();
            format!(
                "{} {}",
                std::thread::current().name().unwrap_or("unnamed"),
                spawned.as_deref().unwrap_or("unnamed")
            )
        }),
    );
    let mut config = OriginConfig::new(
        gw.tunnel_url().parse().unwrap(),
        "rh2".parse().unwrap(),
        vec!["workers.localhost".to_string()],
        Some(ptth_auth::BearerToken::new(gw.token()).unwrap()),
    );
    config.ca = Some(dir.0.join("ca.pem"));
    config.connections = 2;
    config.workers = Some(2);
    let origin = Origin::new(config).unwrap();
    let mut status = origin.status();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(origin.serve(app, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        status.wait_for(|s| s.gateways.iter().all(|g| g.registered == 2)),
    )
    .await
    .expect("both connections register")
    .unwrap();
    let c = client(true);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (res, body) = send(&c, get(&gw, "workers.localhost", "/thread"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        let (ran, spawned) = text.split_once(' ').unwrap();
        assert!(ran.starts_with("ptth-worker-"), "handler ran on {ran:?}");
        assert_eq!(ran, spawned, "a spawned task left its worker");
        seen.insert(ran.to_string());
    }
    assert!(!seen.is_empty());
    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), serving)
        .await
        .expect("serve returns once stopped")
        .unwrap()
        .unwrap();
}
