//! The challenge form of the authorisation request (Potato §5.2): the origin signs a fresh
//! challenge bound to the TLS connection, so a captured answer is useless elsewhere.
//!
//! draft-thomson-ptth-potato §5.2: a secret fetched from a prearranged resource "is weak
//! against capture and replay"; "A stronger option has the origin sign a challenge from the
//! gateway". The draft defines no protocol ("TODO: Should this document define a
//! protocol?"), so ptth defines this one:
//!
//! ```text
//! gateway ── GET /.well-known/ptth/authorize ──────────────────────────▶ origin
//!            ptth-challenge: base64url(32 random bytes)
//! gateway ◀── 200 ptth-key-id: <id>                                     origin
//!                 ptth-signature: base64url(Ed25519(transcript))
//!                 ptth-origins: https://a.example, ...
//!                 ptth-path-prefix: /api, ...
//!
//! transcript = "ptth-authorize-v1" 0x00
//!              || challenge (32) || TLS exporter (32, label "EXPORTER-ptth-authorize")
//!              || len32(key id) || key id
//!              || u32 count || { len32(origin) || origin }*      (RFC 6454 serialisation)
//!              || u32 count || { len32(prefix) || prefix }*      (as sent)
//! ```
//!
//! The challenge defeats replay; the exporter (each side computes it from its own end of
//! the TLS connection, RFC 5705 / RFC 8446 §7.5) defeats transplanting an answer onto
//! another connection; signing the scope defeats altering what is claimed.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use ptth_core::SerializedOrigin;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivatePkcs8KeyDer;

use crate::authorize::{
    parse_origins, path_prefixes, ClaimError, ORIGINS_FIELD, PATH_PREFIX_FIELD,
};
use crate::encoding::{hex, parse_key32};
use crate::error::AuthError;

/// Request field carrying the gateway's challenge (base64url, no padding, 32 bytes).
pub const CHALLENGE_FIELD: &str = "ptth-challenge";
/// Response field naming the origin's key.
pub const KEY_ID_FIELD: &str = "ptth-key-id";
/// Response field carrying the Ed25519 signature (base64url, no padding, 64 bytes).
pub const SIGNATURE_FIELD: &str = "ptth-signature";
/// The TLS exporter label both sides use (RFC 8446 §7.5), with no context.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-ptth-authorize";
/// Length of the exporter value.
pub const EXPORTER_LEN: usize = 32;
/// The transcript's leading context string (a version: a new transcript gets a new one).
pub const TRANSCRIPT_CONTEXT: &[u8] = b"ptth-authorize-v1";

const MAX_KEY_ID_LEN: usize = 128;

/// The exporter value of a rustls connection, on either side. quinn connections offer the
/// same through `Connection::export_keying_material` with [`EXPORTER_LABEL`].
pub fn exporter_value<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Result<[u8; EXPORTER_LEN], rustls::Error> {
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
}

/// A fresh challenge. The caller supplies the randomness (32 bytes from a CSPRNG) so this
/// crate stays free of I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge([u8; 32]);

impl Challenge {
    /// A challenge from 32 random bytes. Never reuse them for another connection.
    pub fn new(rng_bytes: [u8; 32]) -> Self {
        Self(rng_bytes)
    }

    /// The [`CHALLENGE_FIELD`] value.
    pub fn header_value(&self) -> HeaderValue {
        // base64url is visible ASCII, so this cannot fail; fall back to an empty value that
        // the origin rejects rather than panicking.
        HeaderValue::from_str(&URL_SAFE_NO_PAD.encode(self.0))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// Reads the challenge from the gateway's request, on the origin.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ClaimError> {
        let value =
            single(headers, CHALLENGE_FIELD)?.ok_or(ClaimError::Missing(CHALLENGE_FIELD))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(value.as_bytes())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| malformed(CHALLENGE_FIELD, "expected 32 bytes in base64url"))?;
        Ok(Self(bytes))
    }

    /// The challenge bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn malformed(field: &'static str, why: &str) -> ClaimError {
    ClaimError::Malformed {
        field,
        why: why.to_owned(),
    }
}

