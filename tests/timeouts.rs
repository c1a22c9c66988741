//! Every phase of a request has a timeout, through the real binary:
//! `response_header` from the request written (an upload may take longer),
//! `backend_io` for a backend that stalls mid-body or stops reading the
//! request, `client_io` for a client that stops sending its body or
//! stops reading the response, `tunnel_idle` for an upgraded connection,
//! and HTTP/2 connections closed for idleness say GOAWAY first.
//!
//! Lower bounds are measured from before the proxy's clock can start, so a
//! slow machine only makes them longer; upper bounds are generous.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::raw::{self, H2_GOAWAY, H2_HEADERS, H2_SETTINGS};
use support::{Backend, DEADLINE, Proxy, config, entry};

/// The proxy counts whole milliseconds: a deadline may fall up to one
/// before the exact instant.
const GRAIN: Duration = Duration::from_millis(1);

/// A backend that reads each request head (never a body), writes `reply`,
/// and then keeps the connection open without a further byte until the
/// proxy closes it. Counts the connections the proxy closed.
struct Staller {
    addr: SocketAddr,
    closed: Arc<AtomicU64>,
}

impl Staller {
    fn start(reply: &'static [u8]) -> Staller {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(AtomicU64::new(0));
        let count = closed.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let count = count.clone();
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    if stream.write_all(reply).is_err() {
                        return;
                    }
                    // read nothing more (a body the proxy sends piles up),
                    // and wait for the proxy's FIN or reset
                    wait_closed(&stream);
                    count.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Staller { addr, closed }
    }

    fn closed(&self) -> u64 {
        self.closed.load(Ordering::SeqCst)
    }
}

/// Blocks until the peer has closed `stream` (a FIN or a reset), however
/// much unread data is before it.
fn wait_closed(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let closed = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
    loop {
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for a socket this thread owns.
        let n = unsafe { libc::poll(&mut fd, 1, 1000) };
        if n < 0 || fd.revents & closed != 0 {
            return;
        }
    }
}

/// Reads from `s` until it closes or `limit` passes: the bytes, and
/// whether it closed.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(GRAIN))).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

fn status_of(bytes: &[u8]) -> u16 {
    std::str::from_utf8(bytes.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_response_header_timeout_runs_from_the_request_written_not_from_its_start() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[timeouts]\nresponse_header = \"1s\"\nclient_io = \"10s\"\n",
    ));
    // an upload that takes longer than response_header, sent in pieces
    // (this pacing is the slow client under test, not a synchronisation)
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 4000\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for _ in 0..4 {
        s.write_all(&[b'x'; 1000]).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(started.elapsed() > Duration::from_millis(1500));
    let (out, _) = read_to_close(&mut s, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\n4000"), "{text}");
}

#[test]
fn a_backend_that_stalls_mid_body_is_cut_and_the_client_sees_it() {
    let staller = Staller::start(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n11 bytes...");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[entry(staller.addr)],
        "[timeouts]\nbackend_io = \"1s\"\n",
    ));
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let (out, closed) = read_to_close(&mut s, DEADLINE);
    assert!(closed, "the client was held open by a stalled backend");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) - GRAIN, "{took:?}");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // the 11 bytes went through, and the response was cut, not completed
    assert!(text.ends_with("\r\n\r\n11 bytes..."), "{text}");
    assert!(
        support::eventually(DEADLINE, || staller.closed() == 1),
        "closed {}",
        staller.closed()
    );
}

