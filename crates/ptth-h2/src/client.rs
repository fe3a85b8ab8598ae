//! The gateway's reversed HTTP/2 client on the h2 crate directly: one driver future per
//! connection, no request channel and no task per request. The origin's reverse CONNECT
//! service channel (an ordinary client on its own TLS connection) uses it too: its
//! `connect-listen` and `connect-accept` extended CONNECTs go through [`Client::send`] with
//! their `:protocol`, and each accept's stream comes back through [`take_tunnel`].
//!
//! draft-thomson-ptth-potato §4.3: "the gateway sends the client connection preface" even
//! though it is the TLS server, so the gateway runs h2's client on the stream it accepted.
//! hyper's client puts a dispatch channel and a task of its own between the caller and h2
//! (an idle connection paid about 11 KiB of heap for them, `docs/performance.md` finding 4);
//! here the caller's future opens the stream, sends the request body while it waits for the
//! answer, and only a body still unsent when the answer arrives moves to a task of its own.
//!
//! ```text
//! Client::send ─▶ h2 SendRequest ─▶ stream ─┬─ request body: Upload (in the caller, then a task if unfinished)
//!                                            └─ response: RecvBody (releases window as read) | Tunnel (extended CONNECT)
//! drive(Connection) ─▶ h2 Connection (frames, SETTINGS, GOAWAY) + keep-alive PING with a deadline
//! ```

use crate::keep_alive::Pinger;
pub use crate::keep_alive::{ConnectionError, KeepAlive, KEEP_ALIVE};
use crate::message::{content_length, strip_connection_fields, RecvBody};
use crate::reversed::{Body, Windows, MAX_HEADER_LIST_SIZE};
use crate::tunnel::poll_window;
pub use crate::tunnel::Tunnel;
use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a connection whose driver was dropped (a stopping gateway aborts it once the
/// connection is idle) still runs to close itself: h2 sends GOAWAY(NO_ERROR) once no
/// stream and no [`Client`] is left, so the origin reads an orderly end, not a bare close.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// h2's connection half, which [`drive`] runs.
pub type Connection<IO> = h2::client::Connection<IO, Bytes>;

/// The request-sending half of a reversed HTTP/2 connection. Requests multiplex; reading
/// the origin's SETTINGS through it is exact (h2 applied them) and takes no task's lock
/// for longer than h2 itself holds it.
#[derive(Debug)]
pub struct Client {
    /// Locked only for a call that does not wait (a clone, a read of settings, a poll
    /// with a no-op waker), never across an await.
    send: Mutex<h2::client::SendRequest<Bytes>>,
    /// What h2 said when it last refused new streams: [`OPEN`], [`PEER_GOAWAY`] or
    /// [`FAILED`]. Once not open, it never opens again.
    refusing: AtomicU8,
}

/// The connection takes new streams.
const OPEN: u8 = 0;
/// The origin sent GOAWAY (RFC 9113 §6.8): no new stream, the ones below its last stream
/// ID still finish.
const PEER_GOAWAY: u8 = 1;
/// The connection failed, or the gateway's side is closing it.
const FAILED: u8 = 2;

/// How a request failed.
#[derive(Debug)]
pub enum SendError {
    /// The connection takes no new stream (GOAWAY, or it failed): nothing of the request
    /// was sent, and here it is back.
    NotSent(Box<Request<Body>>, h2::Error),
    /// The stream was opened and then failed; h2's error says whether the origin refused it
    /// unprocessed ([`refused_by_peer`]) or who else ended it.
    Sent(h2::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::NotSent(_, e) => write!(f, "the request was not sent: {e}"),
            SendError::Sent(e) => write!(f, "the request failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::NotSent(_, e) | SendError::Sent(e) => Some(e),
        }
    }
}

/// Starts the HTTP/2 client role on a stream the gateway accepted: writes the client
/// preface and SETTINGS (the windows, 64 KiB frames, [`MAX_HEADER_LIST_SIZE`], no push).
pub async fn handshake<IO>(io: IO, windows: Windows) -> Result<(Client, Connection<IO>), h2::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (send, conn) = h2::client::Builder::new()
        // RFC 9113 §6.5.2 recommends at least 100; the origin's SETTINGS replace it.
        .initial_max_send_streams(100)
        .initial_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(64 * 1024)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .enable_push(false)
        .handshake(io)
        .await?;
    Ok((
        Client {
            send: Mutex::new(send),
            refusing: AtomicU8::new(OPEN),
        },
        conn,
    ))
}

