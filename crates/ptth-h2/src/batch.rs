//! A connection's writes held while its driver works, and written together at the end of
//! the turn.
//!
//! h2 hands a DATA frame's payload to the IO without copying it when it is longer than 256
//! octets, and then cannot buffer another frame until that payload is written: it flushes
//! the IO once per such frame. Over TLS that is a record and a system call per response, even
//! when the driver answered a dozen requests in one turn (`docs/performance.md`, finding 2:
//! the origin made one `writev` per response at 64 concurrent requests on one connection).
//! [`WriteBatch`] copies small writes into a buffer of its own and, while the driver's turn
//! holds it, answers h2's flushes without writing; at the end of the turn
//! [`crate::server::Server`] releases it ([`Release::poll_release`]), and everything the
//! turn produced goes out in one write.
//!
//! Bounds: at most [`BATCH`] octets are held; a write that would pass it first writes what is
//! held, and a write of [`PASS`] octets or more goes straight through (after what is held),
//! so bulk transfers are not copied. Outside a turn a flush writes everything, so anything
//! that drives h2 outside the driver's turn (its handshake) behaves as without the buffer.
//! Shutting down always writes what is held first.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most octets held before a write goes out regardless.
pub(crate) const BATCH: usize = 64 * 1024;
/// Writes this long are not copied: what is held is written, then they go straight through.
pub(crate) const PASS: usize = 16 * 1024;
/// The buffer's capacity kept between turns; a larger one is given back once written, so
/// an idle connection holds at most this much.
const KEEP: usize = 16 * 1024;

/// The IO and what is held for it, shared by the [`WriteBatch`] inside h2's connection and
/// the driver's [`Release`]: both are used from the connection's one task, never at once,
/// so the lock is never contended.
#[derive(Debug)]
struct Batch<IO> {
    io: IO,
    buf: Vec<u8>,
    /// How much of `buf` is written already.
    written: usize,
    /// Flushes are held (the driver's turn is on).
    hold: bool,
    /// A write failed while the driver released the batch: h2's next call to the IO gets it.
    failed: Option<io::ErrorKind>,
    /// Octets went to `io` since its last completed flush. A TLS stream takes a write whose
    /// records the socket could not take yet and sends them on its next flush, so the
    /// release flushes whenever anything was written, not only when something was held.
    unflushed: bool,
}

fn lock<IO>(batch: &Mutex<Batch<IO>>) -> MutexGuard<'_, Batch<IO>> {
    batch.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wraps `io`: h2 gets the [`WriteBatch`], the driver the [`Release`].
pub(crate) fn new<IO>(io: IO) -> (WriteBatch<IO>, Release<IO>) {
    let batch = Arc::new(Mutex::new(Batch {
        io,
        buf: Vec::new(),
        written: 0,
        hold: false,
        failed: None,
        unflushed: false,
    }));
    (WriteBatch(batch.clone()), Release(batch))
}

/// An IO whose small writes are copied into a buffer, and written when a flush finds the
/// hold off, when the driver releases them, when the buffer would pass [`BATCH`], or before
/// a large write.
#[derive(Debug)]
pub struct WriteBatch<IO>(Arc<Mutex<Batch<IO>>>);

/// The driver's end of a [`WriteBatch`]: holds its flushes for a turn, then writes what the
/// turn made.
#[derive(Debug)]
pub(crate) struct Release<IO>(Arc<Mutex<Batch<IO>>>);

impl<IO> Release<IO> {
    /// Holds flushes until [`Release::poll_release`].
    pub(crate) fn hold(&self) {
        lock(&self.0).hold = true;
    }
}

impl<IO: AsyncWrite + Unpin> Release<IO> {
    /// Lets go of the hold and writes (and flushes) everything held. An error is kept for
    /// h2's next use of the IO as well.
    pub(crate) fn poll_release(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut batch = lock(&self.0);
        batch.hold = false;
        if batch.buf.is_empty() && !batch.unflushed {
            return Poll::Ready(Ok(()));
        }
        let done = match batch.poll_drain(cx) {
            Poll::Ready(Ok(())) => batch.poll_flush_io(cx),
            other => other,
        };
        if let Poll::Ready(Err(e)) = &done {
            batch.failed = Some(e.kind());
        }
        done
    }
}