#[test]
fn a_backend_that_stops_reading_the_request_body_gets_504() {
    // it reads the head and never the body, nor answers
    let staller = Staller::start(b"");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[entry(staller.addr)],
        "[timeouts]\nbackend_io = \"1s\"\nresponse_header = \"60s\"\n\n[pools.web.health]\nmax_fails = 0\n",
    ));
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    const LEN: usize = 32 * 1024 * 1024;
    s.write_all(format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {LEN}\r\n\r\n").as_bytes())
        .unwrap();
    // the body goes on in the background until the proxy stops taking it
    let mut writer = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..LEN / chunk.len() {
            if writer.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let (out, _) = read_to_close(&mut s, DEADLINE);
    assert_eq!(status_of(&out), 504, "{}", String::from_utf8_lossy(&out));
    assert!(
        String::from_utf8_lossy(&out).contains("the backend stopped reading the request"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        support::eventually(DEADLINE, || staller.closed() == 1),
        "closed {}",
        staller.closed()
    );
}

#[test]
fn a_client_that_stops_sending_its_body_gets_408_and_the_backend_is_released() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[timeouts]\nclient_io = \"1s\"\n",
    ));
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nonly this")
        .unwrap();
    let (out, closed) = read_to_close(&mut s, DEADLINE);
    let took = started.elapsed();
    assert_eq!(status_of(&out), 408, "{}", String::from_utf8_lossy(&out));
    assert!(closed, "the connection stays open after 408");
    assert!(took >= Duration::from_secs(1) - GRAIN, "{took:?}");
    // the backend's connection was closed, not kept with half a body
    assert!(support::eventually(DEADLINE, || b.in_flight() == 0));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_releases_its_backend() {
    let b = Backend::start("b");
    let proxy = Proxy::start(
        &config(
            "round_robin",
            &[b.entry()],
            "[timeouts]\nclient_io = \"1s\"\n",
        )
        .replacen(
            "workers = 1\n",
            "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
            1,
        ),
    );
    let pools = format!("http://{}/admin/pools", proxy.admin_addr());
    let in_flight = || async {
        let body = support::client::get(&support::client::h1(), &pools)
            .await
            .body;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["pools"][0]["backends"][0]["in_flight"]
            .as_u64()
            .unwrap()
    };
    // a big download the client never reads
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /download/1000000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(support::eventually_async(DEADLINE, || async { in_flight().await == 1 }).await);
    // the proxy gives up on it: the request ends, the backend is free
    assert!(
        support::eventually_async(DEADLINE, || async { in_flight().await == 0 }).await,
        "a client that does not read holds its backend"
    );
    // and its connection is closed: what it reads now ends
    let mut chunk = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(total < 1_000_000_000, "the whole body arrived");
    }
    let _ = s.shutdown(Shutdown::Both);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_tunnel_idle() {
    use tokio_tungstenite::tungstenite::Message;
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[timeouts]\ntunnel_idle = \"2s\"\n",
    ));
    let url = format!("ws://{}/ws", proxy.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // traffic every half second keeps it open well past the idle time
    // (the pauses are the traffic pattern under test)
    let mut last_sent = Instant::now();
    for _ in 0..6 {
        last_sent = Instant::now();
        ws.send(Message::text("ping")).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
        assert_eq!(echoed.unwrap().unwrap(), Message::text("ping"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // then silence: closed, and not sooner than the idle time after the
    // last traffic
    let end = tokio::time::timeout(DEADLINE, ws.next()).await;
    let end = end.expect("an idle tunnel stayed open");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(last_sent.elapsed() >= Duration::from_secs(2) - GRAIN);
}

#[test]
fn an_idle_http2_connection_says_goaway_before_it_closes() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[timeouts]\nidle = \"500ms\"\n",
    ));
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut hello = raw::H2_PREFACE.to_vec();
    hello.extend(raw::h2_frame(H2_SETTINGS, 0, 0, &[]));
    hello.extend(raw::h2_frame(
        H2_HEADERS,
        raw::H2_END_STREAM | raw::H2_END_HEADERS,
        1,
        &raw::hpack_get("t", "/"),
    ));
    s.write_all(&hello).unwrap();
    let mut goaway = None;
    loop {
        match raw::read_frame(&mut s) {
            Ok(frame) if frame.kind == H2_SETTINGS && frame.flags & raw::H2_ACK == 0 => {
                let _ = s.write_all(&raw::h2_frame(H2_SETTINGS, raw::H2_ACK, 0, &[]));
            }
            // a client answers the PING that comes with a graceful GOAWAY
            Ok(frame) if frame.kind == raw::H2_PING && frame.flags & raw::H2_ACK == 0 => {
                let ack = raw::h2_frame(raw::H2_PING, raw::H2_ACK, 0, &frame.payload);
                let _ = s.write_all(&ack);
            }
            Ok(frame) if frame.kind == H2_GOAWAY => goaway = Some(frame),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let goaway = goaway.expect("the connection closed without a GOAWAY");
    // the last one names stream 1, the one served, and NO_ERROR
    assert_eq!(&goaway.payload[..8], &[0, 0, 0, 1, 0, 0, 0, 0]);
}
