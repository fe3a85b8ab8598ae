//! The one admission of origin connections, for TLS over TCP and QUIC alike: from a finished
//! handshake to a registered [`OriginConn`], or a refusal that says why.
//!
//! ```text
//! tunnel::serve (TLS over TCP) ─┐                     ┌─ Reversed ─▶ Carrier::start_client
//! quic::serve_tunnel (QUIC) ────┴▶ Handshake ─▶ admit ┤   ─▶ draft-bt: certificate, ORIGIN frame
//!                                  (classify ALPN)    │   ─▶ authorisation request ─▶ register
//!                                                     └─ Setup ─▶ Carrier::serve_setup
//!                                                         (HTTP/1.1, HTTP/2; HTTP/3 on QUIC)
//!                                                         ─▶ setup_request ─▶ handed_over
//!                                                         ─▶ register
//! ```
//!
//! What differs between the transports (the handshake, how the gateway's HTTP client starts,
//! where the ORIGIN frame comes from, the setup servers) is a [`Carrier`]; what is the same
//! (classification, the draft-bt rules, the authorisation exchange, the setup deadline and
//! registration) is here, once.

use crate::credential::{self, scope_from_certificate};
use crate::message::Body;
use crate::pending::{Full, PendingSetups, SetupFailure, SetupState};
use crate::policy::{Authorise, Authorised, OriginRequest, Refused};
use crate::registry::{Admission, OriginConn, Registry};
use crate::sender::{start_client, Sender};
use crate::tls::TunnelTls;
use http::StatusCode;
use http_body_util::BodyExt;
use ptth_auth::{Challenge, ChallengeAnswer, ChallengeProof, Grants, AUTHORIZE_PATH};
use ptth_core::{
    classify_alpn, AlpnRole, HttpVersion, Mechanism, OriginFrame, Scope, SetupTokens, Transport,
};
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the tunnel listeners need to admit origins.
#[derive(Debug)]
pub struct TunnelContext {
    /// Where admitted connections go.
    pub registry: Arc<Registry>,
    /// Who may serve what; swapped on reload.
    pub grants: RwLock<Arc<Grants>>,
    /// TLS configs; rebuilt on reload (pinned keys come from the grants).
    pub tls: RwLock<TunnelTls>,
    /// Negotiation tokens (Upgrade token, `:protocol`, well-known prefix).
    pub setup_tokens: SetupTokens,
    /// From accept to registration: TLS or QUIC handshake, setup request, authorisation
    /// exchange (with its body) and ORIGIN frame. Not admitted by then: closed.
    pub setup_timeout: Duration,
    /// Connections still in setup, capped in total and per source address (TCP and QUIC).
    pub(crate) pending: PendingSetups,
    /// Reverse CONNECT control channels (`connect-listen`, `connect-accept`).
    pub(crate) services: Arc<crate::reverse::Services>,
    /// The embedding application's authoriser; the grants decide when there is none.
    pub(crate) authoriser: Option<crate::policy::Hook<dyn crate::policy::Authorise>>,
}

