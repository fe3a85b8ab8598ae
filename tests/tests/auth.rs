//! Authentication and authorisation of origins, negative cases first, for every TCP
//! mechanism; and origins authenticating the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use http_body_util::BodyExt;
use ptth_tests::*;
use std::time::Duration;

/// Mechanisms whose credential travels in a setup request (401 on the wire) and those that
/// reverse at the TLS layer (the gateway's authorisation request decides).
const SETUP: &[&str] = &["upgrade-h1", "upgrade-h2", "connect-h2", "ptth10"];
const ALPN_ONLY: &[&str] = &["rh1", "rh2"];

fn write_config(dir: &std::path::Path, grants: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, grants).unwrap();
    path
}

fn token_grant(name: &str, token: &str, origins: &str, paths: &str) -> String {
    format!(
        "[[grant]]\nname = \"{name}\"\ntoken = \"{token}\"\norigins = [{origins}]\npaths = [{paths}]\n"
    )
}

/// What an origin's own log says when the gateway refused it. A setup mechanism reads the
/// gateway's reason in the refusal's body; connect-h3 logs only the status; an ALPN-only
/// mechanism sees the gateway close the connection right after its answer to the
/// authorisation request (the gateway's log has the reason).
fn origin_hears<'a>(mechanism: &str, reason: &'a str, status: &'a str) -> &'a str {
    match mechanism {
        "rh1" | "rh2" | "rh3" => "refused this origin's credential",
        "connect-h3" => status,
        _ => reason,
    }
}

