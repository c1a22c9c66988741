//! Listeners, workers and connections: everything between the socket and
//! the request path.

mod accept;
mod conn;
pub mod inherit;
mod io;
mod listen;
pub mod tls;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use accept::Acceptor;
pub use conn::{Connection, serve_admin};
pub use inherit::Inherited;
pub use listen::{Changes, Listeners};
pub use worker::{MAX_HEAD_BYTES, OpenGuard, ShutdownSignal, Worker};

use crate::config::Problem;
use crate::runtime::Shared;

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

/// The running proxy: its workers and their listeners.
pub struct Server {
    listeners: Arc<Listeners>,
    workers: Vec<JoinHandle<()>>,
    shutdown: Arc<ShutdownSignal>,
    done: mpsc::Receiver<()>,
}

impl Server {
    /// Binds every listener (or takes it from those `inherited`) and
    /// starts the workers; returns once the proxy accepts connections.
    pub fn start(shared: Arc<Shared>, inherited: &mut Inherited) -> Result<Server, ServerError> {
        let rt = shared.load();
        let unsupported = rt.config.unsupported();
        if !unsupported.is_empty() {
            return Err(ServerError::Unsupported(unsupported));
        }
        if rt.needs_store {
            // before any worker serves a request that mints a ticket
            crate::session::ticket::warm_up();
        }
        let workers = match rt.config.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (commands, inboxes): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let listeners = Arc::new(Listeners::new(commands));
        listeners.start_all(&rt, inherited)?;
        let shutdown = Arc::new(ShutdownSignal::default());
        let (done_tx, done) = mpsc::channel();
        let mut handles = Vec::new();
        for (index, inbox) in inboxes.into_iter().enumerate() {
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            let done_tx = done_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("sessionlb-w{index}"))
                .spawn(move || {
                    worker::run(index, inbox, shared, shutdown);
                    let _ = done_tx.send(());
                })
                .map_err(ServerError::Spawn)?;
            handles.push(handle);
        }
        Ok(Server {
            listeners,
            workers: handles,
            shutdown,
            done,
        })
    }

    /// What a reload changes listeners through.
    pub fn listeners(&self) -> Arc<Listeners> {
        self.listeners.clone()
    }

    /// The bound address of each `server.listen` entry, in order (ports
    /// resolved when the file asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs(false)
    }

    /// The bound address of each `[[server.tls]]` listener, in order.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.local_addrs(true)
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
