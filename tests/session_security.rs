//! Shared-store mode tried as an attacker would: what a client or a
//! backend may not set, what a ticket opens and where it goes, what the
//! ticket cookie says, and a logout while the store is away.
//!
//! The app behind the proxy is a raw backend scripted by path (see
//! [`app`]): every answer's body is the `Cookie` field it received, so a
//! test reads what reached the backend.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::client::{self, HttpClient, Resp, send};
use support::raw::{RawBackend, RawRequest, Reply};
use support::redis::Redis;
use support::{DEADLINE, Proxy, eventually_async};

/// Answers by path: `/login?v=V` sets `session=V`; `/plant` sets ticket
/// cookies as a hostile backend would; `/login-legacy?v=V` sets the
/// session and deletes a `session` cookie of another path; `/logout`
/// deletes the session; `/update?v=V` answers the header carrier's
/// update. The body is the `Cookie` field received (`-` for none), then
/// `|`, then the `X-Session` field.
fn app() -> RawBackend {
    RawBackend::with(|req: &RawRequest| {
        let target = req
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let value = target.split_once("v=").map_or("", |(_, v)| v).to_string();
        let path = target.split('?').next().unwrap_or("/");
        let set: Vec<String> = match path.rsplit('/').next().unwrap_or("") {
            "login" => vec![format!("session={value}; Path=/; Domain=example.com")],
            "plant" => vec![
                "slb_sid=AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; Path=/"
                    .into(),
                "other_sid=planted; Path=/".into(),
                "theme=dark".into(),
            ],
            "login-legacy" => vec![
                format!("session={value}; Path=/"),
                "session=; Path=/legacy; Max-Age=0".into(),
            ],
            "logout" => vec!["session=; Path=/; Max-Age=0".into()],
            _ => vec![],
        };
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for c in &set {
            head.push_str(&format!("Set-Cookie: {c}\r\n"));
        }
        if path.ends_with("/update") {
            head.push_str(&format!("X-Session-Update: {value}\r\n"));
        }
        let body = format!(
            "{}|{}",
            req.header("cookie").unwrap_or_else(|| "-".into()),
            req.header("x-session").unwrap_or_else(|| "-".into())
        );
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        Reply::raw(head)
    })
}

/// A proxy with an admin listener, `server_extra` in `[server]`, and the
/// pools `pools` (TOML from `[pools.…]` on) over `app`.
fn proxy(server_extra: &str, pools: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n{pools}"
    ))
}

/// `[pools.NAME]` over `app`, routed by `/NAME/`, with `session` lines as
/// its `[pools.NAME.session]` (none: no shared-store mode).
fn pool(name: &str, app: &RawBackend, session: Option<&str>) -> String {
    let mut s = format!(
        "[pools.{name}]\nbackends = [{}]\n\n[[routes]]\npath_prefix = \"/{name}/\"\npool = \"{name}\"\n\n",
        app.entry()
    );
    if let Some(session) = session {
        s.push_str(&format!("[pools.{name}.session]\n{session}\n\n"));
    }
    s
}

async fn request(c: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(c, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// `GET path` through `proxy` with `cookie` as the whole `Cookie` field.
async fn with_cookie(c: &HttpClient, proxy: &Proxy, path: &str, cookie: &str) -> Resp {
    request(c, &proxy.url(path), &[("cookie", cookie)]).await
}

/// The value a response's `Set-Cookie` gives `name`, with its attributes.
fn set_cookie(r: &Resp, name: &str) -> Option<String> {
    r.set_cookies()
        .into_iter()
        .find(|c| c.split('=').next().is_some_and(|n| n.trim() == name))
}

fn ticket(r: &Resp, name: &str) -> String {
    let c = set_cookie(r, name).unwrap_or_else(|| panic!("no {name}: {r:?}"));
    c[name.len() + 1..].split(';').next().unwrap().to_string()
}

fn attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_string())
        .collect()
}

fn cleared(r: &Resp, name: &str) -> bool {
    set_cookie(r, name).is_some_and(|c| c.contains("Max-Age=0"))
}

