//! Pure fuzzing entry points: each takes arbitrary bytes, must never panic, and asserts
//! round-trip invariants where the input parses. `fuzz/` targets call these.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use bytes::BytesMut;

use crate::alpn::{self, ProtocolId};
use crate::capsule::{Capsule, CapsuleDecoder, CapsuleType, Decoded, UdpProxyingPayload};
use crate::origin::SerializedOrigin;
use crate::reverse_connect::{
    ControlCapsule, GatewayChannel, IpProtocol, OriginChannel, OriginEvent, RequestId, Service,
    ServicePort,
};
use crate::reverse_setup;
use crate::reverse_template::{self, ReverseExchange, ReverseTemplate};
use crate::scope::{RequestTarget, Scope};
use crate::setup;
use crate::stream_id::{decode_varint, encode_varint, QsidMapping};
use crate::template::{self, UriTemplate};
use crate::tokens::SetupTokens;

/// Parses `data` as `ALPN` field lines (split on `\n`); re-encodes and re-parses what
/// parses.
pub fn fuzz_alpn(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for line in data.split(|&b| b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(alpn::ALPN, value);
        }
    }
    if let Ok(list) = alpn::parse_list(&headers) {
        let mut again = HeaderMap::new();
        again.insert(alpn::ALPN, alpn::encode_list(&list));
        assert_eq!(alpn::parse_list(&again).ok(), Some(list));
    }
    let _ = alpn::parse_single(&headers);
    let id = ProtocolId::from_bytes(Bytes::copy_from_slice(data));
    if !data.is_empty() && data.len() <= 255 {
        let mut m = HeaderMap::new();
        m.insert(alpn::ALPN, alpn::encode_single(&id));
        assert_eq!(alpn::parse_single(&m).ok(), Some(id));
    }
}

/// Splits `data` on `\n` into method, path, Upgrade, Connection, ALPN, Authorization and
/// `:protocol`, runs every gateway validator, and checks that every accepted setup's
/// response is accepted by the matching origin validator.
pub fn fuzz_setup_request(data: &[u8]) {
    let mut fields = data.split(|&b| b == b'\n');
    let mut next = || fields.next().unwrap_or_default();
    let method = next();
    let path = next();
    let mut builder = http::Request::builder()
        .method(http::Method::from_bytes(method).unwrap_or(http::Method::GET))
        .uri(std::str::from_utf8(path).unwrap_or("/"));
    let names = [
        http::header::UPGRADE,
        http::header::CONNECTION,
        alpn::ALPN,
        http::header::AUTHORIZATION,
    ];
    for name in names {
        if let Ok(value) = HeaderValue::from_bytes(next()) {
            builder = builder.header(name, value);
        }
    }
    let protocol = std::str::from_utf8(next()).ok();
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (parts, ()) = request.into_parts();
    let tokens = SetupTokens::default();
    let supported = [ProtocolId::h2(), ProtocolId::http11()];

    if let Ok(accepted) = setup::validate_upgrade_request(&parts, &supported, &tokens) {
        let response = setup::upgrade_response(&accepted, &tokens);
        let chosen = setup::validate_upgrade_response(&response, &accepted.offered, &tokens);
        assert_eq!(chosen.ok(), Some(accepted.chosen));
    }
    if let Ok(accepted) = setup::validate_connect_request(&parts, protocol, &supported, &tokens) {
        let response = setup::connect_response(&accepted);
        let chosen = setup::validate_connect_response(&response, &accepted.offered, &tokens);
        assert_eq!(chosen.ok(), Some(accepted.chosen));
    }
    if setup::validate_options_request(&parts, &tokens).is_ok() {
        assert!(setup::validate_options_response(&setup::options_response()).is_ok());
    }
    if setup::validate_legacy_request(&parts, &tokens).is_ok() {
        assert!(setup::validate_legacy_response(&setup::legacy_response(&tokens), &tokens).is_ok());
    }
    for rejection in [
        setup::validate_upgrade_request(&parts, &supported, &tokens).err(),
        setup::validate_legacy_request(&parts, &tokens).err(),
    ]
    .into_iter()
    .flatten()
    {
        let response = rejection.to_response();
        assert!(response.status().is_client_error() || response.status().is_server_error());
    }
    if let Ok(target) = RequestTarget::from_parts(&parts) {
        let _ = Scope::new("a.example", "/api").map(|s| s.matches(&target));
    }
}

