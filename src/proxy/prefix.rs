//! The `read_prefix` phase: read up to `PEEK_BYTES` of the request body before anything is sent,
//! so the `use` record (and, with several upstreams, the route) can name the model, and a small
//! body can be replayed once after a key refresh. Larger bodies stream on after the prefix.

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use super::request_body::{BytesIn, RequestBody};
use crate::body::json::{decode, members, End};
use crate::error::GatewayError;

/// How much of a request body is read before forwarding: enough to hold a whole chat request.
pub const PEEK_BYTES: usize = 64 * 1024;

/// The body as it will be sent, plus what the prefix told us.
pub struct Prefix {
    pub body: RequestBody,
    /// The whole body when it fit in the prefix (`Some(None)`: empty), for one replay.
    pub replay: Option<Option<Bytes>>,
    pub model: Option<ByteString>,
    /// The body's bytes read: all of them for a replayable body, else a running count.
    pub bytes_in: BytesIn,
}

/// Read the prefix of `body`, within `deadline`'s budget.
pub async fn read_prefix(
    mut body: Incoming,
    limit: u64,
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
            bytes_in: BytesIn::Known(total as u64),
        });
    }
    if let Some(one) = first {
        prefix.push_front(one);
    }
    // The model may be anywhere in the prefix, which may have come in many frames.
    let model = if prefix.len() == 1 {
        prefix.front().and_then(model_of_prefix)
    } else {
        // One copy of at most `PEEK_BYTES + one frame`, only for bodies over the peek.
        let mut b = BytesMut::with_capacity(total);
        for c in &prefix {
            b.extend_from_slice(c);
        }
        model_of_prefix(&b.freeze())
    };
    let counter = Arc::new(AtomicU64::new(total as u64));
    Ok(Prefix {
        bytes_in: BytesIn::Counted(counter.clone()),
        body: RequestBody::Stream {
            prefix,
            rest: body,
            seen: total as u64,
            limit,
            counter,
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
///
/// The name shares `body`'s buffer unless it had escapes to decode.
pub fn model_of(body: &Bytes) -> Option<ByteString> {
    shared(body, scan(body, true)?)
}

/// Like [`model_of`] for the first bytes of a longer body: the last top-level `model` seen
/// before the prefix ends. A duplicate `model` after the prefix is not seen (documented limit).
pub fn model_of_prefix(prefix: &Bytes) -> Option<ByteString> {
    shared(prefix, scan(prefix, false)?)
}

/// The model `scan` found in `b`: a slice of `b` (no copy) when borrowed from it.
fn shared(b: &Bytes, m: Cow<'_, str>) -> Option<ByteString> {
    if m.len() > MAX_MODEL_BYTES {
        return None;
    }
    Some(match m {
        Cow::Borrowed(s) => ByteString::try_from(b.slice_ref(s.as_bytes())).ok()?,
        Cow::Owned(s) => ByteString::from(s),
    })
}

/// The last top-level `model` of `b`; `complete`: `b` is the whole body (a truncated or
/// malformed document gives no model), else a prefix (what was seen before it ends counts).
fn scan(b: &[u8], complete: bool) -> Option<Cow<'_, str>> {
    let mut found = None;
    let mut undecodable = false;
    let end = members(b, |k, v| {
        if k == Some("model") {
            found = if v.first() == Some(&b'"') {
                let d = decode(v);
                undecodable |= d.is_none();
                d
            } else {
                None
            };
        }
    });
    if undecodable {
        return None;
    }
    match end {
        End::Bad => None,
        End::Trailing | End::Cut(_) if complete => None,
        // Cut inside a `model` member: its value is unknown, so is the model.
        End::Cut(Some(k)) if k == "model" => None,
        End::Whole | End::Trailing | End::Cut(_) => found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Option<String> {
        model_of(&Bytes::copy_from_slice(s.as_bytes())).map(|m| m.to_string())
    }

    #[test]
    fn a_plain_model_shares_the_body_and_an_escaped_one_is_decoded() {
        let body = Bytes::from_static(br#"{"model":"meta/llama"}"#);
        let got = model_of(&body).unwrap();
        assert_eq!(&*got, "meta/llama");
        let range = body.as_ptr_range();
        assert!(
            range.contains(&got.as_bytes().as_ptr()),
            "a slice of the body"
        );
        let escaped = Bytes::from_static(br#"{"model":"meta\/llama"}"#);
        let got = model_of(&escaped).unwrap();
        assert_eq!(&*got, "meta/llama");
        assert!(!escaped.as_ptr_range().contains(&got.as_bytes().as_ptr()));
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
            model_of(&Bytes::from_static(b"\xef\xbb\xbf{\"model\":\"a\"}")).as_deref(),
            Some("a")
        );
        assert_eq!(
            model_of(&Bytes::from_static(
                b"\xef\xbb\xbf\xef\xbb\xbf{\"model\":\"a\"}"
            )),
            None
        );
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
        assert_eq!(model_of(&Bytes::from_static(b"{\0\"\0m\0")), None);
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
        let p =
            |s: &str| model_of_prefix(&Bytes::copy_from_slice(s.as_bytes())).map(|m| m.to_string());
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
