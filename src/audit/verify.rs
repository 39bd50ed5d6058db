//! `nimgate audit verify FILE…`: walk the hash chain across files (oldest first) and report the
//! first gap, edit or reordering with its file and line number. With `--key-file`, the links are
//! HMAC-SHA256 under that key (`audit.chain_key_file`) and every `start` record must name the
//! key's fingerprint; without it, a keyed chain is reported as such, never passed.

use std::io::{BufRead, BufReader};
use std::path::Path;

use super::{ChainKey, GENESIS};

#[derive(Debug, Default)]
pub struct Summary {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The chain began mid-way (older files not supplied): the first `prev_hash` is unchecked.
    pub partial_start: bool,
}

#[derive(serde::Deserialize)]
struct Link {
    seq: u64,
    prev_hash: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    chain_key: Option<String>,
}

/// Verify files in the order given. `Err` names the first break: `FILE:LINE: what`.
pub fn verify_files(files: &[&Path]) -> Result<Summary, String> {
    verify_files_keyed(files, &ChainKey::none())
}

/// `verify_files` for a chain linked with `key` (unkeyed: `ChainKey::none()`).
pub fn verify_files_keyed(files: &[&Path], key: &ChainKey) -> Result<Summary, String> {
    let want_fp = key.fingerprint();
    let mut s = Summary::default();
    let mut prev: Option<(u64, String, String)> = None;
    for path in files {
        let f = std::fs::File::open(path)
            .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("{}: read error: {e}", path.display()))?;
            if read == 0 {
                break;
            }
            n += 1;
            let at = format!("{}:{n}", path.display());
            if line.last() != Some(&b'\n') {
                return Err(format!("{at}: truncated record (no line end)"));
            }
            line.pop();
            let link: Link = serde_json::from_slice(&line).map_err(|e| {
                format!("{at}: not an audit record ({e}); the line was edited or corrupted")
            })?;
            if link.event.as_deref() == Some("start") && link.chain_key != want_fp {
                return Err(match (&link.chain_key, &want_fp) {
                    (Some(fp), None) => format!("{at}: the chain is keyed ({fp}): verify with --key-file"),
                    (Some(fp), Some(w)) => format!("{at}: the chain is keyed with another key ({fp}, not {w})"),
                    (None, _) => format!("{at}: this start record names no chain key, but --key-file was given: the chain is not keyed (or the record was rewritten)"),
                });
            }
            match &prev {
                None => {
                    s.first_seq = Some(link.seq);
                    if link.seq == 0 {
                        if link.prev_hash != GENESIS {
                            return Err(format!("{at}: first record (seq 0) does not start the chain: prev_hash is not the genesis value"));
                        }
                    } else {
                        s.partial_start = true;
                    }
                }
                Some((pseq, phash, pat)) => {
                    if link.seq != pseq + 1 {
                        let what = if link.seq > pseq + 1 {
                            format!(
                                "records missing: expected seq {}, found {} ({} record(s) deleted)",
                                pseq + 1,
                                link.seq,
                                link.seq - pseq - 1
                            )
                        } else {
                            format!("out of order: expected seq {}, found {} (records reordered, duplicated or the chain restarted)", pseq + 1, link.seq)
                        };
                        return Err(format!("{at}: {what}"));
                    }
                    if &link.prev_hash != phash {
                        return Err(format!(
                            "{at}: prev_hash does not match the previous record: {pat} was edited"
                        ));
                    }
                }
            }
            prev = Some((link.seq, key.link(&line), at));
            s.records += 1;
            s.last_seq = Some(link.seq);
        }
    }
    Ok(s)
}
