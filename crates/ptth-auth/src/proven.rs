//! What an origin proved when it was admitted, kept without its secrets, so the grants can
//! be asked again (after a reload) whether that credential is still accepted.
//!
//! A connection outlives the grants that admitted it: an operator rotates a token, a
//! password, a signing key or a pinned certificate and sends SIGHUP, and every connection
//! that holds the old credential must go. Grant names cannot tell (a rotation keeps the name;
//! a rename keeps the credential), so the gateway keeps, per connection, a [`Proven`]: the
//! credential in the same non-secret form the grants keep it in (SHA-256 of a token or
//! password, the public key that verified a signature, the certificate's names and key
//! hash), and [`Grants::reauthenticate`] matches it against new grants by identity.

use std::fmt;

use crate::encoding::hex;
use crate::error::AuthError;
use crate::grant::{Grant, Grants, Identity};
use crate::names::dns_name_matches;
use crate::token::constant_time_eq;

/// What one connection's credentials proved, without any secret: built by
/// [`Grants::authenticate_proven`], checked again by [`Grants::reauthenticate`].
///
/// `Debug` and [`describe`](Self::describe) redact the hashes of secrets, as
/// [`Identity`]'s `Debug` does: the hash of a low-entropy secret is as good as the secret to
/// an offline guesser.
///
/// `Proven::default()` proved nothing: [`Grants::reauthenticate`] refuses it, so a
/// connection admitted with it is drained by the first reload (the safe side).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Proven {
    pub(crate) http: Option<ProvenHttp>,
    pub(crate) certificate: Option<ProvenCertificate>,
    pub(crate) ed25519: Option<ProvenKey>,
}

/// An `Authorization` credential, hashed as grants keep it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum ProvenHttp {
    /// SHA-256 of the bearer token's text.
    Bearer([u8; 32]),
    /// RFC 7617: the user id (for logs, lossily decoded), and SHA-256 of the user id's and
    /// the password's bytes.
    Basic {
        user: String,
        user_sha256: [u8; 32],
        password_sha256: [u8; 32],
    },
}

/// The leaf certificate the TLS layer accepted: its key hash, and its names.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProvenCertificate {
    pub(crate) spki_sha256: [u8; 32],
    pub(crate) common_names: Vec<String>,
    pub(crate) dns_sans: Vec<String>,
    /// Whether the TLS layer verified the certificate's chain rather than accepting its
    /// pinned key. The verifier accepts a pinned key whatever names the certificate carries,
    /// so the names prove something only when this is true; a reload that drops the pin does
    /// not make them true after the fact.
    pub(crate) chain_verified: bool,
}

/// The Ed25519 key whose signature over this connection's challenge verified.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ProvenKey {
    pub(crate) id: String,
    pub(crate) public_key: [u8; 32],
}

impl Proven {
    /// A short description for logs, free of secrets and of their hashes:
    /// `bearer token`, `basic user ops + certificate spki-sha256 0a1b…`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.http {
            Some(ProvenHttp::Bearer(_)) => parts.push("bearer token".to_string()),
            Some(ProvenHttp::Basic { user, .. }) => parts.push(format!("basic user {user}")),
            None => {}
        }
        if let Some(c) = &self.certificate {
            parts.push(format!(
                "certificate spki-sha256 {}",
                hex(&c.spki_sha256[..8])
            ));
        }
        if let Some(k) = &self.ed25519 {
            parts.push(format!("ed25519 key {}", k.id));
        }
        parts.join(" + ")
    }
}

impl fmt::Debug for Proven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let http = self.http.as_ref().map(|h| match h {
            ProvenHttp::Bearer(_) => "Bearer(<redacted>)".to_string(),
            ProvenHttp::Basic { user, .. } => format!("Basic({user:?}, <redacted>)"),
        });
        let mut s = f.debug_struct("Proven");
        s.field("http", &http);
        match &self.certificate {
            Some(c) => s
                .field("spki_sha256", &hex(&c.spki_sha256))
                .field("common_names", &c.common_names)
                .field("dns_sans", &c.dns_sans)
                .field("chain_verified", &c.chain_verified),
            None => s.field("certificate", &None::<()>),
        };
        match &self.ed25519 {
            Some(k) => s
                .field("key_id", &k.id)
                .field("public_key", &hex(&k.public_key)),
            None => s.field("ed25519", &None::<()>),
        };
        s.finish()
    }
}

