//! The proxy service: the innermost service of the stack (see `app.rs`). For an authenticated
//! request it normalises and allow-lists the path, applies rate and concurrency limits, loads the
//! key once, writes the `use` audit record (fail closed), injects the key, forwards over the
//! pooled client and streams the response back.

pub mod body;
pub mod headers;
pub mod path;
pub mod upstream;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::{Audit, Record};
use crate::auth::Principal;
use crate::error::GatewayError;
use crate::secret::{KeyMaterial, SecretStore};
use crate::telemetry::Metrics;
use body::{BodyTimeout, BodyTooLarge, GatewayBody, OnDone, Outcome, RequestBody};
pub use upstream::Upstream;

/// How much of a request body is read before forwarding: enough to hold a whole chat request,
/// so the `use` record can name the model and the request can be replayed once after a key
/// rotation. Larger bodies stream on after this prefix.
const PEEK_BYTES: usize = 64 * 1024;
/// Longest wait for a fresh key after the NIM rejected the current one.
const REFRESH_WAIT: Duration = Duration::from_secs(5);

/// The request id, set by `RequestIdLayer` (client's if valid, else generated).
#[derive(Clone)]
pub struct RequestId(pub HeaderValue);

/// Why a request got no upstream response.
enum Failure {
    /// Refused before the key was used: a `denied` record follows (with the model, if known).
    Denied(GatewayError, Option<Arc<str>>),
    /// Failed after its `use` record: the `done` record is written already.
    Failed(GatewayError),
}

impl From<GatewayError> for Failure {
    fn from(e: GatewayError) -> Self {
        Self::Denied(e, None)
    }
}

/// The client's socket address as records show it, set by the server per connection (formatted
/// once per connection, not per request).
#[derive(Clone)]
pub struct RemoteAddr(pub Arc<str>);

impl RemoteAddr {
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Self(addr.to_string().into())
    }
}

/// A method's name for audit records (no allocation for the standard ones).
pub fn method_name(m: &Method) -> Cow<'static, str> {
    const STANDARD: [(Method, &str); 7] = [
        (Method::POST, "POST"),
        (Method::GET, "GET"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
    ];
    match STANDARD.iter().find(|(s, _)| s == m) {
        Some((_, name)) => Cow::Borrowed(name),
        None => Cow::Owned(m.as_str().to_owned()),
    }
}

/// A request path as recorded when it could not be normalised: at most 512 characters.
pub fn truncated_path(p: &str) -> Arc<str> {
    match p.char_indices().nth(512) {
        Some((i, _)) => Arc::from(&p[..i]),
        None => Arc::from(p),
    }
}

pub struct ProxySettings {
    pub auth_header: HeaderName,
    pub route_prefixes: Vec<String>,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    pub response_timeout: Duration,
    pub retry_on_auth_failure: bool,
    pub max_concurrent: usize,
}

pub struct Proxy {
    upstream: Upstream,
    store: Arc<SecretStore>,
    audit: Audit,
    metrics: Arc<Metrics>,
    settings: ProxySettings,
    concurrency: Arc<Semaphore>,
}

#[derive(Clone)]
pub struct ProxyService(Arc<Proxy>);

impl ProxyService {
    pub fn new(
        upstream: Upstream,
        store: Arc<SecretStore>,
        audit: Audit,
        metrics: Arc<Metrics>,
        settings: ProxySettings,
    ) -> Self {
        let concurrency = Arc::new(Semaphore::new(settings.max_concurrent));
        Self(Arc::new(Proxy {
            upstream,
            store,
            audit,
            metrics,
            settings,
            concurrency,
        }))
    }
}

impl tower::Service<Request<Incoming>> for ProxyService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let p = self.0.clone();
        Box::pin(async move { Ok(p.handle(req).await) })
    }
}

/// What every audit record of one request shares (cheap to clone: `Arc`s).
#[derive(Clone)]
struct ReqInfo {
    start: Instant,
    request_id: HeaderValue,
    id_text: Option<Arc<str>>,
    client_id: Arc<str>,
    remote: Option<Arc<str>>,
    method: Cow<'static, str>,
    /// Normalised, or (when it cannot be) the raw path cut to 512 characters.
    path: Arc<str>,
}

impl ReqInfo {
    fn record(&self, event: &'static str) -> Record {
        let mut r = Record::event(event);
        r.request_id = self.id_text.clone();
        r.client_id = Some(self.client_id.clone());
        r.remote_addr = self.remote.clone();
        r.method = Some(self.method.clone());
        r.path = Some(self.path.clone());
        r
    }
}

