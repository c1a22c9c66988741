//! A flood of cookieless requests to a page that starts a session: each
//! request makes a session nobody comes back for, and the users signed in
//! before it must still be signed in after it (their requests reach the
//! app with their app cookie). Against the embedded memory store at a
//! small `max_size` (the flood's sessions are evicted, and counted,
//! instead), and against Redis at a small `maxmemory`, with each of the
//! eviction policies an operator runs it with.
//!
//! The app is the test backend's `/login` (a session of its own, cookie
//! `sid`, Path=/) and `/count` (that session's counter; 401 without it).
//! The flood is many kept-alive HTTP/1.1 connections written by hand, so
//! that the test's client costs little beside the proxy's debug build.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use support::redis::Redis;
use support::{DEADLINE, Proxy, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const EVICTIONS: &str = "sessionlb_session_store_evictions_total";
const CREATED: &str = "sessionlb_sessions_created_total";

/// The backend's name, which its `/login` puts in the session cookie it
/// sets (`sid=<name>-<16 hex digits>`): a 200-byte app cookie.
fn backend_name() -> String {
    "b".repeat(200 - 17)
}

const COOKIE_LEN: u64 = 200;
const USERS: usize = 50;
const MAX_SIZE: u64 = 2 << 20;

/// One pool over `backend` in shared-store mode (app cookie `sid`, and
/// `session` lines), `[store]` as `store` says, two workers and an admin
/// listener.
fn flood_config(backend: &support::Backend, session: &str, store: &str) -> String {
    config(
        "round_robin",
        &[backend.entry()],
        &format!("[pools.web.session]\napp_cookie = \"sid\"\n{session}\n\n[store]\n{store}\n"),
    )
    .replace(
        "workers = 1\n",
        "workers = 2\nadmin_listen = \"127.0.0.1:0\"\n",
    )
}

/// The memory store at `max_size`.
fn memory(max_size: &str) -> String {
    format!("kind = \"memory\"\nmax_size = \"{max_size}\"\n")
}

/// An answer as the test needs it.
struct Answer {
    status: u16,
    /// The `slb_sid` ticket it set, if any.
    ticket: Option<String>,
    body: String,
}

/// A kept-alive HTTP/1.1 connection to the proxy.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn::open_from(addr, IpAddr::from([127, 0, 0, 1])).await
    }

    /// From the loopback address `source`: another client, as the proxy
    /// counts clients.
    async fn open_from(addr: SocketAddr, source: IpAddr) -> Conn {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source, 0)).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// `GET path`, with the ticket if any; the answer.
    async fn get(&mut self, path: &str, ticket: Option<&str>) -> Answer {
        let cookie = ticket.map_or(String::new(), |t| format!("cookie: slb_sid={t}\r\n"));
        let request = format!("GET {path} HTTP/1.1\r\nhost: flood\r\n{cookie}\r\n");
        self.stream.write_all(request.as_bytes()).await.unwrap();
        tokio::time::timeout(DEADLINE, self.answer())
            .await
            .expect("no answer in time")
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn answer(&mut self) -> Answer {
        let head_len = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
        let status = head[9..12].parse().unwrap();
        let (mut length, mut ticket) = (0, None);
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap();
            } else if name.eq_ignore_ascii_case("set-cookie")
                && let Some(rest) = value.strip_prefix("slb_sid=")
            {
                ticket = Some(rest.split(';').next().unwrap().to_string());
            }
        }
        while self.buf.len() < head_len + length {
            self.fill().await;
        }
        let body = String::from_utf8_lossy(&self.buf[head_len..head_len + length]).into_owned();
        self.buf.drain(..head_len + length);
        Answer {
            status,
            ticket: ticket.filter(|t| !t.is_empty()),
            body,
        }
    }
}

