//! Issue 10 items 1 and 8: the authorisation exchange stays private to setup (no public client
//! ever gets an origin's credential), and an origin that knows only the Potato draft registers
//! with its client certificate alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use ptth_tests::*;
use std::sync::Arc;
use std::time::Duration;

/// Every mechanism whose connection is reversed by ALPN alone: the gateway's first request on
/// it is the authorisation request.
const ALPN_ONLY: &[&str] = &["rh1", "rh2", "rh3", "h2-reverse", "h3-reverse"];

/// The text of the gateway's refusal (`ptth_gateway::proxy::RESERVED_REASON`).
const RESERVED: &str = "/.well-known/ptth/ is reserved by the gateway";

/// Spellings of the authorisation resource a thief might try.
const PROBES: &[&str] = &[
    "/.well-known/ptth/authorize",
    "/.well-known/ptth/authorize?x=1",
    "/.well-known/ptth/authorize/",
    "/.well-known/%70tth/authorize",
    "/%2Ewell-known/ptth/authorize",
    "/.WELL-KNOWN/PTTH/authorize",
    "/.well-known%2Fptth%2Fauthorize",
    "//.well-known/ptth/authorize",
];

/// Asserts that a response to a probe is the gateway's refusal and carries nothing of the
/// exchange: the reason in the body, no `ptth-*` field, the token nowhere.
fn assert_refused_without_secret(what: &str, res: &Response<()>, body: &Bytes, token: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "{what}: {text}");
    assert!(text.contains(RESERVED), "{what}: {text}");
    assert!(!text.contains(token), "{what}: the token is in the body");
    for (name, value) in res.headers() {
        assert!(
            !name.as_str().starts_with("ptth-"),
            "{what}: a {name} field reached the public client"
        );
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(token),
            "{what}: the token is in {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_public_client_gets_the_origins_credential() {
    let dir = TempDir::new("edge-cred-leak");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let token = gw.token();
    let mut origins = Vec::new();
    for m in ALPN_ONLY {
        // The dev token (and, for draft-bt, the dev client certificate): the token is what
        // the origin answers the authorisation request with.
        origins.push(
            Origin::start(&gw, m, &format!("{m}.localhost"), &[])
                .await
                .unwrap(),
        );
    }
    // Positive twin: every origin registered and serves ordinary requests through the same
    // listeners the probes use.
    for m in ALPN_ONLY {
        wait_ready(&gw, &format!("{m}.localhost")).await.unwrap();
    }
    let h1 = client(false);
    let h2c = client(true);
    for m in ALPN_ONLY {
        let host = format!("{m}.localhost");
        for probe in PROBES {
            let (res, body) = send(&h1, get(&gw, &host, probe)).await.unwrap();
            assert_refused_without_secret(&format!("{m} HTTP/1.1 {probe}"), &res, &body, &token);
        }
        let (res, body) = send(&h2c, get(&gw, &host, PROBES[0])).await.unwrap();
        assert_refused_without_secret(&format!("{m} h2c"), &res, &body, &token);
        // The connection still serves the application after the probes.
        let (res, _) = send(&h1, get(&gw, &host, "/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m} after the probes");
    }
    // Public HTTP/3 goes through the same proxy.
    let h3 = h3_client(&gw).await.unwrap();
    for m in ALPN_ONLY {
        let host = format!("{m}.localhost");
        let ok = Request::get(h3_url(&host, "/"))
            .body(full(Bytes::new()))
            .unwrap();
        let (res, _) = h3.send(ok).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m} over public HTTP/3");
        for probe in [PROBES[0], PROBES[3]] {
            let req = Request::get(h3_url(&host, probe))
                .body(full(Bytes::new()))
                .unwrap();
            let (res, body) = h3.send(req).await.unwrap();
            assert_refused_without_secret(&format!("{m} HTTP/3 {probe}"), &res, &body, &token);
        }
    }
    drop(origins);
}

