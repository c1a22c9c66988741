//! `ip_hash`: the client's address picks its backend by weighted
//! rendezvous hashing (highest random weight).
//!
//! Why rendezvous rather than a ring of virtual nodes or Maglev: every
//! client ranks every backend by a hash of (client slot, backend identity),
//! weighted as `ln(u) / weight`, and goes to the top one. Removing a backend
//! moves exactly that backend's clients (each falls to its own second
//! choice); adding one takes from every other backend in proportion, about
//! `w / (W + w)` of the clients (a fifth when a fifth equal backend joins
//! four); and the shares match the weights to within sampling noise, where
//! a ring needs thousands of virtual nodes per backend to get within a few
//! per cent, and Maglev moves some clients of backends that stay.
//!
//! Ranking every backend per request would cost O(N), so the client's
//! address is first hashed to one of 65,536 slots and each slot's winner is
//! computed when the pool is built: a request costs one hash and one table
//! read. Only a client whose winner is unavailable pays the O(N) ranking.
//!
//! Hashes use fixed seeds and the backend's identity (its `id`, or its
//! address as written), never a per-process random state: every worker,
//! every restart and every instance with the same configuration places a
//! client on the same backend.
//!
//! A draining backend keeps the clients it served in the last hour (a
//! lossy per-pool table of recently seen clients, kept across reloads) and
//! gets no others.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Candidates, Outcome, Pick, Policy, Target};
use crate::clock;

const SLOT_BITS: u32 = 16;
const CLIENT_SEED: u64 = 0x5e55_10b1_1b00_0001;
const BACKEND_SEED: u64 = 0x5e55_10b1_1b00_0002;

/// How long a client stays pinned to a draining backend after its last
/// request.
pub const DRAIN_MEMORY_MINUTES: u32 = 60;
const RECENT_BITS: u32 = 18;

#[derive(Debug)]
pub struct IpHash {
    seeds: Box<[u64]>,
    weights: Box<[u32]>,
    equal_weights: bool,
    /// The winner of each slot.
    table: Box<[u16]>,
    recent: Arc<RecentClients>,
}

/// The hash of what identifies a client: its IPv4 address, or the /64 of
/// its IPv6 address (privacy addresses rotate within it).
pub fn client_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => xxh3_64_with_seed(&v4.octets(), CLIENT_SEED),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => xxh3_64_with_seed(&v4.octets(), CLIENT_SEED),
            None => xxh3_64_with_seed(&v6.octets()[..8], CLIENT_SEED),
        },
    }
}

/// splitmix64's finaliser: a bijective mix with good avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl IpHash {
    pub fn new(ids: &[&str], weights: &[u32], recent: Arc<RecentClients>) -> Self {
        let seeds: Box<[u64]> = ids
            .iter()
            .map(|id| xxh3_64_with_seed(id.as_bytes(), BACKEND_SEED))
            .collect();
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        let mut h = IpHash {
            seeds,
            weights: weights.into(),
            equal_weights,
            table: Box::new([]),
            recent,
        };
        h.table = (0..1u64 << SLOT_BITS)
            .map(|slot| h.best(slot, |_| true).unwrap_or(0) as u16)
            .collect();
        h
    }

    /// The backend ranked first for `slot` among those `allowed`.
    fn best(&self, slot: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let slot_mix = slot.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut best: Option<(usize, f64)> = None;
        for (i, seed) in self.seeds.iter().enumerate() {
            if !allowed(i) {
                continue;
            }
            let score = mix(seed ^ slot_mix);
            let key = if self.equal_weights {
                score as f64
            } else {
                // u in (0, 1]; ln(u)/w is largest (closest to 0) for the
                // winner, and a backend wins in proportion to its weight.
                let u = ((score >> 11) + 1) as f64 / (1u64 << 53) as f64;
                u.ln() / f64::from(self.weights[i])
            };
            if best.is_none_or(|(_, k)| key > k) {
                best = Some((i, key));
            }
        }
        best.map(|(i, _)| i)
    }

    /// The backend a client would get with every backend available.
    pub fn owner(&self, client: IpAddr) -> usize {
        self.table[slot_of(client_key(client))] as usize
    }
}