/// `requests` cookieless `GET /login` over `connections` connections at
/// once, spread over the client addresses `sources`; how many answers gave
/// a new session's ticket.
async fn flood(addr: SocketAddr, requests: usize, connections: usize, sources: &[IpAddr]) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let next = next.clone();
            let source = sources[i % sources.len()];
            tokio::spawn(async move {
                let mut conn = Conn::open_from(addr, source).await;
                let mut tickets = 0;
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let r = conn.get("/login", None).await;
                    assert_eq!(r.status, 200, "{}", r.body);
                    tickets += usize::from(r.ticket.is_some());
                }
                tickets
            })
        })
        .collect();
    let mut tickets = 0;
    for task in tasks {
        tickets += task.await.unwrap();
    }
    tickets
}

/// Signs `USERS` users in, each seen twice (the login, then a request
/// with the ticket); their tickets.
async fn sign_in(conn: &mut Conn) -> Vec<String> {
    let mut tickets = Vec::new();
    for user in 0..USERS {
        let login = conn.get("/login", None).await;
        let ticket = login.ticket.expect("a ticket for the login");
        let back = conn.get("/count", Some(&ticket)).await;
        assert_eq!(back.body, "count=1", "user {user} signed in");
        tickets.push(ticket);
    }
    tickets
}

/// Asks each user's session for its counter again: every one of them must
/// be there.
async fn assert_still_signed_in(conn: &mut Conn, tickets: &[String]) {
    let mut logged_out = Vec::new();
    for (user, ticket) in tickets.iter().enumerate() {
        let r = conn.get("/count", Some(ticket)).await;
        if r.body != "count=2" {
            logged_out.push((user, r.status, r.body));
        }
    }
    assert!(
        logged_out.is_empty(),
        "{} of {USERS} users signed in before the flood were logged out by it: {logged_out:?}",
        logged_out.len()
    );
}

/// The flood every test here sends: 100,000 requests.
const FLOOD: usize = 100_000;

/// The memory store evicts the flood's one-shot sessions, never a session
/// in use while one-shot ones remain (its probation segment).
#[tokio::test]
async fn a_flood_of_new_sessions_logs_no_one_out() {
    let backend = support::Backend::start(&backend_name());
    let proxy = Proxy::start(&flood_config(&backend, "", &memory("2m")));
    let mut conn = Conn::open(proxy.addr()).await;
    let tickets = sign_in(&mut conn).await;

    let started = Instant::now();
    let made = flood(proxy.addr(), FLOOD, 32, &[IpAddr::from([127, 0, 0, 1])]).await;
    eprintln!(
        "{FLOOD} cookieless requests, each a new session, in {:.1?}",
        started.elapsed()
    );
    assert_eq!(made, FLOOD, "every flood request got a session");
    assert_still_signed_in(&mut conn, &tickets).await;

    // the store holds at most max_size bytes, each session at least its
    // 22-byte id and the app's cookie: the rest of the flood was evicted
    let created = proxy.metric(CREATED).await as u64;
    assert_eq!(created, (USERS + FLOOD) as u64);
    let held_at_most = MAX_SIZE / (22 + COOKIE_LEN);
    let evicted = proxy.metric(EVICTIONS).await as u64;
    assert!(
        evicted >= FLOOD as u64 - held_at_most && evicted <= FLOOD as u64,
        "{evicted} evictions counted for a flood of {FLOOD} sessions in a store that holds at most {held_at_most}"
    );
}

