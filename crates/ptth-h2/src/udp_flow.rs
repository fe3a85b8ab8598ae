//! One UDP flow carried as HTTP datagrams: datagrams pumped both ways between a datagram
//! socket side and a datagram carrier, RFC 9298 §5 payloads (Context ID 0, then the UDP
//! payload) in RFC 9297 §3.5 `DATAGRAM` capsules on a byte stream (HTTP/2 has no QUIC
//! DATAGRAM frames; draft-rosomakho-masque-reverse-connect: UDP payload is carried as in
//! RFC 9298).
//!
//! Both ends of reverse CONNECT use it: the gateway pumps one public client's datagrams
//! (its port mapping's socket, [`DatagramSource`]/[`DatagramSink`]) to a `connect-accept`
//! stream, the origin pumps that stream to a connected `UdpSocket` to its local service.
//!
//! ```text
//! socket side ── recv ─▶ bounded queue (full: drop, count) ─▶ carrier sink
//! carrier source ── recv ─▶ socket sink (a failed send: drop, count)
//! ```
//!
//! The two directions run side by side: a slow carrier never stops the socket side being
//! read (its datagrams are dropped and counted instead, as UDP would), and a slow socket
//! never stops the carrier. Both sides are traits: [`capsule_carrier`] makes the carrier
//! pair for any `AsyncRead + AsyncWrite` stream; [`datagram_carrier`] makes it for an
//! HTTP/3 request stream whose connection negotiated HTTP datagrams ([`HttpDatagrams`]):
//! each UDP payload goes as a QUIC DATAGRAM frame when it fits one, as a capsule on the
//! stream when it does not, and both forms are received at once.

use crate::flow::FlowEnd;
use bytes::{BufMut, Bytes, BytesMut};
use ptth_core::{
    encode_capsule_header, CapsuleDecoder, CapsuleType, Decoded, UdpProxyingPayload,
    MAX_DATAGRAM_CAPSULE,
};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Where datagrams come from.
pub trait DatagramSource: Send {
    /// The next datagram; `Ok(None)` when the side has ended.
    fn recv(&mut self) -> impl Future<Output = io::Result<Option<Bytes>>> + Send;

    /// Datagrams this source received and dropped because they were not UDP payloads
    /// (RFC 9298 §5: an unknown Context ID); 0 for a socket.
    fn dropped_unknown(&self) -> u64 {
        0
    }

    /// Datagrams that arrived in QUIC DATAGRAM frames (the rest came in capsules, or from
    /// a socket); 0 for anything but [`DatagramCarrierSource`].
    fn received_as_quic(&self) -> u64 {
        0
    }

    /// Datagrams the carrier lost before this source read them (its receive queue was
    /// full); 0 for a socket or a stream.
    fn dropped_overflow(&self) -> u64 {
        0
    }
}

/// Where datagrams go.
pub trait DatagramSink: Send {
    /// Sends one datagram. An error on a socket is that datagram's loss (counted); on a
    /// carrier it ends the flow.
    fn send(&mut self, datagram: Bytes) -> impl Future<Output = io::Result<()>> + Send;

    /// The carrier has nothing more to send: close its direction.
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Datagrams sent as QUIC DATAGRAM frames; 0 for anything but [`DatagramCarrierSink`].
    fn sent_as_quic(&self) -> u64 {
        0
    }
}

/// The largest UDP payload (IPv6 jumbograms aside): what a socket read buffer holds.
pub const MAX_UDP_PAYLOAD: usize = 65_535;

/// A connected UDP socket as a source (the origin's socket to its local service).
#[derive(Debug)]
pub struct UdpSource {
    socket: Arc<UdpSocket>,
    buf: Vec<u8>,
}

impl UdpSource {
    /// Reads datagrams from `socket` (connected: only its peer's datagrams arrive).
    pub fn new(socket: Arc<UdpSocket>) -> Self {
        Self {
            socket,
            buf: vec![0; MAX_UDP_PAYLOAD],
        }
    }
}

