//! The admin listener: Prometheus metrics, health and readiness, the pools'
//! state, and reload. It runs on the main thread, away from the workers.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::balance::CheckStatus;
use crate::clock;
use crate::config::{AdminToken, PolicyKind};
use crate::reload;
use crate::runtime::Shared;
use crate::server::{Acceptor, Connection, ShutdownSignal, Worker};
use crate::session::Stats;
use crate::session::stats::{Op, OpResult};

/// The admin listener in use: the address the file asked for, another
/// descriptor of its socket (to hand it to a new binary), and the task
/// that serves it, stopped when this is dropped.
pub struct AdminListener {
    pub written: SocketAddr,
    pub socket: std::net::TcpListener,
    task: tokio::task::JoinHandle<()>,
    /// Its connections' stop: when it is closed (a reload moved it), an
    /// idle keep-alive connection closes too, as a client connection to a
    /// removed listener does.
    stop: Arc<ShutdownSignal>,
}

impl AdminListener {
    /// Serves `socket`, bound for `written`, on the current runtime.
    pub fn start(
        written: SocketAddr,
        socket: std::net::TcpListener,
        shared: Arc<Shared>,
        reloader: Option<Arc<reload::Reloader>>,
    ) -> std::io::Result<AdminListener> {
        socket.set_nonblocking(true)?;
        let kept = socket.try_clone()?;
        let listener = TcpListener::from_std(socket)?;
        tracing::info!(admin_addr = %listener.local_addr()?, "admin listening");
        let stop = Arc::new(ShutdownSignal::default());
        Ok(AdminListener {
            written,
            socket: kept,
            task: tokio::spawn(serve(listener, shared, reloader, stop.clone())),
            stop,
        })
    }

    /// Its name among the sockets handed to a new binary.
    pub fn handover_name(written: SocketAddr) -> String {
        format!("admin/{written}/0")
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.task.abort();
        self.stop.fire();
    }
}

/// What every admin request needs.
struct Admin {
    shared: Arc<Shared>,
    registry: Registry,
    reloader: Option<Arc<reload::Reloader>>,
}

