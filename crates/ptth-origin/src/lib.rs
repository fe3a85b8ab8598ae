//! The PTTH origin: dials out to a gateway and serves the HTTP requests that come back.
//!
//! **What it does.** From behind NAT or a firewall, it keeps connections open to one or
//! more gateways over any mechanism (`rh1`, `rh2`, `upgrade-h2`, `h3-reverse`, …), proves
//! who it is (a bearer token, HTTP Basic, an Ed25519 signing key or a client certificate),
//! and serves what comes back with your `tower::Service`: an axum `Router`, the proxy to a
//! local upstream ([`service::Proxy`]) or the built-in demo ([`service::Hello`]). It
//! reconnects, and shuts down without losing requests in flight.
//!
//! **What it does not do.** It listens on no public port and routes nothing itself (that
//! is the gateway, `ptth-gateway`); it does not pick between gateways (it holds
//! connections to every one configured).
//!
//! ```text
//! Origin::serve(service) ─▶ per gateway: N slots ─▶ resolve ─▶ dial ─▶ TLS or QUIC ─▶
//!     setup (per mechanism) ─▶ registered ─▶ serve HTTP/1.1, HTTP/2 or HTTP/3 as the
//!     *server* on the connection it dialled
//! ```
//!
//! The shortest working origin serves an axum `Router` through a gateway's tunnel:
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use ptth_origin::{Origin, OriginConfig};
//! let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
//! let config = OriginConfig::new(
//!     "https://gateway.example:4443".parse()?,     // the gateway's tunnel
//!     "rh2".parse().map_err(anyhow::Error::msg)?, // the mechanism
//!     vec!["app.example".into()],                 // the hosts it serves
//!     Some(ptth_auth::BearerToken::new("s3cret").map_err(anyhow::Error::msg)?),
//! );
//! Origin::new(config)?
//!     .serve(app, async { let _ = tokio::signal::ctrl_c().await; })
//!     .await
//! # }
//! ```
//!
//! [`Origin::status`] tells, per gateway, how many connections are registered.
//! `examples/axum.rs` is the same against a dev gateway.
//!
//! **How requests run.** On reversed HTTP/2 (`rh2`, `ph2`, `h2-reverse`, `upgrade-h2`,
//! `connect-h2`) hyper's server runs each request in a task of its own by default, so
//! that `hyper::upgrade::on` works ([`OriginConfig::hyper_upgrades`]). With
//! `hyper_upgrades = false` every request of a connection runs inside that connection's
//! task instead (`ptth_h2::server`: about a tenth fewer instructions per request). A
//! handler that awaits holds up nobody there, but one that computes for long holds up the
//! other requests of its connection: spawn such work (`tokio::task::spawn_blocking` or
//! `tokio::spawn`), or keep more connections ([`OriginConfig::connections`]), which the
//! gateway spreads requests over.
//!
//! **WebSocket and other upgrades.** A service that answers an upgrade (`101` on HTTP/1.1,
//! `2xx` to an extended CONNECT on HTTP/2 or HTTP/3) takes the tunnel with
//! [`service::websocket::on_upgrade`], called on the request before the answer is
//! returned: it works on every mechanism and either HTTP/2 server. `hyper::upgrade::on`
//! (and extractors built on it, such as axum's `WebSocketUpgrade`) works on HTTP/1.1
//! mechanisms, and on reversed HTTP/2 while [`OriginConfig::hyper_upgrades`] is on (the
//! default); it finds nothing to upgrade on HTTP/3, whose server is not hyper's.
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod config;
mod dial;
mod dialer;
pub mod metrics;
mod own_reactor;
mod quic;
mod serve;
pub mod service;
mod service_address;
pub mod service_channel;
pub mod tcp_service;
pub mod udp_service;

/// The most reverse CONNECT control channels an origin keeps to one gateway, whatever
/// `--connections` says (the gateway lets a grant hold 64).
const MAX_SERVICE_CHANNELS: usize = 16;

pub use serve::{Authorizer, OriginService, RequestBody, ResponseBody};

