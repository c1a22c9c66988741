//! Active health: what the checks (`[pools.X.health] check`) say about a
//! backend, as a state machine fed one check result at a time. It speaks
//! no HTTP: the prober (`crate::health`) runs the checks and reports each
//! result here.
//!
//! HAProxy's `check inter rise fall`: `fall` failures in a row take a
//! backend out, `rise` passes in a row bring it back. A backend whose
//! checks have not passed yet (new at start, new by a reload) gets no
//! traffic until its first check passes, as nginx's `health_check
//! mandatory`.

use std::collections::HashSet;
use std::sync::Arc;

use super::Pool;

/// What the checks say about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// No pool that lists it has checks: active health has no say.
    Off,
    /// Checked but not passed yet: held out until its first pass.
    Pending,
    Up,
    Down,
}

impl CheckStatus {
    pub fn name(self) -> &'static str {
        match self {
            CheckStatus::Off => "off",
            CheckStatus::Pending => "pending",
            CheckStatus::Up => "up",
            CheckStatus::Down => "down",
        }
    }

    /// Whether the checks keep the backend out of traffic.
    pub fn holds_down(self) -> bool {
        matches!(self, CheckStatus::Pending | CheckStatus::Down)
    }
}

/// A change of what the checks say, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// The active state of one backend: its status, the run of passes or
/// failures it is in, and the last result.
#[derive(Debug, Clone)]
pub struct CheckState {
    pub status: CheckStatus,
    /// Passes in a row (toward `rise` while down); a failure resets it.
    pub passes: u32,
    /// Failures in a row (toward `fall` while up); a pass resets it.
    pub fails: u32,
    /// The last check's result: `status 200`, `timeout after 1s`, ...
    pub last: Option<String>,
}

impl Default for CheckState {
    fn default() -> Self {
        CheckState {
            status: CheckStatus::Off,
            passes: 0,
            fails: 0,
            last: None,
        }
    }
}

impl CheckState {
    /// Checks start for this backend: one that already serves keeps
    /// serving (as HAProxy's servers start up) and goes down after `fall`
    /// failures; a new one waits for its first pass. No change when the
    /// checks are already on.
    pub fn start(&mut self, serving: bool) {
        if self.status == CheckStatus::Off {
            *self = CheckState {
                status: match serving {
                    true => CheckStatus::Up,
                    false => CheckStatus::Pending,
                },
                ..CheckState::default()
            };
        }
    }

    /// Checks stop for this backend: they no longer hold it down, and it
    /// starts over if they come back.
    pub fn stop(&mut self) {
        *self = CheckState::default();
    }

    /// One check's result (`Ok` a pass, `Err` a failure, each described);
    /// the transition it makes, if any. A result for a backend whose
    /// checks are off (a check that was under way when a reload turned
    /// them off) changes nothing.
    pub fn record(
        &mut self,
        result: Result<String, String>,
        rise: u32,
        fall: u32,
    ) -> Option<Transition> {
        if self.status == CheckStatus::Off {
            return None;
        }
        let pass = result.is_ok();
        self.last = Some(match result {
            Ok(s) | Err(s) => s,
        });
        if pass {
            self.fails = 0;
            self.passes = self.passes.saturating_add(1);
        } else {
            self.passes = 0;
            self.fails = self.fails.saturating_add(1);
        }
        let next = match (self.status, pass) {
            // the first check decides a new backend either way
            (CheckStatus::Pending, true) => CheckStatus::Up,
            (CheckStatus::Pending, false) => CheckStatus::Down,
            (CheckStatus::Down, true) if self.passes >= rise => CheckStatus::Up,
            (CheckStatus::Up, false) if self.fails >= fall => CheckStatus::Down,
            (status, _) => status,
        };
        if next == self.status {
            return None;
        }
        self.status = next;
        Some(match next {
            CheckStatus::Up => Transition::Up,
            _ => Transition::Down,
        })
    }
}

