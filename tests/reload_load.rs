//! Reload under load: 16 keep-alive clients (8 over HTTP/1.1, 8 over h2c)
//! send requests without pause while the configuration file is reloaded
//! again and again (SIGHUP and `POST /admin/reload` in turn), cycling
//! through adding a backend, switching the policy, changing weights,
//! draining one, removing one, and a broken file every fifth time.
//!
//! Not one request may fail and not one connection may be closed or reset;
//! every broken file is refused and counted; and clients keep their sticky
//! backend whenever the product promises it (see [`check_placement`]).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nix::sys::signal::Signal;
use support::client;
use support::{Backend, DEADLINE, Proxy};

const H1_CLIENTS: usize = 8;
const H2_CLIENTS: usize = 8;
/// Reloads in all; every fifth writes a broken file.
const RELOADS: usize = 60;
const MIN_REQUESTS: u64 = 20_000;
/// Requests answered between two reloads: reloads happen under traffic,
/// and the clients see each configuration many times.
const PACE: u64 = MIN_REQUESTS / RELOADS as u64 + 20;
const SECRET: &str = "reload-under-load";
/// Backends 0..CORE are in every file; the others come and go.
const CORE: usize = 3;
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    RoundRobin,
    LeastConn,
    IpHash,
    Cookie,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::LeastConn => "least_conn",
            Policy::IpHash => "ip_hash",
            Policy::Cookie => "cookie",
        }
    }

    /// The next in the cycle round_robin, least_conn, ip_hash, cookie.
    fn next(self) -> Policy {
        match self {
            Policy::Cookie => Policy::RoundRobin,
            Policy::RoundRobin => Policy::LeastConn,
            Policy::LeastConn => Policy::IpHash,
            Policy::IpHash => Policy::Cookie,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    backend: usize,
    weight: u32,
    drain: bool,
}

/// What one configuration file says about the pool.
#[derive(Clone, Debug)]
struct Plan {
    policy: Policy,
    backends: Vec<Entry>,
}

impl std::fmt::Display for Plan {
    /// `cookie [a w1, b w2 drain, ...]`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self
            .backends
            .iter()
            .map(|e| {
                let drain = if e.drain { " drain" } else { "" };
                format!("{} w{}{drain}", NAMES[e.backend], e.weight)
            })
            .collect();
        write!(f, "{} [{}]", self.policy.name(), list.join(", "))
    }
}

impl Plan {
    fn entry(&self, backend: usize) -> Option<&Entry> {
        self.backends.iter().find(|e| e.backend == backend)
    }

    fn render(&self, addrs: &[SocketAddr]) -> String {
        let list: Vec<String> = self
            .backends
            .iter()
            .map(|e| {
                format!(
                    "  {{ addr = \"{}\", id = \"{}\", weight = {}, drain = {} }},",
                    addrs[e.backend], NAMES[e.backend], e.weight, e.drain
                )
            })
            .collect();
        let sticky = match self.policy {
            Policy::Cookie => format!("[pools.web.sticky]\nsecret = \"{SECRET}\"\n"),
            _ => String::new(),
        };
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n\n\
             [log]\naccess_log = false\n\n\
             [pools.web]\npolicy = \"{}\"\nbackends = [\n{}\n]\n\n{sticky}",
            self.policy.name(),
            list.join("\n")
        )
    }
}

#[derive(Clone, Copy, Debug)]
enum Change {
    Add,
    Policy,
    Weights,
    Drain,
    Remove,
    Undrain,
}

/// The changes other than the policy, in turn.
const CHANGES: [Change; 5] = [
    Change::Add,
    Change::Weights,
    Change::Drain,
    Change::Remove,
    Change::Undrain,
];

/// The change of the `k`th good reload: every fourth switches the policy,
/// the three between take the next of [`CHANGES`]. Five changes over three
/// places: each time a policy comes back it sees another mix. Under
/// `cookie`: a backend added, weights, a backend draining; then draining,
/// an extra backend (with clients pinned to it) removed, undrained; then
/// undrained, added, weights.
fn change(k: usize) -> Change {
    match k % 4 {
        3 => Change::Policy,
        _ => CHANGES[(k - k / 4) % CHANGES.len()],
    }
}

