//! CONNECT at the public edge: public clients reach an origin's TCP service (reverse
//! CONNECT, [`crate::reverse`]) through the public listeners, by classic `CONNECT host:port`
//! (RFC 9110 §9.3.6 on HTTP/1.1, RFC 9113 §8.5 on HTTP/2) or by connect-tcp
//! (draft-ietf-httpbis-connect-tcp-12: extended CONNECT, `:protocol = connect-tcp`, path
//! `/.well-known/masque/tcp/{target_host}/{tcp_port}/`, TCP payload in `DATA` capsules) on
//! HTTP/2 and HTTP/3. Off unless `[[proxy-user]]` tables are configured: then a CONNECT
//! that is not a WebSocket comes here instead of being routed like an ordinary request.
//!
//! ```text
//! CONNECT host:port ──▶ Proxy-Authorization proves a [[proxy-user]]?   no: 407
//!   ──▶ the grants whose name is host, or whose origins name host, with a tcp service on
//!       port                                                               none: 404
//!   ──▶ those the user's reach allows                                      none: 403
//!   ──▶ Services::request (a live channel, under --max-flows-per-origin)   none: 503
//!   ──▶ the origin's connect-accept by --tcp-accept-timeout    declined: 502, late: 504
//!   ──▶ 200, then splice: classic: the public bytes ⇄ DATA capsules to the origin;
//!       connect-tcp: DATA capsules ⇄ bytes ⇄ DATA capsules (both sides checked)
//! ```
//!
//! Nothing from the public request reaches the origin: it sees a `CONNECTION_REQUEST`
//! for its service and then the tunnel's bytes, so the user's credential never leaves the
//! gateway. CONNECT streams on one HTTP/2 or HTTP/3 connection are bounded
//! ([`MAX_CONNECT_STREAMS`]); flows count in `--max-flows-per-origin` like port mappings'
//! and close after `--tcp-idle-timeout` without a byte. Outcomes are counted in
//! `ptth_gateway_public_connects_total{outcome}`.
//!
//! CONNECT-UDP (RFC 9298) takes the same path with the grants' UDP services: extended
//! CONNECT with `:protocol = connect-udp` on HTTP/2 and HTTP/3, or `GET` with
//! `Upgrade: connect-udp` on HTTP/1.1 (answered `101`), the default template's path
//! `/.well-known/masque/udp/{target_host}/{target_port}/`. Each accepted request is one
//! reverse CONNECT UDP flow, and [`pump`] relays its datagrams: DATAGRAM capsules on the
//! public stream (HTTP/1.1, HTTP/2, and HTTP/3 without negotiated datagrams) or QUIC
//! DATAGRAM frames (HTTP/3), to the origin's carrier ([`crate::reverse::udp_carrier`]).
//! The flow ends after `--udp-idle-timeout` without a datagram.

use crate::message::{bad_gateway, error, unavailable, Body};
use crate::reverse::{NoRequest, Services};
use crate::udp_listen::UdpSettings;
use crate::websocket::{H3PublicTunnel, PublicTunnel};
use http::header::{HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION};
use http::{Method, Request, Response, StatusCode};
use ptth_auth::{Grants, OriginPattern, ProxyUsers};
use ptth_core::{IpProtocol, SerializedOrigin};
use ptth_h2::flow::{splice, FlowEnd, FlowOptions, FlowReport, FlowStream};
use ptth_h2::udp_flow::{datagram_carrier, pump, DatagramOptions};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The most CONNECT tunnels (open or being set up) on one public HTTP/2 or HTTP/3
/// connection; more get 429.
pub(crate) const MAX_CONNECT_STREAMS: usize = 128;

/// The `:protocol` of connect-tcp (draft-ietf-httpbis-connect-tcp §3).
pub(crate) const CONNECT_TCP: &str = "connect-tcp";

/// The `:protocol` (HTTP/2, HTTP/3) and `Upgrade` token (HTTP/1.1) of CONNECT-UDP
/// (RFC 9298 §3.2, §3.4).
pub(crate) const CONNECT_UDP: &str = "connect-udp";

/// The path prefix of the default CONNECT-UDP template (RFC 9298 §2:
/// `https://$PROXY_HOST:$PROXY_PORT/.well-known/masque/udp/{target_host}/{target_port}/`).
const UDP_TEMPLATE_PREFIX: &str = "/.well-known/masque/udp/";

