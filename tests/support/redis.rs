//! A real `redis-server` per test, for the shared store: on its own
//! loopback port, with nothing written to disk, stopped and restarted at
//! will (to show the proxy riding out an outage), and killed and reaped
//! when its handle drops. [`Redis::cmd`] speaks RESP itself over a
//! `TcpStream`, so tests need no `redis-cli` and no Redis crate.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::apps::{free_port, read_lines};
use super::{DEADLINE, Lines};

pub struct Redis {
    port: u16,
    /// `(user, password)` of the ACL user the server requires.
    auth: Option<(String, String)>,
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    /// The server's log (it logs to stdout), for panic messages.
    pub log: Arc<Lines>,
    /// `(port, certificate, key)` of a TLS listener beside the plain one.
    tls: Option<(u16, std::path::PathBuf, std::path::PathBuf)>,
    /// Keeps `--dir` somewhere of its own: nothing should be written there,
    /// but if it ever is, it goes away with the test.
    dir: tempfile::TempDir,
}

impl Redis {
    /// A server anyone may use without a password, as a default install.
    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// A server that only `user` with `password` may use (all commands and
    /// keys); the default user is disabled, so a client that does not
    /// authenticate gets `NOAUTH` for everything.
    pub fn start_with_password(user: &str, password: &str) -> Redis {
        Redis::start_with(Some((user.to_string(), password.to_string())))
    }

    /// A server that also speaks TLS (`rediss://`, [`Redis::tls_url`])
    /// with `cert` and `key` (PEM files); [`Redis::cmd`] uses the plain port.
    pub fn start_with_tls(cert: &std::path::Path, key: &std::path::Path) -> Redis {
        Redis::start_with_options(None, Some((cert.to_path_buf(), key.to_path_buf())))
    }

    fn start_with(auth: Option<(String, String)>) -> Redis {
        Redis::start_with_options(auth, None)
    }

