//! Route cookies on the wire: reading a request's route token, and in
//! prefix mode moving `<token>~` between the app's session cookie and the
//! client, leaving every other byte of the headers as it was.

use http::HeaderValue;
use http::header::{COOKIE, HeaderMap, SET_COOKIE};

pub use crate::cookie::find as find_cookie;

/// Prefix mode, request side: finds `name=<token>~<value>`, rewrites it to
/// `name=<value>` in place and returns the token. Reads bytes, as
/// [`find_cookie`] does: a field that also holds a cookie with non-ASCII
/// bytes still gives its token up, rather than reach the app prefixed.
pub fn take_prefixed_token(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    for (index, value) in headers.get_all(COOKIE).iter().enumerate() {
        let s = value.as_bytes();
        let mut offset = 0;
        for pair in s.split(|&b| b == b';') {
            let start = offset;
            offset += pair.len() + 1;
            let Some(eq) = memchr::memchr(b'=', pair) else {
                continue;
            };
            let (k, v) = (&pair[..eq], &pair[eq + 1..]);
            if k.trim_ascii() != name.as_bytes() {
                continue;
            }
            let v_start = start + eq + 1 + (v.len() - v.trim_ascii_start().len());
            let v = v.trim_ascii();
            if let Some(tilde) = memchr::memchr(b'~', v)
                && let Ok(token) = std::str::from_utf8(&v[..tilde])
            {
                let rewritten = [&s[..v_start], &s[v_start + tilde + 1..]].concat();
                found = Some((index, rewritten, token.to_string()));
            }
            break;
        }
        if found.is_some() {
            break;
        }
    }
    let (index, rewritten, token) = found?;
    let new = HeaderValue::from_bytes(&rewritten).ok()?;
    // that one field only: another one equal to it (an HTTP/2 client's
    // cookie sent twice) is the client's own
    let values: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        .enumerate()
        .map(|(i, v)| if i == index { new.clone() } else { v.clone() })
        .collect();
    headers.remove(COOKIE);
    for v in values {
        headers.append(COOKIE, v);
    }
    Some(token)
}

/// Prefix mode, response side: `Set-Cookie: name=<value>; attrs` becomes
/// `name=<token>~<value>; attrs`. Empty values (deletions) stay as they are.
pub fn prefix_set_cookies(headers: &mut HeaderMap, name: &str, token: &str) {
    let needs = headers
        .get_all(SET_COOKIE)
        .iter()
        .any(|v| set_cookie_value_start(v, name).is_some());
    if !needs {
        return;
    }
    let values: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| match set_cookie_value_start(v, name) {
            Some(at) => {
                let bytes = v.as_bytes();
                let mut out = Vec::with_capacity(bytes.len() + token.len() + 1);
                out.extend_from_slice(&bytes[..at]);
                out.extend_from_slice(token.as_bytes());
                out.push(b'~');
                out.extend_from_slice(&bytes[at..]);
                HeaderValue::from_bytes(&out).unwrap_or_else(|_| v.clone())
            }
            None => v.clone(),
        })
        .collect();
    headers.remove(SET_COOKIE);
    for v in values {
        headers.append(SET_COOKIE, v);
    }
}

/// Where the value of a `Set-Cookie: name=value...` starts, when it is the
/// cookie `name` with a non-empty value. Blanks around the name and before
/// the value are skipped, as a browser skips them (RFC 6265 §5.2).
fn set_cookie_value_start(v: &HeaderValue, name: &str) -> Option<usize> {
    let bytes = v.as_bytes();
    let eq = memchr::memchr(b'=', bytes)?;
    if bytes[..eq].trim_ascii() != name.as_bytes() {
        return None;
    }
    let rest = &bytes[eq + 1..];
    let skip = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let value_start = eq + 1 + skip;
    match bytes.get(value_start) {
        None | Some(b';') => None,
        Some(_) => Some(value_start),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(COOKIE, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn finds_cookies() {
        let h = cookies(&["a=1; slb_route=tok ; b=2", "c=3;", "slb_routeX=no"]);
        assert_eq!(find_cookie(&h, "slb_route"), Some(&b"tok"[..]));
        assert_eq!(find_cookie(&h, "c"), Some(&b"3"[..]));
        assert_eq!(find_cookie(&h, "a"), Some(&b"1"[..]));
        assert_eq!(find_cookie(&h, "slb"), None);
        assert_eq!(find_cookie(&h, "b"), Some(&b"2"[..]));
        let h = cookies(&["x=; y=2"]);
        assert_eq!(find_cookie(&h, "x"), Some(&b""[..]));
        assert_eq!(find_cookie(&cookies(&[""]), "x"), None);
    }

    #[test]
    fn takes_the_prefixed_token_byte_for_byte() {
        let mut h = cookies(&["theme=dark; JSESSIONID=abc123~0F1E2D; lang=en", "x=1"]);
        assert_eq!(
            take_prefixed_token(&mut h, "JSESSIONID").as_deref(),
            Some("abc123")
        );
        let all: Vec<&str> = h
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all, ["theme=dark; JSESSIONID=0F1E2D; lang=en", "x=1"]);

        let mut h = cookies(&["JSESSIONID=plain"]);
        assert_eq!(take_prefixed_token(&mut h, "JSESSIONID"), None);
        assert_eq!(h[COOKIE], "JSESSIONID=plain");
    }

    #[test]
    fn prefixes_the_apps_set_cookie_byte_for_byte() {
        let mut h = HeaderMap::new();
        h.append(
            SET_COOKIE,
            "JSESSIONID=0F1E2D; Path=/app; HttpOnly; Secure"
                .parse()
                .unwrap(),
        );
        h.append(SET_COOKIE, "other=1; Path=/".parse().unwrap());
        h.append(SET_COOKIE, "JSESSIONID=; Max-Age=0".parse().unwrap());
        prefix_set_cookies(&mut h, "JSESSIONID", "abc123");
        let all: Vec<&str> = h
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(
            all,
            [
                "JSESSIONID=abc123~0F1E2D; Path=/app; HttpOnly; Secure",
                "other=1; Path=/",
                "JSESSIONID=; Max-Age=0"
            ]
        );
    }
}
