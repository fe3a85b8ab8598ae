//! The QUIC transport settings of a ptth tunnel, one copy for both ends: the gateway's
//! tunnel endpoint and the origin's client use [`tunnel_transport_config`], so what one end
//! assumes about the other (its stream limit, its idle timeout) is true by construction.

use std::time::Duration;

/// Concurrent bidirectional streams each end of a tunnel grants its peer. A reversed
/// HTTP/3 connection carries this many requests at once: quinn does not expose the peer's
/// MAX_STREAMS, so the gateway reads its capacity from here, which is right because the
/// origin grants the same.
pub const MAX_BIDI_STREAMS: u32 = 256;

/// A tunnel whose peer is silent this long is gone. Origins behind NAT and killed processes
/// send no CONNECTION_CLOSE, so this bounds how long a dead peer holds requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// Keeps NAT bindings and the idle timer alive on quiet tunnels.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// The transport parameters of every tunnel QUIC connection, on both ends: stream limits,
/// flow-control windows sized for bulk transfers (4 MiB per stream, 16 MiB per connection),
/// keep-alives, the idle timeout, and a datagram buffer for HTTP datagrams (RFC 9297).
pub fn tunnel_transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(16))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(quinn::VarInt::from_u32(4 * 1024 * 1024))
        .receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024))
        .send_window(16 * 1024 * 1024)
        .datagram_receive_buffer_size(Some(1024 * 1024));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t
}
