//! Deadlines of an HTTP connection between requests: a request's head must
//! arrive within [`HEADER_READ_TIMEOUT`](super::HEADER_READ_TIMEOUT) of its
//! first byte (slow clients), but an idle keep-alive connection may wait
//! [`KEEP_ALIVE_IDLE_MAX`] for its next request. hyper has one timeout for
//! both; the CMQ SDKs keep one connection per client open between calls
//! and fail their next call when the server has closed it (Python's
//! `http.client` reports a broken pipe), so idle must be allowed far longer
//! than a head may take.
//!
//! [`Deadlines`] wraps the socket: while no request is being served it
//! arms a timer (head or idle, whichever applies) each time a read would
//! block, and fails the read once it expires, which ends the connection.
//! The service marks requests with [`Activity`]; while one is served the
//! handler's own timeouts apply.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long a keep-alive connection may sit idle between requests.
pub const KEEP_ALIVE_IDLE_MAX: Duration = Duration::from_secs(120);

/// What the service tells the socket wrapper: requests begun and ended
/// (one counter), and whether one is being served.
#[derive(Default)]
pub struct Activity {
    changes: AtomicU64,
    serving: AtomicBool,
}

impl Activity {
    /// Marks a request served until the guard drops.
    pub fn serve(self: &Arc<Self>) -> Serving {
        self.serving.store(true, Ordering::Relaxed);
        self.changes.fetch_add(1, Ordering::Relaxed);
        Serving(self.clone())
    }
}

/// A request being served (see [`Activity::serve`]).
pub struct Serving(Arc<Activity>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.serving.store(false, Ordering::Relaxed);
        self.0.changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// A socket with the head and idle deadlines.
pub struct Deadlines<S> {
    inner: S,
    activity: Arc<Activity>,
    head: Duration,
    idle: Duration,
    /// `Activity::changes` as last seen.
    seen: u64,
    /// When the bytes of a not yet served request began to arrive.
    head_since: Option<Instant>,
    idle_since: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Deadlines<S> {
    pub fn new(inner: S, activity: Arc<Activity>, head: Duration, idle: Duration) -> Deadlines<S> {
        let now = Instant::now();
        Deadlines {
            inner,
            activity,
            head,
            idle,
            seen: 0,
            head_since: None,
            idle_since: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// A request began or ended since last seen: any head seen is complete,
    /// and the idle time counts from now.
    fn catch_up(&mut self) {
        let changes = self.activity.changes.load(Ordering::Relaxed);
        if changes != self.seen {
            self.seen = changes;
            self.head_since = None;
            self.idle_since = Instant::now();
        }
    }

    fn deadline(&self) -> Instant {
        match self.head_since {
            Some(t) => t + self.head,
            None => self.idle_since + self.idle,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let me = &mut *self;
        me.catch_up();
        let serving = me.activity.serving.load(Ordering::Relaxed);
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !serving && me.head_since.is_none() {
                    me.head_since = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if serving => Poll::Pending,
            Poll::Pending => {
                let deadline = me.deadline();
                if me.timer.deadline() != deadline {
                    me.timer.as_mut().reset(deadline);
                }
                match me.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let what = if me.head_since.is_some() { "request head not received in time" } else { "idle" };
                        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, what)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
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

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("runtime")
    }

    const HEAD: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(120);

    #[test]
    fn idle_connections_wait_long_and_partial_heads_do_not() {
        rt().block_on(async {
            let (client, server) = tokio::io::duplex(64);
            let activity = Arc::new(Activity::default());
            let mut conn = Deadlines::new(server, activity.clone(), HEAD, IDLE);
            let mut client = client;
            let mut buf = [0u8; 8];
            // Idle: still open after the head timeout, closed after the idle one.
            let started = Instant::now();
            client.write_all(b"GET").await.expect("write");
            assert_eq!(conn.read(&mut buf).await.expect("bytes"), 3);
            let err = conn.read(&mut buf).await.expect_err("a partial head times out");
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
            assert_eq!(Instant::now() - started, HEAD);

            let (client, server) = tokio::io::duplex(64);
            let mut conn = Deadlines::new(server, activity.clone(), HEAD, IDLE);
            let mut client = client;
            let started = Instant::now();
            tokio::time::sleep(HEAD * 2).await;
            client.write_all(b"GET").await.expect("write");
            assert_eq!(conn.read(&mut buf).await.expect("idle longer than a head may take"), 3);
            // The request is served (a long poll): no deadline meanwhile.
            let serving = activity.serve();
            let (r, _) = tokio::join!(conn.read(&mut buf), async {
                tokio::time::sleep(IDLE * 2).await;
                client.write_all(b"x").await.expect("write");
            });
            assert_eq!(r.expect("no deadline while serving"), 1);
            drop(serving);
            let idle_from = Instant::now();
            let err = conn.read(&mut buf).await.expect_err("idle too long");
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
            assert_eq!(Instant::now() - idle_from, IDLE);
            assert!(Instant::now() - started > IDLE * 2);
        });
    }
}
