//! Reverse CONNECT (draft-rosomakho-masque-reverse-connect), the origin's side: the TCP
//! services it offers (`--tcp-service NAME=HOST:PORT`, `[[service]]`), one `connect-listen`
//! control channel per gateway, and a `connect-accept` stream plus a socket to the local
//! service for each connection request.
//!
//! ```text
//! per gateway: Carrier::connect (--service-transport: h2, h3 or h1; service_channel.rs)
//!   ─▶ connect-listen ─▶ 2xx/101 ─▶ AVAILABLE_SERVICES ─▶ for each CONNECTION_REQUEST:
//!        known service? dial HOST:PORT (10 s) ─▶ connect-accept (same HTTP/2 or HTTP/3
//!        connection; a new TLS connection over HTTP/1.1) ─▶ splice (DATA capsules)
//!        │ else CONNECTION_REQUEST_DECLINED
//!   channel ends ─▶ back off (the dial loop's backoff) ─▶ again
//! ```
//!
//! Here the origin is an ordinary HTTP *client* of the gateway (this is reversed CONNECT,
//! not reversed HTTP), on a connection of its own: the origin's HTTP connections, if it
//! serves HTTP too, are separate.
//!
//! How a service is named on the wire: every service is advertised as a local one
//! (Destination Type 0) with its protocol and the port of the address the origin reaches
//! it at; the gateway maps its operator-facing names to (protocol, port) in its grants.
//! The draft: "Clients MUST only expose intended services": a request for anything else
//! is declined.

use crate::dial::{Backoff, HEALTHY};
use crate::dialer::Dialer;
use crate::service_channel::{Carrier, ServiceIo, ServiceTransport};
use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use ptth_core::{
    Capsule, CapsuleDecoder, ChannelError, Decoded, IpProtocol, ListenTarget, OriginChannel,
    OriginEvent, RequestId, ReverseExchange, ReverseTemplate, Service, ServicePort,
    DEFAULT_MAX_CONTROL_CAPSULE,
};
use ptth_h2::flow::{splice, FlowEnd, FlowOptions, FlowStream};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

/// How long dialling a local service may take before the request is declined.
pub const SERVICE_DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection requests pending (being dialled or accepted) at once; more are declined.
const MAX_PENDING: usize = 256;
/// A flow in which no byte moved for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// One TCP service the origin offers: `NAME=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpService {
    /// The operator's name for it (logs; the gateway's grants name it too).
    pub name: String,
    /// Where the origin reaches it (`HOST:PORT`).
    pub address: String,
    /// The port of `address`: what the service is advertised as.
    pub port: ServicePort,
}

impl std::str::FromStr for TcpService {
    type Err = String;

    /// `NAME=HOST:PORT`, e.g. `ssh=127.0.0.1:22`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, address) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=HOST:PORT, e.g. ssh=127.0.0.1:22"))?;
        TcpService::new(name, address)
    }
}

impl TcpService {
    /// A service named `name` reached at `address` (`HOST:PORT`).
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
        Service::local(IpProtocol::Tcp, self.port)
    }
}

/// Checks a set of services: the gateway tells them apart by protocol and port, so two on
/// one port cannot both be offered.
pub fn check_services(services: &[TcpService]) -> Result<()> {
    for (i, a) in services.iter().enumerate() {
        for b in &services[..i] {
            if a.name == b.name {
                bail!("two services are named {:?}", a.name);
            }
            if a.port == b.port {
                bail!(
                    "services {} and {} are both on port {}: the gateway tells services apart by protocol and port",
                    b.name,
                    a.name,
                    a.port.get()
                );
            }
        }
    }
    Ok(())
}

