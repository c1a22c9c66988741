//! The embedded store: one per process, shared by every worker, bounded in
//! bytes (the least used sessions are evicted first, and counted), each
//! session expiring at its idle or absolute timeout, whichever comes first.
//!
//! A session is one shared entry, which the client connection that read it
//! last may keep ([`super::Held`]) and read again without a lookup: until
//! the entry is replaced, removed or evicted (then it is marked gone at
//! once), and for a moment after a lookup last slid its expiry (under a
//! second, as below), so that a session in use is still looked up, and its
//! expiry and recency kept, about once a second.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::{Put, Ttl};
use crate::session::stats::Stats;
use crate::session::ticket::SessionId;

#[derive(Debug)]
pub struct Entry {
    pub(super) value: Bytes,
    idle: Duration,
    until: Instant,
    /// Replaced, removed or evicted: a connection's copy is no longer it.
    gone: AtomicBool,
    /// When a lookup last found it (`clock::now_ms`).
    found_ms: AtomicU64,
}

impl Entry {
    fn left(&self, at: Instant) -> Duration {
        self.idle.min(self.until.saturating_duration_since(at))
    }

    fn leave(&self) {
        self.gone.store(true, Ordering::Release);
    }
}

type Held = Arc<Entry>;

/// How long a read leaves a session's expiry where it is: under a second,
/// or a sixteenth of an idle timeout shorter than 16 s.
fn slack(idle: Duration) -> Duration {
    (idle / 16).min(Duration::from_secs(1))
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
        // slid a moment ago: the expiry stays as it is, and moka has no
        // timer to move on this read, the costliest part of a read
        match left_now {
            Some(current) if left.saturating_sub(current) < slack(held.idle) => Some(current),
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
            .eviction_listener(move |_, held: Held, cause| {
                held.leave();
                if cause == RemovalCause::Size {
                    evictions.count_eviction();
                }
            })
            .build_with_hasher(foldhash::fast::RandomState::default());
        stats.set_up(true);
        MemoryStore { cache, stats }
    }

    /// Looks a session up, which slides its expiry
    /// (`Timeouts::expire_after_read`).
    pub(super) fn load(&self, id: &SessionId) -> Option<Held> {
        let held = self.cache.get(id)?;
        held.found_ms
            .store(crate::clock::now_ms(), Ordering::Relaxed);
        Some(held)
    }

    /// Whether an entry a connection kept is still the session, with no
    /// lookup: not gone, and found by a lookup a moment ago.
    pub(super) fn still(held: &Entry, now_ms: u64) -> bool {
        let found = held.found_ms.load(Ordering::Relaxed);
        !held.gone.load(Ordering::Acquire)
            && now_ms.saturating_sub(found) < crate::clock::millis(slack(held.idle))
    }

    pub(super) fn get(&self, id: &SessionId) -> Option<Bytes> {
        self.load(id).map(|held| held.value.clone())
    }

    pub(super) fn put(&self, id: &SessionId, value: Bytes, ttl: Ttl, put: Put) -> bool {
        let now = crate::clock::unix_now();
        let until = Instant::now() + Duration::from_secs(ttl.until.saturating_sub(now));
        let held = Arc::new(Entry {
            value,
            idle: ttl.idle,
            until,
            gone: AtomicBool::new(false),
            found_ms: AtomicU64::new(0),
        });
        let result = self
            .cache
            .entry(*id)
            .and_compute_with(|current| match (current, &put) {
                (None, Put::New) => Op::Put(held),
                (Some(current), Put::Replace(expected)) if current.value().value == expected => {
                    // connections holding it read it again at once
                    current.value().leave();
                    Op::Put(held)
                }
                _ => Op::Nop,
            });
        matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
    }

    pub(super) fn delete(&self, id: &SessionId) -> bool {
        match self.cache.remove(id) {
            Some(held) => {
                held.leave();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moka::Expiry;

    fn held(idle: Duration, until: Instant) -> Held {
        Arc::new(Entry {
            value: Bytes::from_static(b"v"),
            idle,
            until,
            gone: AtomicBool::new(false),
            found_ms: AtomicU64::new(0),
        })
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

    #[test]
    fn a_kept_entry_is_read_again_only_while_it_is_the_session() {
        let store = MemoryStore::new(
            &crate::config::MemoryStore {
                max_size: 1 << 20,
                secret: None,
            },
            Arc::new(Stats::default()),
        );
        let id = SessionId::parse(b"AAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let ttl = Ttl {
            idle: Duration::from_secs(1800),
            first_idle: Duration::from_secs(300),
            until: crate::clock::unix_now() + 3600,
        };
        assert!(store.put(&id, Bytes::from_static(b"one"), ttl, Put::New));
        let first = store.load(&id).unwrap();
        let now = crate::clock::now_ms();
        assert!(MemoryStore::still(&first, now), "found a moment ago");
        // a second after the lookup: looked up again
        assert!(!MemoryStore::still(&first, now + 1000));

        // replaced: the kept entry is gone at once
        let second = store.load(&id).unwrap();
        let stale = Put::Replace(Bytes::from_static(b"zero"));
        assert!(!store.put(&id, Bytes::from_static(b"two"), ttl, stale));
        assert!(
            MemoryStore::still(&second, now),
            "a write that did not land"
        );
        let put = Put::Replace(Bytes::from_static(b"one"));
        assert!(store.put(&id, Bytes::from_static(b"two"), ttl, put));
        assert!(!MemoryStore::still(&second, now));
        let third = store.load(&id).unwrap();
        assert_eq!(third.value, "two");
        // removed (revoked, logged out): gone at once
        assert!(store.delete(&id));
        assert!(!MemoryStore::still(&third, now));
    }
}
