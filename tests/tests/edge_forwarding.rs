//! Issue 10 items 3 and 5, end to end through the real binaries: forwarding fields a public
//! client wrote never reach the application as the gateway's (unless the peer is a trusted
//! proxy), on every public protocol, through `ptth-origin --upstream` to a real upstream;
//! with `--forwarding-fields`, only the chosen fields reach it; and `--gateway-pin` holds even with `--danger-accept-any-gateway`, over TCP and QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http::{Request, StatusCode};
use ptth_tests::*;
use std::time::Duration;

/// The mechanisms the origins behind each gateway use: reversed HTTP/2 and HTTP/1.1, so the
/// origin's proxy mode is crossed from both versions.
const MECHANISMS: &[&str] = &["rh2", "rh1"];

/// What a hostile client writes; `proto` is the opposite of the scheme it really uses.
fn spoofed(proto: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("x-forwarded-for", "10.9.9.9"),
        ("x-real-ip", "10.9.9.9"),
        ("x-forwarded-proto", proto),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "443"),
        ("forwarded", "for=10.9.9.9;proto=https;host=evil.example"),
    ]
}

fn opposite(proto: &str) -> &'static str {
    if proto == "https" {
        "http"
    } else {
        "https"
    }
}

/// A gateway (with `extra` flags), an echoing upstream, and one `--upstream` origin per
/// mechanism on `<mechanism>.localhost`, all reachable.
struct Setup {
    gw: Gateway,
    _origins: Vec<Origin>,
    _dir: TempDir,
}

async fn setup(name: &str, extra: &[&str]) -> Setup {
    let dir = TempDir::new(name);
    let gw = Gateway::start(&dir.0, extra).await.unwrap();
    let upstream = format!("http://{}", header_echo_upstream().await.unwrap());
    let mut origins = Vec::new();
    for m in MECHANISMS {
        origins.push(
            Origin::start(
                &gw,
                m,
                &format!("{m}.localhost"),
                &["--upstream", &upstream],
            )
            .await
            .unwrap(),
        );
    }
    for m in MECHANISMS {
        wait_ready(&gw, &format!("{m}.localhost")).await.unwrap();
    }
    Setup {
        gw,
        _origins: origins,
        _dir: dir,
    }
}

