//! Backend connections: HTTP/1.1 spoken by sessionlb itself ([`wire`],
//! [`exchange`]) on keep-alive connections pooled per worker thread and
//! per backend.
//!
//! Each worker owns its pool (a thread-local), so taking and returning a
//! connection is a `Vec` push and pop with no lock and no task. An
//! exchange runs in the client connection's task; its connection goes
//! back to the pool when the response has been read to its end and the
//! request written to its end. One dropped before that is closed.

mod exchange;
pub mod tls;
pub(crate) mod wire;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

pub use exchange::{ClientBody, Exchange, ExchangeError, Outgoing};
pub use tls::{PoolTls, Stream, Target};
pub use wire::{Head, RequestHead, WireError};

use crate::balance::Slot;

/// Idle connections kept per backend and per worker (nginx's `keepalive`).
pub const MAX_IDLE_PER_BACKEND: usize = 128;

/// A pooled connection whose last request started longer ago than this is
/// closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_MS: u64 = crate::clock::millis(IDLE_TIMEOUT);

/// An open connection to a backend.
pub struct Conn {
    /// The backend it is open to, and how (plain, or TLS verified one way
    /// as one name). Holding the slot keeps its id, which indexes the
    /// pools, from being given to another while this connection may still
    /// be pooled under it.
    slot: Arc<Slot>,
    stream: Stream,
    /// Bytes read and not yet used; kept with the connection so that a
    /// reused one allocates nothing.
    buf: BytesMut,
    /// It came from the pool rather than a new connect.
    reused: bool,
}

impl Conn {
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The backend closed it, or sent bytes nobody asked for: either way
    /// it cannot carry another exchange. Costs no system call unless the
    /// poller said the socket is readable (tokio's `try_read` asks the
    /// kernel only then); a readiness left over from a read that filled
    /// the buffer costs one `recv` that finds nothing and clears it.
    ///
    /// Over TLS, what arrived is decrypted first: a TLS 1.3 server may
    /// send session tickets after its response, which leave the
    /// connection as good as it was; data, a close or an error do not.
    fn is_stale(&mut self) -> bool {
        match &mut self.stream {
            Stream::Plain(s) => {
                let mut probe = [0u8; 1];
                !matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(_) => self.poll_tls_input(&mut Context::from_waker(Waker::noop())),
        }
    }

    /// Whether a TLS connection got anything but handshake messages
    /// (polled with `cx`, which is woken when more arrives).
    fn poll_tls_input(&mut self, cx: &mut Context<'_>) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut self.stream), cx, &mut buf)
            .is_ready()
    }

    /// Asks the poller to wake `cx` when the backend writes to or closes
    /// this idle connection. False when it already has: the connection is
    /// stale.
    fn watch(&mut self, cx: &mut Context<'_>) -> bool {
        let socket = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(_) => return !self.poll_tls_input(cx),
        };
        match socket.poll_read_ready(cx) {
            Poll::Pending => true,
            // ready, or a readiness left from the last read: look, which
            // clears it when nothing is there, and register again
            Poll::Ready(_) => !self.is_stale() && self.socket().poll_read_ready(cx).is_pending(),
        }
    }

    fn socket(&self) -> &TcpStream {
        self.stream.socket()
    }
}

struct Idle {
    conn: Conn,
    /// When the request that used it last started (`clock::now_ms`): the
    /// request path's own clock reading, so pooling reads no clock.
    since_ms: u64,
}

/// One worker's idle connections, indexed by `Slot::id`, and the
/// waker of the task that watches them ([`watch`]).
#[derive(Default)]
struct Pool {
    idle: Vec<Vec<Idle>>,
    watcher: Option<Waker>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A live pooled connection of slot `id`, most recently used first, for
/// a request that started at `now_ms`. A connection on which anything
/// arrived since its last response (late bytes of that response, an
/// unsolicited response, a close) is never reused, whatever its age.
///
/// A slot is one backend reached one way (plain, or TLS verified one way
/// as one name): every connection it holds was opened as the request
/// would open it, so none is looked at for how it was opened.
pub fn checkout(id: usize, now_ms: u64) -> Option<Conn> {
    POOL.with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        let idle = pool.idle.get_mut(id)?;
        while let Some(mut idle) = idle.pop() {
            if now_ms.saturating_sub(idle.since_ms) < IDLE_MS && !idle.conn.is_stale() {
                idle.conn.reused = true;
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Returns a connection that finished an exchange cleanly; its request
/// started at `started_ms`. From now on the worker's watcher closes it the
/// moment the backend sends anything on it. A connection to a backend a
/// reload removed, or whose TLS settings it changed, is closed instead.
pub fn checkin(mut conn: Conn, started_ms: u64) {
    if conn.slot.is_retired() {
        return;
    }
    POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return;
        };
        let Pool { idle, watcher } = &mut *pool;
        let watched = match watcher {
            Some(waker) => conn.watch(&mut Context::from_waker(waker)),
            // the watcher has not run yet; its first look covers this one
            None => !conn.is_stale(),
        };
        if !watched {
            return;
        }
        let id = conn.slot.id;
        if idle.len() <= id {
            idle.resize_with(id + 1, Vec::new);
        }
        let idle = &mut idle[id];
        if idle.len() >= MAX_IDLE_PER_BACKEND {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since_ms: started_ms,
        });
    });
}

