//! The PTTH target URI: RFC 6570 URI templates with `{serialized_origin}`, and the
//! default well-known path `/.well-known/ptth/{serialized_origin}/`.
//!
//! The origin expands the template with the list of origins it registers; the gateway
//! parses the list back out of the request path ([`parse_well_known`]).

use std::fmt;

use crate::origin::{OriginError, SerializedOrigin};
use crate::pct;
use crate::tokens::SetupTokens;

/// The template variable PTTH defines.
pub const SERIALIZED_ORIGIN: &str = "serialized_origin";

/// Why a template or a well-known path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A character outside ASCII 0x21–0x7E.
    #[error("template contains a character outside 0x21-0x7E at byte {at}")]
    NotPrintableAscii {
        /// Byte offset.
        at: usize,
    },
    /// A literal character that RFC 6570 §2.1 does not allow.
    #[error("template literal contains {0:?}, which RFC 6570 does not allow")]
    BadLiteral(char),
    /// A `{` without a matching `}`, or a stray `}`.
    #[error("unbalanced braces in template")]
    UnbalancedBrace,
    /// A malformed expression or variable name.
    #[error("malformed template expression {0:?}")]
    BadExpression(String),
    /// An operator that PTTH forbids (`+`, `#`, `.`, `/`, `;`).
    #[error("the {0:?} operator is not allowed in a PTTH template")]
    ForbiddenOperator(char),
    /// An operator RFC 6570 reserves for future extensions (`=`, `,`, `!`, `@`, `|`).
    #[error("the {0:?} operator is reserved by RFC 6570")]
    ReservedOperator(char),
    /// The template is not absolute with a non-empty scheme, authority and path.
    #[error("template is not an absolute URI with scheme, authority and a path starting with '/'")]
    NotAbsolute,
    /// A variable appears outside the path and query.
    #[error("template variables may only appear in the path or query")]
    VariableOutsidePathOrQuery,
    /// The template lacks `serialized_origin`.
    #[error("template does not contain the serialized_origin variable")]
    MissingSerializedOrigin,
    /// A prefix modifier (`:N`) on `serialized_origin`, which is a list.
    #[error("prefix modifiers do not apply to the serialized_origin list")]
    PrefixOnList,
    /// The request path does not start with the well-known prefix.
    #[error("path is not under the PTTH well-known prefix")]
    NotWellKnown,
    /// The path has extra segments after the origin list.
    #[error("unexpected path segments after the origin list")]
    TrailingSegments,
    /// The origin list is empty.
    #[error("the origin list is empty")]
    EmptyOriginList,
    /// An element of the origin list is empty.
    #[error("the origin list has an empty element")]
    EmptyElement,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding in the origin list")]
    BadPercentEncoding,
    /// A decoded element is not UTF-8.
    #[error("a decoded origin is not UTF-8")]
    NotUtf8,
    /// A decoded element is not a valid serialized origin.
    #[error("invalid origin: {0}")]
    Origin(#[from] OriginError),
}

/// RFC 6570 simple-string / form-style encoding of one value: everything outside
/// `unreserved` is percent-encoded (RFC 6570 §3.2.1, "allow U").
pub(crate) fn encode_value(value: &str) -> String {
    pct::encode(value.as_bytes(), pct::is_unreserved)
}

/// Expands the default well-known path for `origins`:
/// `/.well-known/ptth/https%3A%2F%2Fbackend.example.com,https%3A%2F%2Fapi.example.com%3A8443/`.
pub fn expand_well_known(origins: &[SerializedOrigin], tokens: &SetupTokens) -> String {
    // draft-kazuho-ptth-ptth-01 §3: "The default template is
    // https://$PROXY_HOST:$PROXY_PORT/.well-known/ptth/{serialized_origin}/". RFC 6570
    // §3.2.2: a list in a simple expansion is joined with ",".
    let list = origins
        .iter()
        .map(|o| encode_value(&o.to_string()))
        .collect::<Vec<_>>()
        .join(",");
    format!("{}{}/", tokens.well_known_prefix, list)
}

