//! Tests of the QPACK codec against the RFC 7541 and RFC 9204 examples, plus round trips and message checks.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).unwrap();
            u8::from_str_radix(text, 16).unwrap()
        })
        .collect()
}

fn field(name: &str, value: &str) -> Field {
    (
        Bytes::copy_from_slice(name.as_bytes()),
        Bytes::copy_from_slice(value.as_bytes()),
    )
}

fn fields(list: &[(&str, &str)]) -> Vec<Field> {
    list.iter().map(|(n, v)| field(n, v)).collect()
}

fn huffman_encode(s: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    huffman::encode(s, &mut out);
    out.to_vec()
}

fn huffman_decode(s: &[u8]) -> Result<Vec<u8>, QpackError> {
    let mut out = Vec::new();
    huffman::decode(s, &mut out).map(|()| out)
}

/// Every Huffman-coded string of RFC 7541 Appendix C.4 and C.6.
const HUFFMAN_VECTORS: &[(&str, &str)] = &[
    ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
    ("a8eb 1064 9cbf", "no-cache"),
    ("25a8 49e9 5ba9 7d7f", "custom-key"),
    ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
    ("6402", "302"),
    ("aec3 771a 4b", "private"),
    (
        "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
        "Mon, 21 Oct 2013 20:13:21 GMT",
    ),
    (
        "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
        "https://www.example.com",
    ),
    ("640e ff", "307"),
    (
        "d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff",
        "Mon, 21 Oct 2013 20:13:22 GMT",
    ),
    ("9bd9 ab", "gzip"),
    (
        "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 \
         3160 65c0 03ed 4ee5 b106 3d50 07",
        "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
    ),
];

#[test]
fn huffman_rfc7541_vectors_encode() {
    for &(coded, plain) in HUFFMAN_VECTORS {
        assert_eq!(huffman_encode(plain.as_bytes()), hex(coded), "{plain}");
        assert_eq!(huffman::encoded_len(plain.as_bytes()), hex(coded).len());
    }
}

#[test]
fn huffman_rfc7541_vectors_decode() {
    for &(coded, plain) in HUFFMAN_VECTORS {
        assert_eq!(
            huffman_decode(&hex(coded)).unwrap(),
            plain.as_bytes(),
            "{plain}"
        );
    }
}

#[test]
fn huffman_padding_and_eos_rules() {
    // Empty input is the empty string.
    assert_eq!(huffman_decode(&[]).unwrap(), b"");
    // '0' is 00000; padded with 111 it is valid, with 000 or 011 it is not.
    assert_eq!(huffman_decode(&[0b0000_0111]).unwrap(), b"0");
    assert_eq!(huffman_decode(&[0b0000_0000]), Err(QpackError::BadHuffman));
    assert_eq!(huffman_decode(&[0b0000_0011]), Err(QpackError::BadHuffman));
    // A whole byte of ones is padding longer than 7 bits.
    assert_eq!(huffman_decode(&[0xff]), Err(QpackError::BadHuffman));
    // 'a' (00011) then 11 bits of ones: padding of 11 bits.
    assert_eq!(
        huffman_decode(&[0b0001_1111, 0xff]),
        Err(QpackError::BadHuffman)
    );
    // EOS (30 ones) followed by two padding bits: EOS inside a string.
    assert_eq!(huffman_decode(&[0xff; 4]), Err(QpackError::BadHuffman));
    // 'a', then EOS, then padding.
    assert_eq!(
        huffman_decode(&[0b0001_1111, 0xff, 0xff, 0xff, 0xfc | 0x03]),
        Err(QpackError::BadHuffman)
    );
}

#[test]
fn huffman_every_byte_round_trips() {
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(huffman_decode(&huffman_encode(&all)).unwrap(), all);
}

fn int_encode(value: u64, prefix_bits: u8, flags: u8) -> Vec<u8> {
    let mut out = BytesMut::new();
    prefix_int::encode(value, prefix_bits, flags, &mut out);
    out.to_vec()
}