/// Parses `data` as the gateway's answer to a setup, the origin's side of the exchange:
/// the first line is the status code, each further line one `name: value` field. Runs every
/// origin-side validator; whatever they accept must name a protocol the origin offered.
pub fn fuzz_setup_response(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let status = lines
        .next()
        .and_then(|l| http::StatusCode::from_bytes(l).ok())
        .unwrap_or(http::StatusCode::SWITCHING_PROTOCOLS);
    let mut builder = http::Response::builder().status(status);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            builder = builder.header(name, value);
        }
    }
    let Ok(response) = builder.body(()) else {
        return;
    };
    let tokens = SetupTokens::default();
    let offered = [ProtocolId::h2(), ProtocolId::http11()];
    for chosen in [
        setup::validate_upgrade_response(&response, &offered, &tokens),
        setup::validate_connect_response(&response, &offered, &tokens),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            offered.contains(&chosen),
            "accepted {chosen}, never offered"
        );
    }
    if setup::validate_upgrade_response(&response, &offered, &tokens).is_ok()
        || setup::validate_legacy_response(&response, &tokens).is_ok()
    {
        assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    }
    if setup::validate_options_response(&response).is_ok() {
        assert!(response.status().is_success());
    }
}

/// Parses `data` as a well-known path, a URI template and a serialized origin, and
/// checks the round trips of what parses.
pub fn fuzz_well_known(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let tokens = SetupTokens::default();
    if let Ok(origins) = template::parse_well_known(&text, &tokens) {
        let path = template::expand_well_known(&origins, &tokens);
        assert_eq!(
            template::parse_well_known(&path, &tokens).ok(),
            Some(origins.clone())
        );
        if let Ok(t) =
            UriTemplate::parse("https://gw.example/.well-known/ptth/{serialized_origin}/")
        {
            assert_eq!(t.expand(&origins), format!("https://gw.example{path}"));
        }
    }
    if let Ok(t) = UriTemplate::parse(&text) {
        let origins: Vec<SerializedOrigin> = ["https://a.example", "http://[::1]:8080"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let _ = t.expand(&origins);
    }
    if let Ok(origin) = text.parse::<SerializedOrigin>() {
        assert_eq!(
            origin.to_string().parse::<SerializedOrigin>().ok(),
            Some(origin)
        );
    }
    let _ = Scope::new(&text, &text);
    let _ = HeaderName::from_bytes(data);
}

/// Reads varints and quarter stream IDs from `data` under every mapping, and checks
/// that what decodes re-encodes to the same value.
pub fn fuzz_qsid(data: &[u8]) {
    for mapping in [
        QsidMapping::Forward,
        QsidMapping::Reversed,
        QsidMapping::TwoWayExtension,
    ] {
        let mut buf = data;
        if let Ok(stream) = mapping.read(&mut buf) {
            let mut out = Vec::new();
            assert!(mapping.write(stream, &mut out).is_ok());
            let mut again = &out[..];
            assert_eq!(mapping.read(&mut again).ok(), Some(stream));
        }
    }
    let mut buf = data;
    while let Ok(value) = decode_varint(&mut buf) {
        let mut out = Vec::new();
        assert!(encode_varint(value, &mut out).is_ok());
        assert_eq!(decode_varint(&mut &out[..]).ok(), Some(value));
    }
}

/// Decodes `data` as a capsule stream three times, in one piece, in chunks of a size taken
/// from the first byte, and as frames of sizes the rest picks (`decode_from`), under a bound also taken from it; both runs must agree on every
/// whole capsule, on the `DATA`/`FINAL_DATA` payload bytes and on the outcome, and every
/// whole capsule must respect the bound and re-encode to the bytes it came from. The
/// value of each `DATAGRAM` capsule is parsed as an RFC 9298 payload.
pub fn fuzz_capsules(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let max_len = usize::from(control & 0x3f);
    let chunk = usize::from(control >> 6) * 7 + 1;
    let run = |chunk: usize| {
        let mut decoder = CapsuleDecoder::new(max_len);
        let mut buf = BytesMut::new();
        let mut capsules = Vec::new();
        let mut payload = Vec::new();
        let mut fins = 0;
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(Decoded::Capsule(c))) => {
                        assert!(c.value.len() <= max_len, "{} over the bound", c.kind);
                        if c.kind == CapsuleType::DATAGRAM {
                            if let Ok(p) = UdpProxyingPayload::parse(c.value.clone()) {
                                let mut again = BytesMut::new();
                                p.encode(&mut again);
                                let back = UdpProxyingPayload::parse(again.freeze());
                                assert_eq!(back.ok(), Some(p));
                            }
                        }
                        capsules.push(c);
                    }
                    Ok(Some(Decoded::Data { payload: p, fin })) => {
                        payload.extend_from_slice(&p);
                        fins += usize::from(fin);
                    }
                    Ok(None) => break,
                    Err(e) => return (capsules, payload, fins, Err(e)),
                }
            }
        }
        let end = decoder.finish(&buf);
        (capsules, payload, fins, end)
    };
    // The same bytes as received frames (`decode_from`), cut at lengths the input itself
    // picks (1 to 23 bytes, cycling through its bytes): same capsules, same payload.
    let frames = || {
        let mut decoder = CapsuleDecoder::new(max_len);
        let mut held = BytesMut::new();
        let whole = Bytes::copy_from_slice(stream);
        let (mut capsules, mut payload, mut fins) = (Vec::new(), Vec::new(), 0);
        let mut at = 0;
        let mut k = 0;
        while at < whole.len() {
            let len = 1 + usize::from(stream[k % stream.len()] % 23);
            k += 1;
            let mut frame = whole.slice(at..(at + len).min(whole.len()));
            at += frame.len();
            loop {
                match decoder.decode_from(&mut held, &mut frame) {
                    Ok(Some(Decoded::Capsule(c))) => capsules.push(c),
                    Ok(Some(Decoded::Data { payload: p, fin })) => {
                        // A payload is a slice of its frame, never a copy.
                        assert!(p.is_empty() || whole.as_ptr_range().contains(&p.as_ptr()));
                        payload.extend_from_slice(&p);
                        fins += usize::from(fin);
                    }
                    Ok(None) => break,
                    Err(e) => return (capsules, payload, fins, Err(e)),
                }
            }
            assert!(frame.is_empty(), "input left after Ok(None)");
            assert!(held.len() <= 16 + max_len, "held {} bytes", held.len());
        }
        let end = decoder.finish(&held);
        (capsules, payload, fins, end)
    };
    let whole = run(stream.len().max(1));
    let chunked = run(chunk);
    assert_eq!(whole, chunked, "chunking changed the decoding");
    assert_eq!(whole, frames(), "decoding frames changed the decoding");
    assert!(whole.2 <= 1, "more than one FIN");
    for c in &whole.0 {
        let bytes = c.to_bytes();
        let mut d = CapsuleDecoder::new(max_len);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            d.decode(&mut buf).ok(),
            Some(Some(Decoded::Capsule(c.clone())))
        );
    }
}

