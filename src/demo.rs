//! `sessionlb demo`: three small backends on loopback, so that a newcomer
//! can watch the proxy balance requests, and keep a login and a counter in
//! the shared store while the backends take turns, with nothing else
//! installed.
//!
//! The backends keep their session the way client-side session frameworks
//! do, in a cookie of their own (`demo_session=<user>.<count>`), and know
//! nothing of the proxy: the proxy takes the cookie off them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::server::Acceptor;

/// The demo backends' session cookie.
pub const APP_COOKIE: &str = "demo_session";

/// The configuration the demo proxy runs: round robin over `backends`,
/// the backends' cookie session in the embedded memory store, unsealed so
/// that `GET /admin/sessions/{id}` shows what the store holds.
pub fn config_text(listen: SocketAddr, admin: SocketAddr, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {{ addr = \"{b}\" }},"))
        .collect();
    format!(
        "[server]\nlisten = [\"{listen}\"]\nadmin_listen = \"{admin}\"\nworkers = 1\n\n\
         [pools.demo]\npolicy = \"round_robin\"\nbackends = [\n{}\n]\n\n\
         [pools.demo.session]\napp_cookie = \"{APP_COOKIE}\"\nencrypt = false\n",
        list.join("\n")
    )
}

/// Starts `n` demo backends on loopback in a background thread; returns
/// their addresses.
pub fn start_backends(n: usize) -> std::io::Result<Vec<SocketAddr>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listeners = runtime.block_on(async {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        Ok::<_, std::io::Error>(v)
    })?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::Builder::new()
        .name("sessionlb-demo".into())
        .spawn(move || {
            runtime.block_on(async move {
                for (i, listener) in listeners.into_iter().enumerate() {
                    tokio::spawn(serve_backend(i + 1, listener));
                }
                std::future::pending::<()>().await;
            });
        })?;
    Ok(addrs)
}

async fn serve_backend(number: usize, listener: TcpListener) {
    let served = Arc::new(AtomicU64::new(0));
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mut listener = Acceptor::new(listener, "demo backend");
    loop {
        let (stream, _) = listener.accept().await;
        let served = served.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let count = served.fetch_add(1, Ordering::Relaxed) + 1;
                let resp = answer(&req, number, &addr, count);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One demo backend's answer: `/login?user=NAME`, `/count` and `/logout`
/// keep a session in the `demo_session` cookie; anything else says hello.
fn answer(req: &Request<Incoming>, number: usize, addr: &str, count: u64) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let session = session_of(req);
    let (text, set_cookie) = match req.uri().path() {
        "/login" => {
            let user = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("user=")))
                .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_alphanumeric()))
                .unwrap_or("guest")
                .to_string();
            let text = format!("backend {number}: logged in as {user}, count 0\n");
            (
                text,
                Some(format!("{APP_COOKIE}={user}.0; Path=/; HttpOnly")),
            )
        }
        "/count" => match session {
            Some((user, n)) => (
                format!("backend {number}: {user}, count {}\n", n + 1),
                Some(format!("{APP_COOKIE}={user}.{}; Path=/; HttpOnly", n + 1)),
            ),
            None => (
                format!("backend {number}: not logged in (try /login?user=alice)\n"),
                None,
            ),
        },
        "/logout" => (
            format!("backend {number}: logged out\n"),
            Some(format!("{APP_COOKIE}=; Path=/; Max-Age=0")),
        ),
        _ => (
            format!(
                "Hello from demo backend {number} ({addr}), request #{count} to this backend.\n\
                 You asked for {} {}; the proxy says you are {} (X-Forwarded-For), request id {}.\n",
                req.method(),
                req.uri(),
                header("x-forwarded-for"),
                header("x-request-id"),
            ),
            None,
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut()
        .insert("x-backend", http::HeaderValue::from(number as u64));
    if let Some(v) = set_cookie.and_then(|c| http::HeaderValue::try_from(c).ok()) {
        resp.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    resp
}

/// The request's `demo_session=<user>.<count>`, as the backend reads it.
fn session_of(req: &Request<Incoming>) -> Option<(String, u64)> {
    req.headers()
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(APP_COOKIE)?.strip_prefix('='))
        .and_then(|v| v.rsplit_once('.'))
        .and_then(|(user, n)| Some((user.to_string(), n.parse().ok()?)))
}
