//! The `read_prefix` phase: read up to `PEEK_BYTES` of the request body before anything is sent,
//! so the `use` record (and, with several upstreams, the route) can name the model, and a small
//! body can be replayed once after a key refresh. Larger bodies stream on after the prefix.

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::request_body::RequestBody;
use crate::error::GatewayError;

/// How much of a request body is read before forwarding: enough to hold a whole chat request.
pub const PEEK_BYTES: usize = 64 * 1024;

/// The body as it will be sent, plus what the prefix told us.
pub struct Prefix {
    pub body: RequestBody,
    /// The whole body when it fit in the prefix (`Some(None)`: empty), for one replay.
    pub replay: Option<Option<Bytes>>,
    pub model: Option<Arc<str>>,
}

/// Read the prefix of `body` (bytes so far go to `counter`), within `deadline`'s budget.
pub async fn read_prefix(
    mut body: Incoming,
    limit: u64,
    counter: &Arc<AtomicU64>,
    deadline: tokio::time::Instant,
) -> Result<Prefix, GatewayError> {
    use http_body::Body as _;
    // The first frame apart: most bodies are one frame, and then no `VecDeque` is allocated.
    let mut first: Option<Bytes> = None;
    let mut prefix = VecDeque::new();
    let mut total = 0usize;
    while total < PEEK_BYTES && !body.is_end_stream() {
        match body.frame().await {
            None => break,
            Some(Err(_)) => return Err(GatewayError::BadRequest),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    total += d.len();
                    if total as u64 > limit {
                        return Err(GatewayError::BodyTooLarge);
                    }
                    if first.is_none() {
                        first = Some(d);
                    } else {
                        prefix.push_back(d);
                    }
                }
            }
        }
    }
    counter.store(total as u64, Ordering::Relaxed);
    if body.is_end_stream() || total < PEEK_BYTES {
        let data = match first {
            None => Bytes::new(),
            Some(one) if prefix.is_empty() => one,
            Some(one) => {
                let mut b = BytesMut::with_capacity(total);
                b.extend_from_slice(&one);
                for c in prefix {
                    b.extend_from_slice(&c);
                }
                b.freeze()
            }
        };
        let model = model_of(&data);
        let data = (!data.is_empty()).then_some(data);
        return Ok(Prefix {
            body: RequestBody::Replay { data: data.clone() },
            replay: Some(data),
            model,
        });
    }
    if let Some(one) = first {
        prefix.push_front(one);
    }
    // The model may be anywhere in the prefix, which may have come in many frames.
    let model = if prefix.len() == 1 {
        prefix.front().and_then(|b| model_of_prefix(b))
    } else {
        // One copy of at most `PEEK_BYTES + one frame`, only for bodies over the peek.
        let mut b = BytesMut::with_capacity(total);
        for c in &prefix {
            b.extend_from_slice(c);
        }
        model_of_prefix(&b)
    };
    Ok(Prefix {
        body: RequestBody::Stream {
            prefix,
            rest: body,
            seen: total as u64,
            limit,
            counter: counter.clone(),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        },
        replay: None,
        model,
    })
}

/// Longest model name recorded or routed on; a longer one counts as no model.
pub const MAX_MODEL_BYTES: usize = 256;

/// The top-level `model` of a whole JSON body, read the way the NIM's parser reads it.
///
/// The NIM is Python (FastAPI/Starlette): `json.loads(body_bytes)`. So, like it:
/// - a UTF-8 BOM is skipped (`json.loads` on *bytes* decodes with `utf-8-sig`; only a `str` with
///   a BOM is refused), and JSON whitespace around the document is fine;
/// - with duplicate keys the **last** `model` wins; a last `model` that is not a string means no
///   model (the NIM's schema refuses it);
/// - keys are compared decoded (`"mod\u0065l"` is `model`); a nested `model` never counts;
/// - values are skipped structurally (strings, nesting), so Python-only literals such as `NaN` or
///   `Infinity` elsewhere do not hide the model as a strict parser would;
/// - a UTF-16/32 body (which `json.loads` would also decode) gives no model, as does any body
///   that is not one JSON object.
pub fn model_of(body: &[u8]) -> Option<Arc<str>> {
    scan(body, true)
}

