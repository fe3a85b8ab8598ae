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
use crate::takeover::Takeover;
use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use ptth_auth::{GrantedService, Grants, Presented, Proven};
use ptth_core::{
    validate_accept_request, validate_listen_request, Capsule, CapsuleDecoder, Decoded,
    GatewayChannel, GatewayEvent, IpProtoScope, IpProtocol, RequestId, ReverseExchange,
    ReverseRejection, SetupForm, DEFAULT_MAX_CONTROL_CAPSULE,
};
use ptth_h2::udp_flow::{datagram_carrier, DatagramCarrierSink, DatagramCarrierSource};
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// The most control channels one grant may hold open at once (an origin may keep several,
/// one per connection: `ptth-origin --connections`).
pub(crate) const MAX_CHANNELS_PER_GRANT: usize = 64;
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

/// A flow stream's HTTP datagram path: its HTTP/3 request's, or none.
pub(crate) type StreamDatagrams = Option<ptth_h3::RequestHandle>;

/// A UDP flow's carrier on `io` (RFC 9298 payloads): over an HTTP/3 request stream whose
/// connection negotiated HTTP datagrams, QUIC DATAGRAM frames (capsules for what does not
/// fit one, and capsules received too); on any other stream, capsules only.
pub(crate) fn udp_carrier(
    io: FlowIo,
) -> (
    DatagramCarrierSource<tokio::io::ReadHalf<FlowIo>, StreamDatagrams>,
    DatagramCarrierSink<tokio::io::WriteHalf<FlowIo>, StreamDatagrams>,
) {
    let handle = io.h3_request().cloned();
    datagram_carrier(io, handle)
}

/// A control channel's or flow's stream, its HTTP version erased.
pub(crate) type FlowIo = Box<dyn ptth_h3::ByteStream>;

/// An accepted flow's stream, and the worker whose connection carries it.
pub(crate) struct AcceptedFlow {
    pub(crate) io: FlowIo,
    /// Where the stream's connection is driven (`None` outside the gateway's workers): a
    /// flow spliced there wakes no other thread per chunk ([`AcceptedFlow::home`]).
    home: Option<(usize, tokio::runtime::Handle)>,
}

impl std::fmt::Debug for AcceptedFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptedFlow")
            .field("home", &self.home.as_ref().map(|(k, _)| k))
            .finish_non_exhaustive()
    }
}

impl AcceptedFlow {
    /// The runtime of the worker that drives the stream's connection, when that is not the
    /// calling thread's worker: a flow whose public socket was accepted on another worker
    /// is moved there, so its socket, its splice and the connection's driver share one
    /// thread (`docs/performance.md` finding 10: a cross-thread wake-up per chunk cost
    /// about a sixth of a flow's CPU).
    pub(crate) fn home(&self) -> Option<&tokio::runtime::Handle> {
        let (worker, handle) = self.home.as_ref()?;
        (Some(*worker) != crate::workers::current()).then_some(handle)
    }
}

/// An HTTP/2 or HTTP/3 tunnel connection, so an accept is matched to channels on the same one.
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
    /// Flows open over every channel (waiting or spliced), and a wake-up when it falls.
    open_flows: Arc<AtomicUsize>,
    flow_ended: Arc<tokio::sync::Notify>,
    /// Set when the gateway stops: no new connection requests.
    stopping: std::sync::atomic::AtomicBool,
    /// Set at the end of the stop's grace, to the instant by which the setup connections
    /// must have closed: every channel and flow closes now.
    cut: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    /// The TCP setup connections open (`tunnel::serve_h1_setup`, `tunnel::serve_h2_setup`)
    /// and the control channels (an HTTP/1.1 one took its connection over): what a
    /// stopping gateway waits for after the cut ([`Services::until_connections_closed`]).
    connections: tokio::sync::watch::Sender<usize>,
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
    /// The listen request's `ipproto`: which protocols' flows the origin takes on this
    /// channel (`None`: any).
    ipproto: Option<IpProtoScope>,
    /// What the credential proved, without its secret: a reload checks it again.
    proven: Proven,
    /// What the origin advertised, the grants allow and `ipproto` admits.
    offered: Vec<(String, GrantedService)>,
    /// Whether the origin sent its first AVAILABLE_SERVICES.
    advertised: bool,
    core: GatewayChannel,
    /// The flows waiting for the accept of each outstanding request.
    waiting: HashMap<RequestId, oneshot::Sender<AcceptedFlow>>,
    /// To the channel's writer.
    requests: mpsc::Sender<Capsule>,
    /// Flows open over this channel (waiting or spliced).
    flows: Arc<AtomicUsize>,
    /// Flows open over every channel of the same origin (the same credential from the same
    /// address; an origin keeps one channel per connection): what
    /// `--max-flows-per-origin` bounds.
    origin_flows: Arc<AtomicUsize>,
}

