//! Timeouts, passive health, retries and the answers when backends fail.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::client::{self, get};
use support::{Backend, Blackhole, Proxy, Slammer, closed_within, config, entry};

#[tokio::test]
async fn connect_timeout_gives_504() {
    let hole = Blackhole::start();
    let proxy = Proxy::start(&config(
        "round_robin",
        &[entry(hole.addr)],
        "[timeouts]\nconnect = \"300ms\"\n",
    ));
    let started = Instant::now();
    let r = get(&client::h1(), &proxy.url("/")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(
        r.body,
        "504 Gateway Timeout: the backend did not accept the connection in time\n"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[tokio::test]
async fn connect_timeout_retries_on_another_backend() {
    let hole = Blackhole::start();
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[entry(hole.addr), b.entry()],
        "[timeouts]\nconnect = \"200ms\"\n",
    ));
    let client = client::h1();
    for _ in 0..4 {
        let r = get(&client, &proxy.url("/")).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"));
    }
}

#[tokio::test]
async fn response_header_timeout_gives_504() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        // passive health off: the one backend stays in use after a timeout;
        // the timeout leaves a loaded machine ample time for a plain answer
        "[pools.web.health]\nmax_fails = 0\n\n[timeouts]\nresponse_header = \"1s\"\n",
    ));
    // HTTP/1 (the connection's watchdog) and h2c (a timer per stream)
    for client in [client::h1(), client::h2()] {
        let r = get(&client, &proxy.url("/sleep/5000")).await;
        assert_eq!(r.status, 504);
        assert_eq!(
            r.body,
            "504 Gateway Timeout: the backend did not answer in time\n"
        );
        // the connection stays usable
        assert_eq!(get(&client, &proxy.url("/")).await.status, 200);
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

/// The proxy counts time in whole milliseconds: a deadline may fall up to
/// one before the exact instant.
const CLOCK_GRAIN: Duration = Duration::from_millis(1);

#[tokio::test]
async fn request_header_timeout_closes_a_slow_client() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[timeouts]\nrequest_header = \"500ms\"\nidle = \"60s\"\n",
    ));
    // headers that never end; the proxy's clock starts at accept, after
    // `started`, so however slow the machine the close cannot come sooner
    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("slow headers were not cut");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500) - CLOCK_GRAIN, "{took:?}");
    // a connection that sends nothing at all
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(10))
            .await
            .is_some()
    );
    assert_eq!(b.hits(), 0);

    // ...but an idle keep-alive connection is governed by `idle`, not by
    // request_header: it is still usable well after 500 ms
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(REQUEST).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(
        closed_within(&mut s, Duration::from_millis(1500))
            .await
            .is_none(),
        "idle connection closed early"
    );
    s.write_all(REQUEST).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn idle_timeout_closes_keepalive_connections() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[timeouts]\nidle = \"500ms\"\nrequest_header = \"10s\"\n",
    ));
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    // the connection is idle from the end of the response, after `started`
    let started = Instant::now();
    s.write_all(REQUEST).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("idle connection kept open");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500) - CLOCK_GRAIN, "{took:?}");
}

#[tokio::test]
async fn one_dead_backend_of_three_costs_no_errors() {
    let a = Backend::start("a");
    let c = Backend::start("c");
    let (dead, _port) = refused_addr();
    let proxy = Proxy::start(&config(
        "round_robin",
        &[a.entry(), entry(dead), c.entry()],
        "",
    ));
    let url = proxy.url("/");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = client::h1();
            let mut ok = 0;
            for _ in 0..100 {
                if get(&client, &url).await.status == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 1000);
    assert_eq!(a.hits() + c.hits(), 1000);
}

