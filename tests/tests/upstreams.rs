//! Every upstream form of `ptth-origin` end to end: `http://`, `h2c://`, `https://` (with a
//! private CA, a server name, and the insecure opt-out), `unix:` and `unix+h2c:`; `[[route]]`
//! tables; PROXY protocol v2; and uploads of a few hundred MiB with bounded memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_origin::service::hello::pattern_sha256;
use ptth_origin::service::Hello;
use ptth_tests::*;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Which HTTP a test upstream's connections speak.
#[derive(Debug, Clone, Copy)]
enum Speaks {
    Http1,
    Http2,
    /// What TLS ALPN chose.
    Alpn,
}

/// The demo service as an upstream: every answer says which upstream (`x-upstream`) and
/// which HTTP version (`x-upstream-version`) served it.
async fn serve_hello<I>(io: I, name: &'static str, speaks: Speaks)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| async move {
        let version = format!("{:?}", request.version());
        let mut response = tower_service::Service::call(&mut Hello::new(), request).await?;
        let headers = response.headers_mut();
        headers.insert("x-upstream", http::HeaderValue::from_static(name));
        headers.insert("x-upstream-version", version.parse().unwrap());
        Ok::<_, std::convert::Infallible>(response)
    });
    let io = TokioIo::new(io);
    let result = match speaks {
        Speaks::Http1 => hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades()
            .await
            .map_err(|e| e.to_string()),
        Speaks::Http2 | Speaks::Alpn => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
                .map_err(|e| e.to_string())
        }
    };
    if let Err(error) = result {
        eprintln!("upstream {name}: {error}");
    }
}

/// A TCP upstream on 127.0.0.1 speaking `speaks` in cleartext.
async fn tcp_upstream(name: &'static str, speaks: Speaks) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_hello(tcp, name, speaks));
        }
    });
    addr
}

/// A Unix socket upstream at `path`.
async fn unix_upstream(path: &Path, name: &'static str, speaks: Speaks) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((unix, _)) = listener.accept().await {
            tokio::spawn(serve_hello(unix, name, speaks));
        }
    });
}

/// A TLS upstream on 127.0.0.1 with the gateway's dev certificate (names `localhost` and
/// `127.0.0.1`, signed by the dev CA), offering ALPN `h2` and `http/1.1`.
async fn tls_upstream(dev: &Path, name: &'static str) -> SocketAddr {
    let pem = std::fs::read(dev.join("gateway.pem")).unwrap();
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let pem = std::fs::read(dev.join("gateway.key")).unwrap();
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .unwrap()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let speaks = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    Speaks::Alpn
                } else {
                    Speaks::Http1
                };
                serve_hello(tls, name, speaks).await;
            });
        }
    });
    addr
}

/// A lazily generated request body of `n` pattern bytes (byte i = i % 251), in 64 KiB chunks.
fn pattern_body(n: u64) -> TestBody {
    const CHUNK: u64 = 64 * 1024;
    let stream = futures_util::stream::iter((0..n.div_ceil(CHUNK)).map(move |c| {
        let start = c * CHUNK;
        let len = CHUNK.min(n - start);
        let data: Vec<u8> = (start..start + len).map(|i| (i % 251) as u8).collect();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(http_body::Frame::data(Bytes::from(data)))
    }));
    BodyExt::boxed(http_body_util::StreamBody::new(stream))
}

fn echo_json(n: u64) -> String {
    format!("\"bytes\":{n},\"sha256\":\"{}\"", pattern_sha256(n))
}

fn header<'a>(response: &'a Response<()>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

/// One upstream of each kind the origin dials: HTTP/1.1 and h2c over TCP, TLS, and
/// HTTP/1.1 and h2c over Unix sockets in `dir`.
struct Upstreams {
    http: SocketAddr,
    h2c: SocketAddr,
    https: SocketAddr,
    unix: std::path::PathBuf,
    unix_h2c: std::path::PathBuf,
}

impl Upstreams {
    async fn start(dir: &Path, dev: &Path) -> Self {
        let unix = dir.join("http.sock");
        unix_upstream(&unix, "unix", Speaks::Http1).await;
        let unix_h2c = dir.join("h2c.sock");
        unix_upstream(&unix_h2c, "unix+h2c", Speaks::Http2).await;
        Self {
            http: tcp_upstream("http", Speaks::Http1).await,
            h2c: tcp_upstream("h2c", Speaks::Http2).await,
            https: tls_upstream(dev, "https").await,
            unix,
            unix_h2c,
        }
    }
}