impl Proxy {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<GatewayBody> {
        let start = Instant::now();
        let request_id = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_else(|| HeaderValue::from_static("unknown"));
        let Some(principal) = req.extensions().get::<Principal>().cloned() else {
            // The auth layer always runs first; reaching here without a principal is a bug.
            return GatewayError::Unauthenticated.into_response(Some(&request_id));
        };
        let normalized = path::normalize(req.uri().path());
        let info = ReqInfo {
            start,
            id_text: request_id.to_str().ok().map(Arc::from),
            request_id,
            client_id: principal.0.id.clone(),
            remote: req.extensions().get::<RemoteAddr>().map(|r| r.0.clone()),
            method: method_name(req.method()),
            path: match &normalized {
                Some(p) => Arc::from(p.as_str()),
                None => truncated_path(req.uri().path()),
            },
        };
        match self.forward(req, normalized, &principal, &info).await {
            Ok(resp) => resp,
            Err(Failure::Failed(e)) => e.into_response(Some(&info.request_id)),
            Err(Failure::Denied(e, model)) => {
                self.metrics.denied(e.code());
                let mut r = info.record("denied");
                r.status = Some(e.status_code().as_u16());
                r.reason = Some(e.code().to_string());
                r.model = model;
                r.duration_ms = Some(ms(info.start));
                if self.audit.record(r).await.is_err() {
                    tracing::error!(request_id = ?info.request_id, "audit queue full: denied record not written");
                }
                self.metrics
                    .response(e.status_code().as_u16(), info.start.elapsed());
                e.into_response(Some(&info.request_id))
            }
        }
    }

    /// Errors before the key is used become `denied` records.
    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        normalized: Option<String>,
        principal: &Principal,
        info: &ReqInfo,
    ) -> Result<Response<GatewayBody>, Failure> {
        let s = &self.settings;
        if req.method() == Method::CONNECT || req.method() == Method::TRACE {
            return Err(GatewayError::MethodNotAllowed.into());
        }
        let path = normalized.ok_or(GatewayError::BadRequest)?;
        let allowed = s
            .route_prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()) || path == p[..p.len() - 1]);
        if !allowed {
            return Err(GatewayError::NotFound.into());
        }
        let content_length = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if content_length.is_some_and(|n| n > s.max_body_bytes) {
            return Err(GatewayError::BodyTooLarge.into());
        }
        if let Some(l) = &principal.0.limiter {
            l.check().map_err(|wait| GatewayError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            })?;
        }
        let client_permit = match &principal.0.concurrency {
            Some(sem) => Some(
                sem.clone()
                    .try_acquire_owned()
                    .map_err(|_| GatewayError::ClientConcurrency)?,
            ),
            None => None,
        };
        let permit = self
            .concurrency
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Overloaded)?;
        let key = self
            .store
            .load()
            .map_err(|_| GatewayError::KeyUnavailable)?;

        let (mut parts, body) = req.into_parts();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let body_deadline = tokio::time::Instant::now() + s.body_timeout;
        let (body, replay, model) = tokio::time::timeout_at(
            body_deadline,
            peek(body, s.max_body_bytes, &bytes_in, body_deadline),
        )
        .await
        .map_err(|_| GatewayError::BodyTimeout)??;

        let pq = match parts.uri.query().and_then(path::strip_credential_params) {
            Some(q) if q.is_empty() => path,
            Some(q) => format!("{path}?{q}"),
            None => match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            },
        };
        parts.uri = Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| Failure::Denied(GatewayError::BadRequest, model.clone()))?;
        parts.version = http::Version::HTTP_11;
        headers::rewrite_request(&mut parts.headers, &s.auth_header, &key.header_value);
        parts
            .headers
            .insert(headers::X_REQUEST_ID, info.request_id.clone());
        if let Some(host) = &self.upstream.host {
            parts.headers.insert(http::header::HOST, host.clone());
        }
        parts.extensions = http::Extensions::new();

        let ctx = Attempt {
            proxy: self.clone(),
            info: info.clone(),
            model,
            bytes_in,
        };
        let mut key = key;
        let mut resp = ctx.send(&key, &parts, body).await?;
        let status = resp.status();
        if s.retry_on_auth_failure
            && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
        {
            if let Some(data) = replay {
                tracing::warn!(request_id = ?info.request_id, status = status.as_u16(), key_version = %key.version, "upstream rejected the key; refreshing");
                if let Some(new_key) = self
                    .store
                    .refresh_newer_than(key.generation, REFRESH_WAIT)
                    .await
                {
                    let mut r = ctx.done_record(&key, status.as_u16());
                    r.reason = Some("upstream_rejected_key_retrying".into());
                    self.audit.record_done(r);
                    drop(resp);
                    parts
                        .headers
                        .insert(s.auth_header.clone(), new_key.header_value.clone());
                    key = new_key;
                    resp = ctx.send(&key, &parts, RequestBody::Replay { data }).await?;
                }
            }
        }

        let (mut rparts, incoming) = resp.into_parts();
        headers::rewrite_response(&mut rparts.headers, &info.request_id);
        let sse = rparts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let done = Done {
            ctx,
            key,
            status: rparts.status.as_u16(),
            _permits: (permit, client_permit),
        };
        Ok(Response::from_parts(
            rparts,
            GatewayBody::upstream(incoming, sse, Box::new(done)),
        ))
    }
}

