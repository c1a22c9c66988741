//! Header rules between client and backend: hop-by-hop headers stay on
//! their hop, and the backend learns who the client is.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::upstream::RequestHead;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

const CONNECTION_BIT: u16 = 1 << 0;
const UPGRADE_BIT: u16 = 1 << 4;

/// The hop-by-hop headers of a message, as one pass over its names finds
/// them (both directions use it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Hop {
    /// Bit `i`: the field [`hop_bit`] numbers `i` is present.
    found: u16,
    /// A `Connection` header says more than `keep-alive` or `close`.
    pub names_others: bool,
    /// `Transfer-Encoding` fields seen.
    codings: u8,
}

impl Hop {
    /// Notes `name` if it is hop-by-hop; false when it is not.
    pub fn note(&mut self, name: &str, value: &[u8]) -> bool {
        let Some(bit) = hop_bit(name) else {
            return false;
        };
        self.found |= 1 << bit;
        self.names_others |= bit == 0 && !is_plain_connection(value);
        self.codings = self.codings.saturating_add(u8::from(bit == 1));
        true
    }
}

/// What one pass over a message's header names found: the request path
/// looks at a dozen names, and one scan costs less than a dozen lookups.
#[derive(Debug, Default)]
pub struct Seen {
    hop: Hop,
    pub expect: bool,
    /// `Content-Length` fields (hyper keeps one for HTTP/1 and drops it
    /// beside chunked; HTTP/2 passes them as sent).
    pub content_lengths: u8,
    /// `Host` fields, and the first one.
    pub hosts: u8,
    pub host: Option<HeaderValue>,
    /// The first `X-Request-Id`.
    request_id: Option<HeaderValue>,
    /// `Cookie` fields: HTTP/2 clients send one per cookie.
    cookies: u8,
    /// `Transfer-Encoding` says more than one `chunked` (hyper decodes
    /// any coding list that ends in chunked, and leaves the rest applied).
    pub unknown_coding: bool,
    /// [`FWD_FOR`] and the other forwarding fields present.
    forwarding: u8,
    /// Bytes the proxy put into the fields (a session's cookies where its
    /// ticket was): room for them in the backend's head, which is then
    /// written without growing.
    pub added: usize,
}

const FWD_FOR: u8 = 1 << 0;
const FWD_PROTO: u8 = 1 << 1;
const FWD_HOST: u8 = 1 << 2;
/// `X-Real-IP`: always the proxy's own.
const FWD_REAL_IP: u8 = 1 << 3;
/// `Forwarded`, `X-Forwarded-Port`, `X-Forwarded-Prefix`: believed only
/// from a trusted proxy.
const FWD_OTHER: u8 = 1 << 4;

impl Seen {
    pub fn scan(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for (name, value) in headers {
            let name = name.as_str();
            if seen.hop.note(name, value.as_bytes()) {
                if name == "transfer-encoding" {
                    seen.unknown_coding |= seen.hop.codings > 1
                        || !value
                            .as_bytes()
                            .trim_ascii()
                            .eq_ignore_ascii_case(b"chunked");
                }
                continue;
            }
            match name {
                "host" => {
                    seen.hosts = seen.hosts.saturating_add(1);
                    if seen.host.is_none() {
                        seen.host = Some(value.clone());
                    }
                }
                "cookie" => seen.cookies = seen.cookies.saturating_add(1),
                "expect" => seen.expect = true,
                "content-length" => seen.content_lengths = seen.content_lengths.saturating_add(1),
                "x-request-id" if seen.request_id.is_none() => {
                    seen.request_id = Some(value.clone());
                }
                "x-forwarded-for" => seen.forwarding |= FWD_FOR,
                "x-forwarded-proto" => seen.forwarding |= FWD_PROTO,
                "x-forwarded-host" => seen.forwarding |= FWD_HOST,
                "x-real-ip" => seen.forwarding |= FWD_REAL_IP,
                "forwarded" | "x-forwarded-port" | "x-forwarded-prefix" => {
                    seen.forwarding |= FWD_OTHER;
                }
                _ => {}
            }
        }
        seen
    }