use anyhow::{anyhow, Context, Result};
use ptth_core::{AlpnSet, Mechanism, SerializedOrigin};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How an origin connects and what it claims.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// The gateway's tunnel URL, `https://host:port`.
    pub gateway: http::Uri,
    /// Further gateways, each served like `gateway`: its own pool of `connections`, its own
    /// reconnects (for two gateways behind a load balancer, or an origin in two regions).
    pub more_gateways: Vec<http::Uri>,
    /// How the connection is reversed.
    pub mechanism: Mechanism,
    /// Which Potato revision's ALPN tokens to offer.
    pub alpn_set: AlpnSet,
    /// The host names (optionally `host:port`) this origin serves.
    pub hosts: Vec<String>,
    /// The path prefixes it serves within them.
    pub path_prefixes: Vec<String>,
    /// The credential presented to the gateway: a bearer token or HTTP Basic user and
    /// password, in setup requests' `Authorization`, or in the secret form of the
    /// authorisation answer when no signing key is configured.
    pub credential: Option<ptth_auth::OriginCredential>,
    /// An Ed25519 key (PKCS#8 PEM, DER or raw seed) that signs the gateway's challenge on
    /// ALPN-only mechanisms, bound to the TLS connection.
    pub signing_key: Option<PathBuf>,
    /// The key id the gateway knows the signing key by.
    pub key_id: String,
    /// SHA-256 of the gateway certificate's SubjectPublicKeyInfo, checked besides the chain,
    /// and always checked: with `danger_accept_any_gateway` it is the only check.
    pub gateway_pin: Option<[u8; 32]>,
    /// Accept any gateway certificate chain, name and dates (a `gateway_pin` still holds).
    /// Without a pin, only for tests against throwaway gateways: an origin that cannot
    /// authenticate its gateway hands responses to whoever answers.
    pub danger_accept_any_gateway: bool,
    /// A private CA for the gateway's certificate; WebPKI roots when absent.
    pub ca: Option<PathBuf>,
    /// A client certificate chain (PEM), required by draft-bt `h2-reverse`.
    pub client_cert: Option<PathBuf>,
    /// Its private key.
    pub client_key: Option<PathBuf>,
    /// Connections kept open (HTTP/1.1 mechanisms need several for concurrency).
    pub connections: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on reversed HTTP/2.
    pub max_concurrent_streams: u32,
    /// How long requests in flight may run after shutdown starts.
    pub shutdown_grace: Duration,
    /// Serve reversed HTTP/2 with hyper's server, so that a service's `hyper::upgrade::on`
    /// (and what is built on it, such as axum's `WebSocketUpgrade`) finds its tunnel; each
    /// request then runs in a task of its own. `false` serves it with `ptth_h2::server`:
    /// every request in its connection's task, about a tenth fewer instructions per
    /// request (`docs/performance.md` finding 12), upgrades through
    /// [`service::websocket::on_upgrade`] only. `true` by default, so that any tower or
    /// hyper service works unchanged; the `ptth-origin` binary, whose services all take
    /// their tunnels through `on_upgrade`, sets `false`.
    pub hyper_upgrades: bool,
    /// For tests only: the entries of the draft-bt ORIGIN frame (`h2-reverse`,
    /// `h3-reverse`) instead of the origins derived from `hosts`, so tests can make an
    /// origin claim less (or other) than it asks to be routed for.
    #[doc(hidden)]
    pub origin_frame_override: Option<Vec<String>>,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (off when `None`).
    pub admin: Option<std::net::SocketAddr>,
    /// When `/readyz` says ready.
    pub ready_when: metrics::ReadyWhen,
    /// TCP services offered to every gateway over reverse CONNECT (`--tcp-service`).
    pub tcp_services: Vec<tcp_service::TcpService>,
    /// The HTTP version of the services' control channels (`--service-transport`).
    pub service_transport: service_channel::ServiceTransport,
    /// UDP services offered to every gateway over reverse CONNECT (`--udp-service`), on
    /// the same control channel as the TCP ones.
    pub udp_services: Vec<udp_service::UdpService>,
    /// Threads of their own for the reversed connections. `Some(n)`: `n` threads, each
    /// with a current-thread runtime, the connections dealt out over them in turn (the
    /// first connection to every gateway on the first thread, the second on the next, ...).
    /// A connection's requests, what the service does for them and what it spawns then
    /// stay on one thread, waking no other (`docs/performance.md` finding 13); the service
    /// runs on those threads, where `tokio::task::block_in_place` is not available.
    /// `None` (the default): on the runtime that calls [`Origin::serve`]. The `ptth-origin`
    /// binary sets `--threads`, by default one per CPU.
    pub workers: Option<usize>,
}

