//! Reverse CONNECT for UDP, end to end with real processes: a UDP echo service behind a
//! `ptth-origin --udp-service`, reached through a gateway UDP port mapping (`[[udp]]`),
//! datagrams in RFC 9298 payloads inside `DATAGRAM` capsules over the HTTP/2 and HTTP/1.1
//! control channels, and in QUIC DATAGRAM frames over the HTTP/3 one.
//!
//! Run `cargo build --bins` first.

use anyhow::{anyhow, bail, Context, Result};
use ptth_tests::services::{free_tcp_port, free_udp_port, services_origin, tcp_echo, udp_echo};
use ptth_tests::{Gateway, LogTap, TempDir};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Child;

const BOX_TOKEN: &str = "box-token-7a21c9e04b";

struct Setup {
    _dir: TempDir,
    gw: Gateway,
    /// The UDP mapping of service `echo`.
    udp: SocketAddr,
    /// The TCP mapping of service `techo`.
    tcp: SocketAddr,
    admin: SocketAddr,
}

/// A gateway whose grant `box` allows `echo=udp/{udp_port}` and `techo=tcp/{tcp_port}`,
/// mapped on ports picked now (started again on new ports if a parallel test took one).
async fn gateway(name: &str, udp_port: u16, tcp_port: u16, extra: &[&str]) -> Result<Setup> {
    let mut last = None;
    for _ in 0..5 {
        match gateway_once(name, udp_port, tcp_port, extra).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt")))
}

async fn gateway_once(name: &str, udp_port: u16, tcp_port: u16, extra: &[&str]) -> Result<Setup> {
    let dir = TempDir::new(name);
    let (udp, tcp, admin) = (free_udp_port(), free_tcp_port(), free_tcp_port());
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
admin = "127.0.0.1:{admin}"

[[grant]]
name = "box"
token = "{BOX_TOKEN}"
services = ["echo=udp/{udp_port}", "techo=tcp/{tcp_port}"]

[[udp]]
listen = "127.0.0.1:{udp}"
grant = "box"
service = "echo"

[[tcp]]
listen = "127.0.0.1:{tcp}"
grant = "box"
service = "techo"
"#
        ),
    )?;
    let mut args = vec!["--config", config.to_str().unwrap_or_default()];
    args.extend_from_slice(extra);
    let gw = Gateway::start(&dir.0.join("dev"), &args).await?;
    Ok(Setup {
        _dir: dir,
        gw,
        udp: format!("127.0.0.1:{udp}").parse()?,
        tcp: format!("127.0.0.1:{tcp}").parse()?,
        admin: format!("127.0.0.1:{admin}").parse()?,
    })
}

/// A services-only `ptth-origin` with the `box` token and these `--udp-service` and
/// `--tcp-service` values.
fn origin(s: &Setup, udp: &[String], tcp: &[String]) -> Result<(Child, LogTap)> {
    origin_logging(s, udp, tcp, "warn")
}

/// [`origin`] logging at `level` (unless `PTTH_TEST_LOG` says otherwise).
fn origin_logging(
    s: &Setup,
    udp: &[String],
    tcp: &[String],
    level: &str,
) -> Result<(Child, LogTap)> {
    let mut args = Vec::new();
    for u in udp {
        args.extend(["--udp-service", u.as_str()]);
    }
    for t in tcp {
        args.extend(["--tcp-service", t.as_str()]);
    }
    services_origin(&s.gw, BOX_TOKEN, &args, level)
}

/// Sends `payload` from `client` to `to` until the same bytes come back (a datagram may be
/// dropped while a flow starts); the deadline's error otherwise.
async fn round_trip(client: &UdpSocket, to: SocketAddr, payload: &[u8], secs: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; 65_535];
    loop {
        client.send_to(payload, to).await?;
        let wait = async {
            loop {
                let (n, from) = client.recv_from(&mut buf).await?;
                anyhow::ensure!(from == to, "a reply from {from}, not the mapping {to}");
                if &buf[..n] == payload {
                    return anyhow::Ok(());
                }
                // A late reply to an earlier try of this client is fine; another client's
                // bytes are not.
                anyhow::ensure!(
                    buf[..n.min(8)] == payload[..payload.len().min(8)],
                    "cross-talk: {} bytes starting {:?} arrived for a client whose datagrams start {:?}",
                    n,
                    &buf[..n.min(8)],
                    &payload[..payload.len().min(8)]
                );
            }
        };
        match tokio::time::timeout(Duration::from_millis(500), wait).await {
            Ok(r) => return r,
            Err(_) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "no echo of {} bytes through {to} within {secs} s",
                    payload.len()
                )
            }
            Err(_) => {}
        }
    }
}

