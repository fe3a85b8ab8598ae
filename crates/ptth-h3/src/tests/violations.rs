//! Scripted raw-QUIC peers that break HTTP/3 rules; each must make our endpoint close the
//! connection with the RFC's error code.

use super::*;
use crate::frame::*;

/// Our endpoint on one side (`ours_is_server`: the QUIC server), raw bytes from the other.
/// Returns the code our endpoint closed the connection with.
async fn closes_with(
    direction: RequestDirection,
    ours_is_server: bool,
    uni: &[&[u8]],
    bidi: Option<&[u8]>,
) -> u64 {
    let (s, c, _ep) = quic_pair(b"h3").await;
    let (ours, raw) = if ours_is_server { (s, c) } else { (c, s) };
    let conn = H3Connection::new(ours, H3Config::new(direction))
        .await
        .unwrap();
    let mut keep = Vec::new();
    for bytes in uni {
        let mut send = raw.open_uni().await.unwrap();
        send.write_all(bytes).await.unwrap();
        keep.push(send);
    }
    if let Some(bytes) = bidi {
        let (mut send, recv) = raw.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        keep.push(send);
        std::mem::forget(recv);
    }
    let closed = tokio::time::timeout(TIMEOUT, raw.closed()).await.unwrap();
    drop(conn);
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
        other => panic!("unexpected close {other:?}"),
    }
}

const SETTINGS_EMPTY: &[u8] = &[0x00, 0x04, 0x00];

fn control(extra: &[u8]) -> Vec<u8> {
    let mut v = SETTINGS_EMPTY.to_vec();
    v.extend_from_slice(extra);
    v
}

#[tokio::test]
async fn control_stream_violations() {
    use RequestDirection::*;
    // First frame not SETTINGS.
    assert_eq!(
        closes_with(ClientSends, true, &[&[0x00, 0x07, 0x01, 0x00]], None).await,
        H3_MISSING_SETTINGS
    );
    // HTTP/2 frame type 0x2 (PRIORITY).
    assert_eq!(
        closes_with(ClientSends, true, &[&control(&[0x02, 0x00])], None).await,
        H3_FRAME_UNEXPECTED
    );
    // DATA on the control stream.
    assert_eq!(
        closes_with(ClientSends, true, &[&control(&[0x00, 0x01, 0xff])], None).await,
        H3_FRAME_UNEXPECTED
    );
    // Second SETTINGS.
    assert_eq!(
        closes_with(ClientSends, true, &[&control(&[0x04, 0x00])], None).await,
        H3_FRAME_UNEXPECTED
    );
    // GOAWAY with a byte after its field.
    assert_eq!(
        closes_with(
            ClientSends,
            true,
            &[&control(&[0x07, 0x02, 0x00, 0x00])],
            None
        )
        .await,
        H3_FRAME_ERROR
    );
    // Duplicate setting; HTTP/2 setting.
    assert_eq!(
        closes_with(
            ClientSends,
            true,
            &[&[0x00, 0x04, 0x04, 0x06, 0x01, 0x06, 0x01]],
            None
        )
        .await,
        H3_SETTINGS_ERROR
    );
    assert_eq!(
        closes_with(ClientSends, true, &[&[0x00, 0x04, 0x02, 0x03, 0x01]], None).await,
        H3_SETTINGS_ERROR
    );
    // Two control streams.
    assert_eq!(
        closes_with(ClientSends, true, &[SETTINGS_EMPTY, SETTINGS_EMPTY], None).await,
        H3_STREAM_CREATION_ERROR
    );
    // CANCEL_PUSH for a push that cannot exist.
    assert_eq!(
        closes_with(ClientSends, true, &[&control(&[0x03, 0x01, 0x00])], None).await,
        H3_ID_ERROR
    );
}