/// One request's state across its upstream attempts.
struct Attempt {
    proxy: Arc<Proxy>,
    info: ReqInfo,
    model: Option<Arc<str>>,
    bytes_in: Arc<AtomicU64>,
}

impl Attempt {
    fn done_record(&self, key: &KeyMaterial, status: u16) -> Record {
        let mut r = self.info.record("done");
        r.model = self.model.clone();
        r.upstream = Some(self.proxy.upstream.label.clone());
        r.key_version = Some(key.version.clone());
        r.key_fingerprint = Some(key.fingerprint.clone());
        r.status = Some(status);
        r.duration_ms = Some(ms(self.info.start));
        r.bytes_in = Some(self.bytes_in.load(Ordering::Relaxed));
        r
    }

    /// Write the `use` record, then send. After a successful `use`, every outcome gets a `done`.
    async fn send(
        &self,
        key: &Arc<KeyMaterial>,
        parts: &http::request::Parts,
        body: RequestBody,
    ) -> Result<Response<Incoming>, Failure> {
        let p = &self.proxy;
        let mut r = self.info.record("use");
        r.model = self.model.clone();
        r.upstream = Some(p.upstream.label.clone());
        r.key_version = Some(key.version.clone());
        r.key_fingerprint = Some(key.fingerprint.clone());
        if let Err(e) = p.audit.record_use(r).await {
            tracing::error!(request_id = ?self.info.request_id, error = ?e, "audit use record not written: request refused, key not sent");
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
        let result =
            tokio::time::timeout(p.settings.response_timeout, p.upstream.client.request(req)).await;
        let err = match result {
            Ok(Ok(resp)) => return Ok(resp),
            Err(_) => GatewayError::UpstreamTimeout,
            Ok(Err(e)) if has_source::<BodyTooLarge>(&e) => GatewayError::BodyTooLarge,
            Ok(Err(e)) if has_source::<BodyTimeout>(&e) => GatewayError::BodyTimeout,
            Ok(Err(e)) => {
                tracing::warn!(request_id = ?self.info.request_id, error = %e, source = ?std::error::Error::source(&e).map(|s| s.to_string()), "upstream request failed");
                GatewayError::UpstreamUnreachable
            }
        };
        p.metrics.upstream_error(err.code());
        let mut d = self.done_record(key, err.status_code().as_u16());
        d.reason = Some(err.code().to_string());
        p.audit.record_done(d);
        p.metrics
            .response(err.status_code().as_u16(), self.info.start.elapsed());
        Err(Failure::Failed(err))
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

struct Done {
    ctx: Attempt,
    key: Arc<KeyMaterial>,
    status: u16,
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

impl OnDone for Done {
    fn done(self: Box<Self>, o: Outcome) {
        let mut r = self.ctx.done_record(&self.key, self.status);
        r.bytes_out = Some(o.bytes_out);
        r.usage = o.usage;
        if r.model.is_none() {
            r.model = o.model.map(Arc::from);
        }
        r.reason = o.error.map(String::from);
        let m = &self.ctx.proxy.metrics;
        m.response(self.status, self.ctx.info.start.elapsed());
        if let Some(u) = o.usage {
            m.tokens(u.prompt_tokens, u.completion_tokens);
        }
        self.ctx.proxy.audit.record_done(r);
    }
}

/// Read up to `PEEK_BYTES` of the body. A body that ends within it is also returned whole
/// (the second value, for a replay); otherwise the prefix is chained before the rest of the stream.
async fn peek(
    mut body: Incoming,
    limit: u64,
    counter: &Arc<AtomicU64>,
    deadline: tokio::time::Instant,
) -> Result<(RequestBody, Option<Option<Bytes>>, Option<Arc<str>>), GatewayError> {
    use http_body::Body as _;
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
                    prefix.push_back(d);
                }
            }
        }
    }
    counter.store(total as u64, Ordering::Relaxed);
    if body.is_end_stream() || total < PEEK_BYTES {
        let data = match prefix.len() {
            0 => Bytes::new(),
            1 => prefix.pop_front().unwrap_or_default(),
            _ => {
                let mut b = BytesMut::with_capacity(total);
                for c in prefix {
                    b.extend_from_slice(&c);
                }
                b.freeze()
            }
        };
        let model = model_of(&data);
        let data = (!data.is_empty()).then_some(data);
        return Ok((
            RequestBody::Replay { data: data.clone() },
            Some(data),
            model,
        ));
    }
    let model = prefix.front().and_then(|b| model_of(b));
    Ok((
        RequestBody::Stream {
            prefix,
            rest: body,
            seen: total as u64,
            limit,
            counter: counter.clone(),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        },
        None,
        model,
    ))
}

fn model_of(body: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        model: Option<Cow<'a, str>>,
    }
    if body.first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Probe>(body)
        .ok()?
        .model
        .filter(|m| m.len() <= 256)
        .map(|m| Arc::from(m.as_ref()))
}

fn ms(start: Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e6).round() / 1e3
}
