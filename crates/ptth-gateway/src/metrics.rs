//! The gateway's metrics (served by the admin listener, [`crate::admin`], in the Prometheus
//! text format). Low cardinality: no host or path label unless the operator lists hosts
//! (`--metrics-host`), and every label takes one of a fixed set of values.
//!
//! The request path touches only atomics through handles resolved once (per label
//! combination, on first use): no map lookup, lock or allocation per request. Gauges that
//! mirror the registry (origin connections, scopes, queue depth) are read at scrape time.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use ptth_core::Mechanism;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Label values of one fixed-label family.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Status classes, in `status / 100 - 1` order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// Public protocols a request can arrive in.
pub(crate) const PROTOCOLS: [&str; 3] = ["http1", "h2", "h3"];
/// Public listeners a connection can arrive on.
const LISTENERS: [&str; 3] = ["http", "https", "h3"];
/// Mechanism label values: every mechanism, then `none` for a request no origin connection
/// answered (the gateway's own 4xx and 5xx).
const NO_MECHANISM: &str = "none";
const MECHANISMS: usize = Mechanism::ALL.len() + 1;
/// Requests by (class, mechanism, protocol), flattened.
const REQUEST_SERIES: usize = CLASSES.len() * MECHANISMS * PROTOCOLS.len();

/// Why an origin connection's setup ended (`ptth_gateway_origin_setups_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetupOutcome {
    /// Registered: routing may use it.
    Admitted,
    /// Refused: a bad credential, a bad setup, an unknown protocol (logged at warn).
    Refused,
    /// The setup deadline passed (`--setup-timeout`).
    TimedOut,
    /// The peer left or failed during setup (a health check, a scanner).
    Closed,
    /// Closed at accept: too many setups at once (`--max-pending-setups`, per IP).
    OverLimit,
}

impl SetupOutcome {
    const ALL: [SetupOutcome; 5] = [
        Self::Admitted,
        Self::Refused,
        Self::TimedOut,
        Self::Closed,
        Self::OverLimit,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Admitted => "admitted",
            Self::Refused => "refused",
            Self::TimedOut => "timed_out",
            Self::Closed => "closed",
            Self::OverLimit => "over_limit",
        }
    }

    /// The outcome a setup failure stands for.
    pub(crate) fn of_failure(failure: &crate::pending::SetupFailure) -> Self {
        match failure {
            crate::pending::SetupFailure::Refused(_) => Self::Refused,
            // `SetupFailure::late` is the one that names the deadline.
            crate::pending::SetupFailure::Quiet(reason)
                if reason.ends_with("before the setup deadline") =>
            {
                Self::TimedOut
            }
            crate::pending::SetupFailure::Quiet(_) => Self::Closed,
        }
    }
}

/// What `--access-log` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogMode {
    /// No access log (the metrics still count every request).
    Off,
    /// One line per request.
    #[default]
    On,
    /// One request in N, and every 5xx.
    Sample(u64),
}

impl std::str::FromStr for AccessLogMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "on" => Ok(Self::On),
            _ => match s.strip_prefix("sample=").map(str::parse::<u64>) {
                Some(Ok(n)) if n >= 1 => Ok(Self::Sample(n)),
                _ => Err(format!(
                    "the access log is off, on or sample=N (N at least 1), not {s:?}"
                )),
            },
        }
    }
}

/// The access log's settings and sampling count, one per gateway.
#[derive(Debug, Default)]
pub struct AccessLog {
    mode: OnceLock<AccessLogMode>,
    seen: AtomicU64,
}

impl AccessLog {
    /// Sets the mode (the first call counts; the gateway makes it once, at start).
    pub(crate) fn set_mode(&self, mode: AccessLogMode) {
        let _ = self.mode.set(mode);
    }

    pub(crate) fn mode(&self) -> AccessLogMode {
        self.mode.get().copied().unwrap_or_default()
    }

