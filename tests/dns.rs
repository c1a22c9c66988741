//! Backends that follow DNS (`resolve = true`): every address a name has
//! is a backend, added and removed as the name's answers change, with a
//! resolver the test controls (a DNS server on loopback).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use support::dns::DnsServer;
use support::load::{Load, mixed_clients};
use support::{Backend, DEADLINE, Proxy, eventually};

/// Four backends on one port, at 127.0.0.1 to 127.0.0.4, as four
/// replicas of an app behind one name.
fn replicas() -> (u16, Vec<Backend>) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let backends = (1..=4)
        .map(|i| {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, i));
            Backend::start_on(&format!("app{i}"), SocketAddr::new(ip, port))
        })
        .collect();
    (port, backends)
}

fn ips(of: &[u8]) -> Vec<Ipv4Addr> {
    of.iter().map(|&i| Ipv4Addr::new(127, 0, 0, i)).collect()
}

fn config(dns: &DnsServer, port: u16, policy: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n\n\
         [resolver]\nnameservers = [\"{}\"]\n\n\
         [pools.web]\npolicy = \"{policy}\"\nresolve_interval = \"100ms\"\n\
         backends = [{{ addr = \"app.test:{port}\", resolve = true }}]\n",
        dns.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_scaled_from_1_to_4_to_2_replicas_under_load_loses_no_request() {
    let dns = DnsServer::start();
    let (port, apps) = replicas();
    dns.set("app.test", &ips(&[1]));
    let proxy = Proxy::start(&config(&dns, port, "round_robin"));
    let load = Load::start(&proxy.url("/"), mixed_clients());
    assert!(load.more(200));
    assert_eq!(
        load.answered_by().keys().collect::<Vec<_>>(),
        ["app1"],
        "one replica at start"
    );

    // scaled to 4: each replica gets traffic
    dns.set("app.test", &ips(&[1, 2, 3, 4]));
    let all_serve = eventually(DEADLINE, || apps.iter().all(|a| a.hits() > 0));
    assert!(all_serve, "{:?}", load.answered_by());
    let pools = support::client::get(
        &support::client::h1(),
        &format!("http://{}/admin/pools", proxy.admin_addr()),
    )
    .await
    .body;
    for i in 1..=4 {
        let identity = format!("\"app.test:{port}/127.0.0.{i}:{port}\"");
        assert!(pools.contains(&identity), "{identity} not in {pools}");
    }

    // scaled to 2: the replicas that go get nothing new once the proxy
    // has followed (their requests in flight finish)
    dns.set("app.test", &ips(&[1, 3]));
    let followed = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("backends follow DNS")
            && l.contains(&format!("removed=127.0.0.2:{port}, 127.0.0.4:{port}"))
    });
    assert!(followed.is_some(), "{:#?}", proxy.stderr.all());
    assert!(load.more(100));
    let (gone2, gone4) = (apps[1].hits(), apps[3].hits());
    let (kept1, kept3) = (apps[0].hits(), apps[2].hits());
    assert!(load.more(400));
    assert_eq!((apps[1].hits(), apps[3].hits()), (gone2, gone4));
    assert!(apps[0].hits() > kept1 && apps[2].hits() > kept3);

    let failed = load.finish().await;
    assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());
    assert!(dns.queries() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_stops_existing_takes_its_backends_and_a_silent_server_keeps_them() {
    let dns = DnsServer::start();
    let (port, apps) = replicas();
    dns.set("app.test", &ips(&[1, 2]));
    let proxy = Proxy::start(&config(&dns, port, "round_robin"));
    let client = support::client::h1();
    let url = proxy.url("/");
    for _ in 0..10 {
        assert_eq!(support::client::get(&client, &url).await.status, 200);
    }
    assert!(apps[0].hits() > 0 && apps[1].hits() > 0);

    // NXDOMAIN: the name has no address now, so the pool has no backend
    dns.remove("app.test");
    let gone = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("backends follow DNS") && l.contains("now=none")
    });
    assert!(gone.is_some(), "{:#?}", proxy.stderr.all());
    let r = support::client::get(&client, &url).await;
    assert_eq!(r.status, 503, "{}", r.body);

    // it comes back, then its server stops answering: its backends stay
    dns.set("app.test", &ips(&[3]));
    let back = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("backends follow DNS") && l.contains(&format!("now=127.0.0.3:{port}"))
    });
    assert!(back.is_some(), "{:#?}", proxy.stderr.all());
    drop(dns);
    let silent = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("cannot look up a backend name; its backends stay as they were")
    });
    assert!(silent.is_some(), "{:#?}", proxy.stderr.all());
    for _ in 0..5 {
        let r = support::client::get(&client, &url).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "app3"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_new_by_dns_gets_traffic_only_once_its_health_check_passed() {
    let dns = DnsServer::start();
    let (port, apps) = replicas();
    // the second replica is still starting: its health check fails
    apps[1].set_health(503);
    dns.set("app.test", &ips(&[1]));
    let checked = config(&dns, port, "round_robin").replace(
        "backends = [",
        "health = { check = { path = \"/healthz\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 3 } }\nbackends = [",
    );
    let proxy = Proxy::start(&checked);
    let load = Load::start(&proxy.url("/"), mixed_clients());
    assert!(load.more(100));

    dns.set("app.test", &ips(&[1, 2]));
    let followed = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("backends follow DNS") && l.contains(&format!("added=127.0.0.2:{port}"))
    });
    assert!(followed.is_some(), "{:#?}", proxy.stderr.all());
    // checked and failing: held out while the load goes on
    assert!(eventually(DEADLINE, || apps[1].health_checks() >= 3));
    assert!(load.more(300));
    assert_eq!(apps[1].hits(), 0, "app2 got client requests");

    // ready: it gets traffic after its first pass, not before
    apps[1].set_health(200);
    assert!(eventually(DEADLINE, || apps[1].hits() > 0));
    assert!(apps[1].passes_before_first_hit().is_some_and(|n| n >= 1));
    let failed = load.finish().await;
    assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());
}

