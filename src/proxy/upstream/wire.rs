//! HTTP/1.1 on the wire to a backend: the request head sessionlb writes,
//! the response head it parses, and how a response body is delimited.
//!
//! The response head is parsed once, with `httparse`, straight from the
//! connection's read buffer; header values are slices of that buffer, not
//! copies.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::proxy::headers::Hop;

/// The largest response head accepted from a backend.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields accepted in a response head.
pub const MAX_HEADERS: usize = 100;
/// A chunk-size line or trailer section longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// A backend's response that cannot be read as HTTP/1.1.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("invalid response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunked body")]
    Chunked,
    #[error("a transfer coding other than chunked")]
    TransferEncoding,
}

/// A request head being written for a backend, field by field: the
/// request line, then fields as the header rules decide, then
/// [`RequestHead::finish`].
pub struct RequestHead {
    bytes: Vec<u8>,
    /// Where `host: <backend address>` goes, for a request that names no
    /// host (HTTP/1.0): it depends on the backend each attempt goes to.
    host_at: Option<u32>,
}

/// A request head ready for any backend (see [`RequestHead::finish`]).
pub struct FinishedHead {
    pub bytes: Vec<u8>,
    /// The `host` line each attempt writes for its backend, as the
    /// position and length of the one there now.
    pub backend_host: Option<(u32, u32)>,
}

impl RequestHead {
    /// Starts with the request line: origin-form `target`, HTTP/1.1. A
    /// target that is only a query (from `http://host?q`) gets its path,
    /// `/`.
    pub fn new(method: &Method, target: &str, fields: usize) -> RequestHead {
        RequestHead::with_room(method, target, fields, 0)
    }

    /// [`RequestHead::new`] for fields that hold `extra` bytes more than
    /// usual.
    pub fn with_room(method: &Method, target: &str, fields: usize, extra: usize) -> RequestHead {
        let mut bytes = Vec::with_capacity(256 + 64 * fields + target.len() + extra);
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.push(b' ');
        if target.starts_with('?') {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(target.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        RequestHead {
            bytes,
            host_at: None,
        }
    }

    pub fn field(&mut self, name: &str, value: &[u8]) {
        self.joined(name, [value], b"");
    }

    /// One field whose value is `values` joined by ", ".
    pub fn list<'a>(&mut self, name: &str, values: impl IntoIterator<Item = &'a [u8]>) {
        self.joined(name, values, b", ");
    }

    /// One field whose value is `values` joined by `separator`.
    pub fn joined<'a>(
        &mut self,
        name: &str,
        values: impl IntoIterator<Item = &'a [u8]>,
        separator: &[u8],
    ) {
        let head = &mut self.bytes;
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                head.extend_from_slice(separator);
            }
            head.extend_from_slice(value);
        }
        head.extend_from_slice(b"\r\n");
    }

    /// Here goes `host: <the backend's address>`, written per attempt
    /// ([`FinishedHead::for_backend`]), as nginx's default `Host` is the
    /// upstream's.
    pub fn host_for_backend(&mut self) {
        self.host_at = Some(self.bytes.len() as u32);
    }

    /// Ends the head; `chunked` announces a body of unknown length.
    pub fn finish(mut self, chunked: bool) -> FinishedHead {
        if chunked {
            self.bytes
                .extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        self.bytes.extend_from_slice(b"\r\n");
        FinishedHead {
            bytes: self.bytes,
            backend_host: self.host_at.map(|at| (at, 0)),
        }
    }
}

impl FinishedHead {
    /// Writes the `host` line for a backend at `addr`, when the head has
    /// one to write.
    pub fn for_backend(&mut self, addr: std::net::SocketAddr) {
        if let Some((at, len)) = self.backend_host {
            let line = format!("host: {addr}\r\n");
            let written = line.len() as u32;
            let (at_, end) = (at as usize, (at + len) as usize);
            self.bytes.splice(at_..end, line.into_bytes());
            self.backend_host = Some((at, written));
        }
    }
}

/// A final response head (interim 1xx responses are skipped).
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// Without hop-by-hop fields (see [`Head::hop`]), except `Upgrade` in
    /// a `101`.
    pub headers: HeaderMap,
    /// The hop-by-hop fields the response had; `Connection` is kept in
    /// `headers` when it names other fields, for
    /// `headers::finish_response_fields`.
    pub hop: Hop,
    pub body: Decoder,
    /// The backend keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parses the response head at the start of `buf`, removing it (and any