fn single<'h>(headers: &'h HeaderMap, field: &'static str) -> Result<Option<&'h str>, ClaimError> {
    let mut values = headers.get_all(field).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(malformed(field, "more than one field line"));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| malformed(field, "not visible ASCII"))
}

/// Checks a key id: 1 to 128 characters from `A-Z a-z 0-9 - . _ ~ : @ + / =`.
pub(crate) fn check_key_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:@+/=".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a key id is 1 to {MAX_KEY_ID_LEN} characters from A-Z a-z 0-9 - . _ ~ : @ + / ="
        ))
    }
}

/// Why an Ed25519 key could not be loaded or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The bytes are not an Ed25519 key in a format this crate reads.
    #[error("not an Ed25519 private key: {0}")]
    Invalid(String),
    /// The system random number generator failed.
    #[error("the random number generator failed")]
    Rng,
}

/// An origin's Ed25519 private key. `Debug` shows only the public key.
pub struct Ed25519SigningKey(Ed25519KeyPair);

impl fmt::Debug for Ed25519SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519SigningKey")
            .field("public_key", &hex(&self.public_key()))
            .finish()
    }
}

impl Ed25519SigningKey {
    /// A key from PKCS#8 DER (v1 as OpenSSL writes it, or v2 with the public key).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Self)
            .map_err(|e| KeyError::Invalid(format!("PKCS#8: {e}")))
    }

    /// A key from its raw 32-byte seed (RFC 8032 private key).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map(Self)
            .map_err(|e| KeyError::Invalid(format!("seed: {e}")))
    }

    /// A key from a key file's contents: a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as
    /// `openssl genpkey -algorithm ed25519` writes), PKCS#8 DER, a raw 32-byte seed, or the
    /// seed as hex or base64 text.
    pub fn from_key_file(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.windows(10).any(|w| w == b"-----BEGIN") {
            let der = PrivatePkcs8KeyDer::from_pem_slice(bytes)
                .map_err(|e| KeyError::Invalid(format!("PEM (expected PRIVATE KEY): {e}")))?;
            return Self::from_pkcs8_der(der.secret_pkcs8_der());
        }
        if let Ok(seed) = <[u8; 32]>::try_from(bytes) {
            return Self::from_seed(&seed);
        }
        if let Some(seed) = std::str::from_utf8(bytes)
            .ok()
            .and_then(|t| parse_key32(t).ok())
        {
            return Self::from_seed(&seed);
        }
        Self::from_pkcs8_der(bytes)
    }

    /// The raw 32-byte public key, for the gateway's `ed25519 =` grant.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let pk = self.0.public_key().as_ref();
        if pk.len() == 32 {
            out.copy_from_slice(pk);
        }
        out
    }

    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        let sig = self.0.sign(msg);
        if sig.as_ref().len() == 64 {
            out.copy_from_slice(sig.as_ref());
        }
        out
    }
}

/// A new Ed25519 key as PKCS#8 v2 DER, from the system random number generator (for
/// `--dev`; write it with [`pkcs8_to_pem`]).
pub fn generate_ed25519_pkcs8() -> Result<Vec<u8>, KeyError> {
    let rng = ring::rand::SystemRandom::new();
    Ed25519KeyPair::generate_pkcs8(&rng)
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| KeyError::Rng)
}

/// The raw public key of a PKCS#8 Ed25519 private key.
pub fn public_key_from_pkcs8(der: &[u8]) -> Result<[u8; 32], KeyError> {
    Ed25519SigningKey::from_pkcs8_der(der).map(|k| k.public_key())
}

/// PKCS#8 DER as a `PRIVATE KEY` PEM document.
pub fn pkcs8_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// The origin's signed answer to a [`Challenge`], with the scope it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeAnswer {
    key_id: String,
    signature: [u8; 64],
    origins: Vec<SerializedOrigin>,
    path_prefixes: Vec<String>,
}

