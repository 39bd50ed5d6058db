//! The chain id of this writer, opening the audit file and recovering the chain head from its last complete line (or from the
//! newest rotated file when the current one is empty); a torn final line from a crash is cut off.
//! Complete lines at the end that are not records (garbage) do not block a restart, nor does the
//! chain silently restart from genesis: they are moved to `<path>.quarantine`, the caller writes
//! an `audit_quarantine` record, and the chain continues from the last readable record.
//! Files are created 0600; `lock` keeps a second gateway off the same trail.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{rotated_name, Chain, GENESIS};
use crate::audit::ChainKey;

/// Garbage lines quarantined at most before start-up gives up.
const MAX_QUARANTINE_LINES: usize = 64;

#[derive(serde::Deserialize)]
struct Seq {
    seq: u64,
}

fn quarantine_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".quarantine");
    PathBuf::from(s)
}

/// Open for append, creating the file with mode 0600 (rotated files keep it: they are renamed).
pub(super) fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
}

/// `<path>.lock`, held with an exclusive `flock` for the writer's life, so that a second
/// gateway pointed at the same trail refuses to start instead of interleaving two chains. A
/// lock file beside the trail rather than the trail itself: the trail is renamed on rotation
/// and reopened after write errors, the lock file never is. The kernel drops the lock when the
/// process dies, so a stale file blocks nothing.
pub(super) fn lock(path: &Path) -> io::Result<Flock<File>> {
    let (f, lock_path) = crate::lockfile::open(path)?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "another process holds {}: another nimgate is writing this audit trail (each gateway needs its own audit.path)",
                    lock_path.display()
                ),
            )
        } else {
            io::Error::other(format!("cannot lock {}: {errno}", lock_path.display()))
        }
    })
}

/// Open for append; find `seq` and link of the last complete line (in this file or, if it is
/// empty, in `path.1`), truncating a torn final line left by a crash and quarantining garbage
/// complete lines. The `String` (if any) describes what was quarantined, for the record.
pub(super) fn open_and_recover(
    path: &Path,
    key: &ChainKey,
) -> io::Result<(File, u64, Chain, Option<String>)> {
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
            None,
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
    let mut quarantined: Vec<Vec<u8>> = Vec::new();
    while let Some((line, _)) = &last {
        if line.is_empty() || serde_json::from_slice::<Seq>(line).is_ok() {
            break;
        }
        if quarantined.len() >= MAX_QUARANTINE_LINES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {MAX_QUARANTINE_LINES} unreadable lines at the end of the audit file"),
            ));
        }
        let start = len - line.len() as u64 - 1;
        quarantined.push(line.clone());
        len = start;
        last = last_line(&mut file, len)?;
    }
    let detail = if quarantined.is_empty() {
        None
    } else {
        let qpath = quarantine_name(path);
        let mut q = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&qpath)?;
        let bytes: usize = quarantined.iter().map(|l| l.len() + 1).sum();
        for l in quarantined.iter().rev() {
            q.write_all(l)?;
            q.write_all(b"\n")?;
        }
        q.sync_all()?;
        file.set_len(len)?;
        tracing::warn!(path = %path.display(), quarantine = %qpath.display(), lines = quarantined.len(), bytes, "audit file ends in unreadable lines; moved them aside");
        Some(format!(
            "{} unreadable line(s), {bytes} bytes, moved from the end of {} to {}",
            quarantined.len(),
            path.display(),
            qpath.display()
        ))
    };
    if last.is_none() {
        let rotated = rotated_name(path, 1);
        if let Ok(mut f) = File::open(&rotated) {
            let l = f.metadata()?.len();
            last = last_line(&mut f, l)?;
        }
    }
    let chain = match last {
        Some((line, _)) if !line.is_empty() => {
            let seq: Seq = serde_json::from_slice(&line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("last audit line is not a record: {e}"),
                )
            })?;
            Chain {
                next_seq: seq.seq + 1,
                prev: key.link(&line),
            }
        }
        _ => Chain {
            next_seq: 0,
            prev: GENESIS.into(),
        },
    };
    Ok((file, len, chain, detail))
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

/// `<instance>-<8 hex>`: the instance (`audit.instance`, else the host name — the pod name in
/// Kubernetes) and a nonce drawn at start, so the chains of a fleet, and of one gateway's
/// successive starts, stay apart when a log pipeline merges them. Only `[A-Za-z0-9._-]`.
pub(crate) fn chain_id(instance: Option<&str>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = instance
        .unwrap_or(host.trim())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    let name = if name.is_empty() {
        "nimgate".into()
    } else {
        name
    };
    let mut nonce = [0u8; 4];
    if getrandom::getrandom(&mut nonce).is_err() {
        nonce = std::process::id().to_be_bytes();
    }
    format!("{name}-{}", hex::encode(nonce))
}