impl DatagramSource for UdpSource {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.socket.recv(&mut self.buf).await {
                Ok(n) => return Ok(Some(Bytes::copy_from_slice(&self.buf[..n]))),
                // A connected UDP socket reports an earlier datagram's ICMP "port
                // unreachable" on the next call: the service was not there for that one.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A connected UDP socket as a sink.
#[derive(Debug, Clone)]
pub struct UdpSink(pub Arc<UdpSocket>);

impl DatagramSink for UdpSink {
    async fn send(&mut self, datagram: Bytes) -> io::Result<()> {
        self.0.send(&datagram).await.map(drop)
    }
}

/// Datagrams handed over by a task that owns the socket (the gateway's port mapping
/// reads one public socket for every client and routes each datagram to its flow).
impl DatagramSource for mpsc::Receiver<Bytes> {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        Ok(mpsc::Receiver::recv(self).await)
    }
}

/// Sends to one peer from a shared, unconnected socket (the gateway's reply to a public
/// client goes out of the mapping's socket).
#[derive(Debug, Clone)]
pub struct UdpSendTo {
    /// The shared socket.
    pub socket: Arc<UdpSocket>,
    /// The peer.
    pub to: std::net::SocketAddr,
}

impl DatagramSink for UdpSendTo {
    async fn send(&mut self, datagram: Bytes) -> io::Result<()> {
        self.socket.send_to(&datagram, self.to).await.map(drop)
    }
}

/// The source half of the capsule carrier: UDP payloads from `DATAGRAM` capsules.
#[derive(Debug)]
pub struct CapsuleSource<R> {
    reader: R,
    decoder: CapsuleDecoder,
    buf: BytesMut,
    unknown: u64,
}

/// The sink half of the capsule carrier: each UDP payload as one `DATAGRAM` capsule.
#[derive(Debug)]
pub struct CapsuleSink<W> {
    writer: W,
    head: BytesMut,
}

/// Splits `stream` into the capsule carrier's halves.
pub fn capsule_carrier<T>(stream: T) -> (CapsuleSource<ReadHalf<T>>, CapsuleSink<WriteHalf<T>>)
where
    T: AsyncRead + AsyncWrite + Send,
{
    let (reader, writer) = tokio::io::split(stream);
    (
        CapsuleSource {
            reader,
            decoder: CapsuleDecoder::new(MAX_DATAGRAM_CAPSULE),
            buf: BytesMut::with_capacity(8 * 1024),
            unknown: 0,
        },
        CapsuleSink {
            writer,
            head: BytesMut::with_capacity(16),
        },
    )
}

impl<R: AsyncRead + Unpin + Send> DatagramSource for CapsuleSource<R> {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        loop {
            while let Some(item) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| invalid(e.to_string()))?
            {
                let Decoded::Capsule(c) = item else {
                    // DATA on a UDP flow carries nothing of ours: skipped.
                    continue;
                };
                if c.kind != CapsuleType::DATAGRAM {
                    // RFC 9297 §3.2: unknown capsule types are skipped.
                    continue;
                }
                let payload =
                    UdpProxyingPayload::parse(c.value).map_err(|e| invalid(e.to_string()))?;
                match payload.into_udp() {
                    Some(udp) => return Ok(Some(udp)),
                    // RFC 9298 §5: "If an HTTP/3 datagram which carries an unknown
                    // Context ID is received, the receiver SHALL either drop that
                    // datagram silently or buffer it temporarily"; ptth registers only
                    // Context ID 0, so it drops the rest (and counts them).
                    None => self.unknown += 1,
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            if self.reader.read_buf(&mut self.buf).await? == 0 {
                // Inside a capsule is malformed (RFC 9297 §3.3); between capsules the peer
                // ended the flow.
                self.decoder
                    .finish(&self.buf)
                    .map_err(|e| invalid(e.to_string()))?;
                return Ok(None);
            }
        }
    }

