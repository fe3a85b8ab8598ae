//! The PTTH gateway: accepts reversed connections from origins and routes public requests
//! to them.
//!
//! ```text
//! public client ─▶ public listener (HTTP/1.1, h2c, TLS, HTTP/3) ─▶ Proxy ─▶
//!     Registry (scope → own worker → least outstanding) ─▶ Sender (reversed HTTP/1.1,
//!     HTTP/2 or HTTP/3) ─▶ origin
//! origin ─▶ tunnel listener (TLS over TCP, or QUIC) ─▶ admission (ALPN, setup,
//!     authentication, one path for both transports) ─▶ Registry
//! ```
//!
//! The library is what the `ptth-gateway` binary runs: build a [`GatewayConfig`], call
//! [`Gateway::start`], and the returned handle reports the bound addresses. The gateway runs
//! on its own worker threads ([`GatewayConfig::workers`], one per CPU by default), each with
//! its own runtime and its own socket on every TCP listener; the caller's runtime only
//! starts it.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access_log;
pub mod admin;
mod admission;
pub mod config;
mod credential;
pub mod dev;
pub mod forwarding;
mod message;
pub mod metrics;
mod pending;
pub mod proxy;
mod public;
mod public_h3;
mod quic;
pub mod registry;
mod sender;
mod setup_request;
pub mod tls;
mod tunnel;
mod workers;

pub use config::GatewayConfig;
pub use registry::{OriginConn, QueueLimits, Registry};

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    /// Where public cleartext clients connect.
    pub listen: SocketAddr,
    /// Where public TLS clients connect, if enabled.
    pub listen_tls: Option<SocketAddr>,
    /// Where origins connect.
    pub tunnel: SocketAddr,
    /// Where origins connect over QUIC (UDP, the tunnel's port number).
    pub tunnel_quic: SocketAddr,
    /// Where public HTTP/3 clients connect (UDP, the TLS listener's port number).
    pub listen_h3: Option<SocketAddr>,
    /// Where the admin pages (`/metrics`, `/healthz`, `/readyz`) are served, if enabled.
    pub admin: Option<SocketAddr>,
    /// What `/readyz` answers.
    readiness: Arc<admin::Readiness>,
    /// The connected origins.
    pub registry: Arc<Registry>,
    ctx: Arc<admission::TunnelContext>,
    /// The QUIC tunnel endpoint, whose server config a reload replaces.
    tunnel_quic_endpoint: quinn::Endpoint,
    config: GatewayConfig,
    /// Last, so the registry and the endpoint above are dropped after the workers stopped.
    workers: workers::Workers,
}

