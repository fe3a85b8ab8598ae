//! Keep-alive PINGs with a deadline (RFC 9113 §6.7), for the client's and the server's
//! connections alike: an origin gone without a FIN (NAT, a pulled cable) is found.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

/// How often the gateway pings the origin, and how long it waits for the answer, before
/// it takes the connection for lost (the figures hyper's client ran with).
pub const KEEP_ALIVE: KeepAlive = KeepAlive {
    interval: Duration::from_secs(20),
    timeout: Duration::from_secs(20),
};

/// Keep-alive PING timing.
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    /// Time from one answered PING (or the start) to the next PING.
    pub interval: Duration,
    /// How long a PING may go unanswered before the connection is lost.
    pub timeout: Duration,
}

/// Why a connection's driver ended with an error.
#[derive(Debug)]
pub enum ConnectionError {
    /// h2 failed the connection: an I/O error, a protocol error by either side, or the
    /// origin's GOAWAY with an error code.
    H2(h2::Error),
    /// The origin left a keep-alive PING unanswered past its deadline.
    KeepAliveTimeout(Duration),
}

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionError::H2(e) => write!(f, "HTTP/2 connection error: {e}"),
            ConnectionError::KeepAliveTimeout(t) => {
                write!(f, "the origin left a keep-alive PING unanswered for {t:?}")
            }
        }
    }
}

impl std::error::Error for ConnectionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectionError::H2(e) => Some(e),
            ConnectionError::KeepAliveTimeout(_) => None,
        }
    }
}

/// A connection's PING timer: a PING every `interval` after the last answer, the
/// connection lost when one goes unanswered for `timeout`.
pub(crate) struct Pinger {
    ping: Option<h2::PingPong>,
    /// Until the next PING, or (`awaiting`) until the unanswered one is late.
    sleep: Pin<Box<tokio::time::Sleep>>,
    awaiting: bool,
    keep_alive: KeepAlive,
}

impl Pinger {
    /// The timer on h2's PING handle (`None` when h2 gave none: no keep-alive then).
    pub(crate) fn new(ping: Option<h2::PingPong>, keep_alive: KeepAlive) -> Self {
        Self {
            ping,
            sleep: Box::pin(tokio::time::sleep(keep_alive.interval)),
            awaiting: false,
            keep_alive,
        }
    }

    /// Whether a PING is out and unanswered.
    pub(crate) fn awaiting(&self) -> bool {
        self.awaiting
    }

    /// `Ready` with the error when a PING went unanswered past its deadline; otherwise
    /// sends the PINGs that are due and waits.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ConnectionError> {
        let Some(ping) = self.ping.as_mut() else {
            return Poll::Pending;
        };
        loop {
            if self.awaiting {
                match ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting = false;
                        let next = tokio::time::Instant::now() + self.keep_alive.interval;
                        self.sleep.as_mut().reset(next);
                    }
                    // The connection's own poll reports why.
                    Poll::Ready(Err(_)) => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            ready!(self.sleep.as_mut().poll(cx));
            if self.awaiting {
                return Poll::Ready(ConnectionError::KeepAliveTimeout(self.keep_alive.timeout));
            }
            if ping.send_ping(h2::Ping::opaque()).is_err() {
                // h2 refuses a PING only on a connection that is failing: its poll says how.
                return Poll::Pending;
            }
            self.awaiting = true;
            let late = tokio::time::Instant::now() + self.keep_alive.timeout;
            self.sleep.as_mut().reset(late);
        }
    }
}