impl TunnelContext {
    /// The grants in force now.
    pub fn grants(&self) -> Arc<Grants> {
        self.grants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The tunnel's TLS configs in force now.
    pub(crate) fn tls(&self) -> TunnelTls {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts a connection just accepted from `peer` among those in setup and starts its
    /// setup deadline; `Err` says which cap it would exceed (the caller closes it at once).
    pub(crate) fn start_setup(&self, peer: SocketAddr) -> Result<SetupState, Full> {
        let slot = self.pending.try_enter(peer.ip()).inspect_err(|_| {
            self.registry
                .metrics
                .setup(crate::metrics::SetupOutcome::OverLimit)
        })?;
        Ok(SetupState::new(slot, Instant::now() + self.setup_timeout))
    }
}

/// What a TLS or QUIC handshake with an origin produced: all the admission needs to know
/// about the connection, whatever its transport ([`Carrier::TRANSPORT`]).
pub(crate) struct Handshake<C> {
    /// The connection, ready for HTTP.
    pub carrier: C,
    /// The origin's address.
    pub peer: SocketAddr,
    /// The ALPN the handshake selected, if any.
    pub alpn: Option<Vec<u8>>,
    /// The client certificate chain the TLS layer verified, if any.
    pub peer_certs: Option<Vec<CertificateDer<'static>>>,
    /// The gateway's TLS exporter value for this connection (binds challenge answers).
    pub exporter: Option<[u8; ptth_auth::EXPORTER_LEN]>,
}

/// What a transport does for the admission: the steps that differ between TLS over TCP and
/// QUIC. Implemented in `tunnel` (a TLS stream) and `quic` (a QUIC connection).
pub(crate) trait Carrier: Sized + Send + 'static {
    /// The transport, whose ALPN tokens [`classify_alpn`] knows.
    const TRANSPORT: Transport;

    /// Ends the connection with a reason once the HTTP client owns it.
    type Closer: Closer;

    /// A handle that can still end the connection after `self` was handed over.
    fn closer(&self) -> Self::Closer;

    /// Starts the gateway's HTTP client on a connection `mechanism`'s ALPN reversed, by
    /// `deadline`. For a mechanism whose origin must send an ORIGIN frame, the client is
    /// started so that [`Reversal::origin_frame`] can wait for it.
    fn start_client(
        self,
        mechanism: Mechanism,
        deadline: Instant,
    ) -> impl Future<Output = Result<Reversal, SetupFailure>> + Send;

    /// Serves the setup requests of a forward connection of `version` (the gateway is the
    /// HTTP server), registering each one admitted, until the connection ends or no setup
    /// was registered by the setup deadline.
    fn serve_setup(
        self,
        version: HttpVersion,
        peer: SocketAddr,
        peer_certs: Option<Vec<CertificateDer<'static>>>,
        ctx: Arc<TunnelContext>,
        setup: SetupState,
    ) -> impl Future<Output = Result<(), SetupFailure>> + Send;
}

/// Ends a connection in setup, telling the origin `why` where the transport can: a QUIC
/// CONNECTION_CLOSE carries a reason; a TLS stream just ends when the admission lets go of
/// it, so its closer does nothing.
pub(crate) trait Closer: Send + Sync {
    /// Closes the connection; the first close is the one the origin sees.
    fn close(&self, why: &'static [u8]);
}

impl Closer for () {
    fn close(&self, _why: &'static [u8]) {}
}

/// Resolves to the ORIGIN frame the origin sent first, or the refusal reason if it sent
/// something else or left.
pub(crate) type OriginFrameWait = Pin<Box<dyn Future<Output = Result<OriginFrame, String>> + Send>>;

/// A reversed connection whose HTTP client runs, not yet admitted: nothing but the
/// authorisation request is sent on it before it is.
pub(crate) struct Reversal {
    /// The request-sending half.
    pub sender: Sender,
    /// The task driving the connection; aborted if admission fails.
    pub task: JoinHandle<()>,
    /// draft-bt: where the origin's ORIGIN frame comes from (HTTP/2 or HTTP/3, same payload).
    pub origin_frame: Option<OriginFrameWait>,
}

/// Admits one origin connection whose handshake finished: classifies its ALPN, then either
/// runs the reversed admission (Potato, draft-bt) or hands it to the transport's setup
/// server (PTTH, PTTH/1.0). A refused or timed-out setup closes the connection.
pub(crate) async fn admit<C: Carrier>(
    handshake: Handshake<C>,
    setup: SetupState,
    ctx: Arc<TunnelContext>,
) -> Result<(), SetupFailure> {
    let closer = handshake.carrier.closer();
    let result = ctx
        .registry
        .metrics
        .clone()
        .admitted(dispatch(handshake, setup, ctx, &closer).await);
    if result.is_err() {
        // Whatever still holds the connection (HTTP/3 tasks), a refused or timed-out setup
        // ends it now.
        closer.close(b"setup refused");
    }
    result
}

async fn dispatch<C: Carrier>(
    handshake: Handshake<C>,
    setup: SetupState,
    ctx: Arc<TunnelContext>,
    closer: &C::Closer,
) -> Result<(), SetupFailure> {
    let Handshake {
        carrier,
        peer,
        alpn,
        peer_certs,
        exporter,
    } = handshake;
    match classify(C::TRANSPORT, alpn.as_deref())? {
        // Boxed: a setup connection's server (its h2 server, the linger, the stop's close)
        // is a large state, and an unboxed one would size the task of every reversed
        // connection, which lives as long as it does (about 1 KiB of each idle origin
        // connection's memory at the gateway).
        AlpnRole::Setup { version } => {
            Box::pin(carrier.serve_setup(version, peer, peer_certs, ctx, setup)).await
        }
        role @ AlpnRole::Reversed { .. } => {
            let mechanism = Mechanism::negotiated(C::TRANSPORT, role, None)
                .ok_or_else(|| format!("no mechanism reverses {role:?} on {:?}", C::TRANSPORT))?;
            let candidate = Candidate {
                mechanism,
                peer,
                peer_certs,
                exporter,
                origin_frame: None,
                deadline: setup.deadline,
            };
            admit_reversed(carrier, candidate, closer, &ctx).await
        }
    }
}

/// A connection its ALPN reversed: the draft-bt rules, the gateway's HTTP client, then the
/// authorisation exchange; registered if it passes.
async fn admit_reversed<C: Carrier>(
    carrier: C,
    mut candidate: Candidate,
    closer: &C::Closer,
    ctx: &TunnelContext,
) -> Result<(), SetupFailure> {
    let mechanism = candidate.mechanism;
    let has_client_cert = candidate.peer_certs.as_ref().is_some_and(|c| !c.is_empty());
    if mechanism.requires_client_certificate() && !has_client_cert {
        // draft-bt §3: "the origin MUST present a valid certificate chain".
        closer.close(b"client certificate required");
        return Err(format!("{mechanism} requires a client certificate (draft-bt)").into());
    }
    let Reversal {
        sender,
        task,
        origin_frame,
    } = carrier.start_client(mechanism, candidate.deadline).await?;
    if let Some(wait) = origin_frame {
        // draft-bt §3: "the origin MUST immediately send an ORIGIN frame"; `authorize`
        // checks its entries against the certificate.
        match wait_for_origin_frame(wait, candidate.deadline).await {
            Ok(frame) => candidate.origin_frame = Some(frame),
            Err(failure) => {
                closer.close(b"no ORIGIN frame");
                task.abort();
                return Err(failure);
            }
        }
    }
    match authorize(&candidate, &sender, ctx).await {
        Ok(admitted) => {
            register(ctx, admitted, candidate.peer, sender, task);
            Ok(())
        }
        Err(failure) => {
            task.abort();
            Err(failure)
        }
    }
}

/// The ORIGIN frame, by the setup deadline.
async fn wait_for_origin_frame(
    wait: OriginFrameWait,
    deadline: Instant,
) -> Result<OriginFrame, SetupFailure> {
    match tokio::time::timeout_at(deadline, wait).await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(why)) => Err(SetupFailure::Refused(why)),
        Err(_) => Err(SetupFailure::late("no ORIGIN frame (draft-bt)")),
    }
}

/// What a negotiated ALPN means on `transport`, or why the connection is refused.
fn classify(transport: Transport, alpn: Option<&[u8]>) -> Result<AlpnRole, SetupFailure> {
    match alpn {
        Some(a) => classify_alpn(transport, a)
            .ok_or_else(|| format!("unexpected ALPN {:?}", String::from_utf8_lossy(a)).into()),
        // RFC 7301: a client that offers no ALPN speaks HTTP/1.1, the only setup it can use.
        None if transport == Transport::Tls => Ok(AlpnRole::Setup {
            version: HttpVersion::Http1,
        }),
        // RFC 9001 §8.1: "endpoints MUST use ALPN" over QUIC.
        None => Err("no ALPN was negotiated".into()),
    }
}

/// An origin admitted to serve: how its connection was reversed, which HTTP version the
/// gateway speaks on it, what its credential proved and what it may serve.
pub(crate) struct Admitted {
    /// How the connection was reversed ([`Mechanism::negotiated`]).
    pub mechanism: Mechanism,
    /// The HTTP version the gateway speaks to the origin.
    pub version: HttpVersion,
    /// Who it is and what it registered.
    pub admission: Admission,
    /// Which requests may be routed to it.
    pub scopes: Vec<Scope>,
}

/// A reversed connection up to its authorisation request.
struct Candidate {
    mechanism: Mechanism,
    peer: SocketAddr,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    exporter: Option<[u8; ptth_auth::EXPORTER_LEN]>,
    origin_frame: Option<OriginFrame>,
    /// The authorisation exchange must end by then.
    deadline: Instant,
}

/// Potato and draft-bt: the connection is reversed as soon as the handshake completes. The
/// gateway's first request goes to a prearranged resource (draft-thomson-ptth-potato §5.2)
/// carrying a fresh challenge; the origin answers with the scope it claims and a credential
/// (a signature over the challenge and this connection's TLS exporter value, or a token),
/// unless its client certificate already says who it is. No public request is sent on the
/// connection before this succeeds; the caller registers it, or aborts its task.
async fn authorize(
    c: &Candidate,
    sender: &Sender,
    ctx: &TunnelContext,
) -> Result<Admitted, SetupFailure> {
    let Candidate {
        mechanism,
        peer,
        peer_certs,
        exporter,
        origin_frame,
        deadline,
    } = c;
    let (mechanism, deadline) = (*mechanism, *deadline);
    let admitted = |(admission, scopes)| Admitted {
        mechanism,
        version: mechanism.reversed_version(),
        admission,
        scopes,
    };
    let challenge = Challenge::new(random_bytes());
    let mut req = sender.gateway_request(AUTHORIZE_PATH);
    req.headers_mut()
        .insert(ptth_auth::CHALLENGE_FIELD, challenge.header_value());
    let res = match tokio::time::timeout_at(deadline, sender.send(req)).await {
        Ok(Ok(r)) => r,
        // A peer that hung up (a scanner, a health check) is not an origin being refused.
        Ok(Err(_)) if sender.is_closed() => {
            return Err(SetupFailure::Quiet(
                "the connection closed before the authorisation answer".into(),
            ))
        }
        Ok(Err(_)) => return Err("the origin failed the authorisation request".into()),
        Err(_) => return Err(SetupFailure::late("no answer to the authorisation request")),
    };
    let (parts, body) = res.into_parts();
    // Finish the body so a reversed HTTP/1.1 connection is free for the next request; a
    // body that trickles in slowly is bounded by the same deadline.
    if tokio::time::timeout_at(deadline, drain(body, 64 * 1024))
        .await
        .is_err()
    {
        return Err(SetupFailure::late(
            "the authorisation answer's body did not end",
        ));
    }
    if credential::claims_nothing(parts.status, &parts.headers) {
        let (admission, scopes) = match ctx.authoriser {
            // The authoriser sees the certificate and no claimed origin, and decides.
            Some(_) => {
                let request = OriginRequest {
                    mechanism,
                    peer: *peer,
                    authorization: None,
                    client_certificates: peer_certs.as_deref(),
                    origins: &[],
                    path_prefixes: &[],
                    challenge: None,
                };
                authorise(ctx, &request)
                    .await
                    .map_err(|refused| refused.reason)?
            }
            None => scope_from_certificate(&ctx.grants(), peer_certs.as_deref())?,
        };
        if let (Some(frame), Some(leaf)) =
            (origin_frame, peer_certs.as_ref().and_then(|c| c.first()))
        {
            // draft-bt §3: "The intermediary MUST check the ORIGIN entries against the
            // client certificate"; the scope already comes from that certificate.
            let entries: Vec<&str> = frame.entries().iter().map(|e| e.as_str()).collect();
            ptth_auth::check_origin_frame_against_cert(&entries, leaf)
                .map_err(|e| format!("ORIGIN frame: {e}"))?;
        }
        let shown: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        tracing::info!(%peer, %mechanism, grant = %admission.identity, scopes = %shown.join(" "), "the origin claimed no scope: registered for the names its client certificate carries");
        return Ok(admitted((admission, scopes)));
    }
    if parts.status != StatusCode::OK {
        return Err(format!(
            "the origin answered the authorisation request with {}",
            parts.status
        )
        .into());
    }
    let answer = if parts.headers.contains_key(ptth_auth::SIGNATURE_FIELD) {
        Some(
            ChallengeAnswer::from_response(parts.status, &parts.headers)
                .map_err(|e| format!("challenge answer: {e}"))?,
        )
    } else {
        None
    };
    let (origins, prefixes) = match &answer {
        Some(a) => (a.origins().to_vec(), a.path_prefixes().to_vec()),
        None => credential::claimed_scope(&parts.headers)?,
    };
    let proof = match (&answer, exporter) {
        (Some(answer), Some(exporter)) => Some(ChallengeProof {
            answer,
            challenge: &challenge,
            exporter,
        }),
        (Some(_), None) => return Err("a signed answer needs a TLS exporter value".into()),
        (None, _) => None,
    };
    let request = OriginRequest {
        mechanism,
        peer: *peer,
        authorization: parts.headers.get(ptth_auth::AUTHORIZATION_FIELD),
        client_certificates: peer_certs.as_deref(),
        origins: &origins,
        path_prefixes: &prefixes,
        challenge: proof,
    };
    let (admission, scopes) = authorise(ctx, &request)
        .await
        .map_err(|refused| refused.reason)?;
    if let Some(frame) = origin_frame {
        // draft-bt §3: "The intermediary MUST check the ORIGIN entries against the client
        // certificate"; and the origins this connection serves must be among them.
        let Some(leaf) = peer_certs.as_ref().and_then(|c| c.first()) else {
            return Err(format!("{mechanism} requires a client certificate (draft-bt)").into());
        };
        let entries: Vec<&str> = frame.entries().iter().map(|e| e.as_str()).collect();
        ptth_auth::check_origin_frame_against_cert(&entries, leaf)
            .map_err(|e| format!("ORIGIN frame: {e}"))?;
        for o in &origins {
            if !credential::origin_frame_covers(frame, o) {
                return Err(format!("{o} is not in the connection's ORIGIN frame").into());
            }
        }
    }
    Ok(admitted((admission, scopes)))
}

/// Once an admitted setup's stream is handed over (`handover`: after the `101`, or the
/// CONNECT's `2xx`; `stream` names it in logs), starts the gateway's HTTP client on it and
/// registers the connection, by the setup deadline.
pub(crate) async fn handed_over<IO>(
    handover: impl Future<Output = Result<IO, String>>,
    stream: &str,
    admitted: Admitted,
    peer: SocketAddr,
    setup: SetupState,
    ctx: &TunnelContext,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = admitted.version;
    let started = tokio::time::timeout_at(setup.deadline, async {
        start_client(handover.await?, version).await
    })
    .await;
    match started {
        Ok(Ok((sender, task))) => {
            register(ctx, admitted, peer, sender, task);
            setup.registered();
        }
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "reversed connection failed"),
        Err(_) => SetupFailure::late(&format!("the {stream} was not taken over"))
            .log(peer, log_name(admitted.mechanism.transport())),
    }
}