/// Whether `path` (query ignored) is under the well-known prefix.
pub fn is_well_known(path: &str, tokens: &SetupTokens) -> bool {
    path.starts_with(tokens.well_known_prefix)
}

/// Parses the origin list out of a well-known request path (a query is ignored).
///
/// The list is split on a literal `,` (an encoded `%2C` is part of an element), each
/// element is percent-decoded and parsed as a serialized origin. The trailing `/` of the
/// default template is optional; further segments are rejected.
pub fn parse_well_known(
    path: &str,
    tokens: &SetupTokens,
) -> Result<Vec<SerializedOrigin>, TemplateError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path
        .strip_prefix(tokens.well_known_prefix)
        .ok_or(TemplateError::NotWellKnown)?;
    let list = rest.strip_suffix('/').unwrap_or(rest);
    if list.contains('/') {
        return Err(TemplateError::TrailingSegments);
    }
    parse_origin_list(list)
}

/// Parses a `,`-separated list of percent-encoded serialized origins.
///
/// draft-kazuho-ptth-ptth-01 §3: "The value of serialized_origin is a non-empty list of
/// RFC 6454 ASCII serialized origins"; "null" is forbidden.
pub fn parse_origin_list(list: &str) -> Result<Vec<SerializedOrigin>, TemplateError> {
    if list.is_empty() {
        return Err(TemplateError::EmptyOriginList);
    }
    list.split(',')
        .map(|element| {
            if element.is_empty() {
                return Err(TemplateError::EmptyElement);
            }
            let decoded =
                pct::decode(element.as_bytes()).map_err(|_| TemplateError::BadPercentEncoding)?;
            let text = String::from_utf8(decoded).map_err(|_| TemplateError::NotUtf8)?;
            Ok(text.parse::<SerializedOrigin>()?)
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operator {
    /// `{var}`: simple string expansion.
    Simple,
    /// `{?var}`: form-style query.
    Query,
    /// `{&var}`: form-style query continuation.
    QueryContinuation,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VarSpec {
    pub(crate) name: String,
    pub(crate) explode: bool,
    pub(crate) prefix: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Literal(String),
    Expression { op: Operator, vars: Vec<VarSpec> },
}

/// A validated PTTH URI template (RFC 6570, with draft-kazuho-ptth-ptth-01 §3's rules).
///
/// Only the `serialized_origin` variable is ever defined; other variables expand as
/// undefined (to nothing), as RFC 6570 §2.3 specifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriTemplate {
    source: String,
    parts: Vec<Part>,
}

impl UriTemplate {
    /// The default template for a gateway at `authority` (`host[:port]`):
    /// `https://{authority}/.well-known/ptth/{serialized_origin}/`.
    pub fn well_known(
        authority: &http::uri::Authority,
        tokens: &SetupTokens,
    ) -> Result<Self, TemplateError> {
        Self::parse(&format!(
            "https://{}{}{{{SERIALIZED_ORIGIN}}}/",
            authority, tokens.well_known_prefix
        ))
    }

    /// Parses and validates a template.
    ///
    /// draft-kazuho-ptth-ptth-01 §3: "the client SHOULD validate [the template] ... and
    /// MUST abort without sending if a violation is detected": level 4 or lower; absolute
    /// with non-empty scheme, authority and path; the path starts with `/`; variables
    /// only in the path or query; contains `serialized_origin`; only ASCII 0x21-0x7E; no
    /// `+`, `#`, `.`, `/` or `;` operators.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if let Some(at) = template.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(TemplateError::NotPrintableAscii { at });
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or(TemplateError::UnbalancedBrace)?;
                    parts.push(parse_expression(&rest[1..end])?);
                    rest = &rest[end + 1..];
                }
                Some(start) => {
                    parts.push(Part::Literal(parse_literal(&rest[..start])?));
                    rest = &rest[start..];
                }
                None => {
                    parts.push(Part::Literal(parse_literal(rest)?));
                    rest = "";
                }
            }
        }
        check_placement(&parts)?;
        let has_origin = parts.iter().any(|p| match p {
            Part::Expression { vars, .. } => vars.iter().any(|v| v.name == SERIALIZED_ORIGIN),
            Part::Literal(_) => false,
        });
        if !has_origin {
            return Err(TemplateError::MissingSerializedOrigin);
        }
        Ok(Self {
            source: template.to_owned(),
            parts,
        })
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Expands the template with `serialized_origin` = `origins` (RFC 6570 §3).
    ///
    /// An empty list is undefined (RFC 6570 §2.3), so its expression expands to nothing;
    /// PTTH requires a non-empty list, which callers enforce.
    pub fn expand(&self, origins: &[SerializedOrigin]) -> String {
        let values: Vec<String> = origins
            .iter()
            .map(|o| encode_value(&o.to_string()))
            .collect();
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Expression { op, vars } => expand_expression(&mut out, *op, vars, &values),
            }
        }
        out
    }
}

