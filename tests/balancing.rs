//! Policies, seen from outside: which backend answered each request.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use support::client::{self, HttpClient, get};
use support::{Backend, DEADLINE, Proxy, config, eventually_async};

#[tokio::test]
async fn weighted_round_robin_is_exact_and_interleaved() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let backends = [
        format!("{{ addr = \"{}\", weight = 1 }}", a.addr),
        format!("{{ addr = \"{}\", weight = 2 }}", b.addr),
        format!("{{ addr = \"{}\", weight = 3 }}", c.addr),
    ];
    let proxy = Proxy::start(&config("round_robin", &backends, ""));
    let client = client::h1();
    let mut order = String::new();
    for _ in 0..600 {
        order.push_str(&get(&client, &proxy.url("/")).await.body);
    }
    let count = |x: char| order.chars().filter(|&c| c == x).count();
    assert_eq!((count('a'), count('b'), count('c')), (100, 200, 300));
    // smooth: nginx's cycle is c b a c b c, so no backend ever gets three
    // requests in a row
    for run in ["aa", "bb", "ccc"] {
        assert!(!order.contains(run), "burst {run:?} in {}", &order[..60]);
    }
}

#[tokio::test]
async fn round_robin_skips_draining_backends() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let backends = [
        a.entry(),
        format!("{{ addr = \"{}\", drain = true }}", b.addr),
    ];
    let proxy = Proxy::start(&config("round_robin", &backends, ""));
    let client = client::h1();
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy.url("/")).await.body, "a");
    }
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_less_to_a_slow_backend() {
    // The slow backend answers only when the test lets it, the fast ones at
    // once: before each request the test waits until the proxy counts
    // exactly the requests the slow one holds, so least_conn's choice is
    // known.
    let slow = Gate::start("slow").await;
    let f1 = Backend::start("f1");
    let f2 = Backend::start("f2");
    let proxy = Proxy::start(&with_admin(config(
        "least_conn",
        &[slow.entry(), f1.entry(), f2.entry()],
        "",
    )));
    let pools = format!("http://{}/admin/pools", proxy.admin_addr());
    let client = &client::h1();
    let pools = pools.as_str();
    let url = proxy.url("/");
    let mut fast_picks = String::new();
    for period in 0..3 {
        // requests the slow backend holds: at most one, taken while it was idle
        let mut held = Vec::new();
        for i in 0..30 {
            let expected = [held.len() as u64, 0, 0];
            assert!(
                eventually_async(DEADLINE, || async move {
                    in_flight(client, pools).await == expected
                })
                .await,
                "in flight {:?}, expected {expected:?}",
                in_flight(client, pools).await
            );
            let before = slow.hits();
            let task = tokio::spawn({
                let (client, url) = (client.clone(), url.clone());
                async move { get(&client, &url).await }
            });
            assert!(
                eventually_async(DEADLINE, || {
                    let done = task.is_finished() || slow.held() > held.len() as u64;
                    async move { done }
                })
                .await,
                "request {i} neither answered nor held"
            );
            if slow.hits() > before {
                // only a tie (nothing in flight anywhere) may go to the slow one
                assert!(
                    held.is_empty(),
                    "period {period}, request {i}: chose the busy backend"
                );
                // ties go round robin: an idle slow backend is chosen within
                // three requests
                assert!(
                    i < 3,
                    "period {period}: the idle slow backend waited {i} requests"
                );
                held.push(task);
            } else {
                let r = task.await.unwrap();
                assert_eq!(r.status, 200);
                assert!(r.body == "f1" || r.body == "f2", "{}", r.body);
                fast_picks.push_str(&r.body[1..]);
            }
        }
        assert_eq!(held.len(), 1, "period {period}");
        // the slow backend finishes its request: idle again
        slow.release(1);
        let r = held.pop().unwrap().await.unwrap();
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "slow"));
        fast_picks.push('|');
    }
    // round robin would have given the slow one 30 of 90
    assert_eq!(slow.hits(), 3);
    assert_eq!(f1.hits() + f2.hits(), 87);
    // ties between the two idle fast backends go round robin: neither gets
    // three requests in a row
    for run in fast_picks.split('|') {
        assert!(!run.contains("111") && !run.contains("222"), "{fast_picks}");
    }
}

/// `config` with an admin listener.
fn with_admin(cfg: String) -> String {
    cfg.replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
}

/// Requests in flight at each backend of the first pool, as the proxy
/// counts them (`/admin/pools`).
async fn in_flight(client: &HttpClient, pools: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(&get(client, pools).await.body).unwrap();
    v["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["in_flight"].as_u64().unwrap())
        .collect()
}

/// A backend that holds every request until the test releases it, so the
/// test decides how long it stays busy. It answers `200` with its name.
/// Its tasks run on the test's runtime and end when it drops.
struct Gate {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    release: Arc<Semaphore>,
    accept: tokio::task::JoinHandle<()>,
}

impl Gate {
    async fn start(name: &'static str) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Semaphore::new(0));
        let accept = tokio::spawn({
            let (hits, held, release) = (hits.clone(), held.clone(), release.clone());
            async move {
                // dropped with this task: closes every connection
                let mut conns = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let (hits, held, release) = (hits.clone(), held.clone(), release.clone());
                    conns.spawn(async move {
                        let mut stream = BufReader::new(stream);
                        while read_request(&mut stream).await {
                            hits.fetch_add(1, Ordering::SeqCst);
                            held.fetch_add(1, Ordering::SeqCst);
                            release.acquire().await.unwrap().forget();
                            held.fetch_sub(1, Ordering::SeqCst);
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-backend: {name}\r\n\r\n{name}",
                                name.len()
                            );
                            if stream.get_mut().write_all(resp.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        });
        Gate {
            addr,
            hits,
            held,
            release,
            accept,
        }
    }

    fn entry(&self) -> String {
        support::entry(self.addr)
    }

    /// Requests received so far.
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Requests received and not yet answered.
    fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// Lets `n` held requests be answered.
    fn release(&self, n: usize) {
        self.release.add_permits(n);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one request (head and body); false when the connection ended.
async fn read_request(stream: &mut BufReader<TcpStream>) -> bool {
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    if chunked {
        // chunk sizes and data, then an empty trailer section
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return false;
            }
            let size =
                usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).unwrap_or(0);
            let mut rest = vec![0u8; size + 2];
            if size > 0 {
                if stream.read_exact(&mut rest).await.is_err() {
                    return false;
                }
                continue;
            }
            loop {
                let mut trailer = String::new();
                if stream.read_line(&mut trailer).await.unwrap_or(0) == 0 {
                    return false;
                }
                if trailer == "\r\n" {
                    return true;
                }
            }
        }
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.is_ok()
}
