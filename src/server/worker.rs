//! A worker: one thread with a single-threaded tokio runtime and its own
//! listening sockets (SO_REUSEPORT), like an nginx worker process. The
//! request path never crosses threads, so the upstream connection pool and
//! the access-log buffer are thread-local and lock-free.

use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Acceptor;
use super::conn;
use super::listen::{Command, Key};
use super::tls::Terminator;
use crate::access_log;
use crate::proxy::upstream;
use crate::runtime::Shared;

/// Largest request head accepted (request line and headers): larger gets 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Shutdown, broadcast from the main thread to every worker and connection.
#[derive(Debug, Default)]
pub struct ShutdownSignal {
    fired: AtomicBool,
    notify: Notify,
}

impl ShutdownSignal {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_fired() {
            return;
        }
        notified.await;
    }
}

pub struct Worker {
    pub shared: Arc<Shared>,
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
    pub shutdown: Arc<ShutdownSignal>,
    open: AtomicUsize,
    drained: Notify,
}

/// Counts an open connection or tunnel for the duration of its life.
pub struct OpenGuard(Arc<Worker>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.shared.close();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

impl Worker {
    pub fn open(self: &Arc<Self>) -> OpenGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.shared.open();
        OpenGuard(self.clone())
    }

    /// A worker that runs no listener of its own, for the admin listener:
    /// its connections are then served by the same code, and bounded by
    /// the same timeouts, as client connections. They are not counted
    /// among the client connections open (`open` is never called).
    pub fn standalone(shared: Arc<Shared>) -> Arc<Worker> {
        Arc::new(Worker {
            shared,
            h1: h1_builder(),
            h2: h2_builder(),
            shutdown: Arc::new(ShutdownSignal::default()),
            open: AtomicUsize::new(0),
            drained: Notify::new(),
        })
    }

    async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

fn h1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    // hyper's own header-read timer would also run on idle keep-alive
    // connections and costs a timer per request; the connection watchdog
    // (conn.rs) enforces request_header and idle instead.
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    b
}

fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    b
}

thread_local! {
    /// Connections this worker parked since it last returned memory.
    static PARKED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts a connection whose hyper buffers were just freed.
pub fn note_parked() {
    PARKED.with(|p| p.set(p.get() + 1));
}

/// Freed buffers of parked connections sit in the allocator's free lists,
/// still resident; glibc gives such pages back only when asked.
fn return_memory() {
    if PARKED.with(|p| p.get()) < 64 {
        return;
    }
    PARKED.with(|p| p.set(0));
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One of a worker's listening sockets, and its TLS termination when it
/// is a `[[server.tls]]` listener.
pub struct Listener {
    pub key: Key,
    pub socket: StdListener,
    pub tls: Option<Terminator>,
}

/// Runs one worker until shutdown has been signalled and every connection
/// it owns has finished.
pub fn run(
    index: usize,
    commands: UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    shutdown: Arc<ShutdownSignal>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(worker = index, %error, "cannot start the worker's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let worker = Arc::new(Worker {
            shared,
            h1: h1_builder(),
            h2: h2_builder(),
            shutdown,
            open: AtomicUsize::new(0),
            drained: Notify::new(),
        });
        let housekeeping = tokio::spawn(housekeeping());
        let pool_watch = tokio::spawn(upstream::watch());
        control(index, &worker, commands).await;
        worker.drained().await;
        housekeeping.abort();
        pool_watch.abort();
        upstream::clear();
        access_log::flush();
    });
}

/// Starts and stops this worker's listeners as the server says, closes its
/// pooled connections to the backends a reload removed, until shutdown;
/// then stops every listener, whose connections finish their requests.
async fn control(index: usize, worker: &Arc<Worker>, mut commands: UnboundedReceiver<Command>) {
    let mut swaps = worker.shared.swaps();
    // each listener's own stop, which its connections follow too
    let mut running: Vec<(Key, Arc<ShutdownSignal>)> = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = worker.shutdown.wait() => break,
            Some(command) = commands.recv() => match command {
                Command::Start(listener) => match TcpListener::from_std(listener.socket) {
                    Ok(l) => {
                        let stop = Arc::new(ShutdownSignal::default());
                        running.push((listener.key, stop.clone()));
                        tokio::spawn(accept_loop(l, listener.tls, worker.clone(), stop));
                    }
                    Err(error) => {
                        tracing::error!(worker = index, %error, "cannot register a listener")
                    }
                },
                Command::Stop(key) => running.retain(|(k, stop)| {
                    let keep = *k != key;
                    if !keep {
                        stop.fire();
                    }
                    keep
                }),
            },
            Ok(()) = swaps.changed() => upstream::close_retired(),
        }
    }
    for (_, stop) in running {
        stop.fire();
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut tls: Option<Terminator>,
    worker: Arc<Worker>,
    shutdown: Arc<ShutdownSignal>,
) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut listener = Acceptor::new(listener, if tls.is_some() { "tls" } else { "proxy" });
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            () = worker.shared.room_for_connection() => {}
        }
        tokio::select! {
            biased;
            () = &mut stop => return,
            (stream, peer) = listener.accept() => {
                // counted now, before the next look at max_connections
                let open = worker.open();
                let stop = shutdown.clone();
                match tls.as_mut() {
                    None => tokio::spawn(conn::serve(stream, peer, worker.clone(), open, stop)),
                    Some(t) => {
                        let config = t.current(&worker.shared.load());
                        tokio::spawn(conn::serve_tls(stream, peer, worker.clone(), open, stop, config))
                    }
                };
            }
        }
    }
}

/// Periodic per-worker chores: write out the access log, close upstream
/// connections idle for too long.
async fn housekeeping() {
    let mut tick = tokio::time::interval(access_log::FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        access_log::flush();
        n += 1;
        if n.is_multiple_of(10) {
            return_memory();
        }
        if n.is_multiple_of(100) {
            upstream::sweep();
        }
    }
}
