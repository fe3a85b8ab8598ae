//! The RFC 9412 ORIGIN frame over real quinn endpoints: sent by the HTTP server right after
//! SETTINGS in reversed mode (draft-bt `h3-reverse`), received by the HTTP client.

use super::*;
use crate::frame::{H3_FRAME_ERROR, H3_FRAME_UNEXPECTED};

fn frame(entries: &[&str]) -> ptth_core::OriginFrame {
    ptth_core::OriginFrame::new(
        entries
            .iter()
            .map(|e| ptth_core::OriginEntry::new(e).unwrap())
            .collect(),
    )
    .unwrap()
}

fn texts(frame: &ptth_core::OriginFrame) -> Vec<String> {
    frame.entries().iter().map(|e| e.to_string()).collect()
}

#[tokio::test]
async fn reversed_origin_sends_origin_frame_and_gateway_receives_it() {
    let gateway_cfg = H3Config::new(RequestDirection::ServerSends);
    let origin_cfg = H3Config::new(RequestDirection::ServerSends)
        .origin_frame(frame(&["https://a.example", "https://*.b.example:8443"]));
    // The gateway is the QUIC server and HTTP client; the origin dials and serves.
    let (gateway, origin, _ep) = h3_pair(b"h3", gateway_cfg, origin_cfg).await;
    let got = tokio::time::timeout(TIMEOUT, gateway.peer_origin_frame())
        .await
        .unwrap()
        .expect("the origin's ORIGIN frame");
    assert_eq!(
        texts(&got),
        ["https://a.example", "https://*.b.example:8443"]
    );

    // The connection still carries requests afterwards.
    let origin = Arc::new(origin);
    let o = origin.clone();
    tokio::spawn(async move { serve(&o, hyper::service::service_fn(echo)).await });
    let (resp, data, _) =
        tokio::time::timeout(TIMEOUT, post(&gateway, "/x", TestBody::new(&[b"hi"], None)))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&data[..], b"hi");
    // The origin (HTTP server) receives no ORIGIN frame from the gateway.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), origin.peer_origin_frame())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_http_client_does_not_send_its_configured_origin_frame() {
    // A misconfigured gateway: ORIGIN is server-to-client only, so it is not sent.
    let gateway_cfg =
        H3Config::new(RequestDirection::ServerSends).origin_frame(frame(&["https://gw.example"]));
    let origin_cfg = H3Config::new(RequestDirection::ServerSends);
    let (gateway, origin, _ep) = h3_pair(b"h3", gateway_cfg, origin_cfg).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), origin.peer_origin_frame())
            .await
            .is_err()
    );
    // Once the connection ends without one, the wait resolves to None.
    gateway.close(0x100, "done");
    assert_eq!(
        tokio::time::timeout(TIMEOUT, origin.peer_origin_frame())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn missing_origin_frame_resolves_to_none_when_the_connection_ends() {
    let cfg = H3Config::new(RequestDirection::ServerSends);
    let (gateway, origin, _ep) = h3_pair(b"h3", cfg.clone(), cfg).await;
    origin.close(0x100, "gone");
    assert_eq!(
        tokio::time::timeout(TIMEOUT, gateway.peer_origin_frame())
            .await
            .unwrap(),
        None
    );
}

/// Our endpoint (the QUIC server, the gateway in reversed mode) against raw bytes.
async fn gateway_closes_with(control: &[u8]) -> (u64, Option<Vec<String>>) {
    let (s, raw, _ep) = quic_pair(b"h3").await;
    let conn = H3Connection::new(s, H3Config::new(RequestDirection::ServerSends))
        .await
        .unwrap();
    let mut send = raw.open_uni().await.unwrap();
    send.write_all(control).await.unwrap();
    let waited = tokio::time::timeout(TIMEOUT, conn.peer_origin_frame())
        .await
        .unwrap()
        .map(|f| texts(&f));
    let closed = tokio::time::timeout(TIMEOUT, raw.closed()).await.unwrap();
    drop(send);
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => (c.error_code.into_inner(), waited),
        other => panic!("unexpected close {other:?}"),
    }
}

#[tokio::test]
async fn malformed_origin_frame_is_a_frame_error() {
    // SETTINGS (empty), then ORIGIN with an empty payload: no entries.
    let (code, got) = gateway_closes_with(&[0x00, 0x04, 0x00, 0x0c, 0x00]).await;
    assert_eq!(code, H3_FRAME_ERROR);
    assert_eq!(got, None);
    // An Origin-Len running past the payload.
    let (code, _) = gateway_closes_with(&[0x00, 0x04, 0x00, 0x0c, 0x03, 0x00, 0x09, b'h']).await;
    assert_eq!(code, H3_FRAME_ERROR);
}

#[tokio::test]
async fn origin_frame_on_a_response_stream_is_frame_unexpected() {
    // The gateway sends a request on stream 1; the raw origin answers with an ORIGIN frame
    // on that request stream (RFC 9412 §2: only on the control stream).
    let (s, raw, _ep) = quic_pair(b"h3").await;
    let gateway = H3Connection::new(s, H3Config::new(RequestDirection::ServerSends))
        .await
        .unwrap();
    let mut control = raw.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
    let sender = gateway.sender();
    tokio::spawn(async move {
        let request = Request::get("https://localhost/")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let _ = sender.send_request(request).await;
    });
    let (mut send, _recv) = tokio::time::timeout(TIMEOUT, raw.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let mut payload = vec![0x0c, 0x13, 0x00, 0x11];
    payload.extend_from_slice(b"https://a.example");
    send.write_all(&payload).await.unwrap();
    let closed = tokio::time::timeout(TIMEOUT, raw.closed()).await.unwrap();
    drop(control);
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), H3_FRAME_UNEXPECTED)
        }
        other => panic!("unexpected close {other:?}"),
    }
}

#[tokio::test]
async fn origin_frame_sent_to_an_http_server_is_frame_unexpected() {
    // Forward HTTP/3: our QUIC server is the HTTP server; a client must not send ORIGIN.
    let (s, raw, _ep) = quic_pair(b"h3").await;
    let _conn = H3Connection::new(s, H3Config::new(RequestDirection::ClientSends))
        .await
        .unwrap();
    let mut control = raw.open_uni().await.unwrap();
    let mut bytes = vec![0x00, 0x04, 0x00, 0x0c, 0x13, 0x00, 0x11];
    bytes.extend_from_slice(b"https://a.example");
    control.write_all(&bytes).await.unwrap();
    match tokio::time::timeout(TIMEOUT, raw.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), H3_FRAME_UNEXPECTED)
        }
        other => panic!("unexpected close {other:?}"),
    }
}