fn transcript(
    challenge: &Challenge,
    exporter: &[u8; EXPORTER_LEN],
    key_id: &str,
    origins: &[SerializedOrigin],
    path_prefixes: &[String],
) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn count(out: &mut Vec<u8>, n: usize) {
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(TRANSCRIPT_CONTEXT);
    out.push(0);
    out.extend_from_slice(challenge.as_bytes());
    out.extend_from_slice(exporter);
    put(&mut out, key_id.as_bytes());
    count(&mut out, origins.len());
    for o in origins {
        put(&mut out, o.to_string().as_bytes());
    }
    count(&mut out, path_prefixes.len());
    for p in path_prefixes {
        put(&mut out, p.as_bytes());
    }
    out
}

impl ChallengeAnswer {
    /// Signs an answer on the origin. `exporter` is the origin's own
    /// [`exporter_value`] for the connection the challenge arrived on.
    pub fn sign(
        key: &Ed25519SigningKey,
        key_id: &str,
        challenge: &Challenge,
        exporter: &[u8; EXPORTER_LEN],
        origins: &[SerializedOrigin],
        path_prefixes: &[String],
    ) -> Result<Self, ClaimError> {
        check_key_id(key_id).map_err(|why| ClaimError::Malformed {
            field: KEY_ID_FIELD,
            why,
        })?;
        if origins.is_empty() {
            return Err(ClaimError::Missing(ORIGINS_FIELD));
        }
        if path_prefixes.is_empty() {
            return Err(ClaimError::Missing(PATH_PREFIX_FIELD));
        }
        for p in path_prefixes {
            // The prefixes travel as a comma-separated list and are signed as sent, so they
            // must survive that list's parsing unchanged.
            let ok = p.starts_with('/')
                && !p.contains(',')
                && p.trim() == p
                && HeaderValue::from_str(p).is_ok();
            if !ok {
                return Err(malformed(
                    PATH_PREFIX_FIELD,
                    "a prefix starts with '/' and has no ',' nor surrounding space",
                ));
            }
        }
        let msg = transcript(challenge, exporter, key_id, origins, path_prefixes);
        Ok(Self {
            key_id: key_id.to_owned(),
            signature: key.sign(&msg),
            origins: origins.to_vec(),
            path_prefixes: path_prefixes.to_vec(),
        })
    }

