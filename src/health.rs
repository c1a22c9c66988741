//! Active health checks (`[pools.X.health] check`): an HTTP `GET path` on
//! each backend every `interval`, over a connection of its own, whose
//! result goes to the backend's state in the registry
//! (`balance::health` decides what it means).
//!
//! They run once per process, on the main thread's event loop, not once
//! per worker: one task per checked backend, started and stopped as
//! reloads add and remove backends or change their checks. The state they
//! drive lives in the registry, by the backend's identity, so a reload
//! that keeps a backend keeps its state.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::balance::{CheckStatus, Transition};
use crate::config::HealthCheck;
use crate::proxy::upstream::{self, ConnectError, Target};
use crate::runtime::{Runtime, Shared};

/// The longest status line read from a backend: a real one is a few dozen
/// bytes, and whatever a backend sends is read into a buffer this size.
pub const MAX_STATUS_LINE: usize = 1024;

/// Why a check failed; its text is what the log and `/admin/pools` show.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connect: {0}")]
    Connect(ConnectError),
    /// No status line within the check's `timeout`, from the connect on.
    #[error("timeout after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("write: {0}")]
    Write(io::Error),
    #[error("read: {0}")]
    Read(io::Error),
    #[error("closed before a status line")]
    Closed,
    /// An answer other than 2xx or 3xx.
    #[error("status {0}")]
    Status(u16),
    #[error(transparent)]
    Answer(#[from] StatusLineError),
}

/// What is wrong with the first line of a backend's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StatusLineError {
    #[error("not an HTTP/1 status line")]
    Invalid,
    #[error("no status line within {MAX_STATUS_LINE} bytes")]
    TooLong,
}

/// The status code of the HTTP/1 status line `buf` starts with, or
/// `Ok(None)` while its end has not come yet. Whatever a backend sends is
/// untrusted: anything but `HTTP/1.x NNN[ reason]` ending in a line feed
/// within [`MAX_STATUS_LINE`] bytes is an error, found as early as the
/// bytes allow.
pub fn status_of(buf: &[u8]) -> Result<Option<u16>, StatusLineError> {
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err(StatusLineError::Invalid);
    }
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return match buf.len() >= MAX_STATUS_LINE {
            true => Err(StatusLineError::TooLong),
            false => Ok(None),
        };
    };
    if end >= MAX_STATUS_LINE {
        return Err(StatusLineError::TooLong);
    }
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        [
            b'H',
            b'T',
            b'T',
            b'P',
            b'/',
            b'1',
            b'.',
            minor,
            b' ',
            code @ ..,
        ] if minor.is_ascii_digit() => {
            let (digits, rest) = code.split_at(code.len().min(3));
            if digits.len() < 3
                || !digits.iter().all(u8::is_ascii_digit)
                || digits[0] == b'0'
                || rest.first().is_some_and(|&c| c != b' ')
            {
                return Err(StatusLineError::Invalid);
            }
            Ok(Some(
                digits
                    .iter()
                    .fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
            ))
        }
        _ => Err(StatusLineError::Invalid),
    }
}