/// What the backend received as `Cookie` (`-`: none).
fn received(r: &Resp) -> &str {
    r.body.split('|').next().unwrap_or("")
}

/// A ticket opens only in pools of its scope (point 5): pool `b` beside
/// `a` on one store reads nothing of `a`'s ticket, and never forwards it;
/// a pool without shared-store mode never gets any ticket the
/// configuration defines, nor does a pool whose ticket has another name.
#[tokio::test]
async fn a_ticket_opens_only_in_its_scope_and_reaches_no_backend() {
    let app = app();
    let session = "app_cookie = \"session\"";
    let pools = [
        pool("a", &app, Some(session)),
        pool("b", &app, Some(session)),
        pool("plain", &app, None),
        pool(
            "other",
            &app,
            Some("app_cookie = \"session\"\ncookie = \"other_sid\""),
        ),
    ]
    .concat();
    let proxy = proxy("", &pools);
    let c = client::h1();
    let login = request(&c, &proxy.url("/a/login?v=alice"), &[]).await;
    let t = ticket(&login, "slb_sid");
    let sid = format!("slb_sid={t}");

    let r = with_cookie(&c, &proxy, "/a/echo", &sid).await;
    assert_eq!(received(&r), "session=alice");
    // another scope: no session, and the ticket is not forwarded
    let r = with_cookie(&c, &proxy, "/b/echo", &format!("theme=dark; {sid}")).await;
    assert_eq!(received(&r), "theme=dark", "{r:?}");
    assert!(cleared(&r, "slb_sid"), "{r:?}");
    // no shared-store mode: no ticket of any pool reaches its backend
    let both = format!("theme=dark; {sid}; other_sid=x; session=forged");
    let r = with_cookie(&c, &proxy, "/plain/echo", &both).await;
    assert_eq!(received(&r), "theme=dark; session=forged", "{r:?}");
    // a pool with another ticket cookie does not get this one either
    let r = with_cookie(&c, &proxy, "/other/echo", &both).await;
    assert_eq!(received(&r), "theme=dark", "{r:?}");
    // and alice's session is as it was
    let r = with_cookie(&c, &proxy, "/a/echo", &sid).await;
    assert_eq!(received(&r), "session=alice");
    assert!(
        app.requests()
            .iter()
            .all(|q| !q.header("cookie").is_some_and(|c| c.contains(&t)))
    );
}

/// Pools given one `scope` share their sessions (point 5).
#[tokio::test]
async fn pools_of_one_scope_share_sessions() {
    let app = app();
    let session = "app_cookie = \"session\"\nscope = \"shop\"";
    let pools = [
        pool("a", &app, Some(session)),
        pool("b", &app, Some(session)),
    ]
    .concat();
    let proxy = proxy("", &pools);
    let c = client::h1();
    let t = ticket(
        &request(&c, &proxy.url("/a/login?v=bob"), &[]).await,
        "slb_sid",
    );
    let r = with_cookie(&c, &proxy, "/b/echo", &format!("slb_sid={t}")).await;
    assert_eq!(received(&r), "session=bob");
}

/// No backend sets a ticket (point 6): its `Set-Cookie` for any ticket
/// cookie of the configuration is dropped, in a pool with shared-store
/// mode or not, counted, and logged with the pool's name.
#[tokio::test]
async fn no_backend_sets_a_ticket() {
    let app = app();
    let pools = [
        pool("a", &app, Some("app_cookie = \"session\"")),
        pool("plain", &app, None),
        pool(
            "other",
            &app,
            Some("app_cookie = \"session\"\ncookie = \"other_sid\""),
        ),
    ]
    .concat();
    let proxy = proxy("", &pools);
    let c = client::h1();
    for path in ["/a/plant", "/plain/plant"] {
        let r = request(&c, &proxy.url(path), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.set_cookies(), ["theme=dark"], "{path}: {r:?}");
    }
    assert_eq!(
        proxy
            .metric("sessionlb_session_ticket_cookies_dropped_total")
            .await,
        4.0
    );
    for pool in ["a", "plain"] {
        let warned = proxy.stderr.wait_for(DEADLINE, |l| {
            l.contains("WARN")
                && l.contains("ticket cookie")
                && l.contains(&format!("pool=\"{pool}\""))
        });
        assert!(warned.is_some(), "{}", proxy.stderr.all().join("\n"));
    }
}