impl Grants {
    /// Returns every grant that accepts, today, what a connection proved when it was
    /// admitted: the answer [`authenticate`](Self::authenticate) would give a new connection
    /// presenting the same credential, without needing the secret again or a fresh
    /// challenge. Grants match by identity, never by name: a renamed grant with the same
    /// credential still matches; a rotated credential no longer does.
    ///
    /// - A bearer token or Basic password that no grant holds any more is
    ///   [`AuthError::Rejected`], even if the certificate still matches: a wrong secret is
    ///   never silently ignored.
    /// - An Ed25519 answer proved possession of one key: a grant with that key id must still
    ///   list that key. A grant with the same id and another key (a rotation in place) is
    ///   [`AuthError::Rejected`], as a fresh signature would not verify against it.
    /// - A certificate matches [`Identity::Spki`] by its key hash; its names match
    ///   [`Identity::CertSan`] / [`Identity::CertSubject`] only if its chain was verified at
    ///   the handshake and its key is not pinned now. The client CA is not reloaded, so a
    ///   chain verified then stays verified.
    pub fn reauthenticate(&self, proven: &Proven) -> Result<Vec<&Grant>, AuthError> {
        let grants = self.grants();
        let mut matched = vec![false; grants.len()];
        let mut proved_any = false;

        if let Some(credential) = &proven.http {
            proved_any = true;
            // Every grant is compared, in constant time, without stopping at a match.
            let mut any = 0u8;
            for (i, g) in grants.iter().enumerate() {
                let hit = http_matches(&g.identity, credential);
                matched[i] |= hit == 1;
                any |= hit;
            }
            if any == 0 {
                return Err(AuthError::Rejected);
            }
        }

        if let Some(cert) = &proven.certificate {
            proved_any = true;
            let pinned = grants
                .iter()
                .any(|g| g.identity == Identity::Spki(cert.spki_sha256));
            let names_count = cert.chain_verified && !pinned;
            for (i, g) in grants.iter().enumerate() {
                matched[i] |= certificate_matches(&g.identity, cert, names_count);
            }
        }

        if let Some(key) = &proven.ed25519 {
            proved_any = true;
            let mut any = false;
            for (i, g) in grants.iter().enumerate() {
                if let Identity::Ed25519Key { id, public_key } = &g.identity {
                    if *id == key.id {
                        if *public_key != key.public_key {
                            return Err(AuthError::Rejected);
                        }
                        matched[i] = true;
                        any = true;
                    }
                }
            }
            if !any {
                return Err(AuthError::Rejected);
            }
        }

        if !proved_any {
            return Err(AuthError::Missing);
        }
        let out: Vec<&Grant> = grants
            .iter()
            .zip(matched)
            .filter_map(|(g, m)| m.then_some(g))
            .collect();
        if out.is_empty() {
            return Err(AuthError::Rejected);
        }
        Ok(out)
    }
}

/// 1 when `identity` holds this `Authorization` credential, else 0; constant time in the
/// hashes.
fn http_matches(identity: &Identity, credential: &ProvenHttp) -> u8 {
    match (identity, credential) {
        (Identity::Token { sha256, .. }, ProvenHttp::Bearer(h)) => constant_time_eq(sha256, h),
        (
            Identity::Basic {
                user,
                password_sha256,
            },
            ProvenHttp::Basic {
                user_sha256,
                password_sha256: p,
                ..
            },
        ) => {
            use sha2::{Digest, Sha256};
            let grant_user: [u8; 32] = Sha256::digest(user.as_bytes()).into();
            constant_time_eq(&grant_user, user_sha256) & constant_time_eq(password_sha256, p)
        }
        _ => 0,
    }
}