/// Like [`model_of`] for the first bytes of a longer body: the last top-level `model` seen
/// before the prefix ends. A duplicate `model` after the prefix is not seen (documented limit).
pub fn model_of_prefix(prefix: &[u8]) -> Option<Arc<str>> {
    scan(prefix, false)
}

const BOM: &[u8] = b"\xef\xbb\xbf";

fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i] == '"'`: the index just past the closing quote, if the string ends within `b`.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the value starting at `b[i]`, if it ends within `b`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j < b.len() && j > i).then_some(j)
        }
    }
}

/// A JSON string token (quotes included), decoded; borrowed when it has no escapes.
fn decode(tok: &[u8]) -> Option<Cow<'_, str>> {
    let inner = tok.get(1..tok.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(tok).ok().map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Walk the top-level object's members; `complete`: `b` is the whole body (a truncated or
/// malformed document gives no model), else a prefix (what was seen before it ends counts).
fn scan(b: &[u8], complete: bool) -> Option<Arc<str>> {
    let b = b.strip_prefix(BOM).unwrap_or(b);
    let mut found: Option<Cow<'_, str>> = None;
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = ws(b, i + 1);
    let end_ok = |found: Option<Cow<'_, str>>, i: usize| -> Option<Arc<str>> {
        // After the object only whitespace may follow.
        if complete && ws(b, i) != b.len() {
            return None;
        }
        found
            .filter(|m| m.len() <= MAX_MODEL_BYTES)
            .map(|m| Arc::from(m.as_ref()))
    };
    let truncated = |found: Option<Cow<'_, str>>| -> Option<Arc<str>> {
        if complete {
            return None;
        }
        found
            .filter(|m| m.len() <= MAX_MODEL_BYTES)
            .map(|m| Arc::from(m.as_ref()))
    };
    if b.get(i) == Some(&b'}') {
        return end_ok(None, i + 1);
    }
    loop {
        match b.get(i) {
            None => return truncated(found),
            Some(b'"') => {}
            Some(_) => return None,
        }
        let Some(k_end) = string_end(b, i) else {
            return truncated(found);
        };
        let is_model = decode(&b[i..k_end]).is_some_and(|k| k == "model");
        // Cut inside a `model` member: its value is unknown, so is the model.
        let cut = if is_model { None } else { found.clone() };
        i = ws(b, k_end);
        match b.get(i) {
            None => return truncated(cut),
            Some(b':') => {}
            Some(_) => return None,
        }
        i = ws(b, i + 1);
        if i >= b.len() {
            return truncated(cut);
        }
        let Some(v_end) = value_end(b, i) else {
            return truncated(cut);
        };
        if is_model {
            found = if b[i] == b'"' {
                Some(decode(&b[i..v_end])?)
            } else {
                None
            };
        }
        i = ws(b, v_end);
        match b.get(i) {
            None => return truncated(found),
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return end_ok(found, i + 1),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Option<String> {
        model_of(s.as_bytes()).map(|m| m.to_string())
    }

    #[test]
    fn plain_and_whitespace() {
        assert_eq!(m(r#"{"model":"a"}"#).as_deref(), Some("a"));
        assert_eq!(
            m(" \r\n\t{ \"model\" : \"a\" , \"x\":1 }\n ").as_deref(),
            Some("a")
        );
        assert_eq!(m(r#"{"messages":[],"model":"b"}"#).as_deref(), Some("b"));
        assert_eq!(m("{}"), None);
        assert_eq!(m(""), None);
    }

    #[test]
    fn last_duplicate_wins_like_json_loads() {
        assert_eq!(m(r#"{"model":"a","model":"b"}"#).as_deref(), Some("b"));
        assert_eq!(
            m(r#"{"model":"a","x":{"model":"c"},"model":"b"}"#).as_deref(),
            Some("b")
        );
        // A last `model` that is not a string: the NIM refuses it, so no model.
        assert_eq!(m(r#"{"model":"a","model":1}"#), None);
        assert_eq!(m(r#"{"model":"a","model":null}"#), None);
        assert_eq!(m(r#"{"model":1,"model":"a"}"#).as_deref(), Some("a"));
    }

    #[test]
    fn bom_is_skipped_like_json_loads_on_bytes() {
        assert_eq!(
            model_of(b"\xef\xbb\xbf{\"model\":\"a\"}").as_deref(),
            Some("a")
        );
        assert_eq!(model_of(b"\xef\xbb\xbf\xef\xbb\xbf{\"model\":\"a\"}"), None);
    }

    #[test]
    fn nested_or_disguised_model_does_not_fool_it() {
        assert_eq!(m(r#"{"x":{"model":"evil"}}"#), None);
        assert_eq!(
            m(r#"{"x":[{"model":"evil"}],"model":"good"}"#).as_deref(),
            Some("good")
        );
        assert_eq!(
            m(r#"{"x":"\"model\":\"evil\"","model":"good"}"#).as_deref(),
            Some("good")
        );
        assert_eq!(
            m(r#"{"x":"}{\"model\":\"evil\"}","model":"good"}"#).as_deref(),
            Some("good")
        );
        assert_eq!(m(r#"{"x":"\\","model":"good"}"#).as_deref(), Some("good"));
        assert_eq!(
            m(r#"{"x":[1,[2,{"model":"e"}]],"y":{"z":{"model":"e"}}}"#),
            None
        );
        assert_eq!(m(r#"[{"model":"a"}]"#), None);
        assert_eq!(m(r#""model""#), None);
        assert_eq!(m(r#"{"Model":"a","MODEL":"b"}"#), None);
        assert_eq!(m(r#"{"model ":"a"," model":"b"}"#), None);
    }

    #[test]
    fn keys_and_values_compare_decoded() {
        assert_eq!(m(r#"{"mod\u0065l":"a"}"#).as_deref(), Some("a"));
        assert_eq!(m(r#"{"model":"a\u002fb"}"#).as_deref(), Some("a/b"));
        assert_eq!(m(r#"{"model":"a","mod\u0065l":"b"}"#).as_deref(), Some("b"));
        assert_eq!(m(r#"{"model":"\ud800"}"#), None);
    }

    #[test]
    fn python_literals_elsewhere_do_not_hide_it() {
        assert_eq!(
            m(r#"{"temperature":NaN,"model":"a","top_p":-Infinity}"#).as_deref(),
            Some("a")
        );
    }

    #[test]
    fn malformed_or_truncated_whole_bodies_give_none() {
        assert_eq!(m(r#"{"model":"a""#), None);
        assert_eq!(m(r#"{"model":"a",}"#), None);
        assert_eq!(m(r#"{"model":"a"} x"#), None);
        assert_eq!(m(r#"{"model":"a"}{"model":"b"}"#), None);
        assert_eq!(m(r#"{"model" "a"}"#), None);
        assert_eq!(m(r#"{model:"a"}"#), None);
        assert_eq!(m(r#"{"x":[}],"model":"a"}"#), None);
        // UTF-16: `json.loads` would decode it; we do not guess.
        assert_eq!(model_of(b"{\0\"\0m\0"), None);
    }

    #[test]
    fn long_models_are_not_taken() {
        let long = "m".repeat(MAX_MODEL_BYTES + 1);
        assert_eq!(m(&format!(r#"{{"model":"{long}"}}"#)), None);
        let ok = "m".repeat(MAX_MODEL_BYTES);
        assert_eq!(m(&format!(r#"{{"model":"{ok}"}}"#)), Some(ok));
    }

    #[test]
    fn prefixes_give_the_last_model_seen() {
        let p = |s: &str| model_of_prefix(s.as_bytes()).map(|m| m.to_string());
        assert_eq!(
            p(r#"{"model":"a","messages":[{"role":"user","content":"xx"#).as_deref(),
            Some("a")
        );
        assert_eq!(p(r#"{"messages":[{"model":"evil","content":"xx"#), None);
        assert_eq!(
            p(r#"{"model":"a","model":"b","messages":["#).as_deref(),
            Some("b")
        );
        assert_eq!(p(r#"{"model":"a","model":"#), None);
        assert_eq!(p(r#"{"model":"a","model""#), None);
        assert_eq!(p(r#"{"model":"a","x":"#).as_deref(), Some("a"));
        assert_eq!(p(r#"{"model":"abc"#), None);
    }
}
