//! Credential rotation on reload (issue 10 item 4): every kind of origin credential rotated
//! in place in the `--config` file, then SIGHUP, through the real gateway and origin
//! binaries. The old holder is drained (the gateway logs why; its host then answers 503,
//! and a request in flight on it still completes), while an origin whose credential did not
//! change stays registered on the same connection across the same reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use ptth_tests::*;
use std::time::Duration;

/// What the proxy answers for a host no origin serves.
const NO_ORIGIN: &str = "no origin is connected for this host and path";

/// The in-flight request on a connection about to be drained: `/sse` sends one event per
/// second, so it outlasts the drain by several seconds (the grace is 30 s).
const EVENTS: usize = 12;

/// What must become of an origin's connection across the reload.
#[derive(Debug, Clone, Copy)]
enum After {
    /// Registered on the same connection, still served.
    Stays,
    /// Drained, and the gateway's log says this reason.
    Drained(&'static str),
}

/// One origin of a scenario.
struct Served {
    host: &'static str,
    mechanism: &'static str,
    args: Vec<String>,
    /// The name its grant had when it was admitted (the log's `grant=` field).
    grant: &'static str,
    after: After,
}

fn served(
    host: &'static str,
    mechanism: &'static str,
    args: &[&str],
    grant: &'static str,
    after: After,
) -> Served {
    Served {
        host,
        mechanism,
        args: args.iter().map(|a| a.to_string()).collect(),
        grant,
        after,
    }
}

const ROTATED: After = After::Drained("credential no longer accepted");

fn conn_ids(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("conn="))
                .map(str::to_owned)
        })
        .collect()
}

/// Opens `GET /sse` on `host` and reads its first event, so the request is known to be in
/// flight on the origin's connection; the rest of the body is collected by the task.
async fn in_flight(gw: &Gateway, host: &str) -> tokio::task::JoinHandle<anyhow::Result<Bytes>> {
    let c = client(false);
    let path = format!("/sse?n={EVENTS}&interval_ms=1000");
    let res = tokio::time::timeout(Duration::from_secs(60), c.request(get(gw, host, &path)))
        .await
        .expect("the streaming request timed out")
        .expect("the streaming request failed");
    assert_eq!(res.status(), StatusCode::OK, "{host}{path}");
    let mut body = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .expect("no first event")
        .expect("the stream ended at once")
        .expect("the stream failed");
    let first = first.into_data().expect("a data frame");
    assert!(first.starts_with(b"data: event 0"), "{first:?}");
    tokio::spawn(async move {
        let rest = tokio::time::timeout(Duration::from_secs(90), body.collect())
            .await
            .map_err(|_| anyhow::anyhow!("the stream stalled"))??
            .to_bytes();
        Ok([first, rest].concat().into())
    })
}

