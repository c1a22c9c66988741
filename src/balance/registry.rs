//! State that belongs to a backend rather than to a configuration: health,
//! requests in flight, its slots in the per-worker connection pools.
//!
//! A reload builds a new snapshot but asks the registry for each backend's
//! state by its identity (the address as written), so a backend that stays
//! in the file keeps its health, counters and pooled connections.
//!
//! A pooled connection is not kept by identity alone but by identity and
//! [`Link`], how it was opened: plain, or TLS verified one way as one name.
//! Two pools that reach one backend with other TLS settings, or a reload
//! that changes them, get another [`Slot`]; a connection one verification
//! accepted is never handed to a request that asks for another. Health and
//! counters stay with the identity: the backend is the same process,
//! however it is reached.
//!
//! The registry holds both weakly: a backend removed from the file is
//! forgotten once nothing refers to it (the snapshots its requests in
//! flight use; for a slot, its pooled connections too), and a slot's id
//! is given to the next new one. A churn of backends (a DNS name that
//! moves) thus leaves neither states nor per-worker pool slots behind.

use crate::histogram::Histogram;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::RecentClients;
use super::health::{CheckState, Transition};
use crate::clock;

/// Status codes counted per backend: 100 to 599.
const CODES: usize = 500;

fn status_counters() -> Box<[AtomicU64]> {
    (0..CODES).map(|_| AtomicU64::new(0)).collect()
}

/// Counts one response by status code.
fn count_status(counters: &[AtomicU64], status: u16) {
    if let Some(c) = (status as usize)
        .checked_sub(100)
        .and_then(|i| counters.get(i))
    {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Non-zero counts by status code.
fn status_counts(counters: &[AtomicU64]) -> Vec<(u16, u64)> {
    counters
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let n = c.load(Ordering::Relaxed);
            (n > 0).then_some((i as u16 + 100, n))
        })
        .collect()
}

/// Live state of one backend, shared by every snapshot and worker.
#[derive(Debug)]
pub struct BackendState {
    pub name: Arc<str>,
    in_flight: AtomicU32,
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    /// 0 when the backend has never been marked down.
    down_until_ms: AtomicU64,
    /// The active checks hold it out (pending or down): `checks.status`
    /// mirrored where the request path reads it with one load.
    checks_down: AtomicBool,
    /// Active health; locked only by the prober and the admin API.
    checks: Mutex<CheckState>,
    /// Active checks passed and failed, for the metrics.
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    /// Requests served while draining, by clients pinned to it.
    drain_pinned: AtomicU64,
    responses: Box<[AtomicU64]>,
}

/// Why a backend takes no requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Its active checks have failed, or not passed yet.
    Active,
    /// Failed requests (`max_fails` within `fail_timeout`).
    Passive,
}

impl DownReason {
    pub fn name(self) -> &'static str {
        match self {
            DownReason::Active => "active",
            DownReason::Passive => "passive",
        }
    }
}

impl BackendState {
    fn new(name: &str) -> Self {
        BackendState {
            name: name.into(),
            in_flight: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            checks_down: AtomicBool::new(false),
            checks: Mutex::default(),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            drain_pinned: AtomicU64::new(0),
            responses: status_counters(),
        }
    }

    pub fn count_response(&self, status: u16) {
        count_status(&self.responses, status);
    }

    pub fn responses(&self) -> Vec<(u16, u64)> {
        status_counts(&self.responses)
    }

    pub fn count_drain_pinned(&self) {
        self.drain_pinned.fetch_add(1, Ordering::Relaxed);
    }

