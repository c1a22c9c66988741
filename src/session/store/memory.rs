//! The embedded store: one per process, shared by every worker, bounded in
//! bytes (the least used sessions are evicted first, and counted), each
//! session expiring at its idle or absolute timeout, whichever comes first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::{Put, Ttl};
use crate::session::stats::Stats;
use crate::session::ticket::SessionId;

#[derive(Debug, Clone)]
struct Held {
    value: Bytes,
    idle: Duration,
    until: Instant,
}

impl Held {
    fn left(&self, at: Instant) -> Duration {
        self.idle.min(self.until.saturating_duration_since(at))
    }
}

struct Timeouts;

impl moka::Expiry<SessionId, Held> for Timeouts {
    fn expire_after_create(&self, _: &SessionId, held: &Held, at: Instant) -> Option<Duration> {
        Some(held.left(at))
    }

    fn expire_after_read(
        &self,
        _: &SessionId,
        held: &Held,
        at: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Some(held.left(at))
    }

    fn expire_after_update(
        &self,
        _: &SessionId,
        held: &Held,
        at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(held.left(at))
    }
}

pub struct MemoryStore {
    cache: Cache<SessionId, Held>,
    pub(super) stats: Arc<Stats>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("sessions", &self.cache.entry_count())
            .finish()
    }
}

/// What moka's bookkeeping costs per session, beside the id and value.
const OVERHEAD: u32 = 96;

impl MemoryStore {
    pub fn new(config: &crate::config::MemoryStore, stats: Arc<Stats>) -> MemoryStore {
        let evictions = stats.clone();
        let cache = Cache::builder()
            .max_capacity(config.max_size)
            // least recently used goes first: moka's default (TinyLFU)
            // would refuse a new session, never read yet, in favour of
            // old ones, logging out everyone who logs in while it is full
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .weigher(|_: &SessionId, held: &Held| {
                u32::try_from(held.value.len())
                    .unwrap_or(u32::MAX)
                    .saturating_add(OVERHEAD + 22)
            })
            .expire_after(Timeouts)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.count_eviction();
                }
            })
            .build();
        stats.set_up(true);
        MemoryStore { cache, stats }
    }

    pub(super) fn load(&self, id: &SessionId) -> Option<Bytes> {
        // a read slides the entry's expiry (Timeouts::expire_after_read)
        self.cache.get(id).map(|held| held.value)
    }

    pub(super) fn get(&self, id: &SessionId) -> Option<Bytes> {
        self.load(id)
    }

    pub(super) fn put(&self, id: &SessionId, value: Bytes, ttl: Ttl, put: Put) -> bool {
        let now = crate::clock::unix_now();
        let until = Instant::now() + Duration::from_secs(ttl.until.saturating_sub(now));
        let held = Held {
            value,
            idle: ttl.idle,
            until,
        };
        let result =
            self.cache
                .entry(*id)
                .and_compute_with(|current| match (current.is_some(), put) {
                    (false, Put::New) | (true, Put::Existing) => Op::Put(held),
                    _ => Op::Nop,
                });
        matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    pub(super) fn delete(&self, id: &SessionId) -> bool {
        self.cache.remove(id).is_some()
    }
}
