//! What a reload does to what it removes: backends and listeners.

mod support;

use std::time::Duration;

use support::client::{self, get};
use support::{Backend, DEADLINE, Proxy, eventually};

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
    std::fs::write(&proxy.config_path, config).unwrap();
    let answer = client::send(
        &client::h1_fresh(),
        http::Request::post(format!("http://{}/admin/reload", proxy.admin_addr()))
            .body(Default::default())
            .unwrap(),
    )
    .await;
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
