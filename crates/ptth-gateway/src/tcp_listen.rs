//! Port mappings (`--tcp-listen ADDR=GRANT/SERVICE`, `[[tcp]]`): each public TCP connection
//! accepted on ADDR becomes one reverse CONNECT `CONNECTION_REQUEST` for SERVICE on a live
//! control channel of an origin holding GRANT ([`crate::reverse`]), and is spliced to the
//! `connect-accept` stream that answers it ([`ptth_h2::flow::splice`]).
//!
//! ```text
//! accept ─▶ under --max-flows-per-listener? ─▶ Services::request (channel with fewest flows,
//!   under --max-flows-per-origin) ─▶ accept by --tcp-accept-timeout ─▶ splice until both
//!   ends close, either fails, or --tcp-idle-timeout
//! ```
//!
//! Nothing to send the flow to (no origin offers the service, every one is full, it
//! declined, its accept did not come in time) closes the public connection at once, with a
//! log line and `ptth_gateway_tcp_flows_refused_total{reason}`.

use crate::reverse::{NoRequest, Services};
use ptth_core::IpProtocol;
use ptth_h2::flow::{splice, FlowEnd, FlowOptions, FlowStream};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// One port mapping: where to listen, and whose service to reach.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TcpMapping {
    /// The public address.
    pub listen: SocketAddr,
    /// The grant whose origins offer the service.
    pub grant: String,
    /// The service's name in that grant.
    pub service: String,
}

impl FromStr for TcpMapping {
    type Err = String;

    /// `ADDR=GRANT/SERVICE`, e.g. `0.0.0.0:2222=ssh-box/ssh`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = || format!("{s:?}: expected ADDR=GRANT/SERVICE, e.g. 0.0.0.0:2222=ssh-box/ssh");
        let (addr, rest) = s.split_once('=').ok_or_else(form)?;
        let (grant, service) = rest.split_once('/').ok_or_else(form)?;
        let listen = addr
            .parse()
            .map_err(|e| format!("{s:?}: the address {addr:?}: {e}"))?;
        if grant.is_empty() || !ptth_auth::valid_service_name(service) {
            return Err(form());
        }
        Ok(Self {
            listen,
            grant: grant.to_string(),
            service: service.to_string(),
        })
    }
}

impl std::fmt::Display for TcpMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}/{}", self.listen, self.grant, self.service)
    }
}

/// The flows open on one mapping, counted across the sockets (one per worker) that accept
/// for it, so that `--max-flows-per-listener` bounds the mapping, not each socket.
pub(crate) type OpenFlows = Arc<AtomicUsize>;

