//! The audit trail: every use of the NIM key, every denied request and every secret-source event,
//! as hash-chained JSON lines (`writer`), committed in groups by the runtime thread about to park
//! or by the dedicated writer thread (`commit`); the synced chain head optionally anchored
//! outside the trail (`anchor`), so that a cut tail shows in `verify`.
//!
//! `Audit` is the `AuditSink` seam request handlers use:
//! - `record_use` waits until the writer has written the record (fail closed: `Err` → 503, the
//!   key is not sent);
//! - `record` (denied, source events) waits for queue room, bounded by `max_wait`;
//! - `record_done` never waits (it is already accounted for by its `use`).

pub mod anchor;
mod chainkey;
mod change;
mod commit;
mod encode;
mod event;
mod queue;
pub mod record;
pub mod verify;
mod writer;

pub use chainkey::ChainKey;
pub use change::{capped_list, ConfigChange, Diff};
pub use commit::on_thread_park;
pub use event::Event;
pub use record::{Record, Usage};
pub use writer::{rotated_name, Head, Shared, GENESIS};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

use crate::config::AuditConfig;
use writer::Msg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditError {
    /// The queue stayed full for `max_wait`, or the record was not written in time.
    Timeout,
    /// The sink failed to write.
    WriteFailed,
}

#[derive(Clone)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    committer: Arc<commit::Committer>,
    shared: Arc<Shared>,
    max_wait: Duration,
    /// Queue permits only `use` (and `record`) may take: `record_unreserved` leaves them.
    reserve: usize,
    /// `audit.queue`: all permits.
    capacity: usize,
}

