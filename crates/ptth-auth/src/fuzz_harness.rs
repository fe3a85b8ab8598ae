//! Pure fuzzing entry points for the parsers of origin-supplied credentials and claims: each
//! takes arbitrary bytes, must never panic, and asserts round-trip invariants where the input
//! parses. `fuzz/` targets and the `tests/` replay test call these.

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::{
    path_prefixes, AuthorizeClaim, BearerToken, TokenVerifier, AUTHORIZATION_FIELD, ORIGINS_FIELD,
    PATH_PREFIX_FIELD,
};

/// The fields of an answer to the authorisation request, in the order the lines of a fuzz
/// input fill them (cycling, so a field can appear more than once).
const CLAIM_FIELDS: [&str; 3] = [AUTHORIZATION_FIELD, ORIGINS_FIELD, PATH_PREFIX_FIELD];

/// Splits `data` on `\n`: the first line is the status code (anything that is not a status
/// code means 200), the following lines are values of `ptth-authorization`, `ptth-origins`
/// and `ptth-path-prefix`, cycling. Reads the claim, and checks that an accepted claim
/// survives a round trip through [`AuthorizeClaim::to_response`].
pub fn fuzz_authorize_claim(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let status = lines
        .next()
        .and_then(|line| StatusCode::from_bytes(line).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    for (line, field) in lines.zip(CLAIM_FIELDS.iter().cycle()) {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(*field, value);
        }
    }

    let prefixes = path_prefixes(&headers);
    if let Ok(prefixes) = &prefixes {
        assert!(!prefixes.is_empty());
        assert!(prefixes.iter().all(|p| p.starts_with('/')));
    }
    let Ok(claim) = AuthorizeClaim::from_response(status, &headers) else {
        return;
    };
    assert_eq!(status, StatusCode::OK);
    assert!(!claim.origins.is_empty());
    assert_eq!(prefixes.ok().as_ref(), Some(&claim.path_prefixes));

    let response: http::Response<()> = claim.to_response();
    let again = AuthorizeClaim::from_response(response.status(), response.headers());
    let again = match again {
        Ok(again) => again,
        Err(e) => panic!("an accepted claim does not survive its own response: {e}"),
    };
    assert_eq!(again.authorization, claim.authorization);
    assert_eq!(again.origins, claim.origins);
    assert_eq!(again.path_prefixes, claim.path_prefixes);

    // The gateway hands the claimed credential to the verifier next; that must not panic.
    let _ = TokenVerifier::new().verify(Some(&claim.authorization));
}

