//! From the raw TOML model to a validated [`Config`], collecting every
//! problem with its TOML path rather than stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

use super::model::{self, FileConfig};
use super::*;

/// Parses TOML into the raw model. Unknown keys and wrong types are
/// reported with their TOML path and line.
pub(super) fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, String::new(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        syntax_error(text, path, e.inner())
    })
}

fn syntax_error(text: &str, path: String, e: &toml::de::Error) -> ConfigError {
    let mut message = e.message().trim_end().to_string();
    if let Some(span) = e.span() {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        message = format!("{message} (line {line})");
    }
    ConfigError::Syntax(Problem { path, message })
}

/// Collects problems; each is reported with the path where it was found.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// A duration with units (`500ms`, `10s`, `30m`, `24h`), not zero.
    fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        match parse_duration(raw) {
            Ok(d) => d,
            Err(msg) => {
                self.push(path, msg);
                default
            }
        }
    }

    /// A positive integer no larger than `max`.
    fn count(&mut self, path: &str, raw: Option<i64>, default: u32, min: u32, max: u32) -> u32 {
        let Some(n) = raw else { return default };
        if n < i64::from(min) || n > i64::from(max) {
            self.push(path, format!("must be between {min} and {max}, got {n}"));
            default
        } else {
            n as u32
        }
    }

    fn token(&mut self, path: &str, what: &str, value: &str) {
        if !is_token(value) {
            self.push(
                path,
                format!("{what} {value:?} is not a valid cookie name (an HTTP token: letters, digits and !#$%&'*+-.^_`|~)"),
            );
        }
    }
}

/// Durations are strings with units; a bare number is refused so that
/// `timeout = "30"` is never silently read as seconds or milliseconds.
pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw.trim()) {
        Ok(d) if d.is_zero() => Err(format!("duration {raw:?} must be greater than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(format!(
            "invalid duration {raw:?} ({e}); use a number with a unit: 500ms, 10s, 30m, 24h"
        )),
    }
}

/// A size in bytes, as nginx writes them: `512`, `64k`, `10m`, `1g`
/// (powers of 1024), not zero.
pub(crate) fn parse_size(raw: &str) -> Result<u64, String> {
    let fail =
        || format!("invalid size {raw:?}; use bytes or a number with k, m or g: \"512k\", \"10m\"");
    let text = raw.trim();
    let (digits, unit) = match text.as_bytes().last() {
        Some(b'k' | b'K') => (&text[..text.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&text[..text.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail());
    }
    let n = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(fail)?;
    if n == 0 {
        return Err(format!(
            "size {raw:?} must be greater than zero (leave max_body out for no limit)"
        ));
    }
    Ok(n)
}

/// RFC 7230 token, the grammar of cookie names and header names.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn parse_listen(p: &mut Problems, path: &str, raw: &str) -> Option<SocketAddr> {
    match raw.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(
                path,
                format!("invalid socket address {raw:?} (expected ip:port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\")"),
            );
            None
        }
    }
}

thread_local! {
    /// Set by [`without_name_lookups`].
    static NO_LOOKUPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (a [`Config::parse`]) with backend host names not looked up:
/// each resolves to `127.0.0.1` with its port. The fuzz target parses
/// arbitrary text, which must not become DNS queries for arbitrary names.
pub(crate) fn without_name_lookups<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_LOOKUPS.set(self.0);
        }
    }
    let _restore = Restore(NO_LOOKUPS.replace(true));
    f()
}

/// `pools.X.max_addresses` when not given.
const DEFAULT_MAX_ADDRESSES: u32 = 64;
/// Highest `pools.X.max_addresses`: a bound on the metric series (and
/// connection pool slots) one name can make.
const MAX_ADDRESSES: u32 = 1024;

/// `pools.X.resolve_interval` when not given (as the SPEC's example).
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// Shorter would be a flood of queries, not fresher addresses.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

/// The name and port of a backend with `resolve = true`: looked up while
/// running, not now, so a name that does not resolve yet (the app is not
/// up) is no problem of the file.
fn dns_name(p: &mut Problems, path: &str, raw: &str) -> Option<DnsName> {
    let parsed = raw.rsplit_once(':').and_then(|(host, port)| {
        let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            });
        valid.then(|| DnsName {
            host: host.to_ascii_lowercase(),
            port,
        })
    });
    match parsed {
        Some(name) if name.host.parse::<std::net::IpAddr>().is_err() => Some(name),
        Some(_) => {
            p.push(
                path,
                format!("{raw:?} is an address: resolve = true needs a host name"),
            );
            None
        }
        None => {
            p.push(
                path,
                format!("invalid backend name {raw:?} for resolve = true (expected host:port, the host a DNS name)"),
            );
            None
        }
    }
}

/// A backend address: `ip:port`, or `host:port` resolved now, as nginx
/// resolves `server` names when it loads its configuration.
fn parse_backend_addr(p: &mut Problems, path: &str, raw: &str) -> Option<SocketAddr> {
    if let Ok(a) = raw.parse::<SocketAddr>() {
        return Some(a);
    }
    let valid_shape = raw.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains(['/', ' ']) && port.parse::<u16>().is_ok()
    });
    if !valid_shape {
        p.push(
            path,
            format!("invalid socket address {raw:?} (expected host:port)"),
        );
        return None;
    }
    if NO_LOOKUPS.get() {
        let port = raw.rsplit_once(':').and_then(|(_, port)| port.parse().ok());
        return Some(SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0))));
    }
    match raw.to_socket_addrs() {
        Ok(mut addrs) => match addrs.next() {
            Some(a) => Some(a),
            None => {
                p.push(path, format!("cannot resolve {raw:?}: no address"));
                None
            }
        },
        Err(e) => {
            p.push(path, format!("cannot resolve {raw:?}: {e}"));
            None
        }
    }
}

pub(super) fn validate(file: FileConfig, base: &Path) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    let mut warnings = Vec::new();
    let server = validate_server(&mut p, &mut warnings, file.server, base);
    let timeouts = validate_timeouts(&mut p, file.timeouts);
    let pools: Vec<Pool> = file
        .pools
        .into_iter()
        .filter_map(|(name, pool)| validate_pool(&mut p, &mut warnings, name, pool, base))
        .collect();
    if pools.is_empty() {
        p.push("pools", "at least one pool is required, e.g. [pools.web] with backends = [{ addr = \"127.0.0.1:9001\" }]");
    }
    let store = validate_store(&mut p, file.store);
    warn_tickets_across_scopes(&pools, &mut warnings);
    if let Store::Redis(redis) = &store
        && redis.secret.is_none()
        && let Some(plain) = pools
            .iter()
            .find(|pool| pool.session.as_ref().is_some_and(|s| !s.encrypt))
    {
        p.push(
            "store.secret",
            format!(
                "pool {:?} keeps its sessions plain (encrypt = false) in Redis: set store.secret, the same on every instance, so that a reader of Redis cannot tell the tickets from the keys",
                plain.name
            ),
        );
    }
    let routes = validate_routes(&mut p, file.routes, &pools);
    let log = validate_log(&mut p, file.log);
    let resolver = validate_resolver(&mut p, file.resolver.unwrap_or_default());
    if p.0.is_empty() {
        Ok(Config {
            server,
            timeouts,
            pools,
            store,
            routes,
            log,
            resolver,
            warnings,
        })
    } else {
        Err(ConfigError::Invalid(p.0))
    }
}

