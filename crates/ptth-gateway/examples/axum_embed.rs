//! The gateway inside an axum app: the app keeps its own routes, the gateway's public side
//! is its fallback, a `HashMap` of bearer tokens decides which origin may register which
//! host, and the connection events say when origins come and go. An origin (the
//! `ptth-origin` library, in this process) registers, and a request through axum reaches
//! it. Runs to completion and asserts what it prints (`cargo xtask ci` runs it).
//!
//! `cargo run -p ptth-gateway --example axum_embed`

use axum::extract::{ConnectInfo, Request};
use axum::middleware::{from_fn, Next};
use axum::routing::get;
use axum::Router;
use ptth_gateway::{
    Authorise, Authorised, BoxFuture, ClientInfo, EventKind, GatewayBuilder, GatewayConfig,
    OriginRequest, Refused,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Bearer token → (who it is, the hosts it may serve).
struct TokenTable(HashMap<String, (String, Vec<String>)>);

impl Authorise for TokenTable {
    fn authorise<'a>(
        &'a self,
        request: &'a OriginRequest<'a>,
    ) -> BoxFuture<'a, Result<Authorised, Refused>> {
        Box::pin(async move {
            let token = request.bearer_token().unwrap_or_default();
            let Some((who, hosts)) = self.0.get(token) else {
                return Err(Refused::unauthenticated("unknown token"));
            };
            if let Some(o) = request
                .origins
                .iter()
                .find(|o| !hosts.iter().any(|h| h == o.host()))
            {
                return Err(Refused::forbidden(format!("{who} may not serve {o}")));
            }
            Ok(Authorised::new(who.clone(), request.requested_scopes()?))
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Certificates for the tunnel's TLS: the dev set a `ptth-gateway --dev` run writes.
    let dir = std::env::temp_dir().join(format!("ptth-axum-embed-{}", std::process::id()));
    let dev = ptth_gateway::dev::ensure(&dir)?;

    // The tunnel side: origins dial 127.0.0.1:<port>; no public listener of its own.
    let mut config = GatewayConfig::new(
        None,
        "127.0.0.1:0".parse()?,
        dev.cert.clone(),
        dev.key.clone(),
        ptth_auth::Grants::default(),
    );
    config.workers = 1;
    let tokens = TokenTable(HashMap::from([(
        "secret-a".to_string(),
        ("tenant-a".to_string(), vec!["app.localhost".to_string()]),
    )]));
    let gateway = GatewayBuilder::new(config)
        .tunnel_listener(std::net::TcpListener::bind("127.0.0.1:0")?)
        .public_listeners(false)
        .authorise(tokens)
        .start()
        .await?;
    let mut events = gateway.events();

    // The public side: the app's own route, the gateway as fallback. The middleware tells
    // the gateway who the client is (its forwarding fields and routing use it).
    let app = Router::new()
        .route("/status", get(|| async { "the app's own route" }))
        .fallback_service(gateway.service())
        .layer(from_fn(
            |ConnectInfo(addr): ConnectInfo<SocketAddr>, mut req: Request, next: Next| async move {
                req.extensions_mut().insert(ClientInfo {
                    addr,
                    tls: false,
                    local_port: 80,
                });
                next.run(req).await
            },
        ));
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let public_addr = public.local_addr()?;
    tokio::spawn(async move {
        axum::serve(
            public,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    // An origin with tenant-a's token registers for app.localhost.
    let mut origin = ptth_origin::OriginConfig::new(
        format!("https://localhost:{}", gateway.tunnel.port()).parse()?,
        "upgrade-h2".parse()?,
        vec!["app.localhost".to_string()],
        Some(ptth_auth::BearerToken::new("secret-a")?),
    );
    origin.ca = Some(dev.ca.clone());
    let origin_app = Router::new().route("/", get(|| async { "hello from the origin" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(ptth_origin::Origin::new(origin)?.serve(origin_app, async {
        let _ = stopped.await;
    }));
    let event = tokio::time::timeout(Duration::from_secs(20), events.recv()).await??;
    assert_eq!(event.kind, EventKind::Registered);
    println!(
        "registered: connection {} of {} for {}",
        event.id, event.identity, event.scopes[0]
    );

    // Through axum: the origin for app.localhost, the app's own route beside it.
    let through = get_text(public_addr, "app.localhost", "/").await?;
    println!("app.localhost/ -> {through}");
    assert_eq!(through, "hello from the origin");
    let own = get_text(public_addr, "app.localhost", "/status").await?;
    println!("app.localhost/status -> {own}");
    assert_eq!(own, "the app's own route");

    // The origin stops: its connection closes.
    let _ = stop.send(());
    serving.await??;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv()).await??;
        if let EventKind::Closed(reason) = event.kind {
            println!("closed: connection {} ({reason:?})", event.id);
            break;
        }
    }
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `GET path` with `Host: host` over HTTP/1.1; the body, if the answer is 200.
async fn get_text(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let res = tokio::time::timeout(Duration::from_secs(20), send.send_request(req)).await??;
    anyhow::ensure!(res.status() == 200, "{path}: {}", res.status());
    let body = res.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}
