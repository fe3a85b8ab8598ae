//! Reverse-connect setup exchanges (draft-rosomakho-masque-reverse-connect-01), both
//! sides, on `http` types: `connect-listen` (the listener control channel) and
//! `connect-accept` (one inbound flow).
//!
//! | version | origin sends | gateway answers |
//! |---|---|---|
//! | HTTP/1.1 | `GET` + single `Host` + `Connection: Upgrade` + `Upgrade: connect-listen` (or `connect-accept`) + `Capsule-Protocol: ?1` | `101` + `Connection: Upgrade` + `Upgrade` + `Capsule-Protocol: ?1` |
//! | HTTP/2, HTTP/3 | `CONNECT` + `:protocol` + `:scheme` + `:path` + `:authority` + `capsule-protocol: ?1` | `2xx` + `capsule-protocol: ?1` |
//!
//! Over HTTP/2 and HTTP/3 the accept goes on the connection that carries the listener
//! channel; over HTTP/1.1 on a new connection, which the gateway must authenticate again
//! (the draft: "Proxies providing Reverse HTTP Connect service over HTTP/1.1 MUST
//! consistently authenticate clients on both Listener Control Channel and individual
//! Connection Acceptance Requests"). Which connection carries what is the callers'
//! business; this module checks the heads.
//!
//! The gateway validators serve the default templates' paths
//! ([`crate::LISTEN_PREFIX`], [`crate::ACCEPT_PREFIX`]).
//! Every refusal is a [`ReverseRejection`] whose status comes from one function,
//! [`ReverseRejectionKind::status`].

use std::fmt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use crate::reverse_connect::RequestId;
use crate::reverse_template::{
    self, ListenScope, ReverseExchange, ReverseTemplateError, ACCEPT_PREFIX, LISTEN_PREFIX,
};
use crate::setup::{find_upgrade, has_connection_upgrade, RequestHead, ResponseHead};

/// RFC 9297 §3.4: the `Capsule-Protocol` header field.
pub const CAPSULE_PROTOCOL: HeaderName = HeaderName::from_static("capsule-protocol");

/// Which request form: HTTP/1.1 Upgrade or extended CONNECT (HTTP/2 and HTTP/3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetupForm {
    /// `GET` + `Upgrade`, answered by `101`.
    Upgrade,
    /// `CONNECT` + `:protocol`, answered by `2xx`.
    ExtendedConnect,
}

/// Origin side: why a request could not be built or the gateway's answer is not
/// acceptable. The draft: "A response that does not match these requirements MUST be
/// treated as failed and corresponding connection MUST be aborted by the client."
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReverseSetupError {
    /// The URI lacks an authority or a path.
    #[error("the {0} URI must be absolute with an authority and a path")]
    NotAbsolute(ReverseExchange),
    /// The authority cannot be a `Host` field.
    #[error("invalid authority {0:?}")]
    BadAuthority(String),
    /// The gateway answered with a status that is not success for this exchange.
    #[error("gateway answered {status} to {exchange}")]
    UnexpectedStatus {
        /// The exchange.
        exchange: ReverseExchange,
        /// The status.
        status: StatusCode,
    },
    /// A `101` whose `Upgrade` is not our token.
    #[error("gateway's 101 does not carry a single Upgrade: {0}")]
    UpgradeMismatch(ReverseExchange),
    /// A `101` without `Connection: upgrade`.
    #[error("gateway's 101 for {0} lacks Connection: upgrade")]
    MissingConnectionUpgrade(ReverseExchange),
    /// The gateway said `Capsule-Protocol: ?0`.
    #[error("gateway's answer to {0} turns the capsule protocol off (Capsule-Protocol: ?0)")]
    CapsuleProtocolOff(ReverseExchange),
}

