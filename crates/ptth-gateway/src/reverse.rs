//! Reverse CONNECT (draft-rosomakho-masque-reverse-connect), the gateway's side: the
//! `connect-listen` control channels origins open on the tunnel listener, the
//! `connect-accept` streams that answer the gateway's connection requests, and the registry
//! of live channels by (grant, service) that port mappings ([`crate::tcp_listen`]) draw on.
//!
//! ```text
//! origin ── TLS, ALPN h2 ──▶ tunnel::serve_h2_setup ──▶ route (by :protocol)
//!   CONNECT :protocol=connect-listen ─▶ listen: validate, authenticate, grants with services
//!        ─▶ 200 ─▶ run_channel: AVAILABLE_SERVICES ∩ grants = offered; DECLINED
//!                                ◀── CONNECTION_REQUEST (Services::request, from a flow)
//!   CONNECT :protocol=connect-accept ─▶ accept: same connection, outstanding ID? 200 : 404
//!        ─▶ the stream goes to the flow waiting for it (tcp_listen)
//! ```
//!
//! Reverse CONNECT is not reversed HTTP: the origin is an ordinary HTTP/2 client here and
//! the gateway its server, on the same kind of connection the PTTH extended CONNECT setup
//! uses. The origin's credential is checked on the listen request (the draft: "Proxies MUST
//! restrict the service to authenticated users"); an accept is taken only on the connection
//! that carries a channel with that request outstanding, so it is the channel's identity
//! that accepts (the draft: over HTTP/2 and HTTP/3 the accept is "sent on the same
//! connection" as the listener).

use crate::message::{empty, error, Body};
use crate::metrics::Metrics;
use crate::pending::SetupState;
use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use ptth_auth::{GrantedService, Grants, Presented};
use ptth_core::{
    validate_accept_request, validate_listen_request, Capsule, CapsuleDecoder, Decoded,
    GatewayChannel, GatewayEvent, IpProtocol, RequestId, ReverseExchange, ReverseRejection,
    DEFAULT_MAX_CONTROL_CAPSULE,
};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// The most control channels one grant may hold open at once.
pub(crate) const MAX_CHANNELS_PER_GRANT: usize = 16;
/// Connection requests queued for one channel's writer; beyond that, flows are refused.
const REQUEST_QUEUE: usize = 64;

/// The flow settings (`--tcp-accept-timeout`, `--tcp-idle-timeout`, `--max-flows-per-origin`,
/// `--max-flows-per-listener`).
#[derive(Debug, Clone, Copy)]
pub struct FlowSettings {
    /// From a public connection's arrival to the origin's `connect-accept`.
    pub accept_timeout: Duration,
    /// A flow in which no byte moved for this long is closed.
    pub idle_timeout: Duration,
    /// Flows at once over one origin's control channel (also its outstanding requests).
    pub max_flows_per_origin: usize,
    /// Flows at once through one port mapping.
    pub max_flows_per_listener: usize,
}

impl Default for FlowSettings {
    fn default() -> Self {
        Self {
            accept_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_flows_per_origin: 1024,
            max_flows_per_listener: 1024,
        }
    }
}

/// An HTTP/2 tunnel connection, so an accept is matched to channels on the same one.
pub(crate) fn connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The live control channels, and the flows waiting for their accept.
#[derive(Debug)]
pub struct Services {
    state: Mutex<State>,
    pub(crate) settings: FlowSettings,
    pub(crate) metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    next_channel: u64,
    channels: HashMap<u64, Channel>,
}

#[derive(Debug)]
struct Channel {
    /// The HTTP/2 connection carrying it.
    conn: u64,
    peer: SocketAddr,
    /// The grants its credential proved that allow services, by name.
    grants: Vec<String>,
    /// What those grants allow: (grant, service).
    allowed: Vec<(String, GrantedService)>,
    /// What the origin advertised and the grants allow.
    offered: Vec<(String, GrantedService)>,
    core: GatewayChannel,
    /// The flows waiting for the accept of each outstanding request.
    waiting: HashMap<RequestId, oneshot::Sender<Upgraded>>,
    /// To the channel's writer.
    requests: mpsc::Sender<Capsule>,
    /// Flows open over this channel (waiting or spliced).
    flows: Arc<AtomicUsize>,
}

