//! `audit verify --anchors`: does the trail reach each chain's last anchor? Per chain (its
//! latest anchor only: older ones may name records rotated away since), the trail must hold a
//! record of that chain at the anchored `seq` whose link equals the anchored hash, and so reach
//! at least that far. A chain that ends before its anchor had its tail cut; a different hash
//! means that record was edited; an anchored chain with no record at all was removed whole (or
//! its files were not given: `--anchors-instance` limits the check to one gateway's chains).

use std::collections::HashMap;
use std::path::Path;

use super::Anchor;
use crate::audit::verify::{each_line, Summary};
use crate::audit::ChainKey;

/// One chain's anchor and what the trail says about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainAnchor {
    pub chain: String,
    pub anchored_seq: u64,
    pub anchored_at: String,
    /// The chain's last `seq` in the trail (`None`: no record of it).
    pub trail_last_seq: Option<u64>,
    /// `reached`, `truncated`, `edited`, `missing` (the anchored record is not in the trail,
    /// later ones are) or `absent` (no record of the chain).
    pub status: &'static str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Where the anchors came from (`Store::describe`).
    pub source: String,
    pub chains: Vec<ChainAnchor>,
}

impl Report {
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut o = format!("anchors from {}:\n", self.source);
        for c in &self.chains {
            let ends = c
                .trail_last_seq
                .map_or("has no record of it".into(), |s| format!("ends at seq {s}"));
            let _ = writeln!(
                o,
                "  chain {}: anchored at seq {} ({}): {}, the trail {ends}",
                c.chain, c.anchored_seq, c.anchored_at, c.status
            );
        }
        o
    }
}

