//! The deadlines of one HTTP connection while no request is being handled: a client must send
//! a request's head within the header-read timeout of its first byte (or of connecting), and
//! a keep-alive connection with no request in progress is closed after the idle timeout.
//!
//! hyper's own `header_read_timeout` starts when it begins waiting for a head, which for a
//! keep-alive connection is right after the previous answer, so it cannot tell an idle client
//! from a slow one. Here the socket is wrapped instead: the service marks a request busy and
//! its answer done, and reads fail with `TimedOut` once the deadline of the current phase has
//! passed, which makes hyper close the connection. A request being handled has no deadline
//! here (a long handler is not a slow client); its body has its own, see `body`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's head, since the connection opened or its first byte arrived.
    Head(Instant),
    /// A request is being handled.
    Busy,
    /// The last answer is ready and nothing of the next request has arrived yet.
    Idle(Instant),
}

/// The phase of one connection, shared by its socket and its service.
#[derive(Debug)]
pub(crate) struct Clock {
    state: Mutex<State>,
    header_read: Duration,
    idle: Duration,
}

impl Clock {
    /// A clock for a connection that has just been accepted: its first head is due within
    /// `header_read`.
    pub(crate) fn new(header_read: Duration, idle: Duration) -> Arc<Clock> {
        Arc::new(Clock {
            state: Mutex::new(State {
                phase: Phase::Head(Instant::now()),
                reader: None,
            }),
            header_read,
            idle,
        })
    }

    /// The service was called: a request's head arrived.
    pub(crate) fn request_started(&self) {
        self.lock().phase = Phase::Busy;
    }

    /// The answer is ready: the connection is idle until the next request's first byte.
    pub(crate) fn answer_ready(&self) {
        let mut state = self.lock();
        state.phase = Phase::Idle(Instant::now());
        // hyper polled the socket while the request was busy, so no timer is armed: have it
        // read again, which arms the idle one.
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    fn bytes_arrived(&self) {
        let mut state = self.lock();
        if let Phase::Idle(_) = state.phase {
            state.phase = Phase::Head(Instant::now());
        }
    }

    /// When the current phase ends, and what a read failing then should say; with no
    /// deadline, `reader` is woken when one begins.
    fn deadline(&self, reader: &Waker) -> Option<(Instant, &'static str)> {
        let mut state = self.lock();
        match state.phase {
            Phase::Head(since) => Some((since + self.header_read, "header-read timeout")),
            Phase::Idle(since) => Some((since + self.idle, "idle timeout")),
            Phase::Busy => {
                state.reader = Some(reader.clone());
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain values: a panic elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The task reading the socket while no deadline runs.
    reader: Option<Waker>,
}

/// A socket whose reads fail once its [`Clock`]'s deadline has passed.
pub(crate) struct TimedIo<T> {
    inner: T,
    clock: Arc<Clock>,
    sleep: Pin<Box<Sleep>>,
}

impl<T> TimedIo<T> {
    pub(crate) fn new(inner: T, clock: Arc<Clock>) -> Self {
        TimedIo {
            inner,
            clock,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, what)) = self.clock.deadline(cx.waker()) else {
                    return Poll::Pending;
                };
                if self.sleep.deadline() != deadline {
                    self.sleep.as_mut().reset(deadline);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let clock = Clock::new(Duration::from_secs(10), Duration::from_secs(75));
        let mut io = TimedIo::new(server, clock.clone());
        let mut client = client;
        let mut buf = [0u8; 8];

        // A fresh connection must send its head within the header-read timeout.
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        // A request being handled has no deadline here; its answer starts the idle timeout
        // of a read already waiting.
        clock.request_started();
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let read = io.read(&mut buf).await.map_err(|e| e.to_string());
            (io, read)
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!reading.is_finished(), "still waiting after an hour");
        clock.answer_ready();
        let started = Instant::now();
        let (mut io, read) = reading.await.unwrap();
        assert_eq!(read, Err("idle timeout".to_owned()));
        assert_eq!(started.elapsed(), Duration::from_secs(75));

        // A byte of the next head moves an idle connection to the header-read timeout,
        // counted from that byte.
        clock.answer_ready();
        tokio::time::sleep(Duration::from_secs(70)).await;
        client.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "header-read timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        clock.answer_ready();
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.to_string(), "idle timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(75));
    }
}