/// A flow's claim on its channel: counted while it lives.
#[derive(Debug)]
pub(crate) struct FlowSlot {
    flows: Arc<AtomicUsize>,
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        self.flows.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection request sent: where its accept will arrive, and how to give up on it.
#[derive(Debug)]
pub(crate) struct Requested {
    pub(crate) id: RequestId,
    pub(crate) channel: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) accepted: oneshot::Receiver<Upgraded>,
    pub(crate) slot: FlowSlot,
}

/// Why no connection request could be sent for a flow (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRequest {
    /// No live channel offers the service.
    NoOrigin,
    /// Every channel that offers it is at `max_flows_per_origin`, or its queue is full.
    OriginFull,
}

impl Services {
    /// No channels yet.
    pub fn new(settings: FlowSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::default(),
            settings,
            metrics,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live channels offering `service` of `grant` (of either protocol).
    pub fn offering(&self, grant: &str, service: &str) -> usize {
        self.state()
            .channels
            .values()
            .filter(|c| offers(c, grant, service, None))
            .count()
    }

    /// Sends a connection request for `service` of `grant` on the live channel offering it
    /// as `protocol` with the fewest flows (a TCP mapping never asks for a UDP service,
    /// nor the reverse: the flow would carry the wrong capsules).
    pub(crate) fn request(
        &self,
        grant: &str,
        service: &str,
        protocol: IpProtocol,
    ) -> Result<Requested, NoRequest> {
        let max = self.settings.max_flows_per_origin;
        let mut st = self.state();
        let mut candidates: Vec<(&u64, &mut Channel)> = st
            .channels
            .iter_mut()
            .filter(|(_, c)| offers(c, grant, service, Some(protocol)))
            .collect();
        if candidates.is_empty() {
            return Err(NoRequest::NoOrigin);
        }
        candidates.sort_by_key(|(_, c)| c.flows.load(Ordering::Relaxed));
        let Some((&channel, c)) = candidates
            .into_iter()
            .find(|(_, c)| c.flows.load(Ordering::Relaxed) < max)
        else {
            return Err(NoRequest::OriginFull);
        };
        let Some(wire) = c
            .offered
            .iter()
            .find(|(g, s)| g == grant && s.name == service && s.protocol == protocol)
            .map(|(_, s)| s.wire())
        else {
            return Err(NoRequest::NoOrigin);
        };
        let (id, capsule) = c.core.request(wire).map_err(|_| NoRequest::OriginFull)?;
        if c.requests.try_send(capsule).is_err() {
            c.core.cancel(id);
            return Err(NoRequest::OriginFull);
        }
        let (tx, rx) = oneshot::channel();
        c.waiting.insert(id, tx);
        c.flows.fetch_add(1, Ordering::Relaxed);
        Ok(Requested {
            id,
            channel,
            peer: c.peer,
            accepted: rx,
            slot: FlowSlot {
                flows: c.flows.clone(),
            },
        })
    }

    /// Gives up on request `id` of `channel` (its flow timed out or left): a later accept
    /// for it is unknown (404).
    pub(crate) fn cancel(&self, channel: u64, id: RequestId) {
        if let Some(c) = self.state().channels.get_mut(&channel) {
            c.core.cancel(id);
            c.waiting.remove(&id);
        }
    }
}

fn offers(c: &Channel, grant: &str, service: &str, protocol: Option<IpProtocol>) -> bool {
    c.offered
        .iter()
        .any(|(g, s)| g == grant && s.name == service && protocol.is_none_or(|p| s.protocol == p))
}

fn rejection(r: &ReverseRejection) -> Response<Body> {
    error(r.status(), r.reason())
}

/// What `route` needs to know about the connection a request arrived on.
pub(crate) struct Arrival<'a> {
    pub conn: u64,
    pub peer: SocketAddr,
    pub peer_certs: Option<&'a [CertificateDer<'static>]>,
    pub setup: &'a SetupState,
}

/// A `connect-listen` or `connect-accept` extended CONNECT (by its `:protocol`), answered;
/// `None` for any other request, which the PTTH setup takes.
pub(crate) fn route(
    req: &mut Request<Incoming>,
    protocol: Option<&str>,
    arrival: &Arrival<'_>,
    grants: Arc<Grants>,
    services: &Arc<Services>,
) -> Option<Response<Body>> {
    if protocol == Some(ReverseExchange::Listen.token()) {
        Some(listen(req, protocol, arrival, &grants, services))
    } else if protocol == Some(ReverseExchange::Accept.token()) {
        Some(accept(req, protocol, arrival, services))
    } else {
        None
    }
}

