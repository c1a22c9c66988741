//! Test harness: the real `sessionlb` binary on an ephemeral loopback port,
//! real HTTP backends, and a small client. Every process and thread started
//! here is stopped when its handle drops.

#![allow(dead_code)]

pub mod apps;
pub mod backend;
pub mod client;
pub mod dns;
pub mod load;
pub mod raw;
pub mod redis;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use backend::Backend;

/// How long anything in a test may take to become true on a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The binary under test: this build's, or `SESSIONLB_TEST_BIN` (to show
/// that a test fails on an older build).
pub fn bin() -> PathBuf {
    std::env::var_os("SESSIONLB_TEST_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_sessionlb")),
        PathBuf::from,
    )
}

/// `sessionlb check -c path`, run to its end.
pub fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(bin())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .unwrap()
}

/// Reads until the peer closes; returns how long that took, or None when
/// it stayed open past `limit`.
pub async fn closed_within<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// Lines a child process wrote, with a condition variable to wait on.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.notify_all();
    }

    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The first line matching `pred`, waiting up to `timeout` for it.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = self.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits until at least `n` lines match `pred`; returns them.
    pub fn wait_count(
        &self,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().unwrap();
        loop {
            let found: Vec<String> = lines.iter().filter(|l| pred(l)).cloned().collect();
            if found.len() >= n {
                return found;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return found;
            };
            lines = self.changed.wait_timeout(lines, left).unwrap().0;
        }
    }
}

pub fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Lines>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => into.push(l),
                Err(_) => break,
            }
        }
    });
}

/// A running `sessionlb run -c <file>`.
pub struct Proxy {
    child: Child,
    /// The bound address of every listener, as the proxy logged them: each
    /// `server.listen` entry, then each `[[server.tls]]` listener.
    pub addrs: Vec<SocketAddr>,
    /// The `[[server.tls]]` listeners' addresses, in file order.
    pub tls_addrs: Vec<SocketAddr>,
    pub stderr: Arc<Lines>,
    pub stdout: Arc<Lines>,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy with `config` (its `server.listen` should use port
    /// 0) and waits until it listens. Panics with its stderr if it does not.
    pub fn start(config: &str) -> Proxy {
        Proxy::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_with(config, env, None, &[])
    }

    /// Starts the proxy with at most `files` open file descriptors.
    pub fn start_with_fd_limit(config: &str, files: u64) -> Proxy {
        Proxy::start_with(config, &[], Some(files), &[])
    }

    /// Starts the proxy with `files` (name, contents) written next to its
    /// configuration file first, for paths relative to it.
    pub fn start_with_files(config: &str, files: &[(&str, &[u8])]) -> Proxy {
        Proxy::start_with(config, &[], None, files)
    }

    fn start_with(
        config: &str,
        env: &[(&str, &str)],
        files: Option<u64>,
        beside: &[(&str, &[u8])],
    ) -> Proxy {
        let listeners = listeners(config);
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in beside {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let config_path = dir.path().join("sessionlb.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("-c").arg(&config_path);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(files) = files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only an async-signal-safe system call between fork
            // and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        files,
                        files,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn sessionlb");
        let stderr = Arc::new(Lines::default());
        let stdout = Arc::new(Lines::default());
        collect(child.stderr.take().unwrap(), stderr.clone());
        collect(child.stdout.take().unwrap(), stdout.clone());
        let found = stderr.wait_count(listeners, DEADLINE, |l| {
            l.contains("listening addr=") || l.starts_with("sessionlb: ")
        });
        let addr_of = |l: &String| -> Option<SocketAddr> {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok())
        };
        let addrs: Vec<SocketAddr> = found.iter().filter_map(addr_of).collect();
        let tls_addrs: Vec<SocketAddr> = found
            .iter()
            .filter(|l| l.split_whitespace().any(|w| w == "tls=true"))
            .filter_map(addr_of)
            .collect();
        if addrs.len() < listeners {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sessionlb did not start:\n{}", stderr.all().join("\n"));
        }
        Proxy {
            child,
            addrs,
            tls_addrs,
            stderr,
            stdout,
            config_path,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// The address of the `i`th `[[server.tls]]` listener.
    pub fn tls_addr(&self, i: usize) -> SocketAddr {
        *self
            .tls_addrs
            .get(i)
            .unwrap_or_else(|| panic!("no TLS listener {i}: {:?}", self.tls_addrs))
    }

    /// The directory of the configuration file, where relative paths in it
    /// point.
    pub fn dir(&self) -> &std::path::Path {
        self.config_path.parent().unwrap()
    }

    /// The admin listener's address (needs `server.admin_listen`).
    pub fn admin_addr(&self) -> SocketAddr {
        let line = self
            .stderr
            .wait_for(DEADLINE, |l| l.contains("admin_addr="))
            .expect("no admin listener");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("admin_addr="))
            .and_then(|a| a.parse().ok())
            .expect("admin address")
    }

    /// Writes `config` as the proxy's file and reloads it by
    /// `POST /admin/reload`: the answer, 200 or 400 with every problem.
    pub async fn reload_with(&self, config: &str) -> client::Resp {
        std::fs::write(&self.config_path, config).unwrap();
        admin_reload(self.admin_addr()).await
    }

    /// The value of one metric sample, e.g.
    /// `sessionlb_sticky_total{pool="web",outcome="redispatch"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let url = format!("http://{}/metrics", self.admin_addr());
        let text = client::get(&client::h1(), &url).await.body;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Peak resident memory of the proxy so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many listeners `config` asks for: every `server.listen` entry and
/// every `[[server.tls]]` listener (one when it names none, the default).
/// A file that is not TOML (a test of the proxy's refusal) counts the
/// addresses on its first `listen` line.
fn listeners(config: &str) -> usize {
    let Ok(file) = toml::from_str::<toml::Table>(config) else {
        return config
            .lines()
            .find(|l| l.trim_start().starts_with("listen"))
            .map_or(1, |l| l.matches(':').count());
    };
    let server = file.get("server").and_then(|s| s.as_table());
    let plain = server
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_array())
        .map(|a| a.len());
    let tls = server
        .and_then(|s| s.get("tls"))
        .and_then(|t| t.as_array())
        .map_or(0, |a| a.len());
    match (plain, tls) {
        (None, 0) => 1,
        (plain, tls) => plain.unwrap_or(0) + tls,
    }
}

pub fn proc_status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A loopback address where nothing listens: connections are refused.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A backend address where connections hang: its accept queue is full,
/// so connection attempts are never answered.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _filler: std::net::TcpStream,
}

impl Blackhole {
    pub fn start() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let filler = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        Blackhole {
            addr,
            _listener: listener,
            _filler: filler,
        }
    }
}

/// A backend that accepts connections and closes them at once, counting
/// them: every exchange with it fails after the request was sent.
pub struct Slammer {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl Slammer {
    pub fn start() -> Slammer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // read the request so the close is a clean FIN, not a reset
                let mut buf = [0u8; 4096];
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = std::io::Read::read(&mut stream, &mut buf);
                drop(stream);
            }
        });
        Slammer { addr, accepted }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A backend that accepts connections and never reads or answers on them
