//! The shared-store harness itself, without the proxy: a real redis-server
//! per test (stopped, restarted, behind a password) and the Python apps,
//! whose sessions any instance accepts from another. The shared-store
//! tests rely on all of this; here it fails on its own, with its own
//! message, when it breaks.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use support::apps::App;
use support::client::{self, HttpClient, Resp};
use support::redis::Redis;

#[test]
fn redis_commands_stop_and_restart() {
    let mut redis = Redis::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}/0"));
    assert_eq!(redis.cmd(&["SET", "slb:a", "one two"]), "OK");
    assert_eq!(redis.cmd(&["GET", "slb:a"]), "one two");
    assert_eq!(redis.cmd(&["GET", "slb:none"]), "(nil)");
    assert_eq!(redis.cmd(&["INCR", "slb:n"]), "1");
    assert_eq!(redis.cmd(&["RPUSH", "other", "x", "y"]), "2");
    assert_eq!(redis.cmd(&["LRANGE", "other", "0", "-1"]), "x\ny");
    assert!(redis.cmd(&["INCR", "slb:a"]).starts_with("ERR "));
    assert_eq!(redis.keys("slb:*"), ["slb:a", "slb:n"]);
    assert!(redis.keys("none:*").is_empty());

    redis.stop();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cmd(&["PING"]), "PONG");
    // nothing is kept on disk, so nothing survives a restart
    assert_eq!(redis.cmd(&["GET", "slb:a"]), "(nil)");
}

#[test]
fn redis_with_password() {
    let redis = Redis::start_with_password("slb", "p@ss word");
    let port = redis.port();
    assert_eq!(
        redis.url(),
        format!("redis://slb:p%40ss%20word@127.0.0.1:{port}/0")
    );
    assert_eq!(redis.cmd(&["ACL", "WHOAMI"]), "slb");
    assert_eq!(redis.cmd(&["SET", "k", "v"]), "OK");
    assert_eq!(redis.cmd(&["GET", "k"]), "v");

    // without AUTH, or with a wrong password, nothing is allowed
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = |w: &[u8]| {
        (&s).write_all(w).unwrap();
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        l
    };
    assert!(line(b"GET k\r\n").starts_with("-NOAUTH"));
    assert!(line(b"AUTH slb wrong\r\n").starts_with("-WRONGPASS"));
    assert!(line(b"AUTH default \"\"\r\n").starts_with("-WRONGPASS"));
}

#[tokio::test]
async fn flask_counter_sessions_move_between_instances() {
    app_sessions_move_between_instances("flask_counter.py", &["session"]).await;
}

#[tokio::test]
async fn two_cookie_sessions_move_between_instances() {
    let (a, b) = app_sessions_move_between_instances("two_cookie.py", &["sess", "sess.sig"]).await;
    let c = client::h1();
    let login = call(&c, Method::POST, &a.url("/login?user=eve"), "").await;
    let cookie = cookie_header(&login);
    let value = cookie.split("; ").next().unwrap();
    assert!(value.starts_with("sess="), "{cookie}");
    // the value without its signature, or with another's, is no session
    let alone = call(&c, Method::GET, &b.url("/count"), value).await;
    assert_eq!(alone.status, 401);
    let forged = format!("{value}; sess.sig=AAAA");
    assert_eq!(
        call(&c, Method::GET, &b.url("/count"), &forged)
            .await
            .status,
        401
    );
    assert_eq!(
        call(&c, Method::GET, &b.url("/count"), &cookie)
            .await
            .status,
        200
    );
}

/// Two instances of `script`: a session started on one is carried on by
/// the other, read without a `Set-Cookie`, ended with expired cookies; and
/// an instance killed and started again on its port answers there again.
async fn app_sessions_move_between_instances(script: &str, names: &[&str]) -> (App, App) {
    let a = App::start(script, "a");
    let b = App::start(script, "b");
    assert_ne!(a.port(), b.port());
    assert_eq!(
        a.entry(),
        format!("{{ addr = \"127.0.0.1:{}\" }}", a.port())
    );
    let c = client::h1();

    let login = call(&c, Method::POST, &a.url("/login?user=ann"), "").await;
    assert_eq!(json(&login), (Some("ann".into()), Some(0), "a".into()));
    assert_eq!(login.backend(), "a");
    let cookie = cookie_header(&login);
    assert_eq!(cookie_names(&login), names, "{login:?}");

    let count = call(&c, Method::POST, &b.url("/count"), &cookie).await;
    assert_eq!(json(&count), (Some("ann".into()), Some(1), "b".into()));
    let cookie = cookie_header(&count);
    let count = call(&c, Method::GET, &a.url("/count"), &cookie).await;
    assert_eq!(json(&count), (Some("ann".into()), Some(2), "a".into()));
    let cookie = cookie_header(&count);

    let who = call(&c, Method::GET, &b.url("/whoami"), &cookie).await;
    assert_eq!(json(&who), (Some("ann".into()), Some(2), "b".into()));
    assert!(who.headers.get("set-cookie").is_none(), "{who:?}");

    let anon = call(&c, Method::GET, &b.url("/count"), "").await;
    assert_eq!(anon.status, 401);
    assert_eq!(json(&anon), (None, None, "b".into()));

    let logout = call(&c, Method::POST, &b.url("/logout"), &cookie).await;
    assert_eq!(json(&logout), (None, None, "b".into()));
    let expired: Vec<&str> = logout
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(expired.len(), names.len(), "{logout:?}");
    assert!(
        expired.iter().all(|v| v.contains("Max-Age=0")),
        "{logout:?}"
    );

    // killed, its port refuses; started again there, it answers
    let port = a.port();
    a.kill();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    let a = App::start_on(script, "a2", port);
    let who = call(&c, Method::GET, &a.url("/whoami"), &cookie).await;
    assert_eq!(json(&who), (Some("ann".into()), Some(2), "a2".into()));
    (a, b)
}

async fn call(c: &HttpClient, method: Method, url: &str, cookie: &str) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
    }
    client::send(c, req.body(Full::new(Bytes::new())).unwrap()).await
}

/// The `Cookie` header a browser sends back after `resp`.
fn cookie_header(resp: &Resp) -> String {
    let pairs: Vec<&str> = resp
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap())
        .collect();
    assert!(!pairs.is_empty(), "no Set-Cookie in {resp:?}");
    pairs.join("; ")
}

fn cookie_names(resp: &Resp) -> Vec<String> {
    cookie_header(resp)
        .split("; ")
        .map(|p| p.split_once('=').unwrap().0.to_string())
        .collect()
}

/// `(user, n, instance)` of an app's JSON answer.
fn json(resp: &Resp) -> (Option<String>, Option<u64>, String) {
    let v: serde_json::Value =
        serde_json::from_str(&resp.body).unwrap_or_else(|e| panic!("{e}: {resp:?}"));
    (
        v["user"].as_str().map(str::to_string),
        v["n"].as_u64(),
        v["instance"].as_str().unwrap().to_string(),
    )
}
