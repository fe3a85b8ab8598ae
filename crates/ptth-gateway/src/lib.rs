//! The PTTH gateway: accepts reversed connections from origins (which dial out from behind
//! NAT) and routes public HTTP requests to them over those connections.
//!
//! **What it does.** Its tunnel side takes origin connections over TLS or QUIC, for every
//! mechanism `ptth-core` knows, authenticates and authorises them (the config's grants, or
//! your [`Authorise`]), and registers them. Its public side (built-in HTTP/1.1, h2c, TLS
//! and HTTP/3 listeners, or [`GatewayService`] in your own server) routes each request to
//! a registered connection of the matching scope (least outstanding, or your [`Route`]),
//! as a reverse proxy: forwarding fields, `Via`, limits, queueing, safe retries,
//! WebSockets. It reloads grants and certificates, drains, and stops without losing
//! requests.
//!
//! **What it does not do.** It is not an origin (that is `ptth-origin`); it keeps no state
//! shared between gateways (each knows only the origins connected to it); it caches
//! nothing and rewrites no body.
//!
//! ```text
//! public client ─▶ public listener (HTTP/1.1, h2c, TLS, HTTP/3) or GatewayService ─▶ Proxy
//!     ─▶ Registry (scope → least outstanding or Route → own worker) ─▶ Sender (reversed
//!     HTTP/1.1, HTTP/2 or HTTP/3) ─▶ origin
//! origin ─▶ tunnel listener (TLS over TCP, or QUIC) ─▶ admission (ALPN, setup,
//!     authentication, Authorise: one path for both transports) ─▶ Registry ─▶ events
//! ```
//!
//! The shortest working gateway, with the development certificates and token
//! `ptth-gateway --dev` uses:
//!
//! ```
//! # #[tokio::main] async fn main() -> anyhow::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("ptth-gw-doc-{}", std::process::id()));
//! let dev = ptth_gateway::dev::ensure(&dir)?;
//! let token = std::fs::read_to_string(&dev.token)?;
//! let grants = ptth_auth::Grants::from_toml(&format!(
//!     "[[grant]]\nname = \"dev\"\ntoken = \"{}\"\norigins = [\"https://*.localhost\"]\n",
//!     token.trim()
//! ))?;
//! let config = ptth_gateway::GatewayConfig::new(
//!     Some("127.0.0.1:0".parse()?), // public, cleartext
//!     "127.0.0.1:0".parse()?,       // tunnel: origins dial https://localhost:<port>
//!     dev.cert,
//!     dev.key,
//!     grants,
//! );
//! let gateway = ptth_gateway::Gateway::start(&config).await?;
//! println!("public {:?}, tunnel {}", gateway.listen, gateway.tunnel);
//! gateway.shutdown(std::time::Duration::from_secs(1)).await;
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(()) }
//! ```
//!
//! # Embedding
//!
//! In your own server (your TLS, your routes), [`GatewayBuilder`] starts the tunnel side
//! with your policy and without the built-in public listeners, and [`Gateway::service`]
//! is the public side, e.g. an axum fallback. Tell it who each client is with a
//! [`ClientInfo`] request extension. `examples/axum_embed.rs` is a complete program.
//!
//! ```no_run
//! use ptth_gateway::{Authorise, Authorised, BoxFuture, GatewayBuilder, OriginRequest, Refused};
//! use std::collections::HashMap;
//!
//! /// Bearer token → the hosts it may serve.
//! struct Tokens(HashMap<String, Vec<String>>);
//!
//! impl Authorise for Tokens {
//!     fn authorise<'a>(&'a self, req: &'a OriginRequest<'a>) -> BoxFuture<'a, Result<Authorised, Refused>> {
//!         Box::pin(async move {
//!             let token = req.bearer_token().unwrap_or_default();
//!             let hosts = self.0.get(token).ok_or_else(|| Refused::unauthenticated("unknown token"))?;
//!             if let Some(o) = req.origins.iter().find(|o| !hosts.iter().any(|h| h == o.host())) {
//!                 return Err(Refused::forbidden(format!("this token may not serve {o}")));
//!             }
//!             Ok(Authorised::new(token.chars().take(4).collect::<String>(), req.requested_scopes()?))
//!         })
//!     }
//! }
//!
//! # async fn run(config: ptth_gateway::GatewayConfig) -> anyhow::Result<()> {
//! let gateway = GatewayBuilder::new(config)
//!     .tunnel_listener(std::net::TcpListener::bind("0.0.0.0:8443")?)
//!     .public_listeners(false)
//!     .authorise(Tokens(HashMap::from([("s3cret".into(), vec!["app.example".into()])])))
//!     .start()
//!     .await?;
//! let mut events = gateway.events(); // registered, draining, closed
//! let app = axum::Router::new()
//!     .route("/healthz", axum::routing::get(|| async { "ok" }))
//!     .fallback_service(gateway.service());
//! axum::serve(tokio::net::TcpListener::bind("0.0.0.0:8080").await?, app).await?;
//! # Ok(()) }
//! ```
//!
//! The library is what the `ptth-gateway` binary runs: build a [`GatewayConfig`], call
//! [`Gateway::start`], and the returned handle reports the bound addresses. The gateway runs
//! on its own worker threads ([`GatewayConfig::workers`], one per CPU by default), each with
//! its own runtime and its own socket on every TCP listener; the caller's runtime only
//! starts it (and runs [`GatewayService`]'s requests, which reach the workers' connections
//! through channels). [`Gateway::shutdown`] stops it without losing requests, beside a new
//! process that shares its ports (`docs/operations.md`).
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod admin;
mod admission;
pub mod config;
mod credential;
pub mod dev;
mod embed;
mod events;
pub mod forwarding;
mod message;
pub mod metrics;
mod pending;
mod policy;
pub mod proxy;
mod public;
mod public_connect;
mod public_h3;
mod quic;
pub mod registry;
mod replay;
pub mod reverse;
mod sender;
mod setup_request;
mod shutdown;
mod takeover;
pub mod tcp_listen;
pub mod tls;
mod tunnel;
pub mod udp_listen;
mod websocket;
mod workers;

