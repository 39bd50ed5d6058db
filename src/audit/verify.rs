//! `nimgate audit verify FILE…`: walk the hash chain across files (oldest first) and report each
//! gap, edit or reordering with its file and line number. With `--key-file`, the links are
//! HMAC-SHA256 under that key (`audit.chain_key_file`) and every `start` record must name the
//! key's fingerprint; without it, a keyed chain is reported as such, never passed.
//!
//! A first pass reads only the `seq` numbers and `chain` ids, so that a jump in `seq` can be told
//! apart — the missing numbers are elsewhere in the files (records reordered) or nowhere (records
//! deleted) — and so that an interleaved stream is recognised: several gateways' records merged
//! by a log pipeline (`kubectl logs` of several pods). Then each chain is verified on its own and
//! reported (`chains`); a chain's first record either starts at genesis, continues another
//! chain's head (the same gateway restarted on the same file), or starts mid-way (the stream
//! begins after it did). Records one after another from successive chains (one file, restarts)
//! are one chain of links, checked across the restarts as before.
//! An empty trail is refused unless `allow_empty`; `expect_last_seq` catches a cut tail, which
//! the chain alone cannot show, and so do anchors (`anchor::apply`, after this walk).

use std::collections::{HashMap, HashSet};
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
    /// Records of several chains interleave (a merged stream): each was verified on its own.
    pub interleaved: bool,
    /// Every `chain` id seen, in order of first appearance (`""`: records without one).
    pub chains: Vec<ChainSummary>,
    /// With `--anchors`: each anchored chain and whether the trail reaches it (`anchor::apply`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchors: Option<super::anchor::Report>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ChainSummary {
    pub chain: String,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Its first record continues this chain's head (a restart on the same trail).
    pub continues: Option<String>,
    /// Its first record links to a record not in the input.
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
    #[serde(default)]
    chain: Option<String>,
}

#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
    #[serde(default)]
    chain: Option<String>,
}

/// What the first pass learns.
#[derive(Default)]
struct Seen {
    /// (lineage, seq): the lineage is the chain id when interleaved, else `""` for all.
    by_chain: HashSet<(String, u64)>,
    all: HashSet<u64>,
    interleaved: bool,
}

impl Seen {
    fn read(files: &[&Path]) -> Result<Self, String> {
        let mut seen = Self::default();
        let mut chains = HashSet::new();
        let mut last: Option<String> = None;
        each_line(files, |_, line| {
            if let Ok(l) = serde_json::from_slice::<SeqOnly>(line.trim_ascii_end()) {
                let c = l.chain.unwrap_or_default();
                if last.as_ref() != Some(&c) {
                    if chains.contains(&c) {
                        seen.interleaved = true;
                    }
                    chains.insert(c.clone());
                    last = Some(c.clone());
                }
                seen.all.insert(l.seq);
                seen.by_chain.insert((c, l.seq));
            }
            Ok(())
        })?;
        Ok(seen)
    }

    fn lineage<'a>(&self, chain: &'a str) -> &'a str {
        if self.interleaved {
            chain
        } else {
            ""
        }
    }

    fn has(&self, lineage: &str, seq: u64) -> bool {
        if self.interleaved {
            self.by_chain.contains(&(lineage.to_string(), seq))
        } else {
            self.all.contains(&seq)
        }
    }
}

/// One lineage's last record: (seq, link hash, `FILE:LINE`, its chain id).
type Prev = (u64, String, String, String);

