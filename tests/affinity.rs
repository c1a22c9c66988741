//! Session affinity through the real binary: cookie stickiness (insert and
//! prefix), failover, draining, ip_hash and trusted client addresses, and
//! an app that keeps its sessions in memory.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::client::{self, Browser, get, get_with};
use support::{Backend, Proxy, entry};

/// A config with backends named b1, b2, ... (stable identities, so that
/// tokens and hash placement do not depend on the ports of this run).
fn named(policy: &str, backends: &[(&str, SocketAddr, &str)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(id, addr, more)| format!("  {{ id = \"{id}\", addr = \"{addr}\"{more} }},"))
        .collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n\n\
         [pools.web]\npolicy = \"{policy}\"\nbackends = [\n{}\n]\n{extra}\n",
        list.join("\n")
    )
}

fn three() -> [Backend; 3] {
    [
        Backend::start("b1"),
        Backend::start("b2"),
        Backend::start("b3"),
    ]
}

fn ids(b: &[&Backend]) -> Vec<(&'static str, SocketAddr, &'static str)> {
    let names = ["b1", "b2", "b3", "b4"];
    b.iter()
        .enumerate()
        .map(|(i, b)| (names[i], b.addr, ""))
        .collect()
}

const STICKY: &str = "[pools.web.sticky]\ncookie = \"slb_route\"\nsecret = \"test-secret\"\n";

fn route_cookie(r: &client::Resp) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("slb_route="))
}

#[tokio::test]
async fn cookie_pins_new_clients_and_follows_the_cookie() {
    let b = three();
    let proxy = Proxy::start(&named("cookie", &ids(&[&b[0], &b[1], &b[2]]), STICKY));
    let c = client::h1();
    let first = get(&c, &proxy.url("/")).await;
    let set = route_cookie(&first).expect("a new client gets a route cookie");
    let token = set
        .trim_start_matches("slb_route=")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        set,
        format!("slb_route={token}; Path=/; HttpOnly; SameSite=Lax")
    );
    assert!(!token.contains("127.0.0.1") && !token.contains(&b[0].addr.port().to_string()));
    let pinned = first.backend();
    for _ in 0..30 {
        let r = get_with(
            &c,
            &proxy.url("/"),
            &[("cookie", &format!("a=1; slb_route={token}"))],
        )
        .await;
        assert_eq!(r.backend(), pinned);
        assert!(
            route_cookie(&r).is_none(),
            "a pinned client is not re-pinned"
        );
    }
    // a forged token is no cookie: placed by round robin and pinned anew
    let mut placed = Vec::new();
    for _ in 0..3 {
        let r = get_with(&c, &proxy.url("/"), &[("cookie", "slb_route=forged")]).await;
        assert!(route_cookie(&r).is_some());
        placed.push(r.backend());
    }
    placed.sort();
    assert_eq!(placed, ["b1", "b2", "b3"]);
    assert_eq!(
        proxy
            .metric("sessionlb_sticky_total{pool=\"web\",outcome=\"hit\"}")
            .await,
        30.0
    );
    assert_eq!(
        proxy
            .metric("sessionlb_sticky_total{pool=\"web\",outcome=\"new\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn tokens_are_the_same_on_every_instance_and_survive_pool_changes() {
    let b = three();
    let cfg = named("cookie", &ids(&[&b[0], &b[1], &b[2]]), STICKY);
    let p1 = Proxy::start(&cfg);
    let p2 = Proxy::start(&cfg);
    let c = client::h1();
    let mut tokens = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let r = get(&c, &p1.url("/")).await;
        tokens.insert(r.backend(), route_cookie(&r).unwrap());
    }
    for _ in 0..3 {
        let r = get(&c, &p2.url("/")).await;
        assert_eq!(
            tokens[&r.backend()],
            route_cookie(&r).unwrap(),
            "instances disagree"
        );
    }
    // add a fourth backend, then remove b1: clients pinned to b2 and b3 stay
    let b4 = Backend::start("b4");
    let mut four = ids(&[&b[0], &b[1], &b[2]]);
    four.push(("b4", b4.addr, ""));
    std::fs::write(&p1.config_path, named("cookie", &four, STICKY)).unwrap();
    p1.signal(Signal::SIGHUP);
    assert!(
        p1.stderr
            .wait_for(support::DEADLINE, |l| l.contains("generation=2"))
            .is_some()
    );
    std::fs::write(&p1.config_path, named("cookie", &four[1..], STICKY)).unwrap();
    p1.signal(Signal::SIGHUP);
    assert!(
        p1.stderr
            .wait_for(support::DEADLINE, |l| l.contains("generation=3"))
            .is_some()
    );
    for name in ["b2", "b3"] {
        let cookie = tokens[name].split(';').next().unwrap().to_string();
        for _ in 0..5 {
            let r = get_with(&c, &p1.url("/"), &[("cookie", &cookie)]).await;
            assert_eq!(r.backend(), name);
        }
    }
}

