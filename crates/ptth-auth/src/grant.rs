//! Grants: which credential may register which origins and path prefixes, loaded from TOML.
//!
//! PTTH -01 §"Security Considerations": accepting a setup "authorizes that origin to receive
//! requests for every origin named in the target", so "the gateway MUST check that the
//! authenticated origin is allowed to register each requested origin". A [`Grant`] is that
//! permission: one identity (a token, a password, a certificate name, a pinned key) and the
//! origins and path prefixes it may claim.
//!
//! Secrets never stay in memory: a plaintext `token` or `basic-password` in the file is
//! hashed on load, and neither `Debug` nor an error message shows a secret or its hash.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use ptth_core::{Scope, SerializedOrigin};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::encoding::{hex, parse_key32, unhex};
use crate::names::{one_label_under, strip_root};
use crate::service::GrantedService;
use crate::token::BearerToken;

/// Who a grant is for: one kind of credential.
///
/// Passwords are hashed with plain SHA-256, not a slow password hash: these are machine
/// credentials that should be generated with high entropy (like tokens), and a slow hash on
/// every connection attempt would hand an unauthenticated peer a cheap way to burn the
/// gateway's CPU. Do not use a human-chosen password here.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// A bearer token, by the SHA-256 of its text. `id` names it in logs.
    Token {
        /// A name for logs (the grant name when loaded from TOML).
        id: String,
        /// SHA-256 of the token text.
        sha256: [u8; 32],
    },
    /// HTTP Basic credentials (RFC 7617): the user name and the SHA-256 of the password.
    Basic {
        /// The user name, compared exactly.
        user: String,
        /// SHA-256 of the password (its UTF-8 bytes).
        password_sha256: [u8; 32],
    },
    /// A client certificate whose subject CN equals this string exactly, or one of whose
    /// DNS SANs equals it (ASCII case-insensitive, as DNS names compare). Only for
    /// certificates verified against a CA.
    CertSubject(String),
    /// A client certificate with a DNS SAN matching this name; a leading `*.` matches
    /// exactly one label (RFC 6125 §6.4.3). Only for certificates verified against a CA.
    CertSan(String),
    /// A certificate, typically self-signed, pinned by the SHA-256 of its
    /// SubjectPublicKeyInfo DER.
    Spki([u8; 32]),
    /// An Ed25519 key that signs the gateway's authorisation challenge.
    Ed25519Key {
        /// The key id the origin sends in `ptth-key-id`.
        id: String,
        /// The raw 32-byte public key.
        public_key: [u8; 32],
    },
}

impl Identity {
    /// A short description for logs, free of secrets: `token app-team`, `cert-san x`.
    pub fn describe(&self) -> String {
        match self {
            Identity::Token { id, .. } => format!("token {id}"),
            Identity::Basic { user, .. } => format!("basic user {user}"),
            Identity::CertSubject(n) => format!("cert-subject {n}"),
            Identity::CertSan(n) => format!("cert-san {n}"),
            Identity::Spki(h) => format!("spki-sha256 {}", hex(&h[..8])),
            Identity::Ed25519Key { id, .. } => format!("ed25519 key {id}"),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash of a low-entropy secret is as good as the secret to an offline guesser,
        // so hashes of secrets are redacted too.
        match self {
            Identity::Token { id, .. } => f
                .debug_struct("Token")
                .field("id", id)
                .field("sha256", &"<redacted>")
                .finish(),
            Identity::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", user)
                .field("password_sha256", &"<redacted>")
                .finish(),
            Identity::CertSubject(n) => f.debug_tuple("CertSubject").field(n).finish(),
            Identity::CertSan(n) => f.debug_tuple("CertSan").field(n).finish(),
            Identity::Spki(h) => f.debug_tuple("Spki").field(&hex(h)).finish(),
            Identity::Ed25519Key { id, public_key } => f
                .debug_struct("Ed25519Key")
                .field("id", id)
                .field("public_key", &hex(public_key))
                .finish(),
        }
    }
}

/// Which origins a grant allows: `scheme://host[:port]`, optionally `scheme://*.parent[:port]`
/// (exactly one label in place of `*`), or any origin at all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OriginPattern {
    /// Every origin: the `--token` shortcut, and `"*"` in a grant.
    Any,
    /// Exactly this origin (scheme, host, port; the port defaults from the scheme).
    Exact(SerializedOrigin),
    /// `scheme://*.parent:port`: any host that is one DNS label followed by `.parent`.
    Wildcard {
        /// Lowercase scheme.
        scheme: String,
        /// Lowercase parent domain, without the `*.`.
        parent: String,
        /// The port, defaulted from the scheme.
        port: u16,
    },
}

