//! The embedded store: one per process, shared by every worker, bounded in
//! bytes, each session expiring at its idle or absolute timeout, whichever
//! comes first.
//!
//! Sessions seen once are evicted before sessions seen twice (a segmented
//! LRU): a new session enters *probation*, and its first lookup (the
//! client's second request) moves it to *protected*. Over `max_size`, the
//! least recently used session of probation goes first, and one in
//! protected only once probation is empty. A flood of cookieless requests
//! makes sessions nobody comes back for; they evict each other, and a user
//! who is signed in stays signed in. Protected has no bound of its own, as
//! an SLRU's usually has (80 % or so, its least used sessions demoted to
//! probation): a session in use demoted there would go before the flood's,
//! and an operator wants no signed-in user logged out while a session no
//! one came back for is kept. The price: when sessions in use fill
//! `max_size`, a new session lives only until the next one needs its room,
//! which the eviction count tells (and `max_size` is then too small
//! whatever the policy). A write makes room before it adds, so a session
//! just made is never the one its own write evicts.
//!
//! A session used once lives `first_idle` (a few minutes), one in use
//! `idle`: the flood's sessions also go by themselves, soon.
//!
//! A session is one shared entry, which the client connection that read it
//! last may keep ([`super::Held`]) and read again without a lookup: until
//! the entry is replaced, removed, evicted or expired (then it is marked
//! gone at once), and for a moment after a lookup last slid its expiry
//! (under a second, as below), so that a session in use is still looked
//! up, and its expiry and recency kept, about once a second.
//!
//! The sessions are spread over shards, each a lock over a table of slab
//! indices and two intrusive LRU lists in the slab (indices, no pointers):
//! a lookup locks one shard for a hash probe and a few index writes. The
//! bytes are counted once for the whole store, so that `max_size` bounds
//! the store and not each shard (a session larger than a shard's share
//! would otherwise never fit): a write evicts from its own shard while it
//! has a session in probation, then from the others in turn, holding one
//! lock at a time. Expired sessions are dropped when a lookup finds them,
//! and a few at a time by each new session (from the lists' least recently
//! used ends, and a cursor through the slab for the absolute timeouts
//! that come first): no timer, no background task, so the store works
//! outside a runtime too.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::{Put, Ttl};
use crate::clock;
use crate::session::stats::Stats;
use crate::session::ticket::SessionId;

#[derive(Debug)]
pub struct Entry {
    pub(super) value: Bytes,
    /// How long a lookup lets connections read it again without one
    /// ([`slack_ms`] of the idle timeout).
    slack_ms: u64,
    /// Replaced, removed, evicted or expired: a connection's copy is no
    /// longer it.
    gone: AtomicBool,
    /// When a lookup last found it (`clock::now_ms`).
    found_ms: AtomicU64,
}

impl Entry {
    fn leave(&self) {
        self.gone.store(true, Ordering::Release);
    }
}

type Held = Arc<Entry>;

/// How long a read leaves a session's expiry (and its place in the LRU
/// order) where it is: under a second, or a sixteenth of an idle timeout
/// shorter than 16 s.
fn slack_ms(idle_ms: u64) -> u64 {
    (idle_ms / 16).min(1000)
}

/// Shards: enough that workers rarely meet on one lock (a lookup holds it
/// for a hash probe and a few index writes), few enough to cost nothing
/// empty. A power of two.
const SHARDS: usize = 64;

/// No node: the end of a list, or of the free list.
const NIL: u32 = u32::MAX;

/// Expired sessions a new one drops, at most, from each list's least
/// recently used end, and slots the sweep cursor looks at.
const SWEEP: usize = 4;

/// A session id's length, weighed with the value.
const ID_LEN: u32 = 22;

/// What the store keeps for a session beside its id and value: its node in
/// the slab (80 bytes, and the spare room a slab grown by doubling has),
/// the shared entry (72 bytes in an 80-byte allocation), a table slot and
/// control byte (5 bytes, at the table's load), and the allocator's
/// header on the value. Checked against the process's resident memory
/// per session (`memory_per_session` in tests/session_flood.rs).
const OVERHEAD: u32 = 176;

fn weigh(value_len: usize) -> u32 {
    u32::try_from(value_len)
        .unwrap_or(u32::MAX)
        .saturating_add(ID_LEN + OVERHEAD)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    /// Written by `Put::New`, not found by a lookup since.
    Probation = 0,
    /// Found by a lookup at least once.
    Protected = 1,
}

struct Node {
    id: SessionId,
    segment: Segment,
    /// Towards the most recently used end of its list.
    prev: u32,
    /// Towards the least recently used end; the next free slot when free.
    next: u32,
    weight: u32,
    /// None: a free slot.
    entry: Option<Held>,
    /// When its expiry last slid (a write, or a lookup a slack after the
    /// last): also its place in its list, which is in this order.
    used_ms: u64,
    until_ms: u64,
    idle_ms: u64,
    first_idle_ms: u64,
}

impl Node {
    fn expires_ms(&self) -> u64 {
        let idle = match self.segment {
            Segment::Probation => self.first_idle_ms,
            Segment::Protected => self.idle_ms,
        };
        self.used_ms.saturating_add(idle).min(self.until_ms)
    }
}

#[derive(Clone, Copy)]
struct List {
    mru: u32,
    lru: u32,
}

const EMPTY: List = List { mru: NIL, lru: NIL };