impl Gateway {
    /// Binds every listener and starts serving. Returns once the sockets are bound.
    pub async fn start(config: &GatewayConfig) -> Result<Self> {
        let certs = tls::load_certs(&config.cert)?;
        let key = tls::load_key(&config.key)?;
        let tunnel_tls = tls::tunnel_config(
            certs.clone(),
            key.clone_key(),
            config.client_ca.as_deref(),
            config.client_webpki,
            &config.grants,
        )?;
        let registry = Registry::new(QueueLimits {
            max_waiting: config.queue_limit,
            max_wait: config.queue_timeout,
            max_waiting_per_host: config.queue_limit_per_host,
        });
        let proxy = proxy::Proxy::new(
            registry.clone(),
            proxy::ProxyConfig {
                via_name: config.via_name.clone(),
                request_timeout: config.request_timeout,
                trusted_proxies: config.trusted_proxies.clone(),
                cleartext_https_fallback: config.cleartext_https_fallback,
            },
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
        });

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
        let tunnel_ls = workers
            .listen_each(config.tunnel)
            .with_context(|| format!("binding the tunnel listener on {}", config.tunnel))?;
        let public_ls = workers
            .listen_each(config.listen)
            .with_context(|| format!("binding the public listener on {}", config.listen))?;
        let tunnel = first_addr(&tunnel_ls)?;
        let listen = first_addr(&public_ls)?;
        // The QUIC tunnel shares the TCP tunnel's port number, so origins dial one address
        // whatever their mechanism's transport. One endpoint, its socket read on the first
        // worker: a UDP port split by SO_REUSEPORT loses a connection whose address changes
        // (docs/performance.md).
        let quic_home = workers.handle(0);
        let tunnel_quic_ep = {
            let _on_worker = quic_home.enter();
            quic::tunnel_endpoint(&ctx, tunnel)?
        };
        let tunnel_quic = tunnel_quic_ep.local_addr()?;
        // Each listener is registered with its worker's runtime and served there.
        for (k, l) in tunnel_ls.into_iter().enumerate() {
            workers.handle(k).spawn(tunnel::serve(l, ctx.clone()));
        }
        // Every worker accepts from the one QUIC endpoint: a connection is admitted, and its
        // QUIC driver runs (quinn spawns it where `accept` runs), on the worker that took it.
        for k in 0..workers.len() {
            workers
                .handle(k)
                .spawn(quic::serve_tunnel(tunnel_quic_ep.clone(), ctx.clone()));
        }
        let mut listen_tls = None;
        let mut listen_h3 = None;
        let mut alt_svc = None;
        if let Some(addr) = config.listen_tls {
            let tls_ls = workers
                .listen_each(addr)
                .with_context(|| format!("binding the public TLS listener on {addr}"))?;
            let tls_addr = first_addr(&tls_ls)?;
            listen_tls = Some(tls_addr);
            // The public HTTP/3 endpoint's socket is read on the last worker, away from the
            // QUIC tunnel's (the same one when there is one worker); its connections are
            // handed to the workers in turn, and each is served where it was handed.
            let h3_home = workers.handle(workers.len() - 1);
            let h3 = {
                let _on_worker = h3_home.enter();
                public_h3::endpoint(
                    certs.clone(),
                    key.clone_key(),
                    tls_addr,
                    config.public_header_timeout,
                )?
            };
            listen_h3 = Some(h3.local_addr()?);
            alt_svc = public_h3::alt_svc(tls_addr.port());
            h3_home.spawn(public_h3::serve(
                h3,
                proxy.clone(),
                config.public_header_timeout,
                workers.round_robin(),
            ));
            let acceptor = TlsAcceptor::from(Arc::new(tls::public_config(certs, key)?));
            for (k, l) in tls_ls.into_iter().enumerate() {
                workers.handle(k).spawn(public::serve(
                    l,
                    Some(acceptor.clone()),
                    proxy.clone(),
                    alt_svc.clone(),
                    config.public_header_timeout,
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
            ));
        }
        tracing::info!(%listen, listen_tls = listen_tls.map(tracing::field::display), listen_h3 = listen_h3.map(tracing::field::display), %tunnel, admin = admin.map(tracing::field::display), "gateway listening");
        readiness.set(Ok(()));
        Ok(Self {
            listen,
            listen_tls,
            tunnel,
            tunnel_quic,
            listen_h3,
            admin,
            readiness,
            registry,
            ctx,
            tunnel_quic_endpoint: tunnel_quic_ep,
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
        self.tunnel_quic_endpoint
            .set_server_config(Some(quic_config));
        *self.ctx.tls.write().unwrap_or_else(|e| e.into_inner()) = tunnel_tls;
        *self.ctx.grants.write().unwrap_or_else(|e| e.into_inner()) = grants.clone();
        // Every connection registered from here on was checked against the new grants
        // (`admission::register`); every one registered before is in this snapshot.
        let revoked: std::collections::HashMap<u64, (Arc<OriginConn>, credential::Revoked)> = self
            .registry
            .snapshot()
            .into_iter()
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
        tracing::info!(grants = grants.len(), drained, "grants reloaded");
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
        ])
        .unwrap()
        .resolve()
        .unwrap();
        let gateway = Gateway::start(&config).await.unwrap();
        assert_eq!(gateway.workers(), 2);
        // Enough connections that both workers' sockets get some (the kernel spreads them
        // by source port); a socket nobody served would leave its connections unanswered.
        for _ in 0..32 {
            let line = status_line(gateway.listen).await;
            assert!(line.starts_with("HTTP/1.1 50"), "{line}");
        }
        // A reload spawns its drains on a worker: none here, and it still works.
        assert_eq!(gateway.reload(config.grants.clone()).unwrap(), 0);
        let (listen, tunnel, tls) = (gateway.listen, gateway.tunnel, gateway.listen_tls);
        drop(gateway);
        for addr in [Some(listen), Some(tunnel), tls].into_iter().flatten() {
            assert!(
                tokio::net::TcpStream::connect(addr).await.is_err(),
                "{addr} still listens after the gateway was dropped"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
