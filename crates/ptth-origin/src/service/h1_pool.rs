//! HTTP/1.1 connections to one cleartext upstream (`http://`, `unix:`), pooled and driven by
//! the requests that use them: no task per connection.
//!
//! ```text
//! request ──▶ checkout (idle, alive, ready) ──▶ exchange ──▶ response head
//!    │             └─ none: dial ─────────────────▲            │
//!    │                                                         ▼
//!    └── connection polled inside the request's own future, then inside its response
//!        body's polls; at the body's end it goes back to the idle list
//! ```
//!
//! hyper's pooled client runs every upstream connection in a task of its own and hands each
//! request to it through a channel and the response back through another: two wake-ups per
//! request, and on a multi-threaded runtime often across threads (the origin's reversed
//! HTTP/2 connection serves all its requests in one task, `ptth_h2::server`). Here the
//! request's future polls the connection itself, so the upstream socket is read and written
//! on the thread that serves the request (docs/performance.md, finding 13).
//!
//! Idle connections are kept last in, first out (at most [`super::proxy::POOL_MAX_IDLE`],
//! each at most [`super::proxy::POOL_IDLE_TIMEOUT`]); one taken from the list is polled
//! first, so one the upstream closed meanwhile is dropped rather than used. A request that
//! a reused connection could not even send is sent again on a fresh one (the request was
//! not written, so this is not a retry of anything the upstream saw). A sweeper task, started
//! with the first idle connection and ending with the pool, closes idle connections that
//! grew stale or that the upstream closed, so nothing lingers half-closed when the load
//! stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};

use super::upstream::{Connector, Io};

/// The body type sent to the upstream. It need not be `Sync`, so request bodies that are only
/// `Send` are boxed without wrapping.
pub(crate) type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, super::BoxError>;

/// Why an exchange failed: no connection, or the exchange on one.
#[derive(Debug)]
pub(crate) enum PoolError {
    /// The dial (or its deadline) failed.
    Connect(std::io::Error),
    /// The request or its response failed on a connection.
    Exchange(hyper::Error),
}

/// HTTP/1.1 connections to one upstream.
#[derive(Debug, Clone)]
pub(crate) struct H1Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    read_buffer: usize,
    max_idle: usize,
    idle_timeout: Duration,
    /// In the order the connections came back (their `since` rising), taken last in,
    /// first out: the most recently used connection is the warmest.
    idle: Mutex<Vec<Idle>>,
    sweeping: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("connector", &self.connector)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

struct Idle {
    driven: Driven,
    since: Instant,
    /// The thread whose current-thread runtime the connection's socket is registered with
    /// (the origin's workers, `OriginConfig::workers`): only requests on that thread take
    /// it, as another thread would be woken by that runtime for each of its reads. `None`
    /// on a multi-thread runtime, whose threads share one reactor.
    owner: Option<std::thread::ThreadId>,
}

impl Idle {
    /// Whether it came back less than `timeout` before `now`.
    fn fresh(&self, now: Instant, timeout: Duration) -> bool {
        now.saturating_duration_since(self.since) < timeout
    }
}

/// One connection: its request sender and the connection future that does its IO, which
/// whoever uses the connection polls. `conn` is `None` once the connection ended.
struct Driven {
    sender: SendRequest<UpstreamBody>,
    /// Boxed: hyper's connection state is large, and a `Driven` moves in and out of the
    /// pool, the request's future and the response body.
    conn: Option<Pin<Box<Connection<Io, UpstreamBody>>>>,
}

impl Driven {
    /// Polls the connection (reads, writes, flushes what is due); `false` once it ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match conn.as_mut().poll(cx) {
            Poll::Pending => true,
            Poll::Ready(ended) => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
                }
                self.conn = None;
                false
            }
        }
    }

    /// Whether the connection is open and waits for its next request.
    fn reusable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }
}

