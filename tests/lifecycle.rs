//! Shutdown and logs of the running binary.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::client::{self, get, get_with};
use support::{Backend, Proxy, config, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let b = Backend::start("b");
    let mut proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let url = proxy.url("/sleep/1500");
    let slow = tokio::spawn(async move { get(&client::h1(), &url).await });
    assert!(eventually(support::DEADLINE, || b.in_flight() == 1));
    proxy.signal(Signal::SIGTERM);
    // stops accepting
    let addr = proxy.addr();
    assert!(eventually(support::DEADLINE, || {
        std::net::TcpStream::connect(addr).is_err()
    }));
    // the request in flight still completes
    let r = slow.await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"));
    let status = proxy
        .wait_exit(support::DEADLINE)
        .expect("proxy did not exit");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_wait() {
    let b = Backend::start("b");
    let cfg = config("round_robin", &[b.entry()], "")
        .replace("workers = 1\n", "workers = 1\nshutdown_timeout = \"1s\"\n");
    let mut proxy = Proxy::start(&cfg);
    let url = proxy.url("/sleep/60000");
    let _stuck = tokio::spawn(async move { get(&client::h1(), &url).await });
    assert!(eventually(support::DEADLINE, || b.in_flight() == 1));
    let started = Instant::now();
    proxy.signal(Signal::SIGINT);
    let status = proxy
        .wait_exit(support::DEADLINE)
        .expect("proxy did not exit");
    assert!(status.success(), "{status:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        proxy
            .stderr
            .all()
            .iter()
            .any(|l| l.contains("shutdown_timeout reached"))
    );
}

#[tokio::test]
async fn access_log_plain() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[b.entry()], ""));
    let r = get_with(
        &client::h1(),
        &proxy.url("/some/path?q=1"),
        &[("x-request-id", "rid-plain-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = proxy
        .stdout
        .wait_for(support::DEADLINE, |l| l.contains("rid-plain-1"))
        .expect("no access log line");
    assert!(
        line.contains(" 127.0.0.1 \"GET /some/path?q=1\" 200 1 "),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "pool=web backend={} request_id=rid-plain-1",
            b.addr
        )),
        "{line}"
    );
    assert!(line.contains("ms pool="), "{line}");
}

#[tokio::test]
async fn access_log_json_and_errors_are_logged_too() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&config(
        "round_robin",
        &[b.entry()],
        "[log]\naccess_format = \"json\"\n",
    ));
    get_with(
        &client::h1(),
        &proxy.url("/download/1000"),
        &[("x-request-id", "rid-json-1")],
    )
    .await;
    let line = proxy
        .stdout
        .wait_for(support::DEADLINE, |l| l.contains("rid-json-1"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/download/1000");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 1000);
    assert_eq!(v["pool"], "web");
    assert_eq!(v["backend"], b.addr.to_string());
    assert_eq!(v["request_id"], "rid-json-1");
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));

    // an answer of the proxy's own is logged with its status
    let out = support::client::raw(
        proxy.addr(),
        b"GET /nohost HTTP/1.1\r\nX-Request-Id: rid-json-2\r\nConnection: close\r\n\r\n",
        support::DEADLINE,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let line = proxy
        .stdout
        .wait_for(support::DEADLINE, |l| l.contains("rid-json-2"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 400);
    assert_eq!(v["path"], "/nohost");
    assert_eq!(v["backend"], "");
}

#[tokio::test]
async fn log_level_comes_from_the_file_unless_rust_log_is_set() {
    let b = Backend::start("b");
    let cfg = config("round_robin", &[b.entry()], "[log]\nlevel = \"debug\"\n");
    let proxy = Proxy::start_with_env(&cfg, &[("RUST_LOG", "")]);
    get(&client::h1(), &proxy.url("/")).await;
    assert!(
        proxy
            .stderr
            .wait_for(support::DEADLINE, |l| l.contains(" DEBUG "))
            .is_some()
    );

    let proxy = Proxy::start_with_env(&cfg, &[("RUST_LOG", "info")]);
    get(&client::h1(), &proxy.url("/")).await;
    assert!(
        proxy
            .stdout
            .wait_for(support::DEADLINE, |l| l.contains("\"GET /\""))
            .is_some()
    );
    assert!(!proxy.stderr.all().iter().any(|l| l.contains(" DEBUG ")));
}

#[tokio::test]
async fn sighup_reloads_a_valid_file_and_keeps_serving_on_a_bad_one() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let proxy = Proxy::start(&config("round_robin", &[a.entry()], ""));
    let client = client::h1();
    assert_eq!(get(&client, &proxy.url("/")).await.body, "a");

    std::fs::write(&proxy.config_path, config("round_robin", &[b.entry()], "")).unwrap();
    proxy.signal(Signal::SIGHUP);
    let reloaded = proxy
        .stderr
        .wait_for(support::DEADLINE, |l| l.contains("configuration reloaded"))
        .unwrap_or_else(|| panic!("{:#?}", proxy.stderr.all()));
    // one line says what changed
    assert!(
        reloaded.contains(&format!(
            "changes=pool web: added {}; removed {}",
            b.addr, a.addr
        )),
        "{reloaded}"
    );
    assert_eq!(get(&client, &proxy.url("/")).await.body, "b");

    std::fs::write(&proxy.config_path, "[pools.web]\nbackends = []\n").unwrap();
    proxy.signal(Signal::SIGHUP);
    let refused = proxy.stderr.wait_for(support::DEADLINE, |l| {
        l.contains("reload refused")
            && l.contains("pools.web.backends: a pool needs at least one backend")
    });
    assert!(refused.is_some(), "{:#?}", proxy.stderr.all());
    assert_eq!(get(&client, &proxy.url("/")).await.body, "b");
}
