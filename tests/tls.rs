//! TLS: listeners whose certificate is chosen by SNI, HTTP/2 by ALPN, real
//! clients (curl, rustls), session resumption shared by the workers,
//! certificates renewed by a reload (and a bad one refused), and HTTPS
//! backends. Every certificate is made at run time (rcgen).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::Request;
use nix::sys::signal::Signal;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::{HandshakeKind, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::client::{self, get};
use support::raw::{RawBackend, RawRequest, Reply};
use support::tls::{self, Ca, Leaf, TLS12, TLS13, TlsBackend, TlsHttp, client_config};
use support::{
    Backend, DEADLINE, Proxy, bin, check, closed_within, config, entry, eventually_async,
};

/// `{ cert = "...", key = "..." }` for each pair of files.
fn certificates(pairs: &[(PathBuf, PathBuf)]) -> String {
    let list: Vec<String> = pairs
        .iter()
        .map(|(c, k)| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                c.display(),
                k.display()
            )
        })
        .collect();
    format!("certificates = [{}]", list.join(", "))
}

/// `cfg` (as [`config`] makes it) with a `[[server.tls]]` listener for
/// each `certificates = [...]` line; without `server.listen` unless
/// `plain`.
fn with_tls(cfg: &str, listeners: &[String], plain: bool) -> String {
    let mut tls = String::new();
    for certs in listeners {
        tls.push_str(&format!(
            "\n\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\n{certs}"
        ));
    }
    let mut cfg = cfg.replacen("\n\n[pools.web]\n", &format!("{tls}\n\n[pools.web]\n"), 1);
    if !plain {
        cfg = cfg.replacen("listen = [\"127.0.0.1:0\"]\n", "", 1);
    }
    cfg
}

/// Adds `line` to `[server]`.
fn server_line(cfg: &str, line: &str) -> String {
    cfg.replacen("workers = 1\n", &format!("workers = 1\n{line}\n"), 1)
}

/// A CA, a certificate for `localhost` (and 127.0.0.1) it signed, written
/// to `dir` as site.pem / site.key.
fn site(dir: &Path) -> (Ca, Leaf, (PathBuf, PathBuf)) {
    let ca = Ca::new("sessionlb test root");
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    let files = leaf.write(dir, "site");
    (ca, leaf, files)
}

/// Attributes of a `Set-Cookie` value, after its name=value.
fn attributes(set_cookie: &str) -> Vec<String> {
    set_cookie
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_string())
        .collect()
}

fn set_cookie(r: &client::Resp, name: &str) -> String {
    r.set_cookies()
        .into_iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} cookie in {:?}", r.set_cookies()))
}

/// A proxy of configuration `cfg` with a TLS listener too, serving a
/// certificate for localhost (its files in `dir`), and keeping its plain
/// listener with `plain`: the CA that issued the certificate, the proxy
/// and its TLS address.
fn tls_proxy(cfg: &str, dir: &Path, plain: bool) -> (Ca, Proxy, std::net::SocketAddr) {
    let (ca, _, files) = site(dir);
    let proxy = Proxy::start(&with_tls(cfg, &[certificates(&[files])], plain));
    let addr = proxy.tls_addr(0);
    (ca, proxy, addr)
}

/// The proxy counts time in whole milliseconds: a deadline may fall up to
/// one before the exact instant.
const CLOCK_GRAIN: Duration = Duration::from_millis(1);

#[tokio::test]
async fn alpn_h2_gets_http2_anything_else_http1_and_the_backend_hears_https() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (ca, proxy, addr) = tls_proxy(&config("round_robin", &[b.entry()], ""), dir.path(), true);
    let authority = format!("localhost:{}", addr.port());
    // offered, chosen, the HTTP version that follows
    type Case<'a> = (&'a [&'a str], Option<&'a [u8]>, &'a str);
    let cases: [Case; 3] = [
        (&["h2", "http/1.1"], Some(b"h2"), "HTTP/2.0"),
        (&["http/1.1"], Some(b"http/1.1"), "HTTP/1.1"),
        (&[], None, "HTTP/1.1"),
    ];
    for (alpn, chosen, version) in cases {
        let config = Arc::new(client_config(Some(&ca), alpn, &[]));
        let s = tls::connect(addr, "localhost", &config).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), chosen, "offered {alpn:?}");
        let mut http = TlsHttp::new(s, &authority).await;
        // two requests: the connection is kept alive
        for _ in 0..2 {
            let r = http.get("/headers").await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(tls::version(&r), version, "offered {alpn:?}");
            assert_eq!(r.backend(), "b");
            assert!(
                r.body.contains("x-forwarded-proto: https\n"),
                "offered {alpn:?}:\n{}",
                r.body
            );
        }
    }
    // the plain listener still says http
    let r = get(&client::h1(), &proxy.url("/headers")).await;
    assert!(r.body.contains("x-forwarded-proto: http\n"), "{}", r.body);

    // no h2c sniffing on TLS: the HTTP/2 preface without ALPN h2 is not
    // answered in HTTP/2 (an HTTP/1.1 error, or a close)
    let config = Arc::new(client_config(Some(&ca), &[], &[]));
    let mut s = tls::connect(addr, "localhost", &config).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while reply.len() < 9 {
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer to the HTTP/2 preface"),
        }
    }
    assert!(
        reply.is_empty() || reply.starts_with(b"HTTP/1.1 "),
        "answered {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(b.hits(), 7, "the preface reached the backend");
}

#[test]
fn curl_gets_http1_and_http2_over_tls() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, files) = site(dir.path());
    let ca_path = ca.write(dir.path(), "ca.pem");
    let proxy = Proxy::start(&with_tls(
        &config("round_robin", &[b.entry()], ""),
        &[certificates(&[files])],
        false,
    ));
    let port = proxy.tls_addr(0).port();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", flag, "--cacert"])
            .arg(&ca_path)
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_version}"])
            .arg(format!("https://localhost:{port}/headers"))
            .output()
            .expect("curl (scripts/test installs it)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {flag}: {}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (body, got) = stdout.rsplit_once('\n').unwrap();
        assert_eq!(got, version, "curl {flag}");
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    }
}

