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
use super::inherit::Inherited;
use super::tls::Terminator;
use super::worker;
use crate::config::{Config, Problem};
use crate::runtime::Runtime;

const BACKLOG: i32 = 4096;

/// What names a listener across reloads: its address as the file writes
/// it (port 0 stays 0), whether it is a `[[server.tls]]` one, and which of
/// the listeners written alike it is (several may ask for port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub addr: SocketAddr,
    pub tls: bool,
    pub nth: usize,
}

impl Key {
    /// What this listener's sockets are called when handed to a new
    /// process.
    pub fn name(&self) -> String {
        let kind = if self.tls { "tls" } else { "plain" };
        format!("{kind}/{}/{}", self.addr, self.nth)
    }

    /// Every listener `config` asks for, with its TOML path.
    fn all(config: &Config) -> Vec<(Key, String)> {
        let plain = config
            .server
            .listen
            .iter()
            .enumerate()
            .map(|(i, &addr)| (addr, false, format!("server.listen[{i}]")));
        let tls = config
            .server
            .tls
            .iter()
            .enumerate()
            .map(|(i, t)| (t.listen, true, format!("server.tls[{i}].listen")));
        let mut keys: Vec<(Key, String)> = Vec::new();
        for (addr, tls, path) in plain.chain(tls) {
            let nth = keys
                .iter()
                .filter(|(k, _)| k.addr == addr && k.tls == tls)
                .count();
            keys.push((Key { addr, tls, nth }, path));
        }
        keys
    }
}

/// What a worker is told to do with its listeners.
pub(super) enum Command {
    Start(worker::Listener),
    Stop(Key),
}

/// One listener: its sockets, each with the worker that accepts on it.
struct Bound {
    key: Key,
    /// The address it is bound to (the port the system chose for port 0).
    local: SocketAddr,
    sockets: Vec<(usize, StdListener)>,
}

/// A listener the workers run.
struct Running {
    key: Key,
    local: SocketAddr,
    /// Another descriptor of each of its sockets, to hand them over.
    sockets: Vec<StdListener>,
}

/// The listeners of the running server, and the way to each worker.
pub struct Listeners {
    workers: Vec<UnboundedSender<Command>>,
    running: Mutex<Vec<Running>>,
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
            .filter(|r| r.key.tls == tls)
            .map(|r| r.local)
            .collect()
    }

    /// Every listening socket, named, for a new process to take over:
    /// other descriptors of the same sockets, which the workers go on
    /// accepting on.
    pub fn handover(&self) -> std::io::Result<Vec<(String, StdListener)>> {
        let mut out = Vec::new();
        for r in self.lock().iter() {
            for s in &r.sockets {
                out.push((r.key.name(), s.try_clone()?));
            }
        }
        Ok(out)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds the listeners `config` has and the running server does not;
    /// nothing changes yet. A socket that cannot be bound is a problem of
    /// the file, with its path.
    pub fn prepare(&self, config: &Config) -> Result<Changes, Vec<Problem>> {
        let wanted = Key::all(config);
        let running: Vec<Key> = self.lock().iter().map(|r| r.key).collect();
        let mut added = Vec::new();
        let mut problems = Vec::new();
        for (key, path) in &wanted {
            if running.contains(key) {
                continue;
            }
            match self.bind(*key, None) {
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
            self.lock().retain(|r| r.key != key);
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
            true => match Terminator::new(key, rt)? {
                Some(t) => Some(t),
                None => return Ok(()),
            },
        };
        let mut kept = Vec::new();
        for (worker, socket) in sockets {
            kept.push(socket.try_clone().map_err(|source| ServerError::Bind {
                addr: local,
                source,
            })?);
            if let Some(worker) = self.workers.get(worker) {
                let _ = worker.send(Command::Start(worker::Listener {
                    key,
                    socket,
                    tls: tls.clone(),
                }));
            }
        }
        self.lock().push(Running {
            key,
            local,
            sockets: kept,
        });
        tracing::info!(addr = %local, tls = key.tls, "listening");
        Ok(())
    }

    /// Binds the listeners of the configuration a server starts with, or
    /// takes them from those `inherited`.
    pub(super) fn start_all(
        &self,
        rt: &Runtime,
        inherited: &mut Inherited,
    ) -> Result<(), ServerError> {
        for (key, _) in Key::all(&rt.config) {
            let bound = self.bind(key, Some(inherited))?;
            self.start(bound, rt)?;
        }
        Ok(())
    }

    /// Sockets listening on `key.addr`, at least one per worker: those
    /// `inherited` has for it, else new ones.
    fn bind(&self, key: Key, inherited: Option<&mut Inherited>) -> Result<Bound, ServerError> {
        let given = inherited.map_or_else(Vec::new, |i| i.take(&key.name(), key.addr));
        if !given.is_empty() {
            return self.share(key, given);
        }
        let first = bind(key.addr, self.reuse_port())?;
        let local = first.local_addr().map_err(|source| ServerError::Bind {
            addr: key.addr,
            source,
        })?;
        let mut sockets = vec![(0, first)];
        for worker in 1..self.workers.len() {
            sockets.push((worker, bind(local, true)?));
        }
        Ok(Bound {
            key,
            local,
            sockets,
        })
    }

    /// Sockets handed over, shared out among the workers: each takes one
    /// in turn (some take several when they are more than the workers,
    /// as a previous process with more workers leaves them), and while
    /// there are fewer, workers share one (systemd passes one).
    fn share(&self, key: Key, given: Vec<StdListener>) -> Result<Bound, ServerError> {
        let fail = |source| ServerError::Bind {
            addr: key.addr,
            source,
        };
        let local = given[0].local_addr().map_err(fail)?;
        let workers = self.workers.len();
        let mut sockets = Vec::new();
        for worker in given.len()..workers {
            sockets.push((
                worker,
                given[worker % given.len()].try_clone().map_err(fail)?,
            ));
        }
        sockets.extend(given.into_iter().enumerate().map(|(i, s)| (i % workers, s)));
        tracing::info!(addr = %local, sockets = sockets.len(), "listening socket handed over");
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
