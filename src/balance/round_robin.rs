//! Smooth weighted round robin, nginx's algorithm.
//!
//! The schedule for one cycle (the sum of the reduced weights) is computed
//! once when the pool is built; a pick is then one atomic ticket and one
//! array read, whatever the number of backends. Weights 1:2:3 give the
//! cycle `c b a c b c`: exact proportions, interleaved rather than in runs.
//!
//! When the scheduled backend cannot take the request, another ticket is
//! drawn instead of stepping to the next slot, so the share of a backend
//! that is down spreads over the others in proportion to their weights.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidates, Pick, Policy, Target};

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        RoundRobin {
            schedule: swrr_schedule(weights).into(),
            next: AtomicUsize::new(0),
        }
    }
}

impl RoundRobin {
    /// The next usable backend in the schedule.
    pub fn next(&self, c: &Candidates<'_>) -> Option<usize> {
        let len = self.schedule.len();
        for _ in 0..len {
            let ticket = self.next.fetch_add(1, Ordering::Relaxed);
            let i = self.schedule[ticket % len] as usize;
            if c.usable(i) {
                return Some(i);
            }
        }
        c.first_usable()
    }
}

impl Policy for RoundRobin {
    fn pick(&self, _target: &Target, c: &Candidates<'_>) -> Option<Pick> {
        self.next(c).map(Pick::balanced)
    }
}

/// One cycle of nginx's smooth weighted round robin over `weights`, after
/// dividing them by their greatest common divisor.
pub fn swrr_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Tried;
    use crate::balance::test_util::{pool, target};
    use crate::config::PolicyKind;

    #[test]
    fn nginx_sequence() {
        assert_eq!(swrr_schedule(&[1, 2, 3]), vec![2, 1, 0, 2, 1, 2]);
        assert_eq!(swrr_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(swrr_schedule(&[10, 20, 30]), vec![2, 1, 0, 2, 1, 2]);
        assert_eq!(swrr_schedule(&[1, 1, 1]), vec![0, 1, 2]);
    }

    #[test]
    fn weights_give_exact_interleaved_shares() {
        let p = pool(PolicyKind::RoundRobin, &[1, 2, 3]);
        let picks: Vec<usize> = (0..600)
            .map(|_| p.select(&target(), &Tried::default()).unwrap().index)
            .collect();
        let count = |b| picks.iter().filter(|&&x| x == b).count();
        assert_eq!((count(0), count(1), count(2)), (100, 200, 300));
        // interleaved: the heaviest backend never gets more than 2 in a row
        let longest_run = picks
            .windows(3)
            .filter(|w| w.iter().all(|&x| x == 2))
            .count();
        assert_eq!(longest_run, 0);
    }

    #[test]
    fn tried_and_down_backends_are_skipped_fairly() {
        let p = pool(PolicyKind::RoundRobin, &[1, 1, 1]);
        let mut tried = Tried::default();
        tried.insert(1);
        let picks: Vec<usize> = (0..300)
            .map(|_| p.select(&target(), &tried).unwrap().index)
            .collect();
        assert!(!picks.contains(&1));
        let zeros = picks.iter().filter(|&&x| x == 0).count();
        assert!((140..=160).contains(&zeros), "{zeros}");
        tried.insert(0);
        tried.insert(2);
        assert_eq!(p.select(&target(), &tried), None);
    }
}
