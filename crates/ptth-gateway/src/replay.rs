//! A public request body the gateway can send a second time: the first bytes of it are
//! kept while the request is in flight, so a request the origin provably did not process
//! (a refused stream) can be replayed on another connection.
//!
//! RFC 9113 §6.8: streams "with identifiers higher than the last stream identifier" of a
//! GOAWAY "were not processed ... and can be safely retried"; §8.7: "Any request that was
//! sent on the reset stream can be safely retried" after RST_STREAM REFUSED_STREAM; RFC 9114
//! §4.1.1: H3_REQUEST_REJECTED "indicates to the client that the request was not processed".
//! Such a request's body may already be partly spent by the time the refusal arrives:
//! [`Replayable`] keeps what was read of it, up to `--retry-body-limit` bytes, and hands the
//! next attempt a body that yields those bytes again and then the rest of the public body.
//!
//! The public body is read once, by the current attempt only: an attempt that was
//! superseded fails its next read (so its stream is reset, never ended as if complete),
//! and nothing it held is lost. The copy is bounded by the limit: the octets are copied
//! into a buffer of the gateway's own, rather than kept as slices that would hold the
//! HTTP stack's larger read buffers alive. It is dropped, and the request stops being
//! replayable, when the body outgrows it or when the response head arrives
//! ([`Replayable::release`]).

use crate::message::{Body, BoxError};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

/// What a superseded attempt's body reads: its stream was refused and the request went on
/// elsewhere.
const SUPERSEDED: &str =
    "the request was replayed on another origin connection; this attempt is abandoned";

/// The proxy's handle on a replayable request body.
#[derive(Debug)]
pub(crate) struct Replayable {
    shared: Arc<Mutex<State>>,
}

/// One attempt's body: what the origin connection reads.
#[derive(Debug)]
pub(crate) struct Attempt {
    shared: Arc<Mutex<State>>,
    attempt: u64,
}

#[derive(Debug)]
struct State {
    /// The public body; `None` once it ended.
    source: Option<Body>,
    /// A copy of the data read from the public body: all of it while the request is
    /// replayable; afterwards only what the current attempt has still to send.
    kept: BytesMut,
    /// How many octets of `kept` the current attempt has sent.
    cursor: usize,
    /// The public body's trailers, once read (they are its last frame).
    trailers: Option<HeaderMap>,
    /// Whether the current attempt has sent the trailers.
    trailers_sent: bool,
    /// The most a copy may hold (`--retry-body-limit`).
    limit: usize,
    /// Whether `kept` holds every octet read so far, so a new attempt can start over.
    replayable: bool,
    /// The current attempt; older ones are superseded.
    attempt: u64,
}

impl State {
    /// Drops the chunks the current attempt has sent and stops copying: the request can no
    /// longer be replayed, and nothing the current attempt still has to send is lost.
    fn forget(&mut self) {
        self.replayable = false;
        if self.cursor >= self.kept.len() {
            // Nothing left to send: the buffer itself goes.
            self.kept = BytesMut::new();
        } else {
            let _sent = self.kept.split_to(self.cursor);
        }
        self.cursor = 0;
    }
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    // A poisoned lock only means a poll panicked; the state is consistent between polls.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Replayable {
    /// Wraps a public body, keeping up to `limit` octets of it, and returns the handle and
    /// the first attempt's body.
    pub(crate) fn new(body: Body, limit: usize) -> (Self, Attempt) {
        let shared = Arc::new(Mutex::new(State {
            source: Some(body),
            kept: BytesMut::new(),
            cursor: 0,
            trailers: None,
            trailers_sent: false,
            limit,
            replayable: true,
            attempt: 0,
        }));
        let first = Attempt {
            shared: shared.clone(),
            attempt: 0,
        };
        (Self { shared }, first)
    }

    /// A body for a new attempt, starting over from the first octet, if every octet read so
    /// far is kept; the previous attempt is superseded. `None` once the body outgrew the
    /// limit, failed, or was released.
    pub(crate) fn retry(&self) -> Option<Attempt> {
        let mut st = lock(&self.shared);
        if !st.replayable {
            return None;
        }
        st.attempt += 1;
        st.cursor = 0;
        st.trailers_sent = false;
        Some(Attempt {
            shared: self.shared.clone(),
            attempt: st.attempt,
        })
    }

    /// The origin answered: the request will not be sent again, so the copy goes (what the
    /// current attempt has still to send of it stays).
    pub(crate) fn release(&self) {
        lock(&self.shared).forget();
    }

    /// Octets kept now (for tests of the bound).
    #[cfg(test)]
    fn kept(&self) -> usize {
        lock(&self.shared).kept.len()
    }
}

