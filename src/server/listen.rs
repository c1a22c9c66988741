//! The listening sockets, bound at start and added or removed by reloads.
//!
//! Each worker accepts on a socket of its own per address (SO_REUSEPORT
//! when there are several), so one listener is one socket per worker. A
//! reload binds the sockets of the addresses it adds before it is applied,
//! so an address it cannot have refuses the reload with the old
//! configuration still serving; once applied, each worker is told to start
//! accepting on its new sockets and to stop on the removed ones, whose
//! connections then finish their current request and close.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Mutex;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc::UnboundedSender;

use super::ServerError;
use super::tls::Terminator;
use super::worker;
use crate::config::{Config, Problem};
use crate::runtime::Runtime;

const BACKLOG: i32 = 4096;

/// What names a listener across reloads: its address as the file writes
/// it (port 0 stays 0), and whether it is a `[[server.tls]]` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Key {
    /// Every listener `config` asks for, with its TOML path.
    fn all(config: &Config) -> Vec<(Key, String)> {
        let plain = config.server.listen.iter().enumerate().map(|(i, &addr)| {
            let key = Key { addr, tls: false };
            (key, format!("server.listen[{i}]"))
        });
        let tls = config.server.tls.iter().enumerate().map(|(i, t)| {
            let key = Key {
                addr: t.listen,
                tls: true,
            };
            (key, format!("server.tls[{i}].listen"))
        });
        plain.chain(tls).collect()
    }
}

/// What a worker is told to do with its listeners.
pub(super) enum Command {
    Start(worker::Listener),
    Stop(Key),
}

/// One listener: each worker's socket for it.
struct Bound {
    key: Key,
    /// The address it is bound to (the port the system chose for port 0).
    local: SocketAddr,
    sockets: Vec<StdListener>,
}

/// The listeners of the running server, and the way to each worker.
pub struct Listeners {
    workers: Vec<UnboundedSender<Command>>,
    /// Which of them each worker runs now.
    running: Mutex<Vec<(Key, SocketAddr)>>,
}

/// Listeners a reload adds, bound, and those it removes.
pub struct Changes {
    added: Vec<Bound>,
    removed: Vec<Key>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl Listeners {
    pub(super) fn new(workers: Vec<UnboundedSender<Command>>) -> Listeners {
        Listeners {
            workers,
            running: Mutex::default(),
        }
    }

    fn reuse_port(&self) -> bool {
        self.workers.len() > 1
    }

    /// The addresses listened on now, plain ones first, each in the order
    /// of the file.
    pub fn local_addrs(&self, tls: bool) -> Vec<SocketAddr> {
        self.lock()
            .iter()
            .filter(|(k, _)| k.tls == tls)
            .map(|&(_, local)| local)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Key, SocketAddr)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the listeners `config` has and the running server does not;
    /// nothing changes yet. A socket that cannot be bound is a problem of
    /// the file, with its path.
    pub fn prepare(&self, config: &Config) -> Result<Changes, Vec<Problem>> {
        let wanted = Key::all(config);
        let running: Vec<Key> = self.lock().iter().map(|&(k, _)| k).collect();
        let mut added = Vec::new();
        let mut problems = Vec::new();
        for (key, path) in &wanted {
            if running.contains(key) || added.iter().any(|b: &Bound| b.key == *key) {
                continue;
            }
            match self.bind(*key) {
                Ok(bound) => added.push(bound),
                Err(error) => problems.push(Problem {
                    path: path.clone(),
                    message: error.to_string(),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let removed = running
            .into_iter()
            .filter(|k| !wanted.iter().any(|(w, _)| w == k))
            .collect();
        Ok(Changes { added, removed })
    }

    /// Starts the added listeners on every worker and stops the removed
    /// ones, for the snapshot `rt` now in effect.
    pub fn apply(&self, changes: Changes, rt: &Runtime) {
        for key in changes.removed {
            for worker in &self.workers {
                let _ = worker.send(Command::Stop(key));
            }
            self.lock().retain(|(k, _)| *k != key);
            tracing::info!(addr = %key.addr, tls = key.tls, "listener closed by the reload");
        }
        for bound in changes.added {
            if let Err(error) = self.start(bound, rt) {
                tracing::error!(%error, "cannot start a listener");
            }
        }
    }

    /// Hands each worker its socket of `bound`.
    fn start(&self, bound: Bound, rt: &Runtime) -> Result<(), ServerError> {
        let Bound {
            key,
            local,
            sockets,
        } = bound;
        let tls = match key.tls {
            false => None,
            true => {
                let listener = rt.config.server.tls.iter().find(|t| t.listen == key.addr);
                match listener {
                    Some(l) => Some(Terminator::new(l, rt.generation)?),
                    None => return Ok(()),
                }
            }
        };
        for (worker, socket) in self.workers.iter().zip(sockets) {
            let _ = worker.send(Command::Start(worker::Listener {
                key,
                socket,
                tls: tls.clone(),
            }));
        }
        self.lock().push((key, local));
        tracing::info!(addr = %local, tls = key.tls, "listening");
        Ok(())
    }

    /// Binds the listeners of the configuration a server starts with.
    pub(super) fn start_all(&self, rt: &Runtime) -> Result<(), ServerError> {
        for (key, _) in Key::all(&rt.config) {
            let bound = self.bind(key)?;
            self.start(bound, rt)?;
        }
        Ok(())
    }

    /// One socket for each worker, listening on `key.addr`.
    fn bind(&self, key: Key) -> Result<Bound, ServerError> {
        let first = bind(key.addr, self.reuse_port())?;
        let local = first.local_addr().map_err(|source| ServerError::Bind {
            addr: key.addr,
            source,
        })?;
        let mut sockets = vec![first];
        for _ in 1..self.workers.len() {
            sockets.push(bind(local, true)?);
        }
        Ok(Bound {
            key,
            local,
            sockets,
        })
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
