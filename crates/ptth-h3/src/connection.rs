//! One HTTP/3 connection over a `quinn::Connection`, in any request direction: the
//! control and QPACK streams, SETTINGS, GOAWAY, graceful shutdown and HTTP datagrams.
//!
//! The request direction is configuration ([`RequestDirection`]), taken from the PTTH
//! mechanism; it is never inferred from which side is the QUIC client. The QUIC side only
//! decides which bidirectional stream IDs this endpoint opens (RFC 9000 §2.1).

mod body;
mod client;
mod server;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use ptth_core::{encode_varint, Dir, Mechanism, QsidMapping, Side, StreamId};
use quinn::VarInt;
use tokio::sync::{mpsc, watch};

use crate::error::{Culprit, H3Error};
use crate::frame::{
    self, wire_code, Event, Frame, FrameDecoder, ProtocolError, Settings, H3_NO_ERROR,
    H3_REQUEST_REJECTED, H3_STREAM_CREATION_ERROR,
};
use crate::qpack_streams;

pub use body::{H3Stream, Protocol, RecvBody, RequestHandle};
pub use client::SendRequest;
pub use server::{serve, ResponseSender};

/// RFC 9114 §6.2: unidirectional stream types.
const STREAM_CONTROL: u64 = 0x00;
const STREAM_PUSH: u64 = 0x01;
const STREAM_QPACK_ENCODER: u64 = 0x02;
const STREAM_QPACK_DECODER: u64 = 0x03;

/// The largest control-stream frame we buffer.
const CONTROL_FRAME_LIMIT: u64 = 16 * 1024;
/// How many frames after SETTINGS may precede the peer's ORIGIN frame before
/// [`H3Connection::peer_origin_frame`] gives up (draft-bt: "immediately").
const ORIGIN_FRAME_WINDOW: usize = 8;
/// How many received datagrams wait per request stream before new ones are dropped.
const DATAGRAM_QUEUE: usize = 64;

/// Which endpoint sends HTTP requests on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestDirection {
    /// Forward HTTP/3: the QUIC client opens client-initiated bidi request streams
    /// (0, 4, 8, …).
    ClientSends,
    /// Reversed HTTP/3 (Potato `rh3`, draft-bt `h3-reverse`): the QUIC *server* is the
    /// HTTP client and opens server-initiated bidi request streams (1, 5, 9, …).
    ServerSends,
    /// PTTH -00 `OPTIONS` mode: both endpoints send requests on their own bidi streams.
    Both,
}

impl RequestDirection {
    /// The direction of the HTTP/3 connection that carries a mechanism's reversed HTTP:
    /// `None` for mechanisms that do not run HTTP/3 on the QUIC connection the origin
    /// dialled. For `ConnectH3` this is the direction of the setup connection (the origin
    /// sends the extended CONNECT); the reversed HTTP runs inside the tunnel.
    pub fn for_mechanism(mechanism: Mechanism) -> Option<Self> {
        match mechanism {
            // Potato §4.3 and draft-bt: the gateway, the QUIC server, sends requests.
            Mechanism::Rh3 | Mechanism::H3Reverse => Some(Self::ServerSends),
            // PTTH -00: the origin sends OPTIONS, then the gateway sends requests too.
            Mechanism::OptionsH3 => Some(Self::Both),
            Mechanism::ConnectH3 => Some(Self::ClientSends),
            _ => None,
        }
    }

    /// Whether the endpoint on `side` sends requests.
    pub fn sends_requests(self, side: Side) -> bool {
        match self {
            Self::ClientSends => side == Side::Client,
            Self::ServerSends => side == Side::Server,
            Self::Both => true,
        }
    }
}

/// Configuration of one HTTP/3 connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct H3Config {
    /// Who sends requests.
    pub requests_from: RequestDirection,
    /// Our SETTINGS_MAX_FIELD_SECTION_SIZE: the largest header section we accept.
    pub max_field_section_size: u64,
    /// Send SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 and accept extended CONNECT (RFC 9220).
    pub enable_connect_protocol: bool,
    /// Send SETTINGS_H3_DATAGRAM = 1 and handle HTTP datagrams (RFC 9297). The QUIC
    /// transport must have datagrams enabled too.
    pub enable_datagrams: bool,
    /// With [`RequestDirection::Both`]: map datagrams of server-initiated request streams
    /// with the PTTH -00 2^61 offset. This breaks RFC 9297's bound, so both sides must
    /// have agreed to it out of band; without it those streams cannot carry datagrams.
    pub two_way_datagram_extension: bool,
    /// An ORIGIN frame (RFC 9412) to send right after our SETTINGS on the control stream.
    /// Only an HTTP server sends it (in reversed mode, the QUIC client): it is not sent
    /// when this endpoint does not serve requests in [`H3Config::requests_from`].
    pub origin_frame: Option<ptth_core::OriginFrame>,
    /// As an HTTP server: how long a peer's request stream may stay open without a complete
    /// HEADERS frame before it is reset with H3_REQUEST_INCOMPLETE. `None`: no limit.
    pub request_header_timeout: Option<std::time::Duration>,
}

