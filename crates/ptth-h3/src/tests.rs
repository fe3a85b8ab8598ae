//! End-to-end tests of the HTTP/3 layer over real quinn endpoints on 127.0.0.1, in every
//! request direction, plus scripted raw-QUIC peers for protocol violations.

mod interop;
mod origin;
mod violations;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use sha2::{Digest, Sha256};

use crate::frame::H3_NO_ERROR;
use crate::{
    serve, Culprit, H3Config, H3Connection, H3Error, RecvBody, RequestDirection, RequestHandle,
};

pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// A body made of given frames (data, then optional trailers).
#[derive(Debug)]
pub(crate) struct TestBody(VecDeque<Frame<Bytes>>);

impl TestBody {
    pub(crate) fn new(chunks: &[&[u8]], trailers: Option<HeaderMap>) -> Self {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Self(frames)
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(Ok))
    }
    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn trailers(name: &'static str, value: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(name, HeaderValue::from_static(value));
    t
}

pub(crate) struct Endpoints {
    pub(crate) server: quinn::Endpoint,
    pub(crate) client: quinn::Endpoint,
    pub(crate) addr: SocketAddr,
}

/// A server and a client endpoint with a fresh self-signed certificate and one ALPN.
pub(crate) fn endpoints(alpn: &[u8]) -> Endpoints {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    server_tls.alpn_protocols = vec![alpn.to_vec()];
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap(),
    ));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![alpn.to_vec()];
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap(),
    )));
    let addr = server.local_addr().unwrap();
    Endpoints {
        server,
        client,
        addr,
    }
}

/// Raw QUIC connections: (QUIC server side, QUIC client side).
pub(crate) async fn quic_pair(alpn: &[u8]) -> (quinn::Connection, quinn::Connection, Endpoints) {
    let ep = endpoints(alpn);
    let connecting = ep.client.connect(ep.addr, "localhost").unwrap();
    let (server, client) = tokio::join!(
        async { ep.server.accept().await.unwrap().await.unwrap() },
        async { connecting.await.unwrap() }
    );
    assert_eq!(
        client
            .handshake_data()
            .unwrap()
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .unwrap(),
        alpn
    );
    (server, client, ep)
}

/// HTTP/3 on both ends: (QUIC server side, QUIC client side).
pub(crate) async fn h3_pair(
    alpn: &[u8],
    server: H3Config,
    client: H3Config,
) -> (H3Connection, H3Connection, Endpoints) {
    let (s, c, ep) = quic_pair(alpn).await;
    let (s, c) = tokio::join!(H3Connection::new(s, server), H3Connection::new(c, client));
    (s.unwrap(), c.unwrap(), ep)
}

/// Echo service: body and trailers back, plus the stream ID and a server trailer.
async fn echo(request: Request<RecvBody>) -> Result<Response<TestBody>, Infallible> {
    let id = request
        .extensions()
        .get::<RequestHandle>()
        .unwrap()
        .stream_id()
        .into_inner();
    let path = request.uri().path().to_owned();
    let collected = request.into_body().collect().await.unwrap();
    let mut trailers = collected.trailers().cloned().unwrap_or_default();
    trailers.insert("x-server", HeaderValue::from_static("done"));
    let data = collected.to_bytes();
    let response = Response::builder()
        .header("x-stream-id", id.to_string())
        .header("x-path", path)
        .body(TestBody::new(&[&data], Some(trailers)))
        .unwrap();
    Ok(response)
}

pub(crate) async fn post(
    conn: &H3Connection,
    path: &str,
    body: TestBody,
) -> Result<(Response<()>, Bytes, Option<HeaderMap>), H3Error> {
    let request = Request::post(format!("https://localhost{path}"))
        .body(body)
        .unwrap();
    let response = conn.sender().send_request(request).await?;
    let (parts, body) = response.into_parts();
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((
        Response::from_parts(parts, ()),
        collected.to_bytes(),
        trailers,
    ))
}

