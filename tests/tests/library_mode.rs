//! Library mode: an axum `Router` served through `ptth_origin::Origin` in this process,
//! reached through a real gateway process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::Path;
use axum::routing::{get as route_get, post};
use axum::Router;
use http::StatusCode;
use ptth_origin::{Origin, OriginConfig};
use ptth_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_is_served_over_every_tcp_mechanism() {
    let dir = TempDir::new("axum");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let app = Router::new()
        .route(
            "/hi/{name}",
            route_get(|Path(n): Path<String>| async move { format!("hi {n}") }),
        )
        .route(
            "/len",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for m in TCP_MECHANISMS {
        let mut config = OriginConfig::new(
            gw.tunnel_url().parse().unwrap(),
            m.parse().unwrap(),
            vec![format!("axum-{m}.localhost")],
            Some(ptth_auth::BearerToken::new(gw.token()).unwrap()),
        );
        config.ca = Some(dir.0.join("ca.pem"));
        if *m == "h2-reverse" {
            config.client_cert = Some(dir.0.join("origin.pem"));
            config.client_key = Some(dir.0.join("origin.key"));
        }
        let origin = Origin::new(config).unwrap();
        let mut rx = stop_rx.clone();
        tokio::spawn(origin.serve(app.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    let c = client(true);
    for m in TCP_MECHANISMS {
        let host = format!("axum-{m}.localhost");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (res, body) = send(&c, get(&gw, &host, "/hi/there")).await.unwrap();
            if res.status() == StatusCode::OK {
                assert_eq!(&body[..], b"hi there", "{m}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{m}: {}",
                res.status()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let req = http::Request::post(url(&gw, &host, "/len"))
            .body(full(vec![1u8; 123_456]))
            .unwrap();
        let (res, body) = send(&c, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{m}");
        assert_eq!(&body[..], b"123456", "{m}");
    }
    let _ = stop_tx.send(true);
}