pub use config::GatewayConfig;
pub use embed::{GatewayBuilder, GatewayService};
pub use events::{ConnectionEvent, EventKind, EVENT_BUFFER};
pub use message::{Body, BoxError};
pub use policy::{Authorise, Authorised, BoxFuture, Candidate, OriginRequest, Refused, Route};
pub use proxy::ClientInfo;
pub use registry::{OriginConn, QueueLimits, Registry};

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::TlsAcceptor;

/// A QUIC endpoint that may come up after [`Gateway::start`] returned: while the gateway it
/// replaces still holds the UDP port (see [`bind_udp`]).
type LateEndpoint = Arc<Mutex<Option<quinn::Endpoint>>>;

/// How long a stopping gateway waits for its tunnel QUIC endpoint to send the connections'
/// closes and go idle.
const QUIC_CLOSE_WAIT: Duration = Duration::from_millis(500);

/// The longest a stopping gateway waits, after the cut, for its TCP setup connections to
/// close gracefully (HTTP/2: GOAWAY, a PING's round trip, the last frames, TLS
/// close_notify; HTTP/1.1: close_notify), within what is left of the grace. An origin that
/// answers closes within a round trip; this bounds one that does not.
const SETUP_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where public cleartext clients connect, if enabled.
    pub listen: Option<SocketAddr>,
    /// Where public TLS clients connect, if enabled.
    pub listen_tls: Option<SocketAddr>,
    /// Where origins connect.
    pub tunnel: SocketAddr,
    /// Where origins connect over QUIC (UDP, the tunnel's port number). While the process
    /// this gateway replaces still holds that port, the endpoint binds once it is free.
    pub tunnel_quic: SocketAddr,
    /// Where public HTTP/3 clients connect (UDP, the TLS listener's port number); bound
    /// late like [`Gateway::tunnel_quic`].
    pub listen_h3: Option<SocketAddr>,
    /// Where the admin pages (`/metrics`, `/healthz`, `/readyz`) are served, if enabled.
    pub admin: Option<SocketAddr>,
    /// Where the TCP port mappings listen, in the order configured.
    pub tcp_listen: Vec<SocketAddr>,
    /// Where the UDP port mappings listen, in the order configured.
    pub udp_listen: Vec<SocketAddr>,
    /// What `/readyz` answers.
    readiness: Arc<admin::Readiness>,
    /// The connected origins.
    pub registry: Arc<Registry>,
    /// The public side's proxy, which [`Gateway::service`] wraps.
    proxy: Arc<proxy::Proxy>,
    ctx: Arc<admission::TunnelContext>,
    /// The QUIC tunnel endpoint, whose server config a reload replaces.
    tunnel_quic_endpoint: LateEndpoint,
    /// What the listeners and public connections watch to stop.
    shutdown: shutdown::Shutdown,
    /// The public listeners' certificates by SNI, which a reload replaces.
    public_certs: Arc<tls::PublicResolver>,
    config: GatewayConfig,
    /// Last, so the registry and the endpoint above are dropped after the workers stopped.
    workers: workers::Workers,
}

impl Gateway {
    /// Binds every listener and starts serving. Returns once the sockets are bound.
    /// [`GatewayBuilder`] starts one with the caller's listener and policy.
    pub async fn start(config: &GatewayConfig) -> Result<Self> {
        Self::start_with(config, Hooks::default()).await
    }

    /// The gateway's public side as a `tower::Service`, to mount in another server (an
    /// axum fallback, say): see [`GatewayService`].
    pub fn service(&self) -> GatewayService {
        GatewayService::new(self.proxy.clone())
    }

