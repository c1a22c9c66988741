//! The snapshot the request path reads: everything one request needs,
//! compiled from a validated `Config`, swapped whole on reload.
//!
//! A request loads the current `Arc<Runtime>` once and uses only it, so a
//! request that started before a reload finishes on the configuration it
//! started with. What must outlive a snapshot (backend health, requests in
//! flight, pooled connections) lives in the `Registry`.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::Notify;

use crate::balance::{DrainReport, Pool, PoolStats, Registry};
use crate::config::{AccessFormat, Addresses, Config, Placed, Timeouts};
use crate::proxy::Router;
use crate::proxy::upstream::PoolTls;
use crate::session::{Mode, Sessions};

#[derive(Debug)]
pub struct Runtime {
    /// 1 for the configuration loaded at start, +1 per successful reload.
    pub generation: u64,
    pub config: Arc<Config>,
    pub timeouts: Timeouts,
    pub router: Router,
    pub pools: Box<[Pool]>,
    pub trusted_proxies: Box<[IpNet]>,
    pub access_log: Option<AccessFormat>,
    /// Answers given before a pool was chosen (400, 404).
    pub unrouted: Arc<PoolStats>,
    /// Each pool's shared-store mode, by pool index; `None` for a pool
    /// without one, which never waits on the store.
    pub sessions: Box<[Option<Mode>]>,
    /// Whether `/readyz` waits on the store: some pool uses it.
    pub needs_store: bool,
    /// Every ticket cookie name of the configuration: no request to any
    /// backend carries one, and no backend's `Set-Cookie` for one reaches
    /// a client. Empty without shared-store mode, which costs nothing.
    pub ticket_cookies: Box<[String]>,
    /// Each pool's TLS to its backends, by pool index; `None` for a pool
    /// whose backends all speak plain HTTP.
    pub upstream_tls: Box<[Option<PoolTls>]>,
}

impl Runtime {
    /// From `config`, with the backends that follow DNS at `addresses`.
    pub fn build(
        config: Arc<Config>,
        addresses: &Addresses,
        registry: &Registry,
        sessions: &Sessions,
        generation: u64,
    ) -> Runtime {
        let placed: Vec<Vec<Placed>> = config.pools.iter().map(|p| p.placed(addresses)).collect();
        let pools: Box<[Pool]> = config
            .pools
            .iter()
            .zip(&placed)
            .map(|(p, placed)| Pool::build(p, placed, registry))
            .collect();
        let store = sessions.store_for(&config.store);
        let mut ticket_cookies: Vec<String> = config
            .pools
            .iter()
            .filter_map(|p| Some(p.session.as_ref()?.cookie.clone()))
            .collect();
        ticket_cookies.sort();
        ticket_cookies.dedup();
        let modes: Box<[Option<Mode>]> = config
            .pools
            .iter()
            .zip(pools.iter())
            .map(|(p, built)| {
                p.session.clone().map(|s| {
                    Mode::new(
                        built.name.clone(),
                        s,
                        store.clone(),
                        sessions,
                        &ticket_cookies,
                    )
                })
            })
            .collect();
        let router = Router::build(&config, |name| {
            pools.iter().position(|p| &*p.name == name).unwrap_or(0)
        });
        let upstream_tls = config
            .pools
            .iter()
            .zip(&placed)
            .map(|(p, placed)| PoolTls::build(p, placed))
            .collect();
        Runtime {
            generation,
            upstream_tls,
            timeouts: config.timeouts,
            router,
            pools,
            trusted_proxies: config.server.trusted_proxies.clone().into(),
            access_log: config.log.access_log.then_some(config.log.access_format),
            unrouted: registry.pool_stats(""),
            needs_store: modes.iter().any(Option::is_some),
            sessions: modes,
            ticket_cookies: ticket_cookies.into(),
            config,
        }
    }
}

