//! Shared-store mode against its stores: a real `redis-server` per test
//! (stopped and restarted under the proxy, behind an ACL password, shared
//! by two proxies, read directly to see what is kept and for how long), and
//! the embedded memory store at its size limit.
//!
//! The app behind the proxy is a few lines of raw HTTP ([`app`]): it logs
//! in with a cookie session and shows, for every other request, the Cookie
//! header it received, so each test sees what the backend got.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::client::{self, HttpClient, Resp};
use support::raw::{RawBackend, Reply};
use support::redis::Redis;
use support::{DEADLINE, Proxy, config, eventually, eventually_async};

/// What a `fail_closed` pool answers while the store is away.
const UNAVAILABLE: &str = "503 Service Unavailable: the session store is unavailable\n";

const STORE_UP: &str = "sessionlb_session_store_up";
const LOAD_ERRORS: &str = "sessionlb_session_store_ops_total{op=\"load\",result=\"error\"}";
const FAIL_OPEN: &str = "sessionlb_session_fail_open_total";
const DELETED: &str = "sessionlb_sessions_deleted_total";
const EVICTIONS: &str = "sessionlb_session_store_evictions_total";

/// A ticket the proxy could have minted (canonical base64url id and
/// secret) but did not: no store holds it.
const UNKNOWN_TICKET: &str = "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A cookie-session app: `POST /login?v=VALUE[&pad=N]` answers
/// `Set-Cookie: session=VALUE; Path=/` (VALUE followed by N `x`); any other
/// request is answered with the Cookie header it came with
/// (`cookie: ...`), or `no cookie`.
fn app() -> RawBackend {
    RawBackend::with(|req| {
        let line = req.request_line();
        let target = line.split(' ').nth(1).unwrap_or("/");
        if let Some(query) = target.strip_prefix("/login?") {
            let mut value = String::new();
            let mut pad = 0;
            for pair in query.split('&') {
                match pair.split_once('=') {
                    Some(("v", v)) => value = v.to_string(),
                    Some(("pad", n)) => pad = n.parse().unwrap(),
                    _ => {}
                }
            }
            value.push_str(&"x".repeat(pad));
            return Reply::raw(format!(
                "HTTP/1.1 200 OK\r\nSet-Cookie: session={value}; Path=/\r\nContent-Length: 9\r\n\r\nlogged in"
            ));
        }
        let body = match req.header("cookie") {
            Some(c) => format!("cookie: {c}"),
            None => "no cookie".to_string(),
        };
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    })
}

/// One pool over `backend` in shared-store mode (`app_cookie = "session"`,
/// plus `session` lines), `[store]` as `store` says, with an admin listener.
fn store_config(backend: &RawBackend, session: &str, store: &str) -> String {
    config(
        "round_robin",
        &[backend.entry()],
        &format!("[pools.web.session]\napp_cookie = \"session\"\n{session}\n\n[store]\n{store}\n"),
    )
    .replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
}

/// `[store]` lines for `redis`.
fn redis_store(redis: &Redis) -> String {
    format!("kind = \"redis\"\nurl = \"{}\"\n", redis.url())
}

/// `[store]` lines for `redis` with a `secret`, which sessions stored
/// plain need.
fn redis_store_with_secret(redis: &Redis) -> String {
    format!(
        "{}secret = \"a-secret-for-plain-store-keys\"\n",
        redis_store(redis)
    )
}

