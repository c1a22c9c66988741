//! The cookie carrier on the wire: the ticket and the app's cookies in a
//! request's `Cookie` fields, and the app's `Set-Cookie` fields in a
//! response. Every other cookie passes byte for byte, in its place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};

pub use crate::cookie::find;

/// Puts `replacement` (the app's cookies, `a=1; b=2`) where the first
/// `ticket` cookie was, and takes out every other crumb (the text between
/// two `;`) that claims the ticket's or an app cookie's name (a client does
/// not set the app's session itself; see [`Ours::claims`] for what claims
/// it). Fields with nothing of the session are left as they are; a field
/// left empty goes. One pass per field: this runs on every request of a
/// pool in shared-store mode.
pub fn rewrite(headers: &mut HeaderMap, ticket: &str, app: &[String], replacement: &[u8]) {
    let ours = Ours { ticket, app };
    let mut placed = false;
    let mut all = headers.get_all(COOKIE).iter();
    if let (first, None) = (all.next(), all.next()) {
        // one field, as HTTP/1.1 clients send: no list of fields to build
        let new = first.and_then(|f| rewrite_field(f.as_bytes(), &ours, replacement, &mut placed));
        let value = match new {
            Some(out) if !out.is_empty() => {
                HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
            }
            Some(_) => {
                headers.remove(COOKIE);
                None
            }
            None => None,
        };
        if let Some(v) = value {
            headers.insert(COOKIE, v);
        }
        if !placed
            && !replacement.is_empty()
            && let Ok(v) = HeaderValue::from_bytes(replacement)
        {
            headers.append(COOKIE, v);
        }
        return;
    }
    let mut changed = false;
    let mut fields: Vec<Option<HeaderValue>> = Vec::new();
    for field in headers.get_all(COOKIE) {
        let new = rewrite_field(field.as_bytes(), &ours, replacement, &mut placed);
        changed |= new.is_some();
        fields.push(match new {
            Some(out) => (!out.is_empty())
                .then(|| HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok())
                .flatten(),
            None => Some(field.clone()),
        });
    }
    if !placed && !replacement.is_empty() {
        changed = true;
        fields.push(HeaderValue::from_bytes(replacement).ok());
    }
    if !changed {
        return;
    }
    let mut fields = fields.into_iter().flatten();
    match fields.next() {
        // `insert` replaces every field of the name at once
        Some(first) => {
            headers.insert(COOKIE, first);
        }
        None => {
            headers.remove(COOKIE);
        }
    }
    for f in fields {
        headers.append(COOKIE, f);
    }
}

/// Takes every cookie named in `names` out of a request (a pool without
/// shared-store mode gets no ticket of another pool's).
pub fn strip(headers: &mut HeaderMap, names: &[String]) {
    if let Some(first) = names.first() {
        // the first name's place takes nothing: it goes like the others
        rewrite(headers, first, names, b"");
    }
}

/// One `Cookie` field rewritten, or `None` when it holds nothing of the
/// session and stays as it is.
fn rewrite_field(
    field: &[u8],
    ours: &Ours,
    replacement: &[u8],
    placed: &mut bool,
) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut kept = 0;
    let mut start = 0;
    while start <= field.len() {
        let (len, claimed) = ours.claims(&field[start..]);
        let end = start + len;
        let pair = field[start..end].trim_ascii();
        let piece: &[u8] = if claimed {
            if out.is_none() {
                // the first of ours: what came before it stays as it was
                let mut v = Vec::with_capacity(field.len() + replacement.len());
                v.extend_from_slice(field[..kept].trim_ascii_end());
                out = Some(v);
            }
            // the ticket, spelt as `find` reads it, takes the app's cookies
            let name = memchr::memchr(b'=', pair).map_or(pair, |eq| pair[..eq].trim_ascii());
            match name == ours.ticket.as_bytes() && !std::mem::replace(placed, true) {
                true => replacement,
                false => &[],
            }
        } else {
            pair
        };
        match &mut out {
            Some(out) if !piece.is_empty() => {
                if !out.is_empty() {
                    out.extend_from_slice(b"; ");
                }
                out.extend_from_slice(piece);
            }
            Some(_) => {}
            None => kept = end,
        }
        start = end + 1;
    }
    out
}

