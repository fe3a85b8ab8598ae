//! IO tests for the ORIGIN frame wrappers: hyper origin and gateway over `tokio::io::duplex`, and scripted raw peers.

use std::convert::Infallible;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::{
    FrameHeader, OriginFrame, OriginFrameError, OriginFrameExt, OriginFrameInjector, OriginFrameTap,
};

const LIMIT: Duration = Duration::from_secs(20);

fn origin_frame() -> OriginFrame {
    OriginFrame::new(vec![
        "https://api.example.com".parse().unwrap(),
        "https://*.example.net:8443".parse().unwrap(),
    ])
    .unwrap()
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

async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("hello {}", req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Two `buffer`-byte duplex pipes joined by a relay task: (gateway end, origin end).
///
/// A single tiny duplex would deadlock h2 itself, which stops reading while a
/// flush is pending (both peers flush their prefaces first). The relay holds
/// bytes in between, like socket buffers do, while each endpoint still sees
/// every write and read cut into `buffer`-byte pieces.
fn tiny_pipe(buffer: usize) -> (DuplexStream, DuplexStream) {
    let (gateway_io, mut relay_a) = duplex(buffer);
    let (mut relay_b, origin_io) = duplex(buffer);
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut relay_a, &mut relay_b).await;
    });
    (gateway_io, origin_io)
}

