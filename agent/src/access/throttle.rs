//! The login throttle. Each wrong login adds a strike to its user and to
//! its source address; after `free` strikes, every further failure is
//! answered only after a delay that doubles from `delay` up to
//! `delay_max`, and until that delay has passed, further attempts for the
//! same user or from the same source are refused at once without their
//! password being looked at (parallel connections gain nothing). After
//! `lock_after` consecutive failures the account is locked until an admin
//! unlocks it. A success clears the user's and the source's strikes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources remembered; beyond it the quietest are forgotten.
const SOURCES_MAX: usize = 4096;
/// Strikes older than this are forgotten.
const STRIKES_FORGOTTEN_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub free: u32,
    pub delay: Duration,
    pub delay_max: Duration,
    pub lock_after: u32,
}

impl Policy {
    /// The wait after the `failures`-th consecutive failure.
    pub fn delay_after(&self, failures: u32) -> Duration {
        if failures <= self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free - 1).min(30);
        self.delay.saturating_mul(1u32 << doublings).min(self.delay_max)
    }
}

#[derive(Clone, Copy)]
struct Strikes {
    failures: u32,
    not_before: Instant,
    last: Instant,
}

pub struct Throttle {
    policy: Policy,
    users: Mutex<HashMap<String, Strikes>>,
    sources: Mutex<HashMap<IpAddr, Strikes>>,
}

/// What a failure costs.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// Hold the answer this long.
    pub delay: Duration,
    /// The user's consecutive failures so far (0 for an unknown user).
    pub failures: u32,
    /// This failure reached `lock_after`: lock the account.
    pub lock: bool,
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle { policy, users: Mutex::new(HashMap::new()), sources: Mutex::new(HashMap::new()) }
    }

    /// `Err(wait)` while the user or the source is still serving a delay.
    pub fn admit(&self, user: Option<&str>, source: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let wait = |s: Option<&Strikes>| s.map_or(Duration::ZERO, |s| s.not_before.saturating_duration_since(now));
        let by_user = user.map_or(Duration::ZERO, |u| wait(self.users.lock().expect("throttle lock").get(u)));
        let by_source = wait(self.sources.lock().expect("throttle lock").get(&source));
        match by_user.max(by_source) {
            Duration::ZERO => Ok(()),
            longest => Err(longest),
        }
    }

    /// Counts a failure; `user` is `None` for a name that is not a user
    /// (only its source is counted: unknown names are not remembered).
    pub fn failed(&self, user: Option<&str>, source: IpAddr) -> Failure {
        let now = Instant::now();
        let policy = self.policy;
        let strike = |entry: &mut Strikes| {
            if now.duration_since(entry.last) > STRIKES_FORGOTTEN_AFTER {
                entry.failures = 0;
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last = now;
            entry.not_before = now + policy.delay_after(entry.failures);
            entry.failures
        };
        let fresh = Strikes { failures: 0, not_before: now, last: now };
        let source_failures = {
            let mut sources = self.sources.lock().expect("throttle lock");
            if sources.len() >= SOURCES_MAX && !sources.contains_key(&source) {
                sources.retain(|_, s| now.duration_since(s.last) <= STRIKES_FORGOTTEN_AFTER);
                if sources.len() >= SOURCES_MAX {
                    // Flooded from many addresses: keep the worst half.
                    let mut counts: Vec<u32> = sources.values().map(|s| s.failures).collect();
                    counts.sort_unstable();
                    let median = counts[counts.len() / 2];
                    sources.retain(|_, s| s.failures > median);
                }
            }
            strike(sources.entry(source).or_insert(fresh))
        };
        let user_failures = match user {
            Some(u) => strike(self.users.lock().expect("throttle lock").entry(u.to_string()).or_insert(fresh)),
            None => 0,
        };
        let worst = user_failures.max(source_failures);
        Failure {
            delay: policy.delay_after(worst),
            failures: user_failures,
            lock: user_failures >= policy.lock_after && user_failures > 0,
        }
    }

    pub fn succeeded(&self, user: &str, source: IpAddr) {
        self.users.lock().expect("throttle lock").remove(user);
        self.sources.lock().expect("throttle lock").remove(&source);
    }

    /// After an unlock: the user starts again with no strikes.
    pub fn forget_user(&self, user: &str) {
        self.users.lock().expect("throttle lock").remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { free: 3, delay: Duration::from_millis(100), delay_max: Duration::from_millis(1000), lock_after: 10 }
    }

    #[test]
    fn delays_double_from_the_first_paid_failure_up_to_the_cap() {
        let p = policy();
        let delays: Vec<u64> = (1..=11).map(|n| p.delay_after(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 0, 0, 100, 200, 400, 800, 1000, 1000, 1000, 1000]);
        assert_eq!(p.delay_after(u32::MAX), p.delay_max);
    }

    #[test]
    fn failures_delay_admission_lock_at_the_limit_and_success_clears() {
        let throttle = Throttle::new(Policy {
            delay: Duration::from_millis(20),
            delay_max: Duration::from_millis(20),
            ..policy()
        });
        let ip: IpAddr = [10, 0, 0, 1].into();
        for n in 1..=9 {
            let f = throttle.failed(Some("bob"), ip);
            assert_eq!((f.failures, f.lock), (n, false));
        }
        assert!(throttle.admit(Some("bob"), ip).is_err(), "still in the ninth failure's delay");
        assert!(throttle.admit(Some("bob"), [10, 0, 0, 2].into()).is_err(), "the user is throttled from anywhere");
        assert!(throttle.admit(Some("carol"), [10, 0, 0, 2].into()).is_ok());
        std::thread::sleep(Duration::from_millis(30));
        assert!(throttle.admit(Some("bob"), ip).is_ok());
        assert!(throttle.failed(Some("bob"), ip).lock);
        throttle.succeeded("bob", ip);
        assert_eq!(throttle.failed(Some("bob"), ip).failures, 1);
        // Unknown names count against the source only.
        assert_eq!(throttle.failed(None, ip).failures, 0);
    }
}
