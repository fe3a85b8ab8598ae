//! Setup exchanges, both sides, on `http` types: building setup requests and responses,
//! and validating them.
//!
//! | mechanism | origin sends | gateway answers |
//! |---|---|---|
//! | PTTH -01 over HTTP/1.1 | `GET` + `Upgrade: ptth` + `ALPN` list | `101` + `Upgrade: ptth` + `ALPN` choice |
//! | PTTH -01 over HTTP/2, HTTP/3 | `CONNECT` + `:protocol = ptth` + `alpn` list | `2xx` + `alpn` choice |
//! | PTTH -00 over HTTP/3 | `OPTIONS <endpoint>` | `2xx` |
//! | lentczner PTTH/1.0 | `POST` + `Upgrade: PTTH/1.0` | `101` + `Upgrade: PTTH/1.0` |
//!
//! The `:protocol` pseudo-header has no place in `http` types, so it is passed
//! separately as a `&str`; callers map it to `hyper::ext::Protocol` or `h2::ext::Protocol`.
//!
//! Every gateway-side failure is a [`SetupRejection`], and the mapping from what went
//! wrong to an HTTP status lives in one function, [`RejectionKind::status`].

use std::fmt;

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};

use crate::alpn::{self, AlpnError, ProtocolId};
use crate::mechanism::SetupKind;
use crate::origin::SerializedOrigin;
use crate::template::{self, TemplateError};
use crate::tokens::SetupTokens;

/// What the origin needs to build a setup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupRequestParams {
    /// The gateway's authority (`proxy.example.org[:port]`).
    pub gateway_authority: Authority,
    /// The origins to register; non-empty for PTTH -01.
    pub origins: Vec<SerializedOrigin>,
    /// The protocols the origin will serve on the channel, in preference order.
    pub offered: Vec<ProtocolId>,
    /// Credentials, sent as `Authorization`.
    pub authorization: Option<HeaderValue>,
}

/// Origin side: why a setup request could not be built or the gateway's answer is not
/// acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// PTTH -01 needs at least one origin.
    #[error("no origins to register")]
    NoOrigins,
    /// PTTH -01 needs at least one offered protocol.
    #[error("no protocols offered")]
    NothingOffered,
    /// A token or path in the configuration cannot appear in a request.
    #[error("invalid setup request: {0}")]
    InvalidRequest(String),
    /// The gateway answered with a status that is not success for this exchange.
    #[error("gateway answered {0}")]
    UnexpectedStatus(StatusCode),
    /// A `101` without our token in `Upgrade`.
    #[error("gateway's Upgrade header does not name {expected:?}")]
    UpgradeMismatch {
        /// The token expected.
        expected: String,
    },
    /// A `101` without `upgrade` in `Connection`.
    #[error("gateway's 101 lacks Connection: upgrade")]
    MissingConnectionUpgrade,
    /// The `ALPN` response field is missing or malformed.
    #[error("gateway's ALPN response field: {0}")]
    Alpn(#[from] AlpnError),
    /// The gateway chose a protocol the origin did not offer.
    #[error("gateway chose {chosen}, which the origin did not offer")]
    NotOffered {
        /// What the gateway chose.
        chosen: ProtocolId,
    },
}

/// Gateway side: what a valid setup request established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedSetup {
    /// Which exchange it was.
    pub kind: SetupKind,
    /// The origins named by the well-known path; empty for legacy and OPTIONS setups to a
    /// path outside the well-known prefix.
    pub origins: Vec<SerializedOrigin>,
    /// What the origin offered (empty where the exchange has no `ALPN`).
    pub offered: Vec<ProtocolId>,
    /// The gateway's pick: the first of its `supported` list that the origin offered
    /// (`http/1.1` for legacy, `h3` for OPTIONS).
    pub chosen: ProtocolId,
    /// The `Authorization` field, if any, for the auth layer.
    pub authorization: Option<HeaderValue>,
    /// The `Upgrade` token or `:protocol` as received (for example `ptth`, `PTTH/0.9`);
    /// empty for OPTIONS.
    pub upgrade_token: String,
}

/// What went wrong with a setup request; see [`RejectionKind::status`] for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The method is wrong for this exchange.
    MethodNotAllowed,
    /// No `Upgrade` field, or none of its tokens is ours.
    UpgradeRequired,
    /// `Upgrade` without `Connection: upgrade`.
    MissingConnectionUpgrade,
    /// Extended CONNECT without `:protocol`.
    MissingProtocol,
    /// Extended CONNECT with a `:protocol` we do not implement.
    UnknownProtocol,
    /// The path is not a PTTH endpoint.
    NotFound,
    /// The path is a PTTH endpoint but the origin list is malformed.
    BadOriginList,
    /// `OPTIONS *`, which PTTH -00 never uses.
    AsteriskForm,
    /// No `ALPN` field.
    MissingAlpn,
    /// A malformed `ALPN` field.
    MalformedAlpn,
    /// The origin offered nothing the gateway supports.
    NoCommonProtocol,
    /// More than one `Authorization` field line.
    DuplicateAuthorization,
    /// Credentials are missing or invalid (constructed by the auth layer).
    Unauthenticated,
    /// The credentials do not allow this registration (constructed by the auth layer).
    Forbidden,
}