/// The one session key in `redis` under `prefix`.
fn only_key(redis: &Redis, prefix: &str) -> String {
    let keys = redis.keys(&format!("{prefix}sessions:*"));
    assert_eq!(keys.len(), 1, "{keys:?}");
    keys[0].clone()
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

async fn post(c: &HttpClient, url: &str, cookie: Option<&str>) -> Resp {
    let mut b = Request::post(url);
    if let Some(cookie) = cookie {
        b = b.header("cookie", cookie);
    }
    client::send(c, b.body(empty()).unwrap()).await
}

/// The ticket a response gives the browser, if any.
fn ticket(r: &Resp) -> Option<String> {
    r.set_cookies().iter().find_map(|s| {
        let v = s.strip_prefix("slb_sid=")?.split(';').next()?;
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// Whether a response tells the browser to drop its ticket.
fn cleared(r: &Resp) -> bool {
    r.set_cookies()
        .iter()
        .any(|s| s.starts_with("slb_sid=;") && s.contains("Max-Age=0"))
}

/// The id part of a ticket: the store's name for the session.
fn id(ticket: &str) -> &str {
    ticket.split('.').next().unwrap()
}

/// Logs in with `POST /login?{query}` through `proxy`; the ticket the
/// browser got. The app's own cookie must not reach the browser.
async fn login_query(c: &HttpClient, proxy: &Proxy, query: &str) -> String {
    let r = post(c, &proxy.url(&format!("/login?{query}")), None).await;
    assert_eq!(r.status, 200, "login: {r:?}");
    assert!(
        !r.set_cookies().iter().any(|s| s.starts_with("session=")),
        "the app's session cookie reached the browser: {r:?}"
    );
    ticket(&r).unwrap_or_else(|| panic!("login gave no ticket: {r:?}"))
}

async fn login(c: &HttpClient, proxy: &Proxy, value: &str) -> String {
    login_query(c, proxy, &format!("v={value}")).await
}

/// `GET /whoami` through `proxy` with the ticket (and `extra` cookies).
async fn with_ticket_and(c: &HttpClient, proxy: &Proxy, ticket: &str, extra: &str) -> Resp {
    let cookie = format!("slb_sid={ticket}{extra}");
    client::get_with(c, &proxy.url("/whoami"), &[("cookie", &cookie)]).await
}

async fn with_ticket(c: &HttpClient, proxy: &Proxy, ticket: &str) -> Resp {
    with_ticket_and(c, proxy, ticket, "").await
}

/// The app session the backend received, from its answer.
fn app_session(r: &Resp) -> Option<String> {
    let cookies = r.body.strip_prefix("cookie: ")?;
    cookies
        .split("; ")
        .find_map(|p| p.strip_prefix("session="))
        .map(str::to_string)
}

/// The first `200` for a request with `ticket`, polled until the
/// deadline (after the store came back).
async fn served_again(c: &HttpClient, proxy: &Proxy, ticket: &str) -> Resp {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = with_ticket(c, proxy, ticket).await;
        if r.status == 200 {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the ticket does not work again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn readyz(c: &HttpClient, proxy: &Proxy) -> Resp {
    client::get(c, &format!("http://{}/readyz", proxy.admin_addr())).await
}

/// Polls until the metric `sample` satisfies `pred`; its last value.
async fn metric_until(proxy: &Proxy, sample: &str, pred: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v = proxy.metric(sample).await;
        if pred(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{sample} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every line the proxy wrote, for failure messages and log checks.
fn proxy_log(proxy: &Proxy) -> Vec<String> {
    let mut lines = proxy.stderr.all();
    lines.extend(proxy.stdout.all());
    lines
}

#[tokio::test]
async fn fail_closed_outage_answers_503_and_the_same_process_recovers() {
    let mut redis = Redis::start();
    let backend = app();
    let mut proxy = Proxy::start(&store_config(&backend, "", &redis_store(&redis)));
    let c = client::h1();

    let t = login(&c, &proxy, "before").await;
    let r = with_ticket(&c, &proxy, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("before"), "{r:?}");
    assert_eq!(readyz(&c, &proxy).await.status, 200);
    metric_until(&proxy, STORE_UP, |v| v == 1.0).await;
    let load_errors = proxy.metric(LOAD_ERRORS).await;

    redis.stop();
    let stopped = Instant::now();
    let forwarded = backend.requests().len();
    let r = with_ticket(&c, &proxy, &t).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, UNAVAILABLE),
        "{r:?}"
    );
    assert_eq!(
        backend.requests().len(),
        forwarded,
        "a request whose session could not be loaded reached the backend"
    );
    // /readyz tells a load balancer within 3 s
    let mut ready = None;
    while stopped.elapsed() < Duration::from_secs(3) {
        let r = readyz(&c, &proxy).await;
        if r.status == 503 {
            ready = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = ready.unwrap_or_else(|| {
        panic!(
            "/readyz still 200 {:?} after Redis stopped",
            stopped.elapsed()
        )
    });
    assert!(
        ready
            .body
            .starts_with("not ready: the session store is unavailable"),
        "{ready:?}"
    );
    metric_until(&proxy, STORE_UP, |v| v == 0.0).await;
    let errors = proxy.metric(LOAD_ERRORS).await;
    assert!(
        errors > load_errors,
        "load errors {load_errors} -> {errors}"
    );
    // no session, no store needed: still forwarded
    let r = client::get(&c, &proxy.url("/anonymous")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "no cookie"));
    // a login the store cannot keep is refused, and the app's cookie stays in
    let r = post(&c, &proxy.url("/login?v=during"), None).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, UNAVAILABLE),
        "{r:?}"
    );
    assert!(r.set_cookies().is_empty(), "{r:?}");

    redis.restart();
    let restarted = Instant::now();
    // Redis came back empty: the old ticket is no session, and it is
    // cleared; answered by the backend again within 2 s
    let r = loop {
        let r = with_ticket(&c, &proxy, &t).await;
        if r.status == 200 {
            break r;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "still {} {:?} {:?} after Redis restarted",
            r.status,
            r.body,
            restarted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(2), "recovered after {took:?}");
    eprintln!("answered again {took:?} after Redis restarted");
    assert_eq!(app_session(&r), None, "{r:?}");
    assert!(cleared(&r), "the stale ticket is not cleared: {r:?}");
    assert!(
        proxy.wait_exit(Duration::ZERO).is_none(),
        "the proxy exited during the outage:\n{}",
        proxy_log(&proxy).join("\n")
    );

    let t2 = login(&c, &proxy, "after").await;
    let r = with_ticket(&c, &proxy, &t2).await;
    assert_eq!(app_session(&r).as_deref(), Some("after"), "{r:?}");
    let p = &proxy;
    let c2 = &c;
    assert!(
        eventually_async(
            DEADLINE,
            || async move { readyz(c2, p).await.status == 200 }
        )
        .await,
        "/readyz not back to 200"
    );
    metric_until(&proxy, STORE_UP, |v| v == 1.0).await;
}

/// The login survives the outage when Redis comes back with its data (put
/// back by hand here: this Redis keeps nothing on disk). Plain values, so
/// that the value read and written back is text.
#[tokio::test]
async fn a_session_redis_still_has_after_an_outage_works_again() {
    let mut redis = Redis::start();
    let backend = app();
    let proxy = Proxy::start(&store_config(
        &backend,
        "encrypt = false",
        &redis_store_with_secret(&redis),
    ));
    let c = client::h1();

    let t = login(&c, &proxy, "kept").await;
    let key = only_key(&redis, "sessionlb:");
    let value = redis.cmd(&["GET", &key]);
    assert!(value.starts_with("slb2 plain "), "{value:?}");

    redis.stop();
    let r = with_ticket(&c, &proxy, &t).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, UNAVAILABLE),
        "{r:?}"
    );

    redis.restart();
    assert_eq!(redis.cmd(&["SET", &key, &value, "EX", "1800"]), "OK");
    let r = served_again(&c, &proxy, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("kept"), "{r:?}");
    assert!(
        r.set_cookies().is_empty(),
        "the ticket was replaced or cleared: {r:?}"
    );
}

/// A Redis that stops answering (stopped with SIGSTOP: its socket open,
/// nothing read) costs a request `store.timeout`, not the client's
/// patience: 503 (fail_closed). When it answers again, so does the proxy,
/// in the same process, with the same session.
#[tokio::test]
async fn a_redis_that_hangs_costs_a_request_the_store_timeout() {
    let redis = Redis::start();
    let backend = app();
    let proxy = Proxy::start(&store_config(
        &backend,
        "encrypt = false",
        &format!("{}timeout = \"300ms\"\n", redis_store_with_secret(&redis)),
    ));
    let c = client::h1();
    let t = login(&c, &proxy, "patient").await;

    redis.pause();
    let r = tokio::time::timeout(DEADLINE, with_ticket(&c, &proxy, &t))
        .await
        .expect("the proxy answers while Redis hangs");
    redis.resume();
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, UNAVAILABLE),
        "{r:?}"
    );
    assert!(
        proxy_log(&proxy)
            .iter()
            .any(|l| l.contains("session store unavailable") && l.contains("300ms")),
        "no log line names the timeout: {:?}",
        proxy_log(&proxy)
    );

    let r = served_again(&c, &proxy, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("patient"), "{r:?}");
}

#[tokio::test]
async fn fail_open_forwards_without_the_session_and_says_so() {
    let mut redis = Redis::start();
    let backend = app();
    let proxy = Proxy::start(&store_config(
        &backend,
        "on_store_error = \"fail_open\"",
        &redis_store(&redis),
    ));
    let c = client::h1();

    let t = login(&c, &proxy, "open").await;
    let r = with_ticket(&c, &proxy, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("open"), "{r:?}");
    assert_eq!(proxy.metric(FAIL_OPEN).await, 0.0);

    redis.stop();
    // a session cookie the client makes up is dropped as ever
    let r = with_ticket_and(&c, &proxy, &t, "; theme=dark; session=forged").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "cookie: theme=dark", "what the backend received");
    assert!(!r.body.contains("session=") && !r.body.contains("slb_sid"));
    // the browser keeps its ticket for when the store is back
    assert!(r.set_cookies().is_empty(), "{r:?}");
    metric_until(&proxy, FAIL_OPEN, |v| v >= 1.0).await;
    let warning = proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("WARN") && l.contains("fail_open"));
    assert!(
        warning.is_some(),
        "no fail_open warning in:\n{}",
        proxy_log(&proxy).join("\n")
    );
}

