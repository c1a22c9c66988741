//! Configuration: the TOML file, parsed (`model`) then validated (`validate`)
//! into [`Config`], plain typed data with every default filled in.
//!
//! `Config` carries no runtime state; `runtime::Runtime::build` turns it into
//! the snapshot the request path reads, so a reload can validate a new file
//! without touching anything that serves traffic.

mod model;
pub mod tls;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

pub use validate::is_token;
pub(crate) use validate::without_name_lookups;

/// Everything sessionlb needs to know from the file, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub timeouts: Timeouts,
    /// Sorted by name.
    pub pools: Vec<Pool>,
    pub store: Store,
    pub routes: Vec<Route>,
    pub log: Log,
    pub resolver: Resolver,
    /// What is served all the same but should be fixed (a certificate out
    /// of its dates): `check` prints them, `run` and reloads log them.
    pub warnings: Vec<Problem>,
}

/// Where the backends that follow DNS are looked up (nginx's `resolver`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolver {
    /// Empty: the system's (`/etc/resolv.conf`, and `/etc/hosts`).
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    /// What `Authorization: Bearer` must carry on the admin listener's
    /// `/admin/` paths; `None`: nothing is asked.
    pub admin_token: Option<AdminToken>,
    /// Names (lower case, no port) the admin listener answers to besides
    /// its own address and `localhost`: a `Host` it does not know is how a
    /// web page reaches it through DNS rebinding.
    pub admin_hosts: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub shutdown_timeout: Duration,
    /// 0 means one worker per core.
    pub workers: usize,
    /// Client connections (and tunnels) open at once, per process; at the
    /// limit, the workers stop accepting until one closes.
    pub max_connections: usize,
    /// `Upgrade` tokens that are tunnelled (lower case); `h2c` never is.
    pub upgrade_protocols: Vec<String>,
    pub tls: Vec<TlsListener>,
}

/// `server.admin_token`. Its `Debug` does not show it: a configuration
/// that is printed must not hand out the key to the admin API.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn new(token: String) -> AdminToken {
        AdminToken(token)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the token. It compares SHA-256 digests in
    /// constant time, so that neither the time taken nor its length says
    /// how much of a guess was right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use aws_lc_rs::digest::{SHA256, digest};
        let want = digest(&SHA256, self.0.as_bytes());
        let got = digest(&SHA256, presented);
        aws_lc_rs::constant_time::verify_slices_are_equal(want.as_ref(), got.as_ref()).is_ok()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Default `server.max_connections`.
pub const MAX_CONNECTIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct TlsListener {
    pub listen: SocketAddr,
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Clone)]
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The chain and key, read and checked against each other.
    pub loaded: tls::Loaded,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request_header: Duration,
    /// From the request written to its end, to the backend's response head.
    pub response_header: Duration,
    /// The longest wait on a backend for a read or a write once the
    /// exchange has started (nginx's proxy_read_timeout/proxy_send_timeout).
    pub backend_io: Duration,
    /// The longest wait on a client for its request body or for it to take
    /// the response (nginx's client_body_timeout/send_timeout).
    pub client_io: Duration,
    /// An upgraded tunnel with no traffic either way.
    pub tunnel_idle: Duration,
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            request_header: Duration::from_secs(10),
            response_header: Duration::from_secs(60),
            backend_io: Duration::from_secs(60),
            client_io: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(3600),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    RoundRobin,
    LeastConn,
    IpHash,
    Cookie,
}

impl PolicyKind {
    pub const NAMES: &'static str = "round_robin, least_conn, ip_hash, cookie";

