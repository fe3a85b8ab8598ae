//! The authorisation request of ALPN-only mechanisms (Potato §5.2): its legacy "secret" form.
//!
//! draft-thomson-ptth-potato §5.2: "the gateway could make a request to a prearranged
//! resource on the origin" and learn a secret, and "the scope of the authorization could be
//! conveyed in the response". With Potato and draft-bt there is no setup request that could
//! carry a credential, so the gateway's first reversed request is `GET` [`AUTHORIZE_PATH`];
//! the origin answers with its bearer token and the origins and path prefixes it claims.
//! No client request is forwarded on the connection before this succeeds.
//!
//! This secret form is legacy: a captured answer can be replayed. New deployments use the
//! challenge form in [`crate::challenge`] ([`ChallengeAnswer`](crate::ChallengeAnswer)),
//! where the origin signs a fresh challenge bound to the TLS connection. Both answer the
//! same [`AUTHORIZE_PATH`] and share [`ORIGINS_FIELD`] and [`PATH_PREFIX_FIELD`].

use http::{HeaderMap, HeaderValue, Response, StatusCode};
use ptth_core::SerializedOrigin;

/// The prearranged resource the gateway asks first on an ALPN-only reversed connection.
pub const AUTHORIZE_PATH: &str = "/.well-known/ptth/authorize";

/// Response field carrying the origin's credential (`Bearer <token>`).
pub const AUTHORIZATION_FIELD: &str = "ptth-authorization";
/// Response field listing the serialized origins the connection claims, comma-separated.
pub const ORIGINS_FIELD: &str = "ptth-origins";
/// Field listing the path prefixes the connection claims, comma-separated (absent: `/`).
/// Setup requests (Upgrade, extended CONNECT, PTTH/1.0) carry it too.
pub const PATH_PREFIX_FIELD: &str = "ptth-path-prefix";

/// What an origin claims in its legacy secret answer to the authorisation request.
#[derive(Debug, Clone)]
pub struct AuthorizeClaim {
    /// The credential, as an `Authorization` header value would carry it.
    pub authorization: HeaderValue,
    /// The origins this connection wants to serve.
    pub origins: Vec<SerializedOrigin>,
    /// The path prefixes within those origins (at least one; `/` is everything).
    pub path_prefixes: Vec<String>,
}

