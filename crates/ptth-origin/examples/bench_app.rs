//! The application `cargo xtask bench` measures: `/1k` and `/1m` answer 1 KiB and 1 MiB,
//! `/bytes/N` streams N bytes, `/upload` reads the request body to its end, discarding it,
//! and answers `204` with the byte count in `x-received`. The same service runs directly on a TCP port (`serve`, for the
//! direct, nginx, rathole and proxy-mode rows) or embedded in a PTTH origin (`origin`,
//! library mode: no local port at all).
//!
//! ```sh
//! cargo run --release -p ptth-origin --example bench_app -- serve 127.0.0.1:0
//! cargo run --release -p ptth-origin --example bench_app -- \
//!     origin https://localhost:4443 .dev/demo rh2 bench.localhost 1
//! ```

use bytes::{Buf, Bytes};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A body of `remaining` bytes sent as slices of one shared chunk: no copies, no allocation
/// per chunk, so the application costs next to nothing next to the path being measured.
#[derive(Debug)]
struct Repeat {
    chunk: Bytes,
    remaining: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// How many bytes `body` holds, read to its end and discarded; `None` if it failed.
async fn count<B: Body>(body: B) -> Option<u64> {
    let mut body = std::pin::pin!(body);
    let mut received = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Some(data) = frame.ok()?.data_ref() {
            received += data.remaining() as u64;
        }
    }
    Some(received)
}

/// The application: the request body is ignored (it is dropped unread) except by `/upload`.
async fn app<B: Body>(req: Request<B>, chunk: Bytes) -> Result<Response<Repeat>, Infallible> {
    if req.uri().path() == "/upload" {
        let received = count(req.into_body()).await;
        let mut res = Response::new(Repeat {
            chunk,
            remaining: 0,
        });
        match received {
            Some(n) => {
                *res.status_mut() = StatusCode::NO_CONTENT;
                res.headers_mut().insert("x-received", HeaderValue::from(n));
            }
            None => *res.status_mut() = StatusCode::BAD_REQUEST,
        }
        return Ok(res);
    }
    let path = req.uri().path();
    let len = match path {
        "/1k" => Some(1024),
        "/1m" => Some(1024 * 1024),
        _ => path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()),
    };
    let mut res = Response::new(Repeat {
        chunk,
        remaining: len.unwrap_or(0),
    });
    if len.is_none() {
        *res.status_mut() = StatusCode::NOT_FOUND;
    }
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(res)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    match args.first().map(String::as_str) {
        Some("serve") => {
            let addr = args.get(1).map_or("127.0.0.1:0", String::as_str);
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("listen={}", listener.local_addr()?);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            loop {
                let (tcp, _) = listener.accept().await?;
                let _ = tcp.set_nodelay(true);
                let (builder, chunk) = (builder.clone(), chunk.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| app(req, chunk.clone()));
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    let _ = builder.serve_connection(io, service).await;
                });
            }
        }
        Some("origin") => {
            let [_, gateway, dev, mechanism, host, connections] = args.as_slice() else {
                anyhow::bail!(
                    "usage: bench_app origin GATEWAY_URL DEV_DIR MECHANISM HOST CONNECTIONS"
                );
            };
            let dev = std::path::PathBuf::from(dev);
            let token = std::fs::read_to_string(dev.join("token"))?;
            let mut config = ptth_origin::OriginConfig::new(
                gateway.parse()?,
                mechanism.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
                vec![host.clone()],
                Some(
                    ptth_auth::BearerToken::new(token.trim())
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                ),
            );
            config.ca = Some(dev.join("ca.pem"));
            config.connections = connections.parse()?;
            // Its service takes no upgrades: reversed HTTP/2 on `ptth_h2::server`, as the
            // `ptth-origin` binary serves it (`docs/benchmarks.md` says so).
            config.hyper_upgrades = false;
            // Its connections on worker threads of their own, as the binary runs them: as
            // many as the runtime's threads (`TOKIO_WORKER_THREADS`, else one per CPU).
            config.workers = Some(
                std::env::var("TOKIO_WORKER_THREADS")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
                    }),
            );
            if mechanism == "h2-reverse" {
                config.client_cert = Some(dev.join("origin.pem"));
                config.client_key = Some(dev.join("origin.key"));
            }
            let service = tower::service_fn(move |req| app(req, chunk.clone()));
            ptth_origin::Origin::new(config)?
                .serve(service, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
        }
        _ => anyhow::bail!(
            "usage: bench_app serve [ADDR] | origin GATEWAY_URL DEV_DIR MECHANISM HOST CONNECTIONS"
        ),
    }
}
