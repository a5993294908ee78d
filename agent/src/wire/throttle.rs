//! Token bucket capping the bytes per second sent to the peer.

use std::time::Duration;
// Tokio's clock (the std one outside tests), so tests can run it paused.
use tokio::time::Instant;

/// Burst allowance as a fraction of one second of traffic.
const BURST_SECONDS: f64 = 0.25;
const BURST_BYTES_MIN: f64 = 64.0 * 1024.0;

pub struct Throttle {
    bytes_per_sec: u64,
    tokens: f64,
    burst: f64,
    last: Instant,
}

impl Throttle {
    /// `bytes_per_sec == 0` means no cap.
    pub fn new(bytes_per_sec: u64) -> Self {
        let burst = (bytes_per_sec as f64 * BURST_SECONDS).max(BURST_BYTES_MIN);
        Throttle { bytes_per_sec, tokens: burst, burst, last: Instant::now() }
    }

    /// How long to wait before sending `bytes`, and takes them. Tokens may
    /// go negative: a large batch is paid for by waiting afterwards.
    pub fn take(&mut self, bytes: usize) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.bytes_per_sec as f64;
        self.last = now;
        self.tokens = (self.tokens + refill).min(self.burst) - bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.bytes_per_sec as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_turns_into_wait() {
        let mut t = Throttle::new(1_000_000);
        assert_eq!(t.take(100_000), Duration::ZERO);
        let wait = t.take(1_000_000);
        assert!(wait > Duration::from_millis(700) && wait < Duration::from_millis(1000), "{wait:?}");
        assert_eq!(Throttle::new(0).take(usize::MAX), Duration::ZERO);
    }
}
