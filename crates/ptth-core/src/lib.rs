//! Sans-IO core of PTTH: the mechanism catalogue, setup validation, stream-ID mapping and scopes.
//!
//! PTTH ("reverse HTTP") lets an origin behind NAT dial out to a gateway, which then sends
//! HTTP requests back over that connection. This crate holds the rules every mechanism
//! shares, as pure functions and state machines on [`http`] and [`bytes`] types:
//!
//! - [`Mechanism`]: the catalogue of reversal mechanisms (Potato `rh1`/`rh2`/`rh3`, PTTH
//!   -01 Upgrade and extended CONNECT, PTTH -00 OPTIONS, bt `h2-reverse`/`h3-reverse`,
//!   lentczner `PTTH/1.0`) as data, with their ALPN tokens ([`classify_alpn`],
//!   [`tunnel_alpn_protocols`]).
//! - The RFC 7639 `ALPN` header codec ([`encode_list`], [`parse_list`], [`parse_single`]).
//! - Setup exchanges, both sides: request and response builders and validators, and the
//!   one mapping of setup failures to HTTP status codes ([`SetupRejection`]).
//! - RFC 6454 serialized origins and RFC 6570 URI templates for the well-known path
//!   ([`SerializedOrigin`], [`expand_well_known`], [`parse_well_known`], [`UriTemplate`]).
//! - QUIC stream IDs and RFC 9297 quarter stream IDs for forward and reversed HTTP/3
//!   ([`StreamId`], [`QsidMapping`]).
//! - The RFC 8336 ORIGIN frame payload shared by HTTP/2 and HTTP/3 ([`OriginFrame`],
//!   [`OriginEntry`]).
//! - Routing scopes ([`Scope`], [`RequestTarget`]) and the connection [`Lifecycle`].
//! - Reverse CONNECT (draft-rosomakho-masque-reverse-connect): RFC 9297 capsules
//!   ([`CapsuleDecoder`], [`Capsule`], [`UdpProxyingPayload`]), the control capsules and
//!   each end's channel state ([`ControlCapsule`], [`GatewayChannel`], [`OriginChannel`]),
//!   the `connect-listen`/`connect-accept` templates ([`ReverseTemplate`]) and setup heads
//!   ([`validate_listen_request`], [`validate_accept_request`], [`ReverseRejection`]).
//!
//! What it does **not** do: any I/O. No sockets, no TLS, no QUIC, no HTTP framing, no
//! clock, no tasks. The protocol crates (`ptth-h1`, `ptth-h2`, `ptth-h3`) drive real
//! connections and call in here to build and check what goes over them.
//!
//! # Data flow
//!
//! ```text
//!  origin (ptth-origin)                                  gateway (ptth-gateway)
//!  ────────────────────                                  ──────────────────────
//!  SetupRequestParams                                    TLS/QUIC accept
//!     │ upgrade_request / connect_request                   │ classify_alpn(transport, alpn)
//!     ▼                                                     ├─ Reversed{..} ─────────────┐
//!  http::Request<()> ──── setup connection ────────────▶   └─ Setup{version}             │
//!                                                             │ validate_*_request        │
//!                                                             ├─ Err(SetupRejection)      │
//!                                                             │     → to_response()       │
//!                                                             ▼                           │
//!  validate_*_response ◀──── http::Response<()> ───────  AcceptedSetup → *_response      │
//!     │ chosen ProtocolId                                     │ (auth → Scope grants)     │
//!     ▼                                                       ▼                           ▼
//!  serve HTTP (origin is the server)  ◀═══ reversed channel ═══ Lifecycle::Active; route by
//!                                                               Scope::matches(RequestTarget)
//! ```
//!
//! # Example
//!
//! An origin builds an HTTP/1.1 setup request; the gateway validates it, answers, and
//! the origin checks the answer:
//!
//! ```
//! use ptth_core::{
//!     upgrade_request, upgrade_response, validate_upgrade_request, validate_upgrade_response,
//!     ProtocolId, SetupRequestParams, SetupTokens,
//! };
//!
//! let tokens = SetupTokens::default();
//! let params = SetupRequestParams {
//!     gateway_authority: "proxy.example.org".parse()?,
//!     origins: vec!["https://app.example.net".parse()?],
//!     offered: vec![ProtocolId::h2(), ProtocolId::http11()],
//!     authorization: Some("Bearer t0ken".parse()?),
//! };
//! let request = upgrade_request(&params, &tokens)?;
//! assert_eq!(request.uri(), "/.well-known/ptth/https%3A%2F%2Fapp.example.net/");
//! assert_eq!(request.headers()["alpn"], "h2, http%2F1.1");
//!
//! // Gateway: prefers http/1.1.
//! let accepted = validate_upgrade_request(&request, &[ProtocolId::http11()], &tokens)?;
//! assert_eq!(accepted.origins, params.origins);
//! let response = upgrade_response(&accepted, &tokens);
//!
//! // Origin: the gateway chose something it offered.
//! let chosen = validate_upgrade_response(&response, &params.offered, &tokens)?;
//! assert_eq!(chosen, ProtocolId::http11());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod alpn;
mod capsule;
mod datagrams;
mod lifecycle;
mod mechanism;
mod origin;
mod origin_frame;
mod pct;
mod reverse_connect;
mod reverse_setup;
mod reverse_template;
mod scope;
mod setup;
mod stream_id;
mod template;
mod tokens;