/// Two pools whose tickets share a cookie name but not a scope: on one
/// host, each takes the other's ticket for no session and clears it, and
/// the client is logged out of one whenever it visits the other.
fn warn_tickets_across_scopes(pools: &[Pool], warnings: &mut Vec<Problem>) {
    let sessions: Vec<(&Pool, &Session)> = pools
        .iter()
        .filter_map(|p| Some((p, p.session.as_ref()?)))
        .collect();
    for (i, (a, sa)) in sessions.iter().enumerate() {
        if let Some((b, _)) = sessions[i + 1..]
            .iter()
            .find(|(_, sb)| sb.cookie == sa.cookie && sb.scope != sa.scope)
        {
            warnings.push(Problem {
                path: format!("pools.{}.session.cookie", b.name),
                message: format!(
                    "pools {:?} and {:?} both name their ticket {:?} in different scopes: on one host each clears the other's ticket. Give them different cookie names, or one scope to share sessions",
                    a.name, b.name, sa.cookie
                ),
            });
        }
    }
}

/// `[resolver] nameservers`: `ip` (port 53) or `ip:port`.
fn validate_resolver(p: &mut Problems, s: model::ResolverSection) -> Resolver {
    let mut nameservers = Vec::new();
    for (i, raw) in s.nameservers.iter().enumerate() {
        let parsed = raw.parse::<SocketAddr>().or_else(|_| {
            raw.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Ok(addr) => nameservers.push(addr),
            Err(_) => p.push(
                format!("resolver.nameservers[{i}]"),
                format!("invalid name server {raw:?} (expected ip or ip:port)"),
            ),
        }
    }
    Resolver { nameservers }
}

fn validate_server(
    p: &mut Problems,
    warnings: &mut Vec<Problem>,
    s: model::ServerSection,
    base: &Path,
) -> Server {
    let mut seen: HashMap<SocketAddr, String> = HashMap::new();
    let mut check_dup = |p: &mut Problems, path: String, addr: SocketAddr| {
        if addr.port() == 0 {
            return;
        }
        if let Some(first) = seen.get(&addr) {
            p.push(
                path,
                format!("duplicate listen address {addr} (already used by {first})"),
            );
        } else {
            seen.insert(addr, path);
        }
    };
    let mut listen = Vec::new();
    for (i, raw) in s.listen.iter().enumerate() {
        let path = format!("server.listen[{i}]");
        if let Some(a) = parse_listen(p, &path, raw) {
            check_dup(p, path, a);
            listen.push(a);
        }
    }
    let mut tls = Vec::new();
    for (i, t) in s.tls.into_iter().enumerate() {
        let path = format!("server.tls[{i}]");
        let addr = parse_listen(p, &format!("{path}.listen"), &t.listen);
        if let Some(a) = addr {
            check_dup(p, format!("{path}.listen"), a);
        }
        if t.certificates.is_empty() {
            p.push(
                format!("{path}.certificates"),
                "a TLS listener needs at least one certificate",
            );
        }
        let mut certificates = Vec::new();
        for (j, c) in t.certificates.into_iter().enumerate() {
            let cpath = format!("{path}.certificates[{j}]");
            let cert = base.join(&c.cert);
            let key = base.join(&c.key);
            let mut found = true;
            for (field, file) in [("cert", &cert), ("key", &key)] {
                if !file.is_file() {
                    found = false;
                    p.push(
                        format!("{cpath}.{field}"),
                        format!("file {} not found", file.display()),
                    );
                }
            }
            if !found || NO_LOOKUPS.get() {
                continue;
            }
            match tls::load_certificate(&cert, &key, std::time::SystemTime::now()) {
                Ok((loaded, warning)) => {
                    if let Some(message) = warning {
                        warnings.push(Problem {
                            path: format!("{cpath}.cert"),
                            message,
                        });
                    }
                    certificates.push(Certificate { cert, key, loaded });
                }
                Err(e) => {
                    let field = if e.is_key() { "key" } else { "cert" };
                    p.push(format!("{cpath}.{field}"), e.to_string());
                }
            }
        }
        if let Some(listen) = addr {
            tls.push(TlsListener {
                listen,
                certificates,
            });
        }
    }
    if s.listen.is_empty()
        && tls.is_empty()
        && p.0.iter().all(|x| !x.path.starts_with("server.tls"))
    {
        p.push(
            "server.listen",
            "no listener: give server.listen = [\"127.0.0.1:8080\"] or a [[server.tls]] listener",
        );
    }
    let admin_listen = s.admin_listen.as_deref().and_then(|raw| {
        let a = parse_listen(p, "server.admin_listen", raw)?;
        check_dup(p, "server.admin_listen".into(), a);
        Some(a)
    });
    let admin_token = s
        .admin_token
        .and_then(|token| validate_admin_token(p, warnings, token));
    if let Some(a) = admin_listen
        && !a.ip().is_loopback()
        && admin_token.is_none()
    {
        warnings.push(Problem {
            path: "server.admin_listen".into(),
            message: format!(
                "{a} is not a loopback address and server.admin_token is not set: whoever reaches it can reload the configuration and read or revoke sessions; set server.admin_token"
            ),
        });
    }
    let admin_hosts = s
        .admin_hosts
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| admin_host(p, &format!("server.admin_hosts[{i}]"), raw))
        .collect();
    let mut trusted_proxies = Vec::new();
    for (i, raw) in s.trusted_proxies.iter().enumerate() {
        let parsed = raw
            .parse::<IpNet>()
            .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net.trunc()),
            Err(_) => p.push(
                format!("server.trusted_proxies[{i}]"),
                format!("invalid CIDR {raw:?} (expected e.g. \"10.0.0.0/8\", \"fd00::/8\" or a single address)"),
            ),
        }
    }
    let shutdown_timeout = p.duration(
        "server.shutdown_timeout",
        s.shutdown_timeout.as_deref(),
        Duration::from_secs(30),
    );
    let max_connections = match s.max_connections {
        None => MAX_CONNECTIONS,
        Some(n) if (1..=10_000_000).contains(&n) => n as usize,
        Some(n) => {
            p.push(
                "server.max_connections",
                format!("must be between 1 and 10000000, got {n}"),
            );
            MAX_CONNECTIONS
        }
    };
    let upgrade_protocols = validate_upgrades(p, s.upgrade_protocols);
    let workers = match s.workers {
        None => 0,
        Some(n) if (0..=1024).contains(&n) => n as usize,
        Some(n) => {
            p.push(
                "server.workers",
                format!("must be between 0 (one per core) and 1024, got {n}"),
            );
            0
        }
    };
    Server {
        listen,
        admin_listen,
        admin_token,
        admin_hosts,
        trusted_proxies,
        shutdown_timeout,
        workers,
        max_connections,
        upgrade_protocols,
        tls,
    }
}

