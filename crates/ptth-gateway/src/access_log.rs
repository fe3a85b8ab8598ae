//! The access log and the per-request metrics: every public request, whatever listener it
//! came from, passes through `handle`, which counts its body bytes both ways and, when
//! the response body ends (or the client goes away), writes one line at target
//! `ptth::access` and counts the request in [`crate::metrics`].
//!
//! The binary has the lines written by [`write_lines_directly`]: each request encodes its
//! line by hand (`encode`: the text or JSON `tracing_subscriber` writes, byte for byte,
//! except escaped control characters in the text format) into a bounded queue, and a
//! thread of its own writes the queue to stderr in batches, at most [`WRITE_EVERY`] after a
//! line was queued, and [`flush`] writes the rest when the gateway has stopped. Through
//! `tracing`'s general-purpose formatter the line added 25 % to a request's instructions;
//! now about 4 % (`docs/performance.md`, finding 7).
//! Elsewhere (a terminal, a program embedding the library) a line is a `tracing` event.
//!
//! The path is logged without its query string: queries carry tokens and signatures
//! (`?token=`, pre-signed URLs) that a log must not keep.

use crate::message::{Body, BoxError, ErrorReason};
pub use crate::metrics::AccessLogMode;
use crate::metrics::{Finished, Metrics};
use crate::proxy::{ClientInfo, Proxy, Routed};
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the log line needs of the request, taken before the proxy consumes it.
struct Seen {
    method: http::Method,
    uri: http::Uri,
    host: Option<http::HeaderValue>,
}

impl Seen {
    /// The host the client asked for: the URI's authority (HTTP/2 and HTTP/3, absolute
    /// form), else `Host`.
    fn host(&self) -> Option<&str> {
        match self.uri.authority() {
            Some(a) => Some(a.as_str()),
            None => self.host.as_ref().and_then(|h| h.to_str().ok()),
        }
    }
}

/// The host without a port (`[v6]:port`, `name:port`), for the metrics' host label.
fn without_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() =>
        {
            host
        }
        _ => authority,
    }
}

/// Index into [`crate::metrics::PROTOCOLS`] and the name the log gives the protocol.
fn protocol(version: Version, tls: bool) -> (usize, &'static str) {
    match version {
        Version::HTTP_2 if tls => (1, "h2"),
        Version::HTTP_2 => (1, "h2c"),
        Version::HTTP_3 => (2, "h3"),
        Version::HTTP_10 => (0, "http/1.0"),
        Version::HTTP_09 => (0, "http/0.9"),
        _ => (0, "http/1.1"),
    }
}

/// Hands one public request to `proxy` and returns its response, whose body counts the
/// bytes sent and, when it ends or is dropped, writes the access log line and counts the
/// request in the metrics.
pub(crate) async fn handle<B>(proxy: &Proxy, req: Request<B>, client: ClientInfo) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let metrics = proxy.metrics().clone();
    let (protocol, protocol_name) = protocol(req.version(), client.tls);
    let seen = (metrics.access.mode() != AccessLogMode::Off || metrics.labels_hosts()).then(|| {
        Box::new(Seen {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: req.headers().get(http::header::HOST).cloned(),
        })
    });
    // A request without a body (most) needs no counter.
    let (mut res, received) = if req.body().is_end_stream() {
        (proxy.handle(req, client).await, None)
    } else {
        let received = Arc::new(AtomicU64::new(0));
        let counted = req.map(|body| Received {
            inner: body,
            count: received.clone(),
        });
        (proxy.handle(counted, client).await, Some(received))
    };
    let routed = res.extensions_mut().remove::<Routed>();
    let reason = res.extensions_mut().remove::<ErrorReason>();
    let status = res.status().as_u16();
    let end = End {
        metrics,
        started,
        client,
        protocol,
        protocol_name,
        status,
        seen,
        routed,
        reason,
        received,
        sent: 0,
    };
    res.map(|inner| {
        Logged {
            inner,
            end: Some(end),
        }
        .boxed_unsync()
    })
}