impl<IO> Batch<IO> {
    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(io::Error::new(kind, "an earlier batched write failed")),
            None => Ok(()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Batch<IO> {
    /// Flushes the IO.
    fn poll_flush_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    /// Writes straight through to the IO.
    fn poll_pass(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        self.unflushed = true;
        Poll::Ready(Ok(n))
    }

    /// Writes everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unflushed = true;
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more octets: writes what is held if they would not fit, or if
    /// they are to go straight through. `Ready(true)` when they should go straight through.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        self.check()?;
        let pass = len >= PASS;
        if pass || self.buf.len() + len > BATCH {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(pass))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteBatch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut batch = lock(&self.0);
        batch.check()?;
        Pin::new(&mut batch.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteBatch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut batch = lock(&self.0);
        if ready!(batch.poll_room(cx, data.len()))? {
            return batch.poll_pass(cx, &[io::IoSlice::new(data)]);
        }
        batch.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut batch = lock(&self.0);
        let len = bufs.iter().map(|b| b.len()).sum();
        if ready!(batch.poll_room(cx, len))? {
            return batch.poll_pass(cx, bufs);
        }
        for b in bufs {
            batch.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        // Small slices are gathered here, large ones passed on as they are.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut batch = lock(&self.0);
        batch.check()?;
        if batch.hold {
            return Poll::Ready(Ok(()));
        }
        ready!(batch.poll_drain(cx))?;
        batch.poll_flush_io(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut batch = lock(&self.0);
        ready!(batch.poll_drain(cx))?;
        Pin::new(&mut batch.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counted(io: &WriteBatch<Counting>) -> MutexGuard<'_, Batch<Counting>> {
        lock(&io.0)
    }

    /// Counts the writes that reach it.
    #[derive(Default)]
    struct Counting {
        writes: Vec<usize>,
        flushes: usize,
        shut: bool,
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.push(data.len());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn held_flushes_write_nothing_and_the_first_flush_after_writes_everything_at_once() {
        let (mut io, release) = new(Counting::default());
        release.hold();
        for _ in 0..12 {
            io.write_all(&[1; 1033]).await.unwrap();
            io.flush().await.unwrap();
        }
        assert!(counted(&io).io.writes.is_empty());
        assert_eq!(counted(&io).io.flushes, 0);
        std::future::poll_fn(|cx| release.poll_release(cx))
            .await
            .unwrap();
        assert_eq!(counted(&io).io.writes, vec![12 * 1033]);
        assert_eq!(counted(&io).io.flushes, 1);
        // Released, a flush writes at once again.
        io.write_all(&[1; 10]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(counted(&io).io.writes, vec![12 * 1033, 10]);
    }

    /// A write that went straight through during a turn is flushed at the release even
    /// though nothing is held: without it a TLS stream kept the records it could not send
    /// (a 5 GiB upload through proxy mode stalled for good, one run in three).
    #[tokio::test]
    async fn the_release_flushes_what_went_straight_through() {
        let (mut io, release) = new(Counting::default());
        release.hold();
        io.write_all(&vec![0; PASS]).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(
            counted(&io).io.writes,
            vec![PASS],
            "passed straight through"
        );
        assert_eq!(counted(&io).io.flushes, 0, "held: not flushed yet");
        std::future::poll_fn(|cx| release.poll_release(cx))
            .await
            .unwrap();
        assert_eq!(counted(&io).io.flushes, 1);
    }

    #[tokio::test]
    async fn without_the_hold_every_flush_writes() {
        let (mut io, _release) = new(Counting::default());
        for _ in 0..3 {
            io.write_all(&[1; 100]).await.unwrap();
            io.flush().await.unwrap();
        }
        assert_eq!(counted(&io).io.writes, vec![100, 100, 100]);
    }

    #[tokio::test]
    async fn held_writes_go_out_before_the_buffer_passes_its_bound_and_large_ones_pass_straight_through(
    ) {
        let (mut io, release) = new(Counting::default());
        release.hold();
        let small = PASS - 1;
        let fit = BATCH / small;
        for _ in 0..fit + 1 {
            io.write_all(&vec![0; small]).await.unwrap();
        }
        // The write that would not fit sent what was held first.
        assert_eq!(counted(&io).io.writes, vec![fit * small]);
        io.write_all(&vec![0; PASS]).await.unwrap();
        assert_eq!(counted(&io).io.writes, vec![fit * small, small, PASS]);
        // A vectored write of small slices is gathered, a large one passed on.
        let a = [7u8; 10];
        let b = [8u8; 20];
        let n = io
            .write_vectored(&[io::IoSlice::new(&a), io::IoSlice::new(&b)])
            .await
            .unwrap();
        assert_eq!(n, 30);
        assert_eq!(counted(&io).io.writes.len(), 3);
        io.shutdown().await.unwrap();
        assert_eq!(counted(&io).io.writes, vec![fit * small, small, PASS, 30]);
        assert!(
            counted(&io).io.shut,
            "shutdown writes what is held, hold or not"
        );
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_through_a_real_pipe() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        let (mut io, release) = new(a);
        let mut sent = Vec::new();
        release.hold();
        for i in 0..200u32 {
            let chunk: Vec<u8> = (0..(i * 97 % 20_000)).map(|j| (i + j) as u8).collect();
            io.write_all(&chunk).await.unwrap();
            sent.extend_from_slice(&chunk);
            if i % 7 == 0 {
                io.flush().await.unwrap();
            }
            if i % 13 == 0 {
                std::future::poll_fn(|cx| release.poll_release(cx))
                    .await
                    .unwrap();
                release.hold();
            }
        }
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap(), sent);
    }
}
