//! The replicas of one upstream and how a request picks one: power-of-two-choices on the fewest
//! outstanding requests among the replicas that are up. A replica is down while it is ejected
//! (passive: `eject_after` consecutive connect failures or 5xx answers eject it for
//! `eject_backoff`, doubled on each repeat up to 32×; once the time is over it gets requests
//! again, and one more failure ejects it at once) or while its active health check fails. A
//! passing health check ends an ejection early only when the replica was ejected for being
//! unreachable: one ejected for answering 5xx stays out for its backoff (its health endpoint
//! answering proves nothing about its completions).
//!
//! All state is atomics (no lock on the request path); the clock is passed in (`now_ms`, ms
//! since the process's epoch) so the ejection rules are unit-tested without sleeping.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::client::Pool;

/// Milliseconds since the first call (a monotonic clock shared by all replicas).
pub fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

pub struct Replica {
    pub pool: Pool,
    outstanding: AtomicU32,
    failures: AtomicU32,
    ejections: AtomicU32,
    /// 0: not ejected; else ejected until this `now_ms`.
    ejected_until: AtomicU64,
    /// The last active health check failed.
    probe_down: AtomicBool,
    /// The current ejection came from 5xx answers (not from connect failures).
    ejected_answering: AtomicBool,
}

/// Passive-ejection settings of an upstream.
#[derive(Clone, Copy)]
pub struct Ejection {
    pub after: u32,
    pub backoff: Duration,
}

impl Replica {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            outstanding: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            probe_down: AtomicBool::new(false),
            ejected_answering: AtomicBool::new(false),
        }
    }

    /// Takes requests: not ejected (or its ejection is over) and not failing its health check.
    pub fn is_up(&self, now: u64) -> bool {
        !self.probe_down.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// A connect failure or broken exchange (`answered`: false) or a 5xx answer (true). Returns
    /// true when this ejects the replica.
    pub fn failed(&self, e: Ejection, now: u64, answered: bool) -> bool {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < e.after.max(1) || self.ejected_until.load(Ordering::Relaxed) > now {
            return false;
        }
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(5);
        let ms = (e.backoff.as_millis() as u64).saturating_mul(1 << k).max(1);
        self.ejected_until.store(now + ms, Ordering::Relaxed);
        self.ejected_answering.store(answered, Ordering::Relaxed);
        true
    }

    /// An answer below 500: the failure streak and the backoff start over.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// The result of an active health check. Returns true when it changed the replica's state.
    pub fn probed(&self, ok: bool) -> bool {
        let was_down = self.probe_down.swap(!ok, Ordering::Relaxed);
        if ok && self.ejected_answering.load(Ordering::Relaxed) {
            was_down
        } else if ok {
            // Reachable again: an ejection for being unreachable ends now.
            let ejected = self.ejected_until.swap(0, Ordering::Relaxed) != 0;
            self.failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            was_down || ejected
        } else {
            !was_down
        }
    }
}