impl RejectionKind {
    /// The one place where setup failures map to HTTP status codes.
    ///
    /// draft-kazuho-ptth-ptth-01 leaves error codes open (digest §3.9 item 2). Choices:
    /// - Protocol-level problems with the request (`ALPN`, origin list, `:protocol`
    ///   missing, `Connection`) are 400.
    /// - An offer with no protocol in common is 400 too: 426 is about `Upgrade` tokens and
    ///   RFC 9110 §15.5.22 requires it to carry an `Upgrade` field, which names protocols,
    ///   not ALPN identifiers.
    /// - A missing or foreign `Upgrade` token is 426 Upgrade Required.
    /// - A `:protocol` we do not implement is 501 Not Implemented (426 is meaningless in
    ///   HTTP/2 and HTTP/3, which forbid `Upgrade`).
    /// - A path outside the well-known prefix is 404 (the resource is not a PTTH
    ///   endpoint); a malformed list under the prefix is 400.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::UnknownProtocol => StatusCode::NOT_IMPLEMENTED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::MissingConnectionUpgrade
            | Self::MissingProtocol
            | Self::BadOriginList
            | Self::AsteriskForm
            | Self::MissingAlpn
            | Self::MalformedAlpn
            | Self::NoCommonProtocol
            | Self::DuplicateAuthorization => StatusCode::BAD_REQUEST,
        }
    }
}

/// Gateway side: a refused setup request, ready to become a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupRejection {
    kind: RejectionKind,
    reason: String,
    allow: Option<&'static str>,
    upgrade: Option<String>,
    challenge: Option<HeaderValue>,
}

impl SetupRejection {
    fn new(kind: RejectionKind, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
            allow: None,
            upgrade: None,
            challenge: None,
        }
    }

    fn method(allow: &'static str) -> Self {
        let mut r = Self::new(
            RejectionKind::MethodNotAllowed,
            format!("this endpoint only accepts {allow}"),
        );
        r.allow = Some(allow);
        r
    }

    fn upgrade_required(token: &str) -> Self {
        let mut r = Self::new(
            RejectionKind::UpgradeRequired,
            format!("this endpoint requires Upgrade: {token}"),
        );
        r.upgrade = Some(token.to_owned());
        r
    }

    /// 401: the auth layer found no usable credentials. Add a challenge with
    /// [`SetupRejection::with_challenge`]; RFC 9110 §15.5.2 requires one in a 401.
    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self::new(RejectionKind::Unauthenticated, reason)
    }

    /// 403: the credentials are valid but do not allow this registration.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        Self::new(RejectionKind::Forbidden, reason)
    }

    /// Adds a `WWW-Authenticate` challenge to the response.
    pub fn with_challenge(mut self, challenge: HeaderValue) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// A human-readable reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The rejection as a response with a `text/plain` body.
    pub fn to_response(&self) -> Response<String> {
        let mut response = Response::new(format!("{}\n", self.reason));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(allow) = self.allow {
            // RFC 9110 §15.5.6: "The origin server MUST generate an Allow header field in
            // a 405 response".
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Some(value) = self
            .upgrade
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            // RFC 9110 §15.5.22: "The server MUST send an Upgrade header field in a 426
            // response to indicate the required protocol(s)".
            headers.insert(header::UPGRADE, value);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        if let Some(challenge) = &self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
        }
        response
    }
}

impl fmt::Display for SetupRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status(), self.reason)
    }
}

impl std::error::Error for SetupRejection {}

mod sealed {
    pub trait Sealed {}
}

/// A request head: implemented for `http::request::Parts` and `http::Request<B>`.
pub trait RequestHead: sealed::Sealed {
    /// The method.
    fn method(&self) -> &Method;
    /// The target URI.
    fn uri(&self) -> &Uri;
    /// The header fields.
    fn headers(&self) -> &HeaderMap;
}

