//! The mechanism catalogue: every way of reversing HTTP that the drafts define, as data.
//!
//! Each [`Mechanism`] has one [`MechanismSpec`] row saying which transport it runs on,
//! how the reversal is set up, which HTTP version the setup uses and which the gateway
//! then speaks to the origin. Adding a draft revision is a new row or a new
//! [`AlpnSet`], not a new code path.

use std::fmt;
use std::str::FromStr;

use crate::alpn::ProtocolId;

/// The secure transport the origin dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TLS over TCP.
    Tls,
    /// QUIC.
    Quic,
}

/// An HTTP version, as used for a setup exchange or for the reversed channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HttpVersion {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2.
    Http2,
    /// HTTP/3.
    Http3,
}

impl HttpVersion {
    /// The ALPN identifier of the forward protocol: `http/1.1`, `h2` or `h3`.
    pub fn alpn_id(self) -> ProtocolId {
        match self {
            Self::Http1 => ProtocolId::http11(),
            Self::Http2 => ProtocolId::h2(),
            Self::Http3 => ProtocolId::h3(),
        }
    }

    /// The version whose forward ALPN identifier is `id`, if any.
    pub fn from_alpn_id(id: &ProtocolId) -> Option<Self> {
        match id.as_bytes() {
            b"http/1.1" => Some(Self::Http1),
            b"h2" => Some(Self::Http2),
            b"h3" => Some(Self::Http3),
            _ => None,
        }
    }
}

impl fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http1 => "HTTP/1.1",
            Self::Http2 => "HTTP/2",
            Self::Http3 => "HTTP/3",
        })
    }
}

/// Which revision's ALPN tokens a Potato origin offers.
///
/// draft-thomson-ptth-potato changed its tokens in every revision (digest §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AlpnSet {
    /// -00: `rh1`, `rh2`, `rh3`.
    #[default]
    Potato00,
    /// -01: `ph1`, `ph2`, `ph3`.
    Potato01,
    /// -02: `Ɩɥ`, `Շɥ`, `Ɛɥ` in UTF-8.
    Potato02,
}

impl AlpnSet {
    /// Every set, newest first.
    pub const ALL: &'static [AlpnSet] = &[Self::Potato02, Self::Potato01, Self::Potato00];

    /// The name used in configuration: `potato-00`, `potato-01`, `potato-02`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Potato00 => "potato-00",
            Self::Potato01 => "potato-01",
            Self::Potato02 => "potato-02",
        }
    }

    /// The reversed-HTTP ALPN token of this revision for `version`.
    pub fn token(self, version: HttpVersion) -> &'static [u8] {
        // draft-thomson-ptth-potato-00/-01/-02 §3 (IANA "TODO: Register ALPN labels").
        match (self, version) {
            (Self::Potato00, HttpVersion::Http1) => b"rh1",
            (Self::Potato00, HttpVersion::Http2) => b"rh2",
            (Self::Potato00, HttpVersion::Http3) => b"rh3",
            (Self::Potato01, HttpVersion::Http1) => b"ph1",
            (Self::Potato01, HttpVersion::Http2) => b"ph2",
            (Self::Potato01, HttpVersion::Http3) => b"ph3",
            // -02: "h1/h2/h3" upside-down and reversed: U+0196, U+0547, U+0190 + U+0265.
            (Self::Potato02, HttpVersion::Http1) => &[0xc6, 0x96, 0xc9, 0xa5],
            (Self::Potato02, HttpVersion::Http2) => &[0xd5, 0x87, 0xc9, 0xa5],
            (Self::Potato02, HttpVersion::Http3) => &[0xc6, 0x90, 0xc9, 0xa5],
        }
    }
}

impl fmt::Display for AlpnSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of the known values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?}; expected one of: {valid}")]
#[non_exhaustive]
pub struct UnknownName {
    what: &'static str,
    got: String,
    valid: String,
}

impl FromStr for AlpnSet {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|set| set.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownName {
                what: "ALPN set",
                got: s.to_owned(),
                valid: "potato-00, potato-01, potato-02".to_owned(),
            })
    }
}

