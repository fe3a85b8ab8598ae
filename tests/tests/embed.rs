//! The gateway embedded in an axum server, as its crate docs describe: the public side is
//! the axum app's fallback behind the app's own TLS, the tunnel side runs on a listener the
//! test bound, a `HashMap` decides which origin may register what, and the connection
//! events say when origins come and go. The origin is a real `ptth-origin` (the library).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::routing::get;
use axum::Router;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_gateway::{
    Authorise, Authorised, BoxFuture, ClientInfo, ConnectionEvent, EventKind, GatewayBuilder,
    GatewayConfig, OriginRequest, Refused,
};
use ptth_tests::TempDir;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bearer tokens and what each may serve: (identity, hosts).
struct Tokens(HashMap<String, (String, Vec<String>)>);

impl Authorise for Tokens {
    fn authorise<'a>(
        &'a self,
        request: &'a OriginRequest<'a>,
    ) -> BoxFuture<'a, Result<Authorised, Refused>> {
        Box::pin(async move {
            let token = request
                .bearer_token()
                .ok_or_else(|| Refused::unauthenticated("a bearer token is required"))?;
            let (identity, hosts) = self
                .0
                .get(token)
                .ok_or_else(|| Refused::unauthenticated("this token is not in the table"))?;
            if request.origins.is_empty() {
                return Err(Refused::forbidden("name the origins you serve"));
            }
            for origin in request.origins {
                if !hosts.iter().any(|h| h == origin.host()) {
                    return Err(Refused::forbidden(format!(
                        "{identity} may not serve {origin} (table says)"
                    )));
                }
            }
            Ok(Authorised::new(
                identity.clone(),
                request.requested_scopes()?,
            ))
        })
    }
}

/// The next event, within 20 s.
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<ConnectionEvent>,
) -> ConnectionEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("an event within 20 s")
        .expect("no event lost")
}

/// One HTTP/1.1 request over TLS to the axum server, for `host` and `path`.
async fn https_get(
    public: SocketAddr,
    roots: &rustls::RootCertStore,
    host: &str,
    path: &str,
) -> (StatusCode, String) {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(public).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A setup request with `token` for `host` on a fresh TLS connection to the tunnel; the
/// gateway's answer (head and body).
async fn refused_setup(
    tunnel: SocketAddr,
    roots: &rustls::RootCertStore,
    token: &str,
    host: &str,
) -> String {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(tunnel).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let head = format!("GET /.well-known/ptth/https%3A%2F%2F{host}/ HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade, close\r\nUpgrade: ptth\r\nAuthorization: Bearer {token}\r\nALPN: h2\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_runs_inside_an_axum_server_with_its_own_authoriser() {
    let dir = TempDir::new("embed");
    let dev = ptth_gateway::dev::ensure(&dir.0).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&dev.ca).unwrap(),
    )) {
        roots.add(cert.unwrap()).unwrap();
    }

    // The gateway: no grants (the table decides), no public listener of its own, the
    // tunnel on a listener bound here.
    let mut config = GatewayConfig::new(
        None,
        "127.0.0.1:0".parse().unwrap(),
        dev.cert.clone(),
        dev.key.clone(),
        ptth_auth::Grants::default(),
    );
    config.workers = 1;
    config.startup_grace = Duration::ZERO;
    let tunnel = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let table = Tokens(HashMap::from([(
        "tenant-a-token".to_string(),
        ("tenant-a".to_string(), vec!["app.localhost".to_string()]),
    )]));
    let gateway = GatewayBuilder::new(config)
        .tunnel_listener(tunnel)
        .public_listeners(false)
        .authorise(table)
        .start()
        .await
        .unwrap();
    assert_eq!(gateway.listen, None);
    assert_eq!(gateway.listen_tls, None);
    let mut events = gateway.events();

    // The axum app: its own route, the gateway as the fallback, served over TLS.
    let app = Router::new()
        .route("/own", get(|| async { "axum's own route" }))
        .fallback_service(gateway.service());
    let tls = {
        let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(
            std::fs::File::open(&dev.cert).unwrap(),
        ))
        .map(Result::unwrap)
        .collect();
        let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
            std::fs::File::open(&dev.key).unwrap(),
        ))
        .unwrap()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    };
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_addr = public.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, addr)) = public.accept().await else {
                continue;
            };
            let (tls, app) = (tls.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(stream) = tls.accept(tcp).await else {
                    return;
                };
                // Who the client is, for the gateway's forwarding fields and routing.
                let app = app.layer(axum::Extension(ClientInfo {
                    addr,
                    tls: true,
                    local_port: 443,
                }));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });

    // A real origin registers with the table's token.
    let mut origin_config = ptth_origin::OriginConfig::new(
        format!("https://localhost:{}", gateway.tunnel.port())
            .parse()
            .unwrap(),
        "upgrade-h2".parse().unwrap(),
        vec!["app.localhost".to_string()],
        Some(ptth_auth::BearerToken::new("tenant-a-token").unwrap()),
    );
    origin_config.ca = Some(dev.ca.clone());
    let origin = ptth_origin::Origin::new(origin_config).unwrap();
    let origin_app = Router::new().route(
        "/hello",
        get(|headers: http::HeaderMap| async move {
            let forwarded = headers
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            format!("hello from the origin, forwarded proto {forwarded}")
        }),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(origin.serve(origin_app, async move {
        let _ = stop_rx.await;
    }));

    let registered = next_event(&mut events).await;
    assert_eq!(registered.kind, EventKind::Registered, "{registered:?}");
    assert_eq!(registered.identity, "tenant-a");
    assert_eq!(
        registered
            .scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["https://app.localhost/"]
    );
    assert_eq!(gateway.registry.len(), 1);

    // Through axum to the origin, and axum's own route beside it.
    let (status, body) = https_get(public_addr, &roots, "app.localhost", "/hello").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "hello from the origin, forwarded proto https");
    let (status, body) = https_get(public_addr, &roots, "app.localhost", "/own").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "axum's own route")
    );
    // A host nobody registered gets the gateway's 503, through axum.
    let (status, _) = https_get(public_addr, &roots, "nobody.localhost", "/hello").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // Refused identities see the authoriser's reasons.
    let said = refused_setup(gateway.tunnel, &roots, "stolen-token", "app.localhost").await;
    assert!(said.starts_with("HTTP/1.1 401"), "{said}");
    assert!(said.contains("this token is not in the table"), "{said}");
    let said = refused_setup(gateway.tunnel, &roots, "tenant-a-token", "other.localhost").await;
    assert!(said.starts_with("HTTP/1.1 403"), "{said}");
    assert!(
        said.contains("tenant-a may not serve https://other.localhost (table says)"),
        "{said}"
    );
    assert_eq!(gateway.registry.len(), 1, "nothing refused was registered");

    // The origin leaves: its connection drains, then closes.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut closed = next_event(&mut events).await;
    while let EventKind::Draining(_) = closed.kind {
        closed = next_event(&mut events).await;
    }
    assert!(matches!(closed.kind, EventKind::Closed(_)), "{closed:?}");
    assert_eq!(closed.id, registered.id);
    assert_eq!(closed.identity, "tenant-a");
    assert!(gateway.registry.is_empty());
}
