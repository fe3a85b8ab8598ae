//! Bounded setup on both edges, through the real gateway binary: peers that connect to the
//! tunnel port and stay silent are closed at the setup deadline (logged at debug, never
//! warn), connections in setup are capped in total and per source address with the excess
//! closed at once, and public connections that send no request are closed at the header
//! timeout while honest keep-alive clients keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ptth_tests::*;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// `--setup-timeout` and `--public-header-timeout` in these tests, in seconds.
const DEADLINE: u64 = 2;
/// How much later than the deadline a close may come on a loaded machine.
const MARGIN: Duration = Duration::from_secs(10);
/// The debug filter that shows the gateway's own reasons and everyone's warnings.
const LOG: &str = "warn,ptth_gateway=debug,ptth_h3=debug";

fn local(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Reads (and discards) until the peer closes; returns how long after `since` that was.
/// Fails if the connection is still open after `limit`.
async fn closed_after(
    mut io: impl AsyncRead + Unpin,
    since: Instant,
    limit: Duration,
) -> Result<Duration, String> {
    let mut buf = vec![0u8; 16 * 1024];
    let read_to_end = async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return since.elapsed(),
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout_at(since + limit, read_to_end)
        .await
        .map_err(|_| format!("still open after {limit:?}"))
}

/// Whether `io` is still open: nothing to read, no EOF, for a moment.
async fn still_open(io: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(Duration::from_millis(300), io.read(&mut buf))
        .await
        .is_err()
}

fn no_warnings(log: &str) {
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings.is_empty(),
        "silent peers must not cause warnings:\n{}",
        warnings.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tunnel_peers_are_closed_at_the_setup_deadline_while_honest_origins_register() {
    let dir = TempDir::new("edge-setup-silent");
    let log = dir.0.join("gateway.log");
    let deadline = DEADLINE.to_string();
    let gw = start_gateway_logging(&dir.0, &["--setup-timeout", &deadline], &log, LOG)
        .await
        .unwrap();

    // The flood, each kind from its own address (the per-address cap is 32): bare TCP that
    // never sends a ClientHello, TLS that never sends a setup request (http/1.1, h2), TLS
    // with an ALPN-only mechanism that never answers the authorisation request (rh1, rh2).
    let mut watchers = Vec::new();
    let mut count = 0;
    for _ in 0..6 {
        let tcp = tcp_from(local(2), gw.tunnel).await.unwrap();
        let since = Instant::now();
        watchers.push((
            "bare TCP",
            tokio::spawn(closed_after(tcp, since, secs(DEADLINE) + MARGIN)),
        ));
        count += 1;
    }
    for (n, alpn) in [
        (3u8, &b"http/1.1"[..]),
        (4, b"h2"),
        (5, b"rh2"),
        (6, b"rh1"),
    ] {
        for _ in 0..6 {
            let tls = tls_connect_from(&gw, local(n), &[alpn]).await.unwrap();
            let since = Instant::now();
            let what = match alpn {
                b"http/1.1" => "TLS http/1.1",
                b"h2" => "TLS h2",
                b"rh2" => "TLS rh2",
                _ => "TLS rh1",
            };
            watchers.push((
                what,
                tokio::spawn(closed_after(tls, since, secs(DEADLINE) + MARGIN)),
            ));
            count += 1;
        }
    }
    // QUIC: an ALPN-only mechanism (rh3) that never answers, and a setup ALPN (h3) that
    // never opens a stream.
    let mut quic = Vec::new();
    for alpn in [&b"rh3"[..], b"h3"] {
        for _ in 0..2 {
            let (endpoint, conn) = quic_connect_from(&gw, local(7), gw.tunnel, alpn)
                .await
                .unwrap();
            quic.push((alpn, Instant::now(), endpoint, conn));
            count += 1;
        }
    }

    // Positive twin: an honest origin registers and serves while the flood is in setup.
    let _origin = Origin::start(&gw, "rh2", "good.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "good.localhost").await.unwrap();
    let (res, body) = send(&client(false), get(&gw, "good.localhost", "/"))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "the honest origin serves during the flood"
    );
    assert!(!body.is_empty());

    for (what, watcher) in watchers {
        let after = watcher
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            after >= Duration::from_millis(1500),
            "{what} was closed after {after:?}, before the setup deadline"
        );
    }
    for (alpn, since, _endpoint, conn) in quic {
        let alpn = String::from_utf8_lossy(alpn);
        let reason = tokio::time::timeout_at(since + secs(DEADLINE) + MARGIN, conn.closed())
            .await
            .unwrap_or_else(|_| panic!("QUIC {alpn}: still open after the deadline"));
        let after = since.elapsed();
        assert!(
            after >= Duration::from_millis(1500),
            "QUIC {alpn} was closed after {after:?}, before the setup deadline"
        );
        // Closed by the gateway, not by our idle timer.
        assert!(
            matches!(
                reason,
                quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::ConnectionClosed(_)
            ),
            "QUIC {alpn}: {reason}"
        );
    }

    // The reason, once per silent peer, at debug; and no warning about any of them.
    let text = wait_for_log(&log, "before the setup deadline", count, secs(10))
        .await
        .unwrap();
    no_warnings(&text);
    // Still serving after the flood.
    let (res, _) = send(&client(false), get(&gw, "good.localhost", "/"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_setup_caps_close_the_excess_at_once() {
    let dir = TempDir::new("edge-setup-caps");
    let log = dir.0.join("gateway.log");
    // One worker, so one listening socket accepts in arrival order: with a socket per worker
    // the kernel may queue the fifth connection on a worker that accepts it before another
    // worker accepted one of the first four, and then one of those is the excess instead.
    let gw = start_gateway_logging(
        &dir.0,
        &[
            "--threads",
            "1",
            "--setup-timeout",
            "60",
            "--max-pending-setups",
            "6",
            "--max-pending-setups-per-ip",
            "4",
        ],
        &log,
        LOG,
    )
    .await
    .unwrap();

    // Four silent connections from one address are in setup...
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(tcp_from(local(8), gw.tunnel).await.unwrap());
    }
    // ...so the fifth from that address is closed at once, while the four stay open.
    let fifth = tcp_from(local(8), gw.tunnel).await.unwrap();
    let after = closed_after(fifth, Instant::now(), secs(5)).await.unwrap();
    assert!(after < secs(5), "closed at once, not at the deadline");
    wait_for_log(
        &log,
        "from one address (--max-pending-setups-per-ip)",
        1,
        secs(10),
    )
    .await
    .unwrap();
    for c in &mut first {
        assert!(still_open(c).await, "the first four stay in setup");
    }

    // Positive twin: another address is not affected by the first one's cap.
    let mut other = Vec::new();
    for _ in 0..2 {
        let mut c = tcp_from(local(9), gw.tunnel).await.unwrap();
        assert!(still_open(&mut c).await, "another address gets in");
        other.push(c);
    }
    // Six in setup in total: a third address is closed at once too, for the total cap.
    let third = tcp_from(local(10), gw.tunnel).await.unwrap();
    closed_after(third, Instant::now(), secs(5)).await.unwrap();
    wait_for_log(&log, "in setup (--max-pending-setups)", 1, secs(10))
        .await
        .unwrap();
    // QUIC shares the count: refused before its handshake (after a Retry, since the cap is
    // under pressure).
    let refused = quic_connect_from(&gw, local(11), gw.tunnel, b"rh3").await;
    assert!(
        refused.is_err(),
        "a QUIC origin past the total cap is refused"
    );
    wait_for_log(
        &log,
        "origin QUIC connection refused at accept",
        1,
        secs(10),
    )
    .await
    .unwrap();

    // Places come back when connections leave: after one of the first four closes, its
    // address gets a connection in again (the per-address entry was counted down).
    drop(first.pop());
    let deadline = Instant::now() + secs(10);
    loop {
        let mut c = tcp_from(local(8), gw.tunnel).await.unwrap();
        if still_open(&mut c).await {
            first.push(c);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place of a closed connection never came back"
        );
    }
    // And with places free again, the same QUIC handshake completes.
    drop(other);
    let deadline = Instant::now() + secs(10);
    let _quic = loop {
        match quic_connect_from(&gw, local(11), gw.tunnel, b"rh3").await {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "QUIC never got a place: {e}"),
        }
    };
    no_warnings(&std::fs::read_to_string(&log).unwrap());
}

/// An h2c connection preface and an empty SETTINGS frame: an HTTP/2 client that then sends
/// no request.
const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_public_connections_are_closed_at_the_header_timeout_and_keep_alive_works() {
    let dir = TempDir::new("edge-setup-public");
    let log = dir.0.join("gateway.log");
    let deadline = DEADLINE.to_string();
    let gw = start_gateway_logging(&dir.0, &["--public-header-timeout", &deadline], &log, LOG)
        .await
        .unwrap();
    let _origin = Origin::start(&gw, "rh2", "app.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "app.localhost").await.unwrap();
    // An HTTP/2 graceful shutdown waits up to 5 s for the client's PING answer.
    let limit = secs(DEADLINE) + secs(5) + MARGIN;

    // Silent cleartext TCP (hyper would wait forever to tell HTTP/1.1 from h2c).
    let silent = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    let silent = tokio::spawn(closed_after(silent, Instant::now(), limit));
    // h2c with a preface but no HEADERS.
    let mut h2c = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    h2c.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
    let h2c = tokio::spawn(closed_after(h2c, Instant::now(), limit));
    // HTTP/1.1 with half a request head.
    let mut half = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n")
        .await
        .unwrap();
    let half = tokio::spawn(closed_after(half, Instant::now(), limit));

    // Positive twin: an honest HTTP/1.1 keep-alive client, idle between requests for less
    // than the timeout, keeps its connection.
    let mut honest = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    for i in 0..3 {
        if i > 0 {
            // Idle between requests, well within the header timeout.
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        honest
            .write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
            .await
            .unwrap();
        let head = read_response(&mut honest).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
    }
    let idle_since = Instant::now();

    for (what, watcher) in [
        ("silent TCP", silent),
        ("h2c without HEADERS", h2c),
        ("half a head", half),
    ] {
        let after = watcher
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            after >= Duration::from_millis(1500),
            "{what} was closed after {after:?}, before the header timeout"
        );
    }
    // And the honest connection, idle now, is closed at the timeout as well.
    let after = closed_after(honest, idle_since, limit).await.unwrap();
    assert!(after >= Duration::from_millis(1500), "{after:?}");
    wait_for_log(&log, "no request within the header timeout", 2, secs(10))
        .await
        .unwrap();
}

/// Reads one small response (head and a short body) from an HTTP/1.1 connection.
async fn read_response(io: &mut tokio::net::TcpStream) -> String {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    tokio::time::timeout(secs(10), async {
        loop {
            let k = io.read(&mut buf[n..]).await.unwrap();
            assert!(k > 0, "closed mid-response");
            n += k;
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .expect("the hello answer has a content-length");
                if n >= end + 4 + length {
                    return;
                }
            }
        }
    })
    .await
    .expect("a response");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_http3_bounds_streams_without_headers_and_idle_connections() {
    let dir = TempDir::new("edge-setup-h3");
    let log = dir.0.join("gateway.log");
    let deadline = DEADLINE.to_string();
    let gw = start_gateway_logging(&dir.0, &["--public-header-timeout", &deadline], &log, LOG)
        .await
        .unwrap();
    let _origin = Origin::start(&gw, "rh2", "app.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "app.localhost").await.unwrap();

    // A request stream that sends one byte of a HEADERS frame and nothing more is reset with
    // H3_REQUEST_INCOMPLETE at the header timeout, while a request sent on the same
    // connection a moment later is answered.
    let (_endpoint, raw) = quic_connect_from(&gw, local(1), gw.listen_tls, b"h3")
        .await
        .unwrap();
    let mut control = raw.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap(); // SETTINGS, empty
    let (mut stalled, mut stalled_recv) = raw.open_bi().await.unwrap();
    stalled.write_all(&[0x01]).await.unwrap();
    let stalled_since = Instant::now();
    // Part way into the timeout, an honest request (this also restarts the idle timer).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    let authority = b"app.localhost";
    // QPACK, static table only: :method GET, :scheme https, :path /, :authority literal.
    let mut block = vec![0x00, 0x00, 0xd1, 0xd7, 0xc1, 0x50, authority.len() as u8];
    block.extend_from_slice(authority);
    let mut frame = vec![0x01, block.len() as u8];
    frame.extend_from_slice(&block);
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    let response = tokio::time::timeout(MARGIN, recv.read_to_end(64 * 1024))
        .await
        .expect("an answer")
        .expect("the honest request is answered, not reset");
    // A HEADERS frame whose block starts with :status 200 (static index 25).
    assert_eq!(response.first(), Some(&0x01), "{response:?}");
    assert!(
        response[..8.min(response.len())].contains(&0xd9),
        "200: {response:?}"
    );
    let idle_since = Instant::now();

    let got = tokio::time::timeout(secs(DEADLINE) + MARGIN, stalled_recv.read_to_end(1024))
        .await
        .expect("the stream without HEADERS is still open after the header timeout");
    let after = stalled_since.elapsed();
    match got {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), 0x010d, "H3_REQUEST_INCOMPLETE")
        }
        other => panic!("expected a reset, got {other:?}"),
    }
    assert!(
        after >= Duration::from_millis(1500),
        "reset after {after:?}"
    );
    // And the connection, with no request in flight, is shut down by the gateway (not by
    // our idle timer) at the header timeout after its last exchange.
    let reason =
        tokio::time::timeout_at(idle_since + secs(DEADLINE) + secs(5) + MARGIN, raw.closed())
            .await
            .expect("the idle public HTTP/3 connection is still open");
    let after = idle_since.elapsed();
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code.into_inner() == 0x100),
        "closed by the gateway with H3_NO_ERROR: {reason}"
    );
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}"
    );

    // Positive twin: a public HTTP/3 client gets its answers, also after an idle pause
    // shorter than the timeout.
    let h3 = h3_client(&gw).await.unwrap();
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let req = http::Request::get(h3_url("app.localhost", "/"))
            .body(full(""))
            .unwrap();
        let (res, body) = h3.send(req).await.unwrap();
        assert_eq!(res.status(), 200, "request {i}");
        assert!(!body.is_empty());
    }
    wait_for_log(&log, "no request HEADERS in time", 1, secs(10))
        .await
        .unwrap();
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_connections_outlive_the_setup_deadline() {
    // Carriers (HTTP/2 and HTTP/3 extended CONNECT, PTTH -00 OPTIONS) live on after their
    // setup; upgraded HTTP/1.1 and ALPN-only connections are handed over. None of them may be
    // closed by the setup deadline once registered.
    let dir = TempDir::new("edge-setup-registered");
    let log = dir.0.join("gateway.log");
    let deadline = DEADLINE.to_string();
    let gw = start_gateway_logging(&dir.0, &["--setup-timeout", &deadline], &log, LOG)
        .await
        .unwrap();
    let mechanisms = [
        "connect-h2",
        "upgrade-h1",
        "rh2",
        "options-h3",
        "connect-h3",
        "rh3",
    ];
    let mut origins = Vec::new();
    for m in mechanisms {
        origins.push(
            Origin::start(&gw, m, &format!("{m}.localhost"), &[])
                .await
                .unwrap(),
        );
    }
    for m in mechanisms {
        wait_ready(&gw, &format!("{m}.localhost")).await.unwrap();
    }
    // Well past every connection's setup deadline...
    tokio::time::sleep(secs(DEADLINE) * 2).await;
    // ...every origin still serves, and no connection was closed for its setup deadline
    // (an origin would have reconnected, but the gateway would have logged the close).
    let c = client(true);
    for m in mechanisms {
        let (res, _) = send(&c, get(&gw, &format!("{m}.localhost"), "/"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{m}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let closed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("origin connection closed during setup") || l.contains("WARN"))
        .collect();
    assert!(closed.is_empty(), "{}", closed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_slower_than_the_header_timeout_is_not_cut() {
    use axum::routing::get as route_get;
    let dir = TempDir::new("edge-setup-slow");
    let log = dir.0.join("gateway.log");
    let deadline = DEADLINE.to_string();
    let gw = start_gateway_logging(&dir.0, &["--public-header-timeout", &deadline], &log, LOG)
        .await
        .unwrap();
    // An application that takes longer to answer than the public header timeout plus the
    // 5 s an idle connection's graceful shutdown may take, so an idle timer that ignored
    // exchanges in flight would cut the answer.
    let app = axum::Router::new().route(
        "/slow",
        route_get(|| async {
            tokio::time::sleep(secs(DEADLINE) + secs(6)).await;
            "slow but sure"
        }),
    );
    let mut config = ptth_origin::OriginConfig::new(
        gw.tunnel_url().parse().unwrap(),
        "rh2".parse().unwrap(),
        vec!["slow.localhost".to_string()],
        Some(ptth_auth::BearerToken::new(gw.token()).unwrap()),
    );
    config.ca = Some(dir.0.join("ca.pem"));
    let origin = ptth_origin::Origin::new(config).unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(origin.serve(app, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    wait_ready_path(&gw, "slow.localhost").await;

    // An exchange in flight is not idle: HTTP/1.1, h2c and HTTP/3 all get the answer.
    let h3 = h3_client(&gw).await.unwrap();
    let (c1, c2) = (client(false), client(true));
    let started = Instant::now();
    let (h1, h2, h3) = tokio::join!(
        send(&c1, get(&gw, "slow.localhost", "/slow")),
        send(&c2, get(&gw, "slow.localhost", "/slow")),
        h3.send(
            http::Request::get(h3_url("slow.localhost", "/slow"))
                .body(full(""))
                .unwrap()
        ),
    );
    assert!(
        started.elapsed() > secs(DEADLINE) + secs(5),
        "the answers were slow"
    );
    for (what, got) in [
        ("HTTP/1.1", h1.map_err(|e| e.to_string())),
        ("h2c", h2.map_err(|e| e.to_string())),
        ("HTTP/3", h3.map_err(|e| e.to_string())),
    ] {
        let (res, body) = got.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(res.status(), 200, "{what}");
        assert_eq!(&body[..], b"slow but sure", "{what}");
    }
    let _ = stop_tx.send(true);
}

/// Waits until `host` answers `GET /` with anything but 503 (the app has no `/` route).
async fn wait_ready_path(gw: &Gateway, host: &str) {
    let c = client(false);
    let deadline = Instant::now() + secs(20);
    loop {
        if let Ok((res, _)) = send(&c, get(gw, host, "/")).await {
            if res.status() != 503 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{host} never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