    /// Whether the request that ended with `status` gets a line.
    pub(crate) fn writes(&self, status: u16) -> bool {
        match self.mode() {
            AccessLogMode::Off => false,
            AccessLogMode::On => true,
            AccessLogMode::Sample(_) if status >= 500 => true,
            AccessLogMode::Sample(n) => self.seen.fetch_add(1, Ordering::Relaxed) % n == 0,
        }
    }
}

/// Hosts that get their own `host` label (`--metrics-host`); every other host is `other`.
#[derive(Debug)]
struct HostSeries {
    /// (host, counters by status class), in the operator's order.
    listed: Vec<(String, [Counter; 5])>,
    other: [Counter; 5],
}

/// Every metric of one gateway.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    requests: Family<Labels<3>, Counter>,
    /// `requests`' handles, resolved on first use.
    request_series: Box<[OnceLock<Counter>]>,
    host_requests: Family<Vec<(&'static str, String)>, Counter>,
    hosts: OnceLock<HostSeries>,
    duration: Histogram,
    received: Counter,
    sent: Counter,
    origin_connections: Family<Labels<1>, Gauge>,
    scopes: Gauge,
    queue_depth: Gauge,
    queue_wait: Histogram,
    setups: [Counter; 5],
    reloads_ok: Counter,
    reloads_failed: Counter,
    public_connections: [Gauge; 3],
    retries: Family<Labels<1>, Counter>,
    /// Reverse CONNECT: TCP flows and control channels.
    flows: FlowCounters,
    /// UDP port-mapping counters.
    pub(crate) udp: UdpMetrics,
    access_dropped: Counter,
    /// The access log's mode and sampling count.
    pub(crate) access: AccessLog,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a public TCP connection got no flow (`ptth_gateway_tcp_flows_refused_total{reason}`).
pub(crate) const FLOW_REFUSALS: [&str; 6] = [
    "no_origin",
    "origin_full",
    "listener_full",
    "declined",
    "accept_timeout",
    "stopping",
];

/// Flow outcomes (`ptth_gateway_udp_flows_total{outcome}`).
const OUTCOMES: [&str; 8] = [
    "closed",
    "idle",
    "error",
    "stopped",
    "no_origin",
    "origin_full",
    "declined",
    "accept_timeout",
];
/// Why datagrams were dropped (`ptth_gateway_udp_datagrams_dropped_total{reason}`).
const DROPS: [&str; 7] = [
    "listener_full",
    "queue_full",
    "no_flow",
    "unknown_context",
    "send_failed",
    "too_long",
    "carrier_full",
];

/// The UDP port-mapping counters ([`crate::udp_listen`]).
#[derive(Debug)]
pub(crate) struct UdpMetrics {
    flows: Family<Labels<1>, Counter>,
    datagrams: Family<Labels<1>, Counter>,
    quic_datagrams: Family<Labels<1>, Counter>,
    bytes: Family<Labels<1>, Counter>,
    dropped: Family<Labels<1>, Counter>,
}

impl UdpMetrics {
    pub(crate) fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let flows = Family::<Labels<1>, Counter>::default();
        registry.register(
            "udp_flows",
            "UDP port-mapping flows (one per public client address), by outcome (closed, idle, error, stopped, no_origin, origin_full, declined, accept_timeout)",
            flows.clone(),
        );
        for o in OUTCOMES {
            let _ = flows.get_or_create(&[("outcome", o)]);
        }
        let datagrams = Family::<Labels<1>, Counter>::default();
        registry.register(
            "udp_datagrams",
            "UDP datagrams carried by port-mapping flows, by direction (to_origin, to_client)",
            datagrams.clone(),
        );
        let quic_datagrams = Family::<Labels<1>, Counter>::default();
        registry.register(
            "udp_quic_datagrams",
            "Of the UDP datagrams carried, those that crossed the origin's HTTP/3 connection in QUIC DATAGRAM frames rather than capsules, by direction (to_origin, to_client)",
            quic_datagrams.clone(),
        );
        let bytes = Family::<Labels<1>, Counter>::default();
        registry.register(
            "udp_bytes",
            "UDP payload bytes carried by port-mapping flows, by direction (to_origin, to_client)",
            bytes.clone(),
        );
        for d in ["to_origin", "to_client"] {
            let _ = datagrams.get_or_create(&[("direction", d)]);
            let _ = quic_datagrams.get_or_create(&[("direction", d)]);
            let _ = bytes.get_or_create(&[("direction", d)]);
        }
        let dropped = Family::<Labels<1>, Counter>::default();
        registry.register(
            "udp_datagrams_dropped",
            "UDP datagrams of port mappings dropped, by reason (listener_full, queue_full, no_flow, unknown_context, send_failed, too_long, carrier_full)",
            dropped.clone(),
        );
        for r in DROPS {
            let _ = dropped.get_or_create(&[("reason", r)]);
        }
        Self {
            flows,
            datagrams,
            quic_datagrams,
            bytes,
            dropped,
        }
    }

    pub(crate) fn flow(&self, outcome: &'static str) {
        self.flows.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub(crate) fn moved(&self, direction: &'static str, datagrams: u64, bytes: u64) {
        self.datagrams
            .get_or_create(&[("direction", direction)])
            .inc_by(datagrams);
        self.bytes
            .get_or_create(&[("direction", direction)])
            .inc_by(bytes);
    }

    /// Of the datagrams [`Self::moved`] counted, those carried in QUIC DATAGRAM frames.
    pub(crate) fn moved_as_quic(&self, direction: &'static str, datagrams: u64) {
        self.quic_datagrams
            .get_or_create(&[("direction", direction)])
            .inc_by(datagrams);
    }

    /// What one finished flow moved and dropped (its `pump` report), from the gateway's
    /// side: the carrier is toward the origin, the socket side toward the client.
    pub(crate) fn record(&self, report: &ptth_h2::udp_flow::DatagramReport) {
        self.moved(
            "to_origin",
            report.to_carrier.datagrams,
            report.to_carrier.bytes,
        );
        self.moved(
            "to_client",
            report.to_socket.datagrams,
            report.to_socket.bytes,
        );
        self.moved_as_quic("to_origin", report.to_carrier_quic);
        self.moved_as_quic("to_client", report.from_carrier_quic);
        self.dropped("queue_full", report.dropped_queue_full);
        self.dropped("carrier_full", report.dropped_carrier_overflow);
        self.dropped("unknown_context", report.dropped_unknown_context);
        self.dropped("send_failed", report.dropped_send_failed);
    }

    pub(crate) fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped.get_or_create(&[("reason", reason)]).inc_by(n);
        }
    }
}

