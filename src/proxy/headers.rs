//! Header rules between client and backend: hop-by-hop headers stay on
//! their hop, and the backend learns who the client is.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, never the message (RFC 9110
/// §7.6.1, plus the legacy `Proxy-Connection`), by their bit in [`Hop`].
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
];
const CONNECTION_BIT: u16 = 1 << 0;
const UPGRADE_BIT: u16 = 1 << 4;

/// The hop-by-hop headers of a message, as one pass over its names finds
/// them (both directions use it).
#[derive(Debug, Default, Clone, Copy)]
struct Hop {
    /// Bit `i`: `HOP_BY_HOP[i]` is present.
    found: u16,
    /// A `Connection` header says more than `keep-alive` or `close`.
    names_others: bool,
}

impl Hop {
    /// Notes `name` if it is hop-by-hop; false when it is not.
    fn note(&mut self, name: &str, value: &HeaderValue) -> bool {
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
    pub host: Option<HeaderValue>,
    /// The first `X-Request-Id`, and whether there are more.
    request_id: Option<HeaderValue>,
    request_ids: u8,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
}

impl Seen {
    pub fn scan(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for (name, value) in headers {
            let name = name.as_str();
            if !seen.hop.note(name, value) {
                match name {
                    "host" if seen.host.is_none() => seen.host = Some(value.clone()),
                    "expect" => seen.expect = true,
                    "x-request-id" => {
                        seen.request_ids = seen.request_ids.saturating_add(1);
                        if seen.request_id.is_none() {
                            seen.request_id = Some(value.clone());
                        }
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

/// The bit of a hop-by-hop header name in [`HOP_BY_HOP`]. Names are
/// lowercase; matching on the text is a length switch and a compare, with
/// no hashing.
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

/// Removes hop-by-hop headers and every header that `Connection` names
/// from a response. With `upgrade`, `Upgrade` and `Connection: upgrade`
/// stay, so that a WebSocket handshake passes.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let mut hop = Hop::default();
    for (name, value) in headers.iter() {
        hop.note(name.as_str(), value);
    }
    strip(headers, hop, upgrade);
}

/// `Connection: keep-alive` or `close`, what nearly every message says:
/// it names no other header.
fn is_plain_connection(value: &HeaderValue) -> bool {
    let v = value.as_bytes();
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// Removes what [`Seen::scan`] found hop-by-hop (see [`strip_hop_by_hop`]).
pub fn strip_seen(headers: &mut HeaderMap, seen: &Seen, upgrade: bool) {
    strip(headers, seen.hop, upgrade);
}

/// Removes the hop-by-hop headers `hop` found and, when `Connection` names
/// others, those too.
fn strip(headers: &mut HeaderMap, hop: Hop, upgrade: bool) {
    let mut found = hop.found;
    if upgrade {
        found &= !UPGRADE_BIT; // keep Upgrade
    }
    if found == 0 {
        return;
    }
    if found & CONNECTION_BIT != 0 && hop.names_others {
        // allocated only when Connection names more than the usual tokens
        let mut named: Vec<HeaderName> = Vec::new();
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
        for name in &named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
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
    pub request_id: &'a HeaderValue,
}

/// Appends the peer to `X-Forwarded-For` (joining repeated headers into
/// one) and sets `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Request-Id`.
/// `seen` says which of them the request has, so that adding one that is
/// absent costs a single insertion.
pub fn add_forwarded(headers: &mut HeaderMap, f: &Forwarded<'_>, seen: &Seen) {
    if !seen.forwarded_for {
        headers.insert(&X_FORWARDED_FOR, f.peer.clone());
    } else if let header::Entry::Occupied(mut entry) = headers.entry(&X_FORWARDED_FOR) {
        let mut joined = Vec::with_capacity(64);
        for v in entry.iter() {
            joined.extend_from_slice(v.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(f.peer.as_bytes());
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
            entry.insert(v);
        }
    }
    if !(f.peer_trusted && seen.forwarded_proto) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(f.proto));
    }
    if !(f.peer_trusted && seen.forwarded_host) {
        match f.host {
            Some(h) => {
                headers.insert(&X_FORWARDED_HOST, h.clone());
            }
            None if seen.forwarded_host => {
                headers.remove(&X_FORWARDED_HOST);
            }
            None => {}
        }
    }
    let kept = seen.request_ids == 1 && seen.request_id.as_ref() == Some(f.request_id);
    if !kept {
        headers.insert(&X_REQUEST_ID, f.request_id.clone());
    }
}

/// The client's `X-Request-Id` when it is a sane token, else a new id of
/// 32 hex digits (see [`IdSource`]).
pub fn request_id(seen: &Seen) -> HeaderValue {
    if let Some(v) = &seen.request_id {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    new_request_id()
}

/// Where a worker's new request ids come from: 64 random bits drawn once
/// per thread, then a counter, so that an id costs 16 hex digits rather
/// than 32 random ones, and ids of two workers or two processes do not
/// collide in practice. Ids are cut from a shared 4 KiB buffer: one
/// allocation per 128 ids.
struct IdSource {
    prefix: [u8; 16],
    next: u64,
    slab: bytes::BytesMut,
}

thread_local! {
    static IDS: std::cell::RefCell<IdSource> = std::cell::RefCell::new(IdSource {
        prefix: hex16(fastrand::u64(..)),
        next: 0,
        slab: bytes::BytesMut::new(),
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

fn new_request_id() -> HeaderValue {
    let bytes = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        let ids = &mut *ids;
        if ids.slab.capacity() < 32 {
            ids.slab = bytes::BytesMut::with_capacity(32 * 128);
        }
        ids.slab.extend_from_slice(&ids.prefix);
        ids.slab.extend_from_slice(&hex16(ids.next));
        ids.next = ids.next.wrapping_add(1);
        ids.slab.split().freeze()
    });
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("-"))
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

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret, host"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("host", "a"),
            ("accept", "*/*"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["accept", "host"]);
    }

    #[test]
    fn upgrade_keeps_its_handshake() {
        let mut h = map(&[
            ("connection", "Upgrade, x-a"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(h.get("x-a").is_none());
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-host", "evil"),
        ]);
        let rid = HeaderValue::from_static("abc");
        let seen = Seen::scan(&h);
        add_forwarded(
            &mut h,
            &Forwarded {
                peer: &HeaderValue::from_static("10.0.0.1"),
                peer_trusted: false,
                proto: "http",
                host: None,
                request_id: &rid,
            },
            &seen,
        );
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("x-forwarded-host").is_none());
        assert_eq!(h["x-request-id"], "abc");
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
        assert_eq!(id(&h), "given-1");
        let a = id(&HeaderMap::new());
        let b = id(&HeaderMap::new());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        let h = map(&[("x-request-id", "has space")]);
        assert_ne!(id(&h), "has space");
    }
}