/// Runs the connection until it ends, pinging the origin every `keep_alive.interval` and
/// failing it when an answer takes longer than `keep_alive.timeout`. `Ok` is an orderly
/// end (GOAWAY with NO_ERROR, or every handle dropped).
///
/// Dropped before the end (the task aborted), it leaves the connection to a task of its
/// own for at most 10 s, so that h2 can still close it with GOAWAY once the last
/// [`Client`] is gone.
///
/// A plain struct rather than an `async fn`: an `async fn` keeps its argument and each
/// local it moves into in separate slots, and the connection (TLS state and h2's codec
/// inline) is the largest thing an idle connection holds; spawned directly, the task holds
/// it once.
pub fn drive<IO>(mut conn: Connection<IO>, keep_alive: KeepAlive) -> Driver<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Driver {
        pinger: Pinger::new(conn.ping_pong(), keep_alive),
        conn: Some(conn),
    }
}

/// The future [`drive`] returns.
pub struct Driver<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    conn: Option<Connection<IO>>,
    pinger: Pinger,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> std::fmt::Debug for Driver<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("running", &self.conn.is_some())
            .field("awaiting_pong", &self.pinger.awaiting())
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Future for Driver<IO> {
    type Output = Result<(), ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        if let Poll::Ready(end) = Pin::new(conn).poll(cx) {
            this.conn = None;
            return Poll::Ready(end.map_err(ConnectionError::H2));
        }
        match this.pinger.poll(cx) {
            Poll::Ready(lost) => {
                // Dropped without the close task: nobody answers on it any more.
                this.conn = None;
                Poll::Ready(Err(lost))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Driver<IO> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // Outside a runtime (it is shutting down) there is nobody left to tell.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
            });
        }
    }
}

impl Client {
    fn handle(&self) -> std::sync::MutexGuard<'_, h2::client::SendRequest<Bytes>> {
        // A poisoned lock only means a holder panicked; h2's handle in it is still whole.
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The origin's current SETTINGS_MAX_CONCURRENT_STREAMS as it applies to requests.
    pub fn max_send_streams(&self) -> usize {
        self.handle().current_max_send_streams()
    }

    /// Whether the origin sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 §3).
    pub fn extended_connect(&self) -> bool {
        self.handle().is_extended_connect_protocol_enabled()
    }

    /// Whether the connection takes no new stream: the origin sent GOAWAY, or the
    /// connection failed. Asks h2 (which knows as soon as the frame is read) until it says
    /// so once.
    pub fn is_refusing(&self) -> bool {
        self.refusal() != OPEN
    }

    /// Whether the origin sent GOAWAY: requests in flight below its last stream ID still
    /// finish, new ones must go elsewhere.
    pub fn peer_went_away(&self) -> bool {
        self.refusal() == PEER_GOAWAY
    }