    /// Origin connections registered, draining and closed from now on: see
    /// [`ConnectionEvent`]. Bounded ([`EVENT_BUFFER`]); the gateway never waits for a
    /// receiver.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<ConnectionEvent> {
        self.registry.events.subscribe()
    }

    async fn start_with(config: &GatewayConfig, hooks: Hooks) -> Result<Self> {
        let Hooks {
            authoriser,
            router,
            tunnel_listener,
        } = hooks;
        let certs = tls::load_certs(&config.cert)?;
        let key = tls::load_key(&config.key)?;
        let public_certs = tls::PublicResolver::new(tls::PublicCerts::load(
            &config.cert,
            &config.key,
            &config.certificates,
        )?);
        for warning in config::operator_warnings(config, &config.grants, &public_certs.current()) {
            tracing::warn!("{warning}");
        }
        let tunnel_tls = tls::tunnel_config(
            certs,
            key,
            config.client_ca.as_deref(),
            config.client_webpki,
            &config.grants,
        )?;
        let registry = Registry::new(QueueLimits {
            max_waiting: config.queue_limit,
            max_wait: config.queue_timeout,
            max_waiting_per_host: config.queue_limit_per_host,
        });
        registry.start_grace(config.startup_grace);
        if let Some(router) = router {
            registry.set_router(router.0);
        }
        let services = Arc::new(reverse::Services::new(
            config.flows,
            registry.metrics.clone(),
        ));
        // Public CONNECT to origins' TCP services: on when proxy users are configured.
        let connect = (!config.proxy_users.is_empty()).then(|| {
            Arc::new(public_connect::PublicConnect::new(
                config.proxy_users.clone(),
                Arc::new(config.grants.clone()),
                services.clone(),
                config.udp,
            ))
        });
        let proxy = proxy::Proxy::with_connect(
            registry.clone(),
            proxy::ProxyConfig {
                via_name: config.via_name.clone(),
                request_timeout: config.request_timeout,
                trusted_proxies: config.trusted_proxies.clone(),
                forwarding_fields: config.forwarding_fields,
                cleartext_https_fallback: config.cleartext_https_fallback,
                retry_body_limit: config.retry_body_limit,
            },
            connect,
        );
        let ctx = Arc::new(admission::TunnelContext {
            registry: registry.clone(),
            grants: std::sync::RwLock::new(Arc::new(config.grants.clone())),
            tls: std::sync::RwLock::new(tunnel_tls),
            setup_tokens: ptth_core::SetupTokens::default(),
            setup_timeout: config.setup_timeout,
            pending: pending::PendingSetups::new(
                config.max_pending_setups,
                config.max_pending_setups_per_ip,
            ),
            services,
            authoriser,
        });
        let shutdown = shutdown::Shutdown::new();

        registry.metrics.label_hosts(&config.metrics_hosts);
        registry.metrics.access.set_mode(config.access_log);
        let workers = workers::Workers::start(config.workers)
            .context("starting the gateway's worker threads")?;
        // The admin listener first, so it answers `/readyz` (503) while the rest binds.
        let readiness = Arc::new(admin::Readiness::default());
        let admin = match config.admin {
            Some(addr) => {
                let home = workers.handle(0);
                let listener = {
                    let _on_worker = home.enter();
                    admin::bind(addr)?
                };
                let bound = listener.local_addr()?;
                home.spawn(admin::serve(
                    listener,
                    admin::Pages {
                        metrics: registry.metrics.clone(),
                        registry: registry.clone(),
                        readiness: readiness.clone(),
                    },
                ));
                Some(bound)
            }
            None => None,
        };
        // Every TCP listener is one socket per worker, so a connection (public or origin)
        // and every task it spawns stay on the worker that accepted it.
        let tunnel_ls = match tunnel_listener {
            // The caller's listener, served on the first worker.
            Some(listener) => {
                listener
                    .set_nonblocking(true)
                    .context("making the tunnel listener non-blocking")?;
                let _on_worker = workers.handle(0).enter();
                vec![tokio::net::TcpListener::from_std(listener)
                    .context("taking the caller's tunnel listener")?]
            }
            None => workers
                .listen_each(config.tunnel)
                .with_context(|| format!("binding the tunnel listener on {}", config.tunnel))?,
        };
        let public_ls = match config.listen {
            Some(addr) => workers
                .listen_each(addr)
                .with_context(|| format!("binding the public listener on {addr}"))?,
            None => Vec::new(),
        };
        let tls_ls = match config.listen_tls {
            Some(addr) => Some(
                workers
                    .listen_each(addr)
                    .with_context(|| format!("binding the public TLS listener on {addr}"))?,
            ),
            None => None,
        };
        let tunnel = first_addr(&tunnel_ls)?;
        let listen = match config.listen {
            Some(_) => Some(first_addr(&public_ls)?),
            None => None,
        };
        let listen_tls = tls_ls.as_deref().map(first_addr).transpose()?;
        // Each listener is registered with its worker's runtime and served there; it stops
        // accepting (its socket closes) when the gateway stops.
        // Origin connections, TCP and QUIC, are placed on the worker holding the fewest.
        let placement = workers.placement();
        for (k, l) in tunnel_ls.into_iter().enumerate() {
            let (ctx, stopping, placement) = (ctx.clone(), shutdown.stopping(), placement.clone());
            workers.handle(k).spawn(async move {
                tokio::select! {
                    () = tunnel::serve(l, ctx, placement) => {}
                    () = stopping.signalled() => {}
                }
            });
        }
        // A TCP port mapping is one socket per worker, like every TCP listener: its flows
        // are spread over the workers, and a new gateway binds it beside the one it
        // replaces. Its flow bound counts the flows of all its sockets.
        let mut tcp_listen = Vec::new();
        for mapping in &config.tcp_mappings {
            let listeners = workers
                .listen_each(mapping.listen)
                .with_context(|| format!("binding the TCP port mapping {mapping}"))?;
            let bound = first_addr(&listeners)?;
            tracing::info!(mapping = %mapping, %bound, "TCP port mapping listening");
            tcp_listen.push(bound);
            let (mapping, open) = (Arc::new(mapping.clone()), tcp_listen::OpenFlows::default());
            for (k, listener) in listeners.into_iter().enumerate() {
                let (mapping, open, services, stopping) = (
                    mapping.clone(),
                    open.clone(),
                    ctx.services.clone(),
                    shutdown.stopping(),
                );
                workers.handle(k).spawn(async move {
                    tokio::select! {
                        () = tcp_listen::serve(listener, mapping, services, open) => {}
                        () = stopping.signalled() => {}
                    }
                });
            }
        }
        // A UDP port mapping is one socket, read on the first worker. Its port is not
        // shared with SO_REUSEPORT, for the reason `bind_udp` gives: a new gateway binds it
        // once the one it replaces has let it go.
        let mut udp_listen = Vec::new();
        for mapping in &config.udp_mappings {
            let listen = mapping.listen;
            let (mapping, services, settings, stopping) = (
                Arc::new(mapping.clone()),
                ctx.services.clone(),
                config.udp,
                shutdown.stopping(),
            );
            let what = format!("UDP port mapping {mapping}");
            let home = workers.handle(0).clone();
            let bound = bind_udp(
                home.clone(),
                "UDP port mapping",
                listen,
                move || {
                    let std = std::net::UdpSocket::bind(listen)
                        .with_context(|| format!("binding the {what}"))?;
                    std.set_nonblocking(true)?;
                    Ok(tokio::net::UdpSocket::from_std(std)?)
                },
                move |socket| {
                    let bound = socket.local_addr().ok();
                    tracing::info!(mapping = %mapping, ?bound, "UDP port mapping listening");
                    let held = stopping.clone();
                    home.spawn(async move {
                        tokio::select! {
                            () = udp_listen::serve(socket, mapping, services, settings, held) => {}
                            () = stopping.signalled() => {}
                        }
                    });
                },
            )?;
            udp_listen.push(bound);
        }
        let alt_svc = listen_tls.and_then(|a| public_h3::alt_svc(a.port()));
        if let (Some(tls_ls), Some(_)) = (tls_ls, listen_tls) {
            let acceptor = TlsAcceptor::from(Arc::new(tls::public_config(public_certs.clone())?));
            for (k, l) in tls_ls.into_iter().enumerate() {
                workers.handle(k).spawn(public::serve(
                    l,
                    Some(acceptor.clone()),
                    proxy.clone(),
                    alt_svc.clone(),
                    config.public_header_timeout,
                    shutdown.stopping(),
                ));
            }
        }
        for (k, l) in public_ls.into_iter().enumerate() {
            workers.handle(k).spawn(public::serve(
                l,
                None,
                proxy.clone(),
                alt_svc.clone(),
                config.public_header_timeout,
                shutdown.stopping(),
            ));
        }

        // The QUIC tunnel shares the TCP tunnel's port number, so origins dial one address
        // whatever their mechanism's transport. One endpoint, its socket read on the first
        // worker: a UDP port split by SO_REUSEPORT loses a connection whose address changes
        // (docs/performance.md), and one shared with another process would take flows of
        // that process's connections (see `bind_udp`).
        let tunnel_quic_endpoint: LateEndpoint = Arc::default();
        let tunnel_quic = {
            let quic_home = workers.handle(0).clone();
            let every_worker: Vec<tokio::runtime::Handle> = (0..workers.len())
                .map(|k| workers.handle(k).clone())
                .collect();
            let (bind_ctx, serve_ctx, slot) =
                (ctx.clone(), ctx.clone(), tunnel_quic_endpoint.clone());
            let quic_placement = placement.clone();
            let stopping = shutdown.stopping();
            bind_udp(
                quic_home,
                "QUIC tunnel endpoint",
                tunnel,
                move || quic::tunnel_endpoint(&bind_ctx, tunnel),
                move |endpoint| {
                    // Every worker accepts from the one QUIC endpoint: a connection is
                    // admitted, and its QUIC driver runs (quinn spawns it where `accept`
                    // runs), on the worker that took it. A stopping gateway refuses new
                    // origin connections: they reconnect to the process that replaces it.
                    for handle in &every_worker {
                        let (endpoint, ctx, stopping, placement) = (
                            endpoint.clone(),
                            serve_ctx.clone(),
                            stopping.clone(),
                            quic_placement.clone(),
                        );
                        handle.spawn(async move {
                            tokio::select! {
                                () = quic::serve_tunnel(endpoint.clone(), ctx, placement) => {}
                                () = stopping.signalled() => endpoint.set_server_config(None),
                            }
                        });
                    }
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint);
                },
            )?
        };
        let mut listen_h3 = None;
        if let Some(tls_addr) = listen_tls {
            // The public HTTP/3 endpoint's socket is read on the last worker, away from the
            // QUIC tunnel's (the same one when there is one worker); its connections are
            // handed to the workers in turn, and each is served where it was handed.
            let h3_home = workers.handle(workers.len() - 1).clone();
            let certs = public_certs.clone();
            let header_timeout = config.public_header_timeout;
            let (spread, proxy) = (workers.round_robin(), proxy.clone());
            let (serve_home, stopping) = (h3_home.clone(), shutdown.stopping());
            let datagrams = proxy.serves_connect();
            listen_h3 = Some(bind_udp(
                h3_home,
                "public HTTP/3 endpoint",
                tls_addr,
                move || public_h3::endpoint(certs.clone(), tls_addr, header_timeout, datagrams),
                move |endpoint| {
                    // It refuses new connections itself when the gateway stops.
                    serve_home.spawn(public_h3::serve(
                        endpoint,
                        proxy,
                        header_timeout,
                        spread,
                        stopping,
                    ));
                },
            )?);
        }
        tracing::info!(
            listen = %display_or_none(listen),
            listen_tls = %display_or_none(listen_tls),
            listen_h3 = %display_or_none(listen_h3),
            %tunnel,
            admin = %display_or_none(admin),
            "gateway listening"
        );
        readiness.set(Ok(()));
        Ok(Self {
            listen,
            listen_tls,
            tunnel,
            tunnel_quic,
            listen_h3,
            admin,
            tcp_listen,
            udp_listen,
            readiness,
            registry,
            proxy,
            ctx,
            tunnel_quic_endpoint,
            shutdown,
            public_certs,
            config: config.clone(),
            workers,
        })
    }

    /// Puts new grants in force (SIGHUP): new origins are checked against them at once, and
    /// every connected origin is re-authenticated with the credential it presented (kept
    /// without its secret, see [`ptth_auth::Proven`]) and re-authorised for what it
    /// registered. Those whose credential no grant accepts any more (rotated, removed) or
    /// whose grants no longer cover their scopes are drained: no new requests, requests in
    /// flight finish (30 s at most), then the connection closes. Healthy connections are
    /// untouched, whatever their grants are called now. Returns how many drained.
    ///
    /// The public certificates (`cert`/`key` and `[[certificate]]`) are re-read too: new
    /// handshakes get the new ones, established connections keep theirs. Settings of the
    /// config file that changed but only apply on a restart are logged by name.
    ///
    /// Open reverse CONNECT control channels are checked again too: one whose credential
    /// no grant with services accepts is closed (its flows in progress run on), the others
    /// offer what the new grants allow.
    pub fn reload(&self, grants: ptth_auth::Grants) -> Result<usize> {
        let reloaded = self.reload_grants(grants);
        self.registry.metrics.reloaded(reloaded.is_ok());
        reloaded
    }

    /// Counts a reload that failed before it reached [`Gateway::reload`] (the config file
    /// could not be read or parsed).
    pub fn reload_failed(&self) {
        self.registry.metrics.reloaded(false);
    }

    /// Says on `/readyz` that the gateway is shutting down (503), so a load balancer stops
    /// sending it traffic.
    pub fn stopping(&self) {
        self.readiness
            .set(Err("shutting down: no longer taking new traffic".into()));
    }

    fn reload_grants(&self, grants: ptth_auth::Grants) -> Result<usize> {
        let mut reread = config::reread(&self.config)?;
        // Checked against the new grants before anything is put in force: a proxy user that
        // reaches a grant or service no longer there fails the reload as a whole.
        let proxy_users = reread
            .proxy_users
            .take()
            .map(|specs| config::checked_proxy_users(specs, &grants))
            .transpose()?;
        let public_certs =
            tls::PublicCerts::load(&self.config.cert, &self.config.key, &reread.certificates)?;
        let certs = tls::load_certs(&self.config.cert)?;
        let key = tls::load_key(&self.config.key)?;
        let tunnel_tls = tls::tunnel_config(
            certs,
            key,
            self.config.client_ca.as_deref(),
            self.config.client_webpki,
            &grants,
        )?;
        // quinn keeps its own copy of the TLS config: hand the QUIC tunnel endpoint the new
        // one too, for connections accepted from now on.
        let quic_config = quic::tunnel_server_config(&tunnel_tls)?;
        let grants = Arc::new(grants);
        if let Some(endpoint) = self
            .tunnel_quic_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            endpoint.set_server_config(Some(quic_config));
        }
        *self.ctx.tls.write().unwrap_or_else(|e| e.into_inner()) = tunnel_tls;
        *self.ctx.grants.write().unwrap_or_else(|e| e.into_inner()) = grants.clone();
        for warning in config::operator_warnings(&self.config, &grants, &public_certs) {
            tracing::warn!("{warning}");
        }
        self.public_certs.replace(public_certs);
        for line in &reread.restart_needed {
            tracing::warn!("{line}");
        }
        // Every connection registered from here on was checked against the new grants
        // (`admission::register`); every one registered before is in this snapshot.
        let revoked: std::collections::HashMap<u64, (Arc<OriginConn>, credential::Revoked)> = self
            .registry
            .snapshot()
            .into_iter()
            // A custom authoriser's decisions stand: the grants re-check only their own.
            .filter(|_| self.ctx.authoriser.is_none())
            .filter_map(|conn| {
                credential::recheck(&grants, &conn.admission, &conn.scopes)
                    .err()
                    .map(|why| (conn.id, (conn, why)))
            })
            .collect();
        // The drains run on a worker (their tasks wait out requests in flight, then close
        // the connection), whatever runtime, if any, the caller has.
        let _on_worker = self.workers.handle(0).enter();
        let drained = self.registry.drain_unless(
            |conn| !revoked.contains_key(&conn.id),
            ptth_core::DrainSource::Revoked,
            std::time::Duration::from_secs(30),
        );
        for (conn, why) in revoked.values() {
            tracing::warn!(
                conn = conn.id,
                mechanism = %conn.mechanism,
                grant = %conn.admission.identity,
                credential = %conn.admission.proven.describe(),
                peer = %conn.peer,
                "origin connection drained on reload: {why}"
            );
        }
        match (self.proxy.connect(), proxy_users) {
            (Some(connect), Some(users)) => connect.reload(users, grants.clone()),
            (Some(connect), None) => {
                connect.reload(self.config.proxy_users.clone(), grants.clone())
            }
            (None, Some(users)) if !users.is_empty() => tracing::warn!(
                "[[proxy-user]] tables were added; restart to turn CONNECT at the public listeners on"
            ),
            (None, _) => {}
        }
        // Reverse CONNECT control channels were authenticated by the grants alone (the
        // authoriser decides HTTP registrations): each is checked again.
        let channels_closed = self.ctx.services.regrant(&grants);
        tracing::info!(
            grants = grants.len(),
            drained,
            channels_closed,
            "grants reloaded"
        );
        Ok(drained)
    }

    /// The settled configuration this gateway runs with.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// How many workers serve (threads, each with its own runtime and listening sockets).
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Stops gracefully (SIGTERM), within `grace`:
    ///
    /// 1. Stops accepting: every listening socket closes, so the kernel hands new
    ///    connections to a new gateway process sharing the ports (`SO_REUSEPORT`), and the
    ///    QUIC endpoints refuse new connections.
    /// 2. Winds down the public connections: HTTP/1.1 answers carry `Connection: close`,
    ///    then (after a linger of one second) HTTP/2 and HTTP/3 clients get GOAWAY and idle
    ///    HTTP/1.1 connections close; exchanges in flight finish.
    /// 3. Once no public connection is left (or that linger plus two
    ///    seconds passed), drains every origin connection: no new requests, and
    ///    each closes as soon as its requests in flight finished (HTTP/3 with H3_NO_ERROR;
    ///    HTTP/1.1 and HTTP/2 by closing the connection), so its origin reconnects, to the
    ///    new process.
    /// 4. Once no origin connection is left (or `grace` ended), and the reverse CONNECT
    ///    flows in progress finished (or `grace` ended), cuts every flow and control
    ///    channel left, and closes the TCP setup connections gracefully: HTTP/2 ones send
    ///    GOAWAY, write their streams' last frames, then TLS close_notify; HTTP/1.1 ones
    ///    (a control channel's among them) close_notify. It waits for those closes, at
    ///    most a second and never past `grace`; then the QUIC tunnel endpoint closes its
    ///    connections (H3_NO_ERROR).
    /// 5. Returns; then [`Gateway::stop`] ends whatever is still running.
    ///
    /// Returns whether everything finished within the grace.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        // `/readyz` says 503 from now on, so a load balancer stops sending new traffic.
        self.stopping();
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(
            ?grace,
            public_connections = self.shutdown.open(),
            origin_connections = self.registry.len(),
            "stopping: listeners closed; public connections and origins are wound down"
        );
        self.shutdown.signal();
        // Reverse CONNECT: no new connection requests; flows in progress may finish.
        self.ctx.services.stop();
        if let Some(endpoint) = self
            .tunnel_quic_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            endpoint.set_server_config(None);
        }
        let settle = (tokio::time::Instant::now() + public::LINGER + ORIGINS_AFTER).min(deadline);
        let _ = tokio::time::timeout_at(settle, self.shutdown.until_closed()).await;
        // Origins registering from here on (a setup that was under way) are drained too.
        let mut drained = std::collections::HashSet::new();
        let finished = loop {
            let fresh: Vec<u64> = self
                .registry
                .snapshot()
                .into_iter()
                .map(|c| c.id)
                .filter(|id| !drained.contains(id))
                .collect();
            if !fresh.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let _on_worker = self.workers.handle(0).enter();
                self.registry.drain_unless(
                    |conn| !fresh.contains(&conn.id),
                    ptth_core::DrainSource::Local,
                    left,
                );
                drained.extend(fresh);
            }
            let empty = self.registry.until_empty();
            let next_check =
                (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
            match tokio::time::timeout_at(next_check, empty).await {
                Ok(()) => break true,
                Err(_) if tokio::time::Instant::now() >= deadline => break false,
                Err(_) => {}
            }
        };
        // Reverse CONNECT flows in progress finish by the deadline; then every flow and
        // control channel is closed.
        let flows_done = tokio::time::timeout_at(deadline, self.ctx.services.until_no_flows())
            .await
            .is_ok();
        let flows_left = self.ctx.services.open_flows();
        // The setup connections close gracefully, and the stop waits for them: a flow's or
        // a channel's end is a frame queued on its connection, written by that
        // connection's driver on its worker, and stopping the workers first would leave
        // the origin to read a lost connection instead (GOAWAY and close_notify unsent).
        let close_by = (tokio::time::Instant::now() + SETUP_CLOSE_WAIT).min(deadline);
        let connections = self.ctx.services.open_connections();
        self.ctx.services.cut(close_by);
        if tokio::time::timeout_at(close_by, self.ctx.services.until_connections_closed())
            .await
            .is_err()
        {
            tracing::debug!(
                open = self.ctx.services.open_connections(),
                of = connections,
                "setup connections not closed by the stop's deadline: cut"
            );
        }
        // Registered QUIC origins were drained above, but a connection still in setup (its
        // handshake done just before the endpoint stopped taking new ones) is not in the
        // registry, and a CONNECTION_CLOSE is only queued until the endpoint's driver sends
        // it: a process that exits at once leaves those origins to find out by their idle
        // timeout (6 s). Seen in CI: a connect-h3 origin's setup 'timed out' and it reached
        // the restarted gateway 4.2 s after it listened. So the endpoint closes every
        // connection and gets a moment to send the closes and go idle.
        let endpoint = self
            .tunnel_quic_endpoint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(endpoint) = endpoint {
            endpoint.close(quinn::VarInt::from_u32(0x100), b"gateway stopping");
            let _ = tokio::time::timeout(QUIC_CLOSE_WAIT, endpoint.wait_idle()).await;
        }
        let finished = finished && flows_done;
        let public_left = self.shutdown.open();
        if finished && public_left == 0 {
            tracing::info!("stopped: every request finished and every origin connection closed");
        } else {
            tracing::warn!(
                public_connections = public_left,
                origin_connections = self.registry.len(),
                tcp_flows = flows_left,
                "the shutdown grace ended with work still running; it is cut"
            );
        }
        finished && public_left == 0
    }

    /// Stops every worker: listeners close, and every connection and task on a worker ends
    /// with its runtime, which the worker's own thread drops. Returns at once; dropping the
    /// `Gateway` also waits for the worker threads to finish.
    pub fn stop(&self) {
        self.stopping();
        self.workers.stop();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What an embedding application gave [`GatewayBuilder`] beside the configuration.
#[derive(Debug, Default)]
struct Hooks {
    authoriser: Option<policy::Hook<dyn Authorise>>,
    router: Option<policy::Hook<dyn Route>>,
    tunnel_listener: Option<std::net::TcpListener>,
}

/// How long after [`public::LINGER`] a stopping gateway waits for its public connections to
/// end before it lets its origins go anyway (long responses still finish: a draining origin
/// connection keeps its requests in flight).
const ORIGINS_AFTER: Duration = Duration::from_secs(2);

/// Binds a QUIC endpoint with `bind` and hands it to `serve`, now; or, when its UDP port is
/// in use, on `home` as soon as the port is free, and returns the address it will have.
///
/// The port is not shared with `SO_REUSEPORT`, unlike the TCP listeners: Linux picks the
/// socket of a UDP datagram by a hash of its addresses over the sockets sharing the port,
/// so a new process joining the port would receive part of the datagrams of the QUIC
/// connections the old process still serves, and those connections would stall. A new
/// gateway therefore waits for the old one to exit (which releases the port) before it
/// serves QUIC; until then its origins and public clients use TCP.
fn bind_udp<T: UdpBound>(
    home: tokio::runtime::Handle,
    what: &'static str,
    addr: SocketAddr,
    bind: impl Fn() -> Result<T> + Send + 'static,
    serve: impl FnOnce(T) + Send + 'static,
) -> Result<SocketAddr> {
    let first = {
        let _on_worker = home.enter();
        bind()
    };
    match first {
        Ok(endpoint) => {
            let bound = endpoint.local_addr()?;
            serve(endpoint);
            Ok(bound)
        }
        Err(e) if addr.port() != 0 && in_use(&e) => {
            tracing::warn!(%addr, "the {what}'s UDP port is in use (the gateway this one replaces?): it binds once the port is free; QUIC waits until then");
            home.spawn(async move {
                let mut waited = 0u32;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match bind() {
                        Ok(endpoint) => {
                            tracing::info!(%addr, "the {what} is bound");
                            serve(endpoint);
                            return;
                        }
                        Err(e) if in_use(&e) => {
                            waited += 1;
                            if waited % 100 == 0 {
                                tracing::warn!(%addr, "the {what}'s UDP port is still in use; waiting for it");
                            }
                        }
                        Err(e) => {
                            tracing::error!(%addr, error = %format!("{e:#}"), "the {what} cannot be bound; the gateway runs without it");
                            return;
                        }
                    }
                }
            });
            Ok(addr)
        }
        Err(e) => Err(e),
    }
}

