//! UDP port mappings (`--udp-listen ADDR=GRANT/SERVICE`, `[[udp]]`): one public UDP
//! socket per mapping; each distinct client address sending to it is one flow, one reverse
//! CONNECT `CONNECTION_REQUEST` for SERVICE on a live control channel of an origin holding
//! GRANT ([`crate::reverse`]), pumped to the `connect-accept` stream that answers it
//! ([`ptth_h2::udp_flow::pump`]: RFC 9298 payloads in QUIC DATAGRAM frames when the
//! origin's connection is HTTP/3 with HTTP datagrams negotiated, else in `DATAGRAM`
//! capsules; `reverse::udp_carrier`). Replies go out of the mapping's socket to
//! that client.
//!
//! ```text
//! recv_from ─▶ known client? its flow's queue (full: drop "queue_full")
//!   new client, table under --max-flows-per-listener? ─▶ new flow: Services::request
//!     (UDP, the channel with the fewest flows) ─▶ datagrams queue meanwhile ─▶ accept by
//!     --tcp-accept-timeout ─▶ pump until the origin ends the stream, either side fails,
//!     --udp-idle-timeout passes without a datagram, or the gateway stops
//!   table full ─▶ drop "listener_full"
//! ```
//!
//! Memory is bounded: at most `--max-flows-per-listener` flows per mapping, each with a
//! queue of [`FLOW_QUEUE`] datagrams. A flow that gets no origin (none offers the service,
//! all full, declined, accept late) stays in the table for [`REFUSED_HOLD`] dropping its
//! client's datagrams, so a client that keeps sending costs one request and one log line
//! per hold, not one per datagram.

use crate::reverse::{NoRequest, Services};
use crate::shutdown::Stopping;
use crate::tcp_listen::TcpMapping;
use bytes::Bytes;
use ptth_core::IpProtocol;
use ptth_h2::flow::FlowEnd;
use ptth_h2::udp_flow::{pump, DatagramOptions, DatagramSource, UdpSendTo, MAX_UDP_PAYLOAD};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// One UDP port mapping: the same `ADDR=GRANT/SERVICE` form as a TCP one; the grant's
/// service must be a UDP one.
pub type UdpMapping = TcpMapping;

/// Datagrams queued for one flow (while its accept is pending, or its stream is slow);
/// more are dropped and counted.
pub const FLOW_QUEUE: usize = 64;
/// Their payload bytes at most, so large datagrams cannot make a flow hold 64 × 64 KiB.
pub const FLOW_QUEUE_BYTES: usize = 128 * 1024;
/// How long a client whose flow got no origin keeps having its datagrams dropped before a
/// new datagram asks again.
pub const REFUSED_HOLD: Duration = Duration::from_secs(1);

/// How long a flow may pass no datagram before it is closed (`--udp-idle-timeout`).
#[derive(Debug, Clone, Copy)]
pub struct UdpSettings {
    /// The idle timeout.
    pub idle_timeout: Duration,
}

