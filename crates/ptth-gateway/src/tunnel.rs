//! The tunnel listener: origins dial in over TLS and every TCP mechanism ends in a registered
//! [`OriginConn`].
//!
//! One port serves every TCP mechanism, dispatched on the ALPN the TLS handshake selected:
//! a reversed token (Potato `rh*`/`ph*`/UTF-8 tokens, draft-bt `h2-reverse`) reverses the
//! connection at once; `http/1.1` (or no ALPN) and `h2` start an ordinary HTTP server that
//! accepts the PTTH Upgrade, legacy PTTH/1.0 and extended CONNECT setup requests.

use crate::message::{empty, error, Body};
use crate::pending::{PendingSetup, PendingSetups};
use crate::registry::{Admission, OriginConn, Registry};
use crate::sender::{start_client, Sender};
use crate::tls::TunnelTls;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use ptth_auth::{
    AuthError, Challenge, ChallengeAnswer, ChallengeProof, Grants, Presented, AUTHORIZE_PATH,
};
use ptth_core::{
    classify_alpn, AlpnRole, HttpVersion, Mechanism, ProtocolId, Scope, SerializedOrigin,
    SetupRejection, SetupTokens, Transport,
};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the tunnel listener needs to admit origins.
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
}

impl TunnelContext {
    /// The grants in force now.
    pub fn grants(&self) -> Arc<Grants> {
        self.grants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn tls(&self) -> TunnelTls {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Counts a connection just accepted from `peer` among those in setup and starts its
    /// setup deadline; `Err` says which cap it would exceed (the caller closes it at once).
    pub(crate) fn start_setup(&self, peer: SocketAddr) -> Result<SetupState, crate::pending::Full> {
        let slot = self.pending.try_enter(peer.ip())?;
        let (admitted, _) = watch::channel(false);
        Ok(SetupState {
            deadline: Instant::now() + self.setup_timeout,
            slot: Arc::new(Mutex::new(Some(slot))),
            admitted: Arc::new(admitted),
        })
    }
}

/// One origin connection's setup: its deadline, and its place among the connections in
/// setup, given up when a setup on it is registered (or when every clone is dropped). A
/// connection that carries tunnels (HTTP/2 or HTTP/3 extended CONNECT, PTTH -00) lives on
/// after its first registration; the deadline no longer applies to it then.
#[derive(Debug, Clone)]
pub(crate) struct SetupState {
    /// Accept + `--setup-timeout`.
    pub deadline: Instant,
    slot: Arc<Mutex<Option<PendingSetup>>>,
    admitted: Arc<watch::Sender<bool>>,
}

impl SetupState {
    /// A setup on this connection was registered: free its place, lift its deadline.
    pub(crate) fn registered(&self) {
        drop(self.slot.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.admitted.send_replace(true);
    }

    /// Resolves at the deadline unless a setup was registered by then; then never.
    pub(crate) async fn expired(&self) {
        let mut admitted = self.admitted.subscribe();
        let registered = matches!(
            tokio::time::timeout_at(self.deadline, admitted.wait_for(|a| *a)).await,
            Ok(Ok(_))
        );
        if registered {
            std::future::pending::<()>().await;
        }
    }
}

/// Why an origin connection ended before it was registered.
#[derive(Debug)]
pub(crate) enum SetupFailure {
    /// The peer was silent, slow, or left (a load balancer's health check, a scanner, a
    /// flood): closed and logged at debug, never warn.
    Quiet(String),
    /// A real refusal (a bad credential, a bad setup, an unknown protocol): logged at warn
    /// with its reason.
    Refused(String),
}

impl From<String> for SetupFailure {
    fn from(reason: String) -> Self {
        SetupFailure::Refused(reason)
    }
}

impl From<&str> for SetupFailure {
    fn from(reason: &str) -> Self {
        SetupFailure::Refused(reason.to_string())
    }
}

impl SetupFailure {
    /// An I/O error from the peer: a peer that left is quiet, anything else a refusal.
    pub(crate) fn io(what: &str, e: &std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let reason = format!("{what}: {e}");
        match e.kind() {
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut
            | NotConnected => SetupFailure::Quiet(reason),
            _ => SetupFailure::Refused(reason),
        }
    }

    /// The deadline passed during `stage`.
    pub(crate) fn late(stage: &str) -> Self {
        SetupFailure::Quiet(format!("{stage} before the setup deadline"))
    }

    /// Logs the failure at the level its kind deserves.
    pub(crate) fn log(&self, peer: SocketAddr, transport: &str) {
        match self {
            SetupFailure::Quiet(reason) => {
                tracing::debug!(%peer, %transport, %reason, "origin connection closed during setup")
            }
            SetupFailure::Refused(reason) => {
                tracing::warn!(%peer, %transport, %reason, "origin connection refused")
            }
        }
    }
}

/// Authenticates what an origin presented and authorises the origins and path prefixes it
/// asks for, in one place for every mechanism. Nothing is registered without this.
///
/// draft-kazuho-ptth-ptth-01 §6: the gateway "MUST check that the authenticated origin is
/// allowed to register each requested origin" before accepting.
pub(crate) fn check_origin(
    grants: &Grants,
    presented: &Presented<'_>,
    origins: &[SerializedOrigin],
    path_prefixes: &[String],
) -> Result<(Admission, Vec<Scope>), AuthError> {
    let (matched, proven) = grants.authenticate_proven(presented)?;
    let scopes = ptth_auth::authorize(grants, &matched, origins, path_prefixes)?;
    let names: Vec<String> = matched.iter().map(|g| g.name.clone()).collect();
    Ok((
        Admission {
            identity: names.join(","),
            grant_names: names,
            origins: origins.to_vec(),
            path_prefixes: path_prefixes.to_vec(),
            certificate_names: Vec::new(),
            proven,
        },
        scopes,
    ))
}

/// The scope of an origin that authenticated with its client certificate alone and claimed
/// none: the names its certificate carries, narrowed by the grants the certificate matched
/// ([`ptth_auth::scopes_from_certificate`]), under the path prefixes of those grants.
///
/// draft-thomson-ptth-potato §5 lets the scope follow from the credential: "a client
/// certificate ... can be used to authenticate the origin". An origin written from the draft
/// alone knows nothing of the authorisation resource, answers it 404 (or 200 without
/// `ptth-origins`), and must still be able to register.
pub(crate) fn scope_from_certificate(
    grants: &Grants,
    peer_certs: Option<&[CertificateDer<'static>]>,
) -> Result<(Admission, Vec<Scope>), String> {
    let Some(leaf) = peer_certs.and_then(<[_]>::first) else {
        return Err("the origin claimed no scope (no ptth-origins) and presented no client certificate, so no scope follows from its credential".into());
    };
    let presented = Presented {
        peer_certs,
        ..Default::default()
    };
    let (matched, proven) = grants
        .authenticate_proven(&presented)
        .map_err(|e| format!("origin credential: {e}"))?;
    let names =
        ptth_auth::certificate_names(leaf).map_err(|e| format!("origin credential: {e}"))?;
    let scopes = ptth_auth::scopes_from_certificate(grants, &matched, &names)
        .map_err(|e| format!("origin credential: {e}"))?;
    let grant_names: Vec<String> = matched.iter().map(|g| g.name.clone()).collect();
    Ok((
        Admission {
            identity: grant_names.join(","),
            grant_names,
            origins: Vec::new(),
            path_prefixes: Vec::new(),
            certificate_names: names,
            proven,
        },
        scopes,
    ))
}

/// Whether an answer to the authorisation request claims no scope and carries no credential:
/// 404 (the origin does not know the resource), or 200 without `ptth-origins`, a signature
/// or a secret. Only a client certificate can then say what the origin may serve.
fn claims_nothing(status: StatusCode, headers: &http::HeaderMap) -> bool {
    status == StatusCode::NOT_FOUND
        || (status == StatusCode::OK
            && !headers.contains_key(ptth_auth::ORIGINS_FIELD)
            && !headers.contains_key(ptth_auth::SIGNATURE_FIELD)
            && !headers.contains_key(ptth_auth::AUTHORIZATION_FIELD))
}

/// Why an admitted connection does not pass the grants in force now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Revoked {
    /// The credential it presented matches no grant now (rotated, or its grant removed).
    Credential(AuthError),
    /// It still authenticates, but its grants no longer cover what it registered.
    Narrowed(ptth_auth::Forbidden),
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revoked::Credential(e) => write!(f, "credential no longer accepted ({e})"),
            Revoked::Narrowed(e) => write!(f, "grant narrowed ({e})"),
        }
    }
}

/// Checks an admitted connection again, against `grants`: the credential it presented,
/// by identity ([`Grants::reauthenticate`]), then the origins and prefixes it registered
/// ([`ptth_auth::authorize`]), or, for an origin registered for the names its certificate
/// carries, that those names still give it every scope it holds. A reload drains every
/// connection this refuses.
pub(crate) fn recheck(
    grants: &Grants,
    admission: &Admission,
    scopes: &[Scope],
) -> Result<(), Revoked> {
    let matched = grants
        .reauthenticate(&admission.proven)
        .map_err(Revoked::Credential)?;
    if admission.certificate_names.is_empty() {
        ptth_auth::authorize(
            grants,
            &matched,
            &admission.origins,
            &admission.path_prefixes,
        )
        .map_err(Revoked::Narrowed)?;
    } else {
        let now =
            ptth_auth::scopes_from_certificate(grants, &matched, &admission.certificate_names)
                .map_err(Revoked::Narrowed)?;
        if let Some(lost) = scopes.iter().find(|s| !now.contains(s)) {
            return Err(Revoked::Narrowed(
                ptth_auth::Forbidden::NoCertificateOrigin(lost.to_string()),
            ));
        }
    }
    Ok(())
}

/// Accepts origin connections until the listener fails.
pub async fn serve(listener: TcpListener, ctx: Arc<TunnelContext>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "tunnel accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let setup = match ctx.start_setup(peer) {
            Ok(s) => s,
            Err(full) => {
                // Closed at once: the socket is dropped before anything is read.
                tracing::debug!(%peer, reason = %full, refused = ctx.pending.refused(), "origin connection closed at accept");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(failure) = admit(tcp, peer, setup, ctx).await {
                failure.log(peer, "tcp");
            }
        });
    }
}

