//! Reverse CONNECT for UDP services, the origin's side: the UDP services it offers
//! (`--udp-service NAME=HOST:PORT`, `[[service]]` with `protocol = "udp"`), advertised on
//! the same control channel as its TCP services ([`crate::tcp_service`]), and for each
//! connection request a connected `UdpSocket` to the local service pumped to the
//! `connect-accept` stream ([`ptth_h2::udp_flow`]).
//!
//! ```text
//! CONNECTION_REQUEST (Protocol 17) ─▶ known service? bind an ephemeral local port and
//!   connect it to HOST:PORT ─▶ connect-accept on the control channel's connection ─▶ 200
//!   ─▶ pump: UDP datagrams ⇄ HTTP datagrams (Context ID 0) until either end closes or
//!   nothing moves for the idle timeout │ else CONNECTION_REQUEST_DECLINED
//!   (HTTP datagrams: QUIC DATAGRAM frames over HTTP/3 when negotiated, a DATAGRAM capsule
//!   for one too large for the path; DATAGRAM capsules on the stream otherwise)
//! ```
//!
//! One request is one flow: the gateway sends one per public client address, so the local
//! service sees each public client as its own local port on the origin's host.

use anyhow::Result;
use ptth_core::{IpProtocol, RequestId, Service, ServicePort};
use ptth_h2::flow::FlowEnd;
use ptth_h2::udp_flow::{pump, DatagramOptions, UdpSink, UdpSource};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

/// A UDP flow in which no datagram moved for this long is closed. The gateway closes
/// its side after `--udp-idle-timeout` (60 s by default); this only bounds a flow whose
/// gateway vanished without closing the stream.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long resolving a service's address may take before the request is declined.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One UDP service the origin offers: `NAME=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpService {
    /// The operator's name for it (logs; the gateway's grants name it too).
    pub name: String,
    /// Where the origin reaches it (`HOST:PORT`).
    pub address: String,
    /// The port of `address`: what the service is advertised as.
    pub port: ServicePort,
}

impl std::str::FromStr for UdpService {
    type Err = String;

    /// `NAME=HOST:PORT`, e.g. `dns=127.0.0.1:53`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, address) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=HOST:PORT, e.g. dns=127.0.0.1:53"))?;
        UdpService::new(name, address)
    }
}

impl UdpService {
    /// A service named `name` reached at `address` (`HOST:PORT`); the same rules as a TCP
    /// service's.
    pub fn new(name: &str, address: &str) -> Result<Self, String> {
        let port = crate::service_address::checked_port(name, address)?;
        Ok(Self {
            name: name.to_string(),
            address: address.to_string(),
            port,
        })
    }

    /// The record it is advertised as.
    pub fn wire(&self) -> Service {
        Service::local(IpProtocol::Udp, self.port)
    }
}

/// Checks UDP services beside the TCP ones (named `tcp_names`): names are unique across
/// both (the logs name them); two UDP services cannot share a port (the gateway tells
/// services apart by protocol and port), while a TCP and a UDP service can (DNS on 53 over
/// both).
pub fn check_services<'a>(
    tcp_names: impl IntoIterator<Item = &'a str>,
    udp: &[UdpService],
) -> Result<()> {
    let tcp_names: Vec<&str> = tcp_names.into_iter().collect();
    for (i, a) in udp.iter().enumerate() {
        if tcp_names.contains(&a.name.as_str()) || udp[..i].iter().any(|b| b.name == a.name) {
            anyhow::bail!("two services are named {:?}", a.name);
        }
        if let Some(b) = udp[..i].iter().find(|b| b.port == a.port) {
            anyhow::bail!(
                "UDP services {} and {} are both on port {}: the gateway tells services apart by protocol and port",
                b.name,
                a.name,
                a.port.get()
            );
        }
    }
    Ok(())
}

/// The `ipproto` a control channel asks for: the draft's listener template takes `6`,
/// `17` or `*` (as CONNECT-IP's `ipproto`, RFC 9484 §4.6, which it is modelled on, a
/// single protocol or any), so an origin offering only TCP services asks for 6, only UDP
/// for 17, and both for `*`.
pub(crate) fn ipproto(tcp: bool, udp: bool) -> ptth_core::IpProtoScope {
    use ptth_core::IpProtoScope;
    match (tcp, udp) {
        (true, false) => IpProtoScope::Only(IpProtocol::Tcp),
        (false, true) => IpProtoScope::Only(IpProtocol::Udp),
        _ => IpProtoScope::Any,
    }
}

