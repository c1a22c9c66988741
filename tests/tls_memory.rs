//! Idle keep-alive connections over TLS (HTTP/1.1 by ALPN): parked after a
//! second of silence like plain ones, what stays is rustls's state, and
//! they serve again as soon as the client speaks, whether the request
//! comes whole, split, or right as the connection is parked.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use support::tls::{self, Ca, client_config};
use support::{Backend, DEADLINE, Proxy, config};

const CONNS: usize = 1000;
/// An idle TLS connection once parked: rustls's state (its 4 KiB read
/// buffer, keys, the connection itself) and the socket's task. Measured
/// here at 14.5-16.4 KiB with this many connections (fixed costs spread
/// over only 1000), and 13.3 KiB over 10,000 by benches/load/compare.py,
/// whose figure is the one the README gives beside nginx's. One that was
/// not parked keeps hyper's 16 KiB of buffers too (about 30 KiB).
const TARGET_KIB: f64 = 20.0;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

type Tls = TlsStream<TcpStream>;

/// Reads one response to [`REQUEST`] (the backend answers its name, "b":
/// the response ends with it); false if it does not come whole.
async fn response(s: &mut Tls) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    while !(got.starts_with(b"HTTP/1.1 200") && got.ends_with(b"\r\n\r\nb")) {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            Ok(Ok(_)) => return Err(format!("closed after {:?}", show(&got))),
            Ok(Err(e)) => return Err(format!("{e} after {:?}", show(&got))),
            Err(_) => return Err(format!("no whole response; got {:?}", show(&got))),
        }
    }
    Ok(())
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn exchange(s: &mut Tls) -> Result<(), String> {
    s.write_all(REQUEST).await.map_err(|e| e.to_string())?;
    response(s).await
}

/// The proxy with one TLS listener (`localhost`, signed by `ca`) and no
/// plain one, in front of `b`.
fn proxy(ca: &Ca, b: &Backend) -> Proxy {
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let cfg = config("round_robin", &[b.entry()], "[log]\naccess_log = false\n")
        .replacen("listen = [\"127.0.0.1:0\"]\n", "", 1)
        .replacen(
            "\n\n[pools.web]\n",
            "\n\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\n\
             certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\n\n[pools.web]\n",
            1,
        );
    Proxy::start_with_files(
        &cfg,
        &[
            ("site.pem", leaf.cert_pem().as_bytes()),
            ("site.key", leaf.key_pem().as_bytes()),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_keepalive_connections_are_parked_and_still_serve() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = (3 * CONNS as u64 + 100).min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    // each connection takes a descriptor here and one in the proxy
    let conns = CONNS.min((want as usize).saturating_sub(100) / 3).max(100);

    let b = Backend::start("b");
    let ca = Ca::new("sessionlb test root");
    let proxy = proxy(&ca, &b);
    let addr = proxy.tls_addr(0);
    let config = Arc::new(client_config(Some(&ca), &["http/1.1"], &[]));

    let mut warm = tls::connect(addr, "localhost", &config).await;
    assert_eq!(warm.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    exchange(&mut warm).await.unwrap();
    drop(warm);
    let before = proxy.rss_kib();

    let started = Instant::now();
    // a few handshakes at a time: the proxy's one worker has a core
    let mut open: Vec<Tls> = futures_util::stream::iter(0..conns)
        .map(|i| {
            let config = config.clone();
            async move {
                let mut s = tls::connect(addr, "localhost", &config).await;
                exchange(&mut s)
                    .await
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                s
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let opened = started.elapsed();
    // idle past the park time, every one of them: then what they cost
    // has settled (not the first reading under the target)
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let per_conn = || (proxy.rss_kib().saturating_sub(before)) as f64 / conns as f64;
    let parked = support::eventually(DEADLINE, || per_conn() <= TARGET_KIB);
    eprintln!(
        "{conns} idle TLS keep-alive connections (HTTP/1.1): {:.2} KiB each \
         (opened in {opened:.1?})",
        per_conn()
    );
    assert!(
        parked,
        "idle TLS connections still cost {:.2} KiB each (parked: under {TARGET_KIB} KiB)",
        per_conn()
    );

    // every parked connection serves its next request
    for (i, s) in open.iter_mut().enumerate() {
        exchange(s)
            .await
            .unwrap_or_else(|e| panic!("parked connection {i}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_request_split_around_the_park_moment_is_served_whole() {
    let b = Backend::start("b");
    let ca = Ca::new("sessionlb test root");
    let proxy = proxy(&ca, &b);
    let addr = proxy.tls_addr(0);
    let config = Arc::new(client_config(Some(&ca), &["http/1.1"], &[]));

    // Requests split around the park moment, on their own connections at
    // once: (a) idle past the park time, then a head in two writes;
    // (b) half a head, idle past the park time, the other half; (c) a head
    // in two records arriving from 0.9 s to 1.1 s after the last response,
    // 10 ms apart, around the moment the connection is parked.
    let idle_then_split = async {
        let mut s = tls::connect(addr, "localhost", &config).await;
        exchange(&mut s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"Host: localhost\r\n\r\n").await.unwrap();
        response(&mut s)
            .await
            .unwrap_or_else(|e| panic!("idle 1.5 s, then a head in two writes: {e}"));
    };
    let split_across_park = async {
        let mut s = tls::connect(addr, "localhost", &config).await;
        exchange(&mut s).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(b"st: localhost\r\n\r\n").await.unwrap();
        response(&mut s)
            .await
            .unwrap_or_else(|e| panic!("half a head, 1.5 s, the other half: {e}"));
    };
    let around_park = (0..21u64).map(|i| {
        let config = config.clone();
        async move {
            let mut s = tls::connect(addr, "localhost", &config).await;
            exchange(&mut s).await.unwrap();
            tokio::time::sleep(Duration::from_millis(900 + 10 * i)).await;
            // two TLS records, most often in one segment
            s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            s.write_all(b"Host: localhost\r\n\r\n").await.unwrap();
            response(&mut s).await.unwrap_or_else(|e| {
                panic!("a head {} ms after the last response: {e}", 900 + 10 * i)
            });
            // and the connection goes on serving
            exchange(&mut s).await.unwrap();
        }
    });
    tokio::join!(
        idle_then_split,
        split_across_park,
        futures_util::future::join_all(around_park)
    );
    assert!(
        proxy.stderr.all().iter().all(|l| !l.contains("panicked")),
        "{:#?}",
        proxy.stderr.all()
    );
}
