//! The one body type every forwarded message uses, and the responses the gateway writes
//! itself (a plain-text reason in the body, so errors say who caused them).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// Any error a body may produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The streaming body type every forwarded message uses.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> Body {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why the gateway answered a request with an error itself, for the access log: the
/// detail a public body need not show. [`error`] puts it in the response's extensions.
#[derive(Debug, Clone)]
pub(crate) struct Reason(pub(crate) Box<str>);

/// A plain-text error response whose body says what happened.
pub fn error(status: StatusCode, reason: &str) -> Response<Body> {
    let mut res = Response::new(full(format!("{reason}\n")));
    *res.status_mut() = status;
    res.extensions_mut().insert(Reason(reason.into()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A 503 saying why, with `Retry-After` in seconds (RFC 9110 §10.2.3).
pub fn unavailable(reason: &str, retry_after: u32) -> Response<Body> {
    let mut res = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    res
}