impl H1Pool {
    /// A pool dialling with `connector`; each connection reads into at most `read_buffer`
    /// octets; at most `max_idle` idle connections are kept, each for `idle_timeout`.
    pub(crate) fn new(
        connector: Connector,
        read_buffer: usize,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        H1Pool {
            shared: Arc::new(Shared {
                connector,
                read_buffer,
                max_idle,
                idle_timeout,
                idle: Mutex::new(Vec::new()),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// How many idle connections the pool holds now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.shared.idle().len()
    }

    /// Sends `request` over an idle connection, or a fresh one, and answers with the
    /// response whose body drives the connection until it ends.
    pub(crate) async fn send(
        &self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<DrivenBody>, PoolError> {
        // HTTP/1.1 sends the origin form; the authority is in `Host`.
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = Uri::from(path);
        }
        let reused = std::future::poll_fn(|cx| Poll::Ready(self.shared.checkout(cx))).await;
        if let Some(mut driven) = reused {
            match exchange(&mut driven, request).await {
                Ok(response) => return Ok(self.answer(driven, response).await),
                Err(mut error) => match error.take_message() {
                    // Not written: the connection closed as it was taken. A fresh one gets it.
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Exchange(error.into_error())),
                },
            }
        }
        // Boxed: the dial's state (TLS included, for other transports) is large and only
        // needed when no idle connection was found.
        let mut driven = Box::pin(self.shared.dial()).await?;
        match exchange(&mut driven, request).await {
            Ok(response) => Ok(self.answer(driven, response).await),
            Err(error) => Err(PoolError::Exchange(error.into_error())),
        }
    }

    /// The response with a body that drives `driven`; a response without content gives the
    /// connection back at once.
    async fn answer(&self, driven: Driven, response: Response<Incoming>) -> Response<DrivenBody> {
        let (parts, body) = response.into_parts();
        let mut driven = Some(driven);
        if body.is_end_stream() {
            std::future::poll_fn(|cx| {
                if let Some(driven) = driven.take() {
                    self.shared.give_back(driven, cx);
                }
                Poll::Ready(())
            })
            .await;
        }
        Response::from_parts(
            parts,
            DrivenBody {
                ended: driven.is_none(),
                reading: Mutex::new(Reading {
                    body,
                    driven,
                    pool: self.shared.clone(),
                }),
            },
        )
    }
}

/// Sends `request` on `driven`, polling its connection until the response head arrives.
async fn exchange(
    driven: &mut Driven,
    request: Request<UpstreamBody>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<UpstreamBody>>> {
    let sent = driven.sender.try_send_request(request);
    let mut sent = std::pin::pin!(sent);
    std::future::poll_fn(|cx| {
        // When the connection ends, the dispatcher answers the request with its error.
        driven.drive(cx);
        sent.as_mut().poll(cx)
    })
    .await
}

impl Shared {
    /// A fresh connection.
    async fn dial(&self) -> Result<Driven, PoolError> {
        let io = self
            .connector
            .connect(None)
            .await
            .map_err(PoolError::Connect)?;
        let (sender, conn) = Builder::new()
            .max_buf_size(self.read_buffer)
            .handshake(io)
            .await
            .map_err(PoolError::Exchange)?;
        Ok(Driven {
            sender,
            conn: Some(Box::pin(conn)),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and ready. The ones found
    /// closed or stale are dropped (closed) after the lock is released.
    fn checkout(&self, cx: &mut Context<'_>) -> Option<Driven> {
        let owner = crate::own_reactor::current_thread_runtime();
        let mut dead = Vec::new();
        let found = {
            let mut idle = self.idle();
            // The list is in the order connections came back, so the stale ones are a
            // prefix: one clock read finds them.
            let now = Instant::now();
            let stale = idle.partition_point(|entry| !entry.fresh(now, self.idle_timeout));
            dead.extend(idle.drain(..stale));
            loop {
                let Some(at) = idle.iter().rposition(|entry| entry.owner == owner) else {
                    break None;
                };
                let mut entry = idle.remove(at);
                if entry.driven.reusable(cx) {
                    break Some(entry.driven);
                }
                dead.push(entry);
            }
        };
        drop(dead);
        found
    }

    /// Keeps `driven` for the next request when it is open, ready and there is room;
    /// otherwise it is closed.
    fn give_back(self: &Arc<Self>, mut driven: Driven, cx: &mut Context<'_>) {
        if !driven.reusable(cx) {
            return;
        }
        let mut idle = self.idle();
        if idle.len() >= self.max_idle {
            drop(idle);
            return;
        }
        idle.push(Idle {
            driven,
            since: Instant::now(),
            owner: crate::own_reactor::current_thread_runtime(),
        });
        drop(idle);
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep(Arc::downgrade(self)));
            } else {
                self.sweeping.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Drops the idle connections that are stale or that the upstream closed.
    fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        let now = Instant::now();
        let dead: Vec<Idle> = {
            let mut idle = self.idle();
            let mut dead = Vec::new();
            let mut kept = Vec::with_capacity(idle.len());
            for mut entry in idle.drain(..) {
                if entry.fresh(now, self.idle_timeout) && entry.driven.reusable(&mut cx) {
                    kept.push(entry);
                } else {
                    dead.push(entry);
                }
            }
            *idle = kept;
            dead
        };
        drop(dead);
    }
}

/// Sweeps `pool` a few times per idle timeout until it is gone. Should its runtime stop
/// first (a worker's, or a library caller's), the next connection given back starts
/// another.
async fn sweep(pool: Weak<Shared>) {
    struct Sweeping(Weak<Shared>);
    impl Drop for Sweeping {
        fn drop(&mut self) {
            if let Some(pool) = self.0.upgrade() {
                pool.sweeping.store(false, Ordering::Relaxed);
            }
        }
    }
    let _sweeping = Sweeping(pool.clone());
    let period = match pool.upgrade() {
        Some(pool) => (pool.idle_timeout / 3).max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.sweep();
    }
}

/// A response body from a pooled connection: polling it drives the connection, and its end
/// gives the connection back to the pool.
pub(crate) struct DrivenBody {
    /// Only ever reached through `&mut` (`Mutex::get_mut`, no locking): the mutex makes the
    /// body `Sync`, which the connection (it holds the request body) is not.
    reading: Mutex<Reading>,
    ended: bool,
}

struct Reading {
    body: Incoming,
    driven: Option<Driven>,
    pool: Arc<Shared>,
}

impl HttpBody for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let reading = this
            .reading
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(driven) = reading.driven.as_mut() {
            driven.drive(cx);
        }
        let frame = match Pin::new(&mut reading.body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(frame) => frame,
        };
        let end = match &frame {
            None => true,
            Some(Ok(frame)) => frame.is_trailers() || reading.body.is_end_stream(),
            Some(Err(_)) => {
                // A failed body leaves the connection mid-message: it cannot be reused.
                reading.driven = None;
                true
            }
        };
        if end {
            this.ended = true;
            if let Some(driven) = reading.driven.take() {
                reading.pool.give_back(driven, cx);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        // The upstream's `Content-Length` travels in the header fields; an exact hint here
        // would have to follow every frame through a lock.
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

impl std::fmt::Debug for DrivenBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenBody")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! Against a real upstream on loopback: a blocking HTTP/1.1 server on threads of its own,
    //! so the runtime's tasks are the pool's alone.
    use super::*;
    use crate::service::upstream::{Alpn, Upstream, UpstreamTls};
    use http_body_util::{BodyExt, Empty, Full};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::AtomicUsize;

    /// Accepts connections and answers requests by path: `/204` without content, `/close`
    /// then closes, `/chunked` in two chunks with a trailer, `/echo` with the request
    /// body's length, anything else `hello`. Counts the connections it accepted.
    fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        let (addr, accepted, _closed) = upstream_counting();
        (addr, accepted)
    }

    /// [`upstream`], also counting the connections it has closed.
    fn upstream_counting() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, gone) = (accepted.clone(), closed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let gone = gone.clone();
                std::thread::spawn(move || {
                    serve(stream);
                    gone.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, accepted, closed)
    }

    fn serve(stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split(' ').nth(1).unwrap_or("/").to_string();
            let mut length = 0usize;
            loop {
                let mut field = String::new();
                if reader.read_line(&mut field).unwrap_or(0) == 0 {
                    return;
                }
                if field == "\r\n" {
                    break;
                }
                if let Some((name, value)) = field.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let answer = match path.as_str() {
                "/204" => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
                "/close" => {
                    let _ = out.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbye",
                    );
                    return;
                }
                "/drop" => {
                    // Kept alive by the answer, closed a moment later.
                    let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngone");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
                "/chunked" => "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                     3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n"
                    .to_string(),
                "/echo" => {
                    let text = body.len().to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{text}",
                        text.len()
                    )
                }
                _ => "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello".to_string(),
            };
            if out.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }

    fn pool(addr: SocketAddr, idle_timeout: Duration) -> H1Pool {
        let upstream = Upstream::parse(&format!("http://{addr}")).unwrap();
        let connector =
            Connector::new(&upstream, &UpstreamTls::default(), Alpn::H2OrHttp1).unwrap();
        H1Pool::new(connector, 96 * 1024, 4, idle_timeout)
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        Request::get(format!("http://app.example{path}"))
            .header("host", "app.example")
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap()
    }

    async fn fetch(
        pool: &H1Pool,
        request: Request<UpstreamBody>,
    ) -> (u16, String, Option<http::HeaderMap>) {
        let response = pool
            .send(request)
            .await
            .map_err(|e| format!("{e:?}"))
            .unwrap();
        let status = response.status().as_u16();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
        (status, body, trailers)
    }

    #[tokio::test]
    async fn one_connection_carries_requests_one_after_another() {
        let (addr, accepted) = upstream();
        let pool = pool(addr, Duration::from_secs(90));
        for path in ["/", "/204", "/chunked", "/", "/204"] {
            fetch(&pool, get(path)).await;
        }
        let (status, body, trailers) = fetch(&pool, get("/chunked")).await;
        assert_eq!((status, body.as_str()), (200, "abcde"));
        assert_eq!(trailers.unwrap()["x-sum"], "5");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "every request reused the connection"
        );
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_request_body_is_sent_and_the_connection_kept() {
        let (addr, accepted) = upstream();
        let pool = pool(addr, Duration::from_secs(90));
        for size in [10usize, 200_000] {
            let request = Request::post("http://app.example/echo")
                .header("host", "app.example")
                .header("content-length", size)
                .body(
                    Full::new(Bytes::from(vec![7u8; size]))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                )
                .unwrap();
            let (status, body, _) = fetch(&pool, request).await;
            assert_eq!((status, body), (200, size.to_string()));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (addr, accepted) = upstream();
        let pool = pool(addr, Duration::from_secs(90));
        assert_eq!(fetch(&pool, get("/close")).await.1, "bye");
        assert_eq!(pool.idle(), 0, "a connection: close answer is not kept");
        assert_eq!(fetch(&pool, get("/")).await.1, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_closed_by_the_upstream_is_found_closed_when_taken() {
        let (addr, accepted, closed) = upstream_counting();
        let pool = pool(addr, Duration::from_secs(90));
        assert_eq!(fetch(&pool, get("/drop")).await.1, "gone");
        assert_eq!(pool.idle(), 1, "the answer said keep-alive");
        // Its FIN arrives while it is idle; taking it reads the end and dials afresh.
        let deadline = Instant::now() + Duration::from_secs(10);
        while closed.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the upstream never closed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fetch(&pool, get("/")).await.1, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_requests_run_without_a_task_per_connection() {
        let (addr, accepted) = upstream();
        let pool = pool(addr, Duration::from_secs(90));
        // Four response heads held at once: four connections, and no task of theirs.
        let mut heads = Vec::new();
        for _ in 0..4 {
            heads.push(
                pool.send(get("/"))
                    .await
                    .map_err(|e| format!("{e:?}"))
                    .unwrap(),
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(tasks, 0, "no connection task was spawned");
        for head in heads {
            let body = head.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello");
        }
        assert_eq!(pool.idle(), 4);
        // The sweeper is the pool's one task.
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            1
        );
    }

    /// On the origin's workers (a current-thread runtime each) a connection goes back to
    /// requests on the thread whose runtime its socket is registered with.
    #[test]
    fn on_current_thread_workers_a_connection_stays_with_its_thread() {
        let (addr, accepted) = upstream();
        let pool = pool(addr, Duration::from_secs(90));
        let on_worker = |pool: H1Pool| {
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        fetch(&pool, get("/")).await;
                        fetch(&pool, get("/")).await;
                    });
            })
            .join()
            .unwrap();
        };
        on_worker(pool.clone());
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "its two requests shared one"
        );
        on_worker(pool.clone());
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "another thread's idle connection was not taken"
        );
        assert_eq!(pool.idle(), 2);
        assert!(
            !pool.shared.sweeping.load(Ordering::Relaxed),
            "the sweeper ended with its runtime, and says so"
        );
    }

    #[tokio::test]
    async fn the_sweeper_closes_idle_connections_once_stale() {
        let (addr, accepted) = upstream();
        let pool = pool(addr, Duration::from_millis(300));
        fetch(&pool, get("/")).await;
        assert_eq!(pool.idle(), 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.idle() != 0 {
            assert!(
                Instant::now() < deadline,
                "the idle connection was never swept"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fetch(&pool, get("/")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = pool(addr, Duration::from_secs(90));
        assert!(matches!(
            pool.send(get("/")).await,
            Err(PoolError::Connect(_))
        ));
    }
}
