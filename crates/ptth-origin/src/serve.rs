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
    authorizer: Option<Arc<Authorizer>>,
    /// On reversed HTTP/1.1: what the connection's drain needs to know (see [`H1Drain`]).
    h1_drain: Option<Arc<H1Drain>>,
}

/// The drain of one reversed HTTP/1.1 connection. HTTP/1.1 has no GOAWAY: the only way to
/// tell the gateway "no more requests here" is `Connection: close` on a response (RFC 9112
/// §9.6: "A server that sends a "close" connection option MUST initiate closure of the
/// connection ... after it sends the response containing close"), and the gateway must
/// see it before it picks this connection again. So once `closing` is set, every response
/// head says `Connection: close`.
///
/// A connection with nothing in flight has no response to say it on, and closing it races
/// with a request the gateway may be writing that instant (which then fails: it was sent).
/// So an idle connection is kept for [`H1_IDLE_LINGER`] first: a request that arrives then
/// is answered with `Connection: close`, which closes the connection without a race; one
/// still idle at the end is closed.
#[derive(Debug, Default)]
pub(crate) struct H1Drain {
    closing: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    /// Woken, once closing, when an exchange starts or the last one ends.
    changed: tokio::sync::Notify,
}

/// How long a reversed HTTP/1.1 connection idle at shutdown waits for one more request to
/// answer with `Connection: close` before it closes (bounded by the grace period).
pub(crate) const H1_IDLE_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

impl H1Drain {
    fn enter(self: &Arc<Self>) -> InFlight {
        use std::sync::atomic::Ordering::SeqCst;
        self.in_flight.fetch_add(1, SeqCst);
        if self.closing.load(SeqCst) {
            self.changed.notify_waiters();
        }
        InFlight(self.clone())
    }
}

/// One exchange on a reversed HTTP/1.1 connection, from the request to the end (or drop)
/// of its response body.
struct InFlight(Arc<H1Drain>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self
            .0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.changed.notify_waiters();
        }
    }
}

/// A response body that holds its exchange's [`InFlight`] until it ends or is dropped.
struct Tracked {
    body: ResponseBody,
    _exchange: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Answers the gateway's authorisation request on an ALPN-only connection (Potato §5.2):
/// with a signature over the gateway's challenge and this connection's TLS exporter value
/// when a signing key is configured, else with the bearer token or Basic credentials (the
/// "secret" form), and in every case with the origins and path prefixes this connection
/// claims.
#[derive(Clone)]
pub struct Authorizer {
    pub(crate) credential: Option<ptth_auth::OriginCredential>,
    pub(crate) signing_key: Option<Arc<ptth_auth::Ed25519SigningKey>>,
    pub(crate) key_id: String,
    pub(crate) exporter: Option<[u8; 32]>,
    pub(crate) origins: Vec<ptth_core::SerializedOrigin>,
    pub(crate) path_prefixes: Vec<String>,
    /// What the gateway asked on this connection, so the dialer can tell a refusal apart.
    pub(crate) seen: Arc<AuthorizeSeen>,
}

/// What the gateway asked on one ALPN-only connection. A gateway that refuses the answer
/// to its authorisation request closes the connection without saying why (there is no
/// setup response to carry a status), so a connection that ends right after the answer,
/// with no other request, is the origin's only sign that it was refused.
///
/// It also keeps the authorisation exchange private to setup: the credential is answered
/// only to the first request of the connection. Under HTTP/2 and HTTP/3 requests arrive
/// concurrently, so "first" is one atomic swap: the request that flips `any_request` decides,
/// and from then on the authoriser is off for the whole connection.
#[derive(Debug, Default)]
pub(crate) struct AuthorizeSeen {
    any_request: std::sync::atomic::AtomicBool,
    answered: std::sync::atomic::AtomicBool,
    other_request: std::sync::atomic::AtomicBool,
    /// Woken when the answer goes out or another request arrives.
    change: tokio::sync::Notify,
}

impl AuthorizeSeen {
    /// Resolves at the next change (enable it before checking the state).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.change.notified()
    }

