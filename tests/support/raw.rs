//! Raw TCP on both sides of the proxy, for hostile-HTTP tests.
//!
//! - [`RawBackend`]: a backend that records, per connection, every byte the
//!   proxy sent it, splits those bytes into requests (head, then a body
//!   framed by `Content-Length` or chunked, as the proxy frames it) without
//!   normalising anything, and answers each request with bytes the test
//!   chooses. After it answers `101`, the rest of that connection is
//!   recorded as part of the request that switched protocols.
//! - [`exchange`]: a client that writes raw bytes on a fresh connection and
//!   tells what came back first: a final response's status, or a close.
//! - HTTP/2 frames written and read by hand ([`h2_frame`], [`read_frame`]),
//!   for what a well-behaved HTTP/2 library will not send.
//!
//! Everything started here is stopped and joined when its handle drops.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What [`RawBackend`] answers when the test did not say otherwise.
pub const DEFAULT_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// The backend's answer to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Written as they are (may be empty).
    pub bytes: Vec<u8>,
    /// Close the connection after writing them.
    pub close: bool,
}

impl Reply {
    /// `bytes`, and the connection stays open.
    pub fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: false,
        }
    }

    /// `bytes`, then the backend closes the connection.
    pub fn then_close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: true,
        }
    }

    /// [`DEFAULT_REPLY`].
    pub fn ok() -> Reply {
        Reply::raw(DEFAULT_REPLY)
    }
}

/// One request as it reached the backend.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Which accepted connection it came on (0 = the first accepted).
    pub conn: usize,
    /// Its position on that connection (0 = the first request).
    pub index: usize,
    /// Its bytes exactly as received: head and body, and, after the
    /// backend answered it with `101`, everything that followed on the
    /// connection. A request whose framing could not be understood keeps
    /// everything that followed too.
    pub bytes: Vec<u8>,
    /// Length of the head (request line, fields, blank line) in `bytes`.
    pub head_len: usize,
}

impl RawRequest {
    pub fn head(&self) -> &[u8] {
        &self.bytes[..self.head_len]
    }

    /// The request line, without its CRLF.
    pub fn request_line(&self) -> String {
        let head = String::from_utf8_lossy(self.head());
        head.split("\r\n").next().unwrap_or_default().to_string()
    }

    /// The value of the first field called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        fields(self.head())
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The `x-request-id` the proxy forwarded.
    pub fn request_id(&self) -> Option<String> {
        self.header("x-request-id")
    }
}

/// What one accepted connection received.
#[derive(Debug, Clone, Default)]
pub struct ConnRecord {
    pub bytes: Vec<u8>,
    /// The proxy closed it (or it failed).
    pub closed: bool,
}

type Responder = dyn Fn(&RawRequest) -> Reply + Send + Sync;

struct Inner {
    stop: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
    responder: Box<Responder>,
}

#[derive(Default)]
struct State {
    conns: Vec<ConnRecord>,
    requests: Vec<RawRequest>,
    /// Clones of the accepted sockets, shut down on drop to end their
    /// threads' blocking reads and writes.
    sockets: Vec<TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

/// A recording raw HTTP/1.1 backend on an ephemeral loopback port; one
/// thread per connection.
pub struct RawBackend {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    /// The listening socket, shut down on drop to end the acceptor.
    listener: TcpListener,
    acceptor: Option<JoinHandle<()>>,
}

impl RawBackend {
    /// Answers every request with [`DEFAULT_REPLY`].
    pub fn start() -> RawBackend {
        RawBackend::with(|_| Reply::ok())
    }

