//! The two tower layers in front of the proxy service: request ids and client authentication.
//! (`app.rs` composes them; this file only defines them.)

use futures_util::future::{BoxFuture, Either};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

use crate::audit::{Audit, Record};
use crate::auth::ClientRegistry;
use crate::error::GatewayError;
use crate::proxy::body::GatewayBody;
use crate::proxy::headers::{valid_request_id, X_REQUEST_ID};
use crate::proxy::{method_name, truncated_path, RemoteAddr, RequestId};
use crate::telemetry::Metrics;

/// Keep a valid client `X-Request-Id`, else generate one; store it in extensions.
#[derive(Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService(inner)
    }
}

#[derive(Clone)]
pub struct RequestIdService<S>(S);

fn new_request_id() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        u64::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    HeaderValue::try_from(format!("{prefix:016x}{n:016x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

impl<S, B> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let id = req
            .headers()
            .get(X_REQUEST_ID)
            .filter(|v| valid_request_id(v))
            .cloned()
            .unwrap_or_else(new_request_id);
        req.extensions_mut().insert(RequestId(id));
        self.0.call(req)
    }
}

/// Authenticate every request; 401 (and a `denied` audit record) for the rest.
#[derive(Clone)]
pub struct AuthLayer {
    pub registry: Arc<ClientRegistry>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            cfg: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    cfg: AuthLayer,
}

type Resp = Response<GatewayBody>;

impl<S> Service<Request<Incoming>> for AuthService<S>
where
    S: Service<Request<Incoming>, Response = Resp, Error = Infallible>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Resp, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        match self.cfg.registry.authenticate(req.headers()) {
            Ok(p) => {
                req.extensions_mut().insert(p);
                Either::Right(self.inner.call(req))
            }
            Err(why) => {
                let start = Instant::now();
                let id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
                let mut r = Record::event("denied");
                r.request_id = id.as_ref().and_then(|v| v.to_str().ok()).map(Arc::from);
                r.remote_addr = req.extensions().get::<RemoteAddr>().map(|a| a.0.clone());
                r.method = Some(method_name(req.method()));
                r.path = Some(truncated_path(req.uri().path()));
                r.status = Some(401);
                r.reason = Some(why.reason().to_string());
                let audit = self.cfg.audit.clone();
                let metrics = self.cfg.metrics.clone();
                Either::Left(Box::pin(async move {
                    drop(req);
                    if audit.record(r).await.is_err() {
                        tracing::error!("audit queue full: denied record not written");
                    }
                    let e = GatewayError::Unauthenticated;
                    metrics.denied(e.code());
                    metrics.response(401, start.elapsed());
                    Ok(e.into_response(id.as_ref()))
                }))
            }
        }
    }
}
