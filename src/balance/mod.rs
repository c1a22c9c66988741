//! Backend pools and the policies that choose among their backends.
//!
//! A policy is an immutable value built from the pool's backends; it is
//! asked for one candidate at a time and told which backends are usable
//! (up, not draining, not yet tried for this request). Failover is the
//! caller asking again with the failed backend marked as tried, so health
//! and retries live in one loop rather than in every policy. Health is
//! passive (`registry`: failed requests) and active (`health`: the state
//! the checks' results drive).

mod cookie;
pub mod health;
mod ip_hash;
mod least_conn;
mod registry;
mod round_robin;

use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use cookie::{CookiePolicy, StickyRoutes, route_token};
pub use health::{CheckState, CheckStatus, Transition};
pub use ip_hash::{IpHash, RecentClients, client_key};
pub use least_conn::LeastConn;
pub use registry::{BackendState, DownReason, Link, PoolStats, Registry, Slot, Verify};
pub use round_robin::{RoundRobin, swrr_schedule};

use crate::config::{self, PolicyKind};

/// A pool as the request path sees it: backends with their live state and
/// the policy that picks among them.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub policy_kind: PolicyKind,
    pub backends: Box<[Backend]>,
    /// The largest request body accepted (`max_body`).
    pub max_body: Option<u64>,
    pub health: config::Health,
    /// Route tokens and cookies, for `policy = "cookie"`.
    pub sticky: Option<Arc<StickyRoutes>>,
    /// Counters that outlive reloads.
    pub stats: Arc<PoolStats>,
    policy: Box<dyn Policy>,
}

#[derive(Debug)]
pub struct Backend {
    pub state: Arc<BackendState>,
    /// Where its connections are pooled: by identity and TLS settings.
    pub slot: Arc<Slot>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub drain: bool,
}

/// What a policy may know about the request it places.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The client's address (after `trusted_proxies`).
    pub client: IpAddr,
    /// The backend the request's route token names, when it names one
    /// (`cookie` policy).
    pub pinned: Option<usize>,
}

/// How a sticky policy placed a request; `Balanced` for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Balanced,
    /// Followed the client's pin (its cookie or its hash).
    Hit,
    /// A client without a (valid) pin, placed and pinned now.
    New,
    /// The pinned backend could not take it: placed elsewhere, re-pinned.
    Redispatch,
}

impl Outcome {
    pub fn is_sticky(self) -> bool {
        self != Outcome::Balanced
    }
}

/// A policy's choice for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub outcome: Outcome,
}

impl Pick {
    pub fn balanced(index: usize) -> Pick {
        Pick {
            index,
            outcome: Outcome::Balanced,
        }
    }
}

/// One policy: round robin, least connections, ...
pub trait Policy: Send + Sync + Debug {
    /// The backend for this request among `c`, or `None` when no
    /// candidate is usable.
    fn pick(&self, target: &Target, c: &Candidates<'_>) -> Option<Pick>;
}

/// The backends of a pool with what is known about them for one request.
pub struct Candidates<'a> {
    backends: &'a [Backend],
    tried: &'a Tried,
}

impl Candidates<'_> {
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    pub fn backend(&self, i: usize) -> &Backend {
        &self.backends[i]
    }

    /// May take a new client: up, not draining, not tried already.
    pub fn usable(&self, i: usize) -> bool {
        let b = &self.backends[i];
        !b.drain && !self.tried.contains(i) && b.state.is_up()
    }

    /// May take a request pinned to it: up and not tried already; a
    /// draining backend still serves the clients it has.
    pub fn pinnable(&self, i: usize) -> bool {
        let b = &self.backends[i];
        !self.tried.contains(i) && b.state.is_up()
    }

    /// The first usable backend in index order; the last resort of a
    /// policy whose own choice was refused.
    pub fn first_usable(&self) -> Option<usize> {
        (0..self.len()).find(|&i| self.usable(i))
    }
}

/// Backends already tried for one request.
#[derive(Debug, Default)]
pub struct Tried {
    low: u128,
    high: Vec<usize>,
}

impl Tried {
    pub fn contains(&self, i: usize) -> bool {
        if i < 128 {
            self.low & (1 << i) != 0
        } else {
            self.high.contains(&i)
        }
    }

    pub fn insert(&mut self, i: usize) {
        if i < 128 {
            self.low |= 1 << i;
        } else if !self.high.contains(&i) {
            self.high.push(i);
        }
    }
}

/// Tells the operator, every few seconds, how much pinned traffic each
/// draining backend still serves, and when it has none left.
#[derive(Debug, Default)]
pub struct DrainReport {
    /// By backend identity: pinned requests counted at the last report,
    /// and whether it served any in the period before.
    last: std::collections::HashMap<Arc<str>, (u64, bool)>,
}