impl OriginConfig {
    /// A configuration with defaults for everything optional. `token` may be `None` when
    /// the origin authenticates with a signing key or a client certificate instead; for
    /// HTTP Basic, set [`OriginConfig::credential`] to [`ptth_auth::OriginCredential::basic`].
    pub fn new(
        gateway: http::Uri,
        mechanism: Mechanism,
        hosts: Vec<String>,
        token: Option<ptth_auth::BearerToken>,
    ) -> Self {
        Self {
            gateway,
            more_gateways: Vec::new(),
            mechanism,
            alpn_set: AlpnSet::default(),
            hosts,
            path_prefixes: vec!["/".to_string()],
            credential: token.map(ptth_auth::OriginCredential::Bearer),
            signing_key: None,
            key_id: "origin".to_string(),
            gateway_pin: None,
            danger_accept_any_gateway: false,
            ca: None,
            client_cert: None,
            client_key: None,
            connections: 1,
            max_concurrent_streams: 256,
            shutdown_grace: Duration::from_secs(30),
            hyper_upgrades: true,
            origin_frame_override: None,
            admin: None,
            ready_when: metrics::ReadyWhen::All,
            tcp_services: Vec::new(),
            service_transport: service_channel::ServiceTransport::following(mechanism),
            udp_services: Vec::new(),
            workers: None,
        }
    }

    /// Whether it offers any TCP or UDP service over reverse CONNECT.
    pub fn offers_services(&self) -> bool {
        !self.tcp_services.is_empty() || !self.udp_services.is_empty()
    }

    /// Every gateway this origin dials: `gateway`, then `more_gateways`.
    pub fn gateways(&self) -> impl Iterator<Item = &http::Uri> {
        std::iter::once(&self.gateway).chain(&self.more_gateways)
    }
}

/// What an origin's connections are doing, per gateway: see [`Origin::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginStatus {
    /// One entry per configured gateway, in the order configured.
    pub gateways: Vec<GatewayStatus>,
}

/// The connections to one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    /// The gateway's tunnel URL as configured.
    pub gateway: String,
    /// Connections kept to it (`connections`).
    pub slots: usize,
    /// Connections it has admitted that are still open: the gateway accepted the setup
    /// and, on mechanisms with one, the answer to its authorisation request.
    pub registered: usize,
}

impl OriginStatus {
    /// Whether every gateway has at least one registered connection.
    pub fn all_registered(&self) -> bool {
        !self.gateways.is_empty() && self.gateways.iter().all(|g| g.registered > 0)
    }

    /// Whether any gateway has a registered connection.
    pub fn any_registered(&self) -> bool {
        self.gateways.iter().any(|g| g.registered > 0)
    }
}

/// An origin ready to dial.
#[derive(Debug)]
pub struct Origin {
    dialers: Vec<Arc<dialer::Dialer>>,
    status: Arc<tokio::sync::watch::Sender<OriginStatus>>,
    metrics: Arc<metrics::Metrics>,
}

