//! Local TCP and UDP services for the reverse CONNECT and port-mapping tests, and the ports
//! to map them on: what sits behind a `ptth-origin --tcp-service` / `--udp-service`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// A TCP port on 127.0.0.1 nothing listens on now (another test may take it before the
/// caller binds it: callers that bind it in a child process start again on failure).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A UDP port on 127.0.0.1 nothing is bound to now (the same caveat).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A TCP echo service: every connection gets back what it sends until it closes.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A UDP echo service; it records every source address it heard from (one per flow: the
/// origin's socket for each flow has its own local port).
pub async fn udp_echo() -> (SocketAddr, Arc<Mutex<HashSet<SocketAddr>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            record.lock().unwrap().insert(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (addr, seen)
}
