//! Malformed or unauthorised setups get a clear error, and the gateway keeps serving everyone
//! else; an origin refuses a gateway that breaks the setup rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use ptth_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WELL_KNOWN: &str = "/.well-known/ptth/https%3A%2F%2Fevil.localhost/";

fn upgrade(extra: &str) -> String {
    format!("GET {WELL_KNOWN} HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: ptth\r\n{extra}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_setups_get_clear_errors_and_others_keep_working() {
    let dir = TempDir::new("badsetup");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _good = Origin::start(&gw, "rh2", "good.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "good.localhost").await.unwrap();
    let token = gw.token();
    let auth = format!("Authorization: Bearer {token}\r\n");

    // A ClientHello whose ALPN the gateway does not know fails the TLS handshake
    // (RFC 7301 §3.2: no_application_protocol).
    assert!(
        tls_connect(&gw, &[b"bogus/1"]).await.is_err(),
        "an unknown ALPN must not complete the handshake"
    );

    let cases: Vec<(&str, String, &str)> = vec![
        ("no ALPN header", upgrade(&auth), "400"),
        (
            "no common protocol",
            upgrade(&format!("{auth}ALPN: h3qx\r\n")),
            "400",
        ),
        (
            "malformed ALPN",
            upgrade(&format!("{auth}ALPN: h2,%zz\r\n")),
            "400",
        ),
        (
            "wrong token",
            upgrade("Authorization: Bearer not-the-token\r\nALPN: h2\r\n"),
            "401",
        ),
        ("no token", upgrade("ALPN: h2\r\n"), "401"),
        (
            "unknown upgrade token",
            format!("GET {WELL_KNOWN} HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: bogus\r\n{auth}ALPN: h2\r\n\r\n"),
            "426",
        ),
        (
            "not the well-known path",
            format!("GET /elsewhere HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: ptth\r\n{auth}ALPN: h2\r\n\r\n"),
            "404",
        ),
        (
            "a null origin",
            format!("GET /.well-known/ptth/null/ HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: ptth\r\n{auth}ALPN: h2\r\n\r\n"),
            "400",
        ),
    ];
    for (what, head, status) in cases {
        let answer = raw_setup(&gw, &head).await.unwrap();
        let first = answer.lines().next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: expected {status}, got {answer:?}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert!(
            !body.trim().is_empty(),
            "{what}: the answer gives a reason: {answer:?}"
        );
        if status == "401" {
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{what}: {answer:?}"
            );
        }
    }

    // Nothing was registered for the rejected setups, and the good origin still serves.
    let c = client(false);
    let (res, _) = send(&c, get(&gw, "evil.localhost", "/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let (res, _) = send(&c, get(&gw, "good.localhost", "/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// A fake gateway that answers the PTTH Upgrade with a protocol the origin did not offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_refuses_a_protocol_it_did_not_offer() {
    let dir = TempDir::new("unoffered");
    // Generate dev credentials with a real gateway, then stop it and listen ourselves.
    let mut gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let tunnel = gw.tunnel;
    gw.kill().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    let certs = {
        let pem = std::fs::read(dir.0.join("gateway.pem")).unwrap();
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    let key = {
        let pem = std::fs::read(dir.0.join("gateway.key")).unwrap();
        rustls_pemfile::private_key(&mut pem.as_slice())
            .unwrap()
            .unwrap()
    };
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(tunnel).await.unwrap();

    let _origin = Origin::start(&gw, "upgrade-h1", "victim.localhost", &[])
        .await
        .unwrap();
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut tls = acceptor.accept(tcp).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    let request = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        request.contains("ALPN: http%2F1.1")
            || request.to_ascii_lowercase().contains("alpn: http%2f1.1"),
        "{request}"
    );
    // Choose h2, which was not offered, and then try to use the connection.
    tls.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n\r\nGET / HTTP/1.1\r\nHost: victim.localhost\r\n\r\n",
    )
    .await
    .unwrap();
    // The origin must not answer: it closes the connection without a response.
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    let answered = String::from_utf8_lossy(&rest).contains("HTTP/1.1 200");
    assert!(
        !answered,
        "the origin served a gateway that chose an unoffered protocol"
    );
    assert!(r.is_ok(), "the origin should close the connection promptly");
}
