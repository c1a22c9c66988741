//! Idle keep-alive connections: parked after a second of silence, they
//! hold no HTTP buffers, and they serve again as soon as the client speaks.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Backend, Proxy, config};

const CONNS: usize = 2000;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

async fn exchange(s: &mut TcpStream) -> bool {
    if s.write_all(REQUEST).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    // the backend answers its name ("b"): the response ends with it
    while !(got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"\r\n\r\nb")) {
        match tokio::time::timeout(support::DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_cost_at_most_8_kib_and_still_serve() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (3 * CONNS as u64 + 100).min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    // each connection takes a descriptor here and one in the proxy
    let conns = CONNS.min((want as usize).saturating_sub(100) / 3).max(100);

    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[log]\naccess_log = false\n",
    ));
    let mut warm = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(exchange(&mut warm).await);
    drop(warm);
    let before = proxy.rss_kib();

    let mut open = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(exchange(&mut s).await);
        open.push(s);
    }
    let per_conn = || (proxy.rss_kib().saturating_sub(before)) as f64 / conns as f64;
    let parked = support::eventually(support::DEADLINE, || per_conn() <= 8.0);
    eprintln!(
        "{CONNS} idle keep-alive connections: {:.2} KiB each",
        per_conn()
    );
    assert!(
        parked,
        "idle connections still cost {:.2} KiB each",
        per_conn()
    );

    // every parked connection serves its next request
    for s in open.iter_mut() {
        assert!(exchange(s).await);
    }
    // and a request split around the park moment is served whole
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    assert!(exchange(&mut s).await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"Host: t\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(support::DEADLINE, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}
