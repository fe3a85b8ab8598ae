//! Authentication of PTTH origins and gateways.
//!
//! This crate decides *who* a connecting origin is. It does no I/O: callers hand it what a
//! setup exchange saw (an `Authorization` header, the answer to the gateway's authorisation
//! request) and get back an identity or an [`AuthError`] that maps to a status code.
//!
//! Today it holds the interim shared-token scheme of the TCP end-to-end work: the gateway
//! stores only a SHA-256 hash of each accepted token and compares hashes in constant time.
//! Certificates, challenge signatures and grants come with the authentication issue.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod authorize;
mod token;

pub use authorize::{
    path_prefixes, AuthorizeClaim, ClaimError, AUTHORIZATION_FIELD, AUTHORIZE_PATH, ORIGINS_FIELD,
    PATH_PREFIX_FIELD,
};
pub use token::{AuthError, BearerToken, TokenVerifier};
