//! One TCP flow carried in capsules: a byte socket spliced to a stream whose bytes are RFC
//! 9297 capsules, TCP payload in `DATA` and the end of a direction in `FINAL_DATA`
//! (draft-ietf-httpbis-connect-tcp §8.3, which draft-rosomakho-masque-reverse-connect
//! reuses: "TCP payload is carried in DATA capsules").
//!
//! Both ends of reverse CONNECT use it: the gateway splices a public TCP connection to a
//! `connect-accept` stream, the origin splices that stream to its local service. It knows
//! nothing of HTTP: the stream is any `AsyncRead + AsyncWrite` (an HTTP/2 extended CONNECT
//! stream today; an HTTP/3 one or an HTTP/1.1 upgraded connection carry the same bytes).
//!
//! Memory per flow is bounded: one read buffer per direction ([`FlowOptions::chunk`] and
//! the decoder's bound on non-`DATA` capsules, which are skipped).

use bytes::BytesMut;
use ptth_core::{encode_capsule_header, CapsuleDecoder, CapsuleType, Decoded};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How a flow is run.
#[derive(Debug, Clone, Copy)]
pub struct FlowOptions {
    /// The flow ends when neither direction moved a byte for this long.
    pub idle_timeout: Duration,
    /// The most TCP payload read at once (one `DATA` capsule per read).
    pub chunk: usize,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(600),
            chunk: 64 * 1024,
        }
    }
}

/// The largest capsule other than `DATA`/`FINAL_DATA` a flow stream takes (such capsules
/// are skipped; a longer one is the peer's error).
pub const MAX_OTHER_CAPSULE: usize = 16 * 1024;

/// How a flow ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowEnd {
    /// Both directions ended (a FIN each way, or the stream's end).
    Closed,
    /// No byte moved for [`FlowOptions::idle_timeout`].
    Idle,
    /// The capsule stream failed or carried malformed capsules.
    Stream(String),
    /// The byte socket failed.
    Socket(String),
}

impl std::fmt::Display for FlowEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowEnd::Closed => f.write_str("closed"),
            FlowEnd::Idle => f.write_str("idle timeout"),
            FlowEnd::Stream(e) => write!(f, "stream: {e}"),
            FlowEnd::Socket(e) => write!(f, "socket: {e}"),
        }
    }
}

/// What a flow moved and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    /// Payload bytes read from the socket and sent in `DATA` capsules.
    pub to_stream: u64,
    /// Payload bytes received in `DATA` capsules and written to the socket.
    pub to_socket: u64,
    /// Why it ended.
    pub end: FlowEnd,
}

/// Room kept before a read's payload for the capsule header (two varints of 8 bytes).
const HEADER_ROOM: usize = 16;

