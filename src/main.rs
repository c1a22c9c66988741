//! The `sessionlb` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sessionlb::admin::AdminListener;
use sessionlb::config::{Addresses, Config};
use sessionlb::reload::Reloader;
use sessionlb::resolve::Dns;
use sessionlb::runtime::Shared;
use sessionlb::server::Inherited;
use sessionlb::server::Server;
use sessionlb::upgrade::{Relaunch, UpgradeError};

#[derive(Parser)]
#[command(
    name = "sessionlb",
    version,
    about = "A session-aware HTTP reverse proxy and load balancer"
)]
struct Cli {
    /// Configuration file (same as `run -c PATH`).
    #[arg(short, long, global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground.
    Run {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Ask the running instance whose admin listener the file names to
    /// reload its configuration (as SIGHUP).
    Reload {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the pools and backends of the running instance whose admin
    /// listener the file names.
    Status {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Start three demo backends on loopback and the proxy in front of them.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where its admin listener (metrics, sessions) listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    // first: the sockets this process was handed, before anything opens a
    // descriptor or starts a thread
    let inherited = match Inherited::from_env() {
        Ok(inherited) => inherited,
        Err(error) => {
            eprintln!("sessionlb: {error}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run_file(&config, inherited),
        (Some(Command::Check { config }), _) => return check(&config),
        (Some(Command::Reload { config }), _) => return reload(&config),
        (Some(Command::Status { config }), _) => return status(&config),
        (
            Some(Command::Demo {
                listen,
                admin_listen,
            }),
            _,
        ) => demo(listen, admin_listen),
        (None, None) => {
            eprintln!(
                "sessionlb: nothing to do; try `sessionlb demo`, `sessionlb run -c FILE` or `sessionlb --help`"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sessionlb: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            println!("{}: OK", path.display());
            print!("{}", config.summary());
            for w in &config.warnings {
                println!("warning: {w}");
            }
            for p in config.unsupported() {
                println!("warning: {p}; `run` will refuse this file");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let problems = error.problems();
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `sessionlb reload`: `POST /admin/reload`, its answer printed.
fn reload(path: &Path) -> ExitCode {
    match ask_admin(path, "POST", "/admin/reload") {
        Ok((200, body)) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Ok((_, body)) => {
            eprint!("sessionlb: {body}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("sessionlb: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `sessionlb status`: `GET /admin/pools`, one line per backend.
fn status(path: &Path) -> ExitCode {
    let body = match ask_admin(path, "GET", "/admin/pools") {
        Ok((200, body)) => body,
        Ok((_, body)) => {
            eprint!("sessionlb: {body}");
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("sessionlb: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(&body) else {
        eprintln!("sessionlb: the admin listener's answer is not JSON:\n{body}");
        return ExitCode::FAILURE;
    };
    println!("generation {}", state["generation"]);
    for pool in state["pools"].as_array().into_iter().flatten() {
        println!(
            "pool {} ({})",
            pool["name"].as_str().unwrap_or("?"),
            pool["policy"].as_str().unwrap_or("?")
        );
        for b in pool["backends"].as_array().into_iter().flatten() {
            let up = match (b["up"].as_bool(), b["down_reason"].as_str()) {
                (Some(true), _) => "up".to_string(),
                (_, Some(reason)) => format!("down ({reason})"),
                _ => "down".to_string(),
            };
            let draining = match b["draining"].as_bool() {
                Some(true) => ", draining",
                _ => "",
            };
            println!(
                "  {} at {}: {up}{draining}, weight {}, {} in flight",
                b["id"].as_str().unwrap_or("?"),
                b["addr"].as_str().unwrap_or("?"),
                b["weight"],
                b["in_flight"]
            );
        }
    }
    ExitCode::SUCCESS
}

/// One request to the admin listener `path` names: the status and body of
/// its answer. It sends what the listener asks of a client: a `Host` that
/// is its address, and `server.admin_token` when the file sets one.
fn ask_admin(path: &Path, method: &str, target: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let config = load(path)?;
    let Some(written) = config.server.admin_listen else {
        anyhow::bail!(
            "{} sets no server.admin_listen: there is no admin listener to ask",
            path.display()
        );
    };
    if written.port() == 0 {
        anyhow::bail!(
            "server.admin_listen is {written} in {}: the port the instance was given is not in the file",
            path.display()
        );
    }
    // a listener on every address is reached on loopback
    let ip = match written.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, written.port());
    let authorization = match &config.server.admin_token {
        Some(token) => format!("Authorization: Bearer {}\r\n", token.as_str()),
        None => String::new(),
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot connect to the admin listener at {addr}"))?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\nUser-Agent: sessionlb/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(request.as_bytes())
        .with_context(|| format!("sending to the admin listener at {addr}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .with_context(|| format!("reading the admin listener's answer from {addr}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{addr} did not answer HTTP: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// How long `reload` and `status` wait on the admin listener (a reload
/// that looks names up in DNS may take seconds).
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| {
        let lines: Vec<String> = e.problems().iter().map(|p| format!("  {p}")).collect();
        anyhow::anyhow!(
            "invalid configuration {}:\n{}",
            path.display(),
            lines.join("\n")
        )
    })
}

fn run_file(path: &Path, mut inherited: Inherited) -> anyhow::Result<()> {
    let config = load(path)?;
    let unsupported = config.unsupported();
    if !unsupported.is_empty() {
        let lines: Vec<String> = unsupported.iter().map(|p| format!("  {p}")).collect();
        anyhow::bail!("cannot run {}:\n{}", path.display(), lines.join("\n"));
    }
    init_tracing(&config.log.level);
    tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "starting");
    let relaunch = Relaunch::capture().context("finding this binary's path, for upgrades")?;
    for w in &config.warnings {
        tracing::warn!(problem = %w, "configuration warning");
    }
    let main_loop = MainLoop::new()?;
    // backends that follow DNS have their addresses before the first request
    let dns = Arc::new(Dns::default());
    let addresses = main_loop
        .rt
        .block_on(dns.new_names(&config, &Addresses::new()));
    let shared = Shared::new(config, addresses);
    // and backends with health checks are checked once before it accepts
    main_loop
        .rt
        .block_on(sessionlb::health::first_round(shared.clone()));
    let server = Server::start(shared.clone(), &mut inherited)?;
    let admin = match shared.load().config.server.admin_listen {
        Some(addr) => Some(main_loop.bind_admin(addr, &mut inherited)?),
        None => None,
    };
    inherited.serving();
    let file = File {
        path: path.to_owned(),
        relaunch,
        dns,
    };
    main_loop.run(server, shared, Some(file), admin)
}

fn demo(listen: SocketAddr, admin: SocketAddr) -> anyhow::Result<()> {
    let backends = sessionlb::demo::start_backends(3).context("starting the demo backends")?;
    let config = Config::parse(
        &sessionlb::demo::config_text(listen, admin, &backends),
        Path::new("."),
    )
    .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    init_tracing(&config.log.level);
    let main_loop = MainLoop::new()?;
    let shared = Shared::new(config, Addresses::new());
    let server = Server::start(shared.clone(), &mut Inherited::default())?;
    let addr = server.local_addrs()[0];
    let admin = main_loop.bind_admin(admin, &mut Inherited::default())?;
    let admin_addr = admin.socket.local_addr()?;
    println!(
        "sessionlb demo: proxy on http://{addr}/ in front of 3 backends, round robin, in-memory session store"
    );
    for (i, b) in backends.iter().enumerate() {
        println!("  backend {}: http://{b}/", i + 1);
    }
    let jar = std::env::temp_dir().join("sessionlb-demo.jar");
    let jar = jar.display();
    println!("Try:");
    println!("  curl -s http://{addr}/          # again and again: backends 1, 2 and 3 take turns");
    println!("  curl -s --http2-prior-knowledge http://{addr}/   # the same over HTTP/2 (h2c)");
    println!(
        "The backends keep a login and a counter in a cookie session (demo_session); the proxy keeps it for them:"
    );
    println!("  curl -s -c {jar} -b {jar} 'http://{addr}/login?user=alice'");
    println!(
        "  curl -s -c {jar} -b {jar} http://{addr}/count   # again and again: the count goes up on every backend"
    );
    println!(
        "  grep -o 'slb_sid.*' {jar}   # the browser holds only an opaque ticket, never demo_session"
    );
    println!(
        "  curl -s http://{admin_addr}/admin/sessions/$(grep -o 'slb_sid.*' {jar} | cut -f2)   # what the store holds"
    );
    println!("  curl -s http://{admin_addr}/metrics | grep session");
    println!("Each request is also logged below (access log on stdout). Ctrl-C stops.");
    main_loop.run(server, shared, None, Some(admin))
}

/// The main thread's event loop. Its signal handlers are installed before
/// anything starts, so that an early SIGINT or SIGTERM is handled, not fatal.
struct MainLoop {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl MainLoop {
    fn new() -> anyhow::Result<MainLoop> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the main event loop")?;
        let (term, int, hup, usr2) = rt
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::hangup())?,
                    signal(SignalKind::user_defined2())?,
                ))
            })
            .context("installing signal handlers")?;
        Ok(MainLoop {
            rt,
            term,
            int,
            hup,
            usr2,
        })
    }

    /// Binds the admin listener (or takes it from those `inherited`).
    fn bind_admin(&self, addr: SocketAddr, inherited: &mut Inherited) -> anyhow::Result<Admin> {
        let given = inherited
            .take(&AdminListener::handover_name(addr), addr)
            .into_iter()
            .next();
        let socket = match given {
            Some(socket) => socket,
            None => std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?,
        };
        Ok(Admin {
            written: addr,
            socket,
        })
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP, upgrading on
    /// SIGUSR2 and serving the admin listener; then shuts down gracefully
    /// within `server.shutdown_timeout`.
    fn run(
        self,
        server: Server,
        shared: Arc<Shared>,
        file: Option<File>,
        admin: Option<Admin>,
    ) -> anyhow::Result<()> {
        let MainLoop {
            rt,
            mut term,
            mut int,
            mut hup,
            mut usr2,
        } = self;
        // the demo has no file: nothing to reload, upgrade or look up
        let file = file.map(
            |File {
                 path,
                 relaunch,
                 dns,
             }| {
                let reloader = Reloader::new(path, shared.clone(), server.listeners(), dns);
                (Arc::new(reloader), relaunch)
            },
        );
        let reloader = file.as_ref().map(|(reloader, _)| reloader);
        rt.block_on(async {
        // the reloader keeps the admin listener (a reload may move it);
        // the demo, which has none, keeps it here
        let mut _demo_admin = None;
        if let Some(Admin { written, socket }) = admin {
            match reloader {
                Some(reloader) => reloader.start_admin(written, socket)?,
                None => _demo_admin = Some(AdminListener::start(written, socket, shared.clone(), None)?),
            }
        }
        tokio::spawn(sessionlb::admin::watch_store(shared.clone()));
        // once per process, here rather than in the workers
        tokio::spawn(sessionlb::health::run(shared.clone()));
        if let Some(reloader) = reloader {
            tokio::spawn(sessionlb::resolve::run(reloader.dns.clone(), shared.clone()));
        }
        let mut report = tokio::time::interval(DRAIN_REPORT_EVERY);
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); break; }
                _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); break; }
                _ = hup.recv() => match reloader {
                    Some(reloader) => { let _ = reloader.reload().await; }
                    None => tracing::info!("SIGHUP: no configuration file to reload"),
                },
                _ = report.tick() => shared.report_draining(),
                _ = usr2.recv() => {
                    let Some((reloader, relaunch)) = &file else {
                        tracing::info!("SIGUSR2: the demo cannot be upgraded");
                        continue;
                    };
                    match upgrade(relaunch, &server, reloader).await {
                        Ok(pid) => {
                            tracing::info!(pid, "upgrade: the new process serves; this one stops accepting and drains");
                            // said by the main process too, before it exits
                            sessionlb::server::inherit::tell_systemd(&format!("MAINPID={pid}\n"));
                            break;
                        }
                        Err(error) => tracing::error!(%error, "upgrade failed; this process serves on"),
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
        let timeout = shared.load().config.server.shutdown_timeout;
        server.shutdown();
        if server.wait(timeout) {
            tracing::info!("all connections finished; bye");
        } else {
            tracing::warn!(
                ?timeout,
                "shutdown_timeout reached; closing the remaining connections"
            );
        }
        sessionlb::access_log::flush();
        Ok(())
    }
}

/// Starts the new binary with every listening socket, admin's too.
async fn upgrade(
    relaunch: &Relaunch,
    server: &Server,
    reloader: &Reloader,
) -> Result<u32, UpgradeError> {
    let mut sockets = server
        .listeners()
        .handover()
        .map_err(UpgradeError::Sockets)?;
    sockets.extend(reloader.admin_handover().map_err(UpgradeError::Sockets)?);
    relaunch.run(sockets).await
}

/// The admin listener's socket, bound for the address the file writes.
struct Admin {
    written: SocketAddr,
    socket: std::net::TcpListener,
}

/// The configuration file a proxy runs from, how to start its binary
/// again, and the resolver its backends that follow DNS use.
struct File {
    path: PathBuf,
    relaunch: Relaunch,
    dns: Arc<Dns>,
}

/// How often the log says what draining backends still serve.
const DRAIN_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

fn init_tracing(level: &str) {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = from_env
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