#[tokio::test]
async fn passive_health_takes_a_failing_backend_out_and_back() {
    const FAIL_TIMEOUT: Duration = Duration::from_secs(2);
    let bad = Slammer::start();
    let good = Backend::start("good");
    let proxy = Proxy::start(&with_admin(config(
        "round_robin",
        &[entry(bad.addr), good.entry()],
        "[pools.web.health]\nmax_fails = 2\nfail_timeout = \"2s\"\n",
    )));
    let pools = format!("http://{}/admin/pools", proxy.admin_addr());
    let admin = client::h1();
    let client = client::h1_fresh();
    let post = || {
        Request::post(proxy.url("/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // a POST is not sent twice: the client learns it failed
    let mut failures_sent = Vec::new();
    for posts in 1.. {
        assert!(
            posts <= 4,
            "round robin did not offer the bad backend twice"
        );
        let sent = Instant::now();
        let r = client::send(&client, post()).await;
        if r.status == 200 {
            assert_eq!(r.backend(), "good");
            continue;
        }
        assert_eq!(r.status, 502);
        assert_eq!(
            r.body,
            "502 Bad Gateway: the backend closed the connection or sent an invalid response\n"
        );
        failures_sent.push(sent);
        if failures_sent.len() == 2 {
            break;
        }
        assert!(
            backend_up(&admin, &pools, 0).await,
            "one failure of max_fails = 2 took it down"
        );
    }
    assert_eq!(bad.accepted(), 2);
    // two failures within fail_timeout took it down
    assert!(
        proxy
            .stderr
            .wait_for(support::DEADLINE, |l| l.contains("backend marked down"))
            .is_some()
    );
    // while the proxy says it is down, no request goes to it: each request
    // that ended before the proxy reported it up again went to `good`
    let came_back = loop {
        let r = client::send(&client, post()).await;
        if backend_up(&admin, &pools, 0).await {
            break Instant::now();
        }
        assert_eq!((r.status.as_u16(), r.backend().as_str()), (200, "good"));
        assert_eq!(
            bad.accepted(),
            2,
            "a request went to the backend while down"
        );
        assert!(
            failures_sent[1].elapsed() < support::DEADLINE,
            "never came back"
        );
    };
    // ...for fail_timeout: the penalty started after the second failing
    // request was sent, so however slow the machine it cannot end sooner
    let down_for = came_back - failures_sent[1];
    assert!(down_for >= FAIL_TIMEOUT - CLOCK_GRAIN, "{down_for:?}");
    // after fail_timeout it is tried again
    assert!(
        support::eventually_async(support::DEADLINE, || async {
            if bad.accepted() > 2 {
                return true;
            }
            get(&client, &proxy.url("/")).await;
            bad.accepted() > 2
        })
        .await
    );
    assert_eq!(bad.accepted(), 3);
}

/// A loopback address where connections are refused, with the socket that
/// keeps it so: bound but not listening, the port cannot be taken by a
/// backend of a test running alongside (as a port merely freed could).
fn refused_addr() -> (SocketAddr, socket2::Socket) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    (socket.local_addr().unwrap().as_socket().unwrap(), socket)
}

/// `config` with an admin listener.
fn with_admin(cfg: String) -> String {
    cfg.replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
}

/// Whether the proxy counts backend `i` of the first pool as up
/// (`/admin/pools`).
async fn backend_up(client: &client::HttpClient, pools: &str, i: usize) -> bool {
    let v: serde_json::Value = serde_json::from_str(&get(client, pools).await.body).unwrap();
    v["pools"][0]["backends"][i]["up"].as_bool().unwrap()
}

#[tokio::test]
async fn an_idempotent_request_a_backend_drops_is_sent_to_another() {
    let bad = Slammer::start();
    let good = Backend::start("good");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[entry(bad.addr), good.entry()],
        "[pools.web.health]\nmax_fails = 0\n",
    ));
    let client = client::h1_fresh();
    for _ in 0..10 {
        let r = get(&client, &proxy.url("/")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.backend(), "good");
    }
    // round robin offered the dropping backend half of them
    assert!(bad.accepted() >= 5, "{}", bad.accepted());
    assert_eq!(good.hits(), 10);
}

#[tokio::test]
async fn no_backend_up_gives_503_after_the_502() {
    let (dead, _port) = refused_addr();
    let proxy = Proxy::start(&config("round_robin", &[entry(dead)], ""));
    let client = client::h1();
    let r = get(&client, &proxy.url("/")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.body, "502 Bad Gateway: could not connect to a backend\n");
    let r = get(&client, &proxy.url("/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.body,
        "503 Service Unavailable: no backend is up to serve this request\n"
    );
}

#[tokio::test]
async fn all_draining_gives_503() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "least_conn",
        &[format!("{{ addr = \"{}\", drain = true }}", b.addr)],
        "",
    ));
    let r = get(&client::h1(), &proxy.url("/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_backend_killed_mid_run_costs_no_errors_to_the_next_requests() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[a.entry(), b.entry()], ""));
    let client = client::h1();
    for _ in 0..10 {
        assert_eq!(get(&client, &proxy.url("/")).await.status, 200);
    }
    b.kill();
    for _ in 0..50 {
        let r = get(&client, &proxy.url("/")).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "a"));
    }
}