/// Why an origin pattern did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin pattern {pattern:?}: {why}")]
#[non_exhaustive]
pub struct PatternError {
    pattern: String,
    why: String,
}

impl FromStr for OriginPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: String| PatternError {
            pattern: s.to_owned(),
            why,
        };
        if s == "*" {
            return Ok(OriginPattern::Any);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(err("expected scheme://host[:port]".into()));
        };
        match rest.strip_prefix("*.") {
            None => s
                .parse::<SerializedOrigin>()
                .map(OriginPattern::Exact)
                .map_err(|e| err(e.to_string())),
            Some(parent) => {
                // draft-bt §3 allows wildcard ORIGIN entries "so that wildcard certificates
                // can be used"; like a certificate wildcard, `*` stands for one whole label.
                let o: SerializedOrigin = format!("{scheme}://{parent}")
                    .parse()
                    .map_err(|e: ptth_core::OriginError| err(e.to_string()))?;
                let host = o.host();
                // `*.*.parent`: the parent parsed as a wildcard origin of its own.
                if o.is_wildcard() {
                    return Err(err("`*` may only be the whole left-most label".into()));
                }
                if host.starts_with('[') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                    return Err(err("a wildcard needs a DNS name, not an address".into()));
                }
                Ok(OriginPattern::Wildcard {
                    scheme: o.scheme().to_owned(),
                    parent: strip_root(host).to_owned(),
                    port: o.port(),
                })
            }
        }
    }
}

impl fmt::Display for OriginPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginPattern::Any => f.write_str("*"),
            OriginPattern::Exact(o) => write!(f, "{o}"),
            OriginPattern::Wildcard {
                scheme,
                parent,
                port,
            } => {
                write!(f, "{scheme}://*.{parent}")?;
                if ptth_core::default_port(scheme) != Some(*port) {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
        }
    }
}

impl OriginPattern {
    /// Whether `origin` is allowed by this pattern.
    pub fn matches(&self, origin: &SerializedOrigin) -> bool {
        match self {
            OriginPattern::Any => true,
            OriginPattern::Exact(o) => {
                o.scheme() == origin.scheme()
                    && o.port() == origin.port()
                    && strip_root(o.host()) == strip_root(origin.host())
            }
            OriginPattern::Wildcard {
                scheme,
                parent,
                port,
            } => {
                scheme == origin.scheme()
                    && *port == origin.port()
                    && one_label_under(strip_root(origin.host()), parent)
            }
        }
    }
}

/// One permission: an identity, the origins it may register and the path prefixes within
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// A name for logs and errors.
    pub name: String,
    /// Who this grant is for.
    pub identity: Identity,
    /// The origins it may register (at least one).
    pub origins: Vec<OriginPattern>,
    /// The path prefixes it may register, normalised (`/` is everything).
    pub path_prefixes: Vec<String>,
    /// The services it may offer through reverse CONNECT (`services = ["ssh=tcp/22"]`);
    /// empty: none.
    pub services: Vec<GrantedService>,
}

impl Grant {
    /// The service this grant calls `name`, if it allows one by that name.
    pub fn service(&self, name: &str) -> Option<&GrantedService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Whether this grant allows `origin` at all (any path).
    pub fn allows_origin(&self, origin: &SerializedOrigin) -> bool {
        self.origins.iter().any(|p| p.matches(origin))
    }

    /// Whether this grant names `origin` exactly ([`OriginPattern::Exact`]), not through a
    /// wildcard or `*`.
    pub fn names_origin(&self, origin: &SerializedOrigin) -> bool {
        self.origins
            .iter()
            .any(|p| matches!(p, OriginPattern::Exact(_)) && p.matches(origin))
    }

    /// Whether a requested, normalised path prefix is at or under one of this grant's
    /// prefixes on a segment boundary: `/api` covers `/api` and `/api/v2`, not `/apix`.
    pub fn covers_prefix(&self, requested: &str) -> bool {
        self.path_prefixes
            .iter()
            .any(|granted| prefix_covers(granted, requested))
    }
}

