//! Public clients of the gateway's CONNECT proxy (`[[proxy-user]]`): who may open a TCP
//! tunnel to an origin's service by `CONNECT host:port` or connect-tcp, and to which.
//!
//! A proxy user authenticates with `Proxy-Authorization` (RFC 9110 §11.7.2), Basic (RFC
//! 7617: the user-id is the user's `name`) or Bearer (RFC 6750). Secrets are kept only as
//! SHA-256 hashes and compared in constant time against every user without stopping early;
//! neither `Debug` nor an error shows a secret or its hash. A user reaches only the
//! (grant, service) pairs its `reach` names: `GRANT/SERVICE`, or `GRANT/*` for every
//! service of that grant.
//!
//! ```
//! use ptth_auth::ProxyUsers;
//! let users = ProxyUsers::from_toml(r#"
//! [[proxy-user]]
//! name = "alice"
//! password = "correct-horse"
//! reach = ["ssh-box/ssh"]
//! "#).unwrap();
//! let header = http::HeaderValue::from_static("Basic YWxpY2U6Y29ycmVjdC1ob3JzZQ==");
//! let alice = users.authenticate(Some(&header)).unwrap();
//! assert!(alice.may_reach("ssh-box", "ssh"));
//! assert!(!alice.may_reach("ssh-box", "db"));
//! ```

use crate::encoding::unhex;
use crate::token::constant_time_eq;
use base64::Engine;
use http::HeaderValue;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;

/// The most `[[proxy-user]]` tables (each request compares against every one).
pub const MAX_PROXY_USERS: usize = 1024;

/// A `[[proxy-user]]` table as written in a configuration file. `Debug` redacts secrets.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProxyUserSpec {
    name: String,
    password: Option<String>,
    password_sha256: Option<String>,
    token: Option<String>,
    token_sha256: Option<String>,
    #[serde(default)]
    reach: Vec<String>,
}

impl fmt::Debug for ProxyUserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("ProxyUserSpec")
            .field("name", &self.name)
            .field("password", &r(&self.password))
            .field("password_sha256", &r(&self.password_sha256))
            .field("token", &r(&self.token))
            .field("token_sha256", &r(&self.token_sha256))
            .field("reach", &self.reach)
            .finish()
    }
}

/// What a proxy user may reach: one service of a grant, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// `GRANT/SERVICE`.
    Service {
        /// The grant's name.
        grant: String,
        /// The service's name in that grant.
        service: String,
    },
    /// `GRANT/*`: every service of the grant.
    Grant(String),
}

impl Reach {
    fn parse(s: &str) -> Result<Self, String> {
        let (grant, service) = s
            .split_once('/')
            .filter(|(g, _)| !g.is_empty())
            .ok_or_else(|| format!("reach {s:?}: expected GRANT/SERVICE or GRANT/*"))?;
        if service == "*" {
            return Ok(Reach::Grant(grant.to_owned()));
        }
        if !crate::valid_service_name(service) {
            return Err(format!(
                "reach {s:?}: the service name must be lowercase letters, digits or '-'"
            ));
        }
        Ok(Reach::Service {
            grant: grant.to_owned(),
            service: service.to_owned(),
        })
    }

    /// The grant it names.
    pub fn grant(&self) -> &str {
        match self {
            Reach::Service { grant, .. } | Reach::Grant(grant) => grant,
        }
    }
}

#[derive(Clone, Copy)]
enum Secret {
    Basic { password_sha256: [u8; 32] },
    Bearer { sha256: [u8; 32] },
}

/// One public client of the CONNECT proxy.
#[derive(Clone)]
pub struct ProxyUser {
    /// Its name (the Basic user-id; for logs).
    pub name: String,
    name_sha256: [u8; 32],
    secret: Secret,
    /// What it may reach.
    pub reach: Vec<Reach>,
}

impl fmt::Debug for ProxyUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUser")
            .field("name", &self.name)
            .field(
                "scheme",
                &match self.secret {
                    Secret::Basic { .. } => "basic",
                    Secret::Bearer { .. } => "bearer",
                },
            )
            .field("reach", &self.reach)
            .finish()
    }
}

impl ProxyUser {
    /// Whether this user may reach `service` of `grant`.
    pub fn may_reach(&self, grant: &str, service: &str) -> bool {
        self.reach.iter().any(|r| match r {
            Reach::Grant(g) => g == grant,
            Reach::Service {
                grant: g,
                service: s,
            } => g == grant && s == service,
        })
    }
}

