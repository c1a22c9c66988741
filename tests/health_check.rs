//! Active health checks (`[pools.X.health] check`), end to end: the real
//! binary, real backends whose `/healthz` a test switches, and the proxy's
//! own account of them (`/admin/pools`, `/metrics`, the log).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::client::{self, get};
use support::tls::{Ca, TlsBackend};
use support::{Backend, DEADLINE, Proxy, Silent, config, entry};

const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u64 = 2;
const FALL: u64 = 3;

/// The checks every test here runs, with a timeout short enough for a
/// test and long enough for a loaded machine's loopback.
fn checks() -> String {
    format!(
        "[pools.web.health]\ncheck = {{ path = \"/healthz\", interval = \"{}ms\", timeout = \"150ms\", rise = {RISE}, fall = {FALL} }}\n",
        INTERVAL.as_millis()
    )
}

/// One checked pool over `backends`, with an admin listener.
fn checked(backends: &[String]) -> String {
    with_admin(config("round_robin", backends, &checks()))
}

fn with_admin(cfg: String) -> String {
    cfg.replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
}

/// The proxy's admin API, read as a test needs it.
struct Admin<'a> {
    proxy: &'a Proxy,
    url: String,
    client: client::HttpClient,
}

impl<'a> Admin<'a> {
    fn new(proxy: &'a Proxy) -> Admin<'a> {
        Admin {
            proxy,
            url: format!("http://{}/admin/pools", proxy.admin_addr()),
            client: client::h1(),
        }
    }

    /// Backend `addr` of the first pool, as `/admin/pools` shows it.
    async fn backend(&self, addr: SocketAddr) -> serde_json::Value {
        let body = get(&self.client, &self.url).await.body;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["pools"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == addr.to_string())
            .unwrap_or_else(|| panic!("no backend {addr} in {body}"))
            .clone()
    }

    /// Polls `/admin/pools` until backend `addr` satisfies `pred`; its
    /// entry then.
    async fn wait(
        &self,
        addr: SocketAddr,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let b = self.backend(addr).await;
            if pred(&b) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "backend {addr} never {what}: {b}\n{}",
                self.proxy.stderr.all().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_up(&self, addr: SocketAddr) -> serde_json::Value {
        self.wait(addr, "up", |b| b["up"] == true).await
    }

    /// Until the checks take `addr` out.
    async fn wait_down(&self, addr: SocketAddr) -> serde_json::Value {
        self.wait(addr, "down by its checks", |b| {
            b["up"] == false && b["down_reason"] == "active" && b["check"]["status"] == "down"
        })
        .await
    }
}

/// Whether a log line says backend `addr` went `up` or `down` by its
/// checks.
fn says(line: &str, addr: SocketAddr, up_or_down: &str) -> bool {
    line.contains(&format!("backend is {up_or_down}"))
        && line.contains(&format!("backend=\"{addr}\""))
        && line.contains("reason=\"active\"")
}

/// Log lines so far that say backend `addr` went `up` or `down`.
fn transitions(proxy: &Proxy, addr: SocketAddr, up_or_down: &str) -> usize {
    let lines = proxy.stderr.all();
    lines.iter().filter(|l| says(l, addr, up_or_down)).count()
}

/// Sends `n` requests; the backend that answered each (all must be 200).
async fn spread(proxy: &Proxy, n: usize) -> Vec<String> {
    let c = client::h1();
    let mut names = Vec::new();
    for _ in 0..n {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        names.push(r.backend());
    }
    names
}

#[tokio::test]
async fn a_backend_whose_check_turns_to_500_gets_no_request_after_fall_checks() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start(&checked(&[a.entry(), b.entry()]));
    let admin = Admin::new(&proxy);
    let up = admin.wait_up(a.addr).await;
    assert_eq!(up["down_reason"], serde_json::Value::Null);
    assert_eq!(up["check"]["last"], "status 200");
    admin.wait_up(b.addr).await;
    // both serve
    let names = spread(&proxy, 4).await;
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 2, "{names:?}");