/// `prev` with one change made; `k` counts the good reloads.
fn changed(prev: &Plan, change: Change, k: usize) -> Plan {
    let mut p = prev.clone();
    match change {
        Change::Add => {
            let absent = (CORE..NAMES.len())
                .find(|&b| p.entry(b).is_none())
                .expect("an extra backend to add");
            p.backends.push(Entry {
                backend: absent,
                weight: 1,
                drain: false,
            });
        }
        // the extra backend that has been in the file longest goes
        Change::Remove => {
            let at = p
                .backends
                .iter()
                .position(|e| e.backend >= CORE)
                .expect("an extra backend to remove");
            p.backends.remove(at);
        }
        Change::Policy => p.policy = p.policy.next(),
        Change::Weights => {
            for e in &mut p.backends {
                e.weight = 1 + ((k + e.backend) % 3) as u32;
            }
        }
        // a core backend, in turn: one that cookie clients are pinned to
        Change::Drain => {
            let b = (k / 4) % CORE;
            p.backends
                .iter_mut()
                .find(|e| e.backend == b)
                .unwrap()
                .drain = true;
        }
        Change::Undrain => {
            for e in &mut p.backends {
                e.drain = false;
            }
        }
    }
    p
}

/// A file the proxy must refuse, the `n`th kind, made from a good one.
fn broken(good: &Plan, addrs: &[SocketAddr], n: usize) -> String {
    let text = good.render(addrs);
    let first = addrs[good.backends[0].backend].to_string();
    match n % 6 {
        0 => text.replace("[pools.web]", "[pools.web"),
        1 => text.replace(&first, "127.0.0.1:99999"),
        2 => {
            let mut p = good.clone();
            p.backends[0].weight = 0;
            p.render(addrs)
        }
        3 => text.replace(
            &format!("policy = \"{}\"", good.policy.name()),
            "policy = \"random\"",
        ),
        4 => {
            let mut p = good.clone();
            p.policy = Policy::RoundRobin;
            format!(
                "{}[pools.web.sticky]\nsecret = \"{SECRET}\"\n",
                p.render(addrs)
            )
        }
        _ => {
            let mut p = good.clone();
            p.backends.clear();
            p.render(addrs)
        }
    }
}

/// The configurations the proxy has been given, in order, and where it is.
/// A client reads `current` before it sends and `latest` once it has its
/// answer: the request was placed by one of the plans in between.
struct Timeline {
    plans: Vec<Plan>,
    /// The plan in effect.
    current: usize,
    /// A plan being loaded, which may already be in effect.
    pending: Option<usize>,
}

impl Timeline {
    fn latest(&self) -> usize {
        self.pending.unwrap_or(self.current).max(self.current)
    }
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    h1: AtomicU64,
    h2: AtomicU64,
    /// Answers other than a 200 from a backend saying who it is.
    failures: AtomicU64,
    /// Requests that got no answer: the connection closed or was reset.
    conn_errors: AtomicU64,
    /// Connections the clients opened (one each, unless one broke).
    connections: AtomicU64,
    /// Answers checked to come from the client's pinned backend.
    pinned_hits: AtomicU64,
    /// Pins that held across a period under another policy.
    kept_across_policies: AtomicU64,
    /// Of the pinned answers, those from a backend draining.
    drained_hits: AtomicU64,
    /// Clients re-pinned because their backend left the file.
    repinned: AtomicU64,
    /// Problems, with what was seen, for the report.
    problems: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
}

impl Tally {
    fn note(list: &Mutex<Vec<String>>, what: String) {
        let mut l = list.lock().unwrap();
        if l.len() < 20 {
            l.push(what);
        }
    }
}

/// One client's route cookie and the backend it names.
#[derive(Default)]
struct Pin {
    token: Option<String>,
    backend: Option<usize>,
    /// The client has been served under another policy since it was
    /// pinned or last checked.
    away: bool,
}