impl Origin {
    /// Checks the configuration and prepares TLS.
    pub fn new(config: OriginConfig) -> Result<Self> {
        let mut gateways = Vec::new();
        for url in config.gateways() {
            gateways.push(gateway_name(url)?);
        }
        if config.hosts.is_empty() && !config.offers_services() {
            return Err(anyhow!(
                "give at least one --host this origin serves (or a --tcp-service or --udp-service it offers)"
            ));
        }
        tcp_service::check_services(&config.tcp_services)?;
        udp_service::check_services(
            config.tcp_services.iter().map(|s| s.name.as_str()),
            &config.udp_services,
        )?;
        let origins = config
            .hosts
            .iter()
            .map(|h| {
                // A bare host means https; `http://host` registers a cleartext origin,
                // which the gateway never sends requests that arrived over TLS.
                let origin = if h.contains("://") {
                    h.clone()
                } else {
                    format!("https://{h}")
                };
                origin
                    .parse::<SerializedOrigin>()
                    .map_err(|e| anyhow!("--host {h:?}: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        for p in &config.path_prefixes {
            ptth_core::Scope::new("example.invalid", p)
                .map_err(|e| anyhow!("--path {p:?}: {e}"))?;
        }
        let signing_key = match &config.signing_key {
            Some(path) => {
                let bytes =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Some(Arc::new(
                    ptth_auth::Ed25519SigningKey::from_key_file(&bytes)
                        .map_err(|e| anyhow!("{}: {e}", path.display()))?,
                ))
            }
            None => None,
        };
        if config.credential.is_none() && signing_key.is_none() && config.client_cert.is_none() {
            return Err(anyhow!(
                "give a credential: --token, --basic-user, --signing-key or --cert/--key"
            ));
        }
        match (config.danger_accept_any_gateway, config.gateway_pin) {
            (true, None) => tracing::warn!(
                "--danger-accept-any-gateway: the gateway's certificate is NOT verified; anyone on the path can receive this origin's responses"
            ),
            (true, Some(_)) => tracing::warn!(
                "--danger-accept-any-gateway with --gateway-pin: the gateway's chain, name and dates are NOT verified; its key must still match the pin"
            ),
            (false, _) => {}
        }
        let tls = dialer::tls_config(&config)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let slots = config.connections.max(1);
        let status = Arc::new(tokio::sync::watch::Sender::new(OriginStatus {
            gateways: config
                .gateways()
                .map(|url| GatewayStatus {
                    gateway: url.to_string(),
                    slots,
                    registered: 0,
                })
                .collect(),
        }));
        // The configured gateways as the metrics and `/readyz` name them.
        let names: Vec<String> = gateways
            .iter()
            .map(|(_, authority, _)| format!("https://{authority}"))
            .collect();
        let needs = metrics::Needs {
            http: !config.hosts.is_empty(),
            services: config.offers_services(),
        };
        let metrics = Arc::new(metrics::Metrics::new(
            &names,
            slots,
            config.ready_when,
            needs,
        ));
        let config = Arc::new(config);
        let dialers = gateways
            .into_iter()
            .enumerate()
            .map(|(index, (url, authority, server_name))| {
                Arc::new(dialer::Dialer {
                    connector: connector.clone(),
                    gateway: url,
                    index,
                    server_name,
                    authority,
                    origins: origins.clone(),
                    tokens: ptth_core::SetupTokens::default(),
                    signing_key: signing_key.clone(),
                    quic: Default::default(),
                    config: config.clone(),
                    status: status.clone(),
                    metrics: metrics.clone(),
                })
            })
            .collect();
        Ok(Self {
            dialers,
            status,
            metrics,
        })
    }

    /// This origin's metrics and readiness (what `--admin` serves).
    pub fn metrics(&self) -> &Arc<metrics::Metrics> {
        &self.metrics
    }

    /// A read-out of the connections per gateway, kept current while [`Origin::serve`]
    /// runs: a cheap `watch` receiver (`borrow()` it, or wait for `changed()`). For a
    /// readiness check: [`OriginStatus::all_registered`] or [`OriginStatus::any_registered`].
    pub fn status(&self) -> tokio::sync::watch::Receiver<OriginStatus> {
        self.status.subscribe()
    }

    /// Serves `service` over `config.connections` reversed connections until `shutdown`
    /// resolves; then stops taking requests, lets those in flight finish, and returns.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>) -> Result<()>
    where
        S: tower::Service<http::Request<RequestBody>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<serve::BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<serve::BoxError>,
    {
        if let Some(addr) = self.dialers.first().and_then(|d| d.config.admin) {
            let listener = admin::bind(addr)?;
            tracing::info!(admin = %listener.local_addr()?, "admin listener up");
            tokio::spawn(admin::serve(listener, self.metrics.clone()));
        }
        let service = OriginService::new(service);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut slots = tokio::task::JoinSet::new();
        let workers = self
            .dialers
            .first()
            .and_then(|d| d.config.workers)
            .and_then(Workers::start);
        let mut dealt = 0usize;
        for dialer in &self.dialers {
            // An origin that offers only services serves no HTTP: no reversed connection.
            if !dialer.config.hosts.is_empty() {
                for slot in 0..dialer.config.connections.max(1) {
                    let run = dialer.clone().run_slot(slot, service.clone(), rx.clone());
                    match &workers {
                        Some(workers) => slots.spawn_on(run, workers.next(&mut dealt)),
                        None => slots.spawn(run),
                    };
                }
            }
            // One control channel per connection (`--connections`), each on its own
            // connection: the gateway spreads flows over them, and one ending leaves the
            // others serving.
            if dialer.config.offers_services() {
                for k in 0..dialer.config.connections.clamp(1, MAX_SERVICE_CHANNELS) {
                    let (dialer, rx) = (dialer.clone(), rx.clone());
                    slots.spawn(on_own_thread(format!("ptth-services-{k}"), move || {
                        tcp_service::run(dialer, rx)
                    }));
                }
            }
        }
        shutdown.await;
        tracing::info!("shutting down: no new requests; finishing those in flight");
        let _ = tx.send(true);
        while slots.join_next().await.is_some() {}
        Ok(())
    }
}

/// Current-thread runtimes on threads of their own, which the reversed connections are dealt
/// out over ([`OriginConfig::workers`]). Dropping it stops them (each gives what it still
/// runs a second to end).
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    /// `n` workers (at least one); `None`, with a warning, when not even one thread or
    /// runtime can be had (the connections then run on the caller's runtime).
    fn start(n: usize) -> Option<Self> {
        let mut workers = Workers {
            handles: Vec::new(),
            _stop: Vec::new(),
        };
        for k in 0..n.max(1) {
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .and_then(|runtime| {
                    let handle = runtime.handle().clone();
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    std::thread::Builder::new()
                        .name(format!("ptth-worker-{k}"))
                        .spawn(move || {
                            runtime.block_on(async {
                                let _ = stopped.await;
                            });
                            runtime.shutdown_timeout(Duration::from_secs(1));
                        })?;
                    Ok((handle, stop))
                });
            match started {
                Ok((handle, stop)) => {
                    workers.handles.push(handle);
                    workers._stop.push(stop);
                }
                Err(e) => {
                    tracing::warn!(worker = k, error = %e, "no thread for a worker");
                    break;
                }
            }
        }
        if workers.handles.is_empty() {
            tracing::warn!("no worker threads: the connections run on the caller's runtime");
            return None;
        }
        Some(workers)
    }

    /// The worker after the one `dealt` last named.
    fn next(&self, dealt: &mut usize) -> &tokio::runtime::Handle {
        let handle = &self.handles[*dealt % self.handles.len()];
        *dealt += 1;
        handle
    }
}

/// Runs the future `make` builds, and everything it spawns, on a thread of its own with a
/// current-thread runtime; returns when it ends. A control channel runs so: its
/// connection's driver and its flows' splices then share one thread, and a chunk of a flow
/// wakes no other thread on its way between the local socket and the gateway's connection
/// (`docs/performance.md` finding 10: on the caller's multi-thread runtime those wake-ups
/// cost about a sixth of a flow's CPU). Where no thread or runtime can be had, it runs on
/// the caller's runtime instead.
async fn on_own_thread<F, Fut>(name: String, make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let make = Arc::new(std::sync::Mutex::new(Some(make)));
    let take = |m: &std::sync::Mutex<Option<F>>| m.lock().unwrap_or_else(|e| e.into_inner()).take();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let spawned = match runtime {
        Ok(runtime) => {
            let mine = make.clone();
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    if let Some(make) = take(&mine) {
                        runtime.block_on(make());
                    }
                    // Its flows end with it, as they would with the process.
                    runtime.shutdown_timeout(Duration::from_secs(1));
                    drop(done);
                })
        }
        Err(e) => Err(e),
    };
    match spawned {
        Ok(_) => {
            let _ = ended.await;
        }
        Err(e) => {
            tracing::warn!(thread = %name, error = %e, "no thread of its own; running on the caller's runtime");
            if let Some(make) = take(&make) {
                make().await;
            }
        }
    }
}

