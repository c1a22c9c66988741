//! `sessionlb demo`: three small backends on loopback, so that a newcomer
//! can watch the proxy balance requests with nothing else installed.

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

/// The configuration the demo proxy runs: round robin over `backends`,
/// embedded memory store.
pub fn config_text(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {{ addr = \"{b}\" }},"))
        .collect();
    format!(
        "[server]\nlisten = [\"{listen}\"]\nworkers = 1\n\n[pools.demo]\npolicy = \"round_robin\"\nbackends = [\n{}\n]\n",
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
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                };
                let text = format!(
                    "Hello from demo backend {number} ({addr}), request #{count} to this backend.\n\
                     You asked for {} {}; the proxy says you are {} (X-Forwarded-For), request id {}.\n",
                    req.method(),
                    req.uri(),
                    header("x-forwarded-for"),
                    header("x-request-id"),
                );
                let mut resp = Response::new(Full::new(Bytes::from(text)));
                resp.headers_mut()
                    .insert("x-backend", http::HeaderValue::from(number as u64));
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
