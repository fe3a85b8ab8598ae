//! WebSocket through the gateway from every public protocol to every kind of origin
//! connection (issue 12 item 0, issue 16 item 4): public HTTP/1.1 (RFC 6455 `Upgrade`),
//! HTTP/2 over TLS and h2c (RFC 8441 extended CONNECT) and HTTP/3 (RFC 9220) clients, to
//! `--hello` origins over rh1, rh2, upgrade-h1, connect-h2 and rh3. A real WebSocket client
//! (tokio-tungstenite) runs over each public tunnel: text and binary messages, one larger
//! than 64 KiB, the close handshake, and an origin that dies mid-socket.

// tungstenite's own `Error` is large; the closures that panic on it only pass it along.
#![allow(clippy::result_large_err)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use ptth_tests::*;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The mechanisms the brief names: both HTTP/1.1 and HTTP/2 kinds of TCP origin
/// connection, and reversed HTTP/3.
const MECHANISMS: &[&str] = &["rh1", "rh2", "upgrade-h1", "connect-h2", "rh3"];

/// How long one WebSocket step (handshake, one echo, the close) may take.
const STEP: Duration = Duration::from_secs(20);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Ws = WebSocketStream<Box<dyn Io>>;

/// The public protocols a client can open a WebSocket with.
#[derive(Debug, Clone, Copy)]
enum Public {
    /// HTTP/1.1 `Upgrade` on the cleartext listener.
    H1,
    /// HTTP/2 with prior knowledge on the cleartext listener, extended CONNECT.
    H2c,
    /// HTTP/2 on the TLS listener (ALPN h2), extended CONNECT.
    H2Tls,
    /// HTTP/3 on the public QUIC endpoint, extended CONNECT.
    H3,
}

const PUBLICS: [Public; 4] = [Public::H1, Public::H2c, Public::H2Tls, Public::H3];

/// Opens a WebSocket to `host`'s `/ws` through the gateway over `public`, checking the
/// answer has the form that public protocol expects.
async fn open(gw: &Gateway, public: Public, host: &str) -> Ws {
    tokio::time::timeout(STEP, open_inner(gw, public, host))
        .await
        .unwrap_or_else(|_| panic!("{public:?} → {host}: no WebSocket within {STEP:?}"))
}