/// A gateway URL checked: itself, its authority, and the TLS server name it is dialled by.
fn gateway_name(
    url: &http::Uri,
) -> Result<(
    http::Uri,
    http::uri::Authority,
    rustls::pki_types::ServerName<'static>,
)> {
    if url.scheme_str() != Some("https") {
        return Err(anyhow!("--gateway {url} must be an https:// URL"));
    }
    let authority = url
        .authority()
        .cloned()
        .ok_or_else(|| anyhow!("--gateway {url} needs a host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
        .with_context(|| format!("{host:?} is not a valid TLS server name"))?;
    Ok((url.clone(), authority, server_name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control channel runs on a thread of its own, and so does what it spawns (its
    /// connection's driver, its flows): they share that thread, not the caller's workers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_control_channel_and_what_it_spawns_share_a_thread_of_their_own() {
        let (tx, rx) = std::sync::mpsc::channel();
        on_own_thread("ptth-services-test".into(), move || async move {
            let here = std::thread::current();
            let spawned = tokio::spawn(async { std::thread::current().id() })
                .await
                .unwrap();
            tx.send((here.id(), here.name().map(String::from), spawned))
                .unwrap();
        })
        .await;
        let (ran_on, name, spawned_on) = rx.try_recv().unwrap();
        assert_eq!(name.as_deref(), Some("ptth-services-test"));
        assert_eq!(spawned_on, ran_on, "a task it spawned ran on its thread");
        assert_ne!(ran_on, std::thread::current().id());
    }
}