    fn refusal(&self) -> u8 {
        let known = self.refusing.load(Ordering::Relaxed);
        if known != OPEN {
            return known;
        }
        // This handle never has a stream waiting to open (requests go out on clones), so
        // its readiness is only h2's connection error, and the poll registers no waker.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.handle().poll_ready(&mut cx) {
            Poll::Ready(Err(e)) => self.refused(&e),
            _ => OPEN,
        }
    }

    /// Records why h2 refused a new stream.
    fn refused(&self, e: &h2::Error) -> u8 {
        let why = if e.is_go_away() && e.is_remote() {
            PEER_GOAWAY
        } else {
            FAILED
        };
        let _ = self
            .refusing
            .compare_exchange(OPEN, why, Ordering::Relaxed, Ordering::Relaxed);
        self.refusing.load(Ordering::Relaxed)
    }

    /// Sends `req` on a new stream and returns the origin's response head, its body
    /// streaming as the caller reads it. The request body is sent under flow control, its
    /// trailers last. A 2xx answer to a CONNECT (RFC 8441 extended CONNECT) carries the
    /// stream as a [`Tunnel`] ([`take_tunnel`]) and an empty body; the request's body is not
    /// sent (the stream is the tunnel). An extended CONNECT's `:protocol` is the request's
    /// `hyper::ext::Protocol` extension (or h2's own), whatever its token: the gateway's
    /// setup and the origin's `connect-listen` / `connect-accept` alike.
    ///
    /// Nothing here waits without a bound the peer alone sets: h2 opens the stream at once
    /// or queues it until the origin's stream limit admits it, and a dead origin fails the
    /// connection through the keep-alive deadline of [`drive`], failing its streams.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, SendError> {
        let ready = self.handle().clone().ready();
        let mut send = match ready.await {
            Ok(send) => send,
            Err(e) => {
                self.refused(&e);
                return Err(SendError::NotSent(Box::new(req), e));
            }
        };
        let (mut head, body) = req.into_parts();
        strip_connection_fields(&mut head.headers);
        let is_connect = head.method == Method::CONNECT;
        if !is_connect {
            if let Some(len) = body.size_hint().exact() {
                if len != 0 || has_payload_semantics(&head.method) {
                    head.headers
                        .entry(header::CONTENT_LENGTH)
                        .or_insert_with(|| HeaderValue::from(len));
                }
            }
        }
        // RFC 8441 §4: `:protocol` goes out as h2's extension.
        if let Some(p) = head.extensions.remove::<hyper::ext::Protocol>() {
            head.extensions.insert(h2::ext::Protocol::from(p.as_str()));
        }
        let eos = is_connect || body.is_end_stream();
        let (mut answer, stream) = send
            .send_request(Request::from_parts(head, ()), !is_connect && eos)
            .map_err(SendError::Sent)?;
        drop(send);
        if is_connect {
            let res = answer.await.map_err(SendError::Sent)?;
            return Ok(connect_answer(res, stream));
        }
        let mut upload = (!eos).then(|| Upload::new(body, stream));
        let res = std::future::poll_fn(|cx| {
            if let Some(up) = upload.as_mut() {
                if up.poll(cx).is_ready() {
                    upload = None;
                }
            }
            Pin::new(&mut answer).poll(cx)
        })
        .await;
        if let Some(up) = upload {
            // The answer came first (the origin answers while it still reads the body, or
            // a duplex exchange): the body goes on in a task of its own.
            tokio::spawn(UploadTask(up));
        }
        let res = res.map_err(SendError::Sent)?;
        let remaining = content_length(res.headers());
        Ok(res.map(|recv| http_body_util::BodyExt::boxed_unsync(RecvBody::new(recv, remaining))))
    }
}

/// What a CONNECT's answer becomes: a 2xx carries the stream as a [`Tunnel`]; anything else
/// is an ordinary answer whose body is read as usual (the send half is reset by h2 once
/// dropped, RFC 9113 §8.5).
fn connect_answer(res: Response<RecvStream>, send: SendStream<Bytes>) -> Response<Body> {
    let remaining = content_length(res.headers());
    let (mut parts, recv) = res.into_parts();
    if parts.status.is_success() {
        parts
            .extensions
            .insert(TunnelSlot(Arc::new(Mutex::new(Some(Tunnel::new(
                send, recv,
            ))))));
        let empty =
            http_body_util::BodyExt::map_err(http_body_util::Empty::new(), |never| match never {});
        return Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(empty));
    }
    drop(send);
    let body = RecvBody::new(recv, remaining);
    Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
}