impl http_body::Body for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut st = lock(&self.shared);
        if st.attempt != self.attempt {
            return Poll::Ready(Some(Err(SUPERSEDED.into())));
        }
        // What an earlier attempt read, again, in one piece.
        if st.cursor < st.kept.len() {
            let chunk = if st.replayable {
                let chunk = Bytes::copy_from_slice(st.kept.get(st.cursor..).unwrap_or_default());
                st.cursor = st.kept.len();
                chunk
            } else {
                // Released: the rest goes out and the copy with it.
                let rest = std::mem::take(&mut st.kept).freeze();
                st.cursor = 0;
                rest
            };
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(source) = st.source.as_mut() else {
            if !st.trailers_sent {
                st.trailers_sent = true;
                if let Some(t) = st.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        };
        let frame = match ready!(Pin::new(source).poll_frame(cx)) {
            None => {
                st.source = None;
                st.trailers_sent = true;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                // The public client's body failed: this request cannot be sent whole again.
                st.source = None;
                st.forget();
                return Poll::Ready(Some(Err(e)));
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            if st.replayable && st.kept.len() + data.len() <= st.limit {
                st.kept.extend_from_slice(data);
                st.cursor = st.kept.len();
            } else if st.replayable {
                st.forget();
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            // Trailers end a body: kept for a replay, sent now.
            st.trailers = Some(trailers.clone());
            st.trailers_sent = true;
            st.source = None;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        let st = lock(&self.shared);
        st.attempt == self.attempt
            && st.cursor >= st.kept.len()
            && (st.trailers_sent || st.trailers.is_none())
            && st.source.as_ref().is_none_or(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let st = lock(&self.shared);
        if st.attempt != self.attempt {
            return SizeHint::default();
        }
        let pending = st.kept.len().saturating_sub(st.cursor) as u64;
        let mut hint = match &st.source {
            Some(s) => s.size_hint(),
            None => SizeHint::with_exact(0),
        };
        // The upper bound first: `set_lower` refuses a lower bound above the upper one.
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(pending));
        }
        hint.set_lower(hint.lower().saturating_add(pending));
        hint
    }
}

/// An attempt's body in the one forwarded body type.
pub(crate) fn boxed(attempt: Attempt) -> Body {
    attempt.boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use std::collections::VecDeque;

    /// A public body yielding the given frames, then an error if `fail` is set.
    struct Frames {
        frames: VecDeque<Frame<Bytes>>,
        fail: bool,
    }

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.frames.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None if self.fail => {
                    self.fail = false;
                    Poll::Ready(Some(Err("public client went away".into())))
                }
                None => Poll::Ready(None),
            }
        }
    }

    fn public(chunks: &[&'static [u8]], trailers: bool) -> Body {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c)))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-sum", http::HeaderValue::from_static("7"));
            frames.push_back(Frame::trailers(t));
        }
        Frames {
            frames,
            fail: false,
        }
        .boxed_unsync()
    }

    async fn next(a: &mut Attempt) -> Option<Result<Frame<Bytes>, BoxError>> {
        std::future::poll_fn(|cx| Pin::new(&mut *a).poll_frame(cx)).await
    }

    async fn data(a: &mut Attempt) -> Bytes {
        next(a).await.unwrap().unwrap().into_data().unwrap()
    }

    async fn all(a: Attempt) -> (Vec<u8>, Option<HeaderMap>) {
        let c = a.collect().await.unwrap();
        let t = c.trailers().cloned();
        (c.to_bytes().to_vec(), t)
    }

    #[tokio::test]
    async fn a_replay_yields_every_octet_once_and_the_superseded_attempt_stops() {
        let (handle, mut first) = Replayable::new(public(&[b"ab", b"cd", b"ef"], true), 64);
        assert_eq!(first.size_hint().exact(), None);
        assert_eq!(data(&mut first).await, "ab");
        assert_eq!(data(&mut first).await, "cd");
        // Refused here: the next attempt starts over, then reads on from the public body.
        let second = handle.retry().expect("4 octets are within the limit");
        assert!(
            next(&mut first).await.unwrap().is_err(),
            "superseded: fails"
        );
        assert!(!first.is_end_stream(), "never ends as if complete");
        let (bytes, trailers) = all(second).await;
        assert_eq!(bytes, b"abcdef");
        assert_eq!(trailers.unwrap()["x-sum"], "7");
        // A third attempt after the whole body was read still gets all of it.
        let third = handle.retry().unwrap();
        assert_eq!(third.size_hint().exact(), Some(6));
        let (bytes, trailers) = all(third).await;
        assert_eq!(bytes, b"abcdef");
        assert!(trailers.is_some());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_replayable_and_keeps_nothing() {
        let (handle, mut first) = Replayable::new(public(&[b"abcd", b"efgh", b"ij"], false), 6);
        assert_eq!(data(&mut first).await, "abcd");
        assert_eq!(handle.kept(), 4);
        assert_eq!(data(&mut first).await, "efgh");
        assert_eq!(
            handle.kept(),
            0,
            "the copy goes as soon as it would outgrow the limit"
        );
        assert!(handle.retry().is_none());
        assert_eq!(data(&mut first).await, "ij");
        assert!(next(&mut first).await.is_none());
    }

    #[tokio::test]
    async fn release_keeps_what_the_current_attempt_has_still_to_send() {
        let (handle, mut first) = Replayable::new(public(&[b"ab", b"cd", b"ef"], false), 64);
        assert_eq!(data(&mut first).await, "ab");
        assert_eq!(data(&mut first).await, "cd");
        assert_eq!(handle.kept(), 4);
        let second = handle.retry().unwrap();
        // The second connection's origin answered before its body was read at all.
        handle.release();
        assert!(handle.retry().is_none());
        assert_eq!(
            handle.kept(),
            4,
            "what the second attempt has to send stays"
        );
        let (bytes, _) = all(second).await;
        assert_eq!(bytes, b"abcdef");
        assert_eq!(handle.kept(), 0);
        // Released while nothing is left to send: the copy goes at once.
        let (handle, mut first) = Replayable::new(public(&[b"ab", b"cd"], false), 64);
        assert_eq!(data(&mut first).await, "ab");
        handle.release();
        assert_eq!(handle.kept(), 0);
        assert_eq!(data(&mut first).await, "cd");
        assert_eq!(handle.kept(), 0, "nothing is copied after the release");
    }

    #[tokio::test]
    async fn a_failed_public_body_is_not_replayable() {
        let body = Frames {
            frames: [Frame::data(Bytes::from_static(b"ab"))].into(),
            fail: true,
        }
        .boxed_unsync();
        let (handle, mut first) = Replayable::new(body, 64);
        assert_eq!(data(&mut first).await, "ab");
        assert!(next(&mut first).await.unwrap().is_err());
        assert!(handle.retry().is_none());
    }
}
