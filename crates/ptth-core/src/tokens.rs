//! [`SetupTokens`]: the negotiation tokens as data, read by the setup exchanges (`setup`) and
//! the well-known URI template (`template`).

/// The negotiation tokens of the setup exchanges. The drafts change these between
/// revisions, so they are data; [`Default`] gives the current drafts' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupTokens {
    /// PTTH -01 HTTP/1.1 `Upgrade` token: `ptth`.
    pub upgrade: &'static str,
    /// PTTH -01 extended CONNECT `:protocol` value: `ptth`.
    pub connect_protocol: &'static str,
    /// lentczner `Upgrade` token the origin sends and the gateway answers with: `PTTH/1.0`.
    pub legacy_upgrade: &'static str,
    /// Every lentczner token accepted, in either direction: `PTTH/1.0`, `PTTH/0.9`.
    pub legacy_accept: &'static [&'static str],
    /// The well-known path prefix, with both slashes: `/.well-known/ptth/`.
    pub well_known_prefix: &'static str,
}

impl Default for SetupTokens {
    fn default() -> Self {
        Self {
            // draft-kazuho-ptth-ptth-01 §7: HTTP Upgrade Token "ptth".
            upgrade: "ptth",
            connect_protocol: "ptth",
            // draft-lentczner-rhttp-00; the wiki's earlier drafts used PTTH/0.9.
            legacy_upgrade: "PTTH/1.0",
            legacy_accept: &["PTTH/1.0", "PTTH/0.9"],
            // draft-kazuho-ptth-ptth-01 §7: Well-Known URI "ptth".
            well_known_prefix: "/.well-known/ptth/",
        }
    }
}