pub(crate) fn prefix_covers(granted: &str, requested: &str) -> bool {
    if granted == "/" {
        return true;
    }
    requested
        .strip_prefix(granted)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Normalises a path prefix as routing does ([`Scope`]): a trailing `/` is dropped,
/// unreserved percent-encodings decoded, dot segments refused.
pub(crate) fn normalize_prefix(prefix: &str) -> Result<String, String> {
    if !prefix.starts_with('/') {
        return Err(format!("path prefix {prefix:?} does not start with '/'"));
    }
    Scope::new("localhost", prefix)
        .map(|s| s.path_prefix().to_owned())
        .map_err(|e| format!("path prefix {prefix:?}: {e}"))
}

/// Why grants could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The text is not TOML of the expected shape (an unknown field, a wrong type).
    #[error("grants: {0}")]
    Toml(String),
    /// One grant is inconsistent. `index` counts `[[grant]]` tables from 1.
    #[error("[[grant]] #{index} ({name:?}): {why}")]
    Invalid {
        /// Position of the grant, from 1.
        index: usize,
        /// Its name (empty if it has none).
        name: String,
        /// What is wrong.
        why: String,
    },
    /// Two grants share a name.
    #[error("two grants are named {0:?}")]
    DuplicateName(String),
}

/// A `[[grant]]` table as written in a configuration file. Embed `Vec<GrantSpec>` in a
/// larger configuration and pass it to [`Grants::from_specs`], or use
/// [`Grants::from_toml`]. `Debug` redacts plaintext secrets.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GrantSpec {
    name: String,
    token: Option<String>,
    token_sha256: Option<String>,
    basic_user: Option<String>,
    basic_password: Option<String>,
    basic_password_sha256: Option<String>,
    cert_subject: Option<String>,
    cert_san: Option<String>,
    spki_sha256: Option<String>,
    ed25519: Option<String>,
    key_id: Option<String>,
    #[serde(default)]
    origins: Vec<String>,
    paths: Option<Vec<String>>,
    #[serde(default)]
    services: Vec<String>,
}

impl fmt::Debug for GrantSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("GrantSpec")
            .field("name", &self.name)
            .field("token", &redacted(&self.token))
            .field("token_sha256", &redacted(&self.token_sha256))
            .field("basic_user", &self.basic_user)
            .field("basic_password", &redacted(&self.basic_password))
            .field(
                "basic_password_sha256",
                &redacted(&self.basic_password_sha256),
            )
            .field("cert_subject", &self.cert_subject)
            .field("cert_san", &self.cert_san)
            .field("spki_sha256", &self.spki_sha256)
            .field("ed25519", &self.ed25519)
            .field("key_id", &self.key_id)
            .field("origins", &self.origins)
            .field("paths", &self.paths)
            .field("services", &self.services)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsFile {
    #[serde(default)]
    grant: Vec<GrantSpec>,
}