/// interim 1xx responses before it) from `buf`; `head_only`: it answers a
/// `HEAD` request, so it has no body. `Ok(None)`: more bytes are needed.
pub fn parse_response(buf: &mut BytesMut, head_only: bool) -> Result<Option<Head>, WireError> {
    loop {
        // position of each header's name and value in the head
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let (len, code, http11, count) = {
            let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut []);
            let status = httparse::ParserConfig::default()
                .parse_response_with_uninit_headers(&mut resp, buf, &mut fields)
                .map_err(WireError::Head)?;
            let httparse::Status::Complete(len) = status else {
                if buf.len() > MAX_HEAD {
                    return Err(WireError::HeadTooLarge);
                }
                return Ok(None);
            };
            if len > MAX_HEAD {
                return Err(WireError::HeadTooLarge);
            }
            let base = buf.as_ptr() as usize;
            for (h, span) in resp.headers.iter().zip(spans.iter_mut()) {
                *span = (
                    (h.name.as_ptr() as usize - base) as u32,
                    h.name.len() as u32,
                    (h.value.as_ptr() as usize - base) as u32,
                    h.value.len() as u32,
                );
            }
            let code = resp.code.unwrap_or(0);
            (len, code, resp.version == Some(1), resp.headers.len())
        };
        if (100..200).contains(&code) && code != 101 {
            // 100 Continue, 103 Early Hints: the final response follows
            buf.advance(len);
            continue;
        }
        let status =
            StatusCode::from_u16(code).map_err(|_| WireError::Head(httparse::Error::Status))?;
        let head = buf.split_to(len).freeze();
        return NAMES
            .with(|names| match names.try_borrow_mut() {
                Ok(mut names) => build(
                    &head,
                    &spans[..count],
                    status,
                    http11,
                    head_only,
                    &mut names,
                ),
                Err(_) => build(
                    &head,
                    &spans[..count],
                    status,
                    http11,
                    head_only,
                    &mut NameCache(Vec::new()), // no slots: every name looked up
                ),
            })
            .map(Some);
    }
}

fn build(
    head: &Bytes,
    spans: &[(u32, u32, u32, u32)],
    status: StatusCode,
    http11: bool,
    head_only: bool,
    names: &mut NameCache,
) -> Result<Head, WireError> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut hop = Hop::default();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let (mut close, mut keep_alive) = (false, false);
    for &(name, name_len, value, value_len) in spans {
        let (name, value) = (name as usize, value as usize);
        let Some(name) = names.get(&head[name..name + name_len as usize]) else {
            return Err(WireError::Head(httparse::Error::HeaderName));
        };
        let value = head.slice(value..value + value_len as usize);
        if name == header::CONTENT_LENGTH {
            let n = parse_length(&value).ok_or(WireError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::ContentLength);
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // `chunked`, once: the proxy decodes no other coding, and one
            // it passed on undecoded would reach the client as the body
            if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(WireError::TransferEncoding);
            }
            chunked = true;
        } else if name == header::CONNECTION {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        if hop.note(name.as_str(), &value) {
            let named = hop.names_others && name == header::CONNECTION;
            let upgrade = status == StatusCode::SWITCHING_PROTOCOLS && name == header::UPGRADE;
            if !named && !upgrade {
                continue;
            }
        }
        let Ok(value) = HeaderValue::from_maybe_shared(value) else {
            return Err(WireError::Head(httparse::Error::HeaderValue));
        };
        headers.append(name, value);
    }
    let mut keep_alive = if http11 { !close } else { keep_alive && !close };
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodiless {
        Decoder::Done
    } else if chunked {
        // Transfer-Encoding wins over Content-Length, and a message with
        // both is not trusted to frame the next one; nor is an HTTP/1.0
        // one that says chunked, which HTTP/1.0 does not know
        if length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        keep_alive &= http11;
        Decoder::Chunked(Chunk::Size)
    } else {
        match length {
            Some(0) => Decoder::Done,
            Some(n) => Decoder::Length(n),
            None => Decoder::Close,
        }
    };
    if matches!(body, Decoder::Close) {
        keep_alive = false;
    }
    Ok(Head {
        status,
        headers,
        hop,
        body,
        keep_alive,
    })
}