/// The path prefix of the default connect-tcp template (the draft's "well-known" form,
/// `/.well-known/masque/tcp/{target_host}/{tcp_port}/`).
const TCP_TEMPLATE_PREFIX: &str = "/.well-known/masque/tcp/";

/// How long the public side of a tunnel may take to open once its 200 is sent.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which CONNECT a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `CONNECT host:port`: the tunnel carries the bytes themselves.
    Classic,
    /// connect-tcp: the tunnel carries capsules, TCP payload in `DATA`.
    ConnectTcp,
    /// CONNECT-UDP over HTTP/2 or HTTP/3 (extended CONNECT) or HTTP/1.1 (`Upgrade`): UDP
    /// payloads in HTTP datagrams.
    ConnectUdp,
}

/// The CONNECT form of a request, if it is one this module serves: a CONNECT without
/// `:protocol`, or with `:protocol = connect-tcp` or `connect-udp`; or an HTTP/1.1 `GET`
/// with `Upgrade: connect-udp`.
pub(crate) fn form<B>(req: &Request<B>) -> Option<Form> {
    if req.version() <= http::Version::HTTP_11 && req.method() == Method::GET {
        // RFC 9298 §3.2: "The method SHALL be "GET"" and "The request SHALL include an
        // Upgrade header field with value "connect-udp"".
        let upgrade = req.headers().get(http::header::UPGRADE)?.to_str().ok()?;
        return upgrade
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(CONNECT_UDP))
            .then_some(Form::ConnectUdp);
    }
    if req.method() != Method::CONNECT {
        return None;
    }
    let protocol = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_owned())
        .or_else(|| {
            req.extensions()
                .get::<ptth_h3::Protocol>()
                .map(|p| p.0.clone())
        });
    match protocol {
        None => Some(Form::Classic),
        Some(p) if p.eq_ignore_ascii_case(CONNECT_TCP) => Some(Form::ConnectTcp),
        Some(p) if p.eq_ignore_ascii_case(CONNECT_UDP) => Some(Form::ConnectUdp),
        Some(_) => None,
    }
}

/// CONNECT tunnels of one public connection, put in each CONNECT request's extensions by
/// the listener.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConnectStreams(Arc<AtomicUsize>);

/// One tunnel's claim on its connection's [`ConnectStreams`].
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectStreams {
    fn claim(&self) -> Option<StreamSlot> {
        let prev = self.0.fetch_add(1, Ordering::AcqRel);
        let slot = StreamSlot(self.0.clone());
        (prev < MAX_CONNECT_STREAMS).then_some(slot)
    }
}

/// The CONNECT proxy: its users, the grants that name targets, the live services.
#[derive(Debug)]
pub struct PublicConnect {
    /// Replaced whole by a reload (SIGHUP); a CONNECT in progress keeps the ones it read.
    users: RwLock<Arc<ProxyUsers>>,
    grants: RwLock<Arc<Grants>>,
    services: Arc<Services>,
    udp: UdpSettings,
}

/// A (grant, service) a CONNECT target names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) grant: String,
    pub(crate) service: String,
}

impl PublicConnect {
    /// The proxy for `users` (not empty) over `grants` and `services`; CONNECT-UDP flows
    /// with `udp`'s idle timeout.
    pub(crate) fn new(
        users: ProxyUsers,
        grants: Arc<Grants>,
        services: Arc<Services>,
        udp: UdpSettings,
    ) -> Self {
        Self {
            users: RwLock::new(Arc::new(users)),
            grants: RwLock::new(grants),
            services,
            udp,
        }
    }

    /// Puts a reload's proxy users and grants in force for the CONNECTs that come next
    /// (tunnels already open run on).
    pub(crate) fn reload(&self, users: ProxyUsers, grants: Arc<Grants>) {
        *self.users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(users);
        *self.grants.write().unwrap_or_else(|e| e.into_inner()) = grants;
    }