impl sealed::Sealed for http::request::Parts {}
impl RequestHead for http::request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }
    fn uri(&self) -> &Uri {
        &self.uri
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl<B> sealed::Sealed for Request<B> {}
impl<B> RequestHead for Request<B> {
    fn method(&self) -> &Method {
        self.method()
    }
    fn uri(&self) -> &Uri {
        self.uri()
    }
    fn headers(&self) -> &HeaderMap {
        self.headers()
    }
}

/// A response head: implemented for `http::response::Parts` and `http::Response<B>`.
pub trait ResponseHead: sealed::Sealed {
    /// The status.
    fn status(&self) -> StatusCode;
    /// The header fields.
    fn headers(&self) -> &HeaderMap;
}

impl sealed::Sealed for http::response::Parts {}
impl ResponseHead for http::response::Parts {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl<B> sealed::Sealed for Response<B> {}
impl<B> ResponseHead for Response<B> {
    fn status(&self) -> StatusCode {
        self.status()
    }
    fn headers(&self) -> &HeaderMap {
        self.headers()
    }
}

fn header_value(text: &str) -> Result<HeaderValue, SetupError> {
    HeaderValue::from_str(text).map_err(|_| SetupError::InvalidRequest(format!("{text:?}")))
}

fn path_and_query(path: &str) -> Result<PathAndQuery, SetupError> {
    path.parse::<PathAndQuery>()
        .map_err(|_| SetupError::InvalidRequest(format!("path {path:?}")))
}

fn well_known_path(
    params: &SetupRequestParams,
    tokens: &SetupTokens,
) -> Result<PathAndQuery, SetupError> {
    if params.origins.is_empty() {
        return Err(SetupError::NoOrigins);
    }
    path_and_query(&template::expand_well_known(&params.origins, tokens))
}

fn absolute_uri(authority: &Authority, path: PathAndQuery) -> Result<Uri, SetupError> {
    Uri::builder()
        .scheme(Scheme::HTTPS)
        .authority(authority.clone())
        .path_and_query(path)
        .build()
        .map_err(|e| SetupError::InvalidRequest(e.to_string()))
}

fn offered_list(params: &SetupRequestParams) -> Result<HeaderValue, SetupError> {
    if params.offered.is_empty() {
        return Err(SetupError::NothingOffered);
    }
    Ok(alpn::encode_list(&params.offered))
}

/// Origin side, PTTH -01 over HTTP/1.1: the `GET` + `Upgrade` setup request.
///
/// The URI is in origin form (the well-known path) and `Host` names the gateway.
pub fn upgrade_request(
    params: &SetupRequestParams,
    tokens: &SetupTokens,
) -> Result<Request<()>, SetupError> {
    // draft-kazuho-ptth-ptth-01 §3: "the client sends a GET request with Connection:
    // upgrade and Upgrade: ptth ... The request MUST include an ALPN header field".
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = Uri::from(well_known_path(params, tokens)?);
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    headers.insert(
        header::HOST,
        header_value(params.gateway_authority.as_str())?,
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, header_value(tokens.upgrade)?);
    headers.insert(alpn::ALPN, offered_list(params)?);
    if let Some(auth) = &params.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    Ok(request)
}

/// Origin side, PTTH -01 over HTTP/2 or HTTP/3: the extended CONNECT setup request and
/// its `:protocol` value.
pub fn connect_request(
    params: &SetupRequestParams,
    tokens: &SetupTokens,
) -> Result<(Request<()>, &'static str), SetupError> {
    // RFC 8441 §4 / RFC 9220 §3: extended CONNECT carries :protocol, :scheme and :path;
    // draft-kazuho-ptth-ptth-01 §3 adds authorization and alpn.
    let mut request = Request::new(());
    *request.method_mut() = Method::CONNECT;
    *request.uri_mut() = absolute_uri(&params.gateway_authority, well_known_path(params, tokens)?)?;
    let headers = request.headers_mut();
    headers.insert(alpn::ALPN, offered_list(params)?);
    if let Some(auth) = &params.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    Ok((request, tokens.connect_protocol))
}

/// Origin side, PTTH -00 over HTTP/3: `OPTIONS` to the endpoint URI. `offered` is not
/// sent; the channel is this same HTTP/3 connection.
pub fn options_request(
    params: &SetupRequestParams,
    tokens: &SetupTokens,
) -> Result<Request<()>, SetupError> {
    // draft-kazuho-ptth-ptth-00 §3: the client sends OPTIONS to the PTTH endpoint; "OPTIONS *
    // is never used". No :protocol and no ALPN.
    let mut request = Request::new(());
    *request.method_mut() = Method::OPTIONS;
    *request.uri_mut() = absolute_uri(&params.gateway_authority, well_known_path(params, tokens)?)?;
    if let Some(auth) = &params.authorization {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, auth.clone());
    }
    Ok(request)
}

/// Origin side, lentczner PTTH/1.0: `POST` with `Upgrade: PTTH/1.0`,
/// `Connection: Upgrade` and `Content-Length: 0`. `target` is a path, or an absolute URI
/// whose authority becomes `Host`.
pub fn legacy_request(
    target: &str,
    authorization: Option<HeaderValue>,
    tokens: &SetupTokens,
) -> Result<Request<()>, SetupError> {
    // draft-lentczner-rhttp-00 (as deployed by npm reverse-http, AirPlay): "POST" with
    // "Upgrade: PTTH/1.0" and "Connection: Upgrade"; the 101 switches roles.
    let uri: Uri = target
        .parse()
        .map_err(|_| SetupError::InvalidRequest(format!("target {target:?}")))?;
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.version_mut() = Version::HTTP_11;
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if let Some(authority) = uri.authority() {
        request
            .headers_mut()
            .insert(header::HOST, header_value(authority.as_str())?);
    }
    *request.uri_mut() = Uri::from(path);
    let headers = request.headers_mut();
    headers.insert(header::UPGRADE, header_value(tokens.legacy_upgrade)?);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Some(auth) = authorization {
        headers.insert(header::AUTHORIZATION, auth);
    }
    Ok(request)
}

/// Iterates the comma-separated elements of every line of a list field.
pub(crate) fn list_elements<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|e| !e.is_empty())
}

/// The first `Upgrade` element equal (ASCII case-insensitively) to one of `tokens`.
pub(crate) fn find_upgrade<'a>(headers: &'a HeaderMap, tokens: &[&str]) -> Option<&'a str> {
    list_elements(headers, &header::UPGRADE)
        .find(|e| tokens.iter().any(|t| e.eq_ignore_ascii_case(t)))
}

pub(crate) fn has_connection_upgrade(headers: &HeaderMap) -> bool {
    // RFC 9110 §7.8: "A sender of Upgrade MUST also send an "Upgrade" connection option in
    // the Connection header field".
    list_elements(headers, &header::CONNECTION).any(|e| e.eq_ignore_ascii_case("upgrade"))
}

fn chosen_offered(headers: &HeaderMap, offered: &[ProtocolId]) -> Result<ProtocolId, SetupError> {
    // draft-kazuho-ptth-ptth-01 §3: the response carries "exactly one" protocol, chosen
    // from the request's list.
    let chosen = alpn::parse_single(headers)?;
    if !offered.contains(&chosen) {
        return Err(SetupError::NotOffered { chosen });
    }
    Ok(chosen)
}

/// Origin side: checks the gateway's answer to [`upgrade_request`] and returns the
/// protocol to serve.
pub fn validate_upgrade_response(
    response: &impl ResponseHead,
    offered: &[ProtocolId],
    tokens: &SetupTokens,
) -> Result<ProtocolId, SetupError> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(SetupError::UnexpectedStatus(response.status()));
    }
    let headers = response.headers();
    if find_upgrade(headers, &[tokens.upgrade]).is_none() {
        return Err(SetupError::UpgradeMismatch {
            expected: tokens.upgrade.to_owned(),
        });
    }
    if !has_connection_upgrade(headers) {
        return Err(SetupError::MissingConnectionUpgrade);
    }
    chosen_offered(headers, offered)
}

/// Origin side: checks the gateway's answer to [`connect_request`] (any 2xx carrying one
/// offered `alpn`).
///
/// `tokens` is unused today (the answer carries no token) and is there for symmetry with
/// the other validators.
pub fn validate_connect_response(
    response: &impl ResponseHead,
    offered: &[ProtocolId],
    _tokens: &SetupTokens,
) -> Result<ProtocolId, SetupError> {
    if !response.status().is_success() {
        return Err(SetupError::UnexpectedStatus(response.status()));
    }
    chosen_offered(response.headers(), offered)
}

