//! Listeners, workers and connections: everything between the socket and
//! the request path.

mod accept;
mod conn;
mod io;
pub mod tls;
mod worker;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

pub use accept::Acceptor;
pub use conn::Connection;
pub use worker::{MAX_HEAD_BYTES, OpenGuard, ShutdownSignal};

use crate::config::Problem;
use crate::runtime::Shared;

const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Unsupported(Vec<Problem>),
    #[error("cannot start a worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsSetupError),
}

/// The running proxy: its workers and the addresses they listen on.
pub struct Server {
    addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    workers: Vec<JoinHandle<()>>,
    shutdown: Arc<ShutdownSignal>,
    done: mpsc::Receiver<()>,
}

impl Server {
    /// Binds every listener and starts the workers; returns once the
    /// proxy accepts connections.
    pub fn start(shared: Arc<Shared>) -> Result<Server, ServerError> {
        let config = shared.load().config.clone();
        let unsupported = config.unsupported();
        if !unsupported.is_empty() {
            return Err(ServerError::Unsupported(unsupported));
        }
        if shared.load().needs_store {
            // before any worker serves a request that mints a ticket
            crate::session::ticket::warm_up();
        }
        let workers = match config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // per worker, one socket per listen address
        let mut sockets: Vec<Vec<worker::Listener>> = (0..workers).map(|_| Vec::new()).collect();
        let mut bind_all = |wanted: SocketAddr, tls: Option<tls::Terminator>| {
            let first = bind(wanted, workers > 1)?;
            let actual = first.local_addr().map_err(|source| ServerError::Bind {
                addr: wanted,
                source,
            })?;
            sockets[0].push(worker::Listener {
                socket: first,
                tls: tls.clone(),
            });
            for socks in sockets.iter_mut().skip(1) {
                socks.push(worker::Listener {
                    socket: bind(actual, true)?,
                    tls: tls.clone(),
                });
            }
            Ok::<_, ServerError>(actual)
        };
        let mut addrs = Vec::new();
        for &wanted in &config.server.listen {
            addrs.push(bind_all(wanted, None)?);
        }
        let generation = shared.load().generation;
        let mut tls_addrs = Vec::new();
        for (index, listener) in config.server.tls.iter().enumerate() {
            let terminator = tls::Terminator::new(index, listener, generation)?;
            tls_addrs.push(bind_all(listener.listen, Some(terminator))?);
        }
        let shutdown = Arc::new(ShutdownSignal::default());
        let (done_tx, done) = mpsc::channel();
        let mut handles = Vec::new();
        for (index, listeners) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let done_tx = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sessionlb-w{index}"))
                .spawn(move || {
                    worker::run(index, listeners, shared, shutdown);
                    let _ = done_tx.send(());
                })
                .map_err(ServerError::Spawn)?;
            handles.push(handle);
        }
        Ok(Server {
            addrs,
            tls_addrs,
            workers: handles,
            shutdown,
            done,
        })
    }

    /// The bound address of each `server.listen` entry, in order (ports
    /// resolved when the file asked for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound address of each `[[server.tls]]` listener, in order.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// Stops accepting and asks every connection to finish its in-flight
    /// requests and close.
    pub fn shutdown(&self) {
        self.shutdown.fire();
    }

    /// Waits up to `timeout` for the workers to finish. Returns false when
    /// some were still busy.
    pub fn wait(self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for _ in 0..self.workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                return false;
            }
        }
        for handle in self.workers {
            let _ = handle.join();
        }
        true
    }
}

fn bind(addr: SocketAddr, reuse_port: bool) -> Result<StdListener, ServerError> {
    let fail = |source| ServerError::Bind { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(fail)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(fail)?;
    }
    socket.set_nonblocking(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(BACKLOG).map_err(fail)?;
    Ok(socket.into())
}