/// Serves admin requests until the task is dropped. Its connections are
/// served as client connections are (see [`crate::server::serve_admin`]).
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reloader: Option<Arc<reload::Reloader>>,
    stop: Arc<ShutdownSignal>,
) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(shared.clone())));
    let worker = Worker::standalone(shared.clone());
    let admin = Arc::new(Admin {
        shared,
        registry,
        reloader,
    });
    let mut listener = Acceptor::new(listener, "admin");
    loop {
        let (stream, peer) = listener.accept().await;
        // the address this connection came to: what its Host may name
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let admin = admin.clone();
        let service = move |conn: Arc<Connection>| {
            let admin = admin.clone();
            service_fn(move |req| {
                conn.request_started();
                let admin = admin.clone();
                let conn = conn.clone();
                async move {
                    let response = handle(&req, &admin, local).await;
                    conn.request_finished(clock::now_ms());
                    Ok::<_, Infallible>(response)
                }
            })
        };
        tokio::spawn(crate::server::serve_admin(
            stream,
            peer,
            worker.clone(),
            stop.clone(),
            service,
        ));
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// What the admin listener serves, by path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint<'a> {
    Metrics,
    Healthz,
    Readyz,
    Pools,
    Reload,
    /// `/admin/sessions/{id}`
    Session(&'a str),
}

impl<'a> Endpoint<'a> {
    fn of(path: &'a str) -> Option<Endpoint<'a>> {
        Some(match path {
            "/metrics" => Endpoint::Metrics,
            "/healthz" => Endpoint::Healthz,
            "/readyz" => Endpoint::Readyz,
            "/admin/pools" => Endpoint::Pools,
            "/admin/reload" => Endpoint::Reload,
            p => match p.strip_prefix("/admin/sessions/") {
                Some(id) if !id.is_empty() => Endpoint::Session(id),
                _ => return None,
            },
        })
    }

    /// The methods it answers, as `Allow` lists them.
    fn allow(self) -> &'static str {
        match self {
            Endpoint::Reload => "POST",
            Endpoint::Session(_) => "GET, HEAD, DELETE",
            _ => "GET, HEAD",
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self {
            Endpoint::Reload => method == Method::POST,
            Endpoint::Session(_) if method == Method::DELETE => true,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

async fn handle(
    req: &Request<Incoming>,
    admin: &Admin,
    local: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    {
        let rt = admin.shared.load();
        let server = &rt.config.server;
        if let Some(refused) = cross_site(req, local, &server.admin_hosts) {
            return refused;
        }
        if (path.starts_with("/admin/") || path == "/admin")
            && let Some(token) = &server.admin_token
            && let Some(refused) = unauthorized(req, token)
        {
            return refused;
        }
    }
    let Some(endpoint) = Endpoint::of(path) else {
        return text(StatusCode::NOT_FOUND, "404 Not Found: no such admin path\n");
    };
    if !endpoint.allows(req.method()) {
        let allow = endpoint.allow();
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("405 Method Not Allowed: {path} takes {allow}\n"),
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        return r;
    }
    match endpoint {
        Endpoint::Metrics => {
            let mut out = String::new();
            if prometheus_client::encoding::text::encode(&mut out, &admin.registry).is_err() {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n");
            }
            let mut r = text(StatusCode::OK, out);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        Endpoint::Healthz => text(StatusCode::OK, "ok\n"),
        Endpoint::Readyz => ready(&admin.shared).await,
        Endpoint::Pools => {
            let mut r = text(StatusCode::OK, pools_json(&admin.shared));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Endpoint::Reload => match &admin.reloader {
            None => text(StatusCode::CONFLICT, "no configuration file to reload\n"),
            Some(reloader) => match reloader.reload().await {
                Ok(generation) => text(
                    StatusCode::OK,
                    format!("reloaded: generation {generation}\n"),
                ),
                Err(problems) => {
                    let lines: Vec<String> = problems.iter().map(|p| format!("{p}\n")).collect();
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("reload refused:\n{}", lines.concat()),
                    )
                }
            },
        },
        Endpoint::Session(id) if req.method() == Method::DELETE => {
            match admin.shared.sessions.revoke(id).await {
                Ok(true) => {
                    let mut r = text(StatusCode::NO_CONTENT, "");
                    r.headers_mut().remove(header::CONTENT_TYPE);
                    r
                }
                Ok(false) => text(StatusCode::NOT_FOUND, "no such session\n"),
                Err(error) => store_unavailable(&error),
            }
        }
        Endpoint::Session(id) => match admin.shared.sessions.inspect(id).await {
            Ok(Some(found)) => {
                let mut r = text(
                    StatusCode::OK,
                    serde_json::to_string(&found).unwrap_or_default() + "\n",
                );
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                r
            }
            Ok(None) => text(StatusCode::NOT_FOUND, "no such session\n"),
            Err(error) => store_unavailable(&error),
        },
    }
}

/// A 403 for a request that a web page may have made: one with an
/// `Origin` (a browser sends it with every POST, DELETE and cross-origin
/// fetch), or whose `Host` is not this listener (a page whose name was
/// made to resolve to it: DNS rebinding). Neither is needed by curl,
/// Prometheus, an orchestrator's probe or `sessionlb reload`.
fn cross_site(
    req: &Request<Incoming>,
    local: SocketAddr,
    admin_hosts: &[String],
) -> Option<Response<Full<Bytes>>> {
    if req.headers().contains_key(header::ORIGIN) {
        tracing::debug!(
            path = req.uri().path(),
            "admin request with an Origin refused"
        );
        return Some(text(
            StatusCode::FORBIDDEN,
            "403 Forbidden: the admin listener does not answer web pages (the request has an Origin header)\n",
        ));
    }
    let host = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    };
    match host {
        Some(host) if host_allowed(host, local, admin_hosts) => None,
        Some(host) => {
            tracing::debug!(
                host,
                path = req.uri().path(),
                "admin request for another host refused"
            );
            Some(text(
                StatusCode::FORBIDDEN,
                format!(
                    "403 Forbidden: Host {host:?} is not this admin listener ({local}, localhost:{port}); list the name in server.admin_hosts\n",
                    port = local.port()
                ),
            ))
        }
        None => Some(text(
            StatusCode::FORBIDDEN,
            "403 Forbidden: the admin listener needs a Host header naming it\n",
        )),
    }
}

/// Whether `host` (a `Host` header: name or IP, then maybe `:port`) names
/// the admin listener that `local` was reached at: its IP address or
/// `localhost`, with its port or none; or a name in `admin_hosts`, with
/// any port (it may be reached through a proxy or a tunnel).
fn host_allowed(host: &str, local: SocketAddr, admin_hosts: &[String]) -> bool {
    let Some((name, port)) = split_host(host) else {
        return false;
    };
    if admin_hosts.contains(&name) {
        return true;
    }
    let own = name == "localhost"
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip == local.ip().to_canonical());
    own && port.is_none_or(|p| p == local.port())
}

/// A `Host` value's name, in lower case, without a trailing dot (an IP
/// address in its usual text form, IPv6 without brackets), and its port.
fn split_host(host: &str) -> Option<(String, Option<u16>)> {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => {
            let (ip, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':')?),
            };
            (ip.parse::<std::net::Ipv6Addr>().ok()?.to_string(), port)
        }
        None => match host.split_once(':') {
            Some((name, port)) => (name.to_string(), Some(port)),
            None => (host.to_string(), None),
        },
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    let name = name.strip_suffix('.').unwrap_or(&name).to_ascii_lowercase();
    let name = match name.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) => name,
    };
    Some((name, port))
}