    /// A request other than the authorisation request arrived.
    pub(crate) fn any_other_request(&self) -> bool {
        self.other_request
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_answer(&self) {
        self.answered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.change.notify_waiters();
    }

    fn note_other_request(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.other_request.swap(true, Relaxed) {
            self.change.notify_waiters();
        }
    }

    /// The authorisation request was answered and nothing else was ever asked.
    pub(crate) fn only_the_authorisation_request(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.answered.load(Relaxed) && !self.other_request.load(Relaxed)
    }
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("signs", &self.signing_key.is_some())
            .field("key_id", &self.key_id)
            .field("origins", &self.origins)
            .finish()
    }
}

impl Authorizer {
    fn answer(&self, headers: &http::HeaderMap) -> Response<ResponseBody> {
        let empty = || {
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync()
        };
        if let (Some(key), Some(exporter), Ok(challenge)) = (
            &self.signing_key,
            &self.exporter,
            ptth_auth::Challenge::from_headers(headers),
        ) {
            return match ptth_auth::ChallengeAnswer::sign(
                key,
                &self.key_id,
                &challenge,
                exporter,
                &self.origins,
                &self.path_prefixes,
            ) {
                Ok(answer) => answer.to_response::<()>().map(|()| empty()),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot sign: {e}"),
                ),
            };
        }
        let mut res = Response::new(empty());
        let h = res.headers_mut();
        if let Some(credential) = &self.credential {
            h.insert(ptth_auth::AUTHORIZATION_FIELD, credential.header_value());
        }
        let origins: Vec<String> = self.origins.iter().map(|o| o.to_string()).collect();
        if let Ok(v) = http::HeaderValue::from_str(&origins.join(", ")) {
            h.insert(ptth_auth::ORIGINS_FIELD, v);
        }
        if let Ok(v) = http::HeaderValue::from_str(&self.path_prefixes.join(", ")) {
            h.insert(ptth_auth::PATH_PREFIX_FIELD, v);
        }
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        res
    }
}

impl std::fmt::Debug for OriginService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginService")
            .field("answers_authorization", &self.authorizer.is_some())
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
            authorizer: None,
            h1_drain: None,
        }
    }

    /// The same service, also answering the gateway's authorisation request (ALPN-only
    /// mechanisms, where no setup request carried a credential).
    pub fn with_authorizer(&self, authorizer: Authorizer) -> Self {
        Self {
            handler: self.handler.clone(),
            authorizer: Some(Arc::new(authorizer)),
            h1_drain: self.h1_drain.clone(),
        }
    }

    /// The same service, tracking the exchanges of one reversed HTTP/1.1 connection and
    /// saying `Connection: close` once `drain` is closing.
    fn with_h1_drain(&self, drain: Arc<H1Drain>) -> Self {
        Self {
            handler: self.handler.clone(),
            authorizer: self.authorizer.clone(),
            h1_drain: Some(drain),
        }
    }
}