/// Why a `Proxy-Authorization` proved no proxy user (answered 407 either way; the reason is
/// for the gateway's log and never names a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyAuthError {
    /// No `Proxy-Authorization` field.
    #[error("no Proxy-Authorization")]
    Missing,
    /// The field is not a Basic or Bearer credential this code can read.
    #[error("malformed Proxy-Authorization: {0}")]
    Malformed(&'static str),
    /// A well-formed credential that matches no proxy user.
    #[error("the Proxy-Authorization credential matches no proxy user")]
    Rejected,
}

/// The proxy users of a gateway.
#[derive(Debug, Clone, Default)]
pub struct ProxyUsers {
    users: Vec<ProxyUser>,
}

#[derive(Deserialize)]
struct File {
    #[serde(default, rename = "proxy-user")]
    users: Vec<ProxyUserSpec>,
}

fn sha256_of(
    name: &str,
    clear: &Option<String>,
    hashed: &Option<String>,
    what: &str,
) -> Result<Option<[u8; 32]>, String> {
    match (clear, hashed) {
        (Some(_), Some(_)) => Err(format!("give {what} or {what}-sha256, not both")),
        (Some(c), None) if c.is_empty() => Err(format!("{what} is empty")),
        (Some(c), None) => Ok(Some(Sha256::digest(c.as_bytes()).into())),
        (None, Some(h)) => unhex(h)
            .filter(|b| b.len() == 32 && h.len() == 64)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Some)
            .ok_or_else(|| format!("{what}-sha256 of {name:?} is not 64 hex digits")),
        (None, None) => Ok(None),
    }
}

