//! Gateway side: `OriginFrameTap` copies the first ORIGIN frame out of the bytes read from a reverse-HTTP origin.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::{FrameHeader, OriginFrame, OriginFrameError};

/// Flags RFC 8336 Appendix A makes a receiver ignore the frame for.
///
/// RFC 8336 Appendix A, step 4: "If any of the flags 0x1, 0x2, 0x4, or 0x8 are
/// set, ignore the frame and stop processing."
const ORIGIN_IGNORE_FLAGS: u8 = 0x0f;

type Outcome = Result<OriginFrame, OriginFrameError>;

/// Wraps the gateway's connection to an origin and reports the origin's ORIGIN frame.
///
/// The origin is the HTTP/2 server on this connection, so the bytes read start
/// directly with frames (no client connection preface). The tap parses frame
/// headers of everything read until it has either captured the first ORIGIN
/// frame on stream 0, or given up; after that it is a plain pass-through.
/// Bytes reach the reader unchanged: h2 ignores frames of unknown type
/// (h2 0.4 `codec/framed_read.rs`, `Kind::Unknown => Ok(None)`), as RFC 9113
/// §4.1 requires. Writes are passed through untouched.
///
/// ```text
///   Watching ──ORIGIN on stream 0──────────────► Done (Ok(frame))
///      │ ──malformed / too large ORIGIN────────► Done (Err)
///      │ ──max_frames_to_watch other frames────► Done (Err NotSentImmediately)
///      └──EOF / read error─────────────────────► Done (Err)
/// ```
///
/// The watch does not time out by itself; wrap [`OriginFrameWatch::wait`] in
/// a timeout if the origin might stay silent.
#[derive(Debug)]
pub struct OriginFrameTap<IO> {
    io: IO,
    /// `Some` while still looking for the ORIGIN frame.
    watching: Option<Watching>,
}

#[derive(Debug)]
struct Watching {
    scanner: OriginScanner,
    tx: oneshot::Sender<Outcome>,
}

/// Resolves once the [`OriginFrameTap`] has seen the ORIGIN frame, or has given up.
#[derive(Debug)]
pub struct OriginFrameWatch {
    rx: oneshot::Receiver<Outcome>,
}

impl OriginFrameWatch {
    /// Waits for the outcome; [`OriginFrameError::TapDropped`] if the tap went away first.
    pub async fn wait(self) -> Result<OriginFrame, OriginFrameError> {
        match self.rx.await {
            Ok(outcome) => outcome,
            Err(_) => Err(OriginFrameError::TapDropped),
        }
    }
}

impl<IO> OriginFrameTap<IO> {
    /// Wraps `io`; the ORIGIN frame must come within the first `max_frames_to_watch` frames.
    ///
    /// Accepts ORIGIN payloads up to [`OriginFrame::MAX_PAYLOAD_LEN`], the frame
    /// size an HTTP/2 client accepts unless it advertised more. With
    /// `max_frames_to_watch == 0` the watch fails at once.
    pub fn new(io: IO, max_frames_to_watch: usize) -> (Self, OriginFrameWatch) {
        Self::with_max_payload_len(io, max_frames_to_watch, OriginFrame::MAX_PAYLOAD_LEN)
    }

    /// Like [`Self::new`], with an explicit limit on the ORIGIN payload it buffers.
    ///
    /// Use this when the gateway advertised a SETTINGS_MAX_FRAME_SIZE above 16,384.
    pub fn with_max_payload_len(
        io: IO,
        max_frames_to_watch: usize,
        max_payload_len: usize,
    ) -> (Self, OriginFrameWatch) {
        let (tx, rx) = oneshot::channel();
        let mut tap = Self {
            io,
            watching: Some(Watching {
                scanner: OriginScanner::new(max_frames_to_watch, max_payload_len),
                tx,
            }),
        };
        if max_frames_to_watch == 0 {
            tap.finish(Err(OriginFrameError::NotSentImmediately { frames_seen: 0 }));
        }
        (tap, OriginFrameWatch { rx })
    }