/// The body of a 404 for the authorisation resource after the first request of a connection.
pub(crate) const NOT_FIRST_REASON: &str = "the ptth authorisation resource is answered only as the first request of a connection, to the gateway's setup";

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
        let Some(drain) = &self.h1_drain else {
            return self.answer(req);
        };
        let exchange = drain.enter();
        let answer = self.answer(req);
        Box::pin(async move {
            let Ok(res) = answer.await;
            let drain = exchange.0.clone();
            let mut res = res.map(|body| {
                Tracked {
                    body,
                    _exchange: exchange,
                }
                .boxed_unsync()
            });
            // Read as late as possible: just before hyper writes this head. A `101` keeps
            // its `Connection: upgrade`: the connection leaves HTTP with it anyway.
            if drain.closing.load(std::sync::atomic::Ordering::SeqCst)
                && res.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                res.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(res)
        })
    }

    fn answer(
        &self,
        req: Request<RequestBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>> {
        if let Some(authorizer) = &self.authorizer {
            use std::sync::atomic::Ordering::AcqRel;
            let first = !authorizer.seen.any_request.swap(true, AcqRel);
            if req.uri().path() == ptth_auth::AUTHORIZE_PATH {
                if first {
                    let res = authorizer.answer(req.headers());
                    authorizer.seen.note_answer();
                    return Box::pin(async move { Ok(res) });
                }
                // The gateway asks this only as its first request; a later one is not the
                // gateway's setup (a public client, if a gateway ever forwarded it), so it
                // gets no credential and does not reach the application either.
                authorizer.seen.note_other_request();
                let res = text(StatusCode::NOT_FOUND, NOT_FIRST_REASON);
                return Box::pin(async move { Ok(res) });
            }
            authorizer.seen.note_other_request();
        }
        let fut = (self.handler)(req);
        Box::pin(async move { Ok(fut.await) })
    }
}

/// How long the origin waits, on a reversed HTTP/2 connection, for the gateway's client
/// preface once the setup is done (draft-thomson-ptth-potato §4.3: the gateway sends it
/// first). The keep-alive PING starts only once the connection is up, so this bounds the
/// wait before it.
pub(crate) const H2_PREFACE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The settings of the origin's reversed HTTP/2 server: the stream bound from the config,
/// the windows, 64 KiB frames and header-list limit of [`ptth_h2::server::handshake`], the
/// reversed connection's send buffer ([`ptth_h2::reversed::SEND_BUFFER`]) and its tolerance
/// of the gateway's bursts of resets ([`ptth_h2::reversed::pending_accept_resets`]), and
/// keep-alive PINGs every 20 s answered within 20 s.
pub(crate) fn h2_options(config: &OriginConfig) -> ptth_h2::server::Options {
    ptth_h2::server::Options {
        max_concurrent_streams: config.max_concurrent_streams,
        send_buffer: ptth_h2::reversed::SEND_BUFFER,
        pending_accept_resets: ptth_h2::reversed::pending_accept_resets(
            config.max_concurrent_streams,
        ),
        ..Default::default()
    }
}

/// The service as the HTTP/2 server calls it: each request's answer runs in the
/// connection's driver (no task per stream).
fn h2_service(
    service: OriginService,
) -> impl FnMut(Request<RequestBody>) -> H2Answer + Unpin + Send {
    move |req| H2Answer(service.call_boxed(req))
}

/// An answer to one request on the HTTP/2 server: the service's future, whose error is
/// `Infallible`.
pub(crate) struct H2Answer(
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>,
);

impl Future for H2Answer {
    type Output = Response<ResponseBody>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Response<ResponseBody>> {
        self.0.as_mut().poll(cx).map(|r| match r {
            Ok(res) => res,
            Err(never) => match never {},
        })
    }
}