/// Shortest `server.admin_token` that `check` does not call weak: 128 bits
/// of a random hex string.
const ADMIN_TOKEN_MIN: usize = 32;

/// `server.admin_token`: it travels in an `Authorization` header, so it is
/// printable ASCII without spaces.
fn validate_admin_token(
    p: &mut Problems,
    warnings: &mut Vec<Problem>,
    token: String,
) -> Option<AdminToken> {
    const PATH: &str = "server.admin_token";
    if token.is_empty() {
        p.push(
            PATH,
            "is empty: remove it, or give a random string (e.g. `openssl rand -hex 32`)",
        );
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(PATH, "must be printable ASCII without spaces (it is sent as `Authorization: Bearer <token>`)");
        return None;
    }
    if token.len() < ADMIN_TOKEN_MIN {
        warnings.push(Problem {
            path: PATH.into(),
            message: format!(
                "is {} characters long; a guessable token protects nothing: use at least {ADMIN_TOKEN_MIN} random ones (e.g. `openssl rand -hex 32`)",
                token.len()
            ),
        });
    }
    Some(AdminToken::new(token))
}

/// One `server.admin_hosts` entry: a host name or an IP address, without a
/// port (a request's `Host` matches it with any port or none). Kept in
/// lower case, an IPv6 address without its brackets, as requests are
/// compared.
fn admin_host(p: &mut Problems, path: &str, raw: &str) -> Option<String> {
    let bare = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Some(ip.to_string());
    }
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    let is_name = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !is_name {
        p.push(
            path,
            format!("{raw:?} is not a host name or an IP address (give it without a port, e.g. \"lb.internal\")"),
        );
        return None;
    }
    Some(name)
}

/// The `Upgrade` protocols an operator allows to be tunnelled: HTTP tokens,
/// compared by name (a `websocket/13` request matches `websocket`). `h2c`
/// is refused: the proxy speaks h2c itself, and a backend that switched to
/// it would see the client's next requests raw, past every rule.
fn validate_upgrades(p: &mut Problems, raw: Option<Vec<String>>) -> Vec<String> {
    let Some(raw) = raw else {
        return vec!["websocket".to_string()];
    };
    let mut out = Vec::new();
    for (i, name) in raw.iter().enumerate() {
        let path = format!("server.upgrade_protocols[{i}]");
        let lower = name.to_ascii_lowercase();
        if !is_token(name) {
            p.push(
                path,
                format!("{name:?} is not a protocol name (an HTTP token, e.g. \"websocket\")"),
            );
        } else if lower == "h2c" {
            p.push(
                path,
                "h2c is never tunnelled: sessionlb speaks HTTP/2 (h2c) to clients itself",
            );
        } else if !out.contains(&lower) {
            out.push(lower);
        }
    }
    out
}

fn validate_timeouts(p: &mut Problems, t: model::TimeoutsSection) -> Timeouts {
    let d = Timeouts::default();
    Timeouts {
        connect: p.duration("timeouts.connect", t.connect.as_deref(), d.connect),
        request_header: p.duration(
            "timeouts.request_header",
            t.request_header.as_deref(),
            d.request_header,
        ),
        response_header: p.duration(
            "timeouts.response_header",
            t.response_header.as_deref(),
            d.response_header,
        ),
        backend_io: p.duration("timeouts.backend_io", t.backend_io.as_deref(), d.backend_io),
        client_io: p.duration("timeouts.client_io", t.client_io.as_deref(), d.client_io),
        tunnel_idle: p.duration(
            "timeouts.tunnel_idle",
            t.tunnel_idle.as_deref(),
            d.tunnel_idle,
        ),
        idle: p.duration("timeouts.idle", t.idle.as_deref(), d.idle),
    }
}

fn validate_pool(
    p: &mut Problems,
    warnings: &mut Vec<Problem>,
    name: String,
    s: model::PoolSection,
    base: &Path,
) -> Option<Pool> {
    let path = format!("pools.{name}");
    if !is_token(&name) {
        p.push(
            &path,
            format!("pool name {name:?} must be letters, digits, '-', '_' or '.'"),
        );
    }
    let policy = match s.policy.as_deref() {
        None => PolicyKind::RoundRobin,
        Some(raw) => PolicyKind::parse(raw).unwrap_or_else(|| {
            p.push(
                format!("{path}.policy"),
                format!(
                    "unknown policy {raw:?} (expected one of {})",
                    PolicyKind::NAMES
                ),
            );
            PolicyKind::RoundRobin
        }),
    };
    if s.backends.is_empty() {
        p.push(
            format!("{path}.backends"),
            "a pool needs at least one backend",
        );
    }
    let pool_tls = s.tls.unwrap_or(false);
    let backend_tls = validate_backend_tls(p, &path, &s, base);
    let mut backends = Vec::new();
    let mut names = HashSet::new();
    for (i, b) in s.backends.into_iter().enumerate() {
        let bpath = format!("{path}.backends[{i}]");
        let weight = match b.weight {
            None => 1,
            Some(w) if (1..=i64::from(MAX_WEIGHT)).contains(&w) => w as u32,
            Some(w) => {
                p.push(
                    format!("{bpath}.weight"),
                    format!("weight must be between 1 and {MAX_WEIGHT}, got {w} (to take a backend out, use drain = true)"),
                );
                1
            }
        };
        let written = b.addr.trim().to_string();
        let (name, field) = match b.id {
            Some(id) => {
                if id.is_empty() || !id.bytes().all(|c| c.is_ascii_graphic()) {
                    p.push(
                        format!("{bpath}.id"),
                        format!("{id:?} must be printable ASCII without spaces"),
                    );
                }
                (id, "id")
            }
            None => (written.clone(), "addr"),
        };
        if !names.insert(name.clone()) {
            p.push(
                format!("{bpath}.{field}"),
                format!("backend {name:?} is listed twice in this pool"),
            );
        }
        let (host, https) = match written.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (written.as_str(), false),
        };
        // `Some(None)`: plain HTTP; `None`: no name TLS can verify
        let tls = match https || pool_tls {
            true => tls_name(p, &format!("{bpath}.addr"), host).map(Some),
            false => Some(None),
        };
        let addr = match b.resolve {
            true => dns_name(p, &format!("{bpath}.addr"), host).map(Addr::Dns),
            false => parse_backend_addr(p, &format!("{bpath}.addr"), host).map(Addr::Fixed),
        };
        if let (Some(addr), Some(tls)) = (addr, tls) {
            backends.push(Backend {
                name,
                addr,
                weight,
                drain: b.drain,
                tls,
            });
        }
    }
    let max_body = s.max_body.as_deref().and_then(|raw| match parse_size(raw) {
        Ok(n) => Some(n),
        Err(message) => {
            p.push(format!("{path}.max_body"), message);
            None
        }
    });
    let health = validate_health(p, &path, s.health);
    let resolve_interval = p.duration(
        &format!("{path}.resolve_interval"),
        s.resolve_interval.as_deref(),
        DEFAULT_RESOLVE_INTERVAL,
    );
    let max_addresses = p.count(
        &format!("{path}.max_addresses"),
        s.max_addresses,
        DEFAULT_MAX_ADDRESSES,
        1,
        MAX_ADDRESSES,
    ) as usize;
    if resolve_interval < MIN_RESOLVE_INTERVAL {
        p.push(
            format!("{path}.resolve_interval"),
            format!(
                "must be at least {}",
                humantime::format_duration(MIN_RESOLVE_INTERVAL)
            ),
        );
    }
    let sticky = match (policy, s.sticky) {
        (PolicyKind::Cookie, raw) => Some(validate_sticky(p, &path, raw.unwrap_or_default())),
        (_, Some(_)) => {
            p.push(
                format!("{path}.sticky"),
                format!("[{path}.sticky] is only used with policy = \"cookie\" (this pool's policy is {:?})", policy.name()),
            );
            None
        }
        (_, None) => None,
    };
    let session = s.session.map(|raw| validate_session(p, &path, raw));
    if let (Some(st), Some(sess)) = (&sticky, &session)
        && st.prefix.is_none()
        && st.cookie == sess.cookie
    {
        p.push(
            format!("{path}.session.cookie"),
            format!(
                "cookie {:?} is already the sticky route cookie",
                sess.cookie
            ),
        );
    }
    if backend_tls.insecure_skip_verify && backends.iter().any(|b| b.tls.is_some()) {
        warnings.push(Problem {
            path: format!("{path}.insecure_skip_verify"),
            message: "the backends' certificates are not verified: anyone between the proxy and them can pose as them".into(),
        });
    }
    Some(Pool {
        name,
        policy,
        backends,
        max_body,
        tls: backend_tls,
        resolve_interval,
        max_addresses,
        health,
        sticky,
        session,
    })
}

