//! The anchoring task: every `audit.anchor_interval`, if the synced head moved since the last
//! anchor written, write it. It runs beside the request path and never in it: a slow or failing
//! store delays only the next anchor. A failure is logged (a warning when it is new), counted in
//! `nimgate_audit_anchor_writes_total{result="error"}`, recorded once per outage as an
//! `anchor_failure` record, and retried at the next tick. A successful write is not a record:
//! the record would move the head it just anchored, so an idle gateway would anchor forever;
//! the store itself keeps the history (Vault versions). At clean shutdown, after the trail's
//! final flush, `finish` writes the last head once more.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

use super::{Anchor, Store};
use crate::audit::{Audit, Event, Record};
use crate::config::Config;

/// The final write at shutdown waits at most this long.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

struct Ticker {
    store: Arc<Store>,
    audit: Audit,
    /// (chain, seq) of the last anchor written.
    last: Option<(Arc<str>, u64)>,
    /// The error of the outage in progress.
    failing: Option<String>,
}

impl Ticker {
    /// Write the synced head if it moved. `records`: audit what happened (not after the final
    /// flush, when a record would move the head past the last anchor).
    async fn once(&mut self, records: bool) {
        let Some(head) = self.audit.durable_head() else {
            return;
        };
        if self.last.as_ref() == Some(&(head.chain.clone(), head.seq)) {
            return;
        }
        let anchor = Anchor::of(&head, SystemTime::now());
        let result = self.store.put(&anchor).await;
        let stats = self.audit.anchor_stats();
        match result {
            Ok(()) => {
                if let Some(s) = stats {
                    s.writes.fetch_add(1, Ordering::Relaxed);
                    s.seq.store(head.seq, Ordering::Relaxed);
                }
                if self.failing.take().is_some() {
                    tracing::info!(store = %self.store.describe(), "audit anchor writes succeed again");
                }
                tracing::debug!(chain = %head.chain, seq = head.seq, "audit chain head anchored");
                self.last = Some((head.chain, head.seq));
            }
            Err(e) => {
                if let Some(s) = stats {
                    s.errors.fetch_add(1, Ordering::Relaxed);
                }
                let new = self.failing.as_deref() != Some(e.as_str());
                if new {
                    tracing::warn!(error = %e, store = %self.store.describe(), seq = head.seq, "audit anchor write failed: retried at the next tick");
                } else {
                    tracing::debug!(error = %e, "audit anchor write failed again");
                }
                if self.failing.is_none() && records {
                    let mut r = Record::event(Event::AnchorFailure);
                    r.detail = Some(self.store.describe());
                    r.reason = Some(e.clone());
                    let _ = self.audit.record(r).await;
                }
                self.failing = Some(e);
            }
        }
        if records {
            for r in self.store.take_events().await {
                let _ = self.audit.record(r).await;
            }
        }
    }
}

/// The running task; `finish` after the trail's final flush.
pub struct Anchorer {
    task: tokio::task::JoinHandle<Ticker>,
}

/// Start anchoring if `audit.anchor` is set (`Ok(None)`: off, nothing runs). The store is built
/// now (a password or CA file that cannot be read is a start-up error); nothing is sent yet.
pub fn start(
    cfg: &Config,
    audit: &Audit,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<Anchorer>, String> {
    if cfg.audit.anchor.is_none() {
        return Ok(None);
    }
    let Some(stats) = audit.anchor_stats() else {
        return Ok(None);
    };
    let store = Arc::new(Store::for_config(cfg)?);
    stats.on.store(true, Ordering::Relaxed);
    tracing::info!(store = %store.describe(), interval = ?cfg.audit.anchor_interval, "audit chain-head anchoring on");
    let mut t = Ticker {
        store,
        audit: audit.clone(),
        last: None,
        failing: None,
    };
    let every = cfg.audit.anchor_interval;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => t.once(true).await,
                _ = stop.changed() => return t,
            }
        }
    });
    Ok(Some(Anchorer { task }))
}

impl Anchorer {
    /// After the trail's final flush: stop ticking and anchor the last head.
    pub async fn finish(self) {
        let Ok(mut t) = self.task.await else { return };
        if tokio::time::timeout(FINISH_TIMEOUT, t.once(false))
            .await
            .is_err()
        {
            tracing::warn!(store = %t.store.describe(), "final audit anchor write timed out");
        }
    }
}