    fn dropped_unknown(&self) -> u64 {
        self.unknown
    }
}

impl<W: AsyncWrite + Unpin + Send> DatagramSink for CapsuleSink<W> {
    async fn send(&mut self, datagram: Bytes) -> io::Result<()> {
        // DATAGRAM, its length, Context ID 0 (one byte), then the payload.
        self.head.clear();
        encode_capsule_header(
            CapsuleType::DATAGRAM,
            datagram.len() as u64 + 1,
            &mut self.head,
        );
        self.head.put_u8(0);
        self.writer.write_all(&self.head).await?;
        self.writer.write_all(&datagram).await?;
        self.writer.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.writer.shutdown().await
    }
}

/// The QUIC DATAGRAM path of one HTTP/3 request stream, as [`datagram_carrier`] needs it
/// (defined in ptth-core so that `ptth_h3::RequestHandle` can provide it directly; `None`
/// stands for a stream without one).
pub use ptth_core::HttpDatagrams;

/// The source half of [`datagram_carrier`]: UDP payloads from QUIC DATAGRAM frames and
/// from `DATAGRAM` capsules on the stream, whichever comes first.
#[derive(Debug)]
pub struct DatagramCarrierSource<R, D> {
    capsules: CapsuleSource<R>,
    datagrams: Arc<D>,
    /// The datagram path has ended (`recv` said `None`): only capsules are read.
    datagrams_done: bool,
    quic: u64,
    unknown: u64,
}

/// The sink half of [`datagram_carrier`]: each UDP payload as a QUIC DATAGRAM frame when
/// datagrams were negotiated and it fits one, else as a `DATAGRAM` capsule on the stream.
#[derive(Debug)]
pub struct DatagramCarrierSink<W, D> {
    capsules: CapsuleSink<W>,
    datagrams: Arc<D>,
    quic: u64,
}

/// Splits an HTTP/3 request stream into a carrier that uses its connection's HTTP
/// datagrams. RFC 9297 (abstract): "In HTTP/3, HTTP Datagrams can be sent unreliably using
/// the QUIC DATAGRAM extension. When the QUIC DATAGRAM frame is unavailable or
/// undesirable, HTTP Datagrams can be sent using the Capsule Protocol"; §3.5: "HTTP
/// Datagrams sent using the DATAGRAM capsule have the same semantics as those sent in
/// QUIC DATAGRAM frames". So the receiver takes both forms on the same flow, and the
/// sender falls back to a capsule for a datagram too large for the path's DATAGRAM frame
/// (ptth is the UDP endpoint here, not an intermediary re-encoding a received QUIC
/// datagram, which §3.5 asks to drop instead) and when datagrams were not negotiated.
pub fn datagram_carrier<T, D>(
    stream: T,
    datagrams: D,
) -> (
    DatagramCarrierSource<ReadHalf<T>, D>,
    DatagramCarrierSink<WriteHalf<T>, D>,
)
where
    T: AsyncRead + AsyncWrite + Send,
    D: HttpDatagrams,
{
    let (capsules_in, capsules_out) = capsule_carrier(stream);
    let datagrams = Arc::new(datagrams);
    (
        DatagramCarrierSource {
            capsules: capsules_in,
            datagrams: datagrams.clone(),
            datagrams_done: false,
            quic: 0,
            unknown: 0,
        },
        DatagramCarrierSink {
            capsules: capsules_out,
            datagrams,
            quic: 0,
        },
    )
}

impl<R: AsyncRead + Unpin + Send, D: HttpDatagrams> DatagramSource for DatagramCarrierSource<R, D> {
    async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.datagrams_done {
                return self.capsules.recv().await;
            }
            // Both branches are cancel-safe: the capsule reader keeps what it has read in
            // its buffer, and a datagram is taken from its queue only when returned.
            let datagram = tokio::select! {
                c = self.capsules.recv() => return c,
                d = self.datagrams.recv() => d,
            };
            let Some(datagram) = datagram else {
                self.datagrams_done = true;
                continue;
            };
            match UdpProxyingPayload::parse(datagram) {
                Ok(payload) => match payload.into_udp() {
                    Some(udp) => {
                        self.quic += 1;
                        return Ok(Some(udp));
                    }
                    // RFC 9298 §5, as for capsules: an unknown Context ID is dropped.
                    None => self.unknown += 1,
                },
                // An HTTP datagram without even a Context ID: unreliable by nature, so it
                // is dropped rather than ending the flow, and counted with the unknown.
                Err(_) => self.unknown += 1,
            }
        }
    }

    fn dropped_unknown(&self) -> u64 {
        self.unknown + self.capsules.dropped_unknown()
    }

    fn received_as_quic(&self) -> u64 {
        self.quic
    }

    fn dropped_overflow(&self) -> u64 {
        self.datagrams.dropped()
    }
}

