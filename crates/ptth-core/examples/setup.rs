//! Validates PTTH setup requests with `ptth-core` alone: an HTTP/1.1 Upgrade, an extended
//! CONNECT, a refusal with its status, the ALPN classification and the well-known URI template.
//!
//! Run with `cargo run -p ptth-core --example setup`.

use ptth_core::{
    classify_alpn, connect_request, connect_response, expand_well_known, parse_well_known,
    upgrade_request, upgrade_response, validate_connect_request, validate_connect_response,
    validate_upgrade_request, validate_upgrade_response, ProtocolId, SerializedOrigin,
    SetupRequestParams, SetupTokens, Transport,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tokens = SetupTokens::default();
    let origins: Vec<SerializedOrigin> = vec![
        "https://app.example.net".parse()?,
        "https://api.example.net:8443".parse()?,
    ];

    // The well-known URI template (draft-kazuho-ptth-ptth-01 §3), expanded and parsed back.
    let path = expand_well_known(&origins, &tokens);
    println!("well-known path: {path}");
    let parsed = parse_well_known(&path, &tokens)?;
    assert_eq!(parsed, origins);
    println!("  parses back to {} origin(s)", parsed.len());

    // What a gateway's tunnel listener makes of the ALPN it negotiated.
    for alpn in [&b"rh2"[..], b"h2", b"http/1.1"] {
        println!(
            "ALPN {:?} over TLS: {:?}",
            String::from_utf8_lossy(alpn),
            classify_alpn(Transport::Tls, alpn)
        );
    }

    let params = SetupRequestParams {
        gateway_authority: "gateway.example.org".parse()?,
        origins: origins.clone(),
        offered: vec![ProtocolId::h2(), ProtocolId::http11()],
        authorization: Some("Bearer t0ken".parse()?),
    };

    // HTTP/1.1 Upgrade: the origin builds, the gateway validates and answers.
    let request = upgrade_request(&params, &tokens)?;
    println!("\nUpgrade request: {} {}", request.method(), request.uri());
    let accepted = validate_upgrade_request(&request, &[ProtocolId::h2()], &tokens)?;
    println!(
        "  accepted: kind {:?}, chosen {}, upgrade token {:?}",
        accepted.kind, accepted.chosen, accepted.upgrade_token
    );
    let response = upgrade_response(&accepted, &tokens);
    let chosen = validate_upgrade_response(&response, &params.offered, &tokens)?;
    println!(
        "  gateway answered {}, origin runs {chosen}",
        response.status()
    );

    // Extended CONNECT (RFC 8441 / RFC 9220) with `:protocol`.
    let (request, protocol) = connect_request(&params, &tokens)?;
    println!(
        "\nextended CONNECT: {} {} :protocol={protocol}",
        request.method(),
        request.uri()
    );
    let accepted =
        validate_connect_request(&request, Some(protocol), &[ProtocolId::http11()], &tokens)?;
    let response = connect_response(&accepted);
    let chosen = validate_connect_response(&response, &params.offered, &tokens)?;
    println!(
        "  gateway answered {}, origin runs {chosen}",
        response.status()
    );

    // A refusal: the same CONNECT with another :protocol. The one status mapping turns it
    // into the response the gateway sends: 501, the method's extension is not implemented.
    let refusal =
        validate_connect_request(&request, Some("websocket"), &[ProtocolId::h2()], &tokens)
            .expect_err("websocket is not a PTTH setup");
    let answer = refusal.to_response();
    println!(
        "\nrefused: {:?} -> {} {:?}",
        refusal.kind(),
        answer.status(),
        answer.body().trim()
    );
    assert_eq!(answer.status(), http::StatusCode::NOT_IMPLEMENTED);
    Ok(())
}