/// What went wrong with a reverse-connect request; see [`ReverseRejectionKind::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReverseRejectionKind {
    /// Not `GET` (HTTP/1.1) or `CONNECT` (HTTP/2, HTTP/3).
    MethodNotAllowed,
    /// HTTP/1.1 without our `Upgrade` token.
    UpgradeRequired,
    /// `Upgrade` without `Connection: upgrade`.
    MissingConnectionUpgrade,
    /// Not exactly one `Host` (HTTP/1.1), or no `:authority` (HTTP/2, HTTP/3).
    BadHost,
    /// Extended CONNECT without `:protocol`.
    MissingProtocol,
    /// Extended CONNECT with another `:protocol`.
    UnknownProtocol,
    /// The path is not this exchange's endpoint.
    NotFound,
    /// The path is the endpoint but a variable's value is malformed.
    BadPath,
    /// More than one `Authorization` field line.
    DuplicateAuthorization,
    /// The `request_id` names no outstanding request of this client (built by the
    /// caller, which holds the channel).
    UnknownRequest,
    /// Credentials missing or invalid (built by the auth layer).
    Unauthenticated,
    /// The credentials do not allow this (built by the auth layer).
    Forbidden,
}

impl ReverseRejectionKind {
    /// The one place where reverse-connect setup failures map to status codes.
    ///
    /// The draft: "A proxy server receiving a malformed request MUST respond with an error
    /// and SHOULD use the 400 (Bad Request) status code. If request_id template variable
    /// is not matching an outstanding connection request for given client, proxy server
    /// MUST respond with an error and SHOULD use the 404 (Not Found) status code." The
    /// rest follows `crate::setup`'s choices: 405 for the method, 426 for a missing
    /// HTTP/1.1 `Upgrade`, 501 for another `:protocol`, 404 for a path that is not an
    /// endpoint.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::UnknownProtocol => StatusCode::NOT_IMPLEMENTED,
            Self::NotFound | Self::UnknownRequest => StatusCode::NOT_FOUND,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::MissingConnectionUpgrade
            | Self::BadHost
            | Self::MissingProtocol
            | Self::BadPath
            | Self::DuplicateAuthorization => StatusCode::BAD_REQUEST,
        }
    }
}

/// Gateway side: a refused reverse-connect request, ready to become a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseRejection {
    kind: ReverseRejectionKind,
    exchange: ReverseExchange,
    reason: String,
    challenge: Option<HeaderValue>,
}

impl ReverseRejection {
    fn new(
        kind: ReverseRejectionKind,
        exchange: ReverseExchange,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            exchange,
            reason: reason.into(),
            challenge: None,
        }
    }

    /// 404: `request_id` names no outstanding request of this client.
    pub fn unknown_request(id: RequestId) -> Self {
        Self::new(
            ReverseRejectionKind::UnknownRequest,
            ReverseExchange::Accept,
            format!("request {id} is not an outstanding connection request of this client"),
        )
    }

    /// 401 (add a challenge with [`ReverseRejection::with_challenge`]).
    pub fn unauthenticated(exchange: ReverseExchange, reason: impl Into<String>) -> Self {
        Self::new(ReverseRejectionKind::Unauthenticated, exchange, reason)
    }

    /// 403.
    pub fn forbidden(exchange: ReverseExchange, reason: impl Into<String>) -> Self {
        Self::new(ReverseRejectionKind::Forbidden, exchange, reason)
    }

    /// Adds a `WWW-Authenticate` challenge.
    pub fn with_challenge(mut self, challenge: HeaderValue) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ReverseRejectionKind {
        self.kind
    }

    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// A human-readable reason, naming the origin's mistake.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The rejection as a `text/plain` response.
    pub fn to_response(&self) -> Response<String> {
        let mut response = Response::new(format!("{}\n", self.reason));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self.kind {
            ReverseRejectionKind::MethodNotAllowed => {
                // RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field
                // in a 405 response".
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, CONNECT"));
            }
            ReverseRejectionKind::UpgradeRequired => {
                // RFC 9110 §15.5.22: "The server MUST send an Upgrade header field in a 426
                // response".
                headers.insert(
                    header::UPGRADE,
                    HeaderValue::from_static(self.exchange.token()),
                );
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            _ => {}
        }
        if let Some(challenge) = &self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
        response
    }
}

impl fmt::Display for ReverseRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason)
    }
}

impl std::error::Error for ReverseRejection {}

/// Gateway side: a valid `connect-listen` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSetup {
    /// Upgrade or extended CONNECT.
    pub form: SetupForm,
    /// The `target` and `ipproto` the origin named.
    pub scope: ListenScope,
    /// `Authorization`, for the auth layer.
    pub authorization: Option<HeaderValue>,
}

