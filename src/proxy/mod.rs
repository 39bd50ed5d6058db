//! The proxy service: the innermost service of the stack (see `app.rs`). One request, top to
//! bottom, is `Proxy::forward`: a sequence of named phases, each in the module that owns it.
//!
//! | phase | module | why it sits there |
//! |---|---|---|
//! | `admit` | `admit` | method, path and declared length cost nothing to check: refuse first |
//! | `limit` | `admit` | rate and concurrency before any body byte is read or key is touched |
//! | `models` | `models` | `GET /v1/models` with several upstreams: answered here, merged |
//! | `read_prefix` | `prefix` | the model (for the record and the route) is in the body |
//! | `route` | `upstream` | the model picks the upstream, and with it the key; then the client's model allow-list |
//! | `load_key` | here | one `ArcSwap` load of *that* upstream's key, as late as possible |
//! | `build_upstream_request` | `attempt` | strip client credentials, then inject the key |
//! | `send_with_retry` | `attempt` | `use` record (fail closed), send, one retry on a rejected key |
//! | `wrap_response` | `respond` | stream the response back; `done` record at its end |
//!
//! Errors before the key is used become `denied` records (`Failure::Denied`); after its `use`
//! record every outcome gets a `done` record instead (`Failure::Failed`).

mod admit;
mod attempt;
pub mod client;
pub mod headers;
pub mod models;
pub mod path;
pub mod prefix;
pub mod probe;
pub mod replica;
pub mod request_body;
mod respond;
pub mod upstream;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use crate::audit::{Audit, Event};
use crate::auth::Principal;
use crate::body::GatewayBody;
use crate::error::GatewayError;
use crate::request::{method_name, path_text, truncated_path, Call, ReqInfo};
use crate::telemetry::{otel, spans, Metrics, Op, ReqLabels};
use attempt::{build_upstream_request, Attempt};
use respond::wrap_response;
use tracing::Instrument;
pub use upstream::{Routes, Upstream};

/// Why a request got no upstream response.
pub(crate) enum Failure {
    /// Refused before the key was used: a `denied` record follows (with the model, if known).
    Denied(GatewayError, Option<bytestring::ByteString>),
    /// Failed after its `use` record: the `done` record is written already.
    Failed(GatewayError),
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Self::Denied(e, None)
    }
}

/// Settings of the request path that do not depend on the upstream.
pub struct ProxySettings {
    pub route_prefixes: Vec<String>,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    pub max_concurrent: usize,
    /// `[ratelimit] backend = "redis"`: limits shared by the fleet.
    pub shared_limits: Option<Arc<crate::fleet::Shared>>,
    /// `[ratelimit] stream_usage`: ask the NIM for usage on behalf of budgeted clients.
    pub stream_usage: bool,
}

pub struct Proxy {
    routes: Arc<Routes>,
    audit: Audit,
    metrics: Arc<Metrics>,
    settings: ProxySettings,
    concurrency: Arc<Semaphore>,
    models: models::ModelLists,
}

#[derive(Clone)]
pub struct ProxyService(Arc<Proxy>);

impl ProxyService {
    pub fn new(
        routes: Arc<Routes>,
        audit: Audit,
        metrics: Arc<Metrics>,
        settings: ProxySettings,
    ) -> Self {
        let concurrency = Arc::new(Semaphore::new(settings.max_concurrent));
        Self::with_concurrency(routes, audit, metrics, settings, concurrency)
    }

    /// `new` with the global in-flight semaphore given (a config reload keeps the one in use
    /// while `max_concurrent_requests` is unchanged, so requests in flight still count).
    pub fn with_concurrency(
        routes: Arc<Routes>,
        audit: Audit,
        metrics: Arc<Metrics>,
        settings: ProxySettings,
        concurrency: Arc<Semaphore>,
    ) -> Self {
        let models = models::ModelLists::new(&routes, audit.clone());
        Self(Arc::new(Proxy {
            routes,
            audit,
            metrics,
            settings,
            concurrency,
            models,
        }))
    }
}

impl tower::Service<Call<Incoming>> for ProxyService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, c: Call<Incoming>) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move { Ok(p.handle(c).await) })
    }
}

impl Proxy {
    async fn handle(self: Arc<Self>, Call { req, ctx }: Call<Incoming>) -> Response<GatewayBody> {
        let start = Instant::now();
        let (request_id, id_text) = match ctx.request_id {
            Some(r) => (r.header, Some(r.text)),
            None => (HeaderValue::from_static("unknown"), None),
        };
        let remote = ctx.remote.map(|r| r.0);
        let Some(principal) = ctx.principal else {
            // The auth layer always runs first; reaching here without a principal is a bug.
            return GatewayError::Unauthenticated.into_response(Some(&request_id));
        };
        // Normalised, or (refused) the raw path cut short, as records show it; `as_sent`: the
        // client's path is already normal, so its request target can go upstream unchanged.
        let (path, as_sent): (Arc<str>, Option<bool>) = match path::normalize(req.uri().path()) {
            Some(p) => (path_text(&p), Some(matches!(p, Cow::Borrowed(_)))),
            None => (truncated_path(req.uri().path()), None),
        };
        let method = method_name(req.method());
        let op = Op::of_path(if as_sent.is_some() { &path } else { "" });
        // Tracing off: no span, no header read, nothing recorded (`spans::*` return at once).
        let (span, trace_id) = if otel::enabled() {
            spans::server(
                req.headers(),
                &method,
                &path,
                &principal.0.id,
                id_text.as_deref(),
                remote.as_deref(),
            )
        } else {
            (tracing::Span::none(), None)
        };
        let info = ReqInfo {
            start,
            id_text,
            request_id,
            client_id: principal.0.id.clone(),
            auth: principal.1.method.name(),
            subject: principal.1.subject.clone(),
            remote,
            method,
            path,
            labels: ReqLabels {
                client: principal.0.index,
                op,
            },
            span,
            trace_id,
        };
        let forwarded = if info.span.is_none() {
            self.forward(req, as_sent, &principal, &info).await
        } else {
            let span = info.span.clone();
            self.forward(req, as_sent, &principal, &info)
                .instrument(span)
                .await
        };
        match forwarded {
            Ok(resp) => resp,
            Err(Failure::Failed(e)) => e.into_response(Some(&info.request_id)),
            Err(Failure::Denied(e, model)) => self.deny(&info, e, model).await,
        }
    }