/// How log lines name a transport.
pub(crate) fn log_name(transport: Transport) -> &'static str {
    match transport {
        Transport::Tls => "tcp",
        Transport::Quic => "quic",
    }
}

/// Puts an admitted connection in the registry, unless a reload since its check refused it;
/// it leaves the registry when `task` (its driver) ends.
pub(crate) fn register(
    ctx: &TunnelContext,
    admitted: Admitted,
    peer: SocketAddr,
    sender: Sender,
    task: JoinHandle<()>,
) {
    let Admitted {
        mechanism,
        admission,
        scopes,
        ..
    } = admitted;
    // A reload may have swapped the grants since `check_origin` ran (a setup registers only
    // once its stream is handed over). Checking again under the grants' read lock closes
    // the gap: either this connection is in the registry before the reload swaps the
    // grants and looks at every connection, or it is checked here against the new ones.
    let grants = ctx.grants.read().unwrap_or_else(|e| e.into_inner());
    // A custom authoriser's decision stands: reloads re-check only what the grants admitted.
    let recheck = match ctx.authoriser {
        Some(_) => Ok(()),
        None => credential::recheck(&grants, &admission, &scopes),
    };
    if let Err(why) = recheck {
        drop(grants);
        tracing::warn!(%peer, grant = %admission.identity, "origin connection refused: the grants were reloaded during its setup: {why}");
        task.abort();
        return;
    }
    let conn = Arc::new(OriginConn::new(
        mechanism,
        scopes,
        admission,
        peer,
        sender,
        task.abort_handle(),
    ));
    let id = conn.id;
    ctx.registry.add(conn);
    drop(grants);
    let registry = ctx.registry.clone();
    tokio::spawn(async move {
        let _ = task.await;
        registry.remove(id);
    });
}