    pub fn parse(s: &str) -> Option<PolicyKind> {
        Some(match s {
            "round_robin" => PolicyKind::RoundRobin,
            "least_conn" => PolicyKind::LeastConn,
            "ip_hash" => PolicyKind::IpHash,
            "cookie" => PolicyKind::Cookie,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::LeastConn => "least_conn",
            PolicyKind::IpHash => "ip_hash",
            PolicyKind::Cookie => "cookie",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub name: String,
    pub policy: PolicyKind,
    pub backends: Vec<Backend>,
    /// The largest request body accepted (nginx's client_max_body_size).
    pub max_body: Option<u64>,
    /// How the pool's HTTPS backends are verified.
    pub tls: BackendTls,
    /// How often the names of backends with `resolve = true` are looked up.
    pub resolve_interval: Duration,
    /// The most backends one name with `resolve = true` places (its first
    /// addresses, sorted): each is a metric series, so a name that answers
    /// thousands must not make thousands of them.
    pub max_addresses: usize,
    pub health: Health,
    /// Present (with defaults) whenever `policy = "cookie"`.
    pub sticky: Option<Sticky>,
    pub session: Option<Session>,
}

#[derive(Debug, Clone)]
pub struct Backend {
    /// The backend's identity: its `id`, or else its address as written.
    /// Health, counters, pooled connections, `ip_hash` placement and sticky
    /// tokens follow it across reloads and across proxy instances.
    pub name: String,
    pub addr: Addr,
    pub weight: u32,
    pub drain: bool,
    /// Reached over TLS (the pool's `tls = true`, or `https://` in its
    /// address): the name it is verified as and sent as SNI, the host
    /// as written.
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
}

/// Where a backend is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// An address, or a name resolved once, when the file is loaded.
    Fixed(SocketAddr),
    /// A name that is resolved again and again (`resolve = true`): each
    /// address it has is a backend.
    Dns(DnsName),
}

/// A backend's name and port, to follow in DNS.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The addresses each name that backends follow has now, sorted.
pub type Addresses = std::collections::HashMap<DnsName, Arc<[SocketAddr]>>;

/// A backend at one address, as a snapshot has it: a fixed backend as the
/// file gives it, or one of the addresses of a backend that follows DNS.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Its identity: the backend's, and for one that follows DNS, the
    /// address after it (`app:8080/10.0.0.5:8080`), so that the addresses
    /// that stay keep their state, sticky tokens and `ip_hash` placement.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    pub drain: bool,
    pub tls: Option<rustls::pki_types::ServerName<'static>>,
}

impl Pool {
    /// Its backends at the addresses known now: one that follows DNS
    /// has one entry per address of its name in `addresses` (none before
    /// the first answer), up to `max_addresses`: the first ones, as
    /// `addresses` are sorted, so every lookup keeps the same.
    pub fn placed(&self, addresses: &Addresses) -> Vec<Placed> {
        let mut out = Vec::with_capacity(self.backends.len());
        for b in &self.backends {
            let at = |name: String, addr: SocketAddr| Placed {
                name,
                addr,
                weight: b.weight,
                drain: b.drain,
                tls: b.tls.clone(),
            };
            match &b.addr {
                Addr::Fixed(addr) => out.push(at(b.name.clone(), *addr)),
                Addr::Dns(dns) => {
                    let all = addresses.get(dns).map_or(&[][..], |a| a);
                    for &addr in &all[..all.len().min(self.max_addresses)] {
                        out.push(at(format!("{}/{addr}", b.name), addr));
                    }
                }
            }
        }
        out
    }

    /// The names its backends follow in DNS.
    pub fn dns_names(&self) -> impl Iterator<Item = &DnsName> {
        self.backends.iter().filter_map(|b| match &b.addr {
            Addr::Dns(name) => Some(name),
            Addr::Fixed(_) => None,
        })
    }
}

/// A pool's verification of its HTTPS backends.
#[derive(Debug, Clone, Default)]
pub struct BackendTls {
    /// The pool's `ca` bundle, read; the system roots when `None`.
    pub ca: Option<(PathBuf, Vec<rustls::pki_types::CertificateDer<'static>>)>,
    pub insecure_skip_verify: bool,
}

/// Highest accepted backend weight (as HAProxy's): keeps the round-robin
/// schedule, whose length is the sum of weights, small.
pub const MAX_WEIGHT: u32 = 256;

#[derive(Debug, Clone)]
pub struct Health {
    /// 0 disables passive health (nginx's `max_fails=0`).
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub check: Option<HealthCheck>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            check: None,
        }
    }
}

