//! Hostile HTTP through the real binary, over raw TCP (issue 18): request
//! smuggling forms, malformed and oversized heads, bad `Host` fields,
//! upgrades, forwarding headers a client must not choose, broken backend
//! responses, and HTTP/2 abuse (rapid reset, CONTINUATION flood).
//!
//! The HTTP/1 cases are one table: what a client sends on a fresh
//! connection, what it must get first (a status, or a close), and what the
//! backend must have received for it, byte for byte (or nothing at all).
//! One test runs the whole table and reports every failing case at once.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::raw::{self, RawBackend, Reply, Seen, show};
use support::{DEADLINE, Proxy, config};

/// What a client must see first on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A final response with this status.
    Status(u16),
    /// The connection closes without any response.
    Closed,
}

/// What the backend must have received for a case (the requests that
/// reached it with the case's name as `x-request-id`, concatenated).
#[derive(Debug, Clone)]
enum Received {
    Nothing,
    /// Head and body as forwarded; `{backend}` stands for the backend's
    /// `ip:port`.
    Exact(Vec<u8>),
}

use Outcome::{Closed, Status};
use Received::{Exact, Nothing};

struct Case {
    /// Also the `X-Request-Id` the client sends, and its path.
    name: &'static str,
    /// Written on a fresh connection.
    send: Vec<u8>,
    /// Shut the client's write side after `send`.
    half_close: bool,
    /// Written after the first response, if the connection is still open.
    after: Vec<u8>,
    /// The backend's raw answer to this case's request (default: a 200).
    reply: Option<Reply>,
    expect: Outcome,
    backend: Received,
}

fn case(name: &'static str, send: impl Into<Vec<u8>>, expect: Outcome, backend: Received) -> Case {
    Case {
        name,
        send: send.into(),
        half_close: false,
        after: Vec::new(),
        reply: None,
        expect,
        backend,
    }
}

impl Case {
    fn reply(mut self, reply: Reply) -> Case {
        self.reply = Some(reply);
        self
    }

    fn after(mut self, bytes: &[u8]) -> Case {
        self.after = bytes.to_vec();
        self
    }

    fn half_close(mut self) -> Case {
        self.half_close = true;
        self
    }
}

/// `GET /<name>` over HTTP/1.1 with `fields` (each ending in CRLF) and the
/// case's `X-Request-Id` last.
fn get(name: &str, fields: &str) -> Vec<u8> {
    format!("GET /{name} HTTP/1.1\r\n{fields}X-Request-Id: {name}\r\n\r\n").into_bytes()
}

/// `POST /<name>` with `fields`, the case's id, then `body` as it is.
fn post(name: &str, fields: &str, body: &str) -> Vec<u8> {
    format!("POST /{name} HTTP/1.1\r\n{fields}X-Request-Id: {name}\r\n\r\n{body}").into_bytes()
}

/// What the proxy appends after the client's own fields, for a client at
/// 127.0.0.1 (an untrusted peer) whose request names `host`.
fn appended(host: &str, name: &str) -> String {
    format!(
        "x-forwarded-for: 127.0.0.1\r\n\
         x-real-ip: 127.0.0.1\r\n\
         x-forwarded-proto: http\r\n\
         x-forwarded-host: {host}\r\n\
         x-request-id: {name}\r\n"
    )
}

/// The head the backend must get: `line`, the client's surviving `fields`
/// (lowercase names, each ending in CRLF), the appended forwarding fields,
/// the blank line; then `body` as framed for the backend.
fn forwarded(line: &str, fields: &str, host: &str, name: &str, body: &str) -> Received {
    Exact(format!("{line}\r\n{fields}{}\r\n{body}", appended(host, name)).into_bytes())
}

/// A `POST /<name>` whose body `hello` was chunked, forwarded chunked.
fn rechunked(name: &str) -> Received {
    Exact(
        format!(
            "POST /{name} HTTP/1.1\r\nhost: h.example\r\n{}\
             transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            appended("h.example", name)
        )
        .into_bytes(),
    )
}

/// A plain `GET /<name>` from `Host: h.example`, forwarded with `fields`.
fn forwarded_get(name: &str, fields: &str) -> Received {
    forwarded(
        &format!("GET /{name} HTTP/1.1"),
        &format!("host: h.example\r\n{fields}"),
        "h.example",
        name,
        "",
    )
}

const HOST: &str = "Host: h.example\r\n";
const H2C_UPGRADE: &str =
    "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n";
const WS_UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
/// The client's own fields of a WebSocket handshake that reach the backend
/// where the client put them; `Upgrade` is hop-by-hop: the proxy writes it
/// again, with `Connection: upgrade`, after its own fields.
const WS_FORWARDED: &str =
    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n";