    let switched = Instant::now();
    a.set_health(500);
    let down = admin.wait_down(a.addr).await;
    let took = switched.elapsed();
    assert_eq!(down["check"]["last"], "status 500");
    // not before fall failed checks, a little less than an interval apart
    // (the first may have been under way at the switch)
    assert!(a.health_failures() >= FALL, "{}", a.health_failures());
    let fastest = INTERVAL.mul_f64(0.9 * (FALL - 1) as f64) - Duration::from_millis(20);
    assert!(took >= fastest, "down after {took:?}");
    let line = proxy
        .stderr
        .wait_for(DEADLINE, |l| says(l, a.addr, "down"))
        .unwrap();
    assert!(
        line.contains("WARN") && line.contains("check=status 500"),
        "{line}"
    );
    assert_eq!(
        proxy
            .metric(&format!(
                "sessionlb_backend_up{{pool=\"web\",backend=\"{}\"}}",
                a.addr
            ))
            .await,
        0.0
    );
    assert!(
        proxy
            .metric(&format!(
                "sessionlb_health_checks_total{{pool=\"web\",backend=\"{}\",result=\"fail\"}}",
                a.addr
            ))
            .await
            >= FALL as f64
    );

    // from then on, every request goes to b
    let before = a.hits();
    let names = spread(&proxy, 20).await;
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    assert_eq!(a.hits(), before);
}

#[tokio::test]
async fn a_restarted_backend_serves_again_only_after_rise_passes() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let addr = a.addr;
    let proxy = Proxy::start(&checked(&[a.entry(), b.entry()]));
    let admin = Admin::new(&proxy);
    admin.wait_up(a.addr).await;
    admin.wait_up(b.addr).await;
    spread(&proxy, 4).await;

    a.kill();
    let down = admin.wait_down(addr).await;
    assert!(
        down["check"]["last"]
            .as_str()
            .unwrap()
            .starts_with("connect: "),
        "{down}"
    );

    let again = Backend::start_on("a-again", addr);
    let deadline = Instant::now() + DEADLINE;
    let c = client::h1();
    loop {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.backend() == "a-again" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted backend never served"
        );
    }
    let passes = again.passes_before_first_hit().unwrap();
    assert!(passes >= RISE, "served after {passes} passed check(s)");
    // the log says so (it may come a moment after the flag that let the
    // request in)
    let ups = proxy
        .stderr
        .wait_count(2, DEADLINE, |l| says(l, addr, "up"));
    assert_eq!(ups.len(), 2, "{ups:?}");
}

#[tokio::test]
async fn a_backend_that_never_answers_is_taken_out_by_the_check_timeout() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let silent = Silent::start();
    let proxy = Proxy::start(&checked(&[a.entry(), b.entry(), entry(silent.addr)]));
    let admin = Admin::new(&proxy);
    admin.wait_up(a.addr).await;
    admin.wait_up(b.addr).await;
    // accepts the check's connection and says nothing: never in
    let down = admin.wait_down(silent.addr).await;
    assert_eq!(down["check"]["last"], "timeout after 150ms");
    assert!(silent.accepted() >= 1);

    // an up backend whose check stops answering goes out too
    a.hang_health();
    let down = admin.wait_down(a.addr).await;
    assert_eq!(down["check"]["last"], "timeout after 150ms");
    let line = proxy
        .stderr
        .wait_for(DEADLINE, |l| says(l, a.addr, "down"))
        .unwrap();
    assert!(line.contains("check=timeout after 150ms"), "{line}");

    // every request goes to b, at once: none waits on the silent one
    let before = a.hits();
    let started = Instant::now();
    let names = spread(&proxy, 10).await;
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(a.hits(), before);
}

#[tokio::test]
async fn checks_survive_a_reload_without_resetting_a_backend_state() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start(&checked(&[a.entry(), b.entry()]));
    let admin = Admin::new(&proxy);
    admin.wait_up(a.addr).await;
    admin.wait_up(b.addr).await;
    a.set_health(500);
    admin.wait_down(a.addr).await;

    // a reload that adds a backend and changes nothing else
    let c = Backend::start("c");
    std::fs::write(
        &proxy.config_path,
        checked(&[a.entry(), b.entry(), c.entry()]),
    )
    .unwrap();
    let a_hits = a.hits();
    proxy.signal(Signal::SIGHUP);
    proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("configuration reloaded"))
        .unwrap();
    // right away: a is still out, b still serves (no new first check)
    let now = admin.backend(a.addr).await;
    assert_eq!(
        (&now["down_reason"], &now["check"]["status"]),
        (&"active".into(), &"down".into()),
        "{now}"
    );
    assert_eq!(admin.backend(b.addr).await["up"], true);
    let names = spread(&proxy, 10).await;
    assert!(names.iter().all(|n| n == "b" || n == "c"), "{names:?}");
    assert_eq!(a.hits(), a_hits);

    // a few checks later: no backend went up or down again
    admin.wait_up(c.addr).await;
    let (a_checks, b_checks) = (a.health_checks(), b.health_checks());
    assert!(support::eventually(DEADLINE, || a.health_checks()
        >= a_checks + 2
        && b.health_checks() >= b_checks + 2));
    assert_eq!(transitions(&proxy, a.addr, "down"), 1);
    assert_eq!(transitions(&proxy, b.addr, "up"), 1);
    assert_eq!(admin.backend(a.addr).await["up"], false);
    assert_eq!(a.hits(), a_hits);
}

