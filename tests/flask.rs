//! Shared-store mode with real, unchanged apps: Flask's default cookie
//! session (tests/apps/flask_counter.py) and a two-cookie session
//! (tests/apps/two_cookie.py), several instances behind the proxy with
//! `policy = "round_robin"`, so that nearly every request lands on another
//! instance than the one before. The browser only ever holds the proxy's
//! ticket (`slb_sid`); the app's session lives in the store.
//!
//! Run with the Flask that `scripts/test` installs:
//! `SESSIONLB_TEST_PYTHON=$PWD/target/test-venv/bin/python cargo test --test flask`

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::Full;
use hyper::{Method, Request};
use serde_json::Value;
use support::apps::App;
use support::client::{self, HttpClient, Resp};
use support::redis::Redis;
use support::{DEADLINE, Proxy, eventually_async};

const TICKET: &str = "slb_sid";

/// One pool over `backends` in shared-store mode, with an admin listener.
/// `session` is the body of `[pools.web.session]`, `store` the whole
/// `[store]` section.
fn session_config(backends: &[String], session: &str, store: &str) -> String {
    support::config(
        "round_robin",
        backends,
        &format!("[pools.web.session]\n{session}\n\n{store}\n"),
    )
    .replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
}

const MEMORY: &str = "[store]\nkind = \"memory\"\n";

fn redis_store(redis: &Redis) -> String {
    format!("[store]\nkind = \"redis\"\nurl = \"{}\"\n", redis.url())
}

