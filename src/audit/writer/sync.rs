//! Durability: the `fsync = "interval"` syncer thread, and when the writer thread wakes to sync.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Shared, Sink, Writer, RETRY_TICK};
use crate::config::FsyncPolicy;

/// The periodic-fsync thread: syncs the files it is handed, reports failures like the writer.
pub(super) fn spawn_syncer(shared: Arc<Shared>) -> Option<std::sync::mpsc::Sender<Arc<File>>> {
    let (tx, rx) = std::sync::mpsc::channel::<Arc<File>>();
    std::thread::Builder::new()
        .name("audit-fsync".into())
        .spawn(move || {
            while let Ok(f) = rx.recv() {
                if let Err(e) = f.sync_data() {
                    tracing::error!(error = %e, "audit fsync failed");
                    shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    shared.healthy.store(false, Ordering::Release);
                }
            }
        })
        .ok()?;
    Some(tx)
}

impl Writer {
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
            if tx.send(f.clone()).is_ok() {
                self.dirty = false;
                self.last_sync = Instant::now();
                return;
            }
        }
        self.sync();
    }

    pub(crate) fn sync(&mut self) {
        if let Sink::File { file: Some(f), .. } = &self.sink {
            if let Err(e) = f.sync_data() {
                tracing::error!(error = %e, "audit fsync failed");
                self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                self.shared.healthy.store(false, Ordering::Release);
                return;
            }
        }
        self.dirty = false;
        self.last_sync = Instant::now();
    }
}
