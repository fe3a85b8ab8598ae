//! The two reverse-connect URI templates (draft-rosomakho-masque-reverse-connect-01):
//! the listener control channel (`target`, `ipproto`) and the accepting connection
//! (`request_id`), with their variables' values and the gateway's parsing of its default
//! paths.
//!
//! Defaults, with `$PROXY_HOST:$PROXY_PORT` the gateway:
//!
//! ```text
//! https://$PROXY_HOST:$PROXY_PORT/.well-known/masque/listen/{target}/{ipproto}/
//! https://$PROXY_HOST:$PROXY_PORT/.well-known/masque/accept/{request_id}/
//! ```
//!
//! Both templates follow RFC 9484 §3's rules (the draft: "All template requirements listed
//! in Section 3 of CONNECT-IP apply here", and for the accept template the same list): a
//! level 3 template or lower; absolute with non-empty scheme, authority and a path starting
//! with `/`; variables only in the path or query; ASCII 0x21–0x7E only; no `+`, `#`, `.`,
//! `/` or `;` operators. The RFC 6570 parsing is the PTTH template's (`template.rs`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::uri::Authority;
use http::Uri;

use crate::pct;
use crate::reverse_connect::{Hostname, IpProtocol, RequestId};
use crate::template::{self, Operator, Part, TemplateError};

/// The `target` variable of the listen template.
pub const TARGET: &str = "target";
/// The `ipproto` variable of the listen template.
pub const IPPROTO: &str = "ipproto";
/// The `request_id` variable of the accept template.
pub const REQUEST_ID: &str = "request_id";
/// The path prefix of the default listen template.
pub const LISTEN_PREFIX: &str = "/.well-known/masque/listen/";
/// The path prefix of the default accept template.
pub const ACCEPT_PREFIX: &str = "/.well-known/masque/accept/";

/// Which of the two templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReverseExchange {
    /// The listener control channel: Upgrade token and `:protocol` `connect-listen`.
    Listen,
    /// Accepting one connection: `connect-accept`.
    Accept,
}

impl ReverseExchange {
    /// The Upgrade token and `:protocol` value.
    pub fn token(self) -> &'static str {
        match self {
            Self::Listen => "connect-listen",
            Self::Accept => "connect-accept",
        }
    }
}

impl fmt::Display for ReverseExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// Why a template or a default path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReverseTemplateError {
    /// An RFC 6570 or placement error.
    #[error("{0}")]
    Template(#[from] TemplateError),
    /// A level 4 modifier (`*` explode or `:N` prefix) on a variable.
    #[error("the {0:?} modifier is level 4; a reverse-connect template is level 3 or lower")]
    Level4(String),
    /// The accept template lacks `request_id`.
    #[error("the accept template does not contain the request_id variable")]
    MissingRequestId,
    /// The expansion is not a valid URI.
    #[error("the expanded template is not a valid URI: {0}")]
    BadExpansion(String),
    /// A path outside the default prefix.
    #[error("path is not under {0}")]
    NotUnderPrefix(&'static str),
    /// The default path has the wrong number of segments.
    #[error("path does not have the default template's segments")]
    Shape,
    /// Malformed percent-encoding or non-UTF-8 in a value.
    #[error("malformed percent-encoding in {0}")]
    BadEncoding(&'static str),
    /// A `target` value that is none of the allowed forms.
    #[error("target {0:?} is not a hostname, IP prefix, \"*\", \"*.domain\" or \".\"")]
    BadTarget(String),
    /// An `ipproto` value other than 6, 17 or `*`.
    #[error("ipproto {0:?} is not 6, 17 or *")]
    BadIpProto(String),
    /// A `request_id` that is not a canonical decimal up to 2^62 − 1.
    #[error("request_id {0:?} is not a decimal integer up to 2^62-1")]
    BadRequestId(String),
}

/// The scope of services an origin's listener accepts flows for (the `target` variable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenTarget {
    /// `*`: "does not limit scope".
    Any,
    /// `.`: "the client will accept sessions to local services only".
    LocalOnly,
    /// A hostname.
    Host(Hostname),
    /// `*.domain`: any host in the domain.
    Wildcard(Hostname),
    /// An IPv4 or IPv6 address or prefix (RFC 9484 §4.6); an address is a full-length
    /// prefix.
    Prefix {
        /// The address (host bits below the prefix length are zero).
        addr: IpAddr,
        /// The prefix length.
        len: u8,
    },
}

impl FromStr for ListenTarget {
    type Err = ReverseTemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ReverseTemplateError::BadTarget(s.to_owned());
        match s {
            "*" => return Ok(Self::Any),
            "." => return Ok(Self::LocalOnly),
            _ => {}
        }
        if let Some(domain) = s.strip_prefix("*.") {
            return Hostname::new(domain).map(Self::Wildcard).ok_or_else(bad);
        }
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        if let Ok(addr) = addr_text.parse::<IpAddr>() {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len_text {
                None => max,
                Some(l)
                    if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    l.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(bad)?
                }
                Some(_) => return Err(bad()),
            };
            // An address with bits set below the prefix length is ambiguous (a host or
            // its network?); refuse it rather than guess.
            if !host_bits_zero(addr, len) {
                return Err(bad());
            }
            return Ok(Self::Prefix { addr, len });
        }
        if len_text.is_some() {
            return Err(bad());
        }
        Hostname::new(s).map(Self::Host).ok_or_else(bad)
    }
}

