//! rustls certificate verifiers: the gateway's for origins' client certificates, the
//! origin's for the gateway.
//!
//! draft-thomson-ptth-potato §5.1 names three ways to trust an origin's client certificate:
//! "the same WebPKI as the gateway's own certificate, a separate PKI (possibly run by the
//! gateway), or self-signed certificates mapped to authorisations". [`client_verifier`]
//! accepts all three at once: chains to the private CA or the WebPKI roots, and self-signed
//! certificates whose SubjectPublicKeyInfo hash is pinned. In every case the handshake
//! signature is verified with the leaf's key, so presenting a pinned certificate without
//! its private key fails.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use crate::cert::Leaf;
use crate::encoding::hex;

/// Why a verifier could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// No CA, no WebPKI roots and no pins: no certificate could ever be accepted.
    #[error("no trust anchors: give a client CA, enable WebPKI roots, or pin a key")]
    NoTrustAnchors,
    /// rustls refused the configuration.
    #[error("building the certificate verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The gateway's verifier of origins' client certificates.
///
/// - `roots`: a private CA (or several) whose chains are accepted;
/// - `pinned_spki`: SHA-256 hashes of SubjectPublicKeyInfo DER whose certificates are
///   accepted whatever their issuer (self-signed origins; pass
///   [`Grants::pinned_spki`](crate::Grants::pinned_spki)). Their validity period is
///   still checked;
/// - `webpki`: also accept chains to the WebPKI roots (`webpki-roots`);
/// - `mandatory`: refuse the handshake when the client sends no certificate. Without it a
///   client may go on without one and authenticate otherwise (a token).
///
/// draft-bt-httpbis-reverse-http §3: the intermediary "MUST send a TLS CertificateRequest"
/// and the origin "MUST present a valid chain": this verifier always offers client auth.
pub fn client_verifier(
    roots: Option<RootCertStore>,
    pinned_spki: Vec<[u8; 32]>,
    webpki: bool,
    mandatory: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut store = roots.unwrap_or_else(RootCertStore::empty);
    if webpki {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let provider = provider();
    let chain = if store.is_empty() {
        None
    } else {
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                .allow_unauthenticated();
        Some(
            builder
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?,
        )
    };
    if chain.is_none() && pinned_spki.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    Ok(Arc::new(OriginCertVerifier {
        chain,
        pins: pinned_spki,
        mandatory,
        algorithms: provider.signature_verification_algorithms,
    }))
}

#[derive(Debug)]
struct OriginCertVerifier {
    chain: Option<Arc<dyn ClientCertVerifier>>,
    pins: Vec<[u8; 32]>,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Checks the validity period of a pinned certificate (a chain's is checked by webpki).
fn check_validity(leaf: &Leaf, now: UnixTime) -> Result<(), rustls::Error> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now < leaf.not_before {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > leaf.not_after {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

impl ClientCertVerifier for OriginCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.chain {
            Some(chain) => chain.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !self.pins.is_empty() {
            let leaf = Leaf::parse(end_entity)
                .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
            if self.pins.contains(&leaf.spki_sha256) {
                check_validity(&leaf, now)?;
                return Ok(ClientCertVerified::assertion());
            }
        }
        match &self.chain {
            Some(chain) => chain.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The origin's verifier of the gateway: WebPKI or private-CA chain verification with the
/// server name, and, when `pinned_spki` is set, the leaf's SubjectPublicKeyInfo must hash to
/// it as well.
///
/// draft-thomson-ptth-potato §6: the origin "MUST authenticate the gateway" with the usual
/// certificate rules, and an origin that cannot establish the gateway as authoritative
/// "MUST NOT" answer its requests.
pub fn gateway_verifier(
    roots: RootCertStore,
    pinned_spki: Option<[u8; 32]>,
) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoTrustAnchors);
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(Arc::new(GatewayCertVerifier { inner, pinned_spki }))
}

#[derive(Debug)]
struct GatewayCertVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pinned_spki: Option<[u8; 32]>,
}

impl ServerCertVerifier for GatewayCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(pin) = self.pinned_spki {
            check_gateway_pin(end_entity, pin)?;
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The gateway's leaf certificate does not hash to the pin the origin was given: the
/// certificate error the origin's verifiers return (wrapped in
/// `CertificateError::Other`), so the origin's log says why it refused the gateway.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("the gateway's certificate key does not match --gateway-pin (its SPKI SHA-256 is {presented}, the pin is {pinned})")]
#[non_exhaustive]
pub struct GatewayPinMismatch {
    /// Hex SHA-256 of the SubjectPublicKeyInfo the gateway presented.
    pub presented: String,
    /// Hex SHA-256 the origin pinned.
    pub pinned: String,
}

// rustls prints a certificate error's `Other` cause with `Debug`: make that the sentence.
impl std::fmt::Debug for GatewayPinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// What an origin should add to a failed TLS or QUIC handshake with the gateway, given the
/// error's text (`{:#}`, which carries the certificate error's sentence): a pin mismatch
/// ([`GatewayPinMismatch`]) is named as such, anything else points at the trust anchors.
pub fn gateway_handshake_hint(error_text: &str) -> &'static str {
    if error_text.contains(PIN_MISMATCH_SENTENCE) {
        "pin mismatch: the gateway presented a key other than the one --gateway-pin names (its SPKI SHA-256 is in the error); pin the gateway's current key, see docs/troubleshooting.md"
    } else {
        "is the gateway's certificate trusted? see --ca"
    }
}

/// The part of [`GatewayPinMismatch`]'s sentence [`gateway_handshake_hint`] looks for.
const PIN_MISMATCH_SENTENCE: &str = "does not match --gateway-pin";

/// The leaf's SubjectPublicKeyInfo must hash to `pin`. The handshake signature, which the
/// verifiers check with this same leaf's key, then proves the gateway holds the pinned key.
fn check_gateway_pin(end_entity: &CertificateDer<'_>, pin: [u8; 32]) -> Result<(), rustls::Error> {
    let leaf = Leaf::parse(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if leaf.spki_sha256 != pin {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(GatewayPinMismatch {
                presented: hex(&leaf.spki_sha256),
                pinned: hex(&pin),
            })),
        )));
    }
    Ok(())
}

/// Accepts any gateway certificate without checking chain, name or dates: for tests and
/// private arrangements only (Potato §6 allows skipping gateway authentication only "if
/// there is a private arrangement"). The handshake signature is still verified with the
/// presented key.
pub fn danger_accept_any_gateway() -> Arc<dyn ServerCertVerifier> {
    Arc::new(DangerAcceptAnyGateway {
        algorithms: provider().signature_verification_algorithms,
        pinned_spki: None,
    })
}

/// Accepts any chain, name and dates, but the leaf's SubjectPublicKeyInfo must hash to
/// `pin`: what an origin with `--gateway-pin` and `--danger-accept-any-gateway` uses. A pin
/// always holds; accepting any gateway only drops the checks the pin makes redundant
/// (the handshake signature still proves the gateway holds the pinned key).
pub fn pinned_gateway_verifier(pin: [u8; 32]) -> Arc<dyn ServerCertVerifier> {
    Arc::new(DangerAcceptAnyGateway {
        algorithms: provider().signature_verification_algorithms,
        pinned_spki: Some(pin),
    })
}

#[derive(Debug)]
struct DangerAcceptAnyGateway {
    algorithms: WebPkiSupportedAlgorithms,
    pinned_spki: Option<[u8; 32]>,
}

impl ServerCertVerifier for DangerAcceptAnyGateway {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = self.pinned_spki {
            check_gateway_pin(end_entity, pin)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;

    struct Pki {
        ca: Issued,
        gateway: Issued,
    }

    fn pki() -> Pki {
        let ca = ca();
        let gateway = signed(&ca, params("gateway", &["gateway.test"], false));
        Pki { ca, gateway }
    }

    fn connect(
        verifier: Arc<dyn ClientCertVerifier>,
        pki: &Pki,
        client: Option<&Issued>,
    ) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
        handshake(
            client_config(danger_accept_any_gateway(), client),
            server_config(verifier, &pki.gateway),
        )
    }

    fn expired(p: &mut rcgen::CertificateParams) {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }

    #[test]
    fn accepts_a_ca_signed_client_certificate() {
        let pki = pki();
        let origin = signed(&pki.ca, params("origin", &["origin.example.com"], true));
        let v = client_verifier(Some(roots(&pki.ca)), vec![], false, true).unwrap();
        let (_, s) = connect(v, &pki, Some(&origin)).unwrap();
        assert_eq!(s.peer_certificates().unwrap()[0], origin.der());
    }

    #[test]
    fn accepts_a_pinned_self_signed_certificate_and_rejects_an_unpinned_one() {
        let pki = pki();
        let pinned = self_signed(params("pinned", &["p.example.com"], true));
        let other = self_signed(params("other", &["p.example.com"], true));
        let pin = crate::spki_sha256(&pinned.der()).unwrap();
        // Pins alone, and pins beside a CA.
        for roots in [None, Some(roots(&pki.ca))] {
            let v = client_verifier(roots, vec![pin], false, true).unwrap();
            let (_, s) = connect(v.clone(), &pki, Some(&pinned)).unwrap();
            assert_eq!(s.peer_certificates().unwrap()[0], pinned.der());
            let e = connect(v, &pki, Some(&other)).unwrap_err();
            assert!(
                matches!(
                    e,
                    rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
                ),
                "{e:?}"
            );
        }
    }

    #[test]
    fn rejects_expired_certificates() {
        let pki = pki();
        let mut p = params("origin", &["origin.example.com"], true);
        expired(&mut p);
        let old = signed(&pki.ca, p);
        let v = client_verifier(Some(roots(&pki.ca)), vec![], false, true).unwrap();
        let e = connect(v, &pki, Some(&old)).unwrap_err();
        assert!(
            matches!(
                e,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{e:?}"
        );
        // A pin does not make an expired certificate valid.
        let mut p = params("pinned", &[], true);
        expired(&mut p);
        let old_pinned = self_signed(p);
        let pin = crate::spki_sha256(&old_pinned.der()).unwrap();
        let v = client_verifier(None, vec![pin], false, true).unwrap();
        let e = connect(v, &pki, Some(&old_pinned)).unwrap_err();
        assert_eq!(
            e,
            rustls::Error::InvalidCertificate(CertificateError::Expired)
        );
    }

    #[test]
    fn optional_versus_mandatory() {
        let pki = pki();
        let optional = client_verifier(Some(roots(&pki.ca)), vec![], false, false).unwrap();
        let (_, s) = connect(optional, &pki, None).unwrap();
        assert!(s.peer_certificates().is_none());
        let mandatory = client_verifier(Some(roots(&pki.ca)), vec![], false, true).unwrap();
        assert!(connect(mandatory, &pki, None).is_err());
    }

    #[test]
    fn webpki_roots_and_no_anchors() {
        assert!(matches!(
            client_verifier(None, vec![], false, true),
            Err(TlsError::NoTrustAnchors)
        ));
        let pki = pki();
        let v = client_verifier(None, vec![], true, true).unwrap();
        assert!(!v.root_hint_subjects().is_empty());
        let origin = signed(&pki.ca, params("origin", &[], true));
        assert!(connect(v, &pki, Some(&origin)).is_err());
    }

    #[test]
    fn the_origin_verifies_the_gateway_and_its_pin() {
        let pki = pki();
        let server = || {
            server_config(
                client_verifier(Some(roots(&pki.ca)), vec![], false, false).unwrap(),
                &pki.gateway,
            )
        };
        let pin = crate::spki_sha256(&pki.gateway.der()).unwrap();
        for p in [None, Some(pin)] {
            let v = gateway_verifier(roots(&pki.ca), p).unwrap();
            assert!(handshake(client_config(v, None), server()).is_ok());
        }
        let v = gateway_verifier(roots(&pki.ca), Some([9; 32])).unwrap();
        let e = handshake(client_config(v, None), server()).unwrap_err();
        assert!(
            e.to_string().contains("does not match --gateway-pin"),
            "{e}"
        );
        // Another CA's roots: refused; danger_accept_any_gateway: accepted.
        let v = gateway_verifier(roots(&ca()), None).unwrap();
        assert!(handshake(client_config(v, None), server()).is_err());
        assert!(handshake(client_config(danger_accept_any_gateway(), None), server()).is_ok());
        assert!(gateway_verifier(RootCertStore::empty(), None).is_err());
    }

    #[test]
    fn a_pin_holds_even_when_any_gateway_is_accepted() {
        let pki = pki();
        let server = |gateway: &Issued| {
            server_config(
                client_verifier(Some(roots(&pki.ca)), vec![], false, false).unwrap(),
                gateway,
            )
        };
        // A self-signed gateway no CA vouches for: only the pin can accept it.
        let stranger = self_signed(params("stranger", &["other.test"], false));
        let pin = crate::spki_sha256(&stranger.der()).unwrap();
        let gateway_pin = crate::spki_sha256(&pki.gateway.der()).unwrap();

        // The right pin: accepted whatever the chain and name.
        let ok = handshake(
            client_config(pinned_gateway_verifier(pin), None),
            server(&stranger),
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert!(handshake(
            client_config(pinned_gateway_verifier(gateway_pin), None),
            server(&pki.gateway)
        )
        .is_ok());

        // A wrong pin: refused, and the error says it was the pin.
        let e = handshake(
            client_config(pinned_gateway_verifier(gateway_pin), None),
            server(&stranger),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("does not match --gateway-pin"), "{text}");
        assert!(
            text.contains(&hex(&pin)) && text.contains(&hex(&gateway_pin)),
            "{text}"
        );

        // Without a pin, accept-any takes the stranger (the twin of the refusal above).
        assert!(handshake(
            client_config(danger_accept_any_gateway(), None),
            server(&stranger)
        )
        .is_ok());
    }

    #[test]
    fn both_ends_compute_the_same_exporter_and_connections_differ() {
        let pki = pki();
        let v = client_verifier(Some(roots(&pki.ca)), vec![], false, false).unwrap();
        let (c1, s1) = connect(v.clone(), &pki, None).unwrap();
        let (c2, _) = connect(v, &pki, None).unwrap();
        let e1 = crate::exporter_value(&c1).unwrap();
        assert_eq!(e1, crate::exporter_value(&s1).unwrap());
        let e2 = crate::exporter_value(&c2).unwrap();
        assert_ne!(e1, e2);

        // The origin signs with its end's exporter; the gateway verifies with its own. An
        // answer moved to another connection fails.
        let key = crate::Ed25519SigningKey::from_seed(&[1; 32]).unwrap();
        let challenge = crate::Challenge::new([2; 32]);
        let origins = vec!["https://a.example".parse().unwrap()];
        let answer = crate::ChallengeAnswer::sign(
            &key,
            "k",
            &challenge,
            &crate::exporter_value(&c1).unwrap(),
            &origins,
            &["/".to_string()],
        )
        .unwrap();
        let gateway_side = crate::exporter_value(&s1).unwrap();
        assert_eq!(
            answer.verify(&challenge, &gateway_side, &key.public_key()),
            Ok(())
        );
        assert!(answer.verify(&challenge, &e2, &key.public_key()).is_err());
    }
}

#[cfg(test)]
mod hint_tests {
    use super::*;

    #[test]
    fn a_pin_mismatch_is_named_and_other_failures_point_at_the_ca() {
        let mismatch = rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(GatewayPinMismatch {
                presented: "ab".repeat(32),
                pinned: "cd".repeat(32),
            })),
        ));
        // As the origin sees it: an I/O error from tokio-rustls around the rustls error.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, mismatch);
        let hint = gateway_handshake_hint(&format!("{io:#}"));
        assert!(hint.starts_with("pin mismatch"), "{hint}");
        let unknown = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            gateway_handshake_hint(&format!("{unknown:#}")),
            "is the gateway's certificate trusted? see --ca"
        );
    }
}