/// A 401 for a request whose `Authorization: Bearer <token>` is missing
/// or wrong.
fn unauthorized(req: &Request<Incoming>, token: &AdminToken) -> Option<Response<Full<Bytes>>> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| {
            let (scheme, rest) = v.split_at_checked(6)?;
            let credentials = rest.strip_prefix(b" ")?;
            scheme
                .eq_ignore_ascii_case(b"Bearer")
                .then(|| credentials.trim_ascii())
        });
    let why = match presented {
        Some(given) if token.matches(given) => return None,
        Some(_) => "the bearer token is not server.admin_token",
        None => "/admin/ paths need Authorization: Bearer <server.admin_token>",
    };
    tracing::debug!(path = req.uri().path(), why, "admin request refused");
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        format!("401 Unauthorized: {why}\n"),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"sessionlb admin\""),
    );
    Some(r)
}

fn store_unavailable(error: &crate::session::StoreError) -> Response<Full<Bytes>> {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the session store is unavailable: {error}\n"),
    )
}

/// Ready when the configuration is loaded and, when a pool keeps sessions,
/// the store answers now.
async fn ready(shared: &Shared) -> Response<Full<Bytes>> {
    if !shared.load().needs_store {
        return text(StatusCode::OK, "ready\n");
    }
    let Some(store) = shared.sessions.current() else {
        return text(StatusCode::OK, "ready\n");
    };
    match store.ping().await {
        Ok(()) => text(StatusCode::OK, "ready\n"),
        Err(error) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the session store is unavailable: {error}\n"),
        ),
    }
}

/// Pings the store every second while a pool uses it, so that
/// `sessionlb_session_store_up` tells the truth between requests.
pub async fn watch_store(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        tick.tick().await;
        if !shared.load().needs_store {
            continue;
        }
        let Some(store) = shared.sessions.current() else {
            continue;
        };
        if store.is_memory() {
            continue;
        }
        let up = match store.ping().await {
            Ok(()) => true,
            Err(error) => {
                if was_up {
                    tracing::warn!(%error, "session store unavailable");
                }
                false
            }
        };
        if up && !was_up {
            tracing::info!("session store available again");
        }
        was_up = up;
    }
}