/// The sticky contract, checked on one answer placed by one of `plans`
/// (the configurations that may have been in effect while it was placed).
///
/// What sessionlb promises (README, "Draining" and the cookie policy): a
/// route token is an HMAC of the backend's identity under `sticky.secret`,
/// so it names that backend in every configuration that has it, whatever
/// else changes (weights, other backends added or removed, draining, which
/// keeps pinned clients). Under another policy the cookie is neither read
/// nor set, and the client keeps it; when the policy is `cookie` again,
/// the token still names its backend and the client goes back to it. So:
///
/// - under `cookie`, a client whose backend is in the file is answered by
///   that backend and gets no new cookie;
/// - it is re-pinned (a new cookie, in the same answer) only when its
///   backend has left the file;
/// - a new cookie always names the backend that answered;
/// - no other policy sets the cookie.
///
/// And for every policy: no answer comes from a backend that none of the
/// plans has, and round robin and least_conn send nothing to a backend
/// every plan drains.
fn check_placement(
    plans: &[Plan],
    pin: &mut Pin,
    answered: usize,
    set_token: Option<String>,
    tally: &Tally,
    who: &str,
) {
    let violation = |what: String| {
        Tally::note(
            &tally.violations,
            format!(
                "{who}: {what} (answered by {}, placed by one of: {})",
                NAMES[answered],
                plans
                    .iter()
                    .map(Plan::to_string)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        )
    };
    if plans.iter().all(|p| p.entry(answered).is_none()) {
        violation("answered by a backend in no configuration".into());
    }
    let all_cookie = plans.iter().all(|p| p.policy == Policy::Cookie);
    let any_cookie = plans.iter().any(|p| p.policy == Policy::Cookie);
    let balancing = plans
        .iter()
        .all(|p| matches!(p.policy, Policy::RoundRobin | Policy::LeastConn));
    if balancing
        && plans
            .iter()
            .all(|p| p.entry(answered).is_some_and(|e| e.drain))
    {
        violation("a draining backend took a request under round_robin/least_conn".into());
    }
    match set_token {
        Some(token) => {
            if !any_cookie {
                violation("route cookie set while the policy was not cookie".into());
            }
            let expected = sessionlb::balance::route_token(Some(SECRET), NAMES[answered]);
            if token != expected {
                violation(format!("new cookie {token} does not name the backend"));
            }
            if let Some(pinned) = pin.backend {
                // a re-pin: allowed only when the pinned backend has left
                // the file in some cookie configuration
                let left = plans
                    .iter()
                    .any(|p| p.policy == Policy::Cookie && p.entry(pinned).is_none());
                if !left {
                    violation(format!(
                        "client pinned to {} was re-pinned although its backend stayed",
                        NAMES[pinned]
                    ));
                }
                tally.repinned.fetch_add(1, Ordering::Relaxed);
            }
            pin.token = Some(token);
            pin.backend = Some(answered);
            pin.away = false;
        }
        None if all_cookie => match pin.backend {
            None => violation("a new client got no route cookie".into()),
            Some(pinned) if plans.iter().all(|p| p.entry(pinned).is_some()) => {
                if answered != pinned {
                    violation(format!("lost its pin to {}", NAMES[pinned]));
                } else {
                    tally.pinned_hits.fetch_add(1, Ordering::Relaxed);
                    if plans
                        .iter()
                        .all(|p| p.entry(pinned).is_some_and(|e| e.drain))
                    {
                        tally.drained_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    if std::mem::take(&mut pin.away) {
                        tally.kept_across_policies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // its backend was removed around this request: either answer
            Some(_) => {}
        },
        None => {}
    }
    if !all_cookie && pin.backend.is_some() {
        pin.away = true;
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One keep-alive connection from `local`.
async fn connect(proxy: SocketAddr, local: IpAddr, h2: bool) -> std::io::Result<Sender> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let stream = socket.connect(proxy).await?;
    let io = TokioIo::new(stream);
    let fail = |e: hyper::Error| std::io::Error::other(e.to_string());
    Ok(if h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(fail)?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(fail)?;
        tokio::spawn(conn);
        Sender::H1(sender)
    })
}

struct Answer {
    status: u16,
    backend: String,
    body: String,
    route: Option<String>,
}

async fn send(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<Answer, String> {
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await.map_err(|e| format!("{e:?}"))?;
            s.send_request(req).await
        }
        Sender::H2(s) => {
            s.ready().await.map_err(|e| format!("{e:?}"))?;
            s.send_request(req).await
        }
    }
    .map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    let backend = header("x-backend").concat();
    let route = header("set-cookie").iter().find_map(|c| {
        c.split(';')
            .next()?
            .strip_prefix("slb_route=")
            .map(str::to_string)
    });
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Answer {
        status,
        backend,
        body: String::from_utf8_lossy(&body).into_owned(),
        route,
    })
}

/// Sends requests on one keep-alive connection, sending back the route
/// cookie it was given, until `stop`.
async fn client(
    n: usize,
    h2: bool,
    proxy: SocketAddr,
    timeline: Arc<Mutex<Timeline>>,
    tally: Arc<Tally>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    // a distinct loopback address per client, so that ip_hash spreads them
    let local = IpAddr::from([127, 0, 0, 10 + n as u8]);
    let who = format!("client {n} ({})", if h2 { "h2c" } else { "HTTP/1.1" });
    let mut pin = Pin::default();
    let mut sender = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        if sender.is_none() {
            tally.connections.fetch_add(1, Ordering::Relaxed);
            match connect(proxy, local, h2).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    tally.conn_errors.fetch_add(1, Ordering::Relaxed);
                    Tally::note(&tally.problems, format!("{who}: connect: {e}"));
                    continue;
                }
            }
        }
        // now and then a request that stays in flight a while, across a
        // reload that may remove its backend
        let path = if i.is_multiple_of(8) {
            "/sleep/20"
        } else {
            "/"
        };
        let mut req = match h2 {
            true => Request::get(format!("http://{proxy}{path}")),
            false => Request::get(path).header("host", proxy.to_string()),
        };
        if let Some(token) = &pin.token {
            req = req.header("cookie", format!("slb_route={token}"));
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let lo = timeline.lock().unwrap().current;
        let result = tokio::time::timeout(DEADLINE, send(sender.as_mut().unwrap(), req)).await;
        let hi = timeline.lock().unwrap().latest();
        let answer = match result {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                tally.conn_errors.fetch_add(1, Ordering::Relaxed);
                Tally::note(&tally.problems, format!("{who}: request {i}: {e}"));
                sender = None;
                continue;
            }
            Err(_) => {
                tally.failures.fetch_add(1, Ordering::Relaxed);
                Tally::note(
                    &tally.problems,
                    format!("{who}: request {i}: no answer within {DEADLINE:?}"),
                );
                sender = None;
                continue;
            }
        };
        tally.requests.fetch_add(1, Ordering::Relaxed);
        match h2 {
            true => tally.h2.fetch_add(1, Ordering::Relaxed),
            false => tally.h1.fetch_add(1, Ordering::Relaxed),
        };
        let answered = NAMES.iter().position(|&b| b == answer.backend);
        let Some(answered) =
            answered.filter(|_| answer.status == 200 && answer.body == answer.backend)
        else {
            tally.failures.fetch_add(1, Ordering::Relaxed);
            Tally::note(
                &tally.problems,
                format!(
                    "{who}: request {i}: {} from {:?}: {:?}",
                    answer.status, answer.backend, answer.body
                ),
            );
            continue;
        };
        let plans = timeline.lock().unwrap().plans[lo..=hi].to_vec();
        check_placement(&plans, &mut pin, answered, answer.route, &tally, &who);
    }
}