/// Process-wide state: the current snapshot, the backend registry and the
/// process's own counters.
#[derive(Debug)]
pub struct Shared {
    current: ArcSwap<Runtime>,
    pub registry: Registry,
    pub sessions: Sessions,
    generation: AtomicU64,
    /// Client connections and tunnels open now.
    pub connections_open: AtomicI64,
    /// Listeners waiting for a connection to close (`max_connections`),
    /// and how they are woken.
    accept_waiters: AtomicUsize,
    slot_freed: Notify,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// When the configuration in effect was loaded (start or the last
    /// successful reload), in seconds since the Unix epoch.
    pub last_reload_success_s: AtomicU64,
    /// What the log last said about draining backends.
    pub drain_report: Mutex<DrainReport>,
    /// The addresses of the names backends follow in DNS, as last looked
    /// up: every snapshot is built with them.
    addresses: Mutex<Addresses>,
    publishing: Mutex<()>,
    /// The generation in effect, for the workers (they close their pooled
    /// connections to removed backends at once) and the health checks to
    /// follow swaps.
    swapped: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    /// With the backends that follow DNS at `addresses` (as looked up
    /// before start).
    pub fn new(config: Config, addresses: Addresses) -> Arc<Shared> {
        let registry = Registry::default();
        let sessions = Sessions::default();
        let runtime = Runtime::build(Arc::new(config), &addresses, &registry, &sessions, 1);
        crate::balance::health::follow(None, &runtime.pools);
        Arc::new(Shared {
            current: ArcSwap::from_pointee(runtime),
            registry,
            sessions,
            generation: AtomicU64::new(1),
            connections_open: AtomicI64::new(0),
            accept_waiters: AtomicUsize::new(0),
            slot_freed: Notify::new(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_success_s: AtomicU64::new(crate::clock::unix_now()),
            drain_report: Mutex::default(),
            addresses: Mutex::new(addresses),
            publishing: Mutex::new(()),
            swapped: tokio::sync::watch::Sender::new(1),
        })
    }

    /// Tells of each snapshot swap, from now on.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swapped.subscribe()
    }

    /// A reload was applied now.
    pub fn note_reload_success(&self) {
        self.last_reload_success_s
            .store(crate::clock::unix_now(), Ordering::Relaxed);
    }

    /// Counts a connection (or tunnel) open until [`Shared::close`].
    pub fn open(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection closed: a listener paused at `max_connections` may
    /// accept again.
    pub fn close(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
        if self.accept_waiters.load(Ordering::Acquire) > 0 {
            self.slot_freed.notify_waiters();
        }
    }

    /// Waits until fewer than `server.max_connections` connections are
    /// open. Each worker checks before it accepts, so the process may go
    /// over by one connection per worker at most.
    pub async fn room_for_connection(&self) {
        let mut paused = false;
        loop {
            let max = self.load().config.server.max_connections;
            let notified = self.slot_freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.accept_waiters.fetch_add(1, Ordering::AcqRel);
            let open = self.connections_open.load(Ordering::Acquire);
            if open < max as i64 {
                self.accept_waiters.fetch_sub(1, Ordering::AcqRel);
                if paused {
                    tracing::info!(open, max, "below max_connections: accepting again");
                }
                return;
            }
            if !std::mem::replace(&mut paused, true) {
                tracing::warn!(
                    open,
                    max,
                    "server.max_connections reached: not accepting until a connection closes"
                );
            }
            notified.await;
            self.accept_waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The snapshot for one request.
    pub fn load(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Logs what draining backends still serve (called periodically).
    pub fn report_draining(&self) {
        self.report_draining_of(&self.load().pools);
    }

    fn report_draining_of(&self, pools: &[Pool]) {
        self.drain_report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .report(pools);
    }

    /// Replaces the snapshot; requests in flight keep the one they loaded.
    pub fn swap(&self, config: Config) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.publish(Arc::new(config), generation);
        generation
    }

    /// The addresses known now of the names backends follow.
    pub fn addresses(&self) -> Addresses {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New addresses for names backends follow (those absent keep theirs):
    /// the snapshot is rebuilt with them, with the same configuration and
    /// generation, as a reload would (requests in flight finish where they
    /// are, removed backends' idle connections close).
    pub fn follow_dns(&self, found: Addresses) {
        self.learn(found);
        let current = self.load();
        self.publish(current.config.clone(), current.generation);
    }

    /// Addresses for the next snapshot built (a reload's new names).
    pub fn learn(&self, found: Addresses) {
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(found);
    }

    /// Forgets the addresses of names no backend of `config` follows.
    pub fn forget_names(&self, config: &Config) {
        let wanted: std::collections::HashSet<_> =
            config.pools.iter().flat_map(|p| p.dns_names()).collect();
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| wanted.contains(name));
    }

    fn publish(&self, config: Arc<Config>, generation: u64) {
        // one at a time: each builds on the snapshot the last one left
        let _one = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let addresses = self.addresses();
        let runtime = Runtime::build(
            config,
            &addresses,
            &self.registry,
            &self.sessions,
            generation,
        );
        // Backends that start draining are noted before any request can
        // see them draining, so the report counts their pinned traffic from
        // the first request.
        self.report_draining_of(&runtime.pools);
        // (no other publish can come between this load and the store)
        let old = self.load();
        // checks start and stop before any request can see the new
        // backends: a new one is held out until it passes
        crate::balance::health::follow(Some(&old.pools), &runtime.pools);
        self.registry.retire(&old.pools, &runtime.pools);
        self.current.store(Arc::new(runtime));
        self.swapped.send_replace(generation);
    }
}
