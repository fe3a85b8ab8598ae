//! WebSocket on the public side: how a public client asks for one (RFC 6455 `Upgrade` on
//! HTTP/1.1, RFC 8441 extended CONNECT on HTTP/2, RFC 9220 extended CONNECT on HTTP/3), how
//! its acceptance is written back in that client's form, and the byte bridge between the
//! public client's tunnel and the origin's once both sides are open.
//!
//! ```text
//! public h1 GET Upgrade ──┐                         ┌─▶ rh1: GET Upgrade (key checked)
//! public h2 CONNECT ws  ──┼─▶ Proxy ─▶ Sender ──────┼─▶ rh2: CONNECT :protocol=websocket
//! public h3 CONNECT ws  ──┘     (shape per version) └─▶ rh3: CONNECT :protocol=websocket
//!      ◀── 101 (h1) / 200 (h2, h3) ──   bridge(public tunnel, origin tunnel)
//! ```
//!
//! The [`crate::sender::Sender`] alone knows the origin connection's form; this module alone
//! knows the public client's.

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::oneshot;

/// A public client's WebSocket opening handshake, as the proxy read it before stripping
/// the hop-by-hop fields ([`public_request`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct WebSocket {
    /// The `Sec-WebSocket-Key` for an origin reached over HTTP/1.1: the public client's
    /// (RFC 6455 §4.1), or one the gateway generated for a public extended CONNECT, which
    /// carries none (RFC 8441 §5).
    pub key: Option<HeaderValue>,
    /// How the public client asked, so how it is answered.
    pub public: PublicForm,
}

/// How a public client asked for a WebSocket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum PublicForm {
    /// HTTP/1.1 `GET` with `Upgrade: websocket` (RFC 6455 §4.1), answered with `101`.
    #[default]
    Upgrade,
    /// HTTP/2 or HTTP/3 extended CONNECT with `:protocol = websocket` (RFC 8441 §4,
    /// RFC 9220 §3), answered with `200`. The key above is the gateway's own, so the
    /// gateway checks an HTTP/1.1 origin's `Sec-WebSocket-Accept` itself.
    ExtendedConnect,
}

/// The `:protocol` value and `Upgrade` token of WebSocket (RFC 8441 §4, RFC 6455 §4.1).
pub(crate) const WEBSOCKET: &str = "websocket";

/// How long both sides have to become tunnels once the gateway has answered (the public
/// client reads the answer, the origin's stack hands over its stream).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Once one direction of a bridge has ended cleanly (a close handshake done, a FIN), how
/// long the other direction may still run before both are dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long a failed bridge still tries to flush what it already read to the other side.
const FLUSH_ON_ERROR: Duration = Duration::from_secs(2);

/// A tunnel's byte stream, whatever carries it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed tunnel byte stream.
pub(crate) type BoxIo = Box<dyn Io>;

/// Where the public HTTP/3 listener hands over an accepted extended CONNECT stream, put in
/// the request's extensions before the proxy sees it (hyper has no upgrade for HTTP/3).
#[derive(Clone)]
pub(crate) struct H3PublicTunnel(Arc<Mutex<Option<oneshot::Receiver<BoxIo>>>>);

impl std::fmt::Debug for H3PublicTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H3PublicTunnel")
    }
}

impl H3PublicTunnel {
    /// A slot and the sender the listener fills once its 2xx has been sent.
    pub(crate) fn new() -> (Self, oneshot::Sender<BoxIo>) {
        let (tx, rx) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(rx)))), tx)
    }

    pub(crate) fn take(&self) -> Option<oneshot::Receiver<BoxIo>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The public client's side of a tunnel, available once its answer has been sent.
pub(crate) enum PublicTunnel {
    /// HTTP/1.1: hyper's upgrade of the public connection.
    Hyper(hyper::upgrade::OnUpgrade),
    /// HTTP/2 (`ptth_h2::server`): the CONNECT's stream once its 2xx is sent.
    H2(ptth_h2::server::OnTunnel),
    /// HTTP/3: the stream the public listener hands over.
    H3(oneshot::Receiver<BoxIo>),
}

impl std::fmt::Debug for PublicTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublicTunnel::Hyper(_) => "PublicTunnel::Hyper",
            PublicTunnel::H2(_) => "PublicTunnel::H2",
            PublicTunnel::H3(_) => "PublicTunnel::H3",
        })
    }
}

impl std::fmt::Debug for OriginTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OriginTunnel::Hyper(_) => "OriginTunnel::Hyper",
            OriginTunnel::Ready(_) => "OriginTunnel::Ready",
            OriginTunnel::Missing => "OriginTunnel::Missing",
        })
    }
}

impl PublicTunnel {
    /// The tunnel-to-be of a request from a public TCP listener, taken out of its
    /// extensions: the HTTP/2 server's CONNECT stream, or else hyper's HTTP/1.1 upgrade.
    pub(crate) fn of_tcp<B>(req: &mut Request<B>) -> Self {
        match ptth_h2::server::on_tunnel(req) {
            Some(on) => PublicTunnel::H2(on),
            None => PublicTunnel::Hyper(hyper::upgrade::on(req)),
        }
    }

