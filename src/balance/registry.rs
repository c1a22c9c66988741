//! State that belongs to a backend rather than to a configuration: health,
//! requests in flight, its slot in the per-worker connection pools.
//!
//! A reload builds a new snapshot but asks the registry for each backend's
//! state by its identity (the address as written), so a backend that stays
//! in the file keeps its health, counters and pooled connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock;

/// Live state of one backend, shared by every snapshot and worker.
#[derive(Debug)]
pub struct BackendState {
    /// Dense and stable for the life of the process: indexes the
    /// per-worker upstream connection pools.
    pub id: usize,
    pub name: Arc<str>,
    in_flight: AtomicU32,
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    /// 0 when the backend has never been marked down.
    down_until_ms: AtomicU64,
}

impl BackendState {
    fn new(id: usize, name: &str) -> Self {
        BackendState {
            id,
            name: name.into(),
            in_flight: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
        }
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

    /// Up unless a run of failures marked it down and the penalty has not
    /// yet run out. Reads the clock only for a backend that has failed.
    pub fn is_up(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || clock::now_ms() >= until
    }

    /// Passive health, as nginx's `max_fails`/`fail_timeout`: `max_fails`
    /// failures within `fail_timeout` take the backend out for
    /// `fail_timeout`. Returns true when this failure took it down.
    pub fn record_failure(&self, max_fails: u32, fail_timeout: Duration) -> bool {
        if max_fails == 0 {
            return false;
        }
        let now = clock::now_ms();
        let window = fail_timeout.as_millis() as u64;
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

/// Backend states by identity; consulted only while building a snapshot.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<HashMap<String, Arc<BackendState>>>,
}

impl Registry {
    /// The state for `name`, created on first sight.
    pub fn get(&self, name: &str) -> Arc<BackendState> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let next_id = map.len();
        map.entry(name.to_string())
            .or_insert_with(|| Arc::new(BackendState::new(next_id, name)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_kept() {
        let r = Registry::default();
        let a = r.get("127.0.0.1:1");
        let b = r.get("127.0.0.1:2");
        assert_ne!(a.id, b.id);
        assert!(Arc::ptr_eq(&a, &r.get("127.0.0.1:1")));
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
    }
}