impl fmt::Display for UriTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for UriTemplate {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn expand_expression(out: &mut String, op: Operator, vars: &[VarSpec], values: &[String]) {
    // RFC 6570 Appendix A: first / sep / named / ifemp per operator.
    let (first, sep, named) = match op {
        Operator::Simple => ("", ",", false),
        Operator::Query => ("?", "&", true),
        Operator::QueryContinuation => ("&", "&", true),
    };
    let mut first_defined = true;
    for var in vars {
        // Only serialized_origin is defined, and a zero-length list is undefined.
        if var.name != SERIALIZED_ORIGIN || values.is_empty() {
            continue;
        }
        out.push_str(if first_defined { first } else { sep });
        first_defined = false;
        if var.explode {
            let items: Vec<String> = values
                .iter()
                .map(|v| {
                    if named {
                        format!("{}={v}", var.name)
                    } else {
                        v.clone()
                    }
                })
                .collect();
            out.push_str(&items.join(sep));
        } else {
            if named {
                out.push_str(&var.name);
                out.push('=');
            }
            out.push_str(&values.join(","));
        }
    }
}

pub(crate) fn parse_literal(text: &str) -> Result<String, TemplateError> {
    // RFC 6570 §2.1: literals are any Unicode character except CTL, SP, DQUOTE, "'", "%"
    // (aside from pct-encoded), "<", ">", "\", "^", "`", "{", "|", "}".
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let ok = bytes.get(i + 1).copied().and_then(pct::hex_val).is_some()
                    && bytes.get(i + 2).copied().and_then(pct::hex_val).is_some();
                if !ok {
                    return Err(TemplateError::BadLiteral('%'));
                }
                i += 3;
                continue;
            }
            b'}' => return Err(TemplateError::UnbalancedBrace),
            b'"' | b'\'' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'|' => {
                return Err(TemplateError::BadLiteral(char::from(b)))
            }
            _ => {}
        }
        i += 1;
    }
    Ok(text.to_owned())
}

pub(crate) fn parse_expression(body: &str) -> Result<Part, TemplateError> {
    let bad = || TemplateError::BadExpression(body.to_owned());
    let mut chars = body.chars();
    let (op, list) = match chars.next() {
        Some('?') => (Operator::Query, chars.as_str()),
        Some('&') => (Operator::QueryContinuation, chars.as_str()),
        Some(c @ ('+' | '#' | '.' | '/' | ';')) => return Err(TemplateError::ForbiddenOperator(c)),
        Some(c @ ('=' | ',' | '!' | '@' | '|')) => return Err(TemplateError::ReservedOperator(c)),
        Some(_) => (Operator::Simple, body),
        None => return Err(bad()),
    };
    let vars = list
        .split(',')
        .map(|spec| parse_varspec(spec).ok_or_else(bad))
        .collect::<Result<Vec<_>, _>>()?;
    if vars
        .iter()
        .any(|v| v.name == SERIALIZED_ORIGIN && v.prefix.is_some())
    {
        // RFC 6570 §2.4.1: "Prefix modifiers are not applicable to variables that have
        // composite values."
        return Err(TemplateError::PrefixOnList);
    }
    Ok(Part::Expression { op, vars })
}

