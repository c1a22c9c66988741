//! Reading a request's `Cookie` fields, shared by the route cookie
//! (`proxy::sticky`) and the session ticket (`session`): both look up one
//! cookie on every request of their pools.

use http::header::{COOKIE, HeaderMap};

/// The value of the first cookie called `name` in the request, as bytes.
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    headers
        .get_all(COOKIE)
        .iter()
        .find_map(|v| cookie_in(v.as_bytes(), name.as_bytes()))
}

/// Scans one `Cookie` header (`a=1; b=2`) byte by byte: on the request
/// path of every sticky request, `str` splitting and trimming cost several
/// times more.
fn cookie_in<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = header;
    loop {
        let start = rest.iter().position(|&b| b != b' ' && b != b'\t')?;
        rest = &rest[start..];
        let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
        let pair = &rest[..end];
        if pair.len() > name.len() && pair.starts_with(name) && pair[name.len()] == b'=' {
            let mut value = &pair[name.len() + 1..];
            while let [head @ .., b' ' | b'\t'] = value {
                value = head;
            }
            return Some(value);
        }
        if end == rest.len() {
            return None;
        }
        rest = &rest[end + 1..];
    }
}