    /// Answers each request with what `responder` says.
    pub fn with(responder: impl Fn(&RawRequest) -> Reply + Send + Sync + 'static) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            responder: Box::new(responder),
        });
        let acceptor = {
            let inner = inner.clone();
            let listener = listener.try_clone().unwrap();
            std::thread::spawn(move || accept(listener, inner))
        };
        RawBackend {
            addr,
            inner,
            listener,
            acceptor: Some(acceptor),
        }
    }

    /// Answers requests with `replies` in order, then with [`DEFAULT_REPLY`].
    pub fn scripted(replies: Vec<Reply>) -> RawBackend {
        let queue = Mutex::new(VecDeque::from(replies));
        RawBackend::with(move |_| queue.lock().unwrap().pop_front().unwrap_or_else(Reply::ok))
    }

    /// `{ addr = "..." }` for the proxy's configuration.
    pub fn entry(&self) -> String {
        super::entry(self.addr)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.inner.state.lock().unwrap().conns.len()
    }

    /// What each connection received so far, in the order accepted.
    pub fn conns(&self) -> Vec<ConnRecord> {
        self.inner.state.lock().unwrap().conns.clone()
    }

    /// Bytes received so far, over all connections.
    pub fn total_bytes(&self) -> usize {
        let state = self.inner.state.lock().unwrap();
        state.conns.iter().map(|c| c.bytes.len()).sum()
    }

    /// The requests received so far, in the order they were complete.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.inner.state.lock().unwrap().requests.clone()
    }

    /// The requests whose forwarded `x-request-id` is `id`.
    pub fn requests_with_id(&self, id: &str) -> Vec<RawRequest> {
        let state = self.inner.state.lock().unwrap();
        state
            .requests
            .iter()
            .filter(|r| r.request_id().as_deref() == Some(id))
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds for the requests received, up to `timeout`;
    /// returns whether it did.
    pub fn wait_requests(&self, timeout: Duration, pred: impl Fn(&[RawRequest]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.inner.state.lock().unwrap();
        loop {
            if pred(&state.requests) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self.inner.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // wake the acceptor (a listening socket shut down fails its
        // `accept` on Linux; a connection does elsewhere); it sees `stop`
        // and returns
        if socket2::SockRef::from(&self.listener)
            .shutdown(Shutdown::Read)
            .is_err()
        {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads = {
            let mut state = self.inner.state.lock().unwrap();
            for socket in &state.sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
            state.sockets.clear();
            std::mem::take(&mut state.threads)
        };
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept(listener: TcpListener, inner: Arc<Inner>) {
    for stream in listener.incoming() {
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let mut state = inner.state.lock().unwrap();
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let conn = state.conns.len();
        state.conns.push(ConnRecord::default());
        state.sockets.push(clone);
        let thread = {
            let inner = inner.clone();
            std::thread::spawn(move || serve(stream, conn, &inner))
        };
        state.threads.push(thread);
        inner.changed.notify_all();
    }
}

/// Reads a connection to its end, recording and answering its requests.
fn serve(mut stream: TcpStream, conn: usize, inner: &Inner) {
    let mut buf: Vec<u8> = Vec::new();
    // after a 101 (or framing it cannot follow): the request that owns
    // everything else this connection receives
    let mut owner: Option<usize> = None;
    let mut index = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let mut state = inner.state.lock().unwrap();
                state.conns[conn].closed = true;
                inner.changed.notify_all();
                return;
            }
            Ok(n) => n,
        };
        let data = &chunk[..n];
        {
            let mut state = inner.state.lock().unwrap();
            state.conns[conn].bytes.extend_from_slice(data);
            if let Some(owner) = owner {
                state.requests[owner].bytes.extend_from_slice(data);
            }
            inner.changed.notify_all();
        }
        if owner.is_some() {
            continue;
        }
        buf.extend_from_slice(data);
        // every complete request in the buffer, in order
        loop {
            let (len, head_len, broken) = match frame_request(&buf) {
                Framing::Complete { len, head_len } => (len, head_len, false),
                Framing::Partial => break,
                // all of it, and all that follows, is kept as one request
                Framing::Broken { head_len } => (buf.len(), head_len, true),
            };
            let request = RawRequest {
                conn,
                index,
                bytes: buf.drain(..len).collect(),
                head_len,
            };
            index += 1;
            let reply = (inner.responder)(&request);
            let switching = broken
                || reply.bytes.starts_with(b"HTTP/1.1 101")
                || reply.bytes.starts_with(b"HTTP/1.0 101");
            {
                let mut state = inner.state.lock().unwrap();
                let at = state.requests.len();
                state.requests.push(request);
                if switching {
                    // the rest of the connection belongs to this request
                    state.requests[at].bytes.append(&mut buf);
                    owner = Some(at);
                }
                inner.changed.notify_all();
            }
            if stream.write_all(&reply.bytes).is_err() {
                // the proxy went away: keep reading until it is closed
                break;
            }
            if reply.close {
                let _ = stream.shutdown(Shutdown::Both);
                let mut state = inner.state.lock().unwrap();
                state.conns[conn].closed = true;
                inner.changed.notify_all();
                return;
            }
            if switching {
                break;
            }
        }
    }
}

enum Framing {
    Partial,
    /// A whole request of `len` bytes at the start of the buffer.
    Complete {
        len: usize,
        head_len: usize,
    },
    /// A head whose body framing cannot be followed.
    Broken {
        head_len: usize,
    },
}

/// Where the first request in `buf` ends, framed as the proxy frames
/// requests: chunked if `Transfer-Encoding` says so, else
/// `Content-Length`, else no body.
fn frame_request(buf: &[u8]) -> Framing {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Framing::Partial;
    };
    let head_len = end + 4;
    let head = &buf[..head_len];
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for (name, value) in fields(head) {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.eq_ignore_ascii_case(b"chunked");
            if !chunked {
                return Framing::Broken { head_len };
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
            match parsed {
                Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return Framing::Broken { head_len },
            }
        }
    }
    if chunked {
        return match chunked_len(&buf[head_len..]) {
            Some(Ok(body)) => Framing::Complete {
                len: head_len + body,
                head_len,
            },
            Some(Err(())) => Framing::Broken { head_len },
            None => Framing::Partial,
        };
    }
    let len = head_len + length.unwrap_or(0);
    if buf.len() < len {
        Framing::Partial
    } else {
        Framing::Complete { len, head_len }
    }
}

/// The length of the chunked body at the start of `body`: `None` when it
/// is not all there yet, `Some(Err)` when it is not chunked framing.
fn chunked_len(body: &[u8]) -> Option<Result<usize, ()>> {
    let mut pos = 0;
    loop {
        let line_end = pos + find(&body[pos..], b"\r\n")?;
        let line = &body[pos..line_end];
        let digits = line.split(|&b| b == b';').next().unwrap_or_default();
        let Some(size) = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| usize::from_str_radix(d.trim(), 16).ok())
        else {
            return Some(Err(()));
        };
        pos = line_end + 2;
        if size == 0 {
            // trailer fields, then an empty line
            loop {
                let end = pos + find(&body[pos..], b"\r\n")?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Some(Ok(pos));
                }
            }
        }
        if body.len() < pos + size + 2 {
            return None;
        }
        if &body[pos + size..pos + size + 2] != b"\r\n" {
            return Some(Err(()));
        }
        pos += size + 2;
    }
}

