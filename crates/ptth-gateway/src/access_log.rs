//! The access log and the per-request metrics: every public request, whatever listener it
//! came from, passes through `handle`, which counts its body bytes both ways and, when
//! the response body ends (or the client goes away), writes one line at target
//! `ptth::access` and counts the request in [`crate::metrics`].
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
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

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
        tracing::info!(
            target: "ptth::access",
            client = %self.client.addr,
            host = %host.unwrap_or(""),
            method = %seen.method,
            path = %seen.uri.path(),
            protocol = %self.protocol_name,
            status = self.status,
            bytes_in = received,
            bytes_out = self.sent,
            duration_ms = duration.as_secs_f64() * 1000.0,
            complete,
            mechanism = conn.map(|c| tracing::field::display(c.mechanism.name())),
            conn = conn.map(|c| c.id),
            grant = conn.map(|c| tracing::field::display(&c.admission.identity)),
            reason = self.reason.as_ref().map(|r| tracing::field::display(&r.0)),
            "request"
        );
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

    #[test]
    fn ports_come_off_hosts() {
        assert_eq!(without_port("app.example:8080"), "app.example");
        assert_eq!(without_port("app.example"), "app.example");
        assert_eq!(without_port("[::1]:80"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
