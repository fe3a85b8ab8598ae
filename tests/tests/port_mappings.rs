//! Port mappings as an operator runs them, with real processes: a gateway with TCP and UDP
//! mappings restarted beside its replacement, as `docs/operations.md` tells operators to
//! roll one (the new process must start while the old one still holds the mappings' ports,
//! the old one's open flows run on through its drain, both mappings work on the same ports
//! once the old one has exited); and a TCP mapping accepted on every worker, its flow bound
//! counting the flows of all its sockets.
//!
//! Run `cargo build --bins` first.

use anyhow::{bail, Context, Result};
use ptth_tests::services::{free_tcp_port, free_udp_port, services_origin, tcp_echo, udp_echo};
use ptth_tests::{Gateway, LogTap, TempDir};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Child;

const BOX_TOKEN: &str = "roll-box-token-3f9a0c1d";

fn origin(gw: &Gateway, udp: SocketAddr, tcp: SocketAddr) -> Result<(Child, LogTap)> {
    origin_with(gw, udp, tcp, &[], "warn")
}

fn origin_with(
    gw: &Gateway,
    udp: SocketAddr,
    tcp: SocketAddr,
    extra: &[&str],
    level: &str,
) -> Result<(Child, LogTap)> {
    let (udp, tcp) = (format!("echo={udp}"), format!("techo={tcp}"));
    let mut args = vec!["--udp-service", &udp, "--tcp-service", &tcp];
    args.extend_from_slice(extra);
    services_origin(gw, BOX_TOKEN, &args, level)
}

/// One echo of `bytes` on an open connection.
async fn echo_on(tcp: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    tcp.write_all(bytes).await?;
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut back))
        .await
        .context("no echo within 5 s")??;
    anyhow::ensure!(back == bytes, "the echo differs");
    Ok(())
}

/// A new connection through the TCP mapping echoes, within `secs` (the origin may still be
/// connecting to the gateway: a flow with no origin is closed at once, and tried again).
async fn tcp_echo_through(mapping: SocketAddr, secs: u64) -> Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let attempt = async {
            let mut tcp = TcpStream::connect(mapping).await?;
            echo_on(&mut tcp, b"ping through the mapping").await?;
            anyhow::Ok(tcp)
        };
        match attempt.await {
            Ok(tcp) => return Ok(tcp),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                bail!("no TCP echo through {mapping} within {secs} s: {e:#}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `n` new connections through the TCP mapping, one after the other, each given its time to
/// echo: how many were carried (kept in `open`) and how many were closed without a flow.
async fn try_flows(
    mapping: SocketAddr,
    n: usize,
    open: &mut Vec<TcpStream>,
) -> Result<(usize, usize)> {
    let (mut carried, mut closed) = (0, 0);
    for _ in 0..n {
        let mut conn = TcpStream::connect(mapping).await?;
        match echo_on(&mut conn, b"one more").await {
            Ok(()) => {
                carried += 1;
                open.push(conn);
            }
            Err(_) => closed += 1,
        }
    }
    Ok((carried, closed))
}

/// A datagram through the UDP mapping comes back, within `secs`.
async fn udp_echo_through(mapping: SocketAddr, secs: u64) -> Result<()> {
    let client = UdpSocket::bind("127.0.0.1:0").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 2048];
    loop {
        client.send_to(b"datagram", mapping).await?;
        match tokio::time::timeout(Duration::from_millis(300), client.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) if from == mapping && &buf[..n] == b"datagram" => return Ok(()),
            _ if tokio::time::Instant::now() >= deadline => {
                bail!("no UDP echo through {mapping} within {secs} s")
            }
            _ => {}
        }
    }
}

/// The gateway's config: grant `box` offers `echo` (UDP) and `techo` (TCP), mapped on
/// `udp_port` and `tcp_port`. Returns its path.
fn write_config(
    dir: &TempDir,
    udp_service: SocketAddr,
    tcp_service: SocketAddr,
    udp_port: u16,
    tcp_port: u16,
) -> Result<String> {
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[grant]]
name = "box"
token = "{BOX_TOKEN}"
services = ["echo=udp/{}", "techo=tcp/{}"]

[[udp]]
listen = "127.0.0.1:{udp_port}"
grant = "box"
service = "echo"