#[tokio::test]
async fn redis_with_an_acl_password_and_a_wrong_one() {
    const PASSWORD: &str = "s3cret";
    const WRONG: &str = "Wr0ngPa55phrase";
    let redis = Redis::start_with_password("slb", PASSWORD);
    let backend = app();
    let url = redis.url();
    assert!(url.starts_with("redis://slb:s3cret@"), "{url}");
    let good = Proxy::start(&store_config(&backend, "", &redis_store(&redis)));
    let c = client::h1();

    let t = login(&c, &good, "acl").await;
    let r = with_ticket(&c, &good, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("acl"), "{r:?}");
    assert_eq!(
        redis.keys("sessionlb:sessions:*"),
        [format!("sessionlb:sessions:{}", id(&t))]
    );

    let bad = Proxy::start(&store_config(
        &backend,
        "",
        &format!(
            "kind = \"redis\"\nurl = \"{}\"\n",
            url.replace(PASSWORD, WRONG)
        ),
    ));
    let r = with_ticket(&c, &bad, &t).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, UNAVAILABLE),
        "{r:?}"
    );
    let r = post(&c, &bad.url("/login?v=nope"), None).await;
    assert_eq!(
        (r.status.as_u16(), r.body.as_str()),
        (503, UNAVAILABLE),
        "{r:?}"
    );
    assert!(r.set_cookies().is_empty(), "{r:?}");
    assert_eq!(readyz(&c, &bad).await.status, 503);
    // the store's failure is logged (by the requests and by the watcher),
    // and no password is
    assert!(
        bad.stderr
            .wait_for(DEADLINE, |l| l.contains("session store unavailable"))
            .is_some(),
        "no store warning in:\n{}",
        proxy_log(&bad).join("\n")
    );
    // the good proxy still works beside it
    let r = with_ticket(&c, &good, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("acl"), "{r:?}");
    for (name, proxy) in [("bad", &bad), ("good", &good)] {
        for line in proxy_log(proxy) {
            assert!(
                !line.contains(WRONG) && !line.contains(PASSWORD),
                "the {name} proxy logged a password: {line}"
            );
        }
    }
}

