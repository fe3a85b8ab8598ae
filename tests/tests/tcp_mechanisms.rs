//! End-to-end behaviour of every TCP mechanism: real gateway and origin processes, real TLS,
//! real public clients on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use ptth_origin::service::hello::pattern_sha256;
use ptth_tests::*;
use std::time::Duration;

/// A lazily generated request body of `n` pattern bytes (byte i = i % 251), in 64 KiB chunks.
fn pattern_body(n: u64) -> TestBody {
    const CHUNK: u64 = 64 * 1024;
    let chunks = n.div_ceil(CHUNK);
    let stream = futures_util::stream::iter((0..chunks).map(move |c| {
        let start = c * CHUNK;
        let len = CHUNK.min(n - start);
        let data: Vec<u8> = (start..start + len).map(|i| (i % 251) as u8).collect();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(Bytes::from(data)))
    }));
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

fn echo_json(n: u64) -> String {
    format!("\"bytes\":{n},\"sha256\":\"{}\"", pattern_sha256(n))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_size_round_trip_on_every_mechanism() {
    let fleet = Fleet::start("bodies", TCP_MECHANISMS).await.unwrap();
    let gw = &fleet.gateway;
    let h1 = client(false);
    let h2 = client(true);
    for m in TCP_MECHANISMS {
        let host = format!("{m}.localhost");
        let (res, body) = send(&h1, get(gw, &host, "/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m}");
        assert!(
            res.headers()
                .get("via")
                .is_some_and(|v| v.to_str().unwrap().contains("ptth")),
            "{m}: the gateway adds Via"
        );
        let page = String::from_utf8_lossy(&body);
        assert!(page.contains("ptth hello"), "{m}: {page}");
        assert!(
            page.contains("for=127.0.0.1"),
            "{m}: Forwarded reaches the origin: {page}"
        );

        for (n, c) in [
            (0u64, &h1),
            (0, &h2),
            (1 << 20, &h1),
            (1 << 20, &h2),
            (100 << 20, &h2),
        ] {
            let req = Request::post(url(gw, &host, "/echo"))
                .body(pattern_body(n))
                .unwrap();
            let (res, body) = send(c, req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{m} upload {n}");
            let json = String::from_utf8_lossy(&body);
            assert!(json.contains(&echo_json(n)), "{m} upload {n}: {json}");
        }
        let n = 100u64 << 20;
        let res = h1
            .request(get(gw, &host, &format!("/bytes/{n}")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m}");
        let mut body = res.into_body();
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len() as u64;
                sha2::Digest::update(&mut hasher, &data);
            }
        }
        let hex: String = sha2::Digest::finalize(hasher)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(total, n, "{m} download length");
        assert_eq!(hex, pattern_sha256(n), "{m} download hash");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_trailers_and_websocket_stream_through_every_mechanism() {
    let fleet = Fleet::start("stream", TCP_MECHANISMS).await.unwrap();
    let gw = &fleet.gateway;
    let h2 = client(true);
    for m in TCP_MECHANISMS {
        let host = format!("{m}.localhost");

        // SSE: the second event comes a minute after the first, so seeing the first one
        // within seconds of sending the request, from each public HTTP version, proves the
        // gateway streams instead of buffering the response.
        assert_sse_streams(gw, &host, m).await;

        // Trailers (gRPC style) reach an HTTP/2 client that asked for them.
        let mut req = get(gw, &host, "/trailers");
        req.headers_mut()
            .insert("te", http::HeaderValue::from_static("trailers"));
        let res = h2.request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m}");
        let collected = res.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
            Some("0"),
            "{m}: trailers {trailers:?}"
        );
        assert_eq!(&collected.to_bytes()[..], b"hello trailers", "{m}");

        // WebSocket from a public HTTP/1.1 client, over reversed HTTP/1.1 or RFC 8441.
        let url = format!("ws://{}/ws", gw.listen);
        let mut wsreq =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        wsreq
            .headers_mut()
            .insert("host", http::HeaderValue::from_str(&host).unwrap());
        let (mut ws, resp) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(wsreq),
        )
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{m}: websocket handshake: {e}"));
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS, "{m}");
        for i in 0..3 {
            let msg = format!("ping {i} over {m}");
            ws.send(tokio_tungstenite::tungstenite::Message::text(msg.clone()))
                .await
                .unwrap();
            let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(echo.into_text().unwrap().as_str(), msg, "{m}");
        }
        ws.close(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_on_every_mechanism() {
    let fleet = Fleet::start("concurrent", TCP_MECHANISMS).await.unwrap();
    let gw = &fleet.gateway;
    for m in TCP_MECHANISMS {
        let host = format!("{m}.localhost");
        let h2 = client(true);
        let mut tasks = Vec::new();
        for i in 0..100u64 {
            let h2 = h2.clone();
            let req = Request::post(url(gw, &host, "/echo"))
                .body(pattern_body(1000 + i))
                .unwrap();
            tasks.push(tokio::spawn(async move { send(&h2, req).await }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let (res, body) = t.await.unwrap().unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{m} request {i}");
            assert!(
                String::from_utf8_lossy(&body).contains(&echo_json(1000 + i as u64)),
                "{m} request {i}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_dying_mid_request_costs_that_request_a_502_only() {
    let mut fleet = Fleet::start("kill", TCP_MECHANISMS).await.unwrap();
    let h1 = client(false);
    for i in 0..fleet.origins.len() {
        let m = fleet.origins[i].0.clone();
        let host = format!("{m}.localhost");
        let gw = &fleet.gateway;
        // A neighbour on another origin, in flight across the death: an upload the test
        // holds open, echoed back chunk by chunk.
        let other = fleet.origins[(i + 1) % fleet.origins.len()].0.clone();
        let neighbour = Neighbour::open(gw, &format!("{other}.localhost")).await;
        let slow = tokio::spawn({
            let h1 = h1.clone();
            let req = get(gw, &host, "/slow?ms=10000");
            async move { send(&h1, req).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        fleet.origins[i].1.kill().await;
        let (res, body) = slow.await.unwrap().unwrap();
        assert_eq!(
            res.status(),
            StatusCode::BAD_GATEWAY,
            "{m}: {}",
            String::from_utf8_lossy(&body)
        );
        // The neighbour was not disturbed: its upload goes on and ends cleanly.
        neighbour.finish().await;
        // A new origin process connects and the next request succeeds.
        fleet.origins[i].1 = Origin::start(gw, &m, &host, &[]).await.unwrap();
        wait_ready(gw, &host).await.unwrap();

        // Dying mid-body: the client must see an error, never a short body passed off as
        // complete.
        let res = h1
            .request(get(gw, &host, &format!("/bytes/{}", 200u64 << 20)))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m}");
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data(), "{m}");
        fleet.origins[i].1.kill().await;
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match body.frame().await {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{m}: the truncated body never ended"));
        assert!(outcome.is_err(), "{m}: a truncated body ended cleanly");
        fleet.origins[i].1 = Origin::start(gw, &m, &host, &[]).await.unwrap();
        wait_ready(gw, &host).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_reconnect_after_the_gateway_restarts() {
    let mut fleet = Fleet::start("restart", TCP_MECHANISMS).await.unwrap();
    let (listen, tunnel) = (fleet.gateway.listen, fleet.gateway.tunnel);
    fleet.gateway.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    fleet.gateway = Gateway::start_on(&fleet.dir.0, &listen.to_string(), &tunnel.to_string(), &[])
        .await
        .unwrap();
    for m in TCP_MECHANISMS {
        wait_ready(&fleet.gateway, &format!("{m}.localhost"))
            .await
            .unwrap_or_else(|e| panic!("{m}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_and_paths_get_503_with_retry_after() {
    let dir = TempDir::new("scope");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _api = Origin::start(&gw, "rh2", "app.localhost", &["--path", "/api"])
        .await
        .unwrap();
    let h1 = client(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (res, _) = send(&h1, get(&gw, "app.localhost", "/api/")).await.unwrap();
        if res.status() == StatusCode::NOT_FOUND {
            break; // the hello service answered: the origin is there
        }
        assert!(tokio::time::Instant::now() < deadline, "origin never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (host, path) in [
        ("nobody.localhost", "/"),
        ("app.localhost", "/apix"),
        ("app.localhost", "/"),
        ("app.localhost", "/admin"),
    ] {
        let (res, body) = send(&h1, get(&gw, host, path)).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{host}{path}"
        );
        assert!(res.headers().contains_key("retry-after"), "{host}{path}");
        assert!(!body.is_empty(), "a reason is given");
    }
    // Dot segments cannot climb out of the prefix: the gateway refuses them (docs/security.md).
    for path in ["/api/../admin", "/api/./x", "/api/%2e%2e/admin"] {
        let (res, body) = send(&h1, get(&gw, "app.localhost", path)).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::BAD_REQUEST,
            "{path} must be refused, not routed: {}",
            String::from_utf8_lossy(&body)
        );
        assert!(
            String::from_utf8_lossy(&body).contains("dot segment"),
            "{path}: the reason: {body:?}"
        );
    }
    let (res, _) = send(&h1, get(&gw, "APP.localhost", "/api/x"))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "host matching ignores case"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_potato_token_set_works() {
    let dir = TempDir::new("potato");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let mut origins = Vec::new();
    for set in ["potato-00", "potato-01", "potato-02"] {
        for m in ["rh1", "rh2"] {
            let host = format!("{m}-{set}.localhost");
            origins.push(
                Origin::start(&gw, m, &host, &["--alpn-set", set])
                    .await
                    .unwrap(),
            );
            wait_ready(&gw, &host)
                .await
                .unwrap_or_else(|e| panic!("{m} {set}: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let dir = TempDir::new("drain");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    for m in ["rh2", "upgrade-h1"] {
        let host = format!("{m}.localhost");
        let mut origin = Origin::start(&gw, m, &host, &[]).await.unwrap();
        wait_ready(&gw, &host).await.unwrap();
        let h1 = client(false);
        let slow = tokio::spawn({
            let req = get(&gw, &host, "/slow?ms=1500");
            async move { send(&h1, req).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = origin.terminate().await.unwrap();
        assert!(status.success(), "{m}: exit status {status}");
        let (res, _) = slow.await.unwrap().unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{m}: the request in flight finished"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_forwards_to_a_local_upstream() {
    // The upstream: the hello service on an ordinary loopback HTTP/1.1 server.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = upstream.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper_util::service::TowerToHyperService::new(
                    ptth_origin::service::Hello::new(),
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let dir = TempDir::new("proxy");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let upstream_url = format!("http://{up_addr}");
    let _o = Origin::start(&gw, "rh2", "up.localhost", &["--upstream", &upstream_url])
        .await
        .unwrap();
    wait_ready(&gw, "up.localhost").await.unwrap();
    let req = Request::post(url(&gw, "up.localhost", "/echo"))
        .body(pattern_body(5 << 20))
        .unwrap();
    let (res, body) = send(&client(true), req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains(&echo_json(5 << 20)));
}
