//! The session counters: process-wide, kept across reloads (and across a
//! reload that changes the store), read by the admin listener.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::histogram::Histogram;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Load,
    Get,
    Put,
    Delete,
    Ping,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Load, Op::Get, Op::Put, Op::Delete, Op::Ping];

    pub fn name(self) -> &'static str {
        match self {
            Op::Load => "load",
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Ping => "ping",
        }
    }
}

/// `ok`: done (found, written, deleted); `miss`: no such session, or a
/// write whose condition did not hold; `error`: the store failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    Ok,
    Miss,
    Error,
}

impl OpResult {
    pub const ALL: [OpResult; 3] = [OpResult::Ok, OpResult::Miss, OpResult::Error];

    pub fn name(self) -> &'static str {
        match self {
            OpResult::Ok => "ok",
            OpResult::Miss => "miss",
            OpResult::Error => "error",
        }
    }
}

/// Upper bounds of the store latency histogram, in seconds: a local store
/// answers in tens of microseconds, a remote one in a millisecond or so.
pub static DURATION_BOUNDS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

#[derive(Debug)]
struct OpStats {
    results: [AtomicU64; 3],
    durations: Histogram<10>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            results: Default::default(),
            durations: Histogram::new(&DURATION_BOUNDS),
        }
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    ops: [OpStats; 5],
    up: AtomicBool,
    pub created: AtomicU64,
    pub deleted: AtomicU64,
    pub evicted: AtomicU64,
    /// Requests forwarded without their session (`fail_open`).
    pub failed_open: AtomicU64,
    /// Responses refused for a session over `max_blob_bytes`.
    pub too_large: AtomicU64,
    /// Changes that gave their client a new ticket.
    pub rotated: AtomicU64,
    /// Changes made with a replaced ticket, stored as a session of their
    /// own client's.
    pub forked: AtomicU64,
    /// New sessions not stored: the client was over
    /// `max_new_sessions_per_client`.
    pub limited: AtomicU64,
    /// A backend's `Set-Cookie` for a ticket cookie, dropped.
    pub ticket_cookies_dropped: AtomicU64,
    /// Logouts the store could not do at once (retried until it can).
    pub deletes_deferred: AtomicU64,
    /// Of those, the ones still being retried.
    pub deletes_pending: AtomicU64,
}

impl Stats {
    pub fn count_op(&self, op: Op, result: OpResult, took: Duration) {
        let s = &self.ops[op as usize];
        s.results[result as usize].fetch_add(1, Ordering::Relaxed);
        s.durations.observe(took);
    }

    pub fn op_count(&self, op: Op, result: OpResult) -> u64 {
        self.ops[op as usize].results[result as usize].load(Ordering::Relaxed)
    }

    /// (sum in seconds, count, per-bucket counts with +Inf last), as the
    /// encoder takes them.
    pub fn op_durations(&self, op: Op) -> (f64, u64, Vec<(f64, u64)>) {
        self.ops[op as usize].durations.snapshot()
    }

    pub fn set_up(&self, up: bool) {
        // read first: every worker sets it on every store call, and a
        // write would take the cache line from the others each time
        if self.up.load(Ordering::Relaxed) != up {
            self.up.store(up, Ordering::Relaxed);
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn count_eviction(&self) {
        self.evicted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_deleted(&self) {
        self.deleted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_failed_open(&self) {
        self.failed_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_rotated(&self) {
        self.rotated.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_forked(&self) {
        self.forked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_limited(&self) {
        self.limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_ticket_cookies_dropped(&self, n: u64) {
        self.ticket_cookies_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn count_delete_deferred(&self) {
        self.deletes_deferred.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pending_delete_began(&self) {
        self.deletes_pending.fetch_add(1, Ordering::Relaxed);
    }

    pub fn pending_delete_ended(&self) {
        self.deletes_pending.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn count_too_large(&self) {
        self.too_large.fetch_add(1, Ordering::Relaxed);
    }
}