/// Gateway side: a valid `connect-accept` request (whether the ID is outstanding is the
/// channel's to say: [`crate::GatewayChannel::accept`], else
/// [`ReverseRejection::unknown_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptSetup {
    /// Upgrade or extended CONNECT.
    pub form: SetupForm,
    /// The request being accepted.
    pub request_id: RequestId,
    /// `Authorization`, for the auth layer.
    pub authorization: Option<HeaderValue>,
}

/// RFC 9297 §3.4: the `Capsule-Protocol` value, `Some(true)` for `?1`, `Some(false)` for
/// `?0`, `None` when absent or not a single Boolean ("any other value type MUST be handled
/// as if the field were not present by recipients (for example, if this field is included
/// multiple times, its type will become a List and the field will be ignored)").
/// Parameters after `;` are ignored.
pub fn capsule_protocol(headers: &HeaderMap) -> Option<bool> {
    let mut values = headers.get_all(CAPSULE_PROTOCOL).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    let item = text
        .split(';')
        .next()?
        .trim_matches(|c| c == ' ' || c == '\t');
    match item {
        "?1" => Some(true),
        "?0" => Some(false),
        _ => None,
    }
}

fn path_of(uri: &Uri, exchange: ReverseExchange) -> Result<PathAndQuery, ReverseSetupError> {
    match (uri.authority(), uri.path_and_query()) {
        (Some(_), Some(pq)) if pq.path().starts_with('/') => Ok(pq.clone()),
        _ => Err(ReverseSetupError::NotAbsolute(exchange)),
    }
}

fn authority_of(uri: &Uri, exchange: ReverseExchange) -> Result<&Authority, ReverseSetupError> {
    uri.authority()
        .ok_or(ReverseSetupError::NotAbsolute(exchange))
}

/// Origin side, HTTP/1.1: the `GET` + `Upgrade` request for `exchange` to `uri` (an
/// expansion of its template). The target is in origin form; `Host` names the gateway.
pub fn reverse_upgrade_request(
    exchange: ReverseExchange,
    uri: &Uri,
    authorization: Option<HeaderValue>,
) -> Result<Request<()>, ReverseSetupError> {
    // The draft (accept): "The method SHALL be "GET"", "a single "Host" header field
    // containing the origin of the proxy", "Connection" "Upgrade", "Upgrade" with the
    // token; its examples and RFC 9297 §3.4 add "Capsule-Protocol: ?1".
    let path = path_of(uri, exchange)?;
    let authority = authority_of(uri, exchange)?;
    let host = HeaderValue::from_str(authority.as_str())
        .map_err(|_| ReverseSetupError::BadAuthority(authority.to_string()))?;
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = Uri::from(path);
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    headers.insert(header::HOST, host);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static(exchange.token()));
    headers.insert(CAPSULE_PROTOCOL, HeaderValue::from_static("?1"));
    if let Some(auth) = authorization {
        headers.insert(header::AUTHORIZATION, auth);
    }
    Ok(request)
}

/// Origin side, HTTP/2 or HTTP/3: the extended CONNECT request for `exchange` to `uri`,
/// and its `:protocol` value.
pub fn reverse_connect_request(
    exchange: ReverseExchange,
    uri: &Uri,
    authorization: Option<HeaderValue>,
) -> Result<(Request<()>, &'static str), ReverseSetupError> {
    // The draft: ":method" "CONNECT", ":protocol" the token, ":authority" the proxy,
    // ":path" and ":scheme" from the expanded template; "capsule-protocol = ?1".
    path_of(uri, exchange)?;
    let mut request = Request::new(());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = uri.clone();
    let headers = request.headers_mut();
    headers.insert(CAPSULE_PROTOCOL, HeaderValue::from_static("?1"));
    if let Some(auth) = authorization {
        headers.insert(header::AUTHORIZATION, auth);
    }
    Ok((request, exchange.token()))
}

/// Gateway side: the success answer for a validated setup of `exchange`.
pub fn reverse_response(exchange: ReverseExchange, form: SetupForm) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = match form {
        SetupForm::Upgrade => StatusCode::SWITCHING_PROTOCOLS,
        SetupForm::ExtendedConnect => StatusCode::OK,
    };
    let headers = response.headers_mut();
    headers.insert(CAPSULE_PROTOCOL, HeaderValue::from_static("?1"));
    if form == SetupForm::Upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static(exchange.token()));
    }
    response
}

