//! The Redis store over TLS (`rediss://`): the proxy verifies the server's
//! certificate against the system roots (here `SSL_CERT_FILE`, a
//! certificate made for the test) and keeps sessions through it.

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use support::client::{self, send};
use support::raw::{RawBackend, RawRequest, Reply};
use support::redis::Redis;
use support::{Proxy, config};

fn app() -> RawBackend {
    RawBackend::with(|req: &RawRequest| {
        let set = match req.request_line().contains(" /login ") {
            true => "Set-Cookie: session=alice; Path=/\r\n",
            false => "",
        };
        let body = req.header("cookie").unwrap_or_else(|| "-".into());
        Reply::raw(format!(
            "HTTP/1.1 200 OK\r\n{set}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    })
}

#[tokio::test]
async fn sessions_over_rediss() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.path().join("redis.pem"), dir.path().join("redis.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let redis = Redis::start_with_tls(&cert_path, &key_path);
    let backend = app();
    let cfg = config(
        "round_robin",
        &[backend.entry()],
        &format!(
            "[pools.web.session]\napp_cookie = \"session\"\n\n[store]\nkind = \"redis\"\nurl = \"{}\"\n",
            redis.tls_url()
        ),
    );
    let ca = cert_path.to_str().unwrap();
    let proxy = Proxy::start_with_env(&cfg, &[("SSL_CERT_FILE", ca)]);
    let c = client::h1();
    let login = send(
        &c,
        Request::post(proxy.url("/login"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.body);
    let ticket = login
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    assert!(ticket.starts_with("slb_sid="), "{ticket}");
    let r = client::get_with(&c, &proxy.url("/"), &[("cookie", &ticket)]).await;
    assert_eq!(r.body, "session=alice");
    assert_eq!(redis.keys("sessionlb:sessions:*").len(), 1);

    // a server the proxy cannot verify is a store it does not use
    let untrusted = Proxy::start(&cfg);
    let r = send(
        &c,
        Request::post(untrusted.url("/login"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
}