    /// Whether the tap is still parsing (has neither found the ORIGIN frame nor given up).
    pub fn is_watching(&self) -> bool {
        self.watching.is_some()
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The wrapped IO, mutably. Reading from it directly bypasses the tap.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// Unwraps the IO; a pending watch then resolves with [`OriginFrameError::TapDropped`].
    pub fn into_inner(self) -> IO {
        self.io
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(watching) = self.watching.take() {
            match &outcome {
                Ok(frame) => {
                    tracing::debug!(entries = frame.entries().len(), "ORIGIN frame received")
                }
                Err(error) => tracing::debug!(%error, "no usable ORIGIN frame"),
            }
            // The watch may have been dropped; nobody is waiting then.
            let _ = watching.tx.send(outcome);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for OriginFrameTap<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(watching) = &mut this.watching else {
            // Transparent once the ORIGIN frame has been seen or given up on.
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let result = ready!(Pin::new(&mut this.io).poll_read(cx, buf));
        let outcome = match &result {
            Err(error) => Some(Err(OriginFrameError::Io { kind: error.kind() })),
            Ok(()) => {
                let new = buf.filled().get(before..).unwrap_or_default();
                if new.is_empty() && had_room {
                    Some(Err(watching.scanner.eof_error()))
                } else {
                    watching.scanner.handle_bytes(new)
                }
            }
        };
        if let Some(outcome) = outcome {
            this.finish(outcome);
        }
        Poll::Ready(result)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for OriginFrameTap<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Sans-IO frame scanner behind [`OriginFrameTap`]: fed the bytes read, in any split.
#[derive(Debug)]
pub(super) struct OriginScanner {
    state: ScanState,
    frames_seen: usize,
    max_frames: usize,
    max_payload_len: usize,
}

#[derive(Debug)]
enum ScanState {
    /// Collecting a 9-byte frame header.
    Header {
        buf: [u8; FrameHeader::LEN],
        filled: usize,
    },
    /// Skipping the payload of a frame that is not the ORIGIN frame.
    Skip { remaining: usize },
    /// Collecting the payload of the ORIGIN frame.
    Collect { payload: Vec<u8>, remaining: usize },
}

impl ScanState {
    fn header() -> Self {
        Self::Header {
            buf: [0; FrameHeader::LEN],
            filled: 0,
        }
    }
}

impl OriginScanner {
    pub(super) fn new(max_frames: usize, max_payload_len: usize) -> Self {
        Self {
            state: ScanState::header(),
            frames_seen: 0,
            max_frames,
            max_payload_len,
        }
    }

    /// Consumes bytes read from the peer; `Some` once the outcome is known.
    ///
    /// After `Some` the scanner must not be fed again (the tap drops it).
    pub(super) fn handle_bytes(&mut self, mut bytes: &[u8]) -> Option<Outcome> {
        while !bytes.is_empty() {
            match &mut self.state {
                ScanState::Header { buf, filled } => {
                    let (head, tail) = split_at_most(bytes, FrameHeader::LEN - *filled);
                    if let Some(dst) = buf.get_mut(*filled..*filled + head.len()) {
                        dst.copy_from_slice(head);
                    }
                    *filled += head.len();
                    bytes = tail;
                    if *filled == FrameHeader::LEN {
                        let header = FrameHeader::parse(buf);
                        if let Some(outcome) = self.handle_header(header) {
                            return Some(outcome);
                        }
                    }
                }
                ScanState::Skip { remaining } => {
                    let (head, tail) = split_at_most(bytes, *remaining);
                    *remaining -= head.len();
                    bytes = tail;
                    if *remaining == 0 {
                        self.state = ScanState::header();
                    }
                }
                ScanState::Collect { payload, remaining } => {
                    let (head, tail) = split_at_most(bytes, *remaining);
                    *remaining -= head.len();
                    payload.extend_from_slice(head);
                    bytes = tail;
                    if *remaining == 0 {
                        return Some(OriginFrame::parse_payload(payload));
                    }
                }
            }
        }
        None
    }

    /// The error to report when the stream ends before an outcome.
    pub(super) fn eof_error(&self) -> OriginFrameError {
        OriginFrameError::ConnectionClosed {
            frames_seen: self.frames_seen,
        }
    }

    fn handle_header(&mut self, header: FrameHeader) -> Option<Outcome> {
        let len = header.payload_len();
        // RFC 8336 Appendix A, step 3: "If the frame occurs upon any stream
        // except stream 0, ignore the frame and stop processing." Step 4 does
        // the same for flags 0x1 to 0x8 (ORIGIN_IGNORE_FLAGS).
        let is_origin = header.frame_type() == OriginFrame::FRAME_TYPE
            && header.stream_id() == 0
            && header.flags() & ORIGIN_IGNORE_FLAGS == 0;
        if is_origin {
            if len > self.max_payload_len {
                return Some(Err(OriginFrameError::PayloadTooLarge {
                    len,
                    max: self.max_payload_len,
                }));
            }
            if len == 0 {
                return Some(OriginFrame::parse_payload(&[]));
            }
            self.state = ScanState::Collect {
                payload: Vec::with_capacity(len),
                remaining: len,
            };
            return None;
        }
        self.frames_seen += 1;
        // draft-bt-httpbis-reverse-http: "The origin MUST immediately send an ORIGIN frame" after its
        // SETTINGS, so a connection that sends other frames instead is not waited on.
        if self.frames_seen >= self.max_frames {
            return Some(Err(OriginFrameError::NotSentImmediately {
                frames_seen: self.frames_seen,
            }));
        }
        self.state = if len == 0 {
            ScanState::header()
        } else {
            ScanState::Skip { remaining: len }
        };
        None
    }
}

/// Splits off at most `n` bytes from the front of `bytes`.
fn split_at_most(bytes: &[u8], n: usize) -> (&[u8], &[u8]) {
    bytes.split_at(n.min(bytes.len()))
}

/// Fuzz entry: feeds `data` to a scanner in chunks of `chunk` bytes.
pub(super) fn fuzz_scanner(data: &[u8], chunk: usize) {
    let mut scanner = OriginScanner::new(8, OriginFrame::MAX_PAYLOAD_LEN);
    for piece in data.chunks(chunk.max(1)) {
        if scanner.handle_bytes(piece).is_some() {
            return;
        }
    }
}