/// One request per public protocol; returns (label, real proto, authority, upstream body).
async fn every_protocol(gw: &Gateway, host: &str) -> Vec<(String, &'static str, String, Bytes)> {
    let mut out = Vec::new();
    let port = gw.listen.port();
    for h2 in [false, true] {
        let mut req = Request::get(url(gw, host, "/"));
        for (k, v) in spoofed("https") {
            req = req.header(k, v);
        }
        let (res, body) = send(&client(h2), req.body(full(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{host} h2={h2}: {body:?}");
        let label = if h2 { "h2c" } else { "HTTP/1.1 cleartext" };
        out.push((label.to_string(), "http", format!("{host}:{port}"), body));
    }

    // The TLS listener, with curl, in both HTTP versions.
    let tls_port = gw.listen_tls.port();
    let ca = gw.dev.join("ca.pem");
    let resolve = format!("{host}:{tls_port}:127.0.0.1");
    for version in ["--http1.1", "--http2"] {
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--fail-with-body".into(),
            "--max-time".into(),
            "30".into(),
            version.into(),
            "--cacert".into(),
            ca.to_str().unwrap().into(),
            "--resolve".into(),
            resolve.clone(),
        ];
        for (k, v) in spoofed("http") {
            args.push("-H".into());
            args.push(format!("{k}: {v}"));
        }
        args.push(format!("https://{host}:{tls_port}/"));
        let out_ = tokio::process::Command::new("curl")
            .args(&args)
            .output()
            .await
            .expect("curl is installed (.ci/run installs it)");
        assert!(
            out_.status.success(),
            "curl {version} to {host}: {}",
            String::from_utf8_lossy(&out_.stderr)
        );
        out.push((
            format!("TLS {version}"),
            "https",
            format!("{host}:{tls_port}"),
            Bytes::from(out_.stdout),
        ));
    }

    // Public HTTP/3.
    let h3 = h3_client(gw).await.unwrap();
    let mut req = Request::get(h3_url(host, "/"));
    for (k, v) in spoofed("http") {
        req = req.header(k, v);
    }
    let (res, body) = h3
        .send(req.body(full(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{host} HTTP/3: {body:?}");
    out.push(("HTTP/3".to_string(), "https", host.to_string(), body));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_fields_are_replaced_unless_the_peer_is_a_trusted_proxy() {
    // Nobody trusted (the default): the application sees only what the gateway saw.
    let s = setup("fwd-untrusted", &[]).await;
    for m in MECHANISMS {
        for (label, proto, authority, body) in
            every_protocol(&s.gw, &format!("{m}.localhost")).await
        {
            let what = format!("{m} over {label}: {}", String::from_utf8_lossy(&body));
            assert_eq!(echoed(&body, "x-forwarded-for"), ["127.0.0.1"], "{what}");
            assert_eq!(echoed(&body, "x-real-ip"), ["127.0.0.1"], "{what}");
            assert_eq!(echoed(&body, "x-forwarded-proto"), [proto], "{what}");
            assert_eq!(
                echoed(&body, "x-forwarded-host"),
                [authority.as_str()],
                "{what}"
            );
            assert!(echoed(&body, "x-forwarded-port").is_empty(), "{what}");
            assert_eq!(
                echoed(&body, "forwarded"),
                [format!("for=127.0.0.1;proto={proto};host=\"{authority}\"")],
                "{what}"
            );
        }
    }
    drop(s);

    // The positive twin: the same setup with the client's address trusted keeps what it
    // wrote and appends the gateway's hop.
    let s = setup("fwd-trusted", &["--trusted-proxy", "127.0.0.1/32"]).await;
    for m in MECHANISMS {
        for (label, proto, authority, body) in
            every_protocol(&s.gw, &format!("{m}.localhost")).await
        {
            let what = format!("{m} over {label}: {}", String::from_utf8_lossy(&body));
            let theirs = opposite(proto);
            assert_eq!(
                echoed(&body, "x-forwarded-for"),
                ["10.9.9.9, 127.0.0.1"],
                "{what}"
            );
            assert_eq!(echoed(&body, "x-real-ip"), ["10.9.9.9"], "{what}");
            assert_eq!(echoed(&body, "x-forwarded-proto"), [theirs], "{what}");
            assert_eq!(
                echoed(&body, "x-forwarded-host"),
                ["evil.example"],
                "{what}"
            );
            assert_eq!(echoed(&body, "x-forwarded-port"), ["443"], "{what}");
            assert_eq!(
                echoed(&body, "forwarded"),
                [format!(
                    "for=10.9.9.9;proto=https;host=evil.example, for=127.0.0.1;proto={proto};host=\"{authority}\""
                )],
                "{what}"
            );
        }
    }
}

/// The six forwarding fields an application could read.
const FORWARDING: [&str; 6] = [
    "x-forwarded-for",
    "x-real-ip",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_sees_only_the_forwarding_fields_the_gateway_is_set_to_send() {
    // (flags, the fields the application sees, from a client that spoofed all six)
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--forwarding-fields", "forwarded"], &["forwarded"]),
        (
            &["--forwarding-fields", "x-forwarded"],
            &[
                "x-forwarded-for",
                "x-real-ip",
                "x-forwarded-proto",
                "x-forwarded-host",
            ],
        ),
        (&["--forwarding-fields", "none"], &[]),
        // A trusted proxy's fields of the family not chosen are removed too.
        (
            &[
                "--forwarding-fields",
                "forwarded",
                "--trusted-proxy",
                "127.0.0.1/32",
            ],
            &["forwarded"],
        ),
    ];
    for (i, (flags, expected)) in cases.into_iter().enumerate() {
        let trusted = flags.contains(&"--trusted-proxy");
        let s = setup(&format!("fwd-only-{i}"), flags).await;
        let port = s.gw.listen.port();
        for m in MECHANISMS {
            let host = format!("{m}.localhost");
            for h2 in [false, true] {
                let mut req = Request::get(url(&s.gw, &host, "/"));
                for (k, v) in spoofed("https") {
                    req = req.header(k, v);
                }
                let (res, body) = send(&client(h2), req.body(full(Bytes::new())).unwrap())
                    .await
                    .unwrap();
                let what = format!(
                    "{flags:?}, {m}, h2c={h2}: {}",
                    String::from_utf8_lossy(&body)
                );
                assert_eq!(res.status(), StatusCode::OK, "{what}");
                let seen: Vec<&str> = FORWARDING
                    .into_iter()
                    .filter(|n| !echoed(&body, n).is_empty())
                    .collect();
                assert_eq!(seen, expected, "{what}");
                // What is sent is the gateway's (or, trusted, appended to by it).
                if expected.contains(&"forwarded") {
                    let ours = format!("for=127.0.0.1;proto=http;host=\"{host}:{port}\"");
                    let want = if trusted {
                        format!("for=10.9.9.9;proto=https;host=evil.example, {ours}")
                    } else {
                        ours
                    };
                    assert_eq!(echoed(&body, "forwarded"), [want], "{what}");
                }
                if expected.contains(&"x-forwarded-for") {
                    assert_eq!(echoed(&body, "x-forwarded-for"), ["127.0.0.1"], "{what}");
                    assert_eq!(echoed(&body, "x-real-ip"), ["127.0.0.1"], "{what}");
                    assert_eq!(echoed(&body, "x-forwarded-proto"), ["http"], "{what}");
                }
            }
        }
    }
}

/// Runs `ptth-gateway` with `args` and returns (exited with success, stderr); it must exit
/// by itself within the deadline.
async fn gateway_exit(args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin_dir().join("ptth-gateway"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("a gateway with a bad setting exits at once")
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trusted_proxy_cidr_stops_the_gateway_at_start_naming_the_key() {
    let dir = TempDir::new("fwd-cidr");
    let dev = dir.0.join("dev");
    let dev = dev.to_str().unwrap();
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--tunnel",
        "127.0.0.1:0",
        "--dev",
        dev,
    ];
    let mut args = base.to_vec();
    args.extend(["--trusted-proxy", "10.0.0.1/8"]);
    let (ok, err) = gateway_exit(&args).await;
    assert!(!ok, "started with a bad CIDR: {err}");
    assert!(
        err.contains("--trusted-proxy (config key trusted-proxy)")
            && err.contains("host bits")
            && err.contains("10.0.0.0/8"),
        "{err}"
    );

    let file = dir.0.join("gateway.toml");
    std::fs::write(
        &file,
        "trusted-proxies = [\"10.0.0.0/8\", \"fe80::1%eth0\"]\n",
    )
    .unwrap();
    let mut args = base.to_vec();
    args.extend(["--config", file.to_str().unwrap()]);
    let (ok, err) = gateway_exit(&args).await;
    assert!(!ok, "started with a bad CIDR in the file: {err}");
    assert!(
        err.contains("trusted-proxies") && err.contains("not an IP address"),
        "{err}"
    );

    // The twin: the same file with good CIDRs starts and serves.
    std::fs::write(&file, "trusted-proxies = [\"10.0.0.0/8\", \"::1\"]\n").unwrap();
    let gw = Gateway::start(&dir.0.join("dev"), &["--config", file.to_str().unwrap()])
        .await
        .unwrap();
    let (res, body) = send(&client(false), get(&gw, "nobody.localhost", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
}

/// The hex SHA-256 of the gateway certificate's SubjectPublicKeyInfo (the right pin).
fn gateway_pin(gw: &Gateway) -> String {
    let pem = std::fs::read(gw.dev.join("gateway.pem")).unwrap();
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap();
    ptth_auth::spki_sha256(&leaf)
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_pin_holds_with_danger_accept_any_gateway_over_tcp_and_quic() {
    let dir = TempDir::new("fwd-pin");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let right = gateway_pin(&gw);
    // The same pin with its first digit changed: a different key.
    let wrong = format!(
        "{}{}",
        if right.starts_with('0') { "1" } else { "0" },
        &right[1..]
    );
    for m in ["rh2", "rh3"] {
        let host = format!("pin-wrong-{m}.localhost");
        let (_wrong_origin, mut logs) = Origin::start_logged(
            &gw,
            m,
            &host,
            &["--danger-accept-any-gateway", "--gateway-pin", &wrong],
        )
        .await
        .unwrap();
        let line = logs
            .wait_for("does not match --gateway-pin", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(line.contains(&right), "{m}: names the key it saw: {line}");
        // It refused the gateway, so it never registered.
        let (res, body) = send(&client(false), get(&gw, &host, "/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{m}");
        assert!(
            String::from_utf8_lossy(&body).contains("no origin is connected"),
            "{m}: {body:?}"
        );
        assert!(
            !logs.seen().iter().any(|l| l.contains("connection up")),
            "{m}: {:?}",
            logs.seen()
        );

        // The twin: the right pin with the same danger flag registers and serves.
        let host = format!("pin-right-{m}.localhost");
        let (_right_origin, mut logs) = Origin::start_logged(
            &gw,
            m,
            &host,
            &["--danger-accept-any-gateway", "--gateway-pin", &right],
        )
        .await
        .unwrap();
        logs.wait_for("its key must still match the pin", Duration::from_secs(30))
            .await
            .unwrap();
        wait_ready(&gw, &host).await.unwrap();
        assert!(
            !logs
                .seen()
                .iter()
                .any(|l| l.contains("does not match --gateway-pin")),
            "{m}: {:?}",
            logs.seen()
        );
    }
}
