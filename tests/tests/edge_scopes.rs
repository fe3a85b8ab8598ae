//! Scopes mean what they say (issue 10 item 6), end to end through the real binaries: claim
//! limits, scheme-aware routing, exact names over wildcards, and the per-host queue limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ptth_core::{expand_well_known, SerializedOrigin, SetupTokens};
use ptth_tests::*;
use std::time::Duration;

/// A PTTH -01 Upgrade setup request claiming `origins` (and `extra` header lines).
fn upgrade(origins: &[String], token: &str, extra: &str) -> String {
    let origins: Vec<SerializedOrigin> = origins.iter().map(|o| o.parse().unwrap()).collect();
    let path = expand_well_known(&origins, &SetupTokens::default());
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: ptth\r\nAuthorization: Bearer {token}\r\nALPN: h2\r\n{extra}\r\n"
    )
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_flood_is_refused_naming_the_limit() {
    let dir = TempDir::new("scope-flood");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let token = gw.token();
    let hosts = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| format!("https://flood{i}.localhost"))
            .collect()
    };

    let answer = raw_setup(&gw, &upgrade(&hosts(100), &token, ""))
        .await
        .unwrap();
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 403"),
        "{answer:?}"
    );
    assert!(
        answer.contains("at most 64 origins per connection; 100 were claimed"),
        "the refusal names the limit: {answer:?}"
    );
    let prefixes: Vec<String> = (0..17).map(|i| format!("/p{i}")).collect();
    let answer = raw_setup(
        &gw,
        &upgrade(
            &hosts(1),
            &token,
            &format!("ptth-path-prefix: {}\r\n", prefixes.join(", ")),
        ),
    )
    .await
    .unwrap();
    assert!(
        answer.contains("at most 16 path prefixes per connection; 17 were claimed"),
        "{answer:?}"
    );

    // Positive twin: the same setup claiming 3 origins (and 16 prefixes) is admitted.
    let answer = raw_setup(
        &gw,
        &upgrade(
            &hosts(3),
            &token,
            &format!("ptth-path-prefix: {}\r\n", prefixes[..16].join(", ")),
        ),
    )
    .await
    .unwrap();
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 101"),
        "{answer:?}"
    );
    // And through the origin binary, end to end.
    let _o = Origin::start(&gw, "rh2", "flood1.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "flood1.localhost").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_grantee_never_receives_a_request_that_came_over_tls() {
    let dir = TempDir::new("scope-scheme");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _plain = Origin::start(&gw, "rh2", "http://app.localhost", &[])
        .await
        .unwrap();
    // Positive twin: cleartext requests reach the http:// origin (wait_ready uses the
    // cleartext listener).
    wait_ready(&gw, "app.localhost").await.unwrap();

    // Over the TLS listener, HTTP/1.1 and HTTP/2: no route, though the origin is there
    // (app.localhost: curl does not accept the dev certificate's *.localhost).
    let ca = gw.dev.join("ca.pem");
    let tls_port = gw.listen_tls.port();
    let resolve = format!("app.localhost:{tls_port}:127.0.0.1");
    for version in ["--http1.1", "--http2"] {
        let out = curl(&[
            version,
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code}",
            &format!("https://app.localhost:{tls_port}/"),
        ]);
        assert!(out.ends_with("\n503"), "{version}: {out}");
        assert!(
            out.contains("no origin is connected for this host and path"),
            "{version}: {out}"
        );
    }
    // Over public HTTP/3 as well.
    let h3 = h3_client(&gw).await.unwrap();
    let req = http::Request::get(h3_url("app.localhost", "/"))
        .body(full(bytes::Bytes::new()))
        .unwrap();
    let (res, body) = h3.send(req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("no origin is connected"));

    // And the cleartext path still works after all that (the gateway is fine).
    let (res, _) = send(&client(false), get(&gw, "app.localhost", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);

    // A port the gateway does not listen on is not the origin's default port.
    let (res, body) = send(
        &client(false),
        http::Request::get(format!("http://127.0.0.1:{}/", gw.listen.port()))
            .header("host", "app.localhost:8081")
            .body(full(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        res.status(),
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{body:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_requests_fall_back_to_https_origins_unless_turned_off() {
    let dir = TempDir::new("scope-fallback");
    let strict = Gateway::start(&dir.0, &["--cleartext-https-fallback", "false"])
        .await
        .unwrap();
    let _secure = Origin::start(&strict, "rh2", "secure.localhost", &[])
        .await
        .unwrap();
    let _plain = Origin::start(&strict, "rh2", "http://plain.localhost", &[])
        .await
        .unwrap();
    // Positive twin on the same gateway: the http:// origin is reachable in cleartext...
    wait_ready(&strict, "plain.localhost").await.unwrap();
    // ...and the https:// one over TLS (HTTP/3 here).
    let h3 = h3_client(&strict).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let req = http::Request::get(h3_url("secure.localhost", "/"))
            .body(full(bytes::Bytes::new()))
            .unwrap();
        let (res, _) = h3.send(req).await.unwrap();
        if res.status() == http::StatusCode::OK {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{res:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // But a cleartext request does not reach the https:// origin.
    let (res, body) = send(&client(false), get(&strict, "secure.localhost", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("no origin is connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_grantee_cannot_take_a_path_from_an_exact_grantee() {
    let dir = TempDir::new("scope-exact");
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        r#"
[[grant]]
name = "exact"
token = "exact-token"
origins = ["https://app.localhost"]
paths = ["/"]

[[grant]]
name = "wild"
token = "wild-token"
origins = ["https://*.localhost"]
paths = ["/"]
"#,
    )
    .unwrap();
    let gw = Gateway::start(&dir.0, &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    let app = vec!["https://app.localhost".to_string()];
    let longer = "ptth-path-prefix: /admin/longer\r\n";
    let answer = raw_setup(&gw, &upgrade(&app, "wild-token", longer))
        .await
        .unwrap();
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 403"),
        "{answer:?}"
    );
    assert!(answer.contains("named exactly by a grant"), "{answer:?}");
    // The dev token's any-origin grant may not either.
    let answer = raw_setup(&gw, &upgrade(&app, &gw.token(), longer))
        .await
        .unwrap();
    assert!(answer.contains("named exactly by a grant"), "{answer:?}");

    // Positive twins: the wildcard grantee registers a host nobody names exactly, and the
    // exact grantee registers its own host with the same prefix.
    let other = vec!["https://other.localhost".to_string()];
    let answer = raw_setup(&gw, &upgrade(&other, "wild-token", longer))
        .await
        .unwrap();
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 101"),
        "{answer:?}"
    );
    let answer = raw_setup(&gw, &upgrade(&app, "exact-token", longer))
        .await
        .unwrap();
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 101"),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_host_cannot_fill_the_queue_for_all() {
    let dir = TempDir::new("scope-queue");
    let gw = Gateway::start(
        &dir.0,
        &[
            "--queue-limit",
            "8",
            "--queue-limit-per-host",
            "1",
            "--queue-timeout",
            "60",
        ],
    )
    .await
    .unwrap();
    let one = ["--connections", "1"];
    let _slow = Origin::start(&gw, "rh1", "slow.localhost", &one)
        .await
        .unwrap();
    let _calm = Origin::start(&gw, "rh1", "calm.localhost", &one)
        .await
        .unwrap();
    wait_ready(&gw, "slow.localhost").await.unwrap();
    wait_ready(&gw, "calm.localhost").await.unwrap();

    // One request holds slow.localhost's only connection, one more waits in the queue.
    let c = client(false);
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = c.clone();
        let req = get(&gw, "slow.localhost", "/slow?ms=20000");
        held.push(tokio::spawn(async move { send(&c, req).await }));
    }
    // A third is refused at once for the host's share, as soon as both are in place (a
    // probe that got queued instead gives up after a moment and tries again). On a loaded
    // machine a probe can overtake the second held request and take the queue's place
    // first; then the held request is the one refused, for the same reason.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let refusal = loop {
        if let Some(i) = held.iter().position(|h| h.is_finished()) {
            let (res, body) = held.remove(i).await.unwrap().unwrap();
            assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
            break String::from_utf8_lossy(&body).into_owned();
        }
        let probe = tokio::time::timeout(
            Duration::from_secs(2),
            send(&c, get(&gw, "slow.localhost", "/")),
        )
        .await;
        if let Ok(Ok((res, body))) = probe {
            let body = String::from_utf8_lossy(&body).into_owned();
            if res.status() == http::StatusCode::SERVICE_UNAVAILABLE {
                break body;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused for the host's share"
        );
    };
    assert!(refusal.contains("--queue-limit-per-host"), "{refusal}");

    // Positive twin: another host, its connection just as busy, still gets a place in the
    // queue and is served once its connection frees up.
    let calm_held = {
        let c = c.clone();
        let req = get(&gw, "calm.localhost", "/slow?ms=2000");
        tokio::spawn(async move { send(&c, req).await })
    };
    let queued = {
        let c = c.clone();
        let req = get(&gw, "calm.localhost", "/");
        tokio::spawn(async move { send(&c, req).await })
    };
    let (res, _) = queued.await.unwrap().unwrap();
    assert_eq!(res.status(), http::StatusCode::OK);
    assert_eq!(
        calm_held.await.unwrap().unwrap().0.status(),
        http::StatusCode::OK
    );
    for h in held {
        h.abort();
    }
}