async fn admit(
    tcp: TcpStream,
    peer: SocketAddr,
    setup: SetupState,
    ctx: Arc<TunnelContext>,
) -> Result<(), SetupFailure> {
    let handshake = async {
        // Read the ClientHello first: whether to ask for a client certificate follows the
        // ALPN the origin offers (draft-thomson-ptth-potato §5.1; draft-bt §3).
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .map_err(|e| SetupFailure::io("reading the ClientHello", &e))?;
        let config = ctx
            .tls()
            .for_client_hello(start.client_hello().alpn())
            .ok_or(SetupFailure::Refused(
                "h2-reverse requires client certificates, but no --client-ca, --client-webpki or pinned key is configured".to_string()
            ))?;
        start
            .into_stream(config)
            .await
            .map_err(|e| SetupFailure::io("TLS handshake failed", &e))
    };
    let tls = tokio::time::timeout_at(setup.deadline, handshake)
        .await
        .map_err(|_| SetupFailure::late("no TLS handshake"))??;
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_certs: Option<Vec<CertificateDer<'static>>> =
        session.peer_certificates().map(|c| c.to_vec());
    let has_client_cert = peer_certs.as_ref().is_some_and(|c| !c.is_empty());
    let exporter = ptth_auth::exporter_value(session).ok();
    // RFC 7301: a client that offers no ALPN speaks HTTP/1.1, the only setup it can use.
    let role = match &alpn {
        Some(a) => classify_alpn(Transport::Tls, a)
            .ok_or_else(|| format!("unexpected ALPN {:?}", String::from_utf8_lossy(a)))?,
        None => AlpnRole::Setup {
            version: HttpVersion::Http1,
        },
    };
    match role {
        AlpnRole::Reversed { mechanism, .. } => {
            if mechanism == Mechanism::H2Reverse && !has_client_cert {
                // draft-bt §3: "the origin MUST present a valid certificate chain".
                return Err("h2-reverse requires a client certificate (draft-bt)".into());
            }
            let version = mechanism.reversed_version();
            let (sender, task, origin_frame) = if mechanism == Mechanism::H2Reverse {
                // draft-bt §3: "the origin MUST immediately send an ORIGIN frame".
                let (tap, watch) = ptth_h2::OriginFrameTap::new(tls, 8);
                let (s, t) = tokio::time::timeout_at(setup.deadline, start_client(tap, version))
                    .await
                    .map_err(|_| SetupFailure::late("no HTTP/2 handshake"))??;
                let frame = match tokio::time::timeout_at(setup.deadline, watch.wait()).await {
                    Ok(Ok(frame)) => frame,
                    Ok(Err(e)) => {
                        t.abort();
                        return Err(format!("ORIGIN frame: {e}").into());
                    }
                    Err(_) => {
                        t.abort();
                        return Err(SetupFailure::late("no ORIGIN frame (draft-bt)"));
                    }
                };
                (s, t, Some(frame))
            } else {
                let (s, t) = tokio::time::timeout_at(setup.deadline, start_client(tls, version))
                    .await
                    .map_err(|_| SetupFailure::late("no HTTP handshake"))??;
                (s, t, None)
            };
            admit_reversed(
                ReversedCandidate {
                    sender,
                    task,
                    mechanism,
                    peer,
                    peer_certs,
                    exporter,
                    origin_frame,
                    deadline: setup.deadline,
                },
                &ctx,
            )
            .await
        }
        AlpnRole::Setup {
            version: HttpVersion::Http1,
        } => {
            serve_h1_setup(tls, peer, peer_certs, ctx, setup).await;
            Ok(())
        }
        AlpnRole::Setup {
            version: HttpVersion::Http2,
        } => {
            serve_h2_setup(tls, peer, peer_certs, ctx, setup).await;
            Ok(())
        }
        AlpnRole::Setup { version } => Err(format!("no setup over {version:?} on TCP").into()),
    }
}