#[tokio::test]
async fn tls12_and_tls13_clients_are_both_served() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (ca, _proxy, addr) = tls_proxy(&config("round_robin", &[b.entry()], ""), dir.path(), false);
    let authority = format!("localhost:{}", addr.port());
    for (version, expected) in [
        (TLS12, ProtocolVersion::TLSv1_2),
        (TLS13, ProtocolVersion::TLSv1_3),
    ] {
        for alpn in [&["h2"][..], &["http/1.1"][..]] {
            let config = Arc::new(client_config(Some(&ca), alpn, &[version]));
            let s = tls::connect(addr, "localhost", &config).await;
            assert_eq!(s.get_ref().1.protocol_version(), Some(expected));
            let r = TlsHttp::new(s, &authority).await.get("/").await;
            assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"));
        }
    }
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_the_first_is_the_default() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sessionlb test root");
    let a = ca.leaf(&["a.test"]);
    let w = ca.leaf(&["*.b.test", "b.test"]);
    let a_files = a.write(dir.path(), "a");
    let w_files = w.write(dir.path(), "b");
    // two listeners with the same certificates in opposite orders
    let proxy = Proxy::start(&with_tls(
        &config("round_robin", &[b.entry()], ""),
        &[
            certificates(&[a_files.clone(), w_files.clone()]),
            certificates(&[w_files, a_files]),
        ],
        false,
    ));
    let (first, second) = (proxy.tls_addr(0), proxy.tls_addr(1));
    for (name, sni, expected, why) in [
        ("a.test", true, &a, "its own name"),
        ("b.test", true, &w, "its own name"),
        ("www.b.test", true, &w, "the wildcard"),
        (
            "deep.www.b.test",
            true,
            &a,
            "a wildcard matches one label only",
        ),
        ("other.test", true, &a, "an unknown name gets the first"),
        ("b.test", false, &a, "no SNI gets the first"),
        ("127.0.0.1", true, &a, "an IP address sends no SNI"),
    ] {
        assert!(
            tls::served_leaf(first, name, sni).await == expected.der,
            "{name} (sni {sni}): {why}"
        );
    }
    for (name, sni, expected) in [
        ("a.test", true, &a),
        ("www.b.test", true, &w),
        ("other.test", true, &w),
        ("a.test", false, &w),
    ] {
        assert!(
            tls::served_leaf(second, name, sni).await == expected.der,
            "second listener: {name} (sni {sni})"
        );
    }
    // and a verifying client is served end to end under each name
    let config = Arc::new(client_config(Some(&ca), &["h2", "http/1.1"], &[]));
    for name in ["a.test", "www.b.test"] {
        let s = tls::connect(first, name, &config).await;
        let r = TlsHttp::new(s, name).await.get("/").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"), "{name}");
    }
}

#[tokio::test]
async fn pkcs1_rsa_and_sec1_ec_keys_and_chains_load_from_paths_beside_the_config() {
    let b = Backend::start("b");
    let root = Ca::new("sessionlb test root");
    let intermediate = root.intermediate("sessionlb test intermediate");
    let chained = intermediate.leaf(&["chain.test"]);
    let ec = root.leaf(&["ec.test"]);
    let rsa = root.leaf_with(
        tls::leaf_params(&["rsa.test"]),
        rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap(),
    );
    let (sec1, pkcs1) = (ec.sec1_key_pem(), rsa.pkcs1_key_pem());
    assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    let (chain_pem, chain_key) = (chained.cert_pem(), chained.key_pem());
    let (ec_pem, rsa_pem) = (ec.cert_pem(), rsa.cert_pem());
    let files: [(&str, &[u8]); 6] = [
        ("chain.pem", chain_pem.as_bytes()),
        ("chain.key", chain_key.as_bytes()),
        ("ec.pem", ec_pem.as_bytes()),
        ("ec.key", sec1.as_bytes()),
        ("rsa.pem", rsa_pem.as_bytes()),
        ("rsa.key", pkcs1.as_bytes()),
    ];
    let pairs: Vec<(PathBuf, PathBuf)> = ["chain", "ec", "rsa"]
        .iter()
        .map(|s| (format!("{s}.pem").into(), format!("{s}.key").into()))
        .collect();
    let proxy = Proxy::start_with_files(
        &with_tls(
            &config("round_robin", &[b.entry()], ""),
            &[certificates(&pairs)],
            false,
        ),
        &files,
    );
    let addr = proxy.tls_addr(0);
    // the client trusts the root only: the intermediate must come with
    // the chained leaf
    let config = Arc::new(client_config(Some(&root), &["http/1.1"], &[]));
    for (name, leaf, chain_len) in [
        ("chain.test", &chained, 2),
        ("ec.test", &ec, 1),
        ("rsa.test", &rsa, 1),
    ] {
        let s = tls::connect(addr, name, &config).await;
        assert!(tls::peer_leaf(&s) == leaf.der, "{name}");
        let sent = s.get_ref().1.peer_certificates().unwrap().len();
        assert_eq!(sent, chain_len, "{name}: certificates sent");
        let r = TlsHttp::new(s, name).await.get("/").await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "b"), "{name}");
    }
}