/// The names a client's crumb must not claim in a session pool.
struct Ours<'a> {
    ticket: &'a str,
    app: &'a [String],
}

impl Ours<'_> {
    /// Reads the crumb at the start of `rest` (up to its `;`) as leniently
    /// as any parser a backend may run: its length, and whether some
    /// parser could find in it a cookie named as the ticket or an app
    /// cookie. Such a crumb goes whole; every other passes byte for byte.
    ///
    /// The crumb is cut into pieces at every byte or character some parser
    /// splits cookies at or trims from names, and each piece's name (what
    /// comes before its first `=`) is compared:
    /// - `,` and ASCII white space split: Python's `SimpleCookie` (Bottle,
    ///   CherryPy, older aiohttp) reads `a=1 session=x` as two cookies, and
    ///   Tomcat 9 after `$Version=1` and RFC 2965 parsers (Netty) split at
    ///   `,`;
    /// - every byte up to 0x20, 0x7f, and 0x85 and 0xa0 (latin-1 white
    ///   space) are trimmed: Werkzeug before 3.1.9 and Django strip names
    ///   with Python's `str.strip()`, which takes `\x1c`-`\x1f`, U+0085 and
    ///   U+00A0 too, and JavaScript's and Java's `trim` take others;
    /// - the UTF-8 white space characters, for parsers that decode a field
    ///   as UTF-8 before trimming names (Rust's `cookie` crate in Rocket);
    /// - names compare ignoring ASCII case (ASP.NET's cookie collection
    ///   does);
    /// - a `$` name goes too: no RFC 6265 client sends one, and legacy
    ///   parsers read it as an attribute of the cookie before it or, as
    ///   `$Version`, a switch to RFC 2109 rules for the rest of the field.
    ///
    /// Cutting at more places than a parser does only adds names to
    /// compare, so the rule holds for every parser that cuts at fewer.
    fn claims(&self, rest: &[u8]) -> (usize, bool) {
        let mut piece = 0;
        let mut name_end = None;
        let mut i = 0;
        while let Some(&b) = rest.get(i) {
            let cut = match CLASS[usize::from(b)] {
                PLAIN => 0,
                EQUALS => {
                    name_end = name_end.or(Some(i));
                    0
                }
                END => break,
                CUT => 1,
                _ => utf8_space(&rest[i..]),
            };
            if cut == 0 {
                i += 1;
                continue;
            }
            if self.named(&rest[piece..name_end.unwrap_or(i)]) {
                let end = memchr::memchr(b';', &rest[i..]).map_or(rest.len(), |j| i + j);
                return (end, true);
            }
            i += cut;
            piece = i;
            name_end = None;
        }
        (i, self.named(&rest[piece..name_end.unwrap_or(i)]))
    }

    fn named(&self, name: &[u8]) -> bool {
        name.first() == Some(&b'$')
            || name.eq_ignore_ascii_case(self.ticket.as_bytes())
            || self
                .app
                .iter()
                .any(|a| name.eq_ignore_ascii_case(a.as_bytes()))
    }
}

const PLAIN: u8 = 0;
const CUT: u8 = 1;
const END: u8 = 2;
const EQUALS: u8 = 3;
/// The first byte of a UTF-8 white space character, or of another one.
const LEAD: u8 = 4;

/// What each byte is to [`Ours::claims`].
static CLASS: [u8; 256] = {
    let mut class = [PLAIN; 256];
    let mut b = 0;
    while b <= 0x20 {
        class[b] = CUT;
        b += 1;
    }
    class[0x7f] = CUT;
    class[0x85] = CUT;
    class[0xa0] = CUT;
    class[b',' as usize] = CUT;
    class[b';' as usize] = END;
    class[b'=' as usize] = EQUALS;
    class[0xc2] = LEAD;
    class[0xe1] = LEAD;
    class[0xe2] = LEAD;
    class[0xe3] = LEAD;
    class[0xef] = LEAD;
    class
};