/// Outcomes of public CONNECTs (`ptth_gateway_public_connects_total{outcome}`): set up and
/// opened, or refused for one reason each.
pub(crate) const PUBLIC_CONNECT_OUTCOMES: [&str; 12] = [
    "opened",
    "bad_request",
    "unauthenticated",
    "unknown_target",
    "forbidden",
    "too_many_streams",
    "no_origin",
    "origin_full",
    "declined",
    "accept_timeout",
    "not_opened",
    "stopping",
];

/// Reverse CONNECT counters.
#[derive(Debug)]
struct FlowCounters {
    opened: Counter,
    refused: Family<Labels<1>, Counter>,
    to_origin: Counter,
    to_client: Counter,
    channels: Family<Labels<1>, Counter>,
    /// Public CONNECTs by outcome ([`PUBLIC_CONNECT_OUTCOMES`]).
    public_connects: Family<Labels<1>, Counter>,
}

impl FlowCounters {
    fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let opened = Counter::default();
        registry.register(
            "tcp_flows_opened",
            "Public TCP connections of port mappings that an origin accepted (reverse CONNECT)",
            opened.clone(),
        );
        let refused = Family::<Labels<1>, Counter>::default();
        registry.register(
            "tcp_flows_refused",
            "Public TCP connections of port mappings closed without a flow, by reason (no_origin, origin_full, listener_full, declined, accept_timeout, stopping)",
            refused.clone(),
        );
        for r in FLOW_REFUSALS {
            let _ = refused.get_or_create(&[("reason", r)]);
        }
        let bytes = Family::<Labels<1>, Counter>::default();
        registry.register(
            "tcp_flow_bytes",
            "TCP payload bytes carried by finished flows, by direction (to_origin, to_client)",
            bytes.clone(),
        );
        let to_origin = bytes.get_or_create_owned(&[("direction", "to_origin")]);
        let to_client = bytes.get_or_create_owned(&[("direction", "to_client")]);
        let channels = Family::<Labels<1>, Counter>::default();
        registry.register(
            "service_channels",
            "Reverse CONNECT control channels (connect-listen), by outcome (opened, refused, silent, revoked)",
            channels.clone(),
        );
        let public_connects = Family::<Labels<1>, Counter>::default();
        registry.register(
            "public_connects",
            "CONNECT and connect-tcp requests at the public listeners, by outcome (opened, bad_request, unauthenticated, unknown_target, forbidden, too_many_streams, no_origin, origin_full, declined, accept_timeout, not_opened, stopping)",
            public_connects.clone(),
        );
        for o in PUBLIC_CONNECT_OUTCOMES {
            let _ = public_connects.get_or_create(&[("outcome", o)]);
        }
        Self {
            opened,
            refused,
            to_origin,
            to_client,
            channels,
            public_connects,
        }
    }
}

