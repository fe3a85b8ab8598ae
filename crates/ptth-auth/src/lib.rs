//! Authentication and authorisation of PTTH origins and gateways.
//!
//! This crate decides *who* a connecting origin is and *what* it may register. It does no
//! I/O: callers hand it what a setup exchange saw (an `Authorization` header, the client
//! certificate the TLS layer accepted, the signed answer to the gateway's authorisation
//! challenge) and get back grants and routing scopes, or an [`AuthError`] that maps to a
//! status code (401 not authenticated, 403 not allowed).
//!
//! ```text
//! gateway config ──▶ Grants::from_toml ──▶ Grants ─┐          (names, identities, origins, prefixes)
//! TLS: client_verifier(CA, grants.pinned_spki()) ──┤
//! setup: Authorization / peer certs / ChallengeAnswer ──▶ Grants::authenticate ──▶ Vec<&Grant>
//!        (Grants::authenticate_proven also returns a Proven, no secrets, for the connection)
//! reload: Proven ──▶ new Grants::reauthenticate ──▶ Vec<&Grant> (by identity, not name)
//! claimed origins + prefixes ──▶ authorize(&grants, &proved, ..) ──▶ Vec<Scope> ──▶ Registry
//! draft-bt ORIGIN entries ──▶ check_origin_frame_against_cert(entries, leaf)
//! ```
//!
//! Secrets are kept only as SHA-256 hashes, compared in constant time, and never shown by
//! `Debug` or in an error.
//!
//! ```
//! use ptth_auth::{authorize, Grants, Presented};
//! let grants = Grants::from_toml(r#"
//! [[grant]]
//! name = "app-team"
//! token = "s3cret"
//! origins = ["https://app.example.com"]
//! paths = ["/api"]
//! "#).unwrap();
//! let header = http::HeaderValue::from_static("Bearer s3cret");
//! let proved = grants
//!     .authenticate(&Presented { authorization: Some(&header), ..Default::default() })
//!     .unwrap();
//! let origins = ["https://app.example.com".parse().unwrap()];
//! let scopes = authorize(&grants, &proved, &origins, &["/api/v2".to_string()]).unwrap();
//! assert_eq!(scopes[0].to_string(), "https://app.example.com/api/v2");
//! assert!(authorize(&grants, &proved, &origins, &["/apix".to_string()]).is_err());
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod authenticate;
mod authorize;
mod cert;
mod challenge;
mod credential;
mod encoding;
mod error;
#[doc(hidden)]
pub mod fuzz_harness;
mod grant;
mod names;
mod policy;
mod proven;
mod proxy_user;
mod service;
#[cfg(test)]
mod testing;
mod tls;
mod token;

pub use authenticate::{ChallengeProof, Presented};
pub use authorize::{
    path_prefixes, AuthorizeClaim, ClaimError, AUTHORIZATION_FIELD, AUTHORIZE_PATH, ORIGINS_FIELD,
    PATH_PREFIX_FIELD,
};
pub use cert::{certificate_names, spki_sha256, CertError};
pub use challenge::{
    exporter_value, generate_ed25519_pkcs8, pkcs8_to_pem, public_key_from_pkcs8, Challenge,
    ChallengeAnswer, Ed25519SigningKey, KeyError, CHALLENGE_FIELD, EXPORTER_LABEL, EXPORTER_LEN,
    KEY_ID_FIELD, SIGNATURE_FIELD, TRANSCRIPT_CONTEXT,
};
pub use credential::{BasicCredentials, OriginCredential};
pub use error::{AuthError, Forbidden, MAX_CERTIFICATE_NAMES};
pub use grant::{Grant, GrantError, GrantSpec, Grants, Identity, OriginPattern, PatternError};
pub use policy::{
    authorize, check_claim_size, check_origin_frame_against_cert, scopes_from_certificate,
    MAX_ORIGINS_PER_CONNECTION, MAX_PREFIXES_PER_CONNECTION,
};
pub use proven::Proven;
pub use proxy_user::{
    ProxyAuthError, ProxyUser, ProxyUserSpec, ProxyUsers, Reach, MAX_PROXY_USERS,
};
pub use service::{valid_service_name, GrantedService, MAX_SERVICE_NAME};
pub use tls::{
    client_verifier, danger_accept_any_gateway, gateway_handshake_hint, gateway_verifier,
    pinned_gateway_verifier, GatewayPinMismatch, TlsError,
};
pub use token::{BearerToken, TokenVerifier};
