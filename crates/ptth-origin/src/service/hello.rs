//! The built-in demo service (`ptth-origin --hello`): endpoints that exercise streaming, trailers, SSE and WebSockets.
//!
//! Every endpoint streams: request bodies are hashed or echoed frame by frame and generated
//! bodies are produced lazily, so the end-to-end tests can push large transfers through a
//! gateway and check them by hash without either side holding the whole body.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /` | HTML page showing the method, path, `Host`, `Via` and `Forwarded` it received |
//! | `GET /app` | HTML page whose script fetches `/bytes/1000`, reads three events of `/sse` and echoes a message over `/ws`, writing what it saw into the page (the browser test reads it) |
//! | `/echo` | `{"bytes":N,"sha256":"..","trailers":{..}}` of the request body |
//! | `/echo-body` | the request body and trailers, streamed back |
//! | `GET /bytes/{n}` | `n` bytes where byte `i` is `i % 251`, in 64 KiB chunks |
//! | `GET /sse?n=5&interval_ms=100` | `n` server-sent events |
//! | `GET /trailers` | `hello trailers` followed by gRPC-style trailers |
//! | `/ws` | WebSocket echo, over HTTP/1.1 Upgrade or HTTP/2 and HTTP/3 extended CONNECT |
//! | `GET /status/{code}` | an empty answer with that status |
//! | `GET /slow?ms=N` | an answer after `N` milliseconds |

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::websocket::{on_upgrade, spawn_echo, Handshake};
use super::{empty, full, sync_boxed, text_response, Body, BoxError, Refusal, ResponseFuture};

/// The largest body `/bytes/{n}` will generate.
pub const MAX_BYTES: u64 = 16 << 30;

/// The size of each chunk `/bytes/{n}` sends.
pub const BYTES_CHUNK: usize = 64 * 1024;

/// The period of the `/bytes/{n}` pattern; a prime, so chunk boundaries never line up with it.
const PATTERN_PERIOD: usize = 251;

/// The most events `/sse` will send, so a request cannot hold a stream open without bound.
pub const MAX_SSE_EVENTS: u64 = 10_000;

/// The longest pause between `/sse` events and the longest `/slow` delay.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The built-in demo service. See the module docs for its endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hello;

impl Hello {
    /// The demo service.
    #[must_use]
    pub fn new() -> Self {
        Hello
    }
}

impl<B> tower::Service<Request<B>> for Hello
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(async move { Ok(route(request).await) })
    }
}

async fn route<B>(mut request: Request<B>) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let method = request.method().clone();

    // The body-consuming and upgrading endpoints accept any method; the rest are GET-only.
    match path.as_str() {
        "/echo" => return echo(request.into_body()).await,
        "/echo-body" => {
            // hyper's HTTP/1.1 writer only sends trailers the `Trailer` field announced, so
            // the announcement the request carried is repeated on the response.
            let announced: Vec<HeaderValue> = request
                .headers()
                .get_all(http::header::TRAILER)
                .iter()
                .cloned()
                .collect();
            let mut response = echo_body(request.into_body());
            for value in announced {
                response.headers_mut().append(http::header::TRAILER, value);
            }
            return response;
        }
        "/ws" => {
            return match Handshake::from_request(&request) {
                Ok(handshake) => {
                    spawn_echo(on_upgrade(&mut request));
                    handshake.response()
                }
                Err(error) => error.response(),
            }
        }
        _ => {}
    }

    let known = path == "/"
        || path == "/app"
        || path == "/sse"
        || path == "/trailers"
        || path == "/slow"
        || path.starts_with("/bytes/")
        || path.starts_with("/status/");
    if !known {
        return text_response(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} only answers GET"),
        );
        response
            .headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }

    if path == "/" {
        return index(&request);
    }
    if path == "/app" {
        let mut response = Response::new(full(APP_PAGE));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return response;
    }
    if path == "/sse" {
        return sse(&query);
    }
    if path == "/trailers" {
        return trailers();
    }
    if path == "/slow" {
        return slow(&query).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return bytes(n);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return status(code);
    }
    text_response(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"))
}

