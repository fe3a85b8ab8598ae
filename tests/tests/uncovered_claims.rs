//! Claims of the docs that no other test covered (issue 16): proxy-mode WebSocket through the
//! binaries, `ptth-origin --shutdown-grace` and `ptth-origin --max-concurrent-streams` as the
//! gateway's capacity for an HTTP/2 origin connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// tungstenite's own `Error` is large; the closures that panic on it only pass it along.
#![allow(clippy::result_large_err)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::Full;
use ptth_tests::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket echo server on 127.0.0.1 (tokio-tungstenite `accept_async`): every text
/// message comes back as `upstream echo: <message>`, so an echo proves it crossed the whole
/// path to this server and back.
async fn websocket_echo_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Text(t) => Message::text(format!("upstream echo: {}", t.as_str())),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// What an HTTP upstream saw, in order, with the test's own releases interleaved.
#[derive(Clone, Default)]
struct Events {
    seen: Arc<Mutex<Vec<String>>>,
    grew: Arc<tokio::sync::Notify>,
}

impl Events {
    fn push(&self, event: String) {
        self.seen.lock().unwrap().push(event);
        self.grew.notify_waiters();
    }

    fn list(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits up to `secs` for `event`; panics with everything seen if it does not come.
    async fn wait_for(&self, event: &str, secs: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let grew = self.grew.notified();
            if self.list().iter().any(|e| e == event) {
                return;
            }
            if tokio::time::timeout_at(deadline, grew).await.is_err() {
                panic!("no {event:?} within {secs} s; seen: {:?}", self.list());
            }
        }
    }

    fn position(&self, event: &str) -> usize {
        let list = self.list();
        list.iter()
            .position(|e| e == event)
            .unwrap_or_else(|| panic!("no {event:?} in {list:?}"))
    }
}

/// An HTTP/1.1 upstream on 127.0.0.1 for `ptth-origin --upstream`:
/// - `GET /slow/<ms>` records `arrived slow/<ms>` and answers `slept <ms> ms` after `ms`;
/// - `GET /hold/<id>` records `arrived hold/<id>` and answers `released <id>` once the test
///   calls [`Upstream::release`] for `id`.
struct Upstream {
    addr: SocketAddr,
    events: Events,
    released: tokio::sync::watch::Sender<HashSet<String>>,
}

impl Upstream {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let events = Events::default();
        let (released, _) = tokio::sync::watch::channel(HashSet::new());
        let (ev, rel) = (events.clone(), released.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (ev, rel) = (ev.clone(), rel.clone());
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let (ev, mut rel) = (ev.clone(), rel.subscribe());
                    async move {
                        let path = req.uri().path().trim_start_matches('/').to_string();
                        ev.push(format!("arrived {path}"));
                        let body = if let Some(ms) = path.strip_prefix("slow/") {
                            let ms: u64 = ms.parse().unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            format!("slept {ms} ms")
                        } else if let Some(id) = path.strip_prefix("hold/") {
                            let _ = rel.wait_for(|s| s.contains(id)).await;
                            format!("released {id}")
                        } else {
                            "upstream".to_string()
                        };
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            events,
            released,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Records `released <id>` and lets `/hold/<id>` answer.
    fn release(&self, id: &str) {
        self.events.push(format!("released {id}"));
        self.released.send_modify(|s| {
            s.insert(id.to_string());
        });
    }
}

/// Sends `GET <path>` for `host` from a public HTTP/1.1 client in a task of its own.
fn spawn_get(
    gw: &Gateway,
    host: &str,
    path: &str,
) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let req = get(gw, host, path);
    tokio::spawn(async move {
        match send(&client(false), req).await {
            Ok((res, body)) => (res.status(), String::from_utf8_lossy(&body).into_owned()),
            Err(e) => panic!("request failed in transport: {e:#}"),
        }
    })
}

async fn joined(
    task: tokio::task::JoinHandle<(StatusCode, String)>,
    secs: u64,
) -> (StatusCode, String) {
    tokio::time::timeout(Duration::from_secs(secs), task)
        .await
        .unwrap_or_else(|_| panic!("no answer within {secs} s"))
        .unwrap()
}

/// Opens a WebSocket to `host` through the gateway's public HTTP/1.1 listener, retrying
/// while the gateway answers 503 (the origin has not registered yet), for up to 60 s.
async fn ws_connect(
    gw: &Gateway,
    host: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut wsreq =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/chat", gw.listen),
            )
            .unwrap();
        wsreq
            .headers_mut()
            .insert("host", http::HeaderValue::from_str(host).unwrap());
        let attempt = tokio::time::timeout(
            Duration::from_secs(15),
            tokio_tungstenite::connect_async(wsreq),
        )
        .await
        .unwrap_or_else(|_| panic!("{host}: no handshake answer within 15 s"));
        match attempt {
            Ok(opened) => return opened,
            Err(tokio_tungstenite::tungstenite::Error::Http(res))
                if res.status() == StatusCode::SERVICE_UNAVAILABLE
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{host}: websocket handshake: {e}"),
        }
    }
}

