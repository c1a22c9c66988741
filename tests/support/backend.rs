//! Real HTTP backends for tests: small hyper servers, each on its own
//! thread and runtime, with a few behaviours chosen by path:
//!
//! - `/headers`: the request's headers, one `name: value` per line
//! - `/sleep/<ms>`: answers after that many milliseconds
//! - `/download/<bytes>`: streams that many bytes (with a Content-Length)
//! - `/chunked/<bytes>`: streams that many bytes without saying how many
//! - `/upload`: reads the body as it comes and answers its length
//! - `/echo`: streams the request body back as it reads it
//! - `/early/<code>`: answers that status at once, then reads the body
//! - `/status/<code>`: answers with that status
//! - `/ws`: WebSocket echo
//! - `/hop-response`: a response with hop-by-hop headers the proxy must drop
//! - `/set-cookie/<name>/<value>`: answers `Set-Cookie: <name>=<value>; Path=/app; HttpOnly`
//! - `/login`, `/count`: an app that keeps sessions in its own memory, as
//!   Express's MemoryStore or a servlet container: `/login` starts a session
//!   (cookie `sid`) with a counter at 0, each `/count` increments it and
//!   answers `count=<n>`; an unknown session gets 401
//! - `/healthz`: the health check, answered with the status
//!   [`Backend::set_health`] chose (200 at first), or never with
//!   [`Backend::hang_health`]; counted apart from the other requests
//! - anything else: its name
//!
//! Every response carries `x-backend: <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Stats {
    hits: AtomicU64,
    connections: AtomicU64,
    /// Connections open now (the client has not closed them).
    open: AtomicU64,
    in_flight: AtomicU64,
    sessions: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The status `/healthz` answers; 0: it never answers.
    health: AtomicU64,
    health_checks: AtomicU64,
    health_passes: AtomicU64,
    health_failures: AtomicU64,
    /// `health_passes` when the first other request came; MAX before.
    passes_before_first_hit: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            open: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            sessions: Default::default(),
            health: AtomicU64::new(200),
            health_checks: AtomicU64::new(0),
            health_passes: AtomicU64::new(0),
            health_failures: AtomicU64::new(0),
            passes_before_first_hit: AtomicU64::new(u64::MAX),
        }
    }
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Backend::serve_on(name, std_listener, Duration::ZERO)
    }

    /// A backend that waits `delay` before answering anything.
    pub fn start_slow(name: &str, delay: Duration) -> Backend {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Backend::serve_on(name, std_listener, delay)
    }

    /// Serves on a given address (to bring a backend back on its port).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let std_listener = std::net::TcpListener::bind(addr).unwrap();
        Backend::serve_on(name, std_listener, Duration::ZERO)
    }

    fn serve_on(name: &str, std_listener: std::net::TcpListener, delay: Duration) -> Backend {
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let name = name.to_string();
            let stats = stats.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept(listener, name, stats, delay) => {}
                    }
                });
            })
        };
        Backend {
            addr,
            name: name.to_string(),
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Requests this backend has answered (or started answering), but
    /// `/healthz`.
    pub fn hits(&self) -> u64 {
        self.stats.hits.load(Ordering::SeqCst)
    }

    /// The status `/healthz` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.stats.health.store(u64::from(status), Ordering::SeqCst);
    }

    /// From now on `/healthz` is never answered (the connection stays
    /// open), as a hung application.
    pub fn hang_health(&self) {
        self.stats.health.store(0, Ordering::SeqCst);
    }

    /// `/healthz` requests received so far.
    pub fn health_checks(&self) -> u64 {
        self.stats.health_checks.load(Ordering::SeqCst)
    }

    /// `/healthz` requests answered 2xx or 3xx so far.
    pub fn health_passes(&self) -> u64 {
        self.stats.health_passes.load(Ordering::SeqCst)
    }

    /// `/healthz` requests answered with another status so far.
    pub fn health_failures(&self) -> u64 {
        self.stats.health_failures.load(Ordering::SeqCst)
    }

    /// How many `/healthz` it had answered 2xx or 3xx when the first
    /// other request came; None before one came.
    pub fn passes_before_first_hit(&self) -> Option<u64> {
        match self.stats.passes_before_first_hit.load(Ordering::SeqCst) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Connections open now: the proxy's pooled ones among them.
    pub fn open_connections(&self) -> u64 {
        self.stats.open.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.stats.in_flight.load(Ordering::SeqCst)
    }

    pub fn entry(&self) -> String {
        super::entry(self.addr)
    }

    /// Stops listening and closes every connection, as a killed process.
    pub fn kill(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept(listener: TcpListener, name: String, stats: Arc<Stats>, delay: Duration) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stats.connections.fetch_add(1, Ordering::SeqCst);
        stats.open.fetch_add(1, Ordering::SeqCst);
        let name = name.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let open = stats.clone();
            let service = service_fn(move |req| handle(req, name.clone(), stats.clone(), delay));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
            open.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

type Resp = Response<TestBody>;

async fn handle(
    mut req: Request<Incoming>,
    name: String,
    stats: Arc<Stats>,
    delay: Duration,
) -> Result<Resp, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(health(&name, &stats).await);
    }
    let _ = stats.passes_before_first_hit.compare_exchange(
        u64::MAX,
        stats.health_passes.load(Ordering::SeqCst),
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    stats.hits.fetch_add(1, Ordering::SeqCst);
    stats.in_flight.fetch_add(1, Ordering::SeqCst);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (head, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let resp = match head {
        "headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("<binary>")));
            }
            text.push_str(&format!(
                "uri: {}\nversion: {:?}\n",
                req.uri(),
                req.version()
            ));
            full(&name, text)
        }
        "sleep" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(0))).await;
            full(&name, name.clone())
        }
        "download" => {
            let n: u64 = arg.parse().unwrap_or(0);
            let mut r = Response::new(TestBody::Zeros(n));
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            r
        }
        "chunked" => {
            let n: u64 = arg.parse().unwrap_or(0);
            let mut r = Response::new(TestBody::Unsized(n));
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            r
        }
        "echo" => {
            let mut r = Response::new(TestBody::Echo(req.into_body()));
            r.headers_mut().insert("x-backend", name.parse().unwrap());
            r
        }
        "early" => {
            // the body is read only after the answer has gone, and dropped
            // (as a server with a lingering close does)
            let mut body = req.into_body();
            tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
            let mut r = full(&name, format!("status {arg}"));
            *r.status_mut() = StatusCode::from_u16(arg.parse().unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        "upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => break,
                }
            }
            full(&name, n.to_string())
        }
        "status" => {
            let mut r = full(&name, format!("status {arg}"));
            *r.status_mut() = StatusCode::from_u16(arg.parse().unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            r
        }
        "ws" => websocket(&mut req, &name),
        "set-cookie" => {
            let (cookie, value) = arg.split_once('/').unwrap_or((arg, ""));
            let mut r = full(&name, "cookie set".into());
            r.headers_mut().insert(
                "set-cookie",
                format!("{cookie}={value}; Path=/app; HttpOnly")
                    .parse()
                    .unwrap(),
            );
            r
        }
        "login" => {
            let sid = format!("{}-{:016x}", name, fastrand_u64());
            stats.sessions.lock().unwrap().insert(sid.clone(), 0);
            let mut r = full(&name, "logged in".into());
            r.headers_mut()
                .insert("set-cookie", format!("sid={sid}; Path=/").parse().unwrap());
            r
        }
        "count" => {
            let sid = cookie_value(req.headers(), "sid");
            let mut sessions = stats.sessions.lock().unwrap();
            match sid.and_then(|sid| sessions.get_mut(&sid)) {
                Some(n) => {
                    *n += 1;
                    full(&name, format!("count={n}"))
                }
                None => {
                    let mut r = full(&name, "no session".into());
                    *r.status_mut() = StatusCode::UNAUTHORIZED;
                    r
                }
            }
        }
        "hop-response" => {
            let mut r = full(&name, "hop".into());
            let h = r.headers_mut();
            h.insert("connection", "x-resp-hop".parse().unwrap());
            h.insert("x-resp-hop", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-end-to-end", "kept".parse().unwrap());
            r
        }
        _ => full(&name, name.clone()),
    };
    stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    Ok(resp)
}

