//! One client connection: its facts (peer, TLS), its request bookkeeping,
//! and the task that drives it with its two timers, request_header (the
//! slowloris guard) and idle (keep-alive).
//!
//! hyper's own header-read timer also runs while a keep-alive connection is
//! idle, which would cap `idle` at `request_header`; one watchdog timer per
//! connection tells the two apart instead. The events that move its
//! deadline (a response ends, a new request head starts) happen while the
//! connection task polls hyper, so the task re-arms the timer right after,
//! and only when the deadline moved earlier.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::io::ClientIo;
use super::worker::{OpenGuard, Worker};
use crate::clock;
use crate::config::Timeouts;
use crate::proxy;
use crate::runtime::Shared;

/// What the request path knows about the client connection.
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
    pub shared: Arc<Shared>,
    worker: Arc<Worker>,
    /// Requests whose response has not ended.
    active: AtomicU32,
    /// Requests whose response head hyper has not started writing.
    pending_heads: AtomicU32,
    /// When the head of the next request started arriving; 0 when none is.
    head_started_ms: AtomicU64,
    /// When the last response ended.
    idle_since_ms: AtomicU64,
    /// The watchdog's deadline may have moved earlier.
    rearm: AtomicBool,
}

impl Connection {
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.pending_heads.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since_ms.store(clock::now_ms(), Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    /// Keeps the worker (and so a graceful shutdown) waiting for an
    /// upgraded connection's tunnel.
    pub fn tunnel_guard(&self) -> OpenGuard {
        self.worker.open()
    }

    /// Bytes arrived from the client: if no request is in progress, they
    /// start the next request head and its request_header clock.
    pub(super) fn bytes_arrived(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms
                .store(clock::now_ms(), Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    /// True when a response head of ours was due (and is now written).
    pub(super) fn take_pending_head(&self) -> bool {
        self.pending_heads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The next moment the watchdog must look, or why the connection is
    /// over now.
    fn deadline(&self, t: &Timeouts) -> Result<u64, Expired> {
        let now = clock::now_ms();
        if self.active.load(Ordering::Relaxed) > 0 {
            return Ok(now + ms(t.idle));
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        let (at, why) = if head != 0 {
            (head + ms(t.request_header), Expired::RequestHeader)
        } else {
            (
                self.idle_since_ms.load(Ordering::Relaxed) + ms(t.idle),
                Expired::Idle,
            )
        };
        if now >= at { Err(why) } else { Ok(at) }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

#[derive(Debug, Clone, Copy)]
enum Expired {
    RequestHeader,
    Idle,
}

/// Serves one accepted client connection until it closes, times out, or
/// the worker shuts down (then in-flight requests finish first).
pub(super) async fn serve(stream: TcpStream, peer: SocketAddr, worker: Arc<Worker>) {
    let _open = worker.open();
    let _ = stream.set_nodelay(true);
    let shared = worker.shared.clone();
    let now = clock::now_ms();
    let conn = Arc::new(Connection {
        peer,
        tls: false,
        shared: shared.clone(),
        worker: worker.clone(),
        active: AtomicU32::new(0),
        pending_heads: AtomicU32::new(0),
        head_started_ms: AtomicU64::new(now),
        idle_since_ms: AtomicU64::new(now),
        rearm: AtomicBool::new(false),
    });
    let io = TokioIo::new(ClientIo::new(stream, conn.clone()));
    let service_conn = conn.clone();
    let service = service_fn(move |req| {
        let conn = service_conn.clone();
        async move { Ok::<_, Infallible>(proxy::handle(req, conn).await) }
    });
    let http = worker.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(http);
    // A reload applies new timeouts to new connections.
    let timeouts = shared.load().timeouts;
    let mut armed = conn.deadline(&timeouts).unwrap_or(now);
    let watchdog = tokio::time::sleep_until(clock::instant_at(armed));
    tokio::pin!(watchdog);
    let shutdown = worker.shutdown.wait();
    tokio::pin!(shutdown);
    let mut closing = false;
    let outcome = std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = http.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(|e| e.to_string()));
            }
            if !closing && shutdown.as_mut().poll(cx).is_ready() {
                closing = true;
                http.as_mut().graceful_shutdown();
                continue;
            }
            if conn.rearm.load(Ordering::Relaxed) {
                conn.rearm.store(false, Ordering::Relaxed);
                match conn.deadline(&timeouts) {
                    Ok(at) if at < armed => {
                        armed = at;
                        watchdog.as_mut().reset(clock::instant_at(at));
                    }
                    Ok(_) => {}
                    Err(why) => return Poll::Ready(Err(format!("{why:?} timeout"))),
                }
            }
            if watchdog.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match conn.deadline(&timeouts) {
                Ok(at) => {
                    armed = at;
                    watchdog.as_mut().reset(clock::instant_at(at));
                }
                Err(why) => return Poll::Ready(Err(format!("{why:?} timeout"))),
            }
        }
    })
    .await;
    if let Err(error) = outcome {
        tracing::debug!(%peer, %error, "client connection closed");
    }
}