/// Starts a gateway with `before` as its `--config`, every origin of `origins`, waits until
/// each is served, rewrites the file to `after` and sends SIGHUP; then checks what became
/// of each origin (see [`After`]).
async fn rotate(dir: &TempDir, before: &str, after: &str, origins: &[Served]) {
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, before).unwrap();
    let log = dir.0.join("gateway.log");
    let gw = Gateway::start_logging_to(&dir.0, &["--config", config.to_str().unwrap()], &log)
        .await
        .unwrap();
    let mut processes = Vec::new();
    for o in origins {
        let args: Vec<&str> = o.args.iter().map(String::as_str).collect();
        processes.push(
            Origin::start_with_credentials(&gw, o.mechanism, o.host, &args)
                .await
                .unwrap(),
        );
    }
    for o in origins {
        wait_serving(&gw, o.host, 90)
            .await
            .unwrap_or_else(|e| panic!("{} over {}: {e:#}", o.host, o.mechanism));
        // Two origins may serve one host: wait for this one's own registration.
        wait_for_log_line(&log, "origin connection registered", 90, |l| {
            l.contains("origin connection registered")
                && log_field_is(l, "grant", o.grant)
                && log_field_is(l, "mechanism", o.mechanism)
        })
        .await
        .unwrap();
    }
    let registered = |grant: &str| {
        conn_ids(&log_lines(&log, |l| {
            l.contains("origin connection registered") && log_field_is(l, "grant", grant)
        }))
    };
    // The connections that must survive, and a request in flight on each doomed one.
    let mut staying = Vec::new();
    let mut streams = Vec::new();
    for o in origins {
        match o.after {
            After::Stays => {
                let ids = registered(o.grant);
                assert!(!ids.is_empty(), "{}: no registration logged", o.host);
                staying.push((o, ids));
            }
            After::Drained(_) => streams.push((o, in_flight(&gw, o.host).await)),
        }
    }

    std::fs::write(&config, after).unwrap();
    gw.signal("-HUP");

    let c = client(false);
    for (o, stream) in &streams {
        let After::Drained(reason) = o.after else {
            unreachable!()
        };
        let needle = format!("origin connection drained on reload: {reason}");
        let line = wait_for_log_line(&log, &needle, 60, |l| {
            l.contains(&needle)
                && log_field_is(l, "grant", o.grant)
                && log_field_is(l, "mechanism", o.mechanism)
        })
        .await
        .unwrap();
        assert!(
            !stream.is_finished(),
            "{}: the in-flight request ended before the drain, so it proves nothing",
            o.host
        );
        // No secret, nor the hash of one, in what the gateway logs about the connection.
        for pair in o.args.windows(2) {
            if ["--token", "--basic-password"].contains(&pair[0].as_str()) {
                let secret = &pair[1];
                assert!(!line.contains(secret.as_str()), "{line}");
                assert!(
                    !line.contains(&sha256_hex(secret.as_bytes())[..16]),
                    "{line}"
                );
            }
        }
        // Drained means no new request reaches it: the host has no origin any more (its
        // origin redials with the old credential and is refused).
        let (res, body) = send(&c, get(&gw, o.host, "/")).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(
            res.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "{}: {body}",
            o.host
        );
        assert!(body.contains(NO_ORIGIN), "{}: {body}", o.host);
    }
    let reloaded = wait_for_log_line(&log, "grants reloaded", 60, |l| {
        l.contains("grants reloaded")
    })
    .await
    .unwrap();
    let drained_lines = log_lines(&log, |l| l.contains("origin connection drained on reload"));
    assert!(
        log_field_is(&reloaded, "drained", &drained_lines.len().to_string()),
        "{reloaded}\n{drained_lines:#?}"
    );

    // The positive twins: same reload, credential unchanged (even if its grant was renamed):
    // never drained, never closed, still served.
    let closed = conn_ids(&log_lines(&log, |l| l.contains("origin connection closed")));
    for (o, ids) in &staying {
        assert!(
            !drained_lines
                .iter()
                .any(|l| log_field_is(l, "grant", o.grant)),
            "{}: drained although its credential did not change:\n{drained_lines:#?}",
            o.host
        );
        for id in ids {
            assert!(!closed.contains(id), "{}: {id} closed on reload", o.host);
        }
        let (res, body) = send(&c, get(&gw, o.host, "/")).await.unwrap();
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "{}: {}",
            o.host,
            String::from_utf8_lossy(&body)
        );
    }

    // The requests in flight on the drained connections finished, every event delivered.
    for (o, stream) in streams {
        let body = stream
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e:#}", o.host));
        let text = String::from_utf8_lossy(&body);
        for i in 0..EVENTS {
            assert!(
                text.contains(&format!("data: event {i}\n")),
                "{}: event {i} missing from {text:?}",
                o.host
            );
        }
    }
    drop(processes);
}