    fn start_with_options(
        auth: Option<(String, String)>,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Redis {
        let mut redis = Redis {
            port: 0,
            tls: tls.map(|(cert, key)| (0, cert, key)),
            auth,
            child: None,
            readers: Vec::new(),
            log: Arc::new(Lines::default()),
            dir: tempfile::tempdir().unwrap(),
        };
        // The port is found by binding port 0 and closing it, so another
        // process may take it before redis binds it: then try another.
        let deadline = Instant::now() + DEADLINE;
        loop {
            redis.port = free_port();
            if let Some(tls) = &mut redis.tls {
                tls.0 = free_port();
            }
            match redis.launch(deadline) {
                Ok(()) => return redis,
                Err(Failed::Exited) if redis.port_taken() && Instant::now() < deadline => {
                    redis.log = Arc::new(Lines::default());
                }
                Err(f) => redis.fail(f),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://[user:password@]127.0.0.1:PORT/0`, for the proxy's config.
    pub fn url(&self) -> String {
        let auth = match &self.auth {
            Some((user, password)) => {
                format!("{}:{}@", percent_encode(user), percent_encode(password))
            }
            None => String::new(),
        };
        format!("redis://{auth}127.0.0.1:{}/0", self.port)
    }

    /// `rediss://127.0.0.1:TLS_PORT/0` for a server started with TLS.
    pub fn tls_url(&self) -> String {
        let (port, _, _) = self.tls.as_ref().expect("started with TLS");
        format!("rediss://127.0.0.1:{port}/0")
    }

    /// Kills the server, as a crash would, and waits until its port refuses
    /// connections. Its data is lost (it keeps none on disk).
    pub fn stop(&mut self) {
        self.kill();
        let refused = super::eventually(DEADLINE, || {
            TcpStream::connect_timeout(&self.addr(), Duration::from_secs(1)).is_err()
        });
        assert!(
            refused,
            "redis on port {} still accepts connections",
            self.port
        );
    }

    /// Stops the server without closing anything (SIGSTOP): its socket
    /// stays open and accepts, and nothing is answered, as a Redis that
    /// hangs. [`Redis::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let status = std::process::Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {which} {pid}");
    }

    /// Starts the server again on the same port (empty) and waits until it
    /// answers. It retries until the deadline if the port is not free yet.
    pub fn restart(&mut self) {
        self.kill();
        self.log = Arc::new(Lines::default());
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.launch(deadline) {
                Ok(()) => return,
                Err(Failed::Exited) if self.port_taken() && Instant::now() < deadline => {
                    self.log = Arc::new(Lines::default());
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(f) => self.fail(f),
            }
        }
    }

    /// Runs one command and gives its reply as text: a bulk or simple
    /// string as it is, an integer in decimal, nil as `(nil)`, an array's
    /// elements one per line, an error as its message (`ERR ...`,
    /// `WRONGTYPE ...`). Authenticates first when the server needs it.
    /// Panics when the server cannot be reached.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.request(args)
            .unwrap_or_else(|e| panic!("redis on port {}: {args:?}: {e}", self.port))
            .to_string()
    }

    /// The keys matching `pattern` (as `KEYS`), sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let reply = self
            .request(&["KEYS", pattern])
            .unwrap_or_else(|e| panic!("redis on port {}: KEYS {pattern}: {e}", self.port));
        let Reply::Array(Some(items)) = reply else {
            panic!("redis on port {}: KEYS {pattern}: {reply}", self.port);
        };
        let mut keys: Vec<String> = items.iter().map(Reply::to_string).collect();
        keys.sort();
        keys
    }

    /// One command on a new connection, after `AUTH` when a password is set.
    fn request(&self, args: &[&str]) -> io::Result<Reply> {
        let stream = TcpStream::connect_timeout(&self.addr(), DEADLINE)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_write_timeout(Some(DEADLINE))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut writer = stream;
        if let Some((user, password)) = &self.auth {
            write_command(&mut writer, &["AUTH", user, password])?;
            match read_reply(&mut reader)? {
                Reply::Simple(ok) if ok == "OK" => {}
                other => return Err(io::Error::other(format!("AUTH {user}: {other}"))),
            }
        }
        write_command(&mut writer, args)?;
        read_reply(&mut reader)
    }

    /// Spawns the server on `self.port` and waits until it answers `PING`.
    fn launch(&mut self, deadline: Instant) -> Result<(), Failed> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""]);
        if let Some((port, cert, key)) = &self.tls {
            cmd.arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]);
        }
        if let Some((user, password)) = &self.auth {
            let pass = format!(">{password}");
            // `resetpass` drops the default user's `nopass`, should the
            // test's user be `default` itself
            cmd.args(["--user", user, "reset", "on", &pass, "~*", "&*", "+@all"]);
            if user != "default" {
                cmd.args(["--user", "default", "off", "resetpass", "-@all"]);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("redis-server not found: run scripts/test")
            }
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.readers = vec![
            read_lines(child.stdout.take().unwrap(), self.log.clone()),
            read_lines(child.stderr.take().unwrap(), self.log.clone()),
        ];
        self.child = Some(child);
        loop {
            if matches!(self.request(&["PING"]), Ok(Reply::Simple(p)) if p == "PONG") {
                return Ok(());
            }
            let exited = matches!(self.child.as_mut().unwrap().try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                self.kill();
                return Err(if exited {
                    Failed::Exited
                } else {
                    Failed::NoPong
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the last launch failed for want of its port.
    fn port_taken(&self) -> bool {
        self.log.all().iter().any(|l| l.contains("in use"))
    }

    fn fail(&self, f: Failed) -> ! {
        let how = match f {
            Failed::Exited => "exited",
            Failed::NoPong => "did not answer PING in time",
        };
        panic!(
            "redis-server on port {} {how}; its log:\n{}",
            self.port,
            self.log.all().join("\n")
        );
    }

    /// Kills and reaps the process; then waits for its log to be read to
    /// the end (its pipes closed with it), so a panic message has it all.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Failed {
    Exited,
    NoPong,
}

/// A RESP2 reply.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) | Reply::Error(s) | Reply::Bulk(Some(s)) => f.write_str(s),
            Reply::Integer(n) => write!(f, "{n}"),
            Reply::Bulk(None) | Reply::Array(None) => f.write_str("(nil)"),
            Reply::Array(Some(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

fn write_command(w: &mut impl Write, args: &[&str]) -> io::Result<()> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    w.write_all(&out)
}

fn read_reply(r: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches("\r\n");
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"));
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    let len = || rest.parse::<i64>().map_err(|_| bad());
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(len()?),
        "$" => match usize::try_from(len()?) {
            Err(_) => Reply::Bulk(None),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        },
        "*" => match usize::try_from(len()?) {
            Err(_) => Reply::Array(None),
            Ok(n) => Reply::Array(Some(
                (0..n)
                    .map(|_| read_reply(r))
                    .collect::<io::Result<Vec<_>>>()?,
            )),
        },
        _ => return Err(bad()),
    })
}

/// `s` as the user or password part of a URL: anything but the unreserved
/// characters percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
