//! The last phases: `build_upstream_request` (the upstream path, stripped headers, the key),
//! `send_with_retry` (pick a replica, a `use` record naming it, then the request; on another
//! replica only when no byte reached the NIM — connect failed — and the body can be replayed; one
//! retry with a refreshed key when the NIM rejects the key and the body can be replayed); then
//! `respond::wrap_response`. With tracing on, each send is a CLIENT span whose context goes to
//! the NIM as `traceparent` (`telemetry::spans`).

use http::{request::Parts, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::replica::{self, InFlight, Replica};
use super::request_body::{BodyTimeout, BodyTooLarge, BytesIn, RequestBody};
use super::upstream::Upstream;
use super::{headers, path, Failure, Proxy};
use crate::audit::{Event, Record};
use crate::error::GatewayError;
use crate::names::X_REQUEST_ID;
use crate::request::ReqInfo;
use crate::secret::KeyMaterial;
use crate::telemetry::spans;

/// Longest wait for a fresh key after the NIM rejected the current one.
const REFRESH_WAIT: Duration = Duration::from_secs(5);

/// Rewrite the client's request head for `up`: the normalised path (`info.path`) and the query
/// minus credential parameters (the replica's scheme and authority are added per attempt),
/// HTTP/1.1 semantics, headers stripped of hop-by-hop and client credentials *before* the key
/// goes in, no client extensions. `as_sent`: the client's path is normal already; then an
/// origin-form target with no credential parameter is kept as it is (it shares the request
/// head's buffer: no copy now, none when an attempt clones it).
pub(super) fn build_upstream_request(
    parts: &mut Parts,
    as_sent: bool,
    up: &Upstream,
    key: &KeyMaterial,
    info: &ReqInfo,
) -> Result<(), GatewayError> {
    let stripped = parts.uri.query().and_then(path::strip_credential_params);
    let origin_form = parts.uri.scheme().is_none() && parts.uri.authority().is_none();
    if !(as_sent && origin_form && stripped.is_none()) {
        let path = &*info.path;
        let pq = match (stripped.as_deref(), parts.uri.query()) {
            (Some(""), _) | (None, None) => path.to_owned(),
            (Some(q), _) | (None, Some(q)) => format!("{path}?{q}"),
        };
        parts.uri = Uri::builder()
            .path_and_query(pq)
            .build()
            .map_err(|_| GatewayError::BadRequest)?;
    }
    parts.version = http::Version::HTTP_11;
    headers::rewrite_request(&mut parts.headers, &up.auth_header, &key.header_value);
    parts.headers.insert(X_REQUEST_ID, info.request_id.clone());
    parts.extensions = http::Extensions::new();
    Ok(())
}

/// One request's state across its upstream attempts.
pub(super) struct Attempt {
    pub proxy: Arc<Proxy>,
    pub upstream: Arc<Upstream>,
    pub info: ReqInfo,
    pub model: Option<bytestring::ByteString>,
    pub bytes_in: BytesIn,
    /// nimgate added `stream_options.include_usage`: remove that event from the response.
    pub strip_usage: bool,
    /// The replica of the current attempt (counted in its outstanding requests).
    pub inflight: Option<InFlight>,
}

impl Attempt {
    pub(super) fn done_record(&self, key: &KeyMaterial, status: u16) -> Record {
        let mut r = self.info.record(Event::Done);
        r.model = self.model.clone();
        r.upstream = Some(self.upstream.name.clone());
        r.replica = self.inflight.as_ref().map(|f| f.0.pool.label.clone());
        r.key_version = Some(key.version.clone());
        r.key_fingerprint = Some(key.fingerprint.clone());
        r.status = Some(status);
        r.duration_ms = Some(self.info.elapsed_ms());
        r.bytes_in = Some(self.bytes_in.get());
        r
    }

    /// Write the `use` record, then send to `rep`. After a successful `use`, every outcome gets a
    /// `done`. `unsent` is set when the connection failed, so no byte reached the NIM.
    async fn send(
        &self,
        key: &Arc<KeyMaterial>,
        parts: &Parts,
        body: RequestBody,
        rep: &Replica,
        unsent: &mut bool,
    ) -> Result<Response<Incoming>, Failure> {
        let p = &self.proxy;
        let mut r = self.info.record(Event::Use);
        r.model = self.model.clone();
        r.upstream = Some(self.upstream.name.clone());
        r.replica = Some(rep.pool.label.clone());
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
        // A path and query: the pool makes it absolute for HTTP/2.
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        if let Some(host) = &rep.pool.host {
            req.headers_mut().insert(http::header::HOST, host.clone());
        }
        let up = &self.upstream;
        // The CLIENT span of this attempt (none with tracing off); the NIM gets it as parent.
        let span = spans::attempt(
            &self.info.span,
            parts.method.as_str(),
            rep.pool.authority.host(),
            rep.pool.authority.port_u16().unwrap_or(
                if rep.pool.scheme == http::uri::Scheme::HTTPS {
                    443
                } else {
                    80
                },
            ),
            &self.info.path,
        );
        spans::inject(&span, req.headers_mut());
        let sent = std::time::Instant::now();
        let result = tokio::time::timeout(up.response_timeout, rep.pool.request(req)).await;
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
                *unsent = e.is_connect();
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
        Err(Failure::Failed(err))
    }

    /// The client's answer is this failure: count it once (not once per attempt).
    fn answered(&self, f: Failure) -> Failure {
        if let Failure::Failed(e) = &f {
            let m = &self.proxy.metrics;
            let took = self.info.start.elapsed();
            m.response(
                self.info.labels,
                Some(&self.upstream.name),
                e.status_code().as_u16(),
                took,
            );
        }
        f
    }

    /// Send; if the NIM rejects the key (401/403) and the body can be replayed, wait for a newer
    /// key and send once more. Returns the response and the key it was sent with.
    #[expect(
        clippy::option_option,
        reason = "None: not replayable; Some(None): empty body"
    )]
    pub(super) async fn send_with_retry(
        &mut self,
        mut key: Arc<KeyMaterial>,
        mut parts: Parts,
        body: RequestBody,
        replay: Option<Option<bytes::Bytes>>,
    ) -> Result<(Response<Incoming>, Arc<KeyMaterial>), Failure> {
        let up = self.upstream.clone();
        let mut resp = self
            .send_to_replica(&key, &parts, body, replay.as_ref())
            .await?;
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
        if let Some(new_key) =
            Box::pin(up.store.refresh_newer_than(key.generation, REFRESH_WAIT)).await
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
                .send_to_replica(&key, &parts, RequestBody::Replay { data }, None)
                .await?;
        }
        Ok((resp, key))
    }

    /// Pick a replica (P2C) and send. When the connection failed (nothing reached the NIM) and
    /// the body can be replayed, the next replica that is up gets it, each attempt with its own
    /// `use` record; never once the NIM may have started work. Connect failures, broken
    /// exchanges and 5xx answers count towards the replica's ejection. `replay`: `None`, not
    /// replayable; `Some(None)`, an empty body.
    async fn send_to_replica(
        &mut self,
        key: &Arc<KeyMaterial>,
        parts: &Parts,
        mut body: RequestBody,
        replay: Option<&Option<bytes::Bytes>>,
    ) -> Result<Response<Incoming>, Failure> {
        let up = self.upstream.clone();
        let mut tried = 0u64;
        let mut last = None;
        loop {
            let now = replica::now_ms();
            let Some(inflight) = replica::pick(&up.replicas, tried, now) else {
                return Err(self.answered(last.unwrap_or(Failure::Denied(
                    GatewayError::UpstreamUnavailable,
                    self.model.clone(),
                ))));
            };
            let rep = inflight.0.clone();
            tried |= 1 << replica::index_of(&up.replicas, &rep);
            self.inflight = Some(inflight);
            let mut unsent = false;
            match self.send(key, parts, body, &rep, &mut unsent).await {
                Ok(resp) => {
                    if resp.status().is_server_error() {
                        up.failed(&rep, now, true);
                    } else {
                        rep.succeeded();
                    }
                    return Ok(resp);
                }
                Err(Failure::Failed(e)) if e == GatewayError::UpstreamUnreachable => {
                    up.failed(&rep, now, false);
                    match replay {
                        Some(data) if unsent => {
                            up.stats.retries.fetch_add(1, Ordering::Relaxed);
                            body = RequestBody::Replay { data: data.clone() };
                            last = Some(Failure::Failed(e));
                        }
                        _ => return Err(self.answered(Failure::Failed(e))),
                    }
                }
                Err(f) => return Err(self.answered(f)),
            }
        }
    }
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
