//! `nimgate audit verify FILE…`: walk the hash chain across files (oldest first) and report each
//! gap, edit or reordering with its file and line number. With `--key-file`, the links are
//! HMAC-SHA256 under that key (`audit.chain_key_file`) and every `start` record must name the
//! key's fingerprint; without it, a keyed chain is reported as such, never passed.
//!
//! A first pass reads only the `seq` numbers, so that a jump in `seq` can be told apart: the
//! missing numbers are elsewhere in the files (records reordered) or nowhere (records deleted).
//! An empty trail is refused unless `allow_empty`; `expect_last_seq` catches a cut tail, which
//! the chain alone cannot show.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;

use super::{ChainKey, GENESIS};

/// Errors reported at most; the first is the one that matters, the rest show the extent.
const MAX_ERRORS: usize = 20;

#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// Files with no record at all pass (a gateway writes a `start` record at once, so an
    /// empty trail usually means it was truncated).
    pub allow_empty: bool,
    /// The last record's `seq` must be this (from an anchor kept elsewhere).
    pub expect_last_seq: Option<u64>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    pub ok: bool,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// The chain began mid-way (older files not supplied): the first `prev_hash` is unchecked.
    pub partial_start: bool,
    /// Each break as `FILE:LINE: what`, in file order (at most 20).
    pub errors: Vec<String>,
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

#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Verify files in the order given. `Err` names the first break: `FILE:LINE: what`.
pub fn verify_files(files: &[&Path]) -> Result<Summary, String> {
    let s = verify(files, &ChainKey::none(), Options::default());
    match s.errors.first() {
        None => Ok(s),
        Some(e) => Err(e.clone()),
    }
}

/// Every line of every file, in order, with its `FILE:LINE` label; `f` may stop the walk.
fn each_line(
    files: &[&Path],
    mut f: impl FnMut(String, &mut Vec<u8>) -> Result<(), String>,
) -> Result<(), String> {
    for path in files {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
        let mut reader = BufReader::new(file);
        let mut line = Vec::new();
        for n in 1u64.. {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("{}: read error: {e}", path.display()))?;
            if read == 0 {
                break;
            }
            f(format!("{}:{n}", path.display()), &mut line)?;
        }
    }
    Ok(())
}

/// Verify `files` (oldest first) as a chain linked with `key` (unkeyed: `ChainKey::none()`).
pub fn verify(files: &[&Path], key: &ChainKey, opts: Options) -> Summary {
    let mut s = Summary::default();
    // Pass 1: every readable seq, to classify jumps.
    let mut seqs = HashSet::new();
    if let Err(e) = each_line(files, |_, line| {
        if let Ok(l) = serde_json::from_slice::<SeqOnly>(line.trim_ascii_end()) {
            seqs.insert(l.seq);
        }
        Ok(())
    }) {
        s.errors.push(e);
        return s;
    }
    let want_fp = key.fingerprint();
    let mut prev: Option<(u64, String, String)> = None;
    let walked = each_line(files, |at, line| {
        let mut err = |m: String| {
            s.errors.push(format!("{at}: {m}"));
            if s.errors.len() >= MAX_ERRORS {
                Err(String::new())
            } else {
                Ok(())
            }
        };
        if line.last() != Some(&b'\n') {
            return err("truncated record (no line end)".into());
        }
        line.pop();
        let link: Link = match serde_json::from_slice(line) {
            Ok(l) => l,
            Err(e) => {
                return err(format!(
                    "not an audit record ({e}); the line was edited or corrupted"
                ))
            }
        };
        if link.event.as_deref() == Some("start") && link.chain_key != want_fp {
            err(match (&link.chain_key, &want_fp) {
                (Some(fp), None) => format!("the chain is keyed ({fp}): verify with --key-file"),
                (Some(fp), Some(w)) => format!("the chain is keyed with another key ({fp}, not {w})"),
                (None, _) => "this start record names no chain key, but --key-file was given: the chain is not keyed (or the record was rewritten)".into(),
            })?;
        }
        match &prev {
            None => {
                s.first_seq = Some(link.seq);
                if link.seq != 0 {
                    s.partial_start = true;
                } else if link.prev_hash != GENESIS {
                    err("first record (seq 0) does not start the chain: prev_hash is not the genesis value".into())?;
                }
            }
            Some((pseq, phash, pat)) => {
                let expected = pseq + 1;
                if link.seq != expected {
                    // A jump: the `prev_hash` of this record is not checked (one break, one
                    // error), the walk goes on from it.
                    let what = if link.seq <= *pseq {
                        format!("out of order: expected seq {expected}, found {} (records reordered, duplicated or the chain restarted)", link.seq)
                    } else if (expected..link.seq).any(|q| seqs.contains(&q)) {
                        format!("out of order: expected seq {expected}, found {}; the skipped record(s) are elsewhere in the files (records reordered)", link.seq)
                    } else {
                        format!(
                            "records missing: expected seq {expected}, found {} ({} record(s) deleted)",
                            link.seq,
                            link.seq - expected
                        )
                    };
                    err(what)?;
                } else if &link.prev_hash != phash {
                    err(format!(
                        "prev_hash does not match the previous record: {pat} was edited"
                    ))?;
                }
            }
        }
        prev = Some((link.seq, key.link(line), at));
        s.records += 1;
        s.last_seq = Some(link.seq);
        Ok(())
    });
    if let Err(e) = walked {
        if !e.is_empty() {
            s.errors.push(e);
        }
    }
    if s.records == 0 && s.errors.is_empty() && !opts.allow_empty {
        s.errors.push(
            "no audit records: the files are empty (a gateway writes a start record at once; pass --allow-empty if empty is expected)".into(),
        );
    }
    if let Some(want) = opts.expect_last_seq {
        if s.last_seq != Some(want) {
            s.errors.push(format!(
                "the last record has seq {}, expected {want}: records were cut from the end",
                s.last_seq.map_or("none".into(), |v| v.to_string())
            ));
        }
    }
    s.ok = s.errors.is_empty();
    s
}
