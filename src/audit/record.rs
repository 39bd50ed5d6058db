//! The audit record schema (JSON lines). No field can hold a secret: the key appears only as a
//! `key_fingerprint`, clients only by id.
//!
//! The writer adds `ts`, `seq` and `prev_hash` when it appends the record to the chain.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

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
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub request_id: Option<bytestring::ByteString>,
    /// The request's trace (32 hex digits), on `use`/`done` when tracing is on.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub trace_id: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub client_id: Option<Arc<str>>,
    /// How the client authenticated: `key`, `jwt` or `mtls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<&'static str>,
    /// The JWT subject or certificate identity the client was mapped from.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub subject: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub remote_addr: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub method: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub path: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub model: Option<bytestring::ByteString>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub upstream: Option<Arc<str>>,
    /// The replica (`scheme://authority`) of the upstream this attempt went to.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub replica: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub key_version: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
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
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub reason: Option<String>,
    /// Secret source kind (`file`, `vault`) for source events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// Previous key version, on `secret_rotate`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub old_key_version: Option<Arc<str>>,
    /// Free-form, secret-free detail (e.g. an error class, a token TTL in seconds).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub detail: Option<String>,
    /// On `start`: the fingerprint of the chain key (`hmac-sha256:…`) when the chain is keyed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_key: Option<Arc<str>>,
    /// Refusals a `denied_summary` stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Vault's `request_id` of the call behind a `secret_*` / `vault_*` record, to join it with
    /// the Vault audit device's entry.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub vault_request_id: Option<Arc<str>>,
    /// Accessor of the Vault token used (not a credential: it cannot authenticate a request).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "capped")]
    pub vault_accessor: Option<Arc<str>>,
    /// On `config_reload`: what the attempt read and changed (names and digests, never values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Box<super::change::ConfigChange>>,
}

impl Record {
    pub fn event(event: Event) -> Self {
        Self {
            event,
            request_id: None,
            trace_id: None,
            client_id: None,
            auth: None,
            subject: None,
            remote_addr: None,
            method: None,
            path: None,
            model: None,
            upstream: None,
            replica: None,
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
            count: None,
            chain_key: None,
            vault_request_id: None,
            vault_accessor: None,
            config: None,
        }
    }
}

/// Longest string a record field is written with (model, path, reason, detail, …): client and
/// upstream input can be any length, a record line stays short. Longer ones end in `…`.
pub const MAX_FIELD_BYTES: usize = 512;

/// Serialise a string field cut to `MAX_FIELD_BYTES` (at a character boundary).
#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with passes &Option<T>"
)]
fn capped<S: serde::Serializer, T: AsRef<str>>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    let Some(v) = v else {
        return s.serialize_none();
    };
    let v = v.as_ref();
    if v.len() <= MAX_FIELD_BYTES {
        return s.serialize_str(v);
    }
    let mut end = MAX_FIELD_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    s.collect_str(&format_args!("{}…", &v[..end]))
}

/// Append one chained audit line (`{"ts":…,"seq":…,"prev_hash":…,<record fields>}` + `\n`) to
/// `buf`; returns the hex SHA-256 of the line (without `\n`), the next record's `prev_hash`.
pub fn encode_line(buf: &mut Vec<u8>, rec: &Record, seq: u64, prev_hash: &str) -> String {
    encode_line_keyed(buf, rec, seq, prev_hash, None, &super::ChainKey::none())
}

/// `encode_line` with the writer's chain id and the chain's link function (HMAC-SHA256 when the
/// chain is keyed).
pub fn encode_line_keyed(
    buf: &mut Vec<u8>,
    rec: &Record,
    seq: u64,
    prev_hash: &str,
    chain: Option<&str>,
    key: &super::ChainKey,
) -> String {
    let mut link = prev_hash.to_owned();
    encode_line_into(buf, rec, seq, &mut link, chain, key);
    link
}

/// `encode_line_keyed` for the writer: `link` holds the previous record's hash on the way in and
/// this one's on the way out (its buffer reused: no allocation per record).
pub(crate) fn encode_line_into(
    buf: &mut Vec<u8>,
    rec: &Record,
    seq: u64,
    link: &mut String,
    chain: Option<&str>,
    key: &super::ChainKey,
) {
    let start = buf.len();
    buf.extend_from_slice(b"{\"ts\":\"");
    super::encode::write_ts(buf, SystemTime::now());
    buf.extend_from_slice(b"\",\"seq\":");
    buf.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    buf.extend_from_slice(b",\"prev_hash\":\"");
    buf.extend_from_slice(link.as_bytes());
    buf.push(b'"');
    if let Some(c) = chain {
        // `writer::chain_id` makes it of `[A-Za-z0-9._-]` only: no escaping needed.
        buf.extend_from_slice(b",\"chain\":\"");
        buf.extend_from_slice(c.as_bytes());
        buf.push(b'"');
    }
    let brace = buf.len();
    super::encode::write_record(buf, rec);
    // The record's own opening brace becomes the separator after the chain fields.
    buf[brace] = b',';
    escape_invisible(buf, brace);
    key.link_into(&buf[start..], link);
    buf.push(b'\n');
}