/// One request on a replica: counted in its outstanding requests until dropped.
pub struct InFlight(pub Arc<Replica>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A cheap per-call random number (splitmix64 over a shared counter): only for picking.
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Pick a replica that is up and not in `tried` (a bit per index): of two random candidates the
/// one with fewer outstanding requests; `None` when no replica qualifies.
pub fn pick(replicas: &[Arc<Replica>], tried: u64, now: u64) -> Option<InFlight> {
    let ok = |i: usize| tried & (1 << i) == 0 && replicas[i].is_up(now);
    let n = replicas.len();
    let chosen = match n {
        0 => None,
        1 => ok(0).then_some(0),
        _ => {
            let r = random();
            let a = (r % n as u64) as usize;
            let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
            match (ok(a), ok(b)) {
                (true, true) if replicas[b].outstanding() < replicas[a].outstanding() => Some(b),
                (true, _) => Some(a),
                (false, true) => Some(b),
                (false, false) => (0..n)
                    .filter(|&i| ok(i))
                    .min_by_key(|&i| replicas[i].outstanding()),
            }
        }
    }?;
    let r = &replicas[chosen];
    r.outstanding.fetch_add(1, Ordering::Relaxed);
    Some(InFlight(r.clone()))
}

/// Index of `r` in `replicas` (for the `tried` mask).
pub fn index_of(replicas: &[Arc<Replica>], r: &Arc<Replica>) -> usize {
    replicas.iter().position(|x| Arc::ptr_eq(x, r)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    fn replicas(n: usize) -> Vec<Arc<Replica>> {
        let cfg: UpstreamConfig = toml::from_str("url = \"http://127.0.0.1:1\"").unwrap();
        let tls =
            crate::tls::UpstreamTls::start("t", "upstream", &cfg, Duration::from_secs(1)).unwrap();
        (0..n)
            .map(|i| {
                let url = format!("http://127.0.0.1:{}", 1000 + i);
                Arc::new(Replica::new(Pool::new(&cfg, &url, &tls).unwrap()))
            })
            .collect()
    }

    const E: Ejection = Ejection {
        after: 3,
        backoff: Duration::from_secs(1),
    };

    #[test]
    fn ejected_after_threshold_then_backoff_doubles_and_success_resets() {
        let r = &replicas(1)[0];
        assert!(!r.failed(E, 10, false));
        assert!(!r.failed(E, 10, false));
        assert!(r.failed(E, 10, false), "third consecutive failure ejects");
        assert!(!r.is_up(10) && !r.is_up(1009) && r.is_up(1010));
        // Back after the backoff; one more failure ejects again, for twice as long.
        assert!(r.failed(E, 1010, false));
        assert!(!r.is_up(3009) && r.is_up(3010));
        r.succeeded();
        assert!(r.is_up(3010));
        assert!(!r.failed(E, 3010, false), "the streak started over");
    }

    #[test]
    fn backoff_is_capped_and_a_passing_probe_ends_an_ejection() {
        let r = &replicas(1)[0];
        for _ in 0..40 {
            r.failed(E, 0, false);
            r.ejected_until.store(0, Ordering::Relaxed);
        }
        assert!(r.failed(E, 0, false));
        assert_eq!(r.ejected_until.load(Ordering::Relaxed), 32_000);
        assert!(r.probed(true));
        assert!(r.is_up(0));
        assert!(r.probed(false) && !r.is_up(0));
        assert!(!r.probed(false), "no change");
        assert!(r.probed(true) && r.is_up(0));
    }

    #[test]
    fn a_5xx_ejection_is_not_ended_by_a_passing_health_check() {
        let r = &replicas(1)[0];
        for _ in 0..3 {
            r.failed(E, 0, true);
        }
        assert!(!r.is_up(0));
        assert!(!r.probed(true), "still ejected");
        assert!(!r.is_up(999) && r.is_up(1000));
    }

    #[test]
    fn pick_prefers_fewer_outstanding_and_skips_down_and_tried() {
        let rs = replicas(2);
        let busy: Vec<_> = (0..5)
            .map(|_| {
                InFlight({
                    rs[0].outstanding.fetch_add(1, Ordering::Relaxed);
                    rs[0].clone()
                })
            })
            .collect();
        for _ in 0..20 {
            let p = pick(&rs, 0, 1).unwrap();
            assert!(
                Arc::ptr_eq(&p.0, &rs[1]),
                "two candidates: the idle one wins"
            );
        }
        drop(busy);
        assert_eq!(rs[0].outstanding(), 0);
        for _ in 0..3 {
            rs[1].failed(E, 1, false);
        }
        for _ in 0..20 {
            assert!(Arc::ptr_eq(&pick(&rs, 0, 1).unwrap().0, &rs[0]));
        }
        assert!(pick(&rs, 1, 1).is_none(), "0 tried, 1 ejected: none left");
        assert!(pick(&rs, 0b11, 1).is_none());
        assert!(pick(&[], 0, 1).is_none());
    }
}