    /// The session's cookies (`added` bytes) took the ticket's place,
    /// leaving `cookies` fields.
    pub fn session_rewrote(&mut self, cookies: usize, added: usize) {
        self.cookies = u8::try_from(cookies).unwrap_or(u8::MAX);
        self.added = added;
    }

    /// The request has the fields of an upgrade: a cheap first look, the
    /// Whether a request came over HTTPS to the proxy in front, as its
    /// `X-Forwarded-Proto` says, believed only from a trusted `peer`.
    pub fn forwarded_https(&self, headers: &HeaderMap, peer_trusted: bool) -> bool {
        peer_trusted
            && self.forwarding & FWD_PROTO != 0
            && headers
                .get("x-forwarded-proto")
                .is_some_and(|p| p.as_bytes().trim_ascii().eq_ignore_ascii_case(b"https"))
    }

    /// rest is [`Seen::upgrade`]'s.
    #[inline]
    pub fn may_upgrade(&self) -> bool {
        self.hop.found & (UPGRADE_BIT | CONNECTION_BIT) == UPGRADE_BIT | CONNECTION_BIT
    }

    /// The protocols of the request's `Upgrade` (with `Connection:
    /// upgrade`) that may be tunnelled, as the backend gets them; `None`
    /// when there are none and the request is forwarded as a plain one.
    /// `h2c` never is: the proxy speaks it itself, and a backend that
    /// switched to it would read the client's next requests raw, past
    /// routing, forwarding fields, limits and the log.
    pub fn upgrade(&self, headers: &HeaderMap, allowed: &[String]) -> Option<Vec<u8>> {
        if !self.may_upgrade() || !connection_has(headers, "upgrade") {
            return None;
        }
        let mut kept = Vec::new();
        for value in headers.get_all(header::UPGRADE) {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                let name = protocol_name(token);
                if !name.eq_ignore_ascii_case(b"h2c")
                    && allowed
                        .iter()
                        .any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
                {
                    if !kept.is_empty() {
                        kept.extend_from_slice(b", ");
                    }
                    kept.extend_from_slice(token);
                }
            }
        }
        (!kept.is_empty()).then_some(kept)
    }
}

/// `websocket/13` -> `websocket`: protocols compare by name.
fn protocol_name(token: &[u8]) -> &[u8] {
    let end = memchr::memchr(b'/', token).unwrap_or(token.len());
    token[..end].trim_ascii()
}

/// True when a `101 Switching Protocols` switches to protocols the
/// request asked for (`requested`, as forwarded): RFC 9110 §7.8.
pub fn upgrade_answers(requested: &[u8], response: &HeaderMap) -> bool {
    let mut any = false;
    for value in response.get_all(header::UPGRADE) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let name = protocol_name(token.trim_ascii());
            let asked = requested
                .split(|&b| b == b',')
                .any(|r| protocol_name(r.trim_ascii()).eq_ignore_ascii_case(name));
            if name.is_empty() || !asked {
                return false;
            }
            any = true;
        }
    }
    any
}

/// True for a `Host` (or `:authority`) that is a valid `host[:port]`
/// (RFC 9112 §3.2, RFC 3986 §3.2.2): a registered name, an IPv4 address or
/// a bracketed IPv6 address, then a port of up to five digits. No user
/// info, no path, no spaces; empty is refused, as nginx does.
pub fn valid_host(value: &[u8]) -> bool {
    // Clients send the same host again and again: the last one a worker
    // found valid is taken as it is, a compare instead of a walk through
    // its bytes.
    let known = LAST_HOST.with(|last| last.get().as_bytes() == value);
    if known {
        return true;
    }
    let valid = check_host(value);
    if valid && let Some(host) = LastHost::new(value) {
        LAST_HOST.with(|last| last.set(host));
    }
    valid
}