/// Presents `data` as an `Authorization` value to a verifier that accepts one token, and
/// checks that any well-formed token `data` spells is accepted by a verifier that holds it
/// and by no verifier that does not.
pub fn fuzz_bearer_token(data: &[u8]) {
    let mut verifier = TokenVerifier::new();
    if let Ok(token) = BearerToken::new("s3cret") {
        verifier.accept(&token);
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let verdict = verifier.verify(Some(&value));
        if verdict.is_ok() {
            // Only the accepted token, after the scheme and its space, can pass.
            let text = value.to_str().unwrap_or_default();
            let token = text.split_once(' ').map(|(_, t)| t.trim());
            assert_eq!(token, Some("s3cret"));
        }
        assert!(TokenVerifier::new().verify(Some(&value)).is_err());
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = BearerToken::new(text) {
        let mut holder = TokenVerifier::new();
        holder.accept(&token);
        assert_eq!(holder.verify(Some(&token.header_value())), Ok(()));
        let expected = token.expose() == "s3cret";
        assert_eq!(
            verifier.verify(Some(&token.header_value())).is_ok(),
            expected
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds() {
        fuzz_authorize_claim(b"200\nBearer t0ken\nhttps://a.example, https://b.example:8443\n/api");
        fuzz_authorize_claim(b"\nBearer t0ken\nhttp://[::1]:8080");
        fuzz_authorize_claim(b"404\nBearer t0ken\nhttps://a.example");
        fuzz_authorize_claim(b"200\nBearer t0ken\nnull\n/");
        fuzz_authorize_claim(b"200\nBearer t0ken\nhttps://a.example,,\napi");
        fuzz_bearer_token(b"Bearer s3cret");
        fuzz_bearer_token(b"bearer   s3cret  ");
        fuzz_bearer_token(b"Basic czNjcmV0");
        fuzz_bearer_token(b"s3cret");
        fuzz_bearer_token(b"\xff\x00");
    }

    /// A cheap stand-in for the fuzzer in ordinary `cargo test`: every prefix and every
    /// single-byte corruption of the seeds.
    #[test]
    fn corrupted_seeds_never_panic() {
        let seeds: [&[u8]; 2] = [
            b"200\nBearer t0ken\nhttps://a.example, https://b.example:8443\n/api\n\n/x",
            b"Bearer s3cret",
        ];
        for seed in seeds {
            for end in 0..=seed.len() {
                fuzz_authorize_claim(&seed[..end]);
                fuzz_bearer_token(&seed[..end]);
            }
            for i in 0..seed.len() {
                for b in [b'\n', b',', b' ', b'\t', b'/', 0x7f, 0x80, b':', b'['] {
                    let mut input = seed.to_vec();
                    input[i] = b;
                    fuzz_authorize_claim(&input);
                    fuzz_bearer_token(&input);
                }
            }
        }
    }
}

/// The fields of an answer to the authorisation challenge, in the order the lines of a fuzz
/// input fill them (cycling).
const CHALLENGE_ANSWER_FIELDS: [&str; 4] = [
    crate::KEY_ID_FIELD,
    crate::SIGNATURE_FIELD,
    ORIGINS_FIELD,
    PATH_PREFIX_FIELD,
];

/// Splits `data` on `\n`: the first line is the status code (anything else means 200), the
/// following lines are values of `ptth-key-id`, `ptth-signature`, `ptth-origins` and
/// `ptth-path-prefix`, cycling. Reads the answer; an accepted answer must survive a round
/// trip through its own headers, must not verify under a key that did not sign it, and
/// must verify once re-signed. The first line is also read as a `ptth-challenge` value.
pub fn fuzz_challenge_answer(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    if let Ok(value) = HeaderValue::from_bytes(first) {
        let mut h = HeaderMap::new();
        h.insert(crate::CHALLENGE_FIELD, value);
        if let Ok(c) = crate::Challenge::from_headers(&h) {
            assert_eq!(c.header_value().as_bytes(), first.trim_ascii());
        }
    }
    let status = StatusCode::from_bytes(first).unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    for (line, field) in lines.zip(CHALLENGE_ANSWER_FIELDS.iter().cycle()) {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(*field, value);
        }
    }
    let Ok(answer) = crate::ChallengeAnswer::from_response(status, &headers) else {
        return;
    };
    assert_eq!(status, StatusCode::OK);
    let again = crate::ChallengeAnswer::from_response(StatusCode::OK, &answer.to_headers());
    assert_eq!(again.as_ref().ok(), Some(&answer));

    let challenge = crate::Challenge::new([0x5a; 32]);
    let exporter = [0xa5; crate::EXPORTER_LEN];
    let Ok(key) = crate::Ed25519SigningKey::from_seed(&[7; 32]) else {
        return;
    };
    assert!(answer
        .verify(&challenge, &exporter, &key.public_key())
        .is_err());
    if let Ok(signed) = crate::ChallengeAnswer::sign(
        &key,
        answer.key_id(),
        &challenge,
        &exporter,
        answer.origins(),
        answer.path_prefixes(),
    ) {
        assert_eq!(
            signed.verify(&challenge, &exporter, &key.public_key()),
            Ok(())
        );
        assert!(signed
            .verify(
                &crate::Challenge::new([0; 32]),
                &exporter,
                &key.public_key()
            )
            .is_err());
    }
}

/// Reads `data` as a grants TOML document. Accepted grants must be consistent (origins and
/// normalised prefixes present, pins listed), must refuse a missing credential with 401,
/// and must not panic on `data` presented as a credential or certificate.
pub fn fuzz_grants_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let grants = match crate::Grants::from_toml(text) {
        Ok(g) => g,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut pins = 0;
    for g in grants.grants() {
        assert!(!g.name.is_empty());
        assert!(!g.origins.is_empty());
        assert!(!g.path_prefixes.is_empty());
        assert!(g.path_prefixes.iter().all(|p| p.starts_with('/')));
        pins += usize::from(matches!(g.identity, crate::Identity::Spki(_)));
    }
    assert_eq!(grants.pinned_spki().len(), pins);
    let _ = format!("{grants:?}");
    assert_eq!(
        grants.authenticate(&crate::Presented::default()).err(),
        Some(crate::AuthError::Missing)
    );
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let presented = crate::Presented {
            authorization: Some(&value),
            ..Default::default()
        };
        if let Ok(proved) = grants.authenticate(&presented) {
            assert!(!proved.is_empty());
        }
    }
    let cert = [rustls::pki_types::CertificateDer::from(data.to_vec())];
    let presented = crate::Presented {
        peer_certs: Some(&cert),
        ..Default::default()
    };
    let _ = grants.authenticate(&presented);
}

#[cfg(test)]
mod auth_seeds {
    use super::*;

    #[test]
    fn challenge_and_grant_seeds() {
        fuzz_challenge_answer(b"200\nk1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nhttps://a.example, https://b.example:8443\n/api, /static");
        fuzz_challenge_answer(
            b"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE\nk1\nc2ln\nhttps://a.example",
        );
        fuzz_challenge_answer(b"404\nk1");
        fuzz_grants_toml(b"[[grant]]\nname = \"a\"\ntoken = \"t\"\norigins = [\"https://*.a.example\"]\npaths = [\"/api/\"]\n");
        fuzz_grants_toml(
            b"[[grant]]\nname = \"a\"\ncert-san = \"*.a.example\"\norigins = [\"*\"]\n",
        );
        fuzz_grants_toml(b"[[grant]]\nname = \"a\"\n");
        fuzz_grants_toml(b"\xff");
    }

    #[test]
    fn corrupted_auth_seeds_never_panic() {
        let seeds: [&[u8]; 2] = [
            b"200\nk1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nhttps://a.example\n/api",
            b"[[grant]]\nname = \"a\"\nspki-sha256 = \"00000000000000000000000000000000000000000000000000000000000000ab\"\norigins = [\"https://a.example:8443\"]\npaths = [\"/x\"]\n",
        ];
        for seed in seeds {
            for end in 0..=seed.len() {
                fuzz_challenge_answer(&seed[..end]);
                fuzz_grants_toml(&seed[..end]);
            }
            for i in 0..seed.len() {
                for b in [b'\n', b',', b' ', b'"', b'/', 0x7f, 0x80, b'*', b'['] {
                    let mut input = seed.to_vec();
                    input[i] = b;
                    fuzz_challenge_answer(&input);
                    fuzz_grants_toml(&input);
                }
            }
        }
    }
}
