//! A research prototype, not a product: hyper's http1 server for clients,
//! but a hand-written HTTP/1 exchange with the backends — the request head
//! written straight from the parsed request, the response head parsed once
//! with `httparse`, the body read in the same task. It handles only what
//! `benches/load/instructions.sh` sends (GET, Content-Length responses) and
//! panics or answers 502 on anything else.
//!
//! It measures what hyper's client side costs: `instructions.sh` counts it
//! beside `hyper_floor` (the same proxy with hyper's client) and sessionlb.
//!
//! ```sh
//! cargo run --release --example exchange_floor -- 127.0.0.1:8080 127.0.0.1:9001 127.0.0.1:9002
//! ```

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::body::Incoming;
#[path = "floor/mod.rs"]
mod floor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

thread_local! {
    static POOL: RefCell<Vec<Vec<(TcpStream, BytesMut)>>> = const { RefCell::new(Vec::new()) };
    static NEXT: Cell<usize> = const { Cell::new(0) };
}

const MAX_HEADERS: usize = 64;

async fn proxy(
    req: http::Request<Incoming>,
    backends: &'static [SocketAddr],
) -> io::Result<http::Response<Full<Bytes>>> {
    let i = NEXT.with(|n| {
        let i = n.get();
        n.set((i + 1) % backends.len());
        i
    });
    let (mut stream, mut buf) = match POOL.with(|p| p.borrow_mut()[i].pop()) {
        Some(pooled) => pooled,
        None => {
            let stream = TcpStream::connect(backends[i]).await?;
            stream.set_nodelay(true)?;
            (stream, BytesMut::with_capacity(8192))
        }
    };
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(req.method().as_str().as_bytes());
    head.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await?;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut headers);
        let status = parsed.parse(&buf).map_err(io::Error::other)?;
        if let httparse::Status::Complete(head_len) = status {
            // where each header is in `buf`, to cut it from the frozen message
            let base = buf.as_ptr() as usize;
            let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
            let mut body_len = 0usize;
            for (h, span) in parsed.headers.iter().zip(spans.iter_mut()) {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                *span = (name, h.name.len(), value, h.value.len());
            }
            let count = parsed.headers.len();
            let code = parsed.code.unwrap_or(502);
            while buf.len() < head_len + body_len {
                buf.reserve(8192);
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let message = buf.split_to(head_len + body_len).freeze();
            let mut map = http::HeaderMap::with_capacity(count);
            for &(name, name_len, value, value_len) in &spans[..count] {
                let Ok(name) = http::HeaderName::from_bytes(&message[name..name + name_len]) else {
                    continue;
                };
                if name == http::header::CONNECTION {
                    continue;
                }
                let value = message.slice(value..value + value_len);
                if let Ok(value) = http::HeaderValue::from_maybe_shared(value) {
                    map.append(name, value);
                }
            }
            let mut resp = http::Response::new(Full::new(message.slice(head_len..)));
            *resp.status_mut() =
                http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_GATEWAY);
            *resp.headers_mut() = map;
            POOL.with(|p| p.borrow_mut()[i].push((stream, buf)));
            return Ok(resp);
        }
        buf.reserve(8192);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn main() {
    let (listen, backends) = floor::args("exchange_floor");
    POOL.with(|p| p.borrow_mut().resize_with(backends.len(), Vec::new));
    floor::serve("exchange_floor", listen, backends, proxy);
}