/// Watches this worker's idle connections for as long as the worker runs
/// and closes each the moment it becomes readable: a backend that closes
/// an idle connection gets its FIN answered at once, and bytes a backend
/// sends after its response (a late body, an unsolicited response) never
/// wait in the pool for the next request (nginx's keepalive close
/// handler). Woken only when one of them becomes readable.
pub async fn watch() {
    // one look at every idle connection may take more than a task's
    // cooperative budget, which would make `poll_read_ready` pretend
    tokio::task::unconstrained(std::future::poll_fn(|cx: &mut Context<'_>| {
        POOL.with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                let Pool { idle, watcher } = &mut *pool;
                if !watcher.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *watcher = Some(cx.waker().clone());
                }
                for idle in idle.iter_mut() {
                    idle.retain_mut(|i| i.conn.watch(cx));
                }
            }
        });
        Poll::<()>::Pending
    }))
    .await
}

/// Closes this worker's idle connections to backend `id`: one of them
/// turned out closed, so the backend probably restarted.
pub fn discard(id: usize) {
    POOL.with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut()
            && let Some(idle) = pool.idle.get_mut(id)
        {
            idle.clear();
        }
    });
}

/// Closes this worker's idle connections to backends a reload removed or
/// reaches with other TLS settings, at once: they would otherwise wait for
/// their idle timeout, and keep their slot alive until then.
pub fn close_retired() {
    POOL.with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            for idle in pool.idle.iter_mut() {
                idle.retain(|i| !i.conn.slot.is_retired());
            }
        }
    });
}

/// Closes this worker's connections that are idle for too long.
pub fn sweep() {
    let now_ms = crate::clock::now_ms();
    POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return;
        };
        for idle in pool.idle.iter_mut() {
            idle.retain(|i| now_ms.saturating_sub(i.since_ms) < IDLE_MS);
        }
    });
}

/// Closes every pooled connection of this worker (shutdown).
pub fn clear() {
    POOL.with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            pool.idle.clear();
        }
    });
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("connection to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("TLS handshake with {addr} ({name}) failed: {source}")]
    Tls {
        addr: SocketAddr,
        name: String,
        source: io::Error,
    },
}

/// Opens a new connection to `backend` at `addr`, over TLS with
/// `tls`. The handshake is bounded by the same `timeout` as the connect,
/// as nginx's `proxy_connect_timeout` bounds both.
pub async fn connect(
    slot: &Arc<Slot>,
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<Target<'_>>,
) -> Result<Conn, ConnectError> {
    let stream = match open(addr, timeout, tls).await {
        Ok(s) => s,
        Err(error) => {
            if let ConnectError::Tls { .. } = error {
                // a certificate the proxy cannot verify is a configuration
                // to fix, not a backend to wait out
                tracing::warn!(%error, "cannot connect to a backend over TLS");
            }
            return Err(error);
        }
    };
    tracing::debug!(%addr, tls = stream.is_tls(), "opened a backend connection");
    Ok(Conn {
        slot: slot.clone(),
        stream,
        buf: BytesMut::new(),
        reused: false,
    })
}

/// A new byte stream to `addr`, over TLS with `tls`, within `timeout`
/// for the connect and the handshake; never pooled. Logs nothing: the
/// caller says what a failure means (a request's, or a health check's,
/// whose failures are logged when they change the backend's state).
pub async fn open(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<Target<'_>>,
) -> Result<Stream, ConnectError> {
    let opened = tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Io { addr, source })?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Stream::Plain(tcp)),
            Some(target) => match tls::handshake(target, tcp).await {
                Ok(s) => Ok(Stream::Tls(Box::new(s))),
                Err(source) => Err(ConnectError::Tls {
                    addr,
                    name: target.name().to_str().into_owned(),
                    source,
                }),
            },
        }
    })
    .await;
    opened.unwrap_or(Err(ConnectError::Timeout {
        addr,
        after: timeout,
    }))
}
