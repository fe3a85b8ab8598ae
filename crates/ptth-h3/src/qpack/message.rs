//! HTTP message heads (`http` crate types) to and from QPACK field lists, with the RFC 9114 §4.2 and §4.3 checks.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{request, response, Method, StatusCode, Uri, Version};

use super::Field;

/// RFC 9114 §8.1: a malformed request or response.
pub const H3_MESSAGE_ERROR: u64 = 0x10e;

/// Why a decoded field list is not a well-formed HTTP/3 message (RFC 9114 §4.1.2: such a
/// message is "malformed", a stream error of type `H3_MESSAGE_ERROR`).
#[non_exhaustive]
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// A field name contains an uppercase letter (RFC 9114 §4.2).
    #[error("malformed: field name {name:?} has uppercase characters")]
    UppercaseName {
        /// The name, lossily decoded.
        name: String,
    },
    /// A field name is empty or not a token.
    #[error("malformed: invalid field name {name:?}")]
    InvalidName {
        /// The name, lossily decoded.
        name: String,
    },
    /// A field value contains NUL, CR, LF or another forbidden byte.
    #[error("malformed: invalid value for field {name:?}")]
    InvalidValue {
        /// The field's name.
        name: String,
    },
    /// A pseudo-header follows a regular field (RFC 9114 §4.3).
    #[error("malformed: pseudo-header {name:?} after a regular field")]
    PseudoAfterRegular {
        /// The pseudo-header's name.
        name: String,
    },
    /// A pseudo-header appears twice.
    #[error("malformed: duplicate pseudo-header {name:?}")]
    DuplicatePseudo {
        /// The pseudo-header's name.
        name: String,
    },
    /// A pseudo-header that is undefined, or not defined for this kind of message (a
    /// response pseudo-header in a request, any pseudo-header in trailers).
    #[error("malformed: unexpected pseudo-header {name:?}")]
    UnexpectedPseudo {
        /// The pseudo-header's name.
        name: String,
    },
    /// A required pseudo-header is absent.
    #[error("malformed: missing pseudo-header {name}")]
    MissingPseudo {
        /// The pseudo-header's name.
        name: &'static str,
    },
    /// A pseudo-header that must not be empty is.
    #[error("malformed: empty pseudo-header {name}")]
    EmptyPseudo {
        /// The pseudo-header's name.
        name: &'static str,
    },
    /// A connection-specific field (RFC 9114 §4.2).
    #[error("malformed: connection-specific field {name:?}")]
    ConnectionSpecific {
        /// The field's name.
        name: String,
    },
    /// `:method` is not a valid method token.
    #[error("malformed: invalid :method")]
    InvalidMethod,
    /// `:status` is not three digits from 100 to 999.
    #[error("malformed: invalid :status")]
    InvalidStatus,
    /// `:scheme`, `:authority` or `:path` do not form a valid URI.
    #[error("malformed: invalid request target")]
    InvalidUri,
    /// An `http` or `https` request without `:authority` or `Host` (RFC 9114 §4.3.1).
    #[error("malformed: no :authority or host")]
    MissingAuthority,
    /// `:authority` and `Host` are both present and differ (RFC 9114 §4.3.1).
    #[error("malformed: :authority and host differ")]
    AuthorityMismatch,
}

impl MessageError {
    /// The HTTP/3 error code: `H3_MESSAGE_ERROR` for every malformed message.
    pub fn h3_code(&self) -> u64 {
        H3_MESSAGE_ERROR
    }
}