/// Proxy-mode WebSocket: a public HTTP/1.1 WebSocket client → the gateway → `ptth-origin
/// --upstream` → a WebSocket echo server of the test's own. A message comes back from that
/// server, and so does one sent after a pause, over every TCP mechanism (reversed HTTP/1.1
/// origins forward the Upgrade; HTTP/2 ones turn the gateway's RFC 8441 CONNECT back into an
/// HTTP/1.1 Upgrade towards the upstream). WebSocket from public HTTP/2 and HTTP/3 clients is
/// issue 12's and not tested here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_proxy_mode_origins_reaches_the_upstream() {
    let dir = TempDir::new("ws-proxy");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let echo = websocket_echo_upstream().await;
    let upstream = format!("http://{echo}");
    let mut origins = Vec::new();
    for m in TCP_MECHANISMS {
        let host = format!("{m}.localhost");
        origins.push(
            Origin::start(&gw, m, &host, &["--upstream", &upstream])
                .await
                .unwrap(),
        );
    }
    for m in TCP_MECHANISMS {
        let host = format!("{m}.localhost");
        let (mut ws, resp) = ws_connect(&gw, &host).await;
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS, "{m}");
        for (i, pause) in [(0, Duration::ZERO), (1, Duration::from_secs(3))] {
            // The pause is part of the claim (an idle tunnel stays open), not synchronisation.
            tokio::time::sleep(pause).await;
            let msg = format!("message {i} over {m}");
            ws.send(Message::text(msg.clone())).await.unwrap();
            let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap_or_else(|_| panic!("{m}: no echo of message {i} within 10 s"))
                .unwrap_or_else(|| panic!("{m}: the tunnel closed before echoing message {i}"))
                .unwrap_or_else(|e| panic!("{m}: message {i}: {e}"));
            assert_eq!(
                echo.into_text().unwrap().as_str(),
                format!("upstream echo: {msg}"),
                "{m}"
            );
        }
        ws.close(None).await.unwrap();
    }
}

/// `ptth-origin --shutdown-grace SECS`: on SIGTERM, a request shorter than the grace
/// finishes whole, and one longer than the grace is cut when the grace ends, with the
/// origin's own warning, and the origin exits then (not after the long request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_finishes_short_requests_and_cuts_long_ones() {
    const GRACE: Duration = Duration::from_secs(6);
    let dir = TempDir::new("grace");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let upstream = Upstream::start().await;
    let mut origin = Origin::start(
        &gw,
        "rh2",
        "grace.localhost",
        &[
            "--upstream",
            &upstream.url(),
            "--connections",
            "1",
            "--shutdown-grace",
            &GRACE.as_secs().to_string(),
        ],
    )
    .await
    .unwrap();
    wait_serving(&gw, "grace.localhost", 60).await.unwrap();

    // Both requests are at the upstream (so in flight on the origin) before the signal.
    let short = spawn_get(&gw, "grace.localhost", "/slow/2000");
    let long = spawn_get(&gw, "grace.localhost", "/slow/60000");
    upstream.events.wait_for("arrived slow/2000", 30).await;
    upstream.events.wait_for("arrived slow/60000", 30).await;

    let signalled = Instant::now();
    let exit = origin.terminate().await.unwrap();
    let took = signalled.elapsed();

    // Positive twin: the short request ends within the grace, whole.
    let (status, body) = joined(short, 30).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "slept 2000 ms"),
        "a request shorter than the grace must finish"
    );
    // The long one is cut when the grace ends: the origin says so and exits then.
    origin
        .log
        .wait_for("requests still running after the grace period; closing", 10)
        .await
        .unwrap();
    assert!(
        took >= GRACE.mul_f32(0.9) && took < GRACE + Duration::from_secs(10),
        "the origin must exit when the {GRACE:?} grace ends, took {took:?} ({exit})"
    );
    let (status, body) = joined(long, 30).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "the cut request must be a 502, got {status}: {body}"
    );
    // The gateway blames the origin: its connection failed the request or closed first.
    assert!(
        body.contains("the origin failed the request")
            || body.contains("the origin connection closed before it answered"),
        "the 502 must name the origin's connection as the cause: {body}"
    );
}

