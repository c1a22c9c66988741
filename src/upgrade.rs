//! Binary upgrade (SIGUSR2) with no connection refused or reset, as nginx's
//! `USR2`, HAProxy's `-x` and Pingora's `--upgrade` do it: the running
//! process starts the binary again (the file its command line names, now
//! the new build), handing it every listening socket, admin's too. Once the
//! new process serves, this one stops accepting and drains as on SIGTERM,
//! then exits 0.
//!
//! The sockets are never closed, so connections waiting in their queues are
//! accepted by whichever process accepts next, where two processes that
//! each bind the port (SO_REUSEPORT) would reset those waiting in the old
//! one's queues when it closes them. If the new process fails to start or
//! to serve in time, this one goes on serving as if nothing happened.

use std::ffi::OsString;
use std::io::{self, Read};
use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::server::inherit::{self, LISTEN_FDS, READY_FD};

/// How long the new process has to serve before it is stopped and the
/// upgrade given up.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot hand over the listening sockets: {0}")]
    Sockets(io::Error),
    #[error("cannot start {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("the new process (pid {pid}) exited before it served: {status}")]
    Exited { pid: u32, status: ExitStatus },
    #[error("the new process (pid {pid}) did not serve within {READY_WITHIN:?}; it was stopped")]
    Timeout { pid: u32 },
}

/// How to start this binary again.
#[derive(Debug)]
pub struct Relaunch {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Relaunch {
    /// Read at start: the path names the binary's file, which an upgrade
    /// replaces; asked later, the system names the deleted file instead.
    pub fn capture() -> io::Result<Relaunch> {
        Ok(Relaunch {
            exe: std::env::current_exe()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Starts the binary with `sockets` (each named for the listener it
    /// is), and waits until it serves. Returns its process id.
    pub async fn run(&self, sockets: Vec<(String, StdListener)>) -> Result<u32, UpgradeError> {
        let (ready, ready_tx) = pipe().map_err(UpgradeError::Sockets)?;
        let mut passed: Vec<RawFd> = sockets.iter().map(|(_, s)| s.as_raw_fd()).collect();
        passed.push(ready_tx.as_raw_fd());
        let mut command = Command::new(&self.exe);
        command
            .args(&self.args)
            .env(
                LISTEN_FDS,
                inherit::describe(sockets.iter().map(|(n, s)| (n.as_str(), s))),
            )
            .env(READY_FD, ready_tx.as_raw_fd().to_string())
            .stdin(Stdio::null());
        // SAFETY: between fork and exec the closure only calls fcntl, which
        // is async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for &fd in &passed {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| UpgradeError::Spawn {
            exe: self.exe.clone(),
            source,
        })?;
        // the new process holds them now; only it may write to the pipe
        drop(ready_tx);
        drop(sockets);
        let pid = child.id();
        tracing::info!(pid, exe = %self.exe.display(), "upgrade: started the new binary; waiting until it serves");
        let served = tokio::task::spawn_blocking(move || {
            let mut byte = [0u8; 1];
            // one byte once it serves; end of file if it exits first
            matches!(std::fs::File::from(ready).read(&mut byte), Ok(1))
        });
        match tokio::time::timeout(READY_WITHIN, served).await {
            Ok(Ok(true)) => {
                // reaped if it exits while this process still drains
                std::thread::spawn(move || child.wait());
                Ok(pid)
            }
            Ok(_) => {
                let status = tokio::task::spawn_blocking(move || child.wait())
                    .await
                    .map_err(|e| UpgradeError::Sockets(io::Error::other(e)))?
                    .map_err(UpgradeError::Sockets)?;
                Err(UpgradeError::Exited { pid, status })
            }
            Err(_) => {
                let _ = child.kill();
                std::thread::spawn(move || child.wait());
                Err(UpgradeError::Timeout { pid })
            }
        }
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened, and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
