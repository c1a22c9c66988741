//! What the floor examples share: their command line and a hyper http1
//! server on one current_thread runtime, so that they differ only in how
//! they talk to the backends.

use std::future::Future;
use std::net::SocketAddr;

use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `LISTEN BACKEND...` from the command line; panics with the usage.
pub fn args(name: &str) -> (SocketAddr, &'static [SocketAddr]) {
    let usage = format!("usage: {name} LISTEN BACKEND...");
    let args: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect(&usage))
        .collect();
    let (listen, backends) = args.split_first().expect(&usage);
    assert!(!backends.is_empty(), "{usage}");
    (*listen, Vec::leak(backends.to_vec()))
}

/// Serves every client connection on `listen` with `proxy`.
pub fn serve<F, Fut, B, E>(
    name: &str,
    listen: SocketAddr,
    backends: &'static [SocketAddr],
    proxy: F,
) where
    F: Fn(http::Request<Incoming>, &'static [SocketAddr]) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, E>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        eprintln!("{name} listening on {listen}");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req| proxy(req, backends));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
