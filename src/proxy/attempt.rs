//! The last phases: `build_upstream_request` (the upstream URI, stripped headers, the key),
//! `send_with_retry` (a `use` record, then the request; one retry with a refreshed key when the
//! NIM rejects the key and the body can be replayed) and `wrap_response` (headers for the client,
//! the body streamed through with the `done` record at its end). With tracing on, each send is a
//! CLIENT span whose context goes to the NIM as `traceparent` (`telemetry::spans`).

use http::{request::Parts, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::admit::Permits;
use super::request_body::{BodyTimeout, BodyTooLarge, RequestBody};
use super::upstream::Upstream;
use super::{headers, path, Failure, Proxy};
use crate::audit::{Event, Record};
use crate::body::redact::Redactor;
use crate::body::{GatewayBody, OnDone, Outcome};
use crate::error::GatewayError;
use crate::names::X_REQUEST_ID;
use crate::request::ReqInfo;
use crate::secret::KeyMaterial;
use crate::telemetry::{spans, Finished, Gauge};

/// Longest wait for a fresh key after the NIM rejected the current one.
const REFRESH_WAIT: Duration = Duration::from_secs(5);

/// Rewrite the client's request head for `up`: absolute URI of the upstream with the normalised
/// path and the query minus credential parameters, HTTP/1.1 semantics, headers stripped of
/// hop-by-hop and client credentials *before* the key goes in, no client extensions.
pub(super) fn build_upstream_request(
    parts: &mut Parts,
    path: String,
    up: &Upstream,
    key: &KeyMaterial,
    info: &ReqInfo,
) -> Result<(), GatewayError> {
    let pq = match parts.uri.query().and_then(path::strip_credential_params) {
        Some(q) if q.is_empty() => path,
        Some(q) => format!("{path}?{q}"),
        None => match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        },
    };
    parts.uri = Uri::builder()
        .scheme(up.pool.scheme.clone())
        .authority(up.pool.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|_| GatewayError::BadRequest)?;
    parts.version = http::Version::HTTP_11;
    headers::rewrite_request(&mut parts.headers, &up.auth_header, &key.header_value);
    parts.headers.insert(X_REQUEST_ID, info.request_id.clone());
    if let Some(host) = &up.pool.host {
        parts.headers.insert(http::header::HOST, host.clone());
    }
    parts.extensions = http::Extensions::new();
    Ok(())
}

/// One request's state across its upstream attempts.
pub(super) struct Attempt {
    pub proxy: Arc<Proxy>,
    pub upstream: Arc<Upstream>,
    pub info: ReqInfo,
    pub model: Option<Arc<str>>,
    pub bytes_in: Arc<AtomicU64>,
    /// nimgate added `stream_options.include_usage`: remove that event from the response.
    pub strip_usage: bool,
}

impl Attempt {
    fn done_record(&self, key: &KeyMaterial, status: u16) -> Record {
        let mut r = self.info.record(Event::Done);
        r.model = self.model.clone();
        r.upstream = Some(self.upstream.pool.label.clone());
        r.key_version = Some(key.version.clone());
        r.key_fingerprint = Some(key.fingerprint.clone());
        r.status = Some(status);
        r.duration_ms = Some(self.info.elapsed_ms());
        r.bytes_in = Some(self.bytes_in.load(Ordering::Relaxed));
        r
    }