fn listen(
    req: &mut Request<Incoming>,
    protocol: Option<&str>,
    arrival: &Arrival<'_>,
    grants: &Grants,
    services: &Arc<Services>,
) -> Response<Body> {
    let peer = arrival.peer;
    let exchange = ReverseExchange::Listen;
    let setup = match validate_listen_request(&*req, protocol) {
        Ok(s) => s,
        Err(r) => {
            tracing::warn!(%peer, reason = %r, "connect-listen refused");
            return rejection(&r);
        }
    };
    let presented = Presented {
        authorization: setup.authorization.as_ref(),
        peer_certs: arrival.peer_certs,
        challenge_answer: None,
    };
    let proved = match grants.authenticate(&presented) {
        Ok(g) if !g.is_empty() => g,
        Ok(_) => {
            let r = ReverseRejection::unauthenticated(exchange, "connect-listen: no credential");
            tracing::warn!(%peer, reason = %r, "connect-listen refused");
            return rejection(&r);
        }
        Err(e) => {
            let reason = format!("connect-listen: origin credential: {e}");
            tracing::warn!(%peer, %reason, "connect-listen refused");
            return error(e.status(), &reason);
        }
    };
    let with_services: Vec<_> = proved.iter().filter(|g| !g.services.is_empty()).collect();
    let names: Vec<String> = proved.iter().map(|g| g.name.clone()).collect();
    if with_services.is_empty() {
        let r = ReverseRejection::forbidden(
            exchange,
            format!(
                "connect-listen: grant {} allows no service (add services = [\"NAME=tcp/PORT\"])",
                names.join(", ")
            ),
        );
        tracing::warn!(%peer, reason = %r, "connect-listen refused");
        services.metrics.flow_channel("refused");
        return rejection(&r);
    }
    let grant_names: Vec<String> = with_services.iter().map(|g| g.name.clone()).collect();
    let open = {
        let st = services.state();
        st.channels
            .values()
            .filter(|c| c.grants.iter().any(|g| grant_names.contains(g)))
            .count()
    };
    if open >= MAX_CHANNELS_PER_GRANT {
        let reason = format!(
            "connect-listen: grant {} already holds {MAX_CHANNELS_PER_GRANT} control channels",
            grant_names.join(", ")
        );
        tracing::warn!(%peer, %reason, "connect-listen refused");
        services.metrics.flow_channel("refused");
        return error(StatusCode::TOO_MANY_REQUESTS, &reason);
    }
    let allowed: Vec<(String, GrantedService)> = with_services
        .iter()
        .flat_map(|g| g.services.iter().map(|s| (g.name.clone(), s.clone())))
        .collect();
    let (parts, ()) = ptth_core::reverse_response(exchange, setup.form).into_parts();
    let on_upgrade = hyper::upgrade::on(req);
    let (services, setup_state, conn) = (services.clone(), arrival.setup.clone(), arrival.conn);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                // The connection carries a channel: it lives on past the setup deadline.
                setup_state.registered();
                run_channel(TokioIo::new(io), conn, peer, grant_names, allowed, services).await;
            }
            Err(e) => tracing::debug!(%peer, error = %e, "connect-listen stream not taken over"),
        }
    });
    Response::from_parts(parts, empty())
}

