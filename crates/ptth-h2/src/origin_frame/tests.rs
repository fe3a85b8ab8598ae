//! Codec tests for ORIGIN frames: fixed vectors, negative cases, proptest round trips and the fuzz harness.

use proptest::prelude::*;

use super::fuzz_harness::fuzz_origin_frame;
use super::tap::OriginScanner;
use super::{FrameHeader, OriginEntry, OriginFrame, OriginFrameError, OriginFrameExt};

fn entry(s: &str) -> OriginEntry {
    OriginEntry::new(s).unwrap()
}

fn payload_of(origins: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for o in origins {
        out.extend_from_slice(&u16::try_from(o.len()).unwrap().to_be_bytes());
        out.extend_from_slice(o);
    }
    out
}

#[test]
fn encode_matches_rfc_layout() {
    let frame = OriginFrame::new(vec![
        entry("https://a.example"),
        entry("https://*.b.example:8443"),
    ])
    .unwrap();
    let bytes = frame.encode();
    let mut expected = vec![0, 0, 45, 0x0c, 0, 0, 0, 0, 0];
    expected.extend_from_slice(&[0, 17]);
    expected.extend_from_slice(b"https://a.example");
    expected.extend_from_slice(&[0, 24]);
    expected.extend_from_slice(b"https://*.b.example:8443");
    assert_eq!(&bytes[..], &expected[..]);
    assert_eq!(frame.payload_len(), 45);
    let header = FrameHeader::parse_prefix(&bytes).unwrap();
    assert_eq!(header.length(), 45);
    assert_eq!(header.frame_type(), OriginFrame::FRAME_TYPE);
    assert_eq!(header.flags(), 0);
    assert_eq!(header.stream_id(), 0);
    assert_eq!(OriginFrame::parse_payload(&bytes[9..]).unwrap(), frame);
}

#[test]
fn entry_accessors() {
    let e = entry("https://*.example.com:8443");
    assert_eq!(e.scheme(), "https");
    assert_eq!(e.host(), "*.example.com");
    assert_eq!(e.port(), Some(8443));
    assert!(e.is_wildcard());
    assert_eq!(e.to_string(), "https://*.example.com:8443");

    let e = entry("https://[2001:db8::1]:443");
    assert_eq!(e.host(), "[2001:db8::1]");
    assert_eq!(e.port(), Some(443));
    assert!(!e.is_wildcard());

    let e: OriginEntry = "http://192.0.2.1".parse().unwrap();
    assert_eq!(e.scheme(), "http");
    assert_eq!(e.host(), "192.0.2.1");
    assert_eq!(e.port(), None);
}

