//! gRPC end to end with a real implementation on both ends: a `tonic` server as the
//! `h2c://` or `https://` upstream of `ptth-origin`, and `tonic` clients through the
//! gateway over public HTTP/2 (cleartext and TLS) and HTTP/3, on every mechanism that
//! carries gRPC. Unary, server-, client- and bidirectional streaming calls, error statuses
//! with `grpc-message` in trailers, and deadlines (`grpc-timeout`) reaching the upstream.
//!
//! The messages are written by hand with prost's derive, so no `protoc` is needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// tonic's API fixes `Result<_, tonic::Status>`, whose size is tonic's choice.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_tests::*;
use tonic::codec::{ProstCodec, Streaming};
use tonic::{Code, Request, Response, Status};

/// The one message type of the test service.
#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

fn msg(text: impl Into<String>) -> Msg {
    Msg { text: text.into() }
}

type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;
type Answer<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

const UNARY: &str = "/ptth.test.Echo/Unary";
const COUNT: &str = "/ptth.test.Echo/Count";
const SUM: &str = "/ptth.test.Echo/Sum";
const CHAT: &str = "/ptth.test.Echo/Chat";

/// Unary: echoes the text; `fail` answers `INVALID_ARGUMENT` with a message; `deadline`
/// answers `DEADLINE_EXCEEDED` naming the `grpc-timeout` that reached the server.
struct Unary;

impl tower_service::Service<Request<Msg>> for Unary {
    type Response = Response<Msg>;
    type Error = Status;
    type Future = Answer<Msg>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let timeout = request
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match request.into_inner().text.as_str() {
                "fail" => Err(Status::invalid_argument("told to fail, über-politely")),
                "deadline" => match timeout {
                    Some(timeout) => Err(Status::deadline_exceeded(format!(
                        "deadline {timeout} reached the server"
                    ))),
                    None => Ok(Response::new(msg("no deadline reached the server"))),
                },
                text => Ok(Response::new(msg(format!("unary {text}")))),
            }
        })
    }
}

/// Server streaming: `n` messages `0`..`n-1`.
struct Count;

impl tower_service::Service<Request<Msg>> for Count {
    type Response = Response<MsgStream>;
    type Error = Status;
    type Future = Answer<MsgStream>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let n: u32 = request
                .into_inner()
                .text
                .parse()
                .map_err(|_| Status::invalid_argument("not a count"))?;
            let stream: MsgStream = Box::pin(futures_util::stream::iter(
                (0..n).map(|i| Ok(msg(i.to_string()))),
            ));
            Ok(Response::new(stream))
        })
    }
}

/// Client streaming: the texts joined with `+`.
struct Sum;

impl tower_service::Service<Request<Streaming<Msg>>> for Sum {
    type Response = Response<Msg>;
    type Error = Status;
    type Future = Answer<Msg>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut texts = Vec::new();
            while let Some(m) = stream.message().await? {
                texts.push(m.text);
            }
            Ok(Response::new(msg(texts.join("+"))))
        })
    }
}

/// Bidirectional: every message answered at once with `echo <text>`.
struct Chat;

impl tower_service::Service<Request<Streaming<Msg>>> for Chat {
    type Response = Response<MsgStream>;
    type Error = Status;
    type Future = Answer<MsgStream>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let stream: MsgStream = Box::pin(
                request
                    .into_inner()
                    .map(|m| m.map(|m| msg(format!("echo {}", m.text)))),
            );
            Ok(Response::new(stream))
        })
    }
}

/// The gRPC server: dispatches on the path the way tonic's generated code does.
async fn grpc_server(
    request: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let codec = ProstCodec::<Msg, Msg>::default;
    let mut grpc = tonic::server::Grpc::new(codec());
    Ok(match request.uri().path() {
        UNARY => grpc.unary(Unary, request).await,
        COUNT => grpc.server_streaming(Count, request).await,
        SUM => grpc.client_streaming(Sum, request).await,
        CHAT => grpc.streaming(Chat, request).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// Serves the gRPC server over HTTP/2 on `io`.
async fn serve_grpc<I>(io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), hyper::service::service_fn(grpc_server))
        .await;
}

/// An `h2c://` gRPC upstream on 127.0.0.1.
async fn h2c_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve_grpc(tcp));
        }
    });
    addr
}