#[test]
fn prefix_int_rfc7541_c1_examples() {
    // C.1.1: 10 with a 5-bit prefix.
    assert_eq!(int_encode(10, 5, 0), [0b0000_1010]);
    assert_eq!(prefix_int::decode(&[0b0000_1010], 5), Ok((10, 1)));
    // C.1.2: 1337 with a 5-bit prefix.
    assert_eq!(
        int_encode(1337, 5, 0),
        [0b0001_1111, 0b1001_1010, 0b0000_1010]
    );
    assert_eq!(
        prefix_int::decode(&[0b0001_1111, 0b1001_1010, 0b0000_1010], 5),
        Ok((1337, 3))
    );
    // C.1.3: 42 starting at an octet boundary (8-bit prefix).
    assert_eq!(int_encode(42, 8, 0), [42]);
    assert_eq!(prefix_int::decode(&[42], 8), Ok((42, 1)));
    // Bits above the prefix are ignored on decode and kept on encode.
    assert_eq!(prefix_int::decode(&[0b1110_1010], 5), Ok((10, 1)));
    assert_eq!(int_encode(10, 5, 0b1110_0000), [0b1110_1010]);
}

#[test]
fn prefix_int_limits() {
    assert_eq!(prefix_int::decode(&[], 5), Err(QpackError::Truncated));
    assert_eq!(prefix_int::decode(&[0x1f], 5), Err(QpackError::Truncated));
    assert_eq!(
        prefix_int::decode(&[0x1f, 0x80], 5),
        Err(QpackError::Truncated)
    );
    // The 62-bit maximum round-trips; one more is refused.
    let max = int_encode(prefix_int::MAX, 8, 0);
    assert_eq!(
        prefix_int::decode(&max, 8),
        Ok((prefix_int::MAX, max.len()))
    );
    let over = int_encode(prefix_int::MAX + 1, 8, 0);
    assert_eq!(prefix_int::decode(&over, 8), Err(QpackError::BadPrefixInt));
    // Endless continuation bytes stop after the 62-bit budget.
    let mut long = vec![0xff];
    long.extend([0x80; 20]);
    assert_eq!(prefix_int::decode(&long, 8), Err(QpackError::BadPrefixInt));
}

#[test]
fn static_table_spot_checks() {
    assert_eq!(static_table::STATIC_TABLE.len(), 99);
    assert_eq!(static_table::get(0), Some((":authority", "")));
    assert_eq!(static_table::get(17), Some((":method", "GET")));
    assert_eq!(static_table::get(25), Some((":status", "200")));
    assert_eq!(
        static_table::get(98),
        Some(("x-frame-options", "sameorigin"))
    );
    assert_eq!(static_table::get(99), None);
    assert_eq!(
        static_table::find(b":method", b"GET"),
        static_table::Match::Field(17)
    );
    assert_eq!(
        static_table::find(b":method", b"PATCH"),
        static_table::Match::Name(15)
    );
    assert_eq!(
        static_table::find(b"x-custom", b"1"),
        static_table::Match::None
    );
}

#[test]
fn rfc9204_b1_literal_with_static_name_reference() {
    let block = hex("0000 510b 2f69 6e64 6578 2e68 746d 6c");
    assert_eq!(
        decode(&block, 4096),
        Ok(fields(&[(":path", "/index.html")]))
    );
}

#[test]
fn encode_uses_static_references_and_huffman() {
    let mut out = BytesMut::new();
    encode(
        &fields(&[(":method", "GET"), (":path", "/index.html"), ("x-a", "b")]),
        &mut out,
    );
    let expected = [
        vec![0x00, 0x00],
        // Indexed field line, static 17.
        vec![0xc0 | 17],
        // Literal with static name reference 1, Huffman value.
        vec![0x51, 0x80 | huffman::encoded_len(b"/index.html") as u8],
        huffman_encode(b"/index.html"),
        // Literal name "x-a" (Huffman is no shorter), literal value "b".
        vec![0x20 | 3],
        b"x-a".to_vec(),
        vec![1, b'b'],
    ]
    .concat();
    assert_eq!(out.to_vec(), expected);
    assert_eq!(decode(&out, 4096).unwrap().len(), 3);
}

#[test]
fn empty_section() {
    let mut out = BytesMut::new();
    encode(&[], &mut out);
    assert_eq!(out.as_ref(), [0, 0]);
    assert_eq!(decode(&out, 0), Ok(vec![]));
    assert_eq!(decode(&[], 0), Err(QpackError::Truncated));
    assert_eq!(decode(&[0], 0), Err(QpackError::Truncated));
}

