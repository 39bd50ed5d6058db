//! Limits shared by a fleet of gateways (`[ratelimit] backend = "redis"`): each limited request
//! runs one atomic script in Redis (`script::CHECK`: the client's request GCRA taken, its token
//! budgets looked at), and each response's `usage` is charged afterwards off the request path
//! (`script::CHARGE`). Clients without `rpm`, `tpm` or `tokens_per_day` never reach Redis.
//!
//! Redis unreachable, slow past `timeout`, or answering errors → `failure_mode` applies at once
//! for the next second (no request waits on a backend known to be down), a warning is logged
//! once per outage and `nimgate_ratelimit_backend_*` metrics count it; one request a second
//! probes, and the first success ends the outage. In `open` mode this replica's own limiter
//! (always checked first) stays the floor.

pub mod resp;
mod script;
mod target;

pub use target::{parse_url, target};

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::ratelimit::now_nanos;
use crate::config::{FailureMode, RateLimitConfig};
use resp::{Client, Reply, Target};

/// The limits of one client, in the units the scripts take (microseconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Spec {
    /// (interval, tolerance) of the request GCRA.
    pub requests: Option<(u64, u64)>,
    /// Interval per token of the `tpm` budget (its capacity is one minute).
    pub token_interval: Option<u64>,
    pub tokens_per_day: Option<u64>,
}

impl Spec {
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.token_interval.is_none() && self.tokens_per_day.is_none()
    }
}

/// A limit's state after an admitted check: (remaining, until whole again).
pub type Left = (u64, Duration);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed {
        requests: Option<Left>,
        tokens: Option<Left>,
        day: Option<u64>,
    },
    /// Over the request rate: retry after.
    Requests(Duration),
    /// Out of tokens (per minute or per day): retry after.
    Tokens(Duration),
    /// The backend could not answer; `failure_mode` decides.
    Unavailable,
}

struct Script {
    text: &'static str,
    sha: String,
}

impl Script {
    fn new(text: &'static str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, text.as_bytes());
        Self {
            text,
            sha: hex::encode(d.as_ref()),
        }
    }
}

pub struct Shared {
    redis: Arc<Client>,
    prefix: String,
    pub failure_mode: FailureMode,
    check: Script,
    charge: Script,
    /// `now_nanos()` before which the backend counts as down (0 = up).
    down_until: AtomicU64,
    up: AtomicBool,
    errors: AtomicU64,
    fallbacks: AtomicU64,
}

const PROBE_EVERY: u64 = 1_000_000_000;

impl Shared {
    pub fn new(cfg: &RateLimitConfig, target: Target) -> Arc<Self> {
        Arc::new(Self {
            redis: Client::new(target, cfg.timeout),
            prefix: cfg.key_prefix.clone(),
            failure_mode: cfg.failure_mode,
            check: Script::new(script::CHECK),
            charge: Script::new(script::CHARGE),
            down_until: AtomicU64::new(0),
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        })
    }

    fn key(&self, client: &str, what: &str) -> String {
        format!("{}:{{{client}}}:{what}", self.prefix)
    }