/// Whether `identity` names this certificate; its names count only when `names_count`.
fn certificate_matches(identity: &Identity, cert: &ProvenCertificate, names_count: bool) -> bool {
    match identity {
        Identity::Spki(h) => *h == cert.spki_sha256,
        Identity::CertSubject(name) if names_count => {
            cert.common_names.iter().any(|cn| cn == name)
                || cert.dns_sans.iter().any(|s| s.eq_ignore_ascii_case(name))
        }
        Identity::CertSan(pattern) if names_count => cert.dns_sans.iter().any(|san| {
            san.eq_ignore_ascii_case(pattern)
                || (!san.starts_with('*') && dns_name_matches(pattern, san))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ca, params, self_signed, signed};
    use crate::{spki_sha256, Challenge, ChallengeAnswer, ChallengeProof, Ed25519SigningKey};
    use crate::{GrantError, Presented};
    use http::HeaderValue;
    use rustls::pki_types::CertificateDer;

    const ORIGINS: &str = "origins = [\"https://app.example.com\"]\n";

    fn grants(toml: &str) -> Grants {
        Grants::from_toml(toml).unwrap()
    }

    fn names(r: Result<Vec<&Grant>, AuthError>) -> Vec<String> {
        r.unwrap().iter().map(|g| g.name.clone()).collect()
    }

    /// Admits `presented` under `before`, then asks `after` about what it proved.
    fn again<'g>(
        before: &Grants,
        after: &'g Grants,
        presented: &Presented<'_>,
    ) -> Result<Vec<&'g Grant>, AuthError> {
        let (_, proven) = before.authenticate_proven(presented).unwrap();
        after.reauthenticate(&proven)
    }

    fn token_grants(name: &str, token: &str) -> Grants {
        grants(&format!(
            "[[grant]]\nname = \"{name}\"\ntoken = \"{token}\"\n{ORIGINS}"
        ))
    }

    #[test]
    fn tokens_match_by_hash_not_by_grant_name() {
        let v = HeaderValue::from_static("Bearer rot-one");
        let p = Presented {
            authorization: Some(&v),
            ..Default::default()
        };
        let before = token_grants("rot", "rot-one");
        assert_eq!(names(again(&before, &before, &p)), vec!["rot"]);
        // Rotated in place: same name, new token.
        let rotated = token_grants("rot", "rot-two");
        assert_eq!(
            again(&before, &rotated, &p).unwrap_err(),
            AuthError::Rejected
        );
        // Renamed, same token: still this credential.
        let renamed = token_grants("renamed", "rot-one");
        assert_eq!(names(again(&before, &renamed, &p)), vec!["renamed"]);
        // A token-sha256 grant for the same token is the same identity.
        let by_hash = grants(&format!(
            "[[grant]]\nname = \"h\"\ntoken-sha256 = \"{}\"\n{ORIGINS}",
            hex(&<sha2::Sha256 as sha2::Digest>::digest(b"rot-one"))
        ));
        assert_eq!(names(again(&before, &by_hash, &p)), vec!["h"]);
    }

    fn basic_grants(name: &str, user: &str, password: &str) -> Grants {
        grants(&format!(
            "[[grant]]\nname = \"{name}\"\nbasic-user = \"{user}\"\nbasic-password = \"{password}\"\n{ORIGINS}"
        ))
    }

    #[test]
    fn basic_credentials_match_user_and_password() {
        let v = HeaderValue::from_static("Basic b3BzOmNvcnJlY3QtaG9yc2U="); // ops:correct-horse
        let p = Presented {
            authorization: Some(&v),
            ..Default::default()
        };
        let before = basic_grants("ops", "ops", "correct-horse");
        assert_eq!(names(again(&before, &before, &p)), vec!["ops"]);
        let rotated = basic_grants("ops", "ops", "battery-staple");
        assert_eq!(
            again(&before, &rotated, &p).unwrap_err(),
            AuthError::Rejected
        );
        let other_user = basic_grants("ops", "ops2", "correct-horse");
        assert_eq!(
            again(&before, &other_user, &p).unwrap_err(),
            AuthError::Rejected
        );
        let renamed = basic_grants("operators", "ops", "correct-horse");
        assert_eq!(names(again(&before, &renamed, &p)), vec!["operators"]);
        // A token equal to the password is another identity.
        let as_token = token_grants("t", "correct-horse");
        assert_eq!(
            again(&before, &as_token, &p).unwrap_err(),
            AuthError::Rejected
        );
    }

    fn key_grants(name: &str, id: &str, key: &Ed25519SigningKey) -> Grants {
        grants(&format!(
            "[[grant]]\nname = \"{name}\"\ned25519 = \"{}\"\nkey-id = \"{id}\"\n{ORIGINS}",
            hex(&key.public_key())
        ))
    }

    #[test]
    fn an_ed25519_answer_keeps_matching_while_the_grant_lists_its_key() {
        let key = Ed25519SigningKey::from_seed(&[5; 32]).unwrap();
        let new_key = Ed25519SigningKey::from_seed(&[6; 32]).unwrap();
        let challenge = Challenge::new([7; 32]);
        let exporter = [8; 32];
        let origins = vec!["https://app.example.com".parse().unwrap()];
        let answer =
            ChallengeAnswer::sign(&key, "k1", &challenge, &exporter, &origins, &["/".into()])
                .unwrap();
        let p = Presented {
            challenge_answer: Some(ChallengeProof {
                answer: &answer,
                challenge: &challenge,
                exporter: &exporter,
            }),
            ..Default::default()
        };
        let before = key_grants("signer", "k1", &key);
        assert_eq!(names(again(&before, &before, &p)), vec!["signer"]);
        // Rotated in place: same key id, new key. No fresh challenge is needed to know the
        // old key's signature would not verify.
        let rotated = key_grants("signer", "k1", &new_key);
        assert_eq!(
            again(&before, &rotated, &p).unwrap_err(),
            AuthError::Rejected
        );
        // Same key under another id: grants find keys by id, as a new connection would.
        let other_id = key_grants("signer", "k2", &key);
        assert_eq!(
            again(&before, &other_id, &p).unwrap_err(),
            AuthError::Rejected
        );
        let renamed = key_grants("renamed", "k1", &key);
        assert_eq!(names(again(&before, &renamed, &p)), vec!["renamed"]);
    }

    fn pin_grants(name: &str, pin: &[u8; 32]) -> Grants {
        grants(&format!(
            "[[grant]]\nname = \"{name}\"\nspki-sha256 = \"{}\"\n{ORIGINS}",
            hex(pin)
        ))
    }

    #[test]
    fn a_pinned_certificate_matches_while_its_key_is_pinned() {
        let cert = self_signed(params("x", &["app.example.com"], true));
        let other = self_signed(params("x", &["app.example.com"], true));
        let chain = [cert.der()];
        let p = Presented {
            peer_certs: Some(&chain),
            ..Default::default()
        };
        let pin = spki_sha256(&cert.der()).unwrap();
        let before = pin_grants("pinned", &pin);
        assert_eq!(names(again(&before, &before, &p)), vec!["pinned"]);
        let rotated = pin_grants("pinned", &spki_sha256(&other.der()).unwrap());
        assert_eq!(
            again(&before, &rotated, &p).unwrap_err(),
            AuthError::Rejected
        );
        let renamed = pin_grants("renamed", &pin);
        assert_eq!(names(again(&before, &renamed, &p)), vec!["renamed"]);
        // The pin is gone, and a cert-san grant names the certificate's SAN: the TLS layer
        // accepted this certificate for its pin, never checked its chain, so its names still
        // prove nothing.
        let by_name = grants(&format!(
            "[[grant]]\nname = \"san\"\ncert-san = \"app.example.com\"\n{ORIGINS}"
        ));
        assert_eq!(
            again(&before, &by_name, &p).unwrap_err(),
            AuthError::Rejected
        );
    }

    fn san_grants(name: &str, san: &str) -> Result<Grants, GrantError> {
        Grants::from_toml(&format!(
            "[[grant]]\nname = \"{name}\"\ncert-san = \"{san}\"\n{ORIGINS}"
        ))
    }

    #[test]
    fn a_ca_verified_certificate_matches_by_its_names() {
        let ca = ca();
        let cert = signed(&ca, params("Node 7", &["node7.example.com"], true));
        let chain: [CertificateDer<'static>; 1] = [cert.der()];
        let p = Presented {
            peer_certs: Some(&chain),
            ..Default::default()
        };
        let before = san_grants("by-san", "node7.example.com").unwrap();
        assert_eq!(names(again(&before, &before, &p)), vec!["by-san"]);
        // The grant now names another SAN: this certificate no longer matches.
        let moved = san_grants("by-san", "node8.example.com").unwrap();
        assert_eq!(again(&before, &moved, &p).unwrap_err(), AuthError::Rejected);
        // A wildcard SAN grant and a subject grant still cover it, whatever their names.
        let wildcard = san_grants("w", "*.example.com").unwrap();
        assert_eq!(names(again(&before, &wildcard, &p)), vec!["w"]);
        let subject = grants(&format!(
            "[[grant]]\nname = \"cn\"\ncert-subject = \"Node 7\"\n{ORIGINS}"
        ));
        assert_eq!(names(again(&before, &subject, &p)), vec!["cn"]);
        // Its key pinned now: as for a new connection, its names stop counting.
        let mut pinned = wildcard.grants().to_vec();
        pinned.push(Grant {
            name: "pin".into(),
            identity: Identity::Spki(spki_sha256(&cert.der()).unwrap()),
            origins: vec!["https://elsewhere.example.com".parse().unwrap()],
            path_prefixes: vec!["/".into()],
            services: Vec::new(),
        });
        let pinned = Grants::new(pinned).unwrap();
        assert_eq!(names(again(&before, &pinned, &p)), vec!["pin"]);
    }

    #[test]
    fn a_rotated_token_is_not_excused_by_a_certificate_that_still_matches() {
        let ca = ca();
        let cert = signed(&ca, params("x", &["node7.example.com"], true));
        let chain = [cert.der()];
        let v = HeaderValue::from_static("Bearer rot-one");
        let p = Presented {
            authorization: Some(&v),
            peer_certs: Some(&chain),
            ..Default::default()
        };
        let both = |token: &str| {
            grants(&format!(
                "[[grant]]\nname = \"t\"\ntoken = \"{token}\"\n{ORIGINS}[[grant]]\nname = \"c\"\ncert-san = \"node7.example.com\"\n{ORIGINS}"
            ))
        };
        let before = both("rot-one");
        assert_eq!(names(again(&before, &before, &p)), vec!["t", "c"]);
        assert_eq!(
            again(&before, &both("rot-two"), &p).unwrap_err(),
            AuthError::Rejected
        );
    }

    #[test]
    fn what_was_proven_never_shows_a_secret_or_its_hash() {
        let v = HeaderValue::from_static("Basic b3BzOmNvcnJlY3QtaG9yc2U="); // ops:correct-horse
        let g = basic_grants("ops", "ops", "correct-horse");
        let (_, proven) = g
            .authenticate_proven(&Presented {
                authorization: Some(&v),
                ..Default::default()
            })
            .unwrap();
        let pw_hash = hex(&<sha2::Sha256 as sha2::Digest>::digest(b"correct-horse"));
        for text in [format!("{proven:?}"), proven.describe()] {
            assert!(text.contains("ops"), "{text}");
            assert!(!text.contains("correct"), "{text}");
            assert!(!text.contains(&pw_hash[..12]), "{text}");
        }
        let v = HeaderValue::from_static("Bearer s3cret-t0ken");
        let g = token_grants("t", "s3cret-t0ken");
        let (_, proven) = g
            .authenticate_proven(&Presented {
                authorization: Some(&v),
                ..Default::default()
            })
            .unwrap();
        let hash = hex(&<sha2::Sha256 as sha2::Digest>::digest(b"s3cret-t0ken"));
        for text in [format!("{proven:?}"), proven.describe()] {
            assert!(!text.contains("t0ken"), "{text}");
            assert!(!text.contains(&hash[..12]), "{text}");
        }
    }
}