impl Summary {
    /// The human-readable report: `OK: …` (one line per chain when there are several) or one
    /// `BROKEN: …` line per break.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let range = |a: Option<u64>, b: Option<u64>| {
            let f = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
            format!("{}..{}", f(a), f(b))
        };
        let anchors = self.anchors.as_ref().map(super::anchor::Report::text);
        if !self.ok {
            for e in &self.errors {
                let _ = writeln!(o, "BROKEN: {e}");
            }
            o.extend(anchors);
            return o;
        }
        let _ = writeln!(
            o,
            "OK: {} records, seq {}{}{}",
            self.records,
            range(self.first_seq, self.last_seq),
            if self.interleaved {
                format!(" ({} interleaved chains, each verified)", self.chains.len())
            } else {
                String::new()
            },
            if self.partial_start {
                " (a chain starts mid-way: earlier records not given)"
            } else {
                ""
            }
        );
        if self.chains.len() > 1 {
            for c in &self.chains {
                let _ = writeln!(
                    o,
                    "  chain {}: {} records, seq {}{}{}",
                    if c.chain.is_empty() {
                        "(none)"
                    } else {
                        &c.chain
                    },
                    c.records,
                    range(c.first_seq, c.last_seq),
                    c.continues
                        .as_ref()
                        .map_or(String::new(), |p| format!(", continues {p}")),
                    if c.partial_start {
                        ", starts mid-way"
                    } else {
                        ""
                    }
                );
            }
        }
        o.extend(anchors);
        o
    }
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
pub(super) fn each_line(
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
    let seen = match Seen::read(files) {
        Ok(seen) => seen,
        Err(e) => {
            s.errors.push(e);
            return s;
        }
    };
    s.interleaved = seen.interleaved;
    let want_fp = key.fingerprint();
    let mut prev: HashMap<String, Prev> = HashMap::new();
    // Current head hash of each lineage → (lineage, seq), to recognise a continuation.
    let mut heads: HashMap<String, (String, u64)> = HashMap::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut chains: Vec<ChainSummary> = Vec::new();
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
        let chain = link.chain.clone().unwrap_or_default();
        let lineage = seen.lineage(&chain).to_string();
        let ci = *index.entry(chain.clone()).or_insert_with(|| {
            chains.push(ChainSummary {
                chain: chain.clone(),
                ..ChainSummary::default()
            });
            chains.len() - 1
        });
        let first_of_chain = chains[ci].records == 0;
        match prev.get(&lineage) {
            None => {
                if link.seq == 0 {
                    if link.prev_hash != GENESIS {
                        err("first record (seq 0) does not start the chain: prev_hash is not the genesis value".into())?;
                    }
                } else if let Some((from, fseq)) = heads.get(&link.prev_hash).cloned() {
                    if fseq + 1 == link.seq {
                        heads.remove(&link.prev_hash);
                        chains[ci].continues = Some(from);
                    } else {
                        chains[ci].partial_start = true;
                    }
                } else {
                    chains[ci].partial_start = true;
                }
            }
            Some((pseq, phash, pat, pchain)) => {
                let expected = pseq + 1;
                if link.seq != expected {
                    // A jump: the `prev_hash` of this record is not checked (one break, one
                    // error), the walk goes on from it.
                    let what = if link.seq <= *pseq {
                        format!("out of order: expected seq {expected}, found {} (records reordered, duplicated or the chain restarted)", link.seq)
                    } else if (expected..link.seq).any(|q| seen.has(&lineage, q)) {
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
                if first_of_chain && *pchain != chain {
                    chains[ci].continues = Some(pchain.clone());
                }
            }
        }
        let hash = key.link(line);
        if let Some((_, old, _, _)) = prev.get(&lineage) {
            heads.remove(old);
        }
        heads.insert(hash.clone(), (chain.clone(), link.seq));
        prev.insert(lineage, (link.seq, hash, at, chain.clone()));
        let c = &mut chains[ci];
        c.records += 1;
        c.first_seq.get_or_insert(link.seq);
        c.last_seq = Some(link.seq);
        s.records += 1;
        s.first_seq.get_or_insert(link.seq);
        s.last_seq = Some(link.seq);
        Ok(())
    });
    if let Err(e) = walked {
        if !e.is_empty() {
            s.errors.push(e);
        }
    }
    s.partial_start = chains.iter().any(|c| c.partial_start);
    s.chains = chains;
    if s.records == 0 && s.errors.is_empty() && !opts.allow_empty {
        s.errors.push(
            "no audit records: the files are empty (a gateway writes a start record at once; pass --allow-empty if empty is expected)".into(),
        );
    }
    if let Some(want) = opts.expect_last_seq {
        if s.interleaved {
            s.errors
                .push("--expect-last-seq needs one chain; this stream interleaves several".into());
        } else if s.last_seq != Some(want) {
            s.errors.push(format!(
                "the last record has seq {}, expected {want}: records were cut from the end",
                s.last_seq.map_or("none".into(), |v| v.to_string())
            ));
        }
    }
    s.ok = s.errors.is_empty();
    s
}
