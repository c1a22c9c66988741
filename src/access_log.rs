//! One line per request on stdout, plain or JSON.
//!
//! Each worker thread appends to its own buffer and writes it out when it
//! grows past 32 KiB or on the worker's periodic flush (every 100 ms), as
//! nginx's `access_log ... buffer= flush=`: no lock and no system call per
//! request. Lines are assembled byte by byte (the timestamp's date part is
//! cached per second) rather than through `fmt`, which would cost more than
//! the rest of the request's bookkeeping. Diagnostics go to stderr through
//! `tracing`.

use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::AccessFormat;

const FLUSH_AT: usize = 32 * 1024;

/// How often a worker writes out what it buffered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

struct Buffer {
    out: Vec<u8>,
    /// The second `stamp` was formatted for.
    stamp_second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.`
    stamp: [u8; 20],
}

thread_local! {
    static BUF: RefCell<Buffer> = const {
        RefCell::new(Buffer { out: Vec::new(), stamp_second: u64::MAX, stamp: [0; 20] })
    };
}

/// What one access-log line says about a request.
pub struct Entry<'a> {
    pub client: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub pool: &'a str,
    pub backend: &'a str,
    pub request_id: &'a str,
}

/// Appends one line for `e` to this thread's buffer.
pub fn record(format: AccessFormat, e: &Entry<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    BUF.with(|b| {
        let Ok(mut b) = b.try_borrow_mut() else {
            return;
        };
        let b = &mut *b;
        if b.stamp_second != now.as_secs() {
            b.stamp_second = now.as_secs();
            b.stamp = date_prefix(now.as_secs());
        }
        let out = &mut b.out;
        match format {
            AccessFormat::Plain => plain(out, &b.stamp, now.subsec_millis(), e),
            AccessFormat::Json => json(out, &b.stamp, now.subsec_millis(), e),
        }
        if out.len() >= FLUSH_AT {
            write_out(out);
        }
    });
}

fn plain(out: &mut Vec<u8>, stamp: &[u8; 20], millis: u32, e: &Entry<'_>) {
    out.extend_from_slice(stamp);
    push_padded(out, millis, 3);
    out.extend_from_slice(b"Z ");
    out.extend_from_slice(e.client.as_bytes());
    out.extend_from_slice(b" \"");
    out.extend_from_slice(e.method.as_bytes());
    out.push(b' ');
    escape_into(out, e.path);
    out.extend_from_slice(b"\" ");
    push_int(out, u64::from(e.status));
    out.push(b' ');
    push_int(out, e.bytes);
    out.push(b' ');
    push_millis(out, e.duration);
    out.extend_from_slice(b"ms pool=");
    out.extend_from_slice(or_dash(e.pool).as_bytes());
    out.extend_from_slice(b" backend=");
    out.extend_from_slice(or_dash(e.backend).as_bytes());
    out.extend_from_slice(b" request_id=");
    out.extend_from_slice(or_dash(e.request_id).as_bytes());
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, stamp: &[u8; 20], millis: u32, e: &Entry<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(stamp);
    push_padded(out, millis, 3);
    out.extend_from_slice(b"Z\",\"client\":");
    json_str(out, e.client);
    out.extend_from_slice(b",\"method\":");
    json_str(out, e.method);
    out.extend_from_slice(b",\"path\":");
    json_str(out, e.path);
    out.extend_from_slice(b",\"status\":");
    push_int(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes\":");
    push_int(out, e.bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    push_millis(out, e.duration);
    out.extend_from_slice(b",\"pool\":");
    json_str(out, e.pool);
    out.extend_from_slice(b",\"backend\":");
    json_str(out, e.backend);
    out.extend_from_slice(b",\"request_id\":");
    json_str(out, e.request_id);
    out.extend_from_slice(b"}\n");
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping; a String's writer never fails
    let _ = serde_json::to_writer(&mut *out, s);
}

fn push_int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn push_padded(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(n);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
    out.extend_from_slice(s.as_bytes());
}

/// Milliseconds with three decimals, from the microseconds.
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    push_int(out, us / 1000);
    out.push(b'.');
    push_padded(out, (us % 1000) as u32, 3);
}

/// `YYYY-MM-DDTHH:MM:SS.` for a Unix time in seconds (UTC).
fn date_prefix(secs: u64) -> [u8; 20] {
    let mut stamp = [0u8; 20];
    let text =
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
    // "2026-11-23T13:03:25Z": keep the first 19 bytes, add '.'
    let n = text.len().min(19);
    stamp[..n].copy_from_slice(&text.as_bytes()[..n]);
    stamp[19] = b'.';
    stamp
}

/// Writes out this thread's buffered lines.
pub fn flush() {
    BUF.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut()
            && !b.out.is_empty()
        {
            write_out(&mut b.out);
        }
    });
}

fn write_out(buf: &mut Vec<u8>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buf);
    let _ = out.flush();
    buf.clear();
    if buf.capacity() > 4 * FLUSH_AT {
        buf.shrink_to(FLUSH_AT);
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Keeps a plain line one line with one quoted field: `"` `\` and control
/// bytes become `\xNN`.
fn escape_into(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' || b.is_ascii_control() {
            buf.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        } else {
            buf.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: "192.0.2.1",
            method: "GET",
            path: "/a\"b\n",
            status: 200,
            bytes: 1024,
            duration: Duration::from_micros(1_048),
            pool: "web",
            backend: "",
            request_id: "rid",
        }
    }

    #[test]
    fn plain_line() {
        let mut out = Vec::new();
        plain(&mut out, &date_prefix(1_795_000_000), 7, &entry());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-11-18T11:06:40.007Z 192.0.2.1 \"GET /a\\x22b\\x0A\" 200 1024 1.048ms pool=web backend=- request_id=rid\n"
        );
    }

    #[test]
    fn json_line() {
        let mut out = Vec::new();
        json(&mut out, &date_prefix(1_795_000_000), 7, &entry());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2026-11-18T11:06:40.007Z");
        assert_eq!(v["path"], "/a\"b\n");
        assert_eq!(v["duration_ms"], 1.048);
        assert_eq!(v["backend"], "");
    }
}