/// Splices `socket` (raw bytes) to `stream` (capsules) until both directions end, one
/// fails, or the flow is idle for `options.idle_timeout`.
pub async fn splice<S, T>(socket: S, stream: T, options: FlowOptions) -> FlowReport
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let (mut sr, mut sw) = tokio::io::split(socket);
    let (mut cr, mut cw) = tokio::io::split(stream);
    let to_stream = AtomicU64::new(0);
    let to_socket = AtomicU64::new(0);
    let chunk = options.chunk.max(1);
    let up = async {
        let mut buf = vec![0u8; HEADER_ROOM + chunk];
        let mut head = BytesMut::with_capacity(HEADER_ROOM);
        loop {
            let n = sr
                .read(&mut buf[HEADER_ROOM..])
                .await
                .map_err(|e| FlowEnd::Socket(e.to_string()))?;
            touch();
            head.clear();
            if n == 0 {
                encode_capsule_header(CapsuleType::FINAL_DATA, 0, &mut head);
                cw.write_all(&head)
                    .await
                    .map_err(|e| FlowEnd::Stream(e.to_string()))?;
                cw.shutdown()
                    .await
                    .map_err(|e| FlowEnd::Stream(e.to_string()))?;
                return Ok::<(), FlowEnd>(());
            }
            encode_capsule_header(CapsuleType::DATA, n as u64, &mut head);
            // The header goes right before the payload: one write, one DATA frame.
            let at = HEADER_ROOM - head.len();
            buf[at..HEADER_ROOM].copy_from_slice(&head);
            cw.write_all(&buf[at..HEADER_ROOM + n])
                .await
                .map_err(|e| FlowEnd::Stream(e.to_string()))?;
            cw.flush()
                .await
                .map_err(|e| FlowEnd::Stream(e.to_string()))?;
            to_stream.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let down = async {
        let mut decoder = CapsuleDecoder::new(MAX_OTHER_CAPSULE);
        let mut buf = BytesMut::with_capacity(chunk);
        loop {
            while let Some(item) = decoder
                .decode(&mut buf)
                .map_err(|e| FlowEnd::Stream(e.to_string()))?
            {
                if let Decoded::Data { payload, fin } = item {
                    sw.write_all(&payload)
                        .await
                        .map_err(|e| FlowEnd::Socket(e.to_string()))?;
                    to_socket.fetch_add(payload.len() as u64, Ordering::Relaxed);
                    if fin {
                        sw.shutdown()
                            .await
                            .map_err(|e| FlowEnd::Socket(e.to_string()))?;
                        return Ok::<(), FlowEnd>(());
                    }
                }
                // Any other capsule is skipped (RFC 9297 §3.2: unknown types are ignored).
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(chunk);
            }
            let n = cr
                .read_buf(&mut buf)
                .await
                .map_err(|e| FlowEnd::Stream(e.to_string()))?;
            touch();
            if n == 0 {
                // The stream ended: inside a capsule is malformed (RFC 9297 §3.3); between
                // capsules without FINAL_DATA, the peer closed the flow.
                decoder
                    .finish(&buf)
                    .map_err(|e| FlowEnd::Stream(e.to_string()))?;
                let _ = sw.shutdown().await;
                return Ok(());
            }
        }
    };
    let tick = (options.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let idle_ms = options.idle_timeout.as_millis() as u64;
    let idle = async {
        loop {
            tokio::time::sleep(tick).await;
            let now = start.elapsed().as_millis() as u64;
            if now.saturating_sub(last.load(Ordering::Relaxed)) >= idle_ms {
                return FlowEnd::Idle;
            }
        }
    };
    tokio::pin!(up, down, idle);
    let (mut up_done, mut down_done) = (false, false);
    let end = loop {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(e) => break e,
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(e) => break e,
            },
            e = &mut idle => break e,
        }
        if up_done && down_done {
            break FlowEnd::Closed;
        }
    };
    FlowReport {
        to_stream: to_stream.load(Ordering::Relaxed),
        to_socket: to_socket.load(Ordering::Relaxed),
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_cross_in_data_capsules_and_fins_close_each_direction() {
        let (socket, mut app) = tokio::io::duplex(1 << 16);
        let (stream, mut peer) = tokio::io::duplex(1 << 16);
        let flow = tokio::spawn(splice(socket, stream, FlowOptions::default()));
        app.write_all(b"hello").await.unwrap();
        // DATA (0x2028d7f2, a 4-byte varint) of length 5, then the payload.
        let mut got = [0u8; 10];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(
            &got[..],
            &[0xa0, 0x28, 0xd7, 0xf2, 0x05, b'h', b'e', b'l', b'l', b'o']
        );
        // The peer answers in a DATA capsule, then FINAL_DATA of length 0.
        peer.write_all(&[
            0xa0, 0x28, 0xd7, 0xf2, 0x02, b'o', b'k', 0xa0, 0x28, 0xd7, 0xf3, 0x00,
        ])
        .await
        .unwrap();
        let mut answer = Vec::new();
        app.shutdown().await.unwrap();
        app.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"ok");
        let mut fin = [0u8; 5];
        peer.read_exact(&mut fin).await.unwrap();
        assert_eq!(fin, [0xa0, 0x28, 0xd7, 0xf3, 0x00]);
        let report = flow.await.unwrap();
        assert_eq!(report.end, FlowEnd::Closed);
        assert_eq!((report.to_stream, report.to_socket), (5, 2));
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_capsule_is_the_streams_error() {
        let (socket, _app) = tokio::io::duplex(1 << 16);
        let (stream, mut peer) = tokio::io::duplex(1 << 16);
        let flow = tokio::spawn(splice(socket, stream, FlowOptions::default()));
        peer.write_all(&[0xa0, 0x28, 0xd7, 0xf2, 0x09, b'x'])
            .await
            .unwrap();
        drop(peer);
        let report = flow.await.unwrap();
        assert!(
            matches!(report.end, FlowEnd::Stream(ref e) if e.contains("ended inside")),
            "{:?}",
            report.end
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_times_out() {
        let (socket, _app) = tokio::io::duplex(1 << 16);
        let (stream, _peer) = tokio::io::duplex(1 << 16);
        let options = FlowOptions {
            idle_timeout: Duration::from_secs(5),
            ..FlowOptions::default()
        };
        let report = splice(socket, stream, options).await;
        assert_eq!(report.end, FlowEnd::Idle);
    }
}