#[tokio::test]
async fn wrong_parity_or_increasing_goaway_is_an_id_error() {
    use RequestDirection::*;
    // Reversed: we are the gateway (QUIC server, HTTP client); the origin's GOAWAY must
    // carry a server-bidi ID (4n+1). 0 is a client-bidi ID.
    assert_eq!(
        closes_with(ServerSends, true, &[&control(&[0x07, 0x01, 0x00])], None).await,
        H3_ID_ERROR
    );
    // 4n+1 is fine, but it may not increase.
    assert_eq!(
        closes_with(
            ServerSends,
            true,
            &[&control(&[0x07, 0x01, 0x05, 0x07, 0x01, 0x09])],
            None
        )
        .await,
        H3_ID_ERROR
    );
    // Forward: a server-bidi ID in GOAWAY from the server is wrong.
    assert_eq!(
        closes_with(ClientSends, false, &[&control(&[0x07, 0x01, 0x01])], None).await,
        H3_ID_ERROR
    );
}

#[tokio::test]
async fn stream_violations() {
    use RequestDirection::*;
    // A push stream: we never sent MAX_PUSH_ID.
    assert_eq!(
        closes_with(ClientSends, false, &[SETTINGS_EMPTY, &[0x01, 0x00]], None).await,
        H3_ID_ERROR
    );
    // QPACK encoder stream inserting into a table of capacity 0; decoder stream with an
    // Insert Count Increment; a second encoder stream.
    assert_eq!(
        closes_with(
            ClientSends,
            true,
            &[SETTINGS_EMPTY, &[0x02, 0x41, b'a', 0x01, b'b']],
            None
        )
        .await,
        QPACK_ENCODER_STREAM_ERROR
    );
    assert_eq!(
        closes_with(ClientSends, true, &[SETTINGS_EMPTY, &[0x03, 0x01]], None).await,
        QPACK_DECODER_STREAM_ERROR
    );
    assert_eq!(
        closes_with(
            ClientSends,
            true,
            &[SETTINGS_EMPTY, &[0x02, 0x20], &[0x02]],
            None
        )
        .await,
        H3_STREAM_CREATION_ERROR
    );
    // Closing the control stream.
    let (s, c, _ep) = quic_pair(b"h3").await;
    let _conn = H3Connection::new(s, H3Config::new(ClientSends))
        .await
        .unwrap();
    let mut send = c.open_uni().await.unwrap();
    send.write_all(SETTINGS_EMPTY).await.unwrap();
    send.finish().unwrap();
    let closed = tokio::time::timeout(TIMEOUT, c.closed()).await.unwrap();
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref a) if a.error_code.into_inner() == H3_CLOSED_CRITICAL_STREAM),
        "{closed:?}"
    );
    // Forward mode: a bidi stream opened by the QUIC server.
    assert_eq!(
        closes_with(
            ClientSends,
            false,
            &[SETTINGS_EMPTY],
            Some(&[0x01, 0x03, 0x00, 0x00, 0xd1])
        )
        .await,
        H3_STREAM_CREATION_ERROR
    );
    // Reversed mode: a bidi stream opened by the QUIC client (the origin).
    assert_eq!(
        closes_with(
            ServerSends,
            true,
            &[SETTINGS_EMPTY],
            Some(&[0x01, 0x03, 0x00, 0x00, 0xd1])
        )
        .await,
        H3_STREAM_CREATION_ERROR
    );
}