    /// Whether to skip the backend now (down, and this is not the probe).
    fn skip(&self) -> bool {
        let until = self.down_until.load(Ordering::Acquire);
        if until == 0 {
            return false;
        }
        let now = now_nanos();
        // Past the deadline: the one request that moves it is the probe.
        now < until
            || self
                .down_until
                .compare_exchange(
                    until,
                    now + PROBE_EVERY,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
    }

    fn failed(&self, what: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.down_until
            .store(now_nanos() + PROBE_EVERY, Ordering::Release);
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                error = what,
                failure_mode = self.failure_mode.name(),
                "rate-limit backend unreachable: limited requests follow failure_mode until it answers"
            );
        }
    }

    fn succeeded(&self) {
        if self.down_until.swap(0, Ordering::AcqRel) != 0 && !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!("rate-limit backend reachable again: shared limits apply");
        }
    }

    async fn run(&self, s: &Script, keys: &[&str], args: &[String]) -> Option<Vec<i64>> {
        let n = keys.len().to_string();
        let mut argv: Vec<&[u8]> = vec![b"EVALSHA", s.sha.as_bytes(), n.as_bytes()];
        argv.extend(keys.iter().map(|k| k.as_bytes()));
        argv.extend(args.iter().map(String::as_bytes));
        let mut reply = self.redis.call(&argv).await;
        if matches!(&reply, Ok(Reply::Error(e)) if e == "NOSCRIPT") {
            argv[0] = b"EVAL";
            argv[1] = s.text.as_bytes();
            reply = self.redis.call(&argv).await;
        }
        let ints = match reply {
            Ok(Reply::Array(items)) => items
                .into_iter()
                .map(|r| match r {
                    Reply::Int(i) => Some(i),
                    _ => None,
                })
                .collect::<Option<Vec<i64>>>(),
            Ok(Reply::Int(i)) => Some(vec![i]),
            Ok(Reply::Error(e)) => {
                self.failed(&e);
                return None;
            }
            Ok(_) => None,
            Err(e) => {
                self.failed(&e.to_string());
                return None;
            }
        };
        if let Some(v) = ints {
            self.succeeded();
            Some(v)
        } else {
            self.failed("unexpected reply");
            None
        }
    }

    /// One request of `client`: take a request, look at the token budgets.
    pub async fn check(&self, client: &str, spec: &Spec) -> Verdict {
        if self.skip() {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return Verdict::Unavailable;
        }
        let (day, left_secs) = crate::auth::budget::utc_day();
        let (ri, rtol) = spec.requests.unwrap_or((0, 0));
        let args = [
            ri.to_string(),
            rtol.to_string(),
            spec.token_interval.unwrap_or(0).to_string(),
            60_000_000.to_string(),
            spec.tokens_per_day.unwrap_or(0).to_string(),
            left_secs.to_string(),
        ];
        let keys = [
            self.key(client, "rq"),
            self.key(client, "tk"),
            self.key(client, &format!("day:{day}")),
        ];
        let keys = [keys[0].as_str(), keys[1].as_str(), keys[2].as_str()];
        let Some(v) = self.run(&self.check, &keys, &args).await else {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
            return Verdict::Unavailable;
        };
        let Some(&[allowed, by, wait, rr, rreset, tr, treset, dr]) = v.get(..8) else {
            self.failed("unexpected reply");
            return Verdict::Unavailable;
        };
        let us = |n: i64| Duration::from_micros(u64::try_from(n).unwrap_or(0));
        let left = |rem: i64, reset: i64| (rem >= 0).then(|| (rem as u64, us(reset)));
        match (allowed, by) {
            (1, _) => Verdict::Allowed {
                requests: left(rr, rreset),
                tokens: left(tr, treset),
                day: u64::try_from(dr).ok(),
            },
            (_, 1) => Verdict::Requests(us(wait)),
            _ => Verdict::Tokens(us(wait)),
        }
    }

    /// Charge a response's tokens, off the request path.
    pub fn charge(self: &Arc<Self>, client: &str, spec: &Spec, tokens: u64) {
        if tokens == 0 || (spec.token_interval.is_none() && spec.tokens_per_day.is_none()) {
            return;
        }
        let me = self.clone();
        let (day, left_secs) = crate::auth::budget::utc_day();
        let keys = [
            self.key(client, "tk"),
            self.key(client, &format!("day:{day}")),
        ];
        let ttl = if spec.tokens_per_day.is_some() {
            left_secs + 86_400
        } else {
            0
        };
        let args = [
            spec.token_interval.unwrap_or(0).to_string(),
            tokens.to_string(),
            ttl.to_string(),
        ];
        tokio::spawn(async move {
            let keys = [keys[0].as_str(), keys[1].as_str()];
            if me.skip() || me.run(&me.charge, &keys, &args).await.is_none() {
                tracing::debug!("token charge not recorded in the shared backend");
            }
        });
    }

    pub fn render(&self, o: &mut String) {
        let up = u8::from(self.down_until.load(Ordering::Acquire) == 0);
        let _ = writeln!(
            o,
            "# HELP nimgate_ratelimit_backend_up Whether the shared rate-limit backend answered its last call.\n\
             # TYPE nimgate_ratelimit_backend_up gauge\nnimgate_ratelimit_backend_up {up}\n\
             # HELP nimgate_ratelimit_backend_errors_total Shared rate-limit backend calls that failed or timed out.\n\
             # TYPE nimgate_ratelimit_backend_errors_total counter\nnimgate_ratelimit_backend_errors_total {}\n\
             # HELP nimgate_ratelimit_backend_fallbacks_total Limited requests decided by failure_mode because the backend could not answer.\n\
             # TYPE nimgate_ratelimit_backend_fallbacks_total counter\nnimgate_ratelimit_backend_fallbacks_total{{mode=\"{}\"}} {}",
            self.errors.load(Ordering::Relaxed),
            self.failure_mode.name(),
            self.fallbacks.load(Ordering::Relaxed),
        );
    }
}