impl<W: AsyncWrite + Unpin + Send, D: HttpDatagrams> DatagramSink for DatagramCarrierSink<W, D> {
    async fn send(&mut self, datagram: Bytes) -> io::Result<()> {
        // Context ID 0 (one byte), then the UDP payload (RFC 9298 §5).
        if self
            .datagrams
            .max_payload()
            .is_some_and(|max| datagram.len() < max)
        {
            let mut payload = BytesMut::with_capacity(datagram.len() + 1);
            payload.put_u8(0);
            payload.extend_from_slice(&datagram);
            // The path's limit can shrink between the check and the send; any refusal is
            // answered with the capsule, which a lost connection fails too.
            if self.datagrams.send(payload.freeze()).is_ok() {
                self.quic += 1;
                return Ok(());
            }
        }
        self.capsules.send(datagram).await
    }

    async fn close(&mut self) -> io::Result<()> {
        self.capsules.close().await
    }

    fn sent_as_quic(&self) -> u64 {
        self.quic
    }
}

/// How a UDP flow is run.
#[derive(Debug, Clone, Copy)]
pub struct DatagramOptions {
    /// The flow ends when no datagram moved either way for this long.
    pub idle_timeout: Duration,
    /// Datagrams from the socket side waiting for the carrier; more are dropped.
    pub queue: usize,
    /// Their payload bytes at most (a few large datagrams fill it before `queue` does).
    pub queue_bytes: usize,
}

impl Default for DatagramOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            queue: 64,
            queue_bytes: 128 * 1024,
        }
    }
}

/// Datagrams and payload bytes one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Datagrams delivered.
    pub datagrams: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// What a UDP flow moved, dropped, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatagramReport {
    /// From the socket side to the carrier.
    pub to_carrier: Moved,
    /// From the carrier to the socket side.
    pub to_socket: Moved,
    /// Socket-side datagrams dropped because the carrier's queue was full.
    pub dropped_queue_full: u64,
    /// Carrier datagrams dropped for an unknown Context ID.
    pub dropped_unknown_context: u64,
    /// Carrier datagrams the socket side failed to send.
    pub dropped_send_failed: u64,
    /// Carrier datagrams lost before they were read (the carrier's receive queue full).
    pub dropped_carrier_overflow: u64,
    /// Of `to_carrier`, those sent as QUIC DATAGRAM frames (the rest went in capsules).
    pub to_carrier_quic: u64,
    /// Carrier datagrams received in QUIC DATAGRAM frames (the rest came in capsules).
    pub from_carrier_quic: u64,
    /// The socket side ended (its source returned `None`), rather than the carrier.
    pub socket_side_ended: bool,
    /// Why it ended.
    pub end: FlowEnd,
}