/// Fields that RFC 9114 §4.2 bans from HTTP/3 messages ("te" is handled apart).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// The field list of a request head: `:method`, `:scheme`, `:authority`, `:path`,
/// `:protocol` if given, then the headers.
///
/// RFC 9114 §4.4: a CONNECT without `:protocol` carries only `:method` and `:authority`.
/// `:authority` comes from the URI, else from the `host` header (RFC 9114 §4.3.1: clients
/// "SHOULD use the :authority pseudo-header field instead of the Host header field"), and
/// `host` is then dropped. A URI without a scheme gets `https`, the only scheme HTTP/3 runs
/// under here. Connection-specific headers are dropped (see [`trailer_fields`]).
pub fn request_fields(parts: &request::Parts, protocol: Option<&str>) -> Vec<Field> {
    let mut fields = Vec::with_capacity(parts.headers.len() + 5);
    fields.push(pseudo(":method", parts.method.as_str()));
    let authority = parts
        .uri
        .authority()
        .map(|a| Bytes::copy_from_slice(a.as_str().as_bytes()))
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .map(|h| Bytes::copy_from_slice(h.as_bytes()))
        });
    if parts.method == Method::CONNECT && protocol.is_none() {
        if let Some(authority) = authority.clone() {
            fields.push((Bytes::from_static(b":authority"), authority));
        }
    } else {
        fields.push(pseudo(":scheme", parts.uri.scheme_str().unwrap_or("https")));
        if let Some(authority) = authority.clone() {
            fields.push((Bytes::from_static(b":authority"), authority));
        }
        let path = match parts.uri.path_and_query().map(PathAndQuery::as_str) {
            Some(path) if !path.is_empty() => path,
            _ if parts.method == Method::OPTIONS => "*",
            _ => "/",
        };
        fields.push(pseudo(":path", path));
        if let Some(protocol) = protocol {
            fields.push(pseudo(":protocol", protocol));
        }
    }
    push_headers(&parts.headers, authority.is_some(), &mut fields);
    fields
}

/// The field list of a response head: `:status`, then the headers without the
/// connection-specific ones.
pub fn response_fields(parts: &response::Parts) -> Vec<Field> {
    let mut fields = Vec::with_capacity(parts.headers.len() + 1);
    fields.push(pseudo(":status", parts.status.as_str()));
    push_headers(&parts.headers, false, &mut fields);
    fields
}

/// The field list of a trailer section. Like the heads, it drops the fields RFC 9114 §4.2
/// bans: `connection`, `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`,
/// those the `connection` header names, and `te` unless it is `trailers`.
pub fn trailer_fields(headers: &HeaderMap) -> Vec<Field> {
    let mut fields = Vec::with_capacity(headers.len());
    push_headers(headers, false, &mut fields);
    fields
}

fn pseudo(name: &'static str, value: &str) -> Field {
    (
        Bytes::from_static(name.as_bytes()),
        Bytes::copy_from_slice(value.as_bytes()),
    )
}