/// How the reversal is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SetupKind {
    /// The TLS/QUIC ALPN alone reverses the roles (Potato, bt).
    AlpnOnly,
    /// HTTP/1.1 `GET` + `Upgrade: ptth` (PTTH -01).
    Upgrade,
    /// Extended CONNECT with `:protocol = ptth` (PTTH -01, RFC 8441 / RFC 9220).
    ExtendedConnect,
    /// HTTP/3 `OPTIONS` on the connection that is then reversed (PTTH -00).
    Options,
    /// `Upgrade: PTTH/1.0` (draft-lentczner-rhttp).
    LegacyUpgrade,
}

/// A reversal mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// Potato reversed HTTP/1.1 over TLS.
    Rh1,
    /// Potato reversed HTTP/2 over TLS.
    Rh2,
    /// Potato reversed HTTP/3 over QUIC.
    Rh3,
    /// PTTH -01: HTTP/1.1 Upgrade, then HTTP/1.1 on the connection.
    UpgradeH1,
    /// PTTH -01: HTTP/1.1 Upgrade, then HTTP/2 on the connection.
    UpgradeH2,
    /// PTTH -01: HTTP/2 extended CONNECT, then HTTP/2 inside the stream.
    ConnectH2,
    /// PTTH -01: HTTP/3 extended CONNECT, then HTTP/2 inside the stream.
    ConnectH3,
    /// PTTH -00: HTTP/3 `OPTIONS`, then HTTP/3 on the same connection, reversed.
    OptionsH3,
    /// draft-bt-httpbis-reverse-http `h2-reverse`.
    H2Reverse,
    /// draft-bt-httpbis-reverse-http `h3-reverse`.
    H3Reverse,
    /// draft-lentczner-rhttp `Upgrade: PTTH/1.0`.
    Ptth10,
}

/// One row of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MechanismSpec {
    /// The mechanism this row describes.
    pub mechanism: Mechanism,
    /// Its configuration name.
    pub name: &'static str,
    /// The transport the origin dials.
    pub transport: Transport,
    /// How the reversal is set up.
    pub setup: SetupKind,
    /// The HTTP version of the setup exchange (`None` for ALPN-only mechanisms).
    pub setup_version: Option<HttpVersion>,
    /// The HTTP version the gateway speaks to the origin once reversed.
    pub reversed_version: HttpVersion,
    /// Every HTTP version this setup exchange can carry (the mechanism picks one).
    pub carries: &'static [HttpVersion],
    /// Whether the origin must present a client certificate (draft-bt §3: "the origin MUST
    /// present a valid certificate chain").
    pub client_certificate: bool,
    /// Whether the origin must send an ORIGIN frame first (draft-bt §3: "the origin MUST
    /// immediately send an ORIGIN frame").
    pub origin_frame: bool,
    /// The draft section that defines it.
    pub draft: &'static str,
}

use HttpVersion::{Http1, Http2, Http3};

const PTTH_CARRIES: &[HttpVersion] = &[Http1, Http2];