/// The header carrier's names with `_` for `-` (as CGI and WSGI servers
/// read them) never reach the backend from a client (point 6).
#[tokio::test]
async fn header_carrier_names_spelt_with_underscores_are_removed() {
    let app = app();
    let session = "carrier = \"header\"";
    let proxy = proxy("", &pool("a", &app, Some(session)));
    let c = client::h1();
    let t = ticket(
        &request(&c, &proxy.url("/a/update?v=blob1"), &[]).await,
        "slb_sid",
    );
    let r = request(
        &c,
        &proxy.url("/a/echo"),
        &[
            ("cookie", &format!("slb_sid={t}")),
            ("x_session", "forged"),
            ("X_Session_Update", "forged"),
            ("x-session_update", "forged"),
        ],
    )
    .await;
    assert_eq!(r.body, "-|blob1", "{r:?}");
    let last = app.requests().pop().unwrap();
    let head = String::from_utf8_lossy(last.head()).to_ascii_lowercase();
    assert!(!head.contains("forged"), "{head}");
    assert!(!head.contains("x_session"), "{head}");
}

/// An app cookie for another path is another cookie (point 6): it passes
/// to the browser untouched, and a deletion of it beside a login does not
/// log anyone out.
#[tokio::test]
async fn an_app_cookie_of_another_path_is_not_the_session() {
    let app = app();
    let proxy = proxy("", &pool("a", &app, Some("app_cookie = \"session\"")));
    let c = client::h1();
    let login = request(&c, &proxy.url("/a/login-legacy?v=carol"), &[]).await;
    assert!(
        login
            .set_cookies()
            .contains(&"session=; Path=/legacy; Max-Age=0".to_string()),
        "{login:?}"
    );
    let t = ticket(&login, "slb_sid");
    let r = with_cookie(&c, &proxy, "/a/echo", &format!("slb_sid={t}")).await;
    assert_eq!(received(&r), "session=carol", "the login did not last");
}

/// The ticket cookie is `Secure` when the client's request came over
/// HTTPS, to a TLS listener (tests/tls.rs) or to a trusted proxy in front
/// that says so in `X-Forwarded-Proto`; an untrusted peer's word is not
/// taken (point 1).
#[tokio::test]
async fn the_ticket_is_secure_behind_a_trusted_https_proxy() {
    let app = app();
    let pools = pool("a", &app, Some("app_cookie = \"session\""));
    let c = client::h1();
    let https = [("x-forwarded-proto", "https")];
    for (trusted, header, secure) in [
        ("127.0.0.1/32", &https[..], true),
        ("127.0.0.1/32", &[][..], false),
        ("10.0.0.0/8", &https[..], false),
    ] {
        let proxy = proxy(&format!("trusted_proxies = [\"{trusted}\"]"), &pools);
        let r = request(&c, &proxy.url("/a/login?v=dave"), header).await;
        let cookie = set_cookie(&r, "slb_sid").unwrap();
        assert_eq!(
            attributes(&cookie).iter().any(|a| a == "Secure"),
            secure,
            "trusted {trusted}, {header:?}: {cookie}"
        );
    }
}

/// A `__Host-` ticket cookie is `Secure`, on `/`, with no `Domain`,
/// whatever the app's cookie had, so that a browser takes it (point 1).
#[tokio::test]
async fn a_host_prefixed_ticket_has_the_attributes_its_prefix_needs() {
    let app = app();
    let session = "app_cookie = \"session\"\ncookie = \"__Host-sid\"";
    let proxy = proxy("", &pool("a", &app, Some(session)));
    let c = client::h1();
    let r = request(&c, &proxy.url("/a/login?v=erin"), &[]).await;
    let cookie = set_cookie(&r, "__Host-sid").unwrap_or_else(|| panic!("{r:?}"));
    assert_eq!(
        attributes(&cookie),
        ["Path=/", "Secure", "HttpOnly"],
        "{cookie}"
    );
    let t = ticket(&r, "__Host-sid");
    let r = with_cookie(&c, &proxy, "/a/echo", &format!("__Host-sid={t}")).await;
    assert_eq!(received(&r), "session=erin");
}

