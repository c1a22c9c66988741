//! The command line: run, check, demo, --version, --help.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::client::{self, get};
use support::{bin, check};

#[test]
fn version_and_help() {
    let out = Command::new(bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sessionlb {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "check", "demo"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn check_accepts_the_example_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sessionlb.toml");
    let out = check(std::path::Path::new(path));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": OK"), "{stdout}");
    assert!(stdout.contains("pool web: round_robin"), "{stdout}");
    assert!(stdout.contains("store:"), "{stdout}");
}

#[test]
fn run_refuses_what_this_version_cannot_serve_rather_than_ignore_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = ["127.0.0.1:0"]

[pools.web]
backends = [{ addr = "127.0.0.1:9001" }]

[store]
kind = "redis"
url = "redis://user:s3cr@t@127.0.0.1:6379/0"
sentinel = { master = "main", nodes = ["127.0.0.1:26379"] }
"#,
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("store.sentinel: Redis Sentinel is not supported by this version yet"),
        "{stderr}"
    );
    // check says so too, and never shows the password, '@' and all
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warning: store.sentinel: Redis Sentinel"),
        "{stdout}"
    );
    assert!(
        stdout.contains("redis://user:***@127.0.0.1:6379/0"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cr"), "{stdout}");
}

#[test]
fn check_reports_every_problem_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = ["127.0.0.1:8080", "127.0.0.1:8080"]

[pools.web]
policy = "random"
backends = [{ addr = "x" }, { addr = "127.0.0.1:9002", weight = 0 }]

[[routes]]
pool = "api"
"#,
    )
    .unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "5 problem(s)",
        "server.listen[1]: duplicate listen address 127.0.0.1:8080",
        "pools.web.policy: unknown policy \"random\"",
        "pools.web.backends[0].addr: invalid socket address \"x\"",
        "pools.web.backends[1].weight: weight must be between 1 and 256, got 0",
        "routes[0].pool: unknown pool \"api\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn run_refuses_a_bad_config_and_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[pools.web]\nbackends = []\nsurprise = 1\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pools.web.surprise: unknown field `surprise`"),
        "{err}"
    );

    let out = Command::new(bin())
        .args(["-c", "/nonexistent/sessionlb.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/sessionlb.toml")
    );
}

#[tokio::test]
async fn demo_balances_three_backends_and_keeps_their_session() {
    let mut child = Command::new(bin())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("demo prints its URL")
        .to_string();
    let admin = loop {
        let line = lines.next().expect("demo prints its admin URL").unwrap();
        if let Some(at) = line.find("/admin/sessions/") {
            let start = line.find("http://").unwrap();
            break line[start..at].to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let client = client::h1();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = get(&client, &url).await;
        assert_eq!(r.status, 200);
        assert!(r.body.starts_with("Hello from demo backend"), "{}", r.body);
        seen.push(r.backend());
    }
    seen.sort();
    assert_eq!(seen, ["1", "2", "3"]);

    // what the printed curl lines do: log in, count on every backend in
    // turn, the browser holding only the ticket
    let mut browser = client::Browser::new(client::h1());
    let login = browser.get(&format!("{url}login?user=alice")).await;
    assert!(
        login.body.ends_with("logged in as alice, count 0\n"),
        "{}",
        login.body
    );
    let mut backends = Vec::new();
    for n in 1..=6 {
        let r = browser.get(&format!("{url}count")).await;
        assert!(
            r.body.ends_with(&format!("alice, count {n}\n")),
            "{}",
            r.body
        );
        backends.push(r.backend());
    }
    backends.sort();
    backends.dedup();
    assert_eq!(backends, ["1", "2", "3"]);
    assert_eq!(browser.cookies.keys().collect::<Vec<_>>(), ["slb_sid"]);
    let id = browser.cookies["slb_sid"].clone();
    let stored = get(&client, &format!("{admin}/admin/sessions/{id}")).await;
    assert!(
        stored
            .body
            .contains(r#""name":"demo_session","value":"alice.6""#),
        "{}",
        stored.body
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