/// Origin side: checks the gateway's answer to [`options_request`] (any 2xx); the
/// connection then carries reversed `h3`.
pub fn validate_options_response(response: &impl ResponseHead) -> Result<ProtocolId, SetupError> {
    // draft-kazuho-ptth-ptth-00 §3: on any 2xx the gateway starts sending requests.
    if !response.status().is_success() {
        return Err(SetupError::UnexpectedStatus(response.status()));
    }
    Ok(ProtocolId::h3())
}

/// Origin side: checks the gateway's answer to [`legacy_request`] (101 with
/// `Upgrade: PTTH/1.0` or `PTTH/0.9`); the connection then carries reversed `http/1.1`.
pub fn validate_legacy_response(
    response: &impl ResponseHead,
    tokens: &SetupTokens,
) -> Result<ProtocolId, SetupError> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(SetupError::UnexpectedStatus(response.status()));
    }
    if find_upgrade(response.headers(), tokens.legacy_accept).is_none() {
        return Err(SetupError::UpgradeMismatch {
            expected: tokens.legacy_upgrade.to_owned(),
        });
    }
    Ok(ProtocolId::http11())
}

fn origins_from_path(
    path: &str,
    tokens: &SetupTokens,
) -> Result<Vec<SerializedOrigin>, SetupRejection> {
    template::parse_well_known(path, tokens).map_err(|e| match e {
        TemplateError::NotWellKnown => SetupRejection::new(
            RejectionKind::NotFound,
            format!(
                "{path} is not a PTTH endpoint (expected {}...)",
                tokens.well_known_prefix
            ),
        ),
        other => SetupRejection::new(
            RejectionKind::BadOriginList,
            format!("bad origin list: {other}"),
        ),
    })
}

/// Like [`origins_from_path`], but a path outside the prefix gives an empty list.
fn optional_origins(
    path: &str,
    tokens: &SetupTokens,
) -> Result<Vec<SerializedOrigin>, SetupRejection> {
    if template::is_well_known(path, tokens) {
        origins_from_path(path, tokens)
    } else {
        Ok(Vec::new())
    }
}

fn offered_and_chosen(
    headers: &HeaderMap,
    supported: &[ProtocolId],
) -> Result<(Vec<ProtocolId>, ProtocolId), SetupRejection> {
    let offered = alpn::parse_list(headers).map_err(|e| match e {
        AlpnError::Missing => SetupRejection::new(
            RejectionKind::MissingAlpn,
            "the setup request must carry an ALPN header field",
        ),
        other => SetupRejection::new(
            RejectionKind::MalformedAlpn,
            format!("malformed ALPN: {other}"),
        ),
    })?;
    // The gateway's preference order wins: the first supported protocol on offer.
    let chosen = supported
        .iter()
        .find(|s| offered.contains(s))
        .cloned()
        .ok_or_else(|| {
            let list = supported
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            SetupRejection::new(
                RejectionKind::NoCommonProtocol,
                format!(
                    "none of the offered protocols is supported; supported: {}",
                    list.join(", ")
                ),
            )
        })?;
    Ok((offered, chosen))
}

fn authorization(headers: &HeaderMap) -> Result<Option<HeaderValue>, SetupRejection> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let first = values.next().cloned();
    if values.next().is_some() {
        // Two credentials leave it ambiguous whom to authorise; refuse rather than pick.
        return Err(SetupRejection::new(
            RejectionKind::DuplicateAuthorization,
            "more than one Authorization field",
        ));
    }
    Ok(first)
}

/// Gateway side: validates a PTTH -01 HTTP/1.1 setup request.
pub fn validate_upgrade_request(
    request: &impl RequestHead,
    supported: &[ProtocolId],
    tokens: &SetupTokens,
) -> Result<AcceptedSetup, SetupRejection> {
    if request.method() != Method::GET {
        return Err(SetupRejection::method("GET"));
    }
    let headers = request.headers();
    let token = find_upgrade(headers, &[tokens.upgrade])
        .ok_or_else(|| SetupRejection::upgrade_required(tokens.upgrade))?
        .to_owned();
    if !has_connection_upgrade(headers) {
        return Err(SetupRejection::new(
            RejectionKind::MissingConnectionUpgrade,
            "Upgrade requires Connection: upgrade",
        ));
    }
    let origins = origins_from_path(request.uri().path(), tokens)?;
    let (offered, chosen) = offered_and_chosen(headers, supported)?;
    Ok(AcceptedSetup {
        kind: SetupKind::Upgrade,
        origins,
        offered,
        chosen,
        authorization: authorization(headers)?,
        upgrade_token: token,
    })
}

/// Gateway side: validates a PTTH -01 extended CONNECT setup request; `protocol` is the
/// `:protocol` pseudo-header.
pub fn validate_connect_request(
    request: &impl RequestHead,
    protocol: Option<&str>,
    supported: &[ProtocolId],
    tokens: &SetupTokens,
) -> Result<AcceptedSetup, SetupRejection> {
    if request.method() != Method::CONNECT {
        return Err(SetupRejection::method("CONNECT"));
    }
    let protocol = protocol.ok_or_else(|| {
        SetupRejection::new(
            RejectionKind::MissingProtocol,
            "a PTTH setup is an extended CONNECT with :protocol",
        )
    })?;
    // RFC 8441 §4 / RFC 9220: :protocol values are Upgrade tokens; compare like them.
    if !protocol.eq_ignore_ascii_case(tokens.connect_protocol) {
        return Err(SetupRejection::new(
            RejectionKind::UnknownProtocol,
            format!(
                ":protocol {protocol:?} is not supported; expected {}",
                tokens.connect_protocol
            ),
        ));
    }
    let headers = request.headers();
    let origins = origins_from_path(request.uri().path(), tokens)?;
    let (offered, chosen) = offered_and_chosen(headers, supported)?;
    Ok(AcceptedSetup {
        kind: SetupKind::ExtendedConnect,
        origins,
        offered,
        chosen,
        authorization: authorization(headers)?,
        upgrade_token: protocol.to_owned(),
    })
}