/// Why an answer to the authorisation request is unusable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimError {
    /// The origin did not answer 200.
    #[error("the origin answered the authorisation request with {0}")]
    Status(StatusCode),
    /// A required field is absent.
    #[error("the answer lacks the `{0}` field")]
    Missing(&'static str),
    /// A field is present but malformed.
    #[error("the `{field}` field is malformed: {why}")]
    Malformed {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

impl AuthorizeClaim {
    /// The origin's answer to the authorisation request.
    pub fn to_response<B: Default>(&self) -> Response<B> {
        let mut res = Response::new(B::default());
        let h = res.headers_mut();
        h.insert(AUTHORIZATION_FIELD, self.authorization.clone());
        let origins: Vec<String> = self.origins.iter().map(|o| o.to_string()).collect();
        if let Ok(v) = HeaderValue::from_str(&origins.join(", ")) {
            h.insert(ORIGINS_FIELD, v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.path_prefixes.join(", ")) {
            h.insert(PATH_PREFIX_FIELD, v);
        }
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        res
    }

    /// Reads the origin's answer on the gateway.
    pub fn from_response(status: StatusCode, headers: &HeaderMap) -> Result<Self, ClaimError> {
        if status != StatusCode::OK {
            return Err(ClaimError::Status(status));
        }
        let authorization = headers
            .get(AUTHORIZATION_FIELD)
            .cloned()
            .ok_or(ClaimError::Missing(AUTHORIZATION_FIELD))?;
        let origins = parse_origins(headers)?;
        let path_prefixes = path_prefixes(headers)?;
        Ok(Self {
            authorization,
            origins,
            path_prefixes,
        })
    }
}

/// Reads the [`ORIGINS_FIELD`] list (required).
pub(crate) fn parse_origins(headers: &HeaderMap) -> Result<Vec<SerializedOrigin>, ClaimError> {
    list(headers, ORIGINS_FIELD)?
        .ok_or(ClaimError::Missing(ORIGINS_FIELD))?
        .iter()
        .map(|s| {
            s.parse::<SerializedOrigin>()
                .map_err(|e| ClaimError::Malformed {
                    field: ORIGINS_FIELD,
                    why: format!("{s:?}: {e}"),
                })
        })
        .collect()
}

/// Reads the [`PATH_PREFIX_FIELD`] list (default `/`), used by setup requests and claims.
pub fn path_prefixes(headers: &HeaderMap) -> Result<Vec<String>, ClaimError> {
    let prefixes = list(headers, PATH_PREFIX_FIELD)?.unwrap_or_else(|| vec!["/".to_string()]);
    for p in &prefixes {
        if !p.starts_with('/') {
            return Err(ClaimError::Malformed {
                field: PATH_PREFIX_FIELD,
                why: format!("{p:?} does not start with '/'"),
            });
        }
    }
    Ok(prefixes)
}

fn list(headers: &HeaderMap, field: &'static str) -> Result<Option<Vec<String>>, ClaimError> {
    let mut out = Vec::new();
    let mut seen = false;
    for v in headers.get_all(field) {
        seen = true;
        let text = v.to_str().map_err(|_| ClaimError::Malformed {
            field,
            why: "not visible ASCII".into(),
        })?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(ClaimError::Malformed {
                    field,
                    why: "empty list element".into(),
                });
            }
            out.push(item.to_string());
        }
    }
    Ok(seen.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> AuthorizeClaim {
        AuthorizeClaim {
            authorization: HeaderValue::from_static("Bearer t0ken"),
            origins: vec![
                "https://app.example".parse().unwrap(),
                "https://api.example:8443".parse().unwrap(),
            ],
            path_prefixes: vec!["/api".into(), "/static".into()],
        }
    }

    #[test]
    fn round_trips_through_a_response() {
        let res: Response<()> = claim().to_response();
        let back = AuthorizeClaim::from_response(res.status(), res.headers()).unwrap();
        assert_eq!(back.authorization, "Bearer t0ken");
        assert_eq!(back.origins, claim().origins);
        assert_eq!(back.path_prefixes, vec!["/api", "/static"]);
    }

    #[test]
    fn rejects_bad_answers() {
        let mut res: Response<()> = claim().to_response();
        assert_eq!(
            AuthorizeClaim::from_response(StatusCode::NOT_FOUND, res.headers()).unwrap_err(),
            ClaimError::Status(StatusCode::NOT_FOUND)
        );
        res.headers_mut().insert(
            ORIGINS_FIELD,
            HeaderValue::from_static("https://a.example,,"),
        );
        assert!(matches!(
            AuthorizeClaim::from_response(StatusCode::OK, res.headers()),
            Err(ClaimError::Malformed { .. })
        ));
        res.headers_mut()
            .insert(ORIGINS_FIELD, HeaderValue::from_static("null"));
        assert!(AuthorizeClaim::from_response(StatusCode::OK, res.headers()).is_err());
        res.headers_mut().remove(ORIGINS_FIELD);
        assert_eq!(
            AuthorizeClaim::from_response(StatusCode::OK, res.headers()).unwrap_err(),
            ClaimError::Missing(ORIGINS_FIELD)
        );
        let mut h = HeaderMap::new();
        h.insert(PATH_PREFIX_FIELD, HeaderValue::from_static("api"));
        assert!(path_prefixes(&h).is_err());
        assert_eq!(path_prefixes(&HeaderMap::new()).unwrap(), vec!["/"]);
    }
}
