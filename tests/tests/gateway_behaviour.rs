//! Gateway behaviour seen from public clients: TLS and cleartext listeners with curl,
//! timeouts, queueing and concurrency limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use ptth_tests::*;
use std::time::Duration;

fn curl(args: &[&str]) -> (String, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_origins_over_https_and_cleartext_in_both_http_versions() {
    let fleet = Fleet::start("curl", &["rh2", "upgrade-h1"]).await.unwrap();
    let gw = &fleet.gateway;
    let ca = gw.dev.join("ca.pem");
    for m in ["rh2", "upgrade-h1"] {
        let host = format!("{m}.localhost");
        let tls_port = gw.listen_tls.port();
        let resolve = format!("{host}:{tls_port}:127.0.0.1");
        for version in ["--http1.1", "--http2"] {
            let (out, err) = curl(&[
                version,
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code} %{http_version}",
                &format!("https://{host}:{tls_port}/"),
            ]);
            let expect = if version == "--http2" {
                "200 2"
            } else {
                "200 1.1"
            };
            assert!(out.ends_with(expect), "{m} {version}: {out} {err}");
            assert!(
                out.contains("proto=https"),
                "{m} {version}: Forwarded proto: {out}"
            );
        }
        let (out, err) = curl(&[
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_code} %{http_version}",
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1:{}/", gw.listen.port()),
        ]);
        assert!(out.ends_with("200 2"), "{m} h2c: {out} {err}");
        // A streamed upload through curl, hashed by the origin.
        let data = vec![7u8; 3 << 20];
        let file = fleet.dir.0.join("upload.bin");
        std::fs::write(&file, &data).unwrap();
        let (out, err) = curl(&[
            "--data-binary",
            &format!("@{}", file.display()),
            "-H",
            &format!("Host: {host}"),
            &format!("http://127.0.0.1:{}/echo", gw.listen.port()),
        ]);
        assert!(out.contains(&sha256_hex(&data)), "{m} upload: {out} {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_origins_get_504_and_full_queues_get_503() {
    let dir = TempDir::new("limits");
    let gw = Gateway::start(
        &dir.0,
        &[
            "--request-timeout",
            "1",
            "--queue-timeout",
            "0.5",
            "--queue-limit",
            "1",
        ],
    )
    .await
    .unwrap();
    let _o = Origin::start(&gw, "rh1", "one.localhost", &["--connections", "1"])
        .await
        .unwrap();
    wait_ready(&gw, "one.localhost").await.unwrap();
    let c = client(false);

    // The origin answers after 3 s; the gateway gives up after 1 s.
    let (res, body) = send(&c, get(&gw, "one.localhost", "/slow?ms=3000"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT, "{body:?}");

    // Wait until the origin is free again (its timed-out request finishes after 3 s).
    wait_ready(&gw, "one.localhost").await.unwrap();

    // One connection, one request at a time: a second request queues, a third finds the
    // queue (of one) full, and the queued one gives up after 0.5 s.
    let busy = tokio::spawn({
        let c = c.clone();
        let req = get(&gw, "one.localhost", "/slow?ms=900");
        async move { send(&c, req).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let queued = tokio::spawn({
        let c = c.clone();
        let req = get(&gw, "one.localhost", "/");
        async move { send(&c, req).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (res, _) = send(&c, get(&gw, "one.localhost", "/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "queue full");
    assert!(res.headers().contains_key("retry-after"));
    let (res, _) = queued.await.unwrap().unwrap();
    assert_eq!(
        res.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "queue wait expired"
    );
    let (res, _) = busy.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_connections_and_wait_for_a_free_one() {
    let dir = TempDir::new("balance");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _o = Origin::start(&gw, "rh1", "pool.localhost", &["--connections", "4"])
        .await
        .unwrap();
    wait_ready(&gw, "pool.localhost").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // all four connected
    let c = client(false);
    // Eight 500 ms requests over four one-at-a-time connections: two waves, never a 503.
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            let req = get(&gw, "pool.localhost", "/slow?ms=500");
            tokio::spawn(async move { send(&c, req).await })
        })
        .collect();
    for t in tasks {
        let (res, _) = t.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "4 connections carry 4 at a time: {took:?}"
    );
    assert!(
        took < Duration::from_millis(3500),
        "the four connections were all used: {took:?}"
    );
}

/// A public client that leaves in the middle of a response must not cost the origin its
/// HTTP/1.1 connection: the gateway cannot dial a new one (the origin must, after its
/// backoff), so closing it would leave the host without an origin and the next requests
/// with 503. Four clients in a row abandon a 1 MiB download on an rh1 origin with a single
/// connection; the request after each must still be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_response_keeps_the_http1_origin_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = TempDir::new("abandon");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _o = Origin::start(&gw, "rh1", "abandon.localhost", &["--connections", "1"])
        .await
        .unwrap();
    wait_ready(&gw, "abandon.localhost").await.unwrap();
    let c = client(false);
    for round in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
        tcp.write_all(
            b"GET /bytes/1048576 HTTP/1.1\r\nhost: abandon.localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = vec![0u8; 16 * 1024];
        let n = tcp.read(&mut head).await.unwrap();
        assert!(
            head[..n].starts_with(b"HTTP/1.1 200"),
            "round {round}: {:?}",
            String::from_utf8_lossy(&head[..n.min(200)])
        );
        // Leave with most of the body unread: the kernel answers the gateway's next write
        // with a reset.
        drop(tcp);
        tokio::time::sleep(Duration::from_millis(30)).await;
        let (res, body) = send(&c, get(&gw, "abandon.localhost", "/")).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "round {round}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}
