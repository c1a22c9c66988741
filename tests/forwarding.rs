//! Forwarding through the real binary: protocols, routes, headers,
//! streaming, upgrades and the proxy's own error answers.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::backend::TestBody;
use support::client::{self, get, get_with, raw};
use support::{Backend, Proxy, config};

#[tokio::test]
async fn http1_and_h2c_reach_the_backend() {
    let b = Backend::start("b1");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let r = get(&client::h1(), &proxy.url("/hello")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "b1");
    let r = get(&client::h2(), &proxy.url("/headers")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "b1");
    // the backend speaks HTTP/1.1 and sees an origin-form target with a Host
    assert!(r.body.contains("version: HTTP/1.1"), "{}", r.body);
    assert!(r.body.contains("uri: /headers\n"), "{}", r.body);
    assert!(
        r.body.contains(&format!("host: {}", proxy.addr())),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn forwarding_headers_and_hop_by_hop() {
    let b = Backend::start("b1");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let request = "GET /headers HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: keep-alive, X-Hop, close\r\n\
        Keep-Alive: timeout=5\r\n\
        X-Hop: secret\r\n\
        TE: trailers\r\n\
        Proxy-Connection: keep-alive\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X-Forwarded-Host: spoofed\r\n\
        X-Request-Id: req-42\r\n\
        X-End-To-End: yes\r\n\r\n";
    let out = raw(proxy.addr(), request.as_bytes(), support::DEADLINE).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap().to_lowercase();
    for gone in [
        "x-hop:",
        "keep-alive:",
        "te:",
        "proxy-connection:",
        "connection:",
    ] {
        assert!(
            !body.contains(&format!("\n{gone}")) && !body.starts_with(gone),
            "{gone} reached the backend:\n{body}"
        );
    }
    assert!(
        body.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.example\n"), "{body}");
    assert!(body.contains("x-request-id: req-42\n"), "{body}");
    assert!(body.contains("x-end-to-end: yes\n"), "{body}");
    assert!(body.contains("host: shop.example\n"), "{body}");

    // no id from the client: the proxy makes one
    let r = get(&client::h1(), &proxy.url("/headers")).await;
    let id = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));

    // the response's hop-by-hop headers stay on the backend's hop too
    let r = get(&client::h1(), &proxy.url("/hop-response")).await;
    assert!(r.headers.get("x-resp-hop").is_none(), "{:?}", r.headers);
    assert!(r.headers.get("keep-alive").is_none(), "{:?}", r.headers);
    assert_eq!(r.headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn routes_by_host_then_longest_prefix() {
    let web = Backend::start("web");
    let api = Backend::start("api");
    let shop = Backend::start("shop");
    let cfg = format!(
        r#"
[server]
listen = ["127.0.0.1:0"]
workers = 1

[pools.web]
backends = [{}]
[pools.api]
backends = [{}]
[pools.shop]
backends = [{}]

[[routes]]
path_prefix = "/"
pool = "web"
[[routes]]
path_prefix = "/api"
pool = "api"
[[routes]]
host = "shop.example.com"
pool = "shop"
"#,
        web.entry(),
        api.entry(),
        shop.entry()
    );
    let proxy = Proxy::start(&cfg);
    let c = client::h1();
    let via = |host: &'static str, path: &'static str| {
        let c = c.clone();
        let url = proxy.url(path);
        async move { get_with(&c, &url, &[("host", host)]).await.body }
    };
    assert_eq!(via("other.test", "/").await, "web");
    assert_eq!(via("other.test", "/api/users").await, "api");
    assert_eq!(via("SHOP.Example.com:8080", "/api/users").await, "shop");
    assert_eq!(via("shop.example.com", "/").await, "shop");
}

#[tokio::test]
async fn a_request_no_route_matches_gets_404() {
    let b = Backend::start("b");
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[pools.web]\nbackends = [{}]\n[[routes]]\nhost = \"only.test\"\npool = \"web\"\n",
        b.entry()
    );
    let proxy = Proxy::start(&cfg);
    let r = get_with(
        &client::h1(),
        &proxy.url("/"),
        &[("host", "elsewhere.test")],
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, "404 Not Found: no route for this host and path\n");
    assert_eq!(r.headers["content-type"], "text/plain; charset=utf-8");
}

#[tokio::test]
async fn malformed_requests_get_4xx_with_a_reason() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let t = Duration::from_secs(10);

    let out = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        t,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.ends_with("\r\n\r\n400 Bad Request: malformed request line or header\n"),
        "{out}"
    );

    let out = raw(
        proxy.addr(),
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        t,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.ends_with("400 Bad Request: HTTP/1.1 request without a Host header\n"),
        "{out}"
    );

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let out = raw(proxy.addr(), huge.as_bytes(), t).await;
    assert!(
        out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{out}"
    );
    assert!(out.contains("exceeds 64 KiB"), "{out}");

    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = raw(
        proxy.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
        t,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    let out = raw(
        proxy.addr(),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
        t,
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{out}"
    );
    assert!(
        out.ends_with("CONNECT is not proxied (sessionlb is a reverse proxy)\n"),
        "{out}"
    );
    assert_eq!(b.hits(), 0, "nothing malformed reached the backend");

    // a backend's own bodiless 400 passes through untouched
    let r = get(&client::h1(), &proxy.url("/status/400")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body, "status 400");
}

const BIG: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_256_mib_each_way_in_bounded_memory() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));

    // upload: the client streams zeros, the backend counts them
    let up: Client<_, TestBody> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/upload"))
        .body(TestBody::Zeros(BIG))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(300), up.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from(BIG.to_string()));

    // download: the backend streams, the client counts
    let down = client::h1();
    let req = Request::get(proxy.url(&format!("/download/{BIG}")))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(300), down.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, BIG);

    let peak = proxy.peak_rss_kib();
    eprintln!("proxy peak RSS after 2 x 256 MiB: {peak} KiB");
    assert!(peak > 0 && peak < 64 * 1024, "proxy peak RSS {peak} KiB");
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let url = format!("ws://{}/ws", proxy.addr());
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    use tokio_tungstenite::tungstenite::Message;
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echo = tokio::time::timeout(support::DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    let echo = tokio::time::timeout(support::DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().len(), 100_000);
    ws.close(None).await.unwrap();
}