/// Takes the tunnel out of a 2xx answer to an extended CONNECT sent by [`Client::send`].
pub fn take_tunnel<B>(res: &mut Response<B>) -> Option<Tunnel> {
    let slot = res.extensions_mut().remove::<TunnelSlot>()?;
    let tunnel = slot.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    tunnel
}

/// Carries a [`Tunnel`] in a response's extensions (which must be `Clone`).
#[derive(Clone)]
struct TunnelSlot(Arc<Mutex<Option<Tunnel>>>);

/// RFC 9110 §8.6: a user agent "SHOULD send Content-Length in a request when the method
/// defines a meaning for enclosed content", even when it is empty.
fn has_payload_semantics(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET
            | Method::HEAD
            | Method::DELETE
            | Method::CONNECT
            | Method::OPTIONS
            | Method::TRACE
    )
}

/// A request body on its way out: each data frame sent as the stream's flow-control
/// window admits it (RFC 9113 §5.2), then the trailers or an empty END_STREAM.
struct Upload {
    body: Body,
    stream: SendStream<Bytes>,
    /// Data read from the body and not yet sent.
    pending: Bytes,
    /// The body said it ended with `pending`: its last octets carry END_STREAM. A separate
    /// empty DATA frame would reach an echoing origin as an empty chunk, which hyper's
    /// server sends back as an empty DATA frame without END_STREAM, and h2 allows a peer
    /// only 100 of those per connection (its `too_many_data_frames` defence).
    last: bool,
}

impl Upload {
    fn new(body: Body, stream: SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            pending: Bytes::new(),
            last: false,
        }
    }

    /// Ready when the body is all sent, or the stream ended (the origin reset it, the
    /// connection failed) or the public body failed (the stream is then reset).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.pending.is_empty() {
                match poll_window(&mut self.stream, self.pending.len(), cx) {
                    Poll::Ready(Some(n)) => {
                        let chunk = self.pending.split_to(n.min(self.pending.len()));
                        let end = self.last && self.pending.is_empty();
                        if self.stream.send_data(chunk, end).is_err() || end {
                            return Poll::Ready(());
                        }
                        continue;
                    }
                    Poll::Ready(None) => return Poll::Ready(()),
                    Poll::Pending => return self.poll_reset(cx),
                }
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        self.pending = data.copy_to_bytes(data.remaining());
                        self.last = self.body.is_end_stream();
                        if self.pending.is_empty() && self.last {
                            let _ = self.stream.send_data(Bytes::new(), true);
                            return Poll::Ready(());
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let _ = self.stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Poll::Ready(None) => {
                    let _ = self.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                Poll::Ready(Some(Err(e))) => {
                    // The public client's body failed: the origin must not take a
                    // truncated body for a whole one (RFC 9113 §8.1.1).
                    tracing::debug!(error = %e, "request body failed; resetting the stream");
                    self.stream.send_reset(Reason::CANCEL);
                    return Poll::Ready(());
                }
                Poll::Pending => return self.poll_reset(cx),
            }
        }
    }

    /// While waiting, an origin's RST_STREAM (or a failed connection) ends the upload.
    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.stream.poll_reset(cx).map(|_| ())
    }
}

/// An upload that outlived its request's answer, in a task of its own.
struct UploadTask(Upload);

impl Future for UploadTask {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.poll(cx)
    }
}