/// `GET /`, an echoed 1 MiB upload, response trailers and a WebSocket (or its refusal),
/// all through the gateway to `host`, which `name` must serve over `version`.
async fn check_upstream(gw: &Gateway, host: &str, name: &str, version: Version, mechanism: &str) {
    let h2 = client(true);
    let (res, body) = send(&h2, get(gw, host, "/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{host}: {body:?}");
    assert_eq!(header(&res, "x-upstream"), name, "{host}");
    assert_eq!(
        header(&res, "x-upstream-version"),
        format!("{version:?}"),
        "{host}"
    );
    let page = String::from_utf8_lossy(&body);
    assert!(
        page.contains(&format!("<dd id=\"host\">{host}:")),
        "{host}: the upstream sees the public host: {page}"
    );

    let n = 1u64 << 20;
    let upload = Request::post(url(gw, host, "/echo"))
        .body(pattern_body(n))
        .unwrap();
    let (res, body) = send(&h2, upload).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{host}");
    assert!(
        String::from_utf8_lossy(&body).contains(&echo_json(n)),
        "{host}: {body:?}"
    );

    // Request trailers reach the upstream (announced in `Trailer`, which an HTTP/1.1
    // upstream needs; HTTP/2 upstreams get them regardless).
    let mut sent = http::HeaderMap::new();
    sent.insert("x-sum", http::HeaderValue::from_static("abc"));
    let frames: Vec<Result<http_body::Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"abc"))),
        Ok(http_body::Frame::trailers(sent)),
    ];
    let with_trailers = Request::post(url(gw, host, "/echo"))
        .header("te", "trailers")
        .header("trailer", "x-sum")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(
            futures_util::stream::iter(frames),
        )))
        .unwrap();
    let (res, body) = send(&h2, with_trailers).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{host}");
    let json = String::from_utf8_lossy(&body);
    assert!(
        json.contains("\"trailers\":{\"x-sum\":\"abc\"}"),
        "{host}: request trailers reach the upstream: {json}"
    );

    let trailers = Request::get(url(gw, host, "/trailers"))
        .header("te", "trailers")
        .body(full(Bytes::new()))
        .unwrap();
    let res = h2.request(trailers).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{host}");
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("0"),
        "{host}: trailers {trailers:?}"
    );

    // WebSocket needs HTTP/1.1 upstream: https:// upstreams are dialled offering only
    // http/1.1 for it, and HTTP/2-only (h2c) upstreams refuse it with 501. (The gateway
    // itself refuses WebSocket towards HTTP/3 origins, before the upstream matters.)
    if mechanism == "rh3" {
        return;
    }
    let url = format!("ws://{}/ws", gw.listen);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request
        .headers_mut()
        .insert("host", http::HeaderValue::from_str(host).unwrap());
    let handshake = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .unwrap();
    if version == Version::HTTP_2 && name != "https" {
        match handshake {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED, "{host}");
            }
            other => panic!("{host}: a WebSocket to an h2c upstream: {other:?}"),
        }
    } else {
        let (mut ws, _) = handshake.unwrap_or_else(|e| panic!("{host}: websocket handshake: {e}"));
        let message = tokio_tungstenite::tungstenite::Message::text(format!("hi {host}"));
        ws.send(message.clone()).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, message, "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_form_serves_through_the_gateway() {
    let dir = TempDir::new("upstream-forms");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let Upstreams {
        http,
        h2c,
        https,
        unix,
        unix_h2c,
    } = Upstreams::start(&dir.0, &gw.dev).await;
    let ca = gw.dev.join("ca.pem");
    let ca = ca.to_str().unwrap();

    let forms: Vec<(&str, &str, String, Vec<&str>, Version)> = vec![
        (
            "http",
            "rh2",
            format!("http://{http}"),
            vec![],
            Version::HTTP_11,
        ),
        (
            "h2c",
            "rh2",
            format!("h2c://{h2c}"),
            vec![],
            Version::HTTP_2,
        ),
        (
            "h2c-rh1",
            "rh1",
            format!("h2c://{h2c}"),
            vec![],
            Version::HTTP_2,
        ),
        (
            "h2c-rh3",
            "rh3",
            format!("h2c://{h2c}"),
            vec![],
            Version::HTTP_2,
        ),
        (
            "https",
            "rh2",
            format!("https://localhost:{}", https.port()),
            vec!["--upstream-ca", ca],
            Version::HTTP_2,
        ),
        (
            "https-name",
            "rh2",
            format!("https://{https}"),
            vec!["--upstream-ca", ca, "--upstream-server-name", "localhost"],
            Version::HTTP_2,
        ),
        (
            "unix",
            "rh2",
            format!("unix:{}", unix.display()),
            vec![],
            Version::HTTP_11,
        ),
        (
            "unix-h2c",
            "rh2",
            format!("unix+h2c:{}", unix_h2c.display()),
            vec![],
            Version::HTTP_2,
        ),
    ];
    let mut origins = Vec::new();
    for (label, mechanism, upstream, extra, _) in &forms {
        let mut args = vec!["--upstream", upstream.as_str()];
        args.extend(extra);
        let host = format!("{label}.localhost");
        origins.push(Origin::start(&gw, mechanism, &host, &args).await.unwrap());
    }
    for (label, mechanism, _, _, version) in &forms {
        let host = format!("{label}.localhost");
        wait_ready(&gw, &host).await.unwrap();
        let name = match *label {
            "unix-h2c" => "unix+h2c",
            other => other.split('-').next().unwrap(),
        };
        check_upstream(&gw, &host, name, *version, mechanism).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_unless_declared_insecure() {
    let dir = TempDir::new("upstream-tls");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let https = tls_upstream(&gw.dev, "https").await;
    let upstream = format!("https://{https}");
    // The dev CA is not among the WebPKI roots, so a default origin refuses the upstream.
    let strict = Origin::start(&gw, "rh2", "strict.localhost", &["--upstream", &upstream])
        .await
        .unwrap();
    let insecure = Origin::start(
        &gw,
        "rh2",
        "insecure.localhost",
        &["--upstream", &upstream, "--upstream-insecure"],
    )
    .await
    .unwrap();
    wait_ready(&gw, "insecure.localhost").await.unwrap();
    assert!(
        !insecure
            .log
            .matching("--upstream-insecure: the upstream's certificate is NOT verified")
            .is_empty(),
        "the insecure opt-out is logged: {}",
        insecure.log.text()
    );
    let (status, body) = loop {
        let (status, body) = answer(&gw, "strict.localhost", "/").await;
        if status != StatusCode::SERVICE_UNAVAILABLE && !body.contains(NO_ORIGIN) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // The public body is generic; the address and the certificate error are the log's.
    assert!(
        body.contains("could not reach its upstream")
            && !body.contains(&upstream.to_string())
            && !body.contains("certificate"),
        "the 502 is generic: {body}"
    );
    strict
        .log
        .wait_for(&format!("could not connect to upstream {upstream}"), 10)
        .await
        .expect("the origin logs the reason");
    assert!(
        strict.log.text().contains("certificate"),
        "the origin's log says why: {}",
        strict.log.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pick_the_first_matching_upstream_and_register_their_hosts() {
    let dir = TempDir::new("upstream-routes");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let a = tcp_upstream("a", Speaks::Http1).await;
    let b = tcp_upstream("b", Speaks::Http2).await;
    let api = tcp_upstream("api", Speaks::Http1).await;
    let socket = dir.0.join("w.sock");
    unix_upstream(&socket, "wild", Speaks::Http1).await;
    let config = dir.0.join("origin.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[route]]
host = "b.localhost"
path = "/api"
upstream = "http://{api}"

[[route]]
host = "b.localhost"
upstream = "h2c://{b}"

[[route]]
host = "*.w.localhost"
upstream = "unix:{socket}"

[[route]]
host = "a.localhost"
path = "/only"
upstream = "http://{a}"
"#,
            socket = socket.display()
        ),
    )
    .unwrap();
    // The routes register b.localhost and a.localhost; the hosts under the wildcard route
    // are named with --host.
    let _origin = Origin::start(
        &gw,
        "rh2",
        "one.w.localhost",
        &[
            "--host",
            "two.three.w.localhost",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    wait_ready(&gw, "b.localhost").await.unwrap();
    let h1 = client(false);
    for (host, path, name) in [
        ("b.localhost", "/api", "api"),
        ("b.localhost", "/api/x", "api"),
        ("b.localhost", "/apix", "b"),
        ("b.localhost", "/", "b"),
        ("one.w.localhost", "/", "wild"),
        ("two.three.w.localhost", "/", "wild"),
        ("a.localhost", "/only", "a"),
    ] {
        let (res, body) = send(&h1, get(&gw, host, path)).await.unwrap();
        assert_eq!(header(&res, "x-upstream"), name, "{host}{path}: {body:?}");
    }
    // a.localhost is registered by its route, but only /only is routed.
    let (res, body) = send(&h1, get(&gw, "a.localhost", "/other")).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("no route of this origin matches host") && text.contains("/other"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_route_alone_registers_its_hosts_and_exact_hosts_win() {
    let dir = TempDir::new("upstream-wildcard-route");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let wild = tcp_upstream("wild", Speaks::Http1).await;
    let exact = tcp_upstream("exact", Speaks::Http1).await;
    let config = dir.0.join("origin.toml");
    std::fs::write(
        &config,
        format!(
            "[[route]]\nhost = \"*.apps.localhost\"\nupstream = \"http://{wild}\"\n\n\
             [[route]]\nhost = \"plain.localhost\"\nupstream = \"http://{wild}\"\n"
        ),
    )
    .unwrap();
    // No host under apps.localhost is named with --host: the route registers the wildcard.
    let _wild = Origin::start(
        &gw,
        "rh2",
        "plain.localhost",
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap();
    wait_ready(&gw, "one.apps.localhost").await.unwrap();
    // Another origin's exact registration under the wildcard wins for its host.
    let exact_upstream = format!("http://{exact}");
    let _exact = Origin::start(
        &gw,
        "rh2",
        "exact.apps.localhost",
        &["--upstream", &exact_upstream],
    )
    .await
    .unwrap();
    let h1 = client(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (res, _) = send(&h1, get(&gw, "exact.apps.localhost", "/"))
            .await
            .unwrap();
        if header(&res, "x-upstream") == "exact" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "exact.apps.localhost never reached its exact origin"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (host, name) in [
        ("one.apps.localhost", "wild"),
        ("Two.Apps.Localhost", "wild"),
        ("exact.apps.localhost", "exact"),
        ("plain.localhost", "wild"),
    ] {
        let (res, body) = send(&h1, get(&gw, host, "/")).await.unwrap();
        assert_eq!(header(&res, "x-upstream"), name, "{host}: {body:?}");
    }
    // The wildcard covers one label, as a certificate's does: deeper names and the parent
    // itself reach no origin.
    for host in ["a.b.apps.localhost", "apps.localhost"] {
        let (res, body) = send(&h1, get(&gw, host, "/")).await.unwrap();
        assert_ne!(res.status(), StatusCode::OK, "{host}: {body:?}");
        assert!(header(&res, "x-upstream").is_empty(), "{host}");
    }
}

/// An upstream that reads a PROXY v2 header, then one HTTP/1.1 request head, and answers
/// with the header's source address, destination address and command as plain text, and
/// whether the head carried a `ptth-client-port` field.
async fn proxy_protocol_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut fixed = [0u8; 16];
                if tcp.read_exact(&mut fixed).await.is_err() {
                    return;
                }
                let mut text = String::new();
                if &fixed[..12] != b"\r\n\r\n\0\r\nQUIT\n" {
                    text.push_str("no PROXY v2 signature");
                } else {
                    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
                    let mut addresses = vec![0u8; len];
                    if tcp.read_exact(&mut addresses).await.is_err() {
                        return;
                    }
                    text.push_str(&format!(
                        "command {:#04x} family {:#04x}",
                        fixed[12], fixed[13]
                    ));
                    if fixed[13] == 0x11 && len >= 12 {
                        let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
                        text.push_str(&format!(
                            " source {}:{} destination {}:{}",
                            ip(&addresses[0..4]),
                            port(&addresses[8..10]),
                            ip(&addresses[4..8]),
                            port(&addresses[10..12])
                        ));
                    }
                }
                // The request head follows; read until its blank line.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
                    if tcp.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let starts_http = head.starts_with(b"GET / HTTP/1.1\r\n");
                text.push_str(&format!(" then-http {starts_http}"));
                // The gateway's internal port field must not reach the application.
                let lower = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let leaked = lower.contains("ptth-client-port");
                text.push_str(&format!(" ptth-field {leaked}"));
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// A gateway with `gateway_flags`, a `proxy-protocol = true` route to
/// [`proxy_protocol_upstream`], and one request from 127.0.0.2 that forges
/// `ptth-client-port`: returns what the upstream saw, the client's port and the upstream.
async fn through_proxy_protocol_route(
    name: &str,
    gateway_flags: &[&str],
) -> (String, u16, SocketAddr) {
    let dir = TempDir::new(name);
    let gw = Gateway::start(&dir.0, gateway_flags).await.unwrap();
    let upstream = proxy_protocol_upstream().await;
    let config = dir.0.join("origin.toml");
    std::fs::write(
        &config,
        format!("[[route]]\nhost = \"pp.localhost\"\nupstream = \"http://{upstream}\"\nproxy-protocol = true\n"),
    )
    .unwrap();
    let _origin = Origin::start(
        &gw,
        "rh2",
        "pp.localhost",
        &["--config", config.to_str().unwrap()],
    )
    .await
    .unwrap();
    // The public client comes from 127.0.0.2, which is what the gateway sees and names, with
    // the port it dialled from; the port it forges in the gateway's own field is dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let tcp = tcp_from("127.0.0.2".parse().unwrap(), gw.listen)
            .await
            .unwrap();
        let client_port = tcp.local_addr().unwrap().port();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(connection);
        let forged = if client_port == 1 { "2" } else { "1" };
        let request = Request::get("/")
            .header("host", "pp.localhost")
            .header("ptth-client-port", forged)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body).to_string();
        if status == StatusCode::OK {
            return (text, client_port, upstream);
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_names_the_public_client() {
    let (text, client_port, upstream) =
        through_proxy_protocol_route("upstream-proxy-protocol", &[]).await;
    assert_eq!(
        text,
        format!(
            "command 0x21 family 0x11 source 127.0.0.2:{client_port} destination {upstream} then-http true ptth-field false"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v2_says_unspec_behind_a_gateway_that_sends_no_x_real_ip() {
    // `--forwarding-fields forwarded` sends neither X-Real-IP nor the port that goes with
    // it (docs/operations.md): the header names no client, rather than a wrong one.
    let (text, _, _) = through_proxy_protocol_route(
        "upstream-proxy-protocol-forwarded",
        &["--forwarding-fields", "forwarded"],
    )
    .await;
    assert_eq!(
        text,
        "command 0x21 family 0x00 then-http true ptth-field false"
    );
}

/// Uploads `n` bytes to `/echo` on `host` through the public HTTP/2 (or HTTP/3) client and
/// checks the upstream hashed all of it.
async fn upload(gw: &Gateway, host: &str, n: u64, h3: bool) {
    let json = if h3 {
        let client = h3_client(gw).await.unwrap();
        let request = Request::post(h3_url(host, "/echo"))
            .body(pattern_body(n))
            .unwrap();
        let (res, body) = tokio::time::timeout(Duration::from_secs(300), client.send(request))
            .await
            .expect("HTTP/3 upload within 300 s")
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{host} over HTTP/3");
        body
    } else {
        let request = Request::post(url(gw, host, "/echo"))
            .body(pattern_body(n))
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(300), client(true).request(request))
            .await
            .expect("HTTP/2 upload answered within 300 s")
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{host}");
        res.into_body().collect().await.unwrap().to_bytes()
    };
    assert!(
        String::from_utf8_lossy(&json).contains(&echo_json(n)),
        "{host}: {json:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_hundreds_of_mebibytes_stream_with_bounded_memory() {
    const N: u64 = 300 << 20;
    const GROWTH: u64 = 64 << 20;
    let dir = TempDir::new("upstream-upload");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let http = tcp_upstream("http", Speaks::Http1).await;
    let h2c = tcp_upstream("h2c", Speaks::Http2).await;
    let mut cases = Vec::new();
    for (mechanism, upstream) in [
        ("rh2", format!("http://{http}")),
        ("rh2", format!("h2c://{h2c}")),
        ("rh3", format!("http://{http}")),
        ("rh3", format!("h2c://{h2c}")),
    ] {
        let kind = upstream.split(':').next().unwrap().to_string();
        let host = format!("{mechanism}-{kind}.localhost");
        let origin = Origin::start(&gw, mechanism, &host, &["--upstream", &upstream])
            .await
            .unwrap();
        cases.push((mechanism, host, origin));
    }
    for (_, host, _) in &cases {
        wait_ready(&gw, host).await.unwrap();
    }
    // A small upload first, so the baselines include every lazily allocated buffer.
    for (mechanism, host, _) in &cases {
        upload(&gw, host, 1 << 20, *mechanism == "rh3").await;
    }
    let gateway_before = gw.peak_rss().unwrap();
    for (mechanism, host, origin) in &cases {
        let origin_before = origin.peak_rss().unwrap();
        upload(&gw, host, N, *mechanism == "rh3").await;
        let origin_growth = origin.peak_rss().unwrap().saturating_sub(origin_before);
        assert!(
            origin_growth < GROWTH,
            "{host}: the origin's peak RSS grew by {} MiB for a {} MiB upload",
            origin_growth >> 20,
            N >> 20
        );
    }
    let gateway_growth = gw.peak_rss().unwrap().saturating_sub(gateway_before);
    assert!(
        gateway_growth < GROWTH,
        "the gateway's peak RSS grew by {} MiB over four {} MiB uploads",
        gateway_growth >> 20,
        N >> 20
    );
}

/// Every mechanism carries a large body to an `http://` upstream, and rh2 to every other
/// upstream kind, without either end holding it: each process's peak RSS grows by less than
/// half the body (a proxy that buffered the body would grow by all of it). The 300 MiB test
/// above covers the largest bodies on rh2 and rh3; `cargo xtask bench` uploads 5 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_through_every_mechanism_and_upstream_kind_stream_with_bounded_memory() {
    const N: u64 = 64 << 20;
    const GROWTH: u64 = N / 2;
    let dir = TempDir::new("upload-matrix");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let Upstreams {
        http,
        h2c,
        https,
        unix,
        unix_h2c,
    } = Upstreams::start(&dir.0, &gw.dev).await;
    let ca = gw.dev.join("ca.pem");
    let ca = ca.to_str().unwrap().to_string();
    let mut cases: Vec<(String, &str, String, Vec<String>)> = ALL_MECHANISMS
        .iter()
        .map(|m| (format!("{m}-http"), *m, format!("http://{http}"), vec![]))
        .collect();
    cases.extend([
        ("rh2-h2c".to_string(), "rh2", format!("h2c://{h2c}"), vec![]),
        (
            "rh2-https".to_string(),
            "rh2",
            format!("https://localhost:{}", https.port()),
            vec!["--upstream-ca".to_string(), ca.clone()],
        ),
        (
            "rh2-unix".to_string(),
            "rh2",
            format!("unix:{}", unix.display()),
            vec![],
        ),
        (
            "rh2-unix-h2c".to_string(),
            "rh2",
            format!("unix+h2c:{}", unix_h2c.display()),
            vec![],
        ),
    ]);
    let mut origins = Vec::new();
    for (label, mechanism, upstream, extra) in &cases {
        let mut args = vec!["--upstream", upstream.as_str()];
        args.extend(extra.iter().map(String::as_str));
        let host = format!("{label}.localhost");
        origins.push(Origin::start(&gw, mechanism, &host, &args).await.unwrap());
    }
    for (label, _, _, _) in &cases {
        let host = format!("{label}.localhost");
        wait_ready(&gw, &host).await.unwrap();
        // A small upload first, so the baselines include every lazily allocated buffer.
        upload(&gw, &host, 1 << 20, false).await;
    }
    let gateway_before = gw.peak_rss().unwrap();
    for ((label, _, _, _), origin) in cases.iter().zip(&origins) {
        let host = format!("{label}.localhost");
        let origin_before = origin.peak_rss().unwrap();
        upload(&gw, &host, N, false).await;
        let growth = origin.peak_rss().unwrap().saturating_sub(origin_before);
        assert!(
            growth < GROWTH,
            "{label}: the origin's peak RSS grew by {} MiB for a {} MiB upload",
            growth >> 20,
            N >> 20
        );
    }
    let growth = gw.peak_rss().unwrap().saturating_sub(gateway_before);
    assert!(
        growth < GROWTH,
        "the gateway's peak RSS grew by {} MiB over {} uploads of {} MiB",
        growth >> 20,
        cases.len(),
        N >> 20
    );
}
