//! The request-smuggling battery of `cargo xtask interop`: malformed and ambiguous requests
//! sent from a public client over raw TCP (HTTP/1.1 bytes, and hand-built HTTP/2 frames over
//! h2c), with a counting upstream behind a proxy-mode origin proving what reached it.
//!
//! Every case names the request it wants forwarded `/legit/<case>` and the request it tries to
//! smuggle `/smuggled/<case>`. A case passes when the client saw what its expectation says
//! (a rejection: a 4xx, a stream reset, a GOAWAY or a close, and never a 2xx), the upstream's
//! request count grew by no more than the legitimately forwarded requests, no
//! `/smuggled/…` request reached it, and no bare CR, bare LF or folded line reached it.

use anyhow::{Context, Result};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a case must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Refused at the gateway: nothing reaches the upstream, the client sees no 2xx.
    Reject,
    /// The RFC lets a recipient either reject the message or repair it (or, for a body error,
    /// the head was already forwarded): at most one request reaches the upstream.
    AtMostOne,
    /// A legitimate exchange (a control): exactly this many requests reach the upstream and
    /// every answer is a 2xx.
    Forward(usize),
}

impl Expect {
    fn describe(self) -> String {
        match self {
            Expect::Reject => "rejected, 0 forwarded".into(),
            Expect::AtMostOne => "rejected or repaired, ≤ 1 forwarded".into(),
            Expect::Forward(n) => format!("{n} forwarded, 2xx"),
        }
    }

    fn max_forwarded(self) -> usize {
        match self {
            Expect::Reject => 0,
            Expect::AtMostOne => 1,
            Expect::Forward(n) => n,
        }
    }
}

/// One smuggling attempt.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Short identifier, also used in the request paths.
    pub id: &'static str,
    /// What is sent.
    pub what: &'static str,
    /// Whether it goes over HTTP/2 (h2c prior knowledge) rather than HTTP/1.1.
    pub h2: bool,
    /// The expectation.
    pub expect: Expect,
}

