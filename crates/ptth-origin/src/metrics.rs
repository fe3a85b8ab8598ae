//! The origin's metrics and readiness (served by the admin listener, [`crate::admin`]).
//!
//! Connections are counted per configured gateway (the `gateway` label is the configured
//! URL, so the operator's config bounds it): each slot of the pool says what it is doing
//! (`SlotState`) and the gauges and `/readyz` are read from the slots at scrape time.
//! Upstream calls ([`crate::service::Proxy`]) are counted process-wide: an origin process
//! has one upstream.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

/// What one slot of the connection pool is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SlotState {
    /// Backing off between attempts (or not started).
    Idle = 0,
    /// Dialling: TCP or QUIC, TLS, the setup exchange.
    Connecting = 1,
    /// Set up: the gateway may route requests to it.
    Registered = 2,
}

/// When `/readyz` answers 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadyWhen {
    /// At least one connection registered with every configured gateway.
    #[default]
    All,
    /// At least one connection registered with any gateway.
    Any,
}

impl std::str::FromStr for ReadyWhen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(Self::All),
            "any" => Ok(Self::Any),
            _ => Err(format!("--ready-when is all or any, not {s:?}")),
        }
    }
}

/// One configured gateway's series and slots.
#[derive(Debug)]
struct GatewaySeries {
    url: String,
    slots: Box<[AtomicU8]>,
    /// Whether the reverse CONNECT control channel to this gateway is open.
    services_up: std::sync::atomic::AtomicBool,
    connecting: Gauge,
    registered: Gauge,
    reconnects: Counter,
    refusals: Counter,
    failures: Counter,
}

/// The upstream metrics, shared by every [`crate::service::Proxy`] of the process.
#[derive(Debug)]
struct Upstream {
    errors: Family<[(&'static str, &'static str); 1], Counter>,
    connect_errors: Counter,
    request_errors: Counter,
    duration: Histogram,
}

static UPSTREAM: LazyLock<Upstream> = LazyLock::new(|| {
    let errors = Family::<[(&'static str, &'static str); 1], Counter>::default();
    Upstream {
        connect_errors: errors.get_or_create_owned(&[("kind", "connect")]),
        request_errors: errors.get_or_create_owned(&[("kind", "request")]),
        errors,
        duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
    }
});

/// Every metric of one origin, and what `/readyz` reads.
#[derive(Debug)]
pub struct Metrics {
    registry: prometheus_client::registry::Registry,
    gateways: Vec<GatewaySeries>,
    ready_when: ReadyWhen,
    /// What a gateway needs before it counts as reached: a registered reversed connection
    /// (the origin serves HTTP), an open services channel (it offers TCP services), or both.
    needs: Needs,
}

/// What the origin offers each gateway, so what `/readyz` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// HTTP: a registered reversed connection.
    pub http: bool,
    /// Reverse CONNECT services: an open control channel.
    pub services: bool,
}

