//! Writing a batch to the sink, and size rotation (`path` → `path.1` → … → `path.keep`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recover::open_append;
use super::{Sink, Writer};
use crate::config::FsyncPolicy;

pub fn rotated_name(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Writer {
    /// Whether writing `buf` now would rotate the file first.
    pub(super) fn would_rotate(&self) -> bool {
        match &self.sink {
            Sink::File { len, .. } => {
                self.cfg.max_bytes > 0
                    && *len > 0
                    && *len + self.buf.len() as u64 > self.cfg.max_bytes
            }
            Sink::Stdout => false,
        }
    }

    pub(super) fn write_buf(&mut self) -> io::Result<()> {
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
                let r = { f }.write_all(&self.buf).and_then(|()| {
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
                        if f.metadata().is_ok_and(|m| m.is_file()) {
                            let _ = f.set_len(*len);
                        }
                        *file = None;
                        Err(e)
                    }
                }
            }
        }
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

impl Writer {
    /// `statvfs` of the audit file's volume, at most once a second.
    pub(super) fn check_headroom(&mut self) {
        let Sink::File { path, .. } = &self.sink else {
            return;
        };
        if self
            .headroom_checked
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.headroom_checked = Some(Instant::now());
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or_else(|| std::path::Path::new("."));
        if let Ok(st) = nix::sys::statvfs::statvfs(dir) {
            // 64-bit Linux: both are u64.
            let free: u64 = st.blocks_available().saturating_mul(st.fragment_size());
            let low = free < self.cfg.min_free_bytes;
            if low != self.shared.low_disk.swap(low, Ordering::AcqRel) {
                tracing::warn!(
                    free_bytes = free,
                    min_free_bytes = self.cfg.min_free_bytes,
                    low,
                    "audit volume headroom changed: denied records are only counted while low"
                );
            }
        }
    }
}