/// Active checks: `GET path` on each backend every `interval`; a 2xx or
/// 3xx answer within `timeout` passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Passes in a row that bring a backend down by checks back.
    pub rise: u32,
    /// Failures in a row that take a backend out.
    pub fall: u32,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub cookie: String,
    pub secret: Option<String>,
    pub prefix: Option<String>,
    pub max_age: Option<Duration>,
    pub domain: Option<String>,
    pub path: String,
}

impl Default for Sticky {
    fn default() -> Self {
        Sticky {
            cookie: "slb_route".into(),
            secret: None,
            prefix: None,
            max_age: None,
            domain: None,
            path: "/".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub carrier: Carrier,
    pub cookie: String,
    /// The `Path` of the app's cookies that are the session; the app's
    /// cookies of the same names on other paths pass through untouched.
    pub path: String,
    pub idle_timeout: Duration,
    /// How long a session used only once lives: most are a visitor's
    /// first request, or a flood's, and never come back.
    pub first_idle_timeout: Duration,
    /// How long a ticket replaced by a change still reads the session as
    /// it was before the change (requests already in flight with it).
    pub rotation_grace: Duration,
    /// New sessions stored per client address and minute; beyond it the
    /// request is answered with none stored.
    pub max_new_sessions_per_client: Option<u32>,
    /// What a sealed session is bound to: pools of one scope read each
    /// other's sessions, no other pool does. The pool's name unless set.
    pub scope: String,
    pub absolute_timeout: Duration,
    pub on_store_error: OnStoreError,
    pub encrypt: bool,
    pub max_blob_bytes: usize,
}

#[derive(Debug, Clone)]
pub enum Carrier {
    Cookie {
        app_cookies: Vec<String>,
    },
    Header {
        header: HeaderName,
        update_header: HeaderName,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    FailClosed,
    FailOpen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    Memory(MemoryStore),
    Redis(RedisStore),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryStore {
    /// Bytes of sessions (ids and values) kept before the least used are
    /// evicted.
    pub max_size: u64,
    /// Keys the store keys of sessions kept plain; a random key per
    /// process when not set (the sessions live no longer than it).
    pub secret: Option<String>,
}

impl MemoryStore {
    /// 256 MiB of sessions: some 100,000 of Flask's typical 2 KiB ones.
    pub const DEFAULT_SIZE: u64 = 256 * 1024 * 1024;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStore {
    pub url: String,
    pub key_prefix: String,
    /// Keys the store keys of sessions kept plain (`encrypt = false`).
    pub secret: Option<String>,
    /// Connecting, and each command: a store slower than this counts as
    /// down for the request.
    pub timeout: Duration,
    pub topology: RedisTopology,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    Standalone,
    Sentinel { master: String, nodes: Vec<String> },
    Cluster { nodes: Vec<String> },
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Lower case, without port.
    pub host: Option<String>,
    pub path_prefix: String,
    pub pool: String,
}

#[derive(Debug, Clone)]
pub struct Log {
    /// An `EnvFilter` directive; `RUST_LOG` wins over it.
    pub level: String,
    pub access_log: bool,
    pub access_format: AccessFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    Plain,
    Json,
}

/// One thing wrong with the file, located by its TOML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML, or its shape does not match the schema.
    #[error("{0}")]
    Syntax(Problem),
    /// Every semantic problem found, in file order.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<Problem>),
}

fn display_problems(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(Problem::to_string).collect();
    lines.join("\n")
}

impl ConfigError {
    /// Every problem, each with its path.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Read { .. } => vec![Problem {
                path: String::new(),
                message: self.to_string(),
            }],
            ConfigError::Syntax(p) => vec![p.clone()],
            ConfigError::Invalid(ps) => ps.clone(),
        }
    }
}