/// The table. Requests smuggle, lie about their length, break the field
/// syntax, name impossible hosts, ask for upgrades, or meet a backend
/// that answers with broken framing.
fn cases() -> Vec<Case> {
    let big = "a".repeat(70 * 1024);
    let under = "a".repeat(60 * 1024);
    let long_target = format!("/target-too-long/{}", "a".repeat(65_000));
    let longer_target = format!("/target-over-64k/{}", "a".repeat(70 * 1024));
    // 100 fields: Host, 98 more, X-Request-Id
    let many: String = (0..98).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let many_lower: String = (0..98).map(|i| format!("x-f{i}: {i}\r\n")).collect();
    let too_many: String = (0..99).map(|i| format!("X-F{i}: {i}\r\n")).collect();
    let ext_8k = "x".repeat(8 * 1024);

    vec![
        // ---- what a plain request looks like on the backend's side ----
        case(
            "plain-get",
            get("plain-get", &format!("{HOST}Accept: */*\r\nUser-Agent: t/1\r\n")),
            Status(200),
            forwarded_get("plain-get", "accept: */*\r\nuser-agent: t/1\r\n"),
        ),
        case(
            "post-content-length",
            post("post-content-length", &format!("{HOST}Content-Length: 5\r\n"), "hello"),
            Status(200),
            forwarded(
                "POST /post-content-length HTTP/1.1",
                "host: h.example\r\ncontent-length: 5\r\n",
                "h.example",
                "post-content-length",
                "hello",
            ),
        ),
        case(
            "post-chunked",
            post(
                "post-chunked",
                &format!("{HOST}Transfer-Encoding: chunked\r\n"),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(200),
            rechunked("post-chunked"),
        ),
        case(
            "expect-continue",
            post(
                "expect-continue",
                &format!("{HOST}Expect: 100-continue\r\nContent-Length: 5\r\n"),
                "hello",
            ),
            Status(200),
            forwarded(
                "POST /expect-continue HTTP/1.1",
                "host: h.example\r\ncontent-length: 5\r\n",
                "h.example",
                "expect-continue",
                "hello",
            ),
        ),
        case(
            "hop-by-hop",
            get(
                "hop-by-hop",
                &format!(
                    "{HOST}Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
                     X-Hop: secret\r\nTE: trailers\r\nTrailer: X-T\r\n\
                     Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic dTpw\r\n\
                     Proxy-Authenticate: Basic\r\nX-End: yes\r\n"
                ),
            ),
            Status(200),
            forwarded_get("hop-by-hop", "x-end: yes\r\n"),
        ),
        case(
            "http2-settings-alone",
            get(
                "http2-settings-alone",
                &format!("{HOST}HTTP2-Settings: AAMAAABkAAQAAP__\r\nX-End: yes\r\n"),
            ),
            Status(200),
            forwarded_get("http2-settings-alone", "x-end: yes\r\n"),
        ),
        case(
            "forwarded-for-chain",
            get(
                "forwarded-for-chain",
                &format!(
                    "{HOST}X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\
                     X-Forwarded-Host: evil.example\r\nX-Forwarded-For: 198.51.100.1, 192.0.2.1\r\n"
                ),
            ),
            Status(200),
            Exact(
                b"GET /forwarded-for-chain HTTP/1.1\r\nhost: h.example\r\n\
                  x-forwarded-for: 203.0.113.7, 198.51.100.1, 192.0.2.1, 127.0.0.1\r\n\
                  x-real-ip: 127.0.0.1\r\nx-forwarded-proto: http\r\n\
                  x-forwarded-host: h.example\r\nx-request-id: forwarded-for-chain\r\n\r\n"
                    .to_vec(),
            ),
        ),
        case(
            "untrusted-forwarding",
            get(
                "untrusted-forwarding",
                &format!(
                    "{HOST}Forwarded: for=1.2.3.4;proto=https\r\nX-Real-IP: 1.2.3.4\r\n\
                     X-Forwarded-Port: 1\r\nX-Forwarded-Prefix: /evil\r\nX-Keep: 1\r\n"
                ),
            ),
            Status(200),
            forwarded_get("untrusted-forwarding", "x-keep: 1\r\n"),
        ),
        // ---- request smuggling: refused, nothing reaches the backend ----
        // Content-Length beside Transfer-Encoding: the coding wins, the
        // length is dropped and the body goes re-framed, and the client's
        // connection is closed after the answer (RFC 9112 §6.3), so that
        // nothing it sends next can be read with the other framing
        case(
            "cl-then-te",
            post(
                "cl-then-te",
                &format!("{HOST}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(200),
            rechunked("cl-then-te"),
        )
        .after(&get("cl-then-te", HOST)),
        case(
            "te-then-cl",
            post(
                "te-then-cl",
                &format!("{HOST}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n"),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(200),
            rechunked("te-then-cl"),
        )
        .after(&get("te-then-cl", HOST)),
        // equal lengths are one length (RFC 9110 §8.6); one is forwarded
        case(
            "cl-twice-equal",
            post(
                "cl-twice-equal",
                &format!("{HOST}Content-Length: 5\r\nContent-Length: 5\r\n"),
                "hello",
            ),
            Status(200),
            forwarded(
                "POST /cl-twice-equal HTTP/1.1",
                "host: h.example\r\ncontent-length: 5\r\n",
                "h.example",
                "cl-twice-equal",
                "hello",
            ),
        ),
        case(
            "cl-twice-different",
            post(
                "cl-twice-different",
                &format!("{HOST}Content-Length: 5\r\nContent-Length: 6\r\n"),
                "hello!",
            ),
            Status(400),
            Nothing,
        ),
        case(
            "cl-list",
            post("cl-list", &format!("{HOST}Content-Length: 5, 5\r\n"), "hello"),
            Status(400),
            Nothing,
        ),
        // hyper refuses a request whose last coding is not chunked before
        // the proxy sees it: 400, not 501
        case(
            "te-chunked-identity",
            post(
                "te-chunked-identity",
                &format!("{HOST}Transfer-Encoding: chunked, identity\r\n"),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(400),
            Nothing,
        ),
        case(
            "te-xchunked",
            post(
                "te-xchunked",
                &format!("{HOST}Transfer-Encoding: xchunked\r\n"),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(400),
            Nothing,
        ),
        case(
            "te-gzip",
            post(
                "te-gzip",
                &format!("{HOST}Transfer-Encoding: gzip\r\n"),
                "hello",
            ),
            Status(400),
            Nothing,
        ),
        // ...but `gzip, chunked` ends in chunked: the proxy decides, 501
        case(
            "te-gzip-chunked",
            post(
                "te-gzip-chunked",
                &format!("{HOST}Transfer-Encoding: gzip, chunked\r\n"),
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Status(501),
            Nothing,
        ),
        case(
            "http10-te",
            b"POST /http10-te HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\
              X-Request-Id: http10-te\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            Status(400),
            Nothing,
        ),
        // ---- field syntax ----
        case(
            "space-before-colon",
            get("space-before-colon", &format!("{HOST}X-A : 1\r\n")),
            Status(400),
            Nothing,
        ),
        case(
            "obs-fold",
            get("obs-fold", &format!("{HOST}X-A: 1\r\n  folded\r\n")),
            Status(400),
            Nothing,
        ),
        case(
            "bare-cr",
            get("bare-cr", &format!("{HOST}X-A: 1\rX-B: 2\r\n")),
            Status(400),
            Nothing,
        ),
        case(
            "nul-in-value",
            get("nul-in-value", &format!("{HOST}X-A: a\0b\r\n")),
            Status(400),
            Nothing,
        ),
        case(
            "bad-name",
            get("bad-name", &format!("{HOST}X-A\x01(b): 1\r\n")),
            Status(400),
            Nothing,
        ),
        case(
            "garbage-tls",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec(),
            Status(400),
            Nothing,
        ),
        case(
            "truncated-head",
            b"GET /truncated-head HTTP/1.1\r\nHost: h.example\r\nX-Request-Id: truncated-head\r\n"
                .to_vec(),
            Closed,
            Nothing,
        )
        .half_close(),
        case(
            "connect",
            b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\nX-Request-Id: connect\r\n\r\n"
                .to_vec(),
            Status(405),
            Nothing,
        ),
        // ---- sizes ----
        case(
            "head-over-64k",
            get("head-over-64k", &format!("{HOST}X-Big: {big}\r\n")),
            Status(431),
            Nothing,
        ),
        case(
            "head-60k",
            get("head-60k", &format!("{HOST}X-Big: {under}\r\n")),
            Status(200),
            forwarded_get("head-60k", &format!("x-big: {under}\r\n")),
        ),
        case(
            "fields-100",
            get("fields-100", &format!("{HOST}{many}")),
            Status(200),
            forwarded_get("fields-100", &many_lower),
        ),
        case(
            "fields-101",
            get("fields-101", &format!("{HOST}{too_many}")),
            Status(431),
            Nothing,
        ),
        // a target that fits in the 64 KiB head but is far too long: the
        // proxy's own 414 (hyper's limit, 65,534, is out of reach)
        case(
            "target-too-long",
            format!("GET {long_target} HTTP/1.1\r\n{HOST}X-Request-Id: target-too-long\r\n\r\n"),
            Status(414),
            Nothing,
        ),
        // longer than the whole head may be: hyper's 431 comes first
        case(
            "target-over-64k",
            format!(
                "GET {longer_target} HTTP/1.1\r\n{HOST}X-Request-Id: target-over-64k\r\n\r\n"
            ),
            Status(431),
            Nothing,
        ),
        // ---- Host (RFC 9112 §3.2) ----
        case(
            "host-twice",
            get("host-twice", "Host: a.example\r\nHost: b.example\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "host-space",
            get("host-space", "Host: a b\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "host-slash",
            get("host-slash", "Host: a/b\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "host-userinfo",
            get("host-userinfo", "Host: a@b\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "host-open-bracket",
            get("host-open-bracket", "Host: [::1\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "host-port-not-digits",
            get("host-port-not-digits", "Host: x:y\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "host-port-too-big",
            get("host-port-too-big", "Host: x:99999\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "http11-no-host",
            get("http11-no-host", "Accept: */*\r\n"),
            Status(400),
            Nothing,
        ),
        case(
            "host-with-port",
            get("host-with-port", "Host: h.example:8080\r\n"),
            Status(200),
            forwarded(
                "GET /host-with-port HTTP/1.1",
                "host: h.example:8080\r\n",
                "h.example:8080",
                "host-with-port",
                "",
            ),
        ),
        case(
            "host-ipv6",
            get("host-ipv6", "Host: [::1]:8080\r\n"),
            Status(200),
            forwarded(
                "GET /host-ipv6 HTTP/1.1",
                "host: [::1]:8080\r\n",
                "[::1]:8080",
                "host-ipv6",
                "",
            ),
        ),
        // HTTP/1.0 may leave Host out: the backend gets one (its own
        // address) and HTTP/1.1; no X-Forwarded-Host, as the client named
        // no host
        case(
            "http10-no-host",
            b"GET /http10-no-host HTTP/1.0\r\nAccept: */*\r\nX-Request-Id: http10-no-host\r\n\r\n"
                .to_vec(),
            Status(200),
            Exact(
                b"GET /http10-no-host HTTP/1.1\r\naccept: */*\r\nhost: {backend}\r\n\
                  x-forwarded-for: 127.0.0.1\r\nx-real-ip: 127.0.0.1\r\n\
                  x-forwarded-proto: http\r\nx-request-id: http10-no-host\r\n\r\n"
                    .to_vec(),
            ),
        ),
        // the target's authority wins over Host (RFC 9112 §3.2.2)
        case(
            "absolute-form",
            b"GET http://other.example/absolute-form?q=1 HTTP/1.1\r\nHost: x\r\n\
              X-Request-Id: absolute-form\r\n\r\n"
                .to_vec(),
            Status(200),
            forwarded(
                "GET /absolute-form?q=1 HTTP/1.1",
                "host: other.example\r\n",
                "other.example",
                "absolute-form",
                "",
            ),
        ),
        // an absolute-form target with a query and no path: the path is /
        case(
            "absolute-form-query-only",
            b"GET http://other.example?absolute-form-query-only HTTP/1.1\r\nHost: x\r\n\
              X-Request-Id: absolute-form-query-only\r\n\r\n"
                .to_vec(),
            Status(200),
            forwarded(
                "GET /?absolute-form-query-only HTTP/1.1",
                "host: other.example\r\n",
                "other.example",
                "absolute-form-query-only",
                "",
            ),
        ),
        // ---- upgrades ----
        case(
            "upgrade-h2c",
            get("upgrade-h2c", &format!("{HOST}{H2C_UPGRADE}")),
            Status(200),
            forwarded_get("upgrade-h2c", ""),
        ),
        // a backend that switches to h2c anyway: 502, and nothing the
        // client sends next reaches it
        case(
            "upgrade-h2c-answered-101",
            get("upgrade-h2c-answered-101", &format!("{HOST}{H2C_UPGRADE}")),
            Status(502),
            forwarded_get("upgrade-h2c-answered-101", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        ))
        .after(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nnever-forwarded"),
        case(
            "upgrade-foo",
            get(
                "upgrade-foo",
                &format!("{HOST}Upgrade: foo\r\nConnection: Upgrade\r\n"),
            ),
            Status(200),
            forwarded_get("upgrade-foo", ""),
        ),
        case(
            "upgrade-websocket",
            get("upgrade-websocket", &format!("{HOST}{WS_UPGRADE}")),
            Status(101),
            Exact(
                format!(
                    "GET /upgrade-websocket HTTP/1.1\r\nhost: h.example\r\n{WS_FORWARDED}{}\
                     upgrade: websocket\r\nconnection: upgrade\r\n\r\ntunnelled",
                    appended("h.example", "upgrade-websocket")
                )
                .into_bytes(),
            ),
        )
        .reply(Reply::raw(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        ))
        .after(b"tunnelled"),
        case(
            "upgrade-websocket-answered-h2c",
            get("upgrade-websocket-answered-h2c", &format!("{HOST}{WS_UPGRADE}")),
            Status(502),
            Exact(
                format!(
                    "GET /upgrade-websocket-answered-h2c HTTP/1.1\r\nhost: h.example\r\n\
                     {WS_FORWARDED}{}upgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                    appended("h.example", "upgrade-websocket-answered-h2c")
                )
                .into_bytes(),
            ),
        )
        .reply(Reply::raw(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        ))
        .after(b"\x81\x05never"),
        // ---- broken backends: found before the response head goes out ----
        case(
            "resp-chunked-extension",
            get("resp-chunked-extension", HOST),
            Status(200),
            forwarded_get("resp-chunked-extension", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
        )),
        case(
            "resp-chunk-size-no-digit",
            get("resp-chunk-size-no-digit", HOST),
            Status(502),
            forwarded_get("resp-chunk-size-no-digit", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\nhello\r\n0\r\n\r\n",
        )),
        case(
            "resp-chunk-size-empty",
            get("resp-chunk-size-empty", HOST),
            Status(502),
            forwarded_get("resp-chunk-size-empty", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
        )),
        case(
            "resp-chunk-extension-8k",
            get("resp-chunk-extension-8k", HOST),
            Status(502),
            forwarded_get("resp-chunk-extension-8k", ""),
        )
        .reply(Reply::raw(format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x={ext_8k}\r\nhello\r\n0\r\n\r\n"
        ))),
        case(
            "resp-te-gzip",
            get("resp-te-gzip", HOST),
            Status(502),
            forwarded_get("resp-te-gzip", ""),
        )
        .reply(Reply::then_close(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nnot-really-gzip",
        )),
        case(
            "resp-te-gzip-chunked",
            get("resp-te-gzip-chunked", HOST),
            Status(502),
            forwarded_get("resp-te-gzip-chunked", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )),
        case(
            "resp-obs-fold",
            get("resp-obs-fold", HOST),
            Status(502),
            forwarded_get("resp-obs-fold", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        )),
        case(
            "resp-space-before-colon",
            get("resp-space-before-colon", HOST),
            Status(502),
            forwarded_get("resp-space-before-colon", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nok",
        )),
        case(
            "resp-cl-conflict",
            get("resp-cl-conflict", HOST),
            Status(502),
            forwarded_get("resp-cl-conflict", ""),
        )
        .reply(Reply::raw(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        )),
    ]
}

/// How long a client waits for its first response.
const CASE_TIMEOUT: Duration = DEADLINE;

/// A config whose one pool never takes its backend out: broken answers
/// are the point here, not a reason to stop forwarding.
fn proxy_for(backend: &RawBackend, extra: &str) -> Proxy {
    Proxy::start(&config(
        "round_robin",
        &[backend.entry()],
        &format!("[pools.web.health]\nmax_fails = 0\n\n{extra}"),
    ))
}

#[test]
fn hostile_requests_table() {
    let cases = cases();
    let mut names = HashSet::new();
    for c in &cases {
        assert!(
            names.insert(c.name),
            "case {} is in the table twice",
            c.name
        );
    }
    let replies: HashMap<String, Reply> = cases
        .iter()
        .filter_map(|c| c.reply.clone().map(|r| (c.name.to_string(), r)))
        .collect();
    let backend = RawBackend::with(move |req| {
        req.request_id()
            .and_then(|id| replies.get(&id).cloned())
            .unwrap_or_else(Reply::ok)
    });
    let proxy = proxy_for(&backend, "");
    let addr = proxy.addr();

    // every case at once, each on its own connection
    let seen: Vec<raw::Exchanged> = std::thread::scope(|s| {
        let running: Vec<_> = cases
            .iter()
            .map(|c| {
                s.spawn(move || {
                    raw::exchange(
                        addr,
                        &c.send,
                        c.half_close,
                        &c.after,
                        CASE_TIMEOUT,
                        Duration::from_secs(2),
                    )
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });

    let expected_bytes = |c: &Case| match &c.backend {
        Nothing => Vec::new(),
        Exact(bytes) => {
            let at = raw::find(bytes, b"{backend}");
            at.map_or(bytes.clone(), |at| {
                let addr = backend.addr.to_string();
                [&bytes[..at], addr.as_bytes(), &bytes[at + 9..]].concat()
            })
        }
    };
    let got_bytes = |c: &Case| -> Vec<u8> {
        backend
            .requests_with_id(c.name)
            .into_iter()
            .flat_map(|r| r.bytes)
            .collect()
    };
    // what reaches the backend may trail the client's answer (bytes sent
    // after a 101): wait while some case has only part of what it expects
    support::eventually(DEADLINE, || {
        cases.iter().all(|c| {
            let (expected, got) = (expected_bytes(c), got_bytes(c));
            got.is_empty() || got.len() >= expected.len() || !expected.starts_with(&got)
        })
    });

    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for (c, ex) in cases.iter().zip(&seen) {
        let mut wrong = Vec::new();
        let got = match &ex.seen {
            Seen::Status(s) => Some(Status(*s)),
            Seen::Closed => Some(Closed),
            _ => None,
        };
        if got.as_ref() != Some(&c.expect) {
            let got = match &ex.seen {
                Seen::Status(s) => format!("status {s}"),
                Seen::Closed => "closed without a response".into(),
                Seen::Garbage(b) => format!("closed after non-response bytes \"{}\"", show(b)),
                Seen::Timeout(b) => {
                    format!("no answer within {CASE_TIMEOUT:?} (got \"{}\")", show(b))
                }
            };
            wrong.push(format!("client: expected {:?}, got {got}", c.expect));
        }
        let (expected, got) = (expected_bytes(c), got_bytes(c));
        if expected != got {
            wrong.push(match (&c.backend, got.is_empty()) {
                (Nothing, _) => format!("backend: expected nothing, got \"{}\"", show(&got)),
                (Exact(_), true) => {
                    format!("backend: expected \"{}\", got nothing", show(&expected))
                }
                (Exact(_), false) => format!("backend: {}", difference(&expected, &got)),
            });
        }
        if wrong.is_empty() {
            passed.push(c.name);
        } else {
            failures.push(format!("{}:\n    {}", c.name, wrong.join("\n    ")));
        }
    }
    // nothing may reach the backend that no case accounts for
    let requests = backend.requests();
    for r in &requests {
        if !r.request_id().is_some_and(|id| names.contains(id.as_str())) {
            failures.push(format!(
                "(no case): the backend received \"{}\"",
                show(&r.bytes)
            ));
        }
    }
    for (i, conn) in backend.conns().iter().enumerate() {
        let claimed: usize = requests
            .iter()
            .filter(|r| r.conn == i)
            .map(|r| r.bytes.len())
            .sum();
        if conn.bytes.len() > claimed {
            failures.push(format!(
                "(no case): backend connection {i} received an incomplete request \"{}\"",
                show(&conn.bytes[claimed..])
            ));
        }
    }
    eprintln!(
        "{} of {} cases pass: {}",
        passed.len(),
        cases.len(),
        passed.join(" ")
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}\n",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// How forwarded bytes differ from the expected ones, field by field:
/// the fields missing and the ones that should not be there, or the
/// order, the request line, the body.
fn difference(expected: &[u8], got: &[u8]) -> String {
    fn split(b: &[u8]) -> (Vec<&[u8]>, &[u8]) {
        let end = raw::find(b, b"\r\n\r\n").map_or(b.len(), |e| e + 4);
        let head = b[..end].split(|&c| c == b'\n').map(|l| l.trim_ascii_end());
        (head.filter(|l| !l.is_empty()).collect(), &b[end..])
    }
    let short = |l: &[u8]| {
        let s = show(l);
        match s.len() > 100 {
            true => format!("{}...({} bytes)", &s[..80], l.len()),
            false => s,
        }
    };
    let (want, want_body) = split(expected);
    let (have, have_body) = split(got);
    let mut parts = Vec::new();
    if want.first() != have.first() {
        let line = |h: &[&[u8]]| h.first().map_or(String::new(), |l| short(l));
        parts.push(format!(
            "request line \"{}\" instead of \"{}\"",
            line(&have),
            line(&want)
        ));
    }
    let (want, have) = (&want[1.min(want.len())..], &have[1.min(have.len())..]);
    let mut missing: Vec<&[u8]> = want.to_vec();
    let mut extra = Vec::new();
    for l in have {
        match missing.iter().position(|m| m == l) {
            Some(i) => {
                missing.remove(i);
            }
            None => extra.push(*l),
        }
    }
    let list = |ls: &[&[u8]]| {
        ls.iter()
            .map(|l| format!("\"{}\"", short(l)))
            .collect::<Vec<_>>()
    };
    if !missing.is_empty() {
        parts.push(format!("missing {}", list(&missing).join(", ")));
    }
    if !extra.is_empty() {
        parts.push(format!("unexpected {}", list(&extra).join(", ")));
    }
    if missing.is_empty() && extra.is_empty() && want != have {
        parts.push(format!(
            "fields in the order {} instead of {}",
            list(have).join(" "),
            list(want).join(" ")
        ));
    }
    if want_body != have_body {
        parts.push(format!(
            "body \"{}\" instead of \"{}\"",
            show(have_body),
            show(want_body)
        ));
    }
    parts.join("; ")
}

/// A response that is HTTP/1.0 yet chunked is passed on, but its framing
/// is not trusted to leave the connection clean: the next request goes
/// on a new backend connection.
#[tokio::test]
async fn http10_chunked_response_is_delivered_and_its_connection_not_reused() {
    let backend = RawBackend::with(|req| match req.request_id().as_deref() {
        Some("http10-chunked-1") => Reply::raw(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n",
        ),
        _ => Reply::ok(),
    });
    let proxy = proxy_for(&backend, "");
    let c = support::client::h1();
    let r = support::client::get_with(
        &c,
        &proxy.url("/first"),
        &[("x-request-id", "http10-chunked-1")],
    )
    .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "hello"));
    let r = support::client::get_with(
        &c,
        &proxy.url("/second"),
        &[("x-request-id", "http10-chunked-2")],
    )
    .await;
    assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "ok"));
    let first = backend.requests_with_id("http10-chunked-1");
    let second = backend.requests_with_id("http10-chunked-2");
    assert_eq!((first.len(), second.len()), (1, 1));
    assert_ne!(
        first[0].conn, second[0].conn,
        "the connection of an HTTP/1.0 chunked response was reused"
    );
}

// ---- HTTP/2 (h2c, prior knowledge) ----

/// An h2c connection from the `h2` crate's client, driven by a task.
async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends a bodiless request; its status, or the stream's error.
async fn h2_send(
    send: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
) -> Result<u16, String> {
    let ready = tokio::time::timeout(DEADLINE, send.clone().ready())
        .await
        .map_err(|_| "not ready in time".to_string())?
        .map_err(|e| e.to_string())?;
    *send = ready;
    let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .map_err(|_| "no response in time".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 backend
/// must get one (RFC 9113 §8.2.3).
#[tokio::test]
async fn h2_cookie_fields_reach_the_backend_as_one() {
    let backend = RawBackend::start();
    let proxy = proxy_for(&backend, "");
    let mut send = h2_client(proxy.addr()).await;
    let req = http::Request::get("http://a.example/h2-cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-request-id", "h2-cookies")
        .body(())
        .unwrap();
    assert_eq!(h2_send(&mut send, req).await, Ok(200));
    let got: Vec<u8> = backend
        .requests_with_id("h2-cookies")
        .into_iter()
        .flat_map(|r| r.bytes)
        .collect();
    let expected = format!(
        "GET /h2-cookies HTTP/1.1\r\ncookie: a=1; b=2\r\nhost: a.example\r\n{}\r\n",
        appended("a.example", "h2-cookies")
    );
    assert_eq!(show(&got), show(expected.as_bytes()));
}

/// `:authority` and a `host` field that disagree: which one is the
/// request for? Refused, and nothing is forwarded.
#[tokio::test]
async fn h2_authority_and_host_that_disagree_are_refused() {
    let backend = RawBackend::start();
    let proxy = proxy_for(&backend, "");
    let mut send = h2_client(proxy.addr()).await;
    let req = http::Request::get("http://a.example/h2-mismatch")
        .header("host", "b.example")
        .header("x-request-id", "h2-mismatch")
        .body(())
        .unwrap();
    let status = h2_send(&mut send, req).await;
    // a well-formed request on the same connection is still served
    let req = http::Request::get("http://a.example/h2-after")
        .header("x-request-id", "h2-after")
        .body(())
        .unwrap();
    let after = h2_send(&mut send, req).await;
    let mismatch = backend.requests_with_id("h2-mismatch");
    assert_eq!(
        (status, after, mismatch.len()),
        (Ok(400), Ok(200), 0),
        "forwarded: {:?}",
        mismatch.iter().map(|r| show(&r.bytes)).collect::<Vec<_>>()
    );
}

/// What an abusive raw HTTP/2 connection met.
#[derive(Debug)]
struct Abuse {
    /// The probe on stream 1 was answered: the frames are well formed, and
    /// what stops the abuse is not a mistake of the test's.
    probe_answered: bool,
    /// Units (streams, frames) written before the proxy stopped it, if it did.
    cut_after: Option<usize>,
    /// The GOAWAY error code the proxy sent, if any.
    goaway: Option<u32>,
    /// Units written in all.
    sent: usize,
}

/// Opens a raw h2c connection; writes `probe` (a request on stream 1) and
/// waits for its response; then writes `batch(i)` for i = 0, 1, ... up to
/// `max` batches of `per_batch` units, until the proxy sends GOAWAY or
/// closes the connection (or stops reading for `DEADLINE`).
fn abuse(
    addr: SocketAddr,
    probe: &[u8],
    max: usize,
    per_batch: usize,
    batch: impl Fn(usize) -> Vec<u8>,
) -> Abuse {
    let mut s = TcpStream::connect(addr).unwrap();
    let _ = s.set_nodelay(true);
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut reader = s.try_clone().unwrap();
    let stopped = Arc::new(AtomicBool::new(false));
    let need_ack = Arc::new(AtomicBool::new(false));
    let (answered, probe_answer) = std::sync::mpsc::channel();
    let watcher = {
        let (stopped, need_ack) = (stopped.clone(), need_ack.clone());
        std::thread::spawn(move || {
            let mut goaway = None;
            loop {
                match raw::read_frame(&mut reader) {
                    Ok(f) if f.kind == raw::H2_GOAWAY => {
                        goaway = f
                            .payload
                            .get(4..8)
                            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                        stopped.store(true, Ordering::SeqCst);
                    }
                    Ok(f) if f.kind == raw::H2_SETTINGS && f.flags & raw::H2_ACK == 0 => {
                        need_ack.store(true, Ordering::SeqCst);
                    }
                    Ok(f) if f.kind == raw::H2_HEADERS && f.stream == 1 => {
                        let _ = answered.send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            stopped.store(true, Ordering::SeqCst);
            goaway
        })
    };
    let mut out = raw::H2_PREFACE.to_vec();
    out.extend(raw::h2_frame(raw::H2_SETTINGS, 0, 0, &[]));
    out.extend_from_slice(probe);
    let probe_answered = s.write_all(&out).is_ok() && probe_answer.recv_timeout(DEADLINE).is_ok();
    let mut cut_after = None;
    let mut sent = 0;
    if probe_answered {
        for i in 0..max {
            if stopped.load(Ordering::SeqCst) {
                cut_after = Some(sent);
                break;
            }
            let mut out = Vec::new();
            if need_ack.swap(false, Ordering::SeqCst) {
                out.extend(raw::h2_frame(raw::H2_SETTINGS, raw::H2_ACK, 0, &[]));
            }
            out.extend(batch(i));
            if let Err(e) = s.write_all(&out) {
                // closed or reset: cut off; no longer read at all: not
                let stalled = matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
                cut_after = (!stalled).then_some(sent);
                break;
            }
            sent += per_batch;
        }
    }
    // the proxy has had its say: the connection is ours to close
    let _ = s.shutdown(Shutdown::Both);
    let goaway = watcher.join().unwrap();
    Abuse {
        probe_answered,
        cut_after,
        goaway,
        sent,
    }
}

/// A well-behaved HTTP/2 client's requests while `busy` holds, then once
/// more: every status that was not 200, and how many were.
async fn well_behaved(addr: SocketAddr, busy: &AtomicBool) -> (Vec<String>, usize) {
    let mut send = h2_client(addr).await;
    let mut wrong = Vec::new();
    let mut served = 0;
    let mut last = false;
    while !last {
        last = !busy.load(Ordering::SeqCst);
        let req = http::Request::get("http://good.example/good")
            .header("x-request-id", "good")
            .body(())
            .unwrap();
        match h2_send(&mut send, req).await {
            Ok(200) => served += 1,
            other => wrong.push(format!("{other:?}")),
        }
    }
    (wrong, served)
}

/// CVE-2023-44487: streams opened and reset at once, by the thousand.
/// The proxy cuts that connection off (GOAWAY or close), and serves
/// another client meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_is_cut_off_and_others_are_served() {
    const STREAMS: usize = 20_000;
    const PER_BATCH: usize = 100;
    let backend = RawBackend::start();
    let proxy = proxy_for(&backend, "[log]\naccess_log = false\n");
    let addr = proxy.addr();
    let busy = Arc::new(AtomicBool::new(true));
    let attacker = {
        let busy = busy.clone();
        tokio::task::spawn_blocking(move || {
            let block = raw::hpack_get("a.example", "/reset");
            let probe = raw::h2_frame(
                raw::H2_HEADERS,
                raw::H2_END_STREAM | raw::H2_END_HEADERS,
                1,
                &raw::hpack_get("a.example", "/probe"),
            );
            let abuse = abuse(addr, &probe, STREAMS / PER_BATCH, PER_BATCH, |i| {
                let mut out = Vec::new();
                for k in 0..PER_BATCH {
                    // stream 1 was the probe
                    let id = 3 + 2 * (i * PER_BATCH + k) as u32;
                    out.extend(raw::h2_frame(
                        raw::H2_HEADERS,
                        raw::H2_END_STREAM | raw::H2_END_HEADERS,
                        id,
                        &block,
                    ));
                    // CANCEL
                    out.extend(raw::h2_frame(
                        raw::H2_RST_STREAM,
                        0,
                        id,
                        &8u32.to_be_bytes(),
                    ));
                }
                out
            });
            busy.store(false, Ordering::SeqCst);
            abuse
        })
    };
    let (wrong, served) = well_behaved(addr, &busy).await;
    let abuse = attacker.await.unwrap();
    eprintln!(
        "rapid reset: {} streams sent, cut off after {:?}, GOAWAY code {:?}",
        abuse.sent, abuse.cut_after, abuse.goaway
    );
    assert!(
        abuse.probe_answered,
        "the probe request was not answered: {abuse:?}"
    );
    assert!(
        abuse.cut_after.is_some(),
        "the proxy let {} streams be opened and reset: {abuse:?}",
        abuse.sent
    );
    assert!(
        wrong.is_empty() && served > 0,
        "a well-behaved client during and after the flood: {served} served, failed: {wrong:?}"
    );
}

/// HEADERS without END_HEADERS, then CONTINUATION frames without end: the
/// proxy must cut the connection off without holding what it was sent,
/// and go on serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_continuation_flood_is_cut_off_in_bounded_memory() {
    const FRAME: usize = 16 * 1024;
    const TOTAL: usize = 64 * 1024 * 1024;
    const PER_BATCH: usize = 16;
    let backend = RawBackend::start();
    let proxy = proxy_for(&backend, "[log]\naccess_log = false\n");
    let addr = proxy.addr();
    let before = proxy.rss_kib();
    let busy = Arc::new(AtomicBool::new(true));
    let attacker = {
        let busy = busy.clone();
        tokio::task::spawn_blocking(move || {
            // the probe: a header block that ends in its first CONTINUATION
            let mut probe = raw::h2_frame(
                raw::H2_HEADERS,
                raw::H2_END_STREAM,
                1,
                &raw::hpack_get("a.example", "/probe"),
            );
            let mut few = Vec::new();
            for _ in 0..3 {
                raw::hpack_literal(&mut few, b"x-flood", &[b'a'; 100]);
            }
            probe.extend(raw::h2_frame(
                raw::H2_CONTINUATION,
                raw::H2_END_HEADERS,
                1,
                &few,
            ));
            // the flood: HEADERS opens stream 3 and its header block never
            // ends; each CONTINUATION holds whole, valid literal fields
            let headers = raw::h2_frame(
                raw::H2_HEADERS,
                raw::H2_END_STREAM,
                3,
                &raw::hpack_get("a.example", "/flood"),
            );
            let mut fields = Vec::new();
            while fields.len() + 110 <= FRAME {
                raw::hpack_literal(&mut fields, b"x-flood", &[b'a'; 100]);
            }
            let frame = raw::h2_frame(raw::H2_CONTINUATION, 0, 3, &fields);
            let batch = frame.repeat(PER_BATCH);
            let abuse = abuse(
                addr,
                &probe,
                TOTAL / FRAME / PER_BATCH,
                PER_BATCH,
                |i| match i {
                    0 => [headers.clone(), batch.clone()].concat(),
                    _ => batch.clone(),
                },
            );
            busy.store(false, Ordering::SeqCst);
            abuse
        })
    };
    let started = Instant::now();
    let (wrong, served) = well_behaved(addr, &busy).await;
    let abuse = attacker.await.unwrap();
    let grew_kib = proxy.peak_rss_kib().saturating_sub(before);
    eprintln!(
        "CONTINUATION flood: {} frames sent, cut off after {:?}, GOAWAY code {:?}, peak memory +{grew_kib} KiB",
        abuse.sent, abuse.cut_after, abuse.goaway
    );
    assert!(
        abuse.probe_answered,
        "the probe request was not answered: {abuse:?}"
    );
    assert!(
        abuse.cut_after.is_some(),
        "the proxy took {} CONTINUATION frames ({} MiB) in {:?}: {abuse:?}",
        abuse.sent,
        (abuse.sent * FRAME) >> 20,
        started.elapsed()
    );
    assert!(
        grew_kib < 64 * 1024,
        "the proxy's peak memory grew by {grew_kib} KiB during the flood"
    );
    assert!(
        wrong.is_empty() && served > 0,
        "a well-behaved client during and after the flood: {served} served, failed: {wrong:?}"
    );
}