/// Slots of the per-worker cache of response field names.
const NAME_SLOTS: usize = 64;

/// A backend sends the same dozen field names in every response: each
/// name as sent, with its `HeaderName`, in a slot chosen by its length and
/// two of its bytes. A hit costs a compare instead of lowercasing, a
/// lookup among the standard names and, for other names, a copy.
struct NameCache(Vec<Option<(Box<[u8]>, HeaderName)>>);

thread_local! {
    static NAMES: std::cell::RefCell<NameCache> =
        std::cell::RefCell::new(NameCache(vec![None; NAME_SLOTS]));
}

impl NameCache {
    fn get(&mut self, raw: &[u8]) -> Option<HeaderName> {
        let (Some(&first), Some(&last)) = (raw.first(), raw.last()) else {
            return None;
        };
        let slot = (raw.len() * 7 + usize::from(first) * 3 + usize::from(last)) % NAME_SLOTS;
        let slot = self.0.get_mut(slot);
        if let Some(Some((cached, name))) = &slot
            && **cached == *raw
        {
            return Some(name.clone());
        }
        let name = HeaderName::from_bytes(raw).ok()?;
        if let Some(slot) = slot {
            *slot = Some((raw.into(), name.clone()));
        }
        Some(name)
    }
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Reads a chunk-size line at the start of `buf` (RFC 9112 §7.1): one
/// or more hex digits, optional whitespace and extensions (ignored), CRLF.
/// `Ok(Some((line length, size)))`, or `Ok(None)` when more bytes are
/// needed. A line longer than [`MAX_CHUNK_LINE`] is refused however it
/// arrives, as are a size without digits, one over 64 bits, a bare LF and
/// control bytes.
pub fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, WireError> {
    let mut size: u64 = 0;
    let mut digits = 0;
    for &b in buf {
        let value = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        if size >> 60 != 0 {
            return Err(WireError::Chunked);
        }
        size = size << 4 | u64::from(value);
        digits += 1;
    }
    let rest = &buf[digits..];
    let Some(newline) = memchr::memchr(b'\n', rest) else {
        if buf.len() > MAX_CHUNK_LINE || (digits == 0 && !rest.is_empty()) {
            return Err(WireError::Chunked);
        }
        return Ok(None);
    };
    let line = digits + newline + 1;
    if digits == 0 || line > MAX_CHUNK_LINE || newline == 0 || rest[newline - 1] != b'\r' {
        return Err(WireError::Chunked);
    }
    let tail = &rest[..newline - 1];
    let after_space = tail.iter().position(|&b| b != b' ' && b != b'\t');
    let extensions_ok = match after_space {
        None => true,
        Some(at) => {
            tail[at] == b';'
                && tail
                    .iter()
                    .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
        }
    };
    if !extensions_ok {
        return Err(WireError::Chunked);
    }
    Ok(Some((line, size)))
}

/// Where a response body ends, and how much of it is left.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// This many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunk),
    /// Everything until the backend closes the connection.
    Close,
    /// The body has ended.
    Done,
}

/// Where a chunked body decoder is.
#[derive(Debug, Clone)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    /// Trailer fields (dropped), with how many bytes of them were seen.
    Trailers(usize),
}

/// What the decoder made of the bytes it has.
pub enum Decoded<P = Bytes> {
    Data(P),
    /// More bytes from the backend are needed.
    More,
    End,
}

/// Where a decoder takes its bytes from: the connection's buffer, whose
/// body bytes it hands out, or a look at bytes that takes nothing.
trait Input {
    type Piece;
    fn bytes(&self) -> &[u8];
    fn skip(&mut self, n: usize);
    fn take(&mut self, n: usize) -> Self::Piece;
}

impl Input for BytesMut {
    type Piece = Bytes;

    #[inline]
    fn bytes(&self) -> &[u8] {
        self
    }

    #[inline]
    fn skip(&mut self, n: usize) {
        self.advance(n);
    }

    #[inline]
    fn take(&mut self, n: usize) -> Bytes {
        self.split_to(n).freeze()
    }
}