/// Keeps a control channel to `dialer`'s gateway until shutdown, dialling again with the
/// dial loop's backoff whenever it ends.
pub(crate) async fn run(dialer: Arc<Dialer>, mut shutdown: watch::Receiver<bool>) {
    let transport = dialer.config.service_transport;
    let mut backoff = Backoff::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = channel(&dialer, transport) => r,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(why) => {
                tracing::info!(gateway = %dialer.gateway, %transport, reason = %why, "reverse CONNECT control channel closed; dialling again")
            }
            Err(e) => {
                tracing::warn!(gateway = %dialer.gateway, %transport, error = %format!("{e:#}"), "reverse CONNECT control channel failed")
            }
        }
        if started.elapsed() >= HEALTHY {
            backoff.lost_registered();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One control channel over `transport`, from the dial to its end: `Ok` with why it ended
/// cleanly.
async fn channel(dialer: &Dialer, transport: ServiceTransport) -> Result<String> {
    let carrier = Carrier::connect(dialer, transport).await?;
    let template = ReverseTemplate::default_for(ReverseExchange::Listen, &dialer.authority)?;
    let udp_services = dialer.config.udp_services.clone();
    let uri = template.expand_listen(
        Some(&ListenTarget::LocalOnly),
        Some(crate::udp_service::ipproto(
            !dialer.config.tcp_services.is_empty(),
            !udp_services.is_empty(),
        )),
    )?;
    let auth = dialer.config.credential.as_ref().map(|c| c.header_value());
    let io = carrier.open(ReverseExchange::Listen, &uri, auth).await?;
    let services = dialer.config.tcp_services.clone();
    let offered: Vec<Service> = services
        .iter()
        .map(TcpService::wire)
        .chain(
            udp_services
                .iter()
                .map(crate::udp_service::UdpService::wire),
        )
        .collect();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s.name.as_str())
        .chain(udp_services.iter().map(|s| s.name.as_str()))
        .collect();
    tracing::info!(gateway = %dialer.gateway, %transport, services = %names.join(","), "reverse CONNECT control channel open");
    // `/readyz` counts this gateway reached while the channel is open.
    let _up = ChannelUp::new(dialer);
    let (mut reader, mut writer) = tokio::io::split(io);
    writer
        .write_all(&OriginChannel::advertise(&offered).to_bytes())
        .await
        .context("sending AVAILABLE_SERVICES")?;
    let state = Arc::new(Mutex::new(OriginChannel::new(MAX_PENDING)));
    let (tx, mut rx) = mpsc::channel::<Capsule>(MAX_PENDING);
    let write = async {
        while let Some(c) = rx.recv().await {
            writer
                .write_all(&c.to_bytes())
                .await
                .context("writing to the gateway")?;
        }
        Ok::<String, anyhow::Error>("closed".into())
    };
    let read = async {
        let mut decoder = CapsuleDecoder::new(DEFAULT_MAX_CONTROL_CAPSULE);
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            while let Some(item) = decoder
                .decode(&mut buf)
                .map_err(|e| anyhow!("the gateway sent a malformed capsule: {e}"))?
            {
                let Decoded::Capsule(capsule) = item else {
                    continue;
                };
                let event = lock(&state)
                    .on_capsule(&capsule)
                    .map_err(|e: ChannelError| {
                        // RFC 9297 §3.3: treated as a malformed message; the stream is aborted.
                        anyhow!("the gateway broke the control channel's rules: {e}")
                    })?;
                match event {
                    Some(OriginEvent::Requested(request)) => {
                        let flow = Flow {
                            id: request.id,
                            service: services
                                .iter()
                                .find(|s| s.wire() == request.service)
                                .cloned(),
                            udp: udp_services
                                .iter()
                                .find(|s| s.wire() == request.service)
                                .cloned(),
                            asked: request.service,
                            state: state.clone(),
                            control: tx.clone(),
                            carrier: carrier.clone(),
                            authority: dialer.authority.clone(),
                            auth: dialer.config.credential.as_ref().map(|c| c.header_value()),
                            gateway: dialer.gateway.clone(),
                        };
                        tokio::spawn(flow.run());
                    }
                    Some(OriginEvent::Overloaded(id, decline)) => {
                        tracing::warn!(gateway = %dialer.gateway, request = %id, "declined a connection request: {MAX_PENDING} pending");
                        let _ = tx.try_send(decline);
                    }
                    None => {}
                }
            }
            buf.reserve(4096);
            if reader.read_buf(&mut buf).await? == 0 {
                return Ok::<String, anyhow::Error>("the gateway closed it".into());
            }
        }
    };
    tokio::select! {
        r = write => r,
        r = read => r,
    }
}

fn lock(state: &Mutex<OriginChannel>) -> std::sync::MutexGuard<'_, OriginChannel> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Marks the services channel to one gateway open in the metrics (and `/readyz`) for as
/// long as it lives.
struct ChannelUp<'a>(&'a Dialer);

impl<'a> ChannelUp<'a> {
    fn new(dialer: &'a Dialer) -> Self {
        dialer.metrics.services_channel(dialer.index, true);
        Self(dialer)
    }
}

impl Drop for ChannelUp<'_> {
    fn drop(&mut self) {
        self.0.metrics.services_channel(self.0.index, false);
    }
}

