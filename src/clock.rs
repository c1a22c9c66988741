//! A process-wide millisecond clock for state shared between threads
//! (health penalties, connection deadlines), read through tokio so that
//! tests can pause and advance time.

use std::sync::OnceLock;

use tokio::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call, starting at 1 so that 0 can mean
/// "never" in atomics.
pub fn now_ms() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

/// The instant at which `now_ms()` reads `ms`.
pub fn instant_at(ms: u64) -> Instant {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch + std::time::Duration::from_millis(ms.saturating_sub(1))
}