impl GrantSpec {
    fn into_grant(self) -> Result<Grant, String> {
        let mut kinds: Vec<&str> = Vec::new();
        if self.token.is_some() || self.token_sha256.is_some() {
            kinds.push("token");
        }
        if self.basic_user.is_some()
            || self.basic_password.is_some()
            || self.basic_password_sha256.is_some()
        {
            kinds.push("basic");
        }
        for (set, kind) in [
            (self.cert_subject.is_some(), "cert-subject"),
            (self.cert_san.is_some(), "cert-san"),
            (self.spki_sha256.is_some(), "spki-sha256"),
            (self.ed25519.is_some(), "ed25519"),
        ] {
            if set {
                kinds.push(kind);
            }
        }
        match kinds.len() {
            0 => return Err("no identity: give one of token, token-sha256, basic-user, cert-subject, cert-san, spki-sha256, ed25519".into()),
            1 => {}
            _ => return Err(format!("more than one identity ({}); a grant has exactly one", kinds.join(", "))),
        }
        if self.key_id.is_some() && self.ed25519.is_none() {
            return Err("key-id belongs with ed25519".into());
        }
        let identity = if kinds[0] == "token" {
            let sha256 = match (self.token, self.token_sha256) {
                (Some(t), None) => {
                    let token = BearerToken::new(t).map_err(|e| format!("token: {e}"))?;
                    Sha256::digest(token.expose().as_bytes()).into()
                }
                (None, Some(h)) => parse_hash(&h).map_err(|e| format!("token-sha256: {e}"))?,
                _ => return Err("give token or token-sha256, not both".into()),
            };
            Identity::Token {
                id: self.name.clone(),
                sha256,
            }
        } else if kinds[0] == "basic" {
            let user = self.basic_user.ok_or("basic-password needs basic-user")?;
            if user.is_empty() || user.contains(':') {
                return Err("basic-user must be non-empty and contain no ':' (RFC 7617)".into());
            }
            let password_sha256 = match (self.basic_password, self.basic_password_sha256) {
                (Some(p), None) => Sha256::digest(p.as_bytes()).into(),
                (None, Some(h)) => {
                    parse_hash(&h).map_err(|e| format!("basic-password-sha256: {e}"))?
                }
                (None, None) => {
                    return Err("basic-user needs basic-password-sha256 (or basic-password)".into())
                }
                (Some(_), Some(_)) => {
                    return Err("give basic-password or basic-password-sha256, not both".into())
                }
            };
            Identity::Basic {
                user,
                password_sha256,
            }
        } else if let Some(n) = self.cert_subject {
            if n.is_empty() || n.chars().any(char::is_control) {
                return Err("cert-subject must be non-empty, without control characters".into());
            }
            Identity::CertSubject(n)
        } else if let Some(n) = self.cert_san {
            Identity::CertSan(parse_dns_name(&n).map_err(|e| format!("cert-san: {e}"))?)
        } else if let Some(h) = self.spki_sha256 {
            Identity::Spki(parse_hash(&h).map_err(|e| format!("spki-sha256: {e}"))?)
        } else if let Some(k) = self.ed25519 {
            let public_key = parse_key32(&k).map_err(|e| format!("ed25519: {e}"))?;
            let id = self.key_id.unwrap_or_else(|| self.name.clone());
            crate::challenge::check_key_id(&id).map_err(|e| format!("key-id: {e}"))?;
            Identity::Ed25519Key { id, public_key }
        } else {
            return Err("no identity".into());
        };
        if self.origins.is_empty() && self.services.is_empty() {
            return Err(
                "origins is empty: a grant must name the origins (or services) it allows".into(),
            );
        }
        let services = self
            .services
            .iter()
            .map(|s| s.parse::<GrantedService>())
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashSet::new();
        if let Some(dup) = services.iter().find(|s| !seen.insert(s.name.as_str())) {
            return Err(format!("two services are named {:?}", dup.name));
        }
        let origins = self
            .origins
            .iter()
            .map(|o| o.parse::<OriginPattern>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let path_prefixes = self.paths.unwrap_or_else(|| vec!["/".into()]);
        Ok(Grant {
            name: self.name,
            identity,
            origins,
            path_prefixes,
            services,
        })
    }
}

/// Every grant a gateway knows. Cheap to clone; a caller that reloads configuration keeps
/// it behind an `Arc` and swaps it whole.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    grants: Vec<Grant>,
    /// Every host some grant names exactly (lowercase, no root label): only a grant that
    /// names it may register it.
    exact_hosts: HashSet<String>,
}

impl Grants {
    /// Validates grants built in code: names unique, origins and path prefixes present,
    /// path prefixes normalised like routing scopes.
    pub fn new(grants: Vec<Grant>) -> Result<Self, GrantError> {
        let mut names = HashSet::new();
        let mut out = Vec::with_capacity(grants.len());
        for (i, mut g) in grants.into_iter().enumerate() {
            let invalid = |why: String, g: &Grant| GrantError::Invalid {
                index: i + 1,
                name: g.name.clone(),
                why,
            };
            if g.name.is_empty() {
                return Err(invalid("a grant needs a name".into(), &g));
            }
            if !names.insert(g.name.clone()) {
                return Err(GrantError::DuplicateName(g.name));
            }
            if g.origins.is_empty() && g.services.is_empty() {
                return Err(invalid("no origins and no services".into(), &g));
            }
            if g.path_prefixes.is_empty() {
                return Err(invalid("no path prefixes (use \"/\" for all)".into(), &g));
            }
            let prefixes = g
                .path_prefixes
                .iter()
                .map(|p| normalize_prefix(p))
                .collect::<Result<Vec<_>, _>>();
            g.path_prefixes = prefixes.map_err(|e| invalid(e, &g))?;
            out.push(g);
        }
        Ok(Self::indexed(out))
    }