    fn users(&self) -> Arc<ProxyUsers> {
        self.users.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The (grant, service) pairs `host:port` names for `protocol`, in configuration order:
    /// a grant whose name is `host`, or one of whose origins (other than `*`) names `host`
    /// on `https` or `http`, and one of its services on `port`.
    pub(crate) fn targets(&self, host: &str, port: u16, protocol: IpProtocol) -> Vec<Target> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let origins: Vec<SerializedOrigin> = ["https", "http"]
            .iter()
            .filter_map(|s| format!("{s}://{host}").parse().ok())
            .collect();
        let mut out = Vec::new();
        let grants = self
            .grants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for g in grants.grants() {
            let named = g.name.eq_ignore_ascii_case(&host)
                || g.origins.iter().any(|p| {
                    !matches!(p, OriginPattern::Any) && origins.iter().any(|o| p.matches(o))
                });
            if !named {
                continue;
            }
            for s in &g.services {
                if s.protocol == protocol && s.port.get() == port {
                    out.push(Target {
                        grant: g.name.clone(),
                        service: s.name.clone(),
                    });
                }
            }
        }
        out
    }

    /// Answers one public CONNECT of `form`; on 2xx the tunnel runs in a task of its own.
    pub(crate) async fn handle<B>(
        &self,
        mut req: Request<B>,
        form: Form,
        client: SocketAddr,
    ) -> Response<Body> {
        let metrics = self.services.metrics.clone();
        let refuse = |outcome: &'static str, res: Response<Body>| {
            metrics.public_connect(outcome);
            tracing::info!(%client, %outcome, status = res.status().as_u16(), "public CONNECT refused");
            res
        };
        let slot = match req.extensions().get::<ConnectStreams>().cloned() {
            Some(streams) => match streams.claim() {
                Some(slot) => Some(slot),
                None => {
                    return refuse(
                        "too_many_streams",
                        error(
                            StatusCode::TOO_MANY_REQUESTS,
                            &format!(
                            "this connection already carries {MAX_CONNECT_STREAMS} CONNECT tunnels"
                        ),
                        ),
                    )
                }
            },
            None => None,
        };
        let (host, port) = match target_of(&req, form) {
            Ok(t) => t,
            Err(why) => return refuse("bad_request", error(StatusCode::BAD_REQUEST, why)),
        };
        // RFC 9110 §11.7.1: a 407 carries a Proxy-Authenticate challenge for the target.
        let users = self.users();
        let user = match users.authenticate(req.headers().get(PROXY_AUTHORIZATION)) {
            Ok(u) => u,
            Err(e) => {
                let mut res = error(
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    "CONNECT needs Proxy-Authorization (Basic or Bearer) of a proxy user",
                );
                for challenge in [
                    "Basic realm=\"ptth\", charset=\"UTF-8\"",
                    "Bearer realm=\"ptth\"",
                ] {
                    res.headers_mut()
                        .append(PROXY_AUTHENTICATE, HeaderValue::from_static(challenge));
                }
                res.extensions_mut()
                    .insert(crate::message::ErrorReason(format!("CONNECT: {e}")));
                return refuse("unauthenticated", res);
            }
        };
        let shown = shown_target(&host, port);
        let protocol = if form == Form::ConnectUdp {
            IpProtocol::Udp
        } else {
            IpProtocol::Tcp
        };
        let targets = self.targets(&host, port, protocol);
        if targets.is_empty() {
            let kind = if protocol == IpProtocol::Udp {
                "UDP"
            } else {
                "TCP"
            };
            return refuse(
                "unknown_target",
                error(
                    StatusCode::NOT_FOUND,
                    &format!("no grant offers a {kind} service at {shown}"),
                ),
            );
        }
        let allowed: Vec<&Target> = targets
            .iter()
            .filter(|t| user.may_reach(&t.grant, &t.service))
            .collect();
        if allowed.is_empty() {
            let mut res = error(
                StatusCode::FORBIDDEN,
                &format!("this proxy user may not reach {shown}"),
            );
            res.extensions_mut()
                .insert(crate::message::ErrorReason(format!(
                    "CONNECT {shown}: proxy user {:?} may not reach {}",
                    user.name,
                    targets
                        .iter()
                        .map(|t| format!("{}/{}", t.grant, t.service))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            return refuse("forbidden", res);
        }
        // The first target with a channel that takes the request.
        let mut why = NoRequest::NoOrigin;
        let mut requested = None;
        for t in &allowed {
            match self.services.request(&t.grant, &t.service, protocol) {
                Ok(r) => {
                    requested = Some((r, *t));
                    break;
                }
                Err(NoRequest::OriginFull) => why = NoRequest::OriginFull,
                Err(NoRequest::Stopping) => {
                    why = NoRequest::Stopping;
                    break;
                }
                Err(NoRequest::NoOrigin) => {}
            }
        }
        let Some((requested, target)) = requested else {
            return match why {
                NoRequest::NoOrigin => refuse(
                    "no_origin",
                    unavailable(&format!("no origin offers {shown} now"), 5),
                ),
                NoRequest::OriginFull => refuse(
                    "origin_full",
                    unavailable(
                        &format!("every origin offering {shown} is at its flow limit"),
                        1,
                    ),
                ),
                NoRequest::Stopping => refuse(
                    "stopping",
                    unavailable("the gateway is stopping; connect again", 1),
                ),
            };
        };
        let (id, channel, origin) = (requested.id, requested.channel, requested.peer);
        let flow_slot = requested.slot;
        let accepted =
            tokio::time::timeout(self.services.settings.accept_timeout, requested.accepted).await;
        let stream = match accepted {
            Ok(Ok(accepted)) => accepted.io,
            Ok(Err(_)) => {
                return refuse(
                    "declined",
                    bad_gateway(
                        "the origin declined the connection",
                        &format_args!(
                            "origin {origin}, request {id}, {}/{}",
                            target.grant, target.service
                        ),
                    ),
                )
            }
            Err(_) => {
                self.services.cancel(channel, id);
                let mut res = error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the origin did not accept the connection in time",
                );
                res.extensions_mut()
                    .insert(crate::message::ErrorReason(format!(
                        "origin {origin} did not accept request {id} within --tcp-accept-timeout"
                    )));
                return refuse("accept_timeout", res);
            }
        };
        // The public HTTP/3 stream's HTTP datagrams, when the listener put its handle here.
        let h3_datagrams = req.extensions().get::<ptth_h3::RequestHandle>().cloned();
        let public = if req.version() == http::Version::HTTP_3 {
            req.extensions()
                .get::<H3PublicTunnel>()
                .and_then(H3PublicTunnel::take)
                .map(PublicTunnel::H3)
        } else {
            Some(PublicTunnel::of_tcp(&mut req))
        };
        let Some(public) = public else {
            return refuse(
                "not_opened",
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "this listener cannot carry a tunnel",
                ),
            );
        };
        let services = self.services.clone();
        let (user, target) = (
            user.name.clone(),
            format!("{}/{}", target.grant, target.service),
        );
        tracing::debug!(%client, %user, %target, %origin, request = %id, ?form, "public CONNECT accepted");
        let udp = self.udp;
        tokio::spawn(async move {
            let _held = (slot, flow_slot);
            let public = match tokio::time::timeout(OPEN_TIMEOUT, public.open()).await {
                Ok(Ok(io)) => io,
                Ok(Err(why)) => {
                    services.metrics.public_connect("not_opened");
                    tracing::debug!(%client, %why, "public CONNECT tunnel did not open");
                    return;
                }
                Err(_) => {
                    services.metrics.public_connect("not_opened");
                    tracing::debug!(%client, "public CONNECT tunnel did not open in time");
                    return;
                }
            };
            services.metrics.public_connect("opened");
            if form == Form::ConnectUdp {
                // The public connection's end ends the flow; the stop's cut (at the end
                // of its grace) ends what is left.
                let report = tokio::select! {
                    r = relay_datagrams(public, h3_datagrams, stream, udp) => r,
                    _ = services.cut_off() => {
                        tracing::debug!(%client, %user, %target, request = %id, "public CONNECT-UDP flow cut: the gateway stopped");
                        return;
                    }
                };
                services.metrics.udp.record(&report);
                match &report.end {
                    FlowEnd::Stream(e) => {
                        tracing::info!(%client, %user, %target, %origin, request = %id, error = %e, "public CONNECT-UDP flow closed: the origin's stream ended")
                    }
                    end => {
                        tracing::debug!(%client, %user, %target, request = %id, %end, to_origin = report.to_carrier.datagrams, to_client = report.to_socket.datagrams, "public CONNECT-UDP flow closed")
                    }
                }
                return;
            }
            let options = FlowOptions {
                idle_timeout: services.settings.idle_timeout,
                ..FlowOptions::default()
            };
            // An HTTP/2 tunnel's bytes move without copies (`ptth_h2::flow`).
            let origin_io = FlowStream::new(stream, <dyn ptth_h3::ByteStream>::downcast);
            let report = match form {
                Form::Classic => splice(public, origin_io, options).await,
                Form::ConnectTcp | Form::ConnectUdp => {
                    relay_capsules(public, origin_io, options).await
                }
            };
            services
                .metrics
                .flow_bytes(report.to_stream, report.to_socket);
            match &report.end {
                FlowEnd::Stream(e) => {
                    tracing::info!(%client, %user, %target, %origin, request = %id, error = %e, "public CONNECT tunnel closed: the origin's stream ended")
                }
                end => {
                    tracing::debug!(%client, %user, %target, request = %id, %end, to_origin = report.to_stream, to_client = report.to_socket, "public CONNECT tunnel closed")
                }
            }
        });
        let mut res = Response::new(crate::message::empty());
        if matches!(form, Form::ConnectTcp | Form::ConnectUdp) {
            // RFC 9297 §3.4: the response confirms the capsule protocol (RFC 9298 §3.3 and
            // §3.5: the response "SHALL meet the requirements of HTTP responses that start
            // the Capsule Protocol").
            res.headers_mut()
                .insert("capsule-protocol", HeaderValue::from_static("?1"));
        }
        if form == Form::ConnectUdp && req.version() <= http::Version::HTTP_11 {
            // RFC 9298 §3.3: "The status code on the response SHALL be 101 (Switching
            // Protocols)", with `Connection: Upgrade` and "a single Upgrade header field
            // with value "connect-udp"".
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            res.headers_mut().insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            res.headers_mut()
                .insert(http::header::UPGRADE, HeaderValue::from_static(CONNECT_UDP));
        }
        res
    }
}

