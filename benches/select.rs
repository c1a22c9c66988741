//! Backend selection cost per policy and pool size, and the cost of
//! compiling a large configuration.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sessionlb::balance::{Pool, Registry, Target, Tried};
use sessionlb::config::{self, Config, PolicyKind};
use sessionlb::runtime::Runtime;

fn pool(policy: PolicyKind, n: usize) -> Pool {
    let cfg = config::Pool {
        name: "bench".into(),
        policy,
        backends: (0..n)
            .map(|i| config::Backend {
                name: format!("10.0.{}.{}:80", i / 256, i % 256),
                addr: SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 80)),
                weight: 1 + (i % 3) as u32,
                drain: false,
            })
            .collect(),
        health: config::Health::default(),
        sticky: None,
        session: None,
    };
    Pool::build(&cfg, &Registry::default())
}

fn selection(c: &mut Criterion) {
    let target = Target {
        client: IpAddr::from([192, 0, 2, 7]),
    };
    for (name, policy) in [
        ("round_robin", PolicyKind::RoundRobin),
        ("least_conn", PolicyKind::LeastConn),
    ] {
        let mut group = c.benchmark_group(format!("select/{name}"));
        for n in [3, 100, 1000] {
            let p = pool(policy, n);
            let tried = Tried::default();
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| black_box(p.select(black_box(&target), &tried)))
            });
        }
        group.finish();
    }
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
            black_box(Runtime::build(config, &Registry::default(), 1))
        })
    });
}

criterion_group!(benches, selection, compile);
criterion_main!(benches);
