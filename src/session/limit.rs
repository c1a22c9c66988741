//! `max_new_sessions_per_client`: how many new sessions one client address
//! may have stored per minute, so that one client's flood of cookieless
//! requests cannot fill the store with sessions nobody comes back to.
//!
//! A fixed table of counters, indexed by a keyed hash of the address: its
//! memory does not grow with the number of clients a flood pretends to be.
//! Two addresses that share a slot share a budget (a client is then held
//! back sooner, never later); IPv6 clients count by their /64, which one
//! host can spread its requests over.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;

/// Slots: at 16 bytes each, 64 KiB per pool that sets the limit.
const SLOTS: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The minute (unix seconds / 60) the count is for.
    minute: u64,
    count: u64,
}

#[derive(Debug)]
pub struct NewSessions {
    per_minute: u64,
    hasher: foldhash::fast::RandomState,
    slots: Box<[Mutex<Slot>]>,
}

impl NewSessions {
    pub fn new(per_minute: u32) -> NewSessions {
        NewSessions {
            per_minute: u64::from(per_minute),
            hasher: foldhash::fast::RandomState::default(),
            slots: (0..SLOTS).map(|_| Mutex::new(Slot::default())).collect(),
        }
    }

    /// Counts a new session for `client` at `now` (unix seconds); `false`
    /// when the client is over its budget for this minute (and then it is
    /// not counted).
    pub fn admit(&self, client: IpAddr, now: u64) -> bool {
        let mut h = self.hasher.build_hasher();
        match client {
            IpAddr::V4(v4) => h.write_u32(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => h.write_u32(u32::from(v4)),
                None => h.write_u64((u128::from(v6) >> 64) as u64),
            },
        }
        let slot = &self.slots[h.finish() as usize % SLOTS];
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        let minute = now / 60;
        if slot.minute != minute {
            *slot = Slot { minute, count: 0 };
        }
        if slot.count >= self.per_minute {
            return false;
        }
        slot.count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_budget_per_minute() {
        let limit = NewSessions::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t = 1_764_600_000; // a minute's start
        assert_eq!((0..5).filter(|_| limit.admit(a, t)).count(), 3);
        assert!(!limit.admit(a, t + 59));
        assert!(limit.admit(b, t + 59), "another client has its own");
        assert_eq!((0..5).filter(|_| limit.admit(a, t + 60)).count(), 3);
    }

    #[test]
    fn an_ipv6_host_counts_as_its_slash_64() {
        let limit = NewSessions::new(2);
        let t = 1_764_600_000; // a minute's start
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(limit.admit(a, t));
        assert!(limit.admit(b, t));
        assert!(!limit.admit(a, t));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(limit.admit(mapped, t));
        assert!(limit.admit(v4, t));
        assert!(!limit.admit(mapped, t), "one address, however written");
    }
}
