//! Entry points for fuzzers (`fuzz/`) and for the proptests that stand in for them.

use bytes::BytesMut;

/// Decodes arbitrary bytes as a field section. If that succeeds, re-encodes the fields,
/// decodes them again and asserts the same list comes back, then runs the message checks.
/// Must never panic except on a broken invariant.
pub fn fuzz_qpack(data: &[u8]) {
    // Large enough that the size limit rarely hides a decoding path.
    const LIMIT: u64 = 1 << 20;
    let Ok(fields) = super::decode(data, LIMIT) else {
        return;
    };
    let mut encoded = BytesMut::new();
    super::encode(&fields, &mut encoded);
    // Our encoding is never larger per field than the peer's most compact one could decode
    // to, and the size limit only depends on the decoded fields.
    assert_eq!(super::decode(&encoded, LIMIT).as_ref(), Ok(&fields));

    if let Ok((parts, protocol)) = super::parse_request(fields.clone()) {
        // A request without an authority keeps only its path in `http::Uri`, so only those
        // with one (all that PTTH forwards) are expected to round-trip exactly.
        if parts.uri.authority().is_some() {
            let again = super::request_fields(&parts, protocol.as_deref());
            let Ok((again, again_protocol)) = super::parse_request(again) else {
                panic!("a parsed request head did not re-parse: {parts:?}");
            };
            assert_eq!(again.method, parts.method);
            assert_eq!(again.uri, parts.uri);
            assert_eq!(again_protocol, protocol);
        }
    }
    if let Ok(parts) = super::parse_response(fields.clone()) {
        let again = super::response_fields(&parts);
        assert_eq!(
            super::parse_response(again).map(|p| p.status),
            Ok(parts.status)
        );
    }
    if let Ok(trailers) = super::parse_trailers(fields) {
        assert_eq!(
            super::parse_trailers(super::trailer_fields(&trailers)),
            Ok(trailers)
        );
    }
}