#[test]
fn dynamic_table_references_are_rejected() {
    for block in [
        // Indexed field line, dynamic (T = 0).
        "0000 80",
        // Indexed field line with post-base index.
        "0000 10",
        // Literal with dynamic name reference (T = 0).
        "0000 4001 61",
        // Literal with post-base name reference.
        "0000 0001 61",
    ] {
        let err = decode(&hex(block), 4096).unwrap_err();
        assert_eq!(err, QpackError::DynamicReference, "{block}");
        assert_eq!(err.h3_code(), QPACK_DECOMPRESSION_FAILED);
        assert!(err.is_connection_error());
    }
    assert_eq!(
        decode(&hex("0100 d1"), 4096),
        Err(QpackError::RequiredInsertCount(1))
    );
    assert_eq!(decode(&hex("0080 d1"), 4096), Err(QpackError::NegativeBase));
    // Sign 0 with a nonzero Delta Base is a valid (unused) Base.
    assert_eq!(
        decode(&hex("0005 d1"), 4096),
        Ok(fields(&[(":method", "GET")]))
    );
}

#[test]
fn bad_sections_are_rejected() {
    assert_eq!(
        decode(&hex("0000 ff24"), 4096),
        Err(QpackError::BadStaticIndex(99))
    );
    assert_eq!(
        decode(&hex("0000 5f54 00"), 4096),
        Err(QpackError::BadStaticIndex(99))
    );
    // A value length past the end.
    assert_eq!(
        decode(&hex("0000 5105 2f"), 4096),
        Err(QpackError::Truncated)
    );
    // A literal name whose value is missing.
    assert_eq!(decode(&hex("0000 2161"), 4096), Err(QpackError::Truncated));
    // A Huffman value with bad padding.
    assert_eq!(
        decode(&hex("0000 5181 00"), 4096),
        Err(QpackError::BadHuffman)
    );
}

#[test]
fn field_section_size_limit() {
    let list = fields(&[(":method", "GET"), ("x-a", "bc")]);
    let size = (7 + 3 + 32) + (3 + 2 + 32);
    let mut block = BytesMut::new();
    encode(&list, &mut block);
    assert_eq!(decode(&block, size), Ok(list));
    let err = decode(&block, size - 1).unwrap_err();
    assert_eq!(err, QpackError::FieldSectionTooLarge { limit: size - 1 });
    assert_eq!(err.h3_code(), H3_EXCESSIVE_LOAD);
    assert!(!err.is_connection_error());
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_field() -> impl Strategy<Value = Field> {
    let static_field = (0..static_table::STATIC_TABLE.len()).prop_map(|i| {
        let (n, v) = static_table::STATIC_TABLE[i];
        field(n, v)
    });
    let static_name = ((0..static_table::STATIC_TABLE.len()), arb_bytes(40)).prop_map(|(i, v)| {
        (
            Bytes::from_static(static_table::STATIC_TABLE[i].0.as_bytes()),
            v,
        )
    });
    prop_oneof![
        static_field,
        static_name,
        (arb_bytes(40), arb_bytes(200)),
        ("[a-z0-9-]{1,20}", "[ -~]{0,80}").prop_map(|(n, v)| field(&n, &v)),
    ]
}

proptest! {
    #[test]
    fn field_lists_round_trip(list in prop::collection::vec(arb_field(), 0..20)) {
        let mut block = BytesMut::new();
        encode(&list, &mut block);
        prop_assert_eq!(decode(&block, u64::MAX), Ok(list));
    }

    #[test]
    fn huffman_round_trips(s in prop::collection::vec(any::<u8>(), 0..300)) {
        let coded = huffman_encode(&s);
        prop_assert_eq!(coded.len(), huffman::encoded_len(&s));
        prop_assert_eq!(huffman_decode(&coded), Ok(s));
    }

    #[test]
    fn prefix_ints_round_trip(value in 0..=prefix_int::MAX, prefix_bits in 1u8..=8) {
        let coded = int_encode(value, prefix_bits, 0);
        prop_assert_eq!(prefix_int::decode(&coded, prefix_bits), Ok((value, coded.len())));
    }

    #[test]
    fn fuzz_harness_never_panics(data in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzz_harness::fuzz_qpack(&data);
    }

    #[test]
    fn fuzz_harness_on_near_valid_sections(list in prop::collection::vec(arb_field(), 0..8), cut in any::<prop::sample::Index>(), flip in any::<(prop::sample::Index, u8)>()) {
        let mut block = BytesMut::new();
        encode(&list, &mut block);
        let mut data = block.to_vec();
        fuzz_harness::fuzz_qpack(&data);
        let at = flip.0.index(data.len());
        data[at] ^= flip.1;
        fuzz_harness::fuzz_qpack(&data);
        data.truncate(cut.index(data.len() + 1));
        fuzz_harness::fuzz_qpack(&data);
    }
}

fn request_round_trip(
    request: http::Request<()>,
    protocol: Option<&str>,
) -> (http::request::Parts, Option<String>) {
    let (parts, ()) = request.into_parts();
    let mut block = BytesMut::new();
    encode(&request_fields(&parts, protocol), &mut block);
    parse_request(decode(&block, 64 * 1024).unwrap()).unwrap()
}

#[test]
fn request_round_trips() {
    let request = http::Request::post("https://example.com:8443/a/b?c=d")
        .header("content-type", "text/plain")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .header("te", "trailers")
        .header("connection", "keep-alive, x-hop")
        .header("keep-alive", "timeout=5")
        .header("x-hop", "gone")
        .header("transfer-encoding", "chunked")
        .header("upgrade", "h2c")
        .header("proxy-connection", "close")
        .body(())
        .unwrap();
    let (parts, protocol) = request_round_trip(request, None);
    assert_eq!(protocol, None);
    assert_eq!(parts.method, http::Method::POST);
    assert_eq!(parts.uri, "https://example.com:8443/a/b?c=d");
    assert_eq!(parts.version, http::Version::HTTP_3);
    assert_eq!(parts.headers["content-type"], "text/plain");
    assert_eq!(
        parts.headers.get_all("x-multi").iter().collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert_eq!(parts.headers["te"], "trailers");
    for gone in [
        "connection",
        "keep-alive",
        "x-hop",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(!parts.headers.contains_key(gone), "{gone}");
    }
}

#[test]
fn request_field_order_and_host() {
    let request = http::Request::get("/x")
        .header("host", "example.com")
        .header("te", "gzip")
        .body(())
        .unwrap();
    let (parts, ()) = request.into_parts();
    assert_eq!(
        request_fields(&parts, None),
        fields(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/x")
        ])
    );
}

#[test]
fn connect_and_extended_connect() {
    let request = http::Request::connect("example.com:443").body(()).unwrap();
    let (parts, ()) = request.into_parts();
    let list = request_fields(&parts, None);
    assert_eq!(
        list,
        fields(&[(":method", "CONNECT"), (":authority", "example.com:443")])
    );
    let (parsed, protocol) = parse_request(list).unwrap();
    assert_eq!(parsed.uri, "example.com:443");
    assert_eq!(protocol, None);

    let request = http::Request::connect("https://example.com/.well-known/ptth")
        .body(())
        .unwrap();
    let (parts, protocol) = request_round_trip(request, Some("ptth"));
    assert_eq!(parts.method, http::Method::CONNECT);
    assert_eq!(parts.uri, "https://example.com/.well-known/ptth");
    assert_eq!(protocol.as_deref(), Some("ptth"));

    // Plain CONNECT must not carry :scheme or :path; extended CONNECT needs :authority.
    assert!(parse_request(fields(&[
        (":method", "CONNECT"),
        (":authority", "a:1"),
        (":path", "/")
    ]))
    .is_err());
    assert!(parse_request(fields(&[
        (":method", "CONNECT"),
        (":scheme", "https"),
        (":path", "/"),
        (":protocol", "ptth")
    ]))
    .is_err());
    // :protocol is only for CONNECT.
    assert!(parse_request(fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "a"),
        (":path", "/"),
        (":protocol", "ptth")
    ]))
    .is_err());
}