fn host_bits_zero(addr: IpAddr, len: u8) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            len >= 32 || bits.checked_shl(u32::from(len)).unwrap_or(0) == 0
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            len >= 128 || bits.checked_shl(u32::from(len)).unwrap_or(0) == 0
        }
    }
}

impl fmt::Display for ListenTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::LocalOnly => f.write_str("."),
            Self::Host(h) => write!(f, "{h}"),
            Self::Wildcard(h) => write!(f, "*.{h}"),
            Self::Prefix { addr, len } => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                if *len == full {
                    write!(f, "{addr}")
                } else {
                    write!(f, "{addr}/{len}")
                }
            }
        }
    }
}

/// Which protocols a listener accepts (the `ipproto` variable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtoScope {
    /// `6` or `17`: one protocol.
    Only(IpProtocol),
    /// `*`: TCP and UDP.
    Any,
}

impl IpProtoScope {
    /// Whether `protocol` is in scope.
    pub fn allows(self, protocol: IpProtocol) -> bool {
        match self {
            Self::Only(p) => p == protocol,
            Self::Any => true,
        }
    }
}

impl FromStr for IpProtoScope {
    type Err = ReverseTemplateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "6" => Ok(Self::Only(IpProtocol::Tcp)),
            "17" => Ok(Self::Only(IpProtocol::Udp)),
            "*" => Ok(Self::Any),
            _ => Err(ReverseTemplateError::BadIpProto(s.to_owned())),
        }
    }
}

impl fmt::Display for IpProtoScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Only(p) => write!(f, "{}", p.number()),
            Self::Any => f.write_str("*"),
        }
    }
}

/// A validated reverse-connect URI template of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseTemplate {
    exchange: ReverseExchange,
    source: String,
    parts: Vec<Part>,
}

impl ReverseTemplate {
    /// Parses and validates a listen template (`target` and `ipproto` are optional).
    pub fn listen(text: &str) -> Result<Self, ReverseTemplateError> {
        Self::parse(ReverseExchange::Listen, text)
    }

    /// Parses and validates an accept template; "The URI Template MUST contain variable
    /// "request_id"".
    pub fn accept(text: &str) -> Result<Self, ReverseTemplateError> {
        Self::parse(ReverseExchange::Accept, text)
    }

    /// The default template of `exchange` for a gateway at `authority`.
    pub fn default_for(
        exchange: ReverseExchange,
        authority: &Authority,
    ) -> Result<Self, ReverseTemplateError> {
        match exchange {
            ReverseExchange::Listen => Self::listen(&format!(
                "https://{authority}{LISTEN_PREFIX}{{{TARGET}}}/{{{IPPROTO}}}/"
            )),
            ReverseExchange::Accept => Self::accept(&format!(
                "https://{authority}{ACCEPT_PREFIX}{{{REQUEST_ID}}}/"
            )),
        }
    }