/// The battery, HTTP/1.1 cases first.
pub const CASES: &[Case] = &[
    Case {
        id: "control-get",
        what: "control: a plain GET",
        h2: false,
        expect: Expect::Forward(1),
    },
    Case {
        id: "control-pipelined",
        what: "control: two pipelined GETs",
        h2: false,
        expect: Expect::Forward(2),
    },
    Case {
        id: "body-hides-request",
        what: "POST whose Content-Length body is a complete `GET /smuggled` request",
        h2: false,
        expect: Expect::Forward(1),
    },
    Case {
        id: "cl-te",
        what: "Content-Length (whole body) and Transfer-Encoding: chunked (`0` chunk, then `GET /smuggled`)",
        h2: false,
        expect: Expect::AtMostOne,
    },
    Case {
        id: "cl-cl",
        what: "two different Content-Lengths (0 and the length of a `GET /smuggled`)",
        h2: false,
        expect: Expect::Reject,
    },
    Case {
        id: "te-space-colon",
        what: "`Transfer-Encoding : chunked` (space before the colon) with a Content-Length",
        h2: false,
        expect: Expect::Reject,
    },
    Case {
        id: "te-not-final",
        what: "`Transfer-Encoding: chunked, x-unknown` with a Content-Length",
        h2: false,
        expect: Expect::Reject,
    },
    Case {
        id: "obs-fold",
        what: "obs-fold: ` Transfer-Encoding: chunked` folded into the previous field, with a Content-Length",
        h2: false,
        expect: Expect::AtMostOne,
    },
    Case {
        id: "bare-cr",
        what: "bare CR inside a field: `X-A: 1\\rTransfer-Encoding: chunked`, with a Content-Length",
        h2: false,
        expect: Expect::AtMostOne,
    },
    Case {
        id: "bare-lf",
        what: "bare LF ending a field line: `X-A: 1\\nTransfer-Encoding: chunked`, with a Content-Length",
        h2: false,
        expect: Expect::AtMostOne,
    },
    Case {
        id: "huge-header",
        what: "one 128 KiB header field",
        h2: false,
        expect: Expect::Reject,
    },
    Case {
        id: "many-headers",
        what: "1 000 header fields",
        h2: false,
        expect: Expect::Reject,
    },
    Case {
        id: "bad-chunk-size",
        what: "chunked body with chunk size `zz`, then `GET /smuggled`",
        h2: false,
        expect: Expect::AtMostOne,
    },
    Case {
        id: "chunk-overflow",
        what: "chunked body with chunk size `1` followed by 20 `0`s (overflows u64)",
        h2: false,
        expect: Expect::AtMostOne,
    },
    Case {
        id: "two-spaces",
        what: "request line `GET  /legit HTTP/1.1` (two spaces)",
        h2: false,
        expect: Expect::Reject,
    },
    Case {
        id: "http10-te",
        what: "HTTP/1.0 request with Transfer-Encoding: chunked and a Content-Length, then `GET /smuggled`",
        h2: false,
        expect: Expect::AtMostOne,
    },
    Case {
        id: "h2-control",
        what: "control: a plain HTTP/2 GET",
        h2: true,
        expect: Expect::Forward(1),
    },
    Case {
        id: "h2-body-hides-request",
        what: "control: HTTP/2 POST whose body is a `GET /smuggled` request",
        h2: true,
        expect: Expect::Forward(1),
    },
    Case {
        id: "h2-uppercase-name",
        what: "HTTP/2 field name with uppercase letters (`X-Upper`)",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-connection-header",
        what: "HTTP/2 connection-specific field `connection: keep-alive`",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-transfer-encoding",
        what: "HTTP/2 `transfer-encoding: chunked`, body `0` chunk then `GET /smuggled`",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-te-gzip",
        what: "HTTP/2 `te: gzip` (only `trailers` is allowed)",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-missing-path",
        what: "HTTP/2 request without `:path`",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-pseudo-after-regular",
        what: "HTTP/2 `:path` after a regular field",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-crlf-in-value",
        what: "HTTP/2 field value with CRLF and a `GET /smuggled` request in it",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-space-in-path",
        what: "HTTP/2 `:path` containing a space and `/smuggled`",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-huge-header",
        what: "HTTP/2 128 KiB header field (HEADERS + CONTINUATION frames)",
        h2: true,
        expect: Expect::Reject,
    },
    Case {
        id: "h2-cl-mismatch",
        what: "HTTP/2 `content-length: 0` with a DATA frame holding `GET /smuggled` (H2.CL)",
        h2: true,
        expect: Expect::AtMostOne,
    },
];

// ---------------------------------------------------------------------------------------
// The counting upstream.

/// A request the counting upstream parsed.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request target.
    pub target: String,
    /// Framing oddities that should never reach an upstream.
    pub anomalies: Vec<String>,
}

/// A tiny HTTP/1.1 server that records every request head it receives and answers
/// `200 ok`. It counts a request as soon as its head arrives, so a request whose body later
/// fails still counts.
#[derive(Debug, Clone)]
pub struct Counter {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    garbage: Arc<Mutex<Vec<String>>>,
}

