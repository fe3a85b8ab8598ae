//! Ingress routes (`[[route]]` in the origin's config): which upstream serves a request, by
//! host (exact, `*.suffix` or any) and optional path prefix; the first route that matches wins.
//!
//! ```text
//! request ──▶ Routes ──(first host + path match)──▶ Proxy(upstream) ──▶ upstream
//!                    └──(no match)──▶ 404 with the host and path that matched nothing
//! ```
//!
//! The origin registers the union of `--host` and the routes' hosts with the gateway
//! ([`Routes::hosts`]): an exact host as itself, a `*.suffix` route as the wildcard origin
//! `https://*.suffix` (which the gateway's grants must allow; it routes hosts exactly one
//! label under the suffix to it, as a certificate wildcard, and exact registrations win over
//! it); a catch-all route adds none and serves the hosts `--host` names. A `*.suffix` route
//! itself takes hosts any number of labels under the suffix, so deeper names it should serve
//! are named with `--host`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, StatusCode};
use http_body::Body as HttpBody;

use super::{text_response, BoxError, Proxy, ResponseFuture};

/// Which request hosts a route takes. Matching ignores case, a port and a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Every host (`*`, or no `host` key).
    Any,
    /// Exactly this host.
    Exact(String),
    /// Every host below this suffix (`*.example.com` is stored as `.example.com`); the
    /// suffix itself is not matched, as in TLS wildcard names.
    Suffix(String),
}

impl HostPattern {
    /// Parses `*`, `*.suffix` or an exact host name.
    ///
    /// # Errors
    ///
    /// The pattern is empty, has a wildcard elsewhere than a leading `*.`, or holds a port,
    /// path or space.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        if text == "*" {
            return Ok(HostPattern::Any);
        }
        let (suffix, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        // A fully qualified name's trailing dot names the same host.
        let name = name.strip_suffix('.').unwrap_or(name);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid {
            return Err(format!(
                "route host {text:?} must be a host name, *.suffix or *"
            ));
        }
        Ok(if suffix {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Whether `host` (without port, in any case: the patterns are lower-case and compare
    /// ignoring case) is one this pattern takes.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.as_bytes();
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            HostPattern::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// How the pattern is registered with the gateway: an exact name as itself, `*.suffix`
    /// as that wildcard; [`HostPattern::Any`] registers nothing (the hosts it serves are the
    /// ones `--host` names).
    pub fn registration(&self) -> Option<String> {
        match self {
            HostPattern::Any => None,
            HostPattern::Suffix(suffix) => Some(format!("*{suffix}")),
            HostPattern::Exact(name) => Some(name.clone()),
        }
    }
}

/// One route: the requests it takes and the proxy that serves them.
#[derive(Debug, Clone)]
pub struct Route {
    /// The hosts it takes.
    pub host: HostPattern,
    /// The path prefix it takes (segment-wise: `/api` takes `/api` and `/api/x`, not
    /// `/apix`); every path when `None`.
    pub path: Option<String>,
    /// Where its requests go.
    pub proxy: Proxy,
}

impl Route {
    fn matches(&self, host: &str, path: &str) -> bool {
        self.host.matches(host)
            && self
                .path
                .as_deref()
                .is_none_or(|p| path_has_prefix(path, p))
    }
}

/// Whether `path` lies under `prefix`, segment by segment.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The routing service: cheap to clone, the routes shared.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Arc<[Route]>,
}

impl Routes {
    /// Routes tried in the given order.
    pub fn new(routes: Vec<Route>) -> Self {
        Routes {
            routes: routes.into(),
        }
    }

    /// The hosts to register with the gateway, in route order without repeats.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for host in self.routes.iter().filter_map(|r| r.host.registration()) {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        hosts
    }

    /// The first route taking `host` (as the request named it, port allowed) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<&Route> {
        let host = host_name(host);
        self.routes.iter().find(|route| route.matches(host, path))
    }
}

