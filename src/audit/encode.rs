//! A record's fields as JSON, written straight into the line buffer: the same bytes serde_json
//! writes for `Record` (field order, skipped `None`s, escapes, `MAX_FIELD_BYTES` caps; a test
//! compares them), without its per-field serializer calls. The rare nested `config` and the
//! floats still go through serde_json (no allocation either way). Also the RFC 3339 timestamps
//! of the lines.

use std::time::{SystemTime, UNIX_EPOCH};

use super::record::{Record, MAX_FIELD_BYTES};

/// Append `rec` as a JSON object (`{"event":…}`) to `buf`.
pub(super) fn write_record(buf: &mut Vec<u8>, rec: &Record) {
    buf.extend_from_slice(b"{\"event\":\"");
    buf.extend_from_slice(rec.event.as_str().as_bytes());
    buf.push(b'"');
    let mut w = Fields(buf);
    w.text("request_id", rec.request_id.as_deref());
    w.text("trace_id", rec.trace_id.as_deref());
    w.text("client_id", rec.client_id.as_deref());
    w.uncapped("auth", rec.auth);
    for (k, v) in [
        ("subject", rec.subject.as_deref()),
        ("remote_addr", rec.remote_addr.as_deref()),
        ("method", rec.method.as_deref()),
        ("path", rec.path.as_deref()),
        ("model", rec.model.as_deref()),
        ("upstream", rec.upstream.as_deref()),
        ("replica", rec.replica.as_deref()),
        ("key_version", rec.key_version.as_deref()),
        ("key_fingerprint", rec.key_fingerprint.as_deref()),
    ] {
        w.text(k, v);
    }
    w.int("status", rec.status.map(u64::from));
    if let Some(ms) = rec.duration_ms {
        w.key("duration_ms");
        if serde_json::to_writer(&mut *w.0, &ms).is_err() {
            w.0.extend_from_slice(b"null");
        }
    }
    w.int("bytes_in", rec.bytes_in);
    w.int("bytes_out", rec.bytes_out);
    if let Some(u) = &rec.usage {
        w.key("usage");
        w.0.push(b'{');
        let mut first = true;
        for (k, v) in [
            ("prompt_tokens", u.prompt_tokens),
            ("completion_tokens", u.completion_tokens),
            ("total_tokens", u.total_tokens),
        ] {
            if !std::mem::take(&mut first) {
                w.0.push(b',');
            }
            w.0.push(b'"');
            w.0.extend_from_slice(k.as_bytes());
            w.0.extend_from_slice(b"\":");
            w.0.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
        w.0.push(b'}');
    }
    w.text("reason", rec.reason.as_deref());
    w.uncapped("source", rec.source);
    w.text("old_key_version", rec.old_key_version.as_deref());
    w.text("detail", rec.detail.as_deref());
    w.uncapped("chain_key", rec.chain_key.as_deref());
    w.int("count", rec.count);
    for (k, v) in [
        ("vault_request_id", rec.vault_request_id.as_deref()),
        ("vault_accessor", rec.vault_accessor.as_deref()),
    ] {
        w.text(k, v);
    }
    if let Some(c) = &rec.config {
        w.key("config");
        let at = w.0.len();
        if serde_json::to_writer(&mut *w.0, &**c).is_err() {
            w.0.truncate(at);
            w.0.extend_from_slice(b"null");
        }
    }
    buf.push(b'}');
}

struct Fields<'a>(&'a mut Vec<u8>);

impl Fields<'_> {
    fn key(&mut self, k: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(k.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// A string field cut to `MAX_FIELD_BYTES` (at a character boundary, then `…`).
    fn text(&mut self, k: &str, v: Option<&str>) {
        let Some(v) = v else { return };
        self.key(k);
        if v.len() <= MAX_FIELD_BYTES {
            json_str(self.0, v, "");
        } else {
            let mut end = MAX_FIELD_BYTES;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            json_str(self.0, &v[..end], "…");
        }
    }

    /// A string field of ours (a fixed name or fingerprint): never capped.
    fn uncapped(&mut self, k: &str, v: Option<&str>) {
        let Some(v) = v else { return };
        self.key(k);
        json_str(self.0, v, "");
    }

    fn int(&mut self, k: &str, v: Option<u64>) {
        let Some(v) = v else { return };
        self.key(k);
        self.0
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
}

/// `"` + `s` escaped as serde_json escapes it + `tail` + `"`.
fn json_str(buf: &mut Vec<u8>, s: &str, tail: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.extend_from_slice(tail.as_bytes());
    buf.push(b'"');
}

/// Append `t` as RFC 3339 UTC with milliseconds. The date-and-seconds head (humantime's
/// formatting) is made once per second per thread.
pub(super) fn write_ts(buf: &mut Vec<u8>, t: SystemTime) {
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
    }

    use crate::audit::{Event, Usage};
    use std::borrow::Cow;
    use std::sync::Arc;

    fn both(r: &Record) -> (String, String) {
        let mut b = Vec::new();
        write_record(&mut b, r);
        (
            String::from_utf8(b).unwrap(),
            serde_json::to_string(r).unwrap(),
        )
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let nasty = "q\"b\\s\n\r\t\u{8}\u{c}\u{1}\u{1f}\u{7f}caf\u{e9}\u{2028}\u{e0041}";
        let a = |s: &str| Some(Arc::<str>::from(s));
        let mut r = Record::event(Event::Done);
        assert_eq!(both(&r).0, both(&r).1);
        r.request_id = Some("0123abcd".into());
        r.trace_id = a(nasty);
        r.client_id = a("team-a");
        r.auth = Some("key");
        r.subject = a(nasty);
        r.remote_addr = a("127.0.0.1:5000");
        r.method = Some(Cow::Borrowed("POST"));
        r.path = a("/v1/chat/completions");
        r.model = Some("é".repeat(400).into());
        r.upstream = a("llama");
        r.replica = a("http://127.0.0.1:8000");
        r.key_version = a("v3");
        r.key_fingerprint = a("sha256:0011");
        r.status = Some(200);
        r.bytes_in = Some(123);
        r.bytes_out = Some(u64::MAX);
        r.reason = Some("x".repeat(600));
        r.source = Some("vault");
        r.old_key_version = a("v2");
        r.detail = Some(nasty.into());
        r.chain_key = a("hmac-sha256:00");
        r.count = Some(0);
        r.vault_request_id = a("rid");
        r.vault_accessor = a("acc");
        r.config = Some(Box::default());
        for ms in [0.0, 1.0, 0.001, 12.345, 1e-7, 123_456_789.5] {
            r.duration_ms = Some(ms);
            for usage in [
                None,
                Some(Usage::default()),
                Some(Usage {
                    prompt_tokens: 1,
                    completion_tokens: 22,
                    total_tokens: 23,
                }),
            ] {
                r.usage = usage;
                let (ours, serde) = both(&r);
                assert_eq!(ours, serde);
            }
        }
        r.path = Some(Arc::from("/".repeat(513).as_str()));
        let (ours, serde) = both(&r);
        assert_eq!(ours, serde);
    }
}