/// An `https://` gRPC upstream on 127.0.0.1 with the dev certificate (ALPN `h2` only, as
/// gRPC servers offer).
async fn tls_upstream(dev: &std::path::Path) -> SocketAddr {
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
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve_grpc(tls).await;
                }
            });
        }
    });
    addr
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A tonic transport over one public HTTP/2 connection to the gateway.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Result<Self::Response, hyper::Error>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// A tonic transport over one public HTTP/3 connection to the gateway.
#[derive(Clone)]
struct H3 {
    sender: ptth_h3::SendRequest,
    /// The connection and endpoint the sender runs on, kept open while it is used.
    _open: Arc<(ptth_h3::H3Connection, quinn::Endpoint)>,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for H3 {
    type Response = http::Response<ptth_h3::RecvBody>;
    type Error = ptth_h3::H3Error;
    type Future = BoxFuture<Result<Self::Response, ptth_h3::H3Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let sender = self.sender.clone();
        Box::pin(async move { sender.send_request(request).await })
    }
}

/// How the public client reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Public {
    H2c,
    H2Tls,
    H3,
}

async fn h2_over<I>(io: I) -> H2
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    H2(sender)
}

async fn h3_over(gw: &Gateway) -> H3 {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(dev_roots(gw).unwrap())
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).unwrap();
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let quic = tokio::time::timeout(
        Duration::from_secs(10),
        endpoint.connect(gw.listen_tls, "localhost").unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let conn = ptth_h3::H3Connection::new(
        quic,
        ptth_h3::H3Config::new(ptth_h3::RequestDirection::ClientSends),
    )
    .await
    .unwrap();
    H3 {
        sender: conn.sender(),
        _open: Arc::new((conn, endpoint)),
    }
}

/// Runs every call type against `host` through `public` and checks the answers.
async fn check_calls(gw: &Gateway, host: &str, public: Public) {
    let origin: http::Uri = match public {
        Public::H2c => format!("http://{host}"),
        Public::H2Tls | Public::H3 => format!("https://{host}"),
    }
    .parse()
    .unwrap();
    match public {
        Public::H2c => {
            let tcp = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
            let transport = h2_over(tcp).await;
            calls(
                tonic::client::Grpc::with_origin(transport, origin),
                host,
                public,
            )
            .await;
        }
        Public::H2Tls => {
            let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(dev_roots(gw).unwrap())
            .with_no_client_auth();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = tokio::net::TcpStream::connect(gw.listen_tls).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await
                .unwrap();
            let transport = h2_over(stream).await;
            calls(
                tonic::client::Grpc::with_origin(transport, origin),
                host,
                public,
            )
            .await;
        }
        Public::H3 => {
            let transport = h3_over(gw).await;
            calls(
                tonic::client::Grpc::with_origin(transport, origin),
                host,
                public,
            )
            .await;
        }
    }
}