#[tokio::test]
async fn cookies_set_over_tls_are_secure() {
    let app = RawBackend::with(|req: &RawRequest| {
        if req.request_line().contains(" /login ") {
            Reply::raw(
                "HTTP/1.1 200 OK\r\nSet-Cookie: session=alice; Path=/\r\nContent-Length: 2\r\n\r\nok",
            )
        } else {
            Reply::ok()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (ca, proxy, addr) = tls_proxy(
        &config(
            "cookie",
            &[app.entry()],
            "[pools.web.sticky]\ncookie = \"slb_route\"\n\n[pools.web.session]\napp_cookie = \"session\"\n",
        ),
        dir.path(),
        true,
    );
    let authority = format!("localhost:{}", addr.port());
    for alpn in ["h2", "http/1.1"] {
        let config = Arc::new(client_config(Some(&ca), &[alpn], &[]));
        let s = tls::connect(addr, "localhost", &config).await;
        let r = TlsHttp::new(s, &authority).await.get("/login").await;
        assert_eq!(r.status, 200, "{}", r.body);
        for name in ["slb_route", "slb_sid"] {
            let cookie = set_cookie(&r, name);
            assert!(
                attributes(&cookie).iter().any(|a| a == "Secure"),
                "{alpn}: {cookie}"
            );
        }
        assert!(!r.set_cookies().iter().any(|c| c.starts_with("session=")));
    }
    // the same cookies over plain HTTP are not Secure
    let r = get(&client::h1(), &proxy.url("/login")).await;
    for name in ["slb_route", "slb_sid"] {
        let cookie = set_cookie(&r, name);
        assert!(
            !attributes(&cookie).iter().any(|a| a == "Secure"),
            "{cookie}"
        );
    }
}

#[tokio::test]
async fn websocket_upgrade_works_over_tls() {
    use tokio_tungstenite::tungstenite::Message;
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (ca, _proxy, addr) = tls_proxy(&config("round_robin", &[b.entry()], ""), dir.path(), false);
    let config = Arc::new(client_config(Some(&ca), &["http/1.1"], &[]));
    let s = tls::connect(addr, "localhost", &config).await;
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (mut ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(url, s))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echo = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text(format!("hello {i}")));
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_data().len(), 100_000);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn session_tickets_resume_whichever_worker_accepts() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, files) = site(dir.path());
    let cfg = with_tls(
        &config("round_robin", &[b.entry()], ""),
        &[certificates(&[files])],
        true,
    )
    .replacen(
        "workers = 1\n",
        "workers = 2\nadmin_listen = \"127.0.0.1:0\"\n",
        1,
    );
    let proxy = Proxy::start(&cfg);
    let addr = proxy.tls_addr(0);
    let authority = format!("localhost:{}", addr.port());
    const CONNECTIONS: usize = 10;
    for version in [TLS13, TLS12] {
        let mut config = client_config(Some(&ca), &["http/1.1"], &[version]);
        config.resumption = Resumption::store(Arc::new(ClientSessionMemoryCache::new(64)));
        let config = Arc::new(config);
        let mut kinds = Vec::new();
        for _ in 0..CONNECTIONS {
            // each connection gets its answer (and with it, in TLS 1.3,
            // its tickets) before the next one starts
            let s = tls::connect(addr, "localhost", &config).await;
            kinds.push(s.get_ref().1.handshake_kind().unwrap());
            let r = TlsHttp::new(s, &authority).await.get("/").await;
            assert_eq!(r.status, 200);
        }
        assert_ne!(kinds[0], HandshakeKind::Resumed, "{version:?}");
        assert!(
            kinds[1..].iter().all(|k| *k == HandshakeKind::Resumed),
            "{version:?}: {kinds:?}"
        );
    }
    let (full, resumed) = (
        "sessionlb_tls_handshakes_total{kind=\"full\"}",
        "sessionlb_tls_handshakes_total{kind=\"resumed\"}",
    );
    let counted = eventually_async(DEADLINE, || async {
        proxy.metric(full).await == 2.0
            && proxy.metric(resumed).await == 2.0 * (CONNECTIONS as f64 - 1.0)
    })
    .await;
    assert!(
        counted,
        "full {} resumed {}",
        proxy.metric(full).await,
        proxy.metric(resumed).await
    );
}

/// A proxy (with an admin listener) whose TLS listener serves `site.pem`
/// and `site.key`, written beside its configuration for a reload to
/// replace: the CA that issued them, the first certificate, the
/// configuration's text, the TLS address, the authority to ask for and a
/// client that trusts the CA.
struct Renewable {
    ca: Ca,
    first: Leaf,
    cfg: String,
    proxy: Proxy,
    addr: std::net::SocketAddr,
    authority: String,
    config: Arc<rustls::ClientConfig>,
}

impl Renewable {
    fn start(b: &Backend) -> Renewable {
        let ca = Ca::new("sessionlb test root");
        let first = ca.leaf(&["localhost"]);
        let (pem, key) = (first.cert_pem(), first.key_pem());
        let cfg = server_line(
            &with_tls(
                &config("round_robin", &[b.entry()], ""),
                &[certificates(&[("site.pem".into(), "site.key".into())])],
                true,
            ),
            "admin_listen = \"127.0.0.1:0\"",
        );
        let proxy = Proxy::start_with_files(
            &cfg,
            &[("site.pem", pem.as_bytes()), ("site.key", key.as_bytes())],
        );
        let addr = proxy.tls_addr(0);
        let config = Arc::new(client_config(Some(&ca), &["http/1.1"], &[]));
        Renewable {
            ca,
            first,
            cfg,
            proxy,
            addr,
            authority: format!("localhost:{}", addr.port()),
            config,
        }
    }
}

