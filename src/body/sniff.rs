//! Watches response bytes go by for `usage` and `model`, without holding up any of them: a JSON
//! response keeps refcounted clones of at most 1 MiB of chunks and parses them once at the end;
//! an SSE stream is scanned line by line and only `data:` lines that can carry what is still
//! missing are parsed.

use bytes::{Bytes, BytesMut};
use std::borrow::Cow;

use crate::audit::Usage;

/// Largest non-streamed response whose `usage` is read (larger ones are forwarded unread).
const JSON_SNIFF_MAX: usize = 1 << 20;
/// Longest SSE line kept across chunk boundaries.
const SSE_LINE_MAX: usize = 256 * 1024;

pub enum Sniffer {
    Json {
        /// The first chunk, then the others (most responses are one chunk: no `Vec`).
        first: Option<Bytes>,
        more: Vec<Bytes>,
        size: usize,
        overflow: bool,
        /// The request named no model: read the response's (else it is not even copied).
        want_model: bool,
    },
    Sse {
        carry: BytesMut,
        usage: Option<Usage>,
        model: Option<String>,
    },
}

/// The top-level `usage` and (`want_model`) `model` of the JSON document `b`: found by a
/// structural walk (`json::members`), so only those two values are deserialised (skipping
/// the rest with serde would allocate for every nested array or object, such as `choices`). The
/// last of a duplicated member wins, as in the NIM's parser.
fn probe(b: &[u8], want_model: bool) -> (Option<Usage>, Option<String>) {
    let (mut usage, mut model, mut keys) = (None, None, true);
    let end = super::json::members(b, |k, v| match k {
        Some("usage") => usage = Some(v),
        Some("model") if want_model => model = Some(v),
        Some(_) => {}
        None => keys = false,
    });
    if !keys || end != super::json::End::Whole {
        return (None, None);
    }
    (
        usage.and_then(|v| serde_json::from_slice::<Option<Usage>>(v).ok().flatten()),
        model.and_then(|v| {
            serde_json::from_slice::<Option<Cow<'_, str>>>(v)
                .ok()
                .flatten()
                .map(String::from)
        }),
    )
}

impl Sniffer {
    pub fn json(want_model: bool) -> Self {
        Self::Json {
            first: None,
            more: Vec::new(),
            size: 0,
            overflow: false,
            want_model,
        }
    }

    pub fn is_sse(&self) -> bool {
        matches!(self, Self::Sse { .. })
    }

    pub fn sse() -> Self {
        Self::Sse {
            carry: BytesMut::new(),
            usage: None,
            model: None,
        }
    }

    pub fn feed(&mut self, d: &Bytes) {
        match self {
            Self::Json {
                first,
                more,
                size,
                overflow,
                ..
            } => {
                if *overflow {
                    return;
                }
                *size += d.len();
                if *size > JSON_SNIFF_MAX {
                    *overflow = true;
                    *first = None;
                    more.clear();
                } else if first.is_none() {
                    *first = Some(d.clone());
                } else {
                    more.push(d.clone());
                }
            }
            Self::Sse {
                carry,
                usage,
                model,
            } => {
                let mut rest: &[u8] = d;
                while let Some(nl) = memchr::memchr(b'\n', rest) {
                    let line: &[u8] = if carry.is_empty() {
                        &rest[..nl]
                    } else {
                        carry.extend_from_slice(&rest[..nl]);
                        &carry[..]
                    };
                    scan_sse_line(line, usage, model);
                    carry.clear();
                    rest = &rest[nl + 1..];
                }
                if !rest.is_empty() && carry.len() + rest.len() <= SSE_LINE_MAX {
                    carry.extend_from_slice(rest);
                }
            }
        }
    }

    /// What was found: (usage, model).
    pub fn result(&mut self) -> (Option<Usage>, Option<String>) {
        match self {
            Self::Json {
                first: Some(one),
                more,
                overflow: false,
                want_model,
                ..
            } => {
                if more.is_empty() {
                    return probe(one, *want_model);
                }
                let mut all =
                    Vec::with_capacity(one.len() + more.iter().map(Bytes::len).sum::<usize>());
                all.extend_from_slice(one);
                for c in more.drain(..) {
                    all.extend_from_slice(&c);
                }
                probe(&all, *want_model)
            }
            Self::Json { .. } => (None, None),
            Self::Sse { usage, model, .. } => (usage.take(), model.take()),
        }
    }
}

fn scan_sse_line(line: &[u8], usage: &mut Option<Usage>, model: &mut Option<String>) {
    let Some(payload) = line.strip_prefix(b"data:") else {
        return;
    };
    let payload = payload.strip_prefix(b" ").unwrap_or(payload);
    let payload = payload.strip_suffix(b"\r").unwrap_or(payload);
    if payload == b"[DONE]" {
        return;
    }
    let want_model = model.is_none();
    let has_usage = memchr::memmem::find(payload, b"\"usage\"").is_some();
    if !want_model && !has_usage {
        return;
    }
    let (u, m) = probe(payload, want_model);
    if want_model {
        *model = m;
    }
    if u.is_some() {
        *usage = u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(p: u64, c: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p + c,
        }
    }

    #[test]
    fn json_usage_across_chunks() {
        let mut s = Sniffer::json(true);
        let body =
            br#"{"model":"m1","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        for part in body.chunks(5) {
            s.feed(&Bytes::copy_from_slice(part));
        }
        assert_eq!(s.result(), (Some(usage(3, 4)), Some("m1".into())));
        // The request named its model: the response's is not read; one chunk or several.
        for size in [body.len(), 5] {
            let mut s = Sniffer::json(false);
            for part in body.chunks(size) {
                s.feed(&Bytes::copy_from_slice(part));
            }
            assert_eq!(s.result(), (Some(usage(3, 4)), None));
        }
    }

    #[test]
    fn json_missing_fields_default_to_zero_and_bad_json_is_ignored() {
        let mut s = Sniffer::json(true);
        s.feed(&Bytes::from_static(br#"{"usage":{"prompt_tokens":9}}"#));
        assert_eq!(
            s.result().0,
            Some(usage(9, 0)).map(|mut u| {
                u.total_tokens = 0;
                u
            })
        );
        let mut s = Sniffer::json(true);
        s.feed(&Bytes::from_static(b"{not json"));
        assert_eq!(s.result(), (None, None));
    }

    #[test]
    fn json_over_the_cap_is_not_read() {
        let mut s = Sniffer::json(true);
        s.feed(&Bytes::from(vec![b' '; JSON_SNIFF_MAX]));
        s.feed(&Bytes::from_static(br#"{"usage":{"prompt_tokens":1}}"#));
        assert_eq!(s.result(), (None, None));
    }

    #[test]
    fn sse_usage_from_the_last_chunk_with_lines_split_across_frames() {
        let mut s = Sniffer::sse();
        let stream = concat!(
            "data: {\"model\":\"m2\",\"choices\":[]}\r\n\r\n",
            "data: {\"choices\":[],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":6,\"total_tokens\":11}}\n\n",
            "data: [DONE]\n\n"
        );
        for part in stream.as_bytes().chunks(7) {
            s.feed(&Bytes::copy_from_slice(part));
        }
        assert_eq!(s.result(), (Some(usage(5, 6)), Some("m2".into())));
    }

    #[test]
    fn sse_non_data_lines_and_comments_are_skipped() {
        let mut s = Sniffer::sse();
        s.feed(&Bytes::from_static(
            b": keep-alive\nevent: x\nid: 1\ndata:{\"model\":\"m3\"}\n",
        ));
        assert_eq!(s.result(), (None, Some("m3".into())));
    }
}