/// One request through `client`, with `cookie` as the whole `Cookie` field.
async fn call(client: &HttpClient, method: Method, url: &str, cookie: Option<&str>) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    if let Some(cookie) = cookie {
        b = b.header("cookie", cookie);
    }
    client::send(client, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// The response's JSON body.
fn json(r: &Resp) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn user(r: &Resp) -> Value {
    json(r)["user"].clone()
}

fn cookie_name(set_cookie: &str) -> &str {
    set_cookie
        .split_once('=')
        .map_or(set_cookie, |(n, _)| n.trim())
}

fn cookie_value(set_cookie: &str) -> &str {
    let pair = set_cookie.split(';').next().unwrap();
    pair.split_once('=').map_or("", |(_, v)| v.trim())
}

fn clears(set_cookie: &str) -> bool {
    set_cookie
        .split(';')
        .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"))
}

/// The ticket a response gives (a `Set-Cookie: slb_sid=<non-empty>`).
fn ticket_given(r: &Resp) -> Option<String> {
    let given: Vec<String> = r
        .set_cookies()
        .iter()
        .filter(|c| cookie_name(c) == TICKET && !cookie_value(c).is_empty())
        .map(|c| cookie_value(c).to_string())
        .collect();
    assert!(given.len() <= 1, "two tickets in one response: {r:?}");
    given.into_iter().next()
}

/// A well-formed sealed ticket: `<22 base64url>.<43 base64url>`.
fn assert_ticket_shape(t: &str) {
    let (id, secret) = t.split_once('.').unwrap_or_else(|| panic!("ticket {t:?}"));
    let b64 = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    assert!(
        id.len() == 22 && secret.len() == 43 && b64(id) && b64(secret),
        "ticket {t:?}"
    );
}

/// A browser: keeps the cookies it is given (and drops the ones it is told
/// to expire), sends them back, and remembers every `Set-Cookie` it ever
/// received, so a test can say what the client was shown.
struct Jar {
    client: HttpClient,
    base: String,
    cookies: BTreeMap<String, String>,
    received: Vec<String>,
}

impl Jar {
    fn new(client: HttpClient, proxy: &Proxy) -> Jar {
        Jar {
            client,
            base: proxy.url(""),
            cookies: BTreeMap::new(),
            received: Vec::new(),
        }
    }

    async fn call(&mut self, method: Method, path: &str) -> Resp {
        let cookie: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let cookie = cookie.join("; ");
        let url = format!("{}{path}", self.base);
        let r = call(
            &self.client,
            method,
            &url,
            (!cookie.is_empty()).then_some(cookie.as_str()),
        )
        .await;
        for c in r.set_cookies() {
            let name = cookie_name(&c).to_string();
            if clears(&c) || cookie_value(&c).is_empty() {
                self.cookies.remove(&name);
            } else {
                self.cookies.insert(name, cookie_value(&c).to_string());
            }
            self.received.push(c);
        }
        r
    }

    fn ticket(&self) -> Option<String> {
        self.cookies.get(TICKET).cloned()
    }

    /// The client was never shown any cookie but the ticket, and holds no
    /// other.
    fn assert_only_tickets(&self) {
        for c in &self.received {
            assert_eq!(cookie_name(c), TICKET, "the client was sent {c:?}");
        }
        let held: Vec<&String> = self.cookies.keys().collect();
        assert!(
            held.iter().all(|k| *k == TICKET),
            "the client holds {held:?}"
        );
    }
}

/// The backend ids `/admin/pools` lists for the pool.
async fn pool_backends(proxy: &Proxy) -> Vec<String> {
    let url = format!("http://{}/admin/pools", proxy.admin_addr());
    let body = client::get(&client::h1(), &url).await.body;
    let pools: Value = serde_json::from_str(&body).unwrap();
    pools["pools"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_str().unwrap().to_string())
        .collect()
}

/// Polls until `/admin/pools` lists exactly `addrs`.
async fn wait_for_backends(proxy: &Proxy, addrs: &[String]) {
    let want: BTreeSet<String> = addrs.iter().cloned().collect();
    let reloaded = eventually_async(DEADLINE, || async {
        pool_backends(proxy)
            .await
            .into_iter()
            .collect::<BTreeSet<_>>()
            == want
    })
    .await;
    assert!(
        reloaded,
        "the pool never became {want:?}: {:?}\n{}",
        pool_backends(proxy).await,
        proxy.stderr.all().join("\n")
    );
}

#[tokio::test]
async fn flask_memory_store() {
    flask_counter_through_instance_churn(MEMORY, None).await;
}

#[tokio::test]
async fn flask_redis_store() {
    let redis = Redis::start();
    flask_counter_through_instance_churn(&redis_store(&redis), Some(&redis)).await;
}

/// Alice logs in and counts to 100 while one instance dies (after the 30th
/// count) and a new one, which never saw her session, joins by a reload
/// (after the 60th): her session is in the store, not in an instance nor in
/// her browser, so nothing of this shows. Then she logs out, and her old
/// ticket, replayed, is worth nothing: what a plain cookie session cannot
/// do.
async fn flask_counter_through_instance_churn(store: &str, redis: Option<&Redis>) {
    let a = App::start("flask_counter.py", "a");
    let b = App::start("flask_counter.py", "b");
    let c = App::start("flask_counter.py", "c");
    let session = "app_cookie = \"session\"";
    let cfg = session_config(&[a.entry(), b.entry(), c.entry()], session, store);
    let proxy = Proxy::start(&cfg);
    let mut jar = Jar::new(client::h1(), &proxy);

    let login = jar.call(Method::POST, "/login?user=alice").await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(user(&login), "alice");
    assert_eq!(json(&login)["n"], 0);
    let sent = login.set_cookies();
    assert_eq!(sent.len(), 1, "{login:?}");
    assert!(
        sent[0].contains("; Path=/") && sent[0].contains("; HttpOnly"),
        "{sent:?}"
    );
    let ticket = jar.ticket().expect("a ticket at login");
    assert_ticket_shape(&ticket);

    let id = ticket.split_once('.').unwrap().0.to_string();
    let mut last = ticket.clone();
    let b_addr = b.addr().to_string();
    let mut b = Some(b);
    let mut d = None;
    let mut instances = BTreeSet::new();
    let mut after_reload = BTreeSet::new();
    for i in 1..=100u64 {
        if i == 31 {
            // between requests: the next one round robin gives to b is
            // refused at connect, and the proxy places it elsewhere
            b.take().unwrap().kill();
        }
        if i == 61 {
            // the operator replaces b by a new instance on a new port
            let new = App::start("flask_counter.py", "d");
            let backends = [a.entry(), c.entry(), new.entry()];
            std::fs::write(
                &proxy.config_path,
                session_config(&backends, session, store),
            )
            .unwrap();
            proxy.signal(nix::sys::signal::Signal::SIGHUP);
            let addrs = [a.addr(), c.addr(), new.addr()].map(|a| a.to_string());
            wait_for_backends(&proxy, &addrs).await;
            d = Some(new);
        }
        let r = jar.call(Method::POST, "/count").await;
        assert_eq!(r.status, 200, "count {i}: {r:?}");
        let body = json(&r);
        assert_eq!(body["user"], "alice", "count {i}: {r:?}");
        assert_eq!(
            body["n"],
            i,
            "count {i}: the counter went from {} to {}",
            i - 1,
            body["n"]
        );
        let instance = body["instance"].as_str().unwrap().to_string();
        assert_eq!(r.backend(), instance);
        if i > 60 {
            after_reload.insert(instance.clone());
        }
        instances.insert(instance);
        // every count changes the session: a new ticket of the same session
        let now = jar.ticket().expect("a ticket");
        assert_ne!(now, last, "count {i}: the ticket did not change");
        assert_eq!(
            now.split_once('.').unwrap().0,
            id,
            "count {i}: another session"
        );
        last = now;
        jar.assert_only_tickets();
    }
    assert!(instances.len() >= 3, "served by {instances:?}");
    assert!(
        after_reload.contains("d"),
        "the new instance served nothing: {after_reload:?}"
    );
    assert!(!after_reload.contains("b"));
    assert!(d.is_some());
    // the proxy did meet the dead instance (a refused connection, retried
    // elsewhere): the run above went through it unseen
    let met = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("backend marked down") && l.contains(&b_addr)
    });
    assert!(met.is_some(), "{}", proxy.stderr.all().join("\n"));

    // one session, made once, in the store, changed 100 times
    assert_eq!(proxy.metric("sessionlb_sessions_created_total").await, 1.0);
    assert_eq!(
        proxy.metric("sessionlb_sessions_rotated_total").await,
        100.0
    );
    let key = format!("sessionlb:sessions:{id}");
    if let Some(redis) = redis {
        assert_eq!(redis.keys("sessionlb:*"), std::slice::from_ref(&key));
        let stored = redis.cmd(&["GET", &key]);
        assert!(stored.starts_with("slb2 sealed "), "{stored:?}");
        assert!(!stored.contains("alice"), "{stored:?}");
        let ttl: i64 = redis.cmd(&["TTL", &key]).parse().unwrap();
        // idle_timeout (30 minutes by default)
        assert!((1..=1800).contains(&ttl), "TTL {ttl}");
    }

    // logout: the app expires its cookie, the proxy the ticket
    let logout = jar.call(Method::POST, "/logout").await;
    assert_eq!(logout.status, 200, "{logout:?}");
    assert_eq!(user(&logout), Value::Null);
    let sent = logout.set_cookies();
    assert_eq!(sent.len(), 1, "{logout:?}");
    assert_eq!(cookie_name(&sent[0]), TICKET);
    assert_eq!(cookie_value(&sent[0]), "");
    assert!(clears(&sent[0]), "{sent:?}");
    assert_eq!(jar.ticket(), None);
    jar.assert_only_tickets();
    assert_eq!(proxy.metric("sessionlb_sessions_deleted_total").await, 1.0);
    if let Some(redis) = redis {
        assert_eq!(redis.cmd(&["EXISTS", &key]), "0");
    }

    // the last ticket, replayed, is no session: not on any instance, and
    // not even on the one that answered the logout (and no ticket of the
    // session before it: the logout ended every version)
    let raw = client::h1_fresh();
    let old = format!("{TICKET}={last}");
    for _ in 0..3 {
        let who = call(&raw, Method::GET, &proxy.url("/whoami"), Some(&old)).await;
        assert_eq!(who.status, 200, "{who:?}");
        assert_eq!(user(&who), Value::Null, "{who:?}");
        assert!(
            who.set_cookies()
                .iter()
                .all(|c| cookie_name(c) == TICKET && clears(c))
        );
    }
    let count = call(&raw, Method::POST, &proxy.url("/count"), Some(&old)).await;
    assert_eq!(count.status, 401, "{count:?}");
    assert_eq!(proxy.metric("sessionlb_sessions_created_total").await, 1.0);
    assert_eq!(proxy.metric("sessionlb_sessions_deleted_total").await, 1.0);
}