fn pools_json(shared: &Shared) -> String {
    let rt = shared.load();
    let pools: Vec<serde_json::Value> = rt
        .pools
        .iter()
        .map(|pool| {
            let backends: Vec<serde_json::Value> = pool
                .backends
                .iter()
                .map(|b| {
                    let checks = b.state.check_state();
                    let check = (checks.status != CheckStatus::Off).then(|| {
                        serde_json::json!({
                            "status": checks.status.name(),
                            "passes": checks.passes,
                            "fails": checks.fails,
                            "last": checks.last,
                        })
                    });
                    serde_json::json!({
                        "id": &*b.state.name,
                        "addr": b.addr.to_string(),
                        "up": b.state.is_up(),
                        "down_reason": b.state.down_reason().map(|r| r.name()),
                        "check": check,
                        "draining": b.drain,
                        "weight": b.weight,
                        "in_flight": b.state.in_flight(),
                        "pinned_while_draining": b.state.drain_pinned(),
                    })
                })
                .collect();
            serde_json::json!({ "name": &*pool.name, "policy": pool.policy_kind.name(), "backends": backends })
        })
        .collect();
    serde_json::json!({ "generation": rt.generation, "pools": pools }).to_string() + "\n"
}

/// Reads the live counters at scrape time.
#[derive(Debug)]
struct Metrics(Arc<Shared>);