/// What `bind_udp` binds: a QUIC endpoint or a plain UDP socket.
trait UdpBound {
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

impl UdpBound for quinn::Endpoint {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        quinn::Endpoint::local_addr(self)
    }
}

impl UdpBound for tokio::net::UdpSocket {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

/// Whether binding failed because the address is taken.
fn in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// Checks a configuration without starting anything (`--check-config`): the certificate
/// chain and key parse, the tunnel's TLS settings (client CA, grants' pinned keys) build,
/// and so does the public TLS config. The grants were checked when the config resolved.
pub fn check_config(config: &GatewayConfig) -> Result<()> {
    let certs = tls::load_certs(&config.cert)?;
    let key = tls::load_key(&config.key)?;
    tls::tunnel_config(
        certs.clone(),
        key.clone_key(),
        config.client_ca.as_deref(),
        config.client_webpki,
        &config.grants,
    )?;
    tls::public_config(tls::PublicResolver::new(tls::PublicCerts::load(
        &config.cert,
        &config.key,
        &config.certificates,
    )?))?;
    Ok(())
}

/// An optional address for the log: the address, or `none`.
fn display_or_none(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "none".to_string(), |a| a.to_string())
}

/// The address the listeners of one [`workers::Workers::listen_each`] share.
fn first_addr(listeners: &[tokio::net::TcpListener]) -> Result<SocketAddr> {
    let first = listeners.first().context("no listening socket was bound")?;
    Ok(first.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The status line of a `GET /` for a host no origin serves, over a fresh connection.
    async fn status_line(addr: SocketAddr) -> String {
        let exchange = async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await?;
            std::io::Result::Ok(answer)
        };
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .expect("every worker's socket is served")
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        text.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_gateway_serves_on_every_worker_reloads_and_stops() {
        let dir = std::env::temp_dir().join(format!("ptth-gw-workers-{}", std::process::id()));
        let (config, _dev) = config::Cli::try_parse_from([
            "ptth-gateway",
            "--dev",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--tunnel",
            "127.0.0.1:0",
            "--threads",
            "2",
            "--startup-grace",
            "0",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        let gateway = Gateway::start(&config).await.unwrap();
        assert_eq!(gateway.workers(), 2);
        // Enough connections that both workers' sockets get some (the kernel spreads them
        // by source port); a socket nobody served would leave its connections unanswered.
        for _ in 0..32 {
            let line = status_line(gateway.listen.unwrap()).await;
            assert!(line.starts_with("HTTP/1.1 50"), "{line}");
        }
        // A reload spawns its drains on a worker: none here, and it still works.
        assert_eq!(gateway.reload(config.grants.clone()).unwrap(), 0);
        let (listen, tunnel, tls) = (gateway.listen, gateway.tunnel, gateway.listen_tls);
        drop(gateway);
        for addr in [listen, Some(tunnel), tls].into_iter().flatten() {
            assert!(
                tokio::net::TcpStream::connect(addr).await.is_err(),
                "{addr} still listens after the gateway was dropped"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