/// Gateway side: validates a PTTH -00 HTTP/3 `OPTIONS` setup request. A path outside
/// the well-known prefix is accepted with no origins (the deployment's own endpoint).
pub fn validate_options_request(
    request: &impl RequestHead,
    tokens: &SetupTokens,
) -> Result<AcceptedSetup, SetupRejection> {
    if request.method() != Method::OPTIONS {
        return Err(SetupRejection::method("OPTIONS"));
    }
    let path = request.uri().path();
    if path == "*" {
        return Err(SetupRejection::new(
            RejectionKind::AsteriskForm,
            "OPTIONS * is never a PTTH setup request",
        ));
    }
    let headers = request.headers();
    Ok(AcceptedSetup {
        kind: SetupKind::Options,
        origins: optional_origins(path, tokens)?,
        offered: Vec::new(),
        chosen: ProtocolId::h3(),
        authorization: authorization(headers)?,
        upgrade_token: String::new(),
    })
}

/// Gateway side: validates a lentczner PTTH/1.0 setup request (`POST` or `GET` with
/// `Upgrade: PTTH/1.0` or `PTTH/0.9`). `Connection: Upgrade` is not required, for old
/// peers.
pub fn validate_legacy_request(
    request: &impl RequestHead,
    tokens: &SetupTokens,
) -> Result<AcceptedSetup, SetupRejection> {
    if request.method() != Method::POST && request.method() != Method::GET {
        return Err(SetupRejection::method("POST, GET"));
    }
    let headers = request.headers();
    let token = find_upgrade(headers, tokens.legacy_accept)
        .ok_or_else(|| SetupRejection::upgrade_required(tokens.legacy_upgrade))?
        .to_owned();
    Ok(AcceptedSetup {
        kind: SetupKind::LegacyUpgrade,
        origins: optional_origins(request.uri().path(), tokens)?,
        offered: Vec::new(),
        chosen: ProtocolId::http11(),
        authorization: authorization(headers)?,
        upgrade_token: token,
    })
}

/// Gateway side: the `101` answer to an accepted HTTP/1.1 setup.
pub fn upgrade_response(accepted: &AcceptedSetup, tokens: &SetupTokens) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    // Echo the configured token; it was matched case-insensitively.
    let token = HeaderValue::from_str(tokens.upgrade)
        .or_else(|_| HeaderValue::from_str(&accepted.upgrade_token))
        .unwrap_or_else(|_| HeaderValue::from_static("ptth"));
    headers.insert(header::UPGRADE, token);
    headers.insert(alpn::ALPN, alpn::encode_single(&accepted.chosen));
    response
}

/// Gateway side: the `200` answer to an accepted extended CONNECT setup.
pub fn connect_response(accepted: &AcceptedSetup) -> Response<()> {
    let mut response = Response::new(());
    response
        .headers_mut()
        .insert(alpn::ALPN, alpn::encode_single(&accepted.chosen));
    response
}

/// Gateway side: the `200` answer to an accepted `OPTIONS` setup.
pub fn options_response() -> Response<()> {
    Response::new(())
}