/// A connection request as the control channel hands it over (`tcp_service`'s flow):
/// what a UDP flow needs to decline it or accept it on the channel's connection.
pub(crate) trait Request: Send + Sync {
    /// The request's ID.
    fn id(&self) -> RequestId;
    /// The gateway it came from (logs).
    fn gateway(&self) -> &http::Uri;
    /// Sends `CONNECTION_REQUEST_DECLINED`, logging `why`.
    fn decline(&self, why: &str);
    /// Marks it as being accepted; `false` if the channel no longer has it.
    fn accepting(&self) -> bool;
    /// Sends the `connect-accept` and takes over its stream.
    fn accept(&self) -> impl Future<Output = Result<crate::service_channel::ServiceIo>> + Send;
}

/// A socket on an ephemeral local port, connected to `address` (so only the service's
/// datagrams arrive on it).
async fn connect(address: &str) -> Result<UdpSocket, String> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(address))
            .await
            .map_err(|_| format!("resolving {address} took over {RESOLVE_TIMEOUT:?}"))?
            .map_err(|e| format!("resolving {address}: {e}"))?
            .collect();
    let mut last = format!("{address} resolved to no address");
    for addr in addrs {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = match UdpSocket::bind(local).await {
            Ok(s) => s,
            Err(e) => {
                last = format!("binding a local UDP port: {e}");
                continue;
            }
        };
        match socket.connect(addr).await {
            Ok(()) => return Ok(socket),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// One connection request for a UDP service: declined, or connected, accepted and pumped.
pub(crate) async fn run(flow: impl Request, service: Option<UdpService>) {
    let Some(service) = service else {
        flow.decline("this origin offers no such service");
        return;
    };
    let socket = match connect(&service.address).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            flow.decline(&format!("UDP service {}: {e}", service.name));
            return;
        }
    };
    if !flow.accepting() {
        return;
    }
    let stream = match flow.accept().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(gateway = %flow.gateway(), request = %flow.id(), service = %service.name, error = %format!("{e:#}"), "connect-accept failed");
            return;
        }
    };
    let local = socket.local_addr().ok();
    let id = flow.id();
    tracing::debug!(request = %id, service = %service.name, ?local, "UDP flow open");
    let (carrier_in, carrier_out) = crate::service_channel::udp_carrier(stream);
    let options = DatagramOptions {
        idle_timeout: IDLE_TIMEOUT,
        ..DatagramOptions::default()
    };
    let report = pump(
        UdpSource::new(socket.clone()),
        UdpSink(socket),
        carrier_in,
        carrier_out,
        options,
    )
    .await;
    let dropped = report.dropped_queue_full
        + report.dropped_unknown_context
        + report.dropped_send_failed
        + report.dropped_carrier_overflow;
    match report.end {
        FlowEnd::Closed | FlowEnd::Idle => {
            tracing::debug!(request = %id, service = %service.name, reason = %report.end, to_gateway = report.to_carrier.datagrams, to_gateway_quic = report.to_carrier_quic, to_service = report.to_socket.datagrams, from_gateway_quic = report.from_carrier_quic, dropped, "UDP flow closed")
        }
        end => {
            tracing::info!(request = %id, service = %service.name, reason = %end, dropped, "UDP flow closed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_parse_and_share_a_port_only_across_protocols() {
        let s: UdpService = "dns=127.0.0.1:53".parse().unwrap();
        assert_eq!((s.name.as_str(), s.port.get()), ("dns", 53));
        assert_eq!(
            s.wire(),
            Service::local(IpProtocol::Udp, ServicePort::new(53).unwrap())
        );
        for bad in ["dns", "dns=127.0.0.1", "dns=:53", "DNS=h:53"] {
            assert!(bad.parse::<UdpService>().is_err(), "{bad}");
        }
        let udp: Vec<UdpService> = vec![s.clone()];
        assert!(check_services(["dns-tcp"], &udp).is_ok());
        let e = check_services(["dns"], &udp).unwrap_err().to_string();
        assert!(e.contains("two services are named"), "{e}");
        let two = vec![s, "game=h:53".parse().unwrap()];
        let e = check_services([], &two).unwrap_err().to_string();
        assert!(e.contains("both on port 53"), "{e}");
    }
}