/// Seconds, from 1 ms to about 65 s in factors of 2: request and queue durations.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

impl Metrics {
    /// Every family registered, at zero.
    pub fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("ptth_gateway");
        let requests = Family::<Labels<3>, Counter>::default();
        registry.register(
            "requests",
            "Public requests answered, by status class, the mechanism of the origin connection that answered (none: the gateway answered itself) and the public protocol",
            requests.clone(),
        );
        let host_requests = Family::<Vec<(&'static str, String)>, Counter>::default();
        registry.register(
            "host_requests",
            "Public requests by host (only the hosts listed with --metrics-host; the others are host=\"other\") and status class",
            host_requests.clone(),
        );
        let duration = Histogram::new(duration_buckets());
        registry.register(
            "request_duration_seconds",
            "Time from a public request's arrival to the end of its response body",
            duration.clone(),
        );
        let received = Counter::default();
        registry.register(
            "request_body_bytes",
            "Request body bytes received from public clients",
            received.clone(),
        );
        let sent = Counter::default();
        registry.register(
            "response_body_bytes",
            "Response body bytes sent to public clients",
            sent.clone(),
        );
        let origin_connections = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "origin_connections",
            "Registered origin connections, by mechanism",
            origin_connections.clone(),
        );
        let scopes = Gauge::default();
        registry.register(
            "registered_scopes",
            "Scopes (origin and path prefix) registered over all origin connections",
            scopes.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting for a busy origin",
            queue_depth.clone(),
        );
        let queue_wait = Histogram::new(duration_buckets());
        registry.register(
            "queue_wait_seconds",
            "How long requests that found every origin connection busy waited for one",
            queue_wait.clone(),
        );
        let setup_family = Family::<Labels<1>, Counter>::default();
        registry.register(
            "origin_setups",
            "Origin connections whose setup ended, by outcome (admitted, refused, timed_out, closed, over_limit)",
            setup_family.clone(),
        );
        let setups =
            SetupOutcome::ALL.map(|o| setup_family.get_or_create_owned(&[("outcome", o.label())]));
        let reload_family = Family::<Labels<1>, Counter>::default();
        registry.register(
            "reloads",
            "Reloads of the grants (SIGHUP), by result",
            reload_family.clone(),
        );
        let reloads_ok = reload_family.get_or_create_owned(&[("result", "ok")]);
        let reloads_failed = reload_family.get_or_create_owned(&[("result", "failed")]);
        let public_family = Family::<Labels<1>, Gauge>::default();
        registry.register(
            "public_connections",
            "Open public connections, by listener (http: cleartext, https: TLS, h3: QUIC)",
            public_family.clone(),
        );
        let public_connections =
            LISTENERS.map(|l| public_family.get_or_create_owned(&[("listener", l)]));
        let retries = Family::<Labels<1>, Counter>::default();
        registry.register(
            "retries",
            "Requests sent again on another origin connection, by reason (not_sent: the connection refused it before taking it; connection_died: a bodiless safe request whose connection died; refused: the origin refused it unprocessed)",
            retries.clone(),
        );
        let access_dropped = Counter::default();
        registry.register(
            "access_log_dropped_lines",
            "Access log lines dropped because stderr did not keep up (the writer's queue was full; requests never wait for the log)",
            access_dropped.clone(),
        );
        for m in Mechanism::ALL {
            let _ = origin_connections.get_or_create(&[("mechanism", m.name())]);
        }
        let flows = FlowCounters::register(&mut registry);
        let udp = UdpMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            request_series: (0..REQUEST_SERIES).map(|_| OnceLock::new()).collect(),
            host_requests,
            hosts: OnceLock::new(),
            duration,
            received,
            sent,
            origin_connections,
            scopes,
            queue_depth,
            queue_wait,
            setups,
            reloads_ok,
            reloads_failed,
            public_connections,
            retries,
            flows,
            udp,
            access_dropped,
            access: AccessLog::default(),
        }
    }

    /// A reverse CONNECT TCP flow was accepted by its origin.
    pub(crate) fn flow_opened(&self) {
        self.flows.opened.inc();
    }

    /// A public TCP connection was closed without a flow, for `reason` (one of
    /// [`FLOW_REFUSALS`]).
    pub(crate) fn flow_refused(&self, reason: &'static str) {
        self.flows
            .refused
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A flow ended having moved these payload bytes.
    pub(crate) fn flow_bytes(&self, to_origin: u64, to_client: u64) {
        self.flows.to_origin.inc_by(to_origin);
        self.flows.to_client.inc_by(to_client);
    }

    /// A reverse CONNECT control channel was `opened`, `refused`, or dropped as `silent`
    /// (no AVAILABLE_SERVICES in time).
    pub(crate) fn flow_channel(&self, outcome: &'static str) {
        self.flows
            .channels
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// A public CONNECT ended its setup with `outcome` (one of
    /// [`PUBLIC_CONNECT_OUTCOMES`]).
    pub(crate) fn public_connect(&self, outcome: &'static str) {
        self.flows
            .public_connects
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// Whether some hosts have their own label (so requests must say their host).
    pub(crate) fn labels_hosts(&self) -> bool {
        self.hosts.get().is_some()
    }

    /// Gives the hosts listed in `hosts` their own `host` label. Only the first call counts
    /// (the gateway makes it once, at start).
    pub(crate) fn label_hosts(&self, hosts: &[String]) {
        if hosts.is_empty() {
            return;
        }
        let series = |host: &str| {
            CLASSES.map(|class| {
                self.host_requests.get_or_create_owned(&vec![
                    ("host", host.to_owned()),
                    ("class", class.to_owned()),
                ])
            })
        };
        let _ = self.hosts.set(HostSeries {
            listed: hosts
                .iter()
                .map(|h| (h.to_ascii_lowercase(), series(h)))
                .collect(),
            other: series("other"),
        });
    }

    /// Counts one finished public request.
    pub(crate) fn request(&self, done: &Finished<'_>) {
        let class = usize::from(done.status / 100).clamp(1, 5) - 1;
        let mechanism = done
            .mechanism
            .and_then(|m| Mechanism::ALL.iter().position(|x| *x == m))
            .unwrap_or(Mechanism::ALL.len());
        let index = (class * MECHANISMS + mechanism) * PROTOCOLS.len() + done.protocol;
        if let Some(slot) = self.request_series.get(index) {
            slot.get_or_init(|| {
                let name = Mechanism::ALL
                    .get(mechanism)
                    .map_or(NO_MECHANISM, |m| m.name());
                let protocol = PROTOCOLS.get(done.protocol).copied().unwrap_or("http1");
                let class = CLASSES.get(class).copied().unwrap_or("5xx");
                self.requests.get_or_create_owned(&[
                    ("class", class),
                    ("mechanism", name),
                    ("protocol", protocol),
                ])
            })
            .inc();
        }
        if let Some(hosts) = self.hosts.get() {
            let counters = done
                .host
                .and_then(|h| {
                    hosts
                        .listed
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(h))
                })
                .map_or(&hosts.other, |(_, c)| c);
            if let Some(c) = counters.get(class) {
                c.inc();
            }
        }
        self.duration.observe(done.duration.as_secs_f64());
        self.received.inc_by(done.received);
        self.sent.inc_by(done.sent);
    }

    /// Counts an access log line dropped because the line writer's queue was full.
    pub(crate) fn access_log_dropped(&self) {
        self.access_dropped.inc();
    }

    /// A request that waited in the queue for `waited` got a connection (or gave up).
    pub(crate) fn queue_waited(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// Counts an origin connection's setup outcome.
    pub(crate) fn setup(&self, outcome: SetupOutcome) {
        if let Some(c) = SetupOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.setups.get(i))
        {
            c.inc();
        }
    }

    /// Counts the outcome of an admission (`admission::admit`'s result) and hands it back.
    pub(crate) fn admitted<T>(
        &self,
        result: Result<T, crate::pending::SetupFailure>,
    ) -> Result<T, crate::pending::SetupFailure> {
        self.setup(match &result {
            Ok(_) => SetupOutcome::Admitted,
            Err(failure) => SetupOutcome::of_failure(failure),
        });
        result
    }

    /// Counts a failed TLS or QUIC handshake of an origin connection and hands it back.
    pub(crate) fn handshake_failed(
        &self,
        failure: crate::pending::SetupFailure,
    ) -> crate::pending::SetupFailure {
        self.setup(SetupOutcome::of_failure(&failure));
        failure
    }

    /// Counts a reload of the grants.
    pub fn reloaded(&self, ok: bool) {
        if ok {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
    }

    /// Counts a request sent again on another origin connection, for `reason` (a
    /// snake_case word: `not_sent`, or what the retry logic names).
    pub(crate) fn retried(&self, reason: &'static str) {
        self.retries.get_or_create(&[("reason", reason)]).inc();
    }

    /// How many requests were sent again for `reason` since start.
    pub(crate) fn retries(&self, reason: &'static str) -> u64 {
        self.retries.get_or_create(&[("reason", reason)]).get()
    }

    /// A public connection opened on `listener` (0 cleartext, 1 TLS, 2 HTTP/3); the gauge
    /// goes down when the returned guard is dropped.
    pub(crate) fn public_connection(&self, listener: PublicListener) -> OpenConnection {
        let gauge = match listener {
            PublicListener::Cleartext => &self.public_connections[0],
            PublicListener::Tls => &self.public_connections[1],
            PublicListener::H3 => &self.public_connections[2],
        };
        gauge.inc();
        OpenConnection(gauge.clone())
    }

    /// Sets the registry's gauges from `conns` (each registered connection's mechanism and
    /// number of scopes) and `queue_depth`, then encodes every metric in the Prometheus
    /// text format (0.0.4).
    pub(crate) fn encode(
        &self,
        conns: impl Iterator<Item = (Mechanism, usize)>,
        queue_depth: usize,
    ) -> String {
        let mut scopes = 0i64;
        let mut by_mechanism = [0i64; Mechanism::ALL.len()];
        for (mechanism, n) in conns {
            scopes = scopes.saturating_add(i64::try_from(n).unwrap_or(i64::MAX));
            if let Some(i) = Mechanism::ALL.iter().position(|m| *m == mechanism) {
                if let Some(n) = by_mechanism.get_mut(i) {
                    *n += 1;
                }
            }
        }
        for (m, n) in Mechanism::ALL.iter().zip(by_mechanism) {
            self.origin_connections
                .get_or_create(&[("mechanism", m.name())])
                .set(n);
        }
        self.scopes.set(scopes);
        self.queue_depth
            .set(i64::try_from(queue_depth).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Times one request's wait in the queue (from the first busy pick until it got a
/// connection or gave up) into `ptth_gateway_queue_wait_seconds`.
#[derive(Debug)]
pub(crate) struct QueueWait<'a> {
    metrics: &'a Metrics,
    since: std::time::Instant,
}

impl<'a> QueueWait<'a> {
    pub(crate) fn start(metrics: &'a Metrics) -> Self {
        Self {
            metrics,
            since: std::time::Instant::now(),
        }
    }
}

impl Drop for QueueWait<'_> {
    fn drop(&mut self) {
        self.metrics.queue_waited(self.since.elapsed());
    }
}

/// Which public listener a connection came to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PublicListener {
    /// The cleartext TCP listener (`--listen`).
    Cleartext,
    /// The TLS listener (`--listen-tls`).
    Tls,
    /// The HTTP/3 endpoint (UDP, the TLS listener's port).
    H3,
}

impl PublicListener {
    /// The TCP listener a connection with (or without) TLS came to.
    pub(crate) fn tcp(tls: bool) -> Self {
        if tls {
            Self::Tls
        } else {
            Self::Cleartext
        }
    }
}

/// One open public connection, counted in `ptth_gateway_public_connections` while held.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the metrics keep of one finished request.
#[derive(Debug)]
pub(crate) struct Finished<'a> {
    pub(crate) status: u16,
    /// Index into [`PROTOCOLS`].
    pub(crate) protocol: usize,
    pub(crate) mechanism: Option<Mechanism>,
    pub(crate) host: Option<&'a str>,
    pub(crate) duration: Duration,
    pub(crate) received: u64,
    pub(crate) sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_moves_its_series_and_the_text_parses_back() {
        let m = Metrics::new();
        m.label_hosts(&["app.example".to_owned()]);
        for (status, host) in [(200, "app.example"), (200, "APP.example"), (503, "x")] {
            m.request(&Finished {
                status,
                protocol: 1,
                mechanism: (status == 200).then_some(Mechanism::Rh2),
                host: Some(host),
                duration: Duration::from_millis(3),
                received: 10,
                sent: 100,
            });
        }
        let text = m.encode([(Mechanism::Rh2, 2)].into_iter(), 0);
        for line in [
            "ptth_gateway_requests_total{class=\"2xx\",mechanism=\"rh2\",protocol=\"h2\"} 2",
            "ptth_gateway_requests_total{class=\"5xx\",mechanism=\"none\",protocol=\"h2\"} 1",
            "ptth_gateway_host_requests_total{host=\"app.example\",class=\"2xx\"} 2",
            "ptth_gateway_host_requests_total{host=\"other\",class=\"5xx\"} 1",
            "ptth_gateway_request_body_bytes_total 30",
            "ptth_gateway_response_body_bytes_total 300",
            "ptth_gateway_request_duration_seconds_count 3",
            "ptth_gateway_origin_connections{mechanism=\"rh1\"} 0",
            "ptth_gateway_origin_connections{mechanism=\"rh2\"} 1",
            "ptth_gateway_registered_scopes 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