#[tokio::test]
async fn two_proxies_share_sessions_through_one_redis() {
    let redis = Redis::start();
    let backend_a = app();
    let backend_b = app();
    let a = Proxy::start(&store_config(
        &backend_a,
        "encrypt = true",
        &redis_store(&redis),
    ));
    let b = Proxy::start(&store_config(
        &backend_b,
        "encrypt = true",
        &redis_store(&redis),
    ));
    let c = client::h1();

    let t = login(&c, &a, "made-on-a").await;
    assert_eq!(
        t.split_once('.').map(|(i, s)| (i.len(), s.len())),
        Some((22, 43))
    );
    let r = with_ticket(&c, &b, &t).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "cookie: session=made-on-a");
    let last = backend_b.requests().pop().unwrap();
    assert_eq!(last.header("cookie").as_deref(), Some("session=made-on-a"));
    assert!(r.set_cookies().is_empty(), "{r:?}");

    // and the other way: the app changes the session behind B, which
    // gives a new ticket; A reads the change with it, and the state before
    // it with the replaced one
    let cookie = format!("slb_sid={t}");
    let r = post(&c, &b.url("/login?v=changed-on-b"), Some(&cookie)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let next = ticket(&r).expect("a new ticket");
    assert_eq!(id(&next), id(&t), "the same session");
    let r = with_ticket(&c, &a, &next).await;
    assert_eq!(app_session(&r).as_deref(), Some("changed-on-b"), "{r:?}");
    let r = with_ticket(&c, &a, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("made-on-a"), "{r:?}");
}

