//! The admin listener: metrics, health, pools and reload; what it asks of
//! a client (a token, its own Host, no Origin) and how long it waits on one.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::client::{self, get};
use support::{Backend, DEADLINE, Proxy, closed_within, config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A token long enough that `check` does not call it weak.
const TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";

/// A proxy with an admin listener on an ephemeral loopback port, and
/// `server` lines (e.g. `admin_token = "..."`) and `extra` TOML added.
fn admin_proxy(backend: &Backend, server: &str, extra: &str) -> Proxy {
    let cfg = config("round_robin", &[backend.entry()], extra).replace(
        "workers = 1\n",
        &format!("workers = 1\nadmin_listen = \"127.0.0.1:0\"\n{server}\n"),
    );
    Proxy::start(&cfg)
}

/// One request to the admin listener on a new connection, closed after
/// it: its status and the whole answer. `Host` is the listener's address
/// unless `headers` gives one.
fn ask(admin: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {admin}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn with_an_admin_token_every_admin_path_needs_it_and_metrics_and_probes_do_not() {
    let b = Backend::start("b");
    let proxy = admin_proxy(&b, &format!("admin_token = \"{TOKEN}\""), "");
    let admin = proxy.admin_addr();
    let right = bearer(TOKEN);
    let wrong = bearer("0123456789abcdef0123456789abcdef-admim");

    for (method, path) in [
        ("GET", "/admin/pools"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/sessions/abc"),
        ("DELETE", "/admin/sessions/abc"),
    ] {
        let (status, answer) = ask(admin, method, path, &[]);
        assert_eq!(status, 401, "{method} {path} without a token:\n{answer}");
        assert!(
            answer.contains("www-authenticate: Bearer") && answer.contains("Authorization: Bearer"),
            "{method} {path}: the answer says what is missing:\n{answer}"
        );
        let (status, answer) = ask(admin, method, path, &[("Authorization", &wrong)]);
        assert_eq!(status, 401, "{method} {path} with a wrong token:\n{answer}");
        assert!(answer.contains("not server.admin_token"), "{answer}");
        // the token alone, or another scheme, is not the header asked for
        let (status, _) = ask(admin, method, path, &[("Authorization", TOKEN)]);
        assert_eq!(status, 401, "{method} {path} with the bare token");
    }
    // nothing was reloaded by the refused requests
    let (status, answer) = ask(admin, "GET", "/metrics", &[]);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("sessionlb_config_generation 1\n"),
        "{answer}"
    );

    // the right token opens each of them (the scheme in any case)
    let (status, answer) = ask(admin, "GET", "/admin/pools", &[("Authorization", &right)]);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"name\":\"web\""), "{answer}");
    let (status, answer) = ask(
        admin,
        "POST",
        "/admin/reload",
        &[("Authorization", &format!("bearer  {TOKEN}"))],
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.ends_with("reloaded: generation 2\n"), "{answer}");
    let (status, answer) = ask(
        admin,
        "GET",
        "/admin/sessions/abc",
        &[("Authorization", &right)],
    );
    assert_eq!(status, 404, "{answer}");
    assert!(answer.ends_with("no such session\n"), "{answer}");

    // Prometheus and an orchestrator's probes need no token
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (status, answer) = ask(admin, "GET", path, &[]);
        assert_eq!(status, 200, "GET {path}:\n{answer}");
    }
}

#[test]
fn a_web_page_cannot_reach_the_admin_listener() {
    let b = Backend::start("b");
    let proxy = admin_proxy(&b, "", "");
    let admin = proxy.admin_addr();
    let port = admin.port();

    // a page's POST carries its Origin: refused, and nothing reloaded
    let (status, answer) = ask(
        admin,
        "POST",
        "/admin/reload",
        &[("Origin", "http://evil.example")],
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("Origin"), "the answer says why:\n{answer}");
    // even one from the listener's own address
    let (status, _) = ask(
        admin,
        "GET",
        "/admin/pools",
        &[("Origin", &format!("http://{admin}"))],
    );
    assert_eq!(status, 403);

    // DNS rebinding: evil.example resolves to 127.0.0.1, the page reads
    // what its own name answers
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_string(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("localhost:{}", port.wrapping_add(1)),
    ] {
        for path in ["/admin/sessions/abc", "/admin/pools", "/metrics"] {
            let (status, answer) = ask(admin, "GET", path, &[("Host", &host)]);
            assert_eq!(status, 403, "Host {host}, GET {path}:\n{answer}");
            assert!(
                answer.contains("is not this admin listener")
                    && answer.contains("server.admin_hosts"),
                "the answer says why:\n{answer}"
            );
        }
    }
    let (status, answer) = ask(admin, "GET", "/metrics", &[]);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("sessionlb_config_generation 1\n"),
        "{answer}"
    );
}

#[test]
fn the_admin_listener_answers_to_its_address_localhost_and_admin_hosts() {
    let b = Backend::start("b");
    let proxy = admin_proxy(&b, "admin_hosts = [\"lb.internal\"]", "");
    let admin = proxy.admin_addr();
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "lb.internal".to_string(),
        "lb.internal:8443".to_string(),
        format!("LB.Internal.:{port}"),
    ] {
        let (status, answer) = ask(admin, "GET", "/admin/pools", &[("Host", &host)]);
        assert_eq!(status, 200, "Host {host}:\n{answer}");
    }
    // a name is the whole name
    for host in [
        format!("lb.internal.evil.example:{port}"),
        format!("internal:{port}"),
    ] {
        let (status, answer) = ask(admin, "GET", "/admin/pools", &[("Host", &host)]);
        assert_eq!(status, 403, "Host {host}:\n{answer}");
    }
}

