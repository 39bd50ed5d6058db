//! `SecretStore`: the current key behind an `ArcSwapOption`, its freshness, and on-demand
//! refresh (coalesced, for when the NIM rejects the key).

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

use super::{validate_key, Fetched, SecretError};

/// A validated key, ready to inject. Immutable once published.
pub struct KeyMaterial {
    /// Never read: kept so the key is zeroized when the last request holding this version
    /// drops it.
    #[expect(dead_code, reason = "held only so the key is zeroized on drop")]
    secret: SecretString,
    /// The complete upstream header value (`auth_value` with `{key}` filled in), marked
    /// sensitive so it is never printed by `Debug`/tracing.
    pub header_value: HeaderValue,
    pub version: Arc<str>,
    pub fingerprint: Arc<str>,
    /// Monotonic number of this key in the process (each rotation +1).
    pub generation: u64,
    pub loaded_at: Instant,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

pub struct SecretStore {
    current: ArcSwapOption<KeyMaterial>,
    prefix: String,
    suffix: String,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last successful fetch (0 = never).
    last_success: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Failures by `SecretOp` (for metrics).
    failures: [AtomicU64; 3],
    max_staleness: Option<Duration>,
    generation: AtomicU64,
    refresh_wanted: Notify,
    /// Incremented after every fetch attempt; on-demand refreshers wait on it.
    attempts: watch::Sender<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    NotLoaded,
    Stale,
}

impl SecretStore {
    /// `auth_value` is the validated template containing `{key}` once.
    pub fn new(auth_value: &str, max_staleness: Option<Duration>) -> Self {
        let (prefix, suffix) = auth_value.split_once("{key}").unwrap_or((auth_value, ""));
        Self {
            current: ArcSwapOption::empty(),
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
            epoch: Instant::now(),
            last_success: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            failures: Default::default(),
            max_staleness,
            generation: AtomicU64::new(0),
            refresh_wanted: Notify::new(),
            attempts: watch::Sender::new(0),
        }
    }

    /// The key for one request: one atomic load, plus the staleness check.
    pub fn load(&self) -> Result<Arc<KeyMaterial>, Unavailable> {
        let key = self.current.load_full().ok_or(Unavailable::NotLoaded)?;
        if let Some(max) = self.max_staleness {
            if self.since_success().is_some_and(|age| age > max) {
                return Err(Unavailable::Stale);
            }
        }
        Ok(key)
    }

    /// The key regardless of staleness (for metrics).
    pub fn peek(&self) -> Option<Arc<KeyMaterial>> {
        self.current.load_full()
    }

    /// Time since the last successful fetch.
    pub fn since_success(&self) -> Option<Duration> {
        match self.last_success.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(n))),
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn ready(&self) -> Result<(), Unavailable> {
        self.load().map(|_| ())
    }

    /// Validate `f` and, if its version differs from the current key's, publish it.
    /// Returns `Ok(Some(old_version))` on rotation, `Ok(None)` when unchanged.
    pub fn offer(&self, f: Fetched) -> Result<Option<Option<Arc<str>>>, SecretError> {
        validate_key(f.secret.expose_secret())?;
        let value = format!("{}{}{}", self.prefix, f.secret.expose_secret(), self.suffix);
        let mut header_value = HeaderValue::try_from(value)
            .map_err(|_| SecretError::invalid("key does not form a valid header value"))?;
        header_value.set_sensitive(true);
        let fingerprint: Arc<str> = super::fingerprint(&f.secret).into();
        self.mark_success();
        let old = self.current.load_full();
        if let Some(cur) = &old {
            if *cur.version == *f.version && cur.fingerprint == fingerprint {
                return Ok(None);
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.current.store(Some(Arc::new(KeyMaterial {
            secret: f.secret,
            header_value,
            version: f.version.into(),
            fingerprint,
            generation,
            loaded_at: Instant::now(),
        })));
        Ok(Some(old.map(|o| o.version.clone())))
    }

    fn mark_success(&self) {
        let n = (self.epoch.elapsed().as_nanos() as u64).max(1);
        self.last_success.store(n, Ordering::Release);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Count one failed `op` of this store's source.
    pub fn count_failure(&self, op: super::SecretOp) {
        self.failures[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn failures(&self, op: super::SecretOp) -> u64 {
        self.failures[op as usize].load(Ordering::Relaxed)
    }

    pub fn note_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Forget the key (the source said access to it is revoked).
    pub fn evict(&self) -> Option<Arc<KeyMaterial>> {
        self.current.swap(None)
    }

    pub(crate) fn attempt_finished(&self) {
        self.attempts.send_modify(|n| *n += 1);
    }

    pub(crate) async fn refresh_requested(&self) {
        self.refresh_wanted.notified().await;
    }

    /// Ask the refresher for an immediate fetch and wait (up to `wait`) for a key newer than
    /// `seen_generation`. Concurrent callers share one fetch.
    pub async fn refresh_newer_than(
        &self,
        seen_generation: u64,
        wait: Duration,
    ) -> Option<Arc<KeyMaterial>> {
        let newer = |s: &Self| s.load().ok().filter(|k| k.generation > seen_generation);
        if let Some(k) = newer(self) {
            return Some(k);
        }
        let mut rx = self.attempts.subscribe();
        rx.mark_unchanged();
        self.refresh_wanted.notify_one();
        let _ = tokio::time::timeout(wait, rx.changed()).await;
        newer(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(k: &str, v: &str) -> Fetched {
        Fetched {
            secret: SecretString::from(k.to_string()),
            version: v.into(),
            vault_request_id: None,
            vault_accessor: None,
        }
    }

    #[test]
    fn validates_then_swaps_once() {
        let s = SecretStore::new("Bearer {key}", None);
        assert_eq!(s.load().unwrap_err(), Unavailable::NotLoaded);
        assert!(s.offer(fetched("", "1")).is_err());
        assert!(s.offer(fetched("a b", "1")).is_err());
        assert_eq!(s.offer(fetched("nvapi-1", "1")).unwrap(), Some(None));
        let k = s.load().unwrap();
        assert_eq!(k.header_value.to_str().unwrap(), "Bearer nvapi-1");
        assert!(k.header_value.is_sensitive());
        assert!(!format!("{k:?}").contains("nvapi-1"));
        assert_eq!(s.offer(fetched("nvapi-1", "1")).unwrap(), None);
        assert!(s.offer(fetched("bad\nkey", "2")).is_err());
        assert_eq!(s.load().unwrap().generation, 1);
        assert_eq!(
            s.offer(fetched("nvapi-2", "2")).unwrap(),
            Some(Some(Arc::from("1")))
        );
        assert_eq!(s.load().unwrap().generation, 2);
        // A request that loaded the old key keeps it.
        assert_eq!(k.header_value.to_str().unwrap(), "Bearer nvapi-1");
    }

    #[test]
    fn stale_after_max_staleness() {
        let s = SecretStore::new("{key}", Some(Duration::from_millis(30)));
        s.offer(fetched("k1", "1")).unwrap();
        assert!(s.load().is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(s.load().unwrap_err(), Unavailable::Stale);
        s.offer(fetched("k1", "1")).unwrap();
        assert!(s.load().is_ok());
    }
}