#[tokio::test]
async fn a_reload_renews_certificates_and_established_connections_keep_working() {
    let b = Backend::start("b");
    let Renewable {
        ca,
        first,
        cfg,
        proxy,
        addr,
        authority,
        config,
    } = Renewable::start(&b);
    let s = tls::connect(addr, "localhost", &config).await;
    assert!(tls::peer_leaf(&s) == first.der);
    let mut kept = TlsHttp::new(s, &authority).await;
    assert_eq!(kept.get("/").await.body, "b");

    // renewed in place (as certbot does), then SIGHUP
    let second = ca.leaf(&["localhost"]);
    second.write(proxy.dir(), "site");
    proxy.signal(Signal::SIGHUP);
    assert!(
        proxy
            .stderr
            .wait_for(DEADLINE, |l| l.contains("configuration reloaded"))
            .is_some(),
        "{:#?}",
        proxy.stderr.all()
    );
    let s = tls::connect(addr, "localhost", &config).await;
    assert!(tls::peer_leaf(&s) == second.der, "SIGHUP did not renew");
    assert_eq!(TlsHttp::new(s, &authority).await.get("/").await.body, "b");
    assert_eq!(kept.get("/").await.body, "b");

    // other files named in the configuration, then POST /admin/reload
    let third = ca.leaf(&["localhost"]);
    third.write(proxy.dir(), "next");
    let r = proxy
        .reload_with(
            &cfg.replace("site.pem", "next.pem")
                .replace("site.key", "next.key"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = tls::connect(addr, "localhost", &config).await;
    assert!(tls::peer_leaf(&s) == third.der, "the admin reload did not");
    assert_eq!(TlsHttp::new(s, &authority).await.get("/").await.body, "b");
    // the connection opened before both reloads is still served
    for _ in 0..3 {
        assert_eq!(kept.get("/").await.body, "b");
    }
}

#[tokio::test]
async fn a_reload_with_a_bad_certificate_is_refused_and_the_old_one_keeps_serving() {
    let b = Backend::start("b");
    let Renewable {
        ca,
        first,
        cfg,
        proxy,
        addr,
        authority,
        config,
    } = Renewable::start(&b);
    let still_first = || async {
        let s = tls::connect(addr, "localhost", &config).await;
        assert!(
            tls::peer_leaf(&s) == first.der,
            "the old certificate is gone"
        );
        assert_eq!(TlsHttp::new(s, &authority).await.get("/").await.body, "b");
    };
    still_first().await;

    // a key file that does not exist, by POST /admin/reload
    let r = proxy
        .reload_with(&cfg.replace("site.key", "gone.key"))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("server.tls[0].certificates[0].key: ") && r.body.contains("gone.key"),
        "{}",
        r.body
    );
    still_first().await;

    // a renewal half done: the new certificate without its key, by SIGHUP
    std::fs::write(&proxy.config_path, &cfg).unwrap();
    let second = ca.leaf(&["localhost"]);
    std::fs::write(proxy.dir().join("site.pem"), second.cert_pem()).unwrap();
    proxy.signal(Signal::SIGHUP);
    let refused = proxy.stderr.wait_for(DEADLINE, |l| {
        l.contains("reload refused; still serving the previous configuration")
            && l.contains("server.tls[0].certificates[0].key")
            && l.contains("does not match")
    });
    assert!(refused.is_some(), "{:#?}", proxy.stderr.all());
    still_first().await;
    assert!(
        !proxy
            .stderr
            .all()
            .iter()
            .any(|l| l.contains("configuration reloaded")),
        "{:#?}",
        proxy.stderr.all()
    );

    // the key comes: the next reload takes both
    std::fs::write(proxy.dir().join("site.key"), second.key_pem()).unwrap();
    proxy.signal(Signal::SIGHUP);
    assert!(
        proxy
            .stderr
            .wait_for(DEADLINE, |l| l.contains("configuration reloaded"))
            .is_some(),
        "{:#?}",
        proxy.stderr.all()
    );
    let s = tls::connect(addr, "localhost", &config).await;
    assert!(tls::peer_leaf(&s) == second.der);
}

/// `sessionlb run -c path`, expected to refuse: its exit code and stderr.
fn run_refused(path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(bin())
        .args(["run", "-c"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.and_then(|s| s.code()), stderr)
}

fn listener_file(dir: &Path, name: &str, pairs: &[(PathBuf, PathBuf)]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[server.tls]]\nlisten = \"127.0.0.1:0\"\n{}\n\n[pools.web]\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n",
            certificates(pairs)
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_and_run_refuse_bad_certificate_files_naming_the_toml_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = Ca::new("sessionlb test root");
    let intermediate = root.intermediate("sessionlb test intermediate");
    let leaf = intermediate.leaf(&["localhost"]);
    let good = leaf.write(d, "good");
    let other = root.leaf(&["localhost"]);
    let (_, other_key) = other.write(d, "other");
    // the intermediate before the leaf, as `cat ca.pem site.pem` makes it
    let backwards = d.join("backwards.pem");
    std::fs::write(&backwards, format!("{}{}", leaf.chain, leaf.pem)).unwrap();
    // the root between the leaf and its issuer
    let shuffled = d.join("shuffled.pem");
    std::fs::write(
        &shuffled,
        format!("{}{}{}", leaf.pem, root.pem(), leaf.chain),
    )
    .unwrap();
    let cases = [
        (
            vec![(d.join("none.pem"), good.1.clone())],
            "server.tls[0].certificates[0].cert: ",
            vec!["none.pem", "not found"],
        ),
        (
            vec![good.clone(), (good.0.clone(), d.join("none.key"))],
            "server.tls[0].certificates[1].key: ",
            vec!["none.key", "not found"],
        ),
        (
            vec![good.clone(), (good.0.clone(), other_key.clone())],
            "server.tls[0].certificates[1].key: ",
            vec!["does not match"],
        ),
        (
            vec![(backwards, good.1.clone())],
            "server.tls[0].certificates[0].cert: ",
            vec!["out of order"],
        ),
        (
            vec![(shuffled, good.1.clone())],
            "server.tls[0].certificates[0].cert: ",
            vec!["out of order"],
        ),
    ];
    for (i, (pairs, path, words)) in cases.iter().enumerate() {
        let file = listener_file(d, &format!("case{i}.toml"), pairs);
        let out = check(&file);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "check, case {i}:\n{text}");
        let line = text.lines().find(|l| l.contains(path));
        assert!(
            line.is_some_and(|l| words.iter().all(|w| l.contains(w))),
            "check, case {i}: no line with {path:?} and {words:?} in:\n{text}"
        );
        let (code, stderr) = run_refused(&file);
        assert_eq!(code, Some(1), "run, case {i}:\n{stderr}");
        let line = stderr.lines().find(|l| l.contains(path));
        assert!(
            line.is_some_and(|l| words.iter().all(|w| l.contains(w))),
            "run, case {i}: no line with {path:?} and {words:?} in:\n{stderr}"
        );
    }
    // the good pair alone passes
    let file = listener_file(d, "good.toml", &[good]);
    let out = check(&file);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_certificate_is_accepted_with_a_warning_naming_the_date() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sessionlb test root");
    let mut old = tls::leaf_params(&["old.test"]);
    old.not_before = rcgen::date_time_ymd(2019, 1, 1);
    old.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let old = ca.leaf_with(old, rcgen::KeyPair::generate().unwrap());
    let mut early = tls::leaf_params(&["early.test"]);
    early.not_before = rcgen::date_time_ymd(2099, 1, 1);
    early.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let early = ca.leaf_with(early, rcgen::KeyPair::generate().unwrap());
    let pairs = [
        old.write(dir.path(), "old"),
        early.write(dir.path(), "early"),
    ];
    let file = listener_file(dir.path(), "dated.toml", &pairs);
    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, words) in [
        (
            "warning: server.tls[0].certificates[0].cert: ",
            &["expired", "2020-01-01"][..],
        ),
        (
            "warning: server.tls[0].certificates[1].cert: ",
            &["2099-01-01"][..],
        ),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(path) && words.iter().all(|w| l.contains(w))),
            "no {path:?} with {words:?} in:\n{stdout}"
        );
    }

    // run serves them, and says so too
    let b = Backend::start("b");
    let proxy = Proxy::start(&with_tls(
        &config("round_robin", &[b.entry()], ""),
        &[certificates(&pairs)],
        false,
    ));
    for date in ["2020-01-01", "2099-01-01"] {
        assert!(
            proxy
                .stderr
                .wait_for(DEADLINE, |l| l.contains(date))
                .is_some(),
            "no warning naming {date}:\n{:#?}",
            proxy.stderr.all()
        );
    }
    let addr = proxy.tls_addr(0);
    assert!(tls::served_leaf(addr, "old.test", true).await == old.der);
    assert!(tls::served_leaf(addr, "early.test", true).await == early.der);
}

#[tokio::test]
async fn a_tls_client_that_sends_nothing_is_closed_at_the_request_header_timeout() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (ca, _proxy, addr) = tls_proxy(
        &config(
            "round_robin",
            &[b.entry()],
            "[timeouts]\nrequest_header = \"1s\"\nidle = \"60s\"\n",
        ),
        dir.path(),
        false,
    );
    let limit = Duration::from_secs(1) - CLOCK_GRAIN;

    // TCP only, no ClientHello; the proxy's clock starts at accept, after
    // `started`, so however slow the machine the close cannot come sooner
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a silent TCP connection was never closed");
    let took = started.elapsed();
    assert!(took >= limit, "closed after {took:?}");

    // a handshake, and then no request
    let config = Arc::new(client_config(Some(&ca), &["http/1.1"], &[]));
    let started = Instant::now();
    let mut s = tls::connect(addr, "localhost", &config).await;
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("a silent TLS connection was never closed");
    let took = started.elapsed();
    assert!(took >= limit, "closed after {took:?}");
    assert_eq!(b.hits(), 0);
}

