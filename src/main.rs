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
