//! Library mode: serve an axum `Router` through a PTTH gateway, no local port needed.
//!
//! Start a dev gateway first:
//!
//! ```sh
//! cargo run -p ptth-gateway -- --listen 127.0.0.1:8080 --tunnel 127.0.0.1:4443 --dev .dev/demo
//! cargo run -p ptth-origin --example axum -- https://localhost:4443 .dev/demo
//! curl -H 'Host: axum.localhost' http://127.0.0.1:8080/hello/world
//! ```

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use ptth_origin::{Origin, OriginConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let gateway = args
        .next()
        .unwrap_or_else(|| "https://localhost:4443".into());
    let dev = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".dev/demo".into()));

    let app = Router::new()
        .route(
            "/",
            get(|| async { "hello from axum, served over reversed HTTP\n" }),
        )
        .route(
            "/hello/{name}",
            get(|Path(name): Path<String>| async move { format!("hello, {name}\n") }),
        );

    let token = std::fs::read_to_string(dev.join("token"))?;
    let mut config = OriginConfig::new(
        gateway.parse()?,
        "rh2".parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        vec!["axum.localhost".into()],
        Some(ptth_auth::BearerToken::new(token.trim()).map_err(|e| anyhow::anyhow!("{e}"))?),
    );
    config.ca = Some(dev.join("ca.pem"));
    Origin::new(config)?
        .serve(app, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