fn token_grant(name: &str, token: &str, origins: &str) -> String {
    format!("[[grant]]\nname = \"{name}\"\ntoken = \"{token}\"\norigins = [{origins}]\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_drains_its_holder_and_a_renamed_grant_keeps_its_own() {
    let dir = TempDir::new("reload-token");
    let before = [
        token_grant("rot", "rot-one", "\"https://rot.localhost\""),
        token_grant("stay", "stay-t0ken", "\"https://stay.localhost\""),
        token_grant(
            "narrow",
            "narrow-t0ken",
            "\"https://narrow.localhost\", \"https://wide.localhost\"",
        ),
    ]
    .concat();
    let after = [
        // Rotated in place: same name, new token.
        token_grant("rot", "rot-two", "\"https://rot.localhost\""),
        // Renamed, same token: the connection is matched by its credential, not the name.
        token_grant("stay-renamed", "stay-t0ken", "\"https://stay.localhost\""),
        // Same token, but the origin it registered is no longer granted.
        token_grant("narrow", "narrow-t0ken", "\"https://wide.localhost\""),
    ]
    .concat();
    rotate(
        &dir,
        &before,
        &after,
        &[
            // A setup mechanism (the token in the Upgrade request) on HTTP/1.1: every
            // connection of its pool is drained.
            served(
                "rot.localhost",
                "upgrade-h1",
                &["--token", "rot-one"],
                "rot",
                ROTATED,
            ),
            served(
                "stay.localhost",
                "rh2",
                &["--token", "stay-t0ken"],
                "stay",
                After::Stays,
            ),
            served(
                "narrow.localhost",
                "rh2",
                &["--token", "narrow-t0ken"],
                "narrow",
                After::Drained("grant narrowed"),
            ),
        ],
    )
    .await;
}

fn basic_grant(name: &str, user: &str, password: &str, host: &str) -> String {
    format!(
        "[[grant]]\nname = \"{name}\"\nbasic-user = \"{user}\"\nbasic-password = \"{password}\"\norigins = [\"https://{host}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_basic_password_drains_its_holder() {
    let dir = TempDir::new("reload-basic");
    let stay = basic_grant("stay", "keeper", "keeper-pw-1", "stay.localhost");
    let before = basic_grant("rot", "ops", "old-password-1", "rot.localhost") + &stay;
    let after = basic_grant("rot", "ops", "new-password-2", "rot.localhost") + &stay;
    rotate(
        &dir,
        &before,
        &after,
        &[
            // The password travels in the answer to the authorisation request.
            served(
                "rot.localhost",
                "rh2",
                &["--basic-user", "ops", "--basic-password", "old-password-1"],
                "rot",
                ROTATED,
            ),
            served(
                "stay.localhost",
                "connect-h2",
                &["--basic-user", "keeper", "--basic-password", "keeper-pw-1"],
                "stay",
                After::Stays,
            ),
        ],
    )
    .await;
}

/// A fresh Ed25519 key: its PEM file in `dir` and its public key in hex.
fn ed25519_key(dir: &TempDir, name: &str) -> (String, String) {
    let pkcs8 = ptth_auth::generate_ed25519_pkcs8().unwrap();
    let path = dir.0.join(format!("{name}.pem"));
    std::fs::write(&path, ptth_auth::pkcs8_to_pem(&pkcs8)).unwrap();
    let public: String = ptth_auth::public_key_from_pkcs8(&pkcs8)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (path.to_str().unwrap().to_owned(), public)
}

fn key_grant(name: &str, key_id: &str, public: &str, host: &str) -> String {
    format!(
        "[[grant]]\nname = \"{name}\"\ned25519 = \"{public}\"\nkey-id = \"{key_id}\"\norigins = [\"https://{host}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_signing_key_drains_its_holder_over_tcp_and_quic() {
    let dir = TempDir::new("reload-ed25519");
    let (old_key, old_public) = ed25519_key(&dir, "old");
    let (_, new_public) = ed25519_key(&dir, "new");
    let (stay_key, stay_public) = ed25519_key(&dir, "stay");
    let stay = key_grant("stay", "stay-key", &stay_public, "stay.localhost");
    let before = key_grant("rot", "rot-key", &old_public, "rot.localhost") + &stay;
    // Same key id, new key: the old key's signature proved possession of a key no grant
    // lists now.
    let after = key_grant("rot", "rot-key", &new_public, "rot.localhost") + &stay;
    let rot_args = ["--signing-key", old_key.as_str(), "--key-id", "rot-key"];
    let stay_args = ["--signing-key", stay_key.as_str(), "--key-id", "stay-key"];
    rotate(
        &dir,
        &before,
        &after,
        &[
            served("rot.localhost", "rh2", &rot_args, "rot", ROTATED),
            served("rot.localhost", "rh3", &rot_args, "rot", ROTATED),
            served("stay.localhost", "rh3", &stay_args, "stay", After::Stays),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_drains_its_quic_holders() {
    let dir = TempDir::new("reload-quic");
    let stay = token_grant("stay", "stay-t0ken", "\"https://stay.localhost\"");
    let before = token_grant("rot", "rot-one", "\"https://rot.localhost\"") + &stay;
    let after = token_grant("rot", "rot-two", "\"https://rot.localhost\"") + &stay;
    rotate(
        &dir,
        &before,
        &after,
        &[
            // PTTH -00 OPTIONS setup and Potato rh3: both admitted through check_origin.
            served(
                "rot.localhost",
                "options-h3",
                &["--token", "rot-one"],
                "rot",
                ROTATED,
            ),
            served(
                "rot.localhost",
                "rh3",
                &["--token", "rot-one"],
                "rot",
                ROTATED,
            ),
            served(
                "stay.localhost",
                "options-h3",
                &["--token", "stay-t0ken"],
                "stay",
                After::Stays,
            ),
        ],
    )
    .await;
}

/// A self-signed client certificate for `host`: its PEM files in `dir` and its SPKI pin.
fn self_signed(dir: &TempDir, name: &str, host: &str) -> (String, String, String) {
    let issued = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let cert = dir.0.join(format!("{name}.pem"));
    let key = dir.0.join(format!("{name}.key"));
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.key_pair.serialize_pem()).unwrap();
    let pin: String = ptth_auth::spki_sha256(issued.cert.der())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
        pin,
    )
}

fn pin_grant(name: &str, pin: &str, host: &str) -> String {
    format!(
        "[[grant]]\nname = \"{name}\"\nspki-sha256 = \"{pin}\"\norigins = [\"https://{host}\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_pin_drains_its_holder() {
    let dir = TempDir::new("reload-pin");
    // The certificates name hosts under *.localhost, which the dev certificate grant
    // (`cert-san = "*.localhost"`) covers: a certificate accepted for its pin must not be
    // kept on by its names once the pin is gone, since its chain was never verified.
    let (rot_cert, rot_key, rot_pin) = self_signed(&dir, "rot", "rot.localhost");
    let (_, _, new_pin) = self_signed(&dir, "new", "rot.localhost");
    let (stay_cert, stay_key, stay_pin) = self_signed(&dir, "stay", "stay.localhost");
    let stay = pin_grant("stay", &stay_pin, "stay.localhost");
    let before = pin_grant("rot", &rot_pin, "rot.localhost") + &stay;
    let after = pin_grant("rot", &new_pin, "rot.localhost") + &stay;
    rotate(
        &dir,
        &before,
        &after,
        &[
            served(
                "rot.localhost",
                "rh2",
                &["--cert", &rot_cert, "--key", &rot_key],
                "rot",
                ROTATED,
            ),
            served(
                "stay.localhost",
                "upgrade-h2",
                &["--cert", &stay_cert, "--key", &stay_key],
                "stay",
                After::Stays,
            ),
        ],
    )
    .await;
}
