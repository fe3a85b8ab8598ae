//! Interop with hyperium's h3 (0.0.8, over h3-quinn 0.0.10) in forward mode, both
//! pairings, with request and response bodies and trailers.

use std::future::poll_fn;

use bytes::Buf;

use super::*;

#[tokio::test]
async fn our_client_to_hyperium_server() {
    let (s, c, _ep) = quic_pair(b"h3").await;
    tokio::spawn(async move {
        let mut server: h3::server::Connection<h3_quinn::Connection, Bytes> = h3::server::builder()
            .build(h3_quinn::Connection::new(s))
            .await
            .unwrap();
        while let Ok(Some(resolver)) = server.accept().await {
            tokio::spawn(async move {
                let (request, mut stream) = resolver.resolve_request().await.unwrap();
                let mut body = Vec::new();
                while let Some(mut chunk) = stream.recv_data().await.unwrap() {
                    body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
                }
                let mut trailers = stream.recv_trailers().await.unwrap().unwrap_or_default();
                trailers.insert("x-server", HeaderValue::from_static("hyperium"));
                let response = Response::builder()
                    .header("x-path", request.uri().path())
                    .header("x-method", request.method().as_str())
                    .body(())
                    .unwrap();
                stream.send_response(response).await.unwrap();
                stream.send_data(Bytes::from(body)).await.unwrap();
                stream.send_trailers(trailers).await.unwrap();
                let _ = stream.finish().await;
            });
        }
    });
    let client = H3Connection::new(c, H3Config::new(RequestDirection::ClientSends))
        .await
        .unwrap();
    for i in 0..3 {
        let body = TestBody::new(&[b"interop ", b"body"], Some(trailers("x-client", "ptth")));
        let (resp, data, trailers) =
            tokio::time::timeout(TIMEOUT, post(&client, &format!("/in/{i}"), body))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "x-path"), format!("/in/{i}"));
        assert_eq!(header(&resp, "x-method"), "POST");
        assert_eq!(&data[..], b"interop body");
        let trailers = trailers.unwrap();
        assert_eq!(trailers["x-client"], "ptth");
        assert_eq!(trailers["x-server"], "hyperium");
    }
    // A GET without a body.
    let response = client
        .sender()
        .send_request(
            Request::get("https://localhost/get")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["x-method"], "GET");
}

#[tokio::test]
async fn hyperium_client_to_our_server() {
    let (s, c, _ep) = quic_pair(b"h3").await;
    let server = Arc::new(
        H3Connection::new(s, H3Config::new(RequestDirection::ClientSends))
            .await
            .unwrap(),
    );
    let srv = server.clone();
    tokio::spawn(async move { serve(&srv, hyper::service::service_fn(echo)).await });

    let (mut driver, mut send_request) =
        h3::client::new(h3_quinn::Connection::new(c)).await.unwrap();
    tokio::spawn(async move { poll_fn(|cx| driver.poll_close(cx)).await });
    for i in 0..3 {
        let request = Request::post(format!("https://localhost/from-hyperium/{i}"))
            .body(())
            .unwrap();
        let mut stream = send_request.send_request(request).await.unwrap();
        stream
            .send_data(Bytes::from_static(b"hello "))
            .await
            .unwrap();
        stream.send_data(Bytes::from_static(b"ptth")).await.unwrap();
        stream
            .send_trailers(trailers("x-client", "hyperium"))
            .await
            .unwrap();
        stream.finish().await.unwrap();
        let response = tokio::time::timeout(TIMEOUT, stream.recv_response())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["x-path"],
            format!("/from-hyperium/{i}").as_str()
        );
        // Our stream IDs are the client-bidi ones hyperium opened.
        assert_eq!(
            response.headers()["x-stream-id"],
            (4 * i).to_string().as_str()
        );
        let mut body = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.unwrap() {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        assert_eq!(&body[..], b"hello ptth");
        let trailers = stream.recv_trailers().await.unwrap().unwrap();
        assert_eq!(trailers["x-client"], "hyperium");
        assert_eq!(trailers["x-server"], "done");
    }
}