/// A flow's claim on its channel: counted while it lives.
#[derive(Debug)]
pub(crate) struct FlowSlot {
    flows: Arc<AtomicUsize>,
    origin_flows: Arc<AtomicUsize>,
    open_flows: Arc<AtomicUsize>,
    flow_ended: Arc<tokio::sync::Notify>,
}

impl Drop for FlowSlot {
    fn drop(&mut self) {
        self.flows.fetch_sub(1, Ordering::Relaxed);
        self.origin_flows.fetch_sub(1, Ordering::Relaxed);
        self.open_flows.fetch_sub(1, Ordering::Relaxed);
        self.flow_ended.notify_waiters();
    }
}

/// A setup connection (or a control channel) counted open while it lives
/// ([`Services::hold_connection`]).
#[derive(Debug)]
pub(crate) struct ConnectionHold(tokio::sync::watch::Sender<usize>);

impl Drop for ConnectionHold {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A connection request sent: where its accept will arrive, and how to give up on it.
#[derive(Debug)]
pub(crate) struct Requested {
    pub(crate) id: RequestId,
    pub(crate) channel: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) accepted: oneshot::Receiver<AcceptedFlow>,
    pub(crate) slot: FlowSlot,
}

/// Why no connection request could be sent for a flow (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRequest {
    /// No live channel offers the service.
    NoOrigin,
    /// Every channel that offers it is at `max_flows_per_origin`, or its queue is full.
    OriginFull,
    /// The gateway is stopping.
    Stopping,
}

impl Services {
    /// No channels yet.
    pub fn new(settings: FlowSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::default(),
            settings,
            metrics,
            open_flows: Arc::default(),
            flow_ended: Arc::default(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            cut: tokio::sync::watch::channel(None).0,
            connections: tokio::sync::watch::channel(0).0,
        }
    }

    /// The gateway stops: no connection request is sent from now on; the channels stay
    /// open for the flows in progress.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Puts new grants in force for the open control channels (SIGHUP): each channel's
    /// credential is checked again. A channel whose credential no grant with services
    /// accepts any more is closed (its flows in progress run on; new ones are not asked of
    /// it); the others offer what the origin advertised and the new grants allow. Returns
    /// how many channels closed.
    pub(crate) fn regrant(&self, grants: &Grants) -> usize {
        let mut st = self.state();
        let mut closed = Vec::new();
        for (id, c) in st.channels.iter_mut() {
            let matched: Vec<&ptth_auth::Grant> = match grants.reauthenticate(&c.proven) {
                Ok(g) => g.into_iter().filter(|g| !g.services.is_empty()).collect(),
                Err(e) => {
                    closed.push((*id, format!("its credential: {e}")));
                    continue;
                }
            };
            if matched.is_empty() {
                closed.push((*id, "no grant of its credential allows a service".into()));
                continue;
            }
            c.grants = matched.iter().map(|g| g.name.clone()).collect();
            c.allowed = matched
                .iter()
                .flat_map(|g| g.services.iter().map(|s| (g.name.clone(), s.clone())))
                .collect();
            c.offered = offer(c);
        }
        for (id, why) in &closed {
            // Dropping the channel drops its writer's sender: its task ends and closes the
            // stream, and the flows still waiting for an accept are refused.
            if let Some(c) = st.channels.remove(id) {
                tracing::warn!(peer = %c.peer, grant = %c.grants.join(","), "reverse CONNECT control channel closed on reload: {why}");
                self.metrics.flow_channel("revoked");
            }
        }
        closed.len()
    }

    /// Flows open (waiting for their accept or spliced).
    pub(crate) fn open_flows(&self) -> usize {
        self.open_flows.load(Ordering::Relaxed)
    }