/// A configuration whose pool `web` has `backend` and `keys`.
fn https_pool(backend: &str, keys: &str) -> String {
    config("round_robin", &[backend.to_string()], keys)
}

#[tokio::test]
async fn an_https_backend_verified_by_the_pool_ca_reuses_its_connections() {
    let ca = Ca::new("sessionlb backend root");
    let backend = TlsBackend::start("secure", &ca.leaf(&["127.0.0.1"]));
    let ca_pem = ca.pem();
    let proxy = Proxy::start_with_files(
        &https_pool(&entry(backend.addr), "tls = true\nca = \"ca.pem\"\n"),
        &[("ca.pem", ca_pem.as_bytes())],
    );
    let c = client::h1_fresh();
    for _ in 0..5 {
        let r = get(&c, &proxy.url("/")).await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str(), r.backend().as_str()),
            (200, "secure", "secure")
        );
    }
    let r = get(&c, &proxy.url("/headers")).await;
    assert!(r.body.contains("x-forwarded-proto: http\n"), "{}", r.body);
    assert_eq!(
        (backend.connections(), backend.handshakes()),
        (1, 1),
        "6 sequential requests, one pooled TLS connection"
    );
}

#[tokio::test]
async fn an_https_backend_named_by_url_is_verified_and_sent_its_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sessionlb backend root");
    // a DNS name only: verified against the name, not the address
    let backend = TlsBackend::start("named", &ca.leaf(&["localhost"]));
    let ca_path = ca.write(dir.path(), "ca.pem");
    let proxy = Proxy::start(&https_pool(
        &format!("{{ addr = \"https://localhost:{}\" }}", backend.addr.port()),
        &format!("ca = \"{}\"\n", ca_path.display()),
    ));
    let r = get(&client::h1(), &proxy.url("/")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "named"));
    assert_eq!(backend.snis(), vec![Some("localhost".to_string())]);
}

#[tokio::test]
async fn an_https_backend_signed_by_another_ca_is_a_502_with_the_reason_logged() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Ca::new("sessionlb backend root");
    let stranger = Ca::new("sessionlb other root");
    let backend = TlsBackend::start("impostor", &signer.leaf(&["127.0.0.1"]));
    let ca_path = stranger.write(dir.path(), "ca.pem");
    let proxy = Proxy::start(&https_pool(
        &entry(backend.addr),
        &format!("tls = true\nca = \"{}\"\n", ca_path.display()),
    ));
    let r = get(&client::h1(), &proxy.url("/")).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_ne!(r.body, "impostor");
    let logged = proxy.stderr.wait_for(DEADLINE, |l| {
        let l = l.to_ascii_lowercase().replace([' ', '_'], "");
        l.contains("unknownissuer")
    });
    assert!(logged.is_some(), "{:#?}", proxy.stderr.all());
    assert_eq!(backend.handshakes(), 0);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_backend_certificate_and_warns_at_load() {
    let anyone = Ca::new("nobody's root");
    let backend = TlsBackend::start("unverified", &anyone.leaf(&["somewhere.invalid"]));
    let proxy = Proxy::start(&https_pool(
        &entry(backend.addr),
        "tls = true\ninsecure_skip_verify = true\n",
    ));
    assert!(
        proxy
            .stderr
            .wait_for(DEADLINE, |l| l.contains("insecure_skip_verify"))
            .is_some(),
        "no warning at load:\n{:#?}",
        proxy.stderr.all()
    );
    let r = get(&client::h1(), &proxy.url("/")).await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "unverified"));
}

/// The proxy with a TLS listener (and a plain one) in front of `b`; the
/// CA its certificate is signed by.
fn tls_front(b: &Backend, dir: &Path) -> (Proxy, Ca) {
    let (ca, _, files) = site(dir);
    let proxy = Proxy::start(&with_tls(
        &config("round_robin", &[b.entry()], ""),
        &[certificates(&[files])],
        true,
    ));
    (proxy, ca)
}

/// `body` cut into pieces of uneven sizes (1 byte to 40 KB).
fn pieces(body: &[u8]) -> Vec<Bytes> {
    let sizes = [1, 7, 40_000, 1_000, 16_384, 3, 25_000, 8_192, 100];
    let mut out = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < body.len() {
        let n = sizes[i % sizes.len()].min(body.len() - at);
        out.push(Bytes::copy_from_slice(&body[at..at + n]));
        at += n;
        i += 1;
    }
    out
}

#[tokio::test]
async fn chunked_http1_and_http2_uploads_over_tls_stream_to_the_backend_whole() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (proxy, ca) = tls_front(&b, dir.path());
    let addr = proxy.tls_addr(0);
    let authority = format!("localhost:{}", addr.port());
    for (alpn, version) in [("http/1.1", "HTTP/1.1"), ("h2", "HTTP/2.0")] {
        let config = Arc::new(client_config(Some(&ca), &[alpn], &[]));
        let mut http =
            TlsHttp::new(tls::connect(addr, "localhost", &config).await, &authority).await;
        let body = tls::pattern(700_000, alpn.len() as u64);
        let expected = String::from_utf8(body.clone()).unwrap();
        // of unknown length: chunked over HTTP/1.1, DATA frames over HTTP/2
        for path in ["/echo", "/upload"] {
            let req = http
                .request(hyper::Method::POST, path)
                .body(tls::streamed(pieces(&body)))
                .unwrap();
            let r = http.send(req).await;
            assert_eq!(r.status, 200, "{alpn} {path}");
            assert_eq!(tls::version(&r), version);
            match path {
                "/echo" => assert!(
                    r.body == expected,
                    "{alpn}: the echo differs: {} bytes back of {}, first difference at {:?}",
                    r.body.len(),
                    expected.len(),
                    r.body
                        .bytes()
                        .zip(expected.bytes())
                        .position(|(a, b)| a != b)
                ),
                _ => assert_eq!(r.body, body.len().to_string(), "{alpn}"),
            }
        }
    }
}

