//! The gateway's workers: one OS thread per worker, each running its own current-thread tokio
//! runtime, so a connection and every task it spawns stay on the thread that accepted it.
//!
//! Each worker accepts on its own `SO_REUSEPORT` socket of every TCP listener
//! ([`Workers::listen_each`]): the kernel spreads new connections, public and origin, over
//! the workers by their address and port, and nothing moves a connection afterwards. An
//! origin connection's driver runs on the worker that accepted it, and among equally loaded
//! connections the router prefers one on the request's own worker ([`current`], read by
//! the registry), so when load allows a request crosses no thread. Each QUIC endpoint keeps one UDP socket, read
//! on one worker, and its connections are spread over the workers ([`RoundRobin`] for the
//! public HTTP/3 endpoint; every worker accepting from the tunnel's); `docs/performance.md`
//! says why the sockets are not split.
//!
//! A worker's runtime is dropped by its own thread, outside any async context, when the
//! [`Workers`] are stopped or dropped.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;

thread_local! {
    /// The number of the worker this thread runs, if it is a worker thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker the calling thread belongs to, or `None` outside the workers (the binary's
/// signal thread, a library caller's own runtime, unit tests).
pub(crate) fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// The accept queue of each listening socket, as `TcpListener::bind` had it (mio uses the
/// standard library's value).
const BACKLOG: u32 = 128;

/// How long a stopping worker waits for blocking work its runtime still runs (the gateway
/// spawns none; this only bounds the shutdown).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// One worker: its runtime's handle, and what stops and joins its thread.
#[derive(Debug)]
struct Worker {
    handle: Handle,
    /// Dropping (or sending on) this ends the worker's `block_on`; its thread then drops
    /// the runtime, which cancels every task on it.
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The running workers.
#[derive(Debug)]
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts `n` workers (at least one) and returns once each runtime is running.
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let mut this = Self {
            workers: Vec::with_capacity(n.max(1)),
        };
        for k in 0..n.max(1) {
            // On an error, `this` drops here and stops the workers already started.
            this.workers.push(Worker::start(k)?);
        }
        Ok(this)
    }

    /// How many workers run.
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// The runtime of worker `k` (`k` below [`Workers::len`]; larger numbers wrap around).
    pub(crate) fn handle(&self, k: usize) -> &Handle {
        &self.workers[k % self.workers.len()].handle
    }

    /// Where new origin connections go ([`Placement`]).
    pub(crate) fn placement(&self) -> Placement {
        Placement {
            handles: self.workers.iter().map(|w| w.handle.clone()).collect(),
            in_setup: self.workers.iter().map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// A spawner that hands each task to the next worker in turn.
    pub(crate) fn round_robin(&self) -> RoundRobin {
        RoundRobin {
            handles: self.workers.iter().map(|w| w.handle.clone()).collect(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Binds one listening socket on `addr` per worker, each registered with its worker's
    /// runtime, all sharing the port with `SO_REUSEPORT`. With port 0 the first socket
    /// picks the port and the others bind to it. Returns the listeners in worker order (only
    /// the first worker's where the platform cannot share a port).
    ///
    /// A named port another gateway process of the same user already listens on is joined,
    /// not refused: that is how a new gateway starts beside the one it replaces (the kernel
    /// spreads new connections over both until the old one closes its sockets on SIGTERM;
    /// `docs/operations.md`). Linux lets only sockets of the same effective user join a
    /// port, and a port held by a socket without `SO_REUSEPORT` (any other program) is still
    /// refused.
    pub(crate) fn listen_each(&self, addr: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
        let mut addr = addr;
        let sockets = if REUSEPORT { self.workers.len() } else { 1 };
        let mut listeners = Vec::with_capacity(sockets);
        for worker in self.workers.iter().take(sockets) {
            let _on_worker = worker.handle.enter();
            let socket = new_socket(addr)?;
            // As `TcpListener::bind` does: a restarted gateway rebinds at once.
            socket.set_reuseaddr(true)?;
            share_port(&socket)?;
            socket.bind(addr)?;
            let listener = socket.listen(BACKLOG)?;
            addr = listener.local_addr()?;
            listeners.push(listener);
        }
        Ok(listeners)
    }

    /// Stops every worker: its runtime is dropped by its own thread, which ends every
    /// connection and task on it. Returns at once; dropping the `Workers` waits for the
    /// threads.
    pub(crate) fn stop(&self) {
        for worker in &self.workers {
            worker.stop.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
}

/// Spreads tasks over the workers, one after the other: for the connections of a QUIC
/// endpoint, which all arrive on the one worker that reads its socket.
#[derive(Debug, Clone)]
pub(crate) struct RoundRobin {
    handles: Arc<[Handle]>,
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    /// Runs `task` on the next worker. On a stopped worker it never runs.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len().max(1);
        if let Some(handle) = self.handles.get(k) {
            handle.spawn(task);
        }
    }
}

/// Puts each new origin connection on the worker that holds the fewest: the registered
/// ones (the registry counts them) and those still in setup (counted here while their
/// [`Placed`] lives, which for a setup connection is its whole life). A tie goes to the
/// worker that accepted it, then to the lowest number. Left to the kernel's hash of
/// addresses and ports, an origin's two connections landed on one worker in 8 of 12 trials
/// (`docs/performance.md`, finding 6), and every request accepted on the other worker then
/// crossed threads.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    handles: Arc<[Handle]>,
    in_setup: Arc<[AtomicUsize]>,
}

impl Placement {
    /// Chooses the worker for a connection just accepted, given the registered origin
    /// connections per worker (`registered[k]`, missing entries counting zero).
    pub(crate) fn place(&self, registered: &[usize]) -> Placed {
        let here = current();
        let held = |k: usize| {
            registered.get(k).copied().unwrap_or(0) + self.in_setup[k].load(Ordering::Relaxed)
        };
        let mut best = here.filter(|&k| k < self.handles.len()).unwrap_or(0);
        for k in 0..self.handles.len() {
            if held(k) < held(best) {
                best = k;
            }
        }
        self.in_setup[best].fetch_add(1, Ordering::Relaxed);
        Placed {
            worker: best,
            home: (here != Some(best)).then(|| self.handles[best].clone()),
            in_setup: self.in_setup.clone(),
        }
    }
}

/// A connection's place among the workers, counted as in setup until dropped.
#[derive(Debug)]
pub(crate) struct Placed {
    worker: usize,
    /// The chosen worker's runtime, when it is not the caller's.
    home: Option<Handle>,
    in_setup: Arc<[AtomicUsize]>,
}

impl Placed {
    /// The chosen worker.
    #[cfg(test)]
    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// Runs `task` on the chosen worker (here, when that is the caller's), handing it this
    /// place to hold. On a stopped worker it never runs.
    pub(crate) fn spawn<F, Fut>(self, task: F)
    where
        F: FnOnce(Placed) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.home.clone() {
            Some(home) => drop(home.spawn(async move { task(self).await })),
            None => drop(tokio::spawn(task(self))),
        }
    }

    /// Runs `run` with `tcp` and this place on the chosen worker: the socket leaves the
    /// caller's reactor for that worker's ([`spawn_with_socket`]).
    pub(crate) fn spawn_with_socket<F, Fut>(self, tcp: TcpStream, run: F)
    where
        F: FnOnce(TcpStream, Placed) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        match self.home.clone() {
            Some(home) => spawn_with_socket(&home, tcp, move |tcp| run(tcp, self)),
            None => drop(tokio::spawn(run(tcp, self))),
        }
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.in_setup[self.worker].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs `run` with `tcp` on the worker whose runtime is `home`: the socket leaves the
/// caller's reactor (`into_std`) and joins that one's (`from_std` there), so its reads
/// and writes wake that worker. A socket that cannot move is closed (logged at debug).
pub(crate) fn spawn_with_socket<F, Fut>(home: &Handle, tcp: TcpStream, run: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tcp = match tcp.into_std() {
        Ok(tcp) => tcp,
        Err(e) => {
            tracing::debug!(error = %e, "a socket could not leave its worker; closed");
            return;
        }
    };
    // A stopped worker never runs it: the socket then closes with the task.
    home.spawn(async move {
        match TcpStream::from_std(tcp) {
            Ok(tcp) => run(tcp).await,
            Err(e) => tracing::debug!(error = %e, "a socket could not join its worker; closed"),
        }
    });
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
        let me = std::thread::current().id();
        for worker in &mut self.workers {
            let Some(thread) = worker.thread.take() else {
                continue;
            };
            // A worker cannot wait for itself (the handle was dropped on a worker thread):
            // its runtime still ends once this task returns.
            if thread.thread().id() == me {
                continue;
            }
            if thread.join().is_err() {
                tracing::error!("a gateway worker thread panicked");
            }
        }
    }
}

impl Worker {
    fn start(k: usize) -> std::io::Result<Self> {
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(format!("ptth-worker-{k}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                CURRENT.with(|c| c.set(Some(k)));
                let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                if started_tx
                    .send(Ok((runtime.handle().clone(), stop_tx)))
                    .is_err()
                {
                    return;
                }
                // Drives every task spawned on this runtime until told to stop (or until
                // the `Workers` are gone, which drops the sender).
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
                // Here, outside any async context, this thread drops its own runtime.
                runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
            })?;
        match started_rx.recv() {
            Ok(Ok((handle, stop))) => Ok(Self {
                handle,
                stop: Mutex::new(Some(stop)),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(std::io::Error::other(format!(
                    "gateway worker {k} ended before its runtime started"
                )))
            }
        }
    }
}

/// Whether this platform lets several sockets share a listening port (`SO_REUSEPORT`, with
/// the kernel spreading connections over them). Where it does not, the first worker alone
/// accepts on each listener.
const REUSEPORT: bool = cfg!(all(
    unix,
    not(any(
        target_os = "solaris",
        target_os = "illumos",
        target_os = "cygwin",
        target_os = "nuttx"
    ))
));

#[cfg(all(
    unix,
    not(any(
        target_os = "solaris",
        target_os = "illumos",
        target_os = "cygwin",
        target_os = "nuttx"
    ))
))]
fn share_port(socket: &TcpSocket) -> std::io::Result<()> {
    socket.set_reuseport(true)
}

#[cfg(not(all(
    unix,
    not(any(
        target_os = "solaris",
        target_os = "illumos",
        target_os = "cygwin",
        target_os = "nuttx"
    ))
)))]
fn share_port(_socket: &TcpSocket) -> std::io::Result<()> {
    Ok(())
}