    /// Resolves once no flow is open.
    pub(crate) async fn until_no_flows(&self) {
        loop {
            let ended = self.flow_ended.notified();
            if self.open_flows() == 0 {
                return;
            }
            ended.await;
        }
    }

    /// The stop's grace is over: every control channel and flow closes now, and every
    /// setup connection closes gracefully by `close_by` (HTTP/2 GOAWAY, the streams still
    /// open end, TLS close_notify; an HTTP/1.1 control channel's connection: close_notify).
    pub(crate) fn cut(&self, close_by: tokio::time::Instant) {
        self.cut.send_replace(Some(close_by));
    }

    /// Resolves once [`Services::cut`] was called, with the instant by which the setup
    /// connections must have closed.
    pub(crate) async fn cut_off(&self) -> tokio::time::Instant {
        let mut cut = self.cut.subscribe();
        let close_by = cut.wait_for(Option::is_some).await.ok().and_then(|c| *c);
        match close_by {
            Some(at) => at,
            // The sender lives as long as `self`, which the caller borrows: never here.
            None => std::future::pending().await,
        }
    }

    /// Counts a setup connection (or a control channel: an HTTP/1.1 one owns its
    /// connection) as open until the returned guard is dropped.
    pub(crate) fn hold_connection(&self) -> ConnectionHold {
        self.connections.send_modify(|n| *n += 1);
        ConnectionHold(self.connections.clone())
    }

    /// Setup connections and control channels open now.
    pub(crate) fn open_connections(&self) -> usize {
        *self.connections.borrow()
    }