/// Whether `chain` is one of `instance`'s chains (`<instance>-<8 hex>`).
pub fn of_instance(chain: &str, instance: &str) -> bool {
    chain
        .strip_prefix(instance)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Check `files` (already verified into `s`) against `anchors`; each failure becomes an error
/// of `s` (so `ok`, the text and `--json` all carry it) and `s.anchors` the per-chain report.
pub fn apply(s: &mut Summary, files: &[&Path], key: &ChainKey, anchors: Vec<Anchor>, source: &str) {
    let mut latest: HashMap<String, Anchor> = HashMap::new();
    for a in anchors {
        match latest.get(&a.chain) {
            Some(b) if b.seq >= a.seq => {}
            _ => {
                latest.insert(a.chain.clone(), a);
            }
        }
    }
    let mut wanted: Vec<Anchor> = latest.into_values().collect();
    wanted.sort_by(|a, b| a.chain.cmp(&b.chain));
    if wanted.is_empty() {
        s.errors.push(format!(
            "no anchors found in {source}: nothing to check the end of the trail against"
        ));
    }
    let found = match links_at(files, key, &wanted) {
        Ok(f) => f,
        Err(e) => {
            s.errors.push(e);
            HashMap::new()
        }
    };
    let mut chains = Vec::new();
    for a in wanted {
        let last = s
            .chains
            .iter()
            .find(|c| c.chain == a.chain)
            .and_then(|c| c.last_seq);
        let at = format!("chain {}: anchored at seq {} ({})", a.chain, a.seq, a.at);
        let (status, problem) = match (last, found.get(&(a.chain.clone(), a.seq))) {
            (None, _) => ("absent", Some(format!("{at}, but the trail has no record of this chain: its records were removed (or its files not given)"))),
            (Some(l), _) if l < a.seq => ("truncated", Some(format!("{at}, but the trail ends at seq {l}: records were cut from the end (at least seq {}..{})", l + 1, a.seq))),
            (Some(_), Some(h)) if *h != a.hash => ("edited", Some(format!("{at}, but that record's hash differs from the anchor's: the record was edited"))),
            (Some(_), Some(_)) => ("reached", None),
            (Some(_), None) => ("missing", Some(format!("{at}, but the trail has no record with that seq: it was deleted"))),
        };
        s.errors.extend(problem);
        chains.push(ChainAnchor {
            chain: a.chain,
            anchored_seq: a.seq,
            anchored_at: a.at,
            trail_last_seq: last,
            status,
        });
    }
    s.ok = s.errors.is_empty();
    s.anchors = Some(Report {
        source: source.into(),
        chains,
    });
}

/// The link of each record at an anchored (chain, seq), as the writer computed it.
fn links_at(
    files: &[&Path],
    key: &ChainKey,
    wanted: &[Anchor],
) -> Result<HashMap<(String, u64), String>, String> {
    #[derive(serde::Deserialize)]
    struct At {
        seq: u64,
        #[serde(default)]
        chain: Option<String>,
    }
    let mut out = HashMap::new();
    each_line(files, |_, line| {
        let Some(body) = line.strip_suffix(b"\n") else {
            return Ok(());
        };
        if let Ok(at) = serde_json::from_slice::<At>(body) {
            let chain = at.chain.unwrap_or_default();
            if wanted.iter().any(|a| a.seq == at.seq && a.chain == chain) {
                out.insert((chain, at.seq), key.link(body));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::encode_line_keyed;
    use crate::audit::{verify, Event, Record, GENESIS};

    /// A trail of `n` records of chain `c` in `dir/a.jsonl`; the link of each.
    fn trail(dir: &Path, c: &str, n: u64) -> (std::path::PathBuf, Vec<String>) {
        let mut buf = Vec::new();
        let mut prev = GENESIS.to_string();
        let mut links = Vec::new();
        for seq in 0..n {
            prev = encode_line_keyed(
                &mut buf,
                &Record::event(Event::Use),
                seq,
                &prev,
                Some(c),
                &ChainKey::none(),
            );
            links.push(prev.clone());
        }
        let p = dir.join("a.jsonl");
        std::fs::write(&p, buf).unwrap();
        (p, links)
    }

    fn run(p: &Path, anchors: Vec<Anchor>) -> Summary {
        let files = [p];
        let mut s = verify::verify(&files, &ChainKey::none(), verify::Options::default());
        apply(&mut s, &files, &ChainKey::none(), anchors, "test");
        s
    }

    fn anchor(chain: &str, seq: u64, hash: &str) -> Anchor {
        Anchor {
            chain: chain.into(),
            seq,
            hash: hash.into(),
            at: "t".into(),
        }
    }

    #[test]
    fn a_trail_passes_up_to_its_anchor_and_fails_when_cut_edited_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        let (p, links) = trail(dir.path(), "gw-0a1b2c3d", 10);
        // Anchored at 7, trail to 9; an older anchor of the same chain is ignored.
        let s = run(
            &p,
            vec![
                anchor("gw-0a1b2c3d", 7, &links[7]),
                anchor("gw-0a1b2c3d", 2, &"0".repeat(64)),
            ],
        );
        assert!(s.ok, "{:?}", s.errors);
        let r = s.anchors.as_ref().unwrap();
        assert_eq!(
            (
                r.chains.len(),
                r.chains[0].status,
                r.chains[0].trail_last_seq
            ),
            (1, "reached", Some(9))
        );
        // Anchored at 9 (the last record) passes too.
        assert!(run(&p, vec![anchor("gw-0a1b2c3d", 9, &links[9])]).ok);
        // The anchor's hash differs: that record was edited (and re-hashed).
        let s = run(&p, vec![anchor("gw-0a1b2c3d", 7, &links[6])]);
        assert!(!s.ok && s.errors[0].contains("edited"), "{:?}", s.errors);
        // Cut after seq 5: the chain ends before its anchor.
        let text = std::fs::read_to_string(&p).unwrap();
        let cut: String = text.lines().take(6).flat_map(|l| [l, "\n"]).collect();
        std::fs::write(&p, cut).unwrap();
        let s = run(&p, vec![anchor("gw-0a1b2c3d", 7, &links[7])]);
        assert!(!s.ok);
        assert_eq!(s.errors, ["chain gw-0a1b2c3d: anchored at seq 7 (t), but the trail ends at seq 5: records were cut from the end (at least seq 6..7)"]);
        assert_eq!(s.anchors.as_ref().unwrap().chains[0].status, "truncated");
        assert!(
            s.text().contains("BROKEN: chain gw-0a1b2c3d"),
            "{}",
            s.text()
        );
        // Another chain's anchor: that chain is absent from the trail.
        let s = run(
            &p,
            vec![
                anchor("gw-0a1b2c3d", 5, &links[5]),
                anchor("gw-99999999", 1, &links[1]),
            ],
        );
        assert!(
            !s.ok
                && s.errors[0].contains("gw-99999999")
                && s.errors[0].contains("no record of this chain"),
            "{:?}",
            s.errors
        );
        // No anchors at all is a failure, not a pass.
        let s = run(&p, Vec::new());
        assert!(
            !s.ok && s.errors[0].starts_with("no anchors found in test"),
            "{:?}",
            s.errors
        );
    }

    #[test]
    fn instance_filter_matches_the_writer_chain_id_form() {
        assert!(of_instance("pod-a-0a1b2c3d", "pod-a"));
        assert!(!of_instance("pod-ab-0a1b2c3d", "pod-a"));
        assert!(!of_instance("pod-a-0a1b", "pod-a"));
        assert!(!of_instance("pod-a-b-0a1b2c3d", "pod-a"));
    }
}