/// A plain proxy in front of an HTTPS backend started by `start`; the
/// backend.
fn https_backend_front(start: impl Fn(&Leaf) -> TlsBackend) -> (Proxy, TlsBackend) {
    let ca = Ca::new("sessionlb backend root");
    let backend = start(&ca.leaf(&["127.0.0.1"]));
    let ca_pem = ca.pem();
    let proxy = Proxy::start_with_files(
        &https_pool(&entry(backend.addr), "tls = true\nca = \"ca.pem\"\n"),
        &[("ca.pem", ca_pem.as_bytes())],
    );
    (proxy, backend)
}

/// Body sizes from 96 KiB to 208 KiB: at least one falls where a slow
/// backend's new connection fills up with the last write of the body
/// (about its socket buffers and the TLS writer's 64 KiB past them).
fn sweep() -> Vec<usize> {
    (6..=13).map(|k| k * 16 * 1024).collect()
}

/// A plain proxy whose pool has `n` HTTPS backends that read small and
/// slowly (round robin: request `i` goes to backend `i`, on a new
/// connection).
fn slow_https_backends(n: usize) -> (Proxy, Vec<TlsBackend>) {
    let ca = Ca::new("sessionlb backend root");
    let slow: Vec<TlsBackend> = (0..n)
        .map(|i| TlsBackend::start_reading_small(&format!("slow{i}"), &ca.leaf(&["127.0.0.1"])))
        .collect();
    let entries: Vec<String> = slow.iter().map(|b| entry(b.addr)).collect();
    let ca_pem = ca.pem();
    let proxy = Proxy::start_with_files(
        &config("round_robin", &entries, "tls = true\nca = \"ca.pem\"\n"),
        &[("ca.pem", ca_pem.as_bytes())],
    );
    (proxy, slow)
}

/// A chunked response body read as it comes.
struct Chunked {
    s: TcpStream,
    raw: Vec<u8>,
    data: Vec<u8>,
    ended: bool,
}

impl Chunked {
    /// Reads until `n` bytes of body have come (or its end), within the
    /// deadline; `what` names the wait in the failure.
    async fn fill_to(&mut self, n: usize, what: &str) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            self.decode();
            if self.data.len() >= n || self.ended {
                return;
            }
            match tokio::time::timeout(DEADLINE, self.s.read(&mut buf)).await {
                Ok(Ok(0)) => panic!("{what}: the proxy closed; body so far {}", self.data.len()),
                Ok(Ok(k)) => self.raw.extend_from_slice(&buf[..k]),
                Ok(Err(e)) => panic!("{what}: {e}"),
                Err(_) => panic!(
                    "{what}: not there within {DEADLINE:?} ({} of {n} bytes of the echo)",
                    self.data.len()
                ),
            }
        }
    }

    fn decode(&mut self) {
        while !self.ended {
            let Some(eol) = support::raw::find(&self.raw, b"\r\n") else {
                return;
            };
            let line = std::str::from_utf8(&self.raw[..eol]).unwrap();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .unwrap_or_else(|_| panic!("not a chunk size line: {line:?}"));
            if self.raw.len() < eol + 2 + size + 2 {
                return;
            }
            assert_eq!(&self.raw[eol + 2 + size..eol + 4 + size], b"\r\n");
            self.data
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 4 + size);
            self.ended = size == 0;
        }
    }
}

/// A chunked request whose first chunk (`first` bytes) goes to `path`,
/// a backend that answers after reading it; then, with the response head
/// in hand, more chunks, each echoed back before the next is sent.
async fn first_chunk_then_ping_pong(proxy: &Proxy, path: &str, first: usize) {
    let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
    let body = tls::pattern(first, 1);
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{first:x}\r\n"
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"\r\n");
    tokio::time::timeout(DEADLINE, s.write_all(&req))
        .await
        .expect("the proxy stopped reading the first chunk")
        .unwrap();
    // the backend answers only once the first chunk reached it whole
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = support::raw::find(&raw, b"\r\n\r\n") {
            break at + 4;
        }
        match tokio::time::timeout(DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) => panic!(
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&raw)
            ),
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!(
                "no response head within {DEADLINE:?}: the first chunk ({first} bytes) never \
                 reached the HTTPS backend whole, the proxy waiting on the client with the rest \
                 still in its TLS writer (not flushed); got {:?}",
                String::from_utf8_lossy(&raw)
            ),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("x-first: {first}\r\n")), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    let mut echo = Chunked {
        s,
        raw: raw.split_off(head_end),
        data: Vec::new(),
        ended: false,
    };
    let mut sent = Vec::new();
    for i in 0..5u64 {
        let chunk = tls::pattern(1000 + 333 * i as usize, 10 + i);
        let mut bytes = format!("{:x}\r\n", chunk.len()).into_bytes();
        bytes.extend_from_slice(&chunk);
        bytes.extend_from_slice(b"\r\n");
        echo.s.write_all(&bytes).await.unwrap();
        sent.extend_from_slice(&chunk);
        echo.fill_to(sent.len(), &format!("the echo of chunk {i}"))
            .await;
        assert!(
            echo.data == sent,
            "chunk {i}: the echo differs from what was sent"
        );
    }
    echo.s.write_all(b"0\r\n\r\n").await.unwrap();
    echo.fill_to(usize::MAX, "the end of the echo").await;
    assert!(echo.ended && echo.data == sent);
}

#[tokio::test]
async fn a_request_streams_to_an_https_backend_that_answers_after_its_first_chunk() {
    let (proxy, backend) = https_backend_front(|leaf| TlsBackend::start("first", leaf));
    // a small first chunk: the backend answers, then echoes chunk by chunk
    tokio::time::timeout(
        DEADLINE * 2,
        first_chunk_then_ping_pong(&proxy, "/first/4096", 4096),
    )
    .await
    .expect("the exchange through the HTTPS backend hung");
    // larger ones, read slowly: the proxy's writes keep meeting a full
    // socket, so the end of the first chunk waits in its TLS writer
    // unless the proxy flushes it before it waits on the client. (Whether
    // the last write is the one that meets a full socket depends on how
    // the pieces fall: a few sizes make it certain in practice.)
    // Each on a new backend connection (one backend each, round robin),
    // whose buffers are as small as they start.
    let sizes = sweep();
    let (proxy, slow) = slow_https_backends(sizes.len());
    for n in sizes.iter().copied() {
        tokio::time::timeout(
            DEADLINE * 2,
            first_chunk_then_ping_pong(&proxy, &format!("/first/{n}?slow"), n),
        )
        .await
        .expect("the exchange through the HTTPS backend hung");
    }
    assert_eq!(backend.handshakes(), 1);
    for b in &slow {
        assert_eq!(b.handshakes(), 1, "{}", b.name);
    }
}