#[test]
fn malformed_origins_are_rejected() {
    for bad in [
        "",
        "example.com",
        "://example.com",
        "1https://example.com",
        "ht tp://example.com",
        "https://",
        "https://example.com/",
        "https://example.com/path",
        "https://example.com?q",
        "https://user@example.com",
        "https://example.com:",
        "https://example.com:65536",
        "https://example.com:+80",
        "https://example.com:8a",
        "https://example..com",
        "https://.example.com",
        "https://example.com.",
        "https://-example.com",
        "https://*",
        "https://*.",
        "https://**.example.com",
        "https://a.*.example.com",
        "https://*example.com",
        "https://[::1",
        "https://[not-ipv6]",
        "https://*.[::1]",
        "https://[::1]x",
        "https://exa mple.com",
    ] {
        match OriginEntry::new(bad) {
            Err(OriginFrameError::MalformedOrigin { .. }) => {}
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
    assert!(matches!(
        OriginEntry::new("https://ex\u{e4}mple.com"),
        Err(OriginFrameError::NonAscii {
            offset: 10,
            byte: 0xc3
        })
    ));
    let long = format!("https://{}", "a.".repeat(40_000));
    assert!(matches!(
        OriginEntry::new(&long),
        Err(OriginFrameError::OriginTooLong { .. })
    ));
}

#[test]
fn payload_negative_cases() {
    // Empty payload: no entries.
    assert!(matches!(
        OriginFrame::parse_payload(&[]),
        Err(OriginFrameError::NoEntries)
    ));
    // Truncated Origin-Len after a good entry.
    let mut p = payload_of(&[b"https://a.example"]);
    p.push(0);
    assert!(matches!(
        OriginFrame::parse_payload(&p),
        Err(OriginFrameError::TruncatedLength {
            offset: 19,
            available: 1
        })
    ));
    // Origin-Len larger than the rest.
    let mut p = vec![0, 30];
    p.extend_from_slice(b"https://a.example");
    assert!(matches!(
        OriginFrame::parse_payload(&p),
        Err(OriginFrameError::TruncatedOrigin {
            offset: 2,
            declared: 30,
            available: 17
        })
    ));
    // Empty ASCII-Origin.
    let mut p = payload_of(&[b"https://a.example"]);
    p.extend_from_slice(&[0, 0]);
    assert!(matches!(
        OriginFrame::parse_payload(&p),
        Err(OriginFrameError::EmptyOrigin { offset: 21 })
    ));
    // Non-ASCII byte; the offset is in the payload.
    let p = payload_of(&[b"https://a.ex\xffample"]);
    assert!(matches!(
        OriginFrame::parse_payload(&p),
        Err(OriginFrameError::NonAscii {
            offset: 14,
            byte: 0xff
        })
    ));
    // Malformed origin.
    let p = payload_of(&[b"https://a.example", b"a.example"]);
    assert!(matches!(
        OriginFrame::parse_payload(&p),
        Err(OriginFrameError::MalformedOrigin { .. })
    ));
}

#[test]
fn new_rejects_empty_and_oversized_frames() {
    assert!(matches!(
        OriginFrame::new(Vec::new()),
        Err(OriginFrameError::NoEntries)
    ));
    let e = entry(&format!("https://{}.example", "a".repeat(60)));
    let many = vec![e; OriginFrame::MAX_PAYLOAD_LEN / 70 + 1];
    assert!(matches!(
        OriginFrame::new(many),
        Err(OriginFrameError::PayloadTooLarge { max: 16_384, .. })
    ));
}

#[test]
fn frame_header_fields_and_reserved_bit() {
    let bytes = [0x12, 0x34, 0x56, 0x0c, 0xab, 0xff, 0xff, 0xff, 0xff];
    let h = FrameHeader::parse(&bytes);
    assert_eq!(h.length(), 0x12_3456);
    assert_eq!(h.frame_type(), 0x0c);
    assert_eq!(h.flags(), 0xab);
    assert_eq!(h.stream_id(), FrameHeader::MAX_STREAM_ID);
    assert_eq!(
        h.encode(),
        [0x12, 0x34, 0x56, 0x0c, 0xab, 0x7f, 0xff, 0xff, 0xff]
    );
    assert_eq!(FrameHeader::parse_prefix(&bytes[..8]), None);
    assert_eq!(FrameHeader::new(1 << 24, 0, 0, 0), None);
    assert_eq!(FrameHeader::new(0, 0, 0, 1 << 31), None);
    assert_eq!(
        FrameHeader::new(5, 4, 1, 3).unwrap().encode(),
        [0, 0, 5, 4, 1, 0, 0, 0, 3]
    );
}

fn frame_bytes(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = FrameHeader::new(len, frame_type, flags, stream_id)
        .unwrap()
        .encode()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

#[test]
fn scanner_ignores_origin_on_nonzero_stream_and_with_flags() {
    let good = OriginFrame::new(vec![entry("https://good.example")]).unwrap();
    let decoy = payload_of(&[b"https://decoy.example"]);
    let mut stream = frame_bytes(0x4, 0, 0, &[]);
    stream.extend(frame_bytes(0x0c, 0, 1, &decoy));
    stream.extend(frame_bytes(0x0c, 0x1, 0, &decoy));
    stream.extend_from_slice(&good.encode());
    let mut scanner = OriginScanner::new(4, OriginFrame::MAX_PAYLOAD_LEN);
    assert_eq!(scanner.handle_bytes(&stream).unwrap().unwrap(), good);

    let mut scanner = OriginScanner::new(3, OriginFrame::MAX_PAYLOAD_LEN);
    assert!(matches!(
        scanner.handle_bytes(&stream),
        Some(Err(OriginFrameError::NotSentImmediately { frames_seen: 3 }))
    ));
}

#[test]
fn scanner_limits_payload_size() {
    let frame = OriginFrame::new(vec![entry("https://a.example")]).unwrap();
    let mut scanner = OriginScanner::new(4, 10);
    assert!(matches!(
        scanner.handle_bytes(&frame.encode()),
        Some(Err(OriginFrameError::PayloadTooLarge { len: 19, max: 10 }))
    ));
    // An empty ORIGIN frame is decided at its header.
    let mut scanner = OriginScanner::new(4, 10);
    assert!(matches!(
        scanner.handle_bytes(&frame_bytes(0x0c, 0, 0, &[])),
        Some(Err(OriginFrameError::NoEntries))
    ));
}

fn scheme() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9+.-]{0,8}"
}

fn dns_host() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec("[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,20}[a-zA-Z0-9_])?", 1..5),
    )
        .prop_map(|(wild, labels)| {
            let name = labels.join(".");
            if wild {
                format!("*.{name}")
            } else {
                name
            }
        })
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => dns_host(),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
    ]
}