/// One check: connects (over TLS with `tls`), sends `GET path`, reads
/// the status line, all within `timeout`, and closes. The status code, or
/// why there is none.
pub async fn probe(
    addr: SocketAddr,
    tls: Option<Target<'_>>,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<u16, CheckError> {
    let check = async {
        let mut stream = upstream::open(addr, timeout, tls)
            .await
            .map_err(|e| match e {
                ConnectError::Timeout { .. } => CheckError::Timeout(timeout),
                e => CheckError::Connect(e),
            })?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: sessionlb-health\r\nAccept: */*\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(CheckError::Write)?;
        stream.flush().await.map_err(CheckError::Write)?;
        let mut buf = [0u8; MAX_STATUS_LINE];
        let mut len = 0;
        loop {
            // never Ok(None) with the buffer full: the read has room
            if let Some(code) = status_of(&buf[..len])? {
                return Ok(code);
            }
            match stream.read(&mut buf[len..]).await {
                Ok(0) => return Err(CheckError::Closed),
                Ok(n) => len += n,
                Err(e) => return Err(CheckError::Read(e)),
            }
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or(Err(CheckError::Timeout(timeout)))
}

/// Runs the checks of the current configuration for the life of the
/// process (its main event loop), following each new snapshot: a backend gets a task while a
/// pool with checks lists it (the first such pool's settings, once per
/// identity), restarted when those settings change.
pub async fn run(shared: Arc<Shared>) {
    let mut running: HashMap<Arc<str>, (HealthCheck, JoinHandle<()>)> = HashMap::new();
    let mut swaps = shared.swaps();
    loop {
        let wanted = checked(&shared.load());
        running.retain(|name, (check, task)| {
            let keep = wanted.get(name) == Some(check);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, check) in wanted {
            if let Entry::Vacant(e) = running.entry(name) {
                let task =
                    tokio::spawn(check_every(shared.clone(), e.key().clone(), check.clone()));
                e.insert((check, task));
            }
        }
        if swaps.changed().await.is_err() {
            return;
        }
    }
}

/// Checks once every backend still waiting for its first check, all at
/// once, and returns when each is decided (within its `timeout`). Called
/// before the proxy accepts: a new process, an upgrade's above all,
/// would otherwise answer 503 until the first checks come back.
pub async fn first_round(shared: Arc<Shared>) {
    let rt = shared.load();
    let mut checks = tokio::task::JoinSet::new();
    for (name, check) in checked(&rt) {
        if is_pending(&rt, &name) {
            let shared = shared.clone();
            checks.spawn(async move { check_once(&shared, &name, &check).await });
        }
    }
    drop(rt);
    while checks.join_next().await.is_some() {}
}

/// The backends to check, by identity, with the settings of the first
/// pool with checks that lists each.
fn checked(rt: &Runtime) -> HashMap<Arc<str>, HealthCheck> {
    let mut wanted = HashMap::new();
    for pool in rt.pools.iter() {
        let Some(check) = &pool.health.check else {
            continue;
        };
        for b in pool.backends.iter() {
            wanted
                .entry(b.state.name.clone())
                .or_insert_with(|| check.clone());
        }
    }
    wanted
}

/// Where [`checked`] found backend `name`: (pool, backend) indexes.
fn locate(rt: &Runtime, name: &str) -> Option<(usize, usize)> {
    rt.pools.iter().enumerate().find_map(|(p, pool)| {
        pool.health.check.as_ref()?;
        let b = pool.backends.iter().position(|b| &*b.state.name == name)?;
        Some((p, b))
    })
}

/// Whether backend `name` of `rt` waits for its first check.
fn is_pending(rt: &Runtime, name: &str) -> bool {
    locate(rt, name).is_some_and(|(p, b)| {
        rt.pools[p].backends[b].state.check_state().status == CheckStatus::Pending
    })
}

/// Checks one backend every `interval` (each wait drawn from 90 % to
/// 110 % of it, so that checks spread out rather than beat together)
/// until it is no longer to be checked. A backend the checks hold out
/// until its first pass is checked at once; one already decided, at a
/// random point of the first interval.
async fn check_every(shared: Arc<Shared>, name: Arc<str>, check: HealthCheck) {
    let now = Instant::now();
    let mut next = match is_pending(&shared.load(), &name) {
        true => now,
        false => now + check.interval.mul_f64(fastrand::f64()),
    };
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        if !check_once(&shared, &name, &check).await {
            return;
        }
        next = started + check.interval.mul_f64(0.9 + 0.2 * fastrand::f64());
    }
}

/// Runs one check of backend `name` in the current snapshot and records
/// it; false when the snapshot no longer checks it.
async fn check_once(shared: &Shared, name: &str, check: &HealthCheck) -> bool {
    let rt = shared.load();
    let Some((p, b)) = locate(&rt, name) else {
        return false;
    };
    let pool = &rt.pools[p];
    let backend = &pool.backends[b];
    let tls = rt.upstream_tls[p].as_ref().and_then(|t| t.target(b));
    let host = host_header(backend.addr, tls.as_ref().map(|t| t.name()));
    let result = match probe(backend.addr, tls, &host, &check.path, check.timeout).await {
        Ok(code) if (200..400).contains(&code) => Ok(format!("status {code}")),
        Ok(code) => Err(CheckError::Status(code).to_string()),
        Err(error) => Err(error.to_string()),
    };
    let (pool, backend) = (&*pool.name, &backend.state);
    let said = match &result {
        Ok(s) | Err(s) => s.clone(),
    };
    tracing::debug!(pool, backend = &*backend.name, check = %said, passed = result.is_ok(), "health check");
    match backend.record_check(result, check.rise, check.fall) {
        Some(Transition::Down) => tracing::warn!(
            pool,
            backend = &*backend.name,
            reason = "active",
            check = %said,
            "backend is down"
        ),
        Some(Transition::Up) => tracing::info!(
            pool,
            backend = &*backend.name,
            reason = "active",
            check = %said,
            "backend is up"
        ),
        None => {}
    }
    true
}

/// The `Host` a check sends: the name an HTTPS backend is verified as
/// (with its port unless 443), else the address.
fn host_header(addr: SocketAddr, tls: Option<&ServerName<'_>>) -> String {
    match tls {
        Some(ServerName::DnsName(name)) if addr.port() == 443 => name.as_ref().to_string(),
        Some(ServerName::DnsName(name)) => format!("{}:{}", name.as_ref(), addr.port()),
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(
            status_of(b"HTTP/1.0 302 Found\r\nLocation: /"),
            Ok(Some(302))
        );
        assert_eq!(status_of(b"HTTP/1.1 503\r\n"), Ok(Some(503)));
        assert_eq!(status_of(b"HTTP/1.1 204 \n"), Ok(Some(204)));
        // not there yet
        for partial in [
            &b""[..],
            b"H",
            b"HTTP/1",
            b"HTTP/1.1 2",
            b"HTTP/1.1 200 OK\r",
        ] {
            assert_eq!(status_of(partial), Ok(None), "{partial:?}");
        }
    }

    #[test]
    fn hostile_answers_are_errors_never_panics() {
        use StatusLineError::*;
        for garbage in [
            &b"\0\0\0\0"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"\x16\x03\x01\x00", // a TLS record to a plain check
            b"HTTP/2 200\r\n",
            b"HTTP/1.1 200OK\r\n",
            b"HTTP/1.1 20\r\n",
            b"HTTP/1.1 2000\r\n",
            b"HTTP/1.1 099 no\r\n",
            b"HTTP/1.1 -12 no\r\n",
            b"HTTP/1.1  200\r\n",
            b"HTTP/1.x 200\r\n",
            b"HTTP/1.1\r\n",
            b"\r\n",
            b"http/1.1 200 OK\r\n",
        ] {
            assert_eq!(status_of(garbage), Err(Invalid), "{garbage:?}");
        }
        // a line that never ends, or ends too late
        let mut long = b"HTTP/1.1 200 ".to_vec();
        long.resize(MAX_STATUS_LINE, b'a');
        assert_eq!(status_of(&long), Err(TooLong));
        long.resize(MAX_STATUS_LINE - 1, b'a');
        assert_eq!(status_of(&long), Ok(None));
        long.resize(64 * 1024, b'a');
        long.extend_from_slice(b"\r\n");
        assert_eq!(status_of(&long), Err(TooLong));
        // every byte value at every position of a short answer
        let line = b"HTTP/1.1 200 OK\r\n";
        for i in 0..line.len() {
            for c in 0..=255u8 {
                let mut l = line.to_vec();
                l[i] = c;
                let _ = status_of(&l);
                let _ = status_of(&l[..i]);
            }
        }
    }

    #[test]
    fn the_host_is_the_name_tls_verifies_else_the_address() {
        let addr: SocketAddr = "10.0.0.1:8443".parse().unwrap();
        let name = ServerName::try_from("app.internal").unwrap();
        assert_eq!(host_header(addr, Some(&name)), "app.internal:8443");
        let on_443: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(host_header(on_443, Some(&name)), "app.internal");
        assert_eq!(host_header(addr, None), "10.0.0.1:8443");
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        let ip = ServerName::IpAddress(v6.ip().into());
        assert_eq!(host_header(v6, Some(&ip)), "[::1]:8080");
    }

    #[test]
    fn a_check_path_the_file_accepts_cannot_break_the_request_line() {
        for bad in ["/a b", "/a\r\nX: y", "/a\n", "/\t"] {
            assert!(bad.parse::<http::uri::PathAndQuery>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_backend_that_answers_garbage_or_too_much_fails_its_check() {
        use tokio::net::TcpListener;
        for (answer, expected) in [
            (&b"HTTP/1.1 200 OK\r\n\r\n"[..], "ok 200"),
            (b"HTTP/1.1 500 Oops\r\n\r\n", "ok 500"),
            (b"garbage\r\n", "not an HTTP/1 status line"),
            (&[b'H'; 8192][..], "not an HTTP/1 status line"),
            (b"HTTP/1.1 200 ", "closed before a status line"),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let answer = answer.to_vec();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = [0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                let _ = s.write_all(&answer).await;
                String::from_utf8_lossy(&req[..n]).into_owned()
            });
            let got = probe(addr, None, "h:1", "/healthz", Duration::from_secs(5)).await;
            let got = match got {
                Ok(code) => format!("ok {code}"),
                Err(e) => e.to_string(),
            };
            assert_eq!(got, expected);
            let request = server.await.unwrap();
            assert_eq!(
                request,
                "GET /healthz HTTP/1.1\r\nHost: h:1\r\nConnection: close\r\nUser-Agent: sessionlb-health\r\nAccept: */*\r\n\r\n"
            );
        }
        // an oversized line that looks right
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = b"HTTP/1.1 200 ".to_vec();
            line.resize(1 << 20, b'x');
            let _ = s.write_all(&line).await;
        });
        let got = probe(addr, None, "h", "/", Duration::from_secs(5)).await;
        assert!(
            matches!(got, Err(CheckError::Answer(StatusLineError::TooLong))),
            "{got:?}"
        );
        // silence
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let got = probe(addr, None, "h", "/", Duration::from_millis(100)).await;
        assert_eq!(got.unwrap_err().to_string(), "timeout after 100ms");
        silent.abort();
    }
}
