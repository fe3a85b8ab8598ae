//! A reverse-connect control channel (draft-rosomakho-masque-reverse-connect) driven by
//! both ends' sans-IO state machines, with every capsule encoded to bytes and decoded again
//! by the RFC 9297 capsule decoder, as it would cross a real stream.
//!
//! Run with `cargo run -p ptth-core --example reverse_connect`.

use bytes::BytesMut;
use ptth_core::{
    Capsule, CapsuleDecoder, Decoded, GatewayChannel, GatewayEvent, IpProtocol, OriginChannel,
    OriginEvent, ReverseTemplate, Service, ServicePort,
};

/// Encodes `capsule`, feeds the bytes to a decoder in two pieces, and returns what it decoded.
fn over_the_wire(capsule: &Capsule) -> Result<Capsule, Box<dyn std::error::Error>> {
    let bytes = capsule.to_bytes();
    println!("  wire: {} bytes {:02x?}", bytes.len(), &bytes[..]);
    let mut decoder = CapsuleDecoder::new(16 * 1024);
    let mut buf = BytesMut::new();
    let (first, second) = bytes.split_at(bytes.len() / 2);
    buf.extend_from_slice(first);
    assert!(
        decoder.decode(&mut buf)?.is_none(),
        "half a capsule is not a capsule"
    );
    buf.extend_from_slice(second);
    match decoder.decode(&mut buf)? {
        Some(Decoded::Capsule(decoded)) => Ok(decoded),
        other => Err(format!("expected a whole capsule, got {other:?}").into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ssh = Service::local(IpProtocol::Tcp, ServicePort::new(22).ok_or("port 0")?);
    let dns = Service::local(IpProtocol::Udp, ServicePort::new(53).ok_or("port 0")?);
    let mut gateway = GatewayChannel::new([7; 16], 16);
    let mut origin = OriginChannel::new(16);

    println!("origin -> gateway: AVAILABLE_SERVICES");
    let advertised = over_the_wire(&OriginChannel::advertise(&[ssh.clone(), dns.clone()]))?;
    let event = gateway.on_capsule(&advertised)?;
    assert_eq!(event, Some(GatewayEvent::ServicesAdvertised));
    println!("  gateway sees {:?}", gateway.advertised());

    println!("gateway -> origin: CONNECTION_REQUEST for TCP 22");
    let (id, request) = gateway.request(ssh.clone())?;
    match origin.on_capsule(&over_the_wire(&request)?)? {
        Some(OriginEvent::Requested(asked)) => {
            println!(
                "  origin asked for {:?} as request {}",
                asked.service, asked.id
            );
            assert_eq!(asked.id, id);
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }
    let service = origin.accepting(id)?;
    let accept_uri =
        ReverseTemplate::accept("https://gateway.example/.well-known/masque/accept/{request_id}/")?
            .expand_accept(id)?;
    println!("  origin accepts: connect-accept to {accept_uri}, then connects to {service:?}");
    assert_eq!(gateway.accept(id), Some(ssh));

    println!("gateway -> origin: CONNECTION_REQUEST for UDP 53, declined");
    let (id, request) = gateway.request(dns.clone())?;
    origin.on_capsule(&over_the_wire(&request)?)?;
    let decline = origin.decline(id)?;
    let event = gateway.on_capsule(&over_the_wire(&decline)?)?;
    println!("  gateway sees {event:?}");
    assert_eq!(event, Some(GatewayEvent::Declined { id, service: dns }));
    assert_eq!(gateway.outstanding(), 0);
    Ok(())
}