/// Serves `version` on `io` until the connection ends or `shutdown` fires; on shutdown the
/// connection stops taking requests and those in flight finish, bounded by the configured
/// grace period:
///
/// - HTTP/2: GOAWAY (h2's graceful shutdown, through [`ptth_h2::server`]: RFC 9113 §6.8 "a
///   server that is attempting to gracefully shut down a connection SHOULD send an initial
///   GOAWAY frame with the last stream identifier set to 2^31-1 ... After allowing time for
///   any in-flight stream creation (at least one round-trip time), the server MAY send
///   another GOAWAY frame with an updated last stream identifier"), so a request the
///   gateway sent just before the GOAWAY reached it is still served;
/// - HTTP/1.1: every response from now on says `Connection: close` and the connection
///   closes after it; one idle at shutdown closes after [`H1_IDLE_LINGER`] unless a request
///   comes first (see [`H1Drain`]).
///
/// Returns what ended the connection; an error after shutdown started is the gateway
/// hanging up on a connection we were closing anyway, and is the caller's to judge.
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
    let grace = config.shutdown_grace;
    match version {
        HttpVersion::Http1 => {
            let drain = Arc::new(H1Drain::default());
            let conn = ptth_h1::reversed::serve(io, service.with_h1_drain(drain.clone()));
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => return r.map_err(anyhow::Error::from),
                _ = shutdown.wait_for(|s| *s) => {}
            }
            drain
                .closing
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let now = tokio::time::Instant::now();
            let deadline = now + grace;
            let linger_until = now + H1_IDLE_LINGER.min(grace);
            let mut closed = false;
            loop {
                let changed = drain.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                let idle = drain.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0;
                if !closed && idle && tokio::time::Instant::now() >= linger_until {
                    // Still nothing in flight: close (hyper closes an idle connection at
                    // once, or after the exchange it is reading, whose answer says close).
                    conn.as_mut().graceful_shutdown();
                    closed = true;
                }
                tokio::select! {
                    r = conn.as_mut() => return r.map_err(anyhow::Error::from),
                    _ = changed, if !closed => {}
                    _ = tokio::time::sleep_until(linger_until), if !closed && idle => {}
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::warn!("requests still running after the grace period; closing");
                        return Ok(());
                    }
                }
            }
        }
        HttpVersion::Http2 if config.hyper_upgrades => {
            // hyper's server: `hyper::upgrade::on` works, at a task per request.
            let options = ptth_h2::ServeOptions {
                max_concurrent_streams: config.max_concurrent_streams,
                ..Default::default()
            };
            let conn = ptth_h2::reversed::serve(io, service, options);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => return r.map_err(anyhow::Error::from),
                _ = shutdown.wait_for(|s| *s) => {}
            }
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(grace, conn).await {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!("requests still running after the grace period; closing");
                    Ok(())
                }
            }
        }
        HttpVersion::Http2 => {
            let options = h2_options(config);
            // The gateway sends its preface right after the setup; one that does not is
            // gone, and a drain meanwhile has nothing to wait for.
            let handshake = ptth_h2::server::handshake(io, &options);
            let conn = tokio::select! {
                conn = tokio::time::timeout(H2_PREFACE_TIMEOUT, handshake) => match conn {
                    Ok(conn) => conn.map_err(|e| {
                        anyhow::anyhow!("the gateway's HTTP/2 preface was not accepted: {e}")
                    })?,
                    Err(_) => anyhow::bail!(
                        "the gateway sent no HTTP/2 preface within {H2_PREFACE_TIMEOUT:?}"
                    ),
                },
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            let mut conn = ptth_h2::server::serve(conn, options.keep_alive, h2_service(service));
            tokio::select! {
                r = &mut conn => return r.map_err(anyhow::Error::from),
                _ = shutdown.wait_for(|s| *s) => {}
            }
            conn.graceful_shutdown();
            match tokio::time::timeout(grace, conn).await {
                Ok(r) => r.map_err(anyhow::Error::from),
                Err(_) => {
                    tracing::warn!("requests still running after the grace period; closing");
                    Ok(())
                }
            }
        }
        HttpVersion::Http3 => anyhow::bail!("HTTP/3 is not carried over a byte stream"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "origin-secret-token";

    fn origin_service() -> OriginService {
        let credential =
            ptth_auth::OriginCredential::Bearer(ptth_auth::BearerToken::new(TOKEN).unwrap());
        let authorizer = Authorizer {
            credential: Some(credential),
            signing_key: None,
            key_id: String::new(),
            exporter: None,
            origins: vec!["https://app.localhost".parse().unwrap()],
            path_prefixes: vec!["/".into()],
            seen: Default::default(),
        };
        OriginService::new(crate::service::Hello).with_authorizer(authorizer)
    }

    fn request(path: &str) -> Request<RequestBody> {
        Request::get(path)
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    async fn call(service: &OriginService, path: &str) -> (http::response::Parts, String) {
        let res = service.call_boxed(request(path)).await.unwrap();
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8_lossy(&body).into_owned())
    }

    /// Whether a response carries the credential anywhere (a field or the body).
    fn leaks(parts: &http::response::Parts, body: &str) -> bool {
        body.contains(TOKEN)
            || parts.headers.iter().any(|(k, v)| {
                k.as_str().starts_with("ptth-")
                    || v.as_bytes()
                        .windows(TOKEN.len())
                        .any(|w| w == TOKEN.as_bytes())
            })
    }

    #[tokio::test]
    async fn the_credential_is_answered_only_to_the_first_request() {
        let service = origin_service();
        let (first, body) = call(&service, ptth_auth::AUTHORIZE_PATH).await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(
            first.headers[ptth_auth::AUTHORIZATION_FIELD],
            format!("Bearer {TOKEN}").as_str()
        );
        assert!(
            leaks(&first, &body),
            "the positive twin must see the credential"
        );
        let (again, body) = call(&service, ptth_auth::AUTHORIZE_PATH).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        assert!(body.contains(NOT_FIRST_REASON), "{body}");
        assert!(!leaks(&again, &body), "{again:?} {body}");
        // The connection still serves the application.
        let (hello, _) = call(&service, "/").await;
        assert_eq!(hello.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn any_earlier_request_turns_the_authoriser_off() {
        let service = origin_service();
        let (hello, _) = call(&service, "/").await;
        assert_eq!(hello.status, StatusCode::OK);
        let (late, body) = call(&service, ptth_auth::AUTHORIZE_PATH).await;
        assert_eq!(late.status, StatusCode::NOT_FOUND);
        assert!(body.contains(NOT_FIRST_REASON), "{body}");
        assert!(!leaks(&late, &body));
        // Each connection has its own authoriser: a fresh one still answers.
        let (fresh, body) = call(&origin_service(), ptth_auth::AUTHORIZE_PATH).await;
        assert!(leaks(&fresh, &body));
    }

    /// A reversed HTTP/2 connection served by [`serve_reversed`] on one end of a pipe, with
    /// the gateway's own HTTP/2 client ([`ptth_h2::client`]) on the other.
    async fn reversed_h2(
        service: OriginService,
        grace: std::time::Duration,
    ) -> (
        ptth_h2::client::Client,
        watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        reversed_h2_on(service, grace, false).await
    }

    /// [`reversed_h2`] on either HTTP/2 server ([`OriginConfig::hyper_upgrades`]).
    async fn reversed_h2_on(
        service: OriginService,
        grace: std::time::Duration,
        hyper_upgrades: bool,
    ) -> (
        ptth_h2::client::Client,
        watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let (gateway_io, origin_io) = tokio::io::duplex(256 * 1024);
        let mut config = OriginConfig::new(
            "https://gateway.example".parse().unwrap(),
            "rh2".parse().unwrap(),
            vec!["app.example".into()],
            None,
        );
        config.shutdown_grace = grace;
        config.hyper_upgrades = hyper_upgrades;
        let (stop, shutdown) = watch::channel(false);
        let served = tokio::spawn(async move {
            serve_reversed(origin_io, HttpVersion::Http2, service, &config, shutdown).await
        });
        let (client, conn) = ptth_h2::client::handshake(gateway_io, ptth_h2::Windows::default())
            .await
            .unwrap();
        tokio::spawn(ptth_h2::client::drive(conn, ptth_h2::client::KEEP_ALIVE));
        (client, stop, served)
    }

    fn get(path: &str) -> Request<RequestBody> {
        let mut req = request(path);
        *req.uri_mut() = format!("https://app.example{path}").parse().unwrap();
        req
    }

    const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

    /// The requests of one reversed HTTP/2 connection all run in its driver, yet one
    /// whose handler waits does not hold up another: the second is answered while the
    /// first still waits (for that very answer), then the first finishes too.
    #[tokio::test]
    async fn a_waiting_handler_does_not_stall_another_stream_of_the_connection() {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(Some(release_rx)));
        let app = tower::service_fn(move |req: Request<RequestBody>| {
            let wait = (req.uri().path() == "/slow")
                .then(|| release_rx.lock().unwrap().take())
                .flatten();
            async move {
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                let body = http_body_util::Full::new(Bytes::from(req.uri().path().to_owned()))
                    .map_err(|never| -> BoxError { match never {} })
                    .boxed_unsync();
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        let (client, _stop, _served) =
            reversed_h2(OriginService::new(app), std::time::Duration::from_secs(5)).await;
        let client = Arc::new(client);
        let c = client.clone();
        let slow = tokio::spawn(async move {
            let res = c.send(get("/slow")).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        });
        let fast = tokio::time::timeout(DEADLINE, async {
            let res = client.send(get("/fast")).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .expect("the second stream waited for the first one's handler");
        assert_eq!(fast, "/fast");
        assert!(!slow.is_finished(), "the slow handler was never held");
        release_tx.send(()).unwrap();
        let slow = tokio::time::timeout(DEADLINE, slow).await.unwrap().unwrap();
        assert_eq!(slow, "/slow");
    }

    /// Answers over reversed HTTP/2 carry a `Date` (RFC 9110 §6.6.1; `ptth_h2::server` adds
    /// it, as hyper's server did), and an application's own `Date` is left as it is.
    #[tokio::test]
    async fn answers_carry_a_date_unless_the_application_set_one() {
        let app = tower::service_fn(|req: Request<RequestBody>| async move {
            let mut res = Response::new(
                http_body_util::Empty::new()
                    .map_err(|never| -> BoxError { match never {} })
                    .boxed_unsync(),
            );
            if req.uri().path() == "/own" {
                res.headers_mut().insert(
                    http::header::DATE,
                    http::HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
                );
            }
            Ok::<_, Infallible>(res)
        });
        let (client, _stop, _served) =
            reversed_h2(OriginService::new(app), std::time::Duration::from_secs(5)).await;
        let before = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
        let res = client.send(get("/")).await.unwrap();
        let date = res.headers()[http::header::DATE].to_str().unwrap();
        let date = httpdate::parse_http_date(date).unwrap();
        assert!(date >= before, "{date:?} is before the request");
        let res = client.send(get("/own")).await.unwrap();
        assert_eq!(
            res.headers()[http::header::DATE],
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    /// RFC 8441 over the origin's HTTP/2 server: an extended CONNECT for `websocket` reaches
    /// the library's service, whose [`crate::service::on_upgrade`] gets the stream once its
    /// `200` is sent, and WebSocket messages cross it (the hello service echoes them).
    #[tokio::test]
    async fn an_extended_connect_websocket_becomes_the_services_tunnel() {
        // `on_upgrade` finds the tunnel on either server.
        for hyper_upgrades in [false, true] {
            let (client, _stop, _served) = reversed_h2_on(
                OriginService::new(crate::service::Hello),
                std::time::Duration::from_secs(5),
                hyper_upgrades,
            )
            .await;
            websocket_echo(&client, &format!("over rh2, hyper {hyper_upgrades}")).await;
        }
    }

    /// With [`OriginConfig::hyper_upgrades`] on (the default), a library service that
    /// takes its tunnel with `hyper::upgrade::on` itself, as axum's `WebSocketUpgrade`
    /// does, gets it over reversed HTTP/2.
    #[tokio::test]
    async fn hyper_upgrade_on_works_over_reversed_h2_by_default() {
        assert!(
            OriginConfig::new(
                "https://gateway.example".parse().unwrap(),
                "rh2".parse().unwrap(),
                vec![],
                None
            )
            .hyper_upgrades
        );
        let app = tower::service_fn(|mut req: Request<RequestBody>| async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(io) = on.await {
                    let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(io));
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
            let body = http_body_util::Empty::new()
                .map_err(|never| -> BoxError { match never {} })
                .boxed_unsync();
            Ok::<_, Infallible>(Response::new(body))
        });
        let (client, _stop, _served) = reversed_h2_on(
            OriginService::new(app),
            std::time::Duration::from_secs(5),
            true,
        )
        .await;
        let mut tunnel = extended_connect(&client).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tunnel.write_all(b"through hyper's upgrade").await.unwrap();
        let mut back = [0u8; 23];
        tokio::time::timeout(DEADLINE, tunnel.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"through hyper's upgrade");
    }

    /// Opens a WebSocket by RFC 8441 on `client` and checks `text` comes back.
    async fn websocket_echo(client: &ptth_h2::client::Client, text: &str) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let tunnel = extended_connect(client).await;
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            tunnel,
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        ws.send(Message::text(text)).await.unwrap();
        let back = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }

    /// An RFC 8441 extended CONNECT for `websocket` on `client`, answered 200: its tunnel.
    async fn extended_connect(client: &ptth_h2::client::Client) -> ptth_h2::Tunnel {
        let mut req = get("/ws");
        *req.method_mut() = http::Method::CONNECT;
        req.headers_mut().insert(
            http::header::SEC_WEBSOCKET_VERSION,
            http::HeaderValue::from_static("13"),
        );
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let mut res = tokio::time::timeout(DEADLINE, client.send(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        ptth_h2::client::take_tunnel(&mut res).expect("a 2xx carries the tunnel")
    }

    /// The origin's drain on reversed HTTP/2: GOAWAY, the request in flight still gets its
    /// whole answer, and the connection then ends `Ok` well within the grace period.
    #[tokio::test]
    async fn a_drain_lets_the_request_in_flight_finish_then_ends() {
        let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let hold = Arc::new(std::sync::Mutex::new(Some((arrived_tx, go_rx))));
        let app = tower::service_fn(move |_req: Request<RequestBody>| {
            let hold = hold.lock().unwrap().take();
            async move {
                if let Some((arrived, go)) = hold {
                    let _ = arrived.send(());
                    let _ = go.await;
                }
                let body = http_body_util::Full::new(Bytes::from_static(b"late but whole"))
                    .map_err(|never| -> BoxError { match never {} })
                    .boxed_unsync();
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        let (client, stop, served) =
            reversed_h2(OriginService::new(app), std::time::Duration::from_secs(60)).await;
        let client = Arc::new(client);
        let c = client.clone();
        let first = tokio::spawn(async move {
            let res = c.send(get("/")).await.unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        });
        tokio::time::timeout(DEADLINE, arrived_rx)
            .await
            .unwrap()
            .unwrap();
        stop.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !client.peer_went_away() {
            assert!(tokio::time::Instant::now() < deadline, "no GOAWAY seen");
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        go_tx.send(()).unwrap();
        let body = tokio::time::timeout(DEADLINE, first)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(body, "late but whole");
        drop(client);
        let ended = tokio::time::timeout(DEADLINE, served)
            .await
            .expect("the drained connection did not end before its grace period")
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_get_the_credential_at_most_once() {
        for _ in 0..50 {
            let service = origin_service();
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let service = service.clone();
                tasks.push(tokio::spawn(async move {
                    let (parts, body) = call(&service, ptth_auth::AUTHORIZE_PATH).await;
                    leaks(&parts, &body)
                }));
            }
            let mut leaked = 0;
            for t in tasks {
                leaked += usize::from(t.await.unwrap());
            }
            assert_eq!(
                leaked, 1,
                "exactly the first of concurrent requests answers"
            );
        }
    }
}
