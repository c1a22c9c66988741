//! Least connections: the usable backend with the fewest requests in
//! flight relative to its weight; ties go round robin so that an idle pool
//! still spreads its load.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Pick, Policy, Target};

#[derive(Debug)]
pub struct LeastConn {
    next: AtomicUsize,
}

impl LeastConn {
    pub fn new(_weights: &[u32]) -> Self {
        LeastConn {
            next: AtomicUsize::new(0),
        }
    }
}

impl Policy for LeastConn {
    fn pick(&self, _target: &Target, c: &Candidates<'_>) -> Option<Pick> {
        let n = c.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !c.usable(i) {
                continue;
            }
            let b = c.backend(i);
            let load = u64::from(b.state.in_flight());
            let weight = u64::from(b.weight);
            // load/weight < best_load/best_weight, without division
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * weight) {
                best = Some((i, load, weight));
            }
        }
        best.map(|(i, _, _)| Pick::balanced(i))
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
}