fn new_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_robin_hands_tasks_to_each_worker_in_turn() {
        let workers = Workers::start(3).unwrap();
        let spread = workers.round_robin();
        let mut ran_on = Vec::new();
        for _ in 0..6 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            spread.spawn(async move {
                let _ = tx.send(current());
            });
            ran_on.push(rx.await.unwrap());
        }
        let expected: Vec<_> = [0, 1, 2, 0, 1, 2].into_iter().map(Some).collect();
        assert_eq!(ran_on, expected);
    }

    /// Calls `place` from a task on worker `k`, as that worker's tunnel listener would.
    async fn place_from(
        workers: &Workers,
        placement: &Placement,
        k: usize,
        registered: Vec<usize>,
    ) -> Placed {
        let placement = placement.clone();
        workers
            .handle(k)
            .spawn(async move { placement.place(&registered) })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_new_origin_connection_goes_to_the_worker_holding_the_fewest() {
        let workers = Workers::start(3).unwrap();
        let placement = workers.placement();
        // All even: the accepting worker keeps it.
        let a = place_from(&workers, &placement, 1, vec![]).await;
        assert_eq!(a.worker(), 1);
        // Worker 1 now holds one in setup: the next goes to the lowest-numbered of the
        // others, whoever accepted it.
        let b = place_from(&workers, &placement, 1, vec![]).await;
        assert_eq!(b.worker(), 0);
        let c = place_from(&workers, &placement, 0, vec![]).await;
        assert_eq!(c.worker(), 2);
        // Registered connections count as well as those in setup.
        let d = place_from(&workers, &placement, 0, vec![1, 0, 0]).await;
        assert_eq!(
            d.worker(),
            1,
            "worker 0 holds two, workers 1 and 2 one each: of those tied, the lowest"
        );
        drop((a, b, c, d));
        // Dropped, a place no longer counts.
        let e = place_from(&workers, &placement, 2, vec![0, 0, 0]).await;
        assert_eq!(e.worker(), 2);
        let f = place_from(&workers, &placement, 2, vec![0, 5, 0]).await;
        assert_eq!(f.worker(), 0);
    }

    #[tokio::test]
    async fn a_placed_socket_is_served_on_its_worker() {
        let workers = Workers::start(2).unwrap();
        let placement = workers.placement();
        let listener = {
            let _on = workers.handle(0).enter();
            TcpListener::bind("127.0.0.1:0").await.unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let (ran_on_tx, ran_on_rx) = tokio::sync::oneshot::channel();
        workers.handle(0).spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // Worker 0 already holds two: the connection goes to worker 1.
            let placed = placement.place(&[2, 0]);
            placed.spawn_with_socket(tcp, move |mut tcp, placed| async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut got = [0u8; 5];
                tcp.read_exact(&mut got).await.unwrap();
                tcp.write_all(&got).await.unwrap();
                let _ = ran_on_tx.send((current(), placed.worker()));
            });
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        c.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"hello");
        assert_eq!(ran_on_rx.await.unwrap(), (Some(1), 1));
    }

    #[tokio::test]
    async fn each_worker_accepts_on_its_own_socket_of_one_port_and_stops() {
        let workers = Workers::start(2).unwrap();
        let listeners = workers.listen_each("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(listeners.len(), 2);
        let addr = listeners[0].local_addr().unwrap();
        assert_eq!(listeners[1].local_addr().unwrap(), addr);
        // Every socket is served by its own worker: each accepted connection is answered
        // with the number of the worker that accepted it.
        for (k, l) in listeners.into_iter().enumerate() {
            workers.handle(k).spawn(async move {
                while let Ok((mut tcp, _)) = l.accept().await {
                    use tokio::io::AsyncWriteExt;
                    let k = current().map_or(u8::MAX, |k| k as u8);
                    let _ = tcp.write_all(&[k]).await;
                }
            });
        }
        let mut seen = [false; 2];
        for _ in 0..200 {
            use tokio::io::AsyncReadExt;
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut k = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut k))
                .await
                .expect("every accepting socket is served")
                .unwrap();
            seen[usize::from(k[0])] = true;
            if seen == [true, true] {
                break;
            }
        }
        assert_eq!(seen, [true, true], "connections reach both workers");
        // A second set of workers (a new gateway process started beside this one) joins
        // the named port; a port held by a socket without SO_REUSEPORT is refused.
        let beside = Workers::start(1).unwrap();
        let joined = beside.listen_each(addr).unwrap();
        assert_eq!(joined[0].local_addr().unwrap(), addr);
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = beside.listen_each(plain.local_addr().unwrap()).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse, "{taken}");
        drop(joined);
        drop(beside);
        drop(workers);
        // Stopped: the runtimes, their listeners with them, are gone.
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(
            refused.is_err(),
            "nothing listens after the workers stopped"
        );
    }
}
