//! The audit writer thread: group commit of JSON lines onto a SHA-256 hash chain.
//!
//! It drains the queue into one buffer, writes the batch with one `write(2)` (plus `fdatasync`
//! under `fsync = "batch"`), then acknowledges every record in it. On any write error the file is
//! truncated back to the last complete batch, the chain is rolled back, `use` records are refused
//! (those requests get 503 and never reach the NIM), other records are kept and retried, and the
//! file is reopened on the next attempt. Nothing is dropped silently.

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};

use super::record::{encode_line, Record};
use crate::config::{AuditConfig, FsyncPolicy};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_BATCH: usize = 4096;
const RETRY_TICK: Duration = Duration::from_millis(250);

// Records are moved once into the queue; `Flush` is rare, so boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
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
}

enum Sink {
    File {
        path: PathBuf,
        file: Option<Arc<File>>,
        len: u64,
    },
    Stdout,
}

struct Chain {
    next_seq: u64,
    prev: String,
}

pub(crate) struct Writer {
    sink: Sink,
    chain: Chain,
    cfg: AuditConfig,
    shared: Arc<Shared>,
    dirty: bool,
    last_sync: Instant,
    pending: Vec<Msg>,
    buf: Vec<u8>,
    /// `fsync = "interval"`: the thread that runs the periodic `fdatasync`.
    syncer: Option<std::sync::mpsc::Sender<Arc<File>>>,
}

/// The periodic-fsync thread: syncs the files it is handed, reports failures like the writer.
fn spawn_syncer(shared: Arc<Shared>) -> Option<std::sync::mpsc::Sender<Arc<File>>> {
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

/// Open the sink and recover the chain from the file's last line; the first record queued is
/// `start`.
pub(crate) fn open(cfg: &AuditConfig, shared: Arc<Shared>) -> io::Result<Writer> {
    let (sink, chain) = if cfg.path == "-" {
        (
            Sink::Stdout,
            Chain {
                next_seq: 0,
                prev: GENESIS.into(),
            },
        )
    } else {
        let path = PathBuf::from(&cfg.path);
        let (file, len, chain) = open_and_recover(&path)?;
        (
            Sink::File {
                path,
                file: Some(Arc::new(file)),
                len,
            },
            chain,
        )
    };
    let mut w = Writer {
        sink,
        chain,
        cfg: cfg.clone(),
        shared,
        dirty: false,
        last_sync: Instant::now(),
        pending: Vec::new(),
        buf: Vec::with_capacity(64 * 1024),
        syncer: None,
    };
    if cfg.fsync == FsyncPolicy::Interval && cfg.path != "-" {
        w.syncer = spawn_syncer(w.shared.clone());
    }
    let mut start = Record::event("start");
    start.detail = Some(format!(
        "nimgate {} pid {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    ));
    w.pending.push(Msg::Rec {
        rec: start,
        ack: None,
        permit: false,
    });
    Ok(w)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

/// Open for append; find `seq` and hash of the last complete line (in this file or, if it is
/// empty, in `path.1`), truncating a torn final line left by a crash.
fn open_and_recover(path: &Path) -> io::Result<(File, u64, Chain)> {
    let mut file = open_append(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok((
            file,
            0,
            Chain {
                next_seq: 0,
                prev: GENESIS.into(),
            },
        ));
    }
    let mut len = meta.len();
    let mut last = last_line(&mut file, len)?;
    if let Some((ref line, complete_len)) = last {
        if complete_len < len {
            tracing::warn!(path = %path.display(), torn_bytes = len - complete_len, "audit file ends in a torn line; truncating it");
            file.set_len(complete_len)?;
            len = complete_len;
        }
        if line.is_empty() {
            last = None;
        }
    }
    if last.is_none() {
        let rotated = rotated_name(path, 1);
        if let Ok(mut f) = File::open(&rotated) {
            let l = f.metadata()?.len();
            last = last_line(&mut f, l)?;
        }
    }
    let chain = match last {
        Some((line, _)) if !line.is_empty() => {
            #[derive(serde::Deserialize)]
            struct Seq {
                seq: u64,
            }
            let seq: Seq = serde_json::from_slice(&line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("last audit line is not a record: {e}"),
                )
            })?;
            Chain {
                next_seq: seq.seq + 1,
                prev: hex::encode(Sha256::digest(&line)),
            }
        }
        _ => Chain {
            next_seq: 0,
            prev: GENESIS.into(),
        },
    };
    Ok((file, len, chain))
}

/// The last complete line (without '\n') and the length of the file up to its end.
fn last_line(file: &mut File, len: u64) -> io::Result<Option<(Vec<u8>, u64)>> {
    if len == 0 {
        return Ok(None);
    }
    let mut window = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity((len - start) as usize);
        Read::by_ref(file)
            .take(len - start)
            .read_to_end(&mut tail)?;
        // End of the last complete line.
        let Some(end) = tail.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok(Some((Vec::new(), 0)));
            }
            window *= 4;
            continue;
        };
        let line_start = tail[..end].iter().rposition(|&b| b == b'\n').map(|i| i + 1);
        match line_start {
            Some(s) => return Ok(Some((tail[s..end].to_vec(), start + end as u64 + 1))),
            None if start == 0 => return Ok(Some((tail[..end].to_vec(), end as u64 + 1))),
            None => window *= 4,
        }
    }
}

