//! Durability: the `fsync = "interval"` syncer thread, when the writer thread wakes to sync, and
//! the synced chain head (`Head`) each successful sync publishes for chain-head anchoring (only
//! with `audit.anchor` set): a head is published only once the records up to it are on disk
//! (`fdatasync` returned, or under `fsync = "batch"` the batch's own sync; standard output: once
//! written and flushed to the pipe, as far as nimgate can know), so an anchor never names a
//! record a crash could still take away.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Shared, Sink, Writer, RETRY_TICK};
use crate::config::FsyncPolicy;

/// A chain head: the `chain` id, the `seq` of its newest record and that record's link (the
/// next record's `prev_hash`: SHA-256, or HMAC-SHA256 for a keyed chain, of its line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub chain: Arc<str>,
    pub seq: u64,
    pub hash: String,
}

/// What the syncer thread is handed: the file to sync, and the head that is durable after it.
pub(super) type SyncJob = (Arc<File>, Option<Head>);

impl Shared {
    fn publish(&self, head: Head) {
        if let Ok(mut d) = self.durable.lock() {
            *d = Some(head);
        }
    }
}

/// The periodic-fsync thread: syncs the files it is handed, reports failures like the writer.
pub(super) fn spawn_syncer(shared: Arc<Shared>) -> Option<std::sync::mpsc::Sender<SyncJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
    std::thread::Builder::new()
        .name("audit-fsync".into())
        .spawn(move || {
            while let Ok((f, head)) = rx.recv() {
                if let Err(e) = f.sync_data() {
                    tracing::error!(error = %e, "audit fsync failed");
                    shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    shared.healthy.store(false, Ordering::Release);
                } else if let Some(h) = head {
                    shared.publish(h);
                }
            }
        })
        .ok()?;
    Some(tx)
}

impl Writer {
    /// The head as written so far (`None` before the first record, or without anchoring).
    fn head(&self) -> Option<Head> {
        if self.cfg.anchor.is_none() || self.chain.next_seq == 0 {
            return None;
        }
        Some(Head {
            chain: self.chain_id.clone(),
            seq: self.chain.next_seq - 1,
            hash: self.chain.prev.clone(),
        })
    }

    /// Everything written is synced now: publish the head (with anchoring on).
    pub(super) fn publish_head(&self) {
        if let Some(h) = self.head() {
            self.shared.publish(h);
        }
    }

    /// How long the writer thread may sleep: a retry tick with records pending, else until the
    /// next interval sync is due.
    pub(crate) fn idle_timeout(&self) -> Duration {
        if !self.pending.is_empty() {
            RETRY_TICK
        } else if self.cfg.fsync == FsyncPolicy::Interval {
            if self.dirty {
                self.cfg
                    .fsync_interval
                    .saturating_sub(self.last_sync.elapsed())
            } else {
                // Runtime threads may dirty the file without waking this thread.
                self.cfg.fsync_interval
            }
        } else {
            Duration::from_secs(3600)
        }
    }

    /// `fsync = "interval"`: start a sync when one is due.
    pub(crate) fn sync_if_due(&mut self) {
        if self.dirty
            && self.cfg.fsync == FsyncPolicy::Interval
            && self.last_sync.elapsed() >= self.cfg.fsync_interval
        {
            self.sync_in_background();
        }
    }

    /// `fsync = "interval"`: hand the file to the syncer thread, so that a slow `fdatasync`
    /// never holds up the acknowledgements of the records behind it.
    fn sync_in_background(&mut self) {
        if let (Sink::File { file: Some(f), .. }, Some(tx)) = (&self.sink, &self.syncer) {
            if tx.send((f.clone(), self.head())).is_ok() {
                self.dirty = false;
                self.last_sync = Instant::now();
                return;
            }
        }
        self.sync();
    }

    pub(crate) fn sync(&mut self) {
        match &self.sink {
            Sink::File { file: Some(f), .. } => {
                if let Err(e) = f.sync_data() {
                    tracing::error!(error = %e, "audit fsync failed");
                    self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.shared.healthy.store(false, Ordering::Release);
                    return;
                }
                self.publish_head();
            }
            // Closed after a failed write: what it held is synced with the next file handle
            // (`fdatasync` covers the inode), so nothing is published now.
            Sink::File { file: None, .. } => {}
            Sink::Stdout => self.publish_head(),
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }
}