    fn parse(exchange: ReverseExchange, text: &str) -> Result<Self, ReverseTemplateError> {
        if let Some(at) = text.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(TemplateError::NotPrintableAscii { at }.into());
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or(TemplateError::UnbalancedBrace)?;
                    parts.push(template::parse_expression(&rest[1..end])?);
                    rest = &rest[end + 1..];
                }
                Some(start) => {
                    parts.push(Part::Literal(template::parse_literal(&rest[..start])?));
                    rest = &rest[start..];
                }
                None => {
                    parts.push(Part::Literal(template::parse_literal(rest)?));
                    rest = "";
                }
            }
        }
        template::check_placement(&parts)?;
        for part in &parts {
            if let Part::Expression { vars, .. } = part {
                if let Some(v) = vars.iter().find(|v| v.explode || v.prefix.is_some()) {
                    let modifier = if v.explode {
                        "*".to_owned()
                    } else {
                        format!(":{}", v.prefix.unwrap_or_default())
                    };
                    return Err(ReverseTemplateError::Level4(modifier));
                }
            }
        }
        let has = |name: &str| {
            parts.iter().any(|p| match p {
                Part::Expression { vars, .. } => vars.iter().any(|v| v.name == name),
                Part::Literal(_) => false,
            })
        };
        if exchange == ReverseExchange::Accept && !has(REQUEST_ID) {
            return Err(ReverseTemplateError::MissingRequestId);
        }
        Ok(Self {
            exchange,
            source: text.to_owned(),
            parts,
        })
    }

    /// Which template this is.
    pub fn exchange(&self) -> ReverseExchange {
        self.exchange
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Expands a listen template; `None` values are undefined (RFC 6570 §2.3: they
    /// expand to nothing). On an accept template only literals and other variables
    /// (undefined) come out.
    pub fn expand_listen(
        &self,
        target: Option<&ListenTarget>,
        ipproto: Option<IpProtoScope>,
    ) -> Result<Uri, ReverseTemplateError> {
        let target = target.map(ToString::to_string);
        let ipproto = ipproto.map(|p| p.to_string());
        self.expand(|name| match name {
            TARGET => target.clone(),
            IPPROTO => ipproto.clone(),
            _ => None,
        })
    }

    /// Expands an accept template for request `id` (decimal).
    pub fn expand_accept(&self, id: RequestId) -> Result<Uri, ReverseTemplateError> {
        let id = id.get().to_string();
        self.expand(|name| (name == REQUEST_ID).then(|| id.clone()))
    }

    fn expand(&self, value: impl Fn(&str) -> Option<String>) -> Result<Uri, ReverseTemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Expression { op, vars } => {
                    // RFC 6570 Appendix A: first / sep / named for the level 3 operators
                    // allowed here.
                    let (first, sep, named) = match op {
                        Operator::Simple => ("", ",", false),
                        Operator::Query => ("?", "&", true),
                        Operator::QueryContinuation => ("&", "&", true),
                    };
                    let mut first_defined = true;
                    for var in vars {
                        let Some(v) = value(&var.name) else { continue };
                        out.push_str(if first_defined { first } else { sep });
                        first_defined = false;
                        if named {
                            out.push_str(&var.name);
                            out.push('=');
                        }
                        out.push_str(&template::encode_value(&v));
                    }
                }
            }
        }
        out.parse::<Uri>()
            .map_err(|e| ReverseTemplateError::BadExpansion(format!("{out:?}: {e}")))
    }
}

impl fmt::Display for ReverseTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// What a default listen path names: both variables, each absent when the origin left it
/// undefined (an empty segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenScope {
    /// `target`, if set.
    pub target: Option<ListenTarget>,
    /// `ipproto`, if set.
    pub ipproto: Option<IpProtoScope>,
}

fn decode_segment(segment: &str, what: &'static str) -> Result<String, ReverseTemplateError> {
    let bytes =
        pct::decode(segment.as_bytes()).map_err(|_| ReverseTemplateError::BadEncoding(what))?;
    String::from_utf8(bytes).map_err(|_| ReverseTemplateError::BadEncoding(what))
}

/// Gateway side: parses a request path of the default listen template,
/// `/.well-known/masque/listen/{target}/{ipproto}/` (query ignored; the trailing `/` is
/// optional). Values are percent-decoded, so `*` and `%2A` are the same.
pub fn parse_listen_path(path: &str) -> Result<ListenScope, ReverseTemplateError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path
        .strip_prefix(LISTEN_PREFIX)
        .ok_or(ReverseTemplateError::NotUnderPrefix(LISTEN_PREFIX))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segments = rest.split('/');
    let (Some(target), Some(ipproto), None) = (segments.next(), segments.next(), segments.next())
    else {
        return Err(ReverseTemplateError::Shape);
    };
    let target = decode_segment(target, TARGET)?;
    let ipproto = decode_segment(ipproto, IPPROTO)?;
    Ok(ListenScope {
        target: (!target.is_empty()).then(|| target.parse()).transpose()?,
        ipproto: (!ipproto.is_empty()).then(|| ipproto.parse()).transpose()?,
    })
}

/// Gateway side: parses a request path of the default accept template,
/// `/.well-known/masque/accept/{request_id}/` (query ignored; trailing `/` optional).
pub fn parse_accept_path(path: &str) -> Result<RequestId, ReverseTemplateError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let rest = path
        .strip_prefix(ACCEPT_PREFIX)
        .ok_or(ReverseTemplateError::NotUnderPrefix(ACCEPT_PREFIX))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(ReverseTemplateError::Shape);
    }
    parse_request_id(&decode_segment(rest, REQUEST_ID)?)
}