/// Gateway side: the `101 Upgrade: PTTH/1.0` answer to an accepted legacy setup.
pub fn legacy_response(tokens: &SetupTokens) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    let token = HeaderValue::from_str(tokens.legacy_upgrade)
        .unwrap_or_else(|_| HeaderValue::from_static("PTTH/1.0"));
    headers.insert(header::UPGRADE, token);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tokens() -> SetupTokens {
        SetupTokens::default()
    }

    fn params() -> SetupRequestParams {
        SetupRequestParams {
            gateway_authority: "proxy.example.org".parse().unwrap(),
            origins: vec!["https://app.example.net".parse().unwrap()],
            offered: vec![ProtocolId::h2(), ProtocolId::http11()],
            authorization: Some(HeaderValue::from_static("Bearer <token>")),
        }
    }

    const PATH: &str = "/.well-known/ptth/https%3A%2F%2Fapp.example.net/";

    fn h1_request(lines: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().method("GET").uri(PATH);
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn digest_h1_request() -> http::request::Parts {
        h1_request(&[
            ("host", "proxy.example.org"),
            ("connection", "upgrade"),
            ("upgrade", "ptth"),
            ("authorization", "Bearer <token>"),
            ("alpn", "h2, http%2F1.1"),
        ])
    }

    #[test]
    fn digest_3_2_http1_example_origin_side() {
        let req = upgrade_request(&params(), &tokens()).unwrap();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), PATH);
        assert_eq!(req.version(), Version::HTTP_11);
        let h = req.headers();
        assert_eq!(h["host"], "proxy.example.org");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "ptth");
        assert_eq!(h["authorization"], "Bearer <token>");
        assert_eq!(h["alpn"], "h2, http%2F1.1");
        assert_eq!(h.len(), 5);
    }

    #[test]
    fn digest_3_2_http1_example_gateway_side() {
        // The gateway picks http/1.1, as in the digest.
        let accepted =
            validate_upgrade_request(&digest_h1_request(), &[ProtocolId::http11()], &tokens())
                .unwrap();
        assert_eq!(accepted.kind, SetupKind::Upgrade);
        assert_eq!(accepted.origins, params().origins);
        assert_eq!(accepted.offered, params().offered);
        assert_eq!(accepted.chosen, ProtocolId::http11());
        assert_eq!(accepted.authorization, params().authorization);
        assert_eq!(accepted.upgrade_token, "ptth");
        let res = upgrade_response(&accepted, &tokens());
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(res.headers()["connection"], "upgrade");
        assert_eq!(res.headers()["upgrade"], "ptth");
        assert_eq!(res.headers()["alpn"], "http%2F1.1");
        assert_eq!(
            validate_upgrade_response(&res, &params().offered, &tokens()).unwrap(),
            ProtocolId::http11()
        );
        // Gateway preference order wins over the origin's.
        let accepted = validate_upgrade_request(
            &digest_h1_request(),
            &[
                ProtocolId::from("h3qx"),
                ProtocolId::http11(),
                ProtocolId::h2(),
            ],
            &tokens(),
        )
        .unwrap();
        assert_eq!(accepted.chosen, ProtocolId::http11());
    }

    #[test]
    fn digest_3_2_http2_example() {
        let mut p = params();
        let (req, protocol) = connect_request(&p, &tokens()).unwrap();
        assert_eq!(protocol, "ptth");
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().scheme_str(), Some("https"));
        assert_eq!(req.uri().authority().unwrap(), "proxy.example.org");
        assert_eq!(req.uri().path(), PATH);
        assert_eq!(req.headers()["authorization"], "Bearer <token>");
        assert_eq!(req.headers()["alpn"], "h2, http%2F1.1");
        assert!(!req.headers().contains_key("host"));

        let supported = [ProtocolId::h2(), ProtocolId::http11()];
        let accepted =
            validate_connect_request(&req, Some(protocol), &supported, &tokens()).unwrap();
        assert_eq!(accepted.kind, SetupKind::ExtendedConnect);
        assert_eq!(accepted.chosen, ProtocolId::h2());
        let res = connect_response(&accepted);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["alpn"], "h2");
        assert_eq!(
            validate_connect_response(&res, &p.offered, &tokens()).unwrap(),
            ProtocolId::h2()
        );
        p.offered = vec![ProtocolId::http11()];
        assert_eq!(
            validate_connect_response(&res, &p.offered, &tokens()),
            Err(SetupError::NotOffered {
                chosen: ProtocolId::h2()
            })
        );
    }

    #[test]
    fn request_builder_errors() {
        let mut p = params();
        p.origins.clear();
        assert_eq!(
            upgrade_request(&p, &tokens()).err(),
            Some(SetupError::NoOrigins)
        );
        let mut p = params();
        p.offered.clear();
        assert_eq!(
            connect_request(&p, &tokens()).map(|_| ()),
            Err(SetupError::NothingOffered)
        );
        let bad = SetupTokens {
            upgrade: "bad\ntoken",
            ..SetupTokens::default()
        };
        assert!(matches!(
            upgrade_request(&params(), &bad),
            Err(SetupError::InvalidRequest(_))
        ));
        let bad = SetupTokens {
            well_known_prefix: "/with space/",
            ..SetupTokens::default()
        };
        assert!(matches!(
            upgrade_request(&params(), &bad),
            Err(SetupError::InvalidRequest(_))
        ));
    }

    #[test]
    fn options_exchange() {
        let req = options_request(&params(), &tokens()).unwrap();
        assert_eq!(req.method(), Method::OPTIONS);
        assert_eq!(
            req.uri().to_string(),
            format!("https://proxy.example.org{PATH}")
        );
        assert!(!req.headers().contains_key("alpn"));
        let accepted = validate_options_request(&req, &tokens()).unwrap();
        assert_eq!(accepted.kind, SetupKind::Options);
        assert_eq!(accepted.origins, params().origins);
        assert_eq!(accepted.chosen, ProtocolId::h3());
        assert_eq!(
            validate_options_response(&options_response()).unwrap(),
            ProtocolId::h3()
        );
        let mut res = options_response();
        *res.status_mut() = StatusCode::NO_CONTENT;
        assert!(validate_options_response(&res).is_ok());
        *res.status_mut() = StatusCode::FORBIDDEN;
        assert_eq!(
            validate_options_response(&res),
            Err(SetupError::UnexpectedStatus(StatusCode::FORBIDDEN))
        );
        // A deployment-chosen endpoint outside the well-known prefix: no origins.
        let (parts, ()) = Request::builder()
            .method("OPTIONS")
            .uri("https://gw.example/ptth-endpoint")
            .body(())
            .unwrap()
            .into_parts();
        assert!(validate_options_request(&parts, &tokens())
            .unwrap()
            .origins
            .is_empty());
        let (parts, ()) = Request::builder()
            .method("OPTIONS")
            .uri("*")
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            validate_options_request(&parts, &tokens())
                .unwrap_err()
                .kind(),
            RejectionKind::AsteriskForm
        );
    }

    #[test]
    fn legacy_exchange() {
        let req = legacy_request(
            "https://relay.example:8080/reverse",
            Some(HeaderValue::from_static("Basic eDp5")),
            &tokens(),
        )
        .unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/reverse");
        let h = req.headers();
        assert_eq!(h["host"], "relay.example:8080");
        assert_eq!(h["upgrade"], "PTTH/1.0");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["content-length"], "0");
        assert_eq!(h["authorization"], "Basic eDp5");
        let accepted = validate_legacy_request(&req, &tokens()).unwrap();
        assert_eq!(accepted.kind, SetupKind::LegacyUpgrade);
        assert_eq!(accepted.chosen, ProtocolId::http11());
        assert!(accepted.origins.is_empty());
        let res = legacy_response(&tokens());
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(res.headers()["upgrade"], "PTTH/1.0");
        assert_eq!(
            validate_legacy_response(&res, &tokens()).unwrap(),
            ProtocolId::http11()
        );
        // PTTH/0.9 both ways.
        let mut old = Request::builder()
            .method("POST")
            .uri("/")
            .header("upgrade", "ptth/0.9")
            .body(())
            .unwrap();
        assert_eq!(
            validate_legacy_request(&old, &tokens())
                .unwrap()
                .upgrade_token,
            "ptth/0.9"
        );
        let mut res = legacy_response(&tokens());
        res.headers_mut()
            .insert("upgrade", HeaderValue::from_static("PTTH/0.9"));
        assert!(validate_legacy_response(&res, &tokens()).is_ok());
        res.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(matches!(
            validate_legacy_response(&res, &tokens()),
            Err(SetupError::UpgradeMismatch { .. })
        ));
        *old.method_mut() = Method::PUT;
        assert_eq!(
            validate_legacy_request(&old, &tokens())
                .unwrap_err()
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        old.headers_mut().remove("upgrade");
        *old.method_mut() = Method::POST;
        let rejection = validate_legacy_request(&old, &tokens()).unwrap_err();
        assert_eq!(rejection.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(rejection.to_response().headers()["upgrade"], "PTTH/1.0");
        assert!(legacy_request("not a uri", None, &tokens()).is_err());
    }

    fn reject(parts: &http::request::Parts) -> SetupRejection {
        validate_upgrade_request(parts, &[ProtocolId::h2()], &tokens()).unwrap_err()
    }

    #[test]
    fn gateway_upgrade_rejections() {
        let base = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket, PTTH"),
            ("alpn", "h2"),
        ];
        assert!(
            validate_upgrade_request(&h1_request(&base), &[ProtocolId::h2()], &tokens()).is_ok()
        );

        let mut post = h1_request(&base);
        post.method = Method::POST;
        let r = reject(&post);
        assert_eq!(
            (r.kind(), r.status()),
            (
                RejectionKind::MethodNotAllowed,
                StatusCode::METHOD_NOT_ALLOWED
            )
        );
        assert_eq!(r.to_response().headers()["allow"], "GET");

        let r = reject(&h1_request(&[("connection", "upgrade"), ("alpn", "h2")]));
        assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
        let response = r.to_response();
        assert_eq!(response.headers()["upgrade"], "ptth");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        assert!(response.body().contains("Upgrade: ptth"));
        let r = reject(&h1_request(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("alpn", "h2"),
        ]));
        assert_eq!(r.kind(), RejectionKind::UpgradeRequired);

        let r = reject(&h1_request(&[("upgrade", "ptth"), ("alpn", "h2")]));
        assert_eq!(
            (r.kind(), r.status()),
            (
                RejectionKind::MissingConnectionUpgrade,
                StatusCode::BAD_REQUEST
            )
        );

        let r = reject(&h1_request(&[
            ("connection", "upgrade"),
            ("upgrade", "ptth"),
        ]));
        assert_eq!(
            (r.kind(), r.status()),
            (RejectionKind::MissingAlpn, StatusCode::BAD_REQUEST)
        );
        let r = reject(&h1_request(&[
            ("connection", "upgrade"),
            ("upgrade", "ptth"),
            ("alpn", "http/1.1"),
        ]));
        assert_eq!(
            (r.kind(), r.status()),
            (RejectionKind::MalformedAlpn, StatusCode::BAD_REQUEST)
        );
        let r = reject(&h1_request(&[
            ("connection", "upgrade"),
            ("upgrade", "ptth"),
            ("alpn", ","),
        ]));
        assert_eq!(r.kind(), RejectionKind::MalformedAlpn);
        let r = reject(&h1_request(&[
            ("connection", "upgrade"),
            ("upgrade", "ptth"),
            ("alpn", "http%2F1.1"),
        ]));
        assert_eq!(
            (r.kind(), r.status()),
            (RejectionKind::NoCommonProtocol, StatusCode::BAD_REQUEST)
        );
        assert!(r.reason().contains("h2"));

        let r = reject(&h1_request(&[
            ("connection", "upgrade"),
            ("upgrade", "ptth"),
            ("alpn", "h2"),
            ("authorization", "Bearer a"),
            ("authorization", "Bearer b"),
        ]));
        assert_eq!(r.kind(), RejectionKind::DuplicateAuthorization);

        let mut other = h1_request(&base);
        other.uri = "/somewhere/else".parse().unwrap();
        let r = reject(&other);
        assert_eq!(
            (r.kind(), r.status()),
            (RejectionKind::NotFound, StatusCode::NOT_FOUND)
        );
        for bad in [
            "/.well-known/ptth/null/",
            "/.well-known/ptth/",
            "/.well-known/ptth/https%3A%2F%2Fa.example,/",
            "/.well-known/ptth/%zz/",
        ] {
            let mut p = h1_request(&base);
            p.uri = bad.parse().unwrap();
            let r = reject(&p);
            assert_eq!(
                (r.kind(), r.status()),
                (RejectionKind::BadOriginList, StatusCode::BAD_REQUEST),
                "{bad}"
            );
        }
    }

    #[test]
    fn gateway_connect_rejections() {
        let (req, protocol) = connect_request(&params(), &tokens()).unwrap();
        let supported = [ProtocolId::h2()];
        let r = validate_connect_request(&req, None, &supported, &tokens()).unwrap_err();
        assert_eq!(
            (r.kind(), r.status()),
            (RejectionKind::MissingProtocol, StatusCode::BAD_REQUEST)
        );
        let r =
            validate_connect_request(&req, Some("websocket"), &supported, &tokens()).unwrap_err();
        assert_eq!(
            (r.kind(), r.status()),
            (RejectionKind::UnknownProtocol, StatusCode::NOT_IMPLEMENTED)
        );
        assert!(validate_connect_request(&req, Some("PTTH"), &supported, &tokens()).is_ok());
        let get = upgrade_request(&params(), &tokens()).unwrap();
        let r = validate_connect_request(&get, Some(protocol), &supported, &tokens()).unwrap_err();
        assert_eq!(r.to_response().headers()["allow"], "CONNECT");
    }

    #[test]
    fn origin_side_response_rejections() {
        let offered = params().offered;
        let good = || {
            Response::builder()
                .status(101)
                .header("connection", "Upgrade")
                .header("upgrade", "PTTH")
                .header("alpn", "h2")
                .body(())
                .unwrap()
        };
        assert_eq!(
            validate_upgrade_response(&good(), &offered, &tokens()),
            Ok(ProtocolId::h2())
        );
        let (parts, ()) = good().into_parts();
        assert_eq!(
            validate_upgrade_response(&parts, &offered, &tokens()),
            Ok(ProtocolId::h2())
        );

        let mut r = good();
        *r.status_mut() = StatusCode::OK;
        assert_eq!(
            validate_upgrade_response(&r, &offered, &tokens()),
            Err(SetupError::UnexpectedStatus(StatusCode::OK))
        );
        let mut r = good();
        r.headers_mut()
            .insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(matches!(
            validate_upgrade_response(&r, &offered, &tokens()),
            Err(SetupError::UpgradeMismatch { .. })
        ));
        let mut r = good();
        r.headers_mut().remove("connection");
        assert_eq!(
            validate_upgrade_response(&r, &offered, &tokens()),
            Err(SetupError::MissingConnectionUpgrade)
        );
        let mut r = good();
        r.headers_mut().remove("alpn");
        assert_eq!(
            validate_upgrade_response(&r, &offered, &tokens()),
            Err(SetupError::Alpn(AlpnError::Missing))
        );
        let mut r = good();
        r.headers_mut()
            .insert("alpn", HeaderValue::from_static("h2, http%2F1.1"));
        assert_eq!(
            validate_upgrade_response(&r, &offered, &tokens()),
            Err(SetupError::Alpn(AlpnError::NotExactlyOne { count: 2 }))
        );
        // The gateway chose a protocol the origin did not offer.
        let mut r = good();
        r.headers_mut()
            .insert("alpn", HeaderValue::from_static("h3qx"));
        assert_eq!(
            validate_upgrade_response(&r, &offered, &tokens()),
            Err(SetupError::NotOffered {
                chosen: ProtocolId::from("h3qx")
            })
        );
        // Selected-ALPN (draft-kazuho-httpbis-reverse-tunnel) is accepted too.
        let mut r = good();
        r.headers_mut().remove("alpn");
        r.headers_mut()
            .insert("selected-alpn", HeaderValue::from_static("http%2F1.1"));
        assert_eq!(
            validate_upgrade_response(&r, &offered, &tokens()),
            Ok(ProtocolId::http11())
        );

        let r = Response::builder()
            .status(204)
            .header("alpn", "h2")
            .body(())
            .unwrap();
        assert_eq!(
            validate_connect_response(&r, &offered, &tokens()),
            Ok(ProtocolId::h2())
        );
        let r = Response::builder().status(200).body(()).unwrap();
        assert_eq!(
            validate_connect_response(&r, &offered, &tokens()),
            Err(SetupError::Alpn(AlpnError::Missing))
        );
        let r = Response::builder()
            .status(407)
            .header("alpn", "h2")
            .body(())
            .unwrap();
        assert!(matches!(
            validate_connect_response(&r, &offered, &tokens()),
            Err(SetupError::UnexpectedStatus(_))
        ));
    }

    #[test]
    fn auth_layer_rejections() {
        let r = SetupRejection::unauthenticated("no credentials")
            .with_challenge(HeaderValue::from_static("Bearer realm=\"ptth\""));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let res = r.to_response();
        assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"ptth\"");
        assert_eq!(res.body(), "no credentials\n");
        let r = SetupRejection::forbidden("may not register https://x.example");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.reason(), "may not register https://x.example");
        assert_eq!(
            r.to_string(),
            "403 Forbidden may not register https://x.example"
        );
    }

    fn arb_id() -> impl Strategy<Value = ProtocolId> {
        prop_oneof![
            Just(ProtocolId::h2()),
            Just(ProtocolId::http11()),
            Just(ProtocolId::from("h3qx")),
            proptest::collection::vec(any::<u8>(), 1..8).prop_map(ProtocolId::from_bytes),
        ]
    }

    proptest! {
        #[test]
        fn setup_round_trip(
            offered in proptest::collection::vec(arb_id(), 1..4),
            supported in proptest::collection::vec(arb_id(), 1..4),
            origins in proptest::collection::vec(crate::origin::tests::arb_origin(), 1..3),
        ) {
            let p = SetupRequestParams {
                gateway_authority: "gw.example:4443".parse().unwrap(),
                origins: origins.clone(),
                offered: offered.clone(),
                authorization: None,
            };
            let t = tokens();
            let req = upgrade_request(&p, &t).unwrap();
            let expected = supported.iter().find(|s| offered.contains(s)).cloned();
            match validate_upgrade_request(&req, &supported, &t) {
                Ok(accepted) => {
                    prop_assert_eq!(Some(&accepted.chosen), expected.as_ref());
                    prop_assert_eq!(&accepted.origins, &origins);
                    let res = upgrade_response(&accepted, &t);
                    prop_assert_eq!(validate_upgrade_response(&res, &offered, &t), Ok(accepted.chosen));
                }
                Err(r) => {
                    prop_assert!(expected.is_none());
                    prop_assert_eq!(r.kind(), RejectionKind::NoCommonProtocol);
                }
            }
            let (req, protocol) = connect_request(&p, &t).unwrap();
            if let Ok(accepted) = validate_connect_request(&req, Some(protocol), &supported, &t) {
                prop_assert_eq!(&accepted.origins, &origins);
                let res = connect_response(&accepted);
                prop_assert_eq!(validate_connect_response(&res, &offered, &t), Ok(accepted.chosen));
            }
        }
    }
}
