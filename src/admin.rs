//! The admin listener: Prometheus metrics, health and readiness, the pools'
//! state, and reload. It runs on the main thread, away from the workers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::balance::CheckStatus;
use crate::config::PolicyKind;
use crate::reload;
use crate::runtime::Shared;
use crate::server::Acceptor;
use crate::session::Stats;
use crate::session::stats::{Op, OpResult};

/// The admin listener in use: the address the file asked for, another
/// descriptor of its socket (to hand it to a new binary), and the task
/// that serves it, stopped when this is dropped.
pub struct AdminListener {
    pub written: SocketAddr,
    pub socket: std::net::TcpListener,
    task: tokio::task::JoinHandle<()>,
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
        Ok(AdminListener {
            written,
            socket: kept,
            task: tokio::spawn(serve(listener, shared, reloader)),
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
    }
}

/// Serves admin requests until the task is dropped.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    reloader: Option<Arc<reload::Reloader>>,
) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(shared.clone())));
    let registry = Arc::new(registry);
    let mut listener = Acceptor::new(listener, "admin");
    loop {
        let (stream, _) = listener.accept().await;
        let shared = shared.clone();
        let registry = registry.clone();
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                let registry = registry.clone();
                let reloader = reloader.clone();
                async move {
                    Ok::<_, Infallible>(handle(&req, &shared, &registry, reloader.as_ref()).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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

async fn handle(
    req: &Request<Incoming>,
    shared: &Shared,
    registry: &Registry,
    reloader: Option<&Arc<reload::Reloader>>,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut out = String::new();
            if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
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
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => ready(shared).await,
        (&Method::GET, "/admin/pools") => {
            let mut r = text(StatusCode::OK, pools_json(shared));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::POST, "/admin/reload") => match reloader {
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
        (&Method::GET, p) if p.starts_with("/admin/sessions/") => {
            match shared
                .sessions
                .inspect(&p["/admin/sessions/".len()..])
                .await
            {
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
            }
        }
        (&Method::DELETE, p) if p.starts_with("/admin/sessions/") => {
            match shared.sessions.revoke(&p["/admin/sessions/".len()..]).await {
                Ok(true) => {
                    let mut r = text(StatusCode::NO_CONTENT, "");
                    r.headers_mut().remove(header::CONTENT_TYPE);
                    r
                }
                Ok(false) => text(StatusCode::NOT_FOUND, "no such session\n"),
                Err(error) => store_unavailable(&error),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
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