/// The pool's `ca` and `insecure_skip_verify`, which apply to each of its
/// backends reached over TLS.
fn validate_backend_tls(
    p: &mut Problems,
    path: &str,
    s: &model::PoolSection,
    base: &Path,
) -> BackendTls {
    let insecure_skip_verify = s.insecure_skip_verify.unwrap_or(false);
    let ca = s.ca.as_deref().and_then(|raw| {
        let file = base.join(raw);
        if insecure_skip_verify {
            p.push(
                format!("{path}.ca"),
                "a CA is not used with insecure_skip_verify = true; give one or the other",
            );
        }
        if NO_LOOKUPS.get() {
            return None;
        }
        match tls::load_ca(&file) {
            Ok(certs) => Some((file, certs)),
            Err(e) => {
                p.push(format!("{path}.ca"), e.to_string());
                None
            }
        }
    });
    BackendTls {
        ca,
        insecure_skip_verify,
    }
}

/// The name a TLS backend is verified as (and, unless it is an IP
/// address, sends as SNI): its address as written, without the port. One
/// that TLS cannot verify is a problem here, never a backend spoken to
/// without TLS.
fn tls_name(
    p: &mut Problems,
    path: &str,
    host_port: &str,
) -> Option<rustls::pki_types::ServerName<'static>> {
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(host, _)| host);
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    match rustls::pki_types::ServerName::try_from(host) {
        Ok(name) => Some(name),
        Err(_) => {
            p.push(
                path,
                format!("{host_port:?} has no host name or address a TLS certificate can name"),
            );
            None
        }
    }
}

fn validate_health(p: &mut Problems, pool: &str, raw: Option<model::HealthSection>) -> Health {
    let d = Health::default();
    let Some(h) = raw else { return d };
    let path = format!("{pool}.health");
    let max_fails = p.count(
        &format!("{path}.max_fails"),
        h.max_fails,
        d.max_fails,
        0,
        1_000_000,
    );
    let fail_timeout = p.duration(
        &format!("{path}.fail_timeout"),
        h.fail_timeout.as_deref(),
        d.fail_timeout,
    );
    let check = h.check.map(|c| {
        let cpath = format!("{path}.check");
        let check_path = c.path.unwrap_or_else(|| "/".to_string());
        if !check_path.starts_with('/') || check_path.parse::<http::uri::PathAndQuery>().is_err() {
            p.push(
                format!("{cpath}.path"),
                format!("{check_path:?} must be a path starting with '/'"),
            );
        }
        let interval = p.duration(
            &format!("{cpath}.interval"),
            c.interval.as_deref(),
            Duration::from_secs(2),
        );
        let timeout = p.duration(
            &format!("{cpath}.timeout"),
            c.timeout.as_deref(),
            Duration::from_secs(1),
        );
        if timeout > interval {
            p.push(
                format!("{cpath}.timeout"),
                "must not be longer than the check interval",
            );
        }
        HealthCheck {
            path: check_path,
            interval,
            timeout,
            rise: p.count(&format!("{cpath}.rise"), c.rise, 2, 1, 1000),
            fall: p.count(&format!("{cpath}.fall"), c.fall, 3, 1, 1000),
        }
    });
    Health {
        max_fails,
        fail_timeout,
        check,
    }
}