/// True for the non-ASCII characters a JSON-lines reader may split on or a terminal may hide:
/// C1 controls (U+0085 NEL included), line/paragraph separators, bidi controls and the other
/// format characters (zero-width, invisible operators, BOM, interlinear annotations, tags).
/// JSON escaping covers only ASCII controls, so these would land raw in a record.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{80}'..='\u{9f}'
        | '\u{ad}'
        | '\u{61c}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

/// Replace every `is_invisible` character in `buf[from..]` (JSON output: they can only be inside
/// strings) by its `\uXXXX` escape, so one record is one line for every reader (Python's
/// `splitlines` included). ASCII-only records (the usual case) cost one scan and no allocation.
fn escape_invisible(buf: &mut Vec<u8>, from: usize) {
    use std::io::Write;
    if buf[from..].is_ascii() {
        return;
    }
    let tail = buf.split_off(from);
    let Ok(text) = std::str::from_utf8(&tail) else {
        buf.extend_from_slice(&tail);
        return;
    };
    let mut units = [0u16; 2];
    for c in text.chars() {
        if is_invisible(c) {
            for u in c.encode_utf16(&mut units) {
                let _ = write!(buf, "\\u{u:04x}");
            }
        } else {
            let mut b = [0u8; 4];
            buf.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn line_separators_and_format_characters_are_escaped() {
        let mut r = Record::event(Event::Use);
        let nasty = "a\u{2028}b\u{2029}c\u{85}d\u{200b}\u{202e}\u{2066}\u{feff}\u{e0041}e\u{1c}f";
        r.model = Some(nasty.into());
        r.path = Some(Arc::from("/v1/caf\u{e9}/\u{65e5}\u{672c}"));
        let mut buf = Vec::new();
        let h = encode_line(&mut buf, &r, 1, "00");
        let line = std::str::from_utf8(&buf).unwrap();
        // One line for every Unicode line-boundary rule; nothing invisible left raw.
        let body = line.strip_suffix('\n').unwrap();
        assert!(
            !body.chars().any(|c| c.is_control() || is_invisible(c)),
            "{line:?}"
        );
        for sep in [
            '\n', '\r', '\u{b}', '\u{c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}',
            '\u{2029}',
        ] {
            assert!(!body.contains(sep), "{sep:?} raw in {line:?}");
        }
        assert!(
            body.contains(r"\u2028") && body.contains(r"\udb40\udc41"),
            "{body}"
        );
        // The escapes decode back to the same strings; printable non-ASCII stays as it was.
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["model"], nasty);
        assert_eq!(v["path"], "/v1/caf\u{e9}/\u{65e5}\u{672c}");
        assert!(body.contains("caf\u{e9}"));
        use sha2::Digest;
        assert_eq!(h, hex::encode(sha2::Sha256::digest(body.as_bytes())));
    }

    #[test]
    fn every_string_field_is_capped() {
        let long: Arc<str> = Arc::from("é".repeat(100_000).as_str());
        let mut r = Record::event(Event::Done);
        r.model = Some((*long).into());
        r.path = Some(long.clone());
        r.request_id = Some((*long).into());
        r.reason = Some(long.to_string());
        r.detail = Some(long.to_string());
        r.method = Some(Cow::Owned(long.to_string()));
        let mut buf = Vec::new();
        encode_line(&mut buf, &r, 1, "00");
        assert!(buf.len() < 6 * (MAX_FIELD_BYTES + 8) + 300, "{}", buf.len());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        for f in ["model", "path", "request_id", "reason", "detail", "method"] {
            let s = v[f].as_str().unwrap();
            assert!(
                s.len() <= MAX_FIELD_BYTES + '…'.len_utf8() && s.ends_with('…'),
                "{f}"
            );
        }
        r.model = Some("short".into());
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""model":"short""#));
    }

    #[test]
    fn record_has_no_empty_fields() {
        let mut r = Record::event(Event::Use);
        r.status = Some(200);
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"event":"use","status":200}"#);
    }
}