/// Starts a gateway whose per-host queue holds one request, and one rh2 origin (one
/// connection) proxying to an [`Upstream`] with `--max-concurrent-streams streams`.
async fn capacity_setup(dir: &TempDir, streams: &str) -> (Gateway, Origin, Upstream) {
    let gw = Gateway::start(
        &dir.0,
        &["--queue-limit-per-host", "1", "--queue-timeout", "120"],
    )
    .await
    .unwrap();
    let upstream = Upstream::start().await;
    let origin = Origin::start(
        &gw,
        "rh2",
        "cap.localhost",
        &[
            "--upstream",
            &upstream.url(),
            "--connections",
            "1",
            "--max-concurrent-streams",
            streams,
        ],
    )
    .await
    .unwrap();
    wait_serving(&gw, "cap.localhost", 60).await.unwrap();
    (gw, origin, upstream)
}

/// The reason the gateway gives when a host's share of the queue is full.
const HOST_QUEUE_FULL: &str = "the host's share of the queue is full";

/// `ptth-origin --max-concurrent-streams 2`: the gateway reads the origin's
/// SETTINGS_MAX_CONCURRENT_STREAMS as the connection's capacity, so with two requests held
/// a third waits in the gateway's queue (with a fourth sent beside it, one of the two is
/// refused because the queue's one place is taken) and reaches the origin only after one held request is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_two_queues_the_third_request() {
    let dir = TempDir::new("streams-2");
    let (gw, _origin, upstream) = capacity_setup(&dir, "2").await;
    let r1 = spawn_get(&gw, "cap.localhost", "/hold/1");
    let r2 = spawn_get(&gw, "cap.localhost", "/hold/2");
    upstream.events.wait_for("arrived hold/1", 30).await;
    upstream.events.wait_for("arrived hold/2", 30).await;

    // A third and a fourth request: the connection's two streams are taken, so one takes
    // the queue's one place and the other is refused for that reason, at once.
    let mut r3 = spawn_get(&gw, "cap.localhost", "/hold/3");
    let mut r4 = spawn_get(&gw, "cap.localhost", "/hold/4");
    let (refused, queued, queued_id) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            r = &mut r3 => (r.unwrap(), r4, "4"),
            r = &mut r4 => (r.unwrap(), r3, "3"),
        }
    })
    .await
    .expect("neither the third nor the fourth request was refused within 30 s");
    assert!(
        refused.0 == StatusCode::SERVICE_UNAVAILABLE && refused.1.contains(HOST_QUEUE_FULL),
        "one of the third and fourth requests must be refused for the full host queue, got {}: {}",
        refused.0,
        refused.1
    );
    let arrived = format!("arrived hold/{queued_id}");
    assert!(
        !upstream.events.list().contains(&arrived),
        "the queued request reached the origin past its two streams: {:?}",
        upstream.events.list()
    );

    upstream.release("1");
    assert_eq!(
        joined(r1, 30).await,
        (StatusCode::OK, "released 1".to_string())
    );
    upstream.events.wait_for(&arrived, 30).await;
    assert!(
        upstream.events.position(&arrived) > upstream.events.position("released 1"),
        "the queued request must reach the origin only after a held one ended: {:?}",
        upstream.events.list()
    );
    upstream.release("2");
    upstream.release(queued_id);
    assert_eq!(
        joined(r2, 30).await,
        (StatusCode::OK, "released 2".to_string())
    );
    assert_eq!(
        joined(queued, 30).await,
        (StatusCode::OK, format!("released {queued_id}"))
    );
}

/// Positive twin of [`max_concurrent_streams_two_queues_the_third_request`]: the same setup
/// with `--max-concurrent-streams 8` lets the third and fourth requests reach the origin
/// while the first two are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_eight_does_not_hold_up_the_third_request() {
    let dir = TempDir::new("streams-8");
    let (gw, _origin, upstream) = capacity_setup(&dir, "8").await;
    let held: Vec<_> = (1..=4)
        .map(|i| spawn_get(&gw, "cap.localhost", &format!("/hold/{i}")))
        .collect();
    for i in 1..=4 {
        upstream
            .events
            .wait_for(&format!("arrived hold/{i}"), 30)
            .await;
    }
    assert!(
        !upstream
            .events
            .list()
            .iter()
            .any(|e| e.starts_with("released")),
        "nothing was released before all four arrived"
    );
    for i in 1..=4 {
        upstream.release(&i.to_string());
    }
    for (i, task) in (1..=4).zip(held) {
        assert_eq!(
            joined(task, 30).await,
            (StatusCode::OK, format!("released {i}"))
        );
    }
}
