//! The gateway's stop signal, as the public listeners see it: one flag every accept loop
//! and public connection watches, and a count of the public connections still open, which
//! [`crate::Gateway::shutdown`] waits on before it lets its origins go.
//!
//! ```text
//! SIGTERM ─▶ Gateway::shutdown ─▶ Shutdown::signal ─▶ accept loops end (their sockets close,
//!                                                     so the kernel sends new connections to
//!                                                     the new process sharing the ports)
//!                                                   ─▶ each public connection: GOAWAY or
//!                                                     `Connection: close` (public.rs,
//!                                                     public_h3.rs)
//!            ─▶ Shutdown::until_closed ─▶ origins drained ─▶ workers stopped
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// Public connections still open, and the stop flag as one atomic read (every HTTP/1.1
/// answer asks it).
#[derive(Debug, Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
    stopping: AtomicBool,
}

/// The stopping side, held by the [`crate::Gateway`].
#[derive(Debug)]
pub(crate) struct Shutdown {
    signal: watch::Sender<bool>,
    open: Arc<Open>,
}

/// What a listener and each of its connections watch.
#[derive(Debug, Clone)]
pub(crate) struct Stopping {
    signal: watch::Receiver<bool>,
    open: Arc<Open>,
}

/// One open public connection, counted until dropped.
#[derive(Debug)]
pub(crate) struct Held(Arc<Open>);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Self {
            signal: watch::Sender::new(false),
            open: Arc::default(),
        }
    }

    /// The side the listeners watch.
    pub(crate) fn stopping(&self) -> Stopping {
        Stopping {
            signal: self.signal.subscribe(),
            open: self.open.clone(),
        }
    }

    /// Tells every listener and public connection to stop. Idempotent.
    pub(crate) fn signal(&self) {
        self.open.stopping.store(true, Ordering::Release);
        self.signal.send_replace(true);
    }

    /// Public connections still open.
    pub(crate) fn open(&self) -> usize {
        self.open.count.load(Ordering::Acquire)
    }

    /// Resolves once no public connection is open.
    pub(crate) async fn until_closed(&self) {
        loop {
            let closed = self.open.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Stopping {
    /// Resolves once the gateway is stopping (at once if it already is).
    pub(crate) async fn signalled(&self) {
        let mut signal = self.signal.clone();
        // An error means the `Shutdown` is gone: the gateway is being dropped.
        let _ = signal.wait_for(|stop| *stop).await;
    }

    /// Whether the gateway is stopping.
    pub(crate) fn is_set(&self) -> bool {
        self.open.stopping.load(Ordering::Acquire)
    }

    /// Counts one public connection until the returned guard drops.
    pub(crate) fn hold(&self) -> Held {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        Held(self.open.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_signal_reaches_every_watcher_and_the_count_follows_the_guards() {
        let shutdown = Shutdown::new();
        let stopping = shutdown.stopping();
        let (a, b) = (stopping.hold(), stopping.hold());
        assert_eq!(shutdown.open(), 2);
        assert!(!stopping.is_set());
        let waiter = {
            let stopping = stopping.clone();
            tokio::spawn(async move { stopping.signalled().await })
        };
        shutdown.signal();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("a watcher sees the signal")
            .unwrap();
        assert!(stopping.is_set());
        drop(a);
        let closed = shutdown.until_closed();
        tokio::pin!(closed);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut closed)
                .await
                .is_err(),
            "one connection is still open"
        );
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the last guard dropped");
    }
}