/// Parses `data` (after a first byte that picks the capsule type) as the value of each
/// reverse-connect control capsule; what parses must re-encode and parse to the same
/// thing. Both ends' state machines take the capsule, and after a request the gateway's
/// answer, without panicking.
pub fn fuzz_reverse_connect_capsule(data: &[u8]) {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let kind = [
        CapsuleType::AVAILABLE_SERVICES,
        CapsuleType::CONNECTION_REQUEST,
        CapsuleType::CONNECTION_REQUEST_DECLINED,
    ][usize::from(pick % 3)];
    let capsule = Capsule::new(kind, bytes::Bytes::copy_from_slice(value));
    if let Ok(Some(parsed)) = ControlCapsule::parse(&capsule, 16) {
        let again = ControlCapsule::parse(&parsed.to_capsule(), 16);
        assert_eq!(again.ok(), Some(Some(parsed)));
    }
    let mut gateway = GatewayChannel::new([pick; 16], 4);
    let mut origin = OriginChannel::new(2);
    if let Ok(Some(OriginEvent::Requested(r))) = origin.on_capsule(&capsule) {
        assert_eq!(origin.pending(), 1);
        if let Ok(decline) = origin.decline(r.id) {
            // A decline for a request this gateway never made is the origin's error.
            assert!(gateway.on_capsule(&decline).is_err());
        }
    }
    let _ = gateway.on_capsule(&capsule);
    let ssh = ServicePort::new(22).map(|port| Service::local(IpProtocol::Tcp, port));
    if let Some(Ok((id, request))) = ssh.map(|s| gateway.request(s)) {
        let mut origin = OriginChannel::new(2);
        assert!(origin.on_capsule(&request).is_ok());
        assert!(origin.accepting(id).is_ok());
        assert!(gateway.accept(id).is_some());
    }
}