/// The length of the UTF-8 white space character `s` starts with (Unicode's
/// White_Space, and U+180E and U+FEFF, which JavaScript's `trim` took or
/// takes), or 0.
fn utf8_space(s: &[u8]) -> usize {
    match s {
        [0xc2, 0x85 | 0xa0, ..] => 2,
        [0xe1, 0x9a, 0x80, ..] | [0xe1, 0xa0, 0x8e, ..] => 3,
        [0xe2, 0x80, 0x80..=0x8a | 0xa8 | 0xa9 | 0xaf, ..] | [0xe2, 0x81, 0x9f, ..] => 3,
        [0xe3, 0x80, 0x80, ..] | [0xef, 0xbb, 0xbf, ..] => 3,
        _ => 0,
    }
}

/// A `Set-Cookie` field of the app's, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: Vec<u8>,
    pub attrs: Attrs,
}

/// The attributes the ticket's cookie copies from the app's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub path: Option<String>,
    pub domain: Option<String>,
    pub secure: bool,
    pub same_site: Option<String>,
    /// Unix seconds the cookie ends at, from `Max-Age` (which wins) or
    /// `Expires`; `None`: when the browser closes.
    pub expires: Option<u64>,
}

impl SetCookie {
    /// Whether the app removes the cookie: empty, or already expired.
    pub fn deletes(&self, now: u64) -> bool {
        self.value.is_empty() || self.attrs.expires.is_some_and(|t| t <= now)
    }
}

/// Reads `name=value; Attr=x; Flag`. `None` for a field without a name.
pub fn parse_set_cookie(field: &[u8], now: u64) -> Option<SetCookie> {
    let mut parts = field.split(|&b| b == b';');
    let first = parts.next()?.trim_ascii();
    let eq = memchr::memchr(b'=', first)?;
    let name = std::str::from_utf8(first[..eq].trim_ascii()).ok()?;
    if name.is_empty() {
        return None;
    }
    // quotes and all, as a browser keeps it and sends it back: an app
    // that quoted a value (Werkzeug does, for one with a space) reads it
    // unquoted itself
    let value = first[eq + 1..].trim_ascii();
    let mut attrs = Attrs::default();
    let mut max_age: Option<i64> = None;
    let mut expires: Option<u64> = None;
    for part in parts {
        let part = part.trim_ascii();
        let (key, val) = match memchr::memchr(b'=', part) {
            Some(i) => (part[..i].trim_ascii(), part[i + 1..].trim_ascii()),
            None => (part, &b""[..]),
        };
        let text = || std::str::from_utf8(val).ok().map(str::to_string);
        if key.eq_ignore_ascii_case(b"path") {
            attrs.path = text();
        } else if key.eq_ignore_ascii_case(b"domain") {
            attrs.domain = text();
        } else if key.eq_ignore_ascii_case(b"secure") {
            attrs.secure = true;
        } else if key.eq_ignore_ascii_case(b"samesite") {
            attrs.same_site = text();
        } else if key.eq_ignore_ascii_case(b"max-age") {
            max_age = std::str::from_utf8(val).ok().and_then(|v| v.parse().ok());
        } else if key.eq_ignore_ascii_case(b"expires") {
            expires = std::str::from_utf8(val).ok().and_then(http_date);
        }
    }
    attrs.expires = match max_age {
        Some(age) if age <= 0 => Some(0),
        Some(age) => Some(now.saturating_add(age as u64)),
        None => expires,
    };
    Some(SetCookie {
        name: name.to_string(),
        value: value.to_vec(),
        attrs,
    })
}