impl Default for UdpSettings {
    fn default() -> Self {
        // UDP has no close: a flow ends when its client falls silent. 60 s outlives the
        // gaps of request/response protocols (DNS) and of games' keepalives, and is about
        // what home NATs keep a UDP mapping for (commonly 30 to 120 s; RFC 4787 REQ-5 asks
        // for at least 2 minutes but allows shorter for well-known ports), so a longer
        // timer mostly keeps flows whose client can no longer be reached.
        Self {
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One client's entry in a mapping's flow table.
struct Entry {
    /// To the flow (closed while its client is held after a refusal).
    queue: mpsc::Sender<Bytes>,
    /// The payload bytes in `queue`.
    queued: Arc<AtomicUsize>,
    /// Tells the flow's end apart from a later flow of the same client.
    generation: u64,
}

/// Serves `socket` for `mapping` until the gateway stops (the caller drops this future;
/// every flow then sees its queue close, ends, and closes its stream to the origin). Each
/// flow counts as an open public connection of `stopping` until it has closed its stream,
/// so the gateway's stop waits for that close before it lets the origins go.
pub(crate) async fn serve(
    socket: UdpSocket,
    mapping: Arc<UdpMapping>,
    services: Arc<Services>,
    settings: UdpSettings,
    stopping: Stopping,
) {
    let socket = Arc::new(socket);
    let metrics = services.metrics.clone();
    let mut table: HashMap<SocketAddr, Entry> = HashMap::new();
    // Each flow sends its end once: the channel holds at most one message per flow.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut generation = 0u64;
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
    let max = services.settings.max_flows_per_listener;
    let mut warned_full = tokio::time::Instant::now() - REFUSED_HOLD;
    loop {
        let (n, client) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // An ICMP error for an earlier reply, or a transient failure: the
                    // socket itself stays usable.
                    tracing::debug!(error = %e, mapping = %mapping, "UDP mapping receive failed");
                    continue;
                }
            },
            Some((client, g)) = ended_rx.recv() => {
                if table.get(&client).is_some_and(|e| e.generation == g) {
                    table.remove(&client);
                }
                continue;
            }
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        if let Some(entry) = table.get(&client) {
            if entry.queued.load(Ordering::Relaxed) + n > FLOW_QUEUE_BYTES {
                metrics.udp.dropped("queue_full", 1);
                continue;
            }
            match entry.queue.try_send(datagram) {
                Ok(()) => {
                    entry.queued.fetch_add(n, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => metrics.udp.dropped("queue_full", 1),
                // Held after a refusal, or ended with its end on its way: the datagram is
                // lost.
                Err(mpsc::error::TrySendError::Closed(_)) => metrics.udp.dropped("no_flow", 1),
            }
            continue;
        }
        if table.len() >= max {
            metrics.udp.dropped("listener_full", 1);
            if warned_full.elapsed() >= REFUSED_HOLD {
                warned_full = tokio::time::Instant::now();
                tracing::warn!(%client, mapping = %mapping, "UDP datagram dropped: --max-flows-per-listener flows are open");
            }
            continue;
        }
        generation += 1;
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let queued = Arc::new(AtomicUsize::new(n));
        let _ = tx.try_send(datagram);
        let rx = Queue {
            rx,
            queued: queued.clone(),
        };
        table.insert(
            client,
            Entry {
                queue: tx,
                queued,
                generation,
            },
        );
        let flow = Flow {
            client,
            mapping: mapping.clone(),
            services: services.clone(),
            socket: socket.clone(),
            settings,
        };
        let (ended, g) = (ended_tx.clone(), generation);
        let open = stopping.hold();
        tokio::spawn(async move {
            let refused = flow.run(rx).await;
            drop(open);
            if refused {
                // Refused: the client's entry stays (its queue closed, so its datagrams are
                // dropped as no_flow) for the hold, then is freed.
                tokio::time::sleep(REFUSED_HOLD).await;
            }
            let _ = ended.send((client, g));
        });
    }
}

/// A flow's end of its queue: the datagrams the mapping's socket received from its
/// client, with their bytes counted down as the flow takes them.
struct Queue {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl DatagramSource for Queue {
    async fn recv(&mut self) -> std::io::Result<Option<Bytes>> {
        let d = self.rx.recv().await;
        if let Some(d) = &d {
            self.queued.fetch_sub(d.len(), Ordering::Relaxed);
        }
        Ok(d)
    }
}

/// One public client's flow.
struct Flow {
    client: SocketAddr,
    mapping: Arc<UdpMapping>,
    services: Arc<Services>,
    socket: Arc<UdpSocket>,
    settings: UdpSettings,
}

impl Flow {
    /// Runs the flow; `true` if it got no origin (the caller holds the client).
    async fn run(self, mut queue: Queue) -> bool {
        let (client, mapping, services) = (self.client, &self.mapping, &self.services);
        let metrics = &services.metrics.udp;
        let refuse = |queue: &mut Queue, outcome: &'static str, text: &str| {
            metrics.flow(outcome);
            queue.rx.close();
            let mut n = 0;
            while queue.rx.try_recv().is_ok() {
                n += 1;
            }
            metrics.dropped("no_flow", n);
            tracing::warn!(%client, mapping = %mapping, "UDP datagrams dropped: {text}");
        };
        let requested = match services.request(&mapping.grant, &mapping.service, IpProtocol::Udp) {
            Ok(r) => r,
            Err(why) => {
                let (outcome, text) = match why {
                    NoRequest::NoOrigin => ("no_origin", "no origin offers the service (as UDP)"),
                    NoRequest::OriginFull => (
                        "origin_full",
                        "every origin offering the service is at --max-flows-per-origin",
                    ),
                    NoRequest::Stopping => ("stopped", "the gateway is stopping"),
                };
                refuse(&mut queue, outcome, text);
                return true;
            }
        };
        let (id, channel, origin) = (requested.id, requested.channel, requested.peer);
        let _slot = requested.slot;
        let accepted =
            tokio::time::timeout(services.settings.accept_timeout, requested.accepted).await;
        let stream = match accepted {
            Ok(Ok(accepted)) => accepted.io,
            Ok(Err(_)) => {
                refuse(&mut queue, "declined", &format!("the origin {origin} declined connection request {id} (or its channel closed)"));
                return true;
            }
            Err(_) => {
                services.cancel(channel, id);
                refuse(&mut queue, "accept_timeout", &format!("the origin {origin} did not accept request {id} within --tcp-accept-timeout"));
                return true;
            }
        };
        tracing::debug!(%client, mapping = %mapping, %origin, request = %id, "UDP flow open");
        let (carrier_in, carrier_out) = crate::reverse::udp_carrier(stream);
        let options = DatagramOptions {
            idle_timeout: self.settings.idle_timeout,
            queue: FLOW_QUEUE,
            queue_bytes: FLOW_QUEUE_BYTES,
        };
        let sink = UdpSendTo {
            socket: self.socket.clone(),
            to: client,
        };
        let report = pump(queue, sink, carrier_in, carrier_out, options).await;
        metrics.record(&report);
        let outcome = match &report.end {
            // The queue's sender is gone only when the mapping stopped.
            FlowEnd::Closed if report.socket_side_ended => "stopped",
            FlowEnd::Closed => "closed",
            FlowEnd::Idle => "idle",
            FlowEnd::Stream(_) | FlowEnd::Socket(_) => "error",
        };
        metrics.flow(outcome);
        match &report.end {
            FlowEnd::Stream(e) => {
                if e.contains("peer sent DATAGRAM") {
                    metrics.dropped("too_long", 1);
                }
                tracing::info!(%client, mapping = %mapping, %origin, request = %id, error = %e, "UDP flow closed: the origin's stream failed")
            }
            end => {
                tracing::debug!(%client, mapping = %mapping, request = %id, reason = %end, outcome, to_origin = report.to_carrier.datagrams, to_client = report.to_socket.datagrams, "UDP flow closed")
            }
        }
        false
    }
}