/// The host name of a `Host` value or authority: without a port (an IPv6 address keeps its
/// brackets) or trailing dots, in the case it came in (routes compare ignoring case). No
/// allocation: this runs for every request.
fn host_name(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        }
    };
    host.trim_end_matches('.')
}

impl<B> tower::Service<Request<B>> for Routes
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<super::Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(Authority::as_str))
            .unwrap_or_default();
        let path = request.uri().path();
        match self.route(host, path).map(|route| route.proxy.clone()) {
            Some(mut proxy) => tower::Service::call(&mut proxy, request),
            None => {
                let (host, path) = (host.to_string(), path.to_string());
                tracing::debug!(%host, %path, "no route matches");
                let response = text_response(
                    StatusCode::NOT_FOUND,
                    format!("no route of this origin matches host {host:?} and path {path:?}"),
                );
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, path: Option<&str>, upstream: &str) -> Route {
        Route {
            host: HostPattern::parse(host).unwrap(),
            path: path.map(str::to_string),
            proxy: Proxy::new(upstream).unwrap(),
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(HostPattern::parse("*").unwrap(), HostPattern::Any);
        let suffix = HostPattern::parse("*.Example.COM").unwrap();
        assert!(suffix.matches("a.example.com"));
        assert!(suffix.matches("a.b.example.com"));
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches("badexample.com"));
        assert_eq!(suffix.registration().as_deref(), Some("*.example.com"));
        assert_eq!(HostPattern::Any.registration(), None);
        let exact = HostPattern::parse("app.example.").unwrap();
        assert!(exact.matches("app.example"));
        assert!(!exact.matches("x.app.example"));
        for bad in ["", "a*.example", "a.example:443", "a b", "*.", "a/b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_match_wins_and_paths_match_by_segment() {
        let routes = Routes::new(vec![
            route("api.example", Some("/v1"), "http://127.0.0.1:1"),
            route("api.example", None, "h2c://127.0.0.1:2"),
            route("*.apps.example", None, "unix:/run/apps.sock"),
            route("api.example", None, "http://127.0.0.1:3"),
        ]);
        let upstream = |host: &str, path: &str| {
            routes
                .route(host, path)
                .map(|r| r.proxy.upstream().text.clone())
        };
        assert_eq!(
            upstream("api.example", "/v1").unwrap(),
            "http://127.0.0.1:1"
        );
        assert_eq!(
            upstream("API.example:8443", "/v1/x").unwrap(),
            "http://127.0.0.1:1"
        );
        assert_eq!(
            upstream("api.example", "/v10").unwrap(),
            "h2c://127.0.0.1:2"
        );
        assert_eq!(
            upstream("a.apps.example", "/").unwrap(),
            "unix:/run/apps.sock"
        );
        assert_eq!(upstream("other.example", "/"), None);
        assert_eq!(
            upstream("A.Apps.Example.:443", "/").unwrap(),
            "unix:/run/apps.sock"
        );
        assert_eq!(upstream("apps.example", "/"), None, "the suffix itself");
        assert_eq!(upstream("xapi.example", "/"), None);
        assert_eq!(routes.hosts(), ["api.example", "*.apps.example"]);
    }

    #[test]
    fn host_names_lose_port_and_trailing_dots_only() {
        for (authority, host) in [
            ("app.example", "app.example"),
            ("App.Example:8443", "App.Example"),
            ("app.example.", "app.example"),
            ("app.example.:80", "app.example"),
            ("[::1]:8443", "[::1]"),
            ("[::1]", "[::1]"),
            ("127.0.0.1:1", "127.0.0.1"),
            ("app:x", "app:x"),
            ("", ""),
        ] {
            assert_eq!(host_name(authority), host, "{authority}");
        }
    }

    #[tokio::test]
    async fn a_request_no_route_takes_is_404_with_the_reason() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let routes = Routes::new(vec![route("a.example", None, "http://127.0.0.1:1")]);
        let request = Request::get("/x")
            .header(http::header::HOST, "b.example")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = routes.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("\"b.example\"") && text.contains("\"/x\""),
            "{text}"
        );
    }
}