#[tokio::test]
async fn h2_streams_with_different_cookies_go_to_their_own_backends() {
    let b = three();
    let proxy = Proxy::start(&named("cookie", &ids(&[&b[0], &b[1], &b[2]]), STICKY));
    let h1 = client::h1();
    let mut tokens = std::collections::BTreeMap::new();
    while tokens.len() < 3 {
        let r = get(&h1, &proxy.url("/")).await;
        let cookie = route_cookie(&r)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        tokens.insert(r.backend(), cookie);
    }
    // one h2c connection, many concurrent streams, each with its own cookie
    let h2 = client::h2();
    let mut tasks = Vec::new();
    for i in 0..30 {
        let name = ["b1", "b2", "b3"][i % 3];
        let cookie = tokens[name].clone();
        let (h2, url) = (h2.clone(), proxy.url("/sleep/20"));
        tasks.push(tokio::spawn(async move {
            let r = get_with(&h2, &url, &[("cookie", &cookie)]).await;
            (name, r.backend())
        }));
    }
    for t in tasks {
        let (want, got) = t.await.unwrap();
        assert_eq!(want, got);
    }
}

#[tokio::test]
async fn failover_redispatches_and_repins_in_the_same_response() {
    let [b1, b2, b3] = three();
    let backends = ids(&[&b1, &b2, &b3]);
    let proxy = Proxy::start(&named("cookie", &backends, STICKY));
    let token_b2 = sessionlb_token("test-secret", "b2");
    let c = client::h1();
    let r = get_with(
        &c,
        &proxy.url("/"),
        &[("cookie", &format!("slb_route={token_b2}"))],
    )
    .await;
    assert_eq!(r.backend(), "b2");
    // b2 dies; the client still has its cookie
    b2.kill();
    let r = get_with(
        &c,
        &proxy.url("/"),
        &[("cookie", &format!("slb_route={token_b2}"))],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_ne!(r.backend(), "b2");
    let repinned = route_cookie(&r).expect("re-pinned in the same response");
    assert!(!repinned.contains(&token_b2));
    assert_eq!(
        proxy
            .metric("sessionlb_sticky_total{pool=\"web\",outcome=\"redispatch\"}")
            .await,
        1.0
    );
}

/// The token sessionlb gives a backend (HMAC-SHA256 of its identity).
fn sessionlb_token(secret: &str, id: &str) -> String {
    sessionlb::balance::route_token(Some(secret), id)
}

#[tokio::test]
async fn prefix_mode_rides_on_the_apps_cookie_byte_for_byte() {
    let b = three();
    let sticky = "[pools.web.sticky]\nprefix = \"JSESSIONID\"\nsecret = \"test-secret\"\n";
    let proxy = Proxy::start(&named("cookie", &ids(&[&b[0], &b[1], &b[2]]), sticky));
    let c = client::h1();
    let r = get(&c, &proxy.url("/set-cookie/JSESSIONID/0F1E2D3C")).await;
    let served_by = r.backend();
    let token = sessionlb_token("test-secret", &served_by);
    let set: Vec<&str> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        set,
        [format!("JSESSIONID={token}~0F1E2D3C; Path=/app; HttpOnly")]
    );

    let sent = format!("theme=dark; JSESSIONID={token}~0F1E2D3C; lang=en");
    for _ in 0..10 {
        let r = get_with(&c, &proxy.url("/headers"), &[("cookie", &sent)]).await;
        assert_eq!(r.backend(), served_by);
        assert!(
            r.body
                .contains("\ncookie: theme=dark; JSESSIONID=0F1E2D3C; lang=en\n"),
            "{}",
            r.body
        );
        assert!(r.headers.get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn draining_keeps_pinned_clients_and_takes_no_new_ones() {
    let b = three();
    let proxy = Proxy::start(&named("cookie", &ids(&[&b[0], &b[1], &b[2]]), STICKY));
    let token_b2 = sessionlb_token("test-secret", "b2");
    let pinned = format!("slb_route={token_b2}");
    let c = client::h1();
    assert_eq!(
        get_with(&c, &proxy.url("/"), &[("cookie", &pinned)])
            .await
            .backend(),
        "b2"
    );

    let mut drained = ids(&[&b[0], &b[1], &b[2]]);
    drained[1].2 = ", drain = true";
    std::fs::write(&proxy.config_path, named("cookie", &drained, STICKY)).unwrap();
    proxy.signal(Signal::SIGHUP);
    assert!(
        proxy
            .stderr
            .wait_for(support::DEADLINE, |l| l.contains("generation=2"))
            .is_some()
    );
    let hits_before = b[1].hits();
    for _ in 0..20 {
        assert_eq!(
            get_with(&c, &proxy.url("/"), &[("cookie", &pinned)])
                .await
                .backend(),
            "b2"
        );
    }
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        assert_ne!(
            r.backend(),
            "b2",
            "a new client went to the draining backend"
        );
    }
    assert_eq!(b[1].hits() - hits_before, 20);
    // the periodic report may split the 20 requests over two lines
    let reported = || -> u64 {
        proxy
            .stderr
            .all()
            .iter()
            .filter(|l| {
                l.contains("still serves clients pinned to it") && l.contains("backend=\"b2\"")
            })
            .filter_map(|l| {
                l.split("pinned_requests=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    assert!(
        support::eventually(Duration::from_secs(30), || reported() >= 20),
        "the log did not report the draining backend's pinned traffic: {:#?}",
        proxy.stderr.all()
    );
    assert_eq!(reported(), 20);
}

/// Where a client lands with ip_hash over b1, b2, b3 (equal weights), as
/// the library computes it: the proxy must agree.
fn owner(client: IpAddr) -> String {
    let h = sessionlb::balance::IpHash::new(&["b1", "b2", "b3"], &[1, 1, 1], Default::default());
    format!("b{}", h.owner(client) + 1)
}

#[tokio::test]
async fn ip_hash_places_each_client_deterministically_and_ignores_spoofed_xff() {
    let b = three();
    let cfg = named("ip_hash", &ids(&[&b[0], &b[1], &b[2]]), "");
    let proxy = Proxy::start(&cfg);
    let other_instance = Proxy::start(&cfg);
    let mut used = std::collections::BTreeSet::new();
    for i in 2..12u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
        let c = client::h1_from(ip);
        let want = owner(ip);
        for j in 0..5 {
            // an untrusted peer cannot choose its backend with X-Forwarded-For
            let spoof = format!("203.0.113.{j}");
            let r = get_with(&c, &proxy.url("/"), &[("x-forwarded-for", &spoof)]).await;
            assert_eq!(r.backend(), want, "client {ip}");
        }
        assert_eq!(
            get(&c, &other_instance.url("/")).await.backend(),
            want,
            "instances disagree on {ip}"
        );
        used.insert(want);
    }
    assert_eq!(used.len(), 3, "ten clients spread over all three backends");
}

#[tokio::test]
async fn ip_hash_believes_x_forwarded_for_from_trusted_proxies() {
    let b = three();
    let cfg = named("ip_hash", &ids(&[&b[0], &b[1], &b[2]]), "").replace(
        "admin_listen",
        "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\nadmin_listen",
    );
    let proxy = Proxy::start(&cfg);
    let c = client::h1();
    for j in 1..30u8 {
        let real = IpAddr::V4(Ipv4Addr::new(198, 51, 100, j));
        let xff = format!("192.0.2.99, {real}, 10.1.2.3");
        let r = get_with(&c, &proxy.url("/headers"), &[("x-forwarded-for", &xff)]).await;
        assert_eq!(r.backend(), owner(real));
        assert!(
            r.body
                .contains(&format!("x-forwarded-for: {xff}, 127.0.0.1\n")),
            "{}",
            r.body
        );
    }
}

#[tokio::test]
async fn ip_hash_fails_over_and_comes_back() {
    let [b1, b2, b3] = three();
    let addrs = [b1.addr, b2.addr, b3.addr];
    let backends: Vec<(&str, SocketAddr, &str)> = vec![
        ("b1", addrs[0], ""),
        ("b2", addrs[1], ""),
        ("b3", addrs[2], ""),
    ];
    let proxy = Proxy::start(&named(
        "ip_hash",
        &backends,
        "[pools.web.health]\nfail_timeout = \"1s\"\n",
    ));
    // a client whose backend is b2
    let ip = (2..=250u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)))
        .find(|&ip| owner(ip) == "b2")
        .unwrap();
    let c = client::h1_from(ip);
    assert_eq!(get(&c, &proxy.url("/")).await.backend(), "b2");
    b2.kill();
    let mut elsewhere = None;
    for _ in 0..20 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(r.status, 200, "a client of a dead backend saw an error");
        assert_ne!(r.backend(), "b2");
        elsewhere.get_or_insert(r.backend());
        assert_eq!(Some(r.backend()), elsewhere, "its fallback is stable");
    }
    let _b2 = Backend::start_on("b2", addrs[1]);
    assert!(
        support::eventually_async(support::DEADLINE, || async {
            get(&c, &proxy.url("/")).await.backend() == "b2"
        })
        .await,
        "the client did not come back to its recovered backend"
    );
    drop((b1, b3));
}

/// The in-memory-session app behind each policy: one client's 200 requests
/// stay on one backend with an unbroken counter; ten clients use all three
/// backends; when the pinned backend dies the client carries on elsewhere
/// without a 5xx (and, as this app keeps sessions in memory, logged out).
async fn in_memory_sessions(policy: &str) {
    let [b1, b2, b3] = three();
    let backends: Vec<(&str, SocketAddr, &str)> = vec![
        ("b1", b1.addr, ""),
        ("b2", b2.addr, ""),
        ("b3", b3.addr, ""),
    ];
    let extra = if policy == "cookie" { STICKY } else { "" };
    let proxy = Proxy::start(&named(policy, &backends, extra));
    let mut used = std::collections::BTreeSet::new();
    let mut first = None;
    for i in 2..12u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 2, i));
        let mut browser = Browser::new(client::h1_from(ip));
        let login = browser.get(&proxy.url("/login")).await;
        assert_eq!(login.status, 200);
        let home = login.backend();
        used.insert(home.clone());
        let rounds = if i == 2 { 200 } else { 5 };
        for n in 1..=rounds {
            let r = browser.get(&proxy.url("/count")).await;
            assert_eq!(
                (r.body.as_str(), r.backend()),
                (format!("count={n}").as_str(), home.clone())
            );
        }
        if first.is_none() {
            first = Some((browser, home));
        }
    }
    assert_eq!(
        used.len(),
        3,
        "{policy}: ten clients should use all three backends: {used:?}"
    );

    let (mut browser, home) = first.unwrap();
    match home.as_str() {
        "b1" => b1.kill(),
        "b2" => b2.kill(),
        _ => b3.kill(),
    }
    let r = browser.get(&proxy.url("/count")).await;
    assert!(r.status.as_u16() < 500, "{policy}: {} {}", r.status, r.body);
    assert_ne!(r.backend(), home);
    assert_eq!(
        r.body, "no session",
        "the in-memory session died with its backend"
    );
    let again = browser.get(&proxy.url("/login")).await;
    let new_home = again.backend();
    for n in 1..=10 {
        let r = browser.get(&proxy.url("/count")).await;
        assert_eq!(
            (r.body.as_str(), r.backend()),
            (format!("count={n}").as_str(), new_home.clone())
        );
    }
}

#[tokio::test]
async fn in_memory_sessions_behind_cookie() {
    in_memory_sessions("cookie").await;
}

#[tokio::test]
async fn in_memory_sessions_behind_ip_hash() {
    in_memory_sessions("ip_hash").await;
}

#[allow(dead_code)]
fn unused(_: &Backend) -> String {
    entry("127.0.0.1:1".parse().unwrap())
}