fn slot_of(key: u64) -> usize {
    (key >> (64 - SLOT_BITS)) as usize
}

impl Policy for IpHash {
    fn pick(&self, target: &Target, c: &Candidates<'_>) -> Option<Pick> {
        let key = client_key(target.client);
        let slot = slot_of(key);
        let owner = self.table[slot] as usize;
        let pinned_ok = c.pinnable(owner);
        if pinned_ok && (!c.backend(owner).drain || self.recent.seen(key)) {
            self.recent.remember(key);
            return Some(Pick {
                index: owner,
                outcome: Outcome::Hit,
            });
        }
        // A new client of a draining backend, or a client whose backend is
        // down: the next in its own ranking, so it comes back when its
        // backend does.
        let outcome = if pinned_ok {
            Outcome::New
        } else {
            Outcome::Redispatch
        };
        self.best(slot as u64, |i| c.usable(i))
            .map(|index| Pick { index, outcome })
    }
}

/// Clients seen recently, per pool: a lossy direct-mapped table of 16-bit
/// fingerprints and the minute of their last request.
#[derive(Debug)]
pub struct RecentClients {
    entries: Box<[AtomicU32]>,
}

impl Default for RecentClients {
    fn default() -> Self {
        RecentClients {
            entries: (0..1u32 << RECENT_BITS)
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }
}

impl RecentClients {
    fn slot_and_entry(key: u64, minute: u32) -> (usize, u32) {
        let slot = (key & ((1 << RECENT_BITS) - 1)) as usize;
        let fingerprint = ((key >> RECENT_BITS) as u32 & 0xffff) | 1;
        (slot, fingerprint << 16 | (minute & 0xffff))
    }

    fn minute() -> u32 {
        (clock::now_ms() / 60_000) as u32
    }

    pub fn remember(&self, key: u64) {
        let (slot, entry) = Self::slot_and_entry(key, Self::minute());
        if self.entries[slot].load(Ordering::Relaxed) != entry {
            self.entries[slot].store(entry, Ordering::Relaxed);
        }
    }

    pub fn seen(&self, key: u64) -> bool {
        let now = Self::minute();
        let (slot, expect) = Self::slot_and_entry(key, now);
        let entry = self.entries[slot].load(Ordering::Relaxed);
        entry >> 16 == expect >> 16 && (now.wrapping_sub(entry) & 0xffff) < DRAIN_MEMORY_MINUTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Tried;
    use crate::balance::test_util::pool_with_ids;
    use crate::config::PolicyKind;
    use std::net::Ipv4Addr;

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn placement(h: &IpHash, clients: &[IpAddr]) -> Vec<usize> {
        clients.iter().map(|&c| h.owner(c)).collect()
    }

    fn hash(ids: &[String], weights: &[u32]) -> IpHash {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        IpHash::new(&refs, weights, Arc::default())
    }

    fn random_clients(n: usize) -> Vec<IpAddr> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..n)
            .map(|_| IpAddr::V4(Ipv4Addr::from(rng.u32(..))))
            .collect()
    }

