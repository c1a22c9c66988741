//! Binary upgrade (SIGUSR2) and systemd socket activation: listening
//! sockets handed to a new process, with no connection refused or reset.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use nix::sys::signal::Signal;
use support::client;
use support::load::{Load, mixed_clients};
use support::{Backend, DEADLINE, Proxy};

/// Stops a process this test did not start itself (the new binary) when
/// the test ends, passed or not.
struct Reaper(i32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
}

fn pid_in(line: &str) -> i32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigusr2_hands_the_sockets_to_the_new_binary_and_no_request_fails() {
    let b = Backend::start("b");
    // as systemd's Type=notify: where the processes say they serve
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut proxy = Proxy::start_with_env(
        &format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nworkers = 2\n\n\
             [pools.web]\nbackends = [{}]\n",
            b.entry()
        ),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let admin = proxy.admin_addr();
    let load = Load::start(&proxy.url("/"), mixed_clients());
    assert!(load.more(300), "the load does not run");

    proxy.signal(Signal::SIGUSR2);
    let serving = proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("upgrade: the new process serves"))
        .unwrap_or_else(|| panic!("{:#?}", proxy.stderr.all()));
    let new = Reaper(pid_in(&serving));
    assert_ne!(new.0, proxy.pid());
    // the old process drains and exits 0 while the load goes on
    let exited = proxy
        .wait_exit(DEADLINE)
        .expect("the old process did not exit");
    assert!(exited.success(), "{exited:?}");
    assert!(load.more(300), "the new process does not serve");
    let failed = load.finish().await;
    assert!(failed.is_empty(), "{} failed: {failed:#?}", failed.len());

    // systemd heard the old process serve, then the new one take over as
    // the service's main process, from both
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        let n = notify.recv(&mut buf).expect("fewer than 3 notifications");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        heard,
        [
            format!("READY=1\nMAINPID={}\n", proxy.pid()),
            format!("READY=1\nMAINPID={}\n", new.0),
            format!("MAINPID={}\n", new.0),
        ]
    );

    // the new process has the admin listener too, and is the one alive
    let metrics = client::get(&client::h1(), &format!("http://{admin}/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(new.0), None).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_whose_new_process_cannot_start_leaves_the_old_one_serving() {
    let b = Backend::start("b");
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[pools.web]\nbackends = [{}]\n",
        b.entry()
    ));
    // the file now has an error the new process refuses
    std::fs::write(&proxy.config_path, "[server]\nlisten = [\"nowhere\"]\n").unwrap();
    proxy.signal(Signal::SIGUSR2);
    let failed = proxy
        .stderr
        .wait_for(DEADLINE, |l| l.contains("upgrade failed"))
        .unwrap_or_else(|| panic!("{:#?}", proxy.stderr.all()));
    assert!(failed.contains("exited before it served"), "{failed}");
    assert_eq!(client::get(&client::h1(), &proxy.url("/")).await.body, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_from_systemd_is_listened_on_by_every_worker() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let b = Backend::start("b");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = socket.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessionlb.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"{addr}\"]\nworkers = 2\n\n[pools.web]\nbackends = [{}]\n",
            b.entry()
        ),
    )
    .unwrap();
    // as systemd starts a service: the socket as descriptor 3, and
    // LISTEN_PID naming the service's own process
    let fd = socket.as_raw_fd();
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" run -c \"$1\"")
        .arg(support::bin())
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped());
    // SAFETY: only dup2, async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let _reaper = Reaper(child.id() as i32);
    drop(socket);
    let lines = Arc::new(support::Lines::default());
    support::collect(child.stderr.take().unwrap(), lines.clone());
    let handed = lines.wait_for(DEADLINE, |l| l.contains("listening socket handed over"));
    assert!(handed.is_some(), "{:#?}", lines.all());
    let handed = handed.unwrap();
    assert!(handed.contains(&format!("addr={addr}")), "{handed}");
    // one socket, shared by the 2 workers
    assert!(handed.contains("sockets=2"), "{handed}");
    let client = client::h1_fresh();
    for _ in 0..20 {
        assert_eq!(
            client::get(&client, &format!("http://{addr}/")).await.body,
            "b"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
