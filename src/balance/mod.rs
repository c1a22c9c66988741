//! Backend pools and the policies that choose among their backends.
//!
//! A policy is an immutable value built from the pool's backends; it is
//! asked for one candidate at a time and told which backends are usable
//! (up, not draining, not yet tried for this request). Failover is the
//! caller asking again with the failed backend marked as tried, so health
//! and retries live in one loop rather than in every policy.

mod least_conn;
mod registry;
mod round_robin;

use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

pub use least_conn::LeastConn;
pub use registry::{BackendState, Registry};
pub use round_robin::{RoundRobin, swrr_schedule};

use crate::config::{self, PolicyKind};

/// A pool as the request path sees it: backends with their live state and
/// the policy that picks among them.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub backends: Box<[Backend]>,
    pub health: config::Health,
    policy: Box<dyn Policy>,
}

#[derive(Debug)]
pub struct Backend {
    pub state: Arc<BackendState>,
    pub addr: SocketAddr,
    pub weight: u32,
    pub drain: bool,
}

/// What a policy may know about the request it places.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub client: IpAddr,
}

/// One policy: round robin, least connections, ...
pub trait Policy: Send + Sync + Debug {
    /// The backend for this request among `c`, or `None` when no
    /// candidate is usable.
    fn pick(&self, target: &Target, c: &Candidates<'_>) -> Option<usize>;
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

    /// May take a new request: up, not draining, not tried already.
    pub fn usable(&self, i: usize) -> bool {
        let b = &self.backends[i];
        !b.drain && !self.tried.contains(i) && b.state.is_up()
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

    pub fn count(&self) -> usize {
        self.low.count_ones() as usize + self.high.len()
    }
}

impl Pool {
    /// Builds a pool from validated config, taking each backend's live
    /// state from the registry.
    pub fn build(cfg: &config::Pool, registry: &Registry) -> Pool {
        let backends: Box<[Backend]> = cfg
            .backends
            .iter()
            .map(|b| Backend {
                state: registry.get(&b.name),
                addr: b.addr,
                weight: b.weight,
                drain: b.drain,
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let policy: Box<dyn Policy> = match cfg.policy {
            PolicyKind::LeastConn => Box::new(LeastConn::new(&weights)),
            PolicyKind::RoundRobin | PolicyKind::IpHash | PolicyKind::Cookie => {
                Box::new(RoundRobin::new(&weights))
            }
        };
        Pool {
            name: cfg.name.as_str().into(),
            backends,
            health: cfg.health.clone(),
            policy,
        }
    }

    /// The next backend to try for this request, skipping those in `tried`.
    pub fn select(&self, target: &Target, tried: &Tried) -> Option<usize> {
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
        let registry = Registry::default();
        let cfg = config::Pool {
            name: "test".into(),
            policy,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| config::Backend {
                    name: format!("127.0.0.1:{}", 9000 + i),
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                    weight: w,
                    drain: false,
                })
                .collect(),
            health: config::Health::default(),
            sticky: None,
            session: None,
        };
        Pool::build(&cfg, &registry)
    }

    pub fn target() -> Target {
        Target {
            client: IpAddr::from([192, 0, 2, 1]),
        }
    }
}