    /// Parses a document of `[[grant]]` tables (and nothing else).
    pub fn from_toml(text: &str) -> Result<Self, GrantError> {
        let file: GrantsFile = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        Self::from_specs(file.grant)
    }

    /// Builds grants from tables deserialised as part of a larger configuration.
    pub fn from_specs(specs: Vec<GrantSpec>) -> Result<Self, GrantError> {
        let grants = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let name = spec.name.clone();
                spec.into_grant().map_err(|why| GrantError::Invalid {
                    index: i + 1,
                    name,
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(grants)
    }

    /// The `--token` shortcut: one grant per token (`token-1`, `token-2`, ...) allowing any
    /// origin and every path, so a gateway configured only with tokens behaves as before.
    pub fn from_tokens(tokens: &[BearerToken]) -> Self {
        let grants = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let name = format!("token-{}", i + 1);
                Grant {
                    identity: Identity::Token {
                        id: name.clone(),
                        sha256: Sha256::digest(t.expose().as_bytes()).into(),
                    },
                    name,
                    origins: vec![OriginPattern::Any],
                    path_prefixes: vec!["/".into()],
                    // Services are offered only through a `[[grant]]` that names them.
                    services: Vec::new(),
                }
            })
            .collect();
        Self::indexed(grants)
    }

    fn indexed(grants: Vec<Grant>) -> Self {
        let exact_hosts = grants
            .iter()
            .flat_map(|g| &g.origins)
            .filter_map(|p| match p {
                OriginPattern::Exact(o) => Some(strip_root(o.host()).to_owned()),
                _ => None,
            })
            .collect();
        Self {
            grants,
            exact_hosts,
        }
    }

    /// Whether some grant names `host` exactly (exact names win over wildcards and `*`).
    pub fn names_host(&self, host: &str) -> bool {
        self.exact_hosts.contains(strip_root(host))
    }

    /// Whether some grant names exactly a host one label under `parent` (so a wildcard
    /// scope `*.parent` would overlap a name that only its exact grant may serve).
    pub fn names_host_under(&self, parent: &str) -> bool {
        self.exact_hosts
            .iter()
            .any(|h| one_label_under(h, strip_root(parent)))
    }

    /// The grants, in configuration order.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// The grant called `name`.
    pub fn get(&self, name: &str) -> Option<&Grant> {
        self.grants.iter().find(|g| g.name == name)
    }

    /// How many grants there are.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether there are none (a gateway with no grants accepts no origin).
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The SPKI hashes of [`Identity::Spki`] grants: pass exactly these to
    /// [`client_verifier`](crate::client_verifier) so pinned self-signed certificates are
    /// accepted by the TLS layer.
    pub fn pinned_spki(&self) -> Vec<[u8; 32]> {
        self.grants
            .iter()
            .filter_map(|g| match g.identity {
                Identity::Spki(h) => Some(h),
                _ => None,
            })
            .collect()
    }

    /// Whether any grant asks for a client certificate (CN, SAN or pinned key).
    pub fn wants_client_certificates(&self) -> bool {
        self.grants.iter().any(|g| {
            matches!(
                g.identity,
                Identity::CertSubject(_) | Identity::CertSan(_) | Identity::Spki(_)
            )
        })
    }
}

/// A TOML error without the source line: toml's own `Display` quotes the offending line,
/// which may hold a plaintext token.
fn toml_error(text: &str, e: &toml::de::Error) -> GrantError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    match line {
        Some(line) => GrantError::Toml(format!("line {line}: {}", e.message())),
        None => GrantError::Toml(e.message().to_owned()),
    }
}

fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    unhex(text.trim())
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| "expected 64 hex digits (a SHA-256)".to_string())
}