/// CONNECT-UDP: the public client's HTTP datagrams (capsules on its stream, and QUIC
/// DATAGRAM frames when `h3` is its HTTP/3 request's handle with datagrams negotiated)
/// pumped to the origin's flow (its own carrier). The report's "socket" side is the
/// public client: `to_carrier` went to the origin.
async fn relay_datagrams(
    public: crate::websocket::BoxIo,
    h3: Option<ptth_h3::RequestHandle>,
    origin: crate::reverse::FlowIo,
    udp: UdpSettings,
) -> ptth_h2::udp_flow::DatagramReport {
    let (public_in, public_out) = datagram_carrier(public, h3);
    let (origin_in, origin_out) = crate::reverse::udp_carrier(origin);
    let options = DatagramOptions {
        idle_timeout: udp.idle_timeout,
        queue: crate::udp_listen::FLOW_QUEUE,
        queue_bytes: crate::udp_listen::FLOW_QUEUE_BYTES,
    };
    pump(public_in, public_out, origin_in, origin_out, options).await
}

/// connect-tcp: capsules from the public client to bytes, and those to capsules for the
/// origin (and back), each side checked by its own [`splice`]. The report counts the
/// origin's side: `to_stream` went to the origin, `to_socket` came from it.
async fn relay_capsules<P, O>(public: P, origin: FlowStream<O>, options: FlowOptions) -> FlowReport
where
    P: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    O: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (a, b) = tokio::io::duplex(options.chunk);
    let (public_side, origin_side) = tokio::join!(
        splice(a, FlowStream::Io(public), options),
        splice(b, origin, options)
    );
    if let FlowEnd::Stream(e) = &public_side.end {
        // The public client's capsules were malformed or its stream failed.
        return FlowReport {
            end: FlowEnd::Socket(format!("the public client's capsule stream: {e}")),
            ..origin_side
        };
    }
    origin_side
}

