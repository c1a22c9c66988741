//! One client connection: its facts (peer, TLS), its request bookkeeping,
//! and the task that drives it with its two timers, request_header (the
//! slowloris guard) and idle (keep-alive).
//!
//! hyper's own header-read timer also runs while a keep-alive connection is
//! idle, which would cap `idle` at `request_header`; one watchdog timer per
//! connection tells the two apart instead. The events that move its
//! deadline (a response ends, a new request head starts) happen while the
//! connection task polls hyper, so the task re-arms the timer right after,
//! and only when the deadline moved earlier.
//!
//! An HTTP/1 connection idle for `PARK_AFTER` is parked: hyper is detached
//! from it (without closing the socket), which frees its read and write
//! buffers (16 KiB), and the socket waits for readability on its own. The
//! next request builds a new hyper connection over the same socket. An idle
//! keep-alive connection then costs about what nginx's does, instead of
//! hyper's buffers for as long as the client keeps it open.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::io::ClientIo;
use super::worker::{OpenGuard, ShutdownSignal, Worker};
use crate::clock;
use crate::config::Timeouts;
use crate::proxy;
use crate::runtime::Shared;

/// What the request path knows about the client connection.
pub struct Connection {
    pub peer: SocketAddr,
    /// The peer's IP address as text, formatted once: it goes into
    /// `X-Forwarded-For` and the access log of every request.
    pub peer_ip: HeaderValue,
    pub tls: bool,
    pub shared: Arc<Shared>,
    worker: Arc<Worker>,
    /// Requests whose response has not ended.
    active: AtomicU32,
    /// Requests whose response head hyper has not started writing.
    pending_heads: AtomicU32,
    /// When the head of the next request started arriving; 0 when none is.
    head_started_ms: AtomicU64,
    /// When the last response ended.
    idle_since_ms: AtomicU64,
    /// The watchdog's deadline may have moved earlier.
    rearm: AtomicBool,
    /// hyper is being detached from this idle connection.
    parking: AtomicBool,
    /// HTTP/2: streams run concurrently, each with its own timers.
    h2: bool,
    /// HTTP/1: when the response head of the request in progress is due
    /// (0: none), and whether it is late. The watchdog enforces it, so a
    /// request costs no timer of its own.
    response_due_ms: AtomicU64,
    response_late: AtomicBool,
    /// When a write to the client started to wait (its socket buffer full:
    /// it is not reading); 0 when none is waiting. Bounded by `client_io`.
    write_stalled_ms: AtomicU64,
    /// The session this connection's last request opened (shared-store
    /// mode).
    pub recall: crate::session::Recall,
}

