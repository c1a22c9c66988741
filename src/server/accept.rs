//! Accepting connections without spinning. An accept that fails for want
//! of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) fails again
//! at once until some connection closes: the listener backs off and
//! retries, says so once per episode rather than once per attempt, and
//! says when it accepts again. An episode ends after [`QUIET`] without a
//! failure: a listener that recovers one connection at a time while its
//! queue drains is one episode, not one per connection. Every listener
//! (workers, admin, demo) goes through here.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How long a listener that cannot accept waits before it tries again.
pub const BACKOFF: Duration = Duration::from_millis(100);
/// An episode of failed accepts ends when a connection is accepted this
/// long after the last failure.
pub const QUIET: Duration = Duration::from_secs(1);

pub struct Acceptor {
    listener: TcpListener,
    /// What the log calls this listener.
    what: &'static str,
    /// The episode of failed accepts under way (it was logged): when the
    /// last failure was, and how many there were.
    failing: Option<(Instant, u64)>,
}

impl Acceptor {
    pub fn new(listener: TcpListener, what: &'static str) -> Acceptor {
        Acceptor {
            listener,
            what,
            failing: None,
        }
    }

    /// The next connection. Cancel-safe: dropping the future loses no
    /// connection.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    if let Some((last, failures)) = self.failing
                        && last.elapsed() >= QUIET
                    {
                        self.failing = None;
                        tracing::info!(
                            listener = self.what,
                            failures,
                            "accepting connections again"
                        );
                    }
                    return accepted;
                }
                // that one connection is gone before it was accepted
                Err(error) if is_per_connection(&error) => {}
                Err(error) => {
                    let failures = match self.failing {
                        Some((_, n)) => n + 1,
                        None => {
                            tracing::warn!(
                                listener = self.what,
                                %error,
                                retry_every = ?BACKOFF,
                                "cannot accept connections (out of file descriptors or memory?); retrying until it can"
                            );
                            1
                        }
                    };
                    self.failing = Some((Instant::now(), failures));
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