static SPECS: [MechanismSpec; 11] = [
    MechanismSpec {
        mechanism: Mechanism::Rh1,
        name: "rh1",
        transport: Transport::Tls,
        setup: SetupKind::AlpnOnly,
        setup_version: None,
        reversed_version: Http1,
        carries: &[Http1],
        client_certificate: false,
        origin_frame: false,
        draft: "draft-thomson-ptth-potato-02 §3 (reversed HTTP/1.1)",
    },
    MechanismSpec {
        mechanism: Mechanism::Rh2,
        name: "rh2",
        transport: Transport::Tls,
        setup: SetupKind::AlpnOnly,
        setup_version: None,
        reversed_version: Http2,
        carries: &[Http2],
        client_certificate: false,
        origin_frame: false,
        draft: "draft-thomson-ptth-potato-02 §3 (reversed HTTP/2)",
    },
    MechanismSpec {
        mechanism: Mechanism::Rh3,
        name: "rh3",
        transport: Transport::Quic,
        setup: SetupKind::AlpnOnly,
        setup_version: None,
        reversed_version: Http3,
        carries: &[Http3],
        client_certificate: false,
        origin_frame: false,
        draft: "draft-thomson-ptth-potato-02 §3, §4.3 (reversed HTTP/3)",
    },
    MechanismSpec {
        mechanism: Mechanism::UpgradeH1,
        name: "upgrade-h1",
        transport: Transport::Tls,
        setup: SetupKind::Upgrade,
        setup_version: Some(Http1),
        reversed_version: Http1,
        carries: PTTH_CARRIES,
        client_certificate: false,
        origin_frame: false,
        draft: "draft-kazuho-ptth-ptth-01 §3 (HTTP/1.1 Upgrade)",
    },
    MechanismSpec {
        mechanism: Mechanism::UpgradeH2,
        name: "upgrade-h2",
        transport: Transport::Tls,
        setup: SetupKind::Upgrade,
        setup_version: Some(Http1),
        reversed_version: Http2,
        carries: PTTH_CARRIES,
        client_certificate: false,
        origin_frame: false,
        draft: "draft-kazuho-ptth-ptth-01 §3 (HTTP/1.1 Upgrade)",
    },
    MechanismSpec {
        mechanism: Mechanism::ConnectH2,
        name: "connect-h2",
        transport: Transport::Tls,
        setup: SetupKind::ExtendedConnect,
        setup_version: Some(Http2),
        reversed_version: Http2,
        carries: PTTH_CARRIES,
        client_certificate: false,
        origin_frame: false,
        draft: "draft-kazuho-ptth-ptth-01 §3 (HTTP/2 extended CONNECT, RFC 8441)",
    },
    MechanismSpec {
        mechanism: Mechanism::ConnectH3,
        name: "connect-h3",
        transport: Transport::Quic,
        setup: SetupKind::ExtendedConnect,
        setup_version: Some(Http3),
        reversed_version: Http2,
        carries: PTTH_CARRIES,
        client_certificate: false,
        origin_frame: false,
        draft: "draft-kazuho-ptth-ptth-01 §3 (HTTP/3 extended CONNECT, RFC 9220)",
    },
    MechanismSpec {
        mechanism: Mechanism::OptionsH3,
        name: "options-h3",
        transport: Transport::Quic,
        setup: SetupKind::Options,
        setup_version: Some(Http3),
        reversed_version: Http3,
        carries: &[Http3],
        client_certificate: false,
        origin_frame: false,
        draft: "draft-kazuho-ptth-ptth-00 §3 (HTTP/3 OPTIONS)",
    },
    MechanismSpec {
        mechanism: Mechanism::H2Reverse,
        name: "h2-reverse",
        transport: Transport::Tls,
        setup: SetupKind::AlpnOnly,
        setup_version: None,
        reversed_version: Http2,
        carries: &[Http2],
        client_certificate: true,
        origin_frame: true,
        draft: "draft-bt-httpbis-reverse-http-01 (h2-reverse)",
    },
    MechanismSpec {
        mechanism: Mechanism::H3Reverse,
        name: "h3-reverse",
        transport: Transport::Quic,
        setup: SetupKind::AlpnOnly,
        setup_version: None,
        reversed_version: Http3,
        carries: &[Http3],
        client_certificate: true,
        origin_frame: true,
        draft: "draft-bt-httpbis-reverse-http-01 (h3-reverse)",
    },
    MechanismSpec {
        mechanism: Mechanism::Ptth10,
        name: "ptth10",
        transport: Transport::Tls,
        setup: SetupKind::LegacyUpgrade,
        setup_version: Some(Http1),
        reversed_version: Http1,
        carries: &[Http1],
        client_certificate: false,
        origin_frame: false,
        draft: "draft-lentczner-rhttp-00 (Upgrade: PTTH/1.0)",
    },
];

/// draft-bt-httpbis-reverse-http: "h2-reverse" = 0x68 0x32 0x2d 0x72 0x65 0x76 0x65 0x72 0x73 0x65.
const H2_REVERSE: &[u8] = b"h2-reverse";
/// draft-bt-httpbis-reverse-http: "h3-reverse".
const H3_REVERSE: &[u8] = b"h3-reverse";