    pub fn drain_pinned(&self) -> u64 {
        self.drain_pinned.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn begin_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Up unless its active checks hold it out, or a run of failed
    /// requests marked it down and the penalty has not yet run out. Two
    /// relaxed loads; reads the clock only for a backend that has failed.
    #[inline]
    pub fn is_up(&self) -> bool {
        !self.checks_down.load(Ordering::Relaxed) && !self.passive_down()
    }

    fn passive_down(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && clock::now_ms() < until
    }

    /// Why it takes no requests now; `None` when it is up. The checks
    /// come first when both keep it out: they decide when it is back.
    pub fn down_reason(&self) -> Option<DownReason> {
        if self.checks_down.load(Ordering::Relaxed) {
            Some(DownReason::Active)
        } else if self.passive_down() {
            Some(DownReason::Passive)
        } else {
            None
        }
    }

    fn checks(&self) -> MutexGuard<'_, CheckState> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the active checks say now.
    pub fn check_state(&self) -> CheckState {
        self.checks().clone()
    }

    /// Active checks start (see [`CheckState::start`]).
    pub fn start_checks(&self, serving: bool) {
        let mut checks = self.checks();
        checks.start(serving);
        self.checks_down
            .store(checks.status.holds_down(), Ordering::Relaxed);
    }

    /// Active checks stop: they no longer hold the backend out.
    pub fn stop_checks(&self) {
        let mut checks = self.checks();
        checks.stop();
        self.checks_down.store(false, Ordering::Relaxed);
    }

    /// One active check's result (`Ok` a pass), with the pool's `rise`
    /// and `fall`; the transition it makes. A backend the checks bring
    /// back is also cleared of a passive penalty: the checks are what
    /// decide, as HAProxy's checks bring back a server its `observe`
    /// took out.
    pub fn record_check(
        &self,
        result: Result<String, String>,
        rise: u32,
        fall: u32,
    ) -> Option<Transition> {
        let counter = match result {
            Ok(_) => &self.checks_passed,
            Err(_) => &self.checks_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut checks = self.checks();
        let transition = checks.record(result, rise, fall);
        if transition == Some(Transition::Up) {
            self.fails.store(0, Ordering::Relaxed);
            self.window_start_ms.store(0, Ordering::Relaxed);
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
        self.checks_down
            .store(checks.status.holds_down(), Ordering::Relaxed);
        transition
    }

    /// Active checks (passed, failed) so far.
    pub fn checks_run(&self) -> (u64, u64) {
        (
            self.checks_passed.load(Ordering::Relaxed),
            self.checks_failed.load(Ordering::Relaxed),
        )
    }

    /// Passive health, as nginx's `max_fails`/`fail_timeout`: `max_fails`
    /// failures within `fail_timeout` take the backend out for
    /// `fail_timeout`. Returns true when this failure took it down.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let now = clock::now_ms();
        let window = clock::millis(fail_timeout);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let fails = if start == 0 || now.saturating_sub(start) >= window {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= max_fails {
            self.fails.store(0, Ordering::Relaxed);
            self.window_start_ms.store(0, Ordering::Relaxed);
            self.down_until_ms.store(now + window, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// A backend's place in the per-worker connection pools, for one
/// [`Link`]: its pooled connections were all opened that way.
#[derive(Debug)]
pub struct Slot {
    /// Dense and stable for the life of this slot: indexes the per-worker
    /// upstream connection pools. Reused once the slot is dropped, which
    /// cannot happen while a pooled connection holds it.
    pub id: usize,
    /// The configuration in effect no longer reaches the backend this way
    /// (a reload removed it, or changed its TLS settings): its connections
    /// are not pooled again.
    retired: AtomicBool,
    /// Where the id goes back when this slot is dropped.
    free_ids: Arc<Mutex<Vec<usize>>>,
}

impl Slot {
    /// Whether the configuration in effect no longer has it (its requests
    /// in flight still finish).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.free_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.id);
    }
}

/// How connections to a backend are opened, as far as reusing one goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Link {
    Plain,
    /// TLS, the certificate verified as `name` (the SNI sent too).
    Tls {
        name: String,
        verify: Verify,
    },
}

/// What a TLS connection's certificate was verified against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verify {
    /// `insecure_skip_verify`: not at all.
    Nothing,
    SystemRoots,
    /// A pool's `ca`, by the SHA-256 of its certificates: the same file
    /// with other contents (a reload re-reads it) is another CA.
    Ca([u8; 32]),
}

impl Verify {
    pub fn of(tls: &crate::config::BackendTls) -> Verify {
        if tls.insecure_skip_verify {
            return Verify::Nothing;
        }
        let Some((_, certs)) = &tls.ca else {
            return Verify::SystemRoots;
        };
        let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for cert in certs {
            hash.update(&(cert.len() as u64).to_be_bytes());
            hash.update(cert);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(hash.finish().as_ref());
        Verify::Ca(digest)
    }
}

/// Upper bounds of the request duration histogram, in seconds.
pub static DURATION_BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of a pool that outlive reloads.
#[derive(Debug)]
pub struct PoolStats {
    /// hit, new, redispatch
    sticky: [AtomicU64; 3],
    /// Answers of the proxy's own, given before a backend was chosen.
    responses: Box<[AtomicU64]>,
    durations: Histogram<11>,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            sticky: Default::default(),
            responses: status_counters(),
            durations: Histogram::new(&DURATION_BOUNDS),
        }
    }
}

impl PoolStats {
    pub fn observe_duration(&self, d: Duration) {
        self.durations.observe(d);
    }

    /// (sum in seconds, count, per-bucket counts with +Inf last)
    pub fn durations(&self) -> (f64, u64, Vec<(f64, u64)>) {
        self.durations.snapshot()
    }

    pub fn count_sticky(&self, outcome: super::Outcome) {
        use super::Outcome::*;
        let i = match outcome {
            Balanced => return,
            Hit => 0,
            New => 1,
            Redispatch => 2,
        };
        self.sticky[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (hit, new, redispatch)
    pub fn sticky(&self) -> [u64; 3] {
        self.sticky.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    pub fn count_response(&self, status: u16) {
        count_status(&self.responses, status);
    }

    pub fn responses(&self) -> Vec<(u16, u64)> {
        status_counts(&self.responses)
    }
}

/// Backend states by identity, and pool state by name; consulted only
/// while building a snapshot.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Backends>,
    pools: Mutex<HashMap<String, Arc<PoolStats>>>,
    recent: Mutex<HashMap<String, Arc<RecentClients>>>,
}

impl Registry {
    pub fn pool_stats(&self, pool: &str) -> Arc<PoolStats> {
        let mut map = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(pool.to_string()).or_default().clone()
    }

    /// The clients an `ip_hash` pool saw recently (allocated on first use:
    /// 1 MiB per `ip_hash` pool).
    pub fn recent_clients(&self, pool: &str) -> Arc<RecentClients> {
        let mut map = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(pool.to_string()).or_default().clone()
    }

    /// The state for `name`: the one still alive, or else a new one.
    pub fn get(&self, name: &str) -> Arc<BackendState> {
        let mut backends = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = backends.by_name.get(name).and_then(Weak::upgrade) {
            return state;
        }
        let state = Arc::new(BackendState::new(name));
        backends
            .by_name
            .insert(name.to_string(), Arc::downgrade(&state));
        state
    }

    /// The pool slot for backend `name` reached by `link`: the one still
    /// alive, or else a new one. Called for every backend of a snapshot
    /// being built, so a slot a reload retires and the next one brings
    /// back is no longer retired.
    pub fn slot(&self, name: &str, link: Link) -> Arc<Slot> {
        let mut backends = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), link);
        if let Some(slot) = backends.slots.get(&key).and_then(Weak::upgrade) {
            slot.retired.store(false, Ordering::Relaxed);
            return slot;
        }
        let reused = backends
            .free_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let id = reused.unwrap_or_else(|| {
            backends.next_id += 1;
            backends.next_id - 1
        });
        let slot = Arc::new(Slot {
            id,
            retired: AtomicBool::new(false),
            free_ids: backends.free_ids.clone(),
        });
        backends.slots.insert(key, Arc::downgrade(&slot));
        slot
    }

    /// A new snapshot replaced `old`: its slots that `new` does not have
    /// (backends removed, or reached with other TLS settings) are retired,
    /// and states and slots nothing refers to any more are forgotten.
    pub fn retire(&self, old: &[super::Pool], new: &[super::Pool]) {
        let kept: std::collections::HashSet<usize> = new
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| b.slot.id))
            .collect();
        for b in old.iter().flat_map(|p| p.backends.iter()) {
            if !kept.contains(&b.slot.id) {
                b.slot.retired.store(true, Ordering::Relaxed);
            }
        }
        let mut backends = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        backends.by_name.retain(|_, state| state.strong_count() > 0);
        backends.slots.retain(|_, slot| slot.strong_count() > 0);
    }
}

/// Backend states by identity and pool slots by identity and link, held
/// weakly, and the slot ids in use.
#[derive(Debug, Default)]
struct Backends {
    by_name: HashMap<String, Weak<BackendState>>,
    slots: HashMap<(String, Link), Weak<Slot>>,
    /// One past the highest slot id given so far.
    next_id: usize,
    /// Ids of dropped slots, for the next new ones.
    free_ids: Arc<Mutex<Vec<usize>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_kept() {
        let r = Registry::default();
        let a = r.get("127.0.0.1:1");
        assert!(!Arc::ptr_eq(&a, &r.get("127.0.0.1:2")));
        assert!(Arc::ptr_eq(&a, &r.get("127.0.0.1:1")));
    }

