//! Shared-store mode on the wire, against a raw backend that records every
//! byte the proxy sends it: the cookie carrier (several app cookies, other
//! cookies in place, HTTP/1.1 and h2c), the header carrier, sealing,
//! revocation, logout, and a session over `max_blob_bytes`.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::client::{self, HttpClient, Resp, send};
use support::raw::{self as raw, RawBackend, RawRequest, Reply};
use support::{DEADLINE, Proxy, config};

/// An app that keeps its session in `sess` and `sess.sig`, scripted by
/// path; every answer's body is the `Cookie` field it received ("-" when
/// none) and its `X-Session` field.
fn cookie_app() -> RawBackend {
    RawBackend::with(|req: &RawRequest| {
        let path = req
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let set_cookies: &[&str] = match path.as_str() {
            "/login" => &[
                "theme=dark; Path=/",
                "sess=VALUE1; Path=/; Secure; SameSite=Strict",
                "sess.sig=SIG1; Path=/; Max-Age=3600",
                "lang=en",
            ],
            "/sig" => &["sess.sig=SIG2; Path=/"],
            "/rotate" => &["sess.sig=; Max-Age=0", "sess=NEW; Path=/"],
            "/quoted" => &["sess=\"a b\"; Path=/"],
            "/big" => &["sess=BIG"],
            "/logout" => &[
                "sess=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0",
                "sess.sig=; Path=/; Max-Age=0",
            ],
            _ => &[],
        };
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for c in set_cookies {
            if *c == "sess=BIG" {
                head.push_str(&format!("Set-Cookie: sess={}\r\n", "b".repeat(2000)));
            } else {
                head.push_str(&format!("Set-Cookie: {c}\r\n"));
            }
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

/// The `[pools.web.session]` of the tests: [`cookie_app`]'s two cookies.
const SESSION: &str = "[pools.web.session]\napp_cookie = [\"sess\", \"sess.sig\"]\n";

/// [`cookie_app`] behind a proxy (with an admin listener) whose session
/// section is [`SESSION`] and then `extra`.
fn cookie_app_proxy(extra: &str) -> (RawBackend, Proxy) {
    let app = cookie_app();
    let cfg = with_admin(config(
        "round_robin",
        &[app.entry()],
        &format!("{SESSION}{extra}"),
    ));
    let proxy = Proxy::start(&cfg);
    (app, proxy)
}

fn with_admin(cfg: String) -> String {
    cfg.replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    )
}

async fn request(c: &HttpClient, method: &str, url: &str, cookies: &[&str]) -> Resp {
    let mut b = Request::builder().method(method).uri(url);
    for cookie in cookies {
        b = b.header("cookie", *cookie);
    }
    send(c, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// The `slb_sid` value a response gives the browser.
fn ticket(r: &Resp) -> Option<String> {
    r.set_cookies().iter().find_map(|c| {
        c.strip_prefix("slb_sid=")
            .map(|rest| rest.split(';').next().unwrap().to_string())
    })
}

fn clears_ticket(r: &Resp) -> bool {
    r.set_cookies()
        .iter()
        .any(|c| c.starts_with("slb_sid=;") && c.contains("Max-Age=0"))
}

/// The cookie carrier end to end on one client: several cookies in one
/// `Cookie` field (or in several, over h2c), several `Set-Cookie` fields in
/// one response, two app cookies updated one by one, a session too large,
/// and the app's logout.
async fn cookie_carrier(h2: bool) {
    let (app, proxy) = cookie_app_proxy("max_blob_bytes = 1000\n");
    let c = if h2 { client::h2() } else { client::h1() };

    let login = request(&c, "POST", &proxy.url("/login"), &["a=1"]).await;
    assert_eq!(login.status, 200);
    let cookies = login.set_cookies();
    // the app's other cookies pass as they were, in their order; its
    // session cookies never reach the browser
    assert_eq!(cookies[0], "theme=dark; Path=/");
    assert_eq!(cookies[1], "lang=en");
    assert!(
        !cookies.iter().any(|c| c.starts_with("sess")),
        "{cookies:?}"
    );
    let t = ticket(&login).expect("a ticket");
    let (id, secret) = t.split_once('.').expect("<id>.<secret>");
    assert_eq!((id.len(), secret.len()), (22, 43), "{t}");
    let ticket_cookie = cookies.iter().find(|c| c.starts_with("slb_sid=")).unwrap();
    // the first app cookie's attributes, HttpOnly always, the lifetime of
    // none (sess has none)
    assert_eq!(
        ticket_cookie.split_once(';').unwrap().1,
        " Path=/; Secure; HttpOnly; SameSite=Strict",
        "{ticket_cookie}"
    );

    // the ticket becomes both app cookies in its place; the others pass
    // byte for byte
    let cookie = format!("slb_sid={t}");
    let sent: Vec<String> = match h2 {
        false => vec![format!("a=1; {cookie}; b=\"q\"")],
        true => vec!["a=1".into(), cookie.clone(), "b=\"q\"".into()],
    };
    let sent: Vec<&str> = sent.iter().map(String::as_str).collect();
    let r = request(&c, "GET", &proxy.url("/echo"), &sent).await;
    assert_eq!(r.body, "a=1; sess=VALUE1; sess.sig=SIG1; b=\"q\"|-");
    assert!(r.set_cookies().is_empty(), "no change, no Set-Cookie");
    let forwarded = app.requests().last().unwrap().clone();
    assert_eq!(
        forwarded.header("cookie").unwrap(),
        "a=1; sess=VALUE1; sess.sig=SIG1; b=\"q\""
    );

    // one app cookie updated alone: the session's next version, under a
    // new ticket of the same session; a client's own `sess` is dropped
    let r = request(&c, "GET", &proxy.url("/sig"), &[&cookie]).await;
    assert_eq!(r.status, 200);
    let next = ticket(&r).expect("a change gives a new ticket");
    assert_ne!(next, t);
    assert_eq!(next.split_once('.').unwrap().0, id, "the same session");
    let old_cookie = cookie;
    let cookie = format!("slb_sid={next}");
    let r = request(
        &c,
        "GET",
        &proxy.url("/echo"),
        &[&format!("sess=forged; {cookie}")],
    )
    .await;
    assert_eq!(r.body, "sess=VALUE1; sess.sig=SIG2|-");
    // the replaced ticket reads the session as it was before the change
    let r = request(&c, "GET", &proxy.url("/echo"), &[&old_cookie]).await;
    assert_eq!(r.body, "sess=VALUE1; sess.sig=SIG1|-");
    assert!(r.set_cookies().is_empty(), "{r:?}");

    // too large: 502, and the session before it stays
    let r = request(&c, "GET", &proxy.url("/big"), &[&cookie]).await;
    assert_eq!(r.status, 502);
    assert!(
        r.body.contains("session is larger than the proxy stores"),
        "{}",
        r.body
    );
    assert!(!r.set_cookies().iter().any(|c| c.starts_with("sess=")));
    assert_eq!(proxy.metric("sessionlb_session_too_large_total").await, 1.0);
    let r = request(&c, "GET", &proxy.url("/echo"), &[&cookie]).await;
    assert_eq!(r.body, "sess=VALUE1; sess.sig=SIG2|-");

    // the app logs out: both cookies gone, so the session is deleted and
    // the browser's ticket cleared; the old ticket replayed is no session
    let r = request(&c, "POST", &proxy.url("/logout"), &[&cookie]).await;
    assert!(clears_ticket(&r), "{:?}", r.set_cookies());
    assert!(!r.set_cookies().iter().any(|c| c.starts_with("sess")));
    let r = request(&c, "GET", &proxy.url("/echo"), &["a=1", &cookie]).await;
    assert_eq!(r.body, "a=1|-");
    assert!(clears_ticket(&r), "a stale ticket is cleared");
    assert_eq!(proxy.metric("sessionlb_sessions_created_total").await, 1.0);
    assert_eq!(proxy.metric("sessionlb_sessions_deleted_total").await, 1.0);
    // one load per request with a ticket: seven found, the last one gone
    let ops = "sessionlb_session_store_ops_total";
    assert_eq!(
        proxy
            .metric(&format!("{ops}{{op=\"load\",result=\"ok\"}}"))
            .await,
        7.0
    );
    assert_eq!(
        proxy
            .metric(&format!("{ops}{{op=\"load\",result=\"miss\"}}"))
            .await,
        1.0
    );
    // writes: the login, the new signature (the 502 and the logout write nothing)
    assert_eq!(
        proxy
            .metric(&format!("{ops}{{op=\"put\",result=\"ok\"}}"))
            .await,
        2.0
    );
    assert_eq!(
        proxy
            .metric(&format!("{ops}{{op=\"delete\",result=\"ok\"}}"))
            .await,
        1.0
    );
    let timed = "sessionlb_session_store_duration_seconds_count{op=\"load\"}";
    assert_eq!(proxy.metric(timed).await, 8.0);
    assert_eq!(proxy.metric("sessionlb_sessions_rotated_total").await, 1.0);
    assert_eq!(proxy.metric("sessionlb_session_store_up").await, 1.0);
}

#[tokio::test]
async fn cookie_carrier_over_http1() {
    cookie_carrier(false).await;
}

#[tokio::test]
async fn cookie_carrier_over_h2c() {
    cookie_carrier(true).await;
}

/// The header carrier: the blob goes to the backend in `X-Session`, comes
/// back in `X-Session-Update`; a client can neither set nor read either.
#[tokio::test]
async fn header_carrier() {
    let app = RawBackend::with(|req: &RawRequest| {
        let path = req
            .request_line()
            .split(' ')
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let update = match path.as_str() {
            "/login" => "X-Session-Update: {\"user\":\"alice\"}\r\n",
            "/logout" => "X-Session-Update:\r\n",
            _ => "",
        };
        let body = req.header("x-session").unwrap_or_else(|| "-".into());
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\n{update}X-Session: leaked\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    });
    let cfg = config(
        "round_robin",
        &[app.entry()],
        "[pools.web.session]\ncarrier = \"header\"\n",
    );
    let proxy = Proxy::start(&cfg);
    let c = client::h1();
    let forged = |path: &str, cookie: Option<&str>| {
        let mut b = Request::post(proxy.url(path))
            .header("x-session", "{\"user\":\"root\"}")
            .header("x-session-update", "{\"user\":\"root\"}");
        if let Some(cookie) = cookie {
            b = b.header("cookie", cookie);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let login = send(&c, forged("/login", None)).await;
    assert_eq!(
        login.body, "-",
        "a client's X-Session never reaches the app"
    );
    assert!(login.headers.get("x-session-update").is_none());
    assert!(login.headers.get("x-session").is_none());
    let t = ticket(&login).expect("a ticket");
    let cookie = format!("slb_sid={t}");
    let r = send(&c, forged("/echo", Some(&cookie))).await;
    assert_eq!(r.body, "{\"user\":\"alice\"}");
    assert!(r.headers.get("x-session").is_none());
    let r = send(&c, forged("/logout", Some(&cookie))).await;
    assert!(clears_ticket(&r), "{:?}", r.set_cookies());
    let r = send(&c, forged("/echo", Some(&cookie))).await;
    assert_eq!(r.body, "-");
    let sent = app.requests();
    assert!(
        sent.iter().all(|r| r.header("x-session-update").is_none()
            && r.header("x-session").as_deref() != Some("{\"user\":\"root\"}")),
        "forged headers reached the app"
    );
}

/// Only the proxy issues tickets: a planted one is never adopted, a wrong
/// secret opens nothing (and does not harm the real session), and an
/// operator revokes a session by its id.
#[tokio::test]
async fn tickets_cannot_be_planted_guessed_or_kept_after_revocation() {
    let (_app, proxy) = cookie_app_proxy("");
    let c = client::h1();
    let planted = "slb_sid=AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let login = request(&c, "POST", &proxy.url("/login"), &[planted]).await;
    let t = ticket(&login).unwrap();
    assert_ne!(format!("slb_sid={t}"), planted);
    let r = request(&c, "GET", &proxy.url("/echo"), &[planted]).await;
    assert_eq!(r.body, "-|-", "the planted ticket is no session");

    let (id, secret) = t.split_once('.').unwrap();
    let mut wrong: Vec<u8> = secret.bytes().collect();
    wrong[3] = if wrong[3] == b'A' { b'B' } else { b'A' };
    let wrong = format!("slb_sid={id}.{}", String::from_utf8(wrong).unwrap());
    let r = request(&c, "GET", &proxy.url("/echo"), &[&wrong]).await;
    assert_eq!(r.body, "-|-", "a wrong secret opens nothing");
    let cookie = format!("slb_sid={t}");
    let r = request(&c, "GET", &proxy.url("/echo"), &[&cookie]).await;
    assert_eq!(r.body, "sess=VALUE1; sess.sig=SIG1|-");

    let admin = format!("http://{}", proxy.admin_addr());
    let revoke = |id: String| {
        let c = c.clone();
        let url = format!("{admin}/admin/sessions/{id}");
        async move { request(&c, "DELETE", &url, &[]).await.status.as_u16() }
    };
    assert_eq!(revoke(id.to_string()).await, 204);
    let r = request(&c, "GET", &proxy.url("/echo"), &[&cookie]).await;
    assert_eq!(r.body, "-|-", "revoked at once");
    assert_eq!(revoke(id.to_string()).await, 404);
    assert_eq!(revoke("not-an-id".to_string()).await, 404);
    assert_eq!(proxy.metric("sessionlb_sessions_deleted_total").await, 1.0);
    // ids never appear whole in the log
    let logs = proxy.stderr.all().join("\n") + &proxy.stdout.all().join("\n");
    assert!(!logs.contains(id), "{logs}");
}

/// A connection remembers the session its last request opened, so that
/// the next request with that ticket skips opening it again; on that same
/// connection, the same id with another secret still opens nothing, and
/// the real ticket after it still opens the session. Three requests
/// pipelined on one raw connection, so they surely share it.
#[tokio::test]
async fn a_connection_remembers_no_secret_but_its_own() {
    let (_app, proxy) = cookie_app_proxy("");
    let c = client::h1();
    let t = ticket(&request(&c, "POST", &proxy.url("/login"), &[]).await).unwrap();
    let (id, secret) = t.split_once('.').unwrap();
    let mut wrong: Vec<u8> = secret.bytes().collect();
    wrong[3] = if wrong[3] == b'A' { b'B' } else { b'A' };
    let wrong = format!("{id}.{}", String::from_utf8(wrong).unwrap());
    let get = |ticket: &str, close: &str| {
        format!("GET /echo HTTP/1.1\r\nHost: a\r\nCookie: slb_sid={ticket}\r\n{close}\r\n")
    };
    let first = get(&t, "");
    let rest = get(&wrong, "") + &get(&t, "Connection: close\r\n");
    let addr = proxy.addrs[0];
    let got = tokio::task::spawn_blocking(move || {
        raw::exchange(
            addr,
            first.as_bytes(),
            false,
            rest.as_bytes(),
            DEADLINE,
            DEADLINE,
        )
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&got.received);
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap_or(""))
        .collect();
    let session = "sess=VALUE1; sess.sig=SIG1|-";
    assert_eq!(bodies, [session, "-|-", session], "{text}");
}

/// A browser's connection sends the same `Cookie` field request after
/// request, and the connection gives the backend the same field back
/// without rewriting it again; every change is still seen at once: another
/// cookie beside the ticket, a session the app changed, a revocation. One
/// raw keep-alive connection, one request at a time.
#[tokio::test]
async fn a_connection_forwards_the_session_as_it_is_now() {
    let (_app, proxy) = cookie_app_proxy("");
    let c = client::h1();
    let t = ticket(&request(&c, "POST", &proxy.url("/login"), &[]).await).unwrap();
    let admin = format!(
        "http://{}/admin/sessions/{}",
        proxy.admin_addr(),
        t.split_once('.').unwrap().0
    );
    let addr = proxy.addrs[0];
    let first = t.clone();
    let bodies = tokio::task::spawn_blocking(move || {
        let mut conn = raw::Sequential::connect(addr, DEADLINE);
        let mut get = |path: &str, theme: &str, ticket: &str| {
            conn.request(&format!(
                "GET {path} HTTP/1.1\r\nHost: a\r\nCookie: theme={theme}; slb_sid={ticket}\r\n\r\n"
            ))
        };
        let body = |head: String| head.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        let mut bodies = vec![
            body(get("/echo", "dark", &first)),
            body(get("/echo", "dark", &first)),
            body(get("/echo", "light", &first)),
        ];
        // the app changes the session: the old field still brings the
        // session as it was (the grace of a replaced ticket), the new
        // ticket the new one
        let changed = get("/sig", "light", &first);
        bodies.push(body(get("/echo", "light", &first)));
        let next = changed
            .split("\r\n")
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: slb_sid="))
            .map(|l| {
                l["set-cookie: slb_sid=".len()..]
                    .split(';')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .expect("a new ticket");
        bodies.push(body(get("/echo", "light", &next)));
        bodies.push(body(get("/echo", "light", &next)));
        (bodies, conn, next)
    })
    .await
    .unwrap();
    let (bodies, mut conn, t) = bodies;
    assert_eq!(
        bodies,
        [
            "theme=dark; sess=VALUE1; sess.sig=SIG1|-",
            "theme=dark; sess=VALUE1; sess.sig=SIG1|-",
            "theme=light; sess=VALUE1; sess.sig=SIG1|-",
            "theme=light; sess=VALUE1; sess.sig=SIG1|-",
            "theme=light; sess=VALUE1; sess.sig=SIG2|-",
            "theme=light; sess=VALUE1; sess.sig=SIG2|-",
        ]
    );
    // changed through another connection: seen on this one at once (the
    // ticket the other connection got in exchange is its own)
    let cookie = format!("slb_sid={t}");
    let rotated = request(&c, "GET", &proxy.url("/rotate"), &[&cookie]).await;
    assert_eq!(rotated.status.as_u16(), 200);
    let t = ticket(&rotated).expect("a new ticket");
    let cookie = format!("slb_sid={t}");
    let field = format!("GET /echo HTTP/1.1\r\nHost: a\r\nCookie: theme=light; {cookie}\r\n\r\n");
    let (changed, mut conn) = tokio::task::spawn_blocking(move || (conn.request(&field), conn))
        .await
        .unwrap();
    assert!(
        changed.ends_with("\r\n\r\ntheme=light; sess=NEW|-"),
        "{changed}"
    );

    assert_eq!(
        request(&c, "DELETE", &admin, &[]).await.status.as_u16(),
        204
    );
    let after = tokio::task::spawn_blocking(move || {
        conn.request(&format!(
            "GET /echo HTTP/1.1\r\nHost: a\r\nCookie: theme=light; slb_sid={t}\r\n\r\n"
        ))
    })
    .await
    .unwrap();
    assert!(
        after.ends_with("\r\n\r\ntheme=light|-"),
        "revoked at once: {after}"
    );
    assert!(
        after.to_ascii_lowercase().contains("set-cookie: slb_sid=;"),
        "the ticket is cleared: {after}"
    );
}

/// `encrypt = false`: the blob is stored plain, and the ticket still has a
/// secret, of which the store keeps only a MAC: the id alone is no ticket.
#[tokio::test]
async fn unsealed_tickets_have_a_secret_too() {
    let (_app, proxy) = cookie_app_proxy("encrypt = false\n");
    let c = client::h1();
    let login = request(&c, "POST", &proxy.url("/login"), &[]).await;
    let t = ticket(&login).unwrap();
    let (id, secret) = t.split_once('.').expect("<id>.<secret>");
    assert_eq!((id.len(), secret.len()), (22, 43), "{t}");
    let r = request(&c, "GET", &proxy.url("/echo"), &[&format!("slb_sid={t}")]).await;
    assert_eq!(r.body, "sess=VALUE1; sess.sig=SIG1|-");
    let r = request(&c, "GET", &proxy.url("/echo"), &[&format!("slb_sid={id}")]).await;
    assert_eq!(r.body, "-|-", "the id alone");
    assert!(clears_ticket(&r));
}

/// A response that deletes one app cookie before it sets another: the new
/// ticket takes the attributes of the cookie set, not of the deletion.
#[tokio::test]
async fn a_deletion_first_does_not_end_a_new_ticket() {
    let (_app, proxy) = cookie_app_proxy("");
    let c = client::h1();
    let r = request(&c, "GET", &proxy.url("/rotate"), &[]).await;
    let cookies = r.set_cookies();
    let ticket_cookie = cookies.iter().find(|c| c.starts_with("slb_sid=")).unwrap();
    assert!(!ticket_cookie.contains("Max-Age"), "{ticket_cookie}");
    let t = ticket(&r).unwrap();
    let r = request(&c, "GET", &proxy.url("/echo"), &[&format!("slb_sid={t}")]).await;
    assert_eq!(r.body, "sess=NEW|-");
}

/// The embedded store outlives reloads that leave `[store]` as it is: a
/// reload that changes the pools keeps every session.
#[tokio::test]
async fn sessions_survive_a_reload() {
    let app = cookie_app();
    let other = cookie_app();
    let proxy = Proxy::start(&with_admin(config("round_robin", &[app.entry()], SESSION)));
    let c = client::h1();
    let t = ticket(&request(&c, "POST", &proxy.url("/login"), &[]).await).unwrap();
    let cookie = format!("slb_sid={t}");
    std::fs::write(
        &proxy.config_path,
        with_admin(config(
            "round_robin",
            &[app.entry(), other.entry()],
            SESSION,
        )),
    )
    .unwrap();
    proxy.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        support::eventually_async(DEADLINE, || async {
            proxy.metric("sessionlb_config_generation").await == 2.0
        })
        .await
    );
    for _ in 0..4 {
        let r = request(&c, "GET", &proxy.url("/echo"), &[&cookie]).await;
        assert_eq!(r.body, "sess=VALUE1; sess.sig=SIG1|-");
    }
    assert!(
        !other.requests().is_empty(),
        "the new backend takes its share"
    );
}

/// A quoted value goes back to the app quoted, as a browser sends it:
/// Werkzeug quotes a cookie value with a space and reads nothing without.
#[tokio::test]
async fn quoted_app_cookies_go_back_quoted() {
    let (_app, proxy) = cookie_app_proxy("");
    let c = client::h1();
    let t = ticket(&request(&c, "GET", &proxy.url("/quoted"), &[]).await).unwrap();
    let r = request(&c, "GET", &proxy.url("/echo"), &[&format!("slb_sid={t}")]).await;
    assert_eq!(r.body, "sess=\"a b\"|-");
}

/// An app cookie set again as it is (many frameworks set their cookie on
/// every response) changes nothing: no write, no new ticket.
#[tokio::test]
async fn an_app_cookie_set_again_as_it_is_changes_nothing() {
    let (_app, proxy) = cookie_app_proxy("");
    let c = client::h1();
    let t = ticket(&request(&c, "POST", &proxy.url("/login"), &[]).await).unwrap();
    let r = request(&c, "GET", &proxy.url("/sig"), &[&format!("slb_sid={t}")]).await;
    let t2 = ticket(&r).expect("a change: a new ticket");
    for _ in 0..3 {
        let r = request(&c, "GET", &proxy.url("/sig"), &[&format!("slb_sid={t2}")]).await;
        assert!(r.set_cookies().is_empty(), "{r:?}");
        assert_eq!(r.body, "sess=VALUE1; sess.sig=SIG2|-");
    }
    let puts = "sessionlb_session_store_ops_total{op=\"put\",result=\"ok\"}";
    assert_eq!(
        proxy.metric(puts).await,
        2.0,
        "the login and the one change"
    );
    assert_eq!(proxy.metric("sessionlb_sessions_rotated_total").await, 1.0);
}