/// A request body that counts the bytes the client sent.
struct Received<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> http_body::Body for Received<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Everything the line and the metrics need once the response ends.
struct End {
    metrics: Arc<Metrics>,
    started: Instant,
    client: ClientInfo,
    protocol: usize,
    protocol_name: &'static str,
    status: u16,
    seen: Option<Box<Seen>>,
    routed: Option<Routed>,
    reason: Option<ErrorReason>,
    received: Option<Arc<AtomicU64>>,
    sent: u64,
}

impl End {
    /// Counts the request and writes its line. `complete`: the body reached its end (not
    /// dropped by a client that went away, nor cut by an error).
    fn write(self, complete: bool) {
        let duration = self.started.elapsed();
        let received = self.received.map_or(0, |r| r.load(Ordering::Relaxed));
        let host = self.seen.as_ref().and_then(|s| s.host());
        let conn = self.routed.as_ref().map(|r| &r.0);
        self.metrics.request(&Finished {
            status: self.status,
            protocol: self.protocol,
            mechanism: conn.map(|c| c.mechanism),
            host: host.map(without_port),
            duration,
            received,
            sent: self.sent,
        });
        if !self.metrics.access.writes(self.status) {
            return;
        }
        let Some(seen) = self.seen.as_ref() else {
            return;
        };
        let line = Line {
            client: self.client.addr,
            host: host.unwrap_or(""),
            method: seen.method.as_str(),
            path: seen.uri.path(),
            protocol: self.protocol_name,
            status: self.status,
            bytes_in: received,
            bytes_out: self.sent,
            duration,
            complete,
            origin: conn.map(|c| Origin {
                mechanism: c.mechanism.name(),
                conn: c.id,
                grant: &c.admission.identity,
            }),
            reason: self.reason.as_ref().map(|r| r.0.as_str()),
        };
        write_line(&line, &self.metrics);
    }
}

/// A response body that counts the bytes sent and writes the request's line when it ends.
struct Logged {
    inner: Body,
    end: Option<End>,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(end) = self.end.as_mut() {
                    end.sent += n;
                }
                if self.inner.is_end_stream() {
                    if let Some(end) = self.end.take() {
                        end.write(true);
                    }
                }
            }
            Poll::Ready(None) => {
                if let Some(end) = self.end.take() {
                    end.write(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(end) = self.end.take() {
                    end.write(false);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(end) = self.end.take() {
            // A body already at its end (an empty one the server never polled) is complete.
            let complete = self.inner.is_end_stream();
            end.write(complete);
        }
    }
}

/// One access log line's fields.
#[derive(Debug, Clone)]
struct Line<'a> {
    client: SocketAddr,
    /// The requested authority, empty when the request named none.
    host: &'a str,
    method: &'a str,
    /// Without the query string.
    path: &'a str,
    protocol: &'a str,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    duration: Duration,
    complete: bool,
    /// The origin connection that answered (`None`: the gateway answered itself).
    origin: Option<Origin<'a>>,
    reason: Option<&'a str>,
}

/// The fields naming the origin connection that answered.
#[derive(Debug, Clone)]
struct Origin<'a> {
    mechanism: &'a str,
    conn: u64,
    grant: &'a str,
}

impl Line<'_> {
    /// The duration in whole microseconds: the resolution of `duration_ms` in both writers.
    fn micros(&self) -> u64 {
        u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX)
    }
}

/// Writes `line` if `RUST_LOG` lets `ptth::access` through: to the line writer when the
/// binary installed it ([`write_lines_directly`]), else as a `tracing` event, for an
/// embedding program's own subscriber. A line the writer's full queue refuses is counted
/// in `metrics`.
fn write_line(line: &Line<'_>, metrics: &Metrics) {
    match WRITER.get() {
        Some(writer) => {
            if tracing::enabled!(target: "ptth::access", tracing::Level::INFO)
                && !writer.push(line, SystemTime::now())
            {
                metrics.access_log_dropped();
            }
        }
        None => event(line),
    }
}

/// The line as a `tracing` event at target `ptth::access`.
fn event(line: &Line<'_>) {
    let origin = line.origin.as_ref();
    tracing::info!(
        target: "ptth::access",
        client = %line.client,
        host = %line.host,
        method = %line.method,
        path = %line.path,
        protocol = %line.protocol,
        status = line.status,
        bytes_in = line.bytes_in,
        bytes_out = line.bytes_out,
        duration_ms = line.micros() as f64 / 1000.0,
        complete = line.complete,
        mechanism = origin.map(|o| tracing::field::display(o.mechanism)),
        conn = origin.map(|o| o.conn),
        grant = origin.map(|o| tracing::field::display(o.grant)),
        reason = line.reason.map(tracing::field::display),
        "request"
    );
}