    #[test]
    fn a_slot_is_one_identity_reached_one_way() {
        let r = Registry::default();
        let tls = |name: &str, verify: Verify| Link::Tls {
            name: name.into(),
            verify,
        };
        let plain = r.slot("b:1", Link::Plain);
        let system = r.slot("b:1", tls("b", Verify::SystemRoots));
        let skip = r.slot("b:1", tls("b", Verify::Nothing));
        let ca = r.slot("b:1", tls("b", Verify::Ca([1; 32])));
        let other_ca = r.slot("b:1", tls("b", Verify::Ca([2; 32])));
        let other_name = r.slot("b:1", tls("c", Verify::SystemRoots));
        let ids: std::collections::HashSet<usize> =
            [&plain, &system, &skip, &ca, &other_ca, &other_name]
                .iter()
                .map(|s| s.id)
                .collect();
        assert_eq!(ids.len(), 6, "each way of reaching it has its own slot");
        let again = r.slot("b:1", tls("b", Verify::Ca([1; 32])));
        assert!(Arc::ptr_eq(&ca, &again));
    }

    #[test]
    fn a_slot_nothing_refers_to_is_forgotten_and_its_id_reused() {
        let r = Registry::default();
        let a = r.slot("127.0.0.1:1", Link::Plain);
        let b = r.slot("127.0.0.1:2", Link::Plain);
        let (a_id, b_id) = (a.id, b.id);
        drop(a);
        // while b lives, its id is not given away
        let c = r.slot("127.0.0.1:3", Link::Plain);
        assert_eq!(c.id, a_id);
        assert_ne!(c.id, b_id);
        let again = r.slot("127.0.0.1:1", Link::Plain);
        assert_ne!(again.id, b_id);
        assert_ne!(again.id, c.id);
    }

