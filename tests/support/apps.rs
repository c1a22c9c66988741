//! Real application servers for the shared-store tests: the Python apps in
//! `tests/apps/`, run on the Flask that `scripts/test` installs into
//! `target/test-venv`. Each answers `GET /healthz` with `ok` and tags every
//! response with `x-backend: <instance>`, as [`super::Backend`] does.
//!
//! An [`App`] is one process on its own loopback port; it is killed and
//! reaped when its handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{DEADLINE, Lines};

/// The Python that has Flask: `SESSIONLB_TEST_PYTHON`, else the venv that
/// `scripts/test` makes. Not the system's `python3`, which has no Flask.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SESSIONLB_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    // Not canonicalized: the venv's `python` is a symlink, and only when
    // run through the venv's path does it see the venv's packages.
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!("Flask is not installed: run scripts/test (it makes target/test-venv)");
}

/// One of `tests/apps/*.py`, started as `python <script> <port> <instance>`.
pub struct App {
    child: Child,
    addr: SocketAddr,
    /// What it wrote on stdout and stderr (the apps are quiet but for errors).
    pub output: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

impl App {
    /// Starts `script` (e.g. `"flask_counter.py"`) on a free loopback port
    /// and waits until it answers `/healthz`. The port is found by binding
    /// port 0 and closing it, so another process may take it before the
    /// app binds it: the app then exits, and it is started on another one.
    pub fn start(script: &str, instance: &str) -> App {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let port = free_port();
            match App::spawn(script, instance, port, deadline) {
                Ok(app) => return app,
                Err(e) if e.port_taken() && Instant::now() < deadline => continue,
                Err(e) => e.fail(script, instance, port),
            }
        }
    }

    /// Starts `script` on a given port: to bring an instance back where the
    /// proxy's config expects it after [`App::kill`].
    pub fn start_on(script: &str, instance: &str, port: u16) -> App {
        let deadline = Instant::now() + DEADLINE;
        App::spawn(script, instance, port, deadline)
            .unwrap_or_else(|e| e.fail(script, instance, port))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT<path>`, to reach the app without the proxy.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `{ addr = "127.0.0.1:PORT" }`, for a pool's `backends` list.
    pub fn entry(&self) -> String {
        super::entry(self.addr)
    }

    /// Kills the process, as a crash would: once this returns, its port
    /// refuses connections.
    pub fn kill(mut self) {
        self.stop();
    }

    fn spawn(
        script: &str,
        instance: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<App, StartError> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/apps")
            .join(script);
        assert!(path.exists(), "no app {}", path.display());
        let mut cmd = Command::new(python());
        cmd.arg(&path)
            .arg(port.to_string())
            .arg(instance)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // Set in a developer's shell, these would make `app.run` return
            // at once, serve on an inherited socket, or turn on the debugger.
            .env_remove("FLASK_RUN_FROM_CLI")
            .env_remove("WERKZEUG_RUN_MAIN")
            .env_remove("WERKZEUG_SERVER_FD")
            .env_remove("FLASK_DEBUG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot run {}: {e}: run scripts/test (it makes target/test-venv)",
                python().display()
            ),
        };
        let output = Arc::new(Lines::default());
        let readers = vec![
            read_lines(child.stdout.take().unwrap(), output.clone()),
            read_lines(child.stderr.take().unwrap(), output.clone()),
        ];
        let mut app = App {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            output,
            readers,
        };
        loop {
            if app.healthy(instance) {
                return Ok(app);
            }
            let exited = matches!(app.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                app.stop();
                // the process is gone, so its pipes are closed: all it
                // wrote has been read once the readers end
                for r in app.readers.drain(..) {
                    let _ = r.join();
                }
                return Err(StartError {
                    exited,
                    output: app.output.all(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `GET /healthz` is answered `ok` by this instance (and not
    /// by whatever else may have taken the port).
    fn healthy(&self, instance: &str) -> bool {
        let Ok(resp) = get(self.addr, "/healthz") else {
            return false;
        };
        let tagged = resp
            .lines()
            .take_while(|l| !l.is_empty())
            .any(|l| l.eq_ignore_ascii_case(&format!("x-backend: {instance}")));
        resp.starts_with("HTTP/1.1 200") && tagged && resp.ends_with("\r\n\r\nok")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Why an app did not come up.
struct StartError {
    /// It exited (rather than never answering).
    exited: bool,
    output: Vec<String>,
}

impl StartError {
    /// It exited because its port was taken: worth another port.
    fn port_taken(&self) -> bool {
        self.exited && self.output.iter().any(|l| l.contains("in use"))
    }

    fn fail(self, script: &str, instance: &str, port: u16) -> ! {
        let how = if self.exited {
            "exited"
        } else {
            "did not answer /healthz in time"
        };
        panic!(
            "{script} ({instance}) on port {port} {how}; its output:\n{}",
            self.output.join("\n")
        );
    }
}

/// A loopback port nothing listens on right now (also for [`super::redis`]).
pub(super) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Copies `stream` line by line into `into` until it closes.
pub(super) fn read_lines(stream: impl Read + Send + 'static, into: Arc<Lines>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(l) => into.push(l),
                Err(_) => break,
            }
        }
    })
}

/// `GET path` over a new connection: the whole response as text (the apps
/// close every connection after answering).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