impl ProxyUsers {
    /// Proxy users from `[[proxy-user]]` tables. Every user needs a name without `:` or
    /// control characters (RFC 7617), exactly one secret (`password` or `password-sha256`
    /// for Basic, `token` or `token-sha256` for Bearer), and at least one `reach`.
    pub fn from_specs(specs: Vec<ProxyUserSpec>) -> Result<Self, String> {
        if specs.len() > MAX_PROXY_USERS {
            return Err(format!("more than {MAX_PROXY_USERS} [[proxy-user]] tables"));
        }
        let mut users: Vec<ProxyUser> = Vec::with_capacity(specs.len());
        for (i, s) in specs.into_iter().enumerate() {
            let at = |why: String| format!("[[proxy-user]] #{} ({:?}): {why}", i + 1, s.name);
            if s.name.is_empty() || s.name.contains(':') || s.name.chars().any(char::is_control) {
                return Err(at(
                    "the name must be non-empty, without ':' or control characters (it is the Basic user-id, RFC 7617)".into(),
                ));
            }
            if users.iter().any(|u| u.name == s.name) {
                return Err(at("another proxy user has this name".into()));
            }
            let basic =
                sha256_of(&s.name, &s.password, &s.password_sha256, "password").map_err(at)?;
            let bearer = sha256_of(&s.name, &s.token, &s.token_sha256, "token").map_err(at)?;
            let secret = match (basic, bearer) {
                (Some(p), None) => Secret::Basic { password_sha256: p },
                (None, Some(t)) => Secret::Bearer { sha256: t },
                _ => {
                    return Err(at(
                        "give exactly one secret: password (or password-sha256) for Basic, or token (or token-sha256) for Bearer".into(),
                    ))
                }
            };
            if s.reach.is_empty() {
                return Err(at(
                    "reach is empty: list what it may reach, e.g. reach = [\"ssh-box/ssh\"]".into(),
                ));
            }
            let reach = s
                .reach
                .iter()
                .map(|r| Reach::parse(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(at)?;
            users.push(ProxyUser {
                name_sha256: Sha256::digest(s.name.as_bytes()).into(),
                name: s.name,
                secret,
                reach,
            });
        }
        Ok(Self { users })
    }

    /// Proxy users from a TOML text with `[[proxy-user]]` tables (and nothing else).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| format!("[[proxy-user]]: {e}"))?;
        Self::from_specs(file.users)
    }

    /// The users, in configuration order.
    pub fn users(&self) -> &[ProxyUser] {
        &self.users
    }

    /// Whether there is none (then the gateway's CONNECT proxy is off).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user a `Proxy-Authorization` field value proves. Every user is compared, in
    /// constant time, whatever matched.
    pub fn authenticate(&self, field: Option<&HeaderValue>) -> Result<&ProxyUser, ProxyAuthError> {
        let field = field.ok_or(ProxyAuthError::Missing)?;
        let text = field
            .to_str()
            .map_err(|_| ProxyAuthError::Malformed("not visible ASCII"))?;
        let (scheme, rest) = text
            .trim()
            .split_once(' ')
            .ok_or(ProxyAuthError::Malformed(
                "expected `<scheme> <credentials>`",
            ))?;
        let rest = rest.trim();
        let mut found: Option<&ProxyUser> = None;
        if scheme.eq_ignore_ascii_case("bearer") {
            let presented: [u8; 32] = Sha256::digest(rest.as_bytes()).into();
            for u in &self.users {
                if let Secret::Bearer { sha256 } = &u.secret {
                    if constant_time_eq(sha256, &presented) == 1 {
                        found = Some(u);
                    }
                }
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            // RFC 7617 §2: base64 of user-id ":" password; the user-id has no colon.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .map_err(|_| ProxyAuthError::Malformed("Basic credentials are not base64"))?;
            let colon = decoded
                .iter()
                .position(|&b| b == b':')
                .ok_or(ProxyAuthError::Malformed("Basic credentials have no ':'"))?;
            let (user, password) = decoded.split_at(colon);
            let password = password.get(1..).unwrap_or_default();
            let user: [u8; 32] = Sha256::digest(user).into();
            let password: [u8; 32] = Sha256::digest(password).into();
            for u in &self.users {
                if let Secret::Basic { password_sha256 } = &u.secret {
                    if constant_time_eq(&u.name_sha256, &user)
                        & constant_time_eq(password_sha256, &password)
                        == 1
                    {
                        found = Some(u);
                    }
                }
            }
        } else {
            return Err(ProxyAuthError::Malformed(
                "only the Basic and Bearer schemes are accepted",
            ));
        }
        found.ok_or(ProxyAuthError::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> ProxyUsers {
        let hashed: String = Sha256::digest(b"tok-en")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        ProxyUsers::from_toml(&format!(
            r#"
[[proxy-user]]
name = "alice"
password = "pw-alice"
reach = ["box/ssh", "db/*"]

[[proxy-user]]
name = "robot"
token-sha256 = "{hashed}"
reach = ["box/*"]
"#
        ))
        .unwrap()
    }

    fn basic(user: &str, pw: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    #[test]
    fn basic_and_bearer_prove_their_user_and_nothing_else() {
        let u = users();
        assert_eq!(
            u.authenticate(Some(&basic("alice", "pw-alice")))
                .unwrap()
                .name,
            "alice"
        );
        let bearer = HeaderValue::from_static("Bearer tok-en");
        assert_eq!(u.authenticate(Some(&bearer)).unwrap().name, "robot");
        for wrong in [
            basic("alice", "pw-alicE"),
            basic("bob", "pw-alice"),
            basic("robot", "tok-en"),
            HeaderValue::from_static("Bearer pw-alice"),
        ] {
            assert_eq!(
                u.authenticate(Some(&wrong)).unwrap_err(),
                ProxyAuthError::Rejected
            );
        }
        assert_eq!(u.authenticate(None).unwrap_err(), ProxyAuthError::Missing);
        for bad in ["Basic !!", "Digest x", "Basic", "Basic YWxpY2U="] {
            let v = HeaderValue::from_static(bad);
            assert!(
                matches!(u.authenticate(Some(&v)), Err(ProxyAuthError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn reach_is_what_the_user_lists() {
        let u = users();
        let alice = &u.users()[0];
        assert!(alice.may_reach("box", "ssh"));
        assert!(!alice.may_reach("box", "web"));
        assert!(alice.may_reach("db", "anything"));
        assert!(!alice.may_reach("dbx", "anything"));
    }

    #[test]
    fn bad_tables_say_what_is_wrong_and_no_secret_shows() {
        for (text, says) in [
            ("name = \"a\"\nreach = [\"g/s\"]", "exactly one secret"),
            (
                "name = \"a\"\npassword = \"p\"\ntoken = \"t\"\nreach = [\"g/s\"]",
                "exactly one secret",
            ),
            ("name = \"a\"\npassword = \"p\"", "reach is empty"),
            (
                "name = \"a:b\"\npassword = \"p\"\nreach = [\"g/s\"]",
                "without ':'",
            ),
            (
                "name = \"a\"\npassword = \"p\"\nreach = [\"g\"]",
                "GRANT/SERVICE",
            ),
            (
                "name = \"a\"\npassword = \"p\"\nreach = [\"g/SSH\"]",
                "lowercase",
            ),
            (
                "name = \"a\"\npassword-sha256 = \"zz\"\nreach = [\"g/s\"]",
                "64 hex",
            ),
        ] {
            let e = ProxyUsers::from_toml(&format!("[[proxy-user]]\n{text}\n")).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        let shown = format!("{:?}", users());
        assert!(
            !shown.contains("pw-alice") && !shown.contains("tok-en"),
            "{shown}"
        );
        let spec: File =
            toml::from_str("[[proxy-user]]\nname = \"a\"\npassword = \"s3cr3t\"\n").unwrap();
        assert!(!format!("{:?}", spec.users).contains("s3cr3t"));
    }
}
