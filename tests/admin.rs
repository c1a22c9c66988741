//! The admin listener: metrics, health, pools and reload.

mod support;

use support::client::{self, get};
use support::{Backend, Proxy, config};

#[tokio::test]
async fn metrics_health_pools_and_reload() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let cfg = config("round_robin", &[a.entry(), b.entry()], "").replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    );
    let proxy = Proxy::start(&cfg);
    let admin = format!("http://{}", proxy.admin_addr());
    let c = client::h1();
    for _ in 0..4 {
        assert_eq!(get(&c, &proxy.url("/")).await.status, 200);
    }
    assert_eq!(get(&c, &proxy.url("/status/503")).await.status, 503);

    assert_eq!(get(&c, &format!("{admin}/healthz")).await.body, "ok\n");
    assert_eq!(get(&c, &format!("{admin}/readyz")).await.status, 200);

    let metrics = get(&c, &format!("{admin}/metrics")).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.body;
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    let (ia, ib) = (a.addr.to_string(), b.addr.to_string());
    let ok_a = sample(&format!(
        "sessionlb_requests_total{{pool=\"web\",backend=\"{ia}\",code=\"200\"}}"
    ));
    let ok_b = sample(&format!(
        "sessionlb_requests_total{{pool=\"web\",backend=\"{ib}\",code=\"200\"}}"
    ));
    assert_eq!(ok_a + ok_b, 4.0);
    assert_eq!(ok_a, 2.0);
    assert_eq!(
        sample(&format!(
            "sessionlb_backend_up{{pool=\"web\",backend=\"{ia}\"}}"
        )),
        1.0
    );
    assert_eq!(
        sample(&format!(
            "sessionlb_backend_in_flight{{pool=\"web\",backend=\"{ib}\"}}"
        )),
        0.0
    );
    assert_eq!(
        sample("sessionlb_request_duration_seconds_count{pool=\"web\"}"),
        5.0
    );
    assert_eq!(sample("sessionlb_config_generation"), 1.0);
    let loaded = sample("sessionlb_config_last_reload_success_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 600.0..=now + 1.0).contains(&loaded),
        "loaded at {loaded}, now {now}"
    );
    assert!(text.contains("# TYPE sessionlb_connections_open gauge"));

    let pools: serde_json::Value =
        serde_json::from_str(&get(&c, &format!("{admin}/admin/pools")).await.body).unwrap();
    assert_eq!(pools["pools"][0]["name"], "web");
    assert_eq!(pools["pools"][0]["backends"][1]["id"], ib);
    assert_eq!(pools["pools"][0]["backends"][1]["up"], true);

    // POST /admin/reload: a bad file is refused with its problems, a good one swaps
    std::fs::write(&proxy.config_path, "[pools.web]\nbackends = []\n").unwrap();
    let r = support::admin_reload(proxy.admin_addr()).await;
    assert_eq!(r.status, 400);
    assert!(
        r.body
            .contains("pools.web.backends: a pool needs at least one backend"),
        "{}",
        r.body
    );
    std::fs::write(
        &proxy.config_path,
        cfg.replace(&format!("{{ addr = \"{ia}\" }},\n"), ""),
    )
    .unwrap();
    let r = support::admin_reload(proxy.admin_addr()).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (200, "reloaded: generation 2\n")
    );
    for _ in 0..3 {
        assert_eq!(get(&c, &proxy.url("/")).await.body, "b");
    }
    let text = get(&c, &format!("{admin}/metrics")).await.body;
    assert!(
        text.contains("sessionlb_config_reloads_total{result=\"success\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sessionlb_config_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
}