async fn calls<T>(mut grpc: tonic::client::Grpc<T>, host: &str, public: Public)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let at = format!("{host} over {public:?}");
    let within = Duration::from_secs(30);
    let codec = ProstCodec::<Msg, Msg>::default;
    let path = |p: &'static str| PathAndQuery::from_static(p);

    // Unary.
    grpc.ready().await.map_err(Into::into).unwrap();
    let answer = tokio::time::timeout(
        within,
        grpc.unary(Request::new(msg("hi")), path(UNARY), codec()),
    )
    .await
    .expect("unary call within 30 s")
    .unwrap_or_else(|s| panic!("{at}: unary: {s:?}"));
    assert_eq!(answer.into_inner().text, "unary hi", "{at}");

    // An error status and its message come back in the trailers.
    grpc.ready().await.map_err(Into::into).unwrap();
    let status = grpc
        .unary(Request::new(msg("fail")), path(UNARY), codec())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{at}: {status:?}");
    assert_eq!(status.message(), "told to fail, über-politely", "{at}");

    // The caller's deadline reaches the upstream as grpc-timeout.
    grpc.ready().await.map_err(Into::into).unwrap();
    let mut request = Request::new(msg("deadline"));
    request.set_timeout(Duration::from_millis(1500));
    let status = grpc.unary(request, path(UNARY), codec()).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{at}: {status:?}");
    assert!(
        status.message().starts_with("deadline ")
            && status.message().ends_with(" reached the server"),
        "{at}: {status:?}"
    );

    // Server streaming.
    grpc.ready().await.map_err(Into::into).unwrap();
    let mut stream = grpc
        .server_streaming(Request::new(msg("5")), path(COUNT), codec())
        .await
        .unwrap_or_else(|s| panic!("{at}: server streaming: {s:?}"))
        .into_inner();
    let mut seen = Vec::new();
    while let Some(m) = tokio::time::timeout(within, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        seen.push(m.text);
    }
    assert_eq!(seen, ["0", "1", "2", "3", "4"], "{at}");

    // Client streaming.
    grpc.ready().await.map_err(Into::into).unwrap();
    let outgoing = futures_util::stream::iter(["a", "b", "c"].map(msg));
    let sum = tokio::time::timeout(
        within,
        grpc.client_streaming(Request::new(outgoing), path(SUM), codec()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|s| panic!("{at}: client streaming: {s:?}"));
    assert_eq!(sum.into_inner().text, "a+b+c", "{at}");

    // Bidirectional, interleaved: each message is sent only after the previous answer
    // arrived, so a hop that buffered either direction would stall here.
    grpc.ready().await.map_err(Into::into).unwrap();
    let (sender, receiver) = tokio::sync::mpsc::channel::<Msg>(1);
    let outgoing = tokio_stream::wrappers::ReceiverStream::new(receiver);
    sender.send(msg("one")).await.unwrap();
    let mut answers = tokio::time::timeout(
        within,
        grpc.streaming(Request::new(outgoing), path(CHAT), codec()),
    )
    .await
    .expect("the bidirectional call opens while its request stream is open")
    .unwrap_or_else(|s| panic!("{at}: bidirectional: {s:?}"))
    .into_inner();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        if i > 0 {
            sender.send(msg(*text)).await.unwrap();
        }
        let answer = tokio::time::timeout(Duration::from_secs(15), answers.message())
            .await
            .unwrap_or_else(|_| panic!("{at}: no answer to {text:?} while the stream is open"))
            .unwrap()
            .unwrap();
        assert_eq!(answer.text, format!("echo {text}"), "{at}");
    }
    drop(sender);
    assert!(
        tokio::time::timeout(within, answers.message())
            .await
            .unwrap()
            .unwrap()
            .is_none(),
        "{at}: the call ends with OK once the client's stream ends"
    );
}

/// The mechanisms that carry gRPC (see docs/operations.md, "gRPC"): every one.
const GRPC_MECHANISMS: &[&str] = ALL_MECHANISMS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_through_every_mechanism_from_every_public_protocol() {
    let dir = TempDir::new("grpc");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let h2c = h2c_upstream().await;
    let https = tls_upstream(&gw.dev).await;
    let ca = gw.dev.join("ca.pem");
    let mut origins = Vec::new();
    let mut hosts = Vec::new();
    for m in GRPC_MECHANISMS {
        // Names the dev certificate lists (TLS clients refuse `*.localhost`).
        let host = format!("{m}.localhost");
        let upstream = format!("h2c://{h2c}");
        origins.push(
            Origin::start(&gw, m, &host, &["--upstream", &upstream])
                .await
                .unwrap(),
        );
        hosts.push(host);
    }
    let upstream = format!("https://localhost:{}", https.port());
    origins.push(
        Origin::start(
            &gw,
            "rh2",
            "app.localhost",
            &[
                "--upstream",
                &upstream,
                "--upstream-ca",
                ca.to_str().unwrap(),
            ],
        )
        .await
        .unwrap(),
    );
    hosts.push("app.localhost".to_string());
    for host in &hosts {
        // The probe's `GET /` reaches the gRPC server, which answers 200 with grpc-status 12
        // (unimplemented): the origin is connected.
        wait_serving(&gw, host, 60).await.unwrap();
    }
    for host in &hosts {
        for public in [Public::H2c, Public::H2Tls, Public::H3] {
            check_calls(&gw, host, public).await;
        }
    }
    drop(origins);
}