#[tokio::test]
async fn a_1_mib_post_with_content_length_reaches_an_https_backend_whole() {
    let (proxy, backend) =
        https_backend_front(|leaf| TlsBackend::start_reading_small("secure", leaf));
    let body = tls::pattern(1 << 20, 7);
    let want = format!("{} {:016x}", body.len(), tls::digest(&body));
    // read at once, then slowly: the proxy's writes meet a full socket
    for path in ["/upload", "/upload?slow"] {
        let req = Request::post(proxy.url(path))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let r = client::send(&client::h1(), req).await;
        assert_eq!(
            (r.status.as_u16(), r.body.as_str()),
            (200, want.as_str()),
            "{path}"
        );
        assert_eq!(r.backend(), "secure");
    }
    assert_eq!(backend.handshakes(), 1, "one pooled TLS connection");
    // the end of a body of known length is flushed too, not left in the
    // TLS writer while the proxy waits for the response
    let sizes = sweep();
    let (proxy, slow) = slow_https_backends(sizes.len());
    for (i, n) in sizes.into_iter().enumerate() {
        let body = tls::pattern(n, i as u64);
        let req = Request::post(proxy.url("/upload?slow"))
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let r = tokio::time::timeout(
            DEADLINE - Duration::from_secs(1),
            client::send(&client::h1(), req),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no response to a {n}-byte body: its end never reached the HTTPS backend, \
                 left in the proxy's TLS writer (not flushed) while it waited for the response"
            )
        });
        let want = format!("{n} {:016x}", tls::digest(&body));
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, want.as_str()));
        assert_eq!(r.backend(), slow[i].name);
    }
}

async fn next_message(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
) -> tokio_tungstenite::tungstenite::Message {
    tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("no echo through the tunnel")
        .expect("the tunnel closed")
        .expect("a WebSocket error")
}

#[tokio::test]
async fn a_websocket_tunnels_through_an_https_backend_connection_both_ways() {
    use tokio_tungstenite::tungstenite::Message;
    let (proxy, backend) = https_backend_front(|leaf| TlsBackend::start("wss", leaf));
    let s = TcpStream::connect(proxy.addr()).await.unwrap();
    let url = format!("ws://{}/ws", proxy.addr());
    let (mut ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(url, s))
        .await
        .expect("upgrade timed out")
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-backend"], "wss");
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::text(format!("hello {i}"))
        );
    }
    // larger than a TLS record and than a socket's first buffer, both ways
    let big = tls::pattern(300_000, 3);
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert!(
        next_message(&mut ws).await.into_data() == big,
        "the 300 KB echo differs"
    );
    // several in flight at once
    for i in 0..5 {
        ws.send(Message::binary(tls::pattern(20_000, i)))
            .await
            .unwrap();
    }
    for i in 0..5 {
        assert!(
            next_message(&mut ws).await.into_data() == tls::pattern(20_000, i),
            "message {i}"
        );
    }
    ws.close(None).await.unwrap();
    assert_eq!(backend.handshakes(), 1);
}

