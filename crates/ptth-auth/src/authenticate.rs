//! Authentication: which grants do the credentials an origin presented prove?
//!
//! draft-kazuho-ptth-ptth-01 leaves the scheme open ("a TLS client certificate, HTTP
//! authentication, or anything else"); draft-thomson-ptth-potato §5 lists client
//! certificates and a request to a prearranged resource; draft-bt-httpbis-reverse-http
//! requires a client certificate. This module accepts all of them at once and returns
//! every grant they prove; [`authorize`](crate::authorize) then decides what those grants
//! allow.

use std::fmt;

use base64::Engine as _;
use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use crate::cert::Leaf;
use crate::challenge::{Challenge, ChallengeAnswer, EXPORTER_LEN};
use crate::error::AuthError;
use crate::grant::{Grant, Grants, Identity};
use crate::proven::{Proven, ProvenCertificate, ProvenHttp, ProvenKey};

/// What an origin presented on one connection. Build it with struct update syntax:
/// `Presented { authorization: Some(&v), ..Default::default() }`.
#[derive(Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The setup request's `Authorization` field (`Bearer` or `Basic`), or the credential of
    /// a legacy secret answer to the authorisation request.
    pub authorization: Option<&'a HeaderValue>,
    /// The client's certificate chain, leaf first, as the TLS layer accepted it (verified
    /// against a CA, or its key pinned; see [`client_verifier`](crate::client_verifier)).
    pub peer_certs: Option<&'a [CertificateDer<'static>]>,
    /// A signed answer to this connection's authorisation challenge.
    pub challenge_answer: Option<ChallengeProof<'a>>,
}

/// A challenge answer together with what it must be verified against.
#[derive(Debug, Clone, Copy)]
pub struct ChallengeProof<'a> {
    /// The origin's answer.
    pub answer: &'a ChallengeAnswer,
    /// The challenge the gateway sent on this connection.
    pub challenge: &'a Challenge,
    /// The gateway's own exporter value for this TLS connection
    /// ([`exporter_value`](crate::exporter_value)).
    pub exporter: &'a [u8; EXPORTER_LEN],
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presented")
            .field("authorization", &self.authorization.map(|_| "<redacted>"))
            .field("peer_certs", &self.peer_certs.map(<[_]>::len))
            .field("challenge_answer", &self.challenge_answer)
            .finish()
    }
}