/// Split a large drain into batches of at most `MAX_BATCH` records (one write each).
pub(crate) fn chunks(mut batch: Vec<Msg>) -> Vec<Vec<Msg>> {
    let mut out = Vec::new();
    while batch.len() > MAX_BATCH {
        let rest = batch.split_off(MAX_BATCH);
        out.push(batch);
        batch = rest;
    }
    out.push(batch);
    out
}

pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Writer {
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

    /// Write `batch` as one group and answer its records. `inline`: called on a runtime thread,
    /// which must not block on a sync or a rotation; such a batch is left in `pending` for the
    /// writer thread (the caller wakes it).
    pub(crate) fn commit(&mut self, batch: Vec<Msg>, inline: bool) {
        if batch.is_empty() {
            return;
        }
        if inline && !self.pending.is_empty() {
            // Keep file order: what the writer thread still holds goes first.
            self.pending.extend(batch);
            return;
        }
        let saved_seq = self.chain.next_seq;
        let saved_prev = self.chain.prev.clone();
        self.buf.clear();
        let mut flushes = Vec::new();
        let mut recs = Vec::with_capacity(batch.len());
        for m in batch {
            match m {
                Msg::Flush(tx) if inline => self.pending.push(Msg::Flush(tx)),
                Msg::Flush(tx) => flushes.push(tx),
                Msg::Rec { rec, ack, permit } => {
                    // A `use` whose request already gave up never happened: skip it.
                    if ack.as_ref().is_some_and(|a| a.is_closed()) {
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
            self.chain.prev = saved_prev;
            let deferred = recs
                .into_iter()
                .map(|(rec, ack, permit)| Msg::Rec { rec, ack, permit });
            self.pending.splice(0..0, deferred);
            return;
        }
        let result = if self.buf.is_empty() {
            Ok(())
        } else {
            self.write_buf()
        };
        let ok = result.is_ok();
        let mut released = 0;
        if let Err(e) = result {
            self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
            if self.shared.healthy.swap(false, Ordering::AcqRel) {
                tracing::error!(error = %e, path = %self.cfg.path, "audit write failed: refusing keyed requests until it recovers");
            }
            self.chain.next_seq = saved_seq;
            self.chain.prev = saved_prev;
            let mut failure = Record::event("audit_failure");
            failure.reason = Some(format!("{:?}", e.kind()));
            let mut keep = vec![Msg::Rec {
                rec: failure,
                ack: None,
                permit: false,
            }];
            for (rec, ack, permit) in recs {
                match ack {
                    Some(a) => {
                        let _ = a.send(false);
                        released += usize::from(permit);
                    }
                    None if rec.event == "audit_failure" => released += usize::from(permit),
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
            for (_, ack, permit) in recs {
                if let Some(a) = ack {
                    let _ = a.send(true);
                }
                released += usize::from(permit);
            }
        }
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
        self.chain.prev = encode_line(&mut self.buf, rec, self.chain.next_seq, &self.chain.prev);
        self.chain.next_seq += 1;
    }

    /// Whether writing `buf` now would rotate the file first.
    fn would_rotate(&self) -> bool {
        match &self.sink {
            Sink::File { len, .. } => {
                self.cfg.max_bytes > 0
                    && *len > 0
                    && *len + self.buf.len() as u64 > self.cfg.max_bytes
            }
            Sink::Stdout => false,
        }
    }

    fn write_buf(&mut self) -> io::Result<()> {
        let batch_sync = self.cfg.fsync == FsyncPolicy::Batch;
        let rotate_first = self.would_rotate();
        match &mut self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.buf)?;
                out.flush()
            }
            Sink::File { path, file, len } => {
                if rotate_first {
                    if let Some(f) = file.take() {
                        let _ = f.sync_all();
                    }
                    rotate(path, self.cfg.keep)?;
                    *len = 0;
                }
                if file.is_none() {
                    let f = open_append(path)?;
                    *len = f.metadata()?.len();
                    *file = Some(Arc::new(f));
                }
                let Some(f) = file.as_deref() else {
                    return Err(io::Error::other("audit file not open"));
                };
                let r = { f }.write_all(&self.buf).and_then(|_| {
                    if batch_sync {
                        f.sync_data()
                    } else {
                        Ok(())
                    }
                });
                match r {
                    Ok(()) => {
                        *len += self.buf.len() as u64;
                        self.dirty = !batch_sync;
                        if batch_sync {
                            self.last_sync = Instant::now();
                        }
                        Ok(())
                    }
                    Err(e) => {
                        // Drop a partial batch so the file ends on a complete record, then
                        // reopen on the next attempt.
                        if f.metadata().map(|m| m.is_file()).unwrap_or(false) {
                            let _ = f.set_len(*len);
                        }
                        *file = None;
                        Err(e)
                    }
                }
            }
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

/// `path` → `path.1` → … → `path.keep`; the oldest beyond `keep` is removed.
fn rotate(path: &Path, keep: usize) -> io::Result<()> {
    let _ = std::fs::remove_file(rotated_name(path, keep));
    for n in (1..keep).rev() {
        let from = rotated_name(path, n);
        if from.exists() {
            std::fs::rename(&from, rotated_name(path, n + 1))?;
        }
    }
    std::fs::rename(path, rotated_name(path, 1))
}
