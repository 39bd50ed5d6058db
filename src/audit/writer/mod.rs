//! The audit writer: group commit of JSON lines onto a SHA-256 hash chain (`recover` opens the
//! file and finds the chain head, `file` writes and rotates, `sync` owns durability).
//!
//! It drains the queue into one buffer, writes the batch with one `write(2)` (plus `fdatasync`
//! under `fsync = "batch"`), then acknowledges every record in it. On any write error the file is
//! truncated back to the last complete batch, the chain is rolled back, `use` records are refused
//! (those requests get 503 and never reach the NIM), other records are kept and retried, and the
//! file is reopened on the next attempt. Nothing is dropped silently.

mod file;
mod recover;
mod sync;

pub use file::rotated_name;
pub use sync::Head;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

use super::record::{encode_line_into, Record};
use super::{ChainKey, Event};
use crate::config::{AuditConfig, FsyncPolicy};
use recover::{chain_id, lock, open_and_recover};
use sync::spawn_syncer;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_BATCH: usize = 4096;
const RETRY_TICK: Duration = Duration::from_millis(250);

// Records are moved once into the queue; `Flush` is rare, so boxing would only add an allocation.
#[expect(
    clippy::large_enum_variant,
    reason = "moved once; boxing would add an allocation"
)]
pub(crate) enum Msg {
    Rec {
        rec: Record,
        /// `use` records: answered `true` once written (and synced under `batch`).
        ack: Option<oneshot::Sender<bool>>,
        /// Holds one queue permit, returned once the record is written or refused.
        permit: bool,
    },
    /// Write everything queued, sync, answer whether the sink is healthy.
    Flush(oneshot::Sender<bool>),
}

/// State shared between the writer thread and request handlers.
pub struct Shared {
    pub healthy: AtomicBool,
    pub permits: Semaphore,
    pub records: AtomicU64,
    pub write_errors: AtomicU64,
    /// Batches written by the writer thread and by runtime threads (`commit(.., inline)`).
    pub thread_batches: AtomicU64,
    pub inline_batches: AtomicU64,
    /// Free space on the audit volume is below `audit.min_free_bytes` (checked at most once a
    /// second by whoever commits): `record_unreserved` then refuses.
    pub low_disk: AtomicBool,
    /// Time of each batch write (`write_buf`, with its sync under `fsync = "batch"`).
    pub write_latency: crate::hist::Histogram,
    /// The newest record known to be synced (`audit.anchor` only): what may be anchored.
    pub durable: std::sync::Mutex<Option<Head>>,
    pub anchor: crate::audit::anchor::Stats,
}

enum Sink {
    File {
        path: PathBuf,
        file: Option<Arc<File>>,
        len: u64,
    },
    Stdout,
}

/// The `flock` on `<path>.lock`, released when the writer is dropped (or the process dies).
type Lock = Option<nix::fcntl::Flock<File>>;

struct Chain {
    next_seq: u64,
    prev: String,
}

pub(crate) struct Writer {
    sink: Sink,
    lock: Lock,
    chain: Chain,
    /// The chain's link function (HMAC-SHA256 under `audit.chain_key_file`, else SHA-256).
    key: ChainKey,
    /// This writer's `chain` id on every record (`chain_id`).
    chain_id: Arc<str>,
    headroom_checked: Option<Instant>,
    cfg: AuditConfig,
    shared: Arc<Shared>,
    dirty: bool,
    last_sync: Instant,
    pending: Vec<Msg>,
    buf: Vec<u8>,
    /// Buffers kept across commits (no allocation per batch): the drain, the batch's records
    /// until they are answered, and the chain head to roll back to.
    scratch: Vec<Msg>,
    recs: Vec<(Record, Option<oneshot::Sender<bool>>, bool)>,
    saved_prev: String,
    /// `fsync = "interval"`: the thread that runs the periodic `fdatasync`.
    syncer: Option<std::sync::mpsc::Sender<sync::SyncJob>>,
}

