//! Policies, seen from outside: which backend answered each request.

mod support;

use std::time::Duration;

use support::client::{self, get};
use support::{Backend, Proxy, config};

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
    let slow = Backend::start_slow("slow", Duration::from_millis(500));
    let f1 = Backend::start("f1");
    let f2 = Backend::start("f2");
    let proxy = Proxy::start(&config(
        "least_conn",
        &[slow.entry(), f1.entry(), f2.entry()],
        "",
    ));
    let url = proxy.url("/");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = client::h1();
            for _ in 0..15 {
                assert_eq!(get(&client, &url).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = slow.hits() + f1.hits() + f2.hits();
    assert_eq!(total, 90);
    // round robin would give the slow one 30
    assert!(slow.hits() <= 10, "slow backend got {} of 90", slow.hits());
}