/// A host a worker found valid last, when it is short enough to keep.
#[derive(Clone, Copy)]
struct LastHost {
    bytes: [u8; 64],
    len: u8,
}

impl LastHost {
    fn new(host: &[u8]) -> Option<LastHost> {
        let mut bytes = [0; 64];
        bytes.get_mut(..host.len())?.copy_from_slice(host);
        Some(LastHost {
            bytes,
            len: host.len() as u8,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

thread_local! {
    /// Starts empty, which no valid host is.
    static LAST_HOST: std::cell::Cell<LastHost> = const {
        std::cell::Cell::new(LastHost { bytes: [0; 64], len: 0 })
    };
}

fn check_host(value: &[u8]) -> bool {
    if value.first() == Some(&b'[') {
        let Some(end) = memchr::memchr(b']', value) else {
            return false;
        };
        let literal = std::str::from_utf8(&value[1..end]);
        return literal.is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
            && match &value[end + 1..] {
                [] => true,
                [b':', port @ ..] => valid_port(port),
                _ => false,
            };
    }
    // the port follows the last colon, within the last six bytes; any
    // other colon is in the name, where it is refused
    let tail = value.len().saturating_sub(6);
    let (name, port) = match value[tail..].iter().rposition(|&b| b == b':') {
        Some(at) => (&value[..tail + at], Some(&value[tail + at + 1..])),
        None => (value, None),
    };
    !name.is_empty()
        && name.iter().all(|&b| HOST_BYTES[usize::from(b)])
        && port.is_none_or(valid_port)
}

/// Up to five digits, at most 65535 (empty is allowed: `host:`).
fn valid_port(port: &[u8]) -> bool {
    if port.len() > 5 {
        return false;
    }
    let mut n = 0u32;
    for &d in port {
        if !d.is_ascii_digit() {
            return false;
        }
        n = n * 10 + u32::from(d - b'0');
    }
    n <= 65535
}

/// The bytes of a registered name or IPv4 address in a host (RFC 3986
/// `reg-name`: unreserved, percent-encoded, sub-delims).
static HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// The bit of a hop-by-hop header name in [`Hop`]: the fields that
/// describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// legacy `Proxy-Connection` and HTTP/2's upgrade `HTTP2-Settings`).
/// Names are lowercase; matching on the text is a length switch and a
/// compare, with no hashing.
fn hop_bit(name: &str) -> Option<u8> {
    Some(match name {
        "connection" => 0,
        "transfer-encoding" => 1,
        "te" => 2,
        "trailer" => 3,
        "upgrade" => 4,
        "proxy-authorization" => 5,
        "proxy-authenticate" => 6,
        "proxy-connection" => 7,
        "keep-alive" => 8,
        "http2-settings" => 9,
        _ => return None,
    })
}

/// True when `Connection` lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Completes a response's fields, whose hop-by-hop fields were left out
/// as it was parsed (`hop` says which it had): the fields `Connection`
/// named go too, and a `101 Switching Protocols` (`upgrade`), which keeps
/// its `Upgrade`, says `Connection: upgrade`.
pub fn finish_response_fields(headers: &mut HeaderMap, hop: Hop, upgrade: bool) {
    if hop.names_others {
        // the parser kept `Connection` for this
        for name in &connection_named(headers) {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// `Connection: keep-alive` or `close`, what nearly every message says:
/// it names no other header.
fn is_plain_connection(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// The headers `Connection` names beyond the usual tokens: hop-by-hop too.
/// Allocates, so it is asked only when [`Hop::names_others`] says so.
/// Reads bytes: a value that also holds a non-ASCII byte still names the
/// fields it names.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            let known = ["keep-alive", "close", "upgrade", ""]
                .iter()
                .any(|k| token.eq_ignore_ascii_case(k.as_bytes()));
            if known || is_end_to_end(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    named
}

/// Headers a client may not make disappear by naming them in `Connection`:
/// the ones the proxy itself relies on or sets.
fn is_end_to_end(token: &[u8]) -> bool {
    [
        "host",
        "content-length",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ]
    .iter()
    .any(|h| token.eq_ignore_ascii_case(h.as_bytes()))
}

pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy,
/// the right-most address in `X-Forwarded-For` that is not itself trusted.
/// What an untrusted peer says in `X-Forwarded-For` is never believed.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| is_trusted(ip, trusted);
    if trusted.is_empty() || !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for value in values.into_iter().rev() {
        // element by element: one that is not an address (non-ASCII bytes
        // included) stops the walk there, not at the value's right end
        for part in value.as_bytes().rsplit(|&b| b == b',') {
            let ip = std::str::from_utf8(part.trim_ascii()).map(str::parse::<IpAddr>);
            let Ok(Ok(ip)) = ip else {
                return client;
            };
            client = ip;
            if !is_trusted(ip) {
                return ip;
            }
        }
    }
    client
}

/// Who the backend is talking to, on behalf of whom.
pub struct Forwarded<'a> {
    /// The address this proxy's client connection comes from, as text.
    pub peer: &'a HeaderValue,
    /// The client's address (see [`client_addr`]), sent as `X-Real-IP`.
    pub client: &'a HeaderValue,
    /// The peer is a trusted proxy: the forwarding fields it sets
    /// (`X-Forwarded-Proto`, `-Host`, `-Port`, `-Prefix`, `Forwarded`)
    /// describe the original request and are kept.
    pub peer_trusted: bool,
    pub proto: &'static str,
    /// The request's host: its `Host` field, or the target's authority
    /// (HTTP/2's `:authority`, an absolute-form target), which wins.
    pub host: Option<&'a HeaderValue>,
    /// `host` is the request's own `Host` field, passed in place; else
    /// any `Host` field is replaced by `host`.
    pub host_in_place: bool,
    pub request_id: &'a RequestId,
}

/// Writes the request's fields for the backend: without hop-by-hop
/// fields or `Expect`; `Host` in place, or from the target (an HTTP/1.0
/// request without one gets the backend's address, see
/// [`RequestHead::host_for_backend`]); cookies in one field, as HTTP/1.1
/// servers expect (RFC 9113 §8.2.3); the peer appended to
/// `X-Forwarded-For` (repeated fields joined into one); `X-Real-IP`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Request-Id` set; the
/// forwarding fields only a trusted proxy may set dropped from anyone
/// else; and for an upgrade, the protocols that may be tunnelled
/// (`upgrade`) with `Connection: upgrade`.
///
/// Written straight into the head rather than edited in the map: a request
/// without any of these fields (nearly all) is copied field by field.
pub fn write_request_fields(
    head: &mut RequestHead,
    headers: &HeaderMap,
    seen: &Seen,
    f: &Forwarded<'_>,
    upgrade: Option<&[u8]>,
) {
    let keep_proto = f.peer_trusted && seen.forwarding & FWD_PROTO != 0;
    let keep_host = f.peer_trusted && seen.forwarding & FWD_HOST != 0;
    let special = seen.hop.found != 0
        || seen.expect
        || seen.forwarding != 0
        || seen.request_id.is_some()
        || seen.cookies > 1
        || (seen.hosts > 0 && !f.host_in_place);
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    if !special {
        for (name, value) in headers {
            head.field(name.as_str(), value.as_bytes());
        }
    } else {
        let named = if seen.hop.names_others {
            connection_named(headers)
        } else {
            Vec::new()
        };
        let mut cookies_written = false;
        for (name, value) in headers {
            let n = name.as_str();
            let skip = hop_bit(n).is_some()
                || match n {
                    "expect" | "x-request-id" | "x-real-ip" => true,
                    "host" => !f.host_in_place,
                    "x-forwarded-proto" => !keep_proto,
                    "x-forwarded-host" => !keep_host,
                    // a trusted proxy's, unless it named them in `Connection`
                    "forwarded" | "x-forwarded-port" | "x-forwarded-prefix" => {
                        !f.peer_trusted || named.contains(name)
                    }
                    "x-forwarded-for" => {
                        forwarded_for.push(value.as_bytes());
                        true
                    }
                    "cookie" if seen.cookies > 1 => {
                        if !cookies_written {
                            cookies_written = true;
                            let all = headers.get_all(header::COOKIE).iter();
                            head.joined("cookie", all.map(HeaderValue::as_bytes), b"; ");
                        }
                        true
                    }
                    _ => named.contains(name),
                };
            if !skip {
                head.field(n, value.as_bytes());
            }
        }
    }
    match f.host {
        Some(host) if !f.host_in_place => head.field("host", host.as_bytes()),
        Some(_) => {}
        None => head.host_for_backend(),
    }
    if forwarded_for.is_empty() {
        head.field("x-forwarded-for", f.peer.as_bytes());
    } else {
        forwarded_for.push(f.peer.as_bytes());
        head.list("x-forwarded-for", forwarded_for);
    }
    head.field("x-real-ip", f.client.as_bytes());
    if !keep_proto {
        head.field("x-forwarded-proto", f.proto.as_bytes());
    }
    if !keep_host && let Some(host) = f.host {
        head.field("x-forwarded-host", host.as_bytes());
    }
    head.field("x-request-id", f.request_id.as_bytes());
    if let Some(protocols) = upgrade {
        head.field("upgrade", protocols);
        head.field("connection", b"upgrade");
    }
}

/// A request's id, sent to the backend as `X-Request-Id` and logged.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestId {
    /// The client's own, a sane token.
    Given(HeaderValue),
    /// A new one: 32 hex digits (see [`IdSource`]).
    New([u8; 32]),
}

impl RequestId {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Given(v) => v.as_bytes(),
            RequestId::New(hex) => hex,
        }
    }

    /// The id as text; `-` if it is not (a given id may hold obs-text).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }
}

/// The client's `X-Request-Id` when it is a sane token, else a new id.
pub fn request_id(seen: &Seen) -> RequestId {
    if let Some(v) = &seen.request_id {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic()) {
            return RequestId::Given(v.clone());
        }
    }
    RequestId::New(new_request_id())
}

/// Where a worker's new request ids come from: 64 random bits drawn once
/// per thread, then a counter, so that an id costs 16 hex digits rather
/// than 32 random ones, and ids of two workers or two processes do not
/// collide in practice.
#[derive(Clone, Copy)]
struct IdSource {
    prefix: [u8; 16],
    next: u64,
}

thread_local! {
    static IDS: std::cell::Cell<IdSource> = std::cell::Cell::new(IdSource {
        prefix: hex16(fastrand::u64(..)),
        next: 0,
    });
}

fn hex16(n: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 16];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(n.to_be_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    hex
}

fn new_request_id() -> [u8; 32] {
    let source = IDS.with(|ids| {
        let source = ids.get();
        ids.set(IdSource {
            next: source.next.wrapping_add(1),
            ..source
        });
        source
    });
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&source.prefix);
    id[16..].copy_from_slice(&hex16(source.next));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// The fields `write_request_fields` writes, as text: the client is
    /// 10.0.0.1, unless `trusted` (then 203.0.113.9, behind 10.0.0.1);
    /// `host` is in place when the request has a `host` field.
    fn written(h: &HeaderMap, trusted: bool, host: Option<&str>, upgrade: Option<&str>) -> String {
        let rid = RequestId::Given(HeaderValue::from_static("abc"));
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        let seen = Seen::scan(h);
        let mut head = RequestHead::new(&http::Method::GET, "/", h.len());
        write_request_fields(
            &mut head,
            h,
            &seen,
            &Forwarded {
                peer: &HeaderValue::from_static("10.0.0.1"),
                client: &HeaderValue::from_static(match trusted {
                    true => "203.0.113.9",
                    false => "10.0.0.1",
                }),
                peer_trusted: trusted,
                proto: "http",
                host: host.as_ref(),
                host_in_place: seen.host.is_some() && seen.host == host,
                request_id: &rid,
            },
            upgrade.map(str::as_bytes),
        );
        let mut head = head.finish(false);
        head.for_backend("192.0.2.7:8080".parse().unwrap());
        let head = String::from_utf8(head.bytes).unwrap();
        head.trim_start_matches("GET / HTTP/1.1\r\n")
            .replace("\r\n", "\n")
    }

    #[test]
    fn forwarded_headers() {
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-host", "evil"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "abc"),
            ("accept", "*/*"),
        ]);
        assert_eq!(
            written(&h, false, None, None),
            "accept: */*\nhost: 192.0.2.7:8080\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\nx-real-ip: 10.0.0.1\nx-forwarded-proto: http\nx-request-id: abc\n\n"
        );
        // a trusted peer's proto and host describe the original request
        assert_eq!(
            written(&h, true, Some("a.example"), None),
            "x-forwarded-host: evil\nx-forwarded-proto: https\naccept: */*\nhost: a.example\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\nx-real-ip: 203.0.113.9\nx-request-id: abc\n\n"
        );
        // the common case: fields copied, forwarding fields added
        let h = map(&[("host", "a.example"), ("accept", "*/*")]);
        assert_eq!(
            written(&h, false, Some("a.example"), None),
            "host: a.example\naccept: */*\nx-forwarded-for: 10.0.0.1\nx-real-ip: 10.0.0.1\nx-forwarded-proto: http\nx-forwarded-host: a.example\nx-request-id: abc\n\n"
        );
        // the target's authority wins over a Host field (HTTP/2, absolute form)
        assert!(
            written(&h, false, Some("b.example"), None)
                .starts_with("accept: */*\nhost: b.example\n")
        );
    }

    #[test]
    fn forwarding_fields_only_a_trusted_proxy_may_set() {
        let h = map(&[
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-forwarded-port", "1"),
            ("x-forwarded-prefix", "/evil"),
            ("host", "a"),
        ]);
        assert_eq!(
            written(&h, false, Some("a"), None),
            "host: a\nx-forwarded-for: 10.0.0.1\nx-real-ip: 10.0.0.1\nx-forwarded-proto: http\nx-forwarded-host: a\nx-request-id: abc\n\n"
        );
        // a trusted proxy's are kept, but X-Real-IP is always the proxy's own
        assert_eq!(
            written(&h, true, Some("a"), None),
            "forwarded: for=1.2.3.4\nx-forwarded-port: 1\nx-forwarded-prefix: /evil\nhost: a\nx-forwarded-for: 10.0.0.1\nx-real-ip: 203.0.113.9\nx-forwarded-proto: http\nx-forwarded-host: a\nx-request-id: abc\n\n"
        );
    }

    #[test]
    fn cookie_crumbs_are_one_field() {
        let h = map(&[
            ("host", "a"),
            ("cookie", "a=1"),
            ("x", "y"),
            ("cookie", "b=2; c=3"),
        ]);
        let text = written(&h, false, Some("a"), None);
        assert!(
            text.starts_with("host: a\ncookie: a=1; b=2; c=3\nx: y\nx-forwarded-for"),
            "{text}"
        );
    }

    #[test]
    fn requests_lose_their_hop_by_hop_fields() {
        let h = map(&[
            ("connection", "keep-alive, X-Secret, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("expect", "100-continue"),
            ("host", "a"),
        ]);
        let text = written(&h, false, Some("a"), None);
        assert!(text.starts_with("host: a\nx-forwarded-for"), "{text}");
        // an upgrade keeps its handshake, with the protocols allowed
        let h = map(&[
            ("connection", "Upgrade, x-a"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
            ("host", "a"),
        ]);
        let text = written(&h, false, Some("a"), Some("websocket"));
        assert!(text.starts_with("host: a\nx-forwarded-for"), "{text}");
        assert!(
            text.ends_with("upgrade: websocket\nconnection: upgrade\n\n"),
            "{text}"
        );
    }

    #[test]
    fn only_allowed_upgrades_are_tunnelled_and_h2c_never() {
        let allowed = ["websocket".to_string(), "h2c".to_string()];
        let upgrade = |pairs: &[(&str, &str)]| {
            let h = map(pairs);
            Seen::scan(&h)
                .upgrade(&h, &allowed)
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(
            upgrade(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]).as_deref(),
            Some("WebSocket")
        );
        assert_eq!(
            upgrade(&[
                ("connection", "upgrade"),
                ("upgrade", "h2c, websocket/13, foo")
            ])
            .as_deref(),
            Some("websocket/13")
        );
        assert_eq!(
            upgrade(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c")
            ]),
            None
        );
        assert_eq!(
            upgrade(&[("connection", "keep-alive"), ("upgrade", "websocket")]),
            None
        );
        assert_eq!(
            upgrade(&[("connection", "upgrade"), ("upgrade", "foo")]),
            None
        );

        let response = |value: &str| map(&[("upgrade", value)]);
        assert!(upgrade_answers(b"websocket", &response("websocket")));
        assert!(upgrade_answers(
            b"websocket/13, foo",
            &response("WebSocket")
        ));
        assert!(!upgrade_answers(b"websocket", &response("h2c")));
        assert!(!upgrade_answers(b"websocket", &response("websocket, h2c")));
        assert!(!upgrade_answers(b"websocket", &HeaderMap::new()));
    }

    #[test]
    fn hosts_are_host_and_port() {
        for good in [
            "example.com",
            "example.com:8080",
            "EXAMPLE.com:",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "a_b.example",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "", "a b", "a/b", "a@b", "[::1", "[::1]x", "[zz]", "x:y", "x:99999", "x:123456",
            "a\\b", ":80", "a?b", "a#b", "[::1]:8x",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn transfer_codings_other_than_chunked_are_noticed() {
        let coding = |values: &[&str]| {
            let pairs: Vec<(&str, &str)> =
                values.iter().map(|v| ("transfer-encoding", *v)).collect();
            Seen::scan(&map(&pairs)).unknown_coding
        };
        assert!(!coding(&["chunked"]));
        assert!(!coding(&["Chunked "]));
        assert!(coding(&["gzip, chunked"]));
        assert!(coding(&["chunked, chunked"]));
        assert!(coding(&["gzip", "chunked"]));
        assert!(coding(&["xchunked"]));
        assert!(!coding(&[]));
    }

    #[test]
    fn client_address_behind_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let h = map(&[
            ("x-forwarded-for", "198.51.100.9, 203.0.113.5"),
            ("x-forwarded-for", "10.1.1.1"),
        ]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_addr(peer, &h, &trusted),
            "203.0.113.5".parse::<IpAddr>().unwrap()
        );
        // an untrusted peer's header is ignored
        let outsider: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_addr(outsider, &h, &trusted), outsider);
        assert_eq!(client_addr(peer, &h, &[]), peer);
        // all trusted: the left-most
        let h = map(&[("x-forwarded-for", "10.9.9.9, fd00::1")]);
        assert_eq!(
            client_addr(peer, &h, &trusted),
            "10.9.9.9".parse::<IpAddr>().unwrap()
        );
        // garbage stops the walk at the last trusted hop
        let h = map(&[("x-forwarded-for", "203.0.113.5, junk, 10.1.1.1")]);
        assert_eq!(
            client_addr(peer, &h, &trusted),
            "10.1.1.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn request_ids() {
        let id = |h: &HeaderMap| request_id(&Seen::scan(h));
        let h = map(&[("x-request-id", "given-1")]);
        assert_eq!(id(&h).as_str(), "given-1");
        let a = id(&HeaderMap::new());
        let b = id(&HeaderMap::new());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
        let h = map(&[("x-request-id", "has space")]);
        assert_ne!(id(&h).as_str(), "has space");
    }
}
