//! The one body type that crosses crate boundaries: boxed, streaming, `Send + Sync`.

/// Any error a body may produce.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body. Every request and response forwarded through ptth uses it, so bodies
/// are never collected into memory on the way through. It is `Send` but not `Sync`, so any
/// body (hyper's, HTTP/3's, an application's) can be boxed into it without a copy.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;