impl Metrics {
    /// Metrics for `gateways` (configured URLs), each with `slots` connections, for an
    /// origin that offers `needs`.
    pub fn new(gateways: &[String], slots: usize, ready_when: ReadyWhen, needs: Needs) -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("ptth_origin");
        type ByGateway = [(&'static str, String); 1];
        type ByGatewayState = [(&'static str, String); 2];
        let connections = Family::<ByGatewayState, Gauge>::default();
        registry.register(
            "connections",
            "Connections to each gateway, by state (connecting: dialling or in setup; registered: set up, requests may come)",
            connections.clone(),
        );
        let reconnects = Family::<ByGateway, Counter>::default();
        registry.register(
            "reconnects",
            "Dials after a connection to the gateway ended or failed",
            reconnects.clone(),
        );
        let refusals = Family::<ByGateway, Counter>::default();
        registry.register(
            "refusals",
            "Connections the gateway closed right after the authorisation answer (it refused the credential or the claimed origins)",
            refusals.clone(),
        );
        let failures = Family::<ByGateway, Counter>::default();
        registry.register(
            "connection_failures",
            "Connections to the gateway that failed (dial, TLS, setup, or an error while serving)",
            failures.clone(),
        );
        registry.register(
            "upstream_errors",
            "Requests the upstream failed, by kind (connect: it could not be reached; request: it failed the exchange); answered 502",
            UPSTREAM.errors.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending a request upstream to its response headers (or its failure)",
            UPSTREAM.duration.clone(),
        );
        let gateways = gateways
            .iter()
            .map(|url| {
                let state = |s: &'static str| [("gateway", url.clone()), ("state", s.to_owned())];
                let by = [("gateway", url.clone())];
                GatewaySeries {
                    url: url.clone(),
                    slots: (0..slots.max(1)).map(|_| AtomicU8::new(0)).collect(),
                    services_up: std::sync::atomic::AtomicBool::new(false),
                    connecting: connections.get_or_create_owned(&state("connecting")),
                    registered: connections.get_or_create_owned(&state("registered")),
                    reconnects: reconnects.get_or_create_owned(&by),
                    refusals: refusals.get_or_create_owned(&by),
                    failures: failures.get_or_create_owned(&by),
                }
            })
            .collect();
        Self {
            registry,
            gateways,
            ready_when,
            needs,
        }
    }

    /// The reverse CONNECT control channel to `gateway` opened (`true`) or ended.
    pub(crate) fn services_channel(&self, gateway: usize, up: bool) {
        if let Some(g) = self.gateways.get(gateway) {
            g.services_up.store(up, Ordering::Relaxed);
        }
    }

    /// Slot `slot` of gateway `gateway` (its index in the configuration) is now in `state`.
    pub(crate) fn slot(&self, gateway: usize, slot: usize, state: SlotState) {
        if let Some(s) = self.gateways.get(gateway).and_then(|g| g.slots.get(slot)) {
            s.store(state as u8, Ordering::Relaxed);
        }
    }

    /// A slot of `gateway` dials again after its connection ended or failed.
    pub(crate) fn reconnected(&self, gateway: usize) {
        if let Some(g) = self.gateways.get(gateway) {
            g.reconnects.inc();
        }
    }

    /// `gateway` refused a connection right after the authorisation answer.
    pub(crate) fn refused(&self, gateway: usize) {
        if let Some(g) = self.gateways.get(gateway) {
            g.refusals.inc();
        }
    }

    /// A connection to `gateway` failed.
    pub(crate) fn failed(&self, gateway: usize) {
        if let Some(g) = self.gateways.get(gateway) {
            g.failures.inc();
        }
    }

    fn count(g: &GatewaySeries, state: SlotState) -> usize {
        g.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == state as u8)
            .count()
    }

    /// `Ok` when the origin takes traffic (per [`ReadyWhen`]), else which gateways lack a
    /// registered connection (or, for an origin offering services, an open services
    /// channel).
    pub fn ready(&self) -> Result<(), String> {
        let reached = |g: &GatewaySeries| {
            (!self.needs.http || Self::count(g, SlotState::Registered) > 0)
                && (!self.needs.services || g.services_up.load(Ordering::Relaxed))
        };
        let lacking: Vec<&str> = self
            .gateways
            .iter()
            .filter(|g| !reached(g))
            .map(|g| g.url.as_str())
            .collect();
        let ready = match self.ready_when {
            ReadyWhen::All => lacking.is_empty(),
            ReadyWhen::Any => lacking.len() < self.gateways.len(),
        };
        if ready {
            Ok(())
        } else {
            Err(format!(
                "no connection registered with {}",
                lacking.join(", ")
            ))
        }
    }

    /// Reads the slots into the gauges, then encodes every metric in the Prometheus text
    /// format (0.0.4).
    pub fn encode(&self) -> String {
        for g in &self.gateways {
            let n = |state| i64::try_from(Self::count(g, state)).unwrap_or(i64::MAX);
            g.connecting.set(n(SlotState::Connecting));
            g.registered.set(n(SlotState::Registered));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// One request sent to the upstream: what its failure is logged with, and when it started.
#[derive(Debug)]
pub(crate) struct UpstreamCall {
    method: http::Method,
    host: Option<String>,
    path: String,
    started: Instant,
}

impl UpstreamCall {
    /// Notes the request (path without its query: queries carry tokens) and the time.
    pub(crate) fn start<B>(request: &http::Request<B>) -> Self {
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            });
        Self {
            method: request.method().clone(),
            host,
            path: request.uri().path().to_owned(),
            started: Instant::now(),
        }
    }

    /// Counts the upstream's answer: its latency.
    pub(crate) fn answered(self) {
        UPSTREAM
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }

    /// Counts a failure (`connect`: the upstream could not be reached; otherwise it failed
    /// the exchange) and logs it at warn with the request it failed and the whole `reason`
    /// (the public 502 body stays generic).
    pub(crate) fn failed(self, connect: bool, upstream: &dyn std::fmt::Display, reason: &str) {
        UPSTREAM
            .duration
            .observe(self.started.elapsed().as_secs_f64());
        let kind = if connect {
            UPSTREAM.connect_errors.inc();
            "connect"
        } else {
            UPSTREAM.request_errors.inc();
            "request"
        };
        tracing::warn!(
            method = %self.method,
            host = %self.host.as_deref().unwrap_or(""),
            path = %self.path,
            %upstream,
            kind = %kind,
            error = %reason,
            "upstream failure: answered 502"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_slots_per_gateway() {
        let gws = ["https://a:1".to_owned(), "https://b:2".to_owned()];
        let http = Needs {
            http: true,
            services: false,
        };
        let all = Metrics::new(&gws, 2, ReadyWhen::All, http);
        let any = Metrics::new(&gws, 2, ReadyWhen::Any, http);
        for m in [&all, &any] {
            let err = m.ready().unwrap_err();
            assert!(
                err.contains("https://a:1") && err.contains("https://b:2"),
                "{err}"
            );
            m.slot(0, 1, SlotState::Registered);
        }
        assert!(any.ready().is_ok());
        let err = all.ready().unwrap_err();
        assert!(
            !err.contains("https://a:1") && err.contains("https://b:2"),
            "{err}"
        );
        all.slot(1, 0, SlotState::Registered);
        assert!(all.ready().is_ok());
        all.slot(0, 1, SlotState::Idle);
        assert!(all.ready().is_err());
        let text = all.encode();
        assert!(
            text.lines()
                .any(|l| l
                    == "ptth_origin_connections{gateway=\"https://b:2\",state=\"registered\"} 1"),
            "{text}"
        );
        assert!("some".parse::<ReadyWhen>().is_err());
    }

    #[test]
    fn an_origin_offering_services_is_ready_when_its_channels_are_open() {
        let gws = ["https://a:1".to_owned(), "https://b:2".to_owned()];
        let only = Metrics::new(
            &gws,
            1,
            ReadyWhen::All,
            Needs {
                http: false,
                services: true,
            },
        );
        assert!(only.ready().is_err());
        only.services_channel(0, true);
        let err = only.ready().unwrap_err();
        assert!(
            !err.contains("https://a:1") && err.contains("https://b:2"),
            "{err}"
        );
        only.services_channel(1, true);
        assert!(only.ready().is_ok(), "no HTTP slot is needed");
        only.services_channel(0, false);
        assert!(only.ready().is_err());
        // Both: a registered connection and an open channel, per gateway.
        let both = Metrics::new(
            &gws[..1],
            1,
            ReadyWhen::All,
            Needs {
                http: true,
                services: true,
            },
        );
        both.services_channel(0, true);
        assert!(both.ready().is_err(), "the HTTP connection is missing");
        both.slot(0, 0, SlotState::Registered);
        assert!(both.ready().is_ok());
        both.services_channel(0, false);
        assert!(both.ready().is_err(), "the services channel is missing");
    }
}