impl Collector for Metrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.0;
        let rt = shared.load();

        let mut m = e.encode_descriptor(
            "sessionlb_requests",
            "Requests answered, by pool, backend (empty when the proxy answered itself) and status code.",
            None,
            MetricType::Counter,
        )?;
        let mut by_code = |pool: &str, backend: &str, counts: Vec<(u16, u64)>| {
            for (code, n) in counts {
                let code = code.to_string();
                let labels = [("pool", pool), ("backend", backend), ("code", &code)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
            Ok::<_, std::fmt::Error>(())
        };
        by_code("", "", rt.unrouted.responses())?;
        for pool in rt.pools.iter() {
            by_code(&pool.name, "", pool.stats.responses())?;
            for b in pool.backends.iter() {
                by_code(&pool.name, &b.state.name, b.state.responses())?;
            }
        }

        let mut m = e.encode_descriptor(
            "sessionlb_request_duration_seconds",
            "Time from the request head to the end of the response, by pool.",
            None,
            MetricType::Histogram,
        )?;
        for pool in rt.pools.iter() {
            let (sum, count, buckets) = pool.stats.durations();
            m.encode_family(&[("pool", &*pool.name)])?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }

        per_backend(
            &mut e,
            &rt,
            "sessionlb_backend_up",
            "1 when the backend takes requests: neither its active checks nor passive health (failed requests) keep it out.",
            MetricType::Gauge,
            |b| Some(ConstGauge::new(i64::from(b.state.is_up()))),
        )?;
        let mut m = e.encode_descriptor(
            "sessionlb_health_checks",
            "Active health checks by result (pass, fail), under the first pool with checks that lists the backend.",
            None,
            MetricType::Counter,
        )?;
        let mut seen = std::collections::HashSet::new();
        for pool in rt.pools.iter().filter(|p| p.health.check.is_some()) {
            for b in pool.backends.iter() {
                if !seen.insert(&*b.state.name) {
                    continue;
                }
                let (passed, failed) = b.state.checks_run();
                for (result, n) in [("pass", passed), ("fail", failed)] {
                    let labels = [
                        ("pool", &*pool.name),
                        ("backend", &*b.state.name),
                        ("result", result),
                    ];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        per_backend(
            &mut e,
            &rt,
            "sessionlb_backend_in_flight",
            "Requests in flight to the backend.",
            MetricType::Gauge,
            |b| Some(ConstGauge::new(i64::from(b.state.in_flight()))),
        )?;
        per_backend(
            &mut e,
            &rt,
            "sessionlb_backend_draining_pinned",
            "Requests a draining backend served for clients pinned to it.",
            MetricType::Counter,
            |b| b.drain.then(|| ConstCounter::new(b.state.drain_pinned())),
        )?;
        let mut m = e.encode_descriptor(
            "sessionlb_sticky",
            "Sticky placements by outcome: hit (followed the pin), new (pinned now), redispatch (pinned backend unavailable, re-pinned).",
            None,
            MetricType::Counter,
        )?;
        for pool in rt
            .pools
            .iter()
            .filter(|p| matches!(p.policy_kind, PolicyKind::Cookie | PolicyKind::IpHash))
        {
            let [hit, new, redispatch] = pool.stats.sticky();
            for (outcome, n) in [("hit", hit), ("new", new), ("redispatch", redispatch)] {
                ConstCounter::new(n)
                    .encode(m.encode_family(&[("pool", &*pool.name), ("outcome", outcome)])?)?;
            }
        }
        let m = e.encode_descriptor(
            "sessionlb_connections_open",
            "Client connections (and upgraded tunnels) open now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(shared.connections_open.load(Ordering::Relaxed)).encode(m)?;
        let mut m = e.encode_descriptor(
            "sessionlb_config_reloads",
            "Configuration reloads by result.",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("success", shared.reloads_ok.load(Ordering::Relaxed)),
            ("failure", shared.reloads_failed.load(Ordering::Relaxed)),
        ] {
            ConstCounter::new(n).encode(m.encode_family(&[("result", result)])?)?;
        }
        let mut m = e.encode_descriptor(
            "sessionlb_tls_handshakes",
            "TLS handshakes with clients: full, resumed (by ticket or session id), or failed (including clients that sent nothing within timeouts.request_header).",
            None,
            MetricType::Counter,
        )?;
        let handshakes = &crate::server::tls::HANDSHAKES;
        for (kind, n) in [
            ("full", &handshakes.full),
            ("resumed", &handshakes.resumed),
            ("failed", &handshakes.failed),
        ] {
            ConstCounter::new(n.load(Ordering::Relaxed))
                .encode(m.encode_family(&[("kind", kind)])?)?;
        }
        session_metrics(&mut e, &shared.sessions.stats)?;
        let m = e.encode_descriptor(
            "sessionlb_config_generation",
            "Generation of the configuration in effect: 1 at start, +1 per reload.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(rt.generation as i64).encode(m)?;
        let m = e.encode_descriptor(
            "sessionlb_config_last_reload_success_timestamp_seconds",
            "When the configuration in effect was loaded (start, or the last successful reload), in seconds since the Unix epoch.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(shared.last_reload_success_s.load(Ordering::Relaxed) as i64).encode(m)?;
        Ok(())
    }
}

fn session_metrics(e: &mut DescriptorEncoder, stats: &Stats) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(
        "sessionlb_session_store_ops",
        "Session store operations by op (load, get, put, delete, ping) and result (ok, miss: no such session or a write whose condition failed, error).",
        None,
        MetricType::Counter,
    )?;
    for op in Op::ALL {
        for result in OpResult::ALL {
            ConstCounter::new(stats.op_count(op, result))
                .encode(m.encode_family(&[("op", op.name()), ("result", result.name())])?)?;
        }
    }
    let mut m = e.encode_descriptor(
        "sessionlb_session_store_duration_seconds",
        "Session store operation latency, by op.",
        None,
        MetricType::Histogram,
    )?;
    for op in Op::ALL {
        let (sum, count, buckets) = stats.op_durations(op);
        m.encode_family(&[("op", op.name())])?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    let m = e.encode_descriptor(
        "sessionlb_session_store_up",
        "1 when the session store answered its last operation.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(i64::from(stats.is_up())).encode(m)?;
    for (name, help, value) in [
        (
            "sessionlb_sessions_created",
            "Sessions created (tickets minted).",
            &stats.created,
        ),
        (
            "sessionlb_sessions_deleted",
            "Sessions deleted: ended by the app, revoked, or past absolute_timeout.",
            &stats.deleted,
        ),
        (
            "sessionlb_session_store_evictions",
            "Sessions the memory store evicted to stay within store.max_size.",
            &stats.evicted,
        ),
        (
            "sessionlb_session_fail_open",
            "Requests forwarded without their session because the store was unavailable (fail_open).",
            &stats.failed_open,
        ),
        (
            "sessionlb_session_too_large",
            "Responses refused (502) because the app's session was over max_blob_bytes.",
            &stats.too_large,
        ),
        (
            "sessionlb_sessions_rotated",
            "Changes of a session that gave the client a new ticket (the one before reads the old state for rotation_grace).",
            &stats.rotated,
        ),
        (
            "sessionlb_sessions_forked",
            "Changes made with a ticket another change had replaced, stored as a new session of the client that made them.",
            &stats.forked,
        ),
        (
            "sessionlb_sessions_limited",
            "New sessions not stored because the client address was over max_new_sessions_per_client.",
            &stats.limited,
        ),
        (
            "sessionlb_session_ticket_cookies_dropped",
            "Set-Cookie fields for a ticket cookie that a backend sent, dropped (only the proxy issues tickets).",
            &stats.ticket_cookies_dropped,
        ),
        (
            "sessionlb_session_deletes_deferred",
            "Logouts the store could not do at once: the browser's ticket was cleared, the session deleted when the store answered again.",
            &stats.deletes_deferred,
        ),
    ] {
        let m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        ConstCounter::new(value.load(Ordering::Relaxed)).encode(m)?;
    }
    let m = e.encode_descriptor(
        "sessionlb_session_deletes_pending",
        "Logouts waiting for the store to answer again, to delete their session.",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(stats.deletes_pending.load(Ordering::Relaxed) as i64).encode(m)?;
    Ok(())
}

/// One series per backend (labels pool, backend); `value` returns None to
/// leave a backend out.
fn per_backend<M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    rt: &crate::runtime::Runtime,
    name: &str,
    help: &str,
    kind: MetricType,
    value: impl Fn(&crate::balance::Backend) -> Option<M>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for pool in rt.pools.iter() {
        for b in pool.backends.iter() {
            if let Some(v) = value(b) {
                v.encode(m.encode_family(&[("pool", &*pool.name), ("backend", &*b.state.name)])?)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_the_address_reached_localhost_or_a_listed_name() {
        let v4: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let v6: SocketAddr = "[::1]:9090".parse().unwrap();
        // a connection over IPv4 to a listener on [::]
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:9090".parse().unwrap();
        let listed = ["lb.internal".to_string(), "10.9.9.9".to_string()];
        for (host, local) in [
            ("127.0.0.1:9090", v4),
            ("127.0.0.1", v4),
            ("localhost:9090", v4),
            ("LOCALHOST.", v4),
            ("[::1]:9090", v6),
            ("[::1]", v6),
            ("localhost:9090", v6),
            ("10.0.0.5:9090", mapped),
            ("lb.internal:1", v4),
            ("10.9.9.9:80", v6),
        ] {
            assert!(host_allowed(host, local, &listed), "{host} at {local}");
        }
        for (host, local) in [
            ("127.0.0.1:9091", v4),
            ("127.0.0.2:9090", v4),
            ("[::1]:9090", v4),
            ("127.0.0.1:9090", v6),
            ("evil.example:9090", v4),
            ("internal", v4),
            ("lb.internal:port", v4),
            ("[::1", v6),
            ("", v4),
            ("127.0.0.1:9090:9090", v4),
        ] {
            assert!(!host_allowed(host, local, &listed), "{host} at {local}");
        }
    }

    #[test]
    fn the_token_is_compared_whole() {
        let token = AdminToken::new("s3cret-token".into());
        assert!(token.matches(b"s3cret-token"));
        for wrong in [&b"s3cret-toke"[..], b"s3cret-token2", b"", b"S3CRET-TOKEN"] {
            assert!(!token.matches(wrong));
        }
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }
}
