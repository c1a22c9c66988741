//! The HTTP/1.1 exchange with backends, through the real binary: every
//! body framing both ways, interim responses, answers that come before the
//! request body is read, broken responses, and pooled connections.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::backend::TestBody;
use support::client::{self, get};
use support::{Backend, Proxy, Scripted, config, entry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BodyClient = Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>;

fn body_client(h2: bool) -> BodyClient {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http()
}

/// Sends `body` to `url` and returns the status and the response body.
async fn post(client: &BodyClient, url: &str, body: TestBody) -> (u16, Bytes) {
    let req = Request::post(url).body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

#[tokio::test]
async fn response_bodies_of_every_framing_pass_through_on_one_connection() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let c = client::h1();

    let r = get(&c, &proxy.url("/chunked/100000")).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 100_000));
    assert!(r.headers.get("content-length").is_none());
    assert_eq!(r.headers["transfer-encoding"], "chunked");

    let r = get(&c, &proxy.url("/download/1000")).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 1000));
    assert_eq!(r.headers["content-length"], "1000");

    let head = Request::head(proxy.url("/download/1000"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(&c, head).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, ""));
    assert_eq!(r.headers["content-length"], "1000");

    for code in [204, 304] {
        let r = get(&c, &proxy.url(&format!("/status/{code}"))).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (code, ""));
    }
    let r = get(&c, &proxy.url("/chunked/0")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, ""));

    // every exchange ended cleanly, so one backend connection carried all
    assert_eq!(b.connections(), 1);
}

#[tokio::test]
async fn request_bodies_of_unknown_length_stream_while_the_response_does() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    const N: u64 = 32 * 1024 * 1024;
    for h2 in [false, true] {
        // the backend echoes as it reads: both directions must flow at
        // once, far beyond what socket buffers hold
        let (status, body) =
            post(&body_client(h2), &proxy.url("/echo"), TestBody::Unsized(N)).await;
        assert_eq!((status, body.len() as u64), (200, N), "h2 {h2}");
        assert!(body.iter().all(|&b| b == 0));
        // with a length, the length is passed on
        let (status, body) =
            post(&body_client(h2), &proxy.url("/upload"), TestBody::Zeros(N)).await;
        assert_eq!((status, body), (200, Bytes::from(N.to_string())), "h2 {h2}");
        let (status, body) = post(
            &body_client(h2),
            &proxy.url("/upload"),
            TestBody::Unsized(1),
        )
        .await;
        assert_eq!((status, body), (200, Bytes::from("1")), "h2 {h2}");
    }
}

#[tokio::test]
async fn a_backend_that_answers_before_reading_the_body_is_heard() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let c = body_client(false);
    let (status, body) = post(
        &c,
        &proxy.url("/early/413"),
        TestBody::Zeros(8 * 1024 * 1024),
    )
    .await;
    assert_eq!((status, &body[..]), (413, &b"status 413"[..]));
    // and the proxy still serves
    let r = get(&client::h1(), &proxy.url("/")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(support::DEADLINE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue\r\n"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    while !out.ends_with(b"\r\n\r\n5") {
        let n = tokio::time::timeout(support::DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
}

#[tokio::test]
async fn hand_written_framings_and_interim_responses() {
    let cases: [(&[u8], bool, &str); 3] = [
        // read until the backend closes
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close", true, "until close"),
        // interim responses before the final one are not passed on
        (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            false,
            "ok",
        ),
        // chunk extensions and trailers
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            false,
            "hello world",
        ),
    ];
    for (reply, close, expected) in cases {
        let s = Scripted::start(reply, close);
        let proxy = Proxy::start(&config("round_robin", &[entry(s.addr)], ""));
        let c = client::h1();
        for _ in 0..3 {
            let r = get(&c, &proxy.url("/")).await;
            assert_eq!((r.status.as_u16(), r.body.as_str()), (200, expected));
            assert!(r.headers.get("link").is_none());
        }
        // close-delimited answers cannot share a connection; the others do
        assert_eq!(s.accepted(), if close { 3 } else { 1 }, "{expected}");
    }
}

#[tokio::test]
async fn broken_responses_get_502() {
    let large = format!(
        "HTTP/1.1 200 OK\r\nX-Large: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let cases: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        large.as_bytes(),
    ];
    for reply in cases {
        let s = Scripted::start(reply, false);
        let proxy = Proxy::start(&config(
            "round_robin",
            &[entry(s.addr)],
            "[pools.web.health]\nmax_fails = 0\n",
        ));
        let r = get(&client::h1(), &proxy.url("/")).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&reply[..40]));
        assert_eq!(
            r.body,
            "502 Bad Gateway: the backend closed the connection or sent an invalid response\n"
        );
    }
}

#[tokio::test]
async fn a_truncated_body_is_not_passed_off_as_complete() {
    let s = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", true);
    let proxy = Proxy::start(&config("round_robin", &[entry(s.addr)], ""));
    let req = Request::get(proxy.url("/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    // the client sees its connection cut, at the head or in the body
    let complete = match client::h1().request(req).await {
        Ok(resp) => resp.into_body().collect().await.is_ok(),
        Err(_) => false,
    };
    assert!(!complete);
}

#[tokio::test]
async fn pooled_connections_the_backend_closed_are_retried_for_idempotent_requests() {
    // answers as if keeping the connection, then closes it
    let s = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
    let proxy = Proxy::start(&config(
        "round_robin",
        &[entry(s.addr)],
        "[pools.web.health]\nmax_fails = 1\n",
    ));
    let c = client::h1();
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
    }
    assert!(s.accepted() >= 20);
    // a closed pooled connection is not the backend failing
    let r = get(&c, &proxy.url("/")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_never_carries_a_post() {
    // answers as if keeping the connection, then closes it
    let s = Scripted::start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
    let proxy = Proxy::start(&config("round_robin", &[entry(s.addr)], ""));
    let c = client::h1();
    let post = || {
        Request::post(proxy.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for n in 1..=20 {
        let r = client::send(&c, post()).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
        // the proxy has seen the backend's close (and closed its end) before
        // the next request comes, however young the pooled connection: a
        // POST is never replayed, so only the pool's watch saves it from a
        // 502 (a FIN still on its way when a request comes is a race no
        // proxy can win for a POST)
        assert!(support::eventually(support::DEADLINE, || s.closed() == n));
    }
    assert_eq!(s.accepted(), 20);
}

#[tokio::test]
async fn a_client_still_uploading_reads_the_proxys_own_error() {
    // the backend drops the connection: the proxy answers 502 while the
    // client is still sending; the rest of the body is read and dropped
    // so that the client reads the answer rather than a reset
    let s = support::Slammer::start();
    let proxy = Proxy::start(&config("round_robin", &[entry(s.addr)], ""));
    let (status, body) = post(
        &body_client(false),
        &proxy.url("/upload"),
        TestBody::Zeros(8 * 1024 * 1024),
    )
    .await;
    assert_eq!(status, 502, "{body:?}");

    // the same for a request refused before any backend is chosen
    let b = Backend::start("b");
    let routed = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[pools.web]\nbackends = [{}]\n[[routes]]\nhost = \"only.test\"\npool = \"web\"\n",
        b.entry()
    );
    let proxy = Proxy::start(&routed);
    let (status, body) = post(
        &body_client(false),
        &proxy.url("/upload"),
        TestBody::Zeros(8 * 1024 * 1024),
    )
    .await;
    assert_eq!(status, 404, "{body:?}");
    assert_eq!(b.hits(), 0);
}
