//! What a reload does to what it removes: backends and listeners.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use support::client::{self, get};
use support::{Backend, DEADLINE, Proxy, eventually, raw};

/// A proxy with an admin listener over `backends`, with 2 workers (each has
/// its own pooled connections).
fn config(backends: &[&Backend], listen: &[String]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| format!("  {},", b.entry()))
        .collect();
    let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
    format!(
        "[server]\nlisten = [{}]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n\n\
         [pools.web]\nbackends = [\n{}\n]\n",
        listen.join(", "),
        list.join("\n")
    )
}

/// Writes `config` and reloads it by `POST /admin/reload`; panics when the
/// reload is refused.
async fn reload(proxy: &Proxy, config: &str) {
    let answer = proxy.reload_with(config).await;
    assert_eq!(answer.status, 200, "reload refused: {}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_finishes_its_requests_closes_its_idle_connections_and_is_forgotten() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let listen = ["127.0.0.1:0".to_string()];
    let proxy = Proxy::start(&config(&[&b], &listen));
    let url = proxy.url("/");

    // b gets idle pooled connections: several clients at once, so that
    // both workers pool some
    let clients: Vec<_> = (0..8).map(|_| client::h1_fresh()).collect();
    for _ in 0..3 {
        let answers = futures_util::future::join_all(clients.iter().map(|c| get(c, &url))).await;
        assert!(answers.iter().all(|r| r.status == 200 && r.body == "b"));
    }
    drop(clients);
    assert!(b.open_connections() >= 2, "{}", b.open_connections());
    let b_before = proxy
        .metric(&format!(
            "sessionlb_requests_total{{pool=\"web\",backend=\"{}\",code=\"200\"}}",
            b.addr
        ))
        .await;
    assert_eq!(b_before, 24.0);

    // a request in flight to b when the reload removes it
    let slow = {
        let url = proxy.url("/sleep/1500");
        tokio::spawn(async move { get(&client::h1_fresh(), &url).await })
    };
    assert!(eventually(DEADLINE, || b.in_flight() == 1));
    reload(&proxy, &config(&[&a], &listen)).await;

    // its idle pooled connections close at once, well before the request
    // in flight ends: only that one stays open
    assert!(
        eventually(Duration::from_millis(1200), || b.open_connections() == 1),
        "b still has {} connections open",
        b.open_connections()
    );
    assert_eq!(get(&client::h1(), &url).await.body, "a");
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.body, "b");
    // the connection that carried it is not pooled again
    assert!(
        eventually(DEADLINE, || b.open_connections() == 0),
        "b still has {} connections open",
        b.open_connections()
    );

    // nothing refers to b now: brought back, it starts anew
    reload(&proxy, &config(&[&a, &b], &listen)).await;
    let b_metric = format!(
        "sessionlb_requests_total{{pool=\"web\",backend=\"{}\",code=\"200\"}}",
        b.addr
    );
    assert_eq!(proxy.metric(&b_metric).await, 0.0);
    let client = client::h1();
    for _ in 0..4 {
        assert_eq!(get(&client, &url).await.status, 200);
    }
    assert_eq!(proxy.metric(&b_metric).await, 2.0);
}

/// A loopback address no one listens on now.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTP/2 connection with one `GET path` in flight.
fn h2_request(addr: SocketAddr, path: &str) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut hello = raw::H2_PREFACE.to_vec();
    hello.extend(raw::h2_frame(raw::H2_SETTINGS, 0, 0, &[]));
    hello.extend(raw::h2_frame(
        raw::H2_HEADERS,
        raw::H2_END_STREAM | raw::H2_END_HEADERS,
        1,
        &raw::hpack_get("t", path),
    ));
    s.write_all(&hello).unwrap();
    s
}

