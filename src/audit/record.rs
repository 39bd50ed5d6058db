//! The audit record schema (JSON lines). No field can hold a secret: the key appears only as a
//! `key_fingerprint`, clients only by id.
//!
//! The writer adds `ts`, `seq` and `prev_hash` when it appends the record to the chain.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Event;

/// Token counts as the NIM reports them (OpenAI's `usage` object); a missing count is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// One audit event (see `Event` for the names).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub event: Event,
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
    /// Vault's `request_id` of the call behind a `secret_*` / `vault_*` record, to join it with
    /// the Vault audit device's entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_request_id: Option<Arc<str>>,
    /// Accessor of the Vault token used (not a credential: it cannot authenticate a request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault_accessor: Option<Arc<str>>,
}

impl Record {
    pub fn event(event: Event) -> Self {
        Self {
            event,
            request_id: None,
            client_id: None,
            remote_addr: None,
            method: None,
            path: None,
            model: None,
            upstream: None,
            key_version: None,
            key_fingerprint: None,
            status: None,
            duration_ms: None,
            bytes_in: None,
            bytes_out: None,
            usage: None,
            reason: None,
            source: None,
            old_key_version: None,
            detail: None,
            vault_request_id: None,
            vault_accessor: None,
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

/// Append `t` as RFC 3339 UTC with milliseconds. The date-and-seconds head (humantime's
/// formatting) is made once per second per thread.
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
        // "YYYY-MM-DDTHH:MM:SSZ": the head is everything before the `Z`.
        let s =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .to_string();
        let head = s.trim_end_matches('Z');
        if let Ok(h) = <[u8; 19]>::try_from(head.as_bytes()) {
            CACHE.set((secs, h));
        }
        buf.extend_from_slice(head.as_bytes());
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(now_rfc3339().len(), 24);
    }

    #[test]
    fn encoded_line_chains() {
        let mut buf = Vec::new();
        let h = encode_line(&mut buf, &Record::event(Event::Use), 7, "ab");
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
        let mut r = Record::event(Event::Use);
        r.status = Some(200);
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"event":"use","status":200}"#);
    }
}