/// Starts and stops checks as a snapshot replaces `old` (`None` at
/// start) by `new`, before `new` serves any request: a backend that a
/// pool with checks lists starts them (waiting for a first pass unless
/// `old` already had it), and one that no such pool lists any more stops
/// them. A backend that keeps its checks keeps its state.
pub fn follow(old: Option<&[Pool]>, new: &[Pool]) {
    let old = old.unwrap_or_default();
    let names = |pools: &'_ [Pool], checked_only: bool| -> HashSet<Arc<str>> {
        pools
            .iter()
            .filter(|p| !checked_only || p.health.check.is_some())
            .flat_map(|p| p.backends.iter().map(|b| b.state.name.clone()))
            .collect()
    };
    let listed = names(old, false);
    let checked = names(new, true);
    for pool in new.iter().filter(|p| p.health.check.is_some()) {
        for b in pool.backends.iter() {
            b.state.start_checks(listed.contains(&b.state.name));
        }
    }
    for pool in old {
        for b in pool.backends.iter() {
            if !checked.contains(&b.state.name) {
                b.state.stop_checks();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> Result<String, String> {
        Ok("status 200".into())
    }

    fn fail() -> Result<String, String> {
        Err("status 500".into())
    }

    #[test]
    fn a_new_backend_waits_for_its_first_check() {
        let mut s = CheckState::default();
        s.start(false);
        assert_eq!(s.status, CheckStatus::Pending);
        assert!(s.status.holds_down());
        assert_eq!(s.record(pass(), 2, 3), Some(Transition::Up));
        assert_eq!(s.status, CheckStatus::Up);
        assert_eq!(s.last.as_deref(), Some("status 200"));

        // a first failure: down, and rise passes to come back
        let mut s = CheckState::default();
        s.start(false);
        assert_eq!(s.record(fail(), 2, 3), Some(Transition::Down));
        assert_eq!(s.record(pass(), 2, 3), None);
        assert!(s.status.holds_down());
        assert_eq!(s.record(pass(), 2, 3), Some(Transition::Up));
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_and_rise_passes_bring_it_back() {
        let mut s = CheckState::default();
        s.start(true);
        assert_eq!(s.status, CheckStatus::Up);
        // failures that are not in a row do not add up
        assert_eq!(s.record(fail(), 2, 3), None);
        assert_eq!(s.record(fail(), 2, 3), None);
        assert_eq!(s.record(pass(), 2, 3), None);
        assert_eq!(s.record(fail(), 2, 3), None);
        assert_eq!(s.record(fail(), 2, 3), None);
        assert_eq!(s.status, CheckStatus::Up);
        assert_eq!(s.fails, 2);
        assert_eq!(s.record(fail(), 2, 3), Some(Transition::Down));
        assert_eq!(s.status, CheckStatus::Down);
        // nor do passes
        assert_eq!(s.record(pass(), 2, 3), None);
        assert_eq!(s.record(fail(), 2, 3), None);
        assert_eq!(s.record(pass(), 2, 3), None);
        assert_eq!(s.status, CheckStatus::Down);
        assert_eq!(s.record(pass(), 2, 3), Some(Transition::Up));
        // rise = fall = 1: every result decides
        assert_eq!(s.record(fail(), 1, 1), Some(Transition::Down));
        assert_eq!(s.record(pass(), 1, 1), Some(Transition::Up));
    }

    #[test]
    fn stopping_releases_the_backend_and_restarting_starts_over() {
        let mut s = CheckState::default();
        s.start(true);
        s.record(fail(), 1, 1);
        assert!(s.status.holds_down());
        // starting again changes nothing while they run
        s.start(true);
        assert_eq!(s.status, CheckStatus::Down);
        s.stop();
        assert!(!s.status.holds_down());
        // a late result counts for nothing once stopped
        assert_eq!(s.record(fail(), 1, 1), None);
        assert_eq!(s.status, CheckStatus::Off);
        s.start(false);
        assert_eq!(s.status, CheckStatus::Pending);
        assert_eq!((s.passes, s.fails, s.last.as_deref()), (0, 0, None));
    }

    fn pool(registry: &super::super::Registry, names: &[&str], checked: bool) -> Pool {
        use crate::config;
        let cfg = config::Pool {
            name: "web".into(),
            policy: config::PolicyKind::RoundRobin,
            max_body: None,
            backends: names
                .iter()
                .map(|n| config::Backend {
                    name: n.to_string(),
                    addr: config::Addr::Fixed(n.parse().unwrap()),
                    weight: 1,
                    drain: false,
                    tls: None,
                })
                .collect(),
            tls: config::BackendTls::default(),
            resolve_interval: std::time::Duration::from_secs(5),
            max_addresses: 64,
            health: config::Health {
                check: checked.then(|| config::HealthCheck {
                    path: "/".into(),
                    interval: std::time::Duration::from_secs(2),
                    timeout: std::time::Duration::from_secs(1),
                    rise: 2,
                    fall: 3,
                }),
                ..config::Health::default()
            },
            sticky: None,
            session: None,
        };
        Pool::build(&cfg, &cfg.placed(&Default::default()), registry)
    }

    #[test]
    fn a_reload_starts_and_stops_checks_and_keeps_the_state_of_what_stays() {
        let r = super::super::Registry::default();
        let (a, b, c) = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3");
        let status = |n: &str| r.get(n).check_state().status;
        // at start every checked backend waits for its first pass
        let first = [pool(&r, &[a, b], true)];
        follow(None, &first);
        assert_eq!(
            (status(a), status(b)),
            (CheckStatus::Pending, CheckStatus::Pending)
        );
        assert!(!r.get(a).is_up());
        r.get(a).record_check(pass(), 2, 3);
        r.get(b).record_check(fail(), 2, 3);
        // a reload that adds c: a and b keep their state, c waits
        let second = [pool(&r, &[a, b, c], true)];
        follow(Some(&first), &second);
        assert_eq!(
            (status(a), status(b), status(c)),
            (CheckStatus::Up, CheckStatus::Down, CheckStatus::Pending)
        );
        // checks off: nothing holds them down any more
        let third = [pool(&r, &[a, b, c], false)];
        follow(Some(&second), &third);
        assert_eq!(status(b), CheckStatus::Off);
        assert!(r.get(b).is_up() && r.get(c).is_up());
        // back on: the backends that serve keep serving until fall failures
        let fourth = [pool(&r, &[a, b], true)];
        follow(Some(&third), &fourth);
        assert_eq!((status(a), status(b)), (CheckStatus::Up, CheckStatus::Up));
        // c was removed: added again, it is new and waits
        let fifth = [pool(&r, &[a, b, c], true)];
        follow(Some(&fourth), &fifth);
        assert_eq!(status(c), CheckStatus::Pending);
    }
}