/// The text of the lines [`write_lines_directly`] writes: the same as the binary's
/// `tracing` output (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// `tracing_subscriber`'s default text, without colour.
    Human,
    /// `tracing_subscriber`'s JSON, one object per line.
    Json,
}

/// The process's line writer, once the binary installed it.
static WRITER: OnceLock<Arc<Writer>> = OnceLock::new();

/// Writes the access log to stderr from a thread of its own, in `format`, instead of as
/// `tracing` events: the request path only encodes its line into a shared buffer, and the
/// writer thread hands the lines to stderr in batches, at the latest [`WRITE_EVERY`] after
/// the first of a batch. `RUST_LOG` still decides whether lines are written (target
/// `ptth::access` at info). The binary calls this once it set up `tracing` on stderr without
/// colour; later calls change nothing.
pub fn write_lines_directly(format: LineFormat) -> std::io::Result<()> {
    if WRITER.get().is_some() {
        return Ok(());
    }
    let writer = Arc::new(Writer::new(format));
    let thread = writer.clone();
    std::thread::Builder::new()
        .name("ptth-access-log".into())
        .spawn(move || thread.run(&mut std::io::stderr()))?;
    // Two racing calls start two threads; the one whose writer was not kept waits forever
    // for lines that never come (callers make one call, at start).
    let _ = WRITER.set(writer);
    Ok(())
}

/// Writes the lines waiting in the writer's queue now, on the calling thread (nothing
/// without [`write_lines_directly`]). The binary calls it once the gateway has stopped, so
/// the last requests' lines are written before the process exits.
pub fn flush() {
    if let Some(writer) = WRITER.get() {
        writer.write_batch(&mut std::io::stderr());
    }
}

/// How long a line may wait in the queue before the writer thread writes it.
pub const WRITE_EVERY: Duration = Duration::from_millis(100);
/// Queued bytes at which the writer thread writes without waiting for [`WRITE_EVERY`].
const WRITE_AT: usize = 64 * 1024;
/// Queued bytes beyond which lines are dropped (counted in
/// `ptth_gateway_access_log_dropped_lines_total`) rather than wait: about 8 000 lines, 150 ms
/// of 50 000 requests a second, when stderr does not keep up.
const QUEUE_LIMIT: usize = 2 * 1024 * 1024;

/// The queue of encoded lines and the thread that writes them.
#[derive(Debug)]
struct Writer {
    format: LineFormat,
    /// Encoded lines not yet handed to the writer thread.
    queue: Mutex<Vec<u8>>,
    /// Signalled when the queue gets its first line and when it reaches [`WRITE_AT`].
    filled: Condvar,
    /// The batch being written (held while writing, so batches leave in order whoever
    /// writes them), its capacity reused.
    out: Mutex<Vec<u8>>,
}

impl Writer {
    fn new(format: LineFormat) -> Self {
        Self {
            format,
            queue: Mutex::new(Vec::with_capacity(WRITE_AT)),
            filled: Condvar::new(),
            out: Mutex::new(Vec::with_capacity(WRITE_AT)),
        }
    }

    /// Queues `line`, stamped `now`. Never waits for the writer thread: `false` when the
    /// queue is full and the line was dropped.
    fn push(&self, line: &Line<'_>, now: SystemTime) -> bool {
        let mut queue = lock(&self.queue);
        let before = queue.len();
        encode(&mut queue, self.format, line, now);
        if queue.len() > QUEUE_LIMIT {
            queue.truncate(before);
            return false;
        }
        let wake = before == 0 || (before < WRITE_AT && queue.len() >= WRITE_AT);
        drop(queue);
        if wake {
            self.filled.notify_one();
        }
        true
    }