impl Counter {
    /// Binds on an ephemeral loopback port and serves from a background thread.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let counter = Self {
            addr: listener.local_addr()?,
            seen: Arc::default(),
            garbage: Arc::default(),
        };
        let c = counter.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let c = c.clone();
                std::thread::spawn(move || c.serve(tcp));
            }
        });
        Ok(counter)
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Bytes it could not parse as a request, so far.
    pub fn garbage(&self) -> Vec<String> {
        self.garbage.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn serve(&self, tcp: TcpStream) {
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
        let Ok(mut out) = tcp.try_clone() else { return };
        let mut r = BufReader::new(tcp);
        loop {
            match self.one(&mut r) {
                Ok(Some(close)) => {
                    if out
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .is_err()
                        || close
                    {
                        return;
                    }
                }
                Ok(None) => return,
                // A connection that ends or resets is not something the upstream misparsed.
                Err(e) if e.downcast_ref::<std::io::Error>().is_some() => return,
                Err(e) => {
                    if let Ok(mut g) = self.garbage.lock() {
                        g.push(e.to_string());
                    }
                    let _ = out.write_all(
                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    return;
                }
            }
        }
    }

    /// Reads one request; `Ok(None)` at a clean end of the connection, else whether to close.
    fn one(&self, r: &mut BufReader<TcpStream>) -> Result<Option<bool>> {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let request_line = String::from_utf8_lossy(&line).trim_end().to_string();
        let mut parts = request_line.split(' ');
        let (Some(_method), Some(target), Some(_version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            anyhow::bail!("bad request line {request_line:?}");
        };
        let mut seen = Seen {
            target: target.to_string(),
            anomalies: Vec::new(),
        };
        let (mut length, mut chunked, mut close, mut head_len) = (None, false, false, 0usize);
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line)? == 0 {
                anyhow::bail!("connection ended inside a request head");
            }
            head_len += line.len();
            if head_len > 1024 * 1024 {
                anyhow::bail!("request head over 1 MiB");
            }
            if !line.ends_with(b"\r\n") {
                seen.anomalies.push("bare LF".into());
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.is_empty() {
                break;
            }
            if text.contains(&b'\r') {
                seen.anomalies.push("bare CR".into());
            }
            if text.starts_with(b" ") || text.starts_with(b"\t") {
                seen.anomalies.push("obs-fold".into());
            }
            let text = String::from_utf8_lossy(text);
            let Some((name, value)) = text.split_once(':') else {
                seen.anomalies
                    .push(format!("field line without a colon: {text:?}"));
                continue;
            };
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => {
                    if length.is_some() {
                        seen.anomalies.push("two Content-Lengths".into());
                    }
                    length = Some(value.parse::<u64>().context("Content-Length")?);
                }
                "transfer-encoding" => {
                    chunked = value.to_ascii_lowercase().ends_with("chunked");
                }
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
            if name.ends_with(' ') || name.ends_with('\t') {
                seen.anomalies.push("whitespace before a colon".into());
            }
        }
        if chunked && length.is_some() {
            seen.anomalies
                .push("Content-Length with Transfer-Encoding".into());
        }
        if let Ok(mut s) = self.seen.lock() {
            s.push(seen);
        }
        if chunked {
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line)? == 0 || !line.ends_with(b"\n") {
                    // The sender gave up inside the body: a truncated request, not garbage.
                    return Ok(None);
                }
                let size = String::from_utf8_lossy(&line);
                let size = size.trim().split(';').next().unwrap_or("");
                let size = u64::from_str_radix(size, 16).context("chunk size")?;
                if size == 0 {
                    // Trailers up to the empty line.
                    loop {
                        line.clear();
                        if r.read_until(b'\n', &mut line)? == 0 || line == b"\r\n" {
                            break;
                        }
                    }
                    break;
                }
                std::io::copy(&mut r.by_ref().take(size + 2), &mut std::io::sink())?;
            }
        } else if let Some(n) = length {
            let copied = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink())?;
            if copied < n {
                return Ok(None);
            }
        }
        Ok(Some(close))
    }
}

// ---------------------------------------------------------------------------------------
// The HTTP/1.1 payloads.

