//! What the authentication layer reads from a leaf certificate: names and key hash.
//!
//! The chain has already been verified (or the key pinned) by the TLS layer; this module only
//! extracts the subject CN, the DNS and IP SANs and the SHA-256 of the SubjectPublicKeyInfo.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use crate::names::dns_name_matches;

/// A certificate that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the certificate: {0}")]
#[non_exhaustive]
pub struct CertError(String);

/// The parts of a leaf certificate that identities and ORIGIN checks use.
#[derive(Debug, Clone)]
pub(crate) struct Leaf {
    pub(crate) common_names: Vec<String>,
    pub(crate) dns_sans: Vec<String>,
    pub(crate) ip_sans: Vec<IpAddr>,
    pub(crate) spki_sha256: [u8; 32],
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
}

impl Leaf {
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Result<Self, CertError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| CertError(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError("trailing bytes after the certificate".into()));
        }
        let common_names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .collect();
        let mut dns_sans = Vec::new();
        let mut ip_sans = Vec::new();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertError(format!("subjectAltName: {e}")))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_sans.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            ip_sans.push(IpAddr::V4(Ipv4Addr::from(v4)));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            ip_sans.push(IpAddr::V6(Ipv6Addr::from(v6)));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            common_names,
            dns_sans,
            ip_sans,
            spki_sha256: Sha256::digest(cert.public_key().raw).into(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Whether one of the DNS SANs covers `host` (a DNS name or IP literal; IPv6 in
    /// brackets). A `*.` SAN covers exactly one label (RFC 6125 §6.4.3).
    pub(crate) fn san_covers_host(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host);
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        if let Ok(ip) = ip {
            return self.ip_sans.contains(&ip);
        }
        self.dns_sans.iter().any(|san| dns_name_matches(san, host))
    }
}

/// The names a leaf certificate's subjectAltName carries, as hosts: DNS names in lowercase
/// (a wildcard stays `*.parent`), IP addresses as literals (IPv6 in brackets), in
/// certificate order, without duplicates. The subject CN is not read: RFC 6125 §6.4.4 falls
/// back to it only when there are no SANs, and such certificates are not used here.
///
/// The certificate is one the TLS layer already verified (or whose key is pinned); this
/// only reads it.
pub fn certificate_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, CertError> {
    let leaf = Leaf::parse(leaf)?;
    let mut names: Vec<String> = Vec::with_capacity(leaf.dns_sans.len() + leaf.ip_sans.len());
    let dns = leaf.dns_sans.into_iter();
    let ips = leaf.ip_sans.iter().map(|ip| match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    });
    for name in dns.chain(ips) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo DER: the pin of a self-signed
/// certificate (`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`).
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], CertError> {
    Leaf::parse(cert).map(|l| l.spki_sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_are_the_sans() {
        use crate::testing::{ca, params, signed};
        let ca = ca();
        let leaf = signed(
            &ca,
            params(
                "cn.example.com",
                &[
                    "App.Example.com",
                    "*.edge.example.com",
                    "127.0.0.1",
                    "::1",
                    "app.example.com",
                ],
                true,
            ),
        )
        .der();
        assert_eq!(
            certificate_names(&leaf).unwrap(),
            vec![
                "app.example.com",
                "*.edge.example.com",
                "127.0.0.1",
                "[::1]"
            ]
        );
        assert!(certificate_names(&CertificateDer::from(vec![0u8; 4])).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(spki_sha256(&CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])).is_err());
        assert!(spki_sha256(&CertificateDer::from(Vec::new())).is_err());
    }
}