    /// The writer thread: waits for a line, gives the batch up to [`WRITE_EVERY`] to fill
    /// (or until [`WRITE_AT`] bytes), writes it to `sink`, and again, for as long as the
    /// process runs.
    fn run(&self, sink: &mut impl Write) {
        loop {
            let mut queue = lock(&self.queue);
            while queue.is_empty() {
                queue = self.filled.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            let deadline = Instant::now() + WRITE_EVERY;
            while queue.len() < WRITE_AT {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                queue = self
                    .filled
                    .wait_timeout(queue, left)
                    .map_or_else(|e| e.into_inner().0, |(q, _)| q);
            }
            drop(queue);
            self.write_batch(sink);
        }
    }

    /// Takes every queued line and writes them to `sink` in one `write_all`. A failed
    /// write loses the batch: the log has nowhere else to go.
    fn write_batch(&self, sink: &mut impl Write) {
        let mut out = lock(&self.out);
        std::mem::swap(&mut *out, &mut *lock(&self.queue));
        if !out.is_empty() {
            let _ = sink.write_all(&out).and_then(|()| sink.flush());
            out.clear();
        }
        // A burst may have grown the buffer far beyond a usual batch.
        if out.capacity() > 4 * WRITE_AT {
            out.shrink_to(WRITE_AT);
        }
    }
}

/// Locks `m`, whatever a panicking holder left (the buffers hold whole lines or nothing
/// worse than a line cut short).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Appends `line`, stamped `now`, as one line of `format` (newline included).
fn encode(out: &mut Vec<u8>, format: LineFormat, line: &Line<'_>, now: SystemTime) {
    match format {
        LineFormat::Human => encode_human(out, line, now),
        LineFormat::Json => encode_json(out, line, now),
    }
}

/// `2026-12-04T22:23:00.123456Z  INFO ptth::access: request client=… host=… …`, as
/// `tracing_subscriber`'s text format writes the event, except that control characters in
/// values are escaped (see [`human_str`]).
fn encode_human(out: &mut Vec<u8>, line: &Line<'_>, now: SystemTime) {
    timestamp(out, now);
    out.extend_from_slice(b"  INFO ptth::access: request client=");
    address(out, line.client);
    out.extend_from_slice(b" host=");
    human_str(out, line.host);
    out.extend_from_slice(b" method=");
    human_str(out, line.method);
    out.extend_from_slice(b" path=");
    human_str(out, line.path);
    out.extend_from_slice(b" protocol=");
    human_str(out, line.protocol);
    out.extend_from_slice(b" status=");
    decimal(out, u64::from(line.status));
    out.extend_from_slice(b" bytes_in=");
    decimal(out, line.bytes_in);
    out.extend_from_slice(b" bytes_out=");
    decimal(out, line.bytes_out);
    out.extend_from_slice(b" duration_ms=");
    millis(out, line.micros());
    out.extend_from_slice(if line.complete {
        b" complete=true"
    } else {
        b" complete=false"
    });
    if let Some(o) = &line.origin {
        out.extend_from_slice(b" mechanism=");
        human_str(out, o.mechanism);
        out.extend_from_slice(b" conn=");
        decimal(out, o.conn);
        out.extend_from_slice(b" grant=");
        human_str(out, o.grant);
    }
    if let Some(reason) = line.reason {
        out.extend_from_slice(b" reason=");
        human_str(out, reason);
    }
    out.push(b'\n');
}

/// `{"timestamp":"…","level":"INFO","fields":{"message":"request","client":"…",…},
/// "target":"ptth::access"}`, as `tracing_subscriber`'s JSON format writes the event.
fn encode_json(out: &mut Vec<u8>, line: &Line<'_>, now: SystemTime) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, now);
    out.extend_from_slice(
        b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"client\":\"",
    );
    address(out, line.client);
    out.extend_from_slice(b"\",\"host\":");
    json_str(out, line.host);
    out.extend_from_slice(b",\"method\":");
    json_str(out, line.method);
    out.extend_from_slice(b",\"path\":");
    json_str(out, line.path);
    out.extend_from_slice(b",\"protocol\":");
    json_str(out, line.protocol);
    out.extend_from_slice(b",\"status\":");
    decimal(out, u64::from(line.status));
    out.extend_from_slice(b",\"bytes_in\":");
    decimal(out, line.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    decimal(out, line.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, line.micros());
    out.extend_from_slice(if line.complete {
        b",\"complete\":true"
    } else {
        b",\"complete\":false"
    });
    if let Some(o) = &line.origin {
        out.extend_from_slice(b",\"mechanism\":");
        json_str(out, o.mechanism);
        out.extend_from_slice(b",\"conn\":");
        decimal(out, o.conn);
        out.extend_from_slice(b",\"grant\":");
        json_str(out, o.grant);
    }
    if let Some(reason) = line.reason {
        out.extend_from_slice(b",\"reason\":");
        json_str(out, reason);
    }
    out.extend_from_slice(b"},\"target\":\"ptth::access\"}\n");
}

/// `s` as a JSON string (RFC 8259, section 7: `"`, `\` and U+0000 to U+001F escaped),
/// with the escapes serde_json writes: `\b \f \n \r \t`, else `\u00XX`.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(bytes.get(plain..i).unwrap_or_default());
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        plain = i + 1;
    }
    out.extend_from_slice(bytes.get(plain..).unwrap_or_default());
    out.push(b'"');
}