/// `host:port` as a body may show it: a host name's characters only, bounded.
fn shown_target(host: &str, port: u16) -> String {
    let host: String = host
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']') {
                c
            } else {
                '?'
            }
        })
        .collect();
    format!("{host}:{port}")
}

/// The target host and port of a CONNECT: the request's authority (RFC 9110 §9.3.6:
/// "the request-target consists of only the host name and port number"), or for connect-tcp
/// the template's `target_host` and `tcp_port`.
fn target_of<B>(req: &Request<B>, form: Form) -> Result<(String, u16), &'static str> {
    match form {
        Form::Classic => {
            let a = req
                .uri()
                .authority()
                .ok_or("CONNECT needs a target host:port")?;
            if req
                .uri()
                .path_and_query()
                .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
            {
                return Err("a CONNECT target is only host:port");
            }
            let port = a
                .port_u16()
                .filter(|p| *p != 0)
                .ok_or("a CONNECT target needs a port (host:port)")?;
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err("a CONNECT target needs a host");
            }
            Ok((host.to_owned(), port))
        }
        Form::ConnectUdp => {
            // RFC 9298 §3.2: the HTTP/1.1 request "SHALL include a Connection header field
            // with value "Upgrade"".
            if req.method() == Method::GET
                && !req
                    .headers()
                    .get_all(http::header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            {
                return Err("connect-udp over HTTP/1.1 needs Connection: Upgrade");
            }
            const SHAPE: &str = "connect-udp: the path must be /.well-known/masque/udp/{target_host}/{target_port}/";
            let rest = req
                .uri()
                .path()
                .strip_prefix(UDP_TEMPLATE_PREFIX)
                .ok_or(SHAPE)?;
            let mut parts = rest.split('/');
            let (Some(host), Some(port), Some(""), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(SHAPE);
            };
            let host = percent_decode(host)
                .ok_or("connect-udp: target_host is not valid percent-encoding")?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("connect-udp: target_port must be 1 to 65535")?;
            if host.is_empty() {
                return Err("connect-udp: target_host is empty");
            }
            Ok((host, port))
        }
        Form::ConnectTcp => {
            let rest = req.uri().path().strip_prefix(TCP_TEMPLATE_PREFIX).ok_or(
                "connect-tcp: the path must be /.well-known/masque/tcp/{target_host}/{tcp_port}/",
            )?;
            let mut parts = rest.split('/');
            let (Some(host), Some(port), Some(""), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err("connect-tcp: the path must be /.well-known/masque/tcp/{target_host}/{tcp_port}/");
            };
            let host = percent_decode(host)
                .ok_or("connect-tcp: target_host is not valid percent-encoding")?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("connect-tcp: tcp_port must be 1 to 65535")?;
            if host.is_empty() {
                return Err("connect-tcp: target_host is empty");
            }
            Ok((host, port))
        }
    }
}