/// Splits `data` on `\n` into method, path, Upgrade, Connection, Host, Authorization,
/// `:protocol` and a template; runs both gateway validators, checks that every accepted
/// setup's answer passes the origin's check and every refusal is a 4xx/5xx; parses the
/// template as both kinds and expands it; parses the path as both default paths and
/// checks that what parses expands back to the same values.
pub fn fuzz_reverse_setup(data: &[u8]) {
    let mut fields = data.split(|&b| b == b'\n');
    let mut next = || fields.next().unwrap_or_default();
    let method = next();
    let path = next();
    let mut builder = http::Request::builder()
        .method(http::Method::from_bytes(method).unwrap_or(http::Method::GET))
        .uri(std::str::from_utf8(path).unwrap_or("/"));
    for name in [
        http::header::UPGRADE,
        http::header::CONNECTION,
        http::header::HOST,
        http::header::AUTHORIZATION,
    ] {
        if let Ok(value) = HeaderValue::from_bytes(next()) {
            builder = builder.header(name, value);
        }
    }
    let protocol = std::str::from_utf8(next()).ok().filter(|p| !p.is_empty());
    let template_text = String::from_utf8_lossy(next()).into_owned();
    let path_text = String::from_utf8_lossy(path).into_owned();

    if let Ok(request) = builder.body(()) {
        let (parts, ()) = request.into_parts();
        match reverse_setup::validate_listen_request(&parts, protocol) {
            Ok(setup) => {
                let response = reverse_setup::reverse_response(ReverseExchange::Listen, setup.form);
                assert!(reverse_setup::validate_reverse_response(
                    &response,
                    ReverseExchange::Listen,
                    setup.form
                )
                .is_ok());
            }
            Err(rejection) => {
                let status = rejection.to_response().status();
                assert!(status.is_client_error() || status.is_server_error());
            }
        }
        match reverse_setup::validate_accept_request(&parts, protocol) {
            Ok(setup) => {
                let response = reverse_setup::reverse_response(ReverseExchange::Accept, setup.form);
                assert!(reverse_setup::validate_reverse_response(
                    &response,
                    ReverseExchange::Accept,
                    setup.form
                )
                .is_ok());
            }
            Err(rejection) => {
                let status = rejection.to_response().status();
                assert!(status.is_client_error() || status.is_server_error());
            }
        }
    }
    let authority: http::uri::Authority = http::uri::Authority::from_static("gw.example");
    if let Ok(scope) = reverse_template::parse_listen_path(&path_text) {
        if let Ok(t) = ReverseTemplate::default_for(ReverseExchange::Listen, &authority) {
            let uri = t.expand_listen(scope.target.as_ref(), scope.ipproto);
            let back = uri.map(|u| reverse_template::parse_listen_path(u.path()));
            assert_eq!(back.ok().and_then(Result::ok), Some(scope));
        }
    }
    if let Ok(id) = reverse_template::parse_accept_path(&path_text) {
        if let Ok(t) = ReverseTemplate::default_for(ReverseExchange::Accept, &authority) {
            let back = t
                .expand_accept(id)
                .map(|u| reverse_template::parse_accept_path(u.path()));
            assert_eq!(back.ok().and_then(Result::ok), Some(id));
        }
    }
    if let Ok(t) = ReverseTemplate::listen(&template_text) {
        let _ = t.expand_listen(
            Some(&reverse_template::ListenTarget::LocalOnly),
            Some(reverse_template::IpProtoScope::Any),
        );
    }
    if let Ok(t) = ReverseTemplate::accept(&template_text) {
        if let Some(id) = RequestId::new(u64::from(data.len() as u32)) {
            let _ = t.expand_accept(id);
        }
    }
    if let Ok(target) = template_text.parse::<reverse_template::ListenTarget>() {
        assert_eq!(target.to_string().parse().ok(), Some(target));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seeds() {
        fuzz_alpn(b"h2, http%2F1.1\nh3");
        fuzz_setup_request(
            b"GET\n/.well-known/ptth/https%3A%2F%2Fapp.example.net/\nptth\nupgrade\nh2, http%2F1.1\nBearer x\nptth",
        );
        fuzz_setup_request(b"CONNECT\nhttps://gw.example/.well-known/ptth/https%3A%2F%2Fa.example/\n\n\nh2\n\nptth");
        fuzz_setup_request(b"POST\n/reverse\nPTTH/0.9\nUpgrade\n\n\n");
        fuzz_setup_request(b"OPTIONS\n*\n");
        fuzz_well_known(
            b"/.well-known/ptth/https%3A%2F%2Fa.example,http%3A%2F%2F%5B%3A%3A1%5D%3A8080/",
        );
        fuzz_well_known(b"https://p.example/{?serialized_origin*}");
        fuzz_qsid(&[0xe0, 0, 0, 0, 0, 0, 0, 1, 0x44, 0x00, 0x25]);
        fuzz_capsules(b"\x10\x00\x03\x00ab\xa0\x28\xd7\xf2\x02hi\xa0\x28\xd7\xf3\x00");
        fuzz_reverse_connect_capsule(&[1, 0x01, 0x00, 0x06, 0x00, 0x16]);
        fuzz_reverse_connect_capsule(&[
            0, 0x01, 0x0b, b'd', b'b', b'.', b'i', b'n', b't', b'e', b'r', b'n', b'a', b'l', 0x06,
            0x15, 0x38,
        ]);
        fuzz_reverse_setup(
            b"GET\n/.well-known/masque/listen/./%2A/\nconnect-listen\nUpgrade\ngw.example\n\n\n",
        );
        fuzz_reverse_setup(b"CONNECT\nhttps://gw.example/.well-known/masque/accept/1/\n\n\n\n\nconnect-accept\nhttps://gw.example/a/{request_id}/");
    }

    proptest! {
        #[test]
        fn alpn_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            fuzz_alpn(&data);
        }

        #[test]
        fn setup_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            fuzz_setup_request(&data);
        }

        #[test]
        fn setup_structured_never_panics(
            method in prop_oneof![Just("GET"), Just("CONNECT"), Just("POST"), Just("OPTIONS")],
            path in "/(\\.well-known/ptth/)?[a-zA-Z0-9%,:/.]{0,30}",
            upgrade in prop_oneof![Just("ptth"), Just("PTTH/1.0"), Just("x"), Just("")],
            alpn in "[a-z0-9%, /]{0,20}",
        ) {
            let data = format!("{method}\n{path}\n{upgrade}\nupgrade\n{alpn}\n\nptth");
            fuzz_setup_request(data.as_bytes());
        }

        #[test]
        fn well_known_never_panics(data in proptest::collection::vec(any::<u8>(), 0..96)) {
            fuzz_well_known(&data);
        }

        #[test]
        fn well_known_text_never_panics(data in "/\\.well-known/ptth/[a-zA-Z0-9%,:.\\[\\]]{0,60}/?") {
            fuzz_well_known(data.as_bytes());
        }

        #[test]
        fn capsules_never_panic(data in proptest::collection::vec(any::<u8>(), 0..96)) {
            fuzz_capsules(&data);
        }

        #[test]
        fn reverse_connect_capsules_never_panic(data in proptest::collection::vec(any::<u8>(), 0..48)) {
            fuzz_reverse_connect_capsule(&data);
        }

        #[test]
        fn reverse_setup_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            fuzz_reverse_setup(&data);
        }

        #[test]
        fn reverse_setup_structured_never_panics(
            method in prop_oneof![Just("GET"), Just("CONNECT"), Just("POST")],
            path in "/\\.well-known/masque/(listen|accept)/[a-zA-Z0-9%.*:/]{0,24}",
            upgrade in prop_oneof![Just("connect-listen"), Just("connect-accept"), Just("x"), Just("")],
            protocol in prop_oneof![Just("connect-listen"), Just("connect-accept"), Just("")],
        ) {
            let data = format!("{method}\n{path}\n{upgrade}\nupgrade\ngw.example\n\n{protocol}\n{path}");
            fuzz_reverse_setup(data.as_bytes());
        }

        #[test]
        fn qsid_never_panics(data in proptest::collection::vec(any::<u8>(), 0..24)) {
            fuzz_qsid(&data);
        }
    }
}