    /// Resolves once no setup connection nor control channel is open.
    pub(crate) async fn until_connections_closed(&self) {
        let mut open = self.connections.subscribe();
        let _ = open.wait_for(|n| *n == 0).await;
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
        if self.stopping.load(Ordering::Relaxed) {
            return Err(NoRequest::Stopping);
        }
        let mut st = self.state();
        let mut candidates: Vec<(&u64, &mut Channel)> = st
            .channels
            .iter_mut()
            .filter(|(_, c)| offers(c, grant, service, Some(protocol)))
            .collect();
        if candidates.is_empty() {
            return Err(NoRequest::NoOrigin);
        }
        // The origin with the fewest flows, and of its channels the one with the fewest.
        candidates.sort_by_key(|(_, c)| {
            (
                c.origin_flows.load(Ordering::Relaxed),
                c.flows.load(Ordering::Relaxed),
            )
        });
        let Some((&channel, c)) = candidates
            .into_iter()
            .find(|(_, c)| c.origin_flows.load(Ordering::Relaxed) < max)
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
        c.origin_flows.fetch_add(1, Ordering::Relaxed);
        self.open_flows.fetch_add(1, Ordering::Relaxed);
        Ok(Requested {
            id,
            channel,
            peer: c.peer,
            accepted: rx,
            slot: FlowSlot {
                flows: c.flows.clone(),
                origin_flows: c.origin_flows.clone(),
                open_flows: self.open_flows.clone(),
                flow_ended: self.flow_ended.clone(),
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

/// A refused reverse CONNECT request's answer.
type Refusal = Box<Response<Body>>;

fn rejection(r: &ReverseRejection) -> Refusal {
    Box::new(error(r.status(), r.reason()))
}

/// What `route` needs to know about the connection a request arrived on.
pub(crate) struct Arrival<'a> {
    /// From [`connection_id`]: HTTP/2 and HTTP/3 accepts must come on their channel's one.
    pub conn: u64,
    pub peer: SocketAddr,
    pub peer_certs: Option<&'a [CertificateDer<'static>]>,
    pub setup: &'a SetupState,
}

/// What a reverse CONNECT request came to, before its stream is taken over (each HTTP
/// version takes it over its own way: hyper's upgrade, or ptth-h3's CONNECT response).
pub(crate) enum Routed {
    /// Answer with this and close the request.
    Refused(Refusal),
    /// A control channel: answer [`Listening::response`], then [`Listening::run`] its stream.
    Listen(Listening),
    /// An accept: answer [`Accepting::response`], then [`Accepting::deliver`] its stream.
    Accept(Accepting),
}

/// The `:protocol` (HTTP/2, HTTP/3) or the HTTP/1.1 `Upgrade` token of a reverse CONNECT
/// request, or `None` for any other request (which the PTTH setup takes).
pub(crate) fn exchange_token<B>(req: &Request<B>, protocol: Option<&str>) -> Option<&'static str> {
    let tokens = [
        ReverseExchange::Listen.token(),
        ReverseExchange::Accept.token(),
    ];
    if let Some(p) = protocol {
        return tokens.into_iter().find(|t| *t == p);
    }
    if req.method() != http::Method::GET {
        return None;
    }
    req.headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|u| tokens.into_iter().find(|t| t.eq_ignore_ascii_case(u)))
}

/// A `connect-listen` or `connect-accept` request (by its `:protocol`, or its HTTP/1.1
/// `Upgrade` token), decided; `None` for any other request.
pub(crate) fn decide<B>(
    req: &Request<B>,
    protocol: Option<&str>,
    arrival: &Arrival<'_>,
    grants: &Grants,
    services: &Arc<Services>,
) -> Option<Routed> {
    let token = exchange_token(req, protocol)?;
    Some(if token == ReverseExchange::Listen.token() {
        listen(req, Some(token), arrival, grants, services)
            .map_or_else(Routed::Refused, Routed::Listen)
    } else {
        accept(req, Some(token), arrival, grants, services)
            .map_or_else(Routed::Refused, Routed::Accept)
    })
}

/// The HTTP/1.1 and HTTP/2 hook: a reverse CONNECT request answered, its stream taken over
/// once the answer is sent (hyper's upgrade over HTTP/1.1, the h2 server's tunnel over
/// HTTP/2: [`crate::takeover::Takeover`]); `None` for any other request.
pub(crate) fn route<B>(
    req: &mut Request<B>,
    protocol: Option<&str>,
    arrival: &Arrival<'_>,
    grants: Arc<Grants>,
    services: &Arc<Services>,
) -> Option<Response<Body>> {
    let peer = arrival.peer;
    Some(match decide(&*req, protocol, arrival, &grants, services)? {
        Routed::Refused(res) => *res,
        Routed::Listen(listening) => {
            let (parts, ()) = listening.response().into_parts();
            let takeover = Takeover::of(req);
            tokio::spawn(async move {
                match takeover.flow_io().await {
                    Ok(io) => listening.run(io).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connect-listen stream not taken over")
                    }
                }
            });
            Response::from_parts(parts, empty())
        }
        Routed::Accept(accepting) => {
            let (parts, ()) = accepting.response().into_parts();
            let takeover = Takeover::of(req);
            tokio::spawn(async move {
                match takeover.flow_io().await {
                    Ok(io) => accepting.deliver(io),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "connect-accept stream not taken over")
                    }
                }
            });
            Response::from_parts(parts, empty())
        }
    })
}

/// The credential a reverse CONNECT request presents (its `Authorization`, or the
/// connection's client certificate), proved against the grants: the grants it proves, or
/// the refusal (401 without one, 401/403/429 as the auth layer says).
fn authenticate<'g>(
    exchange: ReverseExchange,
    authorization: Option<&http::HeaderValue>,
    arrival: &Arrival<'_>,
    grants: &'g Grants,
) -> Result<(Vec<&'g ptth_auth::Grant>, Proven), Refusal> {
    let peer = arrival.peer;
    let presented = Presented {
        authorization,
        peer_certs: arrival.peer_certs,
        challenge_answer: None,
    };
    match grants.authenticate_proven(&presented) {
        Ok((g, proven)) if !g.is_empty() => Ok((g, proven)),
        Ok(_) => {
            let r =
                ReverseRejection::unauthenticated(exchange, format!("{exchange}: no credential"));
            tracing::warn!(%peer, reason = %r, "{exchange} refused");
            Err(rejection(&r))
        }
        Err(e) => {
            let reason = format!("{exchange}: origin credential: {e}");
            tracing::warn!(%peer, %reason, "{exchange} refused");
            Err(Box::new(error(e.status(), &reason)))
        }
    }
}