/// `s` for the text format: as it is, except control characters, which could end the line
/// or drive a terminal: C0 and DEL as `\xNN`, C1 (U+0080 to U+009F) as `\u{NN}`, the
/// escapes `tracing_subscriber` uses for messages. (Paths and authorities cannot hold
/// them; a `Host` header can hold a tab, and a grant name or a reason anything.)
fn human_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Nearly every value has nothing to escape: one pass that the compiler vectorises.
    if bytes.iter().all(|&b| b >= 0x20 && b != 0x7f && b != 0xc2) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut plain = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        // (the code, whether it is C1, its length in UTF-8)
        let (code, c1, len) = match (b, bytes.get(i + 1)) {
            (0..=0x1f | 0x7f, _) => (b, false, 1),
            // U+0080 to U+009F are C2 80 to C2 9F in UTF-8.
            (0xc2, Some(&c)) if (0x80..=0x9f).contains(&c) => (c, true, 2),
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(bytes.get(plain..i).unwrap_or_default());
        out.extend_from_slice(if c1 { b"\\u{" } else { b"\\x" });
        out.push(HEX[usize::from(code >> 4)]);
        out.push(HEX[usize::from(code & 0xf)]);
        if c1 {
            out.push(b'}');
        }
        i += len;
        plain = i;
    }
    out.extend_from_slice(bytes.get(plain..).unwrap_or_default());
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `n` in decimal.
fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// `n` in decimal, at least `width` digits (zeros in front).
fn padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut n = n;
    while n > 0 || digits.len() - at < width {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[at..]);
}

/// Microseconds as milliseconds with three decimals (`12.345`, `0.040`, `3.000`).
fn millis(out: &mut Vec<u8>, micros: u64) {
    decimal(out, micros / 1000);
    out.push(b'.');
    padded(out, micros % 1000, 3);
}