fn validate_sticky(p: &mut Problems, pool: &str, s: model::StickySection) -> Sticky {
    let path = format!("{pool}.sticky");
    let cookie = s.cookie.unwrap_or_else(|| "slb_route".to_string());
    p.token(&format!("{path}.cookie"), "cookie", &cookie);
    if let Some(prefix) = &s.prefix {
        p.token(&format!("{path}.prefix"), "cookie", prefix);
    }
    if s.secret.as_deref() == Some("") {
        p.push(
            format!("{path}.secret"),
            "must not be empty (leave it out to use no secret)",
        );
    }
    let max_age = s
        .max_age
        .as_deref()
        .map(|raw| p.duration(&format!("{path}.max_age"), Some(raw), Duration::ZERO));
    if let Some(domain) = &s.domain
        && (domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    {
        p.push(
            format!("{path}.domain"),
            format!("invalid cookie domain {domain:?}"),
        );
    }
    let cookie_path = s.path.unwrap_or_else(|| "/".to_string());
    if !cookie_path.starts_with('/')
        || cookie_path
            .bytes()
            .any(|b| b == b';' || b.is_ascii_control())
    {
        p.push(
            format!("{path}.path"),
            format!("invalid cookie path {cookie_path:?}"),
        );
    }
    Sticky {
        cookie,
        secret: s.secret,
        prefix: s.prefix,
        max_age,
        domain: s.domain,
        path: cookie_path,
    }
}

fn validate_session(p: &mut Problems, pool: &str, s: model::SessionSection) -> Session {
    let path = format!("{pool}.session");
    let cookie = s.cookie.unwrap_or_else(|| "slb_sid".to_string());
    p.token(&format!("{path}.cookie"), "cookie", &cookie);
    let header_name =
        |p: &mut Problems, field: &str, raw: Option<String>, default: &'static str| {
            let raw = raw.unwrap_or_else(|| default.to_string());
            HeaderName::from_bytes(raw.as_bytes()).unwrap_or_else(|_| {
                p.push(
                    format!("{path}.{field}"),
                    format!("{raw:?} is not a valid header name"),
                );
                HeaderName::from_static("x-invalid")
            })
        };
    let carrier = match s.carrier.as_deref().unwrap_or("cookie") {
        "cookie" => {
            if s.header.is_some() || s.update_header.is_some() {
                p.push(
                    format!("{path}.header"),
                    "header and update_header are used with carrier = \"header\"",
                );
            }
            let app_cookies = s
                .app_cookie
                .map(model::OneOrMany::into_vec)
                .unwrap_or_default();
            if app_cookies.is_empty() {
                p.push(
                    format!("{path}.app_cookie"),
                    "carrier = \"cookie\" needs app_cookie: the name of the cookie the app keeps its session in",
                );
            }
            for (i, name) in app_cookies.iter().enumerate() {
                p.token(&format!("{path}.app_cookie[{i}]"), "cookie", name);
                if *name == cookie {
                    p.push(
                        format!("{path}.app_cookie[{i}]"),
                        format!(
                            "the app's cookie cannot also be the proxy's session cookie {cookie:?}"
                        ),
                    );
                }
            }
            Carrier::Cookie { app_cookies }
        }
        "header" => {
            if s.app_cookie.is_some() {
                p.push(
                    format!("{path}.app_cookie"),
                    "app_cookie is used with carrier = \"cookie\"",
                );
            }
            let header = header_name(p, "header", s.header, "x-session");
            let update_header =
                header_name(p, "update_header", s.update_header, "x-session-update");
            if header == update_header {
                p.push(format!("{path}.update_header"), "must differ from header");
            }
            Carrier::Header {
                header,
                update_header,
            }
        }
        other => {
            p.push(
                format!("{path}.carrier"),
                format!("unknown carrier {other:?} (expected cookie or header)"),
            );
            Carrier::Cookie {
                app_cookies: vec![],
            }
        }
    };
    let idle_timeout = p.duration(
        &format!("{path}.idle_timeout"),
        s.idle_timeout.as_deref(),
        Duration::from_secs(30 * 60),
    );
    let first_idle_timeout = p.duration(
        &format!("{path}.first_idle_timeout"),
        s.first_idle_timeout.as_deref(),
        FIRST_IDLE_DEFAULT.min(idle_timeout),
    );
    if first_idle_timeout > idle_timeout {
        p.push(
            format!("{path}.first_idle_timeout"),
            "must not be longer than idle_timeout",
        );
    }
    let absolute_timeout = p.duration(
        &format!("{path}.absolute_timeout"),
        s.absolute_timeout.as_deref(),
        Duration::from_secs(24 * 3600),
    );
    if absolute_timeout < idle_timeout {
        p.push(
            format!("{path}.absolute_timeout"),
            "must not be shorter than idle_timeout",
        );
    }
    let rotation_grace = p.duration(
        &format!("{path}.rotation_grace"),
        s.rotation_grace.as_deref(),
        Duration::from_secs(30),
    );
    if rotation_grace > MAX_ROTATION_GRACE {
        p.push(
            format!("{path}.rotation_grace"),
            format!(
                "must be at most {}: a replaced ticket reads the old session that long",
                humantime::format_duration(MAX_ROTATION_GRACE)
            ),
        );
    }
    let max_new_sessions_per_client = s.max_new_sessions_per_client.map(|n| {
        p.count(
            &format!("{path}.max_new_sessions_per_client"),
            Some(n),
            1,
            1,
            1_000_000,
        )
    });
    let cookie_path = s.path.unwrap_or_else(|| "/".to_string());
    if !cookie_path.starts_with('/')
        || cookie_path
            .bytes()
            .any(|b| b <= b' ' || b == b';' || b >= 0x7f)
    {
        p.push(
            format!("{path}.path"),
            format!("invalid cookie path {cookie_path:?} (a path starting with /)"),
        );
    }
    if cookie.starts_with("__Host-") && cookie_path != "/" {
        // the ticket is always set with Path=/, and the app's cookies on
        // other paths are not the session
        p.push(
            format!("{path}.path"),
            "a __Host- ticket cookie has Path=/: the session's path must be \"/\" too",
        );
    }
    let scope = s
        .scope
        .unwrap_or_else(|| pool.trim_start_matches("pools.").to_string());
    if scope.is_empty() || scope.len() > 128 || scope.bytes().any(|b| !b.is_ascii_graphic()) {
        p.push(
            format!("{path}.scope"),
            format!("invalid scope {scope:?} (1 to 128 visible ASCII characters)"),
        );
    }
    let on_store_error = match s.on_store_error.as_deref().unwrap_or("fail_closed") {
        "fail_closed" => OnStoreError::FailClosed,
        "fail_open" => OnStoreError::FailOpen,
        other => {
            p.push(
                format!("{path}.on_store_error"),
                format!("unknown value {other:?} (expected fail_closed or fail_open)"),
            );
            OnStoreError::FailClosed
        }
    };
    let max_blob_bytes = match s.max_blob_bytes {
        None => 65536,
        Some(n) if (1..=16 * 1024 * 1024).contains(&n) => n as usize,
        Some(n) => {
            p.push(
                format!("{path}.max_blob_bytes"),
                format!("must be between 1 and 16777216, got {n}"),
            );
            65536
        }
    };
    Session {
        carrier,
        cookie,
        path: cookie_path,
        idle_timeout,
        first_idle_timeout,
        rotation_grace,
        max_new_sessions_per_client,
        scope,
        absolute_timeout,
        on_store_error,
        encrypt: s.encrypt.unwrap_or(true),
        max_blob_bytes,
    }
}

/// How long a session used once lives, unless idle_timeout is shorter.
const FIRST_IDLE_DEFAULT: Duration = Duration::from_secs(5 * 60);

/// A replaced ticket is a credential the client no longer holds; reading
/// the old session is for requests already in flight.
const MAX_ROTATION_GRACE: Duration = Duration::from_secs(10 * 60);

