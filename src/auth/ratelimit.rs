//! Lock-free GCRA (generic cell rate algorithm) limiter: one atomic "theoretical arrival time"
//! per client, updated with compare-and-swap. No per-request lock, no allocation.
//! Kept instead of `governor`: the same algorithm in 40 lines, with a clock-injected `check_at`
//! for tests and no extra dependency tree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Gcra {
    /// Requests per minute (the `x-ratelimit-limit-requests` value).
    pub rpm: u32,
    /// Nanoseconds between requests at the sustained rate.
    pub interval: u64,
    /// How far ahead of now the theoretical arrival time may run (burst × interval).
    pub tolerance: u64,
    tat: AtomicU64,
}

/// What a passed check leaves, for the `x-ratelimit-*-requests` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub remaining: u64,
    /// Until the whole burst is available again.
    pub reset: Duration,
}

/// Nanoseconds on a monotonic clock shared by the limiters.
pub(crate) fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Gcra {
    /// `rpm` sustained requests per minute; `burst` requests may arrive at once.
    pub fn per_minute(rpm: u32, burst: u32) -> Self {
        let interval = 60_000_000_000 / u64::from(rpm.max(1));
        Self {
            rpm,
            interval,
            tolerance: interval * u64::from(burst.max(1)),
            tat: AtomicU64::new(0),
        }
    }

    /// Take one request's worth of capacity, or say how long until one is available.
    pub fn check(&self) -> Result<Snapshot, Duration> {
        self.check_at(now_nanos())
    }

    pub(crate) fn check_at(&self, now: u64) -> Result<Snapshot, Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = tat.max(now) + self.interval;
            if new_tat - now > self.tolerance {
                return Err(Duration::from_nanos(new_tat - now - self.tolerance));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    return Ok(Snapshot {
                        remaining: (self.tolerance - (new_tat - now)) / self.interval,
                        reset: Duration::from_nanos(new_tat - now),
                    })
                }
                Err(cur) => tat = cur,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_sustained_rate() {
        let g = Gcra::per_minute(60, 3); // one per second, burst 3
        let t0 = 1_000_000_000;
        for left in [2, 1, 0] {
            assert_eq!(g.check_at(t0).unwrap().remaining, left);
        }
        let wait = g.check_at(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert!(g.check_at(t0 + 999_000_000).is_err());
        assert!(g.check_at(t0 + 1_000_000_000).is_ok());
        assert!(g.check_at(t0 + 1_000_000_000).is_err());
        // Long idle restores the whole burst, no more.
        let later = t0 + 100_000_000_000;
        for _ in 0..3 {
            assert!(g.check_at(later).is_ok());
        }
        assert!(g.check_at(later).is_err());
    }
}