impl H3Config {
    /// Defaults: 64 KiB header sections, no extended CONNECT, no datagrams.
    pub fn new(requests_from: RequestDirection) -> Self {
        Self {
            requests_from,
            max_field_section_size: 64 * 1024,
            enable_connect_protocol: false,
            enable_datagrams: false,
            two_way_datagram_extension: false,
            origin_frame: None,
            request_header_timeout: None,
        }
    }

    /// Sets [`H3Config::request_header_timeout`].
    pub fn request_header_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.request_header_timeout = Some(timeout);
        self
    }

    /// Sets [`H3Config::origin_frame`]: the origins this HTTP server claims (draft-bt
    /// `h3-reverse`: "the origin MUST immediately send an ORIGIN frame").
    pub fn origin_frame(mut self, frame: ptth_core::OriginFrame) -> Self {
        self.origin_frame = Some(frame);
        self
    }

    /// Sets [`H3Config::max_field_section_size`].
    pub fn max_field_section_size(mut self, size: u64) -> Self {
        self.max_field_section_size = size;
        self
    }

    /// Sets [`H3Config::enable_connect_protocol`].
    pub fn enable_connect_protocol(mut self, on: bool) -> Self {
        self.enable_connect_protocol = on;
        self
    }

    /// Sets [`H3Config::enable_datagrams`].
    pub fn enable_datagrams(mut self, on: bool) -> Self {
        self.enable_datagrams = on;
        self
    }

    /// Sets [`H3Config::two_way_datagram_extension`].
    pub fn two_way_datagram_extension(mut self, on: bool) -> Self {
        self.two_way_datagram_extension = on;
        self
    }

    fn local_settings(&self) -> Settings {
        Settings {
            qpack_max_table_capacity: 0,
            max_field_section_size: Some(self.max_field_section_size),
            qpack_blocked_streams: 0,
            enable_connect_protocol: self.enable_connect_protocol,
            h3_datagram: self.enable_datagrams,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The GOAWAY ID we sent: peer requests at or above it are refused.
    sent_goaway: Option<u64>,
    /// The GOAWAY ID we received: our requests at or above it are not processed.
    recv_goaway: Option<u64>,
    /// The ID of the next peer request stream we would accept.
    next_peer_request: Option<u64>,
    /// Set by `graceful_shutdown`: no new local requests.
    closing: bool,
    /// The error we closed the connection with.
    error: Option<H3Error>,
    peer_control: bool,
    peer_encoder: bool,
    peer_decoder: bool,
}

/// State shared by the connection handle, request handles and background tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) conn: quinn::Connection,
    pub(crate) config: H3Config,
    pub(crate) local: Side,
    state: Mutex<State>,
    peer_settings: watch::Sender<Option<Settings>>,
    /// The peer's first ORIGIN frame: `Pending` until it arrives or we give up.
    peer_origin: watch::Sender<PeerOrigin>,
    control: tokio::sync::Mutex<Option<quinn::SendStream>>,
    in_flight: watch::Sender<usize>,
    /// Each registered request stream's queue of received datagrams, and how many arrived
    /// while it was full.
    datagrams: Mutex<HashMap<u64, DatagramQueue>>,
}

/// A request stream's queue of received datagrams, and the count dropped while it was full.
type DatagramQueue = (mpsc::Sender<Bytes>, Arc<AtomicU64>);

/// What we know about the peer's ORIGIN frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerOrigin {
    /// Neither received nor given up on.
    Pending,
    /// The first ORIGIN frame received.
    Received(ptth_core::OriginFrame),
    /// The control stream ended, or [`ORIGIN_FRAME_WINDOW`] frames followed SETTINGS, first.
    Missing,
}

