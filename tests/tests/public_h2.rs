//! The public HTTP/2 server (`ptth_h2::server` behind the cleartext listener, h2c by prior
//! knowledge) keeps the limits hyper's server had there, checked frame by frame with a
//! scripted client through the real gateway binary: its SETTINGS (1 024 streams, a 64 KiB
//! header list and frames, extended CONNECT), a 431 for a header section over 64 KiB with
//! the connection still serving, and h2's Rapid Reset defence (GOAWAY ENHANCE_YOUR_CALM for
//! a flood of streams reset before they are accepted), each beside an honest request that
//! is answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ptth_tests::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ptth_tests::h2_frames::{
    frame, hpack_int, literal, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS,
    PREFACE, RST_STREAM, SETTINGS,
};

/// The SETTINGS (and PING) ACK flag.
const ACK: u8 = 0x1;
/// Frames this client sends stay within the default SETTINGS_MAX_FRAME_SIZE.
const FRAME: usize = 16_384;
/// How long any one frame may take to arrive on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

/// `GET http://{host}/` as an HPACK block, with a field of `extra` octets when non-zero.
fn get_block(host: &str, extra: usize) -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table 2, 6, 4).
    let mut b = vec![0x82, 0x86, 0x84];
    // :authority, literal without indexing, indexed name 1.
    b.push(0x01);
    hpack_int(&mut b, 0, 7, host.len());
    b.extend_from_slice(host.as_bytes());
    if extra > 0 {
        literal(&mut b, b"x-big", &vec![b'a'; extra]);
    }
    b
}

/// The request `block` on `stream` as HEADERS (and CONTINUATION frames, as it needs).
fn request(stream: u32, block: &[u8]) -> Vec<u8> {
    let mut chunks = block.chunks(FRAME).peekable();
    let mut out = Vec::new();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last { END_HEADERS } else { 0 };
        if first {
            out.extend(frame(HEADERS, flags | END_STREAM, stream, chunk));
            first = false;
        } else {
            out.extend(frame(CONTINUATION, flags, stream, chunk));
        }
    }
    out
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// The next frame, or `None` when the gateway closed the connection.
async fn read_frame(io: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 9];
    let read = tokio::time::timeout(WAIT, io.read_exact(&mut head))
        .await
        .expect("no frame within the wait");
    if read.is_err() {
        return None;
    }
    let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
    let mut payload = vec![0u8; len];
    tokio::time::timeout(WAIT, io.read_exact(&mut payload))
        .await
        .expect("a frame's payload stalled")
        .ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream,
        payload,
    })
}

/// An h2c connection past the preface: the gateway's SETTINGS as (identifier, value) pairs.
async fn h2c(gw: &Gateway) -> (TcpStream, Vec<(u16, u32)>) {
    let mut io = TcpStream::connect(gw.listen).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    io.write_all(&hello).await.unwrap();
    loop {
        let f = read_frame(&mut io).await.expect("closed before SETTINGS");
        if f.kind == SETTINGS && f.flags & ACK == 0 {
            let settings = f
                .payload
                .chunks_exact(6)
                .map(|s| {
                    (
                        u16::from_be_bytes([s[0], s[1]]),
                        u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                    )
                })
                .collect();
            io.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
            return (io, settings);
        }
    }
}

/// What the gateway answered on `stream`: the HPACK block of its response HEADERS, and the
/// DATA octets up to END_STREAM. Frames of other streams are skipped.
async fn answer(io: &mut TcpStream, stream: u32) -> (Vec<u8>, Vec<u8>) {
    let mut block = None;
    let mut body = Vec::new();
    loop {
        let f = read_frame(io)
            .await
            .expect("closed before the answer ended");
        if f.stream != stream {
            continue;
        }
        match f.kind {
            HEADERS if block.is_none() => block = Some(f.payload),
            DATA => body.extend_from_slice(&f.payload),
            RST_STREAM => panic!("stream {stream} reset: {:?}", f.payload),
            _ => {}
        }
        if f.flags & END_STREAM != 0 && f.kind != SETTINGS {
            return (block.expect("END_STREAM before HEADERS"), body);
        }
    }
}

