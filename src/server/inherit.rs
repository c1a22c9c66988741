//! Listening sockets a process is given rather than binds: by the sessionlb
//! it replaces (a binary upgrade, see `upgrade`) or by systemd (socket
//! activation, `LISTEN_FDS`).
//!
//! A socket handed over stays the same socket, with its queue of
//! connections not yet accepted: nothing waiting in it is refused or reset,
//! which binding the address anew (even with SO_REUSEPORT) cannot promise,
//! since closing the old process's sockets resets what waits in them.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Names the sockets a sessionlb hands to the one that replaces it:
/// `fd=name,fd=name,...`, a name being what [`Inherited::take`] is asked
/// for.
pub const LISTEN_FDS: &str = "SESSIONLB_LISTEN_FDS";
/// The descriptor the new process writes one byte to once it serves.
pub const READY_FD: &str = "SESSIONLB_READY_FD";
/// systemd's first passed descriptor (`SD_LISTEN_FDS_START`).
const SYSTEMD_FIRST_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("{var}: cannot read {value:?}: {why}")]
    Malformed {
        var: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{var}: descriptor {fd} is not a listening TCP socket: {source}")]
    NotListening {
        var: &'static str,
        fd: RawFd,
        source: io::Error,
    },
}

/// The sockets this process was given that no listener has claimed yet,
/// and how to tell the process that gave them that it serves.
#[derive(Debug, Default)]
pub struct Inherited {
    /// From a previous sessionlb, each with its name.
    named: Vec<(String, StdListener)>,
    /// From systemd: claimed by the address they are bound to.
    by_address: Vec<(SocketAddr, StdListener)>,
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// Takes the sockets named in the environment and removes the
    /// variables, so that no process started later sees them. Call it
    /// first thing, before any thread starts and before anything opens a
    /// descriptor.
    pub fn from_env() -> Result<Inherited, InheritError> {
        let mut inherited = Inherited::default();
        if let Some(list) = take_var(LISTEN_FDS) {
            for item in list.split(',').filter(|i| !i.is_empty()) {
                let malformed = |why| InheritError::Malformed {
                    var: LISTEN_FDS,
                    value: list.clone(),
                    why,
                };
                let (fd, name) = item
                    .split_once('=')
                    .ok_or_else(|| malformed("an item is not fd=name"))?;
                let fd: RawFd = fd.parse().map_err(|_| malformed("not a descriptor"))?;
                let (socket, _) = adopt(LISTEN_FDS, fd)?;
                inherited.named.push((name.to_string(), socket));
            }
        }
        if let Some(fd) = take_var(READY_FD) {
            let fd: RawFd = fd.parse().map_err(|_| InheritError::Malformed {
                var: READY_FD,
                value: fd.clone(),
                why: "not a descriptor",
            })?;
            // SAFETY: the process that started this one passed the
            // descriptor for this alone; nothing else here uses it.
            inherited.ready = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let systemd_pid = take_var("LISTEN_PID");
        let systemd_fds = take_var("LISTEN_FDS");
        let _ = take_var("LISTEN_FDNAMES");
        if let (Some(pid), Some(count)) = (systemd_pid, systemd_fds)
            && pid.parse() == Ok(std::process::id())
        {
            let count: RawFd = count.parse().map_err(|_| InheritError::Malformed {
                var: "LISTEN_FDS",
                value: count.clone(),
                why: "not a number",
            })?;
            for fd in SYSTEMD_FIRST_FD..SYSTEMD_FIRST_FD + count {
                let (socket, addr) = adopt("LISTEN_FDS", fd)?;
                inherited.by_address.push((addr, socket));
            }
        }
        Ok(inherited)
    }

    /// The sockets given for the listener `name` (a previous sessionlb's
    /// name for it), or else the one systemd bound to `addr`.
    pub fn take(&mut self, name: &str, addr: SocketAddr) -> Vec<StdListener> {
        let (named, others) = std::mem::take(&mut self.named)
            .into_iter()
            .partition(|(n, _)| n == name);
        self.named = others;
        let mut taken: Vec<StdListener> = named.into_iter().map(|(_, s)| s).collect();
        if taken.is_empty()
            && let Some(i) = self.by_address.iter().position(|(a, _)| *a == addr)
        {
            taken.push(self.by_address.remove(i).1);
        }
        taken
    }

    /// Closes the sockets no listener claimed (the new configuration
    /// dropped them), saying so, and tells whoever started this process
    /// that it serves: systemd first (this process is now the service's
    /// main one), then the process it replaces, which exits on hearing it.
    pub fn serving(mut self) {
        for (name, _) in self.named.drain(..) {
            tracing::warn!(listener = %name, "a socket handed over matches no listener now: closed");
        }
        for (addr, _) in self.by_address.drain(..) {
            tracing::warn!(%addr, "a socket from systemd matches no listener: closed");
        }
        tell_systemd(&format!("READY=1\nMAINPID={}\n", std::process::id()));
        if let Some(ready) = self.ready.take() {
            let mut file = std::fs::File::from(ready);
            if let Err(error) = io::Write::write_all(&mut file, b"1") {
                tracing::warn!(%error, "cannot tell the previous process that this one serves");
            }
        }
    }
}

/// The variable's value, removed from the environment.
fn take_var(name: &str) -> Option<String> {
    let value = std::env::var(name).ok();
    if value.is_some() {
        // SAFETY: called by `from_env` before the process starts any
        // thread, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(name) };
    }
    value
}

/// Takes ownership of descriptor `fd`, which must be a listening TCP
/// socket; it is made non-blocking and close-on-exec.
fn adopt(var: &'static str, fd: RawFd) -> Result<(StdListener, SocketAddr), InheritError> {
    let fail = |source| InheritError::NotListening { var, fd, source };
    // SAFETY: the descriptor was passed to this process for this use
    // alone (named in its environment); it is checked before use and
    // nothing else here owns it.
    let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
    let checked = (|| {
        if !socket.is_listener()? {
            return Err(io::Error::other("not listening"));
        }
        if socket.r#type()? != socket2::Type::STREAM {
            return Err(io::Error::other("not a stream socket"));
        }
        let addr = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)?;
        Ok(addr)
    })();
    match checked {
        Ok(addr) => Ok((socket.into(), addr)),
        Err(source) => {
            // not ours to close: the descriptor is left as it was found
            let _ = std::os::fd::IntoRawFd::into_raw_fd(socket);
            Err(fail(source))
        }
    }
}

/// Sends `message` to systemd when it runs this process as a
/// `Type=notify` service (`NOTIFY_SOCKET`); nothing otherwise. The
/// variable stays in the environment: a new binary started by an upgrade
/// notifies the same service.
pub fn tell_systemd(message: &str) {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.as_os_str();
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name)
        }
        None => UnixAddr::from_pathname(path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(message.as_bytes(), &addr)
    });
    if let Err(error) = sent {
        tracing::warn!(%error, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The descriptors of `sockets` as `fd=name` items, for [`LISTEN_FDS`].
pub fn describe<'a>(sockets: impl Iterator<Item = (&'a str, &'a StdListener)>) -> String {
    sockets
        .map(|(name, s)| format!("{}={name}", s.as_raw_fd()))
        .collect::<Vec<_>>()
        .join(",")
}