/// Open the sink and recover the chain from the file's last line; the first record queued is
/// `start`.
pub(crate) fn open(cfg: &AuditConfig, shared: Arc<Shared>) -> io::Result<Writer> {
    let key = match &cfg.chain_key_file {
        Some(p) => ChainKey::from_file(p).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("audit.chain_key_file {}: {e}", p.display()),
            )
        })?,
        None => ChainKey::none(),
    };
    let mut quarantined = None;
    let (sink, chain, lock) = if cfg.path == "-" {
        (
            Sink::Stdout,
            Chain {
                next_seq: 0,
                prev: GENESIS.into(),
            },
            None,
        )
    } else {
        let path = PathBuf::from(&cfg.path);
        let held = lock(&path)?;
        let (file, len, chain, q) = open_and_recover(&path, &key)?;
        quarantined = q;
        (
            Sink::File {
                path,
                file: Some(Arc::new(file)),
                len,
            },
            chain,
            Some(held),
        )
    };
    let mut w = Writer {
        sink,
        lock,
        chain,
        key,
        chain_id: chain_id(cfg.instance.as_deref()).into(),
        headroom_checked: None,
        cfg: cfg.clone(),
        shared,
        dirty: false,
        last_sync: Instant::now(),
        pending: Vec::new(),
        buf: Vec::with_capacity(64 * 1024),
        scratch: Vec::new(),
        recs: Vec::new(),
        saved_prev: String::with_capacity(64),
        syncer: None,
    };
    w.check_headroom();
    if cfg.fsync == FsyncPolicy::Interval && cfg.path != "-" {
        w.syncer = spawn_syncer(w.shared.clone());
    }
    let mut start = Record::event(Event::Start);
    start.detail = Some(format!(
        "nimgate {} pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    ));
    start.chain_key = w.key.fingerprint().map(Arc::from);
    w.pending.push(Msg::Rec {
        rec: start,
        ack: None,
        permit: false,
    });
    if let Some(detail) = quarantined {
        let mut q = Record::event(Event::AuditQuarantine);
        q.detail = Some(detail);
        w.pending.push(Msg::Rec {
            rec: q,
            ack: None,
            permit: false,
        });
    }
    Ok(w)
}

impl Writer {
    /// Give up the `flock` on `<path>.lock` (shutdown).
    pub(crate) fn release_lock(&mut self) {
        self.lock = None;
    }
}

impl Writer {
    /// Commit a drain in batches of at most `MAX_BATCH` records (one write each); `batch` is left
    /// empty, its buffer kept for the next drain.
    pub(crate) fn commit_all(&mut self, batch: &mut Vec<Msg>, inline: bool) {
        while batch.len() > MAX_BATCH {
            let rest = batch.split_off(MAX_BATCH);
            self.commit(batch, inline);
            *batch = rest;
        }
        self.commit(batch, inline);
    }

    /// The reusable drain buffer (`Committer` takes it, fills it from the queue, gives it back).
    pub(crate) fn take_scratch(&mut self) -> Vec<Msg> {
        std::mem::take(&mut self.scratch)
    }

    pub(crate) fn give_scratch(&mut self, v: Vec<Msg>) {
        if v.capacity() <= MAX_BATCH {
            self.scratch = v;
        }
    }

    /// Whether a runtime thread may commit for this sink (`commit(.., inline = true)`): a file,
    /// not synced per batch. Standard output (maybe a blocking pipe) and `fsync = "batch"` are
    /// left to the writer thread.
    pub(crate) fn inline_capable(&self) -> bool {
        matches!(self.sink, Sink::File { .. }) && self.cfg.fsync != FsyncPolicy::Batch
    }

    /// Records left for the writer thread (a failed write to retry, a deferred batch or flush).
    pub(crate) fn take_pending(&mut self) -> Vec<Msg> {
        std::mem::take(&mut self.pending)
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Write `batch` as one group and answer its records. `inline`: called on a runtime thread,
    /// which must not block on a sync or a rotation; such a batch is left in `pending` for the
    /// writer thread (the caller wakes it).
    /// `batch` is drained (left empty with its buffer), so a caller reuses it.
    pub(crate) fn commit(&mut self, batch: &mut Vec<Msg>, inline: bool) {
        if batch.is_empty() {
            return;
        }
        self.check_headroom();
        if inline && !self.pending.is_empty() {
            // Keep file order: what the writer thread still holds goes first.
            self.pending.append(batch);
            return;
        }
        let saved_seq = self.chain.next_seq;
        self.saved_prev.clone_from(&self.chain.prev);
        self.buf.clear();
        let mut flushes = Vec::new();
        let mut recs = std::mem::take(&mut self.recs);
        recs.clear();
        for m in batch.drain(..) {
            match m {
                Msg::Flush(tx) if inline => self.pending.push(Msg::Flush(tx)),
                Msg::Flush(tx) => flushes.push(tx),
                Msg::Rec { rec, ack, permit } => {
                    // A `use` whose request already gave up never happened: skip it.
                    if ack
                        .as_ref()
                        .is_some_and(tokio::sync::oneshot::Sender::is_closed)
                    {
                        if permit {
                            self.shared.permits.add_permits(1);
                        }
                        continue;
                    }
                    self.append(&rec);
                    recs.push((rec, ack, permit));
                }
            }
        }
        if inline && self.would_rotate() {
            self.chain.next_seq = saved_seq;
            std::mem::swap(&mut self.chain.prev, &mut self.saved_prev);
            let deferred = recs
                .drain(..)
                .map(|(rec, ack, permit)| Msg::Rec { rec, ack, permit });
            self.pending.splice(0..0, deferred);
            self.recs = recs;
            return;
        }
        let result = if self.buf.is_empty() {
            Ok(())
        } else {
            let t = std::time::Instant::now();
            let r = self.write_buf();
            self.shared.write_latency.observe(t.elapsed().as_secs_f64());
            r
        };
        let ok = result.is_ok();
        let mut released = 0;
        if let Err(e) = result {
            self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
            if self.shared.healthy.swap(false, Ordering::AcqRel) {
                tracing::error!(error = %e, path = %self.cfg.path, "audit write failed: refusing keyed requests until it recovers");
            }
            self.chain.next_seq = saved_seq;
            std::mem::swap(&mut self.chain.prev, &mut self.saved_prev);
            let mut failure = Record::event(Event::AuditFailure);
            failure.reason = Some(format!("{:?}", e.kind()));
            let mut keep = vec![Msg::Rec {
                rec: failure,
                ack: None,
                permit: false,
            }];
            for (rec, ack, permit) in recs.drain(..) {
                match ack {
                    Some(a) => {
                        let _ = a.send(false);
                        released += usize::from(permit);
                    }
                    None if rec.event == Event::AuditFailure => released += usize::from(permit),
                    None => keep.push(Msg::Rec {
                        rec,
                        ack: None,
                        permit,
                    }),
                }
            }
            self.pending = keep;
        } else {
            self.shared
                .records
                .fetch_add(recs.len() as u64, Ordering::Relaxed);
            if !self.buf.is_empty() {
                let by = if inline {
                    &self.shared.inline_batches
                } else {
                    &self.shared.thread_batches
                };
                by.fetch_add(1, Ordering::Relaxed);
            }
            if !self.shared.healthy.swap(true, Ordering::AcqRel) {
                tracing::info!("audit writes succeed again");
            }
            // Synced by the write itself (`batch`), or handed to the pipe (standard output).
            let synced = self.cfg.fsync == FsyncPolicy::Batch || matches!(self.sink, Sink::Stdout);
            if synced && !self.buf.is_empty() {
                self.publish_head();
            }
            for (_, ack, permit) in recs.drain(..) {
                if let Some(a) = ack {
                    let _ = a.send(true);
                }
                released += usize::from(permit);
            }
        }
        self.recs = recs;
        if released > 0 {
            self.shared.permits.add_permits(released);
        }
        if !flushes.is_empty() {
            self.sync();
            for f in flushes {
                let _ = f.send(ok && self.shared.healthy.load(Ordering::Acquire));
            }
        }
    }

    /// Serialise one record onto the chain (tentatively: `commit` rolls back on failure).
    fn append(&mut self, rec: &Record) {
        encode_line_into(
            &mut self.buf,
            rec,
            self.chain.next_seq,
            &mut self.chain.prev,
            Some(&*self.chain_id),
            &self.key,
        );
        self.chain.next_seq += 1;
    }
}