/// What a reader of Redis gets. Plain (`encrypt = false`): the app's
/// cookies, readable, under a key that is a keyed hash of the id (not the
/// id, not the ticket), and no secret: neither the key nor the id signs
/// anyone in. Sealed: the age alone, under the id.
#[tokio::test]
async fn what_redis_holds_plain_and_sealed_under_a_key_prefix() {
    let redis = Redis::start();
    let backend = app();
    let plain = Proxy::start(&store_config(
        &backend,
        "encrypt = false\nidle_timeout = \"10m\"",
        &format!(
            "{}key_prefix = \"app1:\"\n",
            redis_store_with_secret(&redis)
        ),
    ));
    let c = client::h1();

    let before = unix_now();
    let t = login(&c, &plain, "readable-value-1").await;
    let (sid, secret) = t.split_once('.').expect("<id>.<secret>");
    let key = only_key(&redis, "app1:");
    let hashed = key.strip_prefix("app1:sessions:").unwrap();
    assert_eq!(hashed.len(), 22, "{key}");
    assert_ne!(hashed, sid, "the key is the id");
    let value = redis.cmd(&["GET", &key]);
    let head = value
        .strip_prefix("slb2 plain ")
        .unwrap_or_else(|| panic!("{value:?}"));
    let created: u64 = head.split('\n').next().unwrap().parse().unwrap();
    assert!(
        (before..=unix_now()).contains(&created),
        "created {created}, {value:?}"
    );
    assert!(value.contains("\nsession=readable-value-1\n"), "{value:?}");
    assert!(!value.contains(sid) && !value.contains(secret), "{value:?}");
    let ttl: i64 = redis.cmd(&["TTL", &key]).parse().unwrap();
    assert!((1..=600).contains(&ttl), "TTL {ttl}");
    let r = with_ticket(&c, &plain, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some("readable-value-1"));
    // what a reader of Redis could try: the key as an id, with a secret
    // of its own or none; the id alone
    let zeros = "A".repeat(43);
    for forged in [
        format!("{hashed}.{zeros}"),
        hashed.to_string(),
        sid.to_string(),
        format!("{sid}.{zeros}"),
    ] {
        let r = with_ticket(&c, &plain, &forged).await;
        assert_eq!(app_session(&r), None, "{forged}: {r:?}");
        assert!(cleared(&r), "{forged}: {r:?}");
    }
    // the operator revokes by the id, as the ticket gives it
    let admin = format!("http://{}/admin/sessions/{sid}", plain.admin_addr());
    let deleted = client::send(&c, Request::delete(&admin).body(empty()).unwrap()).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    assert_eq!(redis.keys("app1:*"), Vec::<String>::new());

    let sealed = Proxy::start(&store_config(
        &backend,
        "encrypt = true",
        &format!("{}key_prefix = \"app2:\"\n", redis_store(&redis)),
    ));
    const SECRET: &str = "SECRET-cookie-value-2";
    let t = login(&c, &sealed, SECRET).await;
    let (sid, secret) = t.split_once('.').unwrap();
    let key = format!("app2:sessions:{sid}");
    assert_eq!(redis.keys("app2:*"), std::slice::from_ref(&key));
    let value = redis.cmd(&["GET", &key]);
    assert!(value.starts_with("slb2 sealed "), "{value:?}");
    assert!(
        !value.contains(SECRET),
        "the app's cookie readable in Redis"
    );
    assert!(!value.contains(secret), "the ticket's secret is in Redis");
    let r = with_ticket(&c, &sealed, &t).await;
    assert_eq!(app_session(&r).as_deref(), Some(SECRET));
    assert_eq!(redis.keys("sessionlb:*"), Vec::<String>::new());
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn pttl(redis: &Redis, key: &str) -> i64 {
    redis.cmd(&["PTTL", key]).parse().unwrap()
}

/// Requests every 0.5 s keep a session with a 2 s idle timeout alive past
/// 2 s, each read restarting its TTL; 4 s after the login it is gone
/// however active.
#[tokio::test]
async fn activity_slides_the_idle_timeout_until_the_absolute_one() {
    let redis = Redis::start();
    let backend = app();
    let proxy = Proxy::start(&store_config(
        &backend,
        "idle_timeout = \"2s\"\nabsolute_timeout = \"4s\"",
        &redis_store(&redis),
    ));
    let c = client::h1();

    // The session's start is kept in whole unix seconds: logging in just
    // after a second begins makes its end 4 s after the login, not 3 to 4.
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let to_next_second =
        Duration::from_secs(1) - Duration::from_nanos(since_epoch.subsec_nanos().into());
    tokio::time::sleep(to_next_second + Duration::from_millis(20)).await;
    let sent = Instant::now();
    let t = login(&c, &proxy, "active").await;
    let logged_in = Instant::now();
    let key = format!("sessionlb:sessions:{}", id(&t));
    // It was made in the second that began just before `sent`, or later:
    // it lives until about `sent` + 4 s at least (a request sent before
    // `sent` + 3.4 s is read in time however slow), and it is over at
    // `logged_in` + 4 s at the latest.
    let surely_alive = sent + Duration::from_millis(3400);
    let surely_dead = logged_in + Duration::from_secs(4);
    let mut past_idle = false;
    let mut ttl_checked = false;
    for tick in 1.. {
        let at = logged_in + Duration::from_millis(500 * tick);
        tokio::time::sleep_until(at.into()).await;
        let before = Instant::now();
        let ttl_before = pttl(&redis, &key);
        let r = with_ticket(&c, &proxy, &t).await;
        assert_eq!(r.status, 200, "{r:?}");
        if tick == 3 {
            // 0.5 s since the last read, then a read puts the TTL back at 2 s
            let ttl_after = pttl(&redis, &key);
            let taken = before.elapsed().as_millis() as i64;
            assert!(ttl_before < 1900, "PTTL {ttl_before} 0.5 s after a read");
            assert!(
                ttl_after <= 2000 && ttl_after + taken >= 1995,
                "PTTL {ttl_before} before a read, {ttl_after} after it ({taken} ms later)"
            );
            ttl_checked = true;
        }
        if before < surely_alive {
            assert_eq!(
                app_session(&r).as_deref(),
                Some("active"),
                "{:?} after the login: {r:?}",
                before - logged_in
            );
            assert!(r.set_cookies().is_empty(), "{r:?}");
            if before > logged_in + Duration::from_secs(2) {
                past_idle = true;
            }
        }
        if before >= surely_dead {
            assert_eq!(app_session(&r), None, "{r:?}");
            assert!(
                cleared(&r),
                "the ended session's ticket is not cleared: {r:?}"
            );
            break;
        }
    }
    assert!(ttl_checked);
    assert!(
        past_idle,
        "no request in the window from 2 s to 3.4 s after the login (machine too slow?)"
    );
    // the ended session is deleted from the store too
    assert!(
        eventually(DEADLINE, || redis.cmd(&["EXISTS", &key]) == "0"),
        "{key} still in Redis"
    );
}

/// Left alone, a session is gone after its idle timeout. Watched in
/// Redis: a request through the proxy would restart the timeout.
#[tokio::test]
async fn an_idle_session_ends_after_idle_timeout() {
    let redis = Redis::start();
    let backend = app();
    let proxy = Proxy::start(&store_config(
        &backend,
        "idle_timeout = \"2s\"\nabsolute_timeout = \"1h\"",
        &redis_store(&redis),
    ));
    let c = client::h1();

    let sent = Instant::now();
    let t = login(&c, &proxy, "idle").await;
    let logged_in = Instant::now();
    let key = format!("sessionlb:sessions:{}", id(&t));
    assert_eq!(redis.cmd(&["EXISTS", &key]), "1");
    assert!(
        eventually(DEADLINE, || redis.cmd(&["EXISTS", &key]) == "0"),
        "{key} still in Redis"
    );
    let gone = sent.elapsed();
    assert!(gone >= Duration::from_secs(2), "gone after {gone:?}");
    assert!(
        logged_in.elapsed() < Duration::from_secs(5),
        "still there {:?} after the login",
        logged_in.elapsed()
    );
    let r = with_ticket(&c, &proxy, &t).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "no cookie", "the backend got a session");
    assert!(cleared(&r), "the expired ticket is not cleared: {r:?}");
}

