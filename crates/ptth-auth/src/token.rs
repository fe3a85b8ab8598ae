//! Bearer tokens: the origin presents one, the gateway keeps only its hash.

use http::HeaderValue;
use sha2::{Digest, Sha256};
use std::fmt;

use crate::error::AuthError;

/// A secret token as the origin holds it. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps a token. Tokens are RFC 6750 `b64token` characters so they fit in a header.
    pub fn new(token: impl Into<String>) -> Result<Self, AuthError> {
        let token = token.into();
        let ok = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
        if ok {
            Ok(Self(token))
        } else {
            Err(AuthError::Malformed(
                "a token must be non-empty and use only A-Z a-z 0-9 - . _ ~ + / =",
            ))
        }
    }

    /// The `Authorization` header value for this token.
    pub fn header_value(&self) -> HeaderValue {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", self.0))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer"));
        v.set_sensitive(true);
        v
    }

    /// The token text, for writing into a dev credentials file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Checks presented tokens against the hashes of the accepted ones.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    hashes: Vec<[u8; 32]>,
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("accepted", &self.hashes.len())
            .finish()
    }
}

impl TokenVerifier {
    /// A verifier that accepts nothing (every origin gets 401).
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` from now on. Only its hash is kept.
    pub fn accept(&mut self, token: &BearerToken) {
        self.hashes.push(Sha256::digest(token.0.as_bytes()).into());
    }

    /// Checks an `Authorization` header value (`Bearer <token>`, scheme case-insensitive).
    pub fn verify(&self, authorization: Option<&HeaderValue>) -> Result<(), AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let text = value
            .to_str()
            .map_err(|_| AuthError::Malformed("Authorization is not visible ASCII"))?;
        let (scheme, token) = text
            .split_once(' ')
            .ok_or(AuthError::Malformed("expected `Bearer <token>`"))?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed("only the Bearer scheme is accepted"));
        }
        let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare against every accepted hash without stopping early, so timing says
        // nothing about which (if any) hash matched, nor how many bytes did.
        let mut matched = 0u8;
        for h in &self.hashes {
            matched |= constant_time_eq(h, &presented);
        }
        if matched == 1 {
            Ok(())
        } else {
            Err(AuthError::Rejected)
        }
    }
}

/// 1 when `a == b`, else 0, in time independent of the contents.
pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> u8 {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // 1 when equal, 0 otherwise, without a data-dependent branch.
    1 & ((u16::from(diff).wrapping_sub(1) >> 8) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(t: &str) -> TokenVerifier {
        let mut v = TokenVerifier::new();
        v.accept(&BearerToken::new(t).unwrap());
        v
    }

    #[test]
    fn accepts_the_right_token_in_any_scheme_case() {
        let v = verifier("s3cret");
        assert_eq!(
            v.verify(Some(&HeaderValue::from_static("Bearer s3cret"))),
            Ok(())
        );
        assert_eq!(
            v.verify(Some(&HeaderValue::from_static("bearer s3cret"))),
            Ok(())
        );
    }

    #[test]
    fn rejects_wrong_missing_and_malformed() {
        let v = verifier("s3cret");
        assert_eq!(
            v.verify(Some(&HeaderValue::from_static("Bearer s3cres"))),
            Err(AuthError::Rejected)
        );
        assert_eq!(v.verify(None), Err(AuthError::Missing));
        assert!(matches!(
            v.verify(Some(&HeaderValue::from_static("Basic czNjcmV0"))),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(Some(&HeaderValue::from_static("s3cret"))),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(
            TokenVerifier::new().verify(Some(&HeaderValue::from_static("Bearer x"))),
            Err(AuthError::Rejected)
        );
    }

    #[test]
    fn tokens_are_validated_and_redacted() {
        assert!(BearerToken::new("").is_err());
        assert!(BearerToken::new("a b").is_err());
        let t = BearerToken::new("abc").unwrap();
        assert!(!format!("{t:?}").contains("abc"));
        assert!(t.header_value().is_sensitive());
    }

    #[test]
    fn constant_time_eq_is_exact() {
        let a = [7u8; 32];
        let mut b = a;
        assert_eq!(constant_time_eq(&a, &b), 1);
        b[31] ^= 0x80;
        assert_eq!(constant_time_eq(&a, &b), 0);
    }
}