async fn open_inner(gw: &Gateway, public: Public, host: &str) -> Ws {
    match public {
        Public::H1 => {
            let tcp = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
            let io: Box<dyn Io> = Box::new(tcp);
            // tungstenite checks the 101 and its Sec-WebSocket-Accept itself.
            let url = format!("ws://{host}:{}/ws", gw.listen.port());
            let (ws, res) = tokio_tungstenite::client_async(url, io)
                .await
                .unwrap_or_else(|e| panic!("{public:?} → {host}: handshake: {e}"));
            assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
            ws
        }
        Public::H2c | Public::H2Tls => {
            let (io, scheme, port): (Box<dyn Io>, _, _) = if matches!(public, Public::H2c) {
                let tcp = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
                (Box::new(tcp), "http", gw.listen.port())
            } else {
                (Box::new(tls_h2(gw).await), "https", gw.listen_tls.port())
            };
            let (mut send, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(io),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            // RFC 8441 §3: extended CONNECT only after the server's SETTINGS enabled it; an
            // ordinary request first is the simplest way to have them.
            let warm = Request::get(format!("{scheme}://{host}:{port}/"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            // Any answer will do (a proxy-mode origin's upstream may not serve `/`).
            send.send_request(warm).await.unwrap();
            let mut req = Request::connect(format!("{scheme}://{host}:{port}/ws"))
                .header("sec-websocket-version", "13")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static("websocket"));
            let mut res = send.send_request(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{public:?} → {host}");
            // RFC 8441 §5: no accept value on HTTP/2.
            assert!(res.headers().get("sec-websocket-accept").is_none());
            let upgraded = hyper::upgrade::on(&mut res).await.unwrap();
            let io: Box<dyn Io> = Box::new(hyper_util::rt::TokioIo::new(upgraded));
            WebSocketStream::from_raw_socket(io, Role::Client, None).await
        }
        Public::H3 => {
            let h3 = h3_client(gw).await.unwrap();
            let mut req = Request::connect(h3_url(host, "/ws"))
                .header("sec-websocket-version", "13")
                .body(())
                .unwrap();
            req.extensions_mut()
                .insert(ptth_h3::Protocol("websocket".into()));
            let (res, stream) = h3.connect(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "{public:?} → {host}");
            assert!(res.headers().get("sec-websocket-accept").is_none());
            // The stream lives on the client's connection: keep both together.
            let io: Box<dyn Io> = Box::new(Holding {
                io: stream,
                _h3: h3,
            });
            WebSocketStream::from_raw_socket(io, Role::Client, None).await
        }
    }
}

/// A stream and the connection it needs alive.
struct Holding<T, C> {
    io: T,
    _h3: C,
}

impl<T: AsyncRead + Unpin, C: Unpin> AsyncRead for Holding<T, C> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, C: Unpin> AsyncWrite for Holding<T, C> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A TLS connection to the public TLS listener offering only `h2`, trusting the dev CA.
async fn tls_h2(gw: &Gateway) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(dev_roots(gw).unwrap())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.listen_tls).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls
}

/// The next message, within [`STEP`].
async fn next(ws: &mut Ws, what: &str) -> Message {
    tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP:?}"))
        .unwrap_or_else(|| panic!("{what}: the socket ended"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Text and binary messages, one larger than 64 KiB, each echoed whole before the next is
/// sent, then the close handshake: the origin answers the close and the socket ends.
async fn echo_and_close(mut ws: Ws, what: &str) {
    let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    for message in [
        Message::text(format!("hello over {what}")),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::binary(big),
        Message::text("é".repeat(40_000)),
    ] {
        ws.send(message.clone()).await.unwrap();
        let got = next(&mut ws, what).await;
        assert!(
            got == message,
            "{what}: echo of a {} byte message differs",
            message.len()
        );
    }
    ws.close(None).await.unwrap();
    // RFC 6455 §5.5.1: the peer answers a Close with a Close; then the socket ends.
    let reply = next(&mut ws, what).await;
    assert!(matches!(reply, Message::Close(_)), "{what}: {reply:?}");
    let end = tokio::time::timeout(STEP, ws.next())
        .await
        .unwrap_or_else(|_| panic!("{what}: the socket did not end after the close"));
    assert!(end.is_none(), "{what}: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_and_close_from_every_public_protocol_through_every_mechanism() {
    let fleet = Fleet::start("ws-echo", MECHANISMS).await.unwrap();
    let gw = &fleet.gateway;
    for m in MECHANISMS {
        let host = format!("{m}.localhost");
        for public in PUBLICS {
            let what = format!("{public:?} → {m}");
            let ws = open(gw, public, &host).await;
            echo_and_close(ws, &what).await;
        }
    }
}

/// A WebSocket echo server of the test's own on 127.0.0.1: text comes back as `upstream
/// echo: <text>` and binary as it was, so an echo proves it crossed the whole path to this
/// server and back.
async fn websocket_echo_upstream() -> std::net::SocketAddr {
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
                        Message::Binary(b) => Message::Binary(b),
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

/// Proxy mode: `ptth-origin --upstream` turns whatever form the gateway sent (HTTP/1.1
/// `Upgrade`, or extended CONNECT over HTTP/2 or HTTP/3) into an HTTP/1.1 upgrade towards a
/// real WebSocket server, from every public protocol over every mechanism.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_proxy_mode_origins_from_every_public_protocol() {
    let dir = TempDir::new("ws-proxy-all");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let upstream = format!("http://{}", websocket_echo_upstream().await);
    let mut origins = Vec::new();
    for m in MECHANISMS {
        let host = format!("up-{m}.localhost");
        origins.push(
            Origin::start(&gw, m, &host, &["--upstream", &upstream])
                .await
                .unwrap(),
        );
    }
    for m in MECHANISMS {
        // The upstream answers no plain GET: registered is anything but "no origin" (503).
        let host = format!("up-{m}.localhost");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !matches!(status_of(&gw, &host).await, Some(s) if s != StatusCode::SERVICE_UNAVAILABLE)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{host} never registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let big: Vec<u8> = (0..80 * 1024u32).map(|i| (i % 253) as u8).collect();
    for m in MECHANISMS {
        for public in PUBLICS {
            let what = format!("{public:?} → {m} → upstream");
            let mut ws = open(&gw, public, &format!("up-{m}.localhost")).await;
            ws.send(Message::text(what.clone())).await.unwrap();
            assert_eq!(
                next(&mut ws, &what).await,
                Message::text(format!("upstream echo: {what}"))
            );
            ws.send(Message::binary(big.clone())).await.unwrap();
            assert!(
                next(&mut ws, &what).await == Message::binary(big.clone()),
                "{what}"
            );
            ws.close(None).await.unwrap();
        }
    }
    drop(origins);
}

/// The status of `GET /` on `host` through the cleartext listener; `None` on a transport
/// error.
async fn status_of(gw: &Gateway, host: &str) -> Option<StatusCode> {
    let c = client(false);
    let attempt = tokio::time::timeout(Duration::from_secs(5), send(&c, get(gw, host, "/")));
    match attempt.await {
        Ok(Ok((res, _))) => Some(res.status()),
        _ => None,
    }
}

/// An origin killed while a WebSocket is open: the public side of the socket ends (the
/// gateway passes the end on, or resets the public stream), it does not hang. Each public
/// protocol is used for at least one mechanism.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_dying_mid_socket_closes_the_public_side() {
    let dir = TempDir::new("ws-die");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let plan = [
        ("rh1", Public::H1),
        ("rh2", Public::H2c),
        ("upgrade-h1", Public::H2Tls),
        ("connect-h2", Public::H3),
        ("rh3", Public::H3),
    ];
    let mut origins = Vec::new();
    for (m, _) in plan {
        let host = format!("die-{m}.localhost");
        origins.push(Origin::start(&gw, m, &host, &[]).await.unwrap());
    }
    for (m, _) in plan {
        wait_ready(&gw, &format!("die-{m}.localhost"))
            .await
            .unwrap();
    }
    for ((m, public), mut origin) in plan.into_iter().zip(origins) {
        let what = format!("{public:?} → {m}");
        let mut ws = open(&gw, public, &format!("die-{m}.localhost")).await;
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(next(&mut ws, &what).await, Message::text("before"));
        origin.kill().await;
        // A QUIC origin's death is seen when the tunnel's idle timeout (6 s) expires.
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(Message::Close(_))) => {}
                    Some(Ok(other)) => panic!("{what}: {other:?} after the origin died"),
                }
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "{what}: the public side stayed open 30 s after the origin died"
        );
    }
}

/// An extended CONNECT over h2c to `host`'s `path`: the answer's status and body.
async fn h2c_websocket_answer(gw: &Gateway, host: &str, path: &str) -> (StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let port = gw.listen.port();
    let warm = Request::get(format!("http://{host}:{port}/"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    send.send_request(warm).await.unwrap();
    let mut req = Request::connect(format!("http://{host}:{port}{path}"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let res = tokio::time::timeout(STEP, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Refusals say why and who: an origin's refusal of a WebSocket handshake reaches a public
/// HTTP/2 client with its status and reason, whichever HTTP version carried it (an HTTP/3
/// origin's refusal body is read from the CONNECT stream); the public HTTP/3 listener
/// answers a CONNECT that is not an extended CONNECT for websocket with 501 and a reason;
/// and the positive twin of the same setup opens a WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refusals_say_why() {
    let fleet = Fleet::start("ws-refusals", &["rh1", "rh2", "rh3"])
        .await
        .unwrap();
    let gw = &fleet.gateway;
    for m in ["rh1", "rh2", "rh3"] {
        let host = format!("{m}.localhost");
        let (status, body) = h2c_websocket_answer(gw, &host, "/no-such-socket").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{m}: {body}");
        assert!(
            body.contains("no such endpoint: /no-such-socket"),
            "{m}: {body:?}"
        );
        // Positive twin: the same client and origin, the echo path.
        let mut ws = open(gw, Public::H2c, &host).await;
        ws.send(Message::text("twin")).await.unwrap();
        assert_eq!(next(&mut ws, m).await, Message::text("twin"));
    }
    let h3 = h3_client(gw).await.unwrap();
    for protocol in [None, Some("connect-udp")] {
        let mut req = Request::connect(h3_url("rh3.localhost", "/ws"))
            .body(())
            .unwrap();
        if let Some(p) = protocol {
            req.extensions_mut().insert(ptth_h3::Protocol(p.into()));
        } else {
            *req.uri_mut() = "rh3.localhost:443".parse().unwrap();
        }
        let (res, mut stream) = h3.connect(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_IMPLEMENTED, "{protocol:?}");
        let mut body = String::new();
        tokio::time::timeout(
            STEP,
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut body),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            body.contains("only as an extended CONNECT for websocket"),
            "{protocol:?}: {body:?}"
        );
    }
}
