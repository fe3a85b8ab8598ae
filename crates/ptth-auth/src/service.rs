//! Services a grant lets an identity offer through reverse CONNECT
//! (draft-rosomakho-masque-reverse-connect): `services = ["ssh=tcp/22"]` in a `[[grant]]`.
//!
//! The draft: "Proxies MUST restrict the service to authenticated users, and MUST check
//! advertised services against policy." A [`GrantedService`] is that policy for one service:
//! the operator's name for it (what a gateway port mapping names), and the protocol and
//! port the origin advertises it as. ptth origins advertise every service as a local one
//! (Destination Type 0) on the port of the address they reach it at, so the protocol and
//! port are the whole wire identity (`docs/protocol.md`).

use std::fmt;
use std::str::FromStr;

use ptth_core::{IpProtocol, Service, ServicePort};

/// The longest service name.
pub const MAX_SERVICE_NAME: usize = 63;

/// One service a grant allows: `NAME=PROTO/PORT`, e.g. `ssh=tcp/22`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantedService {
    /// The operator's name for it: lowercase letters, digits and `-`, at most 63 bytes.
    pub name: String,
    /// TCP or UDP.
    pub protocol: IpProtocol,
    /// The port the origin advertises it on.
    pub port: ServicePort,
}

impl GrantedService {
    /// The service record it matches on the wire: a local service on `port`.
    pub fn wire(&self) -> Service {
        Service::local(self.protocol, self.port)
    }

    /// Whether an advertised record is this service.
    pub fn matches(&self, advertised: &Service) -> bool {
        *advertised == self.wire()
    }
}

/// Whether `name` is a valid service name.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

impl FromStr for GrantedService {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = || format!("service {s:?}: expected NAME=PROTO/PORT, e.g. ssh=tcp/22");
        let (name, rest) = s.split_once('=').ok_or_else(form)?;
        let (proto, port) = rest.split_once('/').ok_or_else(form)?;
        if !valid_service_name(name) {
            return Err(format!(
                "service {s:?}: the name must be 1 to {MAX_SERVICE_NAME} lowercase letters, digits or '-'"
            ));
        }
        let protocol = match proto {
            "tcp" => IpProtocol::Tcp,
            "udp" => IpProtocol::Udp,
            _ => return Err(format!("service {s:?}: the protocol must be tcp or udp")),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .and_then(ServicePort::new)
            .ok_or_else(|| format!("service {s:?}: the port must be 1 to 65535"))?;
        Ok(Self {
            name: name.to_string(),
            protocol,
            port,
        })
    }
}

impl fmt::Display for GrantedService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}/{}", self.name, self.protocol, self.port.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_form_parses_and_prints_back() {
        let s: GrantedService = "ssh=tcp/22".parse().unwrap();
        assert_eq!(s.name, "ssh");
        assert_eq!(s.protocol, IpProtocol::Tcp);
        assert_eq!(s.port.get(), 22);
        assert_eq!(s.to_string(), "ssh=tcp/22");
        assert!(s.matches(&Service::local(
            IpProtocol::Tcp,
            ServicePort::new(22).unwrap()
        )));
        assert!(!s.matches(&Service::local(
            IpProtocol::Udp,
            ServicePort::new(22).unwrap()
        )));
        let dns: GrantedService = "dns-1=udp/53".parse().unwrap();
        assert_eq!(dns.protocol, IpProtocol::Udp);
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        for (text, why) in [
            ("ssh", "expected NAME=PROTO/PORT"),
            ("ssh=tcp", "expected NAME=PROTO/PORT"),
            ("=tcp/22", "the name must be"),
            ("SSH=tcp/22", "the name must be"),
            ("-x=tcp/22", "the name must be"),
            ("ssh=sctp/22", "the protocol must be tcp or udp"),
            ("ssh=tcp/0", "the port must be 1 to 65535"),
            ("ssh=tcp/65536", "the port must be 1 to 65535"),
            ("ssh=tcp/x", "the port must be 1 to 65535"),
        ] {
            let e = text.parse::<GrantedService>().unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert!(format!("{}=tcp/1", "a".repeat(64))
            .parse::<GrantedService>()
            .is_err());
    }
}
