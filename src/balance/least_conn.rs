//! Least connections: the usable backend with the fewest requests in
//! flight relative to its weight; ties go round robin so that an idle pool
//! still spreads its load.
//!
//! Up to `EXACT_UP_TO` backends every candidate is compared, as nginx does.
//! A larger pool would make that scan the most expensive part of a request
//! (about 6 µs at 1,000 backends), so there the choice is the better of two
//! backends drawn at random with their weights (power of two choices, as
//! Envoy's least_request): its cost does not grow with the pool, and it
//! keeps the load within a small constant of the exact choice.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Pick, Policy, Target};

/// Pools up to this size are scanned exactly.
pub const EXACT_UP_TO: usize = 32;

#[derive(Debug)]
pub struct LeastConn {
    next: AtomicUsize,
    /// Cumulative weights, for weighted random draws in large pools.
    cumulative: Box<[u64]>,
}

impl LeastConn {
    pub fn new(weights: &[u32]) -> Self {
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        LeastConn {
            next: AtomicUsize::new(0),
            cumulative,
        }
    }

    /// A backend drawn at random in proportion to its weight.
    fn draw(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1);
        let x = fastrand::u64(..total);
        self.cumulative.partition_point(|&c| c <= x)
    }
}

/// `a` carries less load than `b` for their weights.
fn lighter(c: &Candidates<'_>, a: usize, b: usize) -> bool {
    let (ba, bb) = (c.backend(a), c.backend(b));
    u64::from(ba.state.in_flight()) * u64::from(bb.weight)
        < u64::from(bb.state.in_flight()) * u64::from(ba.weight)
}

impl Policy for LeastConn {
    fn pick(&self, _target: &Target, c: &Candidates<'_>) -> Option<Pick> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        if n > EXACT_UP_TO {
            for _ in 0..8 {
                let (a, b) = (self.draw(), self.draw());
                match (c.usable(a), c.usable(b)) {
                    (true, true) => {
                        return Some(Pick::balanced(if lighter(c, b, a) { b } else { a }));
                    }
                    (true, false) => return Some(Pick::balanced(a)),
                    (false, true) => return Some(Pick::balanced(b)),
                    (false, false) => continue,
                }
            }
            // most of the pool is unusable: fall back to the scan
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<usize> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if c.usable(i) && best.is_none_or(|b| lighter(c, i, b)) {
                best = Some(i);
            }
        }
        best.map(Pick::balanced)
    }
}

#[cfg(test)]
mod tests {
    use crate::balance::Tried;
    use crate::balance::test_util::{pool, target};
    use crate::config::PolicyKind;

    #[test]
    fn prefers_fewest_in_flight() {
        let p = pool(PolicyKind::LeastConn, &[1, 1, 1]);
        p.backends[0].state.begin_request();
        p.backends[0].state.begin_request();
        p.backends[2].state.begin_request();
        for _ in 0..10 {
            assert_eq!(
                p.select(&target(), &Tried::default()).map(|p| p.index),
                Some(1)
            );
        }
    }

    #[test]
    fn ties_rotate_and_weights_count() {
        let p = pool(PolicyKind::LeastConn, &[1, 1, 1]);
        let picks: Vec<_> = (0..6)
            .map(|_| p.select(&target(), &Tried::default()).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);

        let p = pool(PolicyKind::LeastConn, &[1, 3]);
        p.backends[0].state.begin_request();
        p.backends[1].state.begin_request();
        p.backends[1].state.begin_request();
        // 1/1 > 2/3: the heavier backend still has room
        assert_eq!(
            p.select(&target(), &Tried::default()).map(|p| p.index),
            Some(1)
        );
    }

    #[test]
    fn large_pools_avoid_loaded_backends_and_skip_unusable_ones() {
        let p = pool(PolicyKind::LeastConn, &[1; 200]);
        // half the pool is busy
        for b in p.backends.iter().step_by(2) {
            for _ in 0..10 {
                b.state.begin_request();
            }
        }
        let mut tried = Tried::default();
        tried.insert(1);
        let mut on_busy = 0;
        for _ in 0..10_000 {
            let i = p.select(&target(), &tried).unwrap().index;
            assert_ne!(i, 1);
            on_busy += usize::from(i.is_multiple_of(2));
        }
        // two random draws both land on busy backends a quarter of the time
        assert!(on_busy < 3_000, "{on_busy}");
    }
}