/// A `connect-listen` request admitted: its answer, then the channel it becomes.
pub(crate) struct Listening {
    form: SetupForm,
    conn: u64,
    peer: SocketAddr,
    grants: Vec<String>,
    allowed: Vec<(String, GrantedService)>,
    ipproto: Option<IpProtoScope>,
    /// Boxed: a `Proven` is large, and `Routed` holds a `Listening`.
    proven: Box<Proven>,
    setup: SetupState,
    services: Arc<Services>,
    /// Counted from the request on, so a stopping gateway also waits for a channel whose
    /// stream is still being taken over (an HTTP/1.1 one's setup connection ended with
    /// the upgrade).
    open: ConnectionHold,
}

impl Listening {
    /// The success answer (`101` over HTTP/1.1, `200` otherwise, `Capsule-Protocol: ?1`).
    pub(crate) fn response(&self) -> Response<()> {
        ptth_core::reverse_response(ReverseExchange::Listen, self.form)
    }

    /// The control channel on `io`, from the answer to its end.
    pub(crate) async fn run(self, io: FlowIo) {
        // The connection carries a channel: it lives on past the setup deadline.
        self.setup.registered();
        run_channel(
            io,
            self.conn,
            self.peer,
            self.grants,
            Admitted {
                allowed: self.allowed,
                ipproto: self.ipproto,
                proven: *self.proven,
            },
            self.services,
            self.open,
        )
        .await;
    }
}

fn listen<B>(
    req: &Request<B>,
    protocol: Option<&str>,
    arrival: &Arrival<'_>,
    grants: &Grants,
    services: &Arc<Services>,
) -> Result<Listening, Refusal> {
    let peer = arrival.peer;
    let exchange = ReverseExchange::Listen;
    let setup = validate_listen_request(req, protocol).map_err(|r| {
        tracing::warn!(%peer, reason = %r, "connect-listen refused");
        rejection(&r)
    })?;
    let (proved, proven) = authenticate(exchange, setup.authorization.as_ref(), arrival, grants)?;
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
        return Err(rejection(&r));
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
        return Err(Box::new(error(StatusCode::TOO_MANY_REQUESTS, &reason)));
    }
    let allowed: Vec<(String, GrantedService)> = with_services
        .iter()
        .flat_map(|g| g.services.iter().map(|s| (g.name.clone(), s.clone())))
        .collect();
    Ok(Listening {
        form: setup.form,
        conn: arrival.conn,
        peer,
        grants: grant_names,
        allowed,
        ipproto: setup.scope.ipproto,
        proven: Box::new(proven),
        setup: arrival.setup.clone(),
        services: services.clone(),
        open: services.hold_connection(),
    })
}