#[doc(hidden)]
pub mod fuzz_harness;

pub use alpn::{
    encode_list, encode_single, parse_list, parse_single, parse_str as parse_alpn_str,
    parse_values as parse_alpn_values, AlpnError, ProtocolId, ALPN, SELECTED_ALPN,
};
pub use capsule::{
    encode_header as encode_capsule_header, Capsule, CapsuleDecoder, CapsuleError, CapsuleType,
    DatagramError, Decoded, UdpProxyingPayload, MAX_DATAGRAM_CAPSULE,
};
pub use datagrams::HttpDatagrams;
pub use lifecycle::{CloseReason, ConnectionState, DrainSource, Lifecycle, LifecycleError};
pub use mechanism::{
    classify_alpn, tunnel_alpn_protocols, AlpnRole, AlpnSet, HttpVersion, Mechanism, MechanismSpec,
    SetupKind, Transport, UnknownName,
};
pub use origin::{default_port, OriginError, SerializedOrigin};
pub use origin_frame::{OriginEntry, OriginFrame, OriginFrameError};
pub use reverse_connect::{
    AvailableServices, ChannelError, ConnectionRequest, ConnectionRequestDeclined, ControlCapsule,
    ControlCapsuleError, Destination, GatewayChannel, GatewayEvent, Hostname, IpProtocol,
    MalformedCapsule, OriginChannel, OriginEvent, Peer, RequestId, RequestIdSequence, Service,
    ServicePort, DEFAULT_ID_MEMORY, DEFAULT_MAX_CONTROL_CAPSULE, DEFAULT_MAX_SERVICES,
    MAX_HOSTNAME_LEN,
};
pub use reverse_setup::{
    capsule_protocol, reverse_connect_request, reverse_exchange_for_path, reverse_response,
    reverse_upgrade_request, validate_accept_request, validate_listen_request,
    validate_reverse_response, AcceptSetup, ListenSetup, ReverseRejection, ReverseRejectionKind,
    ReverseSetupError, SetupForm, CAPSULE_PROTOCOL,
};
pub use reverse_template::{
    parse_accept_path, parse_listen_path, parse_request_id, IpProtoScope, ListenScope,
    ListenTarget, ReverseExchange, ReverseTemplate, ReverseTemplateError, ACCEPT_PREFIX, IPPROTO,
    LISTEN_PREFIX, REQUEST_ID, TARGET,
};
pub use scope::{Arrival, RequestTarget, Scope, ScopeError, Specificity};
pub use setup::{
    connect_request, connect_response, legacy_request, legacy_response, options_request,
    options_response, upgrade_request, upgrade_response, validate_connect_request,
    validate_connect_response, validate_legacy_request, validate_legacy_response,
    validate_options_request, validate_options_response, validate_upgrade_request,
    validate_upgrade_response, AcceptedSetup, RejectionKind, RequestHead, ResponseHead, SetupError,
    SetupRejection, SetupRequestParams,
};
pub use stream_id::{
    decode_varint, encode_varint, varint_len, Dir, OutOfRange, QsidError, QsidMapping,
    QuarterStreamId, Side, StreamId, VarIntError, H3_DATAGRAM_ERROR, H3_REQUEST_REJECTED,
    TWO_WAY_EXTENSION_OFFSET, VARINT_MAX,
};
pub use template::{
    expand_well_known, is_well_known, parse_origin_list, parse_well_known, TemplateError,
    UriTemplate, SERIALIZED_ORIGIN,
};
pub use tokens::SetupTokens;