async fn metrics(admin: SocketAddr) -> String {
    client::get(&client::h1(), &format!("http://{admin}/metrics"))
        .await
        .body
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

const GENERATION: &str = "sessionlb_config_generation";
const SUCCESSES: &str = "sessionlb_config_reloads_total{result=\"success\"}";
const FAILURES: &str = "sessionlb_config_reloads_total{result=\"failure\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_request_connection_or_pin() {
    let started = Instant::now();
    let backends: Vec<Backend> = NAMES.iter().map(|n| Backend::start(n)).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let first = Plan {
        policy: Policy::Cookie,
        backends: (0..4)
            .map(|backend| Entry {
                backend,
                weight: 1,
                drain: false,
            })
            .collect(),
    };
    let proxy = Proxy::start(&first.render(&addrs));
    let admin = proxy.admin_addr();
    let timeline = Arc::new(Mutex::new(Timeline {
        plans: vec![first.clone()],
        current: 0,
        pending: None,
    }));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..H1_CLIENTS + H2_CLIENTS)
        .map(|n| {
            tokio::spawn(client(
                n,
                n >= H1_CLIENTS,
                proxy.addr(),
                timeline.clone(),
                tally.clone(),
                stop.clone(),
            ))
        })
        .collect();

    // Waits until the clients have had `n` more answers (or a problem).
    let progress = |n: u64| {
        let tally = tally.clone();
        async move {
            let until = tally.requests.load(Ordering::Relaxed) + n;
            let arrived = support::eventually_async(DEADLINE, || {
                let tally = tally.clone();
                async move {
                    tally.requests.load(Ordering::Relaxed) >= until
                        || tally.problems.lock().unwrap().len() > 5
                }
            })
            .await;
            assert!(arrived, "the clients made no progress");
        }
    };

    let (mut good, mut bad) = (0u64, 0u64);
    let mut plan = first;
    for r in 0..RELOADS {
        progress(PACE).await;
        let is_broken = r % 5 == 4;
        let by_signal = r % 2 == 1;
        if is_broken {
            std::fs::write(&proxy.config_path, broken(&plan, &addrs, bad as usize)).unwrap();
            bad += 1;
        } else {
            plan = changed(&plan, change(good as usize), good as usize);
            let mut t = timeline.lock().unwrap();
            t.plans.push(plan.clone());
            t.pending = Some(t.plans.len() - 1);
            drop(t);
            std::fs::write(&proxy.config_path, plan.render(&addrs)).unwrap();
            good += 1;
        }
        if by_signal {
            proxy.signal(Signal::SIGHUP);
            let (metric, want) = match is_broken {
                true => (FAILURES, bad as f64),
                false => (GENERATION, 1.0 + good as f64),
            };
            let applied = support::eventually_async(DEADLINE, || async {
                sample(&metrics(admin).await, metric) >= want
            })
            .await;
            assert!(
                applied,
                "reload {r} by SIGHUP: {metric} never reached {want}"
            );
        } else {
            let answer = support::admin_reload(admin).await;
            match is_broken {
                true => assert!(
                    answer.status == 400 && answer.body.starts_with("reload refused:"),
                    "reload {r}: a broken file was not refused: {} {}",
                    answer.status,
                    answer.body
                ),
                false => assert_eq!(
                    (answer.status.as_u16(), answer.body),
                    (200, format!("reloaded: generation {}\n", 1 + good)),
                    "reload {r}"
                ),
            }
        }
        if !is_broken {
            let mut t = timeline.lock().unwrap();
            t.current = t.plans.len() - 1;
            t.pending = None;
        }
    }
    // traffic after the last reload too, and the total reached
    progress(PACE).await;
    let left = MIN_REQUESTS.saturating_sub(tally.requests.load(Ordering::Relaxed));
    progress(left).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let text = metrics(admin).await;
    let problems = tally.problems.lock().unwrap().clone();
    let violations = tally.violations.lock().unwrap().clone();
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let summary = format!(
        "{} requests ({} HTTP/1.1, {} h2c) on {} connections, {} reloads ({good} applied, {bad} refused) in {:?}; \
         {} answers checked against their pin ({} from a draining backend), {} pins kept across another policy, \
         {} clients re-pinned as their backend left",
        count(&tally.requests),
        count(&tally.h1),
        count(&tally.h2),
        count(&tally.connections),
        good + bad,
        started.elapsed(),
        count(&tally.pinned_hits),
        count(&tally.drained_hits),
        count(&tally.kept_across_policies),
        count(&tally.repinned),
    );
    eprintln!("{summary}");
    let log = || proxy.stderr.all().join("\n");
    assert_eq!(
        (count(&tally.failures), count(&tally.conn_errors)),
        (0, 0),
        "failed requests and connection errors: {problems:#?}\n{summary}\n{}",
        log()
    );
    assert!(
        violations.is_empty(),
        "sticky placement broken: {violations:#?}\n{summary}\n{}",
        log()
    );
    // one keep-alive connection per client, for the whole run
    assert_eq!(count(&tally.connections), (H1_CLIENTS + H2_CLIENTS) as u64);
    assert!(count(&tally.requests) >= MIN_REQUESTS, "{summary}");
    assert!(count(&tally.h1) >= MIN_REQUESTS / 4, "{summary}");
    assert!(count(&tally.h2) >= MIN_REQUESTS / 4, "{summary}");
    assert!(good + bad >= 50 && bad == (RELOADS / 5) as u64);
    // the pins were put to the test: many answers, some from a draining
    // backend, clients that came back to their backend after round_robin,
    // least_conn and ip_hash, and some whose backend was removed under
    // the cookie policy
    assert!(count(&tally.pinned_hits) >= 1000, "{summary}");
    assert!(count(&tally.drained_hits) > 0, "{summary}");
    assert!(
        count(&tally.kept_across_policies) >= (H1_CLIENTS + H2_CLIENTS) as u64,
        "{summary}"
    );
    assert!(count(&tally.repinned) > 0, "{summary}");
    // every reload counted, as what it was
    assert_eq!(sample(&text, SUCCESSES), good as f64, "{text}");
    assert_eq!(sample(&text, FAILURES), bad as f64, "{text}");
    assert_eq!(sample(&text, GENERATION), 1.0 + good as f64, "{text}");
    let lines = proxy.stderr.all();
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count(),
        good as usize
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("reload refused"))
            .count()
            >= bad as usize,
        "{}",
        log()
    );
    // every backend served, the removed ones before they went
    for b in &backends {
        assert!(b.hits() > 0, "{} served nothing", b.name);
    }
}
