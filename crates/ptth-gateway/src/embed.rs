//! Embedding the gateway in another server: [`GatewayService`], the public side as a
//! `tower::Service` (an axum fallback, a hyper service), and [`GatewayBuilder`], which
//! starts the tunnel side with the caller's listener and policy hooks.

use crate::message::{Body, BoxError};
use crate::policy::{Authorise, Hook, Route};
use crate::proxy::{ClientInfo, Proxy};
use crate::{Gateway, GatewayConfig};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

/// The gateway's public side as a `tower::Service`: routes each request to a registered
/// origin exactly as the built-in public listeners do (the same proxy: routing, queue
/// limits, request timeout, hop-by-hop and `ptth-*` field stripping, `Via` and forwarding
/// fields, safe retries, access log and metrics). Never fails: every error is a response
/// (503 when no origin serves the host, 502 when the origin failed, …).
///
/// Cheap to clone (one `Arc`); get one with [`Gateway::service`].
///
/// **Who the client is.** The service cannot see the connection a request came on, so it
/// reads a [`ClientInfo`] from the request's extensions (the client's address, whether
/// the connection is TLS, the local port; they decide the forwarding fields and whether an
/// `https://` scope serves the request), and uses [`GatewayService::with_client`]'s
/// otherwise (by default: `0.0.0.0:0`, TLS, port 443). Serving connections yourself, put
/// it in per connection, e.g. an axum `Router` with `.layer(axum::Extension(info))`.
///
/// **What the embedding server must do.** Everything the built-in listeners do before a
/// request reaches the proxy is the server's: TLS, the header-size limit (the built-in
/// listeners allow 64 KiB), the idle and header timeouts, HTTP/3 and `alt-svc`.
/// WebSockets work when the server provides hyper's upgrades: HTTP/1.1 `Upgrade` needs a
/// hyper connection served `with_upgrades` (axum's `serve` does), HTTP/2 extended
/// CONNECT (RFC 8441) needs its HTTP/2 builder's `enable_connect_protocol`. Without them
/// the WebSocket handshake fails with 502 and nothing else is affected.
#[derive(Debug, Clone)]
pub struct GatewayService {
    proxy: Arc<Proxy>,
    client: ClientInfo,
}

impl GatewayService {
    pub(crate) fn new(proxy: Arc<Proxy>) -> Self {
        Self {
            proxy,
            client: ClientInfo {
                addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                tls: true,
                local_port: 443,
            },
        }
    }

    /// The same service, assuming `client` for requests without a [`ClientInfo`]
    /// extension.
    pub fn with_client(mut self, client: ClientInfo) -> Self {
        self.client = client;
        self
    }
}

impl<B> tower_service::Service<Request<B>> for GatewayService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = crate::policy::BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let client = req
            .extensions()
            .get::<ClientInfo>()
            .copied()
            .unwrap_or(self.client);
        let proxy = self.proxy.clone();
        let req = req.map(|body| body.map_err(Into::into).boxed_unsync());
        Box::pin(async move { Ok(crate::access_log::handle(&proxy, req, client).await) })
    }
}

/// Starts a gateway with what an embedding application chooses: its own tunnel listener,
/// its own policy ([`Authorise`], [`Route`]), with or without the built-in public
/// listeners. [`Gateway::start`] is this with the configuration alone.
///
/// The tunnel side takes listeners, not connections already accepted: the gateway
/// terminates the tunnel's TLS itself (its client-certificate checks and the TLS exporter
/// value that binds signed answers need the handshake), and QUIC origins reach it on the
/// UDP port of the same number.
#[derive(Debug)]
pub struct GatewayBuilder {
    config: GatewayConfig,
    pub(crate) authoriser: Option<Hook<dyn Authorise>>,
    pub(crate) router: Option<Hook<dyn Route>>,
    pub(crate) tunnel_listener: Option<std::net::TcpListener>,
}

impl GatewayBuilder {
    /// A builder for `config` (its certificate and key serve the tunnel's TLS, and the
    /// public TLS listener's if it runs).
    pub fn new(config: GatewayConfig) -> Self {
        Self {
            config,
            authoriser: None,
            router: None,
            tunnel_listener: None,
        }
    }

    /// Decides who may register what with `authoriser` instead of the config's grants.
    pub fn authorise(mut self, authoriser: impl Authorise) -> Self {
        self.authoriser = Some(Hook(Arc::new(authoriser)));
        self
    }

    /// Picks the connection for each request with `router` instead of least outstanding.
    pub fn route(mut self, router: impl Route) -> Self {
        self.router = Some(Hook(Arc::new(router)));
        self
    }

    /// Whether the built-in public listeners (`listen`, `listen_tls` and its HTTP/3
    /// endpoint) run. Off, the public side is only [`Gateway::service`].
    pub fn public_listeners(mut self, on: bool) -> Self {
        if !on {
            self.config.listen = None;
            self.config.listen_tls = None;
        }
        self
    }

    /// Accepts origins on `listener` (bound by the caller; its address replaces the
    /// config's `tunnel`) instead of binding the tunnel address on every worker. The
    /// QUIC tunnel binds the UDP port of the same number.
    pub fn tunnel_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.tunnel_listener = Some(listener);
        self
    }

    /// Binds (or takes) every listener and starts serving; returns once they are bound.
    pub async fn start(self) -> anyhow::Result<Gateway> {
        let GatewayBuilder {
            mut config,
            authoriser,
            router,
            tunnel_listener,
        } = self;
        if let Some(l) = &tunnel_listener {
            config.tunnel = l.local_addr()?;
        }
        Gateway::start_with(
            &config,
            crate::Hooks {
                authoriser,
                router,
                tunnel_listener,
            },
        )
        .await
    }
}
