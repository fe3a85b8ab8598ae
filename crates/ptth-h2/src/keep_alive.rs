//! Keep-alive PINGs with a deadline (RFC 9113 §6.7), for the client's and the server's
//! connections alike: an origin gone without a FIN (NAT, a pulled cable) is found.

use crate::client::{ConnectionError, KeepAlive};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

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