/// Accepts public connections on `listener` (one of the mapping's sockets) for `mapping`
/// until the listener fails; `open` is shared by all the mapping's sockets.
pub(crate) async fn serve(
    listener: TcpListener,
    mapping: Arc<TcpMapping>,
    services: Arc<Services>,
    open: OpenFlows,
) {
    loop {
        let (tcp, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, listen = %mapping.listen, "TCP mapping accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Taken before it is checked: the mapping's other sockets count at the same time.
        if open.fetch_add(1, Ordering::Relaxed) >= services.settings.max_flows_per_listener {
            open.fetch_sub(1, Ordering::Relaxed);
            services.metrics.flow_refused("listener_full");
            tracing::warn!(%client, mapping = %mapping, "TCP connection closed: --max-flows-per-listener flows are open");
            continue;
        }
        let open = OpenFlow(open.clone());
        tokio::spawn(flow(tcp, client, mapping.clone(), services.clone(), open));
    }
}

/// One open flow of a mapping, counted until it ends (wherever it ends: a flow moves to the
/// worker of its stream).
struct OpenFlow(OpenFlows);

impl Drop for OpenFlow {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One public connection, from its request to its end.
async fn flow(
    tcp: TcpStream,
    client: SocketAddr,
    mapping: Arc<TcpMapping>,
    services: Arc<Services>,
    open: OpenFlow,
) {
    let _ = tcp.set_nodelay(true);
    let requested = match services.request(&mapping.grant, &mapping.service, IpProtocol::Tcp) {
        Ok(r) => r,
        Err(why) => {
            let (reason, text) = match why {
                NoRequest::NoOrigin => ("no_origin", "no origin offers the service"),
                NoRequest::OriginFull => (
                    "origin_full",
                    "every origin offering the service is at --max-flows-per-origin",
                ),
                NoRequest::Stopping => ("stopping", "the gateway is stopping"),
            };
            services.metrics.flow_refused(reason);
            tracing::warn!(%client, mapping = %mapping, "TCP connection closed: {text}");
            return;
        }
    };
    let (id, channel, origin) = (requested.id, requested.channel, requested.peer);
    let slot = requested.slot;
    let accepted = tokio::time::timeout(services.settings.accept_timeout, requested.accepted).await;
    let accepted = match accepted {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(_)) => {
            services.metrics.flow_refused("declined");
            tracing::warn!(%client, mapping = %mapping, %origin, request = %id, "TCP connection closed: the origin declined the connection request (or its channel closed)");
            return;
        }
        Err(_) => {
            services.cancel(channel, id);
            services.metrics.flow_refused("accept_timeout");
            tracing::warn!(%client, mapping = %mapping, %origin, request = %id, "TCP connection closed: the origin did not accept within --tcp-accept-timeout");
            return;
        }
    };
    services.metrics.flow_opened();
    tracing::debug!(%client, mapping = %mapping, %origin, request = %id, "TCP flow open");
    let home = accepted.home().cloned();
    let stream = accepted.io;
    at_home(tcp, home, move |tcp| async move {
        spliced(tcp, stream, client, &mapping, &services, (origin, id)).await;
        drop((slot, open));
    })
    .await;
}

/// Runs `run` with the public socket on the worker `home` (the one driving the flow's
/// stream; here when `None`): the socket leaves this worker's reactor for that one's, and
/// the flow's task runs on that thread. Returns once `run` is started there.
async fn at_home<F, Fut>(tcp: TcpStream, home: Option<tokio::runtime::Handle>, run: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    match home {
        Some(home) => crate::workers::spawn_with_socket(&home, tcp, run),
        None => run(tcp).await,
    }
}

/// Splices an accepted flow until it ends, and says how it ended.
async fn spliced(
    tcp: TcpStream,
    stream: crate::reverse::FlowIo,
    client: SocketAddr,
    mapping: &TcpMapping,
    services: &Services,
    (origin, id): (SocketAddr, ptth_core::RequestId),
) {
    let options = FlowOptions {
        idle_timeout: services.settings.idle_timeout,
        ..FlowOptions::default()
    };
    // A stopping gateway lets the flow run until its grace ends, then cuts it.
    let report = tokio::select! {
        report = splice(tcp, FlowStream::new(stream, <dyn ptth_h3::ByteStream>::downcast), options) => report,
        _ = services.cut_off() => {
            tracing::info!(%client, mapping = %mapping, %origin, request = %id, "TCP flow closed: the gateway stopped and its grace ended");
            return;
        }
    };
    services
        .metrics
        .flow_bytes(report.to_stream, report.to_socket);
    match &report.end {
        FlowEnd::Closed => {
            tracing::debug!(%client, mapping = %mapping, request = %id, to_origin = report.to_stream, to_client = report.to_socket, "TCP flow closed")
        }
        FlowEnd::Idle => {
            tracing::info!(%client, mapping = %mapping, request = %id, "TCP flow closed: idle for --tcp-idle-timeout")
        }
        FlowEnd::Stream(e) => {
            tracing::info!(%client, mapping = %mapping, %origin, request = %id, error = %e, "TCP flow closed: the origin's stream ended")
        }
        FlowEnd::Socket(e) => {
            tracing::debug!(%client, mapping = %mapping, request = %id, error = %e, "TCP flow closed: the public client's connection failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_parse_and_say_what_is_wrong() {
        let m: TcpMapping = "0.0.0.0:2222=ssh-box/ssh".parse().unwrap();
        assert_eq!(m.listen, "0.0.0.0:2222".parse().unwrap());
        assert_eq!((m.grant.as_str(), m.service.as_str()), ("ssh-box", "ssh"));
        assert_eq!(m.to_string(), "0.0.0.0:2222=ssh-box/ssh");
        for bad in [
            "0.0.0.0:2222",
            "0.0.0.0:2222=ssh",
            "x=g/ssh",
            "0.0.0.0:1=/ssh",
            "0.0.0.0:1=g/SSH",
        ] {
            let e = bad.parse::<TcpMapping>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    /// A public socket accepted on one worker and handed to another: the flow runs on the
    /// other worker's thread, and the socket, now in that worker's reactor, still carries
    /// bytes both ways and its end.
    #[test]
    fn a_flow_moves_to_the_worker_of_its_stream() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let workers = crate::workers::Workers::start(2).unwrap();
        let home = workers.handle(1).clone();
        let (ran_on, seen) = std::sync::mpsc::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        workers.handle(0).spawn(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            assert_eq!(crate::workers::current(), Some(0));
            at_home(tcp, Some(home), move |mut tcp| async move {
                let mut got = [0u8; 5];
                tcp.read_exact(&mut got).await.unwrap();
                tcp.write_all(&got).await.unwrap();
                tcp.shutdown().await.unwrap();
                ran_on.send(crate::workers::current()).unwrap();
            })
            .await;
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        std::io::Write::write_all(&mut c, b"hello").unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut c, &mut back).unwrap();
        assert_eq!(back, b"hello");
        let worker = seen
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap();
        assert_eq!(worker, Some(1), "the flow ran on the stream's worker");
    }
}