fn parse_authorization(value: &HeaderValue) -> Result<ProvenHttp, AuthError> {
    let text = value
        .to_str()
        .map_err(|_| AuthError::Malformed("Authorization is not visible ASCII"))?;
    let (scheme, rest) = text
        .trim()
        .split_once(' ')
        .ok_or(AuthError::Malformed("expected `<scheme> <credentials>`"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok(ProvenHttp::Bearer(Sha256::digest(rest.as_bytes()).into()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        // RFC 7617 §2: base64 of user-id ":" password; the user-id has no colon.
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthError::Malformed("Basic credentials are not base64"))?;
        let colon = decoded
            .iter()
            .position(|&b| b == b':')
            .ok_or(AuthError::Malformed("Basic credentials have no ':'"))?;
        let (user, password) = (&decoded[..colon], &decoded[colon + 1..]);
        return Ok(ProvenHttp::Basic {
            user: String::from_utf8_lossy(user).into_owned(),
            user_sha256: Sha256::digest(user).into(),
            password_sha256: Sha256::digest(password).into(),
        });
    }
    Err(AuthError::Malformed(
        "only the Bearer and Basic schemes are accepted",
    ))
}

impl Grants {
    /// Returns every grant whose identity the presented credentials prove.
    ///
    /// - Bearer tokens and Basic passwords are compared by SHA-256 in constant time, against
    ///   every grant, without stopping at the first match.
    /// - Certificate identities use the leaf certificate. [`Identity::CertSubject`] and
    ///   [`Identity::CertSan`] trust its names only when its key is *not* pinned by an
    ///   [`Identity::Spki`] grant: the TLS layer accepts a pinned certificate whatever names
    ///   it carries, so its names prove nothing.
    /// - [`Identity::Ed25519Key`] needs a challenge answer with that key id that verifies.
    ///
    /// A presented `Authorization` or challenge answer that proves nothing is an error even
    /// when another credential succeeds: a wrong secret is never silently ignored. A
    /// certificate that matches no grant is not, since TLS may ask every client for one.
    pub fn authenticate(&self, presented: &Presented<'_>) -> Result<Vec<&Grant>, AuthError> {
        self.authenticate_proven(presented)
            .map(|(grants, _)| grants)
    }

    /// [`authenticate`](Self::authenticate), and also what the credentials proved, in a form
    /// without secrets to keep for the life of the connection and check again with
    /// [`reauthenticate`](Self::reauthenticate) when the grants change.
    pub fn authenticate_proven(
        &self,
        presented: &Presented<'_>,
    ) -> Result<(Vec<&Grant>, Proven), AuthError> {
        let proven = self.prove(presented)?;
        let grants = self.reauthenticate(&proven)?;
        Ok((grants, proven))
    }

    /// Reads what was presented into a [`Proven`]: secrets hashed, the certificate's names
    /// and key hash read, and a challenge answer verified against every grant's key of that
    /// id (a signature that fails any of them is an error).
    fn prove(&self, presented: &Presented<'_>) -> Result<Proven, AuthError> {
        let http = presented
            .authorization
            .map(parse_authorization)
            .transpose()?;
        let certificate = match presented.peer_certs.and_then(<[_]>::first) {
            Some(leaf) => {
                let leaf =
                    Leaf::parse(leaf).map_err(|e| AuthError::BadCertificate(e.to_string()))?;
                // The TLS verifier accepts a pinned key without looking at the chain; any
                // other certificate got here only through a verified chain.
                let pinned = self
                    .grants()
                    .iter()
                    .any(|g| g.identity == Identity::Spki(leaf.spki_sha256));
                Some(ProvenCertificate {
                    spki_sha256: leaf.spki_sha256,
                    common_names: leaf.common_names,
                    dns_sans: leaf.dns_sans,
                    chain_verified: !pinned,
                })
            }
            None => None,
        };
        let ed25519 = match &presented.challenge_answer {
            Some(proof) => {
                let mut verified = None;
                for g in self.grants() {
                    if let Identity::Ed25519Key { id, public_key } = &g.identity {
                        if id == proof.answer.key_id() {
                            proof
                                .answer
                                .verify(proof.challenge, proof.exporter, public_key)?;
                            verified.get_or_insert(ProvenKey {
                                id: id.clone(),
                                public_key: *public_key,
                            });
                        }
                    }
                }
                Some(verified.ok_or(AuthError::Rejected)?)
            }
            None => None,
        };
        Ok(Proven {
            http,
            certificate,
            ed25519,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::BearerToken;

    fn grants() -> Grants {
        Grants::from_toml(
            r#"
[[grant]]
name = "app"
token = "app-t0ken"
origins = ["https://app.example.com"]
[[grant]]
name = "ops"
basic-user = "ops"
basic-password = "correct-horse"
origins = ["https://ops.example.com"]
[[grant]]
name = "app-too"
token = "app-t0ken"
origins = ["https://other.example.com"]
"#,
        )
        .unwrap()
    }

    fn names(r: Result<Vec<&Grant>, AuthError>) -> Vec<String> {
        r.unwrap().iter().map(|g| g.name.clone()).collect()
    }

    fn with_auth(v: &HeaderValue) -> Presented<'_> {
        Presented {
            authorization: Some(v),
            ..Default::default()
        }
    }

    #[test]
    fn unknown_and_missing_credentials_are_401() {
        let g = grants();
        let wrong = HeaderValue::from_static("Bearer nope");
        let e = g.authenticate(&with_auth(&wrong)).unwrap_err();
        assert_eq!(e, AuthError::Rejected);
        assert_eq!(e.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(
            g.authenticate(&Presented::default()).unwrap_err(),
            AuthError::Missing
        );
        for bad in ["Digest x", "Bearer", "Basic !!!", "Basic Zm9v"] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert!(
                matches!(g.authenticate(&with_auth(&v)), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
        let wrong_pw = HeaderValue::from_static("Basic b3BzOmNvcnJlY3QtaG9yc2Y="); // ops:correct-horsf
        assert_eq!(
            g.authenticate(&with_auth(&wrong_pw)).unwrap_err(),
            AuthError::Rejected
        );
        let wrong_user = HeaderValue::from_static("Basic b3B0OmNvcnJlY3QtaG9yc2U="); // opt:correct-horse
        assert_eq!(
            g.authenticate(&with_auth(&wrong_user)).unwrap_err(),
            AuthError::Rejected
        );
        // A token that equals a Basic password proves nothing.
        let cross = HeaderValue::from_static("Bearer correct-horse");
        assert_eq!(
            g.authenticate(&with_auth(&cross)).unwrap_err(),
            AuthError::Rejected
        );
    }

    #[test]
    fn a_token_proves_every_grant_that_holds_it() {
        let g = grants();
        let v = BearerToken::new("app-t0ken").unwrap().header_value();
        assert_eq!(
            names(g.authenticate(&with_auth(&v))),
            vec!["app", "app-too"]
        );
        let v = HeaderValue::from_static("bearer   app-t0ken ");
        assert_eq!(
            names(g.authenticate(&with_auth(&v))),
            vec!["app", "app-too"]
        );
    }

    #[test]
    fn basic_credentials() {
        let g = grants();
        let v = HeaderValue::from_static("Basic b3BzOmNvcnJlY3QtaG9yc2U="); // ops:correct-horse
        assert_eq!(names(g.authenticate(&with_auth(&v))), vec!["ops"]);
    }

    #[test]
    fn right_token_wrong_origin_is_forbidden_and_returns_nothing() {
        let g = grants();
        let v = HeaderValue::from_static("Bearer app-t0ken");
        let proved = g.authenticate(&with_auth(&v)).unwrap();
        let r = crate::authorize(
            &g,
            &proved,
            &["https://ops.example.com".parse().unwrap()],
            &["/".to_string()],
        );
        let e = AuthError::from(r.unwrap_err());
        assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("ops.example.com"), "{e}");
    }

    #[test]
    fn presented_debug_redacts() {
        let v = HeaderValue::from_static("Bearer app-t0ken");
        assert!(!format!("{:?}", with_auth(&v)).contains("t0ken"));
    }

    mod certs {
        use super::*;
        use crate::testing::{ca, params, self_signed, signed};
        use crate::{spki_sha256, Challenge, ChallengeAnswer, Ed25519SigningKey};

        fn cert_grants(pin: [u8; 32]) -> Grants {
            Grants::from_toml(
                r#"
[[grant]]
name = "by-san"
cert-san = "origin.example.com"
origins = ["https://origin.example.com"]
[[grant]]
name = "by-wildcard-san"
cert-san = "*.edge.example.com"
origins = ["https://*.edge.example.com"]
[[grant]]
name = "by-cn"
cert-subject = "Origin Node 7"
origins = ["https://seven.example.com"]
"#,
            )
            .map(|g| {
                let mut all = g.grants().to_vec();
                all.push(Grant {
                    name: "by-pin".into(),
                    identity: Identity::Spki(pin),
                    origins: vec!["https://pinned.example.com".parse().unwrap()],
                    path_prefixes: vec!["/".into()],
                    services: Vec::new(),
                });
                Grants::new(all).unwrap()
            })
            .unwrap()
        }

        fn with_certs<'a>(certs: &'a [CertificateDer<'static>]) -> Presented<'a> {
            Presented {
                peer_certs: Some(certs),
                ..Default::default()
            }
        }

        #[test]
        fn san_cn_and_pin_identities() {
            let ca = ca();
            let g = cert_grants([0; 32]);
            let c = signed(&ca, params("x", &["origin.example.com"], true));
            assert_eq!(
                names(g.authenticate(&with_certs(&[c.der()]))),
                vec!["by-san"]
            );
            let c = signed(&ca, params("x", &["a.edge.example.com"], true));
            assert_eq!(
                names(g.authenticate(&with_certs(&[c.der()]))),
                vec!["by-wildcard-san"]
            );
            let c = signed(
                &ca,
                params("x", &["a.b.edge.example.com", "edge.example.com"], true),
            );
            assert_eq!(
                g.authenticate(&with_certs(&[c.der()])).unwrap_err(),
                AuthError::Rejected
            );
            let c = signed(&ca, params("Origin Node 7", &[], true));
            assert_eq!(
                names(g.authenticate(&with_certs(&[c.der()]))),
                vec!["by-cn"]
            );
            let c = signed(&ca, params("origin node 7", &[], true));
            assert_eq!(
                g.authenticate(&with_certs(&[c.der()])).unwrap_err(),
                AuthError::Rejected
            );
            let c = signed(&ca, params("someone else", &["other.example.com"], true));
            assert_eq!(
                g.authenticate(&with_certs(&[c.der()])).unwrap_err(),
                AuthError::Rejected
            );

            let pinned = self_signed(params("x", &[], true));
            let g = cert_grants(spki_sha256(&pinned.der()).unwrap());
            assert_eq!(
                names(g.authenticate(&with_certs(&[pinned.der()]))),
                vec!["by-pin"]
            );
            let bad = [CertificateDer::from(vec![1u8, 2, 3])];
            assert!(matches!(
                g.authenticate(&with_certs(&bad)),
                Err(AuthError::BadCertificate(_))
            ));
        }

        #[test]
        fn a_pinned_certificate_does_not_prove_the_names_it_carries() {
            // The TLS layer accepts a pinned certificate whatever names it claims.
            let pinned = self_signed(params("Origin Node 7", &["origin.example.com"], true));
            let g = cert_grants(spki_sha256(&pinned.der()).unwrap());
            assert_eq!(
                names(g.authenticate(&with_certs(&[pinned.der()]))),
                vec!["by-pin"]
            );
        }

        #[test]
        fn a_wrong_token_is_not_excused_by_a_good_certificate() {
            let ca = ca();
            let g = cert_grants([0; 32]);
            let c = [signed(&ca, params("x", &["origin.example.com"], true)).der()];
            let v = HeaderValue::from_static("Bearer wrong");
            let p = Presented {
                authorization: Some(&v),
                peer_certs: Some(&c),
                ..Default::default()
            };
            assert_eq!(g.authenticate(&p).unwrap_err(), AuthError::Rejected);
        }

        #[test]
        fn challenge_answers_prove_ed25519_grants() {
            let key = Ed25519SigningKey::from_seed(&[5; 32]).unwrap();
            let g = Grants::from_toml(&format!(
                "[[grant]]\nname = \"signer\"\ned25519 = \"{}\"\nkey-id = \"k1\"\norigins = [\"https://s.example.com\"]\npaths = [\"/api\"]\n",
                crate::encoding::hex(&key.public_key())
            ))
            .unwrap();
            let challenge = Challenge::new([7; 32]);
            let exporter = [8; 32];
            let origins = vec!["https://s.example.com".parse().unwrap()];
            let prefixes = vec!["/api/v1".to_string()];
            let answer =
                ChallengeAnswer::sign(&key, "k1", &challenge, &exporter, &origins, &prefixes)
                    .unwrap();
            let replayed = Challenge::new([0; 32]);
            let proof = |c, e| Presented {
                challenge_answer: Some(ChallengeProof {
                    answer: &answer,
                    challenge: c,
                    exporter: e,
                }),
                ..Default::default()
            };
            let proved = g.authenticate(&proof(&challenge, &exporter)).unwrap();
            assert_eq!(proved[0].name, "signer");
            let scopes =
                crate::authorize(&g, &proved, answer.origins(), answer.path_prefixes()).unwrap();
            assert_eq!(scopes[0].to_string(), "https://s.example.com/api/v1");
            assert_eq!(
                g.authenticate(&proof(&replayed, &exporter)).unwrap_err(),
                AuthError::SignatureInvalid
            );
            assert_eq!(
                g.authenticate(&proof(&challenge, &[0; 32])).unwrap_err(),
                AuthError::SignatureInvalid
            );
            let other =
                ChallengeAnswer::sign(&key, "k2", &challenge, &exporter, &origins, &prefixes)
                    .unwrap();
            let p = Presented {
                challenge_answer: Some(ChallengeProof {
                    answer: &other,
                    challenge: &challenge,
                    exporter: &exporter,
                }),
                ..Default::default()
            };
            assert_eq!(g.authenticate(&p).unwrap_err(), AuthError::Rejected);
        }
    }
}