fn validate_store(p: &mut Problems, raw: Option<model::StoreSection>) -> Store {
    let Some(s) = raw else {
        return Store::Memory(MemoryStore {
            max_size: MemoryStore::DEFAULT_SIZE,
            secret: None,
        });
    };
    if s.secret.as_deref().is_some_and(|k| k.len() < 16) {
        p.push(
            "store.secret",
            "must be at least 16 characters: it keys the names of sessions stored plain",
        );
    }
    match s.kind.as_deref().unwrap_or("memory") {
        "memory" => {
            for (field, set) in [
                ("url", s.url.is_some()),
                ("key_prefix", s.key_prefix.is_some()),
                ("timeout", s.timeout.is_some()),
                ("sentinel", s.sentinel.is_some()),
                ("cluster", s.cluster.is_some()),
            ] {
                if set {
                    p.push(format!("store.{field}"), "only used with kind = \"redis\"");
                }
            }
            let max_size = match s.max_size.as_deref().map(parse_size) {
                None => MemoryStore::DEFAULT_SIZE,
                Some(Ok(n)) => n,
                Some(Err(message)) => {
                    p.push("store.max_size", message);
                    MemoryStore::DEFAULT_SIZE
                }
            };
            Store::Memory(MemoryStore {
                max_size,
                secret: s.secret,
            })
        }
        "redis" => {
            if s.max_size.is_some() {
                p.push(
                    "store.max_size",
                    "only used with kind = \"memory\" (Redis has its own maxmemory)",
                );
            }
            let url = s
                .url
                .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_string());
            let scheme_ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
                .iter()
                .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len());
            if !scheme_ok || redis::Client::open(url.as_str()).is_err() {
                p.push(
                    "store.url",
                    format!("invalid Redis URL {:?} (expected redis://host:port/db or rediss:// for TLS)", redact_url(&url)),
                );
            }
            let timeout = p.duration(
                "store.timeout",
                s.timeout.as_deref(),
                Duration::from_secs(1),
            );
            if timeout.is_zero() {
                p.push("store.timeout", "must be greater than zero");
            }
            let topology = match (s.sentinel, s.cluster) {
                (Some(_), Some(_)) => {
                    p.push("store", "give either sentinel or cluster, not both");
                    RedisTopology::Standalone
                }
                (Some(sen), None) => {
                    if sen.master.is_empty() {
                        p.push("store.sentinel.master", "must name the monitored master");
                    }
                    if sen.nodes.is_empty() {
                        p.push(
                            "store.sentinel.nodes",
                            "needs at least one sentinel address",
                        );
                    }
                    for (i, n) in sen.nodes.iter().enumerate() {
                        check_host_port(p, &format!("store.sentinel.nodes[{i}]"), n);
                    }
                    RedisTopology::Sentinel {
                        master: sen.master,
                        nodes: sen.nodes,
                    }
                }
                (None, Some(nodes)) => {
                    if nodes.is_empty() {
                        p.push("store.cluster", "needs at least one seed node address");
                    }
                    for (i, n) in nodes.iter().enumerate() {
                        check_host_port(p, &format!("store.cluster[{i}]"), n);
                    }
                    RedisTopology::Cluster { nodes }
                }
                (None, None) => RedisTopology::Standalone,
            };
            Store::Redis(RedisStore {
                url,
                key_prefix: s.key_prefix.unwrap_or_else(|| "sessionlb:".to_string()),
                secret: s.secret,
                timeout,
                topology,
            })
        }
        other => {
            p.push(
                "store.kind",
                format!("unknown store kind {other:?} (expected memory or redis)"),
            );
            Store::Memory(MemoryStore {
                max_size: MemoryStore::DEFAULT_SIZE,
                secret: None,
            })
        }
    }
}

fn check_host_port(p: &mut Problems, path: &str, raw: &str) {
    let ok = raw
        .rsplit_once(':')
        .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n != 0));
    if !ok {
        p.push(
            path,
            format!("invalid address {raw:?} (expected host:port)"),
        );
    }
}

fn validate_routes(p: &mut Problems, raw: Vec<model::RouteSection>, pools: &[Pool]) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let path = format!("routes[{i}]");
        if !pools.iter().any(|pool| pool.name == r.pool) {
            let known: Vec<&str> = pools.iter().map(|pool| pool.name.as_str()).collect();
            p.push(
                format!("{path}.pool"),
                format!("unknown pool {:?} (pools: {})", r.pool, known.join(", ")),
            );
        }
        let host = r.host.map(|h| {
            let h = h.trim().to_ascii_lowercase();
            if h.is_empty() || h.contains([':', '/', ' ']) && !h.starts_with('[') {
                p.push(
                    format!("{path}.host"),
                    format!("invalid host {h:?} (a host name without scheme or port)"),
                );
            }
            h
        });
        let path_prefix = r.path_prefix.unwrap_or_else(|| "/".to_string());
        if !path_prefix.starts_with('/') {
            p.push(
                format!("{path}.path_prefix"),
                format!("{path_prefix:?} must start with '/'"),
            );
        }
        if !seen.insert((host.clone(), path_prefix.clone())) {
            p.push(
                &path,
                "duplicate route: the same host and path_prefix appear earlier",
            );
        }
        routes.push(Route {
            host,
            path_prefix,
            pool: r.pool,
        });
    }
    if routes.is_empty() && pools.len() > 1 {
        p.push(
            "routes",
            "with more than one pool, [[routes]] must say which requests go to which pool",
        );
    }
    routes
}