fn parse_varspec(spec: &str) -> Option<VarSpec> {
    // RFC 6570 §2.3/§2.4: varname = varchar *( ["."] varchar ),
    // varchar = ALPHA / DIGIT / "_" / pct-encoded; modifier = ":" max-length / "*".
    let (name, explode, prefix) = if let Some(name) = spec.strip_suffix('*') {
        (name, true, None)
    } else if let Some((name, len)) = spec.split_once(':') {
        let valid = !len.is_empty()
            && len.len() <= 4
            && !len.starts_with('0')
            && len.bytes().all(|b| b.is_ascii_digit());
        if !valid {
            return None;
        }
        (name, false, Some(len.parse().ok()?))
    } else {
        (spec, false, None)
    };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes[0] == b'.' || bytes[bytes.len() - 1] == b'.' || name.contains("..")
    {
        return None;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                bytes.get(i + 1).copied().and_then(pct::hex_val)?;
                bytes.get(i + 2).copied().and_then(pct::hex_val)?;
                i += 3;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' => {}
            _ => return None,
        }
        i += 1;
    }
    Some(VarSpec {
        name: name.to_owned(),
        explode,
        prefix,
    })
}

/// Checks "absolute, with non-empty scheme, authority and path starting with '/'" and
/// "variables only in the path or query", using the literal text before the first
/// expression.
pub(crate) fn check_placement(parts: &[Part]) -> Result<(), TemplateError> {
    let head = match parts.first() {
        Some(Part::Literal(text)) => text.as_str(),
        _ => "",
    };
    let has_expression = parts.len() > 1 || matches!(parts.first(), Some(Part::Expression { .. }));
    let (scheme, after) = head
        .split_once("://")
        .ok_or(if has_expression && head.is_empty() {
            TemplateError::VariableOutsidePathOrQuery
        } else {
            TemplateError::NotAbsolute
        })?;
    let mut scheme_bytes = scheme.bytes();
    let scheme_ok = scheme_bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme_bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return Err(TemplateError::NotAbsolute);
    }
    match after.find(['/', '?', '#']) {
        // The authority must end, and the path begin, inside the leading literal.
        Some(at) if after.as_bytes()[at] == b'/' => {
            if at == 0 {
                return Err(TemplateError::NotAbsolute);
            }
        }
        Some(_) => return Err(TemplateError::NotAbsolute),
        None if has_expression => return Err(TemplateError::VariableOutsidePathOrQuery),
        None => return Err(TemplateError::NotAbsolute),
    }
    // A '#' starts the fragment; any variable after it would be outside path and query,
    // and a request target never carries a fragment anyway.
    if parts
        .iter()
        .any(|p| matches!(p, Part::Literal(text) if text.contains('#')))
    {
        return Err(TemplateError::VariableOutsidePathOrQuery);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::origin::tests::arb_origin;
    use proptest::prelude::*;

    fn two() -> Vec<SerializedOrigin> {
        vec![
            "https://backend.example.com".parse().unwrap(),
            "https://api.example.com:8443".parse().unwrap(),
        ]
    }

    #[test]
    fn digest_3_3_worked_expansions() {
        let t =
            UriTemplate::parse("https://proxy.example.org/.well-known/ptth/{serialized_origin}/")
                .unwrap();
        assert_eq!(
            t.expand(&two()),
            "https://proxy.example.org/.well-known/ptth/https%3A%2F%2Fbackend.example.com,https%3A%2F%2Fapi.example.com%3A8443/"
        );
        let t =
            UriTemplate::parse("https://proxy.example.org:4443/ptth{?serialized_origin}").unwrap();
        assert_eq!(
            t.expand(&two()),
            "https://proxy.example.org:4443/ptth?serialized_origin=https%3A%2F%2Fbackend.example.com,https%3A%2F%2Fapi.example.com%3A8443"
        );
        let t =
            UriTemplate::parse("https://proxy.example.org:4443/ptth{?serialized_origin*}").unwrap();
        assert_eq!(
            t.expand(&two()),
            "https://proxy.example.org:4443/ptth?serialized_origin=https%3A%2F%2Fbackend.example.com&serialized_origin=https%3A%2F%2Fapi.example.com%3A8443"
        );
    }

    #[test]
    fn other_expansions() {
        let t = UriTemplate::parse("https://p.example/x?a=1{&serialized_origin}").unwrap();
        assert_eq!(
            t.expand(&two()[..1]),
            "https://p.example/x?a=1&serialized_origin=https%3A%2F%2Fbackend.example.com"
        );
        // Undefined variables and empty lists expand to nothing.
        let t = UriTemplate::parse(
            "https://p.example/{other}{serialized_origin}{?x,serialized_origin}",
        )
        .unwrap();
        assert_eq!(t.expand(&[]), "https://p.example/");
        assert_eq!(
            t.expand(&two()[1..]),
            "https://p.example/https%3A%2F%2Fapi.example.com%3A8443?serialized_origin=https%3A%2F%2Fapi.example.com%3A8443"
        );
        let t = UriTemplate::well_known(
            &"proxy.example.org".parse().unwrap(),
            &SetupTokens::default(),
        )
        .unwrap();
        assert_eq!(
            t.expand(&two()[..1]),
            "https://proxy.example.org/.well-known/ptth/https%3A%2F%2Fbackend.example.com/"
        );
    }

    #[test]
    fn template_rule_violations() {
        use TemplateError::*;
        let cases: &[(&str, TemplateError)] = &[
            (
                "https://p.example/{+serialized_origin}",
                ForbiddenOperator('+'),
            ),
            (
                "https://p.example/{#serialized_origin}",
                ForbiddenOperator('#'),
            ),
            (
                "https://p.example/{.serialized_origin}",
                ForbiddenOperator('.'),
            ),
            (
                "https://p.example/{/serialized_origin}",
                ForbiddenOperator('/'),
            ),
            (
                "https://p.example/{;serialized_origin}",
                ForbiddenOperator(';'),
            ),
            (
                "https://p.example/{=serialized_origin}",
                ReservedOperator('='),
            ),
            (
                "https://p.example/{!serialized_origin}",
                ReservedOperator('!'),
            ),
            ("https://p.example/ptth", MissingSerializedOrigin),
            ("https://p.example/{x}", MissingSerializedOrigin),
            ("/.well-known/ptth/{serialized_origin}/", NotAbsolute),
            ("https:///x/{serialized_origin}", NotAbsolute),
            ("https://p.example?{serialized_origin}", NotAbsolute),
            ("https://{serialized_origin}/", VariableOutsidePathOrQuery),
            (
                "https://p.example{serialized_origin}/",
                VariableOutsidePathOrQuery,
            ),
            ("{serialized_origin}", VariableOutsidePathOrQuery),
            (
                "https://p.example/#{serialized_origin}",
                VariableOutsidePathOrQuery,
            ),
            (
                "https://p.example/ {serialized_origin}",
                NotPrintableAscii { at: 18 },
            ),
            (
                "https://p.example/\u{e9}{serialized_origin}",
                NotPrintableAscii { at: 18 },
            ),
            ("https://p.example/{serialized_origin", UnbalancedBrace),
            ("https://p.example/}{serialized_origin}", UnbalancedBrace),
            ("https://p.example/{serialized_origin:3}", PrefixOnList),
            (
                "https://p.example/{}{serialized_origin}",
                BadExpression(String::new()),
            ),
            ("https://p.example/{a b}", NotPrintableAscii { at: 20 }),
            (
                "https://p.example/{serialized-origin}",
                BadExpression("serialized-origin".into()),
            ),
            (
                "https://p.example/{x:0}{serialized_origin}",
                BadExpression("x:0".into()),
            ),
            ("https://p.example/%zz{serialized_origin}", BadLiteral('%')),
            ("https://p.example/<{serialized_origin}", BadLiteral('<')),
        ];
        for (template, expected) in cases {
            assert_eq!(
                UriTemplate::parse(template).as_ref().err(),
                Some(expected),
                "{template}"
            );
        }
        assert!(UriTemplate::parse("https://p.example/{x:10,serialized_origin*}").is_ok());
        assert!(UriTemplate::parse("https://p.example/%41/{serialized_origin}").is_ok());
    }

    #[test]
    fn well_known_expand_and_parse() {
        let tokens = SetupTokens::default();
        let path = expand_well_known(&two(), &tokens);
        assert_eq!(
            path,
            "/.well-known/ptth/https%3A%2F%2Fbackend.example.com,https%3A%2F%2Fapi.example.com%3A8443/"
        );
        assert_eq!(parse_well_known(&path, &tokens).unwrap(), two());
        // Digest §3.2 example path.
        assert_eq!(
            parse_well_known("/.well-known/ptth/https%3A%2F%2Fapp.example.net/", &tokens).unwrap(),
            vec!["https://app.example.net"
                .parse::<SerializedOrigin>()
                .unwrap()]
        );
        // Lowercase hex, no trailing slash, and a query are tolerated.
        assert_eq!(
            parse_well_known(
                "/.well-known/ptth/https%3a%2f%2fapp.example.net?x=1",
                &tokens
            )
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn well_known_negative() {
        let tokens = SetupTokens::default();
        use TemplateError::*;
        type Check = fn(&TemplateError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("/other/x/", |e| *e == NotWellKnown),
            ("/.well-known/ptth", |e| *e == NotWellKnown),
            ("/.well-known/ptth/", |e| *e == EmptyOriginList),
            ("/.well-known/ptth//", |e| *e == EmptyOriginList),
            ("/.well-known/ptth///", |e| *e == TrailingSegments),
            ("/.well-known/ptth/null/", |e| {
                *e == Origin(OriginError::Null)
            }),
            ("/.well-known/ptth/https%3A%2F%2Fa.example,/", |e| {
                *e == EmptyElement
            }),
            ("/.well-known/ptth/,https%3A%2F%2Fa.example/", |e| {
                *e == EmptyElement
            }),
            ("/.well-known/ptth/https%3A%2F%2Fa.example%2/", |e| {
                *e == BadPercentEncoding
            }),
            ("/.well-known/ptth/https%3A%2F%2Fa.example%FF/", |e| {
                *e == NotUtf8
            }),
            ("/.well-known/ptth/https%3A%2F%2Fa.example/x/", |e| {
                *e == TrailingSegments
            }),
            ("/.well-known/ptth/https%3A%2F%2Fu%40a.example/", |e| {
                *e == Origin(OriginError::Userinfo)
            }),
            ("/.well-known/ptth/https%3A%2F%2Fa.example%2Fp/", |e| {
                *e == Origin(OriginError::HasPath)
            }),
            // An encoded comma is part of one element, not a separator.
            (
                "/.well-known/ptth/https%3A%2F%2Fa.example%2Chttps%3A%2F%2Fb.example/",
                |e| matches!(e, Origin(_)),
            ),
        ];
        for (path, check) in cases {
            let err = parse_well_known(path, &tokens).unwrap_err();
            assert!(check(&err), "{path}: {err:?}");
        }
    }

    proptest! {
        #[test]
        fn well_known_round_trip(origins in proptest::collection::vec(arb_origin(), 1..5)) {
            let tokens = SetupTokens::default();
            let path = expand_well_known(&origins, &tokens);
            prop_assert!(path.parse::<http::uri::PathAndQuery>().is_ok());
            prop_assert_eq!(parse_well_known(&path, &tokens).unwrap(), origins);
        }

        #[test]
        fn default_template_matches_well_known(origins in proptest::collection::vec(arb_origin(), 1..4)) {
            let tokens = SetupTokens::default();
            let t = UriTemplate::well_known(&"gw.example:4443".parse().unwrap(), &tokens).unwrap();
            prop_assert_eq!(
                t.expand(&origins),
                format!("https://gw.example:4443{}", expand_well_known(&origins, &tokens))
            );
        }

        #[test]
        fn template_parse_never_panics(s in "[ -~]{0,60}") {
            if let Ok(t) = UriTemplate::parse(&s) {
                let _ = t.expand(&[]);
            }
        }
    }
}