/// A session split over two cookies (`sess` and its HMAC `sess.sig`, as
/// Express's cookie-session): both are kept and given back together, so the
/// app accepts its signature on every instance; the client holds neither.
#[tokio::test]
async fn two_cookie_app() {
    let a = App::start("two_cookie.py", "a");
    let b = App::start("two_cookie.py", "b");
    let cfg = session_config(
        &[a.entry(), b.entry()],
        "app_cookie = [\"sess\", \"sess.sig\"]",
        MEMORY,
    );
    let proxy = Proxy::start(&cfg);
    two_cookie_session(&proxy, client::h1(), "carol").await;
    two_cookie_session(&proxy, client::h2(), "dave").await;
    assert_eq!(proxy.metric("sessionlb_sessions_created_total").await, 2.0);
    assert_eq!(proxy.metric("sessionlb_sessions_deleted_total").await, 2.0);
}

async fn two_cookie_session(proxy: &Proxy, client: HttpClient, name: &str) {
    let mut jar = Jar::new(client, proxy);
    let login = jar.call(Method::POST, &format!("/login?user={name}")).await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(user(&login), name);
    let ticket = jar.ticket().expect("a ticket at login");
    assert_ticket_shape(&ticket);

    let mut instances = BTreeSet::new();
    let mut last = ticket.clone();
    for i in 1..=6u64 {
        let r = jar.call(Method::POST, "/count").await;
        // 401 would be the app refusing a session without its signature
        assert_eq!(r.status, 200, "count {i}: {r:?}");
        let body = json(&r);
        assert_eq!(body["user"], name, "{r:?}");
        assert_eq!(body["n"], i, "{r:?}");
        instances.insert(body["instance"].as_str().unwrap().to_string());
        jar.assert_only_tickets();
        let now = jar.ticket().expect("a ticket");
        assert_ne!(now, last, "count {i}: a change gives a new ticket");
        last = now;
    }
    assert_eq!(instances.len(), 2, "{instances:?}");
    let who = jar.call(Method::GET, "/whoami").await;
    assert_eq!(
        (user(&who), json(&who)["n"].clone()),
        (Value::from(name), Value::from(6))
    );
    assert_eq!(
        jar.ticket().as_deref(),
        Some(&*last),
        "no change, no ticket"
    );
    let ticket = last;

    let logout = jar.call(Method::POST, "/logout").await;
    assert_eq!(logout.status, 200, "{logout:?}");
    let sent = logout.set_cookies();
    assert_eq!(sent.len(), 1, "{logout:?}");
    assert!(
        cookie_name(&sent[0]) == TICKET && clears(&sent[0]),
        "{sent:?}"
    );
    assert_eq!(jar.ticket(), None);
    jar.assert_only_tickets();

    let old = format!("{TICKET}={ticket}");
    let who = call(&jar.client, Method::GET, &proxy.url("/whoami"), Some(&old)).await;
    assert_eq!(user(&who), Value::Null, "{who:?}");
    let count = call(&jar.client, Method::POST, &proxy.url("/count"), Some(&old)).await;
    assert_eq!(count.status, 401, "{count:?}");
}

