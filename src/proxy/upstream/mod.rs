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
mod wire;

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::TcpStream;

pub use exchange::{ClientBody, Exchange, ExchangeError, Outgoing};
pub use wire::{Head, RequestHead, WireError};

/// Idle connections kept per backend and per worker (nginx's `keepalive`).
pub const MAX_IDLE_PER_BACKEND: usize = 128;

/// A pooled connection whose last request started longer ago than this is
/// closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_MS: u64 = crate::clock::millis(IDLE_TIMEOUT);
/// A connection idle for less than this is taken without asking the
/// kernel whether the backend closed it (a read that costs a system call
/// when the last response left the socket marked readable); a request
/// that meets one closed anyway is retried when that is safe.
const PROBE_AFTER_MS: u64 = 1000;

/// An open connection to a backend.
pub struct Conn {
    /// The backend's registry id (`BackendState::id`).
    id: usize,
    stream: TcpStream,
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

    /// The backend closed it, or sent bytes nobody asked for. Reads no
    /// socket unless the poller said it is readable.
    fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

struct Idle {
    conn: Conn,
    /// When the request that used it last started (`clock::now_ms`): the
    /// request path's own clock reading, so pooling reads no clock.
    since_ms: u64,
}

thread_local! {
    /// Indexed by `BackendState::id`.
    static POOL: RefCell<Vec<Vec<Idle>>> = const { RefCell::new(Vec::new()) };
}

/// A live pooled connection to backend `id`, most recently used first,
/// for a request that started at `now_ms`.
pub fn checkout(id: usize, now_ms: u64) -> Option<Conn> {
    POOL.with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        let idle = pool.get_mut(id)?;
        while let Some(mut idle) = idle.pop() {
            let age = now_ms.saturating_sub(idle.since_ms);
            if age < IDLE_MS && (age < PROBE_AFTER_MS || !idle.conn.is_stale()) {
                idle.conn.reused = true;
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Returns a connection that finished an exchange cleanly; its request
/// started at `started_ms`.
pub fn checkin(conn: Conn, started_ms: u64) {
    POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return;
        };
        if pool.len() <= conn.id {
            pool.resize_with(conn.id + 1, Vec::new);
        }
        let idle = &mut pool[conn.id];
        if idle.len() >= MAX_IDLE_PER_BACKEND {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since_ms: started_ms,
        });
    });
}

/// Closes this worker's idle connections to backend `id`: one of them
/// turned out closed, so the backend probably restarted.
pub fn discard(id: usize) {
    POOL.with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut()
            && let Some(idle) = pool.get_mut(id)
        {
            idle.clear();
        }
    });
}

/// Closes this worker's connections that are idle for too long or that
/// their backend closed.
pub fn sweep() {
    let now_ms = crate::clock::now_ms();
    POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return;
        };
        for idle in pool.iter_mut() {
            idle.retain(|i| now_ms.saturating_sub(i.since_ms) < IDLE_MS && !i.conn.is_stale());
        }
    });
}

/// Closes every pooled connection of this worker (shutdown).
pub fn clear() {
    POOL.with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            pool.clear();
        }
    });
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("connection to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
}

/// Opens a new connection to backend `id` at `addr`.
pub async fn connect(id: usize, addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => {
            return Err(ConnectError::Timeout {
                addr,
                after: timeout,
            });
        }
    };
    let _ = stream.set_nodelay(true);
    tracing::debug!(%addr, "opened a backend connection");
    Ok(Conn {
        id,
        stream,
        buf: BytesMut::new(),
        reused: false,
    })
}