/// `GET /app`: a page that uses what a browser application uses through a gateway (a
/// fetch, an `EventSource`, a `WebSocket`) and writes each result into an element of its
/// own, then `done` into `#done`.
const APP_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ptth app check</title></head>
<body>
<p>fetch: <span id="fetch">pending</span></p>
<p>sse: <span id="sse">pending</span></p>
<p>ws: <span id="ws">pending</span></p>
<p>protocol: <span id="proto">pending</span></p>
<p id="done"></p>
<script>
const out = (id, text) => { document.getElementById(id).textContent = text; };
const within = (ms, what) => new Promise(r => setTimeout(() => r(what + " timed out"), ms));
async function checkFetch() {
  const r = await fetch("/bytes/1000");
  const b = new Uint8Array(await r.arrayBuffer());
  return "status " + r.status + " bytes " + b.length + " last " + b[999];
}
function checkSse() {
  return new Promise(resolve => {
    const es = new EventSource("/sse?n=3&interval_ms=50");
    const got = [];
    es.onmessage = e => {
      got.push(e.data);
      if (got.length === 3) { es.close(); resolve("events " + got.join("|")); }
    };
    es.onerror = () => { if (got.length < 3) { es.close(); resolve("error after " + got.length); } };
  });
}
function checkWs() {
  return new Promise(resolve => {
    const ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws");
    ws.onopen = () => ws.send("ping from the browser");
    ws.onmessage = e => { resolve("echo " + e.data); ws.close(); };
    ws.onerror = () => resolve("error");
  });
}
async function run() {
  for (const [id, check] of [["fetch", checkFetch], ["sse", checkSse], ["ws", checkWs]]) {
    try { out(id, await Promise.race([check(), within(15000, id)])); }
    catch (e) { out(id, "error " + e); }
  }
  const nav = performance.getEntriesByType("navigation")[0];
  out("proto", (nav && nav.nextHopProtocol) || "unknown");
  out("done", "done");
}
run();
</script>
</body></html>
"#;