/// Responses to requests sent all at once with one ticket.
async fn all_at_once(client: &HttpClient, method: Method, url: &str, cookie: &str) -> Vec<Resp> {
    join_all((0..20).map(|_| call(client, method.clone(), url, Some(cookie)))).await
}

/// Every response is alice's, 200, and gives no cookie but a ticket.
fn assert_alices(responses: &[Resp]) {
    for r in responses {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(user(r), "alice", "{r:?}");
        for c in r.set_cookies() {
            assert_eq!(cookie_name(&c), TICKET, "{r:?}");
        }
    }
}

fn counts(responses: &[Resp]) -> Vec<u64> {
    responses
        .iter()
        .map(|r| json(r)["n"].as_u64().unwrap())
        .collect()
}

fn id_of(ticket: &str) -> &str {
    ticket.split_once('.').unwrap().0
}

/// What `/whoami` says with `ticket`: (user, n).
async fn whoami_with(client: &HttpClient, proxy: &Proxy, ticket: &str) -> (Value, Value) {
    let cookie = format!("{TICKET}={ticket}");
    let r = call(client, Method::GET, &proxy.url("/whoami"), Some(&cookie)).await;
    assert_eq!(r.status, 200, "{r:?}");
    (user(&r), json(&r)["n"].clone())
}

