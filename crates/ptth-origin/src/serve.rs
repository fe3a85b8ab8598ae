//! Serving reversed HTTP on one connection: the user's service behind a thin adapter.

use crate::OriginConfig;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ptth_core::HttpVersion;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// Any error a body or service may produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body the origin writes: the user's body, boxed (it need not be `Sync`).
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;
/// The request body the application receives, whatever HTTP version carried it.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

type BoxFuture = Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>;
type Handler = Arc<dyn Fn(Request<RequestBody>) -> BoxFuture + Send + Sync>;

/// The service an origin serves, type-erased once so every connection shares it.
#[derive(Clone)]
pub struct OriginService {
    handler: Handler,
    claim: Option<Arc<ptth_auth::AuthorizeClaim>>,
}

impl std::fmt::Debug for OriginService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginService")
            .field("answers_authorization", &self.claim.is_some())
            .finish()
    }
}

impl OriginService {
    /// Wraps any `tower::Service` over `http` types (an axum `Router` qualifies).
    pub fn new<S, B>(service: S) -> Self
    where
        S: tower::Service<Request<RequestBody>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let handler: Handler = Arc::new(move |req: Request<RequestBody>| {
            use futures_util::FutureExt;
            use tower::ServiceExt;
            // A combinator rather than an `async` block: rustc cannot prove an async block
            // over a generic service future `Send` for every lifetime (rust-lang/rust#110338).
            Box::pin(service.clone().oneshot(req).map(|result| match result {
                Ok(res) => res.map(|b| b.map_err(|e| -> BoxError { e.into() }).boxed_unsync()),
                Err(e) => {
                    let e: BoxError = e.into();
                    tracing::error!(error = %e, "the application failed a request");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the application failed this request",
                    )
                }
            }))
        });
        Self {
            handler,
            claim: None,
        }
    }

    /// The same service, also answering the gateway's authorisation request with `claim`
    /// (ALPN-only mechanisms, where no setup request carried the credential).
    pub(crate) fn with_claim(&self, claim: ptth_auth::AuthorizeClaim) -> Self {
        Self {
            handler: self.handler.clone(),
            claim: Some(Arc::new(claim)),
        }
    }
}

fn text(status: StatusCode, reason: &str) -> Response<ResponseBody> {
    let mut res = Response::new(
        http_body_util::Full::new(Bytes::from(format!("{reason}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *res.status_mut() = status;
    res
}

impl hyper::service::Service<Request<Incoming>> for OriginService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.call_boxed(req.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()))
    }
}

impl OriginService {
    /// Serves one request whose body is already boxed (HTTP/3 hands these over).
    pub fn call_boxed(
        &self,
        req: Request<RequestBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>> {
        if let Some(claim) = &self.claim {
            if req.uri().path() == ptth_auth::AUTHORIZE_PATH {
                let res = claim.to_response::<()>().map(|()| {
                    http_body_util::Empty::new()
                        .map_err(|never| match never {})
                        .boxed_unsync()
                });
                return Box::pin(async move { Ok(res) });
            }
        }
        let fut = (self.handler)(req);
        Box::pin(async move { Ok(fut.await) })
    }
}

/// Serves `version` on `io` until the connection ends or `shutdown` fires; on shutdown the
/// connection stops taking requests (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`) and those
/// in flight finish, bounded by the configured grace period.
pub(crate) async fn serve_reversed<IO>(
    io: IO,
    version: HttpVersion,
    service: OriginService,
    config: &OriginConfig,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    macro_rules! run {
        ($conn:expr) => {{
            let mut conn = std::pin::pin!($conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            match ended {
                Some(r) => r.map_err(anyhow::Error::from),
                None => {
                    conn.as_mut().graceful_shutdown();
                    match tokio::time::timeout(config.shutdown_grace, conn).await {
                        Ok(r) => r.map_err(anyhow::Error::from),
                        Err(_) => {
                            tracing::warn!(
                                "requests still running after the grace period; closing"
                            );
                            Ok(())
                        }
                    }
                }
            }
        }};
    }
    match version {
        HttpVersion::Http1 => run!(ptth_h1::reversed::serve(io, service)),
        HttpVersion::Http2 => {
            let options = ptth_h2::ServeOptions {
                max_concurrent_streams: config.max_concurrent_streams,
                ..Default::default()
            };
            run!(ptth_h2::reversed::serve(io, service, options))
        }
        HttpVersion::Http3 => anyhow::bail!("HTTP/3 is not carried over a byte stream"),
    }
}