fn h1_payload(case: &str, host: &str) -> Vec<u8> {
    let legit = format!("/legit/{case}");
    let smuggled = format!("GET /smuggled/{case} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    // A chunked body that ends at once, followed by the smuggled request: whoever frames by
    // Transfer-Encoding sees the request, whoever frames by Content-Length sees a body.
    let te_body = format!("0\r\n\r\n{smuggled}");
    let post = |extra: &str, body: &str| {
        format!(
            "POST {legit} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    match case {
        "control-get" => format!("GET {legit} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        "control-pipelined" => format!(
            "GET {legit}/1 HTTP/1.1\r\nHost: {host}\r\n\r\nGET {legit}/2 HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )
        .into_bytes(),
        "body-hides-request" => post("", &smuggled),
        "cl-te" => post("Transfer-Encoding: chunked\r\n", &te_body),
        "cl-cl" => post("Content-Length: 0\r\n", &smuggled),
        "te-space-colon" => post("Transfer-Encoding : chunked\r\n", &te_body),
        "te-not-final" => post("Transfer-Encoding: chunked, x-unknown\r\n", &te_body),
        "obs-fold" => post("X-Fold: a\r\n Transfer-Encoding: chunked\r\n", &te_body),
        "bare-cr" => post("X-A: 1\rTransfer-Encoding: chunked\r\n", &te_body),
        "bare-lf" => post("X-A: 1\nTransfer-Encoding: chunked\r\n", &te_body),
        "huge-header" => format!(
            "GET {legit} HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
            "a".repeat(128 * 1024)
        )
        .into_bytes(),
        "many-headers" => {
            let fields: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
            format!("GET {legit} HTTP/1.1\r\nHost: {host}\r\n{fields}\r\n").into_bytes()
        }
        "bad-chunk-size" => format!(
            "POST {legit} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n{smuggled}"
        )
        .into_bytes(),
        "chunk-overflow" => format!(
            "POST {legit} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n100000000000000000000\r\nhello\r\n0\r\n\r\n{smuggled}"
        )
        .into_bytes(),
        "two-spaces" => format!("GET  {legit} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        "http10-te" => format!(
            "POST {legit} HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{te_body}",
            te_body.len()
        )
        .into_bytes(),
        _ => Vec::new(),
    }
}

/// What a raw client saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Response statuses (HTTP/1.1), or the `:status` of the stream (HTTP/2).
    statuses: Vec<u16>,
    /// HTTP/2 RST_STREAM error code.
    reset: Option<u32>,
    /// HTTP/2 GOAWAY error code.
    goaway: Option<u32>,
    /// The gateway closed (or reset) the connection.
    closed: bool,
}

impl Outcome {
    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.statuses.iter().map(u16::to_string).collect();
        if let Some(c) = self.reset {
            parts.push(format!("RST_STREAM {}", h2_error(c)));
        }
        if let Some(c) = self.goaway {
            parts.push(format!("GOAWAY {}", h2_error(c)));
        }
        if self.closed {
            parts.push("close".into());
        }
        if parts.is_empty() {
            "no answer (kept open)".into()
        } else {
            parts.join(" + ")
        }
    }

    fn rejected(&self) -> bool {
        !self.statuses.iter().any(|s| (200..300).contains(s))
            && (self.statuses.iter().any(|s| *s >= 400)
                || self.reset.is_some()
                || self.goaway.is_some()
                || self.closed)
    }
}

fn h2_error(code: u32) -> &'static str {
    match code {
        0 => "NO_ERROR",
        1 => "PROTOCOL_ERROR",
        2 => "INTERNAL_ERROR",
        3 => "FLOW_CONTROL_ERROR",
        5 => "STREAM_CLOSED",
        6 => "FRAME_SIZE_ERROR",
        7 => "REFUSED_STREAM",
        8 => "CANCEL",
        9 => "COMPRESSION_ERROR",
        11 => "ENHANCE_YOUR_CALM",
        _ => "other",
    }
}

