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
}

impl Hop {
    /// Notes `name` if it is hop-by-hop; false when it is not.
    pub fn note(&mut self, name: &str, value: &[u8]) -> bool {
        let Some(bit) = hop_bit(name) else {
            return false;
        };
        self.found |= 1 << bit;
        self.names_others |= bit == 0 && !is_plain_connection(value);
        true
    }
}

/// What one pass over a message's header names found: the request path
/// looks at a dozen names, and one scan costs less than a dozen lookups.
#[derive(Debug, Default)]
pub struct Seen {
    hop: Hop,
    pub expect: bool,
    /// The request has a `Content-Length` (hyper drops it beside chunked).
    pub content_length: bool,
    pub host: Option<HeaderValue>,
    /// The first `X-Request-Id`.
    request_id: Option<HeaderValue>,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
}

impl Seen {
    pub fn scan(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for (name, value) in headers {
            let name = name.as_str();
            if !seen.hop.note(name, value.as_bytes()) {
                match name {
                    "host" if seen.host.is_none() => seen.host = Some(value.clone()),
                    "expect" => seen.expect = true,
                    "content-length" => seen.content_length = true,
                    "x-request-id" if seen.request_id.is_none() => {
                        seen.request_id = Some(value.clone());
                    }
                    "x-forwarded-for" => seen.forwarded_for = true,
                    "x-forwarded-proto" => seen.forwarded_proto = true,
                    "x-forwarded-host" => seen.forwarded_host = true,
                    _ => {}
                }
            }
        }
        seen
    }

    /// The request asks to upgrade the connection (`Upgrade` and
    /// `Connection: upgrade`).
    pub fn upgrade(&self, headers: &HeaderMap) -> bool {
        self.hop.found & UPGRADE_BIT != 0
            && self.hop.found & CONNECTION_BIT != 0
            && connection_has(headers, "upgrade")
    }
}

/// The bit of a hop-by-hop header name in [`Hop`]: the fields that
/// describe one connection, never the message (RFC 9110 §7.6.1, plus the
/// legacy `Proxy-Connection`). Names are lowercase; matching on the text is
/// a length switch and a compare, with no hashing.
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
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(s) = value.to_str() else { continue };
        for token in s.split(',').map(str::trim) {
            let known = ["keep-alive", "close", "upgrade", ""]
                .iter()
                .any(|k| token.eq_ignore_ascii_case(k));
            if known || is_end_to_end(token) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    named
}

/// Headers a client may not make disappear by naming them in `Connection`:
/// the ones the proxy itself relies on or sets.
fn is_end_to_end(token: &str) -> bool {
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
    .any(|h| token.eq_ignore_ascii_case(h))
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
        let Ok(s) = value.to_str() else { return client };
        for part in s.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
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
    /// The peer is a trusted proxy: its `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` describe the original request and are kept.
    pub peer_trusted: bool,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub request_id: &'a RequestId,
}

/// Writes the request's fields for the backend: without hop-by-hop
/// fields (an upgrade keeps `Upgrade` and says `Connection: upgrade`) or
/// `Expect`, with `Host` (from the target when the request had none), the
/// peer appended to `X-Forwarded-For` (repeated fields joined into one),
/// and `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Request-Id` set.
///
/// Written straight into the head rather than edited in the map: a request
/// without any of these fields (nearly all) is copied field by field.
pub fn write_request_fields(
    head: &mut RequestHead,
    headers: &HeaderMap,
    seen: &Seen,
    f: &Forwarded<'_>,
    upgrade: bool,
) {
    let keep_proto = f.peer_trusted && seen.forwarded_proto;
    let keep_host = f.peer_trusted && seen.forwarded_host;
    let special = seen.hop.found != 0
        || seen.expect
        || seen.forwarded_for
        || seen.forwarded_proto
        || seen.forwarded_host
        || seen.request_id.is_some();
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
        for (name, value) in headers {
            let n = name.as_str();
            let skip = match hop_bit(n) {
                Some(bit) => !(upgrade && 1 << bit == UPGRADE_BIT),
                None => match n {
                    "expect" | "x-request-id" => true,
                    "x-forwarded-proto" => !keep_proto,
                    "x-forwarded-host" => !keep_host,
                    "x-forwarded-for" => {
                        forwarded_for.push(value.as_bytes());
                        true
                    }
                    _ => named.contains(name),
                },
            };
            if !skip {
                head.field(n, value.as_bytes());
            }
        }
    }
    if seen.host.is_none()
        && let Some(host) = f.host
    {
        head.field("host", host.as_bytes());
    }
    if forwarded_for.is_empty() {
        head.field("x-forwarded-for", f.peer.as_bytes());
    } else {
        forwarded_for.push(f.peer.as_bytes());
        head.list("x-forwarded-for", forwarded_for);
    }
    if !keep_proto {
        head.field("x-forwarded-proto", f.proto.as_bytes());
    }
    if !keep_host && let Some(host) = f.host {
        head.field("x-forwarded-host", host.as_bytes());
    }
    head.field("x-request-id", f.request_id.as_bytes());
    if upgrade {
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

    /// The fields `write_request_fields` writes, as text.
    fn written(h: &HeaderMap, trusted: bool, host: Option<&str>, upgrade: bool) -> String {
        let rid = RequestId::Given(HeaderValue::from_static("abc"));
        let host = host.map(|h| HeaderValue::from_str(h).unwrap());
        let mut head = RequestHead::new(&http::Method::GET, "/", h.len());
        write_request_fields(
            &mut head,
            h,
            &Seen::scan(h),
            &Forwarded {
                peer: &HeaderValue::from_static("10.0.0.1"),
                peer_trusted: trusted,
                proto: "http",
                host: host.as_ref(),
                request_id: &rid,
            },
            upgrade,
        );
        let head = String::from_utf8(head.finish(false)).unwrap();
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
            written(&h, false, None, false),
            "accept: */*\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\nx-forwarded-proto: http\nx-request-id: abc\n\n"
        );
        // a trusted peer's proto and host describe the original request
        assert_eq!(
            written(&h, true, Some("a.example"), false),
            "x-forwarded-host: evil\nx-forwarded-proto: https\naccept: */*\nhost: a.example\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\nx-request-id: abc\n\n"
        );
        // the common case: fields copied, forwarding fields added
        let h = map(&[("host", "a.example"), ("accept", "*/*")]);
        assert_eq!(
            written(&h, false, Some("a.example"), false),
            "host: a.example\naccept: */*\nx-forwarded-for: 10.0.0.1\nx-forwarded-proto: http\nx-forwarded-host: a.example\nx-request-id: abc\n\n"
        );
        // HTTP/2: Host comes from the target
        assert!(
            written(&HeaderMap::new(), false, Some("b.example"), false)
                .starts_with("host: b.example\n")
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
            ("expect", "100-continue"),
            ("host", "a"),
        ]);
        let text = written(&h, false, Some("a"), false);
        assert!(text.starts_with("host: a\nx-forwarded-for"), "{text}");
        // an upgrade keeps its handshake
        let h = map(&[
            ("connection", "Upgrade, x-a"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
        ]);
        let text = written(&h, false, None, true);
        assert!(
            text.starts_with("upgrade: websocket\nx-forwarded-for"),
            "{text}"
        );
        assert!(text.ends_with("connection: upgrade\n\n"), "{text}");
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
