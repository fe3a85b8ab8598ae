//! The PTTH gateway: accepts reversed connections from origins and routes public requests
//! to them.
//!
//! ```text
//! public client ─▶ public listener ─▶ Proxy ─▶ Registry (scope → least outstanding) ─▶
//!     OriginConn (reversed HTTP/1.1 or HTTP/2) ─▶ origin
//! origin ─▶ tunnel listener (TLS; ALPN dispatch) ─▶ setup + authentication ─▶ Registry
//! ```
//!
//! The library is what the `ptth-gateway` binary runs: build a [`GatewayConfig`], call
//! [`Gateway::start`], and the returned handle reports the bound addresses.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admission;
pub mod config;
mod credential;
pub mod dev;
pub mod forwarding;
mod message;
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

pub use config::GatewayConfig;
pub use registry::{OriginConn, QueueLimits, Registry};

use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
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
    /// The connected origins.
    pub registry: Arc<Registry>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ctx: Arc<admission::TunnelContext>,
    /// The QUIC tunnel endpoint, whose server config a reload replaces.
    tunnel_quic_endpoint: quinn::Endpoint,
    config: GatewayConfig,
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

        let tunnel_l = TcpListener::bind(config.tunnel)
            .await
            .with_context(|| format!("binding the tunnel listener on {}", config.tunnel))?;
        let public_l = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the public listener on {}", config.listen))?;
        let tunnel = tunnel_l.local_addr()?;
        let listen = public_l.local_addr()?;
        // The QUIC tunnel shares the TCP tunnel's port number, so origins dial one address
        // whatever their mechanism's transport.
        let tunnel_quic_ep = quic::tunnel_endpoint(&ctx, tunnel)?;
        let tunnel_quic = tunnel_quic_ep.local_addr()?;
        let mut tasks = vec![
            tokio::spawn(tunnel::serve(tunnel_l, ctx.clone())),
            tokio::spawn(quic::serve_tunnel(tunnel_quic_ep.clone(), ctx.clone())),
        ];
        let mut listen_tls = None;
        let mut listen_h3 = None;
        let mut alt_svc = None;
        if let Some(addr) = config.listen_tls {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the public TLS listener on {addr}"))?;
            let tls_addr = l.local_addr()?;
            listen_tls = Some(tls_addr);
            let h3 = public_h3::endpoint(
                certs.clone(),
                key.clone_key(),
                tls_addr,
                config.public_header_timeout,
            )?;
            listen_h3 = Some(h3.local_addr()?);
            alt_svc = public_h3::alt_svc(tls_addr.port());
            tasks.push(tokio::spawn(public_h3::serve(
                h3,
                proxy.clone(),
                config.public_header_timeout,
            )));
            let acceptor = TlsAcceptor::from(Arc::new(tls::public_config(certs, key)?));
            tasks.push(tokio::spawn(public::serve(
                l,
                Some(acceptor),
                proxy.clone(),
                alt_svc.clone(),
                config.public_header_timeout,
            )));
        }
        tasks.push(tokio::spawn(public::serve(
            public_l,
            None,
            proxy,
            alt_svc,
            config.public_header_timeout,
        )));
        tracing::info!(%listen, ?listen_tls, ?listen_h3, %tunnel, "gateway listening");
        Ok(Self {
            listen,
            listen_tls,
            tunnel,
            tunnel_quic,
            listen_h3,
            registry,
            tasks,
            ctx,
            tunnel_quic_endpoint: tunnel_quic_ep,
            config: config.clone(),
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
        let drained = self.registry.drain_unless(
            |conn| !revoked.contains_key(&conn.id),
            ptth_core::DrainSource::Revoked,
            std::time::Duration::from_secs(30),
        );
        for (conn, why) in revoked.values() {
            tracing::warn!(
                conn = conn.id,
                mechanism = %conn.mechanism,
                origin = %conn.admission.identity,
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

    /// Stops every listener. Connections already accepted end with their tasks.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}
