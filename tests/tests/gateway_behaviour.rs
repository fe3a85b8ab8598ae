//! Gateway behaviour seen from public clients: TLS and cleartext listeners with curl,
//! timeouts, queueing and concurrency limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use http_body_util::BodyExt;
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

    // One connection, one request at a time, held by an SSE response whose second event comes
    // 3 s after its first. Of two more requests, one waits in the queue (of one) and gives up
    // after 0.5 s, the other finds the queue full; which is which is up to the scheduler, so
    // the reasons are compared as a set.
    let busy = c
        .request(get(&gw, "one.localhost", "/sse?n=2&interval_ms=3000"))
        .await
        .unwrap();
    assert_eq!(busy.status(), StatusCode::OK);
    let mut busy = busy.into_body();
    let first = tokio::time::timeout(Duration::from_secs(30), busy.frame())
        .await
        .expect("the busy request's first event")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: event 0\n\n");
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            let req = get(&gw, "one.localhost", "/");
            tokio::spawn(async move { send(&c, req).await })
        })
        .collect();
    let mut reasons = Vec::new();
    for t in waiting {
        let (res, body) = t.await.unwrap().unwrap();
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(res.headers().contains_key("retry-after"), "{body}");
        reasons.push(if body.contains("queue is full") {
            "queue full"
        } else if body.contains("stayed busy") {
            "wait expired"
        } else {
            panic!("a 503 without the reason: {body}")
        });
    }
    reasons.sort_unstable();
    assert_eq!(reasons, ["queue full", "wait expired"]);
    // The request holding the connection was not disturbed.
    let rest = tokio::time::timeout(Duration::from_secs(30), busy.collect())
        .await
        .expect("the busy request never finished")
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "data: event 1\n\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_connections_and_wait_for_a_free_one() {
    let dir = TempDir::new("balance");
    let gw = Gateway::start(&dir.0, &["--queue-timeout", "60"])
        .await
        .unwrap();
    let _o = Origin::start(&gw, "rh1", "pool.localhost", &["--connections", "4"])
        .await
        .unwrap();
    wait_ready(&gw, "pool.localhost").await.unwrap();
    // Four SSE responses held open at once over four one-at-a-time HTTP/1.1 connections: each
    // gets its first event while the others are still open, which only four connections in
    // use together can do (with two, the third would wait in the queue for 5 s).
    let mut held = Vec::new();
    for i in 0..4 {
        let res = tokio::time::timeout(
            Duration::from_secs(4),
            client(false).request(get(&gw, "pool.localhost", "/sse?n=2&interval_ms=5000")),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} waited: fewer than four connections in use"))
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        let mut body = res.into_body();
        let first = tokio::time::timeout(Duration::from_secs(4), body.frame())
            .await
            .unwrap_or_else(|_| panic!("request {i}: no first event while the others are held"))
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: event 0\n\n", "{i}");
        held.push(body);
    }
    // A fifth request finds every connection busy: it waits instead of failing, and is served
    // once the held responses end.
    let req = get(&gw, "pool.localhost", "/");
    let mut fifth = tokio::spawn(async move { send(&client(false), req).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut fifth)
            .await
            .is_err(),
        "a fifth request was answered while four connections were held"
    );
    for (i, body) in held.into_iter().enumerate() {
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "data: event 1\n\n", "{i}");
    }
    let (res, body) = tokio::time::timeout(Duration::from_secs(30), fifth)
        .await
        .expect("the waiting request was never served")
        .unwrap()
        .unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
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

/// The gateway's memory follows the number of requests, not their sizes
/// (docs/ARCHITECTURE.md: "nothing collects a forwarded body into memory"): 512 MiB down
/// through an HTTP/1.1 origin connection and 512 MiB up through an HTTP/2 one leave its peak
/// RSS far below either body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_memory_stays_bounded_while_streaming() {
    use http_body_util::StreamBody;
    const SIZE: u64 = 512 << 20;
    const BOUND: u64 = 160 << 20;
    let dir = TempDir::new("memory");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _down = Origin::start(&gw, "rh1", "down.localhost", &[])
        .await
        .unwrap();
    let _up = Origin::start(&gw, "rh2", "up.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "down.localhost").await.unwrap();
    wait_ready(&gw, "up.localhost").await.unwrap();
    let before = gw.peak_rss().expect("the gateway's /proc status");
    assert!(before < BOUND, "the gateway starts at {before} bytes");

    // Download: read as it comes, counting.
    let res = client(false)
        .request(get(&gw, "down.localhost", &format!("/bytes/{SIZE}")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len() as u64;
        }
    }
    assert_eq!(total, SIZE);

    // Upload: generated lazily, hashed by the origin.
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let frames = futures_util::stream::iter((0..SIZE >> 20).map(move |_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(chunk.clone()))
    }));
    let req = http::Request::post(url(&gw, "up.localhost", "/echo"))
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap();
    let (res, body) = send(&client(true), req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&body).contains(&format!("\"bytes\":{SIZE}")),
        "{body:?}"
    );

    let peak = gw.peak_rss().expect("the gateway's /proc status");
    eprintln!(
        "gateway peak RSS: {} MiB (before: {} MiB)",
        peak >> 20,
        before >> 20
    );
    assert!(
        peak < BOUND,
        "the gateway's peak RSS reached {} MiB moving 512 MiB each way",
        peak >> 20
    );
}