/// The `name: value` fields of a head (the request or status line and
/// the blank line skipped), values trimmed.
fn fields(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|&b| b == b'\n').skip(1).filter_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        Some((&line[..colon], line[colon + 1..].trim_ascii()))
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Bytes as a readable Rust-like string literal (CRLF shown as `\r\n`),
/// for failure messages.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 600;
    let mut out: String = bytes
        .iter()
        .take(MAX)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if bytes.len() > MAX {
        out.push_str(&format!("...({} bytes)", bytes.len()));
    }
    out
}

/// What a client saw first on a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A final response with this status (interim 1xx skipped, except 101).
    Status(u16),
    /// The connection closed (or was reset) before any byte of a response.
    Closed,
    /// The connection closed after these bytes, which are no response.
    Garbage(Vec<u8>),
    /// Nothing conclusive within the timeout.
    Timeout(Vec<u8>),
}

/// The first response on a raw connection, and what else arrived with it.
#[derive(Debug)]
pub struct Exchanged {
    pub seen: Seen,
    /// Every byte the client received.
    pub received: Vec<u8>,
}

/// The length of the response at the start of `buf` (a head, and a body
/// of its `Content-Length`, none without one), once it is all there.
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= end + length).then_some(end + length)
}

/// One client connection driven a request at a time: each request is
/// written whole and its response (a head with `Content-Length`) read
/// whole before the next.
pub struct Sequential {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl Sequential {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Sequential {
        let stream = TcpStream::connect(addr).expect("connect to the proxy");
        stream.set_read_timeout(Some(timeout)).unwrap();
        Sequential {
            stream,
            buffered: Vec::new(),
        }
    }

    /// Writes `request` and returns its response, head and body.
    pub fn request(&mut self, request: &str) -> String {
        self.stream
            .write_all(request.as_bytes())
            .expect("write the request");
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(len) = response_len(&self.buffered) {
                let rest = self.buffered.split_off(len);
                let response = std::mem::replace(&mut self.buffered, rest);
                return String::from_utf8_lossy(&response).into_owned();
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the proxy closed: {}", show(&self.buffered)),
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("no whole response: {e}: {}", show(&self.buffered)),
            }
        }
    }
}