#[tokio::test]
async fn a_backend_added_by_a_reload_gets_traffic_only_once_its_check_passed() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&checked(&[b.entry()]));
    let admin = Admin::new(&proxy);
    admin.wait_up(b.addr).await;

    let c = Backend::start("c");
    c.set_health(500);
    std::fs::write(&proxy.config_path, checked(&[b.entry(), c.entry()])).unwrap();
    proxy.signal(Signal::SIGHUP);
    proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("configuration reloaded"))
        .unwrap();
    // from the reload on, before and after its first check
    let names = spread(&proxy, 10).await;
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    admin.wait_down(c.addr).await;
    let names = spread(&proxy, 10).await;
    assert!(names.iter().all(|n| n == "b"), "{names:?}");
    assert_eq!(c.hits(), 0);

    c.set_health(200);
    let deadline = Instant::now() + DEADLINE;
    while c.hits() == 0 {
        spread(&proxy, 1).await;
        assert!(Instant::now() < deadline, "c never served");
    }
    let passes = c.passes_before_first_hit().unwrap();
    assert!(passes >= RISE, "served after {passes} passed check(s)");
}

#[tokio::test]
async fn checks_run_once_per_process_not_once_per_worker() {
    let a = Backend::start("a");
    let cfg = checked(&[a.entry()]).replace("workers = 1\n", "workers = 2\n");
    let proxy = Proxy::start(&cfg);
    let admin = Admin::new(&proxy);
    admin.wait_up(a.addr).await;
    let (checks, connections) = (a.health_checks(), a.connections());
    let started = Instant::now();
    // a measure over a few intervals, not a wait for something
    tokio::time::sleep(INTERVAL * 6).await;
    let elapsed = started.elapsed();
    let (checks, connections) = (a.health_checks() - checks, a.connections() - connections);
    let intervals = elapsed.as_secs_f64() / INTERVAL.as_secs_f64();
    // about one check an interval (two workers each checking: twice as many)
    assert!(
        (checks as f64) <= intervals / 0.9 + 2.0 && checks >= 2,
        "{checks} checks in {elapsed:?}"
    );
    // each over a connection of its own
    assert!(
        connections.abs_diff(checks) <= 1,
        "{connections} connections for {checks} checks"
    );
}

#[tokio::test]
async fn an_https_backend_is_checked_over_tls() {
    let ca = Ca::new("sessionlb backend root");
    let backend = TlsBackend::start("secure", &ca.leaf(&["127.0.0.1"]));
    let extra = format!("tls = true\nca = \"ca.pem\"\n{}", checks());
    let proxy = Proxy::start_with_files(
        &with_admin(config("round_robin", &[entry(backend.addr)], &extra)),
        &[("ca.pem", ca.pem().as_bytes())],
    );
    let admin = Admin::new(&proxy);
    let up = admin.wait_up(backend.addr).await;
    assert_eq!(up["check"]["last"], "status 200");
    assert!(backend.handshakes() >= 1);
    let r = get(&client::h1(), &proxy.url("/")).await;
    assert_eq!((r.status.as_u16(), r.backend().as_str()), (200, "secure"));
}

#[test]
fn check_accepts_the_checks_and_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checked.toml");
    std::fs::write(&path, checked(&[entry(support::dead_addr())])).unwrap();
    let out = support::check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(
            "health: down after 1 failure(s) within 10s; active GET /healthz every 200ms, timeout 150ms, up after 2 pass(es), down after 3 failure(s)"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
}