/// Origin = hyper HTTP/2 server over the injector; gateway = hyper HTTP/2 client over the tap.
async fn reverse_h2_round_trip(buffer: usize) {
    let (gateway_io, origin_io) = tiny_pipe(buffer);

    // The origin dialled out, yet it is the HTTP/2 server on this connection.
    let origin_task = tokio::spawn(async move {
        let io = OriginFrameInjector::new(origin_io, origin_frame());
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), hyper::service::service_fn(hello))
            .await
    });

    let (tap, watch) = OriginFrameTap::new(gateway_io, 4);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tap))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);

    let got = timeout(LIMIT, watch.wait()).await.unwrap().unwrap();
    assert_eq!(got, origin_frame());
    assert_eq!(got.entries()[1].host(), "*.example.net");

    // The same connection still carries requests after the ORIGIN frame.
    for path in ["/ping", "/again"] {
        let req = Request::get(format!("https://api.example.com{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = timeout(LIMIT, sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = timeout(LIMIT, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(body, format!("hello {path}"));
    }

    drop(sender);
    timeout(LIMIT, conn_task).await.unwrap().unwrap().unwrap();
    timeout(LIMIT, origin_task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn reverse_h2_delivers_origin_frame_then_serves_requests() {
    reverse_h2_round_trip(64 * 1024).await;
}

#[tokio::test]
async fn reverse_h2_with_tiny_duplex_buffers() {
    // Every buffer size splits frame headers, the SETTINGS/ORIGIN boundary and
    // the ORIGIN payload somewhere, on both the write and the read side.
    for buffer in [1, 2, 3, 7, 9, 10, 13] {
        reverse_h2_round_trip(buffer).await;
    }
}

#[tokio::test]
async fn gateway_reports_origin_without_origin_frame() {
    let (gateway_io, origin_io) = tiny_pipe(7);
    let origin_task = tokio::spawn(async move {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(origin_io), hyper::service::service_fn(hello))
            .await
    });
    let (tap, watch) = OriginFrameTap::new(gateway_io, 2);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tap))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    let req = Request::get("https://api.example.com/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = timeout(LIMIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = timeout(LIMIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(body, "hello /");
    let outcome = timeout(LIMIT, watch.wait()).await.unwrap();
    assert!(
        matches!(
            outcome,
            Err(OriginFrameError::NotSentImmediately { frames_seen: 2 })
        ),
        "{outcome:?}"
    );
    drop(sender);
    timeout(LIMIT, conn_task).await.unwrap().unwrap().unwrap();
    timeout(LIMIT, origin_task).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn injector_output_is_byte_exact() {
    let settings = frame_bytes(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let ping = frame_bytes(0x6, 0, 0, &[1; 8]);
    let mut caller = settings.clone();
    caller.extend_from_slice(&ping);
    let mut expected = settings.clone();
    expected.extend_from_slice(&origin_frame().encode());
    expected.extend_from_slice(&ping);

    for buffer in [1, 2, 7, 64, 4096] {
        for splits in [vec![], vec![4], vec![4, 11], vec![15], vec![14, 16]] {
            let (inner, mut peer) = duplex(buffer);
            let caller = caller.clone();
            let writer = tokio::spawn(async move {
                let mut injector = OriginFrameInjector::new(inner, origin_frame());
                let mut start = 0;
                for end in splits.into_iter().chain([caller.len()]) {
                    injector.write_all(&caller[start..end]).await?;
                    start = end;
                }
                injector.flush().await?;
                let injected = injector.is_injected();
                injector.shutdown().await?;
                io::Result::Ok(injected)
            });
            let mut got = Vec::new();
            timeout(LIMIT, peer.read_to_end(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert!(writer.await.unwrap().unwrap());
            assert_eq!(got, expected, "buffer {buffer}");
        }
    }
}

#[tokio::test]
async fn injector_flushes_origin_even_without_further_writes() {
    let settings = frame_bytes(0x4, 0, 0, &[]);
    let (inner, mut peer) = duplex(3);
    let writer = tokio::spawn(async move {
        let mut injector = OriginFrameInjector::new(inner, origin_frame());
        injector.write_all(&settings).await?;
        assert!(!injector.is_injected());
        injector.flush().await?;
        assert!(injector.is_injected());
        io::Result::Ok(injector)
    });
    let expected_len = FrameHeader::LEN + origin_frame().encode().len();
    let mut got = vec![0; expected_len];
    timeout(LIMIT, peer.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[FrameHeader::LEN..], &origin_frame().encode()[..]);
    drop(writer.await.unwrap().unwrap());
}

#[tokio::test]
async fn injector_refuses_stream_not_starting_with_settings() {
    let (inner, _peer) = duplex(1024);
    let mut injector = OriginFrameInjector::new(inner, origin_frame());
    // A client preface is not a server preface.
    let err = injector
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

/// A scripted origin writes `script`; the tap reads it through `read_size`-byte reads.
async fn tap_read(
    script: Vec<u8>,
    max_frames: usize,
    read_size: usize,
) -> (Vec<u8>, Result<OriginFrame, OriginFrameError>) {
    let (ours, mut peer) = duplex(5);
    let peer_task = tokio::spawn(async move {
        peer.write_all(&script).await?;
        peer.shutdown().await
    });
    let (mut tap, watch) = OriginFrameTap::new(ours, max_frames);
    let mut got = Vec::new();
    let mut buf = vec![0; read_size];
    loop {
        let n = timeout(LIMIT, tap.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!tap.is_watching());
    peer_task.await.unwrap().unwrap();
    let outcome = timeout(LIMIT, watch.wait()).await.unwrap();
    (got, outcome)
}

#[tokio::test]
async fn tap_gives_up_after_five_frames_without_origin() {
    let mut script = frame_bytes(0x4, 0, 0, &[0, 4, 0, 1, 0, 0]);
    script.extend(frame_bytes(0x8, 0, 0, &[0, 0, 0x10, 0]));
    script.extend(frame_bytes(0x6, 0, 0, &[7; 8]));
    script.extend(frame_bytes(0x4, 0x1, 0, &[]));
    script.extend(frame_bytes(0x6, 0x1, 0, &[7; 8]));
    // Too late: draft-bt wants the ORIGIN frame immediately.
    script.extend_from_slice(&origin_frame().encode());
    for read_size in [1, 4, 1024] {
        let (got, outcome) = tap_read(script.clone(), 5, read_size).await;
        assert_eq!(got, script, "bytes pass through unchanged");
        assert!(
            matches!(
                outcome,
                Err(OriginFrameError::NotSentImmediately { frames_seen: 5 })
            ),
            "{outcome:?}"
        );
    }
}

#[tokio::test]
async fn tap_captures_origin_across_split_reads() {
    let mut script = frame_bytes(0x4, 0, 0, &[0, 4, 0, 1, 0, 0]);
    // ORIGIN frames on a non-zero stream are ignored (RFC 8336 Appendix A, step 3).
    script.extend(frame_bytes(
        0x0c,
        0,
        3,
        &[0, 5, b'a', b':', b'/', b'/', b'b'],
    ));
    script.extend_from_slice(&origin_frame().encode());
    script.extend(frame_bytes(0x6, 0, 0, &[7; 8]));
    for read_size in [1, 2, 5, 9, 1024] {
        let (got, outcome) = tap_read(script.clone(), 5, read_size).await;
        assert_eq!(got, script);
        assert_eq!(outcome.unwrap(), origin_frame());
    }
}

#[tokio::test]
async fn tap_reports_connection_end_before_origin() {
    let script = frame_bytes(0x4, 0, 0, &[]);
    let (got, outcome) = tap_read(script.clone(), 5, 3).await;
    assert_eq!(got, script);
    assert!(
        matches!(
            outcome,
            Err(OriginFrameError::ConnectionClosed { frames_seen: 1 })
        ),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn tap_reports_malformed_origin_payload() {
    let mut script = frame_bytes(0x4, 0, 0, &[]);
    script.extend(frame_bytes(
        0x0c,
        0,
        0,
        &[0, 9, b'n', b'o', b's', b'c', b'h', b'e', b'm', b'e', b'!'],
    ));
    let (got, outcome) = tap_read(script.clone(), 5, 4).await;
    assert_eq!(got, script);
    assert!(
        matches!(outcome, Err(OriginFrameError::MalformedOrigin { .. })),
        "{outcome:?}"
    );

    let mut script = frame_bytes(0x4, 0, 0, &[]);
    script.extend(frame_bytes(0x0c, 0, 0, &[0, 20, b'h']));
    let (_, outcome) = tap_read(script, 5, 4).await;
    assert!(
        matches!(outcome, Err(OriginFrameError::TruncatedOrigin { .. })),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn tap_watch_resolves_when_tap_dropped_or_limit_zero() {
    let (ours, _peer) = duplex(16);
    let (tap, watch) = OriginFrameTap::new(ours, 5);
    drop(tap);
    assert!(matches!(
        watch.wait().await,
        Err(OriginFrameError::TapDropped)
    ));

    let (ours, _peer) = duplex(16);
    let (tap, watch) = OriginFrameTap::new(ours, 0);
    assert!(!tap.is_watching());
    assert!(matches!(
        watch.wait().await,
        Err(OriginFrameError::NotSentImmediately { frames_seen: 0 })
    ));
}
