//! Latency histograms as Prometheus reads them: fixed buckets counted with
//! relaxed atomics, so that any thread observes without a lock and a scrape
//! reads them as they are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub struct Histogram<const N: usize> {
    /// Upper bounds in seconds, ascending.
    bounds: &'static [f64; N],
    /// Per bucket, not cumulative.
    buckets: [AtomicU64; N],
    /// Above the last bound.
    over: AtomicU64,
    sum_ns: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub fn new(bounds: &'static [f64; N]) -> Self {
        Histogram {
            bounds,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|&b| secs <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_ns
            .fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with +Inf last), as the
    /// encoder takes them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, c)| (bound, c.load(Ordering::Relaxed)))
            .chain([(f64::INFINITY, self.over.load(Ordering::Relaxed))])
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket() {
        static BOUNDS: [f64; 2] = [0.01, 0.1];
        let h = Histogram::new(&BOUNDS);
        h.observe(Duration::from_millis(10));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(1));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 1.06).abs() < 1e-9);
        assert_eq!(buckets, [(0.01, 1), (0.1, 1), (f64::INFINITY, 1)]);
    }
}
