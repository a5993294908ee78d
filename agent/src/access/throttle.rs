//! The login throttle. Each wrong login adds a strike to the name it tried
//! (whether or not a user has it: a delay tells no name apart) and to its
//! source address; after `free` strikes, every further failure is
//! answered only after a delay that doubles from `delay` up to
//! `delay_max`, and until that delay has passed, further attempts for the
//! same name or from the same source are refused at once without their
//! password being looked at. One attempt per name is checked at a time (a
//! second one meanwhile is refused), so parallel connections gain no
//! guesses. After `lock_after` consecutive failures of a user the account
//! is locked until an admin unlocks it. A success clears its name's
//! strikes (not its source's: one good account must not reset the count
//! of guesses at others from the same address).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Names and sources remembered each; beyond it the quietest are forgotten.
const ENTRIES_MAX: usize = 4096;
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
    names: Mutex<HashMap<String, Strikes>>,
    sources: Mutex<HashMap<IpAddr, Strikes>>,
    /// Names with an attempt being checked now.
    in_flight: Mutex<HashSet<String>>,
}

/// What a failure costs.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    /// Hold the answer this long.
    pub delay: Duration,
    /// The name's consecutive failures so far.
    pub failures: u32,
    /// This failure reached `lock_after`: lock the account (if it is one).
    pub lock: bool,
}

/// Why an attempt is not looked at now.
#[derive(Debug, PartialEq, Eq)]
pub enum NotNow {
    /// The name or the source is serving a delay this long.
    Delay(Duration),
    /// Another attempt for the same name is being checked.
    Busy,
}

/// An admitted attempt: its name counts as in flight until this is dropped.
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    name: String,
    source: IpAddr,
}

/// Adds a strike to `key` in `map`, first making room in a full map.
fn strike<K: Hash + Eq + Clone>(map: &mut HashMap<K, Strikes>, key: &K, policy: &Policy, now: Instant) -> u32 {
    if map.len() >= ENTRIES_MAX && !map.contains_key(key) {
        map.retain(|_, s| now.duration_since(s.last) <= STRIKES_FORGOTTEN_AFTER);
        if map.len() >= ENTRIES_MAX {
            // Flooded with names or addresses: keep the worst half.
            let mut counts: Vec<u32> = map.values().map(|s| s.failures).collect();
            counts.sort_unstable();
            let median = counts[counts.len() / 2];
            map.retain(|_, s| s.failures > median);
        }
    }
    let entry = map.entry(key.clone()).or_insert(Strikes { failures: 0, not_before: now, last: now });
    if now.duration_since(entry.last) > STRIKES_FORGOTTEN_AFTER {
        entry.failures = 0;
    }
    entry.failures = entry.failures.saturating_add(1);
    entry.last = now;
    entry.not_before = now + policy.delay_after(entry.failures);
    entry.failures
}

impl Throttle {
    pub fn new(policy: Policy) -> Throttle {
        Throttle {
            policy,
            names: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// Lets an attempt for `name` from `source` be checked, unless either is
    /// serving a delay or the name has an attempt in flight.
    pub fn admit(&self, name: &str, source: IpAddr) -> Result<Attempt<'_>, NotNow> {
        let now = Instant::now();
        let wait = |s: Option<&Strikes>| s.map_or(Duration::ZERO, |s| s.not_before.saturating_duration_since(now));
        let by_name = wait(self.names.lock().expect("throttle lock").get(name));
        let by_source = wait(self.sources.lock().expect("throttle lock").get(&source));
        let longest = by_name.max(by_source);
        if !longest.is_zero() {
            return Err(NotNow::Delay(longest));
        }
        if !self.in_flight.lock().expect("throttle lock").insert(name.to_string()) {
            return Err(NotNow::Busy);
        }
        Ok(Attempt { throttle: self, name: name.to_string(), source })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Forgets a name's strikes (after a lock, and after an unlock: the
    /// user starts again from none).
    pub fn forget_name(&self, name: &str) {
        self.names.lock().expect("throttle lock").remove(name);
    }
}

impl Attempt<'_> {
    /// Counts the failure against the name and the source (the name stays
    /// in flight until the attempt is dropped: hold it through the delay).
    pub fn failed(&self) -> Failure {
        let now = Instant::now();
        let policy = self.throttle.policy;
        let by_source = strike(&mut self.throttle.sources.lock().expect("throttle lock"), &self.source, &policy, now);
        let by_name = strike(&mut self.throttle.names.lock().expect("throttle lock"), &self.name, &policy, now);
        Failure {
            delay: policy.delay_after(by_name.max(by_source)),
            failures: by_name,
            lock: by_name >= policy.lock_after,
        }
    }

    /// Counts a failure against the source alone (a locked account's
    /// tries: its name's count restarts from the lock).
    pub fn failed_source_only(&self) -> Failure {
        let now = Instant::now();
        let policy = self.throttle.policy;
        let by_source = strike(&mut self.throttle.sources.lock().expect("throttle lock"), &self.source, &policy, now);
        Failure { delay: policy.delay_after(by_source), failures: 0, lock: false }
    }

    pub fn succeeded(self) {
        self.throttle.forget_name(&self.name);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.throttle.in_flight.lock().expect("throttle lock").remove(&self.name);
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
        let other: IpAddr = [10, 0, 0, 2].into();
        for n in 1..=9 {
            if n > 4 {
                // The fourth failure and each after it start a delay.
                std::thread::sleep(Duration::from_millis(30));
            }
            let f = throttle.admit("bob", ip).expect("admitted").failed();
            assert_eq!((f.failures, f.lock), (n, false));
        }
        assert!(matches!(throttle.admit("bob", ip), Err(NotNow::Delay(_))), "still in the ninth failure's delay");
        assert!(matches!(throttle.admit("bob", other), Err(NotNow::Delay(_))), "the name is throttled from anywhere");
        assert!(matches!(throttle.admit("carol", ip), Err(NotNow::Delay(_))), "and the source for any name");
        assert!(throttle.admit("carol", other).is_ok());
        std::thread::sleep(Duration::from_millis(30));
        let attempt = throttle.admit("bob", ip).expect("admitted after the delay");
        assert!(matches!(throttle.admit("bob", other), Err(NotNow::Busy)), "one attempt per name at a time");
        assert!(attempt.failed().lock);
        drop(attempt);
        throttle.forget_name("bob");
        std::thread::sleep(Duration::from_millis(30));
        throttle.admit("bob", other).expect("admitted").succeeded();
        assert_eq!(throttle.admit("bob", other).expect("admitted").failed().failures, 1);
        // A name nobody has is counted like one that exists.
        assert_eq!(throttle.admit("nosuch", other).expect("admitted").failed().failures, 1);
    }
}