/// A response block whose first field is `:status: 200` (static table index 8).
fn is_200(block: &[u8]) -> bool {
    block.first() == Some(&0x88)
}

/// A response block that is `:status: 431` alone: a literal with the indexed name 8, the
/// value plain or Huffman-coded (RFC 7541 Appendix B: "431" is 0x69 0x90 0xff).
fn is_431(block: &[u8]) -> bool {
    matches!(block.first(), Some(0x08 | 0x18 | 0x48))
        && (block[1..] == [0x03, b'4', b'3', b'1'] || block[1..] == [0x83, 0x69, 0x90, 0xff])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_h2c_keeps_its_settings_answers_431_and_stops_a_reset_flood() {
    let dir = TempDir::new("public-h2");
    let gw = Gateway::start(&dir.0, &[]).await.unwrap();
    let _origin = Origin::start(&gw, "rh2", "app.localhost", &[])
        .await
        .unwrap();
    wait_ready(&gw, "app.localhost").await.unwrap();

    // The SETTINGS hyper's server was built with.
    let (mut io, settings) = h2c(&gw).await;
    let setting = |id: u16| settings.iter().find(|s| s.0 == id).map(|s| s.1);
    assert_eq!(
        setting(0x3),
        Some(1024),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert_eq!(setting(0x5), Some(65_536), "MAX_FRAME_SIZE: {settings:?}");
    assert_eq!(
        setting(0x6),
        Some(65_536),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );
    assert_eq!(
        setting(0x8),
        Some(1),
        "ENABLE_CONNECT_PROTOCOL: {settings:?}"
    );

    // A header section over 64 KiB: 431 on its stream (RFC 9113 §10.5.1), and the same
    // connection answers the next request.
    io.write_all(&request(1, &get_block("app.localhost", 70_000)))
        .await
        .unwrap();
    let (block, _) = answer(&mut io, 1).await;
    assert!(is_431(&block), "not a 431: {block:02x?}");
    io.write_all(&request(3, &get_block("app.localhost", 0)))
        .await
        .unwrap();
    let (block, body) = answer(&mut io, 3).await;
    assert!(is_200(&block), "not a 200: {block:02x?}");
    assert!(!body.is_empty(), "the origin's page came back empty");
    drop(io);

    // Rapid Reset (CVE-2023-44487): streams opened and reset at once, faster than they are
    // accepted. h2's default bound on such streams (20) ends the connection with GOAWAY
    // ENHANCE_YOUR_CALM (0xb) instead of starting the work each would have.
    let (mut io, _) = h2c(&gw).await;
    let mut flood = Vec::new();
    for i in 0..500u32 {
        let stream = 1 + 2 * i;
        flood.extend(request(stream, &get_block("app.localhost", 0)));
        flood.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    // The gateway may close before it has read all of it.
    let _ = io.write_all(&flood).await;
    let mut goaway = None;
    while let Some(f) = read_frame(&mut io).await {
        if f.kind == GOAWAY {
            goaway = Some(u32::from_be_bytes([
                f.payload[4],
                f.payload[5],
                f.payload[6],
                f.payload[7],
            ]));
            break;
        }
    }
    assert_eq!(
        goaway,
        Some(0xb),
        "no GOAWAY ENHANCE_YOUR_CALM for the flood"
    );

    // The honest twin: a new connection is served.
    let (mut io, _) = h2c(&gw).await;
    io.write_all(&request(1, &get_block("app.localhost", 0)))
        .await
        .unwrap();
    let (block, _) = answer(&mut io, 1).await;
    assert!(is_200(&block), "not a 200 after the flood: {block:02x?}");
}