/// RFC 3986 percent-decoding of a template value (an IPv6 literal arrives as `%3A`s);
/// `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(uri: &str, protocol: Option<&'static str>) -> Request<()> {
        let mut r = Request::connect(uri).body(()).unwrap();
        if let Some(p) = protocol {
            r.extensions_mut()
                .insert(hyper::ext::Protocol::from_static(p));
        }
        r
    }

    #[test]
    fn targets_come_from_the_authority_or_the_template() {
        let c = connect("box.example:22", None);
        assert_eq!(form(&c), Some(Form::Classic));
        assert_eq!(
            target_of(&c, Form::Classic).unwrap(),
            ("box.example".into(), 22)
        );
        let c = connect("[::1]:22", None);
        assert_eq!(target_of(&c, Form::Classic).unwrap(), ("::1".into(), 22));
        assert!(target_of(&connect("box.example", None), Form::Classic).is_err());
        let t = connect(
            "https://gw.example/.well-known/masque/tcp/box.example/22/",
            Some("connect-tcp"),
        );
        assert_eq!(form(&t), Some(Form::ConnectTcp));
        assert_eq!(
            target_of(&t, Form::ConnectTcp).unwrap(),
            ("box.example".into(), 22)
        );
        let t = connect(
            "https://gw.example/.well-known/masque/tcp/%3A%3A1/22/",
            Some("connect-tcp"),
        );
        assert_eq!(target_of(&t, Form::ConnectTcp).unwrap(), ("::1".into(), 22));
        for bad in [
            "https://gw.example/.well-known/masque/tcp/box.example/22",
            "https://gw.example/.well-known/masque/tcp/box.example/0/",
            "https://gw.example/.well-known/masque/tcp/box.example/22/x/",
            "https://gw.example/.well-known/masque/udp/box.example/22/",
            "https://gw.example/.well-known/masque/tcp/%zz/22/",
        ] {
            assert!(
                target_of(&connect(bad, Some("connect-tcp")), Form::ConnectTcp).is_err(),
                "{bad}"
            );
        }
        let u = connect(
            "https://gw.example/.well-known/masque/udp/box.example/53/",
            Some("connect-udp"),
        );
        assert_eq!(form(&u), Some(Form::ConnectUdp));
        assert_eq!(
            target_of(&u, Form::ConnectUdp).unwrap(),
            ("box.example".into(), 53)
        );
        for bad in [
            "https://gw.example/.well-known/masque/udp/box.example/53",
            "https://gw.example/.well-known/masque/udp/box.example/0/",
            "https://gw.example/.well-known/masque/tcp/box.example/53/",
            "https://gw.example/.well-known/masque/udp//53/",
        ] {
            assert!(
                target_of(&connect(bad, Some("connect-udp")), Form::ConnectUdp).is_err(),
                "{bad}"
            );
        }
        // HTTP/1.1: GET with Upgrade: connect-udp (RFC 9298 §3.2); another upgrade is not ours.
        let h1 = |upgrade: &str| {
            Request::get("/.well-known/masque/udp/box.example/53/")
                .header("connection", "upgrade")
                .header("upgrade", upgrade)
                .body(())
                .unwrap()
        };
        assert_eq!(form(&h1("connect-udp")), Some(Form::ConnectUdp));
        assert!(target_of(&h1("connect-udp"), Form::ConnectUdp).is_ok());
        let mut no_connection = h1("connect-udp");
        no_connection.headers_mut().remove("connection");
        assert!(target_of(&no_connection, Form::ConnectUdp).is_err());
        assert_eq!(form(&h1("websocket")), None);
        assert_eq!(
            form(&connect("https://gw.example/chat", Some("websocket"))),
            None
        );
        assert_eq!(form(&Request::get("http://a/").body(()).unwrap()), None);
    }

    #[test]
    fn a_target_is_a_grant_by_name_or_by_its_origins_and_a_service_port() {
        let grants = Grants::from_toml(
            r#"
[[grant]]
name = "box"
token = "t-box-0123456789"
services = ["ssh=tcp/22", "dns=udp/53"]

[[grant]]
name = "web"
token = "t-web-0123456789"
origins = ["https://app.example", "https://*.dev.example"]
services = ["db=tcp/5432"]

[[grant]]
name = "any"
token = "t-any-0123456789"
origins = ["*"]
services = ["ssh=tcp/22"]
"#,
        )
        .unwrap();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let services = Arc::new(Services::new(Default::default(), metrics));
        let users = ProxyUsers::from_toml(
            "[[proxy-user]]\nname = \"u\"\npassword = \"p\"\nreach = [\"box/*\"]\n",
        )
        .unwrap();
        let c = PublicConnect::new(users, Arc::new(grants), services, UdpSettings::default());
        let t = |g: &str, s: &str| Target {
            grant: g.into(),
            service: s.into(),
        };
        assert_eq!(c.targets("box", 22, IpProtocol::Tcp), vec![t("box", "ssh")]);
        assert_eq!(
            c.targets("BOX.", 22, IpProtocol::Tcp),
            vec![t("box", "ssh")]
        );
        assert!(c.targets("box", 53, IpProtocol::Tcp).is_empty());
        assert_eq!(c.targets("box", 53, IpProtocol::Udp), vec![t("box", "dns")]);
        assert_eq!(
            c.targets("app.example", 5432, IpProtocol::Tcp),
            vec![t("web", "db")]
        );
        assert_eq!(
            c.targets("x.dev.example", 5432, IpProtocol::Tcp),
            vec![t("web", "db")]
        );
        // `*` names every host for HTTP, but no CONNECT target.
        assert!(c
            .targets("elsewhere.example", 22, IpProtocol::Tcp)
            .is_empty());
    }

    #[test]
    fn streams_per_connection_are_bounded_and_given_back() {
        let s = ConnectStreams::default();
        let held: Vec<_> = (0..MAX_CONNECT_STREAMS)
            .map(|_| s.claim().unwrap())
            .collect();
        assert!(s.claim().is_none());
        drop(held);
        assert!(s.claim().is_some());
    }
}
