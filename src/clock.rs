//! A process-wide millisecond clock for state shared between threads
//! (health penalties, connection deadlines), read through tokio so that
//! tests can pause and advance time.
//!
//! The request path reads the clock about three times per request (start,
//! first byte of the next head, end); everything else is derived from those
//! readings with [`ms_of`].

use std::sync::OnceLock;

use tokio::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call, starting at 1 so that 0 can mean
/// "never" in atomics.
pub fn now_ms() -> u64 {
    ms_of(Instant::now())
}

/// `now_ms()` as it read at `at`.
pub fn ms_of(at: Instant) -> u64 {
    let d = at.saturating_duration_since(epoch());
    // no u128 division (Duration::as_millis): this runs per request
    d.as_secs() * 1000 + u64::from(d.subsec_millis()) + 1
}

/// A duration in the clock's unit.
pub const fn millis(d: std::time::Duration) -> u64 {
    d.as_millis() as u64
}

/// The instant at which `now_ms()` reads `ms`.
pub fn instant_at(ms: u64) -> Instant {
    epoch() + std::time::Duration::from_millis(ms.saturating_sub(1))
}

/// Seconds since the Unix epoch, on the wall clock: what session records
/// and cookie expiries are written in, since they outlive the process.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_and_instants_agree() {
        let now = Instant::now();
        let ms = ms_of(now);
        assert!(ms >= 1);
        let back = instant_at(ms);
        assert!(back <= now && now - back < std::time::Duration::from_millis(1));
        assert_eq!(ms_of(instant_at(ms + 250)), ms + 250);
    }
}
