//! The request spans, named and attributed after the OpenTelemetry HTTP and GenAI semantic
//! conventions: one SERVER span per request (`chat meta/llama-3.1-8b-instruct`, or
//! `POST /v1/models` where no model applies) and one CLIENT child per upstream attempt, whose
//! context goes to the NIM as `traceparent`. Attribute values are ids, names, counts and
//! statuses only: never a header value, a body, a prompt or a key.
//!
//! Only called when `otel::enabled()`; with tracing off the proxy holds `Span::none()` and
//! every helper here returns at its `is_none()` check. So does an unsampled request: `server`
//! decides sampling before it builds anything (see `otel`), and an unsampled request has no span,
//! no attributes and no upstream span; the client's `traceparent` (flag `00`) and `tracestate`
//! then reach the NIM as received, which W3C Trace Context allows a participant that records
//! nothing (the trace id and the not-sampled decision carry on unchanged).

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::Arc;
use std::time::Duration;
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::labels::Op;
use super::otel::TARGET;
use crate::audit::Usage;

/// `gen_ai.provider.name` of a NIM (OpenAI-compatible API served by NVIDIA NIM).
pub const PROVIDER: &str = "nvidia_nim";

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(n, v);
        }
    }
}

/// The SERVER span of a request, child of the client's W3C `traceparent` if it sent one, and
/// its trace id (for the audit records). `Span::none()` when the request is not sampled: the
/// client's parent says not sampled (the trace id is still returned, for the audit records), or
/// there is no valid parent and `otel::sample_root` says no.
pub fn server(
    headers: &HeaderMap,
    method: &str,
    path: &str,
    client_id: &str,
    request_id: Option<&str>,
    remote: Option<&str>,
) -> (Span, Option<Arc<str>>) {
    let parent = headers
        .contains_key("traceparent")
        .then(|| TraceContextPropagator::new().extract(&Headers(headers)))
        .filter(|cx| cx.span().span_context().is_valid());
    if let Some(cx) = &parent {
        let sc = cx.span().span_context().clone();
        if !sc.is_sampled() {
            return (Span::none(), Some(sc.trace_id().to_string().into()));
        }
    } else if !super::otel::sample_root() {
        return (Span::none(), None);
    }
    let span = tracing::info_span!(target: TARGET, "request",
        otel.name = %format_args!("{method} {path}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        url.path = path,
        http.response.status_code = Empty,
        client.address = remote.map(|r| r.rsplit_once(':').map_or(r, |(ip, _)| ip.trim_matches(['[', ']']))),
        gen_ai.operation.name = Empty,
        gen_ai.provider.name = Empty,
        gen_ai.request.model = Empty,
        gen_ai.response.model = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        nimgate.time_to_first_chunk_ms = Empty,
        nimgate.client_id = client_id,
        nimgate.key_version = Empty,
        nimgate.request_id = request_id,
        error.type = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    if let Some(cx) = parent {
        let _ = span.set_parent(cx);
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return (span, None);
    }
    let trace_id: Arc<str> = sc.trace_id().to_string().into();
    span.record("trace_id", &*trace_id);
    span.record("span_id", sc.span_id().to_string());
    (span, Some(trace_id))
}

/// The request names a model (and a GenAI operation): the span is renamed `{op} {model}`.
pub fn model(span: &Span, op: Op, model: Option<&str>) {
    if span.is_none() || op == Op::Other {
        return;
    }
    span.record("gen_ai.operation.name", op.as_str());
    span.record("gen_ai.provider.name", PROVIDER);
    if let Some(m) = model {
        span.record("gen_ai.request.model", m);
        // The span has started (its context was read for the trace id): rename it in place.
        span.context()
            .span()
            .update_name(format!("{} {m}", op.as_str()));
    }
}

pub fn key_version(span: &Span, version: &str) {
    if !span.is_none() {
        span.record("nimgate.key_version", version);
    }
}

/// The CLIENT span of one upstream attempt (none when `parent` is none).
pub fn attempt(parent: &Span, method: &str, host: &str, port: u16, path: &str) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, parent: parent, "upstream",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = method,
        server.address = host,
        server.port = i64::from(port),
        url.path = path,
        http.response.status_code = Empty,
        error.type = Empty,
    )
}

/// Put `span`'s context on the upstream request as `traceparent` (replacing the client's); the
/// client's `tracestate` travels in that context and is re-sent as W3C Trace Context asks.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_none() {
        return;
    }
    headers.remove("traceparent");
    headers.remove("tracestate");
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeadersMut(headers));
}

/// The HTTP status on a span; `error` (a low-cardinality code) marks it failed.
pub fn status(span: &Span, status: u16, error: Option<&str>) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", i64::from(status));
    let error = error
        .map(str::to_string)
        .or_else(|| (status >= 500).then(|| status.to_string()));
    if let Some(e) = error {
        span.record("error.type", e.as_str());
        span.record("otel.status_code", "ERROR");
    }
}

/// What the response body told: usage, the model that answered, time to first chunk.
pub fn outcome(
    span: &Span,
    usage: Option<Usage>,
    response_model: Option<&str>,
    first: Option<Duration>,
) {
    if span.is_none() {
        return;
    }
    if let Some(u) = usage {
        // OTLP integers are signed; u64 fields would be exported as strings.
        span.record(
            "gen_ai.usage.input_tokens",
            i64::try_from(u.prompt_tokens).unwrap_or(i64::MAX),
        );
        span.record(
            "gen_ai.usage.output_tokens",
            i64::try_from(u.completion_tokens).unwrap_or(i64::MAX),
        );
    }
    if let Some(m) = response_model {
        span.record("gen_ai.response.model", m);
    }
    if let Some(t) = first {
        span.record("nimgate.time_to_first_chunk_ms", t.as_secs_f64() * 1e3);
    }
}

/// A span of background work (a Vault login, renewal or key fetch); none with tracing off, or
/// when it would start a trace (no span around it) and `sample_root` says no.
pub fn background(name: &str, source: &str) -> Span {
    if !super::otel::enabled() || (Span::current().is_none() && !super::otel::sample_root()) {
        return Span::none();
    }
    tracing::info_span!(target: TARGET, "background",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = Empty,
        nimgate.secret_source = source,
        error.type = Empty,
    )
}

/// Mark a background span failed with a low-cardinality `kind`.
pub fn failed(span: &Span, kind: &str) {
    if !span.is_none() {
        span.record("error.type", kind);
        span.record("otel.status_code", "ERROR");
    }
}