/// The `worker=` of each "origin connection registered" line naming `host` in `log`.
fn registered_workers(log: &std::path::Path, host: &str) -> Vec<String> {
    log_lines(log, |l| {
        l.contains("origin connection registered") && l.contains(host)
    })
    .iter()
    .filter_map(|l| {
        l.split_whitespace()
            .find_map(|f| f.strip_prefix("worker="))
            .map(str::to_owned)
    })
    .collect()
}

/// Waits until `n` connections for `host` are registered and returns how many each of
/// the gateway's two workers drives.
async fn per_worker(log: &std::path::Path, host: &str, n: usize) -> [usize; 2] {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let workers = registered_workers(log, host);
        if workers.len() >= n {
            let mut counts = [0; 2];
            for w in &workers {
                counts[w.parse::<usize>().expect("worker=0 or worker=1")] += 1;
            }
            return counts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} connections for {host} never registered: {workers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_connections_are_spread_evenly_over_the_gateways_workers() {
    let dir = TempDir::new("placement");
    let log = dir.0.join("gateway.log");
    let gw = start_gateway_logging(&dir.0, &["--threads", "2"], &log, "ptth_gateway=info")
        .await
        .unwrap();
    // Four connections dialled at once over TCP, then four over QUIC: each set lands two
    // on each worker (left to the kernel's hash of ports, all four of a set on one worker
    // or three and one came up in most trials), even though all four of a set are in
    // their handshakes together.
    let _rh2 = Origin::start(&gw, "rh2", "tcp.localhost", &["--connections", "4"])
        .await
        .unwrap();
    let registered = |host: &str| {
        log_lines(&log, |l| {
            l.contains("origin connection registered") && l.contains(host)
        })
        .join("\n")
    };
    assert_eq!(
        per_worker(&log, "tcp.localhost", 4).await,
        [2, 2],
        "TCP: {}",
        registered("tcp.localhost")
    );
    let _rh3 = Origin::start(&gw, "rh3", "quic.localhost", &["--connections", "4"])
        .await
        .unwrap();
    assert_eq!(
        per_worker(&log, "quic.localhost", 4).await,
        [2, 2],
        "QUIC: {}",
        registered("quic.localhost")
    );
    wait_serving(&gw, "tcp.localhost", 30).await.unwrap();
    wait_serving(&gw, "quic.localhost", 30).await.unwrap();
}

/// Both binaries run with glibc's heap trim threshold raised (`docs/performance.md`, finding
/// 14): each starts itself again, once and in the same process (the PID the harness
/// spawned), with `GLIBC_TUNABLES` set, and serves. An operator's own `GLIBC_TUNABLES` is
/// left as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_raise_glibcs_heap_trim_threshold_unless_the_operator_tuned_glibc() {
    const OURS: &str = "GLIBC_TUNABLES=glibc.malloc.trim_threshold=4194304";
    let tunables = |pid: Option<u32>| {
        environ_of(pid.expect("running"))
            .unwrap()
            .into_iter()
            .filter(|e| e.starts_with("GLIBC_TUNABLES="))
            .collect::<Vec<_>>()
    };
    // Fleet::start waits until the origin's host answers through the gateway.
    let fleet = Fleet::start("tunables", &["rh2"]).await.unwrap();
    assert_eq!(tunables(fleet.gateway.pid()), [OURS], "the gateway");
    assert_eq!(tunables(fleet.origins[0].1.pid()), [OURS], "the origin");
    let (status, body) = answer(&fleet.gateway, "rh2.localhost", "/").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let dir = TempDir::new("tunables-own");
    let own = "GLIBC_TUNABLES=glibc.malloc.arena_max=2";
    let gw = Gateway::start_with_env(
        &dir.0,
        &[],
        &[("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")],
    )
    .await
    .unwrap();
    assert_eq!(tunables(gw.pid()), [own], "the operator's own tuning");
}