/// Origin side: checks the gateway's answer to a request of `form` for `exchange`.
///
/// Upgrade: `101`, `Connection: upgrade`, a single `Upgrade` naming the token. Extended
/// CONNECT: any `2xx`. Either way `Capsule-Protocol: ?0` is refused (the answer must
/// "meet the requirements of HTTP responses that start the Capsule Protocol"); its
/// absence is tolerated, as RFC 9297 §3.4 makes the field optional.
pub fn validate_reverse_response(
    response: &impl ResponseHead,
    exchange: ReverseExchange,
    form: SetupForm,
) -> Result<(), ReverseSetupError> {
    let status = response.status();
    let headers = response.headers();
    match form {
        SetupForm::Upgrade => {
            if status != StatusCode::SWITCHING_PROTOCOLS {
                return Err(ReverseSetupError::UnexpectedStatus { exchange, status });
            }
            let mut upgrades = headers.get_all(header::UPGRADE).iter();
            let single = match (upgrades.next(), upgrades.next()) {
                (Some(v), None) => v
                    .to_str()
                    .is_ok_and(|t| t.trim().eq_ignore_ascii_case(exchange.token())),
                _ => false,
            };
            if !single {
                return Err(ReverseSetupError::UpgradeMismatch(exchange));
            }
            if !has_connection_upgrade(headers) {
                return Err(ReverseSetupError::MissingConnectionUpgrade(exchange));
            }
        }
        SetupForm::ExtendedConnect => {
            if !status.is_success() {
                return Err(ReverseSetupError::UnexpectedStatus { exchange, status });
            }
        }
    }
    if capsule_protocol(headers) == Some(false) {
        return Err(ReverseSetupError::CapsuleProtocolOff(exchange));
    }
    Ok(())
}

/// The checks both exchanges share: method, form, Host or `:authority`, `Authorization`.
fn common(
    request: &impl RequestHead,
    protocol: Option<&str>,
    exchange: ReverseExchange,
) -> Result<(SetupForm, Option<HeaderValue>), ReverseRejection> {
    let reject = |kind, reason: String| ReverseRejection::new(kind, exchange, reason);
    let headers = request.headers();
    let form = if request.method() == Method::GET {
        if find_upgrade(headers, &[exchange.token()]).is_none() {
            return Err(reject(
                ReverseRejectionKind::UpgradeRequired,
                format!("the origin's request lacks Upgrade: {exchange}"),
            ));
        }
        if !has_connection_upgrade(headers) {
            return Err(reject(
                ReverseRejectionKind::MissingConnectionUpgrade,
                "the origin's Upgrade request lacks Connection: upgrade".into(),
            ));
        }
        // "The request SHALL include a single "Host" header field".
        if headers.get_all(header::HOST).iter().count() != 1 {
            return Err(reject(
                ReverseRejectionKind::BadHost,
                "the origin's request must carry exactly one Host field".into(),
            ));
        }
        SetupForm::Upgrade
    } else if request.method() == Method::CONNECT {
        match protocol {
            None => {
                return Err(reject(
                    ReverseRejectionKind::MissingProtocol,
                    format!("the origin's CONNECT lacks :protocol {exchange}"),
                ))
            }
            Some(p) if p != exchange.token() => {
                return Err(reject(
                    ReverseRejectionKind::UnknownProtocol,
                    format!("the origin's :protocol {p:?} is not {exchange}"),
                ))
            }
            Some(_) => {}
        }
        // ":authority pseudo-header field SHALL contain the authority of the proxy".
        if request.uri().authority().is_none() {
            return Err(reject(
                ReverseRejectionKind::BadHost,
                "the origin's CONNECT lacks :authority".into(),
            ));
        }
        SetupForm::ExtendedConnect
    } else {
        return Err(reject(
            ReverseRejectionKind::MethodNotAllowed,
            format!(
                "{exchange} takes GET (HTTP/1.1) or CONNECT (HTTP/2, HTTP/3), not {}",
                request.method()
            ),
        ));
    };
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let authorization = auth.next().cloned();
    if auth.next().is_some() {
        return Err(reject(
            ReverseRejectionKind::DuplicateAuthorization,
            "the origin's request carries more than one Authorization field".into(),
        ));
    }
    Ok((form, authorization))
}