    pub(crate) async fn open(self) -> Result<BoxIo, String> {
        match self {
            PublicTunnel::Hyper(on) => on
                .await
                .map(|u| Box::new(hyper_util::rt::TokioIo::new(u)) as BoxIo)
                .map_err(|e| format!("the public client's upgrade did not complete: {e}")),
            PublicTunnel::H2(on) => on
                .await
                .map(|tunnel| Box::new(tunnel) as BoxIo)
                .map_err(|e| format!("the public client's HTTP/2 stream: {e}")),
            PublicTunnel::H3(rx) => rx
                .await
                .map_err(|_| "the public HTTP/3 stream closed before the tunnel opened".into()),
        }
    }
}

/// The origin's side of a tunnel, as the [`crate::sender::Sender`] hands it over.
pub(crate) enum OriginTunnel {
    /// Reversed HTTP/1.1 (after `101`) and HTTP/2 (after a 2xx to extended CONNECT).
    Hyper(hyper::upgrade::OnUpgrade),
    /// Reversed HTTP/3: the extended CONNECT stream (RFC 9220).
    Ready(BoxIo),
    /// The response carried no tunnel.
    Missing,
}

impl OriginTunnel {
    async fn open(self) -> Result<BoxIo, String> {
        match self {
            OriginTunnel::Hyper(on) => on
                .await
                .map(|u| Box::new(hyper_util::rt::TokioIo::new(u)) as BoxIo)
                .map_err(|e| format!("the origin's upgrade did not complete: {e}")),
            OriginTunnel::Ready(io) => Ok(io),
            OriginTunnel::Missing => Err("the origin's answer carried no tunnel".into()),
        }
    }
}

/// Reads a public request as a WebSocket opening handshake, in whichever form its version
/// uses, and claims the public side of the tunnel. `None`: not a WebSocket request.
pub(crate) fn public_request<B>(req: &mut Request<B>) -> Option<(WebSocket, PublicTunnel)> {
    if req.version() <= Version::HTTP_11 {
        if !is_upgrade(req.headers()) {
            return None;
        }
        let ws = WebSocket {
            key: req.headers().get(header::SEC_WEBSOCKET_KEY).cloned(),
            public: PublicForm::Upgrade,
        };
        return Some((ws, PublicTunnel::Hyper(hyper::upgrade::on(req))));
    }
    if req.method() != Method::CONNECT {
        return None;
    }
    // RFC 8441 §4 and RFC 9220 §3: the `:protocol` pseudo-header names what the stream
    // becomes; ptth_h2::server (like hyper) carries it as `hyper::ext::Protocol`, ptth-h3
    // as `ptth_h3::Protocol`.
    let tunnel = if req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str().eq_ignore_ascii_case(WEBSOCKET))
    {
        PublicTunnel::of_tcp(&mut *req)
    } else if req
        .extensions()
        .get::<ptth_h3::Protocol>()
        .is_some_and(|p| p.0.eq_ignore_ascii_case(WEBSOCKET))
    {
        PublicTunnel::H3(req.extensions().get::<H3PublicTunnel>()?.take()?)
    } else {
        return None;
    };
    // An origin reached over HTTP/1.1 needs a key (RFC 6455 §4.1); the gateway is then the
    // WebSocket client towards it and checks the accept value itself.
    let key =
        HeaderValue::from_str(&tokio_tungstenite::tungstenite::handshake::client::generate_key())
            .ok();
    let ws = WebSocket {
        key,
        public: PublicForm::ExtendedConnect,
    };
    Some((ws, tunnel))
}

fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(WEBSOCKET))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Opens both sides and copies bytes between them until they close (see [`bridge`]).
pub(crate) async fn open_and_bridge(public: PublicTunnel, origin: OriginTunnel) {
    let opened = tokio::time::timeout(OPEN_TIMEOUT, async {
        tokio::try_join!(public.open(), origin.open())
    })
    .await;
    match opened {
        Ok(Ok((public, origin))) => bridge(public, origin).await,
        Ok(Err(why)) => tracing::debug!(%why, "websocket tunnel did not open"),
        Err(_) => tracing::debug!(timeout = ?OPEN_TIMEOUT, "websocket tunnel did not open in time"),
    }
}

/// Copies bytes both ways as they arrive (nothing is held back: a read that would wait
/// flushes what was written). When one direction ends cleanly its end is passed on (FIN,
/// end of stream) and the other direction gets [`CLOSE_GRACE`] to finish; when one fails
/// (reset, connection lost) both are dropped at once, which resets the other side.
pub(crate) async fn bridge(public: BoxIo, origin: BoxIo) {
    bridge_with_grace(public, origin, CLOSE_GRACE).await;
}