/// Sends `bytes` and reads HTTP/1.1 responses until the gateway closes, or a short while
/// after the last complete response, or a deadline.
fn h1_exchange(addr: SocketAddr, bytes: &[u8]) -> Result<Outcome> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    // The gateway may answer and close before it read everything (the 128 KiB header), so a
    // failed write is an outcome, not an error.
    let mut out = Outcome::default();
    if tcp.write_all(bytes).is_err() {
        out.closed = true;
    }
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let idle = if parse_h1_statuses(&buf).1 { 300 } else { 2500 };
        tcp.set_read_timeout(Some(Duration::from_millis(idle)))?;
        match tcp.read(&mut chunk) {
            Ok(0) => {
                out.closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(_) => {
                out.closed = true;
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
    out.statuses = parse_h1_statuses(&buf).0;
    Ok(out)
}

/// The statuses of the complete responses in `buf`, and whether it ends at a response
/// boundary (with at least one response).
fn parse_h1_statuses(mut buf: &[u8]) -> (Vec<u16>, bool) {
    let mut statuses = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let at_boundary = buf.is_empty() && !statuses.is_empty();
            return (statuses, at_boundary);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let rest = &buf[end + 4..];
        if head.contains("transfer-encoding: chunked") {
            // Error pages are short; only look for the last chunk.
            match rest.windows(5).position(|w| w == b"0\r\n\r\n") {
                Some(p) => {
                    statuses.push(status);
                    buf = &rest[p + 5..];
                }
                None => return (statuses, false),
            }
        } else if rest.len() >= length {
            statuses.push(status);
            buf = &rest[length..];
        } else {
            return (statuses, false);
        }
        if (100..200).contains(&status) {
            statuses.pop();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hand-built HTTP/2.

// The frame and HPACK writers, shared with tests/tests/public_h2.rs: xtask depends on no
// workspace crate, so the file is included by path.
#[path = "../../../tests/src/h2_frames.rs"]
mod h2_frames;
use h2_frames::{
    frame, literal, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PREFACE,
    RST_STREAM, SETTINGS,
};

/// A header block of literal fields without indexing, new names, no Huffman: every byte goes
/// on the wire exactly as given, which is the point.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        literal(&mut out, name.as_bytes(), value.as_bytes());
    }
    out
}

fn h2_payload(case: &str, host: &str) -> Vec<u8> {
    let legit = format!("/legit/{case}");
    let smuggled = format!("GET /smuggled/{case} HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let get = |path: &str| {
        vec![
            (":method", "GET".to_string()),
            (":scheme", "http".into()),
            (":authority", host.to_string()),
            (":path", path.to_string()),
        ]
    };
    let headers = |fields: &[(&str, String)], end_stream: bool| {
        let pairs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, 1, &hpack(&pairs))
    };
    let with = |extra: (&'static str, String)| {
        let mut f = get(&legit);
        f.push(extra);
        headers(&f, true)
    };
    let post = |length: usize, extra: Option<(&'static str, String)>, body: &str| {
        let mut f = get(&legit);
        f[0].1 = "POST".into();
        f.push(("content-length", length.to_string()));
        f.extend(extra);
        let mut out = headers(&f, false);
        out.extend(frame(DATA, END_STREAM, 1, body.as_bytes()));
        out
    };
    match case {
        "h2-control" => headers(&get(&legit), true),
        "h2-body-hides-request" => post(smuggled.len(), None, &smuggled),
        "h2-uppercase-name" => with(("X-Upper", "1".into())),
        "h2-connection-header" => with(("connection", "keep-alive".into())),
        "h2-transfer-encoding" => {
            let body = format!("0\r\n\r\n{smuggled}");
            post(
                body.len(),
                Some(("transfer-encoding", "chunked".into())),
                &body,
            )
        }
        "h2-te-gzip" => with(("te", "gzip".into())),
        "h2-missing-path" => {
            let mut f = get(&legit);
            f.pop();
            headers(&f, true)
        }
        "h2-pseudo-after-regular" => {
            let mut f = get(&legit);
            let path = f.pop().unwrap_or((":path", legit.clone()));
            f.push(("x-regular", "1".into()));
            f.push(path);
            headers(&f, true)
        }
        "h2-crlf-in-value" => with(("x-inject", format!("a\r\n\r\n{smuggled}"))),
        "h2-space-in-path" => headers(&get(&format!("{legit} /smuggled/{case}")), true),
        "h2-cl-mismatch" => post(0, None, &smuggled),
        "h2-huge-header" => {
            let mut f = get(&legit);
            f.push(("x-big", "a".repeat(128 * 1024)));
            let pairs: Vec<(&str, &str)> = f.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let block = hpack(&pairs);
            // SETTINGS_MAX_FRAME_SIZE is 16 KiB until the peer raises it.
            let pieces: Vec<&[u8]> = block.chunks(16 * 1024).collect();
            let mut out = Vec::new();
            for (i, piece) in pieces.iter().enumerate() {
                let last = if i + 1 == pieces.len() {
                    END_HEADERS
                } else {
                    0
                };
                out.extend(if i == 0 {
                    frame(HEADERS, END_STREAM | last, 1, piece)
                } else {
                    frame(CONTINUATION, last, 1, piece)
                });
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Sends the client preface, an empty SETTINGS and `frames` (stream 1), then reads frames
/// until stream 1 ends, is reset, the connection goes away or closes, or a deadline.
fn h2_exchange(addr: SocketAddr, frames: &[u8]) -> Result<Outcome> {
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    let mut out = Outcome::default();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend_from_slice(frames);
    if tcp.write_all(&hello).is_err() {
        out.closed = true;
        return Ok(out);
    }
    tcp.set_read_timeout(Some(Duration::from_millis(2500)))?;
    let mut r = BufReader::new(tcp.try_clone()?);
    loop {
        let mut head = [0u8; 9];
        if let Err(e) = r.read_exact(&mut head) {
            if !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                out.closed = true;
            }
            break;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).is_err() {
            out.closed = true;
            break;
        }
        let code = |p: &[u8], at: usize| {
            p.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0)
        };
        match kind {
            SETTINGS if flags & 1 == 0 => {
                let _ = tcp.write_all(&frame(SETTINGS, 1, 0, &[]));
            }
            HEADERS if stream == 1 => {
                if let Some(s) = status_of(&payload, flags) {
                    out.statuses.push(s);
                }
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            DATA if stream == 1 && flags & END_STREAM != 0 => break,
            RST_STREAM if stream == 1 => {
                out.reset = Some(code(&payload, 0));
                break;
            }
            GOAWAY => {
                out.goaway = Some(code(&payload, 4));
                break;
            }
            _ => {}
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
    Ok(out)
}

/// The `:status` of a response header block: its first field, which servers send first, as
/// an indexed static entry or a literal with a `:status` name (plain or Huffman digits).
fn status_of(block: &[u8], flags: u8) -> Option<u16> {
    let mut b = block;
    if flags & 0x8 != 0 {
        // PADDED
        let pad = usize::from(*b.first()?);
        b = b.get(1..b.len().checked_sub(pad)?)?;
    }
    if flags & 0x20 != 0 {
        // PRIORITY
        b = b.get(5..)?;
    }
    // Skip dynamic table size updates (001xxxxx).
    while b.first()? & 0xe0 == 0x20 {
        let mut i = 1;
        if b[0] & 0x1f == 0x1f {
            while b.get(i)? & 0x80 != 0 {
                i += 1;
            }
            i += 1;
        }
        b = &b[i..];
    }
    let first = *b.first()?;
    if first & 0x80 != 0 {
        return [200, 204, 206, 304, 400, 404, 500]
            .get(usize::from(first & 0x7f).checked_sub(8)?)
            .copied();
    }
    let index = if first & 0x40 != 0 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if !(8..=14).contains(&index) {
        return None;
    }
    let huffman = b.get(1)? & 0x80 != 0;
    let len = usize::from(b.get(1)? & 0x7f);
    let value = b.get(2..2 + len)?;
    let text = if huffman {
        huffman_digits(value)?
    } else {
        String::from_utf8_lossy(value).into_owned()
    };
    text.parse().ok()
}

/// Decodes a Huffman string made of digits (RFC 7541 Appendix B: `0`-`2` are 5-bit codes
/// 0-2, `3`-`9` are 6-bit codes 0x19-0x1f).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let (mut i, mut out) = (0, String::new());
    while out.len() < 3 && i + 5 <= bits.len() {
        let v5 = bits[i..i + 5].iter().fold(0u8, |a, b| a << 1 | b);
        if v5 < 3 {
            out.push(char::from(b'0' + v5));
            i += 5;
        } else {
            let v6 = v5 << 1 | *bits.get(i + 5)?;
            if !(0x19..=0x1f).contains(&v6) {
                return None;
            }
            out.push(char::from(b'3' + (v6 - 0x19)));
            i += 6;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Running the battery.

/// One case's result through one origin.
#[derive(Debug)]
pub struct CaseResult {
    /// What the client saw.
    pub answer: String,
    /// Requests that reached the upstream.
    pub forwarded: usize,
    /// Problems; empty when the case passed.
    pub problems: Vec<String>,
}

/// Runs `case` against `host` at the gateway's cleartext listener, with `counter` behind it.
pub fn run_case(case: &Case, listen: SocketAddr, host: &str, counter: &Counter) -> CaseResult {
    let before = counter.seen().len();
    let garbage_before = counter.garbage().len();
    let outcome = if case.h2 {
        h2_exchange(listen, &h2_payload(case.id, host))
    } else {
        h1_exchange(listen, &h1_payload(case.id, host))
    };
    // Give a forwarded request (or a smuggled one) time to arrive.
    std::thread::sleep(Duration::from_millis(150));
    let seen: Vec<Seen> = counter.seen().into_iter().skip(before).collect();
    let garbage: Vec<String> = counter.garbage().into_iter().skip(garbage_before).collect();
    let mut problems = Vec::new();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            problems.push(format!("client error: {e}"));
            Outcome::default()
        }
    };
    match case.expect {
        Expect::Reject | Expect::AtMostOne => {
            let two_xx = outcome.statuses.iter().any(|s| (200..300).contains(s));
            if case.expect == Expect::Reject && !outcome.rejected() {
                problems.push(format!("not rejected: {}", outcome.describe()));
            }
            if case.expect == Expect::AtMostOne && !outcome.rejected() && !two_xx {
                problems.push(format!("no clear answer: {}", outcome.describe()));
            }
        }
        Expect::Forward(n) => {
            let ok = outcome
                .statuses
                .iter()
                .filter(|s| (200..300).contains(*s))
                .count();
            if ok != n {
                problems.push(format!("expected {n} 2xx, got {}", outcome.describe()));
            }
        }
    }
    if seen.len() > case.expect.max_forwarded() {
        problems.push(format!(
            "{} requests reached the upstream: {:?}",
            seen.len(),
            seen.iter().map(|s| &s.target).collect::<Vec<_>>()
        ));
    }
    if let Expect::Forward(n) = case.expect {
        if seen.len() < n {
            problems.push(format!(
                "only {} of {n} requests reached the upstream",
                seen.len()
            ));
        }
    }
    for s in &seen {
        if s.target.contains("/smuggled") {
            problems.push(format!("SMUGGLED: the upstream received {}", s.target));
        }
        for a in &s.anomalies {
            problems.push(format!("{a} reached the upstream ({})", s.target));
        }
    }
    for g in garbage {
        problems.push(format!("the upstream received unparseable bytes: {g}"));
    }
    CaseResult {
        answer: outcome.describe(),
        forwarded: seen.len(),
        problems,
    }
}

/// The expectation column of the report.
pub fn expectation(case: &Case) -> String {
    case.expect.describe()
}