fn path_rejection(
    exchange: ReverseExchange,
    path: &str,
    err: ReverseTemplateError,
) -> ReverseRejection {
    match err {
        ReverseTemplateError::NotUnderPrefix(prefix) => ReverseRejection::new(
            ReverseRejectionKind::NotFound,
            exchange,
            format!("{path} is not a {exchange} endpoint (expected {prefix}...)"),
        ),
        other => ReverseRejection::new(
            ReverseRejectionKind::BadPath,
            exchange,
            format!("the origin's {exchange} path is malformed: {other}"),
        ),
    }
}

/// Gateway side: validates a `connect-listen` request (HTTP/1.1 `GET` + `Upgrade`, or
/// extended CONNECT with `protocol` its `:protocol`) to the default listen path.
pub fn validate_listen_request(
    request: &impl RequestHead,
    protocol: Option<&str>,
) -> Result<ListenSetup, ReverseRejection> {
    let exchange = ReverseExchange::Listen;
    let (form, authorization) = common(request, protocol, exchange)?;
    let path = request.uri().path();
    let scope =
        reverse_template::parse_listen_path(path).map_err(|e| path_rejection(exchange, path, e))?;
    Ok(ListenSetup {
        form,
        scope,
        authorization,
    })
}

/// Gateway side: validates a `connect-accept` request to the default accept path.
pub fn validate_accept_request(
    request: &impl RequestHead,
    protocol: Option<&str>,
) -> Result<AcceptSetup, ReverseRejection> {
    let exchange = ReverseExchange::Accept;
    let (form, authorization) = common(request, protocol, exchange)?;
    let path = request.uri().path();
    let request_id =
        reverse_template::parse_accept_path(path).map_err(|e| path_rejection(exchange, path, e))?;
    Ok(AcceptSetup {
        form,
        request_id,
        authorization,
    })
}