/// `a.b.c.d:port`, or `[v6]:port` as the standard library writes it.
fn address(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                decimal(out, u64::from(octet));
            }
            out.push(b':');
            decimal(out, u64::from(v4.port()));
        }
        // Writing to a Vec cannot fail.
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `now` in RFC 3339 UTC with microseconds (`2026-12-04T22:23:00.123456Z`), as
/// `tracing_subscriber`'s default timer writes it. A clock before 1970 reads as 1970.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    LAST_SECOND.with(|last| {
        let (at, mut text) = last.get();
        if at != secs || text.is_empty() {
            text = DateTime::new();
            date_time(&mut text, secs);
            last.set((secs, text));
        }
        out.extend_from_slice(text.as_slice());
    });
    out.push(b'.');
    padded(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

thread_local! {
    /// The second last stamped on this thread and its text: lines come many a second.
    static LAST_SECOND: Cell<(u64, DateTime)> = const { Cell::new((0, DateTime::new())) };
}

/// `2026-12-04T22:23:00` (or `+10000-…`), up to 21 bytes, without allocating.
#[derive(Debug, Clone, Copy)]
struct DateTime {
    bytes: [u8; 24],
    len: u8,
}

impl DateTime {
    const fn new() -> Self {
        Self {
            bytes: [0; 24],
            len: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

/// Writes the date and time of `secs` after 1970 into `text`.
fn date_time(text: &mut DateTime, secs: u64) {
    let mut out = Vec::with_capacity(24);
    let (year, month, day) = civil_date(secs / 86_400);
    if year > 9999 {
        out.push(b'+');
    }
    padded(&mut out, year, 4);
    out.push(b'-');
    padded(&mut out, month, 2);
    out.push(b'-');
    padded(&mut out, day, 2);
    out.push(b'T');
    let of_day = secs % 86_400;
    padded(&mut out, of_day / 3600, 2);
    out.push(b':');
    padded(&mut out, of_day / 60 % 60, 2);
    out.push(b':');
    padded(&mut out, of_day % 60, 2);
    let len = out.len().min(text.bytes.len());
    text.bytes[..len].copy_from_slice(&out[..len]);
    text.len = len as u8;
}

/// The proleptic Gregorian (year, month, day) of day `days` after 1970-01-01, by whole
/// 400-year eras counted from 0000-03-01 (a year starting in March puts the leap day last).
fn civil_date(days: u64) -> (u64, u64, u64) {
    // 719 468 days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_bad_ones_say_what_is_valid() {
        assert_eq!("off".parse(), Ok(AccessLogMode::Off));
        assert_eq!("on".parse(), Ok(AccessLogMode::On));
        assert_eq!("sample=10".parse(), Ok(AccessLogMode::Sample(10)));
        for bad in ["sample=0", "sample=x", "yes", ""] {
            let err = bad.parse::<AccessLogMode>().unwrap_err();
            assert!(err.contains("off, on or sample=N"), "{err}");
        }
    }

    #[test]
    fn sampling_keeps_one_in_n_and_every_5xx() {
        let log = crate::metrics::AccessLog::default();
        log.set_mode(AccessLogMode::Sample(3));
        let kept = (0..9).filter(|_| log.writes(200)).count();
        assert_eq!(kept, 3);
        assert!((0..5).all(|_| log.writes(502)));
    }

    /// A line with every field, strings as given.
    fn line<'a>(strings: [&'a str; 6], micros: u64, origin: bool) -> Line<'a> {
        let [host, method, path, grant, reason, protocol] = strings;
        Line {
            client: "192.0.2.7:40123".parse().unwrap(),
            host,
            method,
            path,
            protocol,
            status: 502,
            bytes_in: 17,
            bytes_out: 123_456_789,
            duration: Duration::from_micros(micros),
            complete: false,
            origin: origin.then_some(Origin {
                mechanism: "rh2",
                conn: 42,
                grant,
            }),
            reason: (!reason.is_empty()).then_some(reason),
        }
    }

    /// What `tracing_subscriber` (set up as the binary sets it up, without colour) writes
    /// for the line's event.
    fn through_tracing(line: &Line<'_>, format: LineFormat) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let make = move || Capture(sink.clone());
        let builder = tracing_subscriber::fmt().with_ansi(false).with_writer(make);
        match format {
            LineFormat::Human => {
                tracing::subscriber::with_default(builder.finish(), || event(line))
            }
            LineFormat::Json => {
                tracing::subscriber::with_default(builder.json().finish(), || event(line))
            }
        }
        let bytes = out.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Our encoding of `line`, with the timestamp `tracing` gave its own line (so the two
    /// can be compared byte for byte).
    fn ours_with_their_time(line: &Line<'_>, format: LineFormat, theirs: &str) -> String {
        let mut out = Vec::new();
        encode(&mut out, format, line, UNIX_EPOCH);
        let ours = String::from_utf8(out).unwrap();
        let epoch = "1970-01-01T00:00:00.000000Z";
        let at = match format {
            LineFormat::Human => 0,
            LineFormat::Json => "{\"timestamp\":\"".len(),
        };
        let their_time = theirs.get(at..at + epoch.len()).unwrap_or_default();
        ours.replacen(epoch, their_time, 1)
    }

    #[test]
    fn lines_are_byte_for_byte_what_the_tracing_formatter_wrote() {
        let strings = [
            "app.example:8443",
            "GET",
            "/a/b.json",
            "dev",
            "",
            "http/1.1",
        ];
        for format in [LineFormat::Human, LineFormat::Json] {
            for (origin, reason) in [(true, ""), (false, "no origin is connected")] {
                let mut s = strings;
                s[4] = reason;
                let l = line(s, 12_345, origin);
                let theirs = through_tracing(&l, format);
                assert_eq!(ours_with_their_time(&l, format, &theirs), theirs);
            }
        }
        let v6 = Line {
            client: "[2001:db8::1]:443".parse().unwrap(),
            ..line(strings, 1, true)
        };
        let theirs = through_tracing(&v6, LineFormat::Json);
        assert_eq!(ours_with_their_time(&v6, LineFormat::Json, &theirs), theirs);
    }

    #[test]
    fn quotes_backslashes_and_control_characters_are_escaped() {
        let nasty = "a\"b\\c\td\ne\r\x1b[31mf\x7fg\u{9b}h\x00é";
        let l = line(
            ["h\tost", "GET", "/p\"q\\r/café", nasty, nasty, "h2"],
            40,
            true,
        );
        let mut json = Vec::new();
        encode(&mut json, LineFormat::Json, &l, UNIX_EPOCH);
        let text = String::from_utf8(json.clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let f = &v["fields"];
        assert_eq!(f["grant"], nasty);
        assert_eq!(f["reason"], nasty);
        assert_eq!(f["host"], "h\tost");
        assert_eq!(f["path"], "/p\"q\\r/café");
        assert_eq!(f["duration_ms"], 0.04);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");

        let mut human = Vec::new();
        encode(&mut human, LineFormat::Human, &l, UNIX_EPOCH);
        let human = String::from_utf8(human).unwrap();
        let escaped = "a\"b\\c\\x09d\\x0ae\\x0d\\x1b[31mf\\x7fg\\u{9b}h\\x00é";
        assert_eq!(
            human,
            format!(
                "1970-01-01T00:00:00.000000Z  INFO ptth::access: request client=192.0.2.7:40123 \
                 host=h\\x09ost method=GET path=/p\"q\\r/café protocol=h2 status=502 bytes_in=17 \
                 bytes_out=123456789 duration_ms=0.040 complete=false mechanism=rh2 conn=42 \
                 grant={escaped} reason={escaped}\n"
            )
        );
    }

    #[test]
    fn milliseconds_keep_three_decimals() {
        for (micros, text) in [
            (0, "0.000"),
            (40, "0.040"),
            (3_000, "3.000"),
            (1_234_567, "1234.567"),
        ] {
            let mut out = Vec::new();
            millis(&mut out, micros);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
        let mut out = Vec::new();
        decimal(&mut out, u64::MAX);
        assert_eq!(String::from_utf8(out).unwrap(), u64::MAX.to_string());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut out = Vec::new();
            timestamp(
                &mut out,
                UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(951_868_799, 999_999), "2000-02-29T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
        assert_eq!(at(1_796_423_580, 123_456), "2026-12-04T22:33:00.123456Z");
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        assert_eq!(at(253_402_300_800, 0), "+10000-01-01T00:00:00.000000Z");
        // The clock now, as tracing_subscriber's timer reads it, to the second.
        use tracing_subscriber::fmt::time::FormatTime;
        for _ in 0..3 {
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut tracing_subscriber::fmt::format::Writer::new(
                    &mut theirs,
                ))
                .unwrap();
            let mut ours = Vec::new();
            timestamp(&mut ours, SystemTime::now());
            if theirs.get(..19) == std::str::from_utf8(&ours).unwrap().get(..19) {
                return;
            }
        }
        panic!("the timestamps disagree");
    }

    #[test]
    fn a_full_queue_drops_lines_and_batches_leave_in_order() {
        let writer = Writer::new(LineFormat::Json);
        let l = line(["app", "GET", "/", "dev", "", "h2"], 1, true);
        let mut pushed = 0u64;
        while writer.push(&l, UNIX_EPOCH) {
            pushed += 1;
        }
        assert!(lock(&writer.queue).len() <= QUEUE_LIMIT);
        assert!(!writer.push(&l, UNIX_EPOCH), "still full");
        let mut sink = Vec::new();
        writer.write_batch(&mut sink);
        assert_eq!(sink.iter().filter(|b| **b == b'\n').count() as u64, pushed);
        assert!(writer.push(&l, UNIX_EPOCH), "room again once written");
        let more = line(["app", "GET", "/last", "dev", "", "h2"], 1, true);
        assert!(writer.push(&more, UNIX_EPOCH));
        writer.write_batch(&mut sink);
        let text = String::from_utf8(sink).unwrap();
        assert!(text.trim_end().ends_with("\"target\":\"ptth::access\"}"));
        assert!(text.lines().last().unwrap().contains("\"path\":\"/last\""));

        // The metric counts what the queue refused.
        let metrics = Metrics::new();
        metrics.access_log_dropped();
        let scraped = metrics.encode(std::iter::empty(), 0);
        assert!(
            scraped.contains("ptth_gateway_access_log_dropped_lines_total 1"),
            "{scraped}"
        );
    }

    #[test]
    fn the_writer_thread_writes_a_lone_line_within_its_interval() {
        let writer = Arc::new(Writer::new(LineFormat::Human));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (w, sink) = (writer.clone(), out.clone());
        std::thread::spawn(move || w.run(&mut Capture(sink)));
        let l = line(["app", "GET", "/", "dev", "", "h2"], 1, true);
        let pushed = Instant::now();
        assert!(writer.push(&l, UNIX_EPOCH));
        while out.lock().unwrap().is_empty() {
            assert!(
                pushed.elapsed() < 10 * WRITE_EVERY,
                "no line after {:?}",
                pushed.elapsed()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A batch of WRITE_AT bytes leaves at once, without waiting out the interval.
        out.lock().unwrap().clear();
        let pushed = Instant::now();
        let mut n = 0;
        while lock(&writer.queue).len() < WRITE_AT && n < 10_000 {
            assert!(writer.push(&l, UNIX_EPOCH));
            n += 1;
        }
        while out.lock().unwrap().len() < WRITE_AT {
            assert!(
                pushed.elapsed() < 10 * WRITE_EVERY,
                "no batch after {:?}",
                pushed.elapsed()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    proptest::proptest! {
        /// Any strings: JSON that parses back to them, byte for byte what tracing_subscriber
        /// wrote, and a text line that is one line without a control character; without
        /// control characters, the text line too is byte for byte tracing_subscriber's.
        #[test]
        fn encodings_hold_for_any_strings(
            strings in proptest::array::uniform6("(?s).{0,40}"),
            plain in proptest::array::uniform6("[^\\x00-\\x1f\\x7f-\\x9f]{0,40}"),
            tenths in 0u64..10_000_000_000,
            last_digit in 1u64..10,
            origin in proptest::bool::ANY,
        ) {
            let micros = tenths * 10 + last_digit;
            let s = strings.each_ref().map(String::as_str);
            let l = line(s, micros, origin);
            let mut json = Vec::new();
            encode(&mut json, LineFormat::Json, &l, SystemTime::now());
            let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
            let f = &v["fields"];
            proptest::prop_assert_eq!(&f["host"], s[0]);
            proptest::prop_assert_eq!(&f["method"], s[1]);
            proptest::prop_assert_eq!(&f["path"], s[2]);
            proptest::prop_assert_eq!(&f["protocol"], s[5]);
            if origin {
                proptest::prop_assert_eq!(&f["grant"], s[3]);
            }
            if !s[4].is_empty() {
                proptest::prop_assert_eq!(&f["reason"], s[4]);
            }
            let mut human = Vec::new();
            encode(&mut human, LineFormat::Human, &l, SystemTime::now());
            let human = String::from_utf8(human).unwrap();
            let body = human.strip_suffix('\n').unwrap();
            proptest::prop_assert!(
                !body.chars().any(|c| c.is_control()),
                "a control character in {:?}", body
            );

            // JSON escapes are serde_json's, for any string.
            let theirs = through_tracing(&l, LineFormat::Json);
            proptest::prop_assert_eq!(ours_with_their_time(&l, LineFormat::Json, &theirs), theirs);

            let p = line(plain.each_ref().map(String::as_str), micros, origin);
            for format in [LineFormat::Human, LineFormat::Json] {
                let theirs = through_tracing(&p, format);
                proptest::prop_assert_eq!(ours_with_their_time(&p, format, &theirs), theirs);
            }
        }
    }

    #[test]
    fn ports_come_off_hosts() {
        assert_eq!(without_port("app.example:8080"), "app.example");
        assert_eq!(without_port("app.example"), "app.example");
        assert_eq!(without_port("[::1]:80"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