fn origin_entry() -> impl Strategy<Value = OriginEntry> {
    (scheme(), host(), any::<Option<u16>>()).prop_map(|(scheme, host, port)| {
        let text = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        OriginEntry::new(&text).unwrap()
    })
}

proptest! {
    #[test]
    fn entry_text_round_trips(e in origin_entry()) {
        let again = OriginEntry::new(e.as_str()).unwrap();
        prop_assert_eq!(&again, &e);
        let rebuilt = match e.port() {
            Some(p) => format!("{}://{}:{}", e.scheme(), e.host(), p),
            None => format!("{}://{}", e.scheme(), e.host()),
        };
        prop_assert_eq!(rebuilt, e.as_str());
    }

    #[test]
    fn frame_round_trips(entries in prop::collection::vec(origin_entry(), 1..20)) {
        let frame = OriginFrame::new(entries).unwrap();
        let bytes = frame.encode();
        let header = FrameHeader::parse_prefix(&bytes).unwrap();
        prop_assert_eq!(header.frame_type(), 0x0c);
        prop_assert_eq!(header.stream_id(), 0);
        prop_assert_eq!(header.payload_len(), bytes.len() - FrameHeader::LEN);
        let parsed = OriginFrame::parse_payload(&bytes[FrameHeader::LEN..]).unwrap();
        prop_assert_eq!(parsed, frame);
    }

    #[test]
    fn scanner_finds_frame_in_any_split(
        entries in prop::collection::vec(origin_entry(), 1..5),
        settings_len in 0usize..40,
        chunk in 1usize..32,
    ) {
        let frame = OriginFrame::new(entries).unwrap();
        let mut stream = frame_bytes(0x4, 0, 0, &vec![0; settings_len]);
        stream.extend(frame_bytes(0x8, 0, 0, &[0, 0, 1, 0]));
        stream.extend_from_slice(&frame.encode());
        stream.extend(frame_bytes(0x6, 0, 0, &[0; 8]));
        let mut scanner = OriginScanner::new(3, OriginFrame::MAX_PAYLOAD_LEN);
        let mut outcome = None;
        for piece in stream.chunks(chunk) {
            outcome = scanner.handle_bytes(piece);
            if outcome.is_some() {
                break;
            }
        }
        prop_assert_eq!(outcome.unwrap().unwrap(), frame);
    }

    #[test]
    fn truncated_payloads_never_parse(entries in prop::collection::vec(origin_entry(), 1..5), cut in 1usize..1000) {
        let frame = OriginFrame::new(entries).unwrap();
        let bytes = frame.encode();
        let payload = &bytes[FrameHeader::LEN..];
        let cut = cut % payload.len();
        // Any strict prefix that ends inside an entry is an error; prefixes ending
        // on an entry boundary parse to the leading entries.
        if let Ok(parsed) = OriginFrame::parse_payload(&payload[..cut]) {
            prop_assert!(frame.entries().starts_with(parsed.entries()));
        }
    }

    #[test]
    fn fuzz_harness_never_panics(data in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzz_origin_frame(&data);
    }

    #[test]
    fn fuzz_harness_never_panics_on_near_valid_payloads(
        entries in prop::collection::vec(origin_entry(), 1..5),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut data = OriginFrame::new(entries).unwrap().encode()[FrameHeader::LEN..].to_vec();
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        fuzz_origin_frame(&data);
    }
}
