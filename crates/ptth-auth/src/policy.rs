//! Authorisation: may the authenticated origin register the origins and prefixes it asks for?

use ptth_core::{Scope, SerializedOrigin};
use rustls::pki_types::CertificateDer;

use crate::cert::Leaf;
use crate::grant::{normalize_prefix, Grant, OriginPattern};

/// Why an authenticated origin may not have what it asked for: the gateway answers 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    /// Nothing was asked for.
    #[error("no origin was requested")]
    NoOrigins,
    /// No grant of this credential allows the origin.
    #[error("the credential may not register {0}")]
    Origin(SerializedOrigin),
    /// Grants allow the origin, but none of them the path prefix (with the other prefixes).
    #[error("the credential may not register path prefix {prefix:?} on {origin}")]
    PathPrefix {
        /// The origin.
        origin: SerializedOrigin,
        /// The requested prefix outside the grant.
        prefix: String,
    },
    /// A requested path prefix is not a usable prefix (no leading `/`, a dot segment).
    #[error("{0}")]
    BadPathPrefix(String),
    /// An ORIGIN frame entry that the client certificate does not cover.
    #[error("the client certificate does not cover ORIGIN entry {0:?}")]
    OriginEntry(String),
    /// An ORIGIN frame entry that is not an origin.
    #[error("invalid ORIGIN entry {entry:?}: {why}")]
    BadOriginEntry {
        /// The entry.
        entry: String,
        /// What is wrong with it.
        why: String,
    },
    /// The client certificate could not be read.
    #[error("{0}")]
    Certificate(String),
}

impl Forbidden {
    /// Always 403: the origin is authenticated but not allowed this.
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::FORBIDDEN
    }
}