    /// Write the `use` record, then send. After a successful `use`, every outcome gets a `done`.
    async fn send(
        &self,
        key: &Arc<KeyMaterial>,
        parts: &Parts,
        body: RequestBody,
    ) -> Result<Response<Incoming>, Failure> {
        let p = &self.proxy;
        let mut r = self.info.record(Event::Use);
        r.model = self.model.clone();
        r.upstream = Some(self.upstream.pool.label.clone());
        r.key_version = Some(key.version.clone());
        r.key_fingerprint = Some(key.fingerprint.clone());
        if let Err(e) = p.audit.record_use(r).await {
            tracing::error!(request_id = self.info.id_text.as_deref().unwrap_or("-"), error = ?e, "audit use record not written: request refused, key not sent");
            return Err(Failure::Denied(
                GatewayError::AuditUnavailable,
                self.model.clone(),
            ));
        }
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        let up = &self.upstream;
        // The CLIENT span of this attempt (none with tracing off); the NIM gets it as parent.
        let span = spans::attempt(
            &self.info.span,
            parts.method.as_str(),
            up.pool.authority.host(),
            up.pool
                .authority
                .port_u16()
                .unwrap_or(if up.pool.scheme == http::uri::Scheme::HTTPS {
                    443
                } else {
                    80
                }),
            &self.info.path,
        );
        spans::inject(&span, req.headers_mut());
        let sent = std::time::Instant::now();
        let result = tokio::time::timeout(up.response_timeout, up.pool.client.request(req)).await;
        if let Ok(Ok(resp)) = &result {
            p.metrics.upstream_ttfb(&up.name, sent.elapsed());
            spans::status(&span, resp.status().as_u16(), None);
        }
        let err = match result {
            // A 101 would hand the client a raw tunnel to the NIM (nimgate never asks for one).
            Ok(Ok(resp)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                tracing::warn!(
                    request_id = self.info.id_text.as_deref().unwrap_or("-"),
                    "upstream answered 101 Switching Protocols: refused"
                );
                GatewayError::UpstreamUnreachable
            }
            Ok(Ok(resp)) => return Ok(resp),
            Err(_) => GatewayError::UpstreamTimeout,
            Ok(Err(e)) if has_source::<BodyTooLarge>(&e) => GatewayError::BodyTooLarge,
            Ok(Err(e)) if has_source::<BodyTimeout>(&e) => GatewayError::BodyTimeout,
            Ok(Err(e)) => {
                tracing::warn!(request_id = self.info.id_text.as_deref().unwrap_or("-"), error = %e, source = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(), "upstream request failed");
                GatewayError::UpstreamUnreachable
            }
        };
        p.metrics.upstream_error(err);
        spans::status(&span, err.status_code().as_u16(), Some(err.code()));
        spans::status(
            &self.info.span,
            err.status_code().as_u16(),
            Some(err.code()),
        );
        let mut d = self.done_record(key, err.status_code().as_u16());
        d.reason = Some(err.code().to_string());
        p.audit.record_done(d);
        let status = err.status_code().as_u16();
        let took = self.info.start.elapsed();
        p.metrics
            .response(self.info.labels, Some(&up.name), status, took);
        Err(Failure::Failed(err))
    }

    /// Send; if the NIM rejects the key (401/403) and the body can be replayed, wait for a newer
    /// key and send once more. Returns the response and the key it was sent with.
    #[expect(
        clippy::option_option,
        reason = "None: not replayable; Some(None): empty body"
    )]
    pub(super) async fn send_with_retry(
        &self,
        mut key: Arc<KeyMaterial>,
        mut parts: Parts,
        body: RequestBody,
        replay: Option<Option<bytes::Bytes>>,
    ) -> Result<(Response<Incoming>, Arc<KeyMaterial>), Failure> {
        let up = &self.upstream;
        let mut resp = self.send(&key, &parts, body).await?;
        let status = resp.status();
        if !(up.retry_on_auth_failure
            && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN))
        {
            return Ok((resp, key));
        }
        let Some(data) = replay else {
            return Ok((resp, key));
        };
        tracing::warn!(request_id = self.info.id_text.as_deref().unwrap_or("-"), status = status.as_u16(), key_version = %key.version, "upstream rejected the key; refreshing");
        if let Some(new_key) = up
            .store
            .refresh_newer_than(key.generation, REFRESH_WAIT)
            .await
        {
            let mut r = self.done_record(&key, status.as_u16());
            r.reason = Some("upstream_rejected_key_retrying".into());
            self.proxy.audit.record_done(r);
            drop(resp);
            parts
                .headers
                .insert(up.auth_header.clone(), new_key.header_value.clone());
            key = new_key;
            resp = self
                .send(&key, &parts, RequestBody::Replay { data })
                .await?;
        }
        Ok((resp, key))
    }
}

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
        GatewayBody::upstream(incoming, sse, redactor, strip, Box::new(done)),
    )
}

/// Remove the key from response headers: a `Location` (or `Content-Location`) carrying it is
/// dropped, any other value has it overwritten with `*`. Returns the occurrences removed. One
/// substring search per header value; allocates only when the key is found.
fn redact_headers(h: &mut http::HeaderMap, key: &[u8]) -> u64 {
    use http::header::{CONTENT_LOCATION, LOCATION};
    let hit = |v: &http::HeaderValue| memchr::memmem::find(v.as_bytes(), key).is_some();
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

fn has_source<T: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
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
            r.model = o.model.map(Arc::from);
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