#[tokio::test]
async fn request_stream_violations() {
    use RequestDirection::*;
    // A field section with Required Insert Count 1 (a dynamic-table reference).
    assert_eq!(
        closes_with(
            ClientSends,
            true,
            &[SETTINGS_EMPTY],
            Some(&[0x01, 0x03, 0x02, 0x00, 0x80])
        )
        .await,
        QPACK_DECOMPRESSION_FAILED
    );
    // An indexed field line into the dynamic table with Required Insert Count 0.
    assert_eq!(
        closes_with(
            ClientSends,
            true,
            &[SETTINGS_EMPTY],
            Some(&[0x01, 0x03, 0x00, 0x00, 0x80])
        )
        .await,
        QPACK_DECOMPRESSION_FAILED
    );
    // DATA before HEADERS; SETTINGS on a request stream; an HTTP/2 frame type.
    assert_eq!(
        closes_with(
            ClientSends,
            true,
            &[SETTINGS_EMPTY],
            Some(&[0x00, 0x01, b'x'])
        )
        .await,
        H3_FRAME_UNEXPECTED
    );
    assert_eq!(
        closes_with(ClientSends, true, &[SETTINGS_EMPTY], Some(&[0x04, 0x00])).await,
        H3_FRAME_UNEXPECTED
    );
    assert_eq!(
        closes_with(ClientSends, true, &[SETTINGS_EMPTY], Some(&[0x06, 0x00])).await,
        H3_FRAME_UNEXPECTED
    );
    // Reversed: the origin accepts requests on stream 1 and rejects a dynamic reference too.
    assert_eq!(
        closes_with(
            ServerSends,
            false,
            &[SETTINGS_EMPTY],
            Some(&[0x01, 0x03, 0x02, 0x00, 0x80])
        )
        .await,
        QPACK_DECOMPRESSION_FAILED
    );
}

#[tokio::test]
async fn malformed_request_is_a_stream_error_only() {
    // A request without :method is malformed: H3_MESSAGE_ERROR on the stream; the
    // connection stays up.
    let (s, c, _ep) = quic_pair(b"h3").await;
    let _conn = H3Connection::new(s, H3Config::new(RequestDirection::ClientSends))
        .await
        .unwrap();
    let mut control = c.open_uni().await.unwrap();
    control.write_all(SETTINGS_EMPTY).await.unwrap();
    let (mut send, mut recv) = c.open_bi().await.unwrap();
    // Section prefix 00 00, then ":path /" from the static table (index 1): 0xc1.
    send.write_all(&[0x01, 0x03, 0x00, 0x00, 0xc1])
        .await
        .unwrap();
    send.finish().unwrap();
    let err = tokio::time::timeout(TIMEOUT, recv.read_to_end(1024))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) if code.into_inner() == H3_MESSAGE_ERROR),
        "{err:?}"
    );
    assert!(c.close_reason().is_none());
}

#[tokio::test]
async fn a_request_stream_without_headers_in_time_is_incomplete() {
    // With a request header timeout, a stream that sends part of a HEADERS frame and
    // stalls is reset with H3_REQUEST_INCOMPLETE; a request sent in time on the same
    // connection is accepted (the positive twin).
    let (s, c, _ep) = quic_pair(b"h3").await;
    let config = H3Config::new(RequestDirection::ClientSends)
        .request_header_timeout(Duration::from_millis(300));
    let conn = H3Connection::new(s, config).await.unwrap();
    let mut control = c.open_uni().await.unwrap();
    control.write_all(SETTINGS_EMPTY).await.unwrap();
    let (mut stalled, mut stalled_recv) = c.open_bi().await.unwrap();
    stalled.write_all(&[0x01]).await.unwrap();
    let err = tokio::time::timeout(TIMEOUT, stalled_recv.read_to_end(1024))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) if code.into_inner() == H3_REQUEST_INCOMPLETE),
        "{err:?}"
    );
    let (mut send, _recv) = c.open_bi().await.unwrap();
    // Section prefix 00 00, then :method GET (static 17), :scheme https (23), :path / (1),
    // :authority from the static table name (0) with a literal value "a".
    send.write_all(&[0x01, 0x08, 0x00, 0x00, 0xd1, 0xd7, 0xc1, 0x50, 0x01, b'a'])
        .await
        .unwrap();
    send.finish().unwrap();
    let (req, _respond) = tokio::time::timeout(TIMEOUT, conn.accept())
        .await
        .unwrap()
        .expect("the request sent in time is accepted");
    assert_eq!(req.uri().path(), "/");
    assert!(c.close_reason().is_none());
}