impl Mechanism {
    /// Every mechanism, in catalogue order.
    pub const ALL: &'static [Mechanism] = &[
        Self::Rh1,
        Self::Rh2,
        Self::Rh3,
        Self::UpgradeH1,
        Self::UpgradeH2,
        Self::ConnectH2,
        Self::ConnectH3,
        Self::OptionsH3,
        Self::H2Reverse,
        Self::H3Reverse,
        Self::Ptth10,
    ];

    /// This mechanism's catalogue row.
    pub fn spec(self) -> &'static MechanismSpec {
        let index = match self {
            Self::Rh1 => 0,
            Self::Rh2 => 1,
            Self::Rh3 => 2,
            Self::UpgradeH1 => 3,
            Self::UpgradeH2 => 4,
            Self::ConnectH2 => 5,
            Self::ConnectH3 => 6,
            Self::OptionsH3 => 7,
            Self::H2Reverse => 8,
            Self::H3Reverse => 9,
            Self::Ptth10 => 10,
        };
        &SPECS[index]
    }

    /// The configuration name, such as `rh2` or `connect-h3`.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The transport the origin dials.
    pub fn transport(self) -> Transport {
        self.spec().transport
    }

    /// How the reversal is set up.
    pub fn setup(self) -> SetupKind {
        self.spec().setup
    }

    /// The HTTP version of the setup exchange (`None` for ALPN-only mechanisms).
    pub fn setup_version(self) -> Option<HttpVersion> {
        self.spec().setup_version
    }

    /// The HTTP version the gateway speaks to the origin.
    pub fn reversed_version(self) -> HttpVersion {
        self.spec().reversed_version
    }

    /// Whether the origin must present a client certificate (draft-bt).
    pub fn requires_client_certificate(self) -> bool {
        self.spec().client_certificate
    }

    /// Whether the origin must send an ORIGIN frame right after its SETTINGS (draft-bt).
    pub fn sends_origin_frame(self) -> bool {
        self.spec().origin_frame
    }

    /// The mechanism of a tunnel connection, from what a gateway negotiated and set up on
    /// it: the transport, what its ALPN means ([`classify_alpn`]) and, on a forward
    /// connection, the kind of setup request admitted and the protocol the gateway chose for
    /// the reversed channel. Every mechanism a gateway registers comes from here.
    ///
    /// `None` when no catalogue row fits: a reversed role on the wrong transport, a forward
    /// connection with no setup yet, or a setup its connection does not carry (an `Upgrade`
    /// over HTTP/2, `OPTIONS` over TLS).
    pub fn negotiated(
        transport: Transport,
        role: AlpnRole,
        setup: Option<(SetupKind, &ProtocolId)>,
    ) -> Option<Mechanism> {
        match role {
            // The ALPN alone reversed the connection (Potato, draft-bt).
            AlpnRole::Reversed { mechanism, .. } => (mechanism.transport() == transport
                && mechanism.setup() == SetupKind::AlpnOnly)
                .then_some(mechanism),
            AlpnRole::Setup { version } => {
                let (kind, chosen) = setup?;
                let chosen = HttpVersion::from_alpn_id(chosen)?;
                let rows = SPECS.iter().filter(|s| {
                    s.transport == transport && s.setup == kind && s.setup_version == Some(version)
                });
                // Rows that differ only in the reversed version (upgrade-h1, upgrade-h2):
                // the chosen protocol picks one. Otherwise the row that carries it (PTTH -01
                // extended CONNECT may carry HTTP/1.1 inside the stream).
                rows.clone()
                    .find(|s| s.reversed_version == chosen)
                    .or_else(|| rows.clone().find(|s| s.carries.contains(&chosen)))
                    .map(|s| s.mechanism)
            }
        }
    }

    /// The protocol the origin offers in the `ALPN` header of a setup request (and the
    /// one the gateway must choose): the reversed version's forward ALPN identifier.
    pub fn inner_alpn(self) -> ProtocolId {
        self.reversed_version().alpn_id()
    }

    /// The ALPN the origin offers in its TLS ClientHello or QUIC handshake.
    ///
    /// For ALPN-only mechanisms this is the reversal token itself; for mechanisms with a
    /// setup request it is the ALPN of the (forward) setup connection.
    pub fn tls_alpn(self, set: AlpnSet) -> &'static [u8] {
        match self {
            Self::Rh1 => set.token(Http1),
            Self::Rh2 => set.token(Http2),
            Self::Rh3 => set.token(Http3),
            Self::H2Reverse => H2_REVERSE,
            Self::H3Reverse => H3_REVERSE,
            Self::UpgradeH1 | Self::UpgradeH2 | Self::Ptth10 => b"http/1.1",
            Self::ConnectH2 => b"h2",
            Self::ConnectH3 | Self::OptionsH3 => b"h3",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownName {
                what: "mechanism",
                got: s.to_owned(),
                valid: Self::ALL
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// What a negotiated TLS/QUIC ALPN means to a gateway tunnel listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlpnRole {
    /// The handshake itself reversed the roles: the gateway is now the HTTP client.
    Reversed {
        /// The ALPN-only mechanism.
        mechanism: Mechanism,
        /// The Potato revision, if it is a Potato token.
        set: Option<AlpnSet>,
    },
    /// A forward connection: the gateway serves a setup request over `version`.
    Setup {
        /// The HTTP version of the setup connection.
        version: HttpVersion,
    },
}

/// Classifies the ALPN a gateway negotiated on a tunnel listener.
pub fn classify_alpn(transport: Transport, alpn: &[u8]) -> Option<AlpnRole> {
    let reversed_versions: &[(Mechanism, HttpVersion)] = match transport {
        Transport::Tls => &[(Mechanism::Rh1, Http1), (Mechanism::Rh2, Http2)],
        Transport::Quic => &[(Mechanism::Rh3, Http3)],
    };
    for &set in AlpnSet::ALL {
        for &(mechanism, version) in reversed_versions {
            if set.token(version) == alpn {
                return Some(AlpnRole::Reversed {
                    mechanism,
                    set: Some(set),
                });
            }
        }
    }
    let role = match (transport, alpn) {
        (Transport::Tls, H2_REVERSE) => AlpnRole::Reversed {
            mechanism: Mechanism::H2Reverse,
            set: None,
        },
        (Transport::Quic, H3_REVERSE) => AlpnRole::Reversed {
            mechanism: Mechanism::H3Reverse,
            set: None,
        },
        (Transport::Tls, b"h2") => AlpnRole::Setup { version: Http2 },
        (Transport::Tls, b"http/1.1") => AlpnRole::Setup { version: Http1 },
        (Transport::Quic, b"h3") => AlpnRole::Setup { version: Http3 },
        _ => return None,
    };
    Some(role)
}

/// Every ALPN a gateway tunnel listener accepts on `transport`, in server preference
/// order: reversed HTTP/2 (or HTTP/3) first, newest Potato revision first, then bt, then
/// reversed HTTP/1.1, then the forward setup protocols.
pub fn tunnel_alpn_protocols(transport: Transport) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    match transport {
        Transport::Tls => {
            out.extend(AlpnSet::ALL.iter().map(|s| s.token(Http2).to_vec()));
            out.push(H2_REVERSE.to_vec());
            out.extend(AlpnSet::ALL.iter().map(|s| s.token(Http1).to_vec()));
            out.push(b"h2".to_vec());
            out.push(b"http/1.1".to_vec());
        }
        Transport::Quic => {
            out.extend(AlpnSet::ALL.iter().map(|s| s.token(Http3).to_vec()));
            out.push(H3_REVERSE.to_vec());
            out.push(b"h3".to_vec());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_brief() {
        let names: Vec<_> = Mechanism::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "rh1",
                "rh2",
                "rh3",
                "upgrade-h1",
                "upgrade-h2",
                "connect-h2",
                "connect-h3",
                "options-h3",
                "h2-reverse",
                "h3-reverse",
                "ptth10"
            ]
        );
        for &m in Mechanism::ALL {
            assert_eq!(m.spec().mechanism, m);
            assert_eq!(m.to_string().parse::<Mechanism>().unwrap(), m);
        }
        let err = "rh4".parse::<Mechanism>().unwrap_err().to_string();
        assert!(err.contains("connect-h3") && err.contains("rh4"), "{err}");
    }

    #[test]
    fn alpn_sets_parse() {
        assert_eq!(AlpnSet::default(), AlpnSet::Potato00);
        for &s in AlpnSet::ALL {
            assert_eq!(s.to_string().parse::<AlpnSet>().unwrap(), s);
        }
        assert!("potato-03".parse::<AlpnSet>().is_err());
    }

    #[test]
    fn reversed_versions() {
        use Mechanism::*;
        for (m, v) in [
            (Rh1, Http1),
            (UpgradeH1, Http1),
            (Ptth10, Http1),
            (Rh2, Http2),
            (UpgradeH2, Http2),
            (ConnectH2, Http2),
            (H2Reverse, Http2),
            (ConnectH3, Http2),
            (Rh3, Http3),
            (H3Reverse, Http3),
            (OptionsH3, Http3),
        ] {
            assert_eq!(m.reversed_version(), v, "{m}");
            assert!(m.spec().carries.contains(&v), "{m}");
            assert_eq!(
                m.setup() == SetupKind::AlpnOnly,
                m.setup_version().is_none()
            );
        }
    }

    #[test]
    fn tls_alpn_tokens() {
        use Mechanism::*;
        assert_eq!(Rh2.tls_alpn(AlpnSet::Potato00), b"rh2");
        assert_eq!(Rh1.tls_alpn(AlpnSet::Potato01), b"ph1");
        assert_eq!(Rh3.tls_alpn(AlpnSet::Potato01), b"ph3");
        assert_eq!(Rh1.tls_alpn(AlpnSet::Potato02), &[0xc6, 0x96, 0xc9, 0xa5]);
        assert_eq!(Rh2.tls_alpn(AlpnSet::Potato02), &[0xd5, 0x87, 0xc9, 0xa5]);
        assert_eq!(Rh3.tls_alpn(AlpnSet::Potato02), &[0xc6, 0x90, 0xc9, 0xa5]);
        assert_eq!("Ɩɥ".as_bytes(), Rh1.tls_alpn(AlpnSet::Potato02));
        assert_eq!("Շɥ".as_bytes(), Rh2.tls_alpn(AlpnSet::Potato02));
        assert_eq!("Ɛɥ".as_bytes(), Rh3.tls_alpn(AlpnSet::Potato02));
        assert_eq!(
            H2Reverse.tls_alpn(AlpnSet::Potato02),
            &[0x68, 0x32, 0x2d, 0x72, 0x65, 0x76, 0x65, 0x72, 0x73, 0x65]
        );
        assert_eq!(H3Reverse.tls_alpn(AlpnSet::Potato00), b"h3-reverse");
        assert_eq!(UpgradeH2.tls_alpn(AlpnSet::Potato00), b"http/1.1");
        assert_eq!(Ptth10.tls_alpn(AlpnSet::Potato00), b"http/1.1");
        assert_eq!(ConnectH2.tls_alpn(AlpnSet::Potato00), b"h2");
        assert_eq!(ConnectH3.tls_alpn(AlpnSet::Potato00), b"h3");
        assert_eq!(OptionsH3.tls_alpn(AlpnSet::Potato00), b"h3");
    }

    #[test]
    fn classify_every_mechanism_alpn() {
        for &m in Mechanism::ALL {
            for &set in AlpnSet::ALL {
                let role = classify_alpn(m.transport(), m.tls_alpn(set));
                match m.setup_version() {
                    None => {
                        let expected_set =
                            matches!(m, Mechanism::Rh1 | Mechanism::Rh2 | Mechanism::Rh3)
                                .then_some(set);
                        assert_eq!(
                            role,
                            Some(AlpnRole::Reversed {
                                mechanism: m,
                                set: expected_set
                            })
                        );
                    }
                    Some(version) => assert_eq!(role, Some(AlpnRole::Setup { version })),
                }
                // The token is accepted by the tunnel listener of its transport.
                assert!(tunnel_alpn_protocols(m.transport()).contains(&m.tls_alpn(set).to_vec()));
            }
        }
        assert_eq!(classify_alpn(Transport::Quic, b"rh2"), None);
        assert_eq!(classify_alpn(Transport::Tls, b"rh3"), None);
        assert_eq!(classify_alpn(Transport::Tls, b"h3"), None);
        assert_eq!(classify_alpn(Transport::Tls, b"h2-reverse-x"), None);
        assert_eq!(
            classify_alpn(Transport::Tls, b"rh2"),
            Some(AlpnRole::Reversed {
                mechanism: Mechanism::Rh2,
                set: Some(AlpnSet::Potato00)
            })
        );
    }

    /// What a gateway sees on the wire for `m`: the transport, the ALPN its origin offers,
    /// and, with a setup request, its kind and the protocol the gateway chooses.
    fn negotiation_of(m: Mechanism, set: AlpnSet) -> (Transport, Option<AlpnRole>, ProtocolId) {
        let transport = m.transport();
        let role = classify_alpn(transport, m.tls_alpn(set));
        (transport, role, m.reversed_version().alpn_id())
    }

    #[test]
    fn every_mechanism_is_derived_from_what_was_negotiated() {
        for &m in Mechanism::ALL {
            for &set in AlpnSet::ALL {
                let (transport, role, chosen) = negotiation_of(m, set);
                let role = role.unwrap();
                let setup = match m.setup() {
                    SetupKind::AlpnOnly => None,
                    kind => Some((kind, &chosen)),
                };
                assert_eq!(
                    Mechanism::negotiated(transport, role, setup),
                    Some(m),
                    "{m} ({set})"
                );
                if let Some((kind, _)) = setup {
                    // Until its setup request is admitted, a forward connection has none.
                    assert_eq!(Mechanism::negotiated(transport, role, None), None, "{m}");
                    // The same setup on the other transport's connection is no mechanism.
                    let other = match transport {
                        Transport::Tls => Transport::Quic,
                        Transport::Quic => Transport::Tls,
                    };
                    assert_eq!(
                        Mechanism::negotiated(other, role, Some((kind, &chosen))),
                        None,
                        "{m}"
                    );
                }
            }
        }
    }

    #[test]
    fn setups_with_their_own_choice_of_protocol() {
        use Mechanism::*;
        let h1 = AlpnRole::Setup { version: Http1 };
        let h2 = AlpnRole::Setup { version: Http2 };
        let h3 = AlpnRole::Setup { version: Http3 };
        let tls = Transport::Tls;
        let quic = Transport::Quic;
        let http11 = ProtocolId::http11();
        let h2_id = ProtocolId::h2();
        let n = Mechanism::negotiated;
        // Extended CONNECT carrying HTTP/1.1 is still connect-h2 / connect-h3.
        let connect = SetupKind::ExtendedConnect;
        assert_eq!(n(tls, h2, Some((connect, &http11))), Some(ConnectH2));
        assert_eq!(n(quic, h3, Some((connect, &http11))), Some(ConnectH3));
        assert_eq!(n(quic, h3, Some((connect, &h2_id))), Some(ConnectH3));
        // The Upgrade's chosen protocol picks the row.
        let upgrade = SetupKind::Upgrade;
        assert_eq!(n(tls, h1, Some((upgrade, &http11))), Some(UpgradeH1));
        assert_eq!(n(tls, h1, Some((upgrade, &h2_id))), Some(UpgradeH2));
        // A setup its connection does not carry, or a protocol no row carries.
        assert_eq!(n(tls, h2, Some((upgrade, &h2_id))), None);
        assert_eq!(n(tls, h1, Some((connect, &h2_id))), None);
        assert_eq!(n(tls, h1, Some((SetupKind::Options, &http11))), None);
        assert_eq!(n(tls, h1, Some((upgrade, &ProtocolId::h3()))), None);
        assert_eq!(n(tls, h1, Some((upgrade, &ProtocolId::from("h2c")))), None);
        // A reversed role belongs to its own transport.
        let rh2 = classify_alpn(tls, b"rh2").unwrap();
        assert_eq!(n(tls, rh2, None), Some(Rh2));
        assert_eq!(n(quic, rh2, None), None);
    }

    #[test]
    fn only_draft_bt_requires_a_certificate_and_an_origin_frame() {
        for &m in Mechanism::ALL {
            let bt = matches!(m, Mechanism::H2Reverse | Mechanism::H3Reverse);
            assert_eq!(m.requires_client_certificate(), bt, "{m}");
            assert_eq!(m.sends_origin_frame(), bt, "{m}");
        }
    }

    #[test]
    fn tunnel_alpn_lists() {
        let tls = tunnel_alpn_protocols(Transport::Tls);
        assert_eq!(tls.len(), 9);
        assert_eq!(tls[0], vec![0xd5, 0x87, 0xc9, 0xa5]);
        assert_eq!(tls.last().unwrap(), b"http/1.1");
        let quic = tunnel_alpn_protocols(Transport::Quic);
        assert_eq!(
            quic,
            vec![
                vec![0xc6, 0x90, 0xc9, 0xa5],
                b"ph3".to_vec(),
                b"rh3".to_vec(),
                b"h3-reverse".to_vec(),
                b"h3".to_vec()
            ]
        );
    }
}