/// Bytes looked at ([`Decoder::check`]).
struct Look<'a>(&'a [u8]);

impl Input for Look<'_> {
    type Piece = ();

    fn bytes(&self) -> &[u8] {
        self.0
    }

    fn skip(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }

    fn take(&mut self, n: usize) {
        self.skip(n);
    }
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// The body's exact remaining length, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        self.step(buf)
    }

    /// Reads through what `buf` holds of the body, as [`Decoder::decode`]
    /// would, without taking anything: an error is one `decode` will meet.
    /// For a response whose body is broken from its first bytes, found
    /// while its head can still become a `502`.
    pub fn check(&self, buf: &[u8]) -> Result<(), WireError> {
        let mut decoder = self.clone();
        let mut look = Look(buf);
        loop {
            match decoder.step(&mut look)? {
                Decoded::Data(()) => {}
                Decoded::More | Decoded::End => return Ok(()),
            }
        }
    }

    /// The decoder itself, for either kind of [`Input`].
    fn step<I: Input>(&mut self, buf: &mut I) -> Result<Decoded<I::Piece>, WireError> {
        loop {
            match self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(n) | Decoder::Chunked(Chunk::Data(n)) => {
                    let available = buf.bytes().len();
                    if available == 0 {
                        return Ok(Decoded::More);
                    }
                    let take = usize::try_from(*n).unwrap_or(usize::MAX).min(available);
                    *n -= take as u64;
                    if *n == 0 {
                        *self = match self {
                            Decoder::Length(_) => Decoder::Done,
                            _ => Decoder::Chunked(Chunk::DataEnd),
                        };
                    }
                    return Ok(Decoded::Data(buf.take(take)));
                }
                Decoder::Close => {
                    let available = buf.bytes().len();
                    if available == 0 {
                        return Ok(Decoded::More);
                    }
                    return Ok(Decoded::Data(buf.take(available)));
                }
                Decoder::Chunked(Chunk::Size) => match chunk_size(buf.bytes())? {
                    Some((used, size)) => {
                        buf.skip(used);
                        *self = Decoder::Chunked(if size == 0 {
                            Chunk::Trailers(0)
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    None => return Ok(Decoded::More),
                },
                Decoder::Chunked(Chunk::DataEnd) => {
                    let bytes = buf.bytes();
                    if bytes.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &bytes[..2] != b"\r\n" {
                        return Err(WireError::Chunked);
                    }
                    buf.skip(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers(seen)) => {
                    // each line ends with CRLF and holds no other CR or LF,
                    // as chunk_size wants of a size line: a reader that took
                    // a bare LF for a line's end would find another end of
                    // the body
                    let bytes = buf.bytes();
                    let Some(newline) = memchr::memchr(b'\n', bytes) else {
                        if *seen + bytes.len() > MAX_CHUNK_LINE {
                            return Err(WireError::Chunked);
                        }
                        return Ok(Decoded::More);
                    };
                    let end = newline.checked_sub(1).ok_or(WireError::Chunked)?;
                    if bytes[end] != b'\r' || memchr::memchr(b'\r', &bytes[..end]).is_some() {
                        return Err(WireError::Chunked);
                    }
                    buf.skip(end + 2);
                    if end == 0 {
                        *self = Decoder::Done;
                    } else {
                        *seen += end + 2;
                        if *seen > MAX_CHUNK_LINE {
                            return Err(WireError::Chunked);
                        }
                    }
                }
            }
        }
    }

    /// The backend closed the connection: the end of a close-delimited
    /// body, a truncated body otherwise.
    pub fn eof(&mut self) -> bool {
        match self {
            Decoder::Close | Decoder::Done => {
                *self = Decoder::Done;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: &Method) -> (Result<Option<Head>, WireError>, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        (parse_response(&mut buf, method == Method::HEAD), buf)
    }

    fn body(decoder: &mut Decoder, wire: &[u8], split: usize) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::More => break,
                    Decoded::End => return Ok(out),
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn heads_and_their_framing() {
        let (head, rest) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
            &Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
        assert!(matches!(head.body, Decoder::Length(5)) && head.keep_alive);
        assert_eq!(&rest[..], b"hello");

        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert!(head.unwrap().unwrap().body.is_done());
        let (head, _) = parse(
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            &Method::GET,
        );
        assert!(head.unwrap().unwrap().body.is_done());

        let (head, _) = parse("HTTP/1.1 200 OK\r\n\r\n", &Method::GET);
        let head = head.unwrap().unwrap();
        assert!(matches!(head.body, Decoder::Close) && !head.keep_alive);

        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            &Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert!(matches!(head.body, Decoder::Chunked(_)) && !head.keep_alive);
        assert!(head.headers.get("content-length").is_none());
        assert!(head.headers.get("transfer-encoding").is_none());
        // HTTP/1.0 knows no chunked coding: such a connection is not reused
        let (head, _) = parse(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            &Method::GET,
        );
        let head = head.unwrap().unwrap();
        assert!(matches!(head.body, Decoder::Chunked(_)) && !head.keep_alive);

        let (head, _) = parse("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &Method::GET);
        assert!(!head.unwrap().unwrap().keep_alive);
        let (head, _) = parse(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            &Method::GET,
        );
        assert!(head.unwrap().unwrap().keep_alive);
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            &Method::GET,
        );
        assert!(!head.unwrap().unwrap().keep_alive);
    }

    #[test]
    fn responses_lose_their_hop_by_hop_fields() {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret, content-length\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nContent-Length: 0\r\nAccept-Ranges: bytes\r\n\r\n";
        let Head {
            mut headers, hop, ..
        } = parse(text, &Method::GET).0.unwrap().unwrap();
        crate::proxy::headers::finish_response_fields(&mut headers, hop, false);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["accept-ranges", "content-length"]);
        // a 101 keeps its handshake
        let text = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade, x-a\r\nUpgrade: websocket\r\nX-A: 1\r\n\r\n";
        let Head {
            mut headers, hop, ..
        } = parse(text, &Method::GET).0.unwrap().unwrap();
        crate::proxy::headers::finish_response_fields(&mut headers, hop, true);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert!(headers.get("x-a").is_none());
    }

    #[test]
    fn field_names_from_the_cache_are_the_names() {
        for _ in 0..2 {
            for raw in [
                "Content-Type",
                "content-type",
                "X-Backend",
                "x-backend",
                "X-A",
                "Date",
            ] {
                let name = NAMES.with_borrow_mut(|n| n.get(raw.as_bytes())).unwrap();
                assert_eq!(name.as_str(), raw.to_ascii_lowercase());
            }
        }
        assert!(NAMES.with_borrow_mut(|n| n.get(b"")).is_none());
        assert!(NAMES.with_borrow_mut(|n| n.get(b"bad name")).is_none());
    }

    #[test]
    fn interim_responses_are_skipped_and_partial_heads_wait() {
        let (head, _) = parse(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            &Method::POST,
        );
        assert_eq!(head.unwrap().unwrap().status, 201);
        let (head, rest) = parse("HTTP/1.1 200 OK\r\nContent-Le", &Method::GET);
        assert!(head.unwrap().is_none());
        assert_eq!(rest.len(), 27);
        let (head, _) = parse(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(head.unwrap().unwrap().status, 101);
    }

    #[test]
    fn bad_heads_are_refused() {
        for bad in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(parse(bad, &Method::GET).0.is_err(), "{bad:?}");
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X-A: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(parse(&many, &Method::GET).0.is_err());
        let large = format!("HTTP/1.1 200 OK\r\nX-A: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(
            parse(&large, &Method::GET).0,
            Err(WireError::HeadTooLarge)
        ));
        // equal repeated lengths are one length
        let (head, _) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            &Method::GET,
        );
        assert!(matches!(head.unwrap().unwrap().body, Decoder::Length(3)));
    }

    #[test]
    fn chunked_bodies_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nC\r\nworld, again\r\n0\r\nTrailer: x\r\n\r\n";
        for split in [1, 2, 3, 7, wire.len()] {
            let mut d = Decoder::Chunked(Chunk::Size);
            assert_eq!(
                body(&mut d, wire, split).unwrap(),
                b"hello world, again",
                "split {split}"
            );
            assert!(d.is_done());
        }
        let mut d = Decoder::Chunked(Chunk::Size);
        assert!(body(&mut d, b"5\r\nhelloXX", 64).is_err());
        let mut d = Decoder::Chunked(Chunk::Size);
        assert!(body(&mut d, b"zz\r\n", 64).is_err());
        // trailer lines end with CRLF and hold no bare CR or LF
        for bad in [
            &b"0\r\nX: 1\rY: 2\r\n\r\n"[..],
            b"0\r\nX: 1\nY: 2\r\n\r\n",
            b"0\r\n\n",
        ] {
            for split in [1, 64] {
                let mut d = Decoder::Chunked(Chunk::Size);
                assert!(body(&mut d, bad, split).is_err(), "{bad:?}");
            }
        }
    }

    #[test]
    fn a_check_finds_what_decoding_would_without_taking_anything() {
        let d = Decoder::Chunked(Chunk::Size);
        for good in [
            &b"5\r\nhello\r\n"[..],
            b"5\r\nhel",
            b"",
            b"0\r\n\r\n",
            b"5\r",
        ] {
            assert!(d.check(good).is_ok(), "{good:?}");
        }
        for bad in [&b"5\r\nhello\r\nzz\r\n"[..], b";x\r\n", b"5\r\nhelloXX"] {
            assert!(d.check(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(d, Decoder::Chunked(Chunk::Size)));
        assert!(Decoder::Length(3).check(b"anything").is_ok());
    }

    #[test]
    fn chunk_size_lines_are_strict() {
        assert_eq!(chunk_size(b"5\r\n").unwrap(), Some((3, 5)));
        assert_eq!(chunk_size(b"fF \t;a=1;b\r\nrest").unwrap(), Some((12, 255)));
        assert_eq!(
            chunk_size(b"0000000000000000000a\r\n").unwrap(),
            Some((22, 10))
        );
        assert_eq!(
            chunk_size(b"ffffffffffffffff\r\n").unwrap(),
            Some((18, u64::MAX))
        );
        for partial in [&b""[..], b"5", b"5\r", b"5;ext", b"abc "] {
            assert_eq!(chunk_size(partial).unwrap(), None, "{partial:?}");
        }
        let long_ext = format!("5;{}\r\n", "x".repeat(MAX_CHUNK_LINE));
        let long_partial = format!("5;{}", "x".repeat(MAX_CHUNK_LINE));
        for bad in [
            &b"\r\n"[..],
            b";ext\r\n",
            b" 5\r\n",
            b"5\n",
            b"5 x\r\n",
            b"5;\x00\r\n",
            b"5;a\rb\r\n",
            b"10000000000000000\r\n",
            b"g",
            long_ext.as_bytes(),
            long_partial.as_bytes(),
        ] {
            assert!(
                chunk_size(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn length_and_close_bodies() {
        let mut d = Decoder::Length(5);
        assert_eq!(body(&mut d, b"hello", 2).unwrap(), b"hello");
        assert!(d.is_done());
        let mut d = Decoder::Close;
        assert_eq!(body(&mut d, b"until the end", 4).unwrap(), b"until the end");
        assert!(d.eof() && d.is_done());
        assert!(!Decoder::Length(3).eof());
    }

    #[test]
    fn request_heads() {
        let mut head = RequestHead::new(&Method::POST, "/a?b", 2);
        head.field("host", b"example.com");
        head.list("x-forwarded-for", [&b"1.1.1.1"[..], b"2.2.2.2"]);
        assert_eq!(
            head.finish(true).bytes,
            b"POST /a?b HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let head = RequestHead::new(&Method::GET, "?q=1", 0);
        assert!(
            head.finish(false)
                .bytes
                .starts_with(b"GET /?q=1 HTTP/1.1\r\n")
        );
        // no host of its own: the backend's, per attempt
        let mut head = RequestHead::new(&Method::GET, "/", 1);
        head.host_for_backend();
        head.field("x-a", b"1");
        let mut head = head.finish(false);
        head.for_backend("10.0.0.1:8080".parse().unwrap());
        assert_eq!(
            head.bytes,
            b"GET / HTTP/1.1\r\nhost: 10.0.0.1:8080\r\nx-a: 1\r\n\r\n"
        );
        head.for_backend("[::1]:80".parse().unwrap());
        assert_eq!(
            head.bytes,
            b"GET / HTTP/1.1\r\nhost: [::1]:80\r\nx-a: 1\r\n\r\n"
        );
    }
}