/// An `Expires` date in unix seconds: IMF-fixdate, RFC 850 and asctime
/// (RFC 9110), and the `01-Jan-2026` form many frameworks still write.
fn http_date(text: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(text)
        .or_else(|_| httpdate::parse_http_date(&text.replacen('-', " ", 2)))
        .ok()?;
    Some(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Takes the app's `Set-Cookie` fields for the session's `path` out of a
/// response, in order; the others stay in theirs. An app cookie set for
/// another path is another cookie in the browser (a `/legacy` one, say),
/// not the session: it passes through untouched. One set with no `Path`
/// (or one that is not a path) is the request's default path's, which
/// `default_path_is_session` says is the session's or not, as a browser
/// would place it (RFC 6265 5.2.4).
pub fn take_set_cookies(
    headers: &mut HeaderMap,
    app: &[String],
    path: &str,
    default_path_is_session: bool,
    now: u64,
) -> Vec<SetCookie> {
    let is_app = |field: &HeaderValue| {
        parse_name(field.as_bytes()).is_some_and(|n| app.iter().any(|a| a.as_bytes() == n))
    };
    if !headers.get_all(SET_COOKIE).iter().any(is_app) {
        return Vec::new();
    }
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for field in headers.get_all(SET_COOKIE) {
        let parsed = is_app(field).then(|| parse_set_cookie(field.as_bytes(), now));
        match parsed {
            Some(Some(c)) if for_path(&c.attrs, path, default_path_is_session) => taken.push(c),
            Some(None) => {}
            _ => kept.push(field.clone()),
        }
    }
    headers.remove(SET_COOKIE);
    for f in kept {
        headers.append(SET_COOKIE, f);
    }
    taken
}

/// Whether a cookie with `attrs` is placed at the session's `path`.
fn for_path(attrs: &Attrs, path: &str, default_path_is_session: bool) -> bool {
    match attrs.path.as_deref().filter(|p| p.starts_with('/')) {
        Some(p) => p == path,
        None => default_path_is_session,
    }
}

/// The default path of a request's cookies (RFC 6265 5.1.4): its path up
/// to the last `/`, or `/`.
pub fn default_path(request_path: &str) -> &str {
    match request_path.rfind('/') {
        Some(0) | None => "/",
        Some(i) if request_path.starts_with('/') => &request_path[..i],
        Some(_) => "/",
    }
}

/// Drops a backend's `Set-Cookie` fields for any of `tickets` (every
/// ticket cookie the configuration defines): only the proxy issues
/// tickets, and a backend on the same host that could set one could plant
/// a ticket in a victim's browser. The name is compared as a browser
/// reads it (spaces and tabs around it trimmed), without regard to case.
/// Returns how many were dropped.
pub fn drop_tickets(headers: &mut HeaderMap, tickets: &[String]) -> usize {
    let is_ticket = |field: &HeaderValue| {
        let field = field.as_bytes();
        let end = memchr::memchr2(b'=', b';', field).unwrap_or(field.len());
        let name = field[..end].trim_ascii();
        tickets
            .iter()
            .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
    };
    let all = headers.get_all(SET_COOKIE);
    let dropped = all.iter().filter(|f| is_ticket(f)).count();
    if dropped == 0 {
        return 0;
    }
    let kept: Vec<HeaderValue> = all.iter().filter(|f| !is_ticket(f)).cloned().collect();
    headers.remove(SET_COOKIE);
    for f in kept {
        headers.append(SET_COOKIE, f);
    }
    dropped
}

fn parse_name(field: &[u8]) -> Option<&[u8]> {
    let end = memchr::memchr2(b'=', b';', field)?;
    (field[end] == b'=').then(|| field[..end].trim_ascii())
}

/// The ticket's `Set-Cookie`: the app's attributes, `HttpOnly` always,
/// `Secure` over HTTPS, and a lifetime no longer than what is left of the
/// session's absolute timeout.
pub fn ticket_cookie(
    name: &str,
    value: &str,
    attrs: &Attrs,
    until: u64,
    now: u64,
    https: bool,
) -> Option<HeaderValue> {
    let mut s = String::with_capacity(name.len() + value.len() + 96);
    s.push_str(name);
    s.push('=');
    s.push_str(value);
    push_attrs(&mut s, name, attrs, https);
    if let Some(expires) = attrs.expires {
        let age = expires.min(until).saturating_sub(now);
        s.push_str("; Max-Age=");
        s.push_str(itoa::Buffer::new().format(age));
        s.push_str("; Expires=");
        s.push_str(&httpdate::fmt_http_date(
            UNIX_EPOCH + Duration::from_secs(expires.min(until)),
        ));
    }
    HeaderValue::try_from(s).ok()
}

/// Clears the browser's ticket (the session is gone).
pub fn clear_cookie(name: &str, attrs: &Attrs, https: bool) -> Option<HeaderValue> {
    let mut s = String::with_capacity(name.len() + 96);
    s.push_str(name);
    s.push('=');
    push_attrs(&mut s, name, attrs, https);
    s.push_str("; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
    HeaderValue::try_from(s).ok()
}

/// The ticket cookie's attributes. A `__Host-` name is `Secure`, on `/`,
/// with no `Domain`, whatever the app's cookie had (browsers refuse it
/// otherwise); a `__Secure-` one is `Secure`.
fn push_attrs(s: &mut String, name: &str, attrs: &Attrs, https: bool) {
    let host_only = name.starts_with("__Host-");
    s.push_str("; Path=");
    s.push_str(match host_only {
        true => "/",
        false => attrs.path.as_deref().unwrap_or("/"),
    });
    if let Some(domain) = attrs.domain.as_ref().filter(|_| !host_only) {
        s.push_str("; Domain=");
        s.push_str(domain);
    }
    if attrs.secure || https || host_only || name.starts_with("__Secure-") {
        s.push_str("; Secure");
    }
    s.push_str("; HttpOnly");
    if let Some(same_site) = &attrs.same_site {
        s.push_str("; SameSite=");
        s.push_str(same_site);
    }
}

/// `SystemTime` for a unix second, for tests and logs.
pub fn unix_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    fn cookies(h: &HeaderMap) -> Vec<&str> {
        h.get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn the_ticket_becomes_the_app_cookies_in_place() {
        let app = vec!["session".to_string()];
        let mut h = headers(&["a=1;slb_sid=T; b=\"2\"", "c=3"]);
        rewrite(&mut h, "slb_sid", &app, b"session=BLOB");
        assert_eq!(cookies(&h), ["a=1; session=BLOB; b=\"2\"", "c=3"]);
    }

    #[test]
    fn client_app_cookies_and_extra_tickets_are_dropped() {
        let app = vec!["session".to_string(), "session.sig".to_string()];
        let mut h = headers(&["session=forged", "x=1; slb_sid=T; slb_sid=U; session.sig=s"]);
        rewrite(&mut h, "slb_sid", &app, b"");
        assert_eq!(cookies(&h), ["x=1"]);
        let mut h = headers(&["x=1"]);
        rewrite(&mut h, "slb_sid", &app, b"");
        assert_eq!(cookies(&h), ["x=1"]);
    }

    /// What each field becomes, with the app's `session` and `session.sig`
    /// and the ticket `slb_sid=T` standing for `session=BLOB`.
    fn rewritten(field: &[u8]) -> Vec<u8> {
        let app = vec!["session".to_string(), "session.sig".to_string()];
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_bytes(field).unwrap());
        rewrite(&mut h, "slb_sid", &app, b"session=BLOB");
        let all: Vec<&[u8]> = h.get_all(COOKIE).iter().map(|v| v.as_bytes()).collect();
        all.join(&b" | "[..])
    }

    #[test]
    fn crumbs_some_parser_reads_as_ours_go() {
        let cases: [(&[u8], &[u8]); 16] = [
            // trimmed by Python's str.strip (Werkzeug 3.1.8, Django)
            (b"\xa0session=evil; slb_sid=T; a=1", b"session=BLOB; a=1"),
            (b"a=1; session\x85=evil; slb_sid=T", b"a=1; session=BLOB"),
            (b"\x85slb_sid=U; slb_sid=T", b"session=BLOB"),
            // UTF-8 white space, for parsers that decode before trimming
            (
                "a=1; \u{3000}session=x; \u{feff}session.sig=y".as_bytes(),
                b"a=1 | session=BLOB",
            ),
            (b"session\xc2\xa0=x; a=1", b"a=1 | session=BLOB"),
            // any case (ASP.NET)
            (
                b"SESSION=x; Session.Sig=y; SLB_SID=z; a=1",
                b"a=1 | session=BLOB",
            ),
            // cookies SimpleCookie finds after a blank, and RFC 2965
            // parsers after a comma
            (b"a=1 session=evil; b=2", b"b=2 | session=BLOB"),
            (b"a=1\tslb_sid=U; slb_sid=T", b"session=BLOB"),
            (b"a=1,session=evil; b=2", b"b=2 | session=BLOB"),
            (b"slb_sid=T, session=evil; b=2", b"session=BLOB; b=2"),
            // legacy attributes and mode switches
            (b"$Version=1; b=2; $Path=/", b"b=2 | session=BLOB"),
            (b"a=1, $Version=1; b=2", b"b=2 | session=BLOB"),
            // no `=`, or blanks around it
            (b"session; b=2", b"b=2 | session=BLOB"),
            (b"session = evil; b=2", b"b=2 | session=BLOB"),
            (b"=x; session==x; b=2", b"=x; b=2 | session=BLOB"),
            // a field of nothing but ours goes
            (b"\xa0session=x; session.sig=y", b"session=BLOB"),
        ];
        for (sent, forwarded) in cases {
            assert_eq!(
                rewritten(sent).escape_ascii().to_string(),
                forwarded.escape_ascii().to_string(),
                "{}",
                sent.escape_ascii()
            );
        }
    }

    #[test]
    fn crumbs_of_no_one_pass_byte_for_byte() {
        // names that only contain or resemble ours, values that hold them,
        // quotes no parser takes off a name, obs-text
        let field: &[u8] = b"theme=dark; a=b=c; q=\"quoted value\"; e=; p=%73ession; \
            sessionx=1; x_slb_sid=2; a2=session=x; list=1,2; u=a b; \"session\"=x; \
            s\xa0ession=x; sess=\xe2\x80\x8b; t=\xff";
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_bytes(field).unwrap());
        rewrite(&mut h, "slb_sid", &["session".to_string()], b"");
        assert_eq!(h.get(COOKIE).unwrap().as_bytes(), field);
        // and around ours, each in its place
        assert_eq!(
            rewritten(b"theme=dark;a=b=c; SESSION=x;q=\"v w\" ;slb_sid=T;list=1,2"),
            b"theme=dark;a=b=c; q=\"v w\"; session=BLOB; list=1,2"
        );
    }

    #[test]
    fn set_cookies_read_as_browsers_do() {
        let now = 1_000_000;
        let c = parse_set_cookie(
            b"session=eyJ; Expires=Wed, 21 Oct 2037 07:28:00 GMT; HttpOnly; Path=/app; SameSite=Lax; Secure",
            now,
        )
        .unwrap();
        assert_eq!(c.name, "session");
        assert_eq!(c.value, b"eyJ");
        assert_eq!(c.attrs.path.as_deref(), Some("/app"));
        assert_eq!(c.attrs.same_site.as_deref(), Some("Lax"));
        assert!(c.attrs.secure);
        assert_eq!(c.attrs.expires, Some(2_139_722_880));
        assert!(!c.deletes(now));
        // Flask's logout
        let gone = parse_set_cookie(
            b"session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; HttpOnly; Path=/",
            now,
        )
        .unwrap();
        assert!(gone.deletes(now));
        let aged = parse_set_cookie(
            b"s=v; max-age=60; expires=Thu, 01-Jan-1970 00:00:00 GMT",
            now,
        )
        .unwrap();
        assert_eq!(aged.attrs.expires, Some(now + 60));
        let dashed = parse_set_cookie(b"s=v; expires=Thu, 01-Jan-2037 00:00:00 GMT", now).unwrap();
        assert_eq!(dashed.attrs.expires, Some(2_114_380_800));
    }

    #[test]
    fn app_set_cookies_are_taken_others_kept_in_order() {
        let mut h = HeaderMap::new();
        for v in ["a=1", "session=X; Path=/", "b=2", "session.sig=Y"] {
            h.append(SET_COOKIE, HeaderValue::from_static(v));
        }
        let app = vec!["session".to_string(), "session.sig".to_string()];
        let taken = take_set_cookies(&mut h, &app, "/", true, 0);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[1].name, "session.sig");
        let left: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(left, ["a=1", "b=2"]);
    }

    #[test]
    fn app_cookies_on_other_paths_are_other_cookies() {
        let mut h = HeaderMap::new();
        for v in [
            "session=; Path=/legacy; Max-Age=0",
            "session=X; Path=/",
            "session=Y",
            "session=Z; Path=relative",
        ] {
            h.append(SET_COOKIE, HeaderValue::from_static(v));
        }
        let app = vec!["session".to_string()];
        let taken = take_set_cookies(&mut h.clone(), &app, "/", true, 0);
        let values: Vec<_> = taken.iter().map(|c| c.value.as_slice()).collect();
        assert_eq!(values, [&b"X"[..], b"Y", b"Z"]);
        // a request under /app: a cookie with no Path is /app's
        let taken = take_set_cookies(&mut h, &app, "/", false, 0);
        assert_eq!(taken.len(), 1);
        let left: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(
            left,
            [
                "session=; Path=/legacy; Max-Age=0",
                "session=Y",
                "session=Z; Path=relative"
            ]
        );
        assert_eq!(default_path("/"), "/");
        assert_eq!(default_path("/login"), "/");
        assert_eq!(default_path("/app/login"), "/app");
        assert_eq!(default_path("/app/"), "/app");
        assert_eq!(default_path(""), "/");
        assert_eq!(default_path("*"), "/");
    }

    #[test]
    fn backends_cannot_set_a_ticket() {
        let mut h = HeaderMap::new();
        for v in [
            "a=1",
            "slb_sid=planted; Path=/",
            " SLB_SID =x",
            "other_sid=y",
            "slb_sidx=z",
        ] {
            h.append(SET_COOKIE, HeaderValue::from_static(v));
        }
        let tickets = vec!["slb_sid".to_string(), "other_sid".to_string()];
        assert_eq!(drop_tickets(&mut h, &tickets), 3);
        let left: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(left, ["a=1", "slb_sidx=z"]);
        assert_eq!(drop_tickets(&mut h, &tickets), 0);
    }

    #[test]
    fn ticket_cookies_carry_the_app_attributes_bounded() {
        let attrs = Attrs {
            path: Some("/".into()),
            domain: Some("example.com".into()),
            secure: false,
            same_site: Some("Lax".into()),
            expires: Some(5_000),
        };
        let v = ticket_cookie("slb_sid", "ID.S", &attrs, 2_000, 1_000, true).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "slb_sid=ID.S; Path=/; Domain=example.com; Secure; HttpOnly; SameSite=Lax; Max-Age=1000; Expires=Thu, 01 Jan 1970 00:33:20 GMT"
        );
        let v = ticket_cookie("slb_sid", "ID", &Attrs::default(), 2_000, 1_000, false).unwrap();
        assert_eq!(v.to_str().unwrap(), "slb_sid=ID; Path=/; HttpOnly");
        // __Host-: Secure, on /, no Domain, whatever the app's had
        let app = Attrs {
            path: Some("/app".into()),
            ..attrs.clone()
        };
        let v = ticket_cookie("__Host-sid", "ID", &app, 2_000, 1_000, false).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "__Host-sid=ID; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=1000; Expires=Thu, 01 Jan 1970 00:33:20 GMT"
        );
        let v = clear_cookie("__Secure-sid", &Attrs::default(), false).unwrap();
        assert_eq!(
            v.to_str().unwrap(),
            "__Secure-sid=; Path=/; Secure; HttpOnly; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"
        );
    }
}