impl Config {
    /// Reads and validates a file. Relative paths inside it (certificates)
    /// are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base)
    }

    /// Parses and validates TOML text; `base` anchors relative paths.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let file = validate::parse_file(text)?;
        validate::validate(file, base)
    }

    /// Options this version parses and validates but does not serve yet;
    /// `run` refuses a file that turns them on rather than ignore them.
    pub fn unsupported(&self) -> Vec<Problem> {
        let mut v = Vec::new();
        let mut add = |path: String, what: &str| {
            v.push(Problem {
                path,
                message: format!("{what} is not supported by this version yet"),
            })
        };
        if let Store::Redis(redis) = &self.store {
            match redis.topology {
                RedisTopology::Standalone => {}
                RedisTopology::Sentinel { .. } => add("store.sentinel".into(), "Redis Sentinel"),
                RedisTopology::Cluster { .. } => add("store.cluster".into(), "Redis Cluster"),
            }
        }
        v
    }

    /// The one-screen summary `sessionlb check` prints.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let listen: Vec<String> = self
            .server
            .listen
            .iter()
            .map(|a| format!("{a} (http, h2c)"))
            .collect();
        let tls: Vec<String> = self
            .server
            .tls
            .iter()
            .map(|t| {
                let names: Vec<String> = t
                    .certificates
                    .iter()
                    .map(|c| c.loaded.names.join(" "))
                    .collect();
                format!("{} (tls: {})", t.listen, names.join("; "))
            })
            .collect();
        let _ = writeln!(s, "listeners: {}", [listen, tls].concat().join(", "));
        if let Some(admin) = self.server.admin_listen {
            let token = match self.server.admin_token {
                Some(_) => "token required on /admin/",
                None => "no token",
            };
            let _ = writeln!(s, "admin:     {admin} ({token})");
        }
        let workers = match self.server.workers {
            0 => "one per core".to_string(),
            n => n.to_string(),
        };
        let _ = writeln!(
            s,
            "workers:   {workers}; max_connections {}; shutdown_timeout {}; upgrades tunnelled: {}",
            self.server.max_connections,
            humantime::format_duration(self.server.shutdown_timeout),
            match self.server.upgrade_protocols.is_empty() {
                true => "none".to_string(),
                false => self.server.upgrade_protocols.join(", "),
            }
        );
        let t = &self.timeouts;
        let _ = writeln!(
            s,
            "timeouts:  connect {}, request_header {}, response_header {}, backend_io {}, client_io {}, tunnel_idle {}, idle {}",
            humantime::format_duration(t.connect),
            humantime::format_duration(t.request_header),
            humantime::format_duration(t.response_header),
            humantime::format_duration(t.backend_io),
            humantime::format_duration(t.client_io),
            humantime::format_duration(t.tunnel_idle),
            humantime::format_duration(t.idle)
        );
        for pool in &self.pools {
            let max_body = match pool.max_body {
                Some(n) => format!(", request bodies up to {n} bytes"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "pool {}: {}, {} backend(s){max_body}",
                pool.name,
                pool.policy.name(),
                pool.backends.len()
            );
            for b in &pool.backends {
                let drain = if b.drain { ", draining" } else { "" };
                let at = match &b.addr {
                    Addr::Fixed(addr) => match b.name.parse::<SocketAddr>() {
                        Ok(a) if a == *addr => String::new(),
                        _ => format!(" at {addr}"),
                    },
                    Addr::Dns(name) => format!(
                        " at every address of {name} (the first {} at most), looked up every {}",
                        pool.max_addresses,
                        humantime::format_duration(pool.resolve_interval)
                    ),
                };
                let https = match (b.tls.as_ref().map(|n| n.to_str()), &pool.tls) {
                    (None, _) => String::new(),
                    (Some(name), t) if t.insecure_skip_verify => {
                        format!(", https (SNI {name}, NOT verified)")
                    }
                    (Some(name), t) => match &t.ca {
                        Some((path, _)) => {
                            format!(", https verified as {name} by {}", path.display())
                        }
                        None => format!(", https verified as {name} by the system roots"),
                    },
                };
                let _ = writeln!(s, "  - {}{at} weight {}{drain}{https}", b.name, b.weight);
            }
            let h = &pool.health;
            let passive = if h.max_fails == 0 {
                "passive off".to_string()
            } else {
                format!(
                    "down after {} failure(s) within {}",
                    h.max_fails,
                    humantime::format_duration(h.fail_timeout)
                )
            };
            let active = match &h.check {
                Some(c) => format!(
                    "; active GET {} every {}, timeout {}, up after {} pass(es), down after {} failure(s)",
                    c.path,
                    humantime::format_duration(c.interval),
                    humantime::format_duration(c.timeout),
                    c.rise,
                    c.fall
                ),
                None => String::new(),
            };
            let _ = writeln!(s, "  health: {passive}{active}");
            if let (PolicyKind::Cookie, Some(st)) = (pool.policy, &pool.sticky) {
                let how = match &st.prefix {
                    Some(p) => format!("prefix on cookie {p}"),
                    None => format!("cookie {}", st.cookie),
                };
                let _ = writeln!(s, "  sticky: {how}");
            }
            if let Some(sess) = &pool.session {
                let carrier = match &sess.carrier {
                    Carrier::Cookie { app_cookies } => format!("cookie {}", app_cookies.join(", ")),
                    Carrier::Header { header, .. } => format!("header {header}"),
                };
                let _ = writeln!(
                    s,
                    "  session: shared store, carrier {carrier}, browser cookie {}, idle {} (first {}), absolute {}, {}",
                    sess.cookie,
                    humantime::format_duration(sess.idle_timeout),
                    humantime::format_duration(sess.first_idle_timeout),
                    humantime::format_duration(sess.absolute_timeout),
                    match sess.on_store_error {
                        OnStoreError::FailClosed => "fail_closed",
                        OnStoreError::FailOpen => "fail_open",
                    }
                );
                let limit = sess
                    .max_new_sessions_per_client
                    .map_or("no limit".to_string(), |n| format!("{n}"));
                let _ = writeln!(
                    s,
                    "           scope {}, {}, replaced tickets read {}, new sessions per client and minute: {limit}",
                    sess.scope,
                    if sess.encrypt { "sealed" } else { "plain" },
                    humantime::format_duration(sess.rotation_grace),
                );
            }
        }
        if self.routes.is_empty() {
            if let Some(p) = self.pools.first() {
                let _ = writeln!(s, "routes:    everything -> {}", p.name);
            }
        } else {
            let _ = writeln!(s, "routes:");
            for r in &self.routes {
                let _ = writeln!(
                    s,
                    "  - {}{} -> {}",
                    r.host.as_deref().unwrap_or("*"),
                    r.path_prefix,
                    r.pool
                );
            }
        }
        let store = match &self.store {
            Store::Memory(m) => format!(
                "memory (embedded, up to {} MiB)",
                m.max_size / (1024 * 1024)
            ),
            Store::Redis(r) => {
                let topo = match &r.topology {
                    RedisTopology::Standalone => "standalone".to_string(),
                    RedisTopology::Sentinel { master, nodes } => {
                        format!("sentinel master {master} via {} node(s)", nodes.len())
                    }
                    RedisTopology::Cluster { nodes } => {
                        format!("cluster of {} seed node(s)", nodes.len())
                    }
                };
                format!(
                    "redis {}, {topo}, prefix {:?}",
                    redact_url(&r.url),
                    r.key_prefix
                )
            }
        };
        let _ = writeln!(s, "store:     {store}");
        s
    }
}

/// Hides the password of a `redis://user:password@host` URL. The host
/// starts after the last `@`: a password may hold `@` itself.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}