/// `GET /`: shows what the request looked like on arrival, so a demo can see what the
/// gateway added (`Via`, `Forwarded`) and that `Host` survived the trip.
fn index<B>(request: &Request<B>) -> Response<Body> {
    let headers = request.headers();
    let host = request
        .headers()
        .get(HOST)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .or_else(|| request.uri().authority().map(ToString::to_string))
        .unwrap_or_default();
    let via = header_values(headers, &http::header::VIA);
    let forwarded = header_values(headers, &http::header::FORWARDED);

    let mut page = String::from(
        "<!doctype html>\n<html>\n<head><meta charset=\"utf-8\"><title>ptth hello</title></head>\n\
         <body>\n<h1>ptth hello</h1>\n<p>This page was served by a PTTH origin over a reversed connection.</p>\n<dl>\n",
    );
    for (name, value) in [
        ("Method", request.method().as_str().to_owned()),
        ("Path", request.uri().path().to_owned()),
        ("Host", host),
        ("Via", via),
        ("Forwarded", forwarded),
    ] {
        // Writing to a String cannot fail.
        let _ = writeln!(
            page,
            "<dt>{name}</dt><dd id=\"{}\">{}</dd>",
            name.to_ascii_lowercase(),
            html_escape(&value)
        );
    }
    page.push_str("</dl>\n</body>\n</html>\n");

    let mut response = Response::new(full(page));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// All values of `name`, joined the way a list header may be folded.
fn header_values(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/echo`: hashes the body frame by frame, so its size is bounded only by the client.
async fn echo<B>(body: B) -> Response<Body>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = pin!(body);
    let mut hasher = Sha256::new();
    let mut length: u64 = 0;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                let error: BoxError = error.into();
                return text_response(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed: {error}"),
                );
            }
        };
        match frame.into_data() {
            Ok(data) => {
                hasher.update(&data);
                length += data.len() as u64;
            }
            Err(frame) => {
                if let Ok(frame_trailers) = frame.into_trailers() {
                    trailers
                        .get_or_insert_with(HeaderMap::new)
                        .extend(frame_trailers);
                }
            }
        }
    }

    let mut json = format!(
        "{{\"bytes\":{length},\"sha256\":\"{}\"",
        hex(&hasher.finalize())
    );
    if let Some(trailers) = trailers {
        json.push_str(",\"trailers\":{");
        for (index, name) in trailers.keys().enumerate() {
            if index > 0 {
                json.push(',');
            }
            let value = header_values(&trailers, name);
            json.push_str(&json_string(name.as_str()));
            json.push(':');
            json.push_str(&json_string(&value));
        }
        json.push('}');
    }
    json.push_str("}\n");

    let mut response = Response::new(full(json));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// `/echo-body`: the request body becomes the response body frame for frame, trailers included.
fn echo_body<B>(body: B) -> Response<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut response = Response::new(sync_boxed(body));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `GET /bytes/{n}`.
fn bytes(n: &str) -> Response<Body> {
    let Ok(length) = n.parse::<u64>() else {
        return text_response(
            StatusCode::BAD_REQUEST,
            format!("/bytes/{{n}} needs a decimal byte count, not {n:?}"),
        );
    };
    if length > MAX_BYTES {
        return text_response(
            StatusCode::BAD_REQUEST,
            format!("/bytes/{{n}} serves at most {MAX_BYTES} bytes"),
        );
    }
    let mut response = Response::new(PatternBody::new(length).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// The SHA-256 (lowercase hex) of the first `n` bytes of the `/bytes/{n}` pattern, computed
/// chunk by chunk so tests can check large downloads without holding them.
#[must_use]
pub fn pattern_sha256(n: u64) -> String {
    let mut body = PatternBody::new(n);
    let mut hasher = Sha256::new();
    while let Some(chunk) = body.next_chunk() {
        hasher.update(&chunk);
    }
    hex(&hasher.finalize())
}

/// The `/bytes/{n}` body: chunks are cut from one shared block, so nothing is allocated per
/// request and any length up to [`MAX_BYTES`] costs only time.
#[derive(Debug)]
struct PatternBody {
    offset: u64,
    remaining: u64,
}

impl PatternBody {
    fn new(length: u64) -> Self {
        PatternBody {
            offset: 0,
            remaining: length,
        }
    }

    /// A block one chunk plus one period long: every chunk, whatever its phase in the
    /// pattern, is a slice of it.
    fn block() -> &'static Bytes {
        static BLOCK: OnceLock<Bytes> = OnceLock::new();
        BLOCK.get_or_init(|| {
            (0..BYTES_CHUNK + PATTERN_PERIOD)
                .map(|i| (i % PATTERN_PERIOD) as u8)
                .collect::<Vec<u8>>()
                .into()
        })
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        // Both values are below BYTES_CHUNK and PATTERN_PERIOD, so the casts cannot truncate.
        let length = self.remaining.min(BYTES_CHUNK as u64) as usize;
        let phase = (self.offset % PATTERN_PERIOD as u64) as usize;
        self.offset += length as u64;
        self.remaining -= length as u64;
        Some(Self::block().slice(phase..phase + length))
    }
}

impl HttpBody for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(
            self.get_mut()
                .next_chunk()
                .map(|chunk| Ok(Frame::data(chunk))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// `GET /sse?n=5&interval_ms=100`.
fn sse(query: &str) -> Response<Body> {
    let count = match query_number(query, "n", 5, MAX_SSE_EVENTS) {
        Ok(count) => count,
        Err(refusal) => return refusal.into_response(),
    };
    let interval_ms = match query_number(query, "interval_ms", 100, max_delay_ms()) {
        Ok(ms) => ms,
        Err(refusal) => return refusal.into_response(),
    };
    let body = SseBody {
        sent: 0,
        count,
        interval: Duration::from_millis(interval_ms),
        pause: None,
    };
    let mut response = Response::new(sync_boxed(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    // Intermediaries must not cache or hold back an event stream.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Sends `count` events, the first at once and each later one `interval` after the previous.
struct SseBody {
    sent: u64,
    count: u64,
    interval: Duration,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl HttpBody for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.sent == this.count {
            return Poll::Ready(None);
        }
        if let Some(pause) = this.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        let event = format!("data: event {}\n\n", this.sent);
        this.sent += 1;
        if this.sent < this.count {
            this.pause = Some(Box::pin(tokio::time::sleep(this.interval)));
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.count
    }
}

/// `GET /trailers`: a fixed body followed by gRPC-style trailers, one of which depends on
/// the body, so a test can tell that trailers arrived intact and belong to this response.
fn trailers() -> Response<Body> {
    const BODY: &str = "hello trailers";
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    // A hex digest is always a valid header value.
    if let Ok(checksum) = HeaderValue::from_str(&hex(&Sha256::digest(BODY))) {
        trailers.insert("x-checksum", checksum);
    }
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from_static(BODY.as_bytes()))),
        Ok(Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let mut response = Response::new(body.boxed());
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // HTTP/1.1 clients learn from `Trailer` which fields to expect after the body.
    headers.insert(
        http::header::TRAILER,
        HeaderValue::from_static("grpc-status, grpc-message, x-checksum"),
    );
    response
}

/// `GET /status/{code}`.
fn status(code: &str) -> Response<Body> {
    // Informational codes are not final answers, so they cannot be sent as one.
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok());
    let Some(status) = status else {
        return text_response(
            StatusCode::BAD_REQUEST,
            format!("/status/{{code}} needs a status from 200 to 599, not {code:?}"),
        );
    };
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    response
}

/// `GET /slow?ms=N`: lets tests provoke timeouts with a request that is otherwise ordinary.
async fn slow(query: &str) -> Response<Body> {
    let ms = match query_number(query, "ms", 1000, max_delay_ms()) {
        Ok(ms) => ms,
        Err(refusal) => return refusal.into_response(),
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    text_response(StatusCode::OK, format!("slept {ms} ms"))
}

fn max_delay_ms() -> u64 {
    MAX_DELAY.as_secs() * 1000
}

/// Reads the decimal query parameter `name`, answering `400` if it is malformed or above `max`.
fn query_number(query: &str, name: &str, default: u64, max: u64) -> Result<u64, Refusal> {
    let raw = query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value);
    let Some(raw) = raw else {
        return Ok(default);
    };
    match raw.parse::<u64>() {
        Ok(value) if value <= max => Ok(value),
        _ => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("query parameter {name} must be a whole number up to {max}, not {raw:?}"),
        )),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON string literal for `text`; trailer values come from the peer, so everything a
/// JSON string cannot hold raw is escaped.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::test_support::{check_echo, connect_h2_websocket, serve, Server};
    use http_body_util::{Full, StreamBody};
    use tower::ServiceExt;

    async fn get(path: &str) -> Response<Body> {
        let request = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        Hello.oneshot(request).await.unwrap()
    }

    async fn text(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn naive_pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn index_shows_request_and_escapes_headers() {
        let request = Request::get("/")
            .header(HOST, "<evil>.example")
            .header("via", "1.1 ptth-gateway")
            .header("forwarded", "for=\"[::1]\";proto=https")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = Hello.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let page = text(response).await;
        assert!(page.contains("<title>ptth hello</title>"));
        assert!(page.contains("&lt;evil&gt;.example"));
        assert!(!page.contains("<evil>"));
        assert!(page.contains("1.1 ptth-gateway"));
        assert!(page.contains("for=&quot;[::1]&quot;;proto=https"));
        assert!(page.contains("<dd id=\"method\">GET</dd>"));
    }

    #[tokio::test]
    async fn echo_hashes_one_mebibyte_in_chunks() {
        let data: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
        let expected = hex(&Sha256::digest(&data));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = data
            .chunks(10_000)
            .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .collect();
        let request = Request::post("/echo")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let response = Hello.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            text(response).await,
            format!("{{\"bytes\":1048576,\"sha256\":\"{expected}\"}}\n")
        );
    }

    #[tokio::test]
    async fn echo_reports_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("a\"b"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Ok(Frame::trailers(trailers)),
        ];
        let request = Request::put("/echo")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let body = text(Hello.oneshot(request).await.unwrap()).await;
        assert_eq!(
            body,
            "{\"bytes\":3,\"sha256\":\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\",\"trailers\":{\"x-sum\":\"a\\\"b\"}}\n"
        );
    }

    /// A request body the test holds open: frames go in through the sender, and the body ends
    /// only when the sender is dropped.
    fn held_body() -> (
        tokio::sync::mpsc::Sender<Frame<Bytes>>,
        impl HttpBody<Data = Bytes, Error = Infallible> + Send + Unpin + 'static,
    ) {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let frames = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let frame = receiver.recv().await?;
            Some((Ok(frame), receiver))
        });
        (sender, StreamBody::new(Box::pin(frames)))
    }

    /// The first frame of `body`, within 10 s.
    async fn next_data(body: &mut Body) -> Bytes {
        tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("no frame within 10 s: the body is not streamed")
            .expect("the body ended")
            .expect("the body failed")
            .into_data()
            .expect("a data frame")
    }

    #[tokio::test]
    async fn echo_body_streams_back_with_trailers() {
        // The request body stays open until the test has seen its first frame come back, so a
        // service that read the whole body before answering would never answer.
        let (sender, request_body) = held_body();
        let request = Request::post("/echo-body")
            .header(http::header::TRAILER, "x-end")
            .body(request_body)
            .unwrap();
        let response = tokio::spawn(Hello.oneshot(request));
        sender
            .send(Frame::data(Bytes::from_static(b"one ")))
            .await
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("no answer while the request body is open")
            .unwrap()
            .unwrap();
        assert_eq!(response.headers()[http::header::TRAILER], "x-end");
        let mut body = response.into_body();
        assert_eq!(next_data(&mut body).await, "one ");
        sender
            .send(Frame::data(Bytes::from_static(b"two")))
            .await
            .unwrap();
        assert_eq!(next_data(&mut body).await, "two");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-end", HeaderValue::from_static("yes"));
        sender
            .send(Frame::trailers(trailers.clone()))
            .await
            .unwrap();
        drop(sender);
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert!(collected.to_bytes().is_empty());
    }

    #[tokio::test]
    async fn bytes_follows_the_pattern() {
        let n = 3 * BYTES_CHUNK + 1000;
        let response = get(&format!("/bytes/{n}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_LENGTH], n.to_string().as_str());
        let mut body = response.into_body();
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= BYTES_CHUNK);
            received.extend_from_slice(&data);
        }
        assert_eq!(received, naive_pattern(n));
        assert_eq!(
            pattern_sha256(n as u64),
            hex(&Sha256::digest(naive_pattern(n)))
        );
        assert_eq!(text(get("/bytes/0").await).await, "");
    }

    #[tokio::test]
    async fn bytes_streams_100_mib_lazily() {
        let n: u64 = 100 << 20;
        let response = get(&format!("/bytes/{n}")).await;
        assert_eq!(response.body().size_hint().exact(), Some(n));
        let mut body = response.into_body();
        let mut hasher = Sha256::new();
        let mut length = 0u64;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            length += data.len() as u64;
            hasher.update(&data);
        }
        assert_eq!(length, n);
        assert_eq!(hex(&hasher.finalize()), pattern_sha256(n));
    }

    #[tokio::test]
    async fn bytes_rejects_bad_lengths() {
        let too_big = MAX_BYTES + 1;
        assert_eq!(
            get(&format!("/bytes/{too_big}")).await.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(get("/bytes/ten").await.status(), StatusCode::BAD_REQUEST);
        assert_eq!(get("/bytes/-1").await.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn sse_yields_n_events() {
        let response = get("/sse?n=3&interval_ms=10").await;
        assert_eq!(response.headers()[CONTENT_TYPE], "text/event-stream");
        let mut body = response.into_body();
        let mut events = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            events.push(String::from_utf8(data.to_vec()).unwrap());
        }
        assert_eq!(
            events,
            [
                "data: event 0\n\n",
                "data: event 1\n\n",
                "data: event 2\n\n"
            ]
        );
        let defaults = text(get("/sse?interval_ms=0").await).await;
        assert_eq!(defaults.matches("data: event").count(), 5);
        assert_eq!(
            get("/sse?n=1000000").await.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sse_sends_first_event_at_once_and_then_waits() {
        let mut body = get("/sse?n=2&interval_ms=100").await.into_body();
        let start = tokio::time::Instant::now();
        body.frame().await.unwrap().unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        body.frame().await.unwrap().unwrap();
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn trailers_follow_the_body() {
        let collected = get("/trailers").await.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(collected.to_bytes(), "hello trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "ok");
        assert_eq!(
            trailers["x-checksum"],
            hex(&Sha256::digest("hello trailers")).as_str()
        );
    }

    #[tokio::test]
    async fn status_slow_and_unknown_paths() {
        assert_eq!(get("/status/418").await.status(), StatusCode::IM_A_TEAPOT);
        assert_eq!(get("/status/101").await.status(), StatusCode::BAD_REQUEST);
        assert_eq!(get("/status/x").await.status(), StatusCode::BAD_REQUEST);
        let start = std::time::Instant::now();
        let response = get("/slow?ms=50").await;
        assert!(start.elapsed() >= Duration::from_millis(50));
        assert_eq!(text(response).await, "slept 50 ms\n");
        assert_eq!(
            get("/slow?ms=999999999").await.status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(get("/nope").await.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/bytes/1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            Hello.oneshot(post).await.unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn ws_rejects_bad_handshakes_with_400() {
        let response = get("/ws").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(text(response).await.contains("Upgrade: websocket"));
    }

    #[tokio::test]
    async fn ws_echo_over_http1_upgrade() {
        let addr = serve(Hello, Server::Http1).await;
        let (socket, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        check_echo(socket).await;
    }

    #[tokio::test]
    async fn ws_echo_over_h2_extended_connect() {
        let addr = serve(Hello, Server::Http2).await;
        check_echo(connect_h2_websocket(addr).await).await;
    }

    #[test]
    fn escaping() {
        assert_eq!(
            html_escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(json_string("a\"\\\n\u{1}"), "\"a\\\"\\\\\\u000a\\u0001\"");
    }
}