/// Connects to `addr`, writes `send` (and, with `half_close`, shuts the
/// write side), and reads until the first final response head is
/// complete, the connection closes, or `timeout` passes. If a response
/// came and `after` is not empty, `after` is written next (errors ignored:
/// the proxy may have closed) and whatever else arrives until the proxy
/// closes or `linger` passes is read too.
pub fn exchange(
    addr: SocketAddr,
    send: &[u8],
    half_close: bool,
    after: &[u8],
    timeout: Duration,
    linger: Duration,
) -> Exchanged {
    let mut received = Vec::new();
    let mut s = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            return Exchanged {
                seen: Seen::Garbage(format!("connect failed: {e}").into_bytes()),
                received,
            };
        }
    };
    let _ = s.set_nodelay(true);
    // a proxy that refuses early may reset before all of it is written
    let _ = s.write_all(send);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 16 * 1024];
    let mut start = 0; // where the response being read starts
    let seen = loop {
        if let Some(status) = final_status(&received, &mut start) {
            break Seen::Status(status);
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break Seen::Timeout(received.clone());
        };
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.read(&mut chunk) {
            Ok(0) => break eof(&received),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break Seen::Timeout(received.clone());
            }
            Err(_) => break eof(&received),
        }
    };
    if matches!(seen, Seen::Status(_)) && !after.is_empty() {
        let _ = s.write_all(after);
        let deadline = Instant::now() + linger;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match s.read(&mut chunk) {
                Ok(n) if n > 0 => received.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    }
    Exchanged { seen, received }
}

fn eof(received: &[u8]) -> Seen {
    if received.is_empty() {
        Seen::Closed
    } else {
        Seen::Garbage(received.to_vec())
    }
}

/// The status of the first final response head complete in `buf` from
/// `*start` on; interim responses (1xx but 101) are stepped over.
fn final_status(buf: &[u8], start: &mut usize) -> Option<u16> {
    loop {
        let rest = &buf[*start..];
        let end = find(rest, b"\r\n\r\n")?;
        let line = &rest[..find(rest, b"\r\n")?];
        let status = line
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
            .and_then(|s| s.get(..3))
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            *start += end + 4;
            continue;
        }
        return Some(status);
    }
}

// ---- HTTP/2 by hand ----

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const H2_DATA: u8 = 0x0;
pub const H2_HEADERS: u8 = 0x1;
pub const H2_RST_STREAM: u8 = 0x3;
pub const H2_SETTINGS: u8 = 0x4;
pub const H2_PING: u8 = 0x6;
pub const H2_GOAWAY: u8 = 0x7;
pub const H2_CONTINUATION: u8 = 0x9;
pub const H2_END_STREAM: u8 = 0x1;
pub const H2_ACK: u8 = 0x1;
pub const H2_END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < 1 << 24);
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block for `GET path` at `authority` over http, using
/// only the static table and literals without indexing (no state).
pub fn hpack_get(authority: &str, path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    hpack_literal_indexed_name(&mut block, 4, path.as_bytes()); // :path
    hpack_literal_indexed_name(&mut block, 1, authority.as_bytes()); // :authority
    block
}

/// A literal field without indexing, its name from static table `index`.
fn hpack_literal_indexed_name(block: &mut Vec<u8>, index: u8, value: &[u8]) {
    assert!(index < 15);
    block.push(index);
    hpack_string(block, value);
}

/// A literal field without indexing with a new name (no Huffman coding).
pub fn hpack_literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0);
    hpack_string(block, name);
    hpack_string(block, value);
}

fn hpack_string(block: &mut Vec<u8>, s: &[u8]) {
    // a 7-bit prefixed integer (RFC 7541 §5.1), Huffman bit clear
    let mut n = s.len();
    if n < 127 {
        block.push(n as u8);
    } else {
        block.push(127);
        n -= 127;
        while n >= 128 {
            block.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        block.push(n as u8);
    }
    block.extend_from_slice(s);
}

/// A frame read from a connection.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// Reads one frame (blocking, as the socket's read timeout allows).
pub fn read_frame(r: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}
