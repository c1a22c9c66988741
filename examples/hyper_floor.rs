//! The floor under sessionlb's request path: the smallest round-robin
//! HTTP/1 proxy built from the same parts (hyper 1's http1 server and
//! client, a per-thread pool of backend connections, a current_thread
//! runtime), with no routing, header rules, timers or accounting.
//!
//! `benches/load/instructions.sh` counts its instructions per request
//! beside sessionlb's and nginx's, so that what hyper and tokio cost and
//! what sessionlb adds can be told apart. Not a product: it panics on
//! errors and has no timeouts.
//!
//! ```sh
//! cargo run --release --example hyper_floor -- 127.0.0.1:8080 127.0.0.1:9001 127.0.0.1:9002
//! ```

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[path = "floor/mod.rs"]
mod floor;

thread_local! {
    static POOL: RefCell<Vec<Vec<SendRequest<Incoming>>>> = const { RefCell::new(Vec::new()) };
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

/// The backend's body, which gives its connection back to the pool at its end.
struct Pooled {
    inner: Incoming,
    lease: Option<(usize, SendRequest<Incoming>)>,
}

impl Pooled {
    fn release(&mut self) {
        if let Some((i, sender)) = self.lease.take() {
            POOL.with(|p| p.borrow_mut()[i].push(sender));
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() || self.inner.is_end_stream() {
            self.release();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn proxy(
    req: http::Request<Incoming>,
    backends: &'static [SocketAddr],
) -> Result<http::Response<Pooled>, hyper::Error> {
    let i = NEXT.with(|n| {
        let i = n.get();
        n.set((i + 1) % backends.len());
        i
    });
    let pooled = POOL.with(|p| p.borrow_mut()[i].pop());
    let mut sender = match pooled {
        Some(s) => s,
        None => {
            let stream = tokio::net::TcpStream::connect(backends[i])
                .await
                .expect("backend");
            stream.set_nodelay(true).expect("nodelay");
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    sender.ready().await?;
    let (parts, body) = sender.send_request(req).await?.into_parts();
    let mut body = Pooled {
        inner: body,
        lease: Some((i, sender)),
    };
    if body.inner.is_end_stream() {
        body.release();
    }
    Ok(http::Response::from_parts(parts, body))
}

fn main() {
    let (listen, backends) = floor::args("hyper_floor");
    POOL.with(|p| p.borrow_mut().resize_with(backends.len(), Vec::new));
    floor::serve("hyper_floor", listen, backends, proxy);
}