/// Reads an HTTP/2 connection to its end: the frames it got, in order.
fn h2_frames(mut s: std::net::TcpStream) -> Vec<raw::Frame> {
    let mut frames = Vec::new();
    loop {
        match raw::read_frame(&mut s) {
            Ok(frame) => {
                if frame.kind == raw::H2_SETTINGS && frame.flags & raw::H2_ACK == 0 {
                    let _ = s.write_all(&raw::h2_frame(raw::H2_SETTINGS, raw::H2_ACK, 0, &[]));
                }
                // a client answers the PING that comes with a graceful GOAWAY
                if frame.kind == raw::H2_PING && frame.flags & raw::H2_ACK == 0 {
                    let ack = raw::h2_frame(raw::H2_PING, raw::H2_ACK, 0, &frame.payload);
                    let _ = s.write_all(&ack);
                }
                frames.push(frame);
            }
            Err(_) => return frames,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_a_reload_adds_accepts_and_one_it_removes_finishes_its_requests_then_closes() {
    let b = Backend::start("b");
    let first = "127.0.0.1:0".to_string();
    let proxy = Proxy::start(&config(&[&b], std::slice::from_ref(&first)));
    let old = proxy.addr();
    let added = free_addr();
    reload(&proxy, &config(&[&b], &[first.clone(), added.to_string()])).await;
    let answer = get(&client::h1_fresh(), &format!("http://{added}/")).await;
    assert_eq!(answer.body, "b");
    assert!(
        proxy
            .stderr
            .all()
            .iter()
            .any(|l| l.contains(&format!("listening addr={added}")))
    );

    // on the listener about to go: an HTTP/1.1 and an HTTP/2 request in flight
    let mut h1 = std::net::TcpStream::connect(old).unwrap();
    h1.set_read_timeout(Some(DEADLINE)).unwrap();
    h1.write_all(b"GET /sleep/1000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let h2 = h2_request(old, "/sleep/1000");
    assert!(eventually(DEADLINE, || b.in_flight() == 2));
    reload(&proxy, &config(&[&b], &[added.to_string()])).await;

    // it accepts no more connections
    assert!(
        eventually(DEADLINE, || std::net::TcpStream::connect(old).is_err()),
        "{old} still accepts connections"
    );
    // the request in flight is answered, and then the connection closes
    let h1 = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let _ = h1.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    });
    let h1 = h1.await.unwrap();
    assert!(h1.starts_with("HTTP/1.1 200 OK\r\n"), "{h1}");
    assert!(
        h1.to_ascii_lowercase().contains("connection: close\r\n"),
        "{h1}"
    );
    // HTTP/2: GOAWAY naming stream 1, whose response still comes whole
    let frames = tokio::task::spawn_blocking(move || h2_frames(h2))
        .await
        .unwrap();
    let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
    let goaway = frames
        .iter()
        .position(|f| f.kind == raw::H2_GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY: {kinds:?}"));
    let last = &frames[goaway..]
        .iter()
        .rfind(|f| f.kind == raw::H2_GOAWAY)
        .unwrap()
        .payload;
    assert_eq!(&last[..8], &[0, 0, 0, 1, 0, 0, 0, 0], "{kinds:?}");
    let response_ended = frames.iter().any(|f| {
        f.stream == 1
            && (f.kind == raw::H2_DATA || f.kind == raw::H2_HEADERS)
            && f.flags & raw::H2_END_STREAM != 0
    });
    assert!(response_ended, "stream 1 was not answered whole: {kinds:?}");

    // the listener that stays serves on
    let answer = get(&client::h1_fresh(), &format!("http://{added}/")).await;
    assert_eq!(answer.body, "b");
    let closed = proxy.stderr.all().into_iter().any(|l| {
        l.contains("listener closed by the reload") && l.contains(&format!("addr={first}"))
    });
    assert!(closed, "{:#?}", proxy.stderr.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_use_refuses_the_reload_and_workers_wait_for_a_restart() {
    let b = Backend::start("b");
    let c = Backend::start("c");
    let first = "127.0.0.1:0".to_string();
    let proxy = Proxy::start(&config(&[&b], std::slice::from_ref(&first)));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();

    // the listener cannot be had: nothing of the file is applied
    let taking = config(&[&c], &[first.clone(), taken_addr.to_string()]);
    let answer = proxy.reload_with(&taking).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(
        answer
            .body
            .contains(&format!("server.listen[1]: cannot listen on {taken_addr}")),
        "{}",
        answer.body
    );
    assert_eq!(get(&client::h1(), &proxy.url("/")).await.body, "b");
    assert_eq!(
        proxy
            .metric("sessionlb_config_reloads_total{result=\"failure\"}")
            .await,
        1.0
    );

    // a change of workers is said to wait for a restart; the rest applies
    let one_worker =
        config(&[&c], std::slice::from_ref(&first)).replace("workers = 2", "workers = 1");
    reload(&proxy, &one_worker).await;
    assert_eq!(get(&client::h1(), &proxy.url("/")).await.body, "c");
    let said = proxy.stderr.all().into_iter().any(|l| {
        l.contains("takes effect at the next restart") && l.contains("setting=\"server.workers\"")
    });
    assert!(said, "{:#?}", proxy.stderr.all());
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_admin_listener() {
    let b = Backend::start("b");
    let listen = ["127.0.0.1:0".to_string()];
    let proxy = Proxy::start(&config(&[&b], &listen));
    let old = proxy.admin_addr();
    let moved = free_addr();
    reload(
        &proxy,
        &config(&[&b], &listen).replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"{moved}\""),
        ),
    )
    .await;
    let health = get(&client::h1_fresh(), &format!("http://{moved}/healthz")).await;
    assert_eq!(health.status, 200);
    let restart = proxy
        .stderr
        .all()
        .into_iter()
        .find(|l| l.contains("takes effect at the next restart"));
    assert_eq!(
        restart, None,
        "the move was applied, not left for a restart"
    );
    assert!(
        eventually(DEADLINE, || std::net::TcpStream::connect(old).is_err()),
        "the old admin address {old} still accepts connections"
    );
    // and the moved one reloads too
    std::fs::write(&proxy.config_path, "[server]\nlisten = [\"nowhere\"]\n").unwrap();
    let refused = support::admin_reload(moved).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
}