/// The requests of one page, sent at once with one ticket, as a browser
/// sends them (20 h2c streams of one connection, or 20 HTTP/1.1
/// connections). Reads all read the session. Changes all read the session
/// as their ticket has it, and each gets a ticket of its own, as each
/// would have got a cookie of its own from the app without the proxy (the
/// browser keeps the last): one is the session's next version, the others
/// sessions of their own, each with what its request wrote. None is
/// logged out, and the ticket they replaced never reads what they wrote.
async fn one_page_at_once(proxy: &Proxy, client: &HttpClient, ticket: &str, n: u64) -> Vec<String> {
    let cookie = format!("{TICKET}={ticket}");
    let who = all_at_once(client, Method::GET, &proxy.url("/whoami"), &cookie).await;
    assert_alices(&who);
    assert!(counts(&who).iter().all(|&c| c == n), "{:?}", counts(&who));
    assert!(
        who.iter().all(|r| r.set_cookies().is_empty()),
        "no change, no ticket"
    );

    let counted = all_at_once(client, Method::POST, &proxy.url("/count"), &cookie).await;
    assert_alices(&counted);
    assert!(
        counts(&counted).iter().all(|&c| c == n + 1),
        "each read n = {n}: {:?}",
        counts(&counted)
    );
    let tickets: Vec<String> = counted
        .iter()
        .map(|r| ticket_given(r).unwrap_or_else(|| panic!("a change without a ticket: {r:?}")))
        .collect();
    let distinct: HashSet<&String> = tickets.iter().collect();
    assert_eq!(distinct.len(), 20, "{tickets:?}");
    let next: Vec<&String> = tickets
        .iter()
        .filter(|t| id_of(t) == id_of(ticket))
        .collect();
    assert_eq!(
        next.len(),
        1,
        "one is the session's next version: {tickets:?}"
    );
    for t in &tickets {
        assert_eq!(
            whoami_with(client, proxy, t).await,
            (Value::from("alice"), Value::from(n + 1))
        );
    }
    // the replaced ticket still reads the session as it was (rotation_grace)
    assert_eq!(
        whoami_with(client, proxy, ticket).await,
        (Value::from("alice"), Value::from(n))
    );
    tickets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_session() {
    let apps: Vec<App> = ["a", "b", "c"]
        .iter()
        .map(|i| App::start("flask_counter.py", i))
        .collect();
    let entries: Vec<String> = apps.iter().map(App::entry).collect();
    let cfg = session_config(&entries, "app_cookie = \"session\"", MEMORY);
    let proxy = Proxy::start(&cfg);
    let mut jar = Jar::new(client::h1(), &proxy);
    let login = jar.call(Method::POST, "/login?user=alice").await;
    assert_eq!(login.status, 200, "{login:?}");
    let ticket = jar.ticket().unwrap();

    // one h2c connection (one stream first, so that the 20 share it)
    let h2 = client::h2();
    assert_eq!(whoami_with(&h2, &proxy, &ticket).await.0, "alice");
    let tickets = one_page_at_once(&proxy, &h2, &ticket, 0).await;
    assert_eq!(proxy.metric("sessionlb_sessions_rotated_total").await, 1.0);
    assert_eq!(proxy.metric("sessionlb_sessions_forked_total").await, 19.0);
    // the same over 20 HTTP/1.1 connections, with the session's next ticket
    let next = tickets.iter().find(|t| id_of(t) == id_of(&ticket)).unwrap();
    let h1 = client::h1_fresh();
    one_page_at_once(&proxy, &h1, next, 1).await;
    assert_eq!(proxy.metric("sessionlb_sessions_rotated_total").await, 2.0);
    assert_eq!(proxy.metric("sessionlb_sessions_forked_total").await, 38.0);
    assert_eq!(proxy.metric("sessionlb_sessions_created_total").await, 39.0);

    // Concurrent first requests of new clients: 10 logins at once over 10
    // connections and 10 on one h2c connection, none with a ticket. Each
    // gets a ticket of its own, and each ticket is its own user's.
    let logins = join_all((0..20).map(|i| {
        let client = if i < 10 { h1.clone() } else { h2.clone() };
        let url = proxy.url(&format!("/login?user=u{i}"));
        async move { call(&client, Method::POST, &url, None).await }
    }))
    .await;
    let mut tickets = Vec::new();
    for (i, r) in logins.iter().enumerate() {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(user(r), format!("u{i}"), "{r:?}");
        let sent = r.set_cookies();
        assert_eq!(sent.len(), 1, "{r:?}");
        let t = ticket_given(r).unwrap_or_else(|| panic!("no ticket: {r:?}"));
        assert_ticket_shape(&t);
        tickets.push(t);
    }
    let distinct: HashSet<&String> = tickets.iter().chain([&ticket]).collect();
    assert_eq!(distinct.len(), 21, "{tickets:?}");
    let whoami = proxy.url("/whoami");
    let who = join_all(tickets.iter().map(|t| {
        let (h1, whoami) = (h1.clone(), whoami.clone());
        let cookie = format!("{TICKET}={t}");
        async move { call(&h1, Method::GET, &whoami, Some(&cookie)).await }
    }))
    .await;
    for (i, r) in who.iter().enumerate() {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(user(r), format!("u{i}"), "{r:?}");
        assert!(r.set_cookies().is_empty(), "{r:?}");
    }
    assert_eq!(proxy.metric("sessionlb_sessions_created_total").await, 59.0);
}

#[tokio::test]
async fn fixation_by_a_planted_ticket_memory_store() {
    fixation_by_a_planted_ticket(MEMORY).await;
}

#[tokio::test]
async fn fixation_by_a_planted_ticket_redis_store() {
    let redis = Redis::start();
    fixation_by_a_planted_ticket(&redis_store(&redis)).await;
}

/// Session fixation (OWASP), with a careful app (Flask's login clears the
/// session first): the attacker gets a real ticket (any page that starts a
/// session), plants it in the victim's browser, and the victim logs in
/// with it. The login gives the victim a new ticket; the planted one reads
/// the session as it was before the login for `rotation_grace`, then
/// nothing: never the victim's login. A change the attacker makes with it
/// meanwhile is a session of the attacker's own.
async fn fixation_by_a_planted_ticket(store: &str) {
    let a = App::start("flask_counter.py", "a");
    let b = App::start("flask_counter.py", "b");
    let session = "app_cookie = \"session\"\nrotation_grace = \"2s\"";
    let proxy = Proxy::start(&session_config(&[a.entry(), b.entry()], session, store));
    let attacker = client::h1_fresh();
    let victim = client::h1_fresh();

    let hello = call(&attacker, Method::GET, &proxy.url("/hello"), None).await;
    assert_eq!(json(&hello)["visits"], 1, "{hello:?}");
    let planted = ticket_given(&hello).expect("an anonymous session's ticket");
    let planted_cookie = format!("{TICKET}={planted}");

    let login = call(
        &victim,
        Method::POST,
        &proxy.url("/login?user=alice"),
        Some(&planted_cookie),
    )
    .await;
    assert_eq!(
        (login.status.as_u16(), user(&login)),
        (200, Value::from("alice"))
    );
    let victims = ticket_given(&login).unwrap_or_else(|| planted.clone());
    assert_ne!(victims, planted, "the login kept the planted ticket");
    assert_eq!(whoami_with(&victim, &proxy, &victims).await.0, "alice");

    // the planted ticket: the session before the login, never after it
    let seen = |r: &Resp| (user(r), json(r)["visits"].clone());
    let with_planted = async |path: &str| {
        call(
            &attacker,
            Method::GET,
            &proxy.url(path),
            Some(&planted_cookie),
        )
        .await
    };
    let before = with_planted("/whoami").await;
    assert_eq!(
        user(&before),
        Value::Null,
        "the attacker reads the victim's login: {before:?}"
    );
    assert!(before.set_cookies().is_empty(), "{before:?}");
    // a change made with it: the attacker's own session, not the victim's
    let again = with_planted("/hello").await;
    assert_eq!(seen(&again), (Value::Null, Value::from(2)), "{again:?}");
    let own = ticket_given(&again).expect("a ticket of its own");
    assert_ne!(id_of(&own), id_of(&planted));
    assert_eq!(whoami_with(&attacker, &proxy, &own).await.0, Value::Null);
    assert_eq!(whoami_with(&victim, &proxy, &victims).await.0, "alice");

    // after the grace the planted ticket is no session at all
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let r = with_planted("/whoami").await;
        assert_eq!(
            user(&r),
            Value::Null,
            "the attacker reads the victim's login: {r:?}"
        );
        if r.set_cookies()
            .iter()
            .any(|c| cookie_name(c) == TICKET && clears(c))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the planted ticket outlived its grace"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let count = call(
        &attacker,
        Method::POST,
        &proxy.url("/count"),
        Some(&planted_cookie),
    )
    .await;
    assert_eq!(count.status, 401, "{count:?}");
    assert_eq!(whoami_with(&victim, &proxy, &victims).await.0, "alice");
}

