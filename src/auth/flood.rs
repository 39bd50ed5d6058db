//! The budget for unauthenticated requests, per remote address, in front of the audit trail.
//!
//! Every refused request would otherwise write one `denied` record carrying client-chosen text,
//! so one peer with a wrong key could fill the audit volume or queue and turn fail-closed audit
//! into an outage for keyed clients. Each address gets a small token bucket
//! (`limits.unauthenticated_rpm_per_ip`, burst of the same size): within it a refusal is a 401
//! with its own `denied` record; beyond it the refusal is a 429 `rate_limit_exceeded` and is only
//! counted, and the counts are written as `denied_summary` records (one per address and reason)
//! every `SUMMARY_EVERY`, so the trail still shows that a flood happened and from where.
//!
//! Both maps are bounded: past `MAX_ADDRS` addresses, new ones share one bucket and one summary
//! row (`remote_addr = "other"`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::{Audit, Event, Record};

/// Addresses tracked at most (buckets and summary rows each).
pub const MAX_ADDRS: usize = 4096;
/// How often pending counts are written as `denied_summary` records.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-address token buckets plus the counts not written individually.
pub struct DeniedBudget {
    per_min: f64,
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
    shed: Mutex<HashMap<(Option<IpAddr>, &'static str), u64>>,
    summary_pending: AtomicBool,
    summary_every: Duration,
}

impl DeniedBudget {
    /// `per_min` = 0 turns the budget off (every refusal is recorded individually).
    pub fn new(per_min: u32) -> Self {
        Self::with_interval(per_min, SUMMARY_EVERY)
    }

    pub fn with_interval(per_min: u32, summary_every: Duration) -> Self {
        Self {
            per_min: f64::from(per_min),
            buckets: Mutex::new(HashMap::new()),
            shed: Mutex::new(HashMap::new()),
            summary_pending: AtomicBool::new(false),
            summary_every,
        }
    }

    /// Take one token for `ip`; `false` once its budget is spent.
    pub fn allow(&self, ip: Option<IpAddr>) -> bool {
        if self.per_min <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let Ok(mut map) = self.buckets.lock() else {
            return false;
        };
        if map.len() >= MAX_ADDRS && !map.contains_key(&ip) {
            // Forget addresses whose bucket has refilled; if none has, share one bucket.
            let full = self.per_min;
            let rate = self.per_min / 60.0;
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < full);
        }
        // One slot stays for the shared bucket.
        let key = if map.len() >= MAX_ADDRS - 1 && !map.contains_key(&ip) {
            None
        } else {
            ip
        };
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.per_min,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * self.per_min / 60.0;
        b.tokens = (b.tokens + refill).min(self.per_min);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Count a refusal that got no record of its own; makes sure a summary will be written.
    pub fn shed(self: &Arc<Self>, ip: Option<IpAddr>, reason: &'static str, audit: &Audit) {
        if let Ok(mut m) = self.shed.lock() {
            let key = if m.len() >= MAX_ADDRS - 1 && !m.contains_key(&(ip, reason)) {
                (None, reason)
            } else {
                (ip, reason)
            };
            *m.entry(key).or_insert(0) += 1;
        }
        if !self.summary_pending.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            let audit = audit.clone();
            tokio::spawn(async move {
                tokio::time::sleep(this.summary_every).await;
                this.summary_pending.store(false, Ordering::Release);
                this.write_summary(&audit).await;
            });
        }
    }

    /// Write (and reset) the pending counts as `denied_summary` records.
    pub async fn write_summary(&self, audit: &Audit) {
        let rows: Vec<_> = match self.shed.lock() {
            Ok(mut m) => m.drain().collect(),
            Err(_) => return,
        };
        for ((ip, reason), count) in rows {
            let mut r = Record::event(Event::DeniedSummary);
            r.remote_addr = Some(ip.map_or_else(|| "other".into(), |a| a.to_string().into()));
            r.reason = Some(reason.to_string());
            r.count = Some(count);
            r.status = Some(429);
            if audit.record(r).await.is_err() {
                tracing::error!("audit queue full: denied_summary record not written");
            }
        }
    }
}

/// The IP of a `RemoteAddr` string (`1.2.3.4:5` or `[::1]:5`; a bare IP behind a trusted proxy).
pub fn ip_of(addr: &str) -> Option<IpAddr> {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| addr.parse::<IpAddr>())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_per_address_and_bounded() {
        let b = DeniedBudget::new(3);
        let a = ip_of("10.0.0.1:1234");
        let c = ip_of("[::1]:80");
        assert!(c.is_some());
        assert!((0..3).all(|_| b.allow(a)));
        assert!(!b.allow(a));
        assert!(b.allow(c), "another address has its own budget");
        for i in 0..(MAX_ADDRS as u32 + 10) {
            let ip = Some(IpAddr::from(i.to_be_bytes()));
            b.allow(ip);
        }
        assert!(b.buckets.lock().unwrap().len() <= MAX_ADDRS);
        assert!(DeniedBudget::new(0).allow(a), "0 turns it off");
    }
}
