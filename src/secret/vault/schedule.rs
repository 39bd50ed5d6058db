//! When a Vault token must be renewed or replaced: a pure, clock-injected type (every decision
//! takes `now`), unit-tested with synthetic instants like `Gcra::check_at`.
//!
//! - renew at 2/3 of the TTL;
//! - a renewal that grants clearly less than asked (< 90 %) means the token is near its max TTL:
//!   the next action is a login, not another renewal;
//! - log in when the token is about to expire (within a tenth of its TTL, at most 1 s), or when
//!   it is due and cannot be renewed;
//! - TTL 0 means no expiry (root or periodic tokens looked up from a file): re-check once a day.

use std::time::{Duration, Instant};

/// What to do with the token now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Keep,
    Renew,
    Login,
}

#[derive(Debug, Clone, Copy)]
pub struct TokenSchedule {
    /// The TTL asked for at each renewal (the login's TTL).
    pub ttl: Duration,
    pub renewable: bool,
    /// Token from `token_file`: cannot log in again, only re-read the file.
    pub from_file: bool,
    expires_at: Instant,
    act_at: Instant,
}

const DAY: Duration = Duration::from_secs(86_400);
/// Granted less than this share of the TTL asked for: the token is near its max TTL.
const NEAR_MAX: f64 = 0.9;

impl TokenSchedule {
    /// A token just granted (login, or looked up from a file) with `ttl` left.
    pub fn granted(now: Instant, ttl: Duration, renewable: bool, from_file: bool) -> Self {
        let (expires_at, act_at) = if ttl.is_zero() {
            (now + DAY * 365, now + DAY)
        } else {
            (now + ttl, now + ttl.mul_f64(2.0 / 3.0))
        };
        Self {
            ttl,
            renewable,
            from_file,
            expires_at,
            act_at,
        }
    }

    /// A renewal answered with `granted` seconds; returns the new schedule and whether the token
    /// is now near its max TTL (so the next action is a login).
    pub fn renewed(self, now: Instant, granted: Duration, renewable: bool) -> (Self, bool) {
        let near_max = granted < self.ttl.mul_f64(NEAR_MAX);
        let mut next = Self::granted(now, granted, renewable && !near_max, self.from_file);
        next.ttl = self.ttl;
        (next, near_max)
    }

    /// The server refused a renewal: act (log in) at once.
    pub fn renewal_refused(&mut self, now: Instant) {
        self.renewable = false;
        self.act_at = now;
    }

    /// What a login-capable source (AppRole, Kubernetes) should do at `now`.
    pub fn action(&self, now: Instant) -> Action {
        let margin = (self.ttl / 10).min(Duration::from_secs(1));
        if now + margin >= self.expires_at || (now >= self.act_at && !self.renewable) {
            Action::Login
        } else if now >= self.act_at {
            Action::Renew
        } else {
            Action::Keep
        }
    }

    /// What a token read from a file should do at `now` (it can only be renewed).
    pub fn file_action(&self, now: Instant) -> Action {
        if self.renewable && now >= self.act_at {
            Action::Renew
        } else {
            Action::Keep
        }
    }

    /// Time until the next action is due (at least `floor`).
    pub fn until_due(&self, now: Instant, floor: Duration) -> Duration {
        self.act_at.saturating_duration_since(now).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn renews_at_two_thirds_then_logs_in_near_expiry() {
        let t0 = Instant::now();
        let s = TokenSchedule::granted(t0, 30 * S, true, false);
        assert_eq!(s.action(t0), Action::Keep);
        assert_eq!(s.action(t0 + 19 * S), Action::Keep);
        assert_eq!(s.action(t0 + 20 * S), Action::Renew);
        assert_eq!(s.until_due(t0, Duration::ZERO), 20 * S);
        // Within a tenth of the TTL (capped at 1 s) of expiry: log in instead.
        assert_eq!(s.action(t0 + 29 * S), Action::Login);
        assert_eq!(s.action(t0 + 31 * S), Action::Login);
    }

    #[test]
    fn full_renewal_keeps_renewing_and_a_short_grant_means_near_max_ttl() {
        let t0 = Instant::now();
        let s = TokenSchedule::granted(t0, 30 * S, true, false);
        let (s, near) = s.renewed(t0 + 20 * S, 30 * S, true);
        assert!(!near);
        assert_eq!(s.action(t0 + 39 * S), Action::Keep);
        assert_eq!(s.action(t0 + 40 * S), Action::Renew);
        // Max TTL cuts the grant to 12 s of the 30 asked: next is a login, at 2/3 of 12 s.
        let (s, near) = s.renewed(t0 + 40 * S, 12 * S, true);
        assert!(near && !s.renewable);
        assert_eq!(
            s.ttl,
            30 * S,
            "the next renewal would ask for the login TTL again"
        );
        assert_eq!(s.action(t0 + 47 * S), Action::Keep);
        assert_eq!(s.action(t0 + 48 * S), Action::Login);
    }

    #[test]
    fn not_renewable_logs_in_when_due_and_refusal_logs_in_now() {
        let t0 = Instant::now();
        let s = TokenSchedule::granted(t0, 9 * S, false, false);
        assert_eq!(s.action(t0 + 5 * S), Action::Keep);
        assert_eq!(s.action(t0 + 6 * S), Action::Login);
        let mut s = TokenSchedule::granted(t0, 60 * S, true, false);
        s.renewal_refused(t0 + S);
        assert_eq!(s.action(t0 + S), Action::Login);
    }

    #[test]
    fn ttl_zero_means_no_expiry_checked_daily() {
        let t0 = Instant::now();
        let s = TokenSchedule::granted(t0, Duration::ZERO, false, true);
        assert_eq!(s.file_action(t0 + DAY * 2), Action::Keep);
        assert_eq!(s.action((t0 + DAY).checked_sub(S).unwrap()), Action::Keep);
        assert_eq!(s.action(t0 + DAY), Action::Login);
        assert_eq!(s.until_due(t0, Duration::ZERO), DAY);
        let r = TokenSchedule::granted(t0, Duration::ZERO, true, true);
        assert_eq!(r.file_action(t0 + DAY), Action::Renew);
    }

    #[test]
    fn file_tokens_only_renew() {
        let t0 = Instant::now();
        let s = TokenSchedule::granted(t0, 30 * S, true, true);
        assert_eq!(s.file_action(t0 + 10 * S), Action::Keep);
        assert_eq!(s.file_action(t0 + 20 * S), Action::Renew);
        let s = TokenSchedule::granted(t0, 30 * S, false, true);
        assert_eq!(s.file_action(t0 + 29 * S), Action::Keep);
    }
}
