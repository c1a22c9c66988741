//! Where sessions live: one interface, an embedded memory store and Redis.
//!
//! Every operation names one key, so that Redis Sentinel (one master) and
//! Cluster (a key's slot) fit behind the same calls. The proxy's read path
//! costs one call, [`Store::load`], which also slides the idle timeout.
//!
//! Redis's futures are boxed where they are awaited: they are large (a
//! command, a timeout, a connection), and every request of a pool in
//! shared-store mode carries the store's futures in its own, so the memory
//! store would otherwise pay for Redis's size on each request.

mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use super::stats::{Op, OpResult, Stats};
use super::ticket::{SessionId, random};
use crate::config;
use aws_lc_rs::hmac;

/// How long a stored session lives from now: `idle` at most (`first_idle`
/// while it is new: written by [`Put::New`] and not loaded since), and
/// never past `until` (unix seconds, the absolute timeout).
#[derive(Debug, Clone, Copy)]
pub struct Ttl {
    pub idle: Duration,
    pub first_idle: Duration,
    pub until: u64,
}

impl Ttl {
    /// Seconds to keep the key from `now`, at least 1 (a store takes no
    /// 0): `first_idle` for a new session, `idle` for one in use.
    pub fn seconds(&self, now: u64, new: bool) -> u64 {
        let idle = if new { self.first_idle } else { self.idle };
        idle.as_secs().min(self.until.saturating_sub(now)).max(1)
    }
}

/// A write's condition. A new session is made only where none is; a change
/// lands only on the value it was made from, so that a session revoked
/// (or logged out) while a request was in flight stays gone, and two
/// requests that change one session at once never both think they won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    New,
    /// Only while the stored value is still this one.
    Replace(Bytes),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("no answer from the store within {0:?}")]
    Timeout(Duration),
}

/// The key of plain sessions' store keys: `secret`, or else a random one
/// (the store then lives no longer than the process: validation asks
/// Redis for a secret).
fn plain_keys(secret: Option<&str>) -> hmac::Key {
    match secret {
        Some(secret) => hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        // without a CSPRNG no ticket is minted either: the key then
        // guards no session
        None => hmac::Key::new(hmac::HMAC_SHA256, &random::<32>().unwrap_or([0; 32])),
    }
}

/// A session as the memory store holds it, kept by the client connection
/// that read it last, to read it again without a lookup while nothing
/// changed it and a lookup found it a moment ago (see `memory`).
#[derive(Debug, Clone)]
pub struct Held(Arc<memory::Entry>);

/// A session's stored value, and the entry it came from when the store
/// has one to keep.
pub type Found = (Bytes, Option<Held>);

#[derive(Debug)]
pub struct Store {
    kind: Kind,
    /// Keys the store keys of sessions kept plain: `store.secret`, or a
    /// random key for a store that lives no longer than the process.
    plain_keys: hmac::Key,
}

#[derive(Debug)]
enum Kind {
    Memory(MemoryStore),
    Redis(Box<RedisStore>),
}

impl Store {
    pub fn build(config: &config::Store, stats: Arc<Stats>) -> Result<Store, StoreError> {
        Ok(match config {
            config::Store::Memory(m) => Store::memory(m, stats),
            config::Store::Redis(r) => Store {
                kind: Kind::Redis(Box::new(RedisStore::new(r, stats)?)),
                plain_keys: plain_keys(r.secret.as_deref()),
            },
        })
    }

    /// The embedded store, which cannot fail to build.
    pub fn memory(config: &config::MemoryStore, stats: Arc<Stats>) -> Store {
        Store {
            kind: Kind::Memory(MemoryStore::new(config, stats)),
            plain_keys: plain_keys(config.secret.as_deref()),
        }
    }

