//! An upgraded connection (WebSocket, or another protocol the operator
//! allows) spliced to the backend connection that switched protocols,
//! until either side closes or neither sends anything for
//! `timeouts.tunnel_idle`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock;

/// Copies both ways between `a` and `b` (each side's end is passed on as a
/// shutdown of the other's writing half) until both ends are done, or
/// until nothing moved either way for `idle`.
pub async fn splice<A, B>(a: A, b: B, idle: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let last = Arc::new(AtomicU64::new(clock::now_ms()));
    let mut a = Watched {
        io: a,
        last: last.clone(),
    };
    let mut b = Watched {
        io: b,
        last: last.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(copied) = copy.as_mut().poll(cx) {
            return Poll::Ready(copied.map(|_| ()));
        }
        loop {
            ready!(timer.as_mut().poll(cx));
            // the timer runs from the last traffic, read when it fires
            let due = last.load(Ordering::Relaxed) + clock::millis(idle);
            if clock::now_ms() >= due {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no traffic either way for {idle:?} (timeouts.tunnel_idle)"),
                )));
            }
            timer.as_mut().reset(clock::instant_at(due));
        }
    })
    .await
}

/// One side of a tunnel, noting when bytes last moved through it.
struct Watched<T> {
    io: T,
    last: Arc<AtomicU64>,
}

impl<T> Watched<T> {
    fn moved<R>(&self, polled: Poll<io::Result<R>>, moved: bool) -> Poll<io::Result<R>> {
        if moved {
            self.last.store(clock::now_ms(), Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.moved(polled, moved)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        let moved = matches!(polled, Poll::Ready(Ok(n)) if n > 0);
        self.moved(polled, moved)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