impl DrainReport {
    pub fn report(&mut self, pools: &[Pool]) {
        let mut now = std::collections::HashMap::new();
        for pool in pools {
            for b in pool.backends.iter().filter(|b| b.drain) {
                let name = &b.state.name;
                let count = b.state.drain_pinned();
                let busy = match self.last.get(name) {
                    None => {
                        tracing::info!(
                            pool = &*pool.name,
                            backend = &**name,
                            "backend is draining: it keeps the clients pinned to it and gets no new ones"
                        );
                        false
                    }
                    Some(&(before, was_busy)) => {
                        let served = count.saturating_sub(before);
                        if served > 0 {
                            tracing::info!(
                                pool = &*pool.name,
                                backend = &**name,
                                pinned_requests = served,
                                "draining backend still serves clients pinned to it"
                            );
                        } else if was_busy {
                            tracing::info!(
                                pool = &*pool.name,
                                backend = &**name,
                                "draining backend served no pinned client in the last period"
                            );
                        }
                        served > 0
                    }
                };
                now.insert(name.clone(), (count, busy));
            }
        }
        self.last = now;
    }
}

impl Pool {
    /// Builds a pool from validated config with its backends as `placed`
    /// now (those that follow DNS at the addresses they have), taking each
    /// backend's live state from the registry.
    pub fn build(cfg: &config::Pool, placed: &[config::Placed], registry: &Registry) -> Pool {
        let verify = Verify::of(&cfg.tls);
        let backends: Box<[Backend]> = placed
            .iter()
            .map(|b| Backend {
                state: registry.get(&b.name),
                slot: registry.slot(
                    &b.name,
                    match &b.tls {
                        None => Link::Plain,
                        Some(name) => Link::Tls {
                            name: name.to_str().into_owned(),
                            verify: verify.clone(),
                        },
                    },
                ),
                addr: b.addr,
                weight: b.weight,
                drain: b.drain,
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let ids: Vec<&str> = placed.iter().map(|b| b.name.as_str()).collect();
        let mut sticky = None;
        let policy: Box<dyn Policy> = match cfg.policy {
            PolicyKind::RoundRobin => Box::new(RoundRobin::new(&weights)),
            PolicyKind::LeastConn => Box::new(LeastConn::new(&weights)),
            PolicyKind::IpHash => Box::new(IpHash::new(
                &ids,
                &weights,
                registry.recent_clients(&cfg.name),
            )),
            PolicyKind::Cookie => {
                let routes = Arc::new(StickyRoutes::new(
                    cfg.sticky.clone().unwrap_or_default(),
                    &ids,
                ));
                sticky = Some(routes.clone());
                Box::new(CookiePolicy::new(&weights))
            }
        };
        Pool {
            name: cfg.name.as_str().into(),
            policy_kind: cfg.policy,
            backends,
            max_body: cfg.max_body,
            health: cfg.health.clone(),
            sticky,
            stats: registry.pool_stats(&cfg.name),
            policy,
        }
    }

    /// The next backend to try for this request, skipping those in `tried`.
    pub fn select(&self, target: &Target, tried: &Tried) -> Option<Pick> {
        let c = Candidates {
            backends: &self.backends,
            tried,
        };
        self.policy.pick(target, &c)
    }

    /// Counts a failed attempt against backend `i` (passive health).
    /// Returns true when it took the backend down.
    pub fn record_failure(&self, i: usize) -> bool {
        self.backends[i]
            .state
            .record_failure(self.health.max_fails, self.health.fail_timeout)
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub fn pool(policy: PolicyKind, weights: &[u32]) -> Pool {
        let ids: Vec<String> = (0..weights.len())
            .map(|i| format!("127.0.0.1:{}", 9000 + i))
            .collect();
        build(policy, &ids, weights)
    }

    pub fn pool_with_ids(policy: PolicyKind, ids: &[&str]) -> Pool {
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        build(policy, &ids, &vec![1; ids.len()])
    }

    fn build(policy: PolicyKind, ids: &[String], weights: &[u32]) -> Pool {
        let registry = Registry::default();
        let cfg = config::Pool {
            name: "test".into(),
            policy,
            max_body: None,
            backends: ids
                .iter()
                .zip(weights)
                .enumerate()
                .map(|(i, (id, &w))| config::Backend {
                    name: id.clone(),
                    addr: config::Addr::Fixed(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16))),
                    weight: w,
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
        Pool::build(&cfg, &cfg.placed(&Default::default()), &registry)
    }

    pub fn target() -> Target {
        Target {
            client: IpAddr::from([192, 0, 2, 1]),
            pinned: None,
        }
    }
}