pub(crate) fn register(
    ctx: &TunnelContext,
    mechanism: Mechanism,
    scopes: Vec<Scope>,
    admission: Admission,
    peer: SocketAddr,
    sender: Sender,
    task: tokio::task::JoinHandle<()>,
) {
    // A reload may have swapped the grants since `check_origin` ran (a setup registers only
    // once its stream is handed over). Checking again under the grants' read lock closes
    // the gap: either this connection is in the registry before the reload swaps the
    // grants and looks at every connection, or it is checked here against the new ones.
    let grants = ctx.grants.read().unwrap_or_else(|e| e.into_inner());
    if let Err(why) = recheck(&grants, &admission, &scopes) {
        drop(grants);
        tracing::warn!(%peer, origin = %admission.identity, "origin connection refused: the grants were reloaded during its setup: {why}");
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

/// A reversed connection that is up but not yet admitted: the gateway can send requests on
/// it, and nothing but the authorisation request is sent before it is admitted.
pub(crate) struct ReversedCandidate {
    /// The request-sending half.
    pub sender: Sender,
    /// The task driving the connection; aborted if admission fails.
    pub task: tokio::task::JoinHandle<()>,
    /// How the connection was reversed.
    pub mechanism: Mechanism,
    /// The origin's address.
    pub peer: SocketAddr,
    /// The client certificate chain the TLS layer verified, if any.
    pub peer_certs: Option<Vec<CertificateDer<'static>>>,
    /// The gateway's TLS exporter value for this connection (binds challenge answers).
    pub exporter: Option<[u8; 32]>,
    /// draft-bt: the origin's ORIGIN frame (HTTP/2 or HTTP/3, same payload).
    pub origin_frame: Option<ptth_core::OriginFrame>,
    /// The connection's setup deadline: the authorisation exchange must end by then.
    pub deadline: Instant,
}

/// Potato and draft-bt: the connection is reversed as soon as the handshake completes. The
/// gateway's first request goes to a prearranged resource (draft-thomson-ptth-potato §5.2)
/// carrying a fresh challenge; the origin answers with the scope it claims and a credential
/// (a signature over the challenge and this connection's TLS exporter value, or a token),
/// unless its client certificate already says who it is. No public request is sent on the
/// connection before this succeeds.
pub(crate) async fn admit_reversed(
    c: ReversedCandidate,
    ctx: &TunnelContext,
) -> Result<(), SetupFailure> {
    let ReversedCandidate {
        sender,
        task,
        mechanism,
        peer,
        peer_certs,
        exporter,
        origin_frame,
        deadline,
    } = c;
    let fail = |why: String| {
        task.abort();
        Err(SetupFailure::Refused(why))
    };
    let quiet = |failure: SetupFailure| {
        task.abort();
        Err(failure)
    };
    let challenge = Challenge::new(random_bytes());
    let mut req = sender.gateway_request(AUTHORIZE_PATH);
    req.headers_mut()
        .insert(ptth_auth::CHALLENGE_FIELD, challenge.header_value());
    let res = match tokio::time::timeout_at(deadline, sender.send(req)).await {
        Ok(Ok(r)) => r,
        // A peer that hung up (a scanner, a health check) is not an origin being refused.
        Ok(Err(_)) if sender.is_closed() => {
            return quiet(SetupFailure::Quiet(
                "the connection closed before the authorisation answer".into(),
            ))
        }
        Ok(Err(_)) => return fail("the origin failed the authorisation request".into()),
        Err(_) => return quiet(SetupFailure::late("no answer to the authorisation request")),
    };
    let (parts, body) = res.into_parts();
    // Finish the body so a reversed HTTP/1.1 connection is free for the next request; a
    // body that trickles in slowly is bounded by the same deadline.
    if tokio::time::timeout_at(deadline, drain(body, 64 * 1024))
        .await
        .is_err()
    {
        return quiet(SetupFailure::late(
            "the authorisation answer's body did not end",
        ));
    }
    if claims_nothing(parts.status, &parts.headers) {
        let (admission, scopes) = match scope_from_certificate(&ctx.grants(), peer_certs.as_deref())
        {
            Ok(x) => x,
            Err(e) => return fail(e),
        };
        if let (Some(frame), Some(leaf)) =
            (&origin_frame, peer_certs.as_ref().and_then(|c| c.first()))
        {
            // draft-bt §3: "The intermediary MUST check the ORIGIN entries against the
            // client certificate"; the scope already comes from that certificate.
            let entries: Vec<&str> = frame.entries().iter().map(|e| e.as_str()).collect();
            if let Err(e) = ptth_auth::check_origin_frame_against_cert(&entries, leaf) {
                return fail(format!("ORIGIN frame: {e}"));
            }
        }
        let shown: Vec<String> = scopes.iter().map(Scope::to_string).collect();
        tracing::info!(%peer, %mechanism, identity = %admission.identity, scopes = %shown.join(" "), "the origin claimed no scope: registered for the names its client certificate carries");
        register(ctx, mechanism, scopes, admission, peer, sender, task);
        return Ok(());
    }
    if parts.status != StatusCode::OK {
        return fail(format!(
            "the origin answered the authorisation request with {}",
            parts.status
        ));
    }
    let answer = if parts.headers.contains_key(ptth_auth::SIGNATURE_FIELD) {
        match ChallengeAnswer::from_response(parts.status, &parts.headers) {
            Ok(a) => Some(a),
            Err(e) => return fail(format!("challenge answer: {e}")),
        }
    } else {
        None
    };
    let (origins, prefixes) = match &answer {
        Some(a) => (a.origins().to_vec(), a.path_prefixes().to_vec()),
        None => match claimed_scope(&parts.headers) {
            Ok(x) => x,
            Err(e) => return fail(e),
        },
    };
    let proof = match (&answer, &exporter) {
        (Some(answer), Some(exporter)) => Some(ChallengeProof {
            answer,
            challenge: &challenge,
            exporter,
        }),
        (Some(_), None) => return fail("a signed answer needs a TLS exporter value".into()),
        (None, _) => None,
    };
    let presented = Presented {
        authorization: parts.headers.get(ptth_auth::AUTHORIZATION_FIELD),
        peer_certs: peer_certs.as_deref(),
        challenge_answer: proof,
    };
    let (admission, scopes) = match check_origin(&ctx.grants(), &presented, &origins, &prefixes) {
        Ok(x) => x,
        Err(e) => return fail(format!("origin credential: {e}")),
    };
    if let Some(frame) = &origin_frame {
        // draft-bt §3: "The intermediary MUST check the ORIGIN entries against the client
        // certificate"; and the origins this connection serves must be among them.
        let Some(leaf) = peer_certs.as_ref().and_then(|c| c.first()) else {
            return fail(format!(
                "{mechanism} requires a client certificate (draft-bt)"
            ));
        };
        let entries: Vec<&str> = frame.entries().iter().map(|e| e.as_str()).collect();
        if let Err(e) = ptth_auth::check_origin_frame_against_cert(&entries, leaf) {
            return fail(format!("ORIGIN frame: {e}"));
        }
        for o in &origins {
            if !origin_frame_covers(frame, o) {
                return fail(format!("{o} is not in the connection's ORIGIN frame"));
            }
        }
    }
    register(ctx, mechanism, scopes, admission, peer, sender, task);
    Ok(())
}

/// The origins and path prefixes an unsigned answer claims.
fn claimed_scope(
    headers: &http::HeaderMap,
) -> Result<(Vec<SerializedOrigin>, Vec<String>), String> {
    let origins = headers
        .get(ptth_auth::ORIGINS_FIELD)
        .ok_or("the answer names no origin (ptth-origins)")?
        .to_str()
        .map_err(|_| "ptth-origins is not visible ASCII".to_string())?;
    let origins = ptth_core::parse_origin_list(&origins.replace(' ', ""))
        .map_err(|e| format!("ptth-origins: {e}"))?;
    let prefixes = ptth_auth::path_prefixes(headers).map_err(|e| e.to_string())?;
    Ok((origins, prefixes))
}

fn random_bytes() -> [u8; 32] {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

pub(crate) fn reject(r: &SetupRejection) -> Response<Body> {
    let (parts, text) = r.to_response().into_parts();
    Response::from_parts(parts, crate::message::full(text))
}

pub(crate) fn refuse(e: &AuthError) -> Response<Body> {
    let reason = format!("origin credential: {e}");
    if e.status() == StatusCode::FORBIDDEN {
        error(StatusCode::FORBIDDEN, &reason)
    } else {
        unauthorized(&reason)
    }
}

fn unauthorized(reason: &str) -> Response<Body> {
    let mut res = error(StatusCode::UNAUTHORIZED, reason);
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"ptth\""),
    );
    res
}

/// The gateway's preference among transposed protocols: HTTP/2 first (draft-kazuho-ptth-ptth
/// §3: "HTTP/2 is RECOMMENDED").
pub(crate) fn supported() -> Vec<ProtocolId> {
    vec![ProtocolId::h2(), ProtocolId::http11()]
}

/// An accepted setup: what was agreed, who it is, the scopes granted, and the answer.
pub(crate) type Admitted = (
    ptth_core::AcceptedSetup,
    Admission,
    Vec<Scope>,
    Response<Body>,
);

/// Validates a setup request, authenticates it and works out its scopes.
pub(crate) fn admit_setup<B>(
    ctx: &TunnelContext,
    req: &Request<B>,
    extended_protocol: Option<&str>,
    peer_certs: Option<&[CertificateDer<'static>]>,
) -> Result<Admitted, Box<Response<Body>>> {
    let (parts, _) = clone_head(req);
    let legacy = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|u| u.to_ascii_uppercase().starts_with("PTTH/"));
    let tokens = &ctx.setup_tokens;
    let accepted = if req.method() == Method::CONNECT {
        ptth_core::validate_connect_request(&parts, extended_protocol, &supported(), tokens)
    } else if legacy {
        ptth_core::validate_legacy_request(&parts, tokens)
    } else {
        ptth_core::validate_upgrade_request(&parts, &supported(), tokens)
    }
    .map_err(|r| Box::new(reject(&r)))?;
    let prefixes = ptth_auth::path_prefixes(req.headers())
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e.to_string())))?;
    let mut origins = accepted.origins.clone();
    if origins.is_empty() {
        // Legacy PTTH/1.0 has no template: the origin lists what it serves in a field.
        if let Some(v) = req.headers().get(ptth_auth::ORIGINS_FIELD) {
            let text = v.to_str().unwrap_or_default();
            origins = ptth_core::parse_origin_list(&text.replace(' ', "")).map_err(|e| {
                Box::new(error(
                    StatusCode::BAD_REQUEST,
                    &format!("ptth-origins: {e}"),
                ))
            })?;
        }
    }
    let presented = Presented {
        authorization: accepted.authorization.as_ref(),
        peer_certs,
        challenge_answer: None,
    };
    let (admission, scopes) = check_origin(&ctx.grants(), &presented, &origins, &prefixes)
        .map_err(|e| Box::new(refuse(&e)))?;
    let response = if req.method() == Method::CONNECT {
        ptth_core::connect_response(&accepted)
    } else if legacy {
        ptth_core::legacy_response(tokens)
    } else {
        ptth_core::upgrade_response(&accepted, tokens)
    };
    let (rparts, ()) = response.into_parts();
    Ok((
        accepted,
        admission,
        scopes,
        Response::from_parts(rparts, empty()),
    ))
}