impl Connection {
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.pending_heads.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(0, Ordering::Relaxed);
    }

    /// A response ended at `now_ms`.
    pub fn request_finished(&self, now_ms: u64) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since_ms.store(now_ms, Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    /// Keeps the worker (and so a graceful shutdown) waiting for an
    /// upgraded connection's tunnel.
    pub fn tunnel_guard(&self) -> OpenGuard {
        self.worker.open()
    }

    /// Bytes arrived from the client: if no request is in progress, they
    /// start the next request head and its request_header clock.
    pub(super) fn bytes_arrived(&self) {
        if self.active.load(Ordering::Relaxed) == 0
            && self.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.head_started_ms
                .store(clock::now_ms(), Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    /// Waits for `response` until `due_ms`; `None` when it is late.
    pub fn response_within<F: Future>(&self, due_ms: u64, response: F) -> ResponseWithin<'_, F> {
        if !self.h2 {
            self.response_late.store(false, Ordering::Relaxed);
            self.response_due_ms.store(due_ms, Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
        ResponseWithin {
            conn: self,
            due_ms,
            timer: None,
            response,
        }
    }

    /// A write to the client could not go out: from now on, `client_io`
    /// bounds how long the client may take to read. Reads the clock only
    /// when a stall starts.
    pub(super) fn write_stalled(&self) {
        if self.write_stalled_ms.load(Ordering::Relaxed) == 0 {
            self.write_stalled_ms
                .store(clock::now_ms(), Ordering::Relaxed);
            self.rearm.store(true, Ordering::Relaxed);
        }
    }

    /// A write to the client went out.
    pub(super) fn write_flowed(&self) {
        if self.write_stalled_ms.load(Ordering::Relaxed) != 0 {
            self.write_stalled_ms.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn is_parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// True when a response head of ours was due (and is now written).
    pub(super) fn take_pending_head(&self) -> bool {
        self.pending_heads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// When the watchdog must look next, and what it enforces then. Reads
    /// no clock: the events that move a deadline record their own time.
    /// With `park`, an idle connection is parked after `PARK_AFTER`
    /// (before it would be closed for idleness).
    fn next_deadline(&self, t: &Timeouts, park: bool) -> (u64, Due) {
        let own = self.own_deadline(t, park);
        match self.write_stalled_ms.load(Ordering::Relaxed) {
            0 => own,
            since => own.min((since + clock::millis(t.client_io), Due::ClientWrite)),
        }
    }

    /// [`Connection::next_deadline`] but for a write to the client that
    /// waits.
    fn own_deadline(&self, t: &Timeouts, park: bool) -> (u64, Due) {
        if self.active.load(Ordering::Relaxed) > 0 {
            return match self.response_due_ms.load(Ordering::Relaxed) {
                0 => (NEVER, Due::Busy),
                due => (due, Due::ResponseHeader),
            };
        }
        let head = self.head_started_ms.load(Ordering::Relaxed);
        if head != 0 {
            return (head + clock::millis(t.request_header), Due::RequestHeader);
        }
        let idle_since = self.idle_since_ms.load(Ordering::Relaxed);
        if park && PARK_AFTER < t.idle {
            (idle_since + clock::millis(PARK_AFTER), Due::Park)
        } else {
            (idle_since + clock::millis(t.idle), Due::Idle)
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Connection::response_within`]. Written out by hand
    /// so that it holds `F` once: it is part of every request's future,
    /// which is moved more than once.
    pub struct ResponseWithin<'a, F> {
        conn: &'a Connection,
        due_ms: u64,
        // HTTP/2 streams run concurrently, so each has a timer of its own
        // (boxed: HTTP/1 requests, the common case, need none).
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        #[pin]
        response: F,
    }
}

impl<F: Future> Future for ResponseWithin<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.response.poll(cx) {
            if !this.conn.h2 {
                this.conn.response_due_ms.store(0, Ordering::Relaxed);
            }
            return Poll::Ready(Some(out));
        }
        if !this.conn.h2 {
            // the connection's watchdog says when it is late
            return match this.conn.response_late.load(Ordering::Relaxed) {
                true => Poll::Ready(None),
                false => Poll::Pending,
            };
        }
        let due = *this.due_ms;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(clock::instant_at(due))));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A deadline that is not set.
const NEVER: u64 = u64::MAX;

/// When the watchdog's timer goes off for deadline `at`: with none set (a
/// request is busy), it looks again after `idle`.
fn arm_at(at: u64, now: u64, t: &Timeouts) -> u64 {
    if at == NEVER {
        now + clock::millis(t.idle)
    } else {
        at
    }
}

/// How long an HTTP/1 connection stays idle before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// What the watchdog enforces at its next deadline (ordered: of two
/// deadlines at the same time, the first here wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    RequestHeader,
    Idle,
    Park,
    /// The backend's response head is late: the request gives up (504),
    /// the connection stays.
    ResponseHeader,
    /// A request is in progress with no deadline of its own (its body is
    /// streaming): look again later.
    Busy,
    /// The client has not taken any of the response for `client_io`: it
    /// is closed, which releases the backend connection its response held.
    ClientWrite,
    /// An HTTP/1 connection idle since the stop sent no request in
    /// [`DRAIN_IDLE_MS`]: it is closed.
    Drained,
}

/// How long an HTTP/2 connection closed for idleness has, after its
/// `GOAWAY`, to close by itself.
const GOAWAY_GRACE_MS: u64 = 1000;

/// On shutdown, an upgrade's handover or a listener's removal, how long an
/// idle HTTP/1 connection may still send one more request, which is
/// answered with `Connection: close`. HTTP/1.1 has no GOAWAY: closing it at
/// once would fail a request the client sent just then, and a client in a
/// keep-alive loop always has one on its way.
const DRAIN_IDLE_MS: u64 = 1000;

/// Serves one accepted plain connection (HTTP/1.1, or h2c by its
/// preface) until it closes, times out, or the worker shuts down (then
/// in-flight requests finish first). `open` counts it from the moment it
/// was accepted.
///
/// Plain and TLS connections are separate tasks: a task is as large as
/// its largest state, and a plain connection must not carry room for a
/// TLS session it does not have.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    worker: Arc<Worker>,
    open: OpenGuard,
    stop: Arc<ShutdownSignal>,
) {
    let _open = open;
    let _ = stream.set_nodelay(true);
    let now = clock::now_ms();
    // A reload applies new timeouts to new connections.
    let timeouts = worker.shared.load().timeouts;
    let sniffed = sniff(&stream, &timeouts, now, &stop).await;
    let conn = Connection::new(peer, &worker, now, matches!(sniffed, Sniffed::Http2), false);
    let result = match sniffed {
        Sniffed::Http2 => serve_h2(stream, &conn, &worker, &timeouts, &stop).await,
        Sniffed::Http1 => serve_h1(stream, &conn, &worker, &timeouts, &stop, service).await,
        Sniffed::Gone => Ok(()),
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "client connection closed");
    }
}

/// [`serve`] for a connection to a TLS listener: the handshake, then
/// HTTP/2 or HTTP/1.1 as ALPN chose.
pub(super) async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    worker: Arc<Worker>,
    open: OpenGuard,
    stop: Arc<ShutdownSignal>,
    config: Arc<rustls::ServerConfig>,
) {
    let _open = open;
    let _ = stream.set_nodelay(true);
    let now = clock::now_ms();
    let timeouts = worker.shared.load().timeouts;
    let Some(stream) = handshake(stream, config, &timeouts, now, &stop).await else {
        return;
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let conn = Connection::new(peer, &worker, now, h2, true);
    let result = match h2 {
        true => serve_h2(stream, &conn, &worker, &timeouts, &stop).await,
        false => serve_h1(stream, &conn, &worker, &timeouts, &stop, service).await,
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "client connection closed");
    }
}

/// Serves one connection to the admin listener, HTTP/1.1 only, with the
/// service `make` builds: the same request_header and idle timeouts, and
/// parking, as a client connection, so that a half-sent request or an
/// idle keep-alive connection cannot hold it open forever. The service
/// calls [`Connection::request_started`] and
/// [`Connection::request_finished`] around each request, as the proxy does.
pub async fn serve_admin<M, S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    worker: Arc<Worker>,
    stop: Arc<ShutdownSignal>,
    make: M,
) where
    M: Fn(Arc<Connection>) -> S,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let _ = stream.set_nodelay(true);
    let now = clock::now_ms();
    let timeouts = worker.shared.load().timeouts;
    let conn = Connection::new(peer, &worker, now, false, false);
    let stream = AdminSocket(stream);
    if let Err(error) = serve_h1(stream, &conn, &worker, &timeouts, &stop, make).await {
        tracing::debug!(%peer, %error, "admin connection closed");
    }
}

/// An admin connection's socket: a type of its own so that hyper's HTTP/1
/// connection code is compiled apart for it. Sharing the proxy's plain
/// connections' instance gave those functions a second caller, and LTO
/// stopped inlining them into the request path (120 more instructions
/// per proxied request, measured with `benches/load/instructions.sh`).
struct AdminSocket(TcpStream);

impl AsyncRead for AdminSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for AdminSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl ClientStream for AdminSocket {
    fn socket(&self) -> &TcpStream {
        &self.0
    }
}

impl Connection {
    fn new(peer: SocketAddr, worker: &Arc<Worker>, now: u64, h2: bool, tls: bool) -> Arc<Self> {
        Arc::new(Connection {
            peer,
            peer_ip: HeaderValue::try_from(peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
            tls,
            shared: worker.shared.clone(),
            worker: worker.clone(),
            active: AtomicU32::new(0),
            pending_heads: AtomicU32::new(0),
            head_started_ms: AtomicU64::new(now),
            idle_since_ms: AtomicU64::new(now),
            rearm: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            h2,
            response_due_ms: AtomicU64::new(0),
            response_late: AtomicBool::new(false),
            write_stalled_ms: AtomicU64::new(0),
            recall: crate::session::Recall::default(),
        })
    }
}

/// The TLS handshake, within `request_header` of the accept (a client that
/// opens a connection and sends nothing is the same slowloris over TLS).
/// A stop does not cut it: the client may have sent its request already
/// (it has [`DRAIN_IDLE_MS`] more at most).
async fn handshake(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    t: &Timeouts,
    accepted_ms: u64,
    shutdown: &ShutdownSignal,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let deadline = clock::instant_at(accepted_ms + clock::millis(t.request_header));
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    let accept = tokio::time::timeout_at(deadline, accept);
    tokio::pin!(accept);
    let result = tokio::select! {
        done = &mut accept => done,
        () = shutdown.wait() => {
            let drained = tokio::time::Instant::now() + Duration::from_millis(DRAIN_IDLE_MS);
            match tokio::time::timeout_at(drained, accept).await {
                Ok(done) => done,
                Err(_) => return None,
            }
        }
    };
    let handshakes = &super::tls::HANDSHAKES;
    match result {
        Ok(Ok(stream)) => {
            handshakes.completed(stream.get_ref().1.handshake_kind());
            Some(stream)
        }
        Ok(Err(error)) => {
            handshakes.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            handshakes.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(timeout = ?t.request_header, "TLS handshake not done within timeouts.request_header");
            None
        }
    }
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum Sniffed {
    Http1,
    Http2,
    Gone,
}

/// Waits for the first bytes and tells HTTP/2 prior knowledge (h2c) from
/// HTTP/1 without consuming anything. A stop does not close a connection
/// just accepted at once: its request may be on its way, and closing a
/// socket with a request unread resets it. It gets [`DRAIN_IDLE_MS`] to
/// send one, as an idle keep-alive connection does.
async fn sniff(
    stream: &TcpStream,
    t: &Timeouts,
    accepted_ms: u64,
    shutdown: &ShutdownSignal,
) -> Sniffed {
    let mut deadline = clock::instant_at(accepted_ms + clock::millis(t.request_header));
    let mut stopped = false;
    let mut buf = [0u8; 24];
    loop {
        let peeked = tokio::select! {
            peeked = tokio::time::timeout_at(deadline, stream.peek(&mut buf)) => peeked,
            () = shutdown.wait(), if !stopped => {
                stopped = true;
                let drained = tokio::time::Instant::now() + Duration::from_millis(DRAIN_IDLE_MS);
                deadline = deadline.min(drained);
                continue;
            }
        };
        match peeked {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Sniffed::Gone,
            Ok(Ok(n)) if buf[..n] != H2_PREFACE[..n] => return Sniffed::Http1,
            Ok(Ok(24)) => return Sniffed::Http2,
            // a partial preface: wait for the rest of it
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

fn service(
    conn: Arc<Connection>,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = http::Response<proxy::ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<proxy::ProxyBody>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |req| proxy::handle(req, conn.clone()))
}

/// A client connection's byte stream: the TCP socket, or a stream (TLS)
/// over it. The connection is served the same over either; the socket is
/// still there to wait on while the connection is parked.
pub(super) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn socket(&self) -> &TcpStream;

    /// Whether the stream holds input it read from the socket and has not
    /// given out yet (a TLS record read ahead): a parked connection that
    /// waited on the socket then would wait for bytes already there.
    fn holds_input(&self) -> bool {
        false
    }
}

impl ClientStream for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

async fn serve_h2<S: ClientStream>(
    stream: S,
    conn: &Arc<Connection>,
    worker: &Worker,
    t: &Timeouts,
    stop: &ShutdownSignal,
) -> Result<(), String> {
    let io = TokioIo::new(ClientIo::new(stream, Bytes::new(), conn.clone(), true));
    // boxed, like the HTTP/1 connection, so that the task stays small
    let mut http = Box::pin(worker.h2.serve_connection(io, service(conn.clone())));
    drive(http.as_mut(), conn, t, stop, false).await.map(|_| ())
}

async fn serve_h1<C, M, S, B>(
    mut stream: C,
    conn: &Arc<Connection>,
    worker: &Worker,
    t: &Timeouts,
    stop: &ShutdownSignal,
    make: M,
) -> Result<(), String>
where
    C: ClientStream,
    M: Fn(Arc<Connection>) -> S,
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut leftover = Bytes::new();
    loop {
        let io = TokioIo::new(ClientIo::new(stream, leftover, conn.clone(), false));
        let mut http = Box::pin(
            worker
                .h1
                .serve_connection(io, make(conn.clone()))
                .with_upgrades(),
        );
        match drive(http.as_mut(), conn, t, stop, true).await? {
            Ended::Closed => return Ok(()),
            Ended::Parked => {}
        }
        let Some(parts) = Pin::into_inner(http).into_parts() else {
            return Ok(());
        };
        let (s, unread) = parts.io.into_inner().into_parts();
        stream = s;
        // Copied out: hyper's read buffer (8 KiB) must not outlive it, and
        // an empty `Bytes` cut from it would keep it alive all the same.
        leftover = match (parts.read_buf.is_empty(), unread.is_empty()) {
            (true, true) => Bytes::new(),
            _ => {
                let mut joined = BytesMut::with_capacity(parts.read_buf.len() + unread.len());
                joined.extend_from_slice(&parts.read_buf);
                joined.extend_from_slice(&unread);
                joined.freeze()
            }
        };
        drop(parts.read_buf);
        conn.parking.store(false, Ordering::Relaxed);
        super::worker::note_parked();
        if leftover.is_empty()
            && !stream.holds_input()
            && !wait_for_request(stream.socket(), conn, t, stop).await
        {
            return Ok(());
        }
    }
}

/// A parked connection waits for its next request (true) until it is idle
/// for too long, closed, or the worker shuts down (false).
async fn wait_for_request(
    stream: &TcpStream,
    conn: &Connection,
    t: &Timeouts,
    shutdown: &ShutdownSignal,
) -> bool {
    let idle_since = conn.idle_since_ms.load(Ordering::Relaxed);
    let deadline = clock::instant_at(idle_since + clock::millis(t.idle));
    tokio::select! {
        ready = tokio::time::timeout_at(deadline, stream.readable()) => matches!(ready, Ok(Ok(()))),
        () = shutdown.wait() => false,
    }
}

/// How a hyper connection ended.
enum Ended {
    /// The client closed, an error, an upgrade, or a shutdown.
    Closed,
    /// Detached from an idle socket that stays open.
    Parked,
}

/// Graceful close, for both protocols' connection types.
trait Graceful {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Drives one hyper connection with the watchdog (timeouts, parking) and
/// the worker's shutdown signal.
///
/// The task is woken for every read, write and response of the connection;
/// the watchdog's timer and the shutdown signal are registered with the
/// task's waker once (again only if the waker changes), and each wake-up
/// only reads two flags to see whether either fired.
async fn drive<C>(
    mut http: Pin<&mut C>,
    conn: &Connection,
    t: &Timeouts,
    shutdown: &ShutdownSignal,
    can_park: bool,
) -> Result<Ended, String>
where
    C: Future<Output = hyper::Result<()>> + Graceful,
{
    let (first, _) = conn.next_deadline(t, can_park);
    let mut armed = arm_at(first, clock::now_ms(), t);
    let watchdog = tokio::time::sleep_until(clock::instant_at(armed));
    tokio::pin!(watchdog);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut registered: Option<Waker> = None;
    let mut closing = false;
    let mut parking = false;
    // stopped while idle: until when it waits for one more request
    let mut draining: Option<u64> = None;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = http.as_mut().poll(cx) {
                return Poll::Ready(match result {
                    Ok(()) if parking => Ok(Ended::Parked),
                    Ok(()) => Ok(Ended::Closed),
                    Err(e) => Err(e.to_string()),
                });
            }
            let fresh = !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if fresh {
                registered = Some(cx.waker().clone());
            }
            // (a finished `stop` must not be polled again)
            let stopped = !closing
                && match fresh {
                    true => stop.as_mut().poll(cx).is_ready(),
                    false => shutdown.is_fired(),
                };
            if stopped {
                closing = true;
                parking = false;
                conn.parking.store(false, Ordering::Relaxed);
                if can_park && conn.active.load(Ordering::Relaxed) == 0 {
                    draining = Some(clock::now_ms() + DRAIN_IDLE_MS);
                    conn.rearm.store(true, Ordering::Relaxed);
                } else {
                    http.as_mut().close_gracefully();
                    continue;
                }
            }
            // a request came: hyper answers it with `Connection: close`
            if draining.is_some() && conn.active.load(Ordering::Relaxed) > 0 {
                draining = None;
                http.as_mut().close_gracefully();
                continue;
            }
            // The watchdog looks when its timer fires, or right away when
            // the deadline may have moved earlier (rearm).
            let rearm = conn.rearm.load(Ordering::Relaxed);
            if rearm {
                conn.rearm.store(false, Ordering::Relaxed);
            }
            let fired = match fresh {
                true => watchdog.as_mut().poll(cx).is_ready(),
                false => watchdog.is_elapsed(),
            };
            if !rearm && !fired {
                return Poll::Pending;
            }
            let (mut at, mut due) = conn.next_deadline(t, can_park && !closing && !parking);
            if let Some(until) = draining
                && until < at
            {
                (at, due) = (until, Due::Drained);
            }
            if fired {
                let now = clock::now_ms();
                if now >= at {
                    match due {
                        Due::Park => {
                            parking = true;
                            conn.parking.store(true, Ordering::Relaxed);
                            http.as_mut().close_gracefully();
                        }
                        // hyper polls the request again, which sees it is late
                        Due::ResponseHeader => {
                            conn.response_due_ms.store(0, Ordering::Relaxed);
                            conn.response_late.store(true, Ordering::Relaxed);
                        }
                        // an HTTP/2 client is told, with a GOAWAY, and has a
                        // moment to close by itself
                        Due::RequestHeader | Due::Idle if !can_park && !closing => {
                            closing = true;
                            http.as_mut().close_gracefully();
                            armed = now + GOAWAY_GRACE_MS;
                            watchdog.as_mut().reset(clock::instant_at(armed));
                            // registered for the grace period; the loop
                            // then polls hyper, which sends the GOAWAY
                            let _ = watchdog.as_mut().poll(cx);
                        }
                        Due::RequestHeader | Due::Idle | Due::ClientWrite => {
                            return Poll::Ready(Err(format!("{due:?} timeout")));
                        }
                        // a request head on its way: it is served first
                        Due::Drained if conn.head_started_ms.load(Ordering::Relaxed) != 0 => {
                            draining = Some(NEVER);
                        }
                        Due::Drained => {
                            draining = None;
                            http.as_mut().close_gracefully();
                        }
                        Due::Busy => {}
                    }
                    continue;
                }
                armed = arm_at(at, now, t);
            } else if at < armed {
                armed = at;
            } else {
                return Poll::Pending;
            }
            watchdog.as_mut().reset(clock::instant_at(armed));
            // register the timer for its new deadline; one already past
            // fires at once, and the loop looks again
            if watchdog.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await
}