    /// The answer's response fields.
    pub fn to_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let mut put = |field: &'static str, text: String| {
            if let Ok(v) = HeaderValue::from_str(&text) {
                h.insert(field, v);
            }
        };
        put(KEY_ID_FIELD, self.key_id.clone());
        put(SIGNATURE_FIELD, URL_SAFE_NO_PAD.encode(self.signature));
        let origins: Vec<String> = self.origins.iter().map(|o| o.to_string()).collect();
        put(ORIGINS_FIELD, origins.join(", "));
        put(PATH_PREFIX_FIELD, self.path_prefixes.join(", "));
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        h
    }

    /// The origin's `200` answer to the authorisation request.
    pub fn to_response<B: Default>(&self) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.headers_mut() = self.to_headers();
        res
    }

    /// Reads the origin's answer on the gateway. Verify it with [`ChallengeAnswer::verify`]
    /// (or through [`Grants::authenticate`](crate::Grants::authenticate)) before trusting it.
    pub fn from_response(status: StatusCode, headers: &HeaderMap) -> Result<Self, ClaimError> {
        if status != StatusCode::OK {
            return Err(ClaimError::Status(status));
        }
        let key_id = single(headers, KEY_ID_FIELD)?.ok_or(ClaimError::Missing(KEY_ID_FIELD))?;
        check_key_id(key_id).map_err(|why| ClaimError::Malformed {
            field: KEY_ID_FIELD,
            why,
        })?;
        let signature =
            single(headers, SIGNATURE_FIELD)?.ok_or(ClaimError::Missing(SIGNATURE_FIELD))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature.as_bytes())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| malformed(SIGNATURE_FIELD, "expected 64 bytes in base64url"))?;
        let origins = parse_origins(headers)?;
        let path_prefixes = path_prefixes(headers)?;
        Ok(Self {
            key_id: key_id.to_owned(),
            signature,
            origins,
            path_prefixes,
        })
    }

    /// Verifies the signature against this connection's challenge and the gateway's own
    /// exporter value, with the grant's public key.
    pub fn verify(
        &self,
        challenge: &Challenge,
        exporter: &[u8; EXPORTER_LEN],
        public_key: &[u8; 32],
    ) -> Result<(), AuthError> {
        let msg = transcript(
            challenge,
            exporter,
            &self.key_id,
            &self.origins,
            &self.path_prefixes,
        );
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&msg, &self.signature)
            .map_err(|_| AuthError::SignatureInvalid)
    }

    /// The key id the origin named.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The origins claimed (signed).
    pub fn origins(&self) -> &[SerializedOrigin] {
        &self.origins
    }

    /// The path prefixes claimed (signed, as sent).
    pub fn path_prefixes(&self) -> &[String] {
        &self.path_prefixes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Ed25519SigningKey {
        Ed25519SigningKey::from_pkcs8_der(&generate_ed25519_pkcs8().unwrap()).unwrap()
    }

    fn origins() -> Vec<SerializedOrigin> {
        vec![
            "https://app.example.com".parse().unwrap(),
            "https://api.example.com:8443".parse().unwrap(),
        ]
    }

    fn prefixes() -> Vec<String> {
        vec!["/api".into(), "/static".into()]
    }

    /// Signs on the "origin", sends through headers, parses on the "gateway".
    fn round_trip(k: &Ed25519SigningKey, c: &Challenge, exporter: &[u8; 32]) -> ChallengeAnswer {
        let a = ChallengeAnswer::sign(k, "k1", c, exporter, &origins(), &prefixes()).unwrap();
        let res: Response<()> = a.to_response();
        let back = ChallengeAnswer::from_response(res.status(), res.headers()).unwrap();
        assert_eq!(back, a);
        back
    }

    #[test]
    fn a_valid_answer_verifies() {
        let k = key();
        let c = Challenge::new([1; 32]);
        let a = round_trip(&k, &c, &[2; 32]);
        assert_eq!(a.verify(&c, &[2; 32], &k.public_key()), Ok(()));
        assert_eq!(a.key_id(), "k1");
        assert_eq!(a.origins(), origins());
        assert_eq!(a.path_prefixes(), prefixes());
    }

    #[test]
    fn replay_transplant_alteration_and_wrong_key_fail() {
        let k = key();
        let c = Challenge::new([1; 32]);
        let a = round_trip(&k, &c, &[2; 32]);
        let pk = k.public_key();
        // Replayed against another challenge.
        assert_eq!(
            a.verify(&Challenge::new([3; 32]), &[2; 32], &pk),
            Err(AuthError::SignatureInvalid)
        );
        // Transplanted onto another TLS connection.
        assert_eq!(
            a.verify(&c, &[4; 32], &pk),
            Err(AuthError::SignatureInvalid)
        );
        // Wrong key.
        assert_eq!(
            a.verify(&c, &[2; 32], &key().public_key()),
            Err(AuthError::SignatureInvalid)
        );
        // Altered scope in transit.
        let mut h = a.to_headers();
        h.insert(
            ORIGINS_FIELD,
            HeaderValue::from_static("https://app.example.com, https://evil.example.com"),
        );
        let altered = ChallengeAnswer::from_response(StatusCode::OK, &h).unwrap();
        assert_eq!(
            altered.verify(&c, &[2; 32], &pk),
            Err(AuthError::SignatureInvalid)
        );
        let mut h = a.to_headers();
        h.insert(PATH_PREFIX_FIELD, HeaderValue::from_static("/"));
        let altered = ChallengeAnswer::from_response(StatusCode::OK, &h).unwrap();
        assert_eq!(
            altered.verify(&c, &[2; 32], &pk),
            Err(AuthError::SignatureInvalid)
        );
        let mut h = a.to_headers();
        h.insert(KEY_ID_FIELD, HeaderValue::from_static("k2"));
        let altered = ChallengeAnswer::from_response(StatusCode::OK, &h).unwrap();
        assert_eq!(
            altered.verify(&c, &[2; 32], &pk),
            Err(AuthError::SignatureInvalid)
        );
    }

    #[test]
    fn challenge_header_round_trips() {
        let c = Challenge::new([0xfe; 32]);
        let mut h = HeaderMap::new();
        h.insert(CHALLENGE_FIELD, c.header_value());
        assert_eq!(Challenge::from_headers(&h).unwrap(), c);
        h.insert(CHALLENGE_FIELD, HeaderValue::from_static("AAAA"));
        assert!(Challenge::from_headers(&h).is_err());
        h.append(CHALLENGE_FIELD, c.header_value());
        assert!(Challenge::from_headers(&h).is_err());
        assert_eq!(
            Challenge::from_headers(&HeaderMap::new()),
            Err(ClaimError::Missing(CHALLENGE_FIELD))
        );
    }

    #[test]
    fn malformed_answers_are_refused() {
        let k = key();
        let c = Challenge::new([1; 32]);
        let a = round_trip(&k, &c, &[2; 32]);
        assert!(matches!(
            ChallengeAnswer::from_response(StatusCode::NOT_FOUND, &a.to_headers()),
            Err(ClaimError::Status(_))
        ));
        for field in [KEY_ID_FIELD, SIGNATURE_FIELD, ORIGINS_FIELD] {
            let mut h = a.to_headers();
            h.remove(field);
            assert_eq!(
                ChallengeAnswer::from_response(StatusCode::OK, &h),
                Err(ClaimError::Missing(field))
            );
        }
        let mut h = a.to_headers();
        h.insert(SIGNATURE_FIELD, HeaderValue::from_static("c2ln"));
        assert!(ChallengeAnswer::from_response(StatusCode::OK, &h).is_err());
        let mut h = a.to_headers();
        h.insert(KEY_ID_FIELD, HeaderValue::from_static("a b"));
        assert!(ChallengeAnswer::from_response(StatusCode::OK, &h).is_err());
        // The origin refuses to sign what would not survive the trip.
        for bad in ["api", "/a,b", " /a"] {
            assert!(
                ChallengeAnswer::sign(&k, "k1", &c, &[2; 32], &origins(), &[bad.into()]).is_err()
            );
        }
        assert!(ChallengeAnswer::sign(&k, "", &c, &[2; 32], &origins(), &prefixes()).is_err());
        assert!(ChallengeAnswer::sign(&k, "k", &c, &[2; 32], &[], &prefixes()).is_err());
    }

    #[test]
    fn key_formats() {
        let der = generate_ed25519_pkcs8().unwrap();
        let pk = public_key_from_pkcs8(&der).unwrap();
        let pem = pkcs8_to_pem(&der);
        assert_eq!(
            Ed25519SigningKey::from_key_file(pem.as_bytes())
                .unwrap()
                .public_key(),
            pk
        );
        assert_eq!(
            Ed25519SigningKey::from_key_file(&der).unwrap().public_key(),
            pk
        );
        // RFC 8032 §7.1 test 1: seed -> public key.
        let seed = crate::encoding::unhex(
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        )
        .unwrap();
        let expected = crate::encoding::unhex(
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        )
        .unwrap();
        let raw = Ed25519SigningKey::from_key_file(&seed).unwrap();
        assert_eq!(raw.public_key().to_vec(), expected);
        let hex_text = Ed25519SigningKey::from_key_file(hex(&seed).as_bytes()).unwrap();
        assert_eq!(hex_text.public_key().to_vec(), expected);
        assert!(Ed25519SigningKey::from_key_file(b"nonsense").is_err());
        assert!(Ed25519SigningKey::from_key_file(
            b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
        )
        .is_err());
        assert!(!format!("{raw:?}").contains("9d61b1"));
    }

    #[test]
    fn openssl_pkcs8_v1_pem_is_read() {
        // `openssl genpkey -algorithm ed25519` output for the RFC 8032 test-1 seed.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n-----END PRIVATE KEY-----\n";
        let k = Ed25519SigningKey::from_key_file(pem.as_bytes()).unwrap();
        assert_eq!(
            hex(&k.public_key()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }
}