fn clone_head<B>(req: &Request<B>) -> (http::request::Parts, ()) {
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .version(req.version());
    if let Some(h) = b.headers_mut() {
        *h = req.headers().clone();
    }
    b.body(())
        .map(|r| r.into_parts())
        .unwrap_or_else(|_| Request::new(()).into_parts())
}

fn mechanism_for(accepted: &ptth_core::AcceptedSetup, connect: bool) -> (Mechanism, HttpVersion) {
    let version = HttpVersion::from_alpn_id(&accepted.chosen).unwrap_or(HttpVersion::Http1);
    let mechanism = match (accepted.kind, version) {
        (ptth_core::SetupKind::LegacyUpgrade, _) => Mechanism::Ptth10,
        _ if connect => Mechanism::ConnectH2,
        (_, HttpVersion::Http2) => Mechanism::UpgradeH2,
        _ => Mechanism::UpgradeH1,
    };
    (mechanism, version)
}

/// One setup request on an HTTP/1.1 or HTTP/2 (`connect`: extended CONNECT with
/// `extended_protocol` as its `:protocol`) setup connection: admitted, its stream is taken
/// over in a task of its own once the answer is sent; refused, the answer says why.
fn take_over_setup(
    req: &mut Request<Incoming>,
    connect: bool,
    extended_protocol: Option<&str>,
    ctx: Arc<TunnelContext>,
    peer: SocketAddr,
    peer_certs: Option<&[CertificateDer<'static>]>,
    setup: SetupState,
) -> Response<Body> {
    let (accepted, admission, scopes, response) =
        match admit_setup(&ctx, req, extended_protocol, peer_certs) {
            Ok(x) => x,
            Err(res) => return *res,
        };
    let (mechanism, version) = mechanism_for(&accepted, connect);
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(reverse_after_upgrade(
        on_upgrade,
        version,
        mechanism,
        Registration {
            scopes,
            admission,
            peer,
            setup,
        },
        ctx,
    ));
    response
}

/// HTTP/1.1 setup connection: `Upgrade: ptth` or `Upgrade: PTTH/1.0`, then `101`. Closed at
/// the setup deadline unless a setup was registered by then.
async fn serve_h1_setup<IO>(
    io: IO,
    peer: SocketAddr,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    ctx: Arc<TunnelContext>,
    setup: SetupState,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer_certs = Arc::new(peer_certs);
    let deadline = setup.deadline;
    let service_setup = setup.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let ctx = ctx.clone();
        let peer_certs = peer_certs.clone();
        let setup = service_setup.clone();
        async move {
            Ok::<_, std::convert::Infallible>(take_over_setup(
                &mut req,
                false,
                None,
                ctx,
                peer,
                peer_certs.as_deref(),
                setup,
            ))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(deadline.saturating_duration_since(Instant::now()))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // hyper's header timer runs to the same deadline.
        ended = &mut conn => match ended {
            Err(e) if e.is_timeout() => SetupFailure::late("no setup admitted").log(peer, "tcp"),
            Err(e) => tracing::debug!(%peer, error = %e, "setup connection ended"),
            Ok(()) => {}
        },
        () = setup.expired() => SetupFailure::late("no setup admitted").log(peer, "tcp"),
    }
}

/// What registering an admitted setup needs besides the connection itself.
struct Registration {
    scopes: Vec<Scope>,
    admission: Admission,
    peer: SocketAddr,
    setup: SetupState,
}

/// Once a setup's stream is handed over (after the `101`, or the CONNECT's `2xx`), starts the
/// gateway's HTTP client on it and registers the connection, by the setup deadline.
async fn reverse_after_upgrade(
    on_upgrade: hyper::upgrade::OnUpgrade,
    version: HttpVersion,
    mechanism: Mechanism,
    r: Registration,
    ctx: Arc<TunnelContext>,
) {
    let peer = r.peer;
    let started = tokio::time::timeout_at(r.setup.deadline, async {
        let upgraded = on_upgrade
            .await
            .map_err(|e| format!("taking over the setup stream failed: {e}"))?;
        start_client(TokioIo::new(upgraded), version).await
    })
    .await;
    match started {
        Ok(Ok((sender, task))) => {
            register(&ctx, mechanism, r.scopes, r.admission, peer, sender, task);
            r.setup.registered();
        }
        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "reversed connection failed"),
        Err(_) => SetupFailure::late("the setup stream was not taken over").log(peer, "tcp"),
    }
}