/// (a hung process): they stay open as long as it lives.
pub struct Silent {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl Silent {
    pub fn start() -> Silent {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.push(stream);
            }
        });
        Silent { addr, accepted }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A backend that answers every request with the same bytes, written by
/// hand: the framings, interim responses and mistakes a hyper server
/// would not produce. It reads one request head (no body) per answer;
/// with `close`, it closes the connection after each answer without
/// saying so.
pub struct Scripted {
    pub addr: SocketAddr,
    accepted: Arc<std::sync::atomic::AtomicU64>,
    closed: Arc<std::sync::atomic::AtomicU64>,
}

impl Scripted {
    pub fn start(reply: &[u8], close: bool) -> Scripted {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let closed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = accepted.clone();
        let closes = closed.clone();
        let reply = reply.to_vec();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { break };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let reply = reply.clone();
                let closes = closes.clone();
                std::thread::spawn(move || {
                    // counted once the socket is closed, whichever way
                    struct Closed(Arc<std::sync::atomic::AtomicU64>);
                    impl Drop for Closed {
                        fn drop(&mut self) {
                            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let _closed = Closed(closes);
                    // dropped before `_closed`: the count follows the close
                    #[allow(clippy::redundant_locals)]
                    let mut stream = stream;
                    use std::io::{Read, Write};
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        if stream.write_all(&reply).is_err() {
                            return;
                        }
                        if close {
                            // FIN, then wait for the proxy's: counted once
                            // the proxy has seen the close and let go of
                            // the connection, not while the FIN may still
                            // be on its way to it
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                            let _ = stream.set_read_timeout(Some(DEADLINE));
                            while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            accepted,
            closed,
        }
    }

    /// Connections closed so far (with `close`: by this backend, and then
    /// by the proxy).
    pub fn closed(&self) -> u64 {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `POST /admin/reload` to the admin listener at `admin`: the answer, 200
/// or 400 with every problem.
pub async fn admin_reload(admin: SocketAddr) -> client::Resp {
    let request = hyper::Request::post(format!("http://{admin}/admin/reload"))
        .body(Default::default())
        .unwrap();
    client::send(&client::h1_fresh(), request).await
}

/// A minimal config: one pool over `backends`, listening on port 0,
/// followed by `extra` TOML.
pub fn config(policy: &str, backends: &[String], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("  {b},")).collect();
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[pools.web]\npolicy = \"{policy}\"\nbackends = [\n{}\n]\n\n{extra}\n",
        list.join("\n")
    )
}

/// `{ addr = "..." }` for a backend address.
pub fn entry(addr: SocketAddr) -> String {
    format!("{{ addr = \"{addr}\" }}")
}

/// Polls `f` until it returns true or the deadline passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls an async condition until it holds or the deadline passes.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
