//! Properties of the forwarding fields over arbitrary peer input: whatever a public client
//! writes in `X-Forwarded-*`, `X-Real-IP`, `Forwarded` or `ptth-client-port`, none of it
//! reaches the origin from an untrusted peer; from a trusted one the gateway's hop is always
//! appended last; with `--forwarding-fields`, only the chosen fields are sent, whoever the
//! peer; and no input makes the gateway panic.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use ptth_gateway::forwarding::{
    set_chosen_forwarding_fields, set_forwarding_fields, Cidr, ForwardingFields, Hop,
    TrustedProxies, FORWARDING_FIELDS, PTTH_CLIENT_PORT, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_PORT, X_FORWARDED_PROTO, X_REAL_IP,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Any field value a client can send (header values are bytes; not all are UTF-8).
fn value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        // Plausible forwarding values: addresses, lists, quoted Forwarded elements.
        "[0-9a-f:., \\[\\]\"=;]{0,40}",
        "(for|by|proto|host)=[\\x21-\\x7e]{0,20}(, ?[0-9.]{1,15}){0,4}",
        // Anything a header value may hold, including obs-text.
        proptest::collection::vec(
            prop_oneof![0x20u8..=0x7e, 0x80u8..=0xff, Just(b'\t')],
            0..60
        )
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
    .prop_filter_map("a valid header value", |s| HeaderValue::from_str(&s).ok())
}

/// Forwarding fields (and one unrelated field) as a client writes them, several lines each.
fn client_fields() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    let names: Vec<HeaderName> = FORWARDING_FIELDS
        .iter()
        .cloned()
        .chain([PTTH_CLIENT_PORT, HeaderName::from_static("x-kept")])
        .collect();
    proptest::collection::vec((proptest::sample::select(names), value()), 0..12)
}

fn peer() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
        // IPv4-mapped IPv6, which the gateway writes as IPv4.
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
    ]
}

fn headers_of(fields: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in fields {
        h.append(n.clone(), v.clone());
    }
    h
}