/// How `record_use` left its record.
enum Queued<'a> {
    /// No audit trail.
    Off,
    Refused(AuditError),
    /// Queued; the acknowledgement and the deadline for it.
    Ack(&'a Inner, oneshot::Receiver<bool>, Instant),
    /// The queue is full: wait for room (boxed: rare, and the record is large).
    NoRoom(&'a Inner, Box<Record>, Instant),
}

impl Drop for Inner {
    /// The last handle gone: the writer drains what is queued and ends.
    fn drop(&mut self) {
        self.committer.queue.close();
    }
}

impl Inner {
    /// Take one queue permit (held by the record until it is written or refused), waiting up to
    /// `max_wait`.
    async fn acquire(&self) -> Result<(), AuditError> {
        tokio::time::timeout(self.max_wait, self.shared.permits.acquire())
            .await
            .map_err(|_| AuditError::Timeout)?
            .map_err(|_| AuditError::WriteFailed)?
            .forget();
        Ok(())
    }

    /// `record_use` when the queue had no room: wait for a permit (up to `max_wait`), then queue.
    async fn push_use_waiting(
        &self,
        rec: Box<Record>,
    ) -> Result<oneshot::Receiver<bool>, AuditError> {
        self.acquire().await?;
        let (ack_tx, ack_rx) = oneshot::channel();
        self.push_held(*rec, Some(ack_tx))?;
        Ok(ack_rx)
    }

    /// Queue a record that holds a permit taken by the caller (`ack`: someone waits for it, so
    /// it is urgent); a closed queue gives the permit back.
    fn push_held(&self, rec: Record, ack: Option<oneshot::Sender<bool>>) -> Result<(), AuditError> {
        let urgent = ack.is_some();
        let m = Msg::Rec {
            rec,
            ack,
            permit: true,
        };
        if self.committer.queue.push(m, urgent) {
            Ok(())
        } else {
            self.shared.permits.add_permits(1);
            Err(AuditError::WriteFailed)
        }
    }
}

impl Audit {
    /// No audit trail (`audit.enabled = false`, and tests of code that takes an `Audit`).
    pub fn off() -> Self {
        Self { inner: None }
    }

    /// Start the writer thread. An unopenable audit file is a start-up error.
    pub fn start(
        cfg: &AuditConfig,
    ) -> std::io::Result<(Self, Option<std::thread::JoinHandle<()>>)> {
        if !cfg.enabled {
            tracing::warn!("audit trail DISABLED (audit.enabled = false): key use is not recorded");
            return Ok((Self::off(), None));
        }
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            permits: Semaphore::new(cfg.queue),
            records: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            thread_batches: AtomicU64::new(0),
            inline_batches: AtomicU64::new(0),
            low_disk: AtomicBool::new(false),
            write_latency: crate::hist::Histogram::new(crate::hist::SECONDS),
            durable: std::sync::Mutex::new(None),
            anchor: anchor::Stats::default(),
        });
        let (committer, handle) = commit::Committer::start(writer::open(cfg, shared.clone())?)?;
        let inner = Arc::new(Inner {
            committer,
            shared,
            max_wait: cfg.max_wait,
            reserve: cfg.queue / 4,
            capacity: cfg.queue,
        });
        Ok((Self { inner: Some(inner) }, Some(handle)))
    }

    /// Whether the last write succeeded (for `/readyz`).
    pub fn healthy(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|i| i.shared.healthy.load(Ordering::Acquire))
    }

    /// (records written, write errors) for metrics.
    pub fn counters(&self) -> (u64, u64) {
        self.inner.as_ref().map_or((0, 0), |i| {
            (
                i.shared.records.load(Ordering::Relaxed),
                i.shared.write_errors.load(Ordering::Relaxed),
            )
        })
    }

    /// Batches written (by the writer thread, by runtime threads at park) for metrics.
    pub fn batches(&self) -> (u64, u64) {
        self.inner.as_ref().map_or((0, 0), |i| {
            (
                i.shared.thread_batches.load(Ordering::Relaxed),
                i.shared.inline_batches.load(Ordering::Relaxed),
            )
        })
    }

    /// Records holding queue room (queued or being written), for metrics.
    pub fn queue_depth(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| {
            i.capacity
                .saturating_sub(i.shared.permits.available_permits())
        })
    }

    /// The newest record known to be synced (with `audit.anchor` set): what may be anchored.
    pub fn durable_head(&self) -> Option<Head> {
        let i = self.inner.as_ref()?;
        i.shared.durable.lock().ok()?.clone()
    }

    /// Anchoring counters (none without an audit trail).
    pub fn anchor_stats(&self) -> Option<&anchor::Stats> {
        self.inner.as_ref().map(|i| &i.shared.anchor)
    }

    /// The batch write latency histogram (none without an audit trail).
    pub fn write_latency(&self) -> Option<&crate::hist::Histogram> {
        self.inner.as_ref().map(|i| &i.shared.write_latency)
    }

    /// Write a `use` record; the future resolves once `write(2)` has returned for it. The record
    /// is queued by the call itself when a queue permit is free (the usual case), so the future
    /// holds the acknowledgement, not the record: futures are moved by copying, and this one sits
    /// inside every request's.
    pub fn record_use(
        &self,
        rec: Record,
    ) -> impl std::future::Future<Output = Result<(), AuditError>> + Send + '_ {
        let queued = self.queue_use(rec);
        async move {
            let (i, mut ack_rx, deadline) = match queued {
                Queued::Off => return Ok(()),
                Queued::Refused(e) => return Err(e),
                Queued::Ack(i, rx, deadline) => (i, rx, deadline),
                Queued::NoRoom(i, rec, deadline) => {
                    (i, Box::pin(i.push_use_waiting(rec)).await?, deadline)
                }
            };
            // Normally the runtime's park hook commits it; if this thread stays busy (or the
            // runtime has no hook), commit it ourselves (or wake the writer thread) after a
            // short wait.
            let first = tokio::time::timeout(queue::KICK_AFTER, &mut ack_rx).await;
            let acked = if let Ok(r) = first {
                Ok(r)
            } else {
                i.committer.commit_or_kick();
                tokio::time::timeout_at(deadline.into(), ack_rx).await
            };
            match acked {
                Ok(Ok(true)) => Ok(()),
                Ok(_) => Err(AuditError::WriteFailed),
                Err(_) => Err(AuditError::Timeout),
            }
        }
    }

    /// The synchronous half of `record_use`: queue the record if a permit is free.
    fn queue_use(&self, rec: Record) -> Queued<'_> {
        let Some(i) = &self.inner else {
            return Queued::Off;
        };
        if !i.shared.healthy.load(Ordering::Acquire) && i.shared.permits.available_permits() == 0 {
            return Queued::Refused(AuditError::WriteFailed);
        }
        let deadline = Instant::now() + i.max_wait;
        match i.shared.permits.try_acquire() {
            Ok(p) => {
                p.forget();
                let (ack_tx, ack_rx) = oneshot::channel();
                match i.push_held(rec, Some(ack_tx)) {
                    Ok(()) => Queued::Ack(i, ack_rx, deadline),
                    Err(e) => Queued::Refused(e),
                }
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                Queued::NoRoom(i, Box::new(rec), deadline)
            }
            Err(tokio::sync::TryAcquireError::Closed) => Queued::Refused(AuditError::WriteFailed),
        }
    }

    /// Queue a record that needs no acknowledgement but must not be dropped (denied, source
    /// events): waits for queue room up to `max_wait`.
    pub async fn record(&self, rec: Record) -> Result<(), AuditError> {
        let Some(i) = &self.inner else { return Ok(()) };
        i.acquire().await?;
        i.push_held(rec, None)
    }

    /// Queue a record an unauthenticated peer caused (`denied`): never waits, and refuses once
    /// the queue is down to the quarter reserved for `use` records or the audit volume has less
    /// than `audit.min_free_bytes` free, so such records are shed (and counted by the caller)
    /// before a keyed request could get 503.
    pub fn record_unreserved(&self, rec: Record) -> Result<(), AuditError> {
        let Some(i) = &self.inner else { return Ok(()) };
        if i.shared.permits.available_permits() <= i.reserve
            || i.shared.low_disk.load(Ordering::Acquire)
        {
            return Err(AuditError::Timeout);
        }
        i.shared
            .permits
            .try_acquire()
            .map_err(|_| AuditError::Timeout)?
            .forget();
        i.push_held(rec, None)
    }

    /// Queue a `done` record (never waits: its `use` already held queue room).
    pub fn record_done(&self, rec: Record) {
        if let Some(i) = &self.inner {
            let _ = i.committer.queue.push(
                Msg::Rec {
                    rec,
                    ack: None,
                    permit: false,
                },
                false,
            );
        }
    }

    /// Write all queued records and sync; `true` if the sink is healthy.
    pub async fn flush(&self) -> bool {
        let Some(i) = &self.inner else { return true };
        let (tx, rx) = oneshot::channel();
        if !i.committer.queue.push(Msg::Flush(tx), true) {
            return false;
        }
        i.committer.queue.kick();
        rx.await.unwrap_or(false)
    }

    /// At the end of shutdown, after `flush`: give up the trail's `flock` now rather than when
    /// the writer thread ends (with the process), so a gateway started next on the same file
    /// (a restart in the same process) may take it.
    pub fn release_lock(&self) {
        if let Some(i) = &self.inner {
            i.committer.release_lock();
        }
    }
}
