//! What an origin's credential lets it serve, decided in one place for every mechanism: at
//! admission ([`check_origin`], [`scope_from_certificate`]) and again on reload ([`recheck`]).
//!
//! Nothing here does I/O: the admission gathers what the origin presented (a setup
//! request's `Authorization`, a client certificate, an answer to the authorisation request,
//! an ORIGIN frame) and these functions say what it proves.

use crate::registry::Admission;
use http::StatusCode;
use ptth_auth::{AuthError, Grants, Presented};
use ptth_core::{Scope, SerializedOrigin};
use rustls::pki_types::CertificateDer;

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
pub(crate) fn claims_nothing(status: StatusCode, headers: &http::HeaderMap) -> bool {
    status == StatusCode::NOT_FOUND
        || (status == StatusCode::OK
            && !headers.contains_key(ptth_auth::ORIGINS_FIELD)
            && !headers.contains_key(ptth_auth::SIGNATURE_FIELD)
            && !headers.contains_key(ptth_auth::AUTHORIZATION_FIELD))
}

/// The origins and path prefixes an unsigned answer claims.
pub(crate) fn claimed_scope(
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

/// Whether an ORIGIN frame entry covers `origin`. draft-bt §3 allows wildcard entries
/// (`https://*.example.com`), which cover exactly one more label, as certificates do.
pub(crate) fn origin_frame_covers(
    frame: &ptth_core::OriginFrame,
    origin: &SerializedOrigin,
) -> bool {
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