fn header(r: &Response<()>, name: &str) -> String {
    r.headers()[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn forward_request_response_with_bodies_and_trailers() {
    let cfg = H3Config::new(RequestDirection::ClientSends);
    let (server, client, _ep) = h3_pair(b"h3", cfg.clone(), cfg).await;
    let server = Arc::new(server);
    let s = server.clone();
    tokio::spawn(async move { serve(&s, hyper::service::service_fn(echo)).await });

    let body = TestBody::new(&[b"hello ", b"world"], Some(trailers("x-client", "yes")));
    let (resp, data, trailers) = tokio::time::timeout(TIMEOUT, post(&client, "/echo", body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-stream-id"), "0");
    assert_eq!(header(&resp, "x-path"), "/echo");
    assert_eq!(&data[..], b"hello world");
    let trailers = trailers.unwrap();
    assert_eq!(trailers["x-client"], "yes");
    assert_eq!(trailers["x-server"], "done");

    // Without a body and trailers; next client-bidi stream is 4.
    let (resp, data, _) = post(&client, "/empty", TestBody::new(&[], None))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-stream-id"), "4");
    assert!(data.is_empty());
    // The QUIC server may not send requests in forward mode.
    let err = server
        .sender()
        .send_request(
            Request::get("https://x/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, H3Error::WrongDirection));
}

#[tokio::test]
async fn reversed_requests_ride_server_initiated_streams() {
    for alpn in [&b"rh3"[..], b"h3-reverse"] {
        let cfg = H3Config::new(RequestDirection::ServerSends);
        // The QUIC server is the gateway (HTTP client); the QUIC client the origin.
        let (gateway, origin, _ep) = h3_pair(alpn, cfg.clone(), cfg).await;
        let origin = Arc::new(origin);
        let o = origin.clone();
        tokio::spawn(async move { serve(&o, hyper::service::service_fn(echo)).await });
        for expected in [1, 5, 9] {
            let body = TestBody::new(&[b"ping"], Some(trailers("x-n", "1")));
            let (resp, data, trailers) = tokio::time::timeout(TIMEOUT, post(&gateway, "/r", body))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(header(&resp, "x-stream-id"), expected.to_string());
            assert_eq!(&data[..], b"ping");
            assert_eq!(trailers.unwrap()["x-n"], "1");
        }
        let err = origin
            .sender()
            .send_request(
                Request::get("https://x/")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, H3Error::WrongDirection));
    }
}

#[tokio::test]
async fn hundred_concurrent_requests() {
    let cfg = H3Config::new(RequestDirection::ServerSends);
    let (gateway, origin, _ep) = h3_pair(b"rh3", cfg.clone(), cfg).await;
    let origin = Arc::new(origin);
    let o = origin.clone();
    tokio::spawn(async move { serve(&o, hyper::service::service_fn(echo)).await });
    let gateway = Arc::new(gateway);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let g = gateway.clone();
        tasks.spawn(async move {
            let payload = format!("request {i}");
            let (resp, data, _) = post(
                &g,
                &format!("/{i}"),
                TestBody::new(&[payload.as_bytes()], None),
            )
            .await
            .unwrap();
            assert_eq!(header(&resp, "x-path"), format!("/{i}"));
            assert_eq!(data, payload.as_bytes());
            header(&resp, "x-stream-id").parse::<u64>().unwrap()
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = tokio::time::timeout(TIMEOUT, tasks.join_next())
        .await
        .unwrap()
    {
        ids.push(id.unwrap());
    }
    ids.sort();
    assert_eq!(ids, (0..100).map(|i| 4 * i + 1).collect::<Vec<u64>>());
}

#[tokio::test]
async fn sixteen_mib_body_hashed_at_both_ends() {
    let cfg = H3Config::new(RequestDirection::ClientSends);
    let (server, client, _ep) = h3_pair(b"h3", cfg.clone(), cfg).await;
    tokio::spawn(async move {
        let (request, sender) = server.accept().await.unwrap();
        let mut body = request.into_body();
        let mut hasher = Sha256::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                len += data.len();
                hasher.update(&data);
            }
        }
        let digest = hasher.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        // Send 16 MiB back, generated the same way.
        let chunks: Vec<Vec<u8>> = (0..256).map(chunk).collect();
        let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        let response = Response::builder()
            .header("x-sha256", hex)
            .header("x-len", len.to_string())
            .body(TestBody::new(&refs, None))
            .unwrap();
        sender.send_response(response).await.unwrap();
        server.closed().await
    });
    fn chunk(i: usize) -> Vec<u8> {
        (0..65536).map(|j| ((i * 31 + j * 7) % 251) as u8).collect()
    }
    let chunks: Vec<Vec<u8>> = (0..256).map(chunk).collect();
    let mut expected = Sha256::new();
    for c in &chunks {
        expected.update(c);
    }
    let expected: String = expected
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let request = Request::put("https://localhost/big")
        .body(TestBody::new(&refs, None))
        .unwrap();
    let response = tokio::time::timeout(TIMEOUT, client.sender().send_request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.headers()["x-len"], (16 << 20).to_string().as_str());
    assert_eq!(response.headers()["x-sha256"], expected.as_str());
    let mut body = response.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0;
    while let Some(frame) = tokio::time::timeout(TIMEOUT, body.frame()).await.unwrap() {
        let data = frame.unwrap().into_data().unwrap();
        len += data.len();
        hasher.update(&data);
    }
    assert_eq!(len, 16 << 20);
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn two_direction_mode_carries_requests_both_ways() {
    let cfg = H3Config::new(RequestDirection::Both);
    let (gateway, origin, _ep) = h3_pair(b"h3", cfg.clone(), cfg).await;
    let gateway = Arc::new(gateway);
    let origin = Arc::new(origin);
    for side in [&gateway, &origin] {
        let s = side.clone();
        tokio::spawn(async move { serve(&s, hyper::service::service_fn(echo)).await });
    }
    // PTTH -00: the origin (QUIC client) sends OPTIONS first, on stream 0.
    let (resp, _, _) = post(&origin, "/.well-known/ptth", TestBody::new(&[], None))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-stream-id"), "0");
    for expected in ["1", "5"] {
        let (resp, data, _) = post(&gateway, "/g", TestBody::new(&[b"to origin"], None))
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-stream-id"), expected);
        assert_eq!(&data[..], b"to origin");
    }
    let (resp, _, _) = post(&origin, "/o", TestBody::new(&[b"to gw"], None))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-stream-id"), "4");
}

/// Requests held by the server until released, to test shutdown with requests in flight.
async fn held_server(
    server: Arc<H3Connection>,
    release: Arc<tokio::sync::Semaphore>,
    seen: tokio::sync::mpsc::Sender<()>,
) {
    while let Some((request, sender)) = server.accept().await {
        let release = release.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let _ = seen.send(()).await;
            let _permit = release.acquire().await.unwrap();
            let response = Response::new(Full::new(body));
            sender.send_response(response).await.unwrap();
        });
    }
}

#[tokio::test]
async fn graceful_shutdown_by_the_http_server_loses_no_request() {
    let cfg = H3Config::new(RequestDirection::ServerSends);
    let (gateway, origin, _ep) = h3_pair(b"rh3", cfg.clone(), cfg).await;
    let origin = Arc::new(origin);
    let gateway = Arc::new(gateway);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (seen_tx, mut seen) = tokio::sync::mpsc::channel(16);
    tokio::spawn(held_server(origin.clone(), release.clone(), seen_tx));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let g = gateway.clone();
        tasks.spawn(async move {
            post(&g, "/", TestBody::new(&[format!("{i}").as_bytes()], None)).await
        });
    }
    for _ in 0..5 {
        seen.recv().await.unwrap();
    }
    let o = origin.clone();
    let shutdown = tokio::spawn(async move { o.graceful_shutdown().await });
    // The gateway first sees GOAWAY with the largest server-bidi ID (RFC 9114 §5.2: so
    // requests it already sent still arrive), then, a moment later, with the next
    // server-bidi ID, 4*5+1 = 21.
    let first = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(id) = gateway.peer_goaway() {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(first == (1 << 62) - 3 || first == 21, "{first}");
    tokio::time::timeout(TIMEOUT, async {
        while gateway.peer_goaway() != Some(21) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let err = post(&gateway, "/late", TestBody::new(&[], None))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    release.add_permits(5);
    let mut bodies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (resp, data, _) = r.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        bodies.push(String::from_utf8(data.to_vec()).unwrap());
    }
    bodies.sort();
    assert_eq!(bodies, ["0", "1", "2", "3", "4"]);
    tokio::time::timeout(TIMEOUT, shutdown)
        .await
        .unwrap()
        .unwrap();
    let closed = tokio::time::timeout(TIMEOUT, gateway.closed())
        .await
        .unwrap();
    assert!(
        matches!(
            closed,
            H3Error::Connection {
                raised_by: Culprit::Peer,
                code: H3_NO_ERROR,
                ..
            }
        ),
        "{closed:?}"
    );
}

#[tokio::test]
async fn graceful_shutdown_by_the_http_client_loses_no_request() {
    let cfg = H3Config::new(RequestDirection::ClientSends);
    let (server, client, _ep) = h3_pair(b"h3", cfg.clone(), cfg).await;
    let server = Arc::new(server);
    let client = Arc::new(client);
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (seen_tx, mut seen) = tokio::sync::mpsc::channel(16);
    tokio::spawn(held_server(server.clone(), release.clone(), seen_tx));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let c = client.clone();
        tasks.spawn(async move {
            post(&c, "/", TestBody::new(&[format!("{i}").as_bytes()], None)).await
        });
    }
    for _ in 0..5 {
        seen.recv().await.unwrap();
    }
    let c = client.clone();
    let shutdown = tokio::spawn(async move { c.graceful_shutdown().await });
    // The HTTP server receives GOAWAY carrying push ID 0.
    tokio::time::timeout(TIMEOUT, async {
        while server.peer_goaway().is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(server.peer_goaway(), Some(0));
    assert!(matches!(
        post(&client, "/late", TestBody::new(&[], None)).await,
        Err(H3Error::GoingAway)
    ));
    release.add_permits(5);
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        let (resp, _, _) = r.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        n += 1;
    }
    assert_eq!(n, 5);
    tokio::time::timeout(TIMEOUT, shutdown)
        .await
        .unwrap()
        .unwrap();
    let closed = tokio::time::timeout(TIMEOUT, server.closed())
        .await
        .unwrap();
    assert!(
        matches!(
            closed,
            H3Error::Connection {
                raised_by: Culprit::Peer,
                code: H3_NO_ERROR,
                ..
            }
        ),
        "{closed:?}"
    );
}

#[tokio::test]
async fn datagrams_round_trip_on_a_reversed_request_stream() {
    let cfg = H3Config::new(RequestDirection::ServerSends).enable_datagrams(true);
    let (gateway, origin, _ep) = h3_pair(b"rh3", cfg.clone(), cfg).await;
    gateway.peer_settings().await.unwrap();
    origin.peer_settings().await.unwrap();
    assert!(gateway.datagrams_negotiated() && origin.datagrams_negotiated());
    let origin = Arc::new(origin);
    let o = origin.clone();
    // The origin echoes each datagram on the request stream it belongs to, with a prefix.
    tokio::spawn(async move {
        while let Some((request, sender)) = o.accept().await {
            let handle = request.extensions().get::<RequestHandle>().unwrap().clone();
            tokio::spawn(async move {
                sender
                    .send_response(Response::new(Empty::<Bytes>::new()))
                    .await
                    .unwrap();
                while let Some(d) = handle.recv_datagram().await {
                    let mut echoed = b"echo:".to_vec();
                    echoed.extend_from_slice(&d);
                    handle.send_datagram(echoed.into()).unwrap();
                }
            });
        }
    });
    let mut handles = Vec::new();
    for expected in [1u64, 5] {
        let response = gateway
            .sender()
            .send_request(
                Request::get("https://localhost/dg")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let handle = response
            .extensions()
            .get::<RequestHandle>()
            .unwrap()
            .clone();
        assert_eq!(handle.stream_id().into_inner(), expected);
        handles.push((response, handle));
    }
    let handle = &handles[1].1;
    handle.send_datagram(Bytes::from_static(b"hi")).unwrap();
    let got = tokio::time::timeout(TIMEOUT, handle.recv_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"echo:hi");

    // On the wire, stream 5 is quarter stream ID 1 (Potato §4.3: 4q+1): a raw datagram
    // 0x01 from the origin's QUIC connection reaches the gateway's stream-5 handle, and
    // 0x00 reaches stream 1.
    origin_raw(&origin)
        .send_datagram(Bytes::from_static(b"\x01raw5"))
        .unwrap();
    origin_raw(&origin)
        .send_datagram(Bytes::from_static(b"\x00raw1"))
        .unwrap();
    let got = tokio::time::timeout(TIMEOUT, handle.recv_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"raw5");
    let got = tokio::time::timeout(TIMEOUT, handles[0].1.recv_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"raw1");

    // A quarter stream ID of 2^60 (above RFC 9297's bound) is H3_DATAGRAM_ERROR.
    origin_raw(&origin)
        .send_datagram(Bytes::from_static(&[0xd0, 0, 0, 0, 0, 0, 0, 0, b'x']))
        .unwrap();
    let closed = tokio::time::timeout(TIMEOUT, origin.closed())
        .await
        .unwrap();
    assert_eq!(
        closed.code(),
        Some(crate::frame::H3_DATAGRAM_ERROR),
        "{closed:?}"
    );
    assert_eq!(closed.raised_by(), Some(Culprit::Peer));
}

fn origin_raw(conn: &H3Connection) -> &quinn::Connection {
    &conn.shared.conn
}

#[tokio::test]
async fn two_direction_datagrams_need_the_extension_for_server_streams() {
    for extension in [false, true] {
        let cfg = H3Config::new(RequestDirection::Both)
            .enable_datagrams(true)
            .two_way_datagram_extension(extension);
        let (gateway, origin, _ep) = h3_pair(b"h3", cfg.clone(), cfg).await;
        gateway.peer_settings().await.unwrap();
        origin.peer_settings().await.unwrap();
        let origin = Arc::new(origin);
        let o = origin.clone();
        let (got_tx, mut got_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some((request, sender)) = o.accept().await {
                let handle = request.extensions().get::<RequestHandle>().unwrap().clone();
                let got_tx = got_tx.clone();
                tokio::spawn(async move {
                    sender
                        .send_response(Response::new(Empty::<Bytes>::new()))
                        .await
                        .unwrap();
                    if let Some(d) = handle.recv_datagram().await {
                        let _ = got_tx.send(d).await;
                    }
                });
            }
        });
        let response = gateway
            .sender()
            .send_request(
                Request::get("https://localhost/")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let handle = response
            .extensions()
            .get::<RequestHandle>()
            .unwrap()
            .clone();
        assert_eq!(handle.stream_id().into_inner(), 1);
        let sent = handle.send_datagram(Bytes::from_static(b"two-way"));
        if extension {
            sent.unwrap();
            let got = tokio::time::timeout(TIMEOUT, got_rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got[..], b"two-way");
        } else {
            assert!(matches!(sent, Err(H3Error::NotNegotiated(_))), "{sent:?}");
        }
    }
}

#[tokio::test]
async fn extended_connect_gives_a_byte_stream_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cfg = H3Config::new(RequestDirection::ClientSends).enable_connect_protocol(true);
    let (server, client, _ep) = h3_pair(b"h3", cfg.clone(), cfg).await;
    tokio::spawn(async move {
        let (request, sender) = server.accept().await.unwrap();
        assert_eq!(request.method(), http::Method::CONNECT);
        assert_eq!(
            request.extensions().get::<crate::Protocol>().unwrap().0,
            "ptth"
        );
        let mut stream = sender
            .send_connect_response(Response::new(()))
            .await
            .unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
        stream.write_all(b" back").await.unwrap();
        stream.shutdown().await.unwrap();
        server.closed().await
    });
    let mut request = Request::connect("https://localhost/.well-known/ptth")
        .body(())
        .unwrap();
    request
        .extensions_mut()
        .insert(crate::Protocol("ptth".into()));
    let (response, mut stream) =
        tokio::time::timeout(TIMEOUT, client.sender().send_connect(request))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    stream.write_all(b"hello").await.unwrap();
    stream.flush().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"hello back");

    // Without the peer's SETTINGS_ENABLE_CONNECT_PROTOCOL the client refuses to send it.
    let plain = H3Config::new(RequestDirection::ClientSends);
    let (_server, client, _ep) = h3_pair(b"h3", plain.clone(), plain).await;
    let mut request = Request::connect("https://localhost/").body(()).unwrap();
    request
        .extensions_mut()
        .insert(crate::Protocol("ptth".into()));
    let err = client.sender().send_connect(request).await.unwrap_err();
    assert!(matches!(err, H3Error::NotNegotiated(_)), "{err:?}");
}
