//! Per-client token budgets, charged from each response's `usage`: `tpm` (tokens per minute) and
//! `tokens_per_day` (per UTC day). A request is admitted while its client has budget left and
//! charged at the end of its response, so the overshoot is bounded by the tokens of the requests
//! admitted while the last of the budget remained (those in flight at once).
//!
//! `tpm` is a GCRA in tokens: one atomic "theoretical arrival time" that each token pushes
//! `60 s / tpm` ahead; the budget is spent while it runs a whole minute ahead of now. Lock-free,
//! like `ratelimit::Gcra`. The day budget is a counter that starts again at UTC midnight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ratelimit::now_nanos;

const MINUTE_NS: u64 = 60_000_000_000;
const DAY_SECS: u64 = 86_400;

/// What is left of a budget, for the `x-ratelimit-*-tokens` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub limit: u64,
    pub remaining: u64,
    /// Until the budget is whole again.
    pub reset: Duration,
}

pub struct TokenRate {
    pub tpm: u64,
    /// Nanoseconds each token pushes the arrival time ahead.
    pub per_token: u64,
    tat: AtomicU64,
}

impl TokenRate {
    pub fn new(tpm: u64) -> Self {
        let tpm = tpm.max(1);
        Self {
            tpm,
            per_token: (MINUTE_NS / tpm).max(1),
            tat: AtomicU64::new(0),
        }
    }

    /// Budget left now, or how long until some is.
    pub fn check_at(&self, now: u64) -> Result<Left, Duration> {
        let debt = self.tat.load(Ordering::Acquire).saturating_sub(now);
        if debt >= MINUTE_NS {
            return Err(Duration::from_nanos(debt - MINUTE_NS + self.per_token));
        }
        Ok(Left {
            limit: self.tpm,
            remaining: (MINUTE_NS - debt) / self.per_token,
            reset: Duration::from_nanos(debt),
        })
    }

    pub fn charge_at(&self, now: u64, tokens: u64) {
        let cost = tokens.saturating_mul(self.per_token);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }
}

pub struct DayBudget {
    pub limit: u64,
    /// Day number (days since the Unix epoch, UTC) `used` counts for.
    day: AtomicU64,
    used: AtomicU64,
}

/// (today's day number, seconds left in it).
pub fn utc_day() -> (u64, u64) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (secs / DAY_SECS, DAY_SECS - secs % DAY_SECS)
}

impl DayBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            day: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    fn used_on(&self, day: u64) -> u64 {
        if self.day.load(Ordering::Acquire) == day {
            self.used.load(Ordering::Acquire)
        } else {
            0
        }
    }

    pub fn check(&self, (day, left_secs): (u64, u64)) -> Result<Left, Duration> {
        let used = self.used_on(day);
        if used >= self.limit {
            return Err(Duration::from_secs(left_secs));
        }
        Ok(Left {
            limit: self.limit,
            remaining: self.limit - used,
            reset: Duration::from_secs(left_secs),
        })
    }

    pub fn charge(&self, day: u64, tokens: u64) {
        if self.day.swap(day, Ordering::AcqRel) == day {
            self.used.fetch_add(tokens, Ordering::AcqRel);
        } else {
            // A new day: start from this response (a charge racing the turn may be lost).
            self.used.store(tokens, Ordering::Release);
        }
    }
}

/// A client's token budgets (either may be off).
pub struct TokenBudget {
    pub tpm: Option<TokenRate>,
    pub per_day: Option<DayBudget>,
}

/// Which budget refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted(pub Duration);

impl TokenBudget {
    pub fn new(tpm: Option<u64>, per_day: Option<u64>) -> Option<Self> {
        (tpm.is_some() || per_day.is_some()).then(|| Self {
            tpm: tpm.map(TokenRate::new),
            per_day: per_day.map(DayBudget::new),
        })
    }

    /// Budget left (the tighter of the two, for the headers), or how long until there is some.
    pub fn check(&self) -> Result<Left, Exhausted> {
        let now = now_nanos();
        let day = utc_day();
        let tpm = self.tpm.as_ref().map(|t| t.check_at(now)).transpose();
        let per_day = self.per_day.as_ref().map(|d| d.check(day)).transpose();
        match (tpm, per_day) {
            (Err(w), _) | (_, Err(w)) => Err(Exhausted(w)),
            (Ok(Some(t)), Ok(Some(d))) => Ok(if d.remaining < t.remaining { d } else { t }),
            (Ok(Some(l)), Ok(None)) | (Ok(None), Ok(Some(l))) => Ok(l),
            (Ok(None), Ok(None)) => Err(Exhausted(Duration::ZERO)),
        }
    }

    pub fn charge(&self, tokens: u64) {
        if let Some(t) = &self.tpm {
            t.charge_at(now_nanos(), tokens);
        }
        if let Some(d) = &self.per_day {
            d.charge(utc_day().0, tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_admits_while_budget_remains_and_refills_at_the_rate() {
        let r = TokenRate::new(600); // 10 tokens a second
        let t0 = 1_000 * MINUTE_NS;
        assert_eq!(r.check_at(t0).unwrap().remaining, 600);
        r.charge_at(t0, 400);
        assert_eq!(r.check_at(t0).unwrap().remaining, 200);
        r.charge_at(t0, 300); // overshoot: admitted with 200 left, used 300
        let wait = r.check_at(t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(11),
            "{wait:?}"
        );
        assert!(
            r.check_at(t0 + 11_000_000_000).is_ok(),
            "refilled after the debt is paid"
        );
        let idle = t0 + 10 * MINUTE_NS;
        assert_eq!(
            r.check_at(idle).unwrap().remaining,
            600,
            "never more than a minute's worth"
        );
    }

    #[test]
    fn day_budget_counts_per_utc_day() {
        let d = DayBudget::new(100);
        d.charge(20_000, 60);
        assert_eq!(d.check((20_000, 5)).unwrap().remaining, 40);
        d.charge(20_000, 50);
        assert_eq!(d.check((20_000, 5)).unwrap_err(), Duration::from_secs(5));
        assert_eq!(
            d.check((20_001, 86_400)).unwrap().remaining,
            100,
            "a new day"
        );
        d.charge(20_001, 10);
        assert_eq!(d.check((20_001, 1)).unwrap().remaining, 90);
    }
}
