//! Reversed HTTP/3 (Potato `rh3`) between two quinn endpoints on loopback: the origin is the
//! QUIC client (it dials out), the gateway the QUIC server; once the handshake is done the
//! gateway sends the HTTP request on a server-initiated stream (ID 1) and the origin answers.
//!
//! The certificate is a fresh self-signed one made with rcgen.
//! Run with `cargo run -p ptth-h3 --example reversed_quic`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ptth_core::{AlpnSet, HttpVersion, Mechanism};
use ptth_h3::{serve, H3Config, H3Connection, RecvBody, RequestDirection, RequestHandle};
use std::sync::Arc;
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tokio::time::timeout(Duration::from_secs(10), run()).await?
}

/// A QUIC server (the gateway) and a QUIC client (the origin) that trusts its certificate.
fn endpoints(alpn: &[u8]) -> Result<(quinn::Endpoint, quinn::Endpoint), Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["gateway.localhost".into()])?;
    let cert_der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)?;
    server_tls.alpn_protocols = vec![alpn.to_vec()];
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
    ));
    let gateway = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert_der)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![alpn.to_vec()];
    let mut origin = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    origin.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
    )));
    Ok((gateway, origin))
}

async fn run() -> Result<(), Error> {
    // The mechanism decides the ALPN and who sends requests; the QUIC roles do not.
    let mechanism = Mechanism::Rh3;
    let alpn = AlpnSet::Potato00.token(HttpVersion::Http3);
    let direction = RequestDirection::for_mechanism(mechanism).ok_or("not an HTTP/3 mechanism")?;
    println!(
        "{mechanism}: ALPN {:?}, requests sent by {direction:?}",
        String::from_utf8_lossy(alpn)
    );
    let (gateway_ep, origin_ep) = endpoints(alpn)?;
    let gateway_addr = gateway_ep.local_addr()?;

    // The origin dials out; the gateway accepts.
    let connecting = origin_ep.connect(gateway_addr, "gateway.localhost")?;
    let (gateway_quic, origin_quic) = tokio::join!(
        async {
            let incoming = gateway_ep
                .accept()
                .await
                .ok_or("the gateway endpoint closed")?;
            Ok::<_, Error>(incoming.await?)
        },
        async { Ok::<_, Error>(connecting.await?) },
    );
    let (gateway_quic, origin_quic) = (gateway_quic?, origin_quic?);
    println!(
        "QUIC up: the gateway accepted the origin from {}",
        gateway_quic.remote_address()
    );

    let (gateway, origin) = tokio::join!(
        H3Connection::new(gateway_quic, H3Config::new(direction)),
        H3Connection::new(origin_quic, H3Config::new(direction)),
    );
    let (gateway, origin) = (gateway?, Arc::new(origin?));

    // Origin: the HTTP/3 server, although it is the QUIC client.
    let server = origin.clone();
    tokio::spawn(async move {
        let app = hyper::service::service_fn(|request: Request<RecvBody>| async move {
            let path = request.uri().path().to_string();
            let body = request.into_body().collect().await?.to_bytes();
            println!("origin: serving {path} with body {body:?}");
            let answer = format!("{path} got {} bytes", body.len());
            Ok::<_, ptth_h3::H3Error>(Response::new(Full::new(Bytes::from(answer))))
        });
        serve(&server, app).await;
    });

    // Gateway: the HTTP/3 client, although it is the QUIC server.
    let request = Request::post("https://app.example.net/echo")
        .body(Full::new(Bytes::from_static(b"ping")))?;
    let response = gateway.sender().send_request(request).await?;
    let stream = response
        .extensions()
        .get::<RequestHandle>()
        .map(|h| h.stream_id().into_inner());
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("gateway: request on QUIC stream {stream:?} answered {status}: {body:?}");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stream,
        Some(1),
        "the first server-initiated bidirectional stream"
    );
    assert_eq!(&body[..], b"/echo got 4 bytes");

    gateway.graceful_shutdown().await;
    gateway_ep.wait_idle().await;
    Ok(())
}
