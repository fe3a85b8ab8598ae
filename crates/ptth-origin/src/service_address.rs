//! The one rule for a service given as `NAME=HOST:PORT` (`--tcp-service`, `--udp-service`,
//! `[[service]]`): what makes a name and an address acceptable, whatever the protocol.

use ptth_core::ServicePort;

/// Checks `name` and reads the port of `address` (`HOST:PORT`, a port from 1 to 65535).
/// The port is what the service is advertised by; the whole address is what the origin
/// connects to.
pub(crate) fn checked_port(name: &str, address: &str) -> Result<ServicePort, String> {
    if !ptth_auth::valid_service_name(name) {
        return Err(format!(
            "service name {name:?}: 1 to {} lowercase letters, digits or '-'",
            ptth_auth::MAX_SERVICE_NAME
        ));
    }
    address
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .and_then(ServicePort::new)
        .ok_or_else(|| {
            format!("service {name}: {address:?} is not HOST:PORT with a port from 1 to 65535")
        })
}

#[cfg(test)]
mod tests {
    use super::checked_port;

    #[test]
    fn a_name_and_an_address_are_checked_alike_for_every_protocol() {
        assert_eq!(checked_port("ssh", "127.0.0.1:22").map(|p| p.get()), Ok(22));
        assert_eq!(checked_port("db", "[::1]:5432").map(|p| p.get()), Ok(5432));
        assert!(checked_port("SSH", "127.0.0.1:22")
            .unwrap_err()
            .contains("lowercase"));
        assert!(checked_port("", "127.0.0.1:22").is_err());
        for bad in [
            "127.0.0.1",
            ":22",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:x",
        ] {
            let e = checked_port("ssh", bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }
}