/// Pumps datagrams between the socket side (`socket_in`, `socket_out`) and the carrier
/// (`carrier_in`, `carrier_out`) until either side ends or fails, or nothing moved for
/// `options.idle_timeout`.
pub async fn pump<SI, SO, CI, CO>(
    mut socket_in: SI,
    mut socket_out: SO,
    mut carrier_in: CI,
    mut carrier_out: CO,
    options: DatagramOptions,
) -> DatagramReport
where
    SI: DatagramSource,
    SO: DatagramSink,
    CI: DatagramSource,
    CO: DatagramSink,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let counters = Counters::default();
    let socket_side_ended = std::sync::atomic::AtomicBool::new(false);
    let (queue_tx, mut queue_rx) = mpsc::channel::<Bytes>(options.queue.max(1));
    let queued_bytes = std::sync::atomic::AtomicUsize::new(0);
    // Socket side → queue: never waits for the carrier.
    let read_socket = async {
        loop {
            match socket_in.recv().await {
                Ok(Some(d)) => {
                    touch();
                    let len = d.len();
                    let room = queued_bytes.load(Ordering::Relaxed) + len <= options.queue_bytes;
                    if room && queue_tx.try_send(d).is_ok() {
                        queued_bytes.fetch_add(len, Ordering::Relaxed);
                    } else {
                        counters.queue_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => {
                    socket_side_ended.store(true, Ordering::Relaxed);
                    return FlowEnd::Closed;
                }
                Err(e) => return FlowEnd::Socket(e.to_string()),
            }
        }
    };
    // Queue → carrier.
    let write_carrier = async {
        while let Some(d) = queue_rx.recv().await {
            queued_bytes.fetch_sub(d.len(), Ordering::Relaxed);
            let len = d.len() as u64;
            if let Err(e) = carrier_out.send(d).await {
                return FlowEnd::Stream(e.to_string());
            }
            counters.up.add(len);
        }
        FlowEnd::Closed
    };
    // Carrier → socket side.
    let read_carrier = async {
        loop {
            match carrier_in.recv().await {
                Ok(Some(d)) => {
                    touch();
                    let len = d.len() as u64;
                    match socket_out.send(d).await {
                        Ok(()) => counters.down.add(len),
                        Err(_) => {
                            counters.send_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(None) => return FlowEnd::Closed,
                Err(e) => return FlowEnd::Stream(e.to_string()),
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
    let end = tokio::select! {
        e = read_socket => e,
        e = write_carrier => e,
        e = read_carrier => e,
        e = idle => e,
    };
    if !matches!(end, FlowEnd::Stream(_)) {
        // Tell the carrier's peer the flow is over (the stream's end, not a reset).
        let _ = tokio::time::timeout(Duration::from_secs(1), carrier_out.close()).await;
    }
    DatagramReport {
        to_carrier: counters.up.get(),
        to_socket: counters.down.get(),
        dropped_queue_full: counters.queue_full.load(Ordering::Relaxed),
        dropped_unknown_context: carrier_in.dropped_unknown(),
        dropped_send_failed: counters.send_failed.load(Ordering::Relaxed),
        dropped_carrier_overflow: carrier_in.dropped_overflow(),
        to_carrier_quic: carrier_out.sent_as_quic(),
        from_carrier_quic: carrier_in.received_as_quic(),
        socket_side_ended: socket_side_ended.load(Ordering::Relaxed),
        end,
    }
}

#[derive(Default)]
struct Counters {
    up: MovedCounter,
    down: MovedCounter,
    queue_full: AtomicU64,
    send_failed: AtomicU64,
}

#[derive(Default)]
struct MovedCounter {
    datagrams: AtomicU64,
    bytes: AtomicU64,
}

impl MovedCounter {
    fn add(&self, bytes: u64) {
        self.datagrams.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn get(&self) -> Moved {
        Moved {
            datagrams: self.datagrams.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn udp_pair() -> (Arc<UdpSocket>, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        a.connect(b.local_addr().unwrap()).await.unwrap();
        b.connect(a.local_addr().unwrap()).await.unwrap();
        (Arc::new(a), b)
    }

    fn start(
        socket: Arc<UdpSocket>,
        stream: tokio::io::DuplexStream,
        options: DatagramOptions,
    ) -> tokio::task::JoinHandle<DatagramReport> {
        let (ci, co) = capsule_carrier(stream);
        tokio::spawn(pump(
            UdpSource::new(socket.clone()),
            UdpSink(socket),
            ci,
            co,
            options,
        ))
    }

    #[tokio::test]
    async fn datagrams_cross_in_datagram_capsules_under_context_zero() {
        let (socket, service) = udp_pair().await;
        let (stream, mut peer) = tokio::io::duplex(1 << 16);
        let flow = start(socket, stream, DatagramOptions::default());
        service.send(b"hello").await.unwrap();
        // DATAGRAM (0x00), length 6, Context ID 0, then the payload.
        let mut got = [0u8; 8];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x00\x06\x00hello");
        // The peer answers, with a datagram under Context ID 2 (dropped), an unknown
        // capsule type (skipped) and an empty UDP payload in between.
        peer.write_all(b"\x00\x03\x02xy\x00\x03\x00ok\x17\x01z\x00\x01\x00")
            .await
            .unwrap();
        let mut answer = [0u8; 16];
        let n = service.recv(&mut answer).await.unwrap();
        assert_eq!(&answer[..n], b"ok");
        let n = service.recv(&mut answer).await.unwrap();
        assert_eq!(n, 0);
        drop(peer);
        let report = flow.await.unwrap();
        assert_eq!(report.end, FlowEnd::Closed);
        assert!(!report.socket_side_ended);
        assert_eq!(
            report.to_carrier,
            Moved {
                datagrams: 1,
                bytes: 5
            }
        );
        assert_eq!(
            report.to_socket,
            Moved {
                datagrams: 2,
                bytes: 2
            }
        );
        assert_eq!(report.dropped_unknown_context, 1);
    }

    #[tokio::test]
    async fn a_datagram_capsule_over_the_bound_ends_the_flow_as_the_peers_error() {
        let (socket, _service) = udp_pair().await;
        let (stream, mut peer) = tokio::io::duplex(1 << 16);
        let flow = start(socket, stream, DatagramOptions::default());
        let mut head = BytesMut::new();
        encode_capsule_header(
            CapsuleType::DATAGRAM,
            MAX_DATAGRAM_CAPSULE as u64 + 1,
            &mut head,
        );
        peer.write_all(&head).await.unwrap();
        let report = flow.await.unwrap();
        assert!(
            matches!(report.end, FlowEnd::Stream(ref e) if e.contains("peer sent DATAGRAM")),
            "{:?}",
            report.end
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_the_other_direction_still_moves() {
        // The carrier is never read: its writes stall once the duplex buffer is full.
        let (socket, service) = udp_pair().await;
        let (stream, mut peer) = tokio::io::duplex(64);
        let options = DatagramOptions {
            queue: 2,
            ..DatagramOptions::default()
        };
        let (ci, co) = capsule_carrier(stream);
        let flow = tokio::spawn(pump(
            UdpSource::new(socket.clone()),
            UdpSink(socket),
            ci,
            co,
            options,
        ));
        for _ in 0..50 {
            service.send(&[7u8; 100]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Down still moves while up is stuck.
        peer.write_all(b"\x00\x03\x00ok").await.unwrap();
        let mut answer = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), service.recv(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer[..n], b"ok");
        peer.shutdown().await.unwrap();
        drop(peer);
        let report = flow.await.unwrap();
        assert!(
            report.dropped_queue_full >= 40,
            "dropped {}",
            report.dropped_queue_full
        );
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_too() {
        let (socket, service) = udp_pair().await;
        let (stream, peer) = tokio::io::duplex(64);
        let options = DatagramOptions {
            queue_bytes: 1_500,
            ..DatagramOptions::default()
        };
        let flow = start(socket, stream, options);
        // 20 datagrams of 1 000 bytes: one is being written (stalled), one fits the bytes.
        for _ in 0..20 {
            service.send(&[1u8; 1_000]).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(peer);
        let report = flow.await.unwrap();
        assert!(
            report.dropped_queue_full >= 17,
            "dropped {}",
            report.dropped_queue_full
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_flow_times_out() {
        let (socket, _service) = udp_pair().await;
        let (stream, _peer) = tokio::io::duplex(1 << 16);
        let options = DatagramOptions {
            idle_timeout: Duration::from_secs(5),
            ..DatagramOptions::default()
        };
        let report = start(socket, stream, options).await.unwrap();
        assert_eq!(report.end, FlowEnd::Idle);
    }
}