/// Waits until `origin` (over `mechanism`, claiming `host`) was refused for `reason`, the
/// text of the gateway's `AuthError` (`status` is what the wire said): its own log says so
/// and so does the gateway's. Then `host` must have no origin.
async fn assert_refused(
    gw: &Gateway,
    origin: &Origin,
    mechanism: &str,
    host: &str,
    reason: &str,
    status: &str,
) {
    origin
        .log
        .wait_for(origin_hears(mechanism, reason, status), 60)
        .await
        .unwrap_or_else(|e| panic!("{mechanism} {host}: the origin was not refused: {e}"));
    gw.log
        .wait_for(reason, 60)
        .await
        .unwrap_or_else(|e| panic!("{mechanism} {host}: the gateway's log: {e}"));
    assert_no_origin(gw, host, mechanism).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_wrong_credentials_are_refused_on_every_mechanism() {
    let dir = TempDir::new("auth-neg");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    // The setup mechanisms answer 401 on the wire (see bad_setups.rs); here, end to end:
    // nothing is ever registered for an origin with a wrong token or none at all.
    let mut origins = Vec::new();
    for m in SETUP.iter().chain(ALPN_ONLY) {
        origins.push((
            m,
            Origin::start_with_credentials(
                &gw,
                m,
                &format!("wrong-{m}.localhost"),
                &["--token", "wrong-token"],
            )
            .await
            .unwrap(),
        ));
    }
    // No credential at all: the origin refuses to start without one...
    let out = std::process::Command::new(bin_dir().join("ptth-origin"))
        .args([
            "--gateway",
            &gw.tunnel_url(),
            "--mechanism",
            "rh2",
            "--host",
            "x.localhost",
            "--hello",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("credential"));
    // ...and h2-reverse without a client certificate fails the TLS handshake (draft-bt).
    let mut nocert = tokio::process::Command::new(bin_dir().join("ptth-origin"))
        .args(["--gateway", &gw.tunnel_url(), "--mechanism", "h2-reverse"])
        .args(["--host", "nocert.localhost", "--hello", "--token-file"])
        .arg(gw.dev.join("token"))
        .arg("--ca")
        .arg(gw.dev.join("ca.pem"))
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let nocert_log = LogTap::capture("origin nocert", nocert.stderr.take());
    // The origin hears the TLS alert, the gateway says why (rustls' own words).
    nocert_log
        .wait_for("CertificateRequired", 60)
        .await
        .unwrap();
    gw.log
        .wait_for("peer sent no certificates", 60)
        .await
        .unwrap();
    assert_no_origin(&gw, "nocert.localhost", "h2-reverse without a certificate").await;
    nocert.kill().await.unwrap();
    for (m, origin) in &origins {
        assert_refused(
            &gw,
            origin,
            m,
            &format!("wrong-{m}.localhost"),
            "the credential is not accepted",
            "401",
        )
        .await;
    }
    // The twin: the same gateway serves every one of these mechanisms given the right token
    // (and h2-reverse given its client certificate).
    let mut right = Vec::new();
    for m in SETUP.iter().chain(ALPN_ONLY).chain(&["h2-reverse"]) {
        right.push(
            Origin::start(&gw, m, &format!("right-{m}.localhost"), &[])
                .await
                .unwrap(),
        );
    }
    for m in SETUP.iter().chain(ALPN_ONLY).chain(&["h2-reverse"]) {
        wait_ready(&gw, &format!("right-{m}.localhost"))
            .await
            .unwrap_or_else(|e| panic!("{m} with the right credential: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_limits_origins_and_paths_and_origin_a_cannot_take_b() {
    let dir = TempDir::new("auth-scope");
    let config = write_config(
        &dir.0,
        &[
            token_grant("team-a", "token-a", "\"https://a.localhost\"", "\"/\""),
            token_grant("team-b", "token-b", "\"https://b.localhost\"", "\"/api\""),
        ]
        .concat(),
    );
    let gw = Gateway::start(&dir.0, &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    let mut keep = Vec::new();
    for m in SETUP.iter().chain(ALPN_ONLY) {
        // A's token claiming B's host: forbidden, nothing registered.
        let a = Origin::start_with_credentials(&gw, m, "b.localhost", &["--token", "token-a"])
            .await
            .unwrap();
        // B's token outside its path prefix: forbidden.
        let b = Origin::start_with_credentials(
            &gw,
            m,
            "b.localhost",
            &["--token", "token-b", "--path", "/admin"],
        )
        .await
        .unwrap();
        keep.push((m, a, b));
    }
    for (m, a, b) in &keep {
        assert_refused(
            &gw,
            a,
            m,
            "b.localhost",
            "the credential may not register https://b.localhost",
            "403",
        )
        .await;
        assert_refused(
            &gw,
            b,
            m,
            "b.localhost",
            "the credential may not register path prefix \"/admin\"",
            "403",
        )
        .await;
    }
    for path in ["/", "/admin", "/api/x"] {
        let (status, body) = answer(&gw, "b.localhost", path).await;
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE && body.contains(NO_ORIGIN),
            "b.localhost{path}: {status} {body}"
        );
    }
    // The setup mechanisms say 403 on the wire.
    let said = raw_setup(
        &gw,
        "GET /.well-known/ptth/https%3A%2F%2Fb.localhost/ HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: ptth\r\nAuthorization: Bearer token-a\r\nALPN: h2\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(said.starts_with("HTTP/1.1 403"), "{said}");
    assert!(
        said.contains("may not register https://b.localhost"),
        "{said}"
    );
    // Within its grant, B works on every mechanism.
    for m in SETUP.iter().chain(ALPN_ONLY) {
        let host = "b.localhost";
        let o =
            Origin::start_with_credentials(&gw, m, host, &["--token", "token-b", "--path", "/api"])
                .await
                .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (res, _) = send(&client(false), get(&gw, host, "/api/")).await.unwrap();
            if res.status() == StatusCode::NOT_FOUND {
                break; // the hello service answered under /api
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{m}: never admitted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Gone before the next mechanism's turn, so its 404 cannot come from this one.
        drop(o);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while answer(&gw, host, "/api/").await.0 != StatusCode::SERVICE_UNAVAILABLE {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{m}: the killed origin stayed registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_and_client_certificates_authenticate_without_a_token() {
    let dir = TempDir::new("auth-keys");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let key = gw.dev.join("origin-ed25519.pem");
    let cert = gw.dev.join("origin.pem");
    let cert_key = gw.dev.join("origin.key");
    let mut keep = Vec::new();
    for m in ALPN_ONLY {
        // The signed challenge (bound to this TLS connection's exporter).
        keep.push(
            Origin::start_with_credentials(
                &gw,
                m,
                &format!("signed-{m}.localhost"),
                &["--signing-key", key.to_str().unwrap(), "--key-id", "dev"],
            )
            .await
            .unwrap(),
        );
        // A client certificate alone (grant: SAN *.localhost may serve https://*.localhost).
        keep.push(
            Origin::start_with_credentials(
                &gw,
                m,
                &format!("cert-{m}.localhost"),
                &[
                    "--cert",
                    cert.to_str().unwrap(),
                    "--key",
                    cert_key.to_str().unwrap(),
                ],
            )
            .await
            .unwrap(),
        );
    }
    for m in SETUP {
        keep.push(
            Origin::start_with_credentials(
                &gw,
                m,
                &format!("cert-{m}.localhost"),
                &[
                    "--cert",
                    cert.to_str().unwrap(),
                    "--key",
                    cert_key.to_str().unwrap(),
                ],
            )
            .await
            .unwrap(),
        );
    }
    for m in ALPN_ONLY {
        wait_ready(&gw, &format!("signed-{m}.localhost"))
            .await
            .unwrap();
        wait_ready(&gw, &format!("cert-{m}.localhost"))
            .await
            .unwrap();
    }
    for m in SETUP {
        wait_ready(&gw, &format!("cert-{m}.localhost"))
            .await
            .unwrap();
    }
    // A signature by a key no grant knows is refused.
    let rogue = dir.0.join("rogue.pem");
    let pkcs8 = ptth_auth::generate_ed25519_pkcs8().unwrap();
    std::fs::write(&rogue, ptth_auth::pkcs8_to_pem(&pkcs8)).unwrap();
    let rogue = Origin::start_with_credentials(
        &gw,
        "rh2",
        "rogue.localhost",
        &["--signing-key", rogue.to_str().unwrap(), "--key-id", "dev"],
    )
    .await
    .unwrap();
    assert_refused(
        &gw,
        &rogue,
        "rh2",
        "rogue.localhost",
        "the challenge signature does not verify",
        "401",
    )
    .await;
    // The dev certificate may not claim a host outside *.localhost.
    let outside = Origin::start_with_credentials(
        &gw,
        "rh2",
        "example.com",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            cert_key.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_refused(
        &gw,
        &outside,
        "rh2",
        "example.com",
        "the credential may not register https://example.com",
        "403",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_certificate_is_refused() {
    // A second dev directory: its CA is not the gateway's.
    let dir = TempDir::new("auth-certs");
    let other = TempDir::new("auth-certs-other");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let mut throwaway = Gateway::start(&other.0, &[]).await.unwrap();
    throwaway.kill().await;
    let cert = other.0.join("origin.pem");
    let key = other.0.join("origin.key");
    let mut keep = Vec::new();
    for m in ["rh2", "h2-reverse", "upgrade-h1"] {
        keep.push(
            Origin::start_with_credentials(
                &gw,
                m,
                &format!("unknown-{m}.localhost"),
                &[
                    "--cert",
                    cert.to_str().unwrap(),
                    "--key",
                    key.to_str().unwrap(),
                ],
            )
            .await
            .unwrap(),
        );
    }
    // The gateway's TLS stack refuses the certificate (rustls' words; the two dev CAs share
    // a name, so it is the signature that fails); each origin hears the alert.
    gw.log
        .wait_for("TLS handshake failed: invalid peer certificate", 60)
        .await
        .unwrap();
    for (m, origin) in ["rh2", "h2-reverse", "upgrade-h1"].iter().zip(&keep) {
        origin
            .log
            .wait_for("received fatal alert", 60)
            .await
            .unwrap_or_else(|e| panic!("{m}: {e}"));
        assert_no_origin(
            &gw,
            &format!("unknown-{m}.localhost"),
            "a certificate from an unknown CA must not authenticate",
        )
        .await;
    }
    // The twin: the gateway's own dev certificate authenticates on the same mechanisms.
    let cert = dir.0.join("origin.pem");
    let key = dir.0.join("origin.key");
    for m in ["rh2", "h2-reverse", "upgrade-h1"] {
        keep.push(
            Origin::start_with_credentials(
                &gw,
                m,
                &format!("known-{m}.localhost"),
                &[
                    "--cert",
                    cert.to_str().unwrap(),
                    "--key",
                    key.to_str().unwrap(),
                ],
            )
            .await
            .unwrap(),
        );
    }
    for m in ["rh2", "h2-reverse", "upgrade-h1"] {
        wait_ready(&gw, &format!("known-{m}.localhost"))
            .await
            .unwrap_or_else(|e| panic!("{m} with the dev certificate: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_refuse_a_gateway_they_cannot_authenticate() {
    let dir = TempDir::new("auth-gw");
    let other = TempDir::new("auth-gw-other");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let mut throwaway = Gateway::start(&other.0, &[]).await.unwrap();
    throwaway.kill().await;
    let token = gw.dev.join("token");
    // Trusting another CA, or pinning another key: the TLS handshake fails and the origin
    // never serves this gateway, whatever the mechanism.
    let mut refused = Vec::new();
    for m in TCP_MECHANISMS {
        let wrongca = Origin::start_with_credentials(
            &gw,
            m,
            &format!("wrongca-{m}.localhost"),
            &[
                "--ca",
                other.0.join("ca.pem").to_str().unwrap(),
                "--token-file",
                token.to_str().unwrap(),
            ],
        )
        .await
        .unwrap();
        let wrongpin = Origin::start_with_credentials(
            &gw,
            m,
            &format!("wrongpin-{m}.localhost"),
            &[
                "--token-file",
                token.to_str().unwrap(),
                "--gateway-pin",
                &"ab".repeat(32),
            ],
        )
        .await
        .unwrap();
        refused.push((m, wrongca, wrongpin));
    }
    // Each origin's own TLS stack refused the gateway's certificate (rustls' words).
    for (m, wrongca, wrongpin) in &refused {
        for (origin, kind, why) in [
            // Both dev CAs have the same name: the chain's signature does not verify.
            (wrongca, "wrongca", "invalid peer certificate: BadSignature"),
            (
                wrongpin,
                "wrongpin",
                "the gateway's certificate key does not match --gateway-pin",
            ),
        ] {
            origin
                .log
                .wait_for(why, 60)
                .await
                .unwrap_or_else(|e| panic!("{m} {kind}: {e}"));
            assert_no_origin(&gw, &format!("{kind}-{m}.localhost"), kind).await;
        }
    }
    // The twin: trusting the right CA, every mechanism serves this gateway.
    let mut trusting = Vec::new();
    for m in TCP_MECHANISMS {
        trusting.push(
            Origin::start(&gw, m, &format!("rightca-{m}.localhost"), &[])
                .await
                .unwrap(),
        );
    }
    for m in TCP_MECHANISMS {
        wait_ready(&gw, &format!("rightca-{m}.localhost"))
            .await
            .unwrap_or_else(|e| panic!("{m} trusting the dev CA: {e}"));
    }
    // The explicit escape hatch works (and is logged loudly).
    let _danger = Origin::start_with_credentials(
        &gw,
        "rh2",
        "danger.localhost",
        &[
            "--danger-accept-any-gateway",
            "--token-file",
            token.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    wait_ready(&gw, "danger.localhost").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_removed_on_reload_drains_its_connections() {
    let dir = TempDir::new("auth-reload");
    let config = write_config(
        &dir.0,
        &[
            token_grant("keep", "token-keep", "\"https://keep.localhost\"", "\"/\""),
            token_grant("drop", "token-drop", "\"https://drop.localhost\"", "\"/\""),
        ]
        .concat(),
    );
    let gw = Gateway::start(&dir.0, &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    let mut keep = Vec::new();
    // Every mechanism whose credential here is the token (an h2-reverse origin also
    // presents the dev certificate, whose own grant survives the reload).
    for m in SETUP.iter().chain(ALPN_ONLY) {
        keep.push(
            Origin::start_with_credentials(&gw, m, "keep.localhost", &["--token", "token-keep"])
                .await
                .unwrap(),
        );
        keep.push(
            Origin::start_with_credentials(&gw, m, "drop.localhost", &["--token", "token-drop"])
                .await
                .unwrap(),
        );
    }
    wait_ready(&gw, "keep.localhost").await.unwrap();
    wait_ready(&gw, "drop.localhost").await.unwrap();
    // Requests in flight on the dropped grant's connections, over a public HTTP/1.1 and an
    // HTTP/2 client: each has its first event before the reload, its second comes after.
    let mut inflight = Vec::new();
    for (i, h2) in [false, true, false, true].into_iter().enumerate() {
        let res = client(h2)
            .request(get(&gw, "drop.localhost", "/sse?n=2&interval_ms=4000"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "in-flight request {i}");
        let mut body = res.into_body();
        let first = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .unwrap_or_else(|_| panic!("in-flight request {i}: no first event"))
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: event 0\n\n");
        inflight.push(body);
    }
    // Remove the "drop" grant and send SIGHUP.
    write_config(
        &dir.0,
        &token_grant("keep", "token-keep", "\"https://keep.localhost\"", "\"/\""),
    );
    gw.signal("-HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = answer(&gw, "drop.localhost", "/").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(body.contains(NO_ORIGIN), "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "drop.localhost was not drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Draining lets the requests in flight finish: each gets its second event and a clean end.
    for (i, body) in inflight.into_iter().enumerate() {
        let rest = tokio::time::timeout(Duration::from_secs(30), body.collect())
            .await
            .unwrap_or_else(|_| panic!("in-flight request {i} never finished"))
            .unwrap_or_else(|e| panic!("in-flight request {i} was cut: {e}"))
            .to_bytes();
        assert_eq!(rest, "data: event 1\n\n", "in-flight request {i}");
    }
    // Healthy connections were not touched, and the dropped origins cannot come back: they
    // dial again and are refused for their token.
    let (status, _) = answer(&gw, "keep.localhost", "/").await;
    assert_eq!(status, StatusCode::OK);
    // keep[1] is the dropped grant's upgrade-h1 origin, which reads the reason on the wire.
    keep[1]
        .log
        .wait_for("the credential is not accepted", 60)
        .await
        .unwrap();
    assert_no_origin(&gw, "drop.localhost", "after the reload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_mechanisms_check_credentials_and_grants_the_same_way() {
    let dir = TempDir::new("auth-quic");
    let config = write_config(
        &dir.0,
        &token_grant("team-a", "token-a", "\"https://*.a.localhost\"", "\"/\""),
    );
    let gw = Gateway::start(&dir.0, &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    let key = gw.dev.join("origin-ed25519.pem");
    let mut refused = Vec::new();
    for m in ["rh3", "options-h3", "connect-h3"] {
        // A wrong token, and a right token for someone else's origin: nothing registers.
        let wrong = Origin::start_with_credentials(
            &gw,
            m,
            &format!("wrong-{m}.localhost"),
            &["--token", "nope"],
        )
        .await
        .unwrap();
        let other = Origin::start_with_credentials(&gw, m, "b.localhost", &["--token", "token-a"])
            .await
            .unwrap();
        refused.push((m, wrong, other));
    }
    // The signed challenge over QUIC (the exporter comes from the QUIC handshake).
    let _signed = Origin::start_with_credentials(
        &gw,
        "rh3",
        "signed-rh3.localhost",
        &["--signing-key", key.to_str().unwrap(), "--key-id", "dev"],
    )
    .await
    .unwrap();
    // Within the grant, every QUIC mechanism is admitted: each on a host of its own, so each
    // one's 200 is its own.
    let mut admitted = Vec::new();
    for m in ["rh3", "options-h3", "connect-h3"] {
        admitted.push(
            Origin::start_with_credentials(
                &gw,
                m,
                &format!("{m}.a.localhost"),
                &["--token", "token-a"],
            )
            .await
            .unwrap(),
        );
    }
    wait_ready(&gw, "signed-rh3.localhost").await.unwrap();
    for m in ["rh3", "options-h3", "connect-h3"] {
        wait_ready(&gw, &format!("{m}.a.localhost"))
            .await
            .unwrap_or_else(|e| panic!("{m} within its grant: {e}"));
    }
    for (m, wrong, other) in &refused {
        assert_refused(
            &gw,
            wrong,
            m,
            &format!("wrong-{m}.localhost"),
            "the credential is not accepted",
            "401",
        )
        .await;
        assert_refused(
            &gw,
            other,
            m,
            "b.localhost",
            "the credential may not register https://b.localhost",
            "403",
        )
        .await;
    }
}

/// Every mechanism whose origin credential can be HTTP Basic: those that send it in a setup
/// request's `Authorization` and those that answer the authorisation request
/// (`ptth-authorization`). draft-bt (`h2-reverse`, `h3-reverse`) needs a certificate.
const BASIC: &[&str] = &[
    "upgrade-h1",
    "upgrade-h2",
    "connect-h2",
    "ptth10",
    "rh1",
    "rh2",
    "rh3",
    "options-h3",
    "connect-h3",
];

/// A Basic password with a space, a colon and a non-ASCII character (sent as UTF-8).
const BASIC_PASSWORD: &str = "correct horse:battery £";

/// An origin that authenticates with HTTP Basic, its log (warn and above) in `log`.
fn basic_origin(
    gw: &Gateway,
    mechanism: &str,
    host: &str,
    credentials: &[&str],
    password_env: Option<&str>,
    log: &std::path::Path,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(bin_dir().join("ptth-origin"));
    cmd.args(["--gateway", &gw.tunnel_url(), "--mechanism", mechanism])
        .args(["--host", host, "--hello", "--ca"])
        .arg(gw.dev.join("ca.pem"))
        .args(credentials)
        .env("RUST_LOG", "warn")
        .env_remove("PTTH_TOKEN")
        .env_remove("PTTH_BASIC_PASSWORD")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true);
    if let Some(p) = password_env {
        cmd.env("PTTH_BASIC_PASSWORD", p);
    }
    if is_h1(mechanism) {
        cmd.args(["--connections", "2"]);
    }
    cmd.spawn().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_authenticate_origins_and_wrong_ones_are_refused() {
    let dir = TempDir::new("auth-basic");
    let config = write_config(
        &dir.0,
        &format!(
            "[[grant]]\nname = \"ops\"\nbasic-user = \"ops\"\nbasic-password = \"{BASIC_PASSWORD}\"\norigins = [\"https://*.basic.localhost\"]\n"
        ),
    );
    let gw = Gateway::start(&dir.0, &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    let password_file = dir.0.join("basic-password");
    std::fs::write(&password_file, format!("{BASIC_PASSWORD}\n")).unwrap();
    let password_file = password_file.to_str().unwrap();
    let log = |kind: &str, m: &str| dir.0.join(format!("origin-{kind}-{m}.log"));

    // Negative first: a wrong password (from PTTH_BASIC_PASSWORD) and an unknown user (with
    // the right password): nothing registers, and each origin logs that it was refused.
    let mut refused = Vec::new();
    for m in BASIC {
        refused.push(basic_origin(
            &gw,
            m,
            &format!("wrongpw-{m}.basic.localhost"),
            &["--basic-user", "ops"],
            Some("correct horse:battery $"),
            &log("wrongpw", m),
        ));
        refused.push(basic_origin(
            &gw,
            m,
            &format!("nouser-{m}.basic.localhost"),
            &["--basic-user", "nobody", "--basic-password", BASIC_PASSWORD],
            None,
            &log("nouser", m),
        ));
    }
    // A setup mechanism hears 401 on the wire; an ALPN-only one sees the gateway close the
    // connection right after its answer to the authorisation request. Wait until every
    // origin has logged its refusal (so each has tried), then check nothing registered.
    let said = |m: &str| {
        if ["rh1", "rh2", "rh3"].contains(&m) {
            "refused this origin's credential"
        } else {
            "401 Unauthorized"
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for m in BASIC {
        for kind in ["wrongpw", "nouser"] {
            loop {
                let text = std::fs::read_to_string(log(kind, m)).unwrap();
                assert!(
                    !text.contains("battery"),
                    "{m} {kind}: the password leaked into the log:\n{text}"
                );
                if text.contains(said(m)) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{m} {kind}: the origin's log does not say {:?}:\n{text}",
                    said(m)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    for m in BASIC {
        for kind in ["wrongpw", "nouser"] {
            assert_eq!(
                status_after(&gw, &format!("{kind}-{m}.basic.localhost"), 0).await,
                StatusCode::SERVICE_UNAVAILABLE,
                "{m}: {kind} must register nothing"
            );
        }
    }
    drop(refused);

    // The right user and password (from a file): admitted and served on every mechanism.
    for m in BASIC {
        let host = format!("ok-{m}.basic.localhost");
        let mut origin = basic_origin(
            &gw,
            m,
            &host,
            &[
                "--basic-user",
                "ops",
                "--basic-password-file",
                password_file,
            ],
            None,
            &log("ok", m),
        );
        wait_ready(&gw, &host)
            .await
            .unwrap_or_else(|e| panic!("{m}: {e}"));
        let (res, _) = send(&client(false), get(&gw, &host, "/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m}");
        origin.kill().await.unwrap();
    }
}