fn push_headers(headers: &HeaderMap, drop_host: bool, fields: &mut Vec<Field>) {
    // RFC 9110 §7.6.1: the fields the connection header lists are connection-specific too.
    let listed: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for (name, value) in headers {
        let name_str = name.as_str();
        if CONNECTION_SPECIFIC.contains(&name_str)
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name_str))
            || (drop_host && name == header::HOST)
            || (name == header::TE && !value.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        // `HeaderName` is always lowercase, as RFC 9114 §4.2 requires on the wire.
        fields.push((
            Bytes::copy_from_slice(name_str.as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
}

/// Which message a field list is the head of; it decides which pseudo-headers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
    Trailers,
}

/// The pseudo-headers of a field list, each at most once.
#[derive(Debug, Default)]
struct Pseudo {
    method: Option<Bytes>,
    scheme: Option<Bytes>,
    authority: Option<Bytes>,
    path: Option<Bytes>,
    protocol: Option<Bytes>,
    status: Option<Bytes>,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Splits a field list into pseudo-headers and a header map, enforcing RFC 9114 §4.2 and
/// §4.3: "All pseudo-header fields MUST appear in the header section before regular header
/// fields", no pseudo-header twice, none undefined or of the other kind of message, names
/// lowercase tokens, no connection-specific fields.
fn split(fields: Vec<Field>, kind: Kind) -> Result<(Pseudo, HeaderMap), MessageError> {
    let mut pseudo = Pseudo::default();
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut regular_seen = false;
    for (name, value) in fields {
        if let Some(pseudo_name) = name.strip_prefix(b":") {
            if regular_seen {
                return Err(MessageError::PseudoAfterRegular { name: lossy(&name) });
            }
            let slot = match (kind, pseudo_name) {
                (Kind::Request, b"method") => &mut pseudo.method,
                (Kind::Request, b"scheme") => &mut pseudo.scheme,
                (Kind::Request, b"authority") => &mut pseudo.authority,
                (Kind::Request, b"path") => &mut pseudo.path,
                (Kind::Request, b"protocol") => &mut pseudo.protocol,
                (Kind::Response, b"status") => &mut pseudo.status,
                _ => return Err(MessageError::UnexpectedPseudo { name: lossy(&name) }),
            };
            if slot.is_some() {
                return Err(MessageError::DuplicatePseudo { name: lossy(&name) });
            }
            *slot = Some(value);
            continue;
        }
        regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err(MessageError::UppercaseName { name: lossy(&name) });
        }
        let header_name = HeaderName::from_bytes(&name)
            .map_err(|_| MessageError::InvalidName { name: lossy(&name) })?;
        // RFC 9114 §4.2: "the TE header field MAY be present in an HTTP/3 request header;
        // when it is, it MUST NOT contain any value other than "trailers"."
        let banned = CONNECTION_SPECIFIC.contains(&header_name.as_str())
            || (header_name == header::TE && !value.eq_ignore_ascii_case(b"trailers"));
        if banned {
            return Err(MessageError::ConnectionSpecific { name: lossy(&name) });
        }
        let header_value =
            HeaderValue::from_maybe_shared(value).map_err(|_| MessageError::InvalidValue {
                name: header_name.as_str().to_owned(),
            })?;
        headers.append(header_name, header_value);
    }
    Ok((pseudo, headers))
}

/// Validates a decoded request field list and converts it (RFC 9114 §4.3.1, §4.4 and
/// RFC 9220). Returns the head and the `:protocol` of an extended CONNECT.
///
/// A CONNECT without `:protocol` has an authority-form URI. Other requests have
/// `scheme://authority/path`, or only the path when `:authority` is absent (the `host`
/// header then stands for it). Cookie fields, which RFC 9114 §4.2.1 lets a peer split, are
/// joined with "; " so the head can be forwarded to HTTP/1.1.
pub fn parse_request(fields: Vec<Field>) -> Result<(request::Parts, Option<String>), MessageError> {
    let (pseudo, mut headers) = split(fields, Kind::Request)?;
    let method_bytes = pseudo
        .method
        .ok_or(MessageError::MissingPseudo { name: ":method" })?;
    let method = Method::from_bytes(&method_bytes).map_err(|_| MessageError::InvalidMethod)?;

    let authority = match pseudo.authority {
        Some(a) if a.is_empty() => return Err(MessageError::EmptyPseudo { name: ":authority" }),
        Some(a) => Some(Authority::from_maybe_shared(a).map_err(|_| MessageError::InvalidUri)?),
        None => None,
    };
    // RFC 9114 §4.3.1: ":authority MUST NOT include the deprecated userinfo subcomponent".
    if authority.as_ref().is_some_and(|a| a.as_str().contains('@')) {
        return Err(MessageError::InvalidUri);
    }
    // RFC 9110 §7.2: one host field at most, holding a valid authority; RFC 9114 §4.3.1: "If
    // both fields are present, they MUST contain the same value."
    let mut hosts = headers.get_all(header::HOST).iter();
    if let Some(host) = hosts.next() {
        if hosts.next().is_some() || Authority::try_from(host.as_bytes()).is_err() {
            return Err(MessageError::InvalidUri);
        }
        if authority
            .as_ref()
            .is_some_and(|a| a.as_str().as_bytes() != host.as_bytes())
        {
            return Err(MessageError::AuthorityMismatch);
        }
    }

    let protocol = match pseudo.protocol {
        // RFC 9220 §3 (RFC 8441 §4): ":protocol" is only for CONNECT.
        Some(_) if method != Method::CONNECT => {
            return Err(MessageError::UnexpectedPseudo {
                name: ":protocol".to_owned(),
            })
        }
        Some(p) => Some(
            String::from_utf8(p.to_vec()).map_err(|_| MessageError::InvalidValue {
                name: ":protocol".to_owned(),
            })?,
        ),
        None => None,
    };

    let uri = if method == Method::CONNECT && protocol.is_none() {
        // RFC 9114 §4.4: "The :scheme and :path pseudo-header fields are omitted" and
        // ":authority" carries the target.
        for (present, name) in [(&pseudo.scheme, ":scheme"), (&pseudo.path, ":path")] {
            if present.is_some() {
                return Err(MessageError::UnexpectedPseudo {
                    name: name.to_owned(),
                });
            }
        }
        let authority = authority.ok_or(MessageError::MissingPseudo { name: ":authority" })?;
        Uri::from(authority)
    } else {
        // RFC 9114 §4.3.1: "All HTTP/3 requests MUST include exactly one value for the
        // :method, :scheme, and :path pseudo-header fields, unless the request is a CONNECT
        // request"; RFC 9220 keeps them for extended CONNECT.
        let scheme = pseudo
            .scheme
            .ok_or(MessageError::MissingPseudo { name: ":scheme" })?;
        let path = pseudo
            .path
            .ok_or(MessageError::MissingPseudo { name: ":path" })?;
        if path.is_empty() {
            return Err(MessageError::EmptyPseudo { name: ":path" });
        }
        let scheme: Scheme = std::str::from_utf8(&scheme)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(MessageError::InvalidUri)?;
        // RFC 9114 §4.3.1: http and https have a mandatory authority component, so "the
        // request MUST contain either an :authority pseudo-header field or a Host header
        // field". Extended CONNECT always needs :authority (RFC 8441 §4).
        let needs_authority = scheme == Scheme::HTTP || scheme == Scheme::HTTPS;
        if authority.is_none()
            && (protocol.is_some() || (needs_authority && !headers.contains_key(header::HOST)))
        {
            return Err(if protocol.is_some() {
                MessageError::MissingPseudo { name: ":authority" }
            } else {
                MessageError::MissingAuthority
            });
        }
        let path = PathAndQuery::from_maybe_shared(path).map_err(|_| MessageError::InvalidUri)?;
        let mut uri = http::uri::Parts::default();
        if let Some(authority) = authority {
            uri.scheme = Some(scheme);
            uri.authority = Some(authority);
        }
        uri.path_and_query = Some(path);
        Uri::from_parts(uri).map_err(|_| MessageError::InvalidUri)?
    };

    join_cookies(&mut headers);
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_3;
    parts.headers = headers;
    Ok((parts, protocol))
}

/// RFC 9114 §4.2.1: split cookie fields "MUST be concatenated into a single byte string
/// using the two-byte delimiter of "; " (ASCII 0x3b, 0x20) before being passed into a
/// context other than HTTP/2 or HTTP/3".
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    // Each part was a valid value and "; " is too, so this only fails on a broken invariant;
    // keeping the split fields is still correct HTTP/3 then.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Validates a decoded response field list and converts it (RFC 9114 §4.3.2: exactly one
/// `:status` and no other pseudo-header).
pub fn parse_response(fields: Vec<Field>) -> Result<response::Parts, MessageError> {
    let (pseudo, headers) = split(fields, Kind::Response)?;
    let status = pseudo
        .status
        .ok_or(MessageError::MissingPseudo { name: ":status" })?;
    // `StatusCode::from_bytes` takes exactly three digits, 100 to 999.
    let status = StatusCode::from_bytes(&status).map_err(|_| MessageError::InvalidStatus)?;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = Version::HTTP_3;
    parts.headers = headers;
    Ok(parts)
}

/// Validates a decoded trailer field list and converts it: no pseudo-headers (RFC 9114
/// §4.3: "Pseudo-header fields MUST NOT appear in trailer sections") and the same field
/// rules as heads.
pub fn parse_trailers(fields: Vec<Field>) -> Result<HeaderMap, MessageError> {
    let (_, headers) = split(fields, Kind::Trailers)?;
    Ok(headers)
}
