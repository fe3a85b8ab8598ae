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

/// Why the gateway answered with an error of its own, in full (an origin's error text, an
/// upstream address): a response extension for the access log, never sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReason(pub String);

/// A plain-text error response whose body says what happened. `reason` is public: only the
/// gateway's own words, never a peer's error text (see [`bad_gateway`]).
pub fn error(status: StatusCode, reason: &str) -> Response<Body> {
    let mut res = Response::new(full(format!("{reason}\n")));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.extensions_mut().insert(ErrorReason(reason.to_string()));
    res
}

/// A 502 whose body says only `public` (what the gateway knows happened, in its own words);
/// `detail` (the error text from the origin connection, which may name internal addresses)
/// is logged at debug and carried in the [`ErrorReason`] extension for the access log.
pub fn bad_gateway(public: &str, detail: &dyn std::fmt::Display) -> Response<Body> {
    let detail = format!("{public}: {detail}");
    tracing::debug!(reason = %detail, "502 Bad Gateway");
    let mut res = error(StatusCode::BAD_GATEWAY, public);
    res.extensions_mut().insert(ErrorReason(detail));
    res
}

/// The longest host a 503 body repeats; longer ones are cut (a Host field may be long).
const MAX_HOST_IN_BODY: usize = 100;

/// The 503 reason when no origin serves a request: names the host, reduced to the
/// characters a host name may hold (anything else becomes `?`, so a hostile `Host` can put
/// neither markup nor control characters in the body) and cut to a bounded length.
pub fn no_origin_reason(host: &str) -> String {
    let mut shown: String = host
        .chars()
        .take(MAX_HOST_IN_BODY)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']') {
                c
            } else {
                '?'
            }
        })
        .collect();
    if host.chars().count() > MAX_HOST_IN_BODY {
        shown.push_str("...");
    }
    format!("no origin is connected for this host and path (host {shown})")
}

/// A 503 saying why, with `Retry-After` in seconds (RFC 9110 §10.2.3).
pub fn unavailable(reason: &str, retry_after: u32) -> Response<Body> {
    let mut res = error(StatusCode::SERVICE_UNAVAILABLE, reason);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_503_reason_names_the_host_without_markup_control_characters_or_length() {
        assert_eq!(
            no_origin_reason("app.example"),
            "no origin is connected for this host and path (host app.example)"
        );
        let hostile = no_origin_reason("<script>x</script>\r\nSet-Cookie: a");
        assert!(!hostile.contains('<') && !hostile.contains('\r') && !hostile.contains(" a)"));
        assert!(
            hostile.ends_with("(host ?script?x??script???Set-Cookie:?a)"),
            "{hostile}"
        );
        let long = no_origin_reason(&"a".repeat(10_000));
        assert!(long.len() < 200, "{}", long.len());
        assert!(long.ends_with("...)"));
    }

    #[tokio::test]
    async fn a_502_body_is_generic_and_the_detail_rides_on_the_response() {
        let res = bad_gateway(
            "the origin failed the request",
            &"could not connect to upstream 10.0.0.7:8080: connection refused",
        );
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
        let reason = res.extensions().get::<ErrorReason>().unwrap();
        assert!(reason.0.contains("10.0.0.7:8080"));
        use http_body_util::BodyExt;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"the origin failed the request\n");
    }
}