/// Whether an HTTP/2 request failed because the origin refused its stream unprocessed.
///
/// h2 fails a stream with the peer's GOAWAY only when the stream's ID is above the frame's
/// last stream ID (and a request it had not opened when the first GOAWAY arrived), so
/// "GOAWAY from the peer" on a stream is RFC 9113 §6.8's "were not processed", whatever its
/// error code. A RST_STREAM from the peer is a refusal only with REFUSED_STREAM (§8.7: "the
/// stream was closed prior to any processing"); any other code, or an error h2 raised
/// itself, may follow processing.
pub fn refused_by_peer(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(Reason::REFUSED_STREAM)));
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    //! The client against hyper's server (as `ptth-origin` runs it) and against h2's own
    //! server where a test needs an origin hyper will not play (refusing a stream).
    use super::*;
    use crate::reversed::BoxError;
    use crate::reversed::{serve, ServeOptions};
    use http::header::{HeaderMap, HeaderName};
    use http_body::Frame;
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(30);

    fn empty() -> Body {
        Empty::new().map_err(|n| match n {}).boxed_unsync()
    }

    /// A body of ready frames, in order.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// A body of `data` in `chunk`-sized frames, then `trailers` if any.
    fn body_of(data: &[u8], chunk: usize, trailers: Option<HeaderMap>) -> Body {
        let mut frames: std::collections::VecDeque<Frame<Bytes>> = data
            .chunks(chunk)
            .map(|c| Frame::data(Bytes::copy_from_slice(c)))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Frames(frames).boxed_unsync()
    }

    /// The gateway's client over a pipe to hyper's server running `app`, driven.
    async fn pair<S, B>(app: S, options: ServeOptions, windows: Windows) -> Client
    where
        S: hyper::service::HttpService<Incoming, ResBody = B> + Send + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let (gateway_io, origin_io) = tokio::io::duplex(256 * 1024);
        tokio::spawn(serve(origin_io, app, options));
        let (client, conn) = handshake(gateway_io, windows).await.unwrap();
        tokio::spawn(drive(conn, KEEP_ALIVE));
        client
    }

    fn small() -> Windows {
        // RFC 9113 §6.9.2: the initial window is 65 535 octets.
        Windows {
            stream: 65_535,
            connection: 65_535,
        }
    }

    /// 8 MiB up and the same 8 MiB back as the origin reads it, through 64 KiB windows on
    /// both sides: the upload must wait for the origin's WINDOW_UPDATEs, and the download
    /// goes on only as the gateway gives window back while reading. The origin answers
    /// before the upload ends, so the rest of the upload runs in its own task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_body_flows_both_ways_under_small_windows() {
        let echo = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            Ok::<_, std::convert::Infallible>(http::Response::new(req.into_body()))
        });
        let options = ServeOptions {
            windows: small(),
            ..ServeOptions::default()
        };
        let client = pair(echo, options, small()).await;
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let req = Request::post("https://app.example/echo")
            .body(body_of(&data, 16 * 1024, None))
            .unwrap();
        let back = tokio::time::timeout(DEADLINE, async {
            let res = client.send(req).await.unwrap();
            assert_eq!(res.status(), http::StatusCode::OK);
            res.into_body().collect().await.unwrap().to_bytes()
        })
        .await
        .expect("8 MiB did not make the round trip in 30 s");
        assert_eq!(back.len(), data.len());
        assert!(back[..] == data[..], "the echo differs");
    }

    /// A body that knows its end sends END_STREAM on its last DATA frame, not on an extra
    /// empty one (which an echoing hyper origin returns as an empty DATA frame, and h2 ends
    /// a connection after 100 of those).
    #[tokio::test]
    async fn the_last_data_frame_carries_end_stream() {
        let (gateway_io, origin_io) = tokio::io::duplex(64 * 1024);
        let origin = tokio::spawn(async move {
            let mut conn = h2::server::handshake(origin_io).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let _serve = tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = req.into_body();
            let mut chunks = Vec::new();
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                let _ = body.flow_control().release_capacity(data.len());
                chunks.push(data.len());
            }
            respond
                .send_response(http::Response::new(()), true)
                .unwrap();
            chunks
        });
        let (client, conn) = handshake(gateway_io, Windows::default()).await.unwrap();
        tokio::spawn(drive(conn, KEEP_ALIVE));
        let body = http_body_util::Full::new(Bytes::from(vec![1u8; 1000]))
            .map_err(|n| match n {})
            .boxed_unsync();
        let req = Request::post("https://app.example/").body(body).unwrap();
        let res = tokio::time::timeout(DEADLINE, client.send(req))
            .await
            .unwrap();
        assert_eq!(res.unwrap().status(), http::StatusCode::OK);
        let chunks = tokio::time::timeout(DEADLINE, origin)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(chunks, vec![1000], "DATA payloads the origin read");
    }

    /// Trailers go out after the request's data (the origin sees them) and come back after
    /// the response's.
    #[tokio::test]
    async fn trailers_pass_both_ways() {
        let app = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
            let got = req.into_body().collect().await.unwrap();
            let sum = got
                .trailers()
                .and_then(|t| t.get("x-sum"))
                .cloned()
                .unwrap_or(HeaderValue::from_static("none"));
            let len = got.to_bytes().len();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-seen-sum", sum);
            trailers.insert("x-seen-len", HeaderValue::from(len));
            let body = Frames(
                [
                    Frame::data(Bytes::from_static(b"ok")),
                    Frame::trailers(trailers),
                ]
                .into(),
            );
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        let client = pair(app, ServeOptions::default(), Windows::default()).await;
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("1234"));
        let req = Request::post("https://app.example/t")
            .header(header::TE, "trailers")
            .body(body_of(&[7u8; 100_000], 10_000, Some(trailers)))
            .unwrap();
        let res = tokio::time::timeout(DEADLINE, async {
            client
                .send(req)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
        })
        .await
        .unwrap();
        let t = res.trailers().cloned().expect("no trailers came back");
        assert_eq!(res.to_bytes(), "ok");
        assert_eq!(t["x-seen-sum"], "1234");
        assert_eq!(t["x-seen-len"], "100000");
    }

    /// An origin that refuses a stream with REFUSED_STREAM (RFC 9113 §8.7) did not process
    /// it: the error says so, and another reset code does not.
    #[tokio::test]
    async fn a_refused_stream_reads_as_refused_and_another_reset_does_not() {
        let (gateway_io, origin_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(origin_io).await.unwrap();
            let mut n = 0;
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                n += 1;
                respond.send_reset(if n == 1 {
                    Reason::REFUSED_STREAM
                } else {
                    Reason::INTERNAL_ERROR
                });
            }
        });
        let (client, conn) = handshake(gateway_io, Windows::default()).await.unwrap();
        tokio::spawn(drive(conn, KEEP_ALIVE));
        let get = || Request::get("https://app.example/").body(empty()).unwrap();
        match client.send(get()).await {
            Err(SendError::Sent(e)) => assert!(refused_by_peer(&e), "{e}"),
            other => panic!("not refused: {other:?}"),
        }
        match client.send(get()).await {
            Err(SendError::Sent(e)) => assert!(!refused_by_peer(&e), "{e}"),
            other => panic!("not failed: {other:?}"),
        }
    }

    /// The origin's GOAWAY (RFC 9113 §6.8) is seen without a request going out; a new
    /// request is then handed back unsent and whole, while the one in flight still gets
    /// its answer and the connection then ends in order.
    #[tokio::test]
    async fn after_goaway_new_requests_come_back_unsent_and_the_one_in_flight_finishes() {
        let (gateway_io, origin_io) = tokio::io::duplex(64 * 1024);
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(origin_io).await.unwrap();
            let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
            conn.graceful_shutdown();
            let serve = async { while conn.accept().await.is_some() {} };
            let answer = async move {
                let _ = answer_rx.await;
                respond
                    .send_response(http::Response::new(()), true)
                    .unwrap();
            };
            tokio::join!(serve, answer);
        });
        let (client, conn) = handshake(gateway_io, Windows::default()).await.unwrap();
        let driven = tokio::spawn(drive(conn, KEEP_ALIVE));
        let client = Arc::new(client);
        let get = |path: &str| {
            Request::get(format!("https://app.example{path}"))
                .body(empty())
                .unwrap()
        };
        let c = client.clone();
        let first = tokio::spawn(async move { c.send(get("/first")).await.map(|r| r.status()) });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !client.peer_went_away() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "GOAWAY unseen in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(client.is_refusing());
        match client.send(get("/again")).await {
            Err(SendError::NotSent(req, _)) => assert_eq!(req.uri().path(), "/again"),
            other => panic!("not handed back: {other:?}"),
        }
        answer_tx.send(()).unwrap();
        let status = tokio::time::timeout(DEADLINE, first)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.unwrap(), http::StatusCode::OK);
        drop(client);
        let outcome = tokio::time::timeout(DEADLINE, driven)
            .await
            .unwrap()
            .unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }

    /// RFC 8441: CONNECT with `:protocol` reaches hyper's server, whose 200 makes the
    /// stream a tunnel; bytes cross it both ways and a shutdown ends the origin's reading.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_extended_connect_stream_carries_bytes_both_ways() {
        let app = hyper::service::service_fn(|mut req: http::Request<Incoming>| async move {
            let protocol = req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_owned());
            let mut res = http::Response::new(Empty::<Bytes>::new());
            if req.method() != Method::CONNECT || protocol.as_deref() != Some("websocket") {
                *res.status_mut() = http::StatusCode::BAD_REQUEST;
                return Ok::<_, std::convert::Infallible>(res);
            }
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = hyper_util::rt::TokioIo::new(on.await.unwrap());
                let mut got = Vec::new();
                io.read_to_end(&mut got).await.unwrap();
                got.reverse();
                io.write_all(&got).await.unwrap();
                io.shutdown().await.unwrap();
            });
            Ok(res)
        });
        let client = pair(app, ServeOptions::default(), Windows::default()).await;
        let mut req = Request::connect("https://app.example/chat")
            .body(empty())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let mut res = client.send(req).await.unwrap();
        assert_eq!(res.status(), http::StatusCode::OK);
        let mut tunnel = take_tunnel(&mut res).expect("a 2xx carries the tunnel");
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let got = tokio::time::timeout(DEADLINE, async {
            tunnel.write_all(&sent).await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut got = Vec::new();
            tunnel.read_to_end(&mut got).await.unwrap();
            got
        })
        .await
        .expect("the tunnel stalled");
        let mut expected = sent.clone();
        expected.reverse();
        assert!(got == expected, "{} octets back", got.len());
    }

    /// An origin that reads everything and answers no PING is lost after the keep-alive
    /// deadline; one that answers stays.
    #[tokio::test]
    async fn an_unanswered_ping_ends_the_connection() {
        let keep_alive = KeepAlive {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(100),
        };
        // A mute origin: its SETTINGS, then it only reads.
        let (gateway_io, mut origin_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            origin_io
                .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            let mut sink = [0u8; 4096];
            while origin_io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let (_client, conn) = handshake(gateway_io, Windows::default()).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), drive(conn, keep_alive))
            .await
            .expect("the connection outlived its keep-alive deadline");
        assert!(
            matches!(outcome, Err(ConnectionError::KeepAliveTimeout(_))),
            "{outcome:?}"
        );

        // hyper's server answers PINGs: the connection lives past several deadlines.
        let app = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
        });
        let (gateway_io, origin_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(origin_io, app, ServeOptions::default()));
        let (_client, conn) = handshake(gateway_io, Windows::default()).await.unwrap();
        let alive = tokio::time::timeout(Duration::from_millis(800), drive(conn, keep_alive)).await;
        assert!(alive.is_err(), "ended: {alive:?}");
    }

    #[test]
    fn connection_fields_are_stripped_and_te_kept_only_as_trailers() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-hop"),
            ("keep-alive", "5"),
            ("x-hop", "1"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("x-kept", "1"),
        ] {
            h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_connection_fields(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "1");
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_connection_fields(&mut h);
        assert_eq!(h[header::TE], "trailers");
        // Each alone is found too (the look over the names before any removal).
        for n in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "upgrade",
            "transfer-encoding",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.insert(HeaderName::from_static(n), HeaderValue::from_static("x"));
            strip_connection_fields(&mut h);
            assert_eq!(h.len(), 1, "{n}: {h:?}");
        }
    }
}
