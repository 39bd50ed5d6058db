//! The audit record schema (JSON lines). No field can hold a secret: the key appears only as a
//! `key_fingerprint`, clients only by id.
//!
//! The writer adds `ts`, `seq` and `prev_hash` when it appends the record to the chain.

use serde::Serialize;
use std::borrow::Cow;
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
    pub request_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<Arc<str>>,
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
    buf.extend_from_slice(b"{\"ts\":\"");
    write_ts(buf, SystemTime::now());
    let _ = write!(buf, "\",\"seq\":{seq},\"prev_hash\":\"{prev_hash}\"");
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
    let mut b = Vec::with_capacity(24);
    write_ts(&mut b, SystemTime::now());
    String::from_utf8(b).unwrap_or_default()
}

/// Append `t` as RFC 3339 UTC with milliseconds. The date-and-seconds part is formatted once per
/// second per thread.
fn write_ts(buf: &mut Vec<u8>, t: SystemTime) {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, head) = CACHE.get();
    if cached == secs {
        buf.extend_from_slice(&head);
    } else {
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, dd) = civil_from_days(days as i64);
        let s = format!(
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        // Years beyond 9999 do not fit the cache and are formatted every time.
        if let Ok(head) = <[u8; 19]>::try_from(s.as_bytes()) {
            CACHE.set((secs, head));
        }
        buf.extend_from_slice(s.as_bytes());
    }
    let ms = d.subsec_millis();
    buf.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
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
    fn timestamps() {
        let at = |secs: u64, ms: u64| {
            let mut b = Vec::new();
            write_ts(
                &mut b,
                UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + ms),
            );
            String::from_utf8(b).unwrap()
        };
        assert_eq!(at(0, 7), "1970-01-01T00:00:00.007Z");
        // Same second (cached head), then the next one.
        assert_eq!(at(1_795_910_399, 999), "2026-11-28T23:59:59.999Z");
        assert_eq!(at(1_795_910_399, 40), "2026-11-28T23:59:59.040Z");
        assert_eq!(at(1_795_910_400, 0), "2026-11-29T00:00:00.000Z");
        assert_eq!(now_rfc3339().len(), 24);
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