/// Redis at a 4 MiB `maxmemory` with `policy`, and the proxy's budget of
/// new sessions per client (`limit`, or none). The flood comes from four
/// client addresses; afterwards every user is still signed in, and a new
/// visitor can still log in.
async fn redis_flood(policy: &str, limit: Option<u32>) {
    let redis = Redis::start();
    assert_eq!(redis.cmd(&["CONFIG", "SET", "maxmemory", "4mb"]), "OK");
    assert_eq!(
        redis.cmd(&["CONFIG", "SET", "maxmemory-policy", policy]),
        "OK"
    );
    let backend = support::Backend::start(&backend_name());
    let session = limit.map_or(String::new(), |n| {
        format!("max_new_sessions_per_client = {n}")
    });
    let store = format!("kind = \"redis\"\nurl = \"{}\"\n", redis.url());
    let proxy = Proxy::start(&flood_config(&backend, &session, &store));
    let mut conn = Conn::open(proxy.addr()).await;
    let tickets = sign_in(&mut conn).await;

    let sources: Vec<IpAddr> = (2..6).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let started = Instant::now();
    let made = flood(proxy.addr(), FLOOD, 32, &sources).await;
    let info = redis.cmd(&["INFO", "stats"]);
    let evicted: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    eprintln!(
        "{policy}, limit {limit:?}: {FLOOD} cookieless requests in {:.1?}; {made} sessions stored, Redis evicted {evicted}",
        started.elapsed()
    );
    assert_still_signed_in(&mut conn, &tickets).await;
    let newcomer = conn.get("/login", None).await;
    assert!(
        newcomer.ticket.is_some(),
        "a new visitor cannot log in: {}",
        newcomer.body
    );
    if let Some(n) = limit {
        // a minute may turn during the flood: two budgets per address
        let most = 2 * n as usize * sources.len();
        assert!(made <= most, "{made} sessions stored, over {most}");
        let limited = proxy.metric("sessionlb_sessions_limited_total").await as usize;
        assert_eq!(limited, FLOOD - made);
    }
}

/// `noeviction`, Redis's default: a full Redis refuses every write, so
/// every login would fail once the flood filled it; the budget per client
/// keeps it from filling.
#[tokio::test]
async fn a_flood_in_redis_with_noeviction_logs_no_one_out() {
    redis_flood("noeviction", Some(100)).await;
}

/// `allkeys-lru`: Redis evicts the least recently used keys, the users'
/// idle sessions before the flood's new ones; the budget per client keeps
/// it from needing to.
#[tokio::test]
async fn a_flood_in_redis_with_allkeys_lru_logs_no_one_out() {
    redis_flood("allkeys-lru", Some(100)).await;
}

/// `volatile-ttl` (the policy the README advises): Redis evicts the keys
/// nearest their end first, and a session used once lives
/// `first_idle_timeout` (5m) against a session in use's `idle_timeout`
/// (30m): the flood evicts its own sessions, with no budget at all.
#[tokio::test]
async fn a_flood_in_redis_with_volatile_ttl_logs_no_one_out() {
    redis_flood("volatile-ttl", None).await;
}

/// What a session takes in the memory store, as it weighs it against
/// `max_size` (the sessions it holds when it starts evicting) and as the
/// process's resident memory grows, for a 200-byte and a 2 KiB app
/// cookie. Prints the figures; checks that `max_size` bounds the memory
/// the sessions take, to within a fifth.
///
/// `cargo test --test session_flood -- --ignored --nocapture memory_per_session`
#[tokio::test]
#[ignore = "a measurement: 2 x 40,000 sessions, about a minute"]
async fn memory_per_session() {
    for cookie in [200usize, 2048] {
        let backend = support::Backend::start(&"b".repeat(cookie - 17));
        let proxy = Proxy::start(&flood_config(&backend, "", &memory("8m")));
        let local = [IpAddr::from([127, 0, 0, 1])];
        // warm: connections, buffers, the first sessions' allocations
        flood(proxy.addr(), 2000, 32, &local).await;
        let before = proxy.rss_kib();
        let evicted_before = proxy.metric(EVICTIONS).await as u64;
        assert_eq!(evicted_before, 0);
        let n = 40_000;
        flood(proxy.addr(), n, 32, &local).await;
        let created = proxy.metric(CREATED).await as u64;
        let evicted = proxy.metric(EVICTIONS).await as u64;
        let held = created - evicted;
        let weighed = (8u64 << 20) / held;
        let grown = (proxy.rss_kib() - before) * 1024;
        eprintln!(
            "{cookie}-byte app cookie: {held} sessions in max_size 8 MiB, {weighed} bytes each as weighed; \
             resident memory grew {grown} bytes for them ({} each)",
            grown / held.max(1)
        );
        assert!(
            grown <= (8 << 20) * 6 / 5,
            "resident memory grew {grown} bytes"
        );
    }
}
