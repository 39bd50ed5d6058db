//! Reloading TLS state from files: the value built from a set of files sits behind one
//! `ArcSwap` (`Reloading`); a task re-reads the files every `server.tls_reload_interval` and
//! compares their contents (a SHA-256 over all of them: no copy of a key is kept, and no mtime is
//! trusted — a Secret update swaps a symlink, `cp -p` keeps the old mtime). A changed set
//! is built whole — files are read once and built from those same bytes — and swapped in with
//! one `store`; a set that fails is refused (logged once per distinct content and reason, never
//! with key material; counted) and retried each poll, so a certificate that is not valid yet is
//! taken once it is. The task holds only a `Weak` to its state: it ends when the owner (the
//! listener's settings, an upstream) is dropped, e.g. after a config reload replaced it.
//!
//! Reads use `secret::file::read_capped` (non-blocking open, regular files of at most 1 MiB) on
//! a blocking thread under a timeout; while a read is stuck (a hung network filesystem), polls
//! are skipped instead of piling up threads.

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use zeroize::Zeroizing;

use super::TlsError;

/// The contents of a watched set of files, in the order they were given.
pub type Contents = [Zeroizing<Vec<u8>>];

/// Reloads of one TLS unit (the listener, or one upstream), for `/metrics`.
pub struct ReloadStats {
    /// `server` or `upstream:<name>`: the `what` label.
    pub what: Arc<str>,
    pub applied: AtomicU64,
    pub refused: AtomicU64,
}

/// A value rebuilt from files, and its reload counters.
pub struct Reloading<T> {
    pub current: ArcSwap<T>,
    pub stats: ReloadStats,
}

/// What a successful build says in the log: public certificate facts; `insecure` logs at WARN.
pub struct Summary {
    pub text: String,
    pub insecure: bool,
}

type Build<T> = Box<dyn Fn(&Contents, SystemTime) -> Result<(T, Summary), TlsError> + Send + Sync>;

/// The files of one unit and how to build its value from their contents.
pub struct Watch<T> {
    pub files: Vec<(String, PathBuf)>,
    pub build: Build<T>,
}

/// Read every file; an error names its field.
fn read_all(files: &[(String, PathBuf)]) -> Result<Vec<Zeroizing<Vec<u8>>>, TlsError> {
    files
        .iter()
        .map(|(field, path)| {
            crate::secret::file::read_capped(path)
                .map(|(bytes, _mode)| bytes)
                .map_err(|e| TlsError::new(field, e.message))
        })
        .collect()
}

fn digest(contents: &Contents) -> [u8; 32] {
    let mut h = Sha256::new();
    for c in contents {
        h.update((c.len() as u64).to_be_bytes());
        h.update(&**c);
    }
    h.finalize().into()
}

impl<T: Send + Sync + 'static> Watch<T> {
    /// Read and build now (start-up: an error stops the start), then, with a runtime and any
    /// files, poll every `interval` in a task of its own.
    pub fn start(self, what: &str, interval: Duration) -> Result<Arc<Reloading<T>>, TlsError> {
        let contents = read_all(&self.files)?;
        let (value, summary) = (self.build)(&contents, SystemTime::now())?;
        if summary.insecure {
            tracing::warn!(what, detail = %summary.text, "upstream certificates are NOT verified (insecure_skip_verify = true)");
        }
        let state = Arc::new(Reloading {
            current: ArcSwap::from_pointee(value),
            stats: ReloadStats {
                what: what.into(),
                applied: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            },
        });
        if !self.files.is_empty() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(self.run(Arc::downgrade(&state), digest(&contents), interval));
            }
        }
        Ok(state)
    }

    /// Read and build once, nothing kept (`nimgate check`).
    pub fn check(&self) -> Result<(), TlsError> {
        (self.build)(&read_all(&self.files)?, SystemTime::now()).map(drop)
    }

    async fn run(self, state: Weak<Reloading<T>>, mut applied: [u8; 32], interval: Duration) {
        let this = Arc::new(self);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // The last refusal logged: (contents, reason); the same again is not logged again.
        let mut refused: Option<(Option<[u8; 32]>, TlsError)> = None;
        let mut stuck: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else {
                return;
            };
            if stuck.as_ref().is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let files = this.clone();
            let read = tokio::task::spawn_blocking(move || {
                let _ = tx.send(read_all(&files.files));
            });
            let contents = match tokio::time::timeout(crate::secret::file::READ_TIMEOUT, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => continue,
                Err(_) => {
                    stuck = Some(read);
                    Err(TlsError::new(
                        &this.files[0].0,
                        "reading the certificate files timed out",
                    ))
                }
            };
            let sum = contents.as_ref().ok().map(|c| digest(c));
            if sum == Some(applied) {
                refused = None;
                continue;
            }
            let built = contents.and_then(|c| (this.build)(&c, SystemTime::now()));
            let what = &*state.stats.what;
            match built {
                Ok((value, summary)) => {
                    state.current.store(Arc::new(value));
                    state.stats.applied.fetch_add(1, Ordering::Relaxed);
                    applied = sum.unwrap_or(applied);
                    refused = None;
                    if summary.insecure {
                        tracing::warn!(what, detail = %summary.text, "TLS files reloaded: upstream certificates are NOT verified (insecure_skip_verify = true)");
                    } else {
                        tracing::info!(what, detail = %summary.text, "TLS files reloaded: new connections use them");
                    }
                }
                Err(e) => {
                    if refused.as_ref() != Some(&(sum, e.clone())) {
                        state.stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(what, field = %e.field, reason = %e.message, "TLS reload refused: keeping the current certificates");
                        refused = Some((sum, e));
                    }
                }
            }
        }
    }
}