/// HTTP/2 setup connection: extended CONNECT `:protocol = ptth` (RFC 8441), then `2xx`. The
/// connection carries the tunnels and lives on once one is registered; until then it is
/// closed at the setup deadline.
async fn serve_h2_setup<IO>(
    io: IO,
    peer: SocketAddr,
    peer_certs: Option<Vec<CertificateDer<'static>>>,
    ctx: Arc<TunnelContext>,
    setup: SetupState,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer_certs = Arc::new(peer_certs);
    let service_setup = setup.clone();
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let ctx = ctx.clone();
        let peer_certs = peer_certs.clone();
        let setup = service_setup.clone();
        async move {
            let protocol = req
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_string());
            Ok::<_, std::convert::Infallible>(take_over_setup(
                &mut req,
                true,
                protocol.as_deref(),
                ctx,
                peer,
                peer_certs.as_deref(),
                setup,
            ))
        }
    });
    let windows = ptth_h2::Windows::default();
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // An origin gone without a FIN (NAT, a pulled cable) leaves its carrier here: PINGs
        // find it, as the reversed HTTP/2 client's do (ptth_h2::reversed::handshake).
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20))
        .enable_connect_protocol()
        .initial_stream_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        ended = &mut conn => if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "setup connection ended");
        },
        () = setup.expired() => SetupFailure::late("no setup admitted").log(peer, "tcp"),
    }
}

/// Whether an ORIGIN frame entry covers `origin`. draft-bt §3 allows wildcard entries
/// (`https://*.example.com`), which cover exactly one more label, as certificates do.
fn origin_frame_covers(frame: &ptth_core::OriginFrame, origin: &SerializedOrigin) -> bool {
    frame.entries().iter().any(|e| {
        let port = e
            .port()
            .or_else(|| ptth_core::default_port(e.scheme()))
            .unwrap_or(0);
        if !e.scheme().eq_ignore_ascii_case(origin.scheme()) || port != origin.port() {
            return false;
        }
        let host = origin.host().to_ascii_lowercase();
        let entry = e.host().to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            None => host == entry,
        }
    })
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