/// Session fixation: a ticket the proxy did not mint, however well formed,
/// is never adopted. Logging in with one gives a new ticket; the planted
/// one stays no session. A real ticket with its secret altered is none
/// either (and the real one is untouched by the attempt).
#[tokio::test]
async fn fixation_planted_ticket_is_never_adopted() {
    let a = App::start("flask_counter.py", "a");
    let b = App::start("flask_counter.py", "b");
    let cfg = session_config(&[a.entry(), b.entry()], "app_cookie = \"session\"", MEMORY);
    let proxy = Proxy::start(&cfg);
    let c = client::h1();
    let planted = "AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    assert_ticket_shape(planted);
    let planted_cookie = format!("{TICKET}={planted}");
    let whoami = proxy.url("/whoami");

    let login = call(
        &c,
        Method::POST,
        &proxy.url("/login?user=alice"),
        Some(&planted_cookie),
    )
    .await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(user(&login), "alice");
    let sent = login.set_cookies();
    assert_eq!(sent.len(), 1, "{login:?}");
    let ticket = ticket_given(&login).expect("a new ticket");
    assert_ticket_shape(&ticket);
    assert_ne!(ticket, planted);
    assert_ne!(
        ticket.split_once('.').unwrap().0,
        planted.split_once('.').unwrap().0
    );

    // the planted ticket is no session, on either instance, and is cleared
    for _ in 0..2 {
        let who = call(&c, Method::GET, &whoami, Some(&planted_cookie)).await;
        assert_eq!(who.status, 200, "{who:?}");
        assert_eq!(user(&who), Value::Null, "{who:?}");
        let sent = who.set_cookies();
        assert!(
            sent.len() == 1 && cookie_name(&sent[0]) == TICKET && clears(&sent[0]),
            "{who:?}"
        );
    }
    let real = format!("{TICKET}={ticket}");
    let who = call(&c, Method::GET, &whoami, Some(&real)).await;
    assert_eq!(user(&who), "alice", "{who:?}");

    // the real ticket with one character of its secret changed
    let (id, secret) = ticket.split_once('.').unwrap();
    // the first character: all six of its bits are the secret's (the
    // last one's low bits are padding)
    let first = if secret.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{TICKET}={id}.{first}{}", &secret[1..]);
    assert_ne!(forged, real);
    for _ in 0..2 {
        let who = call(&c, Method::GET, &whoami, Some(&forged)).await;
        assert_eq!(who.status, 200, "{who:?}");
        assert_eq!(user(&who), Value::Null, "{who:?}");
        let count = call(&c, Method::POST, &proxy.url("/count"), Some(&forged)).await;
        assert_eq!(count.status, 401, "{count:?}");
    }
    // ... which left alice's session as it was
    let count = call(&c, Method::POST, &proxy.url("/count"), Some(&real)).await;
    assert_eq!(count.status, 200, "{count:?}");
    assert_eq!(
        (user(&count), json(&count)["n"].clone()),
        (Value::from("alice"), Value::from(1))
    );
    assert_eq!(proxy.metric("sessionlb_sessions_created_total").await, 1.0);
    assert_eq!(proxy.metric("sessionlb_sessions_deleted_total").await, 0.0);
}
