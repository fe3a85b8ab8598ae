//! The stream an answered setup request hands over, over either HTTP version of a TCP
//! setup connection: what `tunnel` (PTTH setups) and `reverse` (reverse CONNECT) take
//! over once their answer is sent.

use http::Request;
use hyper_util::rt::TokioIo;

/// The stream an answered setup request hands over: hyper's upgrade after a `101` on an
/// HTTP/1.1 setup connection, or, on an HTTP/2 one (`ptth_h2::server`), the CONNECT's stream
/// as a [`ptth_h2::Tunnel`] once its `2xx` is sent (RFC 8441 §5: "the stream ... becomes a
/// tunnel"). The handlers take it from the request and stay the same for both.
pub(crate) enum Takeover {
    /// hyper's HTTP/1.1 server, `with_upgrades`.
    Upgrade(hyper::upgrade::OnUpgrade),
    /// The h2 server's CONNECT stream.
    Tunnel(ptth_h2::server::OnTunnel),
}

impl Takeover {
    /// The takeover `req`'s answer will make, taken out of its extensions.
    pub(crate) fn of<B>(req: &mut Request<B>) -> Self {
        match ptth_h2::server::on_tunnel(req) {
            Some(on) => Takeover::Tunnel(on),
            None => Takeover::Upgrade(hyper::upgrade::on(req)),
        }
    }

    /// The stream once the answer is sent, boxed. An HTTP/2 stream is boxed as the
    /// [`ptth_h2::Tunnel`] itself, so a flow's splice can tell it is one.
    pub(crate) async fn flow_io(self) -> Result<Box<dyn ptth_h3::ByteStream>, String> {
        match self {
            Takeover::Upgrade(on) => on
                .await
                .map(|io| Box::new(TokioIo::new(io)) as Box<dyn ptth_h3::ByteStream>)
                .map_err(|e| e.to_string()),
            Takeover::Tunnel(on) => on
                .await
                .map(|tunnel| Box::new(tunnel) as Box<dyn ptth_h3::ByteStream>)
                .map_err(|e| e.to_string()),
        }
    }
}
