//! Reversed HTTP/1.1 over an in-memory pipe: the origin dials (it holds the "client" end of
//! the pipe), sends the PTTH Upgrade setup, and then serves HTTP/1.1 on that same stream;
//! the gateway answers `101` and becomes the HTTP client.
//!
//! A real deployment puts TCP and TLS under both ends; nothing else changes.
//! Run with `cargo run -p ptth-h1 --example h1_duplex`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ptth_core::{
    upgrade_request, upgrade_response, validate_upgrade_request, ProtocolId, SetupRequestParams,
    SetupTokens,
};
use std::convert::Infallible;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(10), run()).await?
}

async fn run() -> Result<(), Error> {
    let (origin_io, gateway_io) = tokio::io::duplex(64 * 1024);
    let tokens = SetupTokens::default();

    // Gateway: an ordinary HTTP/1.1 server for the setup request. It validates it with
    // ptth-core, answers 101, and takes the upgraded stream as the HTTP client.
    let gateway = tokio::spawn(async move {
        let (upgraded_tx, upgraded_rx) = tokio::sync::oneshot::channel();
        let upgraded_tx = std::sync::Mutex::new(Some(upgraded_tx));
        let setup = service_fn(move |mut request: Request<Incoming>| {
            let tokens = SetupTokens::default();
            let accepted = validate_upgrade_request(&request, &[ProtocolId::http11()], &tokens);
            let upgrade = hyper::upgrade::on(&mut request);
            let tx = upgraded_tx.lock().ok().and_then(|mut t| t.take());
            async move {
                let response = match accepted {
                    Ok(accepted) => {
                        println!("gateway: setup for {:?} accepted", accepted.origins);
                        if let Some(tx) = tx {
                            let _ = tx.send(upgrade);
                        }
                        upgrade_response(&accepted, &tokens).map(|()| Full::new(Bytes::new()))
                    }
                    Err(rejection) => rejection.to_response().map(|s| Full::new(Bytes::from(s))),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(gateway_io), setup)
            .with_upgrades();
        tokio::spawn(conn);
        let upgraded = upgraded_rx.await?.await?;

        // The reversal: the gateway is now the HTTP/1.1 client.
        let (mut sender, conn) = ptth_h1::reversed::handshake(TokioIo::new(upgraded)).await?;
        tokio::spawn(conn);
        let body: ptth_h1::Body = Full::new(Bytes::from_static(b"ping"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let request = Request::post("/echo")
            .header("host", "app.example.net")
            .body(body)?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, Error>((status, body))
    });

    // Origin: sends the setup request and serves HTTP/1.1 on the upgraded stream.
    let params = SetupRequestParams {
        gateway_authority: "gateway.example.org".parse()?,
        origins: vec!["https://app.example.net".parse()?],
        offered: vec![ProtocolId::http11()],
        authorization: None,
    };
    let (response, upgraded) =
        ptth_h1::origin_upgrade(origin_io, upgrade_request(&params, &tokens)?).await?;
    println!("origin: gateway answered {}", response.status());
    let app = service_fn(|request: Request<Incoming>| async move {
        let path = request.uri().path().to_string();
        let body = request.into_body().collect().await?.to_bytes();
        println!("origin: serving {path} with body {body:?}");
        let answer = format!("{path} got {} bytes", body.len());
        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(answer))))
    });
    tokio::spawn(ptth_h1::reversed::serve(TokioIo::new(upgraded), app));

    let (status, body) = gateway.await??;
    println!("gateway: reversed request answered {status}: {body:?}");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"/echo got 4 bytes");
    Ok(())
}
