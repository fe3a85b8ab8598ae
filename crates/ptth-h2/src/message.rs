//! What the client and the server side of this crate both do to an HTTP/2 message: the
//! fields HTTP/2 forbids removed before sending, and a received body read from its stream.

use crate::reversed::BoxError;
use bytes::Bytes;
use h2::RecvStream;
use http::header::{self, HeaderMap, HeaderName};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// RFC 7230-era fields that HTTP/2 forbids (RFC 9113 §8.2.2: "An endpoint MUST NOT generate
/// an HTTP/2 message containing connection-specific header fields"), and those `Connection`
/// names; `TE` only as "trailers".
pub(crate) fn strip_connection_fields(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (a standard name compares
    // as a number) instead of six hashed look-ups, which cost a proxied request about
    // 1 000 instructions.
    let connection_specific = |name: &HeaderName| {
        name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::TE
            || name == "keep-alive"
            || name == "proxy-connection"
    };
    if !headers.keys().any(connection_specific) {
        return;
    }
    for name in [
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
    if let Some(connection) = headers.remove(header::CONNECTION) {
        if let Ok(names) = connection.to_str() {
            for name in names.split(',') {
                headers.remove(name.trim());
            }
        }
    }
}

/// The `content-length` of a message, when it has exactly one valid value.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()?.parse().ok()
}

/// A message body read from its stream (a response's at the client, a request's at the
/// server). Each data frame's window is given back to the peer as the consumer takes it,
/// so a slow reader slows the peer instead of this end buffering (at most the stream
/// window is ever held); then its trailers.
pub(crate) struct RecvBody {
    recv: RecvStream,
    /// What `content-length` says is left, for the size hint.
    remaining: Option<u64>,
    data_done: bool,
}

impl RecvBody {
    /// The body of a message whose fields say `remaining` octets follow (`content-length`).
    pub(crate) fn new(recv: RecvStream, remaining: Option<u64>) -> Self {
        Self {
            recv,
            remaining,
            data_done: false,
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(r) = this.remaining.as_mut() {
                        *r = r.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(Box::new(e)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
