//! The background task that keeps the store's key fresh: fetch on a schedule and on demand
//! (rate-limited, coalesced), back off on errors, record every source event in the audit trail.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

use super::{SecretErrorKind, SecretOp, SecretSource, SecretStore};
use crate::audit::{Audit, Event, Record};

/// Least time between two on-demand (NIM said 401/403) fetches.
const ON_DEMAND_MIN_GAP: Duration = Duration::from_secs(2);

/// Exponential backoff with ±20 % jitter: 1 s doubling to `max`.
pub struct Backoff {
    next: Duration,
    max: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        Self {
            next: Duration::from_secs(1),
            max,
            rng: u64::from_le_bytes(seed) | 1,
        }
    }
    pub fn reset(&mut self) {
        self.next = Duration::from_secs(1);
    }
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        // xorshift64 for jitter
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng % 401) as f64 / 1000.0 + 0.8; // 0.8 ..= 1.2
        base.mul_f64(frac)
    }
}

pub async fn run(
    upstream: Arc<str>,
    mut src: Box<dyn SecretSource>,
    store: Arc<SecretStore>,
    audit: Audit,
    mut shutdown: watch::Receiver<bool>,
) {
    let kind = src.kind();
    let mut backoff = Backoff::new(Duration::from_secs(60));
    let mut last_on_demand: Option<Instant> = None;
    let mut last_failure: Option<String> = None;
    loop {
        let span = crate::telemetry::spans::background("secret fetch", kind);
        let result = src.fetch().instrument(span.clone()).await;
        if result.is_err() {
            crate::telemetry::spans::failed(&span, "fetch_failed");
        }
        drop(span);
        for mut ev in src.drain_events() {
            ev.upstream.get_or_insert_with(|| upstream.clone());
            if ev.reason.as_deref() == Some("failure") {
                match ev.event {
                    Event::VaultLogin => store.count_failure(SecretOp::Login),
                    Event::VaultRenew => store.count_failure(SecretOp::Renew),
                    _ => {}
                }
            }
            let _ = audit.record(ev).await;
        }
        let delay = match result.and_then(|f| {
            let version = f.version.clone();
            let ids = (f.vault_request_id.clone(), f.vault_accessor.clone());
            store.offer(f).map(|r| (r, version, ids))
        }) {
            Ok((rotated, version, (vault_request_id, vault_accessor))) => {
                backoff.reset();
                last_failure = None;
                let key = store.peek();
                let fp = key.as_ref().map(|k| k.fingerprint.clone());
                match rotated {
                    Some(old) => {
                        tracing::info!(source = kind, key_version = %version, old_key_version = old.as_deref().unwrap_or("none"), "NIM key loaded");
                        let mut r = Record::event(Event::SecretRotate);
                        r.source = Some(kind);
                        r.upstream = Some(upstream.clone());
                        r.key_version = Some(version.into());
                        r.key_fingerprint = fp;
                        r.old_key_version = old;
                        r.vault_request_id = vault_request_id;
                        r.vault_accessor = vault_accessor;
                        let _ = audit.record(r).await;
                    }
                    None if kind != "file" => {
                        let mut r = Record::event(Event::SecretFetch);
                        r.source = Some(kind);
                        r.upstream = Some(upstream.clone());
                        r.key_version = Some(version.into());
                        r.key_fingerprint = fp;
                        r.vault_request_id = vault_request_id;
                        r.vault_accessor = vault_accessor;
                        let _ = audit.record(r).await;
                    }
                    None => {}
                }
                src.interval()
            }
            Err(e) => {
                store.count_failure(SecretOp::Fetch);
                let n = store.note_failure();
                let keeping = store.peek().is_some() && e.kind != SecretErrorKind::Forbidden;
                // The same failure again (a file source re-reads every poll) is logged at debug
                // level and not re-audited; a new kind of failure is.
                if last_failure.as_deref() == Some(e.message.as_str()) {
                    tracing::debug!(source = kind, error = %e.message, consecutive_failures = n, "NIM key fetch failed again");
                } else {
                    tracing::error!(source = kind, error = %e.message, consecutive_failures = n, keeping_cached_key = keeping, "NIM key fetch failed");
                    let mut r = Record::event(Event::SecretFailure);
                    r.source = Some(kind);
                    r.upstream = Some(upstream.clone());
                    r.reason = Some(format!("{:?}", e.kind).to_lowercase());
                    r.detail = Some(e.message.clone());
                    let _ = audit.record(r).await;
                    last_failure = Some(e.message.clone());
                }
                if e.kind == SecretErrorKind::Forbidden {
                    if let Some(old) = store.evict() {
                        tracing::error!(source = kind, key_version = %old.version, "access to the NIM key was revoked: cached key evicted");
                        let mut r = Record::event(Event::SecretEvict);
                        r.source = Some(kind);
                        r.upstream = Some(upstream.clone());
                        r.key_version = Some(old.version.clone());
                        r.key_fingerprint = Some(old.fingerprint.clone());
                        r.reason = Some("forbidden".into());
                        let _ = audit.record(r).await;
                    }
                }
                backoff.next_delay().min(src.interval())
            }
        };
        store.attempt_finished();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = store.refresh_requested() => {
                let since = last_on_demand.map(|t| t.elapsed());
                if let Some(gap) = since.filter(|s| *s < ON_DEMAND_MIN_GAP) {
                    tokio::time::sleep(ON_DEMAND_MIN_GAP.saturating_sub(gap)).await;
                }
                last_on_demand = Some(Instant::now());
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_max_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(8));
        let d: Vec<f64> = (0..6).map(|_| b.next_delay().as_secs_f64()).collect();
        for (got, want) in d.iter().zip([1.0, 2.0, 4.0, 8.0, 8.0, 8.0]) {
            assert!(
                *got >= want * 0.8 - 1e-9 && *got <= want * 1.2 + 1e-9,
                "{got} vs {want}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