/// `/healthz`: the status chosen when the request came, counted once
/// answered (a check is counted before its answer can be seen).
async fn health(name: &str, stats: &Stats) -> Resp {
    let status = stats.health.load(Ordering::SeqCst) as u16;
    stats.health_checks.fetch_add(1, Ordering::SeqCst);
    if status == 0 {
        // long past any check's timeout: the proxy gives up first
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match status.is_success() || status.is_redirection() {
        true => stats.health_passes.fetch_add(1, Ordering::SeqCst),
        false => stats.health_failures.fetch_add(1, Ordering::SeqCst),
    };
    let mut r = full(name, format!("health {}", status.as_u16()));
    *r.status_mut() = status;
    r
}

fn cookie_value(headers: &hyper::HeaderMap, name: &str) -> Option<String> {
    headers.get_all("cookie").iter().find_map(|v| {
        v.to_str().ok()?.split(';').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    })
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

fn full(name: &str, text: String) -> Resp {
    let mut r = Response::new(TestBody::Full(Full::new(Bytes::from(text))));
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r
}

fn websocket(req: &mut Request<Incoming>, name: &str) -> Resp {
    let Some(headers) = websocket_echo(req, name) else {
        return full(name, "not a websocket request".into());
    };
    let mut r = Response::new(TestBody::Full(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *r.headers_mut() = headers;
    r
}

/// Accepts a WebSocket upgrade (this module's backend's, and the HTTPS
/// test backend's): spawns an echo of every text and binary message on
/// the upgraded connection, and gives the `101` response's headers. `None`
/// when the request is no WebSocket handshake.
pub fn websocket_echo(req: &mut Request<Incoming>, name: &str) -> Option<http::HeaderMap> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let key = req.headers().get("sec-websocket-key").cloned()?;
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    let mut h = http::HeaderMap::new();
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    h.insert("x-backend", name.parse().unwrap());
    Some(h)
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A small body or a stream of zeros of a given length, produced chunk by
/// chunk so that the backend never holds it whole.
pub enum TestBody {
    Full(Full<Bytes>),
    Zeros(u64),
    /// Zeros whose length the body does not tell (sent chunked).
    Unsized(u64),
    /// A request body, passed on as it comes.
    Echo(Incoming),
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            TestBody::Full(f) => Pin::new(f).poll_frame(cx),
            TestBody::Zeros(left) | TestBody::Unsized(left) => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(ZEROS.len() as u64) as usize;
                *left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))))
            }
            TestBody::Echo(body) => loop {
                match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Err(_) => continue,
                    },
                    Some(Err(_)) | None => return Poll::Ready(None),
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(f) => f.is_end_stream(),
            TestBody::Zeros(left) | TestBody::Unsized(left) => *left == 0,
            TestBody::Echo(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            TestBody::Full(f) => f.size_hint(),
            TestBody::Zeros(left) => hyper::body::SizeHint::with_exact(*left),
            TestBody::Unsized(_) | TestBody::Echo(_) => hyper::body::SizeHint::default(),
        }
    }
}