    /// One request, phase by phase (see the table in this module's header). `as_sent`: `None`,
    /// the path could not be normalised; `Some(true)`: it was normal as the client sent it.
    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        as_sent: Option<bool>,
        principal: &Principal,
        info: &ReqInfo,
    ) -> Result<Response<GatewayBody>, Failure> {
        let (mut parts, body) = req.into_parts();
        let as_sent = self.admit(&parts, as_sent, &info.path)?;
        let path = &*info.path;
        let permits = self.limit(principal).await?;
        if self.routes.multi && parts.method == http::Method::GET && path == "/v1/models" {
            let allowed = principal.0.models.as_deref();
            // Boxed, as every path off the hot one: inline, its state would grow each
            // request's future (moved by copying) by kilobytes.
            let list = Box::pin(self.models.list(&self.routes, allowed)).await;
            drop(permits);
            let took = info.start.elapsed();
            self.metrics.response(info.labels, None, 200, took);
            return Ok(json_response(&list, &info.request_id));
        }
        let deadline = tokio::time::Instant::now() + self.settings.body_timeout;
        let mut prefix = tokio::time::timeout_at(
            deadline,
            prefix::read_prefix(body, self.settings.max_body_bytes, deadline),
        )
        .await
        .map_err(|_| GatewayError::BodyTimeout)??;
        let strip_usage = self.settings.stream_usage
            && principal.0.budget.is_some()
            && prefix.ask_for_usage(&mut parts.headers);
        spans::model(&info.span, info.labels.op, prefix.model.as_deref());
        let denied = |e: GatewayError| Failure::Denied(e, prefix.model.clone());
        let has_body = parts.method == http::Method::POST && !matches!(prefix.replay, Some(None));
        let upstream = self
            .routes
            .choose(prefix.model.as_deref(), has_body)
            .map_err(denied)?
            .clone();
        if let Some(allowed) = &principal.0.models {
            match prefix.model.as_deref() {
                Some(m) if !allowed.iter().any(|p| upstream::pattern_matches(p, m)) => {
                    return Err(denied(GatewayError::ModelNotAllowed));
                }
                None if has_body => return Err(denied(GatewayError::ModelRequired)),
                _ => {}
            }
        }
        let key = upstream
            .store
            .load()
            .map_err(|_| denied(GatewayError::KeyUnavailable))?;
        spans::key_version(&info.span, &key.version);
        build_upstream_request(&mut parts, as_sent, &upstream, &key, info).map_err(denied)?;
        let mut attempt = Attempt {
            proxy: self.clone(),
            upstream,
            info: info.clone(),
            model: prefix.model,
            bytes_in: prefix.bytes_in,
            strip_usage,
            inflight: None,
        };
        let (resp, key) = attempt
            .send_with_retry(key, parts, prefix.body, prefix.replay)
            .await?;
        Ok(wrap_response(attempt, resp, key, permits))
    }

    /// A `denied` record for a request refused before its key was used, then the error answer.
    async fn deny(
        &self,
        info: &ReqInfo,
        e: GatewayError,
        model: Option<bytestring::ByteString>,
    ) -> Response<GatewayBody> {
        self.metrics.denied(info.labels.client, e);
        let mut r = info.record(Event::Denied);
        r.status = Some(e.status_code().as_u16());
        r.reason = Some(e.code().to_string());
        r.model = model;
        r.duration_ms = Some(info.elapsed_ms());
        if self.audit.record(r).await.is_err() {
            tracing::error!(
                request_id = info.id_text.as_deref().unwrap_or("-"),
                "audit queue full: denied record not written"
            );
        }
        let status = e.status_code().as_u16();
        spans::status(&info.span, status, Some(e.code()));
        self.metrics
            .response(info.labels, None, status, info.start.elapsed());
        e.into_response(Some(&info.request_id))
    }
}

impl prefix::Prefix {
    /// For a client with a token budget: make a streamed request ask for usage (see
    /// `body::usage`). Only a body that fit in the prefix can be rewritten; says whether it was.
    pub fn ask_for_usage(&mut self, headers: &mut http::HeaderMap) -> bool {
        let Some(Some(data)) = &self.replay else {
            return false;
        };
        let Some(new) = crate::body::usage::ask_for_usage(data) else {
            return false;
        };
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(new.len()),
        );
        self.body = request_body::RequestBody::Replay {
            data: Some(new.clone()),
        };
        self.replay = Some(Some(new));
        true
    }
}

/// A 200 JSON answer of the gateway's own.
fn json_response(v: &serde_json::Value, request_id: &HeaderValue) -> Response<GatewayBody> {
    let mut r = Response::new(GatewayBody::full(bytes::Bytes::from(v.to_string())));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(crate::names::X_REQUEST_ID, request_id.clone());
    r
}