fn validate_log(p: &mut Problems, l: model::LogSection) -> Log {
    let level = l.level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .is_err()
    {
        p.push(
            "log.level",
            format!("invalid level {level:?} (expected error, warn, info, debug, trace or a RUST_LOG directive)"),
        );
    }
    let access_format = match l.access_format.as_deref().unwrap_or("plain") {
        "plain" => AccessFormat::Plain,
        "json" => AccessFormat::Json,
        other => {
            p.push(
                "log.access_format",
                format!("unknown format {other:?} (expected plain or json)"),
            );
            AccessFormat::Plain
        }
    };
    Log {
        level,
        access_log: l.access_log.unwrap_or(true),
        access_format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml: &str) -> Vec<String> {
        match Config::parse(toml, Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
        }
    }

    const MINIMAL: &str = r#"
        [server]
        listen = ["127.0.0.1:8080"]
        [pools.web]
        backends = [{ addr = "127.0.0.1:9001" }]
    "#;

    #[test]
    fn a_backend_that_follows_dns_needs_a_name_and_is_placed_at_each_address() {
        let config = Config::parse(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [resolver]
            nameservers = ["10.0.0.2", "127.0.0.1:5353"]
            [pools.web]
            resolve_interval = "2s"
            backends = [
              { addr = "App.Internal:8080", resolve = true, weight = 3 },
              { addr = "127.0.0.1:9001" },
            ]
            "#,
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            config.resolver.nameservers,
            [
                "10.0.0.2:53".parse().unwrap(),
                "127.0.0.1:5353".parse().unwrap()
            ] as [SocketAddr; 2]
        );
        let pool = &config.pools[0];
        assert_eq!(pool.resolve_interval, Duration::from_secs(2));
        let name = DnsName {
            host: "app.internal".into(),
            port: 8080,
        };
        assert_eq!(pool.backends[0].addr, Addr::Dns(name.clone()));
        assert_eq!(pool.dns_names().collect::<Vec<_>>(), [&name]);
        // before an answer, only the fixed backend; then one per address
        let none = pool.placed(&Addresses::new());
        assert_eq!(
            none.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["127.0.0.1:9001"]
        );
        let answers = Addresses::from([(
            name,
            vec![
                "10.0.0.5:8080".parse().unwrap(),
                "10.0.0.6:8080".parse().unwrap(),
            ]
            .into(),
        )]);
        let placed = pool.placed(&answers);
        let names: Vec<_> = placed.iter().map(|b| (b.name.as_str(), b.weight)).collect();
        assert_eq!(
            names,
            [
                ("App.Internal:8080/10.0.0.5:8080", 3),
                ("App.Internal:8080/10.0.0.6:8080", 3),
                ("127.0.0.1:9001", 1)
            ]
        );
        assert!(config.summary().contains(
            "at every address of app.internal:8080 (the first 64 at most), looked up every 2s"
        ));

        let got = problems(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [resolver]
            nameservers = ["dns.example"]
            [pools.web]
            resolve_interval = "10ms"
            backends = [
              { addr = "10.0.0.5:8080", resolve = true },
              { addr = "bad name:80", resolve = true },
              { addr = "app:0", resolve = true },
            ]
            "#,
        );
        assert_eq!(
            got,
            [
                "pools.web.backends[0].addr: \"10.0.0.5:8080\" is an address: resolve = true needs a host name",
                "pools.web.backends[1].addr: invalid backend name \"bad name:80\" for resolve = true (expected host:port, the host a DNS name)",
                "pools.web.backends[2].addr: invalid backend name \"app:0\" for resolve = true (expected host:port, the host a DNS name)",
                "pools.web.resolve_interval: must be at least 100ms",
                "resolver.nameservers[0]: invalid name server \"dns.example\" (expected ip or ip:port)",
            ]
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_secs(3));
        assert_eq!(c.server.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.pools[0].policy, PolicyKind::RoundRobin);
        assert_eq!(c.pools[0].backends[0].weight, 1);
        assert_eq!(c.pools[0].health.max_fails, 1);
        assert!(matches!(c.store, Store::Memory(_)));
        assert!(c.log.access_log);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let got = problems(
            r#"
            [server]
            listen = ["127.0.0.1:8080", "127.0.0.1:8080", "nonsense"]
            trusted_proxies = ["10.0.0.0/33"]
            [timeouts]
            connect = "3"
            [pools.web]
            policy = "fastest"
            backends = [
              { addr = "127.0.0.1:9001", weight = 0 },
              { addr = "x" },
            ]
            [pools.empty]
            backends = []
            [pools.sticky]
            policy = "cookie"
            backends = [{ addr = "127.0.0.1:9002" }]
            sticky = { cookie = "bad cookie" }
            [[routes]]
            pool = "nowhere"
            [log]
            access_format = "xml"
            "#,
        );
        let expect = [
            "server.listen[1]: duplicate listen address 127.0.0.1:8080",
            "server.listen[2]: invalid socket address \"nonsense\"",
            "server.trusted_proxies[0]: invalid CIDR",
            "timeouts.connect: invalid duration \"3\"",
            "pools.empty.backends: a pool needs at least one backend",
            "pools.sticky.sticky.cookie: cookie \"bad cookie\" is not a valid cookie name",
            "pools.web.policy: unknown policy \"fastest\"",
            "pools.web.backends[0].weight: weight must be between 1 and 256, got 0",
            "pools.web.backends[1].addr: invalid socket address \"x\"",
            "routes[0].pool: unknown pool \"nowhere\"",
            "log.access_format: unknown format \"xml\"",
        ];
        for e in expect {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), expect.len(), "{got:#?}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let got = problems(
            r#"
            [pools.web]
            backends = [{ addr = "127.0.0.1:9001", wieght = 2 }]
            "#,
        );
        assert_eq!(got.len(), 1);
        assert!(
            got[0].starts_with("pools.web.backends[0].wieght: unknown field `wieght`"),
            "{got:?}"
        );
        assert!(got[0].contains("line 3"), "{got:?}");
    }

    #[test]
    fn later_sections_parse_and_validate() {
        let c = Config::parse(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [pools.web]
            policy = "cookie"
            backends = [{ addr = "127.0.0.1:9001" }]
            sticky = { cookie = "route", secret = "s3", prefix = "JSESSIONID", max_age = "1h" }
            [pools.web.session]
            carrier = "cookie"
            app_cookie = ["session", "session.sig"]
            idle_timeout = "30m"
            [store]
            kind = "redis"
            url = "redis://user:pw@127.0.0.1:6379/0"
            sentinel = { master = "mymaster", nodes = ["127.0.0.1:26379"] }
            "#,
            Path::new("."),
        )
        .unwrap();
        let pool = &c.pools[0];
        assert_eq!(
            pool.sticky.as_ref().unwrap().prefix.as_deref(),
            Some("JSESSIONID")
        );
        assert!(
            matches!(&pool.session.as_ref().unwrap().carrier, Carrier::Cookie { app_cookies } if app_cookies.len() == 2)
        );
        assert!(
            c.summary()
                .contains("redis redis://user:***@127.0.0.1:6379/0")
        );

        let got = problems(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [[server.tls]]
            listen = "127.0.0.1:8443"
            certificates = [{ cert = "missing.pem", key = "missing.key" }]
            [pools.web]
            backends = [{ addr = "127.0.0.1:9001" }]
            sticky = {}
            [pools.web.session]
            carrier = "header"
            header = "bad header"
            absolute_timeout = "1m"
            [store]
            kind = "redis"
            url = "http://x"
            cluster = ["127.0.0.1"]
            "#,
        );
        for e in [
            "server.tls[0].certificates[0].cert: file",
            "server.tls[0].certificates[0].key: file",
            "pools.web.sticky: [pools.web.sticky] is only used with policy = \"cookie\"",
            "pools.web.session.header: \"bad header\" is not a valid header name",
            "pools.web.session.absolute_timeout: must not be shorter than idle_timeout",
            "store.url: invalid Redis URL",
            "store.cluster[0]: invalid address",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn session_security_settings_validate() {
        let c = Config::parse(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [pools.a]
            backends = [{ addr = "127.0.0.1:9001" }]
            [pools.a.session]
            app_cookie = "session"
            idle_timeout = "2m"
            [pools.b]
            backends = [{ addr = "127.0.0.1:9002" }]
            [pools.b.session]
            app_cookie = "session"
            cookie = "__Host-sid"
            path = "/"
            first_idle_timeout = "10s"
            rotation_grace = "5s"
            max_new_sessions_per_client = 60
            scope = "shop"
            encrypt = false
            [[routes]]
            path_prefix = "/a"
            pool = "a"
            [[routes]]
            path_prefix = "/"
            pool = "b"
            [store]
            secret = "sixteen-chars-at-least"
            "#,
            Path::new("."),
        )
        .unwrap();
        let a = c.pools[0].session.as_ref().unwrap();
        // first_idle_timeout: 5 minutes, or the idle timeout when shorter
        assert_eq!(a.first_idle_timeout, Duration::from_secs(120));
        assert_eq!(a.rotation_grace, Duration::from_secs(30));
        assert_eq!((a.scope.as_str(), a.path.as_str()), ("a", "/"));
        assert_eq!(a.max_new_sessions_per_client, None);
        let b = c.pools[1].session.as_ref().unwrap();
        assert_eq!(b.first_idle_timeout, Duration::from_secs(10));
        assert_eq!(b.rotation_grace, Duration::from_secs(5));
        assert_eq!(b.max_new_sessions_per_client, Some(60));
        assert_eq!(b.scope, "shop");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        let got = problems(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [pools.web]
            backends = [{ addr = "127.0.0.1:9001" }]
            [pools.web.session]
            app_cookie = "session"
            cookie = "__Host-sid"
            path = "/app"
            idle_timeout = "1m"
            first_idle_timeout = "2m"
            rotation_grace = "1h"
            max_new_sessions_per_client = 0
            scope = "two words"
            encrypt = false
            [store]
            kind = "redis"
            "#,
        );
        for e in [
            "pools.web.session.path: a __Host- ticket cookie has Path=/",
            "pools.web.session.first_idle_timeout: must not be longer than idle_timeout",
            "pools.web.session.rotation_grace: must be at most 10m",
            "pools.web.session.max_new_sessions_per_client: must be between 1 and 1000000, got 0",
            "pools.web.session.scope: invalid scope \"two words\"",
            "store.secret: pool \"web\" keeps its sessions plain (encrypt = false) in Redis",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), 6, "{got:#?}");
    }

    #[test]
    fn tickets_of_one_name_in_two_scopes_are_warned_of() {
        let c = Config::parse(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [pools.a]
            backends = [{ addr = "127.0.0.1:9001" }]
            session = { app_cookie = "session" }
            [pools.b]
            backends = [{ addr = "127.0.0.1:9002" }]
            session = { app_cookie = "session" }
            [[routes]]
            path_prefix = "/a"
            pool = "a"
            [[routes]]
            path_prefix = "/"
            pool = "b"
            "#,
            Path::new("."),
        )
        .unwrap();
        let warned: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].starts_with("pools.b.session.cookie: pools \"a\" and \"b\" both name their ticket \"slb_sid\" in different scopes"),
            "{warned:?}"
        );
    }

    #[test]
    fn several_pools_need_routes() {
        let got = problems(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            [pools.a]
            backends = [{ addr = "127.0.0.1:9001" }]
            [pools.b]
            backends = [{ addr = "127.0.0.1:9002" }]
            "#,
        );
        assert_eq!(
            got,
            vec![
                "routes: with more than one pool, [[routes]] must say which requests go to which pool"
            ]
        );
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn sizes_as_nginx_writes_them() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 64 * 1024);
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        for bad in [
            "",
            "k",
            "0",
            "0m",
            "-1",
            "1.5m",
            "10 mb",
            "99999999999999999999g",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_and_upgrades() {
        let c = Config::parse(MINIMAL, Path::new(".")).unwrap();
        assert_eq!(c.server.max_connections, 10_000);
        assert_eq!(c.server.upgrade_protocols, ["websocket"]);
        assert_eq!(c.pools[0].max_body, None);
        assert_eq!(c.timeouts.backend_io, Duration::from_secs(60));
        assert_eq!(c.timeouts.client_io, Duration::from_secs(60));
        assert_eq!(c.timeouts.tunnel_idle, Duration::from_secs(3600));
        let got = problems(
            r#"
            [server]
            listen = ["127.0.0.1:8080"]
            max_connections = 0
            upgrade_protocols = ["websocket", "H2C", "bad token"]
            [timeouts]
            backend_io = "0s"
            [pools.web]
            backends = [{ addr = "127.0.0.1:9001" }]
            max_body = "ten"
            "#,
        );
        for e in [
            "server.max_connections: must be between 1",
            "server.upgrade_protocols[1]: h2c is never tunnelled",
            "server.upgrade_protocols[2]: \"bad token\" is not a protocol name",
            "timeouts.backend_io: duration \"0s\" must be greater than zero",
            "pools.web.max_body: invalid size \"ten\"",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(e)),
                "missing {e:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), 5, "{got:#?}");
    }

    #[test]
    fn redis_passwords_are_hidden_whatever_they_hold() {
        assert_eq!(
            redact_url("redis://u:p@ss@host:6379/0"),
            "redis://u:***@host:6379/0"
        );
        assert_eq!(redact_url("rediss://:pw@h/1"), "rediss://:***@h/1");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    #[test]
    fn tokens() {
        assert!(is_token("slb_route"));
        assert!(is_token("session.sig"));
        assert!(!is_token("a b"));
        assert!(!is_token("a;b"));
        assert!(!is_token(""));
    }

    #[test]
    fn an_https_backend_needs_a_name_tls_can_verify() {
        let toml = |addr: &str| {
            format!(
                "[server]\nlisten = [\"127.0.0.1:8080\"]\n[pools.web]\nbackends = [{{ addr = \"{addr}\" }}]\n"
            )
        };
        // (no lookups: the shape alone is judged)
        let got = without_name_lookups(|| problems(&toml("https://a..example:443")));
        assert_eq!(
            got,
            [
                "pools.web.backends[0].addr: \"a..example:443\" has no host name or address a TLS certificate can name"
            ]
        );
        let config = without_name_lookups(|| {
            Config::parse(&toml("https://App.Example:8443"), Path::new(".")).unwrap()
        });
        let name = config.pools[0].backends[0].tls.as_ref().unwrap();
        assert_eq!(name.to_str(), "app.example");
        let config = Config::parse(&toml("https://[::1]:8443"), Path::new(".")).unwrap();
        let name = config.pools[0].backends[0].tls.as_ref().unwrap();
        assert_eq!(name.to_str(), "::1");
        let config = Config::parse(&toml("127.0.0.1:8080"), Path::new(".")).unwrap();
        assert!(config.pools[0].backends[0].tls.is_none());
    }
}
