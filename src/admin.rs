//! The admin listener: Prometheus metrics, health and readiness, the pools'
//! state, and reload. It runs on the main thread, away from the workers.

use std::convert::Infallible;
use std::path::PathBuf;
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

use crate::config::PolicyKind;
use crate::reload;
use crate::runtime::Shared;
use crate::server::Acceptor;

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, config_path: Option<PathBuf>) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics(shared.clone())));
    let registry = Arc::new(registry);
    let mut listener = Acceptor::new(listener, "admin");
    loop {
        let (stream, _) = listener.accept().await;
        let shared = shared.clone();
        let registry = registry.clone();
        let path = config_path.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = handle(&req, &shared, &registry, path.as_deref());
                async move { Ok::<_, Infallible>(resp) }
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

fn handle(
    req: &Request<Incoming>,
    shared: &Shared,
    registry: &Registry,
    path: Option<&std::path::Path>,
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
        (&Method::GET, "/readyz") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/admin/pools") => {
            let mut r = text(StatusCode::OK, pools_json(shared));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::POST, "/admin/reload") => match path {
            None => text(StatusCode::CONFLICT, "no configuration file to reload\n"),
            Some(path) => match reload::reload(shared, path) {
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
        (&Method::DELETE, p) if p.starts_with("/admin/sessions/") => text(
            StatusCode::NOT_IMPLEMENTED,
            "shared-store mode is not available in this version\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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
                    serde_json::json!({
                        "id": &*b.state.name,
                        "addr": b.addr.to_string(),
                        "up": b.state.is_up(),
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
            "1 when the backend takes requests.",
            MetricType::Gauge,
            |b| Some(ConstGauge::new(i64::from(b.state.is_up()))),
        )?;
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
        let m = e.encode_descriptor(
            "sessionlb_config_generation",
            "Generation of the configuration in effect: 1 at start, +1 per reload.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(rt.generation as i64).encode(m)?;
        Ok(())
    }
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
