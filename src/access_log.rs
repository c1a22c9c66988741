//! One line per request on stdout, plain or JSON.
//!
//! Each worker thread appends to its own buffer and writes it out when it
//! grows past 32 KiB or on the worker's periodic flush (every 100 ms), as
//! nginx's `access_log ... buffer= flush=`: no lock and no system call per
//! request. Diagnostics go to stderr through `tracing`.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::config::AccessFormat;

const FLUSH_AT: usize = 32 * 1024;

/// How often a worker writes out what it buffered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What one access-log line says about a request.
pub struct Entry<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub pool: &'a str,
    pub backend: &'a str,
    pub request_id: &'a str,
}

#[derive(serde::Serialize)]
struct JsonLine<'a> {
    time: String,
    client: String,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    pool: &'a str,
    backend: &'a str,
    request_id: &'a str,
}

/// Appends one line for `e` to this thread's buffer.
pub fn record(format: AccessFormat, e: &Entry<'_>) {
    let time = humantime::format_rfc3339_millis(SystemTime::now());
    let ms = e.duration.as_secs_f64() * 1000.0;
    BUF.with(|b| {
        let Ok(mut buf) = b.try_borrow_mut() else {
            return;
        };
        match format {
            AccessFormat::Plain => {
                let _ = write!(buf, "{time} {} \"{} ", e.client, e.method);
                escape_into(&mut buf, e.path);
                let _ = writeln!(
                    buf,
                    "\" {} {} {ms:.3}ms pool={} backend={} request_id={}",
                    e.status,
                    e.bytes,
                    or_dash(e.pool),
                    or_dash(e.backend),
                    or_dash(e.request_id)
                );
            }
            AccessFormat::Json => {
                let line = JsonLine {
                    time: time.to_string(),
                    client: e.client.to_string(),
                    method: e.method,
                    path: e.path,
                    status: e.status,
                    bytes: e.bytes,
                    duration_ms: (ms * 1000.0).round() / 1000.0,
                    pool: e.pool,
                    backend: e.backend,
                    request_id: e.request_id,
                };
                if serde_json::to_writer(&mut *buf, &line).is_ok() {
                    buf.push(b'\n');
                }
            }
        }
        if buf.len() >= FLUSH_AT {
            write_out(&mut buf);
        }
    });
}

/// Writes out this thread's buffered lines.
pub fn flush() {
    BUF.with(|b| {
        if let Ok(mut buf) = b.try_borrow_mut()
            && !buf.is_empty()
        {
            write_out(&mut buf);
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
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' || b.is_ascii_control() {
            let _ = write!(buf, "\\x{b:02X}");
        } else {
            buf.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quotes() {
        let mut v = Vec::new();
        escape_into(&mut v, "/a\"b\n");
        assert_eq!(v, b"/a\\x22b\\x0A");
    }
}
