//! The origin's admin listener (`--admin ADDR`, off by default): a small HTTP/1.1 server
//! serving `/metrics` (Prometheus text format 0.0.4), `/healthz` (200 while the process
//! runs) and `/readyz` (200 when connections are registered with the gateways
//! `--ready-when` asks for, 503 naming the gateways that lack one). Every other path is 404.
//!
//! Like every port: a header-read deadline, a deadline for the whole connection, and a cap
//! on connections at once.

use crate::metrics::Metrics;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Connections the admin listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the admin pages read.
pub(crate) type Pages = Arc<Metrics>;

/// Binds the admin listener on `addr` (call inside the runtime that will serve it).
pub(crate) fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    let std = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the admin listener on {addr}"))?;
    std.set_nonblocking(true)?;
    Ok(TcpListener::from_std(std)?)
}

/// Serves the admin pages on `listener` until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, pages: Pages) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let pages = pages.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req: Request<Incoming>| {
                let res = answer(&pages, &req);
                async move { Ok::<_, std::convert::Infallible>(res) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), svc);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "admin connection ended"),
                Err(_) => tracing::debug!(%peer, "admin connection closed: open too long"),
            }
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    res
}

/// The Prometheus text format's media type (version 0.0.4).
pub(crate) const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const PLAIN: &str = "text/plain; charset=utf-8";

fn answer(pages: &Pages, req: &Request<Incoming>) -> Response<String> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "the admin pages answer GET and HEAD\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => text(StatusCode::OK, METRICS_CONTENT_TYPE, pages.encode()),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match pages.ready() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("{why}\n")),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "the admin listener serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Cli;
    use crate::metrics::ReadyWhen;
    use clap::Parser;

    #[test]
    fn admin_and_ready_when_come_from_flags_or_the_file() {
        let base: [&str; 10] = [
            "ptth-origin",
            "--gateway",
            "https://gw.example:4443",
            "--mechanism",
            "rh2",
            "--host",
            "a.example",
            "--token",
            "t0ken-for-the-admin-keys",
            "--hello",
        ];
        let (c, _) = Cli::try_parse_from(base).unwrap().resolve().unwrap();
        assert_eq!((c.admin, c.ready_when), (None, ReadyWhen::All));
        let mut args = base.to_vec();
        args.extend(["--admin", "127.0.0.1:9091", "--ready-when", "any"]);
        let (c, _) = Cli::try_parse_from(args).unwrap().resolve().unwrap();
        assert_eq!(c.admin, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(c.ready_when, ReadyWhen::Any);
        let file: Cli = toml::from_str("admin = \"127.0.0.1:1\"\nready-when = \"any\"\n").unwrap();
        assert_eq!(file.ready_when.as_deref(), Some("any"));
        let mut args = base.to_vec();
        args.extend(["--ready-when", "most"]);
        let err = Cli::try_parse_from(args).unwrap().resolve().unwrap_err();
        assert!(
            err.to_string().contains("--ready-when is all or any"),
            "{err}"
        );
    }
}