struct Shard {
    /// Slab indices, hashed by their node's id: the id is kept once.
    table: HashTable<u32>,
    nodes: Vec<Node>,
    free: u32,
    lists: [List; 2],
    /// The slot the sweep looked at last.
    cursor: usize,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            table: HashTable::new(),
            nodes: Vec::new(),
            free: NIL,
            lists: [EMPTY; 2],
            cursor: 0,
        }
    }

    fn find(&self, hash: u64, id: &SessionId) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(hash, |&i| {
                nodes.get(i as usize).is_some_and(|n| n.id == *id)
            })
            .copied()
    }

    fn node(&self, i: u32) -> &Node {
        &self.nodes[i as usize]
    }

    fn node_mut(&mut self, i: u32) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    fn unlink(&mut self, i: u32) {
        let Node {
            prev,
            next,
            segment,
            ..
        } = *self.node(i);
        let list = &mut self.lists[segment as usize];
        match prev {
            NIL => list.mru = next,
            p => self.nodes[p as usize].next = next,
        }
        match next {
            NIL => self.lists[segment as usize].lru = prev,
            n => self.nodes[n as usize].prev = prev,
        }
    }

    fn push_mru(&mut self, i: u32, segment: Segment) {
        let list = &mut self.lists[segment as usize];
        let old = list.mru;
        list.mru = i;
        match old {
            NIL => list.lru = i,
            o => self.nodes[o as usize].prev = i,
        }
        let node = self.node_mut(i);
        node.segment = segment;
        node.prev = NIL;
        node.next = old;
    }

    /// To the most recently used end of `segment`, its expiry slid.
    fn used(&mut self, i: u32, segment: Segment, now: u64) {
        self.unlink(i);
        self.push_mru(i, segment);
        self.node_mut(i).used_ms = now;
    }

    fn insert(&mut self, hash: u64, node: Node, hasher: &RandomState) -> u32 {
        let segment = node.segment;
        let i = match self.free {
            NIL => {
                // 2^32 sessions in one shard would weigh a terabyte
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
            f => {
                self.free = self.node(f).next;
                *self.node_mut(f) = node;
                f
            }
        };
        let nodes = &self.nodes;
        self.table.insert_unique(hash, i, |&j| {
            nodes.get(j as usize).map_or(0, |n| hasher.hash_one(n.id))
        });
        self.push_mru(i, segment);
        i
    }

    /// Takes a session out (its slot freed, its entry marked gone for the
    /// connections that kept it); its weight.
    fn remove(&mut self, i: u32, hasher: &RandomState) -> u64 {
        self.unlink(i);
        let free = self.free;
        let node = self.node_mut(i);
        if let Some(entry) = node.entry.take() {
            entry.leave();
        }
        node.next = free;
        let (hash, weight) = (hasher.hash_one(node.id), node.weight);
        self.free = i;
        if let Ok(found) = self.table.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        u64::from(weight)
    }

    /// The least recently used session of `segment` but `keep` (the one
    /// being written).
    fn victim(&self, segment: Segment, keep: u32) -> Option<u32> {
        match self.lists[segment as usize].lru {
            NIL => None,
            lru if lru == keep => Some(self.node(lru).prev).filter(|&p| p != NIL),
            lru => Some(lru),
        }
    }

    /// Drops a few expired sessions: from each list's least recently used
    /// end, where the idle timeouts end first, and from the slots after
    /// the cursor, for the absolute timeouts that end before their idle
    /// one. The bytes freed.
    fn sweep(&mut self, now: u64, hasher: &RandomState) -> u64 {
        let mut freed = 0;
        for segment in [Segment::Probation, Segment::Protected] {
            for _ in 0..SWEEP {
                match self.lists[segment as usize].lru {
                    NIL => break,
                    lru if now < self.node(lru).expires_ms() => break,
                    lru => freed += self.remove(lru, hasher),
                }
            }
        }
        for _ in 0..SWEEP.min(self.nodes.len()) {
            self.cursor = (self.cursor + 1) % self.nodes.len();
            let node = &self.nodes[self.cursor];
            if node.entry.is_some() && now >= node.expires_ms() {
                freed += self.remove(self.cursor as u32, hasher);
            }
        }
        freed
    }
}

/// A shard on cache lines of its own: workers locking neighbours do not
/// take the line from each other.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

pub struct MemoryStore {
    shards: Box<[Padded]>,
    /// `shards.len() - 1`.
    mask: usize,
    /// Keyed per process (like std's SipHash, at a fifth of its cost on a
    /// 22-byte id): an id a client sends is looked up.
    hasher: RandomState,
    max_size: u64,
    /// Bytes weighed over every shard; changed under the lock of the shard
    /// that changed, so that a removal never counts before its insertion.
    size: AtomicU64,
    pub(super) stats: Arc<Stats>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("bytes", &self.size.load(Ordering::Relaxed))
            .field("max_size", &self.max_size)
            .finish()
    }
}

impl MemoryStore {
    pub fn new(config: &crate::config::MemoryStore, stats: Arc<Stats>) -> MemoryStore {
        MemoryStore::with_shards(config, stats, SHARDS)
    }