    #[test]
    fn a_backend_nothing_refers_to_starts_anew() {
        let r = Registry::default();
        let a = r.get("127.0.0.1:1");
        a.count_response(200);
        drop(a);
        let again = r.get("127.0.0.1:1");
        assert_eq!(again.responses(), vec![], "a forgotten backend starts anew");
    }

    #[test]
    fn max_fails_within_window_marks_down() {
        let r = Registry::default();
        let s = r.get("x:1");
        assert!(s.is_up());
        assert!(!s.record_failure(3, Duration::from_secs(60)));
        assert!(!s.record_failure(3, Duration::from_secs(60)));
        assert!(s.is_up());
        assert!(s.record_failure(3, Duration::from_secs(60)));
        assert!(!s.is_up());
        assert!(!s.record_failure(0, Duration::from_secs(60)));
        assert_eq!(s.down_reason(), Some(DownReason::Passive));
    }

    #[test]
    fn checks_and_passive_health_both_hold_a_backend_down() {
        let r = Registry::default();
        let s = r.get("x:1");
        assert_eq!(s.down_reason(), None);
        // a new backend with checks waits for its first pass
        s.start_checks(false);
        assert!(!s.is_up());
        assert_eq!(s.down_reason(), Some(DownReason::Active));
        assert_eq!(
            s.record_check(Ok("status 200".into()), 2, 1),
            Some(Transition::Up)
        );
        assert!(s.is_up());
        // passive failures still count while the checks pass
        assert!(s.record_failure(1, Duration::from_secs(60)));
        assert!(!s.is_up());
        assert_eq!(s.down_reason(), Some(DownReason::Passive));
        assert_eq!(s.record_check(Ok("status 200".into()), 2, 1), None);
        assert!(!s.is_up());
        // down by checks too: they bring it back, passive penalty and all
        assert_eq!(
            s.record_check(Err("status 500".into()), 2, 1),
            Some(Transition::Down)
        );
        assert_eq!(s.down_reason(), Some(DownReason::Active));
        assert_eq!(s.record_check(Ok("status 204".into()), 2, 1), None);
        assert!(!s.is_up());
        assert_eq!(
            s.record_check(Ok("status 204".into()), 2, 1),
            Some(Transition::Up)
        );
        assert!(s.is_up());
        assert_eq!(s.checks_run(), (4, 1));
        assert_eq!(s.check_state().last.as_deref(), Some("status 204"));
        // checks turned off no longer hold it down
        s.record_check(Err("timeout after 1s".into()), 2, 1);
        assert!(!s.is_up());
        s.stop_checks();
        assert!(s.is_up());
    }
}