/// `n` loopback addresses from 127.0.1.1 up, where nothing listens: a
/// name with many replicas, of which only the count matters here.
fn many(n: u8) -> Vec<Ipv4Addr> {
    (1..=n).map(|i| Ipv4Addr::new(127, 0, 1, i)).collect()
}

/// `/admin/pools`: the backends of pool `pool`, by identity.
async fn backends_of(proxy: &Proxy, pool: &str) -> Vec<String> {
    let url = format!("http://{}/admin/pools", proxy.admin_addr());
    let body = support::client::get(&support::client::h1(), &url)
        .await
        .body;
    let state: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pools = state["pools"].as_array().unwrap();
    let found = pools.iter().find(|p| p["name"] == pool).unwrap();
    found["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect()
}

/// How many `sessionlb_backend_up` series pool `pool` has.
async fn up_series(proxy: &Proxy, pool: &str) -> usize {
    let url = format!("http://{}/metrics", proxy.admin_addr());
    let text = support::client::get(&support::client::h1(), &url)
        .await
        .body;
    let prefix = format!("sessionlb_backend_up{{pool=\"{pool}\",");
    text.lines().filter(|l| l.starts_with(&prefix)).count()
}

#[tokio::test]
async fn a_name_with_many_addresses_places_64_backends_by_default() {
    let dns = DnsServer::start();
    dns.set("many.test", &many(70));
    let port = 8080;
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n\n\
         [resolver]\nnameservers = [\"{}\"]\n\n\
         [pools.web]\nbackends = [{{ addr = \"many.test:{port}\", resolve = true }}]\n",
        dns.addr
    ));
    let placed = backends_of(&proxy, "web").await;
    let first: Vec<String> = many(64)
        .iter()
        .map(|ip| format!("many.test:{port}/{ip}:{port}"))
        .collect();
    assert_eq!(
        placed.len(),
        64,
        "backends placed for a name with 70 addresses"
    );
    assert_eq!(placed, first, "the first 64 addresses, sorted");
    assert_eq!(up_series(&proxy, "web").await, 64);
    let said = proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("max_addresses"));
    let said = said.expect("no warning that addresses were left out");
    for part in [
        "pool=web",
        &format!("name=many.test:{port}"),
        "found=70",
        "dropped=6",
    ] {
        assert!(said.contains(part), "{part} not in {said}");
    }
}

#[tokio::test]
async fn max_addresses_keeps_the_same_first_addresses_and_warns_once_per_change() {
    let dns = DnsServer::start();
    let port = 8080;
    // answered in another order than sorted
    let mut answer = many(20);
    answer.reverse();
    dns.set("many.test", &answer);
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n\n\
         [resolver]\nnameservers = [\"{}\"]\n\n\
         [pools.web]\nresolve_interval = \"100ms\"\nmax_addresses = 8\n\
         backends = [{{ addr = \"many.test:{port}\", resolve = true }}]\n",
        dns.addr
    ));
    let first_8: Vec<String> = many(8)
        .iter()
        .map(|ip| format!("many.test:{port}/{ip}:{port}"))
        .collect();
    assert_eq!(backends_of(&proxy, "web").await, first_8);
    assert_eq!(up_series(&proxy, "web").await, 8);
    let warned = |l: &str| l.contains("more addresses than max_addresses");
    assert!(
        proxy
            .stderr
            .wait_for(DEADLINE, |l| warned(l) && l.contains("found=20 dropped=12"))
            .is_some()
    );

    // the same addresses in yet another order, looked up again and again:
    // the same backends, and nothing more said
    let mut shuffled = many(20);
    shuffled.rotate_left(7);
    dns.set("many.test", &shuffled);
    let queries = dns.queries();
    assert!(eventually(DEADLINE, || dns.queries() >= queries + 5));
    assert_eq!(backends_of(&proxy, "web").await, first_8);
    assert_eq!(proxy.stderr.all().iter().filter(|l| warned(l)).count(), 1);

    // fewer addresses, still over the limit: said once more
    dns.set("many.test", &many(12));
    assert!(
        proxy
            .stderr
            .wait_for(DEADLINE, |l| warned(l) && l.contains("found=12 dropped=4"))
            .is_some()
    );
    let queries = dns.queries();
    assert!(eventually(DEADLINE, || dns.queries() >= queries + 5));
    assert_eq!(proxy.stderr.all().iter().filter(|l| warned(l)).count(), 2);
    assert_eq!(backends_of(&proxy, "web").await, first_8);

    // out of range is refused with its path
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessionlb.toml");
    for bad in ["0", "1025"] {
        std::fs::write(
            &path,
            format!("[server]\nlisten = [\"127.0.0.1:0\"]\n\n[pools.web]\nmax_addresses = {bad}\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n"),
        )
        .unwrap();
        let out = support::check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "pools.web.max_addresses: must be between 1 and 1024, got {bad}"
            )),
            "{stderr}"
        );
    }
}