/// Whether `path` is under one of the two default prefixes, and which.
pub fn reverse_exchange_for_path(path: &str) -> Option<ReverseExchange> {
    if path.starts_with(LISTEN_PREFIX) {
        Some(ReverseExchange::Listen)
    } else if path.starts_with(ACCEPT_PREFIX) {
        Some(ReverseExchange::Accept)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reverse_connect::IpProtocol;
    use crate::reverse_template::{IpProtoScope, ListenTarget, ReverseTemplate};

    fn gateway() -> Authority {
        "example.org".parse().unwrap()
    }

    fn listen_uri() -> Uri {
        ReverseTemplate::default_for(ReverseExchange::Listen, &gateway())
            .unwrap()
            .expand_listen(Some(&ListenTarget::LocalOnly), Some(IpProtoScope::Any))
            .unwrap()
    }

    fn accept_uri(id: u64) -> Uri {
        ReverseTemplate::default_for(ReverseExchange::Accept, &gateway())
            .unwrap()
            .expand_accept(RequestId::new(id).unwrap())
            .unwrap()
    }

    #[test]
    fn listen_over_http11_matches_the_drafts_example() {
        let request = reverse_upgrade_request(
            ReverseExchange::Listen,
            &listen_uri(),
            Some(HeaderValue::from_static("Bearer t")),
        )
        .unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/.well-known/masque/listen/./%2A/");
        let h = request.headers();
        assert_eq!(h[header::HOST], "example.org");
        assert_eq!(h[header::CONNECTION], "Upgrade");
        assert_eq!(h[header::UPGRADE], "connect-listen");
        assert_eq!(h[CAPSULE_PROTOCOL], "?1");

        let setup = validate_listen_request(&request, None).unwrap();
        assert_eq!(setup.form, SetupForm::Upgrade);
        assert_eq!(setup.scope.target, Some(ListenTarget::LocalOnly));
        assert_eq!(setup.scope.ipproto, Some(IpProtoScope::Any));
        assert_eq!(setup.authorization.unwrap(), "Bearer t");

        let response = reverse_response(ReverseExchange::Listen, setup.form);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[header::UPGRADE], "connect-listen");
        assert_eq!(response.headers()[CAPSULE_PROTOCOL], "?1");
        validate_reverse_response(&response, ReverseExchange::Listen, SetupForm::Upgrade).unwrap();
    }

    #[test]
    fn accept_over_h2_and_h3_matches_the_drafts_example() {
        let (request, protocol) =
            reverse_connect_request(ReverseExchange::Accept, &accept_uri(1), None).unwrap();
        assert_eq!(protocol, "connect-accept");
        assert_eq!(request.method(), Method::CONNECT);
        assert_eq!(
            request.uri(),
            "https://example.org/.well-known/masque/accept/1/"
        );
        assert_eq!(request.headers()[CAPSULE_PROTOCOL], "?1");
        let setup = validate_accept_request(&request, Some(protocol)).unwrap();
        assert_eq!(setup.form, SetupForm::ExtendedConnect);
        assert_eq!(setup.request_id.get(), 1);
        let response = reverse_response(ReverseExchange::Accept, setup.form);
        assert_eq!(response.status(), StatusCode::OK);
        validate_reverse_response(
            &response,
            ReverseExchange::Accept,
            SetupForm::ExtendedConnect,
        )
        .unwrap();
    }

    #[test]
    fn every_combination_round_trips() {
        for exchange in [ReverseExchange::Listen, ReverseExchange::Accept] {
            let uri = match exchange {
                ReverseExchange::Listen => listen_uri(),
                ReverseExchange::Accept => accept_uri(42),
            };
            let h1 = reverse_upgrade_request(exchange, &uri, None).unwrap();
            let (h2, protocol) = reverse_connect_request(exchange, &uri, None).unwrap();
            for (request, protocol, form) in [
                (h1, None, SetupForm::Upgrade),
                (h2, Some(protocol), SetupForm::ExtendedConnect),
            ] {
                let ok = match exchange {
                    ReverseExchange::Listen => {
                        validate_listen_request(&request, protocol).map(|s| s.form)
                    }
                    ReverseExchange::Accept => {
                        validate_accept_request(&request, protocol).map(|s| s.form)
                    }
                };
                assert_eq!(ok, Ok(form), "{exchange} {form:?}");
                validate_reverse_response(&reverse_response(exchange, form), exchange, form)
                    .unwrap();
                // The other exchange's validator refuses it.
                let other = match exchange {
                    ReverseExchange::Listen => validate_accept_request(&request, protocol).err(),
                    ReverseExchange::Accept => validate_listen_request(&request, protocol).err(),
                };
                assert!(other.is_some(), "{exchange} {form:?}");
            }
        }
    }

    fn status_of(r: Result<impl fmt::Debug, ReverseRejection>) -> StatusCode {
        r.unwrap_err().status()
    }

    #[test]
    fn malformed_requests_get_the_drafts_statuses() {
        let good = reverse_upgrade_request(ReverseExchange::Accept, &accept_uri(5), None).unwrap();

        let mut r = good.clone();
        *r.method_mut() = Method::POST;
        let rejection = validate_accept_request(&r, None).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            rejection.to_response().headers()[header::ALLOW],
            "GET, CONNECT"
        );

        let mut r = good.clone();
        r.headers_mut().remove(header::UPGRADE);
        let rejection = validate_accept_request(&r, None).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(
            rejection.to_response().headers()[header::UPGRADE],
            "connect-accept"
        );

        let mut r = good.clone();
        r.headers_mut().remove(header::CONNECTION);
        assert_eq!(
            status_of(validate_accept_request(&r, None)),
            StatusCode::BAD_REQUEST
        );

        let mut r = good.clone();
        r.headers_mut()
            .append(header::HOST, HeaderValue::from_static("evil.example"));
        assert_eq!(
            status_of(validate_accept_request(&r, None)),
            StatusCode::BAD_REQUEST
        );

        let mut r = good.clone();
        r.headers_mut()
            .append(header::AUTHORIZATION, HeaderValue::from_static("a"));
        r.headers_mut()
            .append(header::AUTHORIZATION, HeaderValue::from_static("b"));
        assert_eq!(
            status_of(validate_accept_request(&r, None)),
            StatusCode::BAD_REQUEST
        );

        let mut r = good.clone();
        *r.uri_mut() = "/.well-known/masque/accept/007/".parse().unwrap();
        let rejection = validate_accept_request(&r, None).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::BAD_REQUEST);
        assert!(rejection
            .reason()
            .starts_with("the origin's connect-accept path is malformed"));

        let mut r = good;
        *r.uri_mut() = "/elsewhere".parse().unwrap();
        assert_eq!(
            status_of(validate_accept_request(&r, None)),
            StatusCode::NOT_FOUND
        );

        let (connect, _) =
            reverse_connect_request(ReverseExchange::Listen, &listen_uri(), None).unwrap();
        assert_eq!(
            status_of(validate_listen_request(&connect, None)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(validate_listen_request(&connect, Some("connect-udp"))),
            StatusCode::NOT_IMPLEMENTED
        );
        let mut no_authority = connect;
        *no_authority.uri_mut() = "/.well-known/masque/listen/./6/".parse().unwrap();
        assert_eq!(
            status_of(validate_listen_request(
                &no_authority,
                Some("connect-listen")
            )),
            StatusCode::BAD_REQUEST
        );

        assert_eq!(
            ReverseRejection::unknown_request(RequestId::new(5).unwrap()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn bad_answers_abort_the_origin() {
        let ok = reverse_response(ReverseExchange::Listen, SetupForm::Upgrade);
        let check = |r: &Response<()>| {
            validate_reverse_response(r, ReverseExchange::Listen, SetupForm::Upgrade)
        };
        let mut r = ok.clone();
        *r.status_mut() = StatusCode::OK;
        assert!(matches!(
            check(&r),
            Err(ReverseSetupError::UnexpectedStatus { .. })
        ));
        let mut r = ok.clone();
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("connect-accept"));
        assert_eq!(
            check(&r),
            Err(ReverseSetupError::UpgradeMismatch(ReverseExchange::Listen))
        );
        let mut r = ok.clone();
        r.headers_mut()
            .append(header::UPGRADE, HeaderValue::from_static("connect-listen"));
        assert_eq!(
            check(&r),
            Err(ReverseSetupError::UpgradeMismatch(ReverseExchange::Listen))
        );
        let mut r = ok.clone();
        r.headers_mut().remove(header::CONNECTION);
        assert!(check(&r).is_err());
        let mut r = ok.clone();
        r.headers_mut()
            .insert(CAPSULE_PROTOCOL, HeaderValue::from_static("?0"));
        assert_eq!(
            check(&r),
            Err(ReverseSetupError::CapsuleProtocolOff(
                ReverseExchange::Listen
            ))
        );
        let mut r = ok;
        r.headers_mut().remove(CAPSULE_PROTOCOL);
        assert!(check(&r).is_ok());

        let mut r = reverse_response(ReverseExchange::Accept, SetupForm::ExtendedConnect);
        *r.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(
            validate_reverse_response(&r, ReverseExchange::Accept, SetupForm::ExtendedConnect),
            Err(ReverseSetupError::UnexpectedStatus {
                exchange: ReverseExchange::Accept,
                status: StatusCode::NOT_FOUND
            })
        );
    }

    #[test]
    fn capsule_protocol_is_a_single_boolean() {
        let mut h = HeaderMap::new();
        assert_eq!(capsule_protocol(&h), None);
        h.insert(CAPSULE_PROTOCOL, HeaderValue::from_static("?1;foo=bar"));
        assert_eq!(capsule_protocol(&h), Some(true));
        h.insert(CAPSULE_PROTOCOL, HeaderValue::from_static("?0"));
        assert_eq!(capsule_protocol(&h), Some(false));
        h.append(CAPSULE_PROTOCOL, HeaderValue::from_static("?1"));
        assert_eq!(capsule_protocol(&h), None);
        h.insert(CAPSULE_PROTOCOL, HeaderValue::from_static("1"));
        assert_eq!(capsule_protocol(&h), None);
    }

    #[test]
    fn a_listen_scope_limits_protocols() {
        let scope = IpProtoScope::Only(IpProtocol::Tcp);
        assert!(scope.allows(IpProtocol::Tcp) && !scope.allows(IpProtocol::Udp));
        assert!(IpProtoScope::Any.allows(IpProtocol::Udp));
        assert_eq!(
            reverse_exchange_for_path("/.well-known/masque/accept/1/"),
            Some(ReverseExchange::Accept)
        );
        assert_eq!(reverse_exchange_for_path("/.well-known/ptth/x/"), None);
    }
}
