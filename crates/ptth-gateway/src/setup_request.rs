//! Setup requests on forward tunnel connections: validated (`ptth_core::validate_*`),
//! authorised ([`crate::admission::authorise`]: the grants, or the embedding application's
//! authoriser) and answered, with the mechanism they set up.
//!
//! PTTH -01 `Upgrade: ptth` (HTTP/1.1) and extended CONNECT `:protocol = ptth` (HTTP/2,
//! HTTP/3), PTTH -00 `OPTIONS` (HTTP/3) and legacy `Upgrade: PTTH/1.0` (HTTP/1.1) all end
//! here; the transports' setup servers (`tunnel`, `quic`) only carry them.

use crate::admission::{Admitted, TunnelContext};
use crate::message::{empty, error, Body};
use crate::policy::{OriginRequest, Refused};
use http::{header, Method, Request, Response, StatusCode};
use ptth_core::{AlpnRole, HttpVersion, Mechanism, ProtocolId, SetupRejection, Transport};
use ptth_h3::RecvBody;
use rustls::pki_types::CertificateDer;

/// A refused setup request's answer.
fn reject(r: &SetupRejection) -> Response<Body> {
    let (parts, text) = r.to_response().into_parts();
    Response::from_parts(parts, crate::message::full(text))
}

/// A refused credential's answer: 403 for a credential that may not register what it asks
/// for, 401 (with a challenge) otherwise.
fn refuse(r: &Refused) -> Response<Body> {
    if r.status == StatusCode::FORBIDDEN {
        error(StatusCode::FORBIDDEN, &r.reason)
    } else {
        unauthorized(&r.reason)
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
fn supported() -> Vec<ProtocolId> {
    vec![ProtocolId::h2(), ProtocolId::http11()]
}

/// An admitted setup request and the answer that tells the origin so.
pub(crate) type SetupAdmitted = (Admitted, Response<Body>);

/// The mechanism a setup of `accepted`'s kind sets up on a forward connection of `version`
/// over `transport`, and the version the gateway then speaks; a setup its connection does
/// not carry is refused.
fn mechanism_of(
    transport: Transport,
    version: HttpVersion,
    accepted: &ptth_core::AcceptedSetup,
) -> Result<(Mechanism, HttpVersion), Box<Response<Body>>> {
    let role = AlpnRole::Setup { version };
    let mechanism = Mechanism::negotiated(transport, role, Some((accepted.kind, &accepted.chosen)));
    let reversed = HttpVersion::from_alpn_id(&accepted.chosen);
    match (mechanism, reversed) {
        (Some(m), Some(v)) => Ok((m, v)),
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "no PTTH mechanism sets up {} with a {:?} setup over {version}",
                accepted.chosen, accepted.kind
            ),
        ))),
    }
}

/// Validates a setup request that arrived on a forward connection of `version` over
/// `transport`, authenticates it and works out its mechanism and scopes.
pub(crate) async fn admit_setup<B>(
    ctx: &TunnelContext,
    req: &Request<B>,
    transport: Transport,
    version: HttpVersion,
    extended_protocol: Option<&str>,
    peer: std::net::SocketAddr,
    peer_certs: Option<&[CertificateDer<'static>]>,
) -> Result<SetupAdmitted, Box<Response<Body>>> {
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
    let (mechanism, reversed) = mechanism_of(transport, version, &accepted)?;
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
    let request = OriginRequest {
        mechanism,
        peer,
        authorization: accepted.authorization.as_ref(),
        client_certificates: peer_certs,
        origins: &origins,
        path_prefixes: &prefixes,
        challenge: None,
    };
    let (admission, scopes) = crate::admission::authorise(ctx, &request)
        .await
        .map_err(|r| Box::new(refuse(&r)))?;
    let response = if req.method() == Method::CONNECT {
        ptth_core::connect_response(&accepted)
    } else if legacy {
        ptth_core::legacy_response(tokens)
    } else {
        ptth_core::upgrade_response(&accepted, tokens)
    };
    let (rparts, ()) = response.into_parts();
    let admitted = Admitted {
        mechanism,
        version: reversed,
        admission,
        scopes,
    };
    Ok((admitted, Response::from_parts(rparts, empty())))
}

/// PTTH -00: validates and authenticates an `OPTIONS` setup request on an HTTP/3
/// connection, which is then reversed.
pub(crate) async fn admit_options(
    ctx: &TunnelContext,
    req: &Request<RecvBody>,
    peer: std::net::SocketAddr,
    peer_certs: Option<&[CertificateDer<'static>]>,
) -> Result<SetupAdmitted, Box<Response<Body>>> {
    // draft-kazuho-ptth-ptth-00 §3: "the client sends an OPTIONS request to the PTTH
    // endpoint URI"; "OPTIONS * is never used".
    let accepted = ptth_core::validate_options_request(req, &ctx.setup_tokens)
        .map_err(|r| Box::new(reject(&r)))?;
    if accepted.origins.is_empty() {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "send OPTIONS to the well-known PTTH path naming the origins you serve",
        )));
    }
    let (mechanism, version) = mechanism_of(Transport::Quic, HttpVersion::Http3, &accepted)?;
    let prefixes = ptth_auth::path_prefixes(req.headers())
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e.to_string())))?;
    let request = OriginRequest {
        mechanism,
        peer,
        authorization: accepted.authorization.as_ref(),
        client_certificates: peer_certs,
        origins: &accepted.origins,
        path_prefixes: &prefixes,
        challenge: None,
    };
    let (admission, scopes) = crate::admission::authorise(ctx, &request)
        .await
        .map_err(|r| Box::new(refuse(&r)))?;
    let (parts, ()) = ptth_core::options_response().into_parts();
    let admitted = Admitted {
        mechanism,
        version,
        admission,
        scopes,
    };
    Ok((admitted, Response::from_parts(parts, empty())))
}

/// A copy of `req`'s method, URI, version and fields, without its body or extensions.
pub(crate) fn clone_head<B>(req: &Request<B>) -> (http::request::Parts, ()) {
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