#[test]
fn options_asterisk() {
    let list = fields(&[
        (":method", "OPTIONS"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "*"),
    ]);
    let (parts, _) = parse_request(list.clone()).unwrap();
    assert_eq!(parts.uri.path(), "*");
    assert_eq!(request_fields(&parts, None), list);
}

#[test]
fn response_and_trailers_round_trip() {
    let response = http::Response::builder()
        .status(404)
        .header("content-length", "0")
        .header("connection", "close")
        .header("set-cookie", "a=b")
        .body(())
        .unwrap();
    let (parts, ()) = response.into_parts();
    let list = response_fields(&parts);
    assert_eq!(
        list,
        fields(&[
            (":status", "404"),
            ("content-length", "0"),
            ("set-cookie", "a=b")
        ])
    );
    let mut block = BytesMut::new();
    encode(&list, &mut block);
    let parsed = parse_response(decode(&block, 4096).unwrap()).unwrap();
    assert_eq!(parsed.status, http::StatusCode::NOT_FOUND);
    assert_eq!(parsed.headers.len(), 2);

    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    trailers.insert("transfer-encoding", "chunked".parse().unwrap());
    let list = trailer_fields(&trailers);
    assert_eq!(list, fields(&[("grpc-status", "0")]));
    let parsed = parse_trailers(list).unwrap();
    assert_eq!(parsed["grpc-status"], "0");
    assert_eq!(parsed.len(), 1);
}

