//! PTTH -01 over HTTP/2 on an in-memory pipe: the origin dials (it holds the "client" end
//! of the pipe) and sends an RFC 8441 extended CONNECT with `:protocol = ptth`; the gateway
//! validates it with `ptth-core` and answers 200; on that stream's bytes the roles reverse
//! and the gateway sends a request over HTTP/2 to the origin's server.
//!
//! A real deployment puts TCP and TLS under both ends; nothing else changes.
//! Run with `cargo run -p ptth-h2 --example h2_duplex`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ptth_core::{
    connect_request, connect_response, validate_connect_request, ProtocolId, SetupRequestParams,
    SetupTokens,
};
use ptth_h2::client::{drive, handshake, KEEP_ALIVE};
use ptth_h2::reversed::serve;
use ptth_h2::{ServeOptions, Windows};
use std::convert::Infallible;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(10), run()).await?
}

async fn run() -> Result<(), Error> {
    let (origin_io, gateway_io) = tokio::io::duplex(256 * 1024);

    // Gateway: an HTTP/2 server with extended CONNECT enabled for the setup.
    let gateway = tokio::spawn(async move {
        let (stream_tx, stream_rx) = tokio::sync::oneshot::channel();
        let stream_tx = std::sync::Mutex::new(Some(stream_tx));
        let setup = service_fn(move |mut request: Request<Incoming>| {
            let tokens = SetupTokens::default();
            let protocol = request
                .extensions()
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str().to_string());
            let accepted = validate_connect_request(
                &request,
                protocol.as_deref(),
                &[ProtocolId::h2()],
                &tokens,
            );
            let stream = hyper::upgrade::on(&mut request);
            let tx = stream_tx.lock().ok().and_then(|mut t| t.take());
            async move {
                let response = match accepted {
                    Ok(accepted) => {
                        println!(
                            "gateway: CONNECT :protocol={:?} for {:?} accepted, runs {}",
                            protocol, accepted.origins, accepted.chosen
                        );
                        if let Some(tx) = tx {
                            let _ = tx.send(stream);
                        }
                        connect_response(&accepted).map(|()| Full::new(Bytes::new()))
                    }
                    Err(rejection) => rejection.to_response().map(|s| Full::new(Bytes::from(s))),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .enable_connect_protocol()
            .serve_connection(TokioIo::new(gateway_io), setup);
        tokio::spawn(conn);
        let stream = stream_rx.await?.await?;

        // The reversal: on the CONNECT stream's bytes, the gateway is the HTTP/2 client.
        let (client, conn) = handshake(TokioIo::new(stream), Windows::default()).await?;
        tokio::spawn(drive(conn, KEEP_ALIVE));
        let body: ptth_h2::Body = Full::new(Bytes::from_static(b"ping"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = Request::post("https://app.example.net/echo").body(body)?;
        let response = client.send(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Error>((status, body))
    });

    // Origin: the extended CONNECT setup, then the HTTP/2 server role on its stream.
    let tokens = SetupTokens::default();
    let params = SetupRequestParams {
        gateway_authority: "gateway.example.org".parse()?,
        origins: vec!["https://app.example.net".parse()?],
        offered: vec![ProtocolId::h2()],
        authorization: None,
    };
    let (request, protocol) = connect_request(&params, &tokens)?;
    let connected = ptth_h2::origin_connect(origin_io, request, protocol).await?;
    println!("origin: gateway answered {}", connected.response.status());
    let app = service_fn(|request: Request<Incoming>| async move {
        let path = request.uri().path().to_string();
        let body = request.into_body().collect().await?.to_bytes();
        println!("origin: serving {path} with body {body:?}");
        let answer = format!("{path} got {} bytes", body.len());
        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
    });
    tokio::spawn(serve(
        TokioIo::new(connected.stream),
        app,
        ServeOptions::default(),
    ));

    let (status, body) = gateway.await??;
    println!("gateway: reversed request answered {status}: {body:?}");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"/echo got 4 bytes");
    Ok(())
}
