//! Who commits queued records: the runtime thread about to park, or the writer thread.
//!
//! A request's `use` record must be written before the key leaves for the NIM. Handing each one
//! to another thread and back costs two context switches and a wake-up per request, more than the
//! write itself, so a runtime thread that has queued `use` records commits them itself in
//! `on_thread_park`, after it has run every ready task: one `write(2)` for the whole tick (group
//! commit), the same thing nginx does with its access log. The writer thread still owns whatever
//! may block for long: `fsync = "batch"` and interval syncs, rotation, standard output, retries
//! after a failed write, `flush`, and records nobody waits for when no `use` comes along.
//! Whoever commits holds the `Writer` lock, so the hash chain is extended by one thread at a time;
//! the park hook only ever `try_lock`s it and wakes the writer thread when it is busy.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use super::queue::{Queue, Wait, PENDING};
use super::writer::Writer;

pub(crate) struct Committer {
    pub queue: Queue,
    writer: Mutex<Writer>,
    inline: bool,
}

/// Committers for the park hook to look at (one per running audit trail).
static REGISTRY: Mutex<Vec<Weak<Committer>>> = Mutex::new(Vec::new());

/// Runtime hook (`tokio::runtime::Builder::on_thread_park`): commit queued `use` records on this
/// thread (or wake the writer thread when that is not possible).
pub fn on_thread_park() {
    if !PENDING.swap(false, Ordering::AcqRel) {
        return;
    }
    let Ok(reg) = REGISTRY.try_lock() else {
        PENDING.store(true, Ordering::Release);
        return;
    };
    for c in reg.iter().filter_map(Weak::upgrade) {
        if c.queue.take_urgent() {
            c.commit_or_kick();
        }
    }
}

impl Committer {
    /// Write the `start` record, register a committer and start its writer thread.
    pub fn start(mut writer: Writer) -> std::io::Result<(Arc<Self>, std::thread::JoinHandle<()>)> {
        let mut start = writer.take_pending();
        writer.commit(&mut start, false);
        let c = Arc::new(Self {
            queue: Queue::new(),
            inline: writer.inline_capable(),
            writer: Mutex::new(writer),
        });
        if let Ok(mut reg) = REGISTRY.lock() {
            reg.retain(|w| w.strong_count() > 0);
            reg.push(Arc::downgrade(&c));
        }
        let thread_c = c.clone();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || thread_c.run())?;
        Ok((c, handle))
    }

    /// Drop the writer's lock on the trail (`Audit::release_lock`).
    pub fn release_lock(&self) {
        if let Ok(mut w) = self.writer.lock() {
            w.release_lock();
        }
    }

    /// Commit what is queued on the calling (runtime) thread if this sink allows it and the
    /// writer thread is not busy; else wake the writer thread. Called by the park hook, and by a
    /// request whose `use` is still unwritten after `KICK_AFTER` (a runtime thread so busy that
    /// it does not park).
    pub fn commit_or_kick(&self) {
        if !(self.inline && self.commit_here()) {
            self.queue.kick();
        }
    }

    /// Commit everything queued on the calling thread; `false` if the writer thread holds the
    /// lock (it will pick the records up).
    fn commit_here(&self) -> bool {
        let Ok(mut w) = self.writer.try_lock() else {
            return false;
        };
        let mut batch = w.take_scratch();
        self.queue.take(&mut batch);
        w.commit_all(&mut batch, true);
        w.give_scratch(batch);
        if w.has_pending() {
            self.queue.hand_over();
        }
        true
    }

    /// The writer thread.
    fn run(&self) {
        loop {
            let idle = match self.writer.lock() {
                Ok(w) => w.idle_timeout(),
                Err(_) => return,
            };
            let closed = self.queue.wait(idle) == Wait::Closed;
            let Ok(mut w) = self.writer.lock() else {
                return;
            };
            let mut batch = w.take_pending();
            let closed = self.queue.take(&mut batch) || closed;
            w.commit_all(&mut batch, false);
            if closed {
                // One last attempt for records a failed write above left pending.
                let mut rest = w.take_pending();
                w.commit(&mut rest, false);
                w.sync();
                return;
            }
            w.sync_if_due();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::audit::{verify::verify_files, Audit, Event, Record};
    use crate::config::{AuditConfig, FsyncPolicy};

    /// Commit `waves` × `n` concurrent `use` records (each followed by a `done`) on a
    /// current-thread runtime, with or without the park hook; (writer-thread batches, runtime
    /// batches).
    fn run(cfg: &AuditConfig, hook: bool, waves: usize, n: usize) -> (u64, u64) {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.enable_all();
        if hook {
            b.on_thread_park(super::on_thread_park);
        }
        let rt = b.build().unwrap();
        let (audit, writer) = Audit::start(cfg).unwrap();
        rt.block_on(async {
            for _ in 0..waves {
                let tasks: Vec<_> = (0..n)
                    .map(|_| {
                        let a = audit.clone();
                        tokio::spawn(async move {
                            a.record_use(Record::event(Event::Use)).await.unwrap();
                            a.record_done(Record::event(Event::Done));
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        });
        let batches = audit.batches();
        drop(audit);
        writer.unwrap().join().unwrap();
        batches
    }

    #[test]
    fn park_hook_commits_on_the_runtime_thread_except_when_it_must_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut cfg = AuditConfig {
            path: path.to_str().unwrap().into(),
            ..AuditConfig::default()
        };
        // With the hook, `use` records are written by the runtime thread in groups: 64 queued
        // in one tick need far fewer batches than records. (The writer thread, which wakes now
        // and then for lazy records, may take a wave too.)
        let (_, inline) = run(&cfg, true, 4, 64);
        assert!((1..=16).contains(&inline), "runtime batches: {inline}");
        // Without the hook, a waiting request commits after KICK_AFTER, still on the runtime
        // thread.
        let (_, inline) = run(&cfg, false, 8, 16);
        assert!(inline >= 1, "runtime batches without the hook: {inline}");
        // `fsync = "batch"` never syncs on a runtime thread.
        cfg.fsync = FsyncPolicy::Batch;
        assert_eq!(run(&cfg, true, 2, 16).1, 0);
        // Rotation is left to the writer thread too: every record still lands, chained.
        cfg.fsync = FsyncPolicy::Interval;
        cfg.max_bytes = 4096;
        cfg.keep = 50;
        run(&cfg, true, 1, 64);
        let mut files: Vec<_> = (1..=50)
            .rev()
            .map(|n| crate::audit::rotated_name(&path, n))
            .filter(|p| p.exists())
            .collect();
        assert!(files.len() >= 2, "rotated {} times", files.len());
        files.push(path.clone());
        let refs: Vec<&std::path::Path> = files.iter().map(std::path::PathBuf::as_path).collect();
        let summary = verify_files(&refs).unwrap();
        // 4 runs: 256 + 128 + 32 + 64 requests, a `use` and a `done` each, plus 4 `start`s.
        assert_eq!(summary.records, 2 * (256 + 128 + 32 + 64) + 4);
    }
}
