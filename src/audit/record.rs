//! The audit record schema (JSON lines). No field can hold a secret: the key appears only as a
//! `key_fingerprint`, clients only by id.
//!
//! The writer adds `ts`, `seq` and `prev_hash` when it appends the record to the chain.

use serde::Serialize;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// One audit event. `event` is one of: `use`, `done`, `denied`, `start`, and the secret-source
/// events `secret_fetch`, `secret_rotate`, `secret_failure`, `secret_evict`, `vault_login`,
/// `vault_renew`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Record {
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_version: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_fingerprint: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Why a request was denied or ended abnormally, or what a source event was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Secret source kind (`file`, `vault`) for source events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// Previous key version, on `secret_rotate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_key_version: Option<Arc<str>>,
    /// Free-form, secret-free detail (e.g. an error class, a token TTL in seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    pub fn event(event: &'static str) -> Self {
        Self {
            event,
            ..Self::default()
        }
    }
}

/// Append one chained audit line (`{"ts":…,"seq":…,"prev_hash":…,<record fields>}` + `\n`) to
/// `buf`; returns the hex SHA-256 of the line (without `\n`), the next record's `prev_hash`.
pub fn encode_line(buf: &mut Vec<u8>, rec: &Record, seq: u64, prev_hash: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let start = buf.len();
    let _ = write!(
        buf,
        "{{\"ts\":\"{}\",\"seq\":{seq},\"prev_hash\":\"{prev_hash}\"",
        now_rfc3339()
    );
    let brace = buf.len();
    if serde_json::to_writer(&mut *buf, rec).is_err() {
        buf.truncate(brace);
        buf.extend_from_slice(br#"{"event":"unencodable_record"}"#);
    }
    // The record's own opening brace becomes the separator after the chain fields.
    buf[brace] = b',';
    let hash = hex::encode(Sha256::digest(&buf[start..]));
    buf.push(b'\n');
    hash
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-28T23:59:01.123Z`.
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }

    #[test]
    fn encoded_line_chains() {
        let mut buf = Vec::new();
        let h = encode_line(&mut buf, &Record::event("use"), 7, "ab");
        let line = std::str::from_utf8(&buf).unwrap();
        assert!(
            line.ends_with("\"seq\":7,\"prev_hash\":\"ab\",\"event\":\"use\"}\n"),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], 7);
        use sha2::Digest;
        assert_eq!(
            h,
            hex::encode(sha2::Sha256::digest(line.trim_end().as_bytes()))
        );
    }

    #[test]
    fn record_has_no_empty_fields() {
        let mut r = Record::event("use");
        r.status = Some(200);
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"event":"use","status":200}"#);
    }
}
