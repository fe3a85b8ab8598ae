//! End-to-end tests of the `ptth-h3-client` binary against a real gateway's public HTTP/3
//! endpoint and an `rh2 --hello` origin: `get` (status, body, upload), `load` (the
//! h2load-style summary) and transport errors (nobody listening, an untrusted CA).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ptth_tests::*;
use std::process::Output;
use std::time::Duration;

/// Runs the built `ptth-h3-client` with `args` (at most 60 s).
async fn h3_client(args: &[&str]) -> Output {
    let bin = bin_dir().join("ptth-h3-client");
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`)",
        bin.display()
    );
    let out = tokio::process::Command::new(bin)
        .args(args)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("ptth-h3-client finished")
        .expect("ptth-h3-client ran")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_load_and_transport_errors_through_the_public_http3_endpoint() {
    let dir = TempDir::new("h3-client");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _origin = Origin::start(&gw, "rh2", "rh2.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "rh2.localhost").await.unwrap();
    let ca = gw.dev.join("ca.pem");
    let ca = ca.to_str().unwrap();
    let connect_to = gw.listen_tls.to_string();
    let url = format!("https://rh2.localhost:{}/", gw.listen_tls.port());

    // get: the hello page, with the status line of -w last.
    let out = h3_client(&[
        "get",
        &url,
        "--cacert",
        ca,
        "--connect-to",
        &connect_to,
        "-w",
    ])
    .await;
    assert!(out.status.success(), "get: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (body, last) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(last, "200 3", "{stdout}");
    assert!(body.contains("ptth hello"), "{body}");

    // get with an uploaded file: the origin saw every byte.
    let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    let file = dir.0.join("body.bin");
    std::fs::write(&file, &data).unwrap();
    let echo = format!("https://rh2.localhost:{}/echo", gw.listen_tls.port());
    let at_file = format!("@{}", file.display());
    let out = h3_client(&[
        "get",
        &echo,
        "--cacert",
        ca,
        "--connect-to",
        &connect_to,
        "-H",
        "content-type: application/octet-stream",
        "--data-binary",
        &at_file,
        "-w",
    ])
    .await;
    assert!(out.status.success(), "post: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.ends_with("\n200 3"), "{stdout}");
    let want = format!(
        "\"bytes\":{},\"sha256\":\"{}\"",
        data.len(),
        sha256_hex(&data)
    );
    assert!(stdout.contains(&want), "{stdout}");

    // A host nobody serves is still an HTTP response: exit 0, the gateway's 503 reported.
    let none = format!("https://app.localhost:{}/", gw.listen_tls.port());
    let out = h3_client(&[
        "get",
        &none,
        "--cacert",
        ca,
        "--connect-to",
        &connect_to,
        "-w",
    ])
    .await;
    assert!(out.status.success(), "503: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with("\n503 3"),
        "{}",
        text(&out.stdout)
    );

    // load: 200 requests over 2 connections with 8 streams each, all complete and 2xx.
    let out = h3_client(&[
        "load",
        &url,
        "--cacert",
        ca,
        "--connect-to",
        &connect_to,
        "-n",
        "200",
        "-c",
        "2",
        "-m",
        "8",
    ])
    .await;
    assert!(out.status.success(), "load: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("requests: 200 total, 200 started, 200 done, 200 succeeded, 0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains("status codes: 200 2xx,"), "{stdout}");
    assert!(stdout.contains("latency p50 "), "{stdout}");
    let out = h3_client(&[
        "load",
        &url,
        "--cacert",
        ca,
        "--connect-to",
        &connect_to,
        "-n",
        "20",
        "-c",
        "1",
        "-m",
        "4",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "load --json: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("{\"requests\":20,\"succeeded\":20,\"failed\":0,\"status_2xx\":20,"),
        "{stdout}"
    );

    // Transport errors: a certificate from a CA we do not trust, and nobody listening.
    let other = TempDir::new("h3-client-other-ca");
    let _other_gw = Gateway::start(&other.0, &[]).await.unwrap();
    let wrong_ca = other.0.join("ca.pem");
    let out = h3_client(&[
        "get",
        &url,
        "--cacert",
        wrong_ca.to_str().unwrap(),
        "--connect-to",
        &connect_to,
    ])
    .await;
    assert!(!out.status.success(), "an untrusted CA must fail");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("handshake") && stderr.contains("certificate"),
        "{stderr}"
    );

    let dead = unused_addr().to_string();
    let out = h3_client(&[
        "get",
        &url,
        "--cacert",
        ca,
        "--connect-to",
        &dead,
        "--connect-timeout",
        "2",
    ])
    .await;
    assert!(!out.status.success(), "nobody listening must fail");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&dead), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}