/// One control channel, from its 200 to its end: registered, fed the origin's capsules,
/// sending the connection requests flows ask for.
async fn run_channel(
    io: TokioIo<Upgraded>,
    conn: u64,
    peer: SocketAddr,
    grants: Vec<String>,
    allowed: Vec<(String, GrantedService)>,
    services: Arc<Services>,
) {
    use rand::RngCore;
    let mut key = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let (tx, mut rx) = mpsc::channel::<Capsule>(REQUEST_QUEUE);
    let id = {
        let mut st = services.state();
        st.next_channel += 1;
        let id = st.next_channel;
        st.channels.insert(
            id,
            Channel {
                conn,
                peer,
                grants: grants.clone(),
                allowed,
                offered: Vec::new(),
                core: GatewayChannel::new(key, services.settings.max_flows_per_origin),
                waiting: HashMap::new(),
                requests: tx,
                flows: Arc::new(AtomicUsize::new(0)),
            },
        );
        id
    };
    services.metrics.flow_channel("opened");
    tracing::info!(%peer, grant = %grants.join(","), "reverse CONNECT control channel open");
    let (mut reader, mut writer) = tokio::io::split(io);
    let write = async {
        while let Some(capsule) = rx.recv().await {
            if let Err(e) = writer.write_all(&capsule.to_bytes()).await {
                return format!("writing to the origin: {e}");
            }
        }
        "closed".to_string()
    };
    let read = async {
        let mut decoder = CapsuleDecoder::new(DEFAULT_MAX_CONTROL_CAPSULE);
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Decoded::Capsule(c))) => {
                        if let Err(why) = on_capsule(&services, id, &c) {
                            return why;
                        }
                    }
                    // DATA on a control channel carries nothing of ours: skipped.
                    Ok(Some(Decoded::Data { .. })) => {}
                    Ok(None) => break,
                    Err(e) => return format!("the origin sent a malformed capsule: {e}"),
                }
            }
            buf.reserve(4096);
            match reader.read_buf(&mut buf).await {
                Ok(0) => return "the origin closed it".to_string(),
                Ok(_) => {}
                Err(e) => return format!("reading from the origin: {e}"),
            }
        }
    };
    let why = tokio::select! {
        why = write => why,
        why = read => why,
    };
    services.state().channels.remove(&id);
    tracing::info!(%peer, grant = %grants.join(","), reason = %why, "reverse CONNECT control channel closed");
}

/// One capsule from the origin on channel `id`; `Err` ends the channel (the origin's error).
fn on_capsule(services: &Services, id: u64, capsule: &Capsule) -> Result<(), String> {
    let mut st = services.state();
    let Some(c) = st.channels.get_mut(&id) else {
        return Err("the channel is gone".into());
    };
    let peer = c.peer;
    match c.core.on_capsule(capsule) {
        Ok(Some(GatewayEvent::ServicesAdvertised)) => {
            // The draft: proxies "MUST check advertised services against policy".
            let mut offered = Vec::new();
            for s in c.core.advertised() {
                let granted: Vec<_> = c.allowed.iter().filter(|(_, g)| g.matches(s)).collect();
                if granted.is_empty() {
                    tracing::warn!(%peer, grant = %c.grants.join(","), service = %s, "the origin advertised a service its grant does not allow: ignored");
                }
                offered.extend(granted.into_iter().cloned());
            }
            let shown: Vec<String> = offered.iter().map(|(g, s)| format!("{g}/{s}")).collect();
            tracing::info!(%peer, offered = %shown.join(" "), "the origin offers services");
            c.offered = offered;
            Ok(())
        }
        Ok(Some(GatewayEvent::Declined { id, service })) => {
            // Dropping the sender tells the flow: its public connection closes.
            c.waiting.remove(&id);
            tracing::info!(%peer, request = %id, %service, "the origin declined a connection request");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(format!("the origin broke the control channel's rules: {e}")),
    }
}

fn accept(
    req: &mut Request<Incoming>,
    protocol: Option<&str>,
    arrival: &Arrival<'_>,
    services: &Arc<Services>,
) -> Response<Body> {
    let peer = arrival.peer;
    let setup = match validate_accept_request(&*req, protocol) {
        Ok(s) => s,
        Err(r) => {
            tracing::warn!(%peer, reason = %r, "connect-accept refused");
            return rejection(&r);
        }
    };
    let id = setup.request_id;
    let waiting = {
        let mut st = services.state();
        st.channels
            .values_mut()
            .filter(|c| c.conn == arrival.conn)
            .find_map(|c| c.core.accept(id).map(|_| c.waiting.remove(&id)))
    };
    let Some(waiting) = waiting.flatten() else {
        // The draft: "If request_id template variable is not matching an outstanding
        // connection request for given client, proxy server MUST respond with an error and
        // SHOULD use the 404 (Not Found) status code".
        let r = ReverseRejection::unknown_request(id);
        tracing::warn!(%peer, reason = %r, "connect-accept refused");
        return rejection(&r);
    };
    let (parts, ()) = ptth_core::reverse_response(ReverseExchange::Accept, setup.form).into_parts();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            // A flow that gave up meanwhile drops the stream: the origin sees it reset.
            Ok(io) => drop(waiting.send(io)),
            Err(e) => tracing::debug!(%peer, error = %e, "connect-accept stream not taken over"),
        }
    });
    Response::from_parts(parts, empty())
}