#[tokio::test]
async fn pipelined_requests_over_one_tls_connection_are_answered_in_order() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (proxy, ca) = tls_front(&b, dir.path());
    let config = Arc::new(client_config(Some(&ca), &["http/1.1"], &[]));
    let mut s = tls::connect(proxy.tls_addr(0), "localhost", &config).await;
    // one write, so most often one TLS record
    s.write_all(
        b"GET /headers?n=1 HTTP/1.1\r\nHost: localhost\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello\
          GET /headers?n=3 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let mut chunk = [0u8; 4096];
    while responses.len() < 3 {
        if let Some(len) = support::raw::response_len(&buf) {
            let rest = buf.split_off(len);
            responses
                .push(String::from_utf8_lossy(&std::mem::replace(&mut buf, rest)).into_owned());
            continue;
        }
        match tokio::time::timeout(DEADLINE, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            other => panic!(
                "{} of 3 responses ({other:?}): {responses:#?} {:?}",
                responses.len(),
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    for r in &responses {
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    assert!(
        responses[0].contains("uri: /headers?n=1\n"),
        "{}",
        responses[0]
    );
    assert!(responses[1].ends_with("\r\n\r\n5"), "{}", responses[1]);
    assert!(
        responses[2].contains("uri: /headers?n=3\n"),
        "{}",
        responses[2]
    );
    assert!(
        buf.is_empty(),
        "more came: {:?}",
        String::from_utf8_lossy(&buf)
    );
    // and the connection serves on
    s.write_all(b"GET /headers?n=4 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    while support::raw::response_len(&buf).is_none() {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&buf).contains("uri: /headers?n=4\n"));
    assert_eq!(b.hits(), 4);
}

#[test]
fn check_names_each_listeners_certificates_and_how_each_https_backend_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("sessionlb test root");
    let ca_file = ca.write(dir.path(), "ca");
    let (cert, key) = ca
        .leaf(&["a.example", "*.a.example"])
        .write(dir.path(), "a");
    let file = dir.path().join("sessionlb.toml");
    std::fs::write(
        &file,
        format!(
            "[[server.tls]]\nlisten = \"127.0.0.1:8443\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n\
             [pools.web]\nca = \"{}\"\nbackends = [{{ addr = \"https://localhost:9443\" }}, {{ addr = \"127.0.0.1:9001\" }}]\n",
            cert.display(),
            key.display(),
            ca_file.display()
        ),
    )
    .unwrap();
    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("127.0.0.1:8443 (tls: a.example *.a.example)"),
        "{stdout}"
    );
    // (localhost resolves to 127.0.0.1 or ::1, as the machine has it)
    let line = stdout
        .lines()
        .find(|l| l.starts_with("  - https://localhost:9443 at "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.ends_with(&format!(
            "weight 1, https verified as localhost by {}",
            ca_file.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("  - 127.0.0.1:9001 weight 1\n"), "{stdout}");
}

#[tokio::test]
async fn plain_http_or_garbage_on_a_tls_listener_is_closed_and_counted_as_failed() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, files) = site(dir.path());
    let proxy = Proxy::start(&server_line(
        &with_tls(
            &config("round_robin", &[b.entry()], ""),
            &[certificates(&[files])],
            false,
        ),
        "admin_listen = \"127.0.0.1:0\"",
    ));
    let addr = proxy.tls_addr(0);
    // a handshake record, then a ClientHello of 60 bytes that is not one
    let mut not_a_hello = b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c".to_vec();
    not_a_hello.extend_from_slice(&[0xff; 60]);
    let hostile: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        &not_a_hello,
        // a record far larger than TLS allows
        b"\x16\x03\x03\xff\xff",
    ];
    for bytes in hostile {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        closed_within(&mut s, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("{:?} left open", String::from_utf8_lossy(bytes)));
    }
    let failed = "sessionlb_tls_handshakes_total{kind=\"failed\"}";
    assert!(
        eventually_async(DEADLINE, || async { proxy.metric(failed).await == 3.0 }).await,
        "failed handshakes counted: {}",
        proxy.metric(failed).await
    );
    assert_eq!(b.hits(), 0);
    // and the listener serves on
    let config = Arc::new(client_config(Some(&ca), &["http/1.1"], &[]));
    let s = tls::connect(addr, "localhost", &config).await;
    let authority = format!("localhost:{}", addr.port());
    assert_eq!(TlsHttp::new(s, &authority).await.get("/").await.status, 200);
}

#[tokio::test]
async fn a_tls_listener_a_reload_adds_serves_its_certificate_and_one_it_removes_closes() {
    let b = Backend::start("b");
    let plain = server_line(
        &config("round_robin", &[entry(b.addr)], ""),
        "admin_listen = \"127.0.0.1:0\"",
    );
    let proxy = Proxy::start(&plain);
    let (ca, leaf, files) = site(proxy.dir());
    let added = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let with_listener = with_tls(&plain, &[certificates(&[files])], true).replace(
        "listen = \"127.0.0.1:0\"\ncertificates",
        &format!("listen = \"{added}\"\ncertificates"),
    );
    let r = proxy.reload_with(&with_listener).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let trusting = Arc::new(client_config(Some(&ca), &["h2"], &[]));
    let s = tls::connect(added, "localhost", &trusting).await;
    assert!(tls::peer_leaf(&s) == leaf.der);
    let mut kept = TlsHttp::new(s, &format!("localhost:{}", added.port())).await;
    assert!(kept.is_h2());
    assert_eq!(kept.get("/").await.body, "b");

    // removed again: no new connection, and the open one is told GOAWAY
    let r = proxy.reload_with(&plain).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refused = eventually_async(DEADLINE, || async {
        tokio::net::TcpStream::connect(added).await.is_err()
    })
    .await;
    assert!(refused, "{added} still accepts connections");
    // a request that crossed the GOAWAY may still be served; then the
    // connection closes
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout(DEADLINE, kept.try_get_with("/", &[])).await {
            Ok(Err(_)) => break,
            Ok(Ok(r)) => assert_eq!(r.status, 200),
            Err(_) => panic!("a request on the removed listener's connection hung"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connection to the removed listener stays open"
        );
    }
}

/// Two pools, `/a` and `/b`, whose one backend each is `backend` (the same
/// address), with `a` and `b` as their TLS keys, and files beside.
fn two_pools_one_backend(backend: &TlsBackend, a: &str, b: &str) -> String {
    let entry = entry(backend.addr);
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [pools.a]\nbackends = [{entry}]\ntls = true\n{a}\n\n\
         [pools.b]\nbackends = [{entry}]\ntls = true\n{b}\n\n\
         [[routes]]\npath_prefix = \"/a\"\npool = \"a\"\n\
         [[routes]]\npath_prefix = \"/b\"\npool = \"b\"\n"
    )
}

/// `GET path` on a kept-alive client connection: status and body.
async fn status_body(c: &client::HttpClient, proxy: &Proxy, path: &str) -> (u16, String) {
    let r = get(c, &proxy.url(path)).await;
    (r.status.as_u16(), r.body)
}

#[tokio::test]
async fn a_connection_opened_without_verification_is_not_reused_by_a_pool_that_verifies() {
    // signed by a root no system trusts: the pool on system roots refuses it
    let ca = Ca::new("sessionlb private root");
    let backend = TlsBackend::start("legacy-app", &ca.leaf(&["127.0.0.1"]));
    let proxy = Proxy::start(&two_pools_one_backend(
        &backend,
        "",
        "insecure_skip_verify = true",
    ));
    let c = client::h1();
    for _ in 0..2 {
        assert_eq!(
            status_body(&c, &proxy, "/b").await,
            (200, "legacy-app".to_string()),
            "the pool that skips verification reaches it"
        );
    }
    assert_eq!(backend.handshakes(), 1, "one unverified connection, reused");
    // that pooled connection was never verified: the verifying pool opens
    // its own, and refuses the certificate
    let (status, body) = status_body(&c, &proxy, "/a").await;
    assert_eq!(
        status, 502,
        "the verifying pool was served over the unverified connection: {body}"
    );
}

#[tokio::test]
async fn a_connection_verified_by_one_ca_is_not_reused_by_a_pool_with_another() {
    let ca = Ca::new("sessionlb backend root");
    let other = Ca::new("sessionlb other root");
    let backend = TlsBackend::start("app", &ca.leaf(&["127.0.0.1"]));
    let (ca_pem, other_pem) = (ca.pem(), other.pem());
    let proxy = Proxy::start_with_files(
        &two_pools_one_backend(&backend, "ca = \"ca.pem\"", "ca = \"other.pem\""),
        &[
            ("ca.pem", ca_pem.as_bytes()),
            ("other.pem", other_pem.as_bytes()),
        ],
    );
    let c = client::h1();
    assert_eq!(
        status_body(&c, &proxy, "/a").await,
        (200, "app".to_string())
    );
    let (status, body) = status_body(&c, &proxy, "/b").await;
    assert_eq!(
        status, 502,
        "a pool whose CA did not sign the backend was served over another pool's connection: {body}"
    );
}

#[tokio::test]
async fn a_reload_that_turns_verification_on_retires_the_unverified_connections() {
    let ca = Ca::new("sessionlb private root");
    let backend = TlsBackend::start("app", &ca.leaf(&["127.0.0.1"]));
    let unverified = https_pool(
        &entry(backend.addr),
        "tls = true\ninsecure_skip_verify = true\n",
    )
    .replace(
        "workers = 1\n",
        "workers = 1\nadmin_listen = \"127.0.0.1:0\"\n",
    );
    let proxy = Proxy::start(&unverified);
    let c = client::h1();
    for _ in 0..2 {
        assert_eq!(status_body(&c, &proxy, "/").await, (200, "app".to_string()));
    }
    assert_eq!(backend.handshakes(), 1);
    // verified by the system roots from now on, which do not know `ca`
    let verified = unverified.replace("insecure_skip_verify = true\n", "");
    let r = proxy.reload_with(&verified).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (status, body) = status_body(&c, &proxy, "/").await;
    assert_eq!(
        status, 502,
        "the reload left the unverified connection in use: {body}"
    );
}