    #[test]
    fn shares_follow_weights_within_5_percent() {
        let clients = random_clients(100_000);
        for weights in [
            vec![1, 1, 1, 1],
            vec![1, 2, 3, 4],
            vec![5, 1, 1],
            vec![1; 7],
        ] {
            let h = hash(&ids(weights.len()), &weights);
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0usize; weights.len()];
            for b in placement(&h, &clients) {
                counts[b] += 1;
            }
            for (i, &w) in weights.iter().enumerate() {
                let want = clients.len() as f64 * f64::from(w) / f64::from(total);
                let off = (counts[i] as f64 - want).abs() / want;
                assert!(
                    off < 0.05,
                    "weights {weights:?}: backend {i} has {} clients, want {want:.0}",
                    counts[i]
                );
            }
        }
    }

    #[test]
    fn adding_a_fifth_backend_moves_about_a_fifth() {
        let clients = random_clients(100_000);
        let before = placement(&hash(&ids(4), &[1; 4]), &clients);
        let after = placement(&hash(&ids(5), &[1; 5]), &clients);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // every moved client went to the new backend
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || *b == 4));
        let share = moved as f64 / clients.len() as f64;
        assert!(share <= 0.25 && share > 0.15, "{share}");
    }

    #[test]
    fn removing_one_of_five_moves_only_its_clients() {
        let clients = random_clients(100_000);
        let five = ids(5);
        let before = placement(&hash(&five, &[1; 5]), &clients);
        let four: Vec<String> = five
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, s)| s.clone())
            .collect();
        let after = placement(&hash(&four, &[1; 4]), &clients);
        // map indices of the four back to the five
        let back = [0, 1, 3, 4];
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(*b, back[*a], "a client of a remaining backend moved");
            }
        }
    }

    #[test]
    fn down_backend_sends_its_clients_elsewhere_and_gets_them_back() {
        let p = pool_with_ids(PolicyKind::IpHash, &["a:1", "b:1", "c:1"]);
        let clients = random_clients(3_000);
        let target = |ip| Target {
            client: ip,
            pinned: None,
        };
        let first: Vec<usize> = clients
            .iter()
            .map(|&ip| p.select(&target(ip), &Tried::default()).unwrap().index)
            .collect();
        let mut tried = Tried::default();
        tried.insert(1);
        for (ip, &was) in clients.iter().zip(&first) {
            let pick = p.select(&target(*ip), &tried).unwrap();
            if was == 1 {
                assert_ne!(pick.index, 1);
                assert_eq!(pick.outcome, Outcome::Redispatch);
            } else {
                assert_eq!(pick.index, was, "a client of a healthy backend moved");
            }
        }
        for (ip, &was) in clients.iter().zip(&first) {
            assert_eq!(
                p.select(&target(*ip), &Tried::default()).unwrap().index,
                was
            );
        }
    }

    #[test]
    fn draining_backend_keeps_only_clients_it_has_seen() {
        let mut p = pool_with_ids(PolicyKind::IpHash, &["a:1", "b:1", "c:1"]);
        let h = hash(&["a:1".into(), "b:1".into(), "c:1".into()], &[1, 1, 1]);
        let clients = random_clients(600);
        let target = |ip| Target {
            client: ip,
            pinned: None,
        };
        let (old, new) = clients.split_at(300);
        for &ip in old {
            p.select(&target(ip), &Tried::default());
        }
        // what a reload with drain = true on backend 1 does to the pool
        p.backends[1].drain = true;
        let (mut kept, mut refused) = (0, 0);
        for &ip in old {
            let pick = p.select(&target(ip), &Tried::default()).unwrap();
            assert_eq!(pick.index, h.owner(ip), "a client was moved");
            kept += usize::from(pick.index == 1);
        }
        for &ip in new {
            let pick = p.select(&target(ip), &Tried::default()).unwrap();
            if h.owner(ip) == 1 {
                assert_ne!(
                    pick.index, 1,
                    "a new client was given to the draining backend"
                );
                assert_eq!(pick.outcome, Outcome::New);
                refused += 1;
            } else {
                assert_eq!(pick.index, h.owner(ip));
            }
        }
        assert!(kept > 50 && refused > 50, "{kept} {refused}");
    }

    /// Placement must never drift between versions: instances of different
    /// versions behind one load balancer would disagree.
    #[test]
    fn golden_trace() {
        let h = hash(&ids(3), &[1, 1, 1]);
        let clients: Vec<IpAddr> = (1..=16)
            .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
            .collect();
        let got = placement(&h, &clients);
        assert_eq!(got, GOLDEN_EQUAL, "equal weights");
        let h = hash(&ids(3), &[1, 2, 3]);
        assert_eq!(placement(&h, &clients), GOLDEN_WEIGHTED, "weights 1:2:3");
        let v6: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let v6_same_64: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(h.owner(v6), h.owner(v6_same_64));
    }

    const GOLDEN_EQUAL: [usize; 16] = [2, 2, 1, 2, 0, 0, 2, 2, 0, 2, 0, 0, 0, 0, 2, 2];
    const GOLDEN_WEIGHTED: [usize; 16] = [2, 2, 1, 2, 0, 0, 2, 2, 1, 2, 2, 2, 2, 0, 2, 2];
}