#[test]
fn cookies_are_joined() {
    let list = fields(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "a"),
        (":path", "/"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
    ]);
    let (parts, _) = parse_request(list).unwrap();
    assert_eq!(
        parts.headers.get_all("cookie").iter().collect::<Vec<_>>(),
        ["a=1; b=2"]
    );
}

#[test]
fn malformed_messages_are_rejected() {
    let ok = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "a"),
        (":path", "/"),
    ];
    assert!(parse_request(fields(&ok)).is_ok());
    let with = |extra: &[(&str, &str)]| {
        let mut list = fields(&ok);
        list.extend(fields(extra));
        parse_request(list)
    };
    let cases: Vec<(Result<_, MessageError>, MessageError)> = vec![
        (
            with(&[("X-Upper", "1")]),
            MessageError::UppercaseName {
                name: "X-Upper".into(),
            },
        ),
        (
            with(&[("x-a", "1"), (":method", "GET")]),
            MessageError::PseudoAfterRegular {
                name: ":method".into(),
            },
        ),
        (
            with(&[(":path", "/again")]),
            MessageError::DuplicatePseudo {
                name: ":path".into(),
            },
        ),
        (
            with(&[(":status", "200")]),
            MessageError::UnexpectedPseudo {
                name: ":status".into(),
            },
        ),
        (
            with(&[(":foo", "1")]),
            MessageError::UnexpectedPseudo {
                name: ":foo".into(),
            },
        ),
        (
            with(&[("connection", "close")]),
            MessageError::ConnectionSpecific {
                name: "connection".into(),
            },
        ),
        (
            with(&[("transfer-encoding", "chunked")]),
            MessageError::ConnectionSpecific {
                name: "transfer-encoding".into(),
            },
        ),
        (
            with(&[("te", "gzip")]),
            MessageError::ConnectionSpecific { name: "te".into() },
        ),
        (
            with(&[("x-a", "a\r\nb")]),
            MessageError::InvalidValue { name: "x-a".into() },
        ),
        (
            with(&[("", "1")]),
            MessageError::InvalidName { name: "".into() },
        ),
        (
            with(&[("x a", "1")]),
            MessageError::InvalidName { name: "x a".into() },
        ),
        (with(&[("host", "b")]), MessageError::AuthorityMismatch),
        (
            parse_request(fields(&[
                (":scheme", "https"),
                (":authority", "a"),
                (":path", "/"),
            ])),
            MessageError::MissingPseudo { name: ":method" },
        ),
        (
            parse_request(fields(&[
                (":method", "GET"),
                (":authority", "a"),
                (":path", "/"),
            ])),
            MessageError::MissingPseudo { name: ":scheme" },
        ),
        (
            parse_request(fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", "a"),
            ])),
            MessageError::MissingPseudo { name: ":path" },
        ),
        (
            parse_request(fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/"),
            ])),
            MessageError::MissingAuthority,
        ),
        (
            parse_request(fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", ""),
                (":path", "/"),
            ])),
            MessageError::EmptyPseudo { name: ":authority" },
        ),
        (
            parse_request(fields(&[
                (":method", "G ET"),
                (":scheme", "https"),
                (":authority", "a"),
                (":path", "/"),
            ])),
            MessageError::InvalidMethod,
        ),
    ];
    for (got, want) in cases {
        let err = got.unwrap_err();
        assert_eq!(err, want);
        assert_eq!(err.h3_code(), H3_MESSAGE_ERROR);
    }

    assert_eq!(
        parse_response(fields(&[("x-a", "1")])).unwrap_err(),
        MessageError::MissingPseudo { name: ":status" }
    );
    assert_eq!(
        parse_response(fields(&[(":status", "20")])).unwrap_err(),
        MessageError::InvalidStatus
    );
    assert_eq!(
        parse_response(fields(&[(":status", "200"), (":path", "/")])).unwrap_err(),
        MessageError::UnexpectedPseudo {
            name: ":path".into()
        }
    );
    assert_eq!(
        parse_response(fields(&[(":status", "200"), (":status", "200")])).unwrap_err(),
        MessageError::DuplicatePseudo {
            name: ":status".into()
        }
    );
    assert_eq!(
        parse_trailers(fields(&[(":status", "200")])).unwrap_err(),
        MessageError::UnexpectedPseudo {
            name: ":status".into()
        }
    );
    assert_eq!(
        parse_trailers(fields(&[("upgrade", "x")])).unwrap_err(),
        MessageError::ConnectionSpecific {
            name: "upgrade".into()
        }
    );
}