/// The embedded store stays within `max_size`, evicting (and counting)
/// sessions; the session just made is one it keeps (a store that refused
/// new sessions while full, as a TinyLFU admission policy does, would log
/// out everyone who logs in then).
#[tokio::test]
async fn the_memory_store_evicts_to_stay_within_max_size() {
    let backend = app();
    let proxy = Proxy::start(&store_config(
        &backend,
        "",
        "kind = \"memory\"\nmax_size = \"64k\"\n",
    ));
    let c = client::h1();

    // 100 sessions of over 4000 bytes each: at most 16 fit in 64 KiB, so
    // at least 84 must go
    let mut tickets = Vec::new();
    for i in 0..100 {
        tickets.push(login_query(&c, &proxy, &format!("v=s{i}-&pad=4000")).await);
    }
    // evictions are counted as the writes make room; a lookup of a
    // session nobody has reads the count without touching any
    let p = &proxy;
    let c2 = &c;
    let evicted = eventually_async(DEADLINE, || async move {
        let r = with_ticket(c2, p, UNKNOWN_TICKET).await;
        assert_eq!(r.body, "no cookie");
        p.metric(EVICTIONS).await >= 84.0
    })
    .await;
    assert!(
        evicted,
        "evictions counted: {}",
        proxy.metric(EVICTIONS).await
    );

    let newest = tickets.last().unwrap();
    let r = with_ticket(&c, &proxy, newest).await;
    let expected = format!("s99-{}", "x".repeat(4000));
    let newest_kept = app_session(&r).as_deref() == Some(expected.as_str());

    let mut kept = Vec::new();
    for (i, t) in tickets.iter().enumerate() {
        if app_session(&with_ticket(&c, &proxy, t).await).is_some() {
            kept.push(i);
        }
    }
    assert!(
        newest_kept,
        "the session just made was not kept ({} {:?}); the sessions kept: {kept:?}",
        r.status,
        r.set_cookies()
    );
    assert!(
        (1..=16).contains(&kept.len()),
        "{} sessions kept in 64 KiB",
        kept.len()
    );
}