    /// `shards`: a power of two (one, in tests, for one LRU order).
    fn with_shards(
        config: &crate::config::MemoryStore,
        stats: Arc<Stats>,
        shards: usize,
    ) -> MemoryStore {
        let shards = shards.next_power_of_two();
        stats.set_up(true);
        MemoryStore {
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Shard::new())))
                .collect(),
            mask: shards - 1,
            hasher: RandomState::default(),
            max_size: config.max_size,
            size: AtomicU64::new(0),
            stats,
        }
    }

    /// The shard of a hash: bits the table uses neither for its buckets
    /// (the low ones) nor for its tags (the top seven), so that the ids of
    /// one shard still spread over its table.
    fn shard_of(&self, hash: u64) -> usize {
        (hash >> 32) as usize & self.mask
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Looks a session up, which makes it one in use (promoted, and its
    /// idle timeout from now on `idle`), and slides its expiry unless it
    /// slid a moment ago.
    pub(super) fn load(&self, id: &SessionId) -> Option<Held> {
        self.load_at(id, clock::now_ms())
    }

    /// A session in a locked shard. One past its expiry is no session,
    /// whether or not dropped yet: it is dropped now.
    fn find_live(&self, shard: &mut Shard, hash: u64, id: &SessionId, now: u64) -> Option<u32> {
        let i = shard.find(hash, id)?;
        if now < shard.node(i).expires_ms() {
            return Some(i);
        }
        let freed = shard.remove(i, &self.hasher);
        self.size.fetch_sub(freed, Ordering::Relaxed);
        None
    }

    fn load_at(&self, id: &SessionId, now: u64) -> Option<Held> {
        let hash = self.hasher.hash_one(id);
        let mut shard = self.lock(self.shard_of(hash));
        let i = self.find_live(&mut shard, hash, id, now)?;
        let node = shard.node(i);
        match node.segment {
            Segment::Probation => shard.used(i, Segment::Protected, now),
            // slid a moment ago: left where it is, the lookup's only
            // writes the entry's `found_ms`
            Segment::Protected if now.saturating_sub(node.used_ms) < slack_ms(node.idle_ms) => {}
            Segment::Protected => shard.used(i, Segment::Protected, now),
        }
        let held = shard.node(i).entry.clone()?;
        drop(shard);
        held.found_ms.store(now, Ordering::Relaxed);
        Some(held)
    }

    /// Whether an entry a connection kept is still the session, with no
    /// lookup: not gone, and found by a lookup a moment ago.
    pub(super) fn still(held: &Entry, now_ms: u64) -> bool {
        let found = held.found_ms.load(Ordering::Relaxed);
        !held.gone.load(Ordering::Acquire) && now_ms.saturating_sub(found) < held.slack_ms
    }

    /// The current value, for a write to apply changes to: no use of the
    /// session, so neither its expiry nor its segment moves.
    pub(super) fn get(&self, id: &SessionId) -> Option<Bytes> {
        self.get_at(id, clock::now_ms())
    }

    fn get_at(&self, id: &SessionId, now: u64) -> Option<Bytes> {
        let hash = self.hasher.hash_one(id);
        let mut shard = self.lock(self.shard_of(hash));
        let i = self.find_live(&mut shard, hash, id, now)?;
        Some(shard.node(i).entry.as_ref()?.value.clone())
    }

    pub(super) fn put(&self, id: &SessionId, value: Bytes, ttl: Ttl, put: Put) -> bool {
        self.put_at(id, value, ttl, put, clock::now_ms(), clock::unix_now())
    }

    /// `unix`: the wall clock's seconds at `now`, which the absolute
    /// timeout (`ttl.until`) is in.
    fn put_at(
        &self,
        id: &SessionId,
        value: Bytes,
        ttl: Ttl,
        put: Put,
        now: u64,
        unix: u64,
    ) -> bool {
        let hash = self.hasher.hash_one(id);
        let home = self.shard_of(hash);
        let weight = weigh(value.len());
        let idle_ms = clock::millis(ttl.idle);
        let first_idle_ms = clock::millis(ttl.first_idle);
        let until_ms = now.saturating_add(ttl.until.saturating_sub(unix).saturating_mul(1000));
        let held = Arc::new(Entry {
            value,
            slack_ms: slack_ms(idle_ms),
            gone: AtomicBool::new(false),
            found_ms: AtomicU64::new(0),
        });
        let mut shard = self.lock(home);
        let mut freed = 0;
        let found = self.find_live(&mut shard, hash, id, now);
        let written = match (found, put) {
            (None, Put::New) => {
                freed += shard.sweep(now, &self.hasher);
                let node = Node {
                    id: *id,
                    segment: Segment::Probation,
                    prev: NIL,
                    next: NIL,
                    weight,
                    entry: Some(held.clone()),
                    used_ms: now,
                    until_ms,
                    idle_ms,
                    first_idle_ms,
                };
                Some(shard.insert(hash, node, &self.hasher))
            }
            (Some(i), Put::Replace(expected))
                if shard
                    .node(i)
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.value == expected) =>
            {
                let node = shard.node_mut(i);
                freed += u64::from(node.weight);
                if let Some(old) = node.entry.replace(held.clone()) {
                    // connections holding it read it again at once
                    old.leave();
                }
                node.weight = weight;
                node.until_ms = until_ms;
                node.idle_ms = idle_ms;
                node.first_idle_ms = first_idle_ms;
                // a change is a use, in the segment it was in
                let segment = node.segment;
                shard.used(i, segment, now);
                Some(i)
            }
            _ => None,
        };
        let Some(i) = written else {
            return false;
        };
        self.size
            .fetch_add(u64::from(weight).wrapping_sub(freed), Ordering::Relaxed);
        self.shrink(shard, home, i, &held, now);
        true
    }

    fn over(&self) -> bool {
        self.size.load(Ordering::Relaxed) > self.max_size
    }

    /// Evicts until the store is within `max_size`: from probation, this
    /// shard's first (its lock is held), then each other shard's in turn;
    /// from protected only when no shard has a session in probation. Never
    /// `keep` (in shard `home`, `held` its entry), just written, unless it
    /// alone is over `max_size`.
    fn shrink(
        &self,
        mut shard: MutexGuard<'_, Shard>,
        home: usize,
        keep: u32,
        held: &Held,
        now: u64,
    ) {
        while self.over() {
            let Some(victim) = shard.victim(Segment::Probation, keep) else {
                break;
            };
            self.evict(&mut shard, victim, now);
        }
        drop(shard);
        // protected only once a whole round found no session in probation:
        // not merely because another write went over after this one's
        // round brought the store within its size (that write makes its
        // own room, from probation first)
        for segment in [Segment::Probation, Segment::Protected] {
            if self.evict_round(segment, home, keep, now) {
                return;
            }
        }
        let mut shard = self.lock(home);
        if self.over() {
            let still_it = shard
                .nodes
                .get(keep as usize)
                .and_then(|n| n.entry.as_ref())
                .is_some_and(|e| Arc::ptr_eq(e, held));
            if still_it {
                self.evict(&mut shard, keep, now);
            }
        }
    }

    /// Evicts from `segment`, one session from each shard in turn after
    /// `home` (never `keep` there): `true` once within `max_size`, `false`
    /// when a whole round found none to evict.
    fn evict_round(&self, segment: Segment, home: usize, keep: u32, now: u64) -> bool {
        let (mut s, mut misses) = (home, 0);
        while misses <= self.mask {
            if !self.over() {
                return true;
            }
            s = (s + 1) & self.mask;
            let mut shard = self.lock(s);
            let keep = if s == home { keep } else { NIL };
            match shard.victim(segment, keep) {
                Some(victim) => {
                    self.evict(&mut shard, victim, now);
                    misses = 0;
                }
                None => misses += 1,
            }
        }
        !self.over()
    }

    /// Removes a session for room; counted unless it had expired (then it
    /// is no eviction: nobody is logged out by it).
    fn evict(&self, shard: &mut Shard, i: u32, now: u64) {
        let live = now < shard.node(i).expires_ms();
        let freed = shard.remove(i, &self.hasher);
        self.size.fetch_sub(freed, Ordering::Relaxed);
        if live {
            self.stats.count_eviction();
        }
    }

    /// `false` when there was no session (or it had expired).
    pub(super) fn delete(&self, id: &SessionId) -> bool {
        self.delete_at(id, clock::now_ms())
    }

    fn delete_at(&self, id: &SessionId, now: u64) -> bool {
        let hash = self.hasher.hash_one(id);
        let mut shard = self.lock(self.shard_of(hash));
        let Some(i) = self.find_live(&mut shard, hash, id, now) else {
            return false;
        };
        let freed = shard.remove(i, &self.hasher);
        self.size.fetch_sub(freed, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    /// The wall clock's seconds at `T0` in these tests.
    const UNIX: u64 = 1_000_000;
    /// `now_ms` when a test starts.
    const T0: u64 = 1_000_000;
    const MIN: u64 = 60_000;

    fn id(n: usize) -> SessionId {
        // canonical: the last of 22 characters carries 2 bits (A: none)
        let text = format!("{n:A>21}A");
        SessionId::parse(text.as_bytes()).unwrap()
    }

    fn store(max_size: u64, shards: usize) -> MemoryStore {
        let config = crate::config::MemoryStore {
            max_size,
            secret: None,
        };
        MemoryStore::with_shards(&config, Arc::new(Stats::default()), shards)
    }

    /// A session's timeouts: 30 min idle, 5 min while new, `hours` in all.
    fn ttl(hours: u64) -> Ttl {
        Ttl {
            idle: Duration::from_secs(1800),
            first_idle: Duration::from_secs(300),
            until: UNIX + hours * 3600,
        }
    }

    /// A value that weighs `weigh(len)`, and is `n`'s.
    fn value(n: usize, len: usize) -> Bytes {
        let mut v = format!("{n}:").into_bytes();
        v.resize(len.max(v.len()), b'.');
        Bytes::from(v)
    }

    impl MemoryStore {
        fn new_at(&self, n: usize, len: usize, now: u64) -> bool {
            self.put_at(&id(n), value(n, len), ttl(24), Put::New, now, UNIX)
        }

        /// A session's segment, with no lookup (whatever its expiry).
        fn segment(&self, id: &SessionId) -> Option<Segment> {
            let hash = self.hasher.hash_one(id);
            let shard = self.lock(self.shard_of(hash));
            let i = shard.find(hash, id)?;
            Some(shard.node(i).segment)
        }

        fn holds(&self, n: usize) -> bool {
            self.segment(&id(n)).is_some()
        }

        fn evictions(&self) -> u64 {
            self.stats.evicted.load(Ordering::Relaxed)
        }

        /// Walks every shard: each list's links both ways, the table, the
        /// free slots; the sessions held, after checking that the bytes
        /// counted are theirs.
        fn consistent(&self) -> Vec<(SessionId, Bytes, Segment)> {
            let mut held = Vec::new();
            let mut bytes = 0;
            for s in 0..self.shards.len() {
                let shard = self.lock(s);
                let mut listed = 0;
                for segment in [Segment::Probation, Segment::Protected] {
                    let (mut i, mut prev) = (shard.lists[segment as usize].mru, NIL);
                    while i != NIL {
                        let node = shard.node(i);
                        assert_eq!(node.prev, prev, "a list's back link");
                        assert_eq!(node.segment, segment);
                        assert_eq!(shard.find(self.hasher.hash_one(node.id), &node.id), Some(i));
                        assert_eq!(self.shard_of(self.hasher.hash_one(node.id)), s);
                        let entry = node.entry.as_ref().expect("a listed slot is taken");
                        assert!(!entry.gone.load(Ordering::Relaxed), "listed, yet gone");
                        bytes += u64::from(node.weight);
                        held.push((node.id, entry.value.clone(), segment));
                        listed += 1;
                        (prev, i) = (i, node.next);
                    }
                    assert_eq!(shard.lists[segment as usize].lru, prev, "a list's end");
                }
                assert_eq!(shard.table.len(), listed, "table and lists");
                let free = shard.nodes.iter().filter(|n| n.entry.is_none()).count();
                assert_eq!(free + listed, shard.nodes.len(), "slots free or listed");
            }
            assert_eq!(self.size.load(Ordering::Relaxed), bytes, "bytes counted");
            held
        }
    }

    /// Holds exactly `n` sessions of `len`-byte values.
    fn room_for(n: u64, len: usize) -> u64 {
        n * u64::from(weigh(len))
    }

    #[test]
    fn a_flood_of_sessions_seen_once_evicts_none_seen_twice() {
        for shards in [1, SHARDS] {
            let store = store(room_for(20, 200), shards);
            // five users, each back once (a lookup)
            for user in 0..5 {
                assert!(store.new_at(user, 200, T0));
                assert!(store.load_at(&id(user), T0 + 10).is_some());
            }
            // 1000 sessions nobody comes back for
            for anon in 100..1100 {
                assert!(store.new_at(anon, 200, T0 + 20));
                assert!(store.holds(anon), "a session just made is kept");
            }
            for user in 0..5 {
                assert_eq!(
                    store.segment(&id(user)),
                    Some(Segment::Protected),
                    "user {user}"
                );
            }
            let held = store.consistent();
            assert_eq!(held.len(), 20, "{shards} shards");
            assert_eq!(store.evictions(), 5 + 1000 - 20);
            // the newest of the flood are the ones kept (one shard: exactly)
            if shards == 1 {
                assert!((1085..1100).all(|anon| store.holds(anon)));
            }
        }
    }

    #[test]
    fn sessions_in_use_go_least_recently_used_first_once_none_is_new() {
        let store = store(room_for(3, 100), 1);
        for user in 0..3 {
            assert!(store.new_at(user, 100, T0));
            assert!(store.load_at(&id(user), T0 + 1).is_some());
        }
        // user 0 used again, later: 1 is now the least recently used
        assert!(store.load_at(&id(0), T0 + 5000).is_some());
        assert!(store.new_at(3, 100, T0 + 6000));
        assert!(!store.holds(1), "the least recently used session in use");
        assert!(store.holds(0) && store.holds(2) && store.holds(3));
        assert_eq!(store.evictions(), 1);
        // a new session is kept over one in use, while it is the only one
        // new: the next new one evicts it, not a user
        assert!(store.new_at(4, 100, T0 + 7000));
        assert!(!store.holds(3) && store.holds(0) && store.holds(2));
        store.consistent();
    }

    #[test]
    fn the_first_lookup_promotes_a_get_and_a_change_do_not() {
        let store = store(1 << 20, 4);
        let (a, b) = (id(1), id(2));
        assert!(store.new_at(1, 10, T0));
        assert!(store.new_at(2, 10, T0));
        assert_eq!(store.get_at(&a, T0 + 1), Some(value(1, 10)));
        assert_eq!(
            store.segment(&a),
            Some(Segment::Probation),
            "a get is no use"
        );
        let put = Put::Replace(value(1, 10));
        assert!(store.put_at(&a, value(11, 10), ttl(24), put, T0 + 2, UNIX));
        assert_eq!(
            store.segment(&a),
            Some(Segment::Probation),
            "a change keeps its segment"
        );
        assert!(store.load_at(&b, T0 + 3).is_some());
        assert_eq!(store.segment(&b), Some(Segment::Protected));
        let put = Put::Replace(value(2, 10));
        assert!(store.put_at(&b, value(12, 10), ttl(24), put, T0 + 4, UNIX));
        assert_eq!(
            store.segment(&b),
            Some(Segment::Protected),
            "a change keeps its segment"
        );
        store.consistent();
    }

    #[test]
    fn a_session_seen_once_lives_first_idle_then_idle_and_never_past_until() {
        let store = store(1 << 20, 4);
        let (once, twice, ending) = (id(1), id(2), id(3));
        assert!(store.new_at(1, 10, T0));
        assert!(store.new_at(2, 10, T0));
        // the absolute timeout, one hour from now, ends before the idle one
        let short = Ttl {
            until: UNIX + 3600,
            ..ttl(24)
        };
        assert!(store.put_at(&ending, value(3, 10), short, Put::New, T0, UNIX));

        // a get is no use: first_idle still counts from the write
        assert!(store.get_at(&once, T0 + 5 * MIN - 1).is_some());
        assert!(store.get_at(&once, T0 + 5 * MIN).is_none(), "new: 5 min");
        assert!(store.load_at(&once, T0 + 5 * MIN).is_none());

        // the first lookup, at 4 min: idle (30 min) from then on
        assert!(store.load_at(&twice, T0 + 4 * MIN).is_some());
        assert!(store.get_at(&twice, T0 + 34 * MIN - 1).is_some());
        assert!(
            store.get_at(&twice, T0 + 34 * MIN).is_none(),
            "in use: 30 min"
        );

        // looked up every 20 min: alive at 59 min, gone at the hour
        for at in [4, 24, 44] {
            assert!(store.load_at(&ending, T0 + at * MIN).is_some());
        }
        assert!(store.load_at(&ending, T0 + 60 * MIN - 1).is_some());
        assert!(
            store.load_at(&ending, T0 + 60 * MIN).is_none(),
            "absolute timeout"
        );
        store.consistent();
    }

    #[test]
    fn a_read_slides_the_idle_timeout_unless_it_slid_a_moment_ago() {
        let store = store(1 << 20, 1);
        let a = id(1);
        assert!(store.new_at(1, 10, T0));
        assert!(store.load_at(&a, T0).is_some());
        // slid half a second ago: left where it was (expiry at T0 + 30 min)
        assert!(store.load_at(&a, T0 + 500).is_some());
        assert!(store.get_at(&a, T0 + 30 * MIN).is_none());

        assert!(store.new_at(2, 10, T0));
        let b = id(2);
        assert!(store.load_at(&b, T0).is_some());
        // a second later: slid to the whole idle timeout again
        assert!(store.load_at(&b, T0 + 1000).is_some());
        assert!(store.get_at(&b, T0 + 30 * MIN).is_some());
        assert!(store.get_at(&b, T0 + 30 * MIN + 1000).is_none());

        // a one-second idle timeout slides after a sixteenth of it
        let c = id(3);
        let short = Ttl {
            idle: Duration::from_secs(1),
            first_idle: Duration::from_secs(1),
            until: UNIX + 3600,
        };
        assert!(store.put_at(&c, value(3, 10), short, Put::New, T0, UNIX));
        assert!(store.load_at(&c, T0).is_some());
        assert!(store.load_at(&c, T0 + 61).is_some(), "not slid");
        assert!(store.get_at(&c, T0 + 1000).is_none());
        assert!(store.new_at(4, 10, T0));
        let d = id(4);
        let put = |at| {
            store.put_at(
                &d,
                value(4, 10),
                short,
                Put::Replace(value(4, 10)),
                at,
                UNIX,
            )
        };
        assert!(put(T0));
        assert!(store.load_at(&d, T0).is_some());
        assert!(store.load_at(&d, T0 + 62).is_some(), "slid");
        assert!(store.get_at(&d, T0 + 1061).is_some());
        store.consistent();
    }

    #[test]
    fn a_write_lands_only_where_its_condition_holds() {
        let store = store(1 << 20, 4);
        let a = id(1);
        let replace = |from: usize, to: usize, at| {
            let put = Put::Replace(value(from, 10));
            store.put_at(&a, value(to, 10), ttl(24), put, at, UNIX)
        };
        assert!(!replace(0, 1, T0), "no session to change");
        assert!(store.new_at(1, 10, T0));
        assert!(!store.new_at(1, 10, T0), "a new session only where none is");
        assert!(!replace(0, 2, T0), "changed from another value");
        assert!(replace(1, 2, T0));
        assert_eq!(store.get_at(&a, T0), Some(value(2, 10)));
        assert!(!replace(1, 3, T0), "changed from the value it had");
        assert!(replace(2, 3, T0));
        assert!(store.delete_at(&a, T0));
        assert!(!store.delete_at(&a, T0));
        assert!(!replace(3, 4, T0), "deleted");
        // expired: no session, to change, delete or make anew
        assert!(store.new_at(1, 10, T0));
        assert!(!replace(1, 2, T0 + 5 * MIN), "expired");
        assert!(store.new_at(1, 10, T0 + 6 * MIN));
        assert!(!store.delete_at(&a, T0 + 12 * MIN), "expired");
        assert!(store.consistent().is_empty());
    }

    #[test]
    fn a_kept_entry_is_read_again_only_while_it_is_the_session() {
        let store = store(room_for(2, 10), 1);
        let (a, b) = (id(1), id(2));
        assert!(store.new_at(1, 10, T0));
        let first = store.load_at(&a, T0).unwrap();
        assert!(MemoryStore::still(&first, T0), "found a moment ago");
        assert!(
            !MemoryStore::still(&first, T0 + 1000),
            "a second after the lookup"
        );

        // replaced: gone at once
        let second = store.load_at(&a, T0 + 1000).unwrap();
        let stale = Put::Replace(value(0, 10));
        assert!(!store.put_at(&a, value(2, 10), ttl(24), stale, T0 + 1000, UNIX));
        assert!(
            MemoryStore::still(&second, T0 + 1000),
            "a write that did not land"
        );
        let put = Put::Replace(value(1, 10));
        assert!(store.put_at(&a, value(2, 10), ttl(24), put, T0 + 1000, UNIX));
        assert!(!MemoryStore::still(&second, T0 + 1000));
        // deleted (revoked, logged out): gone at once
        let third = store.load_at(&a, T0 + 1000).unwrap();
        assert_eq!(third.value, value(2, 10));
        assert!(store.delete_at(&a, T0 + 1000));
        assert!(!MemoryStore::still(&third, T0 + 1000));
        // evicted (two sessions in use, the least recently used of them
        // for a new one): gone at once
        assert!(store.new_at(2, 10, T0));
        let kept = store.load_at(&b, T0).unwrap();
        assert!(store.new_at(3, 10, T0));
        assert!(store.load_at(&id(3), T0 + 1).is_some());
        assert!(store.new_at(4, 10, T0 + 2));
        assert!(!store.holds(2));
        assert!(!MemoryStore::still(&kept, T0 + 2));
        // expired, found so by a lookup: gone at once
        let ending = store.load_at(&id(3), T0 + 2).unwrap();
        assert!(MemoryStore::still(&ending, T0 + 2));
        assert!(store.load_at(&id(3), T0 + 1 + 30 * MIN).is_none());
        assert!(!MemoryStore::still(&ending, T0 + 2));
    }

    #[test]
    fn expired_sessions_make_room_uncounted_and_new_ones_sweep_them() {
        let store = store(room_for(10, 50), 1);
        for n in 0..10 {
            assert!(store.new_at(n, 50, T0));
        }
        // all ten expired (5 min, never looked up): the next ten replace
        // them with no eviction
        for n in 10..20 {
            assert!(store.new_at(n, 50, T0 + 5 * MIN));
        }
        assert_eq!(store.evictions(), 0);
        assert_eq!(store.consistent().len(), 10);
        // in a larger store, each new session drops a few expired ones
        let store = self::store(1 << 20, 1);
        for n in 0..100 {
            assert!(store.new_at(n, 50, T0));
        }
        for n in 100..130 {
            assert!(store.new_at(n, 50, T0 + 5 * MIN));
        }
        assert_eq!(store.consistent().len(), 30, "the 100 expired, swept");
        assert_eq!(store.evictions(), 0);
    }

    #[test]
    fn an_absolute_timeout_ending_first_is_swept_too() {
        let store = store(1 << 20, 1);
        let short = Ttl {
            until: UNIX + 60,
            ..ttl(24)
        };
        // looked up: in protected, its idle timeout 30 min away, its
        // absolute one a minute away, behind sessions whose idle ends first
        assert!(store.put_at(&id(0), value(0, 10), short, Put::New, T0, UNIX));
        assert!(store.load_at(&id(0), T0).is_some());
        for n in 1..20 {
            assert!(store.new_at(n, 10, T0 + 1000));
            assert!(store.load_at(&id(n), T0 + 1000).is_some());
        }
        // used again: at the lists' most recently used end
        assert!(store.load_at(&id(0), T0 + 2000).is_some());
        for n in 20..40 {
            assert!(store.new_at(n, 10, T0 + 2 * MIN));
        }
        assert!(!store.holds(0), "swept by the cursor");
        assert_eq!(store.consistent().len(), 39);
    }

    #[test]
    fn a_session_larger_than_the_store_is_evicted_at_once() {
        let store = store(room_for(1, 100), 4);
        assert!(store.new_at(1, 50, T0));
        assert!(store.new_at(2, 200, T0), "written");
        assert!(
            !store.holds(2) && !store.holds(1),
            "and evicted, after the others"
        );
        assert_eq!(store.evictions(), 2);
        assert!(store.consistent().is_empty());
    }

    /// What a session is in the model: the store's rules, written plainly,
    /// and its place in its segment's order.
    #[derive(Debug, Clone)]
    struct Model {
        value: Bytes,
        segment: Segment,
        used: u64,
        until: u64,
        rank: u64,
    }

    /// The model's timeouts: short, so that a run sees sessions expire.
    const IDLE: u64 = 2000;
    const FIRST_IDLE: u64 = 700;

    impl Model {
        fn expires(&self) -> u64 {
            let idle = match self.segment {
                Segment::Probation => FIRST_IDLE,
                Segment::Protected => IDLE,
            };
            (self.used + idle).min(self.until)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Load(usize),
        Get(usize),
        New(usize, usize, u64),
        /// From the current value (or another), to a value of this length.
        Replace(usize, bool, usize),
        Delete(usize),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let n = 0..12usize;
        prop_oneof![
            3 => n.clone().prop_map(Op::Load),
            1 => n.clone().prop_map(Op::Get),
            3 => (n.clone(), 0..200usize, 1..4u64).prop_map(|(n, len, s)| Op::New(n, len, s)),
            2 => (n.clone(), any::<bool>(), 0..200usize).prop_map(|(n, f, l)| Op::Replace(n, f, l)),
            1 => n.prop_map(Op::Delete),
            2 => prop_oneof![0..100u64, 100..1500u64].prop_map(Op::Wait),
        ]
    }

    /// Runs `ops` on a store and on the model; after each, the store holds
    /// a subset of what the model holds (what it lacks was expired, or
    /// evicted and counted), in the same segments, with the same values;
    /// an eviction took the least recently used session of probation (any
    /// shard's, when there are several), and one in protected only when no
    /// live session was left in probation; and the store is within its
    /// size.
    fn against_the_model(ops: &[Op], shards: usize) -> Result<(), TestCaseError> {
        let max_size = 1500;
        let store = store(max_size, shards);
        let mut model: HashMap<usize, Model> = HashMap::new();
        let (mut now, mut rank, mut made) = (T0, 0, 0);
        for op in ops {
            let live = |m: &HashMap<usize, Model>, n: &usize, now| {
                m.get(n).is_some_and(|e| now < e.expires())
            };
            let evicted_before = store.evictions();
            let mut written = None;
            match *op {
                Op::Load(n) => {
                    let found = store.load_at(&id(n), now).map(|e| e.value.clone());
                    let expected = live(&model, &n, now).then(|| {
                        let e = model.get_mut(&n).unwrap();
                        let slack = slack_ms(IDLE);
                        if e.segment == Segment::Probation || now - e.used >= slack {
                            (e.segment, e.used, e.rank) = (Segment::Protected, now, rank);
                            rank += 1;
                        }
                        e.value.clone()
                    });
                    prop_assert_eq!(found, expected, "{:?}", op);
                }
                Op::Get(n) => {
                    let expected = live(&model, &n, now).then(|| model[&n].value.clone());
                    prop_assert_eq!(store.get_at(&id(n), now), expected, "{:?}", op);
                }
                Op::New(n, len, seconds) => {
                    made += 1;
                    let v = value(made, len);
                    let t = Ttl {
                        idle: Duration::from_millis(IDLE),
                        first_idle: Duration::from_millis(FIRST_IDLE),
                        until: UNIX + seconds,
                    };
                    let done = store.put_at(&id(n), v.clone(), t, Put::New, now, UNIX);
                    let expected = !live(&model, &n, now);
                    prop_assert_eq!(done, expected, "{:?}", op);
                    if expected {
                        let until = now + seconds * 1000;
                        let segment = Segment::Probation;
                        model.insert(
                            n,
                            Model {
                                value: v,
                                segment,
                                used: now,
                                until,
                                rank,
                            },
                        );
                        rank += 1;
                        written = Some(n);
                    }
                }
                Op::Replace(n, fresh, len) => {
                    made += 1;
                    let v = value(made, len);
                    let from = match (fresh, model.get(&n)) {
                        (true, Some(e)) => e.value.clone(),
                        _ => value(usize::MAX, 1),
                    };
                    let t = Ttl {
                        idle: Duration::from_millis(IDLE),
                        first_idle: Duration::from_millis(FIRST_IDLE),
                        until: UNIX + 3,
                    };
                    let put = Put::Replace(from.clone());
                    let done = store.put_at(&id(n), v.clone(), t, put, now, UNIX);
                    let expected = live(&model, &n, now) && model[&n].value == from;
                    prop_assert_eq!(done, expected, "{:?}", op);
                    if expected {
                        let e = model.get_mut(&n).unwrap();
                        (e.value, e.used, e.until, e.rank) = (v, now, now + 3000, rank);
                        rank += 1;
                        written = Some(n);
                    }
                }
                Op::Delete(n) => {
                    let expected = live(&model, &n, now);
                    prop_assert_eq!(store.delete_at(&id(n), now), expected, "{:?}", op);
                    model.remove(&n);
                }
                Op::Wait(ms) => now += ms,
            }

            let held = store.consistent();
            prop_assert!(store.size.load(Ordering::Relaxed) <= max_size);
            if let Some(n) = written {
                let kept = held.iter().any(|(i, _, _)| *i == id(n));
                prop_assert!(kept, "{} just written, not kept", n);
            }
            let mut evicted = Vec::new();
            for (&n, e) in &model {
                match held.iter().find(|(i, _, _)| *i == id(n)) {
                    Some((_, v, segment)) => {
                        prop_assert_eq!(v, &e.value, "session {}", n);
                        prop_assert_eq!(*segment, e.segment, "session {}", n);
                    }
                    None if now >= e.expires() => {}
                    None => evicted.push((n, e.clone())),
                }
            }
            for (i, _, _) in &held {
                prop_assert!((0..12).any(|n| id(n) == *i), "a session nobody made");
                prop_assert!((0..12).any(|n| id(n) == *i && model.contains_key(&n)));
            }
            prop_assert_eq!(
                store.evictions() - evicted_before,
                evicted.len() as u64,
                "after {:?}: evicted {:?}",
                op,
                evicted
            );
            for (n, _) in &evicted {
                model.remove(n);
            }
            for (n, e) in &evicted {
                // what stayed live in the victim's segment (or, for one in
                // protected, in probation) but the session just written
                let stayed = |segment: Segment| {
                    model.iter().filter(move |&(&m, s)| {
                        s.segment == segment && now < s.expires() && Some(m) != written
                    })
                };
                if e.segment == Segment::Protected {
                    let new: Vec<_> = stayed(Segment::Probation).map(|(m, _)| *m).collect();
                    prop_assert!(new.is_empty(), "{} evicted in use, {:?} kept new", n, new);
                }
                if shards == 1 {
                    let newer = stayed(e.segment).all(|(_, s)| s.rank > e.rank);
                    prop_assert!(newer, "{} evicted before one used less recently", n);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn the_store_behaves_as_the_model(
            ops in proptest::collection::vec(op(), 1..120),
            shards in prop_oneof![Just(1usize), Just(4usize)],
        ) {
            against_the_model(&ops, shards)?;
        }
    }

    /// Workers flooding one store with new sessions evict none in use,
    /// whichever worker's write goes over `max_size` while another's is
    /// making room.
    #[test]
    fn a_flood_from_several_workers_evicts_no_session_in_use() {
        const THREADS: usize = 4;
        const FLOOD: usize = 25_000;
        let store = Arc::new(store(room_for(1000, 300), SHARDS));
        for user in 0..50 {
            assert!(store.new_at(user, 300, T0));
            assert!(store.load_at(&id(user), T0).is_some());
        }
        let workers: Vec<_> = (1..=THREADS)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for anon in t * FLOOD..(t + 1) * FLOOD {
                        assert!(store.new_at(anon, 300, T0 + 1));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        let logged_out: Vec<_> = (0..50).filter(|&user| !store.holds(user)).collect();
        assert!(logged_out.is_empty(), "users logged out: {logged_out:?}");
        let held = store.consistent().len() as u64;
        assert!(held <= 1000);
        assert_eq!(held + store.evictions(), (50 + THREADS * FLOOD) as u64);
    }

    /// Four threads making, reading, changing and deleting sessions of one
    /// small store: no deadlock, the store within its size, its bytes and
    /// lists consistent, and every session made accounted for (still there,
    /// deleted, or evicted and counted); an entry a thread holds is gone
    /// once another thread's change lands.
    #[test]
    fn workers_share_one_store() {
        const THREADS: usize = 4;
        const IDS: usize = 400;
        let max_size = room_for(60, 100);
        let store = Arc::new(store(max_size, SHARDS));
        let (done, finished) = std::sync::mpsc::channel();
        let mut workers = Vec::new();
        for t in 0..THREADS {
            let (store, done) = (store.clone(), done.clone());
            workers.push(std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t as u64);
                let (mut made, mut deleted) = (0u64, 0u64);
                let ttl = Ttl {
                    idle: Duration::from_secs(3600),
                    first_idle: Duration::from_secs(3600),
                    until: clock::unix_now() + 3600,
                };
                for _ in 0..40_000 {
                    let n = rng.usize(..IDS);
                    let a = id(n);
                    match rng.u8(..10) {
                        0..=3 => {
                            let v = value(n, rng.usize(..200));
                            made += u64::from(store.put(&a, v, ttl, Put::New));
                        }
                        4..=6 => {
                            let _ = store.load(&a);
                        }
                        7 | 8 => {
                            let Some(held) = store.load(&a) else { continue };
                            let put = Put::Replace(held.value.clone());
                            let v = value(n, rng.usize(..200));
                            if store.put(&a, v, ttl, put) {
                                assert!(!MemoryStore::still(&held, clock::now_ms()));
                            }
                        }
                        _ => deleted += u64::from(store.delete(&a)),
                    }
                }
                let _ = done.send((made, deleted));
            }));
        }
        drop(done);
        let (mut made, mut deleted) = (0, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        for _ in 0..THREADS {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match finished.recv_timeout(left) {
                Ok((m, d)) => (made, deleted) = (made + m, deleted + d),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("workers still busy after 2 minutes: a deadlock")
                }
                // a worker panicked: its panic, from join
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for worker in workers {
            worker.join().unwrap();
        }
        let held = store.consistent();
        assert!(store.size.load(Ordering::Relaxed) <= max_size);
        assert!(store.evictions() > 0, "the store was full");
        assert_eq!(held.len() as u64, made - deleted - store.evictions());
    }
}