/// One connection request: declined, or dialled, accepted and spliced.
struct Flow {
    id: RequestId,
    asked: Service,
    service: Option<TcpService>,
    /// The UDP service asked for, if the request is for one ([`crate::udp_service`]).
    udp: Option<crate::udp_service::UdpService>,
    state: Arc<Mutex<OriginChannel>>,
    control: mpsc::Sender<Capsule>,
    carrier: Carrier,
    authority: http::uri::Authority,
    auth: Option<http::HeaderValue>,
    gateway: http::Uri,
}

impl Flow {
    fn decline(&self, why: &str) {
        let id = self.id;
        tracing::warn!(gateway = %self.gateway, request = %id, service = %self.asked, "declined a connection request: {why}");
        if let Ok(capsule) = lock(&self.state).decline(id) {
            let _ = self.control.try_send(capsule);
        }
    }

    /// Marks the request as being accepted; `false` if the channel no longer has it.
    fn accepting(&self) -> bool {
        lock(&self.state).accepting(self.id).is_ok()
    }

    /// Sends the `connect-accept` for this request and takes over its stream.
    async fn accept(&self) -> Result<ServiceIo> {
        let template = ReverseTemplate::default_for(ReverseExchange::Accept, &self.authority)?;
        let uri = template.expand_accept(self.id)?;
        self.carrier
            .open(ReverseExchange::Accept, &uri, self.auth.clone())
            .await
    }

    async fn run(self) {
        if self.asked.protocol == IpProtocol::Udp {
            // The UDP flow declines, accepts and pumps through `udp_service::Request`.
            let udp = self.udp.clone();
            return crate::udp_service::run(self, udp).await;
        }
        let Some(service) = self.service.clone() else {
            self.decline("this origin offers no such service");
            return;
        };
        let dialled =
            tokio::time::timeout(SERVICE_DIAL_TIMEOUT, TcpStream::connect(&service.address)).await;
        let tcp = match dialled {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                self.decline(&format!(
                    "service {} at {}: {e}",
                    service.name, service.address
                ));
                return;
            }
            Err(_) => {
                self.decline(&format!(
                    "service {} at {}: no connection within {SERVICE_DIAL_TIMEOUT:?}",
                    service.name, service.address
                ));
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        if !self.accepting() {
            return;
        }
        let stream = match self.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(gateway = %self.gateway, request = %self.id, service = %service.name, error = %format!("{e:#}"), "connect-accept failed");
                return;
            }
        };
        let local: Option<SocketAddr> = tcp.peer_addr().ok();
        tracing::debug!(request = %self.id, service = %service.name, ?local, "TCP flow open");
        let options = FlowOptions {
            idle_timeout: IDLE_TIMEOUT,
            ..FlowOptions::default()
        };
        // An HTTP/2 tunnel's bytes move without copies (`ptth_h2::flow`).
        let stream = FlowStream::new(stream, <dyn ptth_h3::ByteStream>::downcast);
        let report = splice(tcp, stream, options).await;
        match report.end {
            FlowEnd::Closed => {
                tracing::debug!(request = %self.id, service = %service.name, to_gateway = report.to_stream, to_service = report.to_socket, "TCP flow closed")
            }
            end => {
                tracing::info!(request = %self.id, service = %service.name, reason = %end, "TCP flow closed")
            }
        }
    }
}

impl crate::udp_service::Request for Flow {
    fn id(&self) -> RequestId {
        self.id
    }

    fn gateway(&self) -> &http::Uri {
        &self.gateway
    }

    fn decline(&self, why: &str) {
        Flow::decline(self, why);
    }

    fn accepting(&self) -> bool {
        Flow::accepting(self)
    }

    fn accept(&self) -> impl std::future::Future<Output = Result<ServiceIo>> + Send {
        Flow::accept(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_parse_and_one_port_is_one_service() {
        let s: TcpService = "ssh=127.0.0.1:22".parse().unwrap();
        assert_eq!(
            (s.name.as_str(), s.address.as_str(), s.port.get()),
            ("ssh", "127.0.0.1:22", 22)
        );
        assert_eq!(
            s.wire(),
            Service::local(IpProtocol::Tcp, ServicePort::new(22).unwrap())
        );
        let v6: TcpService = "db=[::1]:5432".parse().unwrap();
        assert_eq!(v6.port.get(), 5432);
        for bad in ["ssh", "ssh=127.0.0.1", "ssh=:22", "ssh=h:0", "SSH=h:22"] {
            assert!(bad.parse::<TcpService>().is_err(), "{bad}");
        }
        let two = ["a=h:22".parse().unwrap(), "b=other:22".parse().unwrap()];
        let e = check_services(&two).unwrap_err().to_string();
        assert!(e.contains("both on port 22"), "{e}");
        assert!(check_services(&two[..1]).is_ok());
    }
}
