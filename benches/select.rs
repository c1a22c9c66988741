//! Backend selection cost per policy and pool size, route-cookie parsing,
//! and the cost of compiling a large configuration.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use sessionlb::balance::{Pool, Registry, Target, Tried};
use sessionlb::config::{self, Config, PolicyKind};
use sessionlb::proxy::sticky;
use sessionlb::runtime::Runtime;

fn pool(policy: PolicyKind, n: usize) -> Pool {
    let cfg = config::Pool {
        max_body: None,
        name: "bench".into(),
        policy,
        backends: (0..n)
            .map(|i| config::Backend {
                name: format!("10.0.{}.{}:80", i / 256, i % 256),
                addr: config::Addr::Fixed(SocketAddr::from((
                    [10, 0, (i / 256) as u8, (i % 256) as u8],
                    80,
                ))),
                weight: 1 + (i % 3) as u32,
                drain: false,
                tls: None,
            })
            .collect(),
        tls: config::BackendTls::default(),
        resolve_interval: std::time::Duration::from_secs(5),
        max_addresses: 64,
        health: config::Health::default(),
        sticky: (policy == PolicyKind::Cookie).then(config::Sticky::default),
        session: None,
    };
    Pool::build(&cfg, &cfg.placed(&Default::default()), &Registry::default())
}

fn selection(c: &mut Criterion) {
    let clients: Vec<IpAddr> = (0..1024u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i * 7919)))
        .collect();
    for (name, policy) in [
        ("round_robin", PolicyKind::RoundRobin),
        ("least_conn", PolicyKind::LeastConn),
        ("ip_hash", PolicyKind::IpHash),
        ("cookie", PolicyKind::Cookie),
    ] {
        let mut group = c.benchmark_group(format!("select/{name}"));
        for n in [3, 100, 1000] {
            let p = pool(policy, n);
            let pinned = p.sticky.as_ref().map(|_| n / 2);
            let tried = Tried::default();
            let mut i = 0;
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    i = (i + 1) & 1023;
                    let target = Target {
                        client: clients[i],
                        pinned,
                    };
                    black_box(p.select(black_box(&target), &tried))
                })
            });
        }
        group.finish();
    }
}

fn route_cookie(c: &mut Criterion) {
    let p = pool(PolicyKind::Cookie, 3);
    let routes = p.sticky.clone().unwrap();
    let mut headers = HeaderMap::new();
    let cookie = format!(
        "_ga=GA1.2.3.4; theme=dark; slb_route={}; lang=en-GB",
        routes.token(1)
    );
    headers.insert(http::header::COOKIE, cookie.parse().unwrap());
    c.bench_function("route_cookie/parse_and_check", |b| {
        b.iter(|| {
            let token = sticky::find_cookie(black_box(&headers), "slb_route");
            black_box(token.and_then(|t| routes.backend_for(t)))
        })
    });
}

fn compile(c: &mut Criterion) {
    let backends: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "  {{ addr = \"10.0.{}.{}:80\", weight = {} }},",
                i / 256,
                i % 256,
                1 + i % 3
            )
        })
        .collect();
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n[pools.web]\nbackends = [\n{}\n]\n",
        backends.join("\n")
    );
    c.bench_function("compile/1000_backends", |b| {
        b.iter(|| {
            let config = Config::parse(black_box(&text), Path::new(".")).unwrap();
            black_box(Runtime::build(
                std::sync::Arc::new(config),
                &Default::default(),
                &Registry::default(),
                &sessionlb::session::Sessions::default(),
                1,
            ))
        })
    });
}

criterion_group!(benches, selection, route_cookie, compile);
criterion_main!(benches);
