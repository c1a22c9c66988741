//! The `sessionlb` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sessionlb::config::Config;
use sessionlb::runtime::Shared;
use sessionlb::server::Server;

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
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::Run { config }), _) | (None, Some(config)) => run_file(&config),
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

fn run_file(path: &Path) -> anyhow::Result<()> {
    let config = load(path)?;
    let unsupported = config.unsupported();
    if !unsupported.is_empty() {
        let lines: Vec<String> = unsupported.iter().map(|p| format!("  {p}")).collect();
        anyhow::bail!("cannot run {}:\n{}", path.display(), lines.join("\n"));
    }
    init_tracing(&config.log.level);
    tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "starting");
    for w in &config.warnings {
        tracing::warn!(problem = %w, "configuration warning");
    }
    let main_loop = MainLoop::new()?;
    let shared = Shared::new(config);
    let server = Server::start(shared.clone())?;
    for addr in server.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    for addr in server.tls_addrs() {
        tracing::info!(%addr, tls = true, "listening");
    }
    main_loop.run(server, shared, Some(path.to_owned()))
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
    let shared = Shared::new(config);
    let server = Server::start(shared.clone())?;
    let addr = server.local_addrs()[0];
    let admin = main_loop.bind_admin(admin)?;
    let admin_addr = admin.local_addr()?;
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
    main_loop.run_with_admin(server, shared, None, Some(admin))
}

/// The main thread's event loop. Its signal handlers are installed before
/// anything starts, so that an early SIGINT or SIGTERM is handled, not fatal.
struct MainLoop {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl MainLoop {
    fn new() -> anyhow::Result<MainLoop> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the main event loop")?;
        let (term, int, hup) = rt
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::hangup())?,
                ))
            })
            .context("installing signal handlers")?;
        Ok(MainLoop { rt, term, int, hup })
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP and serving the
    /// admin listener; then shuts down gracefully within
    /// `server.shutdown_timeout`.
    /// Binds the admin listener, on this loop's runtime.
    fn bind_admin(&self, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
        let _entered = self.rt.enter();
        let listener = std::net::TcpListener::bind(addr)
            .and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            })
            .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?;
        Ok(listener)
    }

    fn run(self, server: Server, shared: Arc<Shared>, path: Option<PathBuf>) -> anyhow::Result<()> {
        let admin = match shared.load().config.server.admin_listen {
            Some(addr) => Some(self.bind_admin(addr)?),
            None => None,
        };
        self.run_with_admin(server, shared, path, admin)
    }

    fn run_with_admin(
        self,
        server: Server,
        shared: Arc<Shared>,
        path: Option<PathBuf>,
        admin: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<()> {
        let MainLoop {
            rt,
            mut term,
            mut int,
            mut hup,
        } = self;
        rt.block_on(async {
        if let Some(listener) = admin {
            let admin_addr = listener.local_addr()?;
            tracing::info!(%admin_addr, "admin listening");
            tokio::spawn(sessionlb::admin::serve(
                listener,
                shared.clone(),
                path.clone(),
            ));
        }
        tokio::spawn(sessionlb::admin::watch_store(shared.clone()));
        // once per process, here rather than in the workers
        tokio::spawn(sessionlb::health::run(shared.clone()));
        let mut report = tokio::time::interval(DRAIN_REPORT_EVERY);
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); break; }
                _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); break; }
                _ = hup.recv() => match &path {
                    Some(path) => { let _ = sessionlb::reload::reload(&shared, path); }
                    None => tracing::info!("SIGHUP: no configuration file to reload"),
                },
                _ = report.tick() => shared.report_draining(),
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