[[tcp]]
listen = "127.0.0.1:{tcp_port}"
grant = "box"
service = "techo"
"#,
            udp_service.port(),
            tcp_service.port()
        ),
    )?;
    Ok(config.to_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_with_port_mappings_rolls_beside_its_replacement() -> Result<()> {
    let dir = TempDir::new("mapping-roll");
    let (udp_service, tcp_service) = (udp_echo().await.0, tcp_echo().await);
    let (udp_port, tcp_port) = (free_udp_port(), free_tcp_port());
    let config = write_config(&dir, udp_service, tcp_service, udp_port, tcp_port)?;
    let (udp, tcp): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{udp_port}").parse()?,
        format!("127.0.0.1:{tcp_port}").parse()?,
    );
    let mut old = Gateway::start(&dir.0, &["--config", &config, "--shutdown-grace", "4"]).await?;
    let (_origin, _log) = origin(&old, udp_service, tcp_service)?;
    let mut held = tcp_echo_through(tcp, 30).await?;
    udp_echo_through(udp, 30).await?;

    // The replacement starts while the old process holds both mappings' ports.
    let (listen, tunnel) = (old.listen.to_string(), old.tunnel.to_string());
    let new = Gateway::start_on(&dir.0, &listen, &tunnel, &["--config", &config])
        .await
        .context("the replacement must start beside the gateway holding the mappings' ports")?;
    old.signal("-TERM");

    // The flow open on the old gateway runs on through its drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    echo_on(&mut held, b"still here while the old gateway drains")
        .await
        .context("a flow open on the stopping gateway")?;

    let exit = old.wait(30).await?;
    assert!(
        exit.success(),
        "the old gateway exits 0 after its drain: {exit}"
    );

    // Only the new gateway is left, on the same ports: both mappings reach the origin,
    // which has moved to it.
    tcp_echo_through(tcp, 30)
        .await
        .context("the TCP mapping through the new gateway")?;
    udp_echo_through(udp, 30)
        .await
        .context("the UDP mapping through the new gateway")?;
    drop(new);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcp_mapping_on_every_worker_keeps_one_flow_bound() -> Result<()> {
    let dir = TempDir::new("mapping-bound");
    let (udp_service, tcp_service) = (udp_echo().await.0, tcp_echo().await);
    let tcp_port = free_tcp_port();
    let config = write_config(&dir, udp_service, tcp_service, free_udp_port(), tcp_port)?;
    let tcp: SocketAddr = format!("127.0.0.1:{tcp_port}").parse()?;
    // Two workers, so two sockets accept for the mapping; the kernel spreads connections
    // over them by their addresses.
    let gw = Gateway::start(
        &dir.0,
        &[
            "--config",
            &config,
            "--threads",
            "2",
            "--max-flows-per-listener",
            "3",
        ],
    )
    .await?;
    let (_origin, _log) = origin(&gw, udp_service, tcp_service)?;
    let mut open = vec![tcp_echo_through(tcp, 30).await?];
    // Five more, one after the other, each given its time to echo: two are carried, the
    // other three are closed without a flow, whichever socket took them.
    let (carried, closed) = try_flows(tcp, 5, &mut open).await?;
    assert_eq!(
        (carried, closed),
        (2, 3),
        "--max-flows-per-listener 3 bounds the mapping's flows across its sockets"
    );
    // A flow that ends makes room for the next.
    drop(open.pop());
    tcp_echo_through(tcp, 10)
        .await
        .context("a new flow once one of the three has ended")?;
    drop(gw);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origins_channels_share_its_flows_and_its_flow_bound() -> Result<()> {
    let dir = TempDir::new("mapping-channels");
    let (udp_service, tcp_service) = (udp_echo().await.0, tcp_echo().await);
    let tcp_port = free_tcp_port();
    let config = write_config(&dir, udp_service, tcp_service, free_udp_port(), tcp_port)?;
    let tcp: SocketAddr = format!("127.0.0.1:{tcp_port}").parse()?;
    let log_file = dir.0.join("gateway.log");
    let gw = ptth_tests::start_gateway_logging(
        &dir.0,
        &["--config", &config, "--max-flows-per-origin", "4"],
        &log_file,
        "warn,ptth_gateway::tcp_listen=debug",
    )
    .await?;
    // Three control channels, each on its own connection.
    let (_origin, log) = origin_with(
        &gw,
        udp_service,
        tcp_service,
        &["--connections", "3"],
        "info",
    )?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while log.matching("reverse CONNECT control channel open").len() < 3 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the origin did not open 3 control channels: {}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut open = vec![tcp_echo_through(tcp, 30).await?];
    // Five more: three are carried (4 is the origin's bound, across its channels), two
    // are closed without a flow.
    let (carried, closed) = try_flows(tcp, 5, &mut open).await?;
    assert_eq!(
        (carried, closed),
        (3, 2),
        "--max-flows-per-origin 4 bounds the origin's flows over all its channels"
    );
    // The four flows went over all three channels: each names the address of the
    // channel's connection (`origin=`), one per connection.
    let text = std::fs::read_to_string(&log_file)?;
    let channels: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| l.contains("TCP flow open"))
        .filter_map(|l| l.split(" origin=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert_eq!(
        channels.len(),
        3,
        "the flows are spread over the origin's three channels: {channels:?}"
    );
    drop(gw);
    Ok(())
}