/// The built-in policy: the grants (`[[grant]]` in the config, `--grant`). The gateway
/// uses the grants in force (a reload replaces them) unless a custom [`Authorise`] was
/// given.
impl Authorise for Grants {
    fn authorise<'a>(
        &'a self,
        request: &'a OriginRequest<'a>,
    ) -> crate::policy::BoxFuture<'a, Result<Authorised, Refused>> {
        Box::pin(std::future::ready(by_grants(self, request)))
    }
}

/// The grants' decision: the same check for every mechanism ([`credential::check_origin`]).
fn by_grants(grants: &Grants, request: &OriginRequest<'_>) -> Result<Authorised, Refused> {
    let (admission, scopes) = credential::check_origin(
        grants,
        &request.presented(),
        request.origins,
        request.path_prefixes,
    )
    .map_err(|e| Refused {
        status: e.status(),
        reason: format!("origin credential: {e}"),
    })?;
    let mut authorised = Authorised::new(admission.identity, scopes);
    authorised.by_grants = Some((admission.grant_names, admission.proven));
    Ok(authorised)
}

/// The one authorisation call of the admission, for every mechanism: the embedding
/// application's authoriser if it gave one, the grants in force otherwise. Returns what the
/// registry keeps.
pub(crate) async fn authorise(
    ctx: &TunnelContext,
    request: &OriginRequest<'_>,
) -> Result<(Admission, Vec<Scope>), Refused> {
    let authorised = match &ctx.authoriser {
        Some(custom) => custom.0.authorise(request).await?,
        None => by_grants(&ctx.grants(), request)?,
    };
    let Authorised {
        identity,
        scopes,
        by_grants,
    } = authorised;
    let (grant_names, proven) = by_grants.unwrap_or_default();
    Ok((
        Admission {
            identity,
            grant_names,
            origins: request.origins.to_vec(),
            path_prefixes: request.path_prefixes.to_vec(),
            certificate_names: Vec::new(),
            proven,
        },
        scopes,
    ))
}

fn random_bytes() -> [u8; 32] {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// Reads a small body to its end (so a reversed HTTP/1.1 connection is free again), giving
/// up after `limit` bytes.
async fn drain(mut body: Body, limit: usize) {
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            seen += data.len();
            if seen > limit {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(r: Result<AlpnRole, SetupFailure>) -> String {
        match r {
            Err(SetupFailure::Refused(why)) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn alpn_classification_per_transport() {
        let h1 = AlpnRole::Setup {
            version: HttpVersion::Http1,
        };
        // RFC 7301: a TLS client that offers no ALPN speaks HTTP/1.1; QUIC requires ALPN.
        assert_eq!(classify(Transport::Tls, None).unwrap(), h1);
        assert_eq!(
            refusal(classify(Transport::Quic, None)),
            "no ALPN was negotiated"
        );
        assert_eq!(
            classify(Transport::Quic, Some(b"h3-reverse")).unwrap(),
            AlpnRole::Reversed {
                mechanism: Mechanism::H3Reverse,
                set: None
            }
        );
        assert_eq!(
            refusal(classify(Transport::Tls, Some(b"h3-reverse"))),
            "unexpected ALPN \"h3-reverse\""
        );
    }
}
