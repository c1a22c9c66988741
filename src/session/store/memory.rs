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
        left_now: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        let left = held.left(at);
        // slid a moment ago (under a second, or a sixteenth of a shorter
        // idle timeout): the expiry stays as it is, and moka has no timer
        // to move on this read, the costliest part of a read
        let slack = (held.idle / 16).min(Duration::from_secs(1));
        match left_now {
            Some(current) if left.saturating_sub(current) < slack => Some(current),
            _ => Some(left),
        }
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
    /// Hashed with foldhash (keyed per process, like std's SipHash, at a
    /// fifth of its cost on a 22-byte id): the map is read on every
    /// request of a pool in shared-store mode.
    cache: Cache<SessionId, Held, foldhash::fast::RandomState>,
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
            .build_with_hasher(foldhash::fast::RandomState::default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use moka::Expiry;

    fn held(idle: Duration, until: Instant) -> Held {
        Held {
            value: Bytes::from_static(b"v"),
            idle,
            until,
        }
    }

    fn read(held: &Held, at: Instant, left_now: Duration) -> Duration {
        let id = SessionId::parse(b"AAAAAAAAAAAAAAAAAAAAAA").unwrap();
        Timeouts
            .expire_after_read(&id, held, at, Some(left_now), at)
            .unwrap()
    }

    #[test]
    fn a_read_slides_the_idle_timeout_unless_it_slid_a_moment_ago() {
        let now = Instant::now();
        let far = now + Duration::from_secs(86_400);
        let h = held(Duration::from_secs(1800), far);
        // slid half a second ago: left as it is
        let recent = Duration::from_millis(1_799_500);
        assert_eq!(read(&h, now, recent), recent);
        // two seconds ago: slid to the whole idle timeout again
        assert_eq!(
            read(&h, now, Duration::from_secs(1798)),
            Duration::from_secs(1800)
        );
        // a one-second idle timeout slides after a sixteenth of it
        let short = held(Duration::from_secs(1), far);
        assert_eq!(
            read(&short, now, Duration::from_millis(900)),
            Duration::from_secs(1)
        );
        assert_eq!(
            read(&short, now, Duration::from_millis(950)),
            Duration::from_millis(950)
        );
        // never past the absolute timeout
        let ending = held(Duration::from_secs(1800), now + Duration::from_secs(60));
        assert_eq!(
            read(&ending, now, Duration::from_secs(10)),
            Duration::from_secs(60)
        );
    }
}