/// How long a control channel may stay open without its first AVAILABLE_SERVICES: an
/// authenticated origin that opens one and stays silent holds a place of its grant's
/// [`MAX_CHANNELS_PER_GRANT`] for nothing.
pub(crate) const FIRST_ADVERTISEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One control channel, from its answer to its end: registered, fed the origin's capsules,
/// sending the connection requests flows ask for.
async fn run_channel(
    io: FlowIo,
    conn: u64,
    peer: SocketAddr,
    grants: Vec<String>,
    admitted: Admitted,
    services: Arc<Services>,
    // Counted until its end is written: a stopping gateway waits for that.
    _open: ConnectionHold,
) {
    let Admitted {
        allowed,
        ipproto,
        proven,
    } = admitted;
    use rand::RngCore;
    let mut key = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let (tx, mut rx) = mpsc::channel::<Capsule>(REQUEST_QUEUE);
    let id = {
        let mut st = services.state();
        st.next_channel += 1;
        let id = st.next_channel;
        let origin_flows = st
            .channels
            .values()
            .find(|c| c.peer.ip() == peer.ip() && c.proven == proven)
            .map_or_else(Arc::default, |c| c.origin_flows.clone());
        st.channels.insert(
            id,
            Channel {
                conn,
                peer,
                grants: grants.clone(),
                allowed,
                ipproto,
                proven,
                offered: Vec::new(),
                advertised: false,
                core: GatewayChannel::new(key, services.settings.max_flows_per_origin),
                waiting: HashMap::new(),
                requests: tx,
                flows: Arc::new(AtomicUsize::new(0)),
                origin_flows,
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
    let advertised = tokio::sync::Notify::new();
    let read = async {
        let mut decoder = CapsuleDecoder::new(DEFAULT_MAX_CONTROL_CAPSULE);
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Decoded::Capsule(c))) => match on_capsule(&services, id, &c) {
                        Ok(first) => {
                            if first {
                                advertised.notify_one();
                            }
                        }
                        Err(why) => return why,
                    },
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
    let silent = async {
        if tokio::time::timeout(FIRST_ADVERTISEMENT_TIMEOUT, advertised.notified())
            .await
            .is_err()
        {
            services.metrics.flow_channel("silent");
            let why = format!(
                "the origin sent no AVAILABLE_SERVICES within {FIRST_ADVERTISEMENT_TIMEOUT:?}"
            );
            tracing::warn!(%peer, grant = %grants.join(","), reason = %why, "reverse CONNECT control channel dropped");
            return why;
        }
        std::future::pending::<String>().await
    };
    let (why, close_by) = tokio::select! {
        why = write => (why, None),
        why = read => (why, None),
        why = silent => (why, None),
        close_by = services.cut_off() => ("the gateway stopped".to_string(), Some(close_by)),
    };
    services.state().channels.remove(&id);
    tracing::info!(%peer, grant = %grants.join(","), reason = %why, "reverse CONNECT control channel closed");
    if let Some(close_by) = close_by {
        // A stopping gateway ends the channel in order, by the stop's deadline (an origin
        // that does not read must not hold the stop): END_STREAM over HTTP/2, FIN over
        // HTTP/3, and over HTTP/1.1, whose channel is the whole connection, TLS
        // close_notify and FIN, so the origin reads an end, not a lost connection.
        // Then it reads (and drops) what the origin still sends until the origin ends its
        // side: an HTTP/1.1 socket closed with bytes unread would answer with RST.
        let ended = tokio::time::timeout_at(close_by, async {
            writer.shutdown().await?;
            let mut buf = [0u8; 4096];
            while reader.read(&mut buf).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
        if ended.is_err() {
            tracing::debug!(%peer, "reverse CONNECT control channel cut: not ended by the stop's deadline");
        }
    }
}

/// One capsule from the origin on channel `id`: `Ok(true)` when it was the channel's first
/// AVAILABLE_SERVICES; `Err` ends the channel (the origin's error).
fn on_capsule(services: &Services, id: u64, capsule: &Capsule) -> Result<bool, String> {
    let mut st = services.state();
    let Some(c) = st.channels.get_mut(&id) else {
        return Err("the channel is gone".into());
    };
    let peer = c.peer;
    match c.core.on_capsule(capsule) {
        Ok(Some(GatewayEvent::ServicesAdvertised)) => {
            // The draft: proxies "MUST check advertised services against policy".
            let offered = offer(c);
            let shown: Vec<String> = offered.iter().map(|(g, s)| format!("{g}/{s}")).collect();
            tracing::info!(%peer, offered = %shown.join(" "), "the origin offers services");
            c.offered = offered;
            let first = !c.advertised;
            c.advertised = true;
            Ok(first)
        }
        Ok(Some(GatewayEvent::Declined { id, service })) => {
            // Dropping the sender tells the flow: its public connection closes.
            c.waiting.remove(&id);
            tracing::info!(%peer, request = %id, %service, "the origin declined a connection request");
            Ok(false)
        }
        Ok(None) => Ok(false),
        Err(e) => Err(format!("the origin broke the control channel's rules: {e}")),
    }
}

/// What channel `c` offers: each service the origin advertised that its grants allow and its
/// `ipproto` admits; the others are logged and ignored.
fn offer(c: &Channel) -> Vec<(String, GrantedService)> {
    let peer = c.peer;
    let mut offered = Vec::new();
    for s in c.core.advertised() {
        let granted: Vec<_> = c.allowed.iter().filter(|(_, g)| g.matches(s)).collect();
        if granted.is_empty() {
            tracing::warn!(%peer, grant = %c.grants.join(","), service = %s, "the origin advertised a service its grant does not allow: ignored");
            continue;
        }
        // draft-rosomakho-masque-reverse-connect: the listen template's `ipproto` (`6`,
        // `17` or `*`, as in CONNECT-IP) names the protocols the listener takes. A flow of
        // another protocol is never requested on this channel.
        if let Some(scope) = c.ipproto.filter(|scope| !scope.allows(s.protocol)) {
            tracing::warn!(%peer, grant = %c.grants.join(","), service = %s, ipproto = %scope, "the origin advertised a service outside its connect-listen's ipproto: ignored");
            continue;
        }
        offered.extend(granted.into_iter().cloned());
    }
    offered
}

/// What a `connect-listen` proved, handed to its channel.
struct Admitted {
    allowed: Vec<(String, GrantedService)>,
    ipproto: Option<IpProtoScope>,
    proven: Proven,
}

/// A `connect-accept` request matched to its outstanding connection request: its answer,
/// then the flow waiting for its stream.
pub(crate) struct Accepting {
    form: SetupForm,
    waiting: oneshot::Sender<AcceptedFlow>,
}

impl Accepting {
    /// The success answer (`101` over HTTP/1.1, `200` otherwise, `Capsule-Protocol: ?1`).
    pub(crate) fn response(&self) -> Response<()> {
        ptth_core::reverse_response(ReverseExchange::Accept, self.form)
    }

    /// Hands the accepted stream to its flow, with the worker it was taken over on (the
    /// one driving its connection). A flow that gave up meanwhile drops it: the origin sees
    /// it reset.
    pub(crate) fn deliver(self, io: FlowIo) {
        let home = crate::workers::current().zip(tokio::runtime::Handle::try_current().ok());
        drop(self.waiting.send(AcceptedFlow { io, home }));
    }
}

fn accept<B>(
    req: &Request<B>,
    protocol: Option<&str>,
    arrival: &Arrival<'_>,
    grants: &Grants,
    services: &Arc<Services>,
) -> Result<Accepting, Refusal> {
    let peer = arrival.peer;
    let setup = validate_accept_request(req, protocol).map_err(|r| {
        tracing::warn!(%peer, reason = %r, "connect-accept refused");
        rejection(&r)
    })?;
    let id = setup.request_id;
    // Over HTTP/2 and HTTP/3 the accept is "sent on the same connection" as its listener,
    // which proved the identity. Over HTTP/1.1 it comes on a new connection, and the draft:
    // "the proxy MUST authenticate both the listener channel and every accept request";
    // it must then prove a grant of the channel whose request it answers.
    let accepter = match setup.form {
        SetupForm::Upgrade => {
            let (proved, _) = authenticate(
                ReverseExchange::Accept,
                setup.authorization.as_ref(),
                arrival,
                grants,
            )?;
            Some(proved.iter().map(|g| g.name.clone()).collect::<Vec<_>>())
        }
        SetupForm::ExtendedConnect => None,
    };
    let waiting = {
        let mut st = services.state();
        st.channels
            .values_mut()
            .filter(|c| match &accepter {
                None => c.conn == arrival.conn,
                Some(names) => c.grants.iter().any(|g| names.contains(g)),
            })
            .find_map(|c| c.core.accept(id).map(|_| c.waiting.remove(&id)))
    };
    let Some(waiting) = waiting.flatten() else {
        // The draft: "If request_id template variable is not matching an outstanding
        // connection request for given client, proxy server MUST respond with an error and
        // SHOULD use the 404 (Not Found) status code".
        let r = ReverseRejection::unknown_request(id);
        tracing::warn!(%peer, reason = %r, "connect-accept refused");
        return Err(rejection(&r));
    };
    Ok(Accepting {
        form: setup.form,
        waiting,
    })
}

/// The HTTP/3 hook: a decided reverse CONNECT request on an HTTP/3 setup connection
/// answered, its request stream taken over as the channel's or the flow's byte stream
/// (the draft: over HTTP/3 both are extended CONNECT "on the same connection").
pub(crate) async fn take_over_h3(
    routed: Routed,
    respond: ptth_h3::ResponseSender,
    peer: SocketAddr,
) {
    match routed {
        Routed::Refused(res) => {
            let _ = respond.send_response(*res).await;
        }
        Routed::Listen(listening) => {
            match respond.send_connect_response(listening.response()).await {
                Ok(stream) => listening.run(Box::new(stream)).await,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connect-listen stream not taken over")
                }
            }
        }
        Routed::Accept(accepting) => {
            match respond.send_connect_response(accepting.response()).await {
                Ok(stream) => accepting.deliver(Box::new(stream)),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "connect-accept stream not taken over")
                }
            }
        }
    }
}