#[tokio::test]
async fn a_half_sent_admin_request_is_closed_at_the_request_header_timeout() {
    let b = Backend::start("b");
    let proxy = admin_proxy(
        &b,
        "",
        "[timeouts]\nrequest_header = \"500ms\"\nidle = \"60s\"\n",
    );
    let admin = proxy.admin_addr();
    // headers that never end; the proxy's clock starts at accept, after
    // `started`, so however slow the machine the close cannot come sooner
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("POST /admin/reload HTTP/1.1\r\nHost: {admin}\r\nX-Slow: ").as_bytes())
        .await
        .unwrap();
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a half-sent admin request was kept open");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(499), "{took:?}");
    // and a connection that sends nothing at all
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a silent admin connection was kept open");
}

#[tokio::test]
async fn an_idle_admin_connection_is_closed_at_the_idle_timeout() {
    let b = Backend::start("b");
    let proxy = admin_proxy(
        &b,
        "",
        "[timeouts]\nidle = \"500ms\"\nrequest_header = \"10s\"\n",
    );
    let admin = proxy.admin_addr();
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    // idle from the end of the response, after `started`
    let started = Instant::now();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("an idle keep-alive admin connection was kept open");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(499), "{took:?}");
}

#[test]
fn a_wrong_method_is_405_with_the_methods_allowed() {
    let b = Backend::start("b");
    let proxy = admin_proxy(&b, "", "");
    let admin = proxy.admin_addr();
    for (method, path, allow) in [
        ("GET", "/admin/reload", "POST"),
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/admin/pools", "GET, HEAD"),
        ("PUT", "/admin/sessions/abc", "GET, HEAD, DELETE"),
    ] {
        let (status, answer) = ask(admin, method, path, &[]);
        assert_eq!(status, 405, "{method} {path}:\n{answer}");
        assert!(
            answer.contains(&format!("\r\nallow: {allow}\r\n")),
            "{method} {path}:\n{answer}"
        );
        assert!(
            answer.contains(&format!("{path} takes {allow}")),
            "{answer}"
        );
    }
    let (status, _) = ask(admin, "GET", "/admin/nothing-here", &[]);
    assert_eq!(status, 404);
}

#[test]
fn check_warns_of_an_admin_listener_open_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessionlb.toml");
    // `sessionlb check` of a file with these `[server]` lines: its exit
    // code, stdout and stderr
    let check = |server: &str| {
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:8080\"]\n{server}\n[pools.web]\nbackends = [{{ addr = \"127.0.0.1:9001\" }}]\n"
            ),
        )
        .unwrap();
        let out = support::check(&path);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let warning = "warning: server.admin_listen: 0.0.0.0:9090 is not a loopback address and server.admin_token is not set: whoever reaches it can reload the configuration and read or revoke sessions; set server.admin_token";

    let (code, stdout, _) = check("admin_listen = \"0.0.0.0:9090\"");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains(warning), "{stdout}");

    for quiet in [
        format!("admin_listen = \"0.0.0.0:9090\"\nadmin_token = \"{TOKEN}\""),
        "admin_listen = \"127.0.0.1:9090\"".to_string(),
        "admin_listen = \"[::1]:9090\"".to_string(),
    ] {
        let (code, stdout, _) = check(&quiet);
        assert_eq!(code, Some(0), "{quiet}: {stdout}");
        assert!(
            !stdout.contains("warning: server.admin"),
            "{quiet}: {stdout}"
        );
    }

    // a short token is served but called weak; a token that cannot be
    // sent in a header, or an admin_hosts entry with a port, is refused
    let (code, stdout, _) = check("admin_listen = \"0.0.0.0:9090\"\nadmin_token = \"letmein\"");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("warning: server.admin_token: is 7 characters long"),
        "{stdout}"
    );
    let (code, _, stderr) =
        check("admin_token = \"has a space\"\nadmin_hosts = [\"lb.internal:9090\"]");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("server.admin_token: must be printable ASCII without spaces"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "server.admin_hosts[0]: \"lb.internal:9090\" is not a host name or an IP address"
        ),
        "{stderr}"
    );
}

#[test]
fn reload_and_status_commands_send_the_token_and_host_the_listener_asks_for() {
    let b = Backend::start("b");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = config("round_robin", &[b.entry()], "").replace(
        "workers = 1\n",
        &format!("workers = 1\nadmin_listen = \"{admin}\"\nadmin_token = \"{TOKEN}\"\n"),
    );
    let proxy = Proxy::start(&cfg);
    assert_eq!(proxy.admin_addr(), admin);
    // `sessionlb COMMAND -c <the proxy's file>`: exit code, stdout, stderr
    let run = |command: &str| {
        let out = std::process::Command::new(support::bin())
            .args([command, "-c"])
            .arg(&proxy.config_path)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, stdout, stderr) = run("reload");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, "reloaded: generation 2\n");

    let (code, stdout, stderr) = run("status");
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.starts_with("generation 2\npool web (round_robin)\n"),
        "{stdout}"
    );
    let line = format!("  {0} at {0}: up, weight 1, 0 in flight\n", b.addr);
    assert!(stdout.contains(&line), "{stdout}");

    // a file whose token is not the instance's is refused, and says so
    std::fs::write(
        &proxy.config_path,
        cfg.replace(TOKEN, "another-token-of-thirty-two-chars!!"),
    )
    .unwrap();
    let (code, _, stderr) = run("reload");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("401 Unauthorized"), "{stderr}");
}