/// A `request_id` value: canonical decimal (no sign, no leading zero), at most 2^62 − 1.
pub fn parse_request_id(text: &str) -> Result<RequestId, ReverseTemplateError> {
    let bad = || ReverseTemplateError::BadRequestId(text.to_owned());
    let canonical = !text.is_empty()
        && text.len() <= 19
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(bad());
    }
    text.parse::<u64>()
        .ok()
        .and_then(RequestId::new)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn authority() -> Authority {
        "example.org".parse().unwrap()
    }

    #[test]
    fn the_drafts_listen_example_expands_and_parses_back() {
        // Draft §"Establishing Listener Control Channel over HTTP/1.1": the default
        // template for local TCP and UDP services gives /.well-known/masque/listen/./*/
        // (RFC 6570 simple expansion percent-encodes "*").
        let t = ReverseTemplate::default_for(ReverseExchange::Listen, &authority()).unwrap();
        let uri = t
            .expand_listen(Some(&ListenTarget::LocalOnly), Some(IpProtoScope::Any))
            .unwrap();
        assert_eq!(uri, "https://example.org/.well-known/masque/listen/./%2A/");
        for path in [
            "/.well-known/masque/listen/./%2A/",
            "/.well-known/masque/listen/./*/",
        ] {
            assert_eq!(
                parse_listen_path(path).unwrap(),
                ListenScope {
                    target: Some(ListenTarget::LocalOnly),
                    ipproto: Some(IpProtoScope::Any)
                }
            );
        }
        // Both undefined: empty segments.
        let uri = t.expand_listen(None, None).unwrap();
        assert_eq!(uri.path(), "/.well-known/masque/listen///");
        assert_eq!(
            parse_listen_path(uri.path()).unwrap(),
            ListenScope {
                target: None,
                ipproto: None
            }
        );
    }

    #[test]
    fn the_drafts_template_examples_parse() {
        for listen in [
            "https://example.org/.well-known/masque/listen/{target}/{ipproto}/",
            "https://proxy.example.org:4443/masque/listen?t={target}&i={ipproto}",
            "https://proxy.example.org:4443/masque/listen{?target,ipproto}",
            "https://masque.example.org/?user=bob",
        ] {
            ReverseTemplate::listen(listen).unwrap();
        }
        for accept in [
            "https://example.org/.well-known/masque/accept/{request_id}/",
            "https://proxy.example.org:4443/masque/accept?id={request_id}",
            "https://proxy.example.org:4443/masque/accept{?request_id}",
            "https://masque.example.org/?user=bob&request_id={request_id}",
        ] {
            let t = ReverseTemplate::accept(accept).unwrap();
            let uri = t.expand_accept(RequestId::new(1).unwrap()).unwrap();
            assert!(uri.to_string().contains('1'), "{uri}");
        }
        let t =
            ReverseTemplate::accept("https://proxy.example.org:4443/masque/accept{?request_id}")
                .unwrap();
        assert_eq!(
            t.expand_accept(RequestId::new(77).unwrap()).unwrap(),
            "https://proxy.example.org:4443/masque/accept?request_id=77"
        );
        let t = ReverseTemplate::listen("https://p.example/l{?target,ipproto}").unwrap();
        let target: ListenTarget = "2001:db8::/32".parse().unwrap();
        assert_eq!(
            t.expand_listen(Some(&target), Some(IpProtoScope::Only(IpProtocol::Udp)))
                .unwrap(),
            "https://p.example/l?target=2001%3Adb8%3A%3A%2F32&ipproto=17"
        );
    }

    #[test]
    fn templates_that_break_the_rules_are_refused() {
        assert_eq!(
            ReverseTemplate::accept("https://example.org/accept/"),
            Err(ReverseTemplateError::MissingRequestId)
        );
        assert_eq!(
            ReverseTemplate::accept("https://example.org/accept/{request_id*}"),
            Err(ReverseTemplateError::Level4("*".into()))
        );
        assert_eq!(
            ReverseTemplate::listen("https://example.org/l/{target:3}"),
            Err(ReverseTemplateError::Level4(":3".into()))
        );
        assert_eq!(
            ReverseTemplate::accept("https://example.org/{+request_id}"),
            Err(TemplateError::ForbiddenOperator('+').into())
        );
        assert_eq!(
            ReverseTemplate::accept("https://{request_id}.example.org/"),
            Err(TemplateError::VariableOutsidePathOrQuery.into())
        );
        assert_eq!(
            ReverseTemplate::listen("/relative/{target}"),
            Err(TemplateError::NotAbsolute.into())
        );
        assert!(matches!(
            ReverseTemplate::listen("https://example.org/l\u{e9}/"),
            Err(ReverseTemplateError::Template(
                TemplateError::NotPrintableAscii { .. }
            ))
        ));
    }

    #[test]
    fn targets_parse_in_every_form() {
        let cases = [
            ("*", ListenTarget::Any),
            (".", ListenTarget::LocalOnly),
            (
                "db.internal",
                ListenTarget::Host(Hostname::new("db.internal").unwrap()),
            ),
            (
                "*.corp.example",
                ListenTarget::Wildcard(Hostname::new("corp.example").unwrap()),
            ),
            (
                "192.0.2.0/24",
                ListenTarget::Prefix {
                    addr: "192.0.2.0".parse().unwrap(),
                    len: 24,
                },
            ),
            (
                "192.0.2.7",
                ListenTarget::Prefix {
                    addr: "192.0.2.7".parse().unwrap(),
                    len: 32,
                },
            ),
            (
                "2001:db8::/32",
                ListenTarget::Prefix {
                    addr: "2001:db8::".parse().unwrap(),
                    len: 32,
                },
            ),
        ];
        for (text, target) in cases {
            assert_eq!(text.parse::<ListenTarget>().unwrap(), target, "{text}");
            assert_eq!(target.to_string(), text);
        }
        for bad in [
            "",
            "192.0.2.1/24",
            "10.0.0.0/33",
            "10.0.0.0/",
            "host/8",
            "*.",
            "a b",
            "**",
        ] {
            assert!(bad.parse::<ListenTarget>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn accept_paths_parse_and_bad_ids_are_refused() {
        assert_eq!(
            parse_accept_path("/.well-known/masque/accept/1/")
                .unwrap()
                .get(),
            1
        );
        assert_eq!(
            parse_accept_path("/.well-known/masque/accept/4611686018427387903")
                .unwrap()
                .get(),
            (1 << 62) - 1
        );
        for bad in [
            "",
            "01",
            "-1",
            "4611686018427387904",
            "1x",
            "99999999999999999999",
        ] {
            let path = format!("{ACCEPT_PREFIX}{bad}/");
            assert_eq!(
                parse_accept_path(&path),
                Err(ReverseTemplateError::BadRequestId(bad.to_owned())),
                "{path}"
            );
        }
        assert_eq!(
            parse_accept_path("/.well-known/masque/accept/1/2/"),
            Err(ReverseTemplateError::Shape)
        );
        assert_eq!(
            parse_accept_path("/.well-known/ptth/x/"),
            Err(ReverseTemplateError::NotUnderPrefix(ACCEPT_PREFIX))
        );
        assert_eq!(
            parse_listen_path("/.well-known/masque/listen/./6/x/"),
            Err(ReverseTemplateError::Shape)
        );
        assert_eq!(
            parse_listen_path("/.well-known/masque/listen/./7/"),
            Err(ReverseTemplateError::BadIpProto("7".into()))
        );
    }

    proptest! {
        #[test]
        fn accept_ids_round_trip_through_the_default_template(id in 0..=crate::stream_id::VARINT_MAX) {
            let t = ReverseTemplate::default_for(ReverseExchange::Accept, &authority()).unwrap();
            let uri = t.expand_accept(RequestId::new(id).unwrap()).unwrap();
            prop_assert_eq!(parse_accept_path(uri.path()).unwrap().get(), id);
        }

        #[test]
        fn listen_scopes_round_trip_through_the_default_template(
            a in any::<[u8; 4]>(), len in 0u8..=32, which in 0u8..5, proto in 0u8..4,
        ) {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            let masked = u32::from_be_bytes(a) & mask;
            let target = match which {
                0 => None,
                1 => Some(ListenTarget::Any),
                2 => Some(ListenTarget::LocalOnly),
                3 => Some(ListenTarget::Wildcard(Hostname::new("x.example").unwrap())),
                _ => Some(ListenTarget::Prefix { addr: IpAddr::from(masked.to_be_bytes()), len }),
            };
            let ipproto = match proto {
                0 => None,
                1 => Some(IpProtoScope::Any),
                2 => Some(IpProtoScope::Only(IpProtocol::Tcp)),
                _ => Some(IpProtoScope::Only(IpProtocol::Udp)),
            };
            let t = ReverseTemplate::default_for(ReverseExchange::Listen, &authority()).unwrap();
            let uri = t.expand_listen(target.as_ref(), ipproto).unwrap();
            prop_assert_eq!(parse_listen_path(uri.path()).unwrap(), ListenScope { target, ipproto });
        }
    }
}
