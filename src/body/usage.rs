//! Usage that is always known (issue 19): for a client with a token budget, a streamed request
//! that did not ask for `stream_options.include_usage` gets it added (`ask_for_usage`, on the
//! request body), and the extra usage event the NIM then sends last (`"choices": []` plus a
//! `usage` object) is removed from what the client receives (`UsageStrip`) after the sniffer has
//! counted it. The client sees exactly the stream it asked for.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// The request body with `stream_options.include_usage = true`, or `None` when it is not a
/// streamed JSON request, already asks for usage, or cannot be read. Keys are read the way the
/// NIM's parser reads them (last duplicate wins). Without `stream_options` the option is
/// appended as the object's last key (the body is otherwise untouched); an existing
/// `stream_options` object is merged.
pub fn ask_for_usage(body: &[u8]) -> Option<Bytes> {
    let text = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut v: Value = serde_json::from_slice(text).ok()?;
    let obj = v.as_object_mut()?;
    if obj.get("stream") != Some(&Value::Bool(true)) {
        return None;
    }
    match obj.get_mut("stream_options") {
        None => {
            let end = text.iter().rposition(|&b| b == b'}')?;
            let mut out = Vec::with_capacity(text.len() + 40);
            out.extend_from_slice(&text[..end]);
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
            out.extend_from_slice(&text[end..]);
            Some(out.into())
        }
        Some(Value::Object(o)) => {
            if o.get("include_usage") == Some(&Value::Bool(true)) {
                return None;
            }
            o.insert("include_usage".into(), Value::Bool(true));
            serde_json::to_vec(&v).ok().map(Bytes::from)
        }
        Some(Value::Null) => {
            obj.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
            serde_json::to_vec(&v).ok().map(Bytes::from)
        }
        Some(_) => None,
    }
}

/// Removes the one usage-only SSE event from a stream (see the module header). Events are
/// forwarded whole, as they complete: a chunk of complete events without the usage event passes
/// without a copy; only an event split across chunks is held until its end.
#[derive(Default)]
pub struct UsageStrip {
    partial: BytesMut,
    done: bool,
}

/// Whether one complete SSE event (without its blank-line terminator) is the usage-only chunk.
fn is_usage_event(ev: &[u8]) -> bool {
    let Some(data) = ev.strip_prefix(b"data:") else {
        return false;
    };
    if memchr::memmem::find(data, b"\"usage\"").is_none() {
        return false;
    }
    serde_json::from_slice::<Value>(data).is_ok_and(|v| {
        v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
            && v.get("usage").is_some_and(Value::is_object)
    })
}

/// End offsets (after the terminator) of the complete events in `b`, and where the usage
/// event is, if present: `(start, end)`.
fn find_usage(b: &[u8]) -> (usize, Option<(usize, usize)>) {
    let mut start = 0;
    let mut found = None;
    while let Some(i) = memchr::memmem::find(&b[start..], b"\n\n") {
        let end = start + i + 2;
        let ev = b[start..start + i]
            .strip_suffix(b"\r")
            .unwrap_or(&b[start..start + i]);
        if found.is_none() && is_usage_event(ev) {
            found = Some((start, end));
        }
        start = end;
    }
    (start, found)
}

impl UsageStrip {
    pub fn feed(&mut self, d: Bytes) -> Bytes {
        if self.done {
            if self.partial.is_empty() {
                return d;
            }
            self.partial.extend_from_slice(&d);
            return self.partial.split().freeze();
        }
        let whole = if self.partial.is_empty() {
            d
        } else {
            self.partial.extend_from_slice(&d);
            self.partial.split().freeze()
        };
        let (complete, usage) = find_usage(&whole);
        if complete < whole.len() {
            self.partial.extend_from_slice(&whole[complete..]);
        }
        match usage {
            None => whole.slice(..complete),
            Some((s, e)) => {
                self.done = true;
                let mut out = BytesMut::with_capacity(complete - (e - s));
                out.extend_from_slice(&whole[..s]);
                out.extend_from_slice(&whole[e..complete]);
                out.freeze()
            }
        }
    }

    pub fn holding(&self) -> bool {
        !self.partial.is_empty()
    }

    /// At the end of the stream: whatever incomplete event remains, as it came.
    pub fn flush(&mut self) -> Option<Bytes> {
        (!self.partial.is_empty()).then(|| self.partial.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_asked_for_only_where_missing() {
        let b = ask_for_usage(br#"{"model":"m","stream":true,"messages":[]}"#).unwrap();
        assert_eq!(
            &b[..],
            br#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
        );
        assert!(ask_for_usage(br#"{"model":"m","stream":false}"#).is_none());
        assert!(
            ask_for_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).is_none()
        );
        let merged = ask_for_usage(br#"{"stream":true,"stream_options":{"x":1}}"#).unwrap();
        let v: Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        // Last duplicate wins, as in the NIM's parser.
        assert!(ask_for_usage(br#"{"stream":true,"stream":false}"#).is_none());
        assert!(ask_for_usage(b"not json").is_none());
    }

    #[test]
    fn the_usage_event_is_removed_even_when_split_and_nothing_else_is() {
        let events: &[&[u8]] = &[
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
            b"data: [DONE]\n\n",
        ];
        let all: Vec<u8> = events.concat();
        let want: Vec<u8> = [events[0], events[2]].concat();
        for cut in 1..all.len() {
            let mut s = UsageStrip::default();
            let mut out = Vec::new();
            out.extend_from_slice(&s.feed(Bytes::copy_from_slice(&all[..cut])));
            out.extend_from_slice(&s.feed(Bytes::copy_from_slice(&all[cut..])));
            if let Some(rest) = s.flush() {
                out.extend_from_slice(&rest);
            }
            assert_eq!(out, want, "cut at {cut}");
        }
        // A chunk of complete events without usage passes through without a copy.
        let mut s = UsageStrip::default();
        let chunk = Bytes::copy_from_slice(events[0]);
        let out = s.feed(chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }
}
