//! Chain-head anchoring: every `audit.anchor_interval`, when the synced head of this gateway's
//! chain moved, `{chain, seq, hash, at}` is written to a store outside the audit volume (Vault
//! KV v2 or Redis, `store`), so that `nimgate audit verify --anchors` can tell a trail whose end
//! was cut (`check`): the hash chain alone proves only what is in the files.
//!
//! `task` runs the writes off the request path (a failed write is logged, counted, recorded
//! once per outage as `anchor_failure`, and retried next tick; a final write follows the flush
//! at clean shutdown); `source` parses `verify`'s `--anchors` argument. An anchor names only a
//! record that is already synced (`writer::Head`), so a crash cannot make it a false truncation.
//! The hash is the record's link as the chain defines it (SHA-256 of its line, or HMAC-SHA256
//! under `audit.chain_key_file`): the next record's `prev_hash`.

mod check;
mod source;
mod store;
mod task;

pub use check::{apply, of_instance, ChainAnchor, Report};
pub use source::{Source, SourceFiles};
pub use store::Store;
pub use task::{start, Anchorer};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64};

use super::writer::Head;

/// One anchor as stored (Redis value, Vault KV data, or an exported file's entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub chain: String,
    pub seq: u64,
    pub hash: String,
    /// When it was written (RFC 3339, UTC).
    pub at: String,
}

/// Anchoring counters for `/metrics` (kept in the audit trail's shared state).
#[derive(Debug, Default)]
pub struct Stats {
    /// Anchoring is configured (the metric families are rendered only then).
    pub on: AtomicBool,
    pub writes: AtomicU64,
    pub errors: AtomicU64,
    /// `seq` of the last head written.
    pub seq: AtomicU64,
}

impl Anchor {
    pub fn of(head: &Head, at: std::time::SystemTime) -> Self {
        Self {
            chain: head.chain.to_string(),
            seq: head.seq,
            hash: head.hash.clone(),
            at: humantime::format_rfc3339_millis(at).to_string(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({"chain": self.chain, "seq": self.seq, "hash": self.hash, "at": self.at})
            .to_string()
    }

    /// A chain id as the writer makes them and a 64-hex link, or why not.
    fn check(self) -> Result<Self, String> {
        let chain_ok = !self.chain.is_empty()
            && self.chain.len() <= 128
            && self
                .chain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !chain_ok {
            return Err(format!(
                "anchor chain id {:?} is not one a gateway writes",
                self.chain
            ));
        }
        if self.hash.len() != 64 || !self.hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "anchor of chain {}: hash is not 64 hex digits",
                self.chain
            ));
        }
        Ok(self)
    }
}

/// Parse anchors: one JSON object, an array of them, or JSON lines (one object per line) —
/// what `redis-cli GET`, `bao kv get -field`/`jq` or a `verify --json` export produce.
pub fn decode(text: &str) -> Result<Vec<Anchor>, String> {
    let one = |v: serde_json::Value| {
        serde_json::from_value::<Anchor>(v)
            .map_err(|e| {
                format!("not an anchor ({e}): expected {{\"chain\", \"seq\", \"hash\", \"at\"}}")
            })
            .and_then(Anchor::check)
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) => items.into_iter().map(one).collect(),
        Ok(v @ serde_json::Value::Object(_)) => Ok(vec![one(v)?]),
        Ok(_) => Err("not an anchor: expected a JSON object or an array of them".into()),
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| format!("line {}: not JSON ({e})", i + 1))
                    .and_then(|v| one(v).map_err(|e| format!("line {}: {e}", i + 1)))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0b5c0d57f3b3a4b4c1a7e6b0e2f1d3c5a7b9c1d3e5f7a9b1c3d5e7f9a1b3c5d7";

    #[test]
    fn anchors_round_trip_and_every_export_shape_decodes() {
        let head = Head {
            chain: "pod-a-0a1b2c3d".into(),
            seq: 41,
            hash: H.into(),
        };
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123);
        let a = Anchor::of(&head, t);
        assert_eq!(a.at, "2025-11-24T16:00:00.123Z");
        let json = a.to_json();
        assert_eq!(decode(&json).unwrap(), vec![a.clone()]);
        let mut b = a.clone();
        b.chain = "pod-b-99999999".into();
        let array = format!("[{json},{}]", b.to_json());
        assert_eq!(decode(&array).unwrap(), vec![a.clone(), b.clone()]);
        let lines = format!("{json}\n\n{}\n", b.to_json());
        assert_eq!(decode(&lines).unwrap(), vec![a, b]);
        assert!(decode("  ").unwrap().is_empty());
    }

    #[test]
    fn malformed_anchors_are_refused_with_the_reason() {
        let e = decode(r#"{"chain":"a-1","seq":1,"hash":"abc","at":"x"}"#).unwrap_err();
        assert!(e.contains("64 hex"), "{e}");
        let e = decode(&format!(
            r#"{{"chain":"a b","seq":1,"hash":"{H}","at":"x"}}"#
        ))
        .unwrap_err();
        assert!(e.contains("chain id"), "{e}");
        let e = decode(r#"{"chain":"a-1","hash":"x"}"#).unwrap_err();
        assert!(e.contains("not an anchor"), "{e}");
        let e = decode(&format!(
            "{{\"chain\":\"a-1\",\"seq\":1,\"hash\":\"{H}\",\"at\":\"x\"}}\nnope"
        ))
        .unwrap_err();
        assert!(e.starts_with("line 2: not JSON"), "{e}");
        assert!(decode("42").is_err());
    }
}