#[tokio::test]
async fn an_operator_revokes_a_session_in_redis() {
    let redis = Redis::start();
    let backend = app();
    let proxy = Proxy::start(&store_config(&backend, "", &redis_store(&redis)));
    let c = client::h1();
    let admin = format!("http://{}", proxy.admin_addr());
    let delete = |id: &str| {
        Request::delete(format!("{admin}/admin/sessions/{id}"))
            .body(empty())
            .unwrap()
    };

    let t = login(&c, &proxy, "revoked").await;
    let other = login(&c, &proxy, "untouched").await;
    let key = format!("sessionlb:sessions:{}", id(&t));
    assert_eq!(redis.cmd(&["EXISTS", &key]), "1");

    let r = client::send(&c, delete(id(&t))).await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(r.body, "");
    assert_eq!(redis.cmd(&["EXISTS", &key]), "0");
    assert_eq!(
        redis.keys("sessionlb:sessions:*"),
        [format!("sessionlb:sessions:{}", id(&other))]
    );

    let r = with_ticket(&c, &proxy, &t).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "no cookie", "the backend got the revoked session");
    assert!(cleared(&r), "the revoked ticket is not cleared: {r:?}");
    let r = with_ticket(&c, &proxy, &other).await;
    assert_eq!(app_session(&r).as_deref(), Some("untouched"), "{r:?}");

    let r = client::send(&c, delete(id(&t))).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(proxy.metric(DELETED).await, 1.0);
}