/// Waits for nothing to come back to `client` for `ms`.
async fn silence(client: &UdpSocket, ms: u64) -> Result<()> {
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(Duration::from_millis(ms), client.recv_from(&mut buf)).await {
        Err(_) => Ok(()),
        Ok(r) => bail!("a reply arrived: {r:?}"),
    }
}

/// The value of a metric sample line starting with `name` in the gateway's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> Result<u64> {
    let mut tcp = TcpStream::connect(admin).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut text)).await??;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow!("no {name} in /metrics"))
}

/// A payload for client `c`, datagram `i`: 8 bytes naming both, then filler of a size
/// that varies from 0 to about 9 000 bytes.
fn payload(c: u8, i: u32) -> Vec<u8> {
    let size = match i % 7 {
        0 => 0,
        1 => 1,
        2 => 512,
        3 => 1_400,
        4 => 4_000,
        5 => 9_000,
        _ => (i as usize * 131) % 3_000,
    };
    let mut p = vec![b'C', c, 0, 0];
    p.extend_from_slice(&i.to_be_bytes());
    p.extend(std::iter::repeat_n(c ^ (i as u8), size));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_each_get_their_own_echoes_and_tcp_works_beside() -> Result<()> {
    let (service, seen) = udp_echo().await;
    let tservice = tcp_echo().await;
    // Flows are counted when they end: a short idle timeout ends them all after the test.
    let s = gateway(
        "rcu-echo",
        service.port(),
        tservice.port(),
        &["--udp-idle-timeout", "3"],
    )
    .await?;
    let (_origin, origin_log) = origin(
        &s,
        &[format!("echo=127.0.0.1:{}", service.port())],
        &[format!("techo=127.0.0.1:{}", tservice.port())],
    )?;
    // The first datagram waits for the origin's channel.
    let first = UdpSocket::bind("127.0.0.1:0").await?;
    round_trip(&first, s.udp, b"hello", 20).await?;

    const CLIENTS: u8 = 5;
    const EACH: u32 = 60;
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let to = s.udp;
        tasks.push(tokio::spawn(async move {
            let client = UdpSocket::bind("127.0.0.1:0").await?;
            for i in 0..EACH {
                round_trip(&client, to, &payload(c, i), 10).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    // One flow per client address: the service heard from 1 + CLIENTS local ports.
    assert_eq!(seen.lock().unwrap().len(), 1 + CLIENTS as usize);

    // The same origin's TCP service works on the same control channel.
    let mut tcp = TcpStream::connect(s.tcp).await?;
    tcp.write_all(b"over tcp").await?;
    let mut got = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut got)).await??;
    assert_eq!(&got, b"over tcp");

    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = metric(s.admin, "ptth_gateway_udp_flows_total{outcome=\"idle\"}").await?;
    assert_eq!(idle, 1 + u64::from(CLIENTS), "flows ended idle");
    for direction in ["to_origin", "to_client"] {
        let n = metric(
            s.admin,
            &format!("ptth_gateway_udp_datagrams_total{{direction=\"{direction}\"}}"),
        )
        .await?;
        assert!(n > u64::from(CLIENTS) * u64::from(EACH), "{direction} {n}");
    }
    assert!(origin_log
        .matching("reverse CONNECT control channel failed")
        .is_empty());
    Ok(())
}

/// A services-only `ptth-origin` offering the UDP `service` as `echo` over `transport`
/// (`--service-transport`).
fn origin_over(s: &Setup, transport: &str, service: SocketAddr) -> Result<(Child, LogTap)> {
    let echo = format!("echo=127.0.0.1:{}", service.port());
    services_origin(
        &s.gw,
        BOX_TOKEN,
        &["--service-transport", transport, "--udp-service", &echo],
        "warn",
    )
}

/// UDP flows over the HTTP/3 and HTTP/1.1 control channels (`--service-transport`): every
/// client gets exactly its echoes, whatever carries the accept stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_work_over_the_http3_and_http1_control_channels() -> Result<()> {
    let (service, seen) = udp_echo().await;
    for transport in ["h3", "h1"] {
        let s = gateway(
            &format!("rcu-{transport}"),
            service.port(),
            free_tcp_port(),
            &[],
        )
        .await?;
        let (mut origin, log) = origin_over(&s, transport, service)?;
        let before = seen.lock().unwrap().len();
        let mut tasks = Vec::new();
        for c in 0..3u8 {
            let to = s.udp;
            tasks.push(tokio::spawn(async move {
                let client = UdpSocket::bind("127.0.0.1:0").await?;
                for i in 0..20 {
                    round_trip(&client, to, &payload(c, i), 20).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await?.with_context(|| format!("over {transport}"))?;
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            before + 3,
            "{transport}: one flow per client"
        );
        assert!(
            log.matching("reverse CONNECT control channel failed")
                .is_empty(),
            "{transport}: {}",
            log.text()
        );
        let _ = origin.kill().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_udp_service_the_grant_does_not_allow_is_not_offered() -> Result<()> {
    let (service, seen) = udp_echo().await;
    // The grant allows echo on another port than the one the origin advertises.
    let s = gateway("rcu-notallowed", free_udp_port(), free_tcp_port(), &[]).await?;
    let (_origin, _log) = origin(&s, &[format!("echo=127.0.0.1:{}", service.port())], &[])?;
    s.gw.log
        .wait_for("advertised a service its grant does not allow", 20)
        .await?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    client.send_to(b"anyone?", s.udp).await?;
    silence(&client, 1_500).await?;
    s.gw.log
        .wait_for("UDP datagrams dropped: no origin offers the service", 5)
        .await?;
    assert!(
        metric(
            s.admin,
            "ptth_gateway_udp_flows_total{outcome=\"no_origin\"}"
        )
        .await?
            >= 1
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the service heard something"
    );
    Ok(())
}

#[tokio::test]
async fn an_idle_flow_is_freed_and_the_next_datagram_makes_a_new_one() -> Result<()> {
    let (service, seen) = udp_echo().await;
    let s = gateway(
        "rcu-idle",
        service.port(),
        free_tcp_port(),
        &["--udp-idle-timeout", "1"],
    )
    .await?;
    let (_origin, _log) = origin(&s, &[format!("echo=127.0.0.1:{}", service.port())], &[])?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    round_trip(&client, s.udp, b"one", 20).await?;
    round_trip(&client, s.udp, b"two", 5).await?;
    assert_eq!(seen.lock().unwrap().len(), 1, "one flow so far");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(metric(s.admin, "ptth_gateway_udp_flows_total{outcome=\"idle\"}").await? >= 1);
    round_trip(&client, s.udp, b"three", 5).await?;
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the datagram after the idle timeout came through a new flow"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_killed_mid_flow_ends_it_and_a_restarted_origin_serves_new_datagrams(
) -> Result<()> {
    let (service, seen) = udp_echo().await;
    let s = gateway("rcu-kill", service.port(), free_tcp_port(), &[]).await?;
    let spec = [format!("echo=127.0.0.1:{}", service.port())];
    let (mut first, _log) = origin(&s, &spec, &[])?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    round_trip(&client, s.udp, b"before", 20).await?;
    first.kill().await?;
    // Nothing answers while no origin is there.
    client.send_to(b"while down", s.udp).await?;
    silence(&client, 1_000).await?;
    let ended = metric(s.admin, "ptth_gateway_udp_flows_total{outcome=\"error\"}").await?
        + metric(s.admin, "ptth_gateway_udp_flows_total{outcome=\"closed\"}").await?;
    assert!(ended >= 1, "the killed origin's flow did not end");
    let (_second, _log2) = origin(&s, &spec, &[])?;
    round_trip(&client, s.udp, b"after", 20).await?;
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "a new flow after the restart"
    );
    let log = s.gw.log.text();
    assert!(!log.contains("panicked"), "{log}");
    Ok(())
}

#[tokio::test]
async fn a_stopping_gateway_ends_its_udp_flows_at_the_origin() -> Result<()> {
    let (service, _seen) = udp_echo().await;
    let mut s = gateway("rcu-stop", service.port(), free_tcp_port(), &[]).await?;
    let (_origin, origin_log) = origin_logging(
        &s,
        &[format!("echo=127.0.0.1:{}", service.port())],
        &[],
        "ptth_origin=debug",
    )?;
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    round_trip(&client, s.udp, b"hello", 20).await?;
    origin_log.wait_for("UDP flow open", 5).await?;
    assert!(origin_log.matching("UDP flow closed").is_empty());
    s.gw.signal("-TERM");
    // The flow ends at once, well before its 60 s idle timeout, and cleanly: the gateway
    // ended the stream (a gateway that just went away would reset it instead).
    let line = origin_log.wait_for("UDP flow closed", 10).await?;
    assert!(line.contains("reason=closed"), "{line}");
    s.gw.wait(40).await?;
    Ok(())
}

/// Over the HTTP/3 control channel, a flow's datagrams cross the origin's QUIC connection
/// in QUIC DATAGRAM frames (RFC 9297 §2.1), not in capsules on the accept stream; one too
/// large for a DATAGRAM frame goes as a capsule on the same flow, and its echo comes back.
/// Proved from outside by `ptth_gateway_udp_quic_datagrams_total` against
/// `ptth_gateway_udp_datagrams_total`; over HTTP/1.1 the QUIC count stays 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http3_datagrams_travel_in_quic_datagram_frames() -> Result<()> {
    let (service, _seen) = udp_echo().await;
    for transport in ["h3", "h1"] {
        // Flows are counted when they end: a short idle timeout ends them after the test.
        let s = gateway(
            &format!("rcu-quic-{transport}"),
            service.port(),
            free_tcp_port(),
            &["--udp-idle-timeout", "2"],
        )
        .await?;
        let (mut origin, log) = origin_over(&s, transport, service)?;
        const SMALL: u32 = 40;
        let client = UdpSocket::bind("127.0.0.1:0").await?;
        // Sizes 8 to about 1 000 bytes: each fits a QUIC DATAGRAM frame on loopback.
        for i in 0..SMALL {
            let mut p = vec![b'Q', 0, 0, 0];
            p.extend_from_slice(&i.to_be_bytes());
            p.extend(std::iter::repeat_n(i as u8, (i as usize * 25) % 1_000));
            round_trip(&client, s.udp, &p, 20)
                .await
                .with_context(|| format!("over {transport}"))?;
        }
        // 9 000 bytes fit no DATAGRAM frame (the QUIC packet is at most about 1 450).
        let mut big = vec![b'Q', 1, 0, 0];
        big.extend(std::iter::repeat_n(7u8, 9_000));
        round_trip(&client, s.udp, &big, 20)
            .await
            .with_context(|| format!("over {transport}, 9 000 bytes"))?;
        // Wait for the flow's idle end, when its counts reach the metrics.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while metric(s.admin, "ptth_gateway_udp_flows_total{outcome=\"idle\"}").await? < 1 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{transport}: the flow did not end idle"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        for direction in ["to_origin", "to_client"] {
            let all = metric(
                s.admin,
                &format!("ptth_gateway_udp_datagrams_total{{direction=\"{direction}\"}}"),
            )
            .await?;
            let quic = metric(
                s.admin,
                &format!("ptth_gateway_udp_quic_datagrams_total{{direction=\"{direction}\"}}"),
            )
            .await?;
            if transport == "h3" {
                // Every small datagram (and any retry of one) went in a DATAGRAM frame; the
                // big one (at least once) in a capsule.
                assert!(
                    quic >= u64::from(SMALL),
                    "{direction}: {quic} of {all} as QUIC"
                );
                assert!(
                    all > quic,
                    "{direction}: the 9 000 bytes went as QUIC? {quic} of {all}"
                );
            } else {
                assert_eq!(quic, 0, "{direction}: QUIC datagrams over HTTP/1.1");
                assert!(all > u64::from(SMALL), "{direction}: {all}");
            }
        }
        assert!(
            log.matching("reverse CONNECT control channel failed")
                .is_empty(),
            "{transport}: {}",
            log.text()
        );
        let _ = origin.kill().await;
    }
    Ok(())
}
