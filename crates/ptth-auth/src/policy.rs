//! Authorisation: may the authenticated origin register the origins and prefixes it asks for?

use ptth_core::{Scope, SerializedOrigin};
use rustls::pki_types::CertificateDer;

use crate::cert::Leaf;
use crate::error::{Forbidden, MAX_CERTIFICATE_NAMES};
use crate::grant::{normalize_prefix, Grant, Grants, OriginPattern};
use crate::names::{one_label_under, strip_root};

/// The most origins one connection may register (a setup request, an authorisation
/// answer, a certificate).
pub const MAX_ORIGINS_PER_CONNECTION: usize = 64;

/// The most path prefixes one connection may register. With
/// [`MAX_ORIGINS_PER_CONNECTION`], a connection has at most 64 × 16 = 1 024 scopes.
pub const MAX_PREFIXES_PER_CONNECTION: usize = 16;

/// Checks a requested set of origins and path prefixes against the grants an origin's
/// credentials proved (`matched`, out of all the gateway's `grants`), and returns the
/// routing scopes (every origin × every prefix).
///
/// At most [`MAX_ORIGINS_PER_CONNECTION`] origins and [`MAX_PREFIXES_PER_CONNECTION`]
/// prefixes, checked before anything else. Each origin must be allowed by one grant that
/// also covers every requested prefix; a requested prefix is covered if it equals or lies
/// under a granted prefix on a segment boundary. A host that any grant names exactly may
/// be registered only through a grant that names it exactly: wildcard and `*` grants cover
/// the other hosts. A wildcard origin (`https://*.parent`) is allowed by a `*` grant or a
/// wildcard grant of the same parent, and by neither when a grant names a host one label
/// under that parent exactly. Any miss rejects the whole set, naming the first origin or
/// prefix outside.
pub fn authorize(
    grants: &Grants,
    matched: &[&Grant],
    origins: &[SerializedOrigin],
    path_prefixes: &[String],
) -> Result<Vec<Scope>, Forbidden> {
    check_claim_size(origins.len(), path_prefixes.len())?;
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
        // A wildcard claim (`https://*.parent`) covers every host one label under its
        // parent, so it may not come through a wildcard or `*` grant when any of those hosts
        // is named exactly (the same rule as a wildcard certificate name below); exact
        // grants never allow it (they name one host).
        let named = match origin.host().strip_prefix("*.") {
            Some(parent) => grants.names_host_under(parent),
            None => grants.names_host(origin.host()),
        };
        let allowing: Vec<&&Grant> = matched
            .iter()
            .filter(|g| {
                if named {
                    g.names_origin(origin)
                } else {
                    g.allows_origin(origin)
                }
            })
            .collect();
        if allowing.is_empty() {
            if named && matched.iter().any(|g| g.allows_origin(origin)) {
                return Err(Forbidden::NamedElsewhere(origin.clone()));
            }
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

/// The scopes of an origin that authenticated with its client certificate alone and claimed
/// none (it answered the authorisation request with 404, or 200 without `ptth-origins`).
///
/// draft-thomson-ptth-potato §5: "a client certificate ... can be used to authenticate the
/// origin", and the scope of the authorisation follows from that credential. Each name the
/// certificate carries ([`certificate_names`](crate::certificate_names): DNS SANs, `*.parent`
/// wildcards, IP SANs) is intersected with the origins of every grant the certificate
/// matched: a grant for `*` gives `https://name`; an exact grant origin is kept when the
/// name is its host (or a wildcard name one label above it); a wildcard grant keeps an exact
/// name one label under it, and a wildcard name with the same parent as a wildcard scope.
/// The path prefixes are those of the grant that allowed the name (`/` unless the operator
/// narrowed the grant). Nothing allowed is [`Forbidden::NoCertificateOrigin`].
///
/// Exact names win over wildcards here as in [`authorize`]: a name only a wildcard or `*`
/// grant allows is skipped when a grant in `all` names that host exactly, and a wildcard
/// name (`*.parent`) through such a grant is skipped when any host under it is named
/// exactly, since its scope would route that host whenever its own origin is away.
pub fn scopes_from_certificate(
    all: &Grants,
    grants: &[&Grant],
    names: &[String],
) -> Result<Vec<Scope>, Forbidden> {
    if names.len() > MAX_CERTIFICATE_NAMES {
        return Err(Forbidden::TooManyCertificateNames(names.len()));
    }
    let mut scopes: Vec<Scope> = Vec::new();
    for name in names {
        for grant in grants {
            for pattern in &grant.origins {
                let named_elsewhere = !matches!(pattern, OriginPattern::Exact(_))
                    && match name.strip_prefix("*.") {
                        Some(parent) => all.names_host_under(parent),
                        None => all.names_host(name),
                    };
                if named_elsewhere {
                    continue;
                }
                for prefix in &grant.path_prefixes {
                    if let Some(scope) = certificate_scope(name, pattern, prefix) {
                        if !scopes.contains(&scope) {
                            scopes.push(scope);
                        }
                    }
                }
            }
        }
    }
    if scopes.is_empty() {
        return Err(Forbidden::NoCertificateOrigin(names.join(", ")));
    }
    Ok(scopes)
}

/// One certificate name within one grant origin pattern, under `prefix`: the scope both
/// allow, if any.
fn certificate_scope(name: &str, pattern: &OriginPattern, prefix: &str) -> Option<Scope> {
    // `scheme://host:port` as a scope authority: the scheme's default port routes on host
    // alone, as `Scope::from_origin` does.
    let authority = |host: &str, scheme: &str, port: u16| {
        if ptth_core::default_port(scheme) == Some(port) {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        }
    };
    match (name.strip_prefix("*."), pattern) {
        (None, OriginPattern::Any) => Scope::new(name, prefix).ok(),
        (Some(parent), OriginPattern::Any) => Scope::wildcard(parent, prefix).ok(),
        (None, OriginPattern::Exact(o)) => strip_root(o.host())
            .eq_ignore_ascii_case(name)
            .then(|| Scope::from_origin(o, prefix).ok())
            .flatten(),
        (Some(parent), OriginPattern::Exact(o)) => one_label_under(strip_root(o.host()), parent)
            .then(|| Scope::from_origin(o, prefix).ok())
            .flatten(),
        (
            None,
            OriginPattern::Wildcard {
                scheme,
                parent,
                port,
            },
        ) => (name.parse::<std::net::Ipv4Addr>().is_err()
            && !name.starts_with('[')
            && one_label_under(name, parent))
        .then(|| {
            format!("{scheme}://{}", authority(name, scheme, *port))
                .parse::<SerializedOrigin>()
                .ok()
                .and_then(|o| Scope::from_origin(&o, prefix).ok())
        })
        .flatten(),
        (
            Some(name_parent),
            OriginPattern::Wildcard {
                scheme,
                parent,
                port,
            },
        ) => name_parent
            .eq_ignore_ascii_case(parent)
            .then(|| Scope::wildcard(&authority(parent, scheme, *port), prefix).ok())
            .flatten(),
    }
}

/// Refuses a claim of more origins or path prefixes than one connection may register.
/// Cheap: callers that count before parsing call it first.
pub fn check_claim_size(origins: usize, path_prefixes: usize) -> Result<(), Forbidden> {
    if origins > MAX_ORIGINS_PER_CONNECTION {
        return Err(Forbidden::TooMany {
            what: "origins",
            limit: MAX_ORIGINS_PER_CONNECTION,
            claimed: origins,
        });
    }
    if path_prefixes > MAX_PREFIXES_PER_CONNECTION {
        return Err(Forbidden::TooMany {
            what: "path prefixes",
            limit: MAX_PREFIXES_PER_CONNECTION,
            claimed: path_prefixes,
        });
    }
    Ok(())
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
            services: Vec::new(),
        }
    }

    /// `authorize` with `matched` as every grant the gateway has.
    fn auth(
        matched: &[&Grant],
        origins: &[SerializedOrigin],
        prefixes: &[String],
    ) -> Result<Vec<Scope>, Forbidden> {
        let all = Grants::new(
            matched
                .iter()
                .enumerate()
                .map(|(i, g)| Grant {
                    name: format!("g{i}"),
                    ..(*g).clone()
                })
                .collect(),
        )
        .unwrap();
        authorize(&all, matched, origins, prefixes)
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
        let r = auth(
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
            auth(&[&g], &o, &prefixes(&["/apix"])),
            Err(Forbidden::PathPrefix {
                origin: o[0].clone(),
                prefix: "/apix".into()
            })
        );
        assert!(matches!(
            auth(&[&g], &o, &prefixes(&["/"])),
            Err(Forbidden::PathPrefix { .. })
        ));
        assert!(matches!(
            auth(&[&g], &o, &prefixes(&["/api/../admin"])),
            Err(Forbidden::BadPathPrefix(_))
        ));
        let scopes = auth(&[&g], &o, &prefixes(&["/api", "/api/v2/"])).unwrap();
        let shown: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "https://app.example.com/api",
                "https://app.example.com/api/v2"
            ]
        );
    }

    #[test]
    fn one_grant_must_cover_all_prefixes_of_an_origin() {
        let a = grant(&["https://app.example.com"], &["/a"]);
        let b = grant(&["https://app.example.com"], &["/b"]);
        let o = origins(&["https://app.example.com"]);
        assert!(auth(&[&a, &b], &o, &prefixes(&["/a"])).is_ok());
        assert!(matches!(
            auth(&[&a, &b], &o, &prefixes(&["/a", "/b"])),
            Err(Forbidden::PathPrefix { prefix, .. }) if prefix == "/b"
        ));
    }

    #[test]
    fn different_origins_may_come_from_different_grants() {
        let a = grant(&["https://a.example"], &["/"]);
        let b = grant(&["https://*.b.example"], &["/"]);
        let scopes = auth(
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
    fn a_wildcard_claim_needs_a_wildcard_or_any_grant_and_no_exact_name_under_it() {
        let claim = origins(&["https://*.apps.example"]);
        let root = prefixes(&["/"]);
        // `*` and a wildcard grant of the same parent allow it, as a wildcard scope.
        let any = grant(&["*"], &["/"]);
        let scopes = auth(&[&any], &claim, &root).unwrap();
        assert_eq!(scopes.len(), 1);
        assert!(scopes[0].is_wildcard());
        assert_eq!(scopes[0].to_string(), "https://*.apps.example/");
        let wild = grant(&["https://*.apps.example"], &["/"]);
        assert!(auth(&[&wild], &claim, &root).unwrap()[0].is_wildcard());
        // Another parent, a deeper wildcard, another port or an exact grant do not.
        let other = grant(&["https://*.example"], &["/"]);
        assert_eq!(
            auth(&[&other], &claim, &root),
            Err(Forbidden::Origin(claim[0].clone()))
        );
        let deeper = origins(&["https://*.a.apps.example"]);
        assert!(auth(&[&wild], &deeper, &root).is_err());
        let ported = origins(&["https://*.apps.example:8443"]);
        assert!(auth(&[&wild], &ported, &root).is_err());
        let exact = grant(&["https://a.apps.example"], &["/"]);
        assert!(auth(&[&exact], &claim, &root).is_err());
        // A host under it that a grant names exactly keeps the wildcard out of `*` grants:
        // its scope would route that host whenever the exact origin is away.
        assert_eq!(
            auth(&[&any, &exact], &claim, &root),
            Err(Forbidden::NamedElsewhere(claim[0].clone()))
        );
        assert_eq!(
            auth(&[&wild, &exact], &claim, &root),
            Err(Forbidden::NamedElsewhere(claim[0].clone()))
        );
        // A name deeper down does not overlap the one-label wildcard.
        let deep_exact = grant(&["https://x.a.apps.example"], &["/"]);
        assert!(auth(&[&any, &deep_exact], &claim, &root).is_ok());
    }

    #[test]
    fn nothing_requested_or_nothing_granted() {
        let a = grant(&["*"], &["/"]);
        assert_eq!(
            auth(&[&a], &[], &prefixes(&["/"])),
            Err(Forbidden::NoOrigins)
        );
        assert!(auth(&[], &origins(&["https://a.example"]), &prefixes(&["/"])).is_err());
        assert!(auth(&[&a], &origins(&["https://a.example"]), &[]).is_err());
        assert!(auth(&[&a], &origins(&["https://a.example"]), &prefixes(&["api"])).is_err());
    }

    #[test]
    fn claims_over_the_limits_are_refused_before_anything_else() {
        let any = grant(&["*"], &["/"]);
        let many: Vec<String> = (0..100).map(|i| format!("https://h{i}.example")).collect();
        let many = origins(&many.iter().map(String::as_str).collect::<Vec<_>>());
        let e = auth(&[&any], &many, &prefixes(&["/"])).unwrap_err();
        assert_eq!(
            e,
            Forbidden::TooMany {
                what: "origins",
                limit: 64,
                claimed: 100
            }
        );
        assert_eq!(
            e.to_string(),
            "at most 64 origins per connection; 100 were claimed"
        );
        // Refused before the prefixes are even read (this one is malformed).
        assert!(matches!(
            auth(&[&any], &many, &prefixes(&["no-slash"])),
            Err(Forbidden::TooMany { .. })
        ));
        let p: Vec<String> = (0..17).map(|i| format!("/p{i}")).collect();
        let one = origins(&["https://a.example"]);
        assert_eq!(
            auth(&[&any], &one, &p).unwrap_err().to_string(),
            "at most 16 path prefixes per connection; 17 were claimed"
        );
        // At the limits: 64 x 16 = 1 024 scopes.
        let at: Vec<SerializedOrigin> = many[..64].to_vec();
        assert_eq!(auth(&[&any], &at, &p[..16]).unwrap().len(), 1024);
    }

    #[test]
    fn exact_names_win_over_wildcards_and_any() {
        let exact = Grant {
            name: "exact".into(),
            ..grant(&["https://app.example.com"], &["/"])
        };
        let wild = Grant {
            name: "wild".into(),
            ..grant(&["https://*.example.com"], &["/"])
        };
        let any = Grant {
            name: "any".into(),
            ..grant(&["*"], &["/"])
        };
        let all = Grants::new(vec![exact.clone(), wild.clone(), any.clone()]).unwrap();
        let app = origins(&["https://app.example.com"]);
        let deep = prefixes(&["/admin/longer"]);
        for g in [&wild, &any] {
            let e = authorize(&all, &[g], &app, &deep).unwrap_err();
            assert_eq!(e, Forbidden::NamedElsewhere(app[0].clone()), "{}", g.name);
            assert!(e.to_string().contains("named exactly"), "{e}");
            // Any scheme or port of that host: the host is what is named.
            for o in ["http://app.example.com", "https://app.example.com:8443"] {
                assert!(authorize(&all, &[g], &origins(&[o]), &deep).is_err(), "{o}");
            }
            // Positive twin: the same grant still covers hosts nobody names exactly.
            let other = origins(&["https://other.example.com"]);
            assert!(authorize(&all, &[g], &other, &deep).is_ok(), "{}", g.name);
        }
        assert!(authorize(&all, &[&exact], &app, &deep).is_ok());
        let e = authorize(
            &all,
            &[&any],
            &origins(&["http://app.example.com:81"]),
            &deep,
        );
        assert!(matches!(e, Err(Forbidden::NamedElsewhere(_))), "{e:?}");
        // Proving both an exact and a wildcard grant: the exact one covers it.
        assert!(authorize(&all, &[&wild, &exact], &app, &deep).is_ok());
        // Without the exact grant in force, the wildcard covers the host again.
        let without = Grants::new(vec![wild.clone(), any.clone()]).unwrap();
        assert!(authorize(&without, &[&wild], &app, &deep).is_ok());
        assert!(all.names_host("App.Example.com.") || all.names_host("app.example.com."));
    }

    fn shown(scopes: &[Scope]) -> Vec<String> {
        scopes.iter().map(Scope::to_string).collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn certificate_names_become_scopes_narrowed_by_the_grants() {
        let dev_like = grant(&["https://*.localhost"], &["/"]);
        let cert = names(&["localhost", "*.localhost"]);
        // `localhost` is not one label under `localhost`: only the wildcard survives.
        let scopes = scopes_from_certificate(&Grants::default(), &[&dev_like], &cert).unwrap();
        assert_eq!(shown(&scopes), vec!["https://*.localhost/"]);
        assert!(scopes[0].is_wildcard());

        let any = grant(&["*"], &["/"]);
        let scopes = scopes_from_certificate(
            &Grants::default(),
            &[&any],
            &names(&["a.example", "*.b.example", "127.0.0.1"]),
        )
        .unwrap();
        assert_eq!(
            shown(&scopes),
            vec![
                "https://a.example/",
                "https://*.b.example/",
                "https://127.0.0.1/"
            ]
        );

        // An exact grant narrows a wildcard name to the one host, with the grant's port.
        let exact = grant(
            &["https://app.example:8443", "https://other.example"],
            &["/api"],
        );
        let scopes =
            scopes_from_certificate(&Grants::default(), &[&exact], &names(&["*.example"])).unwrap();
        assert_eq!(
            shown(&scopes),
            vec!["https://app.example:8443/api", "https://other.example/api"]
        );

        // A wildcard grant keeps exact names one label under it, on its port.
        let wild = grant(&["https://*.example:8443"], &["/"]);
        let scopes = scopes_from_certificate(
            &Grants::default(),
            &[&wild],
            &names(&["a.example", "a.b.example", "example"]),
        )
        .unwrap();
        assert_eq!(shown(&scopes), vec!["https://a.example:8443/"]);

        // Several grants: the union, without duplicates.
        let scopes =
            scopes_from_certificate(&Grants::default(), &[&dev_like, &any], &cert).unwrap();
        assert_eq!(
            shown(&scopes),
            vec!["https://localhost/", "https://*.localhost/"]
        );
    }

    #[test]
    fn a_certificate_no_grant_allows_is_refused() {
        let g = grant(
            &["https://app.example.com", "https://*.example.com"],
            &["/"],
        );
        for cert in [
            names(&["evil.example.org", "*.evil.example.org"]),
            names(&["example.com", "a.b.example.com", "*.b.example.com"]),
            names(&["127.0.0.1"]),
            Vec::new(),
        ] {
            let r = scopes_from_certificate(&Grants::default(), &[&g], &cert);
            assert_eq!(
                r,
                Err(Forbidden::NoCertificateOrigin(cert.join(", "))),
                "{cert:?}"
            );
        }
        assert!(
            scopes_from_certificate(&Grants::default(), &[], &names(&["app.example.com"])).is_err()
        );
        assert!(r_is_err_with_many_names(&g));
        assert!(r_is_err_with_many_names(&grant(&["*"], &["/"])));
    }

    #[test]
    fn certificate_names_do_not_take_hosts_another_grant_names_exactly() {
        let exact = Grant {
            name: "exact".into(),
            ..grant(&["https://app.example.com"], &["/"])
        };
        let any = Grant {
            name: "any".into(),
            ..grant(&["*"], &["/"])
        };
        let all = Grants::new(vec![exact.clone(), any.clone()]).unwrap();
        let cert = names(&["app.example.com", "*.example.com", "other.example.org"]);
        // Through `*`: neither the named host nor a wildcard over it; the rest stays.
        let scopes = scopes_from_certificate(&all, &[&any], &cert).unwrap();
        assert_eq!(shown(&scopes), vec!["https://other.example.org/"]);
        // Positive twin: the exact grant itself still yields its host.
        let scopes = scopes_from_certificate(&all, &[&exact], &cert).unwrap();
        assert_eq!(shown(&scopes), vec!["https://app.example.com/"]);
        // Without the exact grant in force, `*` covers them all again.
        let without = Grants::new(vec![any.clone()]).unwrap();
        assert_eq!(
            scopes_from_certificate(&without, &[&any], &cert)
                .unwrap()
                .len(),
            3
        );
    }

    fn r_is_err_with_many_names(g: &Grant) -> bool {
        let many: Vec<String> = (0..=MAX_CERTIFICATE_NAMES)
            .map(|i| format!("h{i}.example.com"))
            .collect();
        matches!(
            scopes_from_certificate(&Grants::default(), &[g], &many),
            Err(Forbidden::TooManyCertificateNames(n)) if n == MAX_CERTIFICATE_NAMES + 1
        )
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