fn parse_dns_name(name: &str) -> Result<String, String> {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let ok = !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{name:?} is not a DNS name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> SerializedOrigin {
        s.parse().unwrap()
    }

    #[test]
    fn wildcard_patterns_match_exactly_one_label() {
        let p: OriginPattern = "https://*.api.example.com".parse().unwrap();
        assert!(p.matches(&origin("https://v1.api.example.com")));
        assert!(p.matches(&origin("https://V1.API.example.com:443")));
        assert!(!p.matches(&origin("https://api.example.com")));
        assert!(!p.matches(&origin("https://a.b.api.example.com")));
        assert!(!p.matches(&origin("https://v1xapi.example.com")));
        assert!(!p.matches(&origin("http://v1.api.example.com")));
        assert!(!p.matches(&origin("https://v1.api.example.com:8443")));
        assert_eq!(p.to_string(), "https://*.api.example.com");
        let p: OriginPattern = "https://*.api.example.com:8443".parse().unwrap();
        assert!(p.matches(&origin("https://v1.api.example.com:8443")));
        assert!(!p.matches(&origin("https://v1.api.example.com")));
        assert_eq!(p.to_string(), "https://*.api.example.com:8443");
    }

    #[test]
    fn exact_patterns_fill_default_ports() {
        let p: OriginPattern = "https://App.Example.com".parse().unwrap();
        assert!(p.matches(&origin("https://app.example.com:443")));
        assert!(p.matches(&origin("https://app.example.com.")));
        assert!(!p.matches(&origin("https://app.example.com:444")));
        assert!(!p.matches(&origin("http://app.example.com")));
        assert!(!p.matches(&origin("https://x.app.example.com")));
        assert!(OriginPattern::Any.matches(&origin("http://[::1]:8080")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "app.example.com",
            "https://*.*.example.com",
            "https://*.1.2.3.4",
            "https://*.[::1]",
            "https://a.*.example.com",
            "https://app.example.com/path",
            "null",
            "ftp://*.example.com",
        ] {
            assert!(bad.parse::<OriginPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_cover_on_segment_boundaries() {
        assert!(prefix_covers("/api", "/api"));
        assert!(prefix_covers("/api", "/api/v2"));
        assert!(!prefix_covers("/api", "/apix"));
        assert!(!prefix_covers("/api", "/"));
        assert!(prefix_covers("/", "/anything"));
    }

    #[test]
    fn parses_the_documented_example() {
        let sha = hex(&Sha256::digest(b"s3cret"));
        let text = format!(
            r#"
[[grant]]
name = "app-team"
token-sha256 = "{sha}"
origins = ["https://app.example.com", "https://*.api.example.com"]
paths = ["/", "/api/"]
[[grant]]
name = "edge-cert"
cert-san = "origin.example.com"
origins = ["https://origin.example.com"]
[[grant]]
name = "plain"
token = "pl41n"
origins = ["*"]
[[grant]]
name = "pinned"
spki-sha256 = "{pin}"
origins = ["https://p.example.com"]
[[grant]]
name = "ops"
basic-user = "ops"
basic-password = "hunter2hunter2"
origins = ["https://ops.example.com"]
[[grant]]
name = "signer"
ed25519 = "{key}"
key-id = "k1"
origins = ["https://s.example.com"]
[[grant]]
name = "ssh-box"
token = "ssh-box-token"
services = ["ssh=tcp/22", "dns=udp/53"]
"#,
            key = "11".repeat(32),
            pin = "AB:".repeat(31) + "AB"
        );
        let g = Grants::from_toml(&text).unwrap();
        assert_eq!(g.len(), 7);
        let ssh = g.get("ssh-box").unwrap();
        assert!(ssh.origins.is_empty(), "a grant may offer services only");
        assert_eq!(ssh.service("ssh").unwrap().to_string(), "ssh=tcp/22");
        assert_eq!(ssh.service("dns").unwrap().port.get(), 53);
        assert!(ssh.service("http").is_none());
        assert!(g.get("app-team").unwrap().services.is_empty());
        let app = g.get("app-team").unwrap();
        assert_eq!(app.path_prefixes, vec!["/", "/api"]);
        assert!(matches!(app.identity, Identity::Token { .. }));
        assert_eq!(g.get("edge-cert").unwrap().path_prefixes, vec!["/"]);
        assert_eq!(g.get("plain").unwrap().origins, vec![OriginPattern::Any]);
        assert_eq!(g.pinned_spki().len(), 1);
        assert!(g.wants_client_certificates());
        assert!(matches!(
            &g.get("signer").unwrap().identity,
            Identity::Ed25519Key { id, public_key } if id == "k1" && public_key == &[0x11; 32]
        ));
        // Nothing secret in Debug, not even hashes of secrets.
        let dbg = format!("{g:?}");
        assert!(!dbg.contains(&sha[..16]), "{dbg}");
        assert!(!dbg.contains("pl41n"));
        assert!(!dbg.contains("hunter2"));
    }

    fn err(text: &str) -> String {
        Grants::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn toml_errors_are_clear() {
        let two = err(r#"
[[grant]]
name = "a"
token = "fine"
origins = ["https://a.example"]
[[grant]]
name = "both"
token = "t"
cert-san = "a.example"
origins = ["https://a.example"]
"#);
        assert!(
            two.contains("#2") && two.contains("both") && two.contains("more than one identity"),
            "{two}"
        );

        let dup = err("[[grant]]\nname = \"s\"\ntoken = \"t\"\nservices = [\"ssh=tcp/22\", \"ssh=tcp/2222\"]\n");
        assert!(dup.contains("two services are named \"ssh\""), "{dup}");
        let bad = err("[[grant]]\nname = \"s\"\ntoken = \"t\"\nservices = [\"ssh=tcp/0\"]\n");
        assert!(
            bad.contains("#1") && bad.contains("the port must be"),
            "{bad}"
        );

        let unknown =
            err("[[grant]]\nname = \"a\"\ntokn = \"x\"\norigins = [\"https://a.example\"]\n");
        assert!(
            unknown.contains("unknown field") && unknown.contains("tokn"),
            "{unknown}"
        );
        assert!(unknown.contains("line 3"), "{unknown}");

        let hex_err = err(
            "[[grant]]\nname = \"a\"\ntoken-sha256 = \"zz\"\norigins = [\"https://a.example\"]\n",
        );
        assert!(
            hex_err.contains("token-sha256") && hex_err.contains("64 hex"),
            "{hex_err}"
        );

        let none = err("[[grant]]\nname = \"a\"\norigins = [\"https://a.example\"]\n");
        assert!(none.contains("no identity"), "{none}");

        let no_origins = err("[[grant]]\nname = \"a\"\ntoken = \"t\"\n");
        assert!(no_origins.contains("origins"), "{no_origins}");

        let bad_origin = err("[[grant]]\nname = \"a\"\ntoken = \"t\"\norigins = [\"a.example\"]\n");
        assert!(bad_origin.contains("a.example"), "{bad_origin}");

        let bad_path = err(
            "[[grant]]\nname = \"a\"\ntoken = \"t\"\norigins = [\"*\"]\npaths = [\"/a/../b\"]\n",
        );
        assert!(bad_path.contains("dot segment"), "{bad_path}");

        let dup = err("[[grant]]\nname = \"a\"\ntoken = \"t\"\norigins = [\"*\"]\n[[grant]]\nname = \"a\"\ntoken = \"u\"\norigins = [\"*\"]\n");
        assert!(dup.contains("two grants"), "{dup}");

        let half_basic = err("[[grant]]\nname = \"a\"\nbasic-user = \"u\"\norigins = [\"*\"]\n");
        assert!(half_basic.contains("basic-password"), "{half_basic}");

        let stray_key_id =
            err("[[grant]]\nname = \"a\"\ntoken = \"t\"\nkey-id = \"k\"\norigins = [\"*\"]\n");
        assert!(stray_key_id.contains("key-id"), "{stray_key_id}");

        let top = err("[[grants]]\nname = \"a\"\n");
        assert!(top.contains("unknown field"), "{top}");

        let bad_key = err("[[grant]]\nname = \"a\"\ned25519 = \"abc\"\norigins = [\"*\"]\n");
        assert!(bad_key.contains("ed25519"), "{bad_key}");
    }

    #[test]
    fn toml_errors_do_not_echo_secrets() {
        let e = err("[[grant]]\nname = \"a\"\ntoken = \"sup3rs3cret\norigins = []\n");
        assert!(!e.contains("sup3rs3cret"), "{e}");
        let e = err("[[grant]]\nname = \"a\"\ntoken = \"sup3r s3cret\"\norigins = [\"*\"]\n");
        assert!(!e.contains("sup3r"), "{e}");
    }

    #[test]
    fn tokens_shortcut_allows_any_origin() {
        let g = Grants::from_tokens(&[
            BearerToken::new("a").unwrap(),
            BearerToken::new("b").unwrap(),
        ]);
        assert_eq!(g.len(), 2);
        assert_eq!(g.grants()[1].name, "token-2");
        assert!(g.grants()[0].allows_origin(&origin("http://[::1]:9")));
    }
}