/// A replaced ticket reads the session before the change for
/// `rotation_grace`, then nothing (point 1).
#[tokio::test]
async fn a_replaced_ticket_reads_the_old_session_for_the_grace_only() {
    let app = app();
    let session = "app_cookie = \"session\"\nrotation_grace = \"1s\"";
    let proxy = proxy("", &pool("a", &app, Some(session)));
    let c = client::h1();
    let old = ticket(
        &request(&c, &proxy.url("/a/login?v=v1"), &[]).await,
        "slb_sid",
    );
    let old_cookie = format!("slb_sid={old}");
    let r = with_cookie(&c, &proxy, "/a/login?v=v2", &old_cookie).await;
    let new = ticket(&r, "slb_sid");
    assert_eq!(
        new.split('.').next(),
        old.split('.').next(),
        "the same session"
    );
    let r = with_cookie(&c, &proxy, "/a/echo", &format!("slb_sid={new}")).await;
    assert_eq!(received(&r), "session=v2");
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut reads = Vec::new();
    loop {
        let r = with_cookie(&c, &proxy, "/a/echo", &old_cookie).await;
        reads.push(received(&r).to_string());
        if cleared(&r, "slb_sid") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old ticket outlived its grace: {reads:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = reads.pop().unwrap();
    assert_eq!(last, "-", "after the grace: no session");
    assert!(reads.iter().all(|r| r == "session=v1"), "{reads:?}");
    // a logout with the new ticket ends the session: no version is left
    let r = with_cookie(&c, &proxy, "/a/logout", &format!("slb_sid={new}")).await;
    assert!(cleared(&r, "slb_sid"));
    let r = with_cookie(&c, &proxy, "/a/echo", &format!("slb_sid={new}")).await;
    assert_eq!(received(&r), "-");
}

/// A change made with a replaced ticket while the session is logged out
/// does not bring it back: a logout ends every version, even one a
/// request in flight had read.
#[tokio::test]
async fn a_logout_ends_the_versions_requests_in_flight_read() {
    use std::sync::{Arc, Condvar, Mutex};
    let release = Arc::new((Mutex::new(false), Condvar::new()));
    let held = release.clone();
    let inner = app();
    let gate = RawBackend::with(move |req: &RawRequest| {
        let (open, changed) = &*held;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
        drop(open);
        let body = req.header("cookie").unwrap_or_else(|| "-".into());
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nSet-Cookie: session=changed; Path=/\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    });
    let session = "app_cookie = \"session\"\nscope = \"one\"";
    let pools = [
        pool("a", &inner, Some(session)),
        pool("held", &gate, Some(session)),
    ]
    .concat();
    let proxy = proxy("", &pools);
    let c = client::h1();
    let first = ticket(
        &request(&c, &proxy.url("/a/login?v=v1"), &[]).await,
        "slb_sid",
    );
    let replaced = format!("slb_sid={first}");
    let r = with_cookie(&c, &proxy, "/a/login?v=v2", &replaced).await;
    let current = format!("slb_sid={}", ticket(&r, "slb_sid"));

    // a request with the replaced ticket reads v1 and waits in the app ...
    let in_flight = {
        let (c, url) = (client::h1_fresh(), proxy.url("/held/change"));
        tokio::spawn(async move { request(&c, &url, &[("cookie", &replaced)]).await })
    };
    let arrived = eventually_async(DEADLINE, || async {
        !gate.requests().is_empty() || gate.connections() > 0
    })
    .await;
    assert!(arrived);
    // ... while the user logs out
    let r = with_cookie(&c, &proxy, "/a/logout", &current).await;
    assert!(cleared(&r, "slb_sid"));
    {
        let (open, changed) = &*release;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
    let r = in_flight.await.unwrap();
    assert_eq!(r.body, "session=v1", "what the request read");
    assert!(
        set_cookie(&r, "slb_sid").is_none_or(|c| c.contains("Max-Age=0")),
        "the logged-out session came back as a new one: {r:?}"
    );
    assert_eq!(proxy.metric("sessionlb_sessions_forked_total").await, 0.0);
}

/// `max_new_sessions_per_client`: one client's cookieless requests store
/// that many sessions a minute, no more; each is answered all the same,
/// and the ones not stored are counted (point 3).
#[tokio::test]
async fn one_client_stores_at_most_its_budget_of_new_sessions() {
    let app = app();
    let session = "app_cookie = \"session\"\nmax_new_sessions_per_client = 5";
    let proxy = proxy("", &pool("a", &app, Some(session)));
    let c = client::h1();
    let mut given = Vec::new();
    for i in 0..20 {
        let r = request(&c, &proxy.url(&format!("/a/login?v=u{i}")), &[]).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(set_cookie(&r, "session").is_none(), "{r:?}");
        given.extend(set_cookie(&r, "slb_sid"));
    }
    // a minute may turn between two requests: then a second budget
    assert!((5..=10).contains(&given.len()), "{given:?}");
    let limited = proxy.metric("sessionlb_sessions_limited_total").await;
    assert_eq!(limited as usize, 20 - given.len());
    assert_eq!(
        proxy.metric("sessionlb_sessions_created_total").await as usize,
        given.len()
    );
}

/// `fail_open` never pretends a logout worked (point 7): with the store
/// not answering, a logout clears the browser's ticket; the session's
/// deletion waits for the store, counted as deferred, and is done when it
/// answers again. Until then the stored session is all that is left of it.
#[tokio::test]
async fn a_logout_while_the_store_is_away_is_done_when_it_is_back() {
    let redis = Redis::start();
    let app = app();
    let session = "app_cookie = \"session\"\non_store_error = \"fail_open\"";
    let store = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ntimeout = \"300ms\"\n",
        redis.url()
    );
    let proxy = proxy("", &format!("{}{store}", pool("a", &app, Some(session))));
    let c = client::h1();
    let t = ticket(
        &request(&c, &proxy.url("/a/login?v=frank"), &[]).await,
        "slb_sid",
    );
    let cookie = format!("slb_sid={t}");
    let key = format!("sessionlb:sessions:{}", t.split('.').next().unwrap());
    assert_eq!(redis.cmd(&["EXISTS", &key]), "1");

    // Redis stops answering (SIGSTOP): its data stays, as after a network
    // partition or a failover's pause
    redis.pause();
    let r = with_cookie(&c, &proxy, "/a/logout", &cookie).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(cleared(&r, "slb_sid"), "the logout left the ticket: {r:?}");
    assert_eq!(
        proxy
            .metric("sessionlb_session_deletes_deferred_total")
            .await,
        1.0
    );
    assert_eq!(proxy.metric("sessionlb_session_deletes_pending").await, 1.0);
    let warned = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("WARN") && l.contains("logout while the session store is unavailable")
    });
    assert!(warned.is_some(), "{}", proxy.stderr.all().join("\n"));

    redis.resume();
    let deleted = eventually_async(DEADLINE, || async {
        proxy.metric("sessionlb_session_deletes_pending").await == 0.0
    })
    .await;
    assert!(deleted, "{}", proxy.stderr.all().join("\n"));
    assert_eq!(redis.cmd(&["EXISTS", &key]), "0");
    assert_eq!(proxy.metric("sessionlb_sessions_deleted_total").await, 1.0);
    let r = with_cookie(&c, &proxy, "/a/echo", &cookie).await;
    assert_eq!(
        received(&r),
        "-",
        "the logged-out ticket still works: {r:?}"
    );
}
