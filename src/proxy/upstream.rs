//! Connections to backends: HTTP/1.1 keep-alive connections pooled per
//! worker thread and per backend.
//!
//! Each worker owns its pool (a thread-local), so taking and returning a
//! connection is a `Vec` push and pop with no lock and no extra task. A
//! connection goes back to the pool when the response body has been read to
//! its end; one dropped before that (client went away, error) is closed.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub type Sender = http1::SendRequest<Incoming>;

/// Idle connections kept per backend and per worker (nginx's `keepalive`).
pub const MAX_IDLE_PER_BACKEND: usize = 128;

/// A pooled connection whose last request started longer ago than this is
/// closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_MS: u64 = crate::clock::millis(IDLE_TIMEOUT);

struct Idle {
    sender: Sender,
    /// When the request that used it last started (`clock::now_ms`): the
    /// request path's own clock reading, so pooling reads no clock.
    since_ms: u64,
}

thread_local! {
    /// Indexed by `BackendState::id`.
    static POOL: RefCell<Vec<Vec<Idle>>> = const { RefCell::new(Vec::new()) };
}

/// A ready pooled connection to backend `id`, most recently used first,
/// for a request that started at `now_ms`.
pub fn checkout(id: usize, now_ms: u64) -> Option<Sender> {
    POOL.with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        let idle = pool.get_mut(id)?;
        while let Some(conn) = idle.pop() {
            if conn.sender.is_ready() && now_ms.saturating_sub(conn.since_ms) < IDLE_MS {
                return Some(conn.sender);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read to its end; its
/// request started at `started_ms`.
pub fn checkin(id: usize, sender: Sender, started_ms: u64) {
    if sender.is_closed() {
        return;
    }
    POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            return;
        };
        if pool.len() <= id {
            pool.resize_with(id + 1, Vec::new);
        }
        let idle = &mut pool[id];
        if idle.len() >= MAX_IDLE_PER_BACKEND {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since_ms: started_ms,
        });
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
            idle.retain(|c| !c.sender.is_closed() && now_ms.saturating_sub(c.since_ms) < IDLE_MS);
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
    #[error("HTTP/1.1 handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// Opens a new connection and drives it on the current worker.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
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
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tracing::debug!(%addr, "opened a backend connection");
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%addr, %error, "backend connection ended with an error");
        }
    });
    Ok(sender)
}
