//! The `wrap_response` phase: the NIM's response for the client (headers rewritten, the key
//! redacted from them), its body streamed through `GatewayBody`, and the `done` record, the
//! metrics and the token charge when it ends (`Done`).

use http::Response;
use hyper::body::Incoming;
use std::sync::Arc;

use super::admit::Permits;
use super::attempt::Attempt;
use super::headers;
use crate::body::redact::Redactor;
use crate::body::{GatewayBody, OnDone, Outcome, Sniffer};
use crate::secret::KeyMaterial;
use crate::telemetry::{spans, Finished, Gauge};

/// The NIM's response for the client: hop-by-hop headers out, our request id in, SSE marked
/// unbuffered; the body streams through and the `done` record is written when it ends.
pub(super) fn wrap_response(
    attempt: Attempt,
    resp: Response<Incoming>,
    key: Arc<KeyMaterial>,
    permits: Permits,
) -> Response<GatewayBody> {
    let (mut rparts, incoming) = resp.into_parts();
    headers::rewrite_response(&mut rparts.headers, &attempt.info.request_id);
    permits.write_headers(&mut rparts.headers);
    let sse = rparts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let (pre, suf) = attempt.upstream.key_affixes;
    let value = key.header_value.clone();
    let end = value.len().saturating_sub(suf);
    let redactor = (end > pre).then(|| Redactor::new(value, pre, end, sse));
    if let Some(r) = &redactor {
        let n = redact_headers(&mut rparts.headers, r.key_bytes());
        attempt.proxy.metrics.key_redactions(n);
    }
    let strip = attempt.strip_usage;
    // The response's model is read only when the request named none (or a span wants it).
    let sniff = if sse {
        Sniffer::sse()
    } else {
        Sniffer::json(attempt.model.is_none() || crate::telemetry::otel::enabled())
    };
    let done = Done {
        status: rparts.status.as_u16(),
        _stream: sse.then(|| attempt.proxy.metrics.open_stream()),
        sse,
        attempt,
        key,
        permits,
    };
    Response::from_parts(
        rparts,
        GatewayBody::upstream(incoming, sniff, redactor, strip, Box::new(done)),
    )
}

/// Remove the key from response headers: a `Location` (or `Content-Location`) carrying it is
/// dropped, any other value has it overwritten with `*`. Returns the occurrences removed. One
/// substring search per header value; allocates only when the key is found.
fn redact_headers(h: &mut http::HeaderMap, key: &[u8]) -> u64 {
    use http::header::{CONTENT_LOCATION, LOCATION};
    let hit = |v: &http::HeaderValue| crate::body::redact::has_key(v.as_bytes(), key);
    if key.is_empty() || !h.values().any(hit) {
        return 0;
    }
    let mut n = 0;
    for name in [LOCATION, CONTENT_LOCATION] {
        if h.get_all(&name).iter().any(hit) {
            n += h.get_all(&name).iter().filter(|v| hit(v)).count() as u64;
            h.remove(&name);
        }
    }
    for v in h.values_mut() {
        if hit(v) {
            let mut b = v.as_bytes().to_vec();
            n += crate::body::redact::overwrite(&mut b, key);
            if let Ok(nv) = http::HeaderValue::from_bytes(&b) {
                *v = nv;
            }
        }
    }
    n
}

/// Writes the `done` record and releases the permits when the response body ends.
struct Done {
    attempt: Attempt,
    key: Arc<KeyMaterial>,
    status: u16,
    sse: bool,
    /// Released when the record is written; charges the client's token budget first.
    permits: Permits,
    /// `nimgate_sse_streams_open` while an SSE body streams.
    _stream: Option<Gauge>,
}

impl OnDone for Done {
    fn done(self: Box<Self>, o: Outcome) {
        let mut r = self.attempt.done_record(&self.key, self.status);
        r.bytes_out = Some(o.bytes_out);
        r.usage = o.usage;
        spans::outcome(&self.attempt.info.span, o.usage, o.model.as_deref(), None);
        if r.model.is_none() {
            r.model = o.model.map(bytestring::ByteString::from);
        }
        r.reason = o.error.map(String::from);
        let a = &self.attempt;
        let first_token = o
            .first_byte
            .filter(|_| self.sse && self.status < 300)
            .map(|t| t.duration_since(a.info.start));
        spans::status(&a.info.span, self.status, o.error);
        spans::outcome(&a.info.span, None, None, first_token);
        let m = &a.proxy.metrics;
        m.key_redactions(o.redactions);
        m.finished(&Finished {
            labels: a.info.labels,
            upstream: &a.upstream.name,
            status: self.status,
            took: a.info.start.elapsed(),
            model: r.model.as_deref(),
            usage: o.usage,
            bytes_in: r.bytes_in.unwrap_or(0),
            bytes_out: o.bytes_out,
            first_token,
        });
        if let Some(u) = o.usage {
            self.permits
                .charge(u.prompt_tokens.saturating_add(u.completion_tokens));
        }
        self.attempt.proxy.audit.record_done(r);
    }
}