fn one(h: &HeaderMap, name: &HeaderName) -> String {
    let all: Vec<_> = h.get_all(name).iter().collect();
    assert_eq!(all.len(), 1, "{name}: {all:?}");
    all[0].to_str().unwrap().to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn an_untrusted_peer_s_fields_never_reach_the_origin(
        fields in client_fields(),
        peer in peer(),
        port in any::<u16>(),
        tls in any::<bool>(),
    ) {
        let mut h = headers_of(&fields);
        let kept: Vec<_> = h.get_all("x-kept").iter().cloned().collect();
        let hop = Hop { peer, peer_port: port, tls, authority: "app.example:8443" };
        set_forwarding_fields(&mut h, &hop, &TrustedProxies::default());
        let peer_text = peer.to_canonical().to_string();
        prop_assert_eq!(one(&h, &X_FORWARDED_FOR), peer_text.clone());
        prop_assert_eq!(one(&h, &X_REAL_IP), peer_text.clone());
        prop_assert_eq!(one(&h, &X_FORWARDED_PROTO), if tls { "https" } else { "http" });
        prop_assert_eq!(one(&h, &PTTH_CLIENT_PORT), port.to_string());
        prop_assert!(!h.contains_key(X_FORWARDED_PORT));
        let forwarded = one(&h, &http::header::FORWARDED);
        prop_assert!(forwarded.starts_with("for="), "{}", forwarded);
        prop_assert!(forwarded.contains(&peer_text), "{}", forwarded);
        prop_assert!(!forwarded.contains(','), "one element only: {}", forwarded);
        // Fields the gateway does not own pass untouched.
        let after: Vec<_> = h.get_all("x-kept").iter().cloned().collect();
        prop_assert_eq!(after, kept);
    }

    #[test]
    fn a_trusted_peer_s_chain_ends_with_the_peer(
        fields in client_fields(),
        peer in peer(),
        port in any::<u16>(),
        tls in any::<bool>(),
    ) {
        let mut h = headers_of(&fields);
        let had_real_ip = h.contains_key(X_REAL_IP);
        let hop = Hop { peer, peer_port: port, tls, authority: "app.example" };
        let everyone = TrustedProxies::new(vec![
            "0.0.0.0/0".parse::<Cidr>().unwrap(),
            "::/0".parse::<Cidr>().unwrap(),
        ]);
        set_forwarding_fields(&mut h, &hop, &everyone);
        let peer_text = peer.to_canonical().to_string();
        let xff = one(&h, &X_FORWARDED_FOR);
        prop_assert!(
            xff == peer_text || xff.ends_with(&format!(", {peer_text}")),
            "{} does not end with {}", xff, peer_text
        );
        let forwarded = h.get_all(http::header::FORWARDED).iter().count();
        prop_assert_eq!(forwarded, 1);
        if !had_real_ip {
            // Named by the gateway: an address, from the chain or the peer itself.
            let real: IpAddr = one(&h, &X_REAL_IP).parse().unwrap();
            if real == peer.to_canonical() {
                prop_assert_eq!(one(&h, &PTTH_CLIENT_PORT), port.to_string());
            } else {
                prop_assert!(!h.contains_key(PTTH_CLIENT_PORT));
            }
        } else {
            // The client named by the proxy: its port is unknown, never the peer's, never
            // one a client wrote.
            prop_assert!(!h.contains_key(PTTH_CLIENT_PORT));
        }
    }

    #[test]
    fn only_the_chosen_fields_are_sent_and_never_a_client_s(
        fields in client_fields(),
        peer in peer(),
        port in any::<u16>(),
        tls in any::<bool>(),
        trusted in any::<bool>(),
        chosen in proptest::sample::select(vec![
            ForwardingFields::All,
            ForwardingFields::Forwarded,
            ForwardingFields::XForwarded,
            ForwardingFields::None,
        ]),
    ) {
        let mut h = headers_of(&fields);
        let hop = Hop { peer, peer_port: port, tls, authority: "app.example" };
        let list = if trusted {
            TrustedProxies::new(vec![
                "0.0.0.0/0".parse::<Cidr>().unwrap(),
                "::/0".parse::<Cidr>().unwrap(),
            ])
        } else {
            TrustedProxies::default()
        };
        let mut every = h.clone();
        set_forwarding_fields(&mut every, &hop, &list);
        set_chosen_forwarding_fields(&mut h, &hop, &list, chosen);
        let x = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_FORWARDED_PORT, X_REAL_IP];
        for name in &x {
            if chosen.x_forwarded() {
                // As `all` sends it, value for value.
                prop_assert_eq!(h.get_all(name).iter().collect::<Vec<_>>(), every.get_all(name).iter().collect::<Vec<_>>());
            } else {
                prop_assert!(!h.contains_key(name), "{} sent under {}", name, chosen);
            }
        }
        let forwarded = http::header::FORWARDED;
        if chosen.forwarded() {
            prop_assert_eq!(h.get_all(&forwarded).iter().collect::<Vec<_>>(), every.get_all(&forwarded).iter().collect::<Vec<_>>());
        } else {
            prop_assert!(!h.contains_key(&forwarded), "Forwarded sent under {}", chosen);
        }
        if chosen.x_forwarded() {
            prop_assert_eq!(h.get(PTTH_CLIENT_PORT), every.get(PTTH_CLIENT_PORT));
        } else {
            prop_assert!(!h.contains_key(PTTH_CLIENT_PORT), "port sent under {}", chosen);
        }
        // Fields the gateway does not own pass untouched.
        prop_assert_eq!(
            h.get_all("x-kept").iter().collect::<Vec<_>>(),
            every.get_all("x-kept").iter().collect::<Vec<_>>()
        );
    }
}