/// Checks a requested set of origins and path prefixes against the grants an origin's
/// credentials proved, and returns the routing scopes (every origin × every prefix).
///
/// Each origin must be allowed by one grant that also covers every requested prefix; a
/// requested prefix is covered if it equals or lies under a granted prefix on a segment
/// boundary. Any miss rejects the whole set, naming the first origin or prefix outside.
pub fn authorize(
    grants: &[&Grant],
    origins: &[SerializedOrigin],
    path_prefixes: &[String],
) -> Result<Vec<Scope>, Forbidden> {
    if origins.is_empty() {
        return Err(Forbidden::NoOrigins);
    }
    let requested = path_prefixes
        .iter()
        .map(|p| normalize_prefix(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Forbidden::BadPathPrefix)?;
    if requested.is_empty() {
        return Err(Forbidden::BadPathPrefix(
            "no path prefix was requested".into(),
        ));
    }
    // draft-kazuho-ptth-ptth-01 §"Security Considerations": "the gateway MUST check that the
    // authenticated origin is allowed to register each requested origin".
    for origin in origins {
        let allowing: Vec<&&Grant> = grants.iter().filter(|g| g.allows_origin(origin)).collect();
        if allowing.is_empty() {
            return Err(Forbidden::Origin(origin.clone()));
        }
        let one_covers_all = allowing
            .iter()
            .any(|g| requested.iter().all(|p| g.covers_prefix(p)));
        if !one_covers_all {
            // Name a prefix no allowing grant covers, else (the prefixes are split across
            // grants) the first one the first allowing grant misses.
            let missing = requested
                .iter()
                .find(|p| !allowing.iter().any(|g| g.covers_prefix(p)))
                .or_else(|| requested.iter().find(|p| !allowing[0].covers_prefix(p)));
            return Err(Forbidden::PathPrefix {
                origin: origin.clone(),
                prefix: missing.cloned().unwrap_or_default(),
            });
        }
    }
    let mut scopes = Vec::with_capacity(origins.len() * requested.len());
    for origin in origins {
        for prefix in &requested {
            let scope = Scope::from_origin(origin, prefix)
                .map_err(|e| Forbidden::BadPathPrefix(format!("{origin}{prefix}: {e}")))?;
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

/// Checks every ORIGIN frame entry (`scheme://host[:port]`, wildcard `scheme://*.parent`
/// allowed) against the DNS and IP SANs of the client's leaf certificate.
///
/// A DNS entry needs a SAN that equals it or a `*.` SAN one label above it; a wildcard
/// entry needs the identical wildcard SAN; an IP literal needs an IP SAN. The subject CN
/// is not consulted (RFC 6125 §6.4.4 only falls back to it when there are no SANs, and
/// draft-bt certificates are modern ones).
pub fn check_origin_frame_against_cert<S: AsRef<str>>(
    entries: &[S],
    leaf: &CertificateDer<'_>,
) -> Result<(), Forbidden> {
    // draft-bt-httpbis-reverse-http §3: "The intermediary MUST check the ORIGIN entries
    // against the client certificate."
    let leaf = Leaf::parse(leaf).map_err(|e| Forbidden::Certificate(e.to_string()))?;
    for entry in entries {
        let entry = entry.as_ref();
        let bad = |why: String| Forbidden::BadOriginEntry {
            entry: entry.to_owned(),
            why,
        };
        let pattern: OriginPattern = entry.parse().map_err(|e| bad(format!("{e}")))?;
        let covered = match &pattern {
            OriginPattern::Any => return Err(bad("not an origin".into())),
            OriginPattern::Exact(o) => leaf.san_covers_host(o.host()),
            OriginPattern::Wildcard { parent, .. } => leaf.dns_sans.iter().any(|san| {
                san.strip_prefix("*.")
                    .is_some_and(|p| p.eq_ignore_ascii_case(parent))
            }),
        };
        if !covered {
            return Err(Forbidden::OriginEntry(entry.to_owned()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant::Identity;

    fn grant(origins: &[&str], paths: &[&str]) -> Grant {
        Grant {
            name: "g".into(),
            identity: Identity::CertSan("x.example".into()),
            origins: origins.iter().map(|o| o.parse().unwrap()).collect(),
            path_prefixes: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn origins(list: &[&str]) -> Vec<SerializedOrigin> {
        list.iter().map(|o| o.parse().unwrap()).collect()
    }

    fn prefixes(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn an_origin_outside_the_grant_rejects_the_whole_set() {
        let g = grant(&["https://app.example.com"], &["/"]);
        let r = authorize(
            &[&g],
            &origins(&["https://app.example.com", "https://evil.example.com"]),
            &prefixes(&["/"]),
        );
        assert_eq!(
            r,
            Err(Forbidden::Origin(
                "https://evil.example.com".parse().unwrap()
            ))
        );
        assert_eq!(r.unwrap_err().status(), http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn a_prefix_outside_the_grant_is_forbidden() {
        let g = grant(&["https://app.example.com"], &["/api"]);
        let o = origins(&["https://app.example.com"]);
        assert_eq!(
            authorize(&[&g], &o, &prefixes(&["/apix"])),
            Err(Forbidden::PathPrefix {
                origin: o[0].clone(),
                prefix: "/apix".into()
            })
        );
        assert!(matches!(
            authorize(&[&g], &o, &prefixes(&["/"])),
            Err(Forbidden::PathPrefix { .. })
        ));
        assert!(matches!(
            authorize(&[&g], &o, &prefixes(&["/api/../admin"])),
            Err(Forbidden::BadPathPrefix(_))
        ));
        let scopes = authorize(&[&g], &o, &prefixes(&["/api", "/api/v2/"])).unwrap();
        let shown: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        assert_eq!(shown, vec!["app.example.com/api", "app.example.com/api/v2"]);
    }

    #[test]
    fn one_grant_must_cover_all_prefixes_of_an_origin() {
        let a = grant(&["https://app.example.com"], &["/a"]);
        let b = grant(&["https://app.example.com"], &["/b"]);
        let o = origins(&["https://app.example.com"]);
        assert!(authorize(&[&a, &b], &o, &prefixes(&["/a"])).is_ok());
        assert!(matches!(
            authorize(&[&a, &b], &o, &prefixes(&["/a", "/b"])),
            Err(Forbidden::PathPrefix { prefix, .. }) if prefix == "/b"
        ));
    }

    #[test]
    fn different_origins_may_come_from_different_grants() {
        let a = grant(&["https://a.example"], &["/"]);
        let b = grant(&["https://*.b.example"], &["/"]);
        let scopes = authorize(
            &[&a, &b],
            &origins(&["https://a.example", "https://x.b.example:443"]),
            &prefixes(&["/"]),
        )
        .unwrap();
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[1].host(), "x.b.example");
        assert_eq!(scopes[1].port(), None);
    }

    #[test]
    fn nothing_requested_or_nothing_granted() {
        let a = grant(&["*"], &["/"]);
        assert_eq!(
            authorize(&[&a], &[], &prefixes(&["/"])),
            Err(Forbidden::NoOrigins)
        );
        assert!(authorize(&[], &origins(&["https://a.example"]), &prefixes(&["/"])).is_err());
        assert!(authorize(&[&a], &origins(&["https://a.example"]), &[]).is_err());
        assert!(authorize(&[&a], &origins(&["https://a.example"]), &prefixes(&["api"])).is_err());
    }

    #[test]
    fn origin_entries_against_sans() {
        use crate::testing::{ca, params, signed};
        let ca = ca();
        let leaf = signed(
            &ca,
            params(
                "cn.example.com",
                &[
                    "origin.example.com",
                    "*.edge.example.com",
                    "127.0.0.1",
                    "::1",
                ],
                true,
            ),
        )
        .der();
        let ok = |entries: &[&str]| check_origin_frame_against_cert(entries, &leaf);
        assert_eq!(ok(&["https://origin.example.com"]), Ok(()));
        assert_eq!(
            ok(&[
                "https://Origin.Example.com:8443",
                "https://a.edge.example.com"
            ]),
            Ok(())
        );
        assert_eq!(ok(&["https://*.edge.example.com"]), Ok(()));
        assert_eq!(ok(&["https://127.0.0.1", "https://[::1]:8443"]), Ok(()));
        assert_eq!(ok(&[]), Ok(()));
        for outside in [
            "https://cn.example.com",
            "https://edge.example.com",
            "https://a.b.edge.example.com",
            "https://*.example.com",
            "https://*.origin.example.com",
            "https://127.0.0.2",
            "https://evil.example.com",
        ] {
            assert_eq!(
                ok(&["https://origin.example.com", outside]),
                Err(Forbidden::OriginEntry(outside.to_string())),
                "{outside}"
            );
        }
        assert!(matches!(ok(&["*"]), Err(Forbidden::BadOriginEntry { .. })));
        assert!(matches!(
            ok(&["origin.example.com"]),
            Err(Forbidden::BadOriginEntry { .. })
        ));
        let wildcard_only = signed(&ca, params("x", &["*.edge.example.com"], true)).der();
        assert!(
            check_origin_frame_against_cert(&["https://x.edge.example.com"], &wildcard_only)
                .is_ok()
        );
        let garbage = CertificateDer::from(vec![0u8; 4]);
        assert!(matches!(
            check_origin_frame_against_cert(&["https://a.example"], &garbage),
            Err(Forbidden::Certificate(_))
        ));
    }
}