    /// Where a session stored plain is kept: a keyed hash of its id, so
    /// that a reader of the store cannot tell which ticket a key is (nor
    /// revoke, or find in a log, a session by its key). A sealed session
    /// is kept under its id: its key opens nothing.
    pub fn plain_key(&self, id: &SessionId) -> SessionId {
        let tag = hmac::sign(&self.plain_keys, id.as_str().as_bytes());
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&tag.as_ref()[..16]);
        SessionId::from_bytes(&raw)
    }

    pub fn stats(&self) -> &Stats {
        match &self.kind {
            Kind::Memory(m) => &m.stats,
            Kind::Redis(r) => &r.stats,
        }
    }

    pub fn is_memory(&self) -> bool {
        matches!(self.kind, Kind::Memory(_))
    }

    /// Reads a session and restarts its idle timeout, in one round trip
    /// (`GETEX key EX idle`).
    pub async fn load(&self, id: &SessionId, idle: Duration) -> Result<Option<Bytes>, StoreError> {
        match &self.kind {
            Kind::Memory(m) => self.load_memory(m, id).map(|f| f.map(|(v, _)| v)),
            Kind::Redis(r) => {
                let started = std::time::Instant::now();
                let result = Box::pin(r.load(id, idle)).await;
                self.count(Op::Load, started, &result, |v| v.is_some());
                result
            }
        }
    }

    /// [`Store::load`], when the store answers at once: `None` for a store
    /// that needs the network. `held`, the entry the connection read last,
    /// is read again without a lookup while it is still the session; such
    /// a read is counted as a load that took no time (it takes an atomic
    /// load and a clock reading).
    pub fn load_now(
        &self,
        id: &SessionId,
        held: Option<&Held>,
    ) -> Option<Result<Option<Found>, StoreError>> {
        let Kind::Memory(m) = &self.kind else {
            return None;
        };
        if let Some(held) = held
            && MemoryStore::still(&held.0, crate::clock::now_ms())
        {
            m.stats.count_op(Op::Load, OpResult::Ok, Duration::ZERO);
            return Some(Ok(Some((held.0.value.clone(), Some(held.clone())))));
        }
        Some(self.load_memory(m, id))
    }

    fn load_memory(&self, m: &MemoryStore, id: &SessionId) -> Result<Option<Found>, StoreError> {
        let started = std::time::Instant::now();
        let result = Ok(m.load(id).map(|e| (e.value.clone(), Some(Held(e)))));
        self.count(Op::Load, started, &result, |v| v.is_some());
        result
    }

    /// Reads a session without touching its timeout: the current value a
    /// response's changes are applied to.
    pub async fn get(&self, id: &SessionId) -> Result<Option<Bytes>, StoreError> {
        let started = std::time::Instant::now();
        let result = match &self.kind {
            Kind::Memory(m) => Ok(m.get(id)),
            Kind::Redis(r) => Box::pin(r.get(id)).await,
        };
        self.count(Op::Get, started, &result, |v| v.is_some());
        result
    }

    /// Writes a whole session; `false` when `put`'s condition did not hold.
    pub async fn put(
        &self,
        id: &SessionId,
        value: Bytes,
        ttl: Ttl,
        put: Put,
    ) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        let result = match &self.kind {
            Kind::Memory(m) => Ok(m.put(id, value, ttl, put)),
            Kind::Redis(r) => Box::pin(r.put(id, value, ttl, put)).await,
        };
        self.count(Op::Put, started, &result, |done| *done);
        result
    }

    /// Removes a session; `false` when there was none.
    pub async fn delete(&self, id: &SessionId) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        let result = match &self.kind {
            Kind::Memory(m) => Ok(m.delete(id)),
            Kind::Redis(r) => Box::pin(r.delete(id)).await,
        };
        self.count(Op::Delete, started, &result, |found| *found);
        result
    }

    /// Whether the store answers now (`/readyz`, `sessionlb_session_store_up`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let result = match &self.kind {
            Kind::Memory(_) => Ok(()),
            Kind::Redis(r) => Box::pin(r.ping()).await,
        };
        self.count(Op::Ping, started, &result, |_| true);
        result
    }

    fn count<T>(
        &self,
        op: Op,
        started: std::time::Instant,
        result: &Result<T, StoreError>,
        found: impl Fn(&T) -> bool,
    ) {
        let stats = self.stats();
        let outcome = match result {
            Ok(v) if found(v) => OpResult::Ok,
            Ok(_) => OpResult::Miss,
            Err(_) => OpResult::Error,
        };
        stats.count_op(op, outcome, started.elapsed());
        stats.set_up(result.is_ok());
    }
}