impl Shared {
    /// Settles the peer's ORIGIN frame, unless it is settled already (the first one wins).
    fn settle_peer_origin(&self, outcome: PeerOrigin) {
        self.peer_origin.send_if_modified(|o| {
            let pending = *o == PeerOrigin::Pending;
            if pending {
                *o = outcome;
            }
            pending
        });
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn sends_requests(&self) -> bool {
        self.config.requests_from.sends_requests(self.local)
    }

    pub(crate) fn peer_sends_requests(&self) -> bool {
        self.config
            .requests_from
            .sends_requests(peer_of(self.local))
    }

    /// Closes the connection because of a protocol violation and returns the error.
    pub(crate) fn fail(&self, err: ProtocolError) -> H3Error {
        let code = wire_code(&err);
        let reason = err.to_string();
        tracing::debug!(code, %reason, "closing HTTP/3 connection");
        let error = H3Error::Connection {
            raised_by: Culprit::Local,
            code,
            reason: reason.clone(),
        };
        // A connection that is already closed keeps the reason it closed with.
        if let Some(e) = self.conn.close_reason() {
            return self.conn_error(&e);
        }
        let mut st = self.state();
        if let Some(previous) = &st.error {
            return previous.clone();
        }
        st.error = Some(error.clone());
        drop(st);
        self.conn.close(
            VarInt::from_u64(code).unwrap_or(VarInt::MAX),
            reason.as_bytes(),
        );
        error
    }

    /// Maps a quinn connection error, remembering the code of a local close.
    pub(crate) fn conn_error(&self, e: &quinn::ConnectionError) -> H3Error {
        match e {
            quinn::ConnectionError::ApplicationClosed(close) => H3Error::Connection {
                raised_by: Culprit::Peer,
                code: close.error_code.into_inner(),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            quinn::ConnectionError::LocallyClosed => {
                self.state().error.clone().unwrap_or(H3Error::Connection {
                    raised_by: Culprit::Local,
                    code: H3_NO_ERROR,
                    reason: "closed locally".into(),
                })
            }
            other => H3Error::Transport {
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn read_error(&self, e: &quinn::ReadError) -> H3Error {
        match e {
            quinn::ReadError::Reset(code) => H3Error::Stream {
                raised_by: Culprit::Peer,
                code: code.into_inner(),
                reason: "peer reset the stream".into(),
            },
            quinn::ReadError::ConnectionLost(c) => self.conn_error(c),
            other => H3Error::Transport {
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn write_error(&self, e: &quinn::WriteError) -> H3Error {
        match e {
            quinn::WriteError::Stopped(code) => H3Error::Stream {
                raised_by: Culprit::Peer,
                code: code.into_inner(),
                reason: "peer stopped the stream".into(),
            },
            quinn::WriteError::ConnectionLost(c) => self.conn_error(c),
            other => H3Error::Transport {
                reason: other.to_string(),
            },
        }
    }

    /// Waits for the peer's SETTINGS.
    pub(crate) async fn peer_settings(&self) -> Result<Settings, H3Error> {
        let mut rx = self.peer_settings.subscribe();
        tokio::select! {
            s = rx.wait_for(Option::is_some) => match s {
                Ok(s) => Ok(s.clone().unwrap_or_default()),
                Err(_) => Err(H3Error::Transport { reason: "connection dropped".into() }),
            },
            e = self.conn.closed() => Err(self.conn_error(&e)),
        }
    }

    /// The peer's SETTINGS if they already arrived.
    pub(crate) fn peer_settings_now(&self) -> Option<Settings> {
        self.peer_settings.borrow().clone()
    }

    /// Whether new local requests may start.
    pub(crate) fn check_may_send(&self) -> Result<(), H3Error> {
        if !self.sends_requests() {
            return Err(H3Error::WrongDirection);
        }
        let st = self.state();
        if let Some(e) = &st.error {
            return Err(e.clone());
        }
        // RFC 9114 §5.2: "Once GOAWAY is sent, the server MUST reject requests sent on
        // streams with an identifier greater than or equal to the indicated stream ID"
        // and the client "MUST NOT initiate new requests on the connection".
        if st.closing || st.recv_goaway.is_some() {
            return Err(H3Error::GoingAway);
        }
        Ok(())
    }

    /// Whether a request we sent on `id` falls at or above a GOAWAY we received.
    pub(crate) fn beyond_goaway(&self, id: StreamId) -> bool {
        self.state()
            .recv_goaway
            .is_some_and(|g| id.into_inner() >= g)
    }

    /// The QSID mapping for this connection's request streams.
    pub(crate) fn datagram_mapping(&self) -> QsidMapping {
        match self.config.requests_from {
            RequestDirection::ClientSends => QsidMapping::Forward,
            RequestDirection::ServerSends => QsidMapping::Reversed,
            RequestDirection::Both if self.config.two_way_datagram_extension => {
                QsidMapping::TwoWayExtension
            }
            RequestDirection::Both => QsidMapping::Forward,
        }
    }

    /// Whether both sides sent SETTINGS_H3_DATAGRAM = 1 and QUIC datagrams are usable.
    pub(crate) fn datagrams_negotiated(&self) -> bool {
        self.config.enable_datagrams
            && self.peer_settings_now().is_some_and(|s| s.h3_datagram)
            && self.conn.max_datagram_size().is_some()
    }

    /// Registers a request stream for received datagrams: its queue, and the count of
    /// datagrams dropped because the queue was full.
    pub(crate) fn register_datagrams(
        &self,
        id: StreamId,
    ) -> Option<(mpsc::Receiver<Bytes>, Arc<AtomicU64>)> {
        if !self.config.enable_datagrams {
            return None;
        }
        let (tx, rx) = mpsc::channel(DATAGRAM_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        self.datagrams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.into_inner(), (tx, dropped.clone()));
        Some((rx, dropped))
    }

    /// The largest HTTP datagram payload for request stream `id` that fits one QUIC
    /// DATAGRAM frame now (the path's and the peer's limit, less the quarter stream ID);
    /// `None` unless datagrams were negotiated.
    pub(crate) fn max_datagram_payload(&self, id: StreamId) -> Option<usize> {
        if !self.datagrams_negotiated() {
            return None;
        }
        let mut qsid = BytesMut::with_capacity(8);
        self.datagram_mapping().write(id, &mut qsid).ok()?;
        self.conn
            .max_datagram_size()
            .map(|max| max.saturating_sub(qsid.len()))
    }

    pub(crate) fn unregister_datagrams(&self, id: StreamId) {
        self.datagrams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id.into_inner());
    }

    /// Sends an HTTP datagram for request stream `id` (RFC 9297 §2.1).
    pub(crate) fn send_datagram(&self, id: StreamId, payload: Bytes) -> Result<(), H3Error> {
        if !self.datagrams_negotiated() {
            return Err(H3Error::NotNegotiated("HTTP datagrams"));
        }
        let mut buf = BytesMut::with_capacity(payload.len() + 8);
        self.datagram_mapping()
            .write(id, &mut buf)
            .map_err(|_| H3Error::NotNegotiated("datagrams on this stream under this mapping"))?;
        buf.extend_from_slice(&payload);
        self.conn.send_datagram(buf.freeze()).map_err(|e| match e {
            quinn::SendDatagramError::ConnectionLost(c) => self.conn_error(&c),
            other => H3Error::Transport {
                reason: other.to_string(),
            },
        })
    }

    pub(crate) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }
}

/// Counts a request in flight (either role) until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn peer_of(side: Side) -> Side {
    match side {
        Side::Client => Side::Server,
        Side::Server => Side::Client,
    }
}

pub(crate) fn stream_id(id: quinn::StreamId) -> StreamId {
    // quinn's stream IDs are QUIC varints it has already validated, so always in range.
    #[allow(clippy::expect_used)]
    StreamId::try_from(u64::from(id)).expect("quinn stream IDs are at most 2^62 - 1")
}

pub(crate) type Accepted = (http::Request<RecvBody>, ResponseSender);

/// An HTTP/3 connection in either role, or both.
///
/// ```text
///            H3Connection::new(quinn::Connection, H3Config)
///                 |  opens our control stream, sends SETTINGS
///                 v
///   +-------------------------------+   background tasks:
///   | Open: requests in each        |   - peer uni streams (control, QPACK, push, unknown)
///   | direction the config allows   |   - peer bidi streams (requests, or a violation)
///   +-------------------------------+   - datagrams (if enabled)
///        | graceful_shutdown()     | GOAWAY received
///        v                         v
///   +-------------------+   +-----------------------------+
///   | Draining: GOAWAY  |   | no new local requests;       |
///   | sent, new peer    |   | ones below the ID continue   |
///   | requests refused  |   +-----------------------------+
///   +-------------------+
///        | in-flight count reaches 0
///        v
///   Closed (H3_NO_ERROR)      any violation: Closed (its code)
/// ```
#[derive(Debug)]
pub struct H3Connection {
    pub(crate) shared: Arc<Shared>,
    requests: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
}

impl H3Connection {
    /// Starts HTTP/3 on an established QUIC connection.
    pub async fn new(conn: quinn::Connection, config: H3Config) -> Result<Self, H3Error> {
        let local = match conn.side() {
            quinn::Side::Client => Side::Client,
            quinn::Side::Server => Side::Server,
        };
        let (requests_tx, requests_rx) = mpsc::channel(128);
        let shared = Arc::new(Shared {
            conn: conn.clone(),
            config,
            local,
            state: Mutex::new(State::default()),
            peer_settings: watch::Sender::new(None),
            peer_origin: watch::Sender::new(PeerOrigin::Pending),
            control: tokio::sync::Mutex::new(None),
            in_flight: watch::Sender::new(0),
            datagrams: Mutex::new(HashMap::new()),
        });

        // RFC 9114 §6.2.1: "Each side MUST initiate a single control stream at the
        // beginning of the connection and send its SETTINGS frame as the first frame on
        // this stream." draft-bt §3: "Both sides MUST send SETTINGS as soon as they can".
        let mut control = conn.open_uni().await.map_err(|e| shared.conn_error(&e))?;
        let mut buf = BytesMut::new();
        let _ = encode_varint(STREAM_CONTROL, &mut buf);
        Frame::Settings(shared.config.local_settings()).encode(&mut buf);
        // RFC 9412 §2: "The ORIGIN frame is sent from servers to clients on the server's
        // control stream." draft-bt: the origin sends it immediately, so right after SETTINGS.
        if let Some(origin) = &shared.config.origin_frame {
            if shared.peer_sends_requests() {
                Frame::Origin(origin.encode_payload()).encode(&mut buf);
            }
        }
        control
            .write_all(&buf)
            .await
            .map_err(|e| shared.write_error(&e))?;
        *shared.control.lock().await = Some(control);

        tokio::spawn(accept_uni_loop(shared.clone()));
        tokio::spawn(server::accept_bi_loop(shared.clone(), requests_tx));
        if shared.config.enable_datagrams {
            tokio::spawn(datagram_loop(shared.clone()));
        }
        Ok(Self {
            shared,
            requests: tokio::sync::Mutex::new(requests_rx),
        })
    }

    /// A cloneable handle for sending requests (fails per request if this endpoint does
    /// not send requests in the configured direction).
    pub fn sender(&self) -> SendRequest {
        SendRequest::new(self.shared.clone())
    }

    /// The next request from the peer, or `None` once the connection is closed or
    /// draining and no more requests will come.
    pub async fn accept(&self) -> Option<Accepted> {
        self.requests.lock().await.recv().await
    }

    /// Which QUIC side this endpoint is.
    pub fn quic_side(&self) -> Side {
        self.shared.local
    }

    /// The configuration.
    pub fn config(&self) -> &H3Config {
        &self.shared.config
    }

    /// The peer's SETTINGS, waiting for them if needed.
    pub async fn peer_settings(&self) -> Result<Settings, H3Error> {
        self.shared.peer_settings().await
    }

    /// The peer's SETTINGS if they have arrived, without waiting.
    pub fn peer_settings_now(&self) -> Option<Settings> {
        self.shared.peer_settings_now()
    }

    /// The peer's first ORIGIN frame (RFC 9412), waiting for it if needed.
    ///
    /// `None` if the peer's control stream or the connection ended first, or if
    /// more than a few frames followed the peer's SETTINGS without one (draft-bt asks for
    /// it immediately). A malformed ORIGIN payload closes the connection with
    /// H3_FRAME_ERROR, so it also yields `None`. Does not time out by itself.
    pub async fn peer_origin_frame(&self) -> Option<ptth_core::OriginFrame> {
        let mut rx = self.shared.peer_origin.subscribe();
        tokio::select! {
            outcome = rx.wait_for(|o| *o != PeerOrigin::Pending) => match outcome.as_deref() {
                Ok(PeerOrigin::Received(frame)) => Some(frame.clone()),
                _ => None,
            },
            _ = self.shared.conn.closed() => match &*self.shared.peer_origin.borrow() {
                PeerOrigin::Received(frame) => Some(frame.clone()),
                _ => None,
            },
        }
    }

    /// Whether HTTP datagrams can be used (both SETTINGS and the QUIC extension).
    pub fn datagrams_negotiated(&self) -> bool {
        self.shared.datagrams_negotiated()
    }

    /// The GOAWAY ID received from the peer, if any.
    pub fn peer_goaway(&self) -> Option<u64> {
        self.shared.state().recv_goaway
    }

    /// Closes the connection at once with an error code.
    pub fn close(&self, code: u64, reason: &str) {
        let error = H3Error::Connection {
            raised_by: Culprit::Local,
            code,
            reason: reason.to_owned(),
        };
        self.shared.state().error.get_or_insert(error);
        self.shared.conn.close(
            VarInt::from_u64(code).unwrap_or(VarInt::MAX),
            reason.as_bytes(),
        );
    }

    /// Waits until the connection is closed and says why.
    pub async fn closed(&self) -> H3Error {
        let e = self.shared.conn.closed().await;
        self.shared.conn_error(&e)
    }

    /// RFC 9114 §5.2 graceful shutdown: sends GOAWAY, refuses new requests, waits for
    /// requests in flight (both directions) to finish, then closes with H3_NO_ERROR.
    ///
    /// When the peer sends requests, in two steps, so a request it sent just before our
    /// GOAWAY reached it is still served rather than rejected: "An endpoint that is
    /// attempting to gracefully shut down a connection can send a GOAWAY frame with a value
    /// set to the maximum possible value (2^62-4 for servers, 2^62-1 for clients). This
    /// ensures that the peer stops creating new requests or pushes. After allowing time for
    /// any in-flight requests or pushes to arrive, the endpoint can send another GOAWAY
    /// frame indicating which requests or pushes it might accept before the end of the
    /// connection." The time allowed is `GOAWAY_SETTLE` (100 ms) or three round trips, whichever
    /// is longer.
    pub async fn graceful_shutdown(&self) {
        let shared = &self.shared;
        let first_step = shared.peer_sends_requests() && shared.state().sent_goaway.is_none();
        if first_step {
            // The largest ID of the peer's request streams (generalised from 2^62-4: the
            // peer's bidi streams are 4n, or 4n+1 when the QUIC server sends requests).
            let base = StreamId::new(peer_of(shared.local), Dir::Bi, 0)
                .map(StreamId::into_inner)
                .unwrap_or(0);
            let max = (1u64 << 62) - 4 + base;
            shared.state().sent_goaway = Some(max);
            let mut buf = BytesMut::new();
            Frame::Goaway(max).encode(&mut buf);
            if let Some(control) = shared.control.lock().await.as_mut() {
                let _ = control.write_all(&buf).await;
            }
            let settle = (shared.conn.rtt() * 3).max(GOAWAY_SETTLE);
            tokio::select! {
                _ = tokio::time::sleep(settle) => {}
                _ = shared.conn.closed() => return,
            }
        }
        let goaway = {
            let mut st = shared.state();
            st.closing = true;
            // RFC 9114 §5.2: the server sends "a client-initiated bidirectional stream
            // ID"; generalised, the ID of the first request stream of the peer's request
            // direction we will not process. An endpoint that is only an HTTP client
            // sends a push ID; we never sent MAX_PUSH_ID, so 0 allows no pushes.
            let id = if shared.peer_sends_requests() {
                st.next_peer_request.unwrap_or_else(|| {
                    StreamId::new(peer_of(shared.local), Dir::Bi, 0)
                        .map(StreamId::into_inner)
                        .unwrap_or(0)
                })
            } else {
                0
            };
            // "An endpoint MAY send multiple GOAWAY frames ... the identifier in each frame
            // MUST NOT be greater than the identifier in any previous frame."
            let id = st.sent_goaway.map_or(id, |prev| prev.min(id));
            st.sent_goaway = Some(id);
            id
        };
        let mut buf = BytesMut::new();
        Frame::Goaway(goaway).encode(&mut buf);
        if let Some(control) = shared.control.lock().await.as_mut() {
            let _ = control.write_all(&buf).await;
        }
        let mut in_flight = shared.in_flight.subscribe();
        tokio::select! {
            _ = in_flight.wait_for(|n| *n == 0) => {}
            _ = shared.conn.closed() => return,
        }
        shared.state().error.get_or_insert(H3Error::Connection {
            raised_by: Culprit::Local,
            code: H3_NO_ERROR,
            reason: "graceful shutdown".into(),
        });
        shared
            .conn
            .close(VarInt::from_u64(H3_NO_ERROR).unwrap_or(VarInt::MAX), b"");
    }
}

/// The least time between the two GOAWAY frames of a graceful shutdown: long enough for a
/// request the peer sent just before it read the first one to arrive, on a busy machine.
pub const GOAWAY_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Accepts the peer's unidirectional streams and dispatches them by type.
async fn accept_uni_loop(shared: Arc<Shared>) {
    while let Ok(recv) = shared.conn.accept_uni().await {
        tokio::spawn(handle_uni(shared.clone(), recv));
    }
}

async fn handle_uni(shared: Arc<Shared>, mut recv: quinn::RecvStream) {
    let mut buf = BytesMut::new();
    // Read the stream type varint.
    let ty = loop {
        let mut cursor = &buf[..];
        if let Ok(ty) = ptth_core::decode_varint(&mut cursor) {
            let used = buf.len() - cursor.len();
            let _ = buf.split_to(used);
            break ty;
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            // A stream that ends or is reset before its type is discarded.
            _ => return,
        }
    };
    let result = match ty {
        STREAM_CONTROL => {
            if std::mem::replace(&mut shared.state().peer_control, true) {
                // RFC 9114 §6.2.1: "Only one control stream per peer is permitted; receipt
                // of a second stream claiming to be a control stream MUST be treated as a
                // connection error of type H3_STREAM_CREATION_ERROR."
                Err(ProtocolError::StreamCreation("second control stream"))
            } else {
                let result = read_control(&shared, recv, buf).await;
                shared.settle_peer_origin(PeerOrigin::Missing);
                result
            }
        }
        STREAM_PUSH => {
            if shared.sends_requests() {
                // RFC 9114 §4.6: "A client MUST treat receipt of a push stream as a
                // connection error of type H3_ID_ERROR when no MAX_PUSH_ID frame has been
                // sent". We never send MAX_PUSH_ID.
                Err(ProtocolError::Id("push stream without MAX_PUSH_ID"))
            } else {
                // RFC 9114 §6.2.2: "A client MUST NOT [push]; a server MUST treat receipt
                // of a push stream as a connection error of type H3_STREAM_CREATION_ERROR".
                Err(ProtocolError::StreamCreation(
                    "push stream sent to an HTTP server",
                ))
            }
        }
        STREAM_QPACK_ENCODER | STREAM_QPACK_DECODER => {
            let encoder = ty == STREAM_QPACK_ENCODER;
            let seen = {
                let mut st = shared.state();
                let flag = if encoder {
                    &mut st.peer_encoder
                } else {
                    &mut st.peer_decoder
                };
                std::mem::replace(flag, true)
            };
            if seen {
                // RFC 9204 §4.2: "Receipt of a second instance of either stream type MUST
                // be treated as a connection error of type H3_STREAM_CREATION_ERROR."
                Err(ProtocolError::StreamCreation(
                    "second QPACK stream of one type",
                ))
            } else {
                read_qpack(recv, buf, encoder).await
            }
        }
        _ => {
            // RFC 9114 §6.2: "Recipients of unknown stream types MUST either abort reading
            // of the stream or discard incoming data ... If reading is aborted, the
            // recipient SHOULD use the H3_STREAM_CREATION_ERROR error code".
            let _ = recv.stop(VarInt::from_u64(H3_STREAM_CREATION_ERROR).unwrap_or(VarInt::MAX));
            Ok(())
        }
    };
    match result {
        Err(ProtocolError::ConnectionGone) | Ok(()) => {}
        Err(e) => {
            shared.fail(e);
        }
    }
}

/// RFC 9114 §6.2.1: "If either control stream is closed at any point, this MUST be
/// treated as a connection error of type H3_CLOSED_CRITICAL_STREAM."
async fn read_critical(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    what: &'static str,
) -> Result<(), ProtocolError> {
    match recv.read_chunk(64 * 1024, true).await {
        Ok(Some(chunk)) => {
            buf.extend_from_slice(&chunk.bytes);
            Ok(())
        }
        Ok(None) | Err(quinn::ReadError::Reset(_)) => {
            Err(ProtocolError::ClosedCriticalStream(what))
        }
        // The connection itself is gone: nothing left to report on it.
        Err(_) => Err(ProtocolError::ConnectionGone),
    }
}

async fn read_control(
    shared: &Arc<Shared>,
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
) -> Result<(), ProtocolError> {
    let mut decoder = FrameDecoder::new(CONTROL_FRAME_LIMIT);
    let mut first = true;
    let mut frames_after_settings = 0usize;
    loop {
        while let Some(event) = decoder.decode(&mut buf)? {
            if !first {
                frames_after_settings += 1;
                if frames_after_settings > ORIGIN_FRAME_WINDOW {
                    shared.settle_peer_origin(PeerOrigin::Missing);
                }
            }
            let ty = match &event {
                Event::Data(_) => frame::DATA,
                Event::Frame(f) => f.ty(),
            };
            // RFC 9114 §6.2.1: "If the first frame of the control stream is any other
            // frame type, this MUST be treated as a connection error of type
            // H3_MISSING_SETTINGS."
            if first && ty != frame::SETTINGS {
                return Err(ProtocolError::MissingSettings);
            }
            let unexpected = ProtocolError::UnexpectedFrame {
                ty,
                stream: "the control stream",
            };
            match event {
                Event::Frame(Frame::Settings(settings)) if first => {
                    first = false;
                    handle_settings(shared, settings)?;
                }
                // §7.2.4: "If an endpoint receives a second SETTINGS frame on the control
                // stream, the endpoint MUST respond with a connection error of type
                // H3_FRAME_UNEXPECTED."
                Event::Frame(Frame::Goaway(id)) => handle_goaway(shared, id)?,
                Event::Frame(Frame::Origin(payload)) => handle_origin(shared, &payload)?,
                Event::Frame(Frame::MaxPushId(_)) => {
                    // §7.2.7: "Receipt of a MAX_PUSH_ID frame by a client MUST be treated
                    // as a connection error of type H3_FRAME_UNEXPECTED." We never push,
                    // so an HTTP server just ignores the value.
                    if !shared.peer_sends_requests() {
                        return Err(unexpected);
                    }
                }
                Event::Frame(Frame::CancelPush(_)) => {
                    // §7.2.3: a CANCEL_PUSH for a push ID never promised (server) or above
                    // our MAX_PUSH_ID (client, which never sent one) is H3_ID_ERROR.
                    return Err(ProtocolError::Id(
                        "CANCEL_PUSH for a push that cannot exist",
                    ));
                }
                // §7.2.1, §7.2.2, §7.2.5: DATA, HEADERS and PUSH_PROMISE on the control
                // stream are H3_FRAME_UNEXPECTED; so is a second SETTINGS.
                _ => return Err(unexpected),
            }
        }
        read_critical(&mut recv, &mut buf, "control stream").await?;
    }
}

fn handle_settings(shared: &Shared, settings: Settings) -> Result<(), ProtocolError> {
    // RFC 9297 §2.1.1: "An endpoint that receives the H3_DATAGRAM SETTINGS parameter with
    // a value of 1 on a QUIC connection that did not negotiate the QUIC DATAGRAM extension
    // MUST terminate the connection with an error of type H3_SETTINGS_ERROR."
    if settings.h3_datagram && shared.conn.max_datagram_size().is_none() {
        return Err(ProtocolError::Settings(
            "H3_DATAGRAM without the QUIC DATAGRAM extension",
        ));
    }
    shared.peer_settings.send_replace(Some(settings));
    Ok(())
}

fn handle_origin(shared: &Shared, payload: &[u8]) -> Result<(), ProtocolError> {
    // RFC 9412 §2: "The ORIGIN frame is sent from servers to clients on the server's
    // control stream." We treat one received by an endpoint that sends no requests (an
    // HTTP server only) as H3_FRAME_UNEXPECTED.
    if !shared.sends_requests() {
        return Err(ProtocolError::UnexpectedFrame {
            ty: frame::ORIGIN,
            stream: "the control stream, sent to an HTTP server",
        });
    }
    // Stricter than RFC 8336 (which skips bad entries): draft-bt routes by these entries,
    // so a malformed or empty list is H3_FRAME_ERROR.
    let parsed = ptth_core::OriginFrame::parse_payload(payload).map_err(|e| {
        tracing::debug!(error = %e, "malformed ORIGIN frame");
        ProtocolError::Frame(frame::FrameError::Malformed {
            ty: frame::ORIGIN,
            what: "malformed Origin-Entry list",
        })
    })?;
    // RFC 8336 allows more ORIGIN frames (adding to the Origin Set); we act on the first.
    shared.settle_peer_origin(PeerOrigin::Received(parsed));
    Ok(())
}

fn handle_goaway(shared: &Shared, id: u64) -> Result<(), ProtocolError> {
    if shared.sends_requests() {
        // RFC 9114 §5.2: "A client MUST treat receipt of a GOAWAY frame containing a stream
        // ID of any other type as a connection error of type H3_ID_ERROR." Generalised to
        // the request direction: the ID must be a bidi stream that we open (4n+1 when the
        // QUIC server sends requests). In two-direction mode GOAWAY carries such an ID.
        let ok = StreamId::try_from(id)
            .is_ok_and(|sid| sid.dir() == Dir::Bi && sid.initiator() == shared.local);
        if !ok {
            return Err(ProtocolError::Id("GOAWAY stream ID of the wrong type"));
        }
    }
    let mut st = shared.state();
    // "Receiving a GOAWAY containing a larger identifier than previously received MUST be
    // treated as a connection error of type H3_ID_ERROR."
    if st.recv_goaway.is_some_and(|prev| id > prev) {
        return Err(ProtocolError::Id("GOAWAY identifier increased"));
    }
    st.recv_goaway = Some(id);
    Ok(())
}

async fn read_qpack(
    mut recv: quinn::RecvStream,
    mut buf: BytesMut,
    encoder: bool,
) -> Result<(), ProtocolError> {
    loop {
        if encoder {
            qpack_streams::check_encoder_stream(&mut buf)?;
        } else {
            qpack_streams::check_decoder_stream(&mut buf)?;
        }
        // RFC 9204 §4.2: "Closure of either unidirectional stream type MUST be treated as
        // a connection error of type H3_CLOSED_CRITICAL_STREAM."
        read_critical(&mut recv, &mut buf, "QPACK stream").await?;
    }
}

/// Dispatches received HTTP datagrams to their request streams (RFC 9297 §2.1).
async fn datagram_loop(shared: Arc<Shared>) {
    while let Ok(mut datagram) = shared.conn.read_datagram().await {
        let id = match shared.datagram_mapping().read(&mut datagram) {
            Ok(id) => id,
            Err(e) => {
                // RFC 9297 §2.1: a quarter stream ID above 2^60 − 1 (or one the mapping
                // cannot express) "MUST be treated as an HTTP/3 connection error of type
                // H3_DATAGRAM_ERROR".
                shared.fail(ProtocolError::Datagram(e.to_string()));
                return;
            }
        };
        let tx = shared
            .datagrams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id.into_inner())
            .cloned();
        // RFC 9297 §2.1: datagrams for a valid stream we do not (or no longer) know are
        // dropped rather than buffered indefinitely. A stream whose reader is behind loses
        // the new ones (counted, for its owner's metrics).
        if let Some((tx, dropped)) = tx {
            if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(datagram) {
                dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// Resets a request stream in both directions with one code (a stream error).
pub(crate) fn stream_error(
    send: Option<&mut quinn::SendStream>,
    recv: Option<&mut quinn::RecvStream>,
    code: u64,
) {
    let code = VarInt::from_u64(code).unwrap_or(VarInt::MAX);
    if let Some(send) = send {
        let _ = send.reset(code);
    }
    if let Some(recv) = recv {
        let _ = recv.stop(code);
    }
}

/// The code to refuse a request with after GOAWAY.
pub(crate) const REJECTED: u64 = H3_REQUEST_REJECTED;
