//! Checks origin credentials against grants parsed from TOML: a bearer token, a client
//! certificate made with rcgen, and two refusals with the status a gateway would answer.
//!
//! `ptth-auth` does no TLS: in a gateway the certificate chain is the one the TLS layer
//! already verified (see `ptth_auth::client_verifier`); here it is handed over directly.
//! Run with `cargo run -p ptth-auth --example grants`.

use ptth_auth::{authorize, certificate_names, scopes_from_certificate, Grants, Presented};
use ptth_core::SerializedOrigin;
use rustls::pki_types::CertificateDer;

const GRANTS: &str = r#"
[[grant]]
name = "app-team"
token = "s3cret-app-token"
origins = ["https://app.example.com"]
paths = ["/api"]

[[grant]]
name = "edge-device-7"
cert-subject = "device-7"
origins = ["https://*.devices.example.com"]
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let grants = Grants::from_toml(GRANTS)?;
    println!(
        "{} grants; client certificates wanted: {}",
        grants.len(),
        grants.wants_client_certificates()
    );

    // 1. A bearer token, claiming one origin and one path prefix.
    let header = http::HeaderValue::from_static("Bearer s3cret-app-token");
    let presented = Presented {
        authorization: Some(&header),
        ..Default::default()
    };
    let matched = grants.authenticate(&presented)?;
    let names: Vec<&str> = matched.iter().map(|g| g.name.as_str()).collect();
    println!("\nbearer token: authenticated as {names:?}");
    let origins: Vec<SerializedOrigin> = vec!["https://app.example.com".parse()?];
    let scopes = authorize(&grants, &matched, &origins, &["/api/v2".to_string()])?;
    for scope in &scopes {
        println!("  may serve {scope}");
    }

    // 2. A client certificate: CN device-7, DNS name sensor.devices.example.com.
    let mut params = rcgen::CertificateParams::new(vec!["sensor.devices.example.com".into()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "device-7");
    let key = rcgen::KeyPair::generate()?;
    let leaf: CertificateDer<'static> = params.self_signed(&key)?.der().clone();
    let chain = [leaf.clone()];
    let presented = Presented {
        peer_certs: Some(&chain),
        ..Default::default()
    };
    let matched = grants.authenticate(&presented)?;
    let names: Vec<&str> = matched.iter().map(|g| g.name.as_str()).collect();
    println!("\nclient certificate: authenticated as {names:?}");
    let cert_names = certificate_names(&leaf)?;
    println!("  certificate names: {cert_names:?}");
    for scope in scopes_from_certificate(&grants, &matched, &cert_names)? {
        println!("  may serve {scope}");
    }

    // 3. Refusals: a wrong token (not authenticated), and a right token asking for a path
    //    outside its grant (authenticated, not allowed).
    let wrong = http::HeaderValue::from_static("Bearer guessed");
    let refused = grants
        .authenticate(&Presented {
            authorization: Some(&wrong),
            ..Default::default()
        })
        .expect_err("no grant has that token");
    println!("\nwrong token: {} ({refused})", refused.status());
    assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);

    let matched = grants.authenticate(&Presented {
        authorization: Some(&header),
        ..Default::default()
    })?;
    let forbidden = authorize(&grants, &matched, &origins, &["/admin".to_string()])
        .expect_err("/admin is outside /api");
    let as_auth_error = ptth_auth::AuthError::from(forbidden);
    println!(
        "path outside the grant: {} ({as_auth_error})",
        as_auth_error.status()
    );
    assert_eq!(as_auth_error.status(), http::StatusCode::FORBIDDEN);
    Ok(())
}