/// What the in-test origin answers to `GET /.well-known/ptth/authorize`.
#[derive(Debug, Clone)]
enum Answer {
    /// 404, like every other path but `/`: an origin written from the draft alone.
    NotFound,
    /// 200 with `ptth-authorization: Bearer <token>` and, if given, `ptth-origins`.
    Token {
        token: String,
        origins: Option<String>,
    },
}

/// A minimal reversed-HTTP/2 origin (Potato `rh2`), written from the draft: it dials the
/// tunnel with TLS, ALPN `rh2` and the given client certificate (if any), then serves HTTP/2
/// as the server. It answers `/` with 200 and its name, the authorisation resource as
/// `answer` says, and everything else with 404. Returns when the connection ends.
async fn draft_origin(
    gw: &Gateway,
    client_cert: Option<(Vec<u8>, Vec<u8>)>,
    answer: Answer,
    name: &'static str,
) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(gw.dev.join("ca.pem"))?;
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((cert, key)) => {
            let chain =
                rustls_pemfile::certs(&mut cert.as_slice()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut key.as_slice())?
                .ok_or_else(|| anyhow::anyhow!("no private key"))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    // draft-thomson-ptth-potato §3: the `rh2` token reverses the roles at once.
    config.alpn_protocols = vec![b"rh2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.tunnel).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let answer = answer.clone();
        async move {
            let mut res = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *res.status_mut() = StatusCode::NOT_FOUND;
            match req.uri().path() {
                "/" => {
                    *res.status_mut() = StatusCode::OK;
                    *res.body_mut() = Full::new(Bytes::from(format!("{name}\n")));
                }
                ptth_auth::AUTHORIZE_PATH => {
                    if let Answer::Token { token, origins } = answer {
                        *res.status_mut() = StatusCode::OK;
                        *res.body_mut() = Full::new(Bytes::new());
                        let h = res.headers_mut();
                        h.insert(
                            ptth_auth::AUTHORIZATION_FIELD,
                            format!("Bearer {token}").parse().unwrap(),
                        );
                        if let Some(o) = origins {
                            h.insert(ptth_auth::ORIGINS_FIELD, o.parse().unwrap());
                        }
                    }
                }
                _ => {}
            }
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    ptth_h2::reversed::serve(tls, service, ptth_h2::ServeOptions::default()).await?;
    Ok(())
}

/// Sends `GET /` for `host` until it answers 200 with `body` (at most 60 s).
async fn wait_serving(gw: &Gateway, host: &str, body: &str) {
    let c = client(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((res, got)) = send(&c, get(gw, host, "/")).await {
            if res.status() == StatusCode::OK {
                assert_eq!(String::from_utf8_lossy(&got).trim(), body);
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{host} never answered through the gateway"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A self-signed client certificate for `san` over `key` (PEM cert, PEM key, DER cert).
fn self_signed(key: &rcgen::KeyPair, san: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut params = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(key).unwrap();
    (
        cert.pem().into_bytes(),
        key.serialize_pem().into_bytes(),
        cert.der().to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_certificate_only_origin_registers_for_what_its_certificate_names() {
    let dir = TempDir::new("edge-cred-cert");
    // One key, pinned by a grant for `https://pinned.example`; two certificates over it
    // that differ only in their name.
    let key = rcgen::KeyPair::generate().unwrap();
    let (good_pem, good_key, good_der) = self_signed(&key, "pinned.example");
    let (evil_pem, evil_key, _) = self_signed(&key, "evil.example");
    let pin = ptth_auth::spki_sha256(&rustls::pki_types::CertificateDer::from(good_der)).unwrap();
    let pin: Vec<String> = pin.iter().map(|b| format!("{b:02X}")).collect();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[grant]]\nname = \"pinned\"\nspki-sha256 = \"{}\"\norigins = [\"https://pinned.example\"]\n",
            pin.join(":")
        ),
    )
    .unwrap();
    let (gw, log) = Gateway::start_logged(&dir.0, &["--config", config.to_str().unwrap()])
        .await
        .unwrap();
    let dev_cert = (
        std::fs::read(gw.dev.join("origin.pem")).unwrap(),
        std::fs::read(gw.dev.join("origin.key")).unwrap(),
    );

    // The dev certificate (SANs `localhost`, `*.localhost`) matches the dev grant for
    // `https://*.localhost`: the origin answers 404 and is registered for `*.localhost`.
    let gw = Arc::new(gw);
    let g = gw.clone();
    let dev_origin = tokio::spawn(async move {
        draft_origin(&g, Some(dev_cert), Answer::NotFound, "draft origin").await
    });
    wait_serving(&gw, "app.localhost", "draft origin").await;
    wait_serving(&gw, "other.localhost", "draft origin").await;
    log.wait_for(
        &[
            "registered for the names its client certificate carries",
            "*.localhost/",
        ],
        10,
    )
    .await
    .unwrap();
    // `localhost` itself is not under `*.localhost`, and the grant does not name it.
    let (res, _) = send(&client(false), get(&gw, "localhost", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Positive twin of the refusal below: the pinned key with the name its grant allows.
    let g = gw.clone();
    let pinned_origin = tokio::spawn(async move {
        draft_origin(
            &g,
            Some((good_pem, good_key)),
            Answer::NotFound,
            "pinned origin",
        )
        .await
    });
    wait_serving(&gw, "pinned.example", "pinned origin").await;

    // The same key with a name no grant allows: refused, for that reason.
    let g = gw.clone();
    let evil = tokio::spawn(async move {
        draft_origin(
            &g,
            Some((evil_pem, evil_key)),
            Answer::NotFound,
            "evil origin",
        )
        .await
    });
    log.wait_for(
        &[
            "origin connection refused",
            "no grant of this client certificate allows an origin it names (certificate names: evil.example)",
        ],
        60,
    )
    .await
    .unwrap();
    // The gateway closed the connection: the refused origin's task ends.
    let ended = tokio::time::timeout(Duration::from_secs(30), evil).await;
    assert!(ended.is_ok(), "the refused connection stayed open");
    let (res, _) = send(&client(false), get(&gw, "evil.example", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    dev_origin.abort();
    pinned_origin.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_certificate_no_scope_follows_from_the_credential() {
    let dir = TempDir::new("edge-cred-nocert");
    let (gw, log) = Gateway::start_logged(&dir.0, &[]).await.unwrap();
    let gw = Arc::new(gw);
    let token = gw.token();

    // Positive twin: the same token origin naming its origin registers.
    let (g, t) = (gw.clone(), token.clone());
    let named = tokio::spawn(async move {
        let answer = Answer::Token {
            token: t,
            origins: Some("https://named.localhost".into()),
        };
        draft_origin(&g, None, answer, "token origin").await
    });
    wait_serving(&gw, "named.localhost", "token origin").await;

    // A token and no `ptth-origins`: refused, since only a certificate can imply a scope.
    let (g, t) = (gw.clone(), token.clone());
    let unnamed = tokio::spawn(async move {
        let answer = Answer::Token {
            token: t,
            origins: None,
        };
        draft_origin(&g, None, answer, "token origin").await
    });
    log.wait_for(
        &[
            "origin connection refused",
            "the answer names no origin (ptth-origins)",
        ],
        60,
    )
    .await
    .unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(30), unnamed)
        .await
        .is_ok());

    // No certificate and a 404: nothing is presented, nothing is registered.
    let g = gw.clone();
    let bare = tokio::spawn(async move { draft_origin(&g, None, Answer::NotFound, "bare").await });
    log.wait_for(
        &[
            "origin connection refused",
            "presented no client certificate",
        ],
        60,
    )
    .await
    .unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(30), bare)
        .await
        .is_ok());
    named.abort();
}