async fn bridge_with_grace(public: BoxIo, origin: BoxIo, grace: Duration) {
    let (pr, pw) = tokio::io::split(public);
    let (or, ow) = tokio::io::split(origin);
    let up = pump(pr, ow);
    let down = pump(or, pw);
    tokio::pin!(up, down);
    let (first, rest) = tokio::select! {
        r = &mut up => (("public → origin", r), down.as_mut()),
        r = &mut down => (("origin → public", r), up.as_mut()),
    };
    match first.1 {
        Ok(_) => {
            if tokio::time::timeout(grace, rest).await.is_err() {
                tracing::debug!(
                    ended = first.0,
                    "websocket: the other direction did not end within the close grace"
                );
            }
        }
        Err(e) => tracing::debug!(direction = first.0, error = %e, "websocket tunnel failed"),
    }
}

async fn pump<R, W>(mut from: R, mut to: W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match tokio::io::copy(&mut from, &mut to).await {
        Ok(n) => {
            to.shutdown().await?;
            Ok(n)
        }
        Err(e) => {
            // What was already read (a close frame just before a reset) still goes out
            // before both sides are dropped.
            let _ = tokio::time::timeout(FLUSH_ON_ERROR, to.flush()).await;
            Err(e)
        }
    }
}

/// A tunnel stream that keeps something alive (the public HTTP/3 connection's exchange)
/// for as long as the stream lives.
pub(crate) struct Holding<T, G> {
    pub(crate) io: T,
    pub(crate) _guard: G,
}

impl<T: AsyncRead + Unpin, G: Unpin> AsyncRead for Holding<T, G> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Holding<T, G> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_three_public_forms_are_recognised_and_nothing_else() {
        let mut h1 = Request::get("/chat")
            .header("upgrade", "WebSocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        let (ws, tunnel) = public_request(&mut h1).unwrap();
        assert_eq!(ws.public, PublicForm::Upgrade);
        assert_eq!(ws.key.unwrap(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(matches!(tunnel, PublicTunnel::Hyper(_)));

        let mut h2 = Request::connect("https://app.example/chat")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        h2.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let (ws, tunnel) = public_request(&mut h2).unwrap();
        assert_eq!(ws.public, PublicForm::ExtendedConnect);
        // A fresh key of 16 random bytes, for an origin reached over HTTP/1.1.
        assert_eq!(ws.key.as_ref().unwrap().len(), 24);
        assert!(matches!(tunnel, PublicTunnel::Hyper(_)));

        let mut h3 = Request::connect("https://app.example/chat")
            .version(Version::HTTP_3)
            .body(())
            .unwrap();
        h3.extensions_mut()
            .insert(ptth_h3::Protocol("websocket".into()));
        // Without the listener's slot there is no tunnel to hand over.
        assert!(public_request(&mut h3).is_none());
        let (slot, _tx) = H3PublicTunnel::new();
        h3.extensions_mut().insert(slot);
        let (ws, tunnel) = public_request(&mut h3).unwrap();
        assert_eq!(ws.public, PublicForm::ExtendedConnect);
        assert!(matches!(tunnel, PublicTunnel::H3(_)));

        let mut other = Request::connect("https://app.example/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        other
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("connect-udp"));
        assert!(public_request(&mut other).is_none());
        let mut plain = Request::get("/chat").body(()).unwrap();
        assert!(public_request(&mut plain).is_none());
        // `Upgrade` is an HTTP/1.1 mechanism (RFC 9113 §8.2.2).
        let mut h2_upgrade = Request::get("/chat")
            .version(Version::HTTP_2)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(())
            .unwrap();
        assert!(public_request(&mut h2_upgrade).is_none());
    }

    #[tokio::test]
    async fn the_bridge_streams_both_ways_and_passes_a_close_on() {
        let (public, mut client) = tokio::io::duplex(1024);
        let (origin, mut server) = tokio::io::duplex(1024);
        let bridge = tokio::spawn(bridge(Box::new(public), Box::new(origin)));
        // Each message arrives before the next is sent: nothing waits for more.
        for i in 0..3u8 {
            client.write_all(&[i; 10]).await.unwrap();
            let mut got = [0u8; 10];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [i; 10]);
            server.write_all(&[i + 10; 7]).await.unwrap();
            let mut got = [0u8; 7];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, [i + 10; 7]);
        }
        // The origin ends its side: the client reads the end, ends its own, and the
        // bridge is done.
        server.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        client.shutdown().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), bridge)
            .await
            .expect("the bridge ended")
            .unwrap();
    }

    #[tokio::test]
    async fn a_side_that_never_ends_is_dropped_after_the_close_grace() {
        const GRACE: Duration = Duration::from_millis(300);
        let (public, mut client) = tokio::io::duplex(1024);
        let (origin, server) = tokio::io::duplex(1024);
        let bridge = tokio::spawn(bridge_with_grace(Box::new(public), Box::new(origin), GRACE));
        drop(server);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        // The client never ends its side; the bridge lets go after the grace.
        tokio::time::timeout(GRACE + Duration::from_secs(5), bridge)
            .await
            .expect("the bridge ended after the grace")
            .unwrap();
    }
}
