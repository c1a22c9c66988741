//! Limits, through the real binary: `max_body` (413, nginx's
//! client_max_body_size), `server.max_connections` (accepting pauses, and
//! resumes when a connection closes), and a process out of file
//! descriptors, which backs off with one log line instead of spinning.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use support::backend::TestBody;
use support::client::{self, get};
use support::{Backend, DEADLINE, Proxy, config, eventually};

/// Reads one response (head and a Content-Length body) from `s`.
fn response(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if support::raw::response_len(&out).is_some() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn bodies_over_max_body_get_413_whatever_their_framing() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], "max_body = \"1k\"\n"));
    // a declared length over the limit never reaches the backend
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n")
        .unwrap();
    let r = response(&mut s);
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(r.contains("connection: close"), "{r}");
    assert!(
        r.ends_with("413 Content Too Large: the request body exceeds this server's limit\n"),
        "{r}"
    );
    assert_eq!(b.hits(), 0);

    // a body of unknown length is cut where it goes over, HTTP/1.1 chunked
    // and HTTP/2 alike
    for h2 in [false, true] {
        let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(h2)
            .build_http::<TestBody>();
        let req = Request::post(proxy.url("/upload"))
            .body(TestBody::Unsized(64 * 1024))
            .unwrap();
        let resp = tokio::time::timeout(DEADLINE, c.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 413, "h2 {h2}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            Bytes::from_static(
                b"413 Content Too Large: the request body exceeds this server's limit\n"
            )
        );
    }

    // at the limit, it passes
    let c = client::h1();
    let req = Request::post(proxy.url("/upload"))
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    let r = client::send(&c, req).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "1024"));
}

#[test]
fn accepting_pauses_at_max_connections_and_resumes_when_one_closes() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], "").replacen(
        "workers = 1\n",
        "workers = 1\nmax_connections = 3\n",
        1,
    ));
    let request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut open: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr()).unwrap();
            s.write_all(request).unwrap();
            assert!(response(&mut s).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("server.max_connections reached"))
        .expect("no pause at max_connections");
    // the kernel completes the handshake; the proxy does not take it
    let mut fourth = TcpStream::connect(proxy.addr()).unwrap();
    fourth.write_all(request).unwrap();
    fourth.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        fourth.read(&mut byte).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "served over max_connections"
    );
    fourth.set_nonblocking(false).unwrap();
    // one closes: the fourth is taken and served
    drop(open.pop());
    assert!(response(&mut fourth).starts_with("HTTP/1.1 200"));
    assert!(
        proxy
            .stderr
            .wait_for(DEADLINE, |l| l.contains("accepting again"))
            .is_some()
    );
}

#[tokio::test]
async fn out_of_file_descriptors_the_listener_backs_off_and_says_so_once() {
    let b = Backend::start("b");
    let proxy = Proxy::start_with_fd_limit(&config("round_robin", &[b.entry()], ""), 48);
    // connections until the proxy cannot accept more
    let mut clients = Vec::new();
    for _ in 0..80 {
        if let Ok(s) = TcpStream::connect(proxy.addr()) {
            clients.push(s);
        }
    }
    let warned = proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("cannot accept connections"))
        .expect("the proxy never ran out of descriptors");
    assert!(
        warned.contains("listener=\"proxy\"") || warned.contains("listener=proxy"),
        "{warned}"
    );
    // closing them lets it accept again, and it serves; once it has been
    // able to for a while, it says so
    drop(clients);
    let served = || {
        let Ok(mut s) = TcpStream::connect(proxy.addr()) else {
            return false;
        };
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        response(&mut s).starts_with("HTTP/1.1 200")
    };
    assert!(eventually(DEADLINE, || served()
        && proxy
            .stderr
            .all()
            .iter()
            .any(|l| l.contains("accepting connections again"))));
    let r = get(&client::h1(), &proxy.url("/")).await;
    assert_eq!(r.status, 200);
    // one line for the whole episode, not one per failed accept
    let warnings = proxy
        .stderr
        .all()
        .iter()
        .filter(|l| l.contains("cannot accept connections"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", proxy.stderr.all());
}
